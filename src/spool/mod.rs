//! The durable spool: per-shard append-only segment files, group commit,
//! crash recovery, reclamation and read-only inspection.
//!
//! A message answered with 250 must survive kill -9 and power loss. Each shard
//! owns `shard-N-*.seg` segments in the spool directory and appends records to
//! its current one through io_uring (compio); one `fdatasync` covers every
//! record written since the previous one, and each appender's future resolves
//! only when the sync covering its record has completed.
//!
//! | file | owns |
//! | --- | --- |
//! | `record.rs` | the on-disk format: segment header, message and state records, CRC32C |
//! | `scan.rs` | walking one segment: end of data, torn tails, resync after corruption |
//! | `segment.rs` | segment files (fallocate, directory fsync), read-only maps, the cross-shard registry |
//! | `writer.rs` | [`Spool`], the per-shard appender with group commit, rotation, ENOSPC handling |
//! | `reclaim.rs` | deleting finished segments (carrying forward state records that still matter) |
//! | `recovery.rs` | [`recover`]: merge every shard's segments at start and rebuild live recipients |
//! | `inspect.rs` | read-only inventory of a spool for `spate-spool` (never writes, never locks) |
//!
//! # Cross-shard rules
//! A message's body stays in the segment where it was first written; the shard
//! delivering it reads it through the read-only map held by [`MessageRef`] and
//! appends state records to its **own** segments. Every record carries a
//! sequence number from one counter shared by all shards, so "the last state
//! of a recipient" is well defined across shards: the highest sequence wins.
//!
//! # What the caller does
//! - startup: [`recover`] once (synchronous, before shards start), then
//!   [`Spool::open`] on every shard with the returned [`SpoolShared`], and hand
//!   each [`RecoveredMessage`] to the queue owning its vMTA.
//! - inbound: [`Spool::append_message`] → `Ok(MessageRef)` means durable (send
//!   250); `Err(e)` → reply [`SpoolError::smtp_reply`] (451 4.3.0 or 452 4.3.1).
//! - delivery: [`MessageRef::content`] for the bytes to send,
//!   [`Spool::record_states`] for outcomes, [`Spool::needs_rewrite`] /
//!   [`Spool::rewrite_message`] to move long-lived messages out of sparse
//!   segments (compaction) or to reroute them to another vMTA.
//! - housekeeping (every 100 ms in spate): [`Spool::reclaim`].

pub mod inspect;
pub mod reclaim;
pub mod record;
pub mod recovery;
pub mod scan;
pub mod segment;
pub mod writer;

use std::path::PathBuf;

pub use record::{NewMessage, NewRecipient, RecipientState, Ret};
pub use recovery::{RecoveredMessage, Recovery, RecoveryReport, recover};
pub use segment::{MessageRef, SegmentShared, SpoolShared};
pub use writer::{Spool, pwrite_all};

/// Default size of one segment file (config `[spool] segment_size`).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest segment we accept: a header plus room for real records.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Bytes of encoded records waiting for the next write before appenders wait
/// (backpressure instead of unbounded memory).
pub const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// After ENOSPC or a failed segment creation, how long appends fail fast
/// before the next attempt to create a segment.
pub const DISK_FULL_RETRY_MS_DEFAULT: u64 = 1000;
/// Compaction threshold default: rewrite a message out of a sealed segment
/// whose live bytes fall below this fraction of its used bytes.
pub const COMPACT_LIVE_FRACTION_DEFAULT: f64 = 0.25;

const _: () = assert!(SEGMENT_BYTES_MIN >= 4096);
const _: () = assert!(SEGMENT_BYTES_DEFAULT >= SEGMENT_BYTES_MIN);

/// When appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// One fdatasync covers every record written since the previous one (default).
    Group,
    /// One fdatasync per record (benchmark comparison only: slow).
    EachRecord,
    /// No fsync at all: acknowledged mail is lost on power failure. For
    /// benchmarks only; the caller logs a warning at start.
    None,
}

/// How long records of delivered recipients may wait in a shard's pending
/// buffer for a flush that something urgent starts (a new message, any other
/// state) before they start one themselves. A delivered state only keeps a
/// recipient from being delivered again after a crash: under load those
/// records ride with the messages' fdatasyncs (at 2 KB / 20 connections the
/// shards made 20–30% fewer), and on an idle shard one fdatasync carries all
/// of them within this delay.
pub const LAZY_RECORDS_DELAY_DEFAULT: std::time::Duration = std::time::Duration::from_millis(10);

/// Spool settings, mapped from the `[spool]` configuration by the caller.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub path: PathBuf,
    pub segment_bytes: u64,
    pub sync: SyncMode,
    /// In (0, 1): see [`COMPACT_LIVE_FRACTION_DEFAULT`].
    pub compact_live_fraction: f64,
    pub disk_full_retry_ms: u64,
    /// Make each shard's next segment on a background thread before it is
    /// needed (see `segment::prepare_segment`), so a rotation does no file
    /// work on the shard.
    pub prepare_segments: bool,
    /// Whether a prepared segment is written full of zeros first.
    pub zero_fill: ZeroFill,
    /// Keep the files of finished segments (up to
    /// [`segment::FREE_SEGMENTS_PER_SHARD`] per shard) and make the next
    /// prepared segments from them rather than from new files (see
    /// `record.rs`, "Recycled files").
    pub recycle_segments: bool,
    /// How long delivered recipients' states may wait for a flush started by
    /// something else (see [`Spool::record_states_lazily`]).
    pub lazy_records_delay: std::time::Duration,
}

