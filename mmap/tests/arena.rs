//! `MemoryMappingArena`: reservation, sub-mappings, the overlap rules and
//! argument errors, observed through `/proc/self/smaps` and the data.

mod common;

use std::os::fd::{AsFd, BorrowedFd};

use common::hugetlbfs::zero_size_hugetlbfs_file;
use common::{closed_fd, pattern, pread, pwrite, vmas_in};
use mmap::Errno;
use mmap::{
    Error, HugePageSize, MappedRegion, MemoryMapping, MemoryMappingArena, MemoryMappingBuilder,
    Protection, SharedMemory, VolatileSlice,
};

const HUGE: usize = 2 << 20;

fn ps() -> usize {
    mmap::pagesize()
}

/// A volatile view of `len` bytes at `offset` of the arena.
fn view(arena: &MemoryMappingArena, offset: usize, len: usize) -> VolatileSlice<'_> {
    assert!(offset + len <= arena.size());
    // SAFETY: the range lies inside the arena, which stays mapped while borrowed;
    // the tests only touch pages they mapped accessible.
    unsafe { VolatileSlice::new(arena.as_ptr().add(offset), len) }
}

fn read(arena: &MemoryMappingArena, offset: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    view(arena, offset, len).copy_to(&mut buf);
    buf
}

/// (start page, end page, perms) of every VMA in the arena.
fn layout(arena: &MemoryMappingArena) -> Vec<(usize, usize, String)> {
    let base = arena.as_ptr() as usize;
    vmas_in(arena.as_ptr(), arena.size())
        .into_iter()
        .map(|v| {
            (
                (v.start.max(base) - base) / ps(),
                (v.end.min(base + arena.size()) - base) / ps(),
                v.perms,
            )
        })
        .collect()
}

fn l(v: &[(usize, usize, &str)]) -> Vec<(usize, usize, String)> {
    v.iter().map(|&(a, b, p)| (a, b, p.to_string())).collect()
}

#[test]
fn new_reserves_inaccessible_address_space() {
    let arena = MemoryMappingArena::new(8 * ps()).unwrap();
    assert_eq!(arena.size(), 8 * ps());
    let vmas = vmas_in(arena.as_ptr(), 8 * ps());
    assert_eq!(vmas.len(), 1);
    assert_eq!(vmas[0].perms, "---p");
    assert!(vmas[0].has("nr") && vmas[0].has("dd"));
    assert_eq!(vmas[0].rss_kb, 0);
}

#[test]
fn sub_mappings_are_placed_at_their_offsets() {
    let mut arena = MemoryMappingArena::new(8 * ps()).unwrap();
    let shm = SharedMemory::new("arena", 2 * ps() as u64).unwrap();
    pwrite(&shm, ps() as u64, b"memfd page 1");
    arena.add_anon(ps(), 2 * ps()).unwrap();
    arena
        .add_fd_offset(4 * ps(), ps(), &shm, ps() as u64)
        .unwrap();
    arena
        .add_fd_offset_protection(6 * ps(), ps(), &shm, ps() as u64, Protection::read())
        .unwrap();
    assert_eq!(
        layout(&arena),
        l(&[
            (0, 1, "---p"),
            (1, 3, "rw-s"),
            (3, 4, "---p"),
            (4, 5, "rw-s"),
            (5, 6, "---p"),
            (6, 7, "r--s"),
            (7, 8, "---p"),
        ])
    );
    assert_eq!(read(&arena, 4 * ps(), 12), b"memfd page 1");
    assert_eq!(read(&arena, 6 * ps(), 12), b"memfd page 1");
    view(&arena, 4 * ps(), 3).copy_from(b"MEM");
    assert_eq!(pread(&shm, ps() as u64, 12), b"MEMfd page 1");
    assert_eq!(read(&arena, 6 * ps(), 3), b"MEM");
    view(&arena, ps(), 2 * ps()).write_bytes(0xab);
    assert!(read(&arena, ps(), 2 * ps()).iter().all(|&b| b == 0xab));
    // Every sub-mapping is excluded from core dumps too.
    for v in vmas_in(arena.as_ptr(), arena.size()) {
        assert!(v.has("dd"), "{:?}", v);
    }
}

