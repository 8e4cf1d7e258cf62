//! Configuration errors: every class (unknown key, wrong type, bad value,
//! syntax, unreadable input) with its line and key path, every cross-check,
//! and the checks on referenced files' contents.

use std::path::{Path, PathBuf};

use spate::config::{self, Config, ConfigError, ConfigErrorKind, ConfigErrors};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/config")
        .join(name)
}

fn load_text(text: &str) -> Result<Config, ConfigErrors> {
    config::load_str("t.toml", text, Some(PathBuf::from("t.toml")))
}

/// The errors of an invalid text, as (line, key, kind).
fn errs(text: &str) -> Vec<(usize, String, ConfigErrorKind)> {
    match load_text(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e
            .errors
            .into_iter()
            .map(|e: ConfigError| (e.line.unwrap_or(0), e.key, e.kind))
            .collect(),
    }
}

#[test]
fn unknown_key_fixture_names_its_line() {
    let err = config::load(Some(&data("unknown_key.toml"))).unwrap_err();
    assert_eq!(err.len(), 1, "{err}");
    let e = &err.errors[0];
    assert_eq!(
        (e.line, e.key.as_str(), e.kind),
        (
            Some(7),
            "domain.\"gmail.com\".max_smpt_out",
            ConfigErrorKind::UnknownKey
        )
    );
    assert!(
        e.reason.contains("did you mean \"max_smtp_out\""),
        "{}",
        e.reason
    );
}

#[test]
fn wrong_types() {
    use ConfigErrorKind::WrongType;
    let cases: &[(&str, &str)] = &[
        ("hostname = 5", "hostname"),
        ("[spool]\nsegment_size = true", "spool.segment_size"),
        (
            "[spool]\nrecycle_segments = \"yes\"",
            "spool.recycle_segments",
        ),
        ("[runtime]\npin_cores = \"yes\"", "runtime.pin_cores"),
        ("[runtime]\nshards = \"many\"", "runtime.shards"),
        ("[dns]\nnameservers = \"127.0.0.1\"", "dns.nameservers"),
        ("[[listener]]\naddress = 25", "listener[0].address"),
        (
            "[domain.\"*\"]\nmax_smtp_out = \"20\"",
            "domain.\"*\".max_smtp_out",
        ),
        (
            "[domain.\"*\"]\nretry_after = \"5m\"",
            "domain.\"*\".retry_after",
        ),
        (
            "[domain.\"*\"]\nbounce_after = 3600",
            "domain.\"*\".bounce_after",
        ),
        ("[domain.\"*\"]\ndkim_sign = 1", "domain.\"*\".dkim_sign"),
        ("spool = 1", "spool"),
        ("[[source]]\nnetworks = [1]", "source[0].networks[0]"),
    ];
    for (text, key) in cases {
        let e = errs(text);
        assert_eq!(
            e,
            vec![(2.min(text.lines().count()), key.to_string(), WrongType)],
            "{text}"
        );
    }
}

