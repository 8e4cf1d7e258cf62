//! Accounting writers: CSV and JSONL content, selection, flushing,
//! rotation, reopening and counting of records dropped on a full buffer.

use std::path::Path;
use std::time::Duration;

use spate::accounting::{
    ACCOUNTING_FIELDS, Accounting, AccountingFormat, AccountingOptions, AccountingRecord,
    RecordKind,
};

fn record(kind: RecordKind, rcpt: &str) -> AccountingRecord {
    let mut r = AccountingRecord::new(kind, 1_795_817_098);
    r.time_queued_unix = 1_795_817_000;
    r.orig = "sender@origin.test".into();
    r.rcpt = rcpt.into();
    r.dsn_status = "5.1.1".into();
    r.dsn_diag = "smtp;550 5.1.1 \"unknown\", sorry".into();
    r.bounce_cat = "bad-mailbox".into();
    r.dlv_size = Some(2048);
    r.vmta = "ip1".into();
    r.queue = "dest.test/ip1".into();
    r
}

/// A small RFC 4180 reader for checking our output.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read accounting file")
}

fn options(path: &Path, format: AccountingFormat, kinds: &[RecordKind]) -> AccountingOptions {
    AccountingOptions {
        format,
        records: kinds.to_vec(),
        ..AccountingOptions::new(path)
    }
}

#[test]
fn csv_header_fields_quoting_and_selection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.csv");
    let acct = Accounting::start(vec![options(
        &path,
        AccountingFormat::Csv,
        &[RecordKind::Delivered, RecordKind::Bounced],
    )])
    .unwrap();
    let sink = acct.sink();
    sink.log(record(RecordKind::Received, "r@dest.test"));
    sink.log(record(RecordKind::Delivered, "d@dest.test"));
    sink.log(record(RecordKind::Bounced, "b@dest.test"));
    sink.log(record(RecordKind::Transient, "t@dest.test"));
    sink.flush_blocking();

    let rows = parse_csv(&read(&path));
    assert_eq!(rows.len(), 3, "header plus the d and b records");
    assert_eq!(rows[0], ACCOUNTING_FIELDS);
    let col = |name: &str| ACCOUNTING_FIELDS.iter().position(|f| *f == name).unwrap();
    assert_eq!(rows[1][col("type")], "d");
    assert_eq!(rows[2][col("type")], "b");
    assert_eq!(rows[2][col("rcpt")], "b@dest.test");
    assert_eq!(rows[2][col("dsnDiag")], "smtp;550 5.1.1 \"unknown\", sorry");
    assert_eq!(rows[2][col("timeLogged")], "2026-11-27 22:04:58+0000");
    assert_eq!(rows[2][col("timeQueued")], "2026-11-27 22:03:20+0000");
    assert_eq!(rows[2][col("dlvSize")], "2048");
    assert_eq!(rows[2][col("queue")], "dest.test/ip1");
    assert!(rows.iter().all(|r| r.len() == 23));
    let stats = sink.stats();
    assert_eq!((stats[0].written, stats[0].dropped), (2, 0));
}

#[test]
fn jsonl_same_fields_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.jsonl");
    let acct = Accounting::start(vec![options(
        &path,
        AccountingFormat::Jsonl,
        &[RecordKind::Received, RecordKind::Transient],
    )])
    .unwrap();
    let sink = acct.sink();
    sink.log(record(RecordKind::Received, "r@dest.test"));
    sink.log(record(RecordKind::Delivered, "d@dest.test"));
    sink.log(record(RecordKind::Transient, "t@dest.test"));
    drop(sink);
    drop(acct); // shutdown writes what is buffered
    let text = read(&path);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(v["type"], "t");
    assert_eq!(v["rcpt"], "t@dest.test");
    assert_eq!(v["dsnDiag"], "smtp;550 5.1.1 \"unknown\", sorry");
    // Keys appear in PowerMTA's order.
    let mut at = 0;
    for name in ACCOUNTING_FIELDS {
        let pos = lines[1][at..].find(&format!("\"{name}\":")).expect(name);
        at += pos;
    }
}

#[test]
fn flushed_within_a_second_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.csv");
    let acct = Accounting::start(vec![AccountingOptions::new(&path)]).unwrap();
    acct.sink()
        .log(record(RecordKind::Delivered, "d@dest.test"));
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(parse_csv(&read(&path)).len(), 2);
}

#[test]
fn rotation_renames_and_restarts_with_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.csv");
    let acct = Accounting::start(vec![AccountingOptions {
        rotate: Some(Duration::from_secs(1)),
        ..AccountingOptions::new(&path)
    }])
    .unwrap();
    let sink = acct.sink();
    sink.log(record(RecordKind::Delivered, "first@dest.test"));
    sink.flush_blocking();
    std::thread::sleep(Duration::from_millis(1100));
    sink.log(record(RecordKind::Delivered, "second@dest.test"));
    sink.flush_blocking();

    let rotated: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &path)
        .collect();
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    let name = rotated[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(name.starts_with("acct.csv.20"), "{name}");
    let old = parse_csv(&read(&rotated[0]));
    let new = parse_csv(&read(&path));
    assert_eq!(old[0], ACCOUNTING_FIELDS);
    assert_eq!(new[0], ACCOUNTING_FIELDS);
    assert_eq!(old.len(), 2);
    assert_eq!(new.len(), 2);
    assert_eq!(old[1][4], "first@dest.test");
    assert_eq!(new[1][4], "second@dest.test");
}

#[test]
fn reopen_after_external_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.csv");
    let moved = dir.path().join("moved.csv");
    let acct = Accounting::start(vec![AccountingOptions::new(&path)]).unwrap();
    let sink = acct.sink();
    sink.log(record(RecordKind::Delivered, "before@dest.test"));
    sink.flush_blocking();
    std::fs::rename(&path, &moved).unwrap();
    sink.reopen_blocking();
    sink.log(record(RecordKind::Delivered, "after@dest.test"));
    sink.flush_blocking();
    assert_eq!(parse_csv(&read(&moved)).len(), 2);
    let new = parse_csv(&read(&path));
    assert_eq!(new.len(), 2);
    assert_eq!(new[0], ACCOUNTING_FIELDS);
    assert_eq!(new[1][4], "after@dest.test");
}

#[test]
fn full_buffer_drops_are_counted_never_silent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acct.csv");
    let acct = Accounting::start(vec![AccountingOptions {
        queue_len: 1,
        ..AccountingOptions::new(&path)
    }])
    .unwrap();
    let sink = acct.sink();
    let total = 20_000u64;
    let started = std::time::Instant::now();
    for i in 0..total {
        sink.log(record(RecordKind::Delivered, &format!("r{i}@dest.test")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "logging never blocks on the writer"
    );
    sink.flush_blocking();
    let stats = sink.stats().remove(0);
    assert!(
        stats.dropped > 0,
        "a one-slot buffer must overflow: {stats:?}"
    );
    assert_eq!(stats.written + stats.dropped, total, "{stats:?}");
    let lines = parse_csv(&read(&path)).len() as u64;
    assert_eq!(
        lines,
        stats.written + 1,
        "every counted record is in the file"
    );
}

#[test]
fn bad_path_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("acct.csv");
    assert!(Accounting::start(vec![AccountingOptions::new(path)]).is_err());
}
