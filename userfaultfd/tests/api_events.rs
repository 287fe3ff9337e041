//! Non-cooperative events produced by real `fork`, `mremap`, `madvise` and `munmap`, plus the
//! `THREAD_ID` and `EXACT_ADDRESS` features.
//!
//! The thread that forks/remaps/advises/unmaps blocks until its event is read, so those calls
//! run on a helper thread and the test thread reads the events.

mod common;

use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;

use common::*;
use userfaultfd::{Error, Event, FaultKind, FeatureFlags, Operation};

/// Serialises the tests of this file: the fork test checks fd numbers, and a fork duplicates
/// the other tests' registered mappings.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn fork_produces_fork_event_with_owned_uffd() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::CapSysPtrace) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::EVENT_FORK);
    let mem = Map::anon(2 * ps);
    mem.write(0, 1);
    uffd.register(mem.ptr(), 2 * ps).unwrap();

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: the child calls only _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: terminating the child without running any Rust code.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        tx.send((r == pid, status)).unwrap();
    });
    let child = match next_event(&uffd) {
        Event::Fork { uffd } => uffd,
        other => panic!("expected Fork, got {other:?}"),
    };
    let (waited, status) = recv(&rx);
    assert!(waited);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);

    // The child's uffd is an open descriptor in our table, owned by the event.
    let raw = child.as_raw_fd();
    assert_ne!(raw, uffd.as_raw_fd());
    assert!(fd_is_open(raw));
    assert_eq!(child.features(), uffd.features());
    // It is a userfaultfd that inherited O_NONBLOCK: reading it works, nothing is pending.
    assert!(child.read_event().unwrap().is_none());
    let owned: std::os::fd::OwnedFd = child.into();
    let raw2 = owned.into_raw_fd();
    assert_eq!(raw2, raw);
    assert!(fd_is_open(raw));
    // SAFETY: we own `raw` (taken out of the event above) and close it once.
    unsafe { libc::close(raw) };
    assert!(!fd_is_open(raw));
}

#[test]
fn mremap_produces_remap_then_unmap() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    // Mappings first, so that on a failure the uffd is dropped (flushing events) before
    // they are unmapped: an unmap of a registered range would wait for its event forever.
    let dst = Map::reserve(3 * ps);
    let old = Map::anon(3 * ps);
    old.fill(0, 3 * ps, 0x5e);
    let uffd = uffd_with(FeatureFlags::EVENT_REMAP | FeatureFlags::EVENT_UNMAP);
    uffd.register(old.ptr(), 3 * ps).unwrap();
    let (from, to) = (old.addr(), dst.addr());
    old.forget(); // mremap moves (and partly unmaps) it

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: moves our own registered mapping over our own reservation, shrinking it.
        let r = unsafe {
            libc::mremap(
                from as *mut _,
                3 * ps,
                2 * ps,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        tx.send(r as usize).unwrap();
    });
    // Observed on 6.18: REMAP (len = the moved length), UNMAP of the shrunk tail, UNMAP of
    // the moved source.
    match next_event(&uffd) {
        Event::Remap {
            from: f,
            to: t,
            len,
        } => {
            assert_eq!((f as usize, t as usize), (from, to));
            // 6.1 reports the old length (seen), 6.18 the moved one.
            let want = if kernel::at_least(6, 2) {
                2 * ps
            } else {
                3 * ps
            };
            assert_eq!(len, want);
        }
        other => panic!("expected Remap, got {other:?}"),
    }
    match next_event(&uffd) {
        Event::Unmap { start, end } => {
            assert_eq!(
                (start as usize, end as usize),
                (from + 2 * ps, from + 3 * ps)
            )
        }
        other => panic!("expected Unmap, got {other:?}"),
    }
    // The moved source range is unmapped too.
    match next_event(&uffd) {
        Event::Unmap { start, end } => {
            assert_eq!((start as usize, end as usize), (from, from + 2 * ps))
        }
        other => panic!("expected Unmap of the source, got {other:?}"),
    }
    assert_eq!(recv(&rx), to);
    dst.assert_all(0, 2 * ps, 0x5e);
    // Close the uffd before the reservation is unmapped (that would queue another event).
    drop(uffd);
}

