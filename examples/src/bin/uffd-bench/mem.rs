//! Memory for the scenarios: mappings made with `mmap(2)` directly (`test_kit::mapping::Map`, so
//! the timed part issues the same system calls as the C comparison program), the byte pattern,
//! and verification.

use std::ptr;

use test_kit::mapping::Map;

/// The page size the benchmark is defined for.
pub const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

/// Private anonymous memory of `len` bytes, not populated, with `MADV_NOHUGEPAGE` (so every page
/// faults on its own).
pub fn anon(len: usize) -> Result<Map, String> {
    no_huge(Map::try_anon(len).map_err(|e| format!("mmap: {e}"))?)
}

/// A shared mapping of the whole of `fd` (a memfd of at least `len` bytes), `MADV_NOHUGEPAGE`.
pub fn shared(fd: libc::c_int, len: usize) -> Result<Map, String> {
    no_huge(Map::try_new(len, libc::MAP_SHARED, fd).map_err(|e| format!("mmap: {e}"))?)
}

fn no_huge(map: Map) -> Result<Map, String> {
    map.no_huge_pages().map_err(|e| format!("madvise: {e}"))?;
    Ok(map)
}

/// The benchmark's pattern in a mapping.
pub trait Pattern {
    /// Fills every page with [`pattern`].
    fn fill_pattern(&self);

    /// Checks every word of the first `pages` pages against `expected(page, word)`.
    fn verify(&self, pages: usize, expected: impl Fn(usize, usize) -> u64) -> Result<(), String>;
}

impl Pattern for Map {
    fn fill_pattern(&self) {
        for i in 0..self.len() / PAGE {
            let page = self.addr() + i * PAGE;
            for j in 0..WORDS {
                // SAFETY: the word lies inside this live mapping, which only the benchmark
                // accesses, with volatile accesses.
                unsafe { ptr::write_volatile((page + j * 8) as *mut u64, pattern(i, j)) };
            }
        }
    }

    fn verify(&self, pages: usize, expected: impl Fn(usize, usize) -> u64) -> Result<(), String> {
        for i in 0..pages.min(self.len() / PAGE) {
            let page = self.addr() + i * PAGE;
            for j in 0..WORDS {
                // SAFETY: the word lies inside this live mapping; reading it may fault it in.
                let got = unsafe { ptr::read_volatile((page + j * 8) as *const u64) };
                let want = expected(i, j);
                if got != want {
                    return Err(format!(
                        "page {i} word {j}: found {got:#018x}, expected {want:#018x}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The word at `word` of page `page` in every filled source: distinct per page and per word.
pub fn pattern(page: usize, word: usize) -> u64 {
    ((page as u64) << 32 | word as u64) ^ 0x9e37_79b9_7f4a_7c15
}

/// The byte a write touch stores into the first byte of a page whose first word is `word0`: its
/// own low byte, so a write touch does not change what verification expects.
pub fn low_byte(word0: u64) -> u8 {
    word0 as u8
}

/// This VM hands idle memory back to its host and first touches of reclaimed memory cost several
/// times more: populate `2 * len` bytes and free them before setting a scenario up.
pub fn warm(len: usize) -> Result<(), String> {
    let m = anon(2 * len)?;
    for i in 0..m.len() / PAGE {
        // SAFETY: the page lies inside the live mapping `m`.
        unsafe { ptr::write_volatile((m.addr() + i * PAGE) as *mut u8, 1) };
    }
    Ok(())
}

/// An anonymous memory file (`memfd_create(2)`) of `len` bytes, closed on drop.
pub struct Memfd(pub libc::c_int);

impl Memfd {
    /// Creates it.
    pub fn new(len: usize) -> Result<Memfd, String> {
        // SAFETY: the name is NUL-terminated; memfd_create returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"uffd-bench".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        let f = Memfd(fd);
        // SAFETY: `fd` is the memfd just created and owned by `f`.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(format!("ftruncate: {}", std::io::Error::last_os_error()));
        }
        Ok(f)
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value; mappings of it stay valid after close.
        unsafe { libc::close(self.0) };
    }
}

/// Pins the calling thread to `cpu` (`sched_setaffinity(2)`); a CPU this machine lacks is
/// taken modulo the number of CPUs.
pub fn pin(cpu: usize) {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: `cpu_set_t` is a plain bit array for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu % n` is below the number of CPUs, far below CPU_SETSIZE; `set` is live.
    unsafe { libc::CPU_SET(cpu % n, &mut set) };
    // SAFETY: `set` is a live, initialised cpu_set_t of the size passed; pid 0 is this thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}
