//! Moving queued messages to another vMTA: the bookkeeping half, without I/O.
//!
//! Two features move messages between vMTAs: the operator's reroute
//! (`spate ctl reroute`) and the evacuation of a queue whose source IP a
//! `disable_source_ip` rule stopped (pooled messages go to the pool's other
//! members). This file decides what may move, takes its recipients out of
//! the shard's queues (or puts them back), computes the states the new copy
//! carries, picks a pool member, and keeps the process-wide table of
//! disabled (destination, vMTA) pairs. `delivery::relocate` does the spool
//! rewrite and the hand-off to the shard owning the new vMTA.
//!
//! The vMTA belongs to the message, so a message moves whole: every live
//! recipient goes with it (for a pool evacuation, its recipients of other
//! domains too; any member of the pool was an acceptable choice for them).
//! A message moves only when all its live recipients are *waiting* (in a
//! ready list or the retry timer) and no rewrite of it runs. One with
//! recipients in flight is remembered in `ShardQueues::pending_moves` and
//! moved once they settle, so no recipient is sent twice or lost.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::{MessageEntry, Recipient, ShardQueues, TimerItem, serving_queue_name};
use crate::spool::{MessageId, RecipientState};

/// Least time between two evacuation scans of one queue: each scan decodes
/// the envelope of every message of the shard, and a disabled queue keeps
/// receiving new pooled mail.
pub const EVACUATE_INTERVAL_MS: u64 = 1_000;
/// Messages rewritten concurrently by one move (one group commit carries
/// them; bounds the memory held by a large reroute at once).
pub const MOVE_BATCH_MESSAGES: usize = 256;
/// Entries in the disabled-source table; past it, expired entries are
/// dropped and then new ones ignored (a pool pick may then choose a
/// disabled member, which only delays those messages).
pub const SOURCE_DISABLES_MAX: usize = 100_000;

/// Where a waiting message should go once it can move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveTarget {
    /// The operator's reroute to this vMTA.
    Vmta(String),
    /// Away from the vMTA of this (source-disabled) queue, to another
    /// member of the message's pool (chosen when it moves).
    PoolAway { queue: String },
}

/// The recipients of one message taken out of the queues for a move.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    pub id: MessageId,
    /// Ready recipients with the queue they waited in.
    pub ready: Vec<(String, Recipient)>,
    /// Deferred recipients with their due time (monotonic ms) and queue.
    pub timed: Vec<(u64, Recipient, String)>,
}

impl Taken {
    /// Nothing taken yet of message `id`.
    pub fn new(id: MessageId) -> Self {
        Taken {
            id,
            ready: Vec::new(),
            timed: Vec::new(),
        }
    }

