//! One outbound connection for one queue.
//!
//! Resolves the queue's destination, connects from the vMTA's source IP to
//! each host in preference order until one greets, then runs transactions
//! (one message, up to `max_rcpt_per_transaction` recipients each) while
//! the queue has work and its rate controller allows, reusing the
//! connection up to `max_msg_per_connection` messages and closing it after
//! `idle_timeout` without work. Outcomes are settled in [`super::outcome`].

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use compio::buf::IoBuf;
use rand::{Rng, SeedableRng};

use super::outcome::{Settle, Transaction, fail_ready, settle_transaction};
use super::route::{RouteError, resolve_route};
use crate::config::StartTls;
use crate::queue::engine::Engine;
use crate::queue::{Recipient, domain_of};
use crate::runtime::local::now_ms;
use crate::runtime::read_timeout::ReadTimeout;
use crate::runtime::stream::Conn;
use crate::shaper::Mode;
use crate::smtp::address::{Mailbox, ReversePath};
use crate::smtp::client::{
    ClientConfig, ClientEvent, ClientFailure, ClientSession, Envelope, EnvelopeRecipient,
    StartTlsPolicy, TransactionError,
};
use crate::smtp::command::{Notify, Orcpt, Ret as SmtpRet};
use crate::smtp::data::{BodyEncoder, Piece};
use crate::spool::record::{NOTIFY_DELAY, NOTIFY_FAILURE, NOTIFY_NEVER, NOTIFY_SUCCESS};
use crate::spool::{MessageRef, Ret};

/// Messages smaller than this are copied into one write with the
/// commands (one syscall); larger ones are written from the spool's map.
const BODY_COALESCE_BYTES_MAX: usize = 64 * 1024;
/// Reply bytes buffered from a server before they must parse.
const CLIENT_READ_BUFFER_BYTES: usize = 16 * 1024;

/// A slice of a spooled message, owned for io_uring by holding the map.
struct MappedSlice {
    message: MessageRef,
    start: usize,
    end: usize,
}

impl IoBuf for MappedSlice {
    fn as_init(&self) -> &[u8] {
        self.message
            .content()
            .get(self.start..self.end)
            .unwrap_or(&[])
    }
}

/// Buffers of one vectored write (the kernel takes at most 1,024).
const WRITE_CHUNKS_MAX: usize = 256;
/// Bytes after which a vectored write is sent even with room for more
/// buffers: each write has the data timeout to itself, so a slow receiver
/// gets it per megabyte, not per message.
const WRITE_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// One buffer of a vectored write: bytes the session owns (commands), a
/// range of a message in the spool's map, or fixed bytes (a line ending, a
/// stuffed dot, the end of DATA).
enum Chunk {
    Owned(Vec<u8>),
    Mapped(MappedSlice),
    Static(&'static [u8]),
}

impl IoBuf for Chunk {
    fn as_init(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Mapped(m) => m.as_init(),
            Chunk::Static(s) => s,
        }
    }
}

/// Writes `chunks` within `limit` and empties it; false when the write
/// failed or timed out. An owned buffer among them goes back to `spare`
/// when that has none (the session's command buffer keeps its allocation).
async fn write_chunks(
    conn: &mut Conn,
    chunks: &mut Vec<Chunk>,
    spare: &mut Vec<u8>,
    limit: Duration,
) -> bool {
    let total: usize = chunks.iter().map(|c| c.as_init().len()).sum();
    if total == 0 {
        chunks.clear();
        return true;
    }
    match compio::time::timeout(limit, conn.write_vectored_all(std::mem::take(chunks))).await {
        Ok((res, mut back)) => {
            if let Some(Chunk::Owned(v)) = back.first_mut()
                && spare.capacity() == 0
            {
                *spare = std::mem::take(v);
                spare.clear();
            }
            back.clear();
            *chunks = back;
            res.is_ok()
        }
        Err(_) => false,
    }
}

