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
//! The names follow the `userfaultfd` 0.9 crate; its error enum does not (code that matches on
//! 0.9's `Error` variants must be ported, see the README's "Coming from userfaultfd 0.9"), and
//! where 0.9 is wrong this crate differs (owned fds that `into_raw_fd` hands over open, an exact
//! partial-progress rule, distinct errors for `EEXIST`, `EAGAIN`, `ENOSYS`, `EPERM`, `EACCES`).
//!
//! The mappings to register come from the [`mmap`] crate, re-exported here so that depending
//! on `userfaultfd` alone is enough (`mmap` on crates.io is an unrelated crate).
//!
//! # Example
//!
//! A handler thread serves the missing pages of a private mapping, each with its own bytes, while
//! the main thread reads them; every first touch waits until the handler has copied the page in.
//!
//! ```
//! use std::thread;
//! use userfaultfd::mmap::MemoryMapping;
//! use userfaultfd::{Error, Event, RegisterMode, UffdBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let page = userfaultfd::page_size();
//! let pages = 4;
//! // User-mode-only faults need no privilege (Linux 5.11); see the README's "Permissions".
//! let uffd = UffdBuilder::new().user_mode_only(true).create()?;
//! let mem = MemoryMapping::new_private(pages * page)?;
//! uffd.register_region(&mem, RegisterMode::MISSING)?;
//!
//! thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
//!     let handler = s.spawn(|| -> userfaultfd::Result<()> {
//!         let base = mem.as_ptr() as usize;
//!         // Count pages, not messages: a fault may be reported again after it was resolved.
//!         let mut served = vec![false; pages];
//!         while served.contains(&false) {
//!             let Some(Event::Pagefault { addr, .. }) = uffd.read_event()? else {
//!                 continue; // no other event was asked for
//!             };
//!             let index = (addr as usize - base) / page;
//!             let data = vec![index as u8 + 1; page];
//!             match uffd.copy_region(&mem, index * page, &data, true) {
//!                 Ok(_) => {}
//!                 // Already resolved: wake whoever still waits on it.
//!                 Err(Error::AlreadyMapped { .. }) => uffd.wake(addr, page)?,
//!                 Err(e) => return Err(e),
//!             }
//!             served[index] = true;
//!         }
//!         Ok(())
//!     });
//!     for i in 0..pages {
//!         assert_eq!(mem.read_obj::<u8>(i * page + 7)?, i as u8 + 1);
//!     }
//!     handler.join().expect("the handler panicked")?;
//!     Ok(())
//! })?;
//! # Ok(()) }
//! ```
//!
//! The `userfaultfd::serve` runtime is this loop done fast and completely (prefetch,
//! background fill, events, failures): see [`serve`].
//!
//! With the `tokio` feature, `AsyncUffd` awaits a non-blocking fd's events on a tokio runtime,
//! and `serve::AsyncServer` serves regions from async sources (object storage) with many
//! fetches in flight at once.
//!
//! # Soundness
//!
//! The rule every public item meets: **a safe function never lets safe code (a) write or remove
//! memory that Rust code may still reference, (b) take ownership of, or close, a descriptor the
//! caller did not hand over, or (c) make memory that Rust code may reference fault with
//! `SIGBUS`/`SIGSEGV`.** Where an operation could do that given the wrong address, it is an
//! `unsafe fn` with a `# Safety` section, and a safe form over an owned
//! [`MappedRegion`](mmap::MappedRegion) exists. A `MappedRegion` (a
//! [`userfaultfd::mmap::MemoryMapping`](mmap::MemoryMapping), an arena) is memory that no Rust reference ever points into: the program reaches it through
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
//! # Dependencies in the public API
//!
//! Two types of `nix` appear in this crate's public API: [`Errno`], the errno of [`Error`], and
//! [`Pid`], the faulting thread of [`Event::Pagefault`]. Both are re-exported at the crate root;
//! name them as `userfaultfd::Errno` and `userfaultfd::Pid`, and no `nix` dependency of your own
//! is needed (nor can its version disagree with this crate's). The errors of the mapping crate
//! ([`mmap::Error::Os`]) use the same `Errno`. A new major version of `nix` changes these types,
//! so upgrading `nix` to one is a new major version of this crate.
//!
//! ```
//! use userfaultfd::{Errno, Error, Operation, Pid};
//!
//! let e = Error::Os { op: Operation::Copy, errno: Errno::ENOENT, range: None };
//! assert_eq!(e.errno(), Some(Errno::ENOENT));
//! // The mapping crate's errno is the same type.
//! let m = userfaultfd::mmap::MemoryMapping::new_private(userfaultfd::page_size())?;
//! let err = m.remove_range(0, userfaultfd::page_size()).unwrap_err();
//! let errno: Option<Errno> = err.errno();
//! assert_eq!(errno, Some(Errno::EINVAL));
//! // A thread id, as `Event::Pagefault::thread_id` reports it.
//! let me: Pid = Pid::this();
//! assert!(me.as_raw() > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # References
//!
//! * [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html): creating the
//!   fd, reading `struct uffd_msg`, the permission rules;
//! * [`ioctl_userfaultfd(2)`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html):
//!   every `UFFDIO_*` ioctl and its errors (split into one `UFFDIO_*(2const)` page per ioctl in
//!   man-pages 6.10 and later);
//! * `PAGEMAP_SCAN(2const)`, for [`PageMap::scan`];
//! * the kernel's [`Documentation/admin-guide/mm/userfaultfd.rst`](https://docs.kernel.org/admin-guide/mm/userfaultfd.html).