#[test]
fn madvise_dontneed_produces_remove_and_blocks_copies_until_read() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::EVENT_REMOVE);
    let mem = Map::anon(2 * ps);
    mem.fill(0, 2 * ps, 0x3c);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let addr = mem.addr();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: drops the pages of our own mapping.
        let r = unsafe { libc::madvise(addr as *mut _, 2 * ps, libc::MADV_DONTNEED) };
        tx.send(r).unwrap();
    });
    // The REMOVE event is queued (the fd turns readable) and unread.
    assert_eq!(poll_in(&uffd, TIMEOUT_MS) & libc::POLLIN, libc::POLLIN);
    let src = page_of(0x77, ps);
    // SAFETY: our registered mapping.
    let e = unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::MappingChanging {
                op: Operation::Copy
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.bytes_done(), 0);
    // SAFETY: as above.
    let e = unsafe { uffd.zeropage(mem.at(ps), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::MappingChanging {
                op: Operation::Zeropage
            }
        ),
        "{e:?}"
    );

    match next_event(&uffd) {
        Event::Remove { start, end } => {
            assert_eq!((start as usize, end as usize), (addr, addr + 2 * ps))
        }
        other => panic!("expected Remove, got {other:?}"),
    }
    assert_eq!(recv(&rx), 0);
    // Event read: the range is still registered and the pages are missing again.
    // SAFETY: as above.
    let n = unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), ps, true) }.unwrap();
    assert_eq!(n, ps);
    mem.assert_all(0, ps, 0x77);
    let rx = reader(addr + ps);
    let (kind, _, a, _) = next_fault(&uffd);
    assert_eq!((kind, a), (FaultKind::Missing, addr + ps));
    // SAFETY: as above.
    unsafe { uffd.zeropage(mem.at(ps), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0);
}

#[test]
fn munmap_produces_unmap() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::EVENT_UNMAP);
    let mem = Map::anon(2 * ps);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let addr = mem.addr();
    mem.forget();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: unmaps our own mapping, which nothing else uses.
        let r = unsafe { libc::munmap(addr as *mut _, 2 * ps) };
        tx.send(r).unwrap();
    });
    match next_event(&uffd) {
        Event::Unmap { start, end } => {
            assert_eq!((start as usize, end as usize), (addr, addr + 2 * ps))
        }
        other => panic!("expected Unmap, got {other:?}"),
    }
    assert_eq!(recv(&rx), 0);
}

#[test]
fn thread_id_is_the_faulting_thread() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::THREAD_ID);
    assert!(uffd.features().contains(FeatureFlags::THREAD_ID));
    let mem = Map::anon(ps);
    uffd.register(mem.ptr(), ps).unwrap();
    let addr = mem.addr();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        // SAFETY: the mapping outlives the wait on `done_rx`.
        let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
        done_tx.send(v).unwrap();
    });
    let tid = recv(&tid_rx);
    let (kind, _, a, thread_id) = next_fault(&uffd);
    assert_eq!((kind, a), (FaultKind::Missing, addr));
    assert_eq!(thread_id, tid);
    assert_ne!(thread_id, gettid());
    // SAFETY: missing page of our registered mapping.
    unsafe { uffd.zeropage(mem.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&done_rx), 0);
}

#[test]
fn exact_address_reports_the_faulting_byte() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let exact = uffd_with(FeatureFlags::EXACT_ADDRESS);
    let mem = Map::anon(2 * ps);
    exact.register(mem.ptr(), 2 * ps).unwrap();
    let rx = reader(mem.addr() + ps + 123);
    let (_, _, a, tid) = next_fault(&exact);
    assert_eq!(a, mem.addr() + ps + 123);
    assert_eq!(tid, 0, "no THREAD_ID requested");
    // SAFETY: missing page of our registered mapping.
    unsafe { exact.zeropage(mem.at(ps), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0);

    // Without the feature the address is rounded down to the page.
    let plain = uffd();
    let mem2 = Map::anon(ps);
    plain.register(mem2.ptr(), ps).unwrap();
    let rx = reader(mem2.addr() + 123);
    let (_, _, a, _) = next_fault(&plain);
    assert_eq!(a, mem2.addr());
    // SAFETY: missing page of our registered mapping.
    unsafe { plain.zeropage(mem2.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0);
}

/// A fork's descriptor is installed by the `read` itself; one the caller never takes out of
/// the buffer must be closed when the buffer is read into again or dropped.
#[test]
fn unconsumed_fork_fds_are_closed_on_buffer_reuse_and_drop() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::CapSysPtrace) {
        return;
    }
    let ps = ps();
    let mem = Map::anon(ps);
    let uffd = uffd_with(FeatureFlags::EVENT_FORK);
    uffd.register(mem.ptr(), ps).unwrap();
    for reuse in [true, false] {
        // Allocate before forking: the forking thread holds malloc's locks until its event is
        // read, so nothing on this side may allocate in between.
        let mut buf = userfaultfd::EventBuffer::new(4);
        let before = count_fds();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // SAFETY: the child calls only _exit, which is async-signal-safe.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: terminating the child without running any Rust code.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            tx.send(r == pid).unwrap();
        });
        assert_ne!(poll_in(&uffd, 10_000) & libc::POLLIN, 0, "no fork event");
        // The Fork event is read but never yielded by the iterator.
        assert_eq!(uffd.read_events(&mut buf).unwrap().len(), 1);
        assert!(recv(&rx));
        assert_eq!(
            count_fds(),
            before + 1,
            "the read installed the child's uffd"
        );
        if reuse {
            assert_eq!(uffd.read_events(&mut buf).unwrap().count(), 0);
            assert_eq!(count_fds(), before, "reusing the buffer closes it");
        } else {
            drop(buf);
            assert_eq!(count_fds(), before, "dropping the buffer closes it");
        }
    }
}