#[test]
fn bad_values() {
    use ConfigErrorKind::BadValue;
    let cases: &[(&str, &str)] = &[
        (
            "[domain.\"*\"]\nconnect_timeout = \"2 minutes\"",
            "domain.\"*\".connect_timeout",
        ),
        (
            "[domain.\"*\"]\nconnect_timeout = \"0s\"",
            "domain.\"*\".connect_timeout",
        ),
        (
            "[domain.\"*\"]\nbackoff_to_normal_after = \"sometime\"",
            "domain.\"*\".backoff_to_normal_after",
        ),
        (
            "[domain.\"*\"]\nmax_msg_rate = \"10/w\"",
            "domain.\"*\".max_msg_rate",
        ),
        (
            "[domain.\"*\"]\nmax_connect_rate = \"0/s\"",
            "domain.\"*\".max_connect_rate",
        ),
        (
            "[domain.\"*\"]\nstarttls = \"always\"",
            "domain.\"*\".starttls",
        ),
        (
            "[domain.\"*\"]\nmax_smtp_out = 0",
            "domain.\"*\".max_smtp_out",
        ),
        (
            "[domain.\"*\"]\nsmtp_hosts = [\"h:0\"]",
            "domain.\"*\".smtp_hosts[0]",
        ),
        (
            "[spool]\nsegment_size = \"64 furlongs\"",
            "spool.segment_size",
        ),
        ("[spool]\nsegment_size = 10", "spool.segment_size"),
        (
            "[spool]\ncompact_live_ratio = 1.5",
            "spool.compact_live_ratio",
        ),
        ("[spool]\nzero_fill = \"sometimes\"", "spool.zero_fill"),
        ("[[listener]]\naddress = \"0.0.0.0\"", "listener[0].address"),
        (
            "[[listener]]\naddress = \"127.0.0.1:25\"\nmax_message_size = \"1XB\"",
            "listener[0].max_message_size",
        ),
        (
            "[[source]]\nnetworks = [\"10.0.0.0/33\"]",
            "source[0].networks[0]",
        ),
        (
            "[[source]]\nnetworks = [\"::1/129\"]",
            "source[0].networks[0]",
        ),
        ("[vmta.a]\nsource_ip = \"1.2.3\"", "vmta.a.source_ip"),
        (
            "[vmta.a]\nsource_ip = \"1.2.3.4\"\nehlo = \"bad name\"",
            "vmta.a.ehlo",
        ),
        (
            "[smtp_pattern_list.l]\nrules = [{ reply = '[z-a]' }]",
            "smtp_pattern_list.l.rules[0].reply",
        ),
        (
            "[smtp_pattern_list.l]\nrules = [{ reply = 'x', bounce_category = \"spam\" }]",
            "smtp_pattern_list.l.rules[0].bounce_category",
        ),
        (
            "[smtp_pattern_list.l]\nrules = [{ reply = 'x', bounce_category = \"admin-deleted\" }]",
            "smtp_pattern_list.l.rules[0].bounce_category",
        ),
        (
            "[smtp_pattern_list.l]\nrules = [{ reply = 'x', reenable_after = \"1h\" }]",
            "smtp_pattern_list.l.rules[0].reenable_after",
        ),
        (
            "[[user]]\nname = \"u\"\npassword_hash = \"plain\"",
            "user[0].password_hash",
        ),
        (
            "[[accounting]]\npath = \"/tmp/a.csv\"\nformat = \"xml\"",
            "accounting[0].format",
        ),
        (
            "[dkim.\"a.com\"]\nselector = \"s\"\nkey = \"/tmp\"\ncanonicalization = \"loose\"",
            "dkim.\"a.com\".canonicalization",
        ),
    ];
    for (text, key) in cases {
        let e = errs(text);
        assert!(
            e.iter().any(|(_, k, kind)| k == key && *kind == BadValue),
            "{text}\n=> {e:?}"
        );
    }
}

#[test]
fn every_error_is_reported_in_one_run() {
    let e = errs(
        "bogus = 1\n[spool]\nsync = \"sometimes\"\n[domain.\"*\"]\nmax_smtp_out = 0\nretry_after = [\"5m\", \"x\"]\n[vmta.a]\nsource_ip = \"nope\"\n",
    );
    let keys: Vec<&str> = e.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "bogus",
            "spool.sync",
            "domain.\"*\".max_smtp_out",
            "domain.\"*\".retry_after[1]",
            "vmta.a.source_ip"
        ]
    );
    let lines: Vec<usize> = e.iter().map(|(l, _, _)| *l).collect();
    assert_eq!(lines, [1, 3, 5, 6, 8]);
}

