//! Shared helpers for the DKIM tests: test keys from `tests/data/dkim`, and
//! verification by an independent implementation (the `mail-auth` crate) fed
//! from an in-memory TXT table, so no test ever queries real DNS.

#![allow(dead_code)] // reason: each test binary uses a different subset

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use spate::dkim::{Canonicalization, DkimKey, DkimSigner, SignerOptions};

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/dkim")
        .join(name)
}

pub fn key(name: &str) -> Arc<DkimKey> {
    Arc::new(DkimKey::load_pem(&data_path(&format!("{name}.pem"))).expect("test key loads"))
}

/// The `p=` value OpenSSL computed for a test key.
pub fn openssl_public(name: &str) -> String {
    std::fs::read_to_string(data_path(&format!("{name}.p")))
        .expect("public key file")
        .trim()
        .to_string()
}

pub fn dns_record(name: &str) -> String {
    let k = if name.starts_with("ed25519") {
        "ed25519"
    } else {
        "rsa"
    };
    format!("v=DKIM1; k={k}; p={}", openssl_public(name))
}

pub const RELAXED: (Canonicalization, Canonicalization) =
    (Canonicalization::Relaxed, Canonicalization::Relaxed);

pub fn signer(
    domain: &str,
    selector: &str,
    key_name: &str,
    canonicalization: (Canonicalization, Canonicalization),
    expire_secs: Option<u64>,
) -> DkimSigner {
    DkimSigner::new(SignerOptions {
        domain: domain.to_string(),
        selector: selector.to_string(),
        key: key(key_name),
        headers: [
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
        ]
        .map(String::from)
        .to_vec(),
        canonicalization,
        expire_secs,
    })
    .expect("signer options are valid")
}

/// An in-memory TXT cache that never expires entries.
pub struct TxtTable(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for TxtTable {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().ok()?.get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().ok()?.remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, value);
        }
    }
}

/// One signature as mail-auth saw it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub result: DkimResult,
    pub domain: String,
    pub t: u64,
    pub x: u64,
    pub h: Vec<String>,
}

impl Verified {
    pub fn passed(&self) -> bool {
        self.result == DkimResult::Pass
    }
}

/// Verifies every DKIM-Signature of `message` with mail-auth, looking keys up
/// in `records` (`selector._domainkey.domain` → TXT text). Returns each
/// signature's result, in header order.
pub fn verify(message: &[u8], records: &[(String, String)]) -> Vec<Verified> {
    let table = TxtTable(Mutex::new(HashMap::new()));
    for (name, text) in records {
        let parsed = DomainKey::parse(text.as_bytes()).expect("mail-auth parses the TXT record");
        table.insert(
            format!("{}.", name.trim_end_matches('.')).into_boxed_str(),
            Txt::from(parsed),
            std::time::Instant::now(),
        );
    }
    // A resolver that could only ever reach loopback; the table answers first.
    let config =
        ResolverConfig::from_name_servers(vec![NameServerConfig::udp(std::net::IpAddr::from([
            127, 0, 0, 1,
        ]))]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let authenticator =
            MessageAuthenticator::new(config, ResolverOpts::default()).expect("authenticator");
        let parsed = AuthenticatedMessage::parse(message).expect("mail-auth parses the message");
        let params = Parameters::new(&parsed).with_txt_cache(&table);
        authenticator
            .verify_dkim(params)
            .await
            .into_iter()
            .map(|output| {
                let signature = output.signature();
                Verified {
                    result: output.result().clone(),
                    domain: signature.map(|s| s.d.clone()).unwrap_or_default(),
                    t: signature.map_or(0, |s| s.t),
                    x: signature.map_or(0, |s| s.x),
                    h: signature.map(|s| s.h.clone()).unwrap_or_default(),
                }
            })
            .collect()
    })
}

/// Prepends the signature fields to the message.
pub fn prepend(signatures: &[String], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for signature in signatures {
        out.extend_from_slice(signature.as_bytes());
    }
    out.extend_from_slice(message);
    out
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
