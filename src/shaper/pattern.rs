//! SMTP pattern lists: ordered reply rules and what each match asks for.
//!
//! A rule is a case-insensitive regular expression over the whole reply text
//! (code, enhanced code and text; `.` also matches the line breaks of a
//! multi-line reply) with actions: a mode change, a bounce category,
//! `disable_source_ip` with its re-enable delay, `defer_queue`, and a declared
//! scope (whose fault the reply says it is). The first matching rule wins.
//!
//! Besides the operator's rules, [`PatternList::classify`] recognises
//! per-recipient throttles (Gmail `450-4.2.1 ... receiving mail at a rate`):
//! such a reply concerns one mailbox, so its queue-level actions (mode,
//! defer, disable) are suppressed whatever rule matched. Applying the actions
//! is the controller's job; this file only decides.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use regex::{Regex, RegexBuilder};

/// Most rules in one list; a longer list is a configuration mistake and would
/// make every reply cost more to classify.
pub const PATTERN_RULES_MAX: usize = 1000;

/// Compiled size bound for one rule's regex (the regex crate's `size_limit`).
pub const PATTERN_REGEX_BYTES_MAX: usize = 1 << 20;

/// Longest reply text classified; the rest is ignored. A reply has at most
/// `SMTP_REPLY_LINES_MAX` lines of `SMTP_REPLY_LINE_BYTES_MAX` bytes.
pub const REPLY_TEXT_BYTES_MAX: usize =
    crate::limits::SMTP_REPLY_LINE_BYTES_MAX * crate::limits::SMTP_REPLY_LINES_MAX;

/// Longest `reenable_after` accepted for `disable_source_ip`.
pub const REENABLE_AFTER_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a rule does to the queue's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeAction {
    Backoff,
    Normal,
}

/// Whose fault a reply says it is; decides which actions make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One mailbox (unknown user, mailbox full, per-recipient rate).
    Recipient,
    /// This message (content, authentication of this message, size).
    Message,
    /// The connection or the destination as a whole (busy, connection limit).
    Queue,
    /// The reputation or configuration of our source IP.
    SourceIp,
    /// The reputation of the sender's SPF or DKIM domain, on every IP.
    SenderDomain,
    /// A URL or other content fingerprint, on every IP.
    Content,
}

/// PowerMTA's bounce categories, so accounting pipelines keep working; the
/// one vocabulary lives in `delivery::bounce`.
pub use crate::delivery::bounce::BounceCategory;

const SCOPE_NAMES: [(Scope, &str); 6] = [
    (Scope::Recipient, "recipient"),
    (Scope::Message, "message"),
    (Scope::Queue, "queue"),
    (Scope::SourceIp, "source-ip"),
    (Scope::SenderDomain, "sender-domain"),
    (Scope::Content, "content"),
];

/// Parses a profile rule's `bounce_category`: case-insensitive, exact
/// names only. `admin-deleted` is set by `spate ctl delete`, never by a
/// reply pattern, so a profile cannot name it.
pub fn parse_bounce_category(s: &str) -> Result<BounceCategory, PatternError> {
    BounceCategory::ALL
        .into_iter()
        .filter(|c| *c != BounceCategory::AdminDeleted)
        .find(|c| c.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| PatternError::UnknownName {
            what: "bounce_category",
            name: s.to_owned(),
        })
}

impl Scope {
    /// The name used in profiles and snapshots.
    pub fn as_str(self) -> &'static str {
        SCOPE_NAMES
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("queue", |(_, n)| n)
    }
}

