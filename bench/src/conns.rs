//! `spate-bench conns`: how many outbound connections one spate holds open
//! at once, and whether it still answers while it does.
//!
//! Owns the scenario: sink processes (each with its own descriptor limit)
//! listening on several 127.0.0.x addresses and holding every end-of-DATA
//! reply for `--hold`; spate (release) with a generated configuration (a
//! pool of vMTAs on distinct 127.0.213.x source IPs, one destination domain
//! per sink address, `max_smtp_out` = target / queues, spate's soft
//! descriptor limit lowered first so that raising it is part of the test);
//! 3 × N one-recipient messages (a queue opens a connection only while it
//! has fewer connections, busy ones included, than ready recipients, so the
//! backlog must exceed twice the cap, in every queue, for every slot to
//! fill; the pool's spread is not exact, hence 3; one transaction in
//! flight per connection, so each held message holds its own connection);
//! then, every
//! `SAMPLE_INTERVAL_MS`, spate's
//! `connections_out` gauge, its socket descriptors from `/proc`, its RSS,
//! an EHLO probe on its listener and a GET on its admin API. It ends when
//! the held replies are released and every message is delivered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::inject::{InjectConfig, run_inject};
use crate::probe::{self, SpateProcess, json_u64};
use crate::relay::ChildGuard;

/// Time between two samples.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;
/// First listen address octet of the sinks: 127.0.0.(10 + i).
const SINK_ADDR_FIRST_OCTET: u8 = 10;
/// The vMTAs' source IPs are 127.0.(this).(1 + i).
const VMTA_SUBNET_THIRD_OCTET: u8 = 213;
/// WARN/ERROR lines of spate's log kept in the report.
const LOG_EXCERPT_LINES_MAX: u64 = 5;
/// Messages injected per target connection (see the module comment).
pub const MESSAGES_PER_CONNECTION: u64 = 3;
/// Sink addresses and vMTAs are bounded by the last octet.
pub const ADDRS_MAX: usize = 200;

/// What to run.
#[derive(Debug, Clone)]
pub struct ConnsConfig {
    /// Concurrent outbound connections to reach.
    pub connections: u64,
    /// Sink processes; their addresses are spread round-robin.
    pub sink_processes: usize,
    /// Sink listen addresses (= destination domains).
    pub sink_addrs: usize,
    /// vMTAs in the pool, each on its own source IP.
    pub vmtas: usize,
    /// How long the sinks hold each end-of-DATA reply.
    pub hold: Duration,
    /// Injector connections into spate.
    pub inject_connections: u64,
    /// Lower spate's soft RLIMIT_NOFILE to this before exec.
    pub spate_soft_nofile: Option<u64>,
    /// Lower spate's hard RLIMIT_NOFILE to this (to run it out of descriptors).
    pub spate_hard_nofile: Option<u64>,
    pub spate_bin: PathBuf,
    /// The `spate-bench` binary that runs the sinks.
    pub bench_bin: PathBuf,
    /// Give up waiting for delivery this long after the hold ends.
    pub drain_timeout: Duration,
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// ESTABLISHED TCP connections from the vMTAs' source IPs (kernel view).
    pub established_out: u64,
    pub connections_out: u64,
    pub socket_fds: u64,
    pub fds: u64,
    pub rss_kib: u64,
    pub delivered: u64,
    pub ehlo_ms: Option<f64>,
    pub admin_ms: Option<f64>,
}

