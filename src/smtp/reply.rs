//! SMTP replies: the [`Reply`] value, RFC 3463 [`EnhancedStatus`] codes, the
//! wire encoder and an incremental, bounded [`ReplyParser`].
//!
//! The parser is lenient where real servers are sloppy (no enhanced code, a
//! bare `250`, LF-only line ends, non-UTF-8 text, a `421-` continuation) and
//! strict where the framing itself is broken (bad codes, mixed codes inside
//! one multi-line reply, lines or line counts beyond our limits). What to do
//! with a reply is left to the client session and the delivery engine.

use std::fmt;

use super::limits::{SMTP_REPLY_LINE_BYTES_MAX, SMTP_REPLY_LINES_MAX};

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// 0..=999 by grammar; RFC 3463 defines 0..=7.
    pub subject: u16,
    /// 0..=999.
    pub detail: u16,
}

impl EnhancedStatus {
    /// Builds a status; `class` must be 2, 4 or 5 for it to be encodable.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `c.s.d` exactly (no surrounding text). `None` if malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        Some(Self {
            class,
            subject: parse_1_to_3_digits(subject)?,
            detail: parse_1_to_3_digits(detail)?,
        })
    }

    /// Finds the first enhanced status code in free reply text such as
    /// `"550 5.1.1 <a@b>: user unknown"` (used by bounce classification on
    /// text that did not come through [`ReplyParser`]).
    pub fn find_in(text: &str) -> Option<Self> {
        text.split(|c: char| c.is_ascii_whitespace() || c == '-' || c == '(' || c == ')')
            .find_map(|word| Self::parse(word.trim_end_matches([',', ';', ':'])))
    }
}

