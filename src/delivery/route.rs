//! Destination resolution: which hosts and addresses to try for a domain.
//!
//! Owns the routing rules of RFC 5321 §5.1 and RFC 7505: `smtp_hosts`
//! overrides in configured order; otherwise MX records by preference with a
//! random order among equal preferences (the RNG is passed in, so tests seed
//! it); no MX → the domain itself as implicit MX; null MX → permanent
//! failure. Addresses of each host are IPv4 first, then IPv6: most receivers'
//! reputation systems and our vMTA source IPs are IPv4, so v4 is the
//! reliable first try and v6 the fallback. Also owns the MX rollup queue
//! key. The DNS itself is `dns`; connecting is the delivery loop's.
//!
//! `order_mx` and `rollup_key` are pure; `resolve_route` is the async shell
//! that asks the resolver (it runs on any executor).

use std::net::{IpAddr, SocketAddr};

use rand::Rng;
use rand::seq::SliceRandom;

use crate::dns::{Answer, DnsClient, DnsError, MxRecord};
use crate::smtp::reply::EnhancedStatus;

/// The SMTP port for MX-routed delivery.
pub const SMTP_PORT: u16 = 25;
/// MX hosts kept per route; a domain publishing more is cut to the best.
pub const ROUTE_HOSTS_MAX: usize = 16;
/// Addresses kept per host.
pub const ROUTE_ADDRS_PER_HOST_MAX: usize = 16;

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHost {
    /// MX exchange, `smtp_hosts` host, or the domain for an implicit MX.
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// MX preference; for `smtp_hosts` the position in the list.
    pub preference: u16,
}

/// The hosts of a destination in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub hosts: Vec<RouteHost>,
}

impl Route {
    /// Every address in try order.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.hosts.iter().flat_map(|h| h.addrs.iter().copied())
    }
}

/// Why a destination has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Bounce the recipients with this status.
    #[error("{enhanced} {text}")]
    Permanent {
        enhanced: EnhancedStatus,
        text: String,
    },
    /// Defer the recipients and retry later.
    #[error("{text}")]
    Temporary { text: String },
}

impl RouteError {
    fn permanent(enhanced: EnhancedStatus, text: String) -> Self {
        Self::Permanent { enhanced, text }
    }

    fn from_dns(context: &str, error: &DnsError) -> Self {
        if error.is_temporary() {
            Self::Temporary {
                text: format!("{context}: {error}"),
            }
        } else {
            Self::permanent(EnhancedStatus::new(5, 1, 2), format!("{context}: {error}"))
        }
    }
}

/// One `smtp_hosts` entry, as configuration parses it (`host:port`,
/// `[v6]:port`, or a host alone for port 25).
pub use crate::config::SmtpHost;

/// What the MX answer says to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Exchanges with their preferences, in try order.
    Hosts(Vec<(String, u16)>),
    /// No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
    Implicit,
}

/// Orders an MX answer: ascending preference, shuffled among equals, with
/// duplicates removed and at most `ROUTE_HOSTS_MAX` hosts.
pub fn order_mx<R: Rng + ?Sized>(
    domain: &str,
    answer: Result<Answer<MxRecord>, DnsError>,
    rng: &mut R,
) -> Result<MxPlan, RouteError> {
    let records = match answer {
        Ok(Answer::Records(records)) => records,
        Ok(Answer::NoData) => return Ok(MxPlan::Implicit),
        Ok(Answer::NxDomain) => {
            return Err(RouteError::permanent(
                EnhancedStatus::new(5, 1, 2),
                format!("domain {domain} does not exist"),
            ));
        }
        Err(e) => return Err(RouteError::from_dns(&format!("MX lookup for {domain}"), &e)),
    };
    // RFC 7505: a single record with the root as exchange says "no mail".
    // A root exchange mixed with real ones is a misconfiguration; ignore it.
    if records.iter().all(|r| r.exchange.is_empty()) {
        return Err(RouteError::permanent(
            EnhancedStatus::new(5, 1, 10),
            format!("domain {domain} accepts no mail (null MX)"),
        ));
    }
    let mut records: Vec<MxRecord> = records
        .into_iter()
        .filter(|r| !r.exchange.is_empty())
        .collect();
    // Duplicates keep their best preference.
    records.sort_by(|a, b| {
        a.exchange
            .cmp(&b.exchange)
            .then(a.preference.cmp(&b.preference))
    });
    records.dedup_by(|later, first| later.exchange == first.exchange);
    records.sort_by_key(|r| r.preference);
    for group in records.chunk_by_mut(|a, b| a.preference == b.preference) {
        group.shuffle(rng);
    }
    records.truncate(ROUTE_HOSTS_MAX);
    Ok(MxPlan::Hosts(
        records
            .into_iter()
            .map(|r| (r.exchange, r.preference))
            .collect(),
    ))
}

