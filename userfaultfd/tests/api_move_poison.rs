//! `UFFDIO_MOVE` (Linux 6.8) and `UFFDIO_POISON` (Linux 6.6). On an older kernel each test
//! asserts the typed error naming the missing feature instead (asserted-unsupported).

mod common;

use common::*;
use userfaultfd::Errno;
use userfaultfd::{Error, FaultKind, FeatureFlags, MoveMode, Operation};

/// A private source buffer with its pages populated with `v` (all but `holes`), and excluded
/// from fork (MADV_DONTFORK) so a concurrent fork in this binary cannot make its pages shared,
/// which MOVE refuses with EBUSY.
fn source(pages: usize, v: u8, holes: &[usize]) -> Map {
    let ps = ps();
    let src = Map::anon(pages * ps);
    src.madvise(0, pages * ps, libc::MADV_DONTFORK);
    for p in 0..pages {
        if !holes.contains(&p) {
            src.fill(p * ps, ps, v + p as u8);
        }
    }
    src
}

#[test]
fn move_resolves_fault_and_leaves_hole() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let Some(uffd) = kernel::uffd_with_or_unsupported(FeatureFlags::MOVE, FeatureFlags::empty())
    else {
        return;
    };
    let src = source(1, 0x40, &[]);
    let dst = Map::anon(2 * ps);
    dst.madvise(0, 2 * ps, libc::MADV_DONTFORK);
    uffd.register(dst.ptr(), 2 * ps).unwrap();
    let rx = reader(dst.addr() + ps + 1);
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::Missing, dst.addr() + ps));
    assert!(src.resident(0));
    // SAFETY: src and dst are our private mappings; dst's page is missing; no references.
    let n = unsafe { uffd.r#move(src.ptr(), addr as *mut _, ps, true) }.unwrap();
    assert_eq!(n, ps);
    assert_eq!(recv(&rx), 0x40);
    dst.assert_all(ps, ps, 0x40);
    // The source is now a hole.
    assert!(!src.resident(0));
    src.assert_all(0, ps, 0);
}

#[test]
fn partial_move_with_src_hole() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let Some(uffd) = kernel::uffd_with_or_unsupported(FeatureFlags::MOVE, FeatureFlags::empty())
    else {
        return;
    };
    let src = source(3, 0x10, &[1]);
    let dst = Map::anon(3 * ps);
    dst.madvise(0, 3 * ps, libc::MADV_DONTFORK);
    uffd.register(dst.ptr(), 3 * ps).unwrap();
    // SAFETY: our private mappings, nobody references them.
    let e = unsafe { uffd.r#move(src.ptr(), dst.ptr(), 3 * ps, true) }.unwrap_err();
    match e {
        Error::PartialProgress {
            op: Operation::Move,
            done,
            len,
            errno,
            ..
        } => assert_eq!((done, len, errno), (ps, 3 * ps, Errno::EAGAIN)),
        other => panic!("expected PartialProgress, got {other:?}"),
    }
    dst.assert_all(0, ps, 0x10);
    // Resuming at dst+done meets the hole first: nothing done, ENOENT.
    // SAFETY: as above.
    let e = unsafe { uffd.r#move(src.at(ps), dst.at(ps), 2 * ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Move,
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn move_allow_src_holes_skips_holes() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let Some(uffd) = kernel::uffd_with_or_unsupported(FeatureFlags::MOVE, FeatureFlags::empty())
    else {
        return;
    };
    let src = source(3, 0x20, &[1]);
    let dst = Map::anon(3 * ps);
    dst.madvise(0, 3 * ps, libc::MADV_DONTFORK);
    uffd.register(dst.ptr(), 3 * ps).unwrap();
    // SAFETY: our private mappings, nobody references them.
    let n = unsafe { uffd.move_with_mode(src.ptr(), dst.ptr(), 3 * ps, MoveMode::ALLOW_SRC_HOLES) }
        .unwrap();
    assert_eq!(n, 3 * ps);
    dst.assert_all(0, ps, 0x20);
    dst.assert_all(2 * ps, ps, 0x22);
    assert!(!src.resident(0) && !src.resident(2 * ps));
    // The hole stayed a hole at dst: a copy can still fill it.
    let fill = page_of(9, ps);
    // SAFETY: dst page 1 is missing and registered.
    unsafe { uffd.copy(fill.as_ptr().cast(), dst.at(ps), ps, true) }.unwrap();
    dst.assert_all(ps, ps, 9);
}

#[test]
fn move_onto_present_page_is_already_mapped() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let Some(uffd) = kernel::uffd_with_or_unsupported(FeatureFlags::MOVE, FeatureFlags::empty())
    else {
        return;
    };
    let src = source(1, 0x30, &[]);
    let dst = Map::anon(ps);
    dst.madvise(0, ps, libc::MADV_DONTFORK);
    uffd.register(dst.ptr(), ps).unwrap();
    let fill = page_of(1, ps);
    // SAFETY: missing registered page.
    unsafe { uffd.copy(fill.as_ptr().cast(), dst.ptr(), ps, true) }.unwrap();
    // SAFETY: our private mappings.
    let e = unsafe { uffd.r#move(src.ptr(), dst.ptr(), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::AlreadyMapped {
                op: Operation::Move,
                ..
            }
        ),
        "{e:?}"
    );
    src.assert_all(0, ps, 0x30);
}

#[test]
fn poison_raises_sigbus_and_refuses_twice() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let Some(uffd) = kernel::uffd_with_or_unsupported(FeatureFlags::POISON, FeatureFlags::empty())
    else {
        return;
    };
    let mem = Map::anon(2 * ps);
    // Give the VMA anonymous memory before registering, so fork copies its page tables
    // (including the poison marker) to the child.
    mem.write(0, 1);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    // SAFETY: `mem` is this test's raw mapping, touched only through raw pointers, and the
    // poisoned page is read below only in a forked child that expects SIGBUS.
    let n = unsafe { uffd.poison(mem.at(ps), ps, true) }.unwrap();
    assert_eq!(n, ps);
    // SAFETY: refused (EEXIST): nothing changes.
    let e = unsafe { uffd.poison(mem.at(ps), ps, true) }.unwrap_err();
    assert!(
        matches!(e, Error::AlreadyMapped { op: Operation::Poison, addr } if addr == mem.addr() + ps),
        "{e:?}"
    );
    // Poison never replaces a present page either.
    // SAFETY: refused (EEXIST): nothing changes.
    let e = unsafe { uffd.poison(mem.ptr(), ps, true) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::AlreadyMapped {
                op: Operation::Poison,
                ..
            }
        ),
        "{e:?}"
    );

    let addr = mem.addr() + ps;
    // SAFETY: the child only performs a volatile read and _exit, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: the page is mapped in the child (a copy of our address space).
        unsafe {
            std::ptr::read_volatile(addr as *const u8);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
        "child status {status:#x}: expected death by SIGBUS"
    );
}
