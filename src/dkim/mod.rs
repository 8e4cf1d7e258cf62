//! DKIM signing (RFC 6376) with RSA (`rsa-sha256`) and Ed25519 (`ed25519-sha256`,
//! RFC 8463) keys, and key generation for `spate dkim-keygen`.
//!
//! This module owns the canonicalisers, the `DKIM-Signature` header builder,
//! key loading, the choice of signing domains for a message and a small pool
//! of signing threads. It performs no network I/O and reads no clock: the
//! signing time comes in as `now_unix`. The reception path (the `session`
//! module) decides *when* to sign (once, after the Received header is added,
//! before the message reaches the spool) and what to do with an error:
//! [`DkimError::is_config`] errors belong to start-up or reload, every other
//! error defers the message.
//!
//! Crypto comes from `aws-lc-rs` (the provider rustls already uses); see
//! `key.rs` for why it was chosen over the RustCrypto crates.
//!
//! # Using it from the reception path
//!
//! ```text
//! start/reload:  for each [dkim."domain"]:
//!                    key    = DkimKey::load_pem(path)?          // error names the file
//!                    signer = DkimSigner::new(SignerOptions { .. })?
//!                    table.insert(signer)?
//!                table.add_always_sign("esp.example")?         // optional extra signature
//!                share Arc<SigningTable> with the shards; keep one SigningPool
//! per message:   pool.try_submit(SignJob { table, message, now_unix, extra_domains })
//!                    Ok(receiver)  -> receiver.await: SignJobOutcome { message, result }
//!                    Err(Full(job)) -> answer 451 4.3.2 (or sign inline)
//!                result Ok(fields) -> spool fields.concat() + message (first field on top)
//!                result Err(e)     -> defer the message with e's text, count it
//! ```
//!
//! Ed25519 signing takes tens of microseconds and may run inline; RSA-2048
//! takes about a millisecond and belongs on the pool (figures in the bench).
//!
//! | file | owns |
//! | --- | --- |
//! | `canon.rs` | header and body canonicalisation, simple and relaxed (RFC 6376 §3.4) |
//! | `message.rs` | splitting a message into header fields and body; the From domain |
//! | `key.rs` | private keys from PEM (PKCS#1, PKCS#8), the raw signing operation |
//! | `sign.rs` | [`DkimSigner`]: the signed header list, over-signing, the header field |
//! | `table.rs` | [`SigningTable`]: which signers apply to a message |
//! | `keygen.rs` | [`keygen`]: a new key file and the DNS TXT record to publish |
//! | `pool.rs` | [`SigningPool`]: signing off the shard's I/O loop |

mod canon;
mod key;
mod keygen;
mod message;
mod pool;
mod sign;
mod table;

#[cfg(test)]
mod tests;

pub use canon::{Canonicalization, parse_canonicalization};
pub use key::{DKIM_KEY_FILE_BYTES_MAX, DKIM_RSA_BITS_MIN, DkimKey, KeyAlgorithm};
pub use keygen::keygen;
pub use message::from_domain;
pub use pool::{
    DKIM_POOL_QUEUE_JOBS_MAX, DKIM_POOL_THREADS_MAX, PoolSubmitError, SignJob, SignJobOutcome,
    SigningPool,
};
pub use sign::{DkimSigner, SignerOptions};
pub use table::SigningTable;

use std::path::PathBuf;

/// Signatures expire at most this long after signing (`x=`): one year. A
/// longer `expire_secs` is a configuration error, not silently clamped.
pub const DKIM_EXPIRE_SECS_MAX: u64 = 366 * 24 * 3600;

/// Header names listed in one signer's configuration, before over-signing.
pub const DKIM_SIGNED_HEADER_NAMES_MAX: usize = 64;

/// Occurrences of one header name that a signature will cover; a message with
/// more (e.g. thousands of `To:` fields) is refused rather than producing an
/// unbounded `h=` tag.
pub const DKIM_HEADER_OCCURRENCES_MAX: usize = 32;

/// Signatures one message may carry (its From domain plus extra domains).
pub const DKIM_SIGNATURES_PER_MESSAGE_MAX: usize = 4;

/// Folding width of the generated `DKIM-Signature` field, in characters per
/// line before CRLF (RFC 5322 §2.1.1 recommends at most 78).
pub const DKIM_HEADER_LINE_CHARS_MAX: usize = 78;

/// Why signing could not happen.
///
/// Variants split into two families: a bad key or bad configuration
/// ([`DkimError::is_config`] is true), which the integrator reports as a
/// configuration error at start or reload, and a failure while signing one
/// message, which defers that message with a clear reason (it must never be
/// sent unsigned silently).
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("DKIM key {}: {source}", path.display())]
    KeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file was read but is not a usable key.
    #[error("DKIM key {}: {reason}", path.display())]
    KeyInvalid { path: PathBuf, reason: String },
    /// A signer or table setting is invalid (domain, selector, header list,
    /// expiry, duplicate domain).
    #[error("DKIM configuration: {0}")]
    Config(String),
    /// `keygen` could not create or write the key file.
    #[error("DKIM key {}: cannot write: {source}", path.display())]
    KeyWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message cannot be signed as it is (e.g. a header occurs more often
    /// than [`DKIM_HEADER_OCCURRENCES_MAX`]). Defer or reject it.
    #[error("DKIM signing for {domain}: message not signable: {reason}")]
    Message { domain: String, reason: String },
    /// The crypto operation failed. Defer the message.
    #[error("DKIM signing for {domain} failed: {reason}")]
    Signing { domain: String, reason: String },
}

impl DkimError {
    /// True for errors that come from keys or configuration: report them at
    /// start or reload, not per message.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DkimError::KeyRead { .. }
                | DkimError::KeyInvalid { .. }
                | DkimError::Config(_)
                | DkimError::KeyWrite { .. }
        )
    }
}
