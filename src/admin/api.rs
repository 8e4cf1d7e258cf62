//! The admin API's routes, authorisation and answers. Shard state is read
//! by message passing (`ShardMsg::Admin` to every shard, answers merged
//! with a deadline so a stuck shard never hangs the API); process counters
//! come from the shared atomics. HTTP framing is `http.rs`'s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use subtle::ConstantTimeEq;

use super::http::{Request, Response, percent_decode};
use super::metrics::{MetricsSnapshot, render};
use crate::config::Config;
use crate::queue::engine::QueueView;
use crate::runtime::mesh::TrySend;
use crate::runtime::server::{AdminRequest, ShardMsg, Shared};
use crate::runtime::stats::Stats;

/// How long a shard has to answer a read or a pause/resume/mode.
const SHARD_ANSWER_MS: u64 = 5_000;
/// How long shards have to bounce everything a delete selects.
const SHARD_DELETE_MS: u64 = 60_000;
/// How long shards have to rewrite everything a reroute selects.
const SHARD_REROUTE_MS: u64 = 60_000;
/// Pause between tries when a shard's inbox is full.
const SHARD_SEND_RETRY_MS: u64 = 2;

/// Largest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;

const QUEUES_PREFIX: &str = "/api/v1/queues/";

/// Answers one request from `peer`.
pub fn handle(shared: &Shared, req: &Request, peer: IpAddr) -> Response {
    let config = current_config(shared);
    let path = req.path.as_str();
    let method = req.method.as_str();

    // The page itself holds no data; it asks for the token and sends it.
    if path == "/" || path == "/index.html" {
        return match method {
            "GET" => Response::new(200, "text/html; charset=utf-8", super::page::PAGE),
            _ => not_allowed("GET"),
        };
    }
    let known = path == "/metrics"
        || path == "/api/v1/status"
        || path == "/api/v1/queues"
        || path == "/api/v1/reload"
        || path.starts_with(QUEUES_PREFIX);
    if !known {
        return Response::error(404, format!("no such endpoint: {path}"));
    }
    let open_metrics = path == "/metrics" && peer.is_loopback();
    if !open_metrics {
        if let Err(r) = authorise(&config, req) {
            return r;
        }
    }
    match path {
        "/metrics" => match method {
            "GET" => metrics(shared),
            _ => not_allowed("GET"),
        },
        "/api/v1/status" => match method {
            "GET" => status(shared, &config),
            _ => not_allowed("GET"),
        },
        "/api/v1/queues" => match method {
            "GET" => match gather_queues(shared) {
                Ok(q) => Response::json(200, &json!(q)),
                Err(e) => Response::error(503, e),
            },
            _ => not_allowed("GET"),
        },
        "/api/v1/reload" => match method {
            "POST" => match crate::runtime::server::reload(shared) {
                Ok(summary) => {
                    Response::json(200, &json!({ "reloaded": true, "summary": summary }))
                }
                Err(errors) => Response::json(
                    422,
                    &json!({ "reloaded": false, "errors": errors.lines().collect::<Vec<_>>() }),
                ),
            },
            _ => not_allowed("POST"),
        },
        _ => queue_action(
            shared,
            method,
            path.strip_prefix(QUEUES_PREFIX).unwrap_or(""),
            &req.query,
            &req.body,
        ),
    }
}

fn current_config(shared: &Shared) -> Arc<Config> {
    shared
        .config
        .lock()
        .map(|c| c.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method not allowed").with_header("Allow", allow)
}

fn unauthorised(why: &str) -> Response {
    Response::error(401, why).with_header("WWW-Authenticate", "Bearer realm=\"spate\"")
}

/// `Ok` when the request may proceed. No token is needed when none is
/// configured (configuration checks allow that only on loopback) or when
/// the embedded default runs on loopback.
fn authorise(config: &Config, req: &Request) -> Result<(), Response> {
    let Some(file) = &config.admin.token_file else {
        if config.admin.listen.ip().is_loopback() {
            return Ok(());
        }
        return Err(unauthorised("no token configured"));
    };
    if config.is_embedded_default() && config.admin.listen.ip().is_loopback() {
        return Ok(());
    }
    let expected = match read_token(file) {
        Some(t) => t,
        None => {
            tracing::error!(path = %file.display(), "admin token file unreadable or empty: refusing every request");
            return Err(unauthorised("token unavailable on the server"));
        }
    };
    let given = req
        .header("authorization")
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .unwrap_or("");
    if given.is_empty() {
        return Err(unauthorised("missing bearer token"));
    }
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorised("wrong bearer token"))
    }
}

