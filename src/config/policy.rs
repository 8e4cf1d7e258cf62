//! Inheritance of destination-domain settings and the resolved per-queue
//! view, `DomainPolicy`.
//!
//! Order, later layers overriding only the keys they set:
//! 1. built-in defaults (`DomainPolicy::builtin`),
//! 2. `[domain."*"]`,
//! 3. `[domain."D"]` for the destination domain D,
//! 4. `[vmta.X.domain."*"]`,
//! 5. `[vmta.X.domain."D"]`.
//!
//! Policies are computed once per load and shared as `Arc`s, so a lookup is
//! one or two hash probes and a reference-count increment.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::model::{DomainSettings, StartTls, VmtaConfig};
use super::values::{Rate, SmtpHost};

/// Every domain setting in force for one queue (destination, vMTA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainPolicy {
    /// Concurrent connections per queue.
    pub max_smtp_out: u32,
    pub max_msg_per_connection: u32,
    pub max_rcpt_per_transaction: u32,
    /// Attempted recipients per interval.
    pub max_msg_rate: Rate,
    pub max_connect_rate: Rate,
    /// Retry delays; the last entry repeats. Never empty.
    pub retry_after: Vec<Duration>,
    /// Age after which a recipient bounces as message-expired.
    pub bounce_after: Duration,
    /// Age after which a NOTIFY=DELAY recipient gets a delay DSN; `None` = never.
    pub dsn_delay_after: Option<Duration>,
    pub starttls: StartTls,
    pub dkim_sign: bool,
    /// Pattern list name (configured or built-in); `None` = no list.
    pub smtp_pattern_list: Option<String>,
    pub connect_timeout: Duration,
    pub greeting_timeout: Duration,
    /// Per-command reply timeout (EHLO, MAIL, RCPT, DATA, QUIT...).
    pub command_timeout: Duration,
    /// Time for the reply to the end of data.
    pub data_timeout: Duration,
    /// An outbound connection idle this long is closed (QUIT).
    pub idle_timeout: Duration,
    pub backoff_max_smtp_out: u32,
    pub backoff_max_msg_rate: Rate,
    pub backoff_retry_after: Duration,
    /// `None` = "never" (only a delivery or an operator ends Backoff).
    pub backoff_to_normal_after: Option<Duration>,
    pub backoff_to_normal_after_delivery: bool,
    /// After leaving Backoff, the rate climbs linearly from the backoff rate
    /// to the normal rate over this interval (zero = jump at once).
    pub backoff_ramp_up: Duration,
    /// Queue by MX host set rather than by domain.
    pub mx_rollup: bool,
    /// Send bodies with BDAT (RFC 3030) when the receiver offers CHUNKING.
    pub use_chunking: bool,
    /// Transactions one connection may have in flight at once (pipelined
    /// behind each other) when the receiver offers PIPELINING and CHUNKING.
    pub max_transactions_in_flight: u32,
    /// Route to these hosts instead of an MX lookup; empty = MX lookup.
    pub smtp_hosts: Vec<SmtpHost>,
    /// Trust anchors for `starttls = "verify"`; `None` = the system's.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

impl DomainPolicy {
    /// The built-in defaults, used for any key `[domain."*"]` leaves unset.
    pub fn builtin() -> DomainPolicy {
        DomainPolicy {
            max_smtp_out: 20,
            max_msg_per_connection: 100,
            max_rcpt_per_transaction: 100,
            max_msg_rate: Rate::Unlimited,
            max_connect_rate: Rate::Unlimited,
            retry_after: vec![mins(5), mins(10), mins(30), mins(60), mins(120), mins(240)],
            bounce_after: Duration::from_secs(4 * 86_400 + 12 * 3600),
            dsn_delay_after: Some(mins(240)),
            starttls: StartTls::Opportunistic,
            dkim_sign: true,
            smtp_pattern_list: None,
            connect_timeout: mins(2),
            greeting_timeout: mins(5),
            command_timeout: mins(5),
            data_timeout: mins(3),
            idle_timeout: Duration::from_secs(10),
            backoff_max_smtp_out: 2,
            backoff_max_msg_rate: Rate::Limited {
                count: 60,
                per: Duration::from_secs(3600),
            },
            backoff_retry_after: mins(20),
            backoff_to_normal_after: Some(mins(60)),
            backoff_to_normal_after_delivery: true,
            backoff_ramp_up: mins(30),
            mx_rollup: false,
            use_chunking: true,
            max_transactions_in_flight: 8,
            smtp_hosts: Vec::new(),
            tls_ca_file: None,
        }
    }

