//! Working sets on the async serve runtime (feature `tokio`): an exact recording serves only
//! the faulting pages and records them in order; a replay fetches the recorded pages (or their
//! source chunks, each once) before background fill, and `wait_replayed` waits for them.
//! Every wait is bounded.

mod common;
mod tokio_common;

use std::collections::BTreeSet;

use common::{ps, TIMEOUT};
use tokio_common::*;
use userfaultfd::serve::{AsyncRegion, AsyncServerBuilder, WorkingSet};

/// The exact working set of `pages` (region 0), in that order.
fn exact_set(pages: &[usize]) -> WorkingSet {
    WorkingSet::from_entries(pages.iter().map(|&p| (0, (p * ps()) as u64)).collect())
        .with_exact(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_recording_serves_and_records_only_the_faulting_pages() {
    let pages = 64;
    let m = anon(pages);
    // With chunks: outside a recording a fault would bring its whole chunk.
    let src = Image::new(pages, ps(), Some((8 * ps()) as u64));
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .exact_recording(true)
        .start(user_uffd())
        .unwrap();
    let order = [5, 1, 9, 3, 40];
    for &p in &order {
        let got = touch(&m, p).recv_timeout(TIMEOUT).expect("fault served");
        assert_eq!(got, byte_of(p));
    }
    // A woken thread can read its page before the server has counted it: wait for the count.
    common::wait_until("the last page to be counted", || {
        server.stats().pages_present() >= order.len() as u64
    });
    let stats = server.stats();
    assert_eq!(stats.pages_present(), order.len() as u64, "{stats:?}");
    assert_eq!(
        stats.pages_prefetch + stats.pages_background,
        0,
        "{stats:?}"
    );
    // One page per read while recording.
    assert!(
        src.reads
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, len)| len == ps()),
        "{:?}",
        src.reads.lock().unwrap()
    );
    let ws = server.finish_recording();
    assert!(ws.is_exact());
    let want: Vec<(u32, u64)> = order.iter().map(|&p| (0, (p * ps()) as u64)).collect();
    assert_eq!(ws.entries(), &want[..]);
    // Background fill starts once the recording ends.
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    assert_eq!(stats.demand_faults, order.len() as u64, "{stats:?}");
    verify(&m, ps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_the_recorded_pages_before_background_fill() {
    let pages = 64;
    let m = anon(pages);
    let src = Image::new(pages, ps(), None);
    let replayed = [40, 2, 17, 33];
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .replay(exact_set(&replayed))
        .start(user_uffd())
        .unwrap();
    server.wait_replayed(TIMEOUT).await.unwrap();
    server.wait_populated(TIMEOUT).await.unwrap();
    let stats = server.shutdown().await.unwrap();
    assert_eq!(stats.pages_replay, replayed.len() as u64, "{stats:?}");
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    // The first reads were the replayed pages, one page each: background fill waited.
    let reads = src.reads.lock().unwrap().clone();
    let first: BTreeSet<(u64, usize)> = reads[..replayed.len()].iter().copied().collect();
    let want: BTreeSet<(u64, usize)> = replayed
        .iter()
        .map(|&p| ((p * ps()) as u64, ps()))
        .collect();
    assert_eq!(first, want, "reads: {reads:?}");
    verify(&m, ps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_a_chunked_source_reads_each_chunk_once() {
    let pages = 64;
    let chunk_pages = 16;
    let m = anon(pages);
    let src = Image::new(pages, ps(), Some((chunk_pages * ps()) as u64));
    // Chunks 0, 2, 0, 1, 0 in recorded order: three chunks to read.
    let server = AsyncServerBuilder::new()
        .region(AsyncRegion::new(m.clone(), src.clone()))
        .replay(exact_set(&[3, 40, 5, 20, 7]))
        .background_fetches(0)
        .start(user_uffd())
        .unwrap();
    server.wait_replayed(TIMEOUT).await.unwrap();
    let stats = server.stats();
    assert_eq!(stats.pages_replay, 3 * chunk_pages as u64, "{stats:?}");
    let reads = src.reads.lock().unwrap().clone();
    let got: BTreeSet<(u64, usize)> = reads.iter().copied().collect();
    let chunk = chunk_pages * ps();
    let want: BTreeSet<(u64, usize)> = [0, 2, 1]
        .iter()
        .map(|&c| ((c * chunk) as u64, chunk))
        .collect();
    assert_eq!((reads.len(), got), (3, want), "reads: {reads:?}");
    // The replayed chunks are in memory; a page outside them is served on demand.
    assert_eq!(
        touch(&m, 50).recv_timeout(TIMEOUT).expect("fault served"),
        byte_of(50)
    );
    server.shutdown().await.unwrap();
    for p in (0..3 * chunk_pages).chain(50..51) {
        assert_eq!(m.read_obj::<u8>(p * ps()).unwrap(), byte_of(p), "page {p}");
    }
}