impl FromStr for Scope {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        SCOPE_NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(c, _)| *c)
            .ok_or_else(|| PatternError::UnknownName {
                what: "scope",
                name: s.to_owned(),
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one rule asks for when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions {
    pub mode: Option<ModeAction>,
    pub bounce_category: Option<BounceCategory>,
    /// `disable_source_ip` with its `reenable_after`.
    pub disable_source_ip: Option<Duration>,
    /// Stop attempting the queue until its next retry time.
    pub defer_queue: bool,
    /// Declared scope; `None` is treated as [`Scope::Queue`].
    pub scope: Option<Scope>,
}

impl Actions {
    /// True if the actions touch the queue rather than one recipient.
    pub fn has_queue_effect(&self) -> bool {
        self.mode.is_some() || self.disable_source_ip.is_some() || self.defer_queue
    }
}

/// A pattern list that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern list name must not be empty")]
    EmptyName,
    #[error("pattern list {list}: more than {PATTERN_RULES_MAX} rules")]
    TooManyRules { list: String },
    #[error("pattern list {list}: rule {index}: bad regular expression: {reason}")]
    BadRegex {
        list: String,
        index: usize,
        reason: String,
    },
    #[error("pattern list {list}: rule {index}: {reason}")]
    BadActions {
        list: String,
        index: usize,
        reason: &'static str,
    },
    #[error("unknown {what} {name:?}")]
    UnknownName { what: &'static str, name: String },
}

#[derive(Debug, Clone)]
struct Rule {
    regex: Regex,
    actions: Actions,
}

/// An ordered list of reply rules; first match wins. Immutable once built, so
/// one list can be shared (by `Arc`) by every queue that names it.
#[derive(Debug, Clone)]
pub struct PatternList {
    name: String,
    rules: Vec<Rule>,
}

/// The verdict on one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// Index of the first matching rule.
    pub rule_index: Option<usize>,
    /// The actions to apply (queue-level ones removed for per-recipient throttles).
    pub actions: Actions,
    /// The scope: the rule's, else `Recipient` for a recognised throttle, else `Queue`.
    pub scope: Scope,
    /// The reply is a per-recipient throttle; it must never back off the queue.
    pub per_recipient_throttle: bool,
    /// A matched rule's queue-level actions were dropped because of the above.
    pub suppressed: bool,
}

/// Per-recipient throttles that providers send today. Only 4xx replies count.
static PER_RECIPIENT_THROTTLE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    build_regex(
        r"^\s*4\d\d[ -]+4\.2\.1\b.*(receiving mail at a rate|receiving mail too quickly|too many messages|rate that prevents additional messages)",
    )
    .ok()
});

fn build_regex(source: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(source)
        .case_insensitive(true)
        .dot_matches_new_line(true)
        .size_limit(PATTERN_REGEX_BYTES_MAX)
        .build()
}

/// True if `reply` is a per-recipient throttle (see the module comment).
pub fn is_per_recipient_throttle(reply: &str) -> bool {
    PER_RECIPIENT_THROTTLE
        .as_ref()
        .is_some_and(|re| re.is_match(bounded(reply)))
}

fn bounded(reply: &str) -> &str {
    if reply.len() <= REPLY_TEXT_BYTES_MAX {
        return reply;
    }
    let mut end = REPLY_TEXT_BYTES_MAX;
    while !reply.is_char_boundary(end) {
        end -= 1;
    }
    reply.get(..end).unwrap_or("")
}

impl PatternList {
    /// Builds a list from `(regex source, actions)` pairs, in order.
    pub fn from_rules<S: AsRef<str>>(
        name: &str,
        rules: impl IntoIterator<Item = (S, Actions)>,
    ) -> Result<Self, PatternError> {
        if name.is_empty() {
            return Err(PatternError::EmptyName);
        }
        let mut built = Vec::new();
        for (index, (source, actions)) in rules.into_iter().enumerate() {
            if index >= PATTERN_RULES_MAX {
                return Err(PatternError::TooManyRules {
                    list: name.to_owned(),
                });
            }
            let bad = |reason| PatternError::BadActions {
                list: name.to_owned(),
                index,
                reason,
            };
            if actions.scope == Some(Scope::Recipient) && actions.has_queue_effect() {
                return Err(bad(
                    "a recipient-scoped rule cannot change mode, defer or disable the queue",
                ));
            }
            if let Some(after) = actions.disable_source_ip {
                if after.is_zero() || after > REENABLE_AFTER_MAX {
                    return Err(bad(
                        "reenable_after must be more than zero and at most 30 days",
                    ));
                }
            }
            let regex = build_regex(source.as_ref()).map_err(|e| PatternError::BadRegex {
                list: name.to_owned(),
                index,
                reason: e.to_string(),
            })?;
            built.push(Rule { regex, actions });
        }
        Ok(PatternList {
            name: name.to_owned(),
            rules: built,
        })
    }

