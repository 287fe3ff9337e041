//! `AsyncUffd` (feature `tokio`) on the running kernel: async reads of faults and events, the
//! batch form, the stream, cancellation safety, and the typed errors of a wrong setup.

mod common;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;

use common::{poll_in, ps, TIMEOUT, TIMEOUT_MS};
use futures_core::Stream;
use mmap::MemoryMapping;
use userfaultfd::{
    AsyncUffd, Error, Event, EventBuffer, FeatureFlags, RegisterMode, Uffd, UffdBuilder,
};

fn non_blocking() -> Uffd {
    UffdBuilder::new()
        .user_mode_only(true)
        .non_blocking(true)
        .create()
        .unwrap()
}

/// `pages` pages registered MISSING with `uffd`.
fn registered(uffd: &AsyncUffd, pages: usize) -> Arc<MemoryMapping> {
    let m = Arc::new(MemoryMapping::new_private(pages * ps()).unwrap());
    uffd.get_ref()
        .register_region(&*m, RegisterMode::MISSING)
        .unwrap();
    m
}

/// A thread reading byte `off` of `m` (it blocks until the page is served).
fn toucher(m: &Arc<MemoryMapping>, off: usize) -> thread::JoinHandle<u8> {
    let m = Arc::clone(m);
    thread::spawn(move || m.read_obj::<u8>(off).unwrap())
}

/// Fills page `index` of `m` with `index + 1`, waking its waiters (an `EEXIST` is a fault
/// delivered twice: wake).
fn serve_page(uffd: &AsyncUffd, m: &MemoryMapping, index: usize) {
    let page = ps();
    match uffd
        .get_ref()
        .copy_region(m, index * page, &vec![index as u8 + 1; page], true)
    {
        Ok(_) => {}
        Err(Error::AlreadyMapped { .. }) => uffd
            .get_ref()
            .wake(m.as_ptr().wrapping_add(index * page).cast(), page)
            .unwrap(),
        Err(e) => panic!("{e}"),
    }
}

fn page_of(m: &MemoryMapping, ev: &Event) -> usize {
    match ev {
        Event::Pagefault { addr, .. } => (*addr as usize - m.as_ptr() as usize) / ps(),
        other => panic!("expected a page fault, got {other:?}"),
    }
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not complete within {TIMEOUT:?}"))
}

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

#[test]
fn a_blocking_fd_is_a_typed_error_that_says_how_to_fix_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _enter = rt.enter();
    let blocking = UffdBuilder::new().user_mode_only(true).create().unwrap();
    // The kernel's reason: poll(2) on a blocking userfaultfd says POLLERR, never POLLIN.
    assert_ne!(poll_in(&blocking, 0) & libc::POLLERR, 0);
    let (err, back) = AsyncUffd::try_new(blocking).unwrap_err();
    assert!(matches!(err, Error::Blocking { .. }), "{err:?}");
    assert!(err.to_string().contains("non_blocking(true)"), "{err}");
    // The fd comes back, still usable.
    assert!(back.is_some());
    let err =
        AsyncUffd::new(UffdBuilder::new().user_mode_only(true).create().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Blocking { .. }), "{err:?}");
}

