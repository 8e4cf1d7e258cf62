//! Value syntaxes of the configuration format: durations, rates, sizes,
//! networks, socket addresses, host names and reply patterns.
//!
//! Each parser takes the text an operator wrote and returns the typed value
//! or a short reason (no file or key: the caller adds those). Nothing here
//! knows about TOML.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use regex::{Regex, RegexBuilder};

/// Longest duration accepted anywhere (10 years): keeps arithmetic on
/// deadlines far from overflow while allowing any sane expiry.
pub const DURATION_SECS_MAX: u64 = 10 * 365 * 86_400;

/// Compiled size bound for one reply pattern, so a hostile or careless
/// pattern cannot take unbounded memory (the regex crate's default is 10 MiB).
pub const PATTERN_COMPILED_BYTES_MAX: usize = 1 << 20;

/// Longest pattern source text accepted.
pub const PATTERN_SOURCE_BYTES_MAX: usize = 4096;

/// Parses "30s", "10m", "4h", "4d12h", "1w", "250ms": one or more
/// `<integer><unit>` groups, units `ms`, `s`, `m`, `h`, `d`, `w`.
/// A bare number is refused: the unit is never guessed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. \"30s\", \"10m\", \"4d12h\"".into());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "bad duration \"{text}\": expected a number at \"{}\"",
                &s[start..]
            ));
        }
        let number: u128 = s[start..i]
            .parse()
            .map_err(|_| format!("bad duration \"{text}\": number too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u128 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => {
                return Err(format!(
                    "bad duration \"{text}\": missing unit (ms, s, m, h, d or w)"
                ));
            }
            other => {
                return Err(format!(
                    "bad duration \"{text}\": unknown unit \"{other}\" (use ms, s, m, h, d or w)"
                ));
            }
        };
        total_ms = total_ms.saturating_add(number.saturating_mul(unit_ms));
        if total_ms > u128::from(DURATION_SECS_MAX) * 1000 {
            return Err(format!("duration \"{text}\" is longer than 10 years"));
        }
    }
    // Bounded above by DURATION_SECS_MAX * 1000, which fits in u64.
    let ms = u64::try_from(total_ms).map_err(|_| format!("duration \"{text}\" is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Parses a duration that may also be `"never"` (returned as `None`).
pub fn parse_duration_or_never(text: &str) -> Result<Option<Duration>, String> {
    if text.trim().eq_ignore_ascii_case("never") {
        Ok(None)
    } else {
        parse_duration(text)
            .map_err(|e| format!("{e}, or \"never\""))
            .map(Some)
    }
}

/// A rate limit: a count per interval, or no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// No limit.
    Unlimited,
    /// At most `count` events per `per` (smoothed by the shaper, not bursts).
    Limited {
        /// Events allowed in each interval; at least 1.
        count: u64,
        /// The interval: 1 s, 1 min, 1 h or 1 day.
        per: Duration,
    },
}

impl Rate {
    /// Events per second as a float (`f64::INFINITY` when unlimited).
    pub fn per_second(&self) -> f64 {
        match *self {
            Rate::Unlimited => f64::INFINITY,
            Rate::Limited { count, per } => count as f64 / per.as_secs_f64(),
        }
    }

    /// The mean spacing between events, as a GCRA emission interval
    /// (`None` when unlimited).
    pub fn emission_interval(&self) -> Option<Duration> {
        match *self {
            Rate::Unlimited => None,
            Rate::Limited { count, per } => {
                let nanos = per.as_nanos() / u128::from(count.max(1));
                Some(Duration::from_nanos(
                    u64::try_from(nanos).unwrap_or(u64::MAX),
                ))
            }
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::Limited { count, per } => {
                let unit = match per.as_secs() {
                    1 => "s",
                    60 => "m",
                    3600 => "h",
                    _ => "d",
                };
                write!(f, "{count}/{unit}")
            }
        }
    }
}

/// Parses `"unlimited"` or `"N/s"`, `"N/m"`, `"N/h"`, `"N/d"` with N ≥ 1.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let s = text.trim();
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(Rate::Unlimited);
    }
    let Some((count, unit)) = s.split_once('/') else {
        return Err(format!(
            "bad rate \"{text}\": expected \"unlimited\" or \"N/s\", \"N/m\", \"N/h\", \"N/d\""
        ));
    };
    let count: u64 = count
        .trim()
        .parse()
        .map_err(|_| format!("bad rate \"{text}\": \"{count}\" is not a whole number"))?;
    if count == 0 {
        return Err(format!(
            "bad rate \"{text}\": the count must be at least 1 (pause a queue instead)"
        ));
    }
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86_400),
        other => {
            return Err(format!(
                "bad rate \"{text}\": unknown interval \"{other}\" (use s, m, h or d)"
            ));
        }
    };
    Ok(Rate::Limited { count, per })
}

