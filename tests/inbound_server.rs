//! The inbound ESMTP server over real sockets: TLS, AUTH, limits, smuggling,
//! many connections, shutdown with clients mid-DATA.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use support::sink::Sink;
use support::spate_proc::{Client, Spate, free_port};

struct Setup {
    dir: tempfile::TempDir,
    sink: Sink,
    smtp: SocketAddr,
    spate: Spate,
}

fn start() -> Setup {
    start_with("")
}

/// `listener_extra`: more keys for the `[[listener]]` table.
fn start_with(listener_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let hash = spate::session::auth::hash_password("s3cret").unwrap();
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        r#"
hostname = "in.test"
[spool]
path = "{spool}"
segment_size = "1MiB"
[runtime]
shards = 2
pin_cores = false
shutdown_timeout = "10s"
[admin]
listen = "127.0.0.1:{admin}"
[dns]
nameservers = ["127.0.0.1:9"]
timeout = "1s"
[[listener]]
address = "{smtp}"
max_connections_per_ip = 2000
max_message_size = "20KiB"
max_rcpt_per_message = 5
tls_cert = "{cert}"
tls_key = "{key}"
{listener_extra}
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
[[user]]
name = "injector"
password_hash = "{hash}"
[vmta.v1]
source_ip = "127.0.0.1"
[domain."sink.test"]
smtp_hosts = ["{sink}"]
"#,
        spool = dir.path().join("spool").display(),
        admin = free_port(),
        cert = dir.path().join("cert.pem").display(),
        key = dir.path().join("key.pem").display(),
        sink = sink.addr,
    );
    let spate = Spate::start(dir.path(), &config, smtp);
    Setup {
        dir,
        sink,
        smtp,
        spate,
    }
}

#[test]
fn the_command_timeout_counts_from_each_read_and_ends_an_idle_session_with_421() {
    let s = start_with("command_timeout = \"1s\"");
    let mut c = Client::connect(s.smtp);
    // A command every 400 ms for 2.4 s: longer than the limit in all, but
    // each wait is shorter, so the session stays.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        let r = c.cmd("NOOP");
        assert!(r.starts_with("250"), "{r}");
    }
    // Then silence: 421 after about the limit.
    let started = std::time::Instant::now();
    let r = c.reply();
    let waited = started.elapsed();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(c.reply(), "EOF");
}

