//! The server: handler threads that resolve demand faults and prefetch around them, background
//! fill threads, events, failure handling, statistics and shutdown.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use libc::c_void;
use nix::errno::Errno;

use super::error::ServeError;
use super::region::Region;
use super::state::{PageStates, CLAIMED, CLAIMED_ZERO, GONE, MISSING, PRESENT, REMOVED};
use super::stats::{Counters, Stats};
use super::working_set::{Recorder, WorkingSet};
use crate::{
    CopyMode, Error, Event, EventBuffer, FaultKind, FeatureFlags, PageMap, PageRegion, ReadWrite,
    RegisterMode, Uffd, UffdBuilder,
};

/// What the server does with pages whose source read failed (an I/O error, a short file, a
/// peer gone), so that no faulting thread waits forever. The error is reported either way
/// ([`Stats::source_errors`], [`ServerBuilder::on_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// `UFFDIO_POISON` the pages (Linux 6.6): a thread touching them gets `SIGBUS`, as with a
    /// hardware memory error. Where the kernel lacks POISON, the builder's
    /// [`poison_fallback`](ServerBuilder::poison_fallback) applies. The default.
    Poison,
    /// Map zero pages: the program goes on with zeros where the data should be.
    ZeroFill,
    /// Stop serving: unregister every region and end the threads. Faulting threads are woken
    /// and get the kernel's default handling: zero-filled pages for anonymous memory, the
    /// file's pages for shared memory.
    Stop,
}

type ErrorCallback = Box<dyn Fn(&ServeError) + Send + Sync>;
type ForkCallback = Box<dyn Fn(Uffd) + Send + Sync>;

/// Configures and starts a [`Server`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{MemorySource, Region, ServerBuilder};
/// use userfaultfd::UffdBuilder;
///
/// let page = userfaultfd::page_size();
/// let image: Vec<u8> = (0..64 * page).map(|i| (i / page) as u8).collect();
/// let memory = Arc::new(mmap::MemoryMapping::new_private(64 * page)?);
/// let uffd = UffdBuilder::new().user_mode_only(true).create()?;
/// let server = ServerBuilder::new()
///     .region(Region::new(memory.clone(), Arc::new(MemorySource::new(image))))
///     .start(uffd)?;
/// assert_eq!(memory.read_obj::<u8>(5 * page)?, 5); // faults, served from the image
/// server.wait_populated(Duration::from_secs(10))?; // background fill did the rest
/// let stats = server.shutdown()?;
/// assert_eq!(stats.pages_present(), 64);
/// # Ok(()) }
/// ```
pub struct ServerBuilder {
    regions: Vec<Region>,
    handler_threads: usize,
    prefetch: usize,
    prefetch_max: usize,
    background_threads: usize,
    background_chunk: usize,
    background_rate: Option<u64>,
    policy: FailurePolicy,
    fallback: FailurePolicy,
    register: bool,
    stop_when_populated: bool,
    record: bool,
    replay: Option<WorkingSet>,
    track_dirty: bool,
    pagemap: Option<PageMap>,
    on_error: Option<ErrorCallback>,
    on_fork: Option<ForkCallback>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("regions", &self.regions)
            .field("handler_threads", &self.handler_threads)
            .field("prefetch", &self.prefetch)
            .field("prefetch_max", &self.prefetch_max)
            .field("background_threads", &self.background_threads)
            .field("background_chunk", &self.background_chunk)
            .field("background_rate", &self.background_rate)
            .field("policy", &self.policy)
            .field("fallback", &self.fallback)
            .field("register", &self.register)
            .field("stop_when_populated", &self.stop_when_populated)
            .field("record", &self.record)
            .field("replay", &self.replay.as_ref().map(WorkingSet::len))
            .field("track_dirty", &self.track_dirty)
            .finish_non_exhaustive()
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Default prefetch chunk around a demand fault.
pub const DEFAULT_PREFETCH: usize = 256 << 10;
/// Largest prefetch window a run of sequential faults grows to.
pub const MAX_PREFETCH: usize = 2 << 20;
/// Default background fill chunk.
pub const DEFAULT_BACKGROUND_CHUNK: usize = 2 << 20;

impl ServerBuilder {
    /// A builder with the defaults: one handler thread, prefetch of the 256 KiB-aligned chunk
    /// around each fault (growing to 2 MiB for sequential faults), one background fill thread
    /// copying 2 MiB at a time without a rate limit, [`FailurePolicy::Poison`] (falling back
    /// to [`FailurePolicy::Stop`]), regions registered `MISSING` by the server.
    pub fn new() -> ServerBuilder {
        ServerBuilder {
            regions: Vec::new(),
            handler_threads: 1,
            prefetch: DEFAULT_PREFETCH,
            prefetch_max: MAX_PREFETCH,
            background_threads: 1,
            background_chunk: DEFAULT_BACKGROUND_CHUNK,
            background_rate: None,
            policy: FailurePolicy::Poison,
            fallback: FailurePolicy::Stop,
            register: true,
            stop_when_populated: false,
            record: false,
            replay: None,
            track_dirty: false,
            pagemap: None,
            on_error: None,
            on_fork: None,
        }
    }

    /// Adds a region to serve.
    pub fn region(mut self, region: Region) -> ServerBuilder {
        self.regions.push(region);
        self
    }

    /// Threads reading faults (default 1, which keeps up with one `UFFDIO_COPY` per fault on
    /// this workload; more help when the source is slow and faults come from many threads).
    pub fn handler_threads(mut self, n: usize) -> ServerBuilder {
        self.handler_threads = n;
        self
    }

    /// After resolving a demand fault, copy the rest of its aligned chunk of `bytes`
    /// (a power of two; 0 turns prefetch off). Faults at increasing addresses double the
    /// window up to [`prefetch_max`](Self::prefetch_max), as the kernel's readahead does.
    pub fn prefetch(mut self, bytes: usize) -> ServerBuilder {
        self.prefetch = bytes;
        self
    }

    /// The largest prefetch window (default 2 MiB).
    pub fn prefetch_max(mut self, bytes: usize) -> ServerBuilder {
        self.prefetch_max = bytes;
        self
    }

    /// Threads that copy every page not yet present, in chunks, while demand faults go first
    /// (default 1; 0 turns background fill off, so only touched chunks are populated).
    pub fn background_threads(mut self, n: usize) -> ServerBuilder {
        self.background_threads = n;
        self
    }

    /// Bytes per background `UFFDIO_COPY` (default 2 MiB; a multiple of every region's page
    /// size).
    pub fn background_chunk(mut self, bytes: usize) -> ServerBuilder {
        self.background_chunk = bytes;
        self
    }

    /// Limits background fill to `bytes_per_sec` (demand faults and prefetch are not limited),
    /// to leave a shared source or disk to the workload.
    pub fn background_rate(mut self, bytes_per_sec: u64) -> ServerBuilder {
        self.background_rate = Some(bytes_per_sec);
        self
    }

