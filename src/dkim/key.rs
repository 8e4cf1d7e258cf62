//! DKIM private keys: loading from PEM and the raw signing operation.
//!
//! Accepted: RSA keys as PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8
//! (`BEGIN PRIVATE KEY`), 1024 to 8192 bits, signing `rsa-sha256`; Ed25519 keys as
//! PKCS#8 (v1 or v2), signing `ed25519-sha256` (RFC 8463). Encrypted keys are
//! refused with a clear reason.
//!
//! Crypto is `aws-lc-rs`, chosen by measurement (`spate-bench dkim --compare`):
//! on this machine RSA-2048 PKCS#1 v1.5 signing is several times faster than
//! the pure-Rust `rsa` crate, and the library is already in the build as
//! rustls's provider. PEM armour is decoded by `pem-rfc7468` (through the
//! `rsa` crate's re-export), never by hand.

use std::fmt;
use std::path::Path;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs8::der::pem;

use super::DkimError;

/// Key files larger than this are not keys (an 8192-bit RSA PEM is ~6.5 KiB).
pub const DKIM_KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Smallest RSA modulus accepted. RFC 8301 allows 1024 but says SHOULD use
/// 2048, receivers increasingly discount 1024-bit signatures, and aws-lc-rs
/// refuses to sign with less than 2048.
pub const DKIM_RSA_BITS_MIN: usize = 2048;

const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

fn rsa_rejected(format: &str, error: &aws_lc_rs::error::KeyRejected) -> String {
    if error.description_() == "TooSmall" {
        format!(
            "RSA key has fewer than {DKIM_RSA_BITS_MIN} bits; generate a new one with `spate dkim-keygen`"
        )
    } else {
        format!("not a valid {format} RSA private key ({error})")
    }
}

/// The signing algorithm a key implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// `rsa-sha256`: RSASSA-PKCS1-v1_5 over SHA-256.
    RsaSha256,
    /// `ed25519-sha256`: Ed25519 over the SHA-256 of the signed data (RFC 8463).
    Ed25519Sha256,
}

