//! A seconds-long run of `spate-bench memory`: 200 deferred recipients
//! must all sit in the queue before memory is read.

mod common;
use common::spate_bin;

use std::time::Duration;

use spate_bench::memory::{MemoryConfig, run_memory};

#[test]
fn settles_with_every_recipient_queued_and_deferred() {
    let r = run_memory(&MemoryConfig {
        recipients: 200,
        size: 512,
        inject_connections: 4,
        inject_threads: 1,
        spate_bin: spate_bin(),
        settle_timeout: Duration::from_secs(30),
    })
    .unwrap();
    assert_eq!(r.injected_ok, 200, "{r:#?}");
    assert_eq!(r.queued_recipients, 200, "{r:#?}");
    assert_eq!(r.deferred, 200, "{r:#?}");
    assert_eq!((r.delivered, r.bounced), (0, 0), "{r:#?}");
    assert!(
        r.idle_rss_anon_kib > 0 && r.loaded_rss_anon_kib > 0,
        "{r:#?}"
    );
}
