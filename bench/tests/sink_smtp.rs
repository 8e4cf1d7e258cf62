//! The sink's SMTP protocol, driven with raw bytes: the end of DATA only
//! at the start of a line (also when a line is split over reads), leading
//! periods removed from DATA lines but not from BDAT chunks, replies to
//! malformed MAIL and RCPT, the domainless `<Postmaster>` accepted, BDAT
//! refused by size before its bytes, DATA refused after a BDAT chunk, BDAT
//! with a malformed size refused with a hang-up, and STARTTLS when it is
//! not offered.

mod common;
use common::{exchange, read_reply};

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use spate_bench::sink::{MESSAGE_BYTES_MAX, SinkConfig, SinkHandle, SinkReport, spawn};

/// How long a test waits between two writes it wants read apart.
const PAUSE: Duration = Duration::from_millis(100);

fn sink() -> SinkHandle {
    spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap()
}

/// A plaintext client of the sink at `addr`, past the greeting.
struct Client(BufReader<TcpStream>);

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut c = Client(BufReader::new(tcp));
        assert!(c.reply().starts_with("220"));
        c
    }

    /// Connects and says EHLO.
    fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        assert!(c.say("EHLO client.test").starts_with("250"));
        c
    }

    fn reply(&mut self) -> String {
        read_reply(&mut self.0)
    }

    fn say(&mut self, line: &str) -> String {
        exchange(&mut self.0, &format!("{line}\r\n"))
    }

    /// Writes raw bytes, as they are.
    fn write(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).unwrap();
        self.0.get_mut().flush().unwrap();
    }

    /// MAIL and one RCPT, both accepted.
    fn envelope(&mut self) {
        assert!(self.say("MAIL FROM:<a@client.test>").starts_with("250"));
        assert!(self.say("RCPT TO:<b@example.test>").starts_with("250"));
    }

    /// DATA, then `pieces` written one at a time with a pause between them
    /// (so that the sink most likely reads them apart; the outcome must be
    /// the same when they arrive together); the reply to the message.
    fn data(&mut self, pieces: &[&[u8]]) -> String {
        assert!(self.say("DATA").starts_with("354"));
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(PAUSE);
            }
            self.write(piece);
        }
        self.reply()
    }

    /// True when the sink closed the connection (nothing more to read).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.0.read_to_end(&mut rest), Ok(0))
    }
}

/// Stops the sink once it accepted `messages`, and returns its report.
fn finish(sink: SinkHandle, messages: u64) -> SinkReport {
    assert!(sink.wait_for_messages(messages, Duration::from_secs(5)));
    let report = sink.stop().unwrap();
    assert_eq!(report.total.messages, messages, "{:?}", report.total);
    report
}

/// `Regards.` CRLF at the end of one read and the rest of the body in the
/// next: the period in front of the CRLF is not the end of the message.
#[test]
fn a_line_ending_in_a_period_split_over_reads_does_not_end_data() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    let reply = c.data(&[b"Subject: t\r\n\r\nRegards.\r\nX", b"more\r\n.\r\n"]);
    assert!(reply.starts_with("250"), "{reply}");
    // The next reply answers NOOP: nothing of the body was a command.
    assert!(c.say("NOOP").starts_with("250 2.0.0 OK"));
    assert!(c.say("QUIT").starts_with("221"));
    let report = finish(sink, 1);
    let body = b"Subject: t\r\n\r\nRegards.\r\nXmore\r\n";
    assert_eq!(report.total.bytes, body.len() as u64);
}

