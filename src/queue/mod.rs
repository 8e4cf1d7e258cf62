//! Per-(destination, vMTA) queues of recipients and their retry timers.
//!
//! A shard owns every queue of the vMTAs routed to it ([`crate::runtime::shard_for_vmta`]).
//! A queue is named `domain/vmta`; with `mx_rollup` the destination part is
//! the MX rollup key of the domain (see [`crate::delivery::route::rollup_key`])
//! so every domain hosted by the same provider shares one queue per vMTA.
//!
//! Recipients that are ready wait in their queue's `ready` list; deferred
//! ones wait in the shard's [`timer::TimerWheel`] until their retry time, so
//! a queue with nothing due costs no CPU. Entries are 16 bytes (message id
//! and recipient index): envelopes and bodies stay in the spool's mapped
//! segments and are decoded only when a transaction is built.
//!
//! [`moves`] decides which messages may move to another vMTA (operator
//! reroute, pool evacuation after `disable_source_ip`) and takes them out
//! of the queues; `delivery::relocate` rewrites and hands them over.

pub mod engine;
pub mod moves;
pub mod policy;
pub mod timer;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::config::DomainPolicy;
use crate::shaper::RateController;
use crate::spool::MessageId;
use crate::spool::MessageRef;

/// One recipient of one message, by RCPT index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    pub message: MessageId,
    pub index: u32,
}

/// What the shard keeps about a message with live recipients.
#[derive(Debug)]
pub struct MessageEntry {
    pub message: MessageRef,
    /// Recipients not yet final.
    pub pending: u32,
    /// Per recipient, in RCPT order (one allocation per message: this is
    /// most of the heap a queued recipient costs).
    pub rcpts: Box<[RcptSlot]>,
}

/// What the shard tracks per recipient of a queued message.
#[derive(Debug, Clone, Copy)]
pub struct RcptSlot {
    /// The last recorded state, for compaction's rewrite. Recipients already
    /// final when the message was recovered show as `Delivered` (recovery
    /// hands over live recipients only).
    pub state: crate::spool::RecipientState,
    /// Delivery attempts so far.
    pub attempts: u16,
    /// A NOTIFY=DELAY notice was sent for this recipient (this run).
    pub delay_notified: bool,
}

/// Hour-bucketed outcome counts for `spate ctl queues`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecentCounts {
    pub hour_start_ms: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub deferred: u64,
    pub prev_delivered: u64,
    pub prev_bounced: u64,
    pub prev_deferred: u64,
}

impl RecentCounts {
    fn roll(&mut self, now_ms: u64) {
        const HOUR_MS: u64 = 3_600_000;
        if now_ms >= self.hour_start_ms + HOUR_MS {
            let skipped = (now_ms - self.hour_start_ms) / HOUR_MS;
            if skipped == 1 {
                self.prev_delivered = self.delivered;
                self.prev_bounced = self.bounced;
                self.prev_deferred = self.deferred;
            } else {
                self.prev_delivered = 0;
                self.prev_bounced = 0;
                self.prev_deferred = 0;
            }
            self.delivered = 0;
            self.bounced = 0;
            self.deferred = 0;
            self.hour_start_ms = now_ms - (now_ms - self.hour_start_ms) % HOUR_MS;
        }
    }

    /// Adds an outcome at `now_ms`.
    pub fn add(&mut self, now_ms: u64, delivered: u64, bounced: u64, deferred: u64) {
        self.roll(now_ms);
        self.delivered += delivered;
        self.bounced += bounced;
        self.deferred += deferred;
    }

    /// Approximate counts over the last hour: this bucket plus the
    /// unexpired share of the previous one.
    pub fn last_hour(&mut self, now_ms: u64) -> (u64, u64, u64) {
        self.roll(now_ms);
        let elapsed = now_ms.saturating_sub(self.hour_start_ms).min(3_600_000);
        let share = |prev: u64| prev * (3_600_000 - elapsed) / 3_600_000;
        (
            self.delivered + share(self.prev_delivered),
            self.bounced + share(self.prev_bounced),
            self.deferred + share(self.prev_deferred),
        )
    }
}

