//! Segment files and the state shared between shards: the read-only map of
//! every segment, its live counters, the registry of existing segments, the
//! shared sequence counter, and [`MessageRef`], a handle to one spooled message.
//!
//! Creating a segment (open, `fallocate`, header, fsync, directory fsync) is
//! here, and so is preparing one ahead of need (a zero-filled
//! `prep-shard-N.tmp` renamed into place when the shard rotates); appending is
//! `writer.rs`'s job, deleting is `reclaim.rs`'s.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use super::record::{self, MessageRecord, RecordError, SegmentHeader, UseKey};
use super::{MessageId, SegmentId, SpoolError, SpoolOptions};

/// `shard-3-0000000012.seg`
pub fn file_name(id: SegmentId) -> String {
    format!("shard-{}-{:010}.seg", id.shard, id.number)
}

/// The inverse of [`file_name`]; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<SegmentId> {
    parse_id_between(name, "shard-", ".seg")
}

/// The segment id in `<prefix><shard>-<number><suffix>`.
fn parse_id_between(name: &str, prefix: &str, suffix: &str) -> Option<SegmentId> {
    let rest = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let (shard, number) = rest.split_once('-')?;
    Some(SegmentId {
        shard: shard.parse().ok()?,
        number: number.parse().ok()?,
    })
}

/// One segment as every shard sees it: a read-only map plus counters.
#[derive(Debug)]
pub struct SegmentShared {
    pub id: SegmentId,
    /// The use of the file this segment is (its records' generation and salt).
    pub key: UseKey,
    pub path: PathBuf,
    map: Mmap,
    /// Messages whose newest copy is here and which still have live recipients.
    pub(crate) live_messages: AtomicU64,
    /// Stored bytes of those messages.
    pub(crate) live_bytes: AtomicU64,
    /// End of committed data.
    pub(crate) used_bytes: AtomicU64,
    /// No more appends (full, failed, or from an earlier run).
    pub(crate) sealed: AtomicBool,
    pub(crate) deleted: AtomicBool,
    /// Recovery found corrupt regions inside it (below `used_bytes`): its
    /// records must be walked with the full, resynchronising scan.
    pub(crate) had_corruption: AtomicBool,
    /// A write or fdatasync into it failed: its file is not reused.
    pub(crate) io_failed: AtomicBool,
    /// Its file's blocks were all written when it was made (zero-filled or
    /// recycled): reusing it saves their extent conversion. Else only its
    /// used part is, which must be most of the file for reuse to pay.
    pub(crate) blocks_written: AtomicBool,
}

impl SegmentShared {
    /// Maps `file` read-only.
    pub(crate) fn map(
        id: SegmentId,
        key: UseKey,
        path: PathBuf,
        file: &File,
        used_bytes: u64,
        sealed: bool,
    ) -> Result<Self, SpoolError> {
        // SAFETY: the map is read-only. The file is only ever written by our own
        // appender at offsets past the committed end (readers only look below
        // `used_bytes` or at records whose commit they observed), it is never
        // truncated while mapped (recovery truncates before mapping), and
        // unlinking it keeps the pages valid until the map is dropped. A file
        // is reused for a later segment (rewritten from the start) only after
        // reclamation held the last handle to this map and dropped it
        // (`Arc::try_unwrap` in `reclaim.rs`).
        // Modification by other processes is outside the spool's contract.
        let map = unsafe { memmap2::MmapOptions::new().map(file) }
            .map_err(|e| SpoolError::io("mmap", &e))?;
        Ok(SegmentShared {
            id,
            key,
            path,
            map,
            live_messages: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            used_bytes: AtomicU64::new(used_bytes),
            sealed: AtomicBool::new(sealed),
            deleted: AtomicBool::new(false),
            had_corruption: AtomicBool::new(false),
            io_failed: AtomicBool::new(false),
            blocks_written: AtomicBool::new(false),
        })
    }

    /// Committed bytes of the segment (header included).
    pub fn bytes(&self) -> &[u8] {
        let used = self.used_bytes.load(Ordering::Acquire) as usize;
        self.map.get(..used).unwrap_or(&self.map)
    }

