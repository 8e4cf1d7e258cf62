//! Client session tests against scripted server bytes: fallbacks, failures,
//! split points.

use super::*;
use crate::smtp::reply::ReplyError;

/// Feeds bytes that must be consumed completely.
fn feed(client: &mut ClientSession, bytes: &[u8]) {
    assert_eq!(client.receive(bytes), bytes.len());
}

/// Feeds scripted server bytes part by part, acting on events after each
/// part; returns the events and what the client wrote.
fn scripted(
    config: ClientConfig,
    parts: &[&[u8]],
    act: impl Fn(&mut ClientSession, &ClientEvent),
) -> (Vec<ClientEvent>, String) {
    let mut client = ClientSession::new(config);
    let mut events = Vec::new();
    for part in parts {
        let used = client.receive(part);
        assert!(used <= part.len());
        while let Some(event) = client.next_event() {
            act(&mut client, &event);
            events.push(event);
        }
    }
    (events, String::from_utf8(client.take_output()).unwrap())
}

fn send_one(client: &mut ClientSession, event: &ClientEvent) {
    if *event == ClientEvent::Ready {
        client
            .send_transaction(&envelope(&["a@b.example", "c@b.example"]), b"x")
            .unwrap();
    }
}

#[test]
fn helo_fallback_after_ehlo_5xx() {
    let (events, wire) = scripted(
        ClientConfig::new("m"),
        &[b"220 hi\r\n502 5.5.1 no EHLO\r\n250 ok\r\n"],
        |_, _| {},
    );
    assert_eq!(events, [ClientEvent::Ready]);
    assert_eq!(wire, "EHLO m\r\nHELO m\r\n");
}

#[test]
fn greeting_refusal_and_malformed_replies() {
    let (events, wire) = scripted(ClientConfig::new("m"), &[b"554 go away\r\n"], |_, _| {});
    assert!(
        matches!(&events[..], [ClientEvent::Failed(ClientFailure::Greeting(r))] if r.code == 554)
    );
    assert_eq!(wire, "QUIT\r\n");
    let (events, _) = scripted(ClientConfig::new("m"), &[b"220 hi\r\nhello\r\n"], |_, _| {});
    assert_eq!(
        events,
        [ClientEvent::Failed(ClientFailure::MalformedReply(
            ReplyError::BadCode
        ))]
    );
}

