//! [`Spool`]: one shard's appender. Records are encoded into a pending
//! buffer by the calling task; a flusher task on the shard's compio runtime
//! takes everything pending as one batch, writes it with one `pwrite` at the
//! end of the current segment, then one `fdatasync` (through io_uring), then
//! resolves every waiter in that batch (group commit). Two batches may be in flight: the next
//! one is written as soon as the previous write finished, and its fdatasync
//! runs while the previous one completes, so a record waits about one sync.
//!
//! Batches are written in order, each fdatasync starts after every earlier
//! write finished, and batches resolve strictly in order, a batch failing when
//! the one before it in the same segment failed. So the acknowledged records
//! of a segment are always a contiguous prefix: a crash leaves at most a torn
//! tail.
//!
//! Failure rules: a failed write or fsync fails every record of that batch
//! (the caller answers 451 4.3.0) and seals the segment; nothing is retried
//! and assumed good. A failed segment creation (ENOSPC from `fallocate`) fails
//! the records that do not fit in the current segment with
//! [`SpoolError::DiskFull`] (452 4.3.1); the next creation is tried after
//! `disk_full_retry_ms`, so service resumes by itself when space returns.
//!
//! Single-threaded: `Rc`/`RefCell`/`Cell`, no borrow held across `.await`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::record::{
    self, NewMessage, NewRecipient, RECIPIENT_SUPERSEDED, RecipientState, SEGMENT_HEADER_BYTES,
    StateRecord, UseKey,
};
use super::segment::{self, MessageRef, SegmentShared, SpoolShared};
use super::{
    MessageId, PENDING_BYTES_MAX, SegmentId, SpoolError, SyncMode, ZERO_FILL_AUTO_FIRST_SYNCS,
    ZeroFill,
};

/// One shard's spool handle. `!Send`: it lives on its shard. Cloning is cheap
/// (every session on the shard may hold one).
#[derive(Clone)]
pub struct Spool {
    pub(crate) inner: Rc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("shard", &self.inner.shard)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<SpoolShared>,
    pub(crate) shard: u16,
    pub(crate) st: RefCell<State>,
    flusher: Cell<Option<Waker>>,
    room: RefCell<Vec<Waker>>,
    closed: RefCell<Vec<Waker>>,
    /// Test hook: the next N syncs report EIO (see [`Spool::inject_sync_failures`]).
    inject_sync_failures: Cell<u32>,
    /// Flushes started and not yet resolved (at most [`FLUSHES_IN_FLIGHT_MAX`]).
    in_flight: Cell<u32>,
    /// A flush's write is not finished yet: the next flush waits for it, so
    /// each fdatasync starts after every earlier write is in the page cache.
    writing: Cell<bool>,
    /// The outcome of the newest flush; the next one resolves after it.
    last_outcome: RefCell<Option<Rc<Outcome>>>,
    /// Bytes and fdatasyncs of the flushes since the last preparation
    /// started: what `ZeroFill::zeros_next` decides by.
    synced: Cell<(u64, u64)>,
    /// Under `ZeroFill::Auto` (with preparation on), no preparation decided
    /// yet: the first waits for [`ZERO_FILL_AUTO_FIRST_SYNCS`] fdatasyncs.
    auto_undecided: Cell<bool>,
}

/// Two flushes overlap: the next batch is written and its fdatasync issued
/// while the previous fdatasync is still running, so a record waits about
/// one sync instead of the rest of the running one plus its own.
const FLUSHES_IN_FLIGHT_MAX: u32 = 2;

/// Whether a flush made its batch durable; its successor waits for it.
/// Batches resolve strictly in order, and a batch succeeds only if the one
/// before it in the same segment did: its records lie after those, and
/// recovery stops at the first torn record, so an acknowledged record is never
/// behind a bad one. (A failure seals the segment; later batches go to a new
/// one and do not inherit it.)
struct Outcome {
    segment: SegmentId,
    ok: Cell<Option<bool>>,
    waiter: Cell<Option<Waker>>,
}

impl Outcome {
    fn new(segment: SegmentId) -> Outcome {
        Outcome {
            segment,
            ok: Cell::new(None),
            waiter: Cell::new(None),
        }
    }

