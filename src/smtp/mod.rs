//! The SMTP protocol without I/O: command and reply codecs, DATA/BDAT
//! framing, and the server and client session state machines.
//!
//! Nothing here opens a socket, reads a clock or draws a random number. The
//! sessions take bytes in and hand back bytes to write plus events that need
//! a decision; the listener/session layer and the delivery engine own the
//! sockets, TLS, timeouts and policy.
//!
//! | file | owns |
//! | --- | --- |
//! | [`reply`] | `Reply`, `EnhancedStatus`, reply encoder and incremental parser |
//! | [`command`] | `Command` with ESMTP parameters, line parser and encoder |
//! | [`address`] | mailboxes, reverse/forward paths, xtext |
//! | [`data`] | DATA decoder (unstuffing, smuggling defence), zero-copy body encoder |
//! | [`server`] | the inbound session state machine |
//! | [`client`] | the outbound session state machine |
//! | [`limits`] | protocol bounds |
//! | `fuzzing` | entry points for the fuzz targets and the corpus replay test |

pub mod address;
pub mod client;
pub mod command;
pub mod data;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod reply;
pub mod server;

pub use address::{AddressError, ForwardPath, Mailbox, ReversePath};
pub use client::{
    Capabilities, ClientConfig, ClientCredentials, ClientEvent, ClientFailure, ClientSession,
    Envelope, EnvelopeRecipient, RecipientOutcome, StartTlsPolicy, TransactionError,
    TransactionResult,
};
pub use command::{
    AuthMechanism, BodyType, Command, CommandError, MailFrom, MailParams, Notify, Orcpt,
    RcptParams, RcptTo, Ret,
};
pub use data::{BodyEncoder, BodyMode, BodyScan, DataDecoder, DataFault, Piece};
pub use reply::{EnhancedStatus, Reply, ReplyError, ReplyParser};
pub use server::{
    AuthRequest, Received, ServerConfig, ServerEvent, ServerSession, ShutdownReason, UsageError,
};
