//! One injector connection: connect (optionally bound to a source IP),
//! greeting and EHLO, optional STARTTLS (then EHLO again) and AUTH PLAIN, one
//! message per call (MAIL, the RCPTs and DATA pipelined when offered, then
//! the body), reply parsing, RSET and QUIT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use spate::runtime::stream::Conn;

use super::{InjectConfig, REPLY_BYTES_MAX, REPLY_TIMEOUT_MS, Shared, build_message};
use crate::report;

pub(super) enum Step {
    Done(Result<(), String>),
    Broken { reason: String, before_mail: bool },
}

pub(super) struct Connection {
    stream: Conn,
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
            stream: Conn::Plain(stream),
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
        let mut ehlo = conn.ehlo(cfg).await?;
        if let Some(tls) = &cfg.starttls {
            if !offers(&ehlo, "STARTTLS") {
                return Err("the server does not offer STARTTLS".into());
            }
            conn.write(b"STARTTLS\r\n".to_vec()).await?;
            let reply = conn.reply().await?;
            if !reply.starts_with("220") {
                return Err(reply);
            }
            if !conn.buf.is_empty() {
                // Plaintext the server sent after its 220 would otherwise be
                // taken as an answer inside TLS.
                return Err("data after the STARTTLS reply".into());
            }
            conn.stream
                .connect_tls(&tls.connector, &tls.server_name)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            ehlo = conn.ehlo(cfg).await?;
        }
        if let Some((user, password)) = &cfg.auth {
            if !auth_mechanisms(&ehlo).any(|m| m.eq_ignore_ascii_case("PLAIN")) {
                return Err("the server offers no AUTH PLAIN".into());
            }
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
            conn.write(format!("AUTH PLAIN {token}\r\n").into_bytes())
                .await?;
            let reply = conn.reply().await?;
            if !reply.starts_with("235") {
                return Err(reply);
            }
        }
        conn.pipelining = offers(&ehlo, "PIPELINING");
        Ok(conn)
    }

    /// EHLO and its reply (the capabilities), which must be 2xx.
    async fn ehlo(&mut self, cfg: &InjectConfig) -> Result<String, String> {
        self.write(format!("EHLO {}\r\n", cfg.ehlo).into_bytes())
            .await?;
        let ehlo = self.reply().await?;
        if !ehlo.starts_with('2') {
            return Err(ehlo);
        }
        Ok(ehlo)
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let (res, data) = self.stream.write_all(data).await;
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
            let (res, back) = match compio::time::timeout(left, self.stream.read_append(rbuf)).await
            {
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
        let rcpts: Vec<String> = (0..cfg.rcpts).map(|i| recipient(cfg, seq, i)).collect();
        let size = size_of(cfg, seq);
        let mut envelope = format!("MAIL FROM:<{}>\r\n", cfg.from);
        for r in &rcpts {
            envelope.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        envelope.push_str("DATA\r\n");
        // MAIL, each RCPT, DATA: one reply each (fewer when not pipelining
        // and the transaction stopped early).
        let expected = rcpts.len() + 2;
        let mut replies = Vec::with_capacity(expected);
        if self.pipelining {
            if let Err(reason) = self.write(envelope.into_bytes()).await {
                return Step::Broken {
                    reason,
                    before_mail: true,
                };
            }
            for i in 0..expected {
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
        } else {
            for (i, line) in envelope.split_inclusive("\r\n").enumerate() {
                if let Err(reason) = self.write(line.as_bytes().to_vec()).await {
                    return Step::Broken {
                        reason,
                        before_mail: i == 0,
                    };
                }
                match self.reply().await {
                    Ok(r) => replies.push(r),
                    Err(reason) => {
                        return Step::Broken {
                            reason,
                            before_mail: i == 0,
                        };
                    }
                }
                let refused = |r: &String| !r.starts_with('2');
                // Stop after a refused MAIL, or after the last RCPT when
                // every one was refused.
                if (i == 0 && replies.first().is_some_and(refused))
                    || (i == rcpts.len() && replies.get(1..).is_some_and(|r| r.iter().all(refused)))
                {
                    break;
                }
            }
        }
        let rcpt_replies = replies.get(1..=rcpts.len()).unwrap_or_default();
        let refused: Vec<String> = rcpt_replies
            .iter()
            .filter(|r| !r.starts_with('2'))
            .cloned()
            .collect();
        // The message fails with MAIL's refusal, or with the first RCPT
        // refusal when no recipient was accepted.
        let failure = replies
            .first()
            .filter(|r| !r.starts_with('2'))
            .cloned()
            .or_else(|| {
                (rcpt_replies.len() < rcpts.len() || refused.len() == rcpts.len())
                    .then(|| refused.first().cloned())
                    .flatten()
            });
        let data_reply = replies.get(expected - 1);
        let data_ok = data_reply.is_some_and(|r| r.starts_with("354"));
        if !data_ok {
            let reason = failure
                .or_else(|| data_reply.cloned())
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
            let first = rcpts.first().map_or("", String::as_str);
            build_message(&mut body, cfg, first, seq, size);
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
            {
                let mut t = shared
                    .totals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                report::record(&mut t.ack, ack_us);
                t.report.bytes_sent += body_len;
            }
            shared.refused(refused);
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
        self.stream.shutdown().await;
    }
}

/// Whether an EHLO reply lists `keyword` (a line of its own).
fn offers(ehlo: &str, keyword: &str) -> bool {
    ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim().eq_ignore_ascii_case(keyword))
    })
}

