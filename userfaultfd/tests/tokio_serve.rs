//! The async serve runtime (feature `tokio`) on the running kernel: anonymous, hugetlb and
//! shmem memory served byte for byte to many threads, source chunks, events, and synchronous
//! sources through the blocking-pool adapter. (Failures, the fetch bound, priorities and
//! shutdown are in `tokio_serve_control.rs`.)
//!
//! The tests' own waits block their test thread (never a runtime worker: `#[tokio::test]`
//! runs its body on the test thread), each bounded by `TIMEOUT`.

mod common;
mod tokio_common;

use std::sync::{mpsc, Arc};
use std::thread;

use common::{ps, Map, TIMEOUT};
use mmap::MemoryMapping;
use tokio_common::*;
use userfaultfd::serve::{
    AsyncRegion, AsyncServerBuilder, BlockingSource, MemorySource, PageSource,
};
use userfaultfd::FeatureFlags;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_memory_is_served_byte_for_byte_to_eight_threads() {
    let (page, pages) = (ps(), 1024);
    let m = anon(pages);
    // No background fill: every page comes from a fault or its prefetch.
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), Image::new(pages, page, None)))
        .background_fetches(0)
        .start(user_uffd())
        .unwrap();
    touch_all(&m, page, 8);
    // The blocking form, on the test's own thread (the runtime's workers serve meanwhile).
    server.wait_populated_blocking(TIMEOUT).unwrap();
    assert!(server.is_populated());
    // The handle and its futures can move between tasks and threads.
    fn sendable<T: Send + Sync>(t: T) -> T {
        t
    }
    let server = sendable(server);
    sendable(server.wait_populated(TIMEOUT)).await.unwrap();
    let stats = sendable(server.shutdown()).await.unwrap();
    assert_eq!(
        stats.pages_demand + stats.pages_prefetch,
        pages as u64,
        "{stats:?}"
    );
    assert!(
        stats.demand_faults >= 1 && stats.pages_demand >= 1,
        "{stats:?}"
    );
    assert_eq!(stats.latency.count, stats.pages_demand, "{stats:?}");
    assert!(stats.time_to_populated.is_some());
    verify(&m, page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_source_is_read_once_per_chunk_in_whole_chunks() {
    let (page, pages) = (ps(), 256);
    let chunk = 16 * page as u64;
    let src = Image::new(pages, page, Some(chunk));
    let m = anon(pages);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .prefetch(0)
        .background_fetches(0)
        .start(user_uffd())
        .unwrap();
    touch_all(&m, page, 8);
    let stats = server.shutdown().await.unwrap();
    verify(&m, page);
    let mut reads = src.reads.lock().unwrap().clone();
    reads.sort_unstable();
    // Every fault's whole chunk came with it, in one request: each chunk read exactly once.
    let want: Vec<(u64, usize)> = (0..pages as u64 / 16)
        .map(|c| (c * chunk, chunk as usize))
        .collect();
    assert_eq!(reads, want, "{stats:?}");
    assert_eq!(
        stats.pages_demand + stats.pages_prefetch,
        pages as u64,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prefetch_and_background_reads_never_cross_a_chunk() {
    let (page, pages) = (ps(), 1000);
    // Chunks of 12 pages, and a region that starts 5 pages into the source.
    let chunk = 12 * page as u64;
    let src = Image::new(pages + 5, page, Some(chunk));
    let m = anon(pages);
    let region = AsyncRegion::new(m.clone(), src.clone()).source_offset(5 * page as u64);
    let server = AsyncServerBuilder::new()
        .region(region)
        .prefetch(64 * page)
        .background_chunk(40 * page)
        .start(user_uffd())
        .unwrap();
    touch_all_from(&m, page, 8, 5);
    server.wait_populated(TIMEOUT).await.unwrap();
    server.shutdown().await.unwrap();
    for p in 0..pages {
        assert_eq!(
            m.read_obj::<u8>(p * page + 3).unwrap(),
            byte_of(p + 5),
            "page {p}"
        );
    }
    let reads = src.reads.lock().unwrap().clone();
    let mut chunks_read = std::collections::HashMap::new();
    for &(off, len) in &reads {
        // A read covers one chunk or (background) several whole ones...
        let (first, last) = (off / chunk, (off + len as u64 - 1) / chunk);
        for c in first..=last {
            *chunks_read.entry(c).or_insert(0) += 1;
        }
    }
    // ...and no chunk is read by two requests: a chunk's missing pages are claimed in one
    // pass, by whichever fetch (demand, prefetch, background) gets there first.
    let twice: Vec<_> = chunks_read.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "chunks read more than once: {twice:?}");
    assert_eq!(chunks_read.len() as u64, (pages as u64 + 5).div_ceil(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hugetlb_regions_are_served_in_huge_pages() {
    let huge = 2 << 20;
    let pages = 4;
    let Some(m) = hugetlb_mapping(pages) else {
        return;
    };
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), Image::new(pages, huge, None)))
        .start(user_uffd())
        .unwrap();
    touch_all(&m, huge, 4);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    verify(&m, huge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shmem_is_served_by_copy_and_minor_regions_by_continue() {
    let (page, pages) = (ps(), 64);
    let len = pages * page;
    // COPY into a shared mapping of an empty memfd.
    let empty = mmap::SharedMemory::new("async-copy", len as u64).unwrap();
    let m = Arc::new(MemoryMapping::from_fd(&empty, len).unwrap());
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), Image::new(pages, page, None)))
        .start(user_uffd())
        .unwrap();
    touch_all(&m, page, 8);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    verify(&m, page);
    // CONTINUE from a memfd's page cache, the image written through a view of its own; its
    // holes (pages 40..) are copied from the source.
    let file = mmap::SharedMemory::new("async-minor", len as u64).unwrap();
    let img = image(pages, page);
    MemoryMapping::from_fd(&file, len)
        .unwrap()
        .write_slice(&img[..40 * page], 0)
        .unwrap();
    let guest = Arc::new(MemoryMapping::from_fd(&file, len).unwrap());
    let region = AsyncRegion::new(guest.clone(), Image::new(pages, page, None)).minor();
    let server = AsyncServerBuilder::new()
        .region(region)
        .start(user_uffd())
        .unwrap();
    touch_all(&guest, page, 8);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert!(stats.pages_continue > 0, "{stats:?}");
    assert!(stats.bytes_copied > 0, "the holes were copied: {stats:?}");
    verify(&guest, page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sources_are_served_byte_for_byte_through_the_adapter() {
    let (page, pages) = (ps(), 512);
    for inline in [false, true] {
        let m = anon(pages);
        let sync: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(pages, page)));
        let src = if inline {
            BlockingSource::inline(sync)
        } else {
            BlockingSource::new(sync)
        };
        let server = AsyncServerBuilder::new()
            .region(AsyncRegion::new(m.clone(), Arc::new(src)))
            .start(user_uffd())
            .unwrap();
        touch_all(&m, page, 8);
        let stats = server.shutdown_populated(TIMEOUT).await.unwrap();
        assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
        verify(&m, page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_pages_read_as_zeros_never_as_source_data() {
    let (page, pages) = (ps(), 256);
    let m = anon(pages);
    let uffd = user_uffd_with(FeatureFlags::EVENT_REMOVE);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), Image::new(pages, page, None)))
        .start(uffd)
        .unwrap();
    server.wait_populated(TIMEOUT).await.unwrap();
    verify(&m, page);
    // A balloon frees pages 10..20; madvise blocks until the server reads the REMOVE event,
    // so it runs on a thread of its own.
    let advisor = {
        let m = Arc::clone(&m);
        thread::spawn(move || {
            // SAFETY: a range inside `m`, only reached through volatile accessors.
            unsafe {
                libc::madvise(
                    m.as_ptr().add(10 * ps()).cast(),
                    10 * ps(),
                    libc::MADV_DONTNEED,
                )
            }
        })
    };
    assert_eq!(advisor.join().unwrap(), 0);
    let (tx, rx) = mpsc::channel();
    let reader = Arc::clone(&m);
    thread::spawn(move || {
        let got: Vec<u8> = (0..pages)
            .map(|p| reader.read_obj::<u8>(p * ps() + 5).unwrap())
            .collect();
        tx.send(got).unwrap();
    });
    let got = rx.recv_timeout(TIMEOUT).expect("a reader hangs");
    for (p, &b) in got.iter().enumerate() {
        let want = if (10..20).contains(&p) { 0 } else { byte_of(p) };
        assert_eq!(b, want, "page {p}");
    }
    let stats = server.shutdown().await.unwrap();
    assert!(stats.events >= 1, "{stats:?}");
    assert_eq!(stats.pages_removed_zero, 10, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapping_part_of_a_region_while_background_fill_runs() {
    let (page, pages) = (ps(), 4096);
    let map = Map::anon(pages * page);
    let uffd = user_uffd_with(FeatureFlags::EVENT_UNMAP);
    // SAFETY: `map` is this test's raw mapping, read only through `Map::read` below, and its
    // second half is unmapped only through the munmap below, which the server learns of.
    let region = unsafe {
        AsyncRegion::from_raw_parts(map.ptr(), pages * page, page, Image::new(pages, page, None))
    };
    let server = AsyncServerBuilder::new()
        .region(region)
        .background_chunk(64 << 10)
        .start(uffd)
        .unwrap();
    // munmap waits until the server has read the UNMAP event: from a thread of its own.
    let (at, len) = (map.at(pages / 2 * page) as usize, pages / 2 * page);
    // SAFETY: the second half of our own mapping; nothing refers to it afterwards.
    let unmapper = thread::spawn(move || unsafe { libc::munmap(at as *mut libc::c_void, len) });
    assert_eq!(unmapper.join().unwrap(), 0);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert!(stats.events >= 1, "{stats:?}");
    for p in 0..pages / 2 {
        assert_eq!(map.read(p * page), byte_of(p), "page {p}");
    }
    // SAFETY: the first half of our own mapping, never touched again; forgotten below so
    // that its drop does not unmap twice.
    unsafe { libc::munmap(map.ptr(), pages / 2 * page) };
    map.forget();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_moved_whole_by_mremap_is_served_at_its_new_address() {
    let (page, pages) = (ps(), 64);
    let len = pages * page;
    let map = Map::anon(len);
    let dest = Arc::new(Map::reserve(len));
    let uffd = user_uffd_with(FeatureFlags::EVENT_REMAP);
    // SAFETY: `map` is this test's raw mapping, reached only through `Map::read`; it moves
    // only by the mremap below, which the server learns of.
    let region =
        unsafe { AsyncRegion::from_raw_parts(map.ptr(), len, page, Image::new(pages, page, None)) };
    let server = AsyncServerBuilder::new()
        .region(region)
        .prefetch(0)
        .background_fetches(0)
        .start(uffd)
        .unwrap();
    let (from, to) = (map.addr(), dest.addr());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // A page served at the old address, then the move (which waits for the REMAP
        // event to be read).
        // SAFETY: inside the mapping, which only this thread touches until the move.
        let before = unsafe { std::ptr::read_volatile((from + 3 * ps()) as *const u8) };
        // SAFETY: moves our own mapping onto our own reservation, replacing it.
        let moved = unsafe {
            libc::mremap(
                from as *mut libc::c_void,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        tx.send((before, moved as usize)).unwrap();
    });
    let (before, moved) = rx.recv_timeout(TIMEOUT).expect("mremap hangs");
    assert_eq!((before, moved), (byte_of(3), to));
    map.forget(); // moved onto `dest`, which unmaps it
    let (tx, rx) = mpsc::channel();
    let moved = Arc::clone(&dest);
    thread::spawn(move || {
        let got: Vec<u8> = (0..pages).map(|p| moved.read(p * ps() + 1)).collect();
        tx.send(got).unwrap();
    });
    let got = rx
        .recv_timeout(TIMEOUT)
        .expect("a reader of the moved region hangs");
    for (p, &b) in got.iter().enumerate() {
        assert_eq!(b, byte_of(p), "page {p}");
    }
    let stats = server.shutdown().await.unwrap();
    assert!(stats.events >= 1, "{stats:?}");
    assert_eq!(stats.pages_demand, pages as u64, "{stats:?}");
}
