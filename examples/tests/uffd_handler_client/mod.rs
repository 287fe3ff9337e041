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

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use userfaultfd::{FeatureFlags, UffdBuilder};

/// The longest any wait of a test lasts.
pub const LIMIT: Duration = Duration::from_secs(120);
/// The environment variable that carries a [`VmSpec`] to the VM process.
pub const VM_ENV: &str = "UFFD_HANDLER_TEST_VM";
/// The huge page size.
pub const HUGE: usize = 2 << 20;

/// Lines a child printed, and a condition variable signalled at each new line and at the end.
#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn collect(pipe: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let l = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                l.lines.lock().unwrap().0.push(line);
                l.changed.notify_all();
            }
            l.lines.lock().unwrap().1 = true;
            l.changed.notify_all();
        });
        lines
    }

    /// Waits at most `timeout` for a line (from the start) that `pred` accepts.
    fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        loop {
            if let Some(l) = g.0.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if g.1 || left.is_zero() {
                return None;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits at most `timeout` for `n` lines that `pred` accepts.
    fn wait_count(
        &self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        loop {
            let found: Vec<String> = g.0.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if g.1 || left.is_zero() {
                return None;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().0.clone()
    }

    /// Waits at most `timeout` for the pipe's end.
    fn wait_end(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        while !g.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }
}

/// Waits at most `timeout` for `child` to exit (a pidfd, no sleeping); `None` on time-out.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; the child is not
    // reaped yet (try_wait said so), so its pid names it.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
    assert!(raw >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, as the count says.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if n > 0 {
            return Some(child.wait().expect("wait"));
        }
        if n == 0 {
            return None;
        }
    }
}

/// The handler, running; killed (`SIGKILL`) and reaped when dropped, its log printed then if
/// the test is failing.
pub struct Handler {
    child: Child,
    stderr: Arc<Lines>,
    pub socket: PathBuf,
    status: Option<ExitStatus>,
}

impl Handler {
    /// Starts `uffd-handler SOCKET MEMFILE ARGS...` and waits for it to listen.
    pub fn start(socket: &Path, memfile: &Path, args: &[&str]) -> Handler {
        let mut child = Command::new(env!("CARGO_BIN_EXE_uffd-handler"))
            .arg(socket)
            .arg(memfile)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run uffd-handler");
        let stderr = Lines::collect(child.stderr.take().unwrap());
        let h = Handler {
            child,
            stderr,
            socket: socket.to_owned(),
            status: None,
        };
        assert!(
            h.stderr
                .wait(LIMIT, |l| l.contains("listening on"))
                .is_some(),
            "the handler did not start listening:\n{}",
            h.log()
        );
        h
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits (bounded) for a log line containing every one of `parts`.
    pub fn wait_line(&self, parts: &[&str]) -> String {
        self.stderr
            .wait(LIMIT, |l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no handler line with {parts:?}:\n{}", self.log()))
    }

    /// Waits (bounded) for `n` log lines containing every one of `parts`.
    pub fn wait_lines(&self, parts: &[&str], n: usize) -> Vec<String> {
        self.stderr
            .wait_count(LIMIT, n, |l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| {
                panic!(
                    "fewer than {n} handler lines with {parts:?}:\n{}",
                    self.log()
                )
            })
    }

    pub fn lines(&self) -> Vec<String> {
        self.stderr.all()
    }

    pub fn log(&self) -> String {
        self.stderr.all().join("\n")
    }

    /// The JSON stats lines (`--stats`).
    pub fn stats(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) touches no memory; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits (bounded) for the handler to exit; its status.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let st = wait_exit(&mut self.child, LIMIT)
            .unwrap_or_else(|| panic!("the handler did not exit:\n{}", self.log()));
        self.stderr.wait_end(LIMIT);
        self.status = Some(st);
        st
    }

    /// Kills it (`SIGKILL`) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait"));
            self.stderr.wait_end(LIMIT);
        }
    }

    /// Checks that the handler never panicked.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "{log}");
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- handler log ---\n{}\n---", self.log());
        }
    }
}

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
// Firecracker's part.

/// Sends `bytes` on `sock` in one `sendmsg(2)` with `fds` attached (`SCM_RIGHTS`), as
/// Firecracker's `send_with_fd` does.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        assert!(msg.msg_controllen as usize <= std::mem::size_of_val(&cbuf));
        // SAFETY: msg_control points at `cbuf`, large enough for one header and the fds (checked
        // above), so CMSG_FIRSTHDR is non-null and CMSG_DATA points inside `cbuf`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: `msg` and everything it points to are live for the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    assert_eq!(n as usize, bytes.len(), "short sendmsg");
    Ok(())
}

/// Connects to `socket` and sends one message with `fds`.
pub fn send_handshake(socket: &Path, bytes: &[u8], fds: &[RawFd]) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connect to the handler");
    send_with_fds(s.as_raw_fd(), bytes, fds).expect("sendmsg");
    s
}

