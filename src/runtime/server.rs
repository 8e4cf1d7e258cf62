//! `spate run`: start-up, the shards' main loop, reload and shutdown.
//!
//! Start-up is synchronous and fails early with a clear message: load the
//! configuration, recover the spool (every live recipient is handed to the
//! shard owning its vMTA), bind every listener on every shard
//! (`SO_REUSEPORT`), start the resolver and accounting threads, then the
//! shards. The main thread then waits for signals: SIGHUP reloads, SIGTERM
//! or SIGINT stops accepting, lets in-flight transactions finish (bounded
//! by `[runtime] shutdown_timeout`), syncs the spool and exits 0.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::local::LocalNotify;
use super::mesh::{MeshReceiver, MeshSender, mesh};
use super::signals::{self, SignalEvent};
use super::stats::Stats;
use crate::accounting::{Accounting, AccountingOptions, AccountingSink};
use crate::config::{AccountingFormat, Config, SpoolSync};
use crate::dns::{DnsClient, DnsOptions, DnsService};
use crate::listener::{Admission, bind_shard_socket};
use crate::queue::engine::{Engine, EngineDeps, QueueView};
use crate::session::auth::FailureLimiter;
use crate::session::inbound::{InboundContext, run_session};
use crate::session::vmta::PoolPicker;
use crate::spool::{MessageRef, RecoveredMessage, Spool, SpoolOptions, SyncMode};

/// How long an acceptor out of descriptors waits before accepting again.
const ACCEPT_EXHAUSTED_SLEEP_MS: u64 = 100;
/// Messages one shard drains from its inbox per wake-up.
const INBOX_BATCH_MESSAGES: usize = 256;
/// How often a shard runs spool reclamation. Often enough that finished
/// segments reach the free pool one at a time, as the segment preparer takes
/// them: at once a second a 100 KB load finished several per pass, the pool
/// overflowed and most new segments were allocated (see src/spool/README.md).
const RECLAIM_INTERVAL_MS: u64 = 100;
/// After failed passes the interval doubles up to this, until one succeeds.
const RECLAIM_FAILED_INTERVAL_MAX_MS: u64 = 5000;

/// The wait before the next reclamation pass: the usual interval after a
/// pass that succeeded; after a failed one, twice the last wait up to
/// [`RECLAIM_FAILED_INTERVAL_MAX_MS`] (a segment that cannot be deleted is
/// read and carried forward again by every pass: not ten times a second).
fn next_reclaim_interval_ms(last_ms: u64, succeeded: bool) -> u64 {
    if succeeded {
        RECLAIM_INTERVAL_MS
    } else {
        last_ms
            .saturating_mul(2)
            .min(RECLAIM_FAILED_INTERVAL_MAX_MS)
    }
}

/// What shards receive from each other and from the control plane.
pub enum ShardMsg {
    /// A committed message for a vMTA this shard owns.
    Enqueue(MessageRef),
    /// A recovered message with its live recipients.
    Recovered(RecoveredMessage),
    /// A new configuration (already validated) and its DKIM signing table.
    Reload(Arc<Config>, Arc<crate::dkim::SigningTable>),
    /// Control-plane request, answered through the channel.
    Admin(AdminRequest),
    /// Stop accepting; finish; sync; exit the shard.
    Shutdown,
}

/// Requests the admin API sends to every shard.
pub enum AdminRequest {
    Queues(crossbeam::channel::Sender<Vec<QueueView>>),
    Pause(String, crossbeam::channel::Sender<usize>),
    Resume(String, crossbeam::channel::Sender<usize>),
    Mode(
        String,
        crate::shaper::Mode,
        crossbeam::channel::Sender<usize>,
    ),
    Delete(String, crossbeam::channel::Sender<usize>),
    /// Moves the messages of the selected queues to this vMTA.
    Reroute(
        String,
        String,
        crossbeam::channel::Sender<crate::delivery::relocate::MoveReport>,
    ),
}

/// One shard's listening sockets, with the index of their `[[listener]]`.
pub type ShardSockets = Vec<(usize, std::net::TcpListener)>;

/// Shared by every shard.
pub struct Shared {
    pub config: Mutex<Arc<Config>>,
    pub stats: Arc<Stats>,
    pub mesh: MeshSender<ShardMsg>,
    pub spool: Arc<crate::spool::SpoolShared>,
    pub dns: DnsClient,
    pub accounting: Option<AccountingSink>,
    pub auth_failures: Arc<FailureLimiter>,
    pub admissions: Vec<Arc<Admission>>,
    /// Each shard's listening sockets, taken by the shard at start.
    pub sockets: Mutex<Vec<Option<ShardSockets>>>,
    pub started: std::time::Instant,
    /// The DKIM signing table in force (replaced on reload).
    pub dkim_table: Mutex<Arc<crate::dkim::SigningTable>>,
    pub dkim_pool: Arc<crate::dkim::SigningPool>,
    /// (destination, vMTA) pairs stopped by `disable_source_ip`.
    pub source_disables: Arc<crate::queue::moves::SourceDisables>,
}

