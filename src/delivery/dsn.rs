//! RFC 3464 delivery status notifications, built from plain inputs.
//!
//! Owns whether a DSN is due (null reverse path, NOTIFY) and its bytes: a
//! `multipart/report; report-type=delivery-status` with a human-readable
//! part, the `message/delivery-status` part and the returned content. The
//! caller queues the result like any message, with the null reverse path.
//! No clock, no randomness: `now` and a unique token come in.
//!
//! Returned content: RET=HDRS → `text/rfc822-headers`. RET=FULL → the whole
//! message as `message/rfc822` up to `DSN_RETURN_FULL_BYTES_MAX`, headers
//! only beyond it. RET absent → the whole message up to
//! `DSN_RETURN_DEFAULT_BYTES_MAX`, headers only beyond it (RFC 3461 lets the
//! MTA choose; small messages are most useful whole, big ones would bounce
//! again at the sender's size limit).

use std::fmt::Write as _;

use crate::smtp::reply::EnhancedStatus;
use crate::util::time::rfc5322_date;

/// RET=FULL returns at most this many bytes of message; larger: headers.
pub const DSN_RETURN_FULL_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Without RET the whole message is returned only up to this size.
pub const DSN_RETURN_DEFAULT_BYTES_MAX: usize = 256 * 1024;
/// Header bytes returned at most (a header block beyond it is cut at a line).
pub const DSN_RETURN_HEADERS_BYTES_MAX: usize = 64 * 1024;
/// Diagnostic text kept per recipient (keeps fields under 998 octets).
pub const DSN_DIAGNOSTIC_BYTES_MAX: usize = 800;
/// Recipients reported in one DSN.
pub const DSN_RECIPIENTS_MAX: usize = 1000;

const _: () = assert!(DSN_RETURN_DEFAULT_BYTES_MAX <= DSN_RETURN_FULL_BYTES_MAX);
const _: () = assert!(DSN_DIAGNOSTIC_BYTES_MAX < 998 - 40);

/// The MAIL FROM `RET=` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// The RCPT TO `NOTIFY=` parameter. `None` where it is used means absent:
/// failures only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    pub const NEVER: Notify = Notify {
        never: true,
        success: false,
        failure: false,
        delay: false,
    };

    /// Parses `NEVER` or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut n = Notify::default();
        for word in s.split(',') {
            match word.trim().to_ascii_uppercase().as_str() {
                "NEVER" => n.never = true,
                "SUCCESS" => n.success = true,
                "FAILURE" => n.failure = true,
                "DELAY" => n.delay = true,
                _ => return None,
            }
        }
        // RFC 3461 §4.1: NEVER must appear alone.
        if n.never && (n.success || n.failure || n.delay) {
            return None;
        }
        Some(n)
    }
}

/// What happened to a reported recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
}

impl DsnAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delayed => "delayed",
        }
    }
}

/// The message's envelope as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnEnvelope {
    /// MAIL FROM address without brackets; empty for the null reverse path.
    pub reverse_path: String,
    /// `ENVID=` (already xtext-decoded).
    pub envid: Option<String>,
    pub ret: Option<Ret>,
    /// When we received the message, unix seconds.
    pub arrival_unix: i64,
}

/// One recipient's outcome to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    pub recipient: String,
    /// `ORCPT=` as `addr-type;address` (xtext-decoded), e.g. `rfc822;a@b`.
    pub orcpt: Option<String>,
    pub notify: Option<Notify>,
    pub action: DsnAction,
    pub status: EnhancedStatus,
    /// The host that answered, if any.
    pub remote_mta: Option<String>,
    /// The SMTP reply (`550 5.1.1 user unknown`), if any.
    pub diagnostic: Option<String>,
    pub last_attempt_unix: i64,
    /// For `Delayed`: when we give up.
    pub will_retry_until_unix: Option<i64>,
}

/// Everything a DSN is made from.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our name: `Reporting-MTA`, `From: MAILER-DAEMON@hostname`.
    pub hostname: &'a str,
    pub envelope: &'a DsnEnvelope,
    pub recipients: &'a [RecipientOutcome],
    /// The original message as spooled (headers and body, CRLF lines).
    pub original: &'a [u8],
    pub now_unix: i64,
    /// Unique per DSN (e.g. the spool id plus a counter): Message-ID and
    /// MIME boundary.
    pub unique: &'a str,
}

