//! The async serve runtime (feature `tokio`) on the running kernel: anonymous, hugetlb and
//! shmem memory served byte for byte to many threads, source chunks, failure policies, the
//! fetch bound and its priorities, events, shutdown with faults in flight, and synchronous
//! sources through the blocking-pool adapter.
//!
//! The tests' own waits block their test thread (never a runtime worker: `#[tokio::test]`
//! runs its body on the test thread), each bounded by `TIMEOUT`.

mod common;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;

use common::{ps, Map, TIMEOUT};
use mmap::MemoryMapping;
use tokio::sync::watch;
use userfaultfd::serve::{
    AsyncPageSource, AsyncRegion, AsyncServer, AsyncServerBuilder, BlockingSource, FailurePolicy,
    MemorySource, PageSource, Region, ServeError, SourceFuture,
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

fn user_uffd() -> userfaultfd::Uffd {
    UffdBuilder::new().user_mode_only(true).create().unwrap()
}

fn anon(pages: usize) -> Arc<MemoryMapping> {
    Arc::new(MemoryMapping::new_private(pages * ps()).unwrap())
}

/// Checks three bytes of every page of `m` against [`byte_of`].
fn verify(m: &MemoryMapping, page: usize) {
    for p in 0..m.size() / page {
        for off in [0, page / 2, page - 1] {
            assert_eq!(
                m.read_obj::<u8>(p * page + off).unwrap(),
                byte_of(p),
                "page {p}+{off}"
            );
        }
    }
}

/// Touches every page of `m` from `threads` threads, each in its own order, checking each
/// byte; fails the test after `TIMEOUT`.
fn touch_all(m: &Arc<MemoryMapping>, page: usize, threads: usize) {
    touch_all_from(m, page, threads, 0);
}

/// [`touch_all`] for a region served from page `shift` of the image on.
fn touch_all_from(m: &Arc<MemoryMapping>, page: usize, threads: usize, shift: usize) {
    let pages = m.size() / page;
    let (tx, rx) = mpsc::channel();
    for t in 0..threads {
        let (m, tx) = (Arc::clone(m), tx.clone());
        thread::spawn(move || {
            let stride = [1, 3, 5, 7, 11, 13, 17, 19][t % 8];
            for i in 0..pages {
                let p = (i * stride + t) % pages;
                let want = byte_of(p + shift);
                assert_eq!(m.read_obj::<u8>(p * page + 1).unwrap(), want, "page {p}");
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..threads {
        rx.recv_timeout(TIMEOUT)
            .expect("a touching thread is stuck");
    }
}

/// A thread reading byte 0 of page `p` of `m`; its result arrives on the channel.
fn touch(m: &Arc<MemoryMapping>, p: usize) -> mpsc::Receiver<u8> {
    let (tx, rx) = mpsc::channel();
    let m = Arc::clone(m);
    thread::spawn(move || tx.send(m.read_obj::<u8>(p * ps()).unwrap()).unwrap());
    rx
}

/// An async source over an image that records every read (offset, length), optionally
/// with a chunk size.
struct Image {
    bytes: Vec<u8>,
    chunk: Option<u64>,
    reads: Mutex<Vec<(u64, usize)>>,
}

impl Image {
    fn new(pages: usize, page: usize, chunk: Option<u64>) -> Arc<Image> {
        Arc::new(Image {
            bytes: image(pages, page),
            chunk,
            reads: Mutex::new(Vec::new()),
        })
    }
}

fn copy_out(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    MemorySource::new(bytes).read_at(offset, buf)
}

impl AsyncPageSource for Image {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.reads.lock().unwrap().push((offset, buf.len()));
            // A real request would be awaited here: let others run meanwhile.
            tokio::task::yield_now().await;
            copy_out(&self.bytes, offset, buf)
        })
    }
    fn chunk_size(&self) -> Option<u64> {
        self.chunk
    }
}

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
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
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
        let (first, last) = (off / chunk, (off + len as u64 - 1) / chunk);
        // A background block may span several whole chunks, but never part of one next to
        // another read's part: each read starts at a page of its first chunk and ends in its
        // last, and every chunk is read by at most one request.
        for c in first..=last {
            *chunks_read.entry(c).or_insert(0) += 1;
        }
    }
    let twice: Vec<_> = chunks_read.iter().filter(|(_, &n)| n > 1).collect();
    // Claims of one chunk by two fetches at the same instant can split it; allow that to be
    // rare, never the rule.
    assert!(
        twice.len() * 10 <= chunks_read.len(),
        "chunks read more than once: {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hugetlb_regions_are_served_in_huge_pages() {
    let huge = 2 << 20;
    let pages = 4;
    let free = mmap::HugePageSize::Size2MiB.free_pages().unwrap_or(0);
    if free < pages as u64 + 2 {
        test_kit::report::skip(format!(
            "needs {} free 2 MiB huge pages, {free} free (sysctl vm.nr_hugepages=128)",
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
            test_kit::report::skip(format!("cannot map hugetlb memory: {e}"));
            return;
        }
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

/// An async source that fails for one page.
struct Failing {
    bytes: Vec<u8>,
    bad: std::ops::Range<u64>,
}

impl AsyncPageSource for Failing {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            if offset < self.bad.end && self.bad.start < offset + buf.len() as u64 {
                return Err(io::Error::other("the bucket is on fire"));
            }
            copy_out(&self.bytes, offset, buf)
        })
    }
}

fn failing(pages: usize, bad_page: usize) -> Arc<Failing> {
    let page = ps();
    Arc::new(Failing {
        bytes: image(pages, page),
        bad: (bad_page * page) as u64..((bad_page + 1) * page) as u64,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_fill_policy_costs_one_page_and_reports() {
    let pages = 64;
    let m = anon(pages);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), failing(pages, 9)))
        .failure_policy(FailurePolicy::ZeroFill)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .start(user_uffd())
        .unwrap();
    assert_eq!(touch(&m, 9).recv_timeout(TIMEOUT).unwrap(), 0);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    // The failed page was narrowed down: only it is zero-filled.
    assert_eq!(stats.pages_failed, 1, "{stats:?}");
    assert!(stats.source_errors >= 1, "{stats:?}");
    let errors = errors.lock().unwrap();
    assert!(errors.iter().any(|e| e.contains("on fire")), "{errors:?}");
    for p in (0..pages).filter(|&p| p != 9) {
        assert_eq!(m.read_obj::<u8>(p * ps()).unwrap(), byte_of(p), "page {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_policy_unregisters_and_says_why() {
    let pages = 64;
    let m = anon(pages);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), failing(pages, 9)))
        .prefetch(0)
        .background_fetches(0)
        .failure_policy(FailurePolicy::Stop)
        .start(user_uffd())
        .unwrap();
    // Released to the kernel's default: a zero page, never a hang.
    assert_eq!(touch(&m, 9).recv_timeout(TIMEOUT).unwrap(), 0);
    match server.wait_populated(TIMEOUT).await {
        Err(ServeError::Stopped(why)) => assert!(why.contains("Stop"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(server.wait_halted(TIMEOUT).await.is_some());
    assert_eq!(m.read_obj::<u8>(20 * ps()).unwrap(), 0, "still registered");
    server.shutdown().await.unwrap();
}

const CHILD_ENV: &str = "UFFD_TOKIO_SERVE_CHILD";

#[test]
fn poison_policy_raises_sigbus_in_the_toucher() {
    const NAME: &str = "poison_policy_raises_sigbus_in_the_toucher";
    let probed = UffdBuilder::probe_features().unwrap();
    if !probed.contains(FeatureFlags::POISON) {
        test_kit::report::skip("no UFFDIO_POISON on this kernel (Linux 6.6)");
        return;
    }
    if !common::is_child(CHILD_ENV, NAME) {
        let (status, out) = common::run_child(CHILD_ENV, NAME);
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let pages = 16;
    let m = anon(pages);
    let _server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), failing(pages, 9)))
        .prefetch(0)
        .background_fetches(0)
        .start(user_uffd())
        .unwrap();
    assert_eq!(m.read_obj::<u8>(8 * ps()).unwrap(), byte_of(8));
    let _ = m.read_obj::<u8>(9 * ps());
    println!("CHILD READ A PAGE WHOSE SOURCE FAILED");
    std::process::exit(3);
}

/// Reads wait (bounded) until `target` of them are in flight at once; records the peak.
struct Concurrent {
    bytes: Vec<u8>,
    target: usize,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    reached: watch::Sender<bool>,
}

impl AsyncPageSource for Concurrent {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            self.peak.fetch_max(n, Ordering::AcqRel);
            if n >= self.target {
                self.reached.send_replace(true);
            }
            let mut rx = self.reached.subscribe();
            let met = tokio::time::timeout(TIMEOUT, rx.wait_for(|r| *r))
                .await
                .is_ok();
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if !met {
                return Err(io::Error::other("the reads never overlapped"));
            }
            copy_out(&self.bytes, offset, buf)
        })
    }
}