/// Resolves the route for `domain`: `smtp_hosts` when given (non-empty),
/// else MX. MX hosts are contacted on `SMTP_PORT`.
pub async fn resolve_route<R: Rng + ?Sized>(
    dns: &DnsClient,
    domain: &str,
    smtp_hosts: Option<&[SmtpHost]>,
    rng: &mut R,
) -> Result<Route, RouteError> {
    if let Some(list) = smtp_hosts.filter(|l| !l.is_empty()) {
        let targets = list
            .iter()
            .take(ROUTE_HOSTS_MAX)
            .enumerate()
            .map(|(i, h)| (h.host.clone(), u16::try_from(i).unwrap_or(u16::MAX), h.port));
        return resolve_hosts(dns, domain, targets.collect()).await;
    }
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return address_literal_route(literal);
    }
    let plan = order_mx(domain, dns.mx(domain).await, rng)?;
    match plan {
        MxPlan::Hosts(hosts) => {
            let targets = hosts
                .into_iter()
                .map(|(name, preference)| (name, preference, SMTP_PORT))
                .collect();
            resolve_hosts(dns, domain, targets).await
        }
        MxPlan::Implicit => match dns.ip(domain).await {
            Ok(Answer::Records(ips)) => Ok(Route {
                hosts: vec![RouteHost {
                    name: domain.to_ascii_lowercase(),
                    addrs: socket_addrs(&ips, SMTP_PORT),
                    preference: 0,
                }],
            }),
            Ok(Answer::NoData | Answer::NxDomain) => Err(RouteError::permanent(
                EnhancedStatus::new(5, 1, 2),
                format!("domain {domain} has no MX and no address"),
            )),
            Err(e) => Err(RouteError::from_dns(
                &format!("address lookup for {domain}"),
                &e,
            )),
        },
    }
}

/// A domain written as an address literal (`[192.0.2.1]`, `[IPv6:::1]`,
/// RFC 5321 §4.1.3) is delivered to that address without DNS.
pub fn address_literal_route(literal: &str) -> Result<Route, RouteError> {
    let text = literal
        .strip_prefix("IPv6:")
        .or_else(|| literal.strip_prefix("ipv6:"))
        .unwrap_or(literal);
    let ip: IpAddr = text.parse().map_err(|_| {
        RouteError::permanent(
            EnhancedStatus::new(5, 1, 2),
            format!(
                "invalid address literal [{}]",
                literal.chars().take(64).collect::<String>()
            ),
        )
    })?;
    // An IPv6 address must carry the tag, an IPv4 one must not.
    if ip.is_ipv6() == (text.len() == literal.len()) {
        return Err(RouteError::permanent(
            EnhancedStatus::new(5, 1, 2),
            format!("invalid address literal [{literal}]"),
        ));
    }
    Ok(Route {
        hosts: vec![RouteHost {
            name: format!("[{literal}]"),
            addrs: vec![SocketAddr::new(ip, SMTP_PORT)],
            preference: 0,
        }],
    })
}

