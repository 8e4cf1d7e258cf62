//! A reroute on a real engine and spool (one shard, no scheduler running,
//! so recipients stay where the test puts them): waiting messages move at
//! once, a message with a recipient in flight moves when it settles, and
//! the spool says the new vMTA afterwards.

use super::*;
use crate::delivery::test_engine::{append, append_via, ready_ids, with_engine};

#[test]
fn reroute_moves_waiting_mail_now_and_busy_mail_when_it_settles() {
    let dir = tempfile::tempdir().expect("tempdir");
    with_engine(dir.path(), |engine, spool| async move {
        let a = append(&spool, &["x@a.test", "y@a.test"]).await;
        let b = append(&spool, &["z@a.test"]).await;
        let c = append(&spool, &["w@other.test"]).await;
        for m in [&a, &b, &c] {
            engine.enqueue(m.clone(), None);
        }
        // B's recipient is being delivered.
        {
            let mut state = engine.state.borrow_mut();
            let q = state.queues.get_mut("a.test/ip1").expect("queue");
            q.ready.retain(|r| r.message != b.id());
            q.in_flight = 1;
        }

        let report = reroute(&engine, "a.test/ip1", "ip2").await;
        assert_eq!(
            report,
            MoveReport {
                moved_messages: 1,
                moved_recipients: 2,
                pending_messages: 1,
                stayed_messages: 0,
            }
        );
        assert!(ready_ids(&engine, "a.test/ip1").is_empty());
        assert_eq!(
            ready_ids(&engine, "a.test/ip2"),
            vec![(a.id(), 0), (a.id(), 1)]
        );
        assert_eq!(
            ready_ids(&engine, "other.test/ip1"),
            vec![(c.id(), 0)],
            "another destination's queue is not selected"
        );
        assert!(engine.state.borrow().pending_moves.contains_key(&b.id()));
        let vmta_of = |id: MessageId| {
            engine.state.borrow().messages[&id]
                .message
                .envelope()
                .map(|e| e.vmta.to_string())
                .expect("envelope")
        };
        assert_eq!(vmta_of(a.id()), "ip2");
        assert_eq!(vmta_of(b.id()), "ip1");

        // B's attempt settles (deferred back into its queue): it moves too.
        {
            let mut state = engine.state.borrow_mut();
            let q = state.queues.get_mut("a.test/ip1").expect("queue");
            q.in_flight = 0;
            q.ready.push_back(crate::queue::Recipient {
                message: b.id(),
                index: 0,
            });
        }
        retry_pending(&engine, b.id()).await;
        assert!(engine.state.borrow().pending_moves.is_empty());
        assert_eq!(vmta_of(b.id()), "ip2");
        assert_eq!(ready_ids(&engine, "a.test/ip2").len(), 3);
        assert_eq!(engine.state.borrow().messages.len(), 3);
        assert_eq!(
            engine
                .deps
                .stats
                .queued_recipients
                .load(std::sync::atomic::Ordering::Relaxed),
            4
        );

        // A second reroute to the same vMTA finds nothing to do.
        let again = reroute(&engine, "*/ip2", "ip2").await;
        assert_eq!(again, MoveReport::default());
    });

    // On disk (read-only inspector): the newest copies say ip2, every
    // recipient still live, and nothing is duplicated.
    let inv = crate::spool::inspect::inventory(&dir.path().join("spool")).expect("inventory");
    let mut live: Vec<(String, String)> = inv
        .messages
        .iter()
        .filter(|m| m.is_live())
        .flat_map(|m| {
            m.recipients
                .iter()
                .filter(|r| !r.state.is_final())
                .map(|r| (r.forward_path.clone(), m.vmta.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    live.sort();
    assert_eq!(
        live,
        [
            ("w@other.test", "ip1"),
            ("x@a.test", "ip2"),
            ("y@a.test", "ip2"),
            ("z@a.test", "ip2")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[test]
fn evacuation_moves_pooled_mail_to_a_usable_member_and_leaves_direct_mail() {
    let dir = tempfile::tempdir().expect("tempdir");
    with_engine(dir.path(), |engine, spool| async move {
        let pooled = append_via(&spool, "pool1", &["x@a.test"]).await;
        let direct = append_via(&spool, "ip1", &["y@a.test"]).await;
        engine.enqueue(pooled.clone(), None);
        engine.enqueue(direct.clone(), None);
        // ip2 is disabled for a.test elsewhere: ip3 is the only choice.
        let now = now_ms();
        engine
            .deps
            .source_disables
            .disable("a.test", "ip2", now + 60_000, now);
        let report = evacuate(&engine, "a.test/ip1").await;
        assert_eq!(
            report,
            MoveReport {
                moved_messages: 1,
                moved_recipients: 1,
                pending_messages: 0,
                stayed_messages: 0,
            }
        );
        assert_eq!(ready_ids(&engine, "a.test/ip3"), vec![(pooled.id(), 0)]);
        assert_eq!(ready_ids(&engine, "a.test/ip1"), vec![(direct.id(), 0)]);
        assert!(ready_ids(&engine, "a.test/ip2").is_empty());

        // With every other member disabled, pooled mail stays and waits.
        let late = append_via(&spool, "pool1", &["z@a.test"]).await;
        engine.enqueue(late.clone(), None);
        engine
            .deps
            .source_disables
            .disable("a.test", "ip3", now + 60_000, now);
        let report = evacuate(&engine, "a.test/ip1").await;
        assert_eq!(report.stayed_messages, 1, "{report:?}");
        assert_eq!(report.moved_messages, 0);
        assert_eq!(
            ready_ids(&engine, "a.test/ip1"),
            vec![(direct.id(), 0), (late.id(), 0)]
        );
    });
}

/// Reroute throughput, by hand (not a timed test: it only prints):
/// `N=20000 cargo test -p spate --lib measure_reroute -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, run by hand"]
fn measure_reroute() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().expect("tempdir");
    with_engine(dir.path(), |engine, spool| async move {
        for i in 0..n {
            let r = format!("r{i}@a.test");
            let m = append(&spool, &[r.as_str()]).await;
            engine.enqueue(m, None);
        }
        let t = std::time::Instant::now();
        let report = reroute(&engine, "a.test/ip1", "ip2").await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "reroute of {n} messages: {report:?} in {ms:.1} ms ({:.0} msgs/s)",
            n as f64 / ms * 1000.0
        );
        assert_eq!(report.moved_messages, n as u64);
    });
}
