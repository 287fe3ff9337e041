//! The raw mmap(2) calls under [`MemoryMappingBuilder`](crate::MemoryMappingBuilder) and
//! [`MemoryMappingArena`](crate::MemoryMappingArena): `MAP_FIXED_NOREPLACE`, aligned placement,
//! reservations, and the page size of a file.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use crate::range::pagesize;
use crate::{AddrRange, Errno, Error, Result};

/// `MAP_FIXED_NOREPLACE` (Linux 4.17), the same value on every architecture
/// except alpha, which this crate does not support.
pub(crate) const MAP_FIXED_NOREPLACE: libc::c_int = 0x10_0000;

/// `HUGETLBFS_MAGIC` from `<linux/magic.h>`.
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// The page size the kernel maps the file behind `fd` with (fstatfs(2)): the
/// huge page size for a file on hugetlbfs (a `MFD_HUGETLB` memfd or a file
/// under a hugetlbfs mount), the system page size for any other file.
///
/// # Errors
///
/// [`Error::Os`] (`op: "fstatfs"`) with fstatfs's errno, e.g. `EBADF`.
pub(crate) fn fd_page_size(fd: BorrowedFd<'_>) -> Result<usize> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is writable memory for one `struct statfs`; fstatfs only
    // writes there.
    let ret = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if ret == -1 {
        return Err(Error::last_os("fstatfs"));
    }
    // SAFETY: fstatfs succeeded, so it filled in `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures
    let magic = st.f_type as u32;
    let huge = usize::try_from(st.f_bsize)
        .ok()
        .filter(|b| magic == HUGETLBFS_MAGIC && b.is_power_of_two() && *b > pagesize());
    Ok(huge.unwrap_or_else(pagesize))
}

/// The huge page size of the file behind `fd` if it is on hugetlbfs, from
/// [`fd_page_size`]. `None` for other files, and if fstatfs fails (mmap(2)
/// then reports the problem, e.g. `EBADF`).
pub(crate) fn hugetlbfs_page_size(fd: BorrowedFd<'_>) -> Option<usize> {
    fd_page_size(fd).ok().filter(|&p| p > pagesize())
}

/// mmap(2), with `MAP_FAILED` turned into [`Error::Os`] (with the range if an address was
/// given).
///
/// # Safety
///
/// If `flags` contains `MAP_FIXED`, the caller must own `addr..addr + len`.
pub(crate) unsafe fn raw_mmap(
    op: &'static str,
    addr: *mut u8,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    offset: libc::off_t,
) -> Result<*mut u8> {
    // SAFETY: mmap only touches the address space; the caller vouches for the
    // range when MAP_FIXED is set. Without MAP_FIXED an address is only a hint
    // (MAP_FIXED_NOREPLACE fails instead of replacing).
    let p = unsafe { libc::mmap(addr.cast(), len, prot, flags, fd, offset) };
    if p == libc::MAP_FAILED {
        return Err(if addr.is_null() {
            Error::last_os(op)
        } else {
            Error::last_os_on(op, addr, len)
        });
    }
    Ok(p.cast())
}

/// mmap(2) with `MAP_FIXED_NOREPLACE` at exactly `addr`: never replaces
/// anything. `Err` with `EEXIST` if part of the range is mapped (also on
/// kernels before 4.17, which take the address as a hint: a mapping placed
/// elsewhere is unmapped again).
fn mmap_noreplace(
    op: &'static str,
    addr: *mut u8,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    offset: libc::off_t,
) -> Result<()> {
    // SAFETY: no MAP_FIXED: MAP_FIXED_NOREPLACE fails instead of replacing an
    // existing mapping, and older kernels treat the address as a hint.
    let got = unsafe { raw_mmap(op, addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, offset)? };
    if got != addr {
        // SAFETY: `got` is the fresh mapping of `len` bytes made just above.
        unsafe { libc::munmap(got.cast(), len) };
        return Err(Error::Os {
            op,
            errno: Errno::EEXIST,
            range: Some(AddrRange::new(addr as usize, len)),
        });
    }
    Ok(())
}

