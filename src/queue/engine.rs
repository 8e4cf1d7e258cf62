//! The shard's delivery scheduler.
//!
//! One [`Engine`] per shard owns that shard's [`ShardQueues`]. Messages
//! arrive through [`Engine::enqueue`] (from the local session, another
//! shard's handoff, recovery or a generated DSN); the scheduler task wakes
//! when something changes or the timer says a retry or a rate limit is due,
//! and opens connections where the queue's rate controller allows. The
//! connections themselves live in [`crate::delivery::worker`].
//!
//! Every borrow of the shared state is short and never held across an
//! `.await`: the state is only touched between I/O operations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::policy::{empty_pattern_list, pattern_lists, queue_limits};
use super::{MessageEntry, Queue, RecentCounts, Recipient, ShardQueues, TimerItem, queue_name};
use crate::accounting::AccountingSink;
use crate::config::Config;
use crate::dns::DnsClient;
use crate::runtime::local::{LocalNotify, mono_ms_for_unix, now_ms};
use crate::runtime::stats::Stats;
use crate::shaper::{PatternList, RateController, Snapshot};
use crate::spool::{MessageRef, RecipientState, Spool};

/// Queues one shard may hold before new queues share an overflow name
/// (bounds memory and metric label cardinality per shard).
pub const QUEUES_PER_SHARD_MAX: usize = 100_000;
/// Connections one scheduler pass may open for one queue.
const CONNECTIONS_PER_PASS_MAX: u32 = 64;

/// What the engine needs from its shard.
pub struct EngineDeps {
    pub shard: usize,
    pub config: Rc<RefCell<Arc<Config>>>,
    pub spool: Rc<Spool>,
    pub dns: DnsClient,
    pub accounting: Option<AccountingSink>,
    pub stats: Arc<Stats>,
    pub tls: compio::tls::TlsConnector,
    /// The mesh to hand moved messages to the shard owning their new vMTA;
    /// `None` (tests, one shard) keeps them on this shard.
    pub mesh: Option<crate::runtime::mesh::MeshSender<crate::runtime::server::ShardMsg>>,
    /// (destination, vMTA) pairs stopped by `disable_source_ip`, shared by
    /// every shard so a pool evacuation skips members disabled elsewhere.
    pub source_disables: Arc<super::moves::SourceDisables>,
}

/// A queue's state for the control plane.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueView {
    pub queue: String,
    pub domain: String,
    pub vmta: String,
    pub mode: String,
    pub backoff_reason: Option<String>,
    pub mode_since_unix: u64,
    pub paused: bool,
    pub queued: u64,
    pub deferred: u64,
    pub in_flight: u64,
    pub connections: u32,
    pub delivered_last_hour: u64,
    pub bounced_last_hour: u64,
    pub deferred_last_hour: u64,
    pub next_attempt_unix: Option<u64>,
    pub last_error: Option<String>,
}

/// The delivery side of one shard.
pub struct Engine {
    pub deps: EngineDeps,
    pub state: RefCell<ShardQueues>,
    patterns: RefCell<HashMap<String, Arc<PatternList>>>,
    /// Wakes the scheduler.
    pub wake: LocalNotify,
    pub rng: RefCell<StdRng>,
    shutting_down: std::cell::Cell<bool>,
    /// Queues this shard may hold before new destinations share the
    /// overflow queue ([`QUEUES_PER_SHARD_MAX`]; tests lower it).
    queues_max: std::cell::Cell<usize>,
}

impl Engine {
    pub fn new(deps: EngineDeps) -> Rc<Self> {
        let patterns = pattern_lists(&deps.config.borrow());
        let seed = (deps.shard as u64) ^ crate::runtime::local::unix_now_s();
        Rc::new(Engine {
            deps,
            state: RefCell::new(ShardQueues::default()),
            patterns: RefCell::new(patterns),
            wake: LocalNotify::default(),
            rng: RefCell::new(StdRng::seed_from_u64(seed)),
            shutting_down: std::cell::Cell::new(false),
            queues_max: std::cell::Cell::new(QUEUES_PER_SHARD_MAX),
        })
    }

    /// Lowers the queue limit, so tests reach the overflow queue.
    #[cfg(test)]
    pub(crate) fn set_queues_max(&self, n: usize) {
        self.queues_max.set(n);
    }

