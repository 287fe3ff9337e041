//! Creating a userfaultfd and the `UFFDIO_API` handshake.
//!
//! Kernel references: `userfaultfd(2)`, `UFFDIO_API(2const)`, and for `/dev/userfaultfd`
//! (Linux 6.1) the kernel's `Documentation/admin-guide/mm/userfaultfd.rst`.

use std::ffi::CStr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use userfaultfd_sys as sys;

use crate::error::{Error, Operation, Result};
use crate::raw;
use crate::uffd::{ApiInfo, Uffd};
use crate::{FeatureFlags, IoctlFlags};

const DEVICE: &CStr = c"/dev/userfaultfd";

/// The features a successful `UFFDIO_API` enables for `requested`: the kernel turns on
/// `WP_UNPOPULATED` whenever `WP_ASYNC` is requested (`fs/userfaultfd.c`, Linux 6.7), so that
/// asynchronous write protection also covers pages never touched.
fn enabled_features(requested: FeatureFlags) -> FeatureFlags {
    if requested.contains(FeatureFlags::WP_ASYNC) {
        requested | FeatureFlags::WP_UNPOPULATED
    } else {
        requested
    }
}

/// Whether [`CreationMethod::Auto`] tries the syscall after the device path failed with `e`:
/// on every failure of opening `/dev/userfaultfd` or of its `USERFAULTFD_IOC_NEW` (missing
/// device before 6.1 or in a container, no access, an LSM or seccomp refusing the ioctl, a
/// different driver at that path), except when the process is out of descriptors or memory,
/// where the syscall would fail the same way and the first error says more.
fn device_failure_falls_back(e: &Error) -> bool {
    match e {
        Error::DeviceAccess { .. } => true,
        Error::Os {
            op: Operation::OpenDevice | Operation::IocNew,
            errno,
            ..
        } => !matches!(errno, Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM),
        _ => false,
    }
}

/// How [`UffdBuilder::create`] obtains the file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CreationMethod {
    /// `/dev/userfaultfd` first; the `userfaultfd(2)` syscall when the device is missing
    /// (kernels before 6.1), this process may not open it, or its `USERFAULTFD_IOC_NEW` is
    /// refused (an LSM or a seccomp filter): every device-path failure but running out of
    /// descriptors or memory. The default.
    #[default]
    Auto,
    /// Only the `userfaultfd(2)` syscall (Linux 4.3). Kernel-mode faults then need
    /// `CAP_SYS_PTRACE` or `vm.unprivileged_userfaultfd=1`.
    Syscall,
    /// Only `ioctl(open("/dev/userfaultfd"), USERFAULTFD_IOC_NEW)` (Linux 6.1). Access is
    /// governed by the device's file permissions alone, which is how containers and jailers
    /// grant userfaultfd without `CAP_SYS_PTRACE`.
    Device,
}

/// Builds a [`Uffd`]: chooses the fd flags, the creation method and the features to enable,
/// then performs the `UFFDIO_API` handshake.
///
/// Defaults: close-on-exec **on** (the 0.9 crate defaulted it off, which leaks the fd into
/// `exec`ed programs), blocking reads, kernel-mode faults, [`CreationMethod::Auto`], no features.
///
/// ```
/// use userfaultfd::{FeatureFlags, UffdBuilder};
///
/// # fn main() -> userfaultfd::Result<()> {
/// let uffd = UffdBuilder::new()
///     .close_on_exec(true)
///     .non_blocking(true)
///     .user_mode_only(true)
///     .require_features(FeatureFlags::THREAD_ID)
///     .create()?;
/// assert!(uffd.features().contains(FeatureFlags::THREAD_ID));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct UffdBuilder {
    close_on_exec: bool,
    non_blocking: bool,
    user_mode_only: bool,
    method: CreationMethod,
    req_features: FeatureFlags,
    req_ioctls: IoctlFlags,
}

