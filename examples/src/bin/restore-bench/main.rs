//! `restore-bench`: how fast a memory image gets usable, and fully present, when it is restored
//! eagerly, mapped, served naively with userfaultfd, or served by the `userfaultfd::serve`
//! runtime.
//!
//! ```text
//! cargo run --release -p examples --bin restore-bench -- [--mib N] [--working-set PCT]
//!     [--threads T] [--source-mbps M] [--source-latency-us L] [--repeat R] [--json]
//!     [--source URL [--endpoint URL] [--source-option KEY=VALUE]...] [MODE...]
//! ```
//!
//! The image is a file of N MiB (default 256) in the temporary directory (removed at exit):
//! pattern pages, about one page in eight all zero. Its page cache is warmed before every run,
//! so unthrottled runs measure memory and fault handling, not the disk. A workload of T threads
//! (default 2) then reads the first word of PCT % of the pages (default 25; a fixed random
//! order split among the threads: a restored program touching its working set), then of every
//! page (each thread a contiguous share, sequentially: the rest of memory).
//!
//! The modes, run in the order given (default `eager mmap naive serve serve-record
//! serve-replay serve-replay-wait`),
//! `--repeat R` times
//! round-robin:
//!
//! - `eager`: what a restore without userfaultfd does. T threads `pread` the whole image into
//!   fresh anonymous memory, then the workload runs. Nothing runs until everything is loaded:
//!   the time to first touch is the whole load.
//! - `mmap`: the file mapped `MAP_PRIVATE`, so the kernel's own page-cache faults (with their
//!   fault-around) populate it. A reference for the cheapest lazy population there is; it is
//!   not a restore into anonymous memory (the pages stay the page cache's until written).
//! - `naive`: the hand-written userfaultfd handler every project starts with (as
//!   `lazy-restore`): one thread, one `pread` and one `UFFDIO_COPY`/`UFFDIO_ZEROPAGE` per
//!   fault, no prefetch, no background fill. Its region is populated when the workload has
//!   touched every page.
//! - `serve`: the `userfaultfd::serve` runtime with its defaults (prefetch around faults,
//!   background fill), over `MappedFileSource` (copied straight from the page cache), or over
//!   `FileSource` behind the throttle. Populated when `wait_populated` returned and the
//!   workload ended. The run records its working set (the order of its demand faults).
//! - `serve-record`: as `serve`, recording the working set exactly (REAP's record phase): no
//!   prefetch or background fill until every workload thread is done with its working set,
//!   so each page the workload touches is demanded and recorded; then the server prefetches
//!   and fills as `serve` does. Slower than `serve` for the working set; it is a profiling
//!   run.
//! - `serve-replay`: as `serve`, replaying the working set the latest `serve` or
//!   `serve-record` run recorded (it needs one before it): the recorded pages (a `serve-record`
//!   set) or chunks (a `serve` set, which holds one page per chunk touched) are copied first,
//!   in demand order, by several threads, before background fill. This is what a platform
//!   that restores the same snapshot many times does; it pays off when the source is slow.
//!   The workload starts at once, so it overlaps the replay, faulting where it catches up with
//!   it.
//! - `serve-replay-wait`: as `serve-replay`, but the workload starts when the replay is done
//!   (`Server::wait_replayed`), as a VMM resuming its vCPUs once the working set is in (REAP's
//!   prefetch, then invoke): its first touch comes later, its working set runs without faults.
//!
//! `--source-mbps M` and `--source-latency-us L` throttle every read of the image (a shared
//! link of M MB/s, and L µs per request) to stand for a disk or a network peer: the `eager`
//! preads, the `naive` handler's reads and the server's (the throttled source has no direct
//! view, so the server reads into its buffers). `mmap` is never throttled.
//!
//! `--source URL` (feature `object-store`: `cargo run --release -p examples --features
//! object-store --bin restore-bench -- --source s3://BUCKET/KEY --endpoint URL`) puts the image
//! in object storage: it is uploaded to the object (overwriting it) with the client the source
//! uses (`--endpoint`, `--source-option KEY=VALUE` and the `AWS_*` environment), then `eager`
//! downloads every chunk (ranged `GET`s of the source's chunk size, as many in flight as the
//! source allows) into fresh memory before the workload runs, and `serve` and `naive` read
//! through `ObjectStoreSource` (a fresh one per run: its cache starts cold; `serve` prefetches
//! whole chunks). The default modes are then `eager serve`; `mmap` is refused. Their lines
//! also carry `gets` (ranged `GET`s sent) and `gets_per_chunk` (per chunk of the image).
//!
//! Figures, measured from the moment the region is ready (registered or served; for `eager`,
//! before the load starts): `first_touch_us` (the workload's first access completed),
//! `working_set_ms` (every thread done with its working set), `populated_ms` (every page
//! present), `demand_faults` (fault messages handled: 0 for eager and mmap) and `gbps` (image
//! bytes per nanosecond of `populated_ms`). Then every byte of the region is compared with the
//! image. One line per run:
//! `mode=NAME first_touch_us=A working_set_ms=B populated_ms=C demand_faults=D gbps=E verify=ok`
//! (`--json`: one JSON object per line with the same keys); a run that fails prints
//! `mode=NAME verify=FAILED: reason` and the program exits with status 1 at the end. With
//! `--repeat` above 1 the median of each figure per mode follows
//! (`median mode=NAME runs=K ...`). Details of each `serve` run's statistics (pages by path,
//! fault latency) go to stderr, with the setup.