fn socket_addrs(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let mut ips = ips.to_vec();
    crate::dns::v4_first(&mut ips);
    ips.into_iter()
        .take(ROUTE_ADDRS_PER_HOST_MAX)
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Looks up every host (IP literals need no lookup), keeping order. Hosts
/// without addresses are skipped; if none is left the route fails,
/// temporarily if any lookup failed temporarily.
async fn resolve_hosts(
    dns: &DnsClient,
    domain: &str,
    targets: Vec<(String, u16, u16)>,
) -> Result<Route, RouteError> {
    let mut hosts = Vec::with_capacity(targets.len());
    let mut temporary = None;
    for (name, preference, port) in targets {
        let ips = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match dns.ip(&name).await {
                Ok(Answer::Records(ips)) => ips,
                Ok(Answer::NoData | Answer::NxDomain) => continue,
                Err(e) => {
                    if e.is_temporary() {
                        temporary.get_or_insert(format!("address lookup for {name}: {e}"));
                    }
                    continue;
                }
            },
        };
        hosts.push(RouteHost {
            name,
            addrs: socket_addrs(&ips, port),
            preference,
        });
    }
    if !hosts.is_empty() {
        return Ok(Route { hosts });
    }
    match temporary {
        Some(text) => Err(RouteError::Temporary { text }),
        None => Err(RouteError::permanent(
            EnhancedStatus::new(5, 4, 4),
            format!("no address for any mail host of {domain}"),
        )),
    }
}

