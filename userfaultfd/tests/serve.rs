//! The fault-handling runtime (`userfaultfd::serve`) against the running kernel: demand faults
//! from many threads, prefetch and background fill, hugetlb, REMOVE and UNMAP events, source
//! failures under each policy, shutdown with faults in flight, two servers at once, and refused
//! configurations. Every wait is bounded.

mod common;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use common::{ps, Map, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{
    FailurePolicy, MemorySource, PageSource, Region, ServeError, Server, ServerBuilder,
    DEFAULT_PREFETCH,
};
use userfaultfd::{FeatureFlags, UffdBuilder};

/// Page `n` of an image holds the byte `(n * 7 + 3) as u8` (zero every eighth page).
fn byte_of(page: usize) -> u8 {
    if page % 8 == 7 {
        0
    } else {
        (page * 7 + 3) as u8
    }
}

fn image(pages: usize, page: usize) -> Vec<u8> {
    (0..pages * page).map(|i| byte_of(i / page)).collect()
}

/// A region over all of `m`, served from [`image`] of `pages` pages of `page` bytes.
fn image_region(m: &Arc<MemoryMapping>, pages: usize, page: usize) -> Region {
    Region::new(m.clone(), Arc::new(MemorySource::new(image(pages, page))))
}

fn user_uffd() -> userfaultfd::Uffd {
    UffdBuilder::new().user_mode_only(true).create().unwrap()
}

/// Reads every page of `m` (one byte per page) and checks it against [`byte_of`].
fn verify(m: &MemoryMapping, page: usize) {
    for p in 0..m.size() / page {
        for off in [0, page / 2, page - 1] {
            let got = m.read_obj::<u8>(p * page + off).unwrap();
            assert_eq!(got, byte_of(p), "page {p} offset {off}");
        }
    }
}

/// Touches `pages` pages of `m` from `threads` threads, each in its own order; returns when all
/// are done, failing the test after [`TIMEOUT`].
fn touch_all(m: &Arc<MemoryMapping>, page: usize, threads: usize) {
    let pages = m.size() / page;
    let (tx, rx) = mpsc::channel();
    for t in 0..threads {
        let m = Arc::clone(m);
        let tx = tx.clone();
        thread::spawn(move || {
            // A different stride per thread, so threads race on the same pages.
            let stride = [1, 3, 5, 7, 11, 13, 17, 19][t % 8];
            for i in 0..pages {
                let p = (i * stride + t) % pages;
                assert_eq!(m.read_obj::<u8>(p * page + 1).unwrap(), byte_of(p));
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..threads {
        rx.recv_timeout(TIMEOUT)
            .expect("a touching thread is stuck");
    }
}

#[test]
fn eight_threads_race_on_the_same_pages() {
    let page = ps();
    let pages = 2048; // 8 MiB
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
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
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
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
    let free = mmap::HugePageSize::Size2MiB.free_pages().unwrap_or(0);
    if free < pages as u64 + 2 {
        test_kit::report::skip(format!(
            "needs {} free 2 MiB huge pages, {free} free (sysctl -w vm.nr_hugepages=128)",
            pages + 2
        ));
        return;
    }
    let m = match mmap::MemoryMappingBuilder::new(pages * huge)
        .private()
        .hugetlb(mmap::HugePageSize::Size2MiB)
        .build()
    {
        Ok(m) => Arc::new(m),
        Err(e) => {
            test_kit::report::skip(format!(
                "hugetlb mapping failed: {e} (sysctl -w vm.nr_hugepages=128)"
            ));
            return;
        }
    };
    assert_eq!(mmap::MappedRegion::page_size(&*m), huge);
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

/// `madvise(MADV_DONTNEED)` over `len` bytes at `off` of `m`.
fn dontneed(m: &MemoryMapping, off: usize, len: usize) {
    // SAFETY: the range lies inside `m`, which is reached only through volatile accessors;
    // dropping its pages is what the test wants.
    let r = unsafe { libc::madvise(m.as_ptr().add(off).cast(), len, libc::MADV_DONTNEED) };
    assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
}

#[test]
fn removed_pages_read_as_zeros_never_as_source_data() {
    let page = ps();
    let pages = 512;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap();
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .start(uffd)
        .unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    verify(&m, page);
    // A balloon frees pages 10..20 (blocks until the server reads the REMOVE event).
    dontneed(&m, 10 * page, 10 * page);
    for p in 0..pages {
        let want = if (10..20).contains(&p) { 0 } else { byte_of(p) };
        assert_eq!(m.read_obj::<u8>(p * page + 5).unwrap(), want, "page {p}");
    }
    let stats = server.shutdown().unwrap();
    assert!(stats.events >= 1, "{stats:?}");
    assert_eq!(stats.pages_removed_zero, 10, "{stats:?}");
}

#[test]
fn removal_before_population_is_skipped_by_background_fill() {
    let page = ps();
    let pages = 4096;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap();
    let (release, gate) = mpsc::channel();
    let src = Arc::new(Gated::new(image(pages, page), gate));
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), src.clone()))
        .background_chunk(64 << 10)
        .start(uffd)
        .unwrap();
    // Background fill is held inside its first read (the first chunk) while the second half,
    // still missing, is removed.
    src.entered.wait();
    dontneed(&m, pages / 2 * page, pages / 2 * page);
    release.send(()).unwrap();
    // Removed pages need nothing from the source: population completes without them.
    server.wait_populated(TIMEOUT).unwrap();
    let before = server.stats();
    assert!(before.pages_present() <= (pages / 2) as u64, "{before:?}");
    for p in 0..pages {
        let want = if p < pages / 2 { byte_of(p) } else { 0 };
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), want, "page {p}");
    }
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_removed_zero, (pages / 2) as u64, "{stats:?}");
}

