//! Dirty tracking without faults: `PAGEMAP_SCAN` on `/proc/<pid>/pagemap` (Linux 6.7), the
//! reader of [`FeatureFlags::WP_ASYNC`](crate::FeatureFlags::WP_ASYNC) write protection.
//!
//! The flow: create a `Uffd` with `WP_ASYNC`, register the range
//! [`RegisterMode::WRITE_PROTECT`](crate::RegisterMode::WRITE_PROTECT),
//! [`write_protect`](crate::Uffd::write_protect) it; writes then proceed at full speed and mark
//! their pages written. [`PageMap::scan`] with [`PageCategories::WRITTEN`] finds them, and with
//! [`ScanFlags::WP_MATCHING`] re-protects them in the same call (get-and-clear).
//!
//! Kernel reference: `PAGEMAP_SCAN(2const)` and `Documentation/admin-guide/mm/pagemap.rst`.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bitflags::bitflags;
use userfaultfd_sys as sys;

use crate::error::{AddrRange, Error, Operation, Result};
use crate::raw;

bitflags! {
    /// `PAGE_IS_*`: the categories `PAGEMAP_SCAN` matches and reports (Linux 6.7 unless noted).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PageCategories: u64 {
        /// The mapping is registered for asynchronous write protection.
        const WPALLOWED = sys::PAGE_IS_WPALLOWED;
        /// Written since write protection was last set (the uffd-wp bit is clear).
        const WRITTEN = sys::PAGE_IS_WRITTEN;
        /// File-backed.
        const FILE = sys::PAGE_IS_FILE;
        /// Present in memory.
        const PRESENT = sys::PAGE_IS_PRESENT;
        /// Swapped out.
        const SWAPPED = sys::PAGE_IS_SWAPPED;
        /// Maps the zero page.
        const PFNZERO = sys::PAGE_IS_PFNZERO;
        /// Part of a huge page.
        const HUGE = sys::PAGE_IS_HUGE;
        /// Soft-dirty.
        const SOFT_DIRTY = sys::PAGE_IS_SOFT_DIRTY;
        /// A guard region (`MADV_GUARD_INSTALL`; Linux 6.15, not in the 6.12 headers).
        const GUARD = 1 << 8;
        const _ = !0;
    }
}

bitflags! {
    /// `PM_SCAN_*` flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ScanFlags: u64 {
        /// Write-protect the matched pages as they are reported (atomic get-and-clear).
        const WP_MATCHING = sys::PM_SCAN_WP_MATCHING;
        /// Fail (`EPERM`) on a mapping not registered for asynchronous write protection.
        const CHECK_WPASYNC = sys::PM_SCAN_CHECK_WPASYNC;
        const _ = !0;
    }
}

/// One run of pages with the same reported categories (`struct page_region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct PageRegion(sys::page_region);

impl PageRegion {
    /// First address.
    pub fn start(&self) -> usize {
        self.0.start as usize
    }
    /// End address (exclusive).
    pub fn end(&self) -> usize {
        self.0.end as usize
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        (self.0.end - self.0.start) as usize
    }
    /// Whether the region is empty (never true for regions the kernel reports).
    pub fn is_empty(&self) -> bool {
        self.0.end == self.0.start
    }
    /// The categories reported for every page of the region (masked by the return mask).
    pub fn categories(&self) -> PageCategories {
        PageCategories::from_bits_retain(self.0.categories)
    }
}

/// What to scan and what to report: the fields of `struct pm_scan_arg`.
///
/// A page matches when `(categories ^ inverted) & mask == mask` and, if `anyof` is non-empty,
/// `(categories ^ inverted) & anyof != 0`. Reported regions carry `categories & return_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanRequest {
    /// Page-aligned start address.
    pub start: usize,
    /// Page-aligned end address (exclusive).
    pub end: usize,
    /// `PM_SCAN_*`.
    pub flags: ScanFlags,
    /// Stop after this many matching pages (0 = no limit).
    pub max_pages: u64,
    /// Categories that match when clear.
    pub inverted: PageCategories,
    /// Categories that must all match.
    pub mask: PageCategories,
    /// Categories of which at least one must match (empty = no such condition).
    pub anyof: PageCategories,
    /// Categories reported in each region.
    pub return_mask: PageCategories,
}

impl ScanRequest {
    /// Pages written since they were last write-protected in `[start, start+len)`, reporting
    /// `WRITTEN`. Add [`rearm`](Self::rearm) to re-protect them in the same call.
    pub fn written(start: usize, len: usize) -> ScanRequest {
        ScanRequest {
            start,
            end: start.saturating_add(len),
            flags: ScanFlags::empty(),
            max_pages: 0,
            inverted: PageCategories::empty(),
            mask: PageCategories::WRITTEN,
            anyof: PageCategories::empty(),
            return_mask: PageCategories::WRITTEN,
        }
    }

    /// Also write-protect what is reported, and fail on memory not registered for asynchronous
    /// write protection (`PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`).
    pub fn rearm(mut self) -> ScanRequest {
        self.flags |= ScanFlags::WP_MATCHING | ScanFlags::CHECK_WPASYNC;
        self
    }
}

/// What one scan returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Regions written to the output slice.
    pub regions: usize,
    /// Where the walk stopped: `end` when the whole range was scanned, earlier when the output
    /// slice filled up or `max_pages` was reached (continue from here).
    pub walk_end: usize,
}

