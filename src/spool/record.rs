//! The on-disk format of spool segments: the segment header and the record
//! codec (message records and per-recipient state records).
//!
//! Everything here is pure: bytes in, values out. Every decoder treats its
//! input as untrusted (disk corruption, a fuzzer) and answers with a
//! [`RecordError`], never a panic. Scanning a whole segment (resync, torn
//! tails) lives in `scan.rs`; files and mappings in `segment.rs`.
//!
//! # Layout (all integers little-endian)
//!
//! Segment header, 32 bytes at offset 0:
//! `magic "SPATESG1" | version u16 | generation u16 | shard u32 | number u64 | salt u32 | crc32c u32`
//! (the CRC covers bytes 0..28). Version 2 files (recycled, below) also hold
//! a copy of it in their last 32 bytes (8-aligned: [`trailer_offset`]).
//!
//! Record, starting at an 8-byte aligned offset:
//! `magic u32 | kind u8 | 0 u8 | generation u16 | payload_len u32 | crc32c u32 | seq u64 | payload | zero padding to 8`
//! The CRC covers header bytes 0..12 and 16..24 and the payload, so a flipped
//! bit anywhere in a record (kind, generation, length, sequence or payload)
//! is detected. It starts from the segment's salt (0 in version 1 files, so
//! there it is the plain CRC32C). The preallocated, never-written part of a
//! new segment file reads as zeros; an all-zero record header therefore
//! marks the end of the written data.
//!
//! # Recycled files: use keys
//!
//! A segment file whose messages are all finished may be used again for a
//! later segment instead of being deleted: its blocks are already written, so
//! the fdatasyncs into it need no extent conversion (about half the time of
//! those into a freshly allocated file on ext4), and nothing had to write
//! zeros over it first. Its old records stay behind the new ones, with
//! CRCs that were valid in their day. Each use of a file has a [`UseKey`]:
//! a generation, one more than the last (0 for a new file), and a random
//! salt (0 for a new file). The header carries both, every record carries
//! the generation, and every record's CRC starts from the salt. A leftover
//! therefore fails its CRC (its salt was another), and so does a record a
//! sender forged inside a message body (the salt is never shown), so the
//! search for the next record after the end of the data, which in a recycled
//! file always runs into leftovers, finds none of them. The generation
//! check is a second fence and what `spate-spool` shows. A file is not
//! reused past generation `u16::MAX`. Headers of generation 0 say version 1
//! (the format before recycling); recycled ones say version 2 and have the
//! trailer copy, so that a damaged header does not lose the salt.

use super::{MessageId, SegmentId};

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SPATESG1";
/// Bumped on any incompatible change of this file's layout. Version 2
/// segments are recycled files (generation 1 and up); a segment of
/// generation 0 is written as version 1, so that older readers still take it.
pub const FORMAT_VERSION: u16 = 2;
/// The version of a segment of generation 0.
pub const FORMAT_VERSION_FIRST_USE: u16 = 1;
/// Size of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// First 4 bytes of every record ("SPRK" read as little-endian u32).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SPRK");
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Records start on multiples of this, so resync after corruption can step by it.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// Bound on recipients in one message record (a listener caps far lower).
pub const RECORD_RECIPIENTS_MAX: usize = 100_000;
/// Bound on one string field (paths, ENVID, names, replies): they are
/// length-prefixed with a u16.
pub const RECORD_STRING_BYTES_MAX: usize = u16::MAX as usize;

const _: () = assert!(SEGMENT_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);
const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);

/// Record kinds.
pub const KIND_MESSAGE: u8 = 1;
/// A per-recipient state change.
pub const KIND_STATE: u8 = 2;

/// Why bytes could not be decoded. Used for disk contents: never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    BadVersion(u16),
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Why a record could not be encoded (our caller's input is out of bounds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("field {0} longer than {RECORD_STRING_BYTES_MAX} bytes")]
    FieldTooLong(&'static str),
    #[error("more than {RECORD_RECIPIENTS_MAX} recipients")]
    TooManyRecipients,
    #[error("no recipients")]
    NoRecipients,
    #[error("record payload exceeds 4 GiB")]
    TooLarge,
}

/// The header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: SegmentId,
    /// How many times the file was used before, and the salt of this use's
    /// record CRCs (see the module docs).
    pub key: UseKey,
}

