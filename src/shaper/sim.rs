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

/// Why a connection is ready to ask for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ReadyAfter {
    Connect,
    Wait,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    TryOpen,
    Ready {
        conn: usize,
        after: ReadyAfter,
    },
    Done {
        conn: usize,
        recipients: u32,
        granted_at_ms: u64,
    },
}

/// The simulated driver's bookkeeping.
struct Driver {
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// Messages sent on each open connection; `None` = slot free.
    conns: Vec<Option<u32>>,
    open: u32,
    /// Connections connecting or waiting for a grant: they will take the next
    /// recipient, so the driver does not ask to open another meanwhile.
    idle: u32,
    opener_pending: bool,
    /// Recipients taken from demand (failures are given back).
    taken: u64,
}

impl Driver {
    fn push(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, event)));
    }

    fn wake_opener(&mut self, at: u64) {
        if !self.opener_pending {
            self.opener_pending = true;
            self.push(at, Event::TryOpen);
        }
    }
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
    let bucket_ms = config.bucket_ms.max(1);
    let buckets = usize::try_from(config.duration_ms / bucket_ms + 1).unwrap_or(1);
    let mut report = SimReport {
        granted_per_bucket: vec![0; buckets],
        ..SimReport::default()
    };
    let mut d = Driver {
        events: BinaryHeap::new(),
        seq: 0,
        conns: Vec::new(),
        open: 0,
        idle: 0,
        opener_pending: false,
        taken: 0,
    };
    d.wake_opener(start_ms);
    let backlog = |now: u64, taken: u64| -> u64 {
        match config.demand {
            Demand::Backlog => u64::MAX,
            Demand::PerHour(r) => {
                let arrived = ((now - start_ms) as f64 * r / 3_600_000.0).floor() as u64;
                arrived.saturating_sub(taken)
            }
        }
    };

    while let Some(Reverse((now, _, event))) = d.events.pop() {
        if now >= end_ms || report.events >= SIM_EVENTS_MAX {
            break;
        }
        report.events += 1;
        let changes_before = ctl.counters().mode_changes;
        match event {
            Event::TryOpen => {
                d.opener_pending = false;
                let slots_full =
                    usize::try_from(d.open).unwrap_or(usize::MAX) >= SIM_CONNECTIONS_MAX;
                if backlog(now, d.taken) == 0 {
                    // Nothing to send: look again a little later.
                    d.opener_pending = true;
                    d.push(now + config.idle_close_ms.max(1), Event::TryOpen);
                } else if d.idle == 0 && !slots_full {
                    match ctl.try_open_connection(now) {
                        Ok(()) => {
                            d.open += 1;
                            d.idle += 1;
                            report.connections_opened += 1;
                            report.max_concurrent = report.max_concurrent.max(d.open);
                            let conn = match d.conns.iter().position(Option::is_none) {
                                Some(i) => i,
                                None => {
                                    d.conns.push(None);
                                    d.conns.len() - 1
                                }
                            };
                            if let Some(slot) = d.conns.get_mut(conn) {
                                *slot = Some(0);
                            }
                            let ready = Event::Ready {
                                conn,
                                after: ReadyAfter::Connect,
                            };
                            d.push(now + config.connect_ms, ready);
                        }
                        // A close or a resume wakes the opener.
                        Err(Wait::ConnectionLimit) | Err(Wait::Paused) => {}
                        Err(wait) => {
                            let at = wait.until_ms().unwrap_or(now + 1).max(now + 1);
                            d.opener_pending = true;
                            d.push(at, Event::TryOpen);
                        }
                    }
                }
            }
            Event::Ready { conn, after } => {
                if after != ReadyAfter::Transaction {
                    d.idle = d.idle.saturating_sub(1);
                }
                let sent = d.conns.get(conn).copied().flatten().unwrap_or(0);
                let mut close = ctl.connection_should_close(now, sent);
                let wanted = u32::try_from(backlog(now, d.taken)).unwrap_or(u32::MAX);
                if !close && wanted == 0 {
                    close = true;
                } else if !close {
                    match ctl.try_send_recipients(now, wanted) {
                        Ok(grant) => {
                            d.taken += u64::from(grant.recipients);
                            report.granted += u64::from(grant.recipients);
                            let bucket =
                                usize::try_from((now - start_ms) / bucket_ms).unwrap_or(usize::MAX);
                            if let Some(b) = report.granted_per_bucket.get_mut(bucket) {
                                *b += u64::from(grant.recipients);
                            }
                            let done = Event::Done {
                                conn,
                                recipients: grant.recipients,
                                granted_at_ms: grant.granted_at_ms,
                            };
                            d.push(now + config.transaction_ms, done);
                            // This connection is busy now; another may help.
                            d.wake_opener(now);
                        }
                        Err(wait) => match wait.until_ms() {
                            Some(at) if at.saturating_sub(now) <= config.idle_close_ms => {
                                d.idle += 1;
                                d.push(
                                    at.max(now + 1),
                                    Event::Ready {
                                        conn,
                                        after: ReadyAfter::Wait,
                                    },
                                );
                            }
                            _ => close = true,
                        },
                    }
                }
                if close {
                    ctl.on_connection_closed(now);
                    d.open = d.open.saturating_sub(1);
                    if let Some(slot) = d.conns.get_mut(conn) {
                        *slot = None;
                    }
                    d.wake_opener(now);
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
                        d.taken = d.taken.saturating_sub(u64::from(recipients));
                    }
                }
                if let Some(Some(sent)) = d.conns.get_mut(conn) {
                    *sent += 1;
                }
                d.push(
                    now,
                    Event::Ready {
                        conn,
                        after: ReadyAfter::Transaction,
                    },
                );
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
