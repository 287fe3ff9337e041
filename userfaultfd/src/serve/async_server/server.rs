//! The handle of a running async server: statistics, waits, shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::super::server::{DirtyRange, Server};
use super::super::shared::Status;
use super::super::{ServeError, Stats, WorkingSet};
use super::tasks::Ctx;

/// How long [`AsyncServer::shutdown`] waits for its tasks to end before it unregisters anyway
/// (they end at their next await, so this is never reached unless a source's future blocks its
/// thread).
const TASKS_END_WAIT: Duration = Duration::from_secs(5);

/// A running async fault server (see the [module documentation](super)). Feature `tokio`.
///
/// Dropping it shuts it down without waiting: every task is told to stop (each ends at its next
/// await) and the regions are unregistered, so no faulting thread is left waiting.
/// [`shutdown`](Self::shutdown) also waits for the tasks to end.
pub struct AsyncServer {
    pub(super) server: Server,
    pub(super) ctx: Arc<Ctx>,
}

impl std::fmt::Debug for AsyncServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncServer")
            .field("regions", &self.server.shared.regions.len())
            .field("fetches_in_flight", &self.fetches_in_flight())
            .field("stats", &self.stats())
            .finish()
    }
}

impl AsyncServer {
    /// What the server has done so far (the same counters as [`Server::stats`]; demand
    /// latency is from the fault's read to its page's wake, including any wait for a fetch
    /// slot).
    pub fn stats(&self) -> Stats {
        self.server.stats()
    }

    /// Whether every page of every region is present (or was removed, or unmapped).
    pub fn is_populated(&self) -> bool {
        self.server.is_populated()
    }

    /// Source reads in flight right now (at most
    /// [`max_fetches`](super::AsyncServerBuilder::max_fetches)).
    pub fn fetches_in_flight(&self) -> usize {
        self.ctx.sched.in_flight()
    }

    /// Waits, at most `timeout`, until every page of every region is present (removed and
    /// unmapped pages count as done). Needs the runtime's time driver.
    ///
    /// # Errors
    ///
    /// [`ServeError::Timeout`]; [`ServeError::Stopped`] when the server stopped first.
    pub async fn wait_populated(&self, timeout: Duration) -> Result<(), ServeError> {
        self.wait_until(timeout, |st| st.populated).await
    }

