//! The SMTP injector: drives C concurrent connections on compio (io_uring),
//! each sending up to M messages (pipelining MAIL/RCPT/DATA when offered),
//! then QUIT and reconnect until N messages are done.
//!
//! Owns message generation (size or size distribution, the
//! `X-Spate-Bench-Sent` timestamp header, optional X-Virtual-MTA/X-Job), the
//! client side of the SMTP exchange, the optional rate cap, ack latency (from
//! the start of the body's write, end-of-data line included, to the final
//! reply received) and the accounting: every message is
//! counted exactly once, as accepted or as failed with the reply (or error)
//! that failed it. A message that never reached MAIL because the server closed
//! an already-used connection is put back and sent on a new connection.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::report::{self, Percentiles};
use crate::sink::SENT_HEADER;

mod client;

use client::{Connection, Step};

/// Longest reply line kept; longer replies are an error from the server.
pub const REPLY_BYTES_MAX: usize = 64 * 1024;
/// How long one reply may take before the connection counts as failed.
pub const REPLY_TIMEOUT_MS: u64 = 60_000;
/// Distinct failure texts kept; further ones are grouped as "(other)".
pub const FAILURE_KINDS_MAX: usize = 1000;

/// What to send.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub to: SocketAddr,
    pub messages: u64,
    pub connections: u64,
    pub per_connection: u64,
    /// Message sizes in bytes, chosen round-robin per message.
    pub sizes: Vec<usize>,
    pub domains: Vec<String>,
    /// Recipient local-part prefixes, round-robin (`tempfail+` etc. for sink scripts).
    pub locals: Vec<String>,
    /// Messages per second over all connections; None = as fast as possible.
    pub rate: Option<f64>,
    pub vmta: Option<String>,
    pub job: Option<String>,
    pub from: String,
    pub ehlo: String,
    pub source: Option<IpAddr>,
    /// Worker threads, each with its own runtime and a share of the connections.
    pub threads: usize,
    pub progress: bool,
    /// Recipients per message (1 to [`RCPTS_MAX`]).
    pub rcpts: u32,
    /// STARTTLS after EHLO (required: a server that does not offer it fails
    /// the connection), then EHLO again.
    pub starttls: Option<StartTls>,
    /// AUTH PLAIN with this user and password after EHLO (after STARTTLS
    /// when that is asked for too).
    pub auth: Option<(String, String)>,
}

/// Most recipients per message `--rcpts` takes.
pub const RCPTS_MAX: u32 = 1000;

/// How the injector runs STARTTLS.
#[derive(Debug, Clone)]
pub struct StartTls {
    pub connector: compio::tls::TlsConnector,
    /// The name the server's certificate is checked against (when verified).
    pub server_name: String,
}

impl StartTls {
    /// Verifies the server's certificate against `ca_file` (PEM) when
    /// given; otherwise encrypts without verifying, as a load generator
    /// against test certificates on loopback does.
    pub fn new(ca_file: Option<&std::path::Path>, server_name: &str) -> anyhow::Result<StartTls> {
        let connector = match ca_file {
            Some(ca) => spate::delivery::tls::verifying_connector(Some(ca))
                .map_err(|e| anyhow::anyhow!("TLS CA file {}: {e}", ca.display()))?,
            None => spate::delivery::tls::connector()
                .map_err(|e| anyhow::anyhow!("TLS client configuration: {e}"))?,
        };
        Ok(StartTls {
            connector,
            server_name: server_name.to_owned(),
        })
    }
}

impl InjectConfig {
    /// `messages` 2 KB messages over `connections` connections to `to`.
    pub fn new(to: SocketAddr, messages: u64, connections: u64) -> Self {
        InjectConfig {
            to,
            messages,
            connections,
            per_connection: 100,
            sizes: vec![2048],
            domains: vec!["example.test".into()],
            locals: vec!["user".into()],
            rate: None,
            vmta: None,
            job: None,
            from: "bench@spate-bench.test".into(),
            ehlo: "injector.spate-bench.test".into(),
            source: None,
            threads: 1,
            progress: false,
            rcpts: 1,
            starttls: None,
            auth: None,
        }
    }
}

