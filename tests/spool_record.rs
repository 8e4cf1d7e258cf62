//! Record codec and segment scan: round trips, every truncation, every
//! single-byte corruption, torn tails, resync after mid-segment corruption,
//! and a replay of the fuzz corpus.

use spate::spool::record::{
    self, NewMessage, NewRecipient, RECORD_HEADER_BYTES, RecipientState, RecordError, Ret,
    SEGMENT_HEADER_BYTES, SegmentHeader, StateRecord, UseKey,
};
use spate::spool::scan::{scan_records, walk_written};
use spate::spool::{MessageId, SegmentId};

fn sample_message(content: &[u8]) -> Vec<u8> {
    sample_message_of(record::Content::One(content))
}

fn sample_message_of(content: record::Content<'_>) -> Vec<u8> {
    sample_message_for(UseKey::FIRST, content)
}

fn sample_message_for(key: UseKey, content: record::Content<'_>) -> Vec<u8> {
    let rcpts = [
        NewRecipient {
            forward_path: "a@example.com",
            orcpt: "rfc822;a@example.com",
            notify: record::NOTIFY_FAILURE,
        },
        NewRecipient {
            forward_path: "b@exämple.org",
            orcpt: "",
            notify: 0,
        },
    ];
    let msg = NewMessage {
        received_unix_ms: 1_700_000_000_123,
        reverse_path: "bounce@sender.example",
        recipients: &rcpts,
        ret: Ret::Hdrs,
        envid: "env-1",
        vmta_or_pool: "pool1",
        vmta: "ip1",
        job_id: "job42",
        content,
    };
    let mut out = Vec::new();
    record::encode_message_for(&mut out, key, 77, MessageId(77), &msg, None).unwrap();
    out
}

fn sample_state() -> Vec<u8> {
    sample_state_for(UseKey::FIRST)
}

fn sample_state_for(key: UseKey) -> Vec<u8> {
    let mut out = Vec::new();
    let rec = StateRecord {
        message: MessageId(77),
        home: SegmentId {
            shard: 1,
            number: 9,
        },
        recipient: 1,
        state: RecipientState::Deferred {
            attempts: 3,
            next_attempt_unix_s: 1_700_000_600,
        },
        reply: "451 4.7.1 try later",
    };
    record::encode_state_for(&mut out, key, 78, &rec).unwrap();
    out
}

#[test]
fn content_in_pieces_encodes_exactly_like_the_joined_bytes() {
    let pieces: [&[u8]; 4] = [
        b"Received: from x\r\n",
        b"",
        b"Subject: hi\r\n\r\n",
        b"body\r\n",
    ];
    let joined = pieces.concat();
    let from_pieces = sample_message_of(record::Content::Pieces(&pieces));
    assert_eq!(from_pieces, sample_message(&joined));
    let m = record::decode_message(record::decode_raw(&from_pieces).unwrap().payload).unwrap();
    assert_eq!(m.content, &joined[..]);
    assert_eq!(record::Content::Pieces(&pieces).len(), joined.len());
}

#[test]
fn message_round_trip() {
    let content = b"Subject: hi\r\n\r\nbody\r\n";
    let bytes = sample_message(content);
    assert_eq!(bytes.len() % 8, 0);
    let raw = record::decode_raw(&bytes).unwrap();
    assert_eq!(raw.kind, record::KIND_MESSAGE);
    assert_eq!(raw.seq, 77);
    assert_eq!(raw.stored_len, bytes.len());
    let m = record::decode_message(raw.payload).unwrap();
    assert_eq!(m.id, MessageId(77));
    assert_eq!(m.received_unix_ms, 1_700_000_000_123);
    assert_eq!(m.reverse_path, "bounce@sender.example");
    assert_eq!(m.ret, Ret::Hdrs);
    assert_eq!(
        (m.envid, m.vmta_or_pool, m.vmta, m.job_id),
        ("env-1", "pool1", "ip1", "job42")
    );
    assert_eq!(m.content, content);
    let r: Vec<_> = m.recipients().collect();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].forward_path, "a@example.com");
    assert_eq!(r[0].orcpt, "rfc822;a@example.com");
    assert_eq!(r[0].notify, record::NOTIFY_FAILURE);
    assert_eq!(r[1].forward_path, "b@exämple.org");
    assert_eq!((r[1].state, r[1].state_seq), (RecipientState::Queued, 77));
    let off = RECORD_HEADER_BYTES + m.content_offset_in_payload;
    assert_eq!(&bytes[off..off + content.len()], content);
}