    /// What to do with pages whose source read failed (default [`FailurePolicy::Poison`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> ServerBuilder {
        self.policy = policy;
        self
    }

    /// The policy used instead of [`FailurePolicy::Poison`] on kernels without
    /// `UFFDIO_POISON` (before 6.6); default [`FailurePolicy::Stop`].
    pub fn poison_fallback(mut self, policy: FailurePolicy) -> ServerBuilder {
        self.fallback = policy;
        self
    }

    /// Whether the server registers its regions (`MISSING`) at start and unregisters them at
    /// shutdown (default true). Turn it off for a userfaultfd whose ranges another process
    /// registered, as Firecracker does before handing its fd over.
    pub fn register(mut self, register: bool) -> ServerBuilder {
        self.register = register;
        self
    }

    /// Stop the threads (and unregister, if the server registered) as soon as every page is
    /// present: the regions are then plain memory. Default false.
    pub fn stop_when_populated(mut self, stop: bool) -> ServerBuilder {
        self.stop_when_populated = stop;
        self
    }

    /// Record the order in which pages are first demanded (allocation-free: one slot per page
    /// is reserved at start); read it with [`Server::working_set`]. Default off.
    pub fn record_working_set(mut self, record: bool) -> ServerBuilder {
        self.record = record;
        self
    }

    /// Replay a recorded working set: as soon as the server starts, a replay thread copies
    /// each recorded page with its prefetch chunk, in the recorded order, before background
    /// fill begins (demand faults still go first). Entries must name pages of this server's
    /// regions (checked at [`start`](Self::start)).
    pub fn replay(mut self, working_set: WorkingSet) -> ServerBuilder {
        self.replay = Some(working_set);
        self
    }

    /// Track the pages the program writes, for [`Server::dirty_pages`] (an incremental
    /// snapshot writes just those). Pages are installed write-protected (`UFFDIO_COPY` with
    /// `MODE_WP`) in ranges registered `MISSING | WRITE_PROTECT`; with
    /// [`FeatureFlags::WP_ASYNC`] on the `Uffd` (Linux 6.7) writes proceed without a fault and
    /// `PAGEMAP_SCAN` finds them, otherwise each first write after a scan is a write-protect
    /// fault that the handler records and resolves (Linux 5.7 for anonymous memory, 5.19 for
    /// shmem and hugetlbfs). Default off.
    pub fn track_dirty(mut self, track: bool) -> ServerBuilder {
        self.track_dirty = track;
        self
    }

    /// The `pagemap` file [`Server::dirty_pages`] scans with `WP_ASYNC` (default
    /// `/proc/self/pagemap`): give the served process's (`PageMap::open_pid`) when its memory
    /// is not this process's.
    pub fn pagemap(mut self, pagemap: PageMap) -> ServerBuilder {
        self.pagemap = Some(pagemap);
        self
    }

    /// Called (from a server thread) with every error the server absorbs: failed source reads,
    /// faults outside the regions, failed ioctls, panics.
    pub fn on_error(mut self, f: impl Fn(&ServeError) + Send + Sync + 'static) -> ServerBuilder {
        self.on_error = Some(Box::new(f));
        self
    }

    /// Called with the child's userfaultfd of every `UFFD_EVENT_FORK` (the `Uffd` needs
    /// [`FeatureFlags::EVENT_FORK`]). Without a callback the child's fd is closed, and the
    /// child's faults then get the kernel's default handling (zero pages). Serve the child
    /// with a server of its own when it must see the source's data.
    pub fn on_fork(mut self, f: impl Fn(Uffd) + Send + Sync + 'static) -> ServerBuilder {
        self.on_fork = Some(Box::new(f));
        self
    }

    fn check(&self) -> Result<(), ServeError> {
        let base = crate::page_size();
        let bad = |s: String| Err(ServeError::Config(s));
        if self.regions.is_empty() {
            return bad("no region to serve".into());
        }
        if self.handler_threads == 0 {
            return bad("handler_threads must be at least 1".into());
        }
        if self.prefetch != 0 && !self.prefetch.is_power_of_two() {
            return bad(format!("prefetch {} is not a power of two", self.prefetch));
        }
        if self.prefetch_max < self.prefetch || !self.prefetch_max.is_power_of_two() {
            return bad(format!(
                "prefetch_max {} is not a power of two at least prefetch {}",
                self.prefetch_max, self.prefetch
            ));
        }
        if self.background_rate == Some(0) {
            return bad("background_rate must be positive".into());
        }
        if let Some(ws) = &self.replay {
            for (k, &(ri, off)) in ws.entries().iter().enumerate() {
                let ok = self
                    .regions
                    .get(ri as usize)
                    .is_some_and(|r| off < r.len as u64 && off % r.page_size as u64 == 0);
                if !ok {
                    return bad(format!(
                        "working-set entry {k} (region {ri}, offset {off}) is not a page of a \
                         served region"
                    ));
                }
            }
        }
        for (i, r) in self.regions.iter().enumerate() {
            if !r.page_size.is_power_of_two() || r.page_size < base {
                return bad(format!("region {i}: page size {} is invalid", r.page_size));
            }
            if r.len == 0 || r.addr % r.page_size != 0 || r.len % r.page_size != 0 {
                return bad(format!(
                    "region {i}: {:#x}+{:#x} is empty or not aligned to its {}-byte pages",
                    r.addr, r.len, r.page_size
                ));
            }
            if r.addr.checked_add(r.len).is_none() {
                return bad(format!("region {i} wraps around the address space"));
            }
            // The source may end inside the region's last page (a file whose size is not a
            // page multiple): the rest of that page is served as zeros, as mmap(2) does.
            let end = r.source_offset.checked_add((r.len - r.page_size) as u64);
            if end.map_or(true, |e| e >= r.source.len()) {
                return bad(format!(
                    "region {i}: {} bytes from source offset {} run past the source's end ({})",
                    r.len,
                    r.source_offset,
                    r.source.len()
                ));
            }
            if self.background_chunk == 0 || self.background_chunk % r.page_size != 0 {
                return bad(format!(
                    "background_chunk {} is not a multiple of region {i}'s page size {}",
                    self.background_chunk, r.page_size
                ));
            }
            for (j, o) in self.regions[..i].iter().enumerate() {
                if r.addr < o.addr + o.len && o.addr < r.addr + r.len {
                    return bad(format!("regions {j} and {i} overlap"));
                }
            }
        }
        Ok(())
    }