/// A source that fails for the pages in `bad` and counts its reads.
struct Failing {
    inner: MemorySource,
    bad: std::ops::Range<u64>,
    reads: AtomicUsize,
}

impl PageSource for Failing {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let end = offset + buf.len() as u64;
        if offset < self.bad.end && self.bad.start < end {
            return Err(io::Error::other("the disk is on fire"));
        }
        self.inner.read_at(offset, buf)
    }
}

fn failing(pages: usize, page: usize, bad_page: usize) -> Arc<Failing> {
    Arc::new(Failing {
        inner: MemorySource::new(image(pages, page)),
        bad: (bad_page * page) as u64..((bad_page + 1) * page) as u64,
        reads: AtomicUsize::new(0),
    })
}

/// Set in a re-executed child: the name of the case to run there.
const CHILD_ENV: &str = "UFFD_SERVE_CHILD";

#[test]
fn a_failed_source_read_poisons_the_page() {
    const NAME: &str = "a_failed_source_read_poisons_the_page";
    if let Err(e) = UffdBuilder::new()
        .require_features(FeatureFlags::POISON)
        .create()
    {
        // Without POISON the server falls back instead: see serve_fallbacks.rs.
        return common::kernel::assert_lacks(FeatureFlags::POISON, &e);
    }
    let page = ps();
    let pages = 64;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), failing(pages, page, 9)))
        .prefetch(0)
        .background_threads(0)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .start(user_uffd())
        .unwrap();
    // Good pages are served...
    assert_eq!(m.read_obj::<u8>(8 * page).unwrap(), byte_of(8));
    if common::is_child(CHILD_ENV, NAME) {
        // ...and touching the bad one raises SIGBUS instead of hanging. (The child has its own
        // server: this whole test body ran again in it.)
        let _ = m.read_obj::<u8>(9 * page);
        println!("CHILD READ A PAGE WHOSE SOURCE FAILED");
        std::process::exit(3);
    }
    let (status, out) = common::run_child(CHILD_ENV, NAME);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
    // Here nobody asked for page 9 (no prefetch, no background fill): no error yet.
    drop(server);
    assert!(errors.lock().unwrap().is_empty());
}

