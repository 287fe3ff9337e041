//! Bit sets of the uAPI: features (`UFFDIO_API`), ioctls, register modes, and the mode word of
//! each range ioctl.
//!
//! Every set is open-ended: bits this crate does not name (a newer kernel's) are kept by
//! `from_bits_retain` and shown by `bits()`, so a new kernel needs no new crate release.

use bitflags::bitflags;
use userfaultfd_sys as sys;

bitflags! {
    /// `UFFD_FEATURE_*`: features requested from, and reported by, `UFFDIO_API`.
    ///
    /// Two kinds: behaviour toggles take effect only when requested (`EVENT_*`, `SIGBUS`,
    /// `THREAD_ID`, `EXACT_ADDRESS`, `WP_UNPOPULATED`, `WP_ASYNC`); capability bits only report
    /// what the kernel can do (`MISSING_*`, `MINOR_*`, `WP_HUGETLBFS_SHMEM`, `POISON`, `MOVE`,
    /// `PAGEFAULT_FLAG_WP`). See `ioctl_userfaultfd(2)` / `UFFDIO_API(2const)`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct FeatureFlags: u64 {
        /// Write-protect registration and WP faults on anonymous memory (Linux 5.7 on x86_64).
        const PAGEFAULT_FLAG_WP = sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        /// `fork(2)` hands the child's new userfaultfd to the reader in an [`Event::Fork`](crate::Event::Fork)
        /// (Linux 4.11; needs `CAP_SYS_PTRACE`).
        const EVENT_FORK = sys::UFFD_FEATURE_EVENT_FORK;
        /// `mremap(2)` produces [`Event::Remap`](crate::Event::Remap) (Linux 4.11).
        const EVENT_REMAP = sys::UFFD_FEATURE_EVENT_REMAP;
        /// `madvise(MADV_DONTNEED/MADV_REMOVE)` produces [`Event::Remove`](crate::Event::Remove) (Linux 4.11).
        const EVENT_REMOVE = sys::UFFD_FEATURE_EVENT_REMOVE;
        /// MISSING registration on hugetlbfs (Linux 4.11).
        const MISSING_HUGETLBFS = sys::UFFD_FEATURE_MISSING_HUGETLBFS;
        /// MISSING registration on shmem: tmpfs, memfd, shared anonymous (Linux 4.11).
        const MISSING_SHMEM = sys::UFFD_FEATURE_MISSING_SHMEM;
        /// `munmap(2)` produces [`Event::Unmap`](crate::Event::Unmap) (Linux 4.11).
        const EVENT_UNMAP = sys::UFFD_FEATURE_EVENT_UNMAP;
        /// No fault messages: the faulting thread gets `SIGBUS` instead (Linux 4.14).
        const SIGBUS = sys::UFFD_FEATURE_SIGBUS;
        /// Fault messages carry the faulting thread's id (Linux 4.14).
        const THREAD_ID = sys::UFFD_FEATURE_THREAD_ID;
        /// MINOR registration and `UFFDIO_CONTINUE` on hugetlbfs (Linux 5.13).
        const MINOR_HUGETLBFS = sys::UFFD_FEATURE_MINOR_HUGETLBFS;
        /// MINOR registration and `UFFDIO_CONTINUE` on shmem (Linux 5.14).
        const MINOR_SHMEM = sys::UFFD_FEATURE_MINOR_SHMEM;
        /// Fault addresses are exact, not rounded down to the page (Linux 5.18).
        const EXACT_ADDRESS = sys::UFFD_FEATURE_EXACT_ADDRESS;
        /// Write-protect on shmem and hugetlbfs (Linux 5.19).
        const WP_HUGETLBFS_SHMEM = sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        /// Write-protect also covers never-populated anonymous pages (Linux 6.4).
        const WP_UNPOPULATED = sys::UFFD_FEATURE_WP_UNPOPULATED;
        /// `UFFDIO_POISON` (Linux 6.6).
        const POISON = sys::UFFD_FEATURE_POISON;
        /// Write-protect faults are resolved by the kernel without a message; the written set is
        /// read with `PAGEMAP_SCAN` (Linux 6.7; implies `WP_UNPOPULATED`).
        const WP_ASYNC = sys::UFFD_FEATURE_WP_ASYNC;
        /// `UFFDIO_MOVE` (Linux 6.8).
        const MOVE = sys::UFFD_FEATURE_MOVE;

        // Bits of newer kernels pass through.
        const _ = !0;
    }
}

