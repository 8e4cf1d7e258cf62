//! Outbound STARTTLS against sinks that offer it. `starttls = "required"`
//! encrypts whatever certificate the server shows; `starttls = "verify"`
//! delivers only when the certificate chains to the domain's `tls_ca_file`
//! and names the host connected to, and otherwise defers with 4.7.5 (the
//! message stays queued, nothing reaches the server).

mod admin_support;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use admin_support::start_with;
use support::sink::Sink;
use support::spate_proc::{Client, Spate, wait_until};

/// A test CA and three server identities: signed by the CA for 127.0.0.1
/// (what `smtp_hosts = ["127.0.0.1:port"]` connects to), signed by the CA
/// for another name only, and self-signed for 127.0.0.1.
struct Pki {
    ca_file: std::path::PathBuf,
    /// The PEM of `ca_file`, and of a CA that signed none of the servers.
    ca_pem: String,
    other_ca_pem: String,
    good: Arc<rustls::ServerConfig>,
    wrong_name: Arc<rustls::ServerConfig>,
    self_signed: Arc<rustls::ServerConfig>,
}

fn server_config(cert_der: Vec<u8>, key: &rcgen::KeyPair) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(spate::session::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert_der)], key)
        .unwrap();
    Arc::new(config)
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "spate test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca.clone(), ca_key);
    let other_ca_pem = ca.self_signed(&KeyPair::generate().unwrap()).unwrap().pem();

    let leaf = |names: Vec<String>, ip: bool| {
        let mut params = CertificateParams::new(names).unwrap();
        if ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        params
    };
    let good_key = KeyPair::generate().unwrap();
    let good = leaf(vec!["mx.good.test".into()], true)
        .signed_by(&good_key, &issuer)
        .unwrap();
    let wrong_key = KeyPair::generate().unwrap();
    let wrong = leaf(vec!["elsewhere.test".into()], false)
        .signed_by(&wrong_key, &issuer)
        .unwrap();
    let own_key = KeyPair::generate().unwrap();
    let own = leaf(vec!["mx.good.test".into()], true)
        .self_signed(&own_key)
        .unwrap();
    Pki {
        ca_file,
        ca_pem: ca_cert.pem(),
        other_ca_pem,
        good: server_config(good.der().to_vec(), &good_key),
        wrong_name: server_config(wrong.der().to_vec(), &wrong_key),
        self_signed: server_config(own.der().to_vec(), &own_key),
    }
}

/// Transient ("t") accounting lines for `rcpt`.
fn deferrals(dir: &Path, rcpt: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("acct.csv"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("t,") && l.contains(rcpt))
        .map(str::to_string)
        .collect()
}

