//! The Postfix legs of a relay run: installing Postfix when missing, a
//! private instance under a temp dir (`postfix -c DIR`) relaying to the sink,
//! and the `smtp-source` → `smtp-sink` reference pair.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{
    ChildGuard, LegCertificate, LegResult, Load, MTA_START_TIMEOUT_MS, free_port, inject_and_drain,
    inject_only, leg_certificate, start_sink, tail, wait_listening,
};

/// A private Postfix instance under a temp dir.
pub struct Postfix {
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    config_dir: PathBuf,
}

impl Postfix {
    fn postfix(&self, action: &str) -> anyhow::Result<std::process::Output> {
        Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg(action)
            .output()
            .context("running postfix")
    }

    fn master_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid")).ok()?;
        text.trim().parse().ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix("stop");
        // Give the master a moment to take its children down.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Installs Postfix when absent (Debian package, non-interactive).
pub fn ensure_postfix_installed() -> anyhow::Result<()> {
    if Path::new("/usr/sbin/postfix").exists() {
        return ensure_default_main_cf();
    }
    eprintln!("spate-bench relay: installing postfix (apt-get)");
    let mut preseed = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(stdin) = preseed.stdin.as_mut() {
        use std::io::Write;
        stdin.write_all(b"postfix postfix/main_mailer_type select No configuration\npostfix postfix/mailname string bench.invalid\n")?;
    }
    preseed.wait()?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "postfix"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    anyhow::ensure!(
        status.success(),
        "apt-get install postfix failed ({status})"
    );
    ensure_default_main_cf()
}

/// `postfix -c DIR` reads the default main.cf first; a "No configuration"
/// install has none, so write an empty one (the system instance stays unused).
fn ensure_default_main_cf() -> anyhow::Result<()> {
    let default = Path::new("/etc/postfix/main.cf");
    if !default.exists() {
        std::fs::write(
            default,
            "# created by spate-bench relay so that private instances (postfix -c DIR) start\n",
        )
        .context("creating /etc/postfix/main.cf")?;
    }
    Ok(())
}

const POSTFIX_MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// Configures and starts a private Postfix relaying to `sinks` (the first
/// for every domain; with several, destination N of
/// [`super::destination_domains`] to the Nth, through a transport map); with
/// `tls` (certificate and key files) its smtpd offers STARTTLS and its smtp
/// client uses it when the sink offers it. Its directories (configuration,
/// queue) go in a new directory under `work_dir` (the system temp dir when
/// None): `relay --work-dir` puts Postfix's queue on the disk spate's spool
/// is measured on.
pub fn start_postfix(
    sinks: &[SocketAddr],
    tls: Option<&LegCertificate>,
    work_dir: Option<&Path>,
) -> anyhow::Result<Postfix> {
    let sink = *sinks.first().context("no sink address")?;
    ensure_postfix_installed()?;
    let parent = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let dir = tempfile::Builder::new()
        .prefix("spate-bench-postfix")
        .tempdir_in(&parent)
        .with_context(|| format!("making Postfix's directory in {}", parent.display()))?;
    let config_dir = dir.path().join("etc");
    let queue = dir.path().join("queue");
    let data = dir.path().join("data");
    for d in [&config_dir, &queue, &data] {
        std::fs::create_dir_all(d)?;
    }
    // Postfix daemons run as the postfix user: they must traverse the temp
    // dir and own the data directory.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let chown = Command::new("chown").arg("postfix").arg(&data).status()?;
    anyhow::ensure!(chown.success(), "chown postfix {} failed", data.display());
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let main_cf = format!(
        "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.test
mydestination =
relayhost = [{sink_ip}]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
{transport}{tls}default_destination_concurrency_limit = 20
default_process_limit = 250
smtpd_client_connection_count_limit = 0
smtpd_client_message_rate_limit = 0
in_flow_delay = 0s
disable_dns_lookups = yes
smtp_dns_support_level = disabled
",
        queue = queue.display(),
        data = data.display(),
        sink_ip = sink.ip(),
        sink_port = sink.port(),
        dir = dir.path().display(),
        transport = transport_map(sinks),
        tls = match tls {
            Some(LegCertificate { cert, key, .. }) => format!(
                "smtp_tls_security_level = may\nsmtpd_tls_security_level = may\nsmtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
                cert.display(),
                key.display()
            ),
            None => "smtp_tls_security_level = none\nsmtpd_tls_security_level = none\n".into(),
        },
    );
    std::fs::write(config_dir.join("main.cf"), main_cf)?;
    let master_cf = format!("{listen} inet n - n - - smtpd\n{POSTFIX_MASTER_CF}");
    std::fs::write(config_dir.join("master.cf"), master_cf)?;
    let pf = Postfix {
        dir,
        listen,
        config_dir,
    };
    let out = pf.postfix("start")?;
    anyhow::ensure!(
        out.status.success(),
        "postfix start failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&pf.dir.path().join("maillog"))
    );
    let deadline = Instant::now() + Duration::from_millis(MTA_START_TIMEOUT_MS);
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "postfix did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pf)
}

/// `transport_maps` sending each destination of several to its own sink
/// address (an inline table: nothing to `postmap`); empty for one, which
/// `relayhost` covers.
fn transport_map(sinks: &[SocketAddr]) -> String {
    if sinks.len() < 2 {
        return String::new();
    }
    let entries: Vec<String> = super::destination_domains(sinks.len() as u32)
        .iter()
        .zip(sinks)
        .map(|(domain, s)| format!("{domain}=smtp:[{}]:{}", s.ip(), s.port()))
        .collect();
    format!("transport_maps = inline:{{ {} }}\n", entries.join(", "))
}

/// The Postfix leg.
pub fn run_postfix(load: &Load) -> anyhow::Result<LegResult> {
    run_postfix_in(load, None)
}

/// [`run_postfix`] with Postfix's queue under `work_dir` (see
/// [`start_postfix`]).
pub fn run_postfix_in(load: &Load, work_dir: Option<&Path>) -> anyhow::Result<LegResult> {
    let tls = leg_certificate(load)?;
    let sink = start_sink(tls.as_ref(), load)?;
    let pf = start_postfix(&sink.addrs, tls.as_ref(), work_dir)?;
    let pid = pf.master_pid();
    let result = inject_and_drain("postfix", pf.listen, &sink, load, tls.as_ref(), pid);
    let result = result.map(|mut r| {
        // The master's VmHWM alone says nothing of Postfix's memory (one
        // process per connection); `peak_anon_kib` sums the tree.
        r.peak_rss_kib = None;
        r
    });
    drop(pf);
    result
}

/// Postfix's `smtp-sink` on a free loopback port, with the guard that stops it.
fn start_smtp_sink() -> anyhow::Result<(SocketAddr, ChildGuard)> {
    ensure_postfix_installed()?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // -u drops privileges when run as root; 1024 is the listen backlog.
    let mut guard = ChildGuard::spawn_quiet(
        Command::new("smtp-sink").args(["-u", "postfix", &addr.to_string(), "1024"]),
        "smtp-sink",
    )?;
    wait_listening(addr, &mut guard, Path::new("/dev/null"))?;
    Ok((addr, guard))
}

/// Injection-only reference: this injector into Postfix's `smtp-sink`, which
/// acknowledges every message and stores nothing.
pub fn run_smtp_sink(load: &Load) -> anyhow::Result<LegResult> {
    anyhow::ensure!(load.domains == 1, "the smtp-sink leg sends to one domain");
    let (addr, mut guard) = start_smtp_sink()?;
    let result = inject_only(
        "inject -> smtp-sink",
        addr,
        load,
        None,
        Some(guard.child.id()),
    );
    guard.terminate(Duration::from_secs(2));
    result
}

/// Reference leg: Postfix's `smtp-source` into Postfix's `smtp-sink` (both
/// from the postfix package). Only wall-clock throughput: the tools report no
/// latencies. `smtp-source` does not pipeline, so this is round-trip bound.
pub fn run_smtp_source(load: &Load) -> anyhow::Result<LegResult> {
    anyhow::ensure!(load.domains == 1, "the smtp-source leg sends to one domain");
    let (sock, mut guard) = start_smtp_sink()?;
    let addr = sock.to_string();
    let started = Instant::now();
    let out = Command::new("smtp-source")
        .args([
            "-d",
            "-s",
            &load.connections.to_string(),
            "-l",
            &load.size.to_string(),
        ])
        .args([
            "-m",
            &load.messages.to_string(),
            "-f",
            "bench@spate-bench.test",
            "-t",
            "user@example.test",
        ])
        .arg(&addr)
        .output()
        .context("running smtp-source")?;
    let elapsed = started.elapsed().as_secs_f64();
    guard.terminate(Duration::from_secs(2));
    anyhow::ensure!(
        out.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rate = load.messages as f64 / elapsed;
    Ok(LegResult {
        name: "smtp-source -> smtp-sink".into(),
        messages: load.messages,
        injected_ok: load.messages,
        delivered: load.messages,
        elapsed_s: elapsed,
        end_to_end_msgs_per_s: rate,
        injection_msgs_per_s: rate,
        domains: load.domains,
        ..LegResult::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_destination_of_several_gets_a_transport_to_its_sink() {
        let a: SocketAddr = "127.0.0.101:4001".parse().unwrap();
        let b: SocketAddr = "127.0.0.102:4002".parse().unwrap();
        assert_eq!(transport_map(&[a]), "");
        assert_eq!(
            transport_map(&[a, b]),
            "transport_maps = inline:{ d1.example.test=smtp:[127.0.0.101]:4001, \
             d2.example.test=smtp:[127.0.0.102]:4002 }\n"
        );
    }
}
