//! A bounded TTL cache for DNS answers, without I/O or clock reads.
//!
//! Owns expiry and eviction only: callers pass `now` in and decide the TTL of
//! each entry (see `dns::ttl_for`). Entries are evicted least recently used
//! first once `capacity` is reached, and an expired entry is never returned.
//! Why our own cache rather than hickory's (moka, also TTL-honouring and
//! bounded): this one is deterministic under an injected clock, so TTL expiry
//! and the size bound are tested without sleeping, it reports hits to our
//! metrics, and it caches our already-parsed answers (sorted MX sets, IP
//! lists) rather than wire messages.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

struct Slot<V> {
    value: V,
    expires_at: Instant,
    /// Recency stamp; the key is also in `TtlCache::recency` under it.
    used: u64,
}

/// Maps keys to values that expire at a deadline; at most `capacity` entries.
pub struct TtlCache<K, V> {
    slots: HashMap<K, Slot<V>>,
    /// Recency stamp → key, oldest first: the eviction order.
    recency: BTreeMap<u64, K>,
    next_stamp: u64,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// A cache holding at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            recency: BTreeMap::new(),
            next_stamp: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    /// The value for `key` if present and not expired at `now`; marks it as
    /// recently used. An expired entry is removed.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        let expired = match self.slots.get(key) {
            None => return None,
            Some(slot) => now >= slot.expires_at,
        };
        if expired {
            self.remove(key);
            return None;
        }
        let stamp = self.stamp();
        let slot = self.slots.get_mut(key)?;
        let old = std::mem::replace(&mut slot.used, stamp);
        let value = slot.value.clone();
        self.recency.remove(&old);
        self.recency.insert(stamp, key.clone());
        Some(value)
    }

    /// Stores `value` for `ttl` from `now`, replacing any previous entry and
    /// evicting the least recently used entries to stay within capacity. A
    /// zero TTL stores nothing.
    pub fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        self.remove(&key);
        while self.slots.len() >= self.capacity {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.slots.remove(&oldest);
        }
        let stamp = self.stamp();
        // An absurd TTL saturates rather than overflowing the Instant.
        let expires_at = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        self.recency.insert(stamp, key.clone());
        self.slots.insert(
            key,
            Slot {
                value,
                expires_at,
                used: stamp,
            },
        );
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.slots.remove(key)?;
        self.recency.remove(&slot.used);
        Some(slot.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_at_ttl() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(4);
        c.insert("a", 1, Duration::from_secs(10), t0);
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty());
    }

    #[test]
    fn evicts_least_recently_used() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut c = TtlCache::new(2);
        c.insert("a", 1, ttl, t0);
        c.insert("b", 2, ttl, t0);
        assert_eq!(c.get(&"a", t0), Some(1)); // b is now the oldest
        c.insert("c", 3, ttl, t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"b", t0), None);
        assert_eq!(c.get(&"a", t0), Some(1));
        assert_eq!(c.get(&"c", t0), Some(3));
        // Replacing a key does not grow the cache or evict another.
        c.insert("c", 4, ttl, t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"a", t0), Some(1));
        assert_eq!(c.get(&"c", t0), Some(4));
    }

    #[test]
    fn zero_capacity_and_zero_ttl_store_nothing() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(0);
        c.insert("a", 1, Duration::from_secs(1), t0);
        assert_eq!(c.get(&"a", t0), None);
        let mut c = TtlCache::new(3);
        c.insert("a", 1, Duration::ZERO, t0);
        assert_eq!(c.get(&"a", t0), None);
    }
}
