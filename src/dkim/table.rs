//! [`SigningTable`]: the signers configured for this process and the choice
//! of which of them sign a given message.
//!
//! A message is signed by the signer of its From domain (the first address's
//! domain; when that exact domain has no key, its nearest parent domain that
//! has one, which still aligns under DMARC's relaxed mode), plus every extra
//! domain configured to sign all mail (an ESP domain beside the customer's).
//! A message with no applicable signer gets no signature: that is a policy
//! outcome, not an error.

use std::collections::HashMap;
use std::sync::Arc;

use super::message::from_domain;
use super::sign::DkimSigner;
use super::{DKIM_SIGNATURES_PER_MESSAGE_MAX, DkimError};

/// Signers by domain, plus the domains that sign every message.
#[derive(Debug, Default)]
pub struct SigningTable {
    by_domain: HashMap<String, Arc<DkimSigner>>,
    always: Vec<Arc<DkimSigner>>,
}

impl SigningTable {
    pub fn new() -> SigningTable {
        SigningTable::default()
    }

    /// Adds a signer; one per domain.
    pub fn insert(&mut self, signer: DkimSigner) -> Result<(), DkimError> {
        let domain = signer.domain().to_string();
        if self.by_domain.contains_key(&domain) {
            return Err(DkimError::Config(format!(
                "two DKIM keys for domain {domain}; one selector per domain"
            )));
        }
        self.by_domain.insert(domain, Arc::new(signer));
        Ok(())
    }

    /// Makes `domain` (which must already have a signer) sign every message,
    /// in addition to the From domain's signer.
    pub fn add_always_sign(&mut self, domain: &str) -> Result<(), DkimError> {
        let signer = self.exact(domain).ok_or_else(|| {
            DkimError::Config(format!(
                "extra signing domain {domain} has no [dkim.\"{domain}\"] key"
            ))
        })?;
        if self.always.len() + 1 >= DKIM_SIGNATURES_PER_MESSAGE_MAX {
            return Err(DkimError::Config(format!(
                "at most {} extra signing domains",
                DKIM_SIGNATURES_PER_MESSAGE_MAX - 1
            )));
        }
        if !self.always.iter().any(|s| Arc::ptr_eq(s, &signer)) {
            self.always.push(signer);
        }
        Ok(())
    }

    /// Number of signing domains.
    pub fn len(&self) -> usize {
        self.by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// True when `domain` has a signer of its own (exact match).
    pub fn contains_domain(&self, domain: &str) -> bool {
        self.exact(domain).is_some()
    }

    fn exact(&self, domain: &str) -> Option<Arc<DkimSigner>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.by_domain.get(&domain).cloned()
    }

    /// The signer for an author domain: the exact domain, else the nearest
    /// parent with a key (never a bare top-level label).
    pub fn signer_for_domain(&self, domain: &str) -> Option<Arc<DkimSigner>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut candidate = domain.as_str();
        loop {
            if let Some(signer) = self.by_domain.get(candidate) {
                return Some(signer.clone());
            }
            let (_, parent) = candidate.split_once('.')?;
            if !parent.contains('.') {
                return None;
            }
            candidate = parent;
        }
    }

    /// The signers that apply to `message`, From domain's first, without
    /// duplicates, plus `extra_domains` given for this message (e.g. by its
    /// vMTA). An extra domain without a signer is a configuration error.
    pub fn signers_for(
        &self,
        message: &[u8],
        extra_domains: &[&str],
    ) -> Result<Vec<Arc<DkimSigner>>, DkimError> {
        let mut signers: Vec<Arc<DkimSigner>> = Vec::with_capacity(2);
        let mut add = |signer: Arc<DkimSigner>| {
            if !signers.iter().any(|s| Arc::ptr_eq(s, &signer)) {
                signers.push(signer);
            }
        };
        if let Some(signer) = from_domain(message).and_then(|d| self.signer_for_domain(&d)) {
            add(signer);
        }
        for signer in &self.always {
            add(signer.clone());
        }
        for domain in extra_domains {
            let signer = self.exact(domain).ok_or_else(|| {
                DkimError::Config(format!(
                    "extra signing domain {domain} has no [dkim.\"{domain}\"] key"
                ))
            })?;
            add(signer);
        }
        if signers.len() > DKIM_SIGNATURES_PER_MESSAGE_MAX {
            return Err(DkimError::Config(format!(
                "{} signatures requested for one message; at most {DKIM_SIGNATURES_PER_MESSAGE_MAX}",
                signers.len()
            )));
        }
        Ok(signers)
    }

    /// Every signature for `message`, in the order they go above it (first
    /// is topmost). Empty when no signer applies. Any failure fails the
    /// whole call: a message is never sent with only some of its signatures.
    pub fn sign(&self, message: &[u8], now_unix: u64) -> Result<Vec<String>, DkimError> {
        self.sign_with_extra(message, now_unix, &[])
    }

    /// As [`SigningTable::sign`], with extra signing domains for this message.
    pub fn sign_with_extra(
        &self,
        message: &[u8],
        now_unix: u64,
        extra_domains: &[&str],
    ) -> Result<Vec<String>, DkimError> {
        self.signers_for(message, extra_domains)?
            .iter()
            .map(|signer| signer.sign(message, now_unix))
            .collect()
    }
}
