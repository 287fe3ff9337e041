//! [`MemoryMappingBuilder`]: every mmap(2) option, and `build`, which turns them into a
//! [`MemoryMapping`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr;

use crate::range::{pagesize, round_up};
use crate::raw::{hugetlbfs_page_size, map_aligned, raw_mmap, MAP_FIXED_NOREPLACE};
use crate::{
    AddrRange, Errno, Error, HugePageSize, MemoryMapping, Protection, Result, SharedMemory,
};

/// Builder for a [`MemoryMapping`] with any combination of options.
///
/// Defaults: shared (`MAP_SHARED`), anonymous, read/write, no `MAP_NORESERVE`,
/// no populate, no alignment beyond the page size, normal (not hugetlb) pages.
///
/// # Example
///
/// ```
/// use mmap::{HugePageSize, MemoryMappingBuilder, Protection, SharedMemory};
///
/// // Private anonymous memory, the usual userfaultfd MISSING target.
/// let m = MemoryMappingBuilder::new(64 << 10).private().noreserve().build()?;
///
/// // A read-only shared view of a memfd from its second page on, prefaulted.
/// let ps = mmap::pagesize();
/// let shm = SharedMemory::new("data", 3 * ps as u64)?;
/// let v = MemoryMappingBuilder::new(2 * ps)
///     .from_fd(&shm, ps as u64)
///     .protection(Protection::read())
///     .populate()
///     .build()?;
/// assert_eq!(v.read_obj::<u8>(0)?, 0);
///
/// // 2 MiB hugetlb pages, if the administrator reserved some.
/// if HugePageSize::Size2MiB.free_pages().unwrap_or(0) > 0 {
///     match MemoryMappingBuilder::new(1).private().hugetlb(HugePageSize::Size2MiB).build() {
///         Ok(h) => assert_eq!(h.size(), 2 << 20), // rounded up to the huge page size
///         Err(e) => assert_eq!(e.errno(), Some(mmap::Errno::ENOMEM)), // the pool emptied meanwhile
///     }
/// }
/// # Ok::<(), mmap::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct MemoryMappingBuilder<'a> {
    size: usize,
    shared: bool,
    fd: Option<BorrowedFd<'a>>,
    offset: u64,
    prot: Protection,
    pub(crate) align: Option<u64>,
    pub(crate) populate: bool,
    noreserve: bool,
    hugetlb: Option<HugePageSize>,
}

impl<'a> MemoryMappingBuilder<'a> {
    /// A builder for a mapping of `size` bytes, with the defaults listed on
    /// [`MemoryMappingBuilder`].
    pub fn new(size: usize) -> Self {
        MemoryMappingBuilder {
            size,
            shared: true,
            fd: None,
            offset: 0,
            prot: Protection::read_write(),
            align: None,
            populate: false,
            noreserve: false,
            hugetlb: None,
        }
    }

    /// `MAP_SHARED` (mmap(2); the default): writes are visible to every other mapping
    /// of the same memory and, for a file, reach the file. Shared anonymous
    /// memory is shmem, which userfaultfd MINOR mode and `MADV_REMOVE` need.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// `MAP_PRIVATE` (mmap(2)): copy-on-write. For anonymous memory this is ordinary
    /// process memory (the usual userfaultfd MISSING target); for a file,
    /// writes stay in the process.
    pub fn private(mut self) -> Self {
        self.shared = false;
        self
    }

    /// Maps `fd` from `offset` instead of anonymous memory.
    ///
    /// `offset` must be a multiple of the page size (of the huge page size
    /// with [`hugetlb`](Self::hugetlb)). The mapping keeps its own reference
    /// to the open file, so `fd` may be closed once the mapping is built.
    pub fn from_fd<F: AsFd + ?Sized>(mut self, fd: &'a F, offset: u64) -> Self {
        self.fd = Some(fd.as_fd());
        self.offset = offset;
        self
    }

    /// Maps the memfd `shm` from offset 0 (change it with [`offset`](Self::offset)).
    pub fn from_shared_memory(self, shm: &'a SharedMemory) -> Self {
        self.from_fd(shm, 0)
    }

