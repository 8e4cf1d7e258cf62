//! Authoritative test DNS server for loopback scenarios and tests.
//!
//! Owns the zone file format, its parser, and a small UDP+TCP server built on
//! std threads (no async runtime: tests can start it anywhere). Messages are
//! decoded and encoded with hickory-proto. It answers only what the zone holds:
//! NXDOMAIN for unknown names, NODATA (NOERROR, empty answer, SOA in authority)
//! when the name exists without the asked type, or exists only as the parent
//! of names the zone holds (an empty non-terminal, RFC 8020). It never
//! recurses. An answer too large for a DNS message (records of one name adding
//! up to more than 65,535 bytes) gets SERVFAIL; a single record that could
//! never be sent is refused when the zone is parsed.
//!
//! # Zone file format
//!
//! One record per line: `NAME [TTL] TYPE DATA`, `#` or `;` starts a comment.
//! `$TTL N` sets the default TTL (300 when absent) for following lines;
//! `$NEGTTL N` sets the TTL of the SOA added to negative answers (default 60).
//! Names are case-insensitive, the trailing dot is optional. A TXT string
//! longer than 255 bytes is sent as consecutive 255-byte character-strings
//! (as RFC 7208 describes for SPF, and DKIM keys need): clients join them.
//!
//! ```text
//! $TTL 300
//! example.test        MX   10 mx1.example.test
//! example.test        MX   20 mx2.example.test
//! mx1.example.test    60 A 127.0.0.2
//! mx2.example.test    AAAA ::1
//! nullmx.test         MX   0 .
//! example.test        TXT  "v=spf1 -all"
//! ```

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Default TTL in seconds when neither the line nor `$TTL` gives one.
pub const ZONE_TTL_S_DEFAULT: u32 = 300;
/// Default TTL in seconds of the SOA carried by NXDOMAIN/NODATA answers.
pub const NEGATIVE_TTL_S_DEFAULT: u32 = 60;
/// Largest DNS message we read over UDP or TCP.
const DNS_MESSAGE_BYTES_MAX: usize = 65_535;
/// Concurrent TCP connections served; more are closed at once.
const TCP_CONNECTIONS_MAX: usize = 64;
/// Poll interval of the server threads for the stop flag.
const STOP_POLL_MS: u64 = 100;
/// Longest character-string in a TXT record (one length byte, RFC 1035 3.3).
const TXT_STRING_BYTES_MAX: usize = 255;
/// The TC (truncated) flag in the third byte of an encoded DNS header.
const HEADER_FLAGS_TC: u8 = 0x02;

/// A parsed zone: records by lower-case owner name.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: HashMap<Name, Vec<Record>>,
    /// Every ancestor of an owner name (up to the root): names that exist
    /// because a name below them does, answered NODATA when they own nothing.
    ancestors: HashSet<Name>,
    negative_ttl_s: u32,
}

