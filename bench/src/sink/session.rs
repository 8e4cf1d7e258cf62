//! One sink connection: the compact ESMTP server session (EHLO/HELO, MAIL,
//! RCPT, DATA, BDAT, RSET, NOOP, VRFY, QUIT, STARTTLS, AUTH PLAIN and LOGIN
//! when the sink has credentials; pipelined input is
//! processed command by command and replies are flushed in one write), and
//! the accounting of each accepted message into the shared counters.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    AUTH_LINE_BYTES_MAX, COMMAND_LINE_BYTES_MAX, Counts, MESSAGE_BYTES_MAX, RCPT_PER_MESSAGE_MAX,
    READ_BYTES, SENT_HEADER, SharedRef, SinkAuth, lock,
};
use crate::report;
use crate::script::{self, Script};

/// What every connection of one sink shares.
pub(super) struct SinkContext {
    pub(super) script: Script,
    pub(super) maildir: Option<PathBuf>,
    pub(super) tls: Option<compio::tls::TlsAcceptor>,
    pub(super) auth: Option<SinkAuth>,
    pub(super) shared: SharedRef,
    pub(super) accepted: Arc<super::Accepted>,
    pub(super) maildir_seq: AtomicU64,
    /// Several listen addresses: record which recipient domains arrive at
    /// each (see `SinkReport::per_listener_domains`).
    pub(super) track_domains: bool,
}

/// How a session over one stream ended.
enum Ending {
    Closed,
    StartTls,
}

pub(super) async fn serve_connection(
    stream: compio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    ctx: &SinkContext,
) {
    lock(&ctx.shared).report.connections += 1;
    let mut session = Session::new(peer.ip(), local, ctx);
    let mut plain = stream;
    match session.run(&mut plain, true).await {
        Ok(Ending::StartTls) => {}
        Ok(Ending::Closed) => return,
        Err(_) => {
            lock(&ctx.shared).report.session_errors += 1;
            return;
        }
    }
    let Some(acceptor) = &ctx.tls else { return };
    let Ok(mut tls) = acceptor.accept(plain).await else {
        lock(&ctx.shared).report.session_errors += 1;
        return;
    };
    lock(&ctx.shared).report.tls_sessions += 1;
    session.reset_after_tls();
    if session.run(&mut tls, false).await.is_err() {
        lock(&ctx.shared).report.session_errors += 1;
    }
}

enum Mode {
    Command,
    /// The next line answers an AUTH challenge.
    Auth(AuthStep),
    Data,
    Bdat {
        remaining: usize,
        last: bool,
    },
}

/// What an AUTH exchange waits for.
enum AuthStep {
    /// PLAIN's response (`authzid NUL user NUL password`).
    Plain,
    /// LOGIN's user name.
    LoginUser,
    /// LOGIN's password, for this user.
    LoginPassword(String),
}

/// LOGIN's challenges, base64 of "Username:" and "Password:".
const LOGIN_USER_CHALLENGE: &str = "334 VXNlcm5hbWU6";
const LOGIN_PASSWORD_CHALLENGE: &str = "334 UGFzc3dvcmQ6";

struct Session<'c> {
    ctx: &'c SinkContext,
    ip: IpAddr,
    /// The sink's address the client connected to.
    local: SocketAddr,
    tls: bool,
    ehlo: Option<String>,
    /// The greeting was EHLO (AUTH needs it), not HELO.
    esmtp: bool,
    authenticated: bool,
    in_transaction: bool,
    /// A BDAT chunk was taken in this transaction, so DATA may not follow
    /// (RFC 3030, section 2: the two cannot be mixed).
    chunking: bool,
    rcpts: usize,
    /// The accepted recipients' domains, when the sink tracks them.
    rcpt_domains: Vec<String>,
    messages_on_connection: u64,
    mode: Mode,
    message: Vec<u8>,
}