/// Runs a connection for `queue` and releases its slot afterwards.
pub async fn run_connection(engine: Rc<Engine>, queue: String) {
    connection(&engine, &queue).await;
    let now = now_ms();
    {
        let mut state = engine.state.borrow_mut();
        if let Some(q) = state.queues.get_mut(&queue) {
            q.connections = q.connections.saturating_sub(1);
            q.controller.on_connection_closed(now);
        }
        state.mark(&queue);
    }
    engine.deps.stats.connections_out_closed();
    engine.wake.notify_all();
}

async fn connection(engine: &Rc<Engine>, queue: &str) {
    let Some((domain, vmta_name, policy)) = ({
        let state = engine.state.borrow();
        state
            .queues
            .get(queue)
            .map(|q| (q.domain.clone(), q.vmta.clone(), q.policy.clone()))
    }) else {
        return;
    };
    // An overflow queue holds recipients of many domains: this connection
    // serves the domain of its oldest ready recipient, with that domain's
    // settings, and touches no other domain's recipients.
    let overflow = crate::queue::is_overflow(queue);
    let (domain, policy) = if overflow {
        let first = {
            let state = engine.state.borrow();
            state
                .queues
                .get(queue)
                .and_then(|q| q.ready.iter().find_map(|r| domain_of(&state.messages, r)))
        };
        let Some(first) = first else {
            return;
        };
        let policy = engine.config().domain_policy(&first, &vmta_name);
        (first, policy)
    } else {
        (domain, policy)
    };
    let only = overflow.then_some(domain.as_str());
    let config = engine.config();
    let (source_ip, ehlo) = match config.vmta(&vmta_name) {
        Some(v) => (v.source_ip, v.ehlo.clone()),
        None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), config.hostname.clone()),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(engine.rng.borrow_mut().random());
    let route = match resolve_route(
        &engine.deps.dns,
        &domain,
        Some(&policy.smtp_hosts),
        &mut rng,
    )
    .await
    {
        Ok(r) => r,
        Err(RouteError::Permanent { enhanced, text }) => {
            let reply = format!("550 {enhanced} {text}");
            fail_ready(engine, queue, only, &reply, false, None).await;
            return;
        }
        Err(RouteError::Temporary { text }) => {
            let reply = format!("451 4.4.3 {text}");
            fail_ready(engine, queue, only, &reply, true, None).await;
            return;
        }
    };
    // mx_rollup: from now on, recipients of this domain queue under the
    // key of its MX host set, shared with every domain the same hosts serve.
    if policy.rolls_up()
        && let Some(key) = super::route::rollup_key(
            &route
                .hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>(),
        )
    {
        engine.state.borrow_mut().rollup.insert(domain.clone(), key);
    }
    let mut last_error = String::from("451 4.4.1 no answer from host");
    for host in &route.hosts {
        for addr in &host.addrs {
            let stream = match super::connect::connect_from(
                source_ip,
                *addr,
                policy.connect_timeout,
            )
            .await
            {
                Ok(s) => s,
                // Our descriptors or ports ran out, not the destination:
                // leave the recipients ready (no deferral, no reply for the
                // rate controller); the queue opens a new attempt when this
                // slot is released.
                Err(super::connect::ConnectError::LocalResources { .. }) => return,
                Err(e) => {
                    last_error = format!("451 4.4.1 {e}");
                    continue;
                }
            };
            let peer = Peer {
                addr: *addr,
                host_name: &host.name,
                ehlo: &ehlo,
            };
            match session(engine, queue, only, stream, peer, &policy).await {
                SessionEnd::Done => return,
                SessionEnd::TryNext(reason) => last_error = reason,
            }
        }
    }
    let remote = route.hosts.first().map(|h| h.name.clone());
    fail_ready(engine, queue, only, &last_error, true, remote).await;
}

enum SessionEnd {
    /// The session ran (transactions settled); don't try other hosts.
    Done,
    /// The host refused us before any transaction (greeting, EHLO, TLS):
    /// try the next one.
    TryNext(String),
}

