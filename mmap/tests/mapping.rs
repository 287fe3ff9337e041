//! Creating mappings: every constructor and builder option, observed through
//! `/proc/self/smaps` (`VmFlags`, permissions) and mincore(2), and each kind of
//! bad input with its error.

mod common;

use std::os::fd::{AsRawFd, BorrowedFd};

use common::{closed_fd, pattern, pread, pwrite, resident, vma_at, vmas_in};
use mmap::Errno;
use mmap::{Error, MappedRegion, MemoryMapping, MemoryMappingBuilder, Protection, SharedMemory};

fn ps() -> usize {
    mmap::pagesize()
}

#[test]
fn new_is_shared_anonymous_noreserve_dontdump() {
    let m = MemoryMapping::new(4 * ps()).unwrap();
    let vma = vma_at(m.as_ptr());
    assert_eq!(vma.start, m.as_ptr() as usize);
    assert_eq!(vma.end, m.as_ptr() as usize + 4 * ps());
    assert_eq!(vma.perms, "rw-s");
    assert_eq!(vma.name, "/dev/zero (deleted)");
    for flag in ["sh", "nr", "dd"] {
        assert!(vma.has(flag), "{flag} missing from {:?}", vma.flags);
    }
    assert!(!vma.has("dc") && !vma.has("hg"));
}

#[test]
fn new_private_is_private_anonymous() {
    let m = MemoryMapping::new_private(4 * ps()).unwrap();
    let vma = vma_at(m.as_ptr());
    assert_eq!(vma.perms, "rw-p");
    assert!(!vma.has("sh"));
    assert!(vma.has("nr") && vma.has("dd"), "{:?}", vma.flags);
}

#[test]
fn builder_flags_reach_the_kernel() {
    let plain = MemoryMappingBuilder::new(ps()).private().build().unwrap();
    let vma = vma_at(plain.as_ptr());
    assert!(
        !vma.has("nr") && !vma.has("sh") && vma.has("dd"),
        "{:?}",
        vma.flags
    );

    let shared = MemoryMappingBuilder::new(ps()).shared().build().unwrap();
    let vma = vma_at(shared.as_ptr());
    assert!(vma.has("sh") && !vma.has("nr"), "{:?}", vma.flags);

    let noreserve = MemoryMappingBuilder::new(ps())
        .private()
        .noreserve()
        .build()
        .unwrap();
    assert!(vma_at(noreserve.as_ptr()).has("nr"));
}

#[test]
fn protection_at_creation() {
    let cases = [
        (Protection::read(), "r--s"),
        (Protection::read_write(), "rw-s"),
        (Protection::read_exec(), "r-xs"),
        (Protection::none(), "---s"),
    ];
    for (prot, perms) in cases {
        let m = MemoryMapping::new_protection(ps(), None, prot).unwrap();
        assert_eq!(vma_at(m.as_ptr()).perms, perms, "{prot:?}");
    }
    let ro = MemoryMapping::new_protection(ps(), None, Protection::read()).unwrap();
    assert_eq!(ro.read_obj::<u64>(0).unwrap(), 0);
}

#[test]
fn every_constructor_sets_dontdump() {
    let shm = SharedMemory::new("dd", 4 * ps() as u64).unwrap();
    let maps = vec![
        MemoryMapping::new(ps()).unwrap(),
        MemoryMapping::new_private(ps()).unwrap(),
        MemoryMapping::new_protection(ps(), Some(1 << 16), Protection::read()).unwrap(),
        MemoryMapping::from_fd(&shm, ps()).unwrap(),
        MemoryMapping::from_fd_offset(&shm, ps(), ps() as u64).unwrap(),
        MemoryMapping::from_fd_offset_protection(&shm, ps(), 0, Protection::read()).unwrap(),
        MemoryMapping::from_fd_offset_protection_populate(
            &shm,
            ps(),
            0,
            None,
            Protection::read(),
            true,
        )
        .unwrap(),
        MemoryMappingBuilder::new(ps())
            .private()
            .from_shared_memory(&shm)
            .build()
            .unwrap(),
    ];
    for m in &maps {
        assert!(vma_at(m.as_ptr()).has("dd"));
    }
}