    /// Recipients taken.
    pub fn len(&self) -> usize {
        self.ready.len() + self.timed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Messages with a live recipient served by a queue matching `selector`
/// (waiting or in flight), in no particular order.
pub fn messages_matching(state: &ShardQueues, selector: &str) -> Vec<MessageId> {
    let mut out = Vec::new();
    for (id, entry) in &state.messages {
        let Ok(env) = entry.message.envelope() else {
            continue;
        };
        let hit = env.recipients().enumerate().any(|(i, r)| {
            entry.rcpts.get(i).is_some_and(|s| !s.state.is_final())
                && serving_queue_name(&state.rollup, &state.queues, env.vmta, r.forward_path)
                    .is_some_and(|q| super::selector_matches(selector, &q))
        });
        if hit {
            out.push(*id);
        }
    }
    out
}

/// Splits `ids` into the messages that can move now (every live recipient
/// waiting, no rewrite running) and the busy ones (recipients in flight or
/// a rewrite running). Unknown ids are in neither.
pub fn movable(state: &ShardQueues, ids: &[MessageId]) -> (HashSet<MessageId>, Vec<MessageId>) {
    let wanted: HashSet<MessageId> = ids.iter().copied().collect();
    let mut waiting: HashMap<MessageId, u32> = HashMap::new();
    let mut count = |r: &Recipient| {
        if wanted.contains(&r.message) {
            *waiting.entry(r.message).or_default() += 1;
        }
    };
    for q in state.queues.values() {
        q.ready.iter().for_each(&mut count);
    }
    for (_, item) in state.timer.iter() {
        if let TimerItem::Retry(r) = item {
            count(r);
        }
    }
    let mut ok = HashSet::new();
    let mut busy = Vec::new();
    for id in wanted {
        let Some(entry) = state.messages.get(&id) else {
            continue;
        };
        let w = waiting.get(&id).copied().unwrap_or(0);
        if w == entry.pending && !state.rewriting.contains(&id) {
            ok.insert(id);
        } else {
            busy.push(id);
        }
    }
    (ok, busy)
}

/// Takes every waiting recipient of the messages in `ids` out of the ready
/// lists and the timer (keeping the queues' counters right).
pub fn take_waiting(state: &mut ShardQueues, ids: &HashSet<MessageId>) -> Vec<Taken> {
    let mut by_id: HashMap<MessageId, Taken> =
        ids.iter().map(|id| (*id, Taken::new(*id))).collect();
    for q in state.queues.values_mut() {
        if !q.ready.iter().any(|r| ids.contains(&r.message)) {
            continue;
        }
        let name = q.name.clone();
        q.ready.retain(|r| {
            if !ids.contains(&r.message) {
                return true;
            }
            if let Some(t) = by_id.get_mut(&r.message) {
                t.ready.push((name.clone(), *r));
            }
            false
        });
    }
    let timed = state.timer.extract_due_if(|item| match item {
        TimerItem::Retry(r) => ids.contains(&r.message),
        TimerItem::Wake(_) => false,
    });
    for (due, item) in timed {
        let TimerItem::Retry(r) = item else { continue };
        let queue = super::current_queue_name(&state.messages, &state.rollup, &state.queues, &r)
            .unwrap_or_default();
        if let Some(q) = state.queues.get_mut(&queue) {
            q.deferred = q.deferred.saturating_sub(1);
        }
        if let Some(t) = by_id.get_mut(&r.message) {
            t.timed.push((due, r, queue));
        }
    }
    by_id.into_values().filter(|t| !t.is_empty()).collect()
}

/// Undoes [`take_waiting`] for one message (its rewrite failed): ready
/// recipients go back to their queues, deferred ones to the timer at their
/// old due time.
pub fn put_back(state: &mut ShardQueues, taken: Taken) {
    for (queue, r) in taken.ready {
        if let Some(q) = state.queues.get_mut(&queue) {
            q.ready.push_back(r);
        }
        state.mark(&queue);
    }
    for (due, r, queue) in taken.timed {
        state.timer.insert(due, TimerItem::Retry(r));
        if let Some(q) = state.queues.get_mut(&queue) {
            q.deferred += 1;
        }
    }
}

/// The states the moved copy carries: every recipient's last state, final
/// ones unchanged; a taken deferred recipient keeps its attempt count and
/// becomes due at `now_unix_s` (it is tried at once on its new vMTA).
/// Returns all states (RCPT order) and the live recipients for the new owner.
pub fn moved_states(
    entry: &MessageEntry,
    taken: &Taken,
    now_unix_s: u64,
) -> (Vec<RecipientState>, Vec<(u32, RecipientState)>) {
    let mut all: Vec<RecipientState> = entry.rcpts.iter().map(|s| s.state).collect();
    let mut live: Vec<(u32, RecipientState)> = Vec::with_capacity(taken.len());
    let rcpts = taken
        .ready
        .iter()
        .map(|(_, r)| r)
        .chain(taken.timed.iter().map(|(_, r, _)| r));
    for r in rcpts {
        let Some(slot) = entry.rcpts.get(r.index as usize) else {
            continue;
        };
        // A recipient recorded final but still live in memory (its state
        // record did not commit) is still owed a delivery: it goes as live.
        let state = if slot.attempts > 0 {
            RecipientState::Deferred {
                attempts: crate::spool::record::pack_deferred_attempts(
                    u32::from(slot.attempts),
                    slot.delay_notified,
                ),
                next_attempt_unix_s: now_unix_s,
            }
        } else {
            RecipientState::Queued
        };
        if let Some(s) = all.get_mut(r.index as usize) {
            *s = state;
        }
        live.push((r.index, state));
    }
    live.sort_by_key(|(i, _)| *i);
    live.dedup_by_key(|(i, _)| *i);
    (all, live)
}

/// Picks one of `members` (name, weight) with probability proportional to
/// its weight; `roll` is a random number. `None` when no weight is positive.
pub fn pick_weighted<'a>(members: &[(&'a str, u32)], roll: u64) -> Option<&'a str> {
    let total: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut at = roll % total;
    for (name, w) in members {
        let w = u64::from(*w);
        if at < w {
            return Some(name);
        }
        at -= w;
    }
    None
}

/// Process-wide table of (destination, vMTA) pairs stopped by a
/// `disable_source_ip` rule, so a shard evacuating a queue does not pick a
/// pool member another shard found disabled for the same destination.
/// Written on a disable, read on a move: never on the delivery path.
#[derive(Debug, Default)]
pub struct SourceDisables {
    until_ms: Mutex<HashMap<(String, String), u64>>,
}

impl SourceDisables {
    /// Records that `vmta` sends nothing to `destination` before `until_ms`
    /// (monotonic ms, [`crate::runtime::local::now_ms`]).
    pub fn disable(&self, destination: &str, vmta: &str, until_ms: u64, now_ms: u64) {
        let mut map = self.until_ms.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SOURCE_DISABLES_MAX {
            map.retain(|_, t| *t > now_ms);
        }
        let key = (destination.to_ascii_lowercase(), vmta.to_string());
        if map.len() < SOURCE_DISABLES_MAX || map.contains_key(&key) {
            let t = map.entry(key).or_insert(until_ms);
            *t = (*t).max(until_ms);
        }
    }

    /// True while `vmta` is disabled for `destination`.
    pub fn is_disabled(&self, destination: &str, vmta: &str, now_ms: u64) -> bool {
        let map = self.until_ms.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(destination.to_ascii_lowercase(), vmta.to_string()))
            .is_some_and(|t| *t > now_ms)
    }
}

#[cfg(test)]
#[path = "moves_tests.rs"]
mod tests;
