//! Helpers for observing mappings through the kernel: `/proc/self/smaps` and mincore(2).
#![allow(dead_code)]

use std::fs;

pub mod hugetlbfs;

/// One VMA of `/proc/self/smaps`.
#[derive(Debug, Clone)]
pub struct Vma {
    pub start: usize,
    pub end: usize,
    /// Permissions column, e.g. `rw-s`.
    pub perms: String,
    /// Path column (may be empty), e.g. `/dev/zero (deleted)`.
    pub name: String,
    /// `VmFlags` two-letter codes.
    pub flags: Vec<String>,
    /// `Rss` in kB.
    pub rss_kb: u64,
    /// `KernelPageSize` in kB.
    pub kernel_page_kb: u64,
}

impl Vma {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

fn parse_kb(line: &str) -> u64 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// All VMAs of this process.
pub fn vmas() -> Vec<Vma> {
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let mut out: Vec<Vma> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                let mut cols = line.split_whitespace();
                let _range = cols.next();
                let perms = cols.next().unwrap().to_string();
                let name = line
                    .split_whitespace()
                    .skip(5)
                    .collect::<Vec<_>>()
                    .join(" ");
                out.push(Vma {
                    start,
                    end,
                    perms,
                    name,
                    flags: Vec::new(),
                    rss_kb: 0,
                    kernel_page_kb: 0,
                });
                continue;
            }
        }
        let vma = out.last_mut().unwrap();
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            vma.flags = rest.split_whitespace().map(str::to_string).collect();
        } else if line.starts_with("Rss:") {
            vma.rss_kb = parse_kb(line);
        } else if line.starts_with("KernelPageSize:") {
            vma.kernel_page_kb = parse_kb(line);
        }
    }
    out
}

/// The VMA containing `addr`.
pub fn vma_at(addr: *const u8) -> Vma {
    let a = addr as usize;
    vmas()
        .into_iter()
        .find(|v| v.start <= a && a < v.end)
        .unwrap_or_else(|| panic!("no VMA contains {a:#x}"))
}

/// The VMAs overlapping `addr..addr + len`, in address order.
pub fn vmas_in(addr: *const u8, len: usize) -> Vec<Vma> {
    let (a, e) = (addr as usize, addr as usize + len);
    vmas()
        .into_iter()
        .filter(|v| v.start < e && a < v.end)
        .collect()
}

/// Per page of `addr..addr + len`: resident in memory (mincore(2))?
pub fn resident(addr: *const u8, len: usize) -> Vec<bool> {
    let ps = mmap::pagesize();
    let mut vec = vec![0u8; len.div_ceil(ps)];
    // SAFETY: `vec` has one byte per page of the range; mincore writes only there.
    let ret = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(ret, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().map(|b| b & 1 == 1).collect()
}

/// Whether every page of `addr..addr + len` is mapped (mincore(2) fails with
/// ENOMEM on unmapped pages).
pub fn is_mapped(addr: *const u8, len: usize) -> bool {
    let ps = mmap::pagesize();
    let mut vec = vec![0u8; len.div_ceil(ps)];
    // SAFETY: as in `resident`.
    let ret = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if ret == 0 {
        return true;
    }
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOMEM)
    );
    false
}

/// pread(2) of `len` bytes at `offset` of `fd`.
pub fn pread(fd: &impl std::os::fd::AsRawFd, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` writable bytes.
    let n = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            offset as libc::off_t,
        )
    };
    assert_eq!(
        n,
        len as isize,
        "pread: {}",
        std::io::Error::last_os_error()
    );
    buf
}

/// pwrite(2) of `data` at `offset` of `fd`.
pub fn pwrite(fd: &impl std::os::fd::AsRawFd, offset: u64, data: &[u8]) {
    // SAFETY: `data` has `data.len()` readable bytes.
    let n = unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            offset as libc::off_t,
        )
    };
    assert_eq!(
        n,
        data.len() as isize,
        "pwrite: {}",
        std::io::Error::last_os_error()
    );
}

/// A fd number that is certainly closed: the highest number allowed by
/// RLIMIT_NOFILE, made real with F_DUPFD and then closed. The kernel hands out
/// the lowest free numbers, so other threads will not reuse it meanwhile.
pub fn closed_fd() -> std::os::fd::RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let want = (lim.rlim_cur.min(1 << 20) - 1) as libc::c_int;
    let f = std::fs::File::open("/proc/self/maps").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: F_DUPFD duplicates an open descriptor; we close the duplicate below.
    let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, want) };
    assert!(fd >= want, "F_DUPFD: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is the duplicate we just made and own.
    assert_eq!(unsafe { libc::close(fd) }, 0);
    fd
}

/// Whether `count` huge pages of 2 MiB are free; records a skip with the reason if not.
pub fn have_huge_pages(count: u64) -> bool {
    match mmap::HugePageSize::Size2MiB.free_pages() {
        Some(n) if n >= count => true,
        Some(n) => {
            test_kit::report::skip(format!(
                "needs {count} free 2 MiB huge pages, {n} free (sysctl -w vm.nr_hugepages=128)"
            ));
            false
        }
        None => {
            test_kit::report::skip("no 2 MiB hugetlb pool on this kernel (CONFIG_HUGETLBFS)");
            false
        }
    }
}

/// A byte pattern for page `i`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The `/proc/kpageflags` bits of the page mapped at `addr`, or `None` if the
/// page is not present or the process may not read page frame numbers (root only).
pub fn kpageflags(addr: *const u8) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let ps = mmap::pagesize();
    let pagemap = fs::File::open("/proc/self/pagemap").ok()?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, (addr as usize / ps * 8) as u64)
        .ok()?;
    let entry = u64::from_ne_bytes(entry);
    let pfn = entry & ((1 << 55) - 1);
    if entry >> 63 == 0 || pfn == 0 {
        return None;
    }
    let kpf = fs::File::open("/proc/kpageflags").ok()?;
    let mut flags = [0u8; 8];
    kpf.read_exact_at(&mut flags, pfn * 8).ok()?;
    Some(u64::from_ne_bytes(flags))
}

/// `KPF_DIRTY` in `/proc/kpageflags`.
pub const KPF_DIRTY: u64 = 1 << 4;

/// Asserts that `err` is [`Error::Os`](mmap::Error::Os) from the system call `op` with `errno`
/// (whatever its range), printing the whole error otherwise.
#[track_caller]
pub fn assert_os(err: mmap::Error, op: &str, errno: mmap::Errno) {
    assert!(
        matches!(&err, mmap::Error::Os { op: o, errno: e, .. } if *o == op && *e == errno),
        "expected {op} to fail with {errno}, got {err:?}"
    );
}
