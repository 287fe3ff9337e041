//! `uffd-bench`: what a page fault costs per userfaultfd resolution method, against the
//! kernel's own demand fault.
//!
//! ```text
//! cargo run --release -p examples --bin uffd-bench -- [-n PAGES] [--json] [-a read|write]
//!     [-p none|same|split] [-s] [-c ROUNDS] [SCENARIO... | all]
//! ```
//!
//! Each scenario maps PAGES 4 KiB pages (`MADV_NOHUGEPAGE`), makes every page fault once and
//! times the faulting thread(s) from the first touch to the last; setup is outside the timed
//! part, and before it twice the range is populated and freed (this VM returns idle memory to
//! its host, and first touches of reclaimed memory cost several times more). Every resolved
//! byte is verified; a scenario that fails verification prints no figure and the program exits
//! with status 1.
//!
//! Output, one line per scenario:
//! `scenario=NAME pages=N faults=F ns_per_fault=X ns_per_page=P gbps=Y verify=ok`, where `faults`
//! is the number of fault messages the handler received, `ns_per_fault` the timed span divided
//! by those faults (`-`, or `null` in JSON, when there were none, as for `ioctl-copy`),
//! `ns_per_page` the timed span divided by the pages made present (for `prefetch` one fault
//! serves 16 pages, for `ioctl-copy` it is per ioctl, for `wp-async` per dirty page) and `gbps`
//! the bytes made present per nanosecond. `--json` prints each line as a JSON
//! object instead. `-c ROUNDS` also builds `examples/bench-c/uffd-copy.c` with `cc -O2` and
//! runs it and the `copy` scenario alternately ROUNDS times, reporting the median of each and
//! their ratio.

mod cli;
mod compare;
mod handler;
mod mem;
mod outcome;
mod poison;

use std::process::ExitCode;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use libc::c_void;
use userfaultfd::{
    Error, FeatureFlags, PageMap, PageRegion, RegisterMode, ScanRequest, Uffd, UffdBuilder,
};

use cli::{Config, Pin};
use compare::compare_c;
use handler::{copy_span, serve, touch, Style};
use mem::{anon, low_byte, pattern, pin, shared, warm, Memfd, Pattern, PAGE};
use outcome::Outcome;

const PREFETCH: usize = 16 * PAGE;
const BATCH: usize = 64;