#[test]
fn outside_a_runtime_or_without_io_is_a_typed_error() {
    let (err, back) = AsyncUffd::try_new(non_blocking()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    assert!(back.is_some());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let err = AsyncUffd::new(non_blocking()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("enable_io"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_event_serves_a_fault() {
    fn sendable<T: Send>(t: T) -> T {
        t
    }
    let uffd = AsyncUffd::new(non_blocking()).unwrap();
    let m = registered(&uffd, 4);
    let t = toucher(&m, 2 * ps() + 9);
    // The read's future may move between threads (a multi-thread runtime's tasks).
    let ev = bounded("read_event", sendable(uffd.read_event()))
        .await
        .unwrap();
    assert_eq!(page_of(&m, &ev), 2);
    serve_page(&uffd, &m, 2);
    assert_eq!(t.join().unwrap(), 3);
    // Taken back: an ordinary (non-blocking) Uffd, still registered.
    let uffd = uffd.into_inner();
    assert!(uffd.read_event().unwrap().is_none());
    uffd.unregister(m.as_ptr().cast(), m.size()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_events_reads_batches_and_pages_are_counted_not_messages() {
    let uffd = AsyncUffd::new(non_blocking()).unwrap();
    let pages = 8;
    let m = registered(&uffd, pages);
    // Two threads per page: a page may be reported twice.
    let threads: Vec<_> = (0..2 * pages)
        .map(|i| toucher(&m, (i % pages) * ps() + i))
        .collect();
    let mut buf = EventBuffer::new(4);
    let mut served = vec![false; pages];
    let mut batches = 0;
    while served.contains(&false) {
        let events = bounded("read_events", uffd.read_events(&mut buf))
            .await
            .unwrap();
        assert!(events.len() >= 1 && events.len() <= 4);
        batches += 1;
        let faulted: Vec<usize> = events.map(|e| page_of(&m, &e.unwrap())).collect();
        for p in faulted {
            serve_page(&uffd, &m, p);
            served[p] = true;
        }
    }
    assert!(batches >= 2, "8 pages cannot come in one batch of 4");
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), (i % pages) as u8 + 1);
    }
    let mut empty = EventBuffer::new(0);
    assert!(matches!(
        uffd.read_events(&mut empty).await,
        Err(Error::InvalidArgument { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_yields_faults() {
    let uffd = AsyncUffd::new(non_blocking()).unwrap();
    let pages = 3;
    let m = registered(&uffd, pages);
    let threads: Vec<_> = (0..pages).map(|p| toucher(&m, p * ps())).collect();
    let mut events = uffd.events();
    let mut served = vec![false; pages];
    while served.contains(&false) {
        let next = poll_fn(|cx| Pin::new(&mut events).poll_next(cx));
        let ev = bounded("the stream", next)
            .await
            .expect("the stream never ends");
        let p = page_of(&m, &ev.unwrap());
        serve_page(&uffd, &m, p);
        served[p] = true;
    }
    for (p, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), p as u8 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_cooperative_events_are_read_too() {
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .non_blocking(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap();
    let uffd = AsyncUffd::new(uffd).unwrap();
    let m = registered(&uffd, 4);
    let start = m.as_ptr() as usize + ps();
    // MADV_DONTNEED blocks until the REMOVE event is read: from a thread of its own.
    let advisor = {
        let m = Arc::clone(&m);
        thread::spawn(move || {
            // SAFETY: a range inside `m`, which is only reached through volatile accessors.
            unsafe { libc::madvise(m.as_ptr().add(ps()).cast(), 2 * ps(), libc::MADV_DONTNEED) }
        })
    };
    match bounded("read_event", uffd.read_event()).await.unwrap() {
        Event::Remove { start: s, end } => {
            assert_eq!((s as usize, end as usize), (start, start + 2 * ps()));
        }
        other => panic!("expected REMOVE, got {other:?}"),
    }
    assert_eq!(advisor.join().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_dropped_while_pending_loses_no_event() {
    let uffd = AsyncUffd::new(non_blocking()).unwrap();
    let m = registered(&uffd, 2);

    // 1. Dropped before any fault: it had registered for readiness, nothing more.
    let mut fut = Box::pin(uffd.read_event());
    assert!(poll_once(&mut fut).is_pending());
    drop(fut);
    let t0 = toucher(&m, 0);
    let ev = bounded("read_event", uffd.read_event()).await.unwrap();
    assert_eq!(page_of(&m, &ev), 0);
    serve_page(&uffd, &m, 0);
    assert_eq!(t0.join().unwrap(), 1);

    // 2. Pending when the fault arrives, and dropped after the fd became readable but before
    //    being polled again: the message is still in the kernel, for the next call.
    let mut fut = Box::pin(uffd.read_event());
    assert!(poll_once(&mut fut).is_pending());
    let t1 = toucher(&m, ps());
    assert_ne!(
        poll_in(&uffd, TIMEOUT_MS) & libc::POLLIN,
        0,
        "no fault within {TIMEOUT:?}"
    );
    drop(fut);
    let ev = bounded("read_event", uffd.read_event()).await.unwrap();
    assert_eq!(page_of(&m, &ev), 1);
    serve_page(&uffd, &m, 1);
    assert_eq!(t1.join().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_read_loses_no_event() {
    let uffd = AsyncUffd::new(non_blocking()).unwrap();
    let m = registered(&uffd, 1);
    // tokio's own cancellation: a timeout (zero: it fires on its first poll) drops the read.
    let r = tokio::time::timeout(std::time::Duration::ZERO, uffd.read_event()).await;
    assert!(
        r.is_err(),
        "nothing was pending, yet the read returned {r:?}"
    );
    let t = toucher(&m, 5);
    let ev = bounded("read_event", uffd.read_event()).await.unwrap();
    assert_eq!(page_of(&m, &ev), 0);
    serve_page(&uffd, &m, 0);
    assert_eq!(t.join().unwrap(), 1);
}
