//! MISSING mode against the real kernel: anonymous, shmem (memfd) and hugetlb memory; COPY,
//! ZEROPAGE, WAKE, reads, and the documented errors.

mod common;

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use common::*;
use userfaultfd::Errno;
use userfaultfd::{
    CopyMode, Error, Event, EventBuffer, FaultKind, FeatureFlags, IoctlFlags, Operation, ReadWrite,
    RegisterMode, UffdBuilder,
};

#[test]
fn anon_fault_resolved_by_copy() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = mmap::MemoryMappingBuilder::new(4 * ps)
        .private()
        .build()
        .unwrap();
    let ioctls = uffd.register_region(&mem, RegisterMode::MISSING).unwrap();
    assert!(ioctls.contains(IoctlFlags::WAKE | IoctlFlags::COPY | IoctlFlags::ZEROPAGE));

    let base = mem.as_ptr() as usize;
    let rx = reader(base + 2 * ps + 5);
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::Missing, ReadWrite::Read, base + 2 * ps)
    );

    let src: Vec<u8> = (0..ps).map(|i| (i % 251) as u8).collect();
    // SAFETY: `addr` is a missing page of the registered private mapping `mem`.
    let n = unsafe { uffd.copy(src.as_ptr().cast(), addr as *mut _, ps, true) }.unwrap();
    assert_eq!(n, ps);
    assert_eq!(recv(&rx), 5);
    let mut got = vec![0u8; ps];
    mem.read_slice(&mut got, 2 * ps).unwrap();
    assert_eq!(got, src);
    uffd.unregister_region(&mem).unwrap();
}

#[test]
fn anon_fault_resolved_by_zeropage() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(2 * ps);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let rx = writer(mem.addr() + ps + 7, 9);
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::Missing, ReadWrite::Write, mem.addr() + ps)
    );
    // SAFETY: missing page of our registered mapping.
    let n = unsafe { uffd.zeropage(mem.at(ps), ps, true) }.unwrap();
    assert_eq!(n, ps);
    recv(&rx);
    assert_eq!(mem.read(ps + 7), 9);
    mem.assert_all(ps, 7, 0);
}

#[test]
fn shmem_memfd_shared_fault_resolved_by_copy() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::empty());
    assert!(uffd
        .supported_features()
        .contains(FeatureFlags::MISSING_SHMEM));
    let fd = memfd(2 * ps);
    let mem = Map::shared_fd(&fd, 2 * ps);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let rx = reader(mem.addr());
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::Missing, mem.addr()));
    let src = page_of(0x5a, ps);
    // SAFETY: missing page of our registered shared mapping.
    unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0x5a);
    // The page is in the memfd: a second mapping sees it.
    let other = Map::shared_fd(&fd, 2 * ps);
    other.assert_all(0, ps, 0x5a);
}

#[test]
fn hugetlb_fault_copy_and_zeropage_einval() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let huge = 2 << 20;
    let mem = match Map::hugetlb(huge) {
        Ok(m) => m,
        Err(why) => {
            test_kit::report::skip(why);
            return;
        }
    };
    let uffd = uffd();
    assert!(uffd
        .supported_features()
        .contains(FeatureFlags::MISSING_HUGETLBFS));
    let ioctls = uffd.register(mem.ptr(), huge).unwrap();
    assert!(ioctls.contains(IoctlFlags::COPY | IoctlFlags::WAKE));
    assert!(!ioctls.contains(IoctlFlags::ZEROPAGE));

    // ZEROPAGE is not supported on hugetlb.
    // SAFETY: our registered missing range; it fails anyway.
    let e = unsafe { uffd.zeropage(mem.ptr(), huge, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Zeropage,
                errno: Errno::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );
    // COPY of less than a huge page: EINVAL.
    let src = page_of(0x77, huge);
    // SAFETY: as above; it fails.
    let e = unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), ps(), true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Copy,
                errno: Errno::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );

    let rx = reader(mem.addr() + 12345);
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::Missing, mem.addr()));
    // SAFETY: the missing huge page of our registered mapping.
    let n = unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), huge, true) }.unwrap();
    assert_eq!(n, huge);
    assert_eq!(recv(&rx), 0x77);
    assert_eq!(mem.read(huge - 1), 0x77);
}

#[test]
fn copy_onto_present_page_is_already_mapped() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(2 * ps);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let src = page_of(1, ps);
    // SAFETY: missing page of our registered mapping, no faulter.
    let n = unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), ps, true) }.unwrap();
    assert_eq!(n, ps);
    let src2 = page_of(2, ps);
    // SAFETY: as above; the kernel refuses to overwrite.
    let e = unsafe { uffd.copy(src2.as_ptr().cast(), mem.ptr(), ps, true) }.unwrap_err();
    assert!(
        matches!(e, Error::AlreadyMapped { op: Operation::Copy, addr } if addr == mem.addr()),
        "{e:?}"
    );
    assert_eq!(e.errno(), Some(Errno::EEXIST));
    // SAFETY: as above.
    let e = unsafe { uffd.zeropage(mem.ptr(), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::AlreadyMapped {
                op: Operation::Zeropage,
                ..
            }
        ),
        "{e:?}"
    );
    mem.assert_all(0, ps, 1);
    // Waking a range nobody waits on succeeds.
    uffd.wake(mem.ptr(), 2 * ps).unwrap();
}