/// Puts an inaccessible reservation (`PROT_NONE`, `MAP_PRIVATE |
/// MAP_ANONYMOUS | MAP_NORESERVE`, `MADV_DONTDUMP`: what
/// [`MemoryMappingArena::new`](crate::MemoryMappingArena::new) maps) at
/// exactly `addr..addr + len` if nothing is mapped in that range
/// (`MAP_FIXED_NOREPLACE`). Returns whether it did; if so the caller owns the
/// range. If not, something is mapped in part of the range, which may belong
/// to someone else.
pub(crate) fn reserve_noreplace(addr: *mut u8, len: usize) -> bool {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if mmap_noreplace("mmap", addr, len, libc::PROT_NONE, flags, -1, 0).is_err() {
        return false;
    }
    // Best effort, as the reservation is ours either way: excluding an
    // inaccessible range from core dumps only keeps `VmFlags` uniform.
    // SAFETY: `addr..addr + len` is the reservation just made.
    unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTDUMP) };
    true
}

/// How many times [`map_aligned`] starts again when another thread maps
/// something into its hole first.
const ALIGNED_ATTEMPTS: usize = 4;

/// A test hook: called once with an address and a length, to play "another
/// thread maps something there".
#[cfg(test)]
pub(crate) type TestHook = std::cell::Cell<Option<Box<dyn FnOnce(*mut u8, usize)>>>;

#[cfg(test)]
thread_local! {
    /// Test hook: called by [`map_aligned`] with the hole's address and length
    /// right after unmapping it, to play "another thread maps into the gap".
    pub(crate) static AFTER_HOLE: TestHook = const { std::cell::Cell::new(None) };
}

