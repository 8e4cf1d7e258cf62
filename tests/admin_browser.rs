//! The status page in a real headless browser (Debian's chromium): load
//! `GET /` from a running spate whose queue was put in backoff through the
//! API, and check the rendered DOM shows that queue's row with a backoff
//! badge; without the token the page asks for it. A screenshot is written
//! under the target directory (never committed).
//!
//! Without /usr/bin/chromium the test says why and passes, unless
//! SPATE_REQUIRE_BROWSER is set (CI sets it and installs chromium).

mod admin_support;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use admin_support::{TOKEN, body, config, post, queue, wait_admin};
use support::sink::Sink;
use support::spate_proc::{Client, Spate, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(profile: &Path, extra: &[String], url: &str) -> String {
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_page_shows_a_queue_in_backoff() {
    if !Path::new(CHROMIUM).exists() {
        let required = std::env::var_os("SPATE_REQUIRE_BROWSER").is_some();
        eprintln!("{CHROMIUM} is absent: browser test skipped (apt-get install chromium)");
        assert!(
            !required,
            "SPATE_REQUIRE_BROWSER is set but {CHROMIUM} is absent"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spate = Spate::start(
        dir.path(),
        &config(dir.path(), smtp, sink.addr, admin, ""),
        smtp,
    );
    wait_admin(admin);
    let mut c = Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(
        c.message("a@sink.test", &["b@sink.test"], &body("page"))
            .starts_with("250")
    );
    c.cmd("QUIT");
    assert_eq!(
        sink.wait_for(1, Duration::from_secs(15)).len(),
        1,
        "{}",
        spate.log_text()
    );
    let a = post(
        admin,
        "/api/v1/queues/sink.test%2Fip1/mode",
        r#"{"mode":"backoff"}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(queue(admin, "sink.test/ip1").unwrap()["mode"], "backoff");

    // With the token (given once in the URL fragment, kept in sessionStorage).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-status-page.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{admin}/#token={TOKEN}");
    let profile = dir.path().join("chrome-a");
    let dom = chromium(&profile, &["--dump-dom".into()], &url);
    assert!(
        dom.contains(r#"<tr class="backoff" data-queue="sink.test/ip1">"#),
        "no backoff row for the queue in:\n{dom}"
    );
    assert!(
        dom.contains(r#"<span class="badge backoff">backoff</span>"#),
        "{dom}"
    );
    assert!(dom.contains("<td>ip1</td>"), "vMTA shown: {dom}");
    assert!(
        dom.contains(r#"<form id="login"><b>"#),
        "login form shown: {dom}"
    );
    chromium(
        &dir.path().join("chrome-b"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,900".into(),
        ],
        &url,
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no screenshot"
    );
    let phone = shot.with_file_name("admin-status-page-phone.png");
    chromium(
        &dir.path().join("chrome-d"),
        &[
            format!("--screenshot={}", phone.display()),
            "--window-size=390,844".into(),
        ],
        &url,
    );
    eprintln!("screenshots: {} {}", shot.display(), phone.display());

    // Without it the page asks for the token and shows no queue.
    let dom = chromium(
        &dir.path().join("chrome-c"),
        &["--dump-dom".into()],
        &format!("http://{admin}/"),
    );
    assert!(
        dom.contains(r#"<form id="login" style="display: block;">"#),
        "{dom}"
    );
    assert!(!dom.contains("data-queue="), "{dom}");
}