#[test]
fn message_with_states_round_trip() {
    let rcpts = [NewRecipient {
        forward_path: "x@y.z",
        orcpt: "",
        notify: 0,
    }; 2];
    let msg = NewMessage {
        received_unix_ms: 1,
        reverse_path: "",
        recipients: &rcpts,
        ret: Ret::Unspecified,
        envid: "",
        vmta_or_pool: "",
        vmta: "",
        job_id: "",
        content: record::Content::One(b""),
    };
    let states = [
        (RecipientState::Delivered, 5),
        (
            RecipientState::Deferred {
                attempts: 9,
                next_attempt_unix_s: 99,
            },
            6,
        ),
    ];
    let mut out = Vec::new();
    record::encode_message(&mut out, 10, MessageId(3), &msg, Some(&states)).unwrap();
    let raw = record::decode_raw(&out).unwrap();
    let m = record::decode_message(raw.payload).unwrap();
    let got: Vec<_> = m.recipients().map(|r| (r.state, r.state_seq)).collect();
    assert_eq!(got, states.to_vec());
}

#[test]
fn state_round_trip_every_state() {
    for state in [
        RecipientState::Queued,
        RecipientState::Delivered,
        RecipientState::Bounced { category: 7 },
        RecipientState::Deferred {
            attempts: u32::MAX,
            next_attempt_unix_s: u64::MAX,
        },
        RecipientState::Expired,
        RecipientState::AdminDeleted,
    ] {
        let rec = StateRecord {
            message: MessageId(u64::MAX),
            home: SegmentId {
                shard: u16::MAX,
                number: u32::MAX,
            },
            recipient: 12,
            state,
            reply: "550 5.1.1 no such user",
        };
        let mut out = Vec::new();
        record::encode_state(&mut out, 5, &rec).unwrap();
        let raw = record::decode_raw(&out).unwrap();
        assert_eq!(raw.kind, record::KIND_STATE);
        assert_eq!(record::decode_state(raw.payload).unwrap(), rec);
    }
}

#[test]
fn encode_rejects_out_of_bounds_fields() {
    let long = "x".repeat(70_000);
    let rcpts = [NewRecipient {
        forward_path: &long,
        orcpt: "",
        notify: 0,
    }];
    let msg = NewMessage {
        received_unix_ms: 1,
        reverse_path: "",
        recipients: &rcpts,
        ret: Ret::Unspecified,
        envid: "",
        vmta_or_pool: "",
        vmta: "",
        job_id: "",
        content: record::Content::One(b""),
    };
    let mut out = vec![1, 2, 3];
    assert!(record::encode_message(&mut out, 1, MessageId(1), &msg, None).is_err());
    assert_eq!(
        out,
        vec![1, 2, 3],
        "a failed encode leaves the buffer as it was"
    );
    let none = NewMessage {
        recipients: &[],
        ..msg
    };
    assert!(record::encode_message(&mut out, 1, MessageId(1), &none, None).is_err());
}

#[test]
fn every_truncation_is_detected() {
    for bytes in [sample_message(b"0123456789abcdef content"), sample_state()] {
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            // A cut inside the padding still holds the full payload: that one
            // decodes (the padding carries no data); any shorter cut must fail.
            let payload_end =
                RECORD_HEADER_BYTES + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            match record::decode_raw(short) {
                Ok(_) => assert!(cut >= payload_end, "cut at {cut} decoded"),
                Err(RecordError::Truncated { .. }) => {}
                Err(e) => panic!("cut at {cut}: unexpected {e}"),
            }
        }
    }
}

#[test]
fn every_single_byte_corruption_is_detected() {
    for bytes in [sample_message(b"some content here"), sample_state()] {
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                assert!(
                    record::decode_raw(&bad).is_err(),
                    "flip {flip:#x} at byte {i} not detected"
                );
            }
        }
    }
}