/// One use of a segment file (see the module docs): records of this use
/// carry `generation` and have CRCs that start from `salt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UseKey {
    pub generation: u16,
    pub salt: u32,
}

impl UseKey {
    /// A new file's first use: the format of version 1.
    pub const FIRST: UseKey = UseKey {
        generation: 0,
        salt: 0,
    };
}

/// Where a version 2 file keeps the copy of its header: the last 32 bytes,
/// rounded down to a record boundary. Records of such a file end before it.
pub fn trailer_offset(file_len: u64) -> u64 {
    file_len.saturating_sub(SEGMENT_HEADER_BYTES as u64) / RECORD_ALIGN_BYTES as u64
        * RECORD_ALIGN_BYTES as u64
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        let version = if self.key.generation == 0 {
            FORMAT_VERSION_FIRST_USE
        } else {
            FORMAT_VERSION
        };
        out[8..10].copy_from_slice(&version.to_le_bytes());
        out[10..12].copy_from_slice(&self.key.generation.to_le_bytes());
        out[24..28].copy_from_slice(&self.key.salt.to_le_bytes());
        out[12..16].copy_from_slice(&u32::from(self.id.shard).to_le_bytes());
        out[16..24].copy_from_slice(&u64::from(self.id.number).to_le_bytes());
        let crc = crc32c::crc32c(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let h = bytes
            .get(..SEGMENT_HEADER_BYTES)
            .ok_or(RecordError::Truncated {
                needed: SEGMENT_HEADER_BYTES,
                available: bytes.len(),
            })?;
        if h[0..8] != SEGMENT_MAGIC {
            return Err(RecordError::BadMagic);
        }
        if crc32c::crc32c(&h[0..28]) != le_u32(&h[28..32]) {
            return Err(RecordError::BadChecksum);
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        let generation = u16::from_le_bytes([h[10], h[11]]);
        let salt = le_u32(&h[24..28]);
        match version {
            FORMAT_VERSION_FIRST_USE if generation != 0 || salt != 0 => {
                return Err(RecordError::Malformed(
                    "generation or salt in a version 1 header",
                ));
            }
            FORMAT_VERSION if generation == 0 => {
                return Err(RecordError::Malformed("generation 0 in a version 2 header"));
            }
            FORMAT_VERSION_FIRST_USE | FORMAT_VERSION => {}
            _ => return Err(RecordError::BadVersion(version)),
        }
        let shard =
            u16::try_from(le_u32(&h[12..16])).map_err(|_| RecordError::Malformed("shard"))?;
        let number = u32::try_from(le_u64(&h[16..24]))
            .map_err(|_| RecordError::Malformed("segment number"))?;
        Ok(SegmentHeader {
            id: SegmentId { shard, number },
            key: UseKey { generation, salt },
        })
    }
}

/// A record whose framing and checksum are valid; the payload is not yet parsed.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub kind: u8,
    /// The generation of the file's use it was written in.
    pub generation: u16,
    pub seq: u64,
    pub payload: &'a [u8],
    /// Bytes the record occupies including header and padding.
    pub stored_len: usize,
}

/// Bytes a record with this payload occupies, header and padding included.
pub fn stored_len(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN_BYTES)
}

/// True when these bytes are an all-zero record header (end of written data).
pub fn is_zero_header(bytes: &[u8]) -> bool {
    bytes.iter().take(RECORD_HEADER_BYTES).all(|&b| b == 0)
}

/// Decodes the framing of the record at the start of `bytes` and checks its
/// CRC, as a record of a version 1 file (salt 0).
pub fn decode_raw(bytes: &[u8]) -> Result<RawRecord<'_>, RecordError> {
    decode_raw_salted(bytes, 0)
}