/// A DSN ready to queue: send from `<>` to `recipient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Always empty: a DSN's reverse path is null (RFC 3461 §6.2).
    pub reverse_path: String,
    pub recipient: String,
    pub message: Vec<u8>,
    /// Recipients reported (those NOTIFY asked about).
    pub reported: usize,
}

/// Whether `outcome` should be reported per its NOTIFY.
pub fn wants_report(notify: Option<Notify>, action: DsnAction) -> bool {
    let notify = notify.unwrap_or(Notify {
        failure: true,
        ..Notify::default()
    });
    !notify.never
        && match action {
            DsnAction::Failed => notify.failure,
            DsnAction::Delayed => notify.delay,
        }
}

/// Builds the DSN, or `None` when none is due: null reverse path, or no
/// recipient whose NOTIFY asks for this outcome.
pub fn build_dsn(input: &DsnInput<'_>) -> Option<Dsn> {
    let env = input.envelope;
    if env.reverse_path.trim().is_empty() {
        return None;
    }
    let reported: Vec<&RecipientOutcome> = input
        .recipients
        .iter()
        .filter(|r| wants_report(r.notify, r.action))
        .take(DSN_RECIPIENTS_MAX)
        .collect();
    if reported.is_empty() {
        return None;
    }
    let any_failed = reported.iter().any(|r| r.action == DsnAction::Failed);
    let hostname = clean(input.hostname);
    let date = |t: i64| rfc5322_date(t);
    let boundary = pick_boundary(input);

    let (returned_type, returned) = returned_content(env.ret, input.original);

    let mut m = String::with_capacity(2048);
    // Header. `writeln!` into a String cannot fail.
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    );
    let _ = write!(m, "To: <{}>\r\n", clean(&env.reverse_path));
    let _ = write!(
        m,
        "Subject: {}\r\n",
        if any_failed {
            "Undelivered Mail Returned to Sender"
        } else {
            "Delayed Mail (still being retried)"
        }
    );
    let _ = write!(m, "Date: {}\r\n", date(input.now_unix));
    let _ = write!(
        m,
        "Message-ID: <{}.{}@{hostname}>\r\n",
        input.now_unix,
        clean_token(input.unique)
    );
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    let _ = write!(
        m,
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    );
    m.push_str("\r\nThis is a MIME-encapsulated delivery status notification.\r\n");

    // Part 1: human-readable. Declared 8bit only if an address needs it.
    let mut human = String::with_capacity(512);
    let _ = write!(human, "This is the mail system at host {hostname}.\r\n\r\n");
    if any_failed {
        human.push_str(
            "Your message could not be delivered to one or more recipients.\r\n\
             The original message (or its header) is attached below.\r\n\r\n",
        );
    } else {
        human.push_str(
            "Your message has not been delivered yet to one or more recipients.\r\n\
             Delivery will be retried; you do not need to resend it.\r\n\r\n",
        );
    }
    for r in &reported {
        let _ = write!(human, "<{}>: {}", clean(&r.recipient), r.action.as_str());
        if let Some(d) = &r.diagnostic {
            let _ = write!(human, ": {}", diagnostic_text(d));
        }
        human.push_str("\r\n");
    }
    let _ = write!(m, "\r\n--{boundary}\r\n");
    if human.is_ascii() {
        m.push_str("Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    } else {
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        m.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
    }
    m.push_str(&human);

    // Part 2: machine-readable.
    let _ = write!(m, "\r\n--{boundary}\r\n");
    m.push_str("Content-Type: message/delivery-status\r\n\r\n");
    let _ = write!(m, "Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &env.envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", clean(envid));
    }
    let _ = write!(m, "Arrival-Date: {}\r\n", date(env.arrival_unix));
    for r in &reported {
        m.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            let orcpt = clean(orcpt);
            if orcpt.contains(';') {
                let _ = write!(m, "Original-Recipient: {orcpt}\r\n");
            } else {
                let _ = write!(m, "Original-Recipient: rfc822;{orcpt}\r\n");
            }
        }
        let _ = write!(m, "Final-Recipient: rfc822; {}\r\n", clean(&r.recipient));
        let _ = write!(m, "Action: {}\r\n", r.action.as_str());
        let _ = write!(m, "Status: {}\r\n", r.status);
        if let Some(mta) = &r.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", clean(mta));
        }
        if let Some(d) = &r.diagnostic {
            let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", diagnostic_text(d));
        }
        let _ = write!(m, "Last-Attempt-Date: {}\r\n", date(r.last_attempt_unix));
        if r.action == DsnAction::Delayed {
            if let Some(until) = r.will_retry_until_unix {
                let _ = write!(m, "Will-Retry-Until: {}\r\n", date(until));
            }
        }
    }

    // Part 3: returned content.
    let _ = write!(m, "\r\n--{boundary}\r\n");
    let _ = write!(m, "Content-Type: {returned_type}\r\n");
    let eight_bit = returned.iter().any(|b| !b.is_ascii());
    if eight_bit {
        m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    m.push_str("\r\n");
    let mut message = m.into_bytes();
    message.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    Some(Dsn {
        reverse_path: String::new(),
        recipient: env.reverse_path.trim().to_string(),
        message,
        reported: reported.len(),
    })
}

