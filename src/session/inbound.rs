//! Driving one inbound SMTP connection.
//!
//! Reads from the socket into a bounded buffer, feeds the sans-IO
//! [`ServerSession`], answers its decisions with spate's policy (relay
//! control, TLS and AUTH rules, vMTA choice), and spools the finished
//! message. The 250 after DATA is sent only when the spool's group commit
//! covering the message has completed; on a spool failure the client gets
//! the spool's 451/452 and nothing half-stored is kept.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::tls::TlsAcceptor;

use super::auth::{FailureLimiter, verify_password};
use super::headers::{ReceivedInfo, control_header_pieces, received_field};
use super::vmta::{Choice, PoolPicker};
use crate::config::{Config, ListenerConfig};
use crate::runtime::local::unix_now_ms;
use crate::runtime::read_timeout::ReadTimeout;
use crate::runtime::stats::Stats;
use crate::runtime::stream::Conn;
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::{Notify, Ret as SmtpRet};
use crate::smtp::reply::Reply;
use crate::smtp::server::{ServerConfig, ServerEvent, ServerSession};
use crate::spool::record::{Content, NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use crate::spool::{MessageRef, NewMessage, NewRecipient, Ret, Spool};

/// Bytes read from a client before the session must consume some: bounds
/// per-connection memory whatever the client sends.
pub const SESSION_READ_BUFFER_BYTES: usize = 64 * 1024;
/// A session keeps its message buffer for the next message up to this
/// capacity (no regrowth per message); a larger one is freed.
const MESSAGE_BUFFER_KEEP_BYTES: usize = 64 * 1024;

/// The most a session reserves for a message before it arrives, from the
/// size of its previous one (a larger message grows the buffer as it comes).
const MESSAGE_RESERVE_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(MESSAGE_RESERVE_BYTES_MAX >= MESSAGE_BUFFER_KEEP_BYTES);

/// Empties a session's message buffer, freeing it when it grew large.
fn recycle(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > MESSAGE_BUFFER_KEEP_BYTES {
        *buf = Vec::new();
    }
}

/// Readies the message buffer for a new message: emptied (freed if large,
/// see [`recycle`]) and given room for a message like the session's last
/// one (`last_len` bytes, with an eighth more), so that a sender of similar
/// large messages does not regrow it by doubling, a copy at each step,
/// for every message. Bounded by [`MESSAGE_RESERVE_BYTES_MAX`]; after a
/// message that fit the kept buffer, no more than it (which stays kept).
fn ready_for_message(buf: &mut Vec<u8>, last_len: usize) {
    recycle(buf);
    let cap = if last_len <= MESSAGE_BUFFER_KEEP_BYTES {
        MESSAGE_BUFFER_KEEP_BYTES
    } else {
        MESSAGE_RESERVE_BYTES_MAX
    };
    let want = last_len.saturating_add(last_len / 8).min(cap);
    if want > buf.capacity() {
        // Empty: a new allocation, not a reallocation copying the old bytes.
        *buf = Vec::with_capacity(want);
    }
}

/// Empties the message buffer (see [`recycle`]) when no transaction is open.
fn release_if_no_transaction(buf: &mut Vec<u8>, in_transaction: bool) {
    if !in_transaction {
        recycle(buf);
    }
}

/// What a shard gives every inbound session.
pub struct InboundContext {
    pub config: Rc<RefCell<Arc<Config>>>,
    pub tls: Option<TlsAcceptor>,
    pub spool: Rc<Spool>,
    pub auth_failures: Arc<FailureLimiter>,
    pub pools: Rc<RefCell<PoolPicker>>,
    pub stats: Arc<Stats>,
    /// Hands a committed message to the shard owning its vMTA.
    pub handoff: Rc<dyn Fn(MessageRef, String)>,
    /// DKIM signing; a message that cannot be signed is refused with 451
    /// and counted, never sent unsigned silently.
    pub signing: Option<Rc<super::signing::InboundSigning>>,
}

/// Per-session tallies for the one log line at the end.
#[derive(Debug, Default)]
struct Tally {
    accepted: u32,
    rejected: u32,
}

fn forward_path_text(p: &ForwardPath) -> Option<String> {
    match p {
        ForwardPath::Mailbox(m) => Some(m.to_string()),
        ForwardPath::Postmaster => None,
    }
}

fn notify_bits(n: Option<&Notify>) -> u8 {
    match n {
        None => 0,
        Some(Notify::Never) => NOTIFY_NEVER,
        Some(Notify::On {
            success,
            failure,
            delay,
        }) => {
            (if *success { NOTIFY_SUCCESS } else { 0 })
                | (if *failure { NOTIFY_FAILURE } else { 0 })
                | (if *delay { NOTIFY_DELAY } else { 0 })
        }
    }
}

/// Runs a session to completion. Never panics on peer input; returns when
/// the client quits, the session closes or an I/O error/timeout ends it.
pub async fn run_session(
    ctx: Rc<InboundContext>,
    listener: ListenerConfig,
    stream: compio::net::TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    let config = ctx.config.borrow().clone();
    let mut conn = Conn::Plain(stream);
    let mut server_cfg = ServerConfig::new(config.hostname.clone());
    server_cfg.max_message_bytes = listener.max_message_bytes;
    server_cfg.max_recipients = listener.max_rcpt_per_message as usize;
    server_cfg.max_errors = listener.max_errors_per_session;
    server_cfg.starttls_available = ctx.tls.is_some();
    server_cfg.auth_available = !config.users.is_empty();
    server_cfg.auth_without_tls = listener.allow_auth_without_tls;
    server_cfg.require_auth = listener.require_auth;
    let mut session = ServerSession::new(server_cfg);
    let mut tally = Tally::default();
    let mut inbuf: Vec<u8> = Vec::with_capacity(SESSION_READ_BUFFER_BYTES);
    let mut message: Vec<u8> = Vec::new();
    // The size of the session's last message, for the next one's buffer.
    let mut last_message_len = 0;
    let mut read_timeout = ReadTimeout::new();
    let mut out = session.take_output();
    ctx.stats.connections_in_open();

    'conn: loop {
        if !out.is_empty() {
            let (res, buf) = conn.write_all(std::mem::take(&mut out)).await;
            out = buf;
            out.clear();
            if res.is_err() {
                break;
            }
        }
        if session.is_closed() {
            break;
        }
        // Consume what is buffered before reading more.
        let mut offset = 0;
        loop {
            let step = match session.receive(&inbuf[offset..]) {
                Ok(step) => step,
                Err(_) => break 'conn, // a decision left unanswered: our bug; close
            };
            offset += step.consumed;
            let Some(event) = step.event else { break };
            match event {
                ServerEvent::Helo { .. } => {
                    let _ = session.accept();
                }
                ServerEvent::MailFrom(_) => {
                    let reply = if listener.require_tls && !conn.is_tls() {
                        Some(Reply::with_status(
                            530,
                            (5, 7, 0),
                            "Must issue a STARTTLS command first",
                        ))
                    } else {
                        None
                    };
                    let _ = match reply {
                        Some(r) => session.reject(r),
                        None => session.accept(),
                    };
                }
                ServerEvent::RcptTo(rcpt) => {
                    let reply = rcpt_policy(&config, &session, &rcpt.forward_path, peer);
                    let _ = match reply {
                        Some(r) => {
                            tally.rejected += 1;
                            session.reject(r)
                        }
                        None => session.accept(),
                    };
                }
                ServerEvent::DataStart => ready_for_message(&mut message, last_message_len),
                ServerEvent::Data(chunk) => message.extend_from_slice(chunk),
                ServerEvent::MessageAborted(_) => {
                    recycle(&mut message);
                    tally.rejected += 1;
                    ctx.stats.add_rejected(1);
                }
                ServerEvent::MessageComplete => {
                    // The session reads nothing more until this is answered,
                    // so flush earlier replies while the spool commits.
                    last_message_len = message.len();
                    let reply =
                        finish_message(&ctx, &config, &session, &conn, peer, &mut message).await;
                    // Kept for the session's next message unless large.
                    recycle(&mut message);
                    if reply.code == 250 {
                        tally.accepted += 1;
                    } else {
                        tally.rejected += 1;
                        ctx.stats.add_rejected(1);
                    }
                    let _ = if reply.code < 400 {
                        session.accept_with(reply)
                    } else {
                        session.reject(reply)
                    };
                }
                ServerEvent::StartTls => {
                    // Anything pipelined after STARTTLS is discarded: it was
                    // sent in plaintext and must not be acted on under TLS.
                    inbuf.clear();
                    offset = 0;
                    let pending = session.take_output();
                    let (res, _) = conn.write_all(pending).await;
                    let Some(acceptor) = ctx.tls.as_ref() else {
                        break 'conn;
                    };
                    if res.is_err() {
                        break 'conn;
                    }
                    let handshake = compio::time::timeout(
                        listener.command_timeout.min(Duration::from_secs(60)),
                        conn.accept_tls(acceptor),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(())) => {
                            let _ = session.tls_established();
                        }
                        _ => break 'conn,
                    }
                    break;
                }
                ServerEvent::Auth(req) => {
                    let reply = check_auth(&ctx, &config, peer, req).await;
                    let _ = if reply.code == 235 {
                        session.accept_with(reply)
                    } else {
                        session.reject(reply)
                    };
                }
                ServerEvent::Quit | ServerEvent::Shutdown(_) => {
                    session.write_output_to(&mut out);
                    let (_, _) = conn.write_all(std::mem::take(&mut out)).await;
                    break 'conn;
                }
            }
            session.write_output_to(&mut out);
        }
        if offset > 0 {
            inbuf.drain(..offset.min(inbuf.len()));
        }
        // A transaction reset between BDAT chunks (RSET) leaves no event:
        // its data and room go here rather than at the next message.
        release_if_no_transaction(&mut message, session.mail_from().is_some());
        session.write_output_to(&mut out);
        if !out.is_empty() {
            continue;
        }
        if inbuf.len() >= SESSION_READ_BUFFER_BYTES {
            // The session refuses to consume a full buffer only on misuse.
            break;
        }
        let timeout = if session.in_message() {
            listener.data_timeout
        } else {
            listener.command_timeout
        };
        if inbuf.capacity() - inbuf.len() < 4096 {
            inbuf.reserve(SESSION_READ_BUFFER_BYTES - inbuf.len());
        }
        let read = read_timeout.run(timeout, conn.read_append(inbuf)).await;
        match read {
            Some((Ok(0), _)) | Some((Err(_), _)) => break,
            Some((Ok(_), buf)) => inbuf = buf,
            None => {
                // The read was cancelled together with its buffer.
                session.shutdown(&Reply::with_status(
                    421,
                    (4, 4, 2),
                    "Timeout, closing connection",
                ));
                session.write_output_to(&mut out);
                let _ = conn.write_all(std::mem::take(&mut out)).await;
                break;
            }
        }
    }
    conn.shutdown().await;
    ctx.stats.connections_in_closed();
    tracing::info!(
        peer = %peer,
        tls = conn.is_tls(),
        user = session.authenticated_user().unwrap_or("-"),
        helo = session.helo_name().unwrap_or("-"),
        accepted = tally.accepted,
        rejected = tally.rejected,
        duration_ms = started.elapsed().as_millis() as u64,
        "session closed"
    );
}

