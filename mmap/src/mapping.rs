//! [`MemoryMapping`]: the owned mapping, its crosvm-style constructors, its accessors and its
//! unmapping.

use std::os::fd::AsFd;

use crate::range::check_range;
#[cfg(doc)]
use crate::Error;
use crate::{MappedRegion, MemoryMappingBuilder, Protection, Result};

/// An owned memory mapping: `size` bytes of the address space mapped with
/// mmap(2), unmapped with munmap(2) when dropped.
///
/// Create one with the crosvm-compatible constructors ([`new`](Self::new),
/// [`new_protection`](Self::new_protection), [`from_fd`](Self::from_fd), ...)
/// or, for every option, with [`MemoryMappingBuilder`].
///
/// Every mapping is created with `MADV_DONTDUMP` (madvise(2), Linux 3.4): guest
/// memory or snapshot data does not belong in a core dump of the process. If
/// that madvise fails, creation fails (and the mapping is unmapped).
///
/// The mapping's bytes are only reachable through volatile copies
/// ([`read_obj`](Self::read_obj), [`write_slice`](Self::write_slice),
/// [`get_slice`](Self::get_slice), ...) and through the raw pointer from
/// [`as_ptr`](Self::as_ptr); see the [crate documentation](crate) for why.
///
/// # Example
///
/// ```
/// use mmap::MemoryMapping;
///
/// let m = MemoryMapping::new(4096)?; // shared anonymous, read/write
/// m.write_obj(0xdead_beef_u32, 8)?;
/// assert_eq!(m.read_obj::<u32>(8)?, 0xdead_beef);
/// assert_eq!(m.size(), 4096);
/// # Ok::<(), mmap::Error>(())
/// ```
#[derive(Debug)]
pub struct MemoryMapping {
    pub(crate) addr: *mut u8,
    /// What `size()` reports: the size asked for, or for hugetlb that size
    /// rounded up to the huge page size.
    pub(crate) size: usize,
    /// The length passed to munmap: `size` rounded up to `page_size`.
    pub(crate) map_len: usize,
    /// The page size of the mapping: the huge page size for hugetlb.
    pub(crate) page_size: usize,
    pub(crate) hugetlb: bool,
}

// SAFETY: `MemoryMapping` owns its range of the address space (nothing else
// unmaps it before `Drop`), has no thread-affine state, and gives access to the
// bytes only through volatile copies of plain data and raw pointers; the
// memory is treated as shared with other agents in any case (see
// `VolatileSlice`), so moving the owner to another thread changes nothing.
unsafe impl Send for MemoryMapping {}
// SAFETY: `&MemoryMapping` allows only volatile copies of plain data and
// madvise/mlock/msync/mprotect system calls on the owned range; the kernel
// serialises the system calls, and concurrent volatile copies are as if
// another process wrote the memory.
unsafe impl Sync for MemoryMapping {}