/// An open `/proc/<pid>/pagemap`, the file `PAGEMAP_SCAN` is issued on.
#[derive(Debug)]
pub struct PageMap {
    fd: OwnedFd,
}

const SELF_PAGEMAP: &CStr = c"/proc/self/pagemap";

impl PageMap {
    /// Opens `/proc/self/pagemap`.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] with the `open(2)` errno.
    pub fn open() -> Result<PageMap> {
        Self::open_path(SELF_PAGEMAP)
    }

    /// Opens `/proc/<pid>/pagemap` of another process (needs ptrace access to it).
    ///
    /// # Errors
    ///
    /// [`Error::Os`] with the `open(2)` errno (`ENOENT` for no such process, `EACCES`).
    pub fn open_pid(pid: i32) -> Result<PageMap> {
        let path = std::ffi::CString::new(format!("/proc/{pid}/pagemap"))
            .expect("formatted path has no NUL");
        Self::open_path(&path)
    }

    fn open_path(path: &CStr) -> Result<PageMap> {
        // SAFETY: the path is NUL-terminated; open returns a new fd or -1.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Error::last(Operation::OpenPagemap));
        }
        // SAFETY: open succeeded, so `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PageMap { fd })
    }

    /// Issues `PAGEMAP_SCAN`: fills `out` with the matching regions, merged where adjacent pages
    /// report the same categories. Allocation-free.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::{FeatureFlags, PageMap, PageRegion, RegisterMode, ScanRequest, UffdBuilder};
    /// let uffd = UffdBuilder::new().user_mode_only(true)
    ///     .require_features(FeatureFlags::WP_ASYNC).create()?;
    /// let len = 16 * 4096;
    /// let mem = userfaultfd::mmap::MemoryMappingBuilder::new(len).private().build()?;
    /// uffd.register_region(&mem, RegisterMode::WRITE_PROTECT)?;
    /// uffd.write_protect(mem.as_ptr().cast(), len)?;
    /// mem.write_obj(1u8, 3 * 4096)?; // no fault message: the kernel records the write
    ///
    /// let mut out = [PageRegion::default(); 8];
    /// let got = PageMap::open()?.scan(&ScanRequest::written(mem.as_ptr() as usize, len).rearm(), &mut out)?;
    /// assert_eq!(got.regions, 1);
    /// assert_eq!(out[0].start(), mem.as_ptr() as usize + 3 * 4096);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Os`]: `EINVAL` (unaligned range, unknown flags or categories), `EPERM`
    /// (`CHECK_WPASYNC` met memory without async WP), `EFAULT`; `ENOTTY` before Linux 6.7.
    #[doc(alias = "PAGEMAP_SCAN")]
    pub fn scan(&self, req: &ScanRequest, out: &mut [PageRegion]) -> Result<ScanOutcome> {
        let mut arg = sys::pm_scan_arg {
            size: std::mem::size_of::<sys::pm_scan_arg>() as u64,
            flags: req.flags.bits(),
            start: req.start as u64,
            end: req.end as u64,
            walk_end: 0,
            vec: out.as_mut_ptr() as u64,
            vec_len: out.len() as u64,
            max_pages: req.max_pages,
            category_inverted: req.inverted.bits(),
            category_mask: req.mask.bits(),
            category_anyof_mask: req.anyof.bits(),
            return_mask: req.return_mask.bits(),
        };
        // SAFETY: `arg` is a live `pm_scan_arg` whose `vec`/`vec_len` describe `out`, a writable
        // slice of `PageRegion` (repr(transparent) over `page_region`); the kernel writes at
        // most `vec_len` regions there and reads/writes `arg`.
        match unsafe { raw::ioctl(self.fd.as_fd(), sys::PAGEMAP_SCAN, &mut arg) } {
            Ok(n) => Ok(ScanOutcome {
                regions: n as usize,
                walk_end: arg.walk_end as usize,
            }),
            Err(errno) => Err(Error::Os {
                op: Operation::PagemapScan,
                errno,
                range: Some(AddrRange::new(req.start, req.end.saturating_sub(req.start))),
            }),
        }
    }

    /// Scans `[start, start+len)` for written pages (re-protecting them if `rearm`) until the
    /// whole range is walked, calling `f` for each region. Needs no allocation: `scratch` is the
    /// region buffer, reused for each round.
    ///
    /// # Errors
    ///
    /// As [`scan`](Self::scan); [`Error::InvalidArgument`] for an empty `scratch`.
    pub fn for_each_written(
        &self,
        start: usize,
        len: usize,
        rearm: bool,
        scratch: &mut [PageRegion],
        mut f: impl FnMut(&PageRegion),
    ) -> Result<()> {
        if scratch.is_empty() {
            return Err(Error::InvalidArgument {
                op: Operation::PagemapScan,
                reason: "the region buffer is empty",
            });
        }
        let mut req = ScanRequest::written(start, len);
        if rearm {
            req = req.rearm();
        }
        loop {
            let got = self.scan(&req, scratch)?;
            scratch[..got.regions].iter().for_each(&mut f);
            if got.walk_end >= req.end || got.walk_end <= req.start {
                return Ok(());
            }
            req.start = got.walk_end;
        }
    }
}

impl AsFd for PageMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PageMap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