impl Default for UffdBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl UffdBuilder {
    /// A builder with the defaults listed on [`UffdBuilder`].
    pub fn new() -> UffdBuilder {
        UffdBuilder {
            close_on_exec: true,
            non_blocking: false,
            user_mode_only: false,
            method: CreationMethod::Auto,
            req_features: FeatureFlags::empty(),
            req_ioctls: IoctlFlags::empty(),
        }
    }

    /// `O_CLOEXEC` on the new fd (`open(2)`). Default: on.
    pub fn close_on_exec(&mut self, close_on_exec: bool) -> &mut Self {
        self.close_on_exec = close_on_exec;
        self
    }

    /// `O_NONBLOCK` on the new fd. When on, [`Uffd::read_event`] returns `Ok(None)` instead of
    /// blocking, and `poll(2)`/`epoll(7)` work (a blocking userfaultfd polls as `POLLERR`).
    /// Default: off.
    pub fn non_blocking(&mut self, non_blocking: bool) -> &mut Self {
        self.non_blocking = non_blocking;
        self
    }

    /// `UFFD_USER_MODE_ONLY` (Linux 5.11): only faults raised by user-space code are reported;
    /// a fault the kernel takes on the program's behalf (e.g. `read(2)` into a registered
    /// buffer) fails with `EFAULT` instead. Needs no privilege. Default: off, because VMMs and
    /// restore tools must see the kernel's own accesses (KVM, `copy_to_user`).
    pub fn user_mode_only(&mut self, user_mode_only: bool) -> &mut Self {
        self.user_mode_only = user_mode_only;
        self
    }

    /// How to create the fd; see [`CreationMethod`]. Default: [`CreationMethod::Auto`].
    pub fn creation_method(&mut self, method: CreationMethod) -> &mut Self {
        self.method = method;
        self
    }

    /// Enables `feature` in the handshake. [`create`](Self::create) fails with
    /// [`Error::UnsupportedFeatures`] when the kernel lacks it.
    pub fn require_features(&mut self, feature: FeatureFlags) -> &mut Self {
        self.req_features |= feature;
        self
    }

    /// Requires ioctls. What can be known at creation is checked there: the API ioctls
    /// (`REGISTER`, `UNREGISTER`, `API`) against the kernel's answer, and the range ioctls against
    /// the features the kernel reports (`MOVE` needs [`FeatureFlags::MOVE`], `POISON`
    /// [`FeatureFlags::POISON`], `WRITE_PROTECT` [`FeatureFlags::PAGEFAULT_FLAG_WP`], `CONTINUE` a
    /// `MINOR_*` feature). The range ioctls are then checked again against what every
    /// `register` returns for its range. Failures are [`Error::UnsupportedIoctls`].
    pub fn require_ioctls(&mut self, ioctls: IoctlFlags) -> &mut Self {
        self.req_ioctls |= ioctls;
        self
    }

    /// Creates the userfaultfd and performs the `UFFDIO_API` handshake.
    ///
    /// # Errors
    ///
    /// * [`Error::Unsupported`]: `ENOSYS`, no userfaultfd in this kernel.
    /// * [`Error::PermissionDenied`]: `EPERM` from the syscall (kernel-mode faults without
    ///   privilege), or `EVENT_FORK` without `CAP_SYS_PTRACE`.
    /// * [`Error::DeviceAccess`]: `EACCES` opening `/dev/userfaultfd` with
    ///   [`CreationMethod::Device`].
    /// * [`Error::Os`]: e.g. `ENOENT` for a missing device with [`CreationMethod::Device`],
    ///   `EMFILE`, `ENOMEM`.
    /// * [`Error::UnsupportedFeatures`], [`Error::UnsupportedIoctls`].
    pub fn create(&self) -> Result<Uffd> {
        let fd = self.open_fd()?;
        let mut api = sys::uffdio_api {
            api: sys::UFFD_API,
            features: self.req_features.bits(),
            ioctls: 0,
        };
        // SAFETY: `api` is a live, initialised `uffdio_api`, which UFFDIO_API reads and writes.
        if let Err(errno) = unsafe { raw::ioctl(fd.as_fd(), sys::UFFDIO_API, &mut api) } {
            drop(fd);
            return Err(self.api_error(errno));
        }
        let info = ApiInfo {
            features: enabled_features(self.req_features),
            supported: FeatureFlags::from_bits_retain(api.features),
            ioctls: IoctlFlags::from_bits_retain(api.ioctls),
            required_range_ioctls: self.req_ioctls & !IoctlFlags::API_IOCTLS,
            features_known: true,
        };
        self.check_ioctls(&info)?;
        Ok(Uffd::from_parts(fd, info))
    }

