//! Runs every example binary with its default arguments (so the examples cannot rot) and with a
//! bad argument (which must give a usage message and a non-zero status, not a panic).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

/// The longest an example may run here before it counts as hung (the slowest, `lazy_restore`
/// on 32 MiB in a debug build, takes a few seconds).
const LIMIT: Duration = Duration::from_secs(300);

/// Runs `bin` to completion and returns its output. It waits on a pidfd with [`LIMIT`] as the
/// timeout and kills the child when that passes, so a hung example fails the suite instead of
/// blocking it. (The child is reaped only by `wait` below, so `kill` cannot hit another
/// process.)
fn run(bin: &str, args: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));

    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; the pid is our
    // child, which is not reaped before `wait` below, so it names that child.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
    assert!(raw >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let exited = loop {
        // SAFETY: `pfd` is one live pollfd, as the count says.
        match unsafe { libc::poll(&mut pfd, 1, LIMIT.as_millis() as libc::c_int) } {
            0 => break false,
            1.. => break true,
            _ => assert_eq!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::Interrupted
            ),
        }
    };
    if !exited {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for {bin}: {e}"));
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        exited,
        "{bin} {args:?} ran longer than {LIMIT:?} and was killed:\n{}\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    Output {
        status,
        stdout,
        stderr,
    }
}

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

/// Runs `bin` with a bad argument: status 2, a usage message, no panic.
fn assert_usage(bin: &str, args: &[&str]) {
    let out = run(bin, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{bin} {args:?}: {stderr}");
    assert!(stderr.contains("usage:"), "{bin}: no usage in {stderr}");
    assert!(!stderr.contains("panicked"), "{bin} panicked: {stderr}");
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
fn manpage_bad_argument() {
    assert_usage(env!("CARGO_BIN_EXE_manpage"), &["lots"]);
    assert_usage(env!("CARGO_BIN_EXE_manpage"), &["3", "4"]);
}

#[test]
fn lazy_restore_small() {
    // The default is 256 MiB; 32 MiB keeps the unoptimised test build quick.
    let out = assert_runs(
        env!("CARGO_BIN_EXE_lazy-restore"),
        &["--size", "32"],
        &[
            "faults: ",
            "zeropage",
            "throughput: ",
            "MB/s",
            "verified: all 8192 pages",
        ],
    );
    assert!(!out.contains("zeropage 0,"), "{out}");
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
fn lazy_restore_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_lazy-restore");
    assert_usage(bin, &["--size"]);
    assert_usage(bin, &["--size", "zero"]);
    assert_usage(bin, &["--size", "0"]);
    assert_usage(bin, &["--bogus"]);
    // A snapshot that does not exist is a failed run, not a usage error.
    let out = run(bin, &["--snapshot", "/nonexistent/snapshot"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn dirty_tracking_default() {
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
fn dirty_tracking_bad_argument() {
    assert_usage(env!("CARGO_BIN_EXE_dirty-tracking"), &["--rounds", "-1"]);
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
fn minor_shmem_bad_argument() {
    assert_usage(env!("CARGO_BIN_EXE_minor-shmem"), &["--pages", "many"]);
}

#[test]
fn fork_events_default() {
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

#[test]
fn fork_events_bad_argument() {
    assert_usage(env!("CARGO_BIN_EXE_fork-events"), &["extra"]);
}

#[test]
fn page_server_default() {
    assert_runs(
        env!("CARGO_BIN_EXE_page-server"),
        &[],
        &[
            "listening on 127.0.0.1:",
            "prefetched",
            "MB/s",
            "verified: all 8192 pages",
        ],
    );
}

#[test]
fn page_server_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_page-server");
    assert_usage(bin, &["--prefetch", "0"]);
    assert_usage(bin, &["--serve", "--connect", "127.0.0.1:1"]);
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
}

#[test]
fn uffd_probe_bad_argument() {
    assert_usage(env!("CARGO_BIN_EXE_uffd-probe"), &["--yaml"]);
}
