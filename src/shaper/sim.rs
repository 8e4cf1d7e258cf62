//! A deterministic discrete-event simulation of one queue delivering to a
//! scripted destination, driving a [`RateController`] exactly as the delivery
//! layer is meant to: open connections while allowed, ask for a grant before
//! each transaction, report replies, close when told.
//!
//! It exists for the property tests and `spate-bench shaper`; it does no I/O
//! and reads no clock, so a simulated hour takes milliseconds.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::controller::RateController;
use super::report::{ModeChange, Wait};

/// Most connections the simulation tracks (far above any `max_smtp_out` used).
pub const SIM_CONNECTIONS_MAX: usize = 4096;

/// Most events processed in one run: a runaway loop is a bug, not a hang.
pub const SIM_EVENTS_MAX: u64 = 50_000_000;

/// How much work is waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Demand {
    /// An endless backlog of recipients.
    Backlog,
    /// Recipients arrive steadily at this many per hour, from time zero.
    PerHour(f64),
}

/// Timing of the simulated peer and driver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Simulated time to run, from the `start_ms` passed to [`run`].
    pub duration_ms: u64,
    /// TCP connect + greeting + EHLO.
    pub connect_ms: u64,
    /// One transaction, grant to final reply.
    pub transaction_ms: u64,
    /// A connection whose next grant is further away than this closes.
    pub idle_close_ms: u64,
    /// Width of the buckets in [`SimReport::granted_per_bucket`].
    pub bucket_ms: u64,
    pub demand: Demand,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            duration_ms: 3_600_000,
            connect_ms: 50,
            transaction_ms: 100,
            idle_close_ms: 5_000,
            bucket_ms: 60_000,
            demand: Demand::Backlog,
        }
    }
}

/// What happened during a run.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Recipients granted (attempted), the quantity `max_msg_rate` limits.
    pub granted: u64,
    pub delivered: u64,
    /// Replies that were not successes.
    pub failed: u64,
    pub connections_opened: u64,
    /// Highest number of connections open at once.
    pub max_concurrent: u32,
    /// Recipients granted per `bucket_ms` bucket.
    pub granted_per_bucket: Vec<u64>,
    /// Every mode change, in order.
    pub mode_changes: Vec<ModeChange>,
    /// Events processed (a measure of driver work).
    pub events: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    TryOpen,
    Ready {
        conn: usize,
    },
    Done {
        conn: usize,
        recipients: u32,
        granted_at_ms: u64,
    },
}

