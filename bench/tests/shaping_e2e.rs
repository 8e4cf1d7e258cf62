//! Traffic shaping end to end: spate against a throttling sink.
//!
//! The sink answers `421 4.7.0 [TSS04]` (Yahoo's deferral) to a client IP
//! that exceeds its per-minute budget. spate must put that queue
//! (`sink.test/ip1`) into Backoff and slow to the backoff rate, while the
//! other vMTA's queue to the same sink goes on at full rate; and once the
//! throttling stops and the backoff interval ends, delivery recovers.

mod common;
use common::{Proc, free_port, run_spate};

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use spate_bench::script::Script;
use spate_bench::sink::{SinkConfig, spawn};

fn start_spate(dir: &std::path::Path, sink: SocketAddr) -> (Proc, SocketAddr) {
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        r#"
[spool]
path = "{spool}"
segment_size = "1MiB"
[runtime]
shards = 2
pin_cores = false
[admin]
listen = "127.0.0.1:{admin}"
[dns]
nameservers = ["127.0.0.1:9"]
[[listener]]
address = "{smtp}"
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
process_x_virtual_mta = true
[vmta.ip1]
source_ip = "127.0.0.2"
[vmta.ip2]
source_ip = "127.0.0.3"
[domain."*"]
retry_after = ["1s"]
max_msg_per_connection = 1000
backoff_max_msg_rate = "6/m"
backoff_retry_after = "1s"
backoff_to_normal_after = "2s"
backoff_to_normal_after_delivery = false
backoff_ramp_up = "0s"
smtp_pattern_list = "tss"
[domain."sink.test"]
smtp_hosts = ["{sink}"]
[smtp_pattern_list.tss]
rules = [ {{ reply = '\[TSS0[45]\]', mode = "backoff" }} ]
"#,
        spool = dir.join("spool").display(),
        admin = free_port(),
    );
    (run_spate(dir, &config, smtp), smtp)
}

/// Sends `n` messages through `vmta` on one pipelined-free connection.
fn inject(smtp: SocketAddr, vmta: &str, n: usize) {
    let stream = TcpStream::connect(smtp).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut reply = || loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line;
        }
    };
    assert!(reply().starts_with("220"));
    w.write_all(b"EHLO t\r\n").unwrap();
    assert!(reply().starts_with("250"));
    for i in 0..n {
        w.write_all(
            format!("MAIL FROM:<a@t.test>\r\nRCPT TO:<u{i}@sink.test>\r\nDATA\r\n").as_bytes(),
        )
        .unwrap();
        for _ in 0..3 {
            reply();
        }
        w.write_all(format!("X-Virtual-MTA: {vmta}\r\nSubject: {i}\r\n\r\nx\r\n.\r\n").as_bytes())
            .unwrap();
        assert!(reply().starts_with("250"));
    }
    w.write_all(b"QUIT\r\n").unwrap();
}

fn count(sink: &spate_bench::sink::SinkHandle, ip: &str) -> u64 {
    sink.report()
        .per_client_ip
        .get(ip)
        .map_or(0, |c| c.messages)
}

#[test]
fn throttled_ip_backs_off_while_the_other_vmta_continues() {
    let dir = tempfile::tempdir().unwrap();
    let script = Script::parse(
        "[[throttle]]\nmessages_per_minute = 10\nreply = \"421 4.7.0 [TSS04] Messages from {ip} temporarily deferred\"\n",
    )
    .unwrap();
    let mut cfg = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    cfg.script = script;
    let sink = spawn(cfg).unwrap();
    let (_spate, smtp) = start_spate(dir.path(), sink.addrs[0]);

    inject(smtp, "ip1", 30);
    inject(smtp, "ip2", 8);
    std::thread::sleep(Duration::from_secs(6));
    let ip1 = count(&sink, "127.0.0.2");
    let ip2 = count(&sink, "127.0.0.3");
    // ip2 stayed under the sink's budget: everything arrived at full rate.
    assert_eq!(ip2, 8, "ip2 should not be slowed");
    // ip1 got its 10 through, then TSS04: backoff at 6/min allows at most
    // a couple more attempts in 6 s (and those are throttled too).
    assert!(ip1 >= 10, "ip1 delivered {ip1}");
    assert!(ip1 <= 11, "ip1 should have backed off, delivered {ip1}");
}

#[test]
fn rate_recovers_after_throttling_stops() {
    let dir = tempfile::tempdir().unwrap();
    // Everyone is told TSS04 for the first 3 seconds, then accepted.
    let script = Script::parse(
        "[[window]]\nstart_s = 0\nend_s = 3\nreply = \"421 4.7.0 [TSS04] Messages from {ip} temporarily deferred\"\n",
    )
    .unwrap();
    // The window counts from the sink's start: start spate first, then the
    // sink on the port spate routes to, then inject at once.
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_spate, smtp) = start_spate(dir.path(), sink_addr);
    let mut cfg = SinkConfig::accept_all(sink_addr);
    cfg.script = script;
    let sink = spawn(cfg).unwrap();
    inject(smtp, "ip1", 20);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(&sink, "127.0.0.2"),
        0,
        "nothing passes during the window"
    );
    // After the window and backoff_to_normal_after (2 s), Normal mode and
    // its unlimited rate deliver the rest.
    assert!(
        sink.wait_for_messages(20, Duration::from_secs(20)),
        "delivered {}",
        sink.messages()
    );
}