/// The same for a synchronous source (read through `BlockingSource`), with a condvar.
struct ConcurrentSync {
    bytes: Vec<u8>,
    target: usize,
    state: Mutex<(usize, usize)>, // (in flight, peak)
    cv: Condvar,
}

impl PageSource for ConcurrentSync {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut st = self.state.lock().unwrap();
        st.0 += 1;
        st.1 = st.1.max(st.0);
        self.cv.notify_all();
        let (mut st, res) = self
            .cv
            .wait_timeout_while(st, TIMEOUT, |st| st.1 < self.target)
            .unwrap();
        st.0 -= 1;
        drop(st);
        if res.timed_out() {
            return Err(io::Error::other("the reads never overlapped"));
        }
        copy_out(&self.bytes, offset, buf)
    }
}

/// Eight threads fault on eight pages of a server allowed `max` fetches: reads wait for
/// each other, so `max` of them are in flight at once, never more. Returns the statistics.
async fn eight_faults(
    region: AsyncRegion,
    m: &Arc<MemoryMapping>,
    max: usize,
) -> userfaultfd::serve::Stats {
    let server = AsyncServerBuilder::new()
        .region(region)
        .prefetch(0)
        .background_fetches(0)
        .max_fetches(max)
        .failure_policy(FailurePolicy::ZeroFill)
        .start(user_uffd())
        .unwrap();
    let rxs: Vec<_> = (0..8).map(|i| (i * 4, touch(m, i * 4))).collect();
    for (p, rx) in rxs {
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), byte_of(p), "page {p}");
    }
    let stats = server.shutdown().await.unwrap();
    assert_eq!(
        stats.source_errors, 0,
        "reads waited for overlap in vain: {stats:?}"
    );
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_overlap_up_to_the_bound_and_never_beyond() {
    let pages = 32;
    let m = anon(pages);
    let src = Arc::new(Concurrent {
        bytes: image(pages, ps()),
        target: 4,
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        reached: watch::Sender::new(false),
    });
    eight_faults(AsyncRegion::new(m.clone(), src.clone()), &m, 4).await;
    assert_eq!(
        src.peak.load(Ordering::Acquire),
        4,
        "the peak of reads in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_source_through_the_adapter_overlaps_its_reads_too() {
    let pages = 32;
    let m = anon(pages);
    let src = Arc::new(ConcurrentSync {
        bytes: image(pages, ps()),
        target: 3,
        state: Mutex::new((0, 0)),
        cv: Condvar::new(),
    });
    let region = AsyncRegion::from(Region::new(m.clone(), src.clone()));
    eight_faults(region, &m, 3).await;
    assert_eq!(
        src.state.lock().unwrap().1,
        3,
        "the peak of reads in flight"
    );
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

/// Reads below `below` wait (bounded) for the gate to open; each waiting read is counted in
/// `waiting` until it ends or its future is dropped.
struct Gated {
    bytes: Vec<u8>,
    below: u64,
    open: watch::Sender<bool>,
    waiting: watch::Sender<usize>,
}

/// Decrements `waiting` when a gated read ends or is abandoned.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl AsyncPageSource for Gated {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move {
            if offset < self.below {
                self.waiting.send_modify(|n| *n += 1);
                let _w = Waiting(&self.waiting);
                let mut open = self.open.subscribe();
                if tokio::time::timeout(TIMEOUT, open.wait_for(|o| *o))
                    .await
                    .is_err()
                {
                    return Err(io::Error::other("the gate never opened"));
                }
            }
            copy_out(&self.bytes, offset, buf)
        })
    }
}

