//! Recovery at start: scan every segment of every shard, verify CRCs,
//! truncate torn tails, report mid-segment corruption, and rebuild the state
//! of every recipient by merging all shards' records (highest sequence wins).
//!
//! Also the merge itself ([`Collector`], [`merge`]), which the read-only
//! inspector reuses on bytes it read with `pread`.
//!
//! # Merge rules
//! - A message may have several copies (rewrites): the one with the highest
//!   sequence is its location and carries its envelope.
//! - A tombstone (`RECIPIENT_SUPERSEDED`) newer than the newest surviving copy
//!   means that copy was superseded by one since deleted as finished: the
//!   message is finished.
//! - A recipient's state is the one with the highest sequence among the
//!   states embedded in copies and the state records; none means `Queued`.
//! - State records for messages with no copy left are orphans (their message
//!   was deleted) and ignored.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::record::{
    KIND_MESSAGE, KIND_STATE, RECIPIENT_SUPERSEDED, RecipientState, SEGMENT_HEADER_BYTES,
    SegmentHeader, UseKey, decode_message, decode_state,
};
use super::scan::{ScanReport, scan_records};
use super::segment::{self, MessageRef, SegmentShared, SpoolShared};
use super::{MessageId, SegmentId, SpoolError, SpoolOptions};

/// A message with live recipients, to hand to the queue owning its vMTA
/// (`message.envelope()?.vmta`).
#[derive(Debug)]
pub struct RecoveredMessage {
    pub message: MessageRef,
    /// Live recipients (RCPT index, `Queued` or `Deferred` state).
    pub recipients: Box<[(u32, RecipientState)]>,
}

/// What recovery found.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub bytes_scanned: u64,
    pub messages_live: u64,
    pub recipients_live: u64,
    pub messages_finished: u64,
    pub orphan_states: u64,
    /// (segment, offset, cause): truncated away.
    pub torn_tails: Vec<(SegmentId, u64, String)>,
    /// (segment, offset, length, cause): skipped.
    pub corrupt: Vec<(SegmentId, u64, u64, String)>,
    /// Files in the spool directory that could not be used, and why.
    pub skipped_files: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
}

/// The result of [`recover`].
#[derive(Debug)]
pub struct Recovery {
    pub shared: Arc<SpoolShared>,
    pub messages: Vec<RecoveredMessage>,
    pub report: RecoveryReport,
}

/// Bound on recovery scanning threads.
pub const RECOVERY_THREADS_MAX: usize = 8;

/// What one recovery thread produced.
#[derive(Debug, Default)]
struct ScanPart {
    segs: Vec<(usize, Arc<SegmentShared>)>,
    collector: Collector,
    report: RecoveryReport,
}

impl RecoveryReport {
    fn absorb(&mut self, o: RecoveryReport) {
        self.records += o.records;
        self.bytes_scanned += o.bytes_scanned;
        self.torn_tails.extend(o.torn_tails);
        self.corrupt.extend(o.corrupt);
        self.skipped_files.extend(o.skipped_files);
    }
}

/// One copy of a message found while scanning.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyAcc {
    pub id: u64,
    pub seq: u64,
    pub seg: u32,
    pub record_offset: u64,
    pub stored_len: u32,
    pub content_offset: u64,
    pub content_len: u64,
    pub recipients: u32,
}

#[derive(Debug, Clone, Copy)]
struct StateAcc {
    id: u64,
    rcpt: u32,
    seq: u64,
    state: RecipientState,
}

/// Accumulates the records of many segments before [`merge`].
#[derive(Debug, Default)]
pub(crate) struct Collector {
    pub copies: Vec<CopyAcc>,
    states: Vec<StateAcc>,
    tombs: HashMap<u64, u64>,
}

