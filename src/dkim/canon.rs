//! Canonicalisation of header fields and bodies, simple and relaxed
//! (RFC 6376 §3.4).
//!
//! Lines end in CRLF. A bare LF is treated as a line end too (as OpenDKIM and
//! most receivers do, and as an SMTP hop would normalise it); a lone CR not
//! followed by LF is ordinary data. Bodies are canonicalised in one pass
//! straight into the hash, through a small staging buffer, never copied whole.

use aws_lc_rs::digest;

/// Canonicalisation algorithm for one part (header or body) of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Canonicalization {
    /// Tolerates whitespace changes and header re-folding (the default).
    #[default]
    Relaxed,
    /// Byte-exact, except trailing empty lines of the body.
    Simple,
}

impl Canonicalization {
    /// The name used in the `c=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Canonicalization::Relaxed => "relaxed",
            Canonicalization::Simple => "simple",
        }
    }
}

/// Parses a `c=`-style setting: `"relaxed"`, `"simple"`, `"relaxed/simple"`
/// (header/body). A single name applies to the header and, as RFC 6376 §3.5
/// says, leaves the body `simple`; configuration usually writes both.
pub fn parse_canonicalization(text: &str) -> Result<(Canonicalization, Canonicalization), String> {
    let one = |name: &str| match name.trim().to_ascii_lowercase().as_str() {
        "relaxed" => Ok(Canonicalization::Relaxed),
        "simple" => Ok(Canonicalization::Simple),
        other => Err(format!(
            "canonicalization \"{other}\" is neither \"relaxed\" nor \"simple\""
        )),
    };
    match text.split_once('/') {
        Some((header, body)) => Ok((one(header)?, one(body)?)),
        None => Ok((one(text)?, Canonicalization::Simple)),
    }
}

fn is_wsp(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// Appends the canonical form of one raw header field (name, colon, value
/// and its folding, with or without its final line end) to `out`, ending in
/// CRLF when `with_crlf` is true.
pub(crate) fn canonicalize_header(
    canon: Canonicalization,
    raw: &[u8],
    with_crlf: bool,
    out: &mut Vec<u8>,
) {
    let raw = strip_line_end(raw);
    match canon {
        Canonicalization::Simple => {
            // Byte-exact, except that bare LFs inside the folding become CRLF.
            let mut previous = 0u8;
            for &byte in raw {
                if byte == b'\n' && previous != b'\r' {
                    out.push(b'\r');
                }
                out.push(byte);
                previous = byte;
            }
        }
        Canonicalization::Relaxed => {
            let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
            let (name, value) = raw.split_at(colon);
            let name_end = name.iter().rposition(|&b| !is_wsp(b)).map_or(0, |p| p + 1);
            out.extend(name.iter().take(name_end).map(u8::to_ascii_lowercase));
            out.push(b':');
            let value = value.get(1..).unwrap_or_default();
            let mut pending_space = false;
            let mut wrote_value = false;
            let mut index = 0;
            while let Some(&byte) = value.get(index) {
                index += 1;
                if byte == b'\n' || (byte == b'\r' && value.get(index) == Some(&b'\n')) {
                    // Unfolding: the line end disappears; the WSP after it
                    // counts as whitespace below.
                    continue;
                }
                if is_wsp(byte) {
                    pending_space = wrote_value;
                    continue;
                }
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(byte);
                wrote_value = true;
            }
        }
    }
    if with_crlf {
        out.extend_from_slice(b"\r\n");
    }
}

fn strip_line_end(raw: &[u8]) -> &[u8] {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    raw.strip_suffix(b"\r").unwrap_or(raw)
}

const STAGING_BYTES: usize = 8 * 1024;

/// Feeds canonical bytes to a SHA-256 context through a staging buffer so the
/// digest sees few, large updates.
struct StagedHash {
    context: digest::Context,
    staging: Vec<u8>,
}

impl StagedHash {
    fn new() -> Self {
        StagedHash {
            context: digest::Context::new(&digest::SHA256),
            staging: Vec::with_capacity(STAGING_BYTES),
        }
    }

    fn push(&mut self, byte: u8) {
        if self.staging.len() == STAGING_BYTES {
            self.flush();
        }
        self.staging.push(byte);
    }

    fn extend(&mut self, bytes: &[u8]) {
        if self.staging.len() + bytes.len() > STAGING_BYTES {
            self.flush();
            if bytes.len() >= STAGING_BYTES {
                self.context.update(bytes);
                return;
            }
        }
        self.staging.extend_from_slice(bytes);
    }

    fn crlfs(&mut self, count: usize) {
        for _ in 0..count {
            self.extend(b"\r\n");
        }
    }

    fn flush(&mut self) {
        self.context.update(&self.staging);
        self.staging.clear();
    }

    fn finish(mut self) -> digest::Digest {
        self.flush();
        self.context.finish()
    }
}

/// SHA-256 of the canonical body (the `bh=` value before base64).
pub(crate) fn body_hash(canon: Canonicalization, body: &[u8]) -> digest::Digest {
    let mut hash = StagedHash::new();
    match canon {
        Canonicalization::Simple => simple_body(body, &mut hash),
        Canonicalization::Relaxed => relaxed_body(body, &mut hash),
    }
    hash.finish()
}

/// Iterates over the lines of `body` as (content, had_line_end).
fn lines(body: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match memchr::memchr(b'\n', rest) {
            Some(lf) => {
                let (line, after) = rest.split_at(lf);
                rest = after.get(1..).unwrap_or_default();
                Some((line.strip_suffix(b"\r").unwrap_or(line), true))
            }
            None => {
                let line = rest;
                rest = &[];
                Some((line, false))
            }
        }
    })
}

