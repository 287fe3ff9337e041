//! The async serve runtime (feature `tokio`) under stress of its controls: failure policies
//! (zeros, stop, `POISON`), a panicking source, the bound on fetches in flight and their
//! priorities, shutdown and drop with faults in flight, refused configurations.
//!
//! Sources here gate their reads on the test (a watch channel or a condvar, every wait
//! bounded by `TIMEOUT`), never on timing.

mod common;
mod tokio_common;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use common::{ps, TIMEOUT};
use mmap::MemoryMapping;
use tokio::sync::watch;
use tokio_common::*;
use userfaultfd::serve::{
    AsyncPageSource, AsyncRegion, AsyncServer, AsyncServerBuilder, FailurePolicy, PageSource,
    Region, ServeError, SourceFuture, WorkingSet,
};
use userfaultfd::{FeatureFlags, UffdBuilder};

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
    src.open.send_replace(true);
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    // (Counted once the copy returned, which may be after the toucher woke: checked here.)
    assert_eq!(stats.pages_demand, 1, "{stats:?}");
    assert_eq!(stats.pages_background, pages as u64 - 1, "{stats:?}");
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
    // The panic hook prints a symbolized backtrace before the unwind reaches the server's
    // catch: seconds under the emulated CPU of `cargo xtask vm-test` (seen: over 10 s). Still
    // bounded, so a real hang fails the test.
    let slow = TIMEOUT * 6;
    assert_eq!(
        touch(&m, 5).recv_timeout(slow).expect("the toucher hangs"),
        0
    );
    let why = server
        .wait_halted(slow)
        .await
        .expect("the server did not stop");
    assert!(why.contains("panicked on purpose"), "{why}");
    server.shutdown().await.unwrap();
}

/// `background_rate` holds over all background tasks together (four by default): at every
/// sample, the bytes copied are within the rate since the start plus one block. The test
/// thread samples; the tasks run on the runtime's workers.
#[test]
fn the_background_rate_limit_holds_over_every_task() {
    let pages = 2048; // 8 MiB
    let (rate, block) = (16u64 << 20, 1usize << 20);
    let m = anon(pages);
    let rt = common::serving::two_worker_runtime();
    let t0 = std::time::Instant::now();
    let server = {
        let _enter = rt.enter();
        AsyncServerBuilder::new()
            .region(AsyncRegion::new(m.clone(), Image::new(pages, ps(), None)))
            .background_chunk(block)
            .background_rate(rate)
            .start(user_uffd())
            .unwrap()
    };
    let samples = check_background_rate(
        &|d| server.wait_populated_blocking(d).is_ok(),
        &|| server.stats().pages_background,
        t0,
        (rate, block as u64),
        (pages * ps()) as u64,
    );
    assert!(samples > 2, "{samples} samples");
    rt.block_on(server.shutdown()).unwrap();
    verify(&m, ps());
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
        (
            AsyncServerBuilder::new()
                .region(region())
                .background_rate(0),
            "background_rate must be positive",
        ),
        (
            AsyncServerBuilder::new()
                .region(region())
                .exact_recording(true)
                .replay(WorkingSet::from_entries(vec![(0, 0)])),
            "cannot be combined with replay",
        ),
        (
            AsyncServerBuilder::new()
                .region(region())
                .replay(WorkingSet::from_entries(vec![(0, (4 * ps()) as u64)])),
            "is not a page of a served region",
        ),
        (
            // Above any pid_max the kernel allows (2^22): there is nothing to watch.
            AsyncServerBuilder::new()
                .region(region())
                .monitored_process(i32::MAX),
            "cannot watch process",
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