/// The relay decision for one recipient: `None` accepts.
fn rcpt_policy(
    config: &Config,
    session: &ServerSession,
    forward_path: &ForwardPath,
    peer: SocketAddr,
) -> Option<Reply> {
    let ForwardPath::Mailbox(mailbox) = forward_path else {
        return Some(Reply::with_status(
            550,
            (5, 1, 1),
            "No local mailboxes at this host",
        ));
    };
    let authenticated = session.authenticated_user().is_some();
    let source_relays = config
        .source_for(peer.ip())
        .is_some_and(|s| s.allow_relaying);
    if authenticated || source_relays || config.is_relay_domain(&mailbox.domain) {
        None
    } else {
        Some(Reply::with_status(550, (5, 7, 1), "Relaying denied"))
    }
}

async fn check_auth(
    ctx: &InboundContext,
    config: &Config,
    peer: SocketAddr,
    req: crate::smtp::server::AuthRequest,
) -> Reply {
    let now = Instant::now();
    if !ctx.auth_failures.allowed(peer.ip(), now) {
        return Reply::with_status(454, (4, 7, 0), "Too many failed attempts, try again later");
    }
    let Some(user) = config.user(&req.username) else {
        ctx.auth_failures.record_failure(peer.ip(), now);
        return Reply::with_status(535, (5, 7, 8), "Authentication credentials invalid");
    };
    let phc = user.password_hash.clone();
    let password = req.password;
    // argon2id takes tens of milliseconds: off the shard's I/O loop.
    let ok = compio::runtime::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .unwrap_or(false);
    if ok {
        ctx.auth_failures.record_success(peer.ip());
        Reply::with_status(235, (2, 7, 0), "Authentication successful")
    } else {
        ctx.auth_failures.record_failure(peer.ip(), now);
        Reply::with_status(535, (5, 7, 8), "Authentication credentials invalid")
    }
}

