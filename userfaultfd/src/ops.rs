//! Resolving faults: `UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_CONTINUE`, `UFFDIO_POISON`,
//! `UFFDIO_MOVE` and `UFFDIO_WRITEPROTECT` ([`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! and each `UFFDIO_*(2const)`).
//!
//! # One rule for partial progress
//!
//! COPY, ZEROPAGE, CONTINUE, POISON and MOVE report progress in an output field: bytes done, or
//! `-errno`. The kernel leaves that field untouched when it rejects the request early, so it is
//! pre-set to 0 here. The outcome is then:
//!
//! * everything done: `Ok(len)`;
//! * some bytes done and then a stop: [`Error::PartialProgress`] with `done`; resume at
//!   `dst + done`. The kernel reports every partial result as `EAGAIN`, whatever stopped it
//!   (e.g. a page already present at `dst + done`); the call that resumes there reports the
//!   cause with nothing done (`EEXIST` → [`Error::AlreadyMapped`]);
//! * nothing done and `EEXIST`: [`Error::AlreadyMapped`]: call [`Uffd::wake`];
//! * nothing done and `EAGAIN` (the field holds `-EAGAIN` while a fork/remap/remove/unmap event
//!   is unread): [`Error::MappingChanging`], never a byte count;
//! * anything else: [`Error::Os`] with the errno.
//!
//! The rule is applied in one place, the `outcome` module ([`range_outcome`](crate::range_outcome)).
//!
//! None of these methods allocates.
//!
//! # Safety
//!
//! `copy`, `zeropage`, `poison` and `r#move` define or remove the contents of memory at a raw
//! address, so they are `unsafe fn`: given the address of a live `Vec` they would rewrite it
//! under the program's feet, or make it raise `SIGBUS`. Their safe forms,
//! [`copy_region`](Uffd::copy_region), [`zeropage_region`](Uffd::zeropage_region) and
//! [`poison_region`](Uffd::poison_region), take an owned [`MappedRegion`] (such as a
//! [`userfaultfd::mmap::MemoryMapping`](mmap::MemoryMapping)), whose memory Rust code only reaches through volatile copies and
//! system calls, so a change of its bytes (or a trap in it) breaks no reference.
//! `r#continue`, `write_protect` and `remove_write_protection` change no contents and are safe.

use std::os::fd::AsFd;

use libc::c_void;
use mmap::MappedRegion;
use nix::errno::Errno;
use userfaultfd_sys as sys;

use crate::error::{AddrRange, Error, Operation, Result};
use crate::register::region_range;
use crate::{
    range, raw, ContinueMode, CopyMode, FeatureFlags, MoveMode, PoisonMode, Uffd, WriteProtectMode,
    ZeropageMode,
};

impl Uffd {
    /// [`Error::UnsupportedFeatures`] when the kernel is known to lack `feature` (its ioctl would
    /// fail with a bare `EINVAL`); `Ok` when it has it or when the supported set is unknown.
    fn kernel_has(&self, feature: FeatureFlags) -> Result<()> {
        let supported = self.supported_features();
        if supported.is_empty() || supported.contains(feature) {
            Ok(())
        } else {
            Err(Error::UnsupportedFeatures {
                missing: feature,
                supported,
            })
        }
    }
}

/// `{ start, len }` as the kernel's `uffdio_range`.
fn uffdio_range(start: *mut c_void, len: usize) -> sys::uffdio_range {
    sys::uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}

fn wake_mode(wake: bool, dontwake: u64) -> u64 {
    if wake {
        0
    } else {
        dontwake
    }
}

