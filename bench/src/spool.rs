//! `spate-bench spool`: spool append throughput with group commit against an
//! fsync per message, and recovery time for a large queue.
//!
//! Each scenario opens a fresh spool in its own directory, runs `W` writer
//! tasks on one compio runtime (as one shard would), each appending messages
//! of the given size back to back and awaiting each commit, for a fixed
//! duration; it prints committed messages/s, MB/s and commit latency
//! percentiles. The recovery scenario writes N one-recipient messages (sync
//! off, to build the spool quickly), drops everything, and times `recover`.
//! Page cache stays warm (we do not drop caches on a shared machine).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use spate::spool::{NewMessage, NewRecipient, Ret, Spool, SpoolOptions, SyncMode, recover};

#[derive(clap::Args, Debug, Clone)]
pub struct SpoolArgs {
    /// Directory for the benchmark spools (default: a new dir under /tmp).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Message sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1024usize, 2048, 10240, 102400])]
    pub sizes: Vec<usize>,
    /// Concurrent writer tasks.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 16, 256])]
    pub writers: Vec<usize>,
    /// Seconds per throughput scenario.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Segment size in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub segment_bytes: u64,
    /// Skip the fsync-per-message comparison.
    #[arg(long)]
    pub skip_each: bool,
    /// Also run with sync off (the CPU ceiling of the append path).
    #[arg(long)]
    pub with_none: bool,
    /// Queued messages for the recovery measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub recovery_messages: u64,
    /// Content size of the recovery messages.
    #[arg(long, default_value_t = 1024)]
    pub recovery_size: usize,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    pub json: bool,
}

struct Row {
    mode: &'static str,
    size: usize,
    writers: usize,
    messages: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

pub fn run(args: SpoolArgs) -> anyhow::Result<()> {
    let base = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("spate-bench-spool-{}", std::process::id()))
    });
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    if !args.json {
        println!(
            "spool append benchmark in {} (one compio runtime, one shard)",
            base.display()
        );
        println!(
            "{:<7} {:>8} {:>8} {:>10} {:>12} {:>9} {:>9} {:>9}",
            "sync", "size", "writers", "messages", "msgs/s", "MB/s", "p50 µs", "p99 µs"
        );
    }
    let mut modes = vec![(SyncMode::Group, "group")];
    if !args.skip_each {
        modes.push((SyncMode::EachRecord, "each"));
    }
    if args.with_none {
        modes.push((SyncMode::None, "none"));
    }
    for &(mode, name) in &modes {
        for &size in &args.sizes {
            for &writers in &args.writers {
                let row = scenario(&base, &args, mode, name, size, writers)?;
                print_row(&row, args.json);
            }
        }
    }
    if args.recovery_messages > 0 {
        recovery(&base, &args)?;
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

fn print_row(r: &Row, json: bool) {
    let rate = r.messages as f64 / r.secs;
    let mbs = rate * r.size as f64 / 1e6;
    if json {
        println!(
            "{}",
            serde_json::json!({"scenario": "append", "sync": r.mode, "size": r.size, "writers": r.writers,
                "messages": r.messages, "seconds": r.secs, "msgs_per_s": rate, "mb_per_s": mbs,
                "p50_us": r.p50_us, "p99_us": r.p99_us})
        );
    } else {
        println!(
            "{:<7} {:>8} {:>8} {:>10} {:>12.0} {:>9.1} {:>9} {:>9}",
            r.mode, r.size, r.writers, r.messages, rate, mbs, r.p50_us, r.p99_us
        );
    }
}

fn scenario(
    base: &Path,
    args: &SpoolArgs,
    mode: SyncMode,
    name: &'static str,
    size: usize,
    writers: usize,
) -> anyhow::Result<Row> {
    let dir = base.join(format!("{name}-{size}-{writers}"));
    let mut opts = SpoolOptions::new(&dir);
    opts.sync = mode;
    opts.segment_bytes = args.segment_bytes;
    let rec = recover(&opts, 1)?;
    let rt = compio::runtime::Runtime::new()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let (messages, secs, hist) = rt.block_on(async {
        let spool = Spool::open(rec.shared.clone(), 0)?;
        let content: Rc<[u8]> = vec![b'x'; size].into();
        let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(
            1, 60_000_000, 3,
        )?));
        let count = Rc::new(Cell::new(0u64));
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let (spool, content, hist, count) =
                (spool.clone(), content.clone(), hist.clone(), count.clone());
            tasks.push(compio::runtime::spawn(async move {
                let r = [NewRecipient {
                    forward_path: "user@example.com",
                    orcpt: "",
                    notify: 0,
                }];
                while Instant::now() < deadline {
                    let msg = NewMessage {
                        received_unix_ms: 0,
                        reverse_path: "sender@example.com",
                        recipients: &r,
                        ret: Ret::Unspecified,
                        envid: "",
                        vmta_or_pool: "ip1",
                        vmta: "ip1",
                        job_id: "",
                        content: spate::spool::record::Content::One(&content),
                    };
                    let t = Instant::now();
                    spool.append_message(&msg).await?;
                    let _ = hist
                        .borrow_mut()
                        .record(t.elapsed().as_micros().max(1) as u64);
                    count.set(count.get() + 1);
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await
                .map_err(|_| anyhow::anyhow!("writer task panicked"))??;
        }
        let secs = started.elapsed().as_secs_f64();
        spool.close().await;
        let h = hist.borrow().clone();
        anyhow::Ok((count.get(), secs, h))
    })?;
    drop(rec);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        mode: name,
        size,
        writers,
        messages,
        secs,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    })
}

