//! `uffd-probe` on the running kernel: every feature the library finds missing is named in the
//! probe's feature table with `no` and the Linux version that brings it, and every feature found
//! present with `yes`. On Linux 6.1 that is `WP_UNPOPULATED` (6.4), `POISON` (6.6), `WP_ASYNC`
//! (6.7) and `MOVE` (6.8); on 6.8 and later nothing is missing.

mod common;

use userfaultfd::{FeatureFlags, UffdBuilder};

/// The running kernel's `(major, minor)`.
fn kernel_version() -> (u32, u32) {
    // SAFETY: utsname is plain old data, filled by uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    assert_eq!(unsafe { libc::uname(&mut u) }, 0);
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0))
}

/// The probe's table row for `name`: `(present, since)`.
fn row<'a>(table: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    table.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != name {
            return None;
        }
        let present = words.next()?;
        let since = line.split_once("(Linux ")?.1.split_once(')')?.0;
        Some((present, since))
    })
}

#[test]
fn uffd_probe_names_each_missing_feature_with_its_version() {
    let out = common::run(env!("CARGO_BIN_EXE_uffd-probe"), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "uffd-probe failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let table = stdout
        .split_once("features (UFFDIO_API):")
        .map(|(_, rest)| rest.split("\n\n").next().unwrap_or(rest))
        .unwrap_or_else(|| panic!("no feature table in:\n{stdout}"));
    let supported = UffdBuilder::probe_features().expect("probe features");
    let mut missing = Vec::new();
    for (name, flag) in FeatureFlags::all().iter_names() {
        let since = flag.since().expect("every named feature has a version");
        let (present, said) = row(table, name).unwrap_or_else(|| panic!("no {name} in:\n{table}"));
        assert_eq!(
            said, since,
            "{name}: the probe and the library disagree on the version"
        );
        if supported.contains(flag) {
            assert_eq!(present, "yes", "{name} is supported:\n{table}");
        } else {
            assert_eq!(present, "no", "{name} is missing:\n{table}");
            missing.push(format!("{name} (Linux {since})"));
        }
    }
    // What the kernel's version implies: nothing missing from 6.8 on; on 6.1 the four features
    // of 6.4 to 6.8.
    let version = kernel_version();
    if version >= (6, 8) {
        assert!(missing.is_empty(), "missing on {version:?}: {missing:?}");
    } else if version.0 == 6 && version.1 < 4 {
        assert_eq!(
            missing,
            [
                "WP_UNPOPULATED (Linux 6.4)",
                "POISON (Linux 6.6)",
                "WP_ASYNC (Linux 6.7)",
                "MOVE (Linux 6.8)"
            ]
        );
    }
    eprintln!("uffd-probe on Linux {version:?}: missing {missing:?}");
}
