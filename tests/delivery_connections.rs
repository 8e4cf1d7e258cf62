//! Outbound connections are kept and reused: an idle connection waits
//! `idle_timeout` for work, and a new message wakes the idle connections of
//! its queue without closing the ones that did not get it (they used to
//! quit, so a steady trickle of mail opened a connection every few messages).
//! A pause still closes idle connections at once. A 421 in the middle of a
//! kept session still feeds the queue's pattern list (Backoff).

mod admin_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use admin_support::{get, post, send, start};
use support::sink::Sink;
use support::spate_proc::{Spate, wait_until};

fn connections_out(admin: SocketAddr) -> u64 {
    let a = get(admin, "/api/v1/status");
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["connections_out"]
        .as_u64()
        .expect("connections_out")
}

/// Waits (at most `secs`) until spate has `n` outbound connections open.
fn wait_connections_out(admin: SocketAddr, n: u64, secs: u64, spate: &Spate) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let open = connections_out(admin);
        if open == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "{open} outbound connections open, expected {n}; log:\n{}",
            spate.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_connections_stay_open_and_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (spate, smtp, admin) = start(dir.path(), sink.addr);

    // Four messages wait in a paused queue; the resume opens one connection
    // per waiting message in one pass.
    let a = post(admin, "/api/v1/queues/sink.test%2Fip1/pause", "");
    assert_eq!(a.status, 200, "{}", a.body);
    send(smtp, 4, "first");
    let a = post(admin, "/api/v1/queues/sink.test%2Fip1/resume", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(sink.wait_for(4, Duration::from_secs(20)).len(), 4);
    let opened = sink.connections();
    assert!(
        opened >= 2,
        "the resume opened {opened} connection(s); the test needs several idle ones"
    );
    wait_connections_out(admin, opened as u64, 10, &spate);

    // One new message: one idle connection takes it, the others stay open.
    send(smtp, 1, "second");
    assert_eq!(sink.wait_for(5, Duration::from_secs(20)).len(), 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        connections_out(admin),
        opened as u64,
        "idle connections closed when another one took the work; log:\n{}",
        spate.log_text()
    );

    // More messages go out on the connections already open.
    send(smtp, 3, "third");
    assert_eq!(sink.wait_for(8, Duration::from_secs(20)).len(), 8);
    assert_eq!(
        sink.connections(),
        opened,
        "new connections were opened while idle ones waited"
    );

    // A pause closes the idle connections at once, not after idle_timeout
    // (10 s by default).
    let a = post(admin, "/api/v1/queues/sink.test%2Fip1/pause", "");
    assert_eq!(a.status, 200, "{}", a.body);
    wait_connections_out(admin, 0, 3, &spate);
}

#[test]
fn a_421_in_mid_session_feeds_the_pattern_list_and_enters_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let extra = r#"
[vmta.ip1.domain."sink.test"]
max_smtp_out = 1
smtp_pattern_list = "throttle"

[smtp_pattern_list.throttle]
rules = [
  { reply = '\[TSS04\]', mode = "backoff" },
]
"#;
    let (spate, smtp, admin) = admin_support::start_with(dir.path(), sink.addr, extra);
    // One message delivered: its connection stays open, idle.
    send(smtp, 1, "first");
    assert_eq!(sink.wait_for(1, Duration::from_secs(20)).len(), 1);
    wait_connections_out(admin, 1, 10, &spate);
    // Now the receiver throttles: the idle connection takes the next
    // message, and its MAIL gets 421 after a delivery on the same session.
    sink.refuse_from(
        "127.0.0.2".parse().unwrap(),
        421,
        (4, 7, 0),
        "[TSS04] Messages from 127.0.0.2 temporarily deferred",
    );
    send(smtp, 1, "second");
    wait_until(
        "sink.test/ip1 in backoff",
        Duration::from_secs(15),
        || admin_support::queue(admin, "sink.test/ip1").expect("queue")["mode"] == "backoff",
        || spate.log_text(),
    );
    // It was the first connection's session, not a new connection's greeting.
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.messages().len(), 1);
}
