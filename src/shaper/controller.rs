//! The rate controller of one queue (`domain/vmta`): a pure state machine.
//!
//! Every call takes `now_ms` (a monotonic clock in milliseconds, owned by the
//! caller) and answers or records; nothing here reads a clock, sleeps or does
//! I/O, so tests drive hours of traffic in milliseconds. The controller owns:
//! the concurrency and rate limits, Normal/Backoff mode and its timers, the
//! ramp back to Normal, `defer_queue`, `disable_source_ip`, operator pause and
//! mode, and counters. The queue layer owns recipients, retries, moving
//! messages and timers; it asks `next_wakeup_ms` when to call back.
//!
//! Ramp shape: linear in rate (recipients per hour) and in `max_smtp_out`,
//! from the Backoff limits to the Normal ones over `ramp_up`. Linear because
//! providers judge volume over sliding windows, so a constant slope shows them
//! no step at any instant. If the Normal rate is unlimited there is no rate to
//! interpolate towards; only `max_smtp_out` ramps then.

use std::collections::VecDeque;
use std::sync::Arc;

use super::gcra::Gcra;
use super::limits::{LimitsError, QueueLimits, RCPT_PER_GRANT_MAX, Rate, retry_delay};
use super::pattern::{ModeAction, PatternList};
use super::report::{
    Counters, EffectiveLimits, Grant, MODE_HISTORY_MAX, Mode, ModeCause, ModeChange, ReplyOutcome,
    Snapshot, Wait, truncated_reply,
};

const NS_PER_MS: u64 = 1_000_000;
const NS_PER_HOUR: f64 = 3.6e12;

/// Rate controller for one queue. See the module comment.
#[derive(Debug, Clone)]
pub struct RateController {
    limits: QueueLimits,
    patterns: Arc<PatternList>,
    mode: Mode,
    manual: bool,
    mode_since_ms: u64,
    /// Last backoff-matching reply (the `backoff_to_normal_after` clock).
    backoff_trigger_ms: u64,
    ramp_start_ms: Option<u64>,
    paused: bool,
    deferred_until_ms: Option<u64>,
    disabled_until_ms: Option<u64>,
    active_connections: u32,
    msg_limiter: Gcra,
    connect_limiter: Gcra,
    counters: Counters,
    history: VecDeque<ModeChange>,
}

/// A rate turned into GCRA parameters at one instant.
#[derive(Debug, Clone, Copy)]
struct Pace {
    interval_ns: u64,
    burst: u32,
}

impl Pace {
    /// Burst: one second's worth of events, at least 1. Small enough that an
    /// hour's total is off by at most one second of traffic, large enough that
    /// fast queues fill whole transactions.
    fn from_per_hour(per_hour: f64) -> Self {
        let per_hour = per_hour.max(1e-9);
        let interval_ns = (NS_PER_HOUR / per_hour).clamp(1.0, u64::MAX as f64) as u64;
        let burst = ((per_hour / 3600.0).floor() as u32).clamp(1, RCPT_PER_GRANT_MAX);
        Pace { interval_ns, burst }
    }
}

impl RateController {
    /// A controller in Normal mode with fresh counters.
    pub fn new(
        now_ms: u64,
        limits: QueueLimits,
        patterns: Arc<PatternList>,
    ) -> Result<Self, LimitsError> {
        limits.validate()?;
        Ok(RateController {
            limits,
            patterns,
            mode: Mode::Normal,
            manual: false,
            mode_since_ms: now_ms,
            backoff_trigger_ms: now_ms,
            ramp_start_ms: None,
            paused: false,
            deferred_until_ms: None,
            disabled_until_ms: None,
            active_connections: 0,
            msg_limiter: Gcra::default(),
            connect_limiter: Gcra::default(),
            counters: Counters::default(),
            history: VecDeque::with_capacity(MODE_HISTORY_MAX),
        })
    }

