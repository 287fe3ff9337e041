//! Runs every example binary with its default arguments (so the examples cannot rot); bad
//! arguments are tested in `arguments.rs`.

mod common;
use common::run;

/// Runs `bin` and asserts success and that stdout contains every line fragment of `expect`.
fn assert_runs(bin: &str, args: &[&str], expect: &[&str]) -> String {
    let out = run(bin, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for e in expect {
        assert!(stdout.contains(e), "{bin}: no {e:?} in:\n{stdout}");
    }
    stdout
}

#[test]
fn manpage_default() {
    assert_runs(
        env!("CARGO_BIN_EXE_manpage"),
        &[],
        &[
            "UFFD_EVENT_PAGEFAULT",
            "in main(): C",
            "verified: 3 faults served",
        ],
    );
}

#[test]
fn lazy_restore_small() {
    // The default is 256 MiB; 32 MiB keeps the unoptimised test build quick.
    let out = assert_runs(
        env!("CARGO_BIN_EXE_lazy-restore"),
        &["--size", "32"],
        &[
            "demand faults",
            "prefetched",
            "by background fill",
            "fault latency (read to wake): p50",
            "populated: all 33554432 bytes",
            "MB/s",
            "verified: all 8192 pages",
        ],
    );
    assert!(!out.contains(" 0 demand faults"), "{out}");
}

#[test]
fn lazy_restore_real_file() {
    let path = std::env::temp_dir().join(format!("lazy-restore-test-{}.bin", std::process::id()));
    // A file whose size is not a page multiple: the last page is padded with zeros.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let r = std::panic::catch_unwind(|| {
        assert_runs(
            env!("CARGO_BIN_EXE_lazy-restore"),
            &["--snapshot", path.to_str().unwrap()],
            &["verified: all 25 pages"],
        )
    });
    let _ = std::fs::remove_file(&path);
    r.unwrap();
}

#[test]
fn dirty_tracking_default() {
    let supported = userfaultfd::UffdBuilder::probe_features().expect("probe features");
    if !supported.contains(userfaultfd::FeatureFlags::WP_ASYNC) {
        // Before Linux 6.7 the example stops at its WP_ASYNC half, naming what is missing.
        let out = run(env!("CARGO_BIN_EXE_dirty-tracking"), &[]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("WP_ASYNC (Linux 6.7)"), "{text}");
        assert!(!text.contains("panicked"), "{text}");
        test_kit::report::unsupported("WP_ASYNC", "6.7", "dirty-tracking");
        return;
    }
    assert_runs(
        env!("CARGO_BIN_EXE_dirty-tracking"),
        &[],
        &[
            "sync WP faults round 3",
            "WP_ASYNC + PAGEMAP_SCAN round 3",
            "verified: both methods",
        ],
    );
}

#[test]
fn minor_shmem_default() {
    assert_runs(
        env!("CARGO_BIN_EXE_minor-shmem"),
        &[],
        &["minor faults: 256", "verified: all 256 pages"],
    );
}

#[test]
fn fork_events_default() {
    if !test_kit::privilege::require(test_kit::privilege::Need::CapSysPtrace) {
        return;
    }
    assert_runs(
        env!("CARGO_BIN_EXE_fork-events"),
        &[],
        &[
            "2. fork: the child",
            "3. mremap",
            "4. madvise(MADV_DONTNEED)",
            "5. munmap",
            "events: fork 1, remap 1, remove 1, unmap 1",
            "verified: every event followed",
        ],
    );
}

/// Run by an unprivileged user, `fork-events` must say first that it needs `CAP_SYS_PTRACE`,
/// not advise the sysctl, `/dev/userfaultfd` or user-mode-only faults, none of which helps.
/// Needs root (to drop to `nobody`) and `setpriv` (util-linux); skipped otherwise.
#[test]
fn fork_events_unprivileged_says_cap_sys_ptrace_first() {
    let setpriv = "/usr/bin/setpriv";
    // SAFETY: geteuid has no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 || !std::path::Path::new(setpriv).exists() {
        test_kit::report::skip(format!(
            "needs root and {setpriv} (util-linux) to run fork-events as nobody: run as root"
        ));
        return;
    }
    let out = run(
        setpriv,
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_fork-events"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("fork-events: FAILED: fork-events needs CAP_SYS_PTRACE"),
        "{stderr}"
    );
    let ptrace = stderr.find("CAP_SYS_PTRACE").unwrap();
    for other in [
        "unprivileged_userfaultfd",
        "/dev/userfaultfd",
        "user-mode-only",
    ] {
        let at = stderr.find(other).unwrap_or(usize::MAX);
        assert!(
            ptrace < at,
            "{other} is advised before CAP_SYS_PTRACE: {stderr}"
        );
    }
    assert!(!stderr.contains("user_mode_only(true)"), "{stderr}");
}