    /// Waits on `progress` (bumped by every fetch, batch of events, stop and end of replay)
    /// until `done` holds, the server halts or stops, or `timeout` passes.
    async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Result<(), ServeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut progress = self.ctx.progress.subscribe();
        loop {
            {
                let st = self
                    .server
                    .shared
                    .status
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if done(&st) {
                    return Ok(());
                }
                if let Some(why) = &st.halted {
                    return Err(ServeError::Stopped(why.clone()));
                }
            }
            if *self.ctx.stop.borrow() {
                return Err(ServeError::Stopped("the server's tasks stopped".into()));
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(ServeError::Timeout(timeout)),
            }
        }
    }

    /// [`wait_populated`](Self::wait_populated) for synchronous code: blocks the calling
    /// thread, at most `timeout`. Never call it on a runtime worker thread (it would block
    /// that worker, and on a current-thread runtime the server itself): use it from threads
    /// of your own, or through `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// As [`wait_populated`](Self::wait_populated).
    pub fn wait_populated_blocking(&self, timeout: Duration) -> Result<(), ServeError> {
        self.server.wait_populated(timeout)
    }

    /// Waits, at most `timeout`, until the working set given to
    /// [`AsyncServerBuilder::replay`](super::AsyncServerBuilder::replay) is in (at once
    /// without one), as [`Server::wait_replayed`]: a program that can hold its threads back
    /// (a VMM its vCPUs) starts them then, and finds its working set in memory.
    ///
    /// # Errors
    ///
    /// [`ServeError::Timeout`]; [`ServeError::Stopped`] when the server stopped first.
    pub async fn wait_replayed(&self, timeout: Duration) -> Result<(), ServeError> {
        let replaying = &self.server.shared.replaying;
        self.wait_until(timeout, |_| !replaying.load(Ordering::Acquire))
            .await
    }

    /// The pages demanded so far, in the order they were first demanded, when the builder
    /// asked to [`record_working_set`](super::AsyncServerBuilder::record_working_set) (empty
    /// otherwise), as [`Server::working_set`].
    pub fn working_set(&self) -> WorkingSet {
        self.server.working_set()
    }

    /// Ends the recording of the working set and returns it, as
    /// [`Server::finish_recording`]: after an
    /// [`exact_recording`](super::AsyncServerBuilder::exact_recording), prefetch and
    /// background fill start now.
    pub fn finish_recording(&self) -> WorkingSet {
        let ws = self.server.finish_recording();
        // Background tasks held back by the recording wait on progress.
        self.ctx.bump();
        ws
    }

    /// The pages written since the server started or since the last call, and re-arms
    /// tracking for them (get-and-clear), as [`Server::dirty_pages`]; needs
    /// [`AsyncServerBuilder::track_dirty`](super::AsyncServerBuilder::track_dirty). One
    /// `PAGEMAP_SCAN` per region with `WP_ASYNC`, else the pages the reader recorded at
    /// write-protect faults, protected again here: system calls that do not wait on the
    /// program, so this is a plain function (call it from a task or a thread).
    ///
    /// # Errors
    ///
    /// [`ServeError::Config`] without dirty tracking; [`ServeError::Uffd`] when the scan or
    /// the re-protection fails.
    pub fn dirty_pages(&self) -> Result<Vec<DirtyRange>, ServeError> {
        self.server.dirty_pages()
    }

    /// Why the server stopped serving on its own (a source failure under
    /// [`FailurePolicy::Stop`](super::super::FailurePolicy::Stop), a panic, a failed read of
    /// the userfaultfd), if it did.
    pub fn halted(&self) -> Option<String> {
        self.server.halted()
    }

    /// Waits, at most `timeout`, until the server stops serving on its own, and says why;
    /// `None` on time-out.
    pub async fn wait_halted(&self, timeout: Duration) -> Option<String> {
        let mut stop = self.ctx.stop.subscribe();
        let _ = tokio::time::timeout(timeout, stop.wait_for(|s| *s)).await;
        self.halted()
    }

    /// Stops every task, waits for them to end, and, if the server registered the regions,
    /// unregisters them; returns the final statistics. Fetches in flight are abandoned (their
    /// futures dropped); threads waiting on their pages are released by the unregistration,
    /// to the kernel's default handling (a zero page for anonymous memory), as are threads
    /// touching any page not yet present: use
    /// [`shutdown_populated`](Self::shutdown_populated) to finish populating first.
    ///
    /// # Errors
    ///
    /// [`ServeError::Uffd`] if unregistering failed (the tasks are stopped regardless).
    pub async fn shutdown(mut self) -> Result<Stats, ServeError> {
        self.ctx.stop_all();
        self.server.shared.request_stop();
        let mut live = self.ctx.live.subscribe();
        let _ = tokio::time::timeout(TASKS_END_WAIT, live.wait_for(|n| *n == 0)).await;
        self.server.stop()
    }

    /// Waits (at most `timeout`) for every page to be present, then
    /// [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    ///
    /// As [`wait_populated`](Self::wait_populated) (the server is shut down anyway), then as
    /// [`shutdown`](Self::shutdown).
    pub async fn shutdown_populated(self, timeout: Duration) -> Result<Stats, ServeError> {
        let waited = self.wait_populated(timeout).await;
        let stats = self.shutdown().await?;
        waited.map(|()| stats)
    }
}

impl Drop for AsyncServer {
    fn drop(&mut self) {
        // The tasks end at their next await; `server`'s own drop then unregisters.
        self.ctx.stop_all();
        self.server.shared.request_stop();
    }
}