    /// Applies the keys set in `layer` on top of `self`.
    pub fn overlay(&mut self, layer: &DomainSettings) {
        macro_rules! take {
            ($($f:ident),* $(,)?) => {
                $( if let Some(v) = &layer.$f { self.$f = v.clone(); } )*
            };
        }
        take!(
            max_smtp_out,
            max_msg_per_connection,
            max_rcpt_per_transaction,
            max_msg_rate,
            max_connect_rate,
            retry_after,
            bounce_after,
            dsn_delay_after,
            starttls,
            dkim_sign,
            smtp_pattern_list,
            connect_timeout,
            greeting_timeout,
            command_timeout,
            data_timeout,
            idle_timeout,
            backoff_max_smtp_out,
            backoff_max_msg_rate,
            backoff_retry_after,
            backoff_to_normal_after,
            backoff_to_normal_after_delivery,
            backoff_ramp_up,
            mx_rollup,
            use_chunking,
            max_transactions_in_flight,
            smtp_hosts,
        );
        if let Some(path) = &layer.tls_ca_file {
            self.tls_ca_file = Some(path.clone());
        }
    }

    /// Whether this domain's recipients queue under its MX rollup key. Not
    /// with fixed `smtp_hosts`, and not with `starttls = "verify"`: a rollup
    /// queue runs on the policy of the domain that made it, and a verifying
    /// domain must not have its mail sent under another's TLS rules.
    pub fn rolls_up(&self) -> bool {
        self.mx_rollup && self.smtp_hosts.is_empty() && self.starttls != StartTls::Verify
    }

    /// The retry delay after `attempts` failed attempts (1 = after the first).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let i = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        self.retry_after
            .get(i)
            .or(self.retry_after.last())
            .copied()
            .unwrap_or(mins(5))
    }
}

/// Precomputed policies: one per configured domain, and per vMTA that has
/// overrides.
#[derive(Clone, Debug)]
pub(crate) struct PolicyIndex {
    fallback: Arc<DomainPolicy>,
    domains: HashMap<String, Arc<DomainPolicy>>,
    vmtas: HashMap<String, VmtaPolicies>,
}

#[derive(Clone, Debug)]
struct VmtaPolicies {
    fallback: Arc<DomainPolicy>,
    domains: HashMap<String, Arc<DomainPolicy>>,
}

impl PolicyIndex {
    pub fn build(
        domains: &BTreeMap<String, DomainSettings>,
        vmtas: &BTreeMap<String, VmtaConfig>,
    ) -> PolicyIndex {
        let mut base = DomainPolicy::builtin();
        if let Some(star) = domains.get("*") {
            base.overlay(star);
        }
        let specific = |d: &str| -> DomainPolicy {
            let mut p = base.clone();
            if let Some(layer) = domains.get(d) {
                p.overlay(layer);
            }
            p
        };
        let mut index = PolicyIndex {
            fallback: Arc::new(base.clone()),
            domains: domains
                .keys()
                .filter(|d| *d != "*")
                .map(|d| (d.clone(), Arc::new(specific(d))))
                .collect(),
            vmtas: HashMap::new(),
        };
        for (name, vmta) in vmtas {
            if vmta.domains.is_empty() {
                continue;
            }
            let star = vmta.domains.get("*");
            let with_vmta = |d: &str| -> DomainPolicy {
                let mut p = specific(d);
                if let Some(layer) = star {
                    p.overlay(layer);
                }
                if let Some(layer) = vmta.domains.get(d) {
                    p.overlay(layer);
                }
                p
            };
            let names = domains
                .keys()
                .chain(vmta.domains.keys())
                .filter(|d| *d != "*");
            let per = VmtaPolicies {
                fallback: Arc::new(with_vmta("*")),
                domains: names.map(|d| (d.clone(), Arc::new(with_vmta(d)))).collect(),
            };
            index.vmtas.insert(name.clone(), per);
        }
        index
    }

    pub fn lookup(&self, destination_domain: &str, vmta: &str) -> Arc<DomainPolicy> {
        let d = normalize_domain(destination_domain);
        if let Some(v) = self.vmtas.get(vmta) {
            return v.domains.get(d.as_ref()).unwrap_or(&v.fallback).clone();
        }
        self.domains
            .get(d.as_ref())
            .unwrap_or(&self.fallback)
            .clone()
    }
}

/// Lowercase without a trailing dot, allocating only when needed.
pub(crate) fn normalize_domain(d: &str) -> Cow<'_, str> {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(d.to_ascii_lowercase())
    } else {
        Cow::Borrowed(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_needs_mx_routing_and_no_certificate_check() {
        let mut p = DomainPolicy::builtin();
        assert!(!p.rolls_up(), "off by default");
        p.mx_rollup = true;
        assert!(p.rolls_up());
        for starttls in [StartTls::Off, StartTls::Opportunistic, StartTls::Required] {
            p.starttls = starttls;
            assert!(p.rolls_up(), "{starttls:?}");
        }
        p.starttls = StartTls::Verify;
        assert!(!p.rolls_up(), "a verifying domain keeps its own queue");
        p.starttls = StartTls::Required;
        p.smtp_hosts = vec![SmtpHost {
            host: "mx.example".into(),
            ip: None,
            port: 25,
        }];
        assert!(!p.rolls_up(), "fixed hosts are not an MX set");
    }
}
