//! A tiny authoritative DNS responder on loopback UDP for tests.
//!
//! Owns nothing but a zone in memory: MX/A/AAAA records with TTLs, names
//! that answer NXDOMAIN (with an SOA carrying the negative TTL), SERVFAIL,
//! or nothing at all (to provoke timeouts). It counts the queries it sees
//! per (name, type) so tests can tell cache hits from misses. Never real DNS.

#![allow(dead_code)] // reason: each test binary uses a different subset

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// What the server knows.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<(u32, RData)>>,
    servfail: HashSet<String>,
    silent: HashSet<String>,
    /// Negative TTL (SOA TTL and MINIMUM) of NXDOMAIN/NODATA answers.
    pub negative_ttl: u32,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn name(text: &str) -> Name {
    Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).expect("test name")
}

impl Zone {
    pub fn new() -> Self {
        Self {
            negative_ttl: 300,
            ..Self::default()
        }
    }

    pub fn mx(&mut self, domain: &str, preference: u16, exchange: &str, ttl: u32) -> &mut Self {
        let exchange = if exchange == "." {
            Name::root()
        } else {
            name(exchange)
        };
        self.add(
            domain,
            RecordType::MX,
            ttl,
            RData::MX(MX::new(preference, exchange)),
        )
    }

    pub fn a(&mut self, host: &str, ip: Ipv4Addr, ttl: u32) -> &mut Self {
        self.add(host, RecordType::A, ttl, RData::A(A(ip)))
    }

    pub fn aaaa(&mut self, host: &str, ip: Ipv6Addr, ttl: u32) -> &mut Self {
        self.add(host, RecordType::AAAA, ttl, RData::AAAA(AAAA(ip)))
    }

    /// The name answers SERVFAIL to every query.
    pub fn servfail(&mut self, name: &str) -> &mut Self {
        self.servfail.insert(key(name));
        self
    }

    /// Queries for the name are never answered.
    pub fn silent(&mut self, name: &str) -> &mut Self {
        self.silent.insert(key(name));
        self
    }

    fn add(&mut self, owner: &str, rtype: RecordType, ttl: u32, data: RData) -> &mut Self {
        self.records
            .entry((key(owner), rtype))
            .or_default()
            .push((ttl, data));
        self
    }

    fn exists(&self, owner: &str) -> bool {
        self.records.keys().any(|(n, _)| n == owner)
    }
}

/// A running responder; stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    counts: Arc<Mutex<HashMap<(String, RecordType), usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestDns {
    pub fn start(zone: Zone) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let counts = Arc::clone(&counts);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(socket, zone, counts, stop))
        };
        Self {
            addr,
            counts,
            stop,
            thread: Some(thread),
        }
    }

    /// Queries seen for `name` and `rtype`.
    pub fn count(&self, name: &str, rtype: RecordType) -> usize {
        let counts = self.counts.lock().expect("counts");
        counts.get(&(key(name), rtype)).copied().unwrap_or(0)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    socket: UdpSocket,
    zone: Zone,
    counts: Arc<Mutex<HashMap<(String, RecordType), usize>>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Acquire) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let Some(q) = query.queries.first().cloned() else {
            continue;
        };
        let owner = key(&q.name().to_ascii());
        *counts
            .lock()
            .expect("counts")
            .entry((owner.clone(), q.query_type()))
            .or_insert(0) += 1;
        if zone.silent.contains(&owner) {
            continue;
        }
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(q.clone());
        if zone.servfail.contains(&owner) {
            response.metadata.response_code = ResponseCode::ServFail;
        } else if let Some(records) = zone.records.get(&(owner.clone(), q.query_type())) {
            for (ttl, data) in records {
                response.add_answer(Record::from_rdata(q.name().clone(), *ttl, data.clone()));
            }
        } else {
            if !zone.exists(&owner) {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            let soa = SOA::new(
                name("ns.test"),
                name("hostmaster.test"),
                1,
                3600,
                600,
                86_400,
                zone.negative_ttl,
            );
            response.add_authority(Record::from_rdata(
                name("test"),
                zone.negative_ttl,
                RData::SOA(soa),
            ));
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}