/// The injector's summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InjectReport {
    pub messages: u64,
    pub accepted: u64,
    pub failed: u64,
    /// Never attempted because the run was interrupted (SIGINT/SIGTERM).
    pub unsent: u64,
    /// Failed messages grouped by the reply (or error) that failed them.
    pub failures: BTreeMap<String, u64>,
    /// Recipients refused (RCPT replies other than 2xx) in messages that
    /// were still sent to their other recipients, grouped by reply; the
    /// refused recipients of failed messages are not counted here.
    pub refused_recipients: BTreeMap<String, u64>,
    pub connections_opened: u64,
    pub bytes_sent: u64,
    pub elapsed_s: f64,
    /// Accepted messages per second.
    pub messages_per_s: f64,
    pub ack_latency: Percentiles,
    pub first_send_unix_us: u64,
}

struct Shared {
    config: InjectConfig,
    next: AtomicU64,
    /// Messages put back (never reached MAIL); at most one per connection slot.
    returned: Mutex<Vec<u64>>,
    done: AtomicU64,
    started: Instant,
    totals: Mutex<Totals>,
    progress: Option<indicatif::ProgressBar>,
}

struct Totals {
    report: InjectReport,
    ack: hdrhistogram::Histogram<u64>,
}

impl Shared {
    /// Claims the next message number, or None when all are claimed.
    fn claim(&self) -> Option<u64> {
        if crate::stop_requested() {
            return None; // interrupted: the rest stays unsent
        }
        if let Some(seq) = self
            .returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
        {
            return Some(seq);
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        (n < self.config.messages).then_some(n)
    }

    fn give_back(&self, seq: u64) {
        self.returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(seq);
    }

    fn outcome(&self, result: Result<(), String>) {
        {
            let mut t = self
                .totals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match result {
                Ok(()) => t.report.accepted += 1,
                Err(reason) => {
                    t.report.failed += 1;
                    let kinds = t.report.failures.len();
                    let key =
                        if kinds >= FAILURE_KINDS_MAX && !t.report.failures.contains_key(&reason) {
                            "(other)".to_owned()
                        } else {
                            reason
                        };
                    *t.report.failures.entry(key).or_default() += 1;
                }
            }
        }
        self.done.fetch_add(1, Ordering::SeqCst);
        if let Some(bar) = &self.progress {
            bar.inc(1);
        }
    }

    /// Counts recipients refused in a message sent to its other recipients.
    fn refused(&self, replies: Vec<String>) {
        if replies.is_empty() {
            return;
        }
        let mut t = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for reason in replies {
            let kinds = t.report.refused_recipients.len();
            let key = if kinds >= FAILURE_KINDS_MAX
                && !t.report.refused_recipients.contains_key(&reason)
            {
                "(other)".to_owned()
            } else {
                reason
            };
            *t.report.refused_recipients.entry(key).or_default() += 1;
        }
    }

    async fn pace(&self, seq: u64) {
        if let Some(rate) = self.config.rate {
            let due = self.started + Duration::from_secs_f64(seq as f64 / rate);
            let now = Instant::now();
            if due > now {
                compio::time::sleep(due - now).await;
            }
        }
    }
}

/// Runs the injection to completion and returns the summary.
pub fn run_inject(config: InjectConfig) -> anyhow::Result<InjectReport> {
    anyhow::ensure!(config.connections > 0, "--connections must be > 0");
    anyhow::ensure!(config.per_connection > 0, "--per-connection must be > 0");
    anyhow::ensure!(
        !config.sizes.is_empty() && !config.domains.is_empty() && !config.locals.is_empty()
    );
    anyhow::ensure!(config.rate.is_none_or(|r| r > 0.0), "--rate must be > 0");
    anyhow::ensure!(
        (1..=RCPTS_MAX).contains(&config.rcpts),
        "--rcpts must be 1 to {RCPTS_MAX}"
    );
    let progress = (config.progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(config.messages);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let threads = config
        .threads
        .clamp(1, 64)
        .min(usize::try_from(config.connections).unwrap_or(1));
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        returned: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        started: Instant::now(),
        totals: Mutex::new(Totals {
            report: InjectReport::default(),
            ack: report::new_histogram(),
        }),
        progress,
        config,
    });
    let first_send_unix_us = crate::unix_micros();
    let mut workers = Vec::new();
    for t in 0..threads {
        let shared = shared.clone();
        let conns = shared.config.connections;
        let mine = conns / threads as u64 + u64::from((t as u64) < conns % threads as u64);
        workers.push(
            std::thread::Builder::new()
                .name(format!("bench-inject-{t}"))
                .spawn(move || {
                    let rt = compio::runtime::Runtime::new()
                        .context("injector: starting compio runtime")?;
                    rt.block_on(async {
                        let tasks: Vec<_> = (0..mine)
                            .map(|_| {
                                let shared = shared.clone();
                                compio::runtime::spawn(
                                    async move { connection_loop(&shared).await },
                                )
                            })
                            .collect();
                        for task in tasks {
                            let _ = task.await;
                        }
                    });
                    anyhow::Ok(())
                })?,
        );
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("injector thread panicked"))??;
    }
    if let Some(bar) = &shared.progress {
        bar.finish_and_clear();
    }
    let elapsed = shared.started.elapsed().as_secs_f64();
    let t = shared
        .totals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut report = t.report.clone();
    report.messages = shared.config.messages;
    let claimed = shared
        .next
        .load(Ordering::SeqCst)
        .min(shared.config.messages);
    let returned = shared
        .returned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len() as u64;
    report.unsent = shared.config.messages - claimed + returned;
    report.elapsed_s = elapsed;
    report.messages_per_s = if elapsed > 0.0 {
        report.accepted as f64 / elapsed
    } else {
        0.0
    };
    report.ack_latency = report::percentiles(&t.ack);
    report.first_send_unix_us = first_send_unix_us;
    anyhow::ensure!(
        report.accepted + report.failed + report.unsent == shared.config.messages,
        "accounting bug: {} accepted + {} failed + {} unsent for {} messages",
        report.accepted,
        report.failed,
        report.unsent,
        shared.config.messages
    );
    Ok(report)
}

