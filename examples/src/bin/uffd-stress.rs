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

use clap::{Parser, ValueEnum};
use test_kit::args::{self, number_in};
use test_kit::stress::{run_bounded, Config, MemKind, Outcome};

/// The long version of the stress test: locking threads race handler and background-copy
/// threads over bounced areas; every page counter must equal its shadow at the end.
#[derive(Parser, Debug)]
#[command(name = "uffd-stress", allow_negative_numbers = true)]
struct Cli {
    /// Bounces of each run.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = number_in(1usize, 1 << 20))]
    bounces: usize,
    /// Size of each area in MiB.
    #[arg(long, value_name = "M", default_value_t = 64, value_parser = number_in(1usize, 1 << 16))]
    mib: usize,
    /// The memory to run on.
    #[arg(long, value_enum, default_value_t = Mem::All)]
    mem: Mem,
    /// Runs with write-protect, without, or both.
    #[arg(long, value_enum, default_value_t = Wp::Both)]
    wp: Wp,
    /// Threads of each kind (default: the CPU count).
    #[arg(long, value_name = "T", value_parser = number_in(1usize, 1024))]
    threads: Option<usize>,
    /// Lock operations per bounce.
    #[arg(long, value_name = "K", default_value_t = 10_000, value_parser = number_in(1usize, 1 << 30))]
    ops: usize,
}

/// `--mem`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mem {
    Anon,
    Shmem,
    Hugetlb,
    All,
}

/// `--wp`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Wp {
    On,
    Off,
    Both,
}

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

fn main() -> ExitCode {
    let cli: Cli = args::parse();
    let (bounces, mib, ops) = (cli.bounces, cli.mib, cli.ops);
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let kinds = match cli.mem {
        Mem::Anon => vec![MemKind::Anon],
        Mem::Shmem => vec![MemKind::Shmem],
        Mem::Hugetlb => vec![MemKind::Hugetlb],
        Mem::All => vec![MemKind::Anon, MemKind::Shmem, MemKind::Hugetlb],
    };
    let wps = match cli.wp {
        Wp::On => vec![true],
        Wp::Off => vec![false],
        Wp::Both => vec![false, true],
    };
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
