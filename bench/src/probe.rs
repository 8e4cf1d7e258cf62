//! Looking at a running spate from outside, for the long-running scenarios
//! (`conns`, `memory`).
//!
//! Owns: starting the release binary on a generated configuration, the
//! blocking probes (an SMTP greeting + EHLO + QUIT, an admin API GET), and
//! reading a process's memory and descriptors from `/proc`. The scenarios
//! decide what to measure; this module only fetches figures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::relay::ChildGuard;

/// Token the scenarios write for spate's admin API.
pub const ADMIN_TOKEN: &str = "spate-bench-token";
/// Timeout of one probe (connect, and each read).
pub const PROBE_TIMEOUT_MS: u64 = 5_000;
/// Largest admin answer read.
const HTTP_BODY_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// A spate started by a scenario; killed on drop.
#[derive(Debug)]
pub struct SpateProcess {
    pub guard: ChildGuard,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl SpateProcess {
    pub fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    /// `GET /api/v1/status` as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = http_get(self.admin, "/api/v1/status", Some(ADMIN_TOKEN))?;
        anyhow::ensure!(code == 200, "admin status answered {code}");
        serde_json::from_str(&body).context("admin status is not JSON")
    }

    /// The last lines of spate's log.
    pub fn log_tail(&self) -> String {
        crate::relay::tail(&self.log)
    }
}

/// Writes `config` (placeholders `{listen}`, `{admin}`, `{dir}`, `{token}`
/// filled in) under `dir` and starts `bin run` on it, waiting until its
/// listener accepts. `fd_soft_limit` lowers the child's soft
/// `RLIMIT_NOFILE` first, to check that spate raises it again;
/// `fd_hard_limit` lowers the hard one (to run out of descriptors early).
pub fn start_spate(
    bin: &Path,
    dir: &Path,
    config: &str,
    fd_soft_limit: Option<u64>,
    fd_hard_limit: Option<u64>,
) -> anyhow::Result<SpateProcess> {
    anyhow::ensure!(
        bin.exists(),
        "spate binary {} not found (cargo build --release -p spate)",
        bin.display()
    );
    let listen: SocketAddr = format!("127.0.0.1:{}", crate::relay::free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", crate::relay::free_port()?).parse()?;
    let token = dir.join("admin.token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    }
    let text = config
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{token}", &token.display().to_string())
        .replace("{dir}", &dir.display().to_string());
    let config_path = dir.join("spate.toml");
    std::fs::write(&config_path, text)?;
    let log = dir.join("spate.log");
    let mut command = Command::new(bin);
    command
        .args(["run", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?);
    if fd_soft_limit.is_some() || fd_hard_limit.is_some() {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls getrlimit/setrlimit, which are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(hard) = fd_hard_limit {
                    lim.rlim_max = lim.rlim_max.min(hard);
                }
                lim.rlim_cur = fd_soft_limit.unwrap_or(lim.rlim_cur).min(lim.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut guard = ChildGuard {
        child,
        name: "spate".into(),
    };
    crate::relay::wait_listening(listen, &mut guard, &log).context("spate did not start")?;
    // The admin API starts beside the shards, not necessarily before them.
    crate::relay::wait_listening(admin, &mut guard, &log)
        .context("spate's admin API did not start")?;
    Ok(SpateProcess {
        guard,
        listen,
        admin,
        log,
    })
}

/// Connects, reads the greeting, sends EHLO and QUIT; returns how long the
/// exchange took up to the EHLO answer.
pub fn smtp_ehlo(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
    let stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let greeting = read_reply(&mut reader).context("greeting")?;
    anyhow::ensure!(greeting.starts_with("220"), "greeting {greeting:?}");
    writer.write_all(b"EHLO probe.spate-bench.test\r\n")?;
    let ehlo = read_reply(&mut reader).context("EHLO reply")?;
    anyhow::ensure!(ehlo.starts_with("250"), "EHLO answered {ehlo:?}");
    let took = started.elapsed();
    let _ = writer.write_all(b"QUIT\r\n");
    Ok(took)
}

/// Reads one (possibly multi-line) SMTP reply; returns its last line.
fn read_reply(reader: &mut impl BufRead) -> anyhow::Result<String> {
    for _ in 0..spate::limits::SMTP_REPLY_LINES_MAX {
        let mut line = String::new();
        let n = reader
            .by_ref()
            .take(spate::limits::SMTP_REPLY_LINE_BYTES_MAX as u64)
            .read_line(&mut line)?;
        if n == 0 {
            bail!("connection closed");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.trim_end().to_string());
        }
    }
    bail!(
        "reply longer than {} lines",
        spate::limits::SMTP_REPLY_LINES_MAX
    )
}

/// The start of a scenario's spate configuration: spool (group commit),
/// admin API, test DNS, one listener and relaying for loopback clients to
/// `default_vmta`, with the placeholders [`start_spate`] fills in. The caller
/// appends its vMTAs and domains.
pub fn config_head(scenario: &str, dns: SocketAddr, default_vmta: &str) -> String {
    format!(
        r#"# generated by spate-bench {scenario}
hostname = "spate.{scenario}.test"

[spool]
path = "{{dir}}/spool"
sync = "group"

[admin]
listen = "{{admin}}"
token_file = "{{token}}"

[dns]
nameservers = ["{dns}"]
timeout = "2s"

[[listener]]
address = "{{listen}}"

[[source]]
networks = ["127.0.0.0/8"]
allow_relaying = true
default_vmta = "{default_vmta}"
"#
    )
}

/// A blocking HTTP/1.1 GET; returns the status code and body.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    http_request(
        addr,
        "GET",
        path,
        token,
        Duration::from_millis(PROBE_TIMEOUT_MS),
    )
}

/// A blocking HTTP/1.1 request without a body (GET, or a POST action of the
/// admin API); returns the status code and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{length}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(HTTP_BODY_BYTES_MAX).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP answer without a header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .context("HTTP answer without a status code")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        let Some(chunk) = rest.get(..n) else {
            break;
        };
        out.push_str(chunk);
        body = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// A `kB` field of `/proc/PID/status` (VmRSS, RssAnon, RssFile, VmHWM...).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open descriptors of a process, and how many of them are sockets.
pub fn fd_counts(pid: u32) -> Option<(u64, u64)> {
    let mut all = 0;
    let mut sockets = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        all += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
        {
            sockets += 1;
        }
    }
    Some((all, sockets))
}

