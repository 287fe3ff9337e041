//! [`MemoryMappingArena`]: a reserved range holding sub-mappings.

use std::os::fd::{AsFd, BorrowedFd};

use crate::{
    check_page_range, pagesize, round_up, Error, MappedRegion, MemoryMapping, MemoryMappingBuilder,
    Protection, Result,
};

/// A range of address space reserved up front, in which sub-mappings are
/// placed with `MAP_FIXED`.
///
/// [`new`](Self::new) reserves the range as inaccessible memory (`PROT_NONE`,
/// private anonymous, `MAP_NORESERVE`: it costs address space only). Then:
///
/// - [`add_anon`](Self::add_anon) / [`add_fd_offset`](Self::add_fd_offset)
///   (and their `_protection` forms) map memory at a page-aligned offset;
/// - [`remove`](Self::remove) turns a range back into an inaccessible
///   reservation (crosvm maps read-only zero pages there instead; an access
///   to a removed range here raises `SIGSEGV`).
///
/// **Overlap rules.** A new sub-mapping may overlap earlier ones in any way:
/// the pages it covers are replaced atomically (that is what `MAP_FIXED`
/// does) and the rest of every earlier sub-mapping is left as it was, data
/// included. Removing a range that covers parts of several sub-mappings
/// removes exactly those parts. Only the arena's bounds are enforced: a range
/// reaching past the end is refused. Sizes are rounded up to the page size,
/// and the whole arena is unmapped when it is dropped.
///
/// The arena has no accessors for the memory: sub-ranges may be inaccessible.
/// Use [`as_ptr`](MappedRegion::as_ptr) with care, or map the same memfd
/// elsewhere.
///
/// # Example
///
/// ```
/// use mmap::{MappedRegion, MemoryMappingArena, Protection, SharedMemory};
///
/// let ps = mmap::pagesize();
/// let mut arena = MemoryMappingArena::new(8 * ps)?;
/// let shm = SharedMemory::new("arena", 2 * ps as u64)?;
/// arena.add_anon(0, 2 * ps)?;
/// arena.add_fd_offset(4 * ps, 2 * ps, &shm, 0)?;
/// arena.remove(ps, ps)?; // the second anonymous page is gone again
/// assert_eq!(arena.size(), 8 * ps);
/// # Ok::<(), mmap::Error>(())
/// ```
#[derive(Debug)]
pub struct MemoryMappingArena {
    addr: *mut u8,
    size: usize,
}

// SAFETY: the arena owns its reserved range exclusively until `Drop` and
// exposes it only as a raw pointer; see `MemoryMapping`'s `Send`.
unsafe impl Send for MemoryMappingArena {}
// SAFETY: `&MemoryMappingArena` only reads the address and size; every
// method that changes mappings takes `&mut self`.
unsafe impl Sync for MemoryMappingArena {}