/// Runs the simulation from `start_ms`. `destination(now_ms)` answers a
/// transaction: `None` is success, `Some(text)` is the failure reply.
pub fn run(
    ctl: &mut RateController,
    config: &SimConfig,
    start_ms: u64,
    destination: &mut dyn FnMut(u64) -> Option<String>,
) -> SimReport {
    let end_ms = start_ms.saturating_add(config.duration_ms);
    let buckets = usize::try_from(config.duration_ms / config.bucket_ms.max(1) + 1).unwrap_or(1);
    let mut report = SimReport {
        granted_per_bucket: vec![0; buckets],
        ..SimReport::default()
    };
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, at: u64, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    // messages sent on each open connection; None = slot free.
    let mut conns: Vec<Option<u32>> = Vec::new();
    let mut open = 0u32;
    let mut taken = 0u64; // recipients taken from demand (net of failures returned)
    let mut opener_pending = true;
    push(&mut events, start_ms, Event::TryOpen);

    let backlog = |now: u64, taken: u64| -> u64 {
        match config.demand {
            Demand::Backlog => u64::MAX,
            Demand::PerHour(r) => {
                let arrived = ((now - start_ms) as f64 * r / 3_600_000.0).floor() as u64;
                arrived.saturating_sub(taken)
            }
        }
    };

    while let Some(Reverse((now, _, event))) = events.pop() {
        if now >= end_ms || report.events >= SIM_EVENTS_MAX {
            break;
        }
        report.events += 1;
        let changes_before = ctl.counters().mode_changes;
        match event {
            Event::TryOpen => {
                opener_pending = false;
                loop {
                    if backlog(now, taken) == 0 {
                        // Nothing to do: look again a little later.
                        push(
                            &mut events,
                            now + config.idle_close_ms.max(1),
                            Event::TryOpen,
                        );
                        opener_pending = true;
                        break;
                    }
                    if usize::try_from(open).unwrap_or(usize::MAX) >= SIM_CONNECTIONS_MAX {
                        break;
                    }
                    match ctl.try_open_connection(now) {
                        Ok(()) => {
                            open += 1;
                            report.connections_opened += 1;
                            report.max_concurrent = report.max_concurrent.max(open);
                            let conn = match conns.iter().position(Option::is_none) {
                                Some(i) => i,
                                None => {
                                    conns.push(None);
                                    conns.len() - 1
                                }
                            };
                            if let Some(slot) = conns.get_mut(conn) {
                                *slot = Some(0);
                            }
                            push(&mut events, now + config.connect_ms, Event::Ready { conn });
                        }
                        Err(Wait::ConnectionLimit) | Err(Wait::Paused) => break,
                        Err(wait) => {
                            let at = wait.until_ms().unwrap_or(now + 1).max(now + 1);
                            push(&mut events, at, Event::TryOpen);
                            opener_pending = true;
                            break;
                        }
                    }
                }
            }
            Event::Ready { conn } => {
                let sent = conns.get(conn).copied().flatten().unwrap_or(0);
                let mut close = ctl.connection_should_close(now, sent);
                if !close {
                    let wanted = u32::try_from(backlog(now, taken)).unwrap_or(u32::MAX);
                    if wanted == 0 {
                        close = true;
                    } else {
                        match ctl.try_send_recipients(now, wanted) {
                            Ok(grant) => {
                                taken += u64::from(grant.recipients);
                                report.granted += u64::from(grant.recipients);
                                let bucket =
                                    usize::try_from((now - start_ms) / config.bucket_ms.max(1))
                                        .unwrap_or(usize::MAX);
                                if let Some(b) = report.granted_per_bucket.get_mut(bucket) {
                                    *b += u64::from(grant.recipients);
                                }
                                let done = Event::Done {
                                    conn,
                                    recipients: grant.recipients,
                                    granted_at_ms: grant.granted_at_ms,
                                };
                                push(&mut events, now + config.transaction_ms, done);
                            }
                            Err(wait) => match wait.until_ms() {
                                Some(at) if at.saturating_sub(now) <= config.idle_close_ms => {
                                    push(&mut events, at.max(now + 1), Event::Ready { conn });
                                }
                                _ => close = true,
                            },
                        }
                    }
                }
                if close {
                    ctl.on_connection_closed(now);
                    open = open.saturating_sub(1);
                    if let Some(slot) = conns.get_mut(conn) {
                        *slot = None;
                    }
                    if !opener_pending {
                        push(&mut events, now, Event::TryOpen);
                        opener_pending = true;
                    }
                }
            }
            Event::Done {
                conn,
                recipients,
                granted_at_ms,
            } => {
                match destination(now) {
                    None => {
                        ctl.on_delivered(now, granted_at_ms, recipients);
                        report.delivered += u64::from(recipients);
                    }
                    Some(reply) => {
                        ctl.on_reply(now, &reply);
                        report.failed += u64::from(recipients);
                        // Failed recipients go back to the backlog for retry.
                        taken = taken.saturating_sub(u64::from(recipients));
                    }
                }
                if let Some(Some(sent)) = conns.get_mut(conn) {
                    *sent += 1;
                }
                push(&mut events, now, Event::Ready { conn });
            }
        }
        // Collect every mode change this event caused, including those made
        // inside `advance` (backoff expiry) and `on_delivered`.
        let new = usize::try_from(ctl.counters().mode_changes - changes_before).unwrap_or(0);
        if new > 0 {
            let skip = ctl.history().count().saturating_sub(new);
            report
                .mode_changes
                .extend(ctl.history().skip(skip).cloned());
        }
    }
    report
}