/// [`decode_raw`] for a record of a use whose records' CRCs start from `salt`.
pub fn decode_raw_salted(bytes: &[u8], salt: u32) -> Result<RawRecord<'_>, RecordError> {
    let (h, raw) = frame(bytes)?;
    if record_crc(h, raw.payload, salt) != le_u32(&h[12..16]) {
        return Err(RecordError::BadChecksum);
    }
    if h[5] != 0 {
        return Err(RecordError::Malformed("reserved header byte"));
    }
    let total = RECORD_HEADER_BYTES + raw.payload.len();
    if bytes
        .get(total..raw.stored_len.min(bytes.len()))
        .is_some_and(|p| p.iter().any(|&b| b != 0))
    {
        return Err(RecordError::Malformed("non-zero padding"));
    }
    checked_kind(raw)
}

/// Decodes the framing of a record already verified by [`decode_raw`] (when
/// its segment was scanned at recovery, or because this process wrote it):
/// no CRC over the payload again. The delivery path reads a message's
/// envelope several times (enqueue, each transaction, each settlement), and
/// at 100 KB re-checking the CRC each time was ~6% of the CPU end to end.
pub fn decode_verified(bytes: &[u8]) -> Result<RawRecord<'_>, RecordError> {
    frame(bytes).and_then(|(_, raw)| checked_kind(raw))
}

/// The header and the record's extent (magic and length checked).
fn frame(bytes: &[u8]) -> Result<(&[u8], RawRecord<'_>), RecordError> {
    let h = bytes
        .get(..RECORD_HEADER_BYTES)
        .ok_or(RecordError::Truncated {
            needed: RECORD_HEADER_BYTES,
            available: bytes.len(),
        })?;
    if le_u32(&h[0..4]) != RECORD_MAGIC {
        return Err(RecordError::BadMagic);
    }
    let len = le_u32(&h[8..12]) as usize;
    let total = RECORD_HEADER_BYTES
        .checked_add(len)
        .ok_or(RecordError::Malformed("length"))?;
    let payload = bytes
        .get(RECORD_HEADER_BYTES..total)
        .ok_or(RecordError::Truncated {
            needed: total,
            available: bytes.len(),
        })?;
    let raw = RawRecord {
        kind: h[4],
        generation: u16::from_le_bytes([h[6], h[7]]),
        seq: le_u64(&h[16..24]),
        payload,
        stored_len: stored_len(len),
    };
    Ok((h, raw))
}

fn checked_kind(raw: RawRecord<'_>) -> Result<RawRecord<'_>, RecordError> {
    if raw.kind != KIND_MESSAGE && raw.kind != KIND_STATE {
        return Err(RecordError::BadKind(raw.kind));
    }
    Ok(raw)
}

/// RET parameter of MAIL FROM (RFC 3461).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ret {
    #[default]
    Unspecified,
    Full,
    Hdrs,
}

/// NOTIFY bits of RCPT TO (RFC 3461); 0 means "not specified".
pub const NOTIFY_SUCCESS: u8 = 1;
pub const NOTIFY_FAILURE: u8 = 2;
pub const NOTIFY_DELAY: u8 = 4;
pub const NOTIFY_NEVER: u8 = 8;

/// A flag in [`RecipientState::Deferred`]'s `attempts`: the recipient got
/// its delay notice (NOTIFY=DELAY), so a restart does not send another. The
/// attempt count is the other 31 bits ([`deferred_attempts`]).
pub const ATTEMPTS_DELAY_NOTIFIED: u32 = 1 << 31;

/// The attempt count and delay-notice flag packed in a deferred state's
/// `attempts`.
pub fn deferred_attempts(packed: u32) -> (u32, bool) {
    (
        packed & !ATTEMPTS_DELAY_NOTIFIED,
        packed & ATTEMPTS_DELAY_NOTIFIED != 0,
    )
}

/// Packs an attempt count and the delay-notice flag into a deferred state's
/// `attempts` (the inverse of [`deferred_attempts`]).
pub fn pack_deferred_attempts(attempts: u32, notified: bool) -> u32 {
    let flag = if notified { ATTEMPTS_DELAY_NOTIFIED } else { 0 };
    (attempts & !ATTEMPTS_DELAY_NOTIFIED) | flag
}

