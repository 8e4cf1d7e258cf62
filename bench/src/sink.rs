//! The SMTP sink: a fast compio (io_uring) SMTP server that stores nothing by
//! default, replies as a [`Script`] says, and counts what it accepted.
//!
//! Owns the listener threads, the per-connection session loop (a compact ESMTP
//! server: EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP, QUIT, STARTTLS,
//! pipelined), the counters per client IP and EHLO name, end-to-end latency
//! from the injector's `X-Spate-Bench-Sent` header, and the optional Maildir.
//! Reply decisions live in [`crate::script`]; the sink only applies them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::rustls;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{self, Percentiles};
use crate::script::{self, Policy, Script};

/// Name of the header carrying the injector's send time in Unix microseconds.
pub const SENT_HEADER: &str = "X-Spate-Bench-Sent";
/// Longest command line accepted (RFC 5321 says 512; extensions make it longer).
pub const COMMAND_LINE_BYTES_MAX: usize = 4096;
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
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl SinkHandle {
    /// The counts so far.
    pub fn report(&self) -> SinkReport {
        lock(&self.shared).snapshot()
    }

    /// Messages accepted so far (cheap: one atomic load).
    pub fn messages(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` messages were accepted or `timeout` passed;
    /// returns whether `n` was reached.
    pub fn wait_for_messages(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.messages() < n {
            if Instant::now() >= deadline || self.is_finished() || crate::stop_requested() {
                return self.messages() >= n;
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
        e2e: report::new_histogram(),
        policy: Policy::default(),
    }));
    let accepted = Arc::new(AtomicU64::new(0));
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
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("sink: starting compio runtime")?;
    let ctx = Arc::new(Context_ {
        script: config.script,
        maildir: config.maildir,
        tls: config.tls.map(compio::tls::TlsAcceptor::from),
        shared,
        accepted,
        maildir_seq: AtomicU64::new(0),
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
                    compio::runtime::spawn(
                        async move { serve_connection(stream, peer, &ctx).await },
                    )
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

struct Context_ {
    script: Script,
    maildir: Option<PathBuf>,
    tls: Option<compio::tls::TlsAcceptor>,
    shared: SharedRef,
    accepted: Arc<AtomicU64>,
    maildir_seq: AtomicU64,
}

/// How a session over one stream ended.
enum Ending {
    Closed,
    StartTls,
}

async fn serve_connection(stream: compio::net::TcpStream, peer: SocketAddr, ctx: &Context_) {
    lock(&ctx.shared).report.connections += 1;
    let mut session = Session::new(peer.ip(), ctx);
    let mut plain = stream;
    match session.run(&mut plain, true).await {
        Ok(Ending::StartTls) => {}
        Ok(Ending::Closed) => return,
        Err(_) => {
            lock(&ctx.shared).report.session_errors += 1;
            return;
        }
    }
    let Some(acceptor) = &ctx.tls else { return };
    let Ok(mut tls) = acceptor.accept(plain).await else {
        lock(&ctx.shared).report.session_errors += 1;
        return;
    };
    session.reset_after_tls();
    if session.run(&mut tls, false).await.is_err() {
        lock(&ctx.shared).report.session_errors += 1;
    }
}

enum Mode {
    Command,
    Data,
    Bdat { remaining: usize, last: bool },
}

struct Session<'c> {
    ctx: &'c Context_,
    ip: IpAddr,
    tls: bool,
    ehlo: Option<String>,
    in_transaction: bool,
    rcpts: usize,
    messages_on_connection: u64,
    mode: Mode,
    message: Vec<u8>,
}

impl<'c> Session<'c> {
    fn new(ip: IpAddr, ctx: &'c Context_) -> Self {
        Session {
            ctx,
            ip,
            tls: false,
            ehlo: None,
            in_transaction: false,
            rcpts: 0,
            messages_on_connection: 0,
            mode: Mode::Command,
            message: Vec::new(),
        }
    }

    fn reset_after_tls(&mut self) {
        self.tls = true;
        self.ehlo = None;
        self.reset_transaction();
    }

    fn reset_transaction(&mut self) {
        self.in_transaction = false;
        self.rcpts = 0;
        self.mode = Mode::Command;
        self.message.clear();
    }

    /// Serves one stream until QUIT, close, error or STARTTLS.
    async fn run<S: AsyncRead + AsyncWrite>(
        &mut self,
        io: &mut S,
        greet: bool,
    ) -> std::io::Result<Ending> {
        let script = &self.ctx.script;
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        if greet {
            let greeting = script::render(&script.greeting, self.ip);
            push_reply(&mut out, &greeting);
            if !greeting.starts_with('2') {
                lock(&self.ctx.shared).report.refused_greetings += 1;
                flush(io, &mut out, script.delay_ms).await?;
                return Ok(Ending::Closed);
            }
        }
        let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
        let mut pos = 0usize; // start of unprocessed input in `buf`
        let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BYTES);
        loop {
            // Process every complete unit of input.
            let mut action = Action::Continue;
            while action == Action::Continue {
                let before = pos;
                action = self.step(&buf, &mut pos, &mut out)?;
                if action == Action::Continue && pos == before {
                    break; // needs more input
                }
            }
            if !out.is_empty() {
                let delay = if action == Action::DataDone {
                    script.data_delay_ms
                } else {
                    0
                } + script.delay_ms;
                flush(io, &mut out, delay).await?;
            }
            match action {
                Action::Close => return Ok(Ending::Closed),
                Action::StartTls => return Ok(Ending::StartTls),
                Action::Continue | Action::DataDone => {}
            }
            if action == Action::DataDone {
                continue; // more pipelined input may already be buffered
            }
            // Compact, then read more.
            if pos > 0 {
                buf.drain(..pos);
                pos = 0;
            }
            rbuf.clear();
            let BufResult(res, back) = io.read(rbuf).await;
            rbuf = back;
            match res {
                Ok(0) => return Ok(Ending::Closed),
                Ok(n) => buf.extend_from_slice(rbuf.get(..n).unwrap_or_default()),
                Err(e) => return Err(e),
            }
            if matches!(self.mode, Mode::Command)
                && buf.len() > COMMAND_LINE_BYTES_MAX
                && !buf.contains(&b'\n')
            {
                push_reply(&mut out, "500 5.5.2 Line too long");
                flush(io, &mut out, 0).await?;
                return Ok(Ending::Closed);
            }
        }
    }

    /// Handles one command line or one piece of message data.
    fn step(&mut self, buf: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> std::io::Result<Action> {
        let input = buf.get(*pos..).unwrap_or_default();
        match self.mode {
            Mode::Command => {
                let Some(eol) = memchr::memchr(b'\n', input) else {
                    return Ok(Action::Continue);
                };
                let line = input.get(..eol).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                *pos += eol + 1;
                Ok(self.command(line, out))
            }
            Mode::Data => {
                // The terminator is CRLF.CRLF; the message may also be empty.
                let end = if input.starts_with(b".\r\n") {
                    Some((0, 3))
                } else {
                    memchr::memmem::find(input, b"\r\n.\r\n").map(|i| (i + 2, i + 5))
                };
                match end {
                    Some((body_end, consumed)) => {
                        self.message
                            .extend_from_slice(input.get(..body_end).unwrap_or_default());
                        *pos += consumed;
                        Ok(self.finish_message(out))
                    }
                    None => {
                        // Keep the last 4 bytes: they may start the terminator.
                        let keep = input.len().min(4);
                        let take = input.len() - keep;
                        self.message
                            .extend_from_slice(input.get(..take).unwrap_or_default());
                        *pos += take;
                        if self.message.len() > MESSAGE_BYTES_MAX {
                            push_reply(out, "552 5.3.4 Message too big");
                            return Ok(Action::Close);
                        }
                        Ok(Action::Continue)
                    }
                }
            }
            Mode::Bdat { remaining, last } => {
                let take = remaining.min(input.len());
                self.message
                    .extend_from_slice(input.get(..take).unwrap_or_default());
                *pos += take;
                let remaining = remaining - take;
                if remaining > 0 {
                    self.mode = Mode::Bdat { remaining, last };
                    return Ok(Action::Continue);
                }
                if self.message.len() > MESSAGE_BYTES_MAX {
                    push_reply(out, "552 5.3.4 Message too big");
                    return Ok(Action::Close);
                }
                if last {
                    Ok(self.finish_message(out))
                } else {
                    self.mode = Mode::Command;
                    push_reply(out, "250 2.0.0 Chunk accepted");
                    Ok(Action::Continue)
                }
            }
        }
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let text = String::from_utf8_lossy(line);
        let upper = text.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or_default();
        let script = &self.ctx.script;
        match verb {
            "EHLO" | "HELO" => {
                let name = text.get(5..).unwrap_or_default().trim();
                if name.is_empty() {
                    push_reply(out, "501 5.5.4 Syntax: EHLO hostname");
                    return Action::Continue;
                }
                self.ehlo = Some(name.chars().take(255).collect());
                self.reset_transaction();
                if verb == "HELO" {
                    push_reply(out, "250 spate-bench-sink");
                } else {
                    out.extend_from_slice(b"250-spate-bench-sink greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n");
                    if self.ctx.tls.is_some() && !self.tls {
                        out.extend_from_slice(b"250-STARTTLS\r\n");
                    }
                    push_reply(out, &format!("250 SIZE {MESSAGE_BYTES_MAX}"));
                }
            }
            "STARTTLS" if self.ctx.tls.is_some() && !self.tls => {
                push_reply(out, "220 2.0.0 Ready to start TLS");
                return Action::StartTls;
            }
            "MAIL" if upper.starts_with("MAIL FROM:") => {
                if self.ehlo.is_none() {
                    push_reply(out, "503 5.5.1 EHLO first");
                } else if self.in_transaction {
                    push_reply(out, "503 5.5.1 Nested MAIL command");
                } else {
                    let no_rules = script.throttle.is_empty() && script.window.is_empty();
                    let refusal = if no_rules {
                        None // the common benchmark case: no lock per MAIL
                    } else {
                        let mut shared = lock(&self.ctx.shared);
                        let elapsed = shared.started.elapsed();
                        let refusal = shared.policy.mail_reply(script, self.ip, elapsed);
                        if refusal.is_some() {
                            shared.report.refused_mail += 1;
                        }
                        refusal
                    };
                    match refusal {
                        Some(reply) => {
                            push_reply(out, &reply);
                            if script::closes_connection(&reply) {
                                return Action::Close;
                            }
                        }
                        None => {
                            self.in_transaction = true;
                            push_reply(out, "250 2.1.0 Sender ok");
                        }
                    }
                }
            }
            "RCPT" if upper.starts_with("RCPT TO:") => {
                if !self.in_transaction {
                    push_reply(out, "503 5.5.1 MAIL first");
                } else if self.rcpts >= RCPT_PER_MESSAGE_MAX {
                    push_reply(out, "452 4.5.3 Too many recipients");
                } else {
                    let local = local_part(text.get(8..).unwrap_or_default());
                    match script::rcpt_reply(script, local) {
                        Some(reply) => {
                            let mut shared = lock(&self.ctx.shared);
                            if reply.starts_with('4') {
                                shared.report.tempfailed_recipients += 1;
                            } else {
                                shared.report.permfailed_recipients += 1;
                            }
                            drop(shared);
                            push_reply(out, &script::render(reply, self.ip));
                        }
                        None => {
                            self.rcpts += 1;
                            push_reply(out, "250 2.1.5 Recipient ok");
                        }
                    }
                }
            }
            "DATA" => {
                if !self.in_transaction || self.rcpts == 0 {
                    push_reply(out, "554 5.5.1 No valid recipients");
                } else {
                    self.mode = Mode::Data;
                    self.message.clear();
                    push_reply(out, "354 End data with <CR><LF>.<CR><LF>");
                }
            }
            "BDAT" => {
                let mut parts = upper.split_ascii_whitespace().skip(1);
                let size = parts.next().and_then(|s| s.parse::<usize>().ok());
                let last = parts.next() == Some("LAST");
                match size {
                    None => push_reply(out, "501 5.5.4 Syntax: BDAT size [LAST]"),
                    Some(_) if !self.in_transaction || self.rcpts == 0 => {
                        // The chunk still follows on the wire; a real server
                        // must skip it, but we simply close.
                        push_reply(out, "554 5.5.1 No valid recipients");
                        return Action::Close;
                    }
                    Some(n) => {
                        self.mode = Mode::Bdat { remaining: n, last };
                    }
                }
            }
            "RSET" => {
                self.reset_transaction();
                push_reply(out, "250 2.0.0 Reset");
            }
            "NOOP" => push_reply(out, "250 2.0.0 OK"),
            "VRFY" => push_reply(out, "252 2.5.0 Cannot verify"),
            "QUIT" => {
                push_reply(out, "221 2.0.0 Bye");
                return Action::Close;
            }
            _ => push_reply(out, "500 5.5.2 Command not recognised"),
        }
        Action::Continue
    }

    fn finish_message(&mut self, out: &mut Vec<u8>) -> Action {
        let now_us = crate::unix_micros();
        let bytes = self.message.len() as u64;
        let recipients = self.rcpts as u64;
        let sent_us = sent_header(&self.message);
        if let Some(dir) = &self.ctx.maildir {
            let seq = self.ctx.maildir_seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("{now_us}.{seq}.spate-bench");
            let tmp = dir.join("tmp").join(&name);
            let write = std::fs::write(&tmp, &self.message)
                .and_then(|()| std::fs::rename(&tmp, dir.join("new").join(&name)));
            if write.is_err() {
                push_reply(out, "451 4.3.0 Maildir write failed");
                self.reset_transaction();
                return Action::DataDone;
            }
        }
        {
            let mut shared = lock(&self.ctx.shared);
            let s = &mut *shared;
            s.report.total.add(recipients, bytes);
            s.per_ip.entry(self.ip).or_default().add(recipients, bytes);
            let ehlo = self.ehlo.as_deref().unwrap_or("(none)");
            match s.per_ehlo.get_mut(ehlo) {
                Some(c) => c.add(recipients, bytes),
                None => {
                    let mut c = Counts::default();
                    c.add(recipients, bytes);
                    s.per_ehlo.insert(ehlo.to_owned(), c);
                }
            }
            s.report.first_message_unix_us.get_or_insert(now_us);
            s.report.last_message_unix_us = Some(now_us);
            if let Some(sent) = sent_us {
                report::record(&mut s.e2e, now_us.saturating_sub(sent));
            }
        }
        self.ctx.accepted.fetch_add(1, Ordering::Relaxed);
        self.reset_transaction();
        push_reply(out, "250 2.0.0 Message accepted");
        self.messages_on_connection += 1;
        let limit = self.ctx.script.close_after;
        if limit > 0 && self.messages_on_connection >= limit {
            lock(&self.ctx.shared).report.closed_after_limit += 1;
            return Action::Close;
        }
        Action::DataDone
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Continue,
    DataDone,
    Close,
    StartTls,
}

fn push_reply(out: &mut Vec<u8>, reply: &str) {
    out.extend_from_slice(reply.as_bytes());
    out.extend_from_slice(b"\r\n");
}

async fn flush<S: AsyncWrite>(io: &mut S, out: &mut Vec<u8>, delay_ms: u64) -> std::io::Result<()> {
    if delay_ms > 0 {
        compio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let data = std::mem::take(out);
    let BufResult(res, mut back) = io.write_all(data).await;
    back.clear();
    *out = back;
    res?;
    io.flush().await
}

/// The local part of `<local@domain>` (or of a bare address).
fn local_part(arg: &str) -> &str {
    let arg = arg.trim();
    let inner = arg
        .strip_prefix('<')
        .and_then(|a| a.split('>').next())
        .unwrap_or(arg);
    inner.rsplit_once('@').map_or(inner, |(l, _)| l)
}

/// The injector's send time from the message header, if present.
pub fn sent_header(message: &[u8]) -> Option<u64> {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let headers = message.get(..header_end)?;
    let needle = format!("{SENT_HEADER}: ");
    let at = memchr::memmem::find(headers, needle.as_bytes())?;
    let rest = headers.get(at + needle.len()..)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
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
    crate::install_signal_watch()?;
    let handle = spawn(SinkConfig {
        listen: args.listen,
        script,
        maildir: args.maildir,
        tls,
        duration: args.duration,
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