    /// The file's length when it was mapped.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether its file is worth reusing for a later segment once it is
    /// finished: a whole segment of `segment_bytes`, undamaged, with no
    /// failed write, and with written blocks (at least 7/8 of them when it
    /// was not made from written ones), so that fdatasyncs into it convert no
    /// extents.
    pub(crate) fn reusable(&self, segment_bytes: u64) -> bool {
        let len = self.file_len();
        len == segment_bytes
            && !self.had_corruption.load(Ordering::Relaxed)
            && !self.io_failed.load(Ordering::Relaxed)
            && (self.blocks_written.load(Ordering::Relaxed) || self.used_bytes() >= len - len / 8)
    }

    pub fn live_messages(&self) -> u64 {
        self.live_messages.load(Ordering::Relaxed)
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Relaxed)
    }

    pub(crate) fn add_live(&self, stored_len: u64) {
        self.live_messages.fetch_add(1, Ordering::Relaxed);
        self.live_bytes.fetch_add(stored_len, Ordering::Relaxed);
    }

    pub(crate) fn remove_live(&self, stored_len: u64) {
        let _ = self
            .live_messages
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
        let _ = self
            .live_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(stored_len))
            });
    }
}

/// A spooled message: where its record is, plus its live-recipient count.
/// Cheap to clone (an `Arc`), `Send + Sync`, ~80 bytes per message.
#[derive(Debug, Clone)]
pub struct MessageRef(pub(crate) Arc<MessageShared>);

#[derive(Debug)]
pub(crate) struct MessageShared {
    pub(crate) id: MessageId,
    pub(crate) segment: Arc<SegmentShared>,
    pub(crate) record_offset: u64,
    pub(crate) stored_len: u32,
    pub(crate) content_offset: u64,
    pub(crate) content_len: u64,
    pub(crate) live_recipients: AtomicU32,
}

impl MessageRef {
    pub(crate) fn new(
        id: MessageId,
        segment: Arc<SegmentShared>,
        record_offset: u64,
        stored_len: u32,
        content_offset: u64,
        content_len: u64,
        live_recipients: u32,
    ) -> Self {
        if live_recipients > 0 {
            segment.add_live(u64::from(stored_len));
        }
        MessageRef(Arc::new(MessageShared {
            id,
            segment,
            record_offset,
            stored_len,
            content_offset,
            content_len,
            live_recipients: AtomicU32::new(live_recipients),
        }))
    }

    pub fn id(&self) -> MessageId {
        self.0.id
    }

    /// The segment holding this message's record.
    pub fn segment(&self) -> SegmentId {
        self.0.segment.id
    }

    pub fn record_offset(&self) -> u64 {
        self.0.record_offset
    }

    /// Headers and body, straight from the segment's read-only map (no copy).
    pub fn content(&self) -> &[u8] {
        let start = self.0.content_offset as usize;
        let end = start.saturating_add(self.0.content_len as usize);
        // The range was checked against the committed record when this ref was
        // made; an empty slice here would be our bug, not a crash.
        self.0.segment.map.get(start..end).unwrap_or(&[])
    }

    /// The envelope (and content) decoded from the map. Recipients are in RCPT
    /// order; state records and [`super::Spool::record_states`] use those indexes.
    pub fn envelope(&self) -> Result<MessageRecord<'_>, RecordError> {
        let start = self.0.record_offset as usize;
        let end = start + self.0.stored_len as usize;
        let bytes = self
            .0
            .segment
            .map
            .get(start..end)
            .ok_or(RecordError::Truncated {
                needed: end,
                available: self.0.segment.map.len(),
            })?;
        // Verified when the segment was scanned or when this process wrote it.
        let raw = record::decode_verified(bytes)?;
        record::decode_message(raw.payload)
    }

    pub fn live_recipients(&self) -> u32 {
        self.0.live_recipients.load(Ordering::Relaxed)
    }

    /// Counts `finals` recipients as finished; when none are left the message
    /// no longer keeps its segment alive.
    pub(crate) fn finish_recipients(&self, finals: u32) {
        if finals == 0 {
            return;
        }
        let prev = self
            .0
            .live_recipients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(finals))
            })
            .unwrap_or(0);
        if prev > 0 && prev <= finals {
            self.0.segment.remove_live(u64::from(self.0.stored_len));
        }
    }

    /// The message moved to a newer copy: this copy no longer counts as live.
    pub(crate) fn retire(&self) {
        let prev = self.0.live_recipients.swap(0, Ordering::AcqRel);
        if prev > 0 {
            self.0.segment.remove_live(u64::from(self.0.stored_len));
        }
    }
}

