//! Envelope addresses: [`Mailbox`] (`local@domain`), the reverse path of MAIL
//! (which may be null, `<>`) and the forward path of RCPT (which may be the
//! bare `<Postmaster>`), plus RFC 3461 xtext coding used by ENVID, ORCPT and
//! AUTH=.
//!
//! Parsing follows RFC 5321 §4.1.2 with RFC 6531 (SMTPUTF8) extensions when
//! the caller says they are allowed. Source routes (`<@a,@b:u@d>`) are
//! accepted and dropped, as §C asks. Policy on addresses (relaying, local
//! users) is left to the session layer.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::limits::{SMTP_DOMAIN_BYTES_MAX, SMTP_LOCAL_PART_BYTES_MAX};

/// An address `local_part@domain`. `local_part` is stored decoded (quotes
/// and backslash escapes removed); [`fmt::Display`] quotes it again when it
/// is not a dot-atom. `domain` is a host name or an address literal kept
/// with its brackets (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Decoded local part.
    pub local_part: String,
    /// Domain or bracketed address literal.
    pub domain: String,
}

/// MAIL FROM's path: a mailbox, or null (`<>`) for bounces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`
    Null,
    /// `<local@domain>`
    Mailbox(Mailbox),
}

/// RCPT TO's path: a mailbox, or the special domain-less `<Postmaster>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` (case-insensitive), meaning this server's postmaster.
    Postmaster,
    /// `<local@domain>`
    Mailbox(Mailbox),
}

/// Why an address did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path is not enclosed in `<` and `>`.
    #[error("path must be enclosed in angle brackets")]
    MissingBrackets,
    /// Bad characters or structure in the local part.
    #[error("invalid local part")]
    BadLocalPart,
    /// Bad host name or address literal.
    #[error("invalid domain")]
    BadDomain,
    /// Missing `@domain`.
    #[error("missing domain")]
    MissingDomain,
    /// Local part or domain beyond our limits.
    #[error("address too long")]
    TooLong,
    /// Non-ASCII characters without SMTPUTF8.
    #[error("non-ASCII address requires SMTPUTF8")]
    NeedsSmtpUtf8,
    /// A malformed source route.
    #[error("invalid source route")]
    BadRoute,
}

impl Mailbox {
    /// Builds a mailbox from parts without validation (for callers that
    /// already hold trusted values, e.g. from the spool).
    pub fn new(local_part: impl Into<String>, domain: impl Into<String>) -> Self {
        Self {
            local_part: local_part.into(),
            domain: domain.into(),
        }
    }

    /// Parses `local@domain` (no brackets).
    pub fn parse(text: &str, smtputf8: bool) -> Result<Self, AddressError> {
        let mut cursor = Cursor::new(text);
        let mailbox = cursor.mailbox(smtputf8)?;
        if !cursor.rest().is_empty() {
            return Err(AddressError::BadDomain);
        }
        Ok(mailbox)
    }

    /// True when neither part contains non-ASCII characters.
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }
}