#[test]
fn returned_addresses_are_aligned() {
    let shm = SharedMemory::new("align", 4 * ps() as u64).unwrap();
    for align in [2 * ps() as u64, 1 << 16, 1 << 21, 1 << 30] {
        let m =
            MemoryMapping::new_protection(3 * ps(), Some(align), Protection::read_write()).unwrap();
        assert_eq!(m.as_ptr() as usize % align as usize, 0, "align {align:#x}");
        // The mapping is exactly its own VMA: the reservation around it is gone.
        let vmas = vmas_in(m.as_ptr(), 3 * ps());
        assert_eq!(vmas.len(), 1);
        assert_eq!(vmas[0].start, m.as_ptr() as usize);
        assert_eq!(vmas[0].end, m.as_ptr() as usize + 3 * ps());
        m.write_obj(1u8, 3 * ps() - 1).unwrap();

        let f = MemoryMapping::from_fd_offset_protection_populate(
            &shm,
            2 * ps(),
            ps() as u64,
            Some(align),
            Protection::read(),
            false,
        )
        .unwrap();
        assert_eq!(f.as_ptr() as usize % align as usize, 0);

        let p = MemoryMappingBuilder::new(ps())
            .private()
            .align(align)
            .build()
            .unwrap();
        assert_eq!(p.as_ptr() as usize % align as usize, 0);
    }
}

#[test]
fn populate_prefaults_every_page() {
    let n = 8;
    let lazy = MemoryMappingBuilder::new(n * ps())
        .private()
        .build()
        .unwrap();
    assert_eq!(resident(lazy.as_ptr(), n * ps()), vec![false; n]);

    let eager = MemoryMappingBuilder::new(n * ps())
        .private()
        .populate()
        .build()
        .unwrap();
    assert_eq!(resident(eager.as_ptr(), n * ps()), vec![true; n]);
    assert_eq!(vma_at(eager.as_ptr()).rss_kb, (n * ps() / 1024) as u64);

    let shm = SharedMemory::new("populate", (n * ps()) as u64).unwrap();
    let file = MemoryMapping::from_fd_offset_protection_populate(
        &shm,
        n * ps(),
        0,
        None,
        Protection::read_write(),
        true,
    )
    .unwrap();
    assert_eq!(vma_at(file.as_ptr()).rss_kb, (n * ps() / 1024) as u64);
}

#[test]
fn fd_offset_maps_the_right_bytes() {
    let shm = SharedMemory::new("offset", 3 * ps() as u64).unwrap();
    let data = pattern(3 * ps(), 7);
    pwrite(&shm, 0, &data);
    let m = MemoryMapping::from_fd_offset(&shm, 2 * ps(), ps() as u64).unwrap();
    let mut buf = vec![0u8; 2 * ps()];
    m.read_slice(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[ps()..]);
    // Writes through a shared file mapping reach the file.
    m.write_slice(b"xyz", 10).unwrap();
    assert_eq!(pread(&shm, ps() as u64 + 10, 3), b"xyz");
    let vma = vma_at(m.as_ptr());
    assert_eq!(vma.name, "/memfd:offset (deleted)");
    assert!(vma.has("sh"));
}

#[test]
fn private_fd_mapping_is_copy_on_write() {
    let shm = SharedMemory::new("cow", ps() as u64).unwrap();
    pwrite(&shm, 0, b"file");
    let m = MemoryMappingBuilder::new(ps())
        .private()
        .from_fd(&shm, 0)
        .build()
        .unwrap();
    assert_eq!(m.read_obj::<[u8; 4]>(0).unwrap(), *b"file");
    m.write_slice(b"mine", 0).unwrap();
    assert_eq!(pread(&shm, 0, 4), b"file");
    assert_eq!(vma_at(m.as_ptr()).perms, "rw-p");
}

