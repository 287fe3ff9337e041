//! Per-page state of a served region, shared lock-free by the server's threads.
//!
//! Every page is in one of four states. A thread that wants to resolve a page first *claims* it
//! (an atomic compare-and-swap from `MISSING` or `REMOVED` to `CLAIMED`); only the claimant
//! issues the ioctl for it, so demand faults, prefetch and background fill never copy a page
//! twice. A claim always ends with the page resolved (`PRESENT`) and woken, or released (back
//! to what it was) and woken, so that a thread waiting on it faults again and is seen anew.

use std::sync::atomic::{AtomicU8, Ordering};

/// Not yet populated: the next touch faults.
pub(crate) const MISSING: u8 = 0;
/// A thread is resolving it.
pub(crate) const CLAIMED: u8 = 1;
/// Populated (from the source, or with zeros after a REMOVE).
pub(crate) const PRESENT: u8 = 2;
/// Dropped by `madvise(MADV_DONTNEED/REMOVE)`: must be served as zeros, never from the source.
pub(crate) const REMOVED: u8 = 3;
/// Unmapped: no longer served.
pub(crate) const GONE: u8 = 4;
/// Claimed from `REMOVED`: a thread is mapping zeros there.
pub(crate) const CLAIMED_ZERO: u8 = 5;

/// The states of one region's pages.
pub(crate) struct PageStates {
    states: Box<[AtomicU8]>,
}

impl PageStates {
    pub(crate) fn new(pages: usize) -> PageStates {
        PageStates {
            states: (0..pages).map(|_| AtomicU8::new(MISSING)).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn get(&self, page: usize) -> u8 {
        self.states[page].load(Ordering::Acquire)
    }

    /// Moves `page` from `from` to `to` if it is `from`; returns whether it did.
    pub(crate) fn cas(&self, page: usize, from: u8, to: u8) -> bool {
        self.states[page]
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Claims `page` if it is `from`; returns whether this thread now owns it.
    pub(crate) fn claim(&self, page: usize, from: u8) -> bool {
        self.cas(page, from, CLAIMED)
    }

    /// Claims the run of `MISSING` pages that starts at `first`, at most up to `end`; returns
    /// its end (`first` when `first` itself could not be claimed).
    pub(crate) fn claim_run(&self, first: usize, end: usize) -> usize {
        let mut p = first;
        while p < end && self.claim(p, MISSING) {
            p += 1;
        }
        p
    }

    /// Ends a claim: `CLAIMED` becomes `to`. A page whose state changed meanwhile (an event
    /// marked it `REMOVED` or `GONE`) keeps the new state; returns whether the claim was still
    /// held.
    pub(crate) fn finish(&self, page: usize, to: u8) -> bool {
        self.cas(page, CLAIMED, to)
    }

    /// Sets `page` to `to` whatever it was (events); returns the previous state.
    pub(crate) fn set(&self, page: usize, to: u8) -> u8 {
        self.states[page].swap(to, Ordering::AcqRel)
    }

    /// How many pages of `from..end` are `MISSING`.
    pub(crate) fn missing_in(&self, from: usize, end: usize) -> usize {
        (from..end).filter(|&p| self.get(p) == MISSING).count()
    }

    /// The first page at or after `from` (below `end`) that is `MISSING`.
    pub(crate) fn next_missing(&self, from: usize, end: usize) -> Option<usize> {
        (from..end).find(|&p| self.get(p) == MISSING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_runs_stop_at_the_first_taken_page() {
        let s = PageStates::new(8);
        assert!(s.claim(3, MISSING));
        assert!(!s.claim(3, MISSING));
        assert_eq!(s.claim_run(0, 8), 3);
        assert_eq!(s.claim_run(3, 8), 3);
        assert!(s.finish(3, PRESENT));
        assert_eq!(s.claim_run(4, 6), 6);
        assert_eq!(s.next_missing(0, 8), Some(6));
        assert_eq!(s.set(6, REMOVED), MISSING);
        assert!(s.claim(6, REMOVED));
        assert_eq!(s.set(6, GONE), CLAIMED);
        assert!(!s.finish(6, PRESENT));
        assert_eq!(s.get(6), GONE);
    }
}
