//! A seconds-long run of `spate-bench conns`: 50 held connections over two
//! sink addresses and two vMTAs, spate started with a soft open-files limit
//! of 256 that it must raise.

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
        vmtas: 2,
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
    assert!(r.peak_established_out >= 50, "{r:#?}");
    assert_eq!(r.delivered, 150);
    // spate raised its soft limit from 256 to the hard limit.
    assert!(r.spate_nofile_soft.is_some_and(|s| s > 256), "{r:#?}");
    assert_eq!(r.fd_exhausted_total, 0);
    assert!(r.sink_connections >= 50);
}