#[test]
fn add_fd_without_offset_maps_the_start() {
    let mut arena = MemoryMappingArena::new(2 * ps()).unwrap();
    let shm = SharedMemory::new("start", ps() as u64).unwrap();
    pwrite(&shm, 0, b"start");
    arena.add_fd(ps(), ps(), &shm).unwrap();
    assert_eq!(read(&arena, ps(), 5), b"start");
}

#[test]
fn overlapping_adds_replace_only_the_overlap() {
    let mut arena = MemoryMappingArena::new(12 * ps()).unwrap();
    arena.add_anon(4 * ps(), 4 * ps()).unwrap();
    let data = pattern(4 * ps(), 9);
    view(&arena, 4 * ps(), 4 * ps()).copy_from(&data);

    // Overlap the front (pages 2..5): page 4 is replaced, 5..8 keep their data.
    arena
        .add_anon_protection(2 * ps(), 3 * ps(), Protection::read())
        .unwrap();
    assert_eq!(
        layout(&arena),
        l(&[
            (0, 2, "---p"),
            (2, 5, "r--s"),
            (5, 8, "rw-s"),
            (8, 12, "---p")
        ])
    );
    assert!(read(&arena, 4 * ps(), ps()).iter().all(|&b| b == 0));
    assert_eq!(read(&arena, 5 * ps(), 3 * ps()), &data[ps()..]);

    // Overlap the back (pages 7..10).
    arena.add_anon(7 * ps(), 3 * ps()).unwrap();
    assert!(read(&arena, 7 * ps(), ps()).iter().all(|&b| b == 0));
    assert_eq!(read(&arena, 5 * ps(), 2 * ps()), &data[ps()..3 * ps()]);

    // Overlap the end of the first, all of the middle and the start of the
    // last sub-mapping (pages 3..9).
    let shm = SharedMemory::new("over", 6 * ps() as u64).unwrap();
    arena
        .add_fd_offset_protection(3 * ps(), 6 * ps(), &shm, 0, Protection::read_exec())
        .unwrap();
    assert_eq!(
        layout(&arena),
        l(&[
            (0, 2, "---p"),
            (2, 3, "r--s"),
            (3, 9, "r-xs"),
            (9, 10, "rw-s"),
            (10, 12, "---p")
        ])
    );

    // Fully inside an existing sub-mapping.
    arena.add_anon(5 * ps(), ps()).unwrap();
    assert_eq!(
        layout(&arena),
        l(&[
            (0, 2, "---p"),
            (2, 3, "r--s"),
            (3, 5, "r-xs"),
            (5, 6, "rw-s"),
            (6, 9, "r-xs"),
            (9, 10, "rw-s"),
            (10, 12, "---p"),
        ])
    );

    // Exactly covering the whole arena.
    arena.add_anon(0, 12 * ps()).unwrap();
    assert_eq!(layout(&arena), l(&[(0, 12, "rw-s")]));
}

#[test]
fn remove_across_several_sub_mappings() {
    let mut arena = MemoryMappingArena::new(8 * ps()).unwrap();
    arena.add_anon(0, 3 * ps()).unwrap();
    arena.add_anon(3 * ps(), 3 * ps()).unwrap();
    view(&arena, 0, 6 * ps()).write_bytes(1);
    arena.remove(2 * ps(), 2 * ps()).unwrap();
    assert_eq!(
        layout(&arena),
        l(&[
            (0, 2, "rw-s"),
            (2, 4, "---p"),
            (4, 6, "rw-s"),
            (6, 8, "---p")
        ])
    );
    assert!(read(&arena, 0, 2 * ps()).iter().all(|&b| b == 1));
    assert!(read(&arena, 4 * ps(), 2 * ps()).iter().all(|&b| b == 1));
    // Removing a hole is fine, and re-adding gives fresh zero pages.
    arena.remove(6 * ps(), 2 * ps()).unwrap();
    arena.add_anon(2 * ps(), ps()).unwrap();
    assert!(read(&arena, 2 * ps(), ps()).iter().all(|&b| b == 0));
}

