//! The retry timer: deferred recipients wait here until they are due.
//!
//! Entries are bucketed by tick ([`TIMER_TICK_MS`]) in an ordered map, so
//! inserting is O(log buckets), firing is O(due entries), and a shard with
//! nothing due sleeps until [`TimerWheel::next_deadline`] instead of polling
//! a list. (A hashed wheel would make insert O(1); with retries minutes
//! apart the bucket count stays small and the ordered map keeps `next
//! deadline` exact, which matters more for "no CPU when nothing is due".)
//! Times are milliseconds passed in by the caller (no clock reads), so tests
//! can run days of retries instantly.
//!
//! An entry fires at the first `advance` at or after its due tick, never
//! before.

use std::collections::BTreeMap;

/// Granularity of due times. Retry schedules are minutes apart; 100 ms
/// coalesces entries into few buckets while firing well within any SMTP
/// retry precision.
pub const TIMER_TICK_MS: u64 = 100;

/// Values of type `T` due at millisecond times.
#[derive(Debug)]
pub struct TimerWheel<T> {
    buckets: BTreeMap<u64, Vec<T>>,
    len: usize,
}

impl<T> Default for TimerWheel<T> {
    fn default() -> Self {
        Self {
            buckets: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T> TimerWheel<T> {
    /// An empty timer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `value` at `due_ms` (a time in the past fires at the next
    /// advance).
    pub fn insert(&mut self, due_ms: u64, value: T) {
        let tick = due_ms.div_ceil(TIMER_TICK_MS);
        self.buckets.entry(tick).or_default().push(value);
        self.len += 1;
    }

    /// Appends every entry due at or before `now_ms` to `out`, oldest first.
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<T>) {
        let now_tick = now_ms / TIMER_TICK_MS;
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > now_tick {
                break;
            }
            let values = entry.remove();
            self.len -= values.len();
            out.extend(values);
        }
    }

    /// Removes every entry for which `remove` returns true (e.g. all
    /// recipients of a deleted queue) and returns them.
    pub fn extract_if(&mut self, remove: impl FnMut(&T) -> bool) -> Vec<T> {
        self.extract_due_if(remove)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// As [`Self::extract_if`], with each entry's due time (ms, rounded up
    /// to the tick) so it can be put back unchanged.
    pub fn extract_due_if(&mut self, mut remove: impl FnMut(&T) -> bool) -> Vec<(u64, T)> {
        let mut taken = Vec::new();
        for (tick, values) in self.buckets.iter_mut() {
            let mut i = 0;
            while i < values.len() {
                if remove(&values[i]) {
                    taken.push((tick * TIMER_TICK_MS, values.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
        }
        self.buckets.retain(|_, v| !v.is_empty());
        self.len -= taken.len();
        taken
    }

    /// Every entry with its due time (ms, rounded up to the tick), in no
    /// particular order within a tick.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.buckets
            .iter()
            .flat_map(|(tick, values)| values.iter().map(move |v| (tick * TIMER_TICK_MS, v)))
    }

    /// The earliest time (ms) at which an entry is due, for sleeping.
    pub fn next_deadline(&self) -> Option<u64> {
        self.buckets.keys().next().map(|t| t * TIMER_TICK_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_in_order_and_not_early() {
        let mut w = TimerWheel::new();
        w.insert(1_000 + 300_000, "5m");
        w.insert(1_000 + 600, "600ms");
        w.insert(1_000 + 86_400_000 * 400, "400d");
        w.insert(0, "past");
        let mut out = Vec::new();
        w.advance(1_000, &mut out);
        assert_eq!(out, vec!["past"]);
        out.clear();
        w.advance(1_000 + 599, &mut out);
        assert!(out.is_empty());
        w.advance(1_000 + 600, &mut out);
        assert_eq!(out, vec!["600ms"]);
        out.clear();
        assert_eq!(w.next_deadline(), Some(1_000 + 300_000));
        w.advance(1_000 + 299_999, &mut out);
        assert!(out.is_empty());
        w.advance(1_000 + 300_000, &mut out);
        assert_eq!(out, vec!["5m"]);
        out.clear();
        w.advance(1_000 + 86_400_000 * 400, &mut out);
        assert_eq!(out, vec!["400d"]);
        assert!(w.is_empty());
    }

    proptest! {
        #[test]
        fn every_entry_fires_once_at_or_after_due(
            start in 0u64..1_000_000,
            dues in proptest::collection::vec(0u64..50_000_000, 1..200),
            steps in proptest::collection::vec(1u64..5_000_000, 1..40),
        ) {
            let mut w = TimerWheel::new();
            for (i, d) in dues.iter().enumerate() {
                w.insert(start + d, (i, start + d));
            }
            let mut now = start;
            let mut fired = vec![false; dues.len()];
            let mut out = Vec::new();
            for s in steps.iter().chain(std::iter::once(&60_000_000u64)) {
                now += s;
                out.clear();
                w.advance(now, &mut out);
                for (i, due) in &out {
                    prop_assert!(!fired[*i], "fired twice");
                    prop_assert!(*due <= now + TIMER_TICK_MS, "fired early: due {} now {}", due, now);
                    // Not late by more than the span of this step.
                    fired[*i] = true;
                }
            }
            prop_assert!(fired.iter().all(|f| *f));
            prop_assert!(w.is_empty());
        }
    }
}
