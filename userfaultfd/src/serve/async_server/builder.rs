//! Configuring and starting an [`AsyncServer`]: [`AsyncServerBuilder`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::super::builder::{ErrorCallback, ForkCallback, Prepared};
use super::super::server::Server;
use super::super::threads::ReplayPlan;
use super::super::working_set::WorkingSet;
use super::super::{
    FailurePolicy, ServeError, ServerBuilder, DEFAULT_BACKGROUND_CHUNK, DEFAULT_PREFETCH,
    MAX_PREFETCH,
};
use super::region::AsyncRegion;
use super::sched::Scheduler;
use super::server::AsyncServer;
use super::tasks::{background, reader, replay, watch_process, Ctx, PidFd, StopFd, UffdFd};
use crate::{PageMap, Uffd};

/// Default bound on source reads in flight at once ([`AsyncServerBuilder::max_fetches`]).
pub const DEFAULT_MAX_FETCHES: usize = 64;
/// Default number of background fill tasks ([`AsyncServerBuilder::background_fetches`]).
pub const DEFAULT_BACKGROUND_FETCHES: usize = 4;

/// Configures and starts an [`AsyncServer`] (feature `tokio`). The knobs shared with
/// [`ServerBuilder`] mean the same; see the [module documentation](super) for the rest.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{AsyncRegion, AsyncServerBuilder, MemorySource, Region};
///
/// let page = userfaultfd::page_size();
/// let image: Vec<u8> = (0..64 * page).map(|i| (i / page) as u8).collect();
/// let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(64 * page)?);
/// // A synchronous source works too: its reads run on tokio's blocking pool.
/// let region = AsyncRegion::from(Region::new(memory.clone(), Arc::new(MemorySource::new(image))));
/// let server = AsyncServerBuilder::new()
///     .region(region)
///     .max_fetches(16)
///     .start(userfaultfd::UffdBuilder::new().user_mode_only(true).create()?)?;
/// // Touch from a thread of our own: a fault blocks its thread until served.
/// let m = memory.clone();
/// let byte = tokio::task::spawn_blocking(move || m.read_obj::<u8>(5 * page)).await??;
/// assert_eq!(byte, 5);
/// server.wait_populated(Duration::from_secs(10)).await?;
/// assert_eq!(server.shutdown().await?.pages_present(), 64);
/// # Ok(()) }
/// ```
pub struct AsyncServerBuilder {
    regions: Vec<AsyncRegion>,
    max_fetches: usize,
    background_fetches: usize,
    prefetch: usize,
    prefetch_max: usize,
    background_chunk: usize,
    policy: FailurePolicy,
    fallback: FailurePolicy,
    register: bool,
    stop_when_populated: bool,
    background_rate: Option<u64>,
    record: bool,
    exact: bool,
    replay: Option<WorkingSet>,
    track_dirty: bool,
    pagemap: Option<PageMap>,
    monitored: Option<libc::pid_t>,
    on_error: Option<ErrorCallback>,
    on_fork: Option<ForkCallback>,
}

impl std::fmt::Debug for AsyncServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncServerBuilder")
            .field("regions", &self.regions)
            .field("max_fetches", &self.max_fetches)
            .field("background_fetches", &self.background_fetches)
            .field("prefetch", &self.prefetch)
            .field("prefetch_max", &self.prefetch_max)
            .field("background_chunk", &self.background_chunk)
            .field("policy", &self.policy)
            .field("fallback", &self.fallback)
            .field("register", &self.register)
            .field("stop_when_populated", &self.stop_when_populated)
            .field("background_rate", &self.background_rate)
            .field("record", &self.record)
            .field("exact_recording", &self.exact)
            .field("replay", &self.replay.as_ref().map(WorkingSet::len))
            .field("track_dirty", &self.track_dirty)
            .field("monitored", &self.monitored)
            .finish_non_exhaustive()
    }
}

impl Default for AsyncServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AsyncServerBuilder {
    /// A builder with the defaults: at most [`DEFAULT_MAX_FETCHES`] (64) source reads in
    /// flight, [`DEFAULT_BACKGROUND_FETCHES`] (4) background fill tasks copying up to 2 MiB
    /// at a time, prefetch of the 256 KiB-aligned chunk around each fault (growing to 2 MiB
    /// for sequential faults), [`FailurePolicy::Poison`] falling back to
    /// [`FailurePolicy::Stop`], regions registered `MISSING` by the server.
    pub fn new() -> AsyncServerBuilder {
        AsyncServerBuilder {
            regions: Vec::new(),
            max_fetches: DEFAULT_MAX_FETCHES,
            background_fetches: DEFAULT_BACKGROUND_FETCHES,
            prefetch: DEFAULT_PREFETCH,
            prefetch_max: MAX_PREFETCH,
            background_chunk: DEFAULT_BACKGROUND_CHUNK,
            policy: FailurePolicy::Poison,
            fallback: FailurePolicy::Stop,
            register: true,
            stop_when_populated: false,
            background_rate: None,
            record: false,
            exact: false,
            replay: None,
            track_dirty: false,
            pagemap: None,
            monitored: None,
            on_error: None,
            on_fork: None,
        }
    }