/// What the run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnsReport {
    pub target: u64,
    pub injected_ok: u64,
    pub inject_failed: u64,
    pub inject_s: f64,
    pub spate_nofile_soft: Option<u64>,
    /// Highest count of ESTABLISHED connections from the vMTAs' source IPs.
    pub peak_established_out: u64,
    /// Highest per-sample min(ESTABLISHED, `connections_out`): connections
    /// both the kernel and spate saw open at once. The pass criterion.
    pub peak_held: u64,
    pub peak_connections_out: u64,
    pub peak_socket_fds: u64,
    pub peak_fds: u64,
    /// From the start of injection to the first sample at the target.
    pub time_to_target_s: Option<f64>,
    pub rss_at_peak_kib: u64,
    pub peak_rss_kib: Option<u64>,
    pub ehlo_ok: u64,
    pub ehlo_failed: u64,
    pub ehlo_max_ms: f64,
    pub admin_ok: u64,
    pub admin_failed: u64,
    pub admin_max_ms: f64,
    pub probe_errors: Vec<String>,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub fd_exhausted_total: u64,
    /// Log lines of spate at WARN or ERROR, and how many were about descriptors.
    pub log_warnings: u64,
    pub log_fd_lines: u64,
    /// spate's open-files line and its first WARN/ERROR lines.
    pub log_excerpt: Vec<String>,
    pub sink_connections: u64,
    pub sink_session_errors: u64,
    pub elapsed_s: f64,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub samples: Vec<Sample>,
}

impl ConnsReport {
    /// The target was held, every probe answered, nothing was lost.
    pub fn passed(&self) -> bool {
        self.peak_held >= self.target
            && self.ehlo_failed == 0
            && self.admin_failed == 0
            && self.ehlo_ok > 0
            && self.delivered == self.injected_ok
            && self.injected_ok == self.target * MESSAGES_PER_CONNECTION
            && self.deferred == 0
            && self.bounced == 0
    }
}

fn sink_addrs(count: usize, port: u16) -> Vec<SocketAddr> {
    (0..count)
        .map(|i| {
            let octet = SINK_ADDR_FIRST_OCTET + u8::try_from(i).unwrap_or(0);
            SocketAddr::from(([127, 0, 0, octet], port))
        })
        .collect()
}

/// `max_smtp_out` of each of the sink_addrs × vmtas queues: the target
/// spread evenly, rounded up.
pub fn per_queue_max(cfg: &ConnsConfig) -> u64 {
    let queues = (cfg.sink_addrs * cfg.vmtas).max(1) as u64;
    cfg.connections.div_ceil(queues).max(1)
}

fn spate_config(cfg: &ConnsConfig, addrs: &[SocketAddr], dns: SocketAddr) -> String {
    let mut text = probe::config_head("conns", dns, "conns");
    text.push_str(&format!(
        r#"
[domain."*"]
max_smtp_out = {max}
starttls = "off"
retry_after = ["1h"]
connect_timeout = "30s"
data_timeout = "10m"
# One held message per connection: pipelined transactions would put
# several messages on one connection and open fewer.
max_transactions_in_flight = 1

"#,
        max = per_queue_max(cfg),
    ));
    let names: Vec<String> = (0..cfg.vmtas).map(|i| format!("\"c{i}\"")).collect();
    text.push_str(&format!("[pool.conns]\nvmtas = [{}]\n\n", names.join(", ")));
    for i in 0..cfg.vmtas {
        text.push_str(&format!(
            "[vmta.c{i}]\nsource_ip = \"127.0.{VMTA_SUBNET_THIRD_OCTET}.{}\"\nehlo = \"c{i}.conns.test\"\n\n",
            i + 1
        ));
    }
    for (i, addr) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "[domain.\"d{i}.conns.test\"]\nsmtp_hosts = [\"{addr}\"]\n\n"
        ));
    }
    text
}