fn spool_options(config: &Config) -> SpoolOptions {
    let mut o = SpoolOptions::new(config.spool.path.clone());
    o.segment_bytes = config.spool.segment_bytes;
    o.sync = match config.spool.sync {
        SpoolSync::Group => SyncMode::Group,
        SpoolSync::None => SyncMode::None,
    };
    o.compact_live_fraction = config.spool.compact_live_ratio.clamp(0.01, 0.99);
    o.zero_fill = config.spool.zero_fill;
    o.recycle_segments = config.spool.recycle_segments;
    o
}

fn accounting_options(config: &Config) -> Vec<AccountingOptions> {
    config
        .accounting
        .iter()
        .map(|a| {
            let mut o = AccountingOptions::new(a.path.clone());
            o.format = match a.format {
                AccountingFormat::Csv => crate::accounting::AccountingFormat::Csv,
                AccountingFormat::Jsonl => crate::accounting::AccountingFormat::Jsonl,
            };
            o.records = a
                .records
                .iter()
                .filter_map(|r| r.code().parse().ok())
                .collect();
            o.rotate = a.rotate;
            o
        })
        .collect()
}

/// Runs the MTA until a shutdown signal. Returns the process exit code.
pub fn run(config: Config) -> i32 {
    if let Err(e) = signals::block_handled_signals() {
        tracing::error!(error = %e, "cannot block signals");
        return 71;
    }
    match super::fdlimit::raise_nofile_limit() {
        Ok(l) => {
            tracing::info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                outbound_max = l.outbound_max,
                "open-files limit"
            );
            if l.soft < super::fdlimit::FD_LIMIT_WARN_BELOW {
                tracing::warn!(
                    soft = l.soft,
                    "open-files limit is low: few concurrent connections are possible"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
    crate::session::tls::warm_provider();
    if config.is_embedded_default() {
        tracing::info!("running on the embedded default configuration");
    }
    for w in &config.warnings {
        tracing::warn!(key = %w.key, line = w.line, "{}", w.reason);
    }
    if config.spool.sync == SpoolSync::None {
        tracing::warn!(
            "spool sync = \"none\": acknowledged mail is lost on power failure (benchmarks only)"
        );
    }
    let shards = config
        .runtime
        .shards
        .unwrap_or_else(super::auto_shards)
        .clamp(1, 256);

    // Spool recovery before anything accepts mail.
    let options = spool_options(&config);
    let recovery = match crate::spool::recover(&options, shards as u16) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(path = %config.spool.path.display(), error = %e, "spool unusable");
            return 73;
        }
    };
    let report = &recovery.report;
    tracing::info!(
        segments = report.segments,
        messages = report.messages_live,
        recipients = report.recipients_live,
        torn_tails = report.torn_tails.len(),
        corrupt = report.corrupt.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "spool recovered"
    );
    for (seg, off, _, cause) in &report.corrupt {
        tracing::error!(segment = %seg, offset = off, %cause, "corrupt spool record skipped");
    }

    // Listeners: bound here so a busy port fails start-up, not a shard.
    let mut per_shard: Vec<Vec<(usize, std::net::TcpListener)>> =
        (0..shards).map(|_| Vec::new()).collect();
    for (li, l) in config.listeners.iter().enumerate() {
        for sockets in per_shard.iter_mut() {
            match bind_shard_socket(l.address) {
                Ok(s) => sockets.push((li, s)),
                Err(e) => {
                    tracing::error!(address = %l.address, error = %e, "cannot listen");
                    return 71;
                }
            }
        }
        tracing::info!(address = %l.address, "listening");
    }
    let admissions = config
        .listeners
        .iter()
        .map(|l| {
            Admission::new(
                l.max_connections as usize,
                l.max_connections_per_ip as usize,
            )
        })
        .collect();

    let dns = match DnsService::start(DnsOptions {
        nameservers: (!config.dns.nameservers.is_empty()).then(|| config.dns.nameservers.clone()),
        timeout: config.dns.timeout,
        attempts: config.dns.attempts as usize,
        cache_size: config.dns.cache_size,
        ..DnsOptions::default()
    }) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the resolver");
            return 71;
        }
    };
    let accounting = match Accounting::start(accounting_options(&config)) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot open accounting files");
            return 73;
        }
    };

    let dkim_table = match crate::session::signing::table_from_config(&config) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            tracing::error!(error = %e, "DKIM configuration error");
            return crate::config::EX_CONFIG;
        }
    };
    let dkim_pool = match crate::dkim::SigningPool::new(
        crate::session::signing::DKIM_POOL_THREADS,
        crate::session::signing::DKIM_POOL_QUEUE_JOBS,
    ) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the DKIM signing pool");
            return 71;
        }
    };

    let (mesh_tx, receivers) = mesh::<ShardMsg>(shards);
    let shared = Arc::new(Shared {
        config: Mutex::new(Arc::new(config)),
        stats: Arc::new(Stats::default()),
        mesh: mesh_tx.clone(),
        spool: recovery.shared.clone(),
        dns: dns.client(),
        accounting: Some(accounting.sink()),
        auth_failures: Arc::new(FailureLimiter::default()),
        admissions,
        sockets: Mutex::new(per_shard.into_iter().map(Some).collect()),
        started: std::time::Instant::now(),
        dkim_table: Mutex::new(dkim_table),
        dkim_pool,
        source_disables: Arc::default(),
    });
    let receivers: Arc<Mutex<Vec<Option<MeshReceiver<ShardMsg>>>>> =
        Arc::new(Mutex::new(receivers.into_iter().map(Some).collect()));

    let pin = shared
        .config
        .lock()
        .map(|c| c.runtime.pin_cores)
        .unwrap_or(false);
    let shard_shared = shared.clone();
    let handles = match super::spawn_shards(shards, pin, move |id| {
        let shared = shard_shared.clone();
        let rx = receivers
            .lock()
            .ok()
            .and_then(|mut v| v.get_mut(id).and_then(Option::take));
        shard_main(id, shared, rx)
    }) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start shard threads");
            return 71;
        }
    };

    // Recovered mail goes to the shards owning its vMTAs.
    let mut handed = 0usize;
    for m in recovery.messages {
        let vmta = m
            .message
            .envelope()
            .map(|e| e.vmta.to_string())
            .unwrap_or_default();
        let shard = super::shard_for_vmta(&vmta, shards);
        if mesh_tx.send_blocking(shard, ShardMsg::Recovered(m)).is_ok() {
            handed += 1;
        }
    }
    if handed > 0 {
        tracing::info!(messages = handed, "recovered messages queued");
    }

    let admin = crate::admin::start(shared.clone());
    if let Err(e) = &admin {
        tracing::error!(error = %e, "admin API not started");
    }
    notify_systemd_ready();

    while let Ok(SignalEvent::Reload) = signals::wait() {
        match reload(&shared) {
            Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
            Err(errors) => tracing::error!("reload refused, old configuration kept:\n{errors}"),
        }
    }
    tracing::info!("shutting down");
    for shard in 0..shards {
        let _ = mesh_tx.send_blocking(shard, ShardMsg::Shutdown);
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(sink) = &shared.accounting {
        sink.flush_blocking();
    }
    drop(accounting);
    drop(dns);
    tracing::info!("stopped");
    0
}