/// Anonymous (heap) resident memory of this process, in bytes.
fn rss_anon_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn recovery(base: &Path, args: &SpoolArgs) -> anyhow::Result<()> {
    let dir = base.join("recovery");
    let mut opts = SpoolOptions::new(&dir);
    opts.segment_bytes = args.segment_bytes;
    opts.sync = SyncMode::None;
    let n = args.recovery_messages;
    let build = Instant::now();
    {
        let rec = recover(&opts, 1)?;
        let rt = compio::runtime::Runtime::new()?;
        rt.block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0)?;
            let content: Rc<[u8]> = vec![b'y'; args.recovery_size].into();
            let next = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let (spool, content, next) = (spool.clone(), content.clone(), next.clone());
                tasks.push(compio::runtime::spawn(async move {
                    loop {
                        let i = next.get();
                        if i >= n {
                            break;
                        }
                        next.set(i + 1);
                        let rcpt = format!("user{}@domain{}.example", i, i % 100);
                        let r = [NewRecipient {
                            forward_path: &rcpt,
                            orcpt: "",
                            notify: 0,
                        }];
                        let msg = NewMessage {
                            received_unix_ms: i,
                            reverse_path: "sender@example.com",
                            recipients: &r,
                            ret: Ret::Unspecified,
                            envid: "",
                            vmta_or_pool: "ip1",
                            vmta: "ip1",
                            job_id: "",
                            content: spate::spool::record::Content::One(&content),
                        };
                        spool.append_message(&msg).await?;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await
                    .map_err(|_| anyhow::anyhow!("writer task panicked"))??;
            }
            spool.close().await;
            anyhow::Ok(())
        })?;
    }
    let built_s = build.elapsed().as_secs_f64();
    let anon_before = rss_anon_bytes();
    let rec = recover(
        &SpoolOptions {
            sync: SyncMode::Group,
            ..opts.clone()
        },
        1,
    )?;
    let anon_after = rss_anon_bytes();
    let r = &rec.report;
    let per_msg = anon_after.saturating_sub(anon_before) as f64 / rec.messages.len().max(1) as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"scenario": "recovery", "messages": rec.messages.len(), "recipients": r.recipients_live,
                "segments": r.segments, "records": r.records, "bytes_scanned": r.bytes_scanned,
                "seconds": r.elapsed.as_secs_f64(), "build_seconds": built_s, "heap_bytes_per_message": per_msg})
        );
    } else {
        println!(
            "\nrecovery: {} live messages ({} recipients) from {} segments, {} records, {:.0} MB scanned in {:.2} s \
             ({:.0} msgs/s); recovered index holds {:.0} heap bytes per message; spool built in {:.1} s",
            rec.messages.len(),
            r.recipients_live,
            r.segments,
            r.records,
            r.bytes_scanned as f64 / 1e6,
            r.elapsed.as_secs_f64(),
            rec.messages.len() as f64 / r.elapsed.as_secs_f64(),
            per_msg,
            built_s
        );
    }
    anyhow::ensure!(
        rec.messages.len() as u64 == n,
        "recovered {} of {n} messages",
        rec.messages.len()
    );
    drop(rec);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