/// Length of the prefix of `content` that relaxed canonicalisation leaves
/// unchanged: up to the first tab or the first space followed by WSP.
fn relaxed_clean_prefix(content: &[u8], double_space: &memchr::memmem::Finder<'_>) -> usize {
    // Both searches are vectorised; a per-byte loop here cost ~1 ns/byte.
    let tab = memchr::memchr(b'\t', content).unwrap_or(content.len());
    let before_tab = content.get(..tab).unwrap_or(content);
    match double_space.find(before_tab) {
        Some(double_space) => double_space,
        // A run ending in the tab starts at the spaces just before it.
        None => before_tab
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(0, |p| p + 1),
    }
}

/// RFC 6376 §3.4.3: lines unchanged, trailing empty lines removed, an empty
/// body becomes one CRLF.
fn simple_body(body: &[u8], hash: &mut StagedHash) {
    let mut blank_lines = 0usize;
    let mut wrote_any = false;
    for (line, _) in lines(body) {
        if line.is_empty() {
            blank_lines += 1;
            continue;
        }
        hash.crlfs(blank_lines);
        blank_lines = 0;
        hash.extend(line);
        hash.extend(b"\r\n");
        wrote_any = true;
    }
    if !wrote_any {
        hash.extend(b"\r\n");
    }
}

