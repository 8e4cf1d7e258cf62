//! Simulation and property tests of the rate controller: simulated hours of
//! traffic against scripted destinations, checking the delivered rate, the
//! connection bound, when Backoff starts and ends, and the ramp back.
#![allow(
    clippy::field_reassign_with_default,
    reason = "tests change one field of the defaults at a time; that reads clearest"
)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use spate::shaper::sim::{self, Demand, SimConfig};
use spate::shaper::{
    Actions, Mode, ModeAction, ModeCause, PatternList, QueueLimits, Rate, RateController, builtin,
};

const HOUR_MS: u64 = 3_600_000;
const MIN_MS: u64 = 60_000;
const TSS04: &str = "421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes";

fn limits_with_rate(rate: Option<Rate>, max_smtp_out: u32) -> QueueLimits {
    let mut l = QueueLimits::default();
    l.normal.max_msg_rate = rate;
    l.normal.max_smtp_out = max_smtp_out;
    l
}

fn yahoo() -> Arc<PatternList> {
    Arc::new(builtin("yahoo").unwrap())
}

fn run_accepting(limits: QueueLimits, config: &SimConfig) -> (sim::SimReport, RateController) {
    let mut ctl = RateController::new(0, limits, yahoo()).unwrap();
    let report = sim::run(&mut ctl, config, 0, &mut |_| None);
    (report, ctl)
}

fn expected_in(rate: Rate, duration_ms: u64) -> f64 {
    rate.per_hour() * duration_ms as f64 / HOUR_MS as f64
}

#[test]
fn delivered_rate_within_5_percent_of_max_msg_rate_for_an_hour() {
    let rates = [
        Rate::new(60, Duration::from_secs(3600)),
        Rate::new(1000, Duration::from_secs(3600)),
        Rate::new(2400, Duration::from_secs(86_400)),
        Rate::new(500, Duration::from_secs(60)),
        Rate::new(10, Duration::from_secs(1)),
        Rate::new(100, Duration::from_secs(1)),
    ];
    for rate in rates {
        // An hour each; the fastest rate for six minutes, which is already
        // 36,000 recipients (an hour of it costs ~10 s in a debug build).
        let duration_ms = if rate.per_hour() > 100_000.0 {
            HOUR_MS / 10
        } else {
            HOUR_MS
        };
        let config = SimConfig {
            duration_ms,
            ..SimConfig::default()
        };
        let (report, _) = run_accepting(limits_with_rate(Some(rate), 20), &config);
        let expected = expected_in(rate, duration_ms);
        let error = (report.granted as f64 - expected) / expected;
        assert!(
            error.abs() <= 0.05,
            "{rate:?}: granted {} expected {expected:.0}",
            report.granted
        );
        // All accepted; only the transactions still in flight at the end differ.
        assert!(
            report.delivered <= report.granted && report.delivered * 100 >= report.granted * 99
        );
        // Smooth: every whole minute carries about a minute's share.
        let per_bucket = expected_in(rate, config.bucket_ms);
        let burst = (rate.per_hour() / 3600.0).floor().max(1.0);
        let buckets = &report.granted_per_bucket;
        for (i, &n) in buckets.iter().enumerate().skip(1).take(buckets.len() - 2) {
            let n = n as f64;
            assert!(
                n <= per_bucket * 1.05 + burst + 1.0 && n >= per_bucket * 0.95 - burst - 1.0,
                "{rate:?}: minute {i} carried {n}, expected ~{per_bucket:.1}"
            );
        }
    }
}

/// Regression: slow transactions (2 s) at a rate one connection cannot carry
/// must open more connections, not under-deliver.
#[test]
fn slow_peer_gets_enough_connections_to_meet_the_rate() {
    let rate = Rate::new(3500, Duration::from_secs(3600));
    let mut limits = limits_with_rate(Some(rate), 5);
    limits.max_rcpt_per_transaction = 1;
    let config = SimConfig {
        transaction_ms: 2000,
        ..SimConfig::default()
    };
    let (report, _) = run_accepting(limits, &config);
    let error = (report.granted as f64 - 3500.0) / 3500.0;
    assert!(error.abs() <= 0.05, "granted {}", report.granted);
    assert!(report.max_concurrent >= 2 && report.max_concurrent <= 5);
}

#[test]
fn never_above_max_smtp_out_and_saturates_it_when_unlimited() {
    for max in [1, 3, 20, 64] {
        let config = SimConfig {
            duration_ms: 2 * MIN_MS,
            ..SimConfig::default()
        };
        let (report, ctl) = run_accepting(limits_with_rate(None, max), &config);
        assert_eq!(report.max_concurrent, max, "max_smtp_out {max}");
        assert!(ctl.counters().connections_opened >= u64::from(max));
    }
}

