//! Each sink script rule, driven by the real injector over loopback sockets.

use std::net::{IpAddr, SocketAddr};

use spate_bench::inject::{InjectConfig, InjectReport, run_inject};
use spate_bench::script::Script;
use spate_bench::sink::{SinkConfig, SinkHandle, SinkReport, spawn};

fn sink(script: &str) -> SinkHandle {
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.script = Script::parse(script).unwrap();
    spawn(config).unwrap()
}

fn inject(
    to: SocketAddr,
    messages: u64,
    connections: u64,
    tweak: impl FnOnce(&mut InjectConfig),
) -> InjectReport {
    let mut cfg = InjectConfig::new(to, messages, connections);
    cfg.sizes = vec![1024];
    tweak(&mut cfg);
    run_inject(cfg).unwrap()
}

fn finish(handle: SinkHandle) -> SinkReport {
    handle.stop().unwrap()
}

#[test]
fn accept_counts_every_message_per_ip_and_ehlo() {
    let s = sink("");
    let r = inject(s.addrs[0], 30, 4, |c| c.per_connection = 4);
    assert_eq!((r.accepted, r.failed), (30, 0));
    assert!(s.wait_for_messages(30, std::time::Duration::from_secs(5)));
    let report = finish(s);
    assert_eq!(report.total.messages, 30);
    assert_eq!(report.total.recipients, 30);
    assert_eq!(report.total.bytes, 30 * 1024);
    assert_eq!(report.per_client_ip["127.0.0.1"].messages, 30);
    assert_eq!(report.per_ehlo["injector.spate-bench.test"].messages, 30);
    assert_eq!(
        report.e2e_latency.count, 30,
        "every message carried the timestamp header"
    );
    // Every connection the injector opened, and no more. At least 8 carry
    // 30 messages at 4 each; the 4 slots claim messages one at a time, so
    // each may end on a short connection (of at least one message) when the
    // last ones are taken: at most (30 + 4 × 3) / 4 = 10.
    assert_eq!(report.connections, r.connections_opened);
    assert!(
        (8..=10).contains(&report.connections),
        "30 messages at up to 4 per connection over 4 slots: {} connections",
        report.connections
    );
}

/// A sink on several addresses counts what came in on each one apart.
#[test]
fn counts_per_listening_address() {
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.listen = vec![
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.2:0".parse().unwrap(),
    ];
    let s = spawn(config).unwrap();
    let (a, b) = (s.addrs[0], s.addrs[1]);
    assert_ne!(a.ip(), b.ip());
    let to = |domain: &str| {
        let domain = domain.to_string();
        move |c: &mut InjectConfig| c.domains = vec![domain]
    };
    assert_eq!(inject(a, 7, 2, to("one.test")).accepted, 7);
    assert_eq!(inject(b, 3, 1, to("Two.Test")).accepted, 3);
    assert!(s.wait_for_messages(10, std::time::Duration::from_secs(5)));
    let report = finish(s);
    assert_eq!(report.per_listener.len(), 2, "{:?}", report.per_listener);
    assert_eq!(report.per_listener[&a.to_string()].messages, 7);
    assert_eq!(report.per_listener[&b.to_string()].messages, 3);
    assert_eq!(report.per_listener[&b.to_string()].recipients, 3);
    // The recipient domains that arrived at each address.
    let domains = |addr: SocketAddr| -> Vec<String> {
        report.per_listener_domains[&addr.to_string()]
            .iter()
            .cloned()
            .collect()
    };
    assert_eq!(domains(a), ["one.test"]);
    assert_eq!(domains(b), ["two.test"]);
}

#[test]
fn delay_holds_every_reply() {
    let s = sink("delay_ms = 40\ndata_delay_ms = 30\n");
    let r = inject(s.addrs[0], 3, 1, |_| {});
    assert_eq!(r.accepted, 3);
    assert!(
        r.ack_latency.p50_us >= 70_000,
        "ack p50 {} us should include 70 ms of delay",
        r.ack_latency.p50_us
    );
}

