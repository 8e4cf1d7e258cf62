//! Client session tests: our client against our server in memory (pipelined,
//! lock-step, BDAT, STARTTLS, AUTH, reuse, RSET), and against scripted
//! servers for fallbacks and failures.

use super::*;
use crate::smtp::address::{Mailbox, ReversePath};
use crate::smtp::command::{Notify, Ret};
use crate::smtp::server::{ServerConfig, ServerEvent, ServerSession};

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        reverse_path: ReversePath::Mailbox(Mailbox::new("sender", "spate.example")),
        recipients: recipients
            .iter()
            .map(|r| {
                let (local, domain) = r.split_once('@').unwrap();
                EnvelopeRecipient::new(Mailbox::new(local, domain))
            })
            .collect(),
        ret: None,
        envid: None,
    }
}

/// Server decisions: `None` accepts.
type Policy = Box<dyn FnMut(&ServerEvent<'_>) -> Option<Reply>>;

struct Pair {
    client: ClientSession,
    server: ServerSession,
    policy: Policy,
    jobs: VecDeque<(Envelope, Vec<u8>)>,
    current_body: Vec<u8>,
    /// Messages as the server received them.
    received: Vec<Vec<u8>>,
    partial: Vec<u8>,
    /// Each client write (one per round).
    writes: Vec<Vec<u8>>,
    results: Vec<TransactionResult>,
    failures: Vec<ClientFailure>,
    closed: bool,
    starttls_rounds: usize,
}

impl Pair {
    fn new(client: ClientConfig, server: ServerConfig, jobs: Vec<(Envelope, Vec<u8>)>) -> Self {
        Self {
            client: ClientSession::new(client),
            server: ServerSession::new(server),
            policy: Box::new(|_| None),
            jobs: jobs.into(),
            current_body: Vec::new(),
            received: Vec::new(),
            partial: Vec::new(),
            writes: Vec::new(),
            results: Vec::new(),
            failures: Vec::new(),
            closed: false,
            starttls_rounds: 0,
        }
    }

    fn run(&mut self) {
        let mut to_client = self.server.take_output();
        for _ in 0..100 {
            let used = self.client.receive(&to_client);
            to_client.drain(..used);
            let mut to_server = Vec::new();
            loop {
                self.handle_events(&mut to_client, &mut to_server);
                // More transactions behind the ones in flight, when allowed.
                if self.client.transactions_in_flight() == 0 || !self.client.can_send_transaction()
                {
                    break;
                }
                let Some((envelope, body)) = self.jobs.pop_front() else {
                    break;
                };
                self.client.send_transaction(&envelope, &body).unwrap();
                self.current_body = body;
            }
            self.client.write_output_to(&mut to_server);
            if !to_server.is_empty() {
                self.writes.push(to_server.clone());
            }
            if self.client.is_finished() {
                return;
            }
            let mut offset = 0;
            while let Ok(step) = self.server.receive(&to_server[offset..]) {
                offset += step.consumed;
                let Some(event) = step.event else { break };
                match &event {
                    ServerEvent::Data(chunk) => self.partial.extend_from_slice(chunk),
                    ServerEvent::DataStart | ServerEvent::MessageAborted(_) => self.partial.clear(),
                    _ => {}
                }
                if matches!(event, ServerEvent::MessageComplete) {
                    self.received.push(std::mem::take(&mut self.partial));
                }
                let decision = matches!(
                    event,
                    ServerEvent::Helo { .. }
                        | ServerEvent::MailFrom(_)
                        | ServerEvent::RcptTo(_)
                        | ServerEvent::MessageComplete
                        | ServerEvent::Auth(_)
                );
                if decision {
                    match (self.policy)(&event) {
                        None => self.server.accept().unwrap(),
                        Some(reply) => self.server.reject(reply).unwrap(),
                    }
                }
                if matches!(event, ServerEvent::StartTls | ServerEvent::Quit) {
                    break;
                }
            }
            to_client.extend(self.server.take_output());
        }
        panic!("dialogue did not finish");
    }

    fn handle_events(&mut self, to_client: &mut Vec<u8>, to_server: &mut Vec<u8>) {
        while let Some(event) = self.client.next_event() {
            match event {
                ClientEvent::Ready => match self.jobs.pop_front() {
                    Some((envelope, body)) => {
                        self.client.send_transaction(&envelope, &body).unwrap();
                        self.current_body = body;
                    }
                    None => self.client.quit(),
                },
                ClientEvent::SendBody(mode, scan) => {
                    assert_eq!(scan, BodyScan::of(&self.current_body));
                    self.client.write_output_to(to_server);
                    for piece in BodyEncoder::scanned(&self.current_body, mode, scan) {
                        to_server.extend_from_slice(piece.bytes(&self.current_body));
                    }
                }
                ClientEvent::StartTls => {
                    to_client.clear(); // bytes before the handshake are dropped
                    self.server.tls_established().unwrap();
                    self.client.tls_established();
                    self.starttls_rounds += 1;
                }
                ClientEvent::TransactionDone(result) => self.results.push(result),
                ClientEvent::Failed(failure) => self.failures.push(failure),
                ClientEvent::Closed => self.closed = true,
            }
        }
    }

    /// The dialogue ended with QUIT and no failure.
    fn assert_clean(&self) {
        assert!(
            self.closed && self.failures.is_empty(),
            "{:?}",
            self.failures
        );
    }

    fn wire(&self) -> String {
        String::from_utf8_lossy(&self.writes.concat()).into_owned()
    }
}

fn reject_local(local: &'static str, reply: Reply) -> Policy {
    Box::new(move |event| match event {
        ServerEvent::RcptTo(r) if r.forward_path.to_string().contains(local) => Some(reply.clone()),
        _ => None,
    })
}

#[test]
fn pipelined_transactions_reuse_the_connection() {
    let body = b"Subject: t\r\n\r\n.dot\r\nbare\nlf\r\n".to_vec();
    let jobs = vec![
        (
            envelope(&["a@mx.example", "nobody@mx.example", "c@mx.example"]),
            body.clone(),
        ),
        (envelope(&["d@mx.example"]), b"second".to_vec()),
    ];
    let mut pair = Pair::new(
        ClientConfig::new("mta.example"),
        ServerConfig::new("mx.example"),
        jobs,
    );
    pair.policy = reject_local("nobody", Reply::with_status(550, (5, 1, 1), "No such user"));
    pair.run();
    pair.assert_clean();
    assert_eq!(pair.results.len(), 2);
    let first = &pair.results[0];
    assert!(matches!(first.outcome(0), RecipientOutcome::Delivered(r) if r.code == 250));
    assert!(matches!(first.outcome(1), RecipientOutcome::Refused(r) if r.code == 550));
    assert!(matches!(first.outcome(2), RecipientOutcome::Delivered(_)));
    assert_eq!(
        pair.received,
        [
            b"Subject: t\r\n\r\n.dot\r\nbare\r\nlf\r\n".to_vec(),
            b"second\r\n".to_vec()
        ]
    );
    let wire = pair.wire();
    assert!(
        !wire.contains("RSET"),
        "no RSET after a successful transaction"
    );
    // one write for MAIL + RCPTs + DATA
    let batch = pair.writes.iter().find(|w| w.starts_with(b"MAIL")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(batch),
        "MAIL FROM:<sender@spate.example> SIZE=30\r\nRCPT TO:<a@mx.example>\r\nRCPT TO:<nobody@mx.example>\r\nRCPT TO:<c@mx.example>\r\nDATA\r\n"
    );
    assert!(wire.contains("\r\n..dot\r\n"), "dot-stuffed on the wire");
    assert!(wire.ends_with("QUIT\r\n"));
    assert!(pair.client.capabilities().pipelining && pair.client.capabilities().dsn);
}

#[test]
fn lock_step_without_pipelining() {
    let mut config = ClientConfig::new("mta.example");
    config.use_pipelining = false;
    let jobs = vec![(
        envelope(&["a@mx.example", "b@mx.example"]),
        b"x\r\n".to_vec(),
    )];
    let mut pair = Pair::new(config, ServerConfig::new("mx.example"), jobs);
    pair.run();
    assert_eq!(pair.received, [b"x\r\n".to_vec()]);
    for write in &pair.writes {
        let commands = write
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert!(
            commands == 1 || write.ends_with(b".\r\n"),
            "{:?}",
            String::from_utf8_lossy(write)
        );
    }
    assert!(pair.results[0].any_delivered());
}

#[test]
fn bdat_when_chunking_is_offered() {
    let mut config = ClientConfig::new("mta.example");
    config.use_chunking = true;
    let body = b"a\n.\nb\xff".to_vec();
    let jobs = vec![
        (envelope(&["a@mx.example"]), body.clone()),
        (envelope(&["b@mx.example"]), Vec::new()),
    ];
    let mut pair = Pair::new(
        config.clone(),
        ServerConfig::new("mx.example"),
        jobs.clone(),
    );
    pair.run();
    assert_eq!(pair.received, [b"a\r\n.\r\nb\xff\r\n".to_vec(), Vec::new()]);
    let wire = pair.wire();
    assert!(wire.contains("BODY=8BITMIME"));
    assert!(wire.contains("BDAT 10 LAST\r\n"), "{wire}");
    assert!(wire.contains("BDAT 0 LAST\r\n"));
    assert!(pair.results.iter().all(TransactionResult::any_delivered));
    // lock-step BDAT
    config.use_pipelining = false;
    let mut pair = Pair::new(config, ServerConfig::new("mx.example"), jobs);
    pair.run();
    assert_eq!(pair.received.len(), 2);
}

fn pipelining_config(in_flight: usize) -> ClientConfig {
    let mut config = ClientConfig::new("mta.example");
    config.use_chunking = true;
    config.max_transactions_in_flight = in_flight;
    config
}

#[test]
fn transactions_pipeline_behind_each_other_with_chunking() {
    let jobs = (0..5)
        .map(|i| {
            (
                envelope(&[&format!("r{i}@mx.example")]),
                format!("body {i}").into_bytes(),
            )
        })
        .collect();
    let mut pair = Pair::new(pipelining_config(3), ServerConfig::new("mx.example"), jobs);
    pair.run();
    pair.assert_clean();
    assert_eq!(pair.results.len(), 5);
    assert!(
        pair.results
            .iter()
            .all(|r| r.any_delivered() && !r.connection_failed)
    );
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("body {i}\r\n").into_bytes())
        .collect();
    assert_eq!(pair.received, bodies);
    // The first batch is three whole transactions in one write; the second
    // RSET and MAIL of each follow-up lead it.
    let first = pair.writes.iter().find(|w| w.starts_with(b"MAIL")).unwrap();
    let first = String::from_utf8_lossy(first);
    assert_eq!(first.matches("MAIL FROM").count(), 3, "{first}");
    assert_eq!(first.matches("RSET\r\nMAIL FROM").count(), 2, "{first}");
    assert!(first.ends_with("BDAT 8 LAST\r\nbody 2\r\n"), "{first}");
    assert_eq!(pair.client.transactions_in_flight(), 0);
}

