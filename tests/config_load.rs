//! Loading real configuration files: the reference example (as shipped and
//! with its referenced files present), the keys production setups use, the
//! built-in pattern-list names and the embedded default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use spate::config::{
    self, AccountingFormat, BounceCategory, Config, ConfigErrorKind, ConfigErrors, QueueMode, Rate,
    RecordType, SpoolSync, StartTls, TargetRef,
};

const EXAMPLE: &str = include_str!("data/config/example.toml");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/config")
        .join(name)
}

fn load_text(text: &str) -> Result<Config, ConfigErrors> {
    config::load_str("t.toml", text, Some(PathBuf::from("t.toml")))
}

/// Writes a token, a self-signed certificate and its key, and an Ed25519
/// DKIM key under `dir`, each private file mode 0600.
fn write_pem_files(dir: &Path) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use rsa::pkcs8::LineEnding;
    use std::os::unix::fs::PermissionsExt;
    let tls = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dkim = ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let files = [
        ("admin.token", "0123456789abcdef\n".to_string()),
        ("tls/cert.pem", tls.cert.pem()),
        ("tls/key.pem", tls.signing_key.serialize_pem()),
        ("dkim/example.com.pem", dkim.to_string()),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The example with every referenced file created under `dir`.
fn example_with_files(dir: &Path) -> String {
    for sub in ["tls", "dkim", "acct"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    write_pem_files(dir);
    let d = dir.display();
    EXAMPLE
        .replace("/etc/spate/admin.token", &format!("{d}/admin.token"))
        .replace("/etc/spate/tls/", &format!("{d}/tls/"))
        .replace(
            "/etc/spate/dkim/example.com.pem",
            &format!("{d}/dkim/example.com.pem"),
        )
        .replace("/var/log/spate/", &format!("{d}/acct/"))
}

#[test]
fn example_fails_only_on_its_missing_files() {
    let err = config::load(Some(&data("example.toml"))).unwrap_err();
    let got: Vec<(usize, &str, ConfigErrorKind)> = err
        .iter()
        .map(|e| (e.line.unwrap(), e.key.as_str(), e.kind))
        .collect();
    use ConfigErrorKind::FileNotFound;
    assert_eq!(
        got,
        vec![
            (32, "admin.token_file", FileNotFound),
            (46, "listener[0].tls_cert", FileNotFound),
            (47, "listener[0].tls_key", FileNotFound),
            (143, "dkim.\"example.com\".key", FileNotFound),
            (152, "accounting[0].path", FileNotFound),
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("example.toml:32: admin.token_file: file not found: /etc/spate/admin.token"),
        "{text}"
    );
    assert!(
        text.contains("directory not found: /var/log/spate"),
        "{text}"
    );
}

#[test]
fn example_with_its_files_loads_with_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let c = load_text(&example_with_files(dir.path())).unwrap();
    assert_eq!(c.hostname, "mta.example.com");
    assert_eq!(c.spool.path, PathBuf::from("/var/spool/spate"));
    assert_eq!(c.spool.segment_bytes, 64 << 20);
    assert_eq!(c.spool.sync, SpoolSync::Group);
    assert_eq!((c.runtime.shards, c.runtime.pin_cores), (None, true));
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:8025".parse::<SocketAddr>().unwrap()
    );
    assert!(c.admin.token_file.is_some());
    assert_eq!(
        c.dns.nameservers,
        vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        (c.dns.timeout, c.dns.cache_size),
        (Duration::from_secs(5), 100_000)
    );

    assert_eq!(c.listeners.len(), 2);
    let l = &c.listeners[0];
    assert_eq!(l.address.port(), 25);
    assert_eq!((l.max_connections, l.max_connections_per_ip), (20_000, 200));
    assert_eq!(
        (l.max_message_bytes, l.max_rcpt_per_message),
        (50 << 20, 1000)
    );
    assert!(l.tls() && !l.require_auth);
    assert_eq!(
        (l.command_timeout, l.data_timeout),
        (Duration::from_secs(300), Duration::from_secs(600))
    );
    assert!(c.listeners[1].require_auth && !c.listeners[1].tls());
    // The 587 listener asks for AUTH but has no certificate: a warning, not an error.
    assert!(
        c.warnings
            .iter()
            .any(|w| w.key == "listener[1].require_auth" && w.line == Some(53))
    );

    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let s = c.source_for(ip("10.9.8.7")).unwrap();
    assert!(s.allow_relaying && s.process_x_virtual_mta && s.process_x_job);
    assert_eq!(s.default_vmta.as_deref(), Some("newsletters"));
    assert!(c.source_for(ip("192.0.2.1")).is_none());
    assert_eq!(
        c.user("injector").unwrap().default_vmta.as_deref(),
        Some("transactional")
    );

    assert_eq!(c.vmtas.len(), 3);
    assert_eq!(c.vmtas["ip2"].source_ip, ip("203.0.113.11"));
    assert_eq!(c.vmtas["ip2"].ehlo, "mta2.example.com");
    assert_eq!(c.default_vmta, "ip1");
    let p = c.pool("newsletters").unwrap();
    assert_eq!(
        (p.vmtas.clone(), p.weights.clone()),
        (vec!["ip1".to_string(), "ip2".to_string()], vec![3, 1])
    );
    assert_eq!(c.pool("transactional").unwrap().weights, vec![1]);
    assert!(matches!(
        c.target("transactional"),
        Some(TargetRef::Pool(_))
    ));

    let star = c.domain_policy("example.org", "ip1");
    assert_eq!(star.max_smtp_out, 20);
    assert_eq!(star.retry_after.len(), 6);
    assert_eq!(
        star.bounce_after,
        Duration::from_secs(4 * 86_400 + 12 * 3600)
    );
    assert_eq!(star.starttls, StartTls::Opportunistic);
    assert_eq!(star.smtp_pattern_list.as_deref(), Some("standard"));
    assert_eq!(
        star.backoff_max_msg_rate,
        Rate::Limited {
            count: 60,
            per: Duration::from_secs(3600)
        }
    );
    assert_eq!(
        star.backoff_to_normal_after,
        Some(Duration::from_secs(3600))
    );
    let gmail = c.domain_policy("gmail.com", "ip1");
    assert!(gmail.mx_rollup);
    assert_eq!(
        (gmail.max_smtp_out, gmail.max_msg_per_connection),
        (10, 100)
    );
    let yahoo3 = c.domain_policy("yahoo.com", "ip3");
    assert_eq!(
        yahoo3.max_msg_rate,
        Rate::Limited {
            count: 200,
            per: Duration::from_secs(3600)
        }
    );
    assert_eq!(
        c.domain_policy("yahoo.com", "ip1").max_msg_rate,
        Rate::Unlimited
    );
    let test = c.domain_policy("example.test", "ip1");
    assert_eq!(test.smtp_hosts.len(), 1);
    assert_eq!(
        (test.smtp_hosts[0].ip, test.smtp_hosts[0].port),
        (Some(ip("127.0.0.2")), 2526)
    );

    let rules = &c.pattern_list("standard").unwrap().rules;
    assert_eq!(rules.len(), 5);
    assert_eq!(rules[0].mode, Some(QueueMode::Backoff));
    assert!(
        rules[0].reply.is_match("421 4.7.0 [tss04] try later"),
        "case-insensitive"
    );
    assert_eq!(
        rules[3].bounce_category,
        Some(BounceCategory::PolicyRelated)
    );
    assert_eq!(
        (rules[4].mode, rules[4].bounce_category),
        (None, Some(BounceCategory::SpamRelated))
    );

    let k = &c.dkim["example.com"];
    assert_eq!((k.selector.as_str(), k.headers.len()), ("s2026", 7));
    let a = &c.accounting[0];
    assert_eq!(a.format, AccountingFormat::Csv);
    assert_eq!(
        a.records,
        vec![
            RecordType::Delivered,
            RecordType::Bounced,
            RecordType::TransientFailure,
            RecordType::Received
        ]
    );
    assert_eq!(a.rotate, Some(Duration::from_secs(86_400)));
    assert_eq!(
        c.summary(),
        "3 vmtas, 2 pools, 3 domains, 2 listeners, 1 sources, 1 users, 1 pattern lists, 1 dkim keys, 1 accounting files"
    );
}

#[test]
fn builtin_pattern_lists_are_valid_references() {
    for name in config::BUILTIN_PATTERN_LISTS {
        let c = load_text(&format!("[domain.\"*\"]\nsmtp_pattern_list = \"{name}\"\n")).unwrap();
        assert_eq!(
            c.domain_policy("x.org", "default")
                .smtp_pattern_list
                .as_deref(),
            Some(*name)
        );
        assert!(c.pattern_list(name).is_none(), "the shaper provides it");
    }
    // A configured list of a built-in name replaces it.
    let c = load_text("[smtp_pattern_list.gmail]\nrules = [{ reply = 'x', mode = \"backoff\" }]\n")
        .unwrap();
    assert_eq!(c.pattern_list("gmail").unwrap().rules.len(), 1);
    // "none" means no list.
    let c = load_text("[domain.\"*\"]\nsmtp_pattern_list = \"none\"\n").unwrap();
    assert_eq!(c.domain_policy("x.org", "default").smtp_pattern_list, None);
}

#[test]
fn production_keys_are_typed() {
    let key = data("dkim-rsa2048-pkcs1.pem");
    let text = format!(
        r#"
relay_domains = ["Example.org"]
[spool]
compact_live_ratio = 0.4
sync = "none"
zero_fill = "never"
recycle_segments = false
[runtime]
shards = 2
io_driver = "polling"
handoff_queue_capacity = 1024
shutdown_timeout = "20s"
[dns]
nameservers = ["127.0.0.1"]
attempts = 1
[[listener]]
address = "[::1]:2525"
allow_auth_without_tls = true
require_auth = true
max_errors_per_session = 7
max_auth_failure_rate = "3/m"
[vmta.a]
source_ip = "::1"
dkim_also_sign = ["esp.example.net"]
[vmta.a.domain."*"]
idle_timeout = "30s"
[domain."*"]
backoff_ramp_up = "0s"
dsn_delay_after = "never"
command_timeout = "1m"
max_rcpt_per_transaction = 50
[domain."slow.example"]
dsn_delay_after = "2h"
smtp_hosts = ["mx.slow.example", "[::1]:2526"]
[dkim."esp.example.net"]
selector = "esp"
key = "{}"
canonicalization = "simple/simple"
expire = "7d"
headers = ["From", "Subject"]
[smtp_pattern_list.custom]
rules = [
  {{ reply = '\[TSS09\]', disable_source_ip = true, reenable_after = "2h", bounce_category = "policy-related" }},
  {{ reply = '450.4\.2\.1', scope = "recipient" }},
  {{ reply = 'try later', defer_queue = true, mode = "normal" }},
  {{ reply = '5\.7\.1 .*\(S3150\)', disable_source_ip = true }},
]
"#,
        key.display()
    );
    let c = load_text(&text).unwrap();
    assert!(c.is_relay_domain("example.org"));
    assert_eq!(c.spool.compact_live_ratio, 0.4);
    assert_eq!(c.spool.zero_fill, spate::spool::ZeroFill::Never);
    assert!(!c.spool.recycle_segments);
    assert!(c.warnings.iter().any(|w| w.key == "spool.sync"));
    assert_eq!(c.runtime.shards, Some(2));
    assert_eq!(c.runtime.io_driver, config::IoDriver::Polling);
    assert_eq!(c.dns.nameservers[0].port(), 53);
    let l = &c.listeners[0];
    assert!(l.allow_auth_without_tls && l.require_auth);
    assert_eq!(l.max_errors_per_session, 7);
    assert!(
        !c.warnings.iter().any(|w| w.key.starts_with("listener")),
        "{:?}",
        c.warnings
    );
    assert_eq!(
        c.vmtas["a"].dkim_also_sign,
        vec!["esp.example.net".to_string()]
    );
    let p = c.domain_policy("slow.example", "a");
    assert_eq!(p.idle_timeout, Duration::from_secs(30));
    assert_eq!(p.dsn_delay_after, Some(Duration::from_secs(7200)));
    assert_eq!(p.backoff_ramp_up, Duration::ZERO);
    assert_eq!(
        (p.command_timeout, p.max_rcpt_per_transaction),
        (Duration::from_secs(60), 50)
    );
    assert_eq!(p.smtp_hosts[0].host, "mx.slow.example");
    assert_eq!(c.domain_policy("other.example", "a").dsn_delay_after, None);
    let k = &c.dkim["esp.example.net"];
    assert_eq!(k.expire, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(k.body_canonicalization, config::Canonicalization::Simple);
    let rules = &c.pattern_lists["custom"].rules;
    assert!(rules[0].disable_source_ip);
    assert_eq!(rules[0].reenable_after, Some(Duration::from_secs(7200)));
    assert_eq!(rules[1].scope, config::RuleScope::Recipient);
    assert!(rules[2].defer_queue && rules[2].mode == Some(QueueMode::Normal));
    assert_eq!(
        rules[3].reenable_after,
        Some(Duration::from_secs(3600)),
        "default re-enable"
    );
}

#[test]
fn embedded_default_matches_the_contract() {
    let c = config::load(None).unwrap();
    assert!(c.is_embedded_default());
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(
        c.listeners[0].address,
        "127.0.0.1:2525".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.spool.path, PathBuf::from("./spate-spool"));
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:8025".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.admin.token_file, None);
    assert!(
        c.dns.nameservers.is_empty(),
        "real MX lookups via the system resolver"
    );
    assert!(
        c.domain_policy("example.com", "default")
            .smtp_hosts
            .is_empty()
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(c.source_for(ip("127.0.0.1")).unwrap().allow_relaying);
    assert!(c.source_for(ip("::1")).unwrap().allow_relaying);
    assert!(
        c.source_for(ip("192.0.2.1")).is_none(),
        "never an open relay"
    );
    assert!(c.relay_domains.is_empty());
    assert_eq!(c.vmtas.len(), 1);
    let v = &c.vmtas["default"];
    assert!(v.source_ip.is_unspecified());
    assert_eq!(v.ehlo, config::system_hostname());
    assert_eq!(c.default_vmta, "default");
    // A file is never the embedded default, even with the same text.
    let f = config::load_str(
        "x.toml",
        config::EMBEDDED_DEFAULT,
        Some(PathBuf::from("x.toml")),
    )
    .unwrap();
    assert!(!f.is_embedded_default());
}