/// The state of one recipient. `Queued` and `Deferred` are live; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientState {
    Queued,
    Delivered,
    /// `category` is the delivery module's bounce category code, stored opaquely.
    Bounced {
        category: u8,
    },
    Deferred {
        attempts: u32,
        next_attempt_unix_s: u64,
    },
    Expired,
    AdminDeleted,
}

impl RecipientState {
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            RecipientState::Queued | RecipientState::Deferred { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            RecipientState::Queued => "queued",
            RecipientState::Delivered => "delivered",
            RecipientState::Bounced { .. } => "bounced",
            RecipientState::Deferred { .. } => "deferred",
            RecipientState::Expired => "expired",
            RecipientState::AdminDeleted => "admin-deleted",
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            RecipientState::Queued => out.push(0),
            RecipientState::Delivered => out.push(1),
            RecipientState::Bounced { category } => out.extend_from_slice(&[2, category]),
            RecipientState::Deferred {
                attempts,
                next_attempt_unix_s,
            } => {
                out.push(3);
                out.extend_from_slice(&attempts.to_le_bytes());
                out.extend_from_slice(&next_attempt_unix_s.to_le_bytes());
            }
            RecipientState::Expired => out.push(4),
            RecipientState::AdminDeleted => out.push(5),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        Ok(match r.u8()? {
            0 => RecipientState::Queued,
            1 => RecipientState::Delivered,
            2 => RecipientState::Bounced { category: r.u8()? },
            3 => RecipientState::Deferred {
                attempts: r.u32()?,
                next_attempt_unix_s: r.u64()?,
            },
            4 => RecipientState::Expired,
            5 => RecipientState::AdminDeleted,
            _ => return Err(RecordError::Malformed("recipient state")),
        })
    }
}

/// One recipient of a message being spooled.
#[derive(Debug, Clone, Copy)]
pub struct NewRecipient<'a> {
    pub forward_path: &'a str,
    /// ORCPT as received (`rfc822;user@example.com`), empty when absent.
    pub orcpt: &'a str,
    pub notify: u8,
}

/// The envelope and content of a message being spooled.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub received_unix_ms: u64,
    pub reverse_path: &'a str,
    pub recipients: &'a [NewRecipient<'a>],
    pub ret: Ret,
    pub envid: &'a str,
    /// The vMTA or pool name the message was submitted to.
    pub vmta_or_pool: &'a str,
    /// The vMTA chosen (for a pool: the member picked); retries keep it.
    pub vmta: &'a str,
    pub job_id: &'a str,
    /// Headers and body exactly as they will be sent.
    pub content: Content<'a>,
}

/// A message's content for [`encode_message`]: one slice, or pieces stored
/// back to back (the inbound path: the `Received:` field, then the message
/// without its control headers), so they are copied once, into the record.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    One(&'a [u8]),
    Pieces(&'a [&'a [u8]]),
}

impl Content<'_> {
    /// Total bytes.
    pub fn len(&self) -> usize {
        match self {
            Content::One(b) => b.len(),
            Content::Pieces(p) => p.iter().map(|b| b.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Content::One(b) => out.extend_from_slice(b),
            Content::Pieces(p) => p.iter().for_each(|b| out.extend_from_slice(b)),
        }
    }
}

/// Where the content sits inside an encoded message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedMessage {
    pub stored_len: usize,
    pub content_offset_in_record: usize,
    pub content_len: usize,
}

/// Appends a message record to `out`, for a first use of its segment.
/// `states` (one per recipient, with the sequence number each state was
/// decided at) is given when a message is rewritten (compaction or reroute);
/// a new message has every recipient `Queued` at the record's own `seq`.
pub fn encode_message(
    out: &mut Vec<u8>,
    seq: u64,
    id: MessageId,
    msg: &NewMessage<'_>,
    states: Option<&[(RecipientState, u64)]>,
) -> Result<EncodedMessage, EncodeError> {
    encode_message_for(out, UseKey::FIRST, seq, id, msg, states)
}

