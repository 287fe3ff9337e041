//! Memory protection (`PROT_*` bits).

use std::fmt;

/// Access permissions of a mapping: the `PROT_READ`, `PROT_WRITE` and
/// `PROT_EXEC` bits of mmap(2) and mprotect(2).
///
/// Built with the constructors and chained setters:
///
/// ```
/// use mmap::Protection;
///
/// let p = Protection::read().set_write();
/// assert_eq!(p, Protection::read_write());
/// assert_eq!(libc::c_int::from(p), libc::PROT_READ | libc::PROT_WRITE);
/// assert_eq!(Protection::from(libc::PROT_READ | libc::PROT_EXEC), Protection::read_exec());
/// assert!(Protection::read_write().allows(&Protection::read()));
/// ```
///
/// Note that on most architectures the hardware cannot express write-only or
/// execute-only pages, so the kernel may allow reads of such pages anyway.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Protection {
    read: bool,
    write: bool,
    exec: bool,
}

impl Protection {
    /// No access (`PROT_NONE`): any access faults with `SIGSEGV`.
    pub const fn none() -> Self {
        Protection {
            read: false,
            write: false,
            exec: false,
        }
    }

    /// Read only (`PROT_READ`).
    pub const fn read() -> Self {
        Protection::none().set_read()
    }

    /// Write only (`PROT_WRITE`).
    pub const fn write() -> Self {
        Protection::none().set_write()
    }

    /// Execute only (`PROT_EXEC`).
    pub const fn exec() -> Self {
        Protection::none().set_exec()
    }

    /// Read and write (`PROT_READ | PROT_WRITE`), the default for new mappings.
    pub const fn read_write() -> Self {
        Protection::read().set_write()
    }

    /// Read and execute (`PROT_READ | PROT_EXEC`).
    pub const fn read_exec() -> Self {
        Protection::read().set_exec()
    }

    /// `self` plus read access.
    #[must_use]
    pub const fn set_read(self) -> Self {
        Protection { read: true, ..self }
    }

    /// `self` plus write access.
    #[must_use]
    pub const fn set_write(self) -> Self {
        Protection {
            write: true,
            ..self
        }
    }

    /// `self` plus execute access.
    #[must_use]
    pub const fn set_exec(self) -> Self {
        Protection { exec: true, ..self }
    }

    /// Whether reads are allowed.
    pub const fn is_read(&self) -> bool {
        self.read
    }

    /// Whether writes are allowed.
    pub const fn is_write(&self) -> bool {
        self.write
    }

    /// Whether execution is allowed.
    pub const fn is_exec(&self) -> bool {
        self.exec
    }

    /// Whether every access `other` allows is also allowed by `self`.
    pub const fn allows(&self, other: &Protection) -> bool {
        (self.read || !other.read) && (self.write || !other.write) && (self.exec || !other.exec)
    }

    /// The `PROT_*` bits.
    pub const fn bits(&self) -> libc::c_int {
        let mut bits = libc::PROT_NONE;
        if self.read {
            bits |= libc::PROT_READ;
        }
        if self.write {
            bits |= libc::PROT_WRITE;
        }
        if self.exec {
            bits |= libc::PROT_EXEC;
        }
        bits
    }
}

impl From<libc::c_int> for Protection {
    /// Reads `PROT_READ`, `PROT_WRITE` and `PROT_EXEC` from `prot`; other bits
    /// (such as `PROT_GROWSDOWN`) are ignored.
    fn from(prot: libc::c_int) -> Self {
        Protection {
            read: prot & libc::PROT_READ != 0,
            write: prot & libc::PROT_WRITE != 0,
            exec: prot & libc::PROT_EXEC != 0,
        }
    }
}

impl From<Protection> for libc::c_int {
    /// The `PROT_*` bits, as [`Protection::bits`].
    fn from(p: Protection) -> libc::c_int {
        p.bits()
    }
}

impl fmt::Debug for Protection {
    /// Formats like the permissions column of `/proc/self/maps`: `rw-`, `r-x`, `---`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Protection({}{}{})",
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.exec { 'x' } else { '-' }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_combination() {
        for bits in 0..8 {
            let prot = Protection::from(bits);
            assert_eq!(libc::c_int::from(prot), bits);
        }
    }

    #[test]
    fn constructors_and_setters() {
        assert_eq!(Protection::none().bits(), libc::PROT_NONE);
        assert_eq!(Protection::read().bits(), libc::PROT_READ);
        assert_eq!(Protection::write().bits(), libc::PROT_WRITE);
        assert_eq!(Protection::exec().bits(), libc::PROT_EXEC);
        assert_eq!(Protection::default(), Protection::none());
        assert_eq!(Protection::read().set_write(), Protection::read_write());
        assert_eq!(Protection::exec().set_read(), Protection::read_exec());
        assert!(Protection::read_write().is_write());
        assert!(!Protection::read().is_write());
        assert!(Protection::read_exec().is_exec());
        assert!(Protection::read().is_read());
    }

    #[test]
    fn allows_is_a_subset_test() {
        assert!(Protection::read_write().allows(&Protection::read()));
        assert!(Protection::read_write().allows(&Protection::none()));
        assert!(!Protection::read().allows(&Protection::read_write()));
        assert!(!Protection::read_write().allows(&Protection::exec()));
    }

    #[test]
    fn unknown_bits_are_ignored() {
        assert_eq!(
            Protection::from(libc::PROT_READ | libc::PROT_GROWSDOWN),
            Protection::read()
        );
    }

    #[test]
    fn debug_looks_like_proc_maps() {
        assert_eq!(format!("{:?}", Protection::read_exec()), "Protection(r-x)");
    }
}
