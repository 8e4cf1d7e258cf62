//! Moving queued messages to another vMTA: the spool rewrite and the
//! hand-off between shards. What may move, and the bookkeeping, is
//! [`crate::queue::moves`].
//!
//! Two callers: the operator's reroute ([`reroute`], `spate ctl reroute`)
//! and the evacuation of a queue whose source IP a `disable_source_ip`
//! rule stopped ([`source_disabled`] → [`evacuate`]): pooled messages go
//! to another member of their pool, picked by weight among the members
//! not disabled for that destination; messages sent to a vMTA directly,
//! and pooled ones with no usable member left, stay and wait.
//!
//! One move, on the shard owning the message:
//! 1. take its waiting recipients out of the queues (a message with
//!    recipients in flight is not touched: it is remembered and moved when
//!    they settle, from [`super::outcome`]);
//! 2. rewrite it in the spool with the new vMTA and every recipient's state
//!    (a new copy plus a tombstone for the old one, one commit): durable
//!    first, so a crash after this point recovers it on the new vMTA, and a
//!    crash before it on the old one; nothing was sent meanwhile, so there
//!    is nothing to duplicate;
//! 3. forget it here and hand the new copy with its live recipients to the
//!    shard owning the new vMTA over the mesh (as a recovered message).
//!
//! If the rewrite fails the recipients go back where they were.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use rand::Rng;

use crate::queue::engine::Engine;
use crate::queue::moves::{self, MoveTarget, Taken};
use crate::queue::{Queue, split_queue_name};
use crate::runtime::local::{now_ms, unix_now_s};
use crate::runtime::server::ShardMsg;
use crate::spool::{MessageId, MessageRef, RecipientState, RecoveredMessage};

/// What a move did, summed over shards by the admin API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MoveReport {
    /// Messages rewritten onto their new vMTA and handed over.
    pub moved_messages: u64,
    /// Their recipients still to deliver.
    pub moved_recipients: u64,
    /// Messages with recipients in flight: they move when those settle.
    pub pending_messages: u64,
    /// Messages left where they were (no usable pool member, or the spool
    /// rewrite failed).
    pub stayed_messages: u64,
}

impl MoveReport {
    /// Adds another shard's report.
    pub fn add(&mut self, other: &MoveReport) {
        self.moved_messages += other.moved_messages;
        self.moved_recipients += other.moved_recipients;
        self.pending_messages += other.pending_messages;
        self.stayed_messages += other.stayed_messages;
    }
}

/// Moves every message of this shard with a live recipient in a queue
/// matching `selector` to `vmta` (the operator's reroute). The caller
/// checked that `vmta` is configured. Messages already on `vmta` stay.
pub async fn reroute(engine: &Rc<Engine>, selector: &str, vmta: &str) -> MoveReport {
    let targets: Vec<(MessageId, String)> = {
        let state = engine.state.borrow();
        moves::messages_matching(&state, selector)
            .into_iter()
            .filter(|id| {
                state
                    .messages
                    .get(id)
                    .and_then(|e| e.message.envelope().ok().map(|env| env.vmta != vmta))
                    .unwrap_or(false)
            })
            .map(|id| (id, vmta.to_string()))
            .collect()
    };
    let report = move_messages(engine, targets, &MoveTarget::Vmta(vmta.to_string())).await;
    if report != MoveReport::default() {
        tracing::info!(
            shard = engine.deps.shard,
            %selector,
            %vmta,
            moved = report.moved_messages,
            recipients = report.moved_recipients,
            pending = report.pending_messages,
            stayed = report.stayed_messages,
            "operator reroute"
        );
    }
    report
}

/// Called when `q`'s controller reports its source IP disabled until
/// `until_ms`: records it for every shard and starts an evacuation of the
/// queue's pooled messages unless one runs or ran less than
/// [`moves::EVACUATE_INTERVAL_MS`] ago. Returns when the queue should be
/// looked at again for a deferred evacuation, if one was deferred.
pub fn source_disabled(engine: &Rc<Engine>, q: &mut Queue, until_ms: u64, now: u64) -> Option<u64> {
    let disables = &engine.deps.source_disables;
    if let Some((destination, _)) = split_queue_name(&q.name) {
        disables.disable(destination, &q.vmta, until_ms, now);
    }
    disables.disable(&q.domain, &q.vmta, until_ms, now);
    if q.evacuating || now < q.evacuate_after_ms {
        let again = if q.evacuating {
            now + moves::EVACUATE_INTERVAL_MS
        } else {
            q.evacuate_after_ms
        };
        return Some(again.min(until_ms));
    }
    q.evacuating = true;
    q.evacuate_after_ms = now + moves::EVACUATE_INTERVAL_MS;
    let engine = engine.clone();
    let queue = q.name.clone();
    compio::runtime::spawn(async move {
        let report = evacuate(&engine, &queue).await;
        // Only what moved is news; mail that stays is rescanned often.
        if report.moved_messages + report.pending_messages > 0 {
            tracing::info!(
                %queue,
                moved = report.moved_messages,
                recipients = report.moved_recipients,
                pending = report.pending_messages,
                stayed = report.stayed_messages,
                "source IP disabled: pooled messages moved to other pool members"
            );
        }
        if let Some(q) = engine.state.borrow_mut().queues.get_mut(&queue) {
            q.evacuating = false;
        }
    })
    .detach();
    None
}

