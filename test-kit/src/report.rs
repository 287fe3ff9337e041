//! Visible, counted skips and asserted-unsupported outcomes.
//!
//! libtest has no "skipped" result: a test that returns early prints `ok`. So a test that cannot
//! check what it is named for calls [`skip`], and a test that instead asserted the typed error for
//! a feature the running kernel lacks calls [`unsupported`]. Each
//!
//! - prints one line straight to the process's stderr (fd 2), which the harness does not capture,
//!   so it shows in a plain `cargo test` run: `SKIPPED name: reason` or
//!   `UNSUPPORTED name: FEATURE (Linux VERSION): detail`;
//! - appends one record to `$UFFD_TEST_REPORT/records` when that variable names a directory.
//!   `cargo xtask test` and `cargo xtask vm-test` set it, then print the counts and the reasons.
//!
//! A record is one line of tab-separated fields: kind (`skip` or `unsupported`), test binary,
//! test name, then the kind's fields (see [`Record`]). Tabs and newlines in fields are replaced
//! by spaces.

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

/// The environment variable naming the directory records are appended to.
pub const REPORT_DIR_VAR: &str = "UFFD_TEST_REPORT";

/// The file, inside [`REPORT_DIR_VAR`]'s directory, that records are appended to.
pub const RECORDS_FILE: &str = "records";

/// One recorded outcome, as [`parse`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The test did not check what it is named for.
    Skip {
        /// Test binary (file name).
        binary: String,
        /// Test name (the harness's thread name).
        test: String,
        /// Why, and what would let it run.
        reason: String,
    },
    /// The test asserted the typed error for a feature the kernel lacks.
    Unsupported {
        /// Test binary (file name).
        binary: String,
        /// Test name.
        test: String,
        /// The missing feature, e.g. `UFFDIO_MOVE`.
        feature: String,
        /// The Linux version that brings it, e.g. `6.8`.
        since: String,
    },
}

/// Records that the calling test skipped its checks, and why. Call it, then return.
///
/// `reason` should say what is missing and how to provide it, e.g.
/// `"needs 4 free 2 MiB huge pages, 0 free (sysctl vm.nr_hugepages=128)"`.
pub fn skip(reason: impl Display) {
    let reason = reason.to_string();
    let test = test_name();
    emit(&format!("SKIPPED {test}: {reason}\n"));
    append(&["skip", &binary_name(), &test, &reason]);
}

/// Records that the calling test asserted the typed error the library returns because the
/// running kernel lacks `feature` (which Linux `since` brings), instead of exercising it.
///
/// `detail` is the error as the library displayed it.
pub fn unsupported(feature: &str, since: &str, detail: impl Display) {
    let test = test_name();
    emit(&format!(
        "UNSUPPORTED {test}: {feature} (Linux {since}): {detail}\n"
    ));
    append(&["unsupported", &binary_name(), &test, feature, since]);
}

/// Reads records written by [`skip`] and [`unsupported`]. Lines that are not records are ignored.
pub fn parse(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["skip", binary, test, reason] => Some(Record::Skip {
                    binary: binary.to_string(),
                    test: test.to_string(),
                    reason: reason.to_string(),
                }),
                ["unsupported", binary, test, feature, since] => Some(Record::Unsupported {
                    binary: binary.to_string(),
                    test: test.to_string(),
                    feature: feature.to_string(),
                    since: since.to_string(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The records file of the current run, if [`REPORT_DIR_VAR`] is set.
pub fn records_path() -> Option<PathBuf> {
    std::env::var_os(REPORT_DIR_VAR)
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join(RECORDS_FILE))
}

fn test_name() -> String {
    // libtest runs each test on a thread named after it (also with --test-threads=1).
    std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("(unnamed test)")
        .to_string()
}

fn binary_name() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(OsString::from))
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes to fd 2 without going through `eprint!`, which the harness captures.
fn emit(line: &str) {
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn append(fields: &[&str]) {
    let Some(path) = records_path() else { return };
    let mut line = fields
        .iter()
        .map(|f| f.replace(['\t', '\n', '\r'], " "))
        .collect::<Vec<_>>()
        .join("\t");
    line.push('\n');
    // O_APPEND: one write of a short line lands whole even with tests of several binaries (or
    // threads) appending at once.
    let result = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = result {
        emit(&format!(
            "test-kit: could not append to {}: {e}\n",
            path.display()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_junk_is_ignored() {
        let text = "skip\tbin-1\tmod::t\tno huge pages\n\
                    garbage line\n\
                    unsupported\tbin-2\tt2\tUFFDIO_MOVE\t6.8\n";
        assert_eq!(
            parse(text),
            vec![
                Record::Skip {
                    binary: "bin-1".into(),
                    test: "mod::t".into(),
                    reason: "no huge pages".into()
                },
                Record::Unsupported {
                    binary: "bin-2".into(),
                    test: "t2".into(),
                    feature: "UFFDIO_MOVE".into(),
                    since: "6.8".into()
                },
            ]
        );
    }
}
