//! MINOR mode on a memfd mapped twice: fill the page cache through one view, resolve the
//! registered view's fault with `UFFDIO_CONTINUE`.

mod common;

use common::*;
use mmap::{MemoryMapping, SharedMemory};
use userfaultfd::Errno;
use userfaultfd::{
    ContinueMode, Error, FaultKind, FeatureFlags, IoctlFlags, Operation, ReadWrite, RegisterMode,
};

fn two_views(len: usize) -> (SharedMemory, MemoryMapping, MemoryMapping) {
    let shm = SharedMemory::new("uffd-minor", len as u64).unwrap();
    let guest = MemoryMapping::from_fd(&shm, len).unwrap();
    let filler = MemoryMapping::from_fd(&shm, len).unwrap();
    (shm, guest, filler)
}

#[test]
fn minor_fault_resolved_by_continue() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    assert!(uffd
        .supported_features()
        .contains(FeatureFlags::MINOR_SHMEM));
    let (_shm, guest, filler) = two_views(2 * ps);
    let ioctls = uffd.register_region(&guest, RegisterMode::MINOR).unwrap();
    assert!(ioctls.contains(IoctlFlags::CONTINUE));

    // Put the page in the page cache through the unregistered view.
    filler.write_slice(&page_of(0x6b, ps), ps).unwrap();
    let base = guest.as_ptr() as usize;
    let rx = reader(base + ps + 100);
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::Minor, ReadWrite::Read, base + ps)
    );
    let n = uffd.r#continue(addr as *mut _, ps, true).unwrap();
    assert_eq!(n, ps);
    assert_eq!(recv(&rx), 0x6b);

    // Continuing a page that is mapped already: AlreadyMapped.
    let e = uffd.r#continue(addr as *mut _, ps, true).unwrap_err();
    assert!(
        matches!(e, Error::AlreadyMapped { op: Operation::Continue, addr: a } if a == base + ps),
        "{e:?}"
    );
    // Both views share the page: a write through the guest shows in the filler.
    guest.write_obj(0x7cu8, ps).unwrap();
    assert_eq!(filler.read_obj::<u8>(ps).unwrap(), 0x7c);
}

#[test]
fn continue_of_page_not_in_page_cache_is_efault() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let (_shm, guest, _filler) = two_views(ps);
    uffd.register_region(&guest, RegisterMode::MINOR).unwrap();
    let e = uffd
        .r#continue(guest.as_ptr().cast(), ps, true)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Os {
                op: Operation::Continue,
                errno: Errno::EFAULT,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn minor_on_anonymous_memory_is_einval() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd();
    let mem = Map::anon(ps);
    let e = uffd
        .register_with_mode(mem.ptr(), ps, RegisterMode::MINOR)
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
fn continue_with_wp_mode_maps_protected() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    if !kernel::at_least(6, 4) {
        // No feature bit announces UFFDIO_CONTINUE_MODE_WP: the kernel's version does.
        test_kit::report::skip(format!(
            "UFFDIO_CONTINUE_MODE_WP needs Linux 6.4; this is {:?}",
            kernel::version()
        ));
        return;
    }
    let ps = ps();
    let uffd = uffd();
    if !uffd
        .supported_features()
        .contains(FeatureFlags::WP_HUGETLBFS_SHMEM)
    {
        println!("SKIPPED continue_with_wp_mode_maps_protected: no WP on shmem");
        return;
    }
    let (_shm, guest, filler) = two_views(ps);
    uffd.register_region(&guest, RegisterMode::MINOR | RegisterMode::WRITE_PROTECT)
        .unwrap();
    filler.write_slice(&page_of(0x21, ps), 0).unwrap();
    let base = guest.as_ptr() as usize;
    let rx = reader(base + 1);
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::Minor, base));
    let n = uffd
        .continue_with_mode(guest.as_ptr().cast(), ps, ContinueMode::WP)
        .unwrap();
    assert_eq!(n, ps);
    assert_eq!(recv(&rx), 0x21);
    // Mapped write-protected: a write faults.
    let rx = writer(base + 2, 0x22);
    let (kind, rw, addr, _) = next_fault(&uffd);
    assert_eq!(
        (kind, rw, addr),
        (FaultKind::WriteProtected, ReadWrite::Write, base)
    );
    uffd.remove_write_protection(guest.as_ptr().cast(), ps, true)
        .unwrap();
    recv(&rx);
    assert_eq!(filler.read_obj::<u8>(2).unwrap(), 0x22);
}
