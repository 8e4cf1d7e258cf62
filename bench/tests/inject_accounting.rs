//! The injector counts every message exactly once and reports failures by reply.

use spate_bench::inject::{InjectConfig, run_inject};
use spate_bench::script::Script;
use spate_bench::sink::{SinkConfig, spawn};

#[test]
fn every_message_is_counted_once_under_mixed_outcomes() {
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.script = Script::parse("close_after = 7\n").unwrap();
    let s = spawn(config).unwrap();
    let mut cfg = InjectConfig::new(s.addrs[0], 500, 9);
    cfg.per_connection = 11;
    cfg.locals = vec![
        "a".into(),
        "b".into(),
        "permfail+".into(),
        "c".into(),
        "tempfail+".into(),
    ];
    cfg.sizes = vec![300, 5000];
    cfg.threads = 2;
    let r = run_inject(cfg).unwrap();
    assert_eq!(r.messages, 500);
    assert_eq!(r.accepted + r.failed, 500);
    assert_eq!(r.accepted, 300);
    assert_eq!(r.failures.values().sum::<u64>(), 200);
    assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
    assert_eq!(r.ack_latency.count, 300);
    assert!(s.wait_for_messages(300, std::time::Duration::from_secs(5)));
    let report = s.stop().unwrap();
    assert_eq!(
        report.total.messages, 300,
        "the sink saw each accepted message once"
    );
    assert_eq!(
        report.permfailed_recipients + report.tempfailed_recipients,
        200
    );
}

#[test]
fn unreachable_server_fails_each_message_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = InjectConfig::new(format!("127.0.0.1:{port}").parse().unwrap(), 7, 3);
    let r = run_inject(cfg).unwrap();
    assert_eq!((r.accepted, r.failed), (0, 7));
    let (reason, n) = r.failures.iter().next().unwrap();
    assert!(
        reason.starts_with("connect 127.0.0.1:") && reason.contains("refused"),
        "{reason}"
    );
    assert_eq!(*n, 7);
}

#[test]
fn rate_cap_is_honoured() {
    let s = spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap();
    let mut cfg = InjectConfig::new(s.addrs[0], 20, 2);
    cfg.rate = Some(100.0);
    let r = run_inject(cfg).unwrap();
    assert_eq!(r.accepted, 20);
    assert!(
        r.elapsed_s >= 0.18,
        "20 messages at 100/s took only {} s",
        r.elapsed_s
    );
}

#[test]
fn message_has_the_requested_size_and_headers() {
    let mut cfg = InjectConfig::new("127.0.0.1:1".parse().unwrap(), 1, 1);
    cfg.vmta = Some("ip1".into());
    cfg.job = Some("j42".into());
    let mut out = Vec::new();
    spate_bench::inject::build_message(&mut out, &cfg, "user1@example.test", 1, 4096);
    assert_eq!(out.len(), 4096);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.contains("\r\nX-Virtual-MTA: ip1\r\n") && text.contains("\r\nX-Job: j42\r\n"));
    assert!(spate_bench::sink::sent_header(&out).is_some());
    assert!(!text.contains("\r\n."), "no line may start with a dot");
}
