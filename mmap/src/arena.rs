//! [`MemoryMappingArena`]: a reserved range holding sub-mappings.

use std::os::fd::{AsFd, BorrowedFd};

use crate::range::{check_page_range, pagesize, round_up};
use crate::raw::{fd_page_size, reserve_noreplace};
use crate::{Error, MappedRegion, MemoryMapping, MemoryMappingBuilder, Protection, Result};

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
/// **Huge pages.** A file on hugetlbfs (a
/// [`SharedMemory::new_hugetlb`](crate::SharedMemory::new_hugetlb) memfd) is
/// mapped in its huge pages: [`add_fd_offset_protection`](Self::add_fd_offset_protection)
/// rounds the size up to the huge page size and checks *that* length against
/// the arena, and the address must be a multiple of the huge page size. Such
/// a sub-mapping (or the arena's own memory, for an arena made from a hugetlb
/// [`MemoryMapping`]) can only be replaced or removed in whole huge pages:
/// a range that would split one of its huge pages is refused.
///
/// **Failed mappings.** When mmap(2) fails for a file, the kernel may already
/// have cleared the range (it does so before calling the file system, which
/// can still fail: hugetlbfs with an empty pool says `ENOMEM`), and another
/// thread could map something into that gap before the arena notices. So
/// after a failed system call the arena maps its inaccessible reservation
/// back with `MAP_FIXED_NOREPLACE`, which never replaces anything. If that
/// works the range is the arena's again, as after [`remove`](Self::remove).
/// If something is mapped there (the old sub-mappings, left in place because
/// the kernel failed before clearing them, or someone else's memory), the
/// arena cannot tell which, so it **gives the range up**: it never maps over,
/// removes or unmaps it again (operations overlapping it fail with
/// [`Error::LeakedRange`], and dropping the arena unmaps everything else),
/// and [`MappedRegion::size`] reports only the part before the first
/// given-up range, since the arena no longer vouches for what lies beyond.
/// Whatever was there stays mapped until the process exits. To make this
/// rare, [`add_fd_offset_protection`](Self::add_fd_offset_protection) first
/// maps the file once at an address of the kernel's choosing (and unmaps it
/// again), so errors about the descriptor, the offset, the protection or
/// hugetlbfs page reservations are returned with the arena unchanged; and the
/// argument checks ([`Error::InvalidRange`], [`Error::UnalignedOffset`], ...)
/// are made before any system call.
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
    /// The ranges `(offset, len)` given up after a failed mmap (see "Failed
    /// mappings"), sorted by offset and disjoint.
    leaked: Vec<(usize, usize)>,
    /// The ranges `(offset, len, page size)` mapped with huge pages, disjoint.
    huge: Vec<(usize, usize, usize)>,
}

// SAFETY: the arena owns its reserved range exclusively until `Drop` and
// exposes it only as a raw pointer; see `MemoryMapping`'s `Send`.
unsafe impl Send for MemoryMappingArena {}
// SAFETY: `&MemoryMappingArena` only reads the address, size and bookkeeping;
// every method that changes mappings takes `&mut self`.
unsafe impl Sync for MemoryMappingArena {}

#[cfg(test)]
thread_local! {
    /// Test hook: called by `place` with the range's address and length after
    /// a failed system call, before the reservation is put back, to play
    /// "another thread maps into the gap".
    static AFTER_FAILED_MAP: crate::raw::TestHook = const { std::cell::Cell::new(None) };
}

impl MemoryMappingArena {
    /// Reserves `size` bytes (rounded up to the page size) of inaccessible
    /// address space (mmap(2) `PROT_NONE`, `MAP_PRIVATE | MAP_ANONYMOUS |
    /// MAP_NORESERVE`).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::SizeOverflow`] or [`Error::Os`]
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

