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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
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
    start(args.listen, args.to, args.threads)?;
    println!(
        "forwarding {} -> {} on {} threads",
        args.listen, args.to, args.threads
    );
    crate::wait_for_signal();
    Ok(())
}

/// Starts `threads` forwarding threads on `listen` and returns once every
/// one accepts connections (or the first error).
pub fn start(listen: SocketAddr, to: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let open = Arc::new(AtomicUsize::new(0));
    for n in 0..threads {
        let listener = spate::listener::bind_shard_socket(listen)
            .with_context(|| format!("binding {listen}"))?;
        let ready = ready_tx.clone();
        let open = open.clone();
        std::thread::Builder::new()
            .name(format!("bench-forward-{n}"))
            .spawn(move || {
                if let Err(e) = serve(listener, to, &ready, &open) {
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
    ready: &mpsc::Sender<anyhow::Result<()>>,
    open: &Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("forward: starting compio runtime")?;
    runtime.block_on(async move {
        let listener = compio::net::TcpListener::from_std(listener)?;
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
            compio::runtime::spawn(async move {
                forward(inbound, to).await;
                open.fetch_sub(1, Ordering::Relaxed);
            })
            .detach();
        }
    })
}

/// One connection: `inbound` to a new connection to `to` and back.
async fn forward(inbound: TcpStream, to: SocketAddr) {
    let Ok(outbound) = TcpStream::connect(to).await else {
        return; // dropping `inbound` closes it
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = compio::runtime::spawn(pump(in_read, out_write));
    pump(out_read, in_write).await;
    // The far side closed: give the near side a while to finish, then drop
    // both (dropping `up` cancels it).
    let _ = compio::time::timeout(HALF_CLOSED_WAIT, up).await;
}

/// Copies `from` to `to` until end of stream or an error, then shuts down
/// `to`'s sending side so the far end sees the close. A reset on `from`
/// reaches `to` as an orderly close: a benchmark reference needs no more.
async fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = Vec::with_capacity(FORWARD_BUFFER_BYTES);
    loop {
        buf.clear();
        let BufResult(read, back) = from.read(buf).await;
        buf = back;
        match read {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        let BufResult(written, back) = to.write_all(buf).await;
        buf = back;
        if written.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
