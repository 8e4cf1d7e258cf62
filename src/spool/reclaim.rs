//! Reclamation: deleting this shard's sealed segments once nothing in them is
//! needed any more (or keeping the file for a later segment: see
//! `record.rs`, "Recycled files").
//!
//! A sealed segment T is deleted when no message whose newest copy lives in T
//! has a live recipient. Its state records may still matter, though: a
//! "delivered" record for one recipient of a message in another segment S
//! that still exists must survive, or that recipient would be delivered again
//! after a restart. So before deleting T we **carry forward** the latest state
//! record per (message, recipient, home) whose home segment still exists, byte for
//! byte (same sequence number, so "last state wins" is unaffected), into the
//! current segment, wait for that commit, then unlink T and fsync the
//! directory. Records whose home is gone are dropped. Two finished segments
//! referring to each other converge: whichever goes first carries the other's
//! records, which are dropped once the other is gone.
//!
//! Compaction (moving a long-deferred message out of a mostly dead segment)
//! is done by the message's owner through `Spool::rewrite_message`, because
//! only the owner knows its recipients' current states.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::record::{KIND_STATE, RawRecord, decode_state};
use super::scan::{scan_records_of, walk_written};
use super::segment::{self, SegmentShared, SpoolShared, sync_dir};
use super::{SegmentId, Spool, SpoolError};

/// What one [`Spool::reclaim`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReclaimReport {
    pub deleted: Vec<SegmentId>,
    pub carried_records: u64,
    pub freed_bytes: u64,
}

impl Spool {
    /// Deletes every sealed segment of this shard with no live message,
    /// carrying forward state records that still matter. Call periodically
    /// from the shard's housekeeping (spate: every 100 ms, so that finished
    /// segments reach the pool of free files one by one, as preparations
    /// take them).
    pub async fn reclaim(&self) -> Result<ReclaimReport, SpoolError> {
        let candidates: Vec<Arc<SegmentShared>> = {
            let st = self.inner.st.borrow();
            st.own_sealed
                .iter()
                .filter(|s| s.live_messages() == 0)
                .cloned()
                .collect()
        };
        let mut report = ReclaimReport::default();
        for seg in candidates {
            let used_before = seg.used_bytes();
            let (carry, n) = carry_forward(&self.inner.shared, &seg);
            self.append_raw(&carry).await?;
            report.carried_records += n;
            // A batch to this segment may still have been in flight when it
            // was sealed (a later write failed); commits resolve in order, so
            // it has resolved by now. If it added messages or records, the
            // segment is not finished after all (the carried records are
            // harmless duplicates: same sequence numbers).
            if seg.live_messages() != 0 || seg.used_bytes() != used_before {
                continue;
            }
            // The file goes (unlinked, or renamed to a free file to be
            // reused), durably, before the segment stops existing for the
            // other shards' carry-forward. Both block for a device round
            // trip: on a helper thread, not the shard's I/O loop.
            let shared = self.inner.shared.clone();
            let keep = seg.reusable(shared.options.segment_bytes) && shared.free_has_room();
            let (id, path) = (seg.id, seg.path.clone());
            let free = compio::runtime::spawn_blocking(move || {
                let dir = &shared.options.path;
                let renamed = keep
                    .then(|| segment::rename_to_free(dir, id, &path))
                    .flatten();
                if renamed.is_none() {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(SpoolError::io("delete segment", &e)),
                    }
                }
                sync_dir(dir).map(|()| renamed)
            })
            .await
            .unwrap_or_else(|_| Err(SpoolError::Unusable("segment deletion panicked".into())))?;
            seg.deleted.store(true, Ordering::Release);
            self.inner.shared.unregister(seg.id);
            self.inner
                .st
                .borrow_mut()
                .own_sealed
                .retain(|s| !Arc::ptr_eq(s, &seg));
            report.freed_bytes += seg.used_bytes();
            report.deleted.push(seg.id);
            // The renamed file is reused only when nothing else holds the
            // segment (a message handle could still read its map); otherwise
            // it is unlinked after all. Usually this is the last handle:
            // dropping it unmaps the segment (and for an unlinked file frees
            // its page cache and blocks: tens of milliseconds for a full
            // segment), so on a helper thread, awaited so that nothing of
            // this pass outlives it.
            let only = Arc::try_unwrap(seg);
            let sole = only.is_ok();
            let _ = compio::runtime::spawn_blocking(move || drop(only)).await;
            if let Some(free) = free
                && !(sole && self.inner.shared.add_free(free.clone()))
            {
                let _ = compio::runtime::spawn_blocking(move || std::fs::remove_file(free)).await;
            }
        }
        Ok(report)
    }
}

/// The records of `seg` to carry forward, concatenated in file order.
fn carry_forward(shared: &SpoolShared, seg: &SegmentShared) -> (Vec<u8>, u64) {
    let bytes = seg.bytes();
    let mut exists: HashMap<SegmentId, bool> = HashMap::new();
    // Keyed by home too: tombstones for two older copies of one message (in
    // different segments) must both survive while their segments exist.
    let mut latest: HashMap<(u64, u32, SegmentId), (u64, usize, usize)> = HashMap::new();
    let mut state_record = |off: usize, raw: RawRecord<'_>| {
        if raw.kind != KIND_STATE {
            return;
        }
        let Ok(rec) = decode_state(raw.payload) else {
            return;
        };
        if rec.home == seg.id {
            return;
        }
        let alive = *exists
            .entry(rec.home)
            .or_insert_with(|| shared.segment_exists(rec.home));
        if !alive {
            return;
        }
        let e = latest
            .entry((rec.message.0, rec.recipient, rec.home))
            .or_insert((raw.seq, off, raw.stored_len));
        if raw.seq >= e.0 {
            *e = (raw.seq, off, raw.stored_len);
        }
    };
    // The segment is this shard's own: written by this process or scanned
    // clean at recovery. One with corrupt regions (where a damaged length
    // could mislead the walk), or anything unexpected, gets the full scan.
    if seg.had_corruption.load(Ordering::Relaxed)
        || !walk_written(bytes, seg.key, KIND_STATE, &mut state_record)
    {
        scan_records_of(bytes, seg.key, &mut state_record);
    }
    let mut keep: Vec<(usize, usize)> = latest
        .into_values()
        .map(|(_, off, len)| (off, len))
        .collect();
    keep.sort_unstable();
    let mut out = Vec::new();
    for (off, len) in &keep {
        if let Some(b) = bytes.get(*off..*off + *len) {
            out.extend_from_slice(b);
        }
    }
    (out, keep.len() as u64)
}