impl Collector {
    /// Scans one segment's bytes (from offset 0, header included).
    pub fn collect(&mut self, seg: u32, bytes: &[u8]) -> ScanReport {
        scan_records(bytes, |off, raw| match raw.kind {
            KIND_MESSAGE => {
                let Ok(m) = decode_message(raw.payload) else {
                    return;
                };
                let record_offset = off as u64;
                for (i, r) in m.recipients().enumerate() {
                    if r.state != RecipientState::Queued || r.state_seq != raw.seq {
                        self.states.push(StateAcc {
                            id: m.id.0,
                            rcpt: i as u32,
                            seq: r.state_seq,
                            state: r.state,
                        });
                    }
                }
                self.copies.push(CopyAcc {
                    id: m.id.0,
                    seq: raw.seq,
                    seg,
                    record_offset,
                    stored_len: raw.stored_len as u32,
                    content_offset: record_offset
                        + super::record::RECORD_HEADER_BYTES as u64
                        + m.content_offset_in_payload as u64,
                    content_len: m.content.len() as u64,
                    recipients: m.recipient_count,
                });
            }
            KIND_STATE => {
                let Ok(s) = decode_state(raw.payload) else {
                    return;
                };
                if s.recipient == RECIPIENT_SUPERSEDED {
                    let t = self.tombs.entry(s.message.0).or_insert(raw.seq);
                    *t = (*t).max(raw.seq);
                } else {
                    self.states.push(StateAcc {
                        id: s.message.0,
                        rcpt: s.recipient,
                        seq: raw.seq,
                        state: s.state,
                    });
                }
            }
            _ => {}
        })
    }

    fn absorb(&mut self, o: Collector) {
        self.copies.extend(o.copies);
        self.states.extend(o.states);
        for (id, seq) in o.tombs {
            let t = self.tombs.entry(id).or_insert(seq);
            *t = (*t).max(seq);
        }
    }

    pub fn max_seq(&self) -> u64 {
        let c = self.copies.iter().map(|c| c.seq).max().unwrap_or(0);
        let s = self.states.iter().map(|s| s.seq).max().unwrap_or(0);
        let t = self.tombs.values().copied().max().unwrap_or(0);
        c.max(s).max(t)
    }
}

/// Merge outcome for one message, given to [`merge`]'s callback.
#[derive(Debug)]
pub(crate) struct Merged<'a> {
    pub copy: &'a CopyAcc,
    /// Latest state per recipient, in RCPT order.
    pub states: &'a [RecipientState],
    /// Superseded by a copy since deleted: finished whatever `states` say.
    pub superseded: bool,
}