/// The terminator and a leading period split at each byte over reads.
#[test]
fn the_end_of_data_and_leading_periods_split_over_reads() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    let cases: [(&[&[u8]], &[u8]); 5] = [
        (&[b"a\r", b"\n.\r\n"], b"a\r\n"),
        (&[b"a\r\n", b".\r\n"], b"a\r\n"),
        (&[b"a\r\n.", b"\r\n"], b"a\r\n"),
        (&[b"a\r\n.\r", b"\n"], b"a\r\n"),
        (&[b"a\r\n.", b".b\r\n.", b"\r", b"\n"], b"a\r\n.b\r\n"),
    ];
    let mut bytes = 0;
    for (pieces, stored) in cases {
        c.envelope();
        let reply = c.data(pieces);
        assert!(reply.starts_with("250"), "{pieces:?}: {reply}");
        assert!(c.say("NOOP").starts_with("250 2.0.0 OK"), "{pieces:?}");
        bytes += stored.len() as u64;
    }
    let report = finish(sink, cases.len() as u64);
    assert_eq!(report.total.bytes, bytes);
}

/// RFC 5321 4.5.2: the first period of a line that starts with one is
/// removed, in the count and in the Maildir copy.
#[test]
fn leading_periods_are_removed_from_data() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.maildir = Some(maildir.clone());
    let sink = spawn(config).unwrap();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    let sent = b"Subject: dots\r\n\r\n..line\r\n...\r\n..\r\n.x\r\nend.\r\n.\r\n";
    assert!(c.data(&[sent]).starts_with("250"));
    assert!(c.say("QUIT").starts_with("221"));
    let report = finish(sink, 1);
    let stored: &[u8] = b"Subject: dots\r\n\r\n.line\r\n..\r\n.\r\nx\r\nend.\r\n";
    assert_eq!(report.total.bytes, stored.len() as u64);
    let files: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let copy = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&copy),
        String::from_utf8_lossy(stored)
    );
}

/// The body's very first line is a line start too.
#[test]
fn a_first_line_with_two_periods_loses_one() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    assert!(c.data(&[b"..x\r\n.\r\n"]).starts_with("250"));
    let report = finish(sink, 1);
    assert_eq!(report.total.bytes, b".x\r\n".len() as u64);
}

#[test]
fn an_empty_body_is_a_message() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    assert!(c.data(&[b".\r\n"]).starts_with("250"));
    // And once more, the terminator in a read of its own after DATA's 354.
    c.envelope();
    assert!(c.data(&[b".", b"\r\n"]).starts_with("250"));
    assert!(c.say("NOOP").starts_with("250 2.0.0 OK"));
    let report = finish(sink, 2);
    assert_eq!(report.total.bytes, 0);
}

/// BDAT chunks are taken byte for byte: no period removed, no terminator.
#[test]
fn bdat_chunks_keep_their_leading_periods() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    let first = b"..x\r\n.\r\n";
    let last = b".\r\n..\r\n";
    c.write(format!("BDAT {}\r\n", first.len()).as_bytes());
    c.write(first);
    assert!(c.reply().starts_with("250"));
    c.write(format!("BDAT {} LAST\r\n", last.len()).as_bytes());
    c.write(last);
    assert!(c.reply().starts_with("250"));
    assert!(c.say("NOOP").starts_with("250 2.0.0 OK"));
    let report = finish(sink, 1);
    assert_eq!(report.total.bytes, (first.len() + last.len()) as u64);
}

