//! The spool end to end on a real directory: append with group commit,
//! recover, state records across shards, torn tails, mid-segment corruption,
//! reclamation with carry-forward, and compaction by rewrite.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;

use spate::spool::record::RECORD_HEADER_BYTES;
use spate::spool::{
    MessageId, MessageRef, NewMessage, NewRecipient, RecipientState, RecoveredMessage, Ret,
    SegmentId, Spool, SpoolError, SpoolOptions, SyncMode, ZeroFill, recover,
};

fn rt() -> compio::runtime::Runtime {
    compio::runtime::Runtime::new().expect("compio runtime")
}

fn options(dir: &Path, segment_bytes: u64) -> SpoolOptions {
    let mut o = SpoolOptions::new(dir);
    o.segment_bytes = segment_bytes;
    // These tests count segments; `prepared_segments_*` covers preparation.
    o.prepare_segments = false;
    o
}

fn content_for(i: usize, size: usize) -> Vec<u8> {
    let mut v = format!("Subject: message {i}\r\n\r\n").into_bytes();
    while v.len() < size {
        v.extend_from_slice(format!("{i:08} ").as_bytes());
    }
    v.truncate(size.max(20));
    v
}

/// Recovered messages by id.
fn by_id(messages: &[RecoveredMessage]) -> HashMap<MessageId, &RecoveredMessage> {
    messages.iter().map(|m| (m.message.id(), m)).collect()
}

/// Appends messages `range` (2,000 bytes, one recipient each), pausing
/// `pause_ms` every 50 (time for the helper thread to prepare a segment).
/// Returns each message's id with its number.
async fn append_paced(
    spool: &Spool,
    range: std::ops::Range<usize>,
    pause_ms: u64,
) -> Vec<(MessageId, usize)> {
    let mut ids = Vec::new();
    for i in range {
        ids.push((append(spool, i, 2000, 1).await.id(), i));
        if i % 50 == 0 {
            compio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        }
    }
    ids
}

async fn append(spool: &Spool, i: usize, size: usize, rcpts: usize) -> MessageRef {
    try_append(spool, i, size, rcpts).await.expect("append")
}

/// Appends message `i`: `size` bytes of [`content_for`], `rcpts` recipients.
async fn try_append(
    spool: &Spool,
    i: usize,
    size: usize,
    rcpts: usize,
) -> Result<MessageRef, SpoolError> {
    let addrs: Vec<String> = (0..rcpts)
        .map(|r| format!("user{r}@dest{}.example", i % 3))
        .collect();
    let recipients: Vec<NewRecipient<'_>> = addrs
        .iter()
        .map(|a| NewRecipient {
            forward_path: a,
            orcpt: "",
            notify: 0,
        })
        .collect();
    let content = content_for(i, size);
    let msg = NewMessage {
        received_unix_ms: 1_700_000_000_000 + i as u64,
        reverse_path: "sender@example.com",
        recipients: &recipients,
        ret: Ret::Full,
        envid: "",
        vmta_or_pool: "pool",
        vmta: "ip1",
        job_id: "",
        content: spate::spool::record::Content::One(&content),
    };
    spool.append_message(&msg).await
}

#[test]
fn append_then_recover_everything_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 256 * 1024);
    let ids: Vec<(MessageId, usize)> = {
        let rec = recover(&opts, 1).unwrap();
        assert!(rec.messages.is_empty());
        rt().block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0).unwrap();
            let mut tasks = Vec::new();
            for i in 0..200 {
                let spool = spool.clone();
                tasks.push(compio::runtime::spawn(async move {
                    let m = append(&spool, i, 100 + i * 37, 1 + i % 3).await;
                    assert_eq!(m.content(), content_for(i, 100 + i * 37).as_slice());
                    (m.id(), i)
                }));
            }
            let mut ids = Vec::new();
            for t in tasks {
                ids.push(t.await.unwrap());
            }
            spool.close().await;
            ids
        })
    };
    let rec = recover(&opts, 1).unwrap();
    assert!(
        rec.report.segments > 1,
        "small segments should have rotated"
    );
    assert!(
        rec.report.corrupt.is_empty() && rec.report.torn_tails.is_empty(),
        "{:?}",
        rec.report
    );
    let by_id = by_id(&rec.messages);
    assert_eq!(by_id.len(), 200);
    for (id, i) in ids {
        let m = by_id[&id];
        assert_eq!(m.message.content(), content_for(i, 100 + i * 37).as_slice());
        assert_eq!(m.recipients.len(), 1 + i % 3);
        let env = m.message.envelope().unwrap();
        assert_eq!(env.reverse_path, "sender@example.com");
        assert_eq!(env.recipient_count as usize, 1 + i % 3);
    }
}

#[test]
fn states_survive_restart_and_last_state_wins_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 128 * 1024);
    let (a, b, c) = {
        let rec = recover(&opts, 2).unwrap();
        rt().block_on(async {
            let s0 = Spool::open(rec.shared.clone(), 0).unwrap();
            let s1 = Spool::open(rec.shared.clone(), 1).unwrap();
            // Written by shard 0, delivered by shard 1 (cross-shard state).
            let a = append(&s0, 1, 500, 3).await;
            let b = append(&s0, 2, 500, 1).await;
            let c = append(&s1, 3, 500, 1).await;
            s1.record_states(&a, &[(0, RecipientState::Delivered)], "250 ok")
                .await
                .unwrap();
            s1.record_states(
                &a,
                &[(
                    1,
                    RecipientState::Deferred {
                        attempts: 1,
                        next_attempt_unix_s: 100,
                    },
                )],
                "451 later",
            )
            .await
            .unwrap();
            // A later state from the other shard overrides the earlier one.
            s0.record_states(
                &a,
                &[(
                    1,
                    RecipientState::Deferred {
                        attempts: 2,
                        next_attempt_unix_s: 200,
                    },
                )],
                "451 later",
            )
            .await
            .unwrap();
            s0.record_states(
                &b,
                &[(0, RecipientState::Bounced { category: 3 })],
                "550 no",
            )
            .await
            .unwrap();
            assert_eq!(a.live_recipients(), 2);
            assert_eq!(b.live_recipients(), 0);
            s0.close().await;
            s1.close().await;
            (a.id(), b.id(), c.id())
        })
    };
    let rec = recover(&opts, 2).unwrap();
    let by_id = by_id(&rec.messages);
    assert!(!by_id.contains_key(&b), "bounced message must not be live");
    assert_eq!(
        by_id[&c].recipients.as_ref(),
        &[(0, RecipientState::Queued)]
    );
    assert_eq!(
        by_id[&a].recipients.as_ref(),
        &[
            (
                1,
                RecipientState::Deferred {
                    attempts: 2,
                    next_attempt_unix_s: 200
                }
            ),
            (2, RecipientState::Queued)
        ]
    );
    assert_eq!(rec.report.messages_finished, 1);
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "seg")
}

