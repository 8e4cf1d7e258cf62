//! A span-aware reader over toml's `DeTable`: typed getters that record an
//! error (file, line, key path, reason) instead of stopping, and tables that
//! remember which keys were read so every unknown key is reported.
//!
//! The schema itself (which keys exist) lives in `parse.rs`; this file only
//! knows how to read one value and where it came from.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::error::{ConfigError, ConfigErrorKind, ConfigWarning};

/// A TOML value with its byte span in the source.
pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// Collects errors and warnings for one file and maps byte offsets to lines.
pub(crate) struct Ctx {
    pub file: String,
    line_starts: Vec<usize>,
    src_len: usize,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

impl Ctx {
    pub fn new(file: String, src: &str) -> Self {
        let mut line_starts = vec![0];
        for (i, b) in src.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i + 1);
            }
        }
        Ctx {
            file,
            line_starts,
            src_len: src.len(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based (line, byte column) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src_len);
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line_index).copied().unwrap_or(0);
        (line_index + 1, offset - start + 1)
    }

    pub fn error(
        &mut self,
        span: &Range<usize>,
        key: &str,
        kind: ConfigErrorKind,
        reason: impl Into<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: Some(line),
            column: Some(column),
            key: key.to_string(),
            kind,
            reason: reason.into(),
        });
    }

    pub fn warn(&mut self, span: &Range<usize>, key: &str, reason: impl Into<String>) {
        let (line, _) = self.position(span.start);
        self.warnings.push(ConfigWarning {
            key: key.to_string(),
            line: Some(line),
            reason: reason.into(),
        });
    }

    fn wrong_type(&mut self, item: &Item<'_, '_>, expected: &str) {
        let found = item.value.get_ref().type_str();
        self.error(
            &item.value.span(),
            &item.path,
            ConfigErrorKind::WrongType,
            format!("expected {expected}, found {found}"),
        );
    }

    /// A string value.
    pub fn str<'a>(&mut self, item: &Item<'a, '_>) -> Option<&'a str> {
        match item.value.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(item, "a string");
                None
            }
        }
    }

    /// A string parsed by `parse`; its error becomes a `BadValue`.
    pub fn parse<T>(
        &mut self,
        item: &Item<'_, '_>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.str(item)?;
        match parse(s) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.error(
                    &item.value.span(),
                    &item.path,
                    ConfigErrorKind::BadValue,
                    reason,
                );
                None
            }
        }
    }

    /// One of a fixed set of strings.
    pub fn choice<T: Copy>(&mut self, item: &Item<'_, '_>, choices: &[(&str, T)]) -> Option<T> {
        let s = self.str(item)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.error(
            &item.value.span(),
            &item.path,
            ConfigErrorKind::BadValue,
            format!("\"{s}\" is not one of {}", names.join(", ")),
        );
        None
    }

    pub fn bool(&mut self, item: &Item<'_, '_>) -> Option<bool> {
        match item.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(item, "true or false");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn uint(&mut self, item: &Item<'_, '_>, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = item.value.get_ref() else {
            self.wrong_type(item, "an integer");
            return None;
        };
        let parsed = i128::from_str_radix(i.as_str(), i.radix()).ok();
        match parsed {
            Some(v) if v >= i128::from(min) && v <= i128::from(max) => u64::try_from(v).ok(),
            _ => {
                self.error(
                    &item.value.span(),
                    &item.path,
                    ConfigErrorKind::BadValue,
                    format!("{i} is out of range: expected {min} to {max}"),
                );
                None
            }
        }
    }

    /// A number (integer or float) within `min..=max`.
    pub fn number(&mut self, item: &Item<'_, '_>, min: f64, max: f64) -> Option<f64> {
        let v = match item.value.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|v| v as f64),
            _ => {
                self.wrong_type(item, "a number");
                return None;
            }
        };
        match v {
            Some(v) if v >= min && v <= max => Some(v),
            _ => {
                self.error(
                    &item.value.span(),
                    &item.path,
                    ConfigErrorKind::BadValue,
                    format!("out of range: expected a number from {min} to {max}"),
                );
                None
            }
        }
    }

    /// A size: a string like "64MiB" or an integer number of bytes.
    pub fn size(&mut self, item: &Item<'_, '_>, min: u64, max: u64) -> Option<u64> {
        let v = match item.value.get_ref() {
            DeValue::Integer(_) => self.uint(item, 0, u64::MAX)?,
            DeValue::String(_) => self.parse(item, super::values::parse_size)?,
            _ => {
                self.wrong_type(item, "a size such as \"64MiB\" or a number of bytes");
                return None;
            }
        };
        if v < min || v > max {
            self.error(
                &item.value.span(),
                &item.path,
                ConfigErrorKind::BadValue,
                format!("{v} bytes is out of range: expected {min} to {max} bytes"),
            );
            return None;
        }
        Some(v)
    }

    /// The elements of an array, each with its own path `key[i]`.
    pub fn array<'a, 'i>(&mut self, item: &Item<'a, 'i>) -> Option<Vec<Item<'a, 'i>>> {
        match item.value.get_ref() {
            DeValue::Array(a) => Some(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| Item {
                        path: format!("{}[{i}]", item.path),
                        value: v,
                    })
                    .collect(),
            ),
            _ => {
                self.wrong_type(item, "an array");
                None
            }
        }
    }

    /// An array whose every element converts; `None` if any fails (all
    /// failures are reported).
    pub fn list<'a, 'i, T>(
        &mut self,
        item: &Item<'a, 'i>,
        mut each: impl FnMut(&mut Ctx, &Item<'a, 'i>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = self.array(item)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for it in &items {
            match each(self, it) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A table value (header table or inline table).
    pub fn table<'a, 'i>(
        &mut self,
        item: &Item<'a, 'i>,
        key_span: Range<usize>,
    ) -> Option<Table<'a, 'i>> {
        match item.value.get_ref() {
            DeValue::Table(t) => Some(Table::new(t, item.path.clone(), key_span)),
            _ => {
                self.wrong_type(item, "a table");
                None
            }
        }
    }
}

/// One value being read, with its key path.
pub(crate) struct Item<'a, 'i> {
    pub path: String,
    pub value: &'a Val<'i>,
}

impl Item<'_, '_> {
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }
}

/// Appends `key` to a key path, quoting it unless it is a bare TOML key.
pub(crate) fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""))
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// A table being read. Every key asked for is remembered as known; `finish`
/// reports the others as unknown keys.
pub(crate) struct Table<'a, 'i> {
    pub path: String,
    /// Span of the key or header that names this table (for "missing key").
    pub span: Range<usize>,
    map: &'a DeTable<'i>,
    known: Vec<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn new(map: &'a DeTable<'i>, path: String, span: Range<usize>) -> Self {
        Table {
            path,
            span,
            map,
            known: Vec::new(),
        }
    }

