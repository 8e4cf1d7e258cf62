//! AUTH on the sink: offered only after STARTTLS unless plaintext AUTH is
//! allowed, required before MAIL, PLAIN (with and without an initial
//! response) and LOGIN, cancelled and undecodable responses, and the
//! injector authenticating to it.

mod common;
use common::{certificate, exchange, read_reply};

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;

use base64::Engine;
use spate_bench::inject::{InjectConfig, StartTls, run_inject};
use spate_bench::sink::{SinkAuth, SinkConfig, SinkHandle, spawn, tls_config};

const USER: &str = "bench";
const PASSWORD: &str = "s3cret:with colon";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sink(without_tls: bool, tls: Option<(&Path, &Path)>) -> SinkHandle {
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.tls = tls.map(|(c, k)| tls_config(c, k).unwrap());
    config.auth = Some(SinkAuth {
        user: USER.into(),
        password: PASSWORD.into(),
        without_tls,
    });
    spawn(config).unwrap()
}

/// A plaintext client of the sink at `addr`, past the greeting.
struct Client(BufReader<std::net::TcpStream>);

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut c = Client(BufReader::new(tcp));
        assert!(c.reply().starts_with("220"));
        c
    }

    fn reply(&mut self) -> String {
        read_reply(&mut self.0)
    }

    fn say(&mut self, line: &str) -> String {
        exchange(&mut self.0, &format!("{line}\r\n"))
    }
}

#[test]
fn plaintext_sessions_get_no_auth_and_cannot_send() {
    let sink = sink(false, None);
    let mut c = Client::connect(sink.addrs[0]);
    let ehlo = c.say("EHLO client.test");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let plain = b64(&format!("\0{USER}\0{PASSWORD}"));
    assert!(
        c.say(&format!("AUTH PLAIN {plain}"))
            .starts_with("538 5.7.11")
    );
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("530 5.7.0"));
    let report = sink.stop().unwrap();
    assert_eq!((report.auth_successes, report.total.messages), (0, 0));
}

#[test]
fn plain_and_login_exchanges() {
    let sink = sink(true, None);
    let addr = sink.addrs[0];

    // AUTH needs EHLO: not after HELO.
    let mut c = Client::connect(addr);
    assert!(c.say("HELO client.test").starts_with("250"));
    let plain = b64(&format!("\0{USER}\0{PASSWORD}"));
    assert!(c.say(&format!("AUTH PLAIN {plain}")).starts_with("503"));

    // PLAIN with an initial response; then a message goes through, and
    // EHLO no longer offers AUTH.
    let mut c = Client::connect(addr);
    assert!(c.say("EHLO client.test").contains("250-AUTH PLAIN LOGIN"));
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("530"));
    assert!(c.say(&format!("AUTH PLAIN {plain}")).starts_with("235"));
    assert!(c.say(&format!("AUTH PLAIN {plain}")).starts_with("503"));
    let ehlo = c.say("EHLO client.test");
    assert!(ehlo.starts_with("250") && !ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.say("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.say("DATA").starts_with("354"));
    assert!(c.say("Subject: t\r\n\r\nhello\r\n.").starts_with("250"));

    // PLAIN without one: a 334 challenge, then the response.
    let mut c = Client::connect(addr);
    c.say("EHLO client.test");
    assert_eq!(c.say("AUTH PLAIN"), "334 \r\n");
    assert!(c.say(&plain).starts_with("235"));

    // LOGIN, user and password each answering a challenge.
    let mut c = Client::connect(addr);
    c.say("EHLO client.test");
    assert_eq!(c.say("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.say(&b64(USER)), "334 UGFzc3dvcmQ6\r\n");
    assert!(c.say(&b64(PASSWORD)).starts_with("235"));
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("250"));

    // Refusals: a wrong password, an authorisation identity other than the
    // user, a cancel, undecodable base64, an unknown mechanism; the session
    // can still authenticate after them.
    let mut c = Client::connect(addr);
    c.say("EHLO client.test");
    let wrong = b64(&format!("\0{USER}\0nope"));
    assert!(
        c.say(&format!("AUTH PLAIN {wrong}"))
            .starts_with("535 5.7.8")
    );
    let other = b64(&format!("admin\0{USER}\0{PASSWORD}"));
    assert!(c.say(&format!("AUTH PLAIN {other}")).starts_with("535"));
    assert!(c.say("AUTH LOGIN").starts_with("334"));
    assert!(c.say("*").starts_with("501"));
    assert!(c.say("AUTH PLAIN !!!notbase64").starts_with("501"));
    assert!(c.say("AUTH CRAM-MD5").starts_with("504"));
    assert!(c.say("MAIL FROM:<a@client.test>").starts_with("530"));
    assert!(c.say(&format!("AUTH PLAIN {plain}")).starts_with("235"));

    let report = sink.stop().unwrap();
    assert_eq!(report.total.messages, 1);
    assert_eq!(report.auth_successes, 4);
    assert_eq!(report.auth_failures, 4);
}

#[test]
fn the_injector_authenticates_over_tls_to_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "");
    let sink = sink(false, Some((&cert, &key)));
    let run = |tls: bool, password: Option<&str>| {
        let mut cfg = InjectConfig::new(sink.addrs[0], 6, 2);
        cfg.per_connection = 3;
        cfg.starttls = tls.then(|| StartTls::new(Some(&cert), "localhost").unwrap());
        cfg.auth = password.map(|p| (USER.to_owned(), p.to_owned()));
        run_inject(cfg).unwrap()
    };

    let ok = run(true, Some(PASSWORD));
    assert_eq!((ok.accepted, ok.failed), (6, 0), "{:?}", ok.failures);
    let wrong = run(true, Some("wrong"));
    assert_eq!(wrong.accepted, 0, "{wrong:?}");
    assert!(
        wrong.failures.keys().all(|f| f.starts_with("535")),
        "{:?}",
        wrong.failures
    );
    let plaintext = run(false, Some(PASSWORD));
    assert_eq!(plaintext.accepted, 0);
    assert!(
        plaintext
            .failures
            .keys()
            .all(|f| f == "the server offers no AUTH PLAIN"),
        "{:?}",
        plaintext.failures
    );
    let anonymous = run(true, None);
    assert_eq!(anonymous.accepted, 0);
    assert!(
        anonymous.failures.keys().all(|f| f.starts_with("530")),
        "{:?}",
        anonymous.failures
    );
    let report = sink.stop().unwrap();
    assert_eq!(report.total.messages, 6);
    assert_eq!(
        report.auth_successes, ok.connections_opened,
        "one per connection of the run with the right password"
    );
    assert!(ok.connections_opened >= 2);
}