#[test]
fn zero_fill_policy_goes_on_with_zeros_and_reports() {
    let page = ps();
    let pages = 64;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), failing(pages, page, 9)))
        .prefetch(0)
        .failure_policy(FailurePolicy::ZeroFill)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .start(user_uffd())
        .unwrap();
    assert_eq!(m.read_obj::<u8>(9 * page).unwrap(), 0);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    assert!(stats.source_errors >= 1, "{stats:?}");
    assert_eq!(stats.pages_failed, 1, "{stats:?}");
    let errors = errors.lock().unwrap();
    assert!(
        errors.iter().any(|e| e.contains("disk is on fire")),
        "{errors:?}"
    );
    for p in (0..pages).filter(|&p| p != 9) {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
}

#[test]
fn stop_policy_unregisters_and_says_why() {
    let page = ps();
    let pages = 64;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), failing(pages, page, 9)))
        .prefetch(0)
        .background_threads(0)
        .failure_policy(FailurePolicy::Stop)
        .start(user_uffd())
        .unwrap();
    // The faulting thread is released to the kernel's default: a zero page.
    assert_eq!(m.read_obj::<u8>(9 * page).unwrap(), 0);
    match server.wait_populated(TIMEOUT) {
        Err(ServeError::Stopped(why)) => assert!(why.contains("Stop"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(server.halted().is_some());
    // Not registered any more: other pages are plain zero-filled memory now.
    assert_eq!(m.read_obj::<u8>(20 * page).unwrap(), 0);
    server.shutdown().unwrap();
}

/// A source whose first read waits until released (after meeting the test at `entered`), to
/// hold a fault or a background copy in flight; later reads go straight through.
struct Gated {
    inner: MemorySource,
    first: AtomicUsize,
    gate: Mutex<mpsc::Receiver<()>>,
    entered: Barrier,
}

impl Gated {
    fn new(image: Vec<u8>, gate: mpsc::Receiver<()>) -> Gated {
        Gated {
            inner: MemorySource::new(image),
            first: AtomicUsize::new(0),
            gate: Mutex::new(gate),
            entered: Barrier::new(2),
        }
    }
}

impl PageSource for Gated {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.first.fetch_add(1, Ordering::AcqRel) == 0 {
            self.entered.wait();
            let _ = self.gate.lock().unwrap().recv_timeout(TIMEOUT);
        }
        self.inner.read_at(offset, buf)
    }
}

#[test]
fn shutdown_with_a_fault_in_flight_releases_the_faulting_thread() {
    let page = ps();
    let pages = 16;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let (release, gate) = mpsc::channel();
    let src = Arc::new(Gated::new(image(pages, page), gate));
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), src.clone()))
        .prefetch(0)
        .background_threads(0)
        .start(user_uffd())
        .unwrap();
    let toucher = {
        let m = Arc::clone(&m);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(m.read_obj::<u8>(3 * page).unwrap()).unwrap());
        rx
    };
    // The handler is inside the source read for page 3.
    src.entered.wait();
    let stopper = thread::spawn(move || server.shutdown());
    release.send(()).unwrap();
    let stats = stopper.join().unwrap().unwrap();
    // The read completed before the handler saw the stop: page 3 has its data.
    assert_eq!(toucher.recv_timeout(TIMEOUT).unwrap(), byte_of(3));
    assert_eq!(stats.pages_demand, 1);
    // After shutdown the rest is plain memory: the kernel zero-fills it.
    assert_eq!(m.read_obj::<u8>(4 * page).unwrap(), 0);
}

