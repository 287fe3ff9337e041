//! `SharedMemory` (memfd): creation flags, sizes, each seal's effect on
//! ftruncate(2) and mmap(2), and two coherent views of the same pages.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};

use common::{pread, pwrite, vma_at};
use mmap::Errno;
use mmap::{MemfdSeals, MemoryMapping, MemoryMappingBuilder, Protection, SharedMemory};

fn ps() -> usize {
    mmap::pagesize()
}

#[test]
fn created_cloexec_named_and_zeroed() {
    let shm = SharedMemory::new("my-memfd", 2 * ps() as u64).unwrap();
    assert_eq!(shm.size(), 2 * ps() as u64);
    let link = std::fs::read_link(format!("/proc/self/fd/{}", shm.as_raw_fd())).unwrap();
    assert_eq!(link.to_str().unwrap(), "/memfd:my-memfd (deleted)");
    // SAFETY: F_GETFD on an open descriptor.
    let fd_flags = unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_GETFD) };
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    assert!(pread(&shm, 0, 2 * ps()).iter().all(|&b| b == 0));
    // MFD_ALLOW_SEALING: no seals yet, and adding works.
    assert_eq!(shm.get_seals().unwrap(), MemfdSeals::empty());
    shm.add_seals(MemfdSeals::SHRINK).unwrap();
    assert_eq!(shm.get_seals().unwrap(), MemfdSeals::SHRINK);
}

#[test]
fn set_size_grows_and_shrinks() {
    let mut shm = SharedMemory::new("resize", 0).unwrap();
    shm.set_size(3 * ps() as u64).unwrap();
    pwrite(&shm, 2 * ps() as u64, b"end");
    let again = SharedMemory::from_fd(OwnedFd::from(shm.try_clone().unwrap())).unwrap();
    assert_eq!(again.size(), 3 * ps() as u64);
    shm.set_size(ps() as u64).unwrap();
    shm.set_size(3 * ps() as u64).unwrap();
    assert_eq!(pread(&shm, 2 * ps() as u64, 3), [0, 0, 0]);
}

#[test]
fn grow_seal_makes_growing_eperm() {
    let mut shm = SharedMemory::new("grow", 2 * ps() as u64).unwrap();
    shm.add_seals(MemfdSeals::GROW).unwrap();
    common::assert_os(
        shm.set_size(4 * ps() as u64).unwrap_err(),
        "ftruncate",
        Errno::EPERM,
    );
    assert_eq!(shm.size(), 2 * ps() as u64);
    shm.set_size(ps() as u64).unwrap(); // shrinking is still allowed
}

#[test]
fn shrink_seal_makes_shrinking_eperm() {
    let mut shm = SharedMemory::new("shrink", 2 * ps() as u64).unwrap();
    shm.add_seals(MemfdSeals::SHRINK).unwrap();
    common::assert_os(
        shm.set_size(ps() as u64).unwrap_err(),
        "ftruncate",
        Errno::EPERM,
    );
    shm.set_size(4 * ps() as u64).unwrap();
}

#[test]
fn write_seal_needs_no_writable_mapping_and_then_forbids_one() {
    let shm = SharedMemory::new("write", ps() as u64).unwrap();
    let writable = MemoryMapping::from_fd(&shm, ps()).unwrap();
    writable.write_slice(b"final", 0).unwrap();
    common::assert_os(
        shm.add_seals(MemfdSeals::WRITE).unwrap_err(),
        "fcntl(F_ADD_SEALS)",
        Errno::EBUSY,
    );
    drop(writable);
    shm.add_seals(MemfdSeals::WRITE).unwrap();
    common::assert_os(
        MemoryMapping::from_fd(&shm, ps()).unwrap_err(),
        "mmap",
        Errno::EPERM,
    );
    let ro = MemoryMapping::from_fd_offset_protection(&shm, ps(), 0, Protection::read()).unwrap();
    assert_eq!(ro.read_obj::<[u8; 5]>(0).unwrap(), *b"final");
    // A private (copy-on-write) writable view does not change the memfd.
    let cow = MemoryMappingBuilder::new(ps())
        .private()
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    cow.write_slice(b"local", 0).unwrap();
    assert_eq!(pread(&shm, 0, 5), b"final");
}

