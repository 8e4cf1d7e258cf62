//! The inbound SMTP session as a sans-IO state machine.
//!
//! The caller feeds bytes read from the socket to [`ServerSession::receive`],
//! writes whatever [`ServerSession::take_output`] returns, and acts on the
//! [`ServerEvent`]s. Events that need a decision (HELO, MAIL, RCPT, AUTH and
//! the end of a message) leave the session waiting: until the caller calls
//! [`ServerSession::accept`], [`ServerSession::accept_with`] or
//! [`ServerSession::reject`], `receive` refuses to go on
//! ([`UsageError::DecisionPending`]) and no pipelined command behind it is
//! read. The end-of-message answer may come much later (after the spool's
//! group commit); nothing else happens meanwhile.
//!
//! The session enforces ordering (503 5.5.1), the recipient cap (452 4.5.3),
//! SIZE at MAIL and while streaming (552 5.3.4), line limits (500 5.5.2),
//! the error cap (421 and close), AUTH only over TLS unless configured, and
//! the smuggling defence of [`super::data`]. It leaves to the caller:
//! sockets, TLS, timeouts, credential checks, relay policy and the spool.
//!
//! # Example
//!
//! ```
//! use spate::smtp::server::{ServerConfig, ServerEvent, ServerSession};
//!
//! let mut session = ServerSession::new(ServerConfig::new("mx.example.com"));
//! let mut wire = session.take_output(); // the 220 greeting
//! let input = b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@mx.example.com>\r\n\
//!               DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
//! let mut message = Vec::new();
//! let mut offset = 0;
//! loop {
//!     let step = session.receive(&input[offset..]).expect("no decision pending");
//!     offset += step.consumed;
//!     match step.event {
//!         None => break, // all input used: write output, read more
//!         Some(ServerEvent::Helo { .. } | ServerEvent::MailFrom(_) | ServerEvent::RcptTo(_)) => {
//!             session.accept().unwrap(); // policy checks go here
//!         }
//!         Some(ServerEvent::Data(chunk)) => message.extend_from_slice(chunk),
//!         Some(ServerEvent::MessageComplete) => {
//!             // spool `message`, then (maybe much later):
//!             session.accept_with(spate::smtp::Reply::with_status(250, (2, 0, 0), "queued as 1")).unwrap();
//!         }
//!         Some(ServerEvent::Quit) => break,
//!         Some(_) => {}
//!     }
//!     wire.extend(session.take_output());
//! }
//! wire.extend(session.take_output());
//! assert_eq!(message, b"Subject: hi\r\n\r\nbody\r\n");
//! assert!(String::from_utf8(wire).unwrap().ends_with("250 2.0.0 queued as 1\r\n221 2.0.0 Bye\r\n"));
//! ```

mod auth;
mod commands;
mod types;

pub use types::{AuthRequest, Received, ServerConfig, ServerEvent, ShutdownReason, UsageError};

use super::command::{MailFrom, RcptTo};
use super::data::{DataDecoder, DataFault};
use super::limits::SMTP_COMMAND_LINE_BYTES_MAX;
use super::reply::Reply;

/// A decision the caller owes.
#[derive(Clone, Debug)]
enum Pending {
    Helo { name: String, extended: bool },
    Mail(MailFrom),
    Rcpt(RcptTo),
    Message,
    Auth(String),
}

/// What the input bytes currently mean.
#[derive(Debug)]
enum Phase {
    Command,
    AuthResponse(auth::AuthStep),
    Data(DataDecoder),
    Bdat {
        remaining_bytes: u64,
        last: bool,
        discard: Option<Reply>,
    },
    AwaitingTls,
    /// A shutdown event is owed to the caller on the next `receive`.
    Closing(ShutdownReason),
    Closed,
}

/// The current mail transaction.
#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    recipients: Vec<RcptTo>,
    bdat_bytes: u64,
    bdat_started: bool,
    bdat_failure: Option<Reply>,
}

/// One inbound SMTP session. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    phase: Phase,
    pending: Option<Pending>,
    out: Vec<u8>,
    line: Vec<u8>,
    line_overflow: bool,
    helo: Option<(String, bool)>,
    tls_active: bool,
    authenticated: Option<String>,
    transaction: Option<Transaction>,
    errors: u32,
}