#[test]
fn partial_copy_reports_bytes_done() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(3 * ps);
    uffd.register(mem.ptr(), 3 * ps).unwrap();
    let one = page_of(1, ps);
    // SAFETY: our registered range.
    unsafe { uffd.copy(one.as_ptr().cast(), mem.at(ps), ps, true) }.unwrap();
    let two = page_of(2, 2 * ps);
    // SAFETY: our registered range; page 1 is already there.
    let e = unsafe { uffd.copy(two.as_ptr().cast(), mem.ptr(), 2 * ps, true) }.unwrap_err();
    match e {
        Error::PartialProgress {
            op: Operation::Copy,
            dst,
            done,
            len,
            errno,
        } => {
            assert_eq!(dst, mem.ptr() as usize, "the error names the destination");
            assert_eq!((done, len), (ps, 2 * ps));
            assert_eq!(errno, Errno::EAGAIN);
        }
        other => panic!("expected PartialProgress, got {other:?}"),
    }
    assert_eq!(e.bytes_done(), ps);
    mem.assert_all(0, ps, 2);
    mem.assert_all(ps, ps, 1);
}

#[test]
fn copy_to_unregistered_range_is_enoent() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(3 * ps);
    uffd.register(mem.ptr(), ps).unwrap();
    let src = page_of(3, 2 * ps);
    // SAFETY: `mem` is ours; the kernel refuses the unregistered part.
    let e = unsafe { uffd.copy(src.as_ptr().cast(), mem.at(2 * ps), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Copy,
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{e:?}"
    );
    // The error names the range, in its value and in its message.
    let want = userfaultfd::AddrRange::new(mem.at(2 * ps) as usize, ps);
    assert!(
        matches!(e, Error::Os { range: Some(r), .. } if r == want),
        "{e:?}"
    );
    assert!(e.to_string().contains(&format!(" on {want} ")), "{e}");
    // Crossing the end of the registered VMA.
    // SAFETY: as above.
    let e = unsafe { uffd.copy(src.as_ptr().cast(), mem.ptr(), 2 * ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Copy,
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{e:?}"
    );
    // SAFETY: as above.
    let e = unsafe { uffd.zeropage(mem.at(ps), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Zeropage,
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn misaligned_and_zero_length_are_invalid_arguments() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(2 * ps);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let src = page_of(0, 2 * ps);
    let inval = |e: Error, want: Operation| {
        assert!(
            matches!(e, Error::InvalidArgument { op, .. } if op == want),
            "{e:?}"
        )
    };
    // SAFETY: (all calls in the block) our registered mapping; every call is rejected before
    // reaching the kernel.
    unsafe {
        inval(
            uffd.copy(src.as_ptr().cast(), mem.at(1), ps, true)
                .unwrap_err(),
            Operation::Copy,
        );
        inval(
            uffd.copy(src.as_ptr().cast(), mem.ptr(), 0, true)
                .unwrap_err(),
            Operation::Copy,
        );
        inval(
            uffd.copy(src.as_ptr().cast(), mem.ptr(), ps + 1, true)
                .unwrap_err(),
            Operation::Copy,
        );
        inval(
            uffd.zeropage(mem.at(8), ps, true).unwrap_err(),
            Operation::Zeropage,
        );
        inval(
            uffd.zeropage(mem.ptr(), 0, true).unwrap_err(),
            Operation::Zeropage,
        );
    }
    inval(uffd.wake(mem.ptr(), 0).unwrap_err(), Operation::Wake);
    inval(
        uffd.register(mem.at(1), ps).unwrap_err(),
        Operation::Register,
    );
    inval(
        uffd.register(mem.ptr(), 0).unwrap_err(),
        Operation::Register,
    );
    inval(
        uffd.unregister(mem.ptr(), 3).unwrap_err(),
        Operation::Unregister,
    );
    // The kernel's own EINVAL: a mode of zero.
    let e = uffd
        .register_with_mode(mem.ptr(), ps, RegisterMode::empty())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Register,
                errno: Errno::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn dontwake_then_wake() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(ps);
    uffd.register(mem.ptr(), ps).unwrap();
    let rx = reader(mem.addr());
    let (_, _, addr, _) = next_fault(&uffd);
    assert_eq!(addr, mem.addr());
    let src = page_of(0x42, ps);
    // SAFETY: the missing page of our registered mapping.
    let n = unsafe { uffd.copy_with_mode(src.as_ptr().cast(), mem.ptr(), ps, CopyMode::DONTWAKE) }
        .unwrap();
    assert_eq!(n, ps);
    // Negative check, necessarily bounded by time: the faulter must still be asleep after the
    // DONTWAKE copy. 200 ms is ample for a woken thread to run; it is not a synchronisation.
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout)
    );
    uffd.wake(mem.ptr(), ps).unwrap();
    assert_eq!(recv(&rx), 0x42);
}

#[test]
fn blocking_read_and_nonblocking_poll() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    // Blocking fd: read_event blocks until the fault arrives (the faulter is started first,
    // so the read returns).
    let blocking = UffdBuilder::new().create().unwrap();
    let mem = Map::anon(ps);
    blocking.register(mem.ptr(), ps).unwrap();
    // A blocking userfaultfd polls as POLLERR.
    assert_eq!(poll_in(&blocking, 0) & libc::POLLERR, libc::POLLERR);
    let rx = reader(mem.addr());
    match blocking.read_event().unwrap() {
        Some(Event::Pagefault { kind, addr, .. }) => {
            assert_eq!(kind, FaultKind::Missing);
            assert_eq!(addr as usize, mem.addr());
            // SAFETY: missing page of our registered mapping.
            unsafe { blocking.zeropage(addr, ps, true) }.unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(recv(&rx), 0);

    // Non-blocking fd: nothing pending → Ok(None) and poll times out; then readable.
    let nb = uffd();
    let mem2 = Map::anon(ps);
    nb.register(mem2.ptr(), ps).unwrap();
    assert!(nb.read_event().unwrap().is_none());
    assert_eq!(poll_in(&nb, 0), 0);
    let rx = reader(mem2.addr());
    assert_eq!(poll_in(&nb, TIMEOUT_MS) & libc::POLLIN, libc::POLLIN);
    let (_, _, addr, _) = next_fault(&nb);
    assert_eq!(addr, mem2.addr());
    assert!(nb.read_event().unwrap().is_none());
    // SAFETY: missing page of our registered mapping.
    unsafe { nb.zeropage(mem2.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0);
}

#[test]
fn read_events_batches_several_faults() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    const N: usize = 4;
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(N * ps);
    uffd.register(mem.ptr(), N * ps).unwrap();
    let rxs: Vec<_> = (0..N).map(|i| reader(mem.addr() + i * ps)).collect();
    // All N faults queued and unread (fdinfo "pending"), then one read returns them all.
    wait_until("all faults pending", || pending_faults(&uffd) == N);
    let mut buf = EventBuffer::new(N + 4);
    let events = uffd.read_events(&mut buf).unwrap();
    assert_eq!(events.len(), N);
    let mut seen = [false; N];
    let mut addrs = Vec::new();
    for e in events {
        match e.unwrap() {
            Event::Pagefault {
                kind: FaultKind::Missing,
                addr,
                ..
            } => {
                let i = (addr as usize - mem.addr()) / ps;
                assert!(!seen[i]);
                seen[i] = true;
                addrs.push(addr);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(seen.iter().all(|s| *s));
    for (i, addr) in addrs.into_iter().enumerate() {
        let src = page_of(i as u8 + 10, ps);
        // SAFETY: a missing page of our registered mapping.
        unsafe { uffd.copy(src.as_ptr().cast(), addr, ps, true) }.unwrap();
    }
    for (i, rx) in rxs.iter().enumerate() {
        let v = recv(rx);
        assert_eq!(mem.read(i * ps), v);
        assert!((10..10 + N as u8).contains(&v));
    }
    // Nothing left.
    assert_eq!(uffd.read_events(&mut buf).unwrap().len(), 0);
}

#[test]
fn closing_the_uffd_wakes_blocked_faulters() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(ps);
    uffd.register(mem.ptr(), ps).unwrap();
    let rx = reader(mem.addr() + 3);
    let (_, _, addr, _) = next_fault(&uffd);
    assert_eq!(addr, mem.addr());
    // The faulter is blocked on the fault we read; closing the fd must release it, and it
    // then sees the kernel's default: a zero-filled page.
    drop(uffd);
    assert_eq!(recv(&rx), 0);
    mem.assert_all(0, ps, 0);
}

#[test]
fn register_range_owned_by_another_uffd_is_ebusy() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let a = uffd();
    let b = uffd();
    let mem = Map::anon(2 * ps);
    a.register(mem.ptr(), 2 * ps).unwrap();
    let e = b.register(mem.at(ps), ps).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Register,
                errno: Errno::EBUSY,
                ..
            }
        ),
        "{e:?}"
    );
    // Unregistering another uffd's range: EINVAL (6.18); 6.1 lets it succeed and removes the
    // owner's registration of that page only (both seen).
    if !kernel::at_least(6, 2) {
        b.unregister(mem.ptr(), ps)
            .expect("6.1: unregistering another uffd's range succeeds");
        let e = b.register(mem.at(ps), ps).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EBUSY), "{e:?}");
        a.register(mem.ptr(), ps).unwrap();
        return;
    }
    let e = b.unregister(mem.ptr(), ps).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Unregister,
                errno: Errno::EINVAL,
                ..
            }
        ),
        "{e:?}"
    );
    // Re-registering with the owner is fine.
    a.register(mem.ptr(), ps).unwrap();
}
