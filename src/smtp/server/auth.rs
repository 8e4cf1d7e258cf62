//! AUTH PLAIN (RFC 4616) and LOGIN for the server session: the 334
//! challenge steps and decoding of the client's base64 responses. Checking
//! the credentials is the caller's job (the `Auth` event).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::super::command::AuthMechanism;
use super::super::reply::Reply;
use super::{AuthRequest, Pending, Phase, ServerEvent, ServerSession};

/// Which client response the session is waiting for.
#[derive(Debug)]
pub(super) enum AuthStep {
    Plain,
    LoginUsername,
    LoginPassword { username: String },
}

fn malformed() -> Reply {
    Reply::with_status(501, (5, 5, 2), "Invalid authentication response")
}

fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if text == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(text).ok()
}

/// Splits PLAIN's `authzid NUL authcid NUL passwd`.
fn split_plain(decoded: &[u8]) -> Option<(Option<String>, String, String)> {
    let mut parts = decoded.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let username = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || username.is_empty() {
        return None;
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    Some((authzid, username.to_owned(), password.to_owned()))
}

impl ServerSession {
    /// AUTH command: checks state, then challenges or asks the caller.
    pub(super) fn auth(
        &mut self,
        mechanism: AuthMechanism,
        initial: Option<String>,
    ) -> Option<ServerEvent<'static>> {
        if !self.config.auth_available {
            return self.error(&Reply::with_status(
                502,
                (5, 5, 1),
                "Command not implemented",
            ));
        }
        if !self.tls_active && !self.config.auth_without_tls {
            return self.error(&Reply::with_status(
                538,
                (5, 7, 11),
                "Encryption required for authentication",
            ));
        }
        if self.authenticated.is_some() {
            return self.error(&Reply::with_status(503, (5, 5, 1), "Already authenticated"));
        }
        if !matches!(self.helo, Some((_, true))) {
            return self.error(&Reply::with_status(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.transaction.is_some() {
            return self.error(&Reply::with_status(
                503,
                (5, 5, 1),
                "AUTH inside a transaction",
            ));
        }
        match (mechanism, initial) {
            (AuthMechanism::Plain, Some(initial)) => {
                self.auth_response(AuthStep::Plain, initial.as_bytes())
            }
            (AuthMechanism::Plain, None) => {
                self.reply(&Reply::new(334, None, ""));
                self.phase = Phase::AuthResponse(AuthStep::Plain);
                None
            }
            (AuthMechanism::Login, Some(initial)) => {
                self.auth_response(AuthStep::LoginUsername, initial.as_bytes())
            }
            (AuthMechanism::Login, None) => {
                self.reply(&Reply::new(334, None, "VXNlcm5hbWU6"));
                self.phase = Phase::AuthResponse(AuthStep::LoginUsername);
                None
            }
            (AuthMechanism::Other(_), _) => self.error(&Reply::with_status(
                504,
                (5, 5, 4),
                "Unrecognized authentication type",
            )),
        }
    }

    /// One client response line (CRLF removed) for `step`.
    pub(super) fn auth_response(
        &mut self,
        step: AuthStep,
        line: &[u8],
    ) -> Option<ServerEvent<'static>> {
        self.phase = Phase::Command;
        if line == b"*" {
            return self.error(&Reply::with_status(
                501,
                (5, 7, 0),
                "Authentication cancelled",
            ));
        }
        let Some(decoded) = decode(line) else {
            return self.error(&malformed());
        };
        match step {
            AuthStep::Plain => {
                let Some((authzid, username, password)) = split_plain(&decoded) else {
                    return self.error(&malformed());
                };
                self.pending = Some(Pending::Auth(username.clone()));
                Some(ServerEvent::Auth(AuthRequest {
                    mechanism: AuthMechanism::Plain,
                    authzid,
                    username,
                    password,
                }))
            }
            AuthStep::LoginUsername => {
                let Some(username) = String::from_utf8(decoded).ok().filter(|u| !u.is_empty())
                else {
                    return self.error(&malformed());
                };
                self.reply(&Reply::new(334, None, "UGFzc3dvcmQ6"));
                self.phase = Phase::AuthResponse(AuthStep::LoginPassword { username });
                None
            }
            AuthStep::LoginPassword { username } => {
                let Ok(password) = String::from_utf8(decoded) else {
                    return self.error(&malformed());
                };
                self.pending = Some(Pending::Auth(username.clone()));
                Some(ServerEvent::Auth(AuthRequest {
                    mechanism: AuthMechanism::Login,
                    authzid: None,
                    username,
                    password,
                }))
            }
        }
    }
}
