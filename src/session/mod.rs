//! One inbound SMTP connection, from greeting to QUIT.
//!
//! The session drives the sans-IO `smtp::server` state machine over a
//! compio socket, and adds the policy around it: TLS, AUTH, who may relay,
//! which vMTA a message goes to, the headers spate adds or removes, and
//! handing the finished message to the spool (whose commit decides the
//! reply).

pub mod auth;
pub mod headers;
pub mod inbound;
pub mod signing;
pub mod tls;
pub mod vmta;