/// State shared by every shard's [`super::Spool`]: options, the sequence
/// counter and the registry of existing segments. The registry's mutex is
/// taken when a segment is created or deleted and during reclamation, never
/// per message.
#[derive(Debug)]
pub struct SpoolShared {
    pub options: SpoolOptions,
    pub shards: u16,
    pub(crate) seq: AtomicU64,
    pub(crate) segments: Mutex<HashMap<SegmentId, Arc<SegmentShared>>>,
    /// Next segment number per shard (index = shard).
    pub(crate) next_number: Vec<AtomicU32>,
    /// The exclusive lock on `<path>/lock`, held while this value lives.
    pub(crate) _lock: Option<File>,
    /// Latency of every group-commit fdatasync (for metrics).
    pub sync_latency: crate::util::histogram::LatencyHistogram,
    /// From a new message's record queued to its commit resolved: the
    /// spool's share of the 250's latency (waiting for a batch, the write,
    /// the fdatasync).
    pub commit_latency: crate::util::histogram::LatencyHistogram,
    /// Segments made from a prepared file (zero-filled or allocated) since
    /// start, rather than on the shard.
    pub segments_prepared: AtomicU64,
    /// Preparations finished on the helper threads, written full of zeros
    /// first or only allocated ([`super::ZeroFill`]).
    pub segments_zero_filled: AtomicU64,
    pub segments_allocated: AtomicU64,
    /// Preparations that reused the file of a finished segment.
    pub segments_recycled: AtomicU64,
    /// Files of finished segments kept for reuse (at most
    /// [`FREE_SEGMENTS_PER_SHARD`] per shard), by path.
    pub(crate) free: Mutex<Vec<PathBuf>>,
}

impl SpoolShared {
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves `n` consecutive sequence numbers.
    pub(crate) fn next_seqs(&self, n: u64) -> u64 {
        self.seq.fetch_add(n, Ordering::Relaxed)
    }

    pub fn segment(&self, id: SegmentId) -> Option<Arc<SegmentShared>> {
        self.segments.lock().ok()?.get(&id).cloned()
    }

    pub fn segment_exists(&self, id: SegmentId) -> bool {
        self.segments
            .lock()
            .map(|m| m.contains_key(&id))
            .unwrap_or(true)
    }