    /// Sets the file offset for [`from_fd`](Self::from_fd)/[`from_shared_memory`](Self::from_shared_memory).
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// The access permissions, the `prot` argument of mmap(2) (default
    /// [`Protection::read_write`]).
    pub fn protection(mut self, prot: Protection) -> Self {
        self.prot = prot;
        self
    }

    /// Places the mapping at an address that is a multiple of `align`, a power
    /// of two. Alignments above the page size are obtained by reserving
    /// `size + align` bytes, unmapping the aligned part of the reservation and
    /// mapping into that hole with `MAP_FIXED_NOREPLACE` (never `MAP_FIXED`, so
    /// a mapping another thread made in the hole meanwhile is left alone), then
    /// unmapping the parts before and after (also on every error path). If
    /// other threads take the hole four times in a row, building fails with
    /// `EEXIST`.
    pub fn align(mut self, align: u64) -> Self {
        self.align = Some(align);
        self
    }

    /// `MAP_POPULATE` (mmap(2), Linux 2.5.46): fault every page in when mapping (read-ahead for files;
    /// for private mappings, Linux 2.6.23), so first accesses do not fault.
    /// Works for anonymous memory too.
    pub fn populate(mut self) -> Self {
        self.populate = true;
        self
    }

    /// `MAP_NORESERVE` (mmap(2)): do not reserve swap space / commit charge for the
    /// mapping (`nr` in `/proc/self/smaps` `VmFlags` unless
    /// `vm.overcommit_memory` is 2). For hugetlb: do not reserve huge pages at
    /// mmap time, so a later fault can get `SIGBUS` if the pool is empty.
    pub fn noreserve(mut self) -> Self {
        self.noreserve = true;
        self
    }

    /// `MAP_HUGETLB` with page size `size` (Linux 2.6.32; sizes other than the
    /// default since 3.8). The length is rounded up to a multiple of the huge
    /// page size, and [`MemoryMapping::size`] reports the rounded length, so
    /// that munmap(2) and userfaultfd registration get aligned lengths.
    ///
    /// File mappings do not need this flag: a file on hugetlbfs (such as a
    /// [`SharedMemory::new_hugetlb`] memfd) is recognised with fstatfs(2) and
    /// gets the same rounding, with its own huge page size. Setting it for a
    /// file that is not on hugetlbfs makes mmap(2) fail with `EINVAL`.
    pub fn hugetlb(mut self, size: HugePageSize) -> Self {
        self.hugetlb = Some(size);
        self
    }

    /// Creates the mapping.
    ///
    /// # Errors
    ///
    /// All with `op: "mmap"`:
    /// - [`Error::ZeroSize`] if the size is 0;
    /// - [`Error::InvalidAlignment`] if the alignment is not a power of two;
    /// - [`Error::SizeOverflow`] if the size rounded up to the page size, or
    ///   the size plus the alignment, does not fit in `usize`;
    /// - [`Error::UnalignedOffset`] if the file offset is not page aligned;
    /// - [`Error::OffsetOverflow`] if the file offset does not fit in `off_t`;
    /// - [`Error::Unsupported`] for [`HugePageSize::Default`] on a kernel
    ///   without hugetlb;
    /// - [`Error::Os`] with mmap(2)'s errno: `EBADF` (closed descriptor),
    ///   `EACCES` (file not open for reading, or for writing with a shared
    ///   writable mapping), `EPERM` (writable shared mapping of a memfd with
    ///   `F_SEAL_WRITE`), `ENOMEM` (no address space, or no free hugetlb
    ///   pages), `EINVAL` (huge page size the kernel does not support), ...
    ///   or, with `op: "madvise(MADV_DONTDUMP)"`, the errno of that call.
    pub fn build(self) -> Result<MemoryMapping> {
        self.build_inner(None)
    }

