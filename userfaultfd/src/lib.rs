//! Linux userfaultfd: handle page faults of your own process in user space.
//!
//! Create a [`Uffd`] with a [`UffdBuilder`], register address ranges with it, and serve the
//! [`Event`]s it reports from a handler thread by resolving faults with [`Uffd::copy`],
//! [`Uffd::zeropage`], [`Uffd::r#continue`](struct.Uffd.html#method.continue), [`Uffd::r#move`](struct.Uffd.html#method.move), [`Uffd::poison`] or
//! [`Uffd::remove_write_protection`]. Write-protect dirty tracking without faults is
//! [`FeatureFlags::WP_ASYNC`] plus [`PageMap::scan`].
//!
//! Everything in the Linux 6.12 uAPI is always compiled: what the running kernel supports is
//! found at run time ([`UffdBuilder::probe_features`], the ioctls [`Uffd::register`] returns),
//! not by Cargo features. Each item names the kernel version it needs.
//!
//! The names follow the `userfaultfd` 0.9 crate, so programs port by changing the dependency
//! line; where 0.9 is wrong this crate differs (owned fds that `into_raw_fd` hands over open, an
//! exact partial-progress rule, distinct errors for `EEXIST`, `EAGAIN`, `ENOSYS`, `EPERM`,
//! `EACCES`): see the README.
//!
//! ```
//! use std::thread;
//! use userfaultfd::{Event, UffdBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let uffd = UffdBuilder::new().user_mode_only(true).create()?;
//! let page = 4096;
//! let mem = mmap::MemoryMappingBuilder::new(4 * page).private().build()?;
//! uffd.register(mem.as_ptr().cast(), 4 * page)?;
//!
//! let addr = mem.as_ptr() as usize;
//! let toucher = thread::spawn(move || {
//!     // SAFETY: the page is mapped; the read blocks until the handler below resolves it.
//!     unsafe { std::ptr::read_volatile((addr + page) as *const u8) }
//! });
//! match uffd.read_event()? {
//!     Some(Event::Pagefault { addr, .. }) => {
//!         let src = [42u8; 4096];
//!         // SAFETY: `addr` is a missing page of a range registered above.
//!         unsafe { uffd.copy(src.as_ptr().cast(), addr, page, true)? };
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! assert_eq!(toucher.join().unwrap(), 42);
//! # Ok(()) }
//! ```
//!
//! # Soundness
//!
//! The rule every public item meets: **a safe function never lets safe code (a) write or remove
//! memory that Rust code may still reference, (b) take ownership of, or close, a descriptor the
//! caller did not hand over, or (c) make memory that Rust code may reference fault with
//! `SIGBUS`/`SIGSEGV`.** Where an operation could do that given the wrong address, it is an
//! `unsafe fn` with a `# Safety` section, and a safe form over an owned
//! [`MappedRegion`](mmap::MappedRegion) exists. A `MappedRegion` (an `mmap::MemoryMapping`, an
//! arena) is memory that no Rust reference ever points into: the program reaches it through
//! volatile copies and system calls only, so its bytes may change, and its pages may even trap,
//! as the owner decides, without breaking anything the compiler assumed.
//!
//! | call | | why |
//! |---|---|---|
//! | [`Uffd::copy`], [`Uffd::zeropage`], [`Uffd::r#move`](struct.Uffd.html#method.move) | `unsafe` | define (or, for MOVE, remove) the bytes at a raw address |
//! | [`Uffd::poison`] | `unsafe` | later accesses raise `SIGBUS` |
//! | [`Uffd::register_unchecked`] | `unsafe` | with [`FeatureFlags::SIGBUS`] a fault in the range raises `SIGBUS` |
//! | [`Uffd::copy_region`], [`Uffd::zeropage_region`], [`Uffd::poison_region`], [`Uffd::register_region`] | safe | the same over an owned `MappedRegion` |
//! | [`Uffd::register`], [`Uffd::register_with_mode`] | safe; [`Error::RequiresUnsafe`] on a `SIGBUS` fd | a fault waits for the handler; closing the fd restores normal faults |
//! | [`Uffd::r#continue`](struct.Uffd.html#method.continue), [`Uffd::write_protect`], [`Uffd::wake`], [`Uffd::unregister`] | safe | map the file's own page, or change no contents |
//! | `Uffd::try_from(OwnedFd)` | safe, checked | only a userfaultfd may become a `Uffd`: its FORK messages name descriptors it then owns |
//! | [`FromRawFd`](std::os::fd::FromRawFd) for `Uffd` | `unsafe` | the caller vouches the fd is a userfaultfd it owns |
//!
//! A fault in a registered range may also *block* until a handler resolves it, or forever if no
//! thread ever does: that is a hang, not a memory error, and it ends when the `Uffd` is closed.
//!
//! References: `userfaultfd(2)`, `ioctl_userfaultfd(2)`, `UFFDIO_*(2const)`,
//! `PAGEMAP_SCAN(2const)`, and the kernel's `Documentation/admin-guide/mm/userfaultfd.rst`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod builder;
mod error;
mod event;
mod flags;
mod ops;
mod pagemap;
mod range;
mod raw;
mod register;
pub mod serve;
mod uffd;

pub use builder::{CreationMethod, UffdBuilder};
pub use error::{Error, Operation, Result};
pub use event::{Event, EventBuffer, Events, FaultKind, Message, ReadWrite};
pub use flags::{
    ContinueMode, CopyMode, FeatureFlags, IoctlFlags, MoveMode, PoisonMode, RegisterMode,
    WriteProtectMode, ZeropageMode,
};
/// The base page size, read once (`sysconf(_SC_PAGESIZE)`); range operations must be aligned to it.
pub use mmap::pagesize as page_size;
pub use ops::range_outcome;
pub use pagemap::{PageCategories, PageMap, PageRegion, ScanFlags, ScanOutcome, ScanRequest};
pub use uffd::Uffd;

/// The errno type of [`Error`] (re-exported from `nix`, as the 0.9 crate used it).
pub use nix::errno::Errno;
/// The thread-id type of [`Event::Pagefault`] (re-exported from `nix`).
pub use nix::unistd::Pid;

/// The raw uAPI this crate is built on.
pub use userfaultfd_sys as sys;
