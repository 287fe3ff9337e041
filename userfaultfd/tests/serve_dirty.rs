//! Dirty-page tracking of `userfaultfd::serve` (`track_dirty`, `dirty_pages`): with `WP_ASYNC`
//! and with synchronous write-protect faults, and refused without tracking. Every wait is
//! bounded.

mod common;

use std::sync::Arc;

use common::serving::{anon, byte_of, dirty_set, image, image_region, user_uffd};
use common::{ps, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{MemorySource, Region, ServeError, ServerBuilder};
use userfaultfd::FeatureFlags;

/// Writes one byte into each page of `pages` of `m`.
fn write_pages(m: &MemoryMapping, page: usize, pages: &[usize]) {
    for &p in pages {
        m.write_obj(0xabu8, p * page + 9).unwrap();
    }
}

fn dirty_tracking_round_trip(uffd: userfaultfd::Uffd) -> userfaultfd::serve::Stats {
    let page = ps();
    let pages = 256;
    let m = anon(pages);
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
    let Some(uffd) = common::kernel::user_uffd_if_supported(FeatureFlags::WP_ASYNC) else {
        return;
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
    let m = anon(4);
    let server = ServerBuilder::new()
        .region(Region::new(m, Arc::new(MemorySource::new(image(4, page)))))
        .start(user_uffd())
        .unwrap();
    assert!(matches!(server.dirty_pages(), Err(ServeError::Config(_))));
}