/// The files in `dir` with extension `ext`, sorted.
fn files_ending(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn torn_tail_is_truncated_and_mid_corruption_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 1024 * 1024);
    let refs: Vec<(MessageId, u64, u64)> = {
        let rec = recover(&opts, 1).unwrap();
        rt().block_on(async {
            let s = Spool::open(rec.shared.clone(), 0).unwrap();
            let mut v = Vec::new();
            for i in 0..5 {
                let m = append(&s, i, 1000, 1).await;
                v.push((m.id(), m.record_offset(), m.content().len() as u64));
            }
            s.close().await;
            v
        })
    };
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let path = &files[0];
    // Simulate a crash mid-append: half a record after the last one, inside
    // the preallocated zeros.
    let bytes = std::fs::read(path).unwrap();
    let valid_end = {
        let raw = spate::spool::record::decode_raw(&bytes[refs[4].1 as usize..]).unwrap();
        refs[4].1 as usize + raw.stored_len
    };
    let partial = &bytes[refs[0].1 as usize..refs[0].1 as usize + 300];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(partial, valid_end as u64).unwrap();
        // And corrupt message 2's content (mid-segment).
        f.write_all_at(b"X", refs[2].1 + RECORD_HEADER_BYTES as u64 + 60)
            .unwrap();
    }
    let rec = recover(&opts, 1).unwrap();
    assert_eq!(rec.report.torn_tails.len(), 1, "{:?}", rec.report);
    assert_eq!(rec.report.torn_tails[0].1, valid_end as u64);
    assert_eq!(rec.report.corrupt.len(), 1, "{:?}", rec.report);
    assert_eq!(rec.report.corrupt[0].1, refs[2].1);
    let got: Vec<MessageId> = {
        let mut v: Vec<_> = rec.messages.iter().map(|m| m.message.id()).collect();
        v.sort();
        v
    };
    assert_eq!(got, vec![refs[0].0, refs[1].0, refs[3].0, refs[4].0]);
    assert_eq!(
        std::fs::metadata(path).unwrap().len(),
        valid_end as u64,
        "tail truncated"
    );
    drop(rec);
    // A second recovery sees a clean tail (the corruption stays reported).
    let rec = recover(&opts, 1).unwrap();
    assert!(rec.report.torn_tails.is_empty());
    assert_eq!(rec.report.corrupt.len(), 1);
}

#[test]
fn reclamation_deletes_finished_segments_and_carries_states_forward() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 64 * 1024);
    let (keep, partial) = {
        let rec = recover(&opts, 2).unwrap();
        rt().block_on(async {
            let s0 = Spool::open(rec.shared.clone(), 0).unwrap();
            let s1 = Spool::open(rec.shared.clone(), 1).unwrap();
            // One message with two recipients; recipient 0 is delivered by shard 1.
            let partial = append(&s0, 0, 2000, 2).await;
            s1.record_states(&partial, &[(0, RecipientState::Delivered)], "250")
                .await
                .unwrap();
            // Fill shard 1's segments with messages it then delivers, so its
            // segment holding the state above becomes reclaimable.
            let mut done = Vec::new();
            for i in 0..60 {
                done.push(append(&s1, i, 3000, 1).await);
            }
            for m in &done {
                s1.record_states(m, &[(0, RecipientState::Delivered)], "250")
                    .await
                    .unwrap();
            }
            let keep = append(&s1, 999, 3000, 1).await;
            let before = segment_files(&opts.path).len();
            let r1 = s1.reclaim().await.unwrap();
            assert!(!r1.deleted.is_empty(), "nothing reclaimed");
            assert!(
                r1.carried_records >= 1,
                "the delivered state for the live message must be carried"
            );
            let after = segment_files(&opts.path).len();
            assert_eq!(after, before - r1.deleted.len());
            // Shard 0's segment still holds a live message: not deleted.
            s0.close().await;
            s1.close().await;
            (keep.id(), partial.id())
        })
    };
    let rec = recover(&opts, 2).unwrap();
    let by_id = by_id(&rec.messages);
    assert_eq!(by_id.len(), 2, "only the two live messages remain");
    assert_eq!(
        by_id[&partial].recipients.as_ref(),
        &[(1, RecipientState::Queued)],
        "recipient 0 stays delivered"
    );
    assert!(by_id.contains_key(&keep));
}

