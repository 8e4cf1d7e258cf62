//! DKIM keys and configuration: load errors name the file, bad signer options
//! are configuration errors, `keygen` output parses back and verifies, and
//! the signing pool signs off-thread and hands the buffer back.

mod dkim_support;

use std::sync::Arc;

use dkim_support::*;
use spate::dkim::{
    DkimError, DkimKey, DkimSigner, KeyAlgorithm, PoolSubmitError, SignJob, SignerOptions,
    SigningPool, SigningTable, keygen,
};

#[test]
fn supported_keys_load_with_their_algorithm() {
    for (name, algorithm, bits) in [
        ("rsa2048-pkcs1", KeyAlgorithm::RsaSha256, 2048),
        ("rsa2048-pkcs8", KeyAlgorithm::RsaSha256, 2048),
        ("rsa4096-pkcs8", KeyAlgorithm::RsaSha256, 4096),
        ("ed25519-pkcs8", KeyAlgorithm::Ed25519Sha256, 256),
    ] {
        let key = key(name);
        assert_eq!(key.algorithm(), algorithm, "{name}");
        assert_eq!(key.bits(), bits, "{name}");
        // Our p= agrees with OpenSSL's.
        assert_eq!(
            key.public_key_base64().expect("p="),
            openssl_public(name),
            "{name}"
        );
    }
}

#[test]
fn key_errors_name_the_file_and_are_config_errors() {
    for (file, reason_part) in [
        ("missing.pem", "No such file"),
        ("not-a-key.pem", "not a PEM private key"),
        ("ed25519-encrypted.pem", "encrypted"),
        ("p256-unsupported.pem", "not supported"),
        ("rsa1024-too-small.pem", "fewer than 2048 bits"),
        ("README.md", "not a PEM private key"),
    ] {
        let path = data_path(file);
        let error = DkimKey::load_pem(&path).expect_err(file);
        let text = error.to_string();
        assert!(error.is_config(), "{text}");
        assert!(
            text.contains(&path.display().to_string()),
            "names the file: {text}"
        );
        assert!(text.contains(reason_part), "{file}: {text}");
    }
}

fn options(domain: &str, selector: &str, headers: &[&str]) -> SignerOptions {
    SignerOptions {
        domain: domain.to_string(),
        selector: selector.to_string(),
        key: key("ed25519-pkcs8"),
        headers: headers.iter().map(|h| h.to_string()).collect(),
        canonicalization: RELAXED,
        expire_secs: None,
    }
}

#[test]
fn bad_signer_options_are_config_errors() {
    let cases = [
        options("exa mple.com", "s1", &[]),
        options("-bad.example", "s1", &[]),
        options("example.com", "", &[]),
        options("example.com", "s1", &["Received"]),
        options("example.com", "s1", &["DKIM-Signature"]),
        options("example.com", "s1", &["Bad:Name"]),
        SignerOptions {
            expire_secs: Some(0),
            ..options("example.com", "s1", &[])
        },
        SignerOptions {
            expire_secs: Some(10 * 365 * 24 * 3600),
            ..options("example.com", "s1", &[])
        },
    ];
    for case in cases {
        let error = DkimSigner::new(case.clone()).expect_err(&format!("{case:?}"));
        assert!(matches!(error, DkimError::Config(_)), "{error}");
    }
    let ok =
        DkimSigner::new(options("Example.COM.", "s1", &["to", "FROM", "Subject"])).expect("valid");
    assert_eq!(ok.domain(), "example.com");
}

