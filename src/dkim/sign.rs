//! [`DkimSigner`]: one signing domain, selector and key; builds the
//! `DKIM-Signature` header field for a message (RFC 6376 §3.5, §3.7, §5).
//!
//! Every configured header name is over-signed: listed in `h=` once more than
//! it occurs, so no instance of it can be added after signing without breaking
//! the signature. From is always in the list. `l=` is never used (it lets a
//! forwarder append content). Trace fields that relays add in transit cannot
//! be configured: over-signing them would break every signature at the next
//! hop.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::canon::{self, Canonicalization};
use super::key::DkimKey;
use super::message::{HeaderField, split_message};
use super::{
    DKIM_EXPIRE_SECS_MAX, DKIM_HEADER_LINE_CHARS_MAX, DKIM_HEADER_OCCURRENCES_MAX,
    DKIM_SIGNED_HEADER_NAMES_MAX, DkimError,
};

/// Header fields added or rewritten by relays; they are never signed.
const UNSIGNABLE_HEADERS: [&str; 8] = [
    "received",
    "return-path",
    "dkim-signature",
    "arc-seal",
    "arc-message-signature",
    "arc-authentication-results",
    "authentication-results",
    "x-original-to",
];

/// Everything a signer needs; plain data so the config module can fill it.
#[derive(Debug, Clone)]
pub struct SignerOptions {
    /// The signing domain (`d=`), ASCII (A-labels for IDNs).
    pub domain: String,
    /// The selector (`s=`): the key is published at `selector._domainkey.domain`.
    pub selector: String,
    pub key: Arc<DkimKey>,
    /// Header names to sign; From is added when missing. Case-insensitive.
    pub headers: Vec<String>,
    /// Header and body canonicalisation (`c=header/body`).
    pub canonicalization: (Canonicalization, Canonicalization),
    /// When set, signatures carry `x=` this many seconds after `t=`.
    pub expire_secs: Option<u64>,
}

/// Signs messages for one domain. Immutable once built; share it freely.
#[derive(Debug)]
pub struct DkimSigner {
    domain: String,
    selector: String,
    key: Arc<DkimKey>,
    /// Lowercase, deduplicated, From first.
    headers: Vec<String>,
    canonicalization: (Canonicalization, Canonicalization),
    expire_secs: Option<u64>,
}