#[test]
fn one_transaction_in_flight_without_chunking_or_when_configured() {
    let mut without_chunking = pipelining_config(4);
    without_chunking.use_chunking = false;
    for config in [pipelining_config(1), without_chunking] {
        let jobs = (0..3)
            .map(|i| (envelope(&[&format!("r{i}@mx.example")]), b"x".to_vec()))
            .collect();
        let mut pair = Pair::new(config, ServerConfig::new("mx.example"), jobs);
        pair.run();
        assert_eq!(pair.received.len(), 3);
        for write in &pair.writes {
            let text = String::from_utf8_lossy(write);
            assert!(text.matches("MAIL FROM").count() <= 1, "{text}");
        }
        assert!(!pair.wire().contains("RSET"));
    }
}

#[test]
fn a_refused_transaction_does_not_spoil_those_pipelined_behind_it() {
    let jobs = vec![
        (envelope(&["ok1@mx.example"]), b"1".to_vec()),
        (envelope(&["nobody@mx.example"]), b"2".to_vec()),
        (envelope(&["ok3@mx.example"]), b"3".to_vec()),
        (envelope(&["nobody@mx.example"]), b"4".to_vec()),
    ];
    let mut pair = Pair::new(pipelining_config(4), ServerConfig::new("mx.example"), jobs);
    pair.policy = reject_local("nobody", Reply::with_status(550, (5, 1, 1), "No such user"));
    pair.run();
    pair.assert_clean();
    let delivered: Vec<bool> = pair
        .results
        .iter()
        .map(TransactionResult::any_delivered)
        .collect();
    assert_eq!(delivered, [true, false, true, false]);
    assert!(matches!(pair.results[1].outcome(0), RecipientOutcome::Refused(r) if r.code == 550));
    assert_eq!(pair.received, [b"1\r\n".to_vec(), b"3\r\n".to_vec()]);
    // The last one left MAIL open with nothing behind it: one plain RSET
    // before QUIT, besides the three leading the follow-ups.
    let wire = pair.wire();
    assert_eq!(wire.matches("RSET").count(), 4, "{wire}");
    assert!(wire.ends_with("RSET\r\nQUIT\r\n"), "{wire}");
}

