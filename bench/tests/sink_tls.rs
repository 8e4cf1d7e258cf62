//! STARTTLS on the sink: offered only with a certificate, a real rustls
//! handshake, then a message over TLS; STARTTLS is not offered twice.

mod common;
use common::{exchange, read_reply};

use std::io::BufReader;
use std::sync::Arc;

use compio::rustls;
use spate_bench::sink::{SinkConfig, spawn, tls_config};

#[test]
fn starttls_handshake_then_mail_over_tls() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.tls = Some(tls_config(&cert, &key).unwrap());
    let sink = spawn(config).unwrap();

    let tcp = std::net::TcpStream::connect(sink.addrs[0]).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut plain = BufReader::new(tcp);
    assert!(read_reply(&mut plain).starts_with("220"));
    assert!(exchange(&mut plain, "EHLO client.test\r\n").contains("250-STARTTLS"));
    assert!(exchange(&mut plain, "STARTTLS\r\n").starts_with("220"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
            .unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, plain.into_inner()));
    let ehlo = exchange(&mut tls, "EHLO client.test\r\n");
    assert!(
        ehlo.contains("250-PIPELINING") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(exchange(&mut tls, "MAIL FROM:<a@client.test>\r\n").starts_with("250"));
    assert!(exchange(&mut tls, "RCPT TO:<b@example.test>\r\n").starts_with("250"));
    assert!(exchange(&mut tls, "DATA\r\n").starts_with("354"));
    assert!(exchange(&mut tls, "Subject: over tls\r\n\r\nhello\r\n.\r\n").starts_with("250"));
    assert!(exchange(&mut tls, "QUIT\r\n").starts_with("221"));
    let report = sink.stop().unwrap();
    assert_eq!(report.total.messages, 1);
    assert_eq!(report.per_ehlo["client.test"].messages, 1);
    assert_eq!(report.tls_sessions, 1);
}

#[test]
fn no_starttls_without_a_certificate() {
    let sink = spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap();
    let tcp = std::net::TcpStream::connect(sink.addrs[0]).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut plain = BufReader::new(tcp);
    read_reply(&mut plain);
    let ehlo = exchange(&mut plain, "EHLO client.test\r\n");
    assert!(
        ehlo.contains("250-CHUNKING") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(exchange(&mut plain, "STARTTLS\r\n").starts_with("502"));
    // BDAT works too.
    assert!(exchange(&mut plain, "MAIL FROM:<a@client.test>\r\n").starts_with("250"));
    assert!(exchange(&mut plain, "RCPT TO:<b@example.test>\r\n").starts_with("250"));
    assert!(exchange(&mut plain, "BDAT 5\r\nhello").starts_with("250"));
    assert!(exchange(&mut plain, "BDAT 3 LAST\r\n!!\n").starts_with("250"));
    let report = sink.stop().unwrap();
    assert_eq!(report.total.bytes, 8);
}
