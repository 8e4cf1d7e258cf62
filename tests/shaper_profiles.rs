//! The shipped ISP profiles against their corpora of real-looking replies:
//! each case names the action and scope the profile must give it, and the
//! controller must then do exactly that to a queue.

use std::sync::Arc;

use serde::Deserialize;
use spate::shaper::profiles::parse_duration;
use spate::shaper::{
    BUILTIN_NAMES, BounceCategory, Mode, ModeAction, QueueLimits, RateController, Scope, Wait,
    builtin,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    #[serde(rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    reply: String,
    action: String,
    scope: String,
    bounce_category: Option<String>,
    reenable_after: Option<String>,
    #[serde(default)]
    per_recipient_throttle: bool,
    #[serde(default)]
    no_rule: bool,
}

fn corpus(name: &str) -> Corpus {
    let text = match name {
        "gmail" => include_str!("../src/shaper/profiles/corpus/gmail.toml"),
        "yahoo" => include_str!("../src/shaper/profiles/corpus/yahoo.toml"),
        "microsoft" => include_str!("../src/shaper/profiles/corpus/microsoft.toml"),
        other => panic!("no corpus for {other}"),
    };
    toml::from_str(text).unwrap_or_else(|e| panic!("corpus {name}: {e}"))
}

fn action_name(c: &spate::shaper::Classification) -> &'static str {
    let a = &c.actions;
    match (a.mode, a.disable_source_ip.is_some(), a.defer_queue) {
        (Some(ModeAction::Backoff), _, _) => "backoff",
        (Some(ModeAction::Normal), _, _) => "normal",
        (None, true, _) => "disable-source-ip",
        (None, false, true) => "defer-queue",
        (None, false, false) => "none",
    }
}

fn check_profile(name: &str) {
    let list = builtin(name).unwrap_or_else(|| panic!("builtin {name} missing"));
    let cases = corpus(name).cases;
    assert!(cases.len() >= 10, "{name}: corpus too small");
    let mut failures = Vec::new();
    let mut rules_hit = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let c = list.classify(&case.reply);
        if let Some(r) = c.rule_index {
            rules_hit.insert(r);
        }
        let want_category = case
            .bounce_category
            .as_deref()
            .map(|s| s.parse::<BounceCategory>().unwrap());
        let want_reenable = case
            .reenable_after
            .as_deref()
            .map(|s| parse_duration(s).unwrap());
        let want_scope: Scope = case.scope.parse().unwrap();
        let got = (
            action_name(&c),
            c.scope,
            c.actions.bounce_category,
            c.actions.disable_source_ip,
            c.per_recipient_throttle,
            c.rule_index.is_none(),
        );
        let want = (
            case.action.as_str(),
            want_scope,
            want_category,
            want_reenable,
            case.per_recipient_throttle,
            case.no_rule,
        );
        if got != want {
            failures.push(format!(
                "{name} case {i} (rule {:?}): got {got:?}, want {want:?}\n  {}",
                c.rule_index, case.reply
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every rule of the profile is exercised by at least one case.
    let unused: Vec<_> = (0..list.len()).filter(|r| !rules_hit.contains(r)).collect();
    assert!(
        unused.is_empty(),
        "{name}: rules {unused:?} have no corpus case"
    );
}

#[test]
fn gmail_corpus() {
    check_profile("gmail");
}

#[test]
fn yahoo_corpus() {
    check_profile("yahoo");
}

#[test]
fn microsoft_corpus() {
    check_profile("microsoft");
}

/// Feeds every corpus reply to a fresh controller and checks the queue-level
/// effect: Backoff exactly for "backoff" cases, a disabled vMTA exactly for
/// "disable-source-ip" cases, and nothing else changing the queue.
#[test]
fn corpus_replies_drive_the_controller() {
    for name in BUILTIN_NAMES {
        let list = Arc::new(builtin(name).unwrap());
        for case in corpus(name).cases {
            let mut ctl = RateController::new(1_000, QueueLimits::default(), list.clone()).unwrap();
            let outcome = ctl.on_reply(2_000, &case.reply);
            let want_backoff = case.action == "backoff";
            assert_eq!(
                ctl.mode() == Mode::Backoff,
                want_backoff,
                "{name}: {}",
                case.reply
            );
            assert_eq!(
                outcome.mode_change.is_some(),
                want_backoff,
                "{name}: {}",
                case.reply
            );
            let open = ctl.try_open_connection(2_000);
            if case.action == "disable-source-ip" {
                let after = parse_duration(case.reenable_after.as_deref().unwrap()).unwrap();
                let until = 2_000 + after.as_millis() as u64;
                assert_eq!(outcome.disable_source_ip_until_ms, Some(until));
                assert_eq!(open, Err(Wait::SourceIpDisabled { until_ms: until }));
                // Re-enabled by time alone.
                assert_eq!(ctl.try_open_connection(until), Ok(()));
            } else {
                assert_eq!(outcome.disable_source_ip_until_ms, None);
                assert_eq!(open, Ok(()), "{name}: {}", case.reply);
            }
        }
    }
}

#[test]
fn builtin_names_are_exact() {
    assert_eq!(BUILTIN_NAMES, ["gmail", "yahoo", "microsoft"]);
    for name in BUILTIN_NAMES {
        assert_eq!(builtin(name).unwrap().name(), name);
    }
    assert!(builtin("Gmail").is_none());
}
