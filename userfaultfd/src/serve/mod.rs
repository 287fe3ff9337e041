//! The fault-handling runtime: a [`Server`] resolves the page faults of one or more regions
//! from [`PageSource`]s, so a program restoring a snapshot, migrating post-copy or restoring a
//! checkpoint lazily does not hand-write the handler loop.
//!
//! What the server does, per region:
//!
//! - **Demand faults** are read by handler threads and resolved first: the faulting page is
//!   copied from the source (`UFFDIO_COPY`, or `UFFDIO_ZEROPAGE` where the source says the
//!   bytes are zero) and the faulting thread woken. A fault the kernel delivers again after
//!   its page was resolved is woken, never copied twice.
//! - **Prefetch**: after every fault of a batch is resolved, the rest of each fault's aligned
//!   chunk is copied, in one `UFFDIO_COPY` per run of missing pages; faults moving forward
//!   through a region double the chunk up to a maximum, as the kernel's readahead does.
//!   Where missing runs alternate with short stretches of present pages (after a replay), a
//!   source that is read (no direct view) is read once for all of them (read-through
//!   coalescing), so each run does not pay the source's per-request latency.
//! - **Background fill** threads copy every page not yet present in large chunks, yielding
//!   while demand faults are being served. [`Server::wait_populated`] returns once every page
//!   is present; the regions are then plain memory.
//! - **Page state**: each page is missing, claimed, present or removed (an atomic byte); a
//!   thread resolves only pages it claimed, so demand, prefetch and background never race on
//!   a page, and `EEXIST` answers become rare (and are still handled by waking).
//! - **Events** (when the `Uffd` has the features): `REMOVE` (`MADV_DONTNEED` of a balloon)
//!   marks pages removed: later faults there get zero pages, never source data, and
//!   background fill skips them. `UNMAP` stops serving the range. `REMAP` of a whole region
//!   follows it to its new address (a partial one stops serving the moved part). `FORK` hands
//!   the child's fd to [`ServerBuilder::on_fork`].
//! - **Working sets**: a server can record the order in which pages were first demanded
//!   ([`ServerBuilder::record_working_set`], [`WorkingSet::save`]), exactly when asked
//!   ([`ServerBuilder::exact_recording`]: no prefetch until [`Server::finish_recording`]);
//!   the next restore replays it ([`ServerBuilder::replay`]): those pages (or chunks) are
//!   copied first, in that order, by several threads at once, before background fill, which
//!   pays off when the source is slow.
//! - **Dirty tracking** ([`ServerBuilder::track_dirty`]): pages are installed
//!   write-protected, and [`Server::dirty_pages`] lists the pages written since the restore or
//!   the last call (`WP_ASYNC` and `PAGEMAP_SCAN` on Linux 6.7, write-protect faults before).
//! - **Failures** of the source never leave a faulting thread waiting: the pages are
//!   poisoned (Linux 6.6: the thread gets `SIGBUS`), zero-filled, or the server stops and
//!   unregisters, as the [`FailurePolicy`] says; the error is counted and reported.
//! - **Statistics** ([`Stats`]): pages by path, bytes, `EEXIST`/`EAGAIN` answers, time to full
//!   population, and the latency of demand faults (read to wake) with p50, p99 and max.
//!   Serving a demand fault allocates nothing.
//!
//! Linux 4.3 for MISSING faults on anonymous memory, 4.11 for shmem and hugetlbfs and for the
//! events, 6.6 for `POISON`. The kernel document is
//! `Documentation/admin-guide/mm/userfaultfd.rst`; the calls are those of `ioctl_userfaultfd(2)`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use userfaultfd::serve::{MemorySource, Region, ServerBuilder};
//! use userfaultfd::UffdBuilder;
//!
//! let page = userfaultfd::page_size();
//! // A "snapshot": page n holds the byte n.
//! let image: Vec<u8> = (0..256 * page).map(|i| (i / page) as u8).collect();
//! let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(256 * page)?);
//! let server = ServerBuilder::new()
//!     .region(Region::new(memory.clone(), Arc::new(MemorySource::new(image))))
//!     .start(UffdBuilder::new().user_mode_only(true).create()?)?;
//! // The program runs at once; each first touch is served from the image.
//! assert_eq!(memory.read_obj::<u8>(200 * page)?, 200);
//! server.wait_populated(Duration::from_secs(10))?;
//! println!("{:?}", server.shutdown()?);
//! # Ok(()) }
//! ```

#[cfg(feature = "tokio")]
pub mod async_server;
#[cfg(feature = "tokio")]
mod async_source;
mod builder;
mod coalesce;
mod dispatch;
mod error;
mod file;
#[cfg(feature = "object-store")]
mod object_store;
mod pace;
mod region;
mod server;
mod shared;
mod source;
mod state;
mod stats;
pub mod tcp;
mod threads;
mod working_set;

#[cfg(feature = "tokio")]
pub use async_server::{
    AsyncRegion, AsyncServer, AsyncServerBuilder, BlockingSource, DEFAULT_BACKGROUND_FETCHES,
    DEFAULT_MAX_FETCHES,
};
#[cfg(feature = "tokio")]
pub use async_source::{AsyncPageSource, SourceFuture};
pub use builder::{
    FailurePolicy, ServerBuilder, DEFAULT_BACKGROUND_CHUNK, DEFAULT_PREFETCH,
    DEFAULT_REPLAY_THREADS, MAX_PREFETCH,
};
pub use error::ServeError;
pub use file::{FileSource, MappedFileSource};
#[cfg(feature = "object-store")]
pub use object_store::{
    ObjectStoreSource, ObjectStoreSourceBuilder, ObjectStoreSourceError, ObjectStoreStats,
    RetryPolicy, DEFAULT_CACHE_BYTES, DEFAULT_CHUNK_SIZE, DEFAULT_CONCURRENCY, DEFAULT_READAHEAD,
};
pub use region::Region;
pub use server::{DirtyRange, Server};
pub use source::{DirectView, MemorySource, PageSource};
pub use stats::{Latency, Stats};
pub use tcp::{TcpImageServer, TcpImageServerHandle, TcpSource, TcpSourceBuilder};
pub use working_set::{WorkingSet, WorkingSetError};
