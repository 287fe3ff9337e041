//! The server's threads: handlers (demand faults first, then the chunks around them), working-set
//! replay, and background fill.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::dispatch::{Batch, Fault};
use super::error::ServeError;
use super::shared::{Path, Shared};
use super::state::{CLAIMED_ZERO, MISSING, PRESENT, REMOVED};
use super::stats::Counters;
use super::working_set::WorkingSet;
use crate::{Error, EventBuffer, FaultKind, ReadWrite};

/// Per-handler readahead: the window grows while faults move forward through a region.
pub(super) struct Readahead {
    region: usize,
    next: usize,
    window: usize,
}

impl Readahead {
    /// No fault seen yet: the first window is `prefetch` bytes.
    pub(super) fn new(prefetch: usize) -> Readahead {
        Readahead {
            region: usize::MAX,
            next: 0,
            window: prefetch,
        }
    }
}

pub(super) fn handler_loop(s: &Shared, ready: &dyn Fn()) {
    let mut buf = EventBuffer::new(64);
    let mut faults: Vec<Fault> = Vec::with_capacity(64);
    let mut bounce = vec![0u8; s.chunk_max];
    // The thread's name and its first use of thread-locals may allocate: get them done now.
    let _ = thread::current().name().map(str::len);
    ready();
    let mut ra = Readahead::new(s.prefetch);
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
        // The monitored process's pidfd (readable once it exits), or nothing (-1 is ignored).
        libc::pollfd {
            fd: s.monitored.as_ref().map_or(-1, |p| p.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    while !s.stopping() {
        for f in &mut fds {
            f.revents = 0;
        }
        // A bounded wait: the stop flag is checked at least once a second.
        // SAFETY: `fds` holds three valid pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, 1000) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            s.report(&ServeError::Uffd(Error::Os {
                op: crate::Operation::Read,
                errno: Errno::last(),
                range: None,
            }));
            s.halt("poll(2) on the userfaultfd failed".into(), true);
            return;
        }
        if s.stopping() || fds[1].revents != 0 {
            return;
        }
        if fds[2].revents != 0 {
            s.halt("the monitored process exited".into(), false);
            return;
        }
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            s.halt("the userfaultfd hung up or failed".into(), false);
            return;
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        if let Batch::Failed = s.read_batch(&mut buf, &mut faults) {
            return;
        }
        if faults.is_empty() {
            continue;
        }
        s.demand_busy.fetch_add(1, Ordering::AcqRel);
        Counters::add(&s.counters.demand_faults, faults.len() as u64);
        // Every faulting page first, then the chunks around them.
        for &(addr, kind, rw, t0) in &faults {
            demand(s, addr, kind, rw, t0, &mut bounce);
        }
        for &(addr, _, _, _) in &faults {
            prefetch(s, addr, &mut ra, &mut bounce);
        }
        faults.clear();
        s.demand_busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn demand(s: &Shared, addr: usize, kind: FaultKind, rw: ReadWrite, t0: Instant, bounce: &mut [u8]) {
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
            let write = rw == ReadWrite::Write;
            if kind == FaultKind::Minor && !r.minor {
                // A minor fault in a region registered MINOR by someone else: the page is in
                // the page cache and only needs mapping.
                s.fill_minor(ri, page, page + 1, Path::Demand, bounce, write);
            } else {
                s.fill(ri, page, page + 1, Path::Demand, bounce, write);
            }
            s.counters.latency.record(t0.elapsed());
        }
        REMOVED if r.states.cas(page, REMOVED, CLAIMED_ZERO) => {
            s.fill_removed(ri, page);
            s.counters.latency.record(t0.elapsed());
        }
        PRESENT => s.refault(ri, page, r.minor || kind == FaultKind::Minor),
        // Claimed: the claimant wakes it. Gone: not served any more. Lost a race: the
        // winner resolves it.
        _ => {}
    }
}

/// Copies the runs of missing pages in `start..end` of region `ri`; runs separated by short
/// gaps of present pages are read from the source in one request (`coalesce.rs`).
fn fill_missing(s: &Shared, ri: usize, start: usize, end: usize, path: Path, bounce: &mut [u8]) {
    let r = &s.regions[ri];
    let mut p = start;
    while let Some(first) = r.states.next_missing(p, end) {
        p = s
            .fill_from(ri, first, end, path, bounce)
            .unwrap_or(first + 1);
    }
}

/// A working set turned into the reads that replay it, in recorded order: runs of adjacent
/// pages (an exact set), or each entry's prefetch chunk (a set recorded while prefetching).
/// Replay threads take the runs in order from a shared cursor. The first replay thread to need
/// the runs works them out (a large exact set takes a few hundred microseconds), so `start`
/// does not wait for that.
pub(super) struct ReplayPlan {
    ws: WorkingSet,
    /// `(region, first page, end page)`.
    runs: OnceLock<Vec<(usize, usize, usize)>>,
    next: AtomicUsize,
}

