//! Walking the records of one segment's bytes: end-of-data detection, torn
//! tails and resynchronisation after mid-segment corruption.
//!
//! Shared by recovery (which then truncates torn tails) and the read-only
//! `spate-spool` inspector. Pure: it looks at a byte slice and reports.
//!
//! # Rules
//! - Records are read from [`SEGMENT_HEADER_BYTES`] on. An all-zero record
//!   header is the end of the written data (segments are preallocated with
//!   zeros) unless a valid record follows later, in which case the zeros are a
//!   corrupt region.
//! - A record that fails to decode (bad magic, length past the end, CRC
//!   mismatch) starts a bad region. We search forward in 8-byte steps for the
//!   next record whose magic, length and CRC are all valid. If one is found,
//!   the bytes in between are reported as **corruption** (segment, offset,
//!   length) and scanning continues there. If none is found, the bad region is
//!   a **torn tail**: an append interrupted by a crash (or, for the inspector
//!   beside a running server, an append in progress). Nothing after the valid
//!   end was ever acknowledged, because a commit covers only a contiguous
//!   prefix of the segment.
//! - In a recycled file (generation 1 and up, see `record.rs`) the bytes after
//!   the end of data are leftovers of the file's earlier uses, not zeros: a
//!   valid record of another generation is the end of the data, and so is a
//!   bad region followed by no record of this generation. Such a tail is not
//!   reported: a torn append cannot be told from the leftovers, and nothing
//!   in either was acknowledged.
//! - Corruption that happens to contain a full record with a valid CRC
//!   (e.g. a message whose body embeds a spool record) can make resync land
//!   inside that body; CRC32C makes an accidental match negligible.

use super::record::{
    RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC, RawRecord, RecordError,
    SEGMENT_HEADER_BYTES, SegmentHeader, decode_raw, decode_verified, is_zero_header,
};
use super::segment::PAGE_BYTES;

/// A region between valid records that failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub offset: usize,
    pub len: usize,
    pub error: RecordError,
}

/// What a scan found besides the valid records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// End of the last valid record (where an append would go).
    pub valid_end: usize,
    /// Mid-segment bad regions, each followed by a valid record.
    pub corrupt: Vec<Corruption>,
    /// Offset and cause of non-zero bytes after the last valid record.
    pub torn_tail: Option<(usize, RecordError)>,
    pub records: u64,
    /// The generation of the segment's file (from its header).
    pub generation: u16,
}

/// Calls `visit(offset, record)` for every valid record after the segment
/// header, in order, and reports the rest.
pub fn scan_records<'a>(
    bytes: &'a [u8],
    mut visit: impl FnMut(usize, RawRecord<'a>),
) -> ScanReport {
    let generation = segment_generation(bytes);
    let mut report = ScanReport {
        valid_end: SEGMENT_HEADER_BYTES.min(bytes.len()),
        generation,
        ..Default::default()
    };
    let mut pos = SEGMENT_HEADER_BYTES;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < RECORD_HEADER_BYTES && rest.iter().all(|&b| b == 0) {
            break;
        }
        let error = if is_zero_header(rest) && rest.len() >= RECORD_HEADER_BYTES {
            // The usual end of data: only preallocated zeros follow (checked
            // in one vectorised pass before the slower resync search).
            if rest.iter().all(|&b| b == 0) {
                break;
            }
            None
        } else {
            match decode_raw(rest) {
                // A leftover of an earlier use of the file: the end of data.
                Ok(raw) if raw.generation != generation => break,
                Ok(raw) => {
                    visit(pos, raw);
                    report.records += 1;
                    pos += raw.stored_len;
                    report.valid_end = pos.min(bytes.len());
                    continue;
                }
                Err(e) => Some(e),
            }
        };
        let next = resync(bytes, pos + RECORD_ALIGN_BYTES).filter(|&next| {
            decode_raw(&bytes[next..]).is_ok_and(|raw| raw.generation == generation)
        });
        match next {
            Some(next) => {
                report.corrupt.push(Corruption {
                    offset: pos,
                    len: next - pos,
                    error: error
                        .unwrap_or(RecordError::Malformed("zeroed region before valid records")),
                });
                pos = next;
            }
            None if generation != 0 => break,
            None => {
                if let Some(e) = error {
                    report.torn_tail = Some((pos, e));
                } else if rest.iter().any(|&b| b != 0) {
                    report.torn_tail = Some((
                        pos,
                        RecordError::Malformed("stray bytes after the end of data"),
                    ));
                }
                break;
            }
        }
    }
    report
}

/// Calls `visit(offset, record)` for every record of `kind` in bytes this
/// process wrote or recovery already scanned (a segment up to its used
/// length), checking the CRC of those records only and skipping the others
/// by their framed length, without reading their payload. At 100 KB
/// messages, reclamation's search for state records spent most of its time
/// re-checking message CRCs. Returns false at anything a full
/// [`scan_records`] would have to resolve (bad framing, a bad CRC, bytes
/// after the last record); `visit` has then seen nothing.
pub fn walk_written<'a>(
    bytes: &'a [u8],
    kind: u8,
    mut visit: impl FnMut(usize, RawRecord<'a>),
) -> bool {
    let mut found = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Ok(framed) = decode_verified(rest) else {
            return false;
        };
        if framed.kind == kind {
            match decode_raw(rest) {
                Ok(raw) => found.push((pos, raw)),
                Err(_) => return false,
            }
        }
        pos += framed.stored_len;
    }
    for (pos, raw) in found {
        visit(pos, raw);
    }
    true
}

/// The generation of the segment whose bytes these are: its header's, or
/// with a damaged header that of a valid record in the first page (which
/// installing a segment rewrites, so no leftover lies there), else 0.
fn segment_generation(bytes: &[u8]) -> u16 {
    if let Ok(h) = SegmentHeader::decode(bytes) {
        return h.generation;
    }
    (SEGMENT_HEADER_BYTES..bytes.len().min(PAGE_BYTES as usize))
        .step_by(RECORD_ALIGN_BYTES)
        .find_map(|p| decode_raw(&bytes[p..]).ok())
        .map_or(0, |raw| raw.generation)
}

/// The next aligned offset at or after `from` holding a fully valid record.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut p = from.next_multiple_of(RECORD_ALIGN_BYTES);
    while p + RECORD_HEADER_BYTES <= bytes.len() {
        if bytes[p..p + 4] == magic && decode_raw(&bytes[p..]).is_ok() {
            return Some(p);
        }
        p += RECORD_ALIGN_BYTES;
    }
    None
}