    /// Starts serving with `uffd` (made non-blocking if it is not): registers the regions
    /// (unless [`register(false)`](Self::register)), then starts the handler and background
    /// threads.
    ///
    /// # Errors
    ///
    /// [`ServeError::Config`] for a refused configuration (no region, a region not aligned to
    /// its page size, overlapping regions, a source shorter than its region...);
    /// [`ServeError::Uffd`] when registration fails (regions already registered are
    /// unregistered again).
    pub fn start(self, uffd: Uffd) -> Result<Server, ServeError> {
        self.check()?;
        set_nonblocking(&uffd)?;
        let stop_fd = eventfd()?;
        let mut supported = uffd.supported_features();
        if supported.is_empty() {
            supported = UffdBuilder::probe_features().unwrap_or(FeatureFlags::empty());
        }
        let policy = match self.policy {
            FailurePolicy::Poison if !supported.contains(FeatureFlags::POISON) => self.fallback,
            p => p,
        };
        let chunk_max = self
            .regions
            .iter()
            .map(|r| r.page_size)
            .chain([self.prefetch_max, self.background_chunk])
            .max()
            .unwrap_or(0);
        let huge_page = self
            .regions
            .iter()
            .map(|r| r.page_size)
            .filter(|&p| p > crate::page_size())
            .max();
        let dirty = if !self.track_dirty {
            None
        } else if uffd.features().contains(FeatureFlags::WP_ASYNC) {
            let pagemap = match self.pagemap {
                Some(p) => p,
                None => PageMap::open()?,
            };
            Some(Dirty::Async(pagemap))
        } else {
            Some(Dirty::Sync)
        };
        let sync_dirty = matches!(dirty, Some(Dirty::Sync));
        let mut regions = Vec::with_capacity(self.regions.len());
        let mut registered: Vec<(usize, usize)> = Vec::new();
        for r in self.regions {
            if self.register {
                let mode = if self.track_dirty {
                    RegisterMode::MISSING | RegisterMode::WRITE_PROTECT
                } else {
                    RegisterMode::MISSING
                };
                // SAFETY: the regions were vouched for: owned mappings (`Region::new`) or raw
                // ranges whose `unsafe` constructor's caller is entitled to define them; so
                // even a SIGBUS fd's traps stay in memory no Rust reference relies on.
                let res = unsafe { uffd.register_unchecked(r.addr as *mut c_void, r.len, mode) };
                if let Err(e) = res {
                    for &(a, l) in &registered {
                        let _ = uffd.unregister(a as *mut c_void, l);
                    }
                    return Err(e.into());
                }
                registered.push((r.addr, r.len));
            }
            regions.push(Served {
                base: AtomicUsize::new(r.addr),
                len: r.len,
                page_size: r.page_size,
                states: PageStates::new(r.len / r.page_size),
                written: sync_dirty.then(|| {
                    (0..r.len / r.page_size)
                        .map(|_| AtomicBool::new(false))
                        .collect()
                }),
                source: r.source,
                source_offset: r.source_offset,
                _owner: r._owner,
            });
        }
        let total: usize = regions.iter().map(|r| r.states.len()).sum();
        let shared = Arc::new(Shared {
            event_lock: uffd
                .features()
                .contains(FeatureFlags::EVENT_REMOVE)
                .then(|| RwLock::new(())),
            uffd,
            regions,
            counters: Counters::new(),
            policy,
            prefetch: self.prefetch,
            prefetch_max: self.prefetch_max,
            background_chunk: self.background_chunk,
            background_rate: self.background_rate,
            registered: self.register,
            stop_when_populated: self.stop_when_populated,
            recorder: self.record.then(|| Recorder::new(total)),
            replaying: AtomicBool::new(self.replay.is_some()),
            chunk_max,
            // Zeros to copy where ZEROPAGE cannot serve: hugetlb, and write-protected installs.
            zeros: if dirty.is_some() {
                Some(vec![0u8; chunk_max].into_boxed_slice())
            } else {
                huge_page.map(|p| vec![0u8; p].into_boxed_slice())
            },
            dirty,
            dirty_lock: Mutex::new(()),
            stop: AtomicBool::new(false),
            stop_fd,
            outstanding: AtomicUsize::new(total),
            demand_busy: AtomicUsize::new(0),
            status: Mutex::new(Status::default()),
            changed: Condvar::new(),
            start: Instant::now(),
            on_error: self.on_error,
            on_fork: self.on_fork,
        });
        let mut threads = Vec::new();
        // `start` returns once every thread runs (thread start-up allocates; serving does not).
        let ready = Arc::new((Mutex::new(0usize), Condvar::new()));
        let mut spawned = Ok(());
        for i in 0..self.handler_threads {
            let (s, r) = (Arc::clone(&shared), Arc::clone(&ready));
            spawned = spawned.and_then(|()| {
                spawn(format!("uffd-handler-{i}"), s, r, handler_loop).map(|t| threads.push(t))
            });
        }
        if let Some(ws) = self.replay {
            let (s, r) = (Arc::clone(&shared), Arc::clone(&ready));
            spawned = spawned.and_then(|()| {
                spawn("uffd-replay".into(), s, r, move |s, ready| {
                    replay_loop(s, &ws, ready)
                })
                .map(|t| threads.push(t))
            });
        }
        for i in 0..self.background_threads {
            let (s, r) = (Arc::clone(&shared), Arc::clone(&ready));
            let n = self.background_threads;
            spawned = spawned.and_then(|()| {
                spawn(format!("uffd-fill-{i}"), s, r, move |s, ready| {
                    background_loop(s, i, n, ready)
                })
                .map(|t| threads.push(t))
            });
        }
        if let Err(e) = spawned {
            shared.request_stop();
            for t in threads {
                let _ = t.join();
            }
            if self.register {
                let _ = shared.unregister_all();
            }
            return Err(e);
        }
        let (count, cv) = &*ready;
        let mut n = count.lock().unwrap_or_else(PoisonError::into_inner);
        while *n < threads.len() {
            n = cv.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
        drop(n);
        if total == 0 {
            shared.mark_populated();
        }
        Ok(Server {
            shared,
            threads,
            stopped: false,
        })
    }
}

fn spawn(
    name: String,
    shared: Arc<Shared>,
    ready: Arc<(Mutex<usize>, Condvar)>,
    body: impl FnOnce(&Shared, &dyn Fn()) + Send + 'static,
) -> Result<JoinHandle<()>, ServeError> {
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Called by the body once it has allocated what it needs.
            let signal = || {
                let (count, cv) = &*ready;
                *count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                cv.notify_all();
            };
            let s = &*shared;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(s, &signal))) {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|m| m.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                s.report(&ServeError::Panicked(msg.clone()));
                s.halt(format!("a server thread panicked: {msg}"), true);
            }
        })
        .map_err(|e| ServeError::Config(format!("cannot start a server thread: {e}")))
}

/// A range of written pages ([`Server::dirty_pages`]): `len` bytes at byte `offset` of region
/// `region` (the builder's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRange {
    /// Index of the region.
    pub region: usize,
    /// Byte offset in the region.
    pub offset: usize,
    /// Bytes.
    pub len: usize,
}

