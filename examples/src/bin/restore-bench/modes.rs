//! The four ways of getting the image into memory, the workload that runs on it, and the
//! verification afterwards.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use examples::{page_size, wait_readable, Rng, StopSignal, Wait};
use userfaultfd::mmap::{MemoryMapping, MemoryMappingBuilder};
use userfaultfd::serve::{FileSource, MappedFileSource, PageSource, Region, ServerBuilder};
use userfaultfd::{Error, Event, EventBuffer, IoctlFlags, Uffd, UffdBuilder};

use crate::source::{Throttle, Throttled};
use crate::Setup;

/// Seed of the working set's order.
const WORKLOAD_SEED: u64 = 0x0dd_c0ffee;
/// The longest a prepared thread waits to be started.
const GO_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest the naive handler waits for a fault before deciding the run is stuck.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound on `Server::wait_populated`.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes per `pread` of the eager load (as a disk request).
const EAGER_CHUNK: usize = 2 << 20;

/// What one mode run measured.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub first_touch_us: f64,
    pub working_set_ms: f64,
    pub populated_ms: f64,
    pub demand_faults: u64,
    pub gbps: f64,
}

impl Figures {
    fn new(
        image_bytes: usize,
        t0: Instant,
        w: &Workload,
        populated: Instant,
        faults: u64,
    ) -> Figures {
        let since = |t: Instant| t.saturating_duration_since(t0);
        let populated = since(populated);
        Figures {
            first_touch_us: since(w.first).as_secs_f64() * 1e6,
            working_set_ms: since(w.working_set).as_secs_f64() * 1e3,
            populated_ms: populated.as_secs_f64() * 1e3,
            demand_faults: faults,
            gbps: image_bytes as f64 / (populated.as_nanos().max(1) as f64),
        }
    }
}

/// The pages each workload thread touches: first its share of the working set (random order),
/// then its contiguous share of the whole image (sequential).
pub struct Plan {
    working_set: Vec<Vec<usize>>,
    sweep: Vec<std::ops::Range<usize>>,
}

impl Plan {
    pub fn new(pages: usize, percent: usize, threads: usize) -> Plan {
        let n = pages * percent / 100;
        let mut order: Vec<usize> = (0..pages).collect();
        Rng::new(WORKLOAD_SEED).shuffle(&mut order);
        order.truncate(n);
        Plan {
            working_set: (0..threads)
                .map(|t| order[t * n / threads..(t + 1) * n / threads].to_vec())
                .collect(),
            sweep: (0..threads)
                .map(|t| t * pages / threads..(t + 1) * pages / threads)
                .collect(),
        }
    }

    fn threads(&self) -> usize {
        self.sweep.len()
    }
}

/// When one workload thread (or all of them, combined) got where.
#[derive(Debug, Clone, Copy)]
struct Workload {
    /// Its first access completed.
    first: Instant,
    /// Its working-set touches were done.
    working_set: Instant,
    /// It had touched every page of its share.
    end: Instant,
}

impl Workload {
    /// The whole workload: the earliest first touch, the latest working-set and end times.
    fn combine(all: &[Workload]) -> Workload {
        let first = all
            .iter()
            .map(|w| w.first)
            .min()
            .expect("one thread at least");
        let working_set = all.iter().map(|w| w.working_set).max().expect("one thread");
        let end = all.iter().map(|w| w.end).max().expect("one thread");
        Workload {
            first,
            working_set,
            end,
        }
    }
}

