//! What the example tests share: running a binary with a time bound.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

/// The longest an example may run here before it counts as hung (the slowest, `lazy_restore`
/// on 32 MiB or `uffd-bench all` on 64 pages, take a few seconds).
const LIMIT: Duration = Duration::from_secs(300);

/// Runs `bin` to completion and returns its output, failing the test if it runs longer than
/// [`LIMIT`] (see [`run_limited`]).
pub fn run(bin: &str, args: &[&str]) -> Output {
    run_limited(bin, args, LIMIT).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `bin` to completion and returns its output. It waits on a pidfd with `limit` as the
/// timeout and kills the child's process group when that passes (then `Err` with what the
/// program printed), so a hung example fails the suite instead of blocking it.
pub fn run_limited(bin: &str, args: &[&str], limit: Duration) -> Result<Output, String> {
    let mut child = Command::new(bin)
        .args(args)
        // Its own process group, so a time-out kills what it started too (page-server's
        // `--serve` child), and nothing keeps the output pipes open afterwards.
        .process_group(0)
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
        match unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as libc::c_int) } {
            0 => break false,
            1.. => break true,
            _ => assert_eq!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::Interrupted
            ),
        }
    };
    if !exited {
        // SAFETY: kill(2) touches no memory of ours. The group id is the child's pid, which
        // stays reserved until `wait` below reaps the child, so no other group can have it.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for {bin}: {e}"));
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    if !exited {
        return Err(format!(
            "{bin} {args:?} ran longer than {limit:?} and was killed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
