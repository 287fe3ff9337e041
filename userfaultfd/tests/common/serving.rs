//! Shared helpers of the serve tests (`serve_*.rs`, `tokio_serve*.rs`): the test image, a region
//! over it, touching threads that check every byte, a hugetlb mapping, a source that holds its
//! first read, `MADV_DONTNEED`, and the pages of dirty ranges.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;

use mmap::MemoryMapping;
use userfaultfd::serve::{DirtyRange, MemorySource, PageSource, Region};
use userfaultfd::{FeatureFlags, UffdBuilder};

use super::{ps, TIMEOUT};

/// Page `n` of an image holds the byte `(n * 7 + 3) as u8` (zero every eighth page).
pub fn byte_of(page: usize) -> u8 {
    if page % 8 == 7 {
        0
    } else {
        (page * 7 + 3) as u8
    }
}

/// An image of `pages` pages of `page` bytes, page `n` filled with [`byte_of`]`(n)`.
pub fn image(pages: usize, page: usize) -> Vec<u8> {
    (0..pages * page).map(|i| byte_of(i / page)).collect()
}

/// A region over all of `m`, served from [`image`] of `pages` pages of `page` bytes.
pub fn image_region(m: &Arc<MemoryMapping>, pages: usize, page: usize) -> Region {
    Region::new(m.clone(), Arc::new(MemorySource::new(image(pages, page))))
}

/// A userfaultfd for user-mode faults (needs no privilege).
pub fn user_uffd() -> userfaultfd::Uffd {
    UffdBuilder::new().user_mode_only(true).create().unwrap()
}

/// A userfaultfd for user-mode faults that reports `features` (events the kernel has had since
/// 4.11: `EVENT_REMOVE`, `EVENT_UNMAP`, ...).
pub fn user_uffd_with(features: FeatureFlags) -> userfaultfd::Uffd {
    UffdBuilder::new()
        .user_mode_only(true)
        .require_features(features)
        .create()
        .unwrap()
}

/// Checks three bytes of every page of `m` against [`byte_of`].
pub fn verify(m: &MemoryMapping, page: usize) {
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

/// Touches every page of `m` from `threads` threads, each in its own order (so threads race on
/// the same pages), checking each byte; fails the test after [`TIMEOUT`].
pub fn touch_all(m: &Arc<MemoryMapping>, page: usize, threads: usize) {
    touch_all_from(m, page, threads, 0);
}

/// [`touch_all`] for a region served from page `shift` of the image on.
pub fn touch_all_from(m: &Arc<MemoryMapping>, page: usize, threads: usize, shift: usize) {
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

/// A private anonymous mapping of `pages` base pages.
pub fn anon(pages: usize) -> Arc<MemoryMapping> {
    Arc::new(MemoryMapping::new_private(pages * ps()).unwrap())
}

/// A private mapping of `pages` 2 MiB huge pages, for the hugetlb serve tests. `None` (after
/// reporting the skip) when fewer than `pages + 2` huge pages are free or the mapping fails.
pub fn hugetlb_mapping(pages: usize) -> Option<Arc<MemoryMapping>> {
    let huge = 2 << 20;
    let free = mmap::HugePageSize::Size2MiB.free_pages().unwrap_or(0);
    if free < pages as u64 + 2 {
        test_kit::report::skip(format!(
            "needs {} free 2 MiB huge pages, {free} free (sysctl -w vm.nr_hugepages=128)",
            pages + 2
        ));
        return None;
    }
    match mmap::MemoryMappingBuilder::new(pages * huge)
        .private()
        .hugetlb(mmap::HugePageSize::Size2MiB)
        .build()
    {
        Ok(m) => {
            assert_eq!(mmap::MappedRegion::page_size(&m), huge);
            Some(Arc::new(m))
        }
        Err(e) => {
            test_kit::report::skip(format!(
                "hugetlb mapping failed: {e} (sysctl -w vm.nr_hugepages=128)"
            ));
            None
        }
    }
}

/// `madvise(MADV_DONTNEED)` over `len` bytes at `off` of `m`.
pub fn dontneed(m: &MemoryMapping, off: usize, len: usize) {
    // SAFETY: the range lies inside `m`, which is reached only through volatile accessors;
    // dropping its pages is what the test wants.
    let r = unsafe { libc::madvise(m.as_ptr().add(off).cast(), len, libc::MADV_DONTNEED) };
    assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
}

/// A source whose first read waits until released (after meeting the test at `entered`), to
/// hold a fault or a background copy in flight; later reads go straight through.
pub struct Gated {
    inner: MemorySource,
    first: AtomicUsize,
    gate: Mutex<mpsc::Receiver<()>>,
    /// Met by the first read (and the test) before it waits.
    pub entered: Barrier,
}

impl Gated {
    /// A source over `image` whose first read waits for a message on `gate`.
    pub fn new(image: Vec<u8>, gate: mpsc::Receiver<()>) -> Gated {
        Gated {
            inner: MemorySource::new(image),
            first: AtomicUsize::new(0),
            gate: Mutex::new(gate),
            entered: Barrier::new(2),
        }
    }
}

impl PageSource for Gated {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.first.fetch_add(1, Ordering::AcqRel) == 0 {
            self.entered.wait();
            let _ = self.gate.lock().unwrap().recv_timeout(TIMEOUT);
        }
        self.inner.read_at(offset, buf)
    }
}

/// The pages named by `ranges` (all of region 0).
pub fn dirty_set(ranges: &[DirtyRange], page: usize) -> Vec<usize> {
    let mut v = Vec::new();
    for d in ranges {
        assert_eq!(d.region, 0);
        assert_eq!((d.offset % page, d.len % page), (0, 0), "{d:?}");
        v.extend(d.offset / page..(d.offset + d.len) / page);
    }
    v
}

/// Samples a server's background fill until `populated` (a bounded wait of the server's,
/// given how long to wait) says every page is present, and checks the rate limit's promise at
/// each sample: the bytes `pages_background` reports are at most `rate` bytes per second since
/// `t0` (taken before the server started, so before its first reservation) plus `slack` (one
/// copy). In the end they must be `total` bytes; fails after [`TIMEOUT`]. Returns the number
/// of samples.
pub fn check_background_rate(
    populated: &dyn Fn(std::time::Duration) -> bool,
    pages_background: &dyn Fn() -> u64,
    t0: std::time::Instant,
    (rate, slack): (u64, u64),
    total: u64,
) -> usize {
    let mut samples = 0;
    loop {
        let done = populated(std::time::Duration::from_millis(25));
        let bytes = pages_background() * ps() as u64;
        let now = std::time::Instant::now();
        let allowed = (rate as f64 * (now - t0).as_secs_f64()) as u64 + slack;
        assert!(
            bytes <= allowed,
            "background fill copied {bytes} bytes in {:?}, over {rate} B/s (+{slack})",
            now - t0
        );
        samples += 1;
        if done {
            assert_eq!(bytes, total, "after {samples} samples");
            return samples;
        }
        assert!(now - t0 < TIMEOUT, "not populated within {TIMEOUT:?}");
    }
}

/// A multi-threaded tokio runtime of two workers with every driver, for the async server's
/// tests that touch served memory from the test thread (never a worker of this runtime).
pub fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
