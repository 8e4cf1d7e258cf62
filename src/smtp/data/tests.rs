//! Tests for DATA framing: unstuffing, end detection at every split point,
//! smuggling probes, limits, and encoder/decoder properties.

use proptest::prelude::*;

use super::*;

/// Decodes `input` fed in the given pieces; returns (body, fault, consumed
/// up to and including the end marker, or None if no end).
fn decode_split(
    input: &[u8],
    split: &[usize],
    max: u64,
) -> (Vec<u8>, Option<DataFault>, Option<usize>) {
    decode_split_with(input, split, max, true)
}

/// [`decode_split`], with or without the one-pass path for clean runs.
fn decode_split_with(
    input: &[u8],
    split: &[usize],
    max: u64,
    bulk: bool,
) -> (Vec<u8>, Option<DataFault>, Option<usize>) {
    let mut decoder = DataDecoder::new(max);
    decoder.bulk = bulk;
    let mut body = Vec::new();
    let mut bounds = vec![0];
    bounds.extend(split.iter().copied().filter(|&s| s <= input.len()));
    bounds.push(input.len());
    let mut total = 0;
    for window in bounds.windows(2) {
        let part = &input[window[0]..window[1]];
        let mut offset = 0;
        while offset < part.len() {
            let step = decoder.decode(&part[offset..]);
            offset += step.consumed;
            body.extend_from_slice(step.chunk);
            if step.end {
                return (body, decoder.fault(), Some(total + offset));
            }
        }
        total += part.len();
    }
    (body, decoder.fault(), None)
}

fn decode_all(input: &[u8]) -> (Vec<u8>, Option<DataFault>, Option<usize>) {
    decode_split(input, &[], u64::MAX)
}

#[test]
fn unstuffs_and_ends_at_crlf_dot_crlf() {
    let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<>\r\n";
    let (body, fault, end) = decode_all(input);
    assert_eq!(body, b"Subject: x\r\n\r\n.leading dot\r\n");
    assert_eq!(fault, None);
    assert_eq!(end, Some(input.len() - b"MAIL FROM:<>\r\n".len()));
}

#[test]
fn empty_message() {
    assert_eq!(decode_all(b".\r\n"), (vec![], None, Some(3)));
}

#[test]
fn every_split_point_gives_the_same_result() {
    let inputs: &[&[u8]] = &[
        b"a\r\n..b\r\n.c\r\n\r\n.\r\nrest",
        b"x\ny\r\n.\r\n",
        b"x\r.\r\n.\r\n",
        b".\r\n",
        b"..\r\n...\r\n.\r\n",
    ];
    for input in inputs {
        let expected = decode_all(input);
        for a in 0..=input.len() {
            assert_eq!(
                decode_split(input, &[a], u64::MAX),
                expected,
                "{input:?} split {a}"
            );
            for b in a..=input.len() {
                assert_eq!(
                    decode_split(input, &[a, b], u64::MAX),
                    expected,
                    "{input:?} {a},{b}"
                );
            }
        }
    }
}

#[test]
fn smuggling_probes_never_end_the_message_early() {
    // Each probe is followed by the real end; the message must end exactly
    // there and be faulty.
    let probes: &[&[u8]] = &[
        b"a\n.\nMAIL FROM:<evil@x>\r\n",       // LF.LF
        b"a\r.\rMAIL FROM:<evil@x>\r\n",       // CR.CR
        b"a\n.\r\nMAIL FROM:<evil@x>\r\n",     // LF.CRLF
        b"a\r\n.\nMAIL FROM:<evil@x>\r\n",     // CRLF.LF
        b"a\r\n.\rMAIL FROM:<evil@x>\r\n",     // CRLF.CR
        b"a\r.\r\nMAIL FROM:<evil@x>\r\n",     // CR.CRLF
        b"a\r\n\n.\r\nMAIL FROM:<evil@x>\r\n", // CRLF LF.CRLF
        b"bare\nlf\r\n",
        b"bare\rcr\r\n",
        b"a\r\r\n",
        b"\n",
        b"\r",
    ];
    for probe in probes {
        let mut input = probe.to_vec();
        input.extend_from_slice(b"\r\n.\r\n");
        let (_, fault, end) = decode_all(&input);
        assert_eq!(
            end,
            Some(input.len()),
            "ended early: {:?}",
            String::from_utf8_lossy(probe)
        );
        assert_eq!(
            fault,
            Some(DataFault::BareLineEnding),
            "{:?}",
            String::from_utf8_lossy(probe)
        );
    }
}

