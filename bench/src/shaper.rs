//! `spate-bench shaper`: rate-limit accuracy and CPU cost of the shaper's
//! rate controllers, with no network at all.
//!
//! Phase 1 (accuracy): N queues, each with distinct limits drawn from a
//! seeded RNG, each driven for a simulated interval by `shaper::sim` with an
//! endless backlog against a destination that accepts everything; reports the
//! error of each queue's attempted rate against its `max_msg_rate` (p50, p99,
//! max). Phase 2 (cost): the same N queues interleaved on one thread in time
//! order, as one shard would run them: per transaction one grant request and
//! one outcome (2% of them a 4xx reply classified by the "yahoo" list);
//! reports controller CPU time per recipient and per call.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spate::shaper::sim::{self, SimConfig};
use spate::shaper::{PatternList, QueueLimits, Rate, RateController, Wait, builtin};

/// Arguments of `spate-bench shaper`.
#[derive(clap::Args, Debug, Clone)]
pub struct ShaperArgs {
    /// Number of queues, each with its own limits.
    #[arg(long, default_value_t = 10_000)]
    pub queues: usize,
    /// Simulated time per queue, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub seconds: u64,
    /// Lowest and highest max_msg_rate drawn, per hour (log-uniform).
    #[arg(long, default_value_t = 100.0)]
    pub min_rate_per_hour: f64,
    #[arg(long, default_value_t = 20_000.0)]
    pub max_rate_per_hour: f64,
    /// RNG seed for the limits (same seed, same queues).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Most queues accepted (memory: ~1 KiB each plus the simulation).
const QUEUES_MAX: usize = 1_000_000;

struct QueueSpec {
    limits: QueueLimits,
    rate: Rate,
}

fn draw_specs(args: &ShaperArgs) -> Vec<QueueSpec> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (lo, hi) = (args.min_rate_per_hour.ln(), args.max_rate_per_hour.ln());
    (0..args.queues)
        .map(|_| {
            let per_hour = rng.random_range(lo..=hi).exp();
            // Express the rate in the unit an operator would pick.
            let (count, per) = match rng.random_range(0..3u8) {
                0 if per_hour >= 3600.0 => ((per_hour / 3600.0).round(), Duration::from_secs(1)),
                1 if per_hour >= 60.0 => ((per_hour / 60.0).round(), Duration::from_secs(60)),
                _ => (per_hour.round(), Duration::from_secs(3600)),
            };
            let rate = Rate::new((count as u32).max(1), per);
            let mut limits = QueueLimits::default();
            limits.normal.max_msg_rate = Some(rate);
            limits.normal.max_smtp_out = rng.random_range(1..=50);
            limits.max_rcpt_per_transaction = rng.random_range(1..=100);
            limits.max_msg_per_connection = rng.random_range(10..=1000);
            QueueSpec { limits, rate }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted
        .get(rank.min(sorted.len() - 1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Runs the benchmark and prints its figures.
pub fn run(args: ShaperArgs) -> anyhow::Result<()> {
    if args.queues == 0 || args.queues > QUEUES_MAX {
        bail!("--queues must be 1..={QUEUES_MAX}");
    }
    if !(args.min_rate_per_hour >= 1.0 && args.max_rate_per_hour >= args.min_rate_per_hour) {
        bail!("need 1 <= --min-rate-per-hour <= --max-rate-per-hour");
    }
    let patterns = Arc::new(builtin("yahoo").context("built-in yahoo profile")?);
    let specs = draw_specs(&args);
    let duration_ms = args.seconds.saturating_mul(1000);

    // Phase 1: accuracy, one queue at a time through the full simulation.
    let config = SimConfig {
        duration_ms,
        ..SimConfig::default()
    };
    let mut errors = Vec::with_capacity(specs.len());
    let mut granted_total = 0u64;
    let mut events_total = 0u64;
    let started = Instant::now();
    for spec in &specs {
        let mut ctl = RateController::new(0, spec.limits.clone(), patterns.clone())?;
        let report = sim::run(&mut ctl, &config, 0, &mut |_| None);
        let expected = spec.rate.per_hour() * duration_ms as f64 / 3_600_000.0;
        errors.push(((report.granted as f64 - expected) / expected).abs() * 100.0);
        granted_total += report.granted;
        events_total += report.events;
    }
    let sim_elapsed = started.elapsed();
    errors.sort_by(f64::total_cmp);

    // Phase 2: controller cost, all queues interleaved in time order.
    let cost = measure_cost(&specs, &patterns, duration_ms)?;

    let sim_ns_per_rcpt = sim_elapsed.as_nanos() as f64 / granted_total.max(1) as f64;
    if args.json {
        let v = serde_json::json!({
            "queues": args.queues,
            "simulated_seconds": args.seconds,
            "rate_error_percent": {
                "p50": percentile(&errors, 50.0),
                "p99": percentile(&errors, 99.0),
                "max": errors.last().copied().unwrap_or(f64::NAN),
            },
            "recipients": granted_total,
            "sim_events": events_total,
            "sim_wall_s": sim_elapsed.as_secs_f64(),
            "sim_ns_per_recipient": sim_ns_per_rcpt,
            "controller_ns_per_recipient": cost.controller_ns_per_rcpt,
            "controller_ns_per_call": cost.controller_ns_per_call,
            "loop_ns_per_recipient": cost.loop_ns_per_rcpt,
            "cost_recipients": cost.recipients,
            "cost_calls": cost.calls,
            "timer_overhead_ns": cost.timer_overhead_ns,
        });
        println!("{v}");
    } else {
        println!(
            "spate-bench shaper: {} queues, {} s simulated each, seed {}",
            args.queues, args.seconds, args.seed
        );
        println!(
            "rate limits log-uniform {:.0}..{:.0}/h; max_smtp_out 1..50; rcpt/txn 1..100",
            args.min_rate_per_hour, args.max_rate_per_hour
        );
        println!();
        println!("accuracy (attempted vs max_msg_rate, endless backlog)");
        println!("  |error| p50        {:>10.4} %", percentile(&errors, 50.0));
        println!("  |error| p99        {:>10.4} %", percentile(&errors, 99.0));
        println!(
            "  |error| max        {:>10.4} %",
            errors.last().copied().unwrap_or(f64::NAN)
        );
        println!("  recipients         {granted_total:>10}");
        println!(
            "  sim wall time      {:>10.2} s  ({sim_ns_per_rcpt:.0} ns/recipient incl. simulated driver, {events_total} events)",
            sim_elapsed.as_secs_f64()
        );
        println!();
        println!("cost (all queues interleaved on one thread)");
        println!(
            "  controller         {:>10.1} ns/recipient",
            cost.controller_ns_per_rcpt
        );
        println!(
            "  controller         {:>10.1} ns/call  ({} calls, timer overhead {:.1} ns per timed section subtracted)",
            cost.controller_ns_per_call, cost.calls, cost.timer_overhead_ns
        );
        println!(
            "  loop incl. heap    {:>10.1} ns/recipient  ({} recipients)",
            cost.loop_ns_per_rcpt, cost.recipients
        );
    }
    Ok(())
}

struct Cost {
    controller_ns_per_rcpt: f64,
    controller_ns_per_call: f64,
    loop_ns_per_rcpt: f64,
    recipients: u64,
    calls: u64,
    timer_overhead_ns: f64,
}

fn timer_overhead_ns() -> f64 {
    const N: u32 = 1_000_000;
    let mut sink = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..N {
        let t = Instant::now();
        sink += t.elapsed();
    }
    std::hint::black_box(sink);
    started.elapsed().as_nanos() as f64 / f64::from(N)
}

fn measure_cost(
    specs: &[QueueSpec],
    patterns: &Arc<PatternList>,
    duration_ms: u64,
) -> anyhow::Result<Cost> {
    const FAILURE_REPLY: &str = "451 4.3.2 Internal error, please try again later";
    let mut ctls = specs
        .iter()
        .map(|s| RateController::new(0, s.limits.clone(), patterns.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> =
        (0..ctls.len()).map(|i| Reverse((0, i))).collect();
    let overhead = timer_overhead_ns();
    let mut inside = Duration::ZERO;
    let (mut calls, mut timed, mut recipients, mut transactions) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    while let Some(Reverse((now, i))) = heap.pop() {
        if now >= duration_ms {
            continue;
        }
        let Some(ctl) = ctls.get_mut(i) else { continue };
        let t = Instant::now();
        let answer = ctl.try_send_recipients(now, u32::MAX);
        let mut next = match answer {
            Ok(grant) => {
                transactions += 1;
                recipients += u64::from(grant.recipients);
                if transactions % 50 == 0 {
                    ctl.on_reply(now, FAILURE_REPLY);
                } else {
                    ctl.on_delivered(now, grant.granted_at_ms, grant.recipients);
                }
                calls += 1;
                now
            }
            Err(Wait::RateLimited { until_ms }) => until_ms,
            Err(other) => other.until_ms().unwrap_or(now + 1000),
        };
        inside += t.elapsed();
        timed += 1;
        calls += 1;
        if next == now && answer.is_err() {
            next += 1;
        }
        heap.push(Reverse((next, i)));
    }
    let total = started.elapsed();
    let controller_ns = (inside.as_nanos() as f64 - overhead * timed as f64).max(0.0);
    Ok(Cost {
        controller_ns_per_rcpt: controller_ns / recipients.max(1) as f64,
        controller_ns_per_call: controller_ns / calls.max(1) as f64,
        loop_ns_per_rcpt: total.as_nanos() as f64 / recipients.max(1) as f64,
        recipients,
        calls,
        timer_overhead_ns: overhead,
    })
}
