//! Project automation, run as `cargo xtask <command>`. This file is the command line; each job
//! has its own module.
//!
//! * `cargo xtask bindgen [--headers DIR] [--check]` regenerates
//!   `userfaultfd-sys/src/bindings.rs` (bindgen, as a library) and
//!   `userfaultfd-sys/tests/data/c-ioctl-numbers-x86_64.txt` (what a C program compiled against the
//!   same headers prints for every ioctl request number). With `--check` nothing is written: the
//!   command fails, showing a diff, when a committed file differs from what it would generate.
//!
//! The headers are Debian's `linux-libc-dev` package for Linux 6.12 from the `bookworm-backports`
//! suite, fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
//! `target/xtask/headers/`. `--headers DIR` uses any other uAPI include folder instead (a folder
//! holding `linux/userfaultfd.h`, or the root of an unpacked `linux-libc-dev` package).
//!
//! Debian drops superseded versions from its archive. When the pinned version
//! ([`PINNED_VERSION`]) can no longer be downloaded, the newest 6.12.x `linux-libc-dev` that
//! `bookworm-backports` serves is used instead, with a loud warning. The generated files then name
//! that version in their preamble, so `--check` compares them ignoring only the preamble lines
//! that name the header source; everything else must match exactly. The same applies with
//! `--headers`. With the pinned package, the comparison is exact.
//!
//! Each run works in a directory of its own, `target/xtask/run-<pid>-<nanos>/`, removed when the
//! run ends (see [`rundir`]), so that two runs at once do not collide. Only the unpacked headers
//! are shared between runs, and they are installed there with one atomic rename.
//!
//! * `cargo xtask test [-- CARGO_TEST_ARGS]` runs `cargo test --workspace` on this machine's kernel
//!   and ends with the counts of passed, failed, skipped and asserted-unsupported tests, and the
//!   reasons of the skips ([`hosttest`], [`summary`]).
//! * `cargo xtask vm-test [--kernel 6.1] [-- CARGO_TEST_ARGS [-- TEST_ARGS]]` runs the test binaries
//!   under Debian's Linux 6.1 in qemu, with the same summary ([`vmtest`]).
//!
//! The modules: [`debian`] downloads the headers, [`bindings`] runs bindgen, [`ioctl_numbers`]
//! compiles and runs the C program, [`diff`] compares with the committed files.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod apt;
mod bindings;
mod debian;
mod diff;
mod headers;
mod hosttest;
mod ioctl_numbers;
mod rundir;
mod summary;
mod vmtest;

pub use debian::{PINNED_PACKAGE, PINNED_VERSION};
pub use headers::HeaderSource;

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask bindgen [--headers DIR] [--check]
       cargo xtask test [-- CARGO_TEST_ARGS]
       cargo xtask vm-test [--kernel SERIES] [--timeout MINUTES] [-- CARGO_TEST_ARGS [-- TEST_ARGS]]";

fn run(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    match cmd.as_str() {
        "bindgen" => {
            let mut check = false;
            let mut headers: Option<PathBuf> = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--check" => check = true,
                    "--headers" => {
                        let dir = it.next().ok_or("--headers needs a folder")?;
                        headers = Some(PathBuf::from(dir));
                    }
                    "-h" | "--help" => {
                        println!("{USAGE}");
                        return Ok(());
                    }
                    other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
                }
            }
            bindgen_cmd(headers, check)
        }
        "test" => match rest.split_first() {
            None => hosttest::run(&workspace_root(), &[]),
            Some((dd, cargo_args)) if dd == "--" => hosttest::run(&workspace_root(), cargo_args),
            Some((a, _)) if a == "-h" || a == "--help" => {
                println!("usage: cargo xtask test [-- CARGO_TEST_ARGS]");
                Ok(())
            }
            Some((other, _)) => Err(format!(
                "unknown argument {other:?}: cargo test's arguments go after `--`\n{USAGE}"
            )),
        },
        "vm-test" => match vmtest::Options::parse(rest)? {
            Some(o) => vmtest::run(&workspace_root(), &o),
            None => {
                println!("{}", vmtest::USAGE);
                Ok(())
            }
        },
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// Root of the workspace (the parent of this crate's folder).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Folder under which every run makes its own directory and the headers are cached.
fn xtask_target_dir(root: &Path) -> PathBuf {
    root.join("target/xtask")
}

fn bindgen_cmd(headers: Option<PathBuf>, check: bool) -> Result<()> {
    let root = workspace_root();
    // Everything this run writes under target/xtask goes here (bar the header cache); the guard
    // removes it when this function returns, on every path.
    let run = rundir::RunDir::create(&xtask_target_dir(&root))?;
    let src = match headers {
        Some(dir) => HeaderSource::from_dir(dir)?,
        None => debian::fetch_headers(&xtask_target_dir(&root), &run)?,
    };
    if !src.pinned {
        eprintln!(
            "xtask: note: not the pinned headers ({}); --check ignores the preamble lines that \
             name the header source",
            src.description
        );
    }

    let generated = bindings::generate(&src, &run.subdir("bindgen")?)?;
    let numbers = ioctl_numbers::c_ioctl_numbers(&src, &run.subdir("c-ioctl")?)?;

    let outputs = [
        (root.join("userfaultfd-sys/src/bindings.rs"), generated),
        (
            root.join("userfaultfd-sys/tests/data/c-ioctl-numbers-x86_64.txt"),
            numbers,
        ),
    ];

    if check {
        let mut stale = Vec::new();
        for (path, want) in &outputs {
            let have = fs::read_to_string(path).unwrap_or_default();
            if !diff::same(&have, want, src.pinned) {
                diff::show_diff(path, want, &run.subdir("diff")?)?;
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            if src.pinned {
                println!("bindings are up to date");
            } else {
                println!("bindings are up to date (header-source preamble lines not compared)");
            }
            Ok(())
        } else {
            Err(format!(
                "stale generated file(s): {}; run `cargo xtask bindgen` and commit the result",
                stale.join(", ")
            ))
        }
    } else {
        for (path, contents) in &outputs {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("wrote {}", path.display());
        }
        Ok(())
    }
}