/// RFC 6376 §3.4.4: WSP runs become one SP, WSP at line ends goes, trailing
/// empty lines go; a non-empty body ends in CRLF; an empty body stays empty.
fn relaxed_body(body: &[u8], hash: &mut StagedHash) {
    // Built once per body: building a searcher per line cost more than searching.
    let double_space = memchr::memmem::Finder::new(b"  ");
    let mut blank_lines = 0usize;
    for (line, _) in lines(body) {
        let Some(last) = line.iter().rposition(|&b| !is_wsp(b)) else {
            // Empty or whitespace-only: empty once trailing WSP is removed.
            blank_lines += 1;
            continue;
        };
        hash.crlfs(blank_lines);
        blank_lines = 0;
        let mut content = line.get(..=last).unwrap_or_default();
        // Copy clean stretches whole; collapse each WSP run to one SP.
        loop {
            let clean = relaxed_clean_prefix(content, &double_space);
            let (head, tail) = content.split_at(clean);
            hash.extend(head);
            if tail.is_empty() {
                break;
            }
            let run = tail.iter().take_while(|&&b| is_wsp(b)).count();
            hash.push(b' ');
            content = tail.get(run..).unwrap_or_default();
        }
        hash.extend(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_body(canon: Canonicalization, body: &[u8]) -> Vec<u8> {
        // Reuse the real code path by capturing the staged bytes.
        let mut hash = StagedHash::new();
        match canon {
            Canonicalization::Simple => simple_body(body, &mut hash),
            Canonicalization::Relaxed => relaxed_body(body, &mut hash),
        }
        hash.staging
    }

    fn header(canon: Canonicalization, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        canonicalize_header(canon, raw, true, &mut out);
        out
    }

    #[test]
    fn rfc6376_section_3_4_5_example() {
        let headers: [&[u8]; 2] = [b"A: X\r\n", b"B : Y\t\r\n\tZ  \r\n"];
        let relaxed: Vec<u8> = headers
            .iter()
            .flat_map(|h| header(Canonicalization::Relaxed, h))
            .collect();
        assert_eq!(relaxed, b"a:X\r\nb:Y Z\r\n");
        let simple: Vec<u8> = headers
            .iter()
            .flat_map(|h| header(Canonicalization::Simple, h))
            .collect();
        assert_eq!(simple, b"A: X\r\nB : Y\t\r\n\tZ  \r\n");

        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(
            canonical_body(Canonicalization::Relaxed, body),
            b" C\r\nD E\r\n"
        );
        assert_eq!(
            canonical_body(Canonicalization::Simple, body),
            b" C \r\nD \t E\r\n"
        );
    }

    #[test]
    fn parses_settings() {
        use Canonicalization::{Relaxed, Simple};
        assert_eq!(
            parse_canonicalization("relaxed/relaxed"),
            Ok((Relaxed, Relaxed))
        );
        assert_eq!(
            parse_canonicalization("Simple/relaxed"),
            Ok((Simple, Relaxed))
        );
        assert_eq!(parse_canonicalization("relaxed"), Ok((Relaxed, Simple)));
        assert!(parse_canonicalization("loose/simple").is_err());
    }

    #[test]
    fn empty_bodies() {
        assert_eq!(canonical_body(Canonicalization::Simple, b""), b"\r\n");
        assert_eq!(
            canonical_body(Canonicalization::Simple, b"\r\n\r\n"),
            b"\r\n"
        );
        assert_eq!(canonical_body(Canonicalization::Relaxed, b""), b"");
        assert_eq!(
            canonical_body(Canonicalization::Relaxed, b" \r\n\t\r\n"),
            b""
        );
    }

    #[test]
    fn whitespace_only_lines_are_empty_lines_in_relaxed() {
        // RFC 6376 §3.4.4 removes trailing WSP first, so a WSP-only line is an
        // empty line: dropped at the end of the body, kept (empty) inside it.
        // OpenDKIM, Gmail and Microsoft agree (MimeKit #187, rspamd #5662);
        // mail-auth 0.13 keeps trailing ones, so it is not the judge here.
        assert_eq!(
            canonical_body(Canonicalization::Relaxed, b"Hello!\r\n  \r\n\r\n"),
            b"Hello!\r\n"
        );
        assert_eq!(
            canonical_body(Canonicalization::Relaxed, b"test\r\n \r\ntest\r\n"),
            b"test\r\n\r\ntest\r\n"
        );
        // Simple keeps them: a line of spaces is not of zero length.
        assert_eq!(
            canonical_body(Canonicalization::Simple, b"Hello!\r\n  \r\n\r\n"),
            b"Hello!\r\n  \r\n"
        );
    }

    #[test]
    fn missing_final_crlf_and_bare_lf() {
        assert_eq!(
            canonical_body(Canonicalization::Simple, b"a\nb"),
            b"a\r\nb\r\n"
        );
        assert_eq!(
            canonical_body(Canonicalization::Relaxed, b"a  \nb\t"),
            b"a\r\nb\r\n"
        );
        // A lone CR is data, not a line end.
        assert_eq!(
            canonical_body(Canonicalization::Relaxed, b"a\rb\r\n"),
            b"a\rb\r\n"
        );
    }

    #[test]
    fn relaxed_header_trims_and_lowercases() {
        assert_eq!(
            header(Canonicalization::Relaxed, b"SUBJECT :  hello   world \r\n"),
            b"subject:hello world\r\n"
        );
        assert_eq!(
            header(Canonicalization::Relaxed, b"X-Empty:\r\n"),
            b"x-empty:\r\n"
        );
        assert_eq!(
            header(Canonicalization::Relaxed, b"To: a,\n b\r\n"),
            b"to:a, b\r\n"
        );
    }

    /// RFC 6376 §3.4.3/§3.4.4 written as plainly as possible, to check the
    /// fast canonicalisers against.
    fn reference_body(canon: Canonicalization, body: &[u8]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut current = Vec::new();
        let mut index = 0;
        while index < body.len() {
            let byte = body[index];
            if byte == b'\n' {
                if current.last() == Some(&b'\r') {
                    current.pop();
                }
                lines.push(std::mem::take(&mut current));
            } else {
                current.push(byte);
            }
            index += 1;
        }
        if !current.is_empty() {
            lines.push(current);
        }
        if canon == Canonicalization::Relaxed {
            for line in &mut lines {
                let mut reduced = Vec::new();
                for &byte in line.iter() {
                    if is_wsp(byte) {
                        if reduced.last() != Some(&b' ') || reduced.is_empty() {
                            reduced.push(b' ');
                        }
                    } else {
                        reduced.push(byte);
                    }
                }
                while reduced.last() == Some(&b' ') {
                    reduced.pop();
                }
                *line = reduced;
            }
        }
        while lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let mut out = Vec::new();
        for line in &lines {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        if out.is_empty() && canon == Canonicalization::Simple {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn fast_canonicalisers_match_the_reference(
            body in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'b', b' ', b'\t', b'\r', b'\n', 0xc3]),
                0..300,
            )
        ) {
            for canon in [Canonicalization::Relaxed, Canonicalization::Simple] {
                let expected = reference_body(canon, &body);
                proptest::prop_assert_eq!(canonical_body(canon, &body), expected.clone());
                let direct = digest::digest(&digest::SHA256, &expected);
                let fast = body_hash(canon, &body);
                proptest::prop_assert_eq!(fast.as_ref(), direct.as_ref());
            }
        }
    }

    #[test]
    fn staging_buffer_boundaries_do_not_change_the_hash() {
        // A body larger than the staging buffer, with WSP runs crossing it.
        let mut body = Vec::new();
        for index in 0..2000 {
            body.extend_from_slice(format!("line {index} \t  with   runs \r\n").as_bytes());
        }
        let staged = body_hash(Canonicalization::Relaxed, &body);
        let mut expected = Vec::new();
        for index in 0..2000 {
            expected.extend_from_slice(format!("line {index} with runs\r\n").as_bytes());
        }
        let direct = digest::digest(&digest::SHA256, &expected);
        assert_eq!(staged.as_ref(), direct.as_ref());
    }
}