/// A running fault server (see the [module documentation](super)). Dropping it shuts it down.
pub struct Server {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("regions", &self.shared.regions.len())
            .field("threads", &self.threads.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Server {
    /// What the server has done so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Whether every page of every region is present (or was removed, or unmapped).
    pub fn is_populated(&self) -> bool {
        self.shared.outstanding.load(Ordering::Acquire) == 0
    }

    /// Waits, at most `timeout`, until every page of every region is present (pages removed
    /// by `MADV_DONTNEED` or unmapped count as done: nothing more comes from the source).
    ///
    /// # Errors
    ///
    /// [`ServeError::Timeout`]; [`ServeError::Stopped`] when the server stopped first.
    pub fn wait_populated(&self, timeout: Duration) -> Result<(), ServeError> {
        let deadline = Instant::now() + timeout;
        let mut st = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if st.populated {
                return Ok(());
            }
            if let Some(why) = &st.halted {
                return Err(ServeError::Stopped(why.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServeError::Timeout(timeout));
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The pages demanded so far, in the order they were first demanded, when the builder
    /// asked to [`record_working_set`](ServerBuilder::record_working_set) (empty otherwise).
    /// Save it with [`WorkingSet::save`] and replay it with [`ServerBuilder::replay`].
    pub fn working_set(&self) -> WorkingSet {
        let entries = match &self.shared.recorder {
            Some(rec) => rec
                .pages()
                .map(|(ri, p)| (ri as u32, (p * self.shared.regions[ri].page_size) as u64))
                .collect(),
            None => Vec::new(),
        };
        WorkingSet::from_entries(entries)
    }

    /// The pages written since the server started or since the last call, as ranges of
    /// regions, and re-arms tracking for them (get-and-clear): what an incremental snapshot
    /// writes. Needs [`ServerBuilder::track_dirty`]. With `WP_ASYNC` this is one
    /// `PAGEMAP_SCAN` (`PM_SCAN_WP_MATCHING`) per region; otherwise the pages the handler
    /// recorded at write-protect faults, write-protected again here.
    ///
    /// A write that races with the call is reported by this call or by the next one, never
    /// lost. Pages not yet populated are never reported (they hold source data).
    ///
    /// # Errors
    ///
    /// [`ServeError::Config`] without dirty tracking; [`ServeError::Uffd`] when the scan or
    /// the re-protection fails.
    pub fn dirty_pages(&self) -> Result<Vec<DirtyRange>, ServeError> {
        let s = &*self.shared;
        let mut out: Vec<DirtyRange> = Vec::new();
        let mut push = |region: usize, offset: usize, len: usize| match out.last_mut() {
            Some(d) if d.region == region && d.offset + d.len == offset => d.len += len,
            _ => out.push(DirtyRange {
                region,
                offset,
                len,
            }),
        };
        match &s.dirty {
            None => {
                return Err(ServeError::Config(
                    "dirty_pages needs ServerBuilder::track_dirty(true)".into(),
                ))
            }
            Some(Dirty::Async(pagemap)) => {
                let mut scratch = vec![PageRegion::default(); 256];
                for (ri, r) in s.regions.iter().enumerate() {
                    let base = r.base.load(Ordering::Acquire);
                    let mut failed = None;
                    pagemap.for_each_written(base, r.len, true, &mut scratch, |pr| {
                        if pr.start() >= base && pr.end() <= base + r.len {
                            push(ri, pr.start() - base, pr.len());
                        } else if failed.is_none() {
                            failed = Some(pr.start());
                        }
                    })?;
                    if let Some(at) = failed {
                        s.report(&ServeError::Unserved(at));
                    }
                }
            }
            Some(Dirty::Sync) => {
                let _faults = s.dirty_lock.lock().unwrap_or_else(PoisonError::into_inner);
                for (ri, r) in s.regions.iter().enumerate() {
                    let Some(w) = &r.written else { continue };
                    let mut p = 0;
                    while p < w.len() {
                        if !w[p].swap(false, Ordering::AcqRel) {
                            p += 1;
                            continue;
                        }
                        let first = p;
                        p += 1;
                        while p < w.len() && w[p].swap(false, Ordering::AcqRel) {
                            p += 1;
                        }
                        let len = (p - first) * r.page_size;
                        if let Err(e) = s.uffd.write_protect(r.addr_of(first), len) {
                            // Not re-armed: keep them recorded for the next call.
                            for bit in &w[first..p] {
                                bit.store(true, Ordering::Release);
                            }
                            return Err(e.into());
                        }
                        push(ri, first * r.page_size, len);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Why the server stopped serving on its own (source failure under
    /// [`FailurePolicy::Stop`], the monitored process exited, a panic), if it did.
    pub fn halted(&self) -> Option<String> {
        let st = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.halted.clone()
    }

    /// Stops every thread and, if the server registered the regions, unregisters them;
    /// returns the final statistics.
    ///
    /// Pages not yet present stay missing: after unregistration a thread touching one gets the
    /// kernel's default handling (a zero page for anonymous memory, the file's page for shared
    /// memory), **not** the source's data. Use
    /// [`shutdown_populated`](Self::shutdown_populated) to finish populating first.
    ///
    /// # Errors
    ///
    /// [`ServeError::Uffd`] if unregistering failed (the threads are stopped regardless).
    pub fn shutdown(mut self) -> Result<Stats, ServeError> {
        self.stop()
    }

    /// Waits (at most `timeout`) for every page to be present, then [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    ///
    /// As [`wait_populated`](Self::wait_populated) (the server is shut down anyway), then as
    /// [`shutdown`](Self::shutdown).
    pub fn shutdown_populated(mut self, timeout: Duration) -> Result<Stats, ServeError> {
        let waited = self.wait_populated(timeout);
        let stats = self.stop()?;
        waited.map(|()| stats)
    }

    fn stop(&mut self) -> Result<Stats, ServeError> {
        if !self.stopped {
            self.stopped = true;
            self.shared.request_stop();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
            if self.shared.registered {
                self.shared.unregister_all()?;
            }
        }
        Ok(self.stats())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[derive(Default)]
struct Status {
    populated: bool,
    halted: Option<String>,
}

/// A region as the threads see it.
struct Served {
    /// Start address; moved by a REMAP event.
    base: AtomicUsize,
    len: usize,
    page_size: usize,
    states: PageStates,
    /// Pages written since the last `dirty_pages` (synchronous dirty tracking only).
    written: Option<Box<[AtomicBool]>>,
    source: Arc<dyn super::PageSource>,
    source_offset: u64,
    _owner: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Served {
    fn page_of(&self, addr: usize) -> Option<usize> {
        let base = self.base.load(Ordering::Acquire);
        (addr >= base && addr < base + self.len).then(|| (addr - base) / self.page_size)
    }

    fn addr_of(&self, page: usize) -> *mut c_void {
        (self.base.load(Ordering::Acquire) + page * self.page_size) as *mut c_void
    }

    fn huge(&self) -> bool {
        self.page_size > crate::page_size()
    }
}

/// How written pages are found.
enum Dirty {
    /// `WP_ASYNC`: writes clear the uffd-wp bit without a fault; `PAGEMAP_SCAN` reads it.
    Async(PageMap),
    /// Write-protect faults: the handler records the page and unprotects it.
    Sync,
}

/// Which path made pages present (for the statistics).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Demand,
    Prefetch,
    Background,
    Replay,
}

struct Shared {
    uffd: Uffd,
    regions: Vec<Served>,
    counters: Counters,
    policy: FailurePolicy,
    prefetch: usize,
    prefetch_max: usize,
    background_chunk: usize,
    background_rate: Option<u64>,
    registered: bool,
    stop_when_populated: bool,
    /// The demand order, when recording.
    recorder: Option<Recorder>,
    /// A replay thread is still copying the working set: background fill waits.
    replaying: AtomicBool,
    /// The largest run one ioctl covers: the size of each thread's bounce buffer.
    chunk_max: usize,
    /// A zero huge page, to resolve hugetlb pages with zeros (no `ZEROPAGE` on hugetlb).
    zeros: Option<Box<[u8]>>,
    /// Dirty tracking, when on.
    dirty: Option<Dirty>,
    /// Orders write-protect faults against `dirty_pages` (synchronous tracking).
    dirty_lock: Mutex<()>,
    stop: AtomicBool,
    stop_fd: OwnedFd,
    /// Pages that still need the source: missing, or claimed from missing.
    outstanding: AtomicUsize,
    /// Handler threads busy with demand faults (background fill yields to them).
    demand_busy: AtomicUsize,
    status: Mutex<Status>,
    changed: Condvar,
    start: Instant,
    /// Held for writing while events are read and applied, for reading around every
    /// resolving ioctl: present when the fd reports REMOVE events. A REMOVE's pages are zapped
    /// right after the event is read, so a copy must not land between the read and the
    /// marking of the pages.
    event_lock: Option<RwLock<()>>,
    on_error: Option<ErrorCallback>,
    on_fork: Option<ForkCallback>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        unsafe { libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let _st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.notify_all();
    }

    fn report(&self, e: &ServeError) {
        if let Some(f) = &self.on_error {
            f(e);
        }
    }

    /// Stops serving on the server's own account: records why, stops the threads, and with
    /// `unregister` releases every region to the kernel's default handling.
    fn halt(&self, why: String, unregister: bool) {
        {
            let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if st.halted.is_none() {
                st.halted = Some(why);
            }
        }
        if unregister && self.registered {
            let _ = self.unregister_all();
        } else if unregister {
            // Ranges registered by someone else: wake what waits, so nothing hangs on us.
            for r in &self.regions {
                let _ = self
                    .uffd
                    .wake(r.base.load(Ordering::Acquire) as *mut c_void, r.len);
            }
        }
        self.request_stop();
    }

    /// Unregisters every part of every region that is still mapped (pages not `GONE`).
    fn unregister_all(&self) -> Result<(), ServeError> {
        let mut first = None;
        for r in &self.regions {
            let n = r.states.len();
            let mut p = 0;
            while p < n {
                if r.states.get(p) == GONE {
                    p += 1;
                    continue;
                }
                let run = p;
                while p < n && r.states.get(p) != GONE {
                    p += 1;
                }
                match self
                    .uffd
                    .unregister(r.addr_of(run), (p - run) * r.page_size)
                {
                    // ENOMEM: the monitored process is exiting; nothing left to release.
                    Ok(())
                    | Err(Error::Os {
                        errno: Errno::ENOMEM,
                        ..
                    }) => {}
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    fn mark_populated(&self) {
        let ns = self.start.elapsed().as_nanos().max(1) as u64;
        let _ = self.counters.populated_ns.compare_exchange(
            0,
            ns,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        st.populated = true;
        self.changed.notify_all();
        drop(st);
        if self.stop_when_populated {
            if self.registered {
                let _ = self.unregister_all();
            }
            self.request_stop();
        }
    }

    /// `n` pages no longer need the source.
    fn retire(&self, n: usize) {
        if n > 0 && self.outstanding.fetch_sub(n, Ordering::AcqRel) == n {
            self.mark_populated();
        }
    }

    fn region_of(&self, addr: usize) -> Option<(usize, usize)> {
        self.regions
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.page_of(addr).map(|p| (i, p)))
    }

    // ------------------------------------------------------------------------------------
    // Resolving claimed runs.

    /// Resolves the claimed pages `first..end` of region `ri` from the source, waking the
    /// threads that wait on them. Every claimed page ends resolved, or released and woken.
    ///
    /// `write`: a demand fault that writes (installed writable, and counted as written when
    /// tracking dirty pages); otherwise pages are installed write-protected under dirty
    /// tracking.
    fn fill(
        &self,
        ri: usize,
        first: usize,
        end: usize,
        path: Path,
        bounce: &mut [u8],
        write: bool,
    ) {
        let r = &self.regions[ri];
        let ps = r.page_size;
        let offset = r.source_offset + (first * ps) as u64;
        let len = (end - first) * ps;
        let zero = !r.huge() && r.source.is_zero(offset, len as u64);
        let view = r.source.direct();
        let src: *const u8 = if zero {
            std::ptr::null()
        } else if let Some(p) = view.as_ref().and_then(|v| v.at(offset, len)) {
            p
        } else {
            let buf = &mut bounce[..len];
            // Only the last page of a region can reach past the source's end.
            let avail = r.source.len().saturating_sub(offset).min(len as u64) as usize;
            buf[avail..].fill(0);
            if let Err(error) = r.source.read_at(offset, &mut buf[..avail]) {
                Counters::add(&self.counters.source_errors, 1);
                if end - first > 1 {
                    // Narrow the failure down to the pages that fail on their own, so that
                    // one bad page costs one page.
                    for p in first..end {
                        self.fill(ri, p, p + 1, path, bounce, write);
                    }
                    return;
                }
                self.report(&ServeError::Source {
                    region: ri,
                    offset,
                    len,
                    error,
                });
                self.fail(ri, first, end);
                return;
            }
            buf.as_ptr()
        };
        let _guard = self.event_lock.as_ref().map(|l| l.read());
        let end = self.still_claimed(ri, first, end);
        if end == first {
            return;
        }
        let len = (end - first) * ps;
        let dst = r.addr_of(first);
        let mode = if self.dirty.is_some() && !write {
            CopyMode::WP
        } else {
            CopyMode::empty()
        };
        let res = if zero {
            self.zero(r, dst, len, mode)
        } else {
            // SAFETY: `dst..dst+len` lies in a served region, claimed by this thread (the
            // region's builder vouched that the server may define its contents); `src` is
            // readable for `len` bytes (a direct view checked by `at`, or the bounce buffer
            // just filled), and nothing writes it meanwhile.
            unsafe { self.uffd.copy_with_mode(src.cast(), dst, len, mode) }
        };
        drop(_guard);
        match res {
            Ok(_) => {
                // Counters first: `resolved` may announce full population.
                Counters::add(&self.counters.copy_ioctls, 1);
                if zero {
                    Counters::add(&self.counters.pages_zero, (end - first) as u64);
                } else {
                    Counters::add(&self.counters.bytes_copied, len as u64);
                }
                if write {
                    self.mark_written(ri, first, end);
                }
                self.resolved(ri, first, end, path);
            }
            Err(e) => self.copy_failed(ri, first, end, path, e),
        }
    }

    /// The end of the prefix of `first..end` still claimed by this thread; the pages after it
    /// (taken by an event meanwhile) are woken so their waiters fault again.
    fn still_claimed(&self, ri: usize, first: usize, end: usize) -> usize {
        let r = &self.regions[ri];
        let mut p = first;
        while p < end && r.states.get(p) == CLAIMED {
            p += 1;
        }
        if p < end {
            self.release(ri, p, end);
        }
        p
    }

    /// Marks claimed pages present and counts them.
    fn resolved(&self, ri: usize, first: usize, end: usize, path: Path) {
        let r = &self.regions[ri];
        let mut n = 0;
        for p in first..end {
            if r.states.finish(p, PRESENT) {
                n += 1;
            }
        }
        let counter = match path {
            Path::Demand => &self.counters.pages_demand,
            Path::Prefetch => &self.counters.pages_prefetch,
            Path::Background => &self.counters.pages_background,
            Path::Replay => &self.counters.pages_replay,
        };
        Counters::add(counter, n as u64);
        // Pages an event took meanwhile were retired by the event.
        self.retire(n);
    }

    /// Gives claimed pages back (to `MISSING`) and wakes them: their waiters fault again and
    /// are served anew.
    fn release(&self, ri: usize, first: usize, end: usize) {
        let r = &self.regions[ri];
        for p in first..end {
            r.states.finish(p, MISSING);
        }
        let _ = self
            .uffd
            .wake(r.addr_of(first), (end - first) * r.page_size);
    }

    fn copy_failed(&self, ri: usize, first: usize, end: usize, path: Path, e: Error) {
        let r = &self.regions[ri];
        match e {
            Error::PartialProgress { done, .. } => {
                let mid = first + done / r.page_size;
                Counters::add(&self.counters.bytes_copied, done as u64);
                self.resolved(ri, first, mid, path);
                self.release(ri, mid, end);
            }
            Error::AlreadyMapped { .. } => {
                // The first page is there (populated before the server started, or by another
                // uffd of this process): count it, give the rest back.
                Counters::add(&self.counters.already_mapped, 1);
                self.resolved(ri, first, first + 1, path);
                let _ = self.uffd.wake(r.addr_of(first), r.page_size);
                self.release(ri, first + 1, end);
            }
            Error::MappingChanging { .. } => {
                Counters::add(&self.counters.mapping_changing, 1);
                self.release(ri, first, end);
                // Let a handler read the pending event before this thread tries again.
                thread::yield_now();
            }
            Error::Os {
                errno: Errno::ESRCH,
                ..
            } => {
                self.release(ri, first, end);
                self.halt("the monitored process exited".into(), false);
            }
            Error::Os {
                errno: Errno::ENOENT,
                ..
            } => {
                // Unmapped or moved under us; an UNMAP/REMAP event (if enabled) tells which.
                self.release(ri, first, end);
                if !self.uffd.features().contains(FeatureFlags::EVENT_UNMAP) {
                    self.report(&ServeError::Uffd(e));
                }
            }
            e => {
                self.report(&ServeError::Uffd(e));
                self.fail(ri, first, end);
            }
        }
    }

    /// Applies the failure policy to the claimed pages `first..end`.
    fn fail(&self, ri: usize, first: usize, end: usize) {
        let r = &self.regions[ri];
        let len = (end - first) * r.page_size;
        let dst = r.addr_of(first);
        let _guard = self.event_lock.as_ref().map(|l| l.read());
        let res = match self.policy {
            // SAFETY: claimed pages of a served region, whose contents (and traps) the region's
            // builder entitled the server to define.
            FailurePolicy::Poison => unsafe { self.uffd.poison(dst, len, true) },
            FailurePolicy::ZeroFill => self.zero(r, dst, len, self.install_mode()),
            FailurePolicy::Stop => {
                drop(_guard);
                self.release(ri, first, end);
                self.halt("a source read failed (FailurePolicy::Stop)".into(), true);
                return;
            }
        };
        match res {
            Ok(_) => {
                let mut n = 0;
                for p in first..end {
                    if r.states.finish(p, PRESENT) {
                        n += 1;
                    }
                }
                Counters::add(&self.counters.pages_failed, n as u64);
                self.retire(n);
            }
            Err(e) => {
                drop(_guard);
                self.report(&ServeError::Uffd(e));
                self.release(ri, first, end);
                self.halt("the failure policy could not be applied".into(), true);
            }
        }
    }

    /// Zeros over `len` bytes at `dst`: zero pages, or copies of a zero buffer where
    /// `UFFDIO_ZEROPAGE` cannot serve (hugetlb, and write-protected installs, `mode` `WP`).
    fn zero(
        &self,
        r: &Served,
        dst: *mut c_void,
        len: usize,
        mode: CopyMode,
    ) -> crate::Result<usize> {
        match &self.zeros {
            Some(z) if r.huge() || mode.contains(CopyMode::WP) => {
                let step = z.len() / r.page_size * r.page_size;
                let mut done = 0;
                while done < len {
                    let n = step.min(len - done);
                    // SAFETY: a claimed range of a served region (see `fill`); `z` is
                    // readable for `n <= z.len()` bytes.
                    let r = unsafe {
                        self.uffd.copy_with_mode(
                            z.as_ptr().cast(),
                            dst.wrapping_byte_add(done),
                            n,
                            mode,
                        )
                    };
                    match r {
                        Ok(_) => done += n,
                        Err(e) if done == 0 => return Err(e),
                        Err(e) => {
                            return Err(Error::PartialProgress {
                                op: crate::Operation::Copy,
                                done: done + e.bytes_done(),
                                len,
                                errno: e.errno().unwrap_or(Errno::EAGAIN),
                            })
                        }
                    }
                }
                Ok(len)
            }
            // SAFETY: a claimed range of a served region (see `fill`).
            _ => unsafe { self.uffd.zeropage(dst, len, true) },
        }
    }

    /// The install mode of pages not written by their demand fault.
    fn install_mode(&self) -> CopyMode {
        if self.dirty.is_some() {
            CopyMode::WP
        } else {
            CopyMode::empty()
        }
    }

    /// Records pages as written (synchronous dirty tracking).
    fn mark_written(&self, ri: usize, first: usize, end: usize) {
        if let Some(w) = &self.regions[ri].written {
            for p in first..end {
                w[p].store(true, Ordering::Release);
            }
        }
    }

    /// A write-protect fault (synchronous dirty tracking): record the page, then unprotect
    /// and wake, under the lock `dirty_pages` holds, so that a scan sees either neither or
    /// both (never a writable page it does not know of); the writer resumes only once its
    /// page is recorded.
    fn write_fault(&self, addr: usize) {
        let Some((ri, page)) = self.region_of(addr) else {
            self.report(&ServeError::Unserved(addr));
            return;
        };
        let r = &self.regions[ri];
        Counters::add(&self.counters.wp_faults, 1);
        let _scan = self
            .dirty_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.mark_written(ri, page, page + 1);
        match self
            .uffd
            .remove_write_protection(r.addr_of(page), r.page_size, true)
        {
            Ok(()) => {}
            Err(e) => {
                self.report(&ServeError::Uffd(e));
                let _ = self.uffd.wake(r.addr_of(page), r.page_size);
            }
        }
    }

    /// Serves a page claimed from `REMOVED` with zeros.
    fn fill_removed(&self, ri: usize, page: usize) {
        let r = &self.regions[ri];
        let _guard = self.event_lock.as_ref().map(|l| l.read());
        if r.states.get(page) != CLAIMED_ZERO {
            return;
        }
        match self.zero(r, r.addr_of(page), r.page_size, self.install_mode()) {
            Ok(_) | Err(Error::AlreadyMapped { .. }) => {
                r.states.cas(page, CLAIMED_ZERO, PRESENT);
                Counters::add(&self.counters.pages_removed_zero, 1);
            }
            Err(_) => {
                r.states.cas(page, CLAIMED_ZERO, REMOVED);
                let _ = self.uffd.wake(r.addr_of(page), r.page_size);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Events.

    fn apply_event(&self, ev: Event) {
        Counters::add(&self.counters.events, 1);
        match ev {
            Event::Remove { start, end } => {
                self.mark(start as usize, end as usize, REMOVED);
            }
            Event::Unmap { start, end } => {
                self.mark(start as usize, end as usize, GONE);
            }
            Event::Remap { from, to, len } => {
                let (from, to) = (from as usize, to as usize);
                let whole = self
                    .regions
                    .iter()
                    .find(|r| r.base.load(Ordering::Acquire) == from && r.len == len);
                match whole {
                    Some(r) => r.base.store(to, Ordering::Release),
                    None => {
                        // A part of a region moved: serving it at its new address is not
                        // supported; stop serving the moved part.
                        self.mark(from, from + len, GONE);
                        self.report(&ServeError::Config(format!(
                            "mremap moved part of a region ({from:#x}+{len:#x} to {to:#x}); \
                             that part is no longer served"
                        )));
                    }
                }
            }
            Event::Fork { uffd } => match &self.on_fork {
                Some(f) => f(uffd),
                None => drop(uffd),
            },
            Event::Pagefault { .. } => unreachable!("faults are handled by the caller"),
        }
    }

    /// Sets the pages of every region overlapping `start..end` to `to` (`REMOVED` or `GONE`).
    fn mark(&self, start: usize, end: usize, to: u8) {
        for r in &self.regions {
            let base = r.base.load(Ordering::Acquire);
            let (lo, hi) = (start.max(base), end.min(base + r.len));
            if lo >= hi {
                continue;
            }
            let first = (lo - base) / r.page_size;
            let last = (hi - base).div_ceil(r.page_size);
            let mut retired = 0;
            for p in first..last {
                let prev = r.states.get(p);
                if prev == GONE || (to == REMOVED && prev == REMOVED) {
                    continue;
                }
                let prev = r.states.set(p, to);
                if prev == MISSING || prev == CLAIMED {
                    retired += 1;
                }
            }
            self.retire(retired);
        }
    }
}

// ----------------------------------------------------------------------------------------
// Threads.

/// Per-handler readahead: the window grows while faults move forward through a region.
struct Readahead {
    region: usize,
    next: usize,
    window: usize,
}

fn handler_loop(s: &Shared, ready: &dyn Fn()) {
    let mut buf = EventBuffer::new(64);
    let mut faults: Vec<(usize, ReadWrite, Instant)> = Vec::with_capacity(64);
    let mut bounce = vec![0u8; s.chunk_max];
    // The thread's name and its first use of thread-locals may allocate: get them done now.
    let _ = thread::current().name().map(str::len);
    ready();
    let mut ra = Readahead {
        region: usize::MAX,
        next: 0,
        window: s.prefetch,
    };
    let mut fds = [
        libc::pollfd {
            fd: s.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: s.stop_fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !s.stopping() {
        for f in &mut fds {
            f.revents = 0;
        }
        // A bounded wait: the stop flag is checked at least once a second.
        // SAFETY: `fds` holds two valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            s.report(&ServeError::Uffd(Error::Os {
                op: crate::Operation::Read,
                errno: Errno::last(),
            }));
            s.halt("poll(2) on the userfaultfd failed".into(), true);
            return;
        }
        if s.stopping() || fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            // The monitored process is gone (its mm released the context).
            s.halt(
                "the userfaultfd hung up: the monitored process exited".into(),
                false,
            );
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        {
            let _guard = s.event_lock.as_ref().map(|l| l.write());
            match s.uffd.read_events(&mut buf) {
                Ok(events) => {
                    let now = Instant::now();
                    for ev in events {
                        match ev {
                            Ok(Event::Pagefault {
                                kind: FaultKind::WriteProtected,
                                addr,
                                ..
                            }) => s.write_fault(addr as usize),
                            Ok(Event::Pagefault { addr, rw, .. }) => {
                                faults.push((addr as usize, rw, now));
                            }
                            Ok(other) => s.apply_event(other),
                            Err(e) => s.report(&ServeError::Uffd(e)),
                        }
                    }
                }
                Err(Error::Interrupted { .. }) => {}
                Err(e) => {
                    s.report(&ServeError::Uffd(e));
                    s.halt("reading the userfaultfd failed".into(), true);
                    return;
                }
            }
        }
        if faults.is_empty() {
            continue;
        }
        s.demand_busy.fetch_add(1, Ordering::AcqRel);
        Counters::add(&s.counters.demand_faults, faults.len() as u64);
        // Every faulting page first, then the chunks around them.
        for &(addr, rw, t0) in &faults {
            demand(s, addr, rw, t0, &mut bounce);
        }
        if s.prefetch != 0 {
            for &(addr, _, _) in &faults {
                prefetch(s, addr, &mut ra, &mut bounce);
            }
        }
        faults.clear();
        s.demand_busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn demand(s: &Shared, addr: usize, rw: ReadWrite, t0: Instant, bounce: &mut [u8]) {
    let Some((ri, page)) = s.region_of(addr) else {
        s.report(&ServeError::Unserved(addr));
        return;
    };
    let r = &s.regions[ri];
    match r.states.get(page) {
        MISSING if r.states.claim(page, MISSING) => {
            if let Some(rec) = &s.recorder {
                rec.record(ri, page);
            }
            s.fill(
                ri,
                page,
                page + 1,
                Path::Demand,
                bounce,
                rw == ReadWrite::Write,
            );
            s.counters.latency.record(t0.elapsed());
        }
        REMOVED if r.states.cas(page, REMOVED, CLAIMED_ZERO) => {
            s.fill_removed(ri, page);
            s.counters.latency.record(t0.elapsed());
        }
        PRESENT => {
            // Resolved after the fault was queued: the resolver's wake may have come first.
            let _ = s.uffd.wake(r.addr_of(page), r.page_size);
        }
        // Claimed: the claimant wakes it. Gone: not served any more. Lost a race: the
        // winner resolves it.
        _ => {}
    }
}

/// Copies the runs of missing pages in `start..end` of region `ri`.
fn fill_missing(s: &Shared, ri: usize, start: usize, end: usize, path: Path, bounce: &mut [u8]) {
    let r = &s.regions[ri];
    let mut p = start;
    while let Some(first) = r.states.next_missing(p, end) {
        let stop = r.states.claim_run(first, end);
        if stop == first {
            p = first + 1;
            continue;
        }
        s.fill(ri, first, stop, path, bounce, false);
        p = stop;
    }
}

/// Copies each working-set page with its prefetch chunk, in order, then lets background fill
/// start.
fn replay_loop(s: &Shared, ws: &WorkingSet, ready: &dyn Fn()) {
    let mut bounce = vec![0u8; s.chunk_max];
    let _ = thread::current().name().map(str::len);
    ready();
    for &(ri, off) in ws.entries() {
        if s.stopping() {
            break;
        }
        while s.demand_busy.load(Ordering::Acquire) != 0 && !s.stopping() {
            thread::yield_now();
        }
        let (ri, r) = (ri as usize, &s.regions[ri as usize]);
        let page = (off / r.page_size as u64) as usize;
        let pages = (s.prefetch / r.page_size).max(1);
        let start = page / pages * pages;
        fill_missing(
            s,
            ri,
            start,
            (start + pages).min(r.states.len()),
            Path::Replay,
            &mut bounce,
        );
    }
    s.replaying.store(false, Ordering::Release);
    let _st = s.status.lock().unwrap_or_else(PoisonError::into_inner);
    s.changed.notify_all();
}

fn prefetch(s: &Shared, addr: usize, ra: &mut Readahead, bounce: &mut [u8]) {
    let Some((ri, page)) = s.region_of(addr) else {
        return;
    };
    let r = &s.regions[ri];
    let window_pages = |w: usize| (w / r.page_size).max(1);
    // Sequential: the fault lies just past the previous window (within one base chunk), as
    // a forward scan's next fault does.
    let sequential =
        ra.region == ri && page >= ra.next && page < ra.next + window_pages(s.prefetch);
    ra.window = if sequential {
        (ra.window * 2).min(s.prefetch_max)
    } else {
        s.prefetch
    };
    let pages = window_pages(ra.window);
    let start = page / pages * pages;
    let end = (start + pages).min(r.states.len());
    ra.region = ri;
    ra.next = end;
    fill_missing(s, ri, start, end, Path::Prefetch, bounce);
}

fn background_loop(s: &Shared, me: usize, of: usize, ready: &dyn Fn()) {
    // Background work yields the CPU to the program and to demand faults: a lower priority
    // (nice 10: about a tenth of a CPU when both compete), never starved entirely.
    // SAFETY: setpriority(2) on this thread (its tid) has no memory effects; failure (a
    // sandbox forbidding it) just leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
    let mut bounce = vec![0u8; s.chunk_max];
    let _ = thread::current().name().map(str::len);
    ready();
    let started = Instant::now();
    let mut copied: u64 = 0;
    // Start small and double while copies are fast: the first demand fault never waits
    // behind a large read of a slow source.
    let mut step_pages = 0;
    // A working set being replayed goes first.
    while s.replaying.load(Ordering::Acquire) && !s.stopping() {
        let st = s.status.lock().unwrap_or_else(PoisonError::into_inner);
        if s.replaying.load(Ordering::Acquire) && !s.stopping() {
            let _ = s.changed.wait_timeout(st, Duration::from_millis(50));
        }
    }
    while !s.stopping() && s.outstanding.load(Ordering::Acquire) != 0 {
        let mut progress = false;
        for (ri, r) in s.regions.iter().enumerate() {
            let chunk = (s.background_chunk / r.page_size).max(1);
            let chunks = r.states.len().div_ceil(chunk);
            let mut c = me;
            while c < chunks {
                if s.stopping() {
                    return;
                }
                // Demand faults first.
                while s.demand_busy.load(Ordering::Acquire) != 0 && !s.stopping() {
                    thread::yield_now();
                }
                let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(r.states.len()));
                let min_step = (MIN_BACKGROUND_STEP / r.page_size).clamp(1, chunk);
                let mut p = lo;
                while let Some(first) = r.states.next_missing(p, hi) {
                    // A slow source (a disk, a network) gets smaller reads, so that a demand
                    // fault never waits long behind one: about a millisecond each.
                    let step = step_pages.clamp(min_step, chunk);
                    let stop = r.states.claim_run(first, hi.min(first + step));
                    if stop == first {
                        p = first + 1;
                        continue;
                    }
                    let t = Instant::now();
                    s.fill(ri, first, stop, Path::Background, &mut bounce, false);
                    let took = t.elapsed();
                    if took > STEP_SLOW && step > min_step {
                        step_pages = step / 2;
                    } else if took < STEP_FAST && stop - first == step && step < chunk {
                        step_pages = step * 2;
                    }
                    copied += ((stop - first) * r.page_size) as u64;
                    progress = true;
                    p = stop;
                }
                if let Some(rate) = s.background_rate {
                    throttle(s, started, copied, rate);
                }
                c += of;
            }
        }
        if !progress {
            // What is left is claimed by others or waits for an event: wait a little.
            let st = s.status.lock().unwrap_or_else(PoisonError::into_inner);
            if !st.populated && !s.stopping() {
                let _ = s.changed.wait_timeout(st, Duration::from_millis(5));
            }
        }
    }
}

/// The smallest background read the step adaptation goes down to.
const MIN_BACKGROUND_STEP: usize = 64 << 10;
/// A background copy slower than this halves the next one...
const STEP_SLOW: Duration = Duration::from_micros(2000);
/// ...and one faster than this doubles it (up to the chunk).
const STEP_FAST: Duration = Duration::from_micros(500);

/// Sleeps (interruptibly, on the status condition) until `copied` bytes since `started` are
/// within `rate` bytes per second.
fn throttle(s: &Shared, started: Instant, copied: u64, rate: u64) {
    let due = Duration::from_secs_f64(copied as f64 / rate as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        let st = s.status.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.stopping() {
            let _ = s.changed.wait_timeout(st, due - elapsed);
        }
    }
}

fn set_nonblocking(uffd: &Uffd) -> Result<(), ServeError> {
    let fd = uffd.as_fd().as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor this `Uffd` owns; no memory is involved.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0
            && (fl & libc::O_NONBLOCK != 0
                || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0)
    };
    if ok {
        Ok(())
    } else {
        Err(ServeError::Uffd(Error::last(crate::Operation::Fcntl)))
    }
}

fn eventfd() -> Result<OwnedFd, ServeError> {
    // SAFETY: eventfd(2) takes an initial value and flags and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(ServeError::Config(format!(
            "eventfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
