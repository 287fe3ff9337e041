//! Checks shared by every operation on an address range.

use crate::error::{Error, Operation, Result};

/// The kernel's `validate_range` rules that can be checked without a system call: `start` page
/// aligned, `len` a non-zero multiple of the page size, no wrap-around. (The kernel additionally
/// checks huge-page alignment on hugetlb and the process's address-space limit.)
pub(crate) fn check(op: Operation, start: usize, len: usize) -> Result<()> {
    let mask = mmap::pagesize() - 1;
    let reason = if len == 0 {
        "the length is zero"
    } else if start & mask != 0 {
        "the start address is not page aligned"
    } else if len & mask != 0 {
        "the length is not a multiple of the page size"
    } else if start.checked_add(len).is_none() {
        "the range wraps around the end of the address space"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument { op, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let op = Operation::Copy;
        let ps = mmap::pagesize();
        assert!(check(op, ps, ps).is_ok());
        assert!(check(op, ps, 0).is_err());
        assert!(check(op, ps + 1, ps).is_err());
        assert!(check(op, ps, ps + 1).is_err());
        assert!(check(op, usize::MAX - ps + 1, 2 * ps).is_err());
    }
}