#[test]
fn malformed_mail_gets_501_and_the_null_sender_is_accepted() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    for bad in [
        "MAIL",
        "MAIL FROM <a@client.test>",
        "MAIL TO:<a@client.test>",
    ] {
        let reply = c.say(bad);
        assert!(reply.starts_with("501 5.5.4"), "{bad}: {reply}");
    }
    // None of them started a transaction.
    assert!(c.say("RCPT TO:<b@example.test>").starts_with("503"));
    assert!(c.say("MAIL FROM:<>").starts_with("250"));
    assert!(c.say("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.data(&[b"x\r\n.\r\n"]).starts_with("250"));
    let report = finish(sink, 1);
    assert_eq!(report.total.recipients, 1);
}

/// A sink on two addresses: with more than one, it tracks the recipient
/// domains each listener received.
fn domain_tracking_sink() -> SinkHandle {
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.listen.push("127.0.0.1:0".parse().unwrap());
    spawn(config).unwrap()
}

/// The recipient domains `addr`'s listener received.
fn listener_domains(report: &SinkReport, addr: SocketAddr) -> Vec<String> {
    report.per_listener_domains[&addr.to_string()]
        .iter()
        .cloned()
        .collect()
}

/// Malformed RCPT commands and empty or domainless recipients (other than
/// `<Postmaster>`) are refused and neither counted nor tracked as domains.
#[test]
fn malformed_rcpt_gets_501_and_is_not_counted() {
    let sink = domain_tracking_sink();
    let addr = sink.addrs[0];
    let mut c = Client::greeted(addr);
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("250"));
    for bad in [
        "RCPT",
        "RCPT TO <b@example.test>",
        "RCPT FROM:<b@example.test>",
    ] {
        let reply = c.say(bad);
        assert!(reply.starts_with("501 5.5.4"), "{bad}: {reply}");
    }
    for bad in [
        "RCPT TO:",
        "RCPT TO:<>",
        "RCPT TO: <>",
        "RCPT TO:<b>",
        "RCPT TO:<postmasters>",
        "RCPT TO:<b@>",
        "RCPT TO:<@example.test>",
    ] {
        let reply = c.say(bad);
        assert!(reply.starts_with("501 5.1.3"), "{bad}: {reply}");
    }
    // No recipient was accepted.
    assert!(c.say("DATA").starts_with("554"));
    // The script's local parts still apply.
    assert!(
        c.say("RCPT TO:<tempfail+x@example.test>")
            .starts_with("451")
    );
    assert!(
        c.say("RCPT TO:<permfail+x@example.test>")
            .starts_with("550")
    );
    assert!(c.say("RCPT TO: <B@Example.Test>").starts_with("250"));
    assert!(c.data(&[b"x\r\n.\r\n"]).starts_with("250"));
    let report = finish(sink, 1);
    assert_eq!(report.total.recipients, 1);
    assert_eq!(report.tempfailed_recipients, 1);
    assert_eq!(report.permfailed_recipients, 1);
    assert_eq!(listener_domains(&report, addr), ["example.test"]);
}

/// RFC 5321 4.5.1: `<Postmaster>` without a domain, in any case, is a
/// recipient like any other in the counts, and adds no domain to the ones
/// tracked per listener (it names the sink itself, not a destination).
#[test]
fn postmaster_without_a_domain_is_accepted() {
    let sink = domain_tracking_sink();
    let addr = sink.addrs[0];
    let mut c = Client::greeted(addr);
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("250"));
    let reply = c.say("RCPT TO:<Postmaster>");
    assert!(reply.starts_with("250 2.1.5"), "{reply}");
    assert!(c.data(&[b"x\r\n.\r\n"]).starts_with("250"));
    assert!(c.say("MAIL FROM:<>").starts_with("250"));
    let reply = c.say("RCPT TO: <POSTMASTER>");
    assert!(reply.starts_with("250 2.1.5"), "{reply}");
    assert!(c.say("RCPT TO:<b@Example.Test>").starts_with("250"));
    assert!(c.data(&[b"y\r\n.\r\n"]).starts_with("250"));
    let report = finish(sink, 2);
    assert_eq!(report.total.recipients, 3);
    assert_eq!(report.per_listener[&addr.to_string()].recipients, 3);
    assert_eq!(listener_domains(&report, addr), ["example.test"]);
}