    /// Checks a sub-mapping of `size` bytes at `offset` made of pages of
    /// `page` bytes, and returns its length: `size` rounded up to `page`.
    fn check(&self, op: &'static str, offset: usize, size: usize, page: usize) -> Result<usize> {
        if size == 0 {
            return Err(Error::ZeroSize { op });
        }
        let rounded = round_up(size, page).ok_or(Error::InvalidRange {
            op,
            offset,
            count: size,
            size: self.size,
        })?;
        let end = check_page_range(op, self.size, pagesize(), offset, rounded)?;
        let addr = self.addr as usize + offset;
        if addr % page != 0 {
            return Err(Error::UnalignedAddress {
                op,
                addr,
                align: page as u64,
            });
        }
        if let Some(&(o, l)) = self
            .leaked
            .iter()
            .find(|&&(o, l)| o < end && offset < o + l)
        {
            return Err(Error::LeakedRange {
                op,
                offset: o,
                count: l,
            });
        }
        // Replacing or removing part of a hugetlb mapping splits it, which the
        // kernel refuses (EINVAL) unless the split falls on a huge page boundary.
        for &(o, l, p) in &self.huge {
            if let Some(&b) = [offset, end]
                .iter()
                .find(|&&b| o < b && b < o + l && (b - o) % p != 0)
            {
                return Err(Error::UnalignedOffset {
                    op,
                    offset: b as u64,
                    align: p as u64,
                });
            }
        }
        Ok(rounded)
    }

    /// Maps `builder`, whose length is `len`, at `offset`, replacing what is
    /// there; `huge` is its huge page size, if any. `offset..offset + len`
    /// must have passed [`check`](Self::check).
    fn place(
        &mut self,
        offset: usize,
        len: usize,
        huge: Option<usize>,
        builder: MemoryMappingBuilder<'_>,
    ) -> Result<()> {
        // `len` is the builder's size, already rounded up to the page size of
        // the mapping: all that MAP_FIXED covers. The new mapping is released
        // with `into_raw` below, so only the arena unmaps the range.
        // SAFETY: `offset..offset + len` was checked to lie inside the arena and
        // outside every given-up range, so the arena owns it; no references into it exist.
        let placed = unsafe { builder.build_fixed(self.addr.add(offset)) };
        match placed {
            Ok(m) => {
                let (_, map_len) = m.into_raw();
                debug_assert_eq!(map_len, len);
                self.forget_huge(offset, len);
                if let Some(page) = huge {
                    self.huge.push((offset, len, page));
                }
                Ok(())
            }
            // Argument checks: no system call was made, nothing changed.
            Err(e) if e.errno().is_none() => Err(e),
            Err(e) => {
                #[cfg(test)]
                if let Some(hook) = AFTER_FAILED_MAP.with(|h| h.take()) {
                    // SAFETY: inside the arena (checked).
                    hook(unsafe { self.addr.add(offset) }, len);
                }
                self.take_back(offset, len);
                Err(e)
            }
        }
    }

    /// After a failed mmap over `offset..offset + len`: puts the reservation
    /// back if the range is empty, or gives the range up (see "Failed mappings").
    fn take_back(&mut self, offset: usize, len: usize) {
        self.forget_huge(offset, len);
        // SAFETY: inside the arena (checked by the caller).
        let addr = unsafe { self.addr.add(offset) };
        if !reserve_noreplace(addr, len) {
            let i = self.leaked.partition_point(|&(o, _)| o < offset);
            self.leaked.insert(i, (offset, len));
        }
    }

