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
//! - A record is valid for the segment's use ([`UseKey`], see `record.rs`):
//!   its CRC starts from the use's salt and it carries the use's generation.
//!   In a recycled file the bytes after the end of data are leftovers of the
//!   file's earlier uses, not zeros, and none of them is valid for this use;
//!   the search forward for the next valid record therefore finds none, and
//!   that is the end of the data. Such a tail is reported as torn only when
//!   its first page is not zeros up to the page boundary (each commit is
//!   zero-padded to a page boundary): leftovers cannot be told from a torn
//!   append, and nothing in either was acknowledged.
//! - Corruption that happens to contain a full record with a valid CRC
//!   (e.g. a message whose body embeds a spool record) can make resync land
//!   inside that body; CRC32C makes an accidental match negligible.

use super::record::{
    RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC, RawRecord, RecordError,
    SEGMENT_HEADER_BYTES, SegmentHeader, UseKey, decode_raw_salted, decode_verified,
    is_zero_header, trailer_offset,
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
    /// The use of the segment's file the records belong to (from its header,
    /// else from its trailer copy: [`segment_key`]).
    pub key: UseKey,
}

/// Calls `visit(offset, record)` for every valid record after the segment
/// header, in order, and reports the rest. `bytes` is the whole file (the
/// use is read from its header or trailer).
pub fn scan_records<'a>(bytes: &'a [u8], visit: impl FnMut(usize, RawRecord<'a>)) -> ScanReport {
    scan_records_of(bytes, segment_key(bytes), visit)
}

/// [`scan_records`] for the records of use `key` (`bytes` may stop before
/// the trailer).
pub fn scan_records_of<'a>(
    bytes: &'a [u8],
    key: UseKey,
    mut visit: impl FnMut(usize, RawRecord<'a>),
) -> ScanReport {
    let mut report = ScanReport {
        valid_end: SEGMENT_HEADER_BYTES.min(bytes.len()),
        key,
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
            match decode_raw_salted(rest, key.salt) {
                Ok(raw) if raw.generation != key.generation => {
                    Some(RecordError::Malformed("record of another generation"))
                }
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
        match resync(bytes, pos + RECORD_ALIGN_BYTES, key) {
            Some(next) => {
                report.corrupt.push(Corruption {
                    offset: pos,
                    len: next - pos,
                    error: error
                        .unwrap_or(RecordError::Malformed("zeroed region before valid records")),
                });
                pos = next;
            }
            None if key.generation != 0 => {
                // Leftovers follow this use's records; only bytes before the
                // page boundary (zero padding of the last commit) say torn.
                let page_end = pos.next_multiple_of(PAGE_BYTES as usize).min(bytes.len());
                if bytes[pos..page_end].iter().any(|&b| b != 0) {
                    let e = error
                        .unwrap_or(RecordError::Malformed("stray bytes after the end of data"));
                    report.torn_tail = Some((pos, e));
                }
                break;
            }
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
/// length; its records are of use `key`), checking the CRC of those records
/// only and skipping the others by their framed length, without reading
/// their payload. At 100 KB
/// messages, reclamation's search for state records spent most of its time
/// re-checking message CRCs. Returns false at anything a full
/// [`scan_records`] would have to resolve (bad framing, a bad CRC, bytes
/// after the last record); `visit` has then seen nothing.
pub fn walk_written<'a>(
    bytes: &'a [u8],
    key: UseKey,
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
            match decode_raw_salted(rest, key.salt) {
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

/// The use of the segment file whose bytes these are: its header's, or with
/// a damaged header its trailer copy's (version 2 files have one), else a
/// first use (a version 1 file, whose records have salt 0).
pub fn segment_key(bytes: &[u8]) -> UseKey {
    if let Ok(h) = SegmentHeader::decode(bytes) {
        return h.key;
    }
    let trailer = trailer_offset(bytes.len() as u64) as usize;
    match bytes.get(trailer..).map(SegmentHeader::decode) {
        Some(Ok(h)) if trailer >= SEGMENT_HEADER_BYTES && h.key.generation != 0 => h.key,
        _ => UseKey::FIRST,
    }
}

/// The next aligned offset at or after `from` holding a record valid for use `key`.
fn resync(bytes: &[u8], from: usize, key: UseKey) -> Option<usize> {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut p = from.next_multiple_of(RECORD_ALIGN_BYTES);
    while p + RECORD_HEADER_BYTES <= bytes.len() {
        if bytes[p..p + 4] == magic
            && decode_raw_salted(&bytes[p..], key.salt)
                .is_ok_and(|raw| raw.generation == key.generation)
        {
            return Some(p);
        }
        p += RECORD_ALIGN_BYTES;
    }
    None
}