#[test]
fn shutdown_while_threads_wait_on_missing_pages() {
    let page = ps();
    let pages = 16;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let (release, gate) = mpsc::channel::<()>();
    let src = Arc::new(Gated::new(image(pages, page), gate));
    let server: Server = ServerBuilder::new()
        .region(Region::new(m.clone(), src.clone()))
        .prefetch(0)
        .background_threads(0)
        .start(user_uffd())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    for p in [1usize, 2, 3] {
        let m = Arc::clone(&m);
        let tx = tx.clone();
        thread::spawn(move || tx.send((p, m.read_obj::<u8>(p * page).unwrap())).unwrap());
    }
    // The handler is held in its first read; the other faults wait (read or not yet read).
    src.entered.wait();
    let stopper = thread::spawn(move || server.shutdown());
    release.send(()).unwrap();
    stopper.join().unwrap().unwrap();
    // Every thread comes back, with its data (served before the stop took effect) or with the
    // kernel's zero page (released by the unregistration): never stuck.
    let got: Vec<(usize, u8)> = (0..3).map(|_| rx.recv_timeout(TIMEOUT).unwrap()).collect();
    assert!(
        got.iter().all(|&(p, v)| v == byte_of(p) || v == 0),
        "{got:?}"
    );
    assert!(got.iter().any(|&(p, v)| v == byte_of(p)), "{got:?}");
}

#[test]
fn two_servers_at_once() {
    let page = ps();
    let pages = 1024;
    let a = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let b = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
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
    let regions: Vec<Arc<MemoryMapping>> = (0..3)
        .map(|_| Arc::new(MemoryMapping::new_private(pages * page).unwrap()))
        .collect();
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
fn unmapping_part_of_a_region_while_background_fill_runs() {
    let page = ps();
    let pages = 4096;
    let map = Map::anon(pages * page);
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_UNMAP)
        .create()
        .unwrap();
    let src: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(pages, page)));
    // SAFETY: `map` is this test's raw mapping, read only through `Map::read` below, and its
    // second half is unmapped only through the munmap below, which the server learns of.
    let region = unsafe { Region::from_raw_parts(map.ptr(), pages * page, page, src) };
    let server = ServerBuilder::new()
        .region(region)
        .background_chunk(64 << 10)
        .start(uffd)
        .unwrap();
    // SAFETY: the second half of our own mapping; nothing refers to it afterwards.
    let r = unsafe { libc::munmap(map.at(pages / 2 * page), pages / 2 * page) };
    assert_eq!(r, 0);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    assert!(stats.events >= 1, "{stats:?}");
    for p in 0..pages / 2 {
        assert_eq!(map.read(p * page), byte_of(p), "page {p}");
    }
    // Unmap the first half ourselves; forget the mapping so its drop does not unmap twice.
    // SAFETY: the first half of our own mapping, never touched again.
    unsafe { libc::munmap(map.ptr(), pages / 2 * page) };
    map.forget();
}

#[test]
fn pages_present_before_start_are_kept() {
    let page = ps();
    let pages = 64;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
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
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
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
    let m = Arc::new(MemoryMapping::new_private(4 * page).unwrap());
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
fn a_recorded_working_set_replays_before_the_workload_touches_it() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    // Forty touches in 32 prefetch chunks, visited out of order.
    let per_chunk = DEFAULT_PREFETCH / page;
    let pages = 32 * per_chunk;
    let touched: Vec<usize> = (0..40)
        .map(|i| ((i * 17) % 32) * per_chunk + (i * 5) % per_chunk)
        .collect();
    let run = |replay: Option<WorkingSet>| {
        let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
        let mut b = ServerBuilder::new()
            .region(image_region(&m, pages, page))
            .background_threads(0)
            .record_working_set(true);
        let expect_replayed = replay.is_some();
        if let Some(ws) = replay {
            b = b.replay(ws);
        }
        let server = b.start(user_uffd()).unwrap();
        if expect_replayed {
            // The replay thread copies the recorded chunks before anything is touched.
            common::wait_until("the whole replay", || {
                server.stats().pages_replay >= 32 * per_chunk as u64
            });
        }
        for &p in &touched {
            assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
        }
        let ws = server.working_set();
        (server.shutdown().unwrap(), ws)
    };
    let (first, ws) = run(None);
    assert_eq!(ws.len() as u64, first.pages_demand, "{first:?}");
    assert!(first.demand_faults as usize >= ws.len());
    // Through a file and back.
    let path = std::env::temp_dir().join(format!("uffd-ws-{}.bin", std::process::id()));
    ws.save(&path).unwrap();
    let loaded = WorkingSet::load(&path);
    let _ = std::fs::remove_file(&path);
    let loaded = loaded.unwrap();
    assert_eq!(loaded, ws);
    let (second, ws2) = run(Some(loaded));
    assert_eq!(second.demand_faults, 0, "{second:?}");
    assert!(ws2.is_empty());
    assert_eq!(
        second.pages_replay,
        first.pages_present(),
        "{first:?}\n{second:?}"
    );
}

