//! The public types of the server session: its configuration, the events
//! it reports, the credentials AUTH collects and the caller-misuse errors.
//! The state machine itself is in `server.rs`.

use std::fmt;

use super::super::command::{AuthMechanism, MailFrom, RcptTo};
use super::super::data::DataFault;
use super::super::limits::{SMTP_MESSAGE_BYTES_MAX, SMTP_RECIPIENTS_MAX, SMTP_SESSION_ERRORS_MAX};

/// What a listener tells the session about itself.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    /// Largest message accepted (advertised as SIZE, enforced while streaming).
    pub max_message_bytes: u64,
    /// Recipients per transaction before 452 4.5.3.
    pub max_recipients: usize,
    /// Protocol errors before 421 and close.
    pub max_errors: u32,
    /// A TLS certificate is loaded, so STARTTLS can be offered.
    pub starttls_available: bool,
    /// The connection is already TLS (implicit TLS port).
    pub tls_active: bool,
    /// AUTH PLAIN/LOGIN can be offered.
    pub auth_available: bool,
    /// Offer AUTH on a cleartext connection too (off by default).
    pub auth_without_tls: bool,
    /// MAIL is refused (530 5.7.0) until AUTH succeeded.
    pub require_auth: bool,
}

impl ServerConfig {
    /// Defaults from `smtp::limits`; no TLS, no AUTH.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            max_message_bytes: SMTP_MESSAGE_BYTES_MAX,
            max_recipients: SMTP_RECIPIENTS_MAX,
            max_errors: SMTP_SESSION_ERRORS_MAX,
            starttls_available: false,
            tls_active: false,
            auth_available: false,
            auth_without_tls: false,
            require_auth: false,
        }
    }
}

/// Credentials from AUTH PLAIN or LOGIN, for the caller to verify.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// PLAIN or LOGIN.
    pub mechanism: AuthMechanism,
    /// PLAIN's authorization identity, when given and non-empty.
    pub authzid: Option<String>,
    /// The authentication identity.
    pub username: String,
    /// The password (never printed by `Debug`).
    pub password: String,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("mechanism", &self.mechanism)
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why the session is closing without QUIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `max_errors` reached; 421 4.7.0 was queued.
    TooManyErrors,
    /// A BDAT chunk larger than the maximum message size; 552 was queued.
    ChunkTooBig,
    /// A 421 reply was given (by the caller's `reject` or `shutdown`).
    ServiceClosing,
}

/// What `receive` found. Events marked *decision* must be answered with
/// `accept`, `accept_with` or `reject` before `receive` goes on.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerEvent<'a> {
    /// *Decision.* EHLO (`extended`) or HELO. Accepting resets the
    /// transaction and sends the capability list (EHLO) or a greeting (HELO).
    Helo {
        /// The name the client gave.
        name: String,
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// *Decision.* MAIL FROM; syntax, ordering and SIZE are already checked.
    /// Reject with e.g. `452 4.3.1` when the spool is full.
    MailFrom(MailFrom),
    /// *Decision.* RCPT TO; ordering, the recipient cap and SMTPUTF8 are
    /// already checked. Reject with e.g. `550 5.7.1` for relaying denied.
    RcptTo(RcptTo),
    /// DATA was answered 354 (or the first BDAT chunk begins): start a new
    /// message.
    DataStart,
    /// Message bytes (dot-unstuffed for DATA), borrowed from the input.
    Data(&'a [u8]),
    /// *Decision.* The message ended cleanly; answer after the spool commit.
    MessageComplete,
    /// The message is refused; drop what was accumulated. The session still
    /// consumes the rest of it and sends the reply itself at its end.
    MessageAborted(DataFault),
    /// STARTTLS was answered 220. Drop every input byte beyond `consumed`,
    /// write the output, run the handshake, then call `tls_established`.
    StartTls,
    /// *Decision.* AUTH credentials: accept (235) or reject (e.g. 535 5.7.8).
    Auth(AuthRequest),
    /// QUIT was answered 221: write the output and close.
    Quit,
    /// The session closes (reply already queued): write output and close.
    Shutdown(ShutdownReason),
}

/// The result of one `receive` call.
#[must_use = "an event may need a decision and `consumed` says what to keep"]
#[derive(Debug, PartialEq, Eq)]
pub struct Received<'a> {
    /// Input bytes used. Call `receive` again with the rest (even when
    /// empty) while `event` is `Some`.
    pub consumed: usize,
    /// `None`: all input was used and the session needs more.
    pub event: Option<ServerEvent<'a>>,
}

/// Misuse of the session by its caller (our bug, not the peer's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `receive` was called while a decision is pending.
    #[error("a decision is pending: answer it before feeding more input")]
    DecisionPending,
    /// `receive` was called between StartTls and `tls_established`.
    #[error("STARTTLS in progress: call tls_established first")]
    TlsPending,
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
    /// `accept`/`reject` was called with nothing pending.
    #[error("no decision is pending")]
    NothingPending,
    /// `accept_with` needs a 2xx reply, `reject` a 4xx/5xx one.
    #[error("reply class does not fit the answer")]
    WrongReplyClass,
}