/// RFC 3030 section 2: once a BDAT chunk was taken, DATA is refused and
/// the transaction goes on; BDAT LAST still ends it. Also after an empty
/// chunk, which leaves nothing buffered to tell the two apart.
#[test]
fn data_after_a_bdat_chunk_gets_503_and_bdat_can_still_finish() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    c.write(b"BDAT 5\r\nhello");
    assert!(c.reply().starts_with("250"));
    let reply = c.say("DATA");
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
    c.write(b"BDAT 6 LAST\r\n world");
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");

    c.envelope();
    assert!(c.say("BDAT 0").starts_with("250"));
    let reply = c.say("DATA");
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
    c.write(b"BDAT 2 LAST\r\nok");
    assert!(c.reply().starts_with("250"));

    // A new transaction may use DATA again.
    c.envelope();
    assert!(c.data(&[b"x\r\n.\r\n"]).starts_with("250"));
    let report = finish(sink, 3);
    assert_eq!(report.total.bytes, (11 + 2 + 3) as u64);
}

/// Empty chunks pipelined with the rest of a message, in one write: each
/// is answered at once (the sink used to wait for more input after a
/// `BDAT 0`, with the next chunk already in its buffer: both sides hung).
/// A RCPT after a chunk is refused: the message's data has begun.
#[test]
fn pipelined_empty_chunks_are_answered_and_rcpt_after_bdat_is_refused() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    c.write(b"BDAT 0\r\nRCPT TO:<c@example.test>\r\nBDAT 3\r\nabcBDAT 0 LAST\r\n");
    let replies: Vec<String> = (0..4).map(|_| c.reply()).collect();
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(replies[1].starts_with("503 5.5.1"), "{replies:?}");
    assert!(replies[2].starts_with("250"), "{replies:?}");
    assert!(replies[3].starts_with("250"), "{replies:?}");
    let report = finish(sink, 1);
    assert_eq!(report.total.bytes, 3);
    assert_eq!(report.total.recipients, 1);
}

/// A BDAT size that is not `1*DIGIT` (or a line with more than `LAST`
/// after it) leaves the chunk's end unknown: 501, and the sink hangs up
/// rather than read the chunk's bytes as commands.
#[test]
fn bdat_with_a_malformed_size_gets_501_and_the_sink_hangs_up() {
    let sink = sink();
    for bad in [
        "BDAT",
        "BDAT abc",
        "BDAT 5x",
        "BDAT +5",
        "BDAT -1",
        "BDAT 99999999999999999999999",
        "BDAT 5 FIRST",
        "BDAT 5 LAST x",
    ] {
        let mut c = Client::greeted(sink.addrs[0]);
        c.envelope();
        let reply = c.say(bad);
        assert!(reply.starts_with("501 5.5.4"), "{bad}: {reply}");
        assert!(c.closed(), "{bad}: the connection stayed open");
    }
    let report = finish(sink, 0);
    assert_eq!(report.total.recipients, 0);
}

/// BDAT that would take the message past the limit is refused at once,
/// without waiting for (or buffering) its bytes, and the sink hangs up.
#[test]
fn bdat_over_the_size_limit_is_refused_before_its_bytes() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    let reply = c.say(&format!("BDAT {} LAST", MESSAGE_BYTES_MAX + 1));
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert!(c.closed());

    // The chunks so far count: 5 bytes, then a chunk that would pass it.
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    c.write(b"BDAT 5\r\nhello");
    assert!(c.reply().starts_with("250"));
    let reply = c.say(&format!("BDAT {}", MESSAGE_BYTES_MAX - 4));
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert!(c.closed());

    // Up to the limit is fine (a small chunk on a fresh connection).
    let mut c = Client::greeted(sink.addrs[0]);
    c.envelope();
    c.write(b"BDAT 5 LAST\r\nhello");
    assert!(c.reply().starts_with("250"));
    let report = finish(sink, 1);
    assert_eq!(report.total.bytes, 5);
}

#[test]
fn starttls_not_offered_gets_502() {
    let sink = sink();
    let mut c = Client::greeted(sink.addrs[0]);
    let reply = c.say("STARTTLS");
    assert!(reply.starts_with("502 5.5.1"), "{reply}");
    // The session goes on in plaintext.
    c.envelope();
    assert!(c.data(&[b"x\r\n.\r\n"]).starts_with("250"));
    finish(sink, 1);
}