/// Loads the configuration file again and hands it to every shard.
pub fn reload(shared: &Shared) -> Result<String, String> {
    let current = shared
        .config
        .lock()
        .map_err(|_| "configuration lock poisoned".to_string())?
        .clone();
    let new = crate::config::load(current.origin.as_deref()).map_err(|e| e.to_string())?;
    let restart = current.restart_required(&new);
    if !restart.is_empty() {
        tracing::warn!(settings = ?restart, "these changes need a restart and are not applied");
    }
    let table = crate::session::signing::table_from_config(&new).map_err(|e| e.to_string())?;
    let table = Arc::new(table);
    let new = Arc::new(new);
    if let Ok(mut t) = shared.dkim_table.lock() {
        *t = table.clone();
    }
    for (i, l) in new.listeners.iter().enumerate() {
        if let Some(a) = shared.admissions.get(i) {
            a.set_limits(
                l.max_connections as usize,
                l.max_connections_per_ip as usize,
            );
        }
    }
    if let Ok(mut c) = shared.config.lock() {
        *c = new.clone();
    }
    for shard in 0..shared.mesh.shards() {
        let _ = shared
            .mesh
            .send_blocking(shard, ShardMsg::Reload(new.clone(), table.clone()));
    }
    Ok(new.summary())
}

fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let _ = sock.send_to(b"READY=1", path);
}