#[test]
fn nul_and_8bit_are_content_not_framing() {
    let input = b"a\0b\xff\r\n.\r\n";
    let (body, fault, end) = decode_all(input);
    assert_eq!(body, b"a\0b\xff\r\n");
    assert_eq!(fault, None);
    assert_eq!(end, Some(input.len()));
}

/// Random DATA input: lines of mostly short, sometimes boundary or overlong
/// length, with line-start dots, bare CR and LF, and usually an end marker
/// followed by more bytes.
fn random_data(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    use rand::Rng;
    let mut v = Vec::new();
    for _ in 0..rng.random_range(0..40) {
        if rng.random_bool(0.1) {
            v.push(b'.');
        }
        let len = match rng.random_range(0..10) {
            0 => rng.random_range(SMTP_DATA_LINE_BYTES_MAX - 3..SMTP_DATA_LINE_BYTES_MAX + 3),
            1 => rng.random_range(0..3000),
            _ => rng.random_range(0..100),
        };
        let line = v.len();
        for _ in 0..len {
            v.push(if rng.random_bool(0.01) { b'.' } else { b'a' });
        }
        if len > 0 && rng.random_bool(0.03) {
            let at = line + rng.random_range(0..len);
            v[at] = if rng.random_bool(0.5) { b'\r' } else { b'\n' };
        }
        v.extend_from_slice(match rng.random_range(0..100) {
            0 => b"\n",
            1 => b"\r",
            2 => b"\r\r\n",
            _ => b"\r\n",
        });
    }
    if rng.random_bool(0.8) {
        v.extend_from_slice(b".\r\nMAIL FROM:<>\r\n");
    }
    v
}

#[test]
fn one_pass_and_line_by_line_paths_agree() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261128);
    let mut bulk_sized = 0;
    for case in 0..4000 {
        let input = random_data(&mut rng);
        let mut split: Vec<usize> = (0..rng.random_range(0..4))
            .map(|_| rng.random_range(0..=input.len()))
            .collect();
        split.sort_unstable();
        let max = if rng.random_bool(0.2) {
            rng.random_range(0..=input.len() as u64)
        } else {
            u64::MAX
        };
        let fast = decode_split_with(&input, &split, max, true);
        let slow = decode_split_with(&input, &split, max, false);
        assert_eq!(
            fast,
            slow,
            "case {case}: {:?}",
            String::from_utf8_lossy(&input)
        );
        bulk_sized += usize::from(input.len() >= 4 * BULK_MIN_BYTES);
    }
    // The comparison covered inputs long enough for the one-pass path.
    assert!(bulk_sized > 1000, "{bulk_sized}");
}

/// Whatever the input, the one-pass path looks at each byte a bounded
/// number of times: a run it leaves to the line-by-line path (a bare line
/// ending, an overlong line) is not scanned again for every line of it.
#[test]
fn the_one_pass_path_scans_each_byte_a_bounded_number_of_times() {
    let mut crlf_then_bare_lf = b"0123456789abcdef\r\n".repeat(3000);
    crlf_then_bare_lf.extend_from_slice(b"x\n");
    let mut dotted = Vec::new();
    for i in 0..3000 {
        dotted.extend_from_slice(if i % 10 == 0 {
            b".dot line\r\n"
        } else {
            b"plain line\r\n"
        });
    }
    let overlong = [vec![b'a'; SMTP_DATA_LINE_BYTES_MAX + 200], b"\r\n".to_vec()]
        .concat()
        .repeat(50);
    let inputs = [b"ab\n".repeat(20_000), crlf_then_bare_lf, dotted, overlong];
    for (n, input) in inputs.iter().enumerate() {
        for split in [None, Some(4096)] {
            let mut decoder = DataDecoder::new(u64::MAX);
            let mut start = 0;
            // Fed as one input, or as a client's reads of 4 KiB at a time
            // (each call gets the unconsumed rest plus the next read).
            let mut end = split.map_or(input.len(), |s| s.min(input.len()));
            while start < input.len() {
                let step = decoder.decode(&input[start..end]);
                start += step.consumed;
                if step.consumed == 0 || start == end {
                    end = split.map_or(input.len(), |s| (end + s).min(input.len()));
                }
            }
            assert!(
                decoder.bulk_scanned <= 2 * input.len(),
                "input {n}, split {split:?}: {} bytes scanned for {}",
                decoder.bulk_scanned,
                input.len()
            );
        }
    }
}