/// [`encode_message`] for use `key` of a segment: the record carries its
/// generation and its CRC starts from its salt, as [`stamp`] would make it.
pub fn encode_message_for(
    out: &mut Vec<u8>,
    key: UseKey,
    seq: u64,
    id: MessageId,
    msg: &NewMessage<'_>,
    states: Option<&[(RecipientState, u64)]>,
) -> Result<EncodedMessage, EncodeError> {
    if msg.recipients.is_empty() {
        return Err(EncodeError::NoRecipients);
    }
    if msg.recipients.len() > RECORD_RECIPIENTS_MAX {
        return Err(EncodeError::TooManyRecipients);
    }
    if states.is_some_and(|s| s.len() != msg.recipients.len()) {
        return Err(EncodeError::TooManyRecipients);
    }
    for (name, s) in [
        ("reverse_path", msg.reverse_path),
        ("envid", msg.envid),
        ("vmta_or_pool", msg.vmta_or_pool),
        ("vmta", msg.vmta),
        ("job_id", msg.job_id),
    ] {
        check_len(name, s)?;
    }
    for r in msg.recipients {
        check_len("forward_path", r.forward_path)?;
        check_len("orcpt", r.orcpt)?;
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    out.extend_from_slice(&id.0.to_le_bytes());
    out.extend_from_slice(&msg.received_unix_ms.to_le_bytes());
    out.push(match msg.ret {
        Ret::Unspecified => 0,
        Ret::Full => 1,
        Ret::Hdrs => 2,
    });
    put_str(out, msg.reverse_path);
    put_str(out, msg.envid);
    put_str(out, msg.vmta_or_pool);
    put_str(out, msg.vmta);
    put_str(out, msg.job_id);
    out.extend_from_slice(&(msg.recipients.len() as u32).to_le_bytes());
    for (i, r) in msg.recipients.iter().enumerate() {
        put_str(out, r.forward_path);
        put_str(out, r.orcpt);
        out.push(r.notify);
        let (state, state_seq) = states
            .and_then(|s| s.get(i).copied())
            .unwrap_or((RecipientState::Queued, seq));
        state.encode(out);
        out.extend_from_slice(&state_seq.to_le_bytes());
    }
    let content_len = msg.content.len();
    out.extend_from_slice(&(content_len as u64).to_le_bytes());
    let content_offset_in_record = out.len() - start;
    out.reserve(content_len + RECORD_ALIGN_BYTES);
    msg.content.write_to(out);
    finish(out, start, KIND_MESSAGE, seq, key)?;
    Ok(EncodedMessage {
        stored_len: out.len() - start,
        content_offset_in_record,
        content_len,
    })
}

/// `recipient` value of a tombstone: "copies of this message in `home` older
/// than this record are superseded by a newer copy" (written by
/// [`crate::spool::Spool::rewrite_message`]). If the newer copy is later
/// deleted as finished, the tombstone keeps the old copy from coming back.
pub const RECIPIENT_SUPERSEDED: u32 = u32::MAX;

/// A per-recipient state change. `home` is the segment holding the message
/// record the state refers to (reclamation uses it to know which state records
/// still matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRecord<'a> {
    pub message: MessageId,
    pub home: SegmentId,
    pub recipient: u32,
    pub state: RecipientState,
    /// The remote reply (for bounces and deferrals), empty when none.
    pub reply: &'a str,
}

/// Appends a state record to `out`, for a first use of its segment; returns
/// the stored length.
pub fn encode_state(
    out: &mut Vec<u8>,
    seq: u64,
    rec: &StateRecord<'_>,
) -> Result<usize, EncodeError> {
    encode_state_for(out, UseKey::FIRST, seq, rec)
}