/// The queue key of an `mx_rollup` domain, from its MX host names.
///
/// Rule: take each MX host's provider suffix (its last two labels, or three
/// when the last two look like a country second-level suffix such as
/// `co.uk`), lowercase; the key is the alphabetically first suffix plus
/// `.rollup`. So every domain hosted by Google (`*.l.google.com`,
/// `*.googlemail.com`) rolls up to `google.com.rollup`, queue
/// `google.com.rollup/ip1`. If no host name has two labels the key is a
/// stable FNV-1a hash of the sorted host set, `mx-<16 hex>.rollup`. `None`
/// when there are no MX hosts (implicit MX: queue by domain).
pub fn rollup_key<S: AsRef<str>>(mx_hosts: &[S]) -> Option<String> {
    let mut names: Vec<String> = mx_hosts
        .iter()
        .map(|h| {
            let h = h.as_ref().trim().to_ascii_lowercase();
            h.strip_suffix('.').map(str::to_string).unwrap_or(h)
        })
        .filter(|h| !h.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    if let Some(suffix) = names.iter().filter_map(|n| provider_suffix(n)).min() {
        return Some(format!("{suffix}.rollup"));
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in &names {
        for byte in name.bytes().chain([0u8]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Some(format!("mx-{hash:016x}.rollup"))
}

fn provider_suffix(name: &str) -> Option<String> {
    let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
    if labels.len() < 2 || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    const SECOND_LEVEL: [&str; 11] = [
        "co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "gob", "mil",
    ];
    let n = labels.len();
    let take = match (labels.get(n - 1), labels.get(n - 2)) {
        (Some(tld), Some(sld)) if tld.len() == 2 && SECOND_LEVEL.contains(sld) && n >= 3 => 3,
        _ => 2,
    };
    Some(labels[n - take..].join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.into(),
        }
    }

    fn hosts(plan: MxPlan) -> Vec<String> {
        match plan {
            MxPlan::Hosts(h) => h.into_iter().map(|(n, _)| n).collect(),
            MxPlan::Implicit => vec![],
        }
    }

    #[test]
    fn preference_order_and_shuffle_among_equals() {
        let answer = || {
            Ok(Answer::Records(vec![
                mx(20, "c"),
                mx(10, "a1"),
                mx(10, "a2"),
                mx(10, "a3"),
                mx(5, "first"),
            ]))
        };
        let mut seen_first = std::collections::HashSet::new();
        for seed in 0..32 {
            let mut rng = StdRng::seed_from_u64(seed);
            let h = hosts(order_mx("d", answer(), &mut rng).unwrap());
            assert_eq!(h.len(), 5);
            assert_eq!(h[0], "first");
            assert_eq!(h[4], "c");
            let mut mid = h[1..4].to_vec();
            seen_first.insert(mid[0].clone());
            mid.sort();
            assert_eq!(mid, ["a1", "a2", "a3"]);
        }
        assert_eq!(
            seen_first.len(),
            3,
            "every equal host comes first sometimes"
        );
        // Same seed, same order.
        let a = hosts(order_mx("d", answer(), &mut StdRng::seed_from_u64(7)).unwrap());
        let b = hosts(order_mx("d", answer(), &mut StdRng::seed_from_u64(7)).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn null_mx_nxdomain_nodata_and_errors() {
        let mut rng = StdRng::seed_from_u64(1);
        let perm = |r: Result<MxPlan, RouteError>| match r {
            Err(RouteError::Permanent { enhanced, .. }) => enhanced.to_string(),
            other => panic!("expected permanent, got {other:?}"),
        };
        assert_eq!(
            perm(order_mx(
                "d",
                Ok(Answer::Records(vec![mx(0, "")])),
                &mut rng
            )),
            "5.1.10"
        );
        assert_eq!(perm(order_mx("d", Ok(Answer::NxDomain), &mut rng)), "5.1.2");
        assert_eq!(
            order_mx("d", Ok(Answer::NoData), &mut rng),
            Ok(MxPlan::Implicit)
        );
        assert!(matches!(
            order_mx("d", Err(DnsError::Timeout), &mut rng),
            Err(RouteError::Temporary { .. })
        ));
        assert!(matches!(
            order_mx(
                "d",
                Err(DnsError::ServerFailure("SERVFAIL".into())),
                &mut rng
            ),
            Err(RouteError::Temporary { .. })
        ));
        // A root exchange beside real ones is ignored, duplicates merged.
        let plan = order_mx(
            "d",
            Ok(Answer::Records(vec![mx(0, ""), mx(10, "a"), mx(5, "a")])),
            &mut rng,
        );
        assert_eq!(plan, Ok(MxPlan::Hosts(vec![("a".into(), 5)])));
    }

    #[test]
    fn address_literals() {
        let addr = |l: &str| address_literal_route(l).map(|r| r.addrs().collect::<Vec<_>>());
        assert_eq!(addr("192.0.2.1"), Ok(vec!["192.0.2.1:25".parse().unwrap()]));
        assert_eq!(addr("IPv6:::1"), Ok(vec!["[::1]:25".parse().unwrap()]));
        assert!(addr("::1").is_err());
        assert!(addr("IPv6:192.0.2.1").is_err());
        assert!(addr("example.com").is_err());
    }

    #[test]
    fn smtp_host_parsing() {
        let p = |s: &str| s.parse::<SmtpHost>();
        assert_eq!(
            p("127.0.0.2:2526"),
            Ok(SmtpHost {
                host: "127.0.0.2".into(),
                ip: Some("127.0.0.2".parse().unwrap()),
                port: 2526
            })
        );
        assert_eq!(
            p("[::1]:25"),
            Ok(SmtpHost {
                host: "::1".into(),
                ip: Some("::1".parse().unwrap()),
                port: 25
            })
        );
        assert_eq!(
            p("MX.Example.com:587"),
            Ok(SmtpHost {
                host: "mx.example.com".into(),
                ip: None,
                port: 587
            })
        );
        assert_eq!(p("mx.example.com").map(|h| h.port), Ok(25));
        assert!(p("mx:0").is_err());
        assert!(p("mx:99999").is_err());
        assert!(p(":25").is_err());
        assert!(p("a b:25").is_err());
    }

    #[test]
    fn rollup_keys() {
        assert_eq!(
            rollup_key(&[
                "alt1.gmail-smtp-in.l.google.com.",
                "gmail-smtp-in.l.google.com"
            ]),
            Some("google.com.rollup".into())
        );
        assert_eq!(
            rollup_key(&["aspmx.l.google.com", "ALT2.ASPMX.L.GOOGLE.COM"]),
            Some("google.com.rollup".into())
        );
        assert_eq!(
            rollup_key(&["mx1.mail.example.co.uk"]),
            Some("example.co.uk.rollup".into())
        );
        let a = rollup_key(&["localhost", "mailhost"]);
        let b = rollup_key(&["mailhost", "LOCALHOST."]);
        assert_eq!(a, b);
        assert!(a.as_deref().is_some_and(|k| k.starts_with("mx-")));
        assert_ne!(a, rollup_key(&["localhost"]));
        assert_eq!(rollup_key::<&str>(&[]), None);
    }
}
