//! The fault-handling runtime on tokio (feature `tokio`): an [`AsyncServer`] resolves the page
//! faults of its regions from [`AsyncPageSource`](super::AsyncPageSource)s, such as an object
//! store, whose reads are requests that take milliseconds each but can run by the dozen.
//!
//! It serves as the threaded [`Server`](super::Server) does (the same page states, events,
//! failure policy and statistics, by the same code), but a fault does not occupy a thread
//! while its bytes are fetched: many faults, and their prefetch and background fill, are in
//! flight at once.
//!
//! # Design
//!
//! - **One reader task** waits for the userfaultfd's readiness (tokio's `AsyncFd`), reads
//!   faults and events in batches, and applies events at once (`REMOVE` marks pages to be
//!   served as zeros and never from the source, `UNMAP` stops serving the range, a whole
//!   region's `REMAP` is followed, `FORK` goes to [`on_fork`](AsyncServerBuilder::on_fork)),
//!   under the same lock the threaded server takes, so that no copy lands between an event's
//!   read and its effect. A fault on a missing page is **claimed** there (its page state
//!   moves to claimed) and handed to a fetch task of its own; a fault on a page already
//!   present is woken, or resolved again if the program dropped it; one on a removed page gets
//!   a zero page at once.
//! - **Fetches** (demand, prefetch, background) each hold a slot of a scheduler while they read
//!   and install: at most [`max_fetches`](AsyncServerBuilder::max_fetches) (default 64) are in
//!   flight. Slots go by **priority**, not arrival: a freed slot goes to the oldest waiting
//!   demand fetch, then prefetch, then background fill; and prefetch and background fill never
//!   hold the last quarter of the slots, so a demand fault finds a free slot even while
//!   background reads of a slow source are stalled.
//! - **Page states** are the threaded server's: a fetch claims the pages it will install
//!   (prefetch and background fill only once they hold a slot, so a queued fetch never holds
//!   up a demand fault on its pages), installs only pages it still holds, and skips pages an
//!   event took meanwhile. No page is copied twice, and none is copied over a removed page.
//! - **Source chunks**: when a source gives a
//!   [`chunk_size`](super::AsyncPageSource::chunk_size) (an object store's), reads follow it so
//!   that each chunk is fetched once: a demand fault reads its page's whole chunk in one
//!   request (installing the faulting page first, then the chunk's other missing pages), the
//!   prefetch window is widened to whole chunks with one request per chunk (all in flight at
//!   once), and background blocks are whole, aligned chunks. A chunk's missing pages are
//!   claimed in one pass (passes over chunks are serialised), so two fetches never split a
//!   chunk; it is read again only for pages given back (after an event interrupted their
//!   copy, or a failed read).
//! - **Failures**: a failed read of several pages is retried page by page, and each page that
//!   still fails gets the [`FailurePolicy`](super::FailurePolicy) (`POISON`, zeros, or stop and
//!   unregister); a panicking source or task stops the server and unregisters. Either way no
//!   faulting thread is left waiting.
//! - **Synchronous sources** are served through [`BlockingSource`] (each read on tokio's
//!   blocking pool): convert a [`Region`](super::Region) with [`AsyncRegion::from`].
//! - **Working sets**: a recording notes each page's first demand (an
//!   [exact](AsyncServerBuilder::exact_recording) one fetches only faulting pages until
//!   [`finish_recording`](AsyncServer::finish_recording)); a [replay](AsyncServerBuilder::replay)
//!   fetches the recorded pages in order, one task per run (or per source chunk, each chunk
//!   once), with prefetch slots taken in recorded order; prefetch waits for it, and background
//!   fill starts after it ([`wait_replayed`](AsyncServer::wait_replayed)).
//! - **Shutdown**: [`AsyncServer::shutdown`] stops every task (each ends at its next await:
//!   a fetch's future is dropped mid-read), waits for them, and unregisters the regions, which
//!   releases every waiting thread; dropping the server does the same without waiting.
//!
//! The faulting threads must not be this runtime's workers: a thread that touches a missing
//! page blocks in the kernel until the page is served, and a runtime worker blocked that way
//! serves nothing (on a current-thread runtime, the server itself would wait). Touch served
//! memory from threads of your own (or `spawn_blocking`), or from another process.
//!
//! [`background_rate`](AsyncServerBuilder::background_rate) (one budget over every background
//! task) and [`monitored_process`](AsyncServerBuilder::monitored_process) (a pidfd watched
//! on the reactor) and dirty tracking ([`track_dirty`](AsyncServerBuilder::track_dirty),
//! [`dirty_pages`](AsyncServer::dirty_pages)) work as on the threaded server. Linux versions
//! are those of the threaded server: 4.3 for anonymous memory, 4.11 for shmem, hugetlbfs and
//! events, 5.13/5.14 for `CONTINUE`, 6.6 for `POISON`.
//!
//! # Example
//!
//! A source whose reads are async (here computed; in practice a network request), with a
//! chunk size, served to eight threads:
//!
//! ```
//! use std::io;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use userfaultfd::serve::{AsyncPageSource, AsyncRegion, AsyncServerBuilder, SourceFuture};
//!
//! /// Every byte of page `n` is `n as u8`; best read 64 KiB at a time.
//! struct Remote(u64);
//!
//! impl AsyncPageSource for Remote {
//!     fn len(&self) -> u64 {
//!         self.0
//!     }
//!     fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
//!         Box::pin(async move {
//!             tokio::task::yield_now().await; // a request would be awaited here
//!             let page = userfaultfd::page_size() as u64;
//!             for (i, b) in buf.iter_mut().enumerate() {
//!                 *b = ((offset + i as u64) / page) as u8;
//!             }
//!             Ok(())
//!         })
//!     }
//!     fn chunk_size(&self) -> Option<u64> {
//!         Some(64 << 10)
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let page = userfaultfd::page_size();
//!     let pages = 256;
//!     let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(pages * page)?);
//!     let server = AsyncServerBuilder::new()
//!         .region(AsyncRegion::new(memory.clone(), Arc::new(Remote((pages * page) as u64))))
//!         .max_fetches(32)
//!         .start(userfaultfd::UffdBuilder::new().user_mode_only(true).create()?)?;
//!     // The program's threads touch the memory; each first touch waits for its fetch.
//!     let threads: Vec<_> = (0..8)
//!         .map(|t| {
//!             let m = memory.clone();
//!             std::thread::spawn(move || {
//!                 for p in (t..pages).step_by(8) {
//!                     assert_eq!(m.read_obj::<u8>(p * page).unwrap(), p as u8);
//!                 }
//!             })
//!         })
//!         .collect();
//!     // Joined off the runtime's workers (a blocking join there would hold one up).
//!     tokio::task::spawn_blocking(move || threads.into_iter().try_for_each(|t| t.join()))
//!         .await?
//!         .expect("a touching thread panicked");
//!     server.wait_populated(Duration::from_secs(10)).await?;
//!     let stats = server.shutdown().await?;
//!     assert_eq!(stats.pages_present(), pages as u64);
//!     Ok(())
//! }
//! ```

mod adapter;
mod builder;
mod region;
mod sched;
mod server;
mod tasks;

pub use adapter::BlockingSource;
pub use builder::{AsyncServerBuilder, DEFAULT_BACKGROUND_FETCHES, DEFAULT_MAX_FETCHES};
pub use region::AsyncRegion;
pub use server::AsyncServer;
