//! End to end on loopback: the real `spate` binary between an SMTP client
//! and a sink, with vMTAs bound to distinct 127.0.0.x source addresses.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::sink::Sink;
use support::spate_proc::{Client, Spate, free_port};

fn config(dir: &std::path::Path, smtp: SocketAddr, sink: SocketAddr, extra: &str) -> String {
    let head = support::config::head(
        dir,
        smtp,
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
    );
    let acct = support::config::accounting(dir);
    format!(
        r#"{head}
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
process_x_virtual_mta = true
process_x_job = true
default_vmta = "pool1"

[vmta.ip1]
source_ip = "127.0.0.2"
ehlo = "mta1.relay.test"

[vmta.ip2]
source_ip = "127.0.0.3"
ehlo = "mta2.relay.test"

[pool.pool1]
vmtas = ["ip1", "ip2"]
weights = [3, 1]

[domain."*"]
retry_after = ["1s"]
bounce_after = "1h"

[domain."sink.test"]
smtp_hosts = ["{sink}"]
{acct}{extra}
"#,
    )
}

fn body(subject: &str) -> String {
    format!("From: a@sink.test\r\nTo: b@sink.test\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

/// A sink, and a spate with the test configuration (spool in `dir`)
/// relaying to it; spate's SMTP address.
fn start_relay(dir: &Path) -> (Sink, SocketAddr, Spate) {
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spate = Spate::start(dir, &config(dir, smtp, sink.addr, ""), smtp);
    (sink, smtp, spate)
}

#[test]
fn pooled_vmtas_send_from_their_ips_and_ehlo_names() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, smtp, spate) = start_relay(dir.path());

    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for i in 0..8 {
        let r = c.message("a@sink.test", &["b@sink.test"], &body(&format!("pool {i}")));
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
    // X-Virtual-MTA picks a vMTA directly and is removed; X-Job too.
    let r = c.message(
        "a@sink.test",
        &["c@sink.test"],
        "X-Virtual-MTA: ip2\r\nX-Job: camp-42\r\nSubject: direct\r\n\r\nHi.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    // An unknown vMTA is refused at the end of DATA with 550 5.3.5.
    let r = c.message(
        "a@sink.test",
        &["d@sink.test"],
        "X-Virtual-MTA: nope\r\n\r\nx\r\n",
    );
    assert!(r.starts_with("550 5.3.5"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));

    let got = sink.wait_for(9, Duration::from_secs(20));
    assert_eq!(got.len(), 9, "log:\n{}", spate.log_text());
    let pooled: Vec<_> = got
        .iter()
        .filter(|m| m.rcpts == ["<b@sink.test>"])
        .collect();
    let ip1 = pooled
        .iter()
        .filter(|m| m.peer.to_string() == "127.0.0.2")
        .count();
    let ip2 = pooled
        .iter()
        .filter(|m| m.peer.to_string() == "127.0.0.3")
        .count();
    assert_eq!((ip1, ip2), (6, 2), "pool weights 3:1 over 8 messages");
    for m in &pooled {
        let expect = if m.peer.to_string() == "127.0.0.2" {
            "mta1.relay.test"
        } else {
            "mta2.relay.test"
        };
        assert_eq!(m.helo, expect);
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.starts_with("Received: from client.test"), "{text}");
    }
    let direct = got
        .iter()
        .find(|m| m.rcpts == ["<c@sink.test>"])
        .expect("direct message");
    assert_eq!(direct.peer.to_string(), "127.0.0.3");
    let text = String::from_utf8_lossy(&direct.data);
    assert!(
        !text.contains("X-Virtual-MTA") && !text.contains("X-Job"),
        "{text}"
    );

    // Accounting: one `d` line per delivered recipient, with the job id.
    std::thread::sleep(Duration::from_millis(1500));
    let acct = std::fs::read_to_string(dir.path().join("acct.csv")).unwrap();
    assert!(
        acct.starts_with("type,timeLogged,timeQueued,orig,rcpt"),
        "{acct}"
    );
    assert_eq!(
        acct.lines().filter(|l| l.starts_with("d,")).count(),
        9,
        "{acct}"
    );
    assert!(
        acct.lines()
            .any(|l| l.starts_with("d,") && l.contains("camp-42")),
        "{acct}"
    );
}

#[test]
fn bounce_makes_a_dsn_and_tempfail_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, smtp, spate) = start_relay(dir.path());

    let mut c = Client::connect(smtp);
    c.cmd("EHLO client.test");
    let r = c.message(
        "sender@sink.test",
        &["permfail+x@sink.test"],
        &body("will bounce"),
    );
    assert!(r.starts_with("250"), "{r}");
    let r = c.message(
        "sender@sink.test",
        &["tempfail-once+y@sink.test"],
        &body("retried"),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");

    // The retried message arrives after its 1 s retry; the DSN for the
    // bounce goes to the sender, from the null reverse path.
    let got = sink.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", spate.log_text());
    let dsn = got
        .iter()
        .find(|m| m.mail_from == "<>")
        .expect("a DSN from <>");
    assert_eq!(dsn.rcpts, ["<sender@sink.test>"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("5.1.1"), "{text}");
    assert!(
        got.iter()
            .any(|m| m.rcpts == ["<tempfail-once+y@sink.test>"])
    );

    std::thread::sleep(Duration::from_millis(1500));
    let acct = std::fs::read_to_string(dir.path().join("acct.csv")).unwrap();
    let bounce = acct
        .lines()
        .find(|l| l.starts_with("b,"))
        .expect("a b record");
    assert!(bounce.contains("bad-mailbox"), "{bounce}");
    assert!(
        acct.lines()
            .any(|l| l.starts_with("t,") && l.contains("tempfail-once")),
        "{acct}"
    );
}

#[test]
fn open_relay_is_refused_for_unknown_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, smtp, _spate) = start_relay(dir.path());
    let mut c = Client::connect_from(Some("127.0.0.9"), smtp);
    c.cmd("EHLO stranger.test");
    assert!(c.cmd("MAIL FROM:<x@stranger.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<victim@sink.test>");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // AUTH is not offered without TLS.
    let ehlo = {
        c.send("EHLO stranger.test\r\n");
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let r = c.reply();
            line.push_str(&r);
            all.push_str(&line);
            if r.starts_with("250 ") {
                break;
            }
        }
        all
    };
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
}