#[test]
fn size_is_what_was_asked_for() {
    let m = MemoryMapping::new(100).unwrap();
    assert_eq!(m.size(), 100);
    assert_eq!(MappedRegion::size(&m), 100);
    assert_eq!(MappedRegion::as_ptr(&m), m.as_ptr());
    assert_eq!(m.range_end(0, 100), Ok(100));
    assert!(matches!(
        m.range_end(1, 100),
        Err(Error::InvalidRange {
            op: "range_end",
            offset: 1,
            count: 100,
            size: 100
        })
    ));
}

#[test]
fn zero_size_is_refused() {
    let shm = SharedMemory::new("zero", ps() as u64).unwrap();
    assert_eq!(
        MemoryMapping::new(0).unwrap_err(),
        Error::ZeroSize { op: "mmap" }
    );
    assert_eq!(
        MemoryMapping::from_fd(&shm, 0).unwrap_err(),
        Error::ZeroSize { op: "mmap" }
    );
    assert_eq!(
        MemoryMappingBuilder::new(0).private().build().unwrap_err(),
        Error::ZeroSize { op: "mmap" }
    );
}

#[test]
fn size_plus_align_overflow_is_refused() {
    // Page aligned, so the rounding succeeds and only the alignment slack overflows.
    let size = usize::MAX / 2 + 1;
    let align = 1u64 << 63;
    assert_eq!(
        MemoryMapping::new_protection(size, Some(align), Protection::read()).unwrap_err(),
        Error::SizeOverflow {
            op: "mmap",
            size,
            align
        }
    );
    assert_eq!(
        MemoryMapping::new_protection(ps(), Some(3 << 20), Protection::read()).unwrap_err(),
        Error::InvalidAlignment {
            op: "mmap",
            align: 3 << 20
        }
    );
}

#[test]
fn unaligned_or_huge_offset_is_refused() {
    let shm = SharedMemory::new("off", 2 * ps() as u64).unwrap();
    assert_eq!(
        MemoryMapping::from_fd_offset(&shm, ps(), 1).unwrap_err(),
        Error::UnalignedOffset {
            op: "mmap",
            offset: 1,
            align: ps() as u64
        }
    );
    let offset = u64::MAX - ps() as u64 + 1;
    assert_eq!(
        MemoryMapping::from_fd_offset(&shm, ps(), offset).unwrap_err(),
        Error::OffsetOverflow { op: "mmap", offset }
    );
}

#[test]
fn closed_descriptor_is_ebadf() {
    let fd = closed_fd();
    // SAFETY: `fd` is closed and owned by nobody; mmap(2) only looks the number
    // up and fails with EBADF, so no open file is affected.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    common::assert_os(
        MemoryMapping::from_fd(fd, ps()).unwrap_err(),
        "mmap",
        Errno::EBADF,
    );
}

#[test]
fn read_only_descriptor_cannot_be_mapped_shared_writable() {
    let shm = SharedMemory::new("ro", ps() as u64).unwrap();
    let ro = std::fs::File::open(format!("/proc/self/fd/{}", shm.as_raw_fd())).unwrap();
    common::assert_os(
        MemoryMapping::from_fd(&ro, ps()).unwrap_err(),
        "mmap",
        Errno::EACCES,
    );
    let m = MemoryMapping::from_fd_offset_protection(&ro, ps(), 0, Protection::read()).unwrap();
    assert_eq!(vma_at(m.as_ptr()).perms, "r--s");
}