mod modes;
#[cfg(feature = "object-store")]
mod objstore;
mod source;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use examples::{page_size, write_pattern_file, TempFile, EXIT_FAILURE};
use userfaultfd::mmap::MemoryMapping;

use modes::{Figures, Outcome, Plan, WorkingSetUse};
use source::Throttle;

const USAGE: &str = "\
usage: restore-bench [--mib N] [--working-set PCT] [--threads T] [--source-mbps M]
                     [--source-latency-us L] [--repeat R] [--json]
                     [--source URL [--endpoint URL] [--source-option KEY=VALUE]...] [MODE...]

Restores an N MiB image and runs a workload on it, per mode, timing how soon it is usable
and fully present; then verifies every byte.

  --mib N                image size (default 256)
  --working-set PCT      share of the pages the workload touches first, in random order
                         (default 25)
  --threads T            workload threads, and eager loader threads (default 2)
  --source-mbps M        throttle every image read to M MB/s (shared)
  --source-latency-us L  ... and to L microseconds per request
  --repeat R             run the modes R times, alternating, and print medians (default 1)
  --json                 one JSON object per line
  --source URL           the image in object storage (s3://BUCKET/KEY, file:///PATH; feature
                         object-store): uploaded there first, then restored from there by
                         eager (a download) and serve (default modes: eager serve)
  --endpoint URL         the S3 endpoint (e.g. http://127.0.0.1:9000; http allowed)
  --source-option K=V    an object_store setting (access_key_id=..., region=...), repeatable;
                         the environment (AWS_*) is read first
modes: eager mmap naive serve serve-record serve-replay serve-replay-wait (default: all, in
this order; the replay modes replay the working set the latest serve or serve-record run
recorded)";

const MODES: [&str; 7] = [
    "eager",
    "mmap",
    "naive",
    "serve",
    "serve-record",
    "serve-replay",
    "serve-replay-wait",
];
const SEED: u64 = 0x1_3a6e_5eed;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "restore-bench", about = "How fast a restored memory image gets usable and fully present, per restore method.", after_help = USAGE)]
struct Cli {
    /// Image size in MiB.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 16))]
    mib: u64,
    /// Share of the pages the workload touches first, in random order, in percent.
    #[arg(long = "working-set", value_name = "PCT", default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=100))]
    working_set: u64,
    /// Workload threads, and eager loader threads.
    #[arg(long, value_name = "T", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Throttle every image read to M MB/s (shared).
    #[arg(long = "source-mbps", value_name = "M", value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    source_mbps: Option<u64>,
    /// ... and to L microseconds per request.
    #[arg(long = "source-latency-us", value_name = "L", value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    source_latency_us: Option<u64>,
    /// Run the modes R times, alternating, and print medians.
    #[arg(long, value_name = "R", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeat: u64,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// The image in object storage (s3://BUCKET/KEY, file:///PATH): uploaded, then restored
    /// from there (feature object-store).
    #[arg(long, value_name = "URL")]
    source: Option<String>,
    /// The S3 endpoint of --source (http allowed).
    #[arg(long, value_name = "URL", requires = "source")]
    endpoint: Option<String>,
    /// An object_store setting of --source, KEY=VALUE; repeatable.
    #[arg(long = "source-option", value_name = "KEY=VALUE", requires = "source")]
    source_option: Vec<String>,
    /// Modes, run in this order.
    #[arg(value_name = "MODE", value_parser = MODES)]
    modes: Vec<String>,
}

