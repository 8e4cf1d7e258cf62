//! Our client against our server, in memory, through the public API only:
//! arbitrary stored bodies (bare LFs, bare CRs, dots, NULs, 8-bit bytes)
//! must arrive as their CRLF-normal form over DATA and over BDAT, with or
//! without pipelining, however the bytes are cut into packets.

use proptest::prelude::*;
use spate::smtp::client::{ClientConfig, ClientEvent, ClientSession, Envelope, EnvelopeRecipient};
use spate::smtp::server::{ServerConfig, ServerEvent, ServerSession};
use spate::smtp::{BodyEncoder, BodyMode, Mailbox, ReversePath};

/// Delivers `bodies` over one connection; the network cuts every write
/// into packets of at most `packet` bytes. Returns what the server stored.
fn deliver(bodies: &[Vec<u8>], chunking: bool, pipelining: bool, packet: usize) -> Vec<Vec<u8>> {
    let mut config = ClientConfig::new("mta.example");
    config.use_chunking = chunking;
    config.use_pipelining = pipelining;
    let mut client = ClientSession::new(config);
    let mut server = ServerSession::new(ServerConfig::new("mx.example"));
    let envelope = Envelope {
        reverse_path: ReversePath::Mailbox(Mailbox::new("a", "mta.example")),
        recipients: vec![EnvelopeRecipient::new(Mailbox::new("b", "mx.example"))],
        ret: None,
        envid: None,
    };
    let mut queue = bodies.iter();
    let mut current: &[u8] = &[];
    let mut to_client = server.take_output();
    let mut to_server: Vec<u8> = Vec::new();
    let mut stored = Vec::new();
    let mut message = Vec::new();
    let mut delivered = 0;
    for _ in 0..10_000 {
        // one packet to the client
        let n = to_client.len().min(packet);
        let used = client.receive(&to_client[..n]);
        assert_eq!(used, n);
        to_client.drain(..n);
        while let Some(event) = client.next_event() {
            match event {
                ClientEvent::Ready => match queue.next() {
                    Some(body) => {
                        client.send_transaction(&envelope, body).unwrap();
                        current = body;
                    }
                    None => client.quit(),
                },
                ClientEvent::SendBody(mode, scan) => {
                    client.write_output_to(&mut to_server);
                    let body = BodyEncoder::scanned(current, mode, scan);
                    to_server.extend(body.slices().flatten());
                }
                ClientEvent::TransactionDone(result) => {
                    assert!(result.any_delivered(), "{result:?}");
                    delivered += 1;
                }
                ClientEvent::Closed => {
                    assert_eq!(delivered, bodies.len());
                    return stored;
                }
                other => panic!("{other:?}"),
            }
        }
        client.write_output_to(&mut to_server);
        // one packet to the server
        let n = to_server.len().min(packet);
        let mut offset = 0;
        // Keep calling while there are events, even once the packet is used
        // up: a finished BDAT chunk is reported on the next call.
        while !server.is_closed() {
            let step = server.receive(&to_server[offset..n]).unwrap();
            offset += step.consumed;
            let Some(event) = step.event else { break };
            match event {
                ServerEvent::DataStart => message.clear(),
                ServerEvent::Data(chunk) => message.extend_from_slice(chunk),
                ServerEvent::MessageComplete => {
                    stored.push(std::mem::take(&mut message));
                    server.accept().unwrap();
                }
                ServerEvent::Helo { .. } | ServerEvent::MailFrom(_) | ServerEvent::RcptTo(_) => {
                    server.accept().unwrap();
                }
                ServerEvent::Quit => {}
                other => panic!("{other:?}"),
            }
        }
        to_server.drain(..offset);
        to_client.extend(server.take_output());
    }
    panic!("dialogue did not finish");
}

fn normal_form(body: &[u8]) -> Vec<u8> {
    BodyEncoder::to_vec(body, BodyMode::Bdat)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_body_arrives_in_normal_form(
        bodies in prop::collection::vec(
            prop::collection::vec(prop::sample::select(b"a.\r\n\0\xff ".to_vec()), 0..200),
            1..4,
        ),
        chunking in any::<bool>(),
        pipelining in any::<bool>(),
        packet in 1usize..300,
    ) {
        let stored = deliver(&bodies, chunking, pipelining, packet);
        let expected: Vec<Vec<u8>> = bodies.iter().map(|b| normal_form(b)).collect();
        prop_assert_eq!(stored, expected);
    }
}

#[test]
fn large_message_in_small_packets() {
    let mut body = Vec::new();
    for i in 0..2000 {
        body.extend_from_slice(format!(".line {i} with a leading dot\n").as_bytes());
    }
    for chunking in [false, true] {
        let stored = deliver(std::slice::from_ref(&body), chunking, true, 1400);
        assert_eq!(stored, [normal_form(&body)]);
    }
}
