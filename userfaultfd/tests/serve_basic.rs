//! The fault-handling runtime (`userfaultfd::serve`) against the running kernel: demand faults
//! from many threads, prefetch and background fill, hugetlb, minor (page cache) regions, pages
//! present before the start, two servers at once, several regions, and refused configurations.
//! Every wait is bounded.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::serving::{
    anon, byte_of, check_background_rate, hugetlb_mapping, image, image_region, touch_all,
    user_uffd, verify,
};
use common::{ps, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{MemorySource, PageSource, Region, ServeError, ServerBuilder};

#[test]
fn eight_threads_race_on_the_same_pages() {
    let page = ps();
    let pages = 2048; // 8 MiB
    let m = anon(pages);
    let src = Arc::new(MemorySource::new(image(pages, page)));
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), src))
        .start(user_uffd())
        .unwrap();
    touch_all(&m, page, 8);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    verify(&m, page);
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    assert_eq!(stats.source_errors, 0);
    assert!(stats.time_to_populated.is_some());
    assert_eq!(
        stats.latency.count,
        stats.pages_demand + stats.pages_removed_zero
    );
}

#[test]
fn demand_and_prefetch_only_without_background_fill() {
    let page = ps();
    let pages = 1024;
    let chunk = 64 << 10;
    let m = anon(pages);
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .background_threads(0)
        .prefetch(chunk)
        .prefetch_max(chunk)
        .start(user_uffd())
        .unwrap();
    // One touch in the middle of a chunk: the whole chunk arrives, nothing else.
    assert_eq!(m.read_obj::<u8>(100 * page).unwrap(), byte_of(100));
    // The counters follow the wake: wait for the handler to finish the chunk.
    let per_chunk = (chunk / page) as u64;
    common::wait_until("the prefetched chunk", || {
        server.stats().pages_present() == per_chunk
    });
    let stats = server.stats();
    assert_eq!(stats.demand_faults, 1, "{stats:?}");
    assert_eq!(stats.pages_demand, 1, "{stats:?}");
    assert!(!server.is_populated());
    assert!(matches!(
        server.wait_populated(Duration::from_millis(10)),
        Err(ServeError::Timeout(_))
    ));
    touch_all(&m, page, 2);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_background, 0);
    assert_eq!(stats.pages_present(), pages as u64);
    verify(&m, page);
}

#[test]
fn hugetlb_regions_are_served_in_huge_pages() {
    let huge = 2 << 20;
    let pages = 4;
    let Some(m) = hugetlb_mapping(pages) else {
        return;
    };
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, huge))
        .start(user_uffd())
        .unwrap();
    touch_all(&m, huge, 4);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    verify(&m, huge);
}

/// An arena made from hugetlb memory is a region of huge pages too: the server learns the unit
/// from `MappedRegion::page_size`, so every resolve is a whole huge page (a 4 KiB `COPY` into
/// hugetlb memory fails with `EINVAL`).
#[test]
fn hugetlb_arenas_are_served_in_huge_pages() {
    let huge = 2 << 20;
    let pages = 3;
    let Some(m) = hugetlb_mapping(pages) else {
        return;
    };
    let m = Arc::try_unwrap(m).expect("the helper keeps no other reference");
    let arena = Arc::new(mmap::MemoryMappingArena::from(m));
    let base = mmap::MappedRegion::as_ptr(&*arena) as usize;
    let server = ServerBuilder::new()
        .region(Region::new(
            arena.clone(),
            Arc::new(MemorySource::new(image(pages, huge))),
        ))
        .start(user_uffd())
        .unwrap();
    // A demand fault in the middle of the last huge page.
    let last = (pages - 1) * huge;
    assert_eq!(
        common::recv(&common::reader(base + last + huge / 2)),
        byte_of(pages - 1)
    );
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    for p in 0..pages {
        for off in [0, huge / 2, huge - 1] {
            // SAFETY: inside the arena, which `arena` keeps mapped; the server has stopped,
            // and every page is present, so the read neither blocks nor races a resolve.
            let v = unsafe { std::ptr::read_volatile((base + p * huge + off) as *const u8) };
            assert_eq!(v, byte_of(p), "huge page {p} + {off}");
        }
    }
}

/// `background_rate` holds over all background threads together (two here): at every sample,
/// the bytes copied are within the rate since the start plus one copy, and the region is
/// still populated in the end.
#[test]
fn the_background_rate_limit_holds_over_every_thread() {
    let page = ps();
    let pages = 2048; // 8 MiB
    let (rate, chunk) = (16u64 << 20, 1usize << 20);
    let m = anon(pages);
    let t0 = std::time::Instant::now();
    let server = ServerBuilder::new()
        .region(Region::new(
            m.clone(),
            Arc::new(MemorySource::new(image(pages, page))),
        ))
        .background_threads(2)
        .background_chunk(chunk)
        .background_rate(rate)
        .start(user_uffd())
        .unwrap();
    let samples = check_background_rate(
        &|d| server.wait_populated(d).is_ok(),
        &|| server.stats().pages_background,
        t0,
        (rate, chunk as u64),
        (pages * page) as u64,
    );
    // 8 MiB at 16 MiB/s: about half a second, so the limit was sampled while it worked.
    assert!(samples > 2, "{samples} samples");
    server.shutdown().unwrap();
    verify(&m, page);
}

