//! Every example program (but `restore-bench` and `uffd-handler`, which have their own tests)
//! parses its command line one way: `--help` prints the options to stdout with status 0, and
//! every bad argument prints the error and the usage to stderr with status 2, never a panic and
//! never figures.

mod common;
use common::run;

/// Runs `bin` with a bad command line: status 2, the error and the usage on stderr, nothing on
/// stdout, no panic; and the error mentions `names` (the argument or value at fault).
fn assert_usage(bin: &str, args: &[&str], names: &str) {
    let out = run(bin, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {stderr}");
    assert!(
        stderr.contains("Usage: "),
        "{bin} {args:?}: no usage in {stderr}"
    );
    assert!(
        stderr.contains(names),
        "{bin} {args:?}: no {names:?} in {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "{bin} {args:?} panicked: {stderr}"
    );
    assert!(
        !stderr.contains("invalid digit"),
        "{bin} {args:?}: the parser's message instead of what was expected: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{bin} {args:?} printed to stdout");
}

/// `--help`: status 0, the usage and every option in `options` on stdout.
fn assert_help(bin: &str, options: &[&str]) {
    let out = run(bin, &["--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{bin} --help: {stdout}");
    assert!(stdout.contains("Usage: "), "{bin} --help: {stdout}");
    for o in options {
        assert!(stdout.contains(o), "{bin} --help lacks {o}: {stdout}");
    }
}

#[test]
fn manpage() {
    let bin = env!("CARGO_BIN_EXE_manpage");
    assert_help(bin, &["NUM_PAGES"]);
    assert_usage(bin, &["lots"], "lots");
    assert_usage(bin, &["3", "4"], "'4'");
    assert_usage(bin, &["0"], "between 1 and 1000");
    assert_usage(bin, &["1001"], "between 1 and 1000");
    assert_usage(bin, &["-3"], "-3");
    assert_usage(bin, &["--bogus"], "--bogus");
}

#[test]
fn lazy_restore() {
    let bin = env!("CARGO_BIN_EXE_lazy-restore");
    assert_help(bin, &["--size", "--snapshot", "--threads"]);
    assert_usage(bin, &["--size"], "--size");
    assert_usage(bin, &["--size", "zero"], "zero");
    assert_usage(bin, &["--size", "0"], "between 1 and");
    assert_usage(bin, &["--size", "-4"], "-4");
    assert_usage(bin, &["--threads", "65"], "between 1 and 64");
    assert_usage(
        bin,
        &["--size", "4", "--snapshot", "f"],
        "cannot be used with",
    );
    assert_usage(bin, &["--bogus"], "--bogus");
}

#[test]
fn dirty_tracking() {
    let bin = env!("CARGO_BIN_EXE_dirty-tracking");
    assert_help(bin, &["--pages", "--rounds", "--writes"]);
    assert_usage(bin, &["--rounds", "-1"], "-1");
    assert_usage(bin, &["--pages", "0"], "between 1 and");
    assert_usage(bin, &["--writes", "x"], "'x'");
    assert_usage(bin, &["extra"], "extra");
}

#[test]
fn minor_shmem() {
    let bin = env!("CARGO_BIN_EXE_minor-shmem");
    assert_help(bin, &["--pages"]);
    assert_usage(bin, &["--pages", "many"], "many");
    assert_usage(bin, &["--pages", "-2"], "-2");
    assert_usage(bin, &["--pages"], "--pages");
}

#[test]
fn fork_events() {
    let bin = env!("CARGO_BIN_EXE_fork-events");
    assert_help(bin, &["CAP_SYS_PTRACE"]);
    assert_usage(bin, &["extra"], "extra");
    assert_usage(bin, &["--pages", "3"], "--pages");
}

#[test]
fn page_server() {
    let bin = env!("CARGO_BIN_EXE_page-server");
    assert_help(bin, &["--pages", "--prefetch", "--serve", "--connect"]);
    assert_usage(bin, &["--prefetch", "0"], "between 1 and 1024");
    assert_usage(bin, &["--prefetch", "2000"], "between 1 and 1024");
    assert_usage(bin, &["--pages", "0"], "between 1 and");
    assert_usage(bin, &["--pages", "-5"], "-5");
    assert_usage(
        bin,
        &["--serve", "--connect", "127.0.0.1:1"],
        "cannot be used with",
    );
    assert_usage(bin, &["--connect"], "--connect");
    assert_usage(bin, &["--connect", "notanaddr"], "notanaddr");
    assert_usage(bin, &["--connect", "127.0.0.1:port"], "127.0.0.1:port");
}

#[test]
fn uffd_probe() {
    let bin = env!("CARGO_BIN_EXE_uffd-probe");
    assert_help(bin, &["--json"]);
    assert_usage(bin, &["--yaml"], "--yaml");
    assert_usage(bin, &["--json=yes"], "--json");
}

#[test]
fn uffd_stress() {
    let bin = env!("CARGO_BIN_EXE_uffd-stress");
    assert_help(
        bin,
        &["--bounces", "--mib", "--mem", "--wp", "--threads", "--ops"],
    );
    assert_usage(bin, &["--mem", "disk"], "disk");
    assert_usage(bin, &["--wp", "maybe"], "maybe");
    assert_usage(bin, &["--bounces", "0"], "between 1 and");
    assert_usage(bin, &["--ops", "-1"], "-1");
    assert_usage(bin, &["--threads"], "--threads");
    assert_usage(bin, &["stress"], "stress");
}