impl ReplayPlan {
    /// Entries were checked against the regions by the builder.
    pub(super) fn new(ws: WorkingSet) -> ReplayPlan {
        ReplayPlan {
            ws,
            runs: OnceLock::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// How many replay threads to start, of `threads` configured: one when every source is
    /// memory (a direct view: the copies are CPU-bound, and more threads would only take CPUs
    /// from the program and its faults); all of them otherwise, so that reads overlap.
    pub(super) fn threads(s: &Shared, threads: usize) -> usize {
        if s.memory_sources {
            1
        } else {
            threads
        }
    }

    pub(super) fn runs(&self, s: &Shared) -> &[(usize, usize, usize)] {
        self.runs.get_or_init(|| {
            let ws = &self.ws;
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            for &(ri, off) in ws.entries() {
                let (ri, r) = (ri as usize, &s.regions[ri as usize]);
                let page = (off / r.page_size as u64) as usize;
                let run = if ws.is_exact() {
                    (ri, page, page + 1)
                } else {
                    let pages = (s.prefetch / r.page_size).max(1);
                    let start = page / pages * pages;
                    (ri, start, (start + pages).min(r.states.len()))
                };
                match runs.last_mut() {
                    // The same chunk again (or a page inside the previous run): nothing new.
                    Some(last) if last.0 == ri && last.1 <= run.1 && run.2 <= last.2 => {}
                    // The next page of an exact run: one read, up to the bounce buffer's size.
                    Some(last)
                        if ws.is_exact()
                            && last.0 == ri
                            && last.2 == run.1
                            && (last.2 - last.1 + 1) * r.page_size <= s.chunk_max =>
                    {
                        last.2 = run.2;
                    }
                    _ => runs.push(run),
                }
            }
            runs
        })
    }
}

/// Copies the working set's runs, taking them from the plan in order; the last replay thread
/// to finish lets background fill start.
pub(super) fn replay_loop(s: &Shared, plan: &ReplayPlan, ready: &dyn Fn()) {
    // Below the program and its fault handlers, above background fill (nice 10): a replay
    // thread copying from memory at nice 0 kept a CPU for whole time slices, and a demand
    // fault's handler waited behind it (first touch up to 7 ms instead of about 0.6 ms on 2
    // CPUs, measured with restore-bench).
    // SAFETY: setpriority(2) on this thread (its tid) has no memory effects; failure (a
    // sandbox forbidding it) just leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 5);
    }
    let mut bounce = vec![0u8; s.chunk_max];
    let _ = thread::current().name().map(str::len);
    ready();
    let runs = plan.runs(s);
    while !s.stopping() {
        let Some(&(ri, start, end)) = runs.get(plan.next.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        // Demand faults first, but without waiting for them: the replay reads the pages the
        // workload is about to fault on, and its reads overlap the faults' own.
        if s.demand_busy.load(Ordering::Acquire) != 0 {
            thread::yield_now();
        }
        fill_missing(s, ri, start, end, Path::Replay, &mut bounce);
    }
    if s.replayers.fetch_sub(1, Ordering::AcqRel) == 1 {
        s.replay_done();
    }
}

/// Copies the missing pages of the prefetch window around a fault at `addr`, unless prefetch is
/// off or paused.
fn prefetch(s: &Shared, addr: usize, ra: &mut Readahead, bounce: &mut [u8]) {
    if s.prefetch == 0 || s.prefetch_paused() {
        return;
    }
    let Some((ri, page)) = s.region_of(addr) else {
        return;
    };
    let (start, end) = prefetch_window(s, ri, page, ra);
    fill_missing(s, ri, start, end, Path::Prefetch, bounce);
}

/// The pages `start..end` of region `ri` to prefetch after a fault on `page`: its aligned
/// chunk, doubled (up to `prefetch_max`) while faults move forward, as `ra` records.
pub(super) fn prefetch_window(
    s: &Shared,
    ri: usize,
    page: usize,
    ra: &mut Readahead,
) -> (usize, usize) {
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
    (start, end)
}

pub(super) fn background_loop(s: &Shared, me: usize, of: usize, ready: &dyn Fn()) {
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
    // Start small and double while copies are fast: the first demand fault never waits
    // behind a large read of a slow source.
    let mut step_pages = 0;
    // A working set being replayed goes first; an exact recording wants no background fill.
    let wait = || s.background_held_back() && !s.stopping();
    while wait() {
        let st = s.status.lock().unwrap_or_else(PoisonError::into_inner);
        if wait() {
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
                    // Missing runs separated by short present gaps (memory fragmented by a
                    // replay) are read in one request, up to the step.
                    let step = step_pages.clamp(min_step, chunk);
                    let end = hi.min(first + step);
                    if let Some(pacer) = &s.pacer {
                        // Reserved before anything is claimed: a page waits for the budget
                        // only while nobody holds it, so a demand fault never waits here.
                        let missing = r.states.missing_in(first, end);
                        paced(s, pacer.reserve((missing * r.page_size) as u64));
                        if s.stopping() {
                            return;
                        }
                    }
                    let t = Instant::now();
                    let Some(stop) = s.fill_from(ri, first, end, Path::Background, &mut bounce)
                    else {
                        p = first + 1;
                        continue;
                    };
                    let took = t.elapsed();
                    if took > STEP_SLOW && step > min_step {
                        step_pages = step / 2;
                    } else if took < STEP_FAST && stop - first == step && step < chunk {
                        step_pages = step * 2;
                    }
                    progress = true;
                    p = stop;
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

/// Waits until `start` (a [`Pacer`](super::pace::Pacer) reservation), on the status
/// condition, so that a stop ends the wait.
fn paced(s: &Shared, start: Instant) {
    let mut st = s.status.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let left = start.saturating_duration_since(Instant::now());
        if left.is_zero() || s.stopping() {
            return;
        }
        st = s
            .changed
            .wait_timeout(st, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}
