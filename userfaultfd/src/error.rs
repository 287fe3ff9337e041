//! Errors: one enum for the crate, every variant naming the operation and, where the kernel
//! gave one, the errno.

use std::fmt;

use nix::errno::Errno;

use crate::{FeatureFlags, IoctlFlags};

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The operation that failed, named after the kernel interface it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `userfaultfd(2)`.
    Syscall,
    /// `open("/dev/userfaultfd")`.
    OpenDevice,
    /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd`.
    IocNew,
    /// `UFFDIO_API`.
    Api,
    /// `UFFDIO_REGISTER`.
    Register,
    /// `UFFDIO_UNREGISTER`.
    Unregister,
    /// `UFFDIO_WAKE`.
    Wake,
    /// `UFFDIO_COPY`.
    Copy,
    /// `UFFDIO_ZEROPAGE`.
    Zeropage,
    /// `UFFDIO_MOVE`.
    Move,
    /// `UFFDIO_WRITEPROTECT`.
    WriteProtect,
    /// `UFFDIO_CONTINUE`.
    Continue,
    /// `UFFDIO_POISON`.
    Poison,
    /// `read(2)` of `uffd_msg`s.
    Read,
    /// `open("/proc/<pid>/pagemap")`.
    OpenPagemap,
    /// `PAGEMAP_SCAN`.
    PagemapScan,
    /// `fcntl(2)` on the userfaultfd.
    Fcntl,
    /// Registering the userfaultfd with an async reactor (tokio's `AsyncFd`, `epoll_ctl(2)`).
    Epoll,
}

impl Operation {
    /// The kernel's name for the operation, e.g. `"UFFDIO_COPY"`.
    pub const fn name(self) -> &'static str {
        match self {
            Operation::Syscall => "userfaultfd(2)",
            Operation::OpenDevice => "open(/dev/userfaultfd)",
            Operation::IocNew => "USERFAULTFD_IOC_NEW",
            Operation::Api => "UFFDIO_API",
            Operation::Register => "UFFDIO_REGISTER",
            Operation::Unregister => "UFFDIO_UNREGISTER",
            Operation::Wake => "UFFDIO_WAKE",
            Operation::Copy => "UFFDIO_COPY",
            Operation::Zeropage => "UFFDIO_ZEROPAGE",
            Operation::Move => "UFFDIO_MOVE",
            Operation::WriteProtect => "UFFDIO_WRITEPROTECT",
            Operation::Continue => "UFFDIO_CONTINUE",
            Operation::Poison => "UFFDIO_POISON",
            Operation::Read => "read(userfaultfd)",
            Operation::OpenPagemap => "open(/proc/pid/pagemap)",
            Operation::PagemapScan => "PAGEMAP_SCAN",
            Operation::Fcntl => "fcntl(userfaultfd)",
            Operation::Epoll => "epoll_ctl(userfaultfd)",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `EPERM` from `userfaultfd(2)`: what to change.
const EPERM_HELP: &str = "this process may not handle kernel-mode faults: set \
sysctl vm.unprivileged_userfaultfd=1, grant CAP_SYS_PTRACE, give it read-write access to \
/dev/userfaultfd (Linux 6.1+), or ask for user-mode-only faults with \
UffdBuilder::user_mode_only(true)";

/// The address range of [`Error::Os`]: the same type as `mmap`'s errors use, so both crates
/// report ranges alike.
pub use mmap::AddrRange;

/// Errors of this crate.
///
/// Every variant names the [`Operation`] that failed; those that come from the kernel carry its
/// [`Errno`] (see [`Error::errno`]). The meaning of each errno for each ioctl is documented on the
/// method that returns it and in `ioctl_userfaultfd(2)`.
///
/// The range operations (`copy`, `zeropage`, `r#continue`, `poison`, `r#move`) share one rule for
/// their outcome, as the kernel reports it in their output field:
///
/// | kernel outcome | result |
/// |---|---|
/// | everything done | `Ok(len)` |
/// | `0 < done < len` (the kernel then always says `EAGAIN`) | [`Error::PartialProgress`]: resume at `dst + done` |
/// | nothing done, `EEXIST` | [`Error::AlreadyMapped`]: the page is there; `wake` the range |
/// | nothing done, `EAGAIN` (an unread non-cooperative event) | [`Error::MappingChanging`]: read events, then retry |
/// | any other error | [`Error::Os`] |
///
/// # Formatting
///
/// `Display` is the message: what failed and, where there is one, what to change. `Debug` is
/// the variant with its fields, followed by the same message, so that the output of a
/// `fn main() -> Result<(), userfaultfd::Error>` (which prints the `Debug` form) says what to do:
///
/// ```
/// use userfaultfd::{Error, Operation};
/// let e = Error::PermissionDenied { op: Operation::Syscall };
/// let debug = format!("{e:?}");
/// assert!(debug.starts_with("PermissionDenied { op: Syscall }: userfaultfd(2) failed: EPERM"));
/// assert!(debug.contains("user_mode_only(true)"));
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused the operation with `errno`.
    #[error("{op}{on} failed: {errno}",
            on = range.map_or(String::new(), |r| format!(" on {r}")))]
    Os {
        /// What was called.
        op: Operation,
        /// What the kernel said.
        errno: Errno,
        /// The addresses the operation was given, for the range operations (register,
        /// unregister, wake, write-protect, copy, zeropage, continue, poison, move: the
        /// destination; `PAGEMAP_SCAN`: the scanned range); `None` for the others.
        range: Option<AddrRange>,
    },

    /// `EEXIST` with no progress: a page is already mapped at the start of the range (a
    /// concurrent resolution won the race, or the fault was already resolved). Pages are never
    /// overwritten; the faulting threads may still be waiting, so call `wake` on the range.
    #[error("{op}: a page is already mapped at {addr:#x} (EEXIST); wake the range and move on")]
    AlreadyMapped {
        /// What was called.
        op: Operation,
        /// The address of the first page of the request.
        addr: usize,
    },

    /// The operation did `done` bytes of `len` and then stopped. The kernel reports every stop
    /// after partial progress as `EAGAIN`, whatever stopped it (a page already present at
    /// `dst + done`, a pending event, a signal): resume at `dst + done`, where the next call
    /// reports the actual cause with nothing done.
    #[error("{op} on {dst:#x} did {done} of {len} bytes, then stopped with {errno}; \
             resume at {resume:#x}",
            resume = dst.wrapping_add(*done))]
    PartialProgress {
        /// What was called.
        op: Operation,
        /// The start of the destination range.
        dst: usize,
        /// Bytes completed from the start of the range (always `> 0` and `< len`).
        done: usize,
        /// Bytes requested.
        len: usize,
        /// Why it stopped.
        errno: Errno,
    },

    /// `EAGAIN` with no progress: the monitored process is changing its address space
    /// (`fork`, `mremap`, `madvise(MADV_DONTNEED)`, `munmap`) and the event it queued is unread.
    /// Read (and handle) the pending events, then retry. Nothing was done.
    #[error(
        "{op}: nothing done (EAGAIN): the address space is changing and a non-cooperative \
             event is still unread; read events, then retry"
    )]
    MappingChanging {
        /// What was called.
        op: Operation,
    },

    /// `ENOSYS`: this kernel has no userfaultfd (built without `CONFIG_USERFAULTFD`, or a
    /// sandbox such as gVisor).
    #[error("{op} failed: ENOSYS: userfaultfd is not available on this kernel")]
    Unsupported {
        /// What was called.
        op: Operation,
    },

    /// `EPERM` creating a userfaultfd, or enabling a feature that needs `CAP_SYS_PTRACE`.
    #[error("{op} failed: EPERM: {help}", help = permission_help(*op))]
    PermissionDenied {
        /// What was called.
        op: Operation,
    },

    /// `EACCES`/`EPERM` opening `/dev/userfaultfd` (its mode is 0600 root by default).
    #[error(
        "{op} failed: {errno}: no read-write access to /dev/userfaultfd; change its mode or \
             ACL, or create the fd with the syscall"
    )]
    DeviceAccess {
        /// What was called.
        op: Operation,
        /// `EACCES` or `EPERM`.
        errno: Errno,
    },

    /// The kernel lacks features the builder requires (`UFFDIO_API`), or that an operation
    /// needs (`poison` without [`FeatureFlags::POISON`], `r#move` without
    /// [`FeatureFlags::MOVE`]). The message names each missing feature with the Linux version
    /// that brings it ([`FeatureFlags::since`]).
    #[error(
        "UFFDIO_API: this kernel lacks {lacks} (it supports {supports})",
        lacks = missing.describe_with_versions(),
        supports = supported.describe_with_versions()
    )]
    UnsupportedFeatures {
        /// Required but unsupported.
        missing: FeatureFlags,
        /// What the kernel supports.
        supported: FeatureFlags,
    },

    /// The kernel lacks ioctls the builder requires: at creation the API ioctls and the range
    /// ioctls the enabled features cannot provide, at registration the range ioctls the kernel
    /// returned for that range. After a registration the range **stays registered** (this
    /// `Uffd` may have registered it before, and unregistering would release faults that
    /// are waiting for the handler's data): unregister it if it will not be used.
    #[error("{op}: the required ioctls {missing:?} are unavailable (available: {available:?})")]
    UnsupportedIoctls {
        /// `UFFDIO_API` or `UFFDIO_REGISTER`.
        op: Operation,
        /// Required but unavailable.
        missing: IoctlFlags,
        /// What is available.
        available: IoctlFlags,
    },

    /// The arguments were rejected before any system call was made.
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// What would have been called.
        op: Operation,
        /// What is wrong.
        reason: &'static str,
    },

    /// `read(2)` returned a byte count that is not a whole number of `uffd_msg`s.
    #[error(
        "read(userfaultfd): incomplete uffd_msg: {read} bytes is not a multiple of {expected}"
    )]
    IncompleteMsg {
        /// Bytes read.
        read: usize,
        /// Size of one message.
        expected: usize,
    },

    /// `read(2)` returned end-of-file.
    #[error("read(userfaultfd): end of file")]
    ReadEof,

    /// A blocking `read(2)` was interrupted by a signal handler installed without `SA_RESTART`
    /// (`EINTR`). Nothing was read; call again to keep waiting. (Handlers installed with
    /// `SA_RESTART` never cause this: the kernel restarts the read.) This is how a thread
    /// blocked in [`Uffd::read_event`](crate::Uffd::read_event) can be interrupted.
    #[error("{op} was interrupted by a signal (EINTR); nothing was read")]
    Interrupted {
        /// What was called.
        op: Operation,
    },

    /// The descriptor handed to [`Uffd::try_from`](crate::Uffd#impl-TryFrom<OwnedFd>-for-Uffd) is not a userfaultfd
    /// (its `/proc/self/fd` link is not `anon_inode:[userfaultfd]`), or that could not be
    /// checked because `/proc` is not mounted. Accepting it would let forged messages make
    /// this crate take ownership of arbitrary descriptors.
    #[error("the descriptor is not a userfaultfd: {reason}")]
    NotUserfaultfd {
        /// What was found.
        reason: &'static str,
    },

    /// The safe call was refused because, given this `Uffd`'s state, it could make memory that
    /// Rust code may reference trap. Today: registering a raw address range with a `Uffd` that
    /// has [`FeatureFlags::SIGBUS`] (every fault there then raises `SIGBUS` instead of waiting).
    /// Register an owned region (`register_region`) or use the `unsafe` form
    /// ([`Uffd::register_unchecked`](crate::Uffd::register_unchecked)).
    #[error("{op}: refused: {reason}")]
    RequiresUnsafe {
        /// What would have been called.
        op: Operation,
        /// Why the safe form cannot do it.
        reason: &'static str,
    },

    /// The userfaultfd is blocking (no `O_NONBLOCK`), and the operation needs a non-blocking
    /// one: an async reader (`AsyncUffd`, feature `tokio`) waits for
    /// readiness with `epoll(7)`, and the kernel reports `EPOLLERR` (never `EPOLLIN`) for a
    /// blocking userfaultfd. Create it with
    /// [`UffdBuilder::non_blocking(true)`](crate::UffdBuilder::non_blocking). The flag is not
    /// set behind the caller's back, since it belongs to the open file, which other holders of
    /// the fd (a VMM that handed it over) share.
    #[error(
        "{op}: the userfaultfd is blocking, and an async reader needs a non-blocking one: \
         create it with UffdBuilder::new().non_blocking(true)"
    )]
    Blocking {
        /// What would have been called.
        op: Operation,
    },

    /// A message carried an event code this crate does not know (a newer kernel).
    #[error("read(userfaultfd): unrecognised event code {event:#x}")]
    UnrecognizedEvent {
        /// The `uffd_msg.event` byte.
        event: u8,
        /// The whole message, for callers that understand it.
        raw: [u8; 32],
    },
}

