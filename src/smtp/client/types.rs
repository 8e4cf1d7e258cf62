//! The public types of the client session: its configuration, the events
//! it reports and the ways a connection or a transaction request can fail.
//! The state machine itself is in `client.rs`.

use super::super::data::{BodyMode, BodyScan};
use super::super::reply::{Reply, ReplyError};
use super::TransactionResult;

/// Whether to upgrade with STARTTLS (the `starttls` domain setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTlsPolicy {
    /// Never.
    Off,
    /// When offered; go on in cleartext otherwise.
    Opportunistic,
    /// Fail the connection unless TLS is established.
    Required,
}

/// Username and password for AUTH PLAIN (smarthost delivery).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// Authentication identity.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How the client behaves on this connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Name announced in EHLO/HELO (the vMTA's `ehlo`).
    pub ehlo_name: String,
    /// STARTTLS policy.
    pub starttls: StartTlsPolicy,
    /// The connection is TLS from the start.
    pub tls_active: bool,
    /// Pipeline MAIL/RCPT/DATA when offered.
    pub use_pipelining: bool,
    /// Use BDAT instead of DATA when CHUNKING is offered.
    pub use_chunking: bool,
    /// How many transactions may be in flight at once when the server
    /// offers PIPELINING and CHUNKING (RFC 2920 and 3030): a transaction
    /// may start before the previous one's replies are in. 1 = one
    /// transaction per round trip.
    pub max_transactions_in_flight: usize,
    /// Authenticate with AUTH PLAIN after EHLO (and after TLS if any).
    pub auth: Option<ClientCredentials>,
}

impl ClientConfig {
    /// Opportunistic TLS, pipelining on, chunking off, one transaction in
    /// flight, no AUTH.
    pub fn new(ehlo_name: impl Into<String>) -> Self {
        Self {
            ehlo_name: ehlo_name.into(),
            starttls: StartTlsPolicy::Opportunistic,
            tls_active: false,
            use_pipelining: true,
            use_chunking: false,
            max_transactions_in_flight: 1,
            auth: None,
        }
    }
}

/// Why the connection is unusable. After [`ClientEvent::Failed`] write any
/// output (a polite QUIT) and close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// The greeting was not 220.
    Greeting(Reply),
    /// EHLO and HELO were refused.
    Helo(Reply),
    /// TLS is required but the server does not offer STARTTLS.
    StartTlsNotOffered,
    /// TLS is required but STARTTLS was refused.
    StartTls(Reply),
    /// AUTH was refused.
    Auth(Reply),
    /// Credentials are configured but the server offers no AUTH PLAIN.
    AuthNotOffered,
    /// The server said 421 (closing).
    ServiceClosing(Reply),
    /// RSET was refused; the connection state is unknown.
    Rset(Reply),
    /// A reply arrived when none was expected.
    UnexpectedReply(Reply),
    /// The server's bytes are not a valid reply.
    MalformedReply(ReplyError),
    /// The peer closed the connection before QUIT was answered.
    ConnectionClosed,
}

impl ClientFailure {
    /// The server reply behind the failure, if there is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Self::Greeting(r)
            | Self::Helo(r)
            | Self::StartTls(r)
            | Self::Auth(r)
            | Self::ServiceClosing(r)
            | Self::Rset(r)
            | Self::UnexpectedReply(r) => Some(r),
            _ => None,
        }
    }
}

/// What the caller must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Idle: call `send_transaction` or `quit`.
    Ready,
    /// STARTTLS was accepted. Discard input beyond what `receive` consumed,
    /// run the TLS handshake, then call `tls_established`.
    StartTls,
    /// Write `take_output()` and then the body encoded in this mode, with
    /// [`BodyEncoder::scanned`](crate::smtp::BodyEncoder::scanned) and this
    /// scan of it (the one `send_transaction` made).
    SendBody(BodyMode, BodyScan),
    /// A transaction finished (a `Ready` follows unless the connection failed).
    TransactionDone(TransactionResult),
    /// The connection is unusable: write output, close.
    Failed(ClientFailure),
    /// QUIT was answered (or the peer closed after it): close.
    Closed,
}

/// Why `send_transaction` refused to start (nothing was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// The session is not Ready.
    #[error("session not ready for a transaction")]
    NotReady,
    /// The envelope has no recipients.
    #[error("no recipients")]
    NoRecipients,
    /// Non-ASCII addresses but the server lacks SMTPUTF8 (bounce or retry elsewhere).
    #[error("server does not offer SMTPUTF8")]
    SmtpUtf8NotOffered,
    /// The message exceeds the server's declared SIZE.
    #[error("message of {size_bytes} bytes exceeds server limit {max_bytes}")]
    TooBig {
        /// Our size.
        size_bytes: u64,
        /// The server's SIZE.
        max_bytes: u64,
    },
}