struct Config {
    mib: usize,
    working_set: usize,
    threads: usize,
    source_mbps: Option<u64>,
    source_latency_us: Option<u64>,
    repeat: usize,
    json: bool,
    #[cfg_attr(not(feature = "object-store"), allow(dead_code))]
    source: Option<(String, Vec<String>)>,
    modes: Vec<&'static str>,
}

/// Prints `msg` and the usage, exits with status 2.
fn usage_error(msg: &str) -> ! {
    eprintln!("restore-bench: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(i32::from(examples::EXIT_USAGE));
}

fn parse() -> Config {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("bad arguments");
                usage_error(first.trim_start_matches("error: "))
            }
        },
    };
    let mut modes: Vec<&'static str> = cli
        .modes
        .iter()
        .filter_map(|m| MODES.iter().copied().find(|n| n == m))
        .collect();
    let source = cli.source.map(|url| {
        let mut options = Vec::new();
        if let Some(ep) = &cli.endpoint {
            options.push(format!("endpoint={ep}"));
            if ep.starts_with("http://") {
                options.push("allow_http=true".into());
            }
        }
        options.extend(cli.source_option);
        (url, options)
    });
    if source.is_some() {
        if !cfg!(feature = "object-store") {
            usage_error(
                "--source needs the object-store feature (cargo run --release -p examples \
                 --features object-store --bin restore-bench -- ...)",
            );
        }
        if modes.contains(&"mmap") {
            usage_error("mmap maps a local file: not with --source");
        }
        if modes.is_empty() {
            modes.extend(["eager", "serve"]);
        }
    }
    if modes.is_empty() {
        modes.extend(MODES);
    }
    let first_serve = modes
        .iter()
        .position(|&m| m == "serve" || m == "serve-record");
    let first_replay = modes
        .iter()
        .position(|&m| m == "serve-replay" || m == "serve-replay-wait");
    if let Some(r) = first_replay {
        if first_serve.map_or(true, |s| s > r) {
            usage_error(
                "serve-replay replays what a serve or serve-record run recorded: put one before it",
            );
        }
    }
    Config {
        mib: cli.mib as usize,
        working_set: cli.working_set as usize,
        threads: cli.threads as usize,
        source_mbps: cli.source_mbps,
        source_latency_us: cli.source_latency_us,
        repeat: cli.repeat as usize,
        json: cli.json,
        source,
        modes,
    }
}

/// What every mode run shares.
pub struct Setup {
    /// The image file.
    pub path: PathBuf,
    /// Its length in bytes (whole pages).
    pub len: usize,
    /// The workload.
    pub plan: Arc<Plan>,
    /// The throttle of image reads, if any.
    pub throttle: Option<Arc<Throttle>>,
    /// How long a mode's workload may take before the mode counts as stuck.
    pub deadline: Duration,
    /// The working set the latest `serve` run recorded, for `serve-replay`.
    pub recorded: std::sync::Mutex<Option<userfaultfd::serve::WorkingSet>>,
    /// The image in object storage (`--source`), restored from there by eager, naive and serve.
    #[cfg(feature = "object-store")]
    pub object: Option<objstore::ObjectImage>,
}

