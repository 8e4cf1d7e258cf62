//! One injector connection: connect (optionally bound to a source IP),
//! greeting and EHLO, one message per call (MAIL/RCPT/DATA pipelined when
//! offered, then the body), reply parsing, RSET and QUIT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};

use super::{REPLY_BYTES_MAX, REPLY_TIMEOUT_MS, Shared, build_message};
use crate::report;

pub(super) enum Step {
    Done(Result<(), String>),
    Broken { reason: String, before_mail: bool },
}

pub(super) struct Connection {
    stream: compio::net::TcpStream,
    buf: Vec<u8>,
    rbuf: Vec<u8>,
    pipelining: bool,
    pub(super) broken: bool,
    body: Vec<u8>,
}

impl Connection {
    pub(super) async fn open(shared: &Shared) -> Result<Connection, String> {
        let cfg = &shared.config;
        let stream = match cfg.source {
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    compio::net::TcpSocket::new_v4().await
                } else {
                    compio::net::TcpSocket::new_v6().await
                }
                .map_err(|e| format!("socket: {e}"))?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .await
                    .map_err(|e| format!("bind {ip}: {e}"))?;
                socket.connect(cfg.to).await
            }
            None => compio::net::TcpStream::connect(cfg.to).await,
        }
        .map_err(|e| format!("connect {}: {}", cfg.to, e.kind()))?;
        let _ = stream.set_nodelay(true);
        shared
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .report
            .connections_opened += 1;
        let mut conn = Connection {
            stream,
            buf: Vec::new(),
            rbuf: Vec::with_capacity(16 * 1024),
            pipelining: false,
            broken: false,
            body: Vec::new(),
        };
        let greeting = conn.reply().await?;
        if !greeting.starts_with('2') {
            return Err(greeting);
        }
        conn.write(format!("EHLO {}\r\n", cfg.ehlo).into_bytes())
            .await?;
        let ehlo = conn.reply().await?;
        if !ehlo.starts_with('2') {
            return Err(ehlo);
        }
        conn.pipelining = ehlo.lines().any(|l| {
            l.get(4..)
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
        });
        Ok(conn)
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let BufResult(res, data) = self.stream.write_all(data).await;
        res.map_err(|e| format!("write: {}", e.kind()))?;
        Ok(data)
    }

    /// Reads one complete (possibly multi-line) reply; lines joined by '\n'.
    async fn reply(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_millis(REPLY_TIMEOUT_MS);
        loop {
            if let Some((text, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return Ok(text);
            }
            if self.buf.len() > REPLY_BYTES_MAX {
                return Err("reply too long".into());
            }
            let mut rbuf = std::mem::take(&mut self.rbuf);
            rbuf.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            let BufResult(res, back) =
                match compio::time::timeout(left, self.stream.read(rbuf)).await {
                    Ok(r) => r,
                    Err(_) => return Err("timeout waiting for reply".into()),
                };
            self.rbuf = back;
            match res {
                Ok(0) => return Err("connection closed by server".into()),
                Ok(n) => self
                    .buf
                    .extend_from_slice(self.rbuf.get(..n).unwrap_or_default()),
                Err(e) => return Err(format!("read: {}", e.kind())),
            }
        }
    }

    pub(super) async fn send_message(&mut self, shared: &Shared, seq: u64) -> Step {
        let cfg = &shared.config;
        let pick = |list: &[String]| {
            list.get((seq % list.len() as u64) as usize)
                .cloned()
                .unwrap_or_default()
        };
        let rcpt = format!("{}{}@{}", pick(&cfg.locals), seq, pick(&cfg.domains));
        let size = cfg
            .sizes
            .get((seq % cfg.sizes.len() as u64) as usize)
            .copied()
            .unwrap_or(2048);
        let envelope = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", cfg.from, rcpt);
        let replies = if self.pipelining {
            if let Err(reason) = self.write(envelope.into_bytes()).await {
                return Step::Broken {
                    reason,
                    before_mail: true,
                };
            }
            let mut replies = Vec::with_capacity(3);
            for i in 0..3 {
                match self.reply().await {
                    Ok(r) if r.starts_with("421") => {
                        return Step::Broken {
                            reason: r,
                            before_mail: false,
                        };
                    }
                    Ok(r) => replies.push(r),
                    Err(reason) => {
                        return Step::Broken {
                            reason,
                            before_mail: i == 0,
                        };
                    }
                }
            }
            replies
        } else {
            let mut replies = Vec::with_capacity(3);
            for (i, line) in envelope.split_inclusive("\r\n").enumerate() {
                if let Err(reason) = self.write(line.as_bytes().to_vec()).await {
                    return Step::Broken {
                        reason,
                        before_mail: i == 0,
                    };
                }
                match self.reply().await {
                    Ok(r) => {
                        let failed = !r.starts_with('2');
                        replies.push(r);
                        if failed && i < 2 {
                            break;
                        }
                    }
                    Err(reason) => {
                        return Step::Broken {
                            reason,
                            before_mail: i == 0,
                        };
                    }
                }
            }
            replies
        };
        let failure = replies
            .iter()
            .take(2)
            .find(|r| !r.starts_with('2'))
            .cloned();
        let data_ok = replies.get(2).is_some_and(|r| r.starts_with("354"));
        if !data_ok {
            let reason = failure
                .or_else(|| replies.get(2).cloned())
                .unwrap_or_else(|| "no DATA reply".into());
            if reason.starts_with("421") {
                return Step::Broken {
                    reason,
                    before_mail: false,
                };
            }
            let _ = self.rset().await;
            return Step::Done(Err(reason));
        }
        // The server took DATA: send the body (or an empty one to abort).
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        if failure.is_none() {
            build_message(&mut body, cfg, &rcpt, seq, size);
        }
        body.extend_from_slice(b".\r\n");
        let body_len = body.len() as u64;
        let sent_at = Instant::now();
        let body = match self.write(body).await {
            Ok(b) => b,
            Err(reason) => {
                return Step::Broken {
                    reason,
                    before_mail: false,
                };
            }
        };
        self.body = body;
        let reply = match self.reply().await {
            Ok(r) => r,
            Err(reason) => {
                return Step::Broken {
                    reason,
                    before_mail: false,
                };
            }
        };
        let ack_us = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(reason) = failure {
            return Step::Done(Err(reason));
        }
        if reply.starts_with('2') {
            let mut t = shared
                .totals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            report::record(&mut t.ack, ack_us);
            t.report.bytes_sent += body_len;
            Step::Done(Ok(()))
        } else {
            Step::Done(Err(reply))
        }
    }

    async fn rset(&mut self) -> Result<(), String> {
        self.write(b"RSET\r\n".to_vec()).await?;
        self.reply().await.map(drop)
    }

    pub(super) async fn quit(mut self) {
        if !self.broken && self.write(b"QUIT\r\n".to_vec()).await.is_ok() {
            let _ = compio::time::timeout(Duration::from_secs(1), self.reply()).await;
        }
        let _ = self.stream.close().await;
    }
}

/// Parses one complete reply at the start of `buf`: (text, bytes used).
fn parse_reply(buf: &[u8]) -> Option<(String, usize)> {
    let mut used = 0;
    let mut lines = Vec::new();
    loop {
        let rest = buf.get(used..)?;
        let eol = memchr::memchr(b'\n', rest)?;
        let line = rest.get(..eol)?;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        used += eol + 1;
        let text = String::from_utf8_lossy(line).into_owned();
        let last = line.get(3) != Some(&b'-');
        lines.push(text);
        if last {
            return Some((lines.join("\n"), used));
        }
    }
}
