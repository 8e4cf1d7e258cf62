//! Header processing at reception.
//!
//! Before a message is spooled spate reads and strips its control headers
//! (`X-Virtual-MTA`, `X-Job`) when the source is allowed to use them, and
//! prepends its `Received:` trace field. The message body is never touched
//! and never copied more than once (into the spool record).

use std::fmt::Write as _;

use crate::util::time::rfc5322_date;

/// Control headers found in a message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ControlHeaders {
    /// `X-Virtual-MTA`: a vMTA or pool name.
    pub virtual_mta: Option<String>,
    /// `X-Job`: campaign / job id for accounting.
    pub job: Option<String>,
}

/// Byte length of the header section including its terminating empty line,
/// or the whole message when there is no empty line (a body-less message).
pub fn header_section_len(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => p + 4,
        None => message.len(),
    }
}

/// Splits the header section into fields (each with its folded
/// continuation lines), as byte ranges into `message`.
fn fields(message: &[u8], header_len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut start: Option<usize> = None;
    while pos < header_len {
        let line_end = message[pos..header_len]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(header_len, |p| pos + p + 2);
        let line = &message[pos..line_end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if let Some(s) = start.take() {
                out.push((s, pos));
            }
            if line != b"\r\n" {
                start = Some(pos);
            }
        }
        pos = line_end;
    }
    if let Some(s) = start {
        out.push((s, header_len));
    }
    out
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(0);
    field[..colon].trim_ascii()
}

fn field_value(field: &[u8]) -> String {
    let colon = field
        .iter()
        .position(|b| *b == b':')
        .map_or(field.len(), |p| p + 1);
    let raw = String::from_utf8_lossy(&field[colon..]);
    // Unfold: CRLF followed by whitespace is whitespace.
    raw.split("\r\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads the control headers and returns the message without those that
/// `strip_*` says to remove. Only the first occurrence of each is honoured;
/// every occurrence of a stripped header is removed.
pub fn take_control_headers(
    message: &[u8],
    strip_virtual_mta: bool,
    strip_job: bool,
) -> (ControlHeaders, Vec<u8>) {
    let mut pieces = Vec::new();
    let found = control_header_pieces(message, strip_virtual_mta, strip_job, &mut pieces);
    (found, pieces.concat())
}

/// [`take_control_headers`] without copying: pushes to `pieces` the slices of
/// `message` that remain (one, unless a control header is stripped), so the
/// spool can store them after the `Received:` field as they are.
pub fn control_header_pieces<'a>(
    message: &'a [u8],
    strip_virtual_mta: bool,
    strip_job: bool,
    pieces: &mut Vec<&'a [u8]>,
) -> ControlHeaders {
    let header_len = header_section_len(message);
    let mut found = ControlHeaders::default();
    let mut copied_to = 0;
    for (s, e) in fields(message, header_len) {
        let name = field_name(&message[s..e]);
        let is_vmta = name.eq_ignore_ascii_case(b"x-virtual-mta");
        let is_job = name.eq_ignore_ascii_case(b"x-job");
        if is_vmta && strip_virtual_mta {
            if found.virtual_mta.is_none() {
                found.virtual_mta = Some(field_value(&message[s..e]));
            }
        } else if is_job && strip_job {
            if found.job.is_none() {
                found.job = Some(field_value(&message[s..e]));
            }
        } else {
            continue;
        }
        pieces.push(&message[copied_to..s]);
        copied_to = e;
    }
    pieces.push(&message[copied_to..]);
    found
}

/// What the `Received:` field records about the transaction.
#[derive(Debug, Clone)]
pub struct ReceivedInfo<'a> {
    pub helo: &'a str,
    pub peer_ip: std::net::IpAddr,
    pub hostname: &'a str,
    pub tls: bool,
    pub authenticated: bool,
    pub id: &'a str,
    /// The single recipient, named only when there is exactly one (more
    /// would leak the envelope of a multi-recipient message).
    pub single_recipient: Option<&'a str>,
    pub now_unix: u64,
}

/// Builds the `Received:` trace field (RFC 5321 §4.4), CRLF-terminated.
pub fn received_field(info: &ReceivedInfo<'_>) -> String {
    // RFC 3848 protocol names: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA.
    let protocol = match (info.tls, info.authenticated) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    let helo: String = info
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect::<String>();
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "Received: from {helo} ([{ip}])\r\n\tby {host} (spate) with {protocol} id {id}",
        ip = info.peer_ip,
        host = info.hostname,
        id = info.id,
    );
    if let Some(rcpt) = info.single_recipient {
        let _ = write!(s, "\r\n\tfor <{rcpt}>");
    }
    let _ = write!(
        s,
        ";\r\n\t{}\r\n",
        rfc5322_date(i64::try_from(info.now_unix).unwrap_or(i64::MAX))
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_control_headers_including_folded_and_repeated() {
        let msg = b"From: a@b\r\nX-Virtual-MTA: ip1\r\nx-job:\r\n  camp-7\r\nSubject: hi\r\nX-Virtual-MTA: ip2\r\n\r\nX-Job: not-a-header\r\n";
        let (found, out) = take_control_headers(msg, true, true);
        assert_eq!(found.virtual_mta.as_deref(), Some("ip1"));
        assert_eq!(found.job.as_deref(), Some("camp-7"));
        assert_eq!(
            out,
            b"From: a@b\r\nSubject: hi\r\n\r\nX-Job: not-a-header\r\n"
        );
    }

    #[test]
    fn keeps_control_headers_when_not_processing() {
        let msg = b"X-Virtual-MTA: ip1\r\nX-Job: j\r\n\r\nbody\r\n";
        let (found, out) = take_control_headers(msg, false, true);
        assert_eq!(found.virtual_mta, None);
        assert_eq!(found.job.as_deref(), Some("j"));
        assert_eq!(out, b"X-Virtual-MTA: ip1\r\n\r\nbody\r\n");
    }

    #[test]
    fn message_without_body_or_headers() {
        let (found, out) = take_control_headers(b"X-Job: j\r\n", true, true);
        assert_eq!(found.job.as_deref(), Some("j"));
        assert!(out.is_empty());
        let (_, out) = take_control_headers(b"\r\nbody only\r\n", true, true);
        assert_eq!(out, b"\r\nbody only\r\n");
        assert_eq!(header_section_len(b""), 0);
    }

    #[test]
    fn received_field_shape() {
        let f = received_field(&ReceivedInfo {
            helo: "client.example",
            peer_ip: "127.0.0.1".parse().unwrap(),
            hostname: "mta.example.com",
            tls: true,
            authenticated: true,
            id: "00ab",
            single_recipient: Some("x@y.test"),
            now_unix: 0,
        });
        assert!(f.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby mta.example.com (spate) with ESMTPSA id 00ab\r\n\tfor <x@y.test>;"));
        assert!(f.ends_with("+0000\r\n"));
    }
}
