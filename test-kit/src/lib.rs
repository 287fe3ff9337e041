//! Test utilities shared by the workspace's tests and examples. Not published.
//!
//! [`report`] is how a test says it did not check what it is named for (a skip, with the reason
//! and the fix) or that it checked the typed "this kernel lacks X" error instead (asserted
//! unsupported): both are printed past the test harness's output capture and recorded, so that
//! `cargo xtask test` and `cargo xtask vm-test` end with their counts and reasons.
//! [`privilege`] checks what a test needs (a userfaultfd for kernel-mode faults, `CAP_SYS_PTRACE`,
//! root) and skips through [`report`] when it is missing.
//!
//! The rest is shared by the tests and the example programs: their command lines ([`args`],
//! [`exit`]), a deterministic random number generator ([`rng`]) and page pattern ([`pattern`]),
//! raw mappings ([`mapping`]), bounded waits on fds ([`wait`]) and children ([`child`]), the
//! peer of a Unix socket ([`peer`]),
//! temporary files ([`temp`]) and units ([`measure`]). With the `stress` feature, `stress` is
//! the stress engine of `userfaultfd/tests/stress.rs` and the `uffd-stress` program.

pub mod args;
pub mod child;
pub mod exit;
pub mod mapping;
pub mod measure;
pub mod pattern;
pub mod peer;
pub mod privilege;
pub mod report;
pub mod rng;
#[cfg(feature = "stress")]
pub mod stress;
pub mod temp;
pub mod wait;

/// The base page size (`sysconf(_SC_PAGESIZE)`).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).expect("sysconf(_SC_PAGESIZE) is positive")
}