/// Parses a size: a plain number of bytes, or a number with a unit:
/// `B`, binary `KiB`/`MiB`/`GiB`/`TiB`, or decimal `KB`/`MB`/`GB`/`TB`
/// (units case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err(format!(
            "bad size \"{text}\": expected a number of bytes or e.g. \"512KiB\", \"64MiB\", \"1GiB\""
        ));
    }
    let number: u64 = s[..digits_end]
        .parse()
        .map_err(|_| format!("bad size \"{text}\": number too large"))?;
    let unit = s[digits_end..].trim().to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "bad size \"{text}\": unknown unit \"{}\" (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)",
                &s[digits_end..]
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("bad size \"{text}\": too large"))
}

/// Parses a CIDR network ("10.0.0.0/8", "::1/128"). A bare address is a
/// single-host network (/32 or /128). Host bits must be zero, so a typo like
/// "10.1.2.3/8" is caught rather than silently widened.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let s = text.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("bad network \"{text}\": expected CIDR like \"10.0.0.0/8\" or \"::1/128\"")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "bad network \"{text}\": host bits are set (did you mean \"{}\"?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses an IP address (for `source_ip`).
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("bad IP address \"{text}\""))
}

/// Parses "IP:port" or "[IPv6]:port".
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("bad socket address \"{text}\": expected \"IP:port\" or \"[IPv6]:port\"")
    })
}

/// Parses a nameserver: "IP:port", "[IPv6]:port" or a bare IP (port 53).
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, String> {
    let s = text.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    parse_socket_addr(s)
}

/// True when `name` is a syntactically valid DNS host name (LDH labels,
/// each 1..=63 bytes, total ≤ 253, optional trailing dot).
pub fn is_valid_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// Parses a host name as used for EHLO and `hostname`: a DNS name, or an
/// address literal such as "[192.0.2.1]".
pub fn parse_hostname(text: &str) -> Result<String, String> {
    let s = text.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let addr = inner.strip_prefix("IPv6:").unwrap_or(inner);
        if addr.parse::<IpAddr>().is_ok() {
            return Ok(s.to_string());
        }
    }
    if is_valid_hostname(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "bad host name \"{text}\": expected letters, digits, '-' and '.' (e.g. \"mta1.example.com\")"
        ))
    }
}

/// Parses a destination domain name, returned lowercase without a trailing dot.
pub fn parse_domain(text: &str) -> Result<String, String> {
    let s = text.trim();
    if is_valid_hostname(s) {
        Ok(s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase())
    } else {
        Err(format!("bad domain name \"{text}\""))
    }
}

/// A "host[:port]" for `smtp_hosts` (port 25 when absent).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SmtpHost {
    /// An IP address or a host name resolved with A/AAAA (never MX).
    pub host: String,
    /// Parsed form of `host` when it is an IP literal.
    pub ip: Option<IpAddr>,
    /// TCP port.
    pub port: u16,
}

impl std::str::FromStr for SmtpHost {
    type Err = String;

    /// Same as [`parse_smtp_host`].
    fn from_str(s: &str) -> Result<Self, String> {
        parse_smtp_host(s)
    }
}

/// Parses "127.0.0.2:2526", "[::1]:25", "mx.example.net" or "mx.example.net:2525".
pub fn parse_smtp_host(text: &str) -> Result<SmtpHost, String> {
    let s = text.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(SmtpHost {
            host: addr.ip().to_string(),
            ip: Some(addr.ip()),
            port: addr.port(),
        });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SmtpHost {
            host: ip.to_string(),
            ip: Some(ip),
            port: 25,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().map_err(|_| {
                format!("bad host \"{text}\": port \"{p}\" is not a number 1-65535")
            })?;
            (h, port)
        }
        None => (s, 25),
    };
    if port == 0 {
        return Err(format!("bad host \"{text}\": port 0"));
    }
    if !is_valid_hostname(host) {
        return Err(format!(
            "bad host \"{text}\": expected \"IP:port\", \"[IPv6]:port\" or \"name[:port]\""
        ));
    }
    Ok(SmtpHost {
        host: host.to_ascii_lowercase(),
        ip: None,
        port,
    })
}

/// Compiles a reply pattern: case-insensitive, bounded in size.
pub fn parse_pattern(text: &str) -> Result<Regex, String> {
    if text.len() > PATTERN_SOURCE_BYTES_MAX {
        return Err(format!(
            "pattern is longer than {PATTERN_SOURCE_BYTES_MAX} bytes"
        ));
    }
    RegexBuilder::new(text)
        .case_insensitive(true)
        .size_limit(PATTERN_COMPILED_BYTES_MAX)
        .build()
        .map_err(|e| {
            // The regex crate's message spans several lines; keep one.
            let msg = e.to_string();
            let last = msg
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            format!("bad regular expression '{text}': {}", last.trim())
        })
}