/// Merges everything collected; calls `each` once per message id. Returns the
/// number of orphan state records.
pub(crate) fn merge(mut c: Collector, mut each: impl FnMut(Merged<'_>)) -> u64 {
    c.copies.sort_unstable_by_key(|x| (x.id, x.seq));
    c.states.sort_unstable_by_key(|x| (x.id, x.rcpt, x.seq));
    let mut buf: Vec<RecipientState> = Vec::new();
    let mut si = 0;
    let mut orphans = 0u64;
    let mut ci = 0;
    while ci < c.copies.len() {
        let id = c.copies[ci].id;
        let mut last = ci;
        while last + 1 < c.copies.len() && c.copies[last + 1].id == id {
            last += 1;
        }
        let copy = &c.copies[last];
        while si < c.states.len() && c.states[si].id < id {
            orphans += 1;
            si += 1;
        }
        buf.clear();
        buf.resize(copy.recipients as usize, RecipientState::Queued);
        let mut best: Vec<u64> = Vec::new();
        best.resize(copy.recipients as usize, copy.seq);
        while si < c.states.len() && c.states[si].id == id {
            let s = &c.states[si];
            if let (Some(slot), Some(b)) =
                (buf.get_mut(s.rcpt as usize), best.get_mut(s.rcpt as usize))
                && s.seq >= *b
            {
                *slot = s.state;
                *b = s.seq;
            }
            si += 1;
        }
        let superseded = c.tombs.get(&id).is_some_and(|&t| t > copy.seq);
        each(Merged {
            copy,
            states: &buf,
            superseded,
        });
        ci = last + 1;
    }
    orphans + (c.states.len() - si) as u64
}

/// Recovers the spool in `options.path` (created if missing) for a server
/// with `shards` shards. Takes an exclusive lock on `<path>/lock` for the
/// life of the returned [`SpoolShared`]. Blocking; run once before shards start.
pub fn recover(options: &SpoolOptions, shards: u16) -> Result<Recovery, SpoolError> {
    let started = Instant::now();
    if shards == 0 {
        return Err(SpoolError::Unusable("zero shards".into()));
    }
    if options.segment_bytes < super::SEGMENT_BYTES_MIN {
        return Err(SpoolError::Unusable(format!(
            "segment size below {} bytes",
            super::SEGMENT_BYTES_MIN
        )));
    }
    std::fs::create_dir_all(&options.path)
        .map_err(|e| SpoolError::io("create spool directory", &e))?;
    let lock = lock_dir(&options.path)?;
    let mut report = RecoveryReport::default();
    let mut files: Vec<(SegmentId, PathBuf)> = Vec::new();
    let mut free: Vec<PathBuf> = Vec::new();
    let mut freed: Vec<SegmentId> = Vec::new();
    let dir =
        std::fs::read_dir(&options.path).map_err(|e| SpoolError::io("read spool directory", &e))?;
    for entry in dir {
        let entry = entry.map_err(|e| SpoolError::io("read spool directory", &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment::parse_file_name(name) {
            files.push((id, entry.path()));
        } else if segment::is_prepared_file_name(name) {
            // A segment being prepared when the last run stopped: never used.
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(was) = segment::parse_free_file_name(name) {
            // A finished segment's file kept for reuse: kept again if it has
            // this run's segment size and the pool has room. Its number is
            // not given to a new segment (whose free file would take its name).
            freed.push(was);
            let fits = entry
                .metadata()
                .is_ok_and(|m| m.len() == options.segment_bytes);
            if fits && options.reuses_segments() && free.len() < segment::free_pool_bound(shards) {
                free.push(entry.path());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    files.sort();
    let mut next_number: Vec<u32> = vec![0; usize::from(shards)];
    for id in files.iter().map(|(id, _)| id).chain(&freed) {
        if let Some(n) = next_number.get_mut(usize::from(id.shard)) {
            *n = (*n).max(id.number.saturating_add(1));
        }
    }

    // Scan segments on up to one thread per core (CRC and page faults
    // dominate); each thread keeps its own collector, merged afterwards.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, RECOVERY_THREADS_MAX)
        .min(files.len().max(1));
    let parts: Vec<ScanPart> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let files = &files;
                scope.spawn(move || {
                    let mut part = ScanPart::default();
                    for (index, (id, path)) in files.iter().enumerate().skip(t).step_by(threads) {
                        let r = open_segment(
                            *id,
                            path,
                            &mut part.collector,
                            index as u32,
                            &mut part.report,
                        );
                        match r {
                            Ok(seg) => part.segs.push((index, Arc::new(seg))),
                            Err(why) => part.report.skipped_files.push((path.clone(), why)),
                        }
                    }
                    part
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut segs: Vec<Option<Arc<SegmentShared>>> = vec![None; files.len()];
    let mut collector = Collector::default();
    for part in parts {
        for (index, seg) in part.segs {
            if let Some(slot) = segs.get_mut(index) {
                *slot = Some(seg);
            }
        }
        collector.absorb(part.collector);
        report.absorb(part.report);
    }
    report.segments = segs.iter().flatten().count();
    let max_seq = collector.max_seq();

    let mut messages = Vec::new();
    report.orphan_states = merge(collector, |m| {
        let live: Box<[(u32, RecipientState)]> = if m.superseded {
            Box::new([])
        } else {
            m.states
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_final())
                .map(|(i, s)| (i as u32, *s))
                .collect()
        };
        let Some(Some(seg)) = segs.get(m.copy.seg as usize) else {
            return;
        };
        if live.is_empty() {
            report.messages_finished += 1;
            return;
        }
        report.messages_live += 1;
        report.recipients_live += live.len() as u64;
        let c = m.copy;
        let message = MessageRef::new(
            MessageId(c.id),
            seg.clone(),
            c.record_offset,
            c.stored_len,
            c.content_offset,
            c.content_len,
            live.len() as u32,
        );
        messages.push(RecoveredMessage {
            message,
            recipients: live,
        });
    });

    let shared = Arc::new(SpoolShared {
        options: options.clone(),
        shards,
        seq: AtomicU64::new(max_seq + 1),
        segments: Mutex::new(segs.into_iter().flatten().map(|s| (s.id, s)).collect()),
        next_number: next_number.into_iter().map(AtomicU32::new).collect(),
        _lock: Some(lock),
        sync_latency: Default::default(),
        commit_latency: Default::default(),
        segments_prepared: Default::default(),
        segments_zero_filled: Default::default(),
        segments_allocated: Default::default(),
        segments_recycled: Default::default(),
        free: Mutex::new(free),
    });
    report.elapsed = started.elapsed();
    Ok(Recovery {
        shared,
        messages,
        report,
    })
}

/// Opens, checks, scans, trims and maps one segment. `Err` is a reason to skip it.
fn open_segment(
    id: SegmentId,
    path: &std::path::Path,
    collector: &mut Collector,
    index: u32,
    report: &mut RecoveryReport,
) -> Result<SegmentShared, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < SEGMENT_HEADER_BYTES as u64 {
        return Err("shorter than a segment header".into());
    }
    let probe = SegmentShared::map(id, UseKey::FIRST, path.to_path_buf(), &file, len, true)
        .map_err(|e| e.to_string())?;
    // A damaged header must not cost the acknowledged records behind it:
    // report it and scan on, trusting the file name.
    match SegmentHeader::decode(probe.bytes()) {
        Ok(h) if h.id == id => {}
        Ok(h) => report.corrupt.push((
            id,
            0,
            SEGMENT_HEADER_BYTES as u64,
            format!("header names {}", h.id),
        )),
        Err(e) => report.corrupt.push((
            id,
            0,
            SEGMENT_HEADER_BYTES as u64,
            format!("segment header: {e}"),
        )),
    }
    let scan = collector.collect(index, probe.bytes());
    drop(probe);
    report.records += scan.records;
    report.bytes_scanned += scan.valid_end as u64;
    for c in &scan.corrupt {
        report
            .corrupt
            .push((id, c.offset as u64, c.len as u64, c.error.to_string()));
    }
    if let Some((off, e)) = &scan.torn_tail {
        report.torn_tails.push((id, *off as u64, e.to_string()));
    }
    let valid_end = scan.valid_end as u64;
    // A recycled file (generation 1 and up) keeps its length: past its
    // records are leftovers (never valid for its use) and, at the end, the
    // copy of its header, which must survive should the header be damaged.
    if len > valid_end && scan.key.generation == 0 {
        // Drop the torn tail and the unused preallocation of the segment that
        // was current when we stopped. Nothing past valid_end was acknowledged.
        file.set_len(valid_end)
            .map_err(|e| format!("truncate: {e}"))?;
        file.sync_all()
            .map_err(|e| format!("fsync after truncate: {e}"))?;
    }
    let seg = SegmentShared::map(id, scan.key, path.to_path_buf(), &file, valid_end, true)
        .map_err(|e| e.to_string())?;
    if !scan.corrupt.is_empty() {
        seg.had_corruption.store(true, Ordering::Relaxed);
    }
    // A recycled file's blocks were written in its earlier uses.
    if scan.key.generation != 0 {
        seg.blocks_written.store(true, Ordering::Relaxed);
    }
    Ok(seg)
}

fn lock_dir(dir: &std::path::Path) -> Result<File, SpoolError> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))
        .map_err(|e| SpoolError::io("open spool lock", &e))?;
    // SAFETY: flock on a descriptor we own; no pointers.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(SpoolError::Unusable(
            "spool directory is locked by another spate process".into(),
        ));
    }
    Ok(f)
}