impl Zone {
    /// Parses the zone text format described in the module documentation.
    /// Errors name the line as `zone line N`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::parse_from(text, "zone")
    }

    /// Parses zone text; errors name the line as `{source} line N`.
    fn parse_from(text: &str, source: &str) -> anyhow::Result<Self> {
        let mut zone = Zone {
            records: HashMap::new(),
            ancestors: HashSet::new(),
            negative_ttl_s: NEGATIVE_TTL_S_DEFAULT,
        };
        let mut default_ttl_s = ZONE_TTL_S_DEFAULT;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ctx = || format!("{source} line {line_no}: {raw:?}");
            match fields.as_slice() {
                ["$TTL", n] => default_ttl_s = n.parse().with_context(ctx)?,
                ["$NEGTTL", n] => zone.negative_ttl_s = n.parse().with_context(ctx)?,
                [name, rest @ ..] => {
                    let record = parse_record(name, rest, default_ttl_s, line).with_context(ctx)?;
                    zone.records
                        .entry(record.name.clone())
                        .or_default()
                        .push(record);
                }
                [] => {}
            }
        }
        for owner in zone.records.keys() {
            let mut name = owner.clone();
            while !name.is_root() {
                name = name.base_name();
                if !zone.ancestors.insert(name.clone()) {
                    break; // its own ancestors are in already
                }
            }
        }
        Ok(zone)
    }

    /// Reads and parses a zone file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading zone file {}", path.display()))?;
        Self::parse_from(&text, &format!("zone file {}", path.display()))
    }

    /// Builds the response to one query message.
    pub fn answer(&self, query: &Message) -> Message {
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        if query.metadata.op_code != OpCode::Query || query.queries.len() != 1 {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let Some(question) = query.queries.first() else {
            return response;
        };
        response.add_query(question.clone());
        let name = question.name().to_lowercase();
        match self.records.get(&name) {
            // An empty non-terminal exists: NODATA, not NXDOMAIN (RFC 8020).
            None if self.ancestors.contains(&name) => {
                response.add_authority(self.negative_soa(&name));
            }
            None => {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(self.negative_soa(&name));
            }
            Some(records) => {
                let qtype = question.query_type();
                let matching: Vec<Record> = records
                    .iter()
                    .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                    .cloned()
                    .collect();
                if matching.is_empty() {
                    response.add_authority(self.negative_soa(&name));
                } else {
                    response.add_answers(matching);
                }
            }
        }
        response
    }

    fn negative_soa(&self, name: &Name) -> Record {
        let apex = name.base_name();
        let soa = SOA::new(
            Name::from_ascii("ns.invalid.").unwrap_or_else(|_| Name::root()),
            Name::from_ascii("hostmaster.invalid.").unwrap_or_else(|_| Name::root()),
            1,
            3600,
            600,
            86_400,
            self.negative_ttl_s,
        );
        Record::from_rdata(apex, self.negative_ttl_s, RData::SOA(soa))
    }
}

fn strip_comment(line: &str) -> &str {
    // Comments may not start inside a quoted TXT string.
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '#' | ';' if !in_quotes => return &line[..i],
            _ => {}
        }
    }
    line
}

fn parse_name(text: &str) -> anyhow::Result<Name> {
    let mut fqdn = text.to_ascii_lowercase();
    if !fqdn.ends_with('.') {
        fqdn.push('.');
    }
    Name::from_ascii(&fqdn).with_context(|| format!("bad domain name {text:?}"))
}

fn parse_record(
    name: &str,
    rest: &[&str],
    default_ttl_s: u32,
    line: &str,
) -> anyhow::Result<Record> {
    let owner = parse_name(name)?;
    let (ttl_s, rest) = match rest.first().map(|f| f.parse::<u32>()) {
        Some(Ok(ttl)) => (ttl, rest.get(1..).unwrap_or_default()),
        _ => (default_ttl_s, rest),
    };
    let Some((rtype, data)) = rest.split_first() else {
        bail!("missing record type");
    };
    let rdata = match (rtype.to_ascii_uppercase().as_str(), data) {
        ("MX", [pref, exchange]) => {
            let preference = pref.parse::<u16>().context("bad MX preference")?;
            let exchange = if *exchange == "." {
                Name::root()
            } else {
                parse_name(exchange)?
            };
            RData::MX(MX::new(preference, exchange))
        }
        ("A", [ip]) => RData::A(A(Ipv4Addr::from_str(ip).context("bad IPv4 address")?)),
        ("AAAA", [ip]) => RData::AAAA(AAAA(Ipv6Addr::from_str(ip).context("bad IPv6 address")?)),
        ("TXT", _) => {
            // Everything after "TXT", one string per quoted part (or the bare rest).
            let after = line
                .split_once(|c: char| c.is_whitespace())
                .map(|(_, r)| r)
                .and_then(|r| {
                    let upper = r.to_ascii_uppercase();
                    upper.find("TXT").map(|p| r[p + 3..].trim())
                })
                .unwrap_or_default();
            let strings = parse_txt_strings(after)?;
            let mut chunks: Vec<&[u8]> = Vec::with_capacity(strings.len());
            for s in &strings {
                if s.is_empty() {
                    chunks.push(&[]);
                } else {
                    chunks.extend(s.as_bytes().chunks(TXT_STRING_BYTES_MAX));
                }
            }
            RData::TXT(TXT::from_bytes(chunks))
        }
        (other, _) => bail!("unsupported record type or wrong field count: {other}"),
    };
    let record = Record::from_rdata(owner, ttl_s, rdata);
    check_encodes(&record)?;
    Ok(record)
}