fn gated(pages: usize, below_page: usize) -> Arc<Gated> {
    Arc::new(Gated {
        bytes: image(pages, ps()),
        below: (below_page * ps()) as u64,
        open: watch::Sender::new(false),
        waiting: watch::Sender::new(0),
    })
}

async fn until_waiting(src: &Gated, n: usize) {
    let mut rx = src.waiting.subscribe();
    tokio::time::timeout(TIMEOUT, rx.wait_for(|w| *w == n))
        .await
        .unwrap_or_else(|_| panic!("never {n} reads waiting at the gate"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demand_fault_is_served_while_background_reads_wait() {
    let (page, pages) = (ps(), 64);
    let m = anon(pages);
    // Background blocks of 16 pages; reads of the first 48 pages wait at the gate.
    let src = gated(pages, 48);
    let server: AsyncServer = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .prefetch(0)
        .background_chunk(16 * page)
        .background_fetches(2)
        .max_fetches(2)
        .start(user_uffd())
        .unwrap();
    // One background read holds the one slot background may take; the other background task
    // queues for it.
    until_waiting(&src, 1).await;
    assert_eq!(server.fetches_in_flight(), 1);
    // A fault takes the slot kept for demand and is served while the gate stays shut.
    assert_eq!(touch(&m, 60).recv_timeout(TIMEOUT).unwrap(), byte_of(60));
    assert_eq!(*src.waiting.borrow(), 1, "the background read still waits");
    assert_eq!(server.stats().pages_demand, 1);
    assert_eq!(server.stats().pages_background, 0);
    src.open.send_replace(true);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    verify(&m, page);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_faults_in_flight_releases_the_threads() {
    let pages = 16;
    let m = anon(pages);
    let src = gated(pages, pages);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .prefetch(0)
        .background_fetches(0)
        .start(user_uffd())
        .unwrap();
    let rxs: Vec<_> = [1, 2, 3].map(|p| touch(&m, p)).into();
    until_waiting(&src, 3).await;
    let stats = server.shutdown().await.unwrap();
    // The reads were abandoned (their futures dropped), and every thread came back with the
    // kernel's zero page: the unregistration released them.
    assert_eq!(*src.waiting.borrow(), 0);
    for rx in rxs {
        assert_eq!(
            rx.recv_timeout(TIMEOUT).expect("a faulting thread hangs"),
            0
        );
    }
    assert_eq!(stats.demand_faults, 3, "{stats:?}");
    assert_eq!(stats.pages_present(), 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_releases_waiting_threads() {
    let pages = 16;
    let m = anon(pages);
    let src = gated(pages, pages);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .start(user_uffd())
        .unwrap();
    let rx = touch(&m, 5);
    until_waiting(&src, 1).await;
    drop(server);
    assert_eq!(
        rx.recv_timeout(TIMEOUT).expect("a faulting thread hangs"),
        0
    );
    // The tasks end at their next poll: the gated read is abandoned.
    until_waiting(&src, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_pages_read_as_zeros_never_as_source_data() {
    let (page, pages) = (ps(), 256);
    let m = anon(pages);
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap();
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
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_UNMAP)
        .create()
        .unwrap();
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
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_REMAP)
        .create()
        .unwrap();
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

/// A source that panics on page 5.
struct Panicking(Vec<u8>);

impl AsyncPageSource for Panicking {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move {
            if offset == 5 * ps() as u64 {
                panic!("the source panicked on purpose");
            }
            copy_out(&self.0, offset, buf)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_source_stops_the_server_without_a_hang() {
    let pages = 16;
    let m = anon(pages);
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(
            m.clone(),
            Arc::new(Panicking(image(pages, ps()))),
        ))
        .prefetch(0)
        .background_fetches(0)
        .start(user_uffd())
        .unwrap();
    assert_eq!(touch(&m, 4).recv_timeout(TIMEOUT).unwrap(), byte_of(4));
    assert_eq!(
        touch(&m, 5)
            .recv_timeout(TIMEOUT)
            .expect("the toucher hangs"),
        0
    );
    let why = server
        .wait_halted(TIMEOUT)
        .await
        .expect("the server did not stop");
    assert!(why.contains("panicked on purpose"), "{why}");
    server.shutdown().await.unwrap();
}

#[test]
fn refused_configurations_are_typed_errors() {
    let m = anon(4);
    let region = || AsyncRegion::new(m.clone(), Image::new(4, ps(), None));
    // Outside a runtime.
    match AsyncServerBuilder::new()
        .region(region())
        .start(user_uffd())
    {
        Err(ServeError::Config(why)) => assert!(why.contains("tokio runtime"), "{why}"),
        other => panic!("{other:?}"),
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let cases: Vec<(AsyncServerBuilder, &str)> = vec![
        (AsyncServerBuilder::new(), "no region"),
        (
            AsyncServerBuilder::new().region(region()).max_fetches(0),
            "max_fetches",
        ),
        (
            AsyncServerBuilder::new()
                .region(region())
                .prefetch(3 * ps()),
            "power of two",
        ),
        (
            AsyncServerBuilder::new()
                .region(AsyncRegion::new(m.clone(), Image::new(2, ps(), None))),
            "past the source's end",
        ),
    ];
    for (builder, want) in cases {
        match builder.start(user_uffd()) {
            Err(ServeError::Config(why)) => assert!(why.contains(want), "{why} (want {want})"),
            other => panic!("{other:?} (want {want})"),
        }
    }
    // A runtime without timers.
    let bare = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _enter = bare.enter();
    match AsyncServerBuilder::new()
        .region(region())
        .start(user_uffd())
    {
        Err(ServeError::Config(why)) => assert!(why.contains("time driver"), "{why}"),
        other => panic!("{other:?}"),
    }
}