#[cfg(feature = "tokio")]
mod async_uffd;
mod builder;
mod error;
mod event;
mod flags;
mod ops;
mod outcome;
mod pagemap;
mod range;
mod raw;
mod register;
pub mod serve;
mod uffd;

#[cfg(feature = "tokio")]
pub use async_uffd::{AsyncUffd, EventStream};
pub use builder::{CreationMethod, UffdBuilder};
pub use error::{AddrRange, Error, Operation, Result};
pub use event::{Event, EventBuffer, Events, FaultKind, Message, ReadWrite};
pub use flags::{
    ContinueMode, CopyMode, FeatureFlags, IoctlFlags, MoveMode, PoisonMode, RegisterMode,
    WriteProtectMode, ZeropageMode,
};
pub use outcome::range_outcome;
pub use pagemap::{PageCategories, PageMap, PageRegion, ScanFlags, ScanOutcome, ScanRequest};
pub use uffd::Uffd;

/// The errno type of [`Error`] (re-exported from `nix`, as the 0.9 crate used it; see
/// "Dependencies in the public API" in the crate docs).
pub use nix::errno::Errno;
// The thread-id type of `Event::Pagefault` (re-exported from `nix`). No doc comment here:
// rustdoc would put it before nix's own summary and show two.
pub use nix::unistd::Pid;

/// The mapping crate of this workspace, re-exported so that a program depending only on
/// `userfaultfd` names it `userfaultfd::mmap` (`mmap` on crates.io is an unrelated crate). Its
/// mappings are the owned [`MappedRegion`](mmap::MappedRegion)s that the safe `*_region`
/// methods take. Its own documentation follows.
///
#[doc(inline)]
pub use mmap;

/// The base page size (`sysconf(_SC_PAGESIZE)`, read once): the addresses and lengths of the
/// range operations must be multiples of it (of the huge page size on hugetlb mappings).
///
/// ```
/// let page = userfaultfd::page_size();
/// assert!(page.is_power_of_two() && page >= 4096);
/// ```
#[inline]
pub fn page_size() -> usize {
    mmap::pagesize()
}

/// The raw uAPI this crate is built on.
pub use userfaultfd_sys as sys;