/// Refuses a record no answer could carry (e.g. more than 65,535 bytes of
/// TXT), so that the server never meets it at query time.
fn check_encodes(record: &Record) -> anyhow::Result<()> {
    let mut message = Message::response(0, OpCode::Query);
    message.add_query(Query::query(record.name.clone(), record.record_type()));
    message.add_answer(record.clone());
    encode_whole(&message)
        .with_context(|| format!("{} record cannot be sent", record.record_type()))?;
    Ok(())
}

/// Encodes a message with all its records. hickory-proto leaves out the
/// records past 65,535 bytes and sets the TC flag, which over TCP means a
/// silently partial answer: that is an error here.
fn encode_whole(message: &Message) -> anyhow::Result<Vec<u8>> {
    let bytes = message.to_vec()?;
    let truncated = bytes
        .get(2)
        .is_some_and(|flags| flags & HEADER_FLAGS_TC != 0);
    anyhow::ensure!(
        !truncated || message.metadata.truncation,
        "the records do not fit in a DNS message ({DNS_MESSAGE_BYTES_MAX} bytes at most)"
    );
    Ok(bytes)
}

fn parse_txt_strings(text: &str) -> anyhow::Result<Vec<String>> {
    if !text.starts_with('"') {
        if text.is_empty() {
            bail!("empty TXT record");
        }
        return Ok(vec![text.to_owned()]);
    }
    let mut strings = Vec::new();
    let mut rest = text;
    while let Some(stripped) = rest.strip_prefix('"') {
        let Some(end) = stripped.find('"') else {
            bail!("unterminated TXT string");
        };
        strings.push(stripped[..end].to_owned());
        rest = stripped[end + 1..].trim_start();
    }
    if !rest.is_empty() {
        bail!("trailing text after TXT strings: {rest:?}");
    }
    Ok(strings)
}

/// A running DNS server; stops its threads when dropped.
#[derive(Debug)]
pub struct DnsHandle {
    /// The bound address, the same port for UDP and TCP.
    pub addr: SocketAddr,
    served: Arc<Served>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The zone a server answers from, and how many queries it answered.
#[derive(Debug)]
struct Served {
    zone: Zone,
    queries: AtomicU64,
}

impl DnsHandle {
    /// Queries answered so far (UDP and TCP; malformed ones included).
    pub fn queries(&self) -> u64 {
        self.served.queries.load(Ordering::Relaxed)
    }

