//! `spate-bench forward`: a plain TCP forwarder, the least any relay does.
//!
//! Each accepted connection gets one to `--to`; every byte read from either
//! side is written to the other, through a user-space buffer, as a relay
//! that must see the bytes (to parse SMTP, to store them) reads and writes
//! them. Nothing else: no SMTP, no disk, no queue. `relay --compare forward`
//! runs it between the same injector and sink as the raw pipeline, as a
//! reference for the cost per byte of a relay's two socket ends. It is not
//! an upper bound for an MTA: one that answers its clients itself and
//! delivers over fewer, pipelined connections can spend less per message
//! than a forwarder that mirrors every client connection and puts both hops
//! into every SMTP round trip (spate matched it at 2 KB / 200 connections).
//!
//! Threads each run a compio (io_uring) runtime with their own listening
//! socket on the same address (`SO_REUSEPORT`: the kernel spreads the
//! connections), like spate's shards.
//!
//! With `--write-dir`, each thread also stores every byte its clients send
//! in a file of its own as spate's spool does: copied into a pending
//! buffer, written in batches with one `pwrite` on the thread, each batch
//! `fdatasync`ed through io_uring before the next is taken (group commit).
//! That is what storing the mail adds to the least a relay does. It does
//! not hold back the server's replies until their bytes are synced, so it
//! is a floor for the CPU of a relay that stores what it forwards, not for
//! its latency.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;

/// Bytes read per system call in each direction of a connection.
const FORWARD_BUFFER_BYTES: usize = 64 * 1024;
/// Most forwarding threads (`--threads`).
pub const FORWARD_THREADS_MAX: usize = 64;
/// Most connections forwarded at once (two buffers each); more are closed
/// as soon as they are accepted.
pub const FORWARD_CONNECTIONS_MAX: usize = 20_000;
/// How long a connection whose far side closed waits for the near side to
/// finish sending before both are dropped.
const HALF_CLOSED_WAIT: Duration = Duration::from_secs(10);
/// With `--write-dir`, each thread's file wraps to its start at this size,
/// so a long run does not fill the disk (a segment of spate's spool is
/// 64 MiB; spate reuses finished ones likewise).
pub const FORWARD_FILE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Address to accept connections on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address every accepted connection is forwarded to.
    #[arg(long)]
    pub to: SocketAddr,
    /// Threads, each with its own io_uring runtime and listening socket.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Allow addresses outside loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// Also write every byte the clients send to a file per thread in this
    /// directory, fdatasynced while new data arrives (see the module docs).
    #[arg(long)]
    pub write_dir: Option<PathBuf>,
}

impl ForwardArgs {
    /// Refuses addresses off loopback (unless allowed) and a thread count
    /// outside 1..=[`FORWARD_THREADS_MAX`].
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::ensure_loopback(self.listen, self.allow_remote)?;
        crate::ensure_loopback(self.to, self.allow_remote)?;
        anyhow::ensure!(
            (1..=FORWARD_THREADS_MAX).contains(&self.threads),
            "--threads must be between 1 and {FORWARD_THREADS_MAX}"
        );
        Ok(())
    }
}

/// Runs `spate-bench forward` until SIGINT or SIGTERM. A thread that fails
/// later ends the process with status 1.
pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    args.validate()?;
    start(
        args.listen,
        args.to,
        args.threads,
        args.write_dir.as_deref(),
    )?;
    println!(
        "forwarding {} -> {} on {} threads{}",
        args.listen,
        args.to,
        args.threads,
        args.write_dir.as_deref().map_or(String::new(), |d| format!(
            ", writing what clients send under {}",
            d.display()
        ))
    );
    crate::wait_for_signal();
    Ok(())
}

