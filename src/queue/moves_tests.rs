//! Tests of the move bookkeeping on a hand-built shard state whose messages
//! sit in a real spool (envelopes are read from the segment maps).

use super::*;
use crate::queue::policy::empty_pattern_list;
use crate::queue::{Queue, RcptSlot, RecentCounts, queue_name};
use crate::shaper::RateController;
use crate::spool::{MessageRef, Spool, SpoolOptions};

struct Fixture {
    messages: Vec<MessageRef>,
    // Dropped in this order: the spool inside its runtime's lifetime.
    _spool: Spool,
    _rt: compio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// Spools one message per entry of `specs` (vMTA, recipients).
fn spool_messages(specs: &[(&str, &[&str])]) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = SpoolOptions::new(dir.path());
    options.segment_bytes = 1 << 20;
    let recovery = crate::spool::recover(&options, 1).expect("recover");
    let rt = compio::runtime::Runtime::new().expect("runtime");
    let spool = rt.block_on(async { Spool::open(recovery.shared, 0).expect("open") });
    let messages = rt.block_on(async {
        let mut out = Vec::new();
        for (vmta, rcpts) in specs {
            out.push(
                crate::delivery::test_engine::append_message(&spool, "pool1", vmta, rcpts).await,
            );
        }
        out
    });
    Fixture {
        messages,
        _spool: spool,
        _rt: rt,
        _dir: dir,
    }
}

fn add_queue(state: &mut ShardQueues, domain: &str, vmta: &str) -> String {
    let config = crate::config::load(None).expect("embedded default");
    let name = queue_name(domain, vmta);
    let controller =
        RateController::new(0, Default::default(), empty_pattern_list()).expect("limits");
    state.queues.insert(
        name.clone(),
        Queue {
            name: name.clone(),
            domain: domain.to_string(),
            vmta: vmta.to_string(),
            ready: Default::default(),
            deferred: 0,
            controller,
            policy: config.domain_policy(domain, vmta),
            connections: 0,
            idle: 0,
            work: Default::default(),
            in_flight: 0,
            scheduled: false,
            wake_at_ms: None,
            recent: RecentCounts::default(),
            last_error: None,
            next_attempt_ms: None,
            evacuating: false,
            evacuate_after_ms: 0,
        },
    );
    name
}

fn add_entry(state: &mut ShardQueues, m: &MessageRef, slots: &[RcptSlot]) {
    let pending = slots.iter().filter(|s| !s.state.is_final()).count() as u32;
    state.messages.insert(
        m.id(),
        MessageEntry {
            message: m.clone(),
            pending,
            rcpts: slots.to_vec().into_boxed_slice(),
        },
    );
}

fn slot(state: RecipientState, attempts: u16) -> RcptSlot {
    RcptSlot {
        state,
        attempts,
        delay_notified: false,
    }
}

fn rcpt(m: &MessageRef, index: u32) -> Recipient {
    Recipient {
        message: m.id(),
        index,
    }
}

const DEFERRED: RecipientState = RecipientState::Deferred {
    attempts: 2,
    next_attempt_unix_s: 5_000,
};

/// Three messages on ip1 to a.test (A: both recipients ready; B: one ready,
/// one in flight; C: one ready, one in the timer) and one on ip2.
fn scenario() -> (Fixture, ShardQueues, String) {
    let fx = spool_messages(&[
        ("ip1", &["x@a.test", "y@a.test"]),
        ("ip1", &["x@a.test", "y@a.test"]),
        ("ip1", &["x@a.test", "y@a.test"]),
        ("ip2", &["x@a.test"]),
    ]);
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| fx.messages[i].clone());
    let mut st = ShardQueues::default();
    let q1 = add_queue(&mut st, "a.test", "ip1");
    let q2 = add_queue(&mut st, "a.test", "ip2");
    let queued = slot(RecipientState::Queued, 0);
    add_entry(&mut st, &a, &[queued, queued]);
    add_entry(&mut st, &b, &[queued, queued]);
    add_entry(&mut st, &c, &[queued, slot(DEFERRED, 2)]);
    add_entry(&mut st, &d, &[queued]);
    let q = st.queues.get_mut(&q1).expect("q1");
    q.ready
        .extend([rcpt(&a, 0), rcpt(&a, 1), rcpt(&b, 0), rcpt(&c, 0)]);
    q.deferred = 1;
    q.in_flight = 1; // b's second recipient
    st.timer.insert(9_000, TimerItem::Retry(rcpt(&c, 1)));
    st.queues
        .get_mut(&q2)
        .expect("q2")
        .ready
        .push_back(rcpt(&d, 0));
    (fx, st, q1)
}

#[test]
fn only_messages_with_every_live_recipient_waiting_can_move() {
    let (fx, mut st, _) = scenario();
    let ids: Vec<MessageId> = fx.messages.iter().map(MessageRef::id).collect();
    let (ok, busy) = movable(&st, &ids);
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| fx.messages[i].id());
    assert_eq!(ok, HashSet::from([a, c, d]));
    assert_eq!(busy, vec![b]);
    // A rewrite (compaction) running makes a message busy too.
    st.rewriting.insert(a);
    let (ok, busy) = movable(&st, &[a, c]);
    assert_eq!(ok, HashSet::from([c]));
    assert_eq!(busy, vec![a]);
}

