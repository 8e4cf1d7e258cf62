//! DKIM signing at reception.
//!
//! A message is signed once, after the control headers are removed and the
//! `Received:` field is added, and the signed message is what the spool
//! stores, so retries and pool moves never re-sign. RSA signing costs close
//! to a millisecond of CPU, so it runs on the signing pool's threads and the
//! session awaits the result; the shard's I/O loop never stalls on it.

use std::cell::RefCell;
use std::sync::Arc;

use crate::config::{Canonicalization as ConfigCanon, Config};
use crate::dkim::{
    Canonicalization, DkimError, DkimKey, DkimSigner, PoolSubmitError, SignJob, SignerOptions,
    SigningPool, SigningTable,
};

/// Signing threads; RSA-2048 at ~0.8 ms each gives ~1,200 signatures/s per
/// thread.
pub const DKIM_POOL_THREADS: usize = 2;
/// Jobs waiting for a signing thread before new messages get 451.
pub const DKIM_POOL_QUEUE_JOBS: usize = 4096;

/// Builds the signing table from `[dkim."domain"]` entries. Any bad key is
/// a configuration error naming the file.
pub fn table_from_config(config: &Config) -> Result<SigningTable, DkimError> {
    let mut table = SigningTable::new();
    for d in config.dkim.values() {
        let key = Arc::new(DkimKey::load_pem(&d.key)?);
        let canon = |c: &ConfigCanon| match c {
            ConfigCanon::Simple => Canonicalization::Simple,
            ConfigCanon::Relaxed => Canonicalization::Relaxed,
        };
        table.insert(DkimSigner::new(SignerOptions {
            domain: d.domain.clone(),
            selector: d.selector.clone(),
            key,
            headers: d.headers.clone(),
            canonicalization: (
                canon(&d.header_canonicalization),
                canon(&d.body_canonicalization),
            ),
            expire_secs: d.expire.map(|e| e.as_secs()),
        })?)?;
    }
    for v in config.vmtas.values() {
        for extra in &v.dkim_also_sign {
            if !table.contains_domain(extra) {
                return Err(DkimError::Config(format!(
                    "vmta.{}.dkim_also_sign: no [dkim.\"{extra}\"] key",
                    v.name
                )));
            }
        }
    }
    Ok(table)
}

/// What an inbound session needs to sign.
pub struct InboundSigning {
    pub table: RefCell<Arc<SigningTable>>,
    pub pool: Arc<SigningPool>,
}

/// Why a message could not be signed (it is refused with 451, counted).
#[derive(Debug)]
pub enum SignFailure {
    Busy,
    Failed(String),
}

impl InboundSigning {
    /// Whether [`Self::sign`] would sign a message for `vmta` (keys are
    /// configured and signing is on for it); if not, it returns the content
    /// unchanged and the caller need not join it for the signer.
    pub fn applies(&self, config: &Config, vmta: &str) -> bool {
        !self.table.borrow().is_empty() && config.domain_policy("", vmta).dkim_sign
    }

    /// Signs `content` for `vmta`; returns the message with its signature
    /// fields prepended (or unchanged when no key applies or signing is off
    /// for this vMTA).
    pub async fn sign(
        &self,
        config: &Config,
        vmta: &str,
        content: Vec<u8>,
        now_unix: u64,
    ) -> Result<Vec<u8>, SignFailure> {
        if !self.applies(config, vmta) {
            return Ok(content);
        }
        let table = self.table.borrow().clone();
        let extra_domains = config
            .vmta(vmta)
            .map(|v| v.dkim_also_sign.clone())
            .unwrap_or_default();
        let job = SignJob {
            table,
            message: content,
            now_unix,
            extra_domains,
        };
        let rx = match self.pool.try_submit(job) {
            Ok(rx) => rx,
            Err(PoolSubmitError::Full(_) | PoolSubmitError::Closed(_)) => {
                return Err(SignFailure::Busy);
            }
        };
        let outcome = rx
            .await
            .map_err(|_| SignFailure::Failed("signing pool stopped".into()))?;
        match outcome.result {
            Ok(fields) => {
                let extra: usize = fields.iter().map(String::len).sum();
                let mut signed = Vec::with_capacity(extra + outcome.message.len());
                for f in &fields {
                    signed.extend_from_slice(f.as_bytes());
                }
                signed.extend_from_slice(&outcome.message);
                Ok(signed)
            }
            Err(e) => Err(SignFailure::Failed(e.to_string())),
        }
    }
}