async fn shard_main(id: usize, shared: Arc<Shared>, rx: Option<MeshReceiver<ShardMsg>>) {
    let Some(rx) = rx else { return };
    let config = Rc::new(RefCell::new(
        shared
            .config
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone()),
    ));
    let spool = match Spool::open(shared.spool.clone(), id as u16) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot open the spool");
            return;
        }
    };
    let tls_connector = match crate::delivery::tls::connector() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the TLS client");
            return;
        }
    };
    let engine = Engine::new(EngineDeps {
        shard: id,
        config: config.clone(),
        spool: spool.clone(),
        dns: shared.dns.clone(),
        accounting: shared.accounting.clone(),
        stats: shared.stats.clone(),
        tls: tls_connector,
        mesh: Some(shared.mesh.clone()),
        source_disables: shared.source_disables.clone(),
    });
    let scheduler = compio::runtime::spawn(engine.clone().run_scheduler());

    // Inbound.
    let mesh = shared.mesh.clone();
    let shards = mesh.shards();
    let local_engine = engine.clone();
    let handoff_queue: Rc<RefCell<Vec<(usize, MessageRef)>>> = Rc::new(RefCell::new(Vec::new()));
    let handoff_wake = Rc::new(LocalNotify::default());
    let hq = handoff_queue.clone();
    let hw = handoff_wake.clone();
    let handoff = Rc::new(move |msg: MessageRef, vmta: String| {
        let owner = super::shard_for_vmta(&vmta, shards);
        if owner == id {
            local_engine.enqueue(msg, None);
        } else {
            hq.borrow_mut().push((owner, msg));
            hw.notify_all();
        }
    });
    // Cross-shard handoffs go out from one task so a full inbox slows only it.
    let forwarder = {
        let mesh = mesh.clone();
        compio::runtime::spawn(async move {
            loop {
                let batch: Vec<(usize, MessageRef)> =
                    std::mem::take(&mut *handoff_queue.borrow_mut());
                if batch.is_empty() {
                    handoff_wake.notified().await;
                    continue;
                }
                for (owner, msg) in batch {
                    let _ = mesh.send(owner, ShardMsg::Enqueue(msg)).await;
                }
            }
        })
    };
    let tls_acceptors: HashMap<usize, compio::tls::TlsAcceptor> = config
        .borrow()
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let (cert, key) = (l.tls_cert.as_ref()?, l.tls_key.as_ref()?);
            match crate::session::tls::server_config(cert, key) {
                Ok(c) => Some((i, super::stream::tls_acceptor(c))),
                Err(e) => {
                    tracing::error!(error = %e, "STARTTLS disabled on this listener");
                    None
                }
            }
        })
        .collect();
    let signing = Rc::new(crate::session::signing::InboundSigning {
        table: RefCell::new(
            shared
                .dkim_table
                .lock()
                .map(|t| t.clone())
                .unwrap_or_else(|p| p.into_inner().clone()),
        ),
        pool: shared.dkim_pool.clone(),
    });
    let sessions = Rc::new(std::cell::Cell::new(0usize));
    let sessions_done = Rc::new(LocalNotify::default());
    let mut acceptors = Vec::new();
    let sockets = shared
        .sockets
        .lock()
        .ok()
        .and_then(|mut v| v.get_mut(id).and_then(Option::take))
        .unwrap_or_default();
    for (li, std_listener) in sockets {
        let listener = match compio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register listener");
                continue;
            }
        };
        let ctx = Rc::new(InboundContext {
            config: config.clone(),
            tls: tls_acceptors.get(&li).cloned(),
            spool: spool.clone(),
            auth_failures: shared.auth_failures.clone(),
            pools: Rc::new(RefCell::new(PoolPicker::default())),
            stats: shared.stats.clone(),
            handoff: handoff.clone(),
            signing: Some(signing.clone()),
        });
        let admission = shared.admissions[li].clone();
        let sessions = sessions.clone();
        let sessions_done = sessions_done.clone();
        let config = config.clone();
        acceptors.push(compio::runtime::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) if super::fdlimit::is_local_exhaustion(&e) => {
                        // Logged once a minute, not per failed accept; the
                        // pending client waits in the backlog meanwhile.
                        super::fdlimit::note_exhaustion("accept", Some(&e));
                        compio::time::sleep(Duration::from_millis(ACCEPT_EXHAUSTED_SLEEP_MS)).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        compio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let guard = match admission.admit(peer.ip()) {
                    Ok(g) => g,
                    Err(refusal) => {
                        let hostname = config.borrow().hostname.clone();
                        let mut stream = super::stream::Conn::Plain(stream);
                        compio::runtime::spawn(async move {
                            let _ = stream
                                .write_all(refusal.greeting(&hostname).into_bytes())
                                .await;
                            stream.shutdown().await;
                        })
                        .detach();
                        continue;
                    }
                };
                let listener_cfg = match config.borrow().listeners.get(li) {
                    Some(l) => l.clone(),
                    None => continue,
                };
                let ctx = ctx.clone();
                let sessions = sessions.clone();
                let sessions_done = sessions_done.clone();
                sessions.set(sessions.get() + 1);
                compio::runtime::spawn(async move {
                    run_session(ctx, listener_cfg, stream, peer).await;
                    drop(guard);
                    sessions.set(sessions.get().saturating_sub(1));
                    sessions_done.notify_all();
                })
                .detach();
            }
        }));
    }

    // Housekeeping: spool reclamation.
    let reclaim_spool = spool.clone();
    let reclaimer = compio::runtime::spawn(async move {
        let mut interval_ms = RECLAIM_INTERVAL_MS;
        loop {
            compio::time::sleep(Duration::from_millis(interval_ms)).await;
            let result = reclaim_spool.reclaim().await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "spool reclamation failed");
            }
            interval_ms = next_reclaim_interval_ms(interval_ms, result.is_ok());
        }
    });

    // The inbox.
    let mut batch = Vec::with_capacity(INBOX_BATCH_MESSAGES);
    'inbox: loop {
        batch.clear();
        rx.recv_batch(INBOX_BATCH_MESSAGES, &mut batch).await;
        for msg in batch.drain(..) {
            match msg {
                ShardMsg::Enqueue(m) => engine.enqueue(m, None),
                ShardMsg::Recovered(r) => engine.enqueue(r.message, Some(&r.recipients)),
                ShardMsg::Reload(c, table) => {
                    *config.borrow_mut() = c;
                    *signing.table.borrow_mut() = table;
                    engine.reconfigure();
                }
                ShardMsg::Admin(req) => handle_admin(&engine, req).await,
                ShardMsg::Shutdown => break 'inbox,
            }
        }
    }

    // Shutdown: stop accepting, let sessions finish (bounded), sync.
    drop(acceptors);
    let grace = config.borrow().runtime.shutdown_timeout;
    let deadline = std::time::Instant::now() + grace;
    while sessions.get() > 0 && std::time::Instant::now() < deadline {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = compio::time::timeout(
            left.min(Duration::from_millis(200)),
            sessions_done.notified(),
        )
        .await;
    }
    engine.begin_shutdown();
    drop(scheduler);
    drop(reclaimer);
    drop(forwarder);
    // Outbound connections finish their current transaction; give them a moment.
    compio::time::sleep(Duration::from_millis(100)).await;
    spool.close().await;
    tracing::info!(shard = id, "shard stopped");
}

