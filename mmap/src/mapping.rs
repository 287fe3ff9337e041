//! [`MemoryMapping`] and its builder.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr;

use crate::{
    check_page_range, check_range, pagesize, round_up, thp_pmd_size, DataInit, Error,
    HugePageAdvice, HugePageSize, MappedRegion, Protection, Result, SharedMemory, VolatileSlice,
};

/// `MAP_FIXED_NOREPLACE` (Linux 4.17), the same value on every architecture
/// except alpha, which this crate does not support.
const MAP_FIXED_NOREPLACE: libc::c_int = 0x10_0000;

/// `MLOCK_ONFAULT` for mlock2(2) (`<linux/mman.h>`).
const MLOCK_ONFAULT: libc::c_uint = 1;

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
    addr: *mut u8,
    /// What `size()` reports: the size asked for, or for hugetlb that size
    /// rounded up to the huge page size.
    size: usize,
    /// The length passed to munmap: `size` rounded up to `page_size`.
    map_len: usize,
    /// The page size of the mapping: the huge page size for hugetlb.
    page_size: usize,
    hugetlb: bool,
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
///         Err(e) => assert_eq!(e.errno(), Some(libc::ENOMEM)), // the pool emptied meanwhile
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
    align: Option<u64>,
    populate: bool,
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
    /// - [`Error::Syscall`] with mmap(2)'s errno: `EBADF` (closed descriptor),
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
    /// After an [`Error::Syscall`] the range may have been *unmapped*: the
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
    /// As [`build_fixed`](Self::build_fixed), plus [`Error::Syscall`] with
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
    /// assert_eq!(err.errno(), Some(libc::EEXIST));
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
                    return Err(Error::Syscall {
                        op: OP,
                        errno: libc::EEXIST,
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
            let err = Error::last_os("madvise(MADV_DONTDUMP)");
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

/// `HUGETLBFS_MAGIC` from `<linux/magic.h>`.
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// The page size the kernel maps the file behind `fd` with (fstatfs(2)): the
/// huge page size for a file on hugetlbfs (a `MFD_HUGETLB` memfd or a file
/// under a hugetlbfs mount), the system page size for any other file.
///
/// # Errors
///
/// [`Error::Syscall`] (`op: "fstatfs"`) with fstatfs's errno, e.g. `EBADF`.
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
fn hugetlbfs_page_size(fd: BorrowedFd<'_>) -> Option<usize> {
    fd_page_size(fd).ok().filter(|&p| p > pagesize())
}

/// mmap(2), with `MAP_FAILED` turned into [`Error::Syscall`].
///
/// # Safety
///
/// If `flags` contains `MAP_FIXED`, the caller must own `addr..addr + len`.
unsafe fn raw_mmap(
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
        return Err(Error::last_os(op));
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
        return Err(Error::Syscall {
            op,
            errno: libc::EEXIST,
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
fn map_aligned(
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
            Err(e) if e.errno() == Some(libc::EEXIST) && attempt < ALIGNED_ATTEMPTS => {
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
        let err = Error::last_os("munmap");
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
    let trimmed = unsafe {
        (head == 0 || libc::munmap(reserve.cast(), head) == 0)
            && (tail == 0 || libc::munmap(end as *mut libc::c_void, tail) == 0)
    };
    mapped?;
    if !trimmed {
        let err = Error::last_os("munmap");
        // SAFETY: everything in `reserve..reserve + total` is ours (the mapping
        // made in the hole and what remains of the reservation); munmap of
        // holes is harmless.
        unsafe { libc::munmap(reserve.cast(), total) };
        return Err(err);
    }
    Ok(start as *mut u8)
}

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
    /// [`Error::ZeroSize`], [`Error::SizeOverflow`], or [`Error::Syscall`]
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
    /// offset that is not page aligned, [`Error::Syscall`] with `EBADF` for a
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
            return Err(Error::last_os(op));
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
    /// [`Error::Syscall`] (`op: "madvise(MADV_DONTFORK)"`) with madvise's errno.
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
    /// [`Error::Syscall`] (`op: "madvise(MADV_HUGEPAGE)"`) with madvise's errno.
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
    /// [`Error::Syscall`] (`op: "madvise(MADV_NOHUGEPAGE)"`) with madvise's errno.
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
    /// [`Error::Syscall`] (`op: "msync"`) with msync's errno, e.g. `EIO`.
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
    /// - [`Error::Syscall`] (`op: "madvise(MADV_REMOVE)"`): `EINVAL` for a
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
    /// - [`Error::Syscall`] (`op: "madvise(MADV_WILLNEED)"`), e.g. `EBADF` if
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
    /// - [`Error::Syscall`] (`op: "madvise(MADV_DONTNEED)"`), e.g. `EINVAL` on
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
    /// - [`Error::Syscall`] (`op: "mlock2(MLOCK_ONFAULT)"`): `ENOMEM` or
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
            return Err(Error::last_os(OP));
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
    /// - [`Error::Syscall`] (`op: "munlock"`) with munlock's errno.
    ///
    /// # Example
    ///
    /// See [`lock_on_fault`](Self::lock_on_fault).
    pub fn unlock(&self, offset: usize, count: usize) -> Result<()> {
        check_page_range("unlock", self.size, self.page_size, offset, count)?;
        // SAFETY: the range lies inside the owned mapping (checked).
        let ret = unsafe { libc::munlock(self.addr.add(offset).cast(), count) };
        if ret == -1 {
            return Err(Error::last_os("munlock"));
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
    /// - [`Error::Syscall`] (`op: "mprotect"`): `EACCES` for write access to a
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
            return Err(Error::last_os("mprotect"));
        }
        Ok(())
    }

    /// A volatile view of the whole mapping.
    fn whole(&self) -> VolatileSlice<'_> {
        // SAFETY: the mapping owns `addr..addr + size` until it is dropped, which
        // the borrow of `self` prevents while the slice lives, and this crate
        // creates no references into it.
        unsafe { VolatileSlice::new(self.addr, self.size) }
    }

    /// A bounds-checked volatile view of `count` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "get_slice"`) if the range is not inside the mapping.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// let s = m.get_slice(100, 4)?;
    /// s.copy_from(&[1, 2, 3, 4]);
    /// assert_eq!(m.read_obj::<[u8; 4]>(100)?, [1, 2, 3, 4]);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn get_slice(&self, offset: usize, count: usize) -> Result<VolatileSlice<'_>> {
        check_range("get_slice", self.size, offset, count)?;
        self.whole().sub_slice(offset, count)
    }

    /// Reads a `T` at `offset` (any alignment) with volatile loads; see
    /// [`VolatileSlice::read_obj`] for when it is a single access.
    ///
    /// The read may block (a userfaultfd-registered page waits for its
    /// handler) or fault (`SIGBUS` past the end of a mapped file).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "read_obj"`) if the object is not inside the mapping.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.write_obj([1u16, 2, 3], 4089)?;
    /// assert_eq!(m.read_obj::<[u16; 3]>(4089)?, [1, 2, 3]);
    /// assert!(m.read_obj::<u64>(4090).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn read_obj<T: DataInit>(&self, offset: usize) -> Result<T> {
        self.whole().read_obj_op("read_obj", offset)
    }

    /// Writes `val` at `offset` (any alignment) with volatile stores.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "write_obj"`) if the object is not inside the mapping.
    ///
    /// # Example
    ///
    /// See [`read_obj`](Self::read_obj).
    pub fn write_obj<T: DataInit>(&self, val: T, offset: usize) -> Result<()> {
        self.whole().write_obj_op("write_obj", val, offset)
    }

    /// Reads a naturally aligned `T` at `offset` with one volatile load of
    /// type `T` (no tearing for `T` up to the word size).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if the object is not inside the mapping,
    /// [`Error::UnalignedOffset`] if `offset` is not a multiple of `align_of::<T>()`.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.write_obj_volatile(3u64, 8)?;
    /// assert_eq!(m.read_obj_volatile::<u64>(8)?, 3);
    /// assert!(m.read_obj_volatile::<u64>(4).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn read_obj_volatile<T: DataInit>(&self, offset: usize) -> Result<T> {
        self.whole().read_obj_volatile(offset)
    }

    /// Writes a naturally aligned `T` at `offset` with one volatile store of
    /// type `T`.
    ///
    /// # Errors
    ///
    /// As [`read_obj_volatile`](Self::read_obj_volatile).
    pub fn write_obj_volatile<T: DataInit>(&self, val: T, offset: usize) -> Result<()> {
        self.whole().write_obj_volatile(val, offset)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`: all of them, or none
    /// and an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "read_slice"`) if `offset..offset +
    /// buf.len()` is not inside the mapping; nothing is copied then.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.write_slice(b"abc", 10)?;
    /// let mut buf = [0u8; 3];
    /// m.read_slice(&mut buf, 10)?;
    /// assert_eq!(&buf, b"abc");
    /// assert!(m.read_slice(&mut [0u8; 8], 4090).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn read_slice(&self, buf: &mut [u8], offset: usize) -> Result<()> {
        check_range("read_slice", self.size, offset, buf.len())?;
        self.whole().sub_slice(offset, buf.len())?.copy_to(buf);
        Ok(())
    }

    /// Copies all of `buf` to `offset`: all of it, or nothing and an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "write_slice"`) if `offset..offset +
    /// buf.len()` is not inside the mapping; nothing is copied then.
    ///
    /// # Example
    ///
    /// See [`read_slice`](Self::read_slice).
    pub fn write_slice(&self, buf: &[u8], offset: usize) -> Result<()> {
        check_range("write_slice", self.size, offset, buf.len())?;
        self.whole().sub_slice(offset, buf.len())?.copy_from(buf);
        Ok(())
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
    use super::*;

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
        assert_eq!(
            err,
            Error::Syscall {
                op: "mmap",
                errno: libc::ENOMEM
            }
        );
        let theirs = slot.borrow_mut().take().expect("the hook ran");
        assert_eq!(theirs.read_obj::<u16>(0).unwrap(), 0xfeed);
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