#[test]
fn service_closing_mid_transaction() {
    let server: [&[u8]; 2] = [
        b"220 hi\r\n250-x\r\n250 PIPELINING\r\n",
        b"250 ok\r\n421 4.3.2 bye\r\n",
    ];
    let (events, wire) = scripted(ClientConfig::new("m"), &server, send_one);
    assert!(wire.contains("MAIL FROM:<sender@spate.example>\r\nRCPT TO:<a@b.example>\r\nRCPT TO:<c@b.example>\r\nDATA\r\n"));
    let [
        ClientEvent::Ready,
        ClientEvent::TransactionDone(result),
        ClientEvent::Failed(ClientFailure::ServiceClosing(r)),
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(r.code, 421);
    assert!(result.connection_failed);
    assert_eq!(result.outcome(0), RecipientOutcome::Unknown);
}

#[test]
fn peer_close_mid_transaction_and_after_quit() {
    let mut client = ClientSession::new(ClientConfig::new("m"));
    feed(&mut client, b"220 hi\r\n250 ok\r\n");
    assert_eq!(client.next_event(), Some(ClientEvent::Ready));
    client
        .send_transaction(&envelope(&["a@b.example"]), b"x")
        .unwrap();
    assert_eq!(
        client.send_transaction(&envelope(&["a@b.example"]), b"x"),
        Err(TransactionError::NotReady)
    );
    feed(&mut client, b"250 ok\r\n");
    client.connection_closed();
    assert!(
        matches!(client.next_event(), Some(ClientEvent::TransactionDone(r)) if r.connection_failed && r.mail.is_some())
    );
    assert_eq!(
        client.next_event(),
        Some(ClientEvent::Failed(ClientFailure::ConnectionClosed))
    );

    let mut client = ClientSession::new(ClientConfig::new("m"));
    feed(&mut client, b"220 hi\r\n250 ok\r\n");
    client.next_event();
    client.quit();
    client.connection_closed();
    assert_eq!(client.next_event(), Some(ClientEvent::Closed));
}

#[test]
fn unsolicited_reply_fails_and_starttls_drops_injected_bytes() {
    let (events, _) = scripted(
        ClientConfig::new("m"),
        &[b"220 hi\r\n250 ok\r\n250 extra\r\n"],
        |_, _| {},
    );
    assert!(matches!(
        &events[..],
        [
            ClientEvent::Ready,
            ClientEvent::Failed(ClientFailure::UnexpectedReply(_))
        ]
    ));

    let mut client = ClientSession::new(ClientConfig::new("m"));
    let server = b"220 hi\r\n250-x\r\n250 STARTTLS\r\n220 go\r\n250 injected\r\n";
    let used = client.receive(server);
    assert_eq!(&server[used..], b"250 injected\r\n");
    assert_eq!(client.next_event(), Some(ClientEvent::StartTls));
    client.tls_established();
    assert_eq!(
        String::from_utf8(client.take_output()).unwrap(),
        "EHLO m\r\nSTARTTLS\r\nEHLO m\r\n"
    );
}

#[test]
fn refuses_what_the_server_cannot_take() {
    let mut client = ClientSession::new(ClientConfig::new("m"));
    feed(&mut client, b"220 hi\r\n250-x\r\n250 SIZE 5\r\n");
    assert_eq!(client.next_event(), Some(ClientEvent::Ready));
    assert_eq!(
        client.send_transaction(&envelope(&["a@b.example"]), b"123456"),
        Err(TransactionError::TooBig {
            size_bytes: 8,
            max_bytes: 5
        })
    );
    assert_eq!(
        client.send_transaction(&envelope(&["ü@b.example"]), b"1"),
        Err(TransactionError::SmtpUtf8NotOffered)
    );
    assert_eq!(
        client.send_transaction(&envelope(&[]), b"1"),
        Err(TransactionError::NoRecipients)
    );
    client
        .send_transaction(&envelope(&["a@b.example"]), b"1")
        .unwrap();
    assert_eq!(
        String::from_utf8(client.take_output())
            .unwrap()
            .lines()
            .nth(1),
        Some("MAIL FROM:<sender@spate.example> SIZE=3")
    );
}

#[test]
fn replies_split_at_every_byte_give_the_same_events() {
    let greeting: &[u8] = b"220 hi\r\n250-x\r\n250-PIPELINING\r\n250 SIZE 100\r\n";
    let transaction: &[u8] =
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n250 2.0.0 queued\r\n";
    let reference = scripted(ClientConfig::new("m"), &[greeting, transaction], send_one);
    assert!(matches!(reference.0.last(), Some(ClientEvent::Ready)));
    assert!(
        reference
            .0
            .iter()
            .any(|e| matches!(e, ClientEvent::SendBody(BodyMode::Data, _)))
    );
    for split in 0..=greeting.len() {
        let parts = [&greeting[..split], &greeting[split..], transaction];
        assert_eq!(
            scripted(ClientConfig::new("m"), &parts, send_one),
            reference,
            "greeting split {split}"
        );
    }
    for split in 0..=transaction.len() {
        let parts = [greeting, &transaction[..split], &transaction[split..]];
        assert_eq!(
            scripted(ClientConfig::new("m"), &parts, send_one),
            reference,
            "split {split}"
        );
    }
}

#[test]
fn opportunistic_tls_refused_goes_on_in_cleartext() {
    let greeting: &[u8] = b"220 hi\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n";
    let (events, wire) = scripted(ClientConfig::new("m"), &[greeting], |_, _| {});
    assert_eq!(events, [ClientEvent::Ready]);
    assert_eq!(wire, "EHLO m\r\nSTARTTLS\r\n");
}

#[test]
fn pipelined_354_without_recipients_ends_empty_data() {
    let greeting: &[u8] = b"220 hi\r\n250-x\r\n250 PIPELINING\r\n";
    // MAIL refused, RCPTs refused, yet the server says 354 to DATA.
    let replies: &[u8] = b"550 5.7.1 no\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n354 go\r\n";
    let (events, wire) = scripted(
        ClientConfig::new("m"),
        &[greeting, replies, b"250 ok\r\n"],
        send_one,
    );
    assert!(wire.contains("DATA\r\n.\r\nMAIL"), "{wire}");
    assert!(!wire.contains("RSET"), "MAIL failed: no open transaction");
    let [
        ClientEvent::Ready,
        ClientEvent::TransactionDone(result),
        ClientEvent::Ready,
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(result.data, None);
    assert!(matches!(result.outcome(1), RecipientOutcome::Refused(r) if r.code == 550));
}

#[test]
fn rset_refused_fails_the_connection() {
    let greeting: &[u8] = b"220 hi\r\n250-x\r\n250 PIPELINING\r\n";
    let replies: &[u8] = b"250 ok\r\n550 no\r\n550 no\r\n554 no valid recipients\r\n500 what\r\n";
    let (events, wire) = scripted(ClientConfig::new("m"), &[greeting, replies], send_one);
    assert!(wire.ends_with("RSET\r\n"));
    assert!(
        matches!(events.last(), Some(ClientEvent::Failed(ClientFailure::Rset(r))) if r.code == 500)
    );
}

#[test]
fn a_2xx_to_data_is_not_a_delivery() {
    let greeting: &[u8] = b"220 hi\r\n250-x\r\n250 PIPELINING\r\n";
    let replies: &[u8] = b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n";
    let (events, _) = scripted(ClientConfig::new("m"), &[greeting, replies], send_one);
    let [
        ClientEvent::Ready,
        ClientEvent::TransactionDone(result),
        ClientEvent::Failed(ClientFailure::UnexpectedReply(_)),
    ] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert!(!result.any_delivered());
    assert!(result.connection_failed);
}