/// Reads the whole image once, so its page cache is warm.
fn warm_page_cache(path: &PathBuf) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// Touches and frees `2 * len` bytes of anonymous memory, so the run's fresh memory is not the
/// first this process takes back from the host (this VM returns idle memory to its host, and
/// first touches of reclaimed memory cost several times more).
fn warm_memory(len: usize) -> Result<(), String> {
    let m = MemoryMapping::new_private(2 * len).map_err(|e| e.to_string())?;
    let ps = page_size();
    for off in (0..2 * len).step_by(ps) {
        m.write_obj(1u8, off).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Compares every byte of `memory` with the image.
fn verify(memory: &MemoryMapping, path: &PathBuf, len: usize) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let chunk = 1 << 20;
    let mut want = vec![0u8; chunk];
    let mut got = vec![0u8; chunk];
    let mut off = 0;
    while off < len {
        let n = chunk.min(len - off);
        file.read_exact_at(&mut want[..n], off as u64)
            .map_err(|e| format!("reading the image at {off}: {e}"))?;
        memory
            .read_slice(&mut got[..n], off)
            .map_err(|e| e.to_string())?;
        if let Some(i) = want[..n].iter().zip(&got[..n]).position(|(a, b)| a != b) {
            return Err(format!(
                "byte {} (page {}) is {:#04x}, the image has {:#04x}",
                off + i,
                (off + i) / page_size(),
                got[i],
                want[i]
            ));
        }
        off += n;
    }
    Ok(())
}

fn run_mode(mode: &str, setup: &Setup) -> Result<Outcome, String> {
    warm_memory(setup.len)?;
    warm_page_cache(&setup.path).map_err(|e| format!("warming the page cache: {e}"))?;
    let outcome = match mode {
        "eager" => modes::eager(setup),
        "mmap" => modes::mmap(setup),
        "naive" => modes::naive(setup),
        "serve" => modes::serve(setup, WorkingSetUse::Record),
        "serve-record" => modes::serve(setup, WorkingSetUse::RecordExact),
        "serve-replay" => modes::serve(setup, WorkingSetUse::Replay),
        "serve-replay-wait" => modes::serve(setup, WorkingSetUse::ReplayThenRun),
        _ => unreachable!("modes are checked when parsing"),
    }?;
    verify(&outcome.memory, &setup.path, setup.len)?;
    Ok(outcome)
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The figures as `(key, value)` pairs, in output order.
fn fields(f: &Figures) -> [(&'static str, String); 5] {
    [
        ("first_touch_us", format!("{:.1}", f.first_touch_us)),
        ("working_set_ms", format!("{:.3}", f.working_set_ms)),
        ("populated_ms", format!("{:.3}", f.populated_ms)),
        ("demand_faults", f.demand_faults.to_string()),
        ("gbps", format!("{:.3}", f.gbps)),
    ]
}

/// Prints one line: leading `(key, value)` pairs (values already JSON where `json`), the
/// figures, then trailing pairs.
fn print_line(
    json: bool,
    lead: &[(&str, String)],
    figures: Option<&Figures>,
    tail: &[(&str, String)],
) {
    let figs = figures.map(fields);
    let all = lead
        .iter()
        .cloned()
        .chain(figs.into_iter().flatten())
        .chain(tail.iter().cloned());
    let line = if json {
        let parts: Vec<String> = all.map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", parts.join(","))
    } else {
        let parts: Vec<String> = all.map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(" ")
    };
    println!("{line}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_medians(json: bool, results: &[(&'static str, Vec<Figures>)]) {
    for (mode, runs) in results {
        if runs.is_empty() {
            continue;
        }
        let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        let figures = Figures {
            first_touch_us: m(|f| f.first_touch_us),
            working_set_ms: m(|f| f.working_set_ms),
            populated_ms: m(|f| f.populated_ms),
            demand_faults: m(|f| f.demand_faults as f64).round() as u64,
            gbps: m(|f| f.gbps),
        };
        let runs = ("runs", runs.len().to_string());
        if json {
            let lead = [("median", "true".into()), ("mode", json_string(mode)), runs];
            print_line(true, &lead, Some(&figures), &[]);
        } else {
            // `median mode=NAME runs=K ...`: the bare first word marks the line.
            print!("median ");
            print_line(
                false,
                &[("mode", mode.to_string()), runs],
                Some(&figures),
                &[],
            );
        }
    }
}

fn run(cfg: &Config) -> Result<bool, String> {
    let ps = page_size();
    let pages = (cfg.mib << 20) / ps;
    let len = pages * ps;
    let throttled = cfg.source_mbps.is_some() || cfg.source_latency_us.is_some();
    if throttled {
        // Throttle sleeps are tens of microseconds: without this, each would oversleep by the
        // default 50 µs timer slack. Threads started later (the server's) inherit it.
        // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread's timer
        // slack; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    }
    let path = std::env::temp_dir().join(format!("restore-bench-{}.img", std::process::id()));
    let _cleanup = TempFile(path.clone());
    let t = Instant::now();
    let zeros =
        write_pattern_file(&path, pages, SEED).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "image: {} ({} MiB, {pages} pages, {zeros} all-zero), written in {:.2} s",
        path.display(),
        len >> 20,
        t.elapsed().as_secs_f64()
    );
    let latency = Duration::from_micros(cfg.source_latency_us.unwrap_or(0));
    let throttle = throttled.then(|| Arc::new(Throttle::new(cfg.source_mbps, latency)));
    // Generous: 2 minutes, plus twice what the naive handler needs for every page through the
    // throttle.
    let per_page = latency
        + cfg.source_mbps.map_or(Duration::ZERO, |m| {
            Duration::from_secs_f64(ps as f64 / (m as f64 * 1e6))
        });
    let deadline = Duration::from_secs(120) + 2 * per_page * pages as u32;
    match &throttle {
        Some(_) => eprintln!(
            "source: throttled to {} and {} µs per request",
            cfg.source_mbps
                .map_or("unlimited MB/s".into(), |m| format!("{m} MB/s")),
            latency.as_micros()
        ),
        None if cfg.source.is_none() => eprintln!("source: the page cache, unthrottled"),
        None => {}
    }
    #[cfg(feature = "object-store")]
    let object = match &cfg.source {
        Some((url, options)) => {
            let o = objstore::ObjectImage {
                url: url.clone(),
                options: options.clone(),
            };
            let secs = o.upload(&path)?;
            eprintln!("source: {url}, the image uploaded in {secs:.2} s");
            Some(o)
        }
        None => None,
    };
    let setup = Setup {
        path,
        len,
        plan: Arc::new(Plan::new(pages, cfg.working_set, cfg.threads)),
        throttle,
        deadline,
        recorded: std::sync::Mutex::new(None),
        #[cfg(feature = "object-store")]
        object,
    };

    let mut ok = true;
    let mut results: Vec<(&'static str, Vec<Figures>)> = Vec::new();
    for &m in &cfg.modes {
        if !results.iter().any(|(n, _)| *n == m) {
            results.push((m, Vec::new()));
        }
    }
    let mode_value = |m: &str| {
        if cfg.json {
            json_string(m)
        } else {
            m.to_string()
        }
    };
    for round in 0..cfg.repeat {
        for &mode in &cfg.modes {
            match run_mode(mode, &setup) {
                Ok(o) => {
                    let verify = if cfg.json {
                        json_string("ok")
                    } else {
                        "ok".into()
                    };
                    let mut tail: Vec<(&str, String)> = o
                        .extra
                        .iter()
                        .map(|(k, v)| {
                            let v = if cfg.json && v.parse::<f64>().is_err() {
                                json_string(v)
                            } else {
                                v.clone()
                            };
                            (*k, v)
                        })
                        .collect();
                    tail.push(("verify", verify));
                    print_line(
                        cfg.json,
                        &[("mode", mode_value(mode))],
                        Some(&o.figures),
                        &tail,
                    );
                    if let Some(d) = &o.detail {
                        eprintln!("{mode} run {}: {d}", round + 1);
                    }
                    if let Some((_, v)) = results.iter_mut().find(|(n, _)| *n == mode) {
                        v.push(o.figures);
                    }
                }
                Err(e) => {
                    ok = false;
                    let verify = format!("FAILED: {e}");
                    let verify = if cfg.json {
                        json_string(&verify)
                    } else {
                        verify
                    };
                    print_line(
                        cfg.json,
                        &[("mode", mode_value(mode))],
                        None,
                        &[("verify", verify)],
                    );
                }
            }
        }
    }
    if cfg.repeat > 1 {
        print_medians(cfg.json, &results);
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cfg = parse();
    match run(&cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILURE),
        Err(e) => {
            eprintln!("restore-bench: FAILED: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
