//! The ioctl request numbers of this crate, declared once.
//!
//! Each row of the [`requests!`] invocation below gives an ioctl's name, direction, type byte,
//! number and argument type, the Linux version that brought it and what it does. The macro turns
//! the rows into
//!
//! - the public constants (`UFFDIO_COPY`, ...), computed for the target's ioctl encoding by
//!   [`IoctlEncoding::ioc`](crate::ioctl::IoctlEncoding::ioc);
//! - [`ioctl::name`](crate::ioctl::name), the name of a request number (for messages);
//! - a crate-private table of the rows, which the unit tests walk: every encoding against
//!   hand-worked values, and every constant against what a C program compiled against the same
//!   headers prints.
//!
//! `cargo xtask bindgen` takes its list of requests for that C program from the headers
//! themselves, so nothing else restates this list.

use crate::ioctl::{IoctlDir, IoctlEncoding, PROCFS_IOCTL_MAGIC};
use crate::*;
use core::mem::size_of;

/// One row: what the `_IO*` macro of the uAPI header is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) dir: IoctlDir,
    pub(crate) ty: u32,
    pub(crate) nr: u32,
    pub(crate) size: usize,
}

impl Row {
    /// The request number in `encoding`.
    pub(crate) const fn request(&self, encoding: IoctlEncoding) -> u32 {
        encoding.ioc(self.dir, self.ty, self.nr, self.size)
    }
}

/// `requests! { (NAME, Dir, type, nr, ArgType) "doc"; ... }`: `ArgType` is `()` for `_IO`.
macro_rules! requests {
    ($( ($name:ident, $dir:ident, $ty:expr, $nr:expr, $arg:ty) $doc:literal; )*) => {
        $(
            #[doc = $doc]
            pub const $name: u32 = ROW_OF.$name.request(IoctlEncoding::NATIVE);
        )*

        /// Every row, in declaration order.
        pub(crate) const ROWS: &[Row] = &[$(ROW_OF.$name),*];

        #[allow(non_snake_case)]
        struct RowOf { $($name: Row),* }

        const ROW_OF: RowOf = RowOf {
            $($name: Row {
                name: stringify!($name),
                dir: IoctlDir::$dir,
                ty: $ty,
                nr: $nr,
                size: size_of::<$arg>(),
            }),*
        };
    };
}

