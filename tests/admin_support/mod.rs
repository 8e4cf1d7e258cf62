//! Helpers for the admin tests: a spate configuration with an admin API
//! and token, a raw HTTP client, and a strict Prometheus text parser.

#![allow(dead_code)] // reason: each test binary uses a different subset

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

pub const TOKEN: &str = "s3cret-admin-token";

/// A configuration with vMTA `ip1` (127.0.0.2) delivering `sink.test` to
/// the sink, an admin API on `admin` with the token in `<dir>/token`.
pub fn config(
    dir: &Path,
    smtp: SocketAddr,
    sink: SocketAddr,
    admin: SocketAddr,
    extra: &str,
) -> String {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let head = crate::support::config::head(
        dir,
        smtp,
        &format!("listen = \"{admin}\"\ntoken_file = \"{}\"", token.display()),
    );
    let acct = crate::support::config::accounting(dir);
    format!(
        r#"{head}
[[source]]
networks = ["127.0.0.1/32"]
allow_relaying = true
process_x_virtual_mta = true
default_vmta = "ip1"

[vmta.ip1]
source_ip = "127.0.0.2"
ehlo = "mta1.relay.test"

[domain."*"]
retry_after = ["1s"]
bounce_after = "1h"

[domain."sink.test"]
smtp_hosts = ["{sink}"]
{acct}{extra}
"#,
    )
}

/// A free loopback address.
pub fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", crate::support::spate_proc::free_port())
        .parse()
        .unwrap()
}

/// spate on [`config`] (no extra lines) in `dir`, delivering `sink.test` to
/// `sink`; returned with its SMTP and admin addresses once the admin API
/// answers.
pub fn start(
    dir: &Path,
    sink: SocketAddr,
) -> (crate::support::spate_proc::Spate, SocketAddr, SocketAddr) {
    start_with(dir, sink, "")
}

/// [`start`] with `extra` appended to the [`config`] (after its
/// `[[accounting]]` table, so settings go in tables of their own).
pub fn start_with(
    dir: &Path,
    sink: SocketAddr,
    extra: &str,
) -> (crate::support::spate_proc::Spate, SocketAddr, SocketAddr) {
    let (smtp, admin) = (addr(), addr());
    let spate =
        crate::support::spate_proc::Spate::start(dir, &config(dir, smtp, sink, admin, extra), smtp);
    wait_admin(admin);
    (spate, smtp, admin)
}