#[test]
fn segment_header_round_trip_and_corruption() {
    let h = SegmentHeader {
        id: SegmentId {
            shard: 3,
            number: 12,
        },
        key: UseKey::FIRST,
    };
    let bytes = h.encode();
    assert_eq!(SegmentHeader::decode(&bytes).unwrap(), h);
    for i in 0..bytes.len() {
        let mut bad = bytes;
        bad[i] ^= 0x10;
        assert!(SegmentHeader::decode(&bad).is_err(), "header byte {i}");
    }
    assert!(SegmentHeader::decode(&bytes[..10]).is_err());
}

/// A segment image: header, `n` records, then `zeros` bytes of preallocation.
fn segment_image(n: usize, zeros: usize) -> (Vec<u8>, Vec<usize>) {
    let mut seg = SegmentHeader {
        id: SegmentId {
            shard: 0,
            number: 1,
        },
        key: UseKey::FIRST,
    }
    .encode()
    .to_vec();
    let mut offsets = Vec::new();
    for i in 0..n {
        offsets.push(seg.len());
        if i % 2 == 0 {
            seg.extend_from_slice(&sample_message(format!("message number {i}").as_bytes()));
        } else {
            seg.extend_from_slice(&sample_state());
        }
    }
    seg.resize(seg.len() + zeros, 0);
    (seg, offsets)
}

#[test]
fn scan_finds_all_records_and_the_end() {
    let (seg, offsets) = segment_image(6, 4096);
    let mut seen = Vec::new();
    let rep = scan_records(&seg, |off, _| seen.push(off));
    assert_eq!(seen, offsets);
    assert!(rep.corrupt.is_empty());
    assert_eq!(rep.torn_tail, None);
    assert_eq!(rep.valid_end, seg.len() - 4096);
}

#[test]
fn torn_tail_at_every_cut_point() {
    let (full, offsets) = segment_image(4, 0);
    let end = full.len();
    for cut in SEGMENT_HEADER_BYTES..end {
        // A crash leaves the first `cut` bytes; the rest stays preallocated zeros.
        let mut seg = full[..cut].to_vec();
        seg.resize(end + 256, 0);
        let mut seen = Vec::new();
        let rep = scan_records(&seg, |off, _| seen.push(off));
        let complete: Vec<usize> = offsets
            .iter()
            .copied()
            .enumerate()
            .filter(|&(i, o)| {
                let next = offsets.get(i + 1).copied().unwrap_or(end);
                let _ = o;
                next <= cut || (i + 1 == offsets.len() && cut >= end)
            })
            .map(|(_, o)| o)
            .collect();
        // Records entirely before the cut survive (a cut only inside a final
        // record's zero padding may keep that record too).
        assert!(
            seen.starts_with(&complete),
            "cut {cut}: saw {seen:?}, expected at least {complete:?}"
        );
        assert!(
            rep.corrupt.is_empty(),
            "cut {cut}: tail reported as corruption: {:?}",
            rep.corrupt
        );
        // The record the cut falls in is torn unless every byte the cut
        // removed from it was zero padding.
        let b = offsets
            .iter()
            .copied()
            .filter(|&o| o <= cut)
            .max()
            .unwrap_or(end);
        let next = offsets.iter().copied().find(|&o| o > cut).unwrap_or(end);
        let torn = cut > b && full[cut..next].iter().any(|&x| x != 0);
        assert_eq!(
            rep.torn_tail.is_some(),
            torn,
            "cut {cut}: torn tail report {:?}",
            rep.torn_tail
        );
    }
}