#[test]
fn page_server_default() {
    assert_runs(
        env!("CARGO_BIN_EXE_page-server"),
        &[],
        &[
            "listening on 127.0.0.1:",
            "aligned chunks of 16 pages), background fill off",
            "demand faults: ",
            "pages: 512 demand + 7680 prefetched + 0 background, failed: 0",
            "on 1 connection(s); fault latency p50",
            "MB/s",
            "verified: all 8192 pages match the server's image, each copied once",
        ],
    );
}

#[test]
fn page_server_without_prefetch() {
    // One page per fault.
    assert_runs(
        env!("CARGO_BIN_EXE_page-server"),
        &["--pages", "300", "--prefetch", "1"],
        &[
            "pages: 300 demand + 0 prefetched",
            "requests: 300 ",
            "verified: all 300 pages",
        ],
    );
    // 3 rounds down to chunks of 2 pages.
    assert_runs(
        env!("CARGO_BIN_EXE_page-server"),
        &["--pages", "300", "--prefetch", "3"],
        &[
            "aligned chunks of 2 pages",
            "pages: 150 demand + 150 prefetched",
            "verified: all 300 pages",
        ],
    );
}

#[test]
fn uffd_probe_table_and_json() {
    let bin = env!("CARGO_BIN_EXE_uffd-probe");
    assert_runs(
        bin,
        &[],
        &[
            "kernel ",
            "vm.unprivileged_userfaultfd",
            "/dev/userfaultfd",
            "MOVE",
            "anonymous",
            "huge pages",
        ],
    );
    let json = assert_runs(
        bin,
        &["--json"],
        &["\"features\"", "\"registrations\"", "\"usable\": true"],
    );
    assert!(json.trim_start().starts_with('{') && json.trim_end().ends_with('}'));
    // The sysctl is a number (or null where the kernel has none), not a string.
    let value = json
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"unprivileged_userfaultfd\": "))
        .unwrap_or_else(|| panic!("no unprivileged_userfaultfd in:\n{json}"))
        .trim_end_matches(',');
    assert!(
        value == "null" || value.parse::<u32>().is_ok(),
        "unprivileged_userfaultfd is {value}, not a number"
    );
}

#[test]
fn uffd_stress_small_reports_progress() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let pages = (1 << 20) / userfaultfd::page_size();
    let first = format!("running [1/2] Anon wp=false: {pages} pages x 2 bounces");
    let out = assert_runs(
        env!("CARGO_BIN_EXE_uffd-stress"),
        &[
            "--bounces",
            "2",
            "--mib",
            "1",
            "--mem",
            "anon",
            "--wp",
            "both",
            "--ops",
            "200",
        ],
        &[
            "uffd-stress: 2 run(s) ([Anon] x wp [false, true]), each 1 MiB bounced 2 times",
            &first,
            "running [2/2] Anon wp=true",
            "ok      Anon wp=true",
        ],
    );
    // The first line comes before any run: a long run is never silent from the start.
    assert!(out.starts_with("uffd-stress: "), "{out}");
}

#[test]
fn a_hung_program_and_its_children_are_killed() {
    // A stand-in for a hung example that started a server: the shell and its background child
    // both outlive the limit. Both must be killed, or the pipe readers would wait for them.
    let r = common::run_limited(
        "/bin/sh",
        &["-c", "echo started; sleep 600 & sleep 600"],
        std::time::Duration::from_millis(200),
    );
    let e = r.expect_err("a program that outlives its limit is an error");
    assert!(e.contains("was killed") && e.contains("started"), "{e}");
}
