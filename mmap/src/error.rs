//! The crate's error type, and the address range its system call errors report.

use std::fmt;
use std::io;

use nix::errno::Errno;

/// An address range a system call was given, as [`Error::Os`] reports it: `start` and `len`
/// bytes. Displays as `0xSTART..0xEND`.
///
/// `userfaultfd` re-exports this type (`userfaultfd::AddrRange`) for its own errors, so both
/// crates report ranges alike.
///
/// ```
/// assert_eq!(mmap::AddrRange::new(0x1000, 0x2000).to_string(), "0x1000..0x3000");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrRange {
    /// First address.
    pub start: usize,
    /// Length in bytes.
    pub len: usize,
}

impl AddrRange {
    /// `start..start + len`.
    pub const fn new(start: usize, len: usize) -> AddrRange {
        AddrRange { start, len }
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x}..{:#x}",
            self.start,
            self.start.wrapping_add(self.len)
        )
    }
}

/// Errors returned by this crate.
///
/// Every variant names the operation (`op`) that failed:
///
/// - errors the kernel reported are [`Error::Os`]; `op` is the system
///   call (with its flag where that says more), e.g. `"mmap"`,
///   `"madvise(MADV_REMOVE)"`, `"mlock2(MLOCK_ONFAULT)"`, `"fcntl(F_ADD_SEALS)"`,
///   `errno` is what the kernel returned ([`Error::errno`] gives it for any variant), and
///   `range` the addresses the call was given, if it was given any (the same convention as
///   `userfaultfd::Error::Os`);
/// - the other variants are argument checks done by this crate before any
///   system call, so nothing changed when they are returned; `op` is the
///   method that refused (`"remove_range"`, `"read_obj"`, `"add_anon"`, ...)
///   or, for the constructors, `"mmap"`.
///
/// The enum is `#[non_exhaustive]`: new checks may add variants.
///
/// `Display` is the message. `Debug` is the variant with its fields followed by `: ` and the
/// same message, so that what `fn main() -> Result<(), mmap::Error>` prints says what failed:
/// `ZeroSize { op: "mmap" }: mmap: size is zero`.
///
/// # Example
///
/// ```
/// use mmap::{Error, MemoryMapping};
///
/// let m = MemoryMapping::new(4096)?;
/// let err = m.remove_range(4096, 4096).unwrap_err();
/// assert!(matches!(err, Error::InvalidRange { op: "remove_range", .. }));
/// assert_eq!(err.errno(), None); // caught before any system call
/// # Ok::<(), mmap::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An alignment that is zero or not a power of two.
    #[error("{op}: alignment {align:#x} is not a power of two")]
    InvalidAlignment {
        /// The operation that was refused.
        op: &'static str,
        /// The alignment that was asked for.
        align: u64,
    },

    /// A memfd name containing a NUL byte.
    #[error("{op}: name {name:?} contains a NUL byte")]
    InvalidName {
        /// The operation that was refused.
        op: &'static str,
        /// The name that was given.
        name: String,
    },

    /// A range `offset..offset + count` that does not lie inside the region.
    ///
    /// This is the single error for every `(offset, count)` method of this
    /// crate; all of them check their range with
    /// [`MemoryMapping::range_end`](crate::MemoryMapping::range_end) (or the
    /// same helper for arenas and volatile slices).
    #[error("{op}: range {offset:#x} + {count:#x} is outside the region of {size:#x} bytes")]
    InvalidRange {
        /// The operation that was refused.
        op: &'static str,
        /// Start of the range, relative to the start of the region.
        offset: usize,
        /// Length of the range in bytes.
        count: usize,
        /// Size of the region in bytes.
        size: usize,
    },

    /// A range that overlaps address space a
    /// [`MemoryMappingArena`](crate::MemoryMappingArena) gave up after a failed
    /// mmap(2): the arena no longer knows whose memory is there, so it never
    /// maps over, removes or unmaps it (see the arena's "Failed mappings").
    #[error(
        "{op}: the range overlaps {offset:#x} + {count:#x}, which the arena gave up after a failed mmap"
    )]
    LeakedRange {
        /// The operation that was refused.
        op: &'static str,
        /// Start of the given-up range, relative to the start of the arena.
        offset: usize,
        /// Length of the given-up range in bytes.
        count: usize,
    },

    /// A file offset that does not fit in the kernel's `off_t`.
    #[error("{op}: file offset {offset:#x} does not fit in off_t")]
    OffsetOverflow {
        /// The operation that was refused.
        op: &'static str,
        /// The offset that was given.
        offset: u64,
    },

    /// A size that, after adding the alignment slack or rounding up to the
    /// page size, does not fit in `usize`.
    #[error("{op}: size {size:#x} plus alignment {align:#x} overflows the address space")]
    SizeOverflow {
        /// The operation that was refused.
        op: &'static str,
        /// The size that was asked for.
        size: usize,
        /// The alignment or page size it had to be rounded to.
        align: u64,
    },

    /// A system call failed; `errno` is what the kernel returned. The message names the call,
    /// the range it was given and the errno:
    /// `madvise(MADV_REMOVE) on 0x7f0000000000..0x7f0000001000 failed: EINVAL: Invalid argument`.
    #[error("{op}{on} failed: {errno}",
            on = range.map_or(String::new(), |r| format!(" on {r}")))]
    Os {
        /// The system call (and flag) that failed, e.g. `"madvise(MADV_REMOVE)"`.
        op: &'static str,
        /// The errno, e.g. [`Errno::EINVAL`].
        errno: Errno,
        /// The addresses the call was given: the range for madvise(2), msync(2), mlock2(2),
        /// munlock(2), mprotect(2), munmap(2), and mmap(2) at a fixed address or with an
        /// address hint; `None` for calls on a descriptor (memfd_create(2), ftruncate(2),
        /// fstat(2), fcntl(2), ...) and for mmap(2) where the kernel picks the address.
        range: Option<AddrRange>,
    },

    /// An address that is not a multiple of the required alignment.
    #[error("{op}: address {addr:#x} is not a multiple of {align:#x}")]
    UnalignedAddress {
        /// The operation that was refused.
        op: &'static str,
        /// The address that was given.
        addr: usize,
        /// The alignment it must have (page size, huge page size or `align`).
        align: u64,
    },

    /// An offset that is not a multiple of the required alignment.
    #[error("{op}: offset {offset:#x} is not a multiple of {align:#x}")]
    UnalignedOffset {
        /// The operation that was refused.
        op: &'static str,
        /// The offset that was given.
        offset: u64,
        /// The alignment it must have (page size, huge page size, or the
        /// alignment of the object type for the `*_volatile` accessors).
        align: u64,
    },

    /// The operation is not supported by this kind of region (for example
    /// [`MappedRegion::add_fd_mapping`](crate::MappedRegion::add_fd_mapping) on a
    /// plain [`MemoryMapping`](crate::MemoryMapping)).
    #[error("{op} is not supported by this region")]
    Unsupported {
        /// The operation that was refused.
        op: &'static str,
    },

    /// A mapping of zero bytes (the kernel would return `EINVAL`).
    #[error("{op}: size is zero")]
    ZeroSize {
        /// The operation that was refused.
        op: &'static str,
    },
}

