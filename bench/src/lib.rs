//! spate-bench as a library: the pieces the `spate-bench` binary and spate's
//! integration tests share.
//!
//! | module | owns |
//! | --- | --- |
//! | [`dns`] | authoritative test DNS server (zone file, UDP+TCP) |
//! | [`script`] | the sink's reply script (TOML) and provider presets, without I/O |
//! | [`sink`] | the SMTP sink server on compio: replies per script, counts, latency |
//! | [`inject`] | the SMTP injector on compio: pipelined load, ack latency, failures |
//! | [`relay`] | the scenario runner: dns + sink + spate or Postfix + injector |
//! | [`report`] | latency summaries shared by sink, injector and relay |
//! | [`conns`] | concurrent outbound connections held by one spate |
//! | [`memory`] | resident memory per queued recipient |
//! | [`probe`] | starting spate for a scenario; SMTP/admin probes; `/proc` figures |
//!
//! Everything targets loopback unless `--allow-remote` is given.

pub mod conns;
pub mod dkim;
pub mod dns;
pub mod forward;
pub mod inject;
pub mod memory;
pub mod probe;
pub mod relay;
pub mod report;
pub mod script;
pub mod shaper;
pub mod sink;
pub mod spool;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

/// Refuses a non-loopback address unless explicitly allowed.
pub fn ensure_loopback(addr: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    ensure_loopback_ip(addr.ip(), allow_remote)
}

/// As [`ensure_loopback`], for a bare IP.
pub fn ensure_loopback_ip(ip: IpAddr, allow_remote: bool) -> anyhow::Result<()> {
    if ip.is_loopback() || allow_remote {
        Ok(())
    } else {
        anyhow::bail!("refusing non-loopback address {ip}: pass --allow-remote to target it")
    }
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Set once SIGINT or SIGTERM arrived (after [`install_signal_watch`]).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Starts a thread that waits for SIGINT/SIGTERM and sets the stop flag.
pub fn install_signal_watch() -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(|| {
            let Ok(rt) = compio::runtime::Runtime::new() else {
                return;
            };
            rt.block_on(async {
                let int = std::pin::pin!(compio::signal::unix::signal(libc::SIGINT));
                let term = std::pin::pin!(compio::signal::unix::signal(libc::SIGTERM));
                let _ = futures_util::future::select(int, term).await;
            });
            STOP_REQUESTED.store(true, Ordering::SeqCst);
        })?;
    // Give the watcher a moment to register before the caller proceeds.
    std::thread::sleep(std::time::Duration::from_millis(20));
    Ok(())
}

/// Blocks until SIGINT/SIGTERM.
pub fn wait_for_signal() {
    if install_signal_watch().is_err() {
        return;
    }
    while !stop_requested() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Current wall-clock time in microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses `--auth USER:PASSWORD` (the password may hold colons; the user
/// may not be empty).
pub fn parse_credentials(text: &str) -> anyhow::Result<(String, String)> {
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--auth takes USER:PASSWORD"))?;
    anyhow::ensure!(!user.is_empty(), "--auth: the user is empty");
    Ok((user.to_owned(), password.to_owned()))
}

/// Parses "30s", "500ms", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (num, mult_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (text, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    Ok(std::time::Duration::from_millis(n.saturating_mul(mult_ms)))
}