/// Moves the pooled messages of `queue` (source-disabled) to other members
/// of their pools.
pub async fn evacuate(engine: &Rc<Engine>, queue: &str) -> MoveReport {
    let ids = moves::messages_matching(&engine.state.borrow(), queue);
    let (targets, stayed) = pool_targets(engine, queue, &ids);
    let pending = MoveTarget::PoolAway {
        queue: queue.to_string(),
    };
    let mut report = move_messages(engine, targets, &pending).await;
    report.stayed_messages += stayed;
    report
}

/// A move that waited for in-flight recipients of `id`: tries it again now
/// (called when recipients of that message settle).
pub async fn retry_pending(engine: &Rc<Engine>, id: MessageId) {
    let target = engine.state.borrow().pending_moves.get(&id).cloned();
    match target {
        None => {}
        Some(t @ MoveTarget::Vmta(_)) => {
            let MoveTarget::Vmta(vmta) = &t else { return };
            move_messages(engine, vec![(id, vmta.clone())], &t).await;
        }
        Some(t @ MoveTarget::PoolAway { .. }) => {
            let MoveTarget::PoolAway { queue } = &t else {
                return;
            };
            let still_disabled = split_queue_name(queue).is_some_and(|(destination, vmta)| {
                engine
                    .deps
                    .source_disables
                    .is_disabled(destination, vmta, now_ms())
            });
            let (targets, _) = if still_disabled {
                pool_targets(engine, queue, &[id])
            } else {
                (Vec::new(), 0)
            };
            if targets.is_empty() {
                engine.state.borrow_mut().pending_moves.remove(&id);
                return;
            }
            move_messages(engine, targets, &t).await;
        }
    }
}

/// For each message of `ids` still on `queue`'s vMTA and submitted to a
/// pool: another member, weighted, among those configured and not
/// disabled for the queue's destination. Returns the moves and the number
/// of pooled messages with no member left.
fn pool_targets(
    engine: &Engine,
    queue: &str,
    ids: &[MessageId],
) -> (Vec<(MessageId, String)>, u64) {
    let Some((destination, vmta)) = split_queue_name(queue) else {
        return (Vec::new(), 0);
    };
    let config = engine.config();
    let now = now_ms();
    let disables = &engine.deps.source_disables;
    let state = engine.state.borrow();
    let domain = state
        .queues
        .get(queue)
        .map_or(destination, |q| q.domain.as_str());
    let usable = |m: &str| {
        m != vmta
            && config.vmta(m).is_some()
            && !disables.is_disabled(destination, m, now)
            && !disables.is_disabled(domain, m, now)
    };
    let mut rng = engine.rng.borrow_mut();
    let mut targets = Vec::new();
    let mut stayed = 0;
    for id in ids {
        let Some(env) = state
            .messages
            .get(id)
            .and_then(|e| e.message.envelope().ok())
        else {
            continue;
        };
        if env.vmta != vmta || env.vmta_or_pool == env.vmta {
            continue;
        }
        let Some(pool) = config.pool(env.vmta_or_pool) else {
            continue;
        };
        let members: Vec<(&str, u32)> = pool
            .vmtas
            .iter()
            .zip(pool.weights.iter())
            .filter(|(m, _)| usable(m))
            .map(|(m, w)| (m.as_str(), *w))
            .collect();
        match moves::pick_weighted(&members, rng.random()) {
            Some(m) => targets.push((*id, m.to_string())),
            None => stayed += 1,
        }
    }
    (targets, stayed)
}