    /// Drops `offset..offset + len` from the huge page bookkeeping.
    fn forget_huge(&mut self, offset: usize, len: usize) {
        let end = offset + len;
        let mut kept = Vec::with_capacity(self.huge.len() + 1);
        for &(o, l, p) in &self.huge {
            if o < offset {
                kept.push((o, (o + l).min(offset) - o, p));
            }
            if o + l > end {
                let start = o.max(end);
                kept.push((start, o + l - start, p));
            }
        }
        self.huge = kept;
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
    /// - [`Error::UnalignedOffset`] if `offset` is not page aligned, or if the
    ///   range would split a huge page of a hugetlb sub-mapping (`offset` is
    ///   then the start or end of the range, `align` the huge page size);
    /// - [`Error::InvalidRange`] if the range reaches past the end of the arena;
    /// - [`Error::LeakedRange`] if the range overlaps one the arena gave up;
    /// - [`Error::Os`] (`op: "mmap"`) with mmap(2)'s errno. The old
    ///   contents of the range may already be gone then; the range is
    ///   inaccessible reservation again, or given up (see "Failed mappings"
    ///   on [`MemoryMappingArena`]).
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
        let len = self.check("add_anon", offset, size, pagesize())?;
        self.place(
            offset,
            len,
            None,
            MemoryMappingBuilder::new(len)
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

    /// Maps `size` bytes (rounded up to the page size, or to the huge page
    /// size for a file on hugetlbfs) of `fd` from `fd_offset`, shared, with
    /// protection `prot`, at `offset` (`MAP_FIXED`), replacing whatever is
    /// there.
    ///
    /// The file is first mapped once at an address of the kernel's choosing
    /// and unmapped again, so that the errors mmap(2) reports for it are
    /// returned with the arena unchanged.
    ///
    /// # Errors
    ///
    /// As [`add_anon_protection`](Self::add_anon_protection) (`op: "add_fd"`),
    /// where for a file on hugetlbfs the range is the size rounded up to the
    /// huge page size, plus:
    /// - [`Error::UnalignedAddress`] if the arena's address plus `offset` is
    ///   not a multiple of the file's huge page size;
    /// - [`Error::UnalignedOffset`] (`op: "mmap"`) for an `fd_offset` that is
    ///   not a multiple of the (huge) page size;
    /// - [`Error::Os`] with `EBADF`, `EACCES`, `ENOMEM` (no free huge
    ///   pages), ... as [`MemoryMapping::from_fd_offset_protection`]; these
    ///   leave the arena unchanged. `op: "fstatfs"` if fstatfs(2) fails on a
    ///   descriptor that mmap(2) accepts.
    pub fn add_fd_offset_protection(
        &mut self,
        offset: usize,
        size: usize,
        fd: impl AsFd,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        const OP: &str = "add_fd";
        let fd = fd.as_fd();
        let page = fd_page_size(fd);
        let len = self.check(OP, offset, size, *page.as_ref().unwrap_or(&pagesize()))?;
        let builder = MemoryMappingBuilder::new(len)
            .shared()
            .from_fd(&fd, fd_offset)
            .protection(prot);
        // The trial mapping: dropped, so unmapped, at once.
        builder.build()?;
        let page = page?;
        self.place(offset, len, (page > pagesize()).then_some(page), builder)
    }

    /// Removes whatever is mapped at `offset..offset + size` (rounded up to
    /// the page size), leaving inaccessible reserved address space.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::UnalignedOffset`], [`Error::InvalidRange`],
    /// [`Error::LeakedRange`] as [`add_anon_protection`](Self::add_anon_protection)
    /// (`op: "remove"`); [`Error::Os`] (`op: "mmap"`) with mmap(2)'s
    /// errno, after which the range is reservation or given up as there.
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
        let len = self.check("remove", offset, size, pagesize())?;
        self.place(offset, len, None, Self::reservation(len))
    }
}

// SAFETY: `addr..addr + size()` is mapped (as sub-mappings or reservation) from
// construction until `Drop`, owned by the arena alone, with no references into
// it: `size()` stops before the first range the arena gave up, which is the
// only memory inside the arena that may belong to someone else.
unsafe impl MappedRegion for MemoryMappingArena {
    fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// The arena's size, or if it gave up a range after a failed mmap (see
    /// "Failed mappings" on [`MemoryMappingArena`]) the offset of the first
    /// such range.
    fn size(&self) -> usize {
        self.leaked.first().map_or(self.size, |&(o, _)| o)
    }

