//! Write-protect mode: synchronous WP faults, COPY with `CopyMode::WP`, errors, and the
//! `WP_ASYNC` + `PAGEMAP_SCAN` dirty-tracking round trip.

mod common;

use common::*;
use userfaultfd::Errno;
use userfaultfd::{
    CopyMode, Error, FaultKind, FeatureFlags, IoctlFlags, Operation, PageCategories, PageMap,
    PageRegion, ReadWrite, RegisterMode, ScanRequest,
};

#[test]
fn write_fault_on_protected_page_then_unprotect() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::PAGEFAULT_FLAG_WP);
    let mem = Map::anon(2 * ps);
    mem.fill(0, 2 * ps, 0x11); // populate: WP without WP_UNPOPULATED needs present pages
    let ioctls = uffd
        .register_with_mode(mem.ptr(), 2 * ps, RegisterMode::WRITE_PROTECT)
        .unwrap();
    assert!(ioctls.contains(IoctlFlags::WRITE_PROTECT));
    uffd.write_protect(mem.ptr(), 2 * ps).unwrap();
    // Reads are not affected.
    assert_eq!(mem.read(ps), 0x11);

    let rx = writer(mem.addr() + ps + 9, 0x99);
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::WriteProtected, ReadWrite::Write, mem.addr() + ps)
    );
    assert_eq!(
        mem.read(ps + 9),
        0x11,
        "the write must not have happened yet"
    );
    uffd.remove_write_protection(mem.at(ps), ps, true).unwrap();
    recv(&rx);
    assert_eq!(mem.read(ps + 9), 0x99);
    // Page 0 is still protected: a second writer faults again.
    let rx = writer(mem.addr(), 1);
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::WriteProtected, mem.addr()));
    uffd.remove_write_protection(mem.ptr(), ps, true).unwrap();
    recv(&rx);
    assert_eq!(mem.read(0), 1);
}

#[test]
fn copy_with_wp_mode_maps_protected() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::PAGEFAULT_FLAG_WP);
    let mem = Map::anon(ps);
    uffd.register_with_mode(
        mem.ptr(),
        ps,
        RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
    )
    .unwrap();
    let rx = reader(mem.addr());
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::Missing, ReadWrite::Read, mem.addr())
    );
    let src = page_of(0x33, ps);
    // SAFETY: the missing page of our registered mapping.
    let n =
        unsafe { uffd.copy_with_mode(src.as_ptr().cast(), mem.ptr(), ps, CopyMode::WP) }.unwrap();
    assert_eq!(n, ps);
    assert_eq!(recv(&rx), 0x33);
    // The page arrived write-protected: a write faults as WriteProtected.
    let rx = writer(mem.addr() + 1, 0x44);
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::WriteProtected, ReadWrite::Write, mem.addr())
    );
    uffd.remove_write_protection(mem.ptr(), ps, true).unwrap();
    recv(&rx);
    assert_eq!(mem.read(1), 0x44);
    assert_eq!(mem.read(0), 0x33);
}

#[test]
fn copy_wp_into_range_not_registered_wp_is_einval() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::PAGEFAULT_FLAG_WP);
    let mem = Map::anon(ps);
    uffd.register(mem.ptr(), ps).unwrap();
    let src = page_of(1, ps);
    // SAFETY: our registered missing page; the kernel refuses.
    let e = unsafe { uffd.copy_with_mode(src.as_ptr().cast(), mem.ptr(), ps, CopyMode::WP) }
        .unwrap_err();
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
}

#[test]
fn writeprotect_on_range_not_registered_wp_is_enoent() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::PAGEFAULT_FLAG_WP);
    let mem = Map::anon(ps);
    mem.write(0, 1);
    let ioctls = uffd.register(mem.ptr(), ps).unwrap();
    assert!(!ioctls.contains(IoctlFlags::WRITE_PROTECT));
    let e = uffd.write_protect(mem.ptr(), ps).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::WriteProtect,
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{e:?}"
    );
    let e = uffd
        .remove_write_protection(mem.ptr(), ps, true)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::WriteProtect,
                errno: Errno::ENOENT,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn wp_async_pagemap_scan_round_trip() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    const PAGES: usize = 16;
    let ps = ps();
    let Some(uffd) =
        kernel::uffd_with_or_unsupported(FeatureFlags::WP_ASYNC, FeatureFlags::empty())
    else {
        return;
    };
    let len = PAGES * ps;
    let mem = Map::anon(len);
    uffd.register_with_mode(mem.ptr(), len, RegisterMode::WRITE_PROTECT)
        .unwrap();
    uffd.write_protect(mem.ptr(), len).unwrap();

    // Write pages 1, 4, 5, 6 and 15: no fault messages, the kernel records the writes.
    let written = [1usize, 4, 5, 6, 15];
    for &p in &written {
        mem.write(p * ps + 3, 0xee);
    }
    assert!(
        uffd.read_event().unwrap().is_none(),
        "WP_ASYNC must not report faults"
    );

    let pagemap = PageMap::open().unwrap();
    let expect = [(1, 2), (4, 7), (15, 16)];
    let check = |out: &[PageRegion]| {
        let got: Vec<(usize, usize)> = out
            .iter()
            .map(|r| ((r.start() - mem.addr()) / ps, (r.end() - mem.addr()) / ps))
            .collect();
        assert_eq!(got, expect);
        for r in out {
            assert!(r.categories().contains(PageCategories::WRITTEN));
        }
    };

    let mut out = [PageRegion::default(); 8];
    // Plain scan: reports the written pages, changes nothing.
    let got = pagemap
        .scan(&ScanRequest::written(mem.addr(), len), &mut out)
        .unwrap();
    assert_eq!(got.regions, 3);
    assert_eq!(got.walk_end, mem.addr() + len);
    check(&out[..got.regions]);
    // Rearming scan: reports the same pages and write-protects them again.
    let got = pagemap
        .scan(&ScanRequest::written(mem.addr(), len).rearm(), &mut out)
        .unwrap();
    assert_eq!(got.regions, 3);
    check(&out[..got.regions]);
    // Nothing written since: the next scan finds nothing.
    let got = pagemap
        .scan(&ScanRequest::written(mem.addr(), len), &mut out)
        .unwrap();
    assert_eq!(got.regions, 0);

    // A new write is found again; data survived.
    mem.write(8 * ps, 1);
    let mut found = Vec::new();
    pagemap
        .for_each_written(mem.addr(), len, true, &mut out, |r| {
            found.push((r.start(), r.end()))
        })
        .unwrap();
    assert_eq!(found, vec![(mem.addr() + 8 * ps, mem.addr() + 9 * ps)]);
    for &p in &written {
        assert_eq!(mem.read(p * ps + 3), 0xee);
    }
}
