//! What `restore-bench` and the `uffd-handler` tests still take from the `examples` crate: the
//! shared code itself lives in the `test-kit` crate and is re-exported here, and [`Args`] is the
//! hand-written parser `restore-bench` uses until it moves to clap (every other program parses
//! with `test_kit::args`).
//!
//! Every example runs with no arguments, verifies what it did, prints what it measured and exits
//! with status 0 on success, 1 when verification (or the run) fails, and 2 with a usage message
//! for bad arguments.

use std::fmt::Display;
use std::str::FromStr;

pub use test_kit::exit::{EXIT_FAILURE, EXIT_USAGE};
pub use test_kit::mapping::no_huge_pages;
pub use test_kit::page_size;
pub use test_kit::pattern::write_pattern_file;
pub use test_kit::rng::Rng;
pub use test_kit::temp::TempFile;
pub use test_kit::wait::{wait_readable, StopSignal, Wait};

/// A command line: the arguments after the program name, with the program's usage text.
///
/// Parsing never panics: every problem ends in [`Args::usage_error`], which prints the message and
/// the usage to stderr and exits with status [`EXIT_USAGE`].
#[derive(Debug)]
pub struct Args {
    usage: &'static str,
    args: std::vec::IntoIter<String>,
}

impl Args {
    /// The process's arguments. `usage` is printed for `--help` (to stdout, status 0) and after
    /// any error (to stderr, status 2).
    pub fn from_env(usage: &'static str) -> Args {
        Args::new(usage, std::env::args().skip(1).collect())
    }

    /// Arguments from a vector (for tests).
    pub fn new(usage: &'static str, args: Vec<String>) -> Args {
        Args {
            usage,
            args: args.into_iter(),
        }
    }

    /// The next argument, if any. `--help`/`-h` print the usage and exit 0.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<String> {
        let a = self.args.next()?;
        if a == "--help" || a == "-h" {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        Some(a)
    }

    /// The value following option `flag`, parsed as `T`.
    pub fn value<T: FromStr>(&mut self, flag: &str) -> T
    where
        T::Err: Display,
    {
        match self.args.next() {
            Some(v) => match v.parse() {
                Ok(x) => x,
                Err(e) => self.usage_error(&format!("bad value {v:?} for {flag}: {e}")),
            },
            None => self.usage_error(&format!("{flag} needs a value")),
        }
    }

    /// The value following option `flag`, parsed as `T` and checked to lie in `lo..=hi`.
    pub fn value_in<T: FromStr + PartialOrd + Display + Copy>(
        &mut self,
        flag: &str,
        lo: T,
        hi: T,
    ) -> T
    where
        T::Err: Display,
    {
        let v: T = self.value(flag);
        if v < lo || v > hi {
            self.usage_error(&format!("{flag} must be between {lo} and {hi}, not {v}"));
        }
        v
    }

    /// Prints `msg` and the usage to stderr and exits with status [`EXIT_USAGE`].
    pub fn usage_error(&self, msg: &str) -> ! {
        eprintln!("error: {msg}\n\n{}", self.usage);
        std::process::exit(EXIT_USAGE.into())
    }

    /// Rejects an argument nobody recognised.
    pub fn unknown(&self, arg: &str) -> ! {
        self.usage_error(&format!("unexpected argument {arg:?}"))
    }
}
