//! Test utilities shared by the workspace's tests and examples. Not published.
//!
//! [`report`] is how a test says it did not check what it is named for (a skip, with the reason
//! and the fix) or that it checked the typed "this kernel lacks X" error instead (asserted
//! unsupported): both are printed past the test harness's output capture and recorded, so that
//! `cargo xtask test` and `cargo xtask vm-test` end with their counts and reasons.
//! [`privilege`] checks what a test needs (a userfaultfd for kernel-mode faults, `CAP_SYS_PTRACE`,
//! root) and skips through [`report`] when it is missing.

pub mod privilege;
pub mod report;
