//! Hostile and wrong input: every case is its own test, asserts the exact typed error (variant,
//! operation and errno) against the running kernel, is bounded in time (a hang fails the test
//! after [`LIMIT`]) and proves that no file descriptor leaks (`/proc/self/fd` is listed before
//! and after).
//!
//! The tests of this file run one at a time (a process-wide lock), because open descriptors are
//! counted per process.

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use common::{recv_fd, send_fd, Map};
use libc::c_void;
use userfaultfd::Errno;
use userfaultfd::{
    page_size, sys, CopyMode, Error, Event, EventBuffer, FaultKind, FeatureFlags, Operation,
    RegisterMode, Uffd, UffdBuilder,
};

/// How long one test may run before it counts as hung.
const LIMIT: Duration = Duration::from_secs(20);

/// Serialises the tests of this file so that descriptor counts are exact.
static SERIAL: Mutex<()> = Mutex::new(());

/// The open descriptors of this process, with what they point to.
fn open_fds() -> BTreeMap<String, String> {
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd") {
        let entry = entry.expect("read /proc/self/fd entry");
        let target = std::fs::read_link(entry.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        fds.insert(entry.file_name().to_string_lossy().into_owned(), target);
    }
    fds
}

/// Runs `body` on its own thread, failing if it takes longer than [`LIMIT`] or leaves a
/// descriptor open. The directory stream of `/proc/self/fd` is open during both listings, so
/// it cancels out.
fn hostile<F: FnOnce() + Send + 'static>(body: F) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let before = open_fds();
    let (tx, rx) = mpsc::channel();
    // Named after the test, so that what it records (test_kit::report) names the test.
    let name = thread::current().name().unwrap_or("hostile").to_string();
    let handle = thread::Builder::new()
        .name(name)
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .expect("spawn the test body");
    match rx.recv_timeout(LIMIT) {
        Ok(()) => handle.join().expect("test body"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body returned without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => panic!("hung: no result after {LIMIT:?}"),
    }
    let after = open_fds();
    assert_eq!(before, after, "file descriptors leaked (before vs after)");
}

/// A page that is mapped nowhere, enclosed by two mapped pages that the returned `Map` owns
/// (so the hole stays a hole for as long as the `Map` lives; see [`Map::truncate_with_guard`]).
fn unmapped_page() -> (Map, usize) {
    let mut m = Map::anon(3 * page_size());
    m.truncate_with_guard(1);
    let hole = m.addr() + page_size();
    (m, hole)
}

fn new_uffd(non_blocking: bool) -> Uffd {
    UffdBuilder::new()
        .user_mode_only(true)
        .non_blocking(non_blocking)
        .create()
        .expect("create a userfaultfd")
}

/// `Error::Os` for `op` with exactly `errno`, or a panic naming what came instead.
#[track_caller]
fn assert_os<T: std::fmt::Debug>(r: userfaultfd::Result<T>, op: Operation, errno: Errno) {
    match r {
        Err(Error::Os {
            op: o, errno: e, ..
        }) if o == op && e == errno => {}
        other => panic!("expected Error::Os {{ op: {op:?}, errno: {errno:?} }}, got {other:?}"),
    }
}

/// `Error::InvalidArgument` for `op` (rejected before any system call; no errno).
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: userfaultfd::Result<T>, op: Operation) {
    match r {
        Err(e @ Error::InvalidArgument { op: o, .. }) if o == op => {
            assert_eq!(e.errno(), None);
            assert_eq!(e.operation(), Some(op));
        }
        other => panic!("expected Error::InvalidArgument {{ op: {op:?} }}, got {other:?}"),
    }
}

/// What the kernel itself says to `UFFDIO_REGISTER` of `[start, start+len)`: the library's
/// pre-checks must reject exactly what the kernel rejects with `EINVAL`.
fn kernel_register(uffd: &Uffd, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = sys::uffdio_register {
        range: sys::uffdio_range { start, len },
        mode: sys::UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `arg` is a live uffdio_register; registering changes no memory contents.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), sys::UFFDIO_REGISTER as _, &mut arg) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Waits until `fd` is readable, at most `ms` milliseconds.
