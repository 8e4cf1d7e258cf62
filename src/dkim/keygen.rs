//! [`keygen`]: creates a DKIM private key file and returns the DNS TXT record
//! that publishes its public half (`spate dkim-keygen`).
//!
//! The key file is created with mode 0600 and never overwrites an existing
//! file. RSA keys are written as PKCS#8 (`BEGIN PRIVATE KEY`), Ed25519 keys as
//! PKCS#8 v1, the form OpenSSL writes and reads.

use std::io::Write as _;
use std::path::Path;

use super::key::{DkimKey, KeyAlgorithm};
use super::sign::{DkimSigner, SignerOptions, valid_dns_name};
use super::{Canonicalization, DkimError};

/// Longest character-string in a DNS TXT record (RFC 1035 §3.3).
const TXT_STRING_BYTES_MAX: usize = 255;

/// Generates a key for `selector._domainkey.domain`, writes it to `out_path`
/// (mode 0600, refusing to overwrite) and returns the zone-file line to
/// publish, e.g. `s._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=..."`,
/// its value split into 255-byte strings when longer.
///
/// `bits` applies to RSA only (2048 or 4096) and is ignored for Ed25519.
pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: KeyAlgorithm,
    bits: u32,
    out_path: &Path,
) -> Result<String, DkimError> {
    let invalid = |reason: String| DkimError::KeyInvalid {
        path: out_path.to_path_buf(),
        reason,
    };
    // Validate names before spending seconds on an RSA-4096 key.
    if !valid_dns_name(domain.trim_end_matches('.')) || !valid_dns_name(selector) {
        return Err(DkimError::Config(format!(
            "\"{selector}\" / \"{domain}\" is not a valid selector / domain name"
        )));
    }
    let (key, pem_text) = DkimKey::generate(algorithm, bits).map_err(|reason| {
        if reason.starts_with("RSA key size") {
            DkimError::Config(reason)
        } else {
            invalid(reason)
        }
    })?;
    let key = std::sync::Arc::new(key);
    // Validate domain and selector exactly as signing will.
    let signer = DkimSigner::new(SignerOptions {
        domain: domain.to_string(),
        selector: selector.to_string(),
        key: key.clone(),
        headers: Vec::new(),
        canonicalization: (Canonicalization::Relaxed, Canonicalization::Relaxed),
        expire_secs: None,
    })?;
    let public = key.public_key_base64().map_err(invalid)?;
    let record = format!("v=DKIM1; k={}; p={public}", key.algorithm().dns_key_type());
    write_private(out_path, pem_text.as_bytes())?;
    Ok(format!(
        "{}._domainkey.{}. IN TXT {}",
        signer.selector(),
        signer.domain(),
        txt_strings(&record)
    ))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), DkimError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let write_error = |source| DkimError::KeyWrite {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// `"..." "..."`: the value in quoted strings of at most 255 bytes. The
/// record is ASCII without quotes or backslashes, so no escaping is needed.
fn txt_strings(record: &str) -> String {
    record
        .as_bytes()
        .chunks(TXT_STRING_BYTES_MAX)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect::<Vec<_>>()
        .join(" ")
}
