//! The scenario runner behind `spate-bench relay`.
//!
//! Owns the legs of a comparison run: `raw` (injector straight into the sink),
//! `spate` (dns + sink + the release `spate` binary with a generated config +
//! injector) and `postfix` (a private Postfix instance under a temp dir
//! relaying to the same kind of sink). Each leg gets a fresh sink, the same
//! load, and yields one [`LegResult`]: end-to-end messages/s (first injection
//! until the sink has every accepted message), ack and end-to-end latency, CPU
//! seconds, peak RSS and (sampled) peak anonymous memory of the MTA. Every
//! child process is held by a guard that kills it on drop, so errors and early
//! returns clean up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::inject::{InjectConfig, InjectReport, run_inject};
use crate::report::Percentiles;
use crate::sink::{SinkConfig, SinkHandle};

mod cpu;
mod destinations;
mod postfix;

pub use cpu::{CpuReading, CpuSpent, clock_ticks_per_s, cpu_seconds};
pub use destinations::{
    DOMAINS_MAX, counts_recipients, delivered_by_recipients, destination_domains, destination_zone,
    ensure_destinations, expected_recipients, sink_host_name,
};
use destinations::{destinations_line, fill_sinks, sink_listen_addresses};

pub use postfix::{
    Postfix, ensure_postfix_installed, run_postfix, run_postfix_in, run_smtp_sink, run_smtp_source,
    start_postfix,
};

/// How long an MTA may take to start listening.
pub const MTA_START_TIMEOUT_MS: u64 = 15_000;
/// Drain time allowed after injection, on top of 1 ms per message.
pub const DRAIN_TIMEOUT_MS_BASE: u64 = 30_000;

/// One row of the result table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LegResult {
    pub name: String,
    pub messages: u64,
    pub injected_ok: u64,
    /// Messages at the sink. With several recipients over several
    /// destinations (counted in recipients, see [`counts_recipients`]): the
    /// load's accepted messages once all their recipients arrived, however
    /// the MTA split them (`per_sink_messages` has the sink's transactions;
    /// a leg that did not complete gives the recipients that arrived in
    /// whole messages' worth, an estimate, and an error).
    pub delivered: u64,
    /// Recipients the sink accepted over the delivered messages.
    pub delivered_recipients: u64,
    pub elapsed_s: f64,
    /// Delivered messages per second, first injection to last delivery.
    pub end_to_end_msgs_per_s: f64,
    pub injection_msgs_per_s: f64,
    pub ack_latency: Percentiles,
    pub e2e_latency: Percentiles,
    /// CPU seconds of the MTA's process tree over the leg (first injection
    /// to last delivery; its start-up not included).
    pub cpu_s: Option<f64>,
    pub cpu_ms_per_msg: Option<f64>,
    /// The kernel's part of `cpu_ms_per_msg` (system time: the MTA's
    /// sockets, file writes, fdatasyncs).
    pub cpu_kernel_ms_per_msg: Option<f64>,
    /// VmHWM of the MTA's main process: file pages included, so for spate
    /// the spool pages mapped for delivery (None for Postfix, whose
    /// processes peak at different times).
    pub peak_rss_kib: Option<u64>,
    /// Highest summed RssAnon of the MTA's process tree while the leg ran
    /// (sampled; see [`AnonPeak`]): the memory it allocated.
    pub peak_anon_kib: Option<u64>,
    pub injector_failures: std::collections::BTreeMap<String, u64>,
    pub error: Option<String>,
    /// Which round of `--repeat` (1-based).
    pub round: u32,
    /// The load's label in `--suite` runs (empty otherwise).
    pub load: String,
    /// spate's group commit over the leg, from its metrics: fdatasyncs,
    /// their mean latency, and the mean time from a new message's record
    /// queued to its commit (the spool's part of the 250's latency).
    pub spool: Option<SpoolFigures>,
    /// Queries the leg's test DNS server answered (spate resolves the
    /// sink's name there; None for legs without one).
    pub dns_queries: Option<u64>,
    /// With `--tls`: the sink's sessions that ran STARTTLS (the MTA's
    /// deliveries, or the injector's connections for raw).
    pub sink_tls_sessions: Option<u64>,
    /// With several destinations (`--domains`): the messages each sink
    /// address received (address, messages), in the destinations' order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_sink_messages: Vec<(String, u64)>,
    /// With several destinations: the recipient domains each sink address
    /// received, in the same order (each should see its own only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_sink_domains: Vec<(String, Vec<String>)>,
    /// Connections the sink accepted during the leg: the MTA's delivery
    /// connections (the injector's, for raw); None for the legs that
    /// deliver to no sink of ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_connections: Option<u64>,
    /// The load's destination domains (`--domains`).
    pub domains: u32,
    /// The whole machine while the leg ran (injection to the last delivery):
    /// the average number of busy CPUs, and the CPU time of every process
    /// and of the kernel per delivered message (see `cpu.rs`).
    pub machine_busy_cores: Option<f64>,
    pub machine_cpu_ms_per_msg: Option<f64>,
    /// The harness's own part of that: injector, sink and DNS server.
    pub harness_cpu_ms_per_msg: Option<f64>,
}

impl LegResult {
    /// Fills the machine figures from what the leg spent over `messages`.
    fn set_machine_cpu(&mut self, spent: CpuSpent, messages: u64) {
        let per_msg = |s: f64| (messages > 0).then(|| s * 1000.0 / messages as f64);
        self.machine_busy_cores = spent.busy_cores;
        self.machine_cpu_ms_per_msg = spent.machine_s.and_then(per_msg);
        self.harness_cpu_ms_per_msg = per_msg(spent.harness_s);
    }
}

/// See [`LegResult::spool`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpoolFigures {
    pub fsyncs: u64,
    pub fsync_mean_ms: f64,
    pub commits: u64,
    pub commit_mean_ms: f64,
    /// Segments made ahead of need, by how: from a finished segment's file,
    /// new and zero-filled, new and only allocated.
    pub segments_recycled: u64,
    pub segments_zero_filled: u64,
    pub segments_allocated: u64,
}