fn send_to(smtp: std::net::SocketAddr, rcpt: &str) {
    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.message(
        "a@sink.test",
        &[rcpt],
        &admin_support::body(&format!("to {rcpt}")),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
}

fn wait_deferred(dir: &Path, rcpt: &str, spate: &Spate) -> String {
    wait_until(
        &format!("{rcpt} to be deferred"),
        Duration::from_secs(20),
        || !deferrals(dir, rcpt).is_empty(),
        || spate.log_text(),
    );
    deferrals(dir, rcpt).remove(0)
}

#[test]
fn verify_delivers_to_a_proper_certificate_and_defers_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let good = Sink::start_tls(pki.good.clone());
    let wrong_name = Sink::start_tls(pki.wrong_name.clone());
    let self_signed = Sink::start_tls(pki.self_signed.clone());
    let verify = |domain: &str, sink: &Sink| {
        format!(
            "[domain.\"{domain}\"]\nsmtp_hosts = [\"{}\"]\nstarttls = \"verify\"\ntls_ca_file = \"{}\"\nidle_timeout = \"0s\"\n\n",
            sink.addr,
            pki.ca_file.display()
        )
    };
    let extra = format!(
        "\n{}{}{}[domain.\"encrypt.test\"]\nsmtp_hosts = [\"{}\"]\nstarttls = \"required\"\n",
        verify("good.test", &good),
        verify("wrongname.test", &wrong_name),
        verify("selfsigned.test", &self_signed),
        self_signed.addr,
    );
    let unused = Sink::start();
    let (spate, smtp, _admin) = start_with(dir.path(), unused.addr, &extra);

    // A certificate from the CA that names 127.0.0.1: delivered, under TLS.
    send_to(smtp, "b@good.test");
    let got = good.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", spate.log_text());
    assert!(got[0].tls, "delivered without TLS");

    // "required" takes the self-signed certificate: encrypted, not verified.
    send_to(smtp, "b@encrypt.test");
    let got = self_signed.wait_for(1, Duration::from_secs(20));
    assert_eq!(got.len(), 1, "log:\n{}", spate.log_text());
    assert!(got[0].tls);
    assert_eq!(got[0].rcpts, ["<b@encrypt.test>"]);

    // The CA's certificate for another name, and a certificate the CA did
    // not sign: deferred with 4.7.5, nothing delivered.
    for rcpt in ["b@wrongname.test", "b@selfsigned.test"] {
        send_to(smtp, rcpt);
        let line = wait_deferred(dir.path(), rcpt, &spate);
        assert!(line.contains("4.7.5"), "{line}");
        assert!(line.to_lowercase().contains("certificate"), "{line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(wrong_name.messages().is_empty());
    assert_eq!(
        self_signed.messages().len(),
        1,
        "only the encrypt.test message reached the self-signed server"
    );
    assert!(unused.messages().is_empty());

    // The CA file is read again when it changes (each message opens a new
    // connection: idle_timeout = 0): with another CA in it the good server
    // is refused; with the right one back the retry delivers.
    std::fs::write(&pki.ca_file, &pki.other_ca_pem).unwrap();
    send_to(smtp, "c@good.test");
    let line = wait_deferred(dir.path(), "c@good.test", &spate);
    assert!(line.contains("4.7.5"), "{line}");
    assert_eq!(good.messages().len(), 1);
    std::fs::write(&pki.ca_file, &pki.ca_pem).unwrap();
    let got = good.wait_for(2, Duration::from_secs(20));
    assert_eq!(
        got.len(),
        2,
        "not retried with the CA back; log:\n{}",
        spate.log_text()
    );
    assert_eq!(got[1].rcpts, ["<c@good.test>"]);
}

#[test]
fn a_tls_ca_file_that_is_not_pem_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let config = admin_support::config(
        dir.path(),
        admin_support::addr(),
        admin_support::addr(),
        admin_support::addr(),
        &format!(
            "[domain.\"x.test\"]\nstarttls = \"verify\"\ntls_ca_file = \"{}\"\n",
            bad.display()
        ),
    );
    let path = dir.path().join("spate.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("tls_ca_file"), "{text}");
    assert!(text.contains("no PEM certificate"), "{text}");
}

/// A body over the delivery's coalescing size goes out from the spool's
/// map in vectored writes through TLS too, intact over BDAT and DATA.
#[test]
fn a_large_body_arrives_intact_under_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let sink = Sink::start_tls(pki.self_signed.clone());
    let extra = format!(
        "\n[domain.\"bdat.test\"]\nsmtp_hosts = [\"{a}\"]\nstarttls = \"required\"\n\n\
         [domain.\"data.test\"]\nsmtp_hosts = [\"{a}\"]\nstarttls = \"required\"\nuse_chunking = false\n",
        a = sink.addr
    );
    let unused = Sink::start();
    let (spate, smtp, _admin) = start_with(dir.path(), unused.addr, &extra);
    let mut body = String::from("From: a@sink.test\r\nSubject: large\r\n\r\n");
    for i in 0..2000 {
        body.push_str(&format!(".line {i} {}\r\n", "z".repeat(70)));
    }
    let stuffed = body.replace("\r\n.", "\r\n..");
    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for to in ["b@bdat.test", "b@data.test"] {
        let r = c.message("a@sink.test", &[to], &stuffed);
        assert!(r.starts_with("250"), "{to}: {r}");
    }
    let got = sink.wait_for(2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "log:\n{}", spate.log_text());
    for m in &got {
        assert!(m.tls, "{:?} delivered without TLS", m.rcpts);
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.ends_with(&body) && text.len() - body.len() < 1024,
            "{:?}: {} bytes against {}",
            m.rcpts,
            text.len(),
            body.len()
        );
    }
}