/// The variant and its fields, as `#[derive(Debug)]` would print them, then `: ` and the
/// `Display` message.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os { op, errno, range } => f
                .debug_struct("Os")
                .field("op", op)
                .field("errno", errno)
                .field("range", range)
                .finish(),
            Error::AlreadyMapped { op, addr } => f
                .debug_struct("AlreadyMapped")
                .field("op", op)
                .field("addr", addr)
                .finish(),
            Error::PartialProgress {
                op,
                dst,
                done,
                len,
                errno,
            } => f
                .debug_struct("PartialProgress")
                .field("op", op)
                .field("dst", dst)
                .field("done", done)
                .field("len", len)
                .field("errno", errno)
                .finish(),
            Error::MappingChanging { op } => {
                f.debug_struct("MappingChanging").field("op", op).finish()
            }
            Error::Unsupported { op } => f.debug_struct("Unsupported").field("op", op).finish(),
            Error::PermissionDenied { op } => {
                f.debug_struct("PermissionDenied").field("op", op).finish()
            }
            Error::DeviceAccess { op, errno } => f
                .debug_struct("DeviceAccess")
                .field("op", op)
                .field("errno", errno)
                .finish(),
            Error::UnsupportedFeatures { missing, supported } => f
                .debug_struct("UnsupportedFeatures")
                .field("missing", missing)
                .field("supported", supported)
                .finish(),
            Error::UnsupportedIoctls {
                op,
                missing,
                available,
            } => f
                .debug_struct("UnsupportedIoctls")
                .field("op", op)
                .field("missing", missing)
                .field("available", available)
                .finish(),
            Error::InvalidArgument { op, reason } => f
                .debug_struct("InvalidArgument")
                .field("op", op)
                .field("reason", reason)
                .finish(),
            Error::IncompleteMsg { read, expected } => f
                .debug_struct("IncompleteMsg")
                .field("read", read)
                .field("expected", expected)
                .finish(),
            Error::ReadEof => f.write_str("ReadEof"),
            Error::Interrupted { op } => f.debug_struct("Interrupted").field("op", op).finish(),
            Error::NotUserfaultfd { reason } => f
                .debug_struct("NotUserfaultfd")
                .field("reason", reason)
                .finish(),
            Error::RequiresUnsafe { op, reason } => f
                .debug_struct("RequiresUnsafe")
                .field("op", op)
                .field("reason", reason)
                .finish(),
            Error::Blocking { op } => f.debug_struct("Blocking").field("op", op).finish(),
            Error::UnrecognizedEvent { event, raw } => f
                .debug_struct("UnrecognizedEvent")
                .field("event", event)
                .field("raw", raw)
                .finish(),
        }?;
        write!(f, ": {self}")
    }
}

