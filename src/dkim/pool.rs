//! [`SigningPool`]: a few plain threads that sign messages so that an
//! RSA signature (hundreds of microseconds) never stalls a shard's I/O loop.
//!
//! A shard submits a [`SignJob`] with `try_submit` (never blocks: a full queue
//! hands the job back, and the caller answers 451 or signs inline) and
//! `.await`s the returned oneshot receiver from its compio task. The message
//! buffer travels with the job and comes back in the outcome, so nothing is
//! copied. Jobs carry their own `Arc<SigningTable>`, so a reload swaps the
//! table without touching the pool.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use futures_channel::oneshot;

use super::DkimError;
use super::table::SigningTable;

/// Signing threads in one pool; more than the cores only adds switching.
pub const DKIM_POOL_THREADS_MAX: usize = 64;

/// Jobs waiting in one pool's queue; beyond that, submitters get the job back.
pub const DKIM_POOL_QUEUE_JOBS_MAX: usize = 65_536;

/// One message to sign.
#[derive(Debug)]
pub struct SignJob {
    pub table: Arc<SigningTable>,
    /// The full message; returned in [`SignJobOutcome::message`].
    pub message: Vec<u8>,
    pub now_unix: u64,
    /// Extra signing domains for this message (e.g. from its vMTA).
    pub extra_domains: Vec<String>,
}

/// The result of a job, with the message buffer handed back.
#[derive(Debug)]
pub struct SignJobOutcome {
    pub message: Vec<u8>,
    /// The fields to prepend (first is topmost), or why signing failed.
    pub result: Result<Vec<String>, DkimError>,
}

/// Why a job was not queued; the job comes back untouched.
#[derive(Debug)]
pub enum PoolSubmitError {
    /// The queue is full: back-pressure.
    Full(SignJob),
    /// The pool is shutting down.
    Closed(SignJob),
}

struct Envelope {
    job: SignJob,
    reply: oneshot::Sender<SignJobOutcome>,
}

/// Signing threads fed by one bounded queue.
pub struct SigningPool {
    sender: Option<Sender<Envelope>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SigningPool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningPool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl SigningPool {
    /// Starts `threads` signing threads (1..=[`DKIM_POOL_THREADS_MAX`]) with a
    /// queue of `queue_jobs` (1..=[`DKIM_POOL_QUEUE_JOBS_MAX`]).
    pub fn new(threads: usize, queue_jobs: usize) -> Result<SigningPool, DkimError> {
        if !(1..=DKIM_POOL_THREADS_MAX).contains(&threads)
            || !(1..=DKIM_POOL_QUEUE_JOBS_MAX).contains(&queue_jobs)
        {
            return Err(DkimError::Config(format!(
                "signing pool of {threads} threads and {queue_jobs} queued jobs is outside \
                 1..={DKIM_POOL_THREADS_MAX} threads and 1..={DKIM_POOL_QUEUE_JOBS_MAX} jobs"
            )));
        }
        let (sender, receiver) = channel::bounded::<Envelope>(queue_jobs);
        let mut handles = Vec::with_capacity(threads);
        for index in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("spate-dkim-{index}"))
                .spawn(move || worker(receiver));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    // Dropping what exists stops the threads already started.
                    drop(SigningPool {
                        sender: Some(sender),
                        threads: handles,
                    });
                    return Err(DkimError::Config(format!(
                        "cannot start DKIM signing thread: {error}"
                    )));
                }
            }
        }
        Ok(SigningPool {
            sender: Some(sender),
            threads: handles,
        })
    }

    /// Queues a job without blocking. Await the receiver for the outcome; it
    /// yields `Err(Canceled)` only if the pool is dropped with the job queued.
    pub fn try_submit(
        &self,
        job: SignJob,
    ) -> Result<oneshot::Receiver<SignJobOutcome>, PoolSubmitError> {
        let Some(sender) = &self.sender else {
            return Err(PoolSubmitError::Closed(job));
        };
        let (reply, receiver) = oneshot::channel();
        match sender.try_send(Envelope { job, reply }) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(envelope)) => Err(PoolSubmitError::Full(envelope.job)),
            Err(TrySendError::Disconnected(envelope)) => Err(PoolSubmitError::Closed(envelope.job)),
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }
}

fn worker(receiver: Receiver<Envelope>) {
    while let Ok(Envelope { job, reply }) = receiver.recv() {
        let extra: Vec<&str> = job.extra_domains.iter().map(String::as_str).collect();
        // A panic in signing would be our bug; contain it so the submitter
        // gets an error (and defers) instead of waiting forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            job.table
                .sign_with_extra(&job.message, job.now_unix, &extra)
        }))
        .unwrap_or_else(|_| {
            Err(DkimError::Signing {
                domain: String::new(),
                reason: "internal error: the signer panicked".into(),
            })
        });
        // The submitter may have gone away (connection closed); nothing to do.
        let _ = reply.send(SignJobOutcome {
            message: job.message,
            result,
        });
    }
}

impl Drop for SigningPool {
    /// Finishes the queued jobs, then joins the threads.
    fn drop(&mut self) {
        self.sender = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}