async fn handle_admin(engine: &Rc<Engine>, req: AdminRequest) {
    match req {
        AdminRequest::Queues(tx) => {
            let _ = tx.send(engine.views());
        }
        AdminRequest::Pause(sel, tx) => {
            engine.state.borrow_mut().pause_selector(&sel);
            let _ = tx.send(engine.for_queues(&sel, |q, _| q.controller.pause()));
        }
        AdminRequest::Resume(sel, tx) => {
            engine.state.borrow_mut().resume_selector(&sel);
            let _ = tx.send(engine.for_queues(&sel, |q, _| q.controller.resume()));
        }
        AdminRequest::Mode(sel, mode, tx) => {
            let _ = tx.send(engine.for_queues(&sel, |q, now| {
                let _ = q.controller.set_mode(now, mode);
            }));
        }
        AdminRequest::Delete(sel, tx) => {
            let n = crate::delivery::outcome::delete_queued(engine, &sel).await;
            let _ = tx.send(n);
        }
        AdminRequest::Reroute(sel, vmta, tx) => {
            // In its own task: it hands messages to other shards, whose
            // inboxes this shard must keep draining meanwhile.
            let engine = engine.clone();
            compio::runtime::spawn(async move {
                let report = crate::delivery::relocate::reroute(&engine, &sel, &vmta).await;
                let _ = tx.send(report);
            })
            .detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclamation_backs_off_after_failures_and_returns_after_a_success() {
        let mut waits = vec![];
        let mut wait = RECLAIM_INTERVAL_MS;
        for _ in 0..8 {
            wait = next_reclaim_interval_ms(wait, false);
            waits.push(wait);
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(next_reclaim_interval_ms(wait, true), RECLAIM_INTERVAL_MS);
        assert_eq!(
            next_reclaim_interval_ms(RECLAIM_INTERVAL_MS, true),
            RECLAIM_INTERVAL_MS
        );
    }
}