#[test]
fn future_write_seal_keeps_existing_writable_mappings() {
    let shm = SharedMemory::new("future", ps() as u64).unwrap();
    let writable = MemoryMapping::from_fd(&shm, ps()).unwrap();
    shm.add_seals(MemfdSeals::FUTURE_WRITE).unwrap();
    writable.write_slice(b"still", 0).unwrap();
    assert_eq!(pread(&shm, 0, 5), b"still");
    common::assert_os(
        MemoryMapping::from_fd(&shm, ps()).unwrap_err(),
        "mmap",
        Errno::EPERM,
    );
}

#[test]
fn seal_seal_forbids_more_seals() {
    let shm = SharedMemory::new("seal", ps() as u64).unwrap();
    shm.add_seals(MemfdSeals::GROW | MemfdSeals::SEAL).unwrap();
    assert_eq!(
        shm.get_seals().unwrap(),
        MemfdSeals::GROW | MemfdSeals::SEAL
    );
    common::assert_os(
        shm.add_seals(MemfdSeals::SHRINK).unwrap_err(),
        "fcntl(F_ADD_SEALS)",
        Errno::EPERM,
    );
}

#[test]
fn exec_seal_is_reported() {
    let shm = SharedMemory::new("exec", 0).unwrap();
    match shm.add_seals(MemfdSeals::EXEC) {
        Ok(()) => assert!(shm.get_seals().unwrap().contains(MemfdSeals::EXEC)),
        // Kernels before 6.3 do not know F_SEAL_EXEC.
        Err(e) => assert_eq!(e.errno(), Some(Errno::EINVAL)),
    }
}

#[test]
fn seals_on_a_file_that_cannot_be_sealed_are_einval() {
    let file = std::fs::File::open("/proc/self/maps").unwrap();
    let not_memfd = SharedMemory::from_fd(file.into()).unwrap();
    common::assert_os(
        not_memfd.get_seals().unwrap_err(),
        "fcntl(F_GET_SEALS)",
        Errno::EINVAL,
    );
}

#[test]
fn two_views_see_the_same_pages() {
    let shm = SharedMemory::new("views", 4 * ps() as u64).unwrap();
    let guest = MemoryMapping::from_fd(&shm, 4 * ps()).unwrap();
    let handler = MemoryMapping::from_fd(shm.try_clone().unwrap(), 4 * ps()).unwrap();
    assert_ne!(guest.as_ptr(), handler.as_ptr());
    for v in [&guest, &handler] {
        let vma = vma_at(v.as_ptr());
        assert_eq!(vma.name, "/memfd:views (deleted)");
        assert!(vma.has("sh"));
    }
    handler.write_slice(&[0x5a; 4096], ps()).unwrap();
    let mut buf = [0u8; 4096];
    guest.read_slice(&mut buf, ps()).unwrap();
    assert_eq!(buf, [0x5a; 4096]);
    guest.write_obj(0x1234_5678_u32, 3 * ps()).unwrap();
    assert_eq!(handler.read_obj::<u32>(3 * ps()).unwrap(), 0x1234_5678);
    // A view of the second half only.
    let half = MemoryMapping::from_fd_offset(&shm, 2 * ps(), 2 * ps() as u64).unwrap();
    assert_eq!(half.read_obj::<u32>(ps()).unwrap(), 0x1234_5678);
}

#[test]
fn mappings_outlive_the_memfd() {
    let shm = SharedMemory::new("gone", ps() as u64).unwrap();
    let m = MemoryMapping::from_fd(&shm, ps()).unwrap();
    drop(shm);
    m.write_obj(3u16, 0).unwrap();
    assert_eq!(m.read_obj::<u16>(0).unwrap(), 3);
}