    /// Adds a region to serve (an [`AsyncRegion`], or a [`Region`](super::super::Region)
    /// converted with `AsyncRegion::from`).
    pub fn region(mut self, region: AsyncRegion) -> AsyncServerBuilder {
        self.regions.push(region);
        self
    }

    /// The most source reads in flight at once, over all regions (default 64, at least 1).
    /// Demand faults may use all of them; prefetch and background fill only the slots below
    /// `n - max(1, n / 4)` (all of them when `n` is 1), so a quarter is always left to demand
    /// faults. Raise it for a source with high latency and high bandwidth (an object store);
    /// lower it to spare the source.
    pub fn max_fetches(mut self, n: usize) -> AsyncServerBuilder {
        self.max_fetches = n;
        self
    }

    /// Background fill tasks (default 4; 0 turns background fill off, so only touched chunks
    /// are populated). Each copies one block at a time, and waits for a slot behind every
    /// demand fault and prefetch.
    pub fn background_fetches(mut self, n: usize) -> AsyncServerBuilder {
        self.background_fetches = n;
        self
    }

    /// After a demand fault, prefetch the rest of its aligned chunk of `bytes` (a power of
    /// two; 0 turns prefetch off), growing to [`prefetch_max`](Self::prefetch_max) for
    /// sequential faults, as [`ServerBuilder::prefetch`]. With a source that has a
    /// [`chunk_size`](super::super::AsyncPageSource::chunk_size), the window is widened to
    /// whole source chunks, each read with one request.
    pub fn prefetch(mut self, bytes: usize) -> AsyncServerBuilder {
        self.prefetch = bytes;
        self
    }

    /// The largest prefetch window (default 2 MiB).
    pub fn prefetch_max(mut self, bytes: usize) -> AsyncServerBuilder {
        self.prefetch_max = bytes;
        self
    }

    /// The largest background read (default 2 MiB; a multiple of every region's page size).
    /// With a source that has a chunk size, background blocks are whole, aligned chunks: as
    /// many as fit in `bytes`, at least one.
    pub fn background_chunk(mut self, bytes: usize) -> AsyncServerBuilder {
        self.background_chunk = bytes;
        self
    }

    /// What to do with pages whose source read failed (default [`FailurePolicy::Poison`]),
    /// as [`ServerBuilder::failure_policy`].
    pub fn failure_policy(mut self, policy: FailurePolicy) -> AsyncServerBuilder {
        self.policy = policy;
        self
    }

    /// The policy used instead of [`FailurePolicy::Poison`] on kernels without
    /// `UFFDIO_POISON` (before 6.6); default [`FailurePolicy::Stop`].
    pub fn poison_fallback(mut self, policy: FailurePolicy) -> AsyncServerBuilder {
        self.fallback = policy;
        self
    }

    /// Whether the server registers its regions (`MISSING`, plus `MINOR` for
    /// [`minor`](AsyncRegion::minor) ones) at start and unregisters them at shutdown
    /// (default true), as [`ServerBuilder::register`].
    pub fn register(mut self, register: bool) -> AsyncServerBuilder {
        self.register = register;
        self
    }

    /// Stop the tasks (and unregister, if the server registered) as soon as every page is
    /// present. Default false.
    pub fn stop_when_populated(mut self, stop: bool) -> AsyncServerBuilder {
        self.stop_when_populated = stop;
        self
    }

    /// Called (from a server task) with every error the server absorbs: failed source reads,
    /// faults outside the regions, failed ioctls, panics.
    pub fn on_error(
        mut self,
        f: impl Fn(&ServeError) + Send + Sync + 'static,
    ) -> AsyncServerBuilder {
        self.on_error = Some(Box::new(f));
        self
    }

    /// Limits background fill to `bytes_per_sec` over all background tasks, as
    /// [`ServerBuilder::background_rate`]: demand fetches and prefetch are not limited, so a
    /// shared source (a disk, a link, an object store's request budget) is left to the
    /// workload. [`start`](Self::start) refuses 0 with [`ServeError::Config`].
    pub fn background_rate(mut self, bytes_per_sec: u64) -> AsyncServerBuilder {
        self.background_rate = Some(bytes_per_sec);
        self
    }