/// The soft `RLIMIT_NOFILE` of a process, from `/proc/PID/limits`.
pub fn nofile_soft(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns
/// the new soft limit.
pub fn raise_own_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one rlimit struct through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The machine's 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A number at a JSON path like `totals.deferred` (0 when absent).
pub fn json_u64(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for key in path.split('.') {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return 0,
        }
    }
    cur.as_u64()
        .or_else(|| cur.as_i64().map(|i| u64::try_from(i).unwrap_or(0)))
        .unwrap_or(0)
}

/// Established IPv4 TCP connections from `127.0.<third>.0/24` to port
/// `remote_port`, from `/proc/net/tcp` (this network namespace, so other
/// processes' sockets are in the table too: the scenarios give spate's
/// vMTAs a /24 of their own and the sinks a fresh port, and both must match).
pub fn established_from_loopback_24(third: u8, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // Addresses are printed as the raw little-endian u32 (127.0.1.5 is
    // "0501007F"), ports as hex in host order; "01" is ESTABLISHED.
    let suffix = format!("{third:02X}007F");
    let port = format!("{remote_port:04X}");
    // The kernel walks its hash table in chunks while sockets come and go,
    // so one read can list a socket twice: count distinct 4-tuples.
    let mut seen = std::collections::HashSet::new();
    for line in table.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(local), Some(remote), Some(state)) = (cols.nth(1), cols.next(), cols.next())
        else {
            continue;
        };
        let ip = local.split(':').next().unwrap_or("");
        let rport = remote.split(':').nth(1).unwrap_or("");
        if state == "01" && ip.len() == 8 && ip.get(2..) == Some(suffix.as_str()) && rport == port {
            seen.insert((local, remote));
        }
    }
    Some(seen.len() as u64)
}