#[test]
fn compaction_rewrites_a_long_deferred_message_and_it_never_resurrects() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 64 * 1024);
    opts.compact_live_fraction = 0.5;
    let deferred = RecipientState::Deferred {
        attempts: 7,
        next_attempt_unix_s: 12345,
    };
    let id = {
        let rec = recover(&opts, 1).unwrap();
        rt().block_on(async {
            let s = Spool::open(rec.shared.clone(), 0).unwrap();
            let long = append(&s, 0, 2000, 2).await;
            // A small message that stays queued pins the first segment, so the
            // old copy of `long` stays on disk after the rewrite.
            let _pin = append(&s, 500, 100, 1).await;
            let mut others = Vec::new();
            for i in 1..40 {
                others.push(append(&s, i, 3000, 1).await);
            }
            for m in &others {
                s.record_states(m, &[(0, RecipientState::Delivered)], "")
                    .await
                    .unwrap();
            }
            s.record_states(
                &long,
                &[(0, RecipientState::Delivered), (1, deferred)],
                "451",
            )
            .await
            .unwrap();
            assert!(
                s.needs_rewrite(&long),
                "first segment is mostly dead and sealed"
            );
            let old_segment = long.segment();
            let moved = s
                .rewrite_message(&long, &[RecipientState::Delivered, deferred], Some("ip2"))
                .await
                .unwrap();
            assert_ne!(moved.segment(), old_segment);
            assert_eq!(moved.content(), long.content());
            assert_eq!(moved.envelope().unwrap().vmta, "ip2");
            let r = s.reclaim().await.unwrap();
            assert!(
                !r.deleted.contains(&old_segment),
                "pinned segment must stay: {r:?}"
            );
            s.close().await;
            moved.id()
        })
    };
    let rec = recover(&opts, 1).unwrap();
    assert_eq!(rec.messages.len(), 2);
    let m = rec.messages.iter().find(|m| m.message.id() == id).unwrap();
    assert_eq!(m.message.id(), id);
    assert_eq!(m.recipients.as_ref(), &[(1, deferred)]);
    assert_eq!(m.message.envelope().unwrap().vmta, "ip2");
    assert_eq!(m.message.content(), content_for(0, 2000).as_slice());
    // Finish it, reclaim everything possible, and check it stays finished.
    let shared = rec.shared.clone();
    let msg = m.message.clone();
    drop(rec);
    rt().block_on(async {
        let s = Spool::open(shared.clone(), 0).unwrap();
        s.record_states(&msg, &[(1, RecipientState::Delivered)], "")
            .await
            .unwrap();
        // Seal the current segment by filling it, then reclaim.
        for i in 0..30 {
            let x = append(&s, 100 + i, 3000, 1).await;
            s.record_states(&x, &[(0, RecipientState::Expired)], "")
                .await
                .unwrap();
        }
        s.reclaim().await.unwrap();
        s.close().await;
    });
    drop(msg);
    drop(shared);
    let rec = recover(&opts, 1).unwrap();
    let live: Vec<MessageId> = rec.messages.iter().map(|m| m.message.id()).collect();
    assert_eq!(live.len(), 1, "only the pin stays live: {live:?}");
    assert!(
        !live.contains(&id),
        "finished message came back from its old copy"
    );
}

#[test]
fn sync_none_and_each_record_modes_work() {
    for mode in [SyncMode::None, SyncMode::EachRecord] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), 1024 * 1024);
        opts.sync = mode;
        {
            let rec = recover(&opts, 1).unwrap();
            rt().block_on(async {
                let s = Spool::open(rec.shared.clone(), 0).unwrap();
                let mut t = Vec::new();
                for i in 0..20 {
                    let s = s.clone();
                    t.push(compio::runtime::spawn(async move {
                        append(&s, i, 500, 1).await.id()
                    }));
                }
                for x in t {
                    x.await.unwrap();
                }
                s.close().await;
            });
        }
        assert_eq!(recover(&opts, 1).unwrap().messages.len(), 20, "{mode:?}");
    }
}

#[test]
fn oversized_message_is_refused_and_second_server_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 64 * 1024);
    let rec = recover(&opts, 1).unwrap();
    assert!(
        recover(&opts, 1).is_err(),
        "the spool lock must keep a second server out"
    );
    rt().block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let big = vec![b'x'; 70 * 1024];
        let r = [NewRecipient {
            forward_path: "a@b",
            orcpt: "",
            notify: 0,
        }];
        let msg = NewMessage {
            received_unix_ms: 0,
            reverse_path: "",
            recipients: &r,
            ret: Ret::Unspecified,
            envid: "",
            vmta_or_pool: "",
            vmta: "",
            job_id: "",
            content: spate::spool::record::Content::One(&big),
        };
        let e = s.append_message(&msg).await.unwrap_err();
        assert_eq!(e.smtp_reply().0, 552);
        // The spool still works afterwards.
        append(&s, 1, 100, 1).await;
        s.close().await;
    });
}

#[test]
fn failed_fsync_fails_the_batch_with_451_and_seals_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 1024 * 1024);
    let rec = recover(&opts, 1).unwrap();
    rt().block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let before = append(&s, 0, 500, 1).await;
        s.inject_sync_failures(1);
        let addrs = [NewRecipient {
            forward_path: "a@b.c",
            orcpt: "",
            notify: 0,
        }];
        let content = content_for(1, 500);
        let msg = NewMessage {
            received_unix_ms: 0,
            reverse_path: "",
            recipients: &addrs,
            ret: Ret::Unspecified,
            envid: "",
            vmta_or_pool: "",
            vmta: "",
            job_id: "",
            content: spate::spool::record::Content::One(&content),
        };
        let err = s.append_message(&msg).await.unwrap_err();
        assert!(
            matches!(err, spate::spool::SpoolError::Io { .. }),
            "{err:?}"
        );
        assert_eq!(err.smtp_reply().0, 451);
        // Never retried and assumed good: the next append goes to a new segment.
        let after = append(&s, 2, 500, 1).await;
        assert_ne!(
            after.segment(),
            before.segment(),
            "segment with a failed fsync must be sealed"
        );
        s.close().await;
    });
}

