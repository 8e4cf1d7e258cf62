//! A broken sink script is refused with the file, the line and the key.

use spate_bench::script::Script;

const TWO_THROTTLES_BAD_SECOND: &str = "\
greeting = \"220 sink ready\"

[[throttle]]
messages_per_minute = 10
reply = \"421 4.7.0 slow down\"

[[throttle]]
reply = \"451 4.7.0 later\"
messages_per_minute = 0
";

#[test]
fn throttle_errors_name_the_line_and_the_entry() {
    let err = Script::parse(TWO_THROTTLES_BAD_SECOND).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "line 9: throttle[2].messages_per_minute must be > 0"
    );
    let err =
        Script::parse("[[throttle]]\nmessages_per_minute = 5\nreply = \"250 ok\"\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("line 3: throttle[1].reply: \"250 ok\""),
        "{msg}"
    );
}

#[test]
fn window_errors_name_the_line_and_the_entry() {
    let text = "\
[[window]]
start_s = 0
end_s = 10
reply = \"451 4.7.1 first\"
[[window]]
end_s = 20
start_s = 30
reply = \"451 4.7.1 second\"
";
    let err = Script::parse(text).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("line 7: window[2].start_s must be before end_s"),
        "{msg}"
    );
    // A TOML-escaped CRLF would split the reply in two.
    let err = Script::parse("[[window]]\nstart_s = 1\nend_s = 2\nreply = \"551 x\\r\\n250 y\"\n")
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with("line 4: window[1].reply: "), "{msg}");
    let err = Script::parse("[[window]]\nstart_s = 1\nend_s = 2\nreply = \"252 x\"\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("line 4: window[1].reply: \"252 x\""),
        "{msg}"
    );
}

#[test]
fn top_level_errors_name_the_line() {
    let err = Script::parse("delay_ms = 5\n\ntempfail_reply = \"550 no\"\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("line 3: tempfail_reply: \"550 no\""),
        "{msg}"
    );
}

#[test]
fn load_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sink.toml");
    std::fs::write(&path, TWO_THROTTLES_BAD_SECOND).unwrap();
    let err = Script::load(&path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("sink.toml"), "{msg}");
    assert!(
        msg.contains("line 9: throttle[2].messages_per_minute must be > 0"),
        "{msg}"
    );
    // Errors the TOML parser finds carry the file and the line too.
    std::fs::write(&path, "delay_ms = 1\nclose_after = \"ten\"\n").unwrap();
    let msg = format!("{:#}", Script::load(&path).unwrap_err());
    assert!(msg.contains("sink.toml") && msg.contains("line 2"), "{msg}");
    assert!(msg.contains("close_after"), "{msg}");
}

#[test]
fn presets_and_valid_scripts_still_pass() {
    for p in ["gmail", "yahoo", "microsoft"] {
        Script::preset(p).unwrap();
    }
    let s = Script::parse(
        "[[throttle]]\nmessages_per_minute = 3\nreply = \"421 4.7.0 x\"\n\
         [[window]]\nstart_s = 1\nend_s = 2\nreply = \"451 4.7.1 y\"\n",
    )
    .unwrap();
    assert_eq!((s.throttle.len(), s.window.len()), (1, 1));
}
