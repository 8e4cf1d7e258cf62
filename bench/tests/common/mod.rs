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
