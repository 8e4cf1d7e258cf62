//! The shipped ISP profiles: built-in pattern lists for Gmail, Yahoo/AOL and
//! Microsoft consumer mail, embedded from `profiles/*.toml`.
//!
//! Config accepts these names as `smtp_pattern_list` references; a list the
//! config defines under the same name wins (see `profiles/README.md`). The
//! profile file format is also exposed ([`parse_profile`]) so tests, tools and
//! operators who copy a profile can check an edited file.

use std::time::Duration;

use serde::Deserialize;

use super::pattern::{Actions, ModeAction, PatternError, PatternList, parse_bounce_category};

/// Names of the built-in pattern lists, as config refers to them.
pub const BUILTIN_NAMES: [&str; 3] = ["gmail", "yahoo", "microsoft"];

const GMAIL: &str = include_str!("profiles/gmail.toml");
const YAHOO: &str = include_str!("profiles/yahoo.toml");
const MICROSOFT: &str = include_str!("profiles/microsoft.toml");

/// Longest duration string accepted in a profile ("4d12h").
const DURATION_TEXT_BYTES_MAX: usize = 32;

/// A profile file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {name}: {reason}")]
    Syntax { name: String, reason: String },
    #[error("profile {name}: rule {index}: {reason}")]
    Rule {
        name: String,
        index: usize,
        reason: String,
    },
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

/// The TOML text of a built-in profile, for operators who copy and edit it.
pub fn builtin_source(name: &str) -> Option<&'static str> {
    match name {
        "gmail" => Some(GMAIL),
        "yahoo" => Some(YAHOO),
        "microsoft" => Some(MICROSOFT),
        _ => None,
    }
}

/// The built-in pattern list `name`, or `None` if there is no such profile.
/// The shipped files are checked by the test suite, so a parse failure here
/// is our bug; it is reported as `None` rather than a panic.
pub fn builtin(name: &str) -> Option<PatternList> {
    let source = builtin_source(name)?;
    parse_profile(name, source).ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    reply: String,
    mode: Option<String>,
    bounce_category: Option<String>,
    #[serde(default)]
    disable_source_ip: bool,
    reenable_after: Option<String>,
    #[serde(default)]
    defer_queue: bool,
    scope: Option<String>,
}

/// Parses a profile file (the format of `profiles/*.toml`). The file's
/// `name` must equal `name`.
pub fn parse_profile(name: &str, text: &str) -> Result<PatternList, ProfileError> {
    let syntax = |reason: String| ProfileError::Syntax {
        name: name.to_owned(),
        reason,
    };
    let file: ProfileFile = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
    if file.name != name {
        return Err(syntax(format!("file says name = {:?}", file.name)));
    }
    let mut rules = Vec::with_capacity(file.rules.len());
    for (index, rule) in file.rules.into_iter().enumerate() {
        let bad = |reason: String| ProfileError::Rule {
            name: name.to_owned(),
            index,
            reason,
        };
        let mode = match rule.mode.as_deref() {
            None => None,
            Some("backoff") => Some(ModeAction::Backoff),
            Some("normal") => Some(ModeAction::Normal),
            Some(other) => return Err(bad(format!("mode {other:?}: expected backoff or normal"))),
        };
        let disable_source_ip = match (rule.disable_source_ip, rule.reenable_after.as_deref()) {
            (false, None) => None,
            (true, Some(text)) => Some(parse_duration(text).map_err(bad)?),
            (true, None) => return Err(bad("disable_source_ip needs reenable_after".into())),
            (false, Some(_)) => return Err(bad("reenable_after without disable_source_ip".into())),
        };
        let actions = Actions {
            mode,
            bounce_category: rule
                .bounce_category
                .as_deref()
                .map(parse_bounce_category)
                .transpose()?,
            disable_source_ip,
            defer_queue: rule.defer_queue,
            scope: rule.scope.as_deref().map(str::parse).transpose()?,
        };
        rules.push((rule.reply, actions));
    }
    Ok(PatternList::from_rules(name, rules)?)
}

/// Parses "30s", "10m", "4h", "4d12h", "1w" (the config's duration syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() || text.len() > DURATION_TEXT_BYTES_MAX {
        return Err(format!("bad duration {text:?}"));
    }
    let mut total_s: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number
                .unwrap_or(0)
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d)));
            number = Some(n.ok_or_else(|| format!("duration {text:?} too large"))?);
            continue;
        }
        let unit_s = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(format!("bad duration {text:?}: unknown unit {c:?}")),
        };
        let n = number
            .take()
            .ok_or_else(|| format!("bad duration {text:?}: unit without number"))?;
        total_s = n
            .checked_mul(unit_s)
            .and_then(|s| total_s.checked_add(s))
            .ok_or_else(|| format!("duration {text:?} too large"))?;
    }
    if number.is_some() {
        return Err(format!("bad duration {text:?}: number without unit"));
    }
    Ok(Duration::from_secs(total_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses() {
        for name in BUILTIN_NAMES {
            let source = builtin_source(name).unwrap();
            let list = parse_profile(name, source).unwrap_or_else(|e| panic!("{e}"));
            assert!(list.len() >= 8, "{name} has {} rules", list.len());
            assert_eq!(builtin(name).map(|l| l.len()), Some(list.len()));
        }
        assert!(builtin("hotmail").is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("4d12h"),
            Ok(Duration::from_secs(4 * 86_400 + 12 * 3600))
        );
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("12").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn bad_profiles_are_errors() {
        let e = parse_profile(
            "x",
            "name = \"x\"\n[[rule]]\nreply = 'a'\nmode = \"slow\"\n",
        );
        assert!(
            matches!(e, Err(ProfileError::Rule { index: 0, .. })),
            "{e:?}"
        );
        let e = parse_profile(
            "x",
            "name = \"x\"\n[[rule]]\nreply = 'a'\ndisable_source_ip = true\n",
        );
        assert!(e.is_err());
        assert!(parse_profile("x", "name = \"y\"\n").is_err());
        assert!(parse_profile("x", "name = \"x\"\nbogus = 1\n").is_err());
    }
}