#[test]
fn sizes_round_up_to_the_page_size() {
    let mut arena = MemoryMappingArena::new(3 * ps() + 1).unwrap();
    assert_eq!(arena.size(), 4 * ps());
    arena.add_anon(ps(), 1).unwrap();
    assert_eq!(
        layout(&arena),
        l(&[(0, 1, "---p"), (1, 2, "rw-s"), (2, 4, "---p")])
    );
    arena.add_anon(3 * ps(), ps() - 1).unwrap();
    assert_eq!(layout(&arena).last().unwrap(), &(3, 4, "rw-s".to_string()));
}

#[test]
fn bad_arguments_each_get_their_error() {
    let mut arena = MemoryMappingArena::new(4 * ps()).unwrap();
    let shm = SharedMemory::new("bad", 4 * ps() as u64).unwrap();
    assert_eq!(
        arena.add_anon(0, 0).unwrap_err(),
        Error::ZeroSize { op: "add_anon" }
    );
    assert_eq!(
        arena.remove(0, 0).unwrap_err(),
        Error::ZeroSize { op: "remove" }
    );
    assert_eq!(
        arena.add_anon(ps() + 1, ps()).unwrap_err(),
        Error::UnalignedOffset {
            op: "add_anon",
            offset: ps() as u64 + 1,
            align: ps() as u64
        }
    );
    assert_eq!(
        arena
            .add_fd_offset(3 * ps(), 2 * ps(), &shm, 0)
            .unwrap_err(),
        Error::InvalidRange {
            op: "add_fd",
            offset: 3 * ps(),
            count: 2 * ps(),
            size: 4 * ps()
        }
    );
    assert_eq!(
        arena.remove(4 * ps(), 1).unwrap_err(),
        Error::InvalidRange {
            op: "remove",
            offset: 4 * ps(),
            count: ps(),
            size: 4 * ps()
        }
    );
    assert_eq!(
        arena.add_fd_offset(0, ps(), &shm, 3).unwrap_err(),
        Error::UnalignedOffset {
            op: "mmap",
            offset: 3,
            align: ps() as u64
        }
    );
    // SAFETY: the number is closed and owned by nobody; mmap(2) fails with EBADF.
    let closed = unsafe { BorrowedFd::borrow_raw(closed_fd()) };
    common::assert_os(
        arena.add_fd(0, ps(), closed).unwrap_err(),
        "mmap",
        Errno::EBADF,
    );
    // The refused calls changed nothing.
    assert_eq!(layout(&arena), l(&[(0, 4, "---p")]));
}

#[test]
fn from_memory_mapping_keeps_its_contents() {
    let m = MemoryMapping::new(4 * ps() - 10).unwrap();
    m.write_slice(b"kept", 3 * ps()).unwrap();
    let addr = m.as_ptr();
    let mut arena = MemoryMappingArena::from(m);
    assert_eq!(arena.as_ptr(), addr);
    assert_eq!(arena.size(), 4 * ps());
    arena.add_anon(0, ps()).unwrap();
    assert_eq!(read(&arena, 3 * ps(), 4), b"kept");
    assert_eq!(layout(&arena), l(&[(0, 1, "rw-s"), (1, 4, "rw-s")]));
}

#[test]
fn mapped_region_trait_forwards_to_the_arena() {
    let mut arena = MemoryMappingArena::new(4 * ps()).unwrap();
    let shm = SharedMemory::new("trait", ps() as u64).unwrap();
    pwrite(&shm, 0, b"via trait");
    {
        let region: &mut dyn MappedRegion = &mut arena;
        region
            .add_fd_mapping(ps(), ps(), shm.as_fd(), 0, Protection::read())
            .unwrap();
        region.msync(ps(), ps()).unwrap();
        // A hole (inaccessible reservation) is still mapped, so msync succeeds.
        region.msync(0, 4 * ps()).unwrap();
    }
    assert_eq!(read(&arena, ps(), 9), b"via trait");
    assert_eq!(layout(&arena)[1], (1, 2, "r--s".to_string()));
    let region: &mut dyn MappedRegion = &mut arena;
    region.remove_mapping(ps(), ps()).unwrap();
    assert_eq!(layout(&arena), l(&[(0, 4, "---p")]));
}

