//! The cross-shard mesh: one bounded lock-free inbox per shard.
//!
//! Every shard owns one inbox (a bounded crossbeam channel) and holds a
//! sender to every other shard's inbox. A sender pushes without locking and
//! wakes the owner through an [`AtomicWaker`], so an idle shard costs no CPU
//! and a busy one drains its inbox in batches without a syscall per message.
//!
//! Backpressure: when an inbox is full, [`MeshSender::send`] waits (a short
//! timer, doubling up to a bound) and tries again; it never drops. An SMTP
//! transaction handing over a message therefore slows down instead of losing
//! mail when the owning shard falls behind.
//!
//! What this module leaves to others: what the messages mean (the shard's
//! dispatcher), and which shard owns a vMTA (see [`super::shard_for_vmta`]).

use atomic_waker::AtomicWaker;
use crossbeam::channel::{Receiver, Sender, TrySendError, bounded};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Messages an inbox holds before senders feel backpressure. Large enough to
/// absorb a burst of handoffs from a full batch of group commits.
pub const MESH_INBOX_MESSAGES_MAX: usize = 8192;

/// First and last pause of a sender facing a full inbox.
const MESH_BACKOFF_US_MIN: u64 = 50;
const MESH_BACKOFF_US_MAX: u64 = 5_000;
const _: () = assert!(MESH_BACKOFF_US_MIN < MESH_BACKOFF_US_MAX);

struct Inbox<T> {
    tx: Sender<T>,
    waker: AtomicWaker,
}

/// A handle that can send to any shard's inbox. Cheap to clone; `Send`.
pub struct MeshSender<T> {
    inboxes: Arc<[Arc<Inbox<T>>]>,
}

impl<T> Clone for MeshSender<T> {
    fn clone(&self) -> Self {
        Self {
            inboxes: self.inboxes.clone(),
        }
    }
}

/// The receiving end of one shard's inbox. Lives on that shard.
pub struct MeshReceiver<T> {
    rx: Receiver<T>,
    inbox: Arc<Inbox<T>>,
}

/// Why a send did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum MeshError {
    /// No shard with that index.
    NoSuchShard(usize),
    /// The receiving shard has shut down.
    Closed,
}

/// Outcome of a [`MeshSender::try_send`] that did not deliver.
#[derive(Debug)]
pub enum TrySend<T> {
    /// The inbox is full; here is the message back.
    Full(T),
    /// The message cannot be delivered at all.
    Failed(MeshError),
}

/// Builds the mesh for `shards` shards: one sender handle for everybody and
/// one receiver per shard (index = shard id).
pub fn mesh<T>(shards: usize) -> (MeshSender<T>, Vec<MeshReceiver<T>>) {
    let mut inboxes = Vec::with_capacity(shards);
    let mut receivers = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = bounded(MESH_INBOX_MESSAGES_MAX);
        let inbox = Arc::new(Inbox {
            tx,
            waker: AtomicWaker::new(),
        });
        receivers.push(MeshReceiver {
            rx,
            inbox: inbox.clone(),
        });
        inboxes.push(inbox);
    }
    (
        MeshSender {
            inboxes: inboxes.into(),
        },
        receivers,
    )
}

impl<T> MeshSender<T> {
    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Tries once; gives the message back when the inbox is full.
    pub fn try_send(&self, shard: usize, msg: T) -> Result<(), TrySend<T>> {
        let Some(inbox) = self.inboxes.get(shard) else {
            return Err(TrySend::Failed(MeshError::NoSuchShard(shard)));
        };
        match inbox.tx.try_send(msg) {
            Ok(()) => {
                inbox.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(msg)) => Err(TrySend::Full(msg)),
            Err(TrySendError::Disconnected(_)) => Err(TrySend::Failed(MeshError::Closed)),
        }
    }

    /// Sends from a compio task, waiting while the inbox is full.
    pub async fn send(&self, shard: usize, mut msg: T) -> Result<(), MeshError> {
        let Some(inbox) = self.inboxes.get(shard) else {
            return Err(MeshError::NoSuchShard(shard));
        };
        let mut pause_us = MESH_BACKOFF_US_MIN;
        loop {
            match inbox.tx.try_send(msg) {
                Ok(()) => {
                    inbox.waker.wake();
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    inbox.waker.wake();
                    compio::time::sleep(Duration::from_micros(pause_us)).await;
                    pause_us = (pause_us * 2).min(MESH_BACKOFF_US_MAX);
                }
                Err(TrySendError::Disconnected(_)) => return Err(MeshError::Closed),
            }
        }
    }

    /// Sends from a plain thread (control plane), blocking while full.
    pub fn send_blocking(&self, shard: usize, msg: T) -> Result<(), MeshError> {
        let Some(inbox) = self.inboxes.get(shard) else {
            return Err(MeshError::NoSuchShard(shard));
        };
        inbox.tx.send(msg).map_err(|_| MeshError::Closed)?;
        inbox.waker.wake();
        Ok(())
    }
}

impl<T> MeshReceiver<T> {
    /// Waits until at least one message is there, then returns every message
    /// present (up to `max`), oldest first.
    pub async fn recv_batch(&self, max: usize, out: &mut Vec<T>) {
        poll_fn(|cx| {
            self.drain(max, out);
            if !out.is_empty() {
                return Poll::Ready(());
            }
            self.inbox.waker.register(cx.waker());
            // A sender may have pushed between the drain and the register.
            self.drain(max, out);
            if out.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    fn drain(&self, max: usize, out: &mut Vec<T>) {
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(m) => out.push(m),
                Err(_) => break,
            }
        }
    }
}