/// One workload thread: reads the first word of each page of its plan; says so on `ws_done`
/// when its working set is done.
fn touch(
    mem: &MemoryMapping,
    plan: &Plan,
    t: usize,
    ws_done: Option<&Sender<()>>,
) -> Result<Workload, String> {
    let ps = page_size();
    let mut sum = 0u64;
    let mut first = None;
    let mut read = |p: usize| -> Result<(), String> {
        sum ^= mem
            .read_obj::<u64>(p * ps)
            .map_err(|e| format!("reading page {p}: {e}"))?;
        if first.is_none() {
            first = Some(Instant::now());
        }
        Ok(())
    };
    for &p in &plan.working_set[t] {
        read(p)?;
    }
    let working_set = Instant::now();
    if let Some(tx) = ws_done {
        let _ = tx.send(());
    }
    for p in plan.sweep[t].clone() {
        read(p)?;
    }
    let end = Instant::now();
    std::hint::black_box(sum);
    Ok(Workload {
        first: first.unwrap_or(end),
        working_set,
        end,
    })
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Threads made ready in advance (outside the timed part) that run one job each when started
/// and report through a channel, so that waiting for them is bounded: a thread stuck on a
/// fault nobody serves makes [`Crew::finish`] fail instead of hang.
struct Crew<T> {
    go: Vec<Sender<()>>,
    done: Receiver<(usize, Result<T, String>)>,
    handles: Vec<JoinHandle<()>>,
    what: &'static str,
}

impl<T: Send + 'static> Crew<T> {
    fn spawn<F>(what: &'static str, n: usize, job: F) -> Result<Crew<T>, String>
    where
        F: Fn(usize) -> Result<T, String> + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        let (tx, done) = mpsc::channel();
        let mut crew = Crew {
            go: Vec::with_capacity(n),
            done,
            handles: Vec::with_capacity(n),
            what,
        };
        for i in 0..n {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (job, tx) = (Arc::clone(&job), tx.clone());
            let h = thread::Builder::new()
                .name(format!("{what}-{i}"))
                .spawn(move || {
                    if go_rx.recv_timeout(GO_TIMEOUT).is_err() {
                        return; // never started: the run failed before
                    }
                    let r = catch_unwind(AssertUnwindSafe(|| job(i)))
                        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(p))));
                    let _ = tx.send((i, r));
                })
                .map_err(|e| format!("cannot start a {what} thread: {e}"))?;
            crew.go.push(go_tx);
            crew.handles.push(h);
        }
        Ok(crew)
    }

    fn start(&self) {
        for g in &self.go {
            let _ = g.send(());
        }
    }

    /// Every thread's result, in thread order, or the first failure; waits until `deadline`.
    fn finish(self, deadline: Instant) -> Result<Vec<T>, String> {
        let n = self.handles.len();
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        let mut left = n;
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(wait) {
                Ok((i, Ok(v))) => {
                    out[i] = Some(v);
                    left -= 1;
                }
                Ok((i, Err(e))) => return Err(format!("{} thread {i}: {e}", self.what)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{left} of {n} {} threads had not finished at the deadline (stuck?)",
                        self.what
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{} threads ended without reporting", self.what))
                }
            }
        }
        // Every thread has sent its result, its last act: these joins return at once.
        for h in self.handles {
            let _ = h.join();
        }
        Ok(out.into_iter().map(|v| v.expect("reported")).collect())
    }
}

fn workload_crew(mem: &Arc<MemoryMapping>, plan: &Arc<Plan>) -> Result<Crew<Workload>, String> {
    signalling_crew(mem, plan, None)
}

/// As [`workload_crew`], each thread sending on `ws_done` when its working set is done.
fn signalling_crew(
    mem: &Arc<MemoryMapping>,
    plan: &Arc<Plan>,
    ws_done: Option<Sender<()>>,
) -> Result<Crew<Workload>, String> {
    let (mem, plan) = (Arc::clone(mem), Arc::clone(plan));
    let ws_done = ws_done.map(Mutex::new);
    Crew::spawn("workload", plan.threads(), move |t| {
        let tx = ws_done
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).clone());
        touch(&mem, &plan, t, tx.as_ref())
    })
}

/// Runs the workload on `mem` (its threads already made), started now; bounded by `deadline`.
fn run_workload(crew: Crew<Workload>, deadline: Instant) -> Result<Workload, String> {
    crew.start();
    Ok(Workload::combine(&crew.finish(deadline)?))
}

/// Fresh private anonymous memory of `len` bytes.
fn anonymous(len: usize) -> Result<Arc<MemoryMapping>, String> {
    MemoryMapping::new_private(len)
        .map(Arc::new)
        .map_err(|e| format!("mapping {len} bytes: {e}"))
}

