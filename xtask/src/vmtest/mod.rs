//! `cargo xtask vm-test [--kernel SERIES] [--timeout MIN] [-- CARGO_ARGS [-- TEST_ARGS]]`: the
//! whole test suite (but doc tests and the xtask's own) on another kernel than this machine's.
//!
//! 1. builds the workspace's test binaries on the host ([`binaries`]; `CARGO_ARGS`, e.g.
//!    `--all-features --locked`, go to that `cargo test --no-run`);
//! 2. fetches Debian's kernel of the series, 6.1 (bookworm's) by default ([`kernel`]);
//! 3. boots it under qemu through virtme-ng, emulated unless this machine has real hardware KVM,
//!    and runs every test binary there as root (`TEST_ARGS` go to each binary) ([`guest`]);
//! 4. prints a line per binary, the guest's `uname -r`, the skips and asserted-unsupported
//!    outcomes with their reasons, and `guest 6.1.0-57-amd64: N passed, M failed, K skipped, U
//!    asserted-unsupported`; fails when any binary failed or did not finish.
//!
//! virtme-ng is found on `PATH` or in `target/vmtest-venv/` (where `.ci/vm-test` installs it).

pub mod binaries;
pub mod guest;
pub mod kernel;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::rundir::RunDir;
use crate::summary::{read_records, short_binary, Counts, Summary};
use crate::Result;

/// Usage of the command.
pub const USAGE: &str = "usage: cargo xtask vm-test [--kernel SERIES] [--timeout MINUTES] \
[-- CARGO_TEST_ARGS [-- TEST_BINARY_ARGS]]
  --kernel SERIES   Debian's kernel of that series (default 6.1, Debian 12's)
  --timeout MINUTES kill the guest after this long (default 45)";

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Kernel series, e.g. `6.1`.
    pub series: String,
    /// Limit for the whole guest run.
    pub limit: Duration,
    /// Arguments for `cargo test --no-run`.
    pub cargo_args: Vec<String>,
    /// Arguments for each test binary.
    pub test_args: Vec<String>,
}

