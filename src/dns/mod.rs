//! The DNS resolver service: one resolver thread, a TTL cache, and a client
//! handle usable from any thread or executor.
//!
//! Shards run compio, hickory-resolver needs tokio, so resolution runs on one
//! dedicated thread with a tokio current-thread runtime (`service.rs`).
//! Requests reach it over a bounded crossbeam channel (`try_send`: a full
//! queue is an immediate temporary error, never a stall of the shard);
//! answers come back through a `tokio::sync::oneshot`, whose receiver is an
//! ordinary future that a compio task can await (it needs no tokio runtime),
//! or through the `*_blocking` calls for tests and tools.
//!
//! This module owns the answer types and the cache policy (which TTL an
//! answer is cached for). Routing decisions (null MX, implicit MX, ordering)
//! belong to `delivery::route`.

mod cache;
mod service;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use cache::TtlCache;
pub use service::{DnsClient, DnsService, DnsStartError};

/// Requests waiting for the resolver thread; beyond this `DnsError::Busy`.
pub const DNS_REQUEST_QUEUE_LEN_MAX: usize = 4096;
/// Lookups the resolver thread runs concurrently.
pub const DNS_IN_FLIGHT_MAX: usize = 256;
/// Longest time a positive answer is cached, whatever its TTL says.
pub const DNS_POSITIVE_TTL_SECS_MAX: u64 = 86_400;
/// Negative answers (NXDOMAIN/NODATA) are cached for the SOA minimum, within
/// these bounds; the default applies when the answer carries no SOA.
pub const DNS_NEGATIVE_TTL_SECS_MIN: u64 = 5;
pub const DNS_NEGATIVE_TTL_SECS_MAX: u64 = 3_600;
pub const DNS_NEGATIVE_TTL_SECS_DEFAULT: u64 = 60;
/// A domain name is at most 253 characters in text form (RFC 1035).
pub const DNS_NAME_BYTES_MAX: usize = 253;

const _: () = assert!(DNS_NEGATIVE_TTL_SECS_MIN <= DNS_NEGATIVE_TTL_SECS_DEFAULT);
const _: () = assert!(DNS_NEGATIVE_TTL_SECS_DEFAULT <= DNS_NEGATIVE_TTL_SECS_MAX);
const _: () = assert!(DNS_IN_FLIGHT_MAX <= DNS_REQUEST_QUEUE_LEN_MAX);

/// `[dns]` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// Name servers (UDP, TCP on truncation); `None` reads /etc/resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Per-query timeout.
    pub timeout: Duration,
    /// Retries after the first attempt (hickory's meaning of `attempts`).
    pub attempts: usize,
    /// Cached answers at most (MX, A and AAAA entries counted separately).
    pub cache_size: usize,
    /// Capacity of the request channel.
    pub request_queue_len: usize,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            nameservers: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
            cache_size: 100_000,
            request_queue_len: DNS_REQUEST_QUEUE_LEN_MAX,
        }
    }
}

/// One MX record. `exchange` is lowercase without the trailing dot; the
/// root name `.` (null MX) is the empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

/// A definitive answer: records, or a negative answer that is also cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Records(Vec<T>),
    /// The name exists but has no records of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// A lookup that gave no definitive answer. All are temporary except
/// `InvalidName`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS lookup timed out")]
    Timeout,
    /// SERVFAIL, REFUSED or another error response code.
    #[error("DNS server failure: {0}")]
    ServerFailure(String),
    /// Transport problems (no connection, I/O error, bad response).
    #[error("DNS network error: {0}")]
    Network(String),
    /// The request queue is full; retry later.
    #[error("DNS resolver busy")]
    Busy,
    /// The resolver thread has stopped.
    #[error("DNS resolver stopped")]
    Shutdown,
    #[error("invalid domain name {0:?}")]
    InvalidName(String),
}

impl DnsError {
    /// Whether retrying later may succeed.
    pub fn is_temporary(&self) -> bool {
        !matches!(self, Self::InvalidName(_))
    }
}

/// Counters of the resolver service, read by the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsMetricsSnapshot {
    /// Requests accepted (MX and IP lookups, cache hits included).
    pub lookups: u64,
    /// Queries answered from the cache (an IP lookup is two: A and AAAA).
    pub cache_hits: u64,
    /// Queries sent to name servers.
    pub queries: u64,
    /// Requests that ended in a `DnsError` (timeouts, SERVFAIL, busy...).
    pub failures: u64,
    /// Requests refused because the queue was full (also in `failures`).
    pub rejected: u64,
    /// Entries in the cache when last updated.
    pub cache_entries: u64,
}

/// Lowercases, strips one trailing dot and checks a domain or host name.
pub fn normalize_name(name: &str) -> Result<String, DnsError> {
    let trimmed = name.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= DNS_NAME_BYTES_MAX
        && !trimmed.starts_with('.')
        && !trimmed.contains("..")
        && trimmed
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/' && c != '\\');
    if ok {
        Ok(trimmed.to_lowercase())
    } else {
        Err(DnsError::InvalidName(name.chars().take(64).collect()))
    }
}

/// How long a negative answer is cached: the SOA-derived negative TTL
/// (RFC 2308: min of the SOA record's TTL and its MINIMUM field) clamped to
/// our bounds, or the default without an SOA.
pub fn negative_ttl(soa_negative_ttl_secs: Option<u32>) -> Duration {
    let secs = soa_negative_ttl_secs.map_or(DNS_NEGATIVE_TTL_SECS_DEFAULT, |s| {
        u64::from(s).clamp(DNS_NEGATIVE_TTL_SECS_MIN, DNS_NEGATIVE_TTL_SECS_MAX)
    });
    Duration::from_secs(secs)
}

/// How long a positive answer is cached: its smallest record TTL, capped.
pub fn positive_ttl(min_record_ttl_secs: u32) -> Duration {
    Duration::from_secs(u64::from(min_record_ttl_secs).min(DNS_POSITIVE_TTL_SECS_MAX))
}

/// Puts IPv4 addresses before IPv6 ones, keeping order within each family.
pub fn v4_first(addrs: &mut [IpAddr]) {
    addrs.sort_by_key(|a| a.is_ipv6());
}

// Shards on many threads share one client and one service.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DnsClient>();
    assert_send_sync::<DnsService>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize_name("Example.COM."), Ok("example.com".into()));
        assert!(normalize_name("").is_err());
        assert!(normalize_name(".").is_err());
        assert!(normalize_name("a..b").is_err());
        assert!(normalize_name("a b").is_err());
        assert!(normalize_name(&"a".repeat(254)).is_err());
    }

    #[test]
    fn ttl_policy() {
        assert_eq!(negative_ttl(None), Duration::from_secs(60));
        assert_eq!(negative_ttl(Some(0)), Duration::from_secs(5));
        assert_eq!(negative_ttl(Some(900)), Duration::from_secs(900));
        assert_eq!(negative_ttl(Some(86_400)), Duration::from_secs(3600));
        assert_eq!(positive_ttl(300), Duration::from_secs(300));
        assert_eq!(positive_ttl(u32::MAX), Duration::from_secs(86_400));
    }
}
