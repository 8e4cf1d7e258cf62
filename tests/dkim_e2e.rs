//! A message relayed by the real binary arrives at the sink DKIM-signed,
//! and the independent `mail-auth` verifier accepts the signature.

mod dkim_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::sink::Sink;
use support::spate_proc::{Client, Spate, free_port};

#[test]
fn relayed_message_is_signed_once_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let key = dkim_support::data_path("ed25519-pkcs8.pem");
    let head = support::config::head(
        dir.path(),
        smtp,
        &format!("listen = \"127.0.0.1:{}\"", free_port()),
    );
    let config = format!(
        r#"{head}
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
process_x_virtual_mta = true
[vmta.v1]
source_ip = "127.0.0.1"
[domain."sink.test"]
smtp_hosts = ["{sink}"]
[dkim."sink.test"]
selector = "s1"
key = "{key}"
headers = ["From", "To", "Subject"]
"#,
        sink = sink.addr,
        key = key.display(),
    );
    let spate = Spate::start(dir.path(), &config, smtp);
    let mut c = Client::connect(smtp);
    c.cmd("EHLO client.test");
    let r = c.message(
        "a@sink.test",
        &["b@sink.test"],
        "X-Virtual-MTA: v1\r\nFrom: Alice <a@sink.test>\r\nTo: b@sink.test\r\nSubject: signed\r\n\r\nHello, signed world.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(got.len(), 1, "{}", spate.log_text());
    let data = &got[0].data;
    let text = String::from_utf8_lossy(data);
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    assert_eq!(text.matches("DKIM-Signature:").count(), 1);
    assert!(!text.contains("X-Virtual-MTA"), "{text}");
    let record = (
        String::from("s1._domainkey.sink.test"),
        dkim_support::dns_record("ed25519-pkcs8"),
    );
    let results = dkim_support::verify(data, &[record]);
    assert_eq!(results.len(), 1);
    assert!(results[0].passed(), "{results:?}");
}