#[test]
fn an_exact_recording_replays_just_the_touched_pages() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    let per_chunk = DEFAULT_PREFETCH / page;
    let pages = 8 * per_chunk;
    // Sparse, out of order, with one run of three adjacent pages (read as one run on replay).
    let mut touched: Vec<usize> = (0..24).map(|i| (i * 37) % pages).collect();
    touched.extend([5 * per_chunk + 1, 5 * per_chunk + 2, 5 * per_chunk + 3]);
    touched.dedup();
    let mut distinct = touched.clone();
    distinct.sort_unstable();
    distinct.dedup();

    // The recording run: only the faulting pages are served until finish_recording.
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .exact_recording(true)
        .start(user_uffd())
        .unwrap();
    for &p in &touched {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
    // The counters of the last copy may land just after its wake-up.
    common::wait_until("the last demand counted", || {
        server.stats().pages_present() >= distinct.len() as u64
    });
    let during = server.stats();
    assert_eq!(during.pages_prefetch, 0, "{during:?}");
    assert_eq!(during.pages_background, 0, "{during:?}");
    assert_eq!(during.pages_present(), distinct.len() as u64, "{during:?}");
    let ws = server.finish_recording();
    assert!(ws.is_exact());
    let recorded: Vec<usize> = ws
        .entries()
        .iter()
        .map(|&(ri, off)| {
            assert_eq!(ri, 0);
            off as usize / page
        })
        .collect();
    let mut first_touches = Vec::new();
    for &p in &touched {
        if !first_touches.contains(&p) {
            first_touches.push(p);
        }
    }
    assert_eq!(recorded, first_touches, "demand order, each page once");
    // Recording has ended: background fill now populates the rest, and nothing more is
    // recorded.
    server.wait_populated(common::TIMEOUT).unwrap();
    assert_eq!(server.working_set(), ws);
    server.shutdown().unwrap();

    // Through a file, then replayed by several threads: exactly the recorded pages.
    let mut file = Vec::new();
    ws.write_to(&mut file).unwrap();
    let loaded = WorkingSet::read_from(&file[..]).unwrap();
    assert!(loaded.is_exact());
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .background_threads(0)
        .replay(loaded)
        .replay_threads(3)
        .start(user_uffd())
        .unwrap();
    server.wait_replayed(common::TIMEOUT).unwrap();
    assert_eq!(server.stats().pages_replay, distinct.len() as u64);
    for &p in &distinct {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.demand_faults, 0, "{stats:?}");
    assert_eq!(stats.pages_replay, distinct.len() as u64, "{stats:?}");
    assert_eq!(stats.pages_present(), distinct.len() as u64, "{stats:?}");
}

#[test]
fn exact_recording_with_replay_or_no_replay_thread_is_refused() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    let m = Arc::new(MemoryMapping::new_private(4 * page).unwrap());
    let ws = WorkingSet::from_entries(vec![(0, 0)]);
    for (what, b) in [
        (
            "exact recording and replay",
            ServerBuilder::new()
                .region(image_region(&m, 4, page))
                .exact_recording(true)
                .replay(ws.clone()),
        ),
        (
            "no replay thread",
            ServerBuilder::new()
                .region(image_region(&m, 4, page))
                .replay(ws.clone())
                .replay_threads(0),
        ),
    ] {
        match b.start(user_uffd()) {
            Err(ServeError::Config(_)) => {}
            other => panic!("{what}: expected Config, got {other:?}"),
        }
    }
}