/// Processes a complete message: control headers, vMTA choice, trace
/// header, signing, spool commit, handoff. Returns the reply to send.
/// Without DKIM the spool copies `body` straight into the record; with it,
/// `body` is emptied once joined for the signer, before the commit wait.
async fn finish_message(
    ctx: &InboundContext,
    config: &Config,
    session: &ServerSession,
    conn: &Conn,
    peer: SocketAddr,
    body: &mut Vec<u8>,
) -> Reply {
    let source = config.source_for(peer.ip());
    let user = session.authenticated_user().and_then(|u| config.user(u));
    let allow_vmta_header = source.is_some_and(|s| s.process_x_virtual_mta) || user.is_some();
    let allow_job_header = source.is_some_and(|s| s.process_x_job) || user.is_some();

    let Some(mail) = session.mail_from() else {
        return Reply::with_status(503, (5, 5, 1), "Bad sequence of commands");
    };
    let reverse_path = match &mail.reverse_path {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(m) => m.to_string(),
    };
    let rcpts: Vec<(String, String, u8)> = session
        .recipients()
        .iter()
        .filter_map(|r| {
            let fp = forward_path_text(&r.forward_path)?;
            let orcpt = r
                .params
                .orcpt
                .as_ref()
                .map(|o| format!("{};{}", o.addr_type, o.address))
                .unwrap_or_default();
            Some((fp, orcpt, notify_bits(r.params.notify.as_ref())))
        })
        .collect();
    if rcpts.is_empty() {
        return Reply::with_status(554, (5, 5, 1), "No valid recipients");
    }

    let received_unix_ms = unix_now_ms();
    let id_hint = format!("{:x}", received_unix_ms);
    let single = (rcpts.len() == 1).then(|| rcpts[0].0.as_str());
    let trace = received_field(&ReceivedInfo {
        helo: session.helo_name().unwrap_or("unknown"),
        peer_ip: peer.ip(),
        hostname: &config.hostname,
        tls: conn.is_tls(),
        authenticated: user.is_some(),
        id: &id_hint,
        single_recipient: single,
        now_unix: received_unix_ms / 1000,
    });
    // The stored content: our trace field, then the message without the
    // control headers it may carry; the spool copies the pieces once, into
    // the record.
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(4);
    pieces.push(trace.as_bytes());
    let control = control_header_pieces(body, allow_vmta_header, allow_job_header, &mut pieces);

    let requested = control
        .virtual_mta
        .clone()
        .or_else(|| user.and_then(|u| u.default_vmta.clone()))
        .or_else(|| source.and_then(|s| s.default_vmta.clone()))
        .unwrap_or_else(|| config.default_vmta.clone());
    let choice: Choice = match ctx.pools.borrow_mut().resolve(config, &requested) {
        Some(c) => c,
        None if control.virtual_mta.is_some() => {
            return Reply::with_status(550, (5, 3, 5), "Unknown virtual MTA");
        }
        None => return Reply::with_status(451, (4, 3, 5), "No virtual MTA configured"),
    };

    let signed: Vec<u8>;
    let content = if let Some(signing) = ctx
        .signing
        .as_ref()
        .filter(|s| s.applies(config, &choice.vmta))
    {
        let joined = pieces.concat();
        // Not needed any more: free a large one before the signing and the
        // commit wait.
        recycle(body);
        match signing
            .sign(config, &choice.vmta, joined, received_unix_ms / 1000)
            .await
        {
            Ok(s) => {
                signed = s;
                Content::One(&signed)
            }
            Err(failure) => {
                ctx.stats.add_signing_failure();
                tracing::warn!(peer = %peer, ?failure, "DKIM signing failed; message refused with 451");
                return Reply::with_status(
                    451,
                    (4, 7, 0),
                    "Temporary signing failure, try again later",
                );
            }
        }
    } else {
        Content::Pieces(&pieces)
    };

    let recipients: Vec<NewRecipient<'_>> = rcpts
        .iter()
        .map(|(fp, orcpt, notify)| NewRecipient {
            forward_path: fp,
            orcpt,
            notify: *notify,
        })
        .collect();
    let ret = match mail.params.ret {
        None => Ret::Unspecified,
        Some(SmtpRet::Full) => Ret::Full,
        Some(SmtpRet::Headers) => Ret::Hdrs,
    };
    let record = NewMessage {
        received_unix_ms,
        reverse_path: &reverse_path,
        recipients: &recipients,
        ret,
        envid: mail.params.envid.as_deref().unwrap_or(""),
        vmta_or_pool: &choice.vmta_or_pool,
        vmta: &choice.vmta,
        job_id: control.job.as_deref().unwrap_or(""),
        content,
    };
    match ctx.spool.append_message(&record).await {
        Ok(msg) => {
            let id = msg.id();
            ctx.stats.add_received(1, recipients.len() as u64);
            (ctx.handoff)(msg, choice.vmta.clone());
            Reply::with_status(250, (2, 0, 0), format!("Ok queued as {id}"))
        }
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "spool append failed");
            let (code, text) = e.smtp_reply();
            spool_reply(code, text)
        }
    }
}