    /// Stops the server and waits for its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the server on `listen` (port 0 picks a free port, the same for UDP
/// and TCP) and returns at once; the handle carries the bound address.
pub fn spawn(listen: SocketAddr, zone: Zone) -> anyhow::Result<DnsHandle> {
    let (udp, tcp) = bind_pair(listen)?;
    let addr = udp.local_addr()?;
    let served = Arc::new(Served {
        zone,
        queries: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    udp.set_read_timeout(Some(Duration::from_millis(STOP_POLL_MS)))?;
    tcp.set_nonblocking(true)?;
    let udp_thread = {
        let (served, stop) = (served.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-dns-udp".into())
            .spawn(move || serve_udp(&udp, &served, &stop))?
    };
    let tcp_thread = {
        let (served, stop) = (served.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-dns-tcp".into())
            .spawn(move || serve_tcp(&tcp, &served, &stop))?
    };
    Ok(DnsHandle {
        addr,
        served,
        stop,
        threads: vec![udp_thread, tcp_thread],
    })
}

fn bind_pair(listen: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    if listen.port() != 0 {
        let udp = UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
        let tcp = TcpListener::bind(listen).with_context(|| format!("binding TCP {listen}"))?;
        return Ok((udp, tcp));
    }
    // Port 0: find a port free for both protocols.
    for _ in 0..32 {
        let udp = UdpSocket::bind(listen)?;
        let addr = udp.local_addr()?;
        if let Ok(tcp) = TcpListener::bind(addr) {
            return Ok((udp, tcp));
        }
    }
    bail!("no port free for both UDP and TCP on {}", listen.ip())
}

fn respond(served: &Served, request: &[u8]) -> Option<Vec<u8>> {
    served.queries.fetch_add(1, Ordering::Relaxed);
    let zone = &served.zone;
    let query = match Message::from_vec(request) {
        Ok(q) if q.metadata.message_type == MessageType::Query => q,
        Ok(_) => return None,
        Err(_) => {
            // Echo FORMERR when at least the id is readable.
            let id = u16::from_be_bytes([*request.first()?, *request.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    match encode_whole(&zone.answer(&query)) {
        Ok(reply) => Some(reply),
        Err(_) => {
            // The records of one name add up to more than a message holds:
            // say so rather than send part of them or leave the client waiting.
            let mut fail = Message::error_msg(
                query.metadata.id,
                query.metadata.op_code,
                ResponseCode::ServFail,
            );
            fail.metadata.recursion_desired = query.metadata.recursion_desired;
            fail.add_queries(query.queries);
            fail.to_vec().ok()
        }
    }
}

fn serve_udp(socket: &UdpSocket, served: &Served, stop: &AtomicBool) {
    let mut buf = vec![0u8; DNS_MESSAGE_BYTES_MAX];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(request) = buf.get(..len) else {
            continue;
        };
        if let Some(mut reply) = respond(served, request) {
            if reply.len() > 512 {
                // Classic UDP limit: truncate and let the client retry over TCP.
                if let Ok(query) = Message::from_vec(request) {
                    let mut tc = Message::response(query.metadata.id, OpCode::Query);
                    tc.metadata.truncation = true;
                    tc.add_queries(query.queries);
                    reply = tc.to_vec().unwrap_or_default();
                }
            }
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, served: &Arc<Served>, stop: &AtomicBool) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if open.load(Ordering::SeqCst) >= TCP_CONNECTIONS_MAX {
                    continue; // dropped: the client retries
                }
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let (served, conn_open) = (served.clone(), open.clone());
                open.fetch_add(1, Ordering::SeqCst);
                // One short-lived thread per connection: TCP is rare here
                // (truncated answers, tests), and one idle client must not
                // block the others.
                let spawned = std::thread::Builder::new()
                    .name("bench-dns-tcp-conn".into())
                    .spawn(move || {
                        while serve_tcp_one(&mut stream, &served).is_ok() {}
                        conn_open.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_tcp_one(stream: &mut std::net::TcpStream, served: &Served) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut request = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut request)?;
    let reply = respond(served, &request).ok_or(std::io::ErrorKind::InvalidData)?;
    let reply_len = u16::try_from(reply.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    stream.write_all(&reply_len.to_be_bytes())?;
    stream.write_all(&reply)
}

/// Arguments of `spate-bench dns`.
#[derive(clap::Args, Debug)]
pub struct DnsArgs {
    /// Address for both UDP and TCP, e.g. 127.0.0.1:5353.
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub listen: SocketAddr,
    /// Zone file (format in `spate_bench::dns` docs and bench/README.md).
    #[arg(long)]
    pub zone: std::path::PathBuf,
    /// Allow a non-loopback listen address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// Runs `spate-bench dns` until SIGINT/SIGTERM.
pub fn run(args: DnsArgs) -> anyhow::Result<()> {
    crate::ensure_loopback(args.listen, args.allow_remote)?;
    let zone = Zone::load(&args.zone)?;
    let handle = spawn(args.listen, zone)?;
    eprintln!("spate-bench dns: serving on {} (udp+tcp)", handle.addr);
    crate::wait_for_signal();
    handle.stop();
    Ok(())
}
