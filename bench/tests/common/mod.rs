//! Helpers shared by spate-bench's integration tests.

#![allow(dead_code)] // reason: each test binary uses a different subset

/// The debug `spate` binary of this workspace, built if a lone
/// `cargo test -p spate-bench` has not built it yet.
pub fn spate_bin() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "spate", "--bin", "spate"])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p spate failed");
    // A relative CARGO_TARGET_DIR is relative to where cargo ran: `root`.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/spate")
}

/// A loopback port free at the time of asking, never the same twice
/// (see [`spate_bench::relay::free_port`]).
pub fn free_port() -> u16 {
    spate_bench::relay::free_port().unwrap()
}

/// A child process killed when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `config` as `dir/spate.toml`, starts the debug spate on it (its
/// log in `dir/spate.log`) and waits until `smtp` accepts connections.
pub fn run_spate(dir: &std::path::Path, config: &str, smtp: std::net::SocketAddr) -> Proc {
    let path = dir.join("spate.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("spate.log")).unwrap();
    let child = std::process::Command::new(spate_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(smtp).is_err() {
        assert!(std::time::Instant::now() < end, "spate did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    proc
}

/// A self-signed certificate for `localhost`, written as cert.pem and key.pem
/// under `dir` (with `prefix`).
pub fn certificate(
    dir: &std::path::Path,
    prefix: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join(format!("{prefix}cert.pem"));
    let key = dir.join(format!("{prefix}key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// One SMTP reply, all its lines.
pub fn read_reply(reader: &mut impl std::io::BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

/// Sends `cmd` (with its line end) and reads the reply.
pub fn exchange<S: std::io::Read + std::io::Write>(
    s: &mut std::io::BufReader<S>,
    cmd: &str,
) -> String {
    s.get_mut().write_all(cmd.as_bytes()).unwrap();
    s.get_mut().flush().unwrap();
    read_reply(s)
}