#[test]
fn cross_checks() {
    use ConfigErrorKind::*;
    let v = "[vmta.a]\nsource_ip = \"127.0.0.2\"\n";
    let cases: Vec<(String, &str, ConfigErrorKind)> = vec![
        (
            format!("{v}[pool.p]\nvmtas = [\"a\", \"b\"]\n"),
            "pool.p.vmtas[1]",
            UnknownReference,
        ),
        (
            format!("{v}[pool.p]\nvmtas = [\"a\"]\nweights = [1, 2]\n"),
            "pool.p.weights",
            BadValue,
        ),
        (
            format!("{v}[pool.p]\nvmtas = []\n"),
            "pool.p.vmtas",
            BadValue,
        ),
        (
            format!("{v}[pool.p]\nvmtas = [\"a\", \"a\"]\n"),
            "pool.p.vmtas[1]",
            Duplicate,
        ),
        (
            format!("{v}[pool.a]\nvmtas = [\"a\"]\n"),
            "pool.a",
            Duplicate,
        ),
        (
            format!("{v}[pool.p]\nvmtas = [\"a\"]\n[pool.q]\nvmtas = [\"p\"]\n"),
            "pool.q.vmtas[0]",
            UnknownReference,
        ),
        (
            format!("default_vmta = \"zz\"\n{v}"),
            "default_vmta",
            UnknownReference,
        ),
        (
            format!("{v}[[source]]\nnetworks = [\"10.0.0.0/8\"]\ndefault_vmta = \"zz\"\n"),
            "source[0].default_vmta",
            UnknownReference,
        ),
        (
            format!(
                "{v}[[user]]\nname = \"u\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$Br0f7MiOm4kZg58KTDYYQQ$Det6SJOUWWGVWuKEIcAtQG891o2yo1KsVuVBUmTo60Q\"\ndefault_vmta = \"zz\"\n"
            ),
            "user[0].default_vmta",
            UnknownReference,
        ),
        (
            format!("{v}[domain.\"*\"]\nsmtp_pattern_list = \"nolist\"\n"),
            "domain.\"*\".smtp_pattern_list",
            UnknownReference,
        ),
        (
            format!("{v}[vmta.a.domain.\"x.com\"]\nsmtp_pattern_list = \"nolist\"\n"),
            "vmta.a.domain.\"x.com\".smtp_pattern_list",
            UnknownReference,
        ),
        (
            format!("{v}dkim_also_sign = [\"esp.example.net\"]\n"),
            "vmta.a.dkim_also_sign[0]",
            UnknownReference,
        ),
        (
            format!(
                "{v}[[listener]]\naddress = \"127.0.0.1:25\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n"
            ),
            "listener[1].address",
            Duplicate,
        ),
        (
            format!(
                "{v}[[listener]]\naddress = \"127.0.0.1:25\"\n[[listener]]\naddress = \"0.0.0.0:25\"\n"
            ),
            "listener[1].address",
            Duplicate,
        ),
        (
            format!(
                "{v}[admin]\nlisten = \"127.0.0.1:2525\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\n"
            ),
            "admin.listen",
            Duplicate,
        ),
        (
            format!(
                "{v}[admin]\nlisten = \"127.0.0.1:2525\"\n[[listener]]\naddress = \"0.0.0.0:2525\"\n"
            ),
            "admin.listen",
            Duplicate,
        ),
        (
            format!(
                "{v}[[source]]\nnetworks = [\"10.0.0.0/8\"]\n[[source]]\nnetworks = [\"10.0.0.0/8\"]\n"
            ),
            "source[1].networks[0]",
            Duplicate,
        ),
        (
            format!("{v}[domain.\"x.com\"]\n[domain.\"X.com\"]\n"),
            "domain.\"X.com\"",
            Duplicate,
        ),
        (
            format!("{v}[admin]\nlisten = \"0.0.0.0:8025\"\n"),
            "admin.listen",
            BadValue,
        ),
        (
            format!("{v}[admin]\ntoken_file = \"/nonexistent/token\"\n"),
            "admin.token_file",
            FileNotFound,
        ),
        (
            format!("{v}[admin]\ntoken_file = \"/\"\n"),
            "admin.token_file",
            FileUnreadable,
        ),
        (
            format!("{v}[admin]\ntoken_file = \"/dev/null\"\n"),
            "admin.token_file",
            FileUnreadable,
        ),
        (
            format!(
                "{v}[[listener]]\naddress = \"127.0.0.1:25\"\ntls_cert = \"/nonexistent/c.pem\"\n"
            ),
            "listener[0].tls_key",
            Missing,
        ),
        (
            format!("{v}[[listener]]\naddress = \"127.0.0.1:25\"\nrequire_tls = true\n"),
            "listener[0].require_tls",
            BadValue,
        ),
        (
            format!("{v}[dkim.\"a.com\"]\nselector = \"s\"\nkey = \"/nonexistent/k.pem\"\n"),
            "dkim.\"a.com\".key",
            FileNotFound,
        ),
        (
            format!("{v}[[accounting]]\npath = \"/nonexistent/dir/a.csv\"\n"),
            "accounting[0].path",
            FileNotFound,
        ),
        (
            format!(
                "{v}[[accounting]]\npath = \"/tmp/a.csv\"\n[[accounting]]\npath = \"/tmp/a.csv\"\n"
            ),
            "accounting[1].path",
            Duplicate,
        ),
        (
            format!(
                "{v}[[user]]\nname = \"u\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$Br0f7MiOm4kZg58KTDYYQQ$Det6SJOUWWGVWuKEIcAtQG891o2yo1KsVuVBUmTo60Q\"\n[[user]]\nname = \"u\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$Br0f7MiOm4kZg58KTDYYQQ$Det6SJOUWWGVWuKEIcAtQG891o2yo1KsVuVBUmTo60Q\"\n"
            ),
            "user[1].name",
            Duplicate,
        ),
        (
            "[smtp_pattern_list.none]\nrules = []\n".to_string(),
            "smtp_pattern_list.none",
            BadValue,
        ),
        (
            "[vmta.\"a/b\"]\nsource_ip = \"1.2.3.4\"\n".to_string(),
            "vmta.\"a/b\"",
            BadValue,
        ),
    ];
    for (text, key, kind) in &cases {
        let e = errs(text);
        assert!(
            e.iter().any(|(_, k, kd)| k == key && kd == kind),
            "expected {key} {kind:?} for:\n{text}\n=> {e:?}"
        );
    }
}

