//! Unit tests of loading: positions, key paths, inheritance order, lookups.

use std::time::Duration;

use super::*;

fn load_text(text: &str) -> Result<Config, ConfigErrors> {
    load_str("t.toml", text, Some(PathBuf::from("t.toml")))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_text(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.errors,
    }
}

#[test]
fn embedded_default_loads() {
    let c = load(None).unwrap();
    assert!(c.is_embedded_default());
    assert_eq!(c.default_vmta, "default");
    assert_eq!(c.vmtas["default"].ehlo, system_hostname());
}

#[test]
fn error_carries_line_column_and_key() {
    let e = errors("hostname = \"a.example\"\n\n[domain.\"x.com\"]\n  max_smtp_out = -1\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, Some(4));
    assert_eq!(e[0].column, Some(18));
    assert_eq!(e[0].key, "domain.\"x.com\".max_smtp_out");
    assert_eq!(e[0].kind, ConfigErrorKind::BadValue);
    assert_eq!(
        e[0].to_string(),
        "t.toml:4: domain.\"x.com\".max_smtp_out: -1 is out of range: expected 1 to 1000000"
    );
}

#[test]
fn missing_key_points_at_table_header() {
    let e = errors("[vmta.a]\nehlo = \"a.example\"\n");
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].line, e[0].key.as_str()),
        (Some(1), "vmta.a.source_ip")
    );
    assert_eq!(e[0].kind, ConfigErrorKind::Missing);
}

#[test]
fn errors_are_in_file_order() {
    let e =
        errors("[[source]]\nnetworks=[\"x\"]\ndefault_vmta=\"nope\"\n[spool]\nsync=\"x\"\nzzz=1\n");
    let lines: Vec<_> = e.iter().map(|e| e.line.unwrap_or(0)).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    assert_eq!(e.len(), 4, "{e:?}");
}

/// Each layer sets one key that a later layer does not touch, and one key
/// that every later layer overrides, so both "override" and "inherit" show.
#[test]
fn inheritance_order() {
    let c = load_text(
        r#"
[vmta.a]
source_ip = "127.0.0.2"
[vmta.a.domain."*"]
max_msg_per_connection = 4
max_smtp_out = 4
[vmta.a.domain."x.com"]
max_smtp_out = 5
[vmta.b]
source_ip = "127.0.0.3"
[domain."*"]
max_rcpt_per_transaction = 2
max_smtp_out = 2
max_msg_per_connection = 2
[domain."x.com"]
bounce_after = "1h"
max_smtp_out = 3
max_msg_per_connection = 3
"#,
    )
    .unwrap();
    let builtin = DomainPolicy::builtin();
    // b has no overrides: builtin < * < D.
    let p = c.domain_policy("x.com", "b");
    assert_eq!(p.max_smtp_out, 3);
    assert_eq!(p.max_msg_per_connection, 3);
    assert_eq!(p.max_rcpt_per_transaction, 2);
    assert_eq!(p.bounce_after, Duration::from_secs(3600));
    assert_eq!(p.greeting_timeout, builtin.greeting_timeout);
    // Unknown destination: builtin < *.
    let p = c.domain_policy("other.org", "b");
    assert_eq!((p.max_smtp_out, p.bounce_after), (2, builtin.bounce_after));
    // a: builtin < * < D < a.* < a.D.
    let p = c.domain_policy("X.COM.", "a");
    assert_eq!(p.max_smtp_out, 5);
    assert_eq!(p.max_msg_per_connection, 4, "vmta * beats the domain entry");
    assert_eq!(p.bounce_after, Duration::from_secs(3600));
    assert_eq!(p.max_rcpt_per_transaction, 2);
    let p = c.domain_policy("other.org", "a");
    assert_eq!((p.max_smtp_out, p.max_msg_per_connection), (4, 4));
    // Unknown vMTA: domain-level policy.
    assert_eq!(c.domain_policy("x.com", "nosuch").max_smtp_out, 3);
}

#[test]
fn builtin_defaults_fill_unset_keys() {
    let c = load(None).unwrap();
    let p = c.domain_policy("example.org", "default");
    assert_eq!(*p, DomainPolicy::builtin());
    assert_eq!(p.backoff_ramp_up, Duration::from_secs(1800));
    assert_eq!(p.retry_delay(1), Duration::from_secs(300));
    assert_eq!(p.retry_delay(100), Duration::from_secs(4 * 3600));
}

#[test]
fn most_specific_source_wins() {
    let c = load_text(
        r#"
[[source]]
networks = ["10.0.0.0/8"]
allow_relaying = true
[[source]]
networks = ["10.1.0.0/16", "2001:db8::/32"]
allow_relaying = false
"#,
    )
    .unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(c.source_for(ip("10.2.0.1")).unwrap().allow_relaying);
    assert!(!c.source_for(ip("10.1.0.1")).unwrap().allow_relaying);
    assert!(!c.source_for(ip("2001:db8::1")).unwrap().allow_relaying);
    assert!(c.source_for(ip("::ffff:10.2.0.1")).unwrap().allow_relaying);
    assert!(c.source_for(ip("192.0.2.1")).is_none());
}

#[test]
fn default_vmta_resolution() {
    let c = load_text("[vmta.z]\nsource_ip=\"127.0.0.2\"\n[vmta.b]\nsource_ip=\"127.0.0.3\"\n")
        .unwrap();
    assert_eq!(c.default_vmta, "z", "first vMTA in file order");
    let c = load_text(
        "default_vmta = \"p\"\n[vmta.b]\nsource_ip=\"127.0.0.3\"\n[pool.p]\nvmtas=[\"b\"]\n",
    )
    .unwrap();
    assert_eq!(c.default_vmta, "p");
    assert!(matches!(c.target("p"), Some(TargetRef::Pool(_))));
    assert!(matches!(c.target("b"), Some(TargetRef::Vmta(_))));
    let c = load_text("").unwrap();
    assert_eq!(c.default_vmta, "default");
    assert_eq!(
        c.vmtas["default"].source_ip,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    );
}

#[test]
fn relay_domains_case_insensitive() {
    let c = load_text("relay_domains = [\"Example.COM\"]\n").unwrap();
    assert!(c.is_relay_domain("example.com"));
    assert!(c.is_relay_domain("EXAMPLE.com."));
    assert!(!c.is_relay_domain("other.com"));
}

#[test]
fn restart_required_lists_only_fixed_settings() {
    let old =
        load_text("[[listener]]\naddress = \"127.0.0.1:25\"\n[domain.\"*\"]\nmax_smtp_out = 1\n")
            .unwrap();
    let same = load_text("[[listener]]\naddress = \"127.0.0.1:25\"\nmax_connections = 5\n[domain.\"*\"]\nmax_smtp_out = 9\n").unwrap();
    assert!(old.restart_required(&same).is_empty());
    let moved = load_text("[[listener]]\naddress = \"127.0.0.1:26\"\n[spool]\nsync = \"none\"\nzero_fill = \"always\"\nrecycle_segments = false\n[runtime]\nshards = 1\n").unwrap();
    assert_eq!(
        old.restart_required(&moved),
        [
            "listener.address",
            "spool.sync",
            "spool.zero_fill",
            "spool.recycle_segments",
            "runtime"
        ]
    );
}