    pub fn config(&self) -> Arc<Config> {
        self.deps.config.borrow().clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Stops opening connections; open ones finish their transaction and quit.
    pub fn begin_shutdown(&self) {
        self.shutting_down.set(true);
        self.wake.notify_all();
        for q in self.state.borrow().queues.values() {
            q.work.notify_all();
        }
    }

    fn patterns_for(&self, name: Option<&str>) -> Arc<PatternList> {
        match name {
            Some(n) => self
                .patterns
                .borrow()
                .get(n)
                .cloned()
                .unwrap_or_else(empty_pattern_list),
            None => empty_pattern_list(),
        }
    }

    /// The destination part of the queue name for a recipient domain.
    fn destination(&self, state: &ShardQueues, domain: &str) -> String {
        state
            .rollup
            .get(domain)
            .cloned()
            .unwrap_or_else(|| domain.to_string())
    }

    /// Finds or creates the queue for (domain, vmta) and returns its name.
    fn queue_for(&self, state: &mut ShardQueues, domain: &str, vmta: &str) -> String {
        let destination = self.destination(state, domain);
        let mut name = queue_name(&destination, vmta);
        if !state.queues.contains_key(&name) {
            if state.queues.len() >= self.queues_max.get() {
                name = queue_name(super::OVERFLOW_DESTINATION, vmta);
                if state.queues.contains_key(&name) {
                    return name;
                }
            }
            let config = self.config();
            let policy = config.domain_policy(domain, vmta);
            let patterns = self.patterns_for(policy.smtp_pattern_list.as_deref());
            let limits = queue_limits(&policy);
            let now = now_ms();
            let mut controller = match RateController::new(now, limits, patterns.clone()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(queue = %name, error = %e, "queue limits invalid; using defaults");
                    RateController::new(now, Default::default(), patterns)
                        .expect("default queue limits are valid")
                }
            };
            if state.starts_paused(&name) {
                controller.pause();
            }
            state.queues.insert(
                name.clone(),
                Queue {
                    name: name.clone(),
                    domain: domain.to_string(),
                    vmta: vmta.to_string(),
                    ready: Default::default(),
                    deferred: 0,
                    controller,
                    policy,
                    connections: 0,
                    idle: 0,
                    work: Default::default(),
                    in_flight: 0,
                    scheduled: false,
                    wake_at_ms: None,
                    recent: RecentCounts {
                        hour_start_ms: now,
                        ..Default::default()
                    },
                    last_error: None,
                    next_attempt_ms: None,
                    evacuating: false,
                    evacuate_after_ms: 0,
                },
            );
        }
        name
    }

    /// Takes a message into this shard's queues. `states` gives live
    /// recipients with their state (recovery); `None` means every recipient
    /// is new and ready.
    pub fn enqueue(&self, message: MessageRef, states: Option<&[(u32, RecipientState)]>) {
        let Ok(envelope) = message.envelope() else {
            tracing::error!(id = %message.id(), "spooled message unreadable; skipped");
            return;
        };
        let vmta = envelope.vmta.to_string();
        let count = envelope.recipient_count as usize;
        let domains: Vec<String> = envelope
            .recipients()
            .map(|r| super::recipient_domain(r.forward_path))
            .collect();
        let id = message.id();
        let initial = if states.is_some() {
            RecipientState::Delivered
        } else {
            RecipientState::Queued
        };
        let mut slots = vec![
            super::RcptSlot {
                state: initial,
                attempts: 0,
                delay_notified: false
            };
            count
        ]
        .into_boxed_slice();
        let live: Vec<(u32, RecipientState)> = match states {
            Some(s) => s.to_vec(),
            None => (0..count as u32)
                .map(|i| (i, RecipientState::Queued))
                .collect(),
        };
        let mut state = self.state.borrow_mut();
        let mut pending = 0;
        for (index, rs) in &live {
            let Some(domain) = domains.get(*index as usize) else {
                continue;
            };
            if let Some(slot) = slots.get_mut(*index as usize) {
                slot.state = *rs;
            }
            let name = self.queue_for(&mut state, domain, &vmta);
            let rcpt = Recipient {
                message: id,
                index: *index,
            };
            pending += 1;
            match rs {
                RecipientState::Deferred {
                    attempts: a,
                    next_attempt_unix_s,
                } => {
                    if let Some(slot) = slots.get_mut(*index as usize) {
                        let (a, notified) = crate::spool::record::deferred_attempts(*a);
                        slot.attempts = a.min(u32::from(u16::MAX)) as u16;
                        slot.delay_notified = notified;
                    }
                    let due = mono_ms_for_unix(*next_attempt_unix_s);
                    state.timer.insert(due, TimerItem::Retry(rcpt));
                    if let Some(q) = state.queues.get_mut(&name) {
                        q.deferred += 1;
                    }
                }
                _ => {
                    if let Some(q) = state.queues.get_mut(&name) {
                        q.ready.push_back(rcpt);
                        if q.idle > 0 {
                            // Now, not after the scheduler's next pass.
                            q.work.notify_all();
                        }
                    }
                    state.mark(&name);
                }
            }
        }
        if pending > 0 {
            state.messages.insert(
                id,
                MessageEntry {
                    message,
                    pending,
                    rcpts: slots,
                },
            );
            self.deps
                .stats
                .queued_messages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.deps
                .stats
                .queued_recipients
                .fetch_add(pending as i64, std::sync::atomic::Ordering::Relaxed);
        }
        drop(state);
        self.wake.notify_all();
    }