#[test]
fn walk_written_visits_the_same_state_records_as_a_full_scan() {
    // A segment's used bytes: no trailing zeros.
    let (seg, offsets) = segment_image(7, 0);
    let states: Vec<usize> = offsets.iter().copied().skip(1).step_by(2).collect();
    let mut scanned = Vec::new();
    scan_records(&seg, |off, raw| {
        if raw.kind == record::KIND_STATE {
            scanned.push(off);
        }
    });
    assert_eq!(scanned, states);
    let mut walked = Vec::new();
    assert!(walk_written(
        &seg,
        UseKey::FIRST,
        record::KIND_STATE,
        |off, _| walked.push(off)
    ));
    assert_eq!(walked, states);

    // A message payload is not read (its CRC was checked when written or
    // recovered): a flipped byte there goes unnoticed by design.
    let mut bad_message = seg.clone();
    bad_message[offsets[2] + RECORD_HEADER_BYTES + 5] ^= 0x01;
    let mut walked = Vec::new();
    assert!(walk_written(
        &bad_message,
        UseKey::FIRST,
        record::KIND_STATE,
        |off, _| { walked.push(off) }
    ));
    assert_eq!(walked, states);

    // A bad state record, bad framing or stray bytes after the last record
    // hand over to the full scan, with nothing visited.
    let mut bad_state = seg.clone();
    bad_state[offsets[3] + RECORD_HEADER_BYTES + 2] ^= 0x01;
    let mut bad_frame = seg.clone();
    bad_frame[offsets[4]] ^= 0xff;
    let mut stray = seg.clone();
    stray.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    for bad in [bad_state, bad_frame, stray] {
        let mut visited = 0;
        assert!(!walk_written(
            &bad,
            UseKey::FIRST,
            record::KIND_STATE,
            |_, _| visited += 1
        ));
        assert_eq!(visited, 0);
    }
}

#[test]
fn mid_segment_corruption_is_skipped_and_reported() {
    let (mut seg, offsets) = segment_image(5, 1024);
    // Corrupt a byte inside record 1 (the payload).
    seg[offsets[1] + RECORD_HEADER_BYTES + 3] ^= 0x40;
    let mut seen = Vec::new();
    let rep = scan_records(&seg, |off, _| seen.push(off));
    assert_eq!(seen, vec![offsets[0], offsets[2], offsets[3], offsets[4]]);
    assert_eq!(rep.corrupt.len(), 1);
    assert_eq!(rep.corrupt[0].offset, offsets[1]);
    assert_eq!(rep.corrupt[0].len, offsets[2] - offsets[1]);
    assert_eq!(rep.torn_tail, None);

    // A zeroed header in the middle is corruption too, not the end of data.
    let (mut seg, offsets) = segment_image(4, 512);
    seg[offsets[2]..offsets[2] + RECORD_HEADER_BYTES].fill(0);
    let mut seen = Vec::new();
    let rep = scan_records(&seg, |off, _| seen.push(off));
    assert_eq!(seen, vec![offsets[0], offsets[1], offsets[3]]);
    assert_eq!(rep.corrupt.len(), 1);
    assert_eq!(rep.corrupt[0].offset, offsets[2]);
}

#[test]
fn scan_never_panics_on_any_single_byte_corruption_of_a_segment() {
    let (seg, offsets) = segment_image(4, 64);
    for i in 0..seg.len() {
        let mut bad = seg.clone();
        bad[i] ^= 0xa5;
        let mut n = 0;
        let rep = scan_records(&bad, |_, _| n += 1);
        // Corruption in a record loses at most that record.
        if i >= SEGMENT_HEADER_BYTES && i < seg.len() - 64 {
            assert!(
                n >= offsets.len() - 1,
                "byte {i}: only {n} records survived"
            );
            assert!(
                !rep.corrupt.is_empty() || rep.torn_tail.is_some(),
                "byte {i}: corruption unreported"
            );
        }
    }
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/corpus/spool_record");
    let mut files = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                record::decode_any(&bytes);
                files += 1;
            }
        }
    }
    assert!(files > 0, "no corpus files in {}", dir.display());
    // And the seeds the corpus was made from decode as expected.
    assert_eq!(record::decode_any(&sample_state()), 1);
    assert_eq!(record::decode_any(&segment_image(4, 64).0), 4);
}

