//! The SMTP sink: a fast compio (io_uring) SMTP server that stores nothing by
//! default, replies as a [`Script`] says, and counts what it accepted.
//!
//! Owns the listener threads, the per-connection session loop (a compact ESMTP
//! server: EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, STARTTLS,
//! AUTH PLAIN and LOGIN when credentials are set, pipelined), the counters
//! per client IP and EHLO name, end-to-end latency from the injector's
//! `X-Spate-Bench-Sent` header, and the optional Maildir.
//! Reply decisions live in [`crate::script`]; the sink only applies them.
//! The per-connection ESMTP session lives in `session.rs`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use compio::rustls;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{self, Percentiles};
use crate::script::{Policy, Script};

mod session;

pub use session::sent_header;
use session::{SinkContext, serve_connection};

/// Name of the header carrying the injector's send time in Unix microseconds.
pub const SENT_HEADER: &str = "X-Spate-Bench-Sent";
/// Longest command line accepted (RFC 5321 says 512; extensions make it longer).
pub const COMMAND_LINE_BYTES_MAX: usize = 4096;
/// Longest AUTH command or response line accepted (RFC 4954, section 4).
pub const AUTH_LINE_BYTES_MAX: usize = 12288;
const _: () = assert!(AUTH_LINE_BYTES_MAX >= COMMAND_LINE_BYTES_MAX);
/// Largest message accepted, advertised with SIZE.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Size of one socket read.
const READ_BYTES: usize = 64 * 1024;
/// Recipients accepted per transaction.
pub const RCPT_PER_MESSAGE_MAX: usize = 1000;
/// Accept backlog of each listener.
const LISTEN_BACKLOG: i32 = 4096;
/// How often the sink's main task checks the stop flag and deadline.
const STOP_POLL_MS: u64 = 20;

/// What the sink needs to start.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Addresses to listen on (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    pub script: Script,
    /// Write every accepted message into this Maildir (`new/`); slows the sink.
    pub maildir: Option<PathBuf>,
    /// Offer STARTTLS with this server configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Require AUTH (PLAIN or LOGIN) with these credentials before MAIL.
    pub auth: Option<SinkAuth>,
}

/// The one user a sink with AUTH accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkAuth {
    pub user: String,
    pub password: String,
    /// Offer AUTH in plaintext sessions too (by default only after STARTTLS,
    /// as spate does).
    pub without_tls: bool,
}

impl SinkConfig {
    /// A sink accepting everything on one address.
    pub fn accept_all(listen: SocketAddr) -> Self {
        SinkConfig {
            listen: vec![listen],
            script: Script::default(),
            maildir: None,
            tls: None,
            duration: None,
            auth: None,
        }
    }
}

/// Messages, recipients and bytes accepted.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub messages: u64,
    pub recipients: u64,
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, recipients: u64, bytes: u64) {
        self.messages += 1;
        self.recipients += recipients;
        self.bytes += bytes;
    }
}

/// Everything the sink counted; printed and written as JSON at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkReport {
    pub total: Counts,
    pub per_client_ip: BTreeMap<String, Counts>,
    pub per_ehlo: BTreeMap<String, Counts>,
    /// By the sink's own address the message came in on (one per
    /// destination MX host when the sink stands in for several).
    pub per_listener: BTreeMap<String, Counts>,
    /// With several listen addresses: the recipient domains of the messages
    /// accepted on each (which destinations reached which MX host).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_listener_domains: BTreeMap<String, std::collections::BTreeSet<String>>,
    pub connections: u64,
    /// Sessions refused with a 4xx/5xx greeting.
    pub refused_greetings: u64,
    /// MAIL commands refused by a throttle or window rule.
    pub refused_mail: u64,
    pub tempfailed_recipients: u64,
    pub permfailed_recipients: u64,
    /// Connections closed by `close_after`.
    pub closed_after_limit: u64,
    /// Sessions that ended with a protocol or I/O error.
    pub session_errors: u64,
    /// Sessions that went on over TLS after STARTTLS.
    pub tls_sessions: u64,
    /// AUTH exchanges that ended with 235, and with a refusal (wrong
    /// credentials, undecodable or cancelled).
    pub auth_successes: u64,
    pub auth_failures: u64,
    pub first_message_unix_us: Option<u64>,
    pub last_message_unix_us: Option<u64>,
    /// End-to-end latency (injector send time to end of DATA received).
    pub e2e_latency: Percentiles,
    pub elapsed_s: f64,
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    report: SinkReport,
    per_ip: HashMap<IpAddr, Counts>,
    per_ehlo: HashMap<String, Counts>,
    per_listener: HashMap<SocketAddr, Counts>,
    per_listener_domains: HashMap<SocketAddr, std::collections::BTreeSet<String>>,
    e2e: Histogram<u64>,
    policy: Policy,
}