#[test]
fn the_command_line_refuses_plaintext_auth_unless_asked() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sink: spate_bench::sink::SinkArgs,
    }
    let args = |extra: &[&str]| {
        let mut argv = vec!["sink", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.sink)
    };
    // A run that validates nothing would serve until killed: fail instead.
    let run = |a: spate_bench::sink::SinkArgs| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(spate_bench::sink::run(a)));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the sink started instead of refusing its arguments")
    };
    let e = run(args(&["--auth", "u:p"]).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("--auth-without-tls"), "{e:#}");
    let e = run(args(&["--auth", ":p", "--auth-without-tls"]).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("the user is empty"), "{e:#}");
    let e = run(args(&["--auth", "nocolon", "--auth-without-tls"]).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("USER:PASSWORD"), "{e:#}");
    // --auth-without-tls means nothing alone.
    assert!(args(&["--auth-without-tls"]).is_err());
}

/// AUTH lines may be up to 12,288 bytes (RFC 4954) where other commands
/// stop at 4,096: a line still incomplete past its limit is refused. Each
/// line is sent in two writes so the sink holds it incomplete first.
#[test]
fn auth_lines_may_be_longer_than_commands() {
    let password = "p".repeat(6000);
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.auth = Some(SinkAuth {
        user: USER.into(),
        password: password.clone(),
        without_tls: true,
    });
    let sink = spawn(config).unwrap();
    // All of the line but its end, then (a line within its limit) the end
    // after a pause; a line past its limit is answered before its end.
    let in_two_writes = |c: &mut Client, line: &str| {
        use std::io::Write;
        let (head, tail) = line.split_at(line.len() - 10);
        c.0.get_mut().write_all(head.as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = c.0.get_mut().write_all(format!("{tail}\r\n").as_bytes());
        c.reply()
    };
    let without_its_end = |c: &mut Client, line: &str| {
        use std::io::Write;
        c.0.get_mut().write_all(line.as_bytes()).unwrap();
        c.reply()
    };

    // About 8,000 bytes of PLAIN initial response, and as a LOGIN response.
    let plain = b64(&format!("\0{USER}\0{password}"));
    assert!(plain.len() > 8000);
    let mut c = Client::connect(sink.addrs[0]);
    c.say("EHLO client.test");
    let reply = in_two_writes(&mut c, &format!("AUTH PLAIN {plain}"));
    assert!(reply.starts_with("235"), "{reply}");
    let mut c = Client::connect(sink.addrs[0]);
    c.say("EHLO client.test");
    c.say("AUTH LOGIN");
    c.say(&b64(USER));
    let reply = in_two_writes(&mut c, &b64(&password));
    assert!(reply.starts_with("235"), "{reply}");

    // Past 12,288 bytes an AUTH line is refused; past 4,096 another one.
    let mut c = Client::connect(sink.addrs[0]);
    c.say("EHLO client.test");
    let reply = without_its_end(&mut c, &format!("AUTH PLAIN {}", "A".repeat(13_000)));
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    let mut c = Client::connect(sink.addrs[0]);
    c.say("EHLO client.test");
    let long_mail = format!("MAIL FROM:<{}@client.test", "a".repeat(5000));
    let reply = without_its_end(&mut c, &long_mail);
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    assert_eq!(sink.stop().unwrap().auth_successes, 2);
}
