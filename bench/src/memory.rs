//! `spate-bench memory`: resident memory per queued recipient.
//!
//! Owns the scenario of `bench/results/2026-11-27-memory-per-recipient.md`,
//! automated: a sink answering 451 to `tempfail+` recipients, spate
//! (release) with `retry_after = ["1h"]` routing the test domain to it, N
//! one-recipient messages injected; every recipient is attempted once,
//! deferred, and waits in the retry timer. `RssAnon` (heap and stacks) and
//! `RssFile` are read from `/proc/PID/status` once spate is idle and again
//! once `/api/v1/status` shows N queued and N deferred recipients and the
//! figure has stopped moving.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::inject::{InjectConfig, run_inject};
use crate::probe::{self, json_u64};
use crate::sink::SinkConfig;

/// Time between two looks at spate's status while it settles.
const SETTLE_POLL_MS: u64 = 1_000;
/// RssAnon counts as settled once two readings this far apart agree within
/// [`SETTLE_RSS_KIB_TOLERANCE`].
const SETTLE_RSS_KIB_TOLERANCE: u64 = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    pub recipients: u64,
    pub size: usize,
    pub inject_connections: u64,
    pub inject_threads: usize,
    pub spate_bin: PathBuf,
    /// Give up waiting for the queue to settle after this long.
    pub settle_timeout: Duration,
}

/// What the run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryReport {
    pub recipients: u64,
    pub injected_ok: u64,
    pub inject_failed: u64,
    pub inject_s: f64,
    pub settle_s: f64,
    pub queued_recipients: u64,
    pub deferred: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub idle_rss_anon_kib: u64,
    pub idle_rss_file_kib: u64,
    pub loaded_rss_anon_kib: u64,
    pub loaded_rss_file_kib: u64,
    pub peak_rss_kib: u64,
    /// (loaded − idle RssAnon) / queued recipients.
    pub anon_bytes_per_recipient: f64,
    pub file_bytes_per_recipient: f64,
    pub spool_bytes_used: u64,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

fn spate_config(dns: std::net::SocketAddr, sink: std::net::SocketAddr) -> String {
    let head = probe::config_head("memory", dns, "bench");
    format!(
        r#"{head}
[vmta.bench]
source_ip = "127.0.0.1"
ehlo = "spate.memory.test"

[domain."*"]
max_smtp_out = 20
starttls = "off"
retry_after = ["1h"]

[domain."example.test"]
smtp_hosts = ["{sink}"]
"#
    )
}

fn rss(pid: u32) -> (u64, u64) {
    (
        probe::status_kib(pid, "RssAnon").unwrap_or(0),
        probe::status_kib(pid, "RssFile").unwrap_or(0),
    )
}

