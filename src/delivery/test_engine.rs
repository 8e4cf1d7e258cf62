//! A one-shard engine on a fresh spool for unit tests of delivery logic:
//! no scheduler runs, so recipients stay where a test puts them.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::dns::{DnsOptions, DnsService};
use crate::queue::engine::{Engine, EngineDeps};
use crate::spool::{MessageId, MessageRef, NewMessage, NewRecipient, Ret, Spool, SpoolOptions};

const CONFIG: &str = r#"
[vmta.ip1]
source_ip = "127.0.0.2"
[vmta.ip2]
source_ip = "127.0.0.3"
[vmta.ip3]
source_ip = "127.0.0.4"
[pool.pool1]
vmtas = ["ip1", "ip2", "ip3"]
"#;

pub(crate) async fn append(spool: &Spool, rcpts: &[&str]) -> MessageRef {
    append_via(spool, "ip1", rcpts).await
}

/// Spools a message from a@b.test through `vmta_or_pool`, assigned to ip1.
pub(crate) async fn append_via(spool: &Spool, vmta_or_pool: &str, rcpts: &[&str]) -> MessageRef {
    append_message(spool, vmta_or_pool, "ip1", rcpts).await
}

/// Spools a small message from a@b.test to `rcpts`.
pub(crate) async fn append_message(
    spool: &Spool,
    vmta_or_pool: &str,
    vmta: &str,
    rcpts: &[&str],
) -> MessageRef {
    append_received(spool, 1_700_000_000_000, vmta_or_pool, vmta, rcpts).await
}

/// [`append_message`], received at `received_unix_ms` (the fixed time
/// above is long past: its deferred recipients expire and bounce).
pub(crate) async fn append_received(
    spool: &Spool,
    received_unix_ms: u64,
    vmta_or_pool: &str,
    vmta: &str,
    rcpts: &[&str],
) -> MessageRef {
    let recipients: Vec<NewRecipient<'_>> = rcpts
        .iter()
        .map(|r| NewRecipient {
            forward_path: r,
            orcpt: "",
            notify: 0,
        })
        .collect();
    let msg = NewMessage {
        received_unix_ms,
        reverse_path: "a@b.test",
        recipients: &recipients,
        ret: Ret::Unspecified,
        envid: "",
        vmta_or_pool,
        vmta,
        job_id: "",
        content: crate::spool::record::Content::One(b"Subject: x\r\n\r\nbody\r\n"),
    };
    spool.append_message(&msg).await.expect("append")
}

pub(crate) fn ready_ids(engine: &Engine, queue: &str) -> Vec<(MessageId, u32)> {
    engine
        .state
        .borrow()
        .queues
        .get(queue)
        .map_or(Vec::new(), |q| {
            q.ready.iter().map(|r| (r.message, r.index)).collect()
        })
}

/// Runs `test` with a one-shard engine on a fresh spool in `dir`.
pub(crate) fn with_engine<F: std::future::Future<Output = ()>>(
    dir: &std::path::Path,
    test: impl FnOnce(Rc<Engine>, Rc<Spool>) -> F,
) {
    let mut options = SpoolOptions::new(dir.join("spool"));
    options.segment_bytes = 1 << 20;
    let recovery = crate::spool::recover(&options, 1).expect("recover");
    let config = crate::config::load_str("t.toml", CONFIG, None).expect("config");
    let dns = DnsService::start(DnsOptions {
        nameservers: Some(vec!["127.0.0.1:9".parse().expect("addr")]),
        ..DnsOptions::default()
    })
    .expect("dns");
    let rt = compio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let spool = Rc::new(Spool::open(recovery.shared.clone(), 0).expect("open"));
        let engine = Engine::new(EngineDeps {
            shard: 0,
            config: Rc::new(RefCell::new(Arc::new(config))),
            spool: spool.clone(),
            dns: dns.client(),
            accounting: None,
            stats: Arc::default(),
            tls: crate::delivery::tls::connector().expect("tls"),
            mesh: None,
            source_disables: Arc::default(),
        });
        test(engine, spool.clone()).await;
        spool.close().await;
    });
}
