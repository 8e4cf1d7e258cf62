//! The outbound SMTP session (delivery) as a sans-IO state machine.
//!
//! The session walks greeting → EHLO (HELO on a 5xx) → optional STARTTLS
//! (the caller runs the handshake, the session says EHLO again) → optional
//! AUTH PLAIN → ready. Each [`ClientSession::send_transaction`] sends MAIL,
//! the RCPTs and DATA (or BDAT) in one write when the server offers
//! PIPELINING, collects per-recipient replies and the final reply, and hands
//! back a [`TransactionResult`]. After a transaction that left the server's
//! transaction open (MAIL accepted but no final reply) it sends RSET before
//! saying Ready again; otherwise the next transaction goes straight on.
//!
//! With PIPELINING and CHUNKING offered and
//! [`ClientConfig::max_transactions_in_flight`] above 1, a transaction may
//! start while earlier ones still wait for replies
//! ([`ClientSession::can_send_transaction`]): its `RSET`, `MAIL`, `RCPT`s and
//! `BDAT n LAST` with the body follow the earlier ones in the same stream
//! (RFC 2920 puts neither RSET nor BDAT last in a group). The leading RSET
//! clears whatever an earlier transaction of the group left open, so each
//! transaction stands on its own whatever the earlier replies were. Replies
//! come back in order and each transaction is reported on its own.
//!
//! The body never enters the session: on [`ClientEvent::SendBody`] the
//! caller writes the session output and then the pieces of a
//! [`BodyEncoder`] over its own bytes (e.g. an mmap), in one vectored write.
//!
//! Left to the caller: sockets, TLS, timeouts, MX choice, what a reply means
//! for the queue (retry, bounce, backoff).
//!
//! # Example
//!
//! Our client against our server, in memory:
//!
//! ```
//! use spate::smtp::client::{ClientConfig, ClientEvent, ClientSession, Envelope, EnvelopeRecipient};
//! use spate::smtp::server::{ServerConfig, ServerEvent, ServerSession};
//! use spate::smtp::{BodyEncoder, Mailbox, ReversePath};
//!
//! let body = b"Subject: hi\r\n\r\n.hello\r\n";
//! let mut client = ClientSession::new(ClientConfig::new("mta.example"));
//! let mut server = ServerSession::new(ServerConfig::new("mx.example"));
//! let mut to_client = server.take_output();
//! let mut received = Vec::new();
//! let mut result = None;
//! while !client.is_finished() {
//!     // client side: consume server bytes, react to events
//!     let used = client.receive(&to_client);
//!     to_client.drain(..used);
//!     let mut to_server = Vec::new();
//!     while let Some(event) = client.next_event() {
//!         match event {
//!             ClientEvent::Ready if result.is_none() => {
//!                 let envelope = Envelope {
//!                     reverse_path: ReversePath::Mailbox(Mailbox::new("a", "mta.example")),
//!                     recipients: vec![EnvelopeRecipient::new(Mailbox::new("b", "mx.example"))],
//!                     ret: None,
//!                     envid: None,
//!                 };
//!                 client.send_transaction(&envelope, body).unwrap();
//!             }
//!             ClientEvent::Ready => client.quit(),
//!             ClientEvent::SendBody(mode, scan) => {
//!                 to_server.extend(client.take_output());
//!                 for slice in BodyEncoder::scanned(body, mode, scan).slices() {
//!                     to_server.extend_from_slice(slice); // a vectored write in real life
//!                 }
//!             }
//!             ClientEvent::TransactionDone(done) => result = Some(done),
//!             ClientEvent::Closed => {}
//!             other => panic!("{other:?}"),
//!         }
//!     }
//!     to_server.extend(client.take_output());
//!     // server side
//!     let mut offset = 0;
//!     while let Ok(step) = server.receive(&to_server[offset..]) {
//!         offset += step.consumed;
//!         match step.event {
//!             None => break,
//!             Some(ServerEvent::Data(chunk)) => received.extend_from_slice(chunk),
//!             Some(ServerEvent::Helo { .. } | ServerEvent::MailFrom(_) | ServerEvent::RcptTo(_))
//!             | Some(ServerEvent::MessageComplete) => server.accept().unwrap(),
//!             Some(_) => {}
//!         }
//!     }
//!     to_client.extend(server.take_output());
//! }
//! assert_eq!(received, body);
//! let result = result.unwrap();
//! assert!(result.any_delivered());
//! assert_eq!(result.data.unwrap().code, 250);
//! ```