impl FeatureFlags {
    /// The Linux version that brings this feature (x86_64), e.g. `"6.8"` for [`MOVE`](Self::MOVE);
    /// `None` for a set of more or fewer than one named feature. Use it to say what a kernel
    /// lacks: [`Error::UnsupportedFeatures`](crate::Error::UnsupportedFeatures) names each
    /// missing feature with this version.
    ///
    /// ```
    /// use userfaultfd::FeatureFlags;
    /// assert_eq!(FeatureFlags::POISON.since(), Some("6.6"));
    /// assert_eq!((FeatureFlags::POISON | FeatureFlags::MOVE).since(), None);
    /// ```
    pub const fn since(self) -> Option<&'static str> {
        Some(match self.bits() {
            sys::UFFD_FEATURE_PAGEFAULT_FLAG_WP => "5.7",
            sys::UFFD_FEATURE_EVENT_FORK
            | sys::UFFD_FEATURE_EVENT_REMAP
            | sys::UFFD_FEATURE_EVENT_REMOVE
            | sys::UFFD_FEATURE_MISSING_HUGETLBFS
            | sys::UFFD_FEATURE_MISSING_SHMEM
            | sys::UFFD_FEATURE_EVENT_UNMAP => "4.11",
            sys::UFFD_FEATURE_SIGBUS | sys::UFFD_FEATURE_THREAD_ID => "4.14",
            sys::UFFD_FEATURE_MINOR_HUGETLBFS => "5.13",
            sys::UFFD_FEATURE_MINOR_SHMEM => "5.14",
            sys::UFFD_FEATURE_EXACT_ADDRESS => "5.18",
            sys::UFFD_FEATURE_WP_HUGETLBFS_SHMEM => "5.19",
            sys::UFFD_FEATURE_WP_UNPOPULATED => "6.4",
            sys::UFFD_FEATURE_POISON => "6.6",
            sys::UFFD_FEATURE_WP_ASYNC => "6.7",
            sys::UFFD_FEATURE_MOVE => "6.8",
            _ => return None,
        })
    }

    /// Each named feature of the set with the version that brings it, e.g.
    /// `"MOVE (Linux 6.8), POISON (Linux 6.6)"`; bits this crate does not name are shown as hex.
    pub fn describe_with_versions(self) -> String {
        let mut parts: Vec<String> = self
            .iter_names()
            .map(|(name, f)| match f.since() {
                Some(v) => format!("{name} (Linux {v})"),
                None => name.to_string(),
            })
            .collect();
        let unnamed = self.bits()
            & !FeatureFlags::all()
                .iter_names()
                .fold(0, |a, (_, f)| a | f.bits());
        if unnamed != 0 {
            parts.push(format!("{unnamed:#x} (unknown to this crate)"));
        }
        parts.join(", ")
    }
}

bitflags! {
    /// Ioctls available on a userfaultfd (`UFFDIO_API`'s answer) or on a registered range
    /// (`UFFDIO_REGISTER`'s answer). Bit `n` is ioctl number `_UFFDIO_*` = `n`.
    ///
    /// The kernel's per-range answer is coarse: it advertises `MOVE` on shmem and `COPY` on
    /// MINOR-only ranges, where those ioctls then fail (`ioctl_userfaultfd(2)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct IoctlFlags: u64 {
        /// `UFFDIO_REGISTER` (Linux 4.3).
        const REGISTER = 1 << sys::_UFFDIO_REGISTER;
        /// `UFFDIO_UNREGISTER` (Linux 4.3).
        const UNREGISTER = 1 << sys::_UFFDIO_UNREGISTER;
        /// `UFFDIO_WAKE` (Linux 4.3).
        const WAKE = 1 << sys::_UFFDIO_WAKE;
        /// `UFFDIO_COPY` (Linux 4.3).
        const COPY = 1 << sys::_UFFDIO_COPY;
        /// `UFFDIO_ZEROPAGE` (Linux 4.3).
        const ZEROPAGE = 1 << sys::_UFFDIO_ZEROPAGE;
        /// `UFFDIO_MOVE` (Linux 6.8).
        const MOVE = 1 << sys::_UFFDIO_MOVE;
        /// `UFFDIO_WRITEPROTECT` (Linux 5.7).
        const WRITE_PROTECT = 1 << sys::_UFFDIO_WRITEPROTECT;
        /// `UFFDIO_CONTINUE` (Linux 5.13).
        const CONTINUE = 1 << sys::_UFFDIO_CONTINUE;
        /// `UFFDIO_POISON` (Linux 6.6).
        const POISON = 1 << sys::_UFFDIO_POISON;
        /// `UFFDIO_API` (Linux 4.3).
        const API = 1 << sys::_UFFDIO_API;

        const _ = !0;
    }
}

impl IoctlFlags {
    /// The ioctls `UFFDIO_API` reports on every fd (`REGISTER | UNREGISTER | API`).
    pub const API_IOCTLS: IoctlFlags = IoctlFlags::from_bits_retain(sys::UFFD_API_IOCTLS);
}

