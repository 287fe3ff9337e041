//! The crate's shared arithmetic: the system page size, the one range check (`offset..offset +
//! count` inside a region) and rounding up to a page.

use std::sync::OnceLock;

use crate::{Error, Result};

/// The system page size (`sysconf(_SC_PAGESIZE)`), read once and cached.
///
/// # Example
///
/// ```
/// assert!(mmap::pagesize().is_power_of_two());
/// ```
pub fn pagesize() -> usize {
    static PAGE_SIZE: OnceLock<usize> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or(4096)
    })
}

/// The one range check of the crate: `offset..offset + count` must lie inside
/// a region of `size` bytes. Returns the end of the range.
pub(crate) fn check_range(
    op: &'static str,
    size: usize,
    offset: usize,
    count: usize,
) -> Result<usize> {
    match offset.checked_add(count) {
        Some(end) if end <= size => Ok(end),
        _ => Err(Error::InvalidRange {
            op,
            offset,
            count,
            size,
        }),
    }
}

/// [`check_range`] plus: `offset` must be a multiple of `page_size`, as the
/// page-granular system calls (madvise, mprotect, msync, mlock) require.
pub(crate) fn check_page_range(
    op: &'static str,
    size: usize,
    page_size: usize,
    offset: usize,
    count: usize,
) -> Result<usize> {
    let end = check_range(op, size, offset, count)?;
    if offset % page_size != 0 {
        return Err(Error::UnalignedOffset {
            op,
            offset: offset as u64,
            align: page_size as u64,
        });
    }
    Ok(end)
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn round_up(value: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_edges() {
        assert_eq!(check_range("t", 10, 0, 10), Ok(10));
        assert_eq!(check_range("t", 10, 10, 0), Ok(10));
        assert!(check_range("t", 10, 11, 0).is_err());
        assert!(check_range("t", 10, 5, 6).is_err());
        assert_eq!(
            check_range("t", 10, usize::MAX, 2),
            Err(Error::InvalidRange {
                op: "t",
                offset: usize::MAX,
                count: 2,
                size: 10
            })
        );
    }

    #[test]
    fn check_page_range_wants_aligned_offset() {
        let ps = pagesize();
        assert_eq!(check_page_range("t", 4 * ps, ps, ps, 1), Ok(ps + 1));
        assert_eq!(
            check_page_range("t", 4 * ps, ps, 1, 1),
            Err(Error::UnalignedOffset {
                op: "t",
                offset: 1,
                align: ps as u64
            })
        );
        // The range is checked first.
        assert!(matches!(
            check_page_range("t", ps, ps, 1, ps),
            Err(Error::InvalidRange { .. })
        ));
    }

    #[test]
    fn round_up_overflows_to_none() {
        assert_eq!(round_up(1, 4096), Some(4096));
        assert_eq!(round_up(4096, 4096), Some(4096));
        assert_eq!(round_up(0, 4096), Some(0));
        assert_eq!(round_up(usize::MAX - 10, 4096), None);
    }

    #[test]
    fn pagesize_matches_sysconf() {
        // SAFETY: no preconditions.
        let s = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(pagesize() as libc::c_long, s);
    }
}
