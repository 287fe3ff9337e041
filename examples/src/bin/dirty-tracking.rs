//! Dirty-page tracking for live migration, two ways.
//!
//! A worker thread writes random pages of a region in rounds; after each round a tracker
//! collects the set of pages written since the previous round and re-arms tracking:
//!
//! 1. **Synchronous write-protect faults** (`UFFDIO_REGISTER_MODE_WP`, Linux 5.7): every first
//!    write to a protected page stops the writer until a handler thread records the page and
//!    removes the protection (QEMU's background snapshot works this way).
//! 2. **`WP_ASYNC` + `PAGEMAP_SCAN`** (Linux 6.7): the kernel resolves the write-protect faults
//!    itself; the tracker reads and re-protects the written pages with one `PAGEMAP_SCAN` per
//!    round (CRIU, Wine's `GetWriteWatch`).
//!
//! Both must report exactly the set of pages the worker wrote. Prints pages per round and the
//! cost of each method.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use test_kit::args::{self, number_in};
use test_kit::exit::{fail, finish};
use test_kit::page_size;
use test_kit::rng::Rng;
use test_kit::wait::{wait_readable, StopSignal, Wait};
use userfaultfd::mmap::{MemoryMapping, MemoryMappingBuilder};
use userfaultfd::{
    Event, EventBuffer, FaultKind, FeatureFlags, PageMap, PageRegion, RegisterMode, Uffd,
    UffdBuilder,
};

/// Collects the pages a worker thread writes, in rounds, with synchronous write-protect faults
/// and with WP_ASYNC + PAGEMAP_SCAN, and checks both against what the worker wrote.
#[derive(Parser, Debug)]
#[command(name = "dirty-tracking", allow_negative_numbers = true)]
struct Config {
    /// Size of the tracked region in pages.
    #[arg(long, value_name = "N", default_value_t = 2048, value_parser = number_in(1usize, 1 << 20))]
    pages: usize,
    /// Rounds per method.
    #[arg(long, value_name = "R", default_value_t = 4, value_parser = number_in(1usize, 1000))]
    rounds: usize,
    /// Random page writes per round.
    #[arg(long, value_name = "W", default_value_t = 400, value_parser = number_in(1usize, 1 << 24))]
    writes: usize,
}

/// Writes `writes` random pages of `region` (round `round`) and returns the set written.
fn worker(region: &MemoryMapping, rng: &mut Rng, writes: usize, round: usize) -> BTreeSet<usize> {
    let ps = page_size();
    let pages = region.size() / ps;
    let mut written = BTreeSet::new();
    for k in 0..writes {
        let p = rng.below(pages);
        let off = p * ps + (k % (ps / 8)) * 8;
        region
            .write_obj((round as u64) << 32 | k as u64, off)
            .expect("in bounds");
        written.insert(p);
    }
    written
}

fn new_region(pages: usize) -> Result<MemoryMapping, Box<dyn std::error::Error>> {
    let ps = page_size();
    let region = MemoryMappingBuilder::new(pages * ps).private().build()?;
    region.disable_hugepages()?;
    // Populate every page: without WP_UNPOPULATED, write protection only covers present pages.
    for p in 0..pages {
        region.write_obj(0u64, p * ps)?;
    }
    Ok(region)
}

struct Totals {
    worker: Duration,
    collect: Duration,
    pages: usize,
}

/// Handler of method 1: records each write-protect fault and lets the writer go on.
fn wp_handler(
    uffd: &Uffd,
    base: usize,
    dirty: &Mutex<BTreeSet<usize>>,
    stop: &StopSignal,
) -> Result<(), String> {
    let ps = page_size();
    let mut buf = EventBuffer::new(16);
    loop {
        match wait_readable(&[uffd.as_fd()], Some(stop), Duration::from_secs(30)) {
            Ok(Wait::Ready(_)) => {}
            Ok(Wait::Stopped) => return Ok(()),
            other => return Err(format!("waiting for faults: {other:?}")),
        }
        for event in uffd.read_events(&mut buf).map_err(|e| e.to_string())? {
            match event.map_err(|e| e.to_string())? {
                Event::Pagefault {
                    kind: FaultKind::WriteProtected,
                    addr,
                    ..
                } => {
                    let page = addr as usize & !(ps - 1);
                    dirty.lock().unwrap().insert((page - base) / ps);
                    uffd.remove_write_protection(page as *mut _, ps, true)
                        .map_err(|e| e.to_string())?;
                }
                other => return Err(format!("unexpected event {other:?}")),
            }
        }
    }
}