impl MemoryMapping {
    /// A shared anonymous read/write mapping of `size` bytes
    /// (`MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE`), as crosvm's
    /// `MemoryMapping::new`.
    ///
    /// Shared anonymous memory is shmem: it can be registered for userfaultfd
    /// MINOR faults, supports [`remove_range`](Self::remove_range), and is
    /// shared with children after fork(2). For ordinary private process
    /// memory use [`new_private`](Self::new_private).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::SizeOverflow`], or [`Error::Os`]
    /// (`ENOMEM`) as for [`MemoryMappingBuilder::build`].
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(1 << 20)?;
    /// assert_eq!(m.size(), 1 << 20);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn new(size: usize) -> Result<MemoryMapping> {
        Self::new_protection(size, None, Protection::read_write())
    }

    /// A private anonymous read/write mapping of `size` bytes
    /// (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`): ordinary process
    /// memory, the usual target of userfaultfd MISSING faults.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new_private(4096)?;
    /// m.write_obj(7u8, 0)?;
    /// assert_eq!(m.read_obj::<u8>(0)?, 7);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn new_private(size: usize) -> Result<MemoryMapping> {
        MemoryMappingBuilder::new(size)
            .private()
            .noreserve()
            .build()
    }

    /// A shared anonymous mapping (`MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE`)
    /// with protection `prot`, at an address that is a multiple of `align` if
    /// given (a power of two).
    ///
    /// # Errors
    ///
    /// As [`MemoryMappingBuilder::build`]; in particular
    /// [`Error::InvalidAlignment`] for an alignment that is not a power of two
    /// and [`Error::SizeOverflow`] if `size + align` overflows.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMapping, Protection};
    ///
    /// let m = MemoryMapping::new_protection(4096, Some(1 << 21), Protection::read())?;
    /// assert_eq!(m.as_ptr() as usize % (1 << 21), 0);
    /// assert_eq!(m.read_obj::<u64>(0)?, 0);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn new_protection(
        size: usize,
        align: Option<u64>,
        prot: Protection,
    ) -> Result<MemoryMapping> {
        let mut b = MemoryMappingBuilder::new(size)
            .shared()
            .noreserve()
            .protection(prot);
        b.align = align;
        b.build()
    }

    /// Maps the first `size` bytes of `fd`, shared and read/write.
    ///
    /// # Errors
    ///
    /// As [`from_fd_offset_protection_populate`](Self::from_fd_offset_protection_populate).
    ///
    /// # Example
    ///
    /// ```
    /// let shm = mmap::SharedMemory::new("example", 4096)?;
    /// let m = mmap::MemoryMapping::from_fd(&shm, 4096)?;
    /// m.write_obj(1u32, 0)?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn from_fd(fd: impl AsFd, size: usize) -> Result<MemoryMapping> {
        Self::from_fd_offset(fd, size, 0)
    }

    /// Maps `size` bytes of `fd` from `offset`, shared and read/write.
    ///
    /// # Errors
    ///
    /// As [`from_fd_offset_protection_populate`](Self::from_fd_offset_protection_populate).
    ///
    /// # Example
    ///
    /// ```
    /// let ps = mmap::pagesize();
    /// let shm = mmap::SharedMemory::new("example", 2 * ps as u64)?;
    /// let whole = mmap::MemoryMapping::from_fd(&shm, 2 * ps)?;
    /// let second_page = mmap::MemoryMapping::from_fd_offset(&shm, ps, ps as u64)?;
    /// whole.write_obj(9u8, ps)?;
    /// assert_eq!(second_page.read_obj::<u8>(0)?, 9);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn from_fd_offset(fd: impl AsFd, size: usize, offset: u64) -> Result<MemoryMapping> {
        Self::from_fd_offset_protection(fd, size, offset, Protection::read_write())
    }

    /// Maps `size` bytes of `fd` from `offset`, shared, with protection `prot`.
    ///
    /// # Errors
    ///
    /// As [`from_fd_offset_protection_populate`](Self::from_fd_offset_protection_populate).
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMapping, Protection, SharedMemory};
    ///
    /// let shm = SharedMemory::new("example", 4096)?;
    /// let ro = MemoryMapping::from_fd_offset_protection(&shm, 4096, 0, Protection::read())?;
    /// assert_eq!(ro.read_obj::<u32>(0)?, 0);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn from_fd_offset_protection(
        fd: impl AsFd,
        size: usize,
        offset: u64,
        prot: Protection,
    ) -> Result<MemoryMapping> {
        Self::from_fd_offset_protection_populate(fd, size, offset, None, prot, false)
    }

    /// Maps `size` bytes of `fd` from `offset` with `MAP_SHARED`, protection
    /// `prot`, at a multiple of `align` if given, with `MAP_POPULATE` if
    /// `populate`.
    ///
    /// (crosvm takes `align: u64` with 0 meaning "none" here; this crate uses
    /// `Option<u64>` like [`new_protection`](Self::new_protection).)
    ///
    /// # Errors
    ///
    /// As [`MemoryMappingBuilder::build`]: [`Error::UnalignedOffset`] for an
    /// offset that is not page aligned, [`Error::Os`] with `EBADF` for a
    /// closed descriptor, `EACCES` for a descriptor opened with the wrong
    /// mode, `EPERM` for a writable view of a write-sealed memfd, ...
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMapping, Protection, SharedMemory};
    ///
    /// let ps = mmap::pagesize();
    /// let shm = SharedMemory::new("example", 2 * ps as u64)?;
    /// let m = MemoryMapping::from_fd_offset_protection_populate(
    ///     &shm, ps, ps as u64, Some(1 << 16), Protection::read_write(), true)?;
    /// assert_eq!(m.as_ptr() as usize % (1 << 16), 0);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn from_fd_offset_protection_populate(
        fd: impl AsFd,
        size: usize,
        offset: u64,
        align: Option<u64>,
        prot: Protection,
        populate: bool,
    ) -> Result<MemoryMapping> {
        let mut b = MemoryMappingBuilder::new(size)
            .shared()
            .from_fd(&fd, offset)
            .protection(prot);
        b.align = align;
        b.populate = populate;
        b.build()
    }

    /// A shared anonymous mapping (`MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE`)
    /// at exactly `addr`, replacing what was there (`MAP_FIXED`).
    ///
    /// # Safety
    ///
    /// As [`MemoryMappingBuilder::build_fixed`]: the caller owns
    /// `addr..addr + size`, nothing uses the memory being replaced, and nothing
    /// else unmaps the range during or after the returned mapping's life.
    ///
    /// # Errors
    ///
    /// As [`MemoryMappingBuilder::build_fixed`]; [`Error::UnalignedAddress`]
    /// if `addr` is not page aligned.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMapping, Protection};
    ///
    /// let ps = mmap::pagesize();
    /// let outer = MemoryMapping::new(3 * ps)?;
    /// outer.write_obj(1u8, ps)?;
    /// // SAFETY: the middle page belongs to `outer`, which is not otherwise in
    /// // use; the inner mapping is forgotten so that only `outer` unmaps it.
    /// let inner = unsafe {
    ///     MemoryMapping::new_protection_fixed(outer.as_ptr().add(ps), ps, Protection::read_write())?
    /// };
    /// std::mem::forget(inner);
    /// assert_eq!(outer.read_obj::<u8>(ps)?, 0); // a fresh page replaced the old one
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub unsafe fn new_protection_fixed(
        addr: *mut u8,
        size: usize,
        prot: Protection,
    ) -> Result<MemoryMapping> {
        let b = MemoryMappingBuilder::new(size)
            .shared()
            .noreserve()
            .protection(prot);
        // SAFETY: forwarded to the caller (same contract).
        unsafe { b.build_fixed(addr) }
    }

    /// Maps `size` bytes of `fd` from `offset`, shared, with protection `prot`,
    /// at exactly `addr`, replacing what was there (`MAP_FIXED`).
    ///
    /// # Safety
    ///
    /// As [`new_protection_fixed`](Self::new_protection_fixed).
    ///
    /// # Errors
    ///
    /// As [`MemoryMappingBuilder::build_fixed`].
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMapping, Protection, SharedMemory};
    ///
    /// let ps = mmap::pagesize();
    /// let shm = SharedMemory::new("fixed", ps as u64)?;
    /// let outer = MemoryMapping::new(2 * ps)?;
    /// // SAFETY: the second page belongs to `outer` and is not in use; the inner
    /// // mapping is forgotten so that only `outer` unmaps the range.
    /// let inner = unsafe {
    ///     MemoryMapping::from_descriptor_offset_protection_fixed(
    ///         outer.as_ptr().add(ps), &shm, ps, 0, Protection::read_write())?
    /// };
    /// std::mem::forget(inner);
    /// outer.write_obj(3u8, ps)?; // lands in the memfd
    /// assert_eq!(MemoryMapping::from_fd(&shm, ps)?.read_obj::<u8>(0)?, 3);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub unsafe fn from_descriptor_offset_protection_fixed(
        addr: *mut u8,
        fd: impl AsFd,
        size: usize,
        offset: u64,
        prot: Protection,
    ) -> Result<MemoryMapping> {
        let b = MemoryMappingBuilder::new(size)
            .shared()
            .from_fd(&fd, offset)
            .protection(prot);
        // SAFETY: forwarded to the caller (same contract).
        unsafe { b.build_fixed(addr) }
    }

    /// Address of the first byte, for system calls (e.g. registering the range
    /// with userfaultfd). Access the memory with volatile operations only.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(3 * mmap::pagesize())?;
    /// assert_eq!(m.as_ptr() as usize % mmap::pagesize(), 0);
    /// assert_eq!(m.size(), 3 * mmap::pagesize());
    /// assert_eq!(m.page_size(), mmap::pagesize());
    /// assert!(!m.is_hugetlb());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// Size in bytes: the size asked for, except with hugetlb where it is
    /// rounded up to a multiple of the huge page size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The page size of the mapping: the huge page size for hugetlb, the
    /// system page size otherwise. Offsets given to the madvise, mlock,
    /// mprotect and msync methods must be multiples of it.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Whether the mapping uses hugetlb pages (`MAP_HUGETLB`, or a file on
    /// hugetlbfs).
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// Checks that `offset..offset + count` lies inside the mapping and
    /// returns `offset + count`.
    ///
    /// This is the range check every `(offset, count)` method of the crate
    /// uses.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "range_end"`) if `offset + count`
    /// overflows or exceeds [`size`](Self::size).
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// assert_eq!(m.range_end(4000, 96)?, 4096);
    /// assert!(m.range_end(4000, 97).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn range_end(&self, offset: usize, count: usize) -> Result<usize> {
        check_range("range_end", self.size, offset, count)
    }
}

