//! The admin API against the real binary on loopback: authorisation,
//! status and queues JSON, pause/resume/mode/delete effects on deliveries
//! to a sink, reload with a valid and an invalid file, the metrics
//! exposition, and `spate ctl`.

mod admin_support;
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use admin_support::{
    TOKEN, addr, config, get, http, parse_prometheus, post, queue, send, start, wait_admin,
    wait_delivered,
};
use support::sink::Sink;
use support::spate_proc::{Spate, free_port};

#[test]
fn auth_status_queues_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (spate, smtp, admin) = start(dir.path(), sink.addr);

    let a = http(admin, "GET", "/api/v1/status", None, "");
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.head.contains("WWW-Authenticate: Bearer"), "{}", a.head);
    assert_eq!(
        http(admin, "GET", "/api/v1/status", Some("wrong"), "").status,
        401
    );
    assert_eq!(
        http(
            admin,
            "GET",
            "/api/v1/queues",
            Some(&format!("{TOKEN}x")),
            ""
        )
        .status,
        401
    );
    assert_eq!(http(admin, "POST", "/api/v1/reload", None, "").status, 401);
    // Metrics need no token from loopback.
    assert_eq!(http(admin, "GET", "/metrics", None, "").status, 200);

    send(smtp, 2, "status");
    assert_eq!(
        sink.wait_for(2, Duration::from_secs(15)).len(),
        2,
        "{}",
        spate.log_text()
    );
    wait_delivered(admin, 2);

    let s = get(admin, "/api/v1/status");
    assert_eq!(s.status, 200, "{}", s.body);
    let s = s.json();
    assert_eq!(s["shards"], 2);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].is_u64());
    assert_eq!(s["totals"]["received_messages"], 2, "{s}");
    assert_eq!(s["totals"]["delivered"], 2, "{s}");
    assert!(s["spool"]["bytes_used"].as_u64().unwrap() > 0, "{s}");
    assert!(s["spool"]["bytes_free"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["vmtas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["vmta"] == "ip1"),
        "{s}"
    );
    for k in [
        "queued_messages",
        "queued_recipients",
        "connections_in",
        "connections_out",
    ] {
        assert!(s[k].is_i64(), "{k} in {s}");
    }

    let q = queue(admin, "sink.test/ip1").expect("queue listed");
    assert_eq!(q["vmta"], "ip1");
    assert_eq!(q["domain"], "sink.test");
    assert_eq!(q["mode"], "normal");
    assert_eq!(q["delivered_last_hour"], 2, "{q}");
    for k in [
        "queued",
        "in_flight",
        "connections",
        "bounced_last_hour",
        "deferred_last_hour",
        "mode_since_unix",
    ] {
        assert!(q[k].is_u64(), "{k} in {q}");
    }

    // Errors.
    assert_eq!(get(admin, "/nope").status, 404);
    assert_eq!(
        http(admin, "DELETE", "/api/v1/status", Some(TOKEN), "").status,
        405
    );
    assert_eq!(
        get(admin, "/api/v1/queues/sink.test%2Fip1/pause").status,
        405
    );
    assert_eq!(
        post(admin, "/api/v1/queues/sink.test%2Fip1/mode", "{bad").status,
        400
    );
    assert_eq!(
        post(
            admin,
            "/api/v1/queues/sink.test%2Fip1/mode",
            r#"{"mode":"fast"}"#
        )
        .status,
        400
    );
    assert_eq!(post(admin, "/api/v1/queues/nodomain/pause", "").status, 400);
    assert_eq!(
        post(
            admin,
            "/api/v1/queues/other.test%2Fip1/mode",
            r#"{"mode":"normal"}"#
        )
        .status,
        404
    );
    let big = "x".repeat(70 * 1024);
    assert_eq!(
        post(admin, "/api/v1/queues/sink.test%2Fip1/mode", &big).status,
        413
    );
    // The page is served without a token and is HTML.
    let page = http(admin, "GET", "/", None, "");
    assert_eq!(page.status, 200);
    assert!(page.head.contains("text/html") && page.body.contains("<table id=\"queues\""));
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (spate, smtp, admin) = start(dir.path(), sink.addr);
    send(smtp, 3, "metrics");
    assert_eq!(
        sink.wait_for(3, Duration::from_secs(15)).len(),
        3,
        "{}",
        spate.log_text()
    );
    wait_delivered(admin, 3);
    let a = http(admin, "GET", "/metrics", None, "");
    assert_eq!(a.status, 200);
    assert!(a.head.contains("text/plain; version=0.0.4"), "{}", a.head);
    let samples = parse_prometheus(&a.body).unwrap_or_else(|e| panic!("{e}\n{}", a.body));
    let value = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    };
    assert_eq!(value("spate_received_messages_total"), Some(3.0));
    assert_eq!(value("spate_delivered_total"), Some(3.0));
    assert!(value("spate_spool_bytes_used").unwrap() > 0.0);
    assert!(value("spate_spool_bytes_free").unwrap() > 0.0);
    for name in [
        "spate_received_recipients_total",
        "spate_rejected_messages_total",
        "spate_bounced_total",
        "spate_deferred_total",
        "spate_expired_total",
        "spate_connections_in",
        "spate_connections_out",
        "spate_queued_messages",
        "spate_queued_recipients",
        "spate_dns_lookups_total",
        "spate_dns_failures_total",
        "spate_accounting_dropped_total",
    ] {
        assert!(value(name).is_some(), "{name} missing");
    }
    assert!(value("spate_rate_limit_waits_total").is_some());
    for fill in ["zeros", "allocated", "recycled"] {
        assert!(
            samples
                .iter()
                .any(|s| s.name == "spate_spool_segments_prepared_total"
                    && s.labels == vec![("fill".into(), fill.into())]),
            "no segments_prepared sample for {fill}"
        );
    }
    // Three messages were spooled with sync = "group": at least one fsync
    // was timed, and the +Inf bucket holds every observation.
    let fsyncs = value("spate_spool_fsync_seconds_count").expect("fsync histogram");
    assert!(fsyncs >= 1.0, "{fsyncs}");
    let inf = samples
        .iter()
        .find(|s| {
            s.name == "spate_spool_fsync_seconds_bucket"
                && s.labels == vec![("le".into(), "+Inf".into())]
        })
        .expect("+Inf bucket");
    assert_eq!(inf.value, fsyncs);
    // Each of the three new messages waited for one commit.
    assert_eq!(value("spate_spool_commit_seconds_count"), Some(3.0));
    assert!(value("spate_spool_commit_seconds_sum").unwrap() > 0.0);
    let q = samples
        .iter()
        .find(|s| s.name == "spate_queue_mode")
        .expect("per-queue mode");
    assert_eq!(
        q.labels,
        vec![
            ("queue".into(), "sink.test/ip1".into()),
            ("domain".into(), "sink.test".into()),
            ("vmta".into(), "ip1".into())
        ]
    );
    assert_eq!(q.value, 0.0);
}

