//! The test's child processes: their output collected line by line, and a bounded wait for
//! their exit.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Lines a child printed, and a condition variable signalled at each new line and at the end.
#[derive(Default)]
pub(super) struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    pub(super) fn collect(pipe: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let l = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                l.lines.lock().unwrap().0.push(line);
                l.changed.notify_all();
            }
            l.lines.lock().unwrap().1 = true;
            l.changed.notify_all();
        });
        lines
    }

    /// Waits at most `timeout` for a line (from the start) that `pred` accepts.
    pub(super) fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        loop {
            if let Some(l) = g.0.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if g.1 || left.is_zero() {
                return None;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits at most `timeout` for `n` lines that `pred` accepts.
    pub(super) fn wait_count(
        &self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        loop {
            let found: Vec<String> = g.0.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if g.1 || left.is_zero() {
                return None;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }

    pub(super) fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().0.clone()
    }

    /// Waits at most `timeout` for the pipe's end.
    pub(super) fn wait_end(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        while !g.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }
}

/// Waits at most `timeout` for `child` to exit (a pidfd, no sleeping); `None` on time-out.
pub(super) fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; the child is not
    // reaped yet (try_wait said so), so its pid names it.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
    assert!(raw >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, as the count says.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if n > 0 {
            return Some(child.wait().expect("wait"));
        }
        if n == 0 {
            return None;
        }
    }
}
