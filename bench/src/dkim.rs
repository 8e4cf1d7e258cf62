//! `spate-bench dkim`: DKIM signatures per second per core, RSA-2048 and
//! Ed25519, over 2 KB and 100 KB messages, through spate's full signer
//! (canonicalisation, body hash, header hash, signature, folding); the same
//! through the signing pool; and, with `--compare`, the bare signing
//! primitive of aws-lc-rs (what spate uses) against the RustCrypto crates.
//!
//! Keys are generated fresh for each run; nothing touches the network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use spate::dkim::{
    Canonicalization, DkimKey, DkimSigner, KeyAlgorithm, SignJob, SignerOptions, SigningPool,
    SigningTable,
};

use crate::relay::cpu_seconds;

#[derive(clap::Args, Debug, Clone)]
pub struct DkimArgs {
    /// Seconds to run each case.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Threads for the signing-pool measurement (0 skips it).
    #[arg(long, default_value_t = 2)]
    pub pool_threads: usize,
    /// Also time the bare signing primitive: aws-lc-rs against the RustCrypto
    /// `rsa` and `ed25519-dalek` crates.
    #[arg(long)]
    pub compare: bool,
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    pub json: bool,
}

const MESSAGE_SIZES_BYTES: [usize; 2] = [2 * 1024, 100 * 1024];

/// A message of about `size` bytes: typical headers, text body in 76-char lines.
fn message(size: usize) -> Vec<u8> {
    let mut out = b"Received: from client.example (client.example [192.0.2.1])\r\n\tby mta.example.com with ESMTP id 1A2B3C; Fri, 27 Nov 2026 22:00:00 +0000\r\n\
From: \"Example News\" <news@example.com>\r\nTo: reader@example.net\r\nSubject: This week's offers, folded over\r\n two lines\r\n\
Date: Fri, 27 Nov 2026 22:00:00 +0000\r\nMessage-ID: <20261127220000.1A2B3C@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed do eiusmod  \r\n";
    while out.len() + line.len() <= size {
        out.extend_from_slice(line);
    }
    out
}

fn signer(key: Arc<DkimKey>) -> anyhow::Result<DkimSigner> {
    DkimSigner::new(SignerOptions {
        domain: "example.com".into(),
        selector: "bench".into(),
        key,
        headers: [
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
        ]
        .map(String::from)
        .to_vec(),
        canonicalization: (Canonicalization::Relaxed, Canonicalization::Relaxed),
        expire_secs: None,
    })
    .context("bench signer")
}

/// Operations per wall-clock second and per CPU second of the clock given.
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

/// Runs `operation` repeatedly for `seconds`; the CPU rate uses this thread's
/// CPU time, so it stays meaningful on a machine shared with other work.
fn measure(
    seconds: f64,
    mut operation: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Rate> {
    for _ in 0..5 {
        operation()?;
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let cpu_start = cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID);
    let mut count = 0u64;
    while start.elapsed() < budget {
        operation()?;
        count += 1;
    }
    let cpu = cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - cpu_start;
    Ok(Rate {
        wall: count as f64 / start.elapsed().as_secs_f64(),
        cpu: count as f64 / cpu,
    })
}

struct Row {
    case: String,
    rate: Rate,
}

fn print(rows: &[Row], json: bool) {
    if json {
        for row in rows {
            println!(
                "{}",
                serde_json::json!({
                    "case": row.case,
                    "per_wall_second": row.rate.wall.round(),
                    "per_cpu_second": row.rate.cpu.round(),
                    "cpu_micros_each": (1e6 / row.rate.cpu * 10.0).round() / 10.0,
                })
            );
        }
        return;
    }
    println!(
        "{:<52} {:>10} {:>10} {:>12}",
        "case", "/wall s", "/CPU s", "CPU µs each"
    );
    for row in rows {
        println!(
            "{:<52} {:>10.0} {:>10.0} {:>12.1}",
            row.case,
            row.rate.wall,
            row.rate.cpu,
            1e6 / row.rate.cpu
        );
    }
    println!(
        "/CPU s counts the CPU time of the signing thread(s) only (per core); \
         /wall s depends on what else the machine runs."
    );
}

pub fn run(args: DkimArgs) -> anyhow::Result<()> {
    let keys = [
        ("RSA-2048", KeyAlgorithm::RsaSha256, 2048),
        ("Ed25519", KeyAlgorithm::Ed25519Sha256, 0),
    ];
    let mut generated = Vec::new();
    for (label, algorithm, bits) in keys {
        let (key, pem) = DkimKey::generate(algorithm, bits)
            .map_err(|reason| anyhow::anyhow!("generating {label}: {reason}"))?;
        generated.push((label, Arc::new(key), pem));
    }
    let now_unix = 1_795_000_000;
    let mut rows = Vec::new();

    // 1. spate's signer on one thread: signatures per second per core.
    for (label, key, _) in &generated {
        let signer = signer(key.clone())?;
        for size in MESSAGE_SIZES_BYTES {
            let message = message(size);
            let rate = measure(args.seconds, || {
                signer.sign(&message, now_unix)?;
                Ok(())
            })?;
            rows.push(Row {
                case: format!("sign {label}, {} KB message, 1 thread", size / 1024),
                rate,
            });
        }
    }

    // 2. The signing pool, awaited from a compio task as a shard would.
    if args.pool_threads > 0 {
        for (label, key, _) in &generated {
            let mut table = SigningTable::new();
            table.insert(signer(key.clone())?)?;
            let table = Arc::new(table);
            let pool = SigningPool::new(args.pool_threads, 1024)?;
            let message = message(2 * 1024);
            let runtime = compio::runtime::Runtime::new().context("compio runtime")?;
            let batch = 256;
            let rate = runtime.block_on(async {
                let budget = Duration::from_secs_f64(args.seconds);
                let start = Instant::now();
                // Process CPU time: the pool threads plus this submitting one.
                let cpu_start = cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID);
                let mut done = 0u64;
                while start.elapsed() < budget {
                    let mut receivers = Vec::with_capacity(batch);
                    for _ in 0..batch {
                        let job = SignJob {
                            table: table.clone(),
                            message: message.clone(),
                            now_unix,
                            extra_domains: Vec::new(),
                        };
                        match pool.try_submit(job) {
                            Ok(receiver) => receivers.push(receiver),
                            Err(_) => anyhow::bail!("pool queue full at {batch} jobs"),
                        }
                    }
                    for receiver in receivers {
                        let outcome = receiver.await.context("pool dropped a job")?;
                        anyhow::ensure!(outcome.result?.len() == 1, "one signature per job");
                        done += 1;
                    }
                }
                let cpu = cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
                Ok(Rate {
                    wall: done as f64 / start.elapsed().as_secs_f64(),
                    cpu: done as f64 / cpu,
                })
            })?;
            rows.push(Row {
                case: format!("pool {label}, 2 KB message, {} threads", args.pool_threads),
                rate,
            });
        }
    }

    // 3. The bare primitive over the same ~600 bytes of canonical headers.
    if args.compare {
        compare(&generated, args.seconds, &mut rows)?;
    }
    print(&rows, args.json);
    Ok(())
}

