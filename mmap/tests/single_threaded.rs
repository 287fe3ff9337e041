//! Checks that look at the whole address space, so they must not race with
//! other tests creating mappings: this file holds a single `#[test]` that runs
//! them one after another.
//!
//! - the `size + align` reservation is unmapped on every error path and after
//!   a successful aligned mapping;
//! - dropping a mapping (plain, aligned, hugetlb with a rounded length, an
//!   arena) unmaps all of it;
//! - `build_fixed_noreplace` succeeds on free address space.

mod common;

use std::os::fd::{AsRawFd, BorrowedFd};

use common::{closed_fd, have_huge_pages, is_mapped, vmas};
use mmap::Errno;
use mmap::{
    HugePageSize, MappedRegion, MemoryMapping, MemoryMappingArena, MemoryMappingBuilder,
    Protection, SharedMemory,
};

const GIB: usize = 1 << 30;

fn ps() -> usize {
    mmap::pagesize()
}

/// Total bytes of address space mapped by the process.
fn mapped_bytes() -> usize {
    vmas().iter().map(|v| v.end - v.start).sum()
}

#[test]
fn address_space_checks() {
    reservation_is_unmapped_on_every_error_path();
    successful_aligned_mapping_leaves_no_reservation();
    drop_unmaps_everything();
    hugetlb_drop_unmaps_the_rounded_length();
    fixed_noreplace_maps_free_space();
}

fn reservation_is_unmapped_on_every_error_path() {
    // Each failing call below reserves size + 1 GiB of address space before
    // the step that fails; a leak would add at least 1 GiB per call.
    let shm = SharedMemory::new("leak", ps() as u64).unwrap();
    let ro = std::fs::File::open(format!("/proc/self/fd/{}", shm.as_raw_fd())).unwrap();
    let closed = closed_fd();
    let missing = [HugePageSize::Size16GiB, HugePageSize::Size64KiB]
        .into_iter()
        .find(|s| s.free_pages().is_none())
        .unwrap();

    let before = mapped_bytes();
    for _ in 0..32 {
        // EACCES: a writable shared view of a read-only descriptor.
        let e = MemoryMappingBuilder::new(ps())
            .from_fd(&ro, 0)
            .align(GIB as u64)
            .build();
        assert_eq!(e.unwrap_err().errno(), Some(Errno::EACCES));
        // EBADF: the descriptor is only looked at by the second mmap.
        // SAFETY: the number is closed and owned by nobody.
        let fd = unsafe { BorrowedFd::borrow_raw(closed) };
        let e = MemoryMappingBuilder::new(ps())
            .from_fd(&fd, 0)
            .align(GIB as u64)
            .build();
        assert_eq!(e.unwrap_err().errno(), Some(Errno::EBADF));
        // EINVAL: a huge page size the kernel lacks.
        let e = MemoryMappingBuilder::new(1)
            .private()
            .hugetlb(missing)
            .align(GIB as u64)
            .build();
        assert_eq!(e.unwrap_err().errno(), Some(Errno::EINVAL));
        // EPERM: a writable view of a write-sealed memfd.
        let sealed = SharedMemory::new("sealed", ps() as u64).unwrap();
        sealed.add_seals(mmap::MemfdSeals::WRITE).unwrap();
        let e = MemoryMapping::from_fd_offset_protection_populate(
            &sealed,
            ps(),
            0,
            Some(GIB as u64),
            Protection::read_write(),
            false,
        );
        assert_eq!(e.unwrap_err().errno(), Some(Errno::EPERM));
    }
    let after = mapped_bytes();
    assert!(
        after < before + GIB,
        "address space grew by {:#x} bytes: the reservation leaked",
        after - before
    );
}

