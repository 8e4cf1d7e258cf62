//! `spate-bench forward`: a plain TCP forwarder, the least any relay does.
//!
//! Each accepted connection gets one to `--to`; every byte read from either
//! side is written to the other, through a user-space buffer, as a relay
//! that must see the bytes (to parse SMTP, to store them) reads and writes
//! them. Nothing else (unless `--write-dir`, below): no SMTP, no disk, no
//! queue. `relay --compare forward` runs it between the same injector and
//! sink as the raw pipeline, as a reference for the cost per byte of a
//! relay's two socket ends. It is not an upper bound for an MTA: one that
//! answers its clients itself and delivers over fewer, pipelined
//! connections can spend less per message than a forwarder that mirrors
//! every client connection and puts both hops into every SMTP round trip
//! (spate matched it at 2 KB / 200 connections).
//!
//! Threads each run a compio (io_uring) runtime with their own listening
//! socket on the same address (`SO_REUSEPORT`: the kernel spreads the
//! connections), like spate's shards.
//!
//! With `--write-dir`, each thread also stores every byte its clients send
//! in a file of its own as spate's spool does: copied into a pending
//! buffer, written in batches with one `pwrite` on the thread, each batch
//! `fdatasync`ed through io_uring before the next is taken (group commit);
//! with `--direct`, each batch is written with O_DIRECT and O_DSYNC instead
//! (`relay --compare forward-write` and `forward-direct`). That is what
//! storing the mail adds to a plain forwarder: a reference for a relay that
//! stores what it forwards, not a bound. It holds no reply back for its
//! sync, its writes may trail the forwarding by up to the pending bound (so
//! its figures err in its favour), and it stores the commands and not the
//! replies; but it also forwards every client connection as a connection of
//! its own, where an MTA answers its clients itself.

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
use compio::buf::{IntoInner, IoBuf};
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
    /// With --write-dir: write the files with O_DIRECT and O_DSYNC (each
    /// batch padded to a 4 KiB block, written by io_uring from an aligned
    /// buffer, durable when the write completes) instead of through the
    /// page cache and fdatasync.
    #[arg(long, requires = "write_dir")]
    pub direct: bool,
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
    let writes = args.write_dir.as_deref().map(|dir| Writes {
        dir,
        direct: args.direct,
    });
    start(args.listen, args.to, args.threads, writes)?;
    println!(
        "forwarding {} -> {} on {} threads{}",
        args.listen,
        args.to,
        args.threads,
        args.write_dir.as_deref().map_or(String::new(), |d| format!(
            ", writing what clients send under {}{}",
            d.display(),
            if args.direct { " (O_DIRECT)" } else { "" }
        ))
    );
    crate::wait_for_signal();
    Ok(())
}

/// Where and how the forwarder stores what clients send (`--write-dir`).
#[derive(Debug, Clone, Copy)]
pub struct Writes<'a> {
    pub dir: &'a Path,
    /// O_DIRECT and O_DSYNC instead of the page cache and fdatasync.
    pub direct: bool,
}