/// Waits (bounded) for the handler to close `s`: true if it did (end of file or reset).
pub fn closed_by_peer(s: &UnixStream) -> bool {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut b = [0u8; 64];
    match (&*s).read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// The JSON Firecracker sends: `GuestRegionUffdMapping`s in its field order.
pub fn mappings_json(
    regions: &[(usize, usize, u64)],
    page_size: usize,
    field: PageSizeField,
) -> String {
    let items: Vec<String> = regions
        .iter()
        .map(|&(addr, size, offset)| {
            let ps = match field {
                PageSizeField::PageSize => format!("\"page_size\":{page_size}"),
                PageSizeField::PageSizeKib => format!("\"page_size_kib\":{page_size}"),
                PageSizeField::Both => {
                    format!("\"page_size\":{page_size},\"page_size_kib\":{page_size}")
                }
            };
            format!("{{\"base_host_virt_addr\":{addr},\"size\":{size},\"offset\":{offset},{ps}}}")
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The pid of the process listening at the other end of `s` (`SO_PEERCRED`).
fn peer_pid(s: &UnixStream) -> libc::pid_t {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live and sized for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_PEERCRED: {}", std::io::Error::last_os_error());
    cred.pid
}

/// Guest memory: one anonymous mapping per region (private, or hugetlb).
struct Guest {
    regions: Vec<(usize, usize, u64)>, // (addr, size, file offset)
    page_size: usize,
}

impl Guest {
    fn map(spec: &VmSpec) -> Guest {
        let page_size = if spec.huge { HUGE } else { 4096 };
        let regions = spec
            .regions
            .iter()
            .map(|&(size, offset)| {
                let flags = libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | if spec.huge { libc::MAP_HUGETLB } else { 0 };
                // SAFETY: a new anonymous mapping; no existing memory is affected.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        flags,
                        -1,
                        0,
                    )
                };
                assert_ne!(
                    p,
                    libc::MAP_FAILED,
                    "mmap: {}",
                    std::io::Error::last_os_error()
                );
                if !spec.huge {
                    examples::no_huge_pages(p.cast(), size).expect("madvise");
                }
                (p as usize, size, offset)
            })
            .collect();
        Guest { regions, page_size }
    }

    fn pages(&self) -> Vec<(usize, usize)> {
        self.regions
            .iter()
            .enumerate()
            .flat_map(|(ri, r)| (0..r.1 / self.page_size).map(move |p| (ri, p)))
            .collect()
    }

    /// Copies page `p` of region `ri` out of guest memory (faulting it in).
    fn read(&self, ri: usize, p: usize, out: &mut [u8]) {
        let addr = self.regions[ri].0 + p * self.page_size;
        // SAFETY: the page lies inside a mapping of this process that stays mapped for the
        // VM's life; its contents are defined once the fault is served (the read blocks until
        // then); no Rust reference points there (raw copy into `out`, of page size).
        unsafe {
            std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), self.page_size)
        };
    }

    /// The bytes the memory file holds for page `p` of region `ri`.
    fn expected<'a>(&self, file: &'a [u8], ri: usize, p: usize) -> &'a [u8] {
        let off = self.regions[ri].2 as usize + p * self.page_size;
        &file[off..off + self.page_size]
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "uffd-vm: {line}");
    let _ = out.flush();
}

fn fail(msg: String) -> ! {
    eprintln!("uffd-vm: FAILED: {msg}");
    std::process::exit(1)
}