    /// The largest page size of the memory in [`size`](MappedRegion::size): the huge page
    /// size when a hugetlb mapping (an arena made from a hugetlb [`MemoryMapping`], or a
    /// hugetlbfs file added with [`add_fd_offset_protection`](MemoryMappingArena::add_fd_offset_protection))
    /// covers any of it, the base page size otherwise.
    ///
    /// A userfaultfd resolves faults in hugetlb memory only in whole huge pages, so a server
    /// working in units of this size can serve such an arena. An arena that mixes hugetlb and
    /// base-page sub-mappings is served in units of the huge page size as well: its base-page
    /// parts must then start and end on multiples of it (each resolve stays inside one
    /// sub-mapping).
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{MappedRegion, MemoryMappingArena};
    ///
    /// let arena = MemoryMappingArena::new(4 * mmap::pagesize())?;
    /// assert_eq!(arena.page_size(), mmap::pagesize());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    fn page_size(&self) -> usize {
        let end = self.size();
        self.huge
            .iter()
            .filter(|&&(o, _, _)| o < end)
            .map(|&(_, _, p)| p)
            .fold(pagesize(), usize::max)
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
    /// placed over it (in whole huge pages for a hugetlb mapping).
    fn from(mapping: MemoryMapping) -> MemoryMappingArena {
        let page = mapping.page_size();
        let hugetlb = mapping.is_hugetlb();
        let (addr, size) = mapping.into_raw();
        MemoryMappingArena {
            addr,
            size,
            leaked: Vec::new(),
            huge: if hugetlb {
                vec![(0, size, page)]
            } else {
                Vec::new()
            },
        }
    }
}

impl Drop for MemoryMappingArena {
    /// Unmaps the whole arena, sub-mappings included (munmap(2)), except the
    /// ranges it gave up.
    fn drop(&mut self) {
        let mut start = 0;
        for &(o, l) in self.leaked.iter().chain([&(self.size, 0)]) {
            if o > start {
                // SAFETY: the arena owns its range outside the given-up ranges;
                // the sub-mappings were released with `into_raw`, so nothing
                // else unmaps any part of it.
                unsafe { libc::munmap(self.addr.add(start).cast(), o - start) };
            }
            start = o + l;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AddrRange, Errno};

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

    const HUGE: usize = 2 << 20;

    /// An arena of `size` bytes at a multiple of `HUGE`.
    fn aligned_arena(size: usize) -> MemoryMappingArena {
        MemoryMappingArena::reservation(size)
            .align(HUGE as u64)
            .build()
            .unwrap()
            .into()
    }

    /// The permissions column of `/proc/self/maps` for the VMA containing `addr`.
    fn perms_at(addr: *const u8) -> Option<String> {
        // /proc/self/maps is read in pieces, so a line can be missed while other test threads
        // map and unmap; a mapping really absent is absent every time.
        (0..10).find_map(|_| perms_at_once(addr))
    }

    fn perms_at_once(addr: *const u8) -> Option<String> {
        let a = addr as usize;
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .find_map(|line| {
                let mut cols = line.split_whitespace();
                let (start, end) = cols.next()?.split_once('-')?;
                let (start, end) = (
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                );
                (start <= a && a < end).then(|| cols.next().unwrap_or("").to_string())
            })
    }

    /// The builder `add_fd` would use for `file`, to call `place` directly:
    /// without the trial mapping of `add_fd_offset_protection`, so that the
    /// `MAP_FIXED` itself fails.
    fn fd_builder(file: &std::fs::File, len: usize) -> MemoryMappingBuilder<'_> {
        MemoryMappingBuilder::new(len).shared().from_fd(file, 0)
    }

    fn zero_size_file(test: &str) -> Option<std::fs::File> {
        match crate::test_hugetlbfs::zero_size_hugetlbfs_file() {
            Ok(f) => Some(f),
            Err(why) => {
                eprintln!("SKIPPED {test}: no size=0 hugetlbfs mount: {why}");
                None
            }
        }
    }

