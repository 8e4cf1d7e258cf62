//! Server session tests for STARTTLS and AUTH.

use super::*;
use crate::smtp::command::AuthMechanism;

fn tls_config() -> ServerConfig {
    let mut config = ServerConfig::new("mx.example");
    config.starttls_available = true;
    config.auth_available = true;
    config
}

#[test]
fn starttls_discards_pipelined_bytes_and_resets() {
    let mut s = ServerSession::new(tls_config());
    let input = b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n";
    let (out, events) = drive(&mut s, &[input], &mut accept_all);
    assert!(out.contains("250-STARTTLS\r\n"));
    assert!(!out.contains("AUTH PLAIN LOGIN"), "no AUTH before TLS");
    assert!(out.contains("538 5.7.11"));
    assert!(out.ends_with("220 2.0.0 Ready to start TLS\r\n"));
    assert_eq!(events.last(), Some(&Ev::StartTls));
    // consumed stops right after the STARTTLS line
    let mut s = ServerSession::new(tls_config());
    let mut offset = 0;
    loop {
        let step = s.receive(&input[offset..]).unwrap();
        offset += step.consumed;
        match step.event {
            Some(ServerEvent::StartTls) => break,
            Some(ServerEvent::Helo { .. }) => s.accept().unwrap(),
            _ => {}
        }
    }
    assert_eq!(&input[offset..], b"MAIL FROM:<injected@x>\r\n");
    assert_eq!(s.receive(&input[offset..]), Err(UsageError::TlsPending));
    s.take_output();
    s.tls_established().unwrap();
    assert!(s.tls_active());
    let (out, _) = drive(
        &mut s,
        &[b"MAIL FROM:<a@c>\r\nEHLO c\r\nSTARTTLS\r\n"],
        &mut accept_all,
    );
    assert!(
        out.starts_with("503 5.5.1 Send EHLO/HELO first\r\n"),
        "{out}"
    );
    assert!(!out.contains("250-STARTTLS"));
    assert!(out.contains("250-AUTH PLAIN LOGIN\r\n"));
    assert!(out.ends_with("503 5.5.1 TLS already active\r\n"));
}

fn tls_session() -> ServerSession {
    let mut config = tls_config();
    config.tls_active = true;
    config.require_auth = true;
    ServerSession::new(config)
}

#[test]
fn auth_plain_and_login() {
    let mut s = tls_session();
    let mut policy = |ev: &Ev| match ev {
        Ev::Auth(user, pass) if user == "bob" && pass == "pw" => None,
        Ev::Auth(..) => Some(Reply::with_status(535, (5, 7, 8), "Authentication failed")),
        _ => None,
    };
    // PLAIN with initial response: "\0bob\0wrong"; then LOGIN bob/pw in steps.
    let input = b"EHLO c\r\nMAIL FROM:<a@c>\r\nAUTH PLAIN AGJvYgB3cm9uZw==\r\nAUTH LOGIN\r\nYm9i\r\ncHc=\r\nAUTH PLAIN\r\nMAIL FROM:<a@c>\r\nQUIT\r\n";
    let (out, events) = drive(&mut s, &[input], &mut policy);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "530 5.7.0",
            "535 5.7.8",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "235 2.7.0",
            "503 5.5.1",
            "250 2.1.0",
            "221 2.0.0"
        ]
    );
    assert!(events.contains(&Ev::Auth("bob".into(), "wrong".into())));
    assert_eq!(s.authenticated_user(), Some("bob"));
}

#[test]
fn auth_cancel_and_garbage() {
    let mut s = tls_session();
    let (out, _) = drive(&mut s, &[b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH PLAIN AGJvYg==\r\nAUTH CRAM-MD5\r\nQUIT\r\n"], &mut accept_all);
    assert_eq!(
        codes(&out),
        [
            "220 mx.example",
            "250 HELP",
            "334 ",
            "501 5.7.0",
            "334 ",
            "501 5.5.2",
            "501 5.5.2",
            "504 5.5.4",
            "221 2.0.0"
        ]
    );
}

#[test]
fn auth_request_debug_hides_password() {
    let request = AuthRequest {
        mechanism: AuthMechanism::Plain,
        authzid: None,
        username: "bob".into(),
        password: "hunter2".into(),
    };
    assert!(!format!("{request:?}").contains("hunter2"));
}
