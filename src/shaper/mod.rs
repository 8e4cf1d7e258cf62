//! Traffic shaping: one rate controller per queue (`domain/vmta`) with
//! automatic Normal/Backoff modes, SMTP pattern lists and the shipped ISP
//! profiles.
//!
//! Everything here is pure: no sockets, no clock reads, no randomness. Time
//! comes in as `now_ms` (a monotonic clock in milliseconds owned by the
//! shard), so [`sim`] can run hours of traffic in milliseconds. The queue
//! layer asks the controller before opening a connection or starting a
//! transaction, reports what happened, and executes the actions it gets back
//! (moving messages off a disabled vMTA, bouncing with a category).
//!
//! | file | owns |
//! | --- | --- |
//! | `limits.rs` | input types: [`Rate`], [`ModeLimits`], [`QueueLimits`] |
//! | `gcra.rs` | the smooth rate limiter |
//! | `pattern.rs` | [`PatternList`]: reply rules, actions, per-recipient throttle recognition |
//! | `profiles.rs` | built-in "gmail", "yahoo", "microsoft" lists ([`builtin`]) |
//! | `controller.rs` | [`RateController`]: limits, modes, ramp, defer, disable, overrides |
//! | `report.rs` | what the controller answers: [`Wait`], [`Grant`], [`ReplyOutcome`], [`Snapshot`] |
//! | `sim.rs` | a deterministic simulated destination for tests and the benchmark |

pub mod controller;
pub mod gcra;
pub mod limits;
pub mod pattern;
pub mod profiles;
pub mod report;
pub mod sim;

pub use controller::RateController;
pub use limits::{LimitsError, ModeLimits, QueueLimits, RAMP_UP_DEFAULT, Rate};
pub use pattern::{
    Actions, BounceCategory, Classification, ModeAction, PatternError, PatternList, Scope,
    is_per_recipient_throttle,
};
pub use profiles::{BUILTIN_NAMES, ProfileError, builtin, builtin_source, parse_profile};
pub use report::{
    Counters, EffectiveLimits, Grant, Mode, ModeCause, ModeChange, ReplyOutcome, Snapshot, Wait,
};