/// One connection slot: connect, send up to M messages, QUIT, repeat.
async fn connection_loop(shared: &Shared) {
    while let Some(first) = shared.claim() {
        let conn = Connection::open(shared).await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(reason) => {
                // Connection-level failure: this one message fails with it.
                shared.outcome(Err(reason));
                continue;
            }
        };
        let mut sent_on_connection = 0u64;
        let mut next = Some(first);
        while let Some(seq) = next {
            shared.pace(seq).await;
            match conn.send_message(shared, seq).await {
                Step::Done(result) => shared.outcome(result),
                Step::Broken {
                    reason,
                    before_mail,
                } => {
                    if before_mail && sent_on_connection > 0 {
                        shared.give_back(seq);
                    } else {
                        shared.outcome(Err(reason));
                    }
                    conn.broken = true;
                    break;
                }
            }
            sent_on_connection += 1;
            if conn.broken || sent_on_connection >= shared.config.per_connection {
                break;
            }
            next = shared.claim();
        }
        conn.quit().await;
    }
}

/// Writes a message of about `size` bytes (headers included), dot-safe.
pub fn build_message(out: &mut Vec<u8>, cfg: &InjectConfig, rcpt: &str, seq: u64, size: usize) {
    use std::io::Write;
    let _ = write!(
        out,
        "{SENT_HEADER}: {}\r\nFrom: <{}>\r\nTo: <{}>\r\nSubject: spate-bench message {}\r\nMessage-ID: <{}.{}@spate-bench.test>\r\n",
        crate::unix_micros(),
        cfg.from,
        rcpt,
        seq,
        seq,
        std::process::id()
    );
    if let Some(v) = &cfg.vmta {
        let _ = write!(out, "X-Virtual-MTA: {v}\r\n");
    }
    if let Some(j) = &cfg.job {
        let _ = write!(out, "X-Job: {j}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // Body lines of 76 letters; never starting with '.'.
    const LINE: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx\r\n";
    while out.len() + LINE.len() <= size {
        out.extend_from_slice(LINE);
    }
    let rest = size.saturating_sub(out.len());
    if rest > 2 {
        out.extend_from_slice(LINE.get(..rest - 2).unwrap_or_default());
        out.extend_from_slice(b"\r\n");
    }
}

/// Largest weight of one `--size-dist` or `--domains` entry.
pub const WEIGHT_MAX: usize = 1000;

/// Most entries of one `--size-dist` or `--domains` list: [`spread`]'s
/// start-up cost grows with the square of the entries: at most about a
/// third of a second here (256 entries of distinct weights near
/// [`WEIGHT_MAX`], release build), where thousands took minutes.
pub const MIX_ENTRIES_MAX: usize = 256;

/// Parses `--size-dist 1024:70,10240:25,102400:5` into the cycle of
/// message sizes: each appears as often as its weight says, spread through
/// the cycle (see [`spread`]).
pub fn parse_size_dist(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut sizes = Vec::new();
    for part in text.split(',') {
        let (size, weight) = part
            .split_once(':')
            .context("--size-dist entries are SIZE:WEIGHT")?;
        let size: usize = size.trim().parse().context("bad size in --size-dist")?;
        let weight: usize = weight.trim().parse().context("bad weight in --size-dist")?;
        anyhow::ensure!(weight <= WEIGHT_MAX, "weight too large in --size-dist");
        sizes.push((size, weight));
    }
    weighted_cycle(&sizes, "--size-dist")
}

/// Parses `--domains gmail.test:60,yahoo.test:30,other.test:10` (the weight
/// defaults to 1) into the cycle of recipient domains: each appears as often
/// as its weight says, spread through the cycle (see [`spread`]). Equal
/// weights (a list without weights) keep the order given.
pub fn parse_domains(entries: &[String]) -> anyhow::Result<Vec<String>> {
    let mut domains = Vec::new();
    for entry in entries {
        let (name, weight) = match entry.split_once(':') {
            Some((name, w)) => {
                let w: usize = w
                    .trim()
                    .parse()
                    .with_context(|| format!("bad weight in --domains entry {entry:?}"))?;
                (name.trim(), w)
            }
            None => (entry.trim(), 1),
        };
        anyhow::ensure!(!name.is_empty(), "empty domain in --domains");
        anyhow::ensure!(
            (1..=WEIGHT_MAX).contains(&weight),
            "--domains weight of {name} must be 1 to {WEIGHT_MAX}"
        );
        domains.push((name.to_owned(), weight));
    }
    weighted_cycle(&domains, "--domains")
}

/// The [`spread`] cycle of a `flag`'s weighted entries: at most
/// [`MIX_ENTRIES_MAX`] of them, and not all of weight zero.
fn weighted_cycle<T: Clone>(entries: &[(T, usize)], flag: &str) -> anyhow::Result<Vec<T>> {
    anyhow::ensure!(
        entries.len() <= MIX_ENTRIES_MAX,
        "{flag} has {} entries, at most {MIX_ENTRIES_MAX}",
        entries.len()
    );
    let cycle = spread(entries);
    anyhow::ensure!(!cycle.is_empty(), "{flag} is empty");
    Ok(cycle)
}

/// The cycle of weighted `entries` (value, weight), which messages index
/// round-robin: each value appears as often as its weight (over the
/// weights' greatest common divisor, so 80:20 is a cycle of 5), and in
/// every prefix of the repeated cycle each value's count is less than one
/// away from its weighted share of the prefix. Deterministic; equal weights
/// keep the order given (a, b, c, a, b, c, ...); zero weights are left out.
///
/// Tijdeman's chairman assignment: with `n` entries and `B = 1 - 1/(2n-2)`,
/// turn `t` goes, among the entries whose next turn is due (`t·share -
/// count >= 1 - B`), to the one whose count would fall behind its share
/// by `B` soonest (the earliest `(count + B) / share`), ties to the first
/// given. Exact integer arithmetic; O(cycle × entries).
fn spread<T: Clone>(entries: &[(T, usize)]) -> Vec<T> {
    let entries: Vec<&(T, usize)> = entries.iter().filter(|(_, w)| *w > 0).collect();
    let divisor = entries.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    let weights: Vec<i128> = entries.iter().map(|(_, w)| (w / divisor) as i128).collect();
    let total: i128 = weights.iter().sum();
    // 1 - B = 1/d, with d = 2n - 2 (at least 1).
    let d = (2 * entries.len() as i128 - 2).max(1);
    let mut counts = vec![0i128; entries.len()];
    let mut cycle = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for t in 1..=total {
        let mut best: Option<(usize, i128, i128)> = None;
        for (i, (&w, &c)) in weights.iter().zip(&counts).enumerate() {
            // Due: t·w/total - c >= 1/d.
            if d * (t * w - c * total) < total {
                continue;
            }
            // Deadline (c + B)·total/w = (d·c + d - 1)·total/(d·w): compare
            // (d·c + d - 1)/w across entries.
            if best.is_none_or(|(_, bw, bc)| (d * c + d - 1) * bw < (d * bc + d - 1) * w) {
                best = Some((i, w, c));
            }
        }
        // Tijdeman's theorem: some entry is always due.
        let Some((b, _, _)) = best else { break };
        if let (Some(count), Some((value, _))) = (counts.get_mut(b), entries.get(b)) {
            *count += 1;
            cycle.push(value.clone());
        }
    }
    cycle
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Arguments of `spate-bench inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    #[arg(long)]
    pub to: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    #[arg(long, default_value_t = 20)]
    pub connections: u64,
    #[arg(long, default_value_t = 100)]
    pub per_connection: u64,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 2048, conflicts_with = "size_dist")]
    pub size: usize,
    /// Size distribution SIZE:WEIGHT,... e.g. 2048:80,102400:20.
    #[arg(long)]
    pub size_dist: Option<String>,
    /// Comma-separated recipient domains, each with an optional weight
    /// (gmail.test:60,yahoo.test:30,other.test:10); round-robin by weight.
    #[arg(long, value_delimiter = ',', default_value = "example.test")]
    pub domains: Vec<String>,
    /// Comma-separated recipient local-part prefixes, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "user")]
    pub locals: Vec<String>,
    /// Messages per second cap over all connections.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Add `X-Virtual-MTA: NAME`.
    #[arg(long)]
    pub vmta: Option<String>,
    /// Add `X-Job: ID`.
    #[arg(long)]
    pub job: Option<String>,
    #[arg(long, default_value = "bench@spate-bench.test")]
    pub from: String,
    /// Bind connections to this source IP (e.g. 127.0.0.5).
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// Worker threads (each with its own io_uring runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Recipients per message: each gets its own local part
    /// (PREFIX<message>-<n>) and the domains take turns.
    #[arg(long, default_value_t = 1)]
    pub rcpts: u32,
    /// Run STARTTLS on every connection (fails if the server does not offer it).
    #[arg(long)]
    pub starttls: bool,
    /// Verify the server's certificate against this CA file (PEM); without
    /// it the connection is encrypted but the certificate is not checked.
    #[arg(long, requires = "starttls")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// The name to check the server's certificate against (default: the
    /// --to address).
    #[arg(long, requires = "tls_ca")]
    pub tls_name: Option<String>,
    /// AUTH PLAIN as USER:PASSWORD (spate offers AUTH only over TLS: add
    /// --starttls).
    #[arg(long)]
    pub auth: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub allow_remote: bool,
}

impl InjectArgs {
    /// Turns command-line arguments into a configuration.
    pub fn into_config(self) -> anyhow::Result<InjectConfig> {
        crate::ensure_loopback(self.to, self.allow_remote)?;
        if let Some(ip) = self.source {
            crate::ensure_loopback_ip(ip, self.allow_remote)?;
        }
        let sizes = match &self.size_dist {
            Some(d) => parse_size_dist(d)?,
            None => vec![self.size],
        };
        let starttls = if self.starttls {
            let name = self.tls_name.unwrap_or_else(|| self.to.ip().to_string());
            Some(StartTls::new(self.tls_ca.as_deref(), &name)?)
        } else {
            None
        };
        let auth = self
            .auth
            .as_deref()
            .map(crate::parse_credentials)
            .transpose()?;
        Ok(InjectConfig {
            to: self.to,
            messages: self.messages,
            connections: self.connections,
            per_connection: self.per_connection,
            sizes,
            domains: parse_domains(&self.domains)?,
            locals: self.locals,
            rate: self.rate,
            vmta: self.vmta,
            job: self.job,
            from: self.from,
            ehlo: "injector.spate-bench.test".into(),
            source: self.source,
            threads: self.threads,
            progress: !self.json,
            rcpts: self.rcpts,
            starttls,
            auth,
        })
    }
}

/// Prints a human summary.
pub fn print_summary(r: &InjectReport) {
    println!(
        "injected {} messages in {:.3} s: {} accepted, {} failed, {:.0} msgs/s, {} connections",
        r.messages, r.elapsed_s, r.accepted, r.failed, r.messages_per_s, r.connections_opened
    );
    if r.unsent > 0 {
        println!("interrupted: {} messages never sent", r.unsent);
    }
    println!("ack latency: {}", r.ack_latency);
    for (reason, n) in &r.failures {
        println!("  {n:>8}  {reason}");
    }
    if !r.refused_recipients.is_empty() {
        println!("recipients refused in messages sent to the others:");
        for (reason, n) in &r.refused_recipients {
            println!("  {n:>8}  {reason}");
        }
    }
}

/// Runs `spate-bench inject`.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let json = args.json;
    crate::install_signal_watch()?;
    let report = run_inject(args.into_config()?)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InjectArgs,
    }

    fn config(argv: &[&str]) -> anyhow::Result<InjectConfig> {
        let argv = ["inject", "--to", "127.0.0.1:2525"].iter().chain(argv);
        Cli::try_parse_from(argv)?.args.into_config()
    }

    /// |count·total − prefix·weight| < total for every value and prefix of
    /// the repeated cycle: each count is within 1 of its weighted share.
    fn assert_close(weights: &[usize]) {
        let entries: Vec<(usize, usize)> = weights.iter().copied().enumerate().collect();
        let cycle = spread(&entries);
        let total: usize = weights.iter().sum();
        assert_eq!(cycle.len() * (total / cycle.len()), total, "{weights:?}");
        let mut counts = vec![0usize; weights.len()];
        for (k, &value) in cycle.iter().cycle().take(2 * cycle.len() + 3).enumerate() {
            counts[value] += 1;
            let prefix = k + 1;
            for (&c, &w) in counts.iter().zip(weights) {
                let (have, share) = (c * total, prefix * w);
                assert!(
                    have.abs_diff(share) < total,
                    "weights {weights:?}, prefix {prefix}: {c} against {}",
                    share as f64 / total as f64
                );
            }
        }
    }

    #[test]
    fn weighted_cycles_spread_every_prefix() {
        for a in 1..=9 {
            assert_close(&[a]);
            for b in 1..=9 {
                assert_close(&[a, b]);
                for c in 1..=9 {
                    assert_close(&[a, b, c]);
                    for d in [1, 2, 5, 7] {
                        assert_close(&[a, b, c, d]);
                    }
                }
            }
        }
        assert_close(&[80, 20]);
        assert_close(&[60, 30, 10]);
        assert_close(&[1000, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_close(&[306, 129, 992, 218, 897, 49, 314]);
        assert_close(&[997, 991, 983, 2]);
    }

    #[test]
    fn weighted_mixes_are_spread_and_equal_weights_keep_order() {
        // 80:20 is a cycle of 5, one large message in it.
        let sizes = parse_size_dist("2048:80,102400:20").unwrap();
        assert_eq!(sizes, [2048, 2048, 102400, 2048, 2048]);
        let ten: Vec<_> = (0..10).map(|s| sizes[s % sizes.len()]).collect();
        assert_eq!(ten.iter().filter(|&&s| s == 102400).count(), 2);
        let domains = parse_domains(&["a.test:60".into(), "b.test:40".into()]).unwrap();
        let ten: Vec<_> = (0..10).map(|s| &domains[s % domains.len()]).collect();
        assert_eq!(
            ten.iter().filter(|d| d.as_str() == "b.test").count(),
            4,
            "{ten:?}"
        );
        // A zero weight leaves its size out; all zero is empty.
        assert_eq!(parse_size_dist("1:0,2:3").unwrap(), [2]);
        assert!(parse_size_dist("1:0").is_err());
        // The longest lists, with varied weights, are spread; one entry
        // more is refused.
        let varied = |n: usize| -> Vec<(usize, usize)> { (0..n).map(|i| (i + 1, i + 1)).collect() };
        let text = |v: &[(usize, usize)]| {
            v.iter()
                .map(|(s, w)| format!("{s}:{w}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let longest = varied(MIX_ENTRIES_MAX);
        let cycle = parse_size_dist(&text(&longest)).unwrap();
        let total: usize = longest.iter().map(|(_, w)| w).sum();
        assert_eq!(cycle.len(), total);
        assert_eq!(cycle.iter().filter(|&&s| s == 200).count(), 200);
        let err = parse_size_dist(&text(&varied(MIX_ENTRIES_MAX + 1))).unwrap_err();
        assert!(err.to_string().contains("at most 256"), "{err}");
        let many: Vec<String> = (0..=MIX_ENTRIES_MAX)
            .map(|i| format!("d{i}.test"))
            .collect();
        let err = parse_domains(&many).unwrap_err();
        assert!(
            err.to_string().contains("--domains has 257 entries"),
            "{err}"
        );
        // Equal weights, with or without a number: the order given.
        for list in [["d1", "d2", "d3"], ["d1:4", "d2:4", "d3:4"]] {
            let list: Vec<String> = list.iter().map(|d| d.to_string()).collect();
            assert_eq!(parse_domains(&list).unwrap(), ["d1", "d2", "d3"]);
        }
        let same: Vec<String> = ["x", "y", "x"].iter().map(|d| d.to_string()).collect();
        assert_eq!(parse_domains(&same).unwrap(), same);
    }

    #[test]
    fn tls_auth_and_recipient_options() {
        let c = config(&["--starttls", "--auth", "u:p:w", "--rcpts", "3"]).unwrap();
        // The password is everything after the first colon.
        assert_eq!(c.auth, Some(("u".into(), "p:w".into())));
        assert_eq!(
            c.starttls.map(|t| t.server_name).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(c.rcpts, 3);
        assert!(config(&[]).unwrap().starttls.is_none());
        // A CA file only with STARTTLS, a name to check only with a CA file.
        assert!(config(&["--tls-ca", "ca.pem"]).is_err());
        assert!(config(&["--starttls", "--tls-name", "mx.test"]).is_err());
        let missing = config(&["--starttls", "--tls-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(
            format!("{missing:#}").contains("/nonexistent/ca.pem"),
            "{missing:#}"
        );
        for bad in ["nopassword", ":pw"] {
            let e = config(&["--auth", bad]).unwrap_err();
            assert!(format!("{e:#}").contains("--auth"), "{e:#}");
        }
    }
}
