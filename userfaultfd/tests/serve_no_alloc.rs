//! Serving faults with `userfaultfd::serve` does not touch the heap.
//!
//! A counting `#[global_allocator]` counts every allocation in the process while a window is
//! open. Inside the window the test's own thread only touches pages of a served mapping (the
//! volatile accessors allocate nothing) and polls the server's progress, so whatever is counted
//! comes from the server's threads: the handler (reading faults, claiming pages, copying,
//! waking, prefetching, recording latency) and background fill. Three windows: demand faults with
//! prefetch and no background fill, then background fill alone, then demand faults whose
//! prefetch reads fragmented windows from a read-through source in one request each (read-through
//! coalescing). Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mmap::MemoryMapping;
use userfaultfd::serve::{MemorySource, PageSource, Region, Server, ServerBuilder};
use userfaultfd::UffdBuilder;

mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;

const PAGES: usize = 4096;
const LIMIT: Duration = Duration::from_secs(30);

fn byte_of(p: usize) -> u8 {
    (p * 13 + 1) as u8
}

fn image() -> Vec<u8> {
    let page = userfaultfd::page_size();
    (0..PAGES * page).map(|i| byte_of(i / page)).collect()
}

fn serve(m: &Arc<MemoryMapping>, builder: ServerBuilder) -> Server {
    builder
        .region(Region::new(m.clone(), Arc::new(MemorySource::new(image()))))
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap()
}

/// A source the server must read (no direct view), as a disk or a network peer.
struct ReadThrough(Vec<u8>);

impl PageSource for ReadThrough {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }
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

/// Inside a counting window: reads the first byte of each page in `pages` (faulting them in),
/// then waits for population. Checks the bytes and the population outside the window; returns
/// the window's allocations.
fn touch_window(m: &MemoryMapping, server: &Server, pages: impl Iterator<Item = usize>) -> usize {
    let page = userfaultfd::page_size();
    let mut bad = None;
    let mut done = false;
    let allocs = window(|| {
        for p in pages {
            if m.read_obj::<u8>(p * page).ok() != Some(byte_of(p)) {
                bad = Some(p);
                break;
            }
        }
        done = populated(server);
    });
    assert_eq!(bad, None, "wrong byte in a served page");
    assert!(done, "not populated within {LIMIT:?}");
    allocs
}

#[test]
fn serving_faults_allocates_nothing() {
    let page = userfaultfd::page_size();

    // Window 1: demand faults and prefetch, no background fill.
    let m = Arc::new(MemoryMapping::new_private(PAGES * page).unwrap());
    let server = serve(&m, ServerBuilder::new().background_threads(0));
    let allocs = touch_window(&m, &server, (0..PAGES).rev());
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

    // Window 3: memory fragmented (every even page present after an exact recording), then a
    // fault on the first odd page of each prefetch window: its window is read in one request
    // into the handler's bounce buffer and copied run by run.
    let window_bytes = 64 << 10;
    let per_window = (window_bytes / page).max(1);
    let m = Arc::new(MemoryMapping::new_private(PAGES * page).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), Arc::new(ReadThrough(image()))))
        .exact_recording(true)
        .background_threads(0)
        .prefetch(window_bytes)
        .prefetch_max(window_bytes)
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap();
    for p in (0..PAGES).step_by(2) {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
    // Recording ends (and its working set is built) outside the window.
    drop(server.finish_recording());
    let allocs = touch_window(&m, &server, (1..PAGES).step_by(per_window.max(2)));
    let stats = server.shutdown().unwrap();
    assert!(stats.pages_prefetch > 0, "{stats:?}");
    assert_eq!(
        allocs, 0,
        "allocations while prefetching fragmented windows: {stats:?}"
    );
    for p in 0..PAGES {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
}