/// An inaccessible arena of `size` bytes at a multiple of `HUGE`.
fn aligned_arena(size: usize) -> MemoryMappingArena {
    MemoryMappingBuilder::new(size)
        .private()
        .noreserve()
        .protection(Protection::none())
        .align(HUGE as u64)
        .build()
        .unwrap()
        .into()
}

/// An arena of `size` bytes at a multiple of `HUGE`, and a separately owned
/// page mapped right after it.
fn arena_with_neighbour(size: usize) -> (MemoryMappingArena, MemoryMapping) {
    for _ in 0..16 {
        let arena = aligned_arena(size);
        let end = arena.as_ptr().wrapping_add(size);
        match MemoryMappingBuilder::new(ps()).build_fixed_noreplace(end) {
            Ok(neighbour) => return (arena, neighbour),
            // Another test's mapping is there; try elsewhere.
            Err(e) if e.errno() == Some(Errno::EEXIST) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the page after every arena tried was taken");
}

#[test]
fn hugetlbfs_fd_is_checked_with_its_huge_page_size() {
    let shm = match SharedMemory::new_hugetlb("past-end", HUGE as u64, HugePageSize::Size2MiB) {
        Ok(shm) => shm,
        Err(e) => {
            test_kit::report::skip(format!(
                "no 2 MiB hugetlbfs memfd: {e} (sysctl -w vm.nr_hugepages=128)"
            ));
            return;
        }
    };
    let (mut arena, neighbour) = arena_with_neighbour(HUGE / 2);
    neighbour.write_obj(0x5eed_u32, 0).unwrap();
    // One page asked for, but the file is mapped in whole huge pages: 2 MiB
    // from the start of the arena would cover the neighbour.
    assert_eq!(
        arena.add_fd(0, ps(), &shm).unwrap_err(),
        Error::InvalidRange {
            op: "add_fd",
            offset: 0,
            count: HUGE,
            size: HUGE / 2
        }
    );
    assert_eq!(neighbour.read_obj::<u32>(0).unwrap(), 0x5eed);
    assert_eq!(layout(&arena), l(&[(0, HUGE / 2 / ps(), "---p")]));

    // A huge page mapping must start at a multiple of the huge page size.
    let mut arena = aligned_arena(2 * HUGE);
    assert_eq!(
        arena.add_fd(ps(), HUGE, &shm).unwrap_err(),
        Error::UnalignedAddress {
            op: "add_fd",
            addr: arena.as_ptr() as usize + ps(),
            align: HUGE as u64
        }
    );
    assert_eq!(layout(&arena), l(&[(0, 2 * HUGE / ps(), "---p")]));
}

#[test]
fn failed_hugetlbfs_mapping_leaves_the_range_to_the_arena() {
    let file = match zero_size_hugetlbfs_file() {
        Ok(file) => file,
        Err(why) => {
            test_kit::report::skip(format!(
                "could not make a hugetlbfs file ({why}): needs root (for a private hugetlbfs \
                 mount) and free 2 MiB huge pages (sysctl -w vm.nr_hugepages=128)"
            ));
            return;
        }
    };
    let mut arena = aligned_arena(2 * HUGE);
    arena.add_anon(0, HUGE).unwrap();
    view(&arena, 0, 4).copy_from(b"kept");
    // The file's huge pages cannot be reserved, as when the pool is empty.
    common::assert_os(
        arena.add_fd(0, HUGE, &file).unwrap_err(),
        "mmap",
        Errno::ENOMEM,
    );
    // The range is still the arena's: no other mapping can be placed there
    // (which the arena's drop would then unmap)...
    let other = MemoryMappingBuilder::new(HUGE).build_fixed_noreplace(arena.as_ptr());
    assert_eq!(other.unwrap_err().errno(), Some(Errno::EEXIST));
    // ...and the old sub-mapping was not replaced at all.
    assert_eq!(read(&arena, 0, 4), b"kept");
    let pages = HUGE / ps();
    assert_eq!(
        layout(&arena),
        l(&[(0, pages, "rw-s"), (pages, 2 * pages, "---p")])
    );
    assert_eq!(arena.size(), 2 * HUGE);
}
