//! Property tests: no input makes the loader panic, and every error it
//! returns has a line inside the input.

use std::path::PathBuf;

use proptest::prelude::*;
use spate::config;

const EXAMPLE: &str = include_str!("data/config/example.toml");

fn check_no_panic(text: &str) {
    if let Err(errors) = config::load_str("f.toml", text, Some(PathBuf::from("f.toml"))) {
        assert!(!errors.is_empty());
        let lines = text.lines().count().max(1) + 1;
        for e in errors.iter() {
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= lines, "line {line} beyond input: {e}");
            }
        }
    }
}

/// Fragments that look like configuration, so generated inputs often parse
/// as TOML and reach the validators rather than only the TOML parser.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[domain.\"*\"]\n".to_string()),
        Just("[vmta.a]\n".to_string()),
        Just("[[listener]]\n".to_string()),
        Just("[[source]]\n".to_string()),
        Just("[pool.p]\n".to_string()),
        Just("[smtp_pattern_list.s]\n".to_string()),
        Just("[dkim.\"a.com\"]\n".to_string()),
        Just("[[accounting]]\n".to_string()),
        (
            prop::sample::select(vec![
                "max_smtp_out",
                "max_msg_rate",
                "retry_after",
                "source_ip",
                "address",
                "networks",
                "vmtas",
                "weights",
                "rules",
                "bounce_after",
                "smtp_hosts",
                "segment_size",
                "path",
                "selector",
                "key",
                "records",
                "rotate",
                "default_vmta",
                "shards",
                "zzz",
            ]),
            prop::sample::select(vec![
                "1",
                "0",
                "-1",
                "\"4d12h\"",
                "\"1000/h\"",
                "\"64MiB\"",
                "\"10.0.0.0/8\"",
                "[\"a\"]",
                "[1, 2]",
                "true",
                "1.5",
                "\"\"",
                "\"(\"",
                "[{ reply = '(' }]",
                "\"127.0.0.1:25\"",
                "\"never\"",
                "99999999999999999999",
            ]),
        )
            .prop_map(|(k, v)| format!("{k} = {v}\n")),
        "\\PC{0,20}".prop_map(|s| format!("{s}\n")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC*") {
        check_no_panic(&text);
    }

    #[test]
    fn config_like_text_never_panics(parts in prop::collection::vec(fragment(), 0..24)) {
        check_no_panic(&parts.concat());
    }

    #[test]
    fn mutated_example_never_panics(cuts in prop::collection::vec((0..EXAMPLE.len(), any::<char>()), 1..8)) {
        let mut text: Vec<char> = EXAMPLE.chars().collect();
        for (at, c) in cuts {
            let i = at % text.len();
            text[i] = c;
        }
        check_no_panic(&text.into_iter().collect::<String>());
    }
}
