//! One accounting file: its writer thread, flushing and rotation.
//!
//! Owns the file handle. Records arrive over a bounded crossbeam channel;
//! the thread appends them to a buffer, writes it out at least every
//! `flush_interval` (and when it grows past `ACCOUNTING_BUFFER_BYTES_MAX`),
//! rotates at interval boundaries aligned to the unix epoch (a `1d` rotation
//! happens at 00:00 UTC) by renaming the file to `<path>.<YYYYmmdd-HHMMSS>`
//! (the boundary time) and opening a new one, and reopens the file on
//! request (after an external logrotate). A file that received no record
//! since it was opened is not rotated. A CSV file gets the header line
//! whenever it is created or found empty.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use super::record::{AccountingRecord, write_csv_header};
use super::{AccountingFormat, AccountingOptions};
use crate::runtime::local::unix_now_s;

/// Encoded bytes held before a write even if the flush interval has not
/// passed.
pub const ACCOUNTING_BUFFER_BYTES_MAX: usize = 256 * 1024;

pub(super) enum Msg {
    Record(Arc<AccountingRecord>),
    /// Write everything buffered, then acknowledge.
    Flush(Sender<()>),
    /// Close and reopen the file (same path), then acknowledge.
    Reopen(Sender<()>),
    Shutdown,
}

/// Counters of one writer.
#[derive(Debug, Default)]
pub(super) struct WriterStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
}

pub(super) struct FileWriter {
    options: AccountingOptions,
    file: File,
    buffer: Vec<u8>,
    stats: Arc<WriterStats>,
    /// Unix second of the next rotation boundary.
    next_rotation_unix: Option<u64>,
    dropped_reported: u64,
    /// Records written to the current file since it was opened; an
    /// untouched file is not rotated (no trail of header-only files).
    records_in_file: u64,
}

fn next_boundary(now: u64, rotate: Option<Duration>) -> Option<u64> {
    let period = rotate?.as_secs().max(1);
    Some((now / period + 1) * period)
}

impl FileWriter {
    /// Opens (or creates) the file; errors surface at start, not later.
    pub(super) fn open(options: AccountingOptions, stats: Arc<WriterStats>) -> io::Result<Self> {
        let file = open_file(&options.path, options.format)?;
        let next_rotation_unix = next_boundary(unix_now_s(), options.rotate);
        Ok(Self {
            options,
            file,
            buffer: Vec::with_capacity(8192),
            stats,
            next_rotation_unix,
            dropped_reported: 0,
            records_in_file: 0,
        })
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let interval = self.options.flush_interval.max(Duration::from_millis(10));
        let mut next_flush = Instant::now() + interval;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Record(record)) => {
                    self.maybe_rotate();
                    self.encode(&record);
                    if self.buffer.len() >= ACCOUNTING_BUFFER_BYTES_MAX {
                        self.write_out();
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    self.maybe_rotate();
                    self.write_out();
                    let _ = ack.send(());
                }
                Ok(Msg::Reopen(ack)) => {
                    self.write_out();
                    self.reopen();
                    let _ = ack.send(());
                }
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    self.write_out();
                    self.report();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_flush {
                self.maybe_rotate();
                self.write_out();
                self.report();
                next_flush = Instant::now() + interval;
            }
        }
    }

    fn encode(&mut self, record: &AccountingRecord) {
        match self.options.format {
            AccountingFormat::Csv => record.write_csv(&mut self.buffer),
            AccountingFormat::Jsonl => record.write_jsonl(&mut self.buffer),
        }
        self.stats.written.fetch_add(1, Ordering::Relaxed);
        self.records_in_file += 1;
    }

    fn write_out(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let result = self
            .file
            .write_all(&self.buffer)
            .and_then(|()| self.file.flush());
        if let Err(e) = result {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %self.options.path.display(), error = %e,
                bytes = self.buffer.len(), "accounting write failed; records lost");
        }
        self.buffer.clear();
    }

    /// Logs drops since the last report: never silent, but at most once per
    /// flush interval.
    fn report(&mut self) {
        let dropped = self.stats.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_reported {
            tracing::warn!(path = %self.options.path.display(),
                dropped_since_last = dropped - self.dropped_reported, dropped_total = dropped,
                "accounting buffer full: records dropped");
            self.dropped_reported = dropped;
        }
    }

    fn maybe_rotate(&mut self) {
        let Some(boundary) = self.next_rotation_unix else {
            return;
        };
        let now = unix_now_s();
        if now < boundary {
            return;
        }
        self.next_rotation_unix = next_boundary(now, self.options.rotate);
        if self.records_in_file == 0 {
            return;
        }
        self.write_out();
        let target = rotated_name(&self.options.path, boundary);
        if let Err(e) = std::fs::rename(&self.options.path, &target) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %self.options.path.display(), error = %e,
                "accounting rotation failed; continuing in the same file");
        }
        self.reopen();
    }

    fn reopen(&mut self) {
        match open_file(&self.options.path, self.options.format) {
            Ok(file) => {
                self.file = file;
                self.records_in_file = 0;
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %self.options.path.display(), error = %e,
                    "accounting reopen failed; still writing the old file handle");
            }
        }
    }
}

fn open_file(path: &Path, format: AccountingFormat) -> io::Result<File> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    if format == AccountingFormat::Csv && file.metadata()?.len() == 0 {
        let mut header = Vec::new();
        write_csv_header(&mut header);
        file.write_all(&header)?;
    }
    Ok(file)
}

/// `<path>.<YYYYmmdd-HHMMSS>`, with `.N` added if that name is taken.
fn rotated_name(path: &Path, boundary_unix: u64) -> PathBuf {
    let unix = i64::try_from(boundary_unix).unwrap_or(i64::MAX);
    let t = crate::util::time::civil_from_unix(unix);
    let stamp = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    );
    let mut base = path.as_os_str().to_owned();
    base.push(".");
    base.push(&stamp);
    let mut candidate = PathBuf::from(&base);
    let mut n = 0u32;
    while candidate.exists() && n < 1000 {
        n += 1;
        let mut name = base.clone();
        name.push(format!(".{n}"));
        candidate = PathBuf::from(name);
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_align_to_epoch() {
        assert_eq!(next_boundary(100, Some(Duration::from_secs(60))), Some(120));
        assert_eq!(next_boundary(120, Some(Duration::from_secs(60))), Some(180));
        assert_eq!(
            next_boundary(90_000, Some(Duration::from_secs(86_400))),
            Some(172_800)
        );
        assert_eq!(next_boundary(5, None), None);
    }

    #[test]
    fn rotated_names() {
        let p = Path::new("/nonexistent-dir/acct.csv");
        assert_eq!(
            rotated_name(p, 1_795_817_098),
            PathBuf::from("/nonexistent-dir/acct.csv.20261127-220458")
        );
    }
}
