//! What the rate controller tells its callers: answers to "may I?" questions,
//! the outcome of a reply, mode-change records and the snapshot shown by
//! `spate ctl queues`. Plain data; the logic is in `controller.rs`.

use std::time::Duration;

use super::pattern::{BounceCategory, Classification};

/// Longest reply text kept in a mode-change record.
pub const REASON_REPLY_BYTES_MAX: usize = 512;

/// Mode changes kept per queue (oldest dropped first).
pub const MODE_HISTORY_MAX: usize = 8;

/// The queue's delivery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Backoff,
}

impl Mode {
    /// "normal" or "backoff", as shown by `spate ctl queues`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Backoff => "backoff",
        }
    }
}

/// Why the mode changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeCause {
    /// A reply matched a `mode = ...` rule.
    Reply {
        /// Pattern list name.
        list: String,
        /// Index of the rule in that list.
        rule_index: usize,
        /// The rule's regular expression.
        pattern: String,
        /// The reply text, truncated to [`REASON_REPLY_BYTES_MAX`].
        reply: String,
    },
    /// `backoff_to_normal_after` elapsed since the last backoff reply.
    BackoffExpired,
    /// A recipient granted during Backoff was delivered
    /// (`backoff_to_normal_after_delivery`).
    Delivered,
    /// `spate ctl mode`.
    Operator,
}

impl std::fmt::Display for ModeCause {
    /// One line for the "backoff reason" column of `spate ctl queues`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModeCause::Reply {
                list,
                rule_index,
                pattern,
                reply,
            } => {
                let first_line = reply.lines().next().unwrap_or("");
                write!(f, "{list}[{rule_index}] /{pattern}/: {first_line}")
            }
            ModeCause::BackoffExpired => f.write_str("backoff_to_normal_after elapsed"),
            ModeCause::Delivered => f.write_str("delivered during backoff"),
            ModeCause::Operator => f.write_str("set by operator"),
        }
    }
}

/// One recorded mode change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChange {
    pub at_ms: u64,
    pub from: Mode,
    pub to: Mode,
    pub cause: ModeCause,
}

/// Why the caller must wait, and until when it is worth asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A rate limit (messages or connections); ask again at `until_ms`.
    RateLimited { until_ms: u64 },
    /// A `defer_queue` rule matched; nothing before `until_ms`.
    Deferred { until_ms: u64 },
    /// A `disable_source_ip` rule matched; this vMTA sends nothing to this
    /// destination before `until_ms`.
    SourceIpDisabled { until_ms: u64 },
    /// `max_smtp_out` connections are open; ask again when one closes.
    ConnectionLimit,
    /// Paused by the operator; ask again after `resume`.
    Paused,
}

impl Wait {
    /// The time to ask again, if the wait ends by itself.
    pub fn until_ms(&self) -> Option<u64> {
        match *self {
            Wait::RateLimited { until_ms }
            | Wait::Deferred { until_ms }
            | Wait::SourceIpDisabled { until_ms } => Some(until_ms),
            Wait::ConnectionLimit | Wait::Paused => None,
        }
    }
}

/// Permission to attempt `recipients` recipients in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub recipients: u32,
    /// When the grant was made; pass it back to `on_delivered`.
    pub granted_at_ms: u64,
}

/// What a reply means for the queue; the queue layer executes the parts the
/// controller cannot (moving messages, bouncing, accounting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyOutcome {
    /// The pattern list's verdict (rule, actions, scope, throttle flag).
    pub classification: Classification,
    /// The mode change this reply caused, if any.
    pub mode_change: Option<ModeChange>,
    /// Set when the reply disabled this vMTA for this destination: stop its
    /// connections, and if the messages came through a pool, move them to the
    /// pool's other vMTAs. The controller refuses work until this time.
    pub disable_source_ip_until_ms: Option<u64>,
    /// Set when the reply deferred the whole queue until this time.
    pub deferred_until_ms: Option<u64>,
    /// The bounce category to record if the recipient bounces.
    pub bounce_category: Option<BounceCategory>,
}

/// Monotonic counters; they survive reloads and mode changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub connections_opened: u64,
    pub recipients_granted: u64,
    pub delivered: u64,
    pub transient_replies: u64,
    pub permanent_replies: u64,
    pub per_recipient_throttles: u64,
    pub backoff_entries: u64,
    pub mode_changes: u64,
    pub source_ip_disables: u64,
    pub queue_defers: u64,
}

/// The limits in force at one instant (after mode and ramp).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffectiveLimits {
    pub max_smtp_out: u32,
    /// Recipients per hour; `None` = unlimited.
    pub msg_rate_per_hour: Option<f64>,
    /// Connections per hour; `None` = unlimited.
    pub connect_rate_per_hour: Option<f64>,
    pub max_msg_per_connection: u32,
    pub max_rcpt_per_transaction: u32,
    /// First retry delay of the schedule in force.
    pub retry_after: Duration,
}

/// Everything `spate ctl queues` shows about a controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub mode: Mode,
    /// The mode was set by the operator and is sticky (manual Backoff).
    pub manual: bool,
    /// When the current mode began.
    pub since_ms: u64,
    /// The change that led to the current mode (`None` if never changed).
    pub reason: Option<ModeChange>,
    pub paused: bool,
    pub deferred_until_ms: Option<u64>,
    pub disabled_until_ms: Option<u64>,
    /// `(start, end)` of the ramp from Backoff to Normal, while it runs.
    pub ramp_ms: Option<(u64, u64)>,
    pub effective: EffectiveLimits,
    pub active_connections: u32,
    pub counters: Counters,
    /// Earliest time a timer-driven change happens (see `next_wakeup_ms`).
    pub next_wakeup_ms: Option<u64>,
}

/// Truncates `reply` to at most `REASON_REPLY_BYTES_MAX` bytes on a char boundary.
pub(crate) fn truncated_reply(reply: &str) -> String {
    let mut end = reply.len().min(REASON_REPLY_BYTES_MAX);
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    reply.get(..end).unwrap_or("").to_owned()
}
