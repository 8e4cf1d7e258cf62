//! The resolver service and route resolution against a loopback DNS server.

#[path = "support/dns_server.rs"]
mod dns_server;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use dns_server::{TestDns, Zone};
use hickory_proto::rr::RecordType;
use rand::SeedableRng;
use rand::rngs::StdRng;
use spate::delivery::route::{Route, RouteError, SmtpHost, resolve_route};
use spate::dns::{Answer, DnsError, DnsOptions, DnsService, MxRecord};

fn service(dns: &TestDns, cache_size: usize) -> DnsService {
    DnsService::start(DnsOptions {
        nameservers: Some(vec![dns.addr]),
        timeout: Duration::from_millis(300),
        attempts: 0,
        cache_size,
        ..DnsOptions::default()
    })
    .expect("start resolver")
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Runs `resolve_route` inside a compio runtime, as a shard would.
fn route(
    svc: &DnsService,
    domain: &str,
    smtp_hosts: Option<&[SmtpHost]>,
    seed: u64,
) -> Result<Route, RouteError> {
    let client = svc.client();
    let runtime = compio::runtime::Runtime::new().expect("compio runtime");
    runtime.block_on(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        resolve_route(&client, domain, smtp_hosts, &mut rng).await
    })
}

fn names(route: &Route) -> Vec<&str> {
    route.hosts.iter().map(|h| h.name.as_str()).collect()
}

fn base_zone() -> Zone {
    let mut z = Zone::new();
    z.mx("pref.test", 20, "mx-c.pref.test", 300)
        .mx("pref.test", 10, "mx-a1.pref.test", 300)
        .mx("pref.test", 10, "mx-a2.pref.test", 300)
        .mx("pref.test", 10, "mx-a3.pref.test", 300)
        .mx("pref.test", 5, "mx-first.pref.test", 300);
    for (host, last) in [
        ("mx-c.pref.test", 10),
        ("mx-a1.pref.test", 11),
        ("mx-a2.pref.test", 12),
        ("mx-a3.pref.test", 13),
        ("mx-first.pref.test", 14),
    ] {
        z.a(host, v4(last), 300);
    }
    z.aaaa("mx-first.pref.test", Ipv6Addr::LOCALHOST, 300);
    z.mx("null.test", 0, ".", 300);
    z.a("implicit.test", v4(20), 300);
    z.aaaa("implicit.test", Ipv6Addr::LOCALHOST, 300);
    z.a("noaddr-host.test", v4(21), 300); // exists, used for NODATA MX
    z.servfail("servfail.test");
    z.silent("silent.test");
    z.mx("ttl.test", 10, "mx.ttl.test", 1);
    for d in ["c1.test", "c2.test", "c3.test"] {
        z.mx(d, 10, "mx.c.test", 300);
    }
    z
}

#[test]
fn mx_preference_order_random_among_equals_and_v4_first() {
    let dns = TestDns::start(base_zone());
    let svc = service(&dns, 1000);
    let mut firsts = std::collections::HashSet::new();
    for seed in 0..12 {
        let r = route(&svc, "pref.test", None, seed).expect("route");
        let n = names(&r);
        assert_eq!(n.len(), 5);
        assert_eq!(n[0], "mx-first.pref.test");
        assert_eq!(n[4], "mx-c.pref.test");
        let mut mid = n[1..4].to_vec();
        firsts.insert(mid[0].to_string());
        mid.sort_unstable();
        assert_eq!(
            mid,
            ["mx-a1.pref.test", "mx-a2.pref.test", "mx-a3.pref.test"]
        );
        assert_eq!(
            r.hosts[0].addrs,
            vec![
                SocketAddr::new(IpAddr::V4(v4(14)), 25),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 25)
            ],
            "IPv4 before IPv6"
        );
        assert_eq!(r.hosts[0].preference, 5);
    }
    assert!(
        firsts.len() >= 2,
        "equal preferences are shuffled: {firsts:?}"
    );
    // A seeded RNG gives the same order every time.
    let a = route(&svc, "pref.test", None, 99).expect("route");
    let b = route(&svc, "pref.test", None, 99).expect("route");
    assert_eq!(a, b);
    // Cached: one MX query however many routes.
    assert_eq!(dns.count("pref.test", RecordType::MX), 1);
}

