//! [`Vm`]: a VM process, and the [`VmSpec`] it runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::process::{wait_exit, Lines};
use super::{LIMIT, VM_ENV};

/// Which page-size field(s) the handshake carries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum PageSizeField {
    PageSize,
    PageSizeKib,
    Both,
}

/// What a VM does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    pub socket: PathBuf,
    pub memfile: PathBuf,
    /// Regions: (size, offset in the memory file).
    pub regions: Vec<(usize, u64)>,
    /// Hugetlb (2 MiB pages) guest memory.
    pub huge: bool,
    pub field: PageSizeField,
    pub threads: usize,
    /// Every thread touches every page, in one shared random order, all starting at once.
    pub same_order: bool,
    pub seed: u64,
    /// Close the socket right after the handshake.
    pub close_socket: bool,
    /// After the first page is served, send a second handshake and expect the handler to
    /// close the connection.
    pub second_handshake: bool,
    /// After verifying: `MADV_DONTNEED` part of region 0 and check that it reads as zeros.
    pub balloon: bool,
    /// Touch this many pages, print `uffd-vm: paused`, then wait for a line on stdin.
    pub pause_after: Option<usize>,
    /// After verifying, write these (region, page) pages with a marker, print
    /// `uffd-vm: written`, and wait for a line on stdin before exiting.
    pub write_pages: Vec<(usize, usize)>,
    /// Print timings (`uffd-vm: first_touch_us=... all_touched_ms=... eager_ms=...`).
    pub bench: bool,
}

impl VmSpec {
    pub fn new(socket: &Path, memfile: &Path, regions: Vec<(usize, u64)>) -> VmSpec {
        VmSpec {
            socket: socket.to_owned(),
            memfile: memfile.to_owned(),
            regions,
            huge: false,
            field: PageSizeField::PageSize,
            threads: 2,
            same_order: false,
            seed: 1,
            close_socket: false,
            second_handshake: false,
            balloon: false,
            pause_after: None,
            write_pages: Vec::new(),
            bench: false,
        }
    }
}

/// The marker byte written at `(region, page)` by [`VmSpec::write_pages`]: byte `i` of the
/// page is `marker(region, page) ^ i`.
pub fn marker(region: usize, page: usize) -> u8 {
    (0x5a ^ (region * 31 + page * 7)) as u8
}

/// A VM process (this test binary, running `vm_process` with a [`VmSpec`]); killed when
/// dropped.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    status: Option<ExitStatus>,
}

impl Vm {
    pub fn spawn(spec: &VmSpec) -> Vm {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args(["vm_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(VM_ENV, serde_json::to_string(spec).unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run the VM process");
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        Vm {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits (bounded) for a stdout line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str) -> String {
        self.stdout
            .wait(LIMIT, |l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("the VM printed no {prefix:?}:\n{}", self.output()))
    }

    /// Lets a paused VM go on. A VM that has already exited (its handler was killed, and it
    /// failed on its own before being resumed) has closed its stdin: that is not an error
    /// here; the caller checks how the VM ended.
    pub fn resume(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        match stdin.write_all(b"go\n").and_then(|()| stdin.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("resuming the VM: {e}"),
        }
    }

    /// Waits (bounded) for the VM to exit.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let st = wait_exit(&mut self.child, LIMIT).unwrap_or_else(|| {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("the VM did not exit within {LIMIT:?}:\n{}", self.output())
        });
        self.stdout.wait_end(LIMIT);
        self.stderr.wait_end(LIMIT);
        self.status = Some(st);
        st
    }

    /// Waits for the VM and checks that it verified everything and exited with status 0.
    pub fn expect_ok(&mut self) -> String {
        let st = self.wait();
        assert!(st.success(), "the VM failed ({st}):\n{}", self.output());
        self.wait_line("uffd-vm: ok")
    }

    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait"));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.all().join("\n")
    }

    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.all().join("\n"),
            self.stderr()
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