#[test]
fn backoff_entered_on_the_first_matching_reply_and_not_before() {
    let limits = limits_with_rate(Some(Rate::new(36_000, Duration::from_secs(3600))), 10);
    let mut ctl = RateController::new(0, limits, yahoo()).unwrap();
    let mut first_throttle_ms = None;
    let mut dest = |now: u64| {
        if now < 10 * MIN_MS {
            // Replies that match no backoff rule must not change the mode.
            return (now % 7_000 < 200).then(|| "451 4.3.2 Internal error, try later".to_owned());
        }
        first_throttle_ms.get_or_insert(now);
        Some(TSS04.to_owned())
    };
    let config = SimConfig {
        duration_ms: 30 * MIN_MS,
        ..SimConfig::default()
    };
    let report = sim::run(&mut ctl, &config, 0, &mut dest);
    let first = first_throttle_ms.unwrap();
    let change = report.mode_changes.first().expect("a mode change");
    assert_eq!(change.at_ms, first);
    assert_eq!((change.from, change.to), (Mode::Normal, Mode::Backoff));
    match &change.cause {
        ModeCause::Reply {
            list,
            rule_index,
            reply,
            ..
        } => {
            assert_eq!((list.as_str(), *rule_index), ("yahoo", 0));
            assert!(reply.contains("[TSS04]"));
        }
        other => panic!("cause {other:?}"),
    }
    // Still throttled for 20 minutes: stays in Backoff (the timer restarts at
    // each matching reply), and attempts drop to the backoff rate (60/h).
    assert_eq!(report.mode_changes.len(), 1, "{:?}", report.mode_changes);
    let after: u64 = report.granted_per_bucket.iter().skip(12).take(18).sum();
    assert!(
        after <= 18 + 2,
        "granted {after} in 18 minutes of Backoff at 60/h"
    );
    assert!(after >= 16, "backoff rate starved: {after}");
    assert_eq!(ctl.mode(), Mode::Backoff);
}

/// Per-recipient throttles never change the mode, even if the operator's
/// list has a rule that would back off on them.
#[test]
fn per_recipient_throttles_never_back_off() {
    let gmail_throttle = "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\r\n450 4.2.1 prevents additional messages from being delivered. - gsmtp";
    let greedy = Actions {
        mode: Some(ModeAction::Backoff),
        ..Actions::default()
    };
    for list in [
        builtin("gmail").unwrap(),
        PatternList::from_rules("greedy", [(r"4\.2\.1", greedy)]).unwrap(),
    ] {
        let limits = limits_with_rate(Some(Rate::new(10, Duration::from_secs(1))), 5);
        let mut ctl = RateController::new(0, limits, Arc::new(list)).unwrap();
        let mut n = 0u64;
        let mut dest = |_| {
            n += 1;
            (n % 2 == 0).then(|| gmail_throttle.to_owned())
        };
        let report = sim::run(&mut ctl, &SimConfig::default(), 0, &mut dest);
        assert!(report.mode_changes.is_empty(), "{:?}", report.mode_changes);
        assert!(ctl.counters().per_recipient_throttles > 1000);
        let expected = 36_000.0;
        assert!(
            (report.granted as f64 - expected).abs() / expected <= 0.05,
            "{}",
            report.granted
        );
    }
}

/// Normal 3600/h, Backoff 360/h, backoff_to_normal_after 10 min, ramp 30 min.
/// One throttle at ~5 min: Backoff until ~15 min, then linear 360 → 3600/h
/// until ~45 min. Each minute's attempts follow the integral of that curve.
#[test]
fn ramp_up_follows_the_documented_linear_curve() {
    let mut limits = limits_with_rate(Some(Rate::new(3600, Duration::from_secs(3600))), 10);
    limits.backoff.max_msg_rate = Some(Rate::new(360, Duration::from_secs(3600)));
    limits.backoff_to_normal_after = Some(Duration::from_secs(600));
    limits.backoff_to_normal_after_delivery = false;
    limits.ramp_up = Duration::from_secs(1800);
    let mut ctl = RateController::new(0, limits, yahoo()).unwrap();
    let mut throttled_at = None;
    let mut dest = |now: u64| {
        if now >= 5 * MIN_MS && throttled_at.is_none() {
            throttled_at = Some(now);
            return Some(TSS04.to_owned());
        }
        None
    };
    let config = SimConfig {
        duration_ms: HOUR_MS,
        ..SimConfig::default()
    };
    let report = sim::run(&mut ctl, &config, 0, &mut dest);
    let t0 = throttled_at.unwrap() as f64;
    let kinds: Vec<_> = report
        .mode_changes
        .iter()
        .map(|c| (c.to, c.cause.clone()))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert_eq!(kinds[1], (Mode::Normal, ModeCause::BackoffExpired));
    assert_eq!(report.mode_changes[1].at_ms as f64, t0 + 600_000.0);
    let ramp_start = t0 + 600_000.0;
    // The documented curve, in recipients per ms.
    let rate_at = |t: f64| -> f64 {
        let per_hour = if t < 0.0 {
            0.0
        } else if t < t0 {
            3600.0
        } else if t < ramp_start {
            360.0
        } else if t < ramp_start + 1_800_000.0 {
            360.0 + (3600.0 - 360.0) * (t - ramp_start) / 1_800_000.0
        } else {
            3600.0
        };
        per_hour / 3_600_000.0
    };
    let integral = |a: f64, b: f64| -> f64 {
        let steps = 600;
        let h = (b - a) / steps as f64;
        (0..steps)
            .map(|i| rate_at(a + (i as f64 + 0.5) * h) * h)
            .sum()
    };
    // Compare 3-minute windows (so one recipient of jitter is small).
    let windows: Vec<u64> = report
        .granted_per_bucket
        .chunks(3)
        .map(|c| c.iter().sum())
        .collect();
    for (w, &got) in windows.iter().enumerate().take(19) {
        let a = (w as f64) * 180_000.0;
        let want = integral(a, a + 180_000.0);
        let tolerance = want * 0.05 + 2.0;
        assert!(
            (got as f64 - want).abs() <= tolerance,
            "window {w} ({}-{} min): got {got}, curve says {want:.1}",
            w * 3,
            w * 3 + 3
        );
    }
}

