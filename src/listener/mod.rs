//! Listening sockets and admission of inbound connections.
//!
//! Every shard binds its own socket to each `[[listener]]` address with
//! `SO_REUSEPORT`, so the kernel spreads new connections across shards and
//! no shard hands accepted sockets to another. `SO_REUSEPORT` is set here
//! deliberately, and only between spate's own shards: the first shard binds
//! and later shards join the same group in the same process.
//!
//! Admission enforces `max_connections` (per listener, across shards) and
//! `max_connections_per_ip`; a refused client gets `421 4.7.0` at greeting.
//! What happens on an admitted connection is the session's business.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per shard socket before accept.
pub const LISTEN_BACKLOG_CONNECTIONS: i32 = 4096;

/// Stripes of the per-IP table: accept and close on different shards rarely
/// contend for the same stripe.
const PER_IP_STRIPES: usize = 64;

/// Binds one shard's listening socket. `SO_REUSEPORT` lets every shard bind
/// the same address; `SO_REUSEADDR` lets a restart bind while old
/// connections sit in TIME_WAIT.
pub fn bind_shard_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG_CONNECTIONS)?;
    Ok(socket.into())
}

/// Why a connection was not admitted. Each maps to one greeting reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromAddress,
}

impl Refusal {
    /// The greeting line sent before closing.
    pub fn greeting(self, hostname: &str) -> String {
        match self {
            Refusal::TooManyConnections => {
                format!("421 4.7.0 {hostname} too many connections, try again later\r\n")
            }
            Refusal::TooManyFromAddress => {
                format!("421 4.7.0 {hostname} too many connections from your address\r\n")
            }
        }
    }
}

/// Counts connections of one listener across all shards.
#[derive(Debug)]
pub struct Admission {
    max_connections: AtomicUsize,
    max_per_ip: AtomicUsize,
    total: AtomicUsize,
    per_ip: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held for the life of an admitted connection; releases its slot on drop.
#[derive(Debug)]
pub struct AdmissionGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_connections: AtomicUsize::new(max_connections),
            max_per_ip: AtomicUsize::new(max_per_ip),
            total: AtomicUsize::new(0),
            per_ip: (0..PER_IP_STRIPES)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        })
    }

    /// New limits from a reload; connections already admitted stay.
    pub fn set_limits(&self, max_connections: usize, max_per_ip: usize) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    /// Connections currently admitted.
    pub fn current(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn stripe(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) % (usize::MAX as u128)) as usize,
        };
        &self.per_ip[h.wrapping_mul(0x9E37_79B9) % PER_IP_STRIPES]
    }

    /// Admits a connection from `ip` or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AdmissionGuard, Refusal> {
        let max = self.max_connections.load(Ordering::Relaxed);
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyConnections);
        }
        let max_ip = self.max_per_ip.load(Ordering::Relaxed);
        let mut table = self.stripe(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let count = table.entry(ip).or_insert(0);
        if *count >= max_ip {
            drop(table);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TooManyFromAddress);
        }
        *count += 1;
        Ok(AdmissionGuard {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        let mut table = self
            .admission
            .stripe(&self.ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = table.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.ip);
            }
        }
        drop(table);
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_caps() {
        let a = Admission::new(3, 2);
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        let g1 = a.admit(ip1).unwrap();
        let _g2 = a.admit(ip1).unwrap();
        assert_eq!(a.admit(ip1).unwrap_err(), Refusal::TooManyFromAddress);
        let _g3 = a.admit(ip2).unwrap();
        assert_eq!(a.admit(ip2).unwrap_err(), Refusal::TooManyConnections);
        assert_eq!(a.current(), 3);
        drop(g1);
        assert_eq!(a.current(), 2);
        let _g4 = a.admit(ip1).unwrap();
        a.set_limits(10, 10);
        let _g5 = a.admit(ip1).unwrap();
    }

    #[test]
    fn two_shard_sockets_share_one_address() {
        let first = bind_shard_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_shard_socket(addr).expect("SO_REUSEPORT lets a second shard bind");
        assert_eq!(second.local_addr().unwrap(), addr);
    }
}
