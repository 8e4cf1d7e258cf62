//! Server session tests: dialogues, pipelining, decisions, limits, BDAT,
//! STARTTLS, AUTH, smuggling, and every-split-point equivalence.

use super::*;
use crate::smtp::address::ForwardPath;

/// An owned copy of a `ServerEvent`, so runs can be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Helo(String, bool),
    Mail(String),
    Rcpt(String),
    DataStart,
    Data(Vec<u8>),
    Complete,
    Aborted(DataFault),
    StartTls,
    Auth(String, String),
    Quit,
    Shutdown(ShutdownReason),
}

fn own(event: &ServerEvent<'_>) -> Ev {
    match event {
        ServerEvent::Helo { name, extended } => Ev::Helo(name.clone(), *extended),
        ServerEvent::MailFrom(m) => Ev::Mail(m.reverse_path.to_string()),
        ServerEvent::RcptTo(r) => Ev::Rcpt(r.forward_path.to_string()),
        ServerEvent::DataStart => Ev::DataStart,
        ServerEvent::Data(chunk) => Ev::Data(chunk.to_vec()),
        ServerEvent::MessageComplete => Ev::Complete,
        ServerEvent::MessageAborted(f) => Ev::Aborted(*f),
        ServerEvent::StartTls => Ev::StartTls,
        ServerEvent::Auth(a) => Ev::Auth(a.username.clone(), a.password.clone()),
        ServerEvent::Quit => Ev::Quit,
        ServerEvent::Shutdown(r) => Ev::Shutdown(*r),
    }
}

/// Policy for decisions: `None` accepts, `Some(reply)` answers with it.
type Policy<'p> = &'p mut dyn FnMut(&Ev) -> Option<Reply>;

fn accept_all(_: &Ev) -> Option<Reply> {
    None
}

/// Feeds `parts` in order, answering decisions with `policy`; stops at Quit,
/// Shutdown or StartTls. Data events are merged so runs with different
/// splits compare equal.
fn drive(session: &mut ServerSession, parts: &[&[u8]], policy: Policy<'_>) -> (String, Vec<Ev>) {
    let mut events: Vec<Ev> = Vec::new();
    let mut out = session.take_output();
    'parts: for part in parts {
        let mut offset = 0;
        loop {
            let step = match session.receive(&part[offset..]) {
                Ok(step) => step,
                Err(error) => panic!("usage error {error:?}"),
            };
            assert!(step.consumed <= part.len() - offset);
            offset += step.consumed;
            let Some(event) = step.event else { break };
            let ev = own(&event);
            let decision = matches!(
                ev,
                Ev::Helo(..) | Ev::Mail(_) | Ev::Rcpt(_) | Ev::Complete | Ev::Auth(..)
            );
            if decision {
                match policy(&ev) {
                    None => session.accept().unwrap(),
                    Some(reply) if reply.is_positive() => session.accept_with(reply).unwrap(),
                    Some(reply) => session.reject(reply).unwrap(),
                }
            }
            let stop = matches!(ev, Ev::Quit | Ev::Shutdown(_) | Ev::StartTls);
            if matches!(ev, Ev::Aborted(_)) && matches!(events.last(), Some(Ev::Data(_))) {
                // chunks before an abort are discarded by contract; how many
                // arrived first depends on where the input was split
                events.pop();
            }
            match (events.last_mut(), ev) {
                (Some(Ev::Data(prev)), Ev::Data(more)) => prev.extend(more),
                (_, Ev::Data(more)) if more.is_empty() => {}
                (_, ev) => events.push(ev),
            }
            if stop {
                break 'parts;
            }
        }
    }
    out.extend(session.take_output());
    (String::from_utf8_lossy(&out).into_owned(), events)
}

fn session() -> ServerSession {
    ServerSession::new(ServerConfig::new("mx.example"))
}

fn run(input: &[u8]) -> (String, Vec<Ev>) {
    drive(&mut session(), &[input], &mut accept_all)
}