#[test]
fn pause_resume_mode_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (spate, smtp, admin) = start(dir.path(), sink.addr);
    // A pause given before its queue exists holds the queue once mail makes it.
    let a = post(admin, "/api/v1/queues/sink.test%2F%2A/pause", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["queues"], 0);
    send(smtp, 1, "first");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sink.messages().is_empty(),
        "a queue paused in advance delivered"
    );
    assert_eq!(queue(admin, "sink.test/ip1").unwrap()["paused"], true);
    let a = post(admin, "/api/v1/queues/sink.test%2F%2A/resume", "");
    assert_eq!(a.json()["queues"], 1, "{}", a.body);
    assert_eq!(
        sink.wait_for(1, Duration::from_secs(15)).len(),
        1,
        "{}",
        spate.log_text()
    );

    // Pause (selector with a literal slash and a wildcard): nothing leaves.
    let a = post(admin, "/api/v1/queues/sink.test/*/pause", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["queues"], 1);
    assert_eq!(queue(admin, "sink.test/ip1").unwrap()["paused"], true);
    send(smtp, 2, "paused");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.messages().len(), 1, "a paused queue delivered");
    let q = queue(admin, "sink.test/ip1").unwrap();
    assert_eq!(
        q["queued"].as_u64().unwrap() + q["deferred"].as_u64().unwrap(),
        2,
        "{q}"
    );

    // Resume: they go.
    assert_eq!(
        post(admin, "/api/v1/queues/sink.test%2Fip1/resume", "").status,
        200
    );
    assert_eq!(
        sink.wait_for(3, Duration::from_secs(15)).len(),
        3,
        "{}",
        spate.log_text()
    );

    // Mode.
    let a = post(
        admin,
        "/api/v1/queues/%2A%2Fip1/mode",
        r#"{"mode":"backoff"}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(queue(admin, "sink.test/ip1").unwrap()["mode"], "backoff");
    assert_eq!(
        post(
            admin,
            "/api/v1/queues/sink.test%2Fip1/mode",
            r#"{"mode":"normal"}"#
        )
        .status,
        200
    );
    assert_eq!(queue(admin, "sink.test/ip1").unwrap()["mode"], "normal");

    // Delete: pause, queue two, delete them: bounced as admin-deleted.
    assert_eq!(
        post(admin, "/api/v1/queues/sink.test%2Fip1/pause", "").status,
        200
    );
    send(smtp, 2, "doomed");
    let a = http(
        admin,
        "DELETE",
        "/api/v1/queues/sink.test%2Fip1/messages",
        Some(TOKEN),
        "",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["deleted_recipients"], 2, "{}", a.body);
    let q = queue(admin, "sink.test/ip1").unwrap();
    assert_eq!(q["queued"], 0, "{q}");
    assert_eq!(
        post(admin, "/api/v1/queues/sink.test%2Fip1/resume", "").status,
        200
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.messages().len(), 3, "deleted mail was delivered");
    let mut bounces = Vec::new();
    for _ in 0..50 {
        let acct = std::fs::read_to_string(dir.path().join("acct.csv")).unwrap_or_default();
        bounces = acct
            .lines()
            .filter(|l| l.starts_with("b,"))
            .map(str::to_string)
            .collect();
        if bounces.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(bounces.len(), 2, "{bounces:?}");
    assert!(
        bounces.iter().all(|l| l.contains("admin-deleted")),
        "{bounces:?}"
    );
    let s = get(admin, "/api/v1/status").json();
    assert_eq!(s["totals"]["bounced"], 2, "{s}");
    let m = parse_prometheus(&http(admin, "GET", "/metrics", None, "").body).unwrap();
    let by_cat = |cat: &str| {
        m.iter()
            .find(|x| {
                x.name == "spate_bounced_by_category_total"
                    && x.labels == [("category".to_string(), cat.to_string())]
            })
            .map(|x| x.value)
    };
    assert_eq!(by_cat("admin-deleted"), Some(2.0));
    assert_eq!(by_cat("bad-mailbox"), Some(0.0));
}

#[test]
fn reload_valid_then_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (smtp, admin) = (addr(), addr());
    let base = config(dir.path(), smtp, sink.addr, admin, "");
    let spate = Spate::start(dir.path(), &base, smtp);
    wait_admin(admin);
    let has_vmta = |name: &str| {
        get(admin, "/api/v1/status").json()["vmtas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["vmta"] == name)
    };
    assert!(!has_vmta("ip3"));
    let path = dir.path().join("spate.toml");
    std::fs::write(
        &path,
        format!("{base}\n[vmta.ip3]\nsource_ip = \"127.0.0.4\"\n"),
    )
    .unwrap();
    let a = post(admin, "/api/v1/reload", "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.json()["summary"].as_str().unwrap().contains("vmta"),
        "{}",
        a.body
    );
    assert!(has_vmta("ip3"), "reload applied");

    std::fs::write(
        &path,
        format!("{base}\n[vmta.ip3]\nsource_ip = \"not an ip\"\n"),
    )
    .unwrap();
    let a = post(admin, "/api/v1/reload", "");
    assert_eq!(a.status, 422, "{}", a.body);
    let errors = a.json()["errors"].clone();
    assert!(errors.to_string().contains("source_ip"), "{errors}");
    assert!(has_vmta("ip3"), "old configuration kept");
    // Mail still flows on the kept configuration.
    send(smtp, 1, "after");
    assert_eq!(
        sink.wait_for(1, Duration::from_secs(15)).len(),
        1,
        "{}",
        spate.log_text()
    );
}

fn ctl(admin: SocketAddr, token: Option<&std::path::Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spate"));
    cmd.arg("ctl").arg("--admin").arg(format!("http://{admin}"));
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_commands_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (spate, smtp, admin) = start(dir.path(), sink.addr);
    send(smtp, 1, "ctl");
    assert_eq!(
        sink.wait_for(1, Duration::from_secs(15)).len(),
        1,
        "{}",
        spate.log_text()
    );
    wait_delivered(admin, 1);
    let token = dir.path().join("token");
    let t = Some(token.as_path());

    let (code, out, err) = ctl(admin, t, &["queues", "--sort", "name"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("QUEUE") && out.contains("sink.test/ip1"),
        "{out}"
    );
    let (code, out, _) = ctl(admin, t, &["--json", "status"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["delivered"], 1);
    let (code, out, _) = ctl(admin, t, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("delivered 1"), "{out}");

    let (code, out, err) = ctl(admin, t, &["mode", "sink.test/*", "backoff"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 queue(s)"), "{out}");
    let (_, out, _) = ctl(admin, t, &["queues"]);
    assert!(out.contains("backoff"), "{out}");
    let (code, _, err) = ctl(admin, t, &["mode", "nosuch.test/ip1", "normal"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, out, err) = ctl(admin, t, &["pause", "nosuch.test/ip1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 queue(s)") && out.contains("later"), "{out}");
    let (code, _, err) = ctl(admin, t, &["resume", "nosuch.test/ip1"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ctl(admin, t, &["delete", "--queue", "*/ip1"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 0"), "{out}");
    let (code, out, err) = ctl(admin, t, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("reloaded"), "{out}");

    // Wrong or missing token, server down.
    let (code, _, err) = ctl(admin, None, &["queues"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("401: wrong or missing token (--token-file)"),
        "{err}"
    );
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "nope").unwrap();
    let (code, _, err) = ctl(admin, Some(&bad), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (code, _, err) = ctl(down, t, &["status"]);
    assert_eq!(code, 69);
    assert!(
        err.contains(&format!(
            "cannot connect to the admin API at http://{down} (is spate running?)"
        )),
        "{err}"
    );
}
