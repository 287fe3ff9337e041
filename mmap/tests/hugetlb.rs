//! hugetlb mappings (`MAP_HUGETLB`, `MFD_HUGETLB`): length rounding, `ht` in
//! `VmFlags`, huge-page-granular operations, and the errors for sizes the
//! kernel lacks and for an exhausted pool.
//!
//! Tests that need free 2 MiB pages skip (and print why) when there are none:
//! CI reserves them with `sysctl vm.nr_hugepages=128`. Other processes share
//! the pool, so a mapping that fails with ENOMEM although pages looked free is
//! also reported as a skip.

mod common;

use std::fs;

use common::{have_huge_pages, pread, vma_at, vmas_in};
use mmap::Errno;
use mmap::{
    Error, HugePageAdvice, HugePageSize, MappedRegion, MemoryMapping, MemoryMappingArena,
    MemoryMappingBuilder, Protection, Result, SharedMemory,
};

const HUGE: usize = 2 << 20;

fn ps() -> usize {
    mmap::pagesize()
}

/// `Ok(Some(m))`, or `None` after recording a skip if the pool ran dry.
fn or_skip<T>(test: &str, r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if e.errno() == Some(Errno::ENOMEM) => {
            test_kit::report::skip(format!(
                "the huge page pool ran out ({e}) (sysctl -w vm.nr_hugepages=128)"
            ));
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

fn pool_value(size_kb: usize, file: &str) -> Option<u64> {
    fs::read_to_string(format!(
        "/sys/kernel/mm/hugepages/hugepages-{size_kb}kB/{file}"
    ))
    .ok()?
    .trim()
    .parse()
    .ok()
}

#[test]
fn private_hugetlb_rounds_the_length() {
    if !have_huge_pages(2) {
        return;
    }
    let b = MemoryMappingBuilder::new(HUGE + 1)
        .private()
        .hugetlb(HugePageSize::Size2MiB);
    let Some(m) = or_skip("private_hugetlb_rounds_the_length", b.build()) else {
        return;
    };
    assert_eq!(m.size(), 2 * HUGE);
    assert_eq!(m.page_size(), HUGE);
    assert!(m.is_hugetlb());
    assert_eq!(m.as_ptr() as usize % HUGE, 0);
    let vma = vma_at(m.as_ptr());
    assert_eq!(
        (vma.start, vma.end),
        (m.as_ptr() as usize, m.as_ptr() as usize + 2 * HUGE)
    );
    assert!(vma.has("ht") && vma.has("dd"), "{:?}", vma.flags);
    assert!(!vma.has("sh"));
    assert_eq!(vma.kernel_page_kb, 2048);
    m.write_obj(0xabcd_u16, 2 * HUGE - 2).unwrap();
    assert_eq!(m.read_obj::<u16>(2 * HUGE - 2).unwrap(), 0xabcd);
    assert_eq!(m.use_hugepages().unwrap(), HugePageAdvice::Hugetlb);
}

#[test]
fn hugetlb_operations_are_huge_page_granular() {
    if !have_huge_pages(2) {
        return;
    }
    let b = MemoryMappingBuilder::new(2 * HUGE)
        .private()
        .hugetlb(HugePageSize::Size2MiB);
    let Some(m) = or_skip("hugetlb_operations_are_huge_page_granular", b.build()) else {
        return;
    };
    assert_eq!(
        m.drop_page_cache(ps(), ps()).unwrap_err(),
        Error::UnalignedOffset {
            op: "drop_page_cache",
            offset: ps() as u64,
            align: HUGE as u64
        }
    );
    m.write_obj(7u8, HUGE).unwrap();
    m.write_obj(8u8, 0).unwrap();
    // Private hugetlb: DONTNEED discards the data.
    m.drop_page_cache(HUGE, HUGE).unwrap();
    assert_eq!(m.read_obj::<u8>(HUGE).unwrap(), 0);
    assert_eq!(m.read_obj::<u8>(0).unwrap(), 8);
    m.async_prefetch(0, HUGE).unwrap();
}

#[test]
fn hugetlb_memfd_two_views_and_remove() {
    if !have_huge_pages(2) {
        return;
    }
    let shm = SharedMemory::new_hugetlb("huge", 2 * HUGE as u64, HugePageSize::Size2MiB).unwrap();
    let Some(a) = or_skip("hugetlb_memfd", MemoryMapping::from_fd(&shm, 2 * HUGE)) else {
        return;
    };
    // A hugetlbfs file is recognised without `.hugetlb()`: the length is
    // rounded up and operations are huge-page granular.
    let b = MemoryMapping::from_fd(&shm, HUGE + 1).unwrap();
    assert!(b.is_hugetlb());
    assert_eq!((b.size(), b.page_size()), (2 * HUGE, HUGE));
    assert!(vma_at(a.as_ptr()).has("ht") && vma_at(a.as_ptr()).has("sh"));
    assert_eq!(vma_at(b.as_ptr()).kernel_page_kb, 2048);
    a.write_slice(b"huge page", HUGE).unwrap();
    let mut buf = [0u8; 9];
    b.read_slice(&mut buf, HUGE).unwrap();
    assert_eq!(&buf, b"huge page");
    assert_eq!(pread(&shm, HUGE as u64, 9), b"huge page");
    // Shared hugetlb: DONTNEED keeps the data, REMOVE discards it.
    a.drop_page_cache(HUGE, HUGE).unwrap();
    assert_eq!(a.read_obj::<[u8; 9]>(HUGE).unwrap(), *b"huge page");
    a.remove_range(HUGE, HUGE).unwrap();
    assert_eq!(b.read_obj::<[u8; 9]>(HUGE).unwrap(), [0; 9]);
}

#[test]
fn hugetlb_memfd_offsets_are_huge_page_granular() {
    let shm =
        SharedMemory::new_hugetlb("huge-off", 2 * HUGE as u64, HugePageSize::Size2MiB).unwrap();
    assert_eq!(
        MemoryMapping::from_fd_offset(&shm, HUGE, ps() as u64).unwrap_err(),
        Error::UnalignedOffset {
            op: "mmap",
            offset: ps() as u64,
            align: HUGE as u64
        }
    );
    // MAP_HUGETLB on a file that is not on hugetlbfs.
    let plain = SharedMemory::new("not-huge", ps() as u64).unwrap();
    let err = MemoryMappingBuilder::new(ps())
        .from_shared_memory(&plain)
        .hugetlb(HugePageSize::Size2MiB)
        .build()
        .unwrap_err();
    common::assert_os(err, "mmap", Errno::EINVAL);
}

#[test]
fn hugetlb_memfd_size_must_be_huge_page_aligned() {
    let mut shm = SharedMemory::new_hugetlb("huge-size", 0, HugePageSize::Size2MiB).unwrap();
    common::assert_os(
        shm.set_size(HUGE as u64 + 4096).unwrap_err(),
        "ftruncate",
        Errno::EINVAL,
    );
    // Without pages taken: sizing a hugetlb memfd reserves nothing yet.
    shm.set_size(HUGE as u64).unwrap();
}

#[test]
fn hugetlb_honours_a_larger_alignment() {
    if !have_huge_pages(1) {
        return;
    }
    let b = MemoryMappingBuilder::new(HUGE)
        .private()
        .hugetlb(HugePageSize::Size2MiB)
        .align(1 << 30);
    let Some(m) = or_skip("hugetlb_honours_a_larger_alignment", b.build()) else {
        return;
    };
    assert_eq!(m.as_ptr() as usize % (1 << 30), 0);
    let vmas = vmas_in(m.as_ptr(), HUGE);
    assert_eq!(vmas.len(), 1);
    assert_eq!(
        (vmas[0].start, vmas[0].end),
        (m.as_ptr() as usize, m.as_ptr() as usize + HUGE)
    );
}

/// A huge page size the running kernel has no pool for.
fn missing_size() -> HugePageSize {
    [
        HugePageSize::Size16GiB,
        HugePageSize::Size64KiB,
        HugePageSize::Size8MiB,
        HugePageSize::Size512KiB,
        HugePageSize::Size2GiB,
    ]
    .into_iter()
    .find(|s| s.free_pages().is_none())
    .expect("this machine supports every huge page size")
}

#[test]
fn unsupported_huge_page_size_is_einval() {
    let size = missing_size();
    let err = MemoryMappingBuilder::new(1)
        .private()
        .hugetlb(size)
        .build()
        .unwrap_err();
    common::assert_os(err, "mmap", Errno::EINVAL);
    let err = SharedMemory::new_hugetlb("nosize", 0, size).unwrap_err();
    // memfd_create(2) reports a missing hugetlbfs mount for that size as ENODEV.
    common::assert_os(err, "memfd_create", Errno::ENODEV);
}

#[test]
fn more_pages_than_the_pool_is_enomem() {
    // Without MAP_NORESERVE the kernel reserves every page at mmap time, so
    // asking for one page more than the whole pool fails whatever others use.
    let (Some(total), Some(overcommit)) = (
        pool_value(2048, "nr_hugepages"),
        pool_value(2048, "nr_overcommit_hugepages"),
    ) else {
        test_kit::report::skip("no 2 MiB hugetlb pool on this kernel (CONFIG_HUGETLBFS)");
        return;
    };
    if overcommit != 0 {
        test_kit::report::skip(format!(
            "nr_overcommit_hugepages={overcommit} lets the pool grow past its size \
             (sysctl -w vm.nr_overcommit_hugepages=0)"
        ));
        return;
    }
    let len = (total as usize + 1) * HUGE;
    let b = MemoryMappingBuilder::new(len)
        .private()
        .hugetlb(HugePageSize::Size2MiB);
    common::assert_os(b.build().unwrap_err(), "mmap", Errno::ENOMEM);
    let b = MemoryMappingBuilder::new(len)
        .shared()
        .hugetlb(HugePageSize::Size2MiB);
    common::assert_os(b.build().unwrap_err(), "mmap", Errno::ENOMEM);

    // With MAP_NORESERVE nothing is reserved, so the mapping is made (touching
    // more pages than the pool holds would then raise SIGBUS).
    let m = MemoryMappingBuilder::new(len)
        .private()
        .noreserve()
        .hugetlb(HugePageSize::Size2MiB)
        .build()
        .unwrap();
    let vma = vma_at(m.as_ptr());
    assert!(vma.has("ht") && vma.has("nr"), "{:?}", vma.flags);
}

#[test]
fn empty_pool_is_enomem() {
    // The 1 GiB pool exists on x86_64 with pdpe1gb but nobody reserves pages in it.
    match (
        pool_value(1 << 20, "nr_hugepages"),
        pool_value(1 << 20, "nr_overcommit_hugepages"),
    ) {
        (Some(0), Some(0)) => {
            let err = MemoryMappingBuilder::new(1)
                .private()
                .hugetlb(HugePageSize::Size1GiB)
                .build()
                .unwrap_err();
            common::assert_os(err, "mmap", Errno::ENOMEM);
        }
        other => test_kit::report::skip(format!(
            "needs an empty 1 GiB huge page pool, (nr, overcommit) = {other:?} (write 0 to both \
             in /sys/kernel/mm/hugepages/hugepages-1048576kB/)"
        )),
    }
}

#[test]
fn arena_replaces_hugetlb_memory_in_whole_huge_pages() {
    if !have_huge_pages(2) {
        return;
    }
    let shm = SharedMemory::new_hugetlb("arena", 2 * HUGE as u64, HugePageSize::Size2MiB).unwrap();
    let mut arena: MemoryMappingArena = MemoryMappingBuilder::new(4 * HUGE)
        .private()
        .noreserve()
        .protection(Protection::none())
        .align(HUGE as u64)
        .build()
        .unwrap()
        .into();
    let test = "arena_replaces_hugetlb_memory_in_whole_huge_pages";
    assert_eq!(arena.page_size(), ps());
    // One page asked for, one huge page mapped; from now on a userfaultfd must resolve the
    // arena in huge pages, and the arena says so.
    if or_skip(test, arena.add_fd(HUGE, ps(), &shm)).is_none() {
        return;
    }
    assert_eq!(arena.page_size(), HUGE);
    let vmas = vmas_in(arena.as_ptr(), arena.size());
    let base = arena.as_ptr() as usize;
    let huge_vma = vmas.iter().find(|v| v.has("ht")).expect("a hugetlb VMA");
    assert_eq!(
        (huge_vma.start, huge_vma.end),
        (base + HUGE, base + 2 * HUGE)
    );
    // Splitting its huge page is refused before any system call...
    assert_eq!(
        arena.remove(HUGE + ps(), ps()).unwrap_err(),
        Error::UnalignedOffset {
            op: "remove",
            offset: (HUGE + ps()) as u64,
            align: HUGE as u64
        }
    );
    assert_eq!(
        arena.add_anon(0, HUGE + ps()).unwrap_err(),
        Error::UnalignedOffset {
            op: "add_anon",
            offset: (HUGE + ps()) as u64,
            align: HUGE as u64
        }
    );
    // ...and nothing was given up: the whole arena is still its own.
    assert_eq!(arena.size(), 4 * HUGE);
    // Whole huge pages can be replaced, and then split as base pages.
    arena.add_anon(0, 2 * HUGE).unwrap();
    arena.remove(HUGE + ps(), ps()).unwrap();
    assert!(vmas_in(arena.as_ptr(), arena.size())
        .iter()
        .all(|v| !v.has("ht")));
    assert_eq!(arena.page_size(), ps(), "no huge page left in the arena");

    // An arena made from hugetlb memory follows the same rule.
    let Some(m) = or_skip(
        test,
        MemoryMappingBuilder::new(HUGE)
            .private()
            .hugetlb(HugePageSize::Size2MiB)
            .build(),
    ) else {
        return;
    };
    let mut arena = MemoryMappingArena::from(m);
    assert_eq!(arena.page_size(), HUGE);
    assert!(matches!(
        arena.add_anon(ps(), ps()),
        Err(Error::UnalignedOffset { op: "add_anon", offset, .. }) if offset == ps() as u64
    ));
    arena.add_anon(0, HUGE).unwrap();
    assert_eq!(arena.page_size(), ps());
    arena.add_anon(ps(), ps()).unwrap();
}
