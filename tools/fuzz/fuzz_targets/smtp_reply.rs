//! Fuzz target: SMTP reply parser (round trip) and the client session.
//! A thin wrapper; the checks live in `spate::smtp::fuzzing::reply_stream` so the
//! stable corpus replay test runs exactly the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spate::smtp::fuzzing::reply_stream(data));