/// Runs the scenario.
pub fn run_memory(cfg: &MemoryConfig) -> anyhow::Result<MemoryReport> {
    anyhow::ensure!(cfg.recipients > 0, "--recipients must be > 0");
    let mut report = MemoryReport {
        recipients: cfg.recipients,
        loadavg_start: probe::loadavg(),
        ..MemoryReport::default()
    };
    let dir = tempfile::tempdir()?;
    let sink = crate::sink::spawn(SinkConfig::accept_all("127.0.0.1:0".parse()?))?;
    let sink_addr = *sink.addrs.first().context("sink has no address")?;
    let zone = crate::dns::Zone::parse("memory.test A 127.0.0.1\n")?;
    let dns = crate::dns::spawn("127.0.0.1:0".parse()?, zone)?;
    let mut spate = probe::start_spate(
        &cfg.spate_bin,
        dir.path(),
        &spate_config(dns.addr, sink_addr),
        None,
        None,
    )?;
    let pid = spate.pid();
    // Let start-up allocations (TLS provider, shard runtimes) finish.
    std::thread::sleep(Duration::from_secs(2));
    (report.idle_rss_anon_kib, report.idle_rss_file_kib) = rss(pid);

    let mut inject = InjectConfig::new(spate.listen, cfg.recipients, cfg.inject_connections);
    inject.per_connection = 1000;
    inject.sizes = vec![cfg.size];
    inject.locals = vec!["tempfail+".into()];
    inject.threads = cfg.inject_threads;
    let r = run_inject(inject)?;
    report.injected_ok = r.accepted;
    report.inject_failed = r.failed;
    report.inject_s = r.elapsed_s;

    let settle_started = Instant::now();
    let mut last_anon = 0;
    let mut status = serde_json::Value::Null;
    loop {
        if let Ok(Some(exit)) = spate.guard.child.try_wait() {
            anyhow::bail!("spate exited ({exit}):\n{}", spate.log_tail());
        }
        if let Ok(s) = spate.status() {
            status = s;
        }
        let queued = json_u64(&status, "queued_recipients");
        let deferred = json_u64(&status, "totals.deferred");
        let (anon, file) = rss(pid);
        let settled = queued == report.injected_ok
            && deferred >= report.injected_ok
            && anon.abs_diff(last_anon) <= SETTLE_RSS_KIB_TOLERANCE;
        last_anon = anon;
        if settled {
            (report.loaded_rss_anon_kib, report.loaded_rss_file_kib) = (anon, file);
            break;
        }
        if settle_started.elapsed() > cfg.settle_timeout || crate::stop_requested() {
            (report.loaded_rss_anon_kib, report.loaded_rss_file_kib) = (anon, file);
            anyhow::bail!(
                "queue did not settle within {:?}: {queued} queued, {deferred} deferred of {}",
                cfg.settle_timeout,
                report.injected_ok
            );
        }
        std::thread::sleep(Duration::from_millis(SETTLE_POLL_MS));
    }
    report.settle_s = settle_started.elapsed().as_secs_f64();
    report.queued_recipients = json_u64(&status, "queued_recipients");
    report.deferred = json_u64(&status, "totals.deferred");
    report.delivered = json_u64(&status, "totals.delivered");
    report.bounced = json_u64(&status, "totals.bounced");
    report.spool_bytes_used = json_u64(&status, "spool.bytes_used");
    report.peak_rss_kib = probe::status_kib(pid, "VmHWM").unwrap_or(0);
    let n = report.queued_recipients.max(1) as f64;
    report.anon_bytes_per_recipient = report
        .loaded_rss_anon_kib
        .saturating_sub(report.idle_rss_anon_kib) as f64
        * 1024.0
        / n;
    report.file_bytes_per_recipient = report
        .loaded_rss_file_kib
        .saturating_sub(report.idle_rss_file_kib) as f64
        * 1024.0
        / n;
    report.loadavg_end = probe::loadavg();
    spate.guard.terminate(Duration::from_secs(60));
    Ok(report)
}

/// Arguments of `spate-bench memory`.
#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    /// Queued (deferred) recipients to hold, one per message.
    #[arg(long, default_value_t = 1_000_000)]
    pub recipients: u64,
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    #[arg(long, default_value_t = 20)]
    pub inject_connections: u64,
    #[arg(long, default_value_t = 1)]
    pub inject_threads: usize,
    #[arg(long, default_value = "target/release/spate")]
    pub spate_bin: PathBuf,
    #[arg(long, default_value = "30m", value_parser = crate::parse_duration)]
    pub settle_timeout: Duration,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// Prints the summary table (markdown).
pub fn print_report(r: &MemoryReport) {
    println!(
        "injected {} ok, {} failed in {:.1} s; settled in {:.1} s: {} queued, {} deferred, {} delivered, {} bounced",
        r.injected_ok,
        r.inject_failed,
        r.inject_s,
        r.settle_s,
        r.queued_recipients,
        r.deferred,
        r.delivered,
        r.bounced
    );
    println!(
        "| | idle | {} queued | per queued recipient |",
        r.queued_recipients
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| RssAnon | {} kB | {} kB | {:.0} bytes |",
        r.idle_rss_anon_kib, r.loaded_rss_anon_kib, r.anon_bytes_per_recipient
    );
    println!(
        "| RssFile | {} kB | {} kB | {:.0} bytes |",
        r.idle_rss_file_kib, r.loaded_rss_file_kib, r.file_bytes_per_recipient
    );
    println!(
        "VmHWM {} kB; spool used {} MB; load average {} -> {}",
        r.peak_rss_kib,
        r.spool_bytes_used / 1_000_000,
        r.loadavg_start,
        r.loadavg_end
    );
}

/// Runs `spate-bench memory`.
pub fn run(args: MemoryArgs) -> anyhow::Result<()> {
    crate::install_signal_watch()?;
    let report = run_memory(&MemoryConfig {
        recipients: args.recipients,
        size: args.size,
        inject_connections: args.inject_connections,
        inject_threads: args.inject_threads,
        spate_bin: args.spate_bin,
        settle_timeout: args.settle_timeout,
    })?;
    print_report(&report);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
