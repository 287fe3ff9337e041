//! Runs the built `restore-bench` binary on a small image: every mode, in text and JSON, once
//! repeated and throttled; checks the exit status and that every mode line verified and carries
//! every figure. Figures are not judged (this is not a timed test). Bad arguments must give a
//! usage error with status 2.

use std::process::Output;

mod common;

const MODES: [&str; 7] = [
    "eager",
    "mmap",
    "naive",
    "serve",
    "serve-record",
    "serve-replay",
    "serve-replay-wait",
];
const FIGURES: [&str; 5] = [
    "first_touch_us",
    "working_set_ms",
    "populated_ms",
    "demand_faults",
    "gbps",
];

fn bench(args: &[&str]) -> Output {
    common::run(env!("CARGO_BIN_EXE_restore-bench"), args)
}

/// Whether a userfaultfd (user-mode faults, what the benchmark creates) can be made here.
fn uffd_available() -> bool {
    userfaultfd::UffdBuilder::new()
        .user_mode_only(true)
        .create()
        .is_ok()
}

fn run_ok(args: &[&str]) -> String {
    let out = bench(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "restore-bench {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Checks a text mode line: `mode=NAME`, the five figures in order, `verify=ok`; returns the
/// figures.
fn check_line(line: &str, mode: &str, pages: u64) -> Vec<f64> {
    let fields: Vec<(&str, &str)> = line
        .split(' ')
        .map(|f| {
            f.split_once('=')
                .unwrap_or_else(|| panic!("field {f:?} in {line:?}"))
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|f| f.0).collect();
    let mut want = vec!["mode"];
    want.extend(FIGURES);
    want.push("verify");
    assert_eq!(keys, want, "{line}");
    assert_eq!(fields[0].1, mode, "{line}");
    assert_eq!(fields[6].1, "ok", "{line}");
    let figures: Vec<f64> = fields[1..6]
        .iter()
        .map(|(k, v)| {
            v.parse()
                .unwrap_or_else(|_| panic!("{k}={v} is not a number in {line}"))
        })
        .collect();
    let [first, ws, populated, faults, gbps] = figures[..] else {
        unreachable!()
    };
    assert!(
        first > 0.0 && ws > 0.0 && populated > 0.0 && gbps > 0.0,
        "{line}"
    );
    assert!(first <= ws * 1e3 + 1.0 && ws <= populated + 1e-3, "{line}");
    assert_eq!(faults.fract(), 0.0, "{line}");
    match mode {
        "eager" | "mmap" => assert_eq!(faults, 0.0, "{line}"),
        // Every page faults once at least.
        "naive" => assert!(faults >= pages as f64, "{line}"),
        _ => {}
    }
    figures
}

#[test]
fn all_modes_run_and_verify() {
    if !uffd_available() {
        test_kit::report::skip(
            "no userfaultfd (even for user-mode faults) here: CONFIG_USERFAULTFD",
        );
        return;
    }
    let stdout = run_ok(&["--mib", "8", "--threads", "2"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), MODES.len(), "{stdout}");
    for (line, mode) in lines.iter().zip(MODES) {
        check_line(line, mode, 2048);
    }
}

#[test]
fn repeated_throttled_runs_alternate_and_give_medians() {
    if !uffd_available() {
        test_kit::report::skip(
            "no userfaultfd (even for user-mode faults) here: CONFIG_USERFAULTFD",
        );
        return;
    }
    let stdout = run_ok(&[
        "--mib",
        "4",
        "--threads",
        "3",
        "--working-set",
        "50",
        "--source-mbps",
        "2000",
        "--source-latency-us",
        "20",
        "--repeat",
        "2",
        "serve",
        "naive",
        "eager",
    ]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6 + 3, "{stdout}");
    let order = ["serve", "naive", "eager", "serve", "naive", "eager"];
    for (line, mode) in lines.iter().zip(order) {
        check_line(line, mode, 1024);
    }
    for (line, mode) in lines[6..].iter().zip(["serve", "naive", "eager"]) {
        let rest = line
            .strip_prefix(&format!("median mode={mode} runs=2 "))
            .unwrap_or_else(|| panic!("{line}"));
        let keys: Vec<&str> = rest
            .split(' ')
            .map(|f| f.split_once('=').expect("key=value").0)
            .collect();
        assert_eq!(keys, FIGURES, "{line}");
    }
}

#[test]
fn json_output() {
    if !uffd_available() {
        test_kit::report::skip(
            "no userfaultfd (even for user-mode faults) here: CONFIG_USERFAULTFD",
        );
        return;
    }
    let stdout = run_ok(&["--mib", "2", "--json", "--repeat", "2", "mmap", "serve"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4 + 2, "{stdout}");
    for (line, mode) in lines[..4].iter().zip(["mmap", "serve", "mmap", "serve"]) {
        assert!(
            line.starts_with(&format!("{{\"mode\":\"{mode}\",\"first_touch_us\":")),
            "{line}"
        );
        for k in FIGURES {
            assert!(line.contains(&format!("\"{k}\":")), "{k} missing: {line}");
        }
        assert!(line.ends_with(",\"verify\":\"ok\"}"), "{line}");
    }
    for (line, mode) in lines[4..].iter().zip(["mmap", "serve"]) {
        assert!(
            line.starts_with(&format!(
                "{{\"median\":true,\"mode\":\"{mode}\",\"runs\":2,"
            )),
            "{line}"
        );
        assert!(line.ends_with('}'), "{line}");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["nonsense"][..],
        &["serve-replay"],
        &["serve-replay", "serve"],
        &["--mib"],
        &["--mib", "abc"],
        &["--mib", "0"],
        &["--threads", "0"],
        &["--working-set", "101"],
        &["--source-mbps", "0"],
        &["--repeat", "x"],
        &["--frobnicate"],
        &["--mib", "-3"],
        &["serve-replay-wait"],
        &["serve-replay-wait", "serve-record"],
        &["--endpoint", "http://127.0.0.1:1"],
        &["--source-option", "region=x"],
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed figures");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: restore-bench"),
            "{args:?}"
        );
    }
}
