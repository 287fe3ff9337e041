//! The fault-handling runtime (`userfaultfd::serve`) when things go wrong: a failing source under
//! each failure policy (poison, zero fill, stop), and shutdown with faults in flight. Every wait
//! is bounded.

mod common;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use common::serving::{anon, byte_of, image, user_uffd, Gated};
use common::{ps, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{
    FailurePolicy, MemorySource, PageSource, Region, ServeError, Server, ServerBuilder,
};
use userfaultfd::{FeatureFlags, UffdBuilder};

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

/// The pages of the region the failure tests serve.
const PAGES: usize = 64;

/// A mapping of [`PAGES`] pages served, with no prefetch, from a source whose page 9 fails, by
/// the server `configure` completes; and the messages of the errors that server reports.
fn serve_failing(
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> (Arc<MemoryMapping>, Server, Arc<Mutex<Vec<String>>>) {
    let page = ps();
    let m = anon(PAGES);
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let builder = ServerBuilder::new()
        .region(Region::new(m.clone(), failing(PAGES, page, 9)))
        .prefetch(0)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()));
    let server = configure(builder).start(user_uffd()).unwrap();
    (m, server, errors)
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
    let (m, server, errors) = serve_failing(|b| b.background_threads(0));
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
    let (m, server, errors) = serve_failing(|b| b.failure_policy(FailurePolicy::ZeroFill));
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
    for p in (0..PAGES).filter(|&p| p != 9) {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
}

#[test]
fn stop_policy_unregisters_and_says_why() {
    let page = ps();
    let (m, server, _) =
        serve_failing(|b| b.background_threads(0).failure_policy(FailurePolicy::Stop));
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

#[test]
fn shutdown_with_a_fault_in_flight_releases_the_faulting_thread() {
    let page = ps();
    let pages = 16;
    let m = anon(pages);
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
    let m = anon(pages);
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