/// Maps `map_len` bytes at an address that is a multiple of `align` (greater
/// than the page size).
///
/// Reserves `map_len + align` bytes of inaccessible address space, unmaps the
/// aligned part of it (the hole), maps into the hole with
/// `MAP_FIXED_NOREPLACE`, then unmaps the unused head and tail. `MAP_FIXED`
/// is never used: once the hole is unmapped it is no longer ours (another
/// thread's mmap(2) may land in it), so whatever happens the hole is never
/// unmapped again. If another mapping took the hole first (`EEXIST`), it is
/// left alone and everything starts again, up to [`ALIGNED_ATTEMPTS`] times.
/// Nothing of ours is left mapped on any error path.
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_aligned(
    op: &'static str,
    size: usize,
    map_len: usize,
    align: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    offset: libc::off_t,
) -> Result<*mut u8> {
    let total = map_len.checked_add(align).ok_or(Error::SizeOverflow {
        op,
        size,
        align: align as u64,
    })?;
    let mut attempt = 1;
    loop {
        match map_aligned_once(op, map_len, align, total, prot, flags, fd, offset) {
            Err(e) if e.errno() == Some(Errno::EEXIST) && attempt < ALIGNED_ATTEMPTS => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One attempt of [`map_aligned`]; `EEXIST` if another mapping took the hole.
#[allow(clippy::too_many_arguments)]
fn map_aligned_once(
    op: &'static str,
    map_len: usize,
    align: usize,
    total: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    offset: libc::off_t,
) -> Result<*mut u8> {
    // SAFETY: no MAP_FIXED: the kernel picks a free range.
    let reserve = unsafe {
        raw_mmap(
            op,
            ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )?
    };
    let start = (reserve as usize).next_multiple_of(align);
    let head = start - reserve as usize;
    // head < align and start + map_len <= reserve + total, so the aligned range
    // lies inside the reservation.
    let tail = total - head - map_len;
    let end = start + map_len;
    // SAFETY: the hole is part of the reservation made above, which this
    // function owns and nothing uses.
    if unsafe { libc::munmap(start as *mut libc::c_void, map_len) } == -1 {
        let err = Error::last_os_on("munmap", start as *const u8, map_len);
        // SAFETY: the whole reservation is still ours.
        unsafe { libc::munmap(reserve.cast(), total) };
        return Err(err);
    }
    #[cfg(test)]
    if let Some(hook) = AFTER_HOLE.with(|h| h.take()) {
        hook(start as *mut u8, map_len);
    }
    let mapped = mmap_noreplace(op, start as *mut u8, map_len, prot, flags, fd, offset);
    // SAFETY: the head and tail are what is left of our own reservation; the
    // hole is not touched.
    let trimmed =
        unsafe { unmap_part(reserve, head).and_then(|()| unmap_part(end as *mut u8, tail)) };
    mapped?;
    if let Err(err) = trimmed {
        // SAFETY: everything in `reserve..reserve + total` is ours (the mapping
        // made in the hole and what remains of the reservation); munmap of
        // holes is harmless.
        unsafe { libc::munmap(reserve.cast(), total) };
        return Err(err);
    }
    Ok(start as *mut u8)
}

/// munmap(2) of `addr..addr + len`, nothing if `len` is 0.
///
/// # Safety
///
/// The caller owns the range and nothing uses it.
unsafe fn unmap_part(addr: *mut u8, len: usize) -> Result<()> {
    // SAFETY: the caller owns the range.
    if len != 0 && unsafe { libc::munmap(addr.cast(), len) } == -1 {
        return Err(Error::last_os_on("munmap", addr, len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryMapping, MemoryMappingBuilder};

    /// Installs the `AFTER_HOLE` hook: it maps one private page a third of
    /// the way into the hole, as another thread's mmap(2) could, and hands
    /// that mapping back through the returned slot.
    fn someone_maps_into_the_hole() -> std::rc::Rc<std::cell::RefCell<Option<MemoryMapping>>> {
        let slot = std::rc::Rc::<std::cell::RefCell<Option<MemoryMapping>>>::default();
        let hook_slot = std::rc::Rc::clone(&slot);
        AFTER_HOLE.with(|h| {
            h.set(Some(Box::new(move |addr: *mut u8, len: usize| {
                let at = addr.wrapping_add((len / 3).next_multiple_of(pagesize()));
                let theirs = MemoryMappingBuilder::new(pagesize())
                    .private()
                    .build_fixed_noreplace(at)
                    .unwrap();
                theirs.write_obj(0xfeed_u16, 0).unwrap();
                *hook_slot.borrow_mut() = Some(theirs);
            })))
        });
        slot
    }

    #[test]
    fn aligned_mapping_retries_around_a_mapping_in_its_hole() {
        let slot = someone_maps_into_the_hole();
        let m = MemoryMappingBuilder::new(8 * pagesize())
            .align(1 << 21)
            .build()
            .unwrap();
        let theirs = slot.borrow_mut().take().expect("the hook ran");
        assert_eq!(m.as_ptr() as usize % (1 << 21), 0);
        let (a, t) = (m.as_ptr() as usize, theirs.as_ptr() as usize);
        assert!(t + pagesize() <= a || a + 8 * pagesize() <= t);
        assert_eq!(theirs.read_obj::<u16>(0).unwrap(), 0xfeed);
    }

    #[test]
    fn failed_aligned_mapping_leaves_a_mapping_in_its_hole_alone() {
        let file = match crate::test_hugetlbfs::zero_size_hugetlbfs_file() {
            Ok(f) => f,
            Err(why) => {
                eprintln!(
                    "SKIPPED failed_aligned_mapping_leaves_a_mapping_in_its_hole_alone: {why}"
                );
                return;
            }
        };
        let huge = 2 << 20;
        let slot = someone_maps_into_the_hole();
        // The hook runs during the first attempt; the second attempt's mmap of
        // the file fails as an empty huge page pool would make it fail.
        let err = MemoryMappingBuilder::new(huge)
            .from_fd(&file, 0)
            .align(2 * huge as u64)
            .build()
            .unwrap_err();
        // The second attempt maps at the aligned address it chose, so the error has a range.
        assert!(
            matches!(
                err,
                Error::Os {
                    op: "mmap",
                    errno: Errno::ENOMEM,
                    range: Some(r)
                } if r.len == huge && r.start % (2 * huge) == 0
            ),
            "{err:?}"
        );
        let theirs = slot.borrow_mut().take().expect("the hook ran");
        assert_eq!(theirs.read_obj::<u16>(0).unwrap(), 0xfeed);
    }
}
