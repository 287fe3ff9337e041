//! The fault-handling runtime (`userfaultfd::serve`) and the address space changing under it:
//! `MADV_DONTNEED` with and without REMOVE events (before and after population), and UNMAP of
//! part of a region while background fill runs. Every wait is bounded.

mod common;

use std::sync::{mpsc, Arc};
use std::thread;

use common::serving::{
    anon, byte_of, dontneed, image, image_region, user_uffd, user_uffd_with, verify, Gated,
};
use common::{ps, Map, TIMEOUT};
use userfaultfd::serve::{MemorySource, PageSource, Region, ServerBuilder};
use userfaultfd::FeatureFlags;

#[test]
fn removed_pages_read_as_zeros_never_as_source_data() {
    let page = ps();
    let pages = 512;
    let m = anon(pages);
    let uffd = user_uffd_with(FeatureFlags::EVENT_REMOVE);
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
    let m = anon(pages);
    let uffd = user_uffd_with(FeatureFlags::EVENT_REMOVE);
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

#[test]
fn unmapping_part_of_a_region_while_background_fill_runs() {
    let page = ps();
    let pages = 4096;
    let map = Map::anon(pages * page);
    let uffd = user_uffd_with(FeatureFlags::EVENT_UNMAP);
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
fn a_page_dropped_without_a_remove_event_is_served_again_not_spun_on() {
    let page = ps();
    let pages = 64;
    let m = anon(pages);
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