    /// The list's name ("gmail", or the config table's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if the list has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The regex source of rule `index`, for mode-change records.
    pub fn rule_source(&self, index: usize) -> Option<&str> {
        self.rules.get(index).map(|r| r.regex.as_str())
    }

    /// Classifies one reply: first matching rule, then the per-recipient
    /// throttle check, which strips queue-level actions.
    pub fn classify(&self, reply: &str) -> Classification {
        let text = bounded(reply);
        let found = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.regex.is_match(text));
        let (rule_index, mut actions) = match found {
            Some((i, r)) => (Some(i), r.actions),
            None => (None, Actions::default()),
        };
        let throttle = is_per_recipient_throttle(text);
        let mut suppressed = false;
        if throttle && actions.has_queue_effect() {
            actions.mode = None;
            actions.disable_source_ip = None;
            actions.defer_queue = false;
            suppressed = true;
        }
        let scope = match actions.scope {
            Some(s) if !throttle => s,
            _ if throttle => Scope::Recipient,
            _ => Scope::Queue,
        };
        Classification {
            rule_index,
            actions,
            scope,
            per_recipient_throttle: throttle,
            suppressed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Actions {
        Actions {
            mode: Some(ModeAction::Backoff),
            ..Actions::default()
        }
    }

    #[test]
    fn first_match_wins_case_insensitive_across_lines() {
        let list = PatternList::from_rules(
            "t",
            [
                (r"4\.7\.28 .*from your ip address", backoff()),
                (
                    r"4\.7\.28",
                    Actions {
                        defer_queue: true,
                        ..Actions::default()
                    },
                ),
            ],
        )
        .unwrap();
        let c =
            list.classify("421-4.7.28 Our system has detected\r\n421-4.7.28 from your IP ADDRESS");
        assert_eq!(c.rule_index, Some(0));
        assert_eq!(c.actions.mode, Some(ModeAction::Backoff));
        let c = list.classify("421 4.7.28 from your SPF domain");
        assert_eq!(c.rule_index, Some(1));
        assert!(list.classify("250 ok").rule_index.is_none());
    }

    #[test]
    fn per_recipient_throttle_never_backs_off() {
        let list = PatternList::from_rules("t", [(r"4\.2\.1", backoff())]).unwrap();
        let c = list.classify(
            "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\r\n\
             450-4.2.1 prevents additional messages from being delivered.",
        );
        assert!(c.per_recipient_throttle);
        assert!(c.suppressed);
        assert_eq!(c.actions.mode, None);
        assert_eq!(c.scope, Scope::Recipient);
        // A 5xx with the same words is not a throttle.
        assert!(!is_per_recipient_throttle(
            "550 5.2.1 receiving mail at a rate"
        ));
    }

    #[test]
    fn bad_rules_are_clear_errors() {
        let e = PatternList::from_rules("x", [("(", Actions::default())]).unwrap_err();
        assert!(matches!(e, PatternError::BadRegex { index: 0, .. }), "{e}");
        let bad = Actions {
            scope: Some(Scope::Recipient),
            ..backoff()
        };
        assert!(PatternList::from_rules("x", [("a", bad)]).is_err());
        assert_eq!(
            "Policy-Related".parse::<BounceCategory>(),
            Ok(BounceCategory::PolicyRelated)
        );
        assert!("nope".parse::<Scope>().is_err());
        assert_eq!(
            parse_bounce_category("Policy-Related"),
            Ok(BounceCategory::PolicyRelated)
        );
        assert!(parse_bounce_category("admin-deleted").is_err());
        assert!(parse_bounce_category(" spam-related").is_err());
    }

    #[test]
    fn overlong_reply_is_bounded_not_a_panic() {
        let list = PatternList::from_rules("t", [("zzz", backoff())]).unwrap();
        let long = "é".repeat(REPLY_TEXT_BYTES_MAX) + "zzz";
        assert!(list.classify(&long).rule_index.is_none());
    }
}