fn poll_in(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0 && p.revents & libc::POLLIN != 0
}

/// Reads a page-fault event from a non-blocking `uffd`, waiting at most 5 s.
fn next_fault(uffd: &Uffd) -> (FaultKind, usize) {
    for _ in 0..50 {
        if !poll_in(uffd.as_raw_fd(), 100) {
            continue;
        }
        match uffd.read_event().expect("read_event") {
            Some(Event::Pagefault { kind, addr, .. }) => return (kind, addr as usize),
            Some(other) => panic!("unexpected event {other:?}"),
            None => continue,
        }
    }
    panic!("no page fault within 5 s");
}

#[test]
fn unaligned_ranges_are_rejected_before_the_kernel() {
    hostile(|| {
        let ps = page_size();
        let uffd = new_uffd(false);
        let m = Map::anon(4 * page_size());
        let src = Map::anon(page_size());
        let base = m.addr();
        for (start, len) in [(base + 1, ps), (base, ps + 1), (base + 8, 2 * ps - 8)] {
            let p = start as *mut c_void;
            // The kernel agrees: it says EINVAL to the same request.
            assert_eq!(
                kernel_register(&uffd, start as u64, len as u64),
                Err(Errno::EINVAL)
            );
            assert_invalid(uffd.register(p, len), Operation::Register);
            assert_invalid(uffd.unregister(p, len), Operation::Unregister);
            assert_invalid(uffd.wake(p, len), Operation::Wake);
            // SAFETY: rejected before any system call; no memory is touched.
            assert_invalid(
                unsafe { uffd.copy(src.page(0), p, len, true) },
                Operation::Copy,
            );
            // SAFETY: as above.
            assert_invalid(unsafe { uffd.zeropage(p, len, true) }, Operation::Zeropage);
            assert_invalid(uffd.write_protect(p, len), Operation::WriteProtect);
            assert_invalid(uffd.r#continue(p, len, true), Operation::Continue);
            // SAFETY: rejected before any system call; no memory is touched.
            assert_invalid(unsafe { uffd.poison(p, len, true) }, Operation::Poison);
        }
        // MOVE checks its source too.
        // SAFETY: rejected before any system call.
        let r = unsafe { uffd.r#move((src.addr() + 1) as *mut c_void, m.page(0), ps, true) };
        assert_invalid(r, Operation::Move);
    });
}

#[test]
fn zero_length_ranges_are_rejected() {
    hostile(|| {
        let uffd = new_uffd(false);
        let m = Map::anon(page_size());
        let p = m.page(0);
        assert_eq!(
            kernel_register(&uffd, m.addr() as u64, 0),
            Err(Errno::EINVAL)
        );
        assert_invalid(uffd.register(p, 0), Operation::Register);
        assert_invalid(uffd.unregister(p, 0), Operation::Unregister);
        assert_invalid(uffd.wake(p, 0), Operation::Wake);
        // SAFETY: rejected before any system call.
        assert_invalid(unsafe { uffd.copy(p, p, 0, true) }, Operation::Copy);
        // SAFETY: rejected before any system call.
        assert_invalid(unsafe { uffd.zeropage(p, 0, true) }, Operation::Zeropage);
        assert_invalid(uffd.write_protect(p, 0), Operation::WriteProtect);
    });
}

#[test]
fn ranges_past_the_address_space() {
    hostile(|| {
        let ps = page_size();
        let uffd = new_uffd(false);
        let src = Map::anon(page_size());
        // Wrap-around: caught before the kernel.
        let last = usize::MAX & !(ps - 1);
        for (start, len) in [(last, ps), (last - ps, 4 * ps)] {
            assert_eq!(
                kernel_register(&uffd, start as u64, len as u64),
                Err(Errno::EINVAL)
            );
            assert_invalid(
                uffd.register(start as *mut c_void, len),
                Operation::Register,
            );
            // SAFETY: rejected before any system call.
            let r = unsafe { uffd.copy(src.page(0), start as *mut c_void, len, true) };
            assert_invalid(r, Operation::Copy);
        }
        // Aligned, no wrap, but above the user address space: the kernel's EINVAL.
        for start in [1usize << 57, 1usize << 63] {
            let p = start as *mut c_void;
            assert_os(uffd.register(p, ps), Operation::Register, Errno::EINVAL);
            assert_os(uffd.unregister(p, ps), Operation::Unregister, Errno::EINVAL);
            assert_os(uffd.wake(p, ps), Operation::Wake, Errno::EINVAL);
            // SAFETY: the kernel rejects the range before touching memory.
            let r = unsafe { uffd.copy(src.page(0), p, ps, true) };
            assert_os(r, Operation::Copy, Errno::EINVAL);
            // SAFETY: as above.
            assert_os(
                unsafe { uffd.zeropage(p, ps, true) },
                Operation::Zeropage,
                Errno::EINVAL,
            );
        }
    });
}

#[test]
fn ranges_crossing_a_mapping_end() {
    hostile(|| {
        let ps = page_size();
        let uffd = new_uffd(false);
        let src = Map::anon(2 * page_size());
        // Four pages and a guard for the hole that `truncate` leaves.
        let mut m = Map::anon(5 * page_size());
        // Register the first two pages only: the VMA is split there.
        uffd.register(m.page(0), 2 * ps).expect("register");
        // A copy that starts in the registered VMA and ends in the unregistered one.
        // SAFETY: the kernel refuses the whole request; page 1 is ours and unused.
        let r = unsafe { uffd.copy(src.page(0), m.page(1), 2 * ps, true) };
        assert_os(r, Operation::Copy, Errno::ENOENT);
        // SAFETY: as above.
        let r = unsafe { uffd.zeropage(m.page(1), 2 * ps, true) };
        assert_os(r, Operation::Zeropage, Errno::ENOENT);
        // Nothing was placed: page 1 is still missing, so a one-page copy succeeds.
        // SAFETY: page 1 is registered and missing; nobody reads it.
        let r = unsafe { uffd.copy(src.page(0), m.page(1), ps, true) };
        assert_eq!(r.expect("copy of one page"), ps);
        uffd.unregister(m.page(0), 2 * ps).expect("unregister");

        // A range that runs past the end of the mapping into the unmapped hole after it.
        m.truncate_with_guard(2);
        // SAFETY: the range is outside any registered VMA; the kernel refuses it.
        let r = unsafe { uffd.copy(src.page(0), m.page(1), 2 * ps, true) };
        assert_os(r, Operation::Copy, Errno::ENOENT);
        // Registering such a range is accepted by 6.18 (only the mapped part is registered: a
        // range spanning a gap between mappings registers), so only a range with no mapping
        // at all fails.
        let tail = m.page(2);
        assert_os(
            uffd.register(tail, 2 * ps),
            Operation::Register,
            Errno::EINVAL,
        );
    });
}

#[test]
fn unregistered_ranges() {
    hostile(|| {
        let ps = page_size();
        let uffd = new_uffd(false);
        let m = Map::anon(2 * page_size());
        let src = Map::anon(page_size());
        // SAFETY: the kernel refuses: the range is not registered.
        let r = unsafe { uffd.copy(src.page(0), m.page(0), ps, true) };
        assert_os(r, Operation::Copy, Errno::ENOENT);
        // SAFETY: as above.
        let r = unsafe { uffd.zeropage(m.page(0), ps, true) };
        assert_os(r, Operation::Zeropage, Errno::ENOENT);
        assert_os(
            uffd.write_protect(m.page(0), ps),
            Operation::WriteProtect,
            Errno::ENOENT,
        );
        // SAFETY: the range is not registered, so nothing is poisoned.
        let r = unsafe { uffd.poison(m.page(0), ps, true) };
        if uffd.supported_features().contains(FeatureFlags::POISON) {
            assert_os(r, Operation::Poison, Errno::ENOENT);
        } else {
            common::kernel::assert_lacks(FeatureFlags::POISON, &r.unwrap_err());
        }
        // WAKE and UNREGISTER of an unregistered but mapped range are harmless no-ops.
        uffd.wake(m.page(0), 2 * ps).expect("wake of nobody");
        uffd.unregister(m.page(0), 2 * ps)
            .expect("unregister of nothing");
        // Registered MISSING only: write-protecting it is ENOENT too.
        uffd.register(m.page(0), 2 * ps).expect("register");
        assert_os(
            uffd.write_protect(m.page(0), ps),
            Operation::WriteProtect,
            Errno::ENOENT,
        );
        // A range with no mapping at all.
        let (_guards, hole) = unmapped_page();
        let hole = hole as *mut c_void;
        assert_os(uffd.register(hole, ps), Operation::Register, Errno::EINVAL);
        assert_os(
            uffd.unregister(hole, ps),
            Operation::Unregister,
            Errno::EINVAL,
        );
    });
}

#[test]
fn range_owned_by_another_uffd() {
    hostile(|| {
        let ps = page_size();
        let a = new_uffd(false);
        let b = new_uffd(false);
        let m = Map::anon(2 * page_size());
        let src = Map::anon(page_size());
        a.register(m.page(0), 2 * ps).expect("register with a");
        assert_os(
            b.register(m.page(0), 2 * ps),
            Operation::Register,
            Errno::EBUSY,
        );
        assert_os(b.register(m.page(1), ps), Operation::Register, Errno::EBUSY);
        // UNREGISTER through the wrong uffd is EINVAL, not EBUSY (seen on 6.18). 6.1 lets it
        // succeed and removes the owner's registration (seen): give the page back to `a`.
        let r = b.unregister(m.page(0), ps);
        if kernel_refuses_foreign_unregister() {
            assert_os(r, Operation::Unregister, Errno::EINVAL);
        } else {
            r.expect("6.1: unregistering another uffd's range succeeds");
            a.register(m.page(0), ps)
                .expect("6.1: the page is unregistered");
        }
        assert_os(b.register(m.page(0), ps), Operation::Register, Errno::EBUSY);
        // Resolving through another uffd of the same process is NOT refused: the kernel only
        // checks that the destination VMA is registered with *some* uffd (mfill_atomic does not
        // compare contexts), so `b` can fill `a`'s page. Measured on 6.18.
        // SAFETY: page 0 is missing and nobody reads it.
        let r = unsafe { b.copy(src.page(0), m.page(0), ps, true) };
        assert_eq!(r.expect("copy through another uffd of the mm"), ps);
        // The owner then finds the page there.
        // SAFETY: page 0 is present; the kernel refuses to overwrite it.
        let r = unsafe { a.copy(src.page(0), m.page(0), ps, true) };
        match r {
            Err(
                e @ Error::AlreadyMapped {
                    op: Operation::Copy,
                    addr,
                },
            ) => {
                assert_eq!(addr, m.addr());
                assert_eq!(e.errno(), Some(Errno::EEXIST));
            }
            other => panic!("expected AlreadyMapped, got {other:?}"),
        }
        a.unregister(m.page(0), 2 * ps).expect("unregister a");
        b.register(m.page(0), 2 * ps)
            .expect("register with b after a");
    });
}

#[test]
fn copy_from_an_unmapped_source() {
    hostile(|| {
        let ps = page_size();
        let uffd = new_uffd(false);
        let m = Map::anon(2 * page_size());
        uffd.register(m.page(0), 2 * ps).expect("register");
        let (_guards, hole) = unmapped_page();
        for src in [hole, 0, 8 * ps] {
            // SAFETY: the source is unreadable, so the kernel places nothing (EFAULT).
            let r = unsafe { uffd.copy(src as *const c_void, m.page(0), ps, true) };
            assert_os(r, Operation::Copy, Errno::EFAULT);
        }
        // A source that becomes unreadable halfway: the first page is copied, then EFAULT is
        // reported as partial progress.
        let mut src = Map::anon(3 * page_size());
        src.truncate_with_guard(1);
        // SAFETY: dst pages are registered and missing; the source's first page is readable.
        let r = unsafe { uffd.copy(src.page(0), m.page(0), 2 * ps, true) };
        match r {
            Err(Error::PartialProgress {
                op: Operation::Copy,
                done,
                len,
                errno,
                ..
            }) => {
                assert_eq!((done, len), (ps, 2 * ps));
                // The kernel reports the stop as EAGAIN with the byte count (§1.6).
                assert_eq!(errno, Errno::EAGAIN);
            }
            other => panic!("expected PartialProgress after one page, got {other:?}"),
        }
    });
}

#[test]
fn event_buffer_of_size_zero() {
    hostile(|| {
        let uffd = new_uffd(true);
        let mut buf = EventBuffer::new(0);
        assert_eq!(buf.capacity(), 0);
        match uffd.read_events(&mut buf).map(|evs| evs.count()) {
            Err(e @ Error::InvalidArgument { .. }) => {
                assert_eq!(e.operation(), Some(Operation::Read));
                assert_eq!(e.errno(), None);
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        // The same buffer stays rejected; a real one works afterwards.
        assert!(uffd.read_events(&mut buf).is_err());
        let mut buf = EventBuffer::new(1);
        assert_eq!(uffd.read_events(&mut buf).expect("read").count(), 0);
    });
}

#[test]
fn try_from_refuses_files_that_are_not_userfaultfds() {
    hostile(|| {
        // /dev/null, a pipe and a socket: each is closed by the refused conversion, so the
        // descriptor count proves nothing leaked.
        let null: OwnedFd = std::fs::File::open("/dev/null")
            .expect("open /dev/null")
            .into();
        let (r, w) = std::io::pipe().expect("pipe");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        for fd in [null, OwnedFd::from(r), OwnedFd::from(w), OwnedFd::from(a)] {
            match Uffd::try_from(fd) {
                Err(Error::NotUserfaultfd { reason }) => {
                    assert!(reason.contains("anon_inode:[userfaultfd]"), "{reason}")
                }
                other => panic!("expected NotUserfaultfd, got {other:?}"),
            }
        }
    });
}

#[test]
fn from_raw_fd_before_the_handshake() {
    hostile(|| {
        let ps = page_size();
        let m = Map::anon(page_size());
        // A real userfaultfd that never had UFFDIO_API.
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | sys::UFFD_USER_MODE_ONLY as libc::c_int;
        // SAFETY: userfaultfd(2) takes one integer and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        assert!(fd >= 0, "userfaultfd: {}", Errno::last());
        // SAFETY: a new fd that nothing else owns.
        let uffd = unsafe { Uffd::from_raw_fd(fd as RawFd) };
        assert_os(
            uffd.register(m.page(0), ps),
            Operation::Register,
            Errno::EINVAL,
        );
        // SAFETY: refused before the handshake; nothing is touched.
        let r = unsafe { uffd.zeropage(m.page(0), ps, true) };
        assert_os(r, Operation::Zeropage, Errno::EINVAL);
        assert_os(uffd.read_event(), Operation::Read, Errno::EINVAL);
    });
}

/// Child side of [`operations_after_the_process_exited`]: runs between `fork` and `_exit`, so
/// only async-signal-safe system calls, no allocation, no panics. Returns the exit code.
fn child_send_uffd(sock: RawFd, addr: usize, len: usize) -> i32 {
    let flags = libc::O_CLOEXEC | sys::UFFD_USER_MODE_ONLY as libc::c_int;
    // SAFETY: userfaultfd(2) takes one integer and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as RawFd;
    if fd < 0 {
        return 10;
    }
    let mut api = sys::uffdio_api {
        api: sys::UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: `api` is a live uffdio_api.
    if unsafe { libc::ioctl(fd, sys::UFFDIO_API as _, &mut api) } < 0 {
        return 11;
    }
    let mut reg = sys::uffdio_register {
        range: sys::uffdio_range {
            start: addr as u64,
            len: len as u64,
        },
        mode: sys::UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `reg` is a live uffdio_register; the range is this (child) process's mapping.
    if unsafe { libc::ioctl(fd, sys::UFFDIO_REGISTER as _, &mut reg) } < 0 {
        return 12;
    }
    if send_fd(sock, fd) {
        0
    } else {
        13
    }
}

#[test]
fn operations_after_the_process_exited() {
    hostile(|| {
        let ps = page_size();
        let m = Map::anon(2 * page_size());
        let src = Map::anon(page_size());
        let (parent_sock, child_sock) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let (addr, len, csock) = (m.addr(), 2 * ps, child_sock.as_raw_fd());
        // SAFETY: the child only makes async-signal-safe system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", Errno::last());
        if pid == 0 {
            let code = child_send_uffd(csock, addr, len);
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(child_sock);
        let received = recv_fd(parent_sock.as_raw_fd());
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: status {status:#x}"
        );
        let uffd = Uffd::try_from(received.expect("the child's uffd")).expect("a userfaultfd");
        // The fd still describes itself...
        assert_eq!(uffd.features(), FeatureFlags::empty());
        // ...but its mm is gone: ESRCH for the range operations (§1.6).
        // SAFETY: the destination belongs to the exited child; nothing here is written.
        let r = unsafe { uffd.copy(src.page(0), addr as *mut c_void, ps, true) };
        assert_os(r, Operation::Copy, Errno::ESRCH);
        // SAFETY: as above.
        let r = unsafe { uffd.zeropage(addr as *mut c_void, ps, true) };
        assert_os(r, Operation::Zeropage, Errno::ESRCH);
        // SAFETY: as above.
        let r = unsafe { uffd.poison(addr as *mut c_void, ps, true) };
        if UffdBuilder::probe_features()
            .unwrap()
            .contains(FeatureFlags::POISON)
        {
            assert_os(r, Operation::Poison, Errno::ESRCH);
        } else {
            // A received fd's supported features are unknown, so the kernel answers: an ioctl
            // it does not know is EINVAL.
            assert_os(r, Operation::Poison, Errno::EINVAL);
            test_kit::report::unsupported("POISON", "6.6", "UFFDIO_POISON failed: EINVAL");
        }
        // REGISTER and UNREGISTER say ENOMEM ("the mm is going away", §1.5).
        assert_os(
            uffd.register(addr as *mut c_void, ps),
            Operation::Register,
            Errno::ENOMEM,
        );
        assert_os(
            uffd.unregister(addr as *mut c_void, ps),
            Operation::Unregister,
            Errno::ENOMEM,
        );
    });
}

#[test]
fn handler_thread_that_panics() {
    // What faulting threads see when the thread that owns the Uffd panics before resolving
    // their fault: unwinding drops the Uffd, closing the fd removes the registration and wakes
    // them, and the fault is then handled by the kernel as if never registered (zero fill for
    // anonymous memory). They are neither left blocked nor killed.
    hostile(|| {
        let ps = page_size();
        let uffd = new_uffd(false);
        let m = Map::anon(page_size());
        uffd.register(m.page(0), ps).expect("register");
        let addr = m.addr();
        let (tx, rx) = mpsc::channel();
        let faulter = thread::spawn(move || {
            // SAFETY: the page is mapped; the read blocks until the fault is resolved.
            let v = unsafe { ptr::read_volatile(addr as *const u64) };
            let _ = tx.send(v);
        });
        let handler = thread::spawn(move || {
            let ev = uffd.read_event();
            assert!(
                matches!(ev, Ok(Some(Event::Pagefault { .. }))),
                "expected a fault, got {ev:?}"
            );
            panic!("intentional panic of a fault handler (hostile.rs)");
        });
        assert!(handler.join().is_err(), "the handler must have panicked");
        let v = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the faulting thread stayed blocked after its handler died");
        assert_eq!(v, 0, "zero fill after the handler died");
        faulter.join().expect("faulter");
    });
}

#[test]
fn dropping_a_uffd_wakes_blocked_threads() {
    hostile(|| {
        let ps = page_size();
        let wp = UffdBuilder::probe_features()
            .expect("probe")
            .contains(FeatureFlags::PAGEFAULT_FLAG_WP);
        let uffd = new_uffd(true);
        let m = Map::anon(4 * page_size());
        let mode = if wp {
            RegisterMode::MISSING | RegisterMode::WRITE_PROTECT
        } else {
            RegisterMode::MISSING
        };
        uffd.register_with_mode(m.page(0), 4 * ps, mode)
            .expect("register");
        let mut expected = 3;
        if wp {
            // Page 3 present but write-protected: a write to it blocks on a WP fault.
            let src = [7u8; 4096];
            let srcbuf = vec![7u8; ps];
            let s = if ps == 4096 {
                src.as_ptr()
            } else {
                srcbuf.as_ptr()
            };
            // SAFETY: page 3 is registered and missing; nobody reads it yet.
            let r = unsafe { uffd.copy_with_mode(s.cast(), m.page(3), ps, CopyMode::WP) };
            assert_eq!(r.expect("copy WP"), ps);
            expected += 1;
        }
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for i in 0..expected {
            let (tx, addr) = (tx.clone(), m.addr() + i * ps);
            threads.push(thread::spawn(move || {
                let v = if i < 3 {
                    // SAFETY: mapped; blocks on the missing fault.
                    unsafe { ptr::read_volatile(addr as *const u64) }
                } else {
                    // SAFETY: mapped and ours; blocks on the write-protect fault.
                    unsafe { ptr::write_volatile(addr as *mut u64, 99) };
                    // SAFETY: as above.
                    unsafe { ptr::read_volatile(addr as *const u64) }
                };
                let _ = tx.send((i, v));
            }));
        }
        // Every thread is blocked once its fault has been read.
        let mut seen = Vec::new();
        for _ in 0..expected {
            seen.push(next_fault(&uffd));
        }
        seen.sort_by_key(|&(_, a)| a);
        for (i, &(kind, a)) in seen.iter().enumerate() {
            assert_eq!(a, m.addr() + i * ps);
            let want = if i < 3 {
                FaultKind::Missing
            } else {
                FaultKind::WriteProtected
            };
            assert_eq!(kind, want);
        }
        drop(uffd);
        for _ in 0..expected {
            let (i, v) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a thread stayed blocked after its Uffd was dropped");
            let want = if i < 3 { 0 } else { 99 };
            assert_eq!(v, want, "page {i}");
        }
        for t in threads {
            t.join().expect("faulter");
        }
    });
}

#[test]
fn requesting_a_feature_the_kernel_lacks() {
    hostile(|| {
        let bogus = FeatureFlags::from_bits_retain(1 << 40);
        let supported = UffdBuilder::probe_features().expect("probe");
        let r = UffdBuilder::new()
            .user_mode_only(true)
            .require_features(bogus | FeatureFlags::THREAD_ID)
            .create();
        match r {
            Err(e @ Error::UnsupportedFeatures { .. }) => {
                assert_eq!(e.errno(), None);
                assert_eq!(e.operation(), Some(Operation::Api));
                let Error::UnsupportedFeatures {
                    missing,
                    supported: s,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(missing, bogus, "only the unknown bit is missing");
                assert_eq!(s, supported);
            }
            other => panic!("expected UnsupportedFeatures, got {other:?}"),
        }
    });
}

/// Whether `UFFDIO_UNREGISTER` of a range another userfaultfd registered fails (`EINVAL`, seen
/// on 6.18) rather than succeeding and unregistering it (seen on 6.1). Kernels between are not run by
/// the suite; they are taken to behave as 6.18.
fn kernel_refuses_foreign_unregister() -> bool {
    common::kernel::at_least(6, 2)
}
