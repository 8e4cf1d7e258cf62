//! DKIM round trips: spate signs, the independent `mail-auth` crate verifies
//! against public keys computed by OpenSSL. Covers both algorithms, RSA-4096,
//! both canonicalisations, awkward messages, over-signing, `x=`, tampering
//! and the signing table.

mod dkim_support;

use dkim_support::*;
use spate::dkim::{Canonicalization, DkimError, SigningTable};

const SELECTOR: &str = "s2026";
const DOMAIN: &str = "example.com";

fn record_for(domain: &str, key_name: &str) -> (String, String) {
    (
        format!("{SELECTOR}._domainkey.{domain}"),
        dns_record(key_name),
    )
}

fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut long_line =
        b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: long\r\n\r\n".to_vec();
    long_line.extend(std::iter::repeat_n(b'x', 5000));
    long_line.extend_from_slice(b"\r\n");
    long_line.extend(std::iter::repeat_n(b"word \t ".as_slice(), 700).flatten());
    long_line.extend_from_slice(b"\r\n");

    let mut eight_bit = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.com>\r\nTo: bob@example.net\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
    eight_bit.extend_from_slice("Grüße aus Köln — ½ € \u{1F600}\r\n".as_bytes());
    eight_bit.extend_from_slice(&[0xff, 0xfe, 0x80, b'\r', b'\n']);

    vec![
        (
            "plain",
            b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\nDate: Fri, 27 Nov 2026 22:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello Bob.\r\n".to_vec(),
        ),
        (
            "folded headers",
            b"From: \"Alice, the sender\"\r\n <alice@example.com>\r\nTo: bob@example.net,\r\n\tcarol@example.net,\r\n  dave@example.net\r\nSubject: a subject\r\n folded over\r\n\t three lines\r\nReceived: from x by y; Fri, 27 Nov 2026 22:00:00 +0000\r\n\r\nBody.\r\n".to_vec(),
        ),
        (
            "trailing whitespace",
            // A whitespace-only line is kept inside the body; at its end such lines
            // are dropped by relaxed canonicalisation (see canon.rs), where
            // mail-auth 0.13 differs from OpenDKIM and Gmail, so the
            // independent check uses an internal one.
            b"From: alice@example.com \t\r\nSubject:   spaced    out   \r\nTo:bob@example.net\r\n\r\nline with trailing spaces   \r\n\tindented\t \r\n  \r\nlast \r\n\r\n\r\n".to_vec(),
        ),
        (
            "empty body",
            b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: nothing\r\n\r\n".to_vec(),
        ),
        (
            "body of blank lines",
            b"From: alice@example.com\r\nSubject: blanks\r\n\r\n\r\n\r\n\r\n".to_vec(),
        ),
        ("8-bit body", eight_bit),
        ("long lines", long_line),
        (
            "no final CRLF",
            b"From: alice@example.com\r\nSubject: cut\r\n\r\nlast line without CRLF".to_vec(),
        ),
    ]
}

const CANONICALIZATIONS: [(Canonicalization, Canonicalization); 4] = [
    (Canonicalization::Relaxed, Canonicalization::Relaxed),
    (Canonicalization::Relaxed, Canonicalization::Simple),
    (Canonicalization::Simple, Canonicalization::Relaxed),
    (Canonicalization::Simple, Canonicalization::Simple),
];

fn sign_and_verify(key_name: &str) {
    let now = now_unix();
    for canonicalization in CANONICALIZATIONS {
        let signer = signer(DOMAIN, SELECTOR, key_name, canonicalization, None);
        for (label, message) in messages() {
            let field = signer.sign(&message, now).expect("signing succeeds");
            assert!(field.starts_with("DKIM-Signature: v=1; "), "{field}");
            assert!(field.ends_with("\r\n"));
            for line in field.trim_end().split("\r\n") {
                assert!(line.len() <= 78, "line too long ({}): {line}", line.len());
            }
            let signed = prepend(std::slice::from_ref(&field), &message);
            let results = verify(&signed, &[record_for(DOMAIN, key_name)]);
            assert_eq!(results.len(), 1, "{key_name} {canonicalization:?} {label}");
            assert!(
                results[0].passed(),
                "{key_name} {canonicalization:?} {label}: {:?}\n{field}",
                results[0].result
            );
            assert_eq!(results[0].t, now);
            assert_eq!(results[0].x, 0);
        }
    }
}

#[test]
fn rsa2048_pkcs1_round_trips() {
    sign_and_verify("rsa2048-pkcs1");
}

#[test]
fn rsa2048_pkcs8_round_trips() {
    sign_and_verify("rsa2048-pkcs8");
}

#[test]
fn rsa4096_round_trips() {
    sign_and_verify("rsa4096-pkcs8");
}

