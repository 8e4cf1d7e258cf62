//! What happens to recipients after an attempt.
//!
//! For every recipient of a transaction: delivered (2xx), deferred (4xx or
//! no verdict: retry per the queue's schedule, or expire after
//! `bounce_after`), or bounced (5xx, with a bounce category). Each outcome
//! is made durable as a spool state record before the in-memory queue
//! forgets it, is reported to the rate controller, counted, written to
//! accounting, and, for bounces and expiries, reported to the sender in a
//! DSN that is itself spooled and queued like any message.
//!
//! A reply matching a `disable_source_ip` rule defers the recipient even
//! when it is a 5xx (it blames our IP, not the mailbox) and starts the
//! evacuation of the queue's pooled messages ([`super::relocate`]); a move
//! that waited for a message's in-flight recipients is retried here once
//! they settle.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use crate::accounting::{AccountingRecord, RecordKind};
use crate::delivery::bounce::{self, BounceCategory, EnhancedStatus};
use crate::delivery::dsn::{
    self, DsnAction, DsnEnvelope, DsnInput, Notify as DsnNotify, RecipientOutcome as DsnRecipient,
};
use crate::queue::engine::Engine;
use crate::queue::{Recipient, ShardQueues};
use crate::runtime::local::{now_ms, unix_now_s};
use crate::smtp::client::{RecipientOutcome, TransactionResult};
use crate::spool::record::{NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use crate::spool::{MessageRef, NewMessage, NewRecipient, RecipientState};

/// Recipients of one message sent in one transaction.
#[derive(Debug)]
pub struct Transaction {
    pub message: MessageRef,
    pub rcpts: Vec<Recipient>,
    pub granted_at_ms: u64,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy)]
