//! RAII memory mappings for Linux, built for userfaultfd users.
//!
//! - [`MemoryMapping`]: an owned mapping (mmap(2)), unmapped on drop. It has
//!   the method names of crosvm's `MemoryMapping` (`new`, `new_protection`,
//!   `from_fd_offset_protection_populate`, `use_dontfork`, `remove_range`,
//!   `drop_page_cache`, `lock_on_fault`, ...) plus what userfaultfd users need:
//!   private anonymous memory ([`MemoryMapping::new_private`]), `MAP_HUGETLB`,
//!   `MAP_NORESERVE`, `MAP_POPULATE`, alignment and fixed addresses through
//!   [`MemoryMappingBuilder`], and mprotect(2) ([`MemoryMapping::set_protection`]).
//! - [`MemoryMappingArena`]: a range reserved up front in which sub-mappings
//!   are placed and replaced.
//! - [`SharedMemory`]: a memfd (memfd_create(2)) with seals. Mapping it twice
//!   gives the second view through which a userfaultfd handler fills page
//!   cache pages before `UFFDIO_CONTINUE`.
//! - [`VolatileSlice`] and the `read_*`/`write_*` methods: bounds-checked
//!   volatile access to mapped memory for [`DataInit`] types.
//! - [`MappedRegion`]: the trait other crates use to get a region's address
//!   and size.
//!
//! # No references into mappings
//!
//! This crate never hands out `&[u8]` or `&mut [u8]` pointing into a mapping.
//! The bytes of mapped memory can change underneath the program: another
//! process or another view of the same memfd writes them, `MADV_DONTNEED`
//! zeroes them, a userfaultfd handler supplies them on first touch. A Rust
//! reference would promise the compiler that they do not change (or that
//! nobody else sees them), which would be false. Instead every access copies
//! with volatile loads and stores, and raw pointers are available through
//! [`MemoryMapping::as_ptr`] for system calls.
//!
//! Touching mapped memory may also *block* or *fault*: a read of a page
//! registered with userfaultfd waits for the handler; a read past the end of
//! a mapped file raises `SIGBUS`; a page made inaccessible with
//! [`MemoryMapping::set_protection`] raises `SIGSEGV`.
//!
//! # Soundness
//!
//! The rule every public item meets: a safe function never lets safe code
//! (a) write or remove memory that Rust code may still reference, (b) take
//! ownership of, or close, a descriptor it was not handed, or (c) make memory
//! that Rust code may reference fault. So every call that maps over an
//! address it does not own (`MAP_FIXED`) is `unsafe`
//! ([`MemoryMappingBuilder::build_fixed`], [`MemoryMapping::new_protection_fixed`],
//! [`MemoryMapping::from_descriptor_offset_protection_fixed`]);
//! [`MemoryMappingArena`] maps only inside its own range (checked with the
//! file's huge page size) and, when a mapping fails, puts its reservation
//! back without replacing anything, or gives the range up rather than ever
//! unmapping memory it cannot vouch for; and descriptors are borrowed
//! (`AsFd`) unless ownership is moved in by value. The memory of a mapping
//! itself is reached only through volatile copies (see above), so a page
//! that its owner protects, removes or lets a userfaultfd handler poison
//! breaks no reference.
//!
//! # Example: two views of one memfd
//!
//! ```
//! use mmap::{MemoryMapping, SharedMemory};
//!
//! let shm = SharedMemory::new("guest-ram", 2 * 4096)?;
//! let guest = MemoryMapping::from_fd(&shm, 2 * 4096)?;
//! let filler = MemoryMapping::from_fd(&shm, 2 * 4096)?;
//! // A handler fills the page through its own view...
//! filler.write_slice(b"page contents", 4096)?;
//! // ...and the other view sees it, since both map the same page cache page.
//! let mut buf = [0u8; 13];
//! guest.read_slice(&mut buf, 4096)?;
//! assert_eq!(&buf, b"page contents");
//! # Ok::<(), mmap::Error>(())
//! ```
//!
//! # Example: private anonymous memory
//!
//! ```
//! use mmap::{MemoryMapping, MemoryMappingBuilder, Protection};
//!
//! // Shorthand...
//! let a = MemoryMapping::new_private(1 << 20)?;
//! // ...for the builder:
//! let b = MemoryMappingBuilder::new(1 << 20)
//!     .private()
//!     .noreserve()
//!     .protection(Protection::read_write())
//!     .align(1 << 20)
//!     .build()?;
//! assert_eq!(b.as_ptr() as usize % (1 << 20), 0);
//! a.write_obj(42u32, 0)?;
//! assert_eq!(a.read_obj::<u32>(0)?, 42);
//! # Ok::<(), mmap::Error>(())
//! ```
//!
//! # Differences from crosvm's `MemoryMapping`
//!
//! - Descriptors are I/O-safe ([`AsFd`](std::os::fd::AsFd) /
//!   [`BorrowedFd`](std::os::fd::BorrowedFd)) instead of raw descriptors.
//! - `align` is `Option<u64>` everywhere (crosvm's
//!   `from_fd_offset_protection_populate` takes `u64` with 0 for none);
//!   `size + align` is overflow-checked, and the over-reserved range is
//!   unmapped on every path.
//! - `MAP_POPULATE` works for anonymous mappings too.
//! - A failing `MADV_DONTDUMP` at creation fails the creation instead of being
//!   ignored. `MADV_MERGEABLE` (KSM) is not applied: it does nothing for the
//!   shared mappings crosvm makes, and merging private memory behind the
//!   caller's back would be surprising.
//! - [`MemoryMapping::use_hugepages`] returns a [`HugePageAdvice`] saying what
//!   it did, and uses the kernel's transparent huge page size instead of 2 MiB.
//! - All `(offset, count)` methods share one range check and one error
//!   ([`Error::InvalidRange`]); page-granular ones also check the offset's
//!   alignment ([`Error::UnalignedOffset`]).
//! - [`MemoryMappingArena`] reserves and removes with `PROT_NONE` (crosvm uses
//!   read-only memory), so stray accesses to holes fault.
//! - A write-sealed memfd is not silently mapped `MAP_PRIVATE`: ask for
//!   [`MemoryMappingBuilder::private`] or read-only protection.
//! - `read_obj`/`write_obj` copy with volatile accesses (crosvm uses plain
//!   unaligned reads); `read_slice`/`write_slice` copy everything or fail
//!   (crosvm returns a short count).
//! - `SharedMemory` does not probe `MFD_NOEXEC_SEAL` (Linux 6.3); with
//!   `vm.memfd_noexec = 2` memfd_create(2) fails with `EACCES`.
//!
//! # Dependencies in the public API
//!
//! One type of another crate appears in this crate's public API: `nix`'s `Errno`, the errno
//! of [`Error::Os`]. It is re-exported as [`mmap::Errno`](Errno); name it through this crate.
//! A new major version of `nix` changes that type, so upgrading `nix` to one is a new major
//! version of this crate (`userfaultfd` follows the same policy, with the same `nix`).
//!
//! ```
//! let err = mmap::MemoryMapping::new_private(4096)?.remove_range(0, 4096).unwrap_err();
//! assert_eq!(err.errno(), Some(mmap::Errno::EINVAL));
//! # Ok::<(), mmap::Error>(())
//! ```
//!
//! Linux only.

mod access;
mod advice;
mod arena;
mod builder;
mod error;
mod huge;
mod mapping;
mod pod;
mod protection;
mod range;
mod raw;
mod region;
mod shm;
mod volatile;

#[cfg(test)]
#[path = "../tests/common/hugetlbfs.rs"]
mod test_hugetlbfs;

pub use arena::MemoryMappingArena;
pub use builder::MemoryMappingBuilder;
pub use error::{AddrRange, Error, Result};
pub use huge::{thp_pmd_size, HugePageAdvice, HugePageSize};
pub use mapping::MemoryMapping;
pub use pod::DataInit;
pub use protection::Protection;
pub use range::pagesize;
pub use region::MappedRegion;
pub use shm::{MemfdSeals, SharedMemory};
pub use volatile::VolatileSlice;

/// The errno type of [`Error::Os`], re-exported from `nix` so that users name it as
/// `mmap::Errno` and need no `nix` dependency of their own (see "Dependencies in the public
/// API" in the crate docs).
pub use nix::errno::Errno;
