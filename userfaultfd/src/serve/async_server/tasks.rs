//! The async server's tasks: the reader (faults and events), the fetches it starts (demand,
//! then prefetch), and background fill; and what they share ([`Ctx`]).

use std::any::Any;
use std::future::{poll_fn, Future};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::super::dispatch::{Batch, Fault};
use super::super::shared::{Path, Shared};
use super::super::state::{CLAIMED_ZERO, MISSING, PRESENT, REMOVED};
use super::super::stats::Counters;
use super::super::threads::{prefetch_window, Readahead, ReplayPlan};
use super::super::{AsyncPageSource, ServeError};
use super::sched::{Priority, Scheduler};
use crate::{Error, EventBuffer, FaultKind, ReadWrite};

/// What the tasks share.
pub(super) struct Ctx {
    pub(super) s: Arc<Shared>,
    /// The source of each region.
    pub(super) sources: Vec<Arc<dyn AsyncPageSource>>,
    /// The read granularity of each region's source in bytes (its `chunk_size`), when it has
    /// one and the region copies (minor regions map the page cache page by page).
    pub(super) chunks: Vec<Option<u64>>,
    pub(super) sched: Arc<Scheduler>,
    /// Set once: every task ends at its next await.
    pub(super) stop: watch::Sender<bool>,
    /// Bumped after every fetch and every batch of events: waits re-check their condition.
    pub(super) progress: watch::Sender<u64>,
    /// Tasks alive (shutdown waits for 0).
    pub(super) live: watch::Sender<usize>,
    /// Held while pages of a chunked source are claimed: one pass claims a chunk's missing
    /// pages before another pass may look at them.
    pub(super) claim_lock: Mutex<()>,
    pub(super) handle: tokio::runtime::Handle,
}

/// The userfaultfd of the shared state, as tokio's `AsyncFd` wants it. The `Arc` keeps the fd
/// open for as long as the `AsyncFd` lives.
pub(super) struct UffdFd(pub(super) Arc<Shared>);

impl AsRawFd for UffdFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.uffd.as_raw_fd()
    }
}

/// The stop eventfd of the shared state (written by `Shared::request_stop`).
pub(super) struct StopFd(pub(super) Arc<Shared>);

impl AsRawFd for StopFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.stop_fd.as_raw_fd()
    }
}

/// The pidfd of the monitored process (`ServerBuilder::monitored_process`), as tokio's
/// `AsyncFd` wants it; only made when the shared state has one.
pub(super) struct PidFd(pub(super) Arc<Shared>);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.monitored.as_ref().map_or(-1, |p| p.as_raw_fd())
    }
}

impl Ctx {
    /// Ends every task at its next await (idempotent).
    pub(super) fn stop_all(&self) {
        self.stop.send_replace(true);
        self.progress.send_modify(|n| *n += 1);
    }

    pub(super) fn stopped(&self) -> bool {
        *self.stop.borrow() || self.s.stopping()
    }

