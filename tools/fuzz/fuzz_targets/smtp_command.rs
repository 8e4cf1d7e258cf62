//! Fuzz target: SMTP command parser (round trip) and the server session.
//! A thin wrapper; the checks live in `spate::smtp::fuzzing::command_line` so the
//! stable corpus replay test runs exactly the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| spate::smtp::fuzzing::command_line(data));