impl KeyAlgorithm {
    /// The `a=` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::RsaSha256 => "rsa-sha256",
            KeyAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` tag value of the DNS key record.
    pub fn dns_key_type(self) -> &'static str {
        match self {
            KeyAlgorithm::RsaSha256 => "rsa",
            KeyAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

enum Inner {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private key ready to sign. Cheap to share behind an `Arc`; signing takes
/// `&self` and is thread-safe.
pub struct DkimKey {
    inner: Inner,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        formatter
            .debug_struct("DkimKey")
            .field("algorithm", &self.algorithm())
            .field("bits", &self.bits())
            .finish()
    }
}

impl DkimKey {
    /// Reads a PEM key file. Every error names the file.
    pub fn load_pem(path: &Path) -> Result<DkimKey, DkimError> {
        use std::io::Read as _;
        let read_error = |source| DkimError::KeyRead {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut contents = Vec::new();
        file.take(DKIM_KEY_FILE_BYTES_MAX + 1)
            .read_to_end(&mut contents)
            .map_err(read_error)?;
        if contents.len() as u64 > DKIM_KEY_FILE_BYTES_MAX {
            return Err(DkimError::KeyInvalid {
                path: path.to_path_buf(),
                reason: format!("file is larger than {DKIM_KEY_FILE_BYTES_MAX} bytes; not a key"),
            });
        }
        DkimKey::from_pem(&contents).map_err(|reason| DkimError::KeyInvalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses PEM text; the error is a reason without a file name.
    pub fn from_pem(pem_text: &[u8]) -> Result<DkimKey, String> {
        let (label, der) = pem::decode_vec(pem_text)
            .map_err(|error| format!("not a PEM private key ({error})"))?;
        match label {
            "RSA PRIVATE KEY" => {
                let key =
                    RsaKeyPair::from_der(&der).map_err(|error| rsa_rejected("PKCS#1", &error))?;
                DkimKey::from_rsa(key)
            }
            "PRIVATE KEY" => DkimKey::from_pkcs8_der(&der),
            "ENCRYPTED PRIVATE KEY" => {
                Err("the key is encrypted; DKIM keys must be stored unencrypted (mode 0600)".into())
            }
            other => Err(format!(
                "PEM label \"{other}\" is not a private key (expected \"PRIVATE KEY\" or \"RSA PRIVATE KEY\")"
            )),
        }
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<DkimKey, String> {
        use rsa::pkcs8::der::Decode as _;
        let info = rsa::pkcs8::PrivateKeyInfo::from_der(der)
            .map_err(|error| format!("not a valid PKCS#8 private key ({error})"))?;
        let oid = info.algorithm.oid.to_string();
        match oid.as_str() {
            OID_RSA_ENCRYPTION => {
                let key =
                    RsaKeyPair::from_pkcs8(der).map_err(|error| rsa_rejected("PKCS#8", &error))?;
                DkimKey::from_rsa(key)
            }
            OID_ED25519 => {
                let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|error| format!("not a valid PKCS#8 Ed25519 private key ({error})"))?;
                Ok(DkimKey {
                    inner: Inner::Ed25519(key),
                })
            }
            other => Err(format!(
                "key algorithm {other} is not supported for DKIM (use RSA or Ed25519)"
            )),
        }
    }

    fn from_rsa(key: RsaKeyPair) -> Result<DkimKey, String> {
        let bits = key.public_modulus_len() * 8;
        if bits < DKIM_RSA_BITS_MIN {
            return Err(format!(
                "RSA key has {bits} bits; DKIM needs at least {DKIM_RSA_BITS_MIN} (2048 recommended)"
            ));
        }
        Ok(DkimKey {
            inner: Inner::Rsa(key),
        })
    }

    /// Generates a new key: RSA of `bits` (2048 or 4096) or Ed25519 (`bits`
    /// ignored). Returns it with its PKCS#8 PEM text for the key file.
    pub fn generate(algorithm: KeyAlgorithm, bits: u32) -> Result<(DkimKey, String), String> {
        let (key, pkcs8_der) = match algorithm {
            KeyAlgorithm::RsaSha256 => {
                let size = match bits {
                    2048 => KeySize::Rsa2048,
                    4096 => KeySize::Rsa4096,
                    other => {
                        return Err(format!(
                            "RSA key size {other} is not offered; use 2048 or 4096"
                        ));
                    }
                };
                let pair = RsaKeyPair::generate(size)
                    .map_err(|_| "RSA key generation failed".to_string())?;
                let der: Pkcs8V1Der<'_> = pair
                    .as_der()
                    .map_err(|_| "cannot encode the RSA key as PKCS#8".to_string())?;
                let der = der.as_ref().to_vec();
                (DkimKey::from_rsa(pair)?, der)
            }
            KeyAlgorithm::Ed25519Sha256 => {
                let pair = Ed25519KeyPair::generate()
                    .map_err(|_| "Ed25519 key generation failed".to_string())?;
                let der = pair
                    .to_pkcs8v1()
                    .map_err(|_| "cannot encode the Ed25519 key as PKCS#8".to_string())?
                    .as_ref()
                    .to_vec();
                (DkimKey::from_ed25519_pair(pair), der)
            }
        };
        let pem_text = pem::encode_string("PRIVATE KEY", pem::LineEnding::LF, &pkcs8_der)
            .map_err(|error| format!("cannot encode PEM ({error})"))?;
        Ok((key, pem_text))
    }

    pub(crate) fn from_ed25519_pair(key: Ed25519KeyPair) -> DkimKey {
        DkimKey {
            inner: Inner::Ed25519(key),
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::Rsa(_) => KeyAlgorithm::RsaSha256,
            Inner::Ed25519(_) => KeyAlgorithm::Ed25519Sha256,
        }
    }

    /// Modulus size for RSA, 256 for Ed25519.
    pub fn bits(&self) -> usize {
        match &self.inner {
            Inner::Rsa(key) => key.public_modulus_len() * 8,
            Inner::Ed25519(_) => 256,
        }
    }

    /// The `p=` value of the DNS key record: base64 of the DER
    /// SubjectPublicKeyInfo for RSA, of the raw 32-byte key for Ed25519.
    pub fn public_key_base64(&self) -> Result<String, String> {
        match &self.inner {
            Inner::Rsa(key) => {
                let spki: PublicKeyX509Der<'_> = key
                    .public_key()
                    .as_der()
                    .map_err(|_| "cannot encode the RSA public key".to_string())?;
                Ok(BASE64.encode(spki.as_ref()))
            }
            Inner::Ed25519(key) => Ok(BASE64.encode(key.public_key().as_ref())),
        }
    }

    /// Signs the canonical header data (RFC 6376 §3.7) and returns the raw
    /// signature bytes.
    pub(crate) fn sign(&self, signed_data: &[u8]) -> Result<Vec<u8>, String> {
        match &self.inner {
            Inner::Rsa(key) => {
                let mut signature = vec![0u8; key.public_modulus_len()];
                // aws-lc-rs ignores the RNG for PKCS#1 v1.5 (deterministic
                // padding); the parameter exists for API compatibility.
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    signed_data,
                    &mut signature,
                )
                .map_err(|_| "RSA signing operation failed".to_string())?;
                Ok(signature)
            }
            Inner::Ed25519(key) => {
                // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
                let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, signed_data);
                let signature = key
                    .try_sign(hash.as_ref())
                    .map_err(|_| "Ed25519 signing operation failed".to_string())?;
                Ok(signature.as_ref().to_vec())
            }
        }
    }
}
