//! Lazy snapshot restore, Firecracker style.
//!
//! A snapshot file holds a memory image. Instead of reading all of it before the "guest" runs,
//! the program maps a fresh private anonymous region, registers it with userfaultfd (MISSING) and
//! lets handler threads fill each page from the snapshot the first time it is touched:
//! `UFFDIO_ZEROPAGE` for all-zero pages, `UFFDIO_COPY` otherwise. The main thread then touches the
//! region in random and then sequential order, and finally verifies every byte against the file.
//!
//! With no arguments it writes a 256 MiB snapshot with a verifiable pattern per page (and some
//! all-zero pages) into the temporary directory, removed at exit.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use examples::{
    check_page, fail, fill_page, finish, mb_per_s, page_size, wait_readable, Args, Rng, StopSignal,
    Wait,
};
use mmap::{MemoryMapping, MemoryMappingBuilder};
use userfaultfd::{Error, Event, EventBuffer, IoctlFlags, Uffd, UffdBuilder};

const USAGE: &str = "\
usage: lazy-restore [--size MIB] [--snapshot FILE] [--threads N]

Restores a memory snapshot lazily with userfaultfd: every page is filled from the snapshot
on its first touch (UFFDIO_COPY, or UFFDIO_ZEROPAGE for all-zero pages), then every byte is
verified against the snapshot.

  --size MIB       size of the generated snapshot (default 256)
  --snapshot FILE  restore FILE instead of a generated snapshot
  --threads N      fault handler threads (default 2)";

/// How long a handler waits for a fault before deciding the run is stuck.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const SEED: u64 = 0x5eed_1e55;

struct Config {
    size_mib: Option<usize>,
    snapshot: Option<PathBuf>,
    threads: usize,
}

fn parse() -> Config {
    let mut args = Args::from_env(USAGE);
    let mut cfg = Config {
        size_mib: None,
        snapshot: None,
        threads: 2,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => cfg.size_mib = Some(args.value_in("--size", 1, 1 << 16)),
            "--snapshot" => cfg.snapshot = Some(args.value("--snapshot")),
            "--threads" => cfg.threads = args.value_in("--threads", 1, 64),
            _ => args.unknown(&a),
        }
    }
    if cfg.size_mib.is_some() && cfg.snapshot.is_some() {
        args.usage_error(
            "--size applies to the generated snapshot; --snapshot FILE uses the file's size",
        );
    }
    cfg
}

/// Removes the generated snapshot when the program ends, however it ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes a snapshot of `pages` pattern pages; returns the number of zero pages.
fn write_snapshot(path: &PathBuf, pages: usize) -> std::io::Result<usize> {
    let ps = page_size();
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut page = vec![0u8; ps];
    let mut zeros = 0;
    for i in 0..pages as u64 {
        fill_page(SEED, i, &mut page);
        if examples::is_zero_page(SEED, i) {
            zeros += 1;
        }
        w.write_all(&page)?;
    }
    w.flush()?;
    Ok(zeros)
}

#[derive(Default)]
struct Stats {
    faults: AtomicU64,
    copies: AtomicU64,
    zeropages: AtomicU64,
    already_mapped: AtomicU64,
    bytes_copied: AtomicU64,
}

/// What the handler threads share.
struct Restore<'a> {
    uffd: &'a Uffd,
    snapshot: &'a File,
    snapshot_len: u64,
    base: usize,
    len: usize,
    stop: &'a StopSignal,
    stats: Stats,
    error: Mutex<Option<String>>,
}