/// The userfaultfd of the lazy modes. User-mode-only faults (`UFFD_USER_MODE_ONLY`, Linux
/// 5.11) are all these modes need: the workload touches the region from user space only (the
/// handlers' reads go into their own buffers, never into the region), and it works without
/// root or `vm.unprivileged_userfaultfd`.
fn create_uffd() -> Result<Uffd, String> {
    UffdBuilder::new()
        .user_mode_only(true)
        .non_blocking(true)
        .require_ioctls(IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE)
        .create()
        .map_err(|e| format!("creating a userfaultfd: {e}"))
}

/// The source the lazy modes read from with `read_at`: `pread` of the file, throttled if asked.
fn pread_source(setup: &Setup) -> Result<Arc<dyn PageSource>, String> {
    #[cfg(feature = "object-store")]
    if let Some(obj) = &setup.object {
        return Ok(Arc::new(obj.source()?));
    }
    let file: Arc<dyn PageSource> = Arc::new(
        FileSource::open(&setup.path).map_err(|e| format!("{}: {e}", setup.path.display()))?,
    );
    Ok(match &setup.throttle {
        Some(t) => Arc::new(Throttled::new(file, Arc::clone(t))),
        None => file,
    })
}

/// A mode's outcome: the region to verify, the figures, and (for serve) a detail line.
pub struct Outcome {
    pub memory: Arc<MemoryMapping>,
    pub figures: Figures,
    pub detail: Option<String>,
    /// Figures of the object-store source (`gets`, ...), printed after the others.
    pub extra: Vec<(&'static str, String)>,
}

// ----------------------------------------------------------------------------------------
// eager

/// T threads `pread` the whole image into fresh anonymous memory, then the workload runs.
pub fn eager(setup: &Setup) -> Result<Outcome, String> {
    #[cfg(feature = "object-store")]
    if let Some(obj) = &setup.object {
        return eager_download(setup, obj);
    }
    let len = setup.len;
    let memory = anonymous(len)?;
    let threads = setup.plan.threads();
    let file = Arc::new(File::open(&setup.path).map_err(|e| format!("{e}"))?);
    let loaders = {
        let (memory, file) = (Arc::clone(&memory), Arc::clone(&file));
        let throttle = setup.throttle.clone();
        Crew::spawn("load", threads, move |t| {
            load_share(&memory, &file, throttle.as_deref(), t, threads)
        })?
    };
    let workload = workload_crew(&memory, &setup.plan)?;
    let t0 = Instant::now();
    loaders.start();
    loaders.finish(t0 + setup.deadline)?;
    let w = run_workload(workload, t0 + setup.deadline)?;
    Ok(Outcome {
        figures: Figures::new(len, t0, &w, w.end, 0),
        memory,
        detail: None,
        extra: Vec::new(),
    })
}

/// `eager` from object storage: every chunk downloaded (concurrently) before the workload runs.
#[cfg(feature = "object-store")]
fn eager_download(setup: &Setup, obj: &crate::objstore::ObjectImage) -> Result<Outcome, String> {
    let len = setup.len;
    let memory = anonymous(len)?;
    let workload = workload_crew(&memory, &setup.plan)?;
    let src = obj.download_source()?;
    let t0 = Instant::now();
    crate::objstore::ObjectImage::download(&src, &memory)?;
    let w = run_workload(workload, t0 + setup.deadline)?;
    Ok(Outcome {
        figures: Figures::new(len, t0, &w, w.end, 0),
        memory,
        detail: None,
        extra: crate::objstore::counters(&src, len),
    })
}

/// Loader `t` of `n`: `pread`s its contiguous share of the file into `memory`.
fn load_share(
    memory: &MemoryMapping,
    file: &File,
    throttle: Option<&Throttle>,
    t: usize,
    n: usize,
) -> Result<(), String> {
    let ps = page_size();
    let pages = memory.size() / ps;
    let (start, end) = (t * pages / n * ps, (t + 1) * pages / n * ps);
    let mut off = start;
    while off < end {
        let want = EAGER_CHUNK.min(end - off);
        if let Some(th) = throttle {
            th.wait(want);
        }
        let dst = memory.as_ptr().wrapping_add(off);
        // The kernel writes into the mapping; no Rust reference to it exists (MappedRegion).
        // SAFETY: `dst..dst + want` lies inside `memory`, which is mapped, owned by this
        // benchmark and not yet shared with any reader (the workload starts after the load).
        let r = unsafe { libc::pread(file.as_raw_fd(), dst.cast(), want, off as libc::off_t) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("pread at {off}: {e}"));
        }
        if r == 0 {
            return Err(format!("pread at {off}: unexpected end of the image"));
        }
        off += r as usize;
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------
// mmap

/// The file mapped `MAP_PRIVATE`: the kernel's own page-cache faults (with its fault-around).
pub fn mmap(setup: &Setup) -> Result<Outcome, String> {
    let file = File::open(&setup.path).map_err(|e| format!("{e}"))?;
    let memory = Arc::new(
        MemoryMappingBuilder::new(setup.len)
            .private()
            .from_fd(&file, 0)
            .build()
            .map_err(|e| format!("mapping the image: {e}"))?,
    );
    let workload = workload_crew(&memory, &setup.plan)?;
    // `mmap(2)` itself populates nothing: the region is ready once it returned.
    let t0 = Instant::now();
    let w = run_workload(workload, t0 + setup.deadline)?;
    Ok(Outcome {
        figures: Figures::new(setup.len, t0, &w, w.end, 0),
        memory,
        detail: None,
        extra: Vec::new(),
    })
}

// ----------------------------------------------------------------------------------------
// naive

/// The naive handler's shared state.
struct Naive {
    uffd: Uffd,
    source: Arc<dyn PageSource>,
    base: usize,
    len: usize,
    stop: StopSignal,
    faults: AtomicU64,
    resolved: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Naive {
    fn serve(&self) {
        if let Err(e) = self.serve_loop() {
            // Unregister so faulting threads wake (with zero pages: verification then fails
            // loudly) instead of waiting for a handler that is gone.
            self.error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(e);
            let _ = self
                .uffd
                .unregister(self.base as *mut libc::c_void, self.len);
        }
    }

    fn serve_loop(&self) -> Result<(), String> {
        let mut buf = EventBuffer::new(16);
        let mut page = vec![0u8; page_size()];
        loop {
            match wait_readable(&[self.uffd.as_fd()], Some(&self.stop), IDLE_TIMEOUT) {
                Ok(Wait::Ready(_)) => {}
                Ok(Wait::Stopped) => return Ok(()),
                Ok(Wait::TimedOut) => return Err(format!("no fault for {IDLE_TIMEOUT:?}")),
                Err(e) => return Err(format!("poll: {e}")),
            }
            // Non-blocking: nothing pending reads as no events, and the loop polls again.
            let events = self
                .uffd
                .read_events(&mut buf)
                .map_err(|e| format!("read: {e}"))?;
            for event in events {
                match event.map_err(|e| e.to_string())? {
                    Event::Pagefault { addr, .. } => self.fault(addr as usize, &mut page)?,
                    other => return Err(format!("unexpected event {other:?}")),
                }
            }
        }
    }

    /// One fault: read its page from the source, one `UFFDIO_COPY` (or `UFFDIO_ZEROPAGE`).
    fn fault(&self, addr: usize, page: &mut [u8]) -> Result<(), String> {
        let ps = page.len();
        let addr = addr & !(ps - 1);
        if addr < self.base || addr >= self.base + self.len {
            return Err(format!("fault at {addr:#x} outside the region"));
        }
        self.faults.fetch_add(1, Ordering::Relaxed);
        let off = (addr - self.base) as u64;
        self.source
            .read_at(off, page)
            .map_err(|e| format!("reading the image at {off}: {e}"))?;
        let dst = addr as *mut libc::c_void;
        let r = if page.iter().all(|&b| b == 0) {
            // SAFETY: `dst` is a page of the region this benchmark registered and owns (no
            // Rust reference into it); the image says its bytes are zero.
            unsafe { self.uffd.zeropage(dst, ps, true) }
        } else {
            // SAFETY: as above; `page` is this thread's live buffer of `ps` bytes.
            unsafe { self.uffd.copy(page.as_ptr().cast(), dst, ps, true) }
        };
        match r {
            Ok(_) => {
                self.resolved.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // The page is there already (a fault delivered twice): wake whoever waits.
            Err(Error::AlreadyMapped { .. }) => self.uffd.wake(dst, ps).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// One handler thread, one `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` per fault, no prefetch, no
/// background fill: every page is populated by its own fault.
pub fn naive(setup: &Setup) -> Result<Outcome, String> {
    let len = setup.len;
    let memory = anonymous(len)?;
    let base = memory.as_ptr() as usize;
    let naive = Arc::new(Naive {
        uffd: create_uffd()?,
        source: pread_source(setup)?,
        base,
        len,
        stop: StopSignal::new().map_err(|e| format!("eventfd: {e}"))?,
        faults: AtomicU64::new(0),
        resolved: AtomicU64::new(0),
        error: Mutex::new(None),
    });
    let workload = workload_crew(&memory, &setup.plan)?;
    // As for `serve`, the clock starts before registration and the handler's start.
    let t0 = Instant::now();
    naive
        .uffd
        .register(base as *mut libc::c_void, len)
        .map_err(|e| format!("registering the region: {e}"))?;
    let handler = {
        let n = Arc::clone(&naive);
        thread::Builder::new()
            .name("naive-handler".into())
            .spawn(move || n.serve())
            .map_err(|e| format!("cannot start the handler: {e}"))?
    };
    let w = run_workload(workload, t0 + setup.deadline);
    // The handler ends at once when signalled (or within IDLE_TIMEOUT of its last fault).
    naive.stop.signal();
    let _ = handler.join();
    // Unregister before anything reads the region again: a page that is still missing then
    // reads as zeros (and fails verification) instead of blocking forever.
    let _ = naive.uffd.unregister(base as *mut libc::c_void, len);
    if let Some(e) = naive
        .error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(format!("handler: {e}"));
    }
    let w = w?;
    let resolved = naive.resolved.load(Ordering::Relaxed);
    let pages = len / page_size();
    if resolved != pages as u64 {
        return Err(format!("{resolved} pages resolved of {pages}"));
    }
    Ok(Outcome {
        figures: Figures::new(len, t0, &w, w.end, naive.faults.load(Ordering::Relaxed)),
        memory,
        detail: None,
        extra: Vec::new(),
    })
}

// ----------------------------------------------------------------------------------------
// serve

/// What a `serve` run does with working sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkingSetUse {
    /// Records the demanded pages while prefetching (one page per chunk touched).
    Record,
    /// Records exactly: only faulting pages are served until the working set is done.
    RecordExact,
    /// Replays the latest recording, the workload starting at once.
    Replay,
    /// Replays the latest recording, the workload starting when the replay is done.
    ReplayThenRun,
}

/// The runtime with its defaults: the page cache mapped (`MappedFileSource`, copied straight
/// from) when unthrottled, `FileSource` behind the throttle otherwise. It records its working
/// set (exactly with `RecordExact`: no prefetch or background fill until every workload thread
/// is done with its working set); with `Replay`, it replays the latest recording.
pub fn serve(setup: &Setup, ws_use: WorkingSetUse) -> Result<Outcome, String> {
    let replay = matches!(ws_use, WorkingSetUse::Replay | WorkingSetUse::ReplayThenRun);
    let working_set = if replay {
        let recorded = setup
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(recorded.clone().ok_or(
            "serve-replay needs a serve or serve-record run before it (its recorded working set)"
                .to_string(),
        )?)
    } else {
        None
    };
    let len = setup.len;
    let memory = anonymous(len)?;
    #[cfg_attr(not(feature = "object-store"), allow(unused_mut))]
    let mut extra = Vec::new();
    #[cfg_attr(not(feature = "object-store"), allow(unused_mut))]
    let mut prefetch = userfaultfd::serve::DEFAULT_PREFETCH;
    #[cfg(feature = "object-store")]
    let mut object_source = None;
    let source: Arc<dyn PageSource> = match &setup.throttle {
        #[cfg(feature = "object-store")]
        _ if setup.object.is_some() => {
            let src = Arc::new(
                setup
                    .object
                    .as_ref()
                    .map_or(Err(String::new()), |o| o.source())?,
            );
            // A fault brings in its whole chunk: no chunk is fetched twice.
            prefetch = src.chunk_size() as usize;
            object_source = Some(Arc::clone(&src));
            src
        }
        None => Arc::new(
            MappedFileSource::open(&setup.path)
                .map_err(|e| format!("{}: {e}", setup.path.display()))?,
        ),
        Some(_) => pread_source(setup)?,
    };
    let errors = Arc::new(Mutex::new(None::<String>));
    let exact = ws_use == WorkingSetUse::RecordExact;
    let (ws_tx, ws_rx) = mpsc::channel();
    let workload = signalling_crew(&memory, &setup.plan, Some(ws_tx))?;
    // The clock starts before `start()`, which registers the region and starts the threads:
    // its background fill may run before `start()` returns (when the spawning thread is
    // preempted), and that work belongs to the measured span.
    let t0 = Instant::now();
    let server = {
        let errors = Arc::clone(&errors);
        let mut builder = ServerBuilder::new()
            .record_working_set(!replay)
            .exact_recording(exact)
            .prefetch(prefetch)
            .prefetch_max(userfaultfd::serve::MAX_PREFETCH.max(prefetch));
        if let Some(ws) = working_set {
            builder = builder.replay(ws);
        }
        builder
            .region(Region::new(Arc::clone(&memory), source))
            .on_error(move |e| {
                errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(|| e.to_string());
            })
            .start(create_uffd()?)
            .map_err(|e| format!("starting the server: {e}"))?
    };
    let server = Arc::new(server);
    // When every workload thread is done with its working set: count the demand faults so far,
    // and end an exact recording.
    let finisher = {
        let (server, threads, deadline) = (
            Arc::clone(&server),
            setup.plan.threads(),
            t0 + setup.deadline,
        );
        thread::spawn(move || {
            for _ in 0..threads {
                let wait = deadline.saturating_duration_since(Instant::now());
                ws_rx.recv_timeout(wait).ok()?;
            }
            let faults = server.stats().demand_faults;
            Some((faults, exact.then(|| server.finish_recording())))
        })
    };
    if ws_use == WorkingSetUse::ReplayThenRun {
        server
            .wait_replayed(setup.deadline)
            .map_err(|e| format!("waiting for the replay: {e}"))?;
    }
    let w = run_workload(workload, t0 + setup.deadline);
    let at_ws = finisher.join().ok().flatten();
    let ws_faults = at_ws.as_ref().map(|(f, _)| *f);
    let exact_set = exact.then(|| at_ws.and_then(|(_, set)| set));
    let populated = w
        .as_ref()
        .map_err(|e| e.clone())
        .and_then(|_| {
            server
                .wait_populated(POPULATE_TIMEOUT)
                .map_err(|e| format!("waiting for population: {e}"))
        })
        .map(|()| Instant::now());
    if !replay {
        let recorded = match exact_set {
            Some(set) => set.ok_or("the exact recording did not end")?,
            None => server.working_set(),
        };
        *setup
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(recorded);
    }
    let server = Arc::try_unwrap(server).map_err(|_| "the server is still shared".to_string())?;
    // Shut down (unregister) before verification reads the region: a page the server missed
    // then reads as zeros instead of blocking.
    let stats = server.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    #[cfg(feature = "object-store")]
    if let Some(src) = &object_source {
        extra = crate::objstore::counters(src, len);
    }
    if let Some(e) = errors.lock().unwrap_or_else(PoisonError::into_inner).take() {
        return Err(format!("server: {e}"));
    }
    let w = w?;
    let populated = populated?.max(w.end);
    let l = &stats.latency;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let detail = format!(
        "demand_faults={} ws_demand_faults={} pages_demand={} pages_prefetch={} pages_background={} pages_replay={} \
         pages_zero={} \
         copy_ioctls={} already_mapped={} latency_p50_us={:.1} latency_p99_us={:.1} \
         latency_max_us={:.1} latency_count={} time_to_populated_ms={}",
        stats.demand_faults,
        ws_faults.map_or("none".into(), |f| f.to_string()),
        stats.pages_demand,
        stats.pages_prefetch,
        stats.pages_background,
        stats.pages_replay,
        stats.pages_zero,
        stats.copy_ioctls,
        stats.already_mapped,
        us(l.p50),
        us(l.p99),
        us(l.max),
        l.count,
        stats
            .time_to_populated
            .map_or("none".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)),
    );
    Ok(Outcome {
        figures: Figures::new(len, t0, &w, populated, stats.demand_faults),
        memory,
        detail: Some(detail),
        extra,
    })
}