#[test]
fn taking_and_putting_back_keeps_queues_and_timer_whole() {
    let (fx, mut st, q1) = scenario();
    let [a, _, c, _] = [0, 1, 2, 3].map(|i| fx.messages[i].clone());
    let ids = HashSet::from([a.id(), c.id()]);
    let mut taken = take_waiting(&mut st, &ids);
    taken.sort_by_key(|t| t.id);
    assert_eq!(taken.len(), 2);
    assert_eq!(taken[0].ready.len(), 2);
    assert_eq!(taken[1].ready, vec![(q1.clone(), rcpt(&c, 0))]);
    assert_eq!(taken[1].timed, vec![(9_000, rcpt(&c, 1), q1.clone())]);
    let q = &st.queues[&q1];
    assert_eq!(q.ready.len(), 1, "only B's waiting recipient stays");
    assert_eq!(q.deferred, 0);
    assert!(st.timer.is_empty());

    for t in taken {
        put_back(&mut st, t);
    }
    let q = &st.queues[&q1];
    assert_eq!(q.ready.len(), 4);
    assert_eq!(q.deferred, 1);
    let timed: Vec<_> = st.timer.iter().map(|(due, i)| (due, i.clone())).collect();
    assert_eq!(timed, vec![(9_000, TimerItem::Retry(rcpt(&c, 1)))]);
    assert!(st.dirty.contains(&q1), "the queue is looked at again");
}

#[test]
fn moved_copy_keeps_final_states_and_makes_deferred_due_now() {
    let fx = spool_messages(&[("ip1", &["a@x.test", "b@x.test", "c@x.test"])]);
    let m = &fx.messages[0];
    let entry = MessageEntry {
        message: m.clone(),
        pending: 2,
        rcpts: vec![
            slot(RecipientState::Bounced { category: 3 }, 1),
            slot(RecipientState::Queued, 0),
            slot(DEFERRED, 2),
        ]
        .into_boxed_slice(),
    };
    let taken = Taken {
        id: m.id(),
        ready: vec![("x.test/ip1".into(), rcpt(m, 1))],
        timed: vec![(1, rcpt(m, 2), "x.test/ip1".into())],
    };
    let (all, live) = moved_states(&entry, &taken, 777);
    let due_now = RecipientState::Deferred {
        attempts: 2,
        next_attempt_unix_s: 777,
    };
    assert_eq!(
        all,
        vec![
            RecipientState::Bounced { category: 3 },
            RecipientState::Queued,
            due_now
        ]
    );
    assert_eq!(live, vec![(1, RecipientState::Queued), (2, due_now)]);
}

#[test]
fn matching_finds_live_recipients_of_selected_queues_only() {
    let (fx, mut st, _) = scenario();
    let mut on_ip1 = messages_matching(&st, "*/ip1");
    on_ip1.sort();
    let mut want: Vec<MessageId> = fx.messages[..3].iter().map(MessageRef::id).collect();
    want.sort();
    assert_eq!(on_ip1, want, "in-flight B is found too");
    assert_eq!(
        messages_matching(&st, "a.test/ip2"),
        vec![fx.messages[3].id()]
    );
    assert!(messages_matching(&st, "b.test/*").is_empty());
    // A message whose recipients are all final matches nothing.
    let d = fx.messages[3].id();
    if let Some(e) = st.messages.get_mut(&d) {
        e.rcpts[0].state = RecipientState::Delivered;
    }
    assert!(messages_matching(&st, "a.test/ip2").is_empty());
}

#[test]
fn weighted_pick_follows_weights_and_skips_zero() {
    let members = [("ip1", 3), ("ip2", 0), ("ip3", 1)];
    let picks: Vec<_> = (0..8).map(|r| pick_weighted(&members, r)).collect();
    assert_eq!(
        picks,
        ["ip1", "ip1", "ip1", "ip3", "ip1", "ip1", "ip1", "ip3"].map(Some)
    );
    assert_eq!(pick_weighted(&[("ip1", 0)], 5), None);
    assert_eq!(pick_weighted(&[], 5), None);
}

#[test]
fn source_disables_expire_and_ignore_domain_case() {
    let d = SourceDisables::default();
    d.disable("Yahoo.com", "ip1", 10_000, 0);
    assert!(d.is_disabled("yahoo.com", "ip1", 9_999));
    assert!(!d.is_disabled("yahoo.com", "ip1", 10_000));
    assert!(!d.is_disabled("yahoo.com", "ip2", 0));
    // A later disable extends, an earlier one does not shorten.
    d.disable("yahoo.com", "ip1", 20_000, 0);
    d.disable("yahoo.com", "ip1", 15_000, 0);
    assert!(d.is_disabled("yahoo.com", "ip1", 19_999));
}