/// The token in `file`, whitespace trimmed; `None` when unreadable or empty.
pub fn read_token(file: &std::path::Path) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if meta.len() > TOKEN_FILE_BYTES_MAX {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Sends one request to every shard and collects the answers.
fn ask_shards<T>(
    shared: &Shared,
    timeout: Duration,
    make: impl Fn(crossbeam::channel::Sender<T>) -> AdminRequest,
) -> Result<Vec<T>, String> {
    let deadline = Instant::now() + timeout;
    let mut pending = Vec::new();
    for shard in 0..shared.mesh.shards() {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let mut msg = ShardMsg::Admin(make(tx));
        loop {
            match shared.mesh.try_send(shard, msg) {
                Ok(()) => break,
                Err(TrySend::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(SHARD_SEND_RETRY_MS));
                }
                Err(TrySend::Full(_)) => {
                    return Err(format!("shard {shard} is too busy to answer"));
                }
                Err(TrySend::Failed(e)) => return Err(format!("shard {shard} unavailable: {e:?}")),
            }
        }
        pending.push((shard, rx));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (shard, rx) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => out.push(v),
            Err(_) => {
                return Err(format!(
                    "shard {shard} did not answer within {} ms",
                    timeout.as_millis()
                ));
            }
        }
    }
    Ok(out)
}

/// Every queue of every shard, sorted by name.
pub fn gather_queues(shared: &Shared) -> Result<Vec<QueueView>, String> {
    let mut all: Vec<QueueView> = ask_shards(
        shared,
        Duration::from_millis(SHARD_ANSWER_MS),
        AdminRequest::Queues,
    )?
    .into_iter()
    .flatten()
    .collect();
    all.sort_by(|a, b| a.queue.cmp(&b.queue));
    Ok(all)
}

fn queue_action(shared: &Shared, method: &str, rest: &str, query: &str, body: &[u8]) -> Response {
    // `{queue}/{action}`: the queue may hold a literal slash, so split on the last one.
    let Some((raw_queue, action)) = rest.rsplit_once('/') else {
        return Response::error(
            404,
            "expected /api/v1/queues/{queue}/{pause|resume|mode|messages|reroute}",
        );
    };
    let Some(selector) = percent_decode(raw_queue) else {
        return Response::error(400, "bad percent-encoding in the queue name");
    };
    if crate::queue::split_queue_name(&selector).is_none() {
        return Response::error(
            400,
            format!("queue must be domain/vmta, domain/* or */vmta, not {selector:?}"),
        );
    }
    if action == "reroute" {
        return match method {
            "POST" => reroute(shared, selector, query),
            _ => not_allowed("POST"),
        };
    }
    let short = Duration::from_millis(SHARD_ANSWER_MS);
    let (expected, result) = match action {
        "pause" => (
            "POST",
            (method == "POST").then(|| {
                ask_shards(shared, short, |tx| {
                    AdminRequest::Pause(selector.clone(), tx)
                })
            }),
        ),
        "resume" => (
            "POST",
            (method == "POST").then(|| {
                ask_shards(shared, short, |tx| {
                    AdminRequest::Resume(selector.clone(), tx)
                })
            }),
        ),
        "mode" => {
            if method != "POST" {
                ("POST", None)
            } else {
                let mode = match parse_mode(body) {
                    Ok(m) => m,
                    Err(r) => return r,
                };
                (
                    "POST",
                    Some(ask_shards(shared, short, |tx| {
                        AdminRequest::Mode(selector.clone(), mode, tx)
                    })),
                )
            }
        }
        "messages" => (
            "DELETE",
            (method == "DELETE").then(|| {
                ask_shards(shared, Duration::from_millis(SHARD_DELETE_MS), |tx| {
                    AdminRequest::Delete(selector.clone(), tx)
                })
            }),
        ),
        _ => return Response::error(404, format!("no such queue action: {action}")),
    };
    let Some(result) = result else {
        return not_allowed(expected);
    };
    match result {
        Err(e) => Response::error(503, e),
        Ok(counts) => {
            let n: usize = counts.iter().sum();
            if action == "messages" {
                Response::json(200, &json!({ "queue": selector, "deleted_recipients": n }))
            } else if n == 0 && action == "mode" {
                Response::error(404, format!("no queue matches {selector}"))
            } else {
                // A pause also holds queues created later (and a resume lifts
                // that), so matching no queue yet is not an error for them.
                Response::json(
                    200,
                    &json!({ "queue": selector, "action": action, "queues": n }),
                )
            }
        }
    }
}