#[test]
fn an_append_abandoned_before_its_commit_is_not_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 1024 * 1024);
    let kept = {
        let rec = recover(&opts, 1).unwrap();
        rt().block_on(async {
            let s = Spool::open(rec.shared.clone(), 0).unwrap();
            let addrs = [NewRecipient {
                forward_path: "a@b.c",
                orcpt: "",
                notify: 0,
            }];
            let content = content_for(7, 300);
            let msg = NewMessage {
                received_unix_ms: 0,
                reverse_path: "",
                recipients: &addrs,
                ret: Ret::Unspecified,
                envid: "",
                vmta_or_pool: "",
                vmta: "",
                job_id: "",
                content: spate::spool::record::Content::One(&content),
            };
            {
                // Poll once (the record is queued), then drop: the client left.
                let mut fut = std::pin::pin!(s.append_message(&msg));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                assert!(fut.as_mut().poll(&mut cx).is_pending());
            }
            let kept = append(&s, 1, 300, 1).await;
            s.close().await;
            kept.id()
        })
    };
    let rec = recover(&opts, 1).unwrap();
    let ids: Vec<MessageId> = rec.messages.iter().map(|m| m.message.id()).collect();
    assert_eq!(ids, vec![kept]);
    assert_eq!(
        rec.report.messages_finished, 1,
        "the abandoned message is on disk, finished"
    );
}

#[test]
fn finished_segments_that_refer_to_each_other_are_both_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 64 * 1024);
    let rec = recover(&opts, 2).unwrap();
    rt().block_on(async {
        let s0 = Spool::open(rec.shared.clone(), 0).unwrap();
        let s1 = Spool::open(rec.shared.clone(), 1).unwrap();
        let m0 = append(&s0, 0, 1000, 1).await;
        let m1 = append(&s1, 1, 1000, 1).await;
        // Each shard finishes the other's message: the state records point across.
        s1.record_states(&m0, &[(0, RecipientState::Delivered)], "")
            .await
            .unwrap();
        s0.record_states(&m1, &[(0, RecipientState::Delivered)], "")
            .await
            .unwrap();
        let first0 = m0.segment();
        let first1 = m1.segment();
        // Several rounds of traffic (finished at once) seal segments; reclaim each round.
        let mut deleted = Vec::new();
        for round in 0..4 {
            for i in 0..25 {
                for s in [&s0, &s1] {
                    let m = append(s, 100 * round + i, 3000, 1).await;
                    s.record_states(&m, &[(0, RecipientState::Delivered)], "")
                        .await
                        .unwrap();
                }
            }
            deleted.extend(s0.reclaim().await.unwrap().deleted);
            deleted.extend(s1.reclaim().await.unwrap().deleted);
        }
        assert!(
            deleted.contains(&first0) && deleted.contains(&first1),
            "{deleted:?}"
        );
        s0.close().await;
        s1.close().await;
    });
    drop(rec);
    let rec = recover(&opts, 2).unwrap();
    assert!(
        rec.messages.is_empty(),
        "{} messages came back",
        rec.messages.len()
    );
    // Only the segments current at shutdown and a bounded tail remain.
    assert!(
        rec.report.segments <= 8,
        "{} segments left",
        rec.report.segments
    );
}

#[test]
fn prepared_segments_take_over_and_everything_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 256 * 1024);
    opts.prepare_segments = true;
    let (ids, prepared) = {
        let rec = recover(&opts, 1).unwrap();
        rt().block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0).unwrap();
            // Pauses give the helper thread time to zero the next segment.
            let ids = append_paced(&spool, 0..300, 100).await;
            spool.close().await;
            (ids, rec.shared.segments_prepared.load(Ordering::Relaxed))
        })
    };
    assert!(prepared >= 2, "only {prepared} prepared segments used");
    // A preparation cut short by the end of the run is deleted by recovery.
    std::fs::write(dir.path().join("prep-shard-0.tmp"), b"partial").unwrap();
    let rec = recover(&opts, 1).unwrap();
    assert!(!dir.path().join("prep-shard-0.tmp").exists());
    assert!(
        rec.report.corrupt.is_empty() && rec.report.torn_tails.is_empty(),
        "{:?}",
        rec.report
    );
    let by_id = by_id(&rec.messages);
    assert_eq!(by_id.len(), 300);
    for (id, i) in ids {
        assert_eq!(
            by_id[&id].message.content(),
            content_for(i, 2000).as_slice()
        );
    }
}

/// Preparations by `zero_fill`: `auto` zero-fills while fdatasyncs carry
/// small batches and only allocates once they carry large ones; `always` and
/// `never` do as they say. Whatever the fill, every message recovers.
#[test]
fn prepared_segments_are_zero_filled_by_the_size_of_what_each_sync_carries() {
    // (mode, message size, expect zero-filled preparations, allocated ones)
    let cases = [
        (ZeroFill::Auto, 2_000, true, false),
        (ZeroFill::Auto, 300_000, false, true),
        (ZeroFill::Never, 2_000, false, true),
        (ZeroFill::Always, 300_000, true, false),
    ];
    for (mode, size, zero_filled, allocated) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), 1024 * 1024);
        opts.prepare_segments = true;
        opts.zero_fill = mode;
        let count = 8_000_000 / size;
        let (ids, zeros, allocs, used) = {
            let rec = recover(&opts, 1).unwrap();
            rt().block_on(async {
                let spool = Spool::open(rec.shared.clone(), 0).unwrap();
                let mut ids = Vec::new();
                for i in 0..count {
                    // One at a time: each fdatasync carries one message.
                    let m = append(&spool, i, size, 1).await;
                    ids.push((m.id(), i));
                    if i % (count / 12) == 0 {
                        // Time for the helper thread to prepare.
                        compio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
                spool.close().await;
                let shared = &rec.shared;
                (
                    ids,
                    shared.segments_zero_filled.load(Ordering::Relaxed),
                    shared.segments_allocated.load(Ordering::Relaxed),
                    shared.segments_prepared.load(Ordering::Relaxed),
                )
            })
        };
        let what = format!(
            "{mode:?} at {size} bytes: {zeros} zero-filled, {allocs} allocated, {used} used"
        );
        // The prepared segments were taken by rotations, whatever their fill.
        assert!(used >= 2, "{what}");
        // Under auto the first preparation waits for figures, so large
        // messages never get a zeroed segment.
        match (zero_filled, allocated) {
            (true, false) => assert!(zeros >= 2 && allocs == 0, "{what}"),
            (false, true) => assert!(zeros == 0 && allocs >= 2, "{what}"),
            _ => unreachable!("{what}"),
        }
        let rec = recover(&opts, 1).unwrap();
        assert!(
            rec.report.corrupt.is_empty() && rec.report.torn_tails.is_empty(),
            "{what}: {:?}",
            rec.report
        );
        let by_id = by_id(&rec.messages);
        assert_eq!(by_id.len(), count, "{what}");
        for (id, i) in ids {
            assert_eq!(
                by_id[&id].message.content(),
                content_for(i, size).as_slice()
            );
        }
    }
}