/// [`encode_state`] for use `key` of a segment (see [`encode_message_for`]).
pub fn encode_state_for(
    out: &mut Vec<u8>,
    key: UseKey,
    seq: u64,
    rec: &StateRecord<'_>,
) -> Result<usize, EncodeError> {
    check_len("reply", rec.reply)?;
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    out.extend_from_slice(&rec.message.0.to_le_bytes());
    out.extend_from_slice(&rec.home.shard.to_le_bytes());
    out.extend_from_slice(&rec.home.number.to_le_bytes());
    out.extend_from_slice(&rec.recipient.to_le_bytes());
    rec.state.encode(out);
    put_str(out, rec.reply);
    finish(out, start, KIND_STATE, seq, key)?;
    Ok(out.len() - start)
}

/// Decodes a state record payload.
pub fn decode_state(payload: &[u8]) -> Result<StateRecord<'_>, RecordError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let message = MessageId(r.u64()?);
    let home = SegmentId {
        shard: r.u16()?,
        number: r.u32()?,
    };
    let recipient = r.u32()?;
    let state = RecipientState::decode(&mut r)?;
    let reply = r.str()?;
    r.end()?;
    Ok(StateRecord {
        message,
        home,
        recipient,
        state,
        reply,
    })
}

/// A decoded message record, borrowing from the segment bytes.
#[derive(Debug, Clone, Copy)]
pub struct MessageRecord<'a> {
    pub id: MessageId,
    pub received_unix_ms: u64,
    pub ret: Ret,
    pub reverse_path: &'a str,
    pub envid: &'a str,
    pub vmta_or_pool: &'a str,
    pub vmta: &'a str,
    pub job_id: &'a str,
    pub recipient_count: u32,
    recipients: &'a [u8],
    pub content: &'a [u8],
    /// Offset of `content` within the payload.
    pub content_offset_in_payload: usize,
}

/// A decoded recipient of a message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientRecord<'a> {
    pub forward_path: &'a str,
    pub orcpt: &'a str,
    pub notify: u8,
    /// The recipient's state when the record was written, and the sequence
    /// number that state was decided at.
    pub state: RecipientState,
    pub state_seq: u64,
}

impl<'a> MessageRecord<'a> {
    /// The recipients, in RCPT order (state records refer to them by index).
    /// The list was validated by [`decode_message`], so this never yields an error.
    pub fn recipients(&self) -> impl Iterator<Item = RecipientRecord<'a>> + 'a {
        let mut r = Reader {
            buf: self.recipients,
            pos: 0,
        };
        std::iter::from_fn(move || decode_recipient(&mut r).ok())
    }
}

fn decode_recipient<'a>(r: &mut Reader<'a>) -> Result<RecipientRecord<'a>, RecordError> {
    Ok(RecipientRecord {
        forward_path: r.str()?,
        orcpt: r.str()?,
        notify: r.u8()?,
        state: RecipientState::decode(r)?,
        state_seq: r.u64()?,
    })
}

/// Decodes a message record payload, validating every field.
pub fn decode_message(payload: &[u8]) -> Result<MessageRecord<'_>, RecordError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let id = MessageId(r.u64()?);
    let received_unix_ms = r.u64()?;
    let ret = match r.u8()? {
        0 => Ret::Unspecified,
        1 => Ret::Full,
        2 => Ret::Hdrs,
        _ => return Err(RecordError::Malformed("ret")),
    };
    let reverse_path = r.str()?;
    let envid = r.str()?;
    let vmta_or_pool = r.str()?;
    let vmta = r.str()?;
    let job_id = r.str()?;
    let count = r.u32()?;
    if count == 0 || count as usize > RECORD_RECIPIENTS_MAX {
        return Err(RecordError::Malformed("recipient count"));
    }
    let rcpt_start = r.pos;
    for _ in 0..count {
        decode_recipient(&mut r)?;
    }
    let recipients = payload
        .get(rcpt_start..r.pos)
        .ok_or(RecordError::Malformed("recipients"))?;
    let content_len =
        usize::try_from(r.u64()?).map_err(|_| RecordError::Malformed("content length"))?;
    let content_offset_in_payload = r.pos;
    let content = r.take(content_len)?;
    r.end()?;
    Ok(MessageRecord {
        id,
        received_unix_ms,
        ret,
        reverse_path,
        envid,
        vmta_or_pool,
        vmta,
        job_id,
        recipient_count: count,
        recipients,
        content,
        content_offset_in_payload,
    })
}