    /// Replaces limits and pattern list on reload, keeping mode, timers,
    /// connections and counters. Invalid limits leave everything unchanged.
    pub fn reconfigure(
        &mut self,
        now_ms: u64,
        limits: QueueLimits,
        patterns: Arc<PatternList>,
    ) -> Result<(), LimitsError> {
        limits.validate()?;
        self.limits = limits;
        self.patterns = patterns;
        self.advance(now_ms);
        self.clamp_limiters(now_ms);
        Ok(())
    }

    /// The configured limits.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// The counters (also in the snapshot).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Asks to open one connection now. On `Ok` the connection counts as open
    /// (call `on_connection_closed` when it ends, even if connecting failed).
    /// Refused at `max_smtp_out` (wait for a close), by `max_connect_rate`,
    /// and while the message rate has no recipient to give. The caller asks
    /// only when none of its connections to this queue is idle (connecting
    /// or waiting for a grant): an idle one will take the next recipient, and
    /// asking anyway would open connections that have nothing to send.
    pub fn try_open_connection(&mut self, now_ms: u64) -> Result<(), Wait> {
        self.advance(now_ms);
        self.blocked()?;
        let effective = self.effective_at(now_ms);
        if self.active_connections >= effective.max_smtp_out {
            return Err(Wait::ConnectionLimit);
        }
        let now_ns = now_ms.saturating_mul(NS_PER_MS);
        // Open only when a recipient could be sent now: a connection opened
        // with nothing to send idles and closes, costing the peer a connection.
        if let Some(per_hour) = effective.msg_rate_per_hour {
            let pace = Pace::from_per_hour(per_hour);
            if self
                .msg_limiter
                .available(now_ns, pace.interval_ns, pace.burst)
                == 0
            {
                let at_ns =
                    self.msg_limiter
                        .next_conforming_ns(now_ns, pace.interval_ns, pace.burst);
                return Err(Wait::RateLimited {
                    until_ms: ceil_ms(at_ns).max(now_ms + 1),
                });
            }
        }
        if let Some(per_hour) = effective.connect_rate_per_hour {
            let pace = Pace::from_per_hour(per_hour);
            if self
                .connect_limiter
                .available(now_ns, pace.interval_ns, pace.burst)
                == 0
            {
                let at_ns =
                    self.connect_limiter
                        .next_conforming_ns(now_ns, pace.interval_ns, pace.burst);
                return Err(Wait::RateLimited {
                    until_ms: ceil_ms(at_ns),
                });
            }
            self.connect_limiter.take(now_ns, pace.interval_ns, 1);
        }
        self.active_connections += 1;
        self.counters.connections_opened += 1;
        Ok(())
    }

    /// A connection counted by `try_open_connection` has ended.
    pub fn on_connection_closed(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.active_connections = self.active_connections.saturating_sub(1);
    }

    /// Asks to attempt up to `wanted` recipients in one transaction now.
    /// Grants at most `max_rcpt_per_transaction` and what the rate allows;
    /// granted recipients count against the rate whether or not they succeed.
    pub fn try_send_recipients(&mut self, now_ms: u64, wanted: u32) -> Result<Grant, Wait> {
        self.advance(now_ms);
        self.blocked()?;
        let effective = self.effective_at(now_ms);
        let mut count = wanted.min(effective.max_rcpt_per_transaction);
        let now_ns = now_ms.saturating_mul(NS_PER_MS);
        if let (Some(per_hour), true) = (effective.msg_rate_per_hour, count > 0) {
            let pace = Pace::from_per_hour(per_hour);
            count = count.min(
                self.msg_limiter
                    .available(now_ns, pace.interval_ns, pace.burst),
            );
            if count == 0 {
                let at_ns =
                    self.msg_limiter
                        .next_conforming_ns(now_ns, pace.interval_ns, pace.burst);
                return Err(Wait::RateLimited {
                    until_ms: ceil_ms(at_ns),
                });
            }
            self.msg_limiter.take(now_ns, pace.interval_ns, count);
        }
        self.counters.recipients_granted += u64::from(count);
        Ok(Grant {
            recipients: count,
            granted_at_ms: now_ms,
        })
    }

