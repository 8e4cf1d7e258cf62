//! The sink's reply script and provider presets, without I/O.
//!
//! A script is TOML (documented in bench/README.md). It decides: the greeting
//! (including a 421 greeting), a delay before replies, temporary or permanent
//! failure by recipient local part (`tempfail+...@`, `permfail+...@`), per
//! client IP throttling after N messages in the last minute, time windows (relative to
//! the sink's start) during which MAIL gets a given reply, and closing a
//! connection after N messages. `{ip}` in any reply text is replaced by the
//! client's IP address. Time comes in as an argument (`elapsed`), so every rule
//! is testable without sleeping.
//!
//! A script that parses but breaks a rule is refused with the line and the
//! key, e.g. `line 7: throttle[2].messages_per_minute must be > 0`, where
//! `throttle[2]` is the second `[[throttle]]` entry (entries count from 1).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Largest number of client IPs tracked by the throttle; beyond it, the oldest
/// windows are dropped (a benchmark sees a handful of IPs).
pub const THROTTLE_IPS_MAX: usize = 65_536;

/// The reply script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Script {
    /// Greeting line; a 4xx/5xx greeting refuses the session and closes.
    pub greeting: String,
    /// Milliseconds to wait before every reply flush.
    pub delay_ms: u64,
    /// Extra milliseconds before the reply to end of DATA.
    pub data_delay_ms: u64,
    /// Reply to RCPT for local parts starting with `tempfail+`.
    pub tempfail_reply: String,
    /// Reply to RCPT for local parts starting with `permfail+`.
    pub permfail_reply: String,
    /// Close the connection (without a reply to the next command) after this
    /// many accepted messages on it; 0 = never.
    pub close_after: u64,
    /// Per client IP throttles, checked at MAIL.
    pub throttle: Vec<Throttle>,
    /// Time windows relative to the sink's start, checked at MAIL.
    pub window: Vec<Window>,
}

/// Reply `reply` to MAIL once a client IP has started `messages_per_minute`
/// transactions in the last 60 seconds (a sliding window of one-second
/// steps, as providers count: no burst is let through at a minute boundary).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    pub messages_per_minute: u64,
    pub reply: String,
}

/// Reply `reply` to every MAIL from `start_s` to `end_s` seconds after start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start_s: u64,
    pub end_s: u64,
    pub reply: String,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 spate-bench-sink ESMTP ready".into(),
            delay_ms: 0,
            data_delay_ms: 0,
            tempfail_reply: "451 4.3.0 Temporary failure, try again later".into(),
            permfail_reply: "550 5.1.1 Mailbox unavailable".into(),
            close_after: 0,
            throttle: Vec::new(),
            window: Vec::new(),
        }
    }
}

/// Where the checked keys of a script sit in its text: the script parsed a
/// second time, keeping only the spans, so that [`Script`] stays plain data.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KeySpans {
    greeting: Option<Spanned<IgnoredAny>>,
    tempfail_reply: Option<Spanned<IgnoredAny>>,
    permfail_reply: Option<Spanned<IgnoredAny>>,
    throttle: Vec<HashMap<String, Spanned<IgnoredAny>>>,
    window: Vec<HashMap<String, Spanned<IgnoredAny>>>,
}

/// Names a key in validation errors, with its line when the text is known.
#[derive(Debug, Default)]
struct Locator<'t> {
    text: &'t str,
    spans: KeySpans,
}

impl<'t> Locator<'t> {
    /// Spans of `text`, which already parsed as a [`Script`]; none if that
    /// second parse fails (it should not), the errors then lack the line.
    fn new(text: &'t str) -> Self {
        Locator {
            text,
            spans: toml::from_str(text).unwrap_or_default(),
        }
    }

    /// A top-level key, e.g. `line 3: greeting`.
    fn key(&self, key: &str) -> String {
        let span = match key {
            "greeting" => self.spans.greeting.as_ref(),
            "tempfail_reply" => self.spans.tempfail_reply.as_ref(),
            "permfail_reply" => self.spans.permfail_reply.as_ref(),
            _ => None,
        };
        self.at(span, key.to_owned())
    }

