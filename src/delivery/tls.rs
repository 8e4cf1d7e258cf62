//! TLS for outbound STARTTLS.
//!
//! MX hosts commonly present certificates that do not match their names
//! (or are self-signed), and SMTP between MTAs has no way to know which host
//! name to expect without DANE or MTA-STS. Like PowerMTA's default and
//! Postfix's `may`/`encrypt` levels, spate encrypts without authenticating
//! the server: `starttls = "required"` guarantees encryption against passive
//! observers, not server identity.
//!
//! `starttls = "verify"` is for destinations known to present proper
//! certificates (a partner's relay, a provider under contract): the chain
//! must lead to a trusted root and name the host spate connected to, the MX
//! name from DNS or the `smtp_hosts` entry as written (an IP address entry
//! needs an IP address in the certificate). The roots are the PEM
//! certificates of the domain's `tls_ca_file`, or the system's
//! (`rustls-native-certs`, read once per shard). (MTA-STS/DANE, which say
//! per destination whether and how to verify, are not built.)

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate, but still checks the handshake signatures
/// (so the session keys really belong to whoever holds the certificate).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The connector deliveries use for STARTTLS unless their domain says
/// `starttls = "verify"`.
pub fn connector() -> Result<compio::tls::TlsConnector, rustls::Error> {
    let provider = crate::session::tls::provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth();
    Ok(compio::tls::TlsConnector::from(Arc::new(config)))
}

/// What identifies a version of a CA file: replacing the file (a new inode),
/// writing it (length, ctime) or touching it all change this, including
/// copies that keep the old modification time (`cp -p`, `rsync -a`), since
/// ctime cannot be set back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Result<FileStamp, String> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

/// A verifying connector, or why there is none, with the stamp of its CA
/// file when it was read (`None`: the system's roots, read once).
type Cached = (Option<FileStamp>, Result<compio::tls::TlsConnector, String>);

thread_local! {
    /// Verifying connectors of this shard by CA file (`None`: the system's roots).
    static VERIFYING: RefCell<HashMap<Option<PathBuf>, Cached>> = RefCell::new(HashMap::new());
}

/// The connector for `starttls = "verify"` with the roots of `ca_file` (or
/// the system's): built on first use on this shard, and again when the file
/// changed since (a reload may point at a new file, or the file be
/// replaced). A failure is remembered the same way, so a broken CA file or
/// an empty system store costs one read, not one per connection.
pub fn verifying_connector(ca_file: Option<&Path>) -> Result<compio::tls::TlsConnector, String> {
    let key = ca_file.map(Path::to_path_buf);
    let stamp = ca_file.map(FileStamp::of).transpose()?;
    let cached = VERIFYING.with_borrow(|m| {
        m.get(&key)
            .filter(|(at, _)| *at == stamp)
            .map(|(_, c)| c.clone())
    });
    if let Some(c) = cached {
        return c;
    }
    let built = match ca_file {
        Some(path) => roots_from_file(path),
        None => system_roots(),
    }
    .and_then(|roots| {
        let config = ClientConfig::builder_with_provider(crate::session::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(compio::tls::TlsConnector::from(Arc::new(config)))
    });
    VERIFYING.with_borrow_mut(|m| m.insert(key, (stamp, built.clone())));
    built
}

/// Every certificate of a PEM file as a trust anchor.
fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{shown}: {e}"))? {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {shown}"));
    }
    Ok(roots)
}

/// The system's trusted roots; an error when there are none.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or(String::new(), |e| format!(" ({e})"));
        return Err(format!(
            "no trusted root certificates on this system{why}; set tls_ca_file"
        ));
    }
    Ok(roots)
}
