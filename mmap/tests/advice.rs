//! The madvise(2), mlock2(2), msync(2) and mprotect(2) methods, each observed
//! through the kernel: `VmFlags`, `Rss` and permissions in `/proc/self/smaps`,
//! residency from mincore(2), data before and after, page flags from
//! `/proc/kpageflags`.

mod common;

use std::os::fd::AsRawFd;

use common::{kpageflags, pattern, pread, pwrite, resident, vma_at, vmas_in, KPF_DIRTY};
use mmap::{AddrRange, Errno};
use mmap::{
    Error, HugePageAdvice, MappedRegion, MemoryMapping, MemoryMappingBuilder, Protection,
    SharedMemory,
};

fn ps() -> usize {
    mmap::pagesize()
}

fn fill(m: &MemoryMapping, seed: u8) -> Vec<u8> {
    let data = pattern(m.size(), seed);
    m.write_slice(&data, 0).unwrap();
    data
}

fn contents(m: &MemoryMapping, offset: usize, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    m.read_slice(&mut buf, offset).unwrap();
    buf
}

fn all_zero(v: &[u8]) -> bool {
    v.iter().all(|&b| b == 0)
}

#[test]
fn use_dontfork_sets_dc_and_the_child_has_no_mapping() {
    let m = MemoryMapping::new(2 * ps()).unwrap();
    assert!(!vma_at(m.as_ptr()).has("dc"));
    m.use_dontfork().unwrap();
    assert!(vma_at(m.as_ptr()).has("dc"));

    let (addr, len) = (m.as_ptr(), m.size());
    // SAFETY: the child only calls async-signal-safe functions (mincore,
    // _exit) before exiting.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut vec = [0u8; 2];
        // SAFETY: mincore writes one byte per page into `vec`; then _exit.
        unsafe {
            let r = libc::mincore(addr.cast(), len, vec.as_mut_ptr());
            let unmapped = r == -1 && *libc::__errno_location() == libc::ENOMEM;
            libc::_exit(if unmapped { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child still had the mapping"
    );
}

#[test]
fn use_hugepages_reports_what_it_did() {
    let Some(pmd) = mmap::thp_pmd_size() else {
        let m = MemoryMapping::new_private(ps()).unwrap();
        assert_eq!(m.use_hugepages().unwrap(), HugePageAdvice::Unsupported);
        test_kit::report::skip(
            "no transparent huge pages in this kernel (CONFIG_TRANSPARENT_HUGEPAGE)",
        );
        return;
    };
    // Too small for a PMD: nothing done, and nothing in VmFlags.
    let small = MemoryMapping::new_private(pmd - ps()).unwrap();
    assert_eq!(
        small.use_hugepages().unwrap(),
        HugePageAdvice::TooSmall { pmd_size: pmd }
    );
    assert!(!vma_at(small.as_ptr()).has("hg"));

    // One aligned PMD (private and shared): applied.
    for builder in [
        MemoryMappingBuilder::new(pmd).private(),
        MemoryMappingBuilder::new(pmd).shared(),
    ] {
        let m = builder.align(pmd as u64).build().unwrap();
        assert_eq!(m.use_hugepages().unwrap(), HugePageAdvice::Applied);
        let vma = vma_at(m.as_ptr());
        assert!(vma.has("hg"), "{:?}", vma.flags);
    }

    // Large enough but placed so that no aligned PMD fits: a PMD-sized mapping
    // one page past a PMD boundary, inside an arena we own.
    let arena = mmap::MemoryMappingArena::from(
        MemoryMappingBuilder::new(2 * pmd)
            .private()
            .align(pmd as u64)
            .build()
            .unwrap(),
    );
    // SAFETY: the range lies inside `arena`, which nothing else uses; the
    // mapping is forgotten below so that only the arena unmaps the range.
    let m = unsafe {
        MemoryMappingBuilder::new(pmd)
            .private()
            .build_fixed(arena.as_ptr().add(ps()))
            .unwrap()
    };
    assert_eq!(
        m.use_hugepages().unwrap(),
        HugePageAdvice::TooSmall { pmd_size: pmd }
    );
    assert!(!vma_at(m.as_ptr()).has("hg"));
    std::mem::forget(m);
}

#[test]
fn disable_hugepages_sets_nh() {
    let m = MemoryMappingBuilder::new(4 << 20)
        .private()
        .build()
        .unwrap();
    assert!(!vma_at(m.as_ptr()).has("nh"));
    m.disable_hugepages().unwrap();
    assert!(vma_at(m.as_ptr()).has("nh"));
}

#[test]
fn drop_page_cache_keeps_shared_anonymous_data() {
    let m = MemoryMapping::new(4 * ps()).unwrap();
    let data = fill(&m, 1);
    assert_eq!(vma_at(m.as_ptr()).rss_kb, (4 * ps() / 1024) as u64);
    m.drop_page_cache(0, 4 * ps()).unwrap();
    // The page table entries are gone...
    assert_eq!(vma_at(m.as_ptr()).rss_kb, 0);
    // ...but the shmem pages are still in the page cache, with the data.
    assert_eq!(resident(m.as_ptr(), 4 * ps()), vec![true; 4]);
    assert_eq!(contents(&m, 0, 4 * ps()), data);
}

#[test]
fn drop_page_cache_discards_private_anonymous_data() {
    let m = MemoryMapping::new_private(4 * ps()).unwrap();
    let data = fill(&m, 2);
    assert_eq!(resident(m.as_ptr(), 4 * ps()), vec![true; 4]);
    m.drop_page_cache(ps(), 2 * ps()).unwrap();
    assert_eq!(
        resident(m.as_ptr(), 4 * ps()),
        vec![true, false, false, true]
    );
    assert_eq!(contents(&m, 0, ps()), &data[..ps()]);
    assert!(all_zero(&contents(&m, ps(), 2 * ps())));
    assert_eq!(contents(&m, 3 * ps(), ps()), &data[3 * ps()..]);
}

#[test]
fn drop_page_cache_on_memfd_shared_keeps_and_private_reverts() {
    let shm = SharedMemory::new("dontneed", 2 * ps() as u64).unwrap();
    pwrite(&shm, 0, b"original");

    let shared = MemoryMapping::from_fd(&shm, 2 * ps()).unwrap();
    shared.write_slice(b"SHARED", ps()).unwrap();
    shared.drop_page_cache(0, 2 * ps()).unwrap();
    assert_eq!(vma_at(shared.as_ptr()).rss_kb, 0);
    assert_eq!(contents(&shared, ps(), 6), b"SHARED");
    assert_eq!(pread(&shm, ps() as u64, 6), b"SHARED");

    let private = MemoryMappingBuilder::new(2 * ps())
        .private()
        .from_fd(&shm, 0)
        .build()
        .unwrap();
    private.write_slice(b"PRIVATE!", 0).unwrap();
    assert_eq!(contents(&private, 0, 8), b"PRIVATE!");
    private.drop_page_cache(0, ps()).unwrap();
    // The private copy is discarded; the file's data shows through again.
    assert_eq!(contents(&private, 0, 8), b"original");
}

#[test]
fn remove_range_discards_shared_data() {
    let m = MemoryMapping::new(4 * ps()).unwrap();
    let data = fill(&m, 3);
    m.remove_range(ps(), 2 * ps()).unwrap();
    assert_eq!(
        resident(m.as_ptr(), 4 * ps()),
        vec![true, false, false, true]
    );
    assert_eq!(contents(&m, 0, ps()), &data[..ps()]);
    assert!(all_zero(&contents(&m, ps(), 2 * ps())));
    assert_eq!(contents(&m, 3 * ps(), ps()), &data[3 * ps()..]);
}

fn allocated_blocks(fd: &impl AsRawFd) -> i64 {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` has room for one stat.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) }, 0);
    // SAFETY: fstat succeeded.
    unsafe { st.assume_init() }.st_blocks
}

#[test]
fn remove_range_punches_a_hole_in_the_memfd() {
    let shm = SharedMemory::new("remove", 4 * ps() as u64).unwrap();
    let a = MemoryMapping::from_fd(&shm, 4 * ps()).unwrap();
    let b = MemoryMapping::from_fd(&shm, 4 * ps()).unwrap();
    fill(&a, 4);
    let blocks = allocated_blocks(&shm);
    assert_eq!(blocks, (4 * ps() / 512) as i64);
    a.remove_range(0, 2 * ps()).unwrap();
    assert_eq!(allocated_blocks(&shm), blocks / 2);
    assert_eq!(shm.size(), 4 * ps() as u64);
    // Gone from the file and from the other view.
    assert!(all_zero(&pread(&shm, 0, 2 * ps())));
    assert!(all_zero(&contents(&b, 0, 2 * ps())));
    assert!(!all_zero(&contents(&b, 2 * ps(), 2 * ps())));
}

#[test]
fn remove_range_needs_shared_writable_memory() {
    let private = MemoryMapping::new_private(2 * ps()).unwrap();
    // The error names the range the call was given.
    let err = private.remove_range(ps(), ps()).unwrap_err();
    assert_eq!(
        err,
        Error::Os {
            op: "madvise(MADV_REMOVE)",
            errno: Errno::EINVAL,
            range: Some(AddrRange::new(private.as_ptr() as usize + ps(), ps())),
        }
    );
    assert!(
        err.to_string().starts_with(&format!(
            "madvise(MADV_REMOVE) on {:#x}..{:#x} failed: EINVAL",
            private.as_ptr() as usize + ps(),
            private.as_ptr() as usize + 2 * ps()
        )),
        "{err}"
    );
    // A read-only *mapping* of shared anonymous memory may be made writable
    // again, so MADV_REMOVE is allowed on it; a mapping of a file opened
    // read-only may not, so it is refused.
    let ro_prot = MemoryMapping::new_protection(ps(), None, Protection::read()).unwrap();
    ro_prot.remove_range(0, ps()).unwrap();
    let shm = SharedMemory::new("ro-remove", ps() as u64).unwrap();
    let ro_file = std::fs::File::open(format!("/proc/self/fd/{}", shm.as_raw_fd())).unwrap();
    let ro =
        MemoryMapping::from_fd_offset_protection(&ro_file, ps(), 0, Protection::read()).unwrap();
    common::assert_os(
        ro.remove_range(0, ps()).unwrap_err(),
        "madvise(MADV_REMOVE)",
        Errno::EACCES,
    );
}

#[test]
fn async_prefetch_accepts_every_backing_and_keeps_data() {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("mmap-prefetch-{}", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let data = pattern(4 * ps(), 5);
    pwrite(&file, 0, &data);
    let f = MemoryMapping::from_fd(&file, 4 * ps()).unwrap();
    f.async_prefetch(0, 4 * ps()).unwrap();
    assert_eq!(contents(&f, 0, 4 * ps()), data);

    let anon = MemoryMapping::new(4 * ps()).unwrap();
    anon.async_prefetch(ps(), ps()).unwrap();
    let private = MemoryMapping::new_private(4 * ps()).unwrap();
    private.async_prefetch(0, 4 * ps()).unwrap();
    assert!(matches!(
        private.async_prefetch(4 * ps(), 1),
        Err(Error::InvalidRange {
            op: "async_prefetch",
            ..
        })
    ));
}

#[test]
fn lock_on_fault_sets_lo_lf_without_faulting_in() {
    let m = MemoryMapping::new_private(4 * ps()).unwrap();
    m.lock_on_fault(0, 2 * ps()).unwrap();
    let locked = vma_at(m.as_ptr());
    assert!(locked.has("lo") && has_lf(&locked), "{:?}", locked.flags);
    assert_eq!(locked.end, m.as_ptr() as usize + 2 * ps());
    let rest = vma_at(m.as_ptr().wrapping_add(2 * ps()));
    assert!(!rest.has("lo") && !has_lf(&rest));
    // ONFAULT: nothing was faulted in...
    assert_eq!(resident(m.as_ptr(), 4 * ps()), vec![false; 4]);
    // ...until touched.
    m.write_obj(1u8, 0).unwrap();
    assert_eq!(resident(m.as_ptr(), 2 * ps()), vec![true, false]);

    m.unlock(0, 2 * ps()).unwrap();
    for vma in vmas_in(m.as_ptr(), 4 * ps()) {
        assert!(!vma.has("lo") && !has_lf(&vma), "{:?}", vma.flags);
    }
    // Unlocking unlocked memory is fine.
    m.unlock(0, 4 * ps()).unwrap();
}

#[test]
fn lock_on_fault_on_shared_memory() {
    let m = MemoryMapping::new(2 * ps()).unwrap();
    m.lock_on_fault(0, 2 * ps()).unwrap();
    assert!(has_lf(&vma_at(m.as_ptr())));
    // DONTNEED refuses locked pages.
    common::assert_os(
        m.drop_page_cache(0, ps()).unwrap_err(),
        "madvise(MADV_DONTNEED)",
        Errno::EINVAL,
    );
    m.unlock(0, 2 * ps()).unwrap();
    m.drop_page_cache(0, ps()).unwrap();
}

#[test]
fn msync_writes_dirty_file_pages_back() {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("mmap-msync-{}", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len(2 * ps() as u64).unwrap();
    let m = MemoryMapping::from_fd(&file, 2 * ps()).unwrap();
    m.write_slice(b"synced", 0).unwrap();
    m.write_slice(b"ranged", ps()).unwrap();
    let before = kpageflags(m.as_ptr());
    MappedRegion::msync(&m, ps(), ps()).unwrap();
    m.msync().unwrap();
    assert_eq!(pread(&file, 0, 6), b"synced");
    assert_eq!(pread(&file, ps() as u64, 6), b"ranged");
    match (
        before,
        kpageflags(m.as_ptr()),
        kpageflags(m.as_ptr().wrapping_add(ps())),
    ) {
        (Some(before), Some(after0), Some(after1)) => {
            assert_ne!(before & KPF_DIRTY, 0, "written file page not dirty");
            assert_eq!(after0 & KPF_DIRTY, 0, "page 0 still dirty after msync");
            assert_eq!(after1 & KPF_DIRTY, 0, "page 1 still dirty after msync");
        }
        _ => test_kit::report::skip(
            "the msync dirty-bit check reads /proc/kpageflags, which needs root: run as root",
        ),
    }
    assert_eq!(
        MappedRegion::msync(&m, 1, ps()).unwrap_err(),
        Error::UnalignedOffset {
            op: "msync",
            offset: 1,
            align: ps() as u64
        }
    );
    assert!(matches!(
        MappedRegion::msync(&m, ps(), 2 * ps()),
        Err(Error::InvalidRange { op: "msync", .. })
    ));
    // On anonymous memory there is nothing to write back.
    MemoryMapping::new(ps()).unwrap().msync().unwrap();
}

#[test]
fn set_protection_changes_vma_permissions() {
    let m = MemoryMapping::new(4 * ps()).unwrap();
    fill(&m, 6);
    m.set_protection(ps(), 2 * ps(), Protection::read())
        .unwrap();
    let perms: Vec<String> = vmas_in(m.as_ptr(), 4 * ps())
        .into_iter()
        .map(|v| v.perms)
        .collect();
    assert_eq!(perms, ["rw-s", "r--s", "rw-s"]);
    assert_eq!(
        vma_at(m.as_ptr().wrapping_add(ps())).start,
        m.as_ptr() as usize + ps()
    );
    // Reading read-only pages still works.
    assert_eq!(
        contents(&m, ps(), 2 * ps()),
        &pattern(4 * ps(), 6)[ps()..3 * ps()]
    );

    m.set_protection(0, ps(), Protection::none()).unwrap();
    m.set_protection(3 * ps(), ps(), Protection::read_exec())
        .unwrap();
    let perms: Vec<String> = vmas_in(m.as_ptr(), 4 * ps())
        .into_iter()
        .map(|v| v.perms)
        .collect();
    assert_eq!(perms, ["---s", "r--s", "r-xs"]);

    m.set_protection(0, 4 * ps(), Protection::read_write())
        .unwrap();
    for vma in vmas_in(m.as_ptr(), 4 * ps()) {
        assert_eq!(vma.perms, "rw-s");
    }
    m.write_obj(1u8, 0).unwrap();
}

#[test]
fn set_protection_cannot_make_a_read_only_file_writable() {
    let shm = SharedMemory::new("ro", ps() as u64).unwrap();
    let ro = std::fs::File::open(format!("/proc/self/fd/{}", shm.as_raw_fd())).unwrap();
    let m = MemoryMapping::from_fd_offset_protection(&ro, ps(), 0, Protection::read()).unwrap();
    common::assert_os(
        m.set_protection(0, ps(), Protection::read_write())
            .unwrap_err(),
        "mprotect",
        Errno::EACCES,
    );
}

#[test]
fn every_range_method_uses_the_same_check() {
    let m = MemoryMapping::new(2 * ps()).unwrap();
    let (off, count) = (ps(), 2 * ps());
    let expect = |op| Error::InvalidRange {
        op,
        offset: off,
        count,
        size: 2 * ps(),
    };
    assert_eq!(
        m.remove_range(off, count).unwrap_err(),
        expect("remove_range")
    );
    assert_eq!(
        m.async_prefetch(off, count).unwrap_err(),
        expect("async_prefetch")
    );
    assert_eq!(
        m.drop_page_cache(off, count).unwrap_err(),
        expect("drop_page_cache")
    );
    assert_eq!(
        m.lock_on_fault(off, count).unwrap_err(),
        expect("lock_on_fault")
    );
    assert_eq!(m.unlock(off, count).unwrap_err(), expect("unlock"));
    assert_eq!(
        m.set_protection(off, count, Protection::read())
            .unwrap_err(),
        expect("set_protection")
    );
    assert_eq!(
        MappedRegion::msync(&m, off, count).unwrap_err(),
        expect("msync")
    );
    assert_eq!(m.range_end(off, count).unwrap_err(), expect("range_end"));
    assert_eq!(m.get_slice(off, count).unwrap_err(), expect("get_slice"));
    assert_eq!(
        m.read_slice(&mut vec![0; count], off).unwrap_err(),
        expect("read_slice")
    );
    assert_eq!(
        m.write_slice(&vec![0; count], off).unwrap_err(),
        expect("write_slice")
    );

    let unaligned = |op| Error::UnalignedOffset {
        op,
        offset: 8,
        align: ps() as u64,
    };
    assert_eq!(m.remove_range(8, 8).unwrap_err(), unaligned("remove_range"));
    assert_eq!(
        m.async_prefetch(8, 8).unwrap_err(),
        unaligned("async_prefetch")
    );
    assert_eq!(
        m.drop_page_cache(8, 8).unwrap_err(),
        unaligned("drop_page_cache")
    );
    assert_eq!(
        m.lock_on_fault(8, 8).unwrap_err(),
        unaligned("lock_on_fault")
    );
    assert_eq!(m.unlock(8, 8).unwrap_err(), unaligned("unlock"));
    assert_eq!(
        m.set_protection(8, 8, Protection::read()).unwrap_err(),
        unaligned("set_protection")
    );
}

/// Whether the VMA shows `VM_LOCKONFAULT`: `lf` in smaps' VmFlags. Debian's Linux 6.1 prints
/// that flag as `??` (seen under `cargo xtask vm-test`), so there `??` counts.
fn has_lf(vma: &common::Vma) -> bool {
    vma.has("lf") || vma.has("??")
}
