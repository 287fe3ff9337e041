//! What the server's threads share: the regions and their page states, and how a claimed run
//! of pages is resolved (copied, zeroed, or handled by the failure policy), how events change
//! page states, and how dirty pages are recorded.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::Instant;

use libc::c_void;
use nix::errno::Errno;

use super::builder::{ErrorCallback, FailurePolicy, ForkCallback};
use super::error::ServeError;
use super::pace::Pacer;
use super::state::{PageStates, CLAIMED, CLAIMED_ZERO, GONE, MISSING, PRESENT, REMOVED};
use super::stats::Counters;
use super::working_set::Recorder;
use crate::{ContinueMode, CopyMode, Error, Event, FeatureFlags, PageMap, Uffd};

#[derive(Default)]
pub(super) struct Status {
    pub(super) populated: bool,
    pub(super) halted: Option<String>,
}

/// A region as the threads see it.
pub(super) struct Served {
    /// Start address; moved by a REMAP event.
    pub(super) base: AtomicUsize,
    pub(super) len: usize,
    pub(super) page_size: usize,
    /// Served with `UFFDIO_CONTINUE` (a shared file mapping registered MINOR).
    pub(super) minor: bool,
    pub(super) states: PageStates,
    /// Pages written since the last `dirty_pages` (synchronous dirty tracking only).
    pub(super) written: Option<Box<[AtomicBool]>>,
    pub(super) source: Arc<dyn super::PageSource>,
    pub(super) source_offset: u64,
    pub(super) _owner: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Served {
    pub(super) fn page_of(&self, addr: usize) -> Option<usize> {
        let base = self.base.load(Ordering::Acquire);
        (addr >= base && addr < base + self.len).then(|| (addr - base) / self.page_size)
    }

    pub(super) fn addr_of(&self, page: usize) -> *mut c_void {
        (self.base.load(Ordering::Acquire) + page * self.page_size) as *mut c_void
    }

    pub(super) fn huge(&self) -> bool {
        self.page_size > crate::page_size()
    }
}

/// How written pages are found.
pub(super) enum Dirty {
    /// `WP_ASYNC`: writes clear the uffd-wp bit without a fault; `PAGEMAP_SCAN` reads it.
    Async(PageMap),
    /// Write-protect faults: the handler records the page and unprotects it.
    Sync,
}

/// Which path made pages present (for the statistics).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    Demand,
    Prefetch,
    Background,
    Replay,
}

pub(super) struct Shared {
    pub(super) uffd: Uffd,
    pub(super) regions: Vec<Served>,
    pub(super) counters: Counters,
    pub(super) policy: FailurePolicy,
    pub(super) prefetch: usize,
    pub(super) prefetch_max: usize,
    pub(super) background_chunk: usize,
    /// The background rate limit, shared by every background thread or task.
    pub(super) pacer: Option<Pacer>,
    pub(super) registered: bool,
    pub(super) stop_when_populated: bool,
    /// The demand order, when recording.
    pub(super) recorder: Option<Recorder>,
    /// A replay thread is still copying the working set: background fill waits.
    pub(super) replaying: AtomicBool,
    /// Replay threads still running: the last one to finish clears `replaying`.
    pub(super) replayers: AtomicUsize,
    /// Recording exactly: no prefetch, background fill waits, until `finish_recording`.
    pub(super) recording_exact: AtomicBool,
    /// Every region's source is memory (has a direct view): copies are CPU-bound, not reads.
    pub(super) memory_sources: bool,
    /// The largest run one ioctl covers: the size of each thread's bounce buffer.
    pub(super) chunk_max: usize,
    /// A zero huge page, to resolve hugetlb pages with zeros (no `ZEROPAGE` on hugetlb).
    pub(super) zeros: Option<Box<[u8]>>,
    /// Dirty tracking, when on.
    pub(super) dirty: Option<Dirty>,
    /// Orders write-protect faults against `dirty_pages` (synchronous tracking).
    pub(super) dirty_lock: Mutex<()>,
    pub(super) stop: AtomicBool,
    pub(super) stop_fd: OwnedFd,
    /// A pidfd of the process whose memory is served, when it is another process.
    pub(super) monitored: Option<OwnedFd>,
    /// Pages that still need the source: missing, or claimed from missing.
    pub(super) outstanding: AtomicUsize,
    /// Handler threads busy with demand faults (background fill yields to them).
    pub(super) demand_busy: AtomicUsize,
    pub(super) status: Mutex<Status>,
    pub(super) changed: Condvar,
    pub(super) start: Instant,
    /// Held for writing while events are read and applied, for reading around every
    /// resolving ioctl: present when the fd reports REMOVE events. A REMOVE's pages are zapped
    /// right after the event is read, so a copy must not land between the read and the
    /// marking of the pages.
    pub(super) event_lock: Option<RwLock<()>>,
    pub(super) on_error: Option<ErrorCallback>,
    pub(super) on_fork: Option<ForkCallback>,
}

