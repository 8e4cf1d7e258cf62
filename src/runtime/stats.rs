//! Process-wide counters, written by the shards and read by the control
//! plane.
//!
//! Plain relaxed atomics: each is a monotonic count or a gauge where an
//! approximate snapshot is fine. Per-queue figures live with the queues on
//! their shards and travel to the control plane as snapshots.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Counters of the whole process.
#[derive(Debug, Default)]
pub struct Stats {
    pub received_messages: AtomicU64,
    pub received_recipients: AtomicU64,
    pub rejected_messages: AtomicU64,
    pub delivered: AtomicU64,
    pub bounced: AtomicU64,
    pub deferred: AtomicU64,
    pub expired: AtomicU64,
    pub signing_failures: AtomicU64,
    /// Times a queue had work but its rate limit said wait.
    pub rate_limit_waits: AtomicU64,
    pub connections_in: AtomicI64,
    pub connections_out: AtomicI64,
    pub queued_recipients: AtomicI64,
    pub queued_messages: AtomicI64,
    /// Bounced recipients by category, indexed like `BounceCategory::ALL`.
    pub bounced_by_category: [AtomicU64; crate::delivery::bounce::BounceCategory::ALL.len()],
}

impl Stats {
    pub fn add_received(&self, messages: u64, recipients: u64) {
        self.received_messages.fetch_add(messages, Relaxed);
        self.received_recipients.fetch_add(recipients, Relaxed);
    }
    pub fn add_rejected(&self, n: u64) {
        self.rejected_messages.fetch_add(n, Relaxed);
    }
    pub fn add_signing_failure(&self) {
        self.signing_failures.fetch_add(1, Relaxed);
    }
    pub fn connections_in_open(&self) {
        self.connections_in.fetch_add(1, Relaxed);
    }
    pub fn connections_in_closed(&self) {
        self.connections_in.fetch_sub(1, Relaxed);
    }
    pub fn connections_out_open(&self) {
        self.connections_out.fetch_add(1, Relaxed);
    }
    pub fn connections_out_closed(&self) {
        self.connections_out.fetch_sub(1, Relaxed);
    }
    /// Counts one bounced recipient under its category.
    pub fn add_bounce_category(&self, category: crate::delivery::bounce::BounceCategory) {
        let all = crate::delivery::bounce::BounceCategory::ALL;
        if let Some(i) = all.iter().position(|c| *c == category) {
            if let Some(counter) = self.bounced_by_category.get(i) {
                counter.fetch_add(1, Relaxed);
            }
        }
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// Bytes available to unprivileged users on the file system holding
/// `path` (statvfs `f_bavail * f_frsize`); `None` when it cannot be read.
pub fn fs_available_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the
    // call, and `st` points to writable memory of the size statvfs fills.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct (and it
    // was zeroed before anyway).
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // reason: the statvfs field types differ between targets
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
