//! Read-through coalescing against the running kernel: where missing pages alternate with
//! present ones (every other page made present by demand faults), background fill and prefetch
//! read each chunk from the source in one request, copy only the missing pages, verify byte
//! for byte, and never write source bytes over a page removed while that read was in flight.

mod common;

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use common::{ps, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::serve::{PageSource, Region, Server, ServerBuilder};
use userfaultfd::{FeatureFlags, UffdBuilder};

/// The bytes of a background chunk (and of a prefetch window) in these tests.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks in the served region.
const CHUNKS: usize = 8;

/// The image's byte at `offset`: every byte differs from its neighbours and from the same
/// byte of the next page, so a run copied from the wrong place in a read does not verify.
fn image_byte(offset: usize) -> u8 {
    let page = offset / ps();
    (offset as u8) ^ (page as u8).wrapping_mul(37) ^ 0x5a
}

/// A read-through source over an image (no direct view, no zero knowledge, as a disk or a
/// network peer) that records every read request, and can hold one read until released.
struct Counting {
    image: Vec<u8>,
    /// `(offset, len)` of every read, in order.
    reads: Mutex<Vec<(u64, usize)>>,
    /// When armed: the next read says it started, then waits for the release.
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl Counting {
    fn new(len: usize) -> Arc<Counting> {
        Arc::new(Counting {
            image: (0..len).map(image_byte).collect(),
            reads: Mutex::new(Vec::new()),
            gate: Mutex::new(None),
        })
    }

    /// The reads so far, in pages: `(first page, pages)`; forgets them.
    fn take_reads(&self) -> Vec<(usize, usize)> {
        let page = ps();
        std::mem::take(&mut *self.reads.lock().unwrap())
            .into_iter()
            .map(|(off, len)| (off as usize / page, len.div_ceil(page)))
            .collect()
    }

    /// Holds the next read: returns a receiver told when it started, and the sender that
    /// releases it.
    fn arm(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.gate.lock().unwrap() = Some((entered_tx, release_rx));
        (entered_rx, release_tx)
    }
}

impl PageSource for Counting {
    fn len(&self) -> u64 {
        self.image.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads.lock().unwrap().push((offset, buf.len()));
        let gate = self.gate.lock().unwrap().take();
        if let Some((entered, release)) = gate {
            entered.send(()).unwrap();
            release
                .recv_timeout(TIMEOUT)
                .expect("the held read was never released");
        }
        let start = offset as usize;
        buf.copy_from_slice(&self.image[start..start + buf.len()]);
        Ok(())
    }
}

/// Pages per chunk, or `None` (after reporting the skip) when base pages are too large for a
/// 64 KiB chunk to hold several missing runs.
fn pages_per_chunk() -> Option<usize> {
    let per_chunk = CHUNK_BYTES / ps();
    if per_chunk < 4 {
        test_kit::report::skip(format!(
            "base pages of {} bytes leave fewer than 4 pages in a {CHUNK_BYTES}-byte chunk; \
             run on a machine with 4 KiB or 16 KiB pages",
            ps()
        ));
        return None;
    }
    Some(per_chunk)
}

/// A server recording exactly (nothing but demand faults until `finish_recording`) over a
/// region of [`CHUNKS`] chunks served from a [`Counting`] source, with `background` background
/// threads.
fn start(
    m: &Arc<MemoryMapping>,
    src: &Arc<Counting>,
    background: usize,
    features: FeatureFlags,
) -> Server {
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(features)
        .create()
        .unwrap();
    ServerBuilder::new()
        .region(Region::new(m.clone(), src.clone()))
        .exact_recording(true)
        .background_threads(background)
        .background_chunk(CHUNK_BYTES)
        .prefetch(CHUNK_BYTES)
        .prefetch_max(CHUNK_BYTES)
        .start(uffd)
        .unwrap()
}

/// Touches every even page of `pages` (one demand fault and one single-page read each), so
/// that every chunk holds missing runs of one page separated by present pages.
fn touch_even_pages(server: &Server, m: &MemoryMapping, src: &Counting, pages: usize) {
    let page = ps();
    for p in (0..pages).step_by(2) {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), image_byte(p * page));
    }
    // The counters of the last copy may land just after its wake-up.
    common::wait_until("the even pages counted", || {
        server.stats().pages_present() >= (pages / 2) as u64
    });
    let reads = src.take_reads();
    let want: Vec<(usize, usize)> = (0..pages).step_by(2).map(|p| (p, 1)).collect();
    assert_eq!(reads, want, "one single-page read per demand fault");
}

/// A region of [`CHUNKS`] chunks served by [`start`] whose even pages have been touched, so
/// that every chunk is fragmented: missing runs of one page between present pages.
struct Fragmented {
    per_chunk: usize,
    pages: usize,
    m: Arc<MemoryMapping>,
    src: Arc<Counting>,
    server: Server,
}

/// [`Fragmented`], or `None` (the skip reported) where [`pages_per_chunk`] says so.
fn fragmented(background: usize, features: FeatureFlags) -> Option<Fragmented> {
    let per_chunk = pages_per_chunk()?;
    let pages = CHUNKS * per_chunk;
    let m = Arc::new(MemoryMapping::new_private(pages * ps()).unwrap());
    let src = Counting::new(pages * ps());
    let server = start(&m, &src, background, features);
    touch_even_pages(&server, &m, &src, pages);
    Some(Fragmented {
        per_chunk,
        pages,
        m,
        src,
        server,
    })
}

