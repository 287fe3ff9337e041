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
            Ok(Map { ptr: p.cast(), len })
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
        Map { ptr: p.cast(), len }
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

    /// Gives up ownership without unmapping (the test unmapped or moved it itself).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: we own this mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
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
        assert_eq!(
            Map::try_new(ps, libc::MAP_SHARED, -1)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EBADF)
        );
    }
}
