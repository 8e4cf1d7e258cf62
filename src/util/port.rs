//! A free loopback port for a server a test or a benchmark starts.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};

/// Ports already handed out by this process.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How far below the ephemeral range ports are taken from.
const BELOW_EPHEMERAL_PORTS: u16 = 16384;
/// Random picks tried before giving up.
const PICKS_MAX: u32 = 100_000;

/// A free port on 127.0.0.1 for a server to bind, never one this process
/// was given before. It is taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), from which binds to port 0
/// and outgoing connections get theirs: a port handed out here stays free
/// until the server binds it. (In spate's tests a bind to port 0 once took
/// the port chosen for spate's admin API, and the test's HTTP requests were
/// answered by an SMTP sink; consecutive binds to port 0 also return the
/// same port about 2 times in 20,000 here.)
pub fn free_loopback_port() -> Result<u16, String> {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let from = low.saturating_sub(BELOW_EPHEMERAL_PORTS).max(1024);
    if low <= from {
        return Err(format!("ephemeral ports start at {low}: no room below"));
    }
    for _ in 0..PICKS_MAX {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = from + (random % u64::from(low - from)) as u16;
        let fresh = GIVEN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port);
        if fresh && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!("no free loopback port below {low}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_repeat() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let port = free_loopback_port().expect("a port");
            assert!(port < low, "{port} is in the ephemeral range");
            assert!(seen.insert(port), "{port} given twice");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
