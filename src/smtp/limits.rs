//! Bounds specific to the SMTP protocol core, with units last and why.
//!
//! The line-length bounds shared with other modules live in `crate::limits`
//! and are re-exported here so the protocol code names one place.

pub use crate::limits::{
    SMTP_COMMAND_LINE_BYTES_MAX, SMTP_DATA_LINE_BYTES_MAX, SMTP_REPLY_LINE_BYTES_MAX,
    SMTP_REPLY_LINES_MAX,
};

/// RFC 5321 §4.5.3.1.1 says 64 octets; some senders exceed it (VERP, SRS), so
/// we accept twice that before calling the address malformed.
pub const SMTP_LOCAL_PART_BYTES_MAX: usize = 128;

/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
pub const SMTP_DOMAIN_BYTES_MAX: usize = 255;

/// RFC 3461 §4.4: an ENVID is at most 100 characters (after xtext decoding).
pub const SMTP_ENVID_BYTES_MAX: usize = 100;

/// RFC 3461 §4.2: ORCPT is bounded by the 500-character parameter limit.
pub const SMTP_ORCPT_BYTES_MAX: usize = 500;

/// An AUTH response line (base64) is bounded like a command line; RFC 4954
/// §4 allows 12288 octets but PLAIN/LOGIN credentials are small.
pub const SMTP_AUTH_LINE_BYTES_MAX: usize = SMTP_COMMAND_LINE_BYTES_MAX;

/// Default for `ServerConfig::max_errors`: protocol errors a client may
/// cause before we answer 421 and close (Postfix `smtpd_hard_error_limit`).
pub const SMTP_SESSION_ERRORS_MAX: u32 = 20;

/// Default for `ServerConfig::max_recipients` (RFC 5321 §4.5.3.1.8 asks
/// servers to accept at least 100).
pub const SMTP_RECIPIENTS_MAX: usize = 1000;

/// Default for `ServerConfig::max_message_bytes`: 50 MiB, the example config.
pub const SMTP_MESSAGE_BYTES_MAX: u64 = 50 * 1024 * 1024;

/// Parameters on one MAIL or RCPT command; more is abuse, not mail.
pub const SMTP_PARAMS_MAX: usize = 16;

const _: () = assert!(SMTP_LOCAL_PART_BYTES_MAX >= 64);
const _: () = assert!(SMTP_DOMAIN_BYTES_MAX >= 255);
const _: () = assert!(SMTP_RECIPIENTS_MAX >= 100);
// A whole path must fit on one command line with room for the verb and params.
const _: () =
    assert!(SMTP_LOCAL_PART_BYTES_MAX + SMTP_DOMAIN_BYTES_MAX + 64 < SMTP_COMMAND_LINE_BYTES_MAX);