impl<'c> Session<'c> {
    fn new(ip: IpAddr, local: SocketAddr, ctx: &'c SinkContext) -> Self {
        Session {
            ctx,
            ip,
            local,
            tls: false,
            ehlo: None,
            esmtp: false,
            authenticated: false,
            in_transaction: false,
            chunking: false,
            rcpts: 0,
            rcpt_domains: Vec::new(),
            messages_on_connection: 0,
            mode: Mode::Command,
            message: Vec::new(),
        }
    }

    fn reset_after_tls(&mut self) {
        self.tls = true;
        self.ehlo = None;
        self.esmtp = false;
        self.authenticated = false;
        self.reset_transaction();
    }

    fn reset_transaction(&mut self) {
        self.in_transaction = false;
        self.chunking = false;
        self.rcpts = 0;
        self.rcpt_domains.clear();
        self.mode = Mode::Command;
        self.message.clear();
    }

    /// Serves one stream until QUIT, close, error or STARTTLS.
    async fn run<S: AsyncRead + AsyncWrite>(
        &mut self,
        io: &mut S,
        greet: bool,
    ) -> std::io::Result<Ending> {
        let script = &self.ctx.script;
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        if greet {
            let greeting = script::render(&script.greeting, self.ip);
            push_reply(&mut out, &greeting);
            if !greeting.starts_with('2') {
                lock(&self.ctx.shared).report.refused_greetings += 1;
                flush(io, &mut out, script.delay_ms).await?;
                return Ok(Ending::Closed);
            }
        }
        let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
        let mut pos = 0usize; // start of unprocessed input in `buf`
        let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BYTES);
        loop {
            // Process every complete unit of input.
            let mut action = Action::Continue;
            while action == Action::Continue {
                let before = pos;
                action = self.step(&buf, &mut pos, &mut out)?;
                if action == Action::Continue && pos == before {
                    break; // needs more input
                }
            }
            if !out.is_empty() {
                let delay = if action == Action::DataDone {
                    script.data_delay_ms
                } else {
                    0
                } + script.delay_ms;
                flush(io, &mut out, delay).await?;
            }
            match action {
                Action::Close => return Ok(Ending::Closed),
                Action::StartTls => return Ok(Ending::StartTls),
                Action::Continue | Action::DataDone => {}
            }
            if action == Action::DataDone {
                continue; // more pipelined input may already be buffered
            }
            // Compact, then read more.
            if pos > 0 {
                buf.drain(..pos);
                pos = 0;
            }
            rbuf.clear();
            let BufResult(res, back) = io.read(rbuf).await;
            rbuf = back;
            match res {
                Ok(0) => return Ok(Ending::Closed),
                Ok(n) => buf.extend_from_slice(rbuf.get(..n).unwrap_or_default()),
                Err(e) => return Err(e),
            }
            if self.line_limit(&buf).is_some_and(|max| buf.len() > max) && !buf.contains(&b'\n') {
                push_reply(&mut out, "500 5.5.2 Line too long");
                flush(io, &mut out, 0).await?;
                return Ok(Ending::Closed);
            }
        }
    }

    /// The longest line the session takes while `buf` holds the start of
    /// one (None in message data): AUTH lines may be longer than commands.
    fn line_limit(&self, buf: &[u8]) -> Option<usize> {
        match self.mode {
            Mode::Auth(_) => Some(AUTH_LINE_BYTES_MAX),
            Mode::Command
                if buf
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"AUTH ")) =>
            {
                Some(AUTH_LINE_BYTES_MAX)
            }
            Mode::Command => Some(COMMAND_LINE_BYTES_MAX),
            _ => None,
        }
    }

    /// Handles one command line or one piece of message data.
    fn step(&mut self, buf: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> std::io::Result<Action> {
        let input = buf.get(*pos..).unwrap_or_default();
        match self.mode {
            Mode::Command => {
                let Some(eol) = memchr::memchr(b'\n', input) else {
                    return Ok(Action::Continue);
                };
                let line = input.get(..eol).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                *pos += eol + 1;
                Ok(self.command(line, out))
            }
            Mode::Auth(_) => {
                let Some(eol) = memchr::memchr(b'\n', input) else {
                    return Ok(Action::Continue);
                };
                let line = input.get(..eol).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                *pos += eol + 1;
                let Mode::Auth(step) = std::mem::replace(&mut self.mode, Mode::Command) else {
                    return Ok(Action::Continue);
                };
                self.auth_response(step, line, out);
                Ok(Action::Continue)
            }
            Mode::Data => Ok(self.data(input, pos, out)),
            Mode::Bdat { remaining, last } => {
                let take = remaining.min(input.len());
                self.message
                    .extend_from_slice(input.get(..take).unwrap_or_default());
                *pos += take;
                let remaining = remaining - take;
                if remaining > 0 {
                    self.mode = Mode::Bdat { remaining, last };
                    return Ok(Action::Continue);
                }
                // No size check: BDAT refused up front any chunk that would
                // take the message past MESSAGE_BYTES_MAX.
                self.mode = Mode::Command;
                Ok(self.chunk_done(last, out))
            }
        }
    }

    /// One piece of DATA input (RFC 5321, section 4.5.2): the body up to
    /// the next line that starts with a period, or that period itself. A
    /// line of `.` alone ends the message; any other line loses its first
    /// period (`..x` is stored as `.x`). Consumes nothing while the bytes
    /// that decide are still to come (the caller then reads more), and keeps
    /// a trailing CR for the next read, as it may start the terminator.
    fn data(&mut self, input: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Action {
        // The input is at the start of a line when the bytes kept end with
        // CRLF. A dropped lone period leaves them so, but what follows it is
        // then neither a period nor CRLF, so it is not taken for a line start.
        let line_start = self.message.is_empty() || self.message.ends_with(b"\r\n");
        if line_start && input.first() == Some(&b'.') {
            match (input.get(1), input.get(2)) {
                (Some(b'\r'), Some(b'\n')) => {
                    *pos += 3;
                    return self.finish_message(out);
                }
                (None, _) | (Some(b'\r'), None) => return Action::Continue,
                (Some(b'.'), _) => {
                    self.message.push(b'.');
                    *pos += 2;
                }
                _ => *pos += 1, // a lone leading period is dropped
            }
        } else {
            let take = match memchr::memmem::find(input, b"\r\n.") {
                Some(at) => at + 2,
                None => input.len() - usize::from(input.last() == Some(&b'\r')),
            };
            self.message
                .extend_from_slice(input.get(..take).unwrap_or_default());
            *pos += take;
        }
        if self.message.len() > MESSAGE_BYTES_MAX {
            push_reply(out, "552 5.3.4 Message too big");
            return Action::Close;
        }
        Action::Continue
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let text = String::from_utf8_lossy(line);
        let upper = text.to_ascii_uppercase();
        let verb = upper.split_ascii_whitespace().next().unwrap_or_default();
        let script = &self.ctx.script;
        match verb {
            "EHLO" | "HELO" => {
                let name = text.get(5..).unwrap_or_default().trim();
                if name.is_empty() {
                    push_reply(out, "501 5.5.4 Syntax: EHLO hostname");
                    return Action::Continue;
                }
                self.ehlo = Some(name.chars().take(255).collect());
                self.esmtp = verb == "EHLO";
                self.reset_transaction();
                if verb == "HELO" {
                    push_reply(out, "250 spate-bench-sink");
                } else {
                    out.extend_from_slice(b"250-spate-bench-sink greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n");
                    if self.ctx.tls.is_some() && !self.tls {
                        out.extend_from_slice(b"250-STARTTLS\r\n");
                    }
                    if self.auth_offered() && !self.authenticated {
                        out.extend_from_slice(b"250-AUTH PLAIN LOGIN\r\n");
                    }
                    push_reply(out, &format!("250 SIZE {MESSAGE_BYTES_MAX}"));
                }
            }
            "STARTTLS" if self.ctx.tls.is_some() && !self.tls => {
                push_reply(out, "220 2.0.0 Ready to start TLS");
                return Action::StartTls;
            }
            "STARTTLS" => push_reply(out, "502 5.5.1 STARTTLS not offered"),
            "AUTH" => self.auth_command(&text, out),
            "MAIL" => {
                // `MAIL FROM:<>` (the null reverse path) is a sender too.
                if path_argument(&text, "FROM:").is_none_or(str::is_empty) {
                    push_reply(out, "501 5.5.4 Syntax: MAIL FROM:<address>");
                } else if self.ehlo.is_none() {
                    push_reply(out, "503 5.5.1 EHLO first");
                } else if self.ctx.auth.is_some() && !self.authenticated {
                    push_reply(out, "530 5.7.0 Authentication required");
                } else if self.in_transaction {
                    push_reply(out, "503 5.5.1 Nested MAIL command");
                } else {
                    let no_rules = script.throttle.is_empty() && script.window.is_empty();
                    let refusal = if no_rules {
                        None // the common benchmark case: no lock per MAIL
                    } else {
                        let mut shared = lock(&self.ctx.shared);
                        let elapsed = shared.started.elapsed();
                        let refusal = shared.policy.mail_reply(script, self.ip, elapsed);
                        if refusal.is_some() {
                            shared.report.refused_mail += 1;
                        }
                        refusal
                    };
                    match refusal {
                        Some(reply) => {
                            push_reply(out, &reply);
                            if script::closes_connection(&reply) {
                                return Action::Close;
                            }
                        }
                        None => {
                            self.in_transaction = true;
                            push_reply(out, "250 2.1.0 Sender ok");
                        }
                    }
                }
            }
            "RCPT" => {
                let Some(path) = path_argument(&text, "TO:") else {
                    push_reply(out, "501 5.5.4 Syntax: RCPT TO:<address>");
                    return Action::Continue;
                };
                if !is_forward_path(path) {
                    push_reply(out, "501 5.1.3 Bad recipient address syntax");
                } else if !self.in_transaction {
                    push_reply(out, "503 5.5.1 MAIL first");
                } else if self.chunking {
                    // The message's data has begun: its envelope is closed.
                    push_reply(out, "503 5.5.1 RCPT not allowed after BDAT");
                } else if self.rcpts >= RCPT_PER_MESSAGE_MAX {
                    push_reply(out, "452 4.5.3 Too many recipients");
                } else {
                    let local = local_part(path);
                    match script::rcpt_reply(script, local) {
                        Some(reply) => {
                            let mut shared = lock(&self.ctx.shared);
                            if reply.starts_with('4') {
                                shared.report.tempfailed_recipients += 1;
                            } else {
                                shared.report.permfailed_recipients += 1;
                            }
                            drop(shared);
                            push_reply(out, &script::render(reply, self.ip));
                        }
                        None => {
                            self.rcpts += 1;
                            // Only `<Postmaster>` has no domain. It names this
                            // host's own mailbox, not a destination, so it is
                            // counted as a recipient but adds no domain: the
                            // per-listener sets keep to the domains routed there.
                            let domain = domain_of(path);
                            if self.ctx.track_domains && !domain.is_empty() {
                                self.rcpt_domains.push(domain.to_ascii_lowercase());
                            }
                            push_reply(out, "250 2.1.5 Recipient ok");
                        }
                    }
                }
            }
            "DATA" => {
                if self.chunking {
                    // The transaction stays: BDAT may still complete it.
                    push_reply(out, "503 5.5.1 DATA not allowed after BDAT");
                } else if !self.in_transaction || self.rcpts == 0 {
                    push_reply(out, "554 5.5.1 No valid recipients");
                } else {
                    self.mode = Mode::Data;
                    self.message.clear();
                    push_reply(out, "354 End data with <CR><LF>.<CR><LF>");
                }
            }
            "BDAT" => {
                let Some((size, last)) = bdat_arguments(&text) else {
                    // A malformed line leaves the chunk's end unknown, so
                    // its bytes cannot be told from the next command.
                    push_reply(out, "501 5.5.4 Syntax: BDAT size [LAST]");
                    return Action::Close;
                };
                if !self.in_transaction || self.rcpts == 0 {
                    // The chunk still follows on the wire; a real server
                    // must skip it, but we simply close.
                    push_reply(out, "554 5.5.1 No valid recipients");
                    return Action::Close;
                }
                if self.message.len().saturating_add(size) > MESSAGE_BYTES_MAX {
                    // Refused before the chunk is buffered; its bytes
                    // follow on the wire, so close as DATA does.
                    push_reply(out, "552 5.3.4 Message too big");
                    return Action::Close;
                }
                self.chunking = true;
                if size == 0 {
                    // No bytes follow: answered here, as a step that
                    // consumes nothing would leave pipelined commands
                    // unread until the client sent more.
                    return self.chunk_done(last, out);
                }
                self.mode = Mode::Bdat {
                    remaining: size,
                    last,
                };
            }
            "RSET" => {
                self.reset_transaction();
                push_reply(out, "250 2.0.0 Reset");
            }
            "NOOP" => push_reply(out, "250 2.0.0 OK"),
            "VRFY" => push_reply(out, "252 2.5.0 Cannot verify"),
            "QUIT" => {
                push_reply(out, "221 2.0.0 Bye");
                return Action::Close;
            }
            _ => push_reply(out, "500 5.5.2 Command not recognised"),
        }
        Action::Continue
    }

    /// True when this session may authenticate: the sink has credentials,
    /// and the session is under TLS or plaintext AUTH is allowed.
    fn auth_offered(&self) -> bool {
        self.ctx
            .auth
            .as_ref()
            .is_some_and(|a| self.tls || a.without_tls)
    }

    /// `AUTH mechanism [initial-response]`.
    fn auth_command(&mut self, text: &str, out: &mut Vec<u8>) {
        let mut words = text.split_ascii_whitespace().skip(1);
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next();
        if self.ctx.auth.is_none() {
            push_reply(out, "503 5.5.1 AUTH not available");
        } else if !self.auth_offered() {
            push_reply(out, "538 5.7.11 Encryption required for authentication");
        } else if !self.esmtp {
            push_reply(out, "503 5.5.1 EHLO first");
        } else if self.authenticated {
            push_reply(out, "503 5.5.1 Already authenticated");
        } else if self.in_transaction {
            push_reply(out, "503 5.5.1 AUTH not allowed in a mail transaction");
        } else {
            match (mechanism.as_str(), initial) {
                ("PLAIN", Some(response)) => {
                    self.auth_response(AuthStep::Plain, response.as_bytes(), out);
                }
                ("PLAIN", None) => {
                    self.mode = Mode::Auth(AuthStep::Plain);
                    push_reply(out, "334 ");
                }
                ("LOGIN", Some(user)) => {
                    self.auth_response(AuthStep::LoginUser, user.as_bytes(), out);
                }
                ("LOGIN", None) => {
                    self.mode = Mode::Auth(AuthStep::LoginUser);
                    push_reply(out, LOGIN_USER_CHALLENGE);
                }
                _ => push_reply(out, "504 5.5.4 Unrecognised authentication mechanism"),
            }
        }
    }

    /// One base64 line of an AUTH exchange (`*` cancels it): the next
    /// challenge, or the end of the exchange, counted and answered.
    fn auth_response(&mut self, step: AuthStep, line: &[u8], out: &mut Vec<u8>) {
        match self.auth_verdict(step, line) {
            Ok(Some((next, challenge))) => {
                self.mode = Mode::Auth(next);
                push_reply(out, challenge);
            }
            Ok(None) => {
                lock(&self.ctx.shared).report.auth_successes += 1;
                self.authenticated = true;
                push_reply(out, "235 2.7.0 Authentication successful");
            }
            Err(refusal) => {
                lock(&self.ctx.shared).report.auth_failures += 1;
                push_reply(out, refusal);
            }
        }
    }

    /// What one AUTH response leads to: `Ok(Some)` the next step and its
    /// challenge, `Ok(None)` valid credentials, `Err` the refusal.
    fn auth_verdict(
        &self,
        step: AuthStep,
        line: &[u8],
    ) -> Result<Option<(AuthStep, &'static str)>, &'static str> {
        const INVALID: &str = "535 5.7.8 Authentication credentials invalid";
        if line == b"*" {
            return Err("501 5.7.0 Authentication cancelled");
        }
        // PLAIN's "=" is an empty response.
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(line)
        };
        let decoded = decoded.map_err(|_| "501 5.5.2 Cannot decode the response")?;
        let text = String::from_utf8_lossy(&decoded).into_owned();
        let (user, password) = match step {
            AuthStep::LoginUser => {
                return Ok(Some((
                    AuthStep::LoginPassword(text),
                    LOGIN_PASSWORD_CHALLENGE,
                )));
            }
            AuthStep::LoginPassword(user) => (user, text),
            AuthStep::Plain => {
                let mut parts = text.splitn(3, '\0');
                let authzid = parts.next().unwrap_or_default();
                let (Some(user), Some(password)) = (parts.next(), parts.next()) else {
                    return Err("501 5.5.2 Malformed PLAIN response");
                };
                if !authzid.is_empty() && authzid != user {
                    return Err(INVALID);
                }
                (user.to_owned(), password.to_owned())
            }
        };
        let valid = self
            .ctx
            .auth
            .as_ref()
            .is_some_and(|a| a.user == user && a.password == password);
        if valid { Ok(None) } else { Err(INVALID) }
    }

    /// A BDAT chunk was read whole: the message ends with the last one,
    /// any other is acknowledged.
    fn chunk_done(&mut self, last: bool, out: &mut Vec<u8>) -> Action {
        if last {
            self.finish_message(out)
        } else {
            push_reply(out, "250 2.0.0 Chunk accepted");
            Action::Continue
        }
    }

    fn finish_message(&mut self, out: &mut Vec<u8>) -> Action {
        let now_us = crate::unix_micros();
        let bytes = self.message.len() as u64;
        let recipients = self.rcpts as u64;
        let sent_us = sent_header(&self.message);
        if let Some(dir) = &self.ctx.maildir {
            let seq = self.ctx.maildir_seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("{now_us}.{seq}.spate-bench");
            let tmp = dir.join("tmp").join(&name);
            let write = std::fs::write(&tmp, &self.message)
                .and_then(|()| std::fs::rename(&tmp, dir.join("new").join(&name)));
            if write.is_err() {
                push_reply(out, "451 4.3.0 Maildir write failed");
                self.reset_transaction();
                return Action::DataDone;
            }
        }
        {
            let mut shared = lock(&self.ctx.shared);
            let s = &mut *shared;
            s.report.total.add(recipients, bytes);
            s.per_ip.entry(self.ip).or_default().add(recipients, bytes);
            s.per_listener
                .entry(self.local)
                .or_default()
                .add(recipients, bytes);
            if !self.rcpt_domains.is_empty() {
                let seen = s.per_listener_domains.entry(self.local).or_default();
                seen.extend(self.rcpt_domains.iter().cloned());
            }
            let ehlo = self.ehlo.as_deref().unwrap_or("(none)");
            match s.per_ehlo.get_mut(ehlo) {
                Some(c) => c.add(recipients, bytes),
                None => {
                    let mut c = Counts::default();
                    c.add(recipients, bytes);
                    s.per_ehlo.insert(ehlo.to_owned(), c);
                }
            }
            s.report.first_message_unix_us.get_or_insert(now_us);
            s.report.last_message_unix_us = Some(now_us);
            if let Some(sent) = sent_us {
                report::record(&mut s.e2e, now_us.saturating_sub(sent));
            }
        }
        let accepted = &self.ctx.accepted;
        accepted.recipients.fetch_add(recipients, Ordering::Relaxed);
        accepted.messages.fetch_add(1, Ordering::Relaxed);
        self.reset_transaction();
        push_reply(out, "250 2.0.0 Message accepted");
        self.messages_on_connection += 1;
        let limit = self.ctx.script.close_after;
        if limit > 0 && self.messages_on_connection >= limit {
            lock(&self.ctx.shared).report.closed_after_limit += 1;
            return Action::Close;
        }
        Action::DataDone
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Continue,
    DataDone,
    Close,
    StartTls,
}

fn push_reply(out: &mut Vec<u8>, reply: &str) {
    out.extend_from_slice(reply.as_bytes());
    out.extend_from_slice(b"\r\n");
}

async fn flush<S: AsyncWrite>(io: &mut S, out: &mut Vec<u8>, delay_ms: u64) -> std::io::Result<()> {
    if delay_ms > 0 {
        compio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let data = std::mem::take(out);
    let BufResult(res, mut back) = io.write_all(data).await;
    back.clear();
    *out = back;
    res?;
    io.flush().await
}

/// The address of `<local@domain> ...` (or a bare address).
fn mailbox(arg: &str) -> &str {
    let arg = arg.trim();
    arg.strip_prefix('<')
        .and_then(|a| a.split('>').next())
        .unwrap_or(arg)
}

/// The path after `keyword` (`FROM:` or `TO:`, any case) of a MAIL or RCPT
/// line, trimmed: None when the line does not have the keyword.
fn path_argument<'t>(text: &'t str, keyword: &str) -> Option<&'t str> {
    let rest = text.get(5..)?; // past "MAIL " or "RCPT "
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest.get(keyword.len()..).unwrap_or_default().trim())
}