#[test]
fn null_mx_nxdomain_implicit_mx_and_temporary_failures() {
    let dns = TestDns::start(base_zone());
    let svc = service(&dns, 1000);
    let permanent = |r: Result<Route, RouteError>| match r {
        Err(RouteError::Permanent { enhanced, .. }) => enhanced.to_string(),
        other => panic!("expected permanent failure, got {other:?}"),
    };
    assert_eq!(permanent(route(&svc, "null.test", None, 1)), "5.1.10");
    assert_eq!(permanent(route(&svc, "nowhere.test", None, 1)), "5.1.2");

    let implicit = route(&svc, "implicit.test", None, 1).expect("implicit MX");
    assert_eq!(names(&implicit), ["implicit.test"]);
    assert_eq!(
        implicit.hosts[0].addrs,
        vec![
            SocketAddr::new(IpAddr::V4(v4(20)), 25),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 25)
        ]
    );

    assert!(matches!(
        route(&svc, "servfail.test", None, 1),
        Err(RouteError::Temporary { .. })
    ));
    let started = std::time::Instant::now();
    assert!(matches!(
        route(&svc, "silent.test", None, 1),
        Err(RouteError::Temporary { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timeout is bounded"
    );
    let m = svc.metrics();
    assert!(m.failures >= 2, "{m:?}");
    // Temporary failures are not cached: asking again queries again.
    let before = dns.count("servfail.test", RecordType::MX);
    let _ = route(&svc, "servfail.test", None, 1);
    assert!(dns.count("servfail.test", RecordType::MX) > before);
}

#[test]
fn smtp_hosts_override_in_order() {
    let dns = TestDns::start(base_zone());
    let svc = service(&dns, 1000);
    let hosts: Vec<SmtpHost> = ["127.0.0.9:2526", "implicit.test:2525", "nowhere.test:25"]
        .iter()
        .map(|s| s.parse().expect("smtp host"))
        .collect();
    let r = route(&svc, "null.test", Some(&hosts), 1).expect("override ignores MX");
    assert_eq!(names(&r), ["127.0.0.9", "implicit.test"]);
    assert_eq!(r.hosts[0].addrs, vec!["127.0.0.9:2526".parse().unwrap()]);
    assert_eq!(r.hosts[1].addrs[0], "127.0.0.20:2525".parse().unwrap());
    assert_eq!(dns.count("null.test", RecordType::MX), 0);
    let only_bad: Vec<SmtpHost> = vec!["nowhere.test:25".parse().unwrap()];
    assert!(matches!(
        route(&svc, "x.test", Some(&only_bad), 1),
        Err(RouteError::Permanent { .. })
    ));
}

#[test]
fn ttl_expiry_negative_caching_and_cache_bound() {
    let dns = TestDns::start(base_zone());
    let client_svc = service(&dns, 1000);
    let c = client_svc.client();
    let want = Answer::Records(vec![MxRecord {
        preference: 10,
        exchange: "mx.ttl.test".into(),
    }]);
    assert_eq!(c.mx_blocking("TTL.test."), Ok(want.clone()));
    assert_eq!(c.mx_blocking("ttl.test"), Ok(want.clone()));
    assert_eq!(
        dns.count("ttl.test", RecordType::MX),
        1,
        "second answer cached"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.mx_blocking("ttl.test"), Ok(want));
    assert_eq!(
        dns.count("ttl.test", RecordType::MX),
        2,
        "expired after TTL"
    );

    // NXDOMAIN is cached per the SOA (300 s here).
    assert_eq!(c.mx_blocking("gone.test"), Ok(Answer::NxDomain));
    assert_eq!(c.mx_blocking("gone.test"), Ok(Answer::NxDomain));
    assert_eq!(dns.count("gone.test", RecordType::MX), 1);
    // NODATA too.
    assert_eq!(c.mx_blocking("noaddr-host.test"), Ok(Answer::NoData));
    assert_eq!(c.mx_blocking("noaddr-host.test"), Ok(Answer::NoData));
    assert_eq!(dns.count("noaddr-host.test", RecordType::MX), 1);
    let m = c.metrics();
    assert_eq!(m.cache_hits, 3, "{m:?}");
    assert_eq!(m.lookups, 7, "{m:?}");

    // A two-entry cache evicts the least recently used.
    let small = service(&dns, 2);
    let s = small.client();
    for d in ["c1.test", "c2.test", "c3.test"] {
        assert!(matches!(s.mx_blocking(d), Ok(Answer::Records(_))));
    }
    assert!(matches!(s.mx_blocking("c3.test"), Ok(Answer::Records(_))));
    assert_eq!(dns.count("c3.test", RecordType::MX), 1, "c3 still cached");
    assert!(matches!(s.mx_blocking("c1.test"), Ok(Answer::Records(_))));
    assert_eq!(dns.count("c1.test", RecordType::MX), 2, "c1 was evicted");
    assert!(small.metrics().cache_entries <= 2);
}

#[test]
fn invalid_names_and_shutdown() {
    let dns = TestDns::start(base_zone());
    let svc = service(&dns, 10);
    let c = svc.client();
    assert!(matches!(
        c.mx_blocking("bad name"),
        Err(DnsError::InvalidName(_))
    ));
    drop(svc);
    assert!(matches!(
        c.mx_blocking("pref.test"),
        Err(DnsError::Shutdown)
    ));
}

#[test]
fn full_request_queue_answers_busy_without_blocking() {
    let dns = TestDns::start(base_zone());
    let svc = DnsService::start(DnsOptions {
        nameservers: Some(vec![dns.addr]),
        timeout: Duration::from_millis(300),
        attempts: 0,
        cache_size: 10,
        request_queue_len: 1,
    })
    .expect("start resolver");
    let total = spate::dns::DNS_IN_FLIGHT_MAX + 64;
    let runtime = compio::runtime::Runtime::new().expect("compio runtime");
    let results: Vec<Result<Answer<MxRecord>, DnsError>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..total)
            .map(|_| {
                let c = svc.client();
                compio::runtime::spawn(async move { c.mx("silent.test").await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(DnsError::Busy)))
        .count();
    assert!(
        busy > 0,
        "a one-slot queue behind {total} stalled lookups must overflow"
    );
    assert!(results.iter().all(|r| r.is_err()));
    let m = svc.metrics();
    assert_eq!(m.rejected, busy as u64);
    assert_eq!(m.failures, total as u64);
}