impl ServerSession {
    /// A new session; the 220 greeting is already in the output.
    pub fn new(config: ServerConfig) -> Self {
        let greeting = Reply::new(220, None, format!("{} ESMTP spate", config.hostname));
        let mut out = Vec::new();
        greeting.encode(&mut out);
        Self {
            tls_active: config.tls_active,
            config,
            phase: Phase::Command,
            pending: None,
            out,
            line: Vec::new(),
            line_overflow: false,
            helo: None,
            authenticated: None,
            transaction: None,
            errors: 0,
        }
    }

    /// Bytes to write to the peer, in order; the buffer is handed over.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Appends the bytes to write to `dst` (reuses the caller's buffer).
    pub fn write_output_to(&mut self, dst: &mut Vec<u8>) {
        dst.append(&mut self.out);
    }

    /// True while reading message data (for choosing the data timeout).
    pub fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat { .. })
    }

    /// True once QUIT or a shutdown happened.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Closing(_))
    }

    /// The user authenticated by AUTH, if any.
    pub fn authenticated_user(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The HELO/EHLO name the client gave, once accepted.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|(name, _)| name.as_str())
    }

    /// Whether TLS is active on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The transaction's sender, once MAIL was accepted.
    pub fn mail_from(&self) -> Option<&MailFrom> {
        self.transaction.as_ref().map(|t| &t.mail)
    }

    /// The recipients accepted so far in this transaction.
    pub fn recipients(&self) -> &[RcptTo] {
        self.transaction
            .as_ref()
            .map_or(&[], |t| t.recipients.as_slice())
    }

    /// Ends the session with `reply` (e.g. `421 4.4.2` on a timeout).
    pub fn shutdown(&mut self, reply: &Reply) {
        reply.encode(&mut self.out);
        self.pending = None;
        self.phase = Phase::Closed;
    }

    /// After StartTls: the handshake succeeded. Forgets HELO, AUTH and the
    /// transaction (RFC 3207 §4.2); the client must EHLO again.
    pub fn tls_established(&mut self) -> Result<(), UsageError> {
        if !matches!(self.phase, Phase::AwaitingTls) {
            return Err(UsageError::NothingPending);
        }
        self.tls_active = true;
        self.helo = None;
        self.authenticated = None;
        self.transaction = None;
        self.line.clear();
        self.line_overflow = false;
        self.phase = Phase::Command;
        Ok(())
    }

    /// Accepts the pending decision with its usual positive reply.
    pub fn accept(&mut self) -> Result<(), UsageError> {
        let pending = self.pending.take().ok_or(UsageError::NothingPending)?;
        let reply = match &pending {
            Pending::Helo { extended: true, .. } => self.ehlo_reply(),
            Pending::Helo {
                extended: false, ..
            } => Reply::new(250, None, self.config.hostname.clone()),
            Pending::Mail(_) => Reply::with_status(250, (2, 1, 0), "OK"),
            Pending::Rcpt(_) => Reply::with_status(250, (2, 1, 5), "OK"),
            Pending::Message => Reply::with_status(250, (2, 0, 0), "OK queued"),
            Pending::Auth(_) => Reply::with_status(235, (2, 7, 0), "Authentication successful"),
        };
        self.settle(pending, reply, true);
        Ok(())
    }

    /// Accepts the pending decision with the caller's 2xx reply (e.g. one
    /// naming the queue id).
    pub fn accept_with(&mut self, reply: Reply) -> Result<(), UsageError> {
        if !reply.is_positive_completion() {
            return Err(UsageError::WrongReplyClass);
        }
        let pending = self.pending.take().ok_or(UsageError::NothingPending)?;
        self.settle(pending, reply, true);
        Ok(())
    }

    /// Refuses the pending decision with the caller's 4xx/5xx reply. A 421
    /// reply closes the session.
    pub fn reject(&mut self, reply: Reply) -> Result<(), UsageError> {
        if reply.is_positive() {
            return Err(UsageError::WrongReplyClass);
        }
        let pending = self.pending.take().ok_or(UsageError::NothingPending)?;
        let is_auth = matches!(pending, Pending::Auth(_));
        self.settle(pending, reply, false);
        if is_auth && !self.is_closed() {
            // failed logins count toward the error cap (password guessing)
            self.count_error();
        }
        Ok(())
    }

    fn settle(&mut self, pending: Pending, reply: Reply, accepted: bool) {
        let closing = reply.code == 421;
        reply.encode(&mut self.out);
        match pending {
            Pending::Helo { name, extended } if accepted => {
                self.transaction = None;
                self.helo = Some((name, extended));
            }
            Pending::Mail(mail) if accepted => {
                self.transaction = Some(Transaction {
                    mail,
                    recipients: Vec::new(),
                    bdat_bytes: 0,
                    bdat_started: false,
                    bdat_failure: None,
                });
            }
            Pending::Rcpt(rcpt) if accepted => {
                if let Some(t) = &mut self.transaction {
                    t.recipients.push(rcpt);
                }
            }
            Pending::Message => self.transaction = None,
            Pending::Auth(user) if accepted => self.authenticated = Some(user),
            _ => {}
        }
        if closing {
            self.phase = Phase::Closing(ShutdownReason::ServiceClosing);
        }
    }

    /// The EHLO capability list for the current state.
    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_bytes),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
            "DSN".to_owned(),
        ];
        if self.config.starttls_available && !self.tls_active {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        lines.push("HELP".to_owned());
        Reply {
            code: 250,
            enhanced: None,
            lines,
        }
    }

    fn auth_offered(&self) -> bool {
        self.config.auth_available
            && (self.tls_active || self.config.auth_without_tls)
            && self.authenticated.is_none()
    }

    /// Queues a reply that does not count as an error.
    fn reply(&mut self, reply: &Reply) {
        reply.encode(&mut self.out);
    }

    /// Queues an error reply and counts it; returns the shutdown event when
    /// the cap is reached.
    fn error(&mut self, reply: &Reply) -> Option<ServerEvent<'static>> {
        reply.encode(&mut self.out);
        self.count_error()
    }

    fn count_error(&mut self) -> Option<ServerEvent<'static>> {
        self.errors += 1;
        if self.errors < self.config.max_errors {
            return None;
        }
        Reply::with_status(421, (4, 7, 0), "Too many errors, closing connection")
            .encode(&mut self.out);
        self.phase = Phase::Closing(ShutdownReason::TooManyErrors);
        self.take_closing()
    }

    fn take_closing(&mut self) -> Option<ServerEvent<'static>> {
        if let Phase::Closing(reason) = self.phase {
            self.phase = Phase::Closed;
            return Some(ServerEvent::Shutdown(reason));
        }
        None
    }

    /// Feeds input. See [`Received`] for the loop contract.
    pub fn receive<'a>(&mut self, input: &'a [u8]) -> Result<Received<'a>, UsageError> {
        if self.pending.is_some() {
            return Err(UsageError::DecisionPending);
        }
        let mut pos = 0;
        loop {
            match &mut self.phase {
                Phase::Closing(_) => {
                    let event = self.take_closing();
                    return Ok(Received {
                        consumed: pos,
                        event,
                    });
                }
                Phase::Closed => {
                    if pos == 0 {
                        return Err(UsageError::Closed);
                    }
                    return Ok(Received {
                        consumed: pos,
                        event: None,
                    });
                }
                Phase::AwaitingTls => {
                    if pos == 0 {
                        return Err(UsageError::TlsPending);
                    }
                    return Ok(Received {
                        consumed: pos,
                        event: None,
                    });
                }
                Phase::Data(decoder) => {
                    let rest = input.get(pos..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok(Received {
                            consumed: pos,
                            event: None,
                        });
                    }
                    let fault_before = decoder.fault();
                    let step = decoder.decode(rest);
                    pos += step.consumed;
                    let fault = decoder.fault();
                    let event = self.after_data_step(step.end, fault_before, fault);
                    if event.is_some() {
                        return Ok(Received {
                            consumed: pos,
                            event,
                        });
                    }
                    if fault.is_none() && !step.chunk.is_empty() {
                        let event = Some(ServerEvent::Data(step.chunk));
                        return Ok(Received {
                            consumed: pos,
                            event,
                        });
                    }
                }
                Phase::Bdat {
                    remaining_bytes, ..
                } if *remaining_bytes == 0 => {
                    if let Some(event) = self.finish_bdat_chunk() {
                        return Ok(Received {
                            consumed: pos,
                            event: Some(event),
                        });
                    }
                }
                Phase::Bdat {
                    remaining_bytes,
                    discard,
                    ..
                } => {
                    let rest = input.get(pos..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok(Received {
                            consumed: pos,
                            event: None,
                        });
                    }
                    let take = usize::try_from(*remaining_bytes)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    *remaining_bytes -= take as u64;
                    pos += take;
                    if discard.is_none() {
                        let chunk = rest.get(..take).unwrap_or_default();
                        return Ok(Received {
                            consumed: pos,
                            event: Some(ServerEvent::Data(chunk)),
                        });
                    }
                }
                Phase::Command | Phase::AuthResponse(_) => {
                    let rest = input.get(pos..).unwrap_or_default();
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        self.buffer_partial_line(rest);
                        return Ok(Received {
                            consumed: input.len(),
                            event: None,
                        });
                    };
                    pos += lf + 1;
                    let piece = rest.get(..lf).unwrap_or_default();
                    let event = self.complete_line(piece);
                    if event.is_some() {
                        return Ok(Received {
                            consumed: pos,
                            event,
                        });
                    }
                }
            }
        }
    }

    fn buffer_partial_line(&mut self, rest: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + rest.len() > SMTP_COMMAND_LINE_BYTES_MAX {
            self.line.clear();
            self.line_overflow = true;
        } else {
            self.line.extend_from_slice(rest);
        }
    }

    /// A whole line arrived (`piece` is its tail in the current input).
    fn complete_line(&mut self, piece: &[u8]) -> Option<ServerEvent<'static>> {
        let too_long =
            self.line_overflow || self.line.len() + piece.len() > SMTP_COMMAND_LINE_BYTES_MAX;
        self.line_overflow = false;
        let mut buffered = std::mem::take(&mut self.line);
        if too_long {
            if matches!(self.phase, Phase::AuthResponse(_)) {
                self.phase = Phase::Command;
            }
            return self.error(&Reply::with_status(500, (5, 5, 2), "Line too long"));
        }
        let line: &[u8] = if buffered.is_empty() {
            piece
        } else {
            buffered.extend_from_slice(piece);
            &buffered
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let event = match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthResponse(step) => self.auth_response(step, line),
            _ => self.command(line),
        };
        buffered.clear();
        if self.line.capacity() == 0 {
            self.line = buffered; // keep the allocation
        }
        event
    }

    /// Handles one DATA decoder step.
    /// Handles the end of data and new faults; chunks are the caller's.
    fn after_data_step(
        &mut self,
        end: bool,
        fault_before: Option<DataFault>,
        fault: Option<DataFault>,
    ) -> Option<ServerEvent<'static>> {
        if end {
            self.phase = Phase::Command;
            if let Some(fault) = fault {
                self.reply(&fault_reply(fault));
                self.transaction = None;
                if fault_before.is_none() {
                    return Some(ServerEvent::MessageAborted(fault));
                }
                return None;
            }
            self.pending = Some(Pending::Message);
            return Some(ServerEvent::MessageComplete);
        }
        match (fault_before, fault) {
            (None, Some(fault)) => Some(ServerEvent::MessageAborted(fault)),
            _ => None,
        }
    }

    /// A BDAT chunk was fully read.
    fn finish_bdat_chunk(&mut self) -> Option<ServerEvent<'static>> {
        let Phase::Bdat { last, discard, .. } = std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return None;
        };
        if let Some(reply) = discard {
            if last || self.transaction.is_none() {
                self.transaction = None;
            }
            return self.error(&reply);
        }
        let received = self.transaction.as_ref().map_or(0, |t| t.bdat_bytes);
        if last {
            self.pending = Some(Pending::Message);
            return Some(ServerEvent::MessageComplete);
        }
        self.reply(&Reply::with_status(
            250,
            (2, 0, 0),
            format!("{received} octets received"),
        ));
        None
    }
}

/// The one reply for each way a message can be refused while streaming.
pub fn fault_reply(fault: DataFault) -> Reply {
    match fault {
        DataFault::BareLineEnding => {
            Reply::with_status(554, (5, 6, 0), "Message contains bare CR or LF")
        }
        DataFault::LineTooLong => Reply::with_status(500, (5, 5, 2), "Line too long"),
        DataFault::TooBig => Reply::with_status(552, (5, 3, 4), "Message size exceeds limit"),
    }
}

#[cfg(test)]
mod tests;
