//! Tests for the command codec: parsing, refusals with their replies, and
//! encode→parse round trips.

use super::*;
use crate::smtp::address::Mailbox;

fn parse(line: &str) -> Result<Command, CommandError> {
    Command::parse(line.as_bytes())
}

fn mailbox(local: &str, domain: &str) -> Mailbox {
    Mailbox::new(local, domain)
}

#[test]
fn simple_verbs_are_case_insensitive() {
    assert_eq!(
        parse("ehlo client.example").unwrap(),
        Command::Ehlo("client.example".into())
    );
    assert_eq!(parse("HELO x").unwrap(), Command::Helo("x".into()));
    assert_eq!(parse("data").unwrap(), Command::Data);
    assert_eq!(parse("Rset").unwrap(), Command::Rset);
    assert_eq!(parse("NOOP anything").unwrap(), Command::Noop);
    assert_eq!(parse("QUIT").unwrap(), Command::Quit);
    assert_eq!(parse("STARTTLS").unwrap(), Command::StartTls);
    assert_eq!(parse("HELP").unwrap(), Command::Help(String::new()));
    assert_eq!(parse("VRFY joe").unwrap(), Command::Vrfy("joe".into()));
    assert_eq!(
        parse("BDAT 100 last").unwrap(),
        Command::Bdat {
            size_bytes: 100,
            last: true
        }
    );
    assert_eq!(
        parse("BDAT 0").unwrap(),
        Command::Bdat {
            size_bytes: 0,
            last: false
        }
    );
}

#[test]
fn mail_with_every_parameter() {
    let cmd = parse(
        "MAIL FROM:<jöe@exämple.com> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B314 AUTH=<>",
    )
    .unwrap();
    let Command::Mail(mail) = cmd else {
        panic!("not MAIL")
    };
    assert_eq!(
        mail.reverse_path,
        ReversePath::Mailbox(mailbox("jöe", "exämple.com"))
    );
    assert_eq!(
        mail.params,
        MailParams {
            size_bytes: Some(1000),
            body: Some(BodyType::EightBitMime),
            smtputf8: true,
            ret: Some(Ret::Headers),
            envid: Some("QQ+314".into()),
            auth: Some("<>".into()),
        }
    );
    // space after the colon is tolerated (real clients send it)
    assert!(matches!(parse("mail from: <>").unwrap(), Command::Mail(_)));
}

#[test]
fn rcpt_with_dsn_parameters() {
    let Command::Rcpt(rcpt) =
        parse("RCPT TO:<a@b.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bx@b.example").unwrap()
    else {
        panic!("not RCPT")
    };
    assert_eq!(
        rcpt.forward_path,
        ForwardPath::Mailbox(mailbox("a", "b.example"))
    );
    assert_eq!(
        rcpt.params.notify,
        Some(Notify::On {
            success: true,
            failure: false,
            delay: true
        })
    );
    assert_eq!(
        rcpt.params.orcpt,
        Some(Orcpt {
            addr_type: "rfc822".into(),
            address: "a+x@b.example".into()
        })
    );
    let Command::Rcpt(rcpt) = parse("RCPT TO:<Postmaster> NOTIFY=never").unwrap() else {
        panic!("not RCPT")
    };
    assert_eq!(rcpt.forward_path, ForwardPath::Postmaster);
    assert_eq!(rcpt.params.notify, Some(Notify::Never));
}