fn reverse_path(text: &str) -> ReversePath {
    match text.rsplit_once('@') {
        Some((local, domain)) if !text.is_empty() => {
            ReversePath::Mailbox(Mailbox::new(local, domain))
        }
        _ => ReversePath::Null,
    }
}

fn notify(bits: u8) -> Option<Notify> {
    if bits == 0 {
        None
    } else if bits & NOTIFY_NEVER != 0 {
        Some(Notify::Never)
    } else {
        Some(Notify::On {
            success: bits & NOTIFY_SUCCESS != 0,
            failure: bits & NOTIFY_FAILURE != 0,
            delay: bits & NOTIFY_DELAY != 0,
        })
    }
}

fn orcpt(text: &str) -> Option<Orcpt> {
    let (t, a) = text.split_once(';')?;
    Some(Orcpt {
        addr_type: t.to_string(),
        address: a.to_string(),
    })
}

/// Builds the SMTP envelope for a transaction from the spooled record.
fn envelope_for(message: &MessageRef, rcpts: &[Recipient]) -> Option<Envelope> {
    let env = message.envelope().ok()?;
    let all: Vec<_> = env.recipients().collect();
    let mut recipients = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        let rec = all.get(r.index as usize)?;
        let (local, domain) = rec.forward_path.rsplit_once('@')?;
        let mut er = EnvelopeRecipient::new(Mailbox::new(local, domain));
        er.notify = notify(rec.notify);
        er.orcpt = orcpt(rec.orcpt);
        recipients.push(er);
    }
    Some(Envelope {
        reverse_path: reverse_path(env.reverse_path),
        recipients,
        ret: match env.ret {
            Ret::Full => Some(SmtpRet::Full),
            Ret::Hdrs => Some(SmtpRet::Headers),
            Ret::Unspecified => None,
        },
        envid: (!env.envid.is_empty()).then(|| env.envid.to_string()),
    })
}

/// What the connection does next when the client is ready.
enum Next {
    Send(Transaction),
    Wait(Option<u64>),
    Quit,
}

/// The next transaction for a connection that completed `sent` and has
/// `in_flight` more on the wire. Behind others (pipelined) only in Normal
/// mode: in Backoff each reply is awaited before the next message goes.
fn next_transaction(
    engine: &Engine,
    queue: &str,
    only: Option<&str>,
    sent: u32,
    in_flight: usize,
) -> Next {
    let now = now_ms();
    let mut state = engine.state.borrow_mut();
    let state = &mut *state;
    let Some(q) = state.queues.get_mut(queue) else {
        return Next::Quit;
    };
    let pending = sent.saturating_add(u32::try_from(in_flight).unwrap_or(u32::MAX));
    if engine.is_shutting_down() || q.controller.connection_should_close(now, pending) {
        return Next::Quit;
    }
    if in_flight > 0 && q.controller.mode() == Mode::Backoff {
        return Next::Wait(None);
    }
    // Where this connection's next recipients start: the front, or in an
    // overflow queue the first of its domain (none left: it quits, so the
    // connection slot goes to another domain).
    let messages = &state.messages;
    let mine = |r: &Recipient| only.is_none_or(|d| domain_of(messages, r).as_deref() == Some(d));
    let Some(at) = q.ready.iter().position(mine) else {
        return if only.is_some() && !q.ready.is_empty() {
            Next::Quit
        } else {
            Next::Wait(None)
        };
    };
    let first = q.ready[at];
    let max = q.controller.limits().max_rcpt_per_transaction as usize;
    let wanted = q
        .ready
        .iter()
        .skip(at)
        .take(max)
        .take_while(|r| r.message == first.message && mine(r))
        .count();
    let grant = match q.controller.try_send_recipients(now, wanted as u32) {
        Ok(g) => g,
        Err(wait) => {
            if matches!(wait, crate::shaper::Wait::RateLimited { .. }) {
                engine
                    .deps
                    .stats
                    .rate_limit_waits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Next::Wait(wait.until_ms());
        }
    };
    let take = (grant.recipients as usize).min(wanted).max(1);
    let rcpts: Vec<Recipient> = q.ready.drain(at..at + take).collect();
    q.in_flight += rcpts.len() as u32;
    let Some(entry) = state.messages.get(&first.message) else {
        // The message was deleted meanwhile.
        q.in_flight -= rcpts.len() as u32;
        return Next::Wait(Some(now));
    };
    Next::Send(Transaction {
        message: entry.message.clone(),
        rcpts,
        granted_at_ms: grant.granted_at_ms,
    })
}

/// The host a session talks to, and the name spate gives itself.
struct Peer<'a> {
    addr: SocketAddr,
    /// The MX or `smtp_hosts` name (what TLS verification checks).
    host_name: &'a str,
    ehlo: &'a str,
}

