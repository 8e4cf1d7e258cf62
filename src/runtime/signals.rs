//! Process signals, turned into control events on a plain thread.
//!
//! The signals spate acts on (SIGTERM, SIGINT, SIGHUP) are blocked in every
//! thread before the shards start, so they are only ever taken by the
//! control thread's `sigwait`. A shard never sees a signal handler run on
//! its stack, and the control plane decides what each signal means.

use std::io;

/// What a signal asks the process to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGTERM or SIGINT: stop accepting, finish in-flight work, sync, exit.
    Shutdown,
    /// SIGHUP: reload the configuration.
    Reload,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write into the set we own; the
    // zeroed value is a valid starting point that sigemptyset overwrites.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread
/// it spawns afterwards. Call first thing in `main`.
pub fn block_handled_signals() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: pthread_sigmask reads the set we built and changes only this
    // thread's mask; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for the next handled signal. Only meaningful after
/// [`block_handled_signals`].
pub fn wait() -> io::Result<SignalEvent> {
    let set = handled_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads our set and writes the signal number into `sig`,
    // a valid local.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(if sig == libc::SIGHUP {
        SignalEvent::Reload
    } else {
        SignalEvent::Shutdown
    })
}
