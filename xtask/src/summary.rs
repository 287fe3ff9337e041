//! The closing summary of a test run, shared by `cargo xtask test` (host) and
//! `cargo xtask vm-test` (guest): libtest's counts summed over its `test result:` lines, plus the
//! skips and asserted-unsupported outcomes the tests recorded through `test_kit::report`.
//!
//! "passed" counts the tests that checked what they are named for: libtest's passed minus the
//! tests that recorded a skip or an asserted-unsupported outcome (libtest reports both as `ok`).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::Path;

use test_kit::report::{self, Record};

/// libtest's counts, summed over any number of `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Tests that returned without a failure (skips and asserted-unsupported included).
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests marked `#[ignore]` and not run.
    pub ignored: u64,
    /// `test result:` lines seen (one per test binary or doc-test run that finished).
    pub results: u64,
}

impl Counts {
    /// Adds the counts of one output line, if it is libtest's `test result:` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            return;
        };
        self.results += 1;
        // "ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        let rest = rest.split_once(". ").map_or(rest, |(_, r)| r);
        for part in rest.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// The counts of every `test result:` line in `text`.
    pub fn of_output(text: &str) -> Counts {
        let mut c = Counts::default();
        for line in text.lines() {
            c.add_line(line);
        }
        c
    }

    /// Adds `other` to these counts.
    pub fn merge(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.results += other.results;
    }
}

/// The records a run left in `dir` (`test_kit::report::RECORDS_FILE`), none if there are none.
pub fn read_records(dir: &Path) -> Vec<Record> {
    fs::read_to_string(dir.join(report::RECORDS_FILE))
        .map(|text| report::parse(&text))
        .unwrap_or_default()
}

/// The outcome of a run: counts and records.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// libtest's counts.
    pub counts: Counts,
    /// What the tests recorded.
    pub records: Vec<Record>,
}

impl Summary {
    /// Tests (binary, name) that recorded at least one skip.
    pub fn skipped(&self) -> BTreeSet<(&str, &str)> {
        self.tests_where(|r| matches!(r, Record::Skip { .. }))
    }

    /// Tests that recorded an asserted-unsupported outcome and no skip.
    pub fn unsupported(&self) -> BTreeSet<(&str, &str)> {
        let skipped = self.skipped();
        self.tests_where(|r| matches!(r, Record::Unsupported { .. }))
            .into_iter()
            .filter(|t| !skipped.contains(t))
            .collect()
    }

    fn tests_where(&self, pick: impl Fn(&Record) -> bool) -> BTreeSet<(&str, &str)> {
        self.records
            .iter()
            .filter(|r| pick(r))
            .map(|r| match r {
                Record::Skip { binary, test, .. } | Record::Unsupported { binary, test, .. } => {
                    (binary.as_str(), test.as_str())
                }
            })
            .collect()
    }

    /// Tests that passed and checked what they are named for.
    pub fn passed(&self) -> u64 {
        let recorded = (self.skipped().len() + self.unsupported().len()) as u64;
        self.counts.passed.saturating_sub(recorded)
    }

    /// `N passed, M failed, K skipped, U asserted-unsupported` (and the ignored, if any).
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} passed, {} failed, {} skipped, {} asserted-unsupported",
            self.passed(),
            self.counts.failed,
            self.skipped().len(),
            self.unsupported().len()
        );
        if self.counts.ignored > 0 {
            s.push_str(&format!(", {} ignored", self.counts.ignored));
        }
        s
    }

    /// Whether the run can be called green: no failures and at least one result line.
    pub fn green(&self) -> bool {
        self.counts.failed == 0 && self.counts.results > 0
    }
}

/// Prints the reasons: every skip and every asserted-unsupported feature, grouped (one line per
/// record: a test may record more than one).
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut skips = Vec::new();
        let mut unsupported = Vec::new();
        for r in &self.records {
            match r {
                Record::Skip {
                    binary,
                    test,
                    reason,
                } => skips.push(format!("  {} {test}: {reason}", short_binary(binary))),
                Record::Unsupported {
                    binary,
                    test,
                    feature,
                    since,
                } => unsupported.push(format!(
                    "  {} {test}: {feature} (Linux {since})",
                    short_binary(binary)
                )),
            }
        }
        writeln!(f, "skip records ({}):", skips.len())?;
        for s in &skips {
            writeln!(f, "{s}")?;
        }
        writeln!(f, "asserted-unsupported records ({}):", unsupported.len())?;
        for u in &unsupported {
            writeln!(f, "{u}")?;
        }
        Ok(())
    }
}

/// A test binary's file name without cargo's `-<hash>` suffix.
pub fn short_binary(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let out = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s
test result: looks like a test name
";
        let c = Counts::of_output(out);
        assert_eq!(
            c,
            Counts {
                passed: 8,
                failed: 2,
                ignored: 1,
                results: 3
            }
        );
    }

    #[test]
    fn recorded_tests_are_not_counted_as_passed() {
        let records = report::parse(
            "skip\tserve-0123456789abcdef\tt1\tno huge pages\n\
             skip\tserve-0123456789abcdef\tt1\tand again\n\
             unsupported\tapi-0123456789abcdef\tt2\tUFFDIO_MOVE\t6.8\n\
             unsupported\tapi-0123456789abcdef\tt3\tUFFDIO_POISON\t6.6\n",
        );
        let s = Summary {
            counts: Counts {
                passed: 10,
                failed: 1,
                ignored: 0,
                results: 2,
            },
            records,
        };
        assert_eq!(s.passed(), 7);
        assert_eq!(
            s.line(),
            "7 passed, 1 failed, 1 skipped, 2 asserted-unsupported"
        );
        assert!(!s.green());
        let text = s.to_string();
        assert!(
            text.contains("skip records (2):\n  serve t1: no huge pages\n"),
            "{text}"
        );
        assert!(text.contains("  api t2: UFFDIO_MOVE (Linux 6.8)"), "{text}");
    }

    #[test]
    fn hash_suffix_is_dropped() {
        assert_eq!(short_binary("serve_tcp-0123456789abcdef"), "serve_tcp");
        assert_eq!(short_binary("uffd-probe"), "uffd-probe");
    }
}