#[test]
fn two_servers_at_once() {
    let page = ps();
    let pages = 1024;
    let a = anon(pages);
    let b = anon(pages);
    let sa = ServerBuilder::new()
        .region(image_region(&a, pages, page))
        .start(user_uffd())
        .unwrap();
    let sb = ServerBuilder::new()
        .region(image_region(&b, pages, page))
        .start(user_uffd())
        .unwrap();
    let ta = {
        let a = a.clone();
        thread::spawn(move || touch_all(&a, page, 2))
    };
    touch_all(&b, page, 2);
    ta.join().unwrap();
    sa.wait_populated(TIMEOUT).unwrap();
    sb.wait_populated(TIMEOUT).unwrap();
    drop((sa, sb));
    verify(&a, page);
    verify(&b, page);
}

#[test]
fn one_server_many_regions_with_source_offsets() {
    let page = ps();
    let pages = 256;
    let src: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(3 * pages, page)));
    let regions: Vec<Arc<MemoryMapping>> = (0..3).map(|_| anon(pages)).collect();
    let mut builder = ServerBuilder::new();
    for (i, r) in regions.iter().enumerate() {
        builder = builder
            .region(Region::new(r.clone(), src.clone()).source_offset((i * pages * page) as u64));
    }
    let server = builder.start(user_uffd()).unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    drop(server);
    for (i, r) in regions.iter().enumerate() {
        for p in 0..pages {
            assert_eq!(r.read_obj::<u8>(p * page).unwrap(), byte_of(i * pages + p));
        }
    }
}

#[test]
fn pages_present_before_start_are_kept() {
    let page = ps();
    let pages = 64;
    let m = anon(pages);
    m.write_obj(0xeeu8, 5 * page).unwrap();
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .start(user_uffd())
        .unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    // COPY never overwrites: the page written before the server started keeps its byte.
    assert_eq!(m.read_obj::<u8>(5 * page).unwrap(), 0xee);
    assert!(stats.already_mapped >= 1, "{stats:?}");
    for p in (0..pages).filter(|&p| p != 5) {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p));
    }
}

#[test]
fn stop_when_populated_leaves_plain_memory() {
    let page = ps();
    let pages = 256;
    let m = anon(pages);
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .stop_when_populated(true)
        .start(user_uffd())
        .unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    verify(&m, page);
    server.shutdown().unwrap();
}

#[test]
fn refused_configurations_are_typed_errors() {
    let page = ps();
    let m = anon(4);
    let small: Arc<dyn PageSource> = Arc::new(MemorySource::new(vec![0u8; 2 * page]));
    let fits: Arc<dyn PageSource> = Arc::new(MemorySource::new(vec![0u8; 4 * page]));
    let cases: Vec<(&str, ServerBuilder)> = vec![
        ("no region", ServerBuilder::new()),
        (
            "source shorter than the region",
            ServerBuilder::new().region(Region::new(m.clone(), small)),
        ),
        (
            "offset past the source",
            ServerBuilder::new()
                .region(Region::new(m.clone(), fits.clone()).source_offset(page as u64)),
        ),
        (
            "overlap",
            ServerBuilder::new()
                .region(Region::new(m.clone(), fits.clone()))
                .region(Region::new(m.clone(), fits.clone())),
        ),
        (
            "prefetch not a power of two",
            ServerBuilder::new()
                .region(Region::new(m.clone(), fits.clone()))
                .prefetch(3 * page),
        ),
        (
            "no handler thread",
            ServerBuilder::new()
                .region(Region::new(m.clone(), fits.clone()))
                .handler_threads(0),
        ),
    ];
    for (what, b) in cases {
        match b.start(user_uffd()) {
            Err(ServeError::Config(_)) => {}
            other => panic!("{what}: expected Config, got {other:?}"),
        }
    }
    // SAFETY: never started (the configuration is refused before anything is registered).
    let misaligned =
        unsafe { Region::from_raw_parts(m.as_ptr().add(1).cast(), page, page, fits.clone()) };
    assert!(matches!(
        ServerBuilder::new().region(misaligned).start(user_uffd()),
        Err(ServeError::Config(_))
    ));
    // A range another uffd has registered: registration fails, nothing stays registered.
    let other = user_uffd();
    other
        .register_region(&*m, userfaultfd::RegisterMode::MISSING)
        .unwrap();
    assert!(matches!(
        ServerBuilder::new()
            .region(Region::new(m.clone(), fits))
            .start(user_uffd()),
        Err(ServeError::Uffd(_))
    ));
}

#[test]
fn minor_regions_map_the_page_cache_and_copy_only_its_holes() {
    let page = ps();
    let pages = 512;
    let img = image(pages, page);
    // The image in a memfd's page cache, except every 16th page (a hole: not in the cache).
    let file = mmap::SharedMemory::new("serve-minor", (pages * page) as u64).unwrap();
    let filler = MemoryMapping::from_fd(&file, pages * page).unwrap();
    for p in (0..pages).filter(|p| p % 16 != 5) {
        filler
            .write_slice(&img[p * page..(p + 1) * page], p * page)
            .unwrap();
    }
    drop(filler);
    let guest = Arc::new(MemoryMapping::from_fd(&file, pages * page).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(guest.clone(), Arc::new(MemorySource::new(img))).minor())
        .start(user_uffd())
        .unwrap();
    touch_all(&guest, page, 4);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    verify(&guest, page);
    let holes = (pages / 16) as u64;
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    assert_eq!(stats.pages_continue, pages as u64 - holes, "{stats:?}");
    assert_eq!(stats.bytes_copied, holes * page as u64, "{stats:?}");
}