    /// A key of the `index`th (from 0) entry of an array of tables, e.g.
    /// `line 7: throttle[2].messages_per_minute` for `index` 1.
    fn entry_key(&self, array: &str, index: usize, key: &str) -> String {
        let entries = match array {
            "throttle" => self.spans.throttle.as_slice(),
            "window" => self.spans.window.as_slice(),
            _ => &[],
        };
        let span = entries.get(index).and_then(|entry| entry.get(key));
        self.at(span, format!("{array}[{}].{key}", index + 1))
    }

    fn at(&self, span: Option<&Spanned<IgnoredAny>>, path: String) -> String {
        let line = span
            .and_then(|s| self.text.get(..s.span().start))
            .map(|before| before.matches('\n').count() + 1);
        match line {
            Some(line) => format!("line {line}: {path}"),
            None => path,
        }
    }
}

impl Script {
    /// Parses and validates a TOML script. Errors carry the line (and, for
    /// rule violations, the key, e.g. `line 7: throttle[2].reply: ...`).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let script: Script = toml::from_str(text)?;
        script.validate(&Locator::new(text))?;
        Ok(script)
    }

    /// Reads a script file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading script {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("script {}: {e}", path.display()))
    }

    /// Checks the rules serde cannot; `at` names the offending key.
    fn validate(&self, at: &Locator<'_>) -> anyhow::Result<()> {
        check_reply(&at.key("greeting"), &self.greeting, &['2', '4', '5'])?;
        check_reply(&at.key("tempfail_reply"), &self.tempfail_reply, &['4'])?;
        check_reply(&at.key("permfail_reply"), &self.permfail_reply, &['5'])?;
        for (i, t) in self.throttle.iter().enumerate() {
            check_reply(&at.entry_key("throttle", i, "reply"), &t.reply, &['4', '5'])?;
            anyhow::ensure!(
                t.messages_per_minute > 0,
                "{} must be > 0",
                at.entry_key("throttle", i, "messages_per_minute")
            );
        }
        for (i, w) in self.window.iter().enumerate() {
            check_reply(&at.entry_key("window", i, "reply"), &w.reply, &['4', '5'])?;
            anyhow::ensure!(
                w.start_s < w.end_s,
                "{} must be before end_s (got start_s = {}, end_s = {})",
                at.entry_key("window", i, "start_s"),
                w.start_s,
                w.end_s
            );
        }
        Ok(())
    }

    /// A provider-like preset: realistic reply texts for throttling and blocks.
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let base = Script::default();
        let script = match name {
            "gmail" => Script {
                greeting: "220 mx.google.example ESMTP spate-bench".into(),
                tempfail_reply: "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.".into(),
                permfail_reply: "550 5.1.1 The email account that you tried to reach does not exist.".into(),
                throttle: vec![Throttle {
                    messages_per_minute: 3000,
                    reply: "421 4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.".into(),
                }],
                close_after: 100,
                ..base
            },
            "yahoo" => Script {
                greeting: "220 mta.yahoo.example ESMTP ready".into(),
                tempfail_reply: "451 Message temporarily deferred - [160]".into(),
                permfail_reply: "554 5.7.9 Message not accepted for policy reasons.".into(),
                throttle: vec![Throttle {
                    messages_per_minute: 1000,
                    reply: "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1".into(),
                }],
                close_after: 50,
                ..base
            },
            "microsoft" => Script {
                greeting: "220 outlook.example Microsoft ESMTP MAIL Service ready".into(),
                tempfail_reply: "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation.".into(),
                permfail_reply: "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).".into(),
                throttle: vec![Throttle {
                    messages_per_minute: 2000,
                    reply: "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation.".into(),
                }],
                close_after: 100,
                ..base
            },
            other => anyhow::bail!("unknown preset {other:?} (gmail, yahoo, microsoft)"),
        };
        script.validate(&Locator::default())?;
        Ok(script)
    }
}

