//! The `Uffd` handle: ownership of the fd, what the handshake established, and conversions.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
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
    /// Whether `features` is known (false for a fd whose fdinfo could not be read).
    pub features_known: bool,
}

/// A userfaultfd: a file descriptor through which this process handles page faults on the
/// ranges it registers ([`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)).
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
/// crate, which closed it), `From<Uffd> for OwnedFd`, `TryFrom<OwnedFd> for Uffd` (checks that
/// the fd is a userfaultfd) and `unsafe` [`FromRawFd`]. A `Uffd` made from a fd learns its
/// enabled features from `/proc/self/fdinfo`.
///
/// Only a userfaultfd may become a `Uffd`: the kernel's `UFFD_EVENT_FORK` messages name a
/// descriptor that the read installed in this process, which [`Uffd::read_event`] then owns and
/// closes. Any other file could forge such a message and make this crate close a descriptor the
/// program still uses. So there is no `From<OwnedFd>`:
///
/// ```compile_fail
/// # use std::os::fd::OwnedFd;
/// let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
/// let uffd = userfaultfd::Uffd::from(file); // does not compile: use Uffd::try_from
/// ```
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
        let features = fdinfo_features(fd.as_fd());
        Uffd {
            fd,
            info: ApiInfo {
                features: features.unwrap_or(FeatureFlags::empty()),
                supported: FeatureFlags::empty(),
                ioctls: IoctlFlags::API_IOCTLS,
                required_range_ioctls: IoctlFlags::empty(),
                features_known: features.is_some(),
            },
        }
    }

    /// Whether a fault in a range registered with this fd may raise `SIGBUS` instead of waiting
    /// for a handler: [`FeatureFlags::SIGBUS`] is enabled, or the features are unknown.
    pub(crate) fn may_sigbus(&self) -> bool {
        !self.info.features_known || self.info.features.contains(FeatureFlags::SIGBUS)
    }
}

/// The NUL-terminated path `prefix` followed by the decimal `fd`, built without allocating.
fn proc_fd_path(prefix: &[u8], fd: RawFd) -> Option<[u8; 48]> {
    let mut path = [0u8; 48];
    if fd < 0 || prefix.len() + 11 >= path.len() {
        return None;
    }
    path[..prefix.len()].copy_from_slice(prefix);
    let mut n = fd;
    let mut digits = [0u8; 11];
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
    Some(path)
}

/// What `/proc/self/fd/<fd>` of a userfaultfd links to.
const USERFAULTFD_LINK: &[u8] = b"anon_inode:[userfaultfd]";

/// Checks that `fd` is a userfaultfd: its `/proc/self/fd` link names the userfaultfd anonymous
/// inode. Regular files, pipes and sockets link to a path, `pipe:[..]` or `socket:[..]`.
fn check_userfaultfd(fd: BorrowedFd<'_>) -> Result<()> {
    let path = proc_fd_path(b"/proc/self/fd/", fd.as_raw_fd()).ok_or(Error::NotUserfaultfd {
        reason: "a negative descriptor",
    })?;
    let mut link = [0u8; 64];
    // SAFETY: `path` is NUL-terminated; readlink writes at most `link.len()` bytes into `link`.
    let n = unsafe { libc::readlink(path.as_ptr().cast(), link.as_mut_ptr().cast(), link.len()) };
    if n < 0 {
        return Err(Error::NotUserfaultfd {
            reason: "cannot be checked: /proc/self/fd is not readable (is /proc mounted?)",
        });
    }
    if &link[..n as usize] == USERFAULTFD_LINK {
        Ok(())
    } else {
        Err(Error::NotUserfaultfd {
            reason: "its /proc/self/fd link is not anon_inode:[userfaultfd]",
        })
    }
}

const FDINFO_INITIALIZED: u64 = 1 << 31;

/// Reads the `API:` line of `/proc/self/fdinfo/<fd>` (`API:\taa:<features>:<ioctls>`), without
/// allocating. `None` when the fd is not a userfaultfd or the file cannot be read.
fn fdinfo_features(fd: BorrowedFd<'_>) -> Option<FeatureFlags> {
    let path = proc_fd_path(b"/proc/self/fdinfo/", fd.as_raw_fd())?;
    let mut buf = [0u8; 512];
    // SAFETY: `path` is a NUL-terminated string; open returns a new fd or -1.
    let f = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if f < 0 {
        return None;
    }
    // SAFETY: open succeeded; this OwnedFd is the only owner and closes it.
    let f = unsafe { OwnedFd::from_raw_fd(f) };
    let got = loop {
        // SAFETY: `buf` is writable for its whole length.
        match unsafe { crate::raw::read(f.as_fd(), buf.as_mut_ptr().cast(), buf.len()) } {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.ok()?,
        }
    };
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
    /// Takes ownership of `fd` without checking what it is; prefer
    /// [`Uffd::try_from`](#impl-TryFrom<OwnedFd>-for-Uffd), which checks.
    ///
    /// # Safety
    ///
    /// `fd` must be an open file descriptor that nothing else owns (it is closed on drop), and it
    /// must be a **userfaultfd** (of this process or another; before or after `UFFDIO_API`,
    /// though before it every operation fails with `EINVAL`). Any other file could yield bytes
    /// that decode as a `UFFD_EVENT_FORK` message naming a descriptor the program still uses:
    /// [`read_event`](Uffd::read_event) would take ownership of it and close it.
    ///
    /// If `/proc/self/fdinfo` cannot be read, the enabled features are unknown;
    /// [`features`](Uffd::features) is then empty and the safe `register` methods behave as if
    /// [`FeatureFlags::SIGBUS`] were enabled.
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

impl TryFrom<OwnedFd> for Uffd {
    type Error = Error;

    /// Wraps an owned fd (e.g. one received over `SCM_RIGHTS` from a VMM) after checking that it
    /// is a userfaultfd (`/proc/self/fd/N` links to `anon_inode:[userfaultfd]`). Enabled features
    /// are read from `/proc/self/fdinfo`. On error the fd is closed.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::OwnedFd;
    /// use userfaultfd::{Error, Uffd, UffdBuilder};
    /// let fd: OwnedFd = UffdBuilder::new().user_mode_only(true).create()?.into();
    /// let uffd = Uffd::try_from(fd)?;
    /// let file: OwnedFd = std::fs::File::open("/dev/null")?.into();
    /// assert!(matches!(Uffd::try_from(file), Err(Error::NotUserfaultfd { .. })));
    /// # drop(uffd); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotUserfaultfd`]: another kind of file, or `/proc` is not mounted.
    fn try_from(fd: OwnedFd) -> Result<Uffd> {
        check_userfaultfd(fd.as_fd())?;
        Ok(Uffd::from_owned(fd))
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
        let again = Uffd::try_from(owned).unwrap();
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

    #[test]
    fn only_userfaultfds_pass_the_check() {
        let uffd = UffdBuilder::new().user_mode_only(true).create().unwrap();
        check_userfaultfd(uffd.as_fd()).unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        for fd in [r.as_fd(), w.as_fd(), file.as_fd()] {
            assert!(matches!(
                check_userfaultfd(fd),
                Err(Error::NotUserfaultfd { .. })
            ));
        }
    }

    #[test]
    fn proc_paths() {
        let p = proc_fd_path(b"/proc/self/fd/", i32::MAX).unwrap();
        let end = p.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&p[..end], b"/proc/self/fd/2147483647");
        assert!(proc_fd_path(b"/proc/self/fd/", -1).is_none());
    }
}
