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