impl MemoryMappingArena {
    /// Reserves `size` bytes (rounded up to the page size) of inaccessible
    /// address space (mmap(2) `PROT_NONE`, `MAP_PRIVATE | MAP_ANONYMOUS |
    /// MAP_NORESERVE`).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::SizeOverflow`] or [`Error::Syscall`]
    /// (`op: "mmap"`, `ENOMEM`), as [`MemoryMappingBuilder::build`].
    ///
    /// # Example
    ///
    /// ```
    /// let arena = mmap::MemoryMappingArena::new(1 << 20)?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn new(size: usize) -> Result<MemoryMappingArena> {
        let size = round_up(size, pagesize()).ok_or(Error::SizeOverflow {
            op: "mmap",
            size,
            align: pagesize() as u64,
        })?;
        Ok(Self::reservation(size).build()?.into())
    }

    /// The reservation mapping used for [`new`](Self::new) and [`remove`](Self::remove).
    fn reservation(size: usize) -> MemoryMappingBuilder<'static> {
        MemoryMappingBuilder::new(size)
            .private()
            .noreserve()
            .protection(Protection::none())
    }

    /// Checks `offset`/`size` for a sub-mapping and returns the page-rounded size.
    fn check(&self, op: &'static str, offset: usize, size: usize) -> Result<usize> {
        if size == 0 {
            return Err(Error::ZeroSize { op });
        }
        let ps = pagesize();
        let rounded = round_up(size, ps).ok_or(Error::InvalidRange {
            op,
            offset,
            count: size,
            size: self.size,
        })?;
        check_page_range(op, self.size, ps, offset, rounded)?;
        Ok(rounded)
    }

    /// Maps `builder` at `offset`, replacing what is there.
    fn place(&mut self, offset: usize, builder: MemoryMappingBuilder<'_>) -> Result<()> {
        // The new mapping is released with `into_raw` below, so only the arena's `Drop` unmaps
        // the range (no double munmap).
        // SAFETY: `offset..offset + size` was checked to lie inside the arena, which this value
        // owns, and no references into it exist.
        let m = unsafe { builder.build_fixed(self.addr.add(offset))? };
        m.into_raw();
        Ok(())
    }

    /// Maps `size` bytes of shared anonymous read/write memory at `offset`,
    /// replacing whatever is there.
    ///
    /// # Errors
    ///
    /// As [`add_anon_protection`](Self::add_anon_protection).
    pub fn add_anon(&mut self, offset: usize, size: usize) -> Result<()> {
        self.add_anon_protection(offset, size, Protection::read_write())
    }

    /// Maps `size` bytes (rounded up to the page size) of shared anonymous
    /// memory (`MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED`) with
    /// protection `prot` at `offset`, replacing whatever is there.
    ///
    /// # Errors
    ///
    /// - [`Error::ZeroSize`] if `size` is 0;
    /// - [`Error::UnalignedOffset`] if `offset` is not page aligned;
    /// - [`Error::InvalidRange`] if the range reaches past the end of the arena;
    /// - [`Error::Syscall`] (`op: "mmap"`) with mmap(2)'s errno. The old
    ///   contents of the range may already be gone then.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMappingArena, Protection};
    ///
    /// let ps = mmap::pagesize();
    /// let mut arena = MemoryMappingArena::new(4 * ps)?;
    /// arena.add_anon_protection(ps, 2 * ps, Protection::read())?;
    /// assert!(arena.add_anon(3 * ps, 2 * ps).is_err()); // past the end
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn add_anon_protection(
        &mut self,
        offset: usize,
        size: usize,
        prot: Protection,
    ) -> Result<()> {
        let size = self.check("add_anon", offset, size)?;
        self.place(
            offset,
            MemoryMappingBuilder::new(size)
                .shared()
                .noreserve()
                .protection(prot),
        )
    }

    /// Maps the first `size` bytes of `fd` read/write at `offset`.
    ///
    /// # Errors
    ///
    /// As [`add_fd_offset_protection`](Self::add_fd_offset_protection).
    pub fn add_fd(&mut self, offset: usize, size: usize, fd: impl AsFd) -> Result<()> {
        self.add_fd_offset(offset, size, fd, 0)
    }

    /// Maps `size` bytes of `fd` from `fd_offset`, read/write, at `offset`.
    ///
    /// # Errors
    ///
    /// As [`add_fd_offset_protection`](Self::add_fd_offset_protection).
    pub fn add_fd_offset(
        &mut self,
        offset: usize,
        size: usize,
        fd: impl AsFd,
        fd_offset: u64,
    ) -> Result<()> {
        self.add_fd_offset_protection(offset, size, fd, fd_offset, Protection::read_write())
    }

    /// Maps `size` bytes (rounded up to the page size) of `fd` from
    /// `fd_offset`, shared, with protection `prot`, at `offset` (`MAP_FIXED`),
    /// replacing whatever is there.
    ///
    /// # Errors
    ///
    /// As [`add_anon_protection`](Self::add_anon_protection), plus
    /// [`Error::UnalignedOffset`] for an `fd_offset` that is not page aligned
    /// and [`Error::Syscall`] with `EBADF`, `EACCES`, ... as
    /// [`MemoryMapping::from_fd_offset_protection`].
    pub fn add_fd_offset_protection(
        &mut self,
        offset: usize,
        size: usize,
        fd: impl AsFd,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        let size = self.check("add_fd", offset, size)?;
        self.place(
            offset,
            MemoryMappingBuilder::new(size)
                .shared()
                .from_fd(&fd, fd_offset)
                .protection(prot),
        )
    }

    /// Removes whatever is mapped at `offset..offset + size` (rounded up to
    /// the page size), leaving inaccessible reserved address space.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::UnalignedOffset`], [`Error::InvalidRange`]
    /// as [`add_anon_protection`](Self::add_anon_protection);
    /// [`Error::Syscall`] (`op: "mmap"`) with mmap(2)'s errno.
    ///
    /// # Example
    ///
    /// ```
    /// let ps = mmap::pagesize();
    /// let mut arena = mmap::MemoryMappingArena::new(4 * ps)?;
    /// arena.add_anon(0, 4 * ps)?;
    /// arena.remove(ps, 2 * ps)?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn remove(&mut self, offset: usize, size: usize) -> Result<()> {
        let size = self.check("remove", offset, size)?;
        self.place(offset, Self::reservation(size))
    }
}

