//! A `#[global_allocator]` that counts allocations, for the tests that prove a path never
//! touches the heap. A test binary installs it with
//! `#[global_allocator] static GLOBAL: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;`
//! and counts either the allocations of the threads that set their own flag
//! ([`count_this_thread`]) or every allocation in the process while a window is open
//! ([`count_everything`]).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The allocator: `System`, plus a count.
pub struct CountingAlloc;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static EVERYTHING: AtomicBool = AtomicBool::new(false);

thread_local! {
    // A const-initialised `Cell<bool>` has no destructor and needs no lazy initialisation, so
    // reading it from inside the allocator cannot itself allocate or recurse.
    static THIS_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Counts (or stops counting) the allocations of the calling thread.
pub fn count_this_thread(on: bool) {
    THIS_THREAD.with(|c| c.set(on));
}

/// Counts (or stops counting) every allocation of the process.
pub fn count_everything(on: bool) {
    EVERYTHING.store(on, Ordering::SeqCst);
}

/// The allocations counted so far.
pub fn allocations() -> usize {
    ALLOCS.load(Ordering::SeqCst)
}

/// The allocations counted so far, resetting the count to zero.
pub fn take_allocations() -> usize {
    ALLOCS.swap(0, Ordering::SeqCst)
}

fn note_alloc() {
    if EVERYTHING.load(Ordering::Relaxed) || THIS_THREAD.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System`, which upholds the `GlobalAlloc` contract; the
// counting touches only atomics and a thread-local `Cell`.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded unchanged from our caller, who upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: as in `alloc`; `p` was allocated by `System` through this allocator.
        unsafe { System.realloc(p, layout, new_size) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(p, layout) }
    }
}