/// Moves each message to its vMTA as far as it can now; busy ones are
/// remembered with `pending` and moved when their recipients settle.
async fn move_messages(
    engine: &Rc<Engine>,
    targets: Vec<(MessageId, String)>,
    pending: &MoveTarget,
) -> MoveReport {
    let mut report = MoveReport::default();
    // One pass over the queues and the timer takes everything that can
    // move; the rewrites then go in bounded concurrent batches (each batch
    // shares the spool's group commits). Taken recipients wait for their
    // move out of every queue, so nothing starts delivering them meanwhile.
    let jobs: Vec<(Taken, String)> = {
        let mut guard = engine.state.borrow_mut();
        let state = &mut *guard;
        let mut to: HashMap<MessageId, String> = targets.into_iter().collect();
        let ids: Vec<MessageId> = to.keys().copied().collect();
        let (ready, busy) = moves::movable(state, &ids);
        for id in busy {
            state.pending_moves.insert(id, pending.clone());
            report.pending_messages += 1;
        }
        let mut jobs = Vec::new();
        for taken in moves::take_waiting(state, &ready) {
            match to.remove(&taken.id) {
                Some(vmta) => {
                    state.rewriting.insert(taken.id);
                    jobs.push((taken, vmta));
                }
                None => moves::put_back(state, taken),
            }
        }
        jobs
    };
    let mut jobs = jobs.into_iter();
    loop {
        let batch: Vec<(Taken, String)> = jobs.by_ref().take(moves::MOVE_BATCH_MESSAGES).collect();
        if batch.is_empty() {
            break;
        }
        let results =
            futures_util::future::join_all(batch.into_iter().map(|(t, v)| move_one(engine, t, v)))
                .await;
        for r in results {
            match r {
                Some(n) => {
                    report.moved_messages += 1;
                    report.moved_recipients += n;
                }
                None => report.stayed_messages += 1,
            }
        }
    }
    engine.wake.notify_all();
    report
}

/// Rewrites one message onto `vmta` and hands it over; returns its live
/// recipients, or `None` when it stayed (its recipients are back).
async fn move_one(engine: &Rc<Engine>, taken: Taken, vmta: String) -> Option<u64> {
    let id = taken.id;
    let prepared = engine.state.borrow().messages.get(&id).map(|e| {
        let (all, live) = moves::moved_states(e, &taken, unix_now_s());
        (e.message.clone(), all, live)
    });
    let Some((old, all, live)) = prepared else {
        let mut state = engine.state.borrow_mut();
        state.rewriting.remove(&id);
        moves::put_back(&mut state, taken);
        return None;
    };
    let result = engine
        .deps
        .spool
        .rewrite_message(&old, &all, Some(&vmta))
        .await;
    let (moved, entry) = {
        let mut guard = engine.state.borrow_mut();
        let state = &mut *guard;
        state.rewriting.remove(&id);
        match result {
            Ok(m) => {
                state.pending_moves.remove(&id);
                (m, state.messages.remove(&id))
            }
            Err(e) => {
                tracing::warn!(%id, %vmta, error = %e, "cannot rewrite the message for its move; it stays");
                moves::put_back(state, taken);
                return None;
            }
        }
    };
    if let Some(entry) = entry {
        engine.deps.stats.queued_messages.fetch_sub(1, Relaxed);
        engine
            .deps
            .stats
            .queued_recipients
            .fetch_sub(i64::from(entry.pending), Relaxed);
    }
    let from = old
        .envelope()
        .map(|e| e.vmta.to_string())
        .unwrap_or_default();
    tracing::debug!(%id, %from, to = %vmta, recipients = live.len(), "message moved");
    let n = live.len() as u64;
    hand_off(engine, moved, live, &vmta).await;
    Some(n)
}

/// Gives a moved message to the shard owning `vmta` (this one included).
async fn hand_off(
    engine: &Rc<Engine>,
    message: MessageRef,
    live: Vec<(u32, RecipientState)>,
    vmta: &str,
) {
    if let Some(mesh) = &engine.deps.mesh {
        let owner = crate::runtime::shard_for_vmta(vmta, mesh.shards());
        if owner != engine.deps.shard {
            let id = message.id();
            let msg = ShardMsg::Recovered(RecoveredMessage {
                message,
                recipients: live.into_boxed_slice(),
            });
            if let Err(e) = mesh.send(owner, msg).await {
                // Only when shutting down: the rewritten copy is durable, so
                // the next start queues it on its new vMTA.
                tracing::warn!(%id, error = ?e, "moved message not handed over; it is queued again at the next start");
            }
            return;
        }
    }
    engine.enqueue(message, Some(&live));
}

#[cfg(test)]
#[path = "relocate_tests.rs"]
mod tests;