fn sync_wp(cfg: &Config) -> Result<Totals, Box<dyn std::error::Error>> {
    let ps = page_size();
    let len = cfg.pages * ps;
    let region = new_region(cfg.pages)?;
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .user_mode_only(true)
        .require_features(FeatureFlags::PAGEFAULT_FLAG_WP)
        .create()?;
    uffd.register_region(&region, RegisterMode::WRITE_PROTECT)?;
    uffd.write_protect(region.as_ptr().cast(), len)?;
    let base = region.as_ptr() as usize;
    let dirty = Mutex::new(BTreeSet::new());
    let stop = StopSignal::new()?;
    let mut totals = Totals {
        worker: Duration::ZERO,
        collect: Duration::ZERO,
        pages: 0,
    };
    let mut rng = Rng::new(11);
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
        let handler = s.spawn(|| {
            let r = wp_handler(&uffd, base, &dirty, &stop);
            if r.is_err() {
                // Unblock the writer: unregistering clears the protection and wakes it.
                let _ = uffd.unregister_region(&region);
            }
            r
        });
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            for round in 0..cfg.rounds {
                let t = Instant::now();
                let written = std::thread::scope(|w| {
                    w.spawn(|| worker(&region, &mut rng, cfg.writes, round))
                        .join()
                })
                .map_err(|_| fail("worker panicked"))?;
                let worker_time = t.elapsed();
                // Every write waited for its fault to be handled, so the set is complete.
                let t = Instant::now();
                let got = std::mem::take(&mut *dirty.lock().unwrap());
                for &p in &got {
                    uffd.write_protect((base + p * ps) as *mut _, ps)?;
                }
                let collect = t.elapsed();
                report(
                    "sync WP faults",
                    round,
                    &written,
                    &got,
                    worker_time,
                    collect,
                )?;
                totals.worker += worker_time;
                totals.collect += collect;
                totals.pages += got.len();
            }
            Ok(())
        })();
        stop.signal();
        handler
            .join()
            .map_err(|_| fail("handler panicked"))?
            .map_err(fail)?;
        result
    })?;
    Ok(totals)
}

fn async_wp(cfg: &Config) -> Result<Totals, Box<dyn std::error::Error>> {
    let ps = page_size();
    let len = cfg.pages * ps;
    let region = new_region(cfg.pages)?;
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::WP_ASYNC)
        .create()?;
    uffd.register_region(&region, RegisterMode::WRITE_PROTECT)?;
    uffd.write_protect(region.as_ptr().cast(), len)?;
    let pagemap = PageMap::open()?;
    let base = region.as_ptr() as usize;
    let mut scratch = vec![PageRegion::default(); 256];
    let mut totals = Totals {
        worker: Duration::ZERO,
        collect: Duration::ZERO,
        pages: 0,
    };
    let mut rng = Rng::new(11);
    for round in 0..cfg.rounds {
        let t = Instant::now();
        let written = std::thread::scope(|s| {
            s.spawn(|| worker(&region, &mut rng, cfg.writes, round))
                .join()
        })
        .map_err(|_| fail("worker panicked"))?;
        let worker_time = t.elapsed();
        let t = Instant::now();
        let mut got = BTreeSet::new();
        pagemap.for_each_written(base, len, true, &mut scratch, |r| {
            got.extend((r.start() - base) / ps..(r.end() - base) / ps);
        })?;
        let collect = t.elapsed();
        report(
            "WP_ASYNC + PAGEMAP_SCAN",
            round,
            &written,
            &got,
            worker_time,
            collect,
        )?;
        totals.worker += worker_time;
        totals.collect += collect;
        totals.pages += got.len();
    }
    Ok(totals)
}

fn report(
    method: &str,
    round: usize,
    written: &BTreeSet<usize>,
    got: &BTreeSet<usize>,
    worker: Duration,
    collect: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{method:>24} round {round}: {:>5} pages dirty, worker {:>8.1} us, collect+rearm {:>8.1} us",
        got.len(),
        worker.as_secs_f64() * 1e6,
        collect.as_secs_f64() * 1e6
    );
    if written != got {
        let missed: Vec<_> = written.difference(got).take(5).collect();
        let extra: Vec<_> = got.difference(written).take(5).collect();
        return Err(fail(format!(
            "{method} round {round}: collected {} pages, worker wrote {} (missed {missed:?}, extra {extra:?})",
            got.len(),
            written.len()
        )));
    }
    Ok(())
}

fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "region: {} pages, {} rounds of {} random page writes per method",
        cfg.pages, cfg.rounds, cfg.writes
    );
    let sync = sync_wp(&cfg)?;
    let asy = async_wp(&cfg)?;
    for (name, t) in [("sync WP faults", &sync), ("WP_ASYNC + PAGEMAP_SCAN", &asy)] {
        println!(
            "{name:>24}: {} dirty pages in total, worker {:.2} ms, tracker {:.2} ms, {:.2} us per dirty page",
            t.pages,
            t.worker.as_secs_f64() * 1e3,
            t.collect.as_secs_f64() * 1e3,
            (t.worker + t.collect).as_secs_f64() * 1e6 / t.pages.max(1) as f64
        );
    }
    println!("verified: both methods collected exactly the pages the worker wrote, every round");
    Ok(())
}

fn main() -> ExitCode {
    finish("dirty-tracking", run(args::parse()))
}
