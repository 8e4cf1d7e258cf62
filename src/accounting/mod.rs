//! Accounting files: one line per received, delivered, bounced or deferred
//! recipient, in PowerMTA's field names (CSV or JSONL).
//!
//! Owns the `[[accounting]]` writers. Each writer is a thread with a bounded
//! channel; shards call [`AccountingSink::log`], which only `try_send`s: a
//! full buffer drops the record for that writer and counts it (reported in
//! the logs by the writer thread and in [`AccountingSink::stats`]), so
//! accounting never blocks delivery and never loses records silently. The
//! record format is `record.rs`, the file handling `writer.rs`.

mod record;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{Sender, bounded};

pub use record::{
    ACCOUNTING_FIELDS, AccountingRecord, RecordKind, UnknownRecordKind, accounting_time,
    write_csv_header,
};
pub use writer::ACCOUNTING_BUFFER_BYTES_MAX;
use writer::{FileWriter, Msg, WriterStats};

/// Records waiting for one writer thread; beyond this they are dropped and
/// counted.
pub const ACCOUNTING_QUEUE_LEN_MAX: usize = 65_536;
/// Longest time a record stays in memory before reaching the file.
pub const ACCOUNTING_FLUSH_INTERVAL_MS_MAX: u64 = 1_000;

/// File format of one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountingFormat {
    Csv,
    Jsonl,
}

/// One `[[accounting]]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingOptions {
    pub path: PathBuf,
    pub format: AccountingFormat,
    /// Record types written to this file.
    pub records: Vec<RecordKind>,
    /// Rotation period (`None`: never rotate).
    pub rotate: Option<Duration>,
    /// Channel capacity in records.
    pub queue_len: usize,
    /// How often buffered records are written (capped at one second).
    pub flush_interval: Duration,
}

impl AccountingOptions {
    /// CSV, all record types, no rotation, default buffer and flushing.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: AccountingFormat::Csv,
            records: vec![
                RecordKind::Received,
                RecordKind::Delivered,
                RecordKind::Bounced,
                RecordKind::Transient,
            ],
            rotate: None,
            queue_len: ACCOUNTING_QUEUE_LEN_MAX,
            flush_interval: Duration::from_millis(ACCOUNTING_FLUSH_INTERVAL_MS_MAX),
        }
    }
}

/// Counters of one writer, for metrics and the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountingStats {
    pub path: PathBuf,
    /// Records encoded for the file.
    pub written: u64,
    /// Records dropped because the writer's buffer was full.
    pub dropped: u64,
    /// Failed writes, renames or reopens.
    pub errors: u64,
}

#[derive(Clone)]
struct WriterHandle {
    tx: Sender<Msg>,
    selects: [bool; 4],
    path: PathBuf,
    stats: Arc<WriterStats>,
}

fn kind_index(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Received => 0,
        RecordKind::Delivered => 1,
        RecordKind::Bounced => 2,
        RecordKind::Transient => 3,
    }
}

/// The cloneable, thread-safe entry point that shards log through.
#[derive(Clone)]
pub struct AccountingSink {
    writers: Arc<[WriterHandle]>,
}

/// Owns the writer threads; dropping it writes what is buffered and stops
/// them (sinks still held afterwards count their records as dropped).
pub struct Accounting {
    sink: AccountingSink,
    threads: Vec<JoinHandle<()>>,
}

/// Why accounting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    #[error("accounting file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the accounting thread: {0}")]
    Thread(std::io::Error),
}

impl Accounting {
    /// Opens every file (so a bad path fails at start) and starts the
    /// writer threads.
    pub fn start(options: Vec<AccountingOptions>) -> Result<Self, AccountingError> {
        let mut handles = Vec::with_capacity(options.len());
        let mut threads = Vec::with_capacity(options.len());
        for mut opts in options {
            opts.flush_interval = opts
                .flush_interval
                .min(Duration::from_millis(ACCOUNTING_FLUSH_INTERVAL_MS_MAX));
            let stats = Arc::new(WriterStats::default());
            let path = opts.path.clone();
            let mut selects = [false; 4];
            for kind in &opts.records {
                if let Some(s) = selects.get_mut(kind_index(*kind)) {
                    *s = true;
                }
            }
            let (tx, rx) = bounded(opts.queue_len.max(1));
            let writer = FileWriter::open(opts, Arc::clone(&stats)).map_err(|source| {
                AccountingError::Open {
                    path: path.clone(),
                    source,
                }
            })?;
            let thread = std::thread::Builder::new()
                .name("spate-acct".into())
                .spawn(move || writer.run(rx))
                .map_err(AccountingError::Thread)?;
            threads.push(thread);
            handles.push(WriterHandle {
                tx,
                selects,
                path,
                stats,
            });
        }
        Ok(Self {
            sink: AccountingSink {
                writers: handles.into(),
            },
            threads,
        })
    }

    pub fn sink(&self) -> AccountingSink {
        self.sink.clone()
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        for w in self.sink.writers.iter() {
            // Blocking: shutdown must reach the thread even behind a full
            // buffer; the thread drains quickly.
            let _ = w.tx.send(Msg::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl AccountingSink {
    /// Queues `record` for every writer that selects its type. Never blocks.
    pub fn log(&self, record: AccountingRecord) {
        let index = kind_index(record.kind);
        let selects = |w: &WriterHandle| w.selects.get(index).copied().unwrap_or(false);
        if !self.writers.iter().any(selects) {
            return;
        }
        let record = Arc::new(record);
        for w in self.writers.iter().filter(|w| selects(w)) {
            if w.tx.try_send(Msg::Record(Arc::clone(&record))).is_err() {
                w.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes out everything queued so far to every file and waits for it.
    /// For shutdown paths and tests; blocks the caller.
    pub fn flush_blocking(&self) {
        self.control(Msg::Flush);
    }

    /// Reopens every file (after external rotation, on SIGHUP or reload);
    /// waits until done.
    pub fn reopen_blocking(&self) {
        self.control(Msg::Reopen);
    }

    fn control(&self, make: fn(Sender<()>) -> Msg) {
        let mut acks = Vec::with_capacity(self.writers.len());
        for w in self.writers.iter() {
            let (ack_tx, ack_rx) = bounded(1);
            if w.tx.send(make(ack_tx)).is_ok() {
                acks.push(ack_rx);
            }
        }
        for ack in acks {
            let _ = ack.recv();
        }
    }

    pub fn stats(&self) -> Vec<AccountingStats> {
        self.writers
            .iter()
            .map(|w| AccountingStats {
                path: w.path.clone(),
                written: w.stats.written.load(Ordering::Relaxed),
                dropped: w.stats.dropped.load(Ordering::Relaxed),
                errors: w.stats.errors.load(Ordering::Relaxed),
            })
            .collect()
    }
}

// Every shard holds a sink.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AccountingSink>();
};