fn successful_aligned_mapping_leaves_no_reservation() {
    let before = mapped_bytes();
    let maps: Vec<MemoryMapping> = (0..8)
        .map(|_| MemoryMapping::new_protection(ps(), Some(GIB as u64), Protection::read()).unwrap())
        .collect();
    let after = mapped_bytes();
    assert!(after < before + GIB, "grew by {:#x}", after - before);
    for m in &maps {
        assert_eq!(m.as_ptr() as usize % GIB, 0);
        // Just below and just above the mapping nothing of ours is left.
        assert!(!is_mapped(m.as_ptr().wrapping_sub(ps()), ps()));
        assert!(!is_mapped(m.as_ptr().wrapping_add(ps()), ps()));
    }
}

fn drop_unmaps_everything() {
    let plain = MemoryMapping::new(3 * ps() + 5).unwrap();
    let (addr, len) = (plain.as_ptr(), 4 * ps());
    assert!(is_mapped(addr, len));
    drop(plain);
    assert!(!is_mapped(addr, ps()) && !is_mapped(addr.wrapping_add(3 * ps()), ps()));

    let aligned = MemoryMappingBuilder::new(2 * ps())
        .private()
        .align(1 << 21)
        .build()
        .unwrap();
    let addr = aligned.as_ptr();
    drop(aligned);
    assert!(!is_mapped(addr, ps()) && !is_mapped(addr.wrapping_add(ps()), ps()));

    let mut arena = MemoryMappingArena::new(8 * ps()).unwrap();
    arena.add_anon(ps(), 2 * ps()).unwrap();
    let shm = SharedMemory::new("arena-drop", ps() as u64).unwrap();
    arena.add_fd(5 * ps(), ps(), &shm).unwrap();
    let addr = arena.as_ptr();
    drop(arena);
    for page in 0..8 {
        assert!(
            !is_mapped(addr.wrapping_add(page * ps()), ps()),
            "page {page} still mapped"
        );
    }
}

fn hugetlb_drop_unmaps_the_rounded_length() {
    if !have_huge_pages(2) {
        return;
    }
    let huge = 2 << 20;
    let m = match MemoryMappingBuilder::new(huge + 1)
        .private()
        .hugetlb(HugePageSize::Size2MiB)
        .build()
    {
        Ok(m) => m,
        Err(e) if e.errno() == Some(Errno::ENOMEM) => {
            test_kit::report::skip(
                "the 2 MiB huge page pool ran out (sysctl -w vm.nr_hugepages=128)",
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let addr = m.as_ptr();
    m.write_obj(1u8, huge).unwrap(); // the second huge page, beyond the asked-for size
    drop(m);
    assert!(!is_mapped(addr, huge) && !is_mapped(addr.wrapping_add(huge), huge));

    // The same for a hugetlbfs memfd mapped without `.hugetlb()`.
    let shm = SharedMemory::new_hugetlb("drop", 2 * huge as u64, HugePageSize::Size2MiB).unwrap();
    let m = match MemoryMapping::from_fd(&shm, huge + 1) {
        Ok(m) => m,
        Err(e) if e.errno() == Some(Errno::ENOMEM) => {
            test_kit::report::skip(
                "the 2 MiB huge page pool ran out for the memfd (sysctl -w vm.nr_hugepages=128)",
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let addr = m.as_ptr();
    drop(m);
    assert!(!is_mapped(addr, huge) && !is_mapped(addr.wrapping_add(huge), huge));
}

fn fixed_noreplace_maps_free_space() {
    let outer = MemoryMapping::new(3 * ps()).unwrap();
    let hole = outer.as_ptr().wrapping_add(ps());
    // SAFETY: unmapping the middle page of a mapping we own and do not use; it
    // is mapped again right below, and `outer`'s drop unmaps all three pages.
    assert_eq!(unsafe { libc::munmap(hole.cast(), ps()) }, 0);
    assert!(!is_mapped(hole, ps()));
    let inner = MemoryMappingBuilder::new(ps())
        .private()
        .build_fixed_noreplace(hole)
        .unwrap();
    assert_eq!(inner.as_ptr(), hole);
    assert_eq!(MappedRegion::size(&inner), ps());
    inner.write_obj(5u8, 0).unwrap();
    // Only `outer` unmaps the range.
    std::mem::forget(inner);
    assert!(is_mapped(outer.as_ptr(), 3 * ps()));
}
