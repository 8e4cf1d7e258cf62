//! Pipelined outbound transactions settle per message, end to end with the
//! real binary. The test sink offers PIPELINING and CHUNKING, so with the
//! default `max_transactions_in_flight` one connection has several
//! transactions in flight, each led by RSET. A paused queue collects
//! messages whose single recipients the sink accepts, refuses with 550 or
//! refuses with 451, mixed so that every outcome follows every other one;
//! with `max_smtp_out = 1` the resume sends them all over one connection.
//! Each message must get its own outcome: delivered once with its own
//! body, bounced with a DSN naming it, or deferred and still queued;
//! nothing lost, nothing twice. (The sink is tests/support's, which
//! answers `permfail+` and `tempfail+` local parts like the bench sink's
//! script.) The same batch with
//! `max_transactions_in_flight = 1` (one transaction per round trip) must
//! end the same way.

mod admin_support;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use admin_support::{get, post, queue, start_with};
use support::sink::{Received, Sink};
use support::spate_proc::{Client, wait_until};

const SENDER: &str = "sender@sink.test";
const QUEUE: &str = "sink.test/ip1";
const QUEUE_PATH: &str = "sink.test%2Fip1";

/// What the sink does with each message's recipient, in queue order:
/// `d` accepted, `b` refused 550 5.1.1 (`permfail+`), `t` refused 451 4.3.0
/// (`tempfail+`). "ddbdtbbttd" is a de Bruijn sequence: every outcome
/// follows every outcome (a refused transaction before an accepted one, a
/// refusal before a refusal of the other kind, ...). Twice, so the batch
/// is longer than the default window of 8 in flight.
const PLAN: &str = "ddbdtbbttdddbdtbbttd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    Bounced,
    Deferred,
}

/// Message `i`'s recipient and what must become of it.
fn recipient(i: usize) -> (String, Fate) {
    match PLAN.as_bytes()[i] {
        b'd' => (format!("ok{i}@sink.test"), Fate::Delivered),
        b'b' => (format!("permfail+{i}@sink.test"), Fate::Bounced),
        _ => (format!("tempfail+{i}@sink.test"), Fate::Deferred),
    }
}

fn recipients(fate: Fate) -> Vec<(usize, String)> {
    (0..PLAN.len())
        .map(|i| (i, recipient(i)))
        .filter(|(_, (_, f))| *f == fate)
        .map(|(i, (r, _))| (i, r))
        .collect()
}

fn subject(i: usize) -> String {
    format!("Subject: pipelined message {i}\r\n")
}

fn body(i: usize) -> String {
    format!("This is the body of message {i} and no other.\r\n")
}

/// `[vmta.ip1.domain."sink.test"]`: one connection, no retry during the
/// test (a deferral is attempted once), and `in_flight` when given.
fn extra(in_flight: Option<u32>) -> String {
    let mut s = String::from(
        "\n[vmta.ip1.domain.\"sink.test\"]\nmax_smtp_out = 1\nretry_after = [\"1h\"]\n",
    );
    if let Some(n) = in_flight {
        s.push_str(&format!("max_transactions_in_flight = {n}\n"));
    }
    s
}

/// The accounting file's records as (type, rcpt, dsnStatus); the fields
/// up to dsnStatus never hold a comma here.
fn accounting(dir: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(dir.join("acct.csv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert!(f.len() >= 8, "short accounting line {l:?}");
            (f[0].to_string(), f[4].to_string(), f[7].to_string())
        })
        .collect()
}

fn status_totals(admin: SocketAddr) -> serde_json::Value {
    let a = get(admin, "/api/v1/status");
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["totals"].clone()
}

