//! From configuration to what a queue enforces.
//!
//! The shaper takes its own plain input types (it is pure and knows
//! nothing of the configuration format); this file maps a resolved
//! [`DomainPolicy`] and the configured pattern lists onto them. The router
//! takes `DomainPolicy::smtp_hosts` as it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::values::Rate as ConfigRate;
use crate::config::{Config, DomainPolicy, QueueMode, RuleScope};
use crate::shaper::{self, Actions, ModeAction, ModeLimits, PatternList, QueueLimits, Scope};

fn rate(r: &ConfigRate) -> Option<shaper::Rate> {
    match r {
        ConfigRate::Unlimited => None,
        ConfigRate::Limited { count, per } => Some(shaper::Rate::new(
            (*count).min(u64::from(u32::MAX)) as u32,
            *per,
        )),
    }
}

/// The shaper limits for one queue.
pub fn queue_limits(policy: &DomainPolicy) -> QueueLimits {
    QueueLimits {
        normal: ModeLimits {
            max_smtp_out: policy.max_smtp_out.max(1),
            max_msg_rate: rate(&policy.max_msg_rate),
            max_connect_rate: rate(&policy.max_connect_rate),
            retry_after: policy.retry_after.clone(),
        },
        backoff: ModeLimits {
            max_smtp_out: policy.backoff_max_smtp_out.max(1),
            max_msg_rate: rate(&policy.backoff_max_msg_rate),
            max_connect_rate: rate(&policy.max_connect_rate),
            retry_after: vec![policy.backoff_retry_after],
        },
        max_msg_per_connection: policy.max_msg_per_connection.max(1),
        max_rcpt_per_transaction: policy
            .max_rcpt_per_transaction
            .clamp(1, shaper::limits::RCPT_PER_GRANT_MAX),
        backoff_to_normal_after: policy.backoff_to_normal_after,
        backoff_to_normal_after_delivery: policy.backoff_to_normal_after_delivery,
        ramp_up: policy.backoff_ramp_up.min(Duration::from_secs(24 * 3600)),
    }
}

/// Compiles every pattern list a configuration can name: its own lists,
/// and the built-in ISP profiles it does not override.
pub fn pattern_lists(config: &Config) -> HashMap<String, Arc<PatternList>> {
    let mut out = HashMap::new();
    for name in shaper::BUILTIN_NAMES {
        if let Some(list) = shaper::builtin(name) {
            out.insert(name.to_string(), Arc::new(list));
        }
    }
    for (name, list) in &config.pattern_lists {
        let rules = list.rules.iter().map(|r| {
            let actions = Actions {
                mode: r.mode.map(|m| match m {
                    QueueMode::Backoff => ModeAction::Backoff,
                    QueueMode::Normal => ModeAction::Normal,
                }),
                bounce_category: r.bounce_category,
                disable_source_ip: r
                    .disable_source_ip
                    .then(|| r.reenable_after.unwrap_or(Duration::from_secs(3600))),
                defer_queue: r.defer_queue,
                scope: Some(match r.scope {
                    RuleScope::Queue => Scope::Queue,
                    RuleScope::Recipient => Scope::Recipient,
                }),
            };
            (r.reply.as_str().to_string(), actions)
        });
        match PatternList::from_rules(name, rules) {
            Ok(list) => {
                out.insert(name.clone(), Arc::new(list));
            }
            Err(e) => tracing::error!(list = %name, error = %e, "pattern list not usable"),
        }
    }
    out
}

/// An empty list, for queues whose policy names none.
pub fn empty_pattern_list() -> Arc<PatternList> {
    // "none" with no rules is a valid list; failing here is our bug.
    Arc::new(
        PatternList::from_rules::<&str>("none", []).expect("an empty list named none is valid"),
    )
}