impl Shared {
    fn snapshot(&self) -> SinkReport {
        let mut r = self.report.clone();
        r.per_client_ip = self
            .per_ip
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        r.per_ehlo = self.per_ehlo.iter().map(|(k, v)| (k.clone(), *v)).collect();
        r.per_listener = self
            .per_listener
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        r.per_listener_domains = self
            .per_listener_domains
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        r.e2e_latency = report::percentiles(&self.e2e);
        r.elapsed_s = self.started.elapsed().as_secs_f64();
        r
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running sink. Dropping it stops the sink.
#[derive(Debug)]
pub struct SinkHandle {
    /// The bound addresses, in the order given.
    pub addrs: Vec<SocketAddr>,
    shared: SharedRef,
    accepted: Arc<Accepted>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// What the sink accepted so far, readable without its lock.
#[derive(Debug, Default)]
pub(super) struct Accepted {
    pub(super) messages: AtomicU64,
    pub(super) recipients: AtomicU64,
}

impl SinkHandle {
    /// The counts so far.
    pub fn report(&self) -> SinkReport {
        lock(&self.shared).snapshot()
    }

    /// Messages accepted so far (cheap: one atomic load).
    pub fn messages(&self) -> u64 {
        self.accepted.messages.load(Ordering::Relaxed)
    }

    /// Recipients accepted so far, over all messages (one atomic load).
    pub fn recipients(&self) -> u64 {
        self.accepted.recipients.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` messages were accepted or `timeout` passed;
    /// returns whether `n` was reached.
    pub fn wait_for_messages(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(Self::messages, n, timeout)
    }

    /// Waits until at least `n` recipients were accepted or `timeout`
    /// passed; returns whether `n` was reached.
    pub fn wait_for_recipients(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(Self::recipients, n, timeout)
    }

    fn wait_until(&self, count: fn(&Self) -> u64, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while count(self) < n {
            if Instant::now() >= deadline || self.is_finished() || crate::stop_requested() {
                return count(self) >= n;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Whether the sink thread ended (duration reached or error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the sink and returns the final counts.
    pub fn stop(mut self) -> anyhow::Result<SinkReport> {
        self.join()?;
        Ok(self.report())
    }

    fn join(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => anyhow::bail!("sink thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// Binds every address and starts the sink on its own thread (one compio
/// runtime serving all listeners).
pub fn spawn(config: SinkConfig) -> anyhow::Result<SinkHandle> {
    anyhow::ensure!(
        !config.listen.is_empty(),
        "sink needs at least one listen address"
    );
    let mut listeners = Vec::new();
    for addr in &config.listen {
        listeners.push(bind_listener(*addr).with_context(|| format!("sink: binding {addr}"))?);
    }
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let shared = Arc::new(Mutex::new(Shared {
        started: Instant::now(),
        report: SinkReport::default(),
        per_ip: HashMap::new(),
        per_ehlo: HashMap::new(),
        per_listener: HashMap::new(),
        per_listener_domains: HashMap::new(),
        e2e: report::new_histogram(),
        policy: Policy::default(),
    }));
    let accepted = Arc::new(Accepted::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (shared, accepted, stop) = (shared.clone(), accepted.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || run_runtime(listeners, config, shared, accepted, stop))?
    };
    Ok(SinkHandle {
        addrs,
        shared,
        accepted,
        stop,
        thread: Some(thread),
    })
}

/// A listening socket with a deep accept backlog (hundreds of injector
/// connections arrive at once; the std default of 128 would drop SYNs).
fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

fn run_runtime(
    listeners: Vec<std::net::TcpListener>,
    config: SinkConfig,
    shared: SharedRef,
    accepted: Arc<Accepted>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("sink: starting compio runtime")?;
    let listeners_count = listeners.len();
    let ctx = Arc::new(SinkContext {
        script: config.script,
        maildir: config.maildir,
        tls: config.tls.map(compio::tls::TlsAcceptor::from),
        auth: config.auth,
        shared,
        accepted,
        maildir_seq: AtomicU64::new(0),
        track_domains: listeners_count > 1,
    });
    if let Some(dir) = &ctx.maildir {
        for sub in ["new", "tmp", "cur"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let deadline = config.duration.map(|d| Instant::now() + d);
    runtime.block_on(async move {
        for listener in listeners {
            let local = listener.local_addr()?;
            let listener = compio::net::TcpListener::from_std(listener)?;
            let ctx = ctx.clone();
            compio::runtime::spawn(async move {
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        compio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    compio::runtime::spawn(async move {
                        serve_connection(stream, peer, local, &ctx).await
                    })
                    .detach();
                }
            })
            .detach();
        }
        while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
            compio::time::sleep(Duration::from_millis(STOP_POLL_MS)).await;
        }
        anyhow::Ok(())
    })
}

/// Builds a rustls server configuration (aws-lc-rs provider) from PEM files.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Arguments of `spate-bench sink`.
#[derive(clap::Args, Debug)]
pub struct SinkArgs {
    /// Comma-separated listen addresses, e.g. 127.0.0.2:2526,127.0.0.3:2526.
    #[arg(long, value_delimiter = ',', required = true)]
    pub listen: Vec<SocketAddr>,
    /// Reply script (TOML, see bench/README.md).
    #[arg(long, conflicts_with = "preset")]
    pub script: Option<PathBuf>,
    /// Provider-like replies: gmail, yahoo or microsoft.
    #[arg(long)]
    pub preset: Option<String>,
    /// Stop after this long (e.g. 30s, 5m); otherwise on SIGINT/SIGTERM.
    #[arg(long, value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the JSON counts to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Store accepted messages in this Maildir.
    #[arg(long)]
    pub maildir: Option<PathBuf>,
    /// PEM certificate chain; with --tls-key, STARTTLS is offered.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require AUTH PLAIN or LOGIN with these credentials (USER:PASSWORD)
    /// before MAIL; offered only after STARTTLS unless --auth-without-tls.
    #[arg(long)]
    pub auth: Option<String>,
    /// Offer AUTH in plaintext sessions too.
    #[arg(long, requires = "auth")]
    pub auth_without_tls: bool,
    /// Allow non-loopback listen addresses.
    #[arg(long)]
    pub allow_remote: bool,
}

/// Runs `spate-bench sink` until SIGINT/SIGTERM or --duration.
pub fn run(args: SinkArgs) -> anyhow::Result<()> {
    for addr in &args.listen {
        crate::ensure_loopback(*addr, args.allow_remote)?;
    }
    let script = match (&args.script, &args.preset) {
        (Some(path), _) => Script::load(path)?,
        (None, Some(preset)) => Script::preset(preset)?,
        (None, None) => Script::default(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    let auth = match &args.auth {
        Some(a) => {
            let (user, password) = crate::parse_credentials(a)?;
            anyhow::ensure!(
                tls.is_some() || args.auth_without_tls,
                "--auth needs STARTTLS (--tls-cert and --tls-key) or --auth-without-tls"
            );
            Some(SinkAuth {
                user,
                password,
                without_tls: args.auth_without_tls,
            })
        }
        None => None,
    };
    crate::install_signal_watch()?;
    let handle = spawn(SinkConfig {
        listen: args.listen,
        script,
        maildir: args.maildir,
        tls,
        duration: args.duration,
        auth,
    })?;
    let addrs: Vec<String> = handle.addrs.iter().map(ToString::to_string).collect();
    eprintln!("spate-bench sink: listening on {}", addrs.join(", "));
    while !crate::stop_requested() && !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = handle.stop()?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