    /// True if a connection that has carried `messages_sent` messages should
    /// QUIT now: per-connection cap reached, more connections open than the
    /// mode allows (after entering Backoff), or the queue is paused,
    /// deferred or disabled.
    pub fn connection_should_close(&mut self, now_ms: u64, messages_sent: u32) -> bool {
        self.advance(now_ms);
        messages_sent >= self.limits.max_msg_per_connection
            || self.active_connections > self.effective_at(now_ms).max_smtp_out
            || self.blocked().is_err()
    }

    /// Records a non-success reply (4xx/5xx) and applies its pattern rule.
    pub fn on_reply(&mut self, now_ms: u64, reply: &str) -> ReplyOutcome {
        self.advance(now_ms);
        let classification = self.patterns.classify(reply);
        match reply.trim_start().as_bytes().first() {
            Some(b'4') => self.counters.transient_replies += 1,
            Some(b'5') => self.counters.permanent_replies += 1,
            _ => {}
        }
        if classification.per_recipient_throttle {
            self.counters.per_recipient_throttles += 1;
        }
        let actions = classification.actions;
        let mut outcome = ReplyOutcome {
            classification,
            mode_change: None,
            disable_source_ip_until_ms: None,
            deferred_until_ms: None,
            bounce_category: actions.bounce_category,
        };
        let cause = |list: &PatternList| {
            let rule_index = classification.rule_index.unwrap_or(0);
            ModeCause::Reply {
                list: list.name().to_owned(),
                rule_index,
                pattern: list.rule_source(rule_index).unwrap_or("").to_owned(),
                reply: truncated_reply(reply),
            }
        };
        match actions.mode {
            Some(ModeAction::Backoff) => {
                self.backoff_trigger_ms = now_ms;
                if self.mode == Mode::Normal {
                    let why = cause(&self.patterns);
                    outcome.mode_change = Some(self.change_mode(now_ms, Mode::Backoff, why));
                }
            }
            Some(ModeAction::Normal) if self.mode == Mode::Backoff && !self.manual => {
                let why = cause(&self.patterns);
                outcome.mode_change = Some(self.change_mode(now_ms, Mode::Normal, why));
            }
            _ => {}
        }
        if actions.defer_queue {
            let until = now_ms.saturating_add(ms(self.retry_delay(0)));
            self.deferred_until_ms = Some(self.deferred_until_ms.map_or(until, |t| t.max(until)));
            self.counters.queue_defers += 1;
            outcome.deferred_until_ms = self.deferred_until_ms;
        }
        if let Some(after) = actions.disable_source_ip {
            let until = now_ms.saturating_add(ms(after));
            self.disabled_until_ms = Some(self.disabled_until_ms.map_or(until, |t| t.max(until)));
            self.counters.source_ip_disables += 1;
            outcome.disable_source_ip_until_ms = self.disabled_until_ms;
        }
        outcome
    }

    /// Records `recipients` delivered from a grant made at `granted_at_ms`.
    /// Ends Backoff (if configured) only for grants made during the current
    /// Backoff, so transactions begun before the throttle cannot cancel it.
    pub fn on_delivered(&mut self, now_ms: u64, granted_at_ms: u64, recipients: u32) {
        self.advance(now_ms);
        self.counters.delivered += u64::from(recipients);
        if self.mode == Mode::Backoff
            && !self.manual
            && self.limits.backoff_to_normal_after_delivery
            && granted_at_ms >= self.mode_since_ms
            && recipients > 0
        {
            self.change_mode(now_ms, Mode::Normal, ModeCause::Delivered);
        }
    }