fn check_len(name: &'static str, s: &str) -> Result<(), EncodeError> {
    if s.len() > RECORD_STRING_BYTES_MAX {
        return Err(EncodeError::FieldTooLong(name));
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Length checked by the caller against RECORD_STRING_BYTES_MAX.
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Makes every record in `records` (whole records, encoded for any use or
/// carried forward from any segment) a record of use `key`: its generation
/// set, its CRC recomputed from the salt. The writer encodes records for its
/// current segment's use and stamps those whose batch lands in another one
/// (after a rotation, or carried forward); for a first use with first-use
/// records nothing changes. Returns false if `records` does not frame as
/// whole records.
pub fn stamp(records: &mut [u8], key: UseKey) -> bool {
    let mut pos = 0;
    while pos < records.len() {
        let Ok((_, raw)) = frame(&records[pos..]) else {
            return false;
        };
        let (len, stored) = (raw.payload.len(), raw.stored_len);
        if pos + stored > records.len() {
            return false;
        }
        if raw.generation != key.generation || key.salt != 0 {
            let rec = &mut records[pos..pos + RECORD_HEADER_BYTES + len];
            rec[6..8].copy_from_slice(&key.generation.to_le_bytes());
            let crc = record_crc(
                &rec[..RECORD_HEADER_BYTES],
                &rec[RECORD_HEADER_BYTES..],
                key.salt,
            );
            rec[12..16].copy_from_slice(&crc.to_le_bytes());
        }
        pos += stored;
    }
    true
}

/// The CRC of a record: header bytes 0..12 and 16..24, then the payload,
/// starting from `salt` (0: the plain CRC32C).
fn record_crc(header: &[u8], payload: &[u8], salt: u32) -> u32 {
    let mut crc = crc32c::crc32c_append(salt, &header[0..12]);
    crc = crc32c::crc32c_append(crc, &header[16..24]);
    crc32c::crc32c_append(crc, payload)
}

/// Fills in the header of the record that starts at `start`, for use `key`,
/// and pads it.
fn finish(
    out: &mut Vec<u8>,
    start: usize,
    kind: u8,
    seq: u64,
    key: UseKey,
) -> Result<(), EncodeError> {
    let payload_len = u32::try_from(out.len() - start - RECORD_HEADER_BYTES).map_err(|_| {
        out.truncate(start);
        EncodeError::TooLarge
    })?;
    let mut h = [0u8; RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = kind;
    h[6..8].copy_from_slice(&key.generation.to_le_bytes());
    h[8..12].copy_from_slice(&payload_len.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = record_crc(&h, &out[start + RECORD_HEADER_BYTES..], key.salt);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    out[start..start + RECORD_HEADER_BYTES].copy_from_slice(&h);
    let padded = start + stored_len(payload_len as usize);
    out.resize(padded, 0);
    Ok(())
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A bounds-checked little-endian reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(RecordError::Malformed("length"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(RecordError::Malformed("field runs past the payload"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(le_u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(le_u64(self.take(8)?))
    }
    fn str(&mut self) -> Result<&'a str, RecordError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| RecordError::Malformed("string is not UTF-8"))
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.pos != self.buf.len() {
            return Err(RecordError::Malformed("trailing bytes"));
        }
        Ok(())
    }
}

/// Runs every decoder over arbitrary bytes (the fuzz target and its corpus
/// replay test call this). Never panics; returns how many records decoded.
pub fn decode_any(bytes: &[u8]) -> usize {
    let _ = SegmentHeader::decode(bytes);
    let mut n = 0;
    if let Ok(raw) = decode_raw(bytes) {
        n += 1;
        match raw.kind {
            KIND_MESSAGE => {
                if let Ok(m) = decode_message(raw.payload) {
                    n += m.recipients().count();
                }
            }
            _ => {
                let _ = decode_state(raw.payload);
            }
        }
    }
    let _ = decode_message(bytes);
    let _ = decode_state(bytes);
    n + super::scan::scan_records(bytes, |_, _| {}).records as usize
}
