//! Entry points shared by the cargo-fuzz targets in `tools/fuzz` and the
//! stable corpus replay test (`tests/smtp_corpus_replay.rs`).
//!
//! Each function takes arbitrary bytes, drives one decoder (and the session
//! built on it) and asserts invariants that only our bugs can break: no
//! panic, never consuming more than given, round trips, and that everything
//! we write is well-formed. Peer input never trips an assertion by itself.

use super::client::{ClientConfig, ClientEvent, ClientSession, Envelope, EnvelopeRecipient};
use super::command::Command;
use super::data::{BodyEncoder, BodyMode, DataDecoder};
use super::reply::{ReplyParser, parse_replies};
use super::server::{ServerConfig, ServerEvent, ServerSession};
use super::{Mailbox, ReversePath};

/// Bounds the work per input so a fuzz iteration stays fast.
const STEPS_MAX: usize = 100_000;

/// Command parser: anything that parses re-encodes to a line that parses to
/// the same command. Then the whole input drives a server session.
pub fn command_line(data: &[u8]) {
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Ok(command) = Command::parse(line) {
        let mut wire = Vec::new();
        command.encode(&mut wire);
        let again = wire.strip_suffix(b"\r\n").map(Command::parse);
        assert_eq!(
            again,
            Some(Ok(command)),
            "round trip of {:?}",
            String::from_utf8_lossy(line)
        );
    }
    server_session(data);
}

/// Drives a permissive server session (STARTTLS and AUTH offered) with
/// `data`, accepting every decision; checks consumption and that the output
/// is a well-formed reply stream.
pub fn server_session(data: &[u8]) {
    let mut config = ServerConfig::new("mx.fuzz.example");
    config.starttls_available = true;
    config.auth_available = true;
    config.auth_without_tls = true;
    config.max_message_bytes = 4096;
    config.max_recipients = 8;
    let mut session = ServerSession::new(config);
    let mut out = session.take_output();
    let mut offset = 0;
    for _ in 0..STEPS_MAX {
        let rest = data.get(offset..).unwrap_or_default();
        let Ok(step) = session.receive(rest) else {
            break;
        };
        assert!(step.consumed <= rest.len(), "consumed past the input");
        offset += step.consumed;
        let Some(event) = step.event else { break };
        let decision = matches!(
            event,
            ServerEvent::Helo { .. }
                | ServerEvent::MailFrom(_)
                | ServerEvent::RcptTo(_)
                | ServerEvent::MessageComplete
                | ServerEvent::Auth(_)
        );
        let starttls = matches!(event, ServerEvent::StartTls);
        if decision {
            assert_eq!(session.accept(), Ok(()));
        }
        if starttls {
            assert_eq!(session.tls_established(), Ok(()));
        }
        session.write_output_to(&mut out);
    }
    session.write_output_to(&mut out);
    let (replies, incomplete) = parse_replies(&out).unwrap_or_else(|e| panic!("bad output {e}"));
    assert!(!incomplete, "output ends mid-reply");
    assert!(!replies.is_empty());
}

/// Reply parser: parsed replies re-encode and re-parse to themselves (when
/// their text has no stray CR, which the encoder turns into a space). Then
/// the input drives a client session.
pub fn reply_stream(data: &[u8]) {
    let mut parser = ReplyParser::new();
    let mut offset = 0;
    while offset < data.len() {
        let rest = data.get(offset..).unwrap_or_default();
        let Ok((used, reply)) = parser.parse(rest) else {
            break;
        };
        assert!(used <= rest.len());
        if used == 0 {
            break;
        }
        offset += used;
        if let Some(reply) = reply {
            if reply.lines.iter().all(|l| !l.contains('\r')) {
                let wire = reply.to_bytes();
                let again = parse_replies(&wire);
                assert_eq!(again, Ok((vec![reply], false)));
            }
        }
    }
    client_session(data);
}