    /// Record the order in which pages are first demanded, as
    /// [`ServerBuilder::record_working_set`]: read it with [`AsyncServer::working_set`] or
    /// [`AsyncServer::finish_recording`], save it with [`WorkingSet::save`], and replay it
    /// with [`replay`](Self::replay). Default off.
    pub fn record_working_set(mut self, record: bool) -> AsyncServerBuilder {
        self.record = record;
        self
    }

    /// Record the working set exactly (implies [`record_working_set`](Self::record_working_set)),
    /// as [`ServerBuilder::exact_recording`]: until [`AsyncServer::finish_recording`] only the
    /// faulting pages are fetched (no prefetch, no rest of a source chunk, no background
    /// fill), so every page the workload touches is demanded and recorded. Cannot be combined
    /// with [`replay`](Self::replay). Default off.
    pub fn exact_recording(mut self, exact: bool) -> AsyncServerBuilder {
        self.exact = exact;
        if exact {
            self.record = true;
        }
        self
    }

    /// Replay a recorded working set, as [`ServerBuilder::replay`]: as soon as the server
    /// starts, its pages are fetched in the recorded order (an
    /// [exact](WorkingSet::is_exact) set page runs, widened to whole source chunks when the
    /// source has a [`chunk_size`](super::super::AsyncPageSource::chunk_size), each chunk once;
    /// a set recorded while prefetching, each entry's prefetch chunk), as many at once as the
    /// prefetch slots of [`max_fetches`](Self::max_fetches) allow; demand faults overtake
    /// them, prefetch waits for them, and background fill starts once they are in.
    /// [`AsyncServer::wait_replayed`] waits for that moment. Entries must lie inside the
    /// regions (else [`ServeError::Config`] from [`start`](Self::start)).
    pub fn replay(mut self, working_set: WorkingSet) -> AsyncServerBuilder {
        self.replay = Some(working_set);
        self
    }

    /// Track the pages the program writes, as [`ServerBuilder::track_dirty`]: pages are
    /// installed write-protected and [`AsyncServer::dirty_pages`] lists those written since
    /// the start or the last call. With [`FeatureFlags::WP_ASYNC`](crate::FeatureFlags::WP_ASYNC)
    /// on the `Uffd` (Linux 6.7) writes proceed without a fault and `PAGEMAP_SCAN` finds them;
    /// otherwise each first write after a scan is a write-protect fault that the reader task
    /// records and resolves at once (Linux 5.7 for anonymous memory, 5.19 for shmem and
    /// hugetlbfs). Default off.
    pub fn track_dirty(mut self, track: bool) -> AsyncServerBuilder {
        self.track_dirty = track;
        self
    }

    /// The `pagemap` file [`AsyncServer::dirty_pages`] scans with `WP_ASYNC`, as
    /// [`ServerBuilder::pagemap`] (default `/proc/self/pagemap`; give the served process's
    /// when its memory is not this process's).
    pub fn pagemap(mut self, pagemap: PageMap) -> AsyncServerBuilder {
        self.pagemap = Some(pagemap);
        self
    }

    /// The process whose memory is served, when it is not this one (a VMM that handed over its
    /// userfaultfd), as [`ServerBuilder::monitored_process`]: the server watches it through a
    /// pidfd (Linux 5.3) on the runtime's reactor and stops serving when it exits;
    /// [`AsyncServer::wait_halted`] then returns "the monitored process exited". A
    /// userfaultfd does not report its process's exit by itself.
    ///
    /// [`start`](Self::start) returns [`ServeError::Config`] when the process cannot be
    /// watched (it does not exist, or pidfds are missing).
    pub fn monitored_process(mut self, pid: libc::pid_t) -> AsyncServerBuilder {
        self.monitored = Some(pid);
        self
    }

    /// Called with the child's userfaultfd of every `UFFD_EVENT_FORK`, as
    /// [`ServerBuilder::on_fork`].
    pub fn on_fork(mut self, f: impl Fn(Uffd) + Send + Sync + 'static) -> AsyncServerBuilder {
        self.on_fork = Some(Box::new(f));
        self
    }

