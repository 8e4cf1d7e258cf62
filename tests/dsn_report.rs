//! DSNs parsed back with mail-parser: structure, fields, NOTIFY and RET.

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use spate::delivery::bounce::EnhancedStatus;
use spate::delivery::dsn::{
    DSN_RETURN_DEFAULT_BYTES_MAX, Dsn, DsnAction, DsnEnvelope, DsnInput, Notify, RecipientOutcome,
    Ret, build_dsn,
};

const NOW: i64 = 1_795_817_098; // Fri, 27 Nov 2026 22:04:58 +0000

fn original(body_bytes: usize) -> Vec<u8> {
    let mut m = b"From: Sender <sender@origin.test>\r\nTo: rcpt@dest.test\r\n\
Subject: Hello there\r\nMessage-ID: <orig-1@origin.test>\r\n\r\n"
        .to_vec();
    while m.len() < body_bytes {
        m.extend_from_slice(b"a line of the original body text\r\n");
    }
    m
}

fn envelope(ret: Option<Ret>) -> DsnEnvelope {
    DsnEnvelope {
        reverse_path: "sender@origin.test".into(),
        envid: Some("ENV-42".into()),
        ret,
        arrival_unix: NOW - 3600,
    }
}

fn failed(rcpt: &str, notify: Option<Notify>) -> RecipientOutcome {
    RecipientOutcome {
        recipient: rcpt.into(),
        orcpt: Some(format!("rfc822;{rcpt}")),
        notify,
        action: DsnAction::Failed,
        status: EnhancedStatus::new(5, 1, 1),
        remote_mta: Some("mx.dest.test".into()),
        diagnostic: Some("550 5.1.1 <x>: user unknown\r\ninjected: header".into()),
        last_attempt_unix: NOW - 10,
        will_retry_until_unix: None,
    }
}

fn delayed(rcpt: &str, notify: Option<Notify>) -> RecipientOutcome {
    RecipientOutcome {
        action: DsnAction::Delayed,
        status: EnhancedStatus::new(4, 2, 2),
        diagnostic: Some("452 4.2.2 mailbox full".into()),
        will_retry_until_unix: Some(NOW + 86_400),
        ..failed(rcpt, notify)
    }
}

fn build(env: &DsnEnvelope, rcpts: &[RecipientOutcome], orig: &[u8]) -> Option<Dsn> {
    build_dsn(&DsnInput {
        hostname: "mta.spate.test",
        envelope: env,
        recipients: rcpts,
        original: orig,
        now_unix: NOW,
        unique: "q1",
    })
}

fn sub_parts<'a>(msg: &'a Message<'a>) -> Vec<&'a MessagePart<'a>> {
    let root = msg.root_part();
    let ids = root.sub_parts().expect("multipart root");
    ids.iter()
        .map(|id| msg.parts.get(*id as usize).expect("part"))
        .collect()
}

fn ctype(part: &MessagePart<'_>) -> String {
    let ct = part.content_type().expect("content type");
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
}