/// True for a RCPT path naming a mailbox: `<local@domain>` (or a bare
/// address) with both parts, never the empty `<>`; or `<Postmaster>` in any
/// case, the one domainless path every server must accept (RFC 5321,
/// section 4.5.1).
fn is_forward_path(arg: &str) -> bool {
    let mailbox = mailbox(arg);
    mailbox.eq_ignore_ascii_case("postmaster")
        || mailbox
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

/// The chunk size and end marker of a BDAT line (RFC 3030, section 2:
/// `BDAT SP 1*DIGIT [SP "LAST"]`, the marker in any case); None when the
/// line does not match, or the size does not fit a usize.
fn bdat_arguments(line: &str) -> Option<(usize, bool)> {
    let mut words = line.split_ascii_whitespace().skip(1);
    // All digits: `str::parse` would also take a leading `+`.
    let size = words
        .next()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// The domain of `<local@domain>` (empty without one).
fn domain_of(arg: &str) -> &str {
    mailbox(arg).rsplit_once('@').map_or("", |(_, d)| d)
}

/// The local part of `<local@domain>` (or of a bare address).
fn local_part(arg: &str) -> &str {
    let inner = mailbox(arg);
    inner.rsplit_once('@').map_or(inner, |(l, _)| l)
}

/// The injector's send time from the message header, if present.
pub fn sent_header(message: &[u8]) -> Option<u64> {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let headers = message.get(..header_end)?;
    let needle = format!("{SENT_HEADER}: ");
    let at = memchr::memmem::find(headers, needle.as_bytes())?;
    let rest = headers.get(at + needle.len()..)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}