    fn set(&self, ok: bool) {
        self.ok.set(Some(ok));
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    async fn wait(&self) -> bool {
        poll_fn(|cx| match self.ok.get() {
            Some(ok) => Poll::Ready(ok),
            None => {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// One batch taken from the pending buffer, ready to write.
struct Batch {
    file: compio::fs::File,
    seg: Arc<SegmentShared>,
    pos: u64,
    /// The segment's size: the end a write's page padding stops at.
    limit: u64,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

pub(crate) struct State {
    /// Encoded records not yet handed to a write; `entries` partition it in order.
    pending: Vec<u8>,
    spare: Vec<u8>,
    entries: VecDeque<Entry>,
    current: Option<Current>,
    /// This shard's sealed segments that still exist (reclamation candidates).
    pub(crate) own_sealed: Vec<Arc<SegmentShared>>,
    disk_full_until: Option<Instant>,
    /// The next segment being prepared on a helper thread, if any.
    preparing: Option<std::sync::mpsc::Receiver<Result<ReadySegment, SpoolError>>>,
    /// A prepared segment ready for the next rotation.
    prepared: Option<ReadySegment>,
    closing: bool,
    flusher_done: bool,
    /// Entries in `entries` pushed [`Push::NOW`] or [`Push::VERBATIM`]: any
    /// of them makes the flusher start a batch.
    urgent: usize,
    /// When the oldest [`Push::SOON`] entry still pending was pushed (about:
    /// kept while any is pending).
    lazy_since: Option<Instant>,
}

/// How [`Spool::push_as`] queues records.
#[derive(Clone, Copy)]
struct Push {
    /// Encoded for the key given, else carried verbatim (see `push_as`).
    keyed: bool,
    /// The flusher may hold them up to `lazy_records_delay` (see
    /// [`super::LAZY_RECORDS_DELAY_DEFAULT`]).
    lazy: bool,
}

impl Push {
    const NOW: Push = Push {
        keyed: true,
        lazy: false,
    };
    const VERBATIM: Push = Push {
        keyed: false,
        lazy: false,
    };
    const SOON: Push = Push {
        keyed: true,
        lazy: true,
    };
}

/// A segment made ahead of need on a helper thread (from a finished
/// segment's file, or allocated and perhaps zero-filled), its header written
/// and synced, renamed to its final name, the directory synced. All of that
/// blocks for device round trips, so none of it runs on the shard. Until its
/// first record it reads as an empty segment (recovery keeps it as one and
/// reclamation deletes it).
struct ReadySegment {
    id: SegmentId,
    file: std::fs::File,
    path: std::path::PathBuf,
    /// Its blocks are written (zero-filled or recycled), else only allocated.
    written: bool,
    key: UseKey,
}

struct Current {
    seg: Arc<SegmentShared>,
    /// Two open file descriptions of the segment, used by alternate batches:
    /// a write-back error is reported once per open file description, so two
    /// fdatasyncs in flight on one description could see it reported to the
    /// later one only, and the earlier batch acknowledged without its data.
    files: [compio::fs::File; 2],
    /// Which of `files` the next batch uses.
    next_file: usize,
    write_pos: u64,
    capacity: u64,
    /// Created (fallocated) on the shard, at start or because a
    /// preparation was not ready, rather than chosen from a prepared file.
    made_here: bool,
    /// The use of the file: every record written to it is stamped with it.
    key: UseKey,
}

struct Entry {
    len: usize,
    slot: Rc<Slot>,
    effect: Effect,
    /// The use its records were encoded for (the current segment's when
    /// pushed); `None` for records carried forward as their segment had them.
    /// Stamped when their batch lands in a segment of another use.
    key: Option<UseKey>,
    /// Pushed [`Push::SOON`].
    lazy: bool,
}

enum Effect {
    /// A message record first in the entry (possibly followed by a tombstone).
    Message {
        id: MessageId,
        record_len: u32,
        content_offset_in_record: u64,
        content_len: u64,
        live: u32,
        retire: Option<MessageRef>,
    },
    /// State records; `finals` of them finish a recipient of `message`.
    States {
        message: Option<MessageRef>,
        finals: u32,
    },
}

enum Committed {
    Message(MessageRef),
    Done,
}

#[derive(Default)]
struct Slot {
    result: RefCell<Option<Result<Committed, SpoolError>>>,
    waker: Cell<Option<Waker>>,
}

impl Slot {
    fn resolve(&self, r: Result<Committed, SpoolError>) {
        *self.result.borrow_mut() = Some(r);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Spool {
    /// Opens shard `shard`'s appender. Must run inside the shard's compio
    /// runtime: it spawns the flusher task there. Sealed segments of earlier
    /// runs whose shard maps to this one (`shard % shards`) become this
    /// shard's to reclaim. The first segment is created on the first append.
    pub fn open(shared: Arc<SpoolShared>, shard: u16) -> Result<Spool, SpoolError> {
        if shard >= shared.shards {
            return Err(SpoolError::Unusable(format!("shard {shard} out of range")));
        }
        let own_sealed = shared
            .all_segments()
            .into_iter()
            .filter(|s| s.is_sealed() && s.id.shard % shared.shards == shard)
            .collect();
        let auto_undecided =
            shared.options.prepare_segments && shared.options.zero_fill == ZeroFill::Auto;
        let inner = Rc::new(Inner {
            shared,
            shard,
            st: RefCell::new(State {
                pending: Vec::new(),
                spare: Vec::new(),
                entries: VecDeque::new(),
                current: None,
                own_sealed,
                disk_full_until: None,
                preparing: None,
                prepared: None,
                closing: false,
                flusher_done: false,
                urgent: 0,
                lazy_since: None,
            }),
            flusher: Cell::new(None),
            room: RefCell::new(Vec::new()),
            closed: RefCell::new(Vec::new()),
            inject_sync_failures: Cell::new(0),
            in_flight: Cell::new(0),
            writing: Cell::new(false),
            last_outcome: RefCell::new(None),
            synced: Cell::new((0, 0)),
            auto_undecided: Cell::new(auto_undecided),
        });
        inner.start_preparing(&mut inner.st.borrow_mut());
        compio::runtime::spawn(flush_loop(inner.clone())).detach();
        Ok(Spool { inner })
    }

    /// Test hook: make the next `n` fdatasyncs fail with EIO after the data
    /// was written, to exercise the "failed fsync seals the segment" path.
    #[doc(hidden)]
    pub fn inject_sync_failures(&self, n: u32) {
        self.inner.inject_sync_failures.set(n);
    }

    pub fn shard(&self) -> u16 {
        self.inner.shard
    }

    pub fn shared(&self) -> &Arc<SpoolShared> {
        &self.inner.shared
    }

    /// Spools a new message. Resolves `Ok` only once the record is durable
    /// (per the sync mode): then, and only then, answer 250.
    pub async fn append_message(&self, msg: &NewMessage<'_>) -> Result<MessageRef, SpoolError> {
        self.wait_room().await?;
        let seq = self.inner.shared.next_seq();
        let id = MessageId(seq);
        let live = msg.recipients.len() as u32;
        let queued = std::time::Instant::now();
        let slot = self.push(|out, key| {
            let enc = record::encode_message_for(out, key, seq, id, msg, None)?;
            Ok(Effect::Message {
                id,
                record_len: enc.stored_len as u32,
                content_offset_in_record: enc.content_offset_in_record as u64,
                content_len: enc.content_len as u64,
                live,
                retire: None,
            })
        })?;
        let committed = wait_commit(slot).await?;
        self.inner.shared.commit_latency.observe(queued.elapsed());
        match committed {
            Committed::Message(m) => Ok(m),
            Committed::Done => Err(SpoolError::Closed),
        }
    }

    /// Records outcomes for recipients (by RCPT index) of `msg`, all in one
    /// commit. Each recipient must get at most one final state.
    pub async fn record_states(
        &self,
        msg: &MessageRef,
        states: &[(u32, RecipientState)],
        reply: &str,
    ) -> Result<(), SpoolError> {
        self.record_states_as(Push::NOW, msg, states, reply).await
    }

    /// [`Self::record_states`] for states that may wait a little for their
    /// fdatasync (delivered recipients'): they go with the next batch that
    /// something else starts, or in one of their own after the spool's
    /// `lazy_records_delay` ([`super::LAZY_RECORDS_DELAY_DEFAULT`]). The
    /// message stays live until they commit.
    pub async fn record_states_lazily(
        &self,
        msg: &MessageRef,
        states: &[(u32, RecipientState)],
        reply: &str,
    ) -> Result<(), SpoolError> {
        self.record_states_as(Push::SOON, msg, states, reply).await
    }

    async fn record_states_as(
        &self,
        how: Push,
        msg: &MessageRef,
        states: &[(u32, RecipientState)],
        reply: &str,
    ) -> Result<(), SpoolError> {
        if states.is_empty() {
            return Ok(());
        }
        self.wait_room().await?;
        let first = self.inner.shared.next_seqs(states.len() as u64);
        let finals = states.iter().filter(|(_, s)| s.is_final()).count() as u32;
        let slot = self.push_as(how, |out, key| {
            for (i, &(recipient, state)) in states.iter().enumerate() {
                let rec = StateRecord {
                    message: msg.id(),
                    home: msg.segment(),
                    recipient,
                    state,
                    reply,
                };
                record::encode_state_for(out, key, first + i as u64, &rec)?;
            }
            Ok(Effect::States {
                message: Some(msg.clone()),
                finals,
            })
        })?;
        wait_commit(slot).await.map(|_| ())
    }

    /// True when `msg` sits in a sealed segment whose live fraction fell below
    /// the compaction threshold: its owner should [`Self::rewrite_message`] it
    /// (typically when it is next deferred) so the old segment can be deleted.
    pub fn needs_rewrite(&self, msg: &MessageRef) -> bool {
        let seg = &msg.0.segment;
        if !seg.is_sealed() {
            return false;
        }
        let used = seg.used_bytes().max(1) as f64;
        (seg.live_bytes() as f64) / used < self.inner.shared.options.compact_live_fraction
    }

    /// Writes a new copy of `msg` (same id, content copied from the old map)
    /// into this shard's current segment, with each recipient's current state
    /// and optionally a new vMTA (operator reroute). The old copy stops
    /// counting as live; use the returned ref from now on. Must be called by
    /// the shard that records `msg`'s states, so no state change races it.
    pub async fn rewrite_message(
        &self,
        msg: &MessageRef,
        states: &[RecipientState],
        vmta: Option<&str>,
    ) -> Result<MessageRef, SpoolError> {
        self.wait_room().await?;
        let env = msg
            .envelope()
            .map_err(|e| SpoolError::Unusable(format!("message {}: {e}", msg.id())))?;
        if states.len() != env.recipient_count as usize {
            return Err(SpoolError::Encode(record::EncodeError::TooManyRecipients));
        }
        let recipients: Vec<NewRecipient<'_>> = env
            .recipients()
            .map(|r| NewRecipient {
                forward_path: r.forward_path,
                orcpt: r.orcpt,
                notify: r.notify,
            })
            .collect();
        let tomb_seq = self.inner.shared.next_seqs(2);
        let seq = tomb_seq + 1;
        let copy = NewMessage {
            received_unix_ms: env.received_unix_ms,
            reverse_path: env.reverse_path,
            recipients: &recipients,
            ret: env.ret,
            envid: env.envid,
            vmta_or_pool: env.vmta_or_pool,
            vmta: vmta.unwrap_or(env.vmta),
            job_id: env.job_id,
            content: record::Content::One(env.content),
        };
        let with_seq: Vec<(RecipientState, u64)> = states.iter().map(|&s| (s, seq)).collect();
        let live = states.iter().filter(|s| !s.is_final()).count() as u32;
        let id = msg.id();
        let slot = self.push(|out, key| {
            // The copy first, then the tombstone for the old copy: a torn write
            // can lose the tombstone but never keep it without the copy.
            let enc = record::encode_message_for(out, key, seq, id, &copy, Some(&with_seq))?;
            let tomb = StateRecord {
                message: id,
                home: msg.segment(),
                recipient: RECIPIENT_SUPERSEDED,
                state: RecipientState::Queued,
                reply: "",
            };
            record::encode_state_for(out, key, tomb_seq, &tomb)?;
            Ok(Effect::Message {
                id,
                record_len: enc.stored_len as u32,
                content_offset_in_record: enc.content_offset_in_record as u64,
                content_len: enc.content_len as u64,
                live,
                retire: Some(msg.clone()),
            })
        })?;
        match wait_commit(slot).await? {
            Committed::Message(m) => Ok(m),
            Committed::Done => Err(SpoolError::Closed),
        }
    }

    /// Appends already-encoded records verbatim (reclamation's carry-forward).
    pub(crate) async fn append_raw(&self, bytes: &[u8]) -> Result<(), SpoolError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.wait_room().await?;
        let slot = self.push_as(Push::VERBATIM, |out, _| {
            out.extend_from_slice(bytes);
            Ok(Effect::States {
                message: None,
                finals: 0,
            })
        })?;
        wait_commit(slot).await.map(|_| ())
    }

    /// Stops accepting appends, waits for everything pending to be written
    /// and synced, and stops the flusher.
    pub async fn close(&self) {
        self.inner.st.borrow_mut().closing = true;
        self.inner.wake_flusher();
        poll_fn(|cx| {
            if self.inner.st.borrow().flusher_done {
                return Poll::Ready(());
            }
            self.inner.closed.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }

    fn push(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, UseKey) -> Result<Effect, SpoolError>,
    ) -> Result<Rc<Slot>, SpoolError> {
        self.push_as(Push::NOW, encode)
    }

    /// [`Self::push`], queued as `how` says.
    fn push_as(
        &self,
        how: Push,
        encode: impl FnOnce(&mut Vec<u8>, UseKey) -> Result<Effect, SpoolError>,
    ) -> Result<Rc<Slot>, SpoolError> {
        if self.inner.st.borrow().closing {
            return Err(SpoolError::Closed);
        }
        self.inner.push_as(how, encode)
    }

    async fn wait_room(&self) -> Result<(), SpoolError> {
        poll_fn(|cx| {
            let st = self.inner.st.borrow();
            if st.closing {
                return Poll::Ready(Err(SpoolError::Closed));
            }
            if st.pending.len() < PENDING_BYTES_MAX {
                return Poll::Ready(Ok(()));
            }
            self.inner.room.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // The last handle besides the flusher's own and those of the flushes
        // in flight: let the flusher drain and exit.
        let in_flight = self.inner.in_flight.get() as usize;
        if Rc::strong_count(&self.inner) == 2 + in_flight {
            self.inner.st.borrow_mut().closing = true;
            self.inner.wake_flusher();
        }
    }
}

async fn wait_commit(slot: Rc<Slot>) -> Result<Committed, SpoolError> {
    poll_fn(|cx| {
        if let Some(r) = slot.result.borrow_mut().take() {
            return Poll::Ready(r);
        }
        slot.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

impl Inner {
    /// Queues the records `encode` appends for the next batch. It encodes
    /// them for the current segment's use, which is usually the one their
    /// batch lands in (else [`Self::take_batch`] stamps them); not
    /// `how.keyed`: they are whatever `encode` copies in, stamped wherever
    /// they land.
    fn push_as(
        &self,
        how: Push,
        encode: impl FnOnce(&mut Vec<u8>, UseKey) -> Result<Effect, SpoolError>,
    ) -> Result<Rc<Slot>, SpoolError> {
        // The room of a recycled segment, whose header's copy takes the end
        // (a new one has a few bytes more).
        let capacity =
            record::trailer_offset(self.shared.options.segment_bytes) - SEGMENT_HEADER_BYTES as u64;
        let slot = Rc::new(Slot::default());
        {
            let mut st = self.st.borrow_mut();
            let start = st.pending.len();
            let key = st.current.as_ref().map_or(UseKey::FIRST, |c| c.key);
            let effect = match encode(&mut st.pending, key) {
                Ok(e) => e,
                Err(e) => {
                    st.pending.truncate(start);
                    return Err(e);
                }
            };
            let len = st.pending.len() - start;
            if len as u64 > capacity {
                st.pending.truncate(start);
                return Err(SpoolError::TooLarge);
            }
            st.entries.push_back(Entry {
                len,
                slot: slot.clone(),
                effect,
                key: how.keyed.then_some(key),
                lazy: how.lazy,
            });
            if how.lazy {
                st.lazy_since.get_or_insert_with(Instant::now);
            } else {
                st.urgent += 1;
            }
        }
        self.wake_flusher();
        Ok(slot)
    }

    /// A new message committed after its appender stopped waiting (the
    /// client went away, so it never got a 250): mark every recipient
    /// admin-deleted so it is neither delivered after a restart nor pins its
    /// segment. Best effort: if this record is lost the message is merely
    /// delivered once after a restart.
    fn discard_abandoned(&self, m: &MessageRef) {
        let n = m.live_recipients();
        let first = self.shared.next_seqs(u64::from(n));
        let _ = self.push_as(Push::NOW, |out, key| {
            for r in 0..n {
                let rec = StateRecord {
                    message: m.id(),
                    home: m.segment(),
                    recipient: r,
                    state: RecipientState::AdminDeleted,
                    reply: "transaction abandoned before commit",
                };
                record::encode_state_for(out, key, first + u64::from(r), &rec)?;
            }
            Ok(Effect::States {
                message: Some(m.clone()),
                finals: n,
            })
        });
    }

    fn wake_flusher(&self) {
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    fn wake_room(&self) {
        for w in self.room.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Seals the current segment (after a failure, or because it is full).
    fn seal_current(&self, st: &mut State) {
        if let Some(c) = st.current.take() {
            c.seg.sealed.store(true, Ordering::Release);
            st.own_sealed.push(c.seg);
        }
    }

    /// Replaces the current segment with a new one.
    fn rotate(&self, st: &mut State) -> Result<(), SpoolError> {
        if let Some(t) = st.disk_full_until
            && Instant::now() < t
        {
            return Err(SpoolError::DiskFull);
        }
        let opts = &self.shared.options;
        // A prepared segment if one is ready; otherwise create one here,
        // and the helper's serves a later rotation.
        poll_prepared(st);
        let prepared = st.prepared.take();
        let made_here = prepared.is_none();
        let written = prepared.as_ref().is_some_and(|p| p.written);
        let (id, key, made) = match prepared {
            Some(ReadySegment {
                id,
                file,
                path,
                key,
                ..
            }) => {
                self.shared
                    .segments_prepared
                    .fetch_add(1, Ordering::Relaxed);
                (id, key, Ok((file, path)))
            }
            None => {
                let id = self.next_segment_id().ok_or(SpoolError::Closed)?;
                (
                    id,
                    UseKey::FIRST,
                    segment::create_segment(&opts.path, id, opts.segment_bytes),
                )
            }
        };
        let created = made.and_then(|(file, path)| {
            let second = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| SpoolError::io("open segment", &e))?;
            let seg = SegmentShared::map(id, key, path, &file, SEGMENT_HEADER_BYTES as u64, false)?;
            Ok(([file, second], seg))
        });
        match created {
            Ok(([first, second], seg)) => {
                seg.blocks_written.store(written, Ordering::Relaxed);
                let seg = Arc::new(seg);
                self.shared.register(seg.clone());
                self.seal_current(st);
                // SAFETY: `into_raw_fd` hands us sole ownership of an open
                // descriptor; compio's attach is a no-op on Linux drivers.
                let files = [first, second]
                    .map(|f| unsafe { compio::fs::File::from_raw_fd(f.into_raw_fd()) });
                st.current = Some(Current {
                    seg,
                    files,
                    next_file: 0,
                    write_pos: SEGMENT_HEADER_BYTES as u64,
                    // A recycled file keeps its header's copy at the end.
                    capacity: if key.generation == 0 {
                        opts.segment_bytes
                    } else {
                        record::trailer_offset(opts.segment_bytes)
                    },
                    made_here,
                    key,
                });
                st.disk_full_until = None;
                self.start_preparing(st);
                Ok(())
            }
            Err(e) => {
                st.disk_full_until =
                    Some(Instant::now() + Duration::from_millis(opts.disk_full_retry_ms));
                Err(e)
            }
        }
    }

    /// The next unused segment number of this shard.
    fn next_segment_id(&self) -> Option<SegmentId> {
        let number = self
            .shared
            .next_number
            .get(usize::from(self.shard))?
            .fetch_add(1, Ordering::Relaxed);
        Some(SegmentId {
            shard: self.shard,
            number,
        })
    }

    /// Starts preparing this shard's next segment on a helper thread, unless
    /// one is already being prepared or ready, or the option is off. The
    /// segment gets its number now (one that ends up unused leaves a gap).
    fn start_preparing(&self, st: &mut State) {
        let opts = &self.shared.options;
        if !opts.prepare_segments || st.preparing.is_some() || st.prepared.is_some() || st.closing {
            return;
        }
        if self.auto_undecided.get() {
            if self.synced.get().1 < ZERO_FILL_AUTO_FIRST_SYNCS {
                // run_flush calls again once there are figures to decide by.
                return;
            }
            self.auto_undecided.set(false);
        }
        let Some(id) = self.next_segment_id() else {
            return;
        };
        let (synced_bytes, syncs) = self.synced.take();
        let zeros = opts.zero_fill.zeros_next(synced_bytes, syncs);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (dir, shard, bytes) = (opts.path.clone(), self.shard, opts.segment_bytes);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("spate-spool-prep-{shard}"))
            .spawn(move || {
                // A finished segment's file if one is kept: written blocks
                // with nothing to zero-fill.
                let recycled = shared
                    .take_free()
                    .and_then(|free| segment::recycle_segment(&dir, id, bytes, &free));
                let is_recycled = recycled.is_some();
                let ready = recycled
                    .map_or_else(|| segment::prepare_segment(&dir, id, bytes, zeros), Ok)
                    .and_then(|p| {
                        let key = p.key;
                        segment::install_prepared(&dir, id, p).map(|(file, path)| ReadySegment {
                            id,
                            file,
                            path,
                            written: zeros || is_recycled,
                            key,
                        })
                    });
                if ready.is_ok() {
                    let counter = if is_recycled {
                        &shared.segments_recycled
                    } else if zeros {
                        &shared.segments_zero_filled
                    } else {
                        &shared.segments_allocated
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.send(ready);
            });
        match spawned {
            Ok(_) => st.preparing = Some(rx),
            Err(e) => tracing::warn!(error = %e, "cannot start the segment preparer"),
        }
    }

    /// Fails every pending entry longer than `room` with `err`, keeping the rest in order.
    fn fail_oversized(&self, st: &mut State, room: u64, err: &SpoolError) {
        let old = std::mem::take(&mut st.pending);
        let entries = std::mem::take(&mut st.entries);
        let mut off = 0;
        let mut urgent_failed = 0;
        for e in entries {
            let bytes = old.get(off..off + e.len).unwrap_or(&[]);
            off += e.len;
            if e.len as u64 > room {
                urgent_failed += usize::from(!e.lazy);
                e.slot.resolve(Err(err.clone()));
            } else {
                st.pending.extend_from_slice(bytes);
                st.entries.push_back(e);
            }
        }
        entries_taken(st, urgent_failed);
    }

    /// Takes the next batch from the pending buffer (rotating first if it
    /// does not fit). `None`: nothing to write now (empty, or failed for lack
    /// of space); `Some(None)`: a rotation waits until no flush is in flight.
    fn take_batch(&self) -> Option<Option<Batch>> {
        let mut st = self.st.borrow_mut();
        let first = st.entries.front().map(|e| e.len as u64)?;
        let fits = st
            .current
            .as_ref()
            .is_some_and(|c| c.write_pos + first <= c.capacity);
        // A shard starts on a segment it fallocated itself (the first
        // prepared one is not ready yet), as it does when a preparation was
        // late; it moves to a prepared one with written blocks (zero-filled
        // or recycled) as soon as it is. An allocated prepared segment was
        // chosen (ZeroFill) and is kept.
        let early = fits && st.current.as_ref().is_some_and(|c| c.made_here) && {
            poll_prepared(&mut st);
            st.prepared.as_ref().is_some_and(|p| p.written)
        };
        if (!fits || early) && self.in_flight.get() > 0 {
            // Never rotate under a flush still writing to the old segment.
            return Some(None);
        }
        if early && self.rotate(&mut st).is_err() {
            // Not a full disk: the current segment still has room.
            st.disk_full_until = None;
        }
        if !fits && let Err(e) = self.rotate(&mut st) {
            let room = st.current.as_ref().map_or(0, |c| c.capacity - c.write_pos);
            self.fail_oversized(&mut st, room, &e);
            return None;
        }
        let st = &mut *st;
        let room = st
            .current
            .as_ref()
            .map(|cur| cur.capacity - cur.write_pos)?;
        let one = self.shared.options.sync == SyncMode::EachRecord;
        let mut n = 0;
        let mut bytes = 0usize;
        for e in &st.entries {
            if (bytes + e.len) as u64 > room || (one && n == 1) {
                break;
            }
            bytes += e.len;
            n += 1;
        }
        let entries: Vec<Entry> = st.entries.drain(..n).collect();
        entries_taken(st, entries.iter().filter(|e| !e.lazy).count());
        let cur = st.current.as_mut()?;
        let mut buf = std::mem::replace(&mut st.pending, std::mem::take(&mut st.spare));
        st.pending
            .extend_from_slice(buf.get(bytes..).unwrap_or(&[]));
        buf.truncate(bytes);
        // Records encoded for another use (pushed before a rotation, or
        // carried forward as their segment had them) take this segment's
        // here: records of another use read as the end of the data at
        // recovery.
        let mut off = 0;
        let mut framed = true;
        for e in &entries {
            if e.key != Some(cur.key) {
                framed &= buf
                    .get_mut(off..off + e.len)
                    .is_some_and(|records| record::stamp(records, cur.key));
            }
            off += e.len;
        }
        if !framed {
            tracing::error!(segment = %cur.seg.id, "spool batch does not frame as records");
            for e in entries {
                e.slot.resolve(Err(SpoolError::Unusable(
                    "spool batch does not frame as records".into(),
                )));
            }
            return None;
        }
        let pos = cur.write_pos;
        cur.write_pos += bytes as u64;
        cur.next_file ^= 1;
        Some(Some(Batch {
            file: cur.files[cur.next_file].clone(),
            seg: cur.seg.clone(),
            pos,
            limit: cur.capacity,
            bytes: buf,
            entries,
        }))
    }

    /// Writes and syncs one batch, then (after `prev` resolved) resolves its
    /// waiters. See [`Outcome`] for the ordering rule.
    async fn run_flush(self: Rc<Self>, batch: Batch, prev: Option<Rc<Outcome>>, mine: Rc<Outcome>) {
        let Batch {
            file,
            seg,
            pos,
            limit,
            mut bytes,
            entries,
        } = batch;
        // Up to the end of the last page (the segment holds zeros there):
        // a partial page not in the page cache would be read from disk first.
        let len = bytes.len();
        let end = pos + len as u64;
        let padded = end
            .next_multiple_of(segment::PAGE_BYTES)
            .min(limit)
            .max(end);
        bytes.resize(len + (padded - end) as usize, 0);
        let res = pwrite_all(&file, &bytes, pos);
        bytes.truncate(len);
        if res.is_err() {
            // Before the next batch can be written after this bad region.
            let mut st = self.st.borrow_mut();
            if st
                .current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.seg, &seg))
            {
                self.seal_current(&mut st);
            }
        }
        let written = bytes.len() as u64;
        // Written: the buffer can take the next batch's records (with two
        // flushes in flight, one held until its sync ended would leave the
        // next pending buffer to grow from nothing, copying at each step).
        self.recycle_buffer(bytes);
        self.writing.set(false);
        self.wake_flusher();
        let res = match res {
            Err(e) => Err(SpoolError::io("write", &e)),
            Ok(()) => match self.shared.options.sync {
                SyncMode::Group | SyncMode::EachRecord => {
                    let injected = self.inject_sync_failures.get();
                    if injected > 0 {
                        self.inject_sync_failures.set(injected - 1);
                    }
                    let sync_started = std::time::Instant::now();
                    let r = file.sync_data().await;
                    self.shared.sync_latency.observe(sync_started.elapsed());
                    if injected > 0 {
                        let eio = std::io::Error::from_raw_os_error(libc::EIO);
                        Err(SpoolError::io("fdatasync", &eio))
                    } else {
                        r.map_err(|e| SpoolError::io("fdatasync", &e))
                    }
                }
                SyncMode::None => Ok(()),
            },
        };
        let prev_ok = match &prev {
            Some(p) => p.wait().await || p.segment != seg.id,
            None => true,
        };
        let res = match res {
            Ok(()) if !prev_ok => Err(SpoolError::io(
                "fdatasync",
                &std::io::Error::other("an earlier batch of this segment failed"),
            )),
            other => other,
        };
        let ok = res.is_ok();
        if !ok {
            seg.io_failed.store(true, Ordering::Relaxed);
        }
        if ok {
            let (bytes, syncs) = self.synced.get();
            self.synced.set((bytes + written, syncs + 1));
            if self.auto_undecided.get() && syncs + 1 >= ZERO_FILL_AUTO_FIRST_SYNCS {
                self.start_preparing(&mut self.st.borrow_mut());
            }
        }
        self.finish_flush(&seg, pos, written, entries, res);
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        mine.set(ok);
        self.wake_flusher();
        self.wake_room();
    }

    /// Keeps a written batch's buffer (emptied) for the next batch, unless
    /// the spare one is larger or it grew past the pending bound.
    fn recycle_buffer(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut st = self.st.borrow_mut();
        if buf.capacity() <= PENDING_BYTES_MAX && st.spare.capacity() < buf.capacity() {
            st.spare = buf;
        }
    }

    /// Resolves a batch's waiters with the flush's result.
    fn finish_flush(
        &self,
        seg: &Arc<SegmentShared>,
        pos: u64,
        written: u64,
        batch: Vec<Entry>,
        res: Result<(), SpoolError>,
    ) {
        let mut st = self.st.borrow_mut();
        if let Err(e) = res {
            // Never retried and assumed good: seal, fail the batch, move on.
            if st
                .current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.seg, seg))
            {
                self.seal_current(&mut st);
            }
            drop(st);
            for entry in batch {
                entry.slot.resolve(Err(e.clone()));
            }
            return;
        }
        drop(st);
        seg.used_bytes.store(pos + written, Ordering::Release);
        let mut off = pos;
        for entry in batch {
            let result = match entry.effect {
                Effect::Message {
                    id,
                    record_len,
                    content_offset_in_record,
                    content_len,
                    live,
                    retire,
                } => {
                    let m = MessageRef::new(
                        id,
                        seg.clone(),
                        off,
                        record_len,
                        off + content_offset_in_record,
                        content_len,
                        live,
                    );
                    match retire {
                        Some(old) => old.retire(),
                        None if Rc::strong_count(&entry.slot) == 1 => self.discard_abandoned(&m),
                        None => {}
                    }
                    Committed::Message(m)
                }
                Effect::States { message, finals } => {
                    if let Some(m) = message {
                        m.finish_recipients(finals);
                    }
                    Committed::Done
                }
            };
            off += entry.len as u64;
            entry.slot.resolve(Ok(result));
        }
    }
}

/// Writes `bytes` at `pos` with `pwrite` on the calling thread: a buffered
/// write into the page cache, which io_uring would hand to a kernel worker
/// thread on ext4 (no non-blocking buffered writes there), one thread switch
/// per batch more. Public for `spate-bench forward`, which stores the same
/// way as a reference.
pub fn pwrite_all(file: &compio::fs::File, bytes: &[u8], pos: u64) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::FileExt;
    // SAFETY: a second `File` over `file`'s open descriptor, used for this
    // call only and never dropped (so never closed): `file` keeps owning it.
    let borrowed =
        std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(file.as_raw_fd()) });
    borrowed.write_all_at(bytes, pos)
}

/// Gives a prepared segment that was never used (`path`, its blocks
/// written) to the pool of free files, renamed to its free name like a
/// finished segment at reclaim; false, with nothing left under the free
/// name, when the pool is full or the rename fails. Its header is a valid
/// one (a first use's or its recycled use's), which is what reuse reads the
/// next generation from.
fn return_to_pool(shared: &SpoolShared, id: SegmentId, path: &std::path::Path) -> bool {
    if !shared.free_has_room() {
        return false;
    }
    let Some(free) = segment::rename_to_free(&shared.options.path, id, path) else {
        return false;
    };
    if segment::sync_dir(&shared.options.path).is_ok() && shared.add_free(free.clone()) {
        return true;
    }
    let _ = std::fs::remove_file(&free);
    false
}

/// After entries left the queue, `urgent` of them urgent: counts the urgent
/// ones left, and forgets [`State::lazy_since`] when no lazy one is.
fn entries_taken(st: &mut State, urgent: usize) {
    st.urgent -= urgent;
    if st.urgent == st.entries.len() {
        st.lazy_since = None;
    }
}

/// Moves a finished preparation into `st.prepared` (a failed one is logged
/// and dropped: rotation then falls back to `fallocate`).
fn poll_prepared(st: &mut State) {
    let Some(rx) = st.preparing.as_ref() else {
        return;
    };
    match rx.try_recv() {
        Ok(result) => {
            st.preparing = None;
            match result {
                Ok(p) => st.prepared = Some(p),
                Err(e) => tracing::warn!(error = %e, "preparing a spool segment failed"),
            }
        }
        Err(std::sync::mpsc::TryRecvError::Disconnected) => st.preparing = None,
        Err(std::sync::mpsc::TryRecvError::Empty) => {}
    }
}

type LazyTimer = std::pin::Pin<Box<dyn Future<Output = ()>>>;

async fn flush_loop(inner: Rc<Inner>) {
    // Wakes the flusher when lazy records alone have waited long enough:
    // a timer with the deadline it was armed for, dropped once it fired (a
    // finished future is not polled again).
    let mut lazy_timer: Option<(Instant, LazyTimer)> = None;
    loop {
        let work = poll_fn(|cx| {
            let st = inner.st.borrow();
            let idle = inner.in_flight.get() == 0;
            let due = match st.lazy_since {
                _ if st.urgent > 0 || st.closing => true,
                Some(since) => {
                    let delay = inner.shared.options.lazy_records_delay;
                    let at = since.checked_add(delay).unwrap_or(since);
                    Instant::now() >= at || {
                        if lazy_timer.as_ref().is_none_or(|(t, _)| *t != at) {
                            lazy_timer = Some((at, Box::pin(compio::time::sleep_until(at))));
                        }
                        let fired = lazy_timer
                            .as_mut()
                            .is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready());
                        if fired {
                            lazy_timer = None;
                        }
                        fired
                    }
                }
                None => false,
            };
            if !st.entries.is_empty()
                && due
                && !inner.writing.get()
                && inner.in_flight.get() < FLUSHES_IN_FLIGHT_MAX
            {
                return Poll::Ready(true);
            }
            if st.closing && st.entries.is_empty() && idle {
                return Poll::Ready(false);
            }
            inner.flusher.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        if !work {
            break;
        }
        lazy_timer = None;
        let batch = match inner.take_batch() {
            Some(Some(batch)) => batch,
            Some(None) => {
                // A rotation: let the flushes in flight finish first.
                poll_fn(|cx| {
                    if inner.in_flight.get() == 0 {
                        return Poll::Ready(());
                    }
                    inner.flusher.set(Some(cx.waker().clone()));
                    Poll::Pending
                })
                .await;
                continue;
            }
            None => {
                // Failed for lack of space: those waiters have their answer.
                inner.wake_room();
                continue;
            }
        };
        let mine = Rc::new(Outcome::new(batch.seg.id));
        let prev = inner.last_outcome.replace(Some(mine.clone()));
        inner.in_flight.set(inner.in_flight.get() + 1);
        inner.writing.set(true);
        compio::runtime::spawn(inner.clone().run_flush(batch, prev, mine)).detach();
        // The pending buffer was drained into the batch: appenders held back
        // for room may go on.
        inner.wake_room();
    }
    // A prepared segment never used is an empty one. One with written blocks
    // (recycled or zero-filled) goes back to the pool of free files, as a
    // finished segment would; an only-allocated one is removed rather than
    // left for the next start to reclaim. One still being prepared is waited
    // for first, so no helper outlives the spool (a reopen in the same
    // process must not meet its files).
    let (ready, preparing) = {
        let mut st = inner.st.borrow_mut();
        if let Some(c) = st.current.take() {
            c.seg.sealed.store(true, Ordering::Release);
            st.own_sealed.push(c.seg);
        }
        (st.prepared.take(), st.preparing.take())
    };
    let pending = match preparing {
        Some(rx) => compio::runtime::spawn_blocking(move || rx.recv().ok().and_then(Result::ok))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    for made in [ready, pending].into_iter().flatten() {
        let ReadySegment {
            id,
            file,
            path,
            written,
            ..
        } = made;
        drop(file);
        if !(written && return_to_pool(&inner.shared, id, &path)) {
            let _ = std::fs::remove_file(&path);
        }
    }
    inner.st.borrow_mut().flusher_done = true;
    for w in inner.closed.borrow_mut().drain(..) {
        w.wake();
    }
}