/// One SMTP session on a connected socket. `only`: in an overflow queue,
/// the one domain whose recipients it may take.
async fn session(
    engine: &Rc<Engine>,
    queue: &str,
    only: Option<&str>,
    stream: compio::net::TcpStream,
    peer: Peer<'_>,
    policy: &crate::config::DomainPolicy,
) -> SessionEnd {
    let Peer {
        addr,
        host_name,
        ehlo,
    } = peer;
    let mut cfg = ClientConfig::new(ehlo);
    cfg.use_chunking = policy.use_chunking;
    cfg.max_transactions_in_flight = policy.max_transactions_in_flight as usize;
    cfg.starttls = match policy.starttls {
        StartTls::Off => StartTlsPolicy::Off,
        StartTls::Opportunistic => StartTlsPolicy::Opportunistic,
        StartTls::Required | StartTls::Verify => StartTlsPolicy::Required,
    };
    let mut client = ClientSession::new(cfg);
    let mut conn = Conn::Plain(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(CLIENT_READ_BUFFER_BYTES);
    let mut sent: u32 = 0;
    // Transactions sent and not settled, oldest first.
    let mut in_flight: VecDeque<Transaction> = VecDeque::new();
    // Commands and small bodies of pipelined transactions, written together
    // before the next read.
    let mut wbuf: Vec<u8> = Vec::new();
    let mut read_timeout = ReadTimeout::new();
    let mut ready = false;
    let mut greeted = false;
    let mut timeout = policy.greeting_timeout;
    let remote = format!("{host_name} ({})", addr.ip());
    loop {
        while let Some(event) = client.next_event() {
            match event {
                ClientEvent::Ready => {
                    greeted = true;
                    ready = true;
                }
                ClientEvent::StartTls => {
                    inbuf.clear();
                    let out = client.take_output();
                    debug_assert!(wbuf.is_empty(), "no transaction before TLS");
                    if !out.is_empty()
                        && !write_within(&mut conn, out, policy.command_timeout).await.0
                    {
                        return SessionEnd::TryNext("451 4.4.2 connection lost".into());
                    }
                    let connector = if policy.starttls == StartTls::Verify {
                        match super::tls::verifying_connector(policy.tls_ca_file.as_deref()) {
                            Ok(c) => c,
                            Err(e) => {
                                return SessionEnd::TryNext(format!(
                                    "451 4.7.5 cannot verify TLS certificates: {e}"
                                ));
                            }
                        }
                    } else {
                        engine.deps.tls.clone()
                    };
                    let tls = compio::time::timeout(
                        policy.command_timeout,
                        conn.connect_tls(&connector, host_name),
                    )
                    .await;
                    match tls {
                        Ok(Ok(())) => client.tls_established(),
                        Ok(Err(e)) => {
                            return SessionEnd::TryNext(format!(
                                "451 4.7.5 TLS handshake failed: {e}"
                            ));
                        }
                        Err(_) => {
                            return SessionEnd::TryNext("451 4.7.5 TLS handshake timed out".into());
                        }
                    }
                }
                ClientEvent::SendBody(mode, scan) => {
                    // The body of the newest transaction: a pipelined BDAT
                    // one asks right as it starts (these events are handled
                    // before another starts), a DATA or lock-step one is
                    // alone in flight.
                    let Some(tx) = in_flight.back() else {
                        debug_assert!(false, "SendBody without a transaction");
                        continue;
                    };
                    let body = tx.message.content();
                    client.write_output_to(&mut wbuf);
                    if body.len() <= BODY_COALESCE_BYTES_MAX {
                        for slice in BodyEncoder::scanned(body, mode, scan).slices() {
                            wbuf.extend_from_slice(slice);
                        }
                    } else {
                        // The commands, then the body from the spool's map
                        // in vectored writes: one system call (and one
                        // wake-up of the receiver) for the usual body, at
                        // most 256 buffers or about 1 MiB each.
                        let limit = policy.data_timeout;
                        let mut chunks = Vec::with_capacity(4);
                        chunks.push(Chunk::Owned(std::mem::take(&mut wbuf)));
                        let mut ok = true;
                        let mut batch_bytes = 0;
                        for piece in BodyEncoder::scanned(body, mode, scan) {
                            let chunk = match piece {
                                Piece::Body(r) => Chunk::Mapped(MappedSlice {
                                    message: tx.message.clone(),
                                    start: r.start,
                                    end: r.end,
                                }),
                                Piece::Static(s) => Chunk::Static(s),
                            };
                            batch_bytes += chunk.as_init().len();
                            chunks.push(chunk);
                            if chunks.len() == WRITE_CHUNKS_MAX
                                || batch_bytes >= WRITE_BATCH_BYTES_MAX
                            {
                                ok = write_chunks(&mut conn, &mut chunks, &mut wbuf, limit).await;
                                batch_bytes = 0;
                                if !ok {
                                    break;
                                }
                            }
                        }
                        if ok {
                            ok = write_chunks(&mut conn, &mut chunks, &mut wbuf, limit).await;
                        }
                        if !ok {
                            read_remaining(&mut conn, &mut client, &mut inbuf).await;
                        }
                    }
                    timeout = policy.data_timeout;
                }
                ClientEvent::TransactionDone(result) => {
                    if let Some(tx) = in_flight.pop_front() {
                        sent += 1;
                        settle_transaction(
                            engine,
                            queue,
                            tx,
                            Settle::Result(&result),
                            &remote,
                            addr,
                        )
                        .await;
                    }
                }
                ClientEvent::Failed(failure) => {
                    let text = failure_text(&failure);
                    let closing = matches!(failure, ClientFailure::ServiceClosing(_));
                    // The session reported every transaction in flight
                    // before failing; this is only a safety net.
                    while let Some(tx) = in_flight.pop_front() {
                        settle_transaction(engine, queue, tx, Settle::Lost(&text), &remote, addr)
                            .await;
                    }
                    let _ = write_within(&mut conn, client.take_output(), REPLY_DRAIN_WAIT).await;
                    conn.shutdown().await;
                    if !greeted || sent == 0 {
                        observe_reply(engine, queue, &text);
                        return SessionEnd::TryNext(text);
                    }
                    if closing {
                        // A 421 in mid-session (Yahoo's TSS04 often comes so)
                        // still feeds the pattern list.
                        observe_reply(engine, queue, &text);
                    }
                    return SessionEnd::Done;
                }
                ClientEvent::Closed => {
                    conn.shutdown().await;
                    return SessionEnd::Done;
                }
            }
        }
        // Ready: the next transaction, or wait for work. Pipelining (not
        // ready, transactions in flight, the session allows another): a
        // message behind them when the queue has one it may send now,
        // otherwise read the replies.
        let pipelining = !ready && !in_flight.is_empty() && client.can_send_transaction();
        if ready || pipelining {
            let was_ready = std::mem::take(&mut ready);
            match next_transaction(engine, queue, only, sent, in_flight.len()) {
                Next::Send(tx) => {
                    let started = start_transaction(
                        engine,
                        queue,
                        &mut client,
                        tx,
                        &mut in_flight,
                        &remote,
                        addr,
                    )
                    .await;
                    if was_ready {
                        if started {
                            timeout = policy.command_timeout;
                        } else {
                            ready = true;
                        }
                    }
                    // With BDAT the body may go now: the events above add it
                    // to the write with the commands.
                    continue;
                }
                _ if !was_ready => {}
                Next::Quit => client.quit(),
                Next::Wait(until) => {
                    client.write_output_to(&mut wbuf);
                    flush(&mut conn, &mut wbuf, policy.data_timeout).await;
                    if wait_for_work(engine, queue, until, policy.idle_timeout, sent).await {
                        ready = true;
                        continue;
                    }
                    client.quit();
                }
            }
        }
        client.write_output_to(&mut wbuf);
        if !flush(&mut conn, &mut wbuf, policy.data_timeout).await {
            read_remaining(&mut conn, &mut client, &mut inbuf).await;
            continue;
        }
        if client.is_finished() {
            conn.shutdown().await;
            return SessionEnd::Done;
        }
        if inbuf.capacity() - inbuf.len() < 1024 {
            inbuf.reserve(CLIENT_READ_BUFFER_BYTES);
        }
        match read_timeout.run(timeout, conn.read_append(inbuf)).await {
            Some((Ok(n), buf)) if n > 0 => {
                inbuf = buf;
                let used = client.receive(&inbuf);
                inbuf.drain(..used.min(inbuf.len()));
                if inbuf.len() >= CLIENT_READ_BUFFER_BYTES * 4 {
                    client.connection_closed();
                }
            }
            Some((_, buf)) => {
                inbuf = buf;
                client.connection_closed();
            }
            None => {
                let text = if greeted {
                    "451 4.4.2 timeout waiting for reply"
                } else {
                    "451 4.4.2 timeout waiting for greeting"
                };
                while let Some(tx) = in_flight.pop_front() {
                    settle_transaction(engine, queue, tx, Settle::Lost(text), &remote, addr).await;
                }
                conn.shutdown().await;
                return if greeted {
                    SessionEnd::Done
                } else {
                    SessionEnd::TryNext(text.into())
                };
            }
        }
    }
}

/// How long a connection whose write failed keeps reading for replies the
/// server sent before it closed.
const REPLY_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Writes all of `buf` within `limit`: (written, the buffer back unless the
/// write timed out).
async fn write_within<B: IoBuf>(conn: &mut Conn, buf: B, limit: Duration) -> (bool, Option<B>) {
    match compio::time::timeout(limit, conn.write_all(buf)).await {
        Ok((res, buf)) => (res.is_ok(), Some(buf)),
        Err(_) => (false, None),
    }
}

/// Writes what `wbuf` holds (nothing to do when empty) within `limit` and
/// leaves it empty, keeping its allocation unless the write timed out;
/// false when the write failed.
async fn flush(conn: &mut Conn, wbuf: &mut Vec<u8>, limit: Duration) -> bool {
    // (`as_slice`: compio's `IoBuf::is_empty` would be picked on `&mut Vec`.)
    if wbuf.as_slice().is_empty() {
        return true;
    }
    let (ok, buf) = write_within(conn, std::mem::take(wbuf), limit).await;
    *wbuf = buf.unwrap_or_default();
    wbuf.clear();
    ok
}

/// After a failed write. With transactions pipelined, the server may have
/// answered earlier ones before it closed (a 250, or a 421 with a reason):
/// reads what it sent, until EOF, an error or [`REPLY_DRAIN_WAIT`], so those
/// replies settle their transactions, then reports the connection gone.
async fn read_remaining(conn: &mut Conn, client: &mut ClientSession, inbuf: &mut Vec<u8>) {
    let deadline = std::time::Instant::now() + REPLY_DRAIN_WAIT;
    while !client.is_finished() && client.transactions_in_flight() > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        if inbuf.capacity() - inbuf.len() < 1024 {
            inbuf.reserve(CLIENT_READ_BUFFER_BYTES);
        }
        match compio::time::timeout(left, conn.read_append(std::mem::take(inbuf))).await {
            Ok((Ok(n), buf)) if n > 0 => {
                *inbuf = buf;
                let used = client.receive(inbuf);
                inbuf.drain(..used.min(inbuf.len()));
            }
            Ok((_, buf)) => {
                *inbuf = buf;
                break;
            }
            Err(_) => break,
        }
    }
    client.connection_closed();
}

/// Starts `tx` on the session (true), or settles it as refused when it
/// cannot be sent to this server or its spooled copy cannot be read.
async fn start_transaction(
    engine: &Rc<Engine>,
    queue: &str,
    client: &mut ClientSession,
    tx: Transaction,
    in_flight: &mut VecDeque<Transaction>,
    remote: &str,
    addr: SocketAddr,
) -> bool {
    let refusal = match envelope_for(&tx.message, &tx.rcpts) {
        Some(envelope) => match client.send_transaction(&envelope, tx.message.content()) {
            Ok(()) => {
                in_flight.push_back(tx);
                return true;
            }
            Err(TransactionError::SmtpUtf8NotOffered) => {
                "554 5.6.7 server does not support SMTPUTF8".to_string()
            }
            Err(TransactionError::TooBig { .. }) => {
                "552 5.3.4 message exceeds the server's SIZE limit".to_string()
            }
            Err(other) => format!("451 4.3.0 cannot send: {other:?}"),
        },
        None => "554 5.3.0 spooled message unreadable".to_string(),
    };
    settle_transaction(engine, queue, tx, Settle::Refused(&refusal), remote, addr).await;
    false
}

/// Keeps an idle connection open until its queue has work (true) or
/// `idle_timeout` passed without any (false). `until`: a rate limit's next
/// slot, when the queue has work it may not send yet. A wake-up for work
/// another connection took first goes back to waiting: every idle connection
/// of the shard is woken for each new message, and quitting then would close
/// all but one of them each time. It does quit (false) when its queue says a
/// connection should close (paused, blocked, fewer connections allowed in
/// Backoff, `max_msg_per_connection` reached after `sent` messages) and at
/// shutdown.
async fn wait_for_work(
    engine: &Engine,
    queue: &str,
    mut until: Option<u64>,
    idle: Duration,
    sent: u32,
) -> bool {
    let deadline = std::time::Instant::now() + idle;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || engine.is_shutting_down() {
            return false;
        }
        let now = now_ms();
        let wait = match until {
            Some(t) if t > now => Duration::from_millis(t - now).min(left),
            Some(_) => {
                // A slot already due: look again shortly. Never a zero wait,
                // which completes without yielding and would spin the shard.
                until = None;
                Duration::from_millis(1).min(left)
            }
            None => left,
        };
        let Some(work) = engine
            .state
            .borrow()
            .queues
            .get(queue)
            .map(|q| q.work.clone())
        else {
            return false;
        };
        mark_idle(engine, queue, 1);
        let _ = compio::time::timeout(wait, work.notified()).await;
        mark_idle(engine, queue, -1);
        if engine.is_shutting_down() {
            return false;
        }
        let mut state = engine.state.borrow_mut();
        let Some(q) = state.queues.get_mut(queue) else {
            return false;
        };
        if q.controller.connection_should_close(now_ms(), sent) {
            return false;
        }
        if !q.ready.is_empty() {
            return true;
        }
    }
}