/// The variant and its fields, as `#[derive(Debug)]` would print them, then `: ` and the
/// `Display` message.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidAlignment { op, align } => f
                .debug_struct("InvalidAlignment")
                .field("op", op)
                .field("align", align)
                .finish(),
            Error::InvalidName { op, name } => f
                .debug_struct("InvalidName")
                .field("op", op)
                .field("name", name)
                .finish(),
            Error::InvalidRange {
                op,
                offset,
                count,
                size,
            } => f
                .debug_struct("InvalidRange")
                .field("op", op)
                .field("offset", offset)
                .field("count", count)
                .field("size", size)
                .finish(),
            Error::LeakedRange { op, offset, count } => f
                .debug_struct("LeakedRange")
                .field("op", op)
                .field("offset", offset)
                .field("count", count)
                .finish(),
            Error::OffsetOverflow { op, offset } => f
                .debug_struct("OffsetOverflow")
                .field("op", op)
                .field("offset", offset)
                .finish(),
            Error::SizeOverflow { op, size, align } => f
                .debug_struct("SizeOverflow")
                .field("op", op)
                .field("size", size)
                .field("align", align)
                .finish(),
            Error::Os { op, errno, range } => f
                .debug_struct("Os")
                .field("op", op)
                .field("errno", errno)
                .field("range", range)
                .finish(),
            Error::UnalignedAddress { op, addr, align } => f
                .debug_struct("UnalignedAddress")
                .field("op", op)
                .field("addr", addr)
                .field("align", align)
                .finish(),
            Error::UnalignedOffset { op, offset, align } => f
                .debug_struct("UnalignedOffset")
                .field("op", op)
                .field("offset", offset)
                .field("align", align)
                .finish(),
            Error::Unsupported { op } => f.debug_struct("Unsupported").field("op", op).finish(),
            Error::ZeroSize { op } => f.debug_struct("ZeroSize").field("op", op).finish(),
        }?;
        write!(f, ": {self}")
    }
}

