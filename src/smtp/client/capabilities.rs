//! What a server offers in its EHLO reply, and the delivery-side inputs of a
//! transaction ([`Envelope`]) with its per-recipient result
//! ([`TransactionResult`]).

use super::super::address::{Mailbox, ReversePath};
use super::super::command::{Notify, Orcpt, Ret};
use super::super::reply::Reply;

/// Extensions parsed from an EHLO reply (all false after a HELO fallback).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered EHLO (not only HELO).
    pub esmtp: bool,
    /// RFC 2920
    pub pipelining: bool,
    /// RFC 1870 SIZE was offered.
    pub size_offered: bool,
    /// The SIZE limit, when the server gave a non-zero one.
    pub size_max_bytes: Option<u64>,
    /// RFC 6152
    pub eight_bit_mime: bool,
    /// RFC 6531
    pub smtputf8: bool,
    /// RFC 3030 CHUNKING (BDAT)
    pub chunking: bool,
    /// RFC 3207
    pub starttls: bool,
    /// RFC 3461
    pub dsn: bool,
    /// RFC 2034
    pub enhanced_status_codes: bool,
    /// SASL mechanisms from `AUTH ...`, upper-cased.
    pub auth_mechanisms: Vec<String>,
}

impl Capabilities {
    /// Parses a positive EHLO reply (the first line is the server's name).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self {
            esmtp: true,
            ..Self::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    caps.size_offered = true;
                    caps.size_max_bytes =
                        words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "AUTH" => {
                    caps.auth_mechanisms
                        .extend(words.map(str::to_ascii_uppercase));
                }
                _ => {}
            }
        }
        caps
    }
}

/// One recipient of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    /// The recipient address.
    pub mailbox: Mailbox,
    /// DSN NOTIFY (sent only when the server offers DSN).
    pub notify: Option<Notify>,
    /// DSN ORCPT (sent only when the server offers DSN).
    pub orcpt: Option<Orcpt>,
}

impl EnvelopeRecipient {
    /// A recipient without DSN parameters.
    pub fn new(mailbox: Mailbox) -> Self {
        Self {
            mailbox,
            notify: None,
            orcpt: None,
        }
    }
}

/// What to send in one transaction (the body is passed separately).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM.
    pub reverse_path: ReversePath,
    /// RCPT TO, in order; results come back in the same order.
    pub recipients: Vec<EnvelopeRecipient>,
    /// DSN RET (sent only when the server offers DSN).
    pub ret: Option<Ret>,
    /// DSN ENVID (sent only when the server offers DSN).
    pub envid: Option<String>,
}

impl Envelope {
    /// True when an address needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        !self.reverse_path.is_ascii() || self.recipients.iter().any(|r| !r.mailbox.is_ascii())
    }
}

/// Replies for one transaction, in envelope order. `None` means the command
/// got no reply (not sent, or the connection failed first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionResult {
    /// Reply to MAIL FROM.
    pub mail: Option<Reply>,
    /// Reply to each RCPT TO.
    pub recipients: Vec<Option<Reply>>,
    /// Final reply after the body (DATA's end or BDAT LAST), or DATA's own
    /// refusal.
    pub data: Option<Reply>,
    /// Set when the connection failed during the transaction.
    pub connection_failed: bool,
}

/// What happened to one recipient, derived from a [`TransactionResult`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientOutcome<'a> {
    /// The message was accepted for this recipient (the final reply).
    Delivered(&'a Reply),
    /// Refused (MAIL, RCPT or data reply); look at `is_transient()`.
    Refused(&'a Reply),
    /// No verdict: the connection failed. Retry later.
    Unknown,
}

impl TransactionResult {
    /// The outcome for recipient `index` (envelope order).
    pub fn outcome(&self, index: usize) -> RecipientOutcome<'_> {
        let Some(mail) = &self.mail else {
            return RecipientOutcome::Unknown;
        };
        if !mail.is_positive_completion() {
            return RecipientOutcome::Refused(mail);
        }
        let Some(Some(rcpt)) = self.recipients.get(index) else {
            return RecipientOutcome::Unknown;
        };
        if !rcpt.is_positive_completion() {
            return RecipientOutcome::Refused(rcpt);
        }
        match &self.data {
            Some(data) if data.is_positive_completion() => RecipientOutcome::Delivered(data),
            Some(data) => RecipientOutcome::Refused(data),
            None => RecipientOutcome::Unknown,
        }
    }

    /// True when the message was accepted for at least one recipient.
    pub fn any_delivered(&self) -> bool {
        (0..self.recipients.len())
            .any(|i| matches!(self.outcome(i), RecipientOutcome::Delivered(_)))
    }
}