/// One queue: a destination through one vMTA.
#[derive(Debug)]
pub struct Queue {
    /// `destination/vmta`.
    pub name: String,
    /// The domain used for routing (for a rollup queue, the first domain
    /// seen; all share the same MX hosts).
    pub domain: String,
    pub vmta: String,
    pub ready: VecDeque<Recipient>,
    /// Recipients of this queue waiting in the retry timer.
    pub deferred: u64,
    pub controller: RateController,
    pub policy: Arc<DomainPolicy>,
    /// Connections open (or opening) for this queue.
    pub connections: u32,
    /// Of those, connections idle and waiting for work.
    pub idle: u32,
    /// Wakes this queue's idle connections (new work, a pause, a mode
    /// change, shutdown); only this queue's, so one message does not wake
    /// every idle connection of the shard.
    pub work: std::rc::Rc<crate::runtime::local::LocalNotify>,
    /// Recipients taken by a transaction and not yet settled.
    pub in_flight: u32,
    /// In the shard's list of queues to look at.
    pub scheduled: bool,
    /// A wake-up already sits in the timer for this time.
    pub wake_at_ms: Option<u64>,
    pub recent: RecentCounts,
    /// The last reply that deferred or bounced something, for the operator.
    pub last_error: Option<String>,
    /// When this queue should next be attempted (retry or rate limit).
    pub next_attempt_ms: Option<u64>,
    /// A pool evacuation (source IP disabled) is running for this queue.
    pub evacuating: bool,
    /// No new evacuation before this time (bounds the rescans, see
    /// [`moves::EVACUATE_INTERVAL_MS`]).
    pub evacuate_after_ms: u64,
}

/// The queue name for a destination and a vMTA.
pub fn queue_name(destination: &str, vmta: &str) -> String {
    format!("{destination}/{vmta}")
}

/// The destination part of a vMTA's overflow queue: once a shard holds
/// [`engine::QUEUES_PER_SHARD_MAX`] queues, recipients of new destinations
/// share `overflow/<vmta>`. Its recipients have different domains, so each
/// of its connections serves one domain ([`domain_of`]).
pub const OVERFLOW_DESTINATION: &str = "overflow";

/// Whether `queue` is an overflow queue.
pub fn is_overflow(queue: &str) -> bool {
    split_queue_name(queue).is_some_and(|(d, _)| d == OVERFLOW_DESTINATION)
}

/// The domain (lowercase) of a queued recipient, from its message's
/// envelope; `None` when the message or recipient is gone.
pub fn domain_of(messages: &HashMap<MessageId, MessageEntry>, rcpt: &Recipient) -> Option<String> {
    let entry = messages.get(&rcpt.message)?;
    let envelope = entry.message.envelope().ok()?;
    let forward_path = envelope.recipients().nth(rcpt.index as usize)?.forward_path;
    Some(recipient_domain(forward_path))
}

/// Splits `domain/vmta`.
pub fn split_queue_name(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('/')
}

/// The destination domain of a spooled forward path, lowercase: the part
/// after the last `@`, or "" when there is none.
pub fn recipient_domain(forward_path: &str) -> String {
    forward_path
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase()
}

/// The name of the existing queue a recipient is served by now: its
/// domain's destination (the rollup key once known) through the message's
/// vMTA, or that vMTA's overflow queue. `None` when neither exists.
pub fn current_queue_name(
    messages: &HashMap<MessageId, MessageEntry>,
    rollup: &HashMap<String, String>,
    queues: &HashMap<String, Queue>,
    rcpt: &Recipient,
) -> Option<String> {
    let entry = messages.get(&rcpt.message)?;
    let envelope = entry.message.envelope().ok()?;
    let forward_path = envelope.recipients().nth(rcpt.index as usize)?.forward_path;
    serving_queue_name(rollup, queues, envelope.vmta, forward_path)
}

/// [`current_queue_name`] for a recipient whose envelope is already decoded.
pub fn serving_queue_name(
    rollup: &HashMap<String, String>,
    queues: &HashMap<String, Queue>,
    vmta: &str,
    forward_path: &str,
) -> Option<String> {
    let domain = recipient_domain(forward_path);
    let destination = rollup.get(&domain).map_or(domain.as_str(), String::as_str);
    let name = queue_name(destination, vmta);
    if queues.contains_key(&name) {
        return Some(name);
    }
    let overflow = queue_name(OVERFLOW_DESTINATION, vmta);
    queues.contains_key(&overflow).then_some(overflow)
}

/// Whether `selector` (`domain/vmta`, `domain/*`, `*/vmta` or `*/*`)
/// selects the queue `name`.
pub fn selector_matches(selector: &str, name: &str) -> bool {
    let (Some((sd, sv)), Some((d, v))) = (split_queue_name(selector), split_queue_name(name))
    else {
        return false;
    };
    (sd == "*" || sd.eq_ignore_ascii_case(d)) && (sv == "*" || sv == v)
}

