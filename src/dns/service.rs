//! The resolver thread and the client handle that talks to it.
//!
//! Owns the I/O shell around hickory: one OS thread with a tokio
//! current-thread runtime and a `LocalSet`; the cache (`TtlCache`) lives on
//! that thread only, so it needs no lock. Clients push requests into a
//! bounded crossbeam channel and wake the thread with a `tokio::sync::Notify`
//! (a stored permit means no wake-up is lost between draining the channel
//! and going to sleep). Hickory's own response cache is disabled
//! (`cache_size = 0`) so that every TTL decision is ours.
//!
//! Concurrent misses for the same name are not merged: each one queries.
//! MX answers are requested per queue, not per message, so this is rare.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::sync::{Notify, oneshot};

use super::{
    Answer, DNS_IN_FLIGHT_MAX, DnsError, DnsMetricsSnapshot, DnsOptions, MxRecord, TtlCache,
    negative_ttl, normalize_name, positive_ttl, v4_first,
};

type Reply<T> = oneshot::Sender<Result<Answer<T>, DnsError>>;

enum Request {
    Mx {
        name: String,
        reply: Reply<MxRecord>,
    },
    Ip {
        name: String,
        reply: Reply<IpAddr>,
    },
}

#[derive(Default)]
struct Metrics {
    lookups: AtomicU64,
    cache_hits: AtomicU64,
    queries: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    cache_entries: AtomicU64,
}

struct Shared {
    notify: Notify,
    stop: AtomicBool,
    metrics: Metrics,
}

/// A cheap, cloneable handle for submitting lookups from any thread.
#[derive(Clone)]
pub struct DnsClient {
    tx: Sender<Request>,
    shared: Arc<Shared>,
}

