//! Unit tests that need crate internals: the RFC 8463 Appendix A example,
//! reproduced byte for byte (Ed25519 signatures are deterministic, so the
//! same key over the same canonical data must give the RFC's `b=`).

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::canon::{self, Canonicalization};
use super::key::DkimKey;
use super::message::split_message;
use super::sign::select_fields;

/// RFC 8463 A.2: the signing key (the RFC 8032 §7.1 TEST 1 key).
const RFC8463_SEED_BASE64: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const RFC8463_PUBLIC_BASE64: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

/// RFC 8463 A.3: the example message, without its signatures.
const RFC8463_MESSAGE: &str = "From: Joe SixPack <joe@football.example.com>\r\n\
To: Suzie Q <suzie@shopping.example.net>\r\n\
Subject: Is dinner ready?\r\n\
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n\
Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n\
\r\n\
Hi.\r\n\
\r\n\
We lost the game.  Are you hungry yet?\r\n\
\r\n\
Joe.\r\n";

/// RFC 8463 A.3: the Ed25519 signature field with its `b=` value removed.
const RFC8463_SIGNATURE_WITHOUT_B: &str = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n \
d=football.example.com; i=@football.example.com;\r\n \
q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n \
subject : date : message-id : from : subject : date;\r\n \
bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n \
b=";

const RFC8463_BODY_HASH: &str = "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=";
const RFC8463_B: &str =
    "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";

#[test]
fn rfc8463_appendix_a_ed25519_signature_is_reproduced_exactly() {
    let (fields, body) = split_message(RFC8463_MESSAGE.as_bytes());
    let body_hash = canon::body_hash(Canonicalization::Relaxed, body);
    assert_eq!(BASE64.encode(body_hash.as_ref()), RFC8463_BODY_HASH);

    let seed = BASE64.decode(RFC8463_SEED_BASE64).expect("seed");
    let public = BASE64.decode(RFC8463_PUBLIC_BASE64).expect("public key");
    let pair = Ed25519KeyPair::from_seed_and_public_key(&seed, &public).expect("key pair");
    let key = DkimKey::from_ed25519_pair(pair);
    assert_eq!(key.public_key_base64().expect("p="), RFC8463_PUBLIC_BASE64);

    let names = [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "from",
        "subject",
        "date",
    ];
    let mut signed = Vec::new();
    for field in select_fields(&fields, &names) {
        canon::canonicalize_header(Canonicalization::Relaxed, field.raw, true, &mut signed);
    }
    canon::canonicalize_header(
        Canonicalization::Relaxed,
        RFC8463_SIGNATURE_WITHOUT_B.as_bytes(),
        false,
        &mut signed,
    );
    let signature = key.sign(&signed).expect("sign");
    assert_eq!(BASE64.encode(signature), RFC8463_B);
}