/// All queues and messages of one shard.
#[derive(Debug, Default)]
pub struct ShardQueues {
    pub messages: HashMap<MessageId, MessageEntry>,
    pub queues: HashMap<String, Queue>,
    pub timer: timer::TimerWheel<TimerItem>,
    /// Queues to look at, in order.
    pub dirty: VecDeque<String>,
    /// Domain → rollup destination, for `mx_rollup` domains already resolved.
    pub rollup: HashMap<String, String>,
    /// Messages being rewritten by compaction or a move right now.
    pub rewriting: std::collections::HashSet<MessageId>,
    /// Operator pauses by selector (`domain/vmta`, `domain/*`, `*/vmta`):
    /// a queue created later that matches one starts paused, so a pause
    /// holds for mail that has not arrived yet. Kept in memory only.
    pub paused_selectors: Vec<String>,
    /// Moves waiting for in-flight recipients of a message to settle.
    pub pending_moves: HashMap<MessageId, moves::MoveTarget>,
}

/// What the shard's timer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerItem {
    /// A deferred recipient is due for another attempt.
    Retry(Recipient),
    /// A queue's rate limit, backoff or defer ends: look at it again.
    Wake(String),
}

impl ShardQueues {
    /// Remembers an operator pause so queues created later start paused.
    pub fn pause_selector(&mut self, selector: &str) {
        if !self.paused_selectors.iter().any(|s| s == selector) {
            self.paused_selectors.push(selector.to_string());
        }
    }

    /// Forgets the pauses a resume of `selector` lifts: the same selector,
    /// and every selector it covers (`*/*` lifts them all, `a.test/*` lifts
    /// `a.test/v1`).
    pub fn resume_selector(&mut self, selector: &str) {
        self.paused_selectors
            .retain(|s| s != selector && !selector_matches(selector, s));
    }

    /// Whether a new queue named `name` starts paused.
    pub fn starts_paused(&self, name: &str) -> bool {
        self.paused_selectors
            .iter()
            .any(|s| selector_matches(s, name))
    }

    /// Marks a queue for the scheduler.
    pub fn mark(&mut self, name: &str) {
        if let Some(q) = self.queues.get_mut(name)
            && !q.scheduled
        {
            q.scheduled = true;
            self.dirty.push_back(name.to_string());
        }
    }

    /// Recipients waiting (ready or deferred) across all queues.
    pub fn queued_recipients(&self) -> u64 {
        self.queues
            .values()
            .map(|q| q.ready.len() as u64 + q.deferred + u64::from(q.in_flight))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_hold_later_queues_until_a_covering_resume() {
        let mut s = ShardQueues::default();
        s.pause_selector("a.test/*");
        s.pause_selector("*/ip2");
        s.pause_selector("*/ip2");
        assert_eq!(s.paused_selectors.len(), 2);
        assert!(s.starts_paused("a.test/ip1"));
        assert!(s.starts_paused("b.test/ip2"));
        assert!(!s.starts_paused("b.test/ip1"));
        // A narrower resume does not lift a wider pause.
        s.resume_selector("a.test/ip1");
        assert!(s.starts_paused("a.test/ip1"));
        s.resume_selector("a.test/*");
        assert!(!s.starts_paused("a.test/ip1"));
        assert!(s.starts_paused("b.test/ip2"));
        s.resume_selector("*/*");
        assert!(s.paused_selectors.is_empty());
    }

    #[test]
    fn selectors() {
        assert!(selector_matches("gmail.com/ip1", "gmail.com/ip1"));
        assert!(selector_matches("GMAIL.com/ip1", "gmail.com/ip1"));
        assert!(selector_matches("gmail.com/*", "gmail.com/ip2"));
        assert!(selector_matches("*/ip2", "yahoo.com/ip2"));
        assert!(selector_matches("*/*", "yahoo.com/ip2"));
        assert!(!selector_matches("*/ip1", "yahoo.com/ip2"));
        assert!(!selector_matches("gmail.com", "gmail.com/ip1"));
    }

    #[test]
    fn recipient_domains() {
        assert_eq!(recipient_domain("a@Gmail.COM"), "gmail.com");
        assert_eq!(recipient_domain("\"x@y\"@b.example"), "b.example");
        assert_eq!(recipient_domain("postmaster"), "");
    }

    #[test]
    fn recent_counts_roll_over_hours() {
        let mut r = RecentCounts::default();
        r.add(0, 10, 1, 2);
        assert_eq!(r.last_hour(1000), (10, 1, 2));
        r.add(3_600_000, 4, 0, 0);
        // Right at the start of the second hour the previous one counts fully.
        assert_eq!(r.last_hour(3_600_000), (14, 1, 2));
        assert_eq!(r.last_hour(5_400_000), (9, 0, 1));
        assert_eq!(r.last_hour(3 * 3_600_000 + 1), (0, 0, 0));
    }
}