fn mark_idle(engine: &Engine, queue: &str, delta: i32) {
    let mut state = engine.state.borrow_mut();
    if let Some(q) = state.queues.get_mut(queue) {
        q.idle = q.idle.saturating_add_signed(delta);
    }
}

/// A connection-level reply still feeds the pattern list (Yahoo's TSS04
/// often comes as the greeting).
fn observe_reply(engine: &Engine, queue: &str, text: &str) {
    let now = now_ms();
    let mut state = engine.state.borrow_mut();
    if let Some(q) = state.queues.get_mut(queue) {
        let _ = q.controller.on_reply(now, text);
        q.last_error = Some(text.to_string());
    }
}

fn failure_text(f: &ClientFailure) -> String {
    match f {
        ClientFailure::Greeting(r)
        | ClientFailure::Helo(r)
        | ClientFailure::StartTls(r)
        | ClientFailure::Auth(r)
        | ClientFailure::ServiceClosing(r) => r.to_string(),
        ClientFailure::StartTlsNotOffered => {
            "451 4.7.4 STARTTLS required but not offered by the server".to_string()
        }
        other => format!("451 4.4.2 {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::test_engine::{append, ready_ids, with_engine};
    use crate::spool::MessageId;

    fn take(engine: &Engine, queue: &str, only: Option<&str>) -> Option<Vec<(MessageId, u32)>> {
        match next_transaction(engine, queue, only, 0, 0) {
            Next::Send(tx) => Some(tx.rcpts.iter().map(|r| (r.message, r.index)).collect()),
            Next::Wait(_) | Next::Quit => None,
        }
    }

    /// Past the queue limit, new destinations share `overflow/<vmta>`. A
    /// connection there serves one domain: it takes only that domain's
    /// recipients, and a routing failure fails only those.
    #[test]
    fn an_overflow_connection_takes_and_fails_only_its_own_domain() {
        let dir = tempfile::tempdir().expect("tempdir");
        with_engine(dir.path(), |engine, spool| async move {
            engine.set_queues_max(1);
            let a = append(&spool, &["x@a.test"]).await;
            let b1 = append(&spool, &["y@b.test"]).await;
            let c = append(&spool, &["z@c.test"]).await;
            let b2 = append(&spool, &["w@b.test", "v@c.test"]).await;
            for m in [&a, &b1, &c, &b2] {
                engine.enqueue(m.clone(), None);
            }
            let overflow = "overflow/ip1";
            assert_eq!(ready_ids(&engine, "a.test/ip1"), vec![(a.id(), 0)]);
            assert_eq!(ready_ids(&engine, overflow).len(), 4);

            // b.test's connection: its two recipients, one message at a
            // time, then nothing for it (it quits; c.test's stay).
            assert_eq!(
                take(&engine, overflow, Some("b.test")),
                Some(vec![(b1.id(), 0)])
            );
            assert_eq!(
                take(&engine, overflow, Some("b.test")),
                Some(vec![(b2.id(), 0)])
            );
            assert!(matches!(
                next_transaction(&engine, overflow, Some("b.test"), 0, 0),
                Next::Quit
            ));
            assert_eq!(
                ready_ids(&engine, overflow),
                vec![(c.id(), 0), (b2.id(), 1)]
            );

            // c.test's route fails permanently: only its recipients bounce.
            let d = append(&spool, &["u@d.test"]).await;
            engine.enqueue(d.clone(), None);
            fail_ready(
                &engine,
                overflow,
                Some("c.test"),
                "550 5.1.2 no such domain",
                false,
                None,
            )
            .await;
            // (The bounces' DSNs go to a@b.test: into the overflow queue too.)
            let state = engine.state.borrow();
            let left: Vec<(MessageId, Option<String>)> = state.queues[overflow]
                .ready
                .iter()
                .map(|r| (r.message, domain_of(&state.messages, r)))
                .collect();
            assert!(left.contains(&(d.id(), Some("d.test".into()))), "{left:?}");
            assert!(
                left.iter().all(|(_, dom)| dom.as_deref() != Some("c.test")),
                "{left:?}"
            );
            let is_final = |m: &MessageRef, i: usize| {
                state
                    .messages
                    .get(&m.id())
                    .is_none_or(|e| e.rcpts[i].state.is_final())
            };
            assert!(
                is_final(&c, 0) && is_final(&b2, 1),
                "c.test's recipients bounced"
            );
            assert!(!is_final(&d, 0) && !is_final(&b2, 0), "the others did not");
        })
    }
}
