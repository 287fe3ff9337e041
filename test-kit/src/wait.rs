//! Bounded waits on file descriptors with `poll(2)`, with a stop signal (an `eventfd(2)`) that
//! handler threads watch besides their userfaultfd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An `eventfd(2)` that tells handler threads to stop; [`wait_readable`] watches it.
#[derive(Debug)]
pub struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    /// A new, unsignalled stop signal.
    pub fn new() -> io::Result<StopSignal> {
        // SAFETY: eventfd takes two integers and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd succeeded; the new fd is owned only here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignal { fd })
    }

    /// Signals every thread waiting on it, now and later.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd, as eventfd(2) requires.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsFd for StopSignal {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The fd at this index of `fds` is readable (or hung up).
    Ready(usize),
    /// The stop signal fired.
    Stopped,
    /// Nothing happened within the timeout.
    TimedOut,
}

/// Waits (with `poll(2)`, allocation-free) until one of `fds` (at most 8) is readable, `stop`
/// fires, or `timeout` passes. A userfaultfd must be non-blocking to be polled.
pub fn wait_readable(
    fds: &[BorrowedFd<'_>],
    stop: Option<&StopSignal>,
    timeout: Duration,
) -> io::Result<Wait> {
    assert!(fds.len() <= 8, "wait_readable watches at most 8 fds");
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 9];
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = libc::POLLIN;
    }
    let n = fds.len();
    if let Some(s) = stop {
        pfds[n].fd = s.fd.as_raw_fd();
        pfds[n].events = libc::POLLIN;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfds` is a live array of n+1 initialised pollfds (entries with fd -1 are
        // ignored by the kernel).
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), (n + 1) as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfds[n].revents != 0 {
            return Ok(Wait::Stopped);
        }
        if let Some(i) = pfds[..n].iter().position(|p| p.revents != 0) {
            if pfds[i].revents & libc::POLLERR != 0 {
                return Err(io::Error::other(
                    "poll reported POLLERR (a userfaultfd must be non-blocking to be polled)",
                ));
            }
            return Ok(Wait::Ready(i));
        }
        if r == 0 && left.is_zero() {
            return Ok(Wait::TimedOut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_wakes_the_wait() {
        let s = StopSignal::new().unwrap();
        let never = StopSignal::new().unwrap();
        assert_eq!(
            wait_readable(&[never.as_fd()], Some(&s), Duration::from_millis(1)).unwrap(),
            Wait::TimedOut
        );
        s.signal();
        assert_eq!(
            wait_readable(&[never.as_fd()], Some(&s), Duration::from_secs(5)).unwrap(),
            Wait::Stopped
        );
    }
}
