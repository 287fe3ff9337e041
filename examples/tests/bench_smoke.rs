//! Runs the built `uffd-bench` binary with a small page count: a few scenarios on their own,
//! then `all`, with text and JSON output, and checks the exit status and the output format.
//! Figures are not asserted (this is not a timed test); bad arguments are tested in `arguments.rs`.

use std::process::Output;

use userfaultfd::FeatureFlags;

mod common;

fn bench(args: &[&str]) -> Output {
    common::run(env!("CARGO_BIN_EXE_uffd-bench"), args)
}

/// Whether a userfaultfd for kernel-mode faults (what the benchmark creates) can be made here.
/// Whether a userfaultfd for kernel-mode faults can be made here; records a skip if not.
fn uffd_available() -> bool {
    test_kit::privilege::require(test_kit::privilege::Need::KernelFaults)
}

/// Checks one text line: the seven fields in order, then optional `key=value` extras; the
/// per-fault and per-page figures agree with the fault count (one per page, but for
/// `prefetch`, one per 16 pages, and `ioctl-copy`, none).
fn check_line(line: &str, scenario: &str) {
    let fields: Vec<(&str, &str)> = line
        .split(' ')
        .map(|f| {
            f.split_once('=')
                .unwrap_or_else(|| panic!("field {f:?} in {line:?}"))
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|f| f.0).collect();
    assert_eq!(
        keys[..7],
        [
            "scenario",
            "pages",
            "faults",
            "ns_per_fault",
            "ns_per_page",
            "gbps",
            "verify"
        ],
        "{line}"
    );
    assert_eq!(fields[0].1, scenario, "{line}");
    assert_eq!(fields[1].1, "64", "{line}");
    let faults: u64 = fields[2].1.parse().expect("faults is an integer");
    let per_page: f64 = fields[4].1.parse().expect("ns_per_page is a number");
    assert!(per_page > 0.0, "{line}");
    if faults == 0 {
        assert_eq!(scenario, "ioctl-copy", "{line}");
        assert_eq!(fields[3].1, "-", "no faults, no ns_per_fault: {line}");
    } else {
        let per_fault: f64 = fields[3].1.parse().expect("ns_per_fault is a number");
        let pages_per_fault = per_fault / per_page;
        let expected = match scenario {
            "prefetch" => 16.0,
            _ => 1.0,
        };
        assert!(
            (pages_per_fault - expected).abs() < 0.01 * expected,
            "{pages_per_fault} pages per fault, not {expected}: {line}"
        );
    }
    let gbps: f64 = fields[5].1.parse().expect("gbps is a number");
    assert!(gbps > 0.0, "{line}");
    assert_eq!(fields[6].1, "ok", "{line}");
}

/// The feature a scenario needs that arrived late (`move` 6.8, `poison` 6.6, `wp-async` 6.7).
fn late_feature(scenario: &str) -> Option<FeatureFlags> {
    match scenario {
        "move" => Some(FeatureFlags::MOVE),
        "poison" => Some(FeatureFlags::POISON),
        "wp-async" => Some(FeatureFlags::WP_ASYNC),
        _ => None,
    }
}

/// Whether this kernel can run `scenario`. If not, runs it alone, asserts that it fails naming
/// the missing feature and the Linux version that brings it, and records that.
fn runnable(scenario: &str) -> bool {
    let Some(feature) = late_feature(scenario) else {
        return true;
    };
    let supported = userfaultfd::UffdBuilder::probe_features().expect("probe features");
    if supported.contains(feature) {
        return true;
    }
    let (name, _) = feature.iter_names().next().expect("a named feature");
    let since = feature.since().expect("a named feature");
    let out = bench(&["-n", "64", scenario]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "{scenario} ran without {name}:\n{text}"
    );
    let named = format!("{name} (Linux {since})");
    assert!(
        text.contains(&named),
        "{scenario}: no {named:?} in:\n{text}"
    );
    test_kit::report::unsupported(name, since, format!("uffd-bench {scenario}"));
    false
}

fn run_ok(args: &[&str], expect: &[&str]) {
    // Scenarios this kernel lacks a feature for are checked on their own by `runnable`.
    let keep: Vec<&str> = expect.iter().copied().filter(|s| runnable(s)).collect();
    let expect = &keep[..];
    let mut args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| late_feature(a).is_none() || expect.contains(a))
        .collect();
    if args.last() == Some(&"all") {
        args.pop();
        args.extend_from_slice(expect);
    }
    let args = &args[..];
    let out = bench(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "uffd-bench {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), expect.len(), "{stdout}");
    for (line, name) in lines.iter().zip(expect) {
        check_line(line, name);
    }
}

const ALL: [&str; 13] = [
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

#[test]
fn scenarios_run_and_verify() {
    if !uffd_available() {
        return;
    }
    run_ok(
        &["-n", "64", "touch", "copy", "poison"],
        &["touch", "copy", "poison"],
    );
    run_ok(
        &[
            "-n",
            "64",
            "-a",
            "write",
            "-p",
            "same",
            "copy-batch",
            "minor",
        ],
        &["copy-batch", "minor"],
    );
    run_ok(
        &["-n", "64", "-s", "-p", "split", "copy", "wp"],
        &["copy", "wp"],
    );
    run_ok(&["-n", "64", "all"], &ALL);
}

#[test]
fn json_output() {
    if !uffd_available() {
        return;
    }
    let scenarios: Vec<&str> = ["copy", "wp-async"]
        .into_iter()
        .filter(|s| runnable(s))
        .collect();
    let mut args = vec!["-n", "64", "--json"];
    args.extend_from_slice(&scenarios);
    let out = bench(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), scenarios.len(), "{stdout}");
    for (line, name) in lines.iter().zip(scenarios) {
        assert!(
            line.starts_with(&format!("{{\"scenario\":\"{name}\",\"pages\":64,")),
            "{line}"
        );
        assert!(line.contains("\"verify\":\"ok\""), "{line}");
        assert!(line.contains("\"ns_per_fault\":"), "{line}");
        assert!(line.contains("\"ns_per_page\":"), "{line}");
        assert!(line.ends_with('}'), "{line}");
    }
}