/// Checks every byte of page `p` of `m` against the image (or against zeros).
fn verify_page(m: &MemoryMapping, p: usize, zeros: bool) {
    let page = ps();
    let mut got = vec![0u8; page];
    m.read_slice(&mut got, p * page).unwrap();
    for (i, &b) in got.iter().enumerate() {
        let want = if zeros { 0 } else { image_byte(p * page + i) };
        assert_eq!(b, want, "page {p} byte {i}");
    }
}

/// The one read expected per fragmented chunk `c` once its even pages are present: from its
/// first odd page to its end.
fn chunk_read(c: usize, per_chunk: usize) -> (usize, usize) {
    (c * per_chunk + 1, per_chunk - 1)
}

#[test]
fn background_fill_reads_each_fragmented_chunk_once() {
    let Some(Fragmented {
        per_chunk,
        pages,
        m,
        src,
        server,
    }) = fragmented(1, FeatureFlags::empty())
    else {
        return;
    };
    let page = ps();

    // Background fill starts: one read per chunk, however many missing runs it holds.
    server.finish_recording();
    server.wait_populated(TIMEOUT).unwrap();
    let mut reads = src.take_reads();
    reads.sort_unstable();
    let want: Vec<(usize, usize)> = (0..CHUNKS).map(|c| chunk_read(c, per_chunk)).collect();
    assert_eq!(reads, want, "one read per chunk of {per_chunk} pages");
    for p in 0..pages {
        verify_page(&m, p, false);
    }
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_demand, (pages / 2) as u64, "{stats:?}");
    assert_eq!(stats.pages_background, (pages / 2) as u64, "{stats:?}");
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    // Each missing page was copied on its own (one ioctl per run), present ones never again.
    assert_eq!(stats.bytes_copied, (pages * page) as u64, "{stats:?}");
    assert_eq!(stats.source_errors, 0, "{stats:?}");
}

#[test]
fn a_page_removed_during_a_coalesced_read_keeps_its_zeros() {
    let Some(Fragmented {
        per_chunk,
        pages,
        m,
        src,
        server,
    }) = fragmented(1, FeatureFlags::EVENT_REMOVE)
    else {
        return;
    };
    let page = ps();

    // Background fill's first read (chunk 0, pages 1.. to its end) is held while a balloon
    // frees pages 2..6 inside it: two present pages and two still missing (3 and 5).
    let (entered, release) = src.arm();
    server.finish_recording();
    entered
        .recv_timeout(TIMEOUT)
        .expect("background fill did not read chunk 0");
    let removed = 2..6;
    // SAFETY: the range lies inside `m`, reached only through its accessors; dropping those
    // pages is what the test wants (the server then serves them as zeros).
    let r = unsafe {
        libc::madvise(
            m.as_ptr().add(removed.start * page).cast(),
            removed.len() * page,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
    release.send(()).unwrap();
    server.wait_populated(TIMEOUT).unwrap();

    let mut reads = src.take_reads();
    reads.sort_unstable();
    let want: Vec<(usize, usize)> = (0..CHUNKS).map(|c| chunk_read(c, per_chunk)).collect();
    assert_eq!(reads, want, "one read per chunk, the held one included");
    for p in 0..pages {
        verify_page(&m, p, removed.contains(&p));
    }
    let stats = server.shutdown().unwrap();
    // The two removed missing pages were not copied from the held read.
    assert_eq!(stats.pages_background, (pages / 2 - 2) as u64, "{stats:?}");
    assert_eq!(stats.pages_removed_zero, removed.len() as u64, "{stats:?}");
}

#[test]
fn prefetch_reads_a_fragmented_window_once() {
    // No background fill: only demand faults and their prefetch.
    let Some(Fragmented {
        per_chunk,
        m,
        src,
        server,
        ..
    }) = fragmented(0, FeatureFlags::empty())
    else {
        return;
    };
    let page = ps();
    server.finish_recording();

    // A fault on the first odd page of chunk 1: its own read, then one read for the rest of
    // the window (from the next missing page to the window's end).
    let fault = per_chunk + 1;
    assert_eq!(
        m.read_obj::<u8>(fault * page).unwrap(),
        image_byte(fault * page)
    );
    let rest = (per_chunk / 2 - 1) as u64;
    common::wait_until("the prefetched window", || {
        server.stats().pages_prefetch == rest
    });
    let reads = src.take_reads();
    assert_eq!(
        reads,
        vec![(fault, 1), (fault + 2, per_chunk - 3)],
        "the demand read, then one read for the window"
    );
    let faults = server.stats().demand_faults;
    for p in per_chunk..2 * per_chunk {
        verify_page(&m, p, false);
    }
    let stats = server.shutdown().unwrap();
    assert_eq!(
        stats.demand_faults, faults,
        "the window was present: {stats:?}"
    );
    assert_eq!(stats.pages_prefetch, rest, "{stats:?}");
}