/// Joins the quoted strings of a zone-file TXT line.
fn txt_value(line: &str) -> (String, Vec<String>) {
    let (name, rest) = line.split_once(" IN TXT ").expect("zone line");
    let strings: Vec<String> = rest
        .split('"')
        .enumerate()
        .filter(|(index, _)| index % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    (name.to_string(), strings)
}

#[test]
fn keygen_writes_a_private_key_and_a_record_that_verifies() {
    use std::os::unix::fs::PermissionsExt as _;
    let directory = tempfile::tempdir().expect("tempdir");
    for (algorithm, bits, strings_min) in [
        (KeyAlgorithm::Ed25519Sha256, 0, 1),
        (KeyAlgorithm::RsaSha256, 2048, 2),
        (KeyAlgorithm::RsaSha256, 4096, 3),
    ] {
        let path = directory
            .path()
            .join(format!("{}-{bits}.pem", algorithm.as_str()));
        let line = keygen("Mail.Example.ORG", "k1", algorithm, bits, &path).expect("keygen");
        let (name, strings) = txt_value(&line);
        assert_eq!(name, "k1._domainkey.mail.example.org.");
        assert!(strings.len() >= strings_min, "{line}");
        assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
        let record: String = strings.concat();
        assert!(
            record.starts_with(&format!("v=DKIM1; k={}; p=", algorithm.dns_key_type())),
            "{record}"
        );

        let mode = std::fs::metadata(&path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Arc::new(DkimKey::load_pem(&path).expect("generated key loads"));
        assert_eq!(loaded.algorithm(), algorithm);

        // The record verifies a signature made with the written key.
        let signer = DkimSigner::new(SignerOptions {
            key: loaded,
            ..options("mail.example.org", "k1", &["Subject"])
        })
        .expect("signer");
        let message = b"From: a@mail.example.org\r\nSubject: keygen\r\n\r\nhello\r\n";
        let signed = prepend(&[signer.sign(message, now_unix()).expect("sign")], message);
        let results = verify(&signed, &[(name.clone(), record)]);
        assert!(results[0].passed(), "{:?}", results[0].result);

        // Never overwrites an existing key.
        let error = keygen("mail.example.org", "k1", algorithm, bits, &path).expect_err("exists");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn keygen_refuses_bad_arguments() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("k.pem");
    assert!(keygen("example.com", "s", KeyAlgorithm::RsaSha256, 1024, &path).is_err());
    assert!(keygen("bad domain", "s", KeyAlgorithm::Ed25519Sha256, 0, &path).is_err());
    assert!(!path.exists(), "nothing written on error");
}

fn pool_table() -> Arc<SigningTable> {
    let mut table = SigningTable::new();
    table
        .insert(signer(
            "example.com",
            "s2026",
            "rsa2048-pkcs1",
            RELAXED,
            None,
        ))
        .expect("insert");
    Arc::new(table)
}

#[test]
fn pool_signs_off_thread_and_returns_the_buffer() {
    let pool = SigningPool::new(2, 8).expect("pool");
    let table = pool_table();
    let now = now_unix();
    let messages: Vec<Vec<u8>> = (0..6)
        .map(|index| {
            format!("From: a@example.com\r\nSubject: {index}\r\n\r\nbody {index}\r\n").into_bytes()
        })
        .collect();
    let receivers: Vec<_> = messages
        .iter()
        .map(|message| {
            pool.try_submit(SignJob {
                table: table.clone(),
                message: message.clone(),
                now_unix: now,
                extra_domains: Vec::new(),
            })
            .expect("queue has room")
        })
        .collect();
    // Awaited from a compio task, as a shard would.
    let runtime = compio::runtime::Runtime::new().expect("compio runtime");
    let outcomes = runtime.block_on(async move {
        let mut outcomes = Vec::new();
        for receiver in receivers {
            outcomes.push(receiver.await.expect("pool answers"));
        }
        outcomes
    });
    let record = (
        "s2026._domainkey.example.com".to_string(),
        dns_record("rsa2048-pkcs1"),
    );
    for (outcome, message) in outcomes.into_iter().zip(&messages) {
        assert_eq!(&outcome.message, message, "buffer comes back unchanged");
        let signatures = outcome.result.expect("signed");
        assert_eq!(signatures.len(), 1);
        let results = verify(
            &prepend(&signatures, message),
            std::slice::from_ref(&record),
        );
        assert!(results[0].passed(), "{:?}", results[0].result);
    }
}

#[test]
fn pool_reports_errors_and_back_pressure() {
    let pool = SigningPool::new(1, 1).expect("pool");
    let table = pool_table();
    // An unknown extra domain is a configuration error returned per job.
    let receiver = pool
        .try_submit(SignJob {
            table: table.clone(),
            message: b"From: a@example.com\r\n\r\nx\r\n".to_vec(),
            now_unix: 1,
            extra_domains: vec!["unknown.example".into()],
        })
        .expect("queued");
    let outcome = compio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(receiver)
        .expect("answer");
    assert!(outcome.result.expect_err("unknown domain").is_config());

    // Fill the queue faster than one thread can sign RSA: some submission
    // must come back as Full, with its buffer.
    let mut full = 0;
    let mut pending = Vec::new();
    for index in 0..64u8 {
        match pool.try_submit(SignJob {
            table: table.clone(),
            message: [b"From: a@example.com\r\n\r\n".as_slice(), &[index]].concat(),
            now_unix: 1,
            extra_domains: Vec::new(),
        }) {
            Ok(receiver) => pending.push(receiver),
            Err(PoolSubmitError::Full(job)) => {
                assert_eq!(job.message.last(), Some(&index));
                full += 1;
            }
            Err(PoolSubmitError::Closed(_)) => panic!("pool closed"),
        }
    }
    assert!(full > 0, "a queue of one must push back");
    assert!(SigningPool::new(0, 1).is_err());
    assert!(SigningPool::new(1, 0).is_err());
}