impl Uffd {
    /// Resolves missing faults by atomically copying `len` bytes from `src` into the registered
    /// range at `dst` (`UFFDIO_COPY`, Linux 4.3), then wakes the faulting threads if `wake`.
    /// Returns `len` on full success; see [`Error`] for partial progress. Kernel documentation:
    /// `UFFDIO_COPY(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// The safe form over an owned mapping is [`copy_region`](Self::copy_region).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::mmap::MemoryMapping;
    /// use userfaultfd::{Error, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = MemoryMapping::new_private(2 * page)?;
    /// uffd.register(mem.as_ptr().cast(), 2 * page)?;
    /// let src = vec![7u8; page];
    /// // Resolve the first page before anything touches it (a handler would do this for the
    /// // address of a `Pagefault` event).
    /// // SAFETY: `mem` is this program's own registered mapping; no Rust reference points into
    /// // it, so its bytes may be defined here; `src` is readable for `page` bytes.
    /// let done = unsafe { uffd.copy(src.as_ptr().cast(), mem.as_ptr().cast(), page, true)? };
    /// assert_eq!(done, page);
    /// assert_eq!(mem.read_obj::<u8>(0)?, 7);
    /// // The page is there now: a second copy changes nothing and says so.
    /// // SAFETY: as above.
    /// let again = unsafe { uffd.copy(src.as_ptr().cast(), mem.as_ptr().cast(), page, true) };
    /// assert!(matches!(again, Err(Error::AlreadyMapped { .. })));
    /// # Ok(()) }
    /// ```
    ///
    /// # Safety
    ///
    /// The pages at `dst` become visible to the whole process with `src`'s bytes. The caller must
    /// ensure that `dst..dst+len` is memory whose contents it is entitled to define (a range it
    /// registered and that no live Rust reference assumes to hold other values), and that `src`
    /// is readable for `len` bytes (the kernel returns `EFAULT` otherwise, but reading memory
    /// another thread is mutating is a data race).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyMapped`] (`EEXIST`), [`Error::PartialProgress`], [`Error::MappingChanging`],
    /// [`Error::InvalidArgument`] (zero length, unaligned, wrap-around), and [`Error::Os`]:
    /// `ENOENT` (range not registered, or crossing its end), `EFAULT` (`src` unreadable),
    /// `EINVAL` (hugetlb length not a huge-page multiple), `ESRCH` (the process exited),
    /// `ENOMEM`.
    ///
    /// The kernel only checks that `dst` is registered with *a* userfaultfd of the same process
    /// (Linux 6.18): a copy through another `Uffd` of this process into the range succeeds.
    #[doc(alias = "UFFDIO_COPY")]
    pub unsafe fn copy(
        &self,
        src: *const c_void,
        dst: *mut c_void,
        len: usize,
        wake: bool,
    ) -> Result<usize> {
        let mode = CopyMode::from_bits_retain(wake_mode(wake, sys::UFFDIO_COPY_MODE_DONTWAKE));
        // SAFETY: forwarded from the caller.
        unsafe { self.copy_with_mode(src, dst, len, mode) }
    }