/// Drives a client session with `data` as the server's bytes, starting a
/// transaction whenever it is ready (and, pipelined, behind those in
/// flight when allowed). Every transaction started is reported done exactly
/// once by the time the connection is gone.
pub fn client_session(data: &[u8]) {
    let mut config = ClientConfig::new("mta.fuzz.example");
    // From the length, which a fuzzer varies freely, not from the bytes,
    // which must start with a greeting to get anywhere.
    let flags = data.len() % 8;
    config.use_chunking = flags & 1 == 1;
    config.max_transactions_in_flight = 1 + ((flags >> 1) & 3);
    let mut client = ClientSession::new(config);
    let envelope = Envelope {
        reverse_path: ReversePath::Null,
        recipients: vec![
            EnvelopeRecipient::new(Mailbox::new("a", "b.example")),
            EnvelopeRecipient::new(Mailbox::new("c", "d.example")),
        ],
        ret: None,
        envid: None,
    };
    let body = b"Subject: fuzz\r\n\r\n.body\n";
    let mut started = 0usize;
    let mut done = 0usize;
    let mut offset = 0;
    // Feed in small pieces so events interleave with replies.
    for _ in 0..STEPS_MAX {
        let end = data.len().min(offset + 16);
        let piece = data.get(offset..end).unwrap_or_default();
        let used = client.receive(piece);
        assert!(used <= piece.len());
        offset += piece.len();
        loop {
            while let Some(event) = client.next_event() {
                match event {
                    ClientEvent::Ready => match client.send_transaction(&envelope, body) {
                        Ok(()) => started += 1,
                        Err(_) => client.quit(),
                    },
                    ClientEvent::StartTls => client.tls_established(),
                    ClientEvent::TransactionDone(_) => done += 1,
                    _ => {}
                }
            }
            if client.transactions_in_flight() == 0 || !client.can_send_transaction() {
                break;
            }
            client
                .send_transaction(&envelope, body)
                .expect("can_send_transaction said yes");
            started += 1;
        }
        assert_eq!(started - done, client.transactions_in_flight());
        let wire = client.take_output();
        let lines_ok = wire
            .split(|&b| b == b'\n')
            .all(|l| l.is_empty() || l.ends_with(b"\r"));
        assert!(lines_ok, "client wrote a bare LF");
        if offset >= data.len() || client.is_finished() {
            break;
        }
    }
    client.connection_closed();
    while let Some(event) = client.next_event() {
        if matches!(event, ClientEvent::TransactionDone(_)) {
            done += 1;
        }
    }
    assert_eq!(started, done, "every transaction reported once");
}

/// DATA framing: decoding is independent of where the input is split, and
/// encoding any body then decoding it gives the body's normal form.
pub fn data_framing(data: &[u8]) {
    let whole = decode(data, data.len());
    let split = usize::from(data.first().copied().unwrap_or(0)) % (data.len() + 1);
    assert_eq!(decode(data, split), whole, "split at {split}");

    let wire = BodyEncoder::to_vec(data, BodyMode::Data);
    assert_eq!(
        BodyEncoder::encoded_len(data, BodyMode::Data),
        wire.len() as u64
    );
    let (body, fault, end) = decode(&wire, wire.len());
    assert_eq!(fault, None);
    assert_eq!(end, Some(wire.len()));
    assert_eq!(body, BodyEncoder::to_vec(data, BodyMode::Bdat));
}

type DecodeResult = (Vec<u8>, Option<super::data::DataFault>, Option<usize>);

fn decode(input: &[u8], split: usize) -> DecodeResult {
    let mut decoder = DataDecoder::new(u64::MAX);
    let mut body = Vec::new();
    let (first, second) = input.split_at(split.min(input.len()));
    let mut total = 0;
    for part in [first, second] {
        let mut offset = 0;
        while offset < part.len() {
            let step = decoder.decode(part.get(offset..).unwrap_or_default());
            offset += step.consumed;
            body.extend_from_slice(step.chunk);
            if step.end {
                return (body, decoder.fault(), Some(total + offset));
            }
        }
        total += part.len();
    }
    (body, decoder.fault(), None)
}