#[test]
fn a_working_set_naming_other_pages_is_refused() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    let m = Arc::new(MemoryMapping::new_private(4 * page).unwrap());
    for entries in [vec![(1u32, 0u64)], vec![(0, 4 * page as u64)], vec![(0, 1)]] {
        let r = ServerBuilder::new()
            .region(image_region(&m, 4, page))
            .replay(WorkingSet::from_entries(entries.clone()))
            .start(user_uffd());
        assert!(
            matches!(r, Err(ServeError::Config(_))),
            "{entries:?}: {r:?}"
        );
    }
}

/// Writes one byte into each page of `pages` of `m`.
fn write_pages(m: &MemoryMapping, page: usize, pages: &[usize]) {
    for &p in pages {
        m.write_obj(0xabu8, p * page + 9).unwrap();
    }
}

/// The pages named by `ranges` (all of region 0).
fn dirty_set(ranges: &[userfaultfd::serve::DirtyRange], page: usize) -> Vec<usize> {
    let mut v = Vec::new();
    for d in ranges {
        assert_eq!(d.region, 0);
        assert_eq!((d.offset % page, d.len % page), (0, 0), "{d:?}");
        v.extend(d.offset / page..(d.offset + d.len) / page);
    }
    v
}

fn dirty_tracking_round_trip(uffd: userfaultfd::Uffd) -> userfaultfd::serve::Stats {
    let page = ps();
    let pages = 256;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .prefetch(0)
        .background_threads(0)
        .track_dirty(true)
        .start(uffd)
        .unwrap();
    // A write to a missing page: served writable and reported.
    write_pages(&m, page, &[7]);
    // Reads populate without dirtying.
    for p in 0..pages {
        let want = if p == 7 { None } else { Some(byte_of(p)) };
        let got = m.read_obj::<u8>(p * page).unwrap();
        if let Some(w) = want {
            assert_eq!(got, w, "page {p}");
        }
    }
    server.wait_populated(TIMEOUT).unwrap();
    assert_eq!(dirty_set(&server.dirty_pages().unwrap(), page), vec![7]);
    assert!(server.dirty_pages().unwrap().is_empty());
    write_pages(&m, page, &[3, 4, 10, 255]);
    assert_eq!(
        dirty_set(&server.dirty_pages().unwrap(), page),
        vec![3, 4, 10, 255]
    );
    assert!(server.dirty_pages().unwrap().is_empty());
    write_pages(&m, page, &[4]);
    assert_eq!(dirty_set(&server.dirty_pages().unwrap(), page), vec![4]);
    // The data written is there, the rest is the image's.
    for p in 0..pages {
        let want = if [3, 4, 7, 10, 255].contains(&p) {
            0xab
        } else {
            byte_of(p)
        };
        assert_eq!(m.read_obj::<u8>(p * page + 9).unwrap(), want, "page {p}");
    }
    server.shutdown().unwrap()
}

#[test]
fn dirty_pages_with_wp_async() {
    let uffd = match UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::WP_ASYNC)
        .create()
    {
        Ok(uffd) => uffd,
        Err(e) => return common::kernel::assert_lacks(FeatureFlags::WP_ASYNC, &e),
    };
    let stats = dirty_tracking_round_trip(uffd);
    assert_eq!(stats.wp_faults, 0, "{stats:?}");
}

#[test]
fn dirty_pages_with_write_protect_faults() {
    let stats = dirty_tracking_round_trip(user_uffd());
    // Each first write after a scan faulted once (page 7 was written on its missing fault).
    assert_eq!(stats.wp_faults, 5, "{stats:?}");
}

#[test]
fn dirty_pages_needs_tracking() {
    let page = ps();
    let m = Arc::new(MemoryMapping::new_private(4 * page).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(m, Arc::new(MemorySource::new(image(4, page)))))
        .start(user_uffd())
        .unwrap();
    assert!(matches!(server.dirty_pages(), Err(ServeError::Config(_))));
}

