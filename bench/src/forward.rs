//! `spate-bench forward`: a plain TCP forwarder, the least any relay does.
//!
//! Each accepted connection gets one to `--to`; every byte read from either
//! side is written to the other, through a user-space buffer, as a relay
//! that must see the bytes (to parse SMTP, to store them) reads and writes
//! them. Nothing else: no SMTP, no disk, no queue. `relay --compare forward`
//! runs it between the same injector and sink as the raw pipeline: what it
//! reaches there is a ceiling for any relay on that machine, spate
//! included, because every relay pays at least its two socket ends per byte.
//!
//! Threads each run a compio (io_uring) runtime with their own listening
//! socket on the same address (`SO_REUSEPORT`: the kernel spreads the
//! connections), like spate's shards.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use compio::BufResult;
use compio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;

/// Bytes read per system call in each direction of a connection.
const FORWARD_BUFFER_BYTES: usize = 64 * 1024;

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

/// Runs `spate-bench forward` until SIGINT or SIGTERM.
pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    crate::ensure_loopback(args.listen, args.allow_remote)?;
    crate::ensure_loopback(args.to, args.allow_remote)?;
    anyhow::ensure!(args.threads > 0, "--threads must be at least 1");
    for n in 0..args.threads {
        let listener = spate::listener::bind_shard_socket(args.listen)
            .with_context(|| format!("binding {}", args.listen))?;
        let to = args.to;
        std::thread::Builder::new()
            .name(format!("bench-forward-{n}"))
            .spawn(move || serve(listener, to))
            .context("starting a forwarder thread")?;
    }
    println!(
        "forwarding {} -> {} on {} threads",
        args.listen, args.to, args.threads
    );
    crate::wait_for_signal();
    Ok(())
}

fn serve(listener: std::net::TcpListener, to: SocketAddr) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("forward: starting compio runtime")?;
    runtime.block_on(async move {
        let listener = compio::net::TcpListener::from_std(listener)?;
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                compio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            compio::runtime::spawn(async move {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    return; // dropping `inbound` closes it
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let up = compio::runtime::spawn(pump(in_read, out_write));
                pump(out_read, in_write).await;
                let _ = up.await;
            })
            .detach();
        }
    })
}

/// Copies `from` to `to` until end of stream or an error, then shuts down
/// `to`'s sending side so the far end sees the close.
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