    /// Starts serving with `uffd` (made non-blocking if it is not, as the server owns it):
    /// registers the regions (unless [`register(false)`](Self::register)), then spawns the
    /// reader and the background tasks on the current tokio runtime, which needs its IO and
    /// time drivers (`Runtime::new`, `#[tokio::main]`, or a builder with `enable_all`).
    /// Either flavour of runtime works: faults are served by tasks, never by blocking a
    /// worker; the faulting threads are the program's own (never a runtime worker of this
    /// runtime, which would wait on itself).
    ///
    /// # Errors
    ///
    /// [`ServeError::Config`] for a refused configuration (as [`ServerBuilder::start`], plus
    /// `max_fetches(0)` and a call outside a runtime with IO and time);
    /// [`ServeError::Uffd`] when registration fails.
    pub fn start(self, uffd: Uffd) -> Result<AsyncServer, ServeError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ServeError::Config(
                "AsyncServerBuilder::start must be called from within a tokio runtime".into(),
            )
        })?;
        if self.max_fetches == 0 {
            return Err(ServeError::Config("max_fetches must be at least 1".into()));
        }
        // tokio panics (rather than failing) when a driver is missing: find out before
        // anything is registered.
        let timers = catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
        if timers.is_err() {
            return Err(ServeError::Config(
                "the tokio runtime has no time driver: build it with enable_all()".into(),
            ));
        }
        let mut sync = ServerBuilder::new()
            .prefetch(self.prefetch)
            .prefetch_max(self.prefetch_max)
            .background_threads(0)
            .background_chunk(self.background_chunk)
            .failure_policy(self.policy)
            .poison_fallback(self.fallback)
            .register(self.register)
            .stop_when_populated(self.stop_when_populated);
        if let Some(f) = self.on_error {
            sync = sync.on_error(move |e| f(e));
        }
        if let Some(f) = self.on_fork {
            sync = sync.on_fork(f);
        }
        if let Some(pid) = self.monitored {
            sync = sync.monitored_process(pid);
        }
        if let Some(rate) = self.background_rate {
            sync = sync.background_rate(rate);
        }
        sync = sync
            .record_working_set(self.record)
            .exact_recording(self.exact)
            .track_dirty(self.track_dirty);
        if let Some(pm) = self.pagemap {
            sync = sync.pagemap(pm);
        }
        if let Some(ws) = self.replay {
            sync = sync.replay(ws);
        }
        let mut sources = Vec::with_capacity(self.regions.len());
        let mut chunks = Vec::with_capacity(self.regions.len());
        for r in self.regions {
            chunks.push(if r.region.minor {
                None
            } else {
                r.source.chunk_size().filter(|&c| c > 0)
            });
            sources.push(r.source);
            sync = sync.region(r.region);
        }
        let Prepared {
            shared,
            register,
            total,
            replay: working_set,
            ..
        } = sync.prepare(uffd)?;
        let fds = catch_unwind(AssertUnwindSafe(|| {
            // `try_new` is deprecated from tokio 1.54 for the `unsafe` `register`, which
            // tokio 1.48 lacks. What `register` asks holds: each inner value keeps its fd
            // (the `Shared`'s own) open while it lives, and always returns that same fd.
            #[allow(deprecated)]
            let u = AsyncFd::try_new(UffdFd(Arc::clone(&shared))).map_err(|e| e.into_parts().1);
            #[allow(deprecated)]
            let s = AsyncFd::try_new(StopFd(Arc::clone(&shared))).map_err(|e| e.into_parts().1);
            #[allow(deprecated)]
            let p = shared.monitored.as_ref().map(|_| {
                AsyncFd::try_new(PidFd(Arc::clone(&shared))).map_err(|e| e.into_parts().1)
            });
            (u, s, p.transpose())
        }));
        let (ufd, stop_fd, pid_fd) = match fds {
            Ok((Ok(u), Ok(s), Ok(p))) => (u, s, p),
            failed => {
                if register {
                    let _ = shared.unregister_all();
                }
                return Err(match failed {
                    Ok((Err(e), _, _)) | Ok((_, Err(e), _)) | Ok((_, _, Err(e))) => {
                        ServeError::Config(format!(
                            "cannot register the userfaultfd with the tokio reactor: {e}"
                        ))
                    }
                    _ => ServeError::Config(
                        "the tokio runtime has no IO driver: build it with enable_all()".into(),
                    ),
                });
            }
        };
        let ctx = Arc::new(Ctx {
            s: Arc::clone(&shared),
            sources,
            chunks,
            sched: Scheduler::new(self.max_fetches),
            stop: watch::Sender::new(false),
            progress: watch::Sender::new(0),
            live: watch::Sender::new(0),
            claim_lock: std::sync::Mutex::new(()),
            handle,
        });
        ctx.spawn(reader(Arc::clone(&ctx), ufd, stop_fd));
        if let Some(p) = pid_fd {
            ctx.spawn(watch_process(Arc::clone(&ctx), p));
        }
        if let Some(ws) = working_set {
            let plan = ReplayPlan::new(ws);
            ctx.spawn(replay(Arc::clone(&ctx), plan));
        }
        for i in 0..self.background_fetches {
            let c = Arc::clone(&ctx);
            let (n, block) = (self.background_fetches, self.background_chunk);
            ctx.spawn(async move { background(c, i, n, block).await });
        }
        if total == 0 {
            shared.mark_populated();
        }
        Ok(AsyncServer {
            server: Server {
                shared,
                threads: Vec::new(),
                stopped: false,
            },
            ctx,
        })
    }
}