/// Reply codes in order, for compact assertions.
fn codes(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

const EHLO_REPLY: &str = "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n250 HELP\r\n";

#[test]
fn rfc5321_d1_dialogue() {
    // RFC 5321 appendix D.1, with Brown refused by the caller.
    let input = b"EHLO bar.com\r\nMAIL FROM:<Smith@bar.com>\r\nRCPT TO:<Jones@foo.com>\r\n\
RCPT TO:<Green@foo.com>\r\nRCPT TO:<Brown@foo.com>\r\nDATA\r\nBlah blah blah...\r\n...etc. etc. etc.\r\n.\r\nQUIT\r\n";
    let mut policy = |ev: &Ev| match ev {
        Ev::Rcpt(r) if r.contains("Green") => {
            Some(Reply::with_status(550, (5, 1, 1), "No such user here"))
        }
        _ => None,
    };
    let (out, events) = drive(&mut session(), &[input], &mut policy);
    let expected = format!(
        "220 mx.example ESMTP spate\r\n{EHLO_REPLY}250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 No such user here\r\n\
250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 OK queued\r\n221 2.0.0 Bye\r\n"
    );
    assert_eq!(out, expected);
    assert_eq!(
        events,
        vec![
            Ev::Helo("bar.com".into(), true),
            Ev::Mail("<Smith@bar.com>".into()),
            Ev::Rcpt("<Jones@foo.com>".into()),
            Ev::Rcpt("<Green@foo.com>".into()),
            Ev::Rcpt("<Brown@foo.com>".into()),
            Ev::DataStart,
            Ev::Data(b"Blah blah blah...\r\n..etc. etc. etc.\r\n".to_vec()),
            Ev::Complete,
            Ev::Quit,
        ]
    );
}

#[test]
fn whole_pipelined_batch_in_one_packet() {
    let input = b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nRCPT TO:<e@d>\r\nDATA\r\n";
    let (out, events) = run(input);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 End"
        ]
    );
    assert_eq!(events.last(), Some(&Ev::DataStart));
}

/// Inputs for the split-point test: each exercises a different path.
fn split_inputs() -> Vec<Vec<u8>> {
    vec![
        b"EHLO c\r\nMAIL FROM:<a@c> SIZE=10\r\nRCPT TO:<b@d>\r\nDATA\r\nx\r\n..y\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n".to_vec(),
        b"HELO c\nMAIL FROM:<>\r\nRCPT TO:<b@d>\r\nDATA\r\nsmuggle\n.\nMAIL FROM:<x@y>\r\n.\r\nQUIT\r\n".to_vec(),
        b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nBDAT 7\r\nab\r\n.\r\nBDAT 3 LAST\r\n\n\r\rVRFY x\r\nBDAT 1\r\nzQUIT\r\n".to_vec(),
        b"EHLO c\r\nFOO\r\nMAIL\r\nRCPT TO:<x@y>\r\nDATA\r\nHELP\r\nQUIT\r\n".to_vec(),
    ]
}