// SAFETY: `addr..addr + size` is mapped (as sub-mappings or reservation) from
// construction until `Drop`, owned by the arena alone, with no references into it.
unsafe impl MappedRegion for MemoryMappingArena {
    fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    fn size(&self) -> usize {
        self.size
    }

    /// [`add_fd_offset_protection`](MemoryMappingArena::add_fd_offset_protection).
    fn add_fd_mapping(
        &mut self,
        offset: usize,
        size: usize,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        self.add_fd_offset_protection(offset, size, fd, fd_offset, prot)
    }

    /// [`remove`](MemoryMappingArena::remove).
    fn remove_mapping(&mut self, offset: usize, size: usize) -> Result<()> {
        self.remove(offset, size)
    }
}

impl From<MemoryMapping> for MemoryMappingArena {
    /// Turns a mapping into an arena covering the same range (its size rounded
    /// up to the page size), keeping its contents; sub-mappings can then be
    /// placed over it.
    fn from(mapping: MemoryMapping) -> MemoryMappingArena {
        let (addr, size) = mapping.into_raw();
        MemoryMappingArena { addr, size }
    }
}

impl Drop for MemoryMappingArena {
    /// Unmaps the whole arena, sub-mappings included (munmap(2)).
    fn drop(&mut self) {
        // SAFETY: the arena owns the whole range; the sub-mappings were released
        // with `into_raw`, so nothing else unmaps any part of it.
        unsafe { libc::munmap(self.addr.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_checks() {
        let ps = pagesize();
        let mut a = MemoryMappingArena::new(4 * ps).unwrap();
        assert_eq!(
            a.add_anon(0, 0).unwrap_err(),
            Error::ZeroSize { op: "add_anon" }
        );
        assert_eq!(
            a.add_anon(1, ps).unwrap_err(),
            Error::UnalignedOffset {
                op: "add_anon",
                offset: 1,
                align: ps as u64
            }
        );
        assert_eq!(
            a.remove(3 * ps, ps + 1).unwrap_err(),
            Error::InvalidRange {
                op: "remove",
                offset: 3 * ps,
                count: 2 * ps,
                size: 4 * ps
            }
        );
        assert!(matches!(
            a.add_anon(ps, usize::MAX),
            Err(Error::InvalidRange { op: "add_anon", .. })
        ));
        assert_eq!(
            MemoryMappingArena::new(0).unwrap_err(),
            Error::ZeroSize { op: "mmap" }
        );
    }

    #[test]
    fn size_is_page_rounded() {
        let a = MemoryMappingArena::new(1).unwrap();
        assert_eq!(a.size(), pagesize());
    }
}