mod capabilities;
mod types;

use std::collections::VecDeque;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

pub use capabilities::{
    Capabilities, Envelope, EnvelopeRecipient, RecipientOutcome, TransactionResult,
};

pub use types::{
    ClientConfig, ClientCredentials, ClientEvent, ClientFailure, StartTlsPolicy, TransactionError,
};

use super::address::ForwardPath;
use super::command::{BodyType, Command, MailFrom, MailParams, RcptParams, RcptTo};
use super::data::{BodyEncoder, BodyMode, BodyScan};
use super::reply::{Reply, ReplyParser};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt(usize),
    Data,
    BodyEnd,
    /// After a 354 with no accepted recipient we send a lone `.`.
    EmptyBodyEnd,
    Rset,
    /// RSET in front of a transaction pipelined behind another one.
    RsetPipelined,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Busy,
    AwaitingTls,
    Ready,
    Closed,
    Failed,
}

#[derive(Debug)]
struct Transaction {
    result: TransactionResult,
    pipelined: bool,
    mode: BodyMode,
    message_bytes: u64,
    /// The body's one scan, for the encoder ([`ClientEvent::SendBody`]).
    scan: BodyScan,
    rcpt_commands: Vec<Command>,
    accepted: usize,
}

/// One outbound SMTP connection. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    parser: ReplyParser,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    expect: VecDeque<Expect>,
    state: State,
    caps: Capabilities,
    tls_active: bool,
    /// Transactions sent and not finished, oldest first; replies finish
    /// them in this order.
    transactions: VecDeque<Transaction>,
}

