//! Opening an outbound connection from a vMTA's source IP.
//!
//! The socket is bound to the vMTA's `source_ip` before connecting, with
//! `IP_BIND_ADDRESS_NO_PORT` so the kernel picks the source port at
//! connect time from the full 4-tuple space: thousands of connections from
//! one source IP to different destinations do not exhaust its ports.
//!
//! Descriptors are a budget ([`crate::runtime::fdlimit`]): a socket that
//! would eat into the reserve kept for the listeners and the admin API, or
//! that cannot be created at all (EMFILE, ENFILE, no local port), is not a
//! failure of the destination. The attempt waits and retries until the
//! connect timeout, then reports [`ConnectError::LocalResources`] so the
//! caller leaves its recipients queued instead of deferring them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use compio::net::{TcpSocket, TcpStream};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot bind source address {source_ip}: {error}")]
    Bind { source_ip: IpAddr, error: io::Error },
    #[error("connection to {peer} timed out")]
    Timeout { peer: SocketAddr },
    #[error("connection to {peer} failed: {error}")]
    Refused { peer: SocketAddr, error: io::Error },
    #[error("source address {source_ip} cannot reach {peer} (address family mismatch)")]
    FamilyMismatch { source_ip: IpAddr, peer: SocketAddr },
    /// Out of descriptors or local ports on this host, not the peer's fault.
    #[error("no local resources to connect to {peer}: {error}")]
    LocalResources { peer: SocketAddr, error: io::Error },
}

/// How long an attempt out of descriptors waits before trying again.
pub const LOCAL_EXHAUSTION_RETRY_MS: u64 = 500;

fn set_bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket` for this call; we
    // pass a pointer to a c_int and its exact size, as setsockopt expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects to `peer` from `source_ip` (unspecified = let the kernel
/// choose) within `timeout`.
pub async fn connect_from(
    source_ip: IpAddr,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    if !source_ip.is_unspecified() && source_ip.is_ipv4() != peer.is_ipv4() {
        return Err(ConnectError::FamilyMismatch { source_ip, peer });
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match try_connect(source_ip, peer, deadline).await {
            Err(ConnectError::LocalResources { peer, error }) => {
                crate::runtime::fdlimit::note_exhaustion("outbound connection", Some(&error));
                // Always wait once before giving up, so a caller that
                // retries at once cannot spin on a short connect timeout.
                compio::time::sleep(Duration::from_millis(LOCAL_EXHAUSTION_RETRY_MS)).await;
                if std::time::Instant::now() >= deadline {
                    return Err(ConnectError::LocalResources { peer, error });
                }
            }
            other => return other,
        }
    }
}

/// One attempt: a socket within the descriptor budget, bound, connected
/// before `deadline`.
async fn try_connect(
    source_ip: IpAddr,
    peer: SocketAddr,
    deadline: std::time::Instant,
) -> Result<TcpStream, ConnectError> {
    let local = |error: io::Error| {
        if crate::runtime::fdlimit::is_local_exhaustion(&error) {
            ConnectError::LocalResources { peer, error }
        } else {
            ConnectError::Refused { peer, error }
        }
    };
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4().await
    } else {
        TcpSocket::new_v6().await
    }
    .map_err(local)?;
    if !crate::runtime::fdlimit::outbound_fd_allowed(socket.as_raw_fd()) {
        // Dropping the socket gives the descriptor back to the reserve.
        return Err(ConnectError::LocalResources {
            peer,
            error: io::Error::from_raw_os_error(libc::EMFILE),
        });
    }
    if !source_ip.is_unspecified() {
        // Best effort: older kernels lack the option and still work, with
        // ports reserved at bind time.
        if source_ip.is_ipv4() {
            let _ = set_bind_address_no_port(&socket);
        }
        socket
            .bind(SocketAddr::new(source_ip, 0))
            .await
            .map_err(|error| {
                if crate::runtime::fdlimit::is_local_exhaustion(&error) {
                    ConnectError::LocalResources { peer, error }
                } else {
                    ConnectError::Bind { source_ip, error }
                }
            })?;
    }
    let timeout = deadline.saturating_duration_since(std::time::Instant::now());
    let stream = match compio::time::timeout(timeout, socket.connect(peer)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) if crate::runtime::fdlimit::is_local_exhaustion_at_connect(&error) => {
            return Err(ConnectError::LocalResources { peer, error });
        }
        Ok(Err(error)) => return Err(ConnectError::Refused { peer, error }),
        Err(_) => return Err(ConnectError::Timeout { peer }),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_the_source_ip_and_peer_sees_it() {
        let (rt, _) = crate::runtime::build_runtime(None).unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let src: IpAddr = "127.0.0.7".parse().unwrap();
            let stream = connect_from(src, addr, Duration::from_secs(2))
                .await
                .unwrap();
            let (_peer_side, peer_addr) = listener.accept().unwrap();
            assert_eq!(peer_addr.ip(), src);
            assert_eq!(stream.local_addr().unwrap().ip(), src);

            // Nothing listens on port 1 of this loopback address: refused.
            let err = connect_from(src, "127.0.0.1:1".parse().unwrap(), Duration::from_secs(2))
                .await
                .unwrap_err();
            assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
            let err = connect_from("::1".parse().unwrap(), addr, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(err, ConnectError::FamilyMismatch { .. }), "{err}");

            // A source address this host does not have is a configuration
            // error reported at once, not a shortage to wait out.
            let started = std::time::Instant::now();
            let err = connect_from("192.0.2.1".parse().unwrap(), addr, Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(matches!(err, ConnectError::Bind { .. }), "{err}");
            assert!(started.elapsed() < Duration::from_secs(1));
        });
    }
}