#[test]
fn every_split_point_gives_identical_replies_and_events() {
    for input in split_inputs() {
        let expected = run(&input);
        assert!(expected.1.contains(&Ev::Quit), "{expected:?}");
        for split in 0..=input.len() {
            let got = drive(
                &mut session(),
                &[&input[..split], &input[split..]],
                &mut accept_all,
            );
            assert_eq!(
                got,
                expected,
                "split at {split} of {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        // and byte by byte
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(drive(&mut session(), &bytes, &mut accept_all), expected);
    }
}

#[test]
fn decision_blocks_pipelined_input() {
    let mut s = session();
    s.take_output();
    let input = b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\n";
    let step = s.receive(input).unwrap();
    assert_eq!(step.consumed, 8);
    assert!(matches!(step.event, Some(ServerEvent::Helo { .. })));
    assert_eq!(s.receive(&input[8..]), Err(UsageError::DecisionPending));
    assert!(
        s.take_output().is_empty(),
        "nothing answered before the decision"
    );
    s.accept().unwrap();
    let step = s.receive(&input[8..]).unwrap();
    assert_eq!(step.consumed, "MAIL FROM:<a@c>\r\n".len());
    // spool full
    s.reject(Reply::with_status(
        452,
        (4, 3, 1),
        "Insufficient system storage",
    ))
    .unwrap();
    let rest = &input[8 + step.consumed..];
    let step = s.receive(rest).unwrap();
    assert_eq!(
        step.event, None,
        "RCPT without MAIL is answered by the session"
    );
    let out = String::from_utf8(s.take_output()).unwrap();
    assert!(
        out.ends_with(
            "452 4.3.1 Insufficient system storage\r\n503 5.5.1 Need MAIL before RCPT\r\n"
        ),
        "{out}"
    );
    assert_eq!(s.accept(), Err(UsageError::NothingPending));
}

#[test]
fn message_answer_may_arrive_later_and_holds_pipelined_commands() {
    let mut s = session();
    let (_, events) = drive(
        &mut s,
        &[b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nDATA\r\n"],
        &mut accept_all,
    );
    assert_eq!(events.last(), Some(&Ev::DataStart));
    let input = b"hello\r\n.\r\nQUIT\r\n";
    let mut offset = 0;
    loop {
        let step = s.receive(&input[offset..]).unwrap();
        offset += step.consumed;
        if step.event == Some(ServerEvent::MessageComplete) {
            break;
        }
    }
    assert_eq!(offset, b"hello\r\n.\r\n".len());
    // The spool commit is in progress: no more input is processed.
    assert_eq!(
        s.receive(&input[offset..]),
        Err(UsageError::DecisionPending)
    );
    assert_eq!(
        s.accept_with(Reply::new(550, None, "x")),
        Err(UsageError::WrongReplyClass)
    );
    assert_eq!(
        s.reject(Reply::new(250, None, "x")),
        Err(UsageError::WrongReplyClass)
    );
    s.accept_with(Reply::with_status(250, (2, 0, 0), "queued as ABC"))
        .unwrap();
    let step = s.receive(&input[offset..]).unwrap();
    assert_eq!(step.event, Some(ServerEvent::Quit));
    let out = String::from_utf8(s.take_output()).unwrap();
    assert!(
        out.ends_with("250 2.0.0 queued as ABC\r\n221 2.0.0 Bye\r\n"),
        "{out}"
    );
    assert_eq!(s.receive(b"NOOP\r\n"), Err(UsageError::Closed));
}

#[test]
fn ordering_rules() {
    let (out, _) = run(b"MAIL FROM:<a@b>\r\nEHLO c\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nBDAT 0 LAST\r\nQUIT\r\n");
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "503 5.5.1",
            "250 HELP",
            "503 5.5.1",
            "503 5.5.1",
            "250 2.1.0",
            "503 5.5.1",
            "554 5.5.1",
            "554 5.5.1",
            "221 2.0.0"
        ]
    );
}

#[test]
fn misc_commands() {
    let (out, _) = run(b"VRFY joe\r\nHELP\r\nNOOP\r\nRSET\r\nSTARTTLS\r\nAUTH PLAIN\r\nQUIT\r\n");
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "252 2.5.0",
            "214 2.0.0",
            "250 2.0.0",
            "250 2.0.0",
            "502 5.5.1",
            "502 5.5.1",
            "221 2.0.0"
        ]
    );
}

#[test]
fn recipient_cap_and_size_limits() {
    let mut config = ServerConfig::new("mx.example");
    config.max_recipients = 2;
    config.max_message_bytes = 20;
    let mut s = ServerSession::new(config);
    let input = b"EHLO c\r\nMAIL FROM:<a@c> SIZE=21\r\nMAIL FROM:<a@c> SIZE=20\r\nRCPT TO:<1@d>\r\nRCPT TO:<2@d>\r\nRCPT TO:<3@d>\r\nDATA\r\n0123456789\r\n0123456789\r\n.\r\nQUIT\r\n";
    let (out, events) = drive(&mut s, &[input], &mut accept_all);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "552 5.3.4",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "452 4.5.3",
            "354 End",
            "552 5.3.4",
            "221 2.0.0"
        ]
    );
    assert!(out.contains("250-SIZE 20\r\n"));
    assert!(events.contains(&Ev::Aborted(DataFault::TooBig)));
    assert!(!events.contains(&Ev::Complete));
}