    /// The features this kernel supports, learnt without privilege on a throwaway
    /// user-mode-only fd (`UFFDIO_API` can be issued once per fd, so it cannot be asked again
    /// on the fd you keep). This is the pattern `ioctl_userfaultfd(2)` BUGS describes.
    ///
    /// Needs Linux 5.11 for `UFFD_USER_MODE_ONLY`; on older kernels it retries with a
    /// privileged fd.
    ///
    /// ```
    /// # fn main() -> userfaultfd::Result<()> {
    /// let features = userfaultfd::UffdBuilder::probe_features()?;
    /// if features.contains(userfaultfd::FeatureFlags::MOVE) {
    ///     println!("UFFDIO_MOVE is available");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create): `ENOSYS`, `EPERM`, `EMFILE`...
    pub fn probe_features() -> Result<FeatureFlags> {
        let mut b = UffdBuilder::new();
        b.user_mode_only(true)
            .creation_method(CreationMethod::Syscall);
        match b.create() {
            Ok(u) => Ok(u.supported_features()),
            Err(Error::Os {
                errno: Errno::EINVAL,
                ..
            }) => {
                // Before 5.11 the user-mode-only flag itself is invalid.
                b.user_mode_only(false)
                    .creation_method(CreationMethod::Auto);
                b.create().map(|u| u.supported_features())
            }
            Err(e) => Err(e),
        }
    }

    fn flags(&self) -> libc::c_int {
        let mut flags = 0;
        if self.close_on_exec {
            flags |= libc::O_CLOEXEC;
        }
        if self.non_blocking {
            flags |= libc::O_NONBLOCK;
        }
        if self.user_mode_only {
            flags |= sys::UFFD_USER_MODE_ONLY;
        }
        flags
    }

    fn open_fd(&self) -> Result<OwnedFd> {
        match self.method {
            CreationMethod::Syscall => self.open_syscall(),
            CreationMethod::Device => self.open_device(),
            CreationMethod::Auto => match self.open_device() {
                Ok(fd) => Ok(fd),
                Err(e) if device_failure_falls_back(&e) => self.open_syscall(),
                Err(e) => Err(e),
            },
        }
    }