/// Writes the seed corpus for the fuzz target (run once with
/// `SPOOL_WRITE_CORPUS=1`; the files are committed).
#[test]
fn write_corpus_seeds() {
    if std::env::var_os("SPOOL_WRITE_CORPUS").is_none() {
        return;
    }
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fuzz/corpus/spool_record");
    std::fs::create_dir_all(&dir).unwrap();
    let (seg, _) = segment_image(4, 64);
    let (mut bad, offsets) = segment_image(3, 0);
    bad[offsets[1] + 30] ^= 1;
    for (name, bytes) in [
        ("message", sample_message(b"Subject: x\r\n\r\nhello\r\n")),
        ("state", sample_state()),
        ("segment", seg),
        ("segment-corrupt", bad),
        (
            "header",
            SegmentHeader {
                id: SegmentId {
                    shard: 2,
                    number: 5,
                },
                key: UseKey::FIRST,
            }
            .encode()
            .to_vec(),
        ),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn deferred_attempts_pack_and_unpack() {
    use spate::spool::record::{deferred_attempts, pack_deferred_attempts};
    for (attempts, notified) in [(0, false), (1, true), (7, false), (u32::MAX >> 1, true)] {
        let packed = pack_deferred_attempts(attempts, notified);
        assert_eq!(deferred_attempts(packed), (attempts, notified));
    }
    assert_eq!(pack_deferred_attempts(3, false), 3);
}

/// Headers of generation 0 stay version 1 (what older readers take); a
/// recycled file's header is version 2 and carries its generation. A version
/// 1 header with a generation, or a version 2 header without one, is refused
/// even with a valid CRC.
#[test]
fn segment_header_generation_and_version() {
    let id = SegmentId {
        shard: 1,
        number: 40,
    };
    for (generation, salt) in [(0u16, 0u32), (1, 5), (7, 0xdead_beef), (u16::MAX, 1)] {
        let h = SegmentHeader {
            id,
            key: UseKey { generation, salt },
        };
        let bytes = h.encode();
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        assert_eq!(version, if generation == 0 { 1 } else { 2 });
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), h);
    }
    let with_crc = |mut b: [u8; SEGMENT_HEADER_BYTES]| {
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let first = SegmentHeader {
        id,
        key: UseKey::FIRST,
    };
    let mut v1_with_gen = first.encode();
    v1_with_gen[10] = 3;
    assert!(matches!(
        SegmentHeader::decode(&with_crc(v1_with_gen)),
        Err(RecordError::Malformed(_))
    ));
    let mut v1_with_salt = first.encode();
    v1_with_salt[25] = 3;
    assert!(matches!(
        SegmentHeader::decode(&with_crc(v1_with_salt)),
        Err(RecordError::Malformed(_))
    ));
    let fourth = SegmentHeader {
        id,
        key: UseKey {
            generation: 4,
            salt: 77,
        },
    };
    let mut v2_without = fourth.encode();
    v2_without[10..12].copy_from_slice(&[0, 0]);
    assert!(matches!(
        SegmentHeader::decode(&with_crc(v2_without)),
        Err(RecordError::Malformed(_))
    ));
    let mut v3 = fourth.encode();
    v3[8] = 3;
    assert_eq!(
        SegmentHeader::decode(&with_crc(v3)),
        Err(RecordError::BadVersion(3))
    );
}

/// Stamping sets the use of every record and keeps each one valid under its
/// salt (and only under it); stamping back to a first use restores the bytes
/// exactly. Bytes that do not frame as whole records are refused.
#[test]
fn stamping_a_use_keeps_records_valid_under_its_salt_only() {
    let mut batch = sample_message(b"Subject: s\r\n\r\nbody\r\n");
    batch.extend_from_slice(&sample_state());
    let original = batch.clone();
    let key = UseKey {
        generation: 9,
        salt: 0x5a5a_0001,
    };
    assert!(record::stamp(&mut batch, key));
    assert_ne!(batch, original);
    let first = record::decode_raw_salted(&batch, key.salt).unwrap();
    assert_eq!(first.generation, 9);
    let second = record::decode_raw_salted(&batch[first.stored_len..], key.salt).unwrap();
    assert_eq!(second.generation, 9);
    assert_eq!(second.seq, 78);
    assert_eq!(
        record::decode_raw(&batch).unwrap_err(),
        RecordError::BadChecksum
    );
    assert_eq!(
        record::decode_raw_salted(&batch, key.salt + 1).unwrap_err(),
        RecordError::BadChecksum
    );
    assert!(record::stamp(&mut batch, UseKey::FIRST));
    assert_eq!(batch, original);
    let mut cut = original.clone();
    cut.truncate(original.len() - 8);
    assert!(!record::stamp(&mut cut, key));
}

/// Records encoded for a use are byte for byte the first-use records
/// stamped for it (the writer encodes for its current segment and stamps
/// only what lands elsewhere), and the plain encoders are the first use's.
#[test]
fn encoding_for_a_use_equals_stamping_for_it() {
    let content = b"Subject: s\r\n\r\nbody\r\n";
    for key in [
        UseKey::FIRST,
        UseKey {
            generation: 1,
            salt: 0xdead_beef,
        },
        UseKey {
            generation: u16::MAX,
            salt: 1,
        },
    ] {
        let mut stamped = sample_message(content);
        stamped.extend_from_slice(&sample_state());
        assert!(record::stamp(&mut stamped, key));
        let mut encoded = sample_message_for(key, record::Content::One(content));
        encoded.extend_from_slice(&sample_state_for(key));
        assert_eq!(encoded, stamped, "{key:?}");
        let raw = record::decode_raw_salted(&encoded, key.salt).unwrap();
        assert_eq!(raw.generation, key.generation);
    }
}

const IMAGE_BYTES: usize = 64 * 1024;

fn key_of(generation: u16) -> UseKey {
    UseKey {
        generation,
        salt: 0x1000_0000 + u32::from(generation),
    }
}

/// A record as a sender could hide it in a message body: valid framing and
/// CRC for salt 0 (the only salt a sender can know), `generation` set.
fn forged_state(generation: u16) -> Vec<u8> {
    let mut rec = sample_state();
    assert!(record::stamp(
        &mut rec,
        UseKey {
            generation,
            salt: 0
        }
    ));
    rec
}

/// One use of a recycled file, as `install_prepared` and the writer leave
/// it: the header of `key` over a zeroed first page and its copy at the
/// trailer offset, then `n` records of that use, written over `old` (the file
/// as its earlier use left it). Returns the image and the offsets of the
/// new records. Records are messages of `body` bytes and state records; with
/// `forge: Some(g)`, each message body holds a state record forged for
/// generation `g` (after 0 to 7 filler bytes, so that some land 8-aligned).
fn use_image(
    old: &[u8],
    key: UseKey,
    n: usize,
    body: usize,
    forge: Option<u16>,
) -> (Vec<u8>, Vec<usize>) {
    let mut seg = old.to_vec();
    let header = SegmentHeader {
        id: SegmentId {
            shard: 0,
            number: 90 + u32::from(key.generation),
        },
        key,
    }
    .encode();
    seg[..4096].fill(0);
    seg[..SEGMENT_HEADER_BYTES].copy_from_slice(&header);
    let trailer = record::trailer_offset(seg.len() as u64) as usize;
    seg[trailer..trailer + SEGMENT_HEADER_BYTES].copy_from_slice(&header);
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut offsets = Vec::new();
    for i in 0..n {
        let mut rec = if i % 3 == 2 {
            sample_state()
        } else if let Some(g) = forge {
            let mut content = vec![b'f'; 16 + i % 8];
            content.extend_from_slice(&forged_state(g));
            content.resize(body.max(content.len()), b'f');
            sample_message(&content)
        } else {
            sample_message(&vec![b'a' + (i % 26) as u8; body])
        };
        assert!(record::stamp(&mut rec, key));
        offsets.push(pos);
        seg[pos..pos + rec.len()].copy_from_slice(&rec);
        pos += rec.len();
    }
    // Each commit is padded with zeros to its page boundary.
    let page_end = pos.next_multiple_of(4096).min(trailer);
    seg[pos..page_end].fill(0);
    (seg, offsets)
}

/// The end of `offsets`' last record in `image`.
fn end_of(image: &[u8], key: UseKey, offsets: &[usize]) -> usize {
    offsets.last().map_or(SEGMENT_HEADER_BYTES, |&o| {
        o + record::decode_raw_salted(&image[o..], key.salt)
            .unwrap()
            .stored_len
    })
}

/// A recycled file holds leftovers of its earlier uses after its own
/// records, with CRCs valid under their own salt. Whatever the new end cuts
/// (a leftover record boundary or the middle of one), the scan returns
/// exactly the new records and reports no corruption and no torn tail.
#[test]
fn a_recycled_file_ends_where_its_own_records_end() {
    let fresh = vec![0u8; IMAGE_BYTES];
    let (gen1, old_offsets) = use_image(&fresh, key_of(1), 150, 300, None);
    let rep1 = scan_records(&gen1, |_, _| {});
    assert_eq!(rep1.records, 150);
    assert_eq!(rep1.key, key_of(1));
    // (40, 300) and (100, 300) repeat the earlier use's record sizes, so the
    // new end falls exactly on a leftover record (past the zeroed first
    // page); the others end inside one or inside the first page.
    for (n, body) in [
        (0, 0),
        (1, 10),
        (7, 300),
        (20, 57),
        (40, 300),
        (40, 1000),
        (61, 1),
        (100, 300),
    ] {
        let (gen2, offsets) = use_image(&gen1, key_of(2), n, body, None);
        let mut seen = Vec::new();
        let rep = scan_records(&gen2, |off, raw| {
            assert_eq!(raw.generation, 2);
            seen.push(off)
        });
        assert_eq!(seen, offsets, "{n} records of {body} bytes");
        assert_eq!(rep.key, key_of(2));
        assert!(rep.corrupt.is_empty(), "{n}/{body}: {:?}", rep.corrupt);
        assert_eq!(rep.torn_tail, None, "{n}/{body}");
        let end = end_of(&gen2, key_of(2), &offsets);
        assert_eq!(rep.valid_end, end);
        // Leftovers of generation 1, valid under their own salt, lie after the end.
        assert!(
            old_offsets.iter().any(|&o| o >= end
                && record::decode_raw_salted(&gen2[o..], key_of(1).salt).is_ok()),
            "{n}/{body}: no leftover record to ignore"
        );
    }
    // The same generation with another salt (as after a reuse whose header
    // was written but whose records were not): the salt alone separates them.
    let again = UseKey {
        generation: 1,
        salt: 0x77,
    };
    let (regen, offsets) = use_image(&gen1, again, 40, 300, None);
    let mut seen = Vec::new();
    let rep = scan_records(&regen, |off, _| seen.push(off));
    assert_eq!(seen, offsets);
    assert_eq!(rep.records, 40);
}

/// A sender can hide a well-formed record in a message body, with a CRC for
/// the only salt it can know (0) and any generation. In a recycled file the
/// scan runs into such bodies among the leftovers after every end of data;
/// none of them is taken.
#[test]
fn records_forged_in_message_bodies_are_never_taken() {
    let fresh = vec![0u8; IMAGE_BYTES];
    let (gen1, _) = use_image(&fresh, key_of(1), 120, 300, Some(2));
    for n in [0, 5, 30] {
        let (gen2, offsets) = use_image(&gen1, key_of(2), n, 300, None);
        let mut seen = Vec::new();
        let rep = scan_records(&gen2, |off, raw| {
            assert_ne!(raw.seq, 78 + 1_000_000, "forged record taken");
            seen.push(off)
        });
        assert_eq!(seen, offsets, "{n}");
        assert!(rep.corrupt.is_empty(), "{n}: {:?}", rep.corrupt);
    }
    // And the forged records are there, 8-aligned and valid for salt 0: a
    // scan keyed by generation alone would have taken them.
    let aligned = (SEGMENT_HEADER_BYTES..gen1.len())
        .step_by(8)
        .filter(|&p| record::decode_raw(&gen1[p..]).is_ok_and(|r| r.generation == 2))
        .count();
    assert!(aligned >= 10, "{aligned} aligned forged records");
}

/// Mid-segment corruption is reported and skipped, and the records after it
/// are recovered, also when the damaged record's body holds a well-formed
/// record of another use: the search goes past it (in a recycled file and in
/// a first-use one, where such a record only ever comes from a body).
#[test]
fn resync_goes_past_records_of_other_uses() {
    let fresh = vec![0u8; IMAGE_BYTES];
    for key in [UseKey::FIRST, key_of(2)] {
        let (old, _) = use_image(&fresh, key_of(1), 150, 300, None);
        let base = if key == UseKey::FIRST { &fresh } else { &old };
        // Bodies hold records forged for another generation (a first use),
        // or for this one with the salt a sender can know (a recycled file).
        let forge = if key == UseKey::FIRST {
            5
        } else {
            key.generation
        };
        let (mut image, offsets) = use_image(base, key, 30, 200, Some(forge));
        if key == UseKey::FIRST {
            // A first-use file has no trailer copy: clear the one use_image wrote.
            let t = record::trailer_offset(image.len() as u64) as usize;
            image[t..t + SEGMENT_HEADER_BYTES].fill(0);
        }
        // Damage a record whose body holds an 8-aligned forged record, valid
        // for salt 0: the search after the damage meets it first.
        let forged_inside = |o: usize| {
            let len = record::decode_raw_salted(&image[o..], key.salt)
                .unwrap()
                .stored_len;
            (o + 8..o + len)
                .step_by(8)
                .any(|p| record::decode_raw(&image[p..]).is_ok_and(|r| r.generation == forge))
        };
        let victim = offsets[3..]
            .iter()
            .copied()
            .find(|&o| forged_inside(o))
            .expect("no record with an aligned forged record");
        image[victim + RECORD_HEADER_BYTES + 5] ^= 0x40;
        let mut seen = Vec::new();
        let rep = scan_records(&image, |off, _| seen.push(off));
        let expected: Vec<usize> = offsets.iter().copied().filter(|&o| o != victim).collect();
        assert_eq!(seen, expected, "{key:?}");
        assert_eq!(rep.corrupt.len(), 1, "{key:?}");
        assert_eq!(rep.corrupt[0].offset, victim);
        assert_eq!(rep.torn_tail, None, "{key:?}");
    }
}

/// A damaged header, or a lost first page, of a recycled file does not lose
/// its use: the copy at the end gives it, and the records are recovered
/// (those of a lost page reported as a corrupt region). Without a copy the
/// records fail their CRCs and are reported, never taken as a first use's.
#[test]
fn a_recycled_file_with_a_damaged_header_reads_its_trailer_copy() {
    let (gen1, _) = use_image(&vec![0u8; IMAGE_BYTES], key_of(1), 150, 300, None);
    let (image, offsets) = use_image(&gen1, key_of(2), 30, 200, None);

    let mut damaged = image.clone();
    damaged[20] ^= 0xff;
    assert!(SegmentHeader::decode(&damaged).is_err());
    let mut seen = Vec::new();
    let rep = scan_records(&damaged, |off, _| seen.push(off));
    assert_eq!(rep.key, key_of(2));
    assert_eq!(seen, offsets);

    let mut lost = image.clone();
    lost[..4096].fill(0);
    let mut seen = Vec::new();
    let rep = scan_records(&lost, |off, _| seen.push(off));
    assert_eq!(rep.key, key_of(2));
    let after: Vec<usize> = offsets.iter().copied().filter(|&o| o >= 4096).collect();
    assert!(!after.is_empty());
    assert!(seen.ends_with(&after), "{seen:?}");
    assert_eq!(rep.corrupt.len(), 1, "{:?}", rep.corrupt);

    let mut both = damaged;
    let t = record::trailer_offset(both.len() as u64) as usize;
    both[t + 20] ^= 0xff;
    let rep = scan_records(&both, |_, raw| {
        panic!("record taken without its use: {raw:?}")
    });
    assert_eq!(rep.key, UseKey::FIRST);
    assert_eq!(rep.records, 0);
}

/// In a recycled file, damage to the last record is reported as a torn tail
/// (its bytes before the page boundary are not the zeros a commit pads
/// with), while the zero-padded end of an intact use is not.
#[test]
fn a_damaged_last_record_of_a_recycled_file_is_reported() {
    let (gen1, _) = use_image(&vec![0u8; IMAGE_BYTES], key_of(1), 150, 300, None);
    let (mut image, offsets) = use_image(&gen1, key_of(2), 20, 300, None);
    let last = *offsets.last().unwrap();
    assert_eq!(scan_records(&image, |_, _| {}).torn_tail, None);
    image[last + RECORD_HEADER_BYTES + 9] ^= 0x01;
    let rep = scan_records(&image, |_, _| {});
    assert_eq!(rep.records, 19);
    assert_eq!(rep.valid_end, last);
    assert!(
        matches!(rep.torn_tail, Some((at, _)) if at == last),
        "{:?}",
        rep.torn_tail
    );
}
