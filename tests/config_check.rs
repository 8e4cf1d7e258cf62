//! `spate check` through the built binary: exit codes and output format.

use std::path::Path;
use std::process::{Command, Output};

fn spate_check(config: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spate"));
    cmd.arg("check");
    if let Some(p) = config {
        cmd.arg("--config").arg(p);
    }
    cmd.output().expect("run spate")
}

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/config")
        .join(name)
}

#[test]
fn embedded_default_is_valid() {
    let out = spate_check(None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok: 1 vmtas, 0 pools, 0 domains, 1 listeners"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn example_reports_each_missing_file_and_exits_78() {
    let path = data("example.toml");
    let out = spate_check(Some(&path));
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let p = path.display();
    assert_eq!(
        lines,
        [
            format!("{p}:32: admin.token_file: file not found: /etc/spate/admin.token"),
            format!("{p}:46: listener[0].tls_cert: file not found: /etc/spate/tls/cert.pem"),
            format!("{p}:47: listener[0].tls_key: file not found: /etc/spate/tls/key.pem"),
            format!(
                "{p}:143: dkim.\"example.com\".key: file not found: /etc/spate/dkim/example.com.pem"
            ),
            format!("{p}:152: accounting[0].path: directory not found: /var/log/spate"),
        ]
    );
}

#[test]
fn unknown_key_exits_78_naming_its_line() {
    let path = data("unknown_key.toml");
    let out = spate_check(Some(&path));
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:7: domain.\"gmail.com\".max_smpt_out: unknown key",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn valid_file_exits_0_with_summary_and_warnings_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spate.toml");
    std::fs::write(
        &path,
        "[spool]\nsync = \"none\"\n[vmta.a]\nsource_ip = \"127.0.0.2\"\n[pool.p]\nvmtas = [\"a\"]\n",
    )
    .unwrap();
    let out = spate_check(Some(&path));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "ok: 1 vmtas, 1 pools, 0 domains, 0 listeners, 0 sources, 0 users, 0 pattern lists, 0 dkim keys, 0 accounting files"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{}:2: warning: spool.sync: ", path.display()))
    );
}

#[test]
fn missing_config_file_exits_78() {
    let out = spate_check(Some(Path::new("/nonexistent/spate.toml")));
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "/nonexistent/spate.toml: file not found"
    );
}