#[test]
fn acknowledged_mail_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // No sink yet: deliveries fail to connect and stay queued.
    let dead_sink: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut spate = Spate::start(dir.path(), &config(dir.path(), smtp, dead_sink, ""), smtp);
    let mut c = Client::connect(smtp);
    c.cmd("EHLO client.test");
    let mut acked = 0;
    for i in 0..20 {
        let r = c.message(
            "a@sink.test",
            &[&format!("r{i}@sink.test")],
            &body(&format!("durable {i}")),
        );
        if r.starts_with("250") {
            acked += 1;
        }
    }
    assert_eq!(acked, 20);
    spate.kill9();

    // Restart with a live sink: every acknowledged message arrives.
    let sink = Sink::start();
    let spate = Spate::start(dir.path(), &config(dir.path(), smtp, sink.addr, ""), smtp);
    let got = sink.wait_for(20, Duration::from_secs(20));
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 20, "log:\n{}", spate.log_text());
}

#[test]
fn sigterm_exits_zero_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, smtp, mut spate) = start_relay(dir.path());
    let mut c = Client::connect(smtp);
    c.cmd("EHLO client.test");
    let start = std::time::Instant::now();
    assert_eq!(spate.terminate(), Some(0), "log:\n{}", spate.log_text());
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_long_deferred_message_does_not_pin_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config(dir.path(), smtp, sink.addr, "").replace("shards = 2", "shards = 1");
    let spate = Spate::start(dir.path(), &cfg, smtp);
    let spool = dir.path().join("spool");
    let segments = || {
        let mut v: Vec<String> = std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    };
    let mut c = Client::connect(smtp);
    c.cmd("EHLO client.test");
    // First into the first segment: a recipient that is always deferred.
    let r = c.message("a@sink.test", &["tempfail+stuck@sink.test"], &body("stuck"));
    assert!(r.starts_with("250"), "{r}");
    let first = segments().first().cloned().expect("a segment");
    // Then enough delivered mail to seal that 1 MiB segment.
    let filler = format!("Subject: filler\r\n\r\n{}\r\n", "y".repeat(4000));
    for i in 0..300 {
        let r = c.message("a@sink.test", &[&format!("f{i}@sink.test")], &filler);
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(sink.wait_for(300, Duration::from_secs(30)).len() >= 300);
    assert!(
        segments().iter().any(|s| *s > first),
        "the filler should have rolled over to a new segment: {:?}",
        segments()
    );
    // The stuck recipient's next deferral rewrites it forward; the first
    // segment is then reclaimed although the message is still queued.
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while segments().contains(&first) {
        assert!(
            std::time::Instant::now() < end,
            "{first} still pinned by one deferred message: {:?}\n{}",
            segments(),
            spate.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !sink
            .messages()
            .iter()
            .any(|m| m.rcpts == ["<tempfail+stuck@sink.test>"])
    );
}

#[test]
fn notify_delay_sends_one_delay_notice() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = format!(
        "[domain.\"slow.test\"]\nsmtp_hosts = [\"{}\"]\ndsn_delay_after = \"1s\"\n",
        sink.addr
    );
    let cfg = config(dir.path(), smtp, sink.addr, &extra);
    let mut spate = Spate::start(dir.path(), &cfg, smtp);
    let mut c = Client::connect(smtp);
    c.cmd("EHLO client.test");
    assert!(
        c.cmd("MAIL FROM:<sender@sink.test> ENVID=env42")
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<tempfail+late@slow.test> NOTIFY=DELAY,FAILURE")
            .starts_with("250")
    );
    // A second recipient without NOTIFY=DELAY gets no delay notice.
    assert!(
        c.cmd("RCPT TO:<tempfail+quiet@slow.test>")
            .starts_with("250")
    );
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&body("slow"));
    c.send(".\r\n");
    assert!(c.reply().starts_with("250"));
    // Retries every second; after 1 s in the queue the first deferral sends
    // the notice, and later ones do not repeat it.
    let got = sink.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "{}", spate.log_text());
    std::thread::sleep(Duration::from_secs(3));
    let got = sink.messages();
    assert_eq!(got.len(), 1, "exactly one delay notice: {got:?}");
    let text = String::from_utf8_lossy(&got[0].data);
    assert_eq!(got[0].mail_from, "<>");
    assert_eq!(got[0].rcpts, ["<sender@sink.test>"]);
    assert!(text.contains("Action: delayed"), "{text}");
    assert!(text.contains("tempfail+late@slow.test"), "{text}");
    assert!(!text.contains("tempfail+quiet@slow.test"), "{text}");
    assert!(text.contains("Original-Envelope-Id: env42"), "{text}");
    assert!(text.contains("Will-Retry-Until:"), "{text}");

    // The notice is part of the recorded state: after kill -9 and a restart
    // the recipient keeps being retried, and no second notice goes out.
    spate.kill9();
    let spate = Spate::start(dir.path(), &cfg, smtp);
    std::thread::sleep(Duration::from_secs(4));
    let got = sink.messages();
    assert_eq!(
        got.len(),
        1,
        "a restart sent another delay notice ({} messages at the sink)\n{}",
        got.len(),
        spate.log_text()
    );
}