fn main() -> ExitCode {
    let cfg = cli::config();
    let mut failed = false;
    for &name in &cfg.scenarios {
        match run(name, &cfg) {
            Ok(o) => o.print(cfg.json),
            Err(e) => {
                eprintln!("scenario={name} verify=FAILED: {e}");
                failed = true;
            }
        }
    }
    if cfg.compare_rounds > 0 {
        if let Err(e) = compare_c(&cfg) {
            eprintln!("compare=copy FAILED: {e}");
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run(name: &'static str, cfg: &Config) -> Result<Outcome, String> {
    warm(cfg.pages * PAGE)?;
    match name {
        "touch" => touch_anon(cfg),
        "touch-shmem" => touch_shmem(cfg),
        "copy" => missing(name, cfg, Method::Copy, 1, 1),
        "copy-batch" => missing(name, cfg, Method::Copy, 1, BATCH),
        "zeropage" => missing(name, cfg, Method::Zero, 1, 1),
        "copy-2t" => missing(name, cfg, Method::Copy, 2, 1),
        "prefetch" => missing(name, cfg, Method::Prefetch, 1, 1),
        "move" => missing(name, cfg, Method::Move, 1, 1),
        "poison" => poison_scenario(cfg),
        "wp" => wp(cfg),
        "minor" => minor(cfg),
        "ioctl-copy" => ioctl_copy(cfg),
        "wp-async" => wp_async(cfg),
        _ => Err(format!("unknown scenario {name}")),
    }
}

fn new_uffd(features: FeatureFlags) -> Result<Uffd, String> {
    UffdBuilder::new()
        .non_blocking(true)
        .require_features(features)
        .create()
        .map_err(|e| format!("creating the userfaultfd: {e}"))
}

fn style(cfg: &Config, batch: usize) -> Style {
    Style {
        spin: cfg.spin,
        batch,
    }
}

fn pin_handler(cfg: &Config) {
    if cfg.pin != Pin::None {
        pin(0);
    }
}

fn pin_faulter(cfg: &Config) {
    match cfg.pin {
        Pin::None => {}
        Pin::Same => pin(0),
        Pin::Split => pin(1),
    }
}

/// The byte a write touch stores into page `i` of a range filled with [`pattern`].
fn pattern_byte(i: usize) -> u8 {
    low_byte(pattern(i, 0))
}

/// Runs `threads` faulting threads over disjoint equal parts of `[base, base + pages)` while
/// `handler` (if any) runs on its own thread; returns the handler's result and the span from
/// the first thread's first touch to the last thread's last touch.
fn fault_in<H>(
    cfg: &Config,
    base: usize,
    pages: usize,
    threads: usize,
    write: bool,
    byte: fn(usize) -> u8,
    handler: Option<H>,
) -> (Result<usize, String>, u128)
where
    H: FnOnce() -> Result<usize, String> + Send,
{
    let start = Barrier::new(threads);
    thread::scope(|s| {
        let h = handler.map(|h| {
            s.spawn(move || {
                pin_handler(cfg);
                h()
            })
        });
        let part = pages / threads;
        let touchers: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                let count = if t + 1 == threads {
                    pages - part * t
                } else {
                    part
                };
                s.spawn(move || {
                    pin_faulter(cfg);
                    start.wait();
                    touch(base, part * t, count, write, byte)
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> = touchers
            .into_iter()
            .map(|t| t.join().expect("faulting thread"))
            .collect();
        let t0 = spans.iter().map(|s| s.0).min().expect("one thread");
        let t1 = spans.iter().map(|s| s.1).max().expect("one thread");
        let res = match h {
            Some(h) => h.join().unwrap_or_else(|_| Err("handler panicked".into())),
            None => Ok(0),
        };
        (res, (t1 - t0).as_nanos())
    })
}

fn outcome(name: &'static str, cfg: &Config, faults: usize, ns: u128) -> Outcome {
    Outcome {
        name,
        pages: cfg.pages,
        faults,
        ns,
        units: cfg.pages,
        extra: Vec::new(),
    }
}

fn touch_anon(cfg: &Config) -> Result<Outcome, String> {
    let n = cfg.pages;
    let dst = anon(n * PAGE)?;
    let (_, ns) = fault_in::<fn() -> _>(cfg, dst.addr(), n, 1, cfg.write, |_| 0, None);
    dst.verify(n, |_, _| 0)?;
    Ok(outcome("touch", cfg, n, ns))
}

fn touch_shmem(cfg: &Config) -> Result<Outcome, String> {
    let n = cfg.pages;
    let fd = Memfd::new(n * PAGE)?;
    let view = shared(fd.0, n * PAGE)?;
    let filler = shared(fd.0, n * PAGE)?;
    filler.fill_pattern();
    let (_, ns) = fault_in::<fn() -> _>(cfg, view.addr(), n, 1, cfg.write, pattern_byte, None);
    view.verify(n, pattern)?;
    Ok(outcome("touch-shmem", cfg, n, ns))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Copy,
    Zero,
    Prefetch,
    Move,
}

/// The MISSING scenarios: copy, copy-batch, copy-2t, zeropage, prefetch, move.
fn missing(
    name: &'static str,
    cfg: &Config,
    method: Method,
    threads: usize,
    batch: usize,
) -> Result<Outcome, String> {
    let n = cfg.pages;
    let len = n * PAGE;
    let dst = anon(len)?;
    let src = anon(len)?;
    if method != Method::Zero {
        src.fill_pattern();
    }
    let uffd = new_uffd(FeatureFlags::empty())?;
    uffd.register(dst.ptr(), len)
        .map_err(|e| format!("register: {e}"))?;
    let (base, sbase) = (dst.addr(), src.addr());
    let uffd_ref = &uffd;
    let resolve = move |addr: *mut c_void| -> Result<usize, Error> {
        let off = addr as usize - base;
        match method {
            Method::Copy => copy_span(uffd_ref, sbase + off, base + off, PAGE),
            Method::Prefetch => {
                let chunk = off & !(PREFETCH - 1);
                let l = PREFETCH.min(len - chunk);
                copy_span(uffd_ref, sbase + chunk, base + chunk, l)
            }
            // SAFETY: `addr` is a missing page of the registered range this scenario owns.
            Method::Zero => match unsafe { uffd_ref.zeropage(addr, PAGE, true) } {
                Ok(_) => Ok(1),
                Err(Error::AlreadyMapped { .. }) => uffd_ref.wake(addr, PAGE).map(|_| 0),
                Err(e) => Err(e),
            },
            Method::Move => {
                // SAFETY: the source page is a populated, exclusive page of `src` that nothing
                // references; `addr` is a missing page of the registered range.
                match unsafe { uffd_ref.r#move((sbase + off) as *mut c_void, addr, PAGE, true) } {
                    Ok(_) => Ok(1),
                    Err(Error::AlreadyMapped { .. }) => uffd_ref.wake(addr, PAGE).map(|_| 0),
                    Err(e) => Err(e),
                }
            }
        }
    };
    let st = style(cfg, batch);
    let range = (dst.addr(), len);
    let byte: fn(usize) -> u8 = if method == Method::Zero {
        |_| 0
    } else {
        pattern_byte
    };
    let (res, ns) = fault_in(
        cfg,
        base,
        n,
        threads,
        cfg.write,
        byte,
        Some(move || serve(uffd_ref, st, range, n, resolve)),
    );
    let faults = res?;
    match method {
        Method::Zero => dst.verify(n, |_, _| 0)?,
        _ => dst.verify(n, pattern)?,
    }
    if method == Method::Move {
        // The sources became holes: reading them now gives zeroes.
        src.verify(n, |_, _| 0)
            .map_err(|e| format!("moved-out source: {e}"))?;
    }
    Ok(outcome(name, cfg, faults, ns))
}

fn poison_scenario(cfg: &Config) -> Result<Outcome, String> {
    use std::os::fd::AsRawFd;
    let n = cfg.pages;
    let len = n * PAGE;
    let dst = anon(len)?;
    let marker = anon(PAGE)?;
    // SAFETY: `marker` is a live one-page mapping nothing else uses.
    unsafe { std::ptr::write_bytes(marker.ptr().cast::<u8>(), poison::MARKER_BYTE, PAGE) };
    let uffd = new_uffd(FeatureFlags::empty())?;
    uffd.register(dst.ptr(), len)
        .map_err(|e| format!("register: {e}"))?;
    poison::arm(uffd.as_raw_fd(), dst.addr(), n, marker.addr())?;
    let uffd_ref = &uffd;
    let st = style(cfg, 1);
    let range = (dst.addr(), len);
    let (res, ns) = fault_in(
        cfg,
        dst.addr(),
        n,
        1,
        cfg.write,
        |_| poison::MARKER_BYTE,
        Some(move || {
            serve(uffd_ref, st, range, n, |addr| {
                // SAFETY: `addr` is a page of `dst`, a mapping this benchmark owns and reaches
                // only through raw pointers; the SIGBUS handler armed above resolves the trap.
                match unsafe { uffd_ref.poison(addr, PAGE, true) } {
                    Ok(_) => Ok(1),
                    // A fault delivered again after its page was poisoned: only wake it.
                    Err(Error::AlreadyMapped { .. }) => uffd_ref.wake(addr, PAGE).map(|_| 0),
                    Err(e) => Err(e),
                }
            })
        }),
    );
    let (signals, bad) = poison::disarm();
    let faults = res?;
    if signals != n || bad != 0 {
        return Err(format!(
            "{signals} SIGBUS for {n} poisoned pages, {bad} out of order or not recovered"
        ));
    }
    let m = u64::from_ne_bytes([poison::MARKER_BYTE; 8]);
    dst.verify(n, |_, _| m)?;
    Ok(outcome("poison", cfg, faults, ns))
}

/// The byte the `wp` writer stores: different from what the page held.
fn wp_byte(i: usize) -> u8 {
    !pattern_byte(i)
}

fn wp_expected(i: usize, j: usize) -> u64 {
    let w = pattern(i, j);
    if j == 0 {
        (w & !0xff) | u64::from(wp_byte(i))
    } else {
        w
    }
}

fn wp(cfg: &Config) -> Result<Outcome, String> {
    let n = cfg.pages;
    let len = n * PAGE;
    let dst = anon(len)?;
    dst.fill_pattern();
    let uffd = new_uffd(FeatureFlags::empty())?;
    uffd.register_with_mode(dst.ptr(), len, RegisterMode::WRITE_PROTECT)
        .map_err(|e| format!("register: {e}"))?;
    uffd.write_protect(dst.ptr(), len)
        .map_err(|e| format!("write_protect: {e}"))?;
    let uffd_ref = &uffd;
    let st = style(cfg, 1);
    let range = (dst.addr(), len);
    let base = dst.addr();
    // Which pages were unprotected: a fault delivered again counts once (allocated before the
    // timed part).
    let mut seen = vec![false; n];
    let (res, ns) = fault_in(
        cfg,
        dst.addr(),
        n,
        1,
        true,
        wp_byte,
        Some(move || {
            serve(uffd_ref, st, range, n, |addr| {
                let first = !std::mem::replace(&mut seen[(addr as usize - base) / PAGE], true);
                uffd_ref
                    .remove_write_protection(addr, PAGE, true)
                    .map(|_| usize::from(first))
            })
        }),
    );
    let faults = res?;
    dst.verify(n, wp_expected)?;
    Ok(outcome("wp", cfg, faults, ns))
}

fn minor(cfg: &Config) -> Result<Outcome, String> {
    let n = cfg.pages;
    let len = n * PAGE;
    let fd = Memfd::new(len)?;
    let view = shared(fd.0, len)?;
    let filler = shared(fd.0, len)?;
    filler.fill_pattern();
    let uffd = new_uffd(FeatureFlags::empty())?;
    uffd.register_with_mode(view.ptr(), len, RegisterMode::MINOR)
        .map_err(|e| format!("register: {e}"))?;
    let uffd_ref = &uffd;
    let st = style(cfg, 1);
    let range = (view.addr(), len);
    let (res, ns) = fault_in(
        cfg,
        view.addr(),
        n,
        1,
        cfg.write,
        pattern_byte,
        Some(move || {
            serve(uffd_ref, st, range, n, |addr| {
                match uffd_ref.r#continue(addr, PAGE, true) {
                    Ok(_) => Ok(1),
                    Err(Error::AlreadyMapped { .. }) => uffd_ref.wake(addr, PAGE).map(|_| 0),
                    Err(e) => Err(e),
                }
            })
        }),
    );
    let faults = res?;
    view.verify(n, pattern)?;
    Ok(outcome("minor", cfg, faults, ns))
}

fn ioctl_copy(cfg: &Config) -> Result<Outcome, String> {
    let n = cfg.pages;
    let len = n * PAGE;
    let dst = anon(len)?;
    let src = anon(len)?;
    src.fill_pattern();
    let uffd = new_uffd(FeatureFlags::empty())?;
    uffd.register(dst.ptr(), len)
        .map_err(|e| format!("register: {e}"))?;
    let ns = thread::scope(|s| {
        s.spawn(|| {
            pin_faulter(cfg);
            let t0 = Instant::now();
            for i in 0..n {
                let off = i * PAGE;
                // SAFETY: `dst + off` is a missing page of the registered range this scenario
                // owns; `src + off` a filled page of a live mapping.
                let r = unsafe {
                    uffd.copy(
                        (src.addr() + off) as *const c_void,
                        (dst.addr() + off) as *mut c_void,
                        PAGE,
                        false,
                    )
                };
                if let Err(e) = r {
                    return Err(format!("copy page {i}: {e}"));
                }
            }
            Ok((Instant::now() - t0).as_nanos())
        })
        .join()
        .expect("copying thread")
    })?;
    dst.verify(n, pattern)?;
    Ok(outcome("ioctl-copy", cfg, 0, ns))
}

/// A deterministic random tenth of `0..n`, in random order (xorshift64* and a partial
/// Fisher-Yates shuffle).
fn dirty_set(n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let k = (n / 10).max(1);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..k {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let j = i + (r % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

fn wp_async(cfg: &Config) -> Result<Outcome, String> {
    let n = cfg.pages;
    let len = n * PAGE;
    let dirty = dirty_set(n);
    let k = dirty.len();
    let mut want = vec![false; n];
    for &i in &dirty {
        want[i] = true;
    }
    let expected = |i: usize, j: usize| {
        if want[i] {
            wp_expected(i, j)
        } else {
            pattern(i, j)
        }
    };
    let write_dirty = |base: usize| {
        pin_faulter(cfg);
        let t0 = Instant::now();
        for &i in &dirty {
            // SAFETY: page `i` lies in the scenario's live, populated mapping; the store may
            // fault (synchronous WP) and wait for the handler.
            unsafe { std::ptr::write_volatile((base + i * PAGE) as *mut u8, wp_byte(i)) };
        }
        (Instant::now() - t0).as_nanos()
    };

    // Asynchronous: the writer is not stopped; the dirty set is collected afterwards.
    let dst = anon(len)?;
    dst.fill_pattern();
    let uffd = new_uffd(FeatureFlags::WP_ASYNC)?;
    uffd.register_with_mode(dst.ptr(), len, RegisterMode::WRITE_PROTECT)
        .map_err(|e| format!("register: {e}"))?;
    uffd.write_protect(dst.ptr(), len)
        .map_err(|e| format!("write_protect: {e}"))?;
    let pagemap = PageMap::open().map_err(|e| format!("pagemap: {e}"))?;
    let mut scratch = vec![PageRegion::default(); k + 1];
    let mut found = vec![false; n];
    let write_ns = thread::scope(|s| s.spawn(|| write_dirty(dst.addr())).join()).expect("writer");
    let t0 = Instant::now();
    let mut bad = None;
    pagemap
        .for_each_written(dst.addr(), len, true, &mut scratch, |r| {
            for p in (r.start()..r.end()).step_by(PAGE) {
                let i = (p - dst.addr()) / PAGE;
                if found[i] {
                    bad = Some(i);
                }
                found[i] = true;
            }
        })
        .map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
    let scan_ns = (Instant::now() - t0).as_nanos();
    if let Some(i) = bad {
        return Err(format!("page {i} reported twice"));
    }
    if found != want {
        return Err("PAGEMAP_SCAN reported a different set than was written".into());
    }
    let again = pagemap
        .scan(&ScanRequest::written(dst.addr(), len), &mut scratch)
        .map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
    if again.regions != 0 {
        return Err("the scan did not re-protect the written pages".into());
    }
    dst.verify(n, expected)?;

    // Synchronous: every first write faults and the handler records the page.
    drop(dst);
    let sync = anon(len)?;
    sync.fill_pattern();
    let uffd = new_uffd(FeatureFlags::empty())?;
    uffd.register_with_mode(sync.ptr(), len, RegisterMode::WRITE_PROTECT)
        .map_err(|e| format!("register: {e}"))?;
    uffd.write_protect(sync.ptr(), len)
        .map_err(|e| format!("write_protect: {e}"))?;
    let mut seen = vec![false; n];
    let base = sync.addr();
    let (res, sync_ns) = thread::scope(|s| {
        let uffd = &uffd;
        let seen = &mut seen;
        let st = style(cfg, 1);
        let h = s.spawn(move || {
            pin_handler(cfg);
            serve(uffd, st, (base, len), k, |addr| {
                // A fault delivered again counts once.
                let first = !std::mem::replace(&mut seen[(addr as usize - base) / PAGE], true);
                uffd.remove_write_protection(addr, PAGE, true)
                    .map(|_| usize::from(first))
            })
        });
        let ns = s.spawn(|| write_dirty(base)).join().expect("writer");
        (
            h.join().unwrap_or_else(|_| Err("handler panicked".into())),
            ns,
        )
    });
    res?;
    if seen != want {
        return Err("synchronous WP faults reported a different set than was written".into());
    }
    sync.verify(n, expected)?;
    Ok(Outcome {
        name: "wp-async",
        pages: n,
        faults: k,
        ns: write_ns + scan_ns,
        units: k,
        extra: vec![
            ("write_ns", write_ns.to_string()),
            ("scan_ns", scan_ns.to_string()),
            (
                "sync_ns_per_fault",
                format!("{:.1}", sync_ns as f64 / k as f64),
            ),
        ],
    })
}
