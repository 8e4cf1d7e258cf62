//! One accounting record and its CSV and JSONL encodings.
//!
//! Owns the field list (PowerMTA's names, in PowerMTA's order), CSV quoting
//! and JSON escaping. Files, buffering and rotation are `writer.rs`'s.

use std::fmt;
use std::str::FromStr;

/// PowerMTA's accounting field names, in file order.
pub const ACCOUNTING_FIELDS: [&str; 23] = [
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
];

/// The record types: received, delivered, bounced, transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Received,
    Delivered,
    Bounced,
    Transient,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "r",
            Self::Delivered => "d",
            Self::Bounced => "b",
            Self::Transient => "t",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record type letter other than `r`, `d`, `b`, `t`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accounting record type {0:?} (expected r, d, b or t)")]
pub struct UnknownRecordKind(pub String);

impl FromStr for RecordKind {
    type Err = UnknownRecordKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "r" => Ok(Self::Received),
            "d" => Ok(Self::Delivered),
            "b" => Ok(Self::Bounced),
            "t" => Ok(Self::Transient),
            other => Err(UnknownRecordKind(other.to_string())),
        }
    }
}

/// One accounting line. Empty strings are empty fields; times are unix
/// seconds and written as `YYYY-MM-DD HH:MM:SS+0000` like PowerMTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingRecord {
    pub kind: RecordKind,
    pub time_logged_unix: i64,
    pub time_queued_unix: i64,
    pub orig: String,
    pub rcpt: String,
    pub orcpt: String,
    /// `relayed`, `failed`, `delayed`...
    pub dsn_action: String,
    /// Enhanced status, e.g. `5.1.1`.
    pub dsn_status: String,
    /// The reply, e.g. `smtp;550 5.1.1 user unknown`.
    pub dsn_diag: String,
    /// The remote host, e.g. `mx.example.com (192.0.2.1)`.
    pub dsn_mta: String,
    pub bounce_cat: String,
    /// `smtp` for received mail, `local` for generated DSNs.
    pub src_type: String,
    pub src_mta: String,
    pub dlv_type: String,
    pub dlv_source_ip: String,
    pub dlv_destination_ip: String,
    /// The ESMTP extensions the receiver offered, PowerMTA-style.
    pub dlv_esmtp_available: String,
    pub dlv_size: Option<u64>,
    pub vmta: String,
    pub job_id: String,
    pub env_id: String,
    pub queue: String,
    pub vmta_pool: String,
}

impl AccountingRecord {
    /// A record of `kind` at `time_logged_unix` with every other field empty.
    pub fn new(kind: RecordKind, time_logged_unix: i64) -> Self {
        Self {
            kind,
            time_logged_unix,
            time_queued_unix: time_logged_unix,
            orig: String::new(),
            rcpt: String::new(),
            orcpt: String::new(),
            dsn_action: String::new(),
            dsn_status: String::new(),
            dsn_diag: String::new(),
            dsn_mta: String::new(),
            bounce_cat: String::new(),
            src_type: String::new(),
            src_mta: String::new(),
            dlv_type: String::new(),
            dlv_source_ip: String::new(),
            dlv_destination_ip: String::new(),
            dlv_esmtp_available: String::new(),
            dlv_size: None,
            vmta: String::new(),
            job_id: String::new(),
            env_id: String::new(),
            queue: String::new(),
            vmta_pool: String::new(),
        }
    }

    /// Field values in `ACCOUNTING_FIELDS` order.
    pub fn values(&self) -> [std::borrow::Cow<'_, str>; 23] {
        use std::borrow::Cow::{Borrowed, Owned};
        [
            Borrowed(self.kind.as_str()),
            Owned(accounting_time(self.time_logged_unix)),
            Owned(accounting_time(self.time_queued_unix)),
            Borrowed(&self.orig),
            Borrowed(&self.rcpt),
            Borrowed(&self.orcpt),
            Borrowed(&self.dsn_action),
            Borrowed(&self.dsn_status),
            Borrowed(&self.dsn_diag),
            Borrowed(&self.dsn_mta),
            Borrowed(&self.bounce_cat),
            Borrowed(&self.src_type),
            Borrowed(&self.src_mta),
            Borrowed(&self.dlv_type),
            Borrowed(&self.dlv_source_ip),
            Borrowed(&self.dlv_destination_ip),
            Borrowed(&self.dlv_esmtp_available),
            self.dlv_size.map_or(Borrowed(""), |s| Owned(s.to_string())),
            Borrowed(&self.vmta),
            Borrowed(&self.job_id),
            Borrowed(&self.env_id),
            Borrowed(&self.queue),
            Borrowed(&self.vmta_pool),
        ]
    }

    /// One CSV line with CRLF-free quoting rules of RFC 4180, ending in `\n`.
    pub fn write_csv(&self, out: &mut Vec<u8>) {
        write_csv_line(out, self.values().iter().map(|v| v.as_ref()));
    }

    /// One JSON object with the same field names, ending in `\n`. Every value
    /// is a string (as in the CSV), so consumers see one type per field.
    pub fn write_jsonl(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (name, value)) in ACCOUNTING_FIELDS.iter().zip(self.values()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, name);
            out.push(b':');
            json_string(out, &value);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The CSV header line.
pub fn write_csv_header(out: &mut Vec<u8>) {
    write_csv_line(out, ACCOUNTING_FIELDS.iter().copied());
}

fn write_csv_line<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let needs_quotes = field
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
            || field.starts_with(' ')
            || field.ends_with(' ');
        if needs_quotes {
            out.push(b'"');
            for b in field.bytes() {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.push(b'\n');
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `2026-11-27 22:04:58+0000`.
pub fn accounting_time(unix: i64) -> String {
    let t = crate::util::time::civil_from_unix(unix);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+0000",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let mut r = AccountingRecord::new(RecordKind::Bounced, 1_795_817_098);
        r.rcpt = "a@b.test".into();
        r.dsn_diag = "smtp;550 5.1.1 \"no\", gone\r\nreally".into();
        r.dlv_size = Some(2048);
        let mut out = Vec::new();
        r.write_csv(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("b,2026-11-27 22:04:58+0000,2026-11-27 22:04:58+0000,,a@b.test,"));
        assert!(line.contains(",\"smtp;550 5.1.1 \"\"no\"\", gone\r\nreally\","));
        assert!(line.ends_with(",2048,,,,,\n"));
        let mut header = Vec::new();
        write_csv_header(&mut header);
        assert_eq!(
            String::from_utf8(header).unwrap(),
            format!("{}\n", ACCOUNTING_FIELDS.join(","))
        );
    }

    #[test]
    fn jsonl_escaping() {
        let mut r = AccountingRecord::new(RecordKind::Delivered, 0);
        r.dsn_diag = "q\"\\\n\u{1}é".into();
        let mut out = Vec::new();
        r.write_jsonl(&mut out);
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["type"], "d");
        assert_eq!(v["dsnDiag"], "q\"\\\n\u{1}é");
        assert_eq!(v["timeLogged"], "1970-01-01 00:00:00+0000");
        assert_eq!(v.as_object().map(|o| o.len()), Some(23));
    }
}
