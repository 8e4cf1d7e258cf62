//! `spate ctl`: the command-line client of the admin API. A plain blocking
//! HTTP/1.1 client over std `TcpStream` (loopback by default), one request
//! per command; tables for people, `--json` for scripts. Exit status 0 on
//! success, 1 when the API answers with an error, 69 (EX_UNAVAILABLE) when
//! it cannot be reached, 64 (EX_USAGE) for a bad `--admin` URL.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// The embedded default's admin address.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:8025";
/// Connect, read and write timeout; a delete may take a while to bounce.
const CTL_TIMEOUT_MS: u64 = 70_000;
/// Connect timeout.
const CTL_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Largest answer read.
const CTL_RESPONSE_BYTES_MAX: u64 = 64 << 20;

pub const EXIT_OK: i32 = 0;
pub const EXIT_API_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_UNAVAILABLE: i32 = 69;

/// `spate ctl` arguments.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Admin API base URL (default: `[admin] listen` of --config, else http://127.0.0.1:8025).
    #[arg(long)]
    pub admin: Option<String>,
    /// File holding the bearer token (default: `[admin] token_file` of --config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Take the admin address and token file from this configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Totals, connections, spool space.
    Status,
    /// One row per queue.
    Queues {
        /// Sort key.
        #[arg(long, value_enum, default_value_t = SortKey::Queued)]
        sort: SortKey,
    },
    /// Stop delivering from QUEUE (domain/vmta, domain/* or */vmta).
    Pause { queue: String },
    /// Deliver from QUEUE again.
    Resume { queue: String },
    /// Set QUEUE's mode.
    Mode {
        queue: String,
        #[arg(value_parser = ["normal", "backoff"])]
        mode: String,
    },
    /// Bounce everything queued in QUEUE as admin-deleted.
    Delete {
        #[arg(long)]
        queue: String,
    },
    /// Move the messages queued in QUEUE to another vMTA (retries keep it).
    Reroute {
        /// domain/vmta, domain/* or */vmta.
        #[arg(long)]
        queue: String,
        /// A configured vMTA (not a pool).
        #[arg(long)]
        vmta: String,
    },
    /// Reload the configuration (as SIGHUP).
    Reload,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Queued,
    Name,
    Vmta,
    Mode,
    Connections,
    Delivered,
    Bounced,
    Deferred,
    Next,
}

/// An answer from the API.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("bad --admin URL {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot connect to the admin API at {url} (is spate running?): {cause}")]
    Unavailable { url: String, cause: String },
    #[error("cannot read the token file {path}: {cause}")]
    Token { path: String, cause: String },
}

/// Splits `http://host:port[/prefix]` into `host:port` and the path prefix.
pub fn parse_url(url: &str) -> Result<(String, String), CtlError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| CtlError::BadUrl(url.to_string()))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(CtlError::BadUrl(url.to_string()));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, prefix.trim_end_matches('/').to_string()))
}

/// Percent-encodes a queue selector for a path segment (`/` and `*` too).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends one request and reads the whole answer.
pub fn request(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<HttpAnswer, CtlError> {
    let (authority, prefix) = parse_url(base)?;
    let unavailable = |cause: String| CtlError::Unavailable {
        url: base.to_string(),
        cause,
    };
    let addrs: Vec<_> = authority
        .to_socket_addrs()
        .map_err(|e| unavailable(e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_millis(CTL_CONNECT_TIMEOUT_MS)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| unavailable(last))?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(CTL_TIMEOUT_MS)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(CTL_TIMEOUT_MS)));
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: spate-ctl/{}\r\nContent-Length: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream
        .write_all(head.as_bytes())
        .map_err(|e| unavailable(e.to_string()))?;
    let mut raw = Vec::new();
    stream
        .take(CTL_RESPONSE_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(|e| unavailable(e.to_string()))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => Ok(HttpAnswer {
            status: resp.code.unwrap_or(0),
            body: raw.get(n..).unwrap_or_default().to_vec(),
        }),
        _ => Err(unavailable("malformed HTTP answer".to_string())),
    }
}