// SAFETY: `addr..addr + size` is mapped from construction until `Drop`, owned by
// this value alone, and no references into it are created.
unsafe impl MappedRegion for MemoryMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    fn size(&self) -> usize {
        self.size
    }

    fn page_size(&self) -> usize {
        self.page_size
    }
}

impl Drop for MemoryMapping {
    /// Unmaps the mapping (munmap(2)).
    fn drop(&mut self) {
        // An error cannot be reported from `drop`; munmap of a whole valid mapping does not fail.
        // SAFETY: the range was mapped at construction and is owned by this value; no
        // `VolatileSlice` can outlive the borrow of `self`.
        unsafe { libc::munmap(self.addr.cast(), self.map_len) };
    }
}

impl MemoryMapping {
    /// Gives up ownership without unmapping: returns the address and the
    /// length that must eventually be passed to munmap(2).
    pub(crate) fn into_raw(self) -> (*mut u8, usize) {
        let raw = (self.addr, self.map_len);
        std::mem::forget(self);
        raw
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;
    use crate::range::pagesize;

    #[test]
    fn new_is_shared_and_readable() {
        let m = MemoryMapping::new(100).unwrap();
        assert_eq!(m.size(), 100);
        assert_eq!(m.page_size(), pagesize());
        assert!(!m.is_hugetlb());
        assert_eq!(m.as_ptr() as usize % pagesize(), 0);
        // The tail of the last page is mapped but outside `size`.
        assert!(m.read_obj::<u8>(100).is_err());
        assert_eq!(m.read_obj::<u8>(99).unwrap(), 0);
    }

    #[test]
    fn into_raw_keeps_mapping() {
        let m = MemoryMapping::new(pagesize()).unwrap();
        m.write_obj(1u8, 0).unwrap();
        let (addr, len) = m.into_raw();
        // SAFETY: still mapped (into_raw does not unmap); reading one byte.
        assert_eq!(unsafe { ptr::read_volatile(addr) }, 1);
        // SAFETY: we own the raw mapping now.
        assert_eq!(unsafe { libc::munmap(addr.cast(), len) }, 0);
    }
}
