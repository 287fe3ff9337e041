//! The two system calls everything goes through: `ioctl(2)` and `read(2)` on the userfaultfd.

use std::os::fd::{AsRawFd, BorrowedFd};

use libc::c_void;
use nix::errno::Errno;

/// `ioctl(fd, request, arg)`, returning the kernel's non-negative result or its errno.
///
/// # Safety
///
/// `arg` must be what `request` expects: a pointer to a live, properly sized and initialised
/// argument struct the kernel may read (and, for `_IOWR`/`_IOR` requests, write) for the duration
/// of the call, or the by-value integer argument for `_IO` requests. The caller is responsible for
/// the memory effects of the request itself (e.g. `UFFDIO_COPY` writing into the destination).
pub(crate) unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: *mut T) -> Result<i32, Errno> {
    // SAFETY: the caller guarantees `arg` matches `request`; `fd` is a live descriptor for the
    // borrow's lifetime. The request number is passed as the C library's ioctl request type.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// One `read(fd, buf, len)` into a buffer of `len` bytes. `EINTR` is returned, not retried:
/// the caller decides whether a signal ends its wait.
///
/// # Safety
///
/// `buf` must be valid for writes of `len` bytes.
pub(crate) unsafe fn read(
    fd: BorrowedFd<'_>,
    buf: *mut c_void,
    len: usize,
) -> Result<usize, Errno> {
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes; `fd` is live.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf, len) };
    if n >= 0 {
        Ok(n as usize)
    } else {
        Err(Errno::last())
    }
}