/// `POST /api/v1/queues/{queue}/reroute?vmta=NAME`: moves every message
/// with a recipient queued in the selected queues to the vMTA `NAME`.
fn reroute(shared: &Shared, selector: String, query: &str) -> Response {
    let vmta = match query_param(query, "vmta") {
        Some(Some(v)) if !v.is_empty() => v,
        Some(None) => return Response::error(400, "bad percent-encoding in vmta"),
        _ => return Response::error(400, "missing ?vmta=NAME: the vMTA to move the messages to"),
    };
    let config = current_config(shared);
    if config.vmta(&vmta).is_none() {
        let what = if config.pool(&vmta).is_some() {
            "is a pool; name one of its vMTAs"
        } else {
            "is not a configured vMTA"
        };
        return Response::error(400, format!("{vmta:?} {what}"));
    }
    let answers = ask_shards(shared, Duration::from_millis(SHARD_REROUTE_MS), |tx| {
        AdminRequest::Reroute(selector.clone(), vmta.clone(), tx)
    });
    match answers {
        Err(e) => Response::error(503, e),
        Ok(reports) => {
            let mut total = crate::delivery::relocate::MoveReport::default();
            for r in &reports {
                total.add(r);
            }
            Response::json(
                200,
                &json!({
                    "queue": selector,
                    "vmta": vmta,
                    "moved_messages": total.moved_messages,
                    "moved_recipients": total.moved_recipients,
                    "pending_messages": total.pending_messages,
                    "stayed_messages": total.stayed_messages,
                }),
            )
        }
    }
}

/// The value of `name` in a query string: `None` when absent,
/// `Some(None)` when its percent-encoding is bad.
fn query_param(query: &str, name: &str) -> Option<Option<String>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn parse_mode(body: &[u8]) -> Result<crate::shaper::Mode, Response> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        mode: String,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        Response::error(
            400,
            format!("body must be {{\"mode\":\"normal\"|\"backoff\"}}: {e}"),
        )
    })?;
    match b.mode.as_str() {
        "normal" => Ok(crate::shaper::Mode::Normal),
        "backoff" => Ok(crate::shaper::Mode::Backoff),
        other => Err(Response::error(
            400,
            format!("mode must be normal or backoff, not {other:?}"),
        )),
    }
}

/// Bytes used by spool segments and bytes free on its file system.
fn spool_space(shared: &Shared) -> (u64, Option<u64>) {
    let used = shared
        .spool
        .all_segments()
        .iter()
        .map(|s| s.used_bytes())
        .sum();
    let free = crate::runtime::stats::fs_available_bytes(&shared.spool.options.path);
    (used, free)
}

fn snapshot(shared: &Shared, queues: Vec<QueueView>) -> MetricsSnapshot {
    let s: &Stats = &shared.stats;
    let (spool_bytes_used, spool_bytes_free) = spool_space(shared);
    let acct = shared
        .accounting
        .as_ref()
        .map(|a| a.stats())
        .unwrap_or_default();
    use std::sync::atomic::Ordering::Relaxed;
    MetricsSnapshot {
        uptime_seconds: shared.started.elapsed().as_secs(),
        received_messages: s.received_messages.load(Relaxed),
        received_recipients: s.received_recipients.load(Relaxed),
        rejected_messages: s.rejected_messages.load(Relaxed),
        delivered: s.delivered.load(Relaxed),
        bounced: s.bounced.load(Relaxed),
        bounced_by_category: crate::delivery::bounce::BounceCategory::ALL
            .iter()
            .zip(s.bounced_by_category.iter())
            .map(|(c, n)| (c.as_str(), n.load(Relaxed)))
            .collect(),
        deferred: s.deferred.load(Relaxed),
        expired: s.expired.load(Relaxed),
        signing_failures: s.signing_failures.load(Relaxed),
        connections_in: s.connections_in.load(Relaxed),
        connections_out: s.connections_out.load(Relaxed),
        queued_messages: s.queued_messages.load(Relaxed),
        queued_recipients: s.queued_recipients.load(Relaxed),
        queues,
        spool_bytes_used,
        spool_bytes_free,
        spool_segments_prepared: vec![
            ("zeros", shared.spool.segments_zero_filled.load(Relaxed)),
            ("allocated", shared.spool.segments_allocated.load(Relaxed)),
            ("recycled", shared.spool.segments_recycled.load(Relaxed)),
        ],
        dns: shared.dns.metrics(),
        accounting_written: acct.iter().map(|a| a.written).sum(),
        accounting_dropped: acct.iter().map(|a| a.dropped).sum(),
        accounting_errors: acct.iter().map(|a| a.errors).sum(),
        rate_limit_waits: s.rate_limit_waits.load(Relaxed),
        spool_fsync: shared.spool.sync_latency.snapshot(),
        spool_commit: shared.spool.commit_latency.snapshot(),
    }
}

fn metrics(shared: &Shared) -> Response {
    // A scrape still answers (without per-queue series) when a shard is stuck.
    let queues = gather_queues(shared).unwrap_or_default();
    Response::new(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        render(&snapshot(shared, queues)),
    )
}