#[test]
fn with_two_batches_in_flight_every_acknowledged_record_survives_a_failed_sync() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), 1024 * 1024);
    let (acked, failed) = {
        let rec = recover(&opts, 1).unwrap();
        rt().block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0).unwrap();
            let mut tasks = Vec::new();
            for i in 0..120 {
                if i == 40 {
                    spool.inject_sync_failures(1);
                }
                let spool = spool.clone();
                tasks.push(compio::runtime::spawn(async move {
                    try_append(&spool, i, 700, 1).await.map(|m| (m.id(), i))
                }));
                if i % 7 == 0 {
                    compio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
            }
            let (mut acked, mut failed) = (Vec::new(), 0);
            for t in tasks {
                match t.await.unwrap() {
                    Ok(x) => acked.push(x),
                    Err(_) => failed += 1,
                }
            }
            // How many of the burst share the failed batch depends on the
            // machine's load; after it, appends succeed again (a new segment).
            for i in 120..140 {
                let m = try_append(&spool, i, 700, 1)
                    .await
                    .expect("an append after the failed sync");
                acked.push((m.id(), i));
            }
            spool.close().await;
            (acked, failed)
        })
    };
    assert!(failed > 0, "the injected sync failure failed nothing");
    let rec = recover(&opts, 1).unwrap();
    let by_id = by_id(&rec.messages);
    for (id, i) in acked {
        let m = by_id.get(&id).expect("an acknowledged message was lost");
        assert_eq!(m.message.content(), content_for(i, 700).as_slice());
    }
}

/// The helper thread installs the next segment under its final name before
/// it is needed. A crash then leaves it as an empty segment: recovery keeps
/// everything acknowledged, reports nothing corrupt, and reclamation deletes
/// it. A clean close removes it.
#[test]
fn a_prepared_segment_is_an_empty_one_until_used() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 256 * 1024);
    opts.prepare_segments = true;
    // Prepared at open (auto would wait for a few fdatasyncs).
    opts.zero_fill = ZeroFill::Always;
    let rec = recover(&opts, 1).unwrap();
    let id = rt().block_on(async {
        let spool = Spool::open(rec.shared.clone(), 0).unwrap();
        let id = append(&spool, 1, 2000, 1).await.id();
        // The first segment (made on the spot) and the prepared next one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while segment_files(dir.path()).len() < 2 {
            assert!(std::time::Instant::now() < deadline, "no prepared segment");
            compio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // "Crash" here: a copy of the directory as it stands.
        for path in segment_files(dir.path()) {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        spool.close().await;
        id
    });
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "close takes the unused prepared segment away"
    );

    let copied = options(copy.path(), 256 * 1024);
    let rec = recover(&copied, 1).unwrap();
    assert!(
        rec.report.corrupt.is_empty() && rec.report.torn_tails.is_empty(),
        "{:?}",
        rec.report
    );
    assert_eq!(rec.report.segments, 2);
    assert_eq!(rec.messages.len(), 1);
    assert_eq!(rec.messages[0].message.id(), id);
    let deleted = rt().block_on(async {
        let spool = Spool::open(rec.shared.clone(), 0).unwrap();
        let r = spool.reclaim().await.unwrap();
        spool.close().await;
        r.deleted
    });
    assert_eq!(
        deleted.len(),
        1,
        "the empty segment is reclaimed: {deleted:?}"
    );
    assert_eq!(segment_files(copy.path()).len(), 1);
}

fn free_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "free")
}

/// A prepared segment with written blocks that was never used goes back to
/// the pool at close (renamed to its free name), and the next start makes
/// its first prepared segment from it; with recycling off, or for a segment
/// only allocated, close deletes it.
#[test]
fn an_unused_prepared_segment_goes_back_to_the_pool_at_close() {
    for (recycle, zero_fill, kept) in [
        (true, ZeroFill::Always, true),
        (false, ZeroFill::Always, false),
        (true, ZeroFill::Never, false),
    ] {
        let what = format!("recycle {recycle}, zero_fill {zero_fill:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), 256 * 1024);
        opts.prepare_segments = true;
        opts.zero_fill = zero_fill;
        opts.recycle_segments = recycle;
        let rec = recover(&opts, 1).unwrap();
        rt().block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0).unwrap();
            append(&spool, 1, 2000, 1).await;
            // Close waits for a preparation still running.
            spool.close().await;
        });
        drop(rec);
        let segs = segment_files(dir.path());
        assert_eq!(segs.len(), 1, "{what}: {segs:?}");
        let free = free_files(dir.path());
        let leftovers = files_ending(dir.path(), "tmp");
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
        if !kept {
            assert!(free.is_empty(), "{what}: {free:?}");
            continue;
        }
        // Under the prepared segment's own number.
        assert_eq!(free.len(), 1, "{what}");
        let name = free[0].file_name().unwrap().to_string_lossy().into_owned();
        let seg = segs[0].file_name().unwrap().to_string_lossy().into_owned();
        let number = |n: &str, prefix: &str, suffix: &str| {
            n.strip_prefix(prefix)?
                .strip_suffix(suffix)?
                .parse::<u64>()
                .ok()
        };
        let (free_n, seg_n) = (
            number(&name, "free-0-", ".free"),
            number(&seg, "shard-0-", ".seg"),
        );
        assert!(
            free_n.is_some() && seg_n.is_some() && free_n != seg_n,
            "{what}: {name} {seg}"
        );
        // The next start keeps it and the first preparation reuses it.
        let rec = recover(&opts, 1).unwrap();
        assert!(rec.report.corrupt.is_empty(), "{what}: {:?}", rec.report);
        assert_eq!(rec.messages.len(), 1, "{what}");
        let recycled = rt().block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0).unwrap();
            append(&spool, 2, 2000, 1).await;
            spool.close().await;
            rec.shared.segments_recycled.load(Ordering::Relaxed)
        });
        assert_eq!(recycled, 1, "{what}");
    }
}

