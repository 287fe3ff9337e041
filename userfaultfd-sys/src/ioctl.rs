//! Ioctl request numbers, computed from direction, type, number and argument size.
//!
//! The kernel packs an ioctl request as `dir << DIRSHIFT | size << SIZESHIFT | type << 8 | nr`,
//! but the widths and the direction codes differ between architecture families (see each
//! architecture's `include/uapi/asm/ioctl.h` and `include/uapi/asm-generic/ioctl.h`):
//!
//! | family | size bits | dir bits | `_IOC_NONE` | `_IOC_READ` | `_IOC_WRITE` |
//! |---|---|---|---|---|---|
//! | [`Generic`](IoctlEncoding::Generic) (x86, arm, arm64, riscv, s390, loongarch, ...) | 14 | 2 | 0 | 2 | 1 |
//! | [`PowerPc`](IoctlEncoding::PowerPc) | 13 | 3 | 1 | 2 | 4 |
//! | [`Mips`](IoctlEncoding::Mips) | 13 | 3 | 1 | 2 | 4 |
//! | [`Sparc`](IoctlEncoding::Sparc) | 13 | 3 | 1 | 2 | 4 |
//!
//! powerpc, mips and sparc share the numbers but are kept apart so each family's rule is spelled
//! out and tested on its own. Every function here is a pure `const fn`, so all families are
//! unit-tested on any host, and the request constants below work in `match` arms.

/// Direction of an ioctl's argument, as the `_IO`/`_IOR`/`_IOW`/`_IOWR` macros name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoctlDir {
    /// `_IO`: no argument is transferred through memory.
    None,
    /// `_IOR`: the kernel writes the argument (user space reads it).
    Read,
    /// `_IOW`: the kernel reads the argument (user space writes it).
    Write,
    /// `_IOWR`: both.
    ReadWrite,
}

/// One architecture family's layout of an ioctl request number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoctlEncoding {
    /// `include/uapi/asm-generic/ioctl.h`: x86, arm, arm64, riscv, s390, loongarch and others.
    Generic,
    /// `arch/powerpc/include/uapi/asm/ioctl.h`.
    PowerPc,
    /// `arch/mips/include/uapi/asm/ioctl.h`.
    Mips,
    /// `arch/sparc/include/uapi/asm/ioctl.h`.
    Sparc,
}

impl IoctlEncoding {
    /// The family of the architecture this crate is compiled for.
    pub const NATIVE: IoctlEncoding = native_encoding();

    /// Number of bits of the argument-size field.
    pub const fn size_bits(self) -> u32 {
        match self {
            IoctlEncoding::Generic => 14,
            IoctlEncoding::PowerPc | IoctlEncoding::Mips | IoctlEncoding::Sparc => 13,
        }
    }

    /// The value the direction field takes for `dir`.
    pub const fn dir_code(self, dir: IoctlDir) -> u32 {
        let (none, read, write) = match self {
            IoctlEncoding::Generic => (0, 2, 1),
            IoctlEncoding::PowerPc | IoctlEncoding::Mips | IoctlEncoding::Sparc => (1, 2, 4),
        };
        match dir {
            IoctlDir::None => none,
            IoctlDir::Read => read,
            IoctlDir::Write => write,
            IoctlDir::ReadWrite => read | write,
        }
    }

    /// `_IOC(dir, ty, nr, size)` for this family.
    ///
    /// Panics (at compile time when used in a `const`) if `size` does not fit the size field or
    /// `ty`/`nr` do not fit a byte, as the kernel's `_IOC_TYPECHECK` would refuse to compile.
    pub const fn ioc(self, dir: IoctlDir, ty: u32, nr: u32, size: usize) -> u32 {
        assert!(ty <= 0xff && nr <= 0xff, "ioctl type and number are 8 bits");
        assert!(
            size < (1usize << self.size_bits()),
            "ioctl argument too large for the size field"
        );
        let size_shift = 16;
        let dir_shift = size_shift + self.size_bits();
        (self.dir_code(dir) << dir_shift) | ((size as u32) << size_shift) | (ty << 8) | nr
    }
}

const fn native_encoding() -> IoctlEncoding {
    if cfg!(any(target_arch = "powerpc", target_arch = "powerpc64")) {
        IoctlEncoding::PowerPc
    } else if cfg!(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "mips32r6",
        target_arch = "mips64r6"
    )) {
        IoctlEncoding::Mips
    } else if cfg!(any(target_arch = "sparc", target_arch = "sparc64")) {
        IoctlEncoding::Sparc
    } else {
        IoctlEncoding::Generic
    }
}

/// `_IO(ty, nr)` for the native family.
pub const fn io(ty: u32, nr: u32) -> u32 {
    IoctlEncoding::NATIVE.ioc(IoctlDir::None, ty, nr, 0)
}

/// `_IOR(ty, nr, T)` for the native family.
pub const fn ior<T>(ty: u32, nr: u32) -> u32 {
    IoctlEncoding::NATIVE.ioc(IoctlDir::Read, ty, nr, core::mem::size_of::<T>())
}

/// `_IOW(ty, nr, T)` for the native family.
pub const fn iow<T>(ty: u32, nr: u32) -> u32 {
    IoctlEncoding::NATIVE.ioc(IoctlDir::Write, ty, nr, core::mem::size_of::<T>())
}

/// `_IOWR(ty, nr, T)` for the native family.
pub const fn iowr<T>(ty: u32, nr: u32) -> u32 {
    IoctlEncoding::NATIVE.ioc(IoctlDir::ReadWrite, ty, nr, core::mem::size_of::<T>())
}

/// `'f'`, the type byte of `PAGEMAP_SCAN` (`PROCFS_IOCTL_MAGIC` in `linux/fs.h`).
pub const PROCFS_IOCTL_MAGIC: u32 = b'f' as u32;

/// The name of an ioctl request number of this crate (`"UFFDIO_COPY"` for
/// [`UFFDIO_COPY`](crate::UFFDIO_COPY)), for messages and logs; `None` for other numbers.
pub fn name(request: u32) -> Option<&'static str> {
    crate::requests::ROWS
        .iter()
        .find(|row| row.request(IoctlEncoding::NATIVE) == request)
        .map(|row| row.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use IoctlDir::*;
    use IoctlEncoding::*;

    #[test]
    fn direction_codes_per_family() {
        // _IOW differs most: generic puts 1 in bits 30..32, the others 4 in bits 29..32.
        assert_eq!(Generic.ioc(Write, 0xaa, 1, 16), 0x4010_aa01);
        assert_eq!(PowerPc.ioc(Write, 0xaa, 1, 16), 0x8010_aa01);
        assert_eq!(Mips.ioc(Write, 0xaa, 1, 16), 0x8010_aa01);
        assert_eq!(Sparc.ioc(Write, 0xaa, 1, 16), 0x8010_aa01);
        assert_eq!(Generic.ioc(None, 0xaa, 0, 0), 0xaa00);
        assert_eq!(Sparc.ioc(None, 0xaa, 0, 0), 0x2000_aa00);
    }

    #[test]
    fn largest_size_fits_each_family() {
        assert_eq!(Generic.ioc(Read, 1, 2, (1 << 14) - 1), 0xbfff_0102);
        assert_eq!(PowerPc.ioc(Read, 1, 2, (1 << 13) - 1), 0x5fff_0102);
    }

    #[test]
    #[should_panic(expected = "too large")]
    fn oversized_argument_is_refused() {
        let _ = PowerPc.ioc(Read, 1, 2, 1 << 13);
    }
}
