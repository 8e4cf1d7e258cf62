//! A small SMTP sink for integration tests, on std threads.
//!
//! Records every message with the client's address and EHLO name. Replies
//! by recipient local part: `permfail+...` gets 550 5.1.1, `tempfail+...`
//! 451 4.3.0 every time, `tempfail-once+...` 451 4.3.0 on the first attempt
//! only. [`Sink::refuse_from`] makes it refuse MAIL FROM with a given reply
//! for one client IP (a blocked source address). It uses spate's own sans-IO server session, so the tests exercise
//! real SMTP on real sockets (our client against our server).
//! [`Sink::max_mails_per_read`] shows whether a client pipelined
//! transactions behind each other. [`Sink::start_tls`] offers STARTTLS with
//! a given certificate.

#![allow(dead_code)] // reason: each test binary uses a different subset

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate::smtp::address::ForwardPath;
use spate::smtp::reply::Reply;
use spate::smtp::server::{ServerConfig, ServerEvent, ServerSession};

/// One message as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub peer: IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// Received under TLS (after STARTTLS).
    pub tls: bool,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    connections: usize,
    seen_once: HashSet<String>,
    /// Most MAIL commands handled between two of the sink's writes.
    max_mails_per_read: usize,
    /// Client IP → the reply to its MAIL FROM.
    refused: HashMap<IpAddr, Reply>,
}

/// A running sink; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn start() -> Sink {
        Self::start_with(None)
    }

    /// A sink that offers STARTTLS with this server configuration.
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Sink {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let st = st.clone();
                        st.lock().unwrap().connections += 1;
                        let tls = tls.clone();
                        std::thread::spawn(move || serve(stream, peer, st, tls));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink { addr, state, stop }
    }

    /// Refuses every MAIL FROM from `ip` with this reply until [`Self::accept_from`].
    pub fn refuse_from(&self, ip: IpAddr, code: u16, status: (u8, u16, u16), text: &str) {
        self.state
            .lock()
            .unwrap()
            .refused
            .insert(ip, Reply::with_status(code, status, text));
    }

    /// Accepts mail from `ip` again.
    pub fn accept_from(&self, ip: IpAddr) {
        self.state.lock().unwrap().refused.remove(&ip);
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// The most MAIL commands one connection sent before the sink wrote a
    /// reply to any of them: above 1 only when a client started a
    /// transaction before the previous one's final reply (pipelined
    /// transactions), since the sink replies to everything it has read
    /// before it reads again.
    pub fn max_mails_per_read(&self) -> usize {
        self.state.lock().unwrap().max_mails_per_read
    }

    /// Waits until `n` messages arrived (or the timeout).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let end = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > end {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The connection, plain or after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Gone,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Gone => Ok(0),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Gone => Ok(()),
        }
    }
}

fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<Mutex<State>>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let mut stream = Stream::Plain(tcp);
    let mut config = ServerConfig::new("sink.test");
    config.starttls_available = tls.is_some();
    let mut session = ServerSession::new(config);
    let mut buf = Vec::new();
    let mut data = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let _ = stream.write_all(&session.take_output());
    loop {
        let mut offset = 0;
        let mut mails = 0;
        loop {
            let Ok(step) = session.receive(&buf[offset..]) else {
                return;
            };
            offset += step.consumed;
            let Some(event) = step.event else { break };
            match event {
                ServerEvent::RcptTo(r) => {
                    let local = match &r.forward_path {
                        ForwardPath::Mailbox(m) => m.local_part.clone(),
                        ForwardPath::Postmaster => String::new(),
                    };
                    let full = r.forward_path.to_string();
                    let reply = if local.starts_with("permfail+") {
                        Some(Reply::with_status(550, (5, 1, 1), "no such user"))
                    } else if local.starts_with("tempfail+") {
                        Some(Reply::with_status(451, (4, 3, 0), "try again later"))
                    } else if local.starts_with("tempfail-once+") {
                        let first = state.lock().unwrap().seen_once.insert(full);
                        first.then(|| Reply::with_status(451, (4, 3, 0), "try again later"))
                    } else {
                        None
                    };
                    let _ = match reply {
                        Some(r) => session.reject(r),
                        None => session.accept(),
                    };
                }
                ServerEvent::MailFrom(_) => {
                    mails += 1;
                    let refusal = state.lock().unwrap().refused.get(&peer.ip()).cloned();
                    let _ = match refusal {
                        Some(reply) => session.reject(reply),
                        None => session.accept(),
                    };
                }
                ServerEvent::Helo { .. } | ServerEvent::Auth(_) => {
                    let _ = session.accept();
                }
                ServerEvent::DataStart => data.clear(),
                ServerEvent::Data(chunk) => data.extend_from_slice(chunk),
                ServerEvent::MessageComplete => {
                    let rcpts = session
                        .recipients()
                        .iter()
                        .map(|r| r.forward_path.to_string())
                        .collect();
                    let mail_from = session
                        .mail_from()
                        .map(|m| m.reverse_path.to_string())
                        .unwrap_or_default();
                    state.lock().unwrap().messages.push(Received {
                        peer: peer.ip(),
                        helo: session.helo_name().unwrap_or("").to_string(),
                        mail_from,
                        rcpts,
                        data: std::mem::take(&mut data),
                        tls: session.tls_active(),
                    });
                    let _ = session.accept();
                }
                ServerEvent::StartTls => {
                    // The 220 in plaintext; anything pipelined after the
                    // command is dropped; the handshake runs on the next read.
                    let _ = stream.write_all(&session.take_output());
                    let (Some(config), Stream::Plain(tcp)) =
                        (tls.clone(), std::mem::replace(&mut stream, Stream::Gone))
                    else {
                        return;
                    };
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    stream = Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)));
                    if session.tls_established().is_err() {
                        return;
                    }
                    offset = buf.len();
                    break;
                }
                ServerEvent::Quit | ServerEvent::Shutdown(_) => {
                    let _ = stream.write_all(&session.take_output());
                    return;
                }
                _ => {}
            }
        }
        buf.drain(..offset);
        if mails > 0 {
            let mut st = state.lock().unwrap();
            st.max_mails_per_read = st.max_mails_per_read.max(mails);
        }
        let out = session.take_output();
        if !out.is_empty() && stream.write_all(&out).is_err() {
            return;
        }
        match stream.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}