/// The delivery-status fields, grouped: per-message first, then one group
/// per recipient.
fn status_groups(part: &MessagePart<'_>) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(part.contents()).replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| {
            g.lines()
                .map(|l| {
                    let (k, v) = l.split_once(':').expect("field line");
                    (k.trim().to_string(), v.trim().to_string())
                })
                .collect()
        })
        .collect()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn failure_dsn_structure_and_fields() {
    let orig = original(2000);
    let env = envelope(None);
    let dsn = build(&env, &[failed("rcpt@dest.test", None)], &orig).expect("dsn due");
    assert_eq!(dsn.reverse_path, "", "DSNs are sent from <>");
    assert_eq!(dsn.recipient, "sender@origin.test");
    assert_eq!(dsn.reported, 1);

    let msg = MessageParser::default()
        .parse(&dsn.message)
        .expect("parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(
        msg.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("MAILER-DAEMON@mta.spate.test")
    );
    assert_eq!(
        msg.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert!(
        msg.message_id()
            .is_some_and(|id| id.ends_with("@mta.spate.test"))
    );
    assert_eq!(msg.date().map(|d| d.to_timestamp()), Some(NOW));

    let parts = sub_parts(&msg);
    assert_eq!(parts.len(), 3);
    assert_eq!(ctype(parts[0]), "text/plain");
    assert!(
        parts[0]
            .text_contents()
            .is_some_and(|t| t.contains("rcpt@dest.test"))
    );
    assert_eq!(ctype(parts[1]), "message/delivery-status");
    assert_eq!(ctype(parts[2]), "message/rfc822");
    match &parts[2].body {
        PartType::Message(inner) => {
            assert_eq!(inner.subject(), Some("Hello there"));
            assert!(
                inner
                    .body_text(0)
                    .is_some_and(|b| b.contains("original body"))
            );
        }
        other => panic!("returned content not a message: {other:?}"),
    }

    let groups = status_groups(parts[1]);
    assert_eq!(groups.len(), 2);
    let per_msg = &groups[0];
    assert_eq!(field(per_msg, "Reporting-MTA"), Some("dns; mta.spate.test"));
    assert_eq!(field(per_msg, "Original-Envelope-Id"), Some("ENV-42"));
    assert!(field(per_msg, "Arrival-Date").is_some_and(|d| d.contains("21:04:58 +0000")));
    let r = &groups[1];
    assert_eq!(
        field(r, "Original-Recipient"),
        Some("rfc822;rcpt@dest.test")
    );
    assert_eq!(field(r, "Final-Recipient"), Some("rfc822; rcpt@dest.test"));
    assert_eq!(field(r, "Action"), Some("failed"));
    assert_eq!(field(r, "Status"), Some("5.1.1"));
    assert_eq!(field(r, "Remote-MTA"), Some("dns; mx.dest.test"));
    // CR/LF in the diagnostic cannot inject a field.
    assert_eq!(
        field(r, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <x>: user unknown  injected: header")
    );
    assert!(field(r, "injected").is_none());
    assert!(field(r, "Last-Attempt-Date").is_some());
    assert!(field(r, "Will-Retry-Until").is_none());
}

#[test]
fn ret_hdrs_full_and_default_size_cap() {
    let small = original(2000);
    let hdrs = build(
        &envelope(Some(Ret::Hdrs)),
        &[failed("a@d.test", None)],
        &small,
    )
    .expect("dsn");
    let msg = MessageParser::default()
        .parse(&hdrs.message)
        .expect("parses");
    let parts = sub_parts(&msg);
    assert_eq!(ctype(parts[2]), "text/rfc822-headers");
    let returned = String::from_utf8_lossy(parts[2].contents()).to_string();
    assert!(returned.contains("Subject: Hello there"));
    assert!(
        !returned.contains("original body"),
        "RET=HDRS returns no body"
    );

    let big = original(DSN_RETURN_DEFAULT_BYTES_MAX + 1000);
    let default = build(&envelope(None), &[failed("a@d.test", None)], &big).expect("dsn");
    let msg = MessageParser::default()
        .parse(&default.message)
        .expect("parses");
    assert_eq!(ctype(sub_parts(&msg)[2]), "text/rfc822-headers");
    assert!(
        default.message.len() < 10_000,
        "large message not returned whole"
    );

    let full = build(
        &envelope(Some(Ret::Full)),
        &[failed("a@d.test", None)],
        &big,
    )
    .expect("dsn");
    let msg = MessageParser::default()
        .parse(&full.message)
        .expect("parses");
    assert_eq!(ctype(sub_parts(&msg)[2]), "message/rfc822");
    assert!(full.message.len() > big.len());
}

#[test]
fn notify_rules_and_null_reverse_path() {
    let orig = original(500);
    let env = envelope(None);
    let never = Notify::parse("NEVER");
    let success_only = Notify::parse("SUCCESS");
    let fail_delay = Notify::parse("FAILURE,DELAY");
    let delay_only = Notify::parse("DELAY");

    assert!(build(&env, &[failed("a@d.test", never)], &orig).is_none());
    assert!(build(&env, &[failed("a@d.test", success_only)], &orig).is_none());
    assert!(build(&env, &[failed("a@d.test", delay_only)], &orig).is_none());
    assert!(build(&env, &[failed("a@d.test", fail_delay)], &orig).is_some());
    // Delays are reported only when asked for.
    assert!(build(&env, &[delayed("a@d.test", None)], &orig).is_none());
    assert!(
        build(
            &env,
            &[delayed("a@d.test", Notify::parse("FAILURE"))],
            &orig
        )
        .is_none()
    );
    let delay = build(&env, &[delayed("a@d.test", delay_only)], &orig).expect("delay dsn");
    let msg = MessageParser::default()
        .parse(&delay.message)
        .expect("parses");
    let groups = status_groups(sub_parts(&msg)[1]);
    assert_eq!(field(&groups[1], "Action"), Some("delayed"));
    assert_eq!(field(&groups[1], "Status"), Some("4.2.2"));
    assert!(field(&groups[1], "Will-Retry-Until").is_some_and(|d| d.contains("2026")));

    // Only recipients whose NOTIFY asks are reported.
    let mixed = build(
        &env,
        &[
            failed("quiet@d.test", never),
            failed("loud@d.test", None),
            delayed("later@d.test", None),
        ],
        &orig,
    )
    .expect("dsn");
    assert_eq!(mixed.reported, 1);
    let msg = MessageParser::default()
        .parse(&mixed.message)
        .expect("parses");
    let groups = status_groups(sub_parts(&msg)[1]);
    assert_eq!(groups.len(), 2);
    assert_eq!(
        field(&groups[1], "Final-Recipient"),
        Some("rfc822; loud@d.test")
    );

    // Never a DSN to the null reverse path.
    let null = DsnEnvelope {
        reverse_path: String::new(),
        ..envelope(None)
    };
    assert!(build(&null, &[failed("a@d.test", None)], &orig).is_none());
}

#[test]
fn boundary_never_collides_with_content() {
    let mut orig = original(200);
    orig.extend_from_slice(format!("--spate-dsn-{NOW}-q1\r\n").as_bytes());
    let dsn = build(&envelope(None), &[failed("a@d.test", None)], &orig).expect("dsn");
    let msg = MessageParser::default()
        .parse(&dsn.message)
        .expect("parses");
    let parts = sub_parts(&msg);
    assert_eq!(parts.len(), 3);
    assert_eq!(ctype(parts[2]), "message/rfc822");
}