    /// Every existing segment.
    pub fn all_segments(&self) -> Vec<Arc<SegmentShared>> {
        self.segments
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn register(&self, seg: Arc<SegmentShared>) {
        if let Ok(mut m) = self.segments.lock() {
            m.insert(seg.id, seg);
        }
    }

    /// Whether a finished segment's file may be kept for reuse: recycling and
    /// preparation (which reuses them) are on and the pool has room.
    pub(crate) fn free_has_room(&self) -> bool {
        self.options.reuses_segments()
            && self
                .free
                .lock()
                .is_ok_and(|f| f.len() < free_pool_bound(self.shards))
    }

    /// Adds a finished segment's file, renamed to its [`free_file_name`] and
    /// no longer mapped, to the pool. False when the pool is full (the
    /// caller deletes it).
    pub(crate) fn add_free(&self, path: PathBuf) -> bool {
        let Ok(mut free) = self.free.lock() else {
            return false;
        };
        if free.len() >= free_pool_bound(self.shards) {
            return false;
        }
        free.push(path);
        true
    }

    /// A kept file to reuse, if any.
    pub(crate) fn take_free(&self) -> Option<PathBuf> {
        self.free.lock().ok()?.pop()
    }

    pub(crate) fn unregister(&self, id: SegmentId) {
        if let Ok(mut m) = self.segments.lock() {
            m.remove(&id);
        }
    }
}

/// Creates and preallocates a new segment file, writes and syncs its header
/// and syncs the directory. Blocking; called on segment rotation only. On any
/// failure the partial file is removed (so a full disk gets its space back).
pub(crate) fn create_segment(
    dir: &Path,
    id: SegmentId,
    segment_bytes: u64,
) -> Result<(File, PathBuf), SpoolError> {
    let path = dir.join(file_name(id));
    let file = create_reserved(&path, segment_bytes, "create segment")?;
    let headed = write_header(&file, id, UseKey::FIRST, segment_bytes).and_then(|()| sync_dir(dir));
    or_remove(&path, headed)?;
    Ok((file, path))
}

/// Creates `path` (new, mode 0600) and reserves `segment_bytes` for it with
/// `fallocate` (never sparse). On failure the file is removed.
fn create_reserved(
    path: &Path,
    segment_bytes: u64,
    what: &'static str,
) -> Result<File, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SpoolError::io(what, &e))?;
    let reserved = libc::off_t::try_from(segment_bytes)
        .map_err(|_| SpoolError::TooLarge)
        .and_then(|len| {
            // SAFETY: fallocate on a file descriptor we own, with no pointers passed.
            let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
            if rc == 0 {
                Ok(())
            } else {
                Err(SpoolError::io(
                    "fallocate",
                    &std::io::Error::last_os_error(),
                ))
            }
        });
    or_remove(path, reserved)?;
    Ok(file)
}

/// Writes segment `id`'s header at the start of `file`, as a whole first
/// page (the rest zeros, which a new file holds anyway) so that no block is
/// read back, and syncs the file. In a recycled file this also clears the
/// first page of leftovers (see `scan::segment_key`).
fn write_header(
    file: &File,
    id: SegmentId,
    key: UseKey,
    segment_bytes: u64,
) -> Result<(), SpoolError> {
    let header = SegmentHeader { id, key }.encode();
    let mut page = header.to_vec();
    let len = usize::try_from(PAGE_BYTES.min(segment_bytes)).unwrap_or(page.len());
    page.resize(len.max(page.len()), 0);
    file.write_all_at(&page, 0)
        .map_err(|e| SpoolError::io("write segment header", &e))?;
    if key.generation != 0 {
        // The copy a damaged header is read back from (the salt must not be lost).
        file.write_all_at(&header, record::trailer_offset(segment_bytes))
            .map_err(|e| SpoolError::io("write segment header", &e))?;
    }
    file.sync_all()
        .map_err(|e| SpoolError::io("fsync new segment", &e))
}