pub enum Settle<'a> {
    /// The server answered (per-recipient replies inside).
    Result(&'a TransactionResult),
    /// The connection failed without a verdict: retry.
    Lost(&'a str),
    /// Refused before sending, with this reply text (e.g. 5.6.7).
    Refused(&'a str),
}

/// The verdict for one recipient.
#[derive(Debug, Clone)]
enum Verdict {
    Delivered(String),
    Deferred(String),
    Bounced(String, BounceCategory),
}

fn category_code(c: BounceCategory) -> u8 {
    BounceCategory::ALL
        .iter()
        .position(|x| *x == c)
        .unwrap_or(0) as u8
}

fn enhanced_of(text: &str) -> Option<EnhancedStatus> {
    text.split_whitespace()
        .nth(1)
        .and_then(EnhancedStatus::parse)
}

fn is_permanent(text: &str) -> bool {
    text.starts_with('5')
}

/// Groups recipients by their message, in first-seen order, so each
/// message's states go in one commit. Recipients whose message is no
/// longer in memory are dropped.
fn group_by_message(
    engine: &Engine,
    rcpts: impl IntoIterator<Item = Recipient>,
) -> Vec<(MessageRef, Vec<Recipient>)> {
    let mut by_message: Vec<(MessageRef, Vec<Recipient>)> = Vec::new();
    for r in rcpts {
        let msg = engine
            .state
            .borrow()
            .messages
            .get(&r.message)
            .map(|m| m.message.clone());
        let Some(msg) = msg else { continue };
        match by_message.iter_mut().find(|(m, _)| m.id() == r.message) {
            Some((_, v)) => v.push(r),
            None => by_message.push((msg, vec![r])),
        }
    }
    by_message
}

/// Settles every recipient of a transaction.
pub async fn settle_transaction(
    engine: &Rc<Engine>,
    queue: &str,
    tx: Transaction,
    how: Settle<'_>,
    remote: &str,
    addr: SocketAddr,
) {
    let now = now_ms();
    let mut verdicts = Vec::with_capacity(tx.rcpts.len());
    let mut delivered = 0u32;
    let mut disabled_until: Option<u64> = None;
    {
        let mut state = engine.state.borrow_mut();
        let q = state.queues.get_mut(queue);
        let Some(q) = q else { return };
        for (i, _) in tx.rcpts.iter().enumerate() {
            let verdict = match how {
                Settle::Result(result) => match result.outcome(i) {
                    RecipientOutcome::Delivered(r) => Verdict::Delivered(r.to_string()),
                    RecipientOutcome::Refused(r) => {
                        let text = r.to_string();
                        let out = q.controller.on_reply(now, &text);
                        if let Some(until) = out.disable_source_ip_until_ms {
                            // The reply blames our source IP, not the
                            // recipient: it waits (or moves to another pool
                            // member) instead of bouncing.
                            disabled_until = Some(until);
                            Verdict::Deferred(text)
                        } else if r.is_permanent() {
                            let cat = out.bounce_category.unwrap_or_else(|| {
                                bounce::classify(enhanced_of(&text), &text, None)
                            });
                            Verdict::Bounced(text, cat)
                        } else {
                            Verdict::Deferred(text)
                        }
                    }
                    RecipientOutcome::Unknown => Verdict::Deferred(
                        "451 4.4.2 connection lost during the transaction".to_string(),
                    ),
                },
                Settle::Lost(text) => Verdict::Deferred(text.to_string()),
                Settle::Refused(text) if is_permanent(text) => Verdict::Bounced(
                    text.to_string(),
                    bounce::classify(enhanced_of(text), text, None),
                ),
                Settle::Refused(text) => Verdict::Deferred(text.to_string()),
            };
            if matches!(verdict, Verdict::Delivered(_)) {
                delivered += 1;
            }
            verdicts.push(verdict);
        }
        if delivered > 0 {
            q.controller.on_delivered(now, tx.granted_at_ms, delivered);
        }
        q.in_flight = q.in_flight.saturating_sub(tx.rcpts.len() as u32);
        if let Some(until) = disabled_until {
            let _ = super::relocate::source_disabled(engine, q, until, now);
        }
    }
    // The connection goes on with its next transaction while the outcome
    // is made durable: a delivered recipient's state record only prevents a
    // duplicate after a crash, so waiting for its fsync here would cost a
    // disk flush per message per connection for nothing. Recipients stay out
    // of every queue until the record commits.
    let engine = engine.clone();
    let queue = queue.to_string();
    let remote = remote.to_string();
    compio::runtime::spawn(async move {
        apply(
            &engine,
            &queue,
            &tx.message,
            &tx.rcpts,
            verdicts,
            &remote,
            Some(addr),
        )
        .await;
    })
    .detach();
}

/// Fails every recipient waiting in `queue` with `reply` (a connection or
/// routing failure that affects them all), or in an overflow queue those of
/// domain `only`: deferred when `temporary`, bounced otherwise.
pub async fn fail_ready(
    engine: &Rc<Engine>,
    queue: &str,
    only: Option<&str>,
    reply: &str,
    mut temporary: bool,
    remote: Option<String>,
) {
    let now = now_ms();
    let taken: Vec<Recipient> = {
        let mut state = engine.state.borrow_mut();
        let state = &mut *state;
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        let out = q.controller.on_reply(now, reply);
        if let Some(until) = out.disable_source_ip_until_ms {
            // Our source IP is refused: nobody bounces for it.
            temporary = true;
            let _ = super::relocate::source_disabled(engine, q, until, now);
        }
        q.last_error = Some(reply.to_string());
        match only {
            None => q.ready.drain(..).collect(),
            // An overflow queue: only the failed domain's recipients.
            Some(domain) => {
                let messages = &state.messages;
                let mut mine = Vec::new();
                q.ready.retain(|r| {
                    let its = crate::queue::domain_of(messages, r).as_deref() == Some(domain);
                    if its {
                        mine.push(*r);
                    }
                    !its
                });
                mine
            }
        }
    };
    // Group by message so each message's states go in one commit.
    let by_message = group_by_message(engine, taken);
    let remote = remote.unwrap_or_default();
    for (msg, rcpts) in by_message {
        let verdicts = rcpts
            .iter()
            .map(|_| {
                if temporary {
                    Verdict::Deferred(reply.to_string())
                } else {
                    let cat = bounce::classify(enhanced_of(reply), reply, None);
                    Verdict::Bounced(reply.to_string(), cat)
                }
            })
            .collect();
        apply(engine, queue, &msg, &rcpts, verdicts, &remote, None).await;
    }
}

/// Deletes everything queued in the queues matching `selector` as
/// admin-deleted (bounces with accounting records and DSNs).
pub async fn delete_queued(engine: &Rc<Engine>, selector: &str) -> usize {
    let mut total = 0;
    let names: Vec<String> = engine
        .state
        .borrow()
        .queues
        .keys()
        .filter(|n| crate::queue::selector_matches(selector, n))
        .cloned()
        .collect();
    for name in names {
        let (ready, timed) = {
            let mut state = engine.state.borrow_mut();
            let ready: Vec<Recipient> = match state.queues.get_mut(&name) {
                Some(q) => q.ready.drain(..).collect(),
                None => continue,
            };
            // Deferred recipients of this queue sit in the shard timer.
            let ShardQueues {
                timer,
                messages,
                rollup,
                queues,
                ..
            } = &mut *state;
            let timed: Vec<Recipient> = timer
                .extract_if(|item| match item {
                    crate::queue::TimerItem::Retry(r) => {
                        crate::queue::current_queue_name(messages, rollup, queues, r).as_deref()
                            == Some(name.as_str())
                    }
                    _ => false,
                })
                .into_iter()
                .filter_map(|i| match i {
                    crate::queue::TimerItem::Retry(r) => Some(r),
                    _ => None,
                })
                .collect();
            if let Some(q) = state.queues.get_mut(&name) {
                q.deferred = q.deferred.saturating_sub(timed.len() as u64);
            }
            (ready, timed)
        };
        let by_message = group_by_message(engine, ready.into_iter().chain(timed));
        for (msg, rcpts) in by_message {
            total += rcpts.len();
            let verdicts = rcpts
                .iter()
                .map(|_| {
                    Verdict::Bounced(
                        "550 5.7.0 deleted by the administrator".to_string(),
                        BounceCategory::AdminDeleted,
                    )
                })
                .collect();
            apply(engine, &name, &msg, &rcpts, verdicts, "", None).await;
        }
    }
    total
}

/// Records, counts and reports the verdicts for recipients of one message.
async fn apply(
    engine: &Rc<Engine>,
    queue: &str,
    message: &MessageRef,
    rcpts: &[Recipient],
    verdicts: Vec<Verdict>,
    remote: &str,
    addr: Option<SocketAddr>,
) {
    let now = now_ms();
    let now_unix = unix_now_s();
    let Ok(env) = message.envelope() else { return };
    let received_unix = env.received_unix_ms / 1000;
    let (bounce_after, delay_after) = {
        let state = engine.state.borrow();
        let q = state.queues.get(queue);
        (
            q.map(|q| q.policy.bounce_after),
            q.and_then(|q| q.policy.dsn_delay_after),
        )
    };
    let age_s = now_unix.saturating_sub(received_unix);
    let expired = bounce_after.is_some_and(|b| age_s >= b.as_secs());
    let all: Vec<_> = env.recipients().collect();
    // NOTIFY=DELAY recipients that waited long enough get their delay notice
    // now (below, once); the deferred state records it durably first.
    let delay_due = |index: u32| {
        all.get(index as usize)
            .is_some_and(|x| x.notify & NOTIFY_DELAY != 0)
            && delay_after.is_some_and(|after| age_s >= after.as_secs())
    };

    // Decide the final state of each recipient.
    let mut states: Vec<(u32, RecipientState, String, Verdict)> = Vec::with_capacity(rcpts.len());
    {
        let mut state = engine.state.borrow_mut();
        for (r, verdict) in rcpts.iter().zip(verdicts) {
            let (attempts, notified) = state
                .messages
                .get_mut(&r.message)
                .and_then(|m| m.rcpts.get_mut(r.index as usize))
                .map(|slot| {
                    slot.attempts = slot.attempts.saturating_add(1);
                    (u32::from(slot.attempts), slot.delay_notified)
                })
                .unwrap_or((1, false));
            let (rs, verdict) = match verdict {
                Verdict::Delivered(t) => (RecipientState::Delivered, Verdict::Delivered(t)),
                Verdict::Bounced(t, c) => {
                    if c == BounceCategory::AdminDeleted {
                        (RecipientState::AdminDeleted, Verdict::Bounced(t, c))
                    } else {
                        (
                            RecipientState::Bounced {
                                category: category_code(c),
                            },
                            Verdict::Bounced(t, c),
                        )
                    }
                }
                Verdict::Deferred(t) if expired => (
                    RecipientState::Expired,
                    Verdict::Bounced(
                        format!(
                            "{t} (message expired after {}s in queue)",
                            now_unix.saturating_sub(received_unix)
                        ),
                        BounceCategory::MessageExpired,
                    ),
                ),
                Verdict::Deferred(t) => {
                    let delay = state
                        .queues
                        .get(queue)
                        .map_or(std::time::Duration::from_secs(300), |q| {
                            q.controller.retry_delay(attempts)
                        });
                    let next = now_unix + delay.as_secs().max(1);
                    (
                        RecipientState::Deferred {
                            attempts: crate::spool::record::pack_deferred_attempts(
                                attempts,
                                notified || delay_due(r.index),
                            ),
                            next_attempt_unix_s: next,
                        },
                        Verdict::Deferred(t),
                    )
                }
            };
            let text = match &verdict {
                Verdict::Delivered(t) | Verdict::Deferred(t) | Verdict::Bounced(t, _) => t.clone(),
            };
            states.push((r.index, rs, text, verdict));
        }
    }

    // Durable first: one commit per distinct reply text (recipients with the
    // same reply need not be next to each other), each recipient in exactly
    // one. Delivered states may wait a little for their fdatasync
    // (`spool::LAZY_RECORDS_DELAY_DEFAULT`), so they go last: the states that
    // decide a retry or a bounce are not held up behind them.
    let mut groups: Vec<(&str, Vec<(u32, RecipientState)>)> = Vec::new();
    for (index, rs, text, _) in &states {
        match groups.iter_mut().find(|(t, _)| *t == text.as_str()) {
            Some((_, group)) => group.push((*index, *rs)),
            None => groups.push((text.as_str(), vec![(*index, *rs)])),
        }
    }
    let delivered_only = |group: &[(u32, RecipientState)]| {
        group.iter().all(|(_, s)| *s == RecipientState::Delivered)
    };
    groups.sort_by_key(|(_, group)| delivered_only(group));
    let mut durable = true;
    for (text, group) in groups {
        let spool = &engine.deps.spool;
        let recorded = if delivered_only(&group) {
            spool.record_states_lazily(message, &group, text).await
        } else {
            spool.record_states(message, &group, text).await
        };
        if let Err(e) = recorded {
            tracing::error!(id = %message.id(), error = %e, "cannot record recipient states; will retry");
            durable = false;
        }
    }

    // Remember the states for compaction's rewrite.
    {
        let mut state = engine.state.borrow_mut();
        if let Some(entry) = state.messages.get_mut(&message.id()) {
            for (idx, rs, _, _) in &states {
                if let Some(slot) = entry.rcpts.get_mut(*idx as usize) {
                    slot.state = *rs;
                }
            }
        }
    }

    // Then memory, counters, accounting.
    let mut dsn_rcpts: Vec<DsnRecipient> = Vec::new();
    let mut delay_rcpts: Vec<DsnRecipient> = Vec::new();
    {
        let mut state = engine.state.borrow_mut();
        for (r, (idx, rs, text, verdict)) in rcpts.iter().zip(states.iter()) {
            let rec = all.get(*idx as usize);
            let rcpt_addr = rec.map_or("", |x| x.forward_path);
            let (kind, action, cat) = match verdict {
                Verdict::Delivered(_) => (RecordKind::Delivered, "relayed", None),
                Verdict::Deferred(_) => (RecordKind::Transient, "delayed", None),
                Verdict::Bounced(_, c) => (RecordKind::Bounced, "failed", Some(*c)),
            };
            if let Some(q) = state.queues.get_mut(queue) {
                let (d, b, t) = match kind {
                    RecordKind::Delivered => (1, 0, 0),
                    RecordKind::Bounced => (0, 1, 0),
                    _ => (0, 0, 1),
                };
                q.recent.add(now, d, b, t);
                if kind != RecordKind::Delivered {
                    q.last_error = Some(text.clone());
                }
            }
            match rs {
                RecipientState::Deferred {
                    next_attempt_unix_s,
                    ..
                } => {
                    let due = crate::runtime::local::mono_ms_for_unix(*next_attempt_unix_s);
                    engine.defer_recipient(&mut state, queue, *r, due);
                    engine.deps.stats.deferred.fetch_add(1, Relaxed);
                    // NOTIFY=DELAY: one delay notice per recipient once it has
                    // waited `dsn_delay_after`; the flag is in the recorded
                    // state, so a restart or a move does not send another.
                    let due = delay_due(*idx);
                    let slot = state
                        .messages
                        .get_mut(&r.message)
                        .and_then(|m| m.rcpts.get_mut(r.index as usize));
                    if let (true, Some(slot), Some(rec)) = (due, slot, rec)
                        && !slot.delay_notified
                    {
                        slot.delay_notified = true;
                        delay_rcpts.push(DsnRecipient {
                            recipient: rec.forward_path.to_string(),
                            orcpt: (!rec.orcpt.is_empty()).then(|| rec.orcpt.to_string()),
                            notify: dsn_notify(rec.notify),
                            action: DsnAction::Delayed,
                            status: enhanced_of(text).unwrap_or(EnhancedStatus::new(4, 0, 0)),
                            remote_mta: (!remote.is_empty()).then(|| remote.to_string()),
                            diagnostic: Some(text.clone()),
                            last_attempt_unix: now_unix as i64,
                            will_retry_until_unix: bounce_after
                                .map(|b| (received_unix + b.as_secs()) as i64),
                        });
                    }
                }
                _ if !durable => {
                    // Not recorded: keep it queued for another try rather
                    // than forget a recipient the spool still has as live.
                    engine.defer_recipient(&mut state, queue, *r, now + 60_000);
                }
                RecipientState::Delivered => {
                    engine.settle_recipient(&mut state, *r);
                    engine.deps.stats.delivered.fetch_add(1, Relaxed);
                }
                RecipientState::Expired => {
                    engine.settle_recipient(&mut state, *r);
                    engine.deps.stats.expired.fetch_add(1, Relaxed);
                    engine.deps.stats.bounced.fetch_add(1, Relaxed);
                    engine
                        .deps
                        .stats
                        .add_bounce_category(cat.unwrap_or(BounceCategory::MessageExpired));
                }
                _ => {
                    engine.settle_recipient(&mut state, *r);
                    engine.deps.stats.bounced.fetch_add(1, Relaxed);
                    engine
                        .deps
                        .stats
                        .add_bounce_category(cat.unwrap_or(BounceCategory::Other));
                }
            }
            if let Some(acct) = &engine.deps.accounting {
                let mut a = AccountingRecord::new(kind, now_unix as i64);
                a.time_queued_unix = received_unix as i64;
                a.orig = env.reverse_path.to_string();
                a.rcpt = rcpt_addr.to_string();
                a.orcpt = rec.map_or(String::new(), |x| x.orcpt.to_string());
                a.dsn_action = action.to_string();
                a.dsn_status = enhanced_of(text).map_or(String::new(), |e| e.to_string());
                a.dsn_diag = format!("smtp;{text}");
                a.dsn_mta = remote.to_string();
                a.bounce_cat = cat.map_or(String::new(), |c| c.as_str().to_string());
                a.src_type = "smtp".into();
                a.dlv_type = "smtp".into();
                a.dlv_source_ip = String::new();
                a.dlv_destination_ip = addr.map_or(String::new(), |a| a.ip().to_string());
                a.dlv_size = Some(message.content().len() as u64);
                a.vmta = env.vmta.to_string();
                a.job_id = env.job_id.to_string();
                a.env_id = env.envid.to_string();
                a.queue = queue.to_string();
                a.vmta_pool = if env.vmta_or_pool != env.vmta {
                    env.vmta_or_pool.to_string()
                } else {
                    String::new()
                };
                acct.log(a);
            }
            if let (Verdict::Bounced(_, c), Some(rec)) = (verdict, rec)
                && *c != BounceCategory::AdminDeleted
            {
                dsn_rcpts.push(DsnRecipient {
                    recipient: rec.forward_path.to_string(),
                    orcpt: (!rec.orcpt.is_empty()).then(|| rec.orcpt.to_string()),
                    notify: dsn_notify(rec.notify),
                    action: DsnAction::Failed,
                    status: enhanced_of(text).unwrap_or(EnhancedStatus::new(5, 0, 0)),
                    remote_mta: (!remote.is_empty()).then(|| remote.to_string()),
                    diagnostic: Some(text.clone()),
                    last_attempt_unix: now_unix as i64,
                    will_retry_until_unix: None,
                });
            }
        }
        state.mark(queue);
    }
    engine.wake.notify_all();
    if durable
        && states
            .iter()
            .any(|s| matches!(s.1, RecipientState::Deferred { .. }))
        && engine.deps.spool.needs_rewrite(message)
    {
        compact(engine, message).await;
    }
    if !dsn_rcpts.is_empty() {
        send_dsn(engine, message, &dsn_rcpts).await;
    }
    if !delay_rcpts.is_empty() {
        send_dsn(engine, message, &delay_rcpts).await;
    }
    // A move (reroute, pool evacuation) that waited for these recipients.
    let pending_move = engine
        .state
        .borrow()
        .pending_moves
        .contains_key(&message.id());
    if pending_move {
        super::relocate::retry_pending(engine, message.id()).await;
    }
}

/// Moves a long-deferred message out of a mostly finished segment (the
/// spool's compaction), so one message cannot pin a whole segment on disk.
async fn compact(engine: &Rc<Engine>, message: &MessageRef) {
    let states = {
        let mut state = engine.state.borrow_mut();
        let states = match state.messages.get(&message.id()) {
            Some(entry) if entry.message.segment() == message.segment() => {
                entry.rcpts.iter().map(|s| s.state).collect::<Vec<_>>()
            }
            _ => return,
        };
        if !state.rewriting.insert(message.id()) {
            return;
        }
        states
    };
    let result = engine
        .deps
        .spool
        .rewrite_message(message, &states, None)
        .await;
    engine.state.borrow_mut().rewriting.remove(&message.id());
    match result {
        Ok(moved) => {
            if let Some(entry) = engine.state.borrow_mut().messages.get_mut(&message.id()) {
                entry.message = moved;
            }
        }
        Err(e) => tracing::warn!(id = %message.id(), error = %e, "compaction rewrite failed"),
    }
}

fn dsn_notify(bits: u8) -> Option<DsnNotify> {
    if bits == 0 {
        return None;
    }
    Some(DsnNotify {
        never: bits & NOTIFY_NEVER != 0,
        success: bits & NOTIFY_SUCCESS != 0,
        failure: bits & NOTIFY_FAILURE != 0,
        delay: bits & NOTIFY_DELAY != 0,
    })
}

/// Builds, spools and queues a DSN for bounced recipients of `message`.
async fn send_dsn(engine: &Rc<Engine>, message: &MessageRef, rcpts: &[DsnRecipient]) {
    let Ok(env) = message.envelope() else { return };
    let config = engine.config();
    let envelope = DsnEnvelope {
        reverse_path: env.reverse_path.to_string(),
        envid: (!env.envid.is_empty()).then(|| env.envid.to_string()),
        ret: match env.ret {
            crate::spool::Ret::Full => Some(dsn::Ret::Full),
            crate::spool::Ret::Hdrs => Some(dsn::Ret::Hdrs),
            crate::spool::Ret::Unspecified => None,
        },
        arrival_unix: (env.received_unix_ms / 1000) as i64,
    };
    let unique = format!("{}.{}", message.id(), now_ms());
    let Some(report) = dsn::build_dsn(&DsnInput {
        hostname: &config.hostname,
        envelope: &envelope,
        recipients: rcpts,
        original: message.content(),
        now_unix: unix_now_s() as i64,
        unique: &unique,
    }) else {
        return;
    };
    let recipients = [NewRecipient {
        forward_path: &report.recipient,
        orcpt: "",
        notify: NOTIFY_NEVER,
    }];
    let record = NewMessage {
        received_unix_ms: unix_now_s() * 1000,
        reverse_path: "",
        recipients: &recipients,
        ret: crate::spool::Ret::Unspecified,
        envid: "",
        vmta_or_pool: env.vmta_or_pool,
        vmta: env.vmta,
        job_id: env.job_id,
        content: crate::spool::record::Content::One(&report.message),
    };
    match engine.deps.spool.append_message(&record).await {
        Ok(dsn_msg) => {
            engine.deps.stats.add_received(1, 1);
            engine.enqueue(dsn_msg, None);
        }
        Err(e) => tracing::error!(id = %message.id(), error = %e, "cannot spool DSN"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::test_engine::{append_received, with_engine};

    /// Two recipients delivered with one reply around a deferred one: the
    /// delivered pair is recorded once, so the message keeps exactly its
    /// deferred recipient live. (Recorded twice, the pair finished four
    /// recipients of three, and the message stopped keeping its segment
    /// while the deferred one still needed it.)
    #[test]
    fn recipients_with_one_reply_apart_are_recorded_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        with_engine(dir.path(), |engine, spool| async move {
            // Received now: an old message's deferred recipient would expire.
            let rcpts = ["x@a.test", "y@a.test", "z@a.test"];
            let m = append_received(&spool, unix_now_s() * 1000, "ip1", "ip1", &rcpts).await;
            engine.enqueue(m.clone(), None);
            // Taken for delivery, as a connection would.
            engine
                .state
                .borrow_mut()
                .queues
                .get_mut("a.test/ip1")
                .expect("queue")
                .ready
                .clear();
            let rcpts: Vec<Recipient> = (0..3)
                .map(|index| Recipient {
                    message: m.id(),
                    index,
                })
                .collect();
            let ok = "250 2.0.0 accepted".to_string();
            let verdicts = vec![
                Verdict::Delivered(ok.clone()),
                Verdict::Deferred("450 4.2.0 try later".into()),
                Verdict::Delivered(ok),
            ];
            apply(&engine, "a.test/ip1", &m, &rcpts, verdicts, "sink", None).await;
            assert_eq!(m.live_recipients(), 1);
            let entry = &engine.state.borrow().messages[&m.id()];
            assert_eq!(entry.pending, 1);
        });
    }
}