#[test]
fn long_line_and_size_faults() {
    let mut input = vec![b'a'; SMTP_DATA_LINE_BYTES_MAX + 1];
    input.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(decode_all(&input).1, Some(DataFault::LineTooLong));
    let mut ok = vec![b'a'; SMTP_DATA_LINE_BYTES_MAX - 2];
    ok.extend_from_slice(b"\r\n.\r\n");
    assert_eq!(decode_all(&ok).1, None);

    let input = b"0123456789\r\n.\r\n";
    assert_eq!(decode_split(input, &[], 12).1, None);
    assert_eq!(decode_split(input, &[], 11).1, Some(DataFault::TooBig));
}

#[test]
fn encoder_stuffs_normalises_and_terminates() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".a\r\n.\r\n..\r\n", b"..a\r\n..\r\n...\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
        (b"a\n.b", b"a\r\n..b\r\n.\r\n"),
        (b"\r\r\n", b"\r\n\r\n.\r\n"),
    ];
    for (body, wire) in cases {
        assert_eq!(BodyEncoder::to_vec(body, BodyMode::Data), *wire, "{body:?}");
        assert_eq!(
            BodyEncoder::encoded_len(body, BodyMode::Data),
            wire.len() as u64
        );
    }
    assert_eq!(
        BodyEncoder::to_vec(b".a\nb", BodyMode::Bdat),
        b".a\r\nb\r\n"
    );
    assert_eq!(BodyEncoder::to_vec(b"", BodyMode::Bdat), b"");
}

#[test]
fn encoder_borrows_instead_of_copying() {
    let body = b"line one\r\nline two\r\n.dot\r\nlast\r\n";
    let pieces: Vec<Piece> = BodyEncoder::new(body, BodyMode::Data).collect();
    assert_eq!(
        pieces,
        vec![
            Piece::Body(0..20),
            Piece::Static(b"."),
            Piece::Body(20..body.len()),
            Piece::Static(b".\r\n"),
        ]
    );
}

/// Bodies with a bare CR or a bare LF: first, inside, last, or alone.
const BARE_LINE_ENDS: [&[u8]; 9] = [
    b"a\nb\r\n",
    b"a\rb\r\n",
    b"\na\r\n",
    b"a\r\nb\r",
    b"\r\r\n",
    b"\n",
    b"\r",
    b"a\nb",
    b"a\r",
];

#[test]
fn bdat_sends_a_crlf_body_as_one_piece() {
    let body = b"Subject: x\r\n\r\n.dot\r\nlast\r\n";
    let pieces: Vec<Piece> = BodyEncoder::new(body, BodyMode::Bdat).collect();
    assert_eq!(pieces, vec![Piece::Body(0..body.len())]);
    let body = b"no line end";
    let pieces: Vec<Piece> = BodyEncoder::new(body, BodyMode::Bdat).collect();
    assert_eq!(
        pieces,
        vec![Piece::Body(0..body.len()), Piece::Static(b"\r\n")]
    );
    for bare in BARE_LINE_ENDS {
        assert!(!crlf_only(bare), "{bare:?}");
        assert_eq!(BodyEncoder::to_vec(bare, BodyMode::Bdat), normalise(bare));
    }
}