/// Whether prepared segments are written full of zeros (`[spool] zero_fill`).
///
/// An fdatasync into written blocks only writes data; into `fallocate`d
/// (unwritten) blocks it must also persist the extent conversion, a metadata
/// write and, on a journaling file system, a journal commit. Measured with
/// `spate-bench relay` on a journaled ext4: fdatasync 1.0 ms against 2.1 ms
/// at 2 KB / 20 connections, 8.1k against 5.5k msg/s. But zeros double the
/// bytes the disk writes, which costs more than it saves once each
/// fdatasync carries a lot of data: at 100 KB the allocated segments gave
/// +15–35% msg/s, on that file system and on this project's ext4 without a
/// journal alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroFill {
    /// Zeros while the shard's fdatasyncs carried less than
    /// [`ZERO_FILL_AUTO_BYTES_PER_SYNC`] each on average since the previous
    /// preparation; allocation only otherwise. The first preparation waits
    /// for [`ZERO_FILL_AUTO_FIRST_SYNCS`].
    #[default]
    Auto,
    Always,
    Never,
}

/// See [`ZeroFill::Auto`]. Measured on a journaled ext4 at 20 connections
/// (`bench/results/2026-11-28e-relay.md`): zeros paid at ~7 KB per sync
/// (2 KB messages, +50%) and ~70 KB (20 KB messages, +45%), broke even at
/// ~180 KB (50 KB messages) and lost at ~360 KB (100 KB messages, −15%).
/// Without a journal they never paid much and lost at 100 KB.
pub const ZERO_FILL_AUTO_BYTES_PER_SYNC: u64 = 128 << 10;

/// Under [`ZeroFill::Auto`] a shard's first preparation waits for this many
/// fdatasyncs, so that it is decided on figures rather than zero-filled by
/// default (two zeroed 64 MiB segments per shard at every start cost a
/// 100 KB benchmark ~8%). Until then the shard writes into the segment it
/// allocated at start.
pub const ZERO_FILL_AUTO_FIRST_SYNCS: u64 = 8;

impl ZeroFill {
    /// Whether the next prepared segment gets zeros, after `syncs`
    /// fdatasyncs that carried `bytes` in all.
    pub fn zeros_next(self, bytes: u64, syncs: u64) -> bool {
        match self {
            ZeroFill::Always => true,
            ZeroFill::Never => false,
            ZeroFill::Auto => syncs == 0 || bytes / syncs < ZERO_FILL_AUTO_BYTES_PER_SYNC,
        }
    }
}

impl SpoolOptions {
    /// Whether finished segments' files are kept and reused: recycling is on
    /// and so is preparation, which is what reuses them.
    pub fn reuses_segments(&self) -> bool {
        self.recycle_segments && self.prepare_segments
    }

    pub fn new(path: impl Into<PathBuf>) -> Self {
        SpoolOptions {
            path: path.into(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            sync: SyncMode::Group,
            compact_live_fraction: COMPACT_LIVE_FRACTION_DEFAULT,
            disk_full_retry_ms: DISK_FULL_RETRY_MS_DEFAULT,
            prepare_segments: true,
            zero_fill: ZeroFill::Auto,
            recycle_segments: true,
            lazy_records_delay: LAZY_RECORDS_DELAY_DEFAULT,
        }
    }
}

/// A segment: the shard that wrote it and its number within that shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub shard: u16,
    pub number: u32,
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", segment::file_name(*self))
    }
}

/// A message's spool id: unique across shards and restarts (drawn from the
/// shared sequence counter when the message is first spooled). Shown as 16
/// hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for MessageId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(MessageId)
    }
}

/// Errors of the spool. Each maps to exactly one SMTP reply in [`Self::smtp_reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// ENOSPC (or quota) creating or writing a segment: 452 4.3.1.
    #[error("spool disk full")]
    DiskFull,
    /// Any other I/O failure, including a failed fsync (never retried and
    /// assumed good: the segment is sealed): 451 4.3.0.
    #[error("spool i/o error during {op}: {kind}{}", errno.map(|e| format!(" (errno {e})")).unwrap_or_default())]
    Io {
        op: &'static str,
        kind: std::io::ErrorKind,
        errno: Option<i32>,
    },
    /// The record does not fit in one segment: 552 5.3.4.
    #[error("message too large for a spool segment")]
    TooLarge,
    /// A field is out of the record format's bounds: 554 5.3.0 (our caller's bug
    /// or an absurd envelope).
    #[error("cannot encode record: {0}")]
    Encode(#[from] record::EncodeError),
    /// The spool is shutting down.
    #[error("spool closed")]
    Closed,
    /// The spool directory or a segment is unusable at start.
    #[error("spool unusable: {0}")]
    Unusable(String),
}

impl SpoolError {
    pub(crate) fn io(op: &'static str, e: &std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            return SpoolError::DiskFull;
        }
        SpoolError::Io {
            op,
            kind: e.kind(),
            errno: e.raw_os_error(),
        }
    }

    /// The SMTP reply (code, enhanced status and text) for a transaction that
    /// could not be spooled. Bland on purpose: no paths or internals.
    pub fn smtp_reply(&self) -> (u16, &'static str) {
        match self {
            SpoolError::DiskFull => (452, "4.3.1 insufficient system storage"),
            SpoolError::TooLarge => (552, "5.3.4 message too big for system"),
            SpoolError::Encode(_) => (554, "5.3.0 message cannot be stored"),
            SpoolError::Io { .. } | SpoolError::Closed | SpoolError::Unusable(_) => {
                (451, "4.3.0 temporary storage failure, try again later")
            }
        }
    }
}
