//! Whether this process holds the privilege a test needs, and a visible skip when it does not.
//!
//! Creating a userfaultfd that handles faults of the kernel (not only of user mode) needs root,
//! `CAP_SYS_PTRACE`, `vm.unprivileged_userfaultfd=1`, or read-write access to `/dev/userfaultfd`
//! (Linux 6.1); `UFFD_FEATURE_EVENT_FORK` needs `CAP_SYS_PTRACE` whatever the creation method
//! (`userfaultfd(2)`, `Documentation/admin-guide/mm/userfaultfd.rst`). A test that needs one of
//! these starts with
//!
//! ```
//! use test_kit::privilege::{require, Need};
//!
//! if !require(Need::KernelFaults) {
//!     return; // skipped, with the reason and the fix printed and recorded
//! }
//! ```
//!
//! The checks probe the kernel (they create and close a userfaultfd, or open and close the
//! device) rather than guess from the user id, so they agree with what the test will meet.

use std::fmt;
use std::io;

use crate::report;

/// A privilege a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A userfaultfd for kernel-mode faults, by any method: `userfaultfd(2)` allowed, or
    /// `/dev/userfaultfd` open for reading and writing.
    KernelFaults,
    /// `userfaultfd(2)` itself, for kernel-mode faults: root, `CAP_SYS_PTRACE`, or
    /// `vm.unprivileged_userfaultfd=1`.
    Syscall,
    /// Read-write access to `/dev/userfaultfd` (Linux 6.1).
    Device,
    /// `CAP_SYS_PTRACE` in the effective set: `UFFD_FEATURE_EVENT_FORK` needs it.
    CapSysPtrace,
    /// Effective user id 0 (e.g. to drop to another user, or to read `/proc/kpageflags`).
    Root,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::KernelFaults => "a userfaultfd for kernel-mode faults",
            Need::Syscall => "userfaultfd(2) for kernel-mode faults",
            Need::Device => "read-write access to /dev/userfaultfd",
            Need::CapSysPtrace => "CAP_SYS_PTRACE",
            Need::Root => "root",
        })
    }
}

/// Why this process lacks `need`, with what would provide it; `None` when it has it.
pub fn missing(need: Need) -> Option<String> {
    let (have, fix) = match need {
        Need::KernelFaults => (
            syscall_works() || device_opens(),
            "run as root, or `sysctl -w vm.unprivileged_userfaultfd=1`, or give this user \
             read-write access to /dev/userfaultfd (`setfacl -m u:$USER:rw /dev/userfaultfd`)",
        ),
        Need::Syscall => (
            syscall_works(),
            "run as root, or grant CAP_SYS_PTRACE, or `sysctl -w vm.unprivileged_userfaultfd=1`",
        ),
        Need::Device => (
            device_opens(),
            "run as root, or `setfacl -m u:$USER:rw /dev/userfaultfd` (Linux 6.1)",
        ),
        Need::CapSysPtrace => (
            has_capability(CAP_SYS_PTRACE),
            "run as root, or give the test binary the capability (`setcap cap_sys_ptrace+ep`); \
             the sysctl and /dev/userfaultfd do not help",
        ),
        Need::Root => (is_root(), "run as root"),
    };
    if have {
        return None;
    }
    Some(format!(
        "needs {need}, which this process lacks (euid {}, vm.unprivileged_userfaultfd={}): {fix}",
        euid(),
        unprivileged_sysctl()
    ))
}

/// Whether this process has `need`; if not, records a skip ([`report::skip`]) with the reason
/// and the fix, and returns `false`: the test then returns.
pub fn require(need: Need) -> bool {
    match missing(need) {
        None => true,
        Some(why) => {
            report::skip(why);
            false
        }
    }
}

/// [`require`] for several needs; skips (once, naming the first missing) unless all are held.
pub fn require_all(needs: &[Need]) -> bool {
    needs.iter().all(|&n| require(n))
}

/// Whether the effective user id is 0.
pub fn is_root() -> bool {
    euid() == 0
}

fn euid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() }
}

/// `CAP_SYS_PTRACE`'s bit number (`linux/capability.h`).
const CAP_SYS_PTRACE: u32 = 19;

/// Whether capability number `cap` is in this process's effective set (`CapEff` of
/// `/proc/self/status`, see `proc_pid_status(5)`).
fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1 << cap) != 0)
}

/// Whether `userfaultfd(2)` gives this process a userfaultfd for kernel-mode faults.
fn syscall_works() -> bool {
    // SAFETY: userfaultfd(2) takes one flags argument and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    close_if_opened(fd)
}

/// Whether `/dev/userfaultfd` opens for reading and writing.
fn device_opens() -> bool {
    // SAFETY: a NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    close_if_opened(fd.into())
}

fn close_if_opened(fd: libc::c_long) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` was just returned to this function and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    true
}

/// `vm.unprivileged_userfaultfd`, or why it cannot be read.
fn unprivileged_sysctl() -> String {
    match std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd") {
        Ok(v) => v.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => "(absent)".to_string(),
        Err(e) => format!("(unreadable: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_every_privilege_and_others_get_a_fix() {
        for need in [
            Need::KernelFaults,
            Need::Syscall,
            Need::CapSysPtrace,
            Need::Root,
        ] {
            match missing(need) {
                None => {}
                Some(why) => {
                    assert!(!is_root(), "root lacks {need}: {why}");
                    assert!(why.contains("run as root"), "{why}");
                }
            }
        }
        assert_eq!(missing(Need::Root).is_none(), is_root());
    }
}