/// A reload halfway through changes the rate, keeps counters and the mode.
#[test]
fn reload_keeps_counters_and_mode_and_applies_the_new_rate() {
    let rate1 = Rate::new(7200, Duration::from_secs(3600));
    let rate2 = Rate::new(1800, Duration::from_secs(3600));
    let mut ctl = RateController::new(0, limits_with_rate(Some(rate1), 10), yahoo()).unwrap();
    let half = SimConfig {
        duration_ms: HOUR_MS / 2,
        ..SimConfig::default()
    };
    let first = sim::run(&mut ctl, &half, 0, &mut |_| None);
    ctl.set_mode(HOUR_MS / 2, Mode::Backoff);
    ctl.set_mode(HOUR_MS / 2, Mode::Normal);
    let before = *ctl.counters();
    let mut reloaded = limits_with_rate(Some(rate2), 10);
    reloaded.ramp_up = Duration::ZERO;
    ctl.reconfigure(HOUR_MS / 2, reloaded, yahoo()).unwrap();
    assert_eq!(*ctl.counters(), before, "reload must not touch counters");
    assert_eq!(ctl.history().count(), 2);
    let second = sim::run(&mut ctl, &half, HOUR_MS / 2, &mut |_| None);
    assert!(
        (first.granted as f64 - 3600.0).abs() <= 180.0,
        "{}",
        first.granted
    );
    assert!(
        (second.granted as f64 - 900.0).abs() <= 45.0,
        "{}",
        second.granted
    );
    assert_eq!(ctl.counters().delivered, first.delivered + second.delivered);
    assert_eq!(
        ctl.counters().recipients_granted,
        first.granted + second.granted
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, .. ProptestConfig::default() })]

    /// Any achievable rate is met within ±5% over an hour with steady demand,
    /// and the connection bound holds, whatever the per-transaction shape.
    #[test]
    fn any_rate_within_5_percent(
        count in 1u32..2000,
        per_s in prop::sample::select(vec![1u64, 60, 3600]),
        max_smtp_out in 1u32..30,
        max_rcpt in 1u32..200,
        transaction_ms in 20u64..400,
    ) {
        // Up to 10/s, so each simulated hour stays cheap in a debug build.
        let count = if per_s == 1 { count % 10 + 1 } else { count };
        let rate = Rate::new(count, Duration::from_secs(per_s));
        let capacity_per_hour =
            f64::from(max_smtp_out) * f64::from(max_rcpt) * 3_600_000.0 / (transaction_ms + 60) as f64;
        prop_assume!(rate.per_hour() <= capacity_per_hour / 2.0);
        prop_assume!(rate.per_hour() >= 20.0);
        let mut limits = limits_with_rate(Some(rate), max_smtp_out);
        limits.max_rcpt_per_transaction = max_rcpt;
        let config = SimConfig { transaction_ms, ..SimConfig::default() };
        let (report, _) = run_accepting(limits, &config);
        let expected = expected_in(rate, HOUR_MS);
        let error = (report.granted as f64 - expected) / expected;
        prop_assert!(error.abs() <= 0.05, "granted {} expected {:.0}", report.granted, expected);
        prop_assert!(report.max_concurrent <= max_smtp_out);
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

    /// Demand below the limit is served in full: the limiter never starves.
    #[test]
    fn demand_below_the_limit_is_served(demand_per_hour in 100.0f64..20_000.0) {
        let rate = Rate::new(40_000, Duration::from_secs(3600));
        let config = SimConfig { demand: Demand::PerHour(demand_per_hour), ..SimConfig::default() };
        let (report, _) = run_accepting(limits_with_rate(Some(rate), 5), &config);
        let error = (report.granted as f64 - demand_per_hour) / demand_per_hour;
        prop_assert!(error.abs() <= 0.05, "granted {} demand {:.0}", report.granted, demand_per_hour);
    }
}