impl Shared {
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether prefetch waits: while recording exactly (every page touched must be demanded),
    /// and while a working set is replayed from a source that is read, not memory (the replay
    /// is the better prefetch there, and chunks read around faults would take the source's
    /// bandwidth from it).
    pub(super) fn prefetch_paused(&self) -> bool {
        self.recording_exact.load(Ordering::Acquire)
            || (!self.memory_sources && self.replaying.load(Ordering::Acquire))
    }

    /// Whether background fill waits: a working set being replayed goes first, and an exact
    /// recording wants no background fill. Both end with [`replay_done`](Self::replay_done)
    /// or `finish_recording`, which wake the waiters.
    pub(super) fn background_held_back(&self) -> bool {
        self.replaying.load(Ordering::Acquire) || self.recording_exact.load(Ordering::Acquire)
    }

    /// The working set is in: background fill may start (threads waiting on the status
    /// condition are woken; the async server also bumps its progress).
    pub(super) fn replay_done(&self) {
        self.replaying.store(false, Ordering::Release);
        let _st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.notify_all();
    }

    pub(super) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        unsafe { libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        let _st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        self.changed.notify_all();
    }

    pub(super) fn report(&self, e: &ServeError) {
        if let Some(f) = &self.on_error {
            f(e);
        }
    }