fn wait_stdin() {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// The VM's side: everything Firecracker does, then the checks. Exits the process: status 0
/// after printing `uffd-vm: ok`, 1 with `uffd-vm: FAILED: ...` on a wrong byte, 3 when the
/// handler exits before the restore is complete.
pub fn vm_main(spec: VmSpec) -> ! {
    let file = std::fs::read(&spec.memfile).unwrap_or_else(|e| fail(format!("memory file: {e}")));
    let guest = Guest::map(&spec);
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .unwrap_or_else(|e| fail(format!("userfaultfd: {e}")));
    for &(addr, size, _) in &guest.regions {
        uffd.register(addr as *mut libc::c_void, size)
            .unwrap_or_else(|e| fail(format!("register: {e}")));
    }
    let sock = UnixStream::connect(&spec.socket).unwrap_or_else(|e| fail(format!("connect: {e}")));
    let handler = peer_pid(&sock);

    // The watchdog: the handler exiting before the restore is verified is a failure, reported
    // at once (the threads waiting on faults would otherwise wait forever).
    let done = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicUsize::new(0));
    let total = guest.pages().len();
    {
        let (done, verified) = (Arc::clone(&done), Arc::clone(&verified));
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, handler, 0) };
        if raw < 0 {
            fail(format!(
                "pidfd_open({handler}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        thread::spawn(move || loop {
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut pfd, 1, -1) } > 0 && !done.load(Ordering::SeqCst) {
                eprintln!(
                    "uffd-vm: FAILED: the page-fault handler (pid {handler}) exited before guest \
                     memory was restored ({} of {total} pages verified)",
                    verified.load(Ordering::SeqCst)
                );
                // SAFETY: _exit ends the process at once (threads blocked on faults included).
                unsafe { libc::_exit(3) };
            }
            if done.load(Ordering::SeqCst) {
                return;
            }
        });
    }

    let json = mappings_json(&guest.regions, guest.page_size, spec.field);
    let t0 = Instant::now();
    send_with_fds(sock.as_raw_fd(), json.as_bytes(), &[uffd.as_raw_fd()])
        .unwrap_or_else(|e| fail(format!("sending the handshake: {e}")));
    say("handshake sent");
    let sock = if spec.close_socket {
        drop(sock);
        None
    } else {
        Some(sock)
    };

    let mut buf = vec![0u8; guest.page_size];
    let check = |ri: usize, p: usize, buf: &mut [u8], what: &str| {
        guest.read(ri, p, buf);
        let want = guest.expected(&file, ri, p);
        if let Some(off) = buf.iter().zip(want).position(|(a, b)| a != b) {
            fail(format!(
                "{what}: region {ri} page {p} byte {off}: {:#04x}, the memory file has {:#04x}",
                buf[off], want[off]
            ));
        }
    };
    // The first touch (a demand fault).
    check(0, 0, &mut buf, "first touch");
    let first_touch = t0.elapsed();
    verified.fetch_add(1, Ordering::SeqCst);

    if spec.second_handshake {
        let sock = sock
            .as_ref()
            .expect("second_handshake needs the socket open");
        let other = UffdBuilder::new().non_blocking(true).create().unwrap();
        send_with_fds(sock.as_raw_fd(), json.as_bytes(), &[other.as_raw_fd()])
            .unwrap_or_else(|e| fail(format!("sending the second handshake: {e}")));
        if !closed_by_peer(sock) {
            fail("the handler did not close the connection after a second handshake".into());
        }
        say("second handshake refused");
    }

    let mut order = guest.pages();
    examples::Rng::new(spec.seed).shuffle(&mut order);
    if let Some(n) = spec.pause_after {
        for &(ri, p) in &order[..n] {
            check(ri, p, &mut buf, "before the pause");
            verified.fetch_add(1, Ordering::SeqCst);
        }
        say("paused");
        wait_stdin();
    }

    // Several threads touch and verify the pages in random order.
    let barrier = Barrier::new(spec.threads);
    thread::scope(|s| {
        for t in 0..spec.threads {
            let (order, barrier, verified, check) = (&order, &barrier, &verified, &check);
            let threads = spec.threads;
            let same = spec.same_order;
            s.spawn(move || {
                let mut buf = vec![0u8; guest.page_size];
                barrier.wait();
                for (i, &(ri, p)) in order.iter().enumerate() {
                    if same || i % threads == t {
                        check(ri, p, &mut buf, "touch");
                        verified.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let all_touched = t0.elapsed();
    // Every byte, once more, now that everything is present.
    for &(ri, p) in &order {
        check(ri, p, &mut buf, "final check");
    }

    if spec.balloon {
        // The balloon frees part of region 0: REMOVE events; those pages must read as zeros.
        let (addr, size, _) = guest.regions[0];
        let ps = guest.page_size;
        let (first, count) = (size / ps / 4, (size / ps / 4).max(1));
        // SAFETY: a range inside our own guest mapping; MADV_DONTNEED discards its pages (no
        // Rust reference points there).
        let rc = unsafe {
            libc::madvise(
                (addr + first * ps) as *mut libc::c_void,
                count * ps,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            fail(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        for p in first..first + count {
            guest.read(0, p, &mut buf);
            if let Some(off) = buf.iter().position(|&b| b != 0) {
                fail(format!(
                    "balloon: removed page {p} byte {off} is {:#04x}, not zero",
                    buf[off]
                ));
            }
        }
        // The rest is untouched.
        for &(ri, p) in &order {
            if ri != 0 || p < first || p >= first + count {
                check(ri, p, &mut buf, "after the balloon");
            }
        }
        say(&format!("balloon ok ({count} pages removed)"));
    }

    done.store(true, Ordering::SeqCst);

    if !spec.write_pages.is_empty() {
        for &(ri, p) in &spec.write_pages {
            let addr = guest.regions[ri].0 + p * guest.page_size;
            let m = marker(ri, p);
            for i in 0..guest.page_size {
                // SAFETY: inside our guest mapping, present (verified above); a raw write.
                unsafe { ((addr + i) as *mut u8).write_volatile(m ^ i as u8) };
            }
        }
        say("written");
        wait_stdin();
    }

    if spec.bench {
        // The eager alternative: read the whole file into fresh anonymous memory.
        let t = Instant::now();
        let mut copy = vec![0u8; file.len()];
        let mut f = std::fs::File::open(&spec.memfile).unwrap();
        f.read_exact(&mut copy).unwrap();
        let eager = t.elapsed();
        assert_eq!(copy.len(), file.len());
        say(&format!(
            "bench first_touch_us={:.1} all_touched_ms={:.1} eager_ms={:.1}",
            first_touch.as_secs_f64() * 1e6,
            all_touched.as_secs_f64() * 1e3,
            eager.as_secs_f64() * 1e3
        ));
    }
    say(&format!("ok pages={total}"));
    drop(sock);
    std::process::exit(0)
}

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
