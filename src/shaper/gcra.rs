//! A generic cell rate algorithm (GCRA) limiter over nanosecond time.
//!
//! One number of state: the theoretical arrival time (TAT) of the next event.
//! Each granted event pushes the TAT one emission interval further; a request
//! conforms while the TAT stays within `burst` intervals of now. This spreads
//! events evenly (no top-of-the-hour bursts) and lets the interval change
//! between calls, which is how the controller ramps from Backoff to Normal.
//! The caller owns the clock; nothing here reads it.

/// A GCRA limiter. Interval and burst are passed to every call so the owner
/// can change them (mode switch, ramp, reload) without rebuilding state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gcra {
    tat_ns: u64,
}

impl Gcra {
    /// Events that conform at `now_ns` (at most `burst`).
    pub fn available(&self, now_ns: u64, interval_ns: u64, burst: u32) -> u32 {
        let interval_ns = interval_ns.max(1);
        let tolerance_ns = interval_ns.saturating_mul(u64::from(burst));
        let base_ns = self.tat_ns.max(now_ns);
        let room_ns = (now_ns.saturating_add(tolerance_ns)).saturating_sub(base_ns);
        u32::try_from(room_ns / interval_ns)
            .unwrap_or(u32::MAX)
            .min(burst)
    }

    /// Records `count` events at `now_ns`. Callers take at most [`Self::available`].
    pub fn take(&mut self, now_ns: u64, interval_ns: u64, count: u32) {
        let base_ns = self.tat_ns.max(now_ns);
        self.tat_ns = base_ns.saturating_add(interval_ns.saturating_mul(u64::from(count)));
    }

    /// Earliest time at or after `now_ns` when one event conforms.
    pub fn next_conforming_ns(&self, now_ns: u64, interval_ns: u64, burst: u32) -> u64 {
        let interval_ns = interval_ns.max(1);
        let tolerance_ns = interval_ns.saturating_mul(u64::from(burst));
        // One event conforms when tat + interval - tolerance <= t.
        let at_ns = self
            .tat_ns
            .max(now_ns)
            .saturating_add(interval_ns)
            .saturating_sub(tolerance_ns);
        at_ns.max(now_ns)
    }

    /// After a change of interval, keeps the debt at most one new interval so
    /// a long Backoff interval does not delay the first Normal-rate event, and
    /// never creates a burst larger than the new limits allow.
    pub fn clamp_debt(&mut self, now_ns: u64, interval_ns: u64) {
        self.tat_ns = self.tat_ns.min(now_ns.saturating_add(interval_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_even_spacing() {
        let mut g = Gcra::default();
        let t = 1_000_000_000; // now = 1 s
        assert_eq!(g.available(t, 100, 3), 3);
        g.take(t, 100, 3);
        assert_eq!(g.available(t, 100, 3), 0);
        assert_eq!(g.next_conforming_ns(t, 100, 3), t + 100);
        assert_eq!(g.available(t + 99, 100, 3), 0);
        assert_eq!(g.available(t + 100, 100, 3), 1);
        assert_eq!(g.available(t + 10_000, 100, 3), 3);
    }

    #[test]
    fn long_run_rate_is_exact() {
        let mut g = Gcra::default();
        let mut taken = 0u64;
        // Ask every 7 ns for 10 ms at an interval of 1000 ns: ~1e4 events.
        let mut now = 0;
        while now < 10_000_000 {
            let n = g.available(now, 1000, 1);
            g.take(now, 1000, n);
            taken += u64::from(n);
            now += 7;
        }
        assert!((9_990..=10_010).contains(&taken), "{taken}");
    }

    #[test]
    fn clamp_limits_debt() {
        let mut g = Gcra::default();
        g.take(0, 1_000_000, 1); // tat = 1 ms
        g.clamp_debt(0, 10);
        assert_eq!(g.next_conforming_ns(0, 10, 1), 10);
    }
}