/// Reads [`SpoolFigures`] from spate's `/metrics` (None if unavailable).
fn spool_figures(admin: SocketAddr, token: &str) -> Option<SpoolFigures> {
    let (code, body) = crate::probe::http_request(
        admin,
        "GET",
        "/metrics",
        Some(token),
        Duration::from_secs(5),
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    let value = |name: &str| {
        body.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    let mean_ms = |sum: f64, n: f64| if n > 0.0 { sum * 1000.0 / n } else { 0.0 };
    let fsyncs = value("spate_spool_fsync_seconds_count")?;
    let commits = value("spate_spool_commit_seconds_count")?;
    let prepared = |fill: &str| {
        value(&format!(
            "spate_spool_segments_prepared_total{{fill=\"{fill}\"}}"
        ))
        .unwrap_or(0.0) as u64
    };
    Some(SpoolFigures {
        fsyncs: fsyncs as u64,
        fsync_mean_ms: mean_ms(value("spate_spool_fsync_seconds_sum")?, fsyncs),
        commits: commits as u64,
        commit_mean_ms: mean_ms(value("spate_spool_commit_seconds_sum")?, commits),
        segments_recycled: prepared("recycled"),
        segments_zero_filled: prepared("zeros"),
        segments_allocated: prepared("allocated"),
    })
}

/// The load each leg receives.
#[derive(Debug, Clone)]
pub struct Load {
    pub messages: u64,
    pub connections: u64,
    pub per_connection: u64,
    pub size: usize,
    /// Injector worker threads (each its own runtime).
    pub inject_threads: usize,
    /// Messages per second over all connections; None = as fast as possible
    /// (latency at a given load, e.g. half the peak rate).
    pub rate: Option<f64>,
    /// TLS on every hop: the injector runs STARTTLS into the MTA (or the
    /// sink, for raw), and the MTA into the sink. See [`leg_certificate`].
    pub tls: bool,
    /// Recipients per message, taking turns over the destinations (see
    /// [`counts_recipients`] for how a leg counts them over several).
    pub rcpts: u32,
    /// Destination domains, each with its own MX host (an address of the
    /// sink's); recipients take turns over them. See [`destination_domains`].
    pub domains: u32,
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Spawns `command` with no standard input or output, as `name`.
    pub fn spawn_quiet(command: &mut Command, name: &str) -> anyhow::Result<ChildGuard> {
        Self::spawn_with(command, name, Stdio::null(), Stdio::null())
    }

    /// Spawns `command` with its output and errors in the file `log`.
    pub fn spawn_logged(
        command: &mut Command,
        name: &str,
        log: &Path,
    ) -> anyhow::Result<ChildGuard> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Self::spawn_with(command, name, file.try_clone()?.into(), file.into())
    }

    /// Errors name the program as given (a path, or a name searched in `PATH`).
    fn spawn_with(
        command: &mut Command,
        name: &str,
        out: Stdio,
        err: Stdio,
    ) -> anyhow::Result<ChildGuard> {
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
        Ok(ChildGuard {
            child,
            name: name.into(),
        })
    }

    /// Sends SIGTERM and waits up to `grace` before SIGKILL.
    pub fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and still own (not reaped yet).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// A free port on 127.0.0.1 for a server to bind, never one this process
/// was given before (see [`spate::util::port::free_loopback_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    spate::util::port::free_loopback_port().map_err(anyhow::Error::msg)
}

pub fn wait_listening(addr: SocketAddr, child: &mut ChildGuard, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(MTA_START_TIMEOUT_MS);
    loop {
        if let Ok(Some(status)) = child.child.try_wait() {
            bail!(
                "{} exited during start-up ({status}); log {}:\n{}",
                child.name,
                log.display(),
                tail(log)
            );
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline || crate::stop_requested() {
            bail!(
                "{} did not listen on {addr} within {MTA_START_TIMEOUT_MS} ms; log {}:\n{}",
                child.name,
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Every process under `root` (itself included), from one walk of `/proc`:
/// pid and the fields of `/proc/<pid>/stat` after the command name.
fn proc_tree(root: u32) -> Option<Vec<(u32, Vec<String>)>> {
    let mut parents = std::collections::HashMap::new();
    let mut stats = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the ")" closing the command name: state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
        let ppid = f.get(1).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        parents.insert(pid, ppid);
        stats.insert(pid, f);
    }
    stats.get(&root)?;
    let under = |pid: u32| {
        let mut p = pid;
        for _ in 0..64 {
            if p == root {
                return true;
            }
            match parents.get(&p) {
                Some(pp) if *pp != 0 => p = *pp,
                _ => return false,
            }
        }
        false
    };
    Some(stats.into_iter().filter(|(pid, _)| under(*pid)).collect())
}

/// The CPU an MTA's process tree spends over a leg's window (from the first
/// injection to the last delivery), not since it started: its start-up
/// (spool, listeners, a Postfix's first processes) is not the load's.
struct MtaCpu {
    pid: Option<u32>,
    at_start: Option<TreeCpu>,
}

impl MtaCpu {
    fn start(pid: Option<u32>) -> Self {
        MtaCpu {
            pid,
            at_start: pid.and_then(tree_cpu),
        }
    }

    /// CPU seconds since [`Self::start`], and the kernel's part of them;
    /// None without a process to read.
    fn spent(&self) -> Option<TreeCpu> {
        let now = self.pid.and_then(tree_cpu)?;
        let start = self.at_start?;
        Some(TreeCpu {
            total_s: (now.total_s - start.total_s).max(0.0),
            kernel_s: (now.kernel_s - start.kernel_s).max(0.0),
        })
    }
}

/// A process tree's CPU seconds (children reaped included): user and
/// system time, and the system (kernel) part alone: for an MTA on
/// loopback, its sockets, file writes and fdatasyncs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeCpu {
    pub total_s: f64,
    pub kernel_s: f64,
}

/// [`TreeCpu`] of the tree under `root`.
pub fn tree_cpu(root: u32) -> Option<TreeCpu> {
    let ticks = clock_ticks_per_s();
    // utime(11) stime(12) cutime(13) cstime(14), counted from the state field.
    let (user, kernel) = proc_tree(root)?
        .iter()
        .map(|(_, f)| {
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (num(11) + num(13), num(12) + num(14))
        })
        .fold((0.0, 0.0), |(u, k), (du, dk)| (u + du, k + dk));
    Some(TreeCpu {
        total_s: (user + kernel) / ticks,
        kernel_s: kernel / ticks,
    })
}

/// Summed `RssAnon` (heap, stacks: what the process allocated) of a process
/// tree, in KiB. Unlike VmHWM it leaves out file pages, which for spate are
/// mostly spool segments mapped for delivery: the kernel drops those under
/// memory pressure, so they do not size a machine.
pub fn tree_anon_kib(root: u32) -> Option<u64> {
    let tree = proc_tree(root)?;
    Some(
        tree.iter()
            .filter_map(|(pid, _)| crate::probe::status_kib(*pid, "RssAnon"))
            .sum(),
    )
}

/// How often [`AnonPeak`] samples.
const ANON_SAMPLE_MS: u64 = 200;

/// The highest [`tree_anon_kib`] seen while a leg runs, sampled every
/// [`ANON_SAMPLE_MS`] on a thread of its own (the kernel keeps no peak of
/// anonymous memory), so a spike shorter than that can be missed.
pub struct AnonPeak {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl AnonPeak {
    pub fn start(root: u32) -> AnonPeak {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut peak = tree_anon_kib(root);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(ANON_SAMPLE_MS))
            {
                peak = peak.max(tree_anon_kib(root));
            }
            peak.max(tree_anon_kib(root))
        });
        AnonPeak { stop, thread }
    }

    pub fn finish(self) -> Option<u64> {
        let _ = self.stop.send(());
        self.thread.join().ok().flatten()
    }
}

/// Peak resident set (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The injector's configuration for `load` into `to`; with `load.tls`, its
/// STARTTLS checks that the server presents `tls` (the leg's certificate,
/// for `localhost`) when given.
fn inject_config(
    to: SocketAddr,
    load: &Load,
    tls: Option<&LegCertificate>,
) -> anyhow::Result<InjectConfig> {
    let mut cfg = InjectConfig::new(to, load.messages, load.connections);
    cfg.per_connection = load.per_connection;
    cfg.sizes = vec![load.size];
    cfg.threads = load.inject_threads;
    cfg.rate = load.rate;
    cfg.rcpts = load.rcpts;
    cfg.domains = destination_domains(load.domains);
    if load.tls {
        // Every leg's server presents the leg's certificate (spate, Postfix,
        // the sink, through the forwarder too): a wrong one fails the leg.
        let ca = tls.map(|t| t.cert.as_path());
        cfg.starttls = Some(crate::inject::StartTls::new(ca, "localhost")?);
    }
    Ok(cfg)
}

/// Injects, then waits for the sink to hold every accepted message (every
/// recipient, where [`counts_recipients`]).
fn inject_and_drain(
    name: &str,
    to: SocketAddr,
    sink: &SinkHandle,
    load: &Load,
    tls: Option<&LegCertificate>,
    mta_pid: Option<u32>,
) -> anyhow::Result<LegResult> {
    let started = Instant::now();
    let cpu = CpuReading::now();
    let mta_cpu = MtaCpu::start(mta_pid);
    let anon = mta_pid.map(AnonPeak::start);
    let inject: InjectReport = run_inject(inject_config(to, load, tls)?)?;
    // Recipients over several destinations: an MTA makes a transaction per
    // destination, so the sink's messages are not the load's; its
    // recipients are.
    let by_recipients = counts_recipients(load.domains, load.rcpts);
    let per_message = if by_recipients {
        u64::from(load.rcpts)
    } else {
        1
    };
    let drain = Duration::from_millis(DRAIN_TIMEOUT_MS_BASE + load.messages * per_message);
    let refused_recipients: u64 = inject.refused_recipients.values().sum();
    let expected_recipients = expected_recipients(inject.accepted, load.rcpts, refused_recipients);
    let complete = if by_recipients {
        sink.wait_for_recipients(expected_recipients, drain)
    } else {
        sink.wait_for_messages(inject.accepted, drain)
    };
    let spent = cpu.spent();
    let peak_anon_kib = anon.and_then(AnonPeak::finish);
    let refused = refused_error(&inject, load);
    let sink_report = sink.report();
    let sink_tls_sessions = load.tls.then_some(sink_report.tls_sessions);
    // With several destinations: what each sink address received, in the
    // order of the destinations (absent ones received nothing).
    let (per_sink_messages, per_sink_domains) = if sink.addrs.len() > 1 {
        sink.addrs
            .iter()
            .map(|a| {
                let key = a.to_string();
                let messages = sink_report.per_listener.get(&key).map_or(0, |c| c.messages);
                let domains = sink_report.per_listener_domains.get(&key);
                let domains = domains.into_iter().flatten().cloned().collect();
                ((key.clone(), messages), (key, domains))
            })
            .unzip()
    } else {
        (Vec::new(), Vec::new())
    };
    let elapsed = match sink_report.last_message_unix_us {
        Some(last) if complete => last.saturating_sub(inject.first_send_unix_us) as f64 / 1e6,
        _ => started.elapsed().as_secs_f64(),
    };
    let mta_spent = mta_cpu.spent();
    let delivered_recipients = sink_report.total.recipients;
    let delivered = if by_recipients {
        delivered_by_recipients(complete, inject.accepted, delivered_recipients, load.rcpts)
    } else {
        sink_report.total.messages
    };
    let mut result = LegResult {
        name: name.into(),
        messages: load.messages,
        injected_ok: inject.accepted,
        delivered,
        delivered_recipients,
        elapsed_s: elapsed,
        end_to_end_msgs_per_s: if elapsed > 0.0 {
            delivered as f64 / elapsed
        } else {
            0.0
        },
        injection_msgs_per_s: inject.messages_per_s,
        ack_latency: inject.ack_latency,
        e2e_latency: sink_report.e2e_latency,
        cpu_s: mta_spent.map(|c| c.total_s),
        cpu_ms_per_msg: per_msg_ms(mta_spent.map(|c| c.total_s), delivered),
        cpu_kernel_ms_per_msg: per_msg_ms(mta_spent.map(|c| c.kernel_s), delivered),
        peak_rss_kib: mta_pid.and_then(peak_rss_kib),
        peak_anon_kib,
        injector_failures: inject.failures,
        error: None,
        round: 1,
        spool: None,
        dns_queries: None,
        sink_tls_sessions,
        per_sink_messages,
        per_sink_domains,
        sink_connections: Some(sink_report.connections),
        domains: load.domains,
        load: String::new(),
        ..LegResult::default()
    };
    result.set_machine_cpu(spent, delivered);
    if !complete {
        result.error = Some(if by_recipients {
            format!(
                "sink holds {delivered_recipients} of {expected_recipients} accepted recipients \
                 after {drain:?}"
            )
        } else {
            format!(
                "sink holds {delivered} of {} accepted messages after {drain:?}",
                inject.accepted
            )
        });
    }
    result.error = refused.or(result.error);
    Ok(result)
}

/// A leg's error when messages of the load were not accepted: every MTA and
/// sink here accepts all, so a refusal or a failed connection (a
/// certificate the injector refused, say) makes the row no measurement.
fn refused_error(inject: &InjectReport, load: &Load) -> Option<String> {
    (inject.accepted < load.messages).then(|| {
        format!(
            "{} of {} messages were not accepted (the failures are listed under the row)",
            load.messages - inject.accepted,
            load.messages
        )
    })
}

/// A sink accepting everything, offering STARTTLS with `tls`, with one
/// address per destination of `load` (127.0.0.1 for one; 127.0.0.101 and
/// on for several), each on a port of its own.
pub fn start_sink(tls: Option<&LegCertificate>, load: &Load) -> anyhow::Result<SinkHandle> {
    ensure_destinations(load.domains)?;
    let mut config = SinkConfig::accept_all("127.0.0.1:0".parse()?);
    config.listen = sink_listen_addresses(load.domains);
    if let Some(t) = tls {
        config.tls = Some(crate::sink::tls_config(&t.cert, &t.key)?);
    }
    crate::sink::spawn(config)
}

/// A self-signed certificate for `localhost` made for one `--tls` leg, in a
/// directory of its own (removed with it) that every user may read: Postfix's
/// daemons read the files as Postfix's user.
pub struct LegCertificate {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The leg's certificate with `load.tls`; None (and nothing made) without.
pub fn leg_certificate(load: &Load) -> anyhow::Result<Option<LegCertificate>> {
    if !load.tls {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("spate-bench-tls")
        .tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .context("making the run's TLS certificate")?;
    let cert = dir.path().join("tls-cert.pem");
    let key = dir.path().join("tls-key.pem");
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    Ok(Some(LegCertificate {
        _dir: dir,
        cert,
        key,
    }))
}

/// The raw pipeline: injector straight into the sink.
pub fn run_raw(load: &Load) -> anyhow::Result<LegResult> {
    let tls = leg_certificate(load)?;
    let sink = start_sink(tls.as_ref(), load)?;
    let to = *sink.addrs.first().context("sink has no address")?;
    inject_and_drain("raw (inject -> sink)", to, &sink, load, tls.as_ref(), None)
}

/// The forwarder leg: injector into `bench forward` (its own process, two
/// threads; `bench` is the spate-bench binary), which copies every byte on
/// to the sink and back: a reference for a relay's cost per byte (see
/// [`crate::forward`]).
pub fn run_forward(load: &Load, bench: &Path) -> anyhow::Result<LegResult> {
    run_forwarder(load, bench, None, false)
}

/// [`run_forward`] with the forwarder writing what clients send to files
/// (`spate-bench forward --write-dir`, with `--direct` when `direct`) in a
/// directory made under `work_dir` (the system temp dir without one: where
/// spate's spool goes).
pub fn run_forward_write(
    load: &Load,
    bench: &Path,
    work_dir: Option<&Path>,
    direct: bool,
) -> anyhow::Result<LegResult> {
    let mut files = tempfile::Builder::new();
    files.prefix("spate-bench-forward-files");
    let files = match work_dir {
        Some(dir) => files.tempdir_in(dir),
        None => files.tempdir(),
    }
    .context("making the forwarder's file directory")?;
    run_forwarder(load, bench, Some(files.path()), direct)
}

fn run_forwarder(
    load: &Load,
    bench: &Path,
    write_dir: Option<&Path>,
    direct: bool,
) -> anyhow::Result<LegResult> {
    let tls = leg_certificate(load)?;
    let sink = start_sink(tls.as_ref(), load)?;
    let to = *sink.addrs.first().context("sink has no address")?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut args = vec![
        "--listen".to_string(),
        listen.to_string(),
        "--to".to_string(),
        to.to_string(),
    ];
    if let Some(dir) = write_dir {
        args.push("--write-dir".into());
        args.push(dir.display().to_string());
        if direct {
            args.push("--direct".into());
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("spate-bench-forward")
        .tempdir()?;
    let log = dir.path().join("forward.log");
    let mut guard = ChildGuard::spawn_logged(
        Command::new(bench).arg("forward").args(&args),
        "spate-bench forward",
        &log,
    )?;
    wait_listening(listen, &mut guard, &log)?;
    let pid = guard.child.id();
    let name = match (write_dir, direct) {
        (None, _) => FORWARD_LEG,
        (Some(_), false) => FORWARD_WRITE_LEG,
        (Some(_), true) => FORWARD_DIRECT_LEG,
    };
    let result = inject_and_drain(name, listen, &sink, load, tls.as_ref(), Some(pid));
    guard.terminate(Duration::from_secs(2));
    result
}

/// The forwarder leg's name in tables and JSON.
pub const FORWARD_LEG: &str = "forward (TCP forwarder)";

/// The writing forwarder's leg (`--compare forward-write`).
pub const FORWARD_WRITE_LEG: &str = "forward-write";

/// The writing forwarder with O_DIRECT (`--compare forward-direct`).
pub const FORWARD_DIRECT_LEG: &str = "forward-direct";

/// Writes spate's configuration for one run.
pub fn spate_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    dns: SocketAddr,
    sinks: &[SocketAddr],
) -> String {
    let mut text = format!(
        r#"# generated by spate-bench relay
hostname = "spate.bench.test"

[spool]
path = "{spool}"
sync = "group"

[admin]
listen = "{admin}"
token_file = "{token}"

[dns]
nameservers = ["{dns}"]
timeout = "2s"

[[listener]]
address = "{listen}"
# The injector is one client address with up to a few hundred connections.
max_connections_per_ip = 2000

[[source]]
networks = ["127.0.0.0/8"]
allow_relaying = true
default_vmta = "bench"

[vmta.bench]
source_ip = "127.0.0.1"
ehlo = "spate.bench.test"

[domain."*"]
max_smtp_out = 20
starttls = "off"

# By name: spate resolves it with the test DNS server above (whose zone holds
# the name with the sink's address), as it would resolve a real MX host.
"#,
        spool = dir.join("spool").display(),
        token = dir.join("admin.token").display(),
    );
    let domains = destination_domains(sinks.len() as u32);
    for (i, (domain, sink)) in domains.iter().zip(sinks).enumerate() {
        text.push_str(&format!(
            "[domain.\"{domain}\"]\nsmtp_hosts = [\"{}:{}\"]\n",
            sink_host_name(i, sinks.len()),
            sink.port()
        ));
    }
    text
}

/// The generated configuration with TLS on both hops: the listener offers
/// STARTTLS with `cert` and `key`, and deliveries use it when the sink offers
/// it (`starttls = "opportunistic"`, not checking the certificate).
fn with_tls(config: &str, cert: &Path, key: &Path) -> anyhow::Result<String> {
    let listener = "max_connections_per_ip = 2000\n";
    let outbound = "starttls = \"off\"\n";
    anyhow::ensure!(
        config.contains(listener) && config.contains(outbound),
        "the generated configuration changed: TLS cannot be added"
    );
    Ok(config
        .replacen(
            listener,
            &format!(
                "{listener}tls_cert = {:?}\ntls_key = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
            1,
        )
        .replacen(outbound, "starttls = \"opportunistic\"\n", 1))
}

/// The host name the generated configuration routes `example.test` to; the
/// relay's test DNS server answers its A (or AAAA) record with the sink's IP.
pub const SINK_NAME: &str = "sink.example.test";

/// Refuses a configuration that could send traffic off loopback: every
/// listener, the admin API, vMTA source IPs and `smtp_hosts` IPs must be
/// loopback, and the DNS servers must be given and each be `test_dns` (the
/// leg's own server; a loopback resolver such as systemd-resolved's would
/// forward to the real DNS, and so would the system resolver). Host names
/// are then answered from the test zone only. Every problem is listed.
pub fn ensure_loopback_config(
    config: &spate::config::Config,
    test_dns: SocketAddr,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut check = |what: String, ip: std::net::IpAddr| {
        if !ip.is_loopback() {
            problems.push(format!("{what} {ip}"));
        }
    };
    for l in &config.listeners {
        check("listener".into(), l.address.ip());
    }
    check("admin listen".into(), config.admin.listen.ip());
    for v in config.vmtas.values() {
        check(format!("vmta.{} source_ip", v.name), v.source_ip);
    }
    let domain_tables = config
        .domains
        .iter()
        .map(|(d, s)| (format!("domain.{d:?}"), s))
        .chain(config.vmtas.values().flat_map(|v| {
            v.domains
                .iter()
                .map(move |(d, s)| (format!("vmta.{}.domain.{d:?}", v.name), s))
        }));
    for (table, settings) in domain_tables {
        for host in settings.smtp_hosts.iter().flatten() {
            if let Some(ip) = host.ip {
                check(format!("{table} smtp_hosts"), ip);
            }
        }
    }
    for ns in &config.dns.nameservers {
        if *ns != test_dns {
            problems.push(format!(
                "dns nameserver {ns} is not the relay's test server {test_dns} (use \"{{dns}}\")"
            ));
        }
    }
    if config.dns.nameservers.is_empty() {
        problems.push(
            "no [dns] nameservers: the system resolver would query the real DNS (use \"{dns}\")"
                .into(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the configuration reaches beyond loopback (pass --allow-remote to run it anyway): {}",
            problems.join("; ")
        )
    }
}

/// How the spate leg runs spate.
#[derive(Debug, Clone, Copy)]
pub struct SpateLeg<'a> {
    pub bin: &'a Path,
    /// A configuration template (see [`RelayArgs::config`]).
    pub config: Option<&'a Path>,
    pub pause_delivery: bool,
    pub allow_remote: bool,
    /// Where the run's directory (spool, configuration, log) is made: the
    /// file system whose disk is measured. None: the system temp dir.
    pub work_dir: Option<&'a Path>,
}

impl<'a> SpateLeg<'a> {
    /// The generated configuration, delivery on, in the system temp dir.
    pub fn new(bin: &'a Path) -> Self {
        SpateLeg {
            bin,
            config: None,
            pause_delivery: false,
            allow_remote: false,
            work_dir: None,
        }
    }
}

/// The spate leg.
pub fn run_spate(load: &Load, leg: &SpateLeg<'_>) -> anyhow::Result<LegResult> {
    let SpateLeg {
        bin: spate_bin,
        config,
        pause_delivery,
        allow_remote,
        work_dir,
    } = *leg;
    anyhow::ensure!(
        spate_bin.exists(),
        "spate binary {} not found (cargo build --release -p spate)",
        spate_bin.display()
    );
    let parent = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let dir = tempfile::Builder::new()
        .prefix("spate-bench-relay")
        .tempdir_in(&parent)
        .with_context(|| format!("making a run directory in {}", parent.display()))?;
    let tls = leg_certificate(load)?;
    let sink = start_sink(tls.as_ref(), load)?;
    let zone = crate::dns::Zone::parse(&destination_zone(&sink.addrs))?;
    let dns = crate::dns::spawn("127.0.0.1:0".parse()?, zone)?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::write(dir.path().join("admin.token"), "spate-bench-token\n")?;
    // The injector checks spate's certificate when spate is known to
    // present the leg's: always with the generated configuration, and with
    // a template that names it ({tls_cert}); otherwise it only encrypts.
    let mut checked = tls.as_ref();
    let text = match config {
        // A template: placeholders are filled with this run's addresses.
        Some(p) => {
            let template =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            if !template.contains("{tls_cert}") {
                checked = None;
            }
            let (cert, key) = match &tls {
                Some(t) => (t.cert.display().to_string(), t.key.display().to_string()),
                None => Default::default(),
            };
            fill_sinks(template, &sink.addrs)
                .replace("{tls_cert}", &cert)
                .replace("{tls_key}", &key)
                .replace("{listen}", &listen.to_string())
                .replace("{admin}", &admin.to_string())
                .replace("{dns}", &dns.addr.to_string())
                .replace("{dir}", &dir.path().display().to_string())
        }
        None => {
            let text = spate_config(dir.path(), listen, admin, dns.addr, &sink.addrs);
            match &tls {
                Some(t) => with_tls(&text, &t.cert, &t.key)?,
                None => text,
            }
        }
    };
    let config_path = dir.path().join("spate.toml");
    std::fs::write(&config_path, text)?;
    if config.is_some() {
        let parsed = spate::config::load(Some(&config_path))
            .map_err(|e| anyhow::anyhow!("the --config template, filled in: {e}"))?;
        if !allow_remote {
            ensure_loopback_config(&parsed, dns.addr)?;
        }
    }
    let log = dir.path().join("spate.log");
    let mut guard = ChildGuard::spawn_logged(
        Command::new(spate_bin)
            .args(["run", "--config"])
            .arg(&config_path),
        "spate",
        &log,
    )?;
    wait_listening(listen, &mut guard, &log).context("spate leg: spate did not start")?;
    let pid = Some(guard.child.id());
    let result = if pause_delivery {
        wait_listening(admin, &mut guard, &log).context("spate leg: admin API did not start")?;
        admin_post(admin, "spate-bench-token", "/api/v1/queues/*%2F*/pause")
            .context("spate leg: pausing delivery")?;
        let mut r = inject_only("spate (delivery paused)", listen, load, checked, pid)?;
        // What reached the sink anyway (0 unless the pause failed).
        std::thread::sleep(Duration::from_millis(500));
        r.delivered = sink.report().total.messages;
        Ok(r)
    } else {
        inject_and_drain("spate", listen, &sink, load, checked, pid)
    };
    let result = result.map(|mut r| {
        r.spool = spool_figures(admin, "spate-bench-token");
        r.dns_queries = Some(dns.queries());
        r
    });
    guard.terminate(Duration::from_secs(30));
    result
}

/// Injects without waiting for delivery: the injection-only legs (spate with
/// its queues paused, Postfix's smtp-sink which stores nothing).
fn inject_only(
    name: &str,
    to: SocketAddr,
    load: &Load,
    tls: Option<&LegCertificate>,
    mta_pid: Option<u32>,
) -> anyhow::Result<LegResult> {
    let cpu = CpuReading::now();
    let mta_cpu = MtaCpu::start(mta_pid);
    let anon = mta_pid.map(AnonPeak::start);
    let inject: InjectReport = run_inject(inject_config(to, load, tls)?)?;
    let spent = cpu.spent();
    let peak_anon_kib = anon.and_then(AnonPeak::finish);
    let mta_spent = mta_cpu.spent();
    let mut result = LegResult {
        name: name.into(),
        messages: load.messages,
        injected_ok: inject.accepted,
        elapsed_s: inject.elapsed_s,
        injection_msgs_per_s: inject.messages_per_s,
        ack_latency: inject.ack_latency,
        cpu_s: mta_spent.map(|c| c.total_s),
        cpu_ms_per_msg: per_msg_ms(mta_spent.map(|c| c.total_s), inject.accepted),
        cpu_kernel_ms_per_msg: per_msg_ms(mta_spent.map(|c| c.kernel_s), inject.accepted),
        peak_rss_kib: mta_pid.and_then(peak_rss_kib),
        peak_anon_kib,
        error: refused_error(&inject, load),
        domains: load.domains,
        injector_failures: inject.failures,
        ..LegResult::default()
    };
    result.set_machine_cpu(spent, result.injected_ok);
    Ok(result)
}

/// One POST to spate's admin API with a bearer token; fails unless 2xx.
fn admin_post(admin: SocketAddr, token: &str, path: &str) -> anyhow::Result<()> {
    let (code, body) =
        crate::probe::http_request(admin, "POST", path, Some(token), Duration::from_secs(10))?;
    anyhow::ensure!((200..300).contains(&code), "POST {path}: {code} {body}");
    Ok(())
}

/// Arguments of `spate-bench relay`.
#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    /// Extra legs beside spate: raw, forward, forward-write, forward-direct,
    /// postfix, smtp-source, smtp-sink (comma-separated). `forward` puts
    /// `spate-bench forward` (a plain TCP forwarder, the least any relay
    /// does) between the injector and the sink; `forward-write` the same
    /// forwarder also storing what clients send in a file on spate's disk
    /// with group commit (replies not held back: a reference for a relay
    /// that stores mail); `forward-direct` the same with O_DIRECT.
    /// `smtp-sink` is this injector into Postfix's smtp-sink, which stores
    /// nothing: an injection-only reference.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Pause every spate queue before injecting and measure injection only
    /// (messages are still fsynced before each 250, then wait in the queue).
    #[arg(long)]
    pub pause_delivery: bool,
    /// Skip the spate leg (e.g. to run only --compare raw,postfix).
    #[arg(long)]
    pub no_spate: bool,
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 20)]
    pub connections: u64,
    #[arg(long, default_value_t = 100)]
    pub per_connection: u64,
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Injector threads (same for every leg).
    #[arg(long, default_value_t = 1)]
    pub inject_threads: usize,
    /// Cap the injection at this many messages per second (all connections).
    #[arg(long)]
    pub rate: Option<f64>,
    /// A spate configuration template instead of the generated one; the
    /// placeholders {listen}, {admin}, {dns}, {sink} and {dir} (temp dir for
    /// the spool and admin.token) are filled in, and with --domains {sink1}
    /// to {sinkN}, each destination's sink address; with --tls, {tls_cert}
    /// and {tls_key} are the run's certificate and key (the injector checks
    /// spate's certificate only when the template uses {tls_cert}). It must
    /// route example.test to {sink} (with --domains, dN.example.test to
    /// {sinkN}); `spate_bench::relay::spate_config` shows how.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The spate binary. The default path is built (cargo build --release
    /// -p spate) when it is missing and this is spate's workspace.
    #[arg(long, default_value = DEFAULT_SPATE_BIN)]
    pub spate_bin: PathBuf,
    /// Make spate's run directory (spool, configuration, log), and Postfix's
    /// (its queue), in this directory instead of the system temp dir: to
    /// measure the disk and file system spate will run on, both MTAs on it.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where the rows go as JSON (every leg and round).
    #[arg(long, default_value = "spate-bench-relay.json")]
    pub json_out: PathBuf,
    /// Run a --config template whose listeners, admin API, vMTA source IPs,
    /// smtp_hosts or DNS servers are not on loopback (refused otherwise).
    #[arg(long)]
    pub allow_remote: bool,
    /// Run every leg this many times, alternating (raw, spate, raw, spate,
    /// ...; the order changes each round so that every leg runs in each
    /// place and after each other leg equally often), and summarise each
    /// leg's median and the median of the per-round ratios: on a shared,
    /// noisy machine one round can be off by 2x. Failed rounds are left out
    /// of the medians and named under the --suite table.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeat: u32,
    /// Run the four loads of the published table (2 KB and 100 KB, 20 and
    /// 200 connections; --messages, --connections, --per-connection and
    /// --size are then ignored) and print the table of medians. With
    /// `--compare raw,postfix --repeat 3` it reproduces README.md's table.
    #[arg(long)]
    pub suite: bool,
    /// TLS on every hop: STARTTLS from the injector into spate, Postfix or
    /// (raw) the sink, and from spate and Postfix into the sink, with a
    /// certificate made for the run, which the injector checks (spate and
    /// Postfix do not check the sink's, as for opportunistic TLS). Not with
    /// the smtp-source and smtp-sink legs.
    #[arg(long)]
    pub tls: bool,
    /// Recipients per message, taking turns over the destination domains
    /// (each MTA delivers a destination's recipients of a message in one
    /// transaction where it can). With several destinations a leg ends when
    /// every recipient reached the sink.
    #[arg(long, default_value_t = 1)]
    pub rcpts: u32,
    /// Destination domains (d1.example.test ... dN.example.test), each with
    /// its own MX host: an address of the sink's of its own (127.0.0.101 and
    /// on). Recipients take turns over them; spate and Postfix keep a queue
    /// and connections per destination. The raw and forward legs send
    /// everything to the first address. 1: example.test only, as in the
    /// published table.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=DOMAINS_MAX as i64))]
    pub domains: u32,
}

/// Prints the result table.
pub fn print_table(rows: &[LegResult]) {
    println!(
        "{:<24} {:>8} {:>9} {:>11} {:>11} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}",
        "leg",
        "msgs",
        "delivered",
        "e2e msg/s",
        "inject/s",
        "ack p50ms",
        "ack p99ms",
        "e2e p99ms",
        "cpu ms/m",
        "peak anon",
        "peak RSS"
    );
    for r in rows {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{} MiB", k / 1024));
        let ms = |p: &Percentiles, us: u64| {
            if p.count == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", us as f64 / 1000.0)
            }
        };
        println!(
            "{:<24} {:>8} {:>9} {:>11.0} {:>11.0} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}",
            r.name,
            r.messages,
            r.delivered,
            r.end_to_end_msgs_per_s,
            r.injection_msgs_per_s,
            ms(&r.ack_latency, r.ack_latency.p50_us),
            ms(&r.ack_latency, r.ack_latency.p99_us),
            ms(&r.e2e_latency, r.e2e_latency.p99_us),
            opt(r.cpu_ms_per_msg),
            mib(r.peak_anon_kib),
            mib(r.peak_rss_kib),
        );
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
        for (reason, n) in &r.injector_failures {
            println!("    {n} failed: {reason}");
        }
        if let Some(sp) = &r.spool {
            println!(
                "    spool: {} fdatasyncs ({:.1} new messages per fdatasync; delivery states share them), fdatasync mean {:.2} ms, commit mean {:.2} ms; segments made ahead: {} recycled, {} zero-filled, {} allocated",
                sp.fsyncs,
                if sp.fsyncs > 0 {
                    sp.commits as f64 / sp.fsyncs as f64
                } else {
                    0.0
                },
                sp.fsync_mean_ms,
                sp.commit_mean_ms,
                sp.segments_recycled,
                sp.segments_zero_filled,
                sp.segments_allocated,
            );
        }
        if let Some(line) = machine_line(
            r.machine_busy_cores,
            r.machine_cpu_ms_per_msg,
            r.harness_cpu_ms_per_msg,
        ) {
            println!("    {line}");
        }
        if let Some(conns) = r.sink_connections.filter(|c| *c > 0) {
            // What the sink received: more transactions than the load's
            // messages where an MTA split them over destinations.
            let received = if r.per_sink_messages.is_empty() {
                r.delivered
            } else {
                r.per_sink_messages.iter().map(|(_, n)| n).sum()
            };
            println!(
                "    sink: {conns} connections in, {:.1} messages per connection",
                received as f64 / conns as f64
            );
        }
        if let Some(line) = destinations_line(&r.per_sink_messages) {
            println!("    {line}");
        }
    }
    for (label, ratio) in ratios(rows) {
        println!("{label} = {ratio:.2}x");
    }
    if let Some(b) = half_raw_budget(rows) {
        println!("{}", b.line());
    }
}

/// `seconds` per message in milliseconds (None without messages).
fn per_msg_ms(seconds: Option<f64>, messages: u64) -> Option<f64> {
    seconds
        .filter(|_| messages > 0)
        .map(|s| s * 1000.0 / messages as f64)
}

/// What half the raw pipeline's rate leaves an MTA of the machine's CPU,
/// beside what it spent (see [`half_raw_budget`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HalfRawBudget {
    /// Milliseconds of CPU per message the MTA may spend.
    pub budget_ms: f64,
    /// What spate's process tree spent per message, and the kernel's part.
    pub spate_ms: f64,
    pub spate_kernel_ms: Option<f64>,
}

impl HalfRawBudget {
    pub fn line(&self) -> String {
        let kernel = self
            .spate_kernel_ms
            .map_or(String::new(), |k| format!(", {k:.3} of it in the kernel"));
        format!(
            "CPU budget of spate / raw = 0.5x (every CPU busy at half raw's rate, less the \
             harness's CPU): {:.3} ms per message; spate spent {:.3}{kernel}",
            self.budget_ms, self.spate_ms
        )
    }
}

/// The CPU per message an MTA could spend and still deliver at half the
/// raw pipeline's rate on this machine: all `cpus` busy for the time half
/// that rate takes per message, less the harness's own CPU per message in
/// the MTA's leg (its injector and sink do the same work in both legs).
/// An upper bound: no leg keeps every CPU busy.
pub fn mta_cpu_budget_ms(raw_msgs_per_s: f64, cpus: f64, harness_ms: f64) -> Option<f64> {
    (raw_msgs_per_s > 0.0).then(|| cpus * 1000.0 / (0.5 * raw_msgs_per_s) - harness_ms)
}

/// [`HalfRawBudget`] of one round's rows, when it ran raw and spate.
pub fn half_raw_budget(rows: &[LegResult]) -> Option<HalfRawBudget> {
    let raw = completed_leg(rows, "raw")?;
    // The leg that delivers, not "spate (delivery paused)".
    let spate = rows
        .iter()
        .find(|r| r.name == "spate" && r.error.is_none())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some(HalfRawBudget {
        budget_ms: mta_cpu_budget_ms(
            raw.end_to_end_msgs_per_s,
            cpus,
            spate.harness_cpu_ms_per_msg?,
        )?,
        spate_ms: spate.cpu_ms_per_msg?,
        spate_kernel_ms: spate.cpu_kernel_ms_per_msg,
    })
}

/// "machine: ..." of a row or of medians, when there are figures.
fn machine_line(
    cores: Option<f64>,
    all_ms: Option<f64>,
    harness_ms: Option<f64>,
) -> Option<String> {
    let all_ms = all_ms?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = cores.map_or("?".into(), |c| format!("{c:.2}"));
    let harness = harness_ms.map_or(String::new(), |h| {
        format!(", {h:.3} of it the harness's (injector, sink)")
    });
    Some(format!(
        "machine: {cores} of {cpus} CPUs busy, {all_ms:.3} ms of CPU per message in all{harness}"
    ))
}

/// The label of the forwarder's rate against the raw pipeline among
/// [`ratios`]: a reference for what a relay's two socket ends cost per byte
/// (not an upper bound: see [`crate::forward`]).
pub const FORWARDER_OVER_RAW: &str = "forwarder / raw (a relay that only copies bytes)";

/// The label of the writing forwarder's rate against the raw pipeline
/// among [`ratios`]: what storing the bytes adds to copying them.
pub const FORWARD_WRITE_OVER_RAW: &str =
    "forward-write / raw (a relay that copies bytes and writes them to disk)";

/// The same for the writing forwarder with O_DIRECT.
pub const FORWARD_DIRECT_OVER_RAW: &str = "forward-direct / raw (the same, writing with O_DIRECT)";

/// True when a row named `name` is the leg `key`: the name itself or the
/// name followed by a description ("raw (inject -> sink)"), so that
/// "forward" is not "forward-write (...)".
fn is_leg(name: &str, key: &str) -> bool {
    name.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// The row of leg `key` among one round's `rows`, if it did not fail.
fn completed_leg<'a>(rows: &'a [LegResult], key: &str) -> Option<&'a LegResult> {
    rows.iter()
        .find(|r| is_leg(&r.name, key) && r.error.is_none())
}

