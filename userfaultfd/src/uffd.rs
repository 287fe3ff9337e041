//! The `Uffd` handle: ownership of the fd, what the handshake established, and conversions.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::{FeatureFlags, IoctlFlags};

/// What the `UFFDIO_API` handshake established for one fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiInfo {
    /// Features enabled on this fd.
    pub features: FeatureFlags,
    /// Features the kernel reported as supported (empty when unknown).
    pub supported: FeatureFlags,
    /// Ioctls the kernel reported for the fd.
    pub ioctls: IoctlFlags,
    /// Range ioctls the builder required; checked at every registration.
    pub required_range_ioctls: IoctlFlags,
}

/// A userfaultfd: a file descriptor through which this process handles page faults on the
/// ranges it registers (`userfaultfd(2)`).
///
/// The fd is owned (an [`OwnedFd`]) and closed on drop. Closing it removes every registration and
/// wakes threads blocked on its faults, which then retry and get the kernel's default handling
/// (zero-fill for missing anonymous pages).
///
/// `Uffd` is `Send + Sync`: every method takes `&self`, and the kernel serialises concurrent
/// ioctls and reads; several threads may read events from one `Uffd` (each message is delivered
/// once).
///
/// Conversions: [`AsFd`], [`AsRawFd`], [`IntoRawFd`] (hands over an **open** fd, unlike the 0.9
/// crate, which closed it), [`FromRawFd`], `From<Uffd> for OwnedFd` and `From<OwnedFd> for Uffd`.
/// A `Uffd` made from a raw fd learns its enabled features from `/proc/self/fdinfo`.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    info: ApiInfo,
}

impl Uffd {
    pub(crate) fn from_parts(fd: OwnedFd, info: ApiInfo) -> Uffd {
        Uffd { fd, info }
    }

    pub(crate) fn info(&self) -> &ApiInfo {
        &self.info
    }

    /// Features enabled on this fd by its `UFFDIO_API` handshake (for a fd from a
    /// [`Fork`](crate::Event::Fork) event: the parent's; for one made from a raw fd: as
    /// `/proc/self/fdinfo` reports them, empty if unknown).
    pub fn features(&self) -> FeatureFlags {
        self.info.features
    }

    /// Every feature the kernel reported as supported during this fd's handshake (empty for a fd
    /// this crate did not create; use [`UffdBuilder::probe_features`](crate::UffdBuilder::probe_features)).
    pub fn supported_features(&self) -> FeatureFlags {
        self.info.supported
    }

    /// The ioctls `UFFDIO_API` reported for the fd (`REGISTER | UNREGISTER | API`).
    pub fn api_ioctls(&self) -> IoctlFlags {
        self.info.ioctls
    }

    /// A `Uffd` for a fd received in a [`Fork`](crate::Event::Fork) event: the child context copies
    /// the parent's features. Allocation-free (it runs while `fork` holds malloc's locks).
    pub(crate) fn forked(&self, fd: OwnedFd) -> Uffd {
        Uffd {
            fd,
            info: ApiInfo {
                required_range_ioctls: IoctlFlags::empty(),
                ..self.info
            },
        }
    }

    fn from_owned(fd: OwnedFd) -> Uffd {
        let features = fdinfo_features(fd.as_fd()).unwrap_or(FeatureFlags::empty());
        Uffd {
            fd,
            info: ApiInfo {
                features,
                supported: FeatureFlags::empty(),
                ioctls: IoctlFlags::API_IOCTLS,
                required_range_ioctls: IoctlFlags::empty(),
            },
        }
    }
}

const FDINFO_INITIALIZED: u64 = 1 << 31;

/// Reads the `API:` line of `/proc/self/fdinfo/<fd>` (`API:\taa:<features>:<ioctls>`), without
/// allocating. `None` when the fd is not a userfaultfd or the file cannot be read.
fn fdinfo_features(fd: BorrowedFd<'_>) -> Option<FeatureFlags> {
    let mut path = [0u8; 40];
    let prefix = b"/proc/self/fdinfo/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut n = fd.as_raw_fd();
    if n < 0 {
        return None;
    }
    let mut digits = [0u8; 12];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        path[prefix.len() + i] = digits[len - 1 - i];
    }
    // The buffer was zeroed, so the path is NUL-terminated.
    let mut buf = [0u8; 512];
    // SAFETY: `path` is a NUL-terminated string; open returns a new fd or -1.
    let f = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if f < 0 {
        return None;
    }
    // SAFETY: open succeeded; this OwnedFd is the only owner and closes it.
    let f = unsafe { OwnedFd::from_raw_fd(f) };
    // SAFETY: `buf` is writable for its whole length.
    let got = unsafe { crate::raw::read(f.as_fd(), buf.as_mut_ptr().cast(), buf.len()) }.ok()?;
    let text = std::str::from_utf8(&buf[..got]).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("API:"))?;
    let mut parts = line.trim().split(':');
    let _api = parts.next()?;
    let features = u64::from_str_radix(parts.next()?, 16).ok()?;
    // fdinfo shows the context's internal word, where bit 31 (`UFFD_FEATURE_INITIALIZED` in
    // fs/userfaultfd.c) marks a completed handshake; it is not a uAPI feature.
    Some(FeatureFlags::from_bits_retain(
        features & !FDINFO_INITIALIZED,
    ))
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Uffd {
    /// Gives up ownership of the fd, which stays **open**; the caller must close it.
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl FromRawFd for Uffd {
    /// Takes ownership of `fd`.
    ///
    /// # Safety
    ///
    /// `fd` must be an open file descriptor that nothing else owns (it is closed on drop). It
    /// should be a userfaultfd that has completed `UFFDIO_API`; any other fd is memory-safe but
    /// every operation then fails (typically `ENOTTY` or `EINVAL`).
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller transfers ownership of an open fd.
        Uffd::from_owned(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl From<Uffd> for OwnedFd {
    fn from(uffd: Uffd) -> OwnedFd {
        uffd.fd
    }
}

impl From<OwnedFd> for Uffd {
    /// Wraps an owned fd (e.g. one received over `SCM_RIGHTS` by a monitor process). Enabled
    /// features are read from `/proc/self/fdinfo`.
    fn from(fd: OwnedFd) -> Uffd {
        Uffd::from_owned(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UffdBuilder;

    #[test]
    fn fdinfo_reports_enabled_features() {
        let uffd = UffdBuilder::new()
            .user_mode_only(true)
            .require_features(FeatureFlags::THREAD_ID | FeatureFlags::EXACT_ADDRESS)
            .create()
            .unwrap();
        let owned: OwnedFd = uffd.into();
        let again = Uffd::from(owned);
        assert_eq!(
            again.features(),
            FeatureFlags::THREAD_ID | FeatureFlags::EXACT_ADDRESS
        );
    }

    #[test]
    fn fdinfo_of_other_files_is_none() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(fdinfo_features(f.as_fd()), None);
    }
}