#[test]
fn unreadable_inputs_are_errors() {
    let e = config::load(Some(Path::new("/nonexistent/spate.toml"))).unwrap_err();
    assert_eq!((e.len(), e.errors[0].kind), (1, ConfigErrorKind::Io));
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin.toml");
    std::fs::write(&bin, [0xff, 0xfe, b'a']).unwrap();
    assert_eq!(
        config::load(Some(&bin)).unwrap_err().errors[0].kind,
        ConfigErrorKind::Io
    );
    let e = errs("a = 1\na = 2\n[x\n");
    assert!(e.iter().all(|(_, _, k)| *k == ConfigErrorKind::Syntax));
    assert_eq!(e[0].0, 2);
}

#[test]
fn referenced_files_must_hold_what_their_key_says() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.display().to_string()
    };
    let garbage = write("garbage.pem", "not a pem file\n");
    let empty = write("empty.token", " \n");
    let cases = [
        (
            format!("[admin]\ntoken_file = \"{empty}\"\n"),
            "admin.token_file",
            "is empty",
        ),
        (
            format!(
                "[[listener]]\naddress = \"127.0.0.1:25\"\ntls_cert = \"{garbage}\"\ntls_key = \"{garbage}\"\n"
            ),
            "listener[0].tls_cert",
            "no PEM certificate",
        ),
        (
            format!(
                "[[listener]]\naddress = \"127.0.0.1:25\"\ntls_cert = \"{garbage}\"\ntls_key = \"{garbage}\"\n"
            ),
            "listener[0].tls_key",
            "no usable PEM private key",
        ),
        (
            format!("[dkim.\"a.com\"]\nselector = \"s\"\nkey = \"{garbage}\"\n"),
            "dkim.\"a.com\".key",
            "not a PEM RSA or Ed25519 private key",
        ),
        (
            format!(
                "[dkim.\"a.com\"]\nselector = \"s\"\nkey = \"{}\"\n",
                data("dkim-rsa512.pem").display()
            ),
            "dkim.\"a.com\".key",
            "RSA key of 512 bits",
        ),
    ];
    for (text, key, reason) in &cases {
        let err = load_text(text).unwrap_err();
        assert!(
            err.iter().any(|e| e.key == *key
                && e.kind == ConfigErrorKind::BadValue
                && e.reason.contains(reason)),
            "expected {key}: {reason} for\n{text}\n=> {err}"
        );
    }
    // Both RSA encodings of a 2048-bit key are accepted; the fixtures are
    // world-readable in a checkout, which is worth a warning.
    for fixture in ["dkim-rsa2048.pem", "dkim-rsa2048-pkcs1.pem"] {
        let key = dir.path().join(fixture);
        std::fs::copy(data(fixture), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = load_text(&format!(
            "[dkim.\"a.com\"]\nselector = \"s\"\nkey = \"{}\"\n",
            key.display()
        ))
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.key == "dkim.\"a.com\".key"
                    && w.reason.contains("readable by every user"))
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load_text(&format!(
            "[dkim.\"a.com\"]\nselector = \"s\"\nkey = \"{}\"\n",
            key.display()
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