#[test]
fn refusals_map_to_the_right_replies() {
    let cases: &[(&str, u16, &str)] = &[
        ("FOO", 500, "5.5.1"),
        ("MAILX FROM:<>", 500, "5.5.1"),
        ("EHLO", 501, "5.5.4"),
        ("HELO a b", 501, "5.5.4"),
        ("MAIL TO:<a@b>", 501, "5.5.4"),
        ("MAIL FROM:a@b", 501, "5.1.7"),
        ("MAIL FROM:<a@@b>", 501, "5.1.7"),
        ("RCPT TO:<a>", 501, "5.1.3"),
        ("MAIL FROM:<a@b> FOO=1", 555, "5.5.4"),
        ("MAIL FROM:<a@b> BODY=BINARYMIME", 555, "5.5.4"),
        ("MAIL FROM:<a@b> SIZE=x", 501, "5.5.4"),
        ("MAIL FROM:<a@b> SIZE=1 SIZE=2", 501, "5.5.4"),
        ("MAIL FROM:<a@b> SIZE", 501, "5.5.4"),
        ("MAIL FROM:<a@b> ENVID=a+zz", 501, "5.5.4"),
        ("MAIL FROM:<a@b> SMTPUTF8=yes", 501, "5.5.4"),
        ("MAIL FROM:<jöe@b>", 553, "5.6.7"),
        ("MAIL FROM:<\"x SMTPUTF8 ö\"@b>", 553, "5.6.7"),
        ("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
        ("RCPT TO:<a@b> NOTIFY=SUCCESS,SUCCESS", 501, "5.5.4"),
        ("RCPT TO:<a@b> ORCPT=rfc822", 501, "5.5.4"),
        ("RCPT TO:<a@b> X=1", 555, "5.5.4"),
        ("DATA x", 501, "5.5.4"),
        ("BDAT", 501, "5.5.4"),
        ("BDAT -1", 501, "5.5.4"),
        ("BDAT 1 FIRST", 501, "5.5.4"),
        ("BDAT 99999999999999999999999", 501, "5.5.4"),
        ("AUTH", 501, "5.5.4"),
        ("NOOP \u{0}", 500, "5.5.2"),
    ];
    for (line, code, status) in cases {
        let error = parse(line).unwrap_err();
        let reply = error.reply();
        assert_eq!(reply.code, *code, "{line}: {error:?}");
        assert_eq!(
            reply.enhanced.map(|e| e.to_string()).as_deref(),
            Some(*status),
            "{line}"
        );
    }
    assert_eq!(
        Command::parse(b"NOOP \xff").unwrap_err(),
        CommandError::BadCharacters
    );
}

#[test]
fn auth_mechanisms() {
    assert_eq!(
        parse("AUTH plain AGEAYg==").unwrap(),
        Command::Auth {
            mechanism: AuthMechanism::Plain,
            initial_response: Some("AGEAYg==".into())
        }
    );
    assert_eq!(
        parse("AUTH CRAM-MD5").unwrap(),
        Command::Auth {
            mechanism: AuthMechanism::Other("CRAM-MD5".into()),
            initial_response: None
        }
    );
}

#[test]
fn encode_parse_round_trip() {
    let commands = vec![
        Command::Ehlo("mta.example".into()),
        Command::Helo("mta.example".into()),
        Command::Mail(MailFrom {
            reverse_path: ReversePath::Null,
            params: MailParams::default(),
        }),
        Command::Mail(MailFrom {
            reverse_path: ReversePath::Mailbox(mailbox("a b", "c.example")),
            params: MailParams {
                size_bytes: Some(12345),
                body: Some(BodyType::SevenBit),
                smtputf8: false,
                ret: Some(Ret::Full),
                envid: Some("id=with+plus and space".into()),
                auth: Some("x@y".into()),
            },
        }),
        Command::Mail(MailFrom {
            reverse_path: ReversePath::Mailbox(mailbox("ü", "ü.example")),
            params: MailParams {
                smtputf8: true,
                ..MailParams::default()
            },
        }),
        Command::Rcpt(RcptTo {
            forward_path: ForwardPath::Mailbox(mailbox("r", "[IPv6:::1]")),
            params: RcptParams {
                notify: Some(Notify::On {
                    success: false,
                    failure: true,
                    delay: true,
                }),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    address: "r+1@x".into(),
                }),
            },
        }),
        Command::Rcpt(RcptTo {
            forward_path: ForwardPath::Postmaster,
            params: RcptParams {
                notify: Some(Notify::Never),
                orcpt: None,
            },
        }),
        Command::Data,
        Command::Bdat {
            size_bytes: 0,
            last: true,
        },
        Command::Bdat {
            size_bytes: u64::MAX,
            last: false,
        },
        Command::Rset,
        Command::Noop,
        Command::Quit,
        Command::Vrfy("joe".into()),
        Command::Help("MAIL".into()),
        Command::StartTls,
        Command::Auth {
            mechanism: AuthMechanism::Login,
            initial_response: None,
        },
        Command::Auth {
            mechanism: AuthMechanism::Plain,
            initial_response: Some("=".into()),
        },
    ];
    for command in commands {
        let mut wire = Vec::new();
        command.encode(&mut wire);
        assert!(wire.ends_with(b"\r\n"));
        let line = &wire[..wire.len() - 2];
        assert_eq!(Command::parse(line).unwrap(), command, "{command}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::smtp::command::{Notify, Orcpt};

    fn local_part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-z0-9]{1,5}){0,2}",
            "[ -~]{0,20}",
        ]
    }

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,3}",
            Just("[192.0.2.7]".to_owned()),
            Just("[IPv6:2001:db8::7]".to_owned()),
        ]
    }

    fn mailbox() -> impl Strategy<Value = Mailbox> {
        (local_part(), domain()).prop_map(|(l, d)| Mailbox::new(l, d))
    }

    fn mail() -> impl Strategy<Value = Command> {
        (
            prop::option::of(mailbox()),
            prop::option::of(any::<u64>()),
            prop::option::of(prop_oneof![
                Just(BodyType::SevenBit),
                Just(BodyType::EightBitMime)
            ]),
            any::<bool>(),
            prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Headers)]),
            prop::option::of("[ -~]{1,40}"),
            prop::option::of("[ -~]{0,40}"),
        )
            .prop_map(|(from, size_bytes, body, smtputf8, ret, envid, auth)| {
                Command::Mail(MailFrom {
                    reverse_path: from.map_or(ReversePath::Null, ReversePath::Mailbox),
                    params: MailParams {
                        size_bytes,
                        body,
                        smtputf8,
                        ret,
                        envid,
                        auth,
                    },
                })
            })
    }

    fn rcpt() -> impl Strategy<Value = Command> {
        let notify = prop_oneof![
            Just(Notify::Never),
            (any::<bool>(), any::<bool>(), any::<bool>())
                .prop_filter("one flag", |(s, f, d)| *s || *f || *d)
                .prop_map(|(success, failure, delay)| Notify::On {
                    success,
                    failure,
                    delay
                }),
        ];
        (
            prop::option::of(mailbox()),
            prop::option::of(notify),
            prop::option::of("[ -~]{1,60}"),
        )
            .prop_map(|(to, notify, orcpt)| {
                Command::Rcpt(RcptTo {
                    forward_path: to.map_or(ForwardPath::Postmaster, ForwardPath::Mailbox),
                    params: RcptParams {
                        notify,
                        orcpt: orcpt.map(|address| Orcpt {
                            addr_type: "rfc822".into(),
                            address,
                        }),
                    },
                })
            })
    }

    proptest! {
        #[test]
        fn mail_and_rcpt_round_trip(command in prop_oneof![mail(), rcpt()]) {
            let mut wire = Vec::new();
            command.encode(&mut wire);
            let line = &wire[..wire.len() - 2];
            prop_assert_eq!(Command::parse(line), Ok(command));
        }

        #[test]
        fn parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Command::parse(&line);
        }
    }
}