/// The content type and bytes of the returned-content part.
fn returned_content(ret: Option<Ret>, original: &[u8]) -> (&'static str, &[u8]) {
    let full_cap = match ret {
        Some(Ret::Hdrs) => 0,
        Some(Ret::Full) => DSN_RETURN_FULL_BYTES_MAX,
        None => DSN_RETURN_DEFAULT_BYTES_MAX,
    };
    if ret != Some(Ret::Hdrs) && original.len() <= full_cap {
        return ("message/rfc822", original);
    }
    ("text/rfc822-headers", header_block(original))
}

/// The header block of a message: up to and including the first empty line's
/// CRLF (or LF), cut at a line end if longer than the cap.
fn header_block(message: &[u8]) -> &[u8] {
    let end = find(message, b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| find(message, b"\n\n").map(|i| i + 1))
        .unwrap_or(message.len());
    let block = message.get(..end).unwrap_or(message);
    if block.len() <= DSN_RETURN_HEADERS_BYTES_MAX {
        return block;
    }
    let capped = block.get(..DSN_RETURN_HEADERS_BYTES_MAX).unwrap_or(block);
    match capped.iter().rposition(|&b| b == b'\n') {
        Some(i) => capped.get(..=i).unwrap_or(capped),
        None => capped,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A boundary that does not occur in the returned content.
fn pick_boundary(input: &DsnInput<'_>) -> String {
    let base = format!("spate-dsn-{}-{}", input.now_unix, clean_token(input.unique));
    let mut candidate = base.clone();
    let mut n = 0u32;
    while find(input.original, candidate.as_bytes()).is_some() {
        n += 1;
        candidate = format!("{base}-{n}");
    }
    candidate
}

/// A header value without CR, LF or other controls.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Only `[A-Za-z0-9.-]` (safe in Message-ID and boundary).
fn clean_token(s: &str) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .take(64)
        .collect();
    if t.is_empty() { "x".into() } else { t }
}

fn diagnostic_text(d: &str) -> String {
    let mut text = clean(d);
    if text.len() > DSN_DIAGNOSTIC_BYTES_MAX {
        let mut cut = DSN_DIAGNOSTIC_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_parsing_and_defaults() {
        assert_eq!(Notify::parse("NEVER"), Some(Notify::NEVER));
        assert!(Notify::parse("NEVER,FAILURE").is_none());
        assert!(Notify::parse("SOMETIMES").is_none());
        let fd = Notify::parse("failure,DELAY");
        assert!(fd.is_some_and(|n| n.failure && n.delay && !n.success));
        assert!(wants_report(None, DsnAction::Failed));
        assert!(!wants_report(None, DsnAction::Delayed));
        assert!(!wants_report(Some(Notify::NEVER), DsnAction::Failed));
        assert!(wants_report(fd, DsnAction::Delayed));
        assert!(!wants_report(Notify::parse("SUCCESS"), DsnAction::Failed));
    }

    #[test]
    fn header_block_cut() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"A: 1\n\nbody"), b"A: 1\n");
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
    }
}