/// `result`, after removing `path` if it is an error: a file whose creation
/// failed half way gives its space back.
fn or_remove<T>(path: &Path, result: Result<T, SpoolError>) -> Result<T, SpoolError> {
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Zeros written per call while preparing a segment.
const PREPARE_CHUNK_BYTES: usize = 1 << 20;

/// Name of segment `id` while it is being prepared (one name per segment,
/// so a preparation never touches another's file); recovery deletes
/// leftovers.
pub(crate) fn prepared_file_name(id: SegmentId) -> String {
    format!("prep-shard-{}-{}.tmp", id.shard, id.number)
}

/// Whether `name` is a leftover of [`prepare_segment`].
pub(crate) fn is_prepared_file_name(name: &str) -> bool {
    name.starts_with("prep-shard-") && name.ends_with(".tmp")
}

/// A segment file allocated (and, if asked, written full of zeros and
/// synced), not yet a segment.
#[derive(Debug)]
pub(crate) struct PreparedSegment {
    file: File,
    path: PathBuf,
    bytes: u64,
    /// A first use for a new file; for a recycled one, one generation more
    /// than its last use and a new salt.
    pub(crate) key: UseKey,
}

/// Makes segment `id`'s file ahead of need: reserve the space and, with
/// `zeros`, write it full of zeros (so later overwrites change no extent
/// metadata and their fdatasyncs are cheap, see [`super::ZeroFill`]) and
/// sync. Blocking; runs on a helper thread. Zeros (written or not) read as
/// the end of the records, so the file is valid as it stands.
pub(crate) fn prepare_segment(
    dir: &Path,
    id: SegmentId,
    segment_bytes: u64,
    zeros: bool,
) -> Result<PreparedSegment, SpoolError> {
    let path = dir.join(prepared_file_name(id));
    let _ = std::fs::remove_file(&path);
    let file = create_reserved(&path, segment_bytes, "create prepared segment")?;
    if zeros {
        or_remove(&path, zero_fill(&file, &path, segment_bytes))?;
    }
    Ok(PreparedSegment {
        file,
        path,
        bytes: segment_bytes,
        key: UseKey::FIRST,
    })
}

/// Makes segment `id`'s file from `free`, a file of a finished segment kept
/// by [`SpoolShared::add_free`]: renamed to the preparation name, its
/// generation one more than its header's. Its blocks are written, so nothing
/// is allocated or zero-filled. `None`, with the file removed, when it is
/// not a whole segment of `segment_bytes` with a valid header, or has used
/// up its generations.
pub(crate) fn recycle_segment(
    dir: &Path,
    id: SegmentId,
    segment_bytes: u64,
    free: &Path,
) -> Option<PreparedSegment> {
    let path = dir.join(prepared_file_name(id));
    let _ = std::fs::remove_file(&path);
    let reused = std::fs::rename(free, &path).ok().and_then(|()| {
        let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
        if file.metadata().ok()?.len() != segment_bytes {
            return None;
        }
        let mut header = [0u8; record::SEGMENT_HEADER_BYTES];
        file.read_exact_at(&mut header, 0).ok()?;
        let generation = SegmentHeader::decode(&header)
            .ok()?
            .key
            .generation
            .checked_add(1)?;
        // Any salt but 0 (a first use's): a leftover record fails its CRC
        // unless the salts collide (2^-32 per record).
        let salt = loop {
            let s: u32 = rand::random();
            if s != 0 {
                break s;
            }
        };
        Some(PreparedSegment {
            file,
            path: path.clone(),
            bytes: segment_bytes,
            key: UseKey { generation, salt },
        })
    });
    if reused.is_none() {
        let _ = std::fs::remove_file(free);
        let _ = std::fs::remove_file(&path);
    }
    reused
}

/// Name of a finished segment's file kept for reuse (`free-3-0000000012.free`:
/// the segment it was); recovery keeps it as well, and numbers the shard's
/// next segments above it so that no later free file takes its name.
pub(crate) fn free_file_name(id: SegmentId) -> String {
    format!("free-{}-{:010}.free", id.shard, id.number)
}

/// Renames segment `id`'s file at `path` to its [`free_file_name`] in `dir`,
/// never over an existing file (recovery numbers segments above free files,
/// so that is only a safety net). The new path, or `None` when it was not
/// renamed. The caller syncs the directory.
pub(crate) fn rename_to_free(dir: &Path, id: SegmentId, path: &Path) -> Option<PathBuf> {
    let free = dir.join(free_file_name(id));
    (!free.exists() && std::fs::rename(path, &free).is_ok()).then_some(free)
}

/// The inverse of [`free_file_name`]; `None` for any other file.
pub(crate) fn parse_free_file_name(name: &str) -> Option<SegmentId> {
    parse_id_between(name, "free-", ".free")
}

/// Finished segment files kept for reuse, per shard of the spool.
pub const FREE_SEGMENTS_PER_SHARD: usize = 2;

/// How many finished segment files a spool of `shards` shards keeps.
pub(crate) fn free_pool_bound(shards: u16) -> usize {
    FREE_SEGMENTS_PER_SHARD * usize::from(shards)
}

/// Writes `segment_bytes` of zeros over `file` (at `path`) and syncs its data.
///
/// The whole-page part goes through a second descriptor opened `O_DIRECT`:
/// the zeros go from one aligned buffer to the disk without passing through
/// the page cache, which would cost a copy and a write-back per page (for
/// 100 KB messages, zero-filling through the page cache took about a fifth
/// of the end-to-end rate). A file system without `O_DIRECT` gets buffered
/// writes. The commit path never reads these blocks back: its writes cover
/// whole pages ([`PAGE_BYTES`]).
fn zero_fill(file: &File, path: &Path, segment_bytes: u64) -> Result<(), SpoolError> {
    // One chunk of zeros at a page-aligned address inside a slightly larger buffer.
    let page = PAGE_BYTES as usize;
    let buf = vec![0u8; PREPARE_CHUNK_BYTES + page];
    // (`min`: keeps the slice in bounds should `align_offset` give up; an
    // unaligned buffer then only makes O_DIRECT fail with EINVAL, handled below.)
    let start = buf.as_ptr().align_offset(page).min(page);
    let zeros = &buf[start..start + PREPARE_CHUNK_BYTES];
    let chunk = |at: u64, end: u64| {
        usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(PREPARE_CHUNK_BYTES)
    };
    let direct_end = segment_bytes - segment_bytes % PAGE_BYTES;
    let mut at = 0u64;
    if let Ok(direct) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        while at < direct_end {
            let n = chunk(at, direct_end);
            match direct.write_all_at(&zeros[..n], at) {
                Ok(()) => at += n as u64,
                // EINVAL: this file system takes no O_DIRECT writes after all.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(SpoolError::io("zero prepared segment", &e)),
            }
        }
    }
    while at < segment_bytes {
        let n = chunk(at, segment_bytes);
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| SpoolError::io("zero prepared segment", &e))?;
        at += n as u64;
    }
    file.sync_data()
        .map_err(|e| SpoolError::io("fsync prepared segment", &e))
}

