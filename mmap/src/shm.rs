//! [`SharedMemory`]: a memfd with seals.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::{Errno, Error, HugePageSize, Result};

const MFD_CLOEXEC: libc::c_uint = 0x1;
const MFD_ALLOW_SEALING: libc::c_uint = 0x2;
const MFD_HUGETLB: libc::c_uint = 0x4;

bitflags::bitflags! {
    /// File seals of a memfd (fcntl(2) `F_ADD_SEALS`/`F_GET_SEALS`, Linux 3.17):
    /// restrictions that, once added, can never be removed.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MemfdSeals, SharedMemory};
    ///
    /// let mut shm = SharedMemory::new("sealed", 4096)?;
    /// shm.add_seals(MemfdSeals::GROW | MemfdSeals::SHRINK)?;
    /// assert!(shm.get_seals()?.contains(MemfdSeals::GROW));
    /// assert_eq!(shm.set_size(8192).unwrap_err().errno(), Some(mmap::Errno::EPERM));
    /// # Ok::<(), mmap::Error>(())
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MemfdSeals: u32 {
        /// `F_SEAL_SEAL`: no more seals can be added.
        const SEAL = 0x0001;
        /// `F_SEAL_SHRINK`: the size cannot be reduced.
        const SHRINK = 0x0002;
        /// `F_SEAL_GROW`: the size cannot be increased.
        const GROW = 0x0004;
        /// `F_SEAL_WRITE`: the contents cannot be modified; adding it fails
        /// with `EBUSY` while a writable shared mapping exists.
        const WRITE = 0x0008;
        /// `F_SEAL_FUTURE_WRITE` (Linux 5.1): no new writable mappings or
        /// write(2) calls; existing writable mappings keep working.
        const FUTURE_WRITE = 0x0010;
        /// `F_SEAL_EXEC` (Linux 6.3): the execute permission bits cannot change.
        const EXEC = 0x0020;
    }
}

/// Anonymous shared memory: a memfd (memfd_create(2), Linux 3.17) created
/// with `MFD_CLOEXEC | MFD_ALLOW_SEALING`, optionally on hugetlbfs
/// (`MFD_HUGETLB`, Linux 4.14).
///
/// Map it with [`MemoryMapping::from_fd`](crate::MemoryMapping::from_fd) (it
/// implements [`AsFd`]), as many times as needed: every shared view maps the
/// same pages. That is how a userfaultfd MINOR-fault handler works: the
/// faulting view is registered, and the handler writes the page contents
/// through a second, unregistered view before `UFFDIO_CONTINUE`.
///
/// The memfd is closed on drop; mappings stay valid after that.
///
/// # Example
///
/// ```
/// use mmap::{MemoryMapping, SharedMemory};
///
/// let mut shm = SharedMemory::new("two-views", 4096)?;
/// shm.set_size(2 * 4096)?;
/// let a = MemoryMapping::from_fd(&shm, 2 * 4096)?;
/// let b = MemoryMapping::from_fd(&shm, 2 * 4096)?;
/// a.write_obj(0x55aa_u16, 4096)?;
/// assert_eq!(b.read_obj::<u16>(4096)?, 0x55aa);
/// # Ok::<(), mmap::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    size: u64,
}