#[test]
fn ed25519_round_trips() {
    sign_and_verify("ed25519-pkcs8");
}

#[test]
fn a_wrong_public_key_fails() {
    // The test can fail: the same signature against another key must not pass.
    let signer = signer(DOMAIN, SELECTOR, "rsa2048-pkcs1", RELAXED, None);
    let message = &messages()[0].1;
    let signed = prepend(&[signer.sign(message, now_unix()).expect("sign")], message);
    let results = verify(&signed, &[record_for(DOMAIN, "rsa4096-pkcs8")]);
    assert!(!results[0].passed(), "{:?}", results[0].result);
}

fn signed_plain(key_name: &str, canonicalization: (Canonicalization, Canonicalization)) -> Vec<u8> {
    let signer = signer(DOMAIN, SELECTOR, key_name, canonicalization, None);
    let message = &messages()[0].1;
    prepend(&[signer.sign(message, now_unix()).expect("sign")], message)
}

fn passes(message: &[u8], key_name: &str) -> bool {
    let results = verify(message, &[record_for(DOMAIN, key_name)]);
    results.len() == 1 && results[0].passed()
}

fn insert_after_signature(signed: &[u8], header: &[u8]) -> Vec<u8> {
    // The signature field ends at the first line not starting with WSP.
    let text = signed;
    let mut position = 0;
    loop {
        let lf = text[position..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("line")
            + position;
        position = lf + 1;
        if text[position] != b' ' && text[position] != b'\t' {
            break;
        }
    }
    let mut out = text[..position].to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&text[position..]);
    out
}

#[test]
fn over_signing_blocks_added_from_and_subject() {
    for key_name in ["rsa2048-pkcs1", "ed25519-pkcs8"] {
        let signed = signed_plain(key_name, RELAXED);
        assert!(passes(&signed, key_name));
        let results = verify(&signed, &[record_for(DOMAIN, key_name)]);
        let from_count = results[0]
            .h
            .iter()
            .filter(|h| h.eq_ignore_ascii_case("from"))
            .count();
        assert_eq!(from_count, 2, "From is over-signed: {:?}", results[0].h);

        // An added header that is not signed does not matter...
        let unsigned = insert_after_signature(&signed, b"X-Added: later\r\n");
        assert!(passes(&unsigned, key_name));
        // ...but a second From, above or below the first, breaks the signature.
        let extra_from_top = insert_after_signature(&signed, b"From: mallory@evil.example\r\n");
        assert!(!passes(&extra_from_top, key_name));
        let mut extra_from_bottom = signed.clone();
        let blank = extra_from_bottom
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("blank line")
            + 2;
        extra_from_bottom.splice(
            blank..blank,
            b"From: mallory@evil.example\r\n".iter().copied(),
        );
        assert!(!passes(&extra_from_bottom, key_name));
        // Over-signing covers every configured header, absent ones included.
        let added_content_type = insert_after_signature(&signed, b"Content-Type: text/html\r\n");
        assert!(!passes(&added_content_type, key_name));
    }
}

#[test]
fn tampering_is_detected_per_canonicalization() {
    for key_name in ["rsa2048-pkcs8", "ed25519-pkcs8"] {
        let relaxed = signed_plain(key_name, RELAXED);
        let body_changed = [relaxed.clone(), b"P.S. appended\r\n".to_vec()].concat();
        assert!(!passes(&body_changed, key_name));
        let reflowed = String::from_utf8(relaxed.clone())
            .expect("ascii")
            .replace("Subject: hello", "Subject:   hello  ");
        assert!(
            passes(reflowed.as_bytes(), key_name),
            "relaxed tolerates whitespace"
        );
        let subject_changed = String::from_utf8(relaxed)
            .expect("ascii")
            .replace("Subject: hello", "Subject: hellO");
        assert!(!passes(subject_changed.as_bytes(), key_name));

        let simple = signed_plain(
            key_name,
            (Canonicalization::Simple, Canonicalization::Simple),
        );
        let reflowed = String::from_utf8(simple)
            .expect("ascii")
            .replace("Subject: hello", "Subject:  hello");
        assert!(
            !passes(reflowed.as_bytes(), key_name),
            "simple is byte-exact"
        );
    }
}

#[test]
fn expiry_tag_is_set_and_enforced() {
    let now = now_unix();
    let signer = signer(DOMAIN, SELECTOR, "ed25519-pkcs8", RELAXED, Some(3600));
    let message = &messages()[0].1;
    let signed = prepend(&[signer.sign(message, now).expect("sign")], message);
    let results = verify(&signed, &[record_for(DOMAIN, "ed25519-pkcs8")]);
    assert!(results[0].passed(), "{:?}", results[0].result);
    assert_eq!(results[0].t, now);
    assert_eq!(results[0].x, now + 3600);

    // Signed two hours ago with a one-hour expiry: the verifier refuses it.
    let old = prepend(&[signer.sign(message, now - 7200).expect("sign")], message);
    let results = verify(&old, &[record_for(DOMAIN, "ed25519-pkcs8")]);
    assert!(!results[0].passed(), "{:?}", results[0].result);
    assert_eq!(results[0].x, now - 3600);
}