    /// Stops serving on the server's own account: records why, stops the threads, and with
    /// `unregister` releases every region to the kernel's default handling.
    pub(super) fn halt(&self, why: String, unregister: bool) {
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
    pub(super) fn unregister_all(&self) -> Result<(), ServeError> {
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

    pub(super) fn mark_populated(&self) {
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
    pub(super) fn retire(&self, n: usize) {
        if n > 0 && self.outstanding.fetch_sub(n, Ordering::AcqRel) == n {
            self.mark_populated();
        }
    }

    pub(super) fn region_of(&self, addr: usize) -> Option<(usize, usize)> {
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
    pub(super) fn fill(
        &self,
        ri: usize,
        first: usize,
        end: usize,
        path: Path,
        bounce: &mut [u8],
        write: bool,
    ) {
        if self.regions[ri].minor {
            self.fill_minor(ri, first, end, path, bounce, write);
        } else {
            self.fill_copy(ri, first, end, path, bounce, write);
        }
    }

    /// A fault on a page the server made present. Usually a fault delivered again after its
    /// page was resolved (its resolver's wake came first): the page is there, so only wake it.
    /// But the program may have dropped the page behind the server's back
    /// (`madvise(MADV_DONTNEED)` without `EVENT_REMOVE`): then the page is missing again and
    /// waking alone would make the thread fault forever. So resolve it again, as the kernel
    /// would without a userfaultfd: zeros for anonymous memory, the file's page (CONTINUE)
    /// for a shared mapping; `EEXIST` means it was the first case.
    pub(super) fn refault(&self, ri: usize, page: usize, minor: bool) {
        let r = &self.regions[ri];
        let (dst, len) = (r.addr_of(page), r.page_size);
        let guard = self.event_lock.as_ref().map(|l| l.read());
        let res = if minor {
            self.uffd
                .continue_with_mode(dst, len, ContinueMode::empty())
        } else {
            self.zero(r, dst, len, self.install_mode())
        };
        drop(guard);
        match res {
            Ok(_) => Counters::add(&self.counters.pages_dropped, 1),
            Err(_) => {
                let _ = self.uffd.wake(dst, len);
            }
        }
    }

    /// [`fill`](Self::fill) for a region over a shared file mapping: map the file's own
    /// pages (`UFFDIO_CONTINUE`, no copy). A page not in the file's page cache is copied from
    /// the source instead (which adds it to the page cache); the rest of the run is given back,
    /// to be continued on its own.
    pub(super) fn fill_minor(
        &self,
        ri: usize,
        first: usize,
        end: usize,
        path: Path,
        bounce: &mut [u8],
        write: bool,
    ) {
        if self.continue_run(ri, first, end, path, write) {
            self.fill_copy(ri, first, first + 1, path, bounce, write);
        }
    }

    /// The `UFFDIO_CONTINUE` part of [`fill_minor`](Self::fill_minor): maps the claimed run
    /// `first..end` from the page cache. Returns true when page `first` is not in the page
    /// cache: it is still claimed and must be copied from the source (the rest of the run was
    /// given back); false when every page of the run ended resolved or released.
    pub(super) fn continue_run(
        &self,
        ri: usize,
        first: usize,
        end: usize,
        path: Path,
        write: bool,
    ) -> bool {
        let r = &self.regions[ri];
        let guard = self.event_lock.as_ref().map(|l| l.read());
        let end = self.still_claimed(ri, first, end);
        if end == first {
            return false;
        }
        let len = (end - first) * r.page_size;
        let mode = if self.dirty.is_some() && !write {
            ContinueMode::WP
        } else {
            ContinueMode::empty()
        };
        let res = self.uffd.continue_with_mode(r.addr_of(first), len, mode);
        drop(guard);
        match res {
            Ok(_) => {
                Counters::add(&self.counters.copy_ioctls, 1);
                Counters::add(&self.counters.pages_continue, (end - first) as u64);
                if write {
                    self.mark_written(ri, first, end);
                }
                self.resolved(ri, first, end, path);
            }
            Err(Error::PartialProgress { done, .. }) => {
                let mid = first + done / r.page_size;
                Counters::add(&self.counters.pages_continue, (mid - first) as u64);
                self.resolved(ri, first, mid, path);
                self.release(ri, mid, end);
            }
            Err(Error::Os {
                errno: Errno::EFAULT,
                ..
            }) => {
                // Not in the page cache: copy this page from the source.
                self.release(ri, first + 1, end);
                return true;
            }
            Err(e) => self.copy_failed(ri, first, end, path, e),
        }
        false
    }

    /// [`fill`](Self::fill) by `UFFDIO_COPY` (or `UFFDIO_ZEROPAGE`) from the source.
    fn fill_copy(
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
                        self.fill_copy(ri, p, p + 1, path, bounce, write);
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
        // SAFETY: `src` is null for zeros, else readable for `len` bytes: a checked direct
        // view borrowed from the source for this call, or the bounce buffer just filled.
        unsafe { self.install(ri, first, end, path, src, zero, write) }
    }

    /// The ioctl part of [`fill_copy`](Self::fill_copy): installs the claimed run
    /// `first..end` of region `ri` from the bytes at `src` (zero pages when `zero`), under the
    /// event lock, then marks the pages present (or hands them to the failure handling) and
    /// wakes their waiters. Pages an event took meanwhile are skipped.
    ///
    /// # Safety
    ///
    /// Unless `zero`, `src` must be readable for `(end - first) * page_size` bytes (the
    /// source bytes of page `first` onwards) and not written during the call.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn install(
        &self,
        ri: usize,
        first: usize,
        end: usize,
        path: Path,
        src: *const u8,
        zero: bool,
        write: bool,
    ) {
        let r = &self.regions[ri];
        let ps = r.page_size;
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
            // SAFETY: `dst..dst+len` is a claimed range of a served region, whose builder
            // vouched that the server may define it; `src` is readable for `len` bytes (at
            // most what the caller vouched for) and nothing writes it.
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
    pub(super) fn still_claimed(&self, ri: usize, first: usize, end: usize) -> usize {
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
    pub(super) fn resolved(&self, ri: usize, first: usize, end: usize, path: Path) {
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
    pub(super) fn release(&self, ri: usize, first: usize, end: usize) {
        let r = &self.regions[ri];
        for p in first..end {
            r.states.finish(p, MISSING);
        }
        let _ = self
            .uffd
            .wake(r.addr_of(first), (end - first) * r.page_size);
    }

    pub(super) fn copy_failed(&self, ri: usize, first: usize, end: usize, path: Path, e: Error) {
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
    pub(super) fn fail(&self, ri: usize, first: usize, end: usize) {
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
    pub(super) fn zero(
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
                                dst: dst as usize,
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
    pub(super) fn install_mode(&self) -> CopyMode {
        if self.dirty.is_some() {
            CopyMode::WP
        } else {
            CopyMode::empty()
        }
    }

    /// Records pages as written (synchronous dirty tracking).
    pub(super) fn mark_written(&self, ri: usize, first: usize, end: usize) {
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
    pub(super) fn write_fault(&self, addr: usize) {
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
    pub(super) fn fill_removed(&self, ri: usize, page: usize) {
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

    pub(super) fn apply_event(&self, ev: Event) {
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
    pub(super) fn mark(&self, start: usize, end: usize, to: u8) {
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