#[test]
fn long_lines() {
    let mut input = b"EHLO c\r\nNOOP ".to_vec();
    input.resize(input.len() + SMTP_COMMAND_LINE_BYTES_MAX + 10, b'x');
    input.extend_from_slice(b"\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nDATA\r\n");
    input.resize(
        input.len() + crate::limits::SMTP_DATA_LINE_BYTES_MAX + 1,
        b'y',
    );
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    let (out, events) = run(&input);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "500 5.5.2",
            "250 2.1.0",
            "250 2.1.5",
            "354 End",
            "500 5.5.2",
            "221 2.0.0"
        ]
    );
    assert!(events.contains(&Ev::Aborted(DataFault::LineTooLong)));
    // split inside the long command line too
    let (out2, _) = drive(
        &mut session(),
        &[&input[..100], &input[100..3000], &input[3000..]],
        &mut accept_all,
    );
    assert_eq!(out2, out);
}

#[test]
fn error_cap_closes_with_421() {
    let mut config = ServerConfig::new("mx.example");
    config.max_errors = 3;
    let mut s = ServerSession::new(config);
    let (out, events) = drive(&mut s, &[b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n"], &mut accept_all);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "500 5.5.1",
            "500 5.5.1",
            "500 5.5.1",
            "421 4.7.0"
        ]
    );
    assert_eq!(events, [Ev::Shutdown(ShutdownReason::TooManyErrors)]);
    assert_eq!(s.receive(b"NOOP\r\n"), Err(UsageError::Closed));
}

#[test]
fn caller_421_closes() {
    let mut s = session();
    let mut policy = |ev: &Ev| match ev {
        Ev::Mail(_) => Some(Reply::with_status(421, (4, 3, 2), "shutting down")),
        _ => None,
    };
    let (out, events) = drive(
        &mut s,
        &[b"EHLO c\r\nMAIL FROM:<a@c>\r\nNOOP\r\n"],
        &mut policy,
    );
    assert!(out.ends_with("421 4.3.2 shutting down\r\n"));
    assert_eq!(
        events.last(),
        Some(&Ev::Shutdown(ShutdownReason::ServiceClosing))
    );
}

#[test]
fn smuggling_probes_in_a_session() {
    // Each probe tries to end DATA early and smuggle a second message.
    let probes: &[&[u8]] = &[
        b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\0\n.\n",
    ];
    for probe in probes {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nDATA\r\nhello".to_vec();
        input.extend_from_slice(probe);
        input.extend_from_slice(
            b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@d>\r\nDATA\r\nforged\r\n.\r\nQUIT\r\n",
        );
        let (out, events) = run(&input);
        let name = String::from_utf8_lossy(probe);
        assert_eq!(
            codes(&out),
            [
                "220 mx.example",
                "250 HELP",
                "250 2.1.0",
                "250 2.1.5",
                "354 End",
                "554 5.6.0",
                "221 2.0.0"
            ],
            "{name:?}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Ev::Mail(m) if m.contains("evil"))),
            "{name:?}"
        );
        assert!(
            events.contains(&Ev::Aborted(DataFault::BareLineEnding)),
            "{name:?}"
        );
        assert!(!events.contains(&Ev::Complete), "{name:?}");
    }
}

#[test]
fn nul_in_data_is_content() {
    let (out, events) =
        run(b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nDATA\r\na\0b\r\n.\r\nQUIT\r\n");
    assert!(out.contains("250 2.0.0 OK queued"));
    assert!(events.contains(&Ev::Data(b"a\0b\r\n".to_vec())));
}

#[test]
fn bdat_chunks() {
    let input = b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nBDAT 9\r\nab\r\n.\r\n\nxBDAT 2 LAST\r\nyzDATA\r\nQUIT\r\n";
    let (out, events) = run(input);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "503 5.5.1",
            "221 2.0.0"
        ]
    );
    assert!(out.contains("250 2.0.0 9 octets received\r\n"));
    assert!(
        events.contains(&Ev::Data(b"ab\r\n.\r\n\nxyz".to_vec())),
        "{events:?}"
    );
    assert_eq!(events.iter().filter(|e| **e == Ev::Complete).count(), 1);
}

#[test]
fn bdat_refusals_stay_in_sync() {
    let mut config = ServerConfig::new("mx.example");
    config.max_message_bytes = 10;
    let input = b"EHLO c\r\nBDAT 3\r\nabcMAIL FROM:<a@c>\r\nRCPT TO:<b@d>\r\nBDAT 6\r\n123456BDAT 6 LAST\r\n123456NOOP\r\nBDAT 11\r\nNOOP\r\n";
    let (out, events) = drive(&mut ServerSession::new(config), &[input], &mut accept_all);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "503 5.5.1",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "552 5.3.4",
            "250 2.0.0",
            "552 5.3.4"
        ]
    );
    assert!(events.contains(&Ev::Aborted(DataFault::TooBig)));
    assert_eq!(
        events.last(),
        Some(&Ev::Shutdown(ShutdownReason::ChunkTooBig))
    );
}