/// Starts `threads` forwarding threads on `listen` and returns once every
/// one accepts connections (or the first error). With `write_dir`, each
/// thread writes what its clients send to `forward-N.dat` there.
pub fn start(
    listen: SocketAddr,
    to: SocketAddr,
    threads: usize,
    write_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let open = Arc::new(AtomicUsize::new(0));
    for n in 0..threads {
        let listener = spate::listener::bind_shard_socket(listen)
            .with_context(|| format!("binding {listen}"))?;
        let file = match write_dir {
            Some(dir) => {
                let path = dir.join(format!("forward-{n}.dat"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Some(file)
            }
            None => None,
        };
        let ready = ready_tx.clone();
        let open = open.clone();
        std::thread::Builder::new()
            .name(format!("bench-forward-{n}"))
            .spawn(move || {
                if let Err(e) = serve(listener, to, file, &ready, &open) {
                    // Before it was ready the starter reports it; after, a
                    // forwarder short of a thread would measure wrong.
                    if ready.send(Err(anyhow::anyhow!("{e:#}"))).is_err() {
                        eprintln!("spate-bench forward: thread {n}: {e:#}");
                        std::process::exit(1);
                    }
                }
            })
            .context("starting a forwarder thread")?;
    }
    drop(ready_tx);
    for _ in 0..threads {
        ready_rx
            .recv()
            .context("a forwarder thread ended before it was ready")??;
    }
    Ok(())
}

fn serve(
    listener: std::net::TcpListener,
    to: SocketAddr,
    file: Option<std::fs::File>,
    ready: &mpsc::Sender<anyhow::Result<()>>,
    open: &Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("forward: starting compio runtime")?;
    runtime.block_on(async move {
        let listener = compio::net::TcpListener::from_std(listener)?;
        let store = file.map(Store::new);
        if let Some(store) = &store {
            compio::runtime::spawn(store.clone().sync_loop()).detach();
        }
        let _ = ready.send(Ok(()));
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                compio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if open.fetch_add(1, Ordering::Relaxed) >= FORWARD_CONNECTIONS_MAX {
                open.fetch_sub(1, Ordering::Relaxed);
                continue; // dropping `inbound` closes it
            }
            let open = open.clone();
            let store = store.clone();
            compio::runtime::spawn(async move {
                forward(inbound, to, store).await;
                open.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
        }
    })
}

/// One connection: `inbound` to a new connection to `to` and back; what
/// the client sends also goes to `store`, when there is one.
async fn forward(inbound: TcpStream, to: SocketAddr, store: Option<Store>) {
    let Ok(outbound) = TcpStream::connect(to).await else {
        return; // dropping `inbound` closes it
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = compio::runtime::spawn(pump(in_read, out_write, store));
    pump(out_read, in_write, None).await;
    // The far side closed: give the near side a while to finish, then drop
    // both (dropping `up` cancels it).
    let _ = compio::time::timeout(HALF_CLOSED_WAIT, up).await;
}

/// Copies `from` to `to` until end of stream or an error, then shuts down
/// `to`'s sending side so the far end sees the close. A reset on `from`
/// reaches `to` as an orderly close: a benchmark reference needs no more.
async fn pump(mut from: TcpStream, mut to: TcpStream, store: Option<Store>) {
    let mut buf = Vec::with_capacity(FORWARD_BUFFER_BYTES);
    loop {
        buf.clear();
        let BufResult(read, back) = from.read(buf).await;
        buf = back;
        match read {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        if let Some(store) = &store {
            store.write(&buf);
        }
        let BufResult(written, back) = to.write_all(buf).await;
        buf = back;
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One thread's file for `--write-dir`, written as spate's spool writes:
/// what the thread's clients send is copied into a pending buffer, and a
/// task takes all of it at once, writes it with one `pwrite` on the thread
/// at a position that wraps at [`FORWARD_FILE_BYTES`], `fdatasync`s it
/// through io_uring, and starts again (group commit, without anyone waiting
/// for it).
#[derive(Clone)]
struct Store(Rc<StoreInner>);

struct StoreInner {
    file: compio::fs::File,
    pending: RefCell<Vec<u8>>,
    pos: Cell<u64>,
    syncer: Cell<Option<Waker>>,
}

impl Store {
    fn new(file: std::fs::File) -> Store {
        use std::os::fd::{FromRawFd, IntoRawFd};
        Store(Rc::new(StoreInner {
            // SAFETY: `into_raw_fd` hands over the descriptor's ownership,
            // which the compio file takes (and closes on drop).
            file: unsafe { compio::fs::File::from_raw_fd(file.into_raw_fd()) },
            pending: RefCell::new(Vec::new()),
            pos: Cell::new(0),
            syncer: Cell::new(None),
        }))
    }

    /// Queues `bytes` for the next write and wakes the writer.
    fn write(&self, bytes: &[u8]) {
        self.0.pending.borrow_mut().extend_from_slice(bytes);
        if let Some(w) = self.0.syncer.take() {
            w.wake();
        }
    }

    /// Writes and syncs whatever is pending, one batch at a time; waits
    /// without polling while nothing is.
    async fn sync_loop(self) {
        let mut batch = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let mut pending = self.0.pending.borrow_mut();
                if pending.is_empty() {
                    self.0.syncer.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    std::mem::swap(&mut *pending, &mut batch);
                    Poll::Ready(())
                }
            })
            .await;
            let written = self.pwrite(&batch);
            batch.clear();
            if written.is_err() || self.0.file.sync_data().await.is_err() {
                // A benchmark reference: say so and stop storing; the
                // leg's figures then show it.
                eprintln!("spate-bench forward: writing the file failed; no more writes");
                return;
            }
        }
    }

    /// `pwrite` on this thread (a buffered write into the page cache, as
    /// spate's spool does), at the file's position, wrapping to its start.
    fn pwrite(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::fs::FileExt;
        let mut pos = self.0.pos.get();
        if pos + bytes.len() as u64 > FORWARD_FILE_BYTES {
            pos = 0;
        }
        // SAFETY: a second `File` over the store's open descriptor, used for
        // this call only and never dropped (so never closed): the store
        // keeps owning it.
        let borrowed = std::mem::ManuallyDrop::new(unsafe {
            std::fs::File::from_raw_fd(self.0.file.as_raw_fd())
        });
        borrowed.write_all_at(bytes, pos)?;
        self.0.pos.set(pos + bytes.len() as u64);
        Ok(())
    }
}