    fn open_syscall(&self) -> Result<OwnedFd> {
        // SAFETY: userfaultfd(2) takes one integer argument and returns a new fd or -1.
        let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, self.flags()) };
        if ret < 0 {
            return Err(match Errno::last() {
                Errno::ENOSYS => Error::Unsupported {
                    op: Operation::Syscall,
                },
                Errno::EPERM => Error::PermissionDenied {
                    op: Operation::Syscall,
                },
                errno => Error::Os {
                    op: Operation::Syscall,
                    errno,
                    range: None,
                },
            });
        }
        // SAFETY: the syscall succeeded, so `ret` is a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
    }

    fn open_device(&self) -> Result<OwnedFd> {
        // SAFETY: DEVICE is a NUL-terminated path; open returns a new fd or -1.
        let dev = unsafe { libc::open(DEVICE.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if dev < 0 {
            return Err(match Errno::last() {
                errno @ (Errno::EACCES | Errno::EPERM) => Error::DeviceAccess {
                    op: Operation::OpenDevice,
                    errno,
                },
                errno => Error::Os {
                    op: Operation::OpenDevice,
                    errno,
                    range: None,
                },
            });
        }
        // SAFETY: open succeeded, so `dev` is a new fd owned only here; it closes on drop.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        // USERFAULTFD_IOC_NEW takes the flags by value, not through a pointer.
        let flags = self.flags() as usize as *mut libc::c_void;
        // SAFETY: USERFAULTFD_IOC_NEW is an `_IO` request whose argument is the flags integer;
        // the kernel does not dereference it.
        match unsafe { raw::ioctl(dev.as_fd(), sys::USERFAULTFD_IOC_NEW, flags) } {
            // SAFETY: the ioctl returned a new fd that nothing else owns.
            Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(errno) => Err(Error::Os {
                op: Operation::IocNew,
                errno,
                range: None,
            }),
        }
    }

    /// Turns a failed `UFFDIO_API` into the most useful error.
    fn api_error(&self, errno: Errno) -> Error {
        match errno {
            Errno::EPERM => Error::PermissionDenied { op: Operation::Api },
            Errno::EINVAL if !self.req_features.is_empty() => {
                // The kernel refuses unknown feature bits with EINVAL: say which.
                match UffdBuilder::probe_features() {
                    Ok(supported) if !supported.contains(self.req_features) => {
                        Error::UnsupportedFeatures {
                            missing: self.req_features - supported,
                            supported,
                        }
                    }
                    _ => Error::Os {
                        op: Operation::Api,
                        errno,
                        range: None,
                    },
                }
            }
            errno => Error::Os {
                op: Operation::Api,
                errno,
                range: None,
            },
        }
    }

    fn check_ioctls(&self, info: &ApiInfo) -> Result<()> {
        let mut available =
            info.ioctls | IoctlFlags::WAKE | IoctlFlags::COPY | IoctlFlags::ZEROPAGE;
        let s = info.supported;
        if s.contains(FeatureFlags::MOVE) {
            available |= IoctlFlags::MOVE;
        }
        if s.contains(FeatureFlags::POISON) {
            available |= IoctlFlags::POISON;
        }
        if s.contains(FeatureFlags::PAGEFAULT_FLAG_WP) {
            available |= IoctlFlags::WRITE_PROTECT;
        }
        if s.intersects(FeatureFlags::MINOR_SHMEM | FeatureFlags::MINOR_HUGETLBFS) {
            available |= IoctlFlags::CONTINUE;
        }
        let missing = self.req_ioctls - available;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::UnsupportedIoctls {
                op: Operation::Api,
                missing,
                available,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wp_async_enables_wp_unpopulated() {
        assert_eq!(
            enabled_features(FeatureFlags::WP_ASYNC),
            FeatureFlags::WP_ASYNC | FeatureFlags::WP_UNPOPULATED
        );
        assert_eq!(
            enabled_features(FeatureFlags::THREAD_ID),
            FeatureFlags::THREAD_ID
        );
    }

    #[test]
    fn auto_falls_back_on_device_failures_but_not_exhaustion() {
        let os = |op, errno| Error::Os {
            op,
            errno,
            range: None,
        };
        for e in [
            Error::DeviceAccess {
                op: Operation::OpenDevice,
                errno: Errno::EACCES,
            },
            os(Operation::OpenDevice, Errno::ENOENT),
            os(Operation::IocNew, Errno::EPERM),
            os(Operation::IocNew, Errno::EACCES),
            os(Operation::IocNew, Errno::ENOTTY),
        ] {
            assert!(device_failure_falls_back(&e), "{e}");
        }
        for e in [
            os(Operation::OpenDevice, Errno::EMFILE),
            os(Operation::IocNew, Errno::ENFILE),
            os(Operation::IocNew, Errno::ENOMEM),
            os(Operation::Api, Errno::EINVAL),
        ] {
            assert!(!device_failure_falls_back(&e), "{e}");
        }
    }
}