    /// Serialises claim passes over chunked sources (short, never held across an await).
    fn claim_pass(&self) -> MutexGuard<'_, ()> {
        self.claim_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every wait on `progress` (which re-checks its condition).
    pub(super) fn bump(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    /// Runs `fut` as a task of the server: counted (shutdown waits for it), ended when the
    /// server stops, and a panic in it stops the server (unregistering, so that no faulting
    /// thread waits for a claim the task held) as a panic of a server thread does.
    pub(super) fn spawn(self: &Arc<Self>, fut: impl Future<Output = ()> + Send + 'static) {
        self.live.send_modify(|n| *n += 1);
        let guard = Live(Arc::clone(self));
        let mut stop = self.stop.subscribe();
        let ctx = Arc::clone(self);
        self.handle.spawn(async move {
            let _guard = guard;
            let body = CatchUnwind(Box::pin(fut));
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Some(Err(msg)) = race(body, stopped).await {
                ctx.s.report(&ServeError::Panicked(msg.clone()));
                ctx.s.halt(format!("a server task panicked: {msg}"), true);
                ctx.stop_all();
            }
        });
    }

    /// The pages `lo..hi` of the source chunk that page `page` of region `ri` starts in
    /// (`page..page + 1` when the source has no chunk size).
    fn chunk_of(&self, ri: usize, page: usize) -> (usize, usize) {
        let r = &self.s.regions[ri];
        let Some(cs) = self.chunks[ri] else {
            return (page, page + 1);
        };
        let (so, ps) = (self.s.regions[ri].source_offset, r.page_size as u64);
        let start = (so + page as u64 * ps) / cs * cs;
        // A page belongs to the chunk its first byte is in.
        let lo = start.saturating_sub(so).div_ceil(ps) as usize;
        let hi = start.saturating_add(cs).saturating_sub(so).div_ceil(ps);
        (
            lo,
            usize::try_from(hi)
                .unwrap_or(usize::MAX)
                .min(r.states.len()),
        )
    }

    /// `start..end` widened to whole source chunks.
    fn widen(&self, ri: usize, start: usize, end: usize) -> (usize, usize) {
        if end <= start {
            return (start, end);
        }
        (self.chunk_of(ri, start).0, self.chunk_of(ri, end - 1).1)
    }
}

/// Counts a live task; the count drops when the task ends, is cancelled or is dropped unrun.
struct Live(Arc<Ctx>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.send_modify(|n| *n -= 1);
    }
}

/// A future that turns a panic of the future it polls into `Err(message)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(move || fut.poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(panic) => Poll::Ready(Err(panic_message(&*panic))),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// `a`'s output, or `None` once `b` completes first.
pub(super) async fn race<A: Future, B: Future>(a: A, b: B) -> Option<A::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if b.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

// ----------------------------------------------------------------------------------------
// The reader.

/// Reads faults and events until the server stops: events are applied at once, faults on
/// missing pages are claimed and handed to a demand fetch of their own, so that many are in
/// flight at once.
pub(super) async fn reader(ctx: Arc<Ctx>, uffd: AsyncFd<UffdFd>, stop: AsyncFd<StopFd>) {
    let s = &*ctx.s;
    let mut buf = EventBuffer::new(64);
    let mut faults: Vec<Fault> = Vec::with_capacity(64);
    let mut ra = Readahead::new(s.prefetch);
    loop {
        let ready = poll_fn(|cx| {
            if stop.poll_read_ready(cx).is_ready() {
                return Poll::Ready(None);
            }
            uffd.poll_read_ready(cx).map(Some)
        })
        .await;
        let mut guard = match ready {
            None => break,
            Some(Ok(guard)) => guard,
            Some(Err(e)) => {
                s.report(&ServeError::Uffd(Error::Os {
                    op: crate::Operation::Epoll,
                    errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                    range: None,
                }));
                s.halt("waiting on the userfaultfd failed".into(), true);
                break;
            }
        };
        if ctx.stopped() {
            break;
        }
        // As the threaded handlers read: under the event lock, events applied at once.
        match s.read_batch(&mut buf, &mut faults) {
            Batch::Empty => guard.clear_ready(),
            Batch::Failed => break,
            Batch::Read | Batch::Interrupted => {}
        }
        drop(guard);
        Counters::add(&s.counters.demand_faults, faults.len() as u64);
        for (addr, kind, rw, t0) in faults.drain(..) {
            fault(&ctx, addr, kind, rw, t0, &mut ra);
        }
        ctx.bump();
    }
    ctx.stop_all();
}

/// Waits for the monitored process to exit (its pidfd becomes readable), then stops serving,
/// as a threaded handler does: the regions stay registered (they are the process's, and
/// gone with it).
pub(super) async fn watch_process(ctx: Arc<Ctx>, pid: AsyncFd<PidFd>) {
    let why = match pid.readable().await {
        Ok(_) => "the monitored process exited".to_string(),
        Err(e) => format!("waiting on the monitored process failed: {e}"),
    };
    ctx.s.halt(why, false);
    ctx.stop_all();
}