/// Bodies larger than the delivery's coalescing size go out from the
/// spool's map in vectored writes: intact over BDAT and over DATA, where
/// every line starting with a dot is stuffed again (thousands of pieces,
/// more than one write's worth).
#[test]
fn large_bodies_arrive_intact_over_bdat_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let extra = format!(
        "\n[domain.\"data.test\"]\nsmtp_hosts = [\"{}\"]\nuse_chunking = false\n",
        sink.addr
    );
    // Segments large enough for the 2 MB message.
    let text = config(dir.path(), smtp, sink.addr, &extra)
        .replace("segment_size = \"1MiB\"", "segment_size = \"8MiB\"");
    assert!(text.contains("segment_size = \"8MiB\""));
    let spate = Spate::start(dir.path(), &text, smtp);

    let mut body = String::from("From: a@sink.test\r\nSubject: large\r\n\r\n");
    for i in 0..3000 {
        if i % 2 == 0 {
            body.push_str(&format!(".dot line {i} {}\r\n", "x".repeat(60)));
        } else {
            body.push_str(&format!("plain line {i} {}\r\n", "y".repeat(60)));
        }
    }
    assert!(body.len() > 200 * 1024);
    // Over 2 MB with a dot line every 200 lines: over DATA, writes end at
    // about 1 MiB before they reach 256 buffers.
    let mut huge = String::from("From: a@sink.test\r\nSubject: huge\r\n\r\n");
    for i in 0..28_000 {
        let dot = if i % 200 == 0 { "." } else { "" };
        huge.push_str(&format!("{dot}line {i} {}\r\n", "w".repeat(66)));
    }
    assert!(huge.len() > 2 * 1024 * 1024);
    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for sent in [&body, &huge] {
        // The client stuffs the dots; spate stores the body without them.
        let stuffed = sent.replace("\r\n.", "\r\n..");
        for to in ["b@sink.test", "b@data.test"] {
            let r = c.message("a@sink.test", &[to], &stuffed);
            assert!(r.starts_with("250"), "{to}: {r}");
        }
    }
    assert!(c.cmd("QUIT").starts_with("221"));

    let got = sink.wait_for(4, Duration::from_secs(30));
    assert_eq!(got.len(), 4, "log:\n{}", spate.log_text());
    for m in &got {
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.starts_with("Received: "), "{:?}", m.rcpts);
        let sent = if text.contains("Subject: huge") {
            &huge
        } else {
            &body
        };
        assert!(
            text.ends_with(sent.as_str()) && text.len() - sent.len() < 1024,
            "{:?}: {} bytes against {} sent",
            m.rcpts,
            text.len(),
            sent.len()
        );
    }
}