bitflags! {
    /// `UFFDIO_REGISTER_MODE_*`: which faults a registered range reports.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct RegisterMode: u64 {
        /// Faults on missing pages (Linux 4.3).
        const MISSING = sys::UFFDIO_REGISTER_MODE_MISSING;
        /// Writes to write-protected pages (Linux 5.7).
        const WRITE_PROTECT = sys::UFFDIO_REGISTER_MODE_WP;
        /// Faults on pages that are in the page cache but not mapped (shmem, hugetlbfs; Linux 5.13).
        const MINOR = sys::UFFDIO_REGISTER_MODE_MINOR;

        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_COPY_MODE_*` (`UFFDIO_COPY(2const)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CopyMode: u64 {
        /// Do not wake the faulting threads; call [`Uffd::wake`](crate::Uffd::wake) later (Linux 4.3).
        const DONTWAKE = sys::UFFDIO_COPY_MODE_DONTWAKE;
        /// Map the copied pages write-protected; the range must be registered WRITE_PROTECT (Linux 5.7).
        const WP = sys::UFFDIO_COPY_MODE_WP;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_ZEROPAGE_MODE_*` (`UFFDIO_ZEROPAGE(2const)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ZeropageMode: u64 {
        /// Do not wake the faulting threads (Linux 4.3).
        const DONTWAKE = sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_CONTINUE_MODE_*` (`UFFDIO_CONTINUE(2const)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ContinueMode: u64 {
        /// Do not wake the faulting threads (Linux 5.13).
        const DONTWAKE = sys::UFFDIO_CONTINUE_MODE_DONTWAKE;
        /// Map the pages write-protected; the range must be registered WRITE_PROTECT (Linux 6.4).
        const WP = sys::UFFDIO_CONTINUE_MODE_WP;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_POISON_MODE_*` (`UFFDIO_POISON(2const)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct PoisonMode: u64 {
        /// Do not wake the faulting threads (Linux 6.6).
        const DONTWAKE = sys::UFFDIO_POISON_MODE_DONTWAKE;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_MOVE_MODE_*` (`UFFDIO_MOVE(2const)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MoveMode: u64 {
        /// Do not wake the faulting threads (Linux 6.8).
        const DONTWAKE = sys::UFFDIO_MOVE_MODE_DONTWAKE;
        /// Holes in the source are skipped instead of failing with `ENOENT` (Linux 6.8).
        const ALLOW_SRC_HOLES = sys::UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
        const _ = !0;
    }
}

bitflags! {
    /// `UFFDIO_WRITEPROTECT_MODE_*` (`UFFDIO_WRITEPROTECT(2const)`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct WriteProtectMode: u64 {
        /// Set write protection (clear it when absent) (Linux 5.7).
        const WP = sys::UFFDIO_WRITEPROTECT_MODE_WP;
        /// When clearing, do not wake the faulting threads (Linux 5.7; `EINVAL` together with `WP`).
        const DONTWAKE = sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        const _ = !0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_cover_bits_0_to_16() {
        let named: u64 = FeatureFlags::all()
            .iter_names()
            .fold(0, |acc, (_, f)| acc | f.bits());
        assert_eq!(named, sys::UFFD_API_FEATURES);
        assert_eq!(FeatureFlags::all().iter_names().count(), 17);
    }

    #[test]
    fn every_named_feature_has_a_version() {
        for (name, f) in FeatureFlags::all().iter_names() {
            assert!(f.since().is_some(), "{name}");
        }
        assert_eq!(
            (FeatureFlags::MOVE | FeatureFlags::WP_ASYNC | FeatureFlags::from_bits_retain(1 << 40))
                .describe_with_versions(),
            "WP_ASYNC (Linux 6.7), MOVE (Linux 6.8), 0x10000000000 (unknown to this crate)"
        );
    }

    #[test]
    fn unknown_bits_pass_through() {
        let f = FeatureFlags::from_bits_retain(1 << 17 | 1);
        assert!(f.contains(FeatureFlags::PAGEFAULT_FLAG_WP));
        assert_eq!(f.bits(), (1 << 17) | 1);
        let i = IoctlFlags::from_bits_retain(1 << 9);
        assert_eq!(i.bits(), 1 << 9);
    }

    #[test]
    fn ioctl_bits_match_the_kernel_masks() {
        let range = IoctlFlags::WAKE
            | IoctlFlags::COPY
            | IoctlFlags::ZEROPAGE
            | IoctlFlags::MOVE
            | IoctlFlags::WRITE_PROTECT
            | IoctlFlags::CONTINUE
            | IoctlFlags::POISON;
        assert_eq!(range.bits(), sys::UFFD_API_RANGE_IOCTLS);
        assert_eq!(IoctlFlags::API_IOCTLS.bits(), 0x8000_0000_0000_0003);
        assert_eq!(RegisterMode::all().bits() & 7, sys::UFFD_API_REGISTER_MODES);
    }
}
