//! Raw mappings made with `mmap(2)` directly, for tests and programs that must issue exactly the
//! system calls they name (no `mmap` crate in between), and `MADV_NOHUGEPAGE` for them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use libc::c_void;

/// An owned raw mapping, unmapped on drop (unless [`Map::forget`]).
#[derive(Debug)]
pub struct Map {
    ptr: *mut u8,
    len: usize,
    /// Address of the guard page [`Map::truncate_with_guard`] left, or 0.
    guard: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only accessed through raw
// pointers and volatile operations, so moving or sharing the handle between threads is sound.
unsafe impl Send for Map {}
// SAFETY: as above; `&Map` only hands out addresses.
unsafe impl Sync for Map {}

impl Map {
    /// A new `PROT_READ | PROT_WRITE` mapping of `len` bytes with `flags`, of `fd` at offset 0
    /// (or anonymous with `fd` -1), placed by the kernel.
    pub fn try_new(len: usize, flags: libc::c_int, fd: libc::c_int) -> io::Result<Map> {
        // SAFETY: a fresh mapping chosen by the kernel; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(Map {
                ptr: p.cast(),
                len,
                guard: 0,
            })
        }
    }

    /// Private anonymous memory.
    pub fn anon(len: usize) -> Map {
        Self::try_anon(len).expect("mmap anon")
    }

    /// Private anonymous memory, or the error of `mmap(2)`.
    pub fn try_anon(len: usize) -> io::Result<Map> {
        Self::try_new(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )
    }

    /// A `PROT_NONE` reservation of `len` bytes (destination for mremap).
    pub fn reserve(len: usize) -> Map {
        // SAFETY: a fresh mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Map {
            ptr: p.cast(),
            len,
            guard: 0,
        }
    }

    /// `MAP_SHARED` of `fd` (shmem).
    pub fn shared_fd(fd: &OwnedFd, len: usize) -> Map {
        Self::try_new(len, libc::MAP_SHARED, fd.as_raw_fd()).expect("mmap shared fd")
    }

    /// Private anonymous 2 MiB hugetlb memory, or `None` (with the reason) when the pool is
    /// empty or hugetlb is unavailable.
    pub fn hugetlb(len: usize) -> Result<Map, String> {
        let free = free_huge_pages_2mib();
        if (free as usize) < len / (2 << 20) {
            return Err(format!(
                "only {free} free 2 MiB huge pages (run `sysctl -w vm.nr_hugepages=128`)"
            ));
        }
        Self::try_new(
            len,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_HUGETLB
                | (21 << libc::MAP_HUGE_SHIFT),
            -1,
        )
        .map_err(|e| format!("mmap(MAP_HUGETLB) failed: {e}"))
    }

    /// Start address as a `c_void` pointer (the type the uffd API takes).
    pub fn ptr(&self) -> *mut c_void {
        self.ptr.cast()
    }

    /// Start address.
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Address of byte `off` as a `c_void` pointer.
    pub fn at(&self, off: usize) -> *mut c_void {
        assert!(off <= self.len);
        self.ptr.wrapping_add(off).cast()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `mmap(2)` refuses a length of 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Volatile read of byte `off` (may fault into a userfaultfd).
    pub fn read(&self, off: usize) -> u8 {
        assert!(off < self.len);
        // SAFETY: `off` is inside the mapping, which lives as long as `self`.
        unsafe { std::ptr::read_volatile(self.ptr.add(off)) }
    }

    /// Volatile write of byte `off`.
    pub fn write(&self, off: usize, v: u8) {
        assert!(off < self.len);
        // SAFETY: `off` is inside the mapping, which lives as long as `self`.
        unsafe { std::ptr::write_volatile(self.ptr.add(off), v) }
    }

    /// Fills `[off, off+n)` with `v` (volatile writes).
    pub fn fill(&self, off: usize, n: usize, v: u8) {
        for i in off..off + n {
            self.write(i, v);
        }
    }

    /// Asserts `[off, off+n)` all hold `v`.
    pub fn assert_all(&self, off: usize, n: usize, v: u8) {
        for i in off..off + n {
            assert_eq!(self.read(i), v, "byte at offset {i:#x}");
        }
    }

    /// `madvise(advice)` over `[off, off+n)`.
    pub fn madvise(&self, off: usize, n: usize, advice: libc::c_int) {
        // SAFETY: the range is inside our mapping; the advice values used by the tests only
        // drop or mark pages.
        let r = unsafe { libc::madvise(self.at(off), n, advice) };
        assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
    }

    /// Whether the page at `off` is resident (mincore).
    pub fn resident(&self, off: usize) -> bool {
        let mut v = 0u8;
        // SAFETY: one page of our mapping; `v` receives one byte.
        let r = unsafe { libc::mincore(self.at(off), crate::page_size(), &mut v) };
        assert_eq!(r, 0, "mincore: {}", io::Error::last_os_error());
        v & 1 != 0
    }

    /// Page `i` (of the base page size) as a `c_void` pointer.
    pub fn page(&self, i: usize) -> *mut c_void {
        self.at(i * crate::page_size())
    }

    /// `MADV_NOHUGEPAGE` over the whole mapping (see [`no_huge_pages`]).
    pub fn no_huge_pages(&self) -> io::Result<()> {
        no_huge_pages(self.ptr, self.len)
    }

    /// Writes `byte(i)` into the first byte of every page `i` (volatile writes).
    pub fn fill_pages(&self, byte: impl Fn(usize) -> u8) {
        for i in 0..self.len / crate::page_size() {
            self.write(i * crate::page_size(), byte(i));
        }
    }

    /// The first byte of page `i` (a volatile read).
    pub fn page_byte(&self, i: usize) -> u8 {
        self.read(i * crate::page_size())
    }

    /// Keeps the first `pages` pages and unmaps the ones after them except the last, which stays
    /// mapped as a guard until drop. The hole is enclosed: another thread's new mapping (the
    /// test harness's thread stacks, malloc's arenas) can be placed in it only if it is no
    /// larger than the hole, instead of reusing it whatever its size, as it could an open gap
    /// at the low end of the mmap area.
    pub fn truncate_with_guard(&mut self, pages: usize) {
        let ps = crate::page_size();
        let keep = pages * ps;
        assert!(
            self.guard == 0 && keep + ps < self.len,
            "truncate_with_guard needs a page for the guard"
        );
        let guard = self.addr() + self.len - ps;
        // SAFETY: the pages between `keep` and the guard belong to this mapping and nothing
        // refers to them.
        let r = unsafe { libc::munmap(self.at(keep), guard - self.addr() - keep) };
        assert_eq!(r, 0, "munmap: {}", io::Error::last_os_error());
        self.len = keep;
        self.guard = guard;
    }

    /// Gives up ownership without unmapping (the test unmapped or moved it itself).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: we own this mapping.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
        if self.guard != 0 {
            // SAFETY: the guard page is the last page of the original mapping, ours until now.
            unsafe { libc::munmap(self.guard as *mut c_void, crate::page_size()) };
        }
    }
}

