//! The shaper's own input types: rates and the per-queue limits of each mode.
//!
//! The config module owns parsing and inheritance (`[domain."*"]`, the domain,
//! the vMTA's domain override); the integrator maps the merged settings into
//! these plain values. Nothing here reads a clock or a file.

use std::time::Duration;

/// Longest recipient batch one rate grant may cover; also the ceiling of the
/// GCRA burst. RFC 5321 §4.5.3.1.8 requires servers to accept at least 100
/// recipients per transaction; more than this in one go is never smooth.
pub const RCPT_PER_GRANT_MAX: u32 = 1000;

/// Default length of the ramp from the Backoff rate back to the Normal rate.
///
/// Thirty minutes because the providers' reputation windows are minutes to
/// hours long: a Yahoo `[TSS04]` or Microsoft `4.7.650` throttle typically
/// lasts 15–60 minutes, and a queue that jumps straight back to its full rate
/// when the backoff timer fires re-triggers the throttle and oscillates. Half
/// the conventional one-hour `backoff_to_normal_after` keeps a single
/// throttle's total cost bounded (backoff + ramp ≤ 1.5 h) while letting the
/// provider see volume rise slowly. `ramp_up = 0` restores PowerMTA's jump.
pub const RAMP_UP_DEFAULT: Duration = Duration::from_secs(30 * 60);

/// Longest ramp accepted; beyond a day the queue would never really recover.
pub const RAMP_UP_MAX: Duration = Duration::from_secs(24 * 3600);

/// Longest interval a rate may be expressed over ("N/d" is the coarsest).
pub const RATE_PER_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most entries in a retry schedule; the last one repeats.
pub const RETRY_SCHEDULE_ENTRIES_MAX: usize = 64;

const _: () = assert!(RAMP_UP_DEFAULT.as_secs() <= RAMP_UP_MAX.as_secs());
const _: () = assert!(RCPT_PER_GRANT_MAX >= 100);

/// `count` events per `per` (config: "1000/h"). `None` where a rate is
/// optional means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per interval; at least 1.
    pub count: u32,
    /// The interval; more than zero and at most [`RATE_PER_MAX`].
    pub per: Duration,
}

impl Rate {
    /// A rate of `count` per `per`.
    pub const fn new(count: u32, per: Duration) -> Self {
        Rate { count, per }
    }

    /// Events per hour, as a float (for snapshots and ramps).
    pub fn per_hour(&self) -> f64 {
        let per_s = self.per.as_secs_f64();
        if per_s <= 0.0 {
            return f64::INFINITY;
        }
        f64::from(self.count) * 3600.0 / per_s
    }

    /// Nanoseconds between two events at this rate (the GCRA emission interval).
    pub fn interval_ns(&self) -> u64 {
        let per_ns = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        (per_ns / u64::from(self.count.max(1))).max(1)
    }
}

/// The limits that differ between Normal and Backoff mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeLimits {
    /// Concurrent connections (`max_smtp_out` / `backoff_max_smtp_out`); at least 1.
    pub max_smtp_out: u32,
    /// Attempted recipients per interval; `None` = unlimited.
    pub max_msg_rate: Option<Rate>,
    /// Connection attempts per interval; `None` = unlimited.
    pub max_connect_rate: Option<Rate>,
    /// Retry delays; the last repeats (`retry_after` / `[backoff_retry_after]`).
    pub retry_after: Vec<Duration>,
}

/// Everything one queue's controller enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    pub normal: ModeLimits,
    pub backoff: ModeLimits,
    /// Messages per connection before it is closed; at least 1.
    pub max_msg_per_connection: u32,
    /// Recipients per transaction; 1..=[`RCPT_PER_GRANT_MAX`].
    pub max_rcpt_per_transaction: u32,
    /// Backoff ends this long after the last backoff-matching reply; `None` = never.
    pub backoff_to_normal_after: Option<Duration>,
    /// Backoff ends at the first successful delivery.
    pub backoff_to_normal_after_delivery: bool,
    /// Length of the linear ramp from Backoff to Normal limits; zero = jump.
    pub ramp_up: Duration,
}

