//! The read-only inventory behind `spate-spool`: it sees what recovery sees,
//! reports corruption by segment and offset, works beside a running spool
//! (which holds the lock) and never modifies a file.

use spate::spool::inspect::inventory;
use spate::spool::record::RECORD_HEADER_BYTES;
use spate::spool::{NewMessage, NewRecipient, RecipientState, Ret, Spool, SpoolOptions, recover};

fn file_states(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
                bytes,
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn inventory_matches_the_spool_and_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SpoolOptions::new(dir.path());
    opts.segment_bytes = 64 * 1024;
    // No helper thread making the next segment while the files are compared
    // (under zero_fill = "auto" it starts after a few fdatasyncs, and could
    // still be writing when the spool is left open below).
    opts.prepare_segments = false;
    let rec = recover(&opts, 1).unwrap();
    let rt = compio::runtime::Runtime::new().unwrap();
    let (ids, offsets) = rt.block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..30 {
            let rcpts = [
                NewRecipient {
                    forward_path: "a@gmail.com",
                    orcpt: "",
                    notify: 0,
                },
                NewRecipient {
                    forward_path: "b@yahoo.com",
                    orcpt: "",
                    notify: 0,
                },
            ];
            let content = vec![b'z'; 3000];
            let msg = NewMessage {
                received_unix_ms: i,
                reverse_path: "s@example.com",
                recipients: &rcpts,
                ret: Ret::Unspecified,
                envid: "",
                vmta_or_pool: "pool",
                vmta: "ip1",
                job_id: "j",
                content: spate::spool::record::Content::One(&content),
            };
            let m = s.append_message(&msg).await.unwrap();
            if i % 2 == 0 {
                s.record_states(
                    &m,
                    &[(0, RecipientState::Delivered), (1, RecipientState::Expired)],
                    "",
                )
                .await
                .unwrap();
            } else {
                s.record_states(
                    &m,
                    &[(
                        1,
                        RecipientState::Deferred {
                            attempts: 2,
                            next_attempt_unix_s: 9,
                        },
                    )],
                    "",
                )
                .await
                .unwrap();
            }
            ids.push(m.id());
            offsets.push((m.segment(), m.record_offset()));
        }
        // Leave the spool open (as a running server would) while we inspect.
        (ids, offsets)
    });
    let before = file_states(dir.path());
    let inv = inventory(dir.path()).unwrap();
    assert_eq!(
        file_states(dir.path()),
        before,
        "inventory modified the spool"
    );
    assert_eq!(inv.messages.len(), 30);
    let live: Vec<_> = inv.messages.iter().filter(|m| m.is_live()).collect();
    assert_eq!(live.len(), 15);
    for m in &live {
        assert_eq!(m.recipients[0].state, RecipientState::Queued);
        assert_eq!(
            m.recipients[1].state,
            RecipientState::Deferred {
                attempts: 2,
                next_attempt_unix_s: 9
            }
        );
        assert_eq!(m.recipients[1].forward_path, "b@yahoo.com");
        assert_eq!(m.vmta, "ip1");
    }
    assert!(
        inv.segments
            .iter()
            .all(|s| s.corrupt.is_empty() && s.header_error.is_none())
    );
    assert!(
        ids.iter()
            .all(|id| inv.messages.iter().any(|m| m.id == *id))
    );
    let content = spate::spool::inspect::read_content(dir.path(), &inv.messages[0]).unwrap();
    assert_eq!(content, vec![b'z'; 3000]);
    drop(rec);

    // Corrupt one record in a sealed segment: reported with segment and offset.
    // A message with another record after it in the same sealed segment (how
    // many land in the first segment depends on when the prepared one is ready).
    let last_seg = offsets.last().unwrap().0;
    let (seg, off) = offsets
        .windows(2)
        .find(|w| w[0].0 == w[1].0 && w[0].0 != last_seg)
        .map(|w| w[0])
        .expect("two messages in one sealed segment");
    let path = dir.path().join(spate::spool::segment::file_name(seg));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"\xff", off + RECORD_HEADER_BYTES as u64 + 100)
            .unwrap();
    }
    let inv = inventory(dir.path()).unwrap();
    let bad: Vec<_> = inv
        .segments
        .iter()
        .flat_map(|s| s.corrupt.iter().map(move |c| (s.id, c.offset as u64)))
        .collect();
    assert_eq!(bad, vec![(seg, off)]);
}
