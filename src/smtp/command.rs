//! SMTP commands: the [`Command`] value with its ESMTP parameters, a parser
//! for one command line ([`Command::parse`]) and the encoder the client uses
//! ([`Command::encode`]).
//!
//! Every way a line can be wrong is a [`CommandError`], and each maps to
//! exactly one reply in [`CommandError::reply`]. Whether a command is allowed
//! *now* (ordering, TLS, limits) is the server session's business.

use std::fmt;

use super::address::{
    AddressError, ForwardPath, ReversePath, parse_forward_path, parse_reverse_path, xtext_decode,
    xtext_encode,
};
use super::limits::{SMTP_ENVID_BYTES_MAX, SMTP_ORCPT_BYTES_MAX, SMTP_PARAMS_MAX};
use super::reply::Reply;

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> params`
    Mail(MailFrom),
    /// `RCPT TO:<path> params`
    Rcpt(RcptTo),
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (RFC 3030)
    Bdat {
        /// Octets in the chunk that follows the command line.
        size_bytes: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY string`
    Vrfy(String),
    /// `HELP [string]`
    Help(String),
    /// `STARTTLS` (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954)
    Auth {
        /// The SASL mechanism.
        mechanism: AuthMechanism,
        /// Base64 initial response; `=` means an empty one.
        initial_response: Option<String>,
    },
}

/// SASL mechanisms we know by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMechanism {
    /// RFC 4616
    Plain,
    /// The de-facto LOGIN mechanism
    Login,
    /// Anything else, upper-cased (the server answers 504).
    Other(String),
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain => f.write_str("PLAIN"),
            Self::Login => f.write_str("LOGIN"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// MAIL FROM and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailFrom {
    /// The sender, or null for bounces.
    pub reverse_path: ReversePath,
    /// ESMTP parameters.
    pub params: MailParams,
}

/// `BODY=` values (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
}

/// `RET=` values (RFC 3461).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    /// Return the full message in a DSN.
    Full,
    /// Return headers only.
    Headers,
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870): the client's estimate of the message size.
    pub size_bytes: Option<u64>,
    /// `BODY=`
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531)
    pub smtputf8: bool,
    /// `RET=`
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 §5), xtext-decoded; `<>` when the client does not vouch.
    pub auth: Option<String>,
}

/// `NOTIFY=` (RFC 3461).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// `NOTIFY=NEVER`
    Never,
    /// Any non-empty combination of SUCCESS, FAILURE, DELAY.
    On {
        /// SUCCESS
        success: bool,
        /// FAILURE
        failure: bool,
        /// DELAY
        delay: bool,
    },
}

/// `ORCPT=addr-type;xtext` (RFC 3461), decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orcpt {
    /// Address type, usually `rfc822` (as given; compare case-insensitively).
    pub addr_type: String,
    /// The decoded original address.
    pub address: String,
}

/// Parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NOTIFY=`
    pub notify: Option<Notify>,
    /// `ORCPT=`
    pub orcpt: Option<Orcpt>,
}

/// RCPT TO and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptTo {
    /// The recipient.
    pub forward_path: ForwardPath,
    /// ESMTP parameters.
    pub params: RcptParams,
}

/// Why a command line was refused. Each maps to one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a command we know.
    #[error("unrecognized command")]
    Unrecognized,
    /// Not UTF-8, or control characters in the line.
    #[error("invalid characters in command line")]
    BadCharacters,
    /// The arguments do not fit the command's grammar.
    #[error("syntax error in arguments")]
    Syntax,
    /// A MAIL FROM path did not parse.
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// A RCPT TO path did not parse.
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// An ESMTP parameter we do not know or do not offer.
    #[error("unsupported parameter")]
    UnknownParameter,
    /// A known ESMTP parameter with a bad or repeated value.
    #[error("invalid parameter value")]
    BadParameter,
}

impl CommandError {
    /// The one reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Unrecognized => Reply::with_status(500, (5, 5, 1), "Command unrecognized"),
            Self::BadCharacters => Reply::with_status(500, (5, 5, 2), "Syntax error"),
            Self::Syntax => Reply::with_status(501, (5, 5, 4), "Syntax error in arguments"),
            Self::BadSender(AddressError::NeedsSmtpUtf8)
            | Self::BadRecipient(AddressError::NeedsSmtpUtf8) => {
                Reply::with_status(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
            }
            Self::BadSender(_) => Reply::with_status(501, (5, 1, 7), "Bad sender address syntax"),
            Self::BadRecipient(_) => {
                Reply::with_status(501, (5, 1, 3), "Bad recipient address syntax")
            }
            Self::UnknownParameter => Reply::with_status(555, (5, 5, 4), "Unsupported parameter"),
            Self::BadParameter => Reply::with_status(501, (5, 5, 4), "Invalid parameter value"),
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..).unwrap_or(""))
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::BadParameter);
    }
    *slot = Some(value);
    Ok(())
}