impl Restore<'_> {
    /// One handler thread: poll, read a batch of faults, serve each from the snapshot.
    fn serve(&self) {
        if let Err(e) = self.serve_loop() {
            // Record the error, then unregister the region: blocked touchers wake up and get
            // zero pages, so the main thread never hangs and its verification fails loudly.
            self.error.lock().unwrap().get_or_insert(e);
            let _ = self.uffd.unregister(self.base as *mut _, self.len);
            self.stop.signal();
        }
    }

    fn serve_loop(&self) -> Result<(), String> {
        let ps = page_size();
        let mut buf = EventBuffer::new(16);
        let mut page = vec![0u8; ps];
        loop {
            match wait_readable(&[self.uffd.as_fd()], Some(self.stop), IDLE_TIMEOUT) {
                Ok(Wait::Ready(_)) => {}
                Ok(Wait::Stopped) => return Ok(()),
                Ok(Wait::TimedOut) => return Err(format!("no fault for {IDLE_TIMEOUT:?}")),
                Err(e) => return Err(format!("poll: {e}")),
            }
            let events = self.uffd.read_events(&mut buf).map_err(|e| e.to_string())?;
            for event in events {
                match event.map_err(|e| e.to_string())? {
                    Event::Pagefault { addr, .. } => self.serve_fault(addr as usize, &mut page)?,
                    other => return Err(format!("unexpected event {other:?}")),
                }
            }
        }
    }

    fn serve_fault(&self, addr: usize, page: &mut [u8]) -> Result<(), String> {
        let ps = page.len();
        let addr = addr & !(ps - 1);
        if addr < self.base || addr >= self.base + self.len {
            return Err(format!("fault at {addr:#x} outside the region"));
        }
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let off = (addr - self.base) as u64;
        // The last page of a file whose size is not a page multiple is padded with zeros.
        let n = (self.snapshot_len.saturating_sub(off)).min(ps as u64) as usize;
        page[n..].fill(0);
        self.snapshot
            .read_exact_at(&mut page[..n], off)
            .map_err(|e| format!("reading the snapshot at {off}: {e}"))?;
        let dst = addr as *mut libc::c_void;
        let result = if page.iter().all(|&b| b == 0) {
            // SAFETY: `dst` is a missing page of the region this program registered and owns;
            // its contents are defined to be the snapshot's, which are zero here.
            let r = unsafe { self.uffd.zeropage(dst, ps, true) };
            if r.is_ok() {
                self.stats.zeropages.fetch_add(1, Ordering::Relaxed);
            }
            r
        } else {
            // SAFETY: as above; `page` is a live buffer of `ps` bytes owned by this thread.
            let r = unsafe { self.uffd.copy(page.as_ptr().cast(), dst, ps, true) };
            if r.is_ok() {
                self.stats.copies.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_copied
                    .fetch_add(ps as u64, Ordering::Relaxed);
            }
            r
        };
        match result {
            Ok(_) => Ok(()),
            // Another handler (or an earlier delivery of the same fault) already placed the
            // page: the faulting thread may still sleep, so wake it.
            Err(Error::AlreadyMapped { .. }) => {
                self.stats.already_mapped.fetch_add(1, Ordering::Relaxed);
                self.uffd.wake(dst, ps).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

fn create_uffd() -> Result<Uffd, Error> {
    let mut b = UffdBuilder::new();
    b.non_blocking(true)
        .require_ioctls(IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE);
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
            let zeros = write_snapshot(&p, pages)?;
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
    let region: MemoryMapping = MemoryMappingBuilder::new(len)
        .private()
        .noreserve()
        .build()?;
    region.disable_hugepages()?;
    let uffd = create_uffd()?;
    let ioctls = uffd.register(region.as_ptr().cast(), len)?;
    println!(
        "region: {} MiB at {:#x}, registered MISSING (ioctls {ioctls:?}), {} handler thread(s)",
        len >> 20,
        region.as_ptr() as usize,
        cfg.threads
    );

    let stop = StopSignal::new()?;
    let restore = Restore {
        uffd: &uffd,
        snapshot: &snapshot,
        snapshot_len,
        base: region.as_ptr() as usize,
        len,
        stop: &stop,
        stats: Stats::default(),
        error: Mutex::new(None),
    };

    let (random_time, sequential_time) = std::thread::scope(|s| {
        for _ in 0..cfg.threads {
            s.spawn(|| restore.serve());
        }
        // Random order first (a guest waking up touches its working set here and there)...
        let mut order: Vec<usize> = (0..pages).collect();
        Rng::new(SEED).shuffle(&mut order);
        let t = Instant::now();
        let mut sink = 0u8;
        for &p in &order[..pages / 2] {
            sink ^= region.read_obj::<u8>(p * ps).unwrap_or(0);
        }
        let random_time = t.elapsed();
        // ...then sequentially (a scan over the rest of memory).
        let t = Instant::now();
        for p in 0..pages {
            sink ^= region.read_obj::<u8>(p * ps).unwrap_or(0);
        }
        let sequential_time = t.elapsed();
        std::hint::black_box(sink);
        stop.signal();
        (random_time, sequential_time)
    });
    if let Some(e) = restore.error.lock().unwrap().take() {
        return Err(fail(format!("fault handler: {e}")));
    }

    let st = &restore.stats;
    let faults = st.faults.load(Ordering::Relaxed);
    let copies = st.copies.load(Ordering::Relaxed);
    let zeropages = st.zeropages.load(Ordering::Relaxed);
    let elapsed = random_time + sequential_time;
    println!(
        "touched: {} pages in random order in {:.3} s, then all {pages} sequentially in {:.3} s",
        pages / 2,
        random_time.as_secs_f64(),
        sequential_time.as_secs_f64()
    );
    println!(
        "faults: {faults} (copy {copies}, zeropage {zeropages}, already mapped {})",
        st.already_mapped.load(Ordering::Relaxed)
    );
    println!(
        "bytes: {} restored ({} copied)",
        len,
        st.bytes_copied.load(Ordering::Relaxed)
    );
    println!("elapsed: {:.3} s", elapsed.as_secs_f64());
    println!("throughput: {:.1} MB/s", mb_per_s(len as u64, elapsed));

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
    if faults < pages as u64 {
        return Err(fail(format!("only {faults} faults for {pages} pages")));
    }
    if copies + zeropages != pages as u64 {
        return Err(fail(format!(
            "{copies} copies + {zeropages} zero pages placed for {pages} pages"
        )));
    }
    println!("verified: all {pages} pages ({len} bytes) match the snapshot");
    Ok(())
}

fn main() -> ExitCode {
    let cfg = parse();
    finish("lazy-restore", run(cfg))
}