    /// Operator override (`spate ctl mode`). Backoff set this way is sticky:
    /// timers, deliveries and `normal` rules do not end it; only the operator
    /// does. Normal set this way clears it (and ramps, like any exit).
    pub fn set_mode(&mut self, now_ms: u64, mode: Mode) -> Option<ModeChange> {
        self.advance(now_ms);
        self.manual = mode == Mode::Backoff;
        if mode == Mode::Backoff {
            self.backoff_trigger_ms = now_ms;
        }
        (mode != self.mode).then(|| self.change_mode(now_ms, mode, ModeCause::Operator))
    }

    /// Operator pause: no new connections or transactions until `resume`.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Operator resume.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Retry delay for the `attempt`-th retry (0-based) in the current mode.
    pub fn retry_delay(&self, attempt: u32) -> std::time::Duration {
        match self.mode {
            Mode::Normal => retry_delay(&self.limits.normal.retry_after, attempt),
            Mode::Backoff => retry_delay(&self.limits.backoff.retry_after, attempt),
        }
    }

    /// Earliest future time at which something changes by itself (backoff
    /// ends, defer or disable ends, ramp step); the queue layer sets a timer.
    /// During a ramp this is the ramp's end; ask `try_*` earlier as usual.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        let backoff_end = match (self.mode, self.manual, self.limits.backoff_to_normal_after) {
            (Mode::Backoff, false, Some(after)) => {
                Some(self.backoff_trigger_ms.saturating_add(ms(after)))
            }
            _ => None,
        };
        let ramp_end = self
            .ramp_start_ms
            .map(|s| s.saturating_add(ms(self.limits.ramp_up)));
        [
            backoff_end,
            ramp_end,
            self.deferred_until_ms,
            self.disabled_until_ms,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The last recorded mode changes, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &ModeChange> {
        self.history.iter()
    }

    /// Everything `spate ctl queues` shows.
    pub fn snapshot(&mut self, now_ms: u64) -> Snapshot {
        self.advance(now_ms);
        Snapshot {
            mode: self.mode,
            manual: self.manual,
            since_ms: self.mode_since_ms,
            reason: self.history.back().cloned(),
            paused: self.paused,
            deferred_until_ms: self.deferred_until_ms,
            disabled_until_ms: self.disabled_until_ms,
            ramp_ms: self
                .ramp_start_ms
                .map(|s| (s, s.saturating_add(ms(self.limits.ramp_up)))),
            effective: self.effective_at(now_ms),
            active_connections: self.active_connections,
            counters: self.counters,
            next_wakeup_ms: self.next_wakeup_ms(),
        }
    }

    /// The limits in force at `now_ms` (mode and ramp applied). Call after
    /// `advance` so expired timers are already applied.
    pub fn effective_at(&self, now_ms: u64) -> EffectiveLimits {
        let (normal, backoff) = (&self.limits.normal, &self.limits.backoff);
        let per_hour = |r: Option<Rate>| r.map(|r| r.per_hour());
        let mut effective = EffectiveLimits {
            max_smtp_out: normal.max_smtp_out,
            msg_rate_per_hour: per_hour(normal.max_msg_rate),
            connect_rate_per_hour: per_hour(normal.max_connect_rate),
            max_msg_per_connection: self.limits.max_msg_per_connection,
            max_rcpt_per_transaction: self.limits.max_rcpt_per_transaction,
            retry_after: self.retry_delay(0),
        };
        match (self.mode, self.ramp_fraction(now_ms)) {
            (Mode::Backoff, _) => {
                effective.max_smtp_out = backoff.max_smtp_out;
                effective.msg_rate_per_hour = per_hour(backoff.max_msg_rate);
                effective.connect_rate_per_hour = per_hour(backoff.max_connect_rate);
            }
            (Mode::Normal, Some(f)) => {
                effective.max_smtp_out = lerp_count(backoff.max_smtp_out, normal.max_smtp_out, f);
                effective.msg_rate_per_hour =
                    lerp_rate(backoff.max_msg_rate, normal.max_msg_rate, f);
            }
            (Mode::Normal, None) => {}
        }
        effective
    }

    /// Progress of the ramp in [0, 1), or `None` if no ramp is running.
    fn ramp_fraction(&self, now_ms: u64) -> Option<f64> {
        let start = self.ramp_start_ms?;
        let ramp_ms = ms(self.limits.ramp_up);
        let elapsed = now_ms.saturating_sub(start);
        (elapsed < ramp_ms).then(|| elapsed as f64 / ramp_ms as f64)
    }

    /// Applies what time alone changes: backoff expiry, end of defer, disable
    /// and ramp.
    fn advance(&mut self, now_ms: u64) {
        if let (Mode::Backoff, false, Some(after)) =
            (self.mode, self.manual, self.limits.backoff_to_normal_after)
        {
            let end = self.backoff_trigger_ms.saturating_add(ms(after));
            if now_ms >= end {
                self.change_mode(end, Mode::Normal, ModeCause::BackoffExpired);
            }
        }
        if self.deferred_until_ms.is_some_and(|t| now_ms >= t) {
            self.deferred_until_ms = None;
        }
        if self.disabled_until_ms.is_some_and(|t| now_ms >= t) {
            self.disabled_until_ms = None;
        }
        if self.ramp_start_ms.is_some() && self.ramp_fraction(now_ms).is_none() {
            self.ramp_start_ms = None;
        }
    }

    fn blocked(&self) -> Result<(), Wait> {
        if self.paused {
            return Err(Wait::Paused);
        }
        if let Some(until_ms) = self.disabled_until_ms {
            return Err(Wait::SourceIpDisabled { until_ms });
        }
        if let Some(until_ms) = self.deferred_until_ms {
            return Err(Wait::Deferred { until_ms });
        }
        Ok(())
    }

    fn change_mode(&mut self, at_ms: u64, to: Mode, cause: ModeCause) -> ModeChange {
        let change = ModeChange {
            at_ms,
            from: self.mode,
            to,
            cause,
        };
        self.counters.mode_changes += 1;
        self.mode = to;
        self.mode_since_ms = at_ms;
        match to {
            Mode::Backoff => {
                self.ramp_start_ms = None;
                self.counters.backoff_entries += 1;
            }
            Mode::Normal => {
                self.manual = false;
                self.ramp_start_ms = (!self.limits.ramp_up.is_zero()).then_some(at_ms);
            }
        }
        self.clamp_limiters(at_ms);
        if self.history.len() == MODE_HISTORY_MAX {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        change
    }

    /// Keeps limiter debt within one interval of the new pace, so a long
    /// Backoff interval does not delay the first event after a change.
    fn clamp_limiters(&mut self, now_ms: u64) {
        let now_ns = now_ms.saturating_mul(NS_PER_MS);
        let effective = self.effective_at(now_ms);
        if let Some(per_hour) = effective.msg_rate_per_hour {
            self.msg_limiter
                .clamp_debt(now_ns, Pace::from_per_hour(per_hour).interval_ns);
        }
        if let Some(per_hour) = effective.connect_rate_per_hour {
            self.connect_limiter
                .clamp_debt(now_ns, Pace::from_per_hour(per_hour).interval_ns);
        }
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ceil_ms(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_MS)
}

fn lerp_count(from: u32, to: u32, f: f64) -> u32 {
    if to <= from {
        return to;
    }
    from + ((f64::from(to - from)) * f).floor() as u32
}

/// Linear from the Backoff rate to the Normal rate; an unlimited Normal rate
/// has nothing to interpolate towards and applies at once (only connections
/// ramp then); an unlimited Backoff rate means Backoff never slowed the rate.
fn lerp_rate(from: Option<Rate>, to: Option<Rate>, f: f64) -> Option<f64> {
    match (from, to) {
        (Some(a), Some(b)) if a.per_hour() < b.per_hour() => {
            Some(a.per_hour() + (b.per_hour() - a.per_hour()) * f)
        }
        (_, to) => to.map(|r| r.per_hour()),
    }
}