/// Owns the resolver thread; dropping it stops the thread (pending lookups
/// then fail with `DnsError::Shutdown`).
pub struct DnsService {
    client: DnsClient,
    thread: Option<JoinHandle<()>>,
}

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsStartError {
    #[error("reading the system resolver configuration: {0}")]
    SystemConfig(String),
    #[error("building the resolver: {0}")]
    Build(String),
    #[error("starting the resolver thread: {0}")]
    Thread(#[from] std::io::Error),
}

impl DnsService {
    /// Starts the resolver thread with `options`.
    pub fn start(options: DnsOptions) -> Result<Self, DnsStartError> {
        let (tx, rx) = bounded(options.request_queue_len.max(1));
        let shared = Arc::new(Shared {
            notify: Notify::new(),
            stop: AtomicBool::new(false),
            metrics: Metrics::default(),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("spate-dns".into())
            .spawn(move || run(options, rx, thread_shared, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                client: DnsClient { tx, shared },
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(DnsStartError::Build("resolver thread exited".into()))
            }
        }
    }

    pub fn client(&self) -> DnsClient {
        self.client.clone()
    }

    pub fn metrics(&self) -> DnsMetricsSnapshot {
        self.client.metrics()
    }
}

impl Drop for DnsService {
    fn drop(&mut self) {
        self.client.shared.stop.store(true, Ordering::Release);
        self.client.shared.notify.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl DnsClient {
    /// MX records of `domain`.
    pub async fn mx(&self, domain: &str) -> Result<Answer<MxRecord>, DnsError> {
        let rx = self.submit(domain, |name, reply| Request::Mx { name, reply })?;
        self.finish(rx.await)
    }

    /// A then AAAA addresses of `host` (IPv4 first).
    pub async fn ip(&self, host: &str) -> Result<Answer<IpAddr>, DnsError> {
        let rx = self.submit(host, |name, reply| Request::Ip { name, reply })?;
        self.finish(rx.await)
    }

    /// As [`mx`](Self::mx), blocking the calling thread. Not for async tasks.
    pub fn mx_blocking(&self, domain: &str) -> Result<Answer<MxRecord>, DnsError> {
        let rx = self.submit(domain, |name, reply| Request::Mx { name, reply })?;
        self.finish(rx.blocking_recv())
    }

    /// As [`ip`](Self::ip), blocking the calling thread. Not for async tasks.
    pub fn ip_blocking(&self, host: &str) -> Result<Answer<IpAddr>, DnsError> {
        let rx = self.submit(host, |name, reply| Request::Ip { name, reply })?;
        self.finish(rx.blocking_recv())
    }

    pub fn metrics(&self) -> DnsMetricsSnapshot {
        let m = &self.shared.metrics;
        DnsMetricsSnapshot {
            lookups: m.lookups.load(Ordering::Relaxed),
            cache_hits: m.cache_hits.load(Ordering::Relaxed),
            queries: m.queries.load(Ordering::Relaxed),
            failures: m.failures.load(Ordering::Relaxed),
            rejected: m.rejected.load(Ordering::Relaxed),
            cache_entries: m.cache_entries.load(Ordering::Relaxed),
        }
    }

    fn submit<T>(
        &self,
        name: &str,
        make: impl FnOnce(String, Reply<T>) -> Request,
    ) -> Result<oneshot::Receiver<Result<Answer<T>, DnsError>>, DnsError> {
        let m = &self.shared.metrics;
        m.lookups.fetch_add(1, Ordering::Relaxed);
        let name = normalize_name(name).inspect_err(|_| {
            m.failures.fetch_add(1, Ordering::Relaxed);
        })?;
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(make(name, reply)) {
            Ok(()) => {
                self.shared.notify.notify_one();
                Ok(rx)
            }
            Err(TrySendError::Full(_)) => {
                m.rejected.fetch_add(1, Ordering::Relaxed);
                m.failures.fetch_add(1, Ordering::Relaxed);
                Err(DnsError::Busy)
            }
            Err(TrySendError::Disconnected(_)) => {
                m.failures.fetch_add(1, Ordering::Relaxed);
                Err(DnsError::Shutdown)
            }
        }
    }

    fn finish<T>(
        &self,
        received: Result<Result<Answer<T>, DnsError>, oneshot::error::RecvError>,
    ) -> Result<Answer<T>, DnsError> {
        let result = received.unwrap_or(Err(DnsError::Shutdown));
        if result.is_err() {
            self.shared.metrics.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[derive(Clone)]
enum Cached {
    Mx(Answer<MxRecord>),
    Ip(Answer<IpAddr>),
}

struct Worker {
    resolver: TokioResolver,
    cache: RefCell<TtlCache<(String, RecordType), Cached>>,
    shared: Arc<Shared>,
    /// Bound on one query including hickory's own retries.
    query_deadline: Duration,
}

fn build_resolver(options: &DnsOptions) -> Result<TokioResolver, DnsStartError> {
    let mut builder = match &options.nameservers {
        Some(servers) => {
            let configs = servers
                .iter()
                .map(|addr| {
                    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut config.connections {
                        connection.port = addr.port();
                    }
                    config
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(configs),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| DnsStartError::SystemConfig(e.to_string()))?,
    };
    let opts = builder.options_mut();
    opts.timeout = options.timeout;
    opts.attempts = options.attempts;
    opts.cache_size = 0;
    opts.ndots = 0;
    builder
        .build()
        .map_err(|e| DnsStartError::Build(e.to_string()))
}

fn run(
    options: DnsOptions,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::SyncSender<Result<(), DnsStartError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(DnsStartError::Build(e.to_string())));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let resolver = match build_resolver(&options) {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // Worst case for one query: every attempt times out, plus slack.
        let tries = u32::try_from(options.attempts.saturating_add(1)).unwrap_or(u32::MAX);
        let worker = Rc::new(Worker {
            resolver,
            cache: RefCell::new(TtlCache::new(options.cache_size)),
            shared: Arc::clone(&shared),
            query_deadline: options
                .timeout
                .saturating_mul(tries)
                .saturating_add(Duration::from_millis(500)),
        });
        let in_flight = Rc::new(Cell::new(0usize));
        loop {
            while in_flight.get() < DNS_IN_FLIGHT_MAX {
                let request = match rx.try_recv() {
                    Ok(request) => request,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                };
                in_flight.set(in_flight.get() + 1);
                let worker = Rc::clone(&worker);
                let in_flight = Rc::clone(&in_flight);
                tokio::task::spawn_local(async move {
                    let shared = Arc::clone(&worker.shared);
                    worker.handle(request).await;
                    in_flight.set(in_flight.get().saturating_sub(1));
                    // Wake the loop in case it stopped draining at the bound.
                    shared.notify.notify_one();
                });
            }
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            shared.notify.notified().await;
        }
    });
}

impl Worker {
    async fn handle(self: Rc<Self>, request: Request) {
        match request {
            Request::Mx { name, reply } => {
                let result = self.query(&name, RecordType::MX).await.map(|c| match c {
                    Cached::Mx(a) => a,
                    Cached::Ip(_) => Answer::NoData,
                });
                let _ = reply.send(result);
            }
            Request::Ip { name, reply } => {
                let aaaa = {
                    let worker = Rc::clone(&self);
                    let name = name.clone();
                    tokio::task::spawn_local(
                        async move { worker.query(&name, RecordType::AAAA).await },
                    )
                };
                let v4 = self.query(&name, RecordType::A).await;
                let v6 = aaaa.await.unwrap_or(Err(DnsError::Shutdown));
                let _ = reply.send(merge_ip(ip_of(v4), ip_of(v6)));
            }
        }
        self.shared
            .metrics
            .cache_entries
            .store(self.cache.borrow().len() as u64, Ordering::Relaxed);
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Cached, DnsError> {
        let key = (name.to_string(), rtype);
        let metrics = &self.shared.metrics;
        if let Some(hit) = self.cache.borrow_mut().get(&key, Instant::now()) {
            metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        metrics.queries.fetch_add(1, Ordering::Relaxed);
        let fqdn = Name::from_utf8(format!("{name}."))
            .map_err(|_| DnsError::InvalidName(name.chars().take(64).collect()))?;
        let outcome = tokio::time::timeout(self.query_deadline, self.resolver.lookup(fqdn, rtype))
            .await
            .map_err(|_| DnsError::Timeout)?;
        let (answer, ttl) = match outcome {
            Ok(lookup) => {
                let mut min_ttl = u32::MAX;
                let mut mx = Vec::new();
                let mut ips = Vec::new();
                for record in lookup.answers() {
                    let wanted = match (&record.data, rtype) {
                        (RData::MX(m), RecordType::MX) => {
                            mx.push(MxRecord {
                                preference: m.preference,
                                exchange: exchange_text(&m.exchange),
                            });
                            true
                        }
                        (RData::A(a), RecordType::A) => {
                            ips.push(IpAddr::V4(a.0));
                            true
                        }
                        (RData::AAAA(a), RecordType::AAAA) => {
                            ips.push(IpAddr::V6(a.0));
                            true
                        }
                        _ => false,
                    };
                    if wanted {
                        min_ttl = min_ttl.min(record.ttl);
                    }
                }
                let ttl = positive_ttl(min_ttl);
                let answer = if rtype == RecordType::MX {
                    Cached::Mx(if mx.is_empty() {
                        Answer::NoData
                    } else {
                        Answer::Records(mx)
                    })
                } else {
                    Cached::Ip(if ips.is_empty() {
                        Answer::NoData
                    } else {
                        Answer::Records(ips)
                    })
                };
                (answer, ttl)
            }
            Err(e) => {
                let (negative, ttl) = classify_error(e)?;
                let answer = if rtype == RecordType::MX {
                    Cached::Mx(negative.map())
                } else {
                    Cached::Ip(negative.map())
                };
                (answer, ttl)
            }
        };
        self.cache
            .borrow_mut()
            .insert(key, answer.clone(), ttl, Instant::now());
        Ok(answer)
    }
}

#[derive(Clone, Copy)]
enum Negative {
    NoData,
    NxDomain,
}

impl Negative {
    fn map<T>(self) -> Answer<T> {
        match self {
            Self::NoData => Answer::NoData,
            Self::NxDomain => Answer::NxDomain,
        }
    }
}

fn classify_error(error: NetError) -> Result<(Negative, Duration), DnsError> {
    use hickory_resolver::net::DnsError as HDnsError;
    match error {
        NetError::Dns(HDnsError::NoRecordsFound(no_records)) => {
            let ttl = negative_ttl(no_records.negative_ttl);
            match no_records.response_code {
                ResponseCode::NXDomain => Ok((Negative::NxDomain, ttl)),
                ResponseCode::NoError => Ok((Negative::NoData, ttl)),
                code => Err(DnsError::ServerFailure(code.to_string())),
            }
        }
        NetError::Dns(HDnsError::ResponseCode(code)) => {
            Err(DnsError::ServerFailure(code.to_string()))
        }
        NetError::Timeout => Err(DnsError::Timeout),
        other => Err(DnsError::Network(other.to_string())),
    }
}

fn exchange_text(name: &Name) -> String {
    if name.is_root() {
        return String::new();
    }
    let text = name.to_ascii().to_ascii_lowercase();
    text.strip_suffix('.').map(str::to_string).unwrap_or(text)
}

fn ip_of(result: Result<Cached, DnsError>) -> Result<Answer<IpAddr>, DnsError> {
    result.map(|c| match c {
        Cached::Ip(a) => a,
        Cached::Mx(_) => Answer::NoData,
    })
}

/// Combines the A and AAAA answers: any addresses win over a failure of the
/// other family; NXDOMAIN only when neither family has records.
fn merge_ip(
    v4: Result<Answer<IpAddr>, DnsError>,
    v6: Result<Answer<IpAddr>, DnsError>,
) -> Result<Answer<IpAddr>, DnsError> {
    let mut addrs = Vec::new();
    let mut nxdomain = false;
    let mut error = None;
    for part in [v4, v6] {
        match part {
            Ok(Answer::Records(mut r)) => addrs.append(&mut r),
            Ok(Answer::NxDomain) => nxdomain = true,
            Ok(Answer::NoData) => {}
            Err(e) => error = error.or(Some(e)),
        }
    }
    if !addrs.is_empty() {
        v4_first(&mut addrs);
        return Ok(Answer::Records(addrs));
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(if nxdomain {
        Answer::NxDomain
    } else {
        Answer::NoData
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn merge_prefers_addresses_and_v4_first() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            merge_ip(Ok(Answer::Records(vec![v4])), Ok(Answer::Records(vec![v6]))),
            Ok(Answer::Records(vec![v4, v6]))
        );
        assert_eq!(
            merge_ip(Err(DnsError::Timeout), Ok(Answer::Records(vec![v6]))),
            Ok(Answer::Records(vec![v6]))
        );
        assert_eq!(
            merge_ip(Err(DnsError::Timeout), Ok(Answer::NoData)),
            Err(DnsError::Timeout)
        );
        assert_eq!(
            merge_ip(Ok(Answer::NxDomain), Ok(Answer::NxDomain)),
            Ok(Answer::NxDomain)
        );
        assert_eq!(
            merge_ip(Ok(Answer::NoData), Ok(Answer::NxDomain)),
            Ok(Answer::NxDomain)
        );
        assert_eq!(
            merge_ip(Ok(Answer::NoData), Ok(Answer::NoData)),
            Ok(Answer::NoData)
        );
    }
}
