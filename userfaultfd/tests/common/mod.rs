//! Shared helpers of the `api_*` black-box tests: raw mappings, bounded waits on a userfaultfd,
//! faulting threads, fd counting.
#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use userfaultfd::{Event, Uffd, UffdBuilder};

pub mod kernel;
pub mod moto;
pub mod serving;

/// How long a bounded wait may take before the test fails (never reached when things work).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The same, in milliseconds for poll(2).
pub const TIMEOUT_MS: i32 = 10_000;

/// The base page size.
pub fn ps() -> usize {
    userfaultfd::page_size()
}

#[allow(unused_imports)]
pub use test_kit::mapping::Map;

/// A memfd of `len` bytes.
pub fn memfd(len: usize) -> OwnedFd {
    // SAFETY: NUL-terminated name; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"uffd-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on our fd.
    let r = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    assert_eq!(r, 0);
    fd
}

/// A non-blocking, close-on-exec userfaultfd with `features`.
pub fn uffd_with(features: userfaultfd::FeatureFlags) -> Uffd {
    UffdBuilder::new()
        .non_blocking(true)
        .require_features(features)
        .create()
        .expect("create uffd")
}

/// A non-blocking userfaultfd with no features.
pub fn uffd() -> Uffd {
    uffd_with(userfaultfd::FeatureFlags::empty())
}

/// poll(2) for readability; returns the revents (0 on timeout).
pub fn poll_in(fd: impl AsFd, timeout_ms: i32) -> libc::c_short {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return if r == 0 { 0 } else { p.revents };
        }
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR)
        );
    }
}

/// Waits (bounded by [`TIMEOUT`]) for an event on a non-blocking `uffd` and reads it.
pub fn next_event(uffd: &Uffd) -> Event {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no userfaultfd event within {TIMEOUT:?}");
        let rev = poll_in(uffd, left.as_millis() as i32);
        if rev == 0 {
            continue;
        }
        assert_eq!(rev & libc::POLLIN, libc::POLLIN, "revents {rev:#x}");
        // A fault can be woken (and vanish) between poll and read: then poll again.
        if let Some(e) = uffd.read_event().expect("read_event") {
            return e;
        }
    }
}

/// Asserts the next event is a page fault and returns `(kind, rw, addr, thread_id)`.
pub fn next_fault(uffd: &Uffd) -> (userfaultfd::FaultKind, userfaultfd::ReadWrite, usize, i32) {
    match next_event(uffd) {
        Event::Pagefault {
            kind,
            rw,
            addr,
            thread_id,
        } => (kind, rw, addr as usize, thread_id.as_raw()),
        other => panic!("expected a page fault, got {other:?}"),
    }
}

/// A thread that reads byte `addr` (volatile) and sends the value.
pub fn reader(addr: usize) -> Receiver<u8> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: the caller passes an address inside a mapping that outlives the wait on `rx`
        // (tests keep the mapping until the value arrives or the test fails).
        let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
        let _ = tx.send(v);
    });
    rx
}

/// A thread that writes `v` at `addr` (volatile) and reports completion.
pub fn writer(addr: usize, v: u8) -> Receiver<()> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: as for `reader`.
        unsafe { std::ptr::write_volatile(addr as *mut u8, v) };
        let _ = tx.send(());
    });
    rx
}

/// Receives with the standard bound.
pub fn recv<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(TIMEOUT)
        .expect("faulting thread did not complete in time")
}

/// The number of open file descriptors of this process (entries of /proc/self/fd, not counting
/// the directory's own fd).
pub fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// Whether `fd` is open (fcntl F_GETFD succeeds).
pub fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD has no memory effects.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// This thread's id.
pub fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

/// The `pending:` count of `/proc/self/fdinfo/<fd>`: faults queued and not yet read.
pub fn pending_faults(uffd: &Uffd) -> usize {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", uffd.as_raw_fd())).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("pending:"))
        .expect("pending: line")
        .trim()
        .parse()
        .unwrap()
}

/// Spins (yielding) until `cond` holds, failing the test after [`TIMEOUT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::yield_now();
    }
}

/// A `Vec` of `n` bytes of `v` to copy from.
pub fn page_of(v: u8, n: usize) -> Vec<u8> {
    vec![v; n]
}

/// Runs test `name` of this test binary again in a child process, with the environment
/// variable `env` set to `name` (the test then knows it is the child: [`is_child`]); returns
/// the child's exit status and its output. Fails the test if the child runs longer than
/// [`TIMEOUT`] (waiting on a pidfd). For cases that must watch a process die of a signal, or
/// change process-wide state such as a seccomp filter.
pub fn run_child(env: &str, name: &str) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(env, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the test binary");
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    if poll_in(&pidfd, TIMEOUT_MS) == 0 {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child case {name} did not finish within {TIMEOUT:?}");
    }
    let out = child.wait_with_output().expect("child output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Whether this process is the child [`run_child`] started for test `name`.
pub fn is_child(env: &str, name: &str) -> bool {
    std::env::var(env).as_deref() == Ok(name)
}

/// Sends `fd` over the Unix socket `sock` with `SCM_RIGHTS`. Allocation-free.
pub fn send_fd(sock: RawFd, fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of_fd()) } as _;
    // SAFETY: msg_control points at `cbuf`, which is large enough for one header plus an int,
    // so CMSG_FIRSTHDR is non-null and CMSG_DATA points inside `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of_fd()) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` and everything it points to are live for the call.
    unsafe { libc::sendmsg(sock, &msg, 0) == 1 }
}

fn size_of_fd() -> u32 {
    std::mem::size_of::<RawFd>() as u32
}

/// Receives one descriptor sent by [`send_fd`].
pub fn recv_fd(sock: RawFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` points at live buffers; MSG_CMSG_CLOEXEC marks the received fd CLOEXEC.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n != 1 {
        return None;
    }
    // SAFETY: recvmsg filled `msg`; CMSG_FIRSTHDR returns null or a header inside `cbuf`.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    if c.is_null() {
        return None;
    }
    // SAFETY: `c` is a valid header inside `cbuf`.
    let (level, ty) = unsafe { ((*c).cmsg_level, (*c).cmsg_type) };
    if level != libc::SOL_SOCKET || ty != libc::SCM_RIGHTS {
        return None;
    }
    // SAFETY: an SCM_RIGHTS header carries at least one int; the kernel installed that fd in
    // this process and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast())) })
}