/// The mechanisms an EHLO reply lists on its AUTH line.
fn auth_mechanisms(ehlo: &str) -> impl Iterator<Item = &str> {
    ehlo.lines()
        .filter_map(|l| l.get(4..))
        .filter_map(|l| {
            let (verb, rest) = l.split_once(' ')?;
            verb.eq_ignore_ascii_case("AUTH").then_some(rest)
        })
        .flat_map(str::split_whitespace)
}

/// Recipient `i` of message `seq`: local parts and domains take turns over
/// every recipient sent, and a message of several recipients numbers them.
/// Recipient `n` of the load goes to domain `n % domains` (the weighted
/// cycle, so equal weights go d1, d2, ..., dN) and to local part `n %
/// locals`, shifted by one each time the two turns line up again: every
/// local part meets every domain even when the two lengths share a factor
/// (with `user,tempfail+` over `a,b`: user@a, tempfail+@b, tempfail+@a,
/// user@b).
fn recipient(cfg: &InjectConfig, seq: u64, i: u32) -> String {
    let n = seq * u64::from(cfg.rcpts) + u64::from(i);
    let domains = cfg.domains.len().max(1) as u64;
    let locals = cfg.locals.len().max(1) as u64;
    let domain = cfg.domains.get((n % domains) as usize);
    let local = cfg.locals.get(meeting_index(n, domains, locals) as usize);
    let (local, domain) = (
        local.map_or("", String::as_str),
        domain.map_or("", String::as_str),
    );
    if cfg.rcpts == 1 {
        format!("{local}{seq}@{domain}")
    } else {
        format!("{local}{seq}-{i}@{domain}")
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

/// The index into a cycle of `len` entries for step `n` of a walk that
/// also goes round a cycle of `other` entries at the same pace (`n %
/// other`), such that every pair of entries of the two meets. Plain `n %
/// len` would pair an entry only with the other cycle's entries congruent
/// to it modulo gcd(len, other) (with equal lengths, always the same one);
/// moving one place more after each stretch of lcm(len, other) steps walks
/// it through the rest.
fn meeting_index(n: u64, other: u64, len: u64) -> u64 {
    let (other, len) = (other.max(1), len.max(1));
    let common = super::gcd(other as usize, len as usize) as u64;
    let shift = if common == 1 {
        0
    } else {
        n / (other / common * len)
    };
    (n % len + shift % len) % len
}

/// Message `seq`'s size: the `--size-dist` cycle, walked so that each size
/// meets every domain of the first recipient's (whose cycle, a recipient
/// per `rcpts`, repeats every domains / gcd(domains, rcpts) messages).
fn size_of(cfg: &InjectConfig, seq: u64) -> usize {
    let domains = cfg.domains.len().max(1);
    let period = domains / super::gcd(domains, (cfg.rcpts as usize).max(1));
    let i = meeting_index(seq, period as u64, cfg.sizes.len() as u64);
    cfg.sizes.get(i as usize).copied().unwrap_or(2048)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(locals: &[&str], domains: &[&str], rcpts: u32) -> InjectConfig {
        let mut cfg = InjectConfig::new("127.0.0.1:9".parse().unwrap(), 1, 1);
        cfg.locals = locals.iter().map(|l| l.to_string()).collect();
        cfg.domains = domains.iter().map(|d| d.to_string()).collect();
        cfg.rcpts = rcpts;
        cfg
    }

    /// (local part, domain) of the first `count` recipients of the load.
    fn pairs(cfg: &InjectConfig, count: u64) -> Vec<(String, String)> {
        let per = u64::from(cfg.rcpts);
        (0..count)
            .map(|n| {
                let r = recipient(cfg, n / per, (n % per) as u32);
                let (local, domain) = r.split_once('@').unwrap();
                let prefix = local.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
                (prefix.to_owned(), domain.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_local_part_meets_every_domain() {
        for rcpts in [1, 2, 3] {
            let cfg = config(&["user", "tempfail+"], &["a", "b"], rcpts);
            let seen: std::collections::BTreeSet<_> = pairs(&cfg, 4).into_iter().collect();
            assert_eq!(seen.len(), 4, "rcpts {rcpts}: {seen:?}");
        }
        // Lengths sharing a factor (4 and 6): all 24 pairs in 24 recipients.
        let cfg = config(&["w", "x", "y", "z"], &["a", "b", "c", "d", "e", "f"], 1);
        let seen: std::collections::BTreeSet<_> = pairs(&cfg, 24).into_iter().collect();
        assert_eq!(seen.len(), 24, "{seen:?}");
        // A weighted domain cycle (a:3,b:1): `tempfail+` reaches b too.
        let cfg = config(&["user", "tempfail+"], &["a", "a", "b", "a"], 1);
        let p = pairs(&cfg, 8);
        assert!(p.contains(&("tempfail+".into(), "b".into())), "{p:?}");
        assert!(p.contains(&("user".into(), "b".into())), "{p:?}");
    }

    #[test]
    fn every_size_meets_every_domain() {
        // Cycles of the same length (a weighted 80:20 of each is 5 long)
        // paired each size with one domain for good: now all 25 pairs come
        // within 25 messages, and the mix of each stays its weights.
        for rcpts in [1, 2] {
            let mut cfg = config(&["user"], &["a", "a", "b", "a", "a"], rcpts);
            cfg.sizes = vec![2048, 2048, 102400, 2048, 2048];
            let pairs: Vec<(usize, String)> = (0..25)
                .map(|seq| {
                    let r = recipient(&cfg, seq, 0);
                    (size_of(&cfg, seq), r.split_once('@').unwrap().1.to_owned())
                })
                .collect();
            let large = |d: &str| {
                pairs
                    .iter()
                    .filter(|(s, dom)| *s == 102400 && dom == d)
                    .count()
            };
            assert!(large("a") > 0 && large("b") > 0, "rcpts {rcpts}: {pairs:?}");
            let sizes: Vec<usize> = pairs.iter().map(|(s, _)| *s).collect();
            assert_eq!(sizes.iter().filter(|&&s| s == 102400).count(), 5);
        }
        // One size: always it.
        let cfg = config(&["user"], &["a", "b"], 1);
        assert!((0..10).all(|seq| size_of(&cfg, seq) == cfg.sizes[0]));
    }

    #[test]
    fn domains_take_turns_by_recipient_and_locals_stay_round_robin() {
        // Recipient n goes to domain n % domains, whatever the local parts.
        for locals in [&["user"][..], &["a", "b"], &["a", "b", "c"]] {
            let cfg = config(locals, &["d1", "d2", "d3"], 2);
            let domains: Vec<_> = pairs(&cfg, 12).into_iter().map(|(_, d)| d).collect();
            let expected: Vec<_> = (0..12).map(|n| format!("d{}", n % 3 + 1)).collect();
            assert_eq!(domains, expected, "locals {locals:?}");
        }
        // One domain (or coprime lengths): local parts go strictly in turn.
        let cfg = config(&["user", "tempfail+", "permfail+"], &["a"], 1);
        let locals: Vec<_> = pairs(&cfg, 6).into_iter().map(|(l, _)| l).collect();
        assert_eq!(
            locals,
            [
                "user",
                "tempfail+",
                "permfail+",
                "user",
                "tempfail+",
                "permfail+"
            ]
        );
        assert_eq!(recipient(&cfg, 7, 0), "tempfail+7@a");
        let cfg = config(&["user"], &["a", "b"], 3);
        assert_eq!(recipient(&cfg, 5, 2), "user5-2@b");
    }
}