#[test]
fn header_occurring_too_often_is_a_message_error() {
    let signer = signer(DOMAIN, SELECTOR, "ed25519-pkcs8", RELAXED, None);
    let mut message = b"From: a@example.com\r\n".to_vec();
    for index in 0..40 {
        message.extend_from_slice(format!("To: r{index}@example.net\r\n").as_bytes());
    }
    message.extend_from_slice(b"\r\nbody\r\n");
    let error = signer.sign(&message, 1).expect_err("too many To fields");
    assert!(matches!(error, DkimError::Message { .. }), "{error}");
    assert!(!error.is_config());
}

fn table() -> SigningTable {
    let mut table = SigningTable::new();
    table
        .insert(signer(
            "example.com",
            SELECTOR,
            "rsa2048-pkcs1",
            RELAXED,
            None,
        ))
        .expect("insert");
    table
        .insert(signer(
            "customer.example",
            SELECTOR,
            "ed25519-pkcs8",
            RELAXED,
            None,
        ))
        .expect("insert");
    table
        .insert(signer(
            "esp.example",
            SELECTOR,
            "rsa2048-pkcs8",
            RELAXED,
            None,
        ))
        .expect("insert");
    table
}

fn all_records() -> Vec<(String, String)> {
    vec![
        record_for("example.com", "rsa2048-pkcs1"),
        record_for("customer.example", "ed25519-pkcs8"),
        record_for("esp.example", "rsa2048-pkcs8"),
    ]
}

#[test]
fn table_signs_by_from_domain_and_extra_domains() {
    let table = table();
    let message = b"Sender: bounce@esp.example\r\nFrom: \"Shop (news)\" <news@Customer.Example>, other@example.com\r\nTo: x@y.example\r\nSubject: offer\r\n\r\nBuy.\r\n";
    let now = now_unix();

    let signatures = table.sign(message, now).expect("sign");
    assert_eq!(signatures.len(), 1);
    let results = verify(&prepend(&signatures, message), &all_records());
    assert_eq!(results.len(), 1);
    assert!(results[0].passed(), "{:?}", results[0].result);
    assert_eq!(results[0].domain, "customer.example");

    // An ESP signature beside the customer's, chosen per message.
    let signatures = table
        .sign_with_extra(message, now, &["esp.example"])
        .expect("sign");
    assert_eq!(signatures.len(), 2);
    assert!(signatures[0].contains("d=customer.example;"));
    assert!(signatures[1].contains("d=esp.example;"));
    let results = verify(&prepend(&signatures, message), &all_records());
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(Verified::passed), "{results:?}");

    // The same, configured for every message; no duplicate when From matches.
    let mut always = table;
    always.add_always_sign("esp.example").expect("known domain");
    let esp_from = b"From: alerts@esp.example\r\nSubject: s\r\n\r\nx\r\n";
    let signatures = always.sign(esp_from, now).expect("sign");
    assert_eq!(signatures.len(), 1);
    assert!(verify(&prepend(&signatures, esp_from), &all_records())[0].passed());
}

#[test]
fn table_uses_parent_domain_and_skips_unknown_domains() {
    let table = table();
    let sub = b"From: Bulk <bulk@mail.news.example.com>\r\nSubject: s\r\n\r\nx\r\n";
    let signatures = table.sign(sub, now_unix()).expect("sign");
    assert_eq!(signatures.len(), 1);
    assert!(signatures[0].contains("d=example.com;"));
    assert!(verify(&prepend(&signatures, sub), &all_records())[0].passed());

    let unknown = b"From: someone@unrelated.example\r\nSubject: s\r\n\r\nx\r\n";
    assert!(
        table
            .sign(unknown, now_unix())
            .expect("no error")
            .is_empty()
    );
    let no_from = b"Subject: no author\r\n\r\nx\r\n";
    assert!(
        table
            .sign(no_from, now_unix())
            .expect("no error")
            .is_empty()
    );

    let error = table
        .sign_with_extra(unknown, now_unix(), &["nokey.example"])
        .expect_err("unknown extra domain");
    assert!(error.is_config(), "{error}");
}

#[test]
fn duplicate_domain_is_a_config_error() {
    let mut table = table();
    let error = table
        .insert(signer(
            "Example.COM",
            SELECTOR,
            "ed25519-pkcs8",
            RELAXED,
            None,
        ))
        .expect_err("duplicate");
    assert!(error.is_config());
    assert!(error.to_string().contains("example.com"), "{error}");
}