/// Runs `spate ctl`; returns the exit status.
pub fn run(args: CtlArgs) -> i32 {
    let mut admin = args.admin.clone();
    let mut token_file = args.token_file.clone();
    if admin.is_none() || token_file.is_none() {
        let loaded = match &args.config {
            Some(path) => match crate::config::load(Some(path)) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("spate ctl: {e}");
                    return crate::config::EX_CONFIG;
                }
            },
            None => None,
        };
        if let Some(c) = loaded {
            admin.get_or_insert_with(|| format!("http://{}", c.admin.listen));
            if token_file.is_none() {
                token_file = c.admin.token_file.clone();
            }
        }
    }
    let admin = admin.unwrap_or_else(|| DEFAULT_ADMIN_URL.to_string());
    let token = match &token_file {
        None => None,
        Some(p) => match super::api::read_token(p) {
            Some(t) => Some(t),
            None => {
                eprintln!(
                    "spate ctl: {}",
                    CtlError::Token {
                        path: p.display().to_string(),
                        cause: "missing, unreadable or empty".into()
                    }
                );
                return EXIT_USAGE;
            }
        },
    };
    let (method, path, body) = match &args.command {
        CtlCommand::Status => ("GET", "/api/v1/status".to_string(), None),
        CtlCommand::Queues { .. } => ("GET", "/api/v1/queues".to_string(), None),
        CtlCommand::Pause { queue } => (
            "POST",
            format!("/api/v1/queues/{}/pause", encode_segment(queue)),
            None,
        ),
        CtlCommand::Resume { queue } => (
            "POST",
            format!("/api/v1/queues/{}/resume", encode_segment(queue)),
            None,
        ),
        CtlCommand::Mode { queue, mode } => (
            "POST",
            format!("/api/v1/queues/{}/mode", encode_segment(queue)),
            Some(serde_json::json!({ "mode": mode }).to_string()),
        ),
        CtlCommand::Delete { queue } => (
            "DELETE",
            format!("/api/v1/queues/{}/messages", encode_segment(queue)),
            None,
        ),
        CtlCommand::Reroute { queue, vmta } => (
            "POST",
            format!(
                "/api/v1/queues/{}/reroute?vmta={}",
                encode_segment(queue),
                encode_segment(vmta)
            ),
            None,
        ),
        CtlCommand::Reload => ("POST", "/api/v1/reload".to_string(), None),
    };
    let answer = match request(&admin, token.as_deref(), method, &path, body.as_deref()) {
        Ok(a) => a,
        Err(e @ CtlError::BadUrl(_)) => {
            eprintln!("spate ctl: {e}");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("spate ctl: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if answer.status == 401 {
        eprintln!("spate ctl: 401: wrong or missing token (--token-file)");
        return EXIT_API_ERROR;
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body).trim_end());
        return if (200..300).contains(&answer.status) {
            EXIT_OK
        } else {
            EXIT_API_ERROR
        };
    }
    if !(200..300).contains(&answer.status) {
        match value.get("errors").and_then(Value::as_array) {
            Some(errors) => {
                eprintln!("spate ctl: {}: the server refused:", answer.status);
                for e in errors {
                    eprintln!("  {}", e.as_str().unwrap_or_default());
                }
            }
            None => eprintln!(
                "spate ctl: {}: {}",
                answer.status,
                value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
            ),
        }
        return EXIT_API_ERROR;
    }
    let now = crate::runtime::local::unix_now_s();
    let s = |k: &str| value.get(k).map(short).unwrap_or_default();
    match &args.command {
        CtlCommand::Status => print!("{}", status_text(&value)),
        CtlCommand::Queues { sort } => print!(
            "{}",
            queues_table(
                value.as_array().map(Vec::as_slice).unwrap_or_default(),
                *sort,
                now
            )
        ),
        CtlCommand::Pause { .. } | CtlCommand::Resume { .. } | CtlCommand::Mode { .. } => {
            println!(
                "{}: {} queue(s) matching {}",
                s("action"),
                s("queues"),
                s("queue")
            );
            if matches!(args.command, CtlCommand::Pause { .. }) {
                println!("queues created later that match it start paused, until resumed");
            }
        }
        CtlCommand::Delete { .. } => println!(
            "deleted {} recipient(s) from {} (bounced as admin-deleted)",
            s("deleted_recipients"),
            s("queue")
        ),
        CtlCommand::Reroute { .. } => print!("{}", reroute_text(&value)),
        CtlCommand::Reload => println!("reloaded: {}", s("summary")),
    }
    EXIT_OK
}