/// Bodies received over BDAT are stored as sent, bare line ends included;
/// delivered over BDAT they arrive with CRLF line ends and the size BDAT
/// announced (the one scan per body that sizes it also shapes the encoding:
/// a scan of another transaction's body would break the framing). Small and
/// large (vectored) bodies, queued together so that deliveries pipeline.
#[test]
fn bare_line_ends_received_over_bdat_arrive_as_crlf() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, smtp, spate) = start_relay(dir.path());

    let mut large = String::from("Subject: large\n\n");
    while large.len() < 150 * 1024 {
        large.push_str("a line that ends bare\nand one that ends in CRLF\r\n");
    }
    let bodies = [
        "Subject: small\n\nbare\nline\r\nno end".to_string(),
        large,
        "Subject: crlf\r\n\r\nclean \u{e9}\r\n".to_string(),
    ];
    let mut c = Client::connect(smtp);
    c.send("EHLO client.test\r\n");
    let ehlo = c.reply_lines();
    assert!(ehlo.iter().any(|l| l.contains("CHUNKING")), "{ehlo:?}");
    for body in &bodies {
        c.send(&format!(
            "MAIL FROM:<a@sink.test>\r\nRCPT TO:<b@sink.test>\r\nBDAT {} LAST\r\n{body}",
            body.len()
        ));
        for _ in 0..3 {
            let r = c.reply();
            assert!(r.starts_with("250"), "{r}");
        }
    }
    assert!(c.cmd("QUIT").starts_with("221"));

    let got = sink.wait_for(3, Duration::from_secs(30));
    assert_eq!(got.len(), 3, "log:\n{}", spate.log_text());
    for body in &bodies {
        let want = body.replace("\r\n", "\n").replace('\n', "\r\n");
        let want = if want.ends_with("\r\n") {
            want
        } else {
            want + "\r\n"
        };
        let subject = body.lines().next().unwrap();
        let m = got
            .iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(subject))
            .unwrap_or_else(|| panic!("{subject} not delivered"));
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.ends_with(want.as_str()) && text.len() - want.len() < 1024,
            "{subject}: {} bytes against {} expected",
            text.len(),
            want.len()
        );
    }
}
