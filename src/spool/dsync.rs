//! One io_uring submission that writes a group-commit batch and makes it
//! durable: `IORING_OP_WRITE` with `RWF_DSYNC` (the write returns once its
//! data, and the metadata needed to read it back, are on stable storage).
//! compio has no such operation, so this is a custom compio op built from the
//! `io-uring` crate's opcode. Compared with a write then an `fdatasync`, the
//! batch costs one trip through the kernel's io_uring workers instead of two,
//! and each write reports its own error (no write-back error can be claimed by
//! another batch's sync). On compio's epoll fallback driver the same
//! `pwritev2(RWF_DSYNC)` runs on its blocking thread pool.

use std::io;
use std::os::fd::AsRawFd;
use std::task::Poll;

use compio::driver::{Decision, IourOpCode, OpEntry, PollOpCode};

/// A positioned write of `buf` at `offset` with `RWF_DSYNC`.
pub(crate) struct WriteDsync {
    /// Kept open until the operation completes (compio owns the op while it
    /// is in flight, even if the awaiting future is dropped).
    file: compio::fs::File,
    buf: Vec<u8>,
    offset: u64,
}

impl WriteDsync {
    pub(crate) fn new(file: compio::fs::File, buf: Vec<u8>, offset: u64) -> Self {
        WriteDsync { file, buf, offset }
    }

    /// The buffer back, for reuse.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    fn len_u32(&self) -> u32 {
        u32::try_from(self.buf.len()).unwrap_or(u32::MAX)
    }

    fn pwritev2(&self) -> io::Result<usize> {
        let iov = libc::iovec {
            iov_base: self.buf.as_ptr() as *mut libc::c_void,
            iov_len: self.len_u32() as usize,
        };
        let offset = libc::off_t::try_from(self.offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: one iovec pointing into `self.buf`, which outlives the call;
        // the descriptor is owned by `self.file`.
        let n = unsafe { libc::pwritev2(self.file.as_raw_fd(), &iov, 1, offset, libc::RWF_DSYNC) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

// SAFETY: the entry points into `self.buf`, owned by the op, which compio
// keeps alive (and unmoved on the heap) until the completion arrives.
unsafe impl IourOpCode for WriteDsync {
    type Control = ();

    fn create_entry(&mut self, _: &mut ()) -> OpEntry {
        io_uring::opcode::Write::new(
            io_uring::types::Fd(self.file.as_raw_fd()),
            self.buf.as_ptr(),
            self.len_u32(),
        )
        .offset(self.offset)
        .rw_flags(libc::RWF_DSYNC)
        .build()
        .into()
    }

    fn call_blocking(&mut self, _: &mut ()) -> io::Result<usize> {
        self.pwritev2()
    }
}

// SAFETY: a blocking operation with no registered file descriptors to wait
// on; `operate` only reads `self`.
unsafe impl PollOpCode for WriteDsync {
    type Control = ();

    fn pre_submit(&mut self, _: &mut ()) -> io::Result<Decision> {
        Ok(Decision::Blocking)
    }

    fn operate(&mut self, _: &mut ()) -> Poll<io::Result<usize>> {
        Poll::Ready(self.pwritev2())
    }
}