impl Error {
    /// The errno the kernel returned, for [`Error::Os`]; `None` for the
    /// errors this crate detects itself before making a system call.
    ///
    /// # Example
    ///
    /// ```
    /// use mmap::{AddrRange, Errno, Error};
    ///
    /// let m = mmap::MemoryMapping::new_private(4096)?;
    /// // MADV_REMOVE needs shared (shmem, hugetlbfs, ...) memory.
    /// let err = m.remove_range(0, 4096).unwrap_err();
    /// assert_eq!(err.errno(), Some(Errno::EINVAL));
    /// let at = AddrRange::new(m.as_ptr() as usize, 4096);
    /// assert_eq!(
    ///     err,
    ///     Error::Os { op: "madvise(MADV_REMOVE)", errno: Errno::EINVAL, range: Some(at) }
    /// );
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The address range of an [`Error::Os`] whose call was given one; `None` otherwise.
    pub fn range(&self) -> Option<AddrRange> {
        match self {
            Error::Os { range, .. } => *range,
            _ => None,
        }
    }

    /// The operation that failed, e.g. `"mmap"` or `"write_obj"`.
    pub fn op(&self) -> &'static str {
        match self {
            Error::InvalidAlignment { op, .. }
            | Error::InvalidName { op, .. }
            | Error::InvalidRange { op, .. }
            | Error::LeakedRange { op, .. }
            | Error::OffsetOverflow { op, .. }
            | Error::SizeOverflow { op, .. }
            | Error::Os { op, .. }
            | Error::UnalignedAddress { op, .. }
            | Error::UnalignedOffset { op, .. }
            | Error::Unsupported { op }
            | Error::ZeroSize { op } => op,
        }
    }

    /// Builds [`Error::Os`], with no range, from the calling thread's current `errno`.
    pub(crate) fn last_os(op: &'static str) -> Self {
        Error::Os {
            op,
            errno: Errno::last(),
            range: None,
        }
    }

    /// Builds [`Error::Os`] for a call on `addr..addr + len` from the calling thread's
    /// current `errno`.
    pub(crate) fn last_os_on(op: &'static str, addr: *const u8, len: usize) -> Self {
        Error::Os {
            op,
            errno: Errno::last(),
            range: Some(AddrRange::new(addr as usize, len)),
        }
    }
}

impl From<Error> for io::Error {
    /// [`Error::Os`] becomes the OS error with the same errno; every other
    /// variant becomes [`io::ErrorKind::InvalidInput`] carrying the `Error`.
    fn from(e: Error) -> io::Error {
        match e {
            Error::Os { errno, .. } => io::Error::from_raw_os_error(errno as i32),
            other => io::Error::new(io::ErrorKind::InvalidInput, other),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_display_names_op_range_and_errno() {
        let e = Error::Os {
            op: "madvise(MADV_REMOVE)",
            errno: Errno::EINVAL,
            range: Some(AddrRange::new(0x10000, 0x2000)),
        };
        assert_eq!(
            e.to_string(),
            "madvise(MADV_REMOVE) on 0x10000..0x12000 failed: EINVAL: Invalid argument"
        );
        assert_eq!(e.errno(), Some(Errno::EINVAL));
        assert_eq!(e.range(), Some(AddrRange::new(0x10000, 0x2000)));
        assert_eq!(e.op(), "madvise(MADV_REMOVE)");
        // A call on a descriptor has no range.
        let s = Error::Os {
            op: "ftruncate",
            errno: Errno::EPERM,
            range: None,
        }
        .to_string();
        assert_eq!(s, "ftruncate failed: EPERM: Operation not permitted");
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn debug_keeps_the_variant_and_adds_the_message() {
        let e = Error::Os {
            op: "mmap",
            errno: Errno::ENOMEM,
            range: None,
        };
        let d = format!("{e:?}");
        assert!(
            d.starts_with("Os { op: \"mmap\", errno: ENOMEM, range: None }: mmap failed: ENOMEM"),
            "{d}"
        );
        assert!(d.ends_with(&e.to_string()), "{d}");
        assert_eq!(
            format!("{:?}", Error::ZeroSize { op: "mmap" }),
            "ZeroSize { op: \"mmap\" }: mmap: size is zero"
        );
        // What `fn main() -> Result<(), Error>` prints after "Error: ".
        let r: Result<()> = Err(Error::InvalidRange {
            op: "msync",
            offset: 1,
            count: 2,
            size: 3,
        });
        let d = format!("{r:?}");
        assert!(
            d.contains("}: msync: range 0x1 + 0x2 is outside the region of 0x3 bytes"),
            "{d}"
        );
    }

    #[test]
    fn check_errors_have_no_errno() {
        let e = Error::InvalidRange {
            op: "msync",
            offset: 1,
            count: 2,
            size: 3,
        };
        assert_eq!(e.errno(), None);
        assert_eq!(e.range(), None);
        assert_eq!(e.op(), "msync");
        assert_eq!(
            e.to_string(),
            "msync: range 0x1 + 0x2 is outside the region of 0x3 bytes"
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    }
}