fn start_sinks(
    cfg: &ConnsConfig,
    dir: &Path,
    addrs: &[SocketAddr],
) -> anyhow::Result<Vec<(ChildGuard, PathBuf)>> {
    let script = dir.join("hold.toml");
    std::fs::write(
        &script,
        format!("data_delay_ms = {}\n", cfg.hold.as_millis()),
    )?;
    let mut sinks = Vec::new();
    for p in 0..cfg.sink_processes {
        let mine: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % cfg.sink_processes == p)
            .map(|(_, a)| a.to_string())
            .collect();
        if mine.is_empty() {
            continue;
        }
        let json = dir.join(format!("sink{p}.json"));
        let log = dir.join(format!("sink{p}.log"));
        let child = Command::new(&cfg.bench_bin)
            .arg("sink")
            .arg("--listen")
            .arg(mine.join(","))
            .arg("--script")
            .arg(&script)
            .arg("--json-out")
            .arg(&json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", cfg.bench_bin.display()))?;
        let mut guard = ChildGuard {
            child,
            name: format!("sink {p}"),
        };
        for addr in &mine {
            crate::relay::wait_listening(addr.parse()?, &mut guard, &log)?;
        }
        sinks.push((guard, json));
    }
    Ok(sinks)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Takes one sample, probing the listener and the admin API.
fn sample(
    spate: &SpateProcess,
    sink_port: u16,
    started: Instant,
    report: &mut ConnsReport,
) -> Sample {
    let pid = spate.pid();
    let admin_started = Instant::now();
    let status = spate.status();
    let admin_ms = match &status {
        Ok(_) => {
            let t = ms(admin_started.elapsed());
            report.admin_ok += 1;
            report.admin_max_ms = report.admin_max_ms.max(t);
            Some(t)
        }
        Err(e) => {
            report.admin_failed += 1;
            report.probe_errors.push(format!("admin: {e:#}"));
            None
        }
    };
    // The kernel's figures right after spate's own, before the probe.
    let (fds, socket_fds) = probe::fd_counts(pid).unwrap_or((0, 0));
    let established_out =
        probe::established_from_loopback_24(VMTA_SUBNET_THIRD_OCTET, sink_port).unwrap_or(0);
    let rss_kib = probe::status_kib(pid, "VmRSS").unwrap_or(0);
    let ehlo_ms = match probe::smtp_ehlo(spate.listen) {
        Ok(d) => {
            report.ehlo_ok += 1;
            report.ehlo_max_ms = report.ehlo_max_ms.max(ms(d));
            Some(ms(d))
        }
        Err(e) => {
            report.ehlo_failed += 1;
            report.probe_errors.push(format!("ehlo: {e:#}"));
            None
        }
    };
    let status = status.unwrap_or_default();
    Sample {
        t_s: started.elapsed().as_secs_f64(),
        established_out,
        connections_out: json_u64(&status, "connections_out"),
        socket_fds,
        fds,
        rss_kib,
        delivered: json_u64(&status, "totals.delivered"),
        ehlo_ms,
        admin_ms,
    }
}

/// Runs the scenario.
pub fn run_conns(cfg: &ConnsConfig) -> anyhow::Result<ConnsReport> {
    anyhow::ensure!(
        (1..=ADDRS_MAX).contains(&cfg.sink_addrs) && (1..=ADDRS_MAX).contains(&cfg.vmtas),
        "--sink-addrs and --vmtas must be 1 to {ADDRS_MAX}"
    );
    anyhow::ensure!(cfg.sink_processes > 0, "--sink-processes must be > 0");
    probe::raise_own_nofile().context("raising this process's open-files limit")?;
    let mut report = ConnsReport {
        target: cfg.connections,
        loadavg_start: probe::loadavg(),
        ..ConnsReport::default()
    };
    let dir = tempfile::tempdir()?;
    let sink_port = crate::relay::free_port()?;
    let addrs = sink_addrs(cfg.sink_addrs, sink_port);
    let sinks = start_sinks(cfg, dir.path(), &addrs)?;
    let zone = crate::dns::Zone::parse("conns.test A 127.0.0.1\n")?;
    let dns = crate::dns::spawn("127.0.0.1:0".parse()?, zone)?;
    let config = spate_config(cfg, &addrs, dns.addr);
    let mut spate = probe::start_spate(
        &cfg.spate_bin,
        dir.path(),
        &config,
        cfg.spate_soft_nofile,
        cfg.spate_hard_nofile,
    )?;
    report.spate_nofile_soft = probe::nofile_soft(spate.pid());

    let started = Instant::now();
    let mut inject = InjectConfig::new(
        spate.listen,
        cfg.connections * MESSAGES_PER_CONNECTION,
        cfg.inject_connections,
    );
    inject.per_connection = 1000;
    inject.sizes = vec![1024];
    inject.domains = (0..cfg.sink_addrs)
        .map(|i| format!("d{i}.conns.test"))
        .collect();
    let injector = std::thread::Builder::new()
        .name("conns-inject".into())
        .spawn(move || run_inject(inject))?;

    // Sample until every message is delivered, or the hold plus the drain
    // timeout has passed since the injection ended.
    let mut inject_done: Option<Instant> = None;
    let mut injector = Some(injector);
    loop {
        let s = sample(&spate, sink_port, started, &mut report);
        let held = s.established_out.min(s.connections_out);
        report.peak_held = report.peak_held.max(held);
        if held >= cfg.connections && report.time_to_target_s.is_none() {
            report.time_to_target_s = Some(s.t_s);
        }
        if s.established_out > report.peak_established_out {
            report.peak_established_out = s.established_out;
            report.rss_at_peak_kib = s.rss_kib;
        }
        report.peak_socket_fds = report.peak_socket_fds.max(s.socket_fds);
        report.peak_connections_out = report.peak_connections_out.max(s.connections_out);
        report.peak_fds = report.peak_fds.max(s.fds);
        let delivered = s.delivered;
        report.samples.push(s);
        if injector
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            let r = injector
                .take()
                .context("injector")?
                .join()
                .map_err(|_| anyhow::anyhow!("injector thread panicked"))??;
            report.injected_ok = r.accepted;
            report.inject_failed = r.failed;
            report.inject_s = r.elapsed_s;
            inject_done = Some(Instant::now());
        }
        if inject_done.is_some() && delivered >= report.injected_ok {
            break;
        }
        if inject_done.is_some_and(|t| t.elapsed() > cfg.hold + cfg.drain_timeout)
            || crate::stop_requested()
        {
            break;
        }
        if let Ok(Some(status)) = spate.guard.child.try_wait() {
            anyhow::bail!("spate exited ({status}):\n{}", spate.log_tail());
        }
        std::thread::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS));
    }
    let status = spate.status().unwrap_or_default();
    report.delivered = json_u64(&status, "totals.delivered");
    report.deferred = json_u64(&status, "totals.deferred");
    report.bounced = json_u64(&status, "totals.bounced");
    if let Ok((200, body)) = probe::http_get(spate.admin, "/metrics", Some(probe::ADMIN_TOKEN)) {
        report.fd_exhausted_total = body
            .lines()
            .find_map(|l| l.strip_prefix("spate_fd_exhausted_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
    }
    report.peak_rss_kib = probe::status_kib(spate.pid(), "VmHWM");
    report.elapsed_s = started.elapsed().as_secs_f64();
    spate.guard.terminate(Duration::from_secs(30));
    let log = std::fs::read_to_string(&spate.log).unwrap_or_default();
    for line in log.lines() {
        if line.contains("open-files limit") {
            report.log_excerpt.push(line.to_string());
        }
        if line.contains("WARN") || line.contains("ERROR") {
            if report.log_warnings < LOG_EXCERPT_LINES_MAX {
                report.log_excerpt.push(line.to_string());
            }
            report.log_warnings += 1;
            if line.contains("file descriptors") || line.contains("open files") {
                report.log_fd_lines += 1;
            }
        }
    }
    for (mut guard, json) in sinks {
        guard.terminate(Duration::from_secs(10));
        let sink: serde_json::Value = std::fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        report.sink_connections += json_u64(&sink, "connections");
        report.sink_session_errors += json_u64(&sink, "session_errors");
    }
    report.loadavg_end = probe::loadavg();
    Ok(report)
}

/// Arguments of `spate-bench conns`.
#[derive(clap::Args, Debug)]
pub struct ConnsArgs {
    /// Concurrent outbound connections to reach (three times as many messages are injected).
    #[arg(long, default_value_t = 19_000)]
    pub connections: u64,
    #[arg(long, default_value_t = 2)]
    pub sink_processes: usize,
    /// Sink listen addresses 127.0.0.10.. (one destination domain each).
    #[arg(long, default_value_t = 5)]
    pub sink_addrs: usize,
    /// vMTAs in the pool, on source IPs 127.0.213.1..
    #[arg(long, default_value_t = 4)]
    pub vmtas: usize,
    /// How long the sinks hold each end-of-DATA reply (e.g. 60s).
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    pub hold: Duration,
    #[arg(long, default_value_t = 50)]
    pub inject_connections: u64,
    /// Lower spate's soft open-files limit to this before it starts (0 = leave it).
    #[arg(long, default_value_t = 1024)]
    pub spate_soft_nofile: u64,
    /// Lower spate's hard open-files limit to this (0 = leave it), to see it
    /// run out of descriptors with fewer connections.
    #[arg(long, default_value_t = 0)]
    pub spate_hard_nofile: u64,
    #[arg(long, default_value = "target/release/spate")]
    pub spate_bin: PathBuf,
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    pub drain_timeout: Duration,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// Prints the summary.
pub fn print_report(r: &ConnsReport) {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    println!("target connections      {}", r.target);
    println!(
        "spate soft nofile       {}",
        r.spate_nofile_soft.map_or("-".into(), |v| v.to_string())
    );
    println!(
        "injected                {} ok, {} failed in {:.1} s",
        r.injected_ok, r.inject_failed, r.inject_s
    );
    println!("peak held (min of both) {}", r.peak_held);
    println!("peak established out    {}", r.peak_established_out);
    println!("peak socket fds (spate) {}", r.peak_socket_fds);
    println!("peak connections_out    {}", r.peak_connections_out);
    println!("peak fds (spate)        {}", r.peak_fds);
    println!("time to target          {} s", opt(r.time_to_target_s));
    println!(
        "RSS at peak / VmHWM     {} MiB / {} MiB",
        r.rss_at_peak_kib / 1024,
        r.peak_rss_kib
            .map_or("-".into(), |k| (k / 1024).to_string())
    );
    println!(
        "EHLO probes             {} ok, {} failed, max {:.1} ms",
        r.ehlo_ok, r.ehlo_failed, r.ehlo_max_ms
    );
    println!(
        "admin probes            {} ok, {} failed, max {:.1} ms",
        r.admin_ok, r.admin_failed, r.admin_max_ms
    );
    println!(
        "delivered / deferred / bounced  {} / {} / {}",
        r.delivered, r.deferred, r.bounced
    );
    println!("fd exhaustion events    {}", r.fd_exhausted_total);
    println!(
        "spate log WARN/ERROR    {} ({} about descriptors)",
        r.log_warnings, r.log_fd_lines
    );
    println!(
        "sink connections        {} ({} session errors)",
        r.sink_connections, r.sink_session_errors
    );
    println!("elapsed                 {:.1} s", r.elapsed_s);
    println!(
        "load average            {} -> {}",
        r.loadavg_start, r.loadavg_end
    );
    for line in &r.log_excerpt {
        println!("  spate log: {line}");
    }
    for e in r.probe_errors.iter().take(10) {
        println!("  probe error: {e}");
    }
    println!(
        "result                  {}",
        if r.passed() { "PASS" } else { "FAIL" }
    );
}

/// Runs `spate-bench conns`.
pub fn run(args: ConnsArgs) -> anyhow::Result<()> {
    crate::install_signal_watch()?;
    let cfg = ConnsConfig {
        connections: args.connections,
        sink_processes: args.sink_processes,
        sink_addrs: args.sink_addrs,
        vmtas: args.vmtas,
        hold: args.hold,
        inject_connections: args.inject_connections,
        spate_soft_nofile: (args.spate_soft_nofile > 0).then_some(args.spate_soft_nofile),
        spate_hard_nofile: (args.spate_hard_nofile > 0).then_some(args.spate_hard_nofile),
        spate_bin: args.spate_bin,
        bench_bin: std::env::current_exe()?,
        drain_timeout: args.drain_timeout,
    };
    let report = run_conns(&cfg)?;
    print_report(&report);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(
        report.passed(),
        "the run did not meet its target (see above)"
    );
    Ok(())
}
