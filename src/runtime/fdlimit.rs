//! The process's file-descriptor budget.
//!
//! Owns raising `RLIMIT_NOFILE` to its hard limit at start, the share of
//! descriptors outbound connections may take (everything but
//! [`FD_RESERVE`], kept for the listeners, the admin API, spool segments and
//! DNS), and reporting descriptor exhaustion once per interval instead of
//! once per failure. Callers decide what to do when the budget is spent:
//! delivery waits and retries; the acceptor sleeps briefly.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Descriptors kept back from outbound connections so that the listeners
/// keep accepting, the admin API keeps answering and spool segments and DNS
/// sockets can still be opened while delivery holds every connection it
/// may. Inbound sessions beyond this share compete with outbound ones.
pub const FD_RESERVE: u64 = 512;

/// Below this limit spate still runs, but warns: a few hundred connections
/// is not what an MTA is for.
pub const FD_LIMIT_WARN_BELOW: u64 = 4096;

/// Exhaustion is logged at most once per this interval, with a count.
pub const FD_EXHAUSTION_LOG_INTERVAL_MS: u64 = 60_000;

/// Highest descriptor number an outbound socket may get. Linux hands out
/// the lowest free number, so a new socket numbered at or above this means
/// the process already holds at least this many descriptors. Set by
/// [`raise_nofile_limit`]; until then, no cap.
static OUTBOUND_FD_MAX: AtomicU64 = AtomicU64::new(u64::MAX);
/// Times a descriptor could not be had (EMFILE/ENFILE or over budget).
static EXHAUSTED_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Exhaustions not yet reported in a log line.
static EXHAUSTED_UNLOGGED: AtomicU64 = AtomicU64::new(0);
/// When the last exhaustion line was logged (ms on the process clock, +1 so
/// that 0 means never).
static EXHAUSTED_LOGGED_AT_MS: AtomicU64 = AtomicU64::new(0);

/// What [`raise_nofile_limit`] found and set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
    /// Descriptors outbound connections may use.
    pub outbound_max: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at what the
/// kernel accepts, `fs.nr_open`) and sets the outbound budget from the
/// result. On failure the current soft limit stays and is used.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft_before = lim.rlim_cur;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = lim.rlim_max.min(nr_open).max(soft_before);
    let mut soft = soft_before;
    if target > soft_before {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit struct through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            soft = target;
        } else {
            let e = io::Error::last_os_error();
            tracing::warn!(error = %e, soft = soft_before, "cannot raise the open-files limit");
        }
    }
    let outbound_max = outbound_budget(soft);
    OUTBOUND_FD_MAX.store(outbound_max, Relaxed);
    Ok(NofileLimit {
        soft_before,
        soft,
        hard: lim.rlim_max,
        outbound_max,
    })
}

/// Outbound descriptors allowed under a soft limit of `soft`: all but the
/// reserve, or half when the limit is so low the reserve would eat it.
pub fn outbound_budget(soft: u64) -> u64 {
    if soft > 2 * FD_RESERVE {
        soft - FD_RESERVE
    } else {
        soft / 2
    }
}

/// Whether a freshly created outbound socket numbered `fd` is within the
/// outbound budget.
pub fn outbound_fd_allowed(fd: i32) -> bool {
    u64::try_from(fd).is_ok_and(|fd| fd < OUTBOUND_FD_MAX.load(Relaxed))
}

/// Whether an error means this process (or the system) ran out of
/// descriptors or socket memory, rather than the peer failing.
pub fn is_local_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// As [`is_local_exhaustion`], for `connect(2)`, where EADDRNOTAVAIL means
/// no ephemeral port was free. (At `bind(2)` it means the source address is
/// not on this host: a configuration error, which this must not hide.)
pub fn is_local_exhaustion_at_connect(error: &io::Error) -> bool {
    is_local_exhaustion(error) || error.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// Counts one exhaustion and logs a warning if none was logged within
/// [`FD_EXHAUSTION_LOG_INTERVAL_MS`] (the line carries how many happened
/// since the last one).
pub fn note_exhaustion(what: &'static str, error: Option<&io::Error>) {
    EXHAUSTED_TOTAL.fetch_add(1, Relaxed);
    EXHAUSTED_UNLOGGED.fetch_add(1, Relaxed);
    let now = crate::runtime::local::now_ms().saturating_add(1);
    let last = EXHAUSTED_LOGGED_AT_MS.load(Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= FD_EXHAUSTION_LOG_INTERVAL_MS;
    if due
        && EXHAUSTED_LOGGED_AT_MS
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    {
        let count = EXHAUSTED_UNLOGGED.swap(0, Relaxed);
        let error = error.map(ToString::to_string).unwrap_or_default();
        tracing::warn!(
            what,
            error,
            count,
            outbound_max = OUTBOUND_FD_MAX.load(Relaxed),
            "out of file descriptors: waiting for connections to close (logged at most once a minute)"
        );
    }
}

/// Exhaustions since start.
pub fn exhausted_total() -> u64 {
    EXHAUSTED_TOTAL.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_reserve() {
        assert_eq!(outbound_budget(20_000), 20_000 - FD_RESERVE);
        assert_eq!(outbound_budget(1024), 512);
        assert_eq!(outbound_budget(100), 50);
    }

    #[test]
    fn exhaustion_classes() {
        assert!(is_local_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        let no_port = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(!is_local_exhaustion(&no_port));
        assert!(is_local_exhaustion_at_connect(&no_port));
        assert!(!is_local_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }

    #[test]
    fn raising_never_lowers_and_sets_the_budget() {
        let got = raise_nofile_limit().unwrap();
        assert!(got.soft >= got.soft_before);
        assert!(got.soft <= got.hard);
        assert_eq!(got.outbound_max, outbound_budget(got.soft));
        let before = exhausted_total();
        note_exhaustion("test", None);
        note_exhaustion("test", None);
        assert!(exhausted_total() >= before + 2);
    }
}