#[test]
fn a_421_fails_every_transaction_in_flight() {
    let mut client = ClientSession::new(pipelining_config(4));
    let greeting = b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
    assert_eq!(client.receive(greeting), greeting.len());
    assert_eq!(client.next_event(), Some(ClientEvent::Ready));
    for i in 0..3 {
        assert!(client.can_send_transaction());
        client
            .send_transaction(&envelope(&[&format!("r{i}@mx.example")]), b"x")
            .unwrap();
        assert_eq!(
            client.next_event(),
            Some(ClientEvent::SendBody(BodyMode::Bdat, BodyScan::of(b"x")))
        );
    }
    assert_eq!(client.transactions_in_flight(), 3);
    let replies = b"250 mail\r\n250 rcpt\r\n250 queued\r\n250 reset\r\n421 4.7.0 closing\r\n";
    assert_eq!(client.receive(replies), replies.len());
    let mut events = Vec::new();
    while let Some(event) = client.next_event() {
        events.push(event);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    let done: Vec<(bool, bool)> = events[..3]
        .iter()
        .map(|e| match e {
            ClientEvent::TransactionDone(r) => (r.any_delivered(), r.connection_failed),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(done, [(true, false), (false, true), (false, true)]);
    assert!(
        matches!(&events[3], ClientEvent::Failed(ClientFailure::ServiceClosing(r)) if r.code == 421)
    );
    assert!(!client.can_send_transaction());
}

/// Each SendBody carries its transaction's body scan, the one pass that
/// also decided the size and the BODY parameter: pipelined BDAT (several in
/// flight), BDAT after the last RCPT reply, and DATA after 354.
#[test]
fn send_body_carries_its_transactions_scan() {
    let bodies: [&[u8]; 2] = [b"bare\nline\r\n", b"caf\xc3\xa9\r\n"];
    let scans = bodies.map(BodyScan::of);
    assert_ne!(scans[0], scans[1]);

    let mut client = ClientSession::new(pipelining_config(4));
    let greeting =
        b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n250 CHUNKING\r\n";
    assert_eq!(client.receive(greeting), greeting.len());
    assert_eq!(client.next_event(), Some(ClientEvent::Ready));
    for (body, scan) in bodies.iter().zip(scans) {
        client
            .send_transaction(&envelope(&["r@mx.example"]), body)
            .unwrap();
        assert_eq!(
            client.next_event(),
            Some(ClientEvent::SendBody(BodyMode::Bdat, scan))
        );
    }
    // The sizes count the repaired line end; 8BITMIME for the second only.
    let mut wire = Vec::new();
    client.write_output_to(&mut wire);
    let wire = String::from_utf8_lossy(&wire);
    assert!(
        wire.contains("MAIL FROM:<sender@spate.example> SIZE=12\r\n"),
        "{wire}"
    );
    assert!(wire.contains("BDAT 12 LAST\r\n"), "{wire}");
    assert!(wire.contains("SIZE=7 BODY=8BITMIME\r\n"), "{wire}");
    assert!(wire.contains("BDAT 7 LAST\r\n"), "{wire}");

    // Without pipelining: BDAT once the RCPT reply came, DATA after 354.
    for (chunking, mode, replies) in [
        (true, BodyMode::Bdat, &b"250 mail\r\n250 rcpt\r\n"[..]),
        (false, BodyMode::Data, b"250 mail\r\n250 rcpt\r\n354 go\r\n"),
    ] {
        let mut config = ClientConfig::new("mta.example");
        config.use_pipelining = false;
        config.use_chunking = chunking;
        let mut client = ClientSession::new(config);
        let caps = if chunking {
            "250-8BITMIME\r\n250 CHUNKING"
        } else {
            "250 8BITMIME"
        };
        let greeting = format!("220 mx\r\n250-mx\r\n{caps}\r\n");
        assert_eq!(client.receive(greeting.as_bytes()), greeting.len());
        assert_eq!(client.next_event(), Some(ClientEvent::Ready));
        client
            .send_transaction(&envelope(&["r@mx.example"]), bodies[1])
            .unwrap();
        assert_eq!(client.next_event(), None);
        assert_eq!(client.receive(replies), replies.len());
        assert_eq!(
            client.next_event(),
            Some(ClientEvent::SendBody(mode, scans[1]))
        );
    }
}

#[test]
fn rset_after_a_failed_transaction_only() {
    let jobs = vec![
        (envelope(&["nobody@mx.example"]), b"1".to_vec()),
        (envelope(&["a@mx.example"]), b"2".to_vec()),
    ];
    let mut pair = Pair::new(
        ClientConfig::new("mta.example"),
        ServerConfig::new("mx.example"),
        jobs,
    );
    pair.policy = reject_local("nobody", Reply::with_status(550, (5, 1, 1), "No such user"));
    pair.run();
    let wire = pair.wire();
    assert_eq!(wire.matches("RSET").count(), 1, "{wire}");
    let failed = &pair.results[0];
    assert_eq!(failed.data.as_ref().map(|r| r.code), Some(554));
    assert!(matches!(failed.outcome(0), RecipientOutcome::Refused(r) if r.code == 550));
    assert!(pair.results[1].any_delivered());
    assert_eq!(pair.received, [b"2\r\n".to_vec()]);
}

#[test]
fn mail_refused_needs_no_rset() {
    let jobs = vec![(envelope(&["a@mx.example", "b@mx.example"]), b"1".to_vec())];
    let mut pair = Pair::new(
        ClientConfig::new("mta.example"),
        ServerConfig::new("mx.example"),
        jobs,
    );
    pair.policy = Box::new(|event| {
        matches!(event, ServerEvent::MailFrom(_))
            .then(|| Reply::with_status(452, (4, 3, 1), "Insufficient system storage"))
    });
    pair.run();
    let result = &pair.results[0];
    for index in 0..2 {
        assert!(matches!(result.outcome(index), RecipientOutcome::Refused(r) if r.is_transient()));
    }
    assert!(!pair.wire().contains("RSET"));
    assert!(pair.closed);
}

#[test]
fn starttls_step_then_auth() {
    let mut server = ServerConfig::new("mx.example");
    server.starttls_available = true;
    server.auth_available = true;
    server.require_auth = true;
    let mut client = ClientConfig::new("mta.example");
    client.starttls = StartTlsPolicy::Required;
    client.auth = Some(ClientCredentials {
        username: "bob".into(),
        password: "pw".into(),
    });
    let jobs = vec![(envelope(&["a@mx.example"]), b"x".to_vec())];
    let mut pair = Pair::new(client.clone(), server.clone(), jobs.clone());
    pair.policy = Box::new(|event| match event {
        ServerEvent::Auth(a) if a.username == "bob" && a.password == "pw" => None,
        ServerEvent::Auth(_) => Some(Reply::with_status(535, (5, 7, 8), "Authentication failed")),
        _ => None,
    });
    pair.run();
    assert_eq!(pair.starttls_rounds, 1);
    assert!(pair.client.tls_active());
    assert!(!pair.client.capabilities().starttls);
    assert_eq!(pair.server.authenticated_user(), Some("bob"));
    assert_eq!(pair.received.len(), 1);
    assert_eq!(pair.wire().matches("EHLO").count(), 2);

    // wrong password: the connection fails with the server's reply
    client.auth = Some(ClientCredentials {
        username: "bob".into(),
        password: "nope".into(),
    });
    let mut pair2 = Pair::new(client, server, jobs);
    pair2.policy = pair.policy;
    pair2.run();
    assert!(matches!(&pair2.failures[..], [ClientFailure::Auth(r)] if r.code == 535));
    assert!(pair2.received.is_empty());
}

#[test]
fn required_tls_not_offered_fails() {
    let mut client = ClientConfig::new("mta.example");
    client.starttls = StartTlsPolicy::Required;
    let mut pair = Pair::new(client, ServerConfig::new("mx.example"), vec![]);
    pair.run();
    assert_eq!(pair.failures, [ClientFailure::StartTlsNotOffered]);
    assert!(pair.wire().ends_with("QUIT\r\n"));
}

#[test]
fn dsn_and_smtputf8_parameters_when_offered() {
    let mut env = envelope(&["jö@mx.example"]);
    env.ret = Some(Ret::Headers);
    env.envid = Some("id 1".into());
    env.recipients[0].notify = Some(Notify::Never);
    let mut pair = Pair::new(
        ClientConfig::new("mta.example"),
        ServerConfig::new("mx.example"),
        vec![(env, b"x".to_vec())],
    );
    pair.run();
    let wire = pair.wire();
    assert!(
        wire.contains("MAIL FROM:<sender@spate.example> SIZE=3 SMTPUTF8 RET=HDRS ENVID=id+201\r\n"),
        "{wire}"
    );
    assert!(wire.contains("RCPT TO:<jö@mx.example> NOTIFY=NEVER\r\n"));
    assert!(pair.results[0].any_delivered());
}

mod scripted;