fn parse_1_to_3_digits(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply, possibly multi-line. `lines` holds each line's text
/// without the code, separator or enhanced status; it always has at least
/// one entry (which may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code, 200..=599.
    pub code: u16,
    /// The enhanced status carried by the reply, if any.
    pub enhanced: Option<EnhancedStatus>,
    /// Text of each line.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedStatus>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// A one-line reply with an enhanced status given as numbers.
    pub fn with_status(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Self {
        Self::new(
            code,
            Some(EnhancedStatus::new(status.0, status.1, status.2)),
            text,
        )
    }

    /// 2xx and 3xx: the command succeeded or the server waits for more.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 2xx only.
    pub fn is_positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx (and anything outside 2xx-4xx): do not retry.
    pub fn is_permanent(&self) -> bool {
        !self.is_positive() && !self.is_transient()
    }

    /// Appends the wire form (`250-a\r\n250 b\r\n`) to `out`. CR and LF
    /// inside a text are replaced by spaces so a reply can never split.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let count = self.lines.len().max(1);
        for index in 0..count {
            let text = self.lines.get(index).map(String::as_str).unwrap_or("");
            let last = index + 1 == count;
            out.extend_from_slice(format!("{:03}", self.code.min(999)).as_bytes());
            let has_text = !text.is_empty() || self.enhanced.is_some();
            if !last {
                out.push(b'-');
            } else if has_text || self.code == 334 {
                // RFC 4954 §4: a 334 challenge always has the space.
                out.push(b' ');
            }
            if let Some(status) = self.enhanced {
                out.extend_from_slice(status.to_string().as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(
                text.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// One-line form for logs and accounting: `550 5.7.1 first line second line`.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.code)?;
        if let Some(status) = self.enhanced {
            write!(f, " {status}")?;
        }
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

/// Why a reply could not be parsed. Every variant is the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The line does not start with a valid three-digit code (2-5, 0-5, 0-9).
    #[error("reply line does not start with a valid reply code")]
    BadCode,
    /// The code is followed by something other than `-`, space or line end.
    #[error("reply code followed by an invalid separator")]
    BadSeparator,
    /// A continuation line carries a different code than the first line.
    #[error("multi-line reply mixes codes {first} and {got}")]
    CodeMismatch {
        /// Code of the first line.
        first: u16,
        /// Code of the offending line.
        got: u16,
    },
    /// A line exceeded `SMTP_REPLY_LINE_BYTES_MAX`.
    #[error("reply line longer than {max} bytes", max = SMTP_REPLY_LINE_BYTES_MAX)]
    LineTooLong,
    /// A reply exceeded `SMTP_REPLY_LINES_MAX` lines.
    #[error("reply has more than {max} lines", max = SMTP_REPLY_LINES_MAX)]
    TooManyLines,
}

/// Incremental reply parser. Feed it bytes with [`ReplyParser::parse`];
/// it stops after each complete reply so the caller handles replies one by
/// one, and holds at most one partial line.
#[derive(Debug, Default)]
pub struct ReplyParser {
    line: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
    /// Set once a line reached the limit; the parser refuses further input.
    failed: Option<ReplyError>,
}

impl ReplyParser {
    /// A parser expecting the start of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no partial reply is buffered.
    pub fn is_idle(&self) -> bool {
        self.line.is_empty() && self.code.is_none()
    }

    /// Consumes bytes from `input` up to the end of the first complete reply.
    /// Returns how many bytes were consumed and the reply, if one completed.
    /// After an error the parser stays failed: the stream is out of sync.
    pub fn parse(&mut self, input: &[u8]) -> Result<(usize, Option<Reply>), ReplyError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut consumed = 0;
        while consumed < input.len() {
            let rest = input.get(consumed..).unwrap_or_default();
            let (take, complete) = match memchr::memchr(b'\n', rest) {
                Some(lf) => (lf + 1, true),
                None => (rest.len(), false),
            };
            let piece = rest.get(..take).unwrap_or_default();
            if self.line.len() + piece.len() > SMTP_REPLY_LINE_BYTES_MAX {
                return Err(self.fail(ReplyError::LineTooLong));
            }
            self.line.extend_from_slice(piece);
            consumed += take;
            if !complete {
                break;
            }
            match self.finish_line() {
                Ok(Some(reply)) => return Ok((consumed, Some(reply))),
                Ok(None) => {}
                Err(error) => return Err(self.fail(error)),
            }
        }
        Ok((consumed, None))
    }

    fn fail(&mut self, error: ReplyError) -> ReplyError {
        self.failed = Some(error.clone());
        error
    }

    /// Handles one complete line in `self.line` (ending in LF).
    fn finish_line(&mut self) -> Result<Option<Reply>, ReplyError> {
        let mut line = std::mem::take(&mut self.line);
        line.pop(); // the LF
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let (code, last, text) = split_reply_line(&line)?;
        match self.code {
            Some(first) if first != code => {
                return Err(ReplyError::CodeMismatch { first, got: code });
            }
            _ => self.code = Some(code),
        }
        if self.lines.len() >= SMTP_REPLY_LINES_MAX {
            return Err(ReplyError::TooManyLines);
        }
        self.lines.push(String::from_utf8_lossy(text).into_owned());
        if !last {
            return Ok(None);
        }
        self.code = None;
        let lines = std::mem::take(&mut self.lines);
        Ok(Some(build_reply(code, lines)))
    }
}

/// Splits `250-text` into (250, is_last_line, text).
fn split_reply_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let (digits, rest) = match line {
        [a, b, c, rest @ ..] => ([*a, *b, *c], rest),
        _ => return Err(ReplyError::BadCode),
    };
    let valid = (b'2'..=b'5').contains(&digits[0])
        && (b'0'..=b'5').contains(&digits[1])
        && digits[2].is_ascii_digit();
    if !valid {
        return Err(ReplyError::BadCode);
    }
    let code = u16::from(digits[0] - b'0') * 100
        + u16::from(digits[1] - b'0') * 10
        + u16::from(digits[2] - b'0');
    match rest {
        [] => Ok((code, true, &[])),
        [b' ', text @ ..] => Ok((code, true, text)),
        [b'-', text @ ..] => Ok((code, false, text)),
        _ => Err(ReplyError::BadSeparator),
    }
}

/// Pulls the enhanced status off the first line (and off continuation lines
/// repeating it) when its class agrees with the reply code.
fn build_reply(code: u16, mut lines: Vec<String>) -> Reply {
    let class = u8::try_from(code / 100).unwrap_or(0);
    let first = lines.first().map(String::as_str).unwrap_or("");
    let token = first.split(' ').next().unwrap_or("");
    let enhanced = EnhancedStatus::parse(token).filter(|s| s.class == class);
    if let Some(status) = enhanced {
        let prefix = status.to_string();
        for line in &mut lines {
            if let Some(rest) = line.strip_prefix(prefix.as_str()) {
                if rest.is_empty() {
                    line.clear();
                } else if let Some(text) = rest.strip_prefix(' ') {
                    *line = text.to_owned();
                }
            }
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    Reply {
        code,
        enhanced,
        lines,
    }
}

/// Parses every reply in `input` (a convenience for tests and fuzzing).
/// Returns the replies and whether an incomplete reply was left over.
pub fn parse_replies(input: &[u8]) -> Result<(Vec<Reply>, bool), ReplyError> {
    let mut parser = ReplyParser::new();
    let mut replies = Vec::new();
    let mut offset = 0;
    loop {
        let rest = input.get(offset..).unwrap_or_default();
        let (used, reply) = parser.parse(rest)?;
        offset += used;
        match reply {
            Some(reply) => replies.push(reply),
            None => return Ok((replies, !parser.is_idle())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> Option<EnhancedStatus> {
        EnhancedStatus::parse(s)
    }

    #[test]
    fn enhanced_status_parsing() {
        assert_eq!(code("5.1.1"), Some(EnhancedStatus::new(5, 1, 1)));
        assert_eq!(code("4.7.650"), Some(EnhancedStatus::new(4, 7, 650)));
        assert_eq!(code("3.1.1"), None);
        assert_eq!(code("5.1"), None);
        assert_eq!(code("5.1.1.1"), None);
        assert_eq!(code("5.1.x"), None);
        assert_eq!(code("5.1000.1"), None);
        assert_eq!(
            EnhancedStatus::find_in("550-5.1.1 The email account does not exist"),
            Some(EnhancedStatus::new(5, 1, 1))
        );
        assert_eq!(EnhancedStatus::find_in("550 no code here 1.2"), None);
    }

    fn one(input: &[u8]) -> Result<Reply, ReplyError> {
        let mut parser = ReplyParser::new();
        match parser.parse(input)? {
            (n, Some(reply)) if n == input.len() => Ok(reply),
            other => panic!("incomplete or trailing: {other:?}"),
        }
    }

    #[test]
    fn multi_line_with_enhanced_codes() {
        let reply = one(b"250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 100\r\n").unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.lines, ["mx.example.com", "PIPELINING", "SIZE 100"]);

        let reply = one(b"550-5.7.1 no\r\n550 5.7.1 really not\r\n").unwrap();
        assert_eq!(reply.enhanced, Some(EnhancedStatus::new(5, 7, 1)));
        assert_eq!(reply.lines, ["no", "really not"]);
        assert!(reply.is_permanent());
        assert_eq!(reply.to_string(), "550 5.7.1 no really not");
    }

    #[test]
    fn lenient_forms() {
        assert_eq!(one(b"250\r\n").unwrap().lines, [""]);
        assert_eq!(one(b"250 ok\n").unwrap().lines, ["ok"]);
        let reply = one(b"421-4.3.2 going\r\n421 down\r\n").unwrap();
        assert!(reply.is_transient());
        assert_eq!(reply.lines, ["going", "down"]);
        // class disagrees with code: kept as text
        let reply = one(b"250 5.0.0 odd\r\n").unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.lines, ["5.0.0 odd"]);
        let reply = one(b"554 \xff\xfe latin\r\n").unwrap();
        assert_eq!(reply.code, 554);
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(one(b"25\r\n"), Err(ReplyError::BadCode));
        assert_eq!(one(b"650 x\r\n"), Err(ReplyError::BadCode));
        assert_eq!(one(b"2a0 x\r\n"), Err(ReplyError::BadCode));
        assert_eq!(one(b"250x\r\n"), Err(ReplyError::BadSeparator));
        assert_eq!(
            one(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeMismatch {
                first: 250,
                got: 251
            })
        );
        let mut long = b"250 ".to_vec();
        long.resize(SMTP_REPLY_LINE_BYTES_MAX + 10, b'a');
        let mut parser = ReplyParser::new();
        assert_eq!(parser.parse(&long), Err(ReplyError::LineTooLong));
        let mut many = Vec::new();
        for _ in 0..=SMTP_REPLY_LINES_MAX {
            many.extend_from_slice(b"250-x\r\n");
        }
        assert_eq!(one(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn long_line_at_limit_is_accepted() {
        let mut line = b"250 ".to_vec();
        line.resize(SMTP_REPLY_LINE_BYTES_MAX - 2, b'a');
        line.extend_from_slice(b"\r\n");
        assert_eq!(one(&line).unwrap().code, 250);
    }

    #[test]
    fn encode_round_trips() {
        let replies = [
            Reply::with_status(250, (2, 1, 0), "Sender OK"),
            Reply::new(220, None, "mx ESMTP"),
            Reply::new(250, None, ""),
            Reply::with_status(550, (5, 7, 1), ""),
            Reply {
                code: 250,
                enhanced: None,
                lines: vec!["mx".into(), "PIPELINING".into(), "SIZE 10".into()],
            },
            Reply {
                code: 451,
                enhanced: Some(EnhancedStatus::new(4, 3, 0)),
                lines: vec!["a".into(), "".into(), "c".into()],
            },
        ];
        for reply in replies {
            assert_eq!(one(&reply.to_bytes()).unwrap(), reply, "{reply}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_replies() {
        let input: &[u8] = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 2.0.0 SIZE 5\r\n550-5.1.1 a\r\n550 5.1.1 b\r\n354 go\n";
        let (expected, incomplete) = parse_replies(input).unwrap();
        assert_eq!(expected.len(), 4);
        assert!(!incomplete);
        for split in 0..=input.len() {
            let mut parser = ReplyParser::new();
            let mut got = Vec::new();
            for part in [&input[..split], &input[split..]] {
                let mut offset = 0;
                while offset < part.len() {
                    let (used, reply) = parser.parse(&part[offset..]).unwrap();
                    offset += used;
                    got.extend(reply);
                }
            }
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn stops_after_each_reply() {
        let mut parser = ReplyParser::new();
        let input = b"250 a\r\n251 b\r\n";
        let (used, reply) = parser.parse(input).unwrap();
        assert_eq!(used, 7);
        assert_eq!(reply.unwrap().code, 250);
        assert!(parser.is_idle());
    }

    #[test]
    fn enhanced_status_parse() {
        assert_eq!(
            EnhancedStatus::parse("4.7.0"),
            Some(EnhancedStatus::new(4, 7, 0))
        );
        assert_eq!(
            EnhancedStatus::parse("5.123.999"),
            Some(EnhancedStatus::new(5, 123, 999))
        );
        for bad in ["3.0.0", "5.1", "5.1.1.1", "5..1", "5.1234.1", "5.a.1", ""] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn reply() -> impl Strategy<Value = Reply> {
        (
            2u16..=5,
            0u16..=5,
            0u16..=9,
            any::<bool>(),
            0u16..=7,
            0u16..=20,
        )
            .prop_flat_map(|(c, s, d, with_status, subject, detail)| {
                let code = c * 100 + s * 10 + d;
                let enhanced =
                    (with_status && c != 3).then(|| EnhancedStatus::new(c as u8, subject, detail));
                prop::collection::vec("[a-zA-Z ,;:!-]{0,30}", 1..6).prop_map(move |lines| Reply {
                    code,
                    enhanced,
                    lines,
                })
            })
    }

    proptest! {
        #[test]
        fn encode_then_parse_is_identity(reply in reply(), split in 0usize..400) {
            let wire = reply.to_bytes();
            let split = split.min(wire.len());
            let mut parser = ReplyParser::new();
            let (used, first) = parser.parse(&wire[..split]).unwrap();
            prop_assert_eq!(used, split);
            let parsed = match first {
                Some(r) => r,
                None => {
                    let (used, second) = parser.parse(&wire[split..]).unwrap();
                    prop_assert_eq!(split + used, wire.len());
                    second.unwrap()
                }
            };
            prop_assert_eq!(parsed, reply);
        }
    }
}
