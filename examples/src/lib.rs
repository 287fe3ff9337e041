//! Shared helpers of the example programs: argument parsing with usage messages, a
//! deterministic page pattern and its verifier, a small random number generator, a bounded
//! `poll(2)` wait with a stop signal for handler threads, and a bounded wait for child processes.
//!
//! Every example runs with no arguments, verifies what it did, prints what it measured and exits
//! with status 0 on success, 1 when verification (or the run) fails, and 2 with a usage message
//! for bad arguments.

use std::fmt::Display;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Exit status for a bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a failed run or verification.
pub const EXIT_FAILURE: u8 = 1;

/// The base page size.
pub fn page_size() -> usize {
    userfaultfd::page_size()
}

/// A command line: the arguments after the program name, with the program's usage text.
///
/// Parsing never panics: every problem ends in [`Args::usage_error`], which prints the message and
/// the usage to stderr and exits with status [`EXIT_USAGE`].
#[derive(Debug)]
pub struct Args {
    usage: &'static str,
    args: std::vec::IntoIter<String>,
}

impl Args {
    /// The process's arguments. `usage` is printed for `--help` (to stdout, status 0) and after
    /// any error (to stderr, status 2).
    pub fn from_env(usage: &'static str) -> Args {
        Args::new(usage, std::env::args().skip(1).collect())
    }

    /// Arguments from a vector (for tests).
    pub fn new(usage: &'static str, args: Vec<String>) -> Args {
        Args {
            usage,
            args: args.into_iter(),
        }
    }

    /// The next argument, if any. `--help`/`-h` print the usage and exit 0.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<String> {
        let a = self.args.next()?;
        if a == "--help" || a == "-h" {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        Some(a)
    }

    /// The value following option `flag`, parsed as `T`.
    pub fn value<T: FromStr>(&mut self, flag: &str) -> T
    where
        T::Err: Display,
    {
        match self.args.next() {
            Some(v) => match v.parse() {
                Ok(x) => x,
                Err(e) => self.usage_error(&format!("bad value {v:?} for {flag}: {e}")),
            },
            None => self.usage_error(&format!("{flag} needs a value")),
        }
    }

    /// The value following option `flag`, parsed as `T` and checked to lie in `lo..=hi`.
    pub fn value_in<T: FromStr + PartialOrd + Display + Copy>(
        &mut self,
        flag: &str,
        lo: T,
        hi: T,
    ) -> T
    where
        T::Err: Display,
    {
        let v: T = self.value(flag);
        if v < lo || v > hi {
            self.usage_error(&format!("{flag} must be between {lo} and {hi}, not {v}"));
        }
        v
    }

    /// Prints `msg` and the usage to stderr and exits with status [`EXIT_USAGE`].
    pub fn usage_error(&self, msg: &str) -> ! {
        eprintln!("error: {msg}\n\n{}", self.usage);
        std::process::exit(EXIT_USAGE.into())
    }

    /// Rejects an argument nobody recognised.
    pub fn unknown(&self, arg: &str) -> ! {
        self.usage_error(&format!("unexpected argument {arg:?}"))
    }
}

/// Turns the outcome of an example's `run` into its exit status, printing the error.
pub fn finish(name: &str, result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A boxed error from a message.
pub fn fail(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}

/// `splitmix64`: a 64-bit mixing function; the step of [`Rng`] and of [`fill_page`].
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic random number generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `v` (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Whether page `index` of a pattern image is all zeros (about one page in eight), so that
/// restore programs exercise `UFFDIO_ZEROPAGE`.
pub fn is_zero_page(seed: u64, index: u64) -> bool {
    mix64(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d)) % 8 == 0
}

/// Fills `page` with the pattern of page `index`: every 8-byte word is a function of the seed, the
/// page index and the word's position, so a misplaced, stale or torn page is detected. Zero pages
/// ([`is_zero_page`]) are all zeros.
pub fn fill_page(seed: u64, index: u64, page: &mut [u8]) {
    if is_zero_page(seed, index) {
        page.fill(0);
        return;
    }
    for (i, w) in page.chunks_mut(8).enumerate() {
        let v = pattern_word(seed, index, i);
        w.copy_from_slice(&v.to_ne_bytes()[..w.len()]);
    }
}

/// Word `i` (8 bytes, native endian) of the pattern of page `index`, as [`fill_page`] writes it.
/// Allocation-free and async-signal-safe, so a forked child can verify with it.
pub fn pattern_word(seed: u64, index: u64, i: usize) -> u64 {
    if is_zero_page(seed, index) {
        return 0;
    }
    mix64(mix64(seed ^ (index << 20)).wrapping_add(i as u64)) | 1
}

/// Checks `page` against the pattern of page `index`; returns the offset of the first wrong byte.
pub fn check_page(seed: u64, index: u64, page: &[u8], scratch: &mut [u8]) -> Result<(), usize> {
    let expected = &mut scratch[..page.len()];
    fill_page(seed, index, expected);
    match page.iter().zip(expected.iter()).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(off) => Err(off),
    }
}

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

/// `madvise(MADV_NOHUGEPAGE)` on `[addr, addr+len)`: faults then arrive page by page, and
/// `UFFDIO_COPY` never meets a transparent huge page (`EEXIST`), as QEMU does for postcopy. For
/// raw `libc::mmap` regions; a `MemoryMapping` has `disable_hugepages`.
pub fn no_huge_pages(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: MADV_NOHUGEPAGE only changes the THP policy of the range; it never changes its
    // contents or mapping.
    if unsafe { libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// A file removed when this value is dropped, however the program ends (return or unwind).
pub struct TempFile(pub std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `pages` pattern pages of `seed` ([`fill_page`]; about one in eight all zero) to a new
/// file at `path`; returns how many are all zero.
pub fn write_pattern_file(path: &std::path::Path, pages: usize, seed: u64) -> io::Result<usize> {
    use std::io::Write;
    let mut w = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut page = vec![0u8; page_size()];
    let mut zeros = 0;
    for i in 0..pages as u64 {
        fill_page(seed, i, &mut page);
        zeros += usize::from(is_zero_page(seed, i));
        w.write_all(&page)?;
    }
    w.flush()?;
    Ok(zeros)
}

/// A source builder for the object a URL names (`s3://BUCKET/KEY`, `file:///PATH`, ...), with
/// `KEY=VALUE` settings that override the environment (see
/// `userfaultfd::serve::ObjectStoreSource::from_url`). Feature `object-store`.
#[cfg(feature = "object-store")]
pub fn object_source_builder(
    url: &str,
    options: &[String],
) -> Result<userfaultfd::serve::ObjectStoreSourceBuilder, String> {
    let mut b = userfaultfd::serve::ObjectStoreSource::from_url(url).map_err(|e| e.to_string())?;
    for o in options {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| format!("source option {o:?} is not KEY=VALUE"))?;
        b = b.option(k, v);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_detects_errors() {
        let ps = 4096;
        let mut page = vec![0u8; ps];
        let mut scratch = vec![0u8; ps];
        for index in 0..64 {
            fill_page(7, index, &mut page);
            assert_eq!(check_page(7, index, &page, &mut scratch), Ok(()));
            if !is_zero_page(7, index) {
                assert!(check_page(7, index + 1, &page, &mut scratch).is_err());
                page[100] ^= 1;
                assert_eq!(check_page(7, index, &page, &mut scratch), Err(100));
            }
        }
        assert!((0..1000).any(|i| is_zero_page(7, i)));
        assert!((0..1000).any(|i| !is_zero_page(7, i)));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Rng::new(1).shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

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
