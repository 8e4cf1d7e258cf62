//! Bounce categories and the default classifier.
//!
//! Owns the PowerMTA category vocabulary (`bad-mailbox`, `spam-related`, ...)
//! and the default rule set that maps an enhanced status code plus reply
//! text to a category. Pattern-list `bounce_category` rules are matched by
//! the shaper (it owns the regexes); their result is passed in here as an
//! override so that one function decides the final category.
//!
//! `admin-deleted` is an addition to PowerMTA's list: `spate ctl delete`
//! bounces recipients with it so operators can tell them apart from
//! receiver-side bounces in accounting.

use std::fmt;
use std::str::FromStr;

/// Why a recipient bounced, in PowerMTA's vocabulary (`bounceCat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceCategory {
    BadMailbox,
    BadDomain,
    InactiveMailbox,
    QuotaIssues,
    NoAnswerFromHost,
    MessageExpired,
    PolicyRelated,
    SpamRelated,
    VirusRelated,
    ContentRelated,
    RoutingErrors,
    ProtocolErrors,
    BadConnection,
    InvalidSender,
    RelayingIssues,
    BadConfiguration,
    Other,
    /// spate's addition: removed by an operator (`spate ctl delete`).
    AdminDeleted,
}

impl BounceCategory {
    /// Every category, in PowerMTA's documented order, `admin-deleted` last.
    pub const ALL: [BounceCategory; 18] = [
        Self::BadMailbox,
        Self::BadDomain,
        Self::InactiveMailbox,
        Self::QuotaIssues,
        Self::NoAnswerFromHost,
        Self::MessageExpired,
        Self::PolicyRelated,
        Self::SpamRelated,
        Self::VirusRelated,
        Self::ContentRelated,
        Self::RoutingErrors,
        Self::ProtocolErrors,
        Self::BadConnection,
        Self::InvalidSender,
        Self::RelayingIssues,
        Self::BadConfiguration,
        Self::Other,
        Self::AdminDeleted,
    ];

    /// The accounting / configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMailbox => "bad-mailbox",
            Self::BadDomain => "bad-domain",
            Self::InactiveMailbox => "inactive-mailbox",
            Self::QuotaIssues => "quota-issues",
            Self::NoAnswerFromHost => "no-answer-from-host",
            Self::MessageExpired => "message-expired",
            Self::PolicyRelated => "policy-related",
            Self::SpamRelated => "spam-related",
            Self::VirusRelated => "virus-related",
            Self::ContentRelated => "content-related",
            Self::RoutingErrors => "routing-errors",
            Self::ProtocolErrors => "protocol-errors",
            Self::BadConnection => "bad-connection",
            Self::InvalidSender => "invalid-sender",
            Self::RelayingIssues => "relaying-issues",
            Self::BadConfiguration => "bad-configuration",
            Self::Other => "other",
            Self::AdminDeleted => "admin-deleted",
        }
    }
}

impl fmt::Display for BounceCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A category name that is not in the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bounce category {0:?}")]
pub struct UnknownBounceCategory(pub String);

impl FromStr for BounceCategory {
    type Err = UnknownBounceCategory;

    /// Case-insensitive, exact names only.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownBounceCategory(s.to_string()))
    }
}

/// The RFC 3463 code type is the SMTP codec's; re-exported because the
/// classifier, DSN and outcome code name it from here.
pub use crate::smtp::reply::EnhancedStatus;

/// Chooses the bounce category of a failed recipient.
///
/// `pattern_override` is the `bounce_category` of the first matching
/// pattern-list rule, if any; it wins over the default rules. Otherwise text
/// keywords that name a cause unambiguously (virus, spam, blocklists) come
/// first, then the enhanced status code, then a few text heuristics for
/// servers that send no enhanced code.
pub fn classify(
    enhanced: Option<EnhancedStatus>,
    text: &str,
    pattern_override: Option<BounceCategory>,
) -> BounceCategory {
    if let Some(category) = pattern_override {
        return category;
    }
    let lower = text.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    let enhanced = enhanced.or_else(|| EnhancedStatus::find_in(text));

    if has("virus") || has("malware") || has("infected") {
        return BounceCategory::VirusRelated;
    }
    if has("spam") || has("blocklist") || has("blacklist") || has("spamhaus") || has("rbl") {
        return BounceCategory::SpamRelated;
    }

    if let Some(code) = enhanced {
        if let Some(category) = by_code(code, &has) {
            return category;
        }
    }

    if has("user unknown") || has("no such user") || has("mailbox unavailable") {
        return BounceCategory::BadMailbox;
    }
    if has("over quota") || has("mailbox full") || has("quota exceeded") {
        return BounceCategory::QuotaIssues;
    }
    if has("relay") {
        return BounceCategory::RelayingIssues;
    }
    BounceCategory::Other
}

