//! Every bound spate enforces, in one place, with its unit last and why.
//!
//! Modules add their limits here rather than scattering literals, so the
//! relations between them can be checked at compile time below.

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF.
/// We accept a little more (ESMTP parameters make real lines longer) but
/// never unbounded.
pub const SMTP_COMMAND_LINE_BYTES_MAX: usize = 4096;

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
/// Real senders exceed it; we accept up to this before replying 500 5.5.2.
pub const SMTP_DATA_LINE_BYTES_MAX: usize = 8192;

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; we parse longer
/// ones from lenient servers, up to this.
pub const SMTP_REPLY_LINE_BYTES_MAX: usize = 4096;

/// Lines in one multi-line reply (an EHLO answer has one per extension).
pub const SMTP_REPLY_LINES_MAX: usize = 64;

const _: () = assert!(SMTP_COMMAND_LINE_BYTES_MAX >= 512);
const _: () = assert!(SMTP_DATA_LINE_BYTES_MAX >= 1000);
const _: () = assert!(SMTP_REPLY_LINE_BYTES_MAX >= 512);
