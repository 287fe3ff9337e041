//! Configuring and starting a server: [`ServerBuilder`], [`FailurePolicy`], the checks of a
//! configuration, registration, and the start of the threads.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use libc::c_void;

use super::error::ServeError;
use super::pace::Pacer;
use super::region::Region;
use super::server::Server;
use super::shared::{Dirty, Served, Shared, Status};
use super::state::PageStates;
use super::stats::Counters;
use super::threads::{background_loop, handler_loop, replay_loop, ReplayPlan};
use super::working_set::{Recorder, WorkingSet};
use crate::{Error, FeatureFlags, PageMap, RegisterMode, Uffd, UffdBuilder};

/// What the server does with pages whose source read failed (an I/O error, a short file, a
/// peer gone), so that no faulting thread waits forever. The error is reported either way
/// ([`Stats::source_errors`](super::Stats::source_errors), [`ServerBuilder::on_error`]).
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

pub(super) type ErrorCallback = Box<dyn Fn(&ServeError) + Send + Sync>;
pub(super) type ForkCallback = Box<dyn Fn(Uffd) + Send + Sync>;

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
/// let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(64 * page)?);
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
    exact: bool,
    replay: Option<WorkingSet>,
    replay_threads: usize,
    track_dirty: bool,
    pagemap: Option<PageMap>,
    monitored: Option<libc::pid_t>,
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
            .field("exact_recording", &self.exact)
            .field("replay", &self.replay.as_ref().map(WorkingSet::len))
            .field("replay_threads", &self.replay_threads)
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
/// Default number of threads replaying a working set from a source that is read (not memory):
/// enough reads in flight to keep a link of 200 MB/s with 100 µs per request busy with 4 KiB
/// pages (measured with `restore-bench`: 4 threads replayed a sparse working set at half that).
pub const DEFAULT_REPLAY_THREADS: usize = 16;

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
            exact: false,
            replay: None,
            replay_threads: DEFAULT_REPLAY_THREADS,
            track_dirty: false,
            pagemap: None,
            monitored: None,
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

    /// Limits background fill to `bytes_per_sec` over all background threads together (demand
    /// faults and prefetch are not limited), to leave a shared source or disk to the workload.
    /// Each background copy first reserves its bytes: the bytes whose copy has started are at
    /// most `bytes_per_sec` times the time since the first, plus one copy (at most
    /// [`background_chunk`](Self::background_chunk)). [`start`](Self::start) refuses 0 with
    /// [`ServeError::Config`].
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

    /// Record the working set exactly (implies
    /// [`record_working_set`](Self::record_working_set)): until
    /// [`Server::finish_recording`] the server serves only the faulting pages (no prefetch, no
    /// background fill), so every page the workload touches is demanded and recorded; the set is
    /// [exact](WorkingSet::is_exact), and its replay copies just those pages.
    ///
    /// Use it for a recording run (REAP's record phase): it is as slow as one fault per page
    /// until `finish_recording`, after which prefetch and background fill start. Without it,
    /// a set recorded while prefetching holds one page per chunk the workload touched, and its
    /// replay copies whole chunks: good when the working set is clustered, wasteful when it is
    /// sparse and the source slow. Cannot be combined with [`replay`](Self::replay). Default
    /// off.
    pub fn exact_recording(mut self, exact: bool) -> ServerBuilder {
        self.exact = exact;
        if exact {
            self.record = true;
        }
        self
    }

    /// Replay a recorded working set: as soon as the server starts, replay threads
    /// ([`replay_threads`](Self::replay_threads)) copy its pages in the recorded order, before
    /// background fill begins (demand faults still go first). An [exact](WorkingSet::is_exact)
    /// set is copied page by page (adjacent pages in one read); any other entry stands for its
    /// prefetch chunk. Entries must name pages of this server's regions (checked at
    /// [`start`](Self::start)).
    pub fn replay(mut self, working_set: WorkingSet) -> ServerBuilder {
        self.replay = Some(working_set);
        self
    }

    /// Threads replaying a working set (default [`DEFAULT_REPLAY_THREADS`]). Each keeps one
    /// read of the source in flight, so a source with a per-request latency (a disk queue, a
    /// network round trip) is read many requests at a time, while the threads take the entries
    /// in recorded order. When every region's source is memory (it has a
    /// [direct view](super::PageSource::direct)) one thread copies: the copies are CPU-bound.
    /// Replay threads run at nice 5: below the program and its fault handlers, above
    /// background fill (nice 10).
    /// One thread replays strictly in order.
    pub fn replay_threads(mut self, n: usize) -> ServerBuilder {
        self.replay_threads = n;
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

    /// The process whose memory is served, when it is not this one (a VMM that handed over its
    /// userfaultfd). The server watches it through a pidfd (Linux 5.3) and stops serving when
    /// it exits ([`Server::wait_halted`](super::Server::wait_halted) then returns): a
    /// userfaultfd does not report its process's exit by itself.
    pub fn monitored_process(mut self, pid: libc::pid_t) -> ServerBuilder {
        self.monitored = Some(pid);
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
        if self.replay.is_some() && self.exact {
            return bad("exact_recording cannot be combined with replay".into());
        }
        if self.replay.is_some() && self.replay_threads == 0 {
            return bad("replay_threads must be at least 1".into());
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
        let Prepared {
            shared,
            replay,
            replay_threads,
            handler_threads,
            background_threads,
            register,
            total,
        } = self.prepare(uffd)?;
        let mut threads = Vec::new();
        // `start` returns once every thread runs (thread start-up allocates; serving does not).
        // Each thread then waits for the others: a replay or fill thread that began copying at
        // once would take the CPU from the spawning of the rest, and from `start`'s return
        // (measured: a first touch 1–12 ms late on 2 CPUs).
        let ready = Arc::new(Gate::default());
        let mut spawned = Ok(());
        for i in 0..handler_threads {
            let (s, r) = (Arc::clone(&shared), Arc::clone(&ready));
            spawned = spawned.and_then(|()| {
                spawn(format!("uffd-handler-{i}"), s, r, handler_loop).map(|t| threads.push(t))
            });
        }
        if let Some(ws) = replay {
            let plan = Arc::new(ReplayPlan::new(ws));
            let replay_threads = ReplayPlan::threads(&shared, replay_threads);
            shared.replayers.store(replay_threads, Ordering::Release);
            for i in 0..replay_threads {
                let (s, r, plan) = (Arc::clone(&shared), Arc::clone(&ready), Arc::clone(&plan));
                spawned = spawned.and_then(|()| {
                    spawn(format!("uffd-replay-{i}"), s, r, move |s, ready| {
                        replay_loop(s, &plan, ready)
                    })
                    .map(|t| threads.push(t))
                });
            }
        }
        for i in 0..background_threads {
            let (s, r) = (Arc::clone(&shared), Arc::clone(&ready));
            let n = background_threads;
            spawned = spawned.and_then(|()| {
                spawn(format!("uffd-fill-{i}"), s, r, move |s, ready| {
                    background_loop(s, i, n, ready)
                })
                .map(|t| threads.push(t))
            });
        }
        if let Err(e) = spawned {
            shared.request_stop();
            ready.open();
            for t in threads {
                let _ = t.join();
            }
            if register {
                let _ = shared.unregister_all();
            }
            return Err(e);
        }
        ready.wait_for(threads.len());
        ready.open();
        if total == 0 {
            shared.mark_populated();
        }
        Ok(Server {
            shared,
            threads,
            stopped: false,
        })
    }

    /// Everything [`start`](Self::start) does before it starts threads: checks the
    /// configuration, makes `uffd` non-blocking, registers the regions and builds the state the
    /// serving threads (or tasks) share.
    pub(super) fn prepare(self, uffd: Uffd) -> Result<Prepared, ServeError> {
        self.check()?;
        set_nonblocking(&uffd)?;
        let stop_fd = eventfd()?;
        let monitored = match self.monitored {
            Some(pid) => Some(pidfd(pid)?),
            None => None,
        };
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
                let mut mode = RegisterMode::MISSING;
                if self.track_dirty {
                    mode |= RegisterMode::WRITE_PROTECT;
                }
                if r.minor {
                    mode |= RegisterMode::MINOR;
                }
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
                minor: r.minor,
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
        let memory_sources = regions.iter().all(|r| r.source.direct().is_some());
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
            pacer: self.background_rate.map(Pacer::new),
            registered: self.register,
            stop_when_populated: self.stop_when_populated,
            recorder: self.record.then(|| Recorder::new(total, self.exact)),
            replaying: AtomicBool::new(self.replay.is_some()),
            replayers: AtomicUsize::new(0),
            recording_exact: AtomicBool::new(self.exact),
            memory_sources,
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
            monitored,
            outstanding: AtomicUsize::new(total),
            demand_busy: AtomicUsize::new(0),
            status: Mutex::new(Status::default()),
            changed: Condvar::new(),
            start: Instant::now(),
            on_error: self.on_error,
            on_fork: self.on_fork,
        });
        Ok(Prepared {
            shared,
            replay: self.replay,
            replay_threads: self.replay_threads,
            handler_threads: self.handler_threads,
            background_threads: self.background_threads,
            register: self.register,
            total,
        })
    }
}