/// A limit that cannot be enforced as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("{field}: must be at least 1")]
    Zero { field: &'static str },
    #[error("{field}: interval must be more than zero and at most 7 days")]
    BadInterval { field: &'static str },
    #[error("max_rcpt_per_transaction: at most {RCPT_PER_GRANT_MAX}")]
    TooManyRcpt,
    #[error("{field}: at most {RETRY_SCHEDULE_ENTRIES_MAX} entries, at least one")]
    RetrySchedule { field: &'static str },
    #[error("ramp_up: at most 24h")]
    RampTooLong,
}

impl Default for QueueLimits {
    /// The defaults of `spate.example.toml`'s `[domain."*"]`.
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(m * 60);
        QueueLimits {
            normal: ModeLimits {
                max_smtp_out: 20,
                max_msg_rate: None,
                max_connect_rate: None,
                retry_after: vec![min(5), min(10), min(30), min(60), min(120), min(240)],
            },
            backoff: ModeLimits {
                max_smtp_out: 2,
                max_msg_rate: Some(Rate::new(60, Duration::from_secs(3600))),
                max_connect_rate: None,
                retry_after: vec![min(20)],
            },
            max_msg_per_connection: 100,
            max_rcpt_per_transaction: 100,
            backoff_to_normal_after: Some(min(60)),
            backoff_to_normal_after_delivery: true,
            ramp_up: RAMP_UP_DEFAULT,
        }
    }
}

impl QueueLimits {
    /// Checks every bound; the controller assumes a validated value.
    pub fn validate(&self) -> Result<(), LimitsError> {
        for (prefix, mode) in [("", &self.normal), ("backoff_", &self.backoff)] {
            let smtp_out = if prefix.is_empty() {
                "max_smtp_out"
            } else {
                "backoff_max_smtp_out"
            };
            if mode.max_smtp_out == 0 {
                return Err(LimitsError::Zero { field: smtp_out });
            }
            let msg_rate = if prefix.is_empty() {
                "max_msg_rate"
            } else {
                "backoff_max_msg_rate"
            };
            check_rate(mode.max_msg_rate, msg_rate)?;
            check_rate(mode.max_connect_rate, "max_connect_rate")?;
            let retry = if prefix.is_empty() {
                "retry_after"
            } else {
                "backoff_retry_after"
            };
            if mode.retry_after.is_empty() || mode.retry_after.len() > RETRY_SCHEDULE_ENTRIES_MAX {
                return Err(LimitsError::RetrySchedule { field: retry });
            }
        }
        if self.max_msg_per_connection == 0 {
            return Err(LimitsError::Zero {
                field: "max_msg_per_connection",
            });
        }
        if self.max_rcpt_per_transaction == 0 {
            return Err(LimitsError::Zero {
                field: "max_rcpt_per_transaction",
            });
        }
        if self.max_rcpt_per_transaction > RCPT_PER_GRANT_MAX {
            return Err(LimitsError::TooManyRcpt);
        }
        if self.ramp_up > RAMP_UP_MAX {
            return Err(LimitsError::RampTooLong);
        }
        Ok(())
    }
}

fn check_rate(rate: Option<Rate>, field: &'static str) -> Result<(), LimitsError> {
    match rate {
        None => Ok(()),
        Some(r) if r.count == 0 => Err(LimitsError::Zero { field }),
        Some(r) if r.per.is_zero() || r.per > RATE_PER_MAX => {
            Err(LimitsError::BadInterval { field })
        }
        Some(_) => Ok(()),
    }
}

/// The retry delay for the `attempt`-th retry (0-based) of a schedule; the
/// last entry repeats.
pub fn retry_delay(schedule: &[Duration], attempt: u32) -> Duration {
    let index = usize::try_from(attempt).unwrap_or(usize::MAX);
    schedule
        .get(index)
        .or_else(|| schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert_eq!(QueueLimits::default().validate(), Ok(()));
        let mut l = QueueLimits::default();
        l.backoff.max_smtp_out = 0;
        assert_eq!(
            l.validate(),
            Err(LimitsError::Zero {
                field: "backoff_max_smtp_out"
            })
        );
        let mut l = QueueLimits::default();
        l.normal.max_msg_rate = Some(Rate::new(10, Duration::ZERO));
        assert_eq!(
            l.validate(),
            Err(LimitsError::BadInterval {
                field: "max_msg_rate"
            })
        );
        let l = QueueLimits {
            max_rcpt_per_transaction: RCPT_PER_GRANT_MAX + 1,
            ..QueueLimits::default()
        };
        assert_eq!(l.validate(), Err(LimitsError::TooManyRcpt));
    }

    #[test]
    fn retry_schedule_repeats_last_entry() {
        let s = [Duration::from_secs(1), Duration::from_secs(2)];
        assert_eq!(retry_delay(&s, 0), Duration::from_secs(1));
        assert_eq!(retry_delay(&s, 1), Duration::from_secs(2));
        assert_eq!(retry_delay(&s, 50), Duration::from_secs(2));
    }

    #[test]
    fn rate_interval() {
        assert_eq!(
            Rate::new(1000, Duration::from_secs(3600)).interval_ns(),
            3_600_000_000
        );
        assert!((Rate::new(60, Duration::from_secs(60)).per_hour() - 3600.0).abs() < 1e-9);
    }
}