/// The page size writes are rounded to, so that the kernel never reads a
/// block back to merge a partial page (4 KiB covers every common page and
/// logical block size).
pub(crate) const PAGE_BYTES: u64 = 4096;

/// Turns a prepared file into segment `id`: header and fsync while it still
/// has its temporary name (so a `.seg` file never lacks its header), then
/// rename and directory fsync. On failure the file is removed.
pub(crate) fn install_prepared(
    dir: &Path,
    id: SegmentId,
    prepared: PreparedSegment,
) -> Result<(File, PathBuf), SpoolError> {
    let PreparedSegment {
        file,
        path: tmp,
        bytes,
        key,
    } = prepared;
    let path = dir.join(file_name(id));
    or_remove(&tmp, write_header(&file, id, key, bytes))?;
    let renamed =
        std::fs::rename(&tmp, &path).map_err(|e| SpoolError::io("rename prepared segment", &e));
    or_remove(&tmp, renamed)?;
    or_remove(&path, sync_dir(dir))?;
    Ok((file, path))
}

/// fsync the spool directory so created or removed entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync spool directory", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prepared file is all zeros and exactly `segment_bytes` long, also
    /// when that is not a whole number of pages (the tail is written through
    /// the page cache) or not even one page.
    #[test]
    fn prepared_segment_is_zeros_of_the_requested_length() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [3 * PREPARE_CHUNK_BYTES as u64 + 4096 + 100, 64 * 1024, 1000] {
            let id = SegmentId {
                shard: 7,
                number: 1,
            };
            let p = prepare_segment(dir.path(), id, bytes, true).unwrap();
            let data = std::fs::read(&p.path).unwrap();
            assert_eq!(data.len() as u64, bytes);
            assert!(data.iter().all(|&b| b == 0), "non-zero byte in {bytes}");
            let (file, path) = install_prepared(dir.path(), id, p).unwrap();
            drop(file);
            let data = std::fs::read(&path).unwrap();
            assert_eq!(data.len() as u64, bytes);
            let header = &data[..record::SEGMENT_HEADER_BYTES];
            assert_eq!(&header[..8], b"SPATESG1");
            assert!(data[record::SEGMENT_HEADER_BYTES..].iter().all(|&b| b == 0));
            std::fs::remove_file(path).unwrap();
        }
    }
}