fn check_reply(key: &str, reply: &str, classes: &[char]) -> anyhow::Result<()> {
    let bytes = reply.as_bytes();
    let ok = bytes.len() >= 3
        && bytes.iter().take(3).all(u8::is_ascii_digit)
        && reply.chars().next().is_some_and(|c| classes.contains(&c))
        && (bytes.len() == 3 || bytes.get(3) == Some(&b' '))
        && !reply.contains(['\r', '\n']);
    anyhow::ensure!(
        ok,
        "{key}: {reply:?} is not a one-line SMTP reply of class {classes:?}"
    );
    Ok(())
}

/// Substitutes `{ip}` in a reply text.
pub fn render(reply: &str, ip: IpAddr) -> String {
    if reply.contains("{ip}") {
        reply.replace("{ip}", &ip.to_string())
    } else {
        reply.to_owned()
    }
}

/// Whether a reply closes the connection after being sent (421 does).
pub fn closes_connection(reply: &str) -> bool {
    reply.starts_with("421")
}

/// What to answer to one recipient.
pub fn rcpt_reply<'s>(script: &'s Script, local_part: &str) -> Option<&'s str> {
    let lower = local_part.to_ascii_lowercase();
    if lower.starts_with("tempfail+") {
        Some(&script.tempfail_reply)
    } else if lower.starts_with("permfail+") {
        Some(&script.permfail_reply)
    } else {
        None
    }
}

/// Seconds a throttle looks back.
const THROTTLE_WINDOW_S: u64 = 60;

/// One client IP's transactions started in each of the last 60 seconds.
#[derive(Debug, Clone)]
struct Recent {
    /// Started in second `s` (since the sink's start) at `[s % 60]`.
    per_second: [u32; THROTTLE_WINDOW_S as usize],
    /// The newest second counted.
    second: u64,
}

impl Recent {
    fn new(second: u64) -> Self {
        Recent {
            per_second: [0; THROTTLE_WINDOW_S as usize],
            second,
        }
    }

    /// Moves the window to end at `second` (earlier times stay where they are).
    fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        if second - self.second >= THROTTLE_WINDOW_S {
            self.per_second = [0; THROTTLE_WINDOW_S as usize];
        } else {
            for s in self.second + 1..=second {
                if let Some(slot) = self.per_second.get_mut((s % THROTTLE_WINDOW_S) as usize) {
                    *slot = 0;
                }
            }
        }
        self.second = second;
    }

    fn count(&self) -> u64 {
        self.per_second.iter().map(|&n| u64::from(n)).sum()
    }

    fn record(&mut self) {
        if let Some(slot) = self
            .per_second
            .get_mut((self.second % THROTTLE_WINDOW_S) as usize)
        {
            *slot = slot.saturating_add(1);
        }
    }
}

/// Per-IP state of the throttle rules and time windows.
#[derive(Debug, Default)]
pub struct Policy {
    recent: HashMap<IpAddr, Recent>,
}

