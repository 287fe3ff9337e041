//! The handle of a running server: statistics, waits, the recorded working set, dirty pages,
//! shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::ServeError;
use super::shared::{Dirty, Shared, Status};
use super::stats::Stats;
use super::working_set::WorkingSet;
use crate::PageRegion;

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
    pub(super) shared: Arc<Shared>,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) stopped: bool,
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
        self.wait_for(timeout, |st| st.populated)
    }

    /// Waits, at most `timeout`, until the working set given to
    /// [`ServerBuilder::replay`](super::ServerBuilder::replay) is present (at once without
    /// one). A program that can hold its threads back, as a VMM holds its vCPUs, starts them
    /// after this returns and finds its working set in memory: no faults on it, the whole set
    /// read at the source's full speed (REAP's prefetch-then-invoke). Starting them at once
    /// instead overlaps the replay with the first faults.
    ///
    /// # Errors
    ///
    /// [`ServeError::Timeout`]; [`ServeError::Stopped`] when the server stopped first.
    pub fn wait_replayed(&self, timeout: Duration) -> Result<(), ServeError> {
        let replaying = &self.shared.replaying;
        self.wait_for(timeout, |_| !replaying.load(Ordering::Acquire))
    }

    /// Waits on the status condition until `done` holds, the server halts, or `timeout` passes.
    fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Result<(), ServeError> {
        let deadline = Instant::now() + timeout;
        let mut st = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if done(&st) {
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
    /// asked to [`record_working_set`](super::ServerBuilder::record_working_set) (empty otherwise).
    /// Save it with [`WorkingSet::save`] and replay it with [`ServerBuilder::replay`](super::ServerBuilder::replay).
    pub fn working_set(&self) -> WorkingSet {
        let Some(rec) = &self.shared.recorder else {
            return WorkingSet::from_entries(Vec::new());
        };
        let entries = rec
            .pages()
            .map(|(ri, p)| (ri as u32, (p * self.shared.regions[ri].page_size) as u64))
            .collect();
        WorkingSet::from_entries(entries).with_exact(rec.is_exact())
    }

    /// Ends the recording of the working set and returns it: later demands are not recorded.
    /// After an [`exact_recording`](super::ServerBuilder::exact_recording), prefetch and
    /// background fill start now (call it when the workload has touched its working set, e.g.
    /// when a function invocation returns). Without recording, an empty set.
    pub fn finish_recording(&self) -> WorkingSet {
        if let Some(rec) = &self.shared.recorder {
            rec.finish();
        }
        let ws = self.working_set();
        if self.shared.recording_exact.swap(false, Ordering::AcqRel) {
            let _st = self
                .shared
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.changed.notify_all();
        }
        ws
    }

    /// The pages written since the server started or since the last call, as ranges of
    /// regions, and re-arms tracking for them (get-and-clear): what an incremental snapshot
    /// writes. Needs [`ServerBuilder::track_dirty`](super::ServerBuilder::track_dirty). With `WP_ASYNC` this is one
    /// `PAGEMAP_SCAN` (`PM_SCAN_WP_MATCHING`) per region; otherwise the pages the handler
    /// recorded at write-protect faults, write-protected again here.
    ///
    /// A write that races with the call is reported by this call or by the next one, never
    /// lost. Pages not yet populated are never reported (they hold source data). With
    /// write-protect faults (no `WP_ASYNC`) the record is the server's own, so a last call
    /// after the served process exited still returns what it wrote (nothing is re-armed).
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
                        match s.uffd.write_protect(r.addr_of(first), len) {
                            // ESRCH: the process is gone; nothing to re-arm, the record is final.
                            Ok(())
                            | Err(crate::Error::Os {
                                errno: nix::errno::Errno::ESRCH,
                                ..
                            }) => {}
                            Err(e) => {
                                // Not re-armed: keep them recorded for the next call.
                                for bit in &w[first..p] {
                                    bit.store(true, Ordering::Release);
                                }
                                return Err(e.into());
                            }
                        }
                        push(ri, first * r.page_size, len);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Waits, at most `timeout`, until the server stops serving on its own, and says why
    /// (see [`halted`](Self::halted)); `None` on time-out. A handler for another process (a
    /// VMM) waits here for the monitored process to exit: its userfaultfd then hangs up.
    pub fn wait_halted(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self
            .shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(why) = &st.halted {
                return Some(why.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Why the server stopped serving on its own (source failure under
    /// [`FailurePolicy::Stop`](super::FailurePolicy::Stop), the monitored process exited, a panic), if it did.
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

    pub(super) fn stop(&mut self) -> Result<Stats, ServeError> {
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