/// Reclaimed segments' files are kept (at most 2 per shard) and the next
/// prepared segments are made from them; their leftovers (the delivered
/// messages of the first round, with valid CRCs) never come back at
/// recovery, and every message of the second round does, from a copy taken
/// mid-run (a crash) as well as after a clean close. With recycling off the
/// files are deleted as before.
#[test]
fn finished_segments_are_recycled_and_their_leftovers_never_recover() {
    for recycle in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let mut opts = reuse_options(dir.path());
        opts.recycle_segments = recycle;
        let what = format!("recycle_segments = {recycle}");
        let rec = recover(&opts, 1).unwrap();
        let (ids, recycled) = rt().block_on(async {
            let spool = Spool::open(rec.shared.clone(), 0).unwrap();
            // Round 1: about 4 segments of messages, all delivered.
            let mut done = Vec::new();
            for i in 0..400 {
                done.push(append(&spool, i, 2000, 1).await);
                if i % 100 == 0 {
                    compio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            for m in &done {
                spool
                    .record_states(m, &[(0, RecipientState::Delivered)], "250")
                    .await
                    .unwrap();
            }
            // A handle to a finished message of the first segment is still
            // held (as a bounce being written would): that segment's file
            // must not be rewritten under its map.
            let held = done[0].clone();
            drop(done);
            let r = spool.reclaim().await.unwrap();
            assert!(r.deleted.len() >= 3, "{what}: {r:?}");
            assert!(r.deleted.contains(&held.segment()), "{what}: {r:?}");
            // The pool is filled once the last handles are dropped.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let want = if recycle { 2 } else { 0 };
            while free_files(dir.path()).len() != want {
                assert!(std::time::Instant::now() < deadline, "{what}: free files");
                compio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let held_name = format!(
                "free-{}-{:010}.free",
                held.segment().shard,
                held.segment().number
            );
            assert!(
                !free_files(dir.path())
                    .iter()
                    .any(|p| p.ends_with(&held_name)),
                "{what}: the held segment's file was kept for reuse"
            );
            assert!(held.content().starts_with(b"Subject: message 0\r\n"));
            // Round 2: more segments, over the recycled files.
            let ids = append_paced(&spool, 1000..1300, 50).await;
            // "Crash" here: a copy of the directory as it stands.
            for path in segment_files(dir.path()) {
                std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            }
            // The held map still reads the first round's message.
            assert!(held.content().starts_with(b"Subject: message 0\r\n"));
            drop(held);
            spool.close().await;
            (ids, rec.shared.segments_recycled.load(Ordering::Relaxed))
        });
        drop(rec);
        if recycle {
            assert!(recycled >= 2, "{what}: {recycled} recycled");
        } else {
            assert_eq!(recycled, 0, "{what}");
        }
        // The inspector reads the recycled files' generations (and, like
        // recovery, none of their leftovers).
        let inv = spate::spool::inspect::inventory(copy.path()).unwrap();
        let reused = inv.segments.iter().filter(|s| s.generation > 0).count();
        assert_eq!(reused > 0, recycle, "{what}: {reused} recycled in the copy");
        let live = inv
            .messages
            .iter()
            .filter(|m| m.recipients.iter().any(|r| !r.state.is_final()))
            .count();
        assert_eq!(live, ids.len(), "{what}");
        for d in [copy.path(), dir.path()] {
            let rec = recover(&options_like(&opts, d), 1).unwrap();
            assert!(
                rec.report.corrupt.is_empty() && rec.report.torn_tails.is_empty(),
                "{what}: {:?}",
                rec.report
            );
            let by_id = by_id(&rec.messages);
            assert_eq!(by_id.len(), ids.len(), "{what}: {}", d.display());
            for (id, i) in &ids {
                assert_eq!(
                    by_id[id].message.content(),
                    content_for(*i, 2000).as_slice()
                );
            }
        }
    }
}

/// Options for the reuse tests: small segments made ahead, only allocated
/// (so that written blocks come from reuse alone).
fn reuse_options(dir: &Path) -> SpoolOptions {
    let mut o = options(dir, 256 * 1024);
    o.prepare_segments = true;
    o.zero_fill = ZeroFill::Never;
    o
}

/// `opts` for another directory.
fn options_like(opts: &SpoolOptions, dir: &Path) -> SpoolOptions {
    let mut o = opts.clone();
    o.path = dir.to_path_buf();
    o
}

/// A kept free file survives a restart, and the shard's new segments are
/// numbered above it, so a later free file never takes its name (which
/// would leave the pool pointing at a file still mapped).
#[test]
fn free_files_survive_a_restart_and_are_numbered_around() {
    let dir = tempfile::tempdir().unwrap();
    let opts = reuse_options(dir.path());
    // A whole segment's file kept from an earlier run, under a high number,
    // and one of the wrong size (deleted).
    let rec = recover(&opts, 1).unwrap();
    rt().block_on(async {
        let spool = Spool::open(rec.shared.clone(), 0).unwrap();
        append(&spool, 1, 2000, 1).await;
        spool.close().await;
    });
    drop(rec);
    let seg = segment_files(dir.path()).remove(0);
    std::fs::remove_file(&seg).unwrap();
    let kept = dir.path().join("free-0-0000000041.free");
    let file = std::fs::File::create(&kept).unwrap();
    file.set_len(256 * 1024).unwrap();
    drop(file);
    let short = dir.path().join("free-0-0000000007.free");
    std::fs::write(&short, b"short").unwrap();
    let rec = recover(&opts, 1).unwrap();
    assert!(kept.exists() && !short.exists());
    rt().block_on(async {
        let spool = Spool::open(rec.shared.clone(), 0).unwrap();
        append(&spool, 2, 2000, 1).await;
        spool.close().await;
    });
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.as_str() > "shard-0-0000000041.seg"),
        "{names:?}"
    );
}

