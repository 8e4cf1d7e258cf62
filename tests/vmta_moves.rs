//! Moving queued messages between vMTAs, end to end on loopback with the
//! real binary: the operator's reroute (`spate ctl reroute`, surviving a
//! kill -9) and the evacuation of a pool member whose source IP a
//! `disable_source_ip` pattern rule stopped.

mod admin_support;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use admin_support::{get, queue, wait_admin};
use support::sink::Sink;
use support::spate_proc::{Client, Spate, free_port, wait_until};

const IP1: &str = "127.0.0.2";
const IP2: &str = "127.0.0.3";

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// vMTAs ip1 (127.0.0.2) and ip2 (127.0.0.3), pool1 of both; `sink.test`
/// goes to the sink with the pattern list `blocks` (TSS09 disables the
/// source IP for an hour).
fn config(
    dir: &std::path::Path,
    smtp: SocketAddr,
    admin: SocketAddr,
    sink: SocketAddr,
    default_vmta: &str,
) -> String {
    let head = support::config::head(dir, smtp, &format!("listen = \"{admin}\""));
    let acct = support::config::accounting(dir);
    format!(
        r#"{head}
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
process_x_virtual_mta = true
default_vmta = "{default_vmta}"

[vmta.ip1]
source_ip = "{IP1}"
ehlo = "mta1.relay.test"

[vmta.ip2]
source_ip = "{IP2}"
ehlo = "mta2.relay.test"

[pool.pool1]
vmtas = ["ip1", "ip2"]

[domain."*"]
retry_after = ["1s"]
bounce_after = "1h"

[domain."sink.test"]
smtp_hosts = ["{sink}"]
smtp_pattern_list = "blocks"

[smtp_pattern_list.blocks]
rules = [
  {{ reply = '\[TSS09\]', disable_source_ip = true, reenable_after = "1h" }},
]
{acct}"#,
    )
}

fn send(smtp: SocketAddr, messages: &[(&str, &str)]) {
    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for (rcpt, headers) in messages {
        let data = format!("{headers}From: a@sink.test\r\nSubject: {rcpt}\r\n\r\nHello.\r\n");
        let r = c.message("a@sink.test", &[rcpt], &data);
        assert!(r.starts_with("250"), "{r}");
    }
    c.cmd("QUIT");
}

/// Recipients held by queue `name` (queued, deferred, in flight).
fn held(admin: SocketAddr, name: &str) -> u64 {
    queue(admin, name).map_or(0, |q| {
        ["queued", "deferred", "in_flight"]
            .iter()
            .map(|k| q[k].as_u64().unwrap_or(0))
            .sum()
    })
}