fn permission_help(op: Operation) -> &'static str {
    match op {
        Operation::Api => {
            "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE in the initial user namespace"
        }
        _ => EPERM_HELP,
    }
}

impl Error {
    /// The errno the kernel returned, if this error came from the kernel.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Os { errno, .. }
            | Error::PartialProgress { errno, .. }
            | Error::DeviceAccess { errno, .. } => Some(*errno),
            Error::AlreadyMapped { .. } => Some(Errno::EEXIST),
            Error::MappingChanging { .. } => Some(Errno::EAGAIN),
            Error::Unsupported { .. } => Some(Errno::ENOSYS),
            Error::PermissionDenied { .. } => Some(Errno::EPERM),
            Error::Interrupted { .. } => Some(Errno::EINTR),
            _ => None,
        }
    }

    /// The operation that failed, if the error names one.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Error::Os { op, .. }
            | Error::AlreadyMapped { op, .. }
            | Error::PartialProgress { op, .. }
            | Error::MappingChanging { op }
            | Error::Unsupported { op }
            | Error::PermissionDenied { op }
            | Error::DeviceAccess { op, .. }
            | Error::UnsupportedIoctls { op, .. }
            | Error::Interrupted { op }
            | Error::RequiresUnsafe { op, .. }
            | Error::Blocking { op }
            | Error::InvalidArgument { op, .. } => Some(*op),
            Error::NotUserfaultfd { .. } => None,
            Error::UnsupportedFeatures { .. } => Some(Operation::Api),
            Error::IncompleteMsg { .. } | Error::ReadEof | Error::UnrecognizedEvent { .. } => {
                Some(Operation::Read)
            }
        }
    }

    /// Bytes completed before the error: `done` of [`Error::PartialProgress`], else 0.
    pub fn bytes_done(&self) -> usize {
        match self {
            Error::PartialProgress { done, .. } => *done,
            _ => 0,
        }
    }

    /// An [`Error::Os`] from the thread's current `errno`.
    pub(crate) fn last(op: Operation) -> Error {
        Error::Os {
            op,
            errno: Errno::last(),
            range: None,
        }
    }
}