/// The "VMM" of [`serving_another_process_until_it_exits`], between `fork` and `_exit`: only
/// raw system calls and no allocation. Creates a userfaultfd, registers `pages` pages at
/// `addr` (mapped by the parent before the fork, so the address is known to both), sends the
/// fd, waits for the go byte, reads one byte of every page and checks it, then exits: 0 when
/// every byte matched.
fn vmm_child(sock: i32, addr: usize, pages: usize, page: usize) -> i32 {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | userfaultfd::sys::UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd(2) takes one integer and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
    if fd < 0 {
        return 10;
    }
    let mut api = userfaultfd::sys::uffdio_api {
        api: userfaultfd::sys::UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: a live uffdio_api for UFFDIO_API.
    if unsafe { libc::ioctl(fd, userfaultfd::sys::UFFDIO_API as _, &mut api) } != 0 {
        return 11;
    }
    let mut reg = userfaultfd::sys::uffdio_register {
        range: userfaultfd::sys::uffdio_range {
            start: addr as u64,
            len: (pages * page) as u64,
        },
        mode: userfaultfd::sys::UFFDIO_REGISTER_MODE_MISSING
            | userfaultfd::sys::UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: a live uffdio_register over this child's copy of the parent's mapping.
    if unsafe { libc::ioctl(fd, userfaultfd::sys::UFFDIO_REGISTER as _, &mut reg) } != 0 {
        return 12;
    }
    if !common::send_fd(sock, fd) {
        return 13;
    }
    let mut go = 0u8;
    // SAFETY: reads one byte into `go`.
    if unsafe { libc::read(sock, (&mut go as *mut u8).cast(), 1) } != 1 {
        return 14;
    }
    for p in 0..pages {
        // SAFETY: the page is mapped in this child; the read blocks until the server fills it.
        let v = unsafe { std::ptr::read_volatile((addr + p * page) as *const u8) };
        if v != byte_of(p) {
            return 20;
        }
    }
    // Two writes for the server's dirty tracking (write-protect faults it resolves).
    for p in [3, 7] {
        // SAFETY: as above; the write waits until the server unprotects the page.
        unsafe { std::ptr::write_volatile((addr + p * page) as *mut u8, 0xee) };
    }
    0
}

#[test]
fn serving_another_process_until_it_exits() {
    let page = ps();
    let pages = 64;
    // Mapped before the fork: the child's copy is the "guest memory" at a known address.
    let guest = Map::anon(pages * page);
    let mut socks = [0i32; 2];
    // SAFETY: `socks` has room for the two fds.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            socks.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    let (addr, csock) = (guest.addr(), socks[1]);
    // SAFETY: the child makes only raw system calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = vmm_child(csock, addr, pages, page);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: our end of the pair, now owned here; the child's end is closed in this process.
    let sock = unsafe { OwnedFd::from_raw_fd(socks[0]) };
    // SAFETY: closes our copy of the child's end.
    unsafe { libc::close(socks[1]) };
    let fd = common::recv_fd(sock.as_raw_fd()).expect("the child's uffd");
    let uffd = userfaultfd::Uffd::try_from(fd).unwrap();
    let src: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(pages, page)));
    // SAFETY: the range is the child's memory (its copy of `guest`), which the child asked us
    // to define; nothing in this process is written.
    let region =
        unsafe { Region::from_raw_parts(addr as *mut libc::c_void, pages * page, page, src) };
    let server = ServerBuilder::new()
        .region(region)
        .register(false)
        .background_threads(0)
        .monitored_process(pid)
        .track_dirty(true)
        .start(uffd)
        .unwrap();
    // SAFETY: writes the go byte from a live buffer.
    let sent = unsafe { libc::write(sock.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    assert_eq!(sent, 1);
    let why = server
        .wait_halted(TIMEOUT)
        .expect("the server noticed the exit");
    assert!(why.contains("exited"), "{why}");
    let mut status = 0;
    // SAFETY: reaps our own child, which has exited (the server saw its pidfd).
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    // The process is gone, but the pages it wrote are the server's own record.
    let dirty = server.dirty_pages().unwrap();
    assert_eq!(dirty_set(&dirty, page), vec![3, 7]);
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    assert_eq!(stats.wp_faults, 2, "{stats:?}");
    drop(guest);
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

#[test]
fn a_forked_child_is_served_through_on_fork() {
    if !test_kit::privilege::require(test_kit::privilege::Need::CapSysPtrace) {
        return;
    }
    let page = ps();
    let pages = 64;
    let uffd = match UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_FORK)
        .create()
    {
        Ok(u) => u,
        Err(e) => {
            test_kit::report::skip(format!("EVENT_FORK refused: {e}"));
            return;
        }
    };
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let src: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(pages, page)));
    let children: Arc<Mutex<Vec<Server>>> = Arc::new(Mutex::new(Vec::new()));
    let (addr, len) = (m.as_ptr() as usize, pages * page);
    let server = {
        let children = Arc::clone(&children);
        let src = Arc::clone(&src);
        ServerBuilder::new()
            .region(Region::new(m.clone(), src.clone()))
            .background_threads(0)
            .prefetch(0)
            .on_fork(move |child_uffd| {
                // The child's copy of the region, served by a server of its own.
                // SAFETY: the range is the child's copy of `m`, which its uffd covers.
                let region = unsafe {
                    Region::from_raw_parts(addr as *mut libc::c_void, len, page, src.clone())
                };
                let s = ServerBuilder::new()
                    .region(region)
                    .register(false)
                    .background_threads(0)
                    .start(child_uffd)
                    .expect("child server");
                children.lock().unwrap().push(s);
            })
            .start(uffd)
            .unwrap()
    };
    // Page 0 is served in the parent before the fork; the child sees it (copied by fork) and
    // faults on the others, served through its own uffd.
    assert_eq!(m.read_obj::<u8>(0).unwrap(), byte_of(0));
    // SAFETY: the child only performs volatile reads and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut code = 0;
        for p in 0..pages {
            // SAFETY: the page is mapped in the child (a copy of our address space).
            let v = unsafe { std::ptr::read_volatile((addr + p * page) as *const u8) };
            if v != byte_of(p) {
                code = 1;
            }
        }
        // SAFETY: ends the child without running destructors.
        unsafe { libc::_exit(code) };
    }
    let status = wait_child_bounded(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    // The child server serves faults from the moment its threads start, which can be before
    // the callback that started it has stored it.
    common::wait_until("the child server to be stored", || {
        children.lock().unwrap().len() == 1
    });
    let kids = std::mem::take(&mut *children.lock().unwrap());
    let child_stats = kids.into_iter().next().unwrap().shutdown().unwrap();
    // Page 0 was already there (copied by fork: EEXIST, counted once); the rest was served.
    assert_eq!(child_stats.pages_present(), pages as u64, "{child_stats:?}");
    assert!(child_stats.demand_faults >= 1, "{child_stats:?}");
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.events, 1, "{stats:?}");
}