/// One fault: a missing page is claimed and fetched by a task of its own; a removed page is
/// zeroed, and a present one woken (or resolved again), at once.
fn fault(
    ctx: &Arc<Ctx>,
    addr: usize,
    kind: FaultKind,
    rw: ReadWrite,
    t0: Instant,
    ra: &mut Readahead,
) {
    let s = &*ctx.s;
    let Some((ri, page)) = s.region_of(addr) else {
        s.report(&ServeError::Unserved(addr));
        return;
    };
    let r = &s.regions[ri];
    let chunked = !(r.minor || kind == FaultKind::Minor) && ctx.chunks[ri].is_some();
    match r.states.get(page) {
        MISSING => {
            // With source chunks, the page and then the rest of its chunk are claimed in one
            // pass (passes over chunks are serialised), so that no other fetch takes part of
            // the chunk and reads it a second time.
            // While recording exactly only the faulting page is served, so that every page the
            // workload touches is demanded (and recorded).
            let exact = s.recording_exact.load(Ordering::Acquire);
            let chunked = chunked && !exact;
            let pass = chunked.then(|| ctx.claim_pass());
            if !r.states.claim(page, MISSING) {
                return; // Lost a race: the winner resolves it.
            }
            if let Some(rec) = &s.recorder {
                rec.record(ri, page);
            }
            let mut runs = vec![Run {
                first: page,
                end: page + 1,
                path: Path::Demand,
            }];
            if chunked {
                let (lo, hi) = ctx.chunk_of(ri, page);
                claim_runs(ctx, ri, lo, hi, Path::Prefetch, &mut runs);
            }
            drop(pass);
            let window =
                (s.prefetch != 0 && !s.prefetch_paused()).then(|| prefetch_window(s, ri, page, ra));
            let c = Arc::clone(ctx);
            ctx.spawn(async move { demand(c, ri, runs, kind, rw, t0, window).await });
        }
        REMOVED if r.states.cas(page, REMOVED, CLAIMED_ZERO) => {
            s.fill_removed(ri, page);
            s.counters.latency.record(t0.elapsed());
        }
        PRESENT => s.refault(ri, page, r.minor || kind == FaultKind::Minor),
        // Claimed: its fetch wakes it. Gone: not served any more. Lost a race: the winner
        // resolves it.
        _ => {}
    }
}

// ----------------------------------------------------------------------------------------
// Working-set replay.

/// Replays a working set: its runs in recorded order (widened to whole source chunks when the
/// source has them, each chunk once), each fetched by a task of its own that holds a prefetch
/// slot, so that as many are in flight as non-demand slots allow and demand faults overtake
/// them. The slots are taken in recorded order. When every run is in (or the server stops),
/// background fill may start.
pub(super) async fn replay(ctx: Arc<Ctx>, plan: ReplayPlan) {
    let s = &*ctx.s;
    // Each replay fetch holds a sender; the receiver ends when the last one is dropped.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut last = None;
    for &(ri, start, end) in plan.runs(s) {
        if ctx.stopped() {
            return;
        }
        let (lo, hi) = ctx.widen(ri, start, end);
        if last == Some((ri, lo, hi)) || s.regions[ri].states.next_missing(lo, hi).is_none() {
            continue;
        }
        last = Some((ri, lo, hi));
        let permit = ctx.sched.acquire(Priority::Prefetch).await;
        let (c, done) = (Arc::clone(&ctx), done_tx.clone());
        ctx.spawn(async move {
            fill_block(&c, ri, lo, hi, Path::Replay).await;
            drop(permit);
            c.bump();
            drop(done);
        });
    }
    drop(done_tx);
    let _ = done_rx.recv().await;
    s.replay_done();
    ctx.bump();
}

// ----------------------------------------------------------------------------------------
// Fetches.

/// A claimed run of pages `first..end` to install, for `path`.
#[derive(Clone, Copy)]
struct Run {
    first: usize,
    end: usize,
    path: Path,
}