/// `rows` split by round, in the order the rounds were first seen.
fn by_round(rows: &[LegResult]) -> Vec<Vec<LegResult>> {
    distinct(rows, |r| r.round)
        .into_iter()
        .map(|round| rows.iter().filter(|r| r.round == round).cloned().collect())
        .collect()
}

/// The label of the CPU ceiling among [`ratios`].
pub const CPU_CEILING: &str = "CPU ceiling of spate / raw (machine CPU per message, raw / spate)";

/// The ratios of spate to each reference leg among `rows` (one round):
/// injection rates against every reference, end-to-end rates against
/// Postfix and the raw pipeline, and the [`CPU_CEILING`]: what spate / raw
/// would be if both legs kept every CPU busy (see `cpu.rs`).
pub fn ratios(rows: &[LegResult]) -> Vec<(String, f64)> {
    let find = |name: &str| completed_leg(rows, name);
    let mut out = Vec::new();
    let inject_rate = |name: &str| {
        find(name)
            .map(|r| r.injection_msgs_per_s)
            .filter(|r| *r > 0.0)
    };
    if let Some(s) = inject_rate("spate") {
        for (other, leg) in [
            ("smtp-sink", "inject -> smtp-sink"),
            ("postfix", "postfix"),
            ("raw", "raw"),
        ] {
            if let Some(o) = inject_rate(leg) {
                out.push((format!("injection: spate / {other}"), s / o));
            }
        }
    }
    let rate = |name: &str| {
        find(name)
            .map(|r| r.end_to_end_msgs_per_s)
            .filter(|r| *r > 0.0)
    };
    if let Some(s) = rate("spate") {
        for leg in ["postfix", "raw", "forward"] {
            if let Some(o) = rate(leg) {
                out.push((format!("spate / {leg}"), s / o));
            }
        }
    }
    if let (Some(f), Some(r)) = (rate("forward"), rate("raw")) {
        out.push((FORWARDER_OVER_RAW.to_string(), f / r));
    }
    for (leg, label) in [
        ("forward-write", FORWARD_WRITE_OVER_RAW),
        ("forward-direct", FORWARD_DIRECT_OVER_RAW),
    ] {
        if let (Some(f), Some(r)) = (rate(leg), rate("raw")) {
            out.push((label.to_string(), f / r));
        }
        if let (Some(s), Some(f)) = (rate("spate"), rate(leg)) {
            out.push((format!("spate / {leg}"), s / f));
        }
    }
    let machine = |name: &str| {
        find(name)
            .and_then(|r| r.machine_cpu_ms_per_msg)
            .filter(|v| *v > 0.0)
    };
    if let (Some(s), Some(r)) = (machine("spate"), machine("raw")) {
        out.push((CPU_CEILING.to_string(), r / s));
    }
    out
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The median of `values` with their lowest and highest.
fn median_range(values: Vec<f64>) -> Option<(f64, f64, f64)> {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    median(values).map(|m| (m, lo, hi))
}

/// The distinct values of `key` over `rows`, in the order first seen.
fn distinct<'a, T: PartialEq>(rows: &'a [LegResult], key: impl Fn(&'a LegResult) -> T) -> Vec<T> {
    let mut out = Vec::new();
    for r in rows {
        let k = key(r);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// Each spate ratio of [`ratios`] with its value in every round of `rows`
/// (rows of one load), ratios in the order first seen.
fn ratios_by_round(rows: &[LegResult]) -> Vec<(String, Vec<f64>)> {
    let mut per_label: Vec<(String, Vec<f64>)> = Vec::new();
    for these in by_round(rows) {
        for (label, ratio) in ratios(&these) {
            match per_label.iter_mut().find(|(l, _)| *l == label) {
                Some((_, v)) => v.push(ratio),
                None => per_label.push((label, vec![ratio])),
            }
        }
    }
    per_label
}

/// After `--repeat`: each leg's median rates and CPU, and each ratio's
/// median with its range over the rounds.
pub fn print_summary(rows: &[LegResult], rounds: u32) {
    println!("\nmedian of {rounds} rounds:");
    for name in distinct(rows, |r| r.name.as_str()) {
        let ok: Vec<&LegResult> = rows
            .iter()
            .filter(|r| r.name == name && r.error.is_none())
            .collect();
        let med = |f: &dyn Fn(&LegResult) -> Option<f64>| {
            median(ok.iter().filter_map(|r| f(r)).collect())
        };
        // The highest of the rounds, not the median: memory is sized for the worst.
        let anon = ok.iter().filter_map(|r| r.peak_anon_kib).max();
        println!(
            "{:<24} e2e {:>8} msg/s   inject {:>8} msg/s   cpu {} ms/msg   peak anon {}   ({} of {rounds} rounds ok)",
            name,
            med(&|r| Some(r.end_to_end_msgs_per_s)).map_or("-".into(), |v| format!("{v:.0}")),
            med(&|r| Some(r.injection_msgs_per_s)).map_or("-".into(), |v| format!("{v:.0}")),
            med(&|r| r.cpu_ms_per_msg).map_or("-".into(), |v| format!("{v:.3}")),
            anon.map_or("-".into(), |k| format!("{} MiB", k / 1024)),
            ok.len(),
        );
        let spool = |f: &dyn Fn(&SpoolFigures) -> f64| {
            median(ok.iter().filter_map(|r| r.spool.as_ref()).map(f).collect())
        };
        if let (Some(commit), Some(fsync)) =
            (spool(&|s| s.commit_mean_ms), spool(&|s| s.fsync_mean_ms))
        {
            println!(
                "{:<24} spool: fdatasync mean {fsync:.2} ms, commit mean {commit:.2} ms",
                ""
            );
        }
        if let Some(line) = machine_line(
            med(&|r| r.machine_busy_cores),
            med(&|r| r.machine_cpu_ms_per_msg),
            med(&|r| r.harness_cpu_ms_per_msg),
        ) {
            println!("{:<24} {line}", "");
        }
    }
    for (label, values) in ratios_by_round(rows) {
        let n = values.len();
        if let Some((m, lo, hi)) = median_range(values) {
            println!("{label} = {m:.2}x median ({lo:.2}-{hi:.2}x over {n} rounds)");
        }
    }
    let budgets: Vec<HalfRawBudget> = by_round(rows)
        .iter()
        .filter_map(|these| half_raw_budget(these))
        .collect();
    let med =
        |f: &dyn Fn(&HalfRawBudget) -> Option<f64>| median(budgets.iter().filter_map(f).collect());
    if let (Some(budget_ms), Some(spate_ms)) =
        (med(&|b| Some(b.budget_ms)), med(&|b| Some(b.spate_ms)))
    {
        let b = HalfRawBudget {
            budget_ms,
            spate_ms,
            spate_kernel_ms: med(&|b| b.spate_kernel_ms),
        };
        println!("{} (medians of {} rounds)", b.line(), budgets.len());
    }
}

/// Where `cargo build --release` puts spate, from the workspace root.
pub const DEFAULT_SPATE_BIN: &str = "target/release/spate";

/// Builds the release spate when `bin` is the default path, is missing, and
/// the current directory is spate's workspace (the README's command).
fn build_spate_if_missing(bin: &Path) -> anyhow::Result<()> {
    let in_workspace = std::fs::read_to_string("Cargo.toml")
        .is_ok_and(|t| t.contains("[workspace]") && Path::new("bench/Cargo.toml").exists());
    if bin.exists() || bin != Path::new(DEFAULT_SPATE_BIN) || !in_workspace {
        return Ok(());
    }
    eprintln!("spate-bench relay: {DEFAULT_SPATE_BIN} is missing; cargo build --release -p spate");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "spate", "--bin", "spate"])
        .status()
        .context("running cargo build --release -p spate")?;
    anyhow::ensure!(status.success(), "cargo build --release -p spate failed");
    Ok(())
}

/// Runs `spate-bench relay`.
pub fn run(args: RelayArgs) -> anyhow::Result<()> {
    crate::install_signal_watch()?;
    if !args.no_spate {
        build_spate_if_missing(&args.spate_bin)?;
    }
    for leg in &args.compare {
        let comparable = || LEGS.into_iter().filter(|l| *l != "spate");
        anyhow::ensure!(
            comparable().any(|l| l == leg),
            "unknown --compare leg {leg:?} ({})",
            comparable().collect::<Vec<_>>().join(", ")
        );
        anyhow::ensure!(
            !(args.tls && leg.starts_with("smtp-")),
            "--tls does not apply to the {leg} leg (Postfix's tools speak plaintext here)"
        );
        anyhow::ensure!(
            !(args.domains > 1 && leg.starts_with("smtp-")),
            "--domains does not apply to the {leg} leg (Postfix's tools send to one domain here)"
        );
    }
    ensure_destinations(args.domains)?;
    let rows = if args.suite {
        run_suite(&args)
    } else {
        let load = Load {
            messages: args.messages,
            connections: args.connections,
            per_connection: args.per_connection,
            size: args.size,
            inject_threads: args.inject_threads,
            rate: args.rate,
            tls: args.tls,
            rcpts: args.rcpts,
            domains: args.domains,
        };
        run_rounds(&args, &load, &args.compare, "")
    };
    let path = &args.json_out;
    std::fs::write(path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("rows written to {}", path.display());
    if rows.iter().any(|r| r.error.is_some()) {
        bail!("some legs failed (see the table)");
    }
    Ok(())
}

/// Every leg, in the order [`leg_order`] starts from; all but spate can be
/// asked for with `--compare`.
const LEGS: [&str; 8] = [
    "smtp-sink",
    "raw",
    "forward",
    "forward-write",
    "forward-direct",
    "smtp-source",
    "spate",
    "postfix",
];

/// The legs of one round, in the order they run: `compare`'s (and spate)
/// in a balanced (Williams) order. Over N rounds of N legs (2N when N is
/// odd: a design) each leg runs equally often in every place and right
/// after every other leg, so neither a cold first place nor the leftovers of one
/// particular leg before it (page cache, a Postfix still exiting) always
/// fall on the same leg.
fn leg_order(compare: &[String], spate: bool, round: u32) -> Vec<&'static str> {
    let legs: Vec<&'static str> = LEGS
        .into_iter()
        .filter(|leg| {
            if *leg == "spate" {
                spate
            } else {
                compare.iter().any(|l| l == leg)
            }
        })
        .collect();
    williams_order(legs.len(), round.saturating_sub(1) as usize)
        .into_iter()
        .map(|i| legs[i])
        .collect()
}

/// The rounds of one whole [`williams_order`] design for `n` legs.
fn design_rounds(n: usize) -> u32 {
    let n = n.max(1) as u32;
    if n % 2 == 0 { n } else { 2 * n }
}

/// Row `row` (0-based) of a Williams design for `n` treatments: the first
/// row is 0, 1, n-1, 2, n-2, ...; row r adds r (mod n) to each; for odd n
/// the second n rows are the first n reversed.
fn williams_order(n: usize, row: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let base = (0..n).map(|i| match i {
        0 => 0,
        _ if i % 2 == 1 => i.div_ceil(2),
        _ => n - i / 2,
    });
    let mut order: Vec<usize> = base.map(|b| (b + row) % n).collect();
    if n % 2 == 1 && (row / n) % 2 == 1 {
        order.reverse();
    }
    order
}

/// `--repeat` rounds of the legs in `compare` (and spate) under one load,
/// in [`leg_order`]; each row is labelled with `label` and its round.
fn run_rounds(args: &RelayArgs, load: &Load, compare: &[String], label: &str) -> Vec<LegResult> {
    let design = design_rounds(leg_order(compare, !args.no_spate, 1).len());
    if args.repeat > 1 && args.repeat % design != 0 {
        println!(
            "note: --repeat {} is not a multiple of {design}, the rounds of these legs' \
             balanced order: their places and neighbours are balanced only over whole designs",
            args.repeat
        );
    }
    let failed = |name: &str, e: anyhow::Error| LegResult {
        name: name.into(),
        messages: load.messages,
        error: Some(format!("{e:#}")),
        domains: load.domains,
        ..LegResult::default()
    };
    let mut rows = Vec::new();
    for round in 1..=args.repeat {
        let mut these = Vec::new();
        for leg in leg_order(compare, !args.no_spate, round) {
            let row = match leg {
                "smtp-sink" => run_smtp_sink(load),
                "raw" => run_raw(load),
                "forward" => std::env::current_exe()
                    .context("locating spate-bench")
                    .and_then(|bench| run_forward(load, &bench)),
                "forward-write" | "forward-direct" => std::env::current_exe()
                    .context("locating spate-bench")
                    .and_then(|bench| {
                        let direct = leg == "forward-direct";
                        run_forward_write(load, &bench, args.work_dir.as_deref(), direct)
                    }),
                "smtp-source" => run_smtp_source(load),
                "spate" => run_spate(
                    load,
                    &SpateLeg {
                        bin: &args.spate_bin,
                        config: args.config.as_deref(),
                        pause_delivery: args.pause_delivery,
                        allow_remote: args.allow_remote,
                        work_dir: args.work_dir.as_deref(),
                    },
                ),
                "postfix" => run_postfix_in(load, args.work_dir.as_deref()),
                other => Err(anyhow::anyhow!("unknown leg {other}")),
            };
            these.push(row.unwrap_or_else(|e| failed(leg, e)));
        }
        for r in &mut these {
            r.round = round;
            r.load = label.to_string();
        }
        if args.repeat > 1 {
            println!("round {round} of {}:", args.repeat);
        }
        print_table(&these);
        rows.extend(these);
        if crate::stop_requested() {
            break;
        }
    }
    if args.repeat > 1 {
        print_summary(&rows, args.repeat);
    }
    rows
}

/// The four loads of the published table: (label, size, connections,
/// messages per connection, messages). The 100 KB loads carry 2 GB each:
/// enough for spate's shards to rotate through several 64 MiB segments and
/// reuse finished ones, as a long-running server does, rather than measure
/// only a spool's first few hundred megabytes.
pub const SUITE: [(&str, usize, u64, u64, u64); 4] = [
    ("2 KB, 20 connections", 2048, 20, 50, 20_000),
    ("2 KB, 200 connections", 2048, 200, 50, 20_000),
    ("100 KB, 20 connections", 102_400, 20, 50, 20_000),
    ("100 KB, 200 connections", 102_400, 200, 20, 20_000),
];

/// `--suite`: every load of [`SUITE`] with the legs of `--compare`, then one
/// table of medians: the table README.md shows.
fn run_suite(args: &RelayArgs) -> Vec<LegResult> {
    let mut rows = Vec::new();
    for (label, size, connections, per_connection, messages) in SUITE {
        // Labelled apart from the published loads when they differ.
        let label = match args.domains {
            1 => label.to_string(),
            n => format!("{label}, {n} destinations"),
        };
        let label = label.as_str();
        println!("\n== {label} ==");
        let load = Load {
            messages,
            connections,
            per_connection,
            size,
            inject_threads: args.inject_threads,
            rate: args.rate,
            tls: args.tls,
            rcpts: args.rcpts,
            domains: args.domains,
        };
        rows.extend(run_rounds(args, &load, &args.compare, label));
        if crate::stop_requested() {
            break;
        }
    }
    println!("\n{}", suite_table(&rows));
    rows
}

/// Markdown: per load, the medians of spate, raw and Postfix, the medians
/// of the per-round ratios, the [`CPU_CEILING`], [`FORWARDER_OVER_RAW`] and
/// spate's highest peak of anonymous memory.
pub fn suite_table(rows: &[LegResult]) -> String {
    let mut out = String::from(
        "| load | spate msg/s | raw pipeline msg/s | spate / raw (range) | CPU ceiling of spate / raw | forwarder / raw (range) | Postfix msg/s | spate / Postfix (range) | spate peak anon |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for label in distinct(rows, |r| r.load.as_str()) {
        let these: Vec<LegResult> = rows.iter().filter(|r| r.load == label).cloned().collect();
        let of = |name: &str| {
            median(
                these
                    .iter()
                    .filter(|r| is_leg(&r.name, name) && r.error.is_none())
                    .map(|r| r.end_to_end_msgs_per_s)
                    .collect(),
            )
        };
        let by_round = ratios_by_round(&these);
        let ratio = |wanted: &str| {
            by_round
                .iter()
                .find(|(l, _)| *l == wanted)
                .and_then(|(_, v)| median_range(v.clone()))
                .map_or("–".to_string(), |(m, lo, hi)| {
                    format!("{m:.2}× ({lo:.2}–{hi:.2})")
                })
        };
        let rate = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
        let anon = these
            .iter()
            .filter(|r| r.name == "spate" && r.error.is_none())
            .filter_map(|r| r.peak_anon_kib)
            .max()
            .map_or("–".to_string(), |k| format!("{} MiB", k / 1024));
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {anon} |\n",
            rate(of("spate")),
            rate(of("raw")),
            ratio("spate / raw"),
            ratio(CPU_CEILING),
            ratio(FORWARDER_OVER_RAW),
            rate(of("postfix")),
            ratio("spate / postfix"),
        ));
    }
    // The medians leave failed rounds out: say which, under the table.
    for label in distinct(rows, |r| r.load.as_str()) {
        let these: Vec<&LegResult> = rows.iter().filter(|r| r.load == label).collect();
        for name in distinct(rows, |r| r.name.as_str()) {
            let legs: Vec<&&LegResult> = these.iter().filter(|r| r.name == name).collect();
            let failed = legs.iter().filter(|r| r.error.is_some()).count();
            if failed > 0 {
                out.push_str(&format!(
                    "\n{label}, {name}: {failed} of {} rounds failed and are left out of the medians",
                    legs.len()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, e2e: f64, inject: f64) -> LegResult {
        LegResult {
            name: name.into(),
            end_to_end_msgs_per_s: e2e,
            injection_msgs_per_s: inject,
            ..LegResult::default()
        }
    }

    #[test]
    fn ratios_compare_spate_with_each_reference_present() {
        let rows = [
            row("raw (inject -> sink)", 20_000.0, 20_000.0),
            row("spate", 10_000.0, 12_000.0),
            row("postfix", 500.0, 600.0),
        ];
        let r = ratios(&rows);
        let get = |l: &str| r.iter().find(|(x, _)| x == l).map(|(_, v)| *v);
        assert_eq!(get("spate / raw"), Some(0.5));
        assert_eq!(get("spate / postfix"), Some(20.0));
        assert_eq!(get("injection: spate / raw"), Some(0.6));
        assert_eq!(get("injection: spate / postfix"), Some(20.0));
        assert_eq!(get("injection: spate / smtp-sink"), None);
        assert_eq!(get(FORWARDER_OVER_RAW), None);
        // With a forwarder leg: its rate over raw's, and spate's over its.
        let mut with_forward = rows.to_vec();
        with_forward.push(row(FORWARD_LEG, 12_500.0, 12_500.0));
        let r = ratios(&with_forward);
        let get = |l: &str| r.iter().find(|(x, _)| x == l).map(|(_, v)| *v);
        assert_eq!(get(FORWARDER_OVER_RAW), Some(0.625));
        assert_eq!(get("spate / forward"), Some(0.8));
        // The writing forwarder is a leg of its own, even listed first: the
        // plain forwarder's ratios stay its own.
        let mut with_write = vec![row(FORWARD_WRITE_LEG, 8_000.0, 8_000.0)];
        with_write.extend(with_forward.iter().cloned());
        let r = ratios(&with_write);
        let get = |l: &str| r.iter().find(|(x, _)| x == l).map(|(_, v)| *v);
        assert_eq!(get(FORWARDER_OVER_RAW), Some(0.625));
        assert_eq!(get("spate / forward"), Some(0.8));
        assert_eq!(get(FORWARD_WRITE_OVER_RAW), Some(0.4));
        assert_eq!(get("spate / forward-write"), Some(1.25));
        assert!(is_leg("raw (inject -> sink)", "raw") && is_leg("spate", "spate"));
        assert!(!is_leg(FORWARD_WRITE_LEG, "forward") && !is_leg("rawest", "raw"));
        // No machine figures, no CPU ceiling; with them, raw's CPU per
        // message over spate's.
        assert_eq!(get(CPU_CEILING), None);
        let mut measured = rows.clone();
        measured[0].machine_cpu_ms_per_msg = Some(0.04);
        measured[1].machine_cpu_ms_per_msg = Some(0.1);
        let r = ratios(&measured);
        let ceiling = r.iter().find(|(x, _)| x == CPU_CEILING).map(|(_, v)| *v);
        assert!((ceiling.unwrap() - 0.4).abs() < 1e-9, "{ceiling:?}");
        // A failed spate leg gives no ratio at all.
        let mut failed = rows.clone();
        failed[1].error = Some("boom".into());
        assert!(ratios(&failed).is_empty());
    }

    #[test]
    fn half_raw_budget_is_every_cpu_at_half_raws_rate_less_the_harness() {
        // 2 CPUs, raw at 40,000 msg/s: half is 20,000/s, 0.1 ms of the
        // machine per message; the harness takes 0.04 of it in spate's leg.
        let b = mta_cpu_budget_ms(40_000.0, 2.0, 0.04).unwrap();
        assert!((b - 0.06).abs() < 1e-12, "{b}");
        assert_eq!(mta_cpu_budget_ms(0.0, 2.0, 0.04), None);
        let mut rows = vec![
            row("raw (inject -> sink)", 40_000.0, 40_000.0),
            row("spate", 15_000.0, 15_000.0),
        ];
        // Without spate's CPU figures there is nothing to compare.
        assert_eq!(half_raw_budget(&rows), None);
        rows[1].harness_cpu_ms_per_msg = Some(0.04);
        rows[1].cpu_ms_per_msg = Some(0.08);
        rows[1].cpu_kernel_ms_per_msg = Some(0.05);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let b = half_raw_budget(&rows).unwrap();
        assert!((b.budget_ms - (cpus * 0.05 - 0.04)).abs() < 1e-12, "{b:?}");
        assert_eq!((b.spate_ms, b.spate_kernel_ms), (0.08, Some(0.05)));
        assert!(
            b.line()
                .contains("spate spent 0.080, 0.050 of it in the kernel")
        );
        // A failed raw leg: no budget.
        rows[0].error = Some("boom".into());
        assert_eq!(half_raw_budget(&rows), None);
    }

    #[test]
    fn suite_table_gives_medians_and_ratio_ranges_per_load() {
        let mut rows = Vec::new();
        for (round, raw, spate, forward) in [
            (1, 20_000.0, 9_000.0, 12_000.0),
            (2, 30_000.0, 12_000.0, 15_000.0),
            (3, 25_000.0, 10_000.0, 11_000.0),
        ] {
            for (name, rate) in [
                ("raw (inject -> sink)", raw),
                ("spate", spate),
                (FORWARD_LEG, forward),
            ] {
                let mut r = row(name, rate, rate);
                r.round = round;
                r.peak_anon_kib = (name == "spate").then_some(40 * 1024 + round as u64 * 1024);
                // The machine's CPU per message: raw 0.04 ms in every
                // round, spate 0.10, 0.08 and 0.125 ms.
                r.machine_cpu_ms_per_msg = Some(match name {
                    "spate" => [0.1, 0.08, 0.125][round as usize - 1],
                    _ => 0.04,
                });
                r.load = "2 KB, 20 connections".into();
                rows.push(r);
            }
        }
        let table = suite_table(&rows);
        let line = table.lines().nth(2).expect("one row");
        // spate 10,000 and raw 25,000 are the medians; the per-round ratios
        // are 0.45, 0.40 and 0.40; the CPU ceilings 0.40, 0.50 and 0.32;
        // the forwarder's 0.60, 0.50 and 0.44; no Postfix leg; the highest
        // anonymous peak is round 3's.
        assert_eq!(
            line,
            "| 2 KB, 20 connections | 10000 | 25000 | 0.40× (0.40–0.45) | 0.40× (0.32–0.50) | 0.50× (0.44–0.60) | – | – | 43 MiB |"
        );
        assert_eq!(
            table.lines().count(),
            3,
            "no failed round: no note\n{table}"
        );
        // A failed round is left out of the medians, and said so.
        rows[3].error = Some("sink holds 10 of 20 accepted messages".into());
        let table = suite_table(&rows);
        assert_eq!(
            table.lines().last(),
            Some(
                "2 KB, 20 connections, raw (inject -> sink): 1 of 3 rounds failed and are left out of the medians"
            )
        );
        let line = table.lines().nth(2).expect("one row");
        assert!(
            line.starts_with("| 2 KB, 20 connections | 10000 | 22500 | "),
            "{line}"
        );
    }

    #[test]
    fn loopback_configs_pass_and_each_remote_target_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "t\n").unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let generated = spate_config(
            dir.path(),
            addr("127.0.0.1:2525"),
            addr("127.0.0.1:8025"),
            addr("127.0.0.1:5353"),
            &[addr("127.0.0.1:2526")],
        );
        let load = |text: &str| spate::config::load_str("t.toml", text, None).unwrap();
        let dns = addr("127.0.0.1:5353");
        ensure_loopback_config(&load(&generated), dns).unwrap();
        let cases = [
            (
                "address = \"127.0.0.1:2525\"",
                "address = \"0.0.0.0:2525\"",
                "listener 0.0.0.0",
            ),
            (
                "listen = \"127.0.0.1:8025\"",
                "listen = \"10.1.2.3:8025\"",
                "admin listen 10.1.2.3",
            ),
            (
                "[\"127.0.0.1:5353\"]",
                "[\"192.0.2.53\"]",
                "dns nameserver 192.0.2.53:53",
            ),
            (
                "[\"127.0.0.1:5353\"]",
                "[\"127.0.0.53\"]",
                "dns nameserver 127.0.0.53:53 is not the relay's test server 127.0.0.1:5353",
            ),
            (
                "source_ip = \"127.0.0.1\"",
                "source_ip = \"192.0.2.9\"",
                "source_ip 192.0.2.9",
            ),
            (
                "[\"sink.example.test:2526\"]",
                "[\"[2001:db8::1]:25\"]",
                "smtp_hosts 2001:db8::1",
            ),
            (
                "nameservers = [\"127.0.0.1:5353\"]",
                "",
                "no [dns] nameservers",
            ),
        ];
        for (from, to, named) in cases {
            assert!(generated.contains(from), "{from}");
            let text = generated.replace(from, to);
            let err = ensure_loopback_config(&load(&text), dns)
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn several_destinations_each_get_an_mx_host_and_a_route() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(destination_domains(1), ["example.test"]);
        assert_eq!(
            destination_domains(3),
            ["d1.example.test", "d2.example.test", "d3.example.test"]
        );
        let sinks = [addr("127.0.0.101:4001"), addr("127.0.0.102:4002")];
        let zone = destination_zone(&sinks);
        assert_eq!(
            zone,
            "d1.example.test MX 10 sink1.example.test\nsink1.example.test A 127.0.0.101\n\
             d2.example.test MX 10 sink2.example.test\nsink2.example.test A 127.0.0.102\n"
        );
        crate::dns::Zone::parse(&zone).unwrap();
        assert_eq!(
            destination_zone(&[addr("127.0.0.1:2526")]),
            format!("example.test MX 10 {SINK_NAME}\n{SINK_NAME} A 127.0.0.1\n")
        );
        // spate routes each domain to its host, with its port.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "t\n").unwrap();
        let text = spate_config(
            dir.path(),
            addr("127.0.0.1:2525"),
            addr("127.0.0.1:8025"),
            addr("127.0.0.1:5353"),
            &sinks,
        );
        let config = spate::config::load_str("t.toml", &text, None).unwrap();
        for (domain, host) in [
            ("d1.example.test", "sink1.example.test:4001"),
            ("d2.example.test", "sink2.example.test:4002"),
        ] {
            let hosts = config.domains[domain].smtp_hosts.as_ref().unwrap();
            assert_eq!(hosts.len(), 1);
            assert_eq!(format!("{}:{}", hosts[0].host, hosts[0].port), host);
        }
        ensure_loopback_config(&config, addr("127.0.0.1:5353")).unwrap();
        // Templates name each sink.
        assert_eq!(
            fill_sinks("{sink} {sink1} {sink2}".into(), &sinks),
            "127.0.0.101:4001 127.0.0.101:4001 127.0.0.102:4002"
        );
    }

    #[test]
    fn legs_run_in_a_balanced_order() {
        let compare: Vec<String> = ["postfix", "raw", "forward"].map(String::from).to_vec();
        assert_eq!(
            leg_order(&compare, true, 1),
            ["raw", "forward", "postfix", "spate"]
        );
        assert_eq!(
            leg_order(&compare, true, 2),
            ["forward", "spate", "raw", "postfix"]
        );
        // Round 5 is round 1 again (4 legs: 4 rounds make the design).
        assert_eq!(leg_order(&compare, true, 5), leg_order(&compare, true, 1));
        assert_eq!(leg_order(&compare, false, 1), ["raw", "forward", "postfix"]);
        assert!(leg_order(&[], false, 3).is_empty());
        // Over a whole design every leg runs once in each place and right
        // after every other leg equally often (once for even n, twice over
        // the 2n rows for odd n).
        for n in 1..=6 {
            let rows = design_rounds(n) as usize;
            let mut place = vec![vec![0; n]; n];
            let mut after = vec![vec![0; n]; n];
            for r in 0..rows {
                let order = williams_order(n, r);
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n {n} row {r}");
                for (p, &leg) in order.iter().enumerate() {
                    place[leg][p] += 1;
                }
                for w in order.windows(2) {
                    after[w[0]][w[1]] += 1;
                }
            }
            let per_place = rows / n;
            assert!(
                place.iter().flatten().all(|&c| c == per_place),
                "n {n}: {place:?}"
            );
            for (a, row) in after.iter().enumerate() {
                for (b, &c) in row.iter().enumerate() {
                    let want = if a == b { 0 } else { rows / n };
                    assert_eq!(c, want, "n {n}: {b} after {a}");
                }
            }
        }
    }

    #[test]
    fn recipient_counted_legs_expect_each_accepted_recipient() {
        assert_eq!(expected_recipients(300, 2, 0), 600);
        assert_eq!(expected_recipients(300, 2, 15), 585);
        assert_eq!(expected_recipients(0, 2, 15), 0);
        // Complete: every accepted message; otherwise whole messages' worth.
        assert_eq!(delivered_by_recipients(true, 300, 600, 2), 300);
        assert_eq!(delivered_by_recipients(false, 300, 451, 2), 225);
        assert_eq!(delivered_by_recipients(false, 300, 451, 0), 451);
        assert!(counts_recipients(2, 2) && !counts_recipients(1, 2) && !counts_recipients(2, 1));
    }

    #[test]
    fn median_of_odd_even_and_empty_sets() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(Vec::new()), None);
    }

    /// The sampler sees memory this process allocates and touches while it
    /// runs (file pages would not count), and nothing for a missing process.
    #[test]
    fn anon_peak_sees_touched_heap() {
        const MIB: usize = 1 << 20;
        let me = std::process::id();
        let before = tree_anon_kib(me).expect("this process is in /proc");
        let sampler = AnonPeak::start(me);
        let mut heap = vec![0u8; 96 * MIB];
        for page in heap.chunks_mut(4096) {
            page[0] = 1;
        }
        std::thread::sleep(Duration::from_millis(3 * ANON_SAMPLE_MS));
        let peak = sampler.finish().expect("sampled");
        std::hint::black_box(&heap);
        drop(heap);
        assert!(
            peak >= before + 64 * 1024,
            "peak {peak} KiB, before {before} KiB"
        );
        assert_eq!(tree_anon_kib(u32::MAX), None);
    }
}
