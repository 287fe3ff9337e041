//! Serving faults with `userfaultfd::serve` does not touch the heap.
//!
//! A counting `#[global_allocator]` counts every allocation in the process while a window is
//! open. Inside the window the test's own thread only touches pages of a served mapping (the
//! volatile accessors allocate nothing) and polls the server's progress, so whatever is counted
//! comes from the server's threads: the handler (reading faults, claiming pages, copying,
//! waking, prefetching, recording latency) and background fill. Two windows: demand faults with
//! prefetch and no background fill, then background fill alone. Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mmap::MemoryMapping;
use userfaultfd::serve::{MemorySource, Region, Server, ServerBuilder};
use userfaultfd::UffdBuilder;

mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;

const PAGES: usize = 4096;
const LIMIT: Duration = Duration::from_secs(30);

fn byte_of(p: usize) -> u8 {
    (p * 13 + 1) as u8
}

fn serve(m: &Arc<MemoryMapping>, builder: ServerBuilder) -> Server {
    let page = userfaultfd::page_size();
    let image: Vec<u8> = (0..PAGES * page).map(|i| byte_of(i / page)).collect();
    builder
        .region(Region::new(m.clone(), Arc::new(MemorySource::new(image))))
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap()
}

/// Opens the window, runs `body`, closes it; returns the allocations counted.
fn window(body: impl FnOnce()) -> usize {
    counting_alloc::take_allocations();
    counting_alloc::count_everything(true);
    body();
    counting_alloc::count_everything(false);
    counting_alloc::allocations()
}

/// Spins (yielding) until the server reports every page present, at most [`LIMIT`]. Returns
/// whether it did (no allocation: no formatting inside the window).
fn populated(server: &Server) -> bool {
    let deadline = Instant::now() + LIMIT;
    while !server.is_populated() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

#[test]
fn serving_faults_allocates_nothing() {
    let page = userfaultfd::page_size();

    // Window 1: demand faults and prefetch, no background fill.
    let m = Arc::new(MemoryMapping::new_private(PAGES * page).unwrap());
    let server = serve(&m, ServerBuilder::new().background_threads(0));
    let mut bad = None;
    let mut done = false;
    let allocs = window(|| {
        for p in (0..PAGES).rev() {
            if m.read_obj::<u8>(p * page).ok() != Some(byte_of(p)) {
                bad = Some(p);
                break;
            }
        }
        done = populated(&server);
    });
    assert_eq!(bad, None, "wrong byte in a served page");
    assert!(done, "not populated within {LIMIT:?}");
    let stats = server.shutdown().unwrap();
    assert!(
        stats.demand_faults > 0 && stats.pages_prefetch > 0,
        "{stats:?}"
    );
    assert_eq!(
        allocs, 0,
        "allocations while serving demand faults: {stats:?}"
    );

    // Window 2: background fill alone.
    let m = Arc::new(MemoryMapping::new_private(PAGES * page).unwrap());
    let mut done = false;
    let mut server = None;
    // The server starts outside the window; its threads may already be filling.
    server.get_or_insert_with(|| serve(&m, ServerBuilder::new().prefetch(0)));
    let s = server.as_ref().unwrap();
    let allocs = window(|| done = populated(s));
    assert!(done, "not populated within {LIMIT:?}");
    let stats = server.take().unwrap().shutdown().unwrap();
    assert!(stats.pages_background > 0, "{stats:?}");
    assert_eq!(allocs, 0, "allocations during background fill: {stats:?}");
    for p in 0..PAGES {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
}