/// True for an ASCII DNS name (letters, digits, '-', '_'; 1..=63 per label).
pub(crate) fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl DkimSigner {
    /// Validates the options. Errors are configuration errors.
    pub fn new(options: SignerOptions) -> Result<DkimSigner, DkimError> {
        let domain = options.domain.trim_end_matches('.').to_ascii_lowercase();
        if !valid_dns_name(&domain) {
            return Err(DkimError::Config(format!(
                "signing domain \"{}\" is not a valid ASCII domain name",
                options.domain
            )));
        }
        if !valid_dns_name(&options.selector) {
            return Err(DkimError::Config(format!(
                "selector \"{}\" for {domain} is not a valid DNS label sequence",
                options.selector
            )));
        }
        if options.headers.len() > DKIM_SIGNED_HEADER_NAMES_MAX {
            return Err(DkimError::Config(format!(
                "{domain}: {} signed headers configured; at most {DKIM_SIGNED_HEADER_NAMES_MAX}",
                options.headers.len()
            )));
        }
        let mut headers = vec!["from".to_string()];
        for name in &options.headers {
            let lower = name.trim().to_ascii_lowercase();
            let printable =
                !lower.is_empty() && lower.bytes().all(|b| (33..=126).contains(&b) && b != b':');
            if !printable {
                return Err(DkimError::Config(format!(
                    "{domain}: \"{name}\" is not a header field name"
                )));
            }
            if UNSIGNABLE_HEADERS.contains(&lower.as_str()) {
                return Err(DkimError::Config(format!(
                    "{domain}: header \"{name}\" cannot be signed: relays add it in transit"
                )));
            }
            if !headers.contains(&lower) {
                headers.push(lower);
            }
        }
        if let Some(expire_secs) = options.expire_secs {
            if expire_secs == 0 || expire_secs > DKIM_EXPIRE_SECS_MAX {
                return Err(DkimError::Config(format!(
                    "{domain}: expiry of {expire_secs} s is outside 1..={DKIM_EXPIRE_SECS_MAX} s"
                )));
            }
        }
        Ok(DkimSigner {
            domain,
            selector: options.selector,
            key: options.key,
            headers,
            canonicalization: options.canonicalization,
            expire_secs: options.expire_secs,
        })
    }

    /// The signing domain (`d=`), lowercase.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The key.
    pub fn key(&self) -> &Arc<DkimKey> {
        &self.key
    }

    /// Signs `message` (header fields, blank line, body; CRLF line ends) at
    /// `now_unix` and returns the `DKIM-Signature` field to prepend, folded,
    /// ending in CRLF.
    pub fn sign(&self, message: &[u8], now_unix: u64) -> Result<String, DkimError> {
        let (fields, body) = split_message(message);
        let body_hash = canon::body_hash(self.canonicalization.1, body);
        let signed_names = self.signed_names(&fields)?;

        let mut tags = vec![
            ("v", "1".to_string()),
            ("a", self.key.algorithm().as_str().to_string()),
            (
                "c",
                format!(
                    "{}/{}",
                    self.canonicalization.0.as_str(),
                    self.canonicalization.1.as_str()
                ),
            ),
            ("d", self.domain.clone()),
            ("s", self.selector.clone()),
            ("t", now_unix.to_string()),
        ];
        if let Some(expire_secs) = self.expire_secs {
            tags.push(("x", now_unix.saturating_add(expire_secs).to_string()));
        }
        let mut template = fold_tags(&tags, &signed_names, &BASE64.encode(body_hash.as_ref()));

        let mut signed_data = Vec::with_capacity(1024);
        for field in select_fields(&fields, &signed_names) {
            canon::canonicalize_header(self.canonicalization.0, field.raw, true, &mut signed_data);
        }
        canon::canonicalize_header(
            self.canonicalization.0,
            template.as_bytes(),
            false,
            &mut signed_data,
        );

        let signature = self
            .key
            .sign(&signed_data)
            .map_err(|reason| DkimError::Signing {
                domain: self.domain.clone(),
                reason,
            })?;
        append_folded_value(&mut template, &BASE64.encode(signature));
        template.push_str("\r\n");
        Ok(template)
    }

    /// The `h=` list: each configured name as many times as it occurs, plus one.
    fn signed_names(&self, fields: &[HeaderField<'_>]) -> Result<Vec<&str>, DkimError> {
        let mut names = Vec::with_capacity(self.headers.len() * 2);
        for name in &self.headers {
            let occurrences = fields
                .iter()
                .filter(|field| field.name.eq_ignore_ascii_case(name.as_bytes()))
                .count();
            if occurrences > DKIM_HEADER_OCCURRENCES_MAX {
                return Err(DkimError::Message {
                    domain: self.domain.clone(),
                    reason: format!(
                        "header {name} occurs {occurrences} times; at most {DKIM_HEADER_OCCURRENCES_MAX} are signed"
                    ),
                });
            }
            names.extend(std::iter::repeat_n(name.as_str(), occurrences + 1));
        }
        Ok(names)
    }
}

/// The fields `h=` designates, in `h=` order: each name takes its instances
/// from the bottom of the header up (RFC 6376 §5.4.2); names left without an
/// instance sign as empty.
pub(crate) fn select_fields<'f, 'm>(
    fields: &'f [HeaderField<'m>],
    signed_names: &[&str],
) -> Vec<&'f HeaderField<'m>> {
    let mut used = vec![false; fields.len()];
    let mut selected = Vec::with_capacity(signed_names.len());
    for name in signed_names {
        let found = fields
            .iter()
            .enumerate()
            .rev()
            .find(|(index, field)| {
                !used.get(*index).copied().unwrap_or(true)
                    && field.name.eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|(index, _)| index);
        if let Some(index) = found {
            if let (Some(slot), Some(field)) = (used.get_mut(index), fields.get(index)) {
                *slot = true;
                selected.push(field);
            }
        }
    }
    selected
}

/// Lays out the field with an empty `b=` as the last tag, folded at
/// [`DKIM_HEADER_LINE_CHARS_MAX`]. This exact text is what gets signed (it
/// matters for simple header canonicalisation), so the signature value is
/// only ever appended after it.
fn fold_tags(tags: &[(&str, String)], signed_names: &[&str], body_hash: &str) -> String {
    let mut layout = Layout {
        out: String::with_capacity(512),
        line_len: 0,
    };
    layout.out.push_str("DKIM-Signature:");
    layout.line_len = layout.out.len();
    for (tag, value) in tags {
        layout.word(&format!("{tag}={value};"));
    }
    let count = signed_names.len();
    for (index, name) in signed_names.iter().enumerate() {
        let separator = if index + 1 == count { ";" } else { ":" };
        if index == 0 {
            layout.word(&format!("h={name}{separator}"));
        } else {
            // Inside h= a fold may follow any colon (FWS is allowed there).
            layout.glued(&format!("{name}{separator}"));
        }
    }
    layout.word(&format!("bh={body_hash};"));
    layout.out.push_str("\r\n\tb=");
    layout.out
}

struct Layout {
    out: String,
    line_len: usize,
}

impl Layout {
    fn fold(&mut self) {
        self.out.push_str("\r\n\t");
        self.line_len = 1;
    }

    /// A piece preceded by a space, or by a fold when the line is full.
    fn word(&mut self, piece: &str) {
        if self.line_len + 1 + piece.len() > DKIM_HEADER_LINE_CHARS_MAX {
            self.fold();
        } else {
            self.out.push(' ');
            self.line_len += 1;
        }
        self.out.push_str(piece);
        self.line_len += piece.len();
    }

    /// A piece directly after the previous one, or after a fold.
    fn glued(&mut self, piece: &str) {
        if self.line_len + piece.len() > DKIM_HEADER_LINE_CHARS_MAX {
            self.fold();
        }
        self.out.push_str(piece);
        self.line_len += piece.len();
    }
}

/// Appends the base64 signature after `b=`, folding it.
fn append_folded_value(out: &mut String, value: &str) {
    let first_line_room = DKIM_HEADER_LINE_CHARS_MAX - "\tb=".len();
    let continuation_room = DKIM_HEADER_LINE_CHARS_MAX - 1;
    let split = first_line_room.min(value.len());
    let (first, mut rest) = value.split_at(split);
    out.push_str(first);
    while !rest.is_empty() {
        let take = continuation_room.min(rest.len());
        let (chunk, after) = rest.split_at(take);
        out.push_str("\r\n\t");
        out.push_str(chunk);
        rest = after;
    }
}
