//! Rate controller behaviour, one rule at a time: caps, mode entry and exit,
//! operator overrides, defer/disable actions, records and snapshots, reload.
#![allow(
    clippy::field_reassign_with_default,
    reason = "tests change one field of the defaults at a time; that reads clearest"
)]

use std::sync::Arc;
use std::time::Duration;

use spate::shaper::{
    Actions, BounceCategory, Mode, ModeAction, ModeCause, PatternList, QueueLimits, Rate,
    RateController, Scope, Wait, builtin,
};

const TSS04: &str = "421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1";
const MIN_MS: u64 = 60_000;

fn list() -> Arc<PatternList> {
    let backoff = Actions {
        mode: Some(ModeAction::Backoff),
        ..Actions::default()
    };
    let normal = Actions {
        mode: Some(ModeAction::Normal),
        ..Actions::default()
    };
    let defer = Actions {
        defer_queue: true,
        ..Actions::default()
    };
    let disable = Actions {
        disable_source_ip: Some(Duration::from_secs(3600)),
        bounce_category: Some(BounceCategory::PolicyRelated),
        scope: Some(Scope::SourceIp),
        ..Actions::default()
    };
    Arc::new(
        PatternList::from_rules(
            "test",
            [
                (r"\[TSS04\]", backoff),
                (r"^250 welcome back", normal),
                (r"4\.3\.9 defer me", defer),
                (r"\(S3150\)", disable),
            ],
        )
        .unwrap(),
    )
}

fn ctl(limits: QueueLimits) -> RateController {
    RateController::new(0, limits, list()).unwrap()
}

#[test]
fn grants_are_capped_by_rcpt_per_transaction_and_rate() {
    let mut limits = QueueLimits::default();
    limits.max_rcpt_per_transaction = 7;
    limits.normal.max_msg_rate = Some(Rate::new(10, Duration::from_secs(1)));
    let mut c = ctl(limits);
    assert_eq!(c.try_send_recipients(1000, 50).map(|g| g.recipients), Ok(7));
    // Burst is one second's worth (10): 3 left, then wait 100 ms per recipient.
    assert_eq!(c.try_send_recipients(1000, 50).map(|g| g.recipients), Ok(3));
    assert_eq!(
        c.try_send_recipients(1000, 50),
        Err(Wait::RateLimited { until_ms: 1100 })
    );
    assert_eq!(c.try_send_recipients(1100, 50).map(|g| g.recipients), Ok(1));
    assert_eq!(c.try_send_recipients(1100, 0).map(|g| g.recipients), Ok(0));
}

#[test]
fn connections_bounded_and_closed_at_per_connection_cap() {
    let mut limits = QueueLimits::default();
    limits.normal.max_smtp_out = 2;
    limits.max_msg_per_connection = 3;
    let mut c = ctl(limits);
    assert_eq!(c.try_open_connection(0), Ok(()));
    assert_eq!(c.try_open_connection(0), Ok(()));
    assert_eq!(c.try_open_connection(0), Err(Wait::ConnectionLimit));
    assert!(!c.connection_should_close(0, 2));
    assert!(c.connection_should_close(0, 3));
    c.on_connection_closed(0);
    assert_eq!(c.try_open_connection(0), Ok(()));
}

#[test]
fn connect_rate_is_enforced() {
    let mut limits = QueueLimits::default();
    limits.normal.max_connect_rate = Some(Rate::new(1, Duration::from_secs(10)));
    let mut c = ctl(limits);
    assert_eq!(c.try_open_connection(0), Ok(()));
    assert_eq!(
        c.try_open_connection(5),
        Err(Wait::RateLimited { until_ms: 10_000 })
    );
    assert_eq!(c.try_open_connection(10_000), Ok(()));
}

#[test]
fn backoff_shrinks_limits_and_closes_excess_connections() {
    let mut c = ctl(QueueLimits::default()); // normal 20 conns; backoff 2 conns, 60/h
    for _ in 0..5 {
        c.try_open_connection(0).unwrap();
    }
    let outcome = c.on_reply(1000, TSS04);
    assert_eq!(c.mode(), Mode::Backoff);
    let change = outcome.mode_change.unwrap();
    assert_eq!(
        (change.at_ms, change.from, change.to),
        (1000, Mode::Normal, Mode::Backoff)
    );
    assert_eq!(
        change.cause,
        ModeCause::Reply {
            list: "test".into(),
            rule_index: 0,
            pattern: r"\[TSS04\]".into(),
            reply: TSS04.into()
        }
    );
    assert_eq!(
        change.cause.to_string(),
        format!(r"test[0] /\[TSS04\]/: {TSS04}")
    );
    assert!(c.connection_should_close(1000, 0));
    for _ in 0..3 {
        c.on_connection_closed(1000);
    }
    assert!(!c.connection_should_close(1000, 0));
    assert_eq!(c.try_open_connection(1000), Err(Wait::ConnectionLimit));
    let snap = c.snapshot(1000);
    assert_eq!(snap.effective.max_smtp_out, 2);
    assert_eq!(snap.effective.msg_rate_per_hour, Some(60.0));
    assert_eq!(snap.effective.retry_after, Duration::from_secs(20 * 60));
    assert_eq!(snap.since_ms, 1000);
    assert_eq!(snap.counters.backoff_entries, 1);
    // A second matching reply does not record a second change.
    assert!(c.on_reply(2000, TSS04).mode_change.is_none());
}

