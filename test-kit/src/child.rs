//! A bounded wait for a child process (no sleeping: a pidfd is polled).

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::wait::{wait_readable, Wait};

/// Waits at most `timeout` for process `pid` (a child) to exit and returns its wait status
/// (as `waitpid(2)` reports it). On timeout the child is killed with `SIGKILL`, reaped, and an
/// error is returned. Uses a pidfd (Linux 5.3) so the wait is bounded without sleeping.
pub fn wait_child(pid: libc::pid_t, timeout: Duration) -> io::Result<libc::c_int> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open succeeded; the fd is owned only here.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd as i32) };
    let timed_out = wait_readable(&[pfd.as_fd()], None, timeout)? == Wait::TimedOut;
    if timed_out {
        // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live c_int for waitpid to write.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if timed_out {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("child {pid} did not exit within {timeout:?}; killed"),
        ));
    }
    Ok(status)
}
