//! A TCP connection that may be upgraded to TLS in place (STARTTLS).
//!
//! Inbound sessions and outbound deliveries both start in plaintext and may
//! switch to TLS mid-connection; [`Conn`] owns the socket through that
//! switch. Reads append to a caller-owned buffer (ownership moves through
//! io_uring and comes back, per compio's `BufResult`), so a cancelled read
//! never leaves the kernel writing into freed memory.

use std::io;
use std::sync::Arc;

use compio::buf::{BufResult, IoBuf, IoVectoredBuf};
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use compio::tls::{TlsAcceptor, TlsConnector, TlsStream};

/// A connection in plaintext or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Transient state while upgrading; any I/O on it fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Reads whatever is available, appending to `buf` (up to its spare
    /// capacity). Returns 0 at end of stream.
    pub async fn read_append(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let BufResult(res, buf) = match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Closed => return (Err(closed()), buf),
        };
        (res, buf)
    }

    /// Writes all of `bufs`, in order, with as few system calls as the
    /// kernel allows (and flushes TLS records).
    pub async fn write_vectored_all<B: IoVectoredBuf>(&mut self, bufs: B) -> (io::Result<()>, B) {
        match self {
            Conn::Plain(s) => {
                let BufResult(res, bufs) = s.write_vectored_all(bufs).await;
                (res, bufs)
            }
            Conn::Tls(s) => {
                let BufResult(res, bufs) = s.write_vectored_all(bufs).await;
                match res {
                    Ok(()) => (s.flush().await, bufs),
                    Err(e) => (Err(e), bufs),
                }
            }
            Conn::Closed => (Err(closed()), bufs),
        }
    }

    /// Writes all of `buf` (and flushes TLS records).
    pub async fn write_all<B: IoBuf>(&mut self, buf: B) -> (io::Result<()>, B) {
        match self {
            Conn::Plain(s) => {
                let BufResult(res, buf) = s.write_all(buf).await;
                (res, buf)
            }
            Conn::Tls(s) => {
                let BufResult(res, buf) = s.write_all(buf).await;
                match res {
                    Ok(()) => (s.flush().await, buf),
                    Err(e) => (Err(e), buf),
                }
            }
            Conn::Closed => (Err(closed()), buf),
        }
    }

    /// Server side of STARTTLS: runs the handshake on the plaintext socket.
    pub async fn accept_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let Conn::Plain(tcp) = std::mem::replace(self, Conn::Closed) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS already active",
            ));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = Conn::Tls(Box::new(tls));
        Ok(())
    }

    /// Client side of STARTTLS.
    pub async fn connect_tls(
        &mut self,
        connector: &TlsConnector,
        server_name: &str,
    ) -> io::Result<()> {
        let Conn::Plain(tcp) = std::mem::replace(self, Conn::Closed) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS already active",
            ));
        };
        let tls = connector.connect(server_name, tcp).await?;
        *self = Conn::Tls(Box::new(tls));
        Ok(())
    }

    /// Orderly close (TLS close_notify, then FIN).
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Closed => Ok(()),
        };
    }
}

/// An acceptor for a rustls server configuration.
pub fn tls_acceptor(config: Arc<rustls::ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config)
}