/// Starts `threads` forwarding threads on `listen` and returns once every
/// one accepts connections (or the first error). With `writes`, each
/// thread stores what its clients send in `forward-N.dat` in its directory,
/// made [`FORWARD_FILE_BYTES`] long up front (as spate makes its segments).
pub fn start(
    listen: SocketAddr,
    to: SocketAddr,
    threads: usize,
    writes: Option<Writes<'_>>,
) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let open = Arc::new(AtomicUsize::new(0));
    for n in 0..threads {
        let listener = spate::listener::bind_shard_socket(listen)
            .with_context(|| format!("binding {listen}"))?;
        let store = match writes {
            Some(w) => {
                use std::os::fd::AsRawFd;
                use std::os::unix::fs::OpenOptionsExt;
                let path = w.dir.join(format!("forward-{n}.dat"));
                let mut open = std::fs::OpenOptions::new();
                open.create(true).truncate(true).read(true).write(true);
                if w.direct {
                    open.custom_flags(libc::O_DIRECT | libc::O_DSYNC);
                }
                let file = open
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                // SAFETY: fallocate on a descriptor `file` owns, no pointers.
                let made =
                    unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, FORWARD_FILE_BYTES as i64) };
                if made != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("allocating {}", path.display()));
                }
                Some((file, w.direct))
            }
            None => None,
        };
        let ready = ready_tx.clone();
        let open = open.clone();
        std::thread::Builder::new()
            .name(format!("bench-forward-{n}"))
            .spawn(move || {
                if let Err(e) = serve(listener, to, store, &ready, &open) {
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
    file: Option<(std::fs::File, bool)>,
    ready: &mpsc::Sender<anyhow::Result<()>>,
    open: &Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("forward: starting compio runtime")?;
    runtime.block_on(async move {
        let listener = compio::net::TcpListener::from_std(listener)?;
        let store = file.map(|(file, direct)| Store::new(file, direct));
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
            store.write(&buf).await;
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
/// task takes all of it at once, writes it at a position that wraps at
/// [`FORWARD_FILE_BYTES`], makes it durable, and starts again (group
/// commit, without anyone waiting for it). Buffered: one `pwrite` on the
/// thread, then `fdatasync` through io_uring. Direct: the batch, padded to
/// [`DIRECT_BLOCK_BYTES`], written through io_uring from its (aligned)
/// buffer with O_DIRECT and O_DSYNC.
#[derive(Clone)]
struct Store(Rc<StoreInner>);

struct StoreInner {
    file: compio::fs::File,
    direct: bool,
    pending: RefCell<Batch>,
    pos: Cell<u64>,
    syncer: Cell<Option<Waker>>,
    /// Connections waiting for the pending buffer to be taken.
    room: RefCell<Vec<Waker>>,
}

/// The most bytes pending before connections wait for the writer, as
/// spate's spool bounds its pending buffer (`PENDING_BYTES_MAX`).
const FORWARD_PENDING_BYTES_MAX: usize = spate::spool::PENDING_BYTES_MAX;

/// O_DIRECT's unit: buffer addresses, file positions and lengths are
/// multiples of it.
pub const DIRECT_BLOCK_BYTES: usize = 4096;

/// Pending bytes: `buf[start..]`. For O_DIRECT the data starts at an
/// aligned address; `start` skips the bytes before it.
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    start: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.buf.len() <= self.start
    }

    fn push(&mut self, bytes: &[u8], direct: bool) {
        if direct && self.buf.is_empty() {
            // Room for the most that can be pending (bytes are taken while
            // fewer than the bound are), so the buffer never moves and its
            // data stays aligned; a buffer keeps its room from batch to
            // batch, and only the pages used are ever touched.
            self.buf.reserve(
                FORWARD_PENDING_BYTES_MAX
                    + bytes.len().max(FORWARD_BUFFER_BYTES)
                    + DIRECT_BLOCK_BYTES,
            );
            self.start = self.buf.as_ptr().align_offset(DIRECT_BLOCK_BYTES);
            self.buf.resize(self.start, 0);
        }
        self.buf.extend_from_slice(bytes);
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

impl Store {
    fn new(file: std::fs::File, direct: bool) -> Store {
        use std::os::fd::{FromRawFd, IntoRawFd};
        Store(Rc::new(StoreInner {
            // SAFETY: `into_raw_fd` hands over the descriptor's ownership,
            // which the compio file takes (and closes on drop).
            file: unsafe { compio::fs::File::from_raw_fd(file.into_raw_fd()) },
            direct,
            pending: RefCell::new(Batch::default()),
            pos: Cell::new(0),
            syncer: Cell::new(None),
            room: RefCell::new(Vec::new()),
        }))
    }

    /// Queues `bytes` for the next write and wakes the writer; first waits
    /// while [`FORWARD_PENDING_BYTES_MAX`] are pending.
    async fn write(&self, bytes: &[u8]) {
        std::future::poll_fn(|cx| {
            if self.0.pending.borrow().buf.len() < FORWARD_PENDING_BYTES_MAX {
                Poll::Ready(())
            } else {
                self.0.room.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        self.0.pending.borrow_mut().push(bytes, self.0.direct);
        if let Some(w) = self.0.syncer.take() {
            w.wake();
        }
    }

    /// Writes and syncs whatever is pending, one batch at a time; waits
    /// without polling while nothing is.
    async fn sync_loop(self) {
        let mut batch = Batch::default();
        loop {
            std::future::poll_fn(|cx| {
                let mut pending = self.0.pending.borrow_mut();
                if pending.is_empty() {
                    self.0.syncer.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    std::mem::swap(&mut *pending, &mut batch);
                    for w in self.0.room.borrow_mut().drain(..) {
                        w.wake();
                    }
                    Poll::Ready(())
                }
            })
            .await;
            let stored = if self.0.direct {
                self.write_direct(&mut batch).await
            } else {
                match self.pwrite(batch.buf.get(batch.start..).unwrap_or_default()) {
                    Ok(()) => self.0.file.sync_data().await,
                    Err(e) => Err(e),
                }
            };
            batch.clear();
            if let Err(e) = stored {
                // A forwarder that stopped storing would measure as a cheap
                // one: end the process, as a failed thread does.
                eprintln!("spate-bench forward: storing what clients send failed: {e}");
                std::process::exit(1);
            }
        }
    }

    /// The position for `len` more bytes, wrapping to the file's start.
    fn position(&self, len: usize) -> u64 {
        let pos = self.0.pos.get();
        let pos = if pos + len as u64 > FORWARD_FILE_BYTES {
            0
        } else {
            pos
        };
        self.0.pos.set(pos + len as u64);
        pos
    }

    /// `pwrite` on this thread (a buffered write into the page cache), with
    /// spate's spool's own call.
    fn pwrite(&self, bytes: &[u8]) -> std::io::Result<()> {
        let pos = self.position(bytes.len());
        spate::spool::pwrite_all(&self.0.file, bytes, pos)
    }

    /// The batch padded with zeros to whole blocks and written through
    /// io_uring with O_DIRECT (and O_DSYNC: durable once written). A batch
    /// whose buffer moved while it grew is first copied to an aligned one.
    async fn write_direct(&self, batch: &mut Batch) -> std::io::Result<()> {
        use compio::io::AsyncWriteAtExt;
        let aligned = (batch.buf.as_ptr() as usize + batch.start) % DIRECT_BLOCK_BYTES == 0;
        if !aligned {
            let mut copy = Batch::default();
            copy.push(batch.buf.get(batch.start..).unwrap_or_default(), true);
            *batch = copy;
        }
        let len = (batch.buf.len() - batch.start).next_multiple_of(DIRECT_BLOCK_BYTES);
        batch.buf.resize(batch.start + len, 0);
        let pos = self.position(len);
        let start = batch.start;
        let buf = std::mem::take(&mut batch.buf);
        let mut file = &self.0.file;
        let BufResult(res, slice) = file.write_all_at(buf.slice(start..start + len), pos).await;
        batch.buf = slice.into_inner();
        res
    }
}