#[test]
fn fixed_mapping_replaces_pages() {
    let outer = MemoryMapping::new(4 * ps()).unwrap();
    let data = pattern(4 * ps(), 3);
    outer.write_slice(&data, 0).unwrap();

    // SAFETY: page 1 belongs to `outer` and nothing refers into it; the inner
    // mapping is forgotten so that only `outer` unmaps the range.
    let inner = unsafe {
        MemoryMapping::new_protection_fixed(outer.as_ptr().add(ps()), ps(), Protection::read())
            .unwrap()
    };
    assert_eq!(inner.as_ptr() as usize, outer.as_ptr() as usize + ps());
    let vma = vma_at(inner.as_ptr());
    assert_eq!(
        (vma.start, vma.end),
        (inner.as_ptr() as usize, inner.as_ptr() as usize + ps())
    );
    assert_eq!(vma.perms, "r--s");
    assert!(vma.has("dd") && vma.has("nr"));
    std::mem::forget(inner);

    let shm = SharedMemory::new("fixed", ps() as u64).unwrap();
    pwrite(&shm, 0, b"from the memfd");
    // SAFETY: as above, for page 2.
    let file = unsafe {
        MemoryMapping::from_descriptor_offset_protection_fixed(
            outer.as_ptr().add(2 * ps()),
            &shm,
            ps(),
            0,
            Protection::read_write(),
        )
        .unwrap()
    };
    std::mem::forget(file);

    let mut buf = vec![0u8; 4 * ps()];
    outer.read_slice(&mut buf, 0).unwrap();
    assert_eq!(&buf[..ps()], &data[..ps()]);
    assert!(buf[ps()..2 * ps()].iter().all(|&b| b == 0));
    assert_eq!(&buf[2 * ps()..2 * ps() + 14], b"from the memfd");
    assert_eq!(&buf[3 * ps()..], &data[3 * ps()..]);
    outer.write_slice(b"back", 2 * ps()).unwrap();
    assert_eq!(pread(&shm, 0, 4), b"back");
}

#[test]
fn fixed_address_must_be_aligned() {
    let outer = MemoryMapping::new(2 * ps()).unwrap();
    // SAFETY: the call fails its argument check before any mmap(2).
    let err = unsafe {
        MemoryMapping::new_protection_fixed(outer.as_ptr().add(1), ps(), Protection::read())
            .unwrap_err()
    };
    assert_eq!(
        err,
        Error::UnalignedAddress {
            op: "mmap",
            addr: outer.as_ptr() as usize + 1,
            align: ps() as u64
        }
    );
    // A fixed address must also honour an explicit alignment.
    let addr = outer.as_ptr() as usize | ps();
    let err = MemoryMappingBuilder::new(ps())
        .align(1 << 30)
        .build_fixed_noreplace(addr as *mut u8)
        .unwrap_err();
    assert!(matches!(err, Error::UnalignedAddress { align, .. } if align == 1 << 30));
}

#[test]
fn fixed_noreplace_refuses_to_clobber() {
    let m = MemoryMapping::new(2 * ps()).unwrap();
    m.write_obj(42u32, ps()).unwrap();
    let err = MemoryMappingBuilder::new(ps())
        .build_fixed_noreplace(m.as_ptr().wrapping_add(ps()))
        .unwrap_err();
    common::assert_os(err, "mmap", Errno::EEXIST);
    assert_eq!(m.read_obj::<u32>(ps()).unwrap(), 42);
}

#[test]
fn plain_mappings_do_not_support_sub_mappings() {
    let mut m = MemoryMapping::new(ps()).unwrap();
    let shm = SharedMemory::new("sub", ps() as u64).unwrap();
    let region: &mut dyn MappedRegion = &mut m;
    assert_eq!(
        region
            .add_fd_mapping(
                0,
                ps(),
                std::os::fd::AsFd::as_fd(&shm),
                0,
                Protection::read()
            )
            .unwrap_err(),
        Error::Unsupported {
            op: "add_fd_mapping"
        }
    );
    assert_eq!(
        region.remove_mapping(0, ps()).unwrap_err(),
        Error::Unsupported {
            op: "remove_mapping"
        }
    );
}