    /// [`copy`](Self::copy) with an explicit mode: [`CopyMode::DONTWAKE`], [`CopyMode::WP`]
    /// (map the pages write-protected; Linux 5.7, the range must be registered WRITE_PROTECT,
    /// else `EINVAL`).
    ///
    /// # Safety
    ///
    /// As [`copy`](Self::copy).
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy).
    pub unsafe fn copy_with_mode(
        &self,
        src: *const c_void,
        dst: *mut c_void,
        len: usize,
        mode: CopyMode,
    ) -> Result<usize> {
        let mut arg = sys::uffdio_copy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: mode.bits(),
            copy: 0,
        };
        // SAFETY: a `uffdio_copy` for UFFDIO_COPY over `dst..dst+len`; the caller vouches for
        // the memory effects on `dst` and the readability of `src`.
        unsafe {
            self.resolve_ioctl(
                Operation::Copy,
                sys::UFFDIO_COPY,
                dst as usize,
                len,
                &mut arg,
            )
        }
    }

    /// Resolves missing faults by mapping zero pages over `[start, start+len)`
    /// (`UFFDIO_ZEROPAGE`, Linux 4.3); wakes if `wake`. Not available on hugetlb (`EINVAL`).
    /// Kernel documentation: `UFFDIO_ZEROPAGE(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html). The safe form
    /// over an owned mapping is [`zeropage_region`](Self::zeropage_region).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{mmap::MemoryMapping, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = MemoryMapping::new_private(4 * page)?;
    /// uffd.register(mem.as_ptr().cast(), 4 * page)?;
    /// // SAFETY: `mem` is this program's own registered mapping; no Rust reference points into it.
    /// let done = unsafe { uffd.zeropage(mem.as_ptr().cast(), 4 * page, true)? };
    /// assert_eq!(done, 4 * page);
    /// assert_eq!(mem.read_obj::<u64>(3 * page)?, 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Safety
    ///
    /// The range's contents become zero for the whole process: the caller must be entitled to
    /// define them (see [`copy`](Self::copy)).
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy); `EINVAL` on hugetlb.
    #[doc(alias = "UFFDIO_ZEROPAGE")]
    pub unsafe fn zeropage(&self, start: *mut c_void, len: usize, wake: bool) -> Result<usize> {
        let mode =
            ZeropageMode::from_bits_retain(wake_mode(wake, sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE));
        // SAFETY: forwarded from the caller.
        unsafe { self.zeropage_with_mode(start, len, mode) }
    }

    /// [`zeropage`](Self::zeropage) with an explicit mode.
    ///
    /// # Safety
    ///
    /// As [`zeropage`](Self::zeropage).
    ///
    /// # Errors
    ///
    /// As [`zeropage`](Self::zeropage).
    pub unsafe fn zeropage_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: ZeropageMode,
    ) -> Result<usize> {
        let mut arg = sys::uffdio_zeropage {
            range: uffdio_range(start, len),
            mode: mode.bits(),
            zeropage: 0,
        };
        // SAFETY: a `uffdio_zeropage` for UFFDIO_ZEROPAGE over `start..start+len`; the caller
        // vouches for the memory effect.
        unsafe {
            self.resolve_ioctl(
                Operation::Zeropage,
                sys::UFFDIO_ZEROPAGE,
                start as usize,
                len,
                &mut arg,
            )
        }
    }

    /// Resolves minor faults by mapping the pages already in the page cache over
    /// `[start, start+len)` (`UFFDIO_CONTINUE`, Linux 5.13); wakes if `wake`. Fill the pages
    /// first through a second, unregistered mapping of the same file. Kernel documentation:
    /// `UFFDIO_CONTINUE(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// The method is named `r#continue` because `continue` is a Rust keyword: `r#` is the
    /// raw-identifier prefix, written at every call (`uffd.r#continue(start, len, true)`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::mmap::{MemoryMapping, SharedMemory};
    /// use userfaultfd::{FeatureFlags, RegisterMode, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new()
    ///     .user_mode_only(true)
    ///     .require_features(FeatureFlags::MINOR_SHMEM)
    ///     .create()?;
    /// // One memfd, mapped twice: `guest` is registered MINOR, `host` fills the page cache.
    /// let shm = SharedMemory::new("guest-ram", page as u64)?;
    /// let guest = MemoryMapping::from_fd(&shm, page)?;
    /// let host = MemoryMapping::from_fd(&shm, page)?;
    /// uffd.register_region(&guest, RegisterMode::MINOR)?;
    /// host.write_obj(0xabu8, 0)?;
    /// // Map the page-cache page into `guest` (a handler does this on a MINOR fault).
    /// assert_eq!(uffd.r#continue(guest.as_ptr().cast(), page, true)?, page);
    /// assert_eq!(guest.read_obj::<u8>(0)?, 0xab);
    /// # Ok(()) }
    /// ```
    ///
    /// Safe: the bytes that appear are the file's, which is what this shared mapping shows by
    /// definition.
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy), plus `EFAULT` when a page is not in the page cache and `EINVAL`
    /// on anonymous memory.
    #[doc(alias = "UFFDIO_CONTINUE")]
    pub fn r#continue(&self, start: *mut c_void, len: usize, wake: bool) -> Result<usize> {
        let mode =
            ContinueMode::from_bits_retain(wake_mode(wake, sys::UFFDIO_CONTINUE_MODE_DONTWAKE));
        self.continue_with_mode(start, len, mode)
    }

    /// [`r#continue`](#method.continue) (the method `continue`, called with the raw-identifier
    /// prefix `r#`) with an explicit mode: [`ContinueMode::DONTWAKE`],
    /// [`ContinueMode::WP`] (Linux 6.4; the range must be registered WRITE_PROTECT).
    ///
    /// # Errors
    ///
    /// As [`r#continue`](#method.continue).
    pub fn continue_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: ContinueMode,
    ) -> Result<usize> {
        let mut arg = sys::uffdio_continue {
            range: uffdio_range(start, len),
            mode: mode.bits(),
            mapped: 0,
        };
        // SAFETY: a `uffdio_continue` for UFFDIO_CONTINUE over `start..start+len`; CONTINUE maps
        // existing page-cache pages, whose contents the shared mapping already exposes.
        unsafe {
            self.resolve_ioctl(
                Operation::Continue,
                sys::UFFDIO_CONTINUE,
                start as usize,
                len,
                &mut arg,
            )
        }
    }

    /// Resolves missing faults by marking `[start, start+len)` poisoned (`UFFDIO_POISON`,
    /// Linux 6.6): any later access raises `SIGBUS`. Used to forward memory errors found at the
    /// source of a migration. Wakes if `wake` (the woken threads then get `SIGBUS`). The safe
    /// form over an owned region is [`poison_region`](Self::poison_region). Kernel
    /// documentation: `UFFDIO_POISON(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// # Safety
    ///
    /// Every later access to the range raises `SIGBUS` (until it is unmapped or its pages
    /// dropped), even after this `Uffd` is closed. The caller must ensure that no Rust code
    /// reaches the range through a reference or an owning value (a `Vec`, a stack, a `static`)
    /// that assumes it readable: only code prepared for the signal may touch it.
    ///
    /// A safe call no longer compiles (in the 0.9 crate there was no `poison`):
    ///
    /// ```compile_fail
    /// # fn f(uffd: &userfaultfd::Uffd, v: &mut Vec<u8>) {
    /// let _ = uffd.poison(v.as_mut_ptr().cast(), 4096, true);
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy); poison never replaces a present page (`EEXIST`).
    /// [`Error::UnsupportedFeatures`] naming `POISON (Linux 6.6)` when the kernel lacks it.
    #[doc(alias = "UFFDIO_POISON")]
    pub unsafe fn poison(&self, start: *mut c_void, len: usize, wake: bool) -> Result<usize> {
        let mode = PoisonMode::from_bits_retain(wake_mode(wake, sys::UFFDIO_POISON_MODE_DONTWAKE));
        // SAFETY: forwarded from the caller.
        unsafe { self.poison_with_mode(start, len, mode) }
    }

    /// [`poison`](Self::poison) with an explicit mode.
    ///
    /// # Safety
    ///
    /// As [`poison`](Self::poison).
    ///
    /// # Errors
    ///
    /// As [`poison`](Self::poison).
    pub unsafe fn poison_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: PoisonMode,
    ) -> Result<usize> {
        range::check(Operation::Poison, start as usize, len)?;
        self.kernel_has(FeatureFlags::POISON)?;
        let mut arg = sys::uffdio_poison {
            range: uffdio_range(start, len),
            mode: mode.bits(),
            updated: 0,
        };
        // SAFETY: a `uffdio_poison` for UFFDIO_POISON over `start..start+len`. Poison only
        // affects missing pages, which then raise SIGBUS on access; the caller vouches that no
        // Rust code relies on them.
        unsafe {
            self.resolve_ioctl(
                Operation::Poison,
                sys::UFFDIO_POISON,
                start as usize,
                len,
                &mut arg,
            )
        }
    }

    /// Resolves missing faults by moving the anonymous pages at `src` to `dst` without copying
    /// (`UFFDIO_MOVE`, Linux 6.8); `src` becomes a hole. Wakes if `wake`.
    ///
    /// Both ranges must be private anonymous memory of the process that created this `Uffd`,
    /// with `dst` registered; `src` pages must be exclusive to this process (use `MADV_DONTFORK`
    /// on `src` if the process forks). The `Uffd` needs [`FeatureFlags::MOVE`](crate::FeatureFlags::MOVE)
    /// ([`Error::UnsupportedFeatures`] naming `MOVE (Linux 6.8)` on a kernel without it;
    /// `EINVAL` from a kernel that has it but this fd did not enable it). Kernel documentation: `UFFDIO_MOVE(2const)`, [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// The method is named `r#move` because `move` is a Rust keyword: `r#` is the
    /// raw-identifier prefix, written at every call (`uffd.r#move(src, dst, len, true)`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{mmap::MemoryMapping, FeatureFlags, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new()
    ///     .user_mode_only(true)
    ///     .require_features(FeatureFlags::MOVE)
    ///     .create()?;
    /// let staging = MemoryMapping::new_private(page)?; // not registered
    /// staging.write_obj(42u32, 0)?;
    /// let guest = MemoryMapping::new_private(page)?;
    /// uffd.register(guest.as_ptr().cast(), page)?;
    /// // SAFETY: both are this program's own mappings, reached only through volatile copies:
    /// // `guest`'s page may be defined and `staging`'s removed.
    /// let moved = unsafe { uffd.r#move(staging.as_ptr().cast(), guest.as_ptr().cast(), page, true)? };
    /// assert_eq!(moved, page);
    /// assert_eq!(guest.read_obj::<u32>(0)?, 42);
    /// # Ok(()) }
    /// ```
    ///
    /// # Safety
    ///
    /// `dst`'s contents become `src`'s and `src`'s pages disappear (later reads there see zeros
    /// or fault): the caller must be entitled to define both ranges' contents and no live Rust
    /// reference may point into either.
    ///
    /// # Errors
    ///
    /// As [`copy`](Self::copy), plus `ENOENT` for a hole in `src` (unless
    /// [`MoveMode::ALLOW_SRC_HOLES`]), `EBUSY` for a shared or pinned source page, `EINVAL` for
    /// non-anonymous, hugetlb, or cross-process ranges; `EAGAIN` with no progress can also mean
    /// the page tables changed under the move: retry.
    #[doc(alias = "UFFDIO_MOVE")]
    pub unsafe fn r#move(
        &self,
        src: *mut c_void,
        dst: *mut c_void,
        len: usize,
        wake: bool,
    ) -> Result<usize> {
        let mode = MoveMode::from_bits_retain(wake_mode(wake, sys::UFFDIO_MOVE_MODE_DONTWAKE));
        // SAFETY: forwarded from the caller.
        unsafe { self.move_with_mode(src, dst, len, mode) }
    }

    /// [`r#move`](#method.move) (the method `move`, called with the raw-identifier prefix `r#`)
    /// with an explicit mode: [`MoveMode::DONTWAKE`],
    /// [`MoveMode::ALLOW_SRC_HOLES`].
    ///
    /// # Safety
    ///
    /// As [`r#move`](#method.move).
    ///
    /// # Errors
    ///
    /// As [`r#move`](#method.move).
    pub unsafe fn move_with_mode(
        &self,
        src: *mut c_void,
        dst: *mut c_void,
        len: usize,
        mode: MoveMode,
    ) -> Result<usize> {
        let op = Operation::Move;
        range::check(op, dst as usize, len)?;
        range::check(op, src as usize, len)?;
        self.kernel_has(FeatureFlags::MOVE)?;
        let mut arg = sys::uffdio_move {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: mode.bits(),
            move_: 0,
        };
        // SAFETY: a `uffdio_move` for UFFDIO_MOVE into `dst..dst+len`; the caller vouches for
        // both ranges.
        unsafe {
            self.resolve_ioctl(
                Operation::Move,
                sys::UFFDIO_MOVE,
                dst as usize,
                len,
                &mut arg,
            )
        }
    }

    /// The safe form of [`copy`](Self::copy) over an owned region: resolves missing faults in
    /// `[offset, offset + src.len())` of `region` with the bytes of `src` (`UFFDIO_COPY`,
    /// Linux 4.3) and wakes the faulting threads if `wake`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::UffdBuilder;
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = userfaultfd::mmap::MemoryMapping::new_private(2 * page)?;
    /// uffd.register_region(&mem, userfaultfd::RegisterMode::MISSING)?;
    /// // Populate the second page before anyone touches it.
    /// assert_eq!(uffd.copy_region(&mem, page, &vec![7u8; page], true)?, page);
    /// assert_eq!(mem.read_obj::<u8>(page)?, 7);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the range is not inside the region (or is empty or
    /// unaligned); otherwise as [`copy`](Self::copy).
    pub fn copy_region<R: MappedRegion + ?Sized>(
        &self,
        region: &R,
        offset: usize,
        src: &[u8],
        wake: bool,
    ) -> Result<usize> {
        let dst = region_range(Operation::Copy, region, offset, src.len())?;
        // SAFETY: `dst` lies inside an owned region that no Rust reference points into (the
        // `MappedRegion` contract), so its bytes may change; `src` is readable for its length.
        unsafe { self.copy(src.as_ptr().cast(), dst, src.len(), wake) }
    }

    /// The safe form of [`zeropage`](Self::zeropage) over an owned region: maps zero pages over
    /// the missing pages of `[offset, offset + len)` of `region` (`UFFDIO_ZEROPAGE`, Linux 4.3).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the range is not inside the region; otherwise as
    /// [`zeropage`](Self::zeropage).
    pub fn zeropage_region<R: MappedRegion + ?Sized>(
        &self,
        region: &R,
        offset: usize,
        len: usize,
        wake: bool,
    ) -> Result<usize> {
        let start = region_range(Operation::Zeropage, region, offset, len)?;
        // SAFETY: as in `copy_region`: the range lies inside an owned region.
        unsafe { self.zeropage(start, len, wake) }
    }

    /// The safe form of [`poison`](Self::poison) over an owned region: marks the missing pages
    /// of `[offset, offset + len)` of `region` poisoned (`UFFDIO_POISON`, Linux 6.6), so that
    /// reading them (e.g. `region.read_obj`) raises `SIGBUS`, as a hardware memory error would.
    /// Safe because no Rust reference points into a [`MappedRegion`]: a trap there is the
    /// owner's choice, as with `mprotect`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the range is not inside the region; otherwise as
    /// [`poison`](Self::poison).
    pub fn poison_region<R: MappedRegion + ?Sized>(
        &self,
        region: &R,
        offset: usize,
        len: usize,
        wake: bool,
    ) -> Result<usize> {
        let start = region_range(Operation::Poison, region, offset, len)?;
        // SAFETY: the range lies inside an owned region that Rust code reaches only through
        // raw pointers and volatile copies, never references.
        unsafe { self.poison(start, len, wake) }
    }

    /// Write-protects `[start, start+len)` (`UFFDIO_WRITEPROTECT` with `MODE_WP`, Linux 5.7).
    /// The range must be registered [`RegisterMode::WRITE_PROTECT`](crate::RegisterMode::WRITE_PROTECT).
    /// Writes then fault with [`FaultKind::WriteProtected`](crate::FaultKind::WriteProtected), or,
    /// with [`FeatureFlags::WP_ASYNC`](crate::FeatureFlags::WP_ASYNC), are recorded for
    /// `PAGEMAP_SCAN` and proceed. Kernel documentation: `UFFDIO_WRITEPROTECT(2const)`,
    /// [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{mmap::MemoryMapping, RegisterMode, UffdBuilder};
    ///
    /// let page = userfaultfd::page_size();
    /// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
    /// let mem = MemoryMapping::new_private(page)?;
    /// mem.write_obj(1u8, 0)?; // present before it is protected
    /// uffd.register_region(&mem, RegisterMode::WRITE_PROTECT)?;
    /// uffd.write_protect(mem.as_ptr().cast(), page)?;
    /// // A write now waits for a handler (an `Event::Pagefault` of kind `WriteProtected`),
    /// // which lets it proceed with `remove_write_protection`; reads go ahead.
    /// assert_eq!(mem.read_obj::<u8>(0)?, 1);
    /// uffd.remove_write_protection(mem.as_ptr().cast(), page, true)?;
    /// mem.write_obj(2u8, 0)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`], [`Error::MappingChanging`] (`EAGAIN`), and [`Error::Os`]:
    /// `ENOENT` (not registered WRITE_PROTECT), `EINVAL` (hugetlb range not huge-page aligned).
    #[doc(alias = "UFFDIO_WRITEPROTECT")]
    pub fn write_protect(&self, start: *mut c_void, len: usize) -> Result<()> {
        self.write_protect_with_mode(start, len, WriteProtectMode::WP)
    }

    /// Removes write protection from `[start, start+len)` and, if `wake`, wakes the threads
    /// waiting on its write-protect faults (`UFFDIO_WRITEPROTECT`, Linux 5.7).
    ///
    /// # Errors
    ///
    /// As [`write_protect`](Self::write_protect).
    pub fn remove_write_protection(
        &self,
        start: *mut c_void,
        len: usize,
        wake: bool,
    ) -> Result<()> {
        let mode = WriteProtectMode::from_bits_retain(wake_mode(
            wake,
            sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
        ));
        self.write_protect_with_mode(start, len, mode)
    }

    /// `UFFDIO_WRITEPROTECT` with an explicit mode (`WP | DONTWAKE` together is `EINVAL`).
    ///
    /// # Errors
    ///
    /// As [`write_protect`](Self::write_protect).
    pub fn write_protect_with_mode(
        &self,
        start: *mut c_void,
        len: usize,
        mode: WriteProtectMode,
    ) -> Result<()> {
        let op = Operation::WriteProtect;
        range::check(op, start as usize, len)?;
        let mut arg = sys::uffdio_writeprotect {
            range: sys::uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode.bits(),
        };
        // SAFETY: `arg` is a live `uffdio_writeprotect`; changing protection does not change
        // memory contents.
        match unsafe { raw::ioctl(self.as_fd(), sys::UFFDIO_WRITEPROTECT, &mut arg) } {
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
