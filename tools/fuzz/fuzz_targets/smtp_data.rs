//! Fuzz target: DATA framing: dot-unstuffing, end detection, body encoder.
//! A thin wrapper; the checks live in `spate::smtp::fuzzing::data_framing` so the
//! stable corpus replay test runs exactly the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spate::smtp::fuzzing::data_framing(data));
