//! Registering address ranges: `UFFDIO_REGISTER` and `UFFDIO_UNREGISTER`
//! (`UFFDIO_REGISTER(2const)`, `UFFDIO_UNREGISTER(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)).

use std::os::fd::AsFd;

use libc::c_void;
use mmap::MappedRegion;
use nix::errno::Errno;
use userfaultfd_sys as sys;

use crate::error::{AddrRange, Error, Operation, Result};
use crate::{range, raw, IoctlFlags, RegisterMode, Uffd};

impl Uffd {
    /// Registers `[start, start+len)` for missing-page faults; returns the ioctls available on
    /// the range. Same as [`register_with_mode`](Self::register_with_mode) with
    /// [`RegisterMode::MISSING`]. Linux 4.3. Kernel documentation: `UFFDIO_REGISTER(2const)`,
    /// [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// Every first touch of a page in the range then waits for a handler (see the
    /// [crate example](crate#example)). Over an owned mapping,
    /// [`register_region`](Self::register_region) computes the range itself.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{mmap::MemoryMapping, IoctlFlags, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = MemoryMapping::new_private(16 * page)?;
    /// let ioctls = uffd.register(mem.as_ptr().cast(), 16 * page)?;
    /// assert!(ioctls.contains(IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE));
    /// uffd.unregister(mem.as_ptr().cast(), 16 * page)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// See [`register_with_mode`](Self::register_with_mode).
    #[doc(alias = "UFFDIO_REGISTER")]
    pub fn register(&self, start: *mut c_void, len: usize) -> Result<IoctlFlags> {
        self.register_with_mode(start, len, RegisterMode::MISSING)
    }