/// The human form of a reroute's answer.
pub fn reroute_text(v: &Value) -> String {
    let s = |k: &str| v.get(k).map(short).unwrap_or_default();
    let mut out = format!(
        "rerouted {} message(s) ({} recipient(s)) from {} to {}\n",
        num(v, "moved_messages"),
        num(v, "moved_recipients"),
        s("queue"),
        s("vmta")
    );
    if num(v, "pending_messages") > 0 {
        out += &format!(
            "{} message(s) with recipients being delivered move when those settle\n",
            num(v, "pending_messages")
        );
    }
    if num(v, "stayed_messages") > 0 {
        out += &format!(
            "{} message(s) could not be moved and stay (see the server log)\n",
            num(v, "stayed_messages")
        );
    }
    out
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn fmt_bytes(v: Option<u64>) -> String {
    let Some(b) = v else { return "?".into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < units.len() {
        x /= 1024.0;
        i += 1;
    }
    format!("{x:.1} {}", units.get(i).unwrap_or(&"B"))
}

fn fmt_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The human form of `GET /api/v1/status`.
pub fn status_text(v: &Value) -> String {
    let t = v.get("totals").cloned().unwrap_or(Value::Null);
    let sp = v.get("spool").cloned().unwrap_or(Value::Null);
    let mut out = format!(
        "spate {} on {}, up {}, {} shards\n",
        short(v.get("version").unwrap_or(&Value::Null)),
        short(v.get("hostname").unwrap_or(&Value::Null)),
        fmt_duration(num(v, "uptime_seconds")),
        num(v, "shards")
    );
    out += &format!(
        "queued:      {} messages, {} recipients in {} queues ({} in backoff, {} paused)\n",
        num(v, "queued_messages"),
        num(v, "queued_recipients"),
        num(v, "queues"),
        num(v, "queues_in_backoff"),
        num(v, "queues_paused")
    );
    out += &format!(
        "connections: {} in, {} out\n",
        num(v, "connections_in"),
        num(v, "connections_out")
    );
    out += &format!(
        "totals:      received {} ({} recipients), delivered {}, bounced {}, deferred {}, expired {}\n",
        num(&t, "received_messages"),
        num(&t, "received_recipients"),
        num(&t, "delivered"),
        num(&t, "bounced"),
        num(&t, "deferred"),
        num(&t, "expired")
    );
    out += &format!(
        "spool:       {} used, {} free ({})\n",
        fmt_bytes(sp.get("bytes_used").and_then(Value::as_u64)),
        fmt_bytes(sp.get("bytes_free").and_then(Value::as_u64)),
        short(sp.get("path").unwrap_or(&Value::Null))
    );
    if let Some(e) = v.get("shard_error").and_then(Value::as_str) {
        out += &format!("warning:     {e}\n");
    }
    out
}

/// Longest backoff reason shown in the table (the JSON has it whole).
const REASON_CHARS_MAX: usize = 60;

/// The `spate ctl queues` table.
pub fn queues_table(rows: &[Value], sort: SortKey, now: u64) -> String {
    let mut rows: Vec<&Value> = rows.iter().collect();
    let name = |v: &Value| v.get("queue").map(short).unwrap_or_default();
    rows.sort_by(|a, b| {
        let key = match sort {
            SortKey::Queued => (num(b, "queued") + num(b, "deferred"))
                .cmp(&(num(a, "queued") + num(a, "deferred"))),
            SortKey::Name => std::cmp::Ordering::Equal,
            SortKey::Vmta => short(&a["vmta"]).cmp(&short(&b["vmta"])),
            SortKey::Mode => short(&a["mode"]).cmp(&short(&b["mode"])),
            SortKey::Connections => num(b, "connections").cmp(&num(a, "connections")),
            SortKey::Delivered => num(b, "delivered_last_hour").cmp(&num(a, "delivered_last_hour")),
            SortKey::Bounced => num(b, "bounced_last_hour").cmp(&num(a, "bounced_last_hour")),
            SortKey::Deferred => num(b, "deferred_last_hour").cmp(&num(a, "deferred_last_hour")),
            SortKey::Next => {
                let n = |v: &Value| {
                    v.get("next_attempt_unix")
                        .and_then(Value::as_u64)
                        .unwrap_or(u64::MAX)
                };
                n(a).cmp(&n(b))
            }
        };
        key.then_with(|| name(a).cmp(&name(b)))
    });
    let header = [
        "QUEUE", "VMTA", "MODE", "SINCE", "QUEUED", "DEFERRED", "INFLIGHT", "CONNS", "DLV/1H",
        "BNC/1H", "DEF/1H", "NEXT", "REASON",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in &rows {
        let mut mode = short(&r["mode"]);
        if r.get("paused").and_then(Value::as_bool).unwrap_or(false) {
            mode.push_str(",paused");
        }
        let since = r
            .get("mode_since_unix")
            .and_then(Value::as_u64)
            .map(|t| fmt_duration(now.saturating_sub(t)))
            .unwrap_or_default();
        let next = r
            .get("next_attempt_unix")
            .and_then(Value::as_u64)
            .map(|t| format!("in {}", fmt_duration(t.saturating_sub(now))))
            .unwrap_or_else(|| "-".into());
        let reason = r
            .get("backoff_reason")
            .filter(|v| !v.is_null())
            .or_else(|| r.get("last_error").filter(|v| !v.is_null()))
            .map(short)
            .unwrap_or_else(|| "-".into());
        let reason: String = reason
            .replace(['\r', '\n'], " ")
            .chars()
            .take(REASON_CHARS_MAX)
            .collect();
        table.push(vec![
            name(r),
            short(&r["vmta"]),
            mode,
            since,
            num(r, "queued").to_string(),
            num(r, "deferred").to_string(),
            num(r, "in_flight").to_string(),
            num(r, "connections").to_string(),
            num(r, "delivered_last_hour").to_string(),
            num(r, "bounced_last_hour").to_string(),
            num(r, "deferred_last_hour").to_string(),
            next,
            reason,
        ]);
    }
    let cols = header.len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|row| row.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            let numeric = (4..=10).contains(&c);
            if c + 1 == cols {
                line.push_str(cell);
            } else if numeric {
                line.push_str(&format!("{cell:>w$}  "));
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no queues)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        assert_eq!(
            parse_url("http://127.0.0.1:8025").unwrap(),
            ("127.0.0.1:8025".into(), "".into())
        );
        assert_eq!(
            parse_url("http://localhost/x/").unwrap(),
            ("localhost:80".into(), "/x".into())
        );
        assert_eq!(
            parse_url("http://[::1]:9/").unwrap(),
            ("[::1]:9".into(), "".into())
        );
        assert!(parse_url("https://x").is_err());
        assert!(parse_url("http://").is_err());
        assert_eq!(encode_segment("gmail.com/ip1"), "gmail.com%2Fip1");
        assert_eq!(encode_segment("*/ip 1"), "%2A%2Fip%201");
        assert_eq!(
            super::super::http::percent_decode(&encode_segment("a.b/ü*")).unwrap(),
            "a.b/ü*"
        );
    }

    #[test]
    fn reroute_answer_text() {
        let v: Value = serde_json::from_str(
            r#"{"queue":"a.test/ip1","vmta":"ip2","moved_messages":3,"moved_recipients":4,"pending_messages":1,"stayed_messages":0}"#,
        )
        .unwrap();
        let t = reroute_text(&v);
        assert!(
            t.starts_with("rerouted 3 message(s) (4 recipient(s)) from a.test/ip1 to ip2\n"),
            "{t}"
        );
        assert!(t.contains("1 message(s) with recipients being delivered"));
        assert!(!t.contains("could not be moved"));
    }

    #[test]
    fn queue_table_sorts_and_aligns() {
        let rows: Vec<Value> = serde_json::from_str(
            r#"[{"queue":"a.test/v1","vmta":"v1","mode":"normal","queued":1,"deferred":0,"paused":false,"mode_since_unix":100},
                {"queue":"b.test/v2","vmta":"v2","mode":"backoff","queued":7,"deferred":2,"paused":true,"backoff_reason":"421 slow down","mode_since_unix":40,"next_attempt_unix":160}]"#,
        )
        .unwrap();
        let t = queues_table(&rows, SortKey::Queued, 100);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("QUEUE"));
        assert!(lines[1].starts_with("b.test/v2"), "{t}");
        assert!(
            lines[1].contains("backoff,paused")
                && lines[1].contains("1m0s")
                && lines[1].contains("421 slow down")
        );
        assert!(lines[1].contains("in 1m0s"));
        let t = queues_table(&rows, SortKey::Name, 100);
        assert!(t.lines().nth(1).unwrap().starts_with("a.test/v1"));
        assert!(queues_table(&[], SortKey::Name, 0).contains("(no queues)"));
    }
}
