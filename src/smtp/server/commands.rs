//! Command dispatch for the server session: what each command means in the
//! current state, and which reply or event it produces. Replies the session
//! gives itself are chosen here; decisions go to the caller as events.

use super::super::command::{Command, MailFrom, RcptTo};
use super::super::data::{DataDecoder, DataFault};
use super::super::reply::Reply;
use super::{Pending, Phase, ServerEvent, ServerSession, ShutdownReason};

fn bad_sequence(text: &str) -> Reply {
    Reply::with_status(503, (5, 5, 1), text)
}

impl ServerSession {
    /// Handles one command line (CRLF removed).
    pub(super) fn command(&mut self, line: &[u8]) -> Option<ServerEvent<'static>> {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(error) => return self.error(&error.reply()),
        };
        match command {
            Command::Ehlo(name) => self.decide(
                Pending::Helo {
                    name: name.clone(),
                    extended: true,
                },
                ServerEvent::Helo {
                    name,
                    extended: true,
                },
            ),
            Command::Helo(name) => self.decide(
                Pending::Helo {
                    name: name.clone(),
                    extended: false,
                },
                ServerEvent::Helo {
                    name,
                    extended: false,
                },
            ),
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt),
            Command::Data => self.data(),
            Command::Bdat { size_bytes, last } => self.bdat(size_bytes, last),
            Command::Rset => {
                self.transaction = None;
                self.reply(&Reply::with_status(250, (2, 0, 0), "OK"));
                None
            }
            Command::Noop => {
                self.reply(&Reply::with_status(250, (2, 0, 0), "OK"));
                None
            }
            Command::Quit => {
                self.reply(&Reply::with_status(221, (2, 0, 0), "Bye"));
                self.phase = Phase::Closed;
                Some(ServerEvent::Quit)
            }
            Command::Vrfy(_) => {
                self.reply(&Reply::with_status(
                    252,
                    (2, 5, 0),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
                None
            }
            Command::Help(_) => {
                self.reply(&Reply::with_status(214, (2, 0, 0), "See RFC 5321"));
                None
            }
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
        }
    }

    fn decide(
        &mut self,
        pending: Pending,
        event: ServerEvent<'static>,
    ) -> Option<ServerEvent<'static>> {
        self.pending = Some(pending);
        Some(event)
    }

    fn mail(&mut self, mail: MailFrom) -> Option<ServerEvent<'static>> {
        if self.helo.is_none() {
            return self.error(&bad_sequence("Send EHLO/HELO first"));
        }
        if self.transaction.is_some() {
            return self.error(&bad_sequence("Nested MAIL command"));
        }
        if self.config.require_auth && self.authenticated.is_none() {
            return self.error(&Reply::with_status(
                530,
                (5, 7, 0),
                "Authentication required",
            ));
        }
        if mail
            .params
            .size_bytes
            .is_some_and(|size| size > self.config.max_message_bytes)
        {
            return self.error(&Reply::with_status(
                552,
                (5, 3, 4),
                "Message size exceeds limit",
            ));
        }
        self.decide(Pending::Mail(mail.clone()), ServerEvent::MailFrom(mail))
    }

    fn rcpt(&mut self, rcpt: RcptTo) -> Option<ServerEvent<'static>> {
        let Some(transaction) = &self.transaction else {
            return self.error(&bad_sequence("Need MAIL before RCPT"));
        };
        if transaction.bdat_started {
            return self.error(&bad_sequence("RCPT after BDAT"));
        }
        if transaction.recipients.len() >= self.config.max_recipients {
            // Not counted as an error: RFC 5321 §4.5.3.1.10 clients send the
            // rest in another transaction.
            self.reply(&Reply::with_status(452, (4, 5, 3), "Too many recipients"));
            return None;
        }
        if !transaction.mail.params.smtputf8 && !rcpt.forward_path.is_ascii() {
            return self.error(&Reply::with_status(
                553,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        self.decide(Pending::Rcpt(rcpt.clone()), ServerEvent::RcptTo(rcpt))
    }

    fn data(&mut self) -> Option<ServerEvent<'static>> {
        let Some(transaction) = &self.transaction else {
            return self.error(&bad_sequence("Need MAIL and RCPT before DATA"));
        };
        if transaction.bdat_started {
            return self.error(&bad_sequence("DATA after BDAT"));
        }
        if transaction.recipients.is_empty() {
            return self.error(&Reply::with_status(554, (5, 5, 1), "No valid recipients"));
        }
        self.reply(&Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        self.phase = Phase::Data(DataDecoder::new(self.config.max_message_bytes));
        Some(ServerEvent::DataStart)
    }

    fn bdat(&mut self, size_bytes: u64, last: bool) -> Option<ServerEvent<'static>> {
        let max = self.config.max_message_bytes;
        if size_bytes > max {
            // We will not sink an arbitrarily large chunk to stay in sync.
            self.reply(&Reply::with_status(
                552,
                (5, 3, 4),
                "Chunk size exceeds limit",
            ));
            self.transaction = None;
            self.phase = Phase::Closing(ShutdownReason::ChunkTooBig);
            return self.take_closing();
        }
        let discard = |reply: Reply| Phase::Bdat {
            remaining_bytes: size_bytes,
            last,
            discard: Some(reply),
        };
        let Some(transaction) = &mut self.transaction else {
            self.phase = discard(bad_sequence("Need MAIL and RCPT before BDAT"));
            return None;
        };
        if transaction.recipients.is_empty() {
            self.phase = discard(Reply::with_status(554, (5, 5, 1), "No valid recipients"));
            return None;
        }
        if let Some(failure) = &transaction.bdat_failure {
            self.phase = discard(failure.clone());
            return None;
        }
        let first = !transaction.bdat_started;
        transaction.bdat_started = true;
        let total = transaction.bdat_bytes.saturating_add(size_bytes);
        if total > max {
            let reply = Reply::with_status(552, (5, 3, 4), "Message size exceeds limit");
            transaction.bdat_failure = Some(reply.clone());
            self.phase = discard(reply);
            return (!first).then_some(ServerEvent::MessageAborted(DataFault::TooBig));
        }
        transaction.bdat_bytes = total;
        self.phase = Phase::Bdat {
            remaining_bytes: size_bytes,
            last,
            discard: None,
        };
        first.then_some(ServerEvent::DataStart)
    }

    fn starttls(&mut self) -> Option<ServerEvent<'static>> {
        if !self.config.starttls_available {
            return self.error(&Reply::with_status(
                502,
                (5, 5, 1),
                "Command not implemented",
            ));
        }
        if self.tls_active {
            return self.error(&bad_sequence("TLS already active"));
        }
        if !matches!(self.helo, Some((_, true))) {
            return self.error(&bad_sequence("Send EHLO first"));
        }
        if self.transaction.is_some() {
            return self.error(&bad_sequence("STARTTLS inside a transaction"));
        }
        self.reply(&Reply::with_status(220, (2, 0, 0), "Ready to start TLS"));
        self.phase = Phase::AwaitingTls;
        Some(ServerEvent::StartTls)
    }
}