impl ClientSession {
    /// A session waiting for the server's greeting.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            tls_active: config.tls_active,
            config,
            parser: ReplyParser::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            state: State::Busy,
            caps: Capabilities::default(),
            transactions: VecDeque::new(),
        }
    }

    /// Bytes to write to the server, in order; the buffer is handed over.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Appends the bytes to write to `dst`.
    pub fn write_output_to(&mut self, dst: &mut Vec<u8>) {
        dst.append(&mut self.out);
    }

    /// The next thing to act on, if any.
    pub fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// What the server offered in its last EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// True after `Closed` or `Failed`.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Feeds bytes from the server; returns how many were used. Fewer than
    /// given only after StartTls (drop the rest: it arrived before TLS) or
    /// once the session is finished.
    #[must_use = "bytes beyond the consumed count must be dropped"]
    pub fn receive(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            if matches!(
                self.state,
                State::AwaitingTls | State::Closed | State::Failed
            ) {
                break;
            }
            match self.parser.parse(input.get(pos..).unwrap_or_default()) {
                Err(error) => {
                    self.fail(ClientFailure::MalformedReply(error));
                    break;
                }
                Ok((used, reply)) => {
                    pos += used;
                    if let Some(reply) = reply {
                        self.on_reply(reply);
                    }
                }
            }
        }
        pos
    }

    /// The peer closed the connection (EOF).
    pub fn connection_closed(&mut self) {
        match self.state {
            State::Closed | State::Failed => {}
            _ if self.expect.front() == Some(&Expect::Quit) => self.close(),
            _ => self.fail(ClientFailure::ConnectionClosed),
        }
    }

    /// After `StartTls`: the handshake succeeded; EHLO is sent again.
    pub fn tls_established(&mut self) {
        if self.state != State::AwaitingTls {
            return;
        }
        self.tls_active = true;
        self.parser = ReplyParser::new();
        self.caps = Capabilities::default();
        self.state = State::Busy;
        self.send(&Command::Ehlo(self.config.ehlo_name.clone()), Expect::Ehlo);
    }

    /// Sends QUIT when Ready (the `Closed` event follows its reply).
    pub fn quit(&mut self) {
        if self.state == State::Ready {
            self.state = State::Busy;
            self.send(&Command::Quit, Expect::Quit);
        }
    }

    /// Whether [`Self::send_transaction`] may be called now: the session is
    /// Ready, or every transaction in flight is a pipelined BDAT one and
    /// fewer than `max_transactions_in_flight` are.
    pub fn can_send_transaction(&self) -> bool {
        match self.state {
            State::Ready => true,
            State::Busy => {
                !self.transactions.is_empty()
                    && self.transactions.len() < self.config.max_transactions_in_flight
                    && self
                        .transactions
                        .iter()
                        .all(|t| t.pipelined && t.mode == BodyMode::Bdat)
            }
            _ => false,
        }
    }

    /// Transactions sent whose final reply has not come yet.
    pub fn transactions_in_flight(&self) -> usize {
        self.transactions.len()
    }

    /// Starts a transaction for `envelope`; `body` is the stored message
    /// (bare LFs allowed), only scanned here, never copied.
    pub fn send_transaction(
        &mut self,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<(), TransactionError> {
        if !self.can_send_transaction() {
            return Err(TransactionError::NotReady);
        }
        if envelope.recipients.is_empty() {
            return Err(TransactionError::NoRecipients);
        }
        let smtputf8 = envelope.needs_smtputf8();
        if smtputf8 && !self.caps.smtputf8 {
            return Err(TransactionError::SmtpUtf8NotOffered);
        }
        let mode = if self.config.use_chunking && self.caps.chunking {
            BodyMode::Bdat
        } else {
            BodyMode::Data
        };
        // RFC 1870 size: CRLF-normalised, without dot-stuffing. One pass
        // over the body serves the size, BODY=8BITMIME and the encoder.
        let scan = BodyScan::of(body);
        let message_bytes = BodyEncoder::encoded_len_scanned(body, BodyMode::Bdat, scan);
        if let Some(max_bytes) = self.caps.size_max_bytes.filter(|&max| message_bytes > max) {
            return Err(TransactionError::TooBig {
                size_bytes: message_bytes,
                max_bytes,
            });
        }
        let dsn = self.caps.dsn;
        let mail = Command::Mail(MailFrom {
            reverse_path: envelope.reverse_path.clone(),
            params: MailParams {
                size_bytes: self.caps.size_offered.then_some(message_bytes),
                body: (self.caps.eight_bit_mime && scan.eight_bit)
                    .then_some(BodyType::EightBitMime),
                smtputf8,
                ret: envelope.ret.filter(|_| dsn),
                envid: envelope.envid.clone().filter(|_| dsn),
                auth: None,
            },
        });
        let rcpt_commands = envelope
            .recipients
            .iter()
            .map(|r| {
                Command::Rcpt(RcptTo {
                    forward_path: ForwardPath::Mailbox(r.mailbox.clone()),
                    params: RcptParams {
                        notify: r.notify.filter(|_| dsn),
                        orcpt: r.orcpt.clone().filter(|_| dsn),
                    },
                })
            })
            .collect::<Vec<_>>();
        let pipelined = self.config.use_pipelining && self.caps.pipelining;
        if self.state == State::Busy {
            // Behind another transaction (can_send_transaction): whatever
            // that one leaves open, this one starts clean.
            self.send(&Command::Rset, Expect::RsetPipelined);
        }
        self.state = State::Busy;
        self.send(&mail, Expect::Mail);
        if pipelined {
            for (index, rcpt) in rcpt_commands.iter().enumerate() {
                self.send(rcpt, Expect::Rcpt(index));
            }
            match mode {
                BodyMode::Data => self.send(&Command::Data, Expect::Data),
                BodyMode::Bdat => {
                    let bdat = Command::Bdat {
                        size_bytes: message_bytes,
                        last: true,
                    };
                    self.send(&bdat, Expect::BodyEnd);
                    self.events
                        .push_back(ClientEvent::SendBody(BodyMode::Bdat, scan));
                }
            }
        }
        self.transactions.push_back(Transaction {
            result: TransactionResult {
                recipients: vec![None; rcpt_commands.len()],
                ..TransactionResult::default()
            },
            pipelined,
            mode,
            message_bytes,
            scan,
            rcpt_commands,
            accepted: 0,
        });
        Ok(())
    }

    fn send(&mut self, command: &Command, expect: Expect) {
        command.encode(&mut self.out);
        self.expect.push_back(expect);
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.expect.clear();
        self.events.push_back(ClientEvent::Closed);
    }

    fn fail(&mut self, failure: ClientFailure) {
        for mut transaction in self.transactions.drain(..) {
            transaction.result.connection_failed = true;
            self.events
                .push_back(ClientEvent::TransactionDone(transaction.result));
        }
        self.expect.clear();
        self.state = State::Failed;
        self.events.push_back(ClientEvent::Failed(failure));
    }

    fn ready(&mut self) {
        self.state = State::Ready;
        self.events.push_back(ClientEvent::Ready);
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(expect) = self.expect.pop_front() else {
            let failure = if reply.code == 421 {
                ClientFailure::ServiceClosing(reply)
            } else {
                ClientFailure::UnexpectedReply(reply)
            };
            return self.fail(failure);
        };
        if reply.code == 421 && expect != Expect::Quit {
            return self.fail(ClientFailure::ServiceClosing(reply));
        }
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.send(&Command::Ehlo(self.config.ehlo_name.clone()), Expect::Ehlo);
            }
            Expect::Greeting => {
                Command::Quit.encode(&mut self.out);
                self.fail(ClientFailure::Greeting(reply));
            }
            Expect::Ehlo if reply.is_positive_completion() => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.after_ehlo();
            }
            Expect::Ehlo if reply.is_permanent() => {
                self.send(&Command::Helo(self.config.ehlo_name.clone()), Expect::Helo);
            }
            Expect::Helo if reply.is_positive_completion() => {
                self.caps = Capabilities::default();
                self.after_ehlo();
            }
            Expect::Ehlo | Expect::Helo => {
                Command::Quit.encode(&mut self.out);
                self.fail(ClientFailure::Helo(reply));
            }
            Expect::StartTls if reply.code == 220 => {
                self.state = State::AwaitingTls;
                self.events.push_back(ClientEvent::StartTls);
            }
            Expect::StartTls if self.config.starttls == StartTlsPolicy::Required => {
                Command::Quit.encode(&mut self.out);
                self.fail(ClientFailure::StartTls(reply));
            }
            Expect::StartTls => self.after_tls_decision(),
            Expect::Auth if reply.code == 235 => self.ready(),
            Expect::Auth => {
                Command::Quit.encode(&mut self.out);
                self.fail(ClientFailure::Auth(reply));
            }
            Expect::Rset if reply.is_positive_completion() => self.ready(),
            Expect::RsetPipelined if reply.is_positive_completion() => {}
            Expect::Rset | Expect::RsetPipelined => self.fail(ClientFailure::Rset(reply)),
            Expect::Quit => self.close(),
            Expect::Mail
            | Expect::Rcpt(_)
            | Expect::Data
            | Expect::BodyEnd
            | Expect::EmptyBodyEnd => {
                self.transaction_reply(expect, reply);
            }
        }
    }

    fn after_ehlo(&mut self) {
        let wants_tls = self.config.starttls != StartTlsPolicy::Off;
        if !self.tls_active && wants_tls && self.caps.starttls {
            self.send(&Command::StartTls, Expect::StartTls);
        } else if !self.tls_active && self.config.starttls == StartTlsPolicy::Required {
            Command::Quit.encode(&mut self.out);
            self.fail(ClientFailure::StartTlsNotOffered);
        } else {
            self.after_tls_decision();
        }
    }

    fn after_tls_decision(&mut self) {
        let Some(credentials) = &self.config.auth else {
            return self.ready();
        };
        if !self.caps.auth_mechanisms.iter().any(|m| m == "PLAIN") {
            Command::Quit.encode(&mut self.out);
            return self.fail(ClientFailure::AuthNotOffered);
        }
        let token = format!("\0{}\0{}", credentials.username, credentials.password);
        let auth = Command::Auth {
            mechanism: super::command::AuthMechanism::Plain,
            initial_response: Some(BASE64.encode(token)),
        };
        self.send(&auth, Expect::Auth);
    }

    fn transaction_reply(&mut self, expect: Expect, reply: Reply) {
        let Some(mut t) = self.transactions.pop_front() else {
            return self.fail(ClientFailure::UnexpectedReply(reply));
        };
        let positive = reply.is_positive_completion();
        match expect {
            Expect::Mail => {
                t.result.mail = Some(reply);
                if !t.pipelined {
                    if !positive {
                        return self.finish_transaction(t);
                    }
                    if let Some(rcpt) = t.rcpt_commands.first() {
                        let rcpt = rcpt.clone();
                        self.send(&rcpt, Expect::Rcpt(0));
                    }
                }
            }
            Expect::Rcpt(index) => {
                if positive {
                    t.accepted += 1;
                }
                if let Some(slot) = t.result.recipients.get_mut(index) {
                    *slot = Some(reply);
                }
                if !t.pipelined {
                    if let Some(next) = t.rcpt_commands.get(index + 1) {
                        let next = next.clone();
                        self.send(&next, Expect::Rcpt(index + 1));
                    } else if t.accepted == 0 {
                        return self.finish_transaction(t);
                    } else if t.mode == BodyMode::Bdat {
                        let bdat = Command::Bdat {
                            size_bytes: t.message_bytes,
                            last: true,
                        };
                        self.send(&bdat, Expect::BodyEnd);
                        self.events
                            .push_back(ClientEvent::SendBody(BodyMode::Bdat, t.scan));
                    } else {
                        self.send(&Command::Data, Expect::Data);
                    }
                }
            }
            Expect::Data if reply.code == 354 => {
                let mail_ok = t
                    .result
                    .mail
                    .as_ref()
                    .is_some_and(Reply::is_positive_completion);
                if mail_ok && t.accepted > 0 {
                    self.expect.push_back(Expect::BodyEnd);
                    self.events
                        .push_back(ClientEvent::SendBody(BodyMode::Data, t.scan));
                } else {
                    // RFC 2920 §3.1: the server took DATA without recipients; end it empty.
                    self.out.extend_from_slice(b".\r\n");
                    self.expect.push_back(Expect::EmptyBodyEnd);
                }
            }
            Expect::Data if reply.is_positive() => {
                // Only 354 may answer DATA; a 2xx would claim a delivery
                // whose body was never sent.
                self.transactions.push_front(t);
                return self.fail(ClientFailure::UnexpectedReply(reply));
            }
            Expect::Data | Expect::BodyEnd => {
                t.result.data = Some(reply);
                return self.finish_transaction(t);
            }
            _ => return self.finish_transaction(t),
        }
        self.transactions.push_front(t);
    }

    fn finish_transaction(&mut self, t: Transaction) {
        let mail_ok = t
            .result
            .mail
            .as_ref()
            .is_some_and(Reply::is_positive_completion);
        let delivered = t
            .result
            .data
            .as_ref()
            .is_some_and(Reply::is_positive_completion);
        self.events
            .push_back(ClientEvent::TransactionDone(t.result));
        if !self.transactions.is_empty() {
            // The next transaction is already on its way behind its own
            // RSET; the session stays busy until the last one finishes.
        } else if mail_ok && !delivered {
            self.state = State::Busy;
            self.send(&Command::Rset, Expect::Rset);
        } else {
            self.ready();
        }
    }
}

#[cfg(test)]
mod tests;