/// The demand fault that a fetch serves first: whether it wrote, and when it was read.
#[derive(Clone, Copy)]
struct Demand {
    write: bool,
    t0: Instant,
}

/// Serves the claimed runs of a demand fault: the faulting page (`runs[0]`), then the rest of
/// its source chunk read by the same request; then starts the prefetch of `window`.
async fn demand(
    ctx: Arc<Ctx>,
    ri: usize,
    runs: Vec<Run>,
    kind: FaultKind,
    rw: ReadWrite,
    t0: Instant,
    window: Option<(usize, usize)>,
) {
    let permit = ctx.sched.acquire(Priority::Demand).await;
    let s = &*ctx.s;
    let r = &s.regions[ri];
    let page = runs[0].first;
    let d = Demand {
        write: rw == ReadWrite::Write,
        t0,
    };
    if (r.minor || kind == FaultKind::Minor)
        && !s.continue_run(ri, page, page + 1, Path::Demand, d.write)
    {
        // Mapped from the page cache (or released to fault again).
        s.counters.latency.record(t0.elapsed());
    } else {
        fetch(&ctx, ri, runs, Some(d)).await;
    }
    drop(permit);
    ctx.bump();
    if let Some((start, end)) = window {
        start_prefetch(&ctx, ri, start, end);
    }
}

/// Claims every missing page of `lo..hi` of region `ri`, appending the runs to `runs`.
fn claim_runs(ctx: &Ctx, ri: usize, lo: usize, hi: usize, path: Path, runs: &mut Vec<Run>) {
    let states = &ctx.s.regions[ri].states;
    let mut p = lo;
    while let Some(first) = states.next_missing(p, hi) {
        let end = states.claim_run(first, hi);
        if end == first {
            p = first + 1;
            continue;
        }
        runs.push(Run { first, end, path });
        p = end;
    }
}

/// Prefetches `start..end` of region `ri` (widened to whole source chunks): one task per
/// chunk when the source has chunks, so that they are fetched at once; one task otherwise.
fn start_prefetch(ctx: &Arc<Ctx>, ri: usize, start: usize, end: usize) {
    let (start, end) = ctx.widen(ri, start, end);
    let states = &ctx.s.regions[ri].states;
    let mut lo = start;
    while lo < end {
        let hi = if ctx.chunks[ri].is_some() {
            ctx.chunk_of(ri, lo).1.max(lo + 1).min(end)
        } else {
            end
        };
        if states.next_missing(lo, hi).is_some() {
            let c = Arc::clone(ctx);
            ctx.spawn(async move {
                let permit = c.sched.acquire(Priority::Prefetch).await;
                fill_block(&c, ri, lo, hi, Path::Prefetch).await;
                drop(permit);
                c.bump();
            });
        }
        lo = hi;
    }
}

/// Claims and fetches the missing pages of `lo..hi` of region `ri`; returns whether it
/// claimed any. With source chunks the block is one chunk (or several whole ones) and is
/// read with one request; without, each run of missing pages is a read of its own.
async fn fill_block(ctx: &Ctx, ri: usize, lo: usize, hi: usize, path: Path) -> bool {
    let mut runs = Vec::new();
    {
        let _pass = ctx.chunks[ri].is_some().then(|| ctx.claim_pass());
        claim_runs(ctx, ri, lo, hi, path, &mut runs);
    }
    if runs.is_empty() {
        return false;
    }
    if ctx.s.regions[ri].minor {
        for run in runs {
            if ctx.s.continue_run(ri, run.first, run.end, run.path, false) {
                // Not in the page cache: copy that page from the source.
                let one = Run {
                    end: run.first + 1,
                    ..run
                };
                fetch(ctx, ri, vec![one], None).await;
            }
        }
    } else if ctx.chunks[ri].is_some() {
        fetch(ctx, ri, runs, None).await;
    } else {
        for run in runs {
            fetch(ctx, ri, vec![run], None).await;
        }
    }
    true
}