    /// Puts a recipient back on its queue's timer.
    pub fn defer_recipient(
        &self,
        state: &mut ShardQueues,
        queue: &str,
        rcpt: Recipient,
        due_ms: u64,
    ) {
        state.timer.insert(due_ms, TimerItem::Retry(rcpt));
        if let Some(q) = state.queues.get_mut(queue) {
            q.deferred += 1;
            q.next_attempt_ms = Some(q.next_attempt_ms.map_or(due_ms, |t| t.min(due_ms)));
        }
    }

    /// Forgets a recipient that reached a final state.
    pub fn settle_recipient(&self, state: &mut ShardQueues, rcpt: Recipient) {
        let mut remove = false;
        if let Some(m) = state.messages.get_mut(&rcpt.message) {
            m.pending = m.pending.saturating_sub(1);
            remove = m.pending == 0;
        }
        self.deps
            .stats
            .queued_recipients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if remove {
            state.messages.remove(&rcpt.message);
            state.pending_moves.remove(&rcpt.message);
            self.deps
                .stats
                .queued_messages
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The queue a recipient belongs to now.
    pub fn queue_of(&self, state: &mut ShardQueues, rcpt: Recipient) -> Option<String> {
        let entry = state.messages.get(&rcpt.message)?;
        let envelope = entry.message.envelope().ok()?;
        let vmta = envelope.vmta.to_string();
        let domain =
            super::recipient_domain(envelope.recipients().nth(rcpt.index as usize)?.forward_path);
        Some(self.queue_for(state, &domain, &vmta))
    }

    /// The scheduler: runs until shutdown.
    pub async fn run_scheduler(self: Rc<Self>) {
        let mut due = Vec::new();
        while !self.is_shutting_down() {
            let now = now_ms();
            due.clear();
            let deadline = {
                let mut state = self.state.borrow_mut();
                state.timer.advance(now, &mut due);
                for item in due.drain(..) {
                    match item {
                        TimerItem::Retry(rcpt) => {
                            if let Some(name) = self.queue_of(&mut state, rcpt) {
                                if let Some(q) = state.queues.get_mut(&name) {
                                    q.deferred = q.deferred.saturating_sub(1);
                                    q.ready.push_back(rcpt);
                                }
                                state.mark(&name);
                            }
                        }
                        TimerItem::Wake(name) => {
                            if let Some(q) = state.queues.get_mut(&name) {
                                q.wake_at_ms = None;
                            }
                            state.mark(&name);
                        }
                    }
                }
                let mut passes = state.dirty.len();
                while passes > 0 {
                    passes -= 1;
                    let Some(name) = state.dirty.pop_front() else {
                        break;
                    };
                    self.service_queue(&mut state, &name, now);
                }
                state.timer.next_deadline()
            };
            let sleep_ms = deadline.map(|d| d.saturating_sub(now_ms()).max(1));
            match sleep_ms {
                Some(ms) => {
                    let _ = compio::time::timeout(Duration::from_millis(ms), self.wake.notified())
                        .await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Opens connections for a queue as far as its controller allows.
    fn service_queue(self: &Rc<Self>, state: &mut ShardQueues, name: &str, now: u64) {
        let Some(q) = state.queues.get_mut(name) else {
            return;
        };
        q.scheduled = false;
        if q.idle > 0 {
            // They take the new work, or close if the queue was paused,
            // blocked or limited meanwhile.
            q.work.notify_all();
        }
        if q.ready.is_empty() {
            return;
        }
        if q.idle > 0 {
            // An idle connection will pick the work up.
            return;
        }
        let mut opened = 0;
        // Each connection takes at least one message; don't open more
        // connections than there are recipients waiting.
        while opened < CONNECTIONS_PER_PASS_MAX && (q.connections as usize) < q.ready.len() {
            match q.controller.try_open_connection(now) {
                Ok(()) => {
                    q.connections += 1;
                    opened += 1;
                    self.deps.stats.connections_out_open();
                    let engine = self.clone();
                    let queue = name.to_string();
                    compio::runtime::spawn(crate::delivery::worker::run_connection(engine, queue))
                        .detach();
                }
                Err(wait) => {
                    if matches!(wait, crate::shaper::Wait::RateLimited { .. }) {
                        self.deps
                            .stats
                            .rate_limit_waits
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Pooled mail waiting here (new arrivals, retries come
                    // due) goes to the pool's other members.
                    if let crate::shaper::Wait::SourceIpDisabled { until_ms } = wait
                        && let Some(at) =
                            crate::delivery::relocate::source_disabled(self, q, until_ms, now)
                        && q.wake_at_ms.is_none_or(|t| t > at)
                    {
                        q.wake_at_ms = Some(at);
                        state.timer.insert(at, TimerItem::Wake(name.to_string()));
                    }
                    if let Some(until) = wait.until_ms() {
                        q.next_attempt_ms = Some(until);
                        if q.wake_at_ms.is_none_or(|t| t > until) {
                            q.wake_at_ms = Some(until);
                            state.timer.insert(until, TimerItem::Wake(name.to_string()));
                        }
                    }
                    break;
                }
            }
        }
    }

    /// Applies a control-plane action to every queue matching `selector`.
    pub fn for_queues(&self, selector: &str, mut f: impl FnMut(&mut Queue, u64)) -> usize {
        let now = now_ms();
        let mut state = self.state.borrow_mut();
        let names: Vec<String> = state
            .queues
            .keys()
            .filter(|n| super::selector_matches(selector, n))
            .cloned()
            .collect();
        for n in &names {
            if let Some(q) = state.queues.get_mut(n) {
                f(q, now);
            }
            state.mark(n);
        }
        drop(state);
        self.wake.notify_all();
        names.len()
    }

    /// Snapshots of every queue on this shard.
    pub fn views(&self) -> Vec<QueueView> {
        let now = now_ms();
        let mut state = self.state.borrow_mut();
        state
            .queues
            .values_mut()
            .map(|q| {
                let snap: Snapshot = q.controller.snapshot(now);
                let (d, b, t) = q.recent.last_hour(now);
                let since = crate::runtime::local::unix_now_s()
                    .saturating_sub(now.saturating_sub(snap.since_ms) / 1000);
                QueueView {
                    queue: q.name.clone(),
                    domain: q.domain.clone(),
                    vmta: q.vmta.clone(),
                    mode: snap.mode.as_str().to_string(),
                    backoff_reason: snap.reason.as_ref().map(|c| c.cause.to_string()),
                    mode_since_unix: since,
                    paused: snap.paused,
                    queued: q.ready.len() as u64,
                    deferred: q.deferred,
                    in_flight: u64::from(q.in_flight),
                    connections: q.connections,
                    delivered_last_hour: d,
                    bounced_last_hour: b,
                    deferred_last_hour: t,
                    next_attempt_unix: q
                        .next_attempt_ms
                        .filter(|t| *t > now)
                        .map(crate::runtime::local::unix_for_mono_ms),
                    last_error: q.last_error.clone(),
                }
            })
            .collect()
    }

    /// A new configuration: queues keep their counters and mode, and take
    /// the new limits and pattern lists.
    pub fn reconfigure(&self) {
        let config = self.config();
        *self.patterns.borrow_mut() = pattern_lists(&config);
        let now = now_ms();
        let mut state = self.state.borrow_mut();
        let names: Vec<String> = state.queues.keys().cloned().collect();
        for name in names {
            let Some(q) = state.queues.get_mut(&name) else {
                continue;
            };
            let policy = config.domain_policy(&q.domain, &q.vmta);
            let patterns = self.patterns_for(policy.smtp_pattern_list.as_deref());
            if let Err(e) = q
                .controller
                .reconfigure(now, queue_limits(&policy), patterns)
            {
                tracing::warn!(queue = %name, error = %e, "new limits refused; old ones kept");
            }
            q.policy = policy;
            state.mark(&name);
        }
        drop(state);
        self.wake.notify_all();
    }
}