/// `madvise(MADV_NOHUGEPAGE)` on `[addr, addr+len)`: faults then arrive page by page, and
/// `UFFDIO_COPY` never meets a transparent huge page (`EEXIST`), as QEMU does for postcopy. For
/// raw `libc::mmap` regions; a `MemoryMapping` has `disable_hugepages`.
pub fn no_huge_pages(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: MADV_NOHUGEPAGE only changes the THP policy of the range; it never changes its
    // contents or mapping.
    if unsafe { libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Free 2 MiB huge pages (`/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages`; 0 when the
/// kernel has no such pool).
pub fn free_huge_pages_2mib() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_mapping_reads_writes_and_reports_residency() {
        let ps = crate::page_size();
        let m = Map::anon(2 * ps);
        assert_eq!(m.len(), 2 * ps);
        assert!(!m.resident(ps));
        m.fill(ps, 16, 7);
        m.assert_all(ps, 16, 7);
        assert!(m.resident(ps));
        assert_eq!(m.page(1), m.at(ps));
        m.no_huge_pages().unwrap();
        m.fill_pages(|i| i as u8 + 1);
        assert_eq!((m.page_byte(0), m.page_byte(1)), (1, 2));
        assert_eq!(
            Map::try_new(ps, libc::MAP_SHARED, -1)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn truncation_leaves_an_enclosed_hole() {
        let ps = crate::page_size();
        let mut m = Map::anon(4 * ps);
        m.truncate_with_guard(1);
        assert_eq!(m.len(), ps);
        let mut v = 0u8;
        // SAFETY: mincore only reads the page tables of the range; `v` receives one byte.
        let hole = unsafe { libc::mincore(m.at(ps), ps, &mut v) };
        assert_eq!(hole, -1, "the truncated pages are unmapped");
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOMEM)
        );
        // SAFETY: as above, for the guard page, which stays mapped.
        let guard = unsafe {
            libc::mincore(
                m.at(ps).cast::<u8>().wrapping_add(2 * ps).cast(),
                ps,
                &mut v,
            )
        };
        assert_eq!(guard, 0, "the guard page stays mapped");
    }
}
