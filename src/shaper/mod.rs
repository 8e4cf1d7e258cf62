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
//! # How the queue layer drives a controller
//!
//! ```text
//! RateController::new(now, limits, Arc<PatternList>)      one per queue, on its shard
//! no idle connection to the queue and work waiting?
//!     try_open_connection(now) -> Ok | Err(Wait)          Ok counts it open
//! per transaction on a connection:
//!     connection_should_close(now, msgs_sent_on_it)?      QUIT if true
//!     try_send_recipients(now, ready) -> Ok(Grant) | Err(Wait)
//!     per outcome: on_delivered(now, grant.granted_at_ms, n)
//!                  on_reply(now, reply_text) -> ReplyOutcome   (4xx/5xx)
//! on_connection_closed(now)                               every opened one, once
//! next_wakeup_ms()                                        timer for Backoff/defer/disable ends
//! set_mode / pause / resume / snapshot / reconfigure      control plane and reload
//! ```
//!
//! A `Wait` says until when (`until_ms`) or for what (a connection to close,
//! an operator resume). A `ReplyOutcome` with `disable_source_ip_until_ms`
//! asks the queue layer to stop this vMTA for this destination and move
//! pooled messages to the pool's other vMTAs.
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
    is_per_recipient_throttle, parse_bounce_category,
};
pub use profiles::{BUILTIN_NAMES, ProfileError, builtin, builtin_source, parse_profile};
pub use report::{
    Counters, EffectiveLimits, Grant, Mode, ModeCause, ModeChange, ReplyOutcome, Snapshot, Wait,
};