/// The sink's lock-free recipient count (what `relay` waits on when an MTA
/// splits messages over destinations) holds the accepted recipients only,
/// and the injector's refusals give what it must reach.
#[test]
fn recipients_are_counted_without_the_refused_ones() {
    let s = sink("permfail_reply = \"550 5.1.1 No such user\"\n");
    // Recipient n of the load is local part n % 2: every message keeps at
    // least one of its three, and 15 of the 30 are refused.
    let r = inject(s.addrs[0], 10, 2, |c| {
        c.rcpts = 3;
        c.locals = vec!["user".into(), "permfail+".into()];
    });
    assert_eq!((r.accepted, r.failed), (10, 0));
    let refused: u64 = r.refused_recipients.values().sum();
    assert_eq!(refused, 15);
    let expected = spate_bench::relay::expected_recipients(r.accepted, 3, refused);
    assert_eq!(expected, 15);
    assert!(s.wait_for_recipients(expected, std::time::Duration::from_secs(5)));
    assert_eq!((s.recipients(), s.messages()), (15, 10));
    // No more arrive: a wait for one more times out, false.
    assert!(!s.wait_for_recipients(16, std::time::Duration::from_millis(200)));
    assert_eq!(finish(s).total.recipients, 15);
}

#[test]
fn tempfail_and_permfail_by_local_part() {
    let s = sink(
        "tempfail_reply = \"452 4.2.2 Mailbox full\"\npermfail_reply = \"550 5.1.1 No such user\"\n",
    );
    let r = inject(s.addrs[0], 9, 2, |c| {
        c.locals = vec!["user".into(), "tempfail+".into(), "permfail+".into()]
    });
    assert_eq!((r.accepted, r.failed), (3, 6));
    assert_eq!(r.failures.get("452 4.2.2 Mailbox full"), Some(&3));
    assert_eq!(r.failures.get("550 5.1.1 No such user"), Some(&3));
    let report = finish(s);
    assert_eq!(report.total.messages, 3);
    assert_eq!(
        (report.tempfailed_recipients, report.permfailed_recipients),
        (3, 3)
    );
}

#[test]
fn throttle_after_n_per_minute_is_per_client_ip() {
    let s = sink(
        "[[throttle]]\nmessages_per_minute = 3\nreply = \"421 4.7.0 [TSS04] Messages from {ip} temporarily deferred\"\n",
    );
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    let ra = inject(s.addrs[0], 5, 1, |c| c.source = Some(a));
    assert_eq!((ra.accepted, ra.failed), (3, 2));
    assert_eq!(
        ra.failures
            .get("421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred"),
        Some(&2)
    );
    let rb = inject(s.addrs[0], 3, 1, |c| c.source = Some(b));
    assert_eq!(
        (rb.accepted, rb.failed),
        (3, 0),
        "another IP has its own budget"
    );
    let report = finish(s);
    assert_eq!(report.per_client_ip["127.0.0.2"].messages, 3);
    assert_eq!(report.per_client_ip["127.0.0.3"].messages, 3);
    assert_eq!(report.refused_mail, 2);
}

#[test]
fn time_window_refuses_only_inside_it() {
    let s = sink(
        "[[window]]\nstart_s = 0\nend_s = 3600\nreply = \"451 4.7.1 Greylisted, come back later\"\n",
    );
    let r = inject(s.addrs[0], 4, 2, |_| {});
    assert_eq!((r.accepted, r.failed), (0, 4));
    assert_eq!(
        r.failures.get("451 4.7.1 Greylisted, come back later"),
        Some(&4)
    );
    drop(s);
    let later =
        sink("[[window]]\nstart_s = 3000\nend_s = 3600\nreply = \"451 4.7.1 Greylisted\"\n");
    let r = inject(later.addrs[0], 4, 2, |_| {});
    assert_eq!((r.accepted, r.failed), (4, 0));
}