    /// Registers `[start, start+len)` with `mode` and returns the ioctls the kernel allows on
    /// it (`UFFDIO_REGISTER`, Linux 4.3; `WRITE_PROTECT` 5.7; `MINOR` 5.13).
    ///
    /// Registering again with the same `Uffd` adds modes (it never removes one: unregister
    /// first). The answer is coarse: the kernel advertises `MOVE` on shmem and `COPY` on
    /// MINOR-only ranges, where they then fail.
    ///
    /// If the builder required range ioctls ([`UffdBuilder::require_ioctls`](crate::UffdBuilder::require_ioctls))
    /// that the kernel does not return for this range, [`Error::UnsupportedIoctls`] is returned
    /// and the range **stays registered**: this `Uffd` may have registered it before (to add a
    /// mode now), and unregistering would release the faults waiting there to the kernel's
    /// default handling (zero pages instead of the handler's data). Unregister it yourself if
    /// it will not be used.
    ///
    /// # Why this is safe, and when it is refused
    ///
    /// Registration changes how faults are handled, never what memory holds: a fault in a
    /// registered range waits until a handler resolves it, and once this `Uffd` is closed the
    /// kernel handles it as usual. A `Uffd` with [`FeatureFlags::SIGBUS`](crate::FeatureFlags::SIGBUS)
    /// is different: every fault in its ranges raises `SIGBUS` instead of waiting, so
    /// registering, say, the untouched pages of a live `Vec` would make safe code trap. With
    /// such a `Uffd` (or one whose features are unknown) this method returns
    /// [`Error::RequiresUnsafe`]: register an owned region with
    /// [`register_region`](Self::register_region), or use
    /// [`register_unchecked`](Self::register_unchecked).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{IoctlFlags, RegisterMode, UffdBuilder};
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let page = userfaultfd::page_size();
    /// let mem = userfaultfd::mmap::MemoryMappingBuilder::new(4 * page).private().build()?;
    /// let ioctls = uffd.register_with_mode(mem.as_ptr().cast(), 4 * page, RegisterMode::MISSING)?;
    /// assert!(ioctls.contains(IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// * [`Error::InvalidArgument`]: zero length, unaligned start or length, wrap-around.
    /// * [`Error::RequiresUnsafe`]: a `Uffd` with `SIGBUS` (see above).
    /// * [`Error::UnsupportedIoctls`]: see above.
    /// * `EINVAL` ([`Error::Os`]): empty or unknown `mode`; no mapping in the range; a mapping
    ///   that cannot be registered in this mode (MINOR on anonymous memory, a regular file,
    ///   hugetlb ranges not aligned to the huge page).
    /// * `EBUSY`: part of the range is registered with another userfaultfd.
    /// * `EPERM`: a shared mapping without write permission (`VM_MAYWRITE`).
    /// * `ENOMEM`: the process is exiting.
    pub fn register_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: RegisterMode,
    ) -> Result<IoctlFlags> {
        let op = Operation::Register;
        range::check(op, start as usize, len)?;
        if self.may_sigbus() {
            return Err(Error::RequiresUnsafe {
                op,
                reason: "this Uffd has FeatureFlags::SIGBUS (or unknown features): faults in a \
                         registered range would raise SIGBUS; register an owned region \
                         (register_region) or use the unsafe register_unchecked",
            });
        }
        // Without SIGBUS, faults in the range wait for a handler or, once this fd is closed,
        // are handled by the kernel as usual: no memory can be made to trap.
        self.register_ioctl(start, len, mode)
    }

    /// [`register_with_mode`](Self::register_with_mode) without the refusal for a `Uffd` with
    /// [`FeatureFlags::SIGBUS`](crate::FeatureFlags::SIGBUS). Linux 4.3.
    ///
    /// # Safety
    ///
    /// If this `Uffd` has `SIGBUS` (or its features are unknown), every later fault in the range
    /// raises `SIGBUS` in the faulting thread until the range is resolved or unregistered. The
    /// caller must ensure that no Rust code (a reference, a `Vec`, a stack) touches a missing
    /// page of the range unless it is prepared for that signal (e.g. a `SIGBUS` handler that
    /// resolves the fault, as the `SIGBUS` feature intends). Without `SIGBUS` this is as safe as
    /// [`register_with_mode`](Self::register_with_mode).
    ///
    /// # Errors
    ///
    /// As [`register_with_mode`](Self::register_with_mode), except [`Error::RequiresUnsafe`].
    pub unsafe fn register_unchecked(
        &self,
        start: *mut c_void,
        len: usize,
        mode: RegisterMode,
    ) -> Result<IoctlFlags> {
        self.register_ioctl(start, len, mode)
    }

    /// `UFFDIO_REGISTER` and the required-ioctls check. Callers establish that the registration
    /// cannot make Rust-referenced memory trap (no `SIGBUS` feature, an owned region, or an
    /// `unsafe` caller's promise).
    fn register_ioctl(
        &self,
        start: *mut c_void,
        len: usize,
        mode: RegisterMode,
    ) -> Result<IoctlFlags> {
        let op = Operation::Register;
        range::check(op, start as usize, len)?;
        let mut arg = sys::uffdio_register {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode.bits(),
            ioctls: 0,
        };
        // SAFETY: `arg` is a live `uffdio_register` that UFFDIO_REGISTER reads and writes.
        // Registering changes how faults in the range are handled, not memory contents; the
        // callers rule out the SIGBUS case (see above).
        unsafe { raw::ioctl(self.as_fd(), sys::UFFDIO_REGISTER, &mut arg) }.map_err(|errno| {
            Error::Os {
                op,
                errno,
                range: Some(AddrRange::new(start as usize, len)),
            }
        })?;
        let ioctls = IoctlFlags::from_bits_retain(arg.ioctls);
        let missing = self.info().required_range_ioctls - ioctls;
        if !missing.is_empty() {
            return Err(Error::UnsupportedIoctls {
                op,
                missing,
                available: ioctls,
            });
        }
        Ok(ioctls)
    }

    /// Registers the whole of a mapping (e.g. a [`userfaultfd::mmap::MemoryMapping`](mmap::MemoryMapping)) with `mode`; a size
    /// that is not a multiple of the page size is rounded up (the kernel maps whole pages).
    ///
    /// Allowed even with [`FeatureFlags::SIGBUS`](crate::FeatureFlags::SIGBUS): a
    /// [`MappedRegion`] is owned memory that Rust code never references (only volatile access
    /// and system calls), so a `SIGBUS` there is the owner's choice, like `mprotect`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{RegisterMode, UffdBuilder};
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = userfaultfd::mmap::MemoryMappingBuilder::new(1 << 20).private().build()?;
    /// uffd.register_region(&mem, RegisterMode::MISSING)?;
    /// uffd.unregister_region(&mem)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`register_with_mode`](Self::register_with_mode).
    pub fn register_region<R: MappedRegion + ?Sized>(
        &self,
        region: &R,
        mode: RegisterMode,
    ) -> Result<IoctlFlags> {
        let len = whole_pages(region.size());
        // The `MappedRegion` contract: the region is owned and mapped while `region` lives, and
        // no Rust reference into it exists, so faults there (even SIGBUS) reach only code that
        // accesses it through raw pointers or volatile copies.
        self.register_ioctl(region.as_ptr().cast(), len, mode)
    }

    /// Registers `[offset, offset+len)` of a mapping with `mode`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the range does not lie inside the mapping; otherwise as
    /// [`register_with_mode`](Self::register_with_mode).
    pub fn register_region_range<R: MappedRegion + ?Sized>(
        &self,
        region: &R,
        offset: usize,
        len: usize,
        mode: RegisterMode,
    ) -> Result<IoctlFlags> {
        let start = region_range(Operation::Register, region, offset, len)?;
        // As in `register_region`: the range lies inside an owned region.
        self.register_ioctl(start, len, mode)
    }

    /// Unregisters `[start, start+len)` (`UFFDIO_UNREGISTER`, Linux 4.3): threads blocked on
    /// missing faults there are woken and get the kernel's default handling; write protection
    /// is cleared. Works even while a non-cooperative event is unread. Kernel documentation:
    /// `UFFDIO_UNREGISTER(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// # Errors
    ///
    /// * [`Error::InvalidArgument`]: zero length, unaligned, wrap-around.
    /// * `EINVAL`: no mapping in the range, or part of it belongs to another userfaultfd.
    /// * `ENOMEM`: the process is exiting.
    #[doc(alias = "UFFDIO_UNREGISTER")]
    pub fn unregister(&self, start: *mut c_void, len: usize) -> Result<()> {
        self.range_ioctl(Operation::Unregister, sys::UFFDIO_UNREGISTER, start, len)
    }

    /// Unregisters the whole of a mapping.
    ///
    /// # Errors
    ///
    /// As [`unregister`](Self::unregister).
    pub fn unregister_region<R: MappedRegion + ?Sized>(&self, region: &R) -> Result<()> {
        self.unregister(region.as_ptr().cast(), whole_pages(region.size()))
    }

    /// Wakes the threads waiting on faults in `[start, start+len)` (`UFFDIO_WAKE`, Linux 4.3),
    /// after resolving with a `DONTWAKE` mode or after [`Error::AlreadyMapped`]. Succeeds when
    /// nobody waits. Kernel documentation: `UFFDIO_WAKE(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{mmap::MemoryMapping, RegisterMode, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = MemoryMapping::new_private(8 * page)?;
    /// uffd.register_region(&mem, RegisterMode::MISSING)?;
    /// // Resolve eight pages without waking anyone, then wake the whole range once.
    /// for i in 0..8 {
    ///     uffd.zeropage_region(&mem, i * page, page, false)?;
    /// }
    /// uffd.wake(mem.as_ptr().cast(), 8 * page)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for zero length, unaligned or wrapping ranges; `EINVAL` from the
    /// kernel for ranges outside the address space.
    #[doc(alias = "UFFDIO_WAKE")]
    pub fn wake(&self, start: *mut c_void, len: usize) -> Result<()> {
        self.range_ioctl(Operation::Wake, sys::UFFDIO_WAKE, start, len)
    }

    fn range_ioctl(&self, op: Operation, req: u32, start: *mut c_void, len: usize) -> Result<()> {
        range::check(op, start as usize, len)?;
        let mut arg = sys::uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: `arg` is a live `uffdio_range`, the argument of UFFDIO_UNREGISTER and
        // UFFDIO_WAKE, which only read it. Neither changes memory contents.
        match unsafe { raw::ioctl(self.as_fd(), req, &mut arg) } {
            Ok(_) => Ok(()),
            Err(Errno::EAGAIN) => Err(Error::MappingChanging { op }),
            Err(errno) => Err(Error::Os {
                op,
                errno,
                range: Some(AddrRange::new(start as usize, len)),
            }),
        }
    }
}

/// `size` rounded up to whole base pages (a region's size need not be a multiple; its mapping
/// is). Saturates, so an absurd size still fails the range check instead of wrapping.
fn whole_pages(size: usize) -> usize {
    let mask = mmap::pagesize() - 1;
    size.checked_add(mask)
        .map_or(usize::MAX & !mask, |s| s & !mask)
}

/// The start address of `[offset, offset+len)` inside `region` (its size rounded up to whole
/// pages, which the `MappedRegion` contract says it owns), checked.
pub(crate) fn region_range<R: MappedRegion + ?Sized>(
    op: Operation,
    region: &R,
    offset: usize,
    len: usize,
) -> Result<*mut c_void> {
    match offset.checked_add(len) {
        Some(end) if end <= whole_pages(region.size()) => {
            Ok(region.as_ptr().wrapping_add(offset).cast())
        }
        _ => Err(Error::InvalidArgument {
            op,
            reason: "the range does not lie inside the mapping",
        }),
    }
}
