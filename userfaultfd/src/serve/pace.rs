//! The background rate limit ([`ServerBuilder::background_rate`](super::ServerBuilder::background_rate)):
//! one budget of bytes per second shared by every background thread or task of a server.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Paces background copies to `bytes_per_sec`, over all the threads (or tasks) that copy.
///
/// A copy first reserves its bytes and waits until the instant [`reserve`](Self::reserve)
/// returns: each reservation starts when the one before it has used up its share of time, so
/// the bytes whose copy has started by any instant `t` (counted from the first reservation)
/// are at most `bytes_per_sec * t` plus the last reservation. Time nobody used is not saved
/// up: a pause is never followed by a burst.
pub(super) struct Pacer {
    bytes_per_sec: u64,
    /// When the budget is free again (`None` until the first reservation).
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// A budget of `bytes_per_sec` (positive: the builder refuses 0).
    pub(super) fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(None),
        }
    }

    /// Reserves `bytes` of the budget; returns when their copy may start (now or later).
    pub(super) fn reserve(&self, bytes: u64) -> Instant {
        let now = Instant::now();
        let share = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let start = next.map_or(now, |n| n.max(now));
        *next = Some(start + share);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_each_other_at_the_rate() {
        let p = Pacer::new(1_000_000);
        let t0 = p.reserve(500_000);
        let t1 = p.reserve(250_000);
        let t2 = p.reserve(0);
        // Whatever time passed between the calls, each starts at least the previous share
        // after the one before.
        assert!(t1 >= t0 + Duration::from_millis(500), "{:?}", t1 - t0);
        assert!(t2 >= t1 + Duration::from_millis(250), "{:?}", t2 - t1);
    }

    #[test]
    fn an_idle_budget_is_not_saved_up() {
        let p = Pacer::new(u64::MAX);
        let before = Instant::now();
        let t = p.reserve(4096);
        // A huge rate: the share is nothing, and the start is "now", not in the past.
        assert!(t >= before);
        assert!(p.reserve(4096) >= t);
    }
}
