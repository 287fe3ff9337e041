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

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks a child that runs only async-signal-safe calls: `_exit(code)`, or a `pause()`
    /// that only a signal ends.
    fn fork_child(exit_code: Option<libc::c_int>) -> libc::pid_t {
        // SAFETY: the child calls only async-signal-safe functions (pause, _exit) before it
        // exits, so the other threads of the test harness do not matter.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                if let Some(code) = exit_code {
                    libc::_exit(code);
                }
                libc::pause();
                libc::_exit(0);
            }
        }
        pid
    }

    #[test]
    fn an_exiting_child_gives_its_status() {
        let pid = fork_child(Some(7));
        let status = wait_child(pid, Duration::from_secs(30)).unwrap();
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 7);
    }

    #[test]
    fn a_hung_child_is_killed_and_reaped() {
        let pid = fork_child(None);
        let err = wait_child(pid, Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // Reaped: the pid is no child of ours any more.
        // SAFETY: waitpid with WNOHANG and no status pointer touches no memory of ours.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(r, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ECHILD)
        );
    }
}