fn ehlo(c: &mut Client) -> String {
    c.send("EHLO client.test\r\n");
    c.reply_lines().join("\n")
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads one reply (all lines) from a TLS stream.
fn tls_reply(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        out.push(byte[0]);
        if out.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&out).to_string();
            let last = text.trim_end().lines().last().unwrap_or("").to_string();
            if last.len() >= 4 && last.as_bytes()[3] == b' ' {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn starttls_then_auth_and_auth_refused_before_tls() {
    let s = start();
    let mut c = Client::connect(s.smtp);
    let caps = ehlo(&mut c);
    assert!(caps.contains("STARTTLS"), "{caps}");
    assert!(
        !caps.contains("AUTH"),
        "AUTH must not be offered before TLS: {caps}"
    );
    let r = c.cmd("AUTH PLAIN AGluamVjdG9yAHMzY3JldA==");
    assert!(r.starts_with('5'), "AUTH before TLS: {r}");
    // Pipelined plaintext after STARTTLS must be discarded, not executed.
    c.send("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    let r = c.reply();
    assert!(r.starts_with("220"), "{r}");

    let provider = spate::session::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = c.into_stream();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"EHLO client.test\r\n").unwrap();
    let caps = tls_reply(&mut tls);
    assert!(
        caps.contains("AUTH PLAIN LOGIN") || caps.contains("AUTH LOGIN PLAIN"),
        "{caps}"
    );
    assert!(!caps.contains("STARTTLS"), "{caps}");
    // The pipelined MAIL was dropped: a RCPT now is out of sequence.
    tls.write_all(b"RCPT TO:<a@sink.test>\r\n").unwrap();
    let r = tls_reply(&mut tls);
    assert!(
        r.starts_with("503"),
        "plaintext MAIL must have been discarded: {r}"
    );
    // Wrong password, then the right one.
    tls.write_all(b"AUTH PLAIN AGluamVjdG9yAHdyb25n\r\n")
        .unwrap();
    assert!(tls_reply(&mut tls).starts_with("535"));
    tls.write_all(b"AUTH PLAIN AGluamVjdG9yAHMzY3JldA==\r\n")
        .unwrap();
    let r = tls_reply(&mut tls);
    assert!(r.starts_with("235"), "{r}");
    tls.write_all(b"MAIL FROM:<a@in.test>\r\nRCPT TO:<x@sink.test>\r\nDATA\r\n")
        .unwrap();
    for expect in ["250", "250", "354"] {
        let r = tls_reply(&mut tls);
        assert!(r.starts_with(expect), "{r}");
    }
    tls.write_all(b"Subject: over tls\r\n\r\nhi\r\n.\r\n")
        .unwrap();
    let r = tls_reply(&mut tls);
    assert!(r.starts_with("250"), "{r}");
    let got = s.sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("with ESMTPSA"), "{text}");
}

#[test]
fn smuggling_limits_and_pipelining_over_a_socket() {
    let s = start();
    let mut c = Client::connect(s.smtp);
    ehlo(&mut c);
    // Bare LF inside DATA: 554 5.6.0 for that message; a fake end
    // `\n.\n` does not end the message early.
    c.send("MAIL FROM:<a@in.test>\r\nRCPT TO:<x@sink.test>\r\nDATA\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("354"));
    c.send("Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@x.test>\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("554 5.6.0"), "{r}");
    // Too many recipients: 452 4.5.3 after the 5th.
    assert!(c.cmd("MAIL FROM:<a@in.test>").starts_with("250"));
    for i in 0..5 {
        assert!(
            c.cmd(&format!("RCPT TO:<r{i}@sink.test>"))
                .starts_with("250")
        );
    }
    let r = c.cmd("RCPT TO:<r6@sink.test>");
    assert!(r.starts_with("452 4.5.3"), "{r}");
    assert!(c.cmd("RSET").starts_with("250"));
    // SIZE above the limit at MAIL, and an oversize body while streaming.
    let r = c.cmd("MAIL FROM:<a@in.test> SIZE=10000000");
    assert!(r.starts_with("552"), "{r}");
    assert!(c.cmd("MAIL FROM:<a@in.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<big@sink.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let line = "x".repeat(998);
    for _ in 0..30 {
        c.send(&format!("{line}\r\n"));
    }
    c.send(".\r\n");
    let r = c.reply();
    assert!(r.starts_with("552"), "{r}");
    // A whole pipelined batch in one packet: replies in order.
    c.send("MAIL FROM:<a@in.test>\r\nRCPT TO:<p1@sink.test>\r\nRCPT TO:<p2@sink.test>\r\nDATA\r\nSubject: p\r\n\r\nok\r\n.\r\nNOOP\r\n");
    for expect in ["250", "250", "250", "354", "250", "250"] {
        let r = c.reply();
        assert!(r.starts_with(expect), "expected {expect}: {r}");
    }
    // Only the pipelined message was delivered (nothing smuggled, nothing oversize).
    let got = s.sink.wait_for(1, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let got2 = s.sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got2.len(), 1, "{got2:?}");
    assert_eq!(got2[0].rcpts, ["<p1@sink.test>", "<p2@sink.test>"]);
    assert!(!String::from_utf8_lossy(&got2[0].data).contains("evil"));
}

#[test]
fn per_ip_connection_cap_gets_421() {
    // A listener with a per-IP cap of 3.
    let s = start_with_cap(3);
    // Spate::start probes the port; let those probe sessions close first.
    std::thread::sleep(Duration::from_millis(1000));
    let clients: Vec<Client> = (0..3).map(|_| Client::connect(s.smtp)).collect();
    let mut extra = TcpStream::connect(s.smtp).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = extra.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("421 4.7.0"), "{text}");
    drop(clients);
    // Slots come back when clients leave.
    std::thread::sleep(Duration::from_millis(300));
    let _c = Client::connect(s.smtp);
}

fn start_with_cap(cap: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = Sink::start();
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
[[listener]]
address = "{smtp}"
max_connections_per_ip = {cap}
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
[vmta.v1]
source_ip = "127.0.0.1"
"#,
        spool = dir.path().join("spool").display(),
        admin = free_port(),
    );
    let spate = Spate::start(dir.path(), &config, smtp);
    Setup {
        dir,
        sink,
        smtp,
        spate,
    }
}

#[test]
fn thousands_of_concurrent_connections() {
    let s = start();
    let mut clients = Vec::new();
    for _ in 0..1500 {
        let c = TcpStream::connect(s.smtp).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        clients.push(c);
    }
    let mut greeted = 0;
    for c in clients.iter_mut() {
        let mut buf = [0u8; 128];
        if let Ok(n) = c.read(&mut buf)
            && buf[..n].starts_with(b"220")
        {
            greeted += 1;
        }
    }
    assert_eq!(greeted, 1500);
    // The server still takes mail while they are open.
    let mut c = Client::connect(s.smtp);
    ehlo(&mut c);
    let r = c.message("a@in.test", &["many@sink.test"], "Subject: m\r\n\r\nx\r\n");
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(s.sink.wait_for(1, Duration::from_secs(15)).len(), 1);
}

#[test]
fn shutdown_with_clients_mid_data_loses_nothing_acknowledged() {
    let mut s = start();
    // One client finished a message (acknowledged), another is mid-DATA.
    let mut done = Client::connect(s.smtp);
    ehlo(&mut done);
    let r = done.message(
        "a@in.test",
        &["acked@sink.test"],
        "Subject: acked\r\n\r\nx\r\n",
    );
    assert!(r.starts_with("250"));
    let mut mid = Client::connect(s.smtp);
    ehlo(&mut mid);
    assert!(mid.cmd("MAIL FROM:<a@in.test>").starts_with("250"));
    assert!(mid.cmd("RCPT TO:<mid@sink.test>").starts_with("250"));
    assert!(mid.cmd("DATA").starts_with("354"));
    mid.send("Subject: mid\r\n\r\npart one\r\n");
    // SIGTERM now; the mid-DATA client finishes within the grace period.
    let pid = s.spate.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(300));
    mid.send("part two\r\n.\r\n");
    let r = mid.reply();
    assert!(
        r.starts_with("250"),
        "mid-DATA message during shutdown: {r}"
    );
    let code = s.spate.terminate();
    assert_eq!(code, Some(0));
    // Both acknowledged messages are delivered (before exit or after a restart).
    let delivered = s.sink.messages();
    let mut rcpts: Vec<String> = delivered.iter().flat_map(|m| m.rcpts.clone()).collect();
    if rcpts.len() < 2 {
        let config = std::fs::read_to_string(s.dir.path().join("spate.toml")).unwrap();
        let _again = Spate::start(s.dir.path(), &config, s.smtp);
        let got = s.sink.wait_for(2, Duration::from_secs(15));
        rcpts = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    }
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts, ["<acked@sink.test>", "<mid@sink.test>"]);
}