#[test]
fn a_scan_finds_bare_line_ends_and_8bit_bytes_anywhere() {
    let clean = BodyScan {
        crlf_only: true,
        eight_bit: false,
    };
    assert_eq!(BodyScan::of(b""), clean);
    assert_eq!(BodyScan::of(b"a\r\nb\r\n"), clean);
    assert_eq!(BodyScan::of(b"no line end"), clean);
    for bare in BARE_LINE_ENDS {
        assert!(!BodyScan::of(bare).crlf_only, "{bare:?}");
        assert!(!BodyScan::of(bare).eight_bit, "{bare:?}");
    }
    // A high byte first, in the middle, last, or alone.
    for high in [&b"\xe9a\r\n"[..], b"a\xffb", b"ab\x80", b"\xc3"] {
        let scan = BodyScan::of(high);
        assert!(scan.eight_bit && scan.crlf_only, "{high:?}");
    }
}

proptest! {
    /// A scanned encoder gives exactly what one that scans for itself
    /// gives, and the one-pass scan agrees with the byte-wise definitions.
    #[test]
    fn scanned_encoding_is_the_same_encoding(body in prop::collection::vec(prop::sample::select(b"ab.\r\n\xe9".to_vec()), 0..40)) {
        let scan = BodyScan::of(&body);
        prop_assert_eq!(scan.eight_bit, is_8bit(&body));
        let bare = body.iter().enumerate().any(|(i, &b)| {
            (b == b'\r' && body.get(i + 1) != Some(&b'\n'))
                || (b == b'\n' && (i == 0 || body[i - 1] != b'\r'))
        });
        prop_assert_eq!(scan.crlf_only, !bare);
        for mode in [BodyMode::Bdat, BodyMode::Data] {
            let own: Vec<Piece> = BodyEncoder::new(&body, mode).collect();
            let given: Vec<Piece> = BodyEncoder::scanned(&body, mode, scan).collect();
            prop_assert_eq!(&own, &given);
            prop_assert_eq!(
                BodyEncoder::encoded_len_scanned(&body, mode, scan),
                BodyEncoder::encoded_len(&body, mode)
            );
        }
    }
}

fn normalise(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match (body[i], body.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            (b'\r' | b'\n', _) => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest! {
    #[test]
    fn stuff_then_unstuff_is_identity(lines in prop::collection::vec("[.a\\x00\\xff]{0,6}", 0..8)) {
        let mut body = Vec::new();
        for line in &lines {
            body.extend_from_slice(line.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        let wire = BodyEncoder::to_vec(&body, BodyMode::Data);
        let (decoded, fault, end) = decode_all(&wire);
        prop_assert_eq!(fault, None);
        prop_assert_eq!(end, Some(wire.len()));
        prop_assert_eq!(decoded, body);
    }

    #[test]
    fn arbitrary_bodies_round_trip_to_their_normal_form(body in prop::collection::vec(prop::sample::select(b"ab.\r\n\0".to_vec()), 0..40), split in 0usize..60) {
        let wire = BodyEncoder::to_vec(&body, BodyMode::Data);
        let (decoded, fault, end) = decode_split(&wire, &[split], u64::MAX);
        prop_assert_eq!(fault, None);
        prop_assert_eq!(end, Some(wire.len()));
        prop_assert_eq!(decoded, normalise(&body));
        prop_assert_eq!(BodyEncoder::to_vec(&body, BodyMode::Bdat), normalise(&body));
    }

    #[test]
    fn decoder_never_reads_past_the_end(prefix in prop::collection::vec(any::<u8>(), 0..64), tail in prop::collection::vec(any::<u8>(), 0..16)) {
        let mut input = prefix.clone();
        input.extend_from_slice(b"\r\n.\r\n");
        let first_end = {
            let (_, _, end) = decode_all(&input);
            end
        };
        input.extend_from_slice(&tail);
        let (_, _, end) = decode_all(&input);
        prop_assert!(end.is_some());
        prop_assert_eq!(end, first_end);
    }
}