/// Runs the batch through one connection and checks every outcome;
/// returns the most transactions the sink saw in flight at once.
fn run_batch(in_flight: Option<u32>) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let (spate, smtp, admin) = start_with(dir.path(), sink.addr, &extra(in_flight));
    let log = || spate.log_text();

    // Paused: the whole batch waits in the queue, so the resume finds it
    // all ready at once.
    let a = post(admin, &format!("/api/v1/queues/{QUEUE_PATH}/pause"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for i in 0..PLAN.len() {
        let (rcpt, _) = recipient(i);
        let data = format!(
            "From: {SENDER}\r\nTo: {rcpt}\r\n{}Message-ID: <pipelined-{i}@client.test>\r\n\r\n{}",
            subject(i),
            body(i)
        );
        let r = c.message(SENDER, &[&rcpt], &data);
        assert!(r.starts_with("250"), "message {i}: {r}");
    }
    assert!(c.cmd("QUIT").starts_with("221"));
    wait_until(
        "the batch queued on the paused queue",
        Duration::from_secs(10),
        || queue(admin, QUEUE).is_some_and(|q| q["queued"].as_u64() == Some(PLAN.len() as u64)),
        log,
    );
    let q = queue(admin, QUEUE).unwrap();
    assert_eq!(q["paused"], true, "{q}");
    assert_eq!(sink.connections(), 0, "a paused queue connected");

    let a = post(admin, &format!("/api/v1/queues/{QUEUE_PATH}/resume"), "");
    assert_eq!(a.status, 200, "{}", a.body);

    let delivered = recipients(Fate::Delivered);
    let bounced = recipients(Fate::Bounced);
    let deferred = recipients(Fate::Deferred);
    // Every recipient settled (accounting is written asynchronously), and
    // every DSN for a bounce arrived.
    wait_until(
        "a record for every recipient and every DSN at the sink",
        Duration::from_secs(15),
        || {
            let acct = accounting(dir.path());
            let settled = (0..PLAN.len()).all(|i| {
                let (rcpt, _) = recipient(i);
                acct.iter().any(|(_, r, _)| *r == rcpt)
            });
            let dsn_records = acct.iter().filter(|(_, r, _)| r == SENDER).count();
            settled
                && dsn_records >= bounced.len()
                && sink.messages().len() >= delivered.len() + bounced.len()
        },
        log,
    );
    // Anything sent twice or settled twice would show up by now.
    std::thread::sleep(Duration::from_millis(500));

    // The sink: each accepted message exactly once, with its own content.
    let got = sink.messages();
    let (originals, dsns): (Vec<&Received>, Vec<&Received>) = got
        .iter()
        .partition(|m| m.mail_from == format!("<{SENDER}>"));
    let mut seen: Vec<String> = originals.iter().flat_map(|m| m.rcpts.clone()).collect();
    seen.sort();
    let mut want: Vec<String> = delivered.iter().map(|(_, r)| format!("<{r}>")).collect();
    want.sort();
    assert_eq!(
        seen,
        want,
        "the sink must get exactly the accepted messages, each once; log:\n{}",
        log()
    );
    for m in &originals {
        let (i, _) = delivered
            .iter()
            .find(|(_, r)| m.rcpts == [format!("<{r}>")])
            .unwrap();
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.contains(&subject(*i)) && text.contains(&body(*i)),
            "message {i} arrived with another message's content: {text}"
        );
    }

    // One DSN per bounced message, to the sender, naming its own recipient
    // and carrying its own headers.
    assert_eq!(
        dsns.len(),
        bounced.len(),
        "one DSN per bounce: {dsns:#?}\nlog:\n{}",
        log()
    );
    let mut named: Vec<usize> = Vec::new();
    for dsn in &dsns {
        assert_eq!(dsn.mail_from, "<>", "{dsn:?}");
        assert_eq!(dsn.rcpts, [format!("<{SENDER}>")], "{dsn:?}");
        let text = String::from_utf8_lossy(&dsn.data);
        assert!(text.contains("Action: failed"), "{text}");
        assert!(text.contains("5.1.1"), "{text}");
        let about: Vec<usize> = (0..PLAN.len())
            .filter(|i| text.contains(&format!("Final-Recipient: rfc822; {}\r\n", recipient(*i).0)))
            .collect();
        assert_eq!(about.len(), 1, "a DSN must report one recipient: {text}");
        let i = about[0];
        assert_eq!(recipient(i).1, Fate::Bounced, "DSN for message {i}: {text}");
        assert!(
            text.contains(&subject(i)),
            "DSN for message {i} without its headers: {text}"
        );
        named.push(i);
    }
    named.sort();
    let bounced_ids: Vec<usize> = bounced.iter().map(|(i, _)| *i).collect();
    assert_eq!(named, bounced_ids, "each bounce gets its own DSN");

    // Accounting: exactly one record per recipient, of its own kind.
    let acct = accounting(dir.path());
    let mut by_rcpt: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (kind, rcpt, status) in &acct {
        by_rcpt
            .entry(rcpt.as_str())
            .or_default()
            .push((kind.as_str(), status.as_str()));
    }
    for i in 0..PLAN.len() {
        let (rcpt, fate) = recipient(i);
        let (kind, status) = match fate {
            Fate::Delivered => ("d", None),
            Fate::Bounced => ("b", Some("5.1.1")),
            Fate::Deferred => ("t", Some("4.3.0")),
        };
        let records = by_rcpt.get(rcpt.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            records.len(),
            1,
            "message {i} ({rcpt}, {fate:?}) must be settled exactly once: {records:?}\n{acct:#?}"
        );
        assert_eq!(
            records[0].0, kind,
            "message {i} ({rcpt}) settled as {:?}, expected {fate:?}\n{acct:#?}",
            records[0]
        );
        if let Some(status) = status {
            assert_eq!(records[0].1, status, "message {i} ({rcpt}): {records:?}");
        }
    }
    let dsn_records = by_rcpt.get(SENDER).cloned().unwrap_or_default();
    assert!(
        dsn_records.len() == bounced.len() && dsn_records.iter().all(|(k, _)| *k == "d"),
        "each DSN delivered once: {acct:#?}"
    );
    let planned = PLAN.len() + bounced.len();
    assert_eq!(acct.len(), planned, "no other records: {acct:#?}");

    // The deferred messages still wait in the queue, nothing else does.
    let q = queue(admin, QUEUE).expect("the queue");
    assert_eq!(q["paused"], false, "{q}");
    assert_eq!(q["queued"], 0, "{q}");
    assert_eq!(q["in_flight"], 0, "{q}");
    assert_eq!(q["deferred"], deferred.len() as u64, "{q}");
    let totals = status_totals(admin);
    assert_eq!(totals["bounced"], bounced.len() as u64, "{totals}");
    assert_eq!(totals["deferred"], deferred.len() as u64, "{totals}");
    assert_eq!(
        totals["delivered"],
        (delivered.len() + bounced.len()) as u64,
        "the accepted messages and the DSNs: {totals}"
    );

    // All of it went over the one connection max_smtp_out allows.
    assert_eq!(sink.connections(), 1, "log:\n{}", log());
    sink.max_mails_per_read()
}

#[test]
fn pipelined_batch_settles_each_message_on_its_own() {
    // The default max_transactions_in_flight (8).
    let in_flight = run_batch(None);
    assert!(
        (2..=8).contains(&in_flight),
        "the batch was not pipelined within the default window of 8: at most \
         {in_flight} transaction(s) reached the sink before a reply"
    );
}

#[test]
fn one_transaction_in_flight_settles_the_same_batch() {
    let in_flight = run_batch(Some(1));
    assert_eq!(
        in_flight, 1,
        "max_transactions_in_flight = 1 still sent a transaction before the previous reply"
    );
}
