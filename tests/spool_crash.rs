//! Crash test: a writer child process (this test binary re-executed with
//! `SPATE_SPOOL_CRASH_CHILD=<dir>`) appends messages and state records and
//! prints each one after its commit resolves; the parent SIGKILLs it at
//! random moments, many times, and after each kill recovers the spool and
//! checks that every reported commit is there intact (and every reported
//! final state stays final), and that nothing corrupt appears.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use spate::spool::{
    MessageId, NewMessage, NewRecipient, RecipientState, Ret, Spool, SpoolOptions, recover,
};

const CHILD_ENV: &str = "SPATE_SPOOL_CRASH_CHILD";

fn options(dir: &std::path::Path) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.segment_bytes = 128 * 1024;
    o
}

/// Content derived from a key, so any recovered message can be checked.
fn content_for(key: u64, len: usize) -> Vec<u8> {
    let mut v = format!("X-Key: {key}\r\nX-Len: {len}\r\n\r\n").into_bytes();
    let mut x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

fn parse_key(content: &[u8]) -> Option<(u64, usize)> {
    let text = std::str::from_utf8(content.get(..64.min(content.len()))?).ok()?;
    let mut lines = text.split("\r\n");
    let key = lines.next()?.strip_prefix("X-Key: ")?.parse().ok()?;
    let len = lines.next()?.strip_prefix("X-Len: ")?.parse().ok()?;
    Some((key, len))
}

/// The child: runs only when re-executed by the parent.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let opts = options(std::path::Path::new(&dir));
    let rec = recover(&opts, 1).expect("child recovery");
    let rt = compio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let spool = Spool::open(rec.shared.clone(), 0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let spool = spool.clone();
            tasks.push(compio::runtime::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let key = (std::process::id() as u64) << 32 | w << 24 | n;
                    let len = 50 + (key.wrapping_mul(2654435761) % 6000) as usize;
                    let content = content_for(key, len);
                    let r = [NewRecipient {
                        forward_path: "rcpt@example.com",
                        orcpt: "",
                        notify: 0,
                    }];
                    let msg = NewMessage {
                        received_unix_ms: 0,
                        reverse_path: "s@example.com",
                        recipients: &r,
                        ret: Ret::Unspecified,
                        envid: "",
                        vmta_or_pool: "",
                        vmta: "v",
                        job_id: "",
                        content: spate::spool::record::Content::One(&content),
                    };
                    let Ok(m) = spool.append_message(&msg).await else {
                        continue;
                    };
                    println!("C {} {key} {len}", m.id());
                    if n % 3 == 0
                        && spool
                            .record_states(&m, &[(0, RecipientState::Delivered)], "250")
                            .await
                            .is_ok()
                    {
                        println!("F {}", m.id());
                    }
                    if w == 0 && n % 40 == 0 {
                        let _ = spool.reclaim().await;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    std::io::stdout().flush().unwrap();
}

#[test]
fn sigkill_at_random_moments_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut committed: HashMap<MessageId, (u64, usize)> = HashMap::new();
    let mut finished: HashSet<MessageId> = HashSet::new();
    let started = Instant::now();
    let mut rounds = 0;
    let mut torn_tails = 0;
    while rounds < 40 && started.elapsed() < Duration::from_secs(4) {
        rounds += 1;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(30..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["C", id, key, len] => {
                    committed.insert(
                        id.parse().unwrap(),
                        (key.parse().unwrap(), len.parse().unwrap()),
                    );
                }
                ["F", id] => {
                    finished.insert(id.parse().unwrap());
                }
                _ => {}
            }
        }
        // Recover as the next server start would, and check.
        let rec = recover(&opts, 1).unwrap();
        assert!(
            rec.report.corrupt.is_empty(),
            "round {rounds}: corruption after kill: {:?}",
            rec.report.corrupt
        );
        torn_tails += rec.report.torn_tails.len();
        let live: HashMap<MessageId, &spate::spool::RecoveredMessage> =
            rec.messages.iter().map(|m| (m.message.id(), m)).collect();
        for m in &rec.messages {
            let (key, len) =
                parse_key(m.message.content()).expect("recovered content is one we wrote");
            assert_eq!(
                m.message.content(),
                content_for(key, len).as_slice(),
                "content of {} corrupt",
                m.message.id()
            );
            assert!(
                !finished.contains(&m.message.id()),
                "finished message {} came back",
                m.message.id()
            );
        }
        for (id, (key, len)) in &committed {
            // Every third message of a writer gets a final state; the kill may
            // land between that commit and its report, so those may be gone.
            let may_be_finished = (key & 0xff_ffff) % 3 == 0;
            if finished.contains(id) || (may_be_finished && !live.contains_key(id)) {
                continue;
            }
            let m = live
                .get(id)
                .unwrap_or_else(|| panic!("round {rounds}: committed message {id} lost"));
            assert_eq!(m.message.content(), content_for(*key, *len).as_slice());
        }
    }
    eprintln!(
        "crash test: {rounds} kills, {} commits reported, {} finished, {torn_tails} torn tails truncated",
        committed.len(),
        finished.len()
    );
    assert!(
        rounds >= 5 && committed.len() > 50,
        "test did too little to mean anything"
    );
}