    /// Creates the mapping at exactly `addr`, replacing whatever was mapped
    /// in `addr..addr + size` (`MAP_FIXED`).
    ///
    /// # Safety
    ///
    /// The caller must own `addr..addr + size` rounded up to the page size of
    /// the mapping, which is the *huge* page size with
    /// [`hugetlb`](Self::hugetlb) or for a file on hugetlbfs (a
    /// [`SharedMemory::new_hugetlb`] memfd): check the rounded length
    /// ([`MemoryMapping::size`] of the result tells it only afterwards).
    /// Whatever is mapped there is destroyed, so no Rust object may be using
    /// that memory, and no other owner may unmap the range while the returned
    /// mapping lives. When the returned mapping is dropped the range becomes
    /// unmapped, so another owner must not unmap it again afterwards either
    /// (another thread may have mapped something new there meanwhile). Placing
    /// a mapping inside one you own is what [`MemoryMappingArena`](crate::MemoryMappingArena)
    /// does safely.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), plus [`Error::UnalignedAddress`] if `addr` is
    /// not a multiple of the page size (huge page size, `align`).
    ///
    /// After an [`Error::Os`] the range may have been *unmapped*: the
    /// kernel clears it before calling the file system's mmap handler, which
    /// can still fail (hugetlbfs with no free huge pages: `ENOMEM`), and
    /// `MADV_DONTDUMP` failing unmaps the new mapping. Another thread's
    /// mmap(2) can then take part of the range, so the caller must not unmap
    /// the range or map over it with `MAP_FIXED` again without checking; a
    /// `MAP_FIXED_NOREPLACE` mapping (such as [`build_fixed_noreplace`](Self::build_fixed_noreplace))
    /// of the whole range tells whether it is still free. The other errors are
    /// returned before any system call and leave the range as it was.
    pub unsafe fn build_fixed(self, addr: *mut u8) -> Result<MemoryMapping> {
        self.build_inner(Some((addr, true)))
    }

    /// Creates the mapping at exactly `addr` if nothing is mapped in
    /// `addr..addr + size` (`MAP_FIXED_NOREPLACE`, Linux 4.17). Safe, because
    /// it never replaces an existing mapping.
    ///
    /// # Errors
    ///
    /// As [`build_fixed`](Self::build_fixed), plus [`Error::Os`] with
    /// `EEXIST` if part of the range is already mapped (also on kernels before
    /// 4.17, which treat the address as a hint: a mapping placed elsewhere is
    /// unmapped again).
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::MemoryMappingBuilder;
    ///
    /// let a = MemoryMappingBuilder::new(4096).build()?;
    /// let err = MemoryMappingBuilder::new(4096).build_fixed_noreplace(a.as_ptr()).unwrap_err();
    /// assert_eq!(err.errno(), Some(mmap::Errno::EEXIST));
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn build_fixed_noreplace(self, addr: *mut u8) -> Result<MemoryMapping> {
        self.build_inner(Some((addr, false)))
    }