fn ctl(admin: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["ctl", "--admin", &format!("http://{admin}")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn accounting(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("acct.csv")).unwrap_or_default()
}

#[test]
fn reroute_moves_deferred_mail_to_another_vmta_and_survives_a_restart() {
    // The two vMTAs live on different shards: moves cross the mesh.
    assert_ne!(
        spate::runtime::shard_for_vmta("ip1", 2),
        spate::runtime::shard_for_vmta("ip2", 2)
    );
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    // Both source IPs are refused for now: mail waits deferred.
    sink.refuse_from(ip(IP1), 451, (4, 7, 0), "try again later");
    sink.refuse_from(ip(IP2), 451, (4, 7, 0), "try again later");
    let (smtp, admin) = (addr(), addr());
    let cfg = config(dir.path(), smtp, admin, sink.addr, "ip1");
    let mut spate = Spate::start(dir.path(), &cfg, smtp);
    wait_admin(admin);
    let rcpts: Vec<String> = (0..5).map(|i| format!("r{i}@sink.test")).collect();
    let msgs: Vec<(&str, &str)> = rcpts.iter().map(|r| (r.as_str(), "")).collect();
    send(smtp, &msgs);
    wait_until(
        "5 deferrals on ip1",
        Duration::from_secs(15),
        || {
            let acct = accounting(dir.path());
            rcpts.iter().all(|r| {
                acct.lines()
                    .any(|l| l.starts_with("t,") && l.contains(r.as_str()))
            })
        },
        || spate.log_text(),
    );

    // Bad targets are refused with a clear error.
    let (code, _, err) = ctl(
        admin,
        &["reroute", "--queue", "sink.test/ip1", "--vmta", "nope"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"nope\" is not a configured vMTA"), "{err}");
    let (code, _, err) = ctl(
        admin,
        &["reroute", "--queue", "sink.test/ip1", "--vmta", "pool1"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is a pool"), "{err}");
    let a = admin_support::post(admin, "/api/v1/queues/sink.test%2Fip1/reroute", "");
    assert_eq!(a.status, 400, "{}", a.body);

    let (code, out, err) = ctl(
        admin,
        &[
            "--json",
            "reroute",
            "--queue",
            "sink.test/ip1",
            "--vmta",
            "ip2",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["vmta"], "ip2");
    // A message being retried at this instant moves once its attempt settles.
    let moved = v["moved_messages"].as_u64().unwrap();
    assert_eq!(moved + v["pending_messages"].as_u64().unwrap(), 5, "{out}");
    wait_until(
        "all 5 recipients on sink.test/ip2",
        Duration::from_secs(10),
        || held(admin, "sink.test/ip2") == 5 && held(admin, "sink.test/ip1") == 0,
        || spate.log_text(),
    );
    // Tried from ip2 now (its own deferrals, with ip2 in the accounting).
    wait_until(
        "a deferral on ip2",
        Duration::from_secs(10),
        || {
            accounting(dir.path())
                .lines()
                .any(|l| l.starts_with("t,") && l.contains(",ip2,"))
        },
        || spate.log_text(),
    );

    // The choice is durable: after kill -9 the mail is queued on ip2 again.
    spate.kill9();
    let spate = Spate::start(dir.path(), &cfg, smtp);
    wait_admin(admin);
    wait_until(
        "recovered mail on sink.test/ip2",
        Duration::from_secs(10),
        || held(admin, "sink.test/ip2") == 5,
        || spate.log_text(),
    );
    assert_eq!(held(admin, "sink.test/ip1"), 0);

    // ip1 is let through but the mail no longer goes there; ip2 then too.
    sink.accept_from(ip(IP1));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(sink.messages().is_empty(), "nothing may leave from ip1");
    sink.accept_from(ip(IP2));
    let got = sink.wait_for(5, Duration::from_secs(10));
    assert_eq!(got.len(), 5, "log:\n{}", spate.log_text());
    for m in &got {
        assert_eq!(m.peer, ip(IP2), "{m:?}");
        assert_eq!(m.helo, "mta2.relay.test");
    }
    let mut seen: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    seen.sort();
    let mut want: Vec<String> = rcpts.iter().map(|r| format!("<{r}>")).collect();
    want.sort();
    assert_eq!(seen, want, "each recipient exactly once");
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["totals"]["bounced"], 0);
}

#[test]
fn disabled_pool_member_hands_its_mail_to_the_other_member() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    sink.refuse_from(
        ip(IP1),
        553,
        (5, 7, 2),
        "[TSS09] All messages from 127.0.0.2 will be permanently deferred; Retrying will NOT succeed",
    );
    let (smtp, admin) = (addr(), addr());
    let cfg = config(dir.path(), smtp, admin, sink.addr, "pool1");
    let spate = Spate::start(dir.path(), &cfg, smtp);
    wait_admin(admin);
    // Six through the pool (three each way), and one sent to ip1 directly,
    // which must stay on ip1.
    let rcpts: Vec<String> = (0..6).map(|i| format!("p{i}@sink.test")).collect();
    let mut msgs: Vec<(&str, &str)> = rcpts.iter().map(|r| (r.as_str(), "")).collect();
    msgs.push(("direct@sink.test", "X-Virtual-MTA: ip1\r\n"));
    send(smtp, &msgs);

    let got = sink.wait_for(6, Duration::from_secs(15));
    assert_eq!(got.len(), 6, "log:\n{}", spate.log_text());
    for m in &got {
        assert_eq!(m.peer, ip(IP2), "{m:?}");
    }
    let mut seen: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    seen.sort();
    let mut want: Vec<String> = rcpts.iter().map(|r| format!("<{r}>")).collect();
    want.sort();
    assert_eq!(seen, want, "every pooled recipient exactly once");

    // ip1 was tried and refused (a transient record, not a bounce).
    std::thread::sleep(Duration::from_millis(1500));
    let acct = accounting(dir.path());
    assert!(
        acct.lines()
            .any(|l| l.starts_with("t,") && l.contains("TSS09") && l.contains(",ip1,")),
        "{acct}"
    );
    assert!(!acct.lines().any(|l| l.starts_with("b,")), "{acct}");
    // The direct message waits on ip1 for the re-enable.
    assert_eq!(held(admin, "sink.test/ip1"), 1, "{acct}");
    assert_eq!(sink.messages().len(), 6);
    let status = get(admin, "/api/v1/status").json();
    assert_eq!(status["totals"]["bounced"], 0);
}