/// Reads the source bytes that cover `runs` (claimed, in one region, the first one first
/// when it is a demand fault's) with one request, and installs each run. A failed read is
/// narrowed down page by page, so one bad page costs one page, and each page that still
/// fails gets the failure policy. Every claimed page ends resolved, or released and woken.
async fn fetch(ctx: &Ctx, ri: usize, runs: Vec<Run>, demand: Option<Demand>) {
    let s = &*ctx.s;
    let r = &s.regions[ri];
    let ps = r.page_size;
    let lo = runs.iter().map(|x| x.first).min().unwrap_or(0);
    let hi = runs.iter().map(|x| x.end).max().unwrap_or(0);
    if runs.is_empty() {
        return;
    }
    let source = &ctx.sources[ri];
    let offset = r.source_offset + (lo * ps) as u64;
    let len = (hi - lo) * ps;
    if !r.huge() && source.is_zero(offset, len as u64) {
        install(ctx, ri, lo, &runs, None, demand);
        return;
    }
    let mut buf = vec![0u8; len];
    // Only the last page of a region can reach past the source's end: the rest is zeros.
    let avail = source.len().saturating_sub(offset).min(len as u64) as usize;
    match source.read_at(offset, &mut buf[..avail]).await {
        Ok(()) => install(ctx, ri, lo, &runs, Some(&buf), demand),
        Err(error) => {
            Counters::add(&s.counters.source_errors, 1);
            if hi - lo == 1 {
                fail(ctx, ri, runs[0], offset, len, error, demand);
                return;
            }
            for run in runs {
                for p in run.first..run.end {
                    let one = Run {
                        first: p,
                        end: p + 1,
                        path: run.path,
                    };
                    let d = demand.filter(|_| run.path == Path::Demand);
                    let off = r.source_offset + (p * ps) as u64;
                    let page = &mut buf[(p - lo) * ps..(p - lo + 1) * ps];
                    let avail = source.len().saturating_sub(off).min(ps as u64) as usize;
                    page[avail..].fill(0);
                    match source.read_at(off, &mut page[..avail]).await {
                        Ok(()) => install(ctx, ri, p, &[one], Some(page), d),
                        Err(error) => {
                            Counters::add(&s.counters.source_errors, 1);
                            fail(ctx, ri, one, off, ps, error, d);
                        }
                    }
                }
            }
        }
    }
}

/// Installs the claimed `runs` of region `ri` from `buf` (the source bytes from page `lo`
/// on) or as zeros (`None`), recording the demand fault's latency after its page.
fn install(ctx: &Ctx, ri: usize, lo: usize, runs: &[Run], buf: Option<&[u8]>, d: Option<Demand>) {
    let s = &*ctx.s;
    let ps = s.regions[ri].page_size;
    for run in runs {
        if ctx.stopped() {
            // Shutting down: give the pages back (their waiters are released by the
            // unregistration that follows).
            s.release(ri, run.first, run.end);
            continue;
        }
        let demand = d.filter(|_| run.path == Path::Demand);
        let write = demand.is_some_and(|d| d.write);
        let src = match buf {
            Some(b) => b[(run.first - lo) * ps..(run.end - lo) * ps].as_ptr(),
            None => std::ptr::null(),
        };
        // SAFETY: `src` is null for zeros, else the source bytes of `run` (a slice of `buf`
        // of exactly the run's length), which nothing writes during the call.
        unsafe { s.install(ri, run.first, run.end, run.path, src, buf.is_none(), write) };
        if let Some(d) = demand {
            s.counters.latency.record(d.t0.elapsed());
        }
    }
}

/// A read of `run` failed for good: report it and apply the failure policy.
fn fail(
    ctx: &Ctx,
    ri: usize,
    run: Run,
    offset: u64,
    len: usize,
    error: std::io::Error,
    d: Option<Demand>,
) {
    let s = &*ctx.s;
    s.report(&ServeError::Source {
        region: ri,
        offset,
        len,
        error,
    });
    s.fail(ri, run.first, run.end);
    if let Some(d) = d {
        s.counters.latency.record(d.t0.elapsed());
    }
}

