//! Dirty-page tracking of `userfaultfd::serve` (`track_dirty`, `dirty_pages`), on the threaded
//! server and (feature `tokio`) the async one: with `WP_ASYNC` and with synchronous
//! write-protect faults, and refused without tracking. Every wait is bounded.

mod common;

use std::sync::Arc;

use common::serving::{anon, byte_of, dirty_set, image, image_region, user_uffd};
use common::{ps, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{DirtyRange, MemorySource, Region, ServeError, ServerBuilder, Stats};
use userfaultfd::FeatureFlags;

/// Writes one byte into each page of `pages` of `m`.
fn write_pages(m: &MemoryMapping, page: usize, pages: &[usize]) {
    for &p in pages {
        m.write_obj(0xabu8, p * page + 9).unwrap();
    }
}

/// Pages of the round trip's region.
const PAGES: usize = 256;

/// Writes and reads `m` (served from the image, prefetch and background fill off, dirty
/// tracking on) and checks what `dirty` (a server's `dirty_pages`) reports at each step;
/// `populated` waits until every page is present.
fn dirty_tracking_round_trip(
    m: &MemoryMapping,
    dirty: &dyn Fn() -> Vec<DirtyRange>,
    populated: &dyn Fn(),
) {
    let page = ps();
    // A write to a missing page: served writable and reported.
    write_pages(m, page, &[7]);
    // Reads populate without dirtying.
    for p in 0..PAGES {
        let want = if p == 7 { None } else { Some(byte_of(p)) };
        let got = m.read_obj::<u8>(p * page).unwrap();
        if let Some(w) = want {
            assert_eq!(got, w, "page {p}");
        }
    }
    populated();
    assert_eq!(dirty_set(&dirty(), page), vec![7]);
    assert!(dirty().is_empty());
    write_pages(m, page, &[3, 4, 10, 255]);
    assert_eq!(dirty_set(&dirty(), page), vec![3, 4, 10, 255]);
    assert!(dirty().is_empty());
    write_pages(m, page, &[4]);
    assert_eq!(dirty_set(&dirty(), page), vec![4]);
    // The data written is there, the rest is the image's.
    for p in 0..PAGES {
        let want = if [3, 4, 7, 10, 255].contains(&p) {
            0xab
        } else {
            byte_of(p)
        };
        assert_eq!(m.read_obj::<u8>(p * page + 9).unwrap(), want, "page {p}");
    }
}

/// The round trip on the threaded server.
fn threaded_round_trip(uffd: userfaultfd::Uffd) -> Stats {
    let m = anon(PAGES);
    let server = ServerBuilder::new()
        .region(image_region(&m, PAGES, ps()))
        .prefetch(0)
        .background_threads(0)
        .track_dirty(true)
        .start(uffd)
        .unwrap();
    dirty_tracking_round_trip(&m, &|| server.dirty_pages().unwrap(), &|| {
        server.wait_populated(TIMEOUT).unwrap()
    });
    server.shutdown().unwrap()
}

/// The round trip on the async server, whose tasks run on a runtime's workers while this
/// (test) thread touches the memory.
#[cfg(feature = "tokio")]
fn async_round_trip(uffd: userfaultfd::Uffd) -> Stats {
    use userfaultfd::serve::{AsyncRegion, AsyncServerBuilder};
    let m = anon(PAGES);
    let rt = common::serving::two_worker_runtime();
    let server = {
        let _enter = rt.enter();
        AsyncServerBuilder::new()
            .region(AsyncRegion::from(image_region(&m, PAGES, ps())))
            .prefetch(0)
            .background_fetches(0)
            .track_dirty(true)
            .start(uffd)
            .unwrap()
    };
    dirty_tracking_round_trip(&m, &|| server.dirty_pages().unwrap(), &|| {
        server.wait_populated_blocking(TIMEOUT).unwrap()
    });
    rt.block_on(server.shutdown()).unwrap()
}

#[test]
fn dirty_pages_with_wp_async() {
    let Some(uffd) = common::kernel::user_uffd_if_supported(FeatureFlags::WP_ASYNC) else {
        return;
    };
    let stats = threaded_round_trip(uffd);
    assert_eq!(stats.wp_faults, 0, "{stats:?}");
}

#[cfg(feature = "tokio")]
#[test]
fn dirty_pages_with_wp_async_on_the_async_server() {
    let Some(uffd) = common::kernel::user_uffd_if_supported(FeatureFlags::WP_ASYNC) else {
        return;
    };
    let stats = async_round_trip(uffd);
    assert_eq!(stats.wp_faults, 0, "{stats:?}");
}

#[cfg(feature = "tokio")]
#[test]
fn dirty_pages_with_write_protect_faults_on_the_async_server() {
    let stats = async_round_trip(user_uffd());
    assert_eq!(stats.wp_faults, 5, "{stats:?}");
}

#[test]
fn dirty_pages_with_write_protect_faults() {
    let stats = threaded_round_trip(user_uffd());
    // Each first write after a scan faulted once (page 7 was written on its missing fault).
    assert_eq!(stats.wp_faults, 5, "{stats:?}");
}

#[test]
fn dirty_pages_needs_tracking() {
    let page = ps();
    let m = anon(4);
    let server = ServerBuilder::new()
        .region(Region::new(m, Arc::new(MemorySource::new(image(4, page)))))
        .start(user_uffd())
        .unwrap();
    assert!(matches!(server.dirty_pages(), Err(ServeError::Config(_))));
}

#[cfg(feature = "tokio")]
#[test]
fn dirty_pages_needs_tracking_on_the_async_server() {
    use userfaultfd::serve::{AsyncRegion, AsyncServerBuilder};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::from(image_region(&anon(4), 4, ps())))
        .start(user_uffd())
        .unwrap();
    assert!(matches!(server.dirty_pages(), Err(ServeError::Config(_))));
}
