//! What `userfaultfd::serve` does on a kernel that lacks a feature it would use, as its builder
//! documents: without `POISON` (before Linux 6.6) a failed source read takes the
//! `poison_fallback` policy (default `Stop`) instead of `Poison`; without `WP_ASYNC` (before
//! 6.7) dirty tracking works through synchronous write-protect faults. Each test runs its
//! fallback where the kernel lacks the feature; where it has it, the fallback cannot happen and
//! the test says so (skipped; `serve_failure.rs` and `serve_dirty.rs` cover the features
//! themselves).

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::{kernel, ps, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{
    FailurePolicy, MemorySource, PageSource, Region, ServeError, ServerBuilder,
};
use userfaultfd::{FeatureFlags, UffdBuilder};

fn byte_of(page: usize) -> u8 {
    (page * 5 + 1) as u8
}

/// A source of `pages` pages whose page `bad` cannot be read.
struct Failing {
    inner: MemorySource,
    bad: std::ops::Range<u64>,
}

impl PageSource for Failing {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset < self.bad.end && self.bad.start < offset + buf.len() as u64 {
            return Err(io::Error::other("the source lost this page"));
        }
        self.inner.read_at(offset, buf)
    }
}

fn failing(pages: usize, page: usize, bad: usize) -> Arc<Failing> {
    let image: Vec<u8> = (0..pages * page).map(|i| byte_of(i / page)).collect();
    Arc::new(Failing {
        inner: MemorySource::new(image),
        bad: (bad * page) as u64..((bad + 1) * page) as u64,
    })
}

fn user_uffd() -> userfaultfd::Uffd {
    UffdBuilder::new().user_mode_only(true).create().unwrap()
}

/// Skips (and says so) where the kernel has `feature`: then there is no fallback to show.
fn kernel_lacks(feature: FeatureFlags) -> bool {
    let has = UffdBuilder::probe_features().unwrap().contains(feature);
    if has {
        test_kit::report::skip(format!(
            "the kernel has {} (Linux {}): the fallback runs only on older kernels \
             (`cargo xtask vm-test` runs Linux 6.1)",
            kernel::name(feature),
            feature.since().unwrap()
        ));
    }
    !has
}

#[test]
fn without_poison_the_poison_policy_takes_the_fallback_policy() {
    if !kernel_lacks(FeatureFlags::POISON) {
        return;
    }
    let page = ps();
    let pages = 32;
    // The default policy is Poison; the fallback chosen here is ZeroFill.
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), failing(pages, page, 5)))
        .prefetch(0)
        .poison_fallback(FailurePolicy::ZeroFill)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .start(user_uffd())
        .unwrap();
    // No SIGBUS: the page the source lost reads as zeros, and serving goes on.
    assert_eq!(m.read_obj::<u8>(5 * page).unwrap(), 0);
    server.wait_populated(TIMEOUT).unwrap();
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_failed, 1, "{stats:?}");
    assert!(
        errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("lost this page")),
        "{errors:?}"
    );
    for p in (0..pages).filter(|&p| p != 5) {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }

    // The default fallback, Stop: the server unregisters and says why.
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), failing(pages, page, 5)))
        .prefetch(0)
        .background_threads(0)
        .start(user_uffd())
        .unwrap();
    assert_eq!(m.read_obj::<u8>(5 * page).unwrap(), 0);
    match server.wait_populated(TIMEOUT) {
        Err(ServeError::Stopped(why)) => assert!(why.contains("Stop"), "{why}"),
        other => panic!("expected the server to stop, got {other:?}"),
    }
    server.shutdown().unwrap();
}

#[test]
fn without_wp_async_dirty_tracking_uses_write_protect_faults() {
    if !kernel_lacks(FeatureFlags::WP_ASYNC) {
        return;
    }
    // The documented pattern: ask for WP_ASYNC, and where the kernel lacks it (the typed
    // error names it), serve with a plain uffd.
    let e = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::WP_ASYNC)
        .create()
        .unwrap_err();
    assert!(
        matches!(e, userfaultfd::Error::UnsupportedFeatures { missing, .. }
            if missing == FeatureFlags::WP_ASYNC),
        "{e:?}"
    );
    assert!(e.to_string().contains("WP_ASYNC (Linux 6.7)"), "{e}");
    let page = ps();
    let pages = 64;
    let m = Arc::new(MemoryMapping::new_private(pages * page).unwrap());
    let image: Vec<u8> = (0..pages * page).map(|i| byte_of(i / page)).collect();
    let server = ServerBuilder::new()
        .region(Region::new(m.clone(), Arc::new(MemorySource::new(image))))
        .prefetch(0)
        .track_dirty(true)
        .start(user_uffd())
        .unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    assert!(server.dirty_pages().unwrap().is_empty());
    for p in [2, 3, 40] {
        m.write_obj(0xabu8, p * page + 1).unwrap();
    }
    let dirty: Vec<usize> = server
        .dirty_pages()
        .unwrap()
        .iter()
        .flat_map(|d| d.offset / page..(d.offset + d.len) / page)
        .collect();
    assert_eq!(dirty, [2, 3, 40]);
    let stats = server.shutdown().unwrap();
    assert!(stats.wp_faults >= 3, "{stats:?}");
}