/// Names used in queue names ("domain/vmta") and references: vMTAs, pools,
/// pattern lists. Letters, digits, '.', '_' and '-', at most 64 bytes.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("bad name \"{name}\": must be 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "bad name \"{name}\": use letters, digits, '.', '_' and '-' only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14_400)));
        assert_eq!(
            parse_duration("4d12h"),
            Ok(Duration::from_secs(4 * 86_400 + 12 * 3600))
        );
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "",
            "30",
            "s",
            "10x",
            "1.5h",
            "-1s",
            "1h 30m",
            "h1",
            "99999999999999999999999s",
            "600w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn never() {
        assert_eq!(parse_duration_or_never("never"), Ok(None));
        assert_eq!(
            parse_duration_or_never("1h"),
            Ok(Some(Duration::from_secs(3600)))
        );
        assert!(parse_duration_or_never("nope").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("unlimited"), Ok(Rate::Unlimited));
        let r = parse_rate("1000/h").unwrap();
        assert_eq!(
            r,
            Rate::Limited {
                count: 1000,
                per: Duration::from_secs(3600)
            }
        );
        assert_eq!(r.to_string(), "1000/h");
        assert_eq!(r.emission_interval(), Some(Duration::from_millis(3600)));
        assert!((parse_rate("60/m").unwrap().per_second() - 1.0).abs() < 1e-9);
        assert_eq!(parse_rate("5/s").unwrap().to_string(), "5/s");
        assert_eq!(parse_rate("5/d").unwrap().to_string(), "5/d");
        assert_eq!(parse_rate("5/m").unwrap().to_string(), "5/m");
        assert_eq!(Rate::Unlimited.emission_interval(), None);
    }

    #[test]
    fn bad_rates() {
        for bad in [
            "", "100", "0/h", "-1/h", "1.5/s", "10/w", "10/", "/h", "lots",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10 mib"), Ok(10 << 20));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "MiB", "1.5MiB", "-1", "10XB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_network("127.0.0.0/8").unwrap().to_string(),
            "127.0.0.0/8"
        );
        assert_eq!(parse_network("::1/128").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_network("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        for bad in ["10.0.0.0/33", "10.0.0/8", "fe80::/129", "foo", "10.1.2.3/8"] {
            assert!(parse_network(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_network("10.1.2.3/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_socket_addr("0.0.0.0:25").unwrap().port(), 25);
        assert_eq!(parse_socket_addr("[::1]:2525").unwrap().port(), 2525);
        for bad in ["0.0.0.0", "localhost:25", ":25", "1.2.3.4:70000"] {
            assert!(parse_socket_addr(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_nameserver("127.0.0.1").unwrap().port(), 53);
        assert!(parse_ip("203.0.113.300").is_err());
        assert!(parse_ip("0.0.0.0").is_ok());
    }

    #[test]
    fn smtp_hosts() {
        let h = parse_smtp_host("127.0.0.2:2526").unwrap();
        assert_eq!((h.ip.is_some(), h.port), (true, 2526));
        let h = parse_smtp_host("MX.Example.NET").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.ip),
            ("mx.example.net", 25, None)
        );
        assert_eq!(parse_smtp_host("mx.example.net:2525").unwrap().port, 2525);
        for bad in ["mx.example.net:0", "mx.example.net:x", "bad host:25", ""] {
            assert!(parse_smtp_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostnames_and_domains() {
        assert!(parse_hostname("mta1.example.com").is_ok());
        assert!(parse_hostname("[192.0.2.1]").is_ok());
        assert!(parse_hostname("[IPv6:::1]").is_ok());
        for bad in ["", "a..b", "-a.com", "a b", "x".repeat(64).as_str()] {
            assert!(parse_hostname(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_domain("Gmail.COM.").unwrap(), "gmail.com");
    }

    #[test]
    fn patterns_are_case_insensitive() {
        let re = parse_pattern(r"\[TSS0[45]\]").unwrap();
        assert!(re.is_match("421 4.7.0 [tss04] Messages from x temporarily deferred"));
        assert!(parse_pattern("(unclosed").is_err());
        assert!(parse_pattern("[z-a]").is_err());
        assert!(parse_pattern(&"a".repeat(PATTERN_SOURCE_BYTES_MAX + 1)).is_err());
        // A pattern that compiles to more than the bound is refused, not built.
        assert!(parse_pattern(r"\w{1000}\w{1000}").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("ip-1.a_b").is_ok());
        for bad in ["", "a/b", "a b", "*", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