    fn build_inner(self, fixed: Option<(*mut u8, bool)>) -> Result<MemoryMapping> {
        const OP: &str = "mmap";
        if self.size == 0 {
            return Err(Error::ZeroSize { op: OP });
        }
        let file_huge_page = self.fd.and_then(hugetlbfs_page_size);
        let (page_size, huge_flags) = match (file_huge_page, self.hugetlb) {
            // A hugetlbfs file: the kernel maps it with its huge pages whatever
            // the flags say, so round to its page size.
            (Some(bytes), _) => (bytes, 0),
            (None, Some(h)) => {
                let bytes = h.bytes().ok_or(Error::Unsupported {
                    op: "mmap(MAP_HUGETLB)",
                })?;
                (bytes, libc::MAP_HUGETLB | h.flag_bits() as libc::c_int)
            }
            (None, None) => (pagesize(), 0),
        };
        let hugetlb = file_huge_page.is_some() || self.hugetlb.is_some();
        let map_len = round_up(self.size, page_size).ok_or(Error::SizeOverflow {
            op: OP,
            size: self.size,
            align: page_size as u64,
        })?;
        let align = match self.align {
            None => None,
            Some(a) if !a.is_power_of_two() => {
                return Err(Error::InvalidAlignment { op: OP, align: a })
            }
            Some(a) => {
                let a = usize::try_from(a).map_err(|_| Error::SizeOverflow {
                    op: OP,
                    size: self.size,
                    align: a,
                })?;
                (a > page_size).then_some(a)
            }
        };

        let mut flags = huge_flags
            | if self.shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        if self.noreserve {
            flags |= libc::MAP_NORESERVE;
        }
        if self.populate {
            flags |= libc::MAP_POPULATE;
        }
        let (fd, offset) = match self.fd {
            Some(fd) => {
                if self.offset % page_size as u64 != 0 {
                    return Err(Error::UnalignedOffset {
                        op: OP,
                        offset: self.offset,
                        align: page_size as u64,
                    });
                }
                let off =
                    libc::off_t::try_from(self.offset).map_err(|_| Error::OffsetOverflow {
                        op: OP,
                        offset: self.offset,
                    })?;
                (fd.as_raw_fd(), off)
            }
            None => {
                flags |= libc::MAP_ANONYMOUS;
                (-1, 0)
            }
        };
        let prot = self.prot.bits();

        let addr = match fixed {
            Some((addr, replace)) => {
                let want = align.unwrap_or(page_size);
                if addr as usize % want != 0 {
                    return Err(Error::UnalignedAddress {
                        op: OP,
                        addr: addr as usize,
                        align: want as u64,
                    });
                }
                let fixed_flag = if replace {
                    libc::MAP_FIXED
                } else {
                    MAP_FIXED_NOREPLACE
                };
                // SAFETY: with MAP_FIXED the caller of `build_fixed` promised to own
                // the range; MAP_FIXED_NOREPLACE never replaces an existing mapping.
                let got =
                    unsafe { raw_mmap(OP, addr, map_len, prot, flags | fixed_flag, fd, offset)? };
                if got != addr {
                    // A kernel older than 4.17 took the address as a hint.
                    // SAFETY: `got` is the fresh mapping of `map_len` bytes made just above.
                    unsafe { libc::munmap(got.cast(), map_len) };
                    return Err(Error::Os {
                        op: OP,
                        errno: Errno::EEXIST,
                        range: Some(AddrRange::new(addr as usize, map_len)),
                    });
                }
                got
            }
            None => match align {
                None => {
                    // SAFETY: no address hint and no MAP_FIXED: the kernel picks a
                    // free range, so no existing memory is affected.
                    unsafe { raw_mmap(OP, ptr::null_mut(), map_len, prot, flags, fd, offset)? }
                }
                Some(align) => map_aligned(OP, self.size, map_len, align, prot, flags, fd, offset)?,
            },
        };

        // SAFETY: `addr..addr + map_len` is the mapping just created and owned here.
        let ret = unsafe { libc::madvise(addr.cast(), map_len, libc::MADV_DONTDUMP) };
        if ret == -1 {
            let err = Error::last_os_on("madvise(MADV_DONTDUMP)", addr, map_len);
            // SAFETY: unmapping the mapping created above, which nothing else uses.
            unsafe { libc::munmap(addr.cast(), map_len) };
            return Err(err);
        }

        Ok(MemoryMapping {
            addr,
            size: if hugetlb { map_len } else { self.size },
            map_len,
            page_size,
            hugetlb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_size_is_refused() {
        assert_eq!(
            MemoryMapping::new(0).unwrap_err(),
            Error::ZeroSize { op: "mmap" }
        );
    }

    #[test]
    fn alignment_checks() {
        assert_eq!(
            MemoryMapping::new_protection(4096, Some(3), Protection::read()).unwrap_err(),
            Error::InvalidAlignment {
                op: "mmap",
                align: 3
            }
        );
        assert_eq!(
            MemoryMapping::new_protection(4096, Some(0), Protection::read()).unwrap_err(),
            Error::InvalidAlignment {
                op: "mmap",
                align: 0
            }
        );
        let size = usize::MAX - 2 * pagesize() + 1; // page aligned, huge
        assert_eq!(
            MemoryMapping::new_protection(size, Some(1 << 40), Protection::read()).unwrap_err(),
            Error::SizeOverflow {
                op: "mmap",
                size,
                align: 1 << 40
            }
        );
        // A tiny alignment is satisfied by page alignment.
        let m = MemoryMapping::new_protection(4096, Some(16), Protection::read()).unwrap();
        assert_eq!(m.as_ptr() as usize % pagesize(), 0);
    }

    #[test]
    fn rounding_overflow() {
        assert_eq!(
            MemoryMapping::new(usize::MAX).unwrap_err(),
            Error::SizeOverflow {
                op: "mmap",
                size: usize::MAX,
                align: pagesize() as u64
            }
        );
    }
}
