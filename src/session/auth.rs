//! SMTP AUTH credential checks: argon2id hashes and a per-IP failure limit.
//!
//! Verification is deliberately slow (argon2id), so it runs off the shard's
//! I/O loop (compio's blocking pool) and a client address that keeps
//! failing is refused before any hash is computed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Failed AUTH attempts one address may make per window before every
/// further attempt is refused until the window ends.
pub const AUTH_FAILURES_PER_IP_MAX: u32 = 5;
/// Length of the failure window.
pub const AUTH_FAILURE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Addresses tracked at once; beyond it the oldest windows are forgotten.
pub const AUTH_TRACKED_IPS_MAX: usize = 65_536;

/// Makes an argon2id PHC string for `[[user]] password_hash`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt_bytes = [0u8; 16];
    rand::fill(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against a PHC string. A malformed stored hash is a
/// refusal, never a panic (config validation reports it at load).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Counts AUTH failures per client address in fixed windows.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    /// Whether `ip` may try now.
    pub fn allowed(&self, ip: IpAddr, now: Instant) -> bool {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(&ip) {
            Some((start, count)) => {
                now.duration_since(*start) >= Duration::from_millis(AUTH_FAILURE_WINDOW_MS)
                    || *count < AUTH_FAILURES_PER_IP_MAX
            }
            None => true,
        }
    }

    /// Records a failure from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let window = Duration::from_millis(AUTH_FAILURE_WINDOW_MS);
        if table.len() >= AUTH_TRACKED_IPS_MAX {
            table.retain(|_, (start, _)| now.duration_since(*start) < window);
            if table.len() >= AUTH_TRACKED_IPS_MAX {
                table.clear();
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// A success clears the address's record.
    pub fn record_success(&self, ip: IpAddr) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("change-me").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("change-me", &phc));
        assert!(!verify_password("change-you", &phc));
        assert!(!verify_password("change-me", "not a phc string"));
    }

    #[test]
    fn example_config_hash_matches_its_comment() {
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$Br0f7MiOm4kZg58KTDYYQQ$Det6SJOUWWGVWuKEIcAtQG891o2yo1KsVuVBUmTo60Q";
        assert!(verify_password("change-me", phc));
    }

    #[test]
    fn limiter_blocks_after_max_failures_until_window_ends() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..AUTH_FAILURES_PER_IP_MAX {
            assert!(l.allowed(ip, t0));
            l.record_failure(ip, t0);
        }
        assert!(!l.allowed(ip, t0));
        assert!(l.allowed("127.0.0.10".parse().unwrap(), t0));
        let later = t0 + Duration::from_millis(AUTH_FAILURE_WINDOW_MS);
        assert!(l.allowed(ip, later));
        l.record_success(ip);
        assert!(l.allowed(ip, t0));
    }
}