/// What [`ServerBuilder::prepare`] built: the shared state, and what is left to start.
pub(super) struct Prepared {
    pub(super) shared: Arc<Shared>,
    pub(super) replay: Option<WorkingSet>,
    pub(super) replay_threads: usize,
    pub(super) handler_threads: usize,
    pub(super) background_threads: usize,
    pub(super) register: bool,
    /// Pages of all regions (0: populated from the start).
    pub(super) total: usize,
}

/// The start line of the server's threads: each says it is ready and waits until
/// [`open`](Gate::open); `start` waits for all of them, then opens it.
#[derive(Default)]
struct Gate {
    /// Threads ready so far, and whether the gate is open.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Gate {
    /// Called by a thread once it has allocated what it needs: counts it, then waits for the
    /// gate to open.
    fn arrive(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.0 += 1;
        self.changed.notify_all();
        while !st.1 {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until `n` threads have arrived. Each arrives right after it starts (a thread that
    /// ends or panics before arriving is counted by [`leave`](Gate::leave)), so this ends.
    fn wait_for(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while st.0 < n {
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Counts a thread that ended without arriving.
    fn leave(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        self.changed.notify_all();
    }

    /// Lets every waiting (and later arriving) thread go.
    fn open(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.changed.notify_all();
    }
}

fn spawn(
    name: String,
    shared: Arc<Shared>,
    ready: Arc<Gate>,
    body: impl FnOnce(&Shared, &dyn Fn()) + Send + 'static,
) -> Result<JoinHandle<()>, ServeError> {
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            // Called by the body once it has allocated what it needs.
            let arrived = Cell::new(false);
            let signal = || {
                arrived.set(true);
                ready.arrive();
            };
            let s = &*shared;
            let result = catch_unwind(AssertUnwindSafe(|| body(s, &signal)));
            if !arrived.get() {
                // Ended (or panicked) before arriving: counted, so that `start` still returns.
                ready.leave();
            }
            if let Err(panic) = result {
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

/// A pidfd of `pid` (pidfd_open(2), Linux 5.3).
fn pidfd(pid: libc::pid_t) -> Result<OwnedFd, ServeError> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(ServeError::Config(format!(
            "cannot watch process {pid}: pidfd_open: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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

#[cfg(test)]
mod tests {
    use super::Gate;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn gate_holds_threads_until_open_and_counts_those_that_leave() {
        let gate = Arc::new(Gate::default());
        let passed = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for _ in 0..3 {
            let (g, p) = (Arc::clone(&gate), Arc::clone(&passed));
            threads.push(thread::spawn(move || {
                g.arrive();
                p.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // A thread that ends without arriving (as one that panics early) still counts.
        let g = Arc::clone(&gate);
        threads.push(thread::spawn(move || g.leave()));
        gate.wait_for(4);
        assert_eq!(
            passed.load(Ordering::SeqCst),
            0,
            "nobody passes a closed gate"
        );
        gate.open();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(passed.load(Ordering::SeqCst), 3);
        // Arriving after it opened does not wait.
        gate.arrive();
    }
}