/// Splits ` K=V K2` into (keyword, value) pairs; bounded by SMTP_PARAMS_MAX.
fn params(text: &str) -> Result<Vec<(&str, Option<&str>)>, CommandError> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(CommandError::Syntax);
    }
    let mut out = Vec::new();
    for item in text.split(' ').filter(|s| !s.is_empty()) {
        if out.len() >= SMTP_PARAMS_MAX {
            return Err(CommandError::BadParameter);
        }
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(CommandError::Syntax);
        }
        out.push((key, value));
    }
    Ok(out)
}

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ignore_case(arg, "FROM:").ok_or(CommandError::Syntax)?;
    let rest = rest.trim_start_matches(' ');
    // SMTPUTF8 decides whether the path may be non-ASCII, so look for it first.
    let smtputf8 = rest
        .split(' ')
        .skip(1)
        .any(|word| word.eq_ignore_ascii_case("SMTPUTF8"));
    let (reverse_path, tail) =
        parse_reverse_path(rest, smtputf8).map_err(CommandError::BadSender)?;
    let mut p = MailParams::default();
    for (key, value) in params(tail)? {
        let upper = key.to_ascii_uppercase();
        match (upper.as_str(), value) {
            ("SIZE", Some(v)) => {
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::BadParameter);
                }
                let n = v.parse().map_err(|_| CommandError::BadParameter)?;
                set_once(&mut p.size_bytes, n)?;
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                set_once(&mut p.body, BodyType::SevenBit)?;
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                set_once(&mut p.body, BodyType::EightBitMime)?;
            }
            ("BODY", Some(_)) => return Err(CommandError::UnknownParameter),
            ("SMTPUTF8", None) => {
                if p.smtputf8 {
                    return Err(CommandError::BadParameter);
                }
                p.smtputf8 = true;
            }
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => set_once(&mut p.ret, Ret::Full)?,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => {
                set_once(&mut p.ret, Ret::Headers)?;
            }
            ("ENVID", Some(v)) => {
                let id = xtext_decode(v).ok_or(CommandError::BadParameter)?;
                if id.is_empty() || id.len() > SMTP_ENVID_BYTES_MAX {
                    return Err(CommandError::BadParameter);
                }
                set_once(&mut p.envid, id)?;
            }
            ("AUTH", Some(v)) => {
                let who = xtext_decode(v).ok_or(CommandError::BadParameter)?;
                set_once(&mut p.auth, who)?;
            }
            ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH", None) | ("SMTPUTF8", Some(_)) => {
                return Err(CommandError::BadParameter);
            }
            _ => return Err(CommandError::UnknownParameter),
        }
    }
    if !p.smtputf8 && !reverse_path.is_ascii() {
        return Err(CommandError::BadSender(AddressError::NeedsSmtpUtf8));
    }
    Ok(Command::Mail(MailFrom {
        reverse_path,
        params: p,
    }))
}

fn parse_notify(value: &str) -> Result<Notify, CommandError> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for word in value.split(',') {
        let flag = if word.eq_ignore_ascii_case("SUCCESS") {
            &mut success
        } else if word.eq_ignore_ascii_case("FAILURE") {
            &mut failure
        } else if word.eq_ignore_ascii_case("DELAY") {
            &mut delay
        } else {
            return Err(CommandError::BadParameter);
        };
        if *flag {
            return Err(CommandError::BadParameter);
        }
        *flag = true;
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    let rest = strip_prefix_ignore_case(arg, "TO:").ok_or(CommandError::Syntax)?;
    let rest = rest.trim_start_matches(' ');
    // Non-ASCII is allowed here syntactically; the session checks it against
    // the transaction's SMTPUTF8 flag.
    let (forward_path, tail) =
        parse_forward_path(rest, true).map_err(CommandError::BadRecipient)?;
    let mut p = RcptParams::default();
    for (key, value) in params(tail)? {
        let upper = key.to_ascii_uppercase();
        match (upper.as_str(), value) {
            ("NOTIFY", Some(v)) => set_once(&mut p.notify, parse_notify(v)?)?,
            ("ORCPT", Some(v)) => {
                let (addr_type, xtext) = v.split_once(';').ok_or(CommandError::BadParameter)?;
                let address = xtext_decode(xtext).ok_or(CommandError::BadParameter)?;
                let type_ok = !addr_type.is_empty()
                    && addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !type_ok || address.is_empty() || v.len() > SMTP_ORCPT_BYTES_MAX {
                    return Err(CommandError::BadParameter);
                }
                let orcpt = Orcpt {
                    addr_type: addr_type.to_owned(),
                    address,
                };
                set_once(&mut p.orcpt, orcpt)?;
            }
            ("NOTIFY" | "ORCPT", None) => return Err(CommandError::BadParameter),
            _ => return Err(CommandError::UnknownParameter),
        }
    }
    Ok(Command::Rcpt(RcptTo {
        forward_path,
        params: p,
    }))
}

fn no_args(arg: &str, command: Command) -> Result<Command, CommandError> {
    if arg.trim_matches(' ').is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax)
    }
}

fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(CommandError::Syntax)?;
    if size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax);
    }
    let size_bytes = size.parse().map_err(|_| CommandError::Syntax)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax);
    }
    Ok(Command::Bdat { size_bytes, last })
}

fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let name = words.next().ok_or(CommandError::Syntax)?;
    let valid_name = name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(CommandError::Syntax);
    }
    let mechanism = if name.eq_ignore_ascii_case("PLAIN") {
        AuthMechanism::Plain
    } else if name.eq_ignore_ascii_case("LOGIN") {
        AuthMechanism::Login
    } else {
        AuthMechanism::Other(name.to_ascii_uppercase())
    };
    let initial_response = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(CommandError::Syntax);
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

fn domain_arg(arg: &str) -> Result<String, CommandError> {
    let name = arg.trim_matches(' ');
    if name.is_empty() || name.contains(' ') {
        return Err(CommandError::Syntax);
    }
    Ok(name.to_owned())
}

impl Command {
    /// Parses one command line. `line` excludes the CRLF (a trailing CR is
    /// tolerated and removed).
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(CommandError::BadCharacters);
        }
        let (verb, arg) = match text.split_once(' ') {
            Some((verb, arg)) => (verb, arg),
            None => (text, ""),
        };
        if verb.len() > 8 {
            return Err(CommandError::Unrecognized);
        }
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => Ok(Self::Ehlo(domain_arg(arg)?)),
            "HELO" => Ok(Self::Helo(domain_arg(arg)?)),
            "MAIL" => parse_mail(arg),
            "RCPT" => parse_rcpt(arg),
            "DATA" => no_args(arg, Self::Data),
            "BDAT" => parse_bdat(arg),
            "RSET" => no_args(arg, Self::Rset),
            "NOOP" => Ok(Self::Noop),
            "QUIT" => no_args(arg, Self::Quit),
            "VRFY" => {
                let what = arg.trim_matches(' ');
                if what.is_empty() {
                    return Err(CommandError::Syntax);
                }
                Ok(Self::Vrfy(what.to_owned()))
            }
            "HELP" => Ok(Self::Help(arg.trim_matches(' ').to_owned())),
            "STARTTLS" => no_args(arg, Self::StartTls),
            "AUTH" => parse_auth(arg),
            _ => Err(CommandError::Unrecognized),
        }
    }

    /// Appends the wire form, CRLF included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for MailParams {
    /// The parameters with a leading space each, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(size) = self.size_bytes {
            write!(f, " SIZE={size}")?;
        }
        match self.body {
            Some(BodyType::SevenBit) => f.write_str(" BODY=7BIT")?,
            Some(BodyType::EightBitMime) => f.write_str(" BODY=8BITMIME")?,
            None => {}
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        match self.ret {
            Some(Ret::Full) => f.write_str(" RET=FULL")?,
            Some(Ret::Headers) => f.write_str(" RET=HDRS")?,
            None => {}
        }
        if let Some(envid) = &self.envid {
            write!(f, " ENVID={}", xtext_encode(envid))?;
        }
        if let Some(auth) = &self.auth {
            write!(f, " AUTH={}", xtext_encode(auth))?;
        }
        Ok(())
    }
}

impl fmt::Display for RcptParams {
    /// The parameters with a leading space each, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.notify {
            Some(Notify::Never) => f.write_str(" NOTIFY=NEVER")?,
            Some(Notify::On {
                success,
                failure,
                delay,
            }) => {
                let words: Vec<&str> =
                    [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                        .into_iter()
                        .filter_map(|(on, w)| on.then_some(w))
                        .collect();
                write!(f, " NOTIFY={}", words.join(","))?;
            }
            None => {}
        }
        if let Some(orcpt) = &self.orcpt {
            write!(
                f,
                " ORCPT={};{}",
                orcpt.addr_type,
                xtext_encode(&orcpt.address)
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Command {
    /// The command line without CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ehlo(d) => write!(f, "EHLO {d}"),
            Self::Helo(d) => write!(f, "HELO {d}"),
            Self::Mail(m) => write!(f, "MAIL FROM:{}{}", m.reverse_path, m.params),
            Self::Rcpt(r) => write!(f, "RCPT TO:{}{}", r.forward_path, r.params),
            Self::Data => f.write_str("DATA"),
            Self::Bdat { size_bytes, last } => {
                write!(f, "BDAT {size_bytes}{}", if *last { " LAST" } else { "" })
            }
            Self::Rset => f.write_str("RSET"),
            Self::Noop => f.write_str("NOOP"),
            Self::Quit => f.write_str("QUIT"),
            Self::Vrfy(s) => write!(f, "VRFY {s}"),
            Self::Help(s) if s.is_empty() => f.write_str("HELP"),
            Self::Help(s) => write!(f, "HELP {s}"),
            Self::StartTls => f.write_str("STARTTLS"),
            Self::Auth {
                mechanism,
                initial_response: None,
            } => write!(f, "AUTH {mechanism}"),
            Self::Auth {
                mechanism,
                initial_response: Some(r),
            } => write!(f, "AUTH {mechanism} {r}"),
        }
    }
}

#[cfg(test)]
mod tests;