fn by_code(code: EnhancedStatus, has: &dyn Fn(&str) -> bool) -> Option<BounceCategory> {
    use BounceCategory as C;
    let category = match (code.subject, code.detail) {
        // 5.1.x addressing
        (1, 1) => C::BadMailbox,
        (1, 2) | (1, 10) => C::BadDomain,
        (1, 3) => C::BadMailbox,
        (1, 6) => C::InactiveMailbox,
        (1, 7) | (1, 8) => C::InvalidSender,
        (1, _) => C::BadMailbox,
        // 5.2.x mailbox status
        (2, 1) => C::InactiveMailbox,
        (2, 2) => C::QuotaIssues,
        (2, 3) => C::ContentRelated,
        (2, _) => C::InactiveMailbox,
        // 5.3.x mail system
        (3, 4) => C::ContentRelated,
        (3, 5) => C::BadConfiguration,
        (3, _) => C::Other,
        // 5.4.x network and routing
        (4, 1) | (4, 2) => C::NoAnswerFromHost,
        (4, 7) => C::MessageExpired,
        (4, _) => C::RoutingErrors,
        // 5.5.x protocol
        (5, _) => C::ProtocolErrors,
        // 5.6.x content
        (6, _) => C::ContentRelated,
        // 5.7.x security and policy
        (7, 1) if has("relay") => C::RelayingIssues,
        (7, 1) => C::PolicyRelated,
        (7, 26) | (7, 23) | (7, 25) | (7, 27) => C::PolicyRelated,
        (7, _) => C::PolicyRelated,
        _ => return None,
    };
    Some(category)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> Option<EnhancedStatus> {
        EnhancedStatus::parse(s)
    }

    #[test]
    fn names_round_trip() {
        for c in BounceCategory::ALL {
            assert_eq!(c.as_str().parse::<BounceCategory>(), Ok(c));
        }
        assert_eq!(
            "SPAM-Related".parse::<BounceCategory>(),
            Ok(BounceCategory::SpamRelated)
        );
        assert!("spam".parse::<BounceCategory>().is_err());
    }

    #[test]
    fn default_rules() {
        use BounceCategory as C;
        let cases: &[(&str, &str, C)] = &[
            ("5.1.1", "user unknown", C::BadMailbox),
            ("5.1.2", "host not found", C::BadDomain),
            ("5.1.10", "null MX", C::BadDomain),
            ("5.1.6", "mailbox moved", C::InactiveMailbox),
            ("5.1.8", "bad sender domain", C::InvalidSender),
            ("5.2.1", "mailbox disabled", C::InactiveMailbox),
            ("5.2.2", "mailbox full", C::QuotaIssues),
            ("5.3.4", "message too big", C::ContentRelated),
            ("5.4.4", "unable to route", C::RoutingErrors),
            ("5.4.7", "delivery time expired", C::MessageExpired),
            ("5.5.2", "syntax error", C::ProtocolErrors),
            ("5.6.7", "SMTPUTF8 required", C::ContentRelated),
            ("5.7.1", "message rejected as spam", C::SpamRelated),
            ("5.7.1", "virus found in message", C::VirusRelated),
            ("5.7.1", "relaying denied", C::RelayingIssues),
            ("5.7.1", "access denied", C::PolicyRelated),
            ("5.7.26", "unauthenticated email", C::PolicyRelated),
        ];
        for (enhanced, text, want) in cases {
            assert_eq!(
                classify(code(enhanced), text, None),
                *want,
                "{enhanced} {text}"
            );
        }
    }

    #[test]
    fn text_only_rules_and_code_from_text() {
        use BounceCategory as C;
        assert_eq!(classify(None, "550 User unknown", None), C::BadMailbox);
        assert_eq!(classify(None, "552 mailbox full", None), C::QuotaIssues);
        assert_eq!(
            classify(None, "554 listed at Spamhaus", None),
            C::SpamRelated
        );
        assert_eq!(classify(None, "550 5.2.2 over limit", None), C::QuotaIssues);
        assert_eq!(classify(None, "554 go away", None), C::Other);
    }

    #[test]
    fn pattern_override_wins() {
        assert_eq!(
            classify(
                code("5.1.1"),
                "user unknown",
                Some(BounceCategory::PolicyRelated)
            ),
            BounceCategory::PolicyRelated
        );
    }
}
