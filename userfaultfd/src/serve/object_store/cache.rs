//! The chunk cache: chunks in memory up to a byte bound, and single-flight fetching (one
//! request per chunk, however many reads want it at once).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::ObjectStoreSourceError;

/// What a fetch gave: the chunk's bytes, or why there are none.
pub(super) type Outcome = Result<Bytes, ObjectStoreSourceError>;

/// The granule of consumption tracking: a chunk whose every granule was read is the first to
/// be evicted (a server copies each page once, so it will most likely not be read again).
const GRANULE: usize = 4096;

/// One fetch in progress, which any number of readers wait for, async or blocking.
pub(super) struct Flight {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

impl Flight {
    fn new() -> Flight {
        Flight {
            done: Mutex::new(None),
            cv: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Outcome>> {
        self.done.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the outcome (the first one wins) and wakes every waiter.
    fn complete(&self, outcome: Outcome) {
        let mut done = self.lock();
        if done.is_none() {
            *done = Some(outcome);
        }
        drop(done);
        self.cv.notify_all();
        self.notify.notify_waiters();
    }

    /// Waits for the outcome. Bounded by the fetch, which ends within its policy's deadline or
    /// completes the flight when it is dropped (see [`FlightGuard`]).
    pub(super) async fn wait(&self) -> Outcome {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(o) = self.lock().as_ref() {
                return o.clone();
            }
            notified.await;
        }
    }

    /// Waits for the outcome on a thread that is not a runtime's, at most `timeout`.
    pub(super) fn wait_blocking(&self, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut done = self.lock();
        loop {
            if let Some(o) = done.as_ref() {
                return Some(o.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            done = self
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Completes its flight with an error if the fetch task is dropped before finishing (its
/// runtime shut down), so no reader waits for it forever.
pub(super) struct FlightGuard {
    pub(super) cache: Arc<ChunkCache>,
    pub(super) index: u64,
    pub(super) flight: Arc<Flight>,
    pub(super) finished: bool,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cache.finish(
                self.index,
                &self.flight,
                Err(ObjectStoreSourceError::Runtime(
                    "the fetch was abandoned: the source's runtime shut down".into(),
                )),
                false,
            );
        }
    }
}

struct Entry {
    data: Bytes,
    last_use: u64,
    consumed: Vec<u64>,
    left: usize,
}

enum Slot {
    Loading(Arc<Flight>),
    Ready(Entry),
}

struct State {
    slots: HashMap<u64, Slot>,
    ready_bytes: usize,
    loading: usize,
    tick: u64,
    failed: Option<(Instant, ObjectStoreSourceError)>,
    evictions: u64,
}

/// What a lookup found.
pub(super) enum Lookup {
    /// The chunk is cached.
    Hit(Bytes),
    /// Another reader's fetch is in flight: wait for it.
    Wait(Arc<Flight>),
    /// Nothing: this caller must fetch it and [`ChunkCache::finish`] the flight.
    Fetch(Arc<Flight>),
}

/// Chunks by index, at most `capacity` bytes of finished chunks (plus the chunks in flight).
pub(super) struct ChunkCache {
    state: Mutex<State>,
    capacity: usize,
    chunk: usize,
}

impl ChunkCache {
    pub(super) fn new(capacity: usize, chunk: usize) -> ChunkCache {
        ChunkCache {
            state: Mutex::new(State {
                slots: HashMap::new(),
                ready_bytes: 0,
                loading: 0,
                tick: 0,
                failed: None,
                evictions: 0,
            }),
            capacity,
            chunk,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chunk, the flight to wait for, or the flight this caller must run.
    pub(super) fn lookup(&self, index: u64) -> Lookup {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        match st.slots.get_mut(&index) {
            Some(Slot::Ready(e)) => {
                e.last_use = tick;
                Lookup::Hit(e.data.clone())
            }
            Some(Slot::Loading(f)) => Lookup::Wait(f.clone()),
            None => {
                let f = Arc::new(Flight::new());
                st.slots.insert(index, Slot::Loading(f.clone()));
                st.loading += 1;
                Lookup::Fetch(f)
            }
        }
    }

    /// Every chunk of `indices` if all are cached (the fast path of a read), else `None`.
    pub(super) fn all_cached(&self, indices: std::ops::RangeInclusive<u64>) -> Option<Vec<Bytes>> {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        let mut out = Vec::with_capacity(2);
        for i in indices {
            match st.slots.get_mut(&i) {
                Some(Slot::Ready(e)) => {
                    e.last_use = tick;
                    out.push(e.data.clone());
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// A flight for a read-ahead of chunk `index`, if it is neither cached nor in flight, fewer
    /// than `max_loading` chunks are in flight, and the cache has room for it without evicting.
    pub(super) fn try_readahead(&self, index: u64, max_loading: usize) -> Option<Arc<Flight>> {
        let mut st = self.lock();
        if st.loading >= max_loading
            || st.slots.contains_key(&index)
            || st.ready_bytes + (st.loading + 1) * self.chunk > self.capacity
        {
            return None;
        }
        let f = Arc::new(Flight::new());
        st.slots.insert(index, Slot::Loading(f.clone()));
        st.loading += 1;
        Some(f)
    }

    /// Ends the flight of chunk `index`: caches the chunk (evicting to stay within the
    /// capacity: chunks read to the end first, then the least recently used) or forgets it,
    /// then wakes its waiters. A failure the store itself gave (`fresh`, as opposed to one held
    /// from before) starts a new hold.
    pub(super) fn finish(&self, index: u64, flight: &Arc<Flight>, outcome: Outcome, fresh: bool) {
        let mut st = self.lock();
        if matches!(st.slots.get(&index), Some(Slot::Loading(f)) if Arc::ptr_eq(f, flight)) {
            st.loading -= 1;
            match &outcome {
                Ok(data) => {
                    st.tick += 1;
                    let granules = data.len().div_ceil(GRANULE);
                    let entry = Entry {
                        data: data.clone(),
                        last_use: st.tick,
                        consumed: vec![0; granules.div_ceil(64)],
                        left: granules,
                    };
                    st.ready_bytes += data.len();
                    st.slots.insert(index, Slot::Ready(entry));
                    self.evict(&mut st, index);
                }
                Err(e) => {
                    st.slots.remove(&index);
                    if fresh {
                        st.failed = Some((Instant::now(), e.clone()));
                    }
                }
            }
        }
        drop(st);
        flight.complete(outcome);
    }

    fn evict(&self, st: &mut State, keep: u64) {
        while st.ready_bytes > self.capacity {
            let victim = st
                .slots
                .iter()
                .filter_map(|(&i, s)| match s {
                    Slot::Ready(e) if i != keep => Some((e.left != 0, e.last_use, i)),
                    _ => None,
                })
                .min();
            let Some((_, _, i)) = victim else { break };
            if let Some(Slot::Ready(e)) = st.slots.remove(&i) {
                st.ready_bytes -= e.data.len();
                st.evictions += 1;
            }
        }
    }

    /// Notes that `start..end` of chunk `index` was read.
    pub(super) fn consume(&self, index: u64, start: usize, end: usize) {
        let mut st = self.lock();
        if let Some(Slot::Ready(e)) = st.slots.get_mut(&index) {
            let len = e.data.len();
            let first = start.div_ceil(GRANULE);
            let last = if end >= len {
                len.div_ceil(GRANULE)
            } else {
                end / GRANULE
            };
            for g in first..last {
                let (w, b) = (g / 64, 1u64 << (g % 64));
                if e.consumed[w] & b == 0 {
                    e.consumed[w] |= b;
                    e.left -= 1;
                }
            }
        }
    }

    /// The error of a fetch that failed less than `hold` ago, if any.
    pub(super) fn held_failure(&self, hold: Duration) -> Option<ObjectStoreSourceError> {
        let st = self.lock();
        match &st.failed {
            Some((at, e)) if at.elapsed() < hold => Some(e.clone()),
            _ => None,
        }
    }

    /// Forgets a held failure (a fetch succeeded since).
    pub(super) fn clear_failure(&self) {
        self.lock().failed = None;
    }

    /// (bytes of cached chunks, chunks in flight, evictions so far).
    pub(super) fn usage(&self) -> (usize, usize, u64) {
        let st = self.lock();
        (st.ready_bytes, st.loading, st.evictions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_flight_then_hit() {
        let c = ChunkCache::new(4 << 20, 1 << 20);
        let Lookup::Fetch(f) = c.lookup(3) else {
            panic!("first lookup must fetch")
        };
        assert!(matches!(c.lookup(3), Lookup::Wait(_)));
        c.finish(3, &f, Ok(Bytes::from(vec![7u8; 1 << 20])), true);
        assert_eq!(
            f.wait_blocking(Duration::from_secs(1)).unwrap().unwrap()[0],
            7
        );
        assert!(matches!(c.lookup(3), Lookup::Hit(_)));
        assert_eq!(c.usage().0, 1 << 20);
    }

    #[test]
    fn evicts_consumed_first_then_lru() {
        let c = ChunkCache::new(2 << 20, 1 << 20);
        for i in 0..2 {
            let Lookup::Fetch(f) = c.lookup(i) else {
                panic!()
            };
            c.finish(i, &f, Ok(Bytes::from(vec![0u8; 1 << 20])), true);
        }
        c.lookup(0); // 1 is now least recently used ...
        c.consume(0, 0, 1 << 20); // ... but 0 was read to the end
        let Lookup::Fetch(f) = c.lookup(2) else {
            panic!()
        };
        c.finish(2, &f, Ok(Bytes::from(vec![0u8; 1 << 20])), true);
        assert!(matches!(c.lookup(1), Lookup::Hit(_)));
        assert!(matches!(c.lookup(0), Lookup::Fetch(_)));
        assert_eq!(c.usage().2, 1);
    }

    #[test]
    fn failure_is_held_and_forgotten() {
        let c = ChunkCache::new(2 << 20, 1 << 20);
        let Lookup::Fetch(f) = c.lookup(0) else {
            panic!()
        };
        c.finish(0, &f, Err(ObjectStoreSourceError::Config("x".into())), true);
        assert!(f.wait_blocking(Duration::from_secs(1)).unwrap().is_err());
        let (at, _) = c.lock().failed.clone().unwrap();
        assert!(c.held_failure(Duration::from_secs(60)).is_some());
        // A held failure handed out again does not extend the hold.
        let Lookup::Fetch(f) = c.lookup(1) else {
            panic!()
        };
        c.finish(
            1,
            &f,
            Err(ObjectStoreSourceError::Config("x".into())),
            false,
        );
        assert_eq!(c.lock().failed.as_ref().unwrap().0, at);
        assert!(c.held_failure(Duration::ZERO).is_none());
        assert!(
            matches!(c.lookup(0), Lookup::Fetch(_)),
            "a failed chunk is not cached"
        );
        c.clear_failure();
        assert!(c.held_failure(Duration::from_secs(60)).is_none());
    }

    #[test]
    fn readahead_never_evicts() {
        let c = ChunkCache::new(2 << 20, 1 << 20);
        assert!(c.try_readahead(0, 4).is_some());
        assert!(c.try_readahead(0, 4).is_none(), "already in flight");
        assert!(c.try_readahead(1, 4).is_some());
        assert!(c.try_readahead(2, 4).is_none(), "no room left");
        assert!(c.try_readahead(5, 2).is_none(), "too many in flight");
    }
}
