//! Replays every file of the fuzz corpus (`tools/fuzz/corpus/<target>/`)
//! through the same entry points the cargo-fuzz targets call, so CI
//! exercises them on stable without nightly. Then runs a few thousand
//! deterministic mutations of the seeds (a fixed-seed xorshift, no external
//! randomness) as a short smoke fuzz.

use std::fs;
use std::path::{Path, PathBuf};

use spate::smtp::fuzzing;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("smtp_command", fuzzing::command_line),
    ("smtp_reply", fuzzing::reply_stream),
    ("smtp_data", fuzzing::data_framing),
];

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools/fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let data = fs::read(&path).expect("readable corpus file");
            (path, data)
        })
        .collect()
}

#[test]
fn replay_every_corpus_file() {
    for (target, run) in TARGETS {
        let files = corpus(target);
        assert!(
            files.len() >= 8,
            "{target}: corpus has only {} files",
            files.len()
        );
        for (path, data) in files {
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} failed on {}", path.display());
        }
    }
}

/// xorshift64*: deterministic, so a failure reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to SMTP framing, favoured by the mutator.
const INTERESTING: &[u8] = b"\r\n.:<>@\" \0\xff=+-";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let end = (at + rng.below(8)).min(data.len());
                data.drain(at.min(end)..end);
            }
            1 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if at < data.len() => data[at] = rng.next() as u8,
            3 => {
                let from = rng.below(seed.len() + 1);
                let to = (from + rng.below(32)).min(seed.len());
                let splice = seed[from..to].to_vec();
                data.splice(at..at, splice);
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

#[test]
fn deterministic_mutation_smoke() {
    let mut rng = Rng(0x5EED_5A7E_0000_0001);
    for (target, run) in TARGETS {
        let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, d)| d).collect();
        for round in 0..4000 {
            let seed = &seeds[round % seeds.len()];
            let data = mutate(&mut rng, seed);
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{target} failed on mutation {round}: {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }
}