#[test]
fn backoff_ends_after_interval_since_last_matching_reply() {
    let mut limits = QueueLimits::default();
    limits.backoff_to_normal_after_delivery = false;
    let mut c = ctl(limits); // backoff_to_normal_after = 1h
    c.on_reply(0, TSS04);
    c.on_reply(30 * MIN_MS, TSS04); // restarts the clock
    assert_eq!(c.next_wakeup_ms(), Some(90 * MIN_MS));
    assert_eq!(c.snapshot(90 * MIN_MS - 1).mode, Mode::Backoff);
    let snap = c.snapshot(90 * MIN_MS);
    assert_eq!(snap.mode, Mode::Normal);
    assert_eq!(snap.since_ms, 90 * MIN_MS);
    assert_eq!(
        snap.reason.map(|r| r.cause),
        Some(ModeCause::BackoffExpired)
    );
    // The ramp starts at the backoff's end.
    assert_eq!(snap.ramp_ms, Some((90 * MIN_MS, 120 * MIN_MS)));
    assert_eq!(snap.effective.max_smtp_out, 2);
    assert_eq!(c.snapshot(105 * MIN_MS).effective.max_smtp_out, 11); // 2 + 18/2
    assert_eq!(c.snapshot(120 * MIN_MS).effective.max_smtp_out, 20);
    assert_eq!(c.snapshot(120 * MIN_MS).ramp_ms, None);
}

#[test]
fn never_configured_backoff_has_no_timer() {
    let mut limits = QueueLimits::default();
    limits.backoff_to_normal_after = None;
    limits.backoff_to_normal_after_delivery = false;
    let mut c = ctl(limits);
    c.on_reply(0, TSS04);
    assert_eq!(c.next_wakeup_ms(), None);
    assert_eq!(c.snapshot(100 * 3_600_000).mode, Mode::Backoff);
}

#[test]
fn only_deliveries_granted_during_backoff_end_it() {
    let mut c = ctl(QueueLimits::default());
    let early = c.try_send_recipients(0, 1).unwrap();
    c.on_reply(1000, TSS04);
    // A transaction begun before the throttle succeeds afterwards: no exit.
    c.on_delivered(1500, early.granted_at_ms, 1);
    assert_eq!(c.mode(), Mode::Backoff);
    let late = c.try_send_recipients(2000, 1).unwrap();
    c.on_delivered(2500, late.granted_at_ms, 1);
    assert_eq!(c.mode(), Mode::Normal);
    assert_eq!(
        c.history().last().map(|h| h.cause.clone()),
        Some(ModeCause::Delivered)
    );
    assert_eq!(c.counters().delivered, 2);
}

#[test]
fn a_normal_rule_returns_to_normal() {
    let mut c = ctl(QueueLimits::default());
    c.on_reply(0, TSS04);
    let outcome = c.on_reply(10, "250 welcome back");
    assert_eq!(outcome.mode_change.map(|m| m.to), Some(Mode::Normal));
    assert_eq!(c.mode(), Mode::Normal);
}

#[test]
fn operator_backoff_is_sticky_until_operator_normal() {
    let mut c = ctl(QueueLimits::default());
    let change = c.set_mode(0, Mode::Backoff).unwrap();
    assert_eq!(change.cause, ModeCause::Operator);
    let g = c.try_send_recipients(10, 1).unwrap();
    c.on_delivered(20, g.granted_at_ms, 1);
    c.on_reply(30, "250 welcome back");
    assert_eq!(c.snapshot(10 * 3_600_000).mode, Mode::Backoff);
    assert!(c.snapshot(10 * 3_600_000).manual);
    assert!(c.set_mode(10 * 3_600_000, Mode::Normal).is_some());
    assert_eq!(c.mode(), Mode::Normal);
    assert!(c.set_mode(10 * 3_600_000, Mode::Normal).is_none());
    // Operator normal does not disable protection: the next throttle backs off.
    c.on_reply(10 * 3_600_000 + 1, TSS04);
    assert_eq!(c.mode(), Mode::Backoff);
}

