//! A read-only inventory of a spool directory for `spate-spool`.
//!
//! Files are opened read-only and read with plain reads (no maps: a segment
//! truncated by a starting server must not SIGBUS us), never locked or
//! modified, so this is safe beside a running server. A segment being
//! appended concurrently may show a torn tail (an append in flight): that is
//! reported as a tail, not as corruption; only a bad region followed by a
//! valid record is corruption (see `scan.rs`).

use std::path::Path;

use super::record::{self, RecipientState, SegmentHeader};
use super::recovery::{Collector, merge};
use super::scan::Corruption;
use super::segment;
use super::{MessageId, SegmentId};

/// One segment file.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub id: SegmentId,
    pub file_bytes: u64,
    /// End of the last valid record.
    pub valid_end: u64,
    pub records: u64,
    /// The file's generation: how many segments used it before this one.
    pub generation: u16,
    pub live_messages: u64,
    pub live_bytes: u64,
    pub header_error: Option<String>,
    pub corrupt: Vec<Corruption>,
    /// Offset and cause of bytes after the last valid record.
    pub torn_tail: Option<(u64, String)>,
}

/// One recipient of a message, with its merged state.
#[derive(Debug, Clone)]
pub struct RecipientInfo {
    pub forward_path: String,
    pub orcpt: String,
    pub notify: u8,
    pub state: RecipientState,
}

/// One message (its newest copy), with merged recipient states.
#[derive(Debug, Clone)]
pub struct MessageInfo {
    pub id: MessageId,
    pub segment: SegmentId,
    pub record_offset: u64,
    pub content_offset: u64,
    pub content_len: u64,
    pub received_unix_ms: u64,
    pub reverse_path: String,
    pub envid: String,
    pub vmta_or_pool: String,
    pub vmta: String,
    pub job_id: String,
    pub recipients: Vec<RecipientInfo>,
    /// Finished because a newer copy was deleted (see recovery's merge rules).
    pub superseded: bool,
}

impl MessageInfo {
    pub fn is_live(&self) -> bool {
        !self.superseded && self.recipients.iter().any(|r| !r.state.is_final())
    }
}

/// Everything `spate-spool` shows.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub segments: Vec<SegmentInfo>,
    pub messages: Vec<MessageInfo>,
    pub orphan_states: u64,
    /// Files that looked like segments but could not be read, and why.
    pub unreadable: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Envelope {
    received_unix_ms: u64,
    reverse_path: String,
    envid: String,
    vmta_or_pool: String,
    vmta: String,
    job_id: String,
    recipients: Vec<(String, String, u8)>,
}

/// Reads every segment in `dir` (read-only) and merges their records.
pub fn inventory(dir: &Path) -> std::io::Result<Inventory> {
    let mut inv = Inventory::default();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(segment::parse_file_name)
        {
            files.push((id, entry.path()));
        }
    }
    files.sort();
    let mut collector = Collector::default();
    // Envelope per (segment index, record offset), filled while each segment is in memory.
    let mut envelopes: std::collections::HashMap<(u32, u64), Envelope> =
        std::collections::HashMap::new();
    for (id, path) in files {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                inv.unreadable.push((segment::file_name(id), e.to_string()));
                continue;
            }
        };
        let index = inv.segments.len() as u32;
        let header_error = match SegmentHeader::decode(&bytes) {
            Ok(h) if h.id == id => None,
            Ok(h) => Some(format!("header names {}", h.id)),
            Err(e) => Some(e.to_string()),
        };
        let first_copy = collector.copies.len();
        let scan = collector.collect(index, &bytes);
        for c in &collector.copies[first_copy..] {
            let env = bytes
                .get(c.record_offset as usize..)
                .and_then(|b| record::decode_raw_salted(b, scan.key.salt).ok())
                .and_then(|raw| record::decode_message(raw.payload).ok())
                .map(|m| Envelope {
                    received_unix_ms: m.received_unix_ms,
                    reverse_path: m.reverse_path.to_owned(),
                    envid: m.envid.to_owned(),
                    vmta_or_pool: m.vmta_or_pool.to_owned(),
                    vmta: m.vmta.to_owned(),
                    job_id: m.job_id.to_owned(),
                    recipients: m
                        .recipients()
                        .map(|r| (r.forward_path.to_owned(), r.orcpt.to_owned(), r.notify))
                        .collect(),
                })
                .unwrap_or_default();
            envelopes.insert((index, c.record_offset), env);
        }
        inv.segments.push(SegmentInfo {
            id,
            file_bytes: bytes.len() as u64,
            valid_end: scan.valid_end as u64,
            records: scan.records,
            generation: scan.key.generation,
            live_messages: 0,
            live_bytes: 0,
            header_error,
            corrupt: scan.corrupt,
            torn_tail: scan.torn_tail.map(|(o, e)| (o as u64, e.to_string())),
        });
    }
    let mut messages = Vec::new();
    let segments = &mut inv.segments;
    inv.orphan_states = merge(collector, |m| {
        let c = m.copy;
        let env = envelopes
            .remove(&(c.seg, c.record_offset))
            .unwrap_or_default();
        let recipients: Vec<RecipientInfo> = env
            .recipients
            .into_iter()
            .zip(m.states.iter())
            .map(|((forward_path, orcpt, notify), state)| RecipientInfo {
                forward_path,
                orcpt,
                notify,
                state: *state,
            })
            .collect();
        let Some(seg) = segments.get_mut(c.seg as usize) else {
            return;
        };
        let info = MessageInfo {
            id: MessageId(c.id),
            segment: seg.id,
            record_offset: c.record_offset,
            content_offset: c.content_offset,
            content_len: c.content_len,
            received_unix_ms: env.received_unix_ms,
            reverse_path: env.reverse_path,
            envid: env.envid,
            vmta_or_pool: env.vmta_or_pool,
            vmta: env.vmta,
            job_id: env.job_id,
            recipients,
            superseded: m.superseded,
        };
        if info.is_live() {
            seg.live_messages += 1;
            seg.live_bytes += u64::from(c.stored_len);
        }
        messages.push(info);
    });
    inv.messages = messages;
    Ok(inv)
}

/// Reads a message's content (headers and body) with a positioned read.
pub fn read_content(dir: &Path, msg: &MessageInfo) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(dir.join(segment::file_name(msg.segment)))?;
    let len =
        usize::try_from(msg.content_len).map_err(|_| std::io::Error::other("content too large"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, msg.content_offset)?;
    Ok(buf)
}
