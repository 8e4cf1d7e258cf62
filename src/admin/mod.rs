//! The control plane: admin HTTP API, Prometheus metrics, status page and
//! the `spate ctl` client.
//!
//! The server runs on its own std thread, off the shards: it accepts on
//! `[admin] listen` and serves each connection on a short-lived thread,
//! at most [`ADMIN_CONNECTIONS_MAX`] at once (the rest get 503). Each
//! connection carries one request (`Connection: close`), bounded in size
//! (`http.rs`) and time ([`ADMIN_IO_TIMEOUT_MS`]). Shard state is read by
//! message passing (`api.rs`), never by locks the data path waits on.
//!
//! - `http.rs`    request reading and response writing (httparse)
//! - `api.rs`     routes, bearer-token check, JSON answers, shard fan-out
//! - `metrics.rs` the Prometheus exposition
//! - `page.rs`    the self-contained HTML status page
//! - `ctl.rs`     `spate ctl`, the command-line client

pub mod api;
pub mod ctl;
pub mod http;
pub mod metrics;
pub mod page;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::runtime::server::Shared;

/// Connections served at once; more get 503 and are closed.
pub const ADMIN_CONNECTIONS_MAX: usize = 32;
/// Read and write timeout of an admin connection.
pub const ADMIN_IO_TIMEOUT_MS: u64 = 10_000;

/// Binds `[admin] listen` and starts the admin thread. An error (port
/// busy) is returned so start-up can log it; mail keeps flowing without
/// the API.
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let addr = shared
        .config
        .lock()
        .map(|c| c.admin.listen)
        .unwrap_or_else(|p| p.into_inner().admin.listen);
    let listener = TcpListener::bind(addr)?;
    tracing::info!(address = %addr, "admin API listening");
    std::thread::Builder::new()
        .name("spate-admin".into())
        .spawn(move || accept_loop(listener, shared))?;
    Ok(())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(ADMIN_IO_TIMEOUT_MS)));
        let _ = stream.set_write_timeout(Some(Duration::from_millis(ADMIN_IO_TIMEOUT_MS)));
        if active.fetch_add(1, Ordering::AcqRel) >= ADMIN_CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let _ = http::Response::error(503, "too many admin connections").write_to(&mut stream);
            continue;
        }
        let shared = shared.clone();
        let slot = active.clone();
        let spawned = std::thread::Builder::new()
            .name("spate-admin-conn".into())
            .spawn(move || {
                serve(stream, &shared);
                slot.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(error = %e, "cannot start an admin connection thread");
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) {
    let Ok(peer) = stream.peer_addr() else { return };
    let response = match http::read_request(&mut stream) {
        Ok(req) => {
            let r = api::handle(shared, &req, peer.ip());
            tracing::debug!(method = %req.method, path = %req.path, status = r.status, %peer, "admin request");
            r
        }
        Err(http::ReadError::Closed) => return,
        Err(e) => {
            let r = match e {
                http::ReadError::TooLarge => http::Response::error(413, "request too large"),
                http::ReadError::Bad(why) => http::Response::error(400, why),
                http::ReadError::Closed => return,
            };
            let _ = r.write_to(&mut stream);
            drain(&mut stream);
            return;
        }
    };
    let _ = response.write_to(&mut stream);
}

/// Bytes read and dropped after refusing a request, so the close does not
/// reset the connection before the peer reads the answer.
const DRAIN_BYTES_MAX: u64 = 1 << 20;
/// How long the drain waits for more input.
const DRAIN_MS: u64 = 1_000;

fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(DRAIN_MS)));
    let _ = std::io::copy(
        &mut std::io::Read::take(&mut *stream, DRAIN_BYTES_MAX),
        &mut std::io::sink(),
    );
}