impl Options {
    /// Parses the arguments after `vm-test`. `Ok(None)` for `--help`.
    pub fn parse(args: &[String]) -> Result<Option<Options>> {
        let mut o = Options {
            series: "6.1".into(),
            limit: Duration::from_secs(45 * 60),
            cargo_args: Vec::new(),
            test_args: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--kernel" => {
                    let s = it.next().ok_or("--kernel needs a series, e.g. 6.1")?;
                    let valid = s.split('.').count() == 2
                        && s.split('.')
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                    if !valid {
                        return Err(format!("--kernel {s:?}: expected a series like 6.1"));
                    }
                    o.series = s.clone();
                }
                "--timeout" => {
                    let m = it.next().ok_or("--timeout needs minutes")?;
                    let m: u64 =
                        m.parse().ok().filter(|m| *m > 0).ok_or_else(|| {
                            format!("--timeout {m:?}: expected a number of minutes")
                        })?;
                    o.limit = Duration::from_secs(m * 60);
                }
                "-h" | "--help" => return Ok(None),
                "--" => {
                    let rest: Vec<String> = it.by_ref().cloned().collect();
                    match rest.iter().position(|a| a == "--") {
                        Some(i) => {
                            o.cargo_args = rest[..i].to_vec();
                            o.test_args = rest[i + 1..].to_vec();
                        }
                        None => o.cargo_args = rest,
                    }
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(Some(o))
    }
}

/// Finds `vng`: on `PATH`, else in `target/vmtest-venv/bin`.
fn find_vng(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/vmtest-venv/bin/vng");
    if venv.is_file() {
        return Ok(venv);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("vng"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "virtme-ng (vng) not found on PATH or in target/vmtest-venv: run .ci/vm-test, or \
             `python3 -m venv target/vmtest-venv && target/vmtest-venv/bin/pip install virtme-ng` \
             (it also needs apt's qemu-system-x86, kmod, udev and busybox-static)"
                .to_string()
        })
}

/// Runs the command.
pub fn run(root: &Path, o: &Options) -> Result<()> {
    let started = Instant::now();
    let vng = find_vng(root)?;
    let binaries = binaries::build(root, &o.cargo_args)?;
    eprintln!(
        "xtask: {} test binaries (not run in the guest: doc tests, the tests of {})",
        binaries.len(),
        binaries::HOST_ONLY.join(", ")
    );
    let vm_dir = crate::xtask_target_dir(root).join("vmtest");
    let run = RunDir::create(&vm_dir)?;
    let kernel = kernel::fetch(&vm_dir.join("kernel"), &run, &o.series)?;
    let (accel, why) = guest::Accel::detect();
    let cpus = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    eprintln!(
        "xtask: booting {} ({}) with {} on {cpus} CPUs: {why}",
        kernel.release,
        kernel.package,
        match accel {
            guest::Accel::Kvm => "KVM",
            guest::Accel::Tcg => "emulation (TCG)",
        }
    );
    let guest_dir = run.subdir("guest")?;
    let booted = Instant::now();
    let boot = guest::Boot {
        vng: &vng,
        kernel: &kernel,
        accel,
        cpus,
        limit: o.limit,
    };
    let result = guest::run(&boot, &guest_dir, &binaries, &o.test_args);
    let guest_time = booted.elapsed();
    let out = guest_dir.join("out");
    let uname = fs::read_to_string(out.join("uname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown: the guest did not start its script)".into());

    println!("\n=== vm-test results (guest Linux {uname})");
    let mut counts = Counts::default();
    let mut bad = Vec::new();
    let records = read_records(&guest_dir.join("report"));
    for (i, b) in binaries.iter().enumerate() {
        let log = fs::read_to_string(out.join(format!("{i}.log"))).unwrap_or_default();
        let status = fs::read_to_string(out.join(format!("{i}.status")))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let ms = fs::read_to_string(out.join(format!("{i}.ms")))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let c = Counts::of_output(&log);
        counts.merge(c);
        let exe_name = b
            .exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mine = Summary {
            counts: c,
            records: records
                .iter()
                .filter(|r| match r {
                    test_kit::report::Record::Skip { binary, .. }
                    | test_kit::report::Record::Unsupported { binary, .. } => *binary == exe_name,
                })
                .cloned()
                .collect(),
        };
        let verdict = match status {
            Some(0) if c.results > 0 => "ok",
            Some(0) => "NO RESULT",
            Some(124) | Some(137) => "TIMED OUT",
            Some(_) => "FAILED",
            None => "DID NOT FINISH",
        };
        if verdict != "ok" {
            bad.push(b.label.clone());
        }
        println!(
            "{verdict:>14} {} ({}): {}{}",
            b.label,
            short_binary(&exe_name),
            mine.line(),
            ms.map(|ms| format!(", {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default(),
        );
    }
    let summary = Summary { counts, records };
    println!("\n{summary}");
    println!("guest uname -r: {uname}");
    println!(
        "guest wall time {:.0} s (boot included), whole vm-test {:.0} s",
        guest_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("guest {uname}: {}", summary.line());
    result?;
    if !bad.is_empty() {
        return Err(format!(
            "{} of {} test binaries failed in the guest: {}",
            bad.len(),
            binaries.len(),
            bad.join(", ")
        ));
    }
    if !summary.green() {
        return Err("the guest reported no test results".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn options_split_cargo_and_test_args() {
        let o = Options::parse(&args(&[
            "--kernel",
            "6.1",
            "--",
            "--all-features",
            "--locked",
            "--",
            "--test-threads=1",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.series, "6.1");
        assert_eq!(o.cargo_args, args(&["--all-features", "--locked"]));
        assert_eq!(o.test_args, args(&["--test-threads=1"]));
        assert_eq!(Options::parse(&args(&["--help"])).unwrap(), None);
        for bad in [
            &["--kernel", "six"][..],
            &["--kernel", "6.1.0"],
            &["--timeout", "0"],
            &["--x"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