fn spool_reply(code: u16, text: &str) -> Reply {
    // `text` carries the enhanced code first ("4.3.1 ...").
    let mut parts = text.splitn(2, ' ');
    let enhanced = parts.next().unwrap_or("");
    let rest = parts.next().unwrap_or("");
    match crate::smtp::reply::EnhancedStatus::parse(enhanced) {
        Some(e) => Reply::new(code, Some(e), rest),
        None => Reply::new(code, None, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_gets_room_for_a_message_like_the_last() {
        let mut buf = Vec::new();
        ready_for_message(&mut buf, 0);
        assert_eq!(buf.capacity(), 0);
        // A 100 KB message: room for it and an eighth more, no regrowth.
        ready_for_message(&mut buf, 100 * 1024);
        assert!(buf.capacity() >= 100 * 1024 + 100 * 1024 / 8);
        let before = buf.as_ptr();
        buf.extend(std::iter::repeat_n(b'x', 110 * 1024));
        assert_eq!(buf.as_ptr(), before, "grew although the room was reserved");
        // Large: freed after its message, then reserved for the next one.
        let len = buf.len();
        let mut freed = buf.clone();
        recycle(&mut freed);
        assert_eq!(freed.capacity(), 0);
        ready_for_message(&mut buf, len);
        assert!(buf.is_empty());
        assert!(buf.capacity() >= 110 * 1024);
        // Bounded, whatever the last message was.
        ready_for_message(&mut buf, 50 * 1024 * 1024);
        assert!(buf.capacity() >= MESSAGE_RESERVE_BYTES_MAX);
        assert!(buf.capacity() < 2 * MESSAGE_RESERVE_BYTES_MAX);
        // After a message that fit the kept buffer: no more than it, so that
        // the buffer stays kept (60 KB and an eighth would be over it).
        let mut kept = Vec::with_capacity(MESSAGE_BUFFER_KEEP_BYTES);
        ready_for_message(&mut kept, 60 * 1024);
        assert_eq!(kept.capacity(), MESSAGE_BUFFER_KEEP_BYTES);
        // A small buffer is kept as it is.
        let mut small = Vec::with_capacity(4096);
        small.extend_from_slice(b"hello");
        ready_for_message(&mut small, 10);
        assert!(small.is_empty());
        assert_eq!(small.capacity(), 4096);
    }

    #[test]
    fn a_reset_transaction_releases_the_buffer_and_an_open_one_keeps_it() {
        let mut partial = Vec::with_capacity(1024 * 1024);
        partial.extend_from_slice(b"first BDAT chunk");
        release_if_no_transaction(&mut partial, true);
        assert_eq!(partial, b"first BDAT chunk");
        release_if_no_transaction(&mut partial, false);
        assert!(partial.is_empty());
        assert_eq!(partial.capacity(), 0);
        // A small empty buffer stays as it is.
        let mut small = Vec::with_capacity(4096);
        release_if_no_transaction(&mut small, false);
        assert_eq!(small.capacity(), 4096);
    }
}
