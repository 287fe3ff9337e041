//! The [`MappedRegion`] trait: a range of mapped memory.

use std::os::fd::BorrowedFd;

use crate::range::check_page_range;
use crate::{Error, Protection, Result};

/// A range of the address space that is mapped for as long as the
/// implementing value lives: [`MemoryMapping`](crate::MemoryMapping) and
/// [`MemoryMappingArena`](crate::MemoryMappingArena).
///
/// This is the interface other crates (such as `userfaultfd`, to register a
/// range) build on: [`as_ptr`](Self::as_ptr) and [`size`](Self::size).
///
/// # Safety
///
/// An implementation promises that `as_ptr()` is page aligned and that the
/// whole pages covering `as_ptr()..as_ptr() + size()` are a range of the
/// address space that the value owns (a mapping always covers whole pages, so
/// callers may round `size()` up to the page size): it stays mapped, and is
/// unmapped by nothing else, until the value is dropped; and that no Rust reference
/// (`&`/`&mut`) into the range is ever created, so other agents (kernel,
/// other processes, a userfaultfd handler) may change its bytes at any time.
/// Callers may rely on this to hand the range to system calls.
pub unsafe trait MappedRegion: Send + Sync {
    /// Address of the first byte of the region.
    fn as_ptr(&self) -> *mut u8;

    /// Size of the region in bytes.
    fn size(&self) -> usize;

    /// The page size of the region's memory: the huge page size for hugetlb memory, the base
    /// page size (the default) otherwise. A userfaultfd resolves faults in units of it.
    fn page_size(&self) -> usize {
        crate::pagesize()
    }

    /// Maps `size` bytes of `fd` starting at `fd_offset` at `offset` in the
    /// region, replacing what was there (mmap(2) with `MAP_FIXED`).
    ///
    /// # Errors
    ///
    /// The default implementation returns [`Error::Unsupported`]; only
    /// regions made of sub-mappings ([`MemoryMappingArena`](crate::MemoryMappingArena))
    /// implement it, with the errors documented there.
    fn add_fd_mapping(
        &mut self,
        offset: usize,
        size: usize,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        let _ = (offset, size, fd, fd_offset, prot);
        Err(Error::Unsupported {
            op: "add_fd_mapping",
        })
    }

    /// Removes whatever is mapped at `offset..offset + size`, leaving the
    /// range reserved.
    ///
    /// # Errors
    ///
    /// The default implementation returns [`Error::Unsupported`]; see
    /// [`MemoryMappingArena::remove`](crate::MemoryMappingArena::remove).
    fn remove_mapping(&mut self, offset: usize, size: usize) -> Result<()> {
        let _ = (offset, size);
        Err(Error::Unsupported {
            op: "remove_mapping",
        })
    }

    /// Writes the dirty pages of `offset..offset + size` back to the file they
    /// map and waits for the writes (msync(2) with `MS_SYNC`).
    ///
    /// On anonymous memory there is nothing to write and it succeeds.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`] if the range is not inside the region;
    /// - [`Error::UnalignedOffset`] if `offset` is not a multiple of the page size;
    /// - [`Error::Os`] (`op: "msync"`) with the kernel's errno, e.g.
    ///   `ENOMEM` if part of the range is not mapped (a hole in an arena),
    ///   `EIO` on a write-back error.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MappedRegion, MemoryMapping};
    ///
    /// let ps = mmap::pagesize();
    /// let m = MemoryMapping::new(2 * ps)?;
    /// // The inherent `msync()` covers the whole mapping; the trait's takes a range.
    /// MappedRegion::msync(&m, ps, ps)?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    fn msync(&self, offset: usize, size: usize) -> Result<()> {
        check_page_range("msync", self.size(), crate::pagesize(), offset, size)?;
        // SAFETY: the range lies inside the region (checked), which the trait
        // contract guarantees is mapped; msync(2) only writes back pages and
        // changes no memory contents.
        let ret = unsafe {
            libc::msync(
                self.as_ptr().add(offset).cast::<libc::c_void>(),
                size,
                libc::MS_SYNC,
            )
        };
        if ret == -1 {
            return Err(Error::last_os_on(
                "msync",
                self.as_ptr().wrapping_add(offset),
                size,
            ));
        }
        Ok(())
    }
}
