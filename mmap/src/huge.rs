//! Huge pages: hugetlb page sizes and transparent huge pages.

use std::fs;

/// Shift of the page-size field in the `MAP_HUGETLB` / `MFD_HUGETLB` flags
/// (`MAP_HUGE_SHIFT` and `MFD_HUGE_SHIFT`, both 26 in `<linux/mman.h>`,
/// `<linux/memfd.h>`).
pub(crate) const HUGE_SHIFT: u32 = 26;

/// Size of the hugetlb pages to use, for `MAP_HUGETLB` (mmap(2), Linux 2.6.32;
/// sizes other than the default since Linux 3.8) and `MFD_HUGETLB`
/// (memfd_create(2), Linux 4.14).
///
/// Pages come from the pool the administrator reserved
/// (`/proc/sys/vm/nr_hugepages` for the default size,
/// `/sys/kernel/mm/hugepages/hugepages-<N>kB/nr_hugepages` for each size).
/// Which sizes exist depends on the architecture; x86_64 has 2 MiB and
/// (with `pdpe1gb`) 1 GiB.
///
/// # Example
///
/// ```
/// use mmap::HugePageSize;
///
/// assert_eq!(HugePageSize::Size2MiB.bytes(), Some(2 << 20));
/// match HugePageSize::Size2MiB.free_pages() {
///     Some(n) => println!("{n} free 2 MiB pages"),
///     None => println!("no 2 MiB hugetlb pool on this machine"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HugePageSize {
    /// The system's default huge page size (`Hugepagesize` in `/proc/meminfo`);
    /// no size bits are passed to the kernel.
    Default,
    /// 64 KiB (arm64 with 4K pages: contiguous PTEs).
    Size64KiB,
    /// 512 KiB.
    Size512KiB,
    /// 1 MiB.
    Size1MiB,
    /// 2 MiB (x86_64, arm64 PMD).
    Size2MiB,
    /// 8 MiB.
    Size8MiB,
    /// 16 MiB (powerpc64).
    Size16MiB,
    /// 32 MiB (arm64 with 16K pages: contiguous PMDs).
    Size32MiB,
    /// 256 MiB.
    Size256MiB,
    /// 512 MiB (arm64 with 64K pages).
    Size512MiB,
    /// 1 GiB (x86_64 with `pdpe1gb`, arm64 PUD).
    Size1GiB,
    /// 2 GiB.
    Size2GiB,
    /// 16 GiB (powerpc64).
    Size16GiB,
}

impl HugePageSize {
    /// log2 of the page size, `None` for [`Default`](Self::Default).
    pub const fn shift(self) -> Option<u32> {
        Some(match self {
            HugePageSize::Default => return None,
            HugePageSize::Size64KiB => 16,
            HugePageSize::Size512KiB => 19,
            HugePageSize::Size1MiB => 20,
            HugePageSize::Size2MiB => 21,
            HugePageSize::Size8MiB => 23,
            HugePageSize::Size16MiB => 24,
            HugePageSize::Size32MiB => 25,
            HugePageSize::Size256MiB => 28,
            HugePageSize::Size512MiB => 29,
            HugePageSize::Size1GiB => 30,
            HugePageSize::Size2GiB => 31,
            HugePageSize::Size16GiB => 34,
        })
    }

    /// The page size in bytes. For [`Default`](Self::Default) it is read from
    /// `Hugepagesize` in `/proc/meminfo`, and `None` if that is missing (a
    /// kernel without hugetlbfs); `None` also for sizes that do not fit in
    /// `usize`.
    pub fn bytes(self) -> Option<usize> {
        match self.shift() {
            Some(shift) => 1usize.checked_shl(shift),
            None => default_huge_page_size(),
        }
    }

    /// The flag bits selecting this size for mmap(2) (`MAP_HUGE_*`) and
    /// memfd_create(2) (`MFD_HUGE_*`); 0 for [`Default`](Self::Default).
    pub const fn flag_bits(self) -> u32 {
        match self.shift() {
            Some(shift) => shift << HUGE_SHIFT,
            None => 0,
        }
    }

    /// How many pages of this size are free in the pool
    /// (`/sys/kernel/mm/hugepages/hugepages-<N>kB/free_hugepages`), or `None`
    /// if the kernel has no pool of this size.
    ///
    /// Other processes allocate from the same pool, so the answer can be stale
    /// by the time a mapping is made; mmap(2) then fails with `ENOMEM`.
    pub fn free_pages(self) -> Option<u64> {
        let kib = self.bytes()? / 1024;
        let path = format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages");
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

fn default_huge_page_size() -> Option<usize> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let kib: usize = line
        .trim_start_matches("Hugepagesize:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The size of a transparent huge page: the PMD size the kernel reports in
/// `/sys/kernel/mm/transparent_hugepage/hpage_pmd_size` (Linux 4.15). 2 MiB on
/// x86_64 and arm64 with 4K pages, 32 MiB with 16K pages, 512 MiB with 64K
/// pages. `None` if the kernel has no transparent huge page support.
///
/// # Example
///
/// ```
/// if let Some(size) = mmap::thp_pmd_size() {
///     assert!(size.is_power_of_two());
/// }
/// ```
pub fn thp_pmd_size() -> Option<usize> {
    fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What [`MemoryMapping::use_hugepages`](crate::MemoryMapping::use_hugepages) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HugePageAdvice {
    /// `madvise(MADV_HUGEPAGE)` was applied to the whole mapping (`hg` in the
    /// mapping's `VmFlags` in `/proc/self/smaps`).
    Applied,
    /// Not applied: the mapping does not contain a naturally aligned block of
    /// `pmd_size` bytes, so no transparent huge page could ever back it.
    TooSmall {
        /// The transparent huge page size ([`thp_pmd_size`]).
        pmd_size: usize,
    },
    /// Not applied: the kernel has no transparent huge page support
    /// ([`thp_pmd_size`] is `None`).
    Unsupported,
    /// Not applied: the mapping already uses hugetlb pages.
    Hugetlb,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_bits_match_libc() {
        assert_eq!(HugePageSize::Size2MiB.flag_bits() as libc::c_int, 21 << 26);
        assert_eq!(HugePageSize::Size1GiB.flag_bits(), 30 << 26);
        assert_eq!(HugePageSize::Default.flag_bits(), 0);
    }

    #[test]
    fn sizes() {
        assert_eq!(HugePageSize::Size64KiB.bytes(), Some(64 << 10));
        assert_eq!(HugePageSize::Size1GiB.bytes(), Some(1 << 30));
        assert_eq!(HugePageSize::Size16GiB.shift(), Some(34));
    }

    #[test]
    fn default_size_comes_from_meminfo() {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
        match meminfo.lines().find(|l| l.starts_with("Hugepagesize:")) {
            Some(_) => {
                let b = HugePageSize::Default.bytes().unwrap();
                assert!(b.is_power_of_two() && b > crate::pagesize());
            }
            None => assert_eq!(HugePageSize::Default.bytes(), None),
        }
    }

    #[test]
    fn thp_size_is_the_sysfs_value() {
        match fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") {
            Ok(s) => assert_eq!(thp_pmd_size(), Some(s.trim().parse().unwrap())),
            Err(_) => assert_eq!(thp_pmd_size(), None),
        }
    }
}