/// Appends messages from number `i` on (recording each in `done`) until one
/// lands outside `seg`; returns the next number.
async fn fill_segment(
    s: &Spool,
    seg: SegmentId,
    mut i: usize,
    done: &mut Vec<MessageRef>,
) -> usize {
    loop {
        let m = append(s, i, 2000, 1).await;
        i += 1;
        let moved = m.segment() != seg;
        done.push(m);
        if moved {
            return i;
        }
    }
}

/// Delivers every message of `done`, lets go of them and reclaims: each of
/// `finished` must be deleted.
async fn deliver_and_reclaim(s: &Spool, done: Vec<MessageRef>, finished: &[SegmentId]) {
    for m in &done {
        s.record_states(m, &[(0, RecipientState::Delivered)], "250")
            .await
            .unwrap();
    }
    drop(done);
    let r = s.reclaim().await.unwrap();
    assert!(finished.iter().all(|f| r.deleted.contains(f)), "{r:?}");
}

/// The pool kept `kept`'s file and not `dropped`'s.
fn assert_pooled(dir: &Path, kept: SegmentId, dropped: SegmentId) {
    let free: Vec<String> = free_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let name = |id: SegmentId| format!("free-{}-{:010}.free", id.shard, id.number);
    assert!(free.contains(&name(kept)), "{free:?}");
    assert!(!free.contains(&name(dropped)), "{free:?}");
}

/// A segment that saw a failed fdatasync is never reused (its blocks may be
/// bad), while a healthy full one beside it is.
#[test]
fn a_segment_with_failed_io_is_not_kept_for_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let opts = reuse_options(dir.path());
    let rec = recover(&opts, 1).unwrap();
    let shared = rec.shared.clone();
    let (failed, healthy) = rt().block_on(async {
        let s = Spool::open(shared.clone(), 0).unwrap();
        let mut done = Vec::new();
        // Segment A: filled past 7/8, then a failed fdatasync seals it.
        let first = append(&s, 0, 2000, 1).await;
        let a = first.segment();
        done.push(first);
        let mut i = 1;
        while shared.segment(a).unwrap().used_bytes() < 236 * 1024 {
            done.push(append(&s, i, 2000, 1).await);
            i += 1;
        }
        s.inject_sync_failures(1);
        assert!(try_append(&s, i, 2000, 1).await.is_err());
        // Segment B: filled until the next append goes elsewhere.
        let next = append(&s, i + 1, 2000, 1).await;
        let b = next.segment();
        assert_ne!(a, b);
        done.push(next);
        fill_segment(&s, b, i + 2, &mut done).await;
        deliver_and_reclaim(&s, done, &[a, b]).await;
        s.close().await;
        (a, b)
    });
    assert_pooled(dir.path(), healthy, failed);
}

/// A finished segment whose blocks were mostly never written (only
/// allocated, and sealed early: here when the shard moves from the segment it
/// made on the spot to a zero-filled prepared one) is not kept for reuse, as
/// fdatasyncs into it would still convert extents; a full one is.
#[test]
fn a_mostly_unwritten_segment_is_not_kept_for_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = reuse_options(dir.path());
    opts.zero_fill = ZeroFill::Always;
    let rec = recover(&opts, 1).unwrap();
    let shared = rec.shared.clone();
    let (sparse, full) = rt().block_on(async {
        let s = Spool::open(shared.clone(), 0).unwrap();
        let first = append(&s, 0, 2000, 1).await;
        let sparse = first.segment();
        let mut done = vec![first];
        // Once the prepared segment is ready, the next append moves to it
        // (a few more may land here first: still far under 7/8).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut i = 1;
        let full = loop {
            let m = append(&s, i, 2000, 1).await;
            i += 1;
            let seg = m.segment();
            done.push(m);
            if seg != sparse {
                break seg;
            }
            assert!(std::time::Instant::now() < deadline, "no prepared segment");
            compio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let left = shared.segment(sparse).unwrap();
        assert!(left.is_sealed() && left.used_bytes() < 128 * 1024);
        drop(left);
        fill_segment(&s, full, i, &mut done).await;
        deliver_and_reclaim(&s, done, &[sparse, full]).await;
        s.close().await;
        (sparse, full)
    });
    assert_pooled(dir.path(), full, sparse);
}

