//! The test client of `uffd-handler`: it plays Firecracker's part of the UFFD snapshot
//! backend byte for byte, and runs the processes of a test with bounded waits.
//!
//! - [`Handler`]: the handler, a child process whose stderr is collected line by line
//!   ([`Handler::wait_line`] waits, bounded, for a line); killed when dropped.
//! - [`Vm`]: a "VM", a child process running this test binary again with only its
//!   `vm_process` test selected and a [`VmSpec`] in the environment ([`vm_main`]). Like
//!   Firecracker it maps guest memory (private anonymous, or hugetlb), creates the userfaultfd
//!   (non-blocking, `EVENT_REMOVE`), registers the regions `MISSING`, connects, sends the JSON
//!   array of `GuestRegionUffdMapping` with the userfaultfd attached (`SCM_RIGHTS`), then
//!   touches its memory from several threads in random order and verifies every byte against
//!   the memory file. A VM must be its own process: the handler learns that a VM ended from its
//!   process's exit.
//! - [`send_handshake`]: one message with descriptors, for the bad-input tests.

#![allow(dead_code)]

mod guest;
mod handler;
mod handshake;
mod process;
mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

// Each test binary that includes this module uses some of these.
pub use guest::vm_main;
#[allow(unused_imports)]
pub use handler::Handler;
#[allow(unused_imports)]
pub use handshake::{closed_by_peer, send_handshake};
#[allow(unused_imports)]
pub use vm::{marker, PageSizeField, Vm, VmSpec};

/// The longest any wait of a test lasts.
pub const LIMIT: Duration = Duration::from_secs(120);
/// The environment variable that carries a [`VmSpec`] to the VM process.
pub const VM_ENV: &str = "UFFD_HANDLER_TEST_VM";
/// The huge page size.
pub const HUGE: usize = 2 << 20;

/// Free 2 MiB huge pages (`HugePages_Free` of `/proc/meminfo`).
pub fn free_huge_pages() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("uffd-handler-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a memory file of `len` bytes (pattern pages; about one in eight all zero).
pub fn memfile(path: &Path, len: usize, seed: u64) {
    assert_eq!(len % 4096, 0);
    examples::write_pattern_file(path, len / 4096, seed).unwrap();
}