impl SharedMemory {
    /// Creates a memfd called `name` (shown in `/proc/self/maps` as
    /// `/memfd:<name> (deleted)`) of `size` bytes, all zero.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidName`] if `name` contains a NUL byte;
    /// - [`Error::Os`] (`op: "memfd_create"`): `EINVAL` if `name` is longer
    ///   than 249 bytes, `EMFILE`/`ENFILE` without free descriptors, `EACCES`
    ///   if `vm.memfd_noexec` is 2 (Linux 6.3: executable memfds forbidden);
    /// - [`Error::Os`] (`op: "ftruncate"`) if the size cannot be set
    ///   (`EFBIG` above the file size limit).
    ///
    /// # Example
    ///
    /// ```
    /// let shm = mmap::SharedMemory::new("buf", 4096)?;
    /// assert_eq!(shm.size(), 4096);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn new(name: &str, size: u64) -> Result<SharedMemory> {
        Self::create(name, size, MFD_CLOEXEC | MFD_ALLOW_SEALING)
    }

    /// Creates a memfd on hugetlbfs with pages of `page_size`
    /// (`MFD_HUGETLB`, Linux 4.14; sealing hugetlb memfds needs Linux 4.16).
    ///
    /// `size` must be a multiple of the huge page size. Pages are taken from
    /// the reserved pool when they are first touched (or mapped without
    /// `MAP_NORESERVE`), not at creation.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new), plus [`Error::Os`]: `ENODEV` from
    /// memfd_create(2) for a huge page size the kernel has no pool (hugetlbfs
    /// mount) for, `EINVAL` from ftruncate if `size` is not a multiple of the
    /// huge page size.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{HugePageSize, MemoryMapping, SharedMemory};
    ///
    /// if HugePageSize::Size2MiB.free_pages().unwrap_or(0) > 0 {
    ///     let shm = SharedMemory::new_hugetlb("huge", 2 << 20, HugePageSize::Size2MiB)?;
    ///     let m = MemoryMapping::from_fd(&shm, 2 << 20);
    ///     // ENOMEM if other processes took the free pages meanwhile.
    ///     assert!(m.is_ok() || m.unwrap_err().errno() == Some(mmap::Errno::ENOMEM));
    /// }
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn new_hugetlb(name: &str, size: u64, page_size: HugePageSize) -> Result<SharedMemory> {
        Self::create(
            name,
            size,
            MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | page_size.flag_bits(),
        )
    }

    fn create(name: &str, size: u64, flags: libc::c_uint) -> Result<SharedMemory> {
        let cname = CString::new(name).map_err(|_| Error::InvalidName {
            op: "memfd_create",
            name: name.to_owned(),
        })?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if fd == -1 {
            return Err(Error::last_os("memfd_create"));
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut shm = SharedMemory { fd, size: 0 };
        shm.set_size(size)?;
        Ok(shm)
    }

    /// Takes ownership of an existing memfd (or any file), e.g. one received
    /// over a Unix socket, reading its size with fstat(2).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "fstat"`) with fstat's errno.
    ///
    /// # Example
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    ///
    /// let shm = mmap::SharedMemory::new("original", 8192)?;
    /// let fd: OwnedFd = shm.into();
    /// let again = mmap::SharedMemory::from_fd(fd)?;
    /// assert_eq!(again.size(), 8192);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn from_fd(fd: OwnedFd) -> Result<SharedMemory> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is writable memory for one `struct stat`, and `fd` is open.
        let ret = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
        if ret == -1 {
            return Err(Error::last_os("fstat"));
        }
        // SAFETY: fstat succeeded, so it filled in `st`.
        let st = unsafe { st.assume_init() };
        Ok(SharedMemory {
            fd,
            size: st.st_size as u64,
        })
    }

    /// The size in bytes, as last set through this value (another process
    /// sharing the memfd could have changed it since).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Resizes the memfd (ftruncate(2)). Growing adds zeros; shrinking
    /// discards data, and accessing a mapping past the new end raises `SIGBUS`.
    ///
    /// # Errors
    ///
    /// [`Error::OffsetOverflow`] if `size` does not fit in `off_t`;
    /// [`Error::Os`] (`op: "ftruncate"`): `EPERM` if a seal forbids the
    /// change ([`MemfdSeals::GROW`], [`MemfdSeals::SHRINK`]), `EINVAL` on
    /// hugetlbfs for a size that is not a multiple of the huge page size.
    ///
    /// # Example
    ///
    /// ```
    /// let mut shm = mmap::SharedMemory::new("grow", 0)?;
    /// shm.set_size(1 << 16)?;
    /// assert_eq!(shm.size(), 1 << 16);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn set_size(&mut self, size: u64) -> Result<()> {
        let len = libc::off_t::try_from(size).map_err(|_| Error::OffsetOverflow {
            op: "ftruncate",
            offset: size,
        })?;
        // SAFETY: ftruncate on a descriptor we own; it changes no memory of ours.
        let ret = unsafe { libc::ftruncate(self.fd.as_raw_fd(), len) };
        if ret == -1 {
            return Err(Error::last_os("ftruncate"));
        }
        self.size = size;
        Ok(())
    }

    /// The memfd's seals (fcntl(2) `F_GET_SEALS`, Linux 3.17).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "fcntl(F_GET_SEALS)"`): `EINVAL` if the
    /// descriptor does not support sealing.
    ///
    /// # Example
    ///
    /// ```
    /// let shm = mmap::SharedMemory::new("fresh", 0)?;
    /// assert!(shm.get_seals()?.is_empty());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn get_seals(&self) -> Result<MemfdSeals> {
        // SAFETY: F_GET_SEALS takes no argument and touches no memory of ours.
        let ret = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GET_SEALS) };
        if ret == -1 {
            return Err(Error::last_os("fcntl(F_GET_SEALS)"));
        }
        Ok(MemfdSeals::from_bits_retain(ret as u32))
    }

    /// Adds `seals` (fcntl(2) `F_ADD_SEALS`, Linux 3.17). Seals can never be
    /// removed.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "fcntl(F_ADD_SEALS)"`): `EPERM` if
    /// [`MemfdSeals::SEAL`] is set, `EBUSY` for [`MemfdSeals::WRITE`] while a
    /// writable shared mapping exists, `EINVAL` for seals the kernel does not
    /// know.
    ///
    /// # Example
    ///
    /// See [`MemfdSeals`].
    pub fn add_seals(&self, seals: MemfdSeals) -> Result<()> {
        // SAFETY: F_ADD_SEALS takes an int argument and touches no memory of ours.
        let ret = unsafe {
            libc::fcntl(
                self.fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                seals.bits() as libc::c_int,
            )
        };
        if ret == -1 {
            return Err(Error::last_os("fcntl(F_ADD_SEALS)"));
        }
        Ok(())
    }

    /// A second handle to the same memfd (`F_DUPFD_CLOEXEC`).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] (`op: "fcntl(F_DUPFD_CLOEXEC)"`): `EMFILE` without
    /// free descriptors.
    pub fn try_clone(&self) -> Result<SharedMemory> {
        let fd = self.fd.try_clone().map_err(|e| Error::Os {
            op: "fcntl(F_DUPFD_CLOEXEC)",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            range: None,
        })?;
        Ok(SharedMemory {
            fd,
            size: self.size,
        })
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SharedMemory {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<SharedMemory> for OwnedFd {
    fn from(shm: SharedMemory) -> OwnedFd {
        shm.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_with_nul_is_refused() {
        assert_eq!(
            SharedMemory::new("a\0b", 0).unwrap_err(),
            Error::InvalidName {
                op: "memfd_create",
                name: "a\0b".into()
            }
        );
    }

    #[test]
    fn too_long_name_is_einval() {
        let name = "x".repeat(250);
        let err = SharedMemory::new(&name, 0).unwrap_err();
        assert_eq!(
            err,
            Error::Os {
                op: "memfd_create",
                errno: Errno::EINVAL,
                range: None
            }
        );
    }

    #[test]
    fn size_round_trips_through_fstat() {
        let mut shm = SharedMemory::new("size", 12345).unwrap();
        assert_eq!(shm.size(), 12345);
        shm.set_size(777).unwrap();
        let again = SharedMemory::from_fd(OwnedFd::from(shm.try_clone().unwrap())).unwrap();
        assert_eq!(again.size(), 777);
    }

    #[test]
    fn huge_size_is_offset_overflow() {
        let mut shm = SharedMemory::new("big", 0).unwrap();
        assert_eq!(
            shm.set_size(u64::MAX).unwrap_err(),
            Error::OffsetOverflow {
                op: "ftruncate",
                offset: u64::MAX
            }
        );
    }
}