/// A state record carried forward out of a finished segment lands in a
/// segment of another use (recycled files have their own salts, carried
/// records come as their old segment had them) and is stamped for it: after
/// several rounds of carrying between recycled files, the state is still
/// there at recovery, as is everything written after it.
#[test]
fn carried_records_take_the_use_of_the_segment_they_land_in() {
    let dir = tempfile::tempdir().unwrap();
    let opts = reuse_options(dir.path());
    let rec = recover(&opts, 2).unwrap();
    let shared = rec.shared.clone();
    let (partial, keep, carried_late) = rt().block_on(async {
        let s0 = Spool::open(shared.clone(), 0).unwrap();
        let s1 = Spool::open(shared.clone(), 1).unwrap();
        // Recipient 0 of shard 0's message is delivered by shard 1: that
        // state record must outlive every segment of shard 1 it sits in.
        let partial = append(&s0, 0, 2000, 2).await;
        s1.record_states(&partial, &[(0, RecipientState::Delivered)], "250")
            .await
            .unwrap();
        let mut carried_late = 0;
        let mut n = 1;
        for _ in 0..5 {
            let mut done = Vec::new();
            for i in n..n + 300 {
                done.push(append(&s1, i, 2000, 1).await);
                if i % 50 == 0 {
                    // Time for the helper to prepare the next segment.
                    compio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            n += 300;
            for m in &done {
                s1.record_states(m, &[(0, RecipientState::Delivered)], "250")
                    .await
                    .unwrap();
            }
            drop(done);
            let recycled = shared.segments_recycled.load(Ordering::Relaxed);
            let r = s1.reclaim().await.unwrap();
            if recycled > 0 {
                carried_late += r.carried_records;
            }
        }
        let keep = append(&s1, n, 2000, 1).await.id();
        s0.close().await;
        s1.close().await;
        (partial.id(), keep, carried_late)
    });
    drop((rec, shared));
    assert!(carried_late >= 1, "nothing carried after reuse began");
    let rec = recover(&opts, 2).unwrap();
    assert!(rec.report.corrupt.is_empty(), "{:?}", rec.report);
    let by_id = by_id(&rec.messages);
    assert_eq!(
        by_id[&partial].recipients.as_ref(),
        &[(1, RecipientState::Queued)],
        "recipient 0 stays delivered"
    );
    assert!(by_id.contains_key(&keep));
}

/// fdatasyncs the spool has made so far.
fn syncs(shared: &spate::spool::SpoolShared) -> u64 {
    shared.sync_latency.snapshot().count
}

/// A delivered recipient's state does not start an fdatasync of its own
/// while the delay runs: it commits with the next message, in one.
#[test]
fn a_delivered_state_rides_with_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 1024 * 1024);
    opts.lazy_records_delay = std::time::Duration::from_secs(60);
    let rec = recover(&opts, 1).unwrap();
    let shared = rec.shared.clone();
    let second = rt().block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let first = append(&s, 1, 500, 1).await;
        let before = syncs(&shared);
        let done = std::rc::Rc::new(std::cell::Cell::new(false));
        let state = {
            let (s, first, done) = (s.clone(), first.clone(), done.clone());
            compio::runtime::spawn(async move {
                s.record_states_lazily(&first, &[(0, RecipientState::Delivered)], "250 ok")
                    .await
                    .unwrap();
                done.set(true);
            })
        };
        // Time for a flush to start and finish, if anything started one.
        compio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!done.get(), "the delivered state committed on its own");
        assert_eq!(syncs(&shared), before, "an fdatasync for the state alone");
        let second = append(&s, 2, 500, 1).await;
        state.await.unwrap();
        assert!(done.get());
        assert_eq!(
            syncs(&shared),
            before + 1,
            "the state and the message in one"
        );
        s.close().await;
        second.id()
    });
    drop((rec, shared));
    // The first message is finished; the second is still to deliver.
    let ids: Vec<MessageId> = recover(&opts, 1)
        .unwrap()
        .messages
        .iter()
        .map(|m| m.message.id())
        .collect();
    assert_eq!(ids, vec![second]);
}

/// Alone, a delivered state commits once the delay has passed, not before;
/// closing the spool commits one still waiting at once.
#[test]
fn a_delivered_state_alone_commits_after_the_delay_or_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 1024 * 1024);
    let delay = std::time::Duration::from_millis(200);
    opts.lazy_records_delay = delay;
    let rec = recover(&opts, 1).unwrap();
    let shared = rec.shared.clone();
    rt().block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let first = append(&s, 1, 500, 1).await;
        let before = syncs(&shared);
        let started = std::time::Instant::now();
        s.record_states_lazily(&first, &[(0, RecipientState::Delivered)], "250 ok")
            .await
            .unwrap();
        assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
        assert_eq!(syncs(&shared), before + 1);
        s.close().await;
    });
    drop((rec, shared));
    assert!(recover(&opts, 1).unwrap().messages.is_empty());

    // A delay no test waits for: the close flushes the state.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 1024 * 1024);
    opts.lazy_records_delay = std::time::Duration::from_secs(600);
    let rec = recover(&opts, 1).unwrap();
    rt().block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let first = append(&s, 1, 500, 1).await;
        let state = {
            let (s, first) = (s.clone(), first.clone());
            compio::runtime::spawn(async move {
                s.record_states_lazily(&first, &[(0, RecipientState::Delivered)], "250 ok")
                    .await
            })
        };
        compio::time::sleep(std::time::Duration::from_millis(20)).await;
        let closing = std::time::Instant::now();
        s.close().await;
        state.await.unwrap().unwrap();
        assert!(closing.elapsed() < std::time::Duration::from_secs(60));
    });
    drop(rec);
    assert!(recover(&opts, 1).unwrap().messages.is_empty());
}

#[test]
fn dropping_the_last_handle_commits_a_waiting_delivered_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 1024 * 1024);
    // A delay no test waits for: only the drop can flush the state.
    opts.lazy_records_delay = std::time::Duration::from_secs(600);
    let rec = recover(&opts, 1).unwrap();
    let shared = rec.shared.clone();
    rt().block_on(async {
        let s = Spool::open(rec.shared.clone(), 0).unwrap();
        let first = append(&s, 1, 500, 1).await;
        {
            let mut state = std::pin::pin!(s.record_states_lazily(
                &first,
                &[(0, RecipientState::Delivered)],
                "250 ok"
            ));
            // One poll queues the state; then its waiter goes away.
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(state.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(polled, "the state waits for a batch");
        }
        let before = syncs(&shared);
        drop(s);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while syncs(&shared) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the last handle went and the state was not written"
            );
            compio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(first);
    });
    drop((rec, shared));
    assert!(recover(&opts, 1).unwrap().messages.is_empty());
}