    /// The value under `key`, if present.
    pub fn get(&mut self, key: &'static str) -> Option<Item<'a, 'i>> {
        self.known.push(key);
        self.map.get(key).map(|value| Item {
            path: join(&self.path, key),
            value,
        })
    }

    /// The span of `key` itself (its line), if present.
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.map.get_key_value(key).map(|(k, _)| k.span())
    }

    /// Reads an optional key with `conv`.
    pub fn opt<T>(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        conv: impl FnOnce(&mut Ctx, &Item<'a, 'i>) -> Option<T>,
    ) -> Option<T> {
        let item = self.get(key)?;
        conv(ctx, &item)
    }

    /// Reads a required key with `conv`; absence is reported.
    pub fn req<T>(
        &mut self,
        ctx: &mut Ctx,
        key: &'static str,
        conv: impl FnOnce(&mut Ctx, &Item<'a, 'i>) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(item) => conv(ctx, &item),
            None => {
                let span = self.span.clone();
                ctx.error(
                    &span,
                    &join(&self.path, key),
                    ConfigErrorKind::Missing,
                    "required key is missing",
                );
                None
            }
        }
    }

    /// All entries in file order (for name-keyed tables like `[vmta.NAME]`).
    pub fn entries(&mut self) -> Vec<(&'a Spanned<DeString<'i>>, Item<'a, 'i>)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(k, value)| {
                (
                    k,
                    Item {
                        path: join(&self.path, k.get_ref()),
                        value,
                    },
                )
            })
            .collect();
        v.sort_by_key(|(k, _)| k.span().start);
        v
    }

    /// Reports every key that was never asked for.
    pub fn finish(self, ctx: &mut Ctx) {
        let mut unknown: Vec<_> = self
            .map
            .iter()
            .filter(|(k, _)| !self.known.contains(&k.get_ref().as_ref()))
            .collect();
        unknown.sort_by_key(|(k, _)| k.span().start);
        for (k, _) in unknown {
            let name = k.get_ref().as_ref();
            let hint = self
                .known
                .iter()
                .filter(|known| edit_distance(name, known) <= 2)
                .min_by_key(|known| edit_distance(name, known))
                .map(|known| format!(" (did you mean \"{known}\"?)"))
                .unwrap_or_default();
            ctx.error(
                &k.span(),
                &join(&self.path, name),
                ConfigErrorKind::UnknownKey,
                format!("unknown key{hint}"),
            );
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_quote_non_bare_keys() {
        assert_eq!(join("", "domain"), "domain");
        assert_eq!(join("domain", "gmail.com"), "domain.\"gmail.com\"");
        assert_eq!(
            join("domain.\"*\"", "max_smtp_out"),
            "domain.\"*\".max_smtp_out"
        );
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("max_smtp_ot", "max_smtp_out"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn positions() {
        let ctx = Ctx::new("f".into(), "a = 1\nbb = 2\n");
        assert_eq!(ctx.position(0), (1, 1));
        assert_eq!(ctx.position(6), (2, 1));
        assert_eq!(ctx.position(8), (2, 3));
    }
}
