//! Lazy snapshot restore, Firecracker style, on the `userfaultfd::serve` runtime.
//!
//! A snapshot file holds a memory image. Instead of reading all of it before the "guest" runs,
//! the program maps a fresh private anonymous region and hands it to a
//! [`userfaultfd::serve::Server`] with the file as its source (mapped read-only, so every
//! `UFFDIO_COPY` reads straight from the page cache). The guest runs at once: each first touch
//! faults and is served (plus the rest of its chunk), while a background thread copies
//! everything else in large chunks. The main thread touches the region in random and then
//! sequential order, waits for full population, and verifies every byte against the file.
//!
//! With no arguments it writes a 256 MiB snapshot with a verifiable pattern per page (and some
//! all-zero pages) into the temporary directory, removed at exit.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use test_kit::args::{self, number_in};
use test_kit::exit::{fail, finish};
use test_kit::measure::mb_per_s;
use test_kit::page_size;
use test_kit::pattern::{check_page, write_pattern_file};
use test_kit::rng::Rng;
use test_kit::temp::TempFile;
use userfaultfd::mmap::{MemoryMapping, MemoryMappingBuilder};
use userfaultfd::serve::{MappedFileSource, Region, ServerBuilder};
use userfaultfd::{Error, Uffd, UffdBuilder};

/// How long the restore may take before the run counts as stuck.
const TIMEOUT: Duration = Duration::from_secs(120);
const SEED: u64 = 0x5eed_1e55;

/// Restores a memory snapshot lazily with userfaultfd and the userfaultfd::serve runtime: every
/// page is served from the snapshot on its first touch (with the rest of its chunk), background
/// fill copies the rest, then every byte is verified against the snapshot.
#[derive(Parser, Debug)]
#[command(name = "lazy-restore", allow_negative_numbers = true)]
struct Config {
    /// Size of the generated snapshot in MiB [default: 256].
    #[arg(long = "size", value_name = "MIB", value_parser = number_in(1usize, 1 << 16),
          conflicts_with = "snapshot")]
    size_mib: Option<usize>,
    /// Restore FILE instead of a generated snapshot (its size is the restore's size).
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Fault handler threads.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = number_in(1usize, 64))]
    threads: usize,
}

fn create_uffd() -> Result<Uffd, Error> {
    let mut b = UffdBuilder::new();
    b.non_blocking(true);
    match b.create() {
        Ok(u) => Ok(u),
        Err(Error::PermissionDenied { .. }) => {
            println!(
                "note: kernel-mode faults are not permitted here (see uffd-probe); \
                 using user-mode-only faults, which is enough for this program"
            );
            b.user_mode_only(true).create()
        }
        Err(e) => Err(e),
    }
}

fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let _cleanup;
    let generated = cfg.snapshot.is_none();
    let path = match &cfg.snapshot {
        Some(p) => p.clone(),
        None => {
            let p =
                std::env::temp_dir().join(format!("lazy-restore-{}.snapshot", std::process::id()));
            _cleanup = TempFile(p.clone());
            let pages = cfg.size_mib.unwrap_or(256) * (1 << 20) / ps;
            let t = Instant::now();
            let zeros = write_pattern_file(&p, pages, SEED)?;
            println!(
                "snapshot: {} ({} MiB, {pages} pages, {zeros} all-zero), written in {:.2} s",
                p.display(),
                (pages * ps) >> 20,
                t.elapsed().as_secs_f64()
            );
            p
        }
    };
    let snapshot = File::open(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let snapshot_len = snapshot.metadata()?.len();
    if snapshot_len == 0 {
        return Err(fail(format!("{}: the snapshot is empty", path.display())));
    }
    let len = usize::try_from(snapshot_len)?.div_ceil(ps) * ps;
    let pages = len / ps;
    if !generated {
        println!(
            "snapshot: {} ({snapshot_len} bytes, {pages} pages)",
            path.display()
        );
    }

    // A fresh private region, as a restored guest's memory; no THP, so every page faults once.
    let region: Arc<MemoryMapping> = Arc::new(
        MemoryMappingBuilder::new(len)
            .private()
            .noreserve()
            .build()?,
    );
    region.disable_hugepages()?;
    let source = Arc::new(
        MappedFileSource::open(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?,
    );
    let uffd = create_uffd()?;
    let t0 = Instant::now();
    let server = ServerBuilder::new()
        .handler_threads(cfg.threads)
        .region(Region::new(region.clone(), source))
        .start(uffd)?;
    println!(
        "region: {} MiB at {:#x}, served by {} handler thread(s) and 1 background thread",
        len >> 20,
        region.as_ptr() as usize,
        cfg.threads
    );

    // Random order first (a guest waking up touches its working set here and there)...
    let mut order: Vec<usize> = (0..pages).collect();
    Rng::new(SEED).shuffle(&mut order);
    let mut sink = 0u8;
    let mut first_touch = None;
    for &p in &order[..pages / 2] {
        sink ^= region.read_obj::<u8>(p * ps).unwrap_or(0);
        first_touch.get_or_insert_with(|| t0.elapsed());
    }
    let random_done = t0.elapsed();
    // ...then sequentially (a scan over the rest of memory).
    for p in 0..pages {
        sink ^= region.read_obj::<u8>(p * ps).unwrap_or(0);
    }
    let touched = t0.elapsed();
    std::hint::black_box(sink);
    server
        .wait_populated(TIMEOUT)
        .map_err(|e| fail(format!("restore: {e}")))?;
    let populated = t0.elapsed();
    let st = server.shutdown()?;

    println!(
        "first touch: {:.1} us; {} random touches done at {:.3} s; all {pages} pages touched at \
         {:.3} s",
        first_touch.unwrap_or_default().as_secs_f64() * 1e6,
        pages / 2,
        random_done.as_secs_f64(),
        touched.as_secs_f64()
    );
    println!(
        "served: {} demand faults; pages {} on demand, {} prefetched, {} by background fill \
         ({} as zero pages), {} already mapped",
        st.demand_faults,
        st.pages_demand,
        st.pages_prefetch,
        st.pages_background,
        st.pages_zero,
        st.already_mapped
    );
    println!(
        "fault latency (read to wake): p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        st.latency.p50.as_secs_f64() * 1e6,
        st.latency.p99.as_secs_f64() * 1e6,
        st.latency.max.as_secs_f64() * 1e6
    );
    println!(
        "populated: all {len} bytes in {:.3} s, {:.1} MB/s",
        populated.as_secs_f64(),
        mb_per_s(len as u64, populated)
    );
    if st.source_errors != 0 {
        return Err(fail(format!("{} snapshot reads failed", st.source_errors)));
    }
    if st.pages_present() != pages as u64 {
        return Err(fail(format!(
            "{} pages made present for {pages} pages",
            st.pages_present()
        )));
    }

    // Every byte, against the file (and, for the generated snapshot, against the pattern).
    let mut file = File::open(&path)?;
    let chunk = 1 << 20;
    let mut want = vec![0u8; chunk];
    let mut got = vec![0u8; chunk];
    let mut scratch = vec![0u8; ps];
    let mut off = 0usize;
    while off < len {
        let n = chunk.min(len - off);
        let from_file = n.min(snapshot_len as usize - off.min(snapshot_len as usize));
        file.read_exact(&mut want[..from_file])?;
        want[from_file..n].fill(0);
        region.read_slice(&mut got[..n], off)?;
        if let Some(i) = want[..n].iter().zip(&got[..n]).position(|(a, b)| a != b) {
            return Err(fail(format!(
                "byte {} (page {}) differs: memory {:#04x}, snapshot {:#04x}",
                off + i,
                (off + i) / ps,
                got[i],
                want[i]
            )));
        }
        if generated {
            for (k, page) in got[..n].chunks(ps).enumerate() {
                let index = ((off / ps) + k) as u64;
                if let Err(b) = check_page(SEED, index, page, &mut scratch) {
                    return Err(fail(format!(
                        "page {index} byte {b} does not match its pattern"
                    )));
                }
            }
        }
        off += n;
    }
    println!("verified: all {pages} pages ({len} bytes) match the snapshot");
    Ok(())
}

fn main() -> ExitCode {
    let cfg: Config = args::parse();
    finish("lazy-restore", run(cfg))
}
