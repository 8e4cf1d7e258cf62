//! The injector's STARTTLS (with and without certificate checks), AUTH PLAIN
//! and several recipients per message, against the sink and against spate.

mod common;
use common::{Proc, certificate, free_port, run_spate};

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use spate_bench::inject::{InjectConfig, InjectReport, StartTls, run_inject};
use spate_bench::sink::{SinkConfig, SinkHandle, spawn, tls_config};

fn tls_sink(cert: &Path, key: &Path) -> SinkHandle {
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse().unwrap());
    config.tls = Some(tls_config(cert, key).unwrap());
    spawn(config).unwrap()
}

fn inject(to: SocketAddr, messages: u64, tls: Option<StartTls>) -> InjectReport {
    let mut cfg = InjectConfig::new(to, messages, 3);
    cfg.per_connection = 4;
    cfg.starttls = tls;
    run_inject(cfg).unwrap()
}

/// The one failure every message of `r` failed with.
fn only_failure(r: &InjectReport) -> &str {
    assert_eq!(r.accepted, 0, "{r:?}");
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    r.failures.keys().next().unwrap()
}

#[test]
fn starttls_is_required_and_the_certificate_checked_when_a_ca_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "");
    let (other, _) = certificate(dir.path(), "other-");
    let sink = tls_sink(&cert, &key);
    let to = sink.addrs[0];

    // Verified against the sink's own certificate.
    let ok = inject(
        to,
        10,
        Some(StartTls::new(Some(&cert), "localhost").unwrap()),
    );
    assert_eq!((ok.accepted, ok.failed), (10, 0), "{:?}", ok.failures);
    // Encrypted without a check.
    let any = inject(to, 5, Some(StartTls::new(None, "localhost").unwrap()));
    assert_eq!((any.accepted, any.failed), (5, 0), "{:?}", any.failures);
    // Against a CA that did not sign it: the handshake fails, nothing is sent.
    let bad = inject(
        to,
        4,
        Some(StartTls::new(Some(&other), "localhost").unwrap()),
    );
    assert!(only_failure(&bad).starts_with("TLS handshake"), "{bad:?}");
    assert!(sink.wait_for_messages(15, Duration::from_secs(5)));
    assert_eq!(sink.stop().unwrap().total.messages, 15);

    // A server without STARTTLS is not used in plaintext.
    let plain = spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap();
    let r = inject(
        plain.addrs[0],
        3,
        Some(StartTls::new(None, "localhost").unwrap()),
    );
    assert_eq!(only_failure(&r), "the server does not offer STARTTLS");
    assert_eq!(plain.stop().unwrap().total.messages, 0);
}

/// Recipients take turns through the local parts: with `a` and `tempfail+`
/// and three recipients, even messages have one refused recipient and odd
/// ones two. Every message still goes to its other recipients, and the
/// refusals are counted apart from failed messages.
#[test]
fn several_recipients_per_message_and_partial_refusals() {
    let sink = spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap();
    let mut cfg = InjectConfig::new(sink.addrs[0], 10, 2);
    cfg.rcpts = 3;
    cfg.locals = vec!["a".into(), "tempfail+".into()];
    let r = run_inject(cfg).unwrap();
    assert_eq!((r.accepted, r.failed), (10, 0), "{:?}", r.failures);
    assert_eq!(r.refused_recipients.values().sum::<u64>(), 15, "{r:?}");
    assert!(sink.wait_for_messages(10, Duration::from_secs(5)));
    let report = sink.stop().unwrap();
    assert_eq!(report.total.messages, 10);
    assert_eq!(report.total.recipients, 15);
    assert_eq!(report.tempfailed_recipients, 15);

    // Every recipient refused: the message fails, with the first refusal.
    let sink = spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap();
    let mut cfg = InjectConfig::new(sink.addrs[0], 4, 1);
    cfg.rcpts = 2;
    cfg.locals = vec!["permfail+".into()];
    let r = run_inject(cfg).unwrap();
    assert_eq!((r.accepted, r.failed), (0, 4));
    assert!(r.refused_recipients.is_empty());
    assert!(only_failure(&r).starts_with('5'), "{r:?}");
    assert_eq!(sink.stop().unwrap().total.messages, 0);

    let mut cfg = InjectConfig::new("127.0.0.1:9".parse().unwrap(), 1, 1);
    cfg.rcpts = 0;
    assert!(run_inject(cfg).is_err());
}

/// The password of the `[[user]]` in ../shared/spec/spate.example.toml's
/// hash, which this configuration reuses.
const PASSWORD: &str = "change-me";

/// spate relays only for authenticated clients (no `[[source]]` allows
/// relaying), offers STARTTLS, and so AUTH only over TLS.
fn start_spate(dir: &Path, sink: SocketAddr, cert: &Path, key: &Path) -> (Proc, SocketAddr) {
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        r#"
[spool]
path = "{spool}"
segment_size = "1MiB"
[runtime]
shards = 1
pin_cores = false
[admin]
listen = "127.0.0.1:{admin}"
[dns]
nameservers = ["127.0.0.1:9"]
[[listener]]
address = "{smtp}"
tls_cert = "{cert}"
tls_key = "{key}"
[[user]]
name = "injector"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$Br0f7MiOm4kZg58KTDYYQQ$Det6SJOUWWGVWuKEIcAtQG891o2yo1KsVuVBUmTo60Q"
default_vmta = "ip1"
[vmta.ip1]
source_ip = "127.0.0.2"
[domain."example.test"]
smtp_hosts = ["{sink}"]
"#,
        spool = dir.join("spool").display(),
        admin = free_port(),
        cert = cert.display(),
        key = key.display(),
    );
    (run_spate(dir, &config, smtp), smtp)
}

#[test]
fn the_injector_authenticates_over_tls_to_spate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "");
    let sink = spawn(SinkConfig::accept_all("127.0.0.1:0".parse().unwrap())).unwrap();
    let (_spate, smtp) = start_spate(dir.path(), sink.addrs[0], &cert, &key);
    let tls = || Some(StartTls::new(Some(&cert), "localhost").unwrap());
    let run = |tls: Option<StartTls>, auth: Option<&str>| {
        // (Few messages: spate answers 454 to a client after a few failed
        // AUTH attempts.)
        let mut cfg = InjectConfig::new(smtp, 3, 2);
        cfg.per_connection = 3;
        cfg.starttls = tls;
        cfg.auth = auth.map(|p| ("injector".to_owned(), p.to_owned()));
        run_inject(cfg).unwrap()
    };

    let ok = run(tls(), Some(PASSWORD));
    assert_eq!((ok.accepted, ok.failed), (3, 0), "{:?}", ok.failures);
    assert!(sink.wait_for_messages(3, Duration::from_secs(20)));
    // A wrong password is refused (535) and nothing is sent.
    let wrong = run(tls(), Some("not-the-password"));
    assert!(only_failure(&wrong).starts_with("535"), "{wrong:?}");
    // spate offers AUTH only over TLS.
    let plain = run(None, Some(PASSWORD));
    assert_eq!(only_failure(&plain), "the server offers no AUTH PLAIN");
    // Without AUTH, spate is no relay: every recipient is refused.
    let anonymous = run(tls(), None);
    assert!(only_failure(&anonymous).starts_with('5'), "{anonymous:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.stop().unwrap().total.messages, 3);
}