impl From<Error> for std::io::Error {
    /// Keeps the errno's `ErrorKind` and the whole message (the source error).
    fn from(e: Error) -> std::io::Error {
        match e.errno() {
            Some(errno) => {
                std::io::Error::new(std::io::Error::from_raw_os_error(errno as i32).kind(), e)
            }
            None => std::io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_operation_and_errno() {
        let e = Error::Os {
            op: Operation::Copy,
            errno: Errno::ENOENT,
            range: None,
        };
        let s = e.to_string();
        assert!(s.contains("UFFDIO_COPY") && s.contains("ENOENT"), "{s}");
        let s = Error::PermissionDenied {
            op: Operation::Syscall,
        }
        .to_string();
        assert!(s.contains("unprivileged_userfaultfd") && s.contains("user_mode_only"));
        let p = Error::PartialProgress {
            op: Operation::Move,
            dst: 0x7000_0000,
            done: 4096,
            len: 8192,
            errno: Errno::EAGAIN,
        };
        assert_eq!(p.bytes_done(), 4096);
        assert_eq!(p.errno(), Some(Errno::EAGAIN));
        let s = p.to_string();
        assert!(
            s.contains("UFFDIO_MOVE on 0x70000000 did 4096 of 8192") && s.contains("0x70001000"),
            "{s}"
        );
        // A range operation's failure names its range.
        let s = Error::Os {
            op: Operation::Register,
            errno: Errno::EINVAL,
            range: Some(AddrRange::new(0x10000, 0x2000)),
        }
        .to_string();
        assert!(
            s.starts_with("UFFDIO_REGISTER on 0x10000..0x12000 failed: EINVAL"),
            "{s}"
        );
    }

    #[test]
    fn debug_keeps_the_variant_and_adds_the_message() {
        let e = Error::PermissionDenied {
            op: Operation::Syscall,
        };
        let d = format!("{e:?}");
        assert!(d.starts_with("PermissionDenied { op: Syscall }: "), "{d}");
        assert!(d.ends_with(&e.to_string()), "{d}");
        assert!(
            d.contains("CAP_SYS_PTRACE") && d.contains("user_mode_only"),
            "{d}"
        );
        let d = format!(
            "{:?}",
            Error::Os {
                op: Operation::Copy,
                errno: Errno::ENOENT,
                range: None,
            }
        );
        assert!(
            d.starts_with(
                "Os { op: Copy, errno: ENOENT, range: None }: UFFDIO_COPY failed: ENOENT"
            ),
            "{d}"
        );
        assert_eq!(
            format!("{:?}", Error::ReadEof),
            "ReadEof: read(userfaultfd): end of file"
        );
        // What `fn main() -> Result<(), Error>` prints after "Error: ".
        let r: Result<()> = Err(Error::AlreadyMapped {
            op: Operation::Copy,
            addr: 0x1000,
        });
        let d = format!("{r:?}");
        assert!(
            d.contains("addr: 4096 }: UFFDIO_COPY: a page is already mapped at 0x1000"),
            "{d}"
        );
    }

    #[test]
    fn unsupported_features_name_the_version() {
        let e = Error::UnsupportedFeatures {
            missing: FeatureFlags::MOVE,
            supported: FeatureFlags::THREAD_ID,
        };
        assert_eq!(
            e.to_string(),
            "UFFDIO_API: this kernel lacks MOVE (Linux 6.8) (it supports THREAD_ID (Linux 4.14))"
        );
    }

    #[test]
    fn io_error_keeps_errno() {
        let e: std::io::Error = Error::AlreadyMapped {
            op: Operation::Copy,
            addr: 0x1000,
        }
        .into();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    }
}