#[test]
fn smtputf8_recipient_needs_smtputf8_mail() {
    let (out, events) = run("EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<jö@d>\r\nRSET\r\nMAIL FROM:<a@c> SMTPUTF8\r\nRCPT TO:<jö@d>\r\nQUIT\r\n".as_bytes());
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "250 2.1.0",
            "553 5.6.7",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "221 2.0.0"
        ]
    );
    assert!(events.contains(&Ev::Rcpt("<jö@d>".into())));
}

#[test]
fn helo_rejected_by_caller_keeps_state() {
    let mut policy = |ev: &Ev| match ev {
        Ev::Helo(name, _) if name == "bad" => Some(Reply::with_status(550, (5, 7, 1), "bad HELO")),
        _ => None,
    };
    let (out, _) = drive(
        &mut session(),
        &[b"HELO bad\r\nMAIL FROM:<a@b>\r\nHELO good\r\nMAIL FROM:<a@b>\r\n"],
        &mut policy,
    );
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "550 5.7.1",
            "503 5.5.1",
            "250 mx.example",
            "250 2.1.0"
        ]
    );
}

#[test]
fn accepted_envelope_is_visible() {
    let mut s = session();
    let mut policy = |ev: &Ev| match ev {
        Ev::Rcpt(r) if r.contains("no") => {
            Some(Reply::with_status(550, (5, 7, 1), "Relaying denied"))
        }
        _ => None,
    };
    drive(
        &mut s,
        &[b"EHLO c\r\nMAIL FROM:<a@c> BODY=8BITMIME\r\nRCPT TO:<yes@d>\r\nRCPT TO:<no@e>\r\n"],
        &mut policy,
    );
    let mail = s.mail_from().unwrap();
    assert_eq!(
        mail.params.body,
        Some(crate::smtp::command::BodyType::EightBitMime)
    );
    let recipients: Vec<_> = s
        .recipients()
        .iter()
        .map(|r| r.forward_path.clone())
        .collect();
    assert_eq!(
        recipients,
        [ForwardPath::Mailbox(crate::smtp::Mailbox::new("yes", "d"))]
    );
}

#[test]
fn shutdown_by_caller() {
    let mut s = session();
    s.shutdown(&Reply::with_status(421, (4, 4, 2), "Timeout"));
    assert!(s.is_closed());
    assert!(
        String::from_utf8(s.take_output())
            .unwrap()
            .ends_with("421 4.4.2 Timeout\r\n")
    );
}

mod tls_auth;

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::smtp::reply::parse_replies;

    const PIECES: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\n",
        b"MAIL FROM:<a@b>\r\n",
        b"MAIL FROM:<> SIZE=10\r\n",
        b"RCPT TO:<c@d>\r\n",
        b"RCPT TO:<Postmaster>\r\n",
        b"DATA\r\nx\r\n..y\r\n.\r\n",
        b"DATA\r\nbare\nlf\r\n.\r\n",
        b"BDAT 3\r\nabc",
        b"BDAT 2 LAST\r\n\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY x\r\n",
        b"FOO\r\n",
        b"AUTH PLAIN\r\n",
        b"\r\n",
    ];

    proptest! {
        #[test]
        fn random_pipelines_split_anywhere_give_the_same_dialogue(
            picks in prop::collection::vec(0..PIECES.len(), 1..16),
            split in any::<prop::sample::Index>(),
        ) {
            let mut input: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
            input.extend_from_slice(b"QUIT\r\n");
            let whole = run(&input);
            let at = split.index(input.len() + 1);
            let parts = drive(&mut session(), &[&input[..at], &input[at..]], &mut accept_all);
            prop_assert_eq!(&parts, &whole);
            let (replies, incomplete) = parse_replies(whole.0.as_bytes()).unwrap();
            prop_assert!(!incomplete);
            prop_assert!(replies.len() >= 2);
        }
    }
}