fn status(shared: &Shared, config: &Config) -> Response {
    let (queues, shard_error) = match gather_queues(shared) {
        Ok(q) => (q, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut vmtas: std::collections::BTreeMap<String, serde_json::Value> = config
        .vmtas
        .keys()
        .map(|name| {
            (name.clone(), json!({ "vmta": name, "queues": 0, "queued": 0, "in_flight": 0, "connections": 0, "backoff_queues": 0 }))
        })
        .collect();
    for q in &queues {
        let e = vmtas
            .entry(q.vmta.clone())
            .or_insert_with(|| json!({ "vmta": q.vmta, "queues": 0, "queued": 0, "in_flight": 0, "connections": 0, "backoff_queues": 0 }));
        for (k, v) in [
            ("queues", 1),
            ("queued", q.queued + q.deferred),
            ("in_flight", q.in_flight),
            ("connections", u64::from(q.connections)),
            ("backoff_queues", u64::from(q.mode == "backoff")),
        ] {
            if let Some(slot) = e.get_mut(k) {
                *slot = json!(slot.as_u64().unwrap_or(0) + v);
            }
        }
    }
    let m = snapshot(shared, Vec::new());
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": config.hostname,
        "uptime_seconds": m.uptime_seconds,
        "now_unix": crate::runtime::local::unix_now_s(),
        "shards": shared.mesh.shards(),
        "config": config.origin.as_ref().map(|p| p.display().to_string()),
        "queued_messages": m.queued_messages,
        "queued_recipients": m.queued_recipients,
        "connections_in": m.connections_in,
        "connections_out": m.connections_out,
        "totals": {
            "received_messages": m.received_messages,
            "received_recipients": m.received_recipients,
            "rejected_messages": m.rejected_messages,
            "delivered": m.delivered,
            "bounced": m.bounced,
            "deferred": m.deferred,
            "expired": m.expired,
        },
        "spool": {
            "path": shared.spool.options.path.display().to_string(),
            "bytes_used": m.spool_bytes_used,
            "bytes_free": m.spool_bytes_free,
        },
        "queues": queues.len(),
        "queues_in_backoff": queues.iter().filter(|q| q.mode == "backoff").count(),
        "queues_paused": queues.iter().filter(|q| q.paused).count(),
        "vmtas": vmtas.into_values().collect::<Vec<_>>(),
        "dns": { "lookups": m.dns.lookups, "failures": m.dns.failures },
        "accounting_dropped": m.accounting_dropped,
        "shard_error": shard_error,
    });
    Response::json(200, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: "/api/v1/status".into(),
            query: String::new(),
            headers: auth
                .map(|a| vec![("Authorization".to_string(), a.to_string())])
                .unwrap_or_default(),
            body: Vec::new(),
        }
    }

    fn config_with(admin: &str, dir: &std::path::Path) -> Config {
        let text = format!(
            "[spool]\npath = \"{}\"\n\n[admin]\n{admin}\n",
            dir.join("spool").display()
        );
        crate::config::load_str("t.toml", &text, Some(dir.join("t.toml")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn bearer_token_is_required_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  tok-123\n").unwrap();
        let admin = format!(
            "listen = \"127.0.0.1:8025\"\ntoken_file = \"{}\"",
            token.display()
        );
        let config = config_with(&admin, dir.path());
        assert_eq!(authorise(&config, &request(None)).unwrap_err().status, 401);
        let wrong = authorise(&config, &request(Some("Bearer tok-12"))).unwrap_err();
        assert_eq!(wrong.status, 401);
        assert!(
            wrong
                .headers
                .iter()
                .any(|(n, v)| *n == "WWW-Authenticate" && v.starts_with("Bearer"))
        );
        assert!(authorise(&config, &request(Some("Basic tok-123"))).is_err());
        assert!(authorise(&config, &request(Some("Bearer tok-123"))).is_ok());
        assert!(authorise(&config, &request(Some("bearer  tok-123 "))).is_ok());
        // An emptied token file locks the API rather than opening it.
        std::fs::write(&token, "\n").unwrap();
        assert!(authorise(&config, &request(Some("Bearer "))).is_err());
        assert!(authorise(&config, &request(Some("Bearer tok-123"))).is_err());
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param("vmta=ip2", "vmta"), Some(Some("ip2".into())));
        assert_eq!(
            query_param("a=1&vmta=ip%2D2&b", "vmta"),
            Some(Some("ip-2".into()))
        );
        assert_eq!(query_param("vmtax=1", "vmta"), None);
        assert_eq!(query_param("", "vmta"), None);
        assert_eq!(query_param("vmta=%G1", "vmta"), Some(None));
    }

    #[test]
    fn no_token_on_loopback_without_token_file_and_for_the_embedded_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with("listen = \"127.0.0.1:8025\"", dir.path());
        assert!(authorise(&config, &request(None)).is_ok());
        let embedded = crate::config::load(None).unwrap();
        assert!(embedded.is_embedded_default());
        assert!(authorise(&embedded, &request(None)).is_ok());
    }
}