#[test]
fn close_after_n_messages_makes_the_injector_reconnect() {
    let s = sink("close_after = 2\n");
    let r = inject(s.addrs[0], 5, 1, |c| c.per_connection = 10);
    assert_eq!((r.accepted, r.failed), (5, 0), "failures: {:?}", r.failures);
    assert_eq!(r.connections_opened, 3);
    let report = finish(s);
    assert_eq!(report.closed_after_limit, 2);
    assert_eq!(report.total.messages, 5);
}

#[test]
fn greeting_421_refuses_every_session() {
    let s = sink("greeting = \"421 4.3.2 Service not available\"\n");
    let r = inject(s.addrs[0], 3, 1, |_| {});
    assert_eq!((r.accepted, r.failed), (0, 3));
    assert_eq!(r.failures.get("421 4.3.2 Service not available"), Some(&3));
    let report = finish(s);
    assert_eq!(report.refused_greetings, 3);
    assert_eq!(report.total.messages, 0);
}

#[test]
fn sink_listens_on_several_addresses() {
    let mut config = SinkConfig::accept_all("127.0.0.2:0".parse().unwrap());
    config.listen.push("127.0.0.3:0".parse().unwrap());
    let s = spawn(config).unwrap();
    assert_eq!(s.addrs.len(), 2);
    for addr in s.addrs.clone() {
        assert_eq!(inject(addr, 2, 1, |_| {}).accepted, 2);
    }
    assert_eq!(finish(s).total.messages, 4);
}

/// Each provider preset lets one client IP start its per-minute allowance,
/// then refuses MAIL with its provider's text; Yahoo's and Gmail's 421 also
/// close the connection, and every connection closes after the preset's
/// messages-per-connection.
#[test]
fn presets_throttle_with_their_providers_replies() {
    for (preset, allowance, per_connection, reply_start) in [
        (
            "yahoo",
            1000,
            50,
            "421 4.7.0 [TSS04] Messages from 127.0.0.1 ",
        ),
        ("gmail", 3000, 100, "421 4.7.28 [127.0.0.1] "),
        (
            "microsoft",
            2000,
            100,
            "451 4.7.650 The mail server [127.0.0.1] ",
        ),
    ] {
        let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
        config.script = Script::preset(preset).unwrap();
        let s = spawn(config).unwrap();
        let r = inject(s.addrs[0], allowance + 3, 4, |c| c.per_connection = 1000);
        assert_eq!(
            (r.accepted, r.failed),
            (allowance, 3),
            "{preset}: {:?}",
            r.failures
        );
        let (reply, n) = r.failures.iter().next().unwrap();
        assert!(reply.starts_with(reply_start), "{preset}: {reply}");
        assert_eq!(*n, 3, "{preset}");
        let report = finish(s);
        assert_eq!(report.total.messages, allowance, "{preset}");
        assert_eq!(report.refused_mail, 3, "{preset}");
        // Every connection carried at most the preset's number of messages:
        // each closure follows that many, and only the 4 connections open at
        // the end may have stopped short of it.
        let closed = report.closed_after_limit;
        assert!(
            closed <= allowance / per_connection && closed >= allowance / per_connection - 4,
            "{preset}: {closed} closed after the limit"
        );
    }
}

/// The command: `--duration` stops the sink by itself, which prints its
/// counts as JSON and writes the same to `--json-out`.
#[test]
fn sink_command_stops_after_its_duration_and_reports_json() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let json_out = dir.path().join("counts.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spate-bench"))
        .args([
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "5s",
            "--json-out",
        ])
        .arg(&json_out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let r = inject(addr, 5, 1, |_| {});
    assert_eq!((r.accepted, r.failed), (5, 0));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(30),
        "{waited:?}"
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["total"]["messages"], 5, "{printed}");
    assert_eq!(
        printed["per_client_ip"]["127.0.0.1"]["messages"], 5,
        "{printed}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(written, printed);
}