/// Sends `n` messages `a@sink.test` → `b@sink.test` in one session, subjects
/// "`tag` 0", "`tag` 1", …; each must get 250.
pub fn send(smtp: SocketAddr, n: usize, tag: &str) {
    let mut c = crate::support::spate_proc::Client::connect(smtp);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    for i in 0..n {
        let r = c.message(
            "a@sink.test",
            &["b@sink.test"],
            &body(&format!("{tag} {i}")),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    c.cmd("QUIT");
}

pub fn body(subject: &str) -> String {
    format!("From: a@sink.test\r\nTo: b@sink.test\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request (optionally with the bearer token) and reads the answer.
pub fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

pub fn get(admin: SocketAddr, path: &str) -> Answer {
    http(admin, "GET", path, Some(TOKEN), "")
}

pub fn post(admin: SocketAddr, path: &str, body: &str) -> Answer {
    http(admin, "POST", path, Some(TOKEN), body)
}

/// Waits until the admin API answers.
pub fn wait_admin(admin: SocketAddr) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(admin).is_err() {
        assert!(std::time::Instant::now() < end, "admin API did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The queue object named `name` from `GET /api/v1/queues`.
pub fn queue(admin: SocketAddr, name: &str) -> Option<serde_json::Value> {
    let a = get(admin, "/api/v1/queues");
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == name)
        .cloned()
}

/// One sample of the exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text format 0.0.4 strictly: every line is a HELP,
/// a TYPE or a sample; TYPE comes once per family, before its samples;
/// names and label names are valid; label values are properly escaped;
/// values are floats; counters end in `_total`.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    if !text.ends_with('\n') {
        return Err("exposition must end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let ln = n + 1;
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().ok_or(format!("line {ln}: no metric name"))?;
            let arg = parts
                .next()
                .ok_or(format!("line {ln}: nothing after the name"))?;
            check_name(name).map_err(|e| format!("line {ln}: {e}"))?;
            match kw {
                "HELP" => {}
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(format!("line {ln}: bad type {arg}"));
                    }
                    if sampled.contains(name) {
                        return Err(format!("line {ln}: TYPE after samples of {name}"));
                    }
                    if types.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(format!("line {ln}: second TYPE for {name}"));
                    }
                    if arg == "counter" && !name.ends_with("_total") {
                        return Err(format!("line {ln}: counter {name} does not end in _total"));
                    }
                }
                _ => return Err(format!("line {ln}: unknown comment {kw}")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(format!("line {ln}: unexpected line {line:?}"));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or(format!("line {ln}: no value"))?;
        let name = &line[..name_end];
        check_name(name).map_err(|e| format!("line {ln}: {e}"))?;
        // A histogram's samples are its family name plus _bucket, _sum or
        // _count (and a _bucket sample needs an `le` label, checked below).
        let histogram_base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|sfx| name.strip_suffix(sfx))
            .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"));
        if !types.contains_key(name) && histogram_base.is_none() {
            return Err(format!(
                "line {ln}: sample of {name} without a TYPE before it"
            ));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                let (start, _) = *chars
                    .peek()
                    .ok_or(format!("line {ln}: unterminated labels"))?;
                if r[start..].starts_with('}') {
                    end = start + 1;
                    break;
                }
                let eq = r[start..]
                    .find('=')
                    .ok_or(format!("line {ln}: label without ="))?
                    + start;
                let lname = &r[start..eq];
                check_name(lname).map_err(|e| format!("line {ln}: label {e}"))?;
                if !r[eq + 1..].starts_with('"') {
                    return Err(format!("line {ln}: label value not quoted"));
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    let (_, c) = chars
                        .next()
                        .ok_or(format!("line {ln}: unterminated label value"))?;
                    match c {
                        '"' => break,
                        '\\' => match chars.next().map(|x| x.1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(format!("line {ln}: bad escape {other:?}")),
                        },
                        '\n' => return Err(format!("line {ln}: raw newline in label")),
                        c => value.push(c),
                    }
                }
                labels.push((lname.to_string(), value));
                match chars.next() {
                    Some((_, ',')) => {}
                    Some((i, '}')) => {
                        end = i + 1;
                        break;
                    }
                    other => {
                        return Err(format!(
                            "line {ln}: expected , or }} after a label, got {other:?}"
                        ));
                    }
                }
            }
            rest = &r[end..];
        }
        let value_text = rest
            .strip_prefix(' ')
            .ok_or(format!("line {ln}: no space before the value"))?;
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| format!("line {ln}: bad value {v:?}"))?,
        };
        sampled.insert(histogram_base.unwrap_or(name).to_string());
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!("bad name {name:?}"))
    }
}

#[test]
fn the_parser_rejects_bad_expositions() {
    assert!(parse_prometheus("# TYPE a_total counter\na_total 1\n").is_ok());
    assert!(parse_prometheus("a 1\n").is_err(), "no TYPE");
    assert!(parse_prometheus("# TYPE a gauge\na{x=\"1\"} 1\n# TYPE a gauge\n").is_err());
    assert!(parse_prometheus("# TYPE a gauge\na{x=1} 1\n").is_err());
    assert!(parse_prometheus("# TYPE a gauge\na{x=\"a\\q\"} 1\n").is_err());
    assert!(parse_prometheus("# TYPE a gauge\na one\n").is_err());
    assert!(
        parse_prometheus("# TYPE a counter\na 1\n").is_err(),
        "counter without _total"
    );
    let s = parse_prometheus("# TYPE a gauge\na{x=\"q\\\"\\n\",y=\"\"} 2.5\n").unwrap();
    assert_eq!(
        s[0].labels,
        vec![("x".into(), "q\"\n".into()), ("y".into(), String::new())]
    );
}

/// Waits until spate counts `n` deliveries (the sink sees a message
/// before spate has read the 250 and counted it).
pub fn wait_delivered(admin: SocketAddr, n: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = get(admin, "/api/v1/status").json();
        if s["totals"]["delivered"].as_u64().unwrap_or(0) >= n || std::time::Instant::now() > end {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
