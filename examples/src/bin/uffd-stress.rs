//! `uffd-stress`: the long version of the stress test in `userfaultfd/tests/stress.rs`, in the
//! style of the kernel's `uffd-stress` selftest.
//!
//! ```text
//! uffd-stress [--bounces N] [--mib M] [--mem anon|shmem|hugetlb|all] [--wp on|off|both]
//!             [--threads T] [--ops K]
//! ```
//!
//! Each area is `M` MiB (in 4 KiB pages, or 2 MiB pages for hugetlb), bounced `N` times; every
//! page counter must equal its shadow at the end. Exits 1 on any mismatch, error or hang.
//!
//! It says what it is about to do, names each run as it starts and, while a run lasts, prints
//! how long it has been going every [`TICK`], so that a long run (the defaults take about a
//! minute) is never silent.

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../../../userfaultfd/tests/stress_common/mod.rs"]
mod stress_common;

use stress_common::{run_bounded, Config, MemKind, Outcome};

const USAGE: &str = "usage: uffd-stress [--bounces N] [--mib M] [--mem anon|shmem|hugetlb|all] \
[--wp on|off|both] [--threads T] [--ops K]";

/// How often a running configuration reports that it is still running.
const TICK: Duration = Duration::from_secs(5);

/// Runs `f` while a thread prints `label` and the elapsed time every [`TICK`].
fn with_progress<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let (done, wait) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let start = Instant::now();
            while let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(TICK) {
                println!(
                    "        {label}: still running after {:.0?}",
                    start.elapsed()
                );
            }
        });
        let r = f();
        drop(done);
        r
    })
}

fn usage(msg: &str) -> ! {
    eprintln!("uffd-stress: {msg}\n{USAGE}");
    std::process::exit(2);
}

fn num(v: Option<String>, flag: &str) -> usize {
    v.and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| usage(&format!("{flag} needs a positive number")))
}

fn main() -> ExitCode {
    let mut bounces = 64;
    let mut mib = 64;
    let mut kinds = vec![MemKind::Anon, MemKind::Shmem, MemKind::Hugetlb];
    let mut wps = vec![false, true];
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut ops = 10_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bounces" => bounces = num(args.next(), "--bounces"),
            "--mib" => mib = num(args.next(), "--mib"),
            "--threads" => threads = num(args.next(), "--threads"),
            "--ops" => ops = num(args.next(), "--ops"),
            "--mem" => {
                kinds = match args.next().as_deref() {
                    Some("anon") => vec![MemKind::Anon],
                    Some("shmem") => vec![MemKind::Shmem],
                    Some("hugetlb") => vec![MemKind::Hugetlb],
                    Some("all") => vec![MemKind::Anon, MemKind::Shmem, MemKind::Hugetlb],
                    _ => usage("--mem takes anon, shmem, hugetlb or all"),
                }
            }
            "--wp" => {
                wps = match args.next().as_deref() {
                    Some("on") => vec![true],
                    Some("off") => vec![false],
                    Some("both") => vec![false, true],
                    _ => usage("--wp takes on, off or both"),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let runs = kinds.len() * wps.len();
    println!(
        "uffd-stress: {runs} run(s) ({kinds:?} x wp {wps:?}), each {mib} MiB bounced {bounces} \
         times by {threads} thread(s) of {ops} lock operations per bounce"
    );
    let mut failed = false;
    let mut run = 0;
    for &kind in &kinds {
        for &wp in &wps {
            run += 1;
            let psize = if kind == MemKind::Hugetlb {
                2 << 20
            } else {
                userfaultfd::page_size()
            };
            let pages = (mib << 20).div_ceil(psize).max(1);
            let cfg = Config {
                kind,
                pages,
                bounces,
                wp,
                threads,
                ops_per_bounce: ops,
                bounce_limit: Duration::from_secs(120),
            };
            let start = Instant::now();
            let limit = Duration::from_secs(120) * bounces as u32;
            let label = format!("[{run}/{runs}] {kind:?} wp={wp}");
            println!("running {label}: {pages} pages x {bounces} bounces");
            match with_progress(&label, || run_bounded(cfg, limit)) {
                Ok(Outcome::Done(r)) => println!(
                    "ok      {kind:?} wp={wp}: {pages} pages x {bounces} bounces in {:.1?}: {r:?}",
                    start.elapsed()
                ),
                Ok(Outcome::Skipped(why)) => println!("skipped {kind:?} wp={wp}: {why}"),
                Err(e) => {
                    eprintln!("FAILED  {kind:?} wp={wp}: {e}");
                    failed = true;
                    if e.contains("no result after") {
                        // Threads are stuck in faults nobody will resolve: leave now.
                        std::process::exit(1);
                    }
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