// ----------------------------------------------------------------------------------------
// Background fill.

/// Background worker `me` of `of`: fetches every block of missing pages, worker `me` taking
/// blocks `me`, `me + of`, ...; each fetch waits for a background slot, so demand faults and
/// prefetch go first. Ends when every page is present or the server stops.
pub(super) async fn background(ctx: Arc<Ctx>, me: usize, of: usize, block_bytes: usize) {
    let s = &*ctx.s;
    let mut progress = ctx.progress.subscribe();
    // Held back by a replay or an exact recording, whose ends bump `progress`.
    while !ctx.stopped() && s.background_held_back() {
        progress.borrow_and_update();
        if s.background_held_back() && progress.changed().await.is_err() {
            return;
        }
    }
    while !ctx.stopped() && s.outstanding.load(Ordering::Acquire) != 0 {
        // Progress from here on wakes the wait below.
        progress.borrow_and_update();
        let mut did = false;
        for (ri, r) in s.regions.iter().enumerate() {
            let blocks = Blocks::new(&ctx, ri, block_bytes);
            let mut b = me;
            while let Some((lo, hi)) = blocks.get(b) {
                b += of;
                if ctx.stopped() {
                    return;
                }
                if r.states.next_missing(lo, hi).is_none() {
                    continue;
                }
                if let Some(pacer) = &s.pacer {
                    // Before claiming or taking a slot: nothing waits on this block meanwhile.
                    let missing = r.states.missing_in(lo, hi);
                    let start = pacer.reserve((missing * r.page_size) as u64);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
                }
                let permit = ctx.sched.acquire(Priority::Background).await;
                did |= fill_block(&ctx, ri, lo, hi, Path::Background).await;
                drop(permit);
                ctx.bump();
            }
        }
        if !did {
            // What is left is claimed by fetches in flight: wait for one of them (each bumps
            // `progress` when it ends, whether it resolved or gave its pages back), or for the
            // stop (which bumps it too).
            if progress.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The background blocks of one region: `block_bytes` of pages, or with source chunks as many
/// whole chunks as fit in `block_bytes` (at least one), aligned to the source's chunks.
struct Blocks {
    pages: usize,
    /// Pages per block without chunks.
    step: usize,
    /// With chunks: (source offset of the region, page size, bytes per block).
    chunked: Option<(u64, u64, u64)>,
}

impl Blocks {
    fn new(ctx: &Ctx, ri: usize, block_bytes: usize) -> Blocks {
        let r = &ctx.s.regions[ri];
        let chunked = ctx.chunks[ri].map(|cs| {
            let per = (block_bytes as u64 / cs).max(1).saturating_mul(cs);
            (r.source_offset, r.page_size as u64, per)
        });
        Blocks {
            pages: r.states.len(),
            step: (block_bytes / r.page_size).max(1),
            chunked,
        }
    }

    /// Block `b` as pages `lo..hi`, or `None` past the region's end.
    fn get(&self, b: usize) -> Option<(usize, usize)> {
        let (lo, hi) = match self.chunked {
            None => (b.checked_mul(self.step)?, (b + 1).saturating_mul(self.step)),
            Some((so, ps, per)) => {
                // Block b covers the source bytes [first + b * per, first + (b + 1) * per),
                // `first` being the start of the chunk the region's first page is in.
                let first = so / per * per;
                let start = first.checked_add((b as u64).checked_mul(per)?)?;
                let lo = usize::try_from(start.saturating_sub(so).div_ceil(ps)).ok()?;
                let hi = start.saturating_add(per).saturating_sub(so).div_ceil(ps);
                (lo, usize::try_from(hi).unwrap_or(usize::MAX))
            }
        };
        (lo < self.pages).then(|| (lo, hi.min(self.pages)))
    }
}