impl Policy {
    /// Decides MAIL for `ip` at `elapsed` since the sink's start. `None`
    /// accepts (and counts the transaction); `Some(reply)` refuses.
    pub fn mail_reply(&mut self, script: &Script, ip: IpAddr, elapsed: Duration) -> Option<String> {
        let secs = elapsed.as_secs();
        if let Some(w) = script
            .window
            .iter()
            .find(|w| secs >= w.start_s && secs < w.end_s)
        {
            return Some(render(&w.reply, ip));
        }
        if script.throttle.is_empty() {
            return None;
        }
        if self.recent.len() >= THROTTLE_IPS_MAX && !self.recent.contains_key(&ip) {
            // Forget the IPs quiet for a minute, or everyone if none is.
            self.recent
                .retain(|_, r| secs.saturating_sub(r.second) < THROTTLE_WINDOW_S);
            if self.recent.len() >= THROTTLE_IPS_MAX {
                self.recent.clear();
            }
        }
        let recent = self.recent.entry(ip).or_insert_with(|| Recent::new(secs));
        recent.advance(secs);
        let started = recent.count();
        if let Some(t) = script
            .throttle
            .iter()
            .find(|t| started >= t.messages_per_minute)
        {
            return Some(render(&t.reply, ip));
        }
        recent.record();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn throttle_window_slides_by_the_second() {
        let script = Script::parse(
            "[[throttle]]\nmessages_per_minute = 3\nreply = \"421 4.7.0 [TSS04] slow\"\n",
        )
        .unwrap();
        let mut policy = Policy::default();
        let at = |s: u64| Duration::from_millis(s * 1000 + 500);
        // Two at 50 s and one at 59 s: the limit.
        assert_eq!(policy.mail_reply(&script, A, at(50)), None);
        assert_eq!(policy.mail_reply(&script, A, at(50)), None);
        assert_eq!(policy.mail_reply(&script, A, at(59)), None);
        // Past the minute boundary the three are still in the last 60 s (a
        // fixed one-minute block would start again at 60 s).
        assert!(policy.mail_reply(&script, A, at(61)).is_some());
        assert!(policy.mail_reply(&script, A, at(109)).is_some());
        // At 110 s the two of second 50 have left the window; the one of 59
        // stays until 119 s.
        assert_eq!(policy.mail_reply(&script, A, at(110)), None);
        assert_eq!(policy.mail_reply(&script, A, at(110)), None);
        assert!(policy.mail_reply(&script, A, at(118)).is_some());
        assert_eq!(policy.mail_reply(&script, A, at(119)), None);
        // A long quiet spell empties it.
        let mut policy = Policy::default();
        for _ in 0..3 {
            assert_eq!(policy.mail_reply(&script, A, at(5)), None);
        }
        assert!(policy.mail_reply(&script, A, at(6)).is_some());
        assert_eq!(policy.mail_reply(&script, A, at(500)), None);
    }

    #[test]
    fn throttle_counts_per_ip_and_forgets_after_a_minute() {
        let script = Script::parse(
            "[[throttle]]\nmessages_per_minute = 2\nreply = \"421 4.7.0 [TSS04] {ip} slow down\"\n",
        )
        .unwrap();
        let mut policy = Policy::default();
        let t0 = Duration::from_secs(1);
        assert_eq!(policy.mail_reply(&script, A, t0), None);
        assert_eq!(policy.mail_reply(&script, A, t0), None);
        assert_eq!(
            policy.mail_reply(&script, A, t0).as_deref(),
            Some("421 4.7.0 [TSS04] 127.0.0.2 slow down")
        );
        assert_eq!(policy.mail_reply(&script, B, t0), None);
        assert_eq!(policy.mail_reply(&script, A, Duration::from_secs(61)), None);
    }

    #[test]
    fn window_applies_only_inside_its_range() {
        let script =
            Script::parse("[[window]]\nstart_s = 5\nend_s = 10\nreply = \"451 4.7.1 window\"\n")
                .unwrap();
        let mut policy = Policy::default();
        assert_eq!(policy.mail_reply(&script, A, Duration::from_secs(4)), None);
        assert!(
            policy
                .mail_reply(&script, A, Duration::from_secs(5))
                .is_some()
        );
        assert_eq!(policy.mail_reply(&script, A, Duration::from_secs(10)), None);
    }

    #[test]
    fn bad_scripts_are_refused() {
        assert!(Script::parse("tempfail_reply = \"550 no\"").is_err());
        assert!(Script::parse("greeting = \"hello\"").is_err());
        assert!(Script::parse("unknown_key = 1").is_err());
        for p in ["gmail", "yahoo", "microsoft"] {
            Script::preset(p).unwrap();
        }
        assert!(Script::preset("aol").is_err());
    }

    #[test]
    fn recipients_route_by_local_part() {
        let s = Script::default();
        assert_eq!(
            rcpt_reply(&s, "TempFail+x"),
            Some(s.tempfail_reply.as_str())
        );
        assert_eq!(
            rcpt_reply(&s, "permfail+1"),
            Some(s.permfail_reply.as_str())
        );
        assert_eq!(rcpt_reply(&s, "user1"), None);
    }
}
