//! The command line: options, scenarios, and the configuration they make.

use clap::{Parser, ValueEnum};
use test_kit::args::{self, number_in};

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: [&str; 13] = [
    "touch",
    "touch-shmem",
    "copy",
    "copy-batch",
    "zeropage",
    "copy-2t",
    "prefetch",
    "wp",
    "minor",
    "move",
    "poison",
    "ioctl-copy",
    "wp-async",
];

/// Pages per scenario unless `-n` says otherwise (128 MiB).
const DEFAULT_PAGES: usize = 32768;

/// Where the handler and faulting threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pin {
    /// No pinning.
    None,
    /// Handler and faulting threads on CPU 0.
    Same,
    /// Handler on CPU 0, faulting threads on CPU 1.
    Split,
}

/// How the faulting threads touch the pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Access {
    /// Read (the default).
    Read,
    /// Write (`wp` always writes).
    Write,
}

/// What a page fault costs per userfaultfd resolution method, against the kernel's own demand
/// fault. Every resolved byte is verified.
#[derive(Parser, Debug)]
#[command(name = "uffd-bench", allow_negative_numbers = true)]
struct Cli {
    /// Pages per scenario (32768 = 128 MiB).
    #[arg(short = 'n', value_name = "PAGES", default_value_t = DEFAULT_PAGES,
          value_parser = number_in(16usize, 1 << 22))]
    pages: usize,
    /// Print each result as a JSON object.
    #[arg(long)]
    json: bool,
    /// Touch pages by read or write.
    #[arg(short = 'a', value_name = "MODE", value_enum, default_value_t = Access::Read)]
    access: Access,
    /// Pin the threads.
    #[arg(short = 'p', value_name = "PIN", value_enum, default_value_t = Pin::None)]
    pin: Pin,
    /// The handler busy-polls read() instead of sleeping in poll().
    #[arg(short = 's')]
    spin: bool,
    /// Also compare `copy` with the C program examples/bench-c/uffd-copy.c, ROUNDS times.
    #[arg(short = 'c', value_name = "ROUNDS", value_parser = number_in(1usize, 1001))]
    compare: Option<usize>,
    /// Scenarios to run (default: all, unless -c is given).
    #[arg(value_name = "SCENARIO", value_parser = scenario)]
    scenarios: Vec<Vec<&'static str>>,
}

/// A scenario name, or `all`.
fn scenario(s: &str) -> Result<Vec<&'static str>, String> {
    if s == "all" {
        return Ok(SCENARIOS.to_vec());
    }
    SCENARIOS
        .iter()
        .find(|&&n| n == s)
        .map(|&n| vec![n])
        .ok_or_else(|| format!("expected all or one of {}", SCENARIOS.join(", ")))
}

/// What to run, and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pages per scenario.
    pub pages: usize,
    /// JSON output.
    pub json: bool,
    /// Touch by writing.
    pub write: bool,
    /// Thread pinning.
    pub pin: Pin,
    /// The handler busy-polls.
    pub spin: bool,
    /// Rounds of the comparison with C (0: none).
    pub compare_rounds: usize,
    /// The scenarios, in order.
    pub scenarios: Vec<&'static str>,
}

/// The process's command line as a [`Config`]; exits with the usage on a bad argument.
pub fn config() -> Config {
    let cli: Cli = args::parse();
    let mut scenarios: Vec<&'static str> = cli.scenarios.concat();
    if scenarios.is_empty() && cli.compare.is_none() {
        scenarios.extend(SCENARIOS);
    }
    Config {
        pages: cli.pages,
        json: cli.json,
        write: cli.access == Access::Write,
        pin: cli.pin,
        spin: cli.spin,
        compare_rounds: cli.compare.unwrap_or(0),
        scenarios,
    }
}
