//! [`MemoryMapping`]'s page-range system calls: madvise(2), msync(2), mlock2(2)/munlock(2) and
//! mprotect(2).

use crate::range::check_page_range;
use crate::{thp_pmd_size, Error, HugePageAdvice, MappedRegion, MemoryMapping, Protection, Result};

/// `MLOCK_ONFAULT` for mlock2(2) (`<linux/mman.h>`).
const MLOCK_ONFAULT: libc::c_uint = 1;

impl MemoryMapping {
    /// madvise(2) on a checked, page-aligned sub-range.
    fn madvise(
        &self,
        method: &'static str,
        op: &'static str,
        offset: usize,
        count: usize,
        advice: libc::c_int,
    ) -> Result<()> {
        check_page_range(method, self.size, self.page_size, offset, count)?;
        // The advice values used by this crate change at most the *contents* of the mapping
        // (DONTNEED, REMOVE), which this crate never exposes through references, or its attributes.
        // SAFETY: the range lies inside the mapping this value owns (checked); see above.
        let ret = unsafe { libc::madvise(self.addr.add(offset).cast(), count, advice) };
        if ret == -1 {
            return Err(Error::last_os_on(op, self.addr.wrapping_add(offset), count));
        }
        Ok(())
    }

    /// Excludes the mapping from child processes: after fork(2) the child has
    /// nothing mapped at this address (madvise(2) `MADV_DONTFORK`, Linux
    /// 2.6.16; `dc` in `VmFlags`). Used for memory registered with
    /// userfaultfd or pinned for DMA, which must not become copy-on-write.
    ///
    /// A child that forked must then not use its copy of this value.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "madvise(MADV_DONTFORK)"`) with madvise's errno.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.use_dontfork()?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn use_dontfork(&self) -> Result<()> {
        self.madvise(
            "use_dontfork",
            "madvise(MADV_DONTFORK)",
            0,
            self.size,
            libc::MADV_DONTFORK,
        )
    }

    /// Asks for transparent huge pages (madvise(2) `MADV_HUGEPAGE`, Linux
    /// 2.6.38; `hg` in `VmFlags`) if the mapping can hold at least one, and
    /// says what it did.
    ///
    /// The transparent huge page size is read from
    /// `/sys/kernel/mm/transparent_hugepage/hpage_pmd_size` ([`thp_pmd_size`]),
    /// not assumed to be 2 MiB. The advice is applied when the mapping contains
    /// a naturally aligned block of that size; otherwise nothing is done and
    /// [`HugePageAdvice::TooSmall`] says so. Whether huge pages are then used
    /// depends on `/sys/kernel/mm/transparent_hugepage/enabled` (and
    /// `shmem_enabled` for shared anonymous memory).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "madvise(MADV_HUGEPAGE)"`) with madvise's errno.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{HugePageAdvice, MemoryMapping};
    ///
    /// let small = MemoryMapping::new_private(4096)?;
    /// assert!(matches!(
    ///     small.use_hugepages()?,
    ///     HugePageAdvice::TooSmall { .. } | HugePageAdvice::Unsupported
    /// ));
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn use_hugepages(&self) -> Result<HugePageAdvice> {
        if self.hugetlb {
            return Ok(HugePageAdvice::Hugetlb);
        }
        let Some(pmd_size) = thp_pmd_size().filter(|s| s.is_power_of_two()) else {
            return Ok(HugePageAdvice::Unsupported);
        };
        let start = self.addr as usize;
        let fits = start
            .checked_next_multiple_of(pmd_size)
            .and_then(|first| first.checked_add(pmd_size))
            .is_some_and(|end| end <= start + self.map_len);
        if !fits {
            return Ok(HugePageAdvice::TooSmall { pmd_size });
        }
        self.madvise(
            "use_hugepages",
            "madvise(MADV_HUGEPAGE)",
            0,
            self.size,
            libc::MADV_HUGEPAGE,
        )?;
        Ok(HugePageAdvice::Applied)
    }

    /// Keeps transparent huge pages out of the mapping (madvise(2) `MADV_NOHUGEPAGE`,
    /// Linux 2.6.38; `nh` in `VmFlags`). A userfaultfd MISSING destination needs this: the
    /// kernel refuses `UFFDIO_COPY` into a range already backed by a huge page (`EEXIST`), and
    /// a fault there would be resolved 2 MiB at a time. QEMU does the same during post-copy.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "madvise(MADV_NOHUGEPAGE)"`) with madvise's errno.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMappingBuilder::new(1 << 21).private().build()?;
    /// m.disable_hugepages()?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn disable_hugepages(&self) -> Result<()> {
        if self.hugetlb {
            return Ok(());
        }
        self.madvise(
            "disable_hugepages",
            "madvise(MADV_NOHUGEPAGE)",
            0,
            self.size,
            libc::MADV_NOHUGEPAGE,
        )
    }

    /// Writes the mapping's dirty pages back to its file and waits
    /// (msync(2) `MS_SYNC`). Succeeds, doing nothing, for anonymous memory.
    /// [`MappedRegion::msync`] does the same for a sub-range.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "msync"`) with msync's errno, e.g. `EIO`.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.msync()?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn msync(&self) -> Result<()> {
        MappedRegion::msync(self, 0, self.size)
    }

    /// Frees the memory and backing store of `offset..offset + count`
    /// (madvise(2) `MADV_REMOVE`, Linux 2.6.16): the data is discarded from
    /// the shared memory or file itself (a hole is punched), in every mapping
    /// of it, and later reads see zeros.
    ///
    /// Only for shared mappings of memory that supports hole punching: shared
    /// anonymous memory, memfd/tmpfs, hugetlbfs, and file systems with
    /// `FALLOC_FL_PUNCH_HOLE` (Linux 3.5). Private mappings fail with `EINVAL`;
    /// use [`drop_page_cache`](Self::drop_page_cache) for those.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`] if the range is not inside the mapping;
    /// - [`Error::UnalignedOffset`] if `offset` is not a multiple of [`page_size`](Self::page_size);
    /// - [`Error::Os`] (`op: "madvise(MADV_REMOVE)"`): `EINVAL` for a
    ///   private mapping, `EOPNOTSUPP` for a file system without hole punching,
    ///   `EACCES` for a mapping of a file opened read-only (a mapping that is
    ///   merely `PROT_READ` but could be made writable is accepted).
    ///
    /// # Example
    ///
    /// ```
    /// let ps = mmap::pagesize();
    /// let m = mmap::MemoryMapping::new(2 * ps)?;
    /// m.write_obj(5u32, ps)?;
    /// m.remove_range(ps, ps)?;
    /// assert_eq!(m.read_obj::<u32>(ps)?, 0);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn remove_range(&self, offset: usize, count: usize) -> Result<()> {
        self.madvise(
            "remove_range",
            "madvise(MADV_REMOVE)",
            offset,
            count,
            libc::MADV_REMOVE,
        )
    }

    /// Starts reading `offset..offset + count` in from its file (or swap) in
    /// the background (madvise(2) `MADV_WILLNEED`). Returns without waiting.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`], [`Error::UnalignedOffset`] as for
    ///   [`remove_range`](Self::remove_range);
    /// - [`Error::Os`] (`op: "madvise(MADV_WILLNEED)"`), e.g. `EBADF` if
    ///   the mapped file is not readable.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(8192)?;
    /// m.async_prefetch(0, 8192)?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn async_prefetch(&self, offset: usize, count: usize) -> Result<()> {
        self.madvise(
            "async_prefetch",
            "madvise(MADV_WILLNEED)",
            offset,
            count,
            libc::MADV_WILLNEED,
        )
    }

    /// Unmaps the pages of `offset..offset + count` from this process's page
    /// tables (madvise(2) `MADV_DONTNEED`). What the next access sees depends
    /// on the backing:
    ///
    /// - **shared** mappings (shared anonymous, memfd, files): the data is
    ///   *kept* in the page cache / shmem; the next access maps the same data
    ///   again (a userfaultfd MINOR fault if registered). Only this process's
    ///   resident set shrinks. To discard shared data use
    ///   [`remove_range`](Self::remove_range).
    /// - **private anonymous** mappings: the data is *discarded*; the next
    ///   access sees zero-filled pages (a userfaultfd MISSING fault if
    ///   registered).
    /// - **private file** mappings: the process's private copies are
    ///   discarded; the next access sees the file's contents again.
    ///
    /// (The name is crosvm's; the call drops this mapping's page table
    /// entries, not the page cache itself.)
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`], [`Error::UnalignedOffset`] as for
    ///   [`remove_range`](Self::remove_range);
    /// - [`Error::Os`] (`op: "madvise(MADV_DONTNEED)"`), e.g. `EINVAL` on
    ///   locked pages.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::MemoryMapping;
    ///
    /// let shared = MemoryMapping::new(4096)?;
    /// shared.write_obj(9u8, 0)?;
    /// shared.drop_page_cache(0, 4096)?;
    /// assert_eq!(shared.read_obj::<u8>(0)?, 9); // kept
    ///
    /// let private = MemoryMapping::new_private(4096)?;
    /// private.write_obj(9u8, 0)?;
    /// private.drop_page_cache(0, 4096)?;
    /// assert_eq!(private.read_obj::<u8>(0)?, 0); // discarded
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn drop_page_cache(&self, offset: usize, count: usize) -> Result<()> {
        self.madvise(
            "drop_page_cache",
            "madvise(MADV_DONTNEED)",
            offset,
            count,
            libc::MADV_DONTNEED,
        )
    }

    /// Locks `offset..offset + count` in memory as its pages are faulted in,
    /// without faulting them in now (mlock2(2) with `MLOCK_ONFAULT`, Linux
    /// 4.4; `lo` and `lf` in `VmFlags`). Locked pages are never swapped out.
    ///
    /// The whole range counts against `RLIMIT_MEMLOCK` immediately, even
    /// pages not yet faulted in (unless the process has `CAP_IPC_LOCK`).
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`], [`Error::UnalignedOffset`] as for
    ///   [`remove_range`](Self::remove_range);
    /// - [`Error::Os`] (`op: "mlock2(MLOCK_ONFAULT)"`): `ENOMEM` or
    ///   `EPERM` over `RLIMIT_MEMLOCK`, `ENOSYS` before Linux 4.4.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.lock_on_fault(0, 4096)?;
    /// m.unlock(0, 4096)?;
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn lock_on_fault(&self, offset: usize, count: usize) -> Result<()> {
        const OP: &str = "mlock2(MLOCK_ONFAULT)";
        check_page_range("lock_on_fault", self.size, self.page_size, offset, count)?;
        // SAFETY: the range lies inside the owned mapping (checked); locking
        // changes no memory contents.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mlock2,
                self.addr.add(offset),
                count,
                MLOCK_ONFAULT,
            )
        };
        if ret == -1 {
            return Err(Error::last_os_on(OP, self.addr.wrapping_add(offset), count));
        }
        Ok(())
    }

    /// Unlocks `offset..offset + count` (munlock(2)), undoing
    /// [`lock_on_fault`](Self::lock_on_fault). Unlocking pages that are not
    /// locked succeeds.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`], [`Error::UnalignedOffset`] as for
    ///   [`remove_range`](Self::remove_range);
    /// - [`Error::Os`] (`op: "munlock"`) with munlock's errno.
    ///
    /// # Example
    ///
    /// See [`lock_on_fault`](Self::lock_on_fault).
    pub fn unlock(&self, offset: usize, count: usize) -> Result<()> {
        check_page_range("unlock", self.size, self.page_size, offset, count)?;
        // SAFETY: the range lies inside the owned mapping (checked).
        let ret = unsafe { libc::munlock(self.addr.add(offset).cast(), count) };
        if ret == -1 {
            return Err(Error::last_os_on(
                "munlock",
                self.addr.wrapping_add(offset),
                count,
            ));
        }
        Ok(())
    }

    /// Changes the access permissions of `offset..offset + count`
    /// (mprotect(2)). Accessing pages in a way they no longer allow raises
    /// `SIGSEGV`, which by default kills the process: the volatile accessors
    /// do not check permissions.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRange`], [`Error::UnalignedOffset`] as for
    ///   [`remove_range`](Self::remove_range);
    /// - [`Error::Os`] (`op: "mprotect"`): `EACCES` for write access to a
    ///   shared mapping of a file opened read-only, `ENOMEM` if the change
    ///   would exceed `vm.max_map_count`.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemoryMapping, Protection};
    ///
    /// let ps = mmap::pagesize();
    /// let m = MemoryMapping::new(2 * ps)?;
    /// m.set_protection(ps, ps, Protection::read())?;
    /// assert_eq!(m.read_obj::<u8>(ps)?, 0); // reading is still allowed
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn set_protection(&self, offset: usize, count: usize, prot: Protection) -> Result<()> {
        check_page_range("set_protection", self.size, self.page_size, offset, count)?;
        // SAFETY: the range lies inside the owned mapping (checked). Removing
        // access makes later accesses fault (a crash, not silent corruption);
        // no references into the mapping exist whose validity could be broken.
        let ret = unsafe { libc::mprotect(self.addr.add(offset).cast(), count, prot.bits()) };
        if ret == -1 {
            return Err(Error::last_os_on(
                "mprotect",
                self.addr.wrapping_add(offset),
                count,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::pagesize;

    #[test]
    fn page_ops_check_range_and_alignment() {
        let ps = pagesize();
        let m = MemoryMapping::new(2 * ps).unwrap();
        assert_eq!(
            m.drop_page_cache(ps, 2 * ps).unwrap_err(),
            Error::InvalidRange {
                op: "drop_page_cache",
                offset: ps,
                count: 2 * ps,
                size: 2 * ps
            }
        );
        assert_eq!(
            m.lock_on_fault(1, 1).unwrap_err(),
            Error::UnalignedOffset {
                op: "lock_on_fault",
                offset: 1,
                align: ps as u64
            }
        );
        assert!(matches!(
            m.unlock(usize::MAX, 2),
            Err(Error::InvalidRange { op: "unlock", .. })
        ));
        assert!(matches!(
            m.set_protection(0, 3 * ps, Protection::read()),
            Err(Error::InvalidRange {
                op: "set_protection",
                ..
            })
        ));
        assert!(matches!(
            m.async_prefetch(ps + 1, 0),
            Err(Error::UnalignedOffset {
                op: "async_prefetch",
                ..
            })
        ));
        assert!(matches!(
            m.remove_range(0, 2 * ps + 1),
            Err(Error::InvalidRange {
                op: "remove_range",
                ..
            })
        ));
        assert!(matches!(
            MappedRegion::msync(&m, 0, 2 * ps + 1),
            Err(Error::InvalidRange { op: "msync", .. })
        ));
        // Zero-length operations at the end are fine.
        m.drop_page_cache(2 * ps, 0).unwrap();
    }
}
