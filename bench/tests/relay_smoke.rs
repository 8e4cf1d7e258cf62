//! A seconds-long run of the relay harness, to keep it honest.

mod common;
use common::spate_bin;

use spate_bench::relay::{Load, run_raw, run_spate};

fn small_load() -> Load {
    Load {
        messages: 300,
        connections: 5,
        per_connection: 20,
        size: 2048,
        inject_threads: 1,
        rate: None,
    }
}

#[test]
fn raw_leg_delivers_everything() {
    let r = run_raw(&small_load()).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.injected_ok, 300);
    assert_eq!(r.delivered, 300);
    assert!(r.end_to_end_msgs_per_s > 0.0);
    assert_eq!(r.ack_latency.count, 300);
    assert_eq!(r.e2e_latency.count, 300);
}

#[test]
fn spate_leg_delivers_everything() {
    let bin = spate_bin();
    let r = run_spate(&small_load(), &bin, None, false).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.delivered, 300);
    assert!(r.cpu_s.is_some() && r.peak_rss_kib.is_some());
    // Every message waited for one commit. (fdatasyncs also serve the
    // delivery states, so their number is not bounded by the messages.)
    let spool = r.spool.expect("spool figures from spate's metrics");
    assert_eq!(spool.commits, 300);
    assert!(spool.fsyncs >= 1, "{spool:?}");
    assert!(spool.commit_mean_ms > 0.0 && spool.fsync_mean_ms > 0.0);
}

#[test]
fn spate_leg_with_delivery_paused_measures_injection_only() {
    let bin = spate_bin();
    let r = run_spate(&small_load(), &bin, None, true).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.injected_ok, 300);
    assert_eq!(r.delivered, 0, "a paused spate delivered");
    assert!(r.injection_msgs_per_s > 0.0);
    assert_eq!(r.ack_latency.count, 300);
}

#[test]
fn spate_leg_fails_clearly_when_the_binary_is_missing() {
    let err = run_spate(
        &small_load(),
        std::path::Path::new("/nonexistent/spate"),
        None,
        false,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}

#[test]
#[ignore = "installs and starts a private Postfix (needs root and apt); run with --ignored"]
fn postfix_leg_delivers_everything() {
    let r = spate_bench::relay::run_postfix(&small_load()).unwrap();
    assert_eq!(r.error, None);
    assert_eq!(r.delivered, 300);
    assert!(r.cpu_s.is_some_and(|c| c > 0.0));
}
