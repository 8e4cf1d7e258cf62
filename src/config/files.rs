//! Checks on files named by keys: they exist, can be read, and hold what
//! the key says (a token, PEM certificates, a PEM private key, a DKIM key),
//! so `spate check` catches a wrong path or a wrong file before a start or
//! reload would. The subsystems load the files themselves; this only vets.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::ConfigErrorKind;
use super::parse::{FileKind, FileRef};
use super::walk::Ctx;

/// Largest referenced file read (keys and certificate chains are small).
pub const REFERENCED_FILE_BYTES_MAX: u64 = 1 << 20;

/// DKIM verifiers ignore RSA keys shorter than this (RFC 8301).
pub const DKIM_RSA_BITS_MIN: usize = 1024;

pub(crate) fn check_file(ctx: &mut Ctx, f: &FileRef) {
    if f.kind == FileKind::InExistingDir {
        check_dir_of(ctx, f);
        return;
    }
    let bytes = match read_file(&f.file) {
        Ok(b) => b,
        Err((kind, reason)) => {
            ctx.error(&f.span, &f.path, kind, reason);
            return;
        }
    };
    let shown = f.file.display();
    let problem = match f.kind {
        FileKind::AdminToken => {
            warn_if_world_readable(ctx, f);
            match std::str::from_utf8(&bytes) {
                Ok(t) if !t.trim().is_empty() => None,
                Ok(_) => Some(format!(
                    "{shown} is empty: the token would accept an empty bearer"
                )),
                Err(_) => Some(format!("{shown} is not UTF-8 text")),
            }
        }
        FileKind::TlsCert => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).collect();
            if certs.is_empty() {
                Some(format!("no PEM certificate in {shown}"))
            } else if certs.iter().any(Result::is_err) {
                Some(format!("a certificate in {shown} is not valid PEM"))
            } else {
                None
            }
        }
        FileKind::TlsKey => {
            warn_if_world_readable(ctx, f);
            PrivateKeyDer::from_pem_slice(&bytes)
                .err()
                .map(|e| format!("no usable PEM private key in {shown} ({e})"))
        }
        FileKind::DkimKey => {
            warn_if_world_readable(ctx, f);
            dkim_key_problem(&bytes).map(|reason| format!("{shown}: {reason}"))
        }
        FileKind::InExistingDir => None,
    };
    if let Some(reason) = problem {
        ctx.error(&f.span, &f.path, ConfigErrorKind::BadValue, reason);
    }
}

/// `None` when `pem` holds an RSA (≥ 1024 bits) or Ed25519 private key.
fn dkim_key_problem(pem: &[u8]) -> Option<String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let Ok(text) = std::str::from_utf8(pem) else {
        return Some("not PEM text".to_string());
    };
    let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(text)
        .ok()
        .or_else(|| rsa::RsaPrivateKey::from_pkcs1_pem(text).ok());
    if let Some(key) = rsa {
        let bits = key.size() * 8;
        if bits < DKIM_RSA_BITS_MIN {
            return Some(format!(
                "RSA key of {bits} bits; verifiers ignore keys under {DKIM_RSA_BITS_MIN} bits (use 2048)"
            ));
        }
        return None;
    }
    if ed25519_dalek::SigningKey::from_pkcs8_pem(text).is_ok() {
        return None;
    }
    Some("not a PEM RSA or Ed25519 private key (make one with `spate dkim-keygen`)".to_string())
}

fn read_file(path: &Path) -> Result<Vec<u8>, (ConfigErrorKind, String)> {
    let shown = path.display();
    let io_error = |e: std::io::Error| match e.kind() {
        ErrorKind::NotFound => (
            ConfigErrorKind::FileNotFound,
            format!("file not found: {shown}"),
        ),
        _ => (
            ConfigErrorKind::FileUnreadable,
            format!("cannot read {shown}: {e}"),
        ),
    };
    // Look before opening: opening a FIFO would block `spate check` forever.
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if meta.is_dir() {
        return Err((
            ConfigErrorKind::FileUnreadable,
            format!("{shown} is a directory, not a file"),
        ));
    }
    if !meta.is_file() {
        return Err((
            ConfigErrorKind::FileUnreadable,
            format!("{shown} is not a regular file"),
        ));
    }
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(REFERENCED_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            (
                ConfigErrorKind::FileUnreadable,
                format!("cannot read {shown}: {e}"),
            )
        })?;
    if bytes.len() as u64 > REFERENCED_FILE_BYTES_MAX {
        return Err((
            ConfigErrorKind::BadValue,
            format!("{shown} is larger than {REFERENCED_FILE_BYTES_MAX} bytes"),
        ));
    }
    Ok(bytes)
}

fn warn_if_world_readable(ctx: &mut Ctx, f: &FileRef) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(&f.file) {
        if meta.permissions().mode() & 0o004 != 0 {
            ctx.warn(
                &f.span,
                &f.path,
                format!("{} is readable by every user (chmod o-r)", f.file.display()),
            );
        }
    }
}

fn check_dir_of(ctx: &mut Ctx, f: &FileRef) {
    let dir = match f.file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let shown = dir.display();
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => ctx.error(
            &f.span,
            &f.path,
            ConfigErrorKind::FileUnreadable,
            format!("{shown} is not a directory"),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => ctx.error(
            &f.span,
            &f.path,
            ConfigErrorKind::FileNotFound,
            format!("directory not found: {shown}"),
        ),
        Err(e) => ctx.error(
            &f.span,
            &f.path,
            ConfigErrorKind::FileUnreadable,
            format!("cannot access {shown}: {e}"),
        ),
    }
}
