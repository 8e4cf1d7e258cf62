//! Seconds-long runs of `spate-bench conns`: 50 held connections over two
//! sink addresses (one vMTA, so that every queue's share is exact), spate
//! started with a soft open-files limit of 256 that it must raise; and a
//! spate whose hard limit is too low for what it is asked to hold.

mod common;
use common::spate_bin;

use std::time::Duration;

use spate_bench::conns::{ConnsConfig, run_conns};

#[test]
fn holds_every_connection_and_keeps_answering() {
    let cfg = ConnsConfig {
        connections: 50,
        sink_processes: 1,
        sink_addrs: 2,
        vmtas: 1,
        hold: Duration::from_secs(2),
        inject_connections: 5,
        spate_soft_nofile: Some(256),
        spate_hard_nofile: None,
        spate_bin: spate_bin(),
        bench_bin: env!("CARGO_BIN_EXE_spate-bench").into(),
        drain_timeout: Duration::from_secs(20),
    };
    let r = run_conns(&cfg).unwrap();
    assert!(r.passed(), "{r:#?}");
    assert!(r.peak_held >= 50, "{r:#?}");
    assert_eq!(r.delivered, 150);
    // spate raised its soft limit from 256 to the hard limit.
    assert!(r.spate_nofile_soft.is_some_and(|s| s > 256), "{r:#?}");
    assert_eq!(r.fd_exhausted_total, 0);
    assert!(r.sink_connections >= 50);
}

#[test]
fn out_of_descriptors_waits_instead_of_failing() {
    // A hard limit of 200 leaves outbound connections 100 descriptors
    // (half, under twice the reserve): 120 wanted connections run short.
    let cfg = ConnsConfig {
        connections: 120,
        sink_processes: 1,
        sink_addrs: 2,
        vmtas: 1,
        hold: Duration::from_secs(1),
        inject_connections: 5,
        spate_soft_nofile: None,
        spate_hard_nofile: Some(200),
        spate_bin: spate_bin(),
        bench_bin: env!("CARGO_BIN_EXE_spate-bench").into(),
        drain_timeout: Duration::from_secs(30),
    };
    let r = run_conns(&cfg).unwrap();
    assert_eq!(r.spate_nofile_soft, Some(200), "{r:#?}");
    assert!(r.fd_exhausted_total > 0, "{r:#?}");
    assert!(r.peak_socket_fds <= 100, "{r:#?}");
    // Nothing deferred or lost, the listener and the admin API answered,
    // and the exhaustion was logged once, not per failure.
    assert_eq!(r.delivered, 360, "{r:#?}");
    assert_eq!((r.deferred, r.bounced), (0, 0), "{r:#?}");
    assert_eq!((r.ehlo_failed, r.admin_failed), (0, 0), "{r:#?}");
    assert_eq!(r.log_fd_lines, 1, "{r:#?}");
}
