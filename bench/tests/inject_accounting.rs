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

/// The command line end to end: `--size-dist` and weighted `--domains` shape
/// what the sink stores in its Maildir, and `--json` prints the report.
#[test]
fn command_line_mixes_reach_the_sink_as_asked() {
    let maildir = tempfile::tempdir().unwrap();
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.maildir = Some(maildir.path().to_path_buf());
    let s = spawn(config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate-bench"))
        .args(["inject", "--to", &s.addrs[0].to_string()])
        .args([
            "--messages",
            "40",
            "--connections",
            "2",
            "--per-connection",
            "10",
        ])
        .args([
            "--size-dist",
            "1000:3,5000:1",
            "--domains",
            "a.test:3,b.test",
        ])
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["messages"], 40, "{report}");
    assert_eq!(report["accepted"], 40, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["ack_latency"]["count"], 40, "{report}");
    assert!(s.wait_for_messages(40, std::time::Duration::from_secs(5)));
    let report = s.stop().unwrap();
    assert_eq!(report.total.messages, 40);

    // Every accepted message is a file in new/, as the injector wrote it.
    let mut small = 0;
    let mut large = 0;
    let mut to = std::collections::BTreeMap::<String, u32>::new();
    for entry in std::fs::read_dir(maildir.path().join("new")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        match text.len() {
            900..=1000 => small += 1,
            4900..=5000 => large += 1,
            other => panic!("unexpected size {other}"),
        }
        let rcpt = text
            .lines()
            .find_map(|l| l.strip_prefix("To: <"))
            .expect("a To header");
        let domain = rcpt.trim_end_matches('>').rsplit('@').next().unwrap();
        *to.entry(domain.to_owned()).or_default() += 1;
    }
    assert_eq!((small, large), (30, 10));
    assert_eq!(to.get("a.test"), Some(&30), "{to:?}");
    assert_eq!(to.get("b.test"), Some(&10), "{to:?}");
    assert_eq!(
        std::fs::read_dir(maildir.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// Runs `spate-bench inject ARGS --json` into a Maildir sink and returns
/// the recipient (`To:`) and size of every message it stored.
fn inject_into_maildir(args: &[&str], messages: u64) -> Vec<(String, usize)> {
    let maildir = tempfile::tempdir().unwrap();
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.maildir = Some(maildir.path().to_path_buf());
    let s = spawn(config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate-bench"))
        .args(["inject", "--to", &s.addrs[0].to_string()])
        .args(["--messages", &messages.to_string(), "--connections", "1"])
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.wait_for_messages(messages, std::time::Duration::from_secs(5)));
    assert_eq!(s.stop().unwrap().total.messages, messages);
    std::fs::read_dir(maildir.path().join("new"))
        .unwrap()
        .map(|entry| {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let rcpt = text
                .lines()
                .find_map(|l| l.strip_prefix("To: <"))
                .expect("a To header")
                .trim_end_matches('>')
                .to_owned();
            (rcpt, text.len())
        })
        .collect()
}

/// A short run already follows the mix: 10 messages of an 80/20 size mix
/// and a 60/40 domain mix are 8 and 2, 6 and 4 (not one size and domain
/// clumped at the end of a 100-long cycle).
#[test]
fn ten_messages_follow_the_weights() {
    let stored = inject_into_maildir(
        &[
            "--size-dist",
            "2048:80,102400:20",
            "--domains",
            "a.test:60,b.test:40",
        ],
        10,
    );
    let large = stored.iter().filter(|(_, len)| *len > 50_000).count();
    assert_eq!((stored.len() - large, large), (8, 2));
    let b = stored
        .iter()
        .filter(|(rcpt, _)| rcpt.ends_with("@b.test"))
        .count();
    assert_eq!((stored.len() - b, b), (6, 4), "{stored:?}");
}

/// Every prefix of the load follows the weights: after k messages each size
/// and domain has been used within one of its share of k.
#[test]
fn every_prefix_follows_the_weights() {
    let domains = spate_bench::inject::parse_domains(&[
        "gmail.test:60".into(),
        "yahoo.test:30".into(),
        "other.test:10".into(),
    ])
    .unwrap();
    let sizes = spate_bench::inject::parse_size_dist("1024:70,10240:25,102400:5").unwrap();
    let check = |picks: &dyn Fn(usize) -> usize, weights: &[usize]| {
        let total: usize = weights.iter().sum();
        let mut counts = vec![0usize; weights.len()];
        for k in 1..=250 {
            counts[picks(k - 1)] += 1;
            for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
                let share = (k * w) as f64 / total as f64;
                assert!(
                    (c as f64 - share).abs() < 1.0,
                    "entry {i} after {k}: {c}, share {share}"
                );
            }
        }
    };
    let names = ["gmail.test", "yahoo.test", "other.test"];
    check(
        &|seq| {
            let d = &domains[seq % domains.len()];
            names.iter().position(|n| n == d).unwrap()
        },
        &[60, 30, 10],
    );
    check(
        &|seq| {
            let s = sizes[seq % sizes.len()];
            [1024, 10240, 102400].iter().position(|&n| n == s).unwrap()
        },
        &[70, 25, 5],
    );
}

/// Local parts and domains combine: with two of each, four messages reach
/// all four pairs (`tempfail+` does not always go to the second domain).
/// Unit tests in src/inject/client.rs cover several recipients a message.
#[test]
fn every_local_part_meets_every_domain() {
    let stored = inject_into_maildir(
        &["--locals", "user,other+", "--domains", "a.test,b.test"],
        4,
    );
    let pairs: std::collections::BTreeSet<(String, String)> = stored
        .iter()
        .map(|(rcpt, _)| {
            let (local, domain) = rcpt.split_once('@').unwrap();
            let prefix = local.trim_end_matches(|c: char| c.is_ascii_digit());
            (prefix.to_owned(), domain.to_owned())
        })
        .collect();
    assert_eq!(pairs.len(), 4, "{pairs:?}");
}

#[test]
fn bad_mixes_and_remote_targets_are_refused_before_sending() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate-bench"))
            .arg("inject")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let to = ["--to", "127.0.0.1:9"];
    let err = run(&[&to[..], &["--domains", "a.test:0"]].concat());
    assert!(err.contains("weight of a.test"), "{err}");
    let err = run(&[&to[..], &["--domains", "a.test:x"]].concat());
    assert!(err.contains("bad weight"), "{err}");
    let err = run(&[&to[..], &["--size-dist", "2048"]].concat());
    assert!(err.contains("SIZE:WEIGHT"), "{err}");
    // A documentation address: refused before any connection is tried.
    let err = run(&["--to", "192.0.2.1:25"]);
    assert!(
        err.contains("non-loopback") && err.contains("--allow-remote"),
        "{err}"
    );
}