impl ReversePath {
    /// True for `<>` or an ASCII mailbox.
    pub fn is_ascii(&self) -> bool {
        match self {
            Self::Null => true,
            Self::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl ForwardPath {
    /// True for `<Postmaster>` or an ASCII mailbox.
    pub fn is_ascii(&self) -> bool {
        match self {
            Self::Postmaster => true,
            Self::Mailbox(m) => m.is_ascii(),
        }
    }
}

fn is_atext(c: char, smtputf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (smtputf8 && !c.is_ascii())
}

fn is_qtext(c: char, smtputf8: bool) -> bool {
    matches!(c, ' '..='!' | '#'..='[' | ']'..='~') || (smtputf8 && !c.is_ascii())
}

fn local_part_is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, true)))
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if local_part_is_dot_atom(&self.local_part) {
            f.write_str(&self.local_part)?;
        } else {
            f.write_str("\"")?;
            for c in self.local_part.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl fmt::Display for ReversePath {
    /// The bracketed wire form: `<>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("<>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

impl fmt::Display for ForwardPath {
    /// The bracketed wire form: `<Postmaster>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster => f.write_str("<Postmaster>"),
            Self::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Parses `<...>` at the start of `text` as a reverse path; returns it and
/// the text after `>`.
pub fn parse_reverse_path(text: &str, smtputf8: bool) -> Result<(ReversePath, &str), AddressError> {
    if let Some(rest) = text.strip_prefix("<>") {
        return Ok((ReversePath::Null, rest));
    }
    let (mailbox, rest) = parse_bracketed(text, smtputf8)?;
    Ok((ReversePath::Mailbox(mailbox), rest))
}

/// Parses `<...>` at the start of `text` as a forward path; returns it and
/// the text after `>`.
pub fn parse_forward_path(text: &str, smtputf8: bool) -> Result<(ForwardPath, &str), AddressError> {
    if let Some(inner) = text.get(..12) {
        if inner.eq_ignore_ascii_case("<postmaster>") {
            return Ok((ForwardPath::Postmaster, text.get(12..).unwrap_or("")));
        }
    }
    let (mailbox, rest) = parse_bracketed(text, smtputf8)?;
    Ok((ForwardPath::Mailbox(mailbox), rest))
}

fn parse_bracketed(text: &str, smtputf8: bool) -> Result<(Mailbox, &str), AddressError> {
    let mut cursor = Cursor::new(text);
    if !cursor.eat('<') {
        return Err(AddressError::MissingBrackets);
    }
    if cursor.peek() == Some('@') {
        cursor.source_route()?;
    }
    let mailbox = cursor.mailbox(smtputf8)?;
    if !cursor.eat('>') {
        return Err(AddressError::MissingBrackets);
    }
    Ok((mailbox, cursor.rest()))
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            true
        } else {
            false
        }
    }

    /// `@dom,@dom:` — parsed for syntax, then ignored.
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            if !self.eat('@') {
                return Err(AddressError::BadRoute);
            }
            self.domain(true).map_err(|_| AddressError::BadRoute)?;
            if self.eat(':') {
                return Ok(());
            }
            if !self.eat(',') {
                return Err(AddressError::BadRoute);
            }
        }
    }

    fn mailbox(&mut self, smtputf8: bool) -> Result<Mailbox, AddressError> {
        let local_part = if self.peek() == Some('"') {
            self.quoted_string(smtputf8)?
        } else {
            self.dot_string(smtputf8)?
        };
        if local_part.len() > SMTP_LOCAL_PART_BYTES_MAX {
            return Err(AddressError::TooLong);
        }
        if !self.eat('@') {
            return Err(AddressError::MissingDomain);
        }
        let domain = self.domain(smtputf8)?;
        Ok(Mailbox { local_part, domain })
    }

    fn dot_string(&mut self, smtputf8: bool) -> Result<String, AddressError> {
        let start = self.pos;
        let mut atom_len = 0;
        while let Some(c) = self.peek() {
            if is_atext(c, true) {
                if !c.is_ascii() && !smtputf8 {
                    return Err(AddressError::NeedsSmtpUtf8);
                }
                atom_len += 1;
            } else if c == '.' {
                if atom_len == 0 {
                    return Err(AddressError::BadLocalPart);
                }
                atom_len = 0;
            } else {
                break;
            }
            self.bump();
        }
        if atom_len == 0 {
            return Err(AddressError::BadLocalPart);
        }
        Ok(self.text.get(start..self.pos).unwrap_or("").to_owned())
    }

    fn quoted_string(&mut self, smtputf8: bool) -> Result<String, AddressError> {
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            let c = self.bump().ok_or(AddressError::BadLocalPart)?;
            match c {
                '"' => return Ok(out),
                '\\' => match self.bump() {
                    Some(q @ ' '..='~') => out.push(q),
                    _ => return Err(AddressError::BadLocalPart),
                },
                c if is_qtext(c, true) => {
                    if !c.is_ascii() && !smtputf8 {
                        return Err(AddressError::NeedsSmtpUtf8);
                    }
                    out.push(c);
                }
                _ => return Err(AddressError::BadLocalPart),
            }
            if out.len() > SMTP_LOCAL_PART_BYTES_MAX {
                return Err(AddressError::TooLong);
            }
        }
    }

    fn domain(&mut self, smtputf8: bool) -> Result<String, AddressError> {
        let start = self.pos;
        if self.eat('[') {
            while let Some(c) = self.bump() {
                if c == ']' {
                    let literal = self.text.get(start..self.pos).unwrap_or("");
                    if !valid_address_literal(literal) {
                        return Err(AddressError::BadDomain);
                    }
                    return Ok(literal.to_owned());
                }
                if self.pos - start > SMTP_DOMAIN_BYTES_MAX {
                    return Err(AddressError::TooLong);
                }
            }
            return Err(AddressError::BadDomain);
        }
        let mut label_len = 0usize;
        let mut last = '.';
        while let Some(c) = self.peek() {
            let non_ascii = !c.is_ascii() && !c.is_whitespace() && !c.is_control();
            if c.is_ascii_alphanumeric() || c == '-' || non_ascii {
                if non_ascii && !smtputf8 {
                    return Err(AddressError::NeedsSmtpUtf8);
                }
                if label_len == 0 && c == '-' {
                    return Err(AddressError::BadDomain);
                }
                label_len += 1;
                if label_len > 63 {
                    return Err(AddressError::BadDomain);
                }
            } else if c == '.' {
                if label_len == 0 || last == '-' {
                    return Err(AddressError::BadDomain);
                }
                label_len = 0;
            } else {
                break;
            }
            last = c;
            self.bump();
        }
        if label_len == 0 || last == '-' {
            return Err(AddressError::BadDomain);
        }
        if self.pos - start > SMTP_DOMAIN_BYTES_MAX {
            return Err(AddressError::TooLong);
        }
        Ok(self.text.get(start..self.pos).unwrap_or("").to_owned())
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`; general literals are refused.
fn valid_address_literal(literal: &str) -> bool {
    let Some(inner) = literal.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
        return inner
            .get(v6.len()..)
            .is_some_and(|a| a.parse::<Ipv6Addr>().is_ok());
    }
    inner.parse::<Ipv4Addr>().is_ok()
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes; `+` and `=` must be escaped,
/// everything else printable ASCII). `None` if malformed.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                let hex = text.get(i + 1..i + 3)?;
                if !hex
                    .bytes()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
                {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'!'..=b'~' if b != b'=' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes `text` as xtext.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox::new(local, domain)
    }

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_reverse_path("<a.b@example.com> SIZE=1", false).unwrap(),
            (ReversePath::Mailbox(mb("a.b", "example.com")), " SIZE=1")
        );
        assert_eq!(
            parse_reverse_path("<>", false).unwrap(),
            (ReversePath::Null, "")
        );
        assert_eq!(
            parse_forward_path("<POSTMASTER>", false).unwrap(),
            (ForwardPath::Postmaster, "")
        );
        assert_eq!(
            parse_forward_path("<@relay.example,@b.example:joe@c.example>", false).unwrap(),
            (ForwardPath::Mailbox(mb("joe", "c.example")), "")
        );
        assert_eq!(
            parse_forward_path("<\"john doe\\\"x\"@[192.0.2.1]>", false).unwrap(),
            (ForwardPath::Mailbox(mb("john doe\"x", "[192.0.2.1]")), "")
        );
        assert_eq!(
            parse_forward_path("<x@[IPv6:2001:db8::1]>", false)
                .unwrap()
                .0,
            ForwardPath::Mailbox(mb("x", "[IPv6:2001:db8::1]"))
        );
    }

    #[test]
    fn refuses_bad_paths() {
        use AddressError::*;
        let cases: &[(&str, AddressError)] = &[
            ("a@b", MissingBrackets),
            ("<a@b", MissingBrackets),
            ("<a>", MissingDomain),
            ("<.a@b>", BadLocalPart),
            ("<a..b@c>", BadLocalPart),
            ("<a@b..c>", BadDomain),
            ("<a@-b>", BadDomain),
            ("<a@b->", BadDomain),
            ("<a@[300.1.1.1]>", BadDomain),
            ("<a@[foo:bar]>", BadDomain),
            ("<\"a@b>", BadLocalPart),
            ("<@x:>", BadLocalPart),
            ("<@:a@b>", BadRoute),
            ("<jöe@example.com>", NeedsSmtpUtf8),
            ("<joe@exämple.com>", NeedsSmtpUtf8),
            ("<a b@c>", MissingDomain),
        ];
        for (text, want) in cases {
            let got = parse_forward_path(text, false).map(|_| ()).unwrap_err();
            assert_eq!(got, *want, "{text}");
        }
        let long = format!("<{}@b>", "a".repeat(SMTP_LOCAL_PART_BYTES_MAX + 1));
        assert_eq!(parse_reverse_path(&long, false).unwrap_err(), TooLong);
    }

    #[test]
    fn smtputf8_addresses_only_when_allowed() {
        let (path, _) = parse_forward_path("<jöe@exämple.com>", true).unwrap();
        assert_eq!(path, ForwardPath::Mailbox(mb("jöe", "exämple.com")));
        assert!(!path.is_ascii());
    }

    #[test]
    fn display_quotes_when_needed() {
        assert_eq!(mb("a.b", "c").to_string(), "a.b@c");
        assert_eq!(mb("a b", "c").to_string(), "\"a b\"@c");
        assert_eq!(mb("a\"\\", "c").to_string(), "\"a\\\"\\\\\"@c");
        assert_eq!(mb(".x", "c").to_string(), "\".x\"@c");
        for m in [mb("a b", "c.d"), mb("q\"x", "e"), mb("a..b", "[10.0.0.1]")] {
            let text = format!("<{m}>");
            assert_eq!(
                parse_forward_path(&text, false).unwrap().0,
                ForwardPath::Mailbox(m)
            );
        }
    }

    #[test]
    fn xtext_round_trip() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_decode("a+2b"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a b"), None);
        for s in ["", "plain", "a+b=c d", "ünï"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
    }
}
