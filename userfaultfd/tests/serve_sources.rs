//! Black-box tests of the file sources of `userfaultfd::serve` against the real kernel and the
//! temporary directory's file system: contents at any offset, reads past the end, holes of
//! sparse files (`SEEK_DATA`), and a [`Server`] serving private anonymous memory from each
//! source, verified byte for byte.
//!
//! Every wait is bounded: faulting reads run on a helper thread whose result is awaited with a
//! timeout, and the server's population is awaited with `wait_populated`.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;
use test_kit::pattern::dense_image;

use mmap::MemoryMapping;
use userfaultfd::serve::{
    FileSource, MappedFileSource, PageSource, Region, Server, ServerBuilder, Stats,
};
use userfaultfd::UffdBuilder;

/// Bound of every wait (never reached when things work).
const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn ps() -> usize {
    userfaultfd::page_size()
}

/// A uniquely named file in the temporary directory, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn empty(tag: &str) -> Temp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "uffd-serve-sources-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        File::create(&path).unwrap();
        Temp(path)
    }

    fn with(tag: &str, bytes: &[u8]) -> Temp {
        let t = Temp::empty(tag);
        File::create(&t.0).unwrap().write_all(bytes).unwrap();
        t
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Both sources over the file at `path`.
fn both(path: &Path) -> [(&'static str, Arc<dyn PageSource>); 2] {
    [
        ("FileSource", Arc::new(FileSource::open(path).unwrap())),
        (
            "MappedFileSource",
            Arc::new(MappedFileSource::open(path).unwrap()),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Contents and bounds.

#[test]
fn contents_round_trip_at_various_offsets() {
    // Not a multiple of the page size: the tail page is partial.
    let len = 3 * MIB + 123;
    let bytes = dense_image(len);
    let t = Temp::with("round-trip", &bytes);
    let p = ps();
    let offsets = [
        0,
        1,
        p - 1,
        p,
        p + 17,
        12_345,
        MIB - 1,
        MIB,
        2 * MIB + 3 * p,
        len - p,
        len - 1,
    ];
    let lens = [1, 7, p - 1, p, p + 1, 3 * p, 64 << 10, MIB];
    for (name, src) in both(t.path()) {
        assert_eq!(src.len(), len as u64, "{name}");
        assert!(!src.is_empty(), "{name}");
        let mut buf = vec![0u8; MIB];
        for &off in &offsets {
            for &n in &lens {
                if off + n > len {
                    continue;
                }
                let b = &mut buf[..n];
                b.fill(0);
                src.read_at(off as u64, b)
                    .unwrap_or_else(|e| panic!("{name}: {n} bytes at {off}: {e}"));
                assert!(b[..] == bytes[off..off + n], "{name}: {n} bytes at {off}");
            }
        }
        // The whole file in one read, and an empty read at the very end.
        let mut all = vec![0u8; len];
        src.read_at(0, &mut all).unwrap();
        assert!(all == bytes, "{name}: whole file");
        src.read_at(len as u64, &mut []).unwrap();
    }
}

#[test]
fn read_past_the_end_is_unexpected_eof() {
    let len = 5 * ps() + 100;
    let t = Temp::with("eof", &dense_image(len));
    for (name, src) in both(t.path()) {
        let mut page = vec![0u8; ps()];
        // Straddling the end, starting at the end, far beyond, and overflowing u64.
        for off in [len - 10, len, len + ps(), usize::MAX - 1] {
            let e = src.read_at(off as u64, &mut page).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::UnexpectedEof,
                "{name} at {off}: {e}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&off.to_string()), "{name}: {msg}");
            assert!(msg.contains(&ps().to_string()), "{name}: {msg}");
        }
        // The last whole page and the partial tail are still readable.
        src.read_at((len - ps()) as u64, &mut page).unwrap();
        let mut tail = [0u8; 100];
        src.read_at((len - 100) as u64, &mut tail).unwrap();
        assert!(tail[..] == dense_image(len)[len - 100..], "{name}");
    }
}

#[test]
fn from_an_open_file_and_errors() {
    let t = Temp::with("new", &dense_image(2 * ps()));
    let f = FileSource::new(File::open(t.path()).unwrap()).unwrap();
    assert_eq!(f.len(), 2 * ps() as u64);
    assert!(
        f.direct().is_none(),
        "FileSource reads into the bounce buffer"
    );
    let m = MappedFileSource::new(File::open(t.path()).unwrap()).unwrap();
    assert_eq!(m.len(), 2 * ps() as u64);
    let v = m.direct().expect("a mapped file is copied from directly");
    assert_eq!(v.len(), 2 * ps());
    assert_eq!(m.mapping().size(), 2 * ps());
    assert_eq!(
        m.file().metadata().unwrap().len(),
        f.file().metadata().unwrap().len()
    );
    let p = MappedFileSource::open_populated(t.path()).unwrap();
    let mut b = [0u8; 16];
    p.read_at(ps() as u64, &mut b).unwrap();
    assert_eq!(b[..], dense_image(2 * ps())[ps()..ps() + 16]);

    // Errors of open(2) come through as they are.
    let missing = t.path().with_extension("missing");
    for e in [
        FileSource::open(&missing).unwrap_err(),
        MappedFileSource::open(&missing).unwrap_err(),
        MappedFileSource::open_populated(&missing).unwrap_err(),
    ] {
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
    // A file that cannot be read: mmap(2) refuses a descriptor opened write-only (EACCES).
    let wo = File::options().write(true).open(t.path()).unwrap();
    let e = MappedFileSource::new(wo).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    // An empty file: a FileSource of nothing; refused by MappedFileSource.
    let empty = Temp::empty("empty");
    assert!(FileSource::open(empty.path()).unwrap().is_empty());
    let e = MappedFileSource::open(empty.path()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

// ---------------------------------------------------------------------------------------------
// Sparse files.

/// The layout of the sparse test file, in bytes (multiples of 2 MiB and of the page size, so
/// that whole background chunks are holes):
///
/// - `0..2 MiB`: hole;
/// - `2 MiB..2 MiB + 64 KiB`: data;
/// - then a hole up to `3 MiB`;
/// - `3 MiB..3 MiB + 1 page`: data;
/// - 100 bytes of data at `3.5 MiB + 10` (the rest of their block reads as zeros);
/// - `4 MiB..6 MiB`: hole up to the end of the file.
const SPARSE_LEN: usize = 6 * MIB;

fn sparse_data() -> Vec<(usize, Vec<u8>)> {
    vec![
        (2 * MIB, vec![0xa5; 64 << 10]),
        (3 * MIB, vec![0x5a; ps()]),
        (3 * MIB + MIB / 2 + 10, vec![0x77; 100]),
    ]
}

fn sparse_file() -> Temp {
    let t = Temp::empty("sparse");
    let f = File::options().write(true).open(t.path()).unwrap();
    f.set_len(SPARSE_LEN as u64).unwrap();
    for (off, bytes) in sparse_data() {
        f.write_all_at(&bytes, off as u64).unwrap();
    }
    // No fsync: holes must be reported correctly for data still in the page cache.
    t
}

/// Whether the file system of `path` reports holes: `SEEK_DATA` from 0 in the sparse file
/// (whose first 2 MiB are a hole) finds its first data past 0. File systems without hole
/// support report every byte as data.
fn reports_holes(path: &Path) -> bool {
    let f = File::open(path).unwrap();
    // SAFETY: lseek(2) on a descriptor `f` owns; no pointers are involved.
    let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    data > 0
}

#[test]
fn sparse_file_holes_read_as_zero() {
    let t = sparse_file();
    let bytes = t.contents();
    assert_eq!(bytes.len(), SPARSE_LEN);
    let holes = reports_holes(t.path());
    if !holes {
        eprintln!(
            "note: the file system of {} reports no holes; only checking that data is never \
             reported as zero",
            std::env::temp_dir().display()
        );
    }
    let p = ps() as u64;
    let mib = MIB as u64;
    // (offset, len, is a hole)
    let ranges: &[(u64, u64, bool)] = &[
        (0, 2 * mib, true),
        (0, p, true),
        (mib, mib, true),
        (2 * mib - p, p, true),
        // Runs that end exactly where the data starts, and that cross into it.
        (2 * mib - p, 2 * p, false),
        (2 * mib, p, false),
        (2 * mib + (64 << 10) - p, p, false),
        // The hole between the first two data ranges.
        (2 * mib + (64 << 10), mib - (64 << 10), true),
        (2 * mib + (64 << 10), mib - (64 << 10) + 1, false),
        (3 * mib, p, false),
        (3 * mib + p, p, true),
        // The page holding 100 bytes at 3.5 MiB + 10.
        (3 * mib + mib / 2, p, false),
        (3 * mib + mib / 2 - p, p, true),
        // The hole running to the end of the file (SEEK_DATA: ENXIO).
        (4 * mib, 2 * mib, true),
        (6 * mib - p, p, true),
        (3 * mib + mib / 2 + p, mib / 2 - p, true),
        // The whole file, and ranges past its end.
        (0, 6 * mib, false),
        (6 * mib - p, 2 * p, false),
        (6 * mib, p, false),
    ];
    for (name, src) in both(t.path()) {
        for &(off, len, hole) in ranges {
            let said = src.is_zero(off, len);
            // A hole must read as zeros: never claim one over data.
            if said {
                assert!(
                    bytes[off as usize..(off + len) as usize]
                        .iter()
                        .all(|&b| b == 0),
                    "{name}: {off}+{len} reported as a hole but holds data"
                );
            }
            if holes {
                assert_eq!(said, hole, "{name}: is_zero({off}, {len})");
            } else {
                assert!(!said || hole, "{name}: is_zero({off}, {len})");
            }
            // Whatever is_zero says, read_at returns the file's bytes.
            if off + len <= SPARSE_LEN as u64 && len <= mib {
                let mut buf = vec![0xffu8; len as usize];
                src.read_at(off, &mut buf).unwrap();
                assert!(
                    buf[..] == bytes[off as usize..(off + len) as usize],
                    "{name}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// End to end: a Server over private anonymous memory.

/// Reads a `u64` at each of `offsets` of `memory` on a helper thread (each first touch faults
/// and waits for the server), with a bounded wait for the whole batch. On a timeout the test
/// fails; dropping the server then unregisters the range, which releases the helper thread.
fn touch(memory: &Arc<MemoryMapping>, offsets: Vec<usize>) -> Vec<u64> {
    let (tx, rx) = mpsc::channel();
    let m = Arc::clone(memory);
    thread::spawn(move || {
        let vals: Vec<u64> = offsets
            .iter()
            .map(|&o| m.read_obj::<u64>(o).unwrap())
            .collect();
        let _ = tx.send(vals);
    });
    rx.recv_timeout(TIMEOUT)
        .expect("faulting reads were not served in time")
}

fn expect_u64(bytes: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(bytes[off..off + 8].try_into().unwrap())
}

/// How the test drives the server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Default builder (background fill on); a few pages touched, then wait for the rest.
    Background,
    /// No background fill: every page is touched (demand faults and prefetch), in an order that
    /// jumps around the region first.
    DemandOnly,
}

/// Serves `memory` (of `expected.len()` bytes) from `source`, touches pages, waits until
/// populated, checks every byte against `expected`, shuts down, and returns the final stats
/// after checking what holds whatever the schedule.
fn serve_and_verify(source: Arc<dyn PageSource>, expected: &[u8], mode: Mode) -> Stats {
    let len = expected.len();
    let p = ps();
    assert_eq!(len % p, 0);
    let npages = len / p;
    let memory = Arc::new(MemoryMapping::new_private(len).unwrap());
    let uffd = UffdBuilder::new().user_mode_only(true).create().unwrap();
    let mut builder = ServerBuilder::new().region(Region::new(memory.clone(), source));
    if mode == Mode::DemandOnly {
        builder = builder.background_threads(0);
    }
    let server: Server = builder.start(uffd).unwrap();

    // Pages spread over the region, then (demand only) every page.
    let mut offsets: Vec<usize> = [npages / 2, npages - 1, 0, npages / 3 + 1, npages / 4 + 5]
        .iter()
        .map(|&pg| pg.min(npages - 1) * p + 8)
        .collect();
    if mode == Mode::DemandOnly {
        offsets.extend((0..npages).rev().map(|pg| pg * p + p / 2));
    }
    let got = touch(&memory, offsets.clone());
    for (&o, &v) in offsets.iter().zip(&got) {
        assert_eq!(v, expect_u64(expected, o), "u64 at {o}");
    }
    server.wait_populated(TIMEOUT).unwrap();
    assert!(server.is_populated());
    assert_eq!(server.halted(), None);
    // Pages are counted before the server reports them populated; the other counters of the
    // last resolving ioctl may still be on their way (see `shutdown` below).
    let live = server.stats();
    assert_eq!(live.pages_present(), npages as u64, "{live:?}");
    assert!(live.time_to_populated.is_some(), "{live:?}");

    // Every byte, now that it is plain memory.
    let mut all = vec![0u8; len];
    memory.read_slice(&mut all, 0).unwrap();
    if let Some(i) = (0..len).find(|&i| all[i] != expected[i]) {
        panic!(
            "byte {i} (page {}) is {:#x}, the file has {:#x}; {live:?}",
            i / p,
            all[i],
            expected[i]
        );
    }

    // After shutdown (every thread joined) the counters are final.
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_present(), npages as u64, "{stats:?}");
    assert_eq!(stats.source_errors, 0, "{stats:?}");
    assert_eq!(stats.pages_failed, 0, "{stats:?}");
    assert_eq!(stats.already_mapped, 0, "{stats:?}");
    assert_eq!(
        stats.bytes_copied + stats.pages_zero * p as u64,
        len as u64,
        "every page is copied or mapped as a zero page once: {stats:?}"
    );
    assert!(stats.copy_ioctls >= 1, "{stats:?}");
    if mode == Mode::DemandOnly {
        // Nothing else populates: the first touch faults for certain.
        assert_eq!(stats.pages_background, 0, "{stats:?}");
        assert!(
            stats.demand_faults >= 1 && stats.pages_demand >= 1,
            "{stats:?}"
        );
        assert!(stats.latency.count >= 1, "{stats:?}");
    }
    stats
}

#[test]
fn server_serves_a_dense_file_from_both_sources() {
    let t = Temp::with("serve-dense", &dense_image(4 * MIB));
    let expected = t.contents();
    for mode in [Mode::Background, Mode::DemandOnly] {
        for (name, src) in both(t.path()) {
            let stats = serve_and_verify(src, &expected, mode);
            assert_eq!(stats.pages_zero, 0, "{name} {mode:?}: no holes: {stats:?}");
            assert_eq!(stats.bytes_copied, 4 * MIB as u64, "{name} {mode:?}");
        }
    }
}

#[test]
fn server_serves_a_sparse_file_with_zero_pages() {
    let t = sparse_file();
    let expected = t.contents();
    let holes = reports_holes(t.path());
    let p = ps() as u64;
    let hole_pages = expected
        .chunks(ps())
        .filter(|c| c.iter().all(|&b| b == 0))
        .count() as u64;
    for mode in [Mode::Background, Mode::DemandOnly] {
        for (name, src) in both(t.path()) {
            let stats = serve_and_verify(src, &expected, mode);
            // Only holes are mapped as zero pages.
            assert!(stats.pages_zero <= hole_pages, "{name} {mode:?}: {stats:?}");
            if holes {
                // Every run the server resolves lies inside one aligned 2 MiB chunk (a demand
                // page, a prefetch window of at most 2 MiB, a background chunk), so the two
                // chunks that are wholly holes (0..2 MiB, 4..6 MiB) are always zero pages.
                assert!(
                    stats.pages_zero >= 2 * MIB as u64 * 2 / p,
                    "{name} {mode:?}: {stats:?}"
                );
                assert!(stats.bytes_copied < SPARSE_LEN as u64, "{name} {mode:?}");
            }
        }
    }
}

#[test]
fn one_file_serves_two_regions_at_source_offsets() {
    // A memory file of two "slots", served into two regions, as Firecracker's snapshot layout
    // describes guest memory.
    let t = Temp::with("serve-offsets", &dense_image(3 * MIB));
    let expected = t.contents();
    for (name, src) in both(t.path()) {
        let a = Arc::new(MemoryMapping::new_private(MIB).unwrap());
        let b = Arc::new(MemoryMapping::new_private(2 * MIB).unwrap());
        let server = ServerBuilder::new()
            .region(Region::new(a.clone(), src.clone()))
            .region(Region::new(b.clone(), src.clone()).source_offset(MIB as u64))
            .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
            .unwrap();
        let got = touch(&b, vec![MIB + 8]);
        assert_eq!(got[0], expect_u64(&expected, 2 * MIB + 8), "{name}");
        server.wait_populated(TIMEOUT).unwrap();
        let mut buf = vec![0u8; 2 * MIB];
        a.read_slice(&mut buf[..MIB], 0).unwrap();
        assert!(buf[..MIB] == expected[..MIB], "{name}: region a");
        b.read_slice(&mut buf, 0).unwrap();
        assert!(buf[..] == expected[MIB..], "{name}: region b");
        let stats = server.shutdown().unwrap();
        assert_eq!(stats.pages_present(), (3 * MIB / ps()) as u64, "{name}");
        assert_eq!(stats.source_errors, 0, "{name}");
    }
}

#[test]
fn a_region_longer_than_the_file_is_refused() {
    let t = Temp::with("serve-short", &dense_image(MIB));
    for (name, src) in both(t.path()) {
        let memory = Arc::new(MemoryMapping::new_private(2 * MIB).unwrap());
        let e = ServerBuilder::new()
            .region(Region::new(memory, src))
            .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
            .unwrap_err();
        assert!(
            e.to_string().contains("past the source's end"),
            "{name}: {e}"
        );
    }
}