#[test]
fn pause_and_resume() {
    let mut c = ctl(QueueLimits::default());
    c.try_open_connection(0).unwrap();
    c.pause();
    assert_eq!(c.try_open_connection(0), Err(Wait::Paused));
    assert_eq!(c.try_send_recipients(0, 1), Err(Wait::Paused));
    assert!(c.connection_should_close(0, 0));
    assert!(c.snapshot(0).paused);
    c.resume();
    assert!(c.try_send_recipients(0, 1).is_ok());
}

#[test]
fn defer_queue_waits_for_the_retry_time_of_the_mode() {
    let mut c = ctl(QueueLimits::default());
    let outcome = c.on_reply(1000, "451 4.3.9 defer me");
    let until = 1000 + 5 * MIN_MS; // first normal retry_after
    assert_eq!(outcome.deferred_until_ms, Some(until));
    assert_eq!(
        c.try_send_recipients(2000, 1),
        Err(Wait::Deferred { until_ms: until })
    );
    assert_eq!(c.next_wakeup_ms(), Some(until));
    assert!(c.try_send_recipients(until, 1).is_ok());
    // In Backoff the backoff retry (20 min) applies.
    c.on_reply(until, TSS04);
    let outcome = c.on_reply(until, "451 4.3.9 defer me");
    assert_eq!(outcome.deferred_until_ms, Some(until + 20 * MIN_MS));
}

#[test]
fn disable_source_ip_blocks_until_reenable() {
    let mut c = ctl(QueueLimits::default());
    c.try_open_connection(0).unwrap();
    let outcome = c.on_reply(500, "550 5.7.1 ... on our block list (S3150).");
    assert_eq!(outcome.disable_source_ip_until_ms, Some(500 + 3_600_000));
    assert_eq!(outcome.bounce_category, Some(BounceCategory::PolicyRelated));
    assert_eq!(outcome.classification.scope, Scope::SourceIp);
    assert!(c.connection_should_close(600, 0));
    assert_eq!(
        c.try_open_connection(600),
        Err(Wait::SourceIpDisabled {
            until_ms: 3_600_500
        })
    );
    assert_eq!(c.snapshot(600).disabled_until_ms, Some(3_600_500));
    assert_eq!(c.mode(), Mode::Normal, "disabling is not a mode change");
    assert_eq!(c.try_open_connection(3_600_500), Ok(()));
    assert_eq!(c.counters().source_ip_disables, 1);
}

#[test]
fn reconfigure_keeps_state_and_rejects_bad_limits() {
    let mut c = ctl(QueueLimits::default());
    c.try_open_connection(0).unwrap();
    c.try_send_recipients(0, 10).unwrap();
    c.on_reply(10, TSS04);
    let before = c.snapshot(20);
    let mut bad = QueueLimits::default();
    bad.normal.max_smtp_out = 0;
    assert!(c.reconfigure(20, bad, list()).is_err());
    assert_eq!(c.snapshot(20), before);
    let mut new = QueueLimits::default();
    new.backoff.max_smtp_out = 4;
    c.reconfigure(20, new, Arc::new(builtin("yahoo").unwrap()))
        .unwrap();
    let after = c.snapshot(20);
    assert_eq!(after.mode, Mode::Backoff);
    assert_eq!(after.since_ms, before.since_ms);
    assert_eq!(after.counters, before.counters);
    assert_eq!(after.active_connections, 1);
    assert_eq!(after.effective.max_smtp_out, 4);
}

#[test]
fn mode_history_is_bounded() {
    let mut c = ctl(QueueLimits::default());
    for i in 0..50 {
        c.on_reply(i * 2, TSS04);
        c.on_reply(i * 2 + 1, "250 welcome back");
    }
    assert_eq!(c.counters().mode_changes, 100);
    assert_eq!(c.history().count(), spate::shaper::report::MODE_HISTORY_MAX);
}

#[test]
fn long_reply_is_truncated_in_the_record() {
    let mut c = ctl(QueueLimits::default());
    let reply = format!("{TSS04} {}", "ü".repeat(2000));
    let change = c.on_reply(0, &reply).mode_change.unwrap();
    let ModeCause::Reply { reply: kept, .. } = change.cause else {
        panic!()
    };
    assert!(kept.len() <= spate::shaper::report::REASON_REPLY_BYTES_MAX);
    assert!(kept.starts_with("421 4.7.0 [TSS04]"));
}