/// Waits for child `pid` through a pidfd, at most [`TIMEOUT`] (then kills it and fails).
fn wait_child_bounded(pid: libc::pid_t) -> i32 {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
    // SAFETY: a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if common::poll_in(&fd, common::TIMEOUT_MS) == 0 {
        // SAFETY: kills our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaps our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn a_page_dropped_without_a_remove_event_is_served_again_not_spun_on() {
    let page = ps();
    let pages = 64;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    // No EVENT_REMOVE: the server cannot learn of the drop below.
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .start(user_uffd())
        .unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    verify(&m, page);
    dontneed(&m, 5 * page, 2 * page);
    // The next touches fault on pages the server thinks present: they get what the kernel
    // gives a dropped anonymous page (zeros), and return (a thread that only woke them would
    // fault forever).
    let (tx, rx) = mpsc::channel();
    let mm = Arc::clone(&m);
    thread::spawn(move || {
        let got = [
            mm.read_obj::<u8>(5 * page).unwrap(),
            mm.read_obj::<u8>(6 * page).unwrap(),
        ];
        let _ = tx.send(got);
    });
    assert_eq!(
        rx.recv_timeout(TIMEOUT).expect("the touch returned"),
        [0, 0]
    );
    assert_eq!(m.read_obj::<u8>(7 * page).unwrap(), byte_of(7));
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_dropped, 2, "{stats:?}");
}
