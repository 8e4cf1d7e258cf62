//! Fuzz target: every spool record decoder (segment header, record framing,
//! message and state payloads, whole-segment scan) on arbitrary bytes. The
//! decoders must never panic; `tests/spool_record.rs` replays the corpus in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spate::spool::record::decode_any(data);
});
