//! The partial-progress rule of the range ioctls (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`,
//! `UFFDIO_CONTINUE`, `UFFDIO_POISON`, `UFFDIO_MOVE`): [`range_outcome`] reads what the kernel
//! left in the output field, and `Uffd::resolve_ioctl` issues a range ioctl and applies it. The
//! rule itself is described on [`Error`] and in the `ops` module.

use std::os::fd::AsFd;

use nix::errno::Errno;
use userfaultfd_sys as sys;

use crate::error::{AddrRange, Error, Operation, Result};
use crate::{range, raw, Uffd};

/// The partial-progress rule (see [`Error`]) as a pure function: what a range
/// ioctl's outcome means, given the errno it failed with (`None` on success), the value the
/// kernel left in its output field (pre-set to 0), the requested length and the destination.
///
/// Every range method of [`Uffd`] applies this; it is public so that callers issuing the raw
/// ioctls themselves (or fuzzers) get the same interpretation.
///
/// ```
/// use userfaultfd::{range_outcome, Errno, Error, Operation};
/// assert_eq!(range_outcome(Operation::Copy, None, 8192, 8192, 0x1000).unwrap(), 8192);
/// let e = range_outcome(Operation::Copy, Some(Errno::EAGAIN), -11, 8192, 0x1000).unwrap_err();
/// assert!(matches!(e, Error::MappingChanging { .. }));
/// ```
///
/// # Errors
///
/// [`Error::PartialProgress`], [`Error::AlreadyMapped`], [`Error::MappingChanging`] or
/// [`Error::Os`], as [`Error`] describes.
pub fn range_outcome(
    op: Operation,
    errno: Option<Errno>,
    field: i64,
    len: usize,
    dst: usize,
) -> Result<usize> {
    match errno {
        None => Ok(len),
        Some(errno) if field > 0 && (field as u64) < len as u64 => Err(Error::PartialProgress {
            op,
            dst,
            done: field as usize,
            len,
            errno,
        }),
        Some(Errno::EEXIST) => Err(Error::AlreadyMapped { op, addr: dst }),
        Some(Errno::EAGAIN) => Err(Error::MappingChanging { op }),
        Some(errno) => Err(Error::Os {
            op,
            errno,
            range: Some(AddrRange::new(dst, len)),
        }),
    }
}

/// The argument struct of a range ioctl, and where the kernel reports its progress.
pub(crate) trait RangeArg {
    /// The output field: bytes done, or `-errno` when nothing was done.
    fn progress(&self) -> i64;
}

macro_rules! range_arg {
    ($($ty:ident . $field:ident),*) => {
        $(impl RangeArg for sys::$ty {
            fn progress(&self) -> i64 {
                self.$field
            }
        })*
    };
}
range_arg!(
    uffdio_copy.copy,
    uffdio_zeropage.zeropage,
    uffdio_continue.mapped,
    uffdio_poison.updated,
    uffdio_move.move_
);

impl Uffd {
    /// Issues the range ioctl `request` (operation `op`) on `arg`, whose destination is
    /// `dst..dst+len`: checks the range first, then reads the outcome through the
    /// partial-progress rule ([`range_outcome`]).
    ///
    /// # Safety
    ///
    /// `arg` is the argument struct `request` takes, describing `dst..dst+len`, and the caller
    /// vouches for the ioctl's effect on memory (the range-op's own safety contract).
    pub(crate) unsafe fn resolve_ioctl<T: RangeArg>(
        &self,
        op: Operation,
        request: u32,
        dst: usize,
        len: usize,
        arg: &mut T,
    ) -> Result<usize> {
        range::check(op, dst, len)?;
        // SAFETY: `arg` is a live argument struct of `request` (the caller's contract), which the
        // kernel reads and writes; the memory effects are the caller's to vouch for.
        let ret = unsafe { raw::ioctl(self.as_fd(), request, arg) };
        range_outcome(op, ret.err(), arg.progress(), len, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: Operation = Operation::Copy;

    #[test]
    fn full_success_is_len() {
        assert_eq!(range_outcome(OP, None, 8192, 8192, 0x1000).unwrap(), 8192);
    }

    #[test]
    fn partial_progress_reports_bytes_done() {
        let e = range_outcome(OP, Some(Errno::EAGAIN), 4096, 8192, 0x1000).unwrap_err();
        assert!(matches!(
            e,
            Error::PartialProgress {
                done: 4096,
                len: 8192,
                errno: Errno::EAGAIN,
                ..
            }
        ));
    }

    #[test]
    fn negative_field_is_never_a_byte_count() {
        let e =
            range_outcome(OP, Some(Errno::EAGAIN), -(libc::EAGAIN as i64), 8192, 0).unwrap_err();
        assert!(matches!(e, Error::MappingChanging { .. }));
        assert_eq!(e.bytes_done(), 0);
    }

    #[test]
    fn eexist_without_progress_is_already_mapped() {
        let e = range_outcome(
            OP,
            Some(Errno::EEXIST),
            -(libc::EEXIST as i64),
            4096,
            0x5000,
        )
        .unwrap_err();
        assert!(matches!(e, Error::AlreadyMapped { addr: 0x5000, .. }));
    }

    #[test]
    fn untouched_field_means_early_rejection() {
        let e = range_outcome(OP, Some(Errno::EINVAL), 0, 4096, 0).unwrap_err();
        assert!(matches!(
            e,
            Error::Os {
                errno: Errno::EINVAL,
                ..
            }
        ));
    }

    #[test]
    fn field_claiming_more_than_len_is_not_partial() {
        let e = range_outcome(OP, Some(Errno::EIO), 1 << 40, 4096, 0).unwrap_err();
        assert!(matches!(
            e,
            Error::Os {
                errno: Errno::EIO,
                ..
            }
        ));
    }
}