requests! {
    (UFFDIO_API, ReadWrite, UFFDIO, _UFFDIO_API, uffdio_api)
        "`UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`, the handshake (Linux 4.3).";
    (UFFDIO_REGISTER, ReadWrite, UFFDIO, _UFFDIO_REGISTER, uffdio_register)
        "`UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)` (Linux 4.3).";
    (UFFDIO_UNREGISTER, Read, UFFDIO, _UFFDIO_UNREGISTER, uffdio_range)
        "`UFFDIO_UNREGISTER`: `_IOR(0xAA, 0x01, struct uffdio_range)` (Linux 4.3; `_IOR` by a \
         historical mistake kept for ABI compatibility).";
    (UFFDIO_WAKE, Read, UFFDIO, _UFFDIO_WAKE, uffdio_range)
        "`UFFDIO_WAKE`: `_IOR(0xAA, 0x02, struct uffdio_range)` (Linux 4.3).";
    (UFFDIO_COPY, ReadWrite, UFFDIO, _UFFDIO_COPY, uffdio_copy)
        "`UFFDIO_COPY`: `_IOWR(0xAA, 0x03, struct uffdio_copy)` (Linux 4.3).";
    (UFFDIO_ZEROPAGE, ReadWrite, UFFDIO, _UFFDIO_ZEROPAGE, uffdio_zeropage)
        "`UFFDIO_ZEROPAGE`: `_IOWR(0xAA, 0x04, struct uffdio_zeropage)` (Linux 4.3).";
    (UFFDIO_MOVE, ReadWrite, UFFDIO, _UFFDIO_MOVE, uffdio_move)
        "`UFFDIO_MOVE`: `_IOWR(0xAA, 0x05, struct uffdio_move)` (Linux 6.8).";
    (UFFDIO_WRITEPROTECT, ReadWrite, UFFDIO, _UFFDIO_WRITEPROTECT, uffdio_writeprotect)
        "`UFFDIO_WRITEPROTECT`: `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)` (Linux 5.7).";
    (UFFDIO_CONTINUE, ReadWrite, UFFDIO, _UFFDIO_CONTINUE, uffdio_continue)
        "`UFFDIO_CONTINUE`: `_IOWR(0xAA, 0x07, struct uffdio_continue)` (Linux 5.13).";
    (UFFDIO_POISON, ReadWrite, UFFDIO, _UFFDIO_POISON, uffdio_poison)
        "`UFFDIO_POISON`: `_IOWR(0xAA, 0x08, struct uffdio_poison)` (Linux 6.6).";
    (USERFAULTFD_IOC_NEW, None, USERFAULTFD_IOC, 0x00, ())
        "`USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)` on `/dev/userfaultfd`; the argument (passed by \
         value) is the `userfaultfd(2)` flags and the result a new userfaultfd (Linux 6.1).";
    (PAGEMAP_SCAN, ReadWrite, PROCFS_IOCTL_MAGIC, 16, pm_scan_arg)
        "`PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)` on `/proc/<pid>/pagemap` (Linux 6.7).";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioctl::IoctlEncoding::*;

    /// Values worked out by hand from each family's `ioctl.h` rules:
    /// generic = dir<<30 | size<<16 | type<<8 | nr with NONE=0, WRITE=1, READ=2;
    /// powerpc/mips/sparc = dir<<29 | size<<16 | type<<8 | nr with NONE=1, READ=2, WRITE=4.
    const EXPECTED: [(&str, u32, u32); 12] = [
        // name, generic, powerpc/mips/sparc
        ("UFFDIO_API", 0xc018_aa3f, 0xc018_aa3f),
        ("UFFDIO_REGISTER", 0xc020_aa00, 0xc020_aa00),
        ("UFFDIO_UNREGISTER", 0x8010_aa01, 0x4010_aa01),
        ("UFFDIO_WAKE", 0x8010_aa02, 0x4010_aa02),
        ("UFFDIO_COPY", 0xc028_aa03, 0xc028_aa03),
        ("UFFDIO_ZEROPAGE", 0xc020_aa04, 0xc020_aa04),
        ("UFFDIO_MOVE", 0xc028_aa05, 0xc028_aa05),
        ("UFFDIO_WRITEPROTECT", 0xc018_aa06, 0xc018_aa06),
        ("UFFDIO_CONTINUE", 0xc020_aa07, 0xc020_aa07),
        ("UFFDIO_POISON", 0xc020_aa08, 0xc020_aa08),
        ("USERFAULTFD_IOC_NEW", 0x0000_aa00, 0x2000_aa00),
        ("PAGEMAP_SCAN", 0xc060_6610, 0xc060_6610),
    ];

    #[test]
    fn every_family_matches_hand_worked_values() {
        assert_eq!(ROWS.len(), EXPECTED.len());
        for (row, (name, generic, other)) in ROWS.iter().zip(EXPECTED) {
            assert_eq!(row.name, name);
            assert_eq!(row.request(Generic), generic, "{name} generic");
            for fam in [PowerPc, Mips, Sparc] {
                assert_eq!(row.request(fam), other, "{name} {fam:?}");
            }
        }
    }

    #[test]
    fn constants_are_the_native_rows() {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(IoctlEncoding::NATIVE, Generic);
        assert_eq!(
            UFFDIO_COPY,
            ROW_OF.UFFDIO_COPY.request(IoctlEncoding::NATIVE)
        );
        for row in ROWS {
            assert_eq!(
                crate::ioctl::name(row.request(IoctlEncoding::NATIVE)),
                Some(row.name)
            );
        }
        assert_eq!(crate::ioctl::name(0), None);
    }
}
