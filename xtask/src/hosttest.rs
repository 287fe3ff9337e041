//! `cargo xtask test [-- ARGS]`: `cargo test --workspace ARGS` on this machine's kernel, with
//! `UFFD_TEST_REPORT` set to a fresh folder, then the skips and asserted-unsupported outcomes
//! with their reasons and a closing line `host: N passed, M failed, K skipped, U
//! asserted-unsupported`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::rundir::RunDir;
use crate::summary::{read_records, Counts, Summary};
use crate::Result;

/// Runs the workspace's tests (doc tests included) and prints the summary. Fails when a test
/// failed or cargo did.
pub fn run(root: &Path, cargo_args: &[String]) -> Result<()> {
    let run = RunDir::create(&crate::xtask_target_dir(root))?;
    let report_dir = run.subdir("report")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["test", "--workspace"])
        .args(cargo_args)
        .env(test_kit::report::REPORT_DIR_VAR, &report_dir)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running cargo test: {e}"))?;
    // Passed through line by line as it comes, and counted.
    let mut counts = Counts::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading cargo test's output: {e}"))?;
        counts.add_line(&line);
        let _ = writeln!(out, "{line}");
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo test: {e}"))?;
    let summary = Summary {
        counts,
        records: read_records(&report_dir),
    };
    println!("\n{summary}");
    println!("host: {}", summary.line());
    if !status.success() {
        return Err(format!("cargo test failed ({status})"));
    }
    if !summary.green() {
        return Err("no test failed, yet the run reported no test results".into());
    }
    Ok(())
}
