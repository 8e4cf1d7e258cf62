//! TLS for inbound sessions: building the rustls server configuration.
//!
//! The crypto provider is set explicitly (aws-lc-rs) with
//! `builder_with_provider`, never picked up from process defaults, so a
//! dependency enabling another provider cannot change what spate uses.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Errors loading a certificate or key; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: cannot read certificate chain: {reason}")]
    Certificate { path: String, reason: String },
    #[error("{path}: cannot read private key: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
}

/// The provider spate uses everywhere (inbound and outbound TLS).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Pays the provider's one-time start-up cost (tens of milliseconds on these
/// machines) at boot instead of on the first client's handshake.
pub fn warm_provider() {
    let provider = provider();
    let mut seed = [0u8; 16];
    let _ = provider.secure_random.fill(&mut seed);
}

/// Loads a PEM certificate chain and key into a server configuration.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsSetupError::Certificate {
            path: cert_name.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Certificate {
            path: cert_name.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Certificate {
            path: cert_name,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsSetupError::Key {
        path: key_name.clone(),
        reason: e.to_string(),
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Pair {
            cert: cert_name.clone(),
            key: key_name.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Pair {
            cert: cert_name,
            key: key_name,
            reason: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_generated_pair_and_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        server_config(&cert_path, &key_path).expect("valid pair loads");

        let missing = dir.path().join("nope.pem");
        let err = server_config(&missing, &key_path).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        // A key file given as the certificate has no CERTIFICATE block.
        let err = server_config(&key_path, &key_path).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }
}