fn compare(
    generated: &[(&str, Arc<DkimKey>, String)],
    seconds: f64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    let data = vec![b'h'; 600];
    // The floor under body hashing: SHA-256 alone over a 100 KB message.
    let body = message(100 * 1024);
    let rate = measure(seconds, || {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        anyhow::ensure!(hash.as_ref().len() == 32);
        Ok(())
    })?;
    rows.push(Row {
        case: "aws-lc-rs SHA-256 alone, 100 KB (body-hash floor)".into(),
        rate,
    });
    for (label, _key, pem) in generated {
        let (_, der) = rsa::pkcs8::der::pem::decode_vec(pem.as_bytes())
            .map_err(|error| anyhow::anyhow!("bench PEM: {error}"))?;
        let rate = if *label == "RSA-2048" {
            let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
                .map_err(|error| anyhow::anyhow!("aws-lc-rs key: {error}"))?;
            let random = aws_lc_rs::rand::SystemRandom::new();
            let mut signature = vec![0u8; pair.public_modulus_len()];
            measure(seconds, || {
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &random,
                    &data,
                    &mut signature,
                )
                .map_err(|_| anyhow::anyhow!("aws-lc-rs RSA sign"))
            })?
        } else {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|error| anyhow::anyhow!("aws-lc-rs key: {error}"))?;
            measure(seconds, || {
                let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
                let signature = pair.sign(hash.as_ref());
                anyhow::ensure!(signature.as_ref().len() == 64);
                Ok(())
            })?
        };
        rows.push(Row {
            case: format!("aws-lc-rs 1.19 {label} primitive, 600 B"),
            rate,
        });
        if *label == "RSA-2048" {
            let private = rsa::RsaPrivateKey::from_pkcs8_pem(pem).context("rsa crate key")?;
            let signing = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
            let rate = measure(seconds, || {
                let signature = signing.sign(&data);
                anyhow::ensure!(signature.to_bytes().len() == 256);
                Ok(())
            })?;
            rows.push(Row {
                case: "RustCrypto rsa 0.9 RSA-2048 PKCS#1 v1.5, 600 B".into(),
                rate,
            });
        } else {
            let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).context("dalek key")?;
            let rate = measure(seconds, || {
                use sha2::Digest as _;
                let hash = sha2::Sha256::digest(&data);
                let signature = signing.sign(&hash);
                anyhow::ensure!(signature.to_bytes().len() == 64);
                Ok(())
            })?;
            rows.push(Row {
                case: "RustCrypto ed25519-dalek 2 Ed25519, 600 B".into(),
                rate,
            });
        }
    }
    Ok(())
}