    #[test]
    fn failed_map_fixed_puts_the_reservation_back() {
        let Some(file) = zero_size_file("failed_map_fixed_puts_the_reservation_back") else {
            return;
        };
        let mut a = aligned_arena(2 * HUGE);
        a.add_anon(0, HUGE).unwrap();
        let err = a.place(0, HUGE, Some(HUGE), fd_builder(&file, HUGE));
        assert_eq!(
            err.unwrap_err(),
            Error::Os {
                op: "mmap",
                errno: Errno::ENOMEM,
                range: Some(AddrRange::new(a.addr as usize, HUGE))
            }
        );
        if a.leaked.is_empty() {
            // The kernel cleared the range before hugetlbfs refused (Linux 6.18
            // does): the arena mapped its reservation back and owns the range,
            // so nobody else can map there.
            assert_eq!(perms_at(a.addr).as_deref(), Some("---p"));
            assert_eq!(MappedRegion::size(&a), 2 * HUGE);
            let other = MemoryMappingBuilder::new(HUGE).build_fixed_noreplace(a.addr);
            assert_eq!(other.unwrap_err().errno(), Some(Errno::EEXIST));
        } else {
            // Given up. Either the kernel failed before touching the old
            // sub-mapping (still there: the arena cannot tell it from someone
            // else's memory), or it cleared the range and another test thread
            // of this binary mapped into the gap before the arena could take it
            // back (seen in CI; `a_gap_someone_else_mapped_into_is_given_up`
            // plays that race on purpose). What is there now is not the arena's.
            assert_eq!(a.leaked, [(0, HUGE)]);
        }
    }

    #[test]
    fn a_gap_someone_else_mapped_into_is_given_up() {
        use std::cell::RefCell;
        use std::rc::Rc;

        let Some(file) = zero_size_file("a_gap_someone_else_mapped_into_is_given_up") else {
            return;
        };
        let ps = pagesize();
        let mut a = aligned_arena(2 * HUGE);
        a.add_anon(0, 2 * HUGE).unwrap();
        // Plays another thread whose mmap lands in the gap the failed MAP_FIXED
        // left, before the arena can react.
        let slot: Rc<RefCell<Option<MemoryMapping>>> = Rc::default();
        let hook_slot = Rc::clone(&slot);
        AFTER_FAILED_MAP.with(|h| {
            h.set(Some(Box::new(move |addr: *mut u8, len: usize| {
                assert_eq!(len, HUGE);
                let theirs = MemoryMappingBuilder::new(ps)
                    .private()
                    .build_fixed_noreplace(addr.wrapping_add(ps));
                *hook_slot.borrow_mut() = theirs.ok();
            })))
        });
        let err = a.place(0, HUGE, Some(HUGE), fd_builder(&file, HUGE));
        assert_eq!(err.unwrap_err().errno(), Some(Errno::ENOMEM));
        let Some(theirs) = slot.borrow_mut().take() else {
            eprintln!(
                "SKIPPED a_gap_someone_else_mapped_into_is_given_up: the kernel left the \
                 range mapped after the failed MAP_FIXED, so there was no gap to take"
            );
            return;
        };
        theirs.write_obj(0x1234_5678_u32, 0).unwrap();
        assert_eq!(a.leaked, [(0, HUGE)]);
        // The trait no longer vouches for the given-up range or what follows.
        assert_eq!(MappedRegion::size(&a), 0);
        // Nothing overlapping the given-up range is mapped over or removed...
        let leaked = Error::LeakedRange {
            op: "remove",
            offset: 0,
            count: HUGE,
        };
        assert_eq!(a.remove(0, 2 * HUGE).unwrap_err(), leaked);
        assert!(matches!(
            a.add_anon(HUGE - ps, ps),
            Err(Error::LeakedRange { op: "add_anon", .. })
        ));
        // ...the rest still works...
        a.add_anon(HUGE, ps).unwrap();
        a.remove(HUGE, HUGE).unwrap();
        // ...and dropping the arena leaves their mapping alone.
        drop(a);
        assert_eq!(theirs.read_obj::<u32>(0).unwrap(), 0x1234_5678);
    }

    #[test]
    fn huge_bookkeeping_splits_and_forgets() {
        let mut a = MemoryMappingArena::new(pagesize()).unwrap();
        a.huge = vec![(0, 4 * HUGE, HUGE), (6 * HUGE, HUGE, HUGE)];
        a.forget_huge(HUGE, HUGE);
        assert_eq!(
            a.huge,
            [
                (0, HUGE, HUGE),
                (2 * HUGE, 2 * HUGE, HUGE),
                (6 * HUGE, HUGE, HUGE)
            ]
        );
        a.forget_huge(3 * HUGE, 4 * HUGE);
        assert_eq!(a.huge, [(0, HUGE, HUGE), (2 * HUGE, HUGE, HUGE)]);
        a.huge.clear();
    }
}
