//! `userfaultfd::serve` serving other processes: a "VMM" child that hands over its userfaultfd
//! and is served until it exits (`monitored_process`), and a forked child served through
//! `on_fork`. Every wait is bounded.

mod common;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use common::serving::{anon, byte_of, dirty_set, image};
use common::{ps, Map, TIMEOUT};
use userfaultfd::serve::{MemorySource, PageSource, Region, Server, ServerBuilder};
use userfaultfd::{FeatureFlags, UffdBuilder};

/// The "VMM" of [`serving_another_process_until_it_exits`], between `fork` and `_exit`: only
/// raw system calls and no allocation. Creates a userfaultfd, registers `pages` pages at
/// `addr` (mapped by the parent before the fork, so the address is known to both), sends the
/// fd, waits for the go byte, reads one byte of every page and checks it, then exits: 0 when
/// every byte matched.
fn vmm_child(sock: i32, addr: usize, pages: usize, page: usize) -> i32 {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | userfaultfd::sys::UFFD_USER_MODE_ONLY;
    // SAFETY: userfaultfd(2) takes one integer and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
    if fd < 0 {
        return 10;
    }
    let mut api = userfaultfd::sys::uffdio_api {
        api: userfaultfd::sys::UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: a live uffdio_api for UFFDIO_API.
    if unsafe { libc::ioctl(fd, userfaultfd::sys::UFFDIO_API as _, &mut api) } != 0 {
        return 11;
    }
    let mut reg = userfaultfd::sys::uffdio_register {
        range: userfaultfd::sys::uffdio_range {
            start: addr as u64,
            len: (pages * page) as u64,
        },
        mode: userfaultfd::sys::UFFDIO_REGISTER_MODE_MISSING
            | userfaultfd::sys::UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: a live uffdio_register over this child's copy of the parent's mapping.
    if unsafe { libc::ioctl(fd, userfaultfd::sys::UFFDIO_REGISTER as _, &mut reg) } != 0 {
        return 12;
    }
    if !common::send_fd(sock, fd) {
        return 13;
    }
    let mut go = 0u8;
    // SAFETY: reads one byte into `go`.
    if unsafe { libc::read(sock, (&mut go as *mut u8).cast(), 1) } != 1 {
        return 14;
    }
    for p in 0..pages {
        // SAFETY: the page is mapped in this child; the read blocks until the server fills it.
        let v = unsafe { std::ptr::read_volatile((addr + p * page) as *const u8) };
        if v != byte_of(p) {
            return 20;
        }
    }
    // Two writes for the server's dirty tracking (write-protect faults it resolves).
    for p in [3, 7] {
        // SAFETY: as above; the write waits until the server unprotects the page.
        unsafe { std::ptr::write_volatile((addr + p * page) as *mut u8, 0xee) };
    }
    0
}

/// Held by [`a_forked_child_is_served_through_on_fork`] while its `EVENT_FORK` server runs, and
/// by every other fork of this test binary: the kernel reports a fork by *any* thread of the
/// process to that server, whose callback would then serve a child that is not its test's.
static FORKS: Mutex<()> = Mutex::new(());

fn fork_lock() -> std::sync::MutexGuard<'static, ()> {
    FORKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A forked "VMM" ([`vmm_child`]) of `pages` pages, and the range its memory is at, served
/// from [`image`] by the caller through the userfaultfd [`Vmm::fork`] received.
struct Vmm {
    pid: libc::pid_t,
    /// Our end of the socket: the go byte is written here.
    sock: UnixStream,
    /// Our copy of the mapping the child's memory is a copy of (same address).
    guest: Map,
    pages: usize,
}

impl Vmm {
    fn fork(pages: usize) -> (Vmm, userfaultfd::Uffd) {
        let page = ps();
        // Mapped before the fork: the child's copy is the "guest memory" at a known address.
        let guest = Map::anon(pages * page);
        let (sock, child_sock) = UnixStream::pair().expect("socketpair");
        let (addr, csock) = (guest.addr(), child_sock.as_raw_fd());
        let forking = fork_lock();
        // SAFETY: the child makes only raw system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = vmm_child(csock, addr, pages, page);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        drop(forking);
        // Our copy of the child's end.
        drop(child_sock);
        let fd = common::recv_fd(sock.as_raw_fd()).expect("the child's uffd");
        let uffd = userfaultfd::Uffd::try_from(fd).unwrap();
        (
            Vmm {
                pid,
                sock,
                guest,
                pages,
            },
            uffd,
        )
    }

    /// The child's memory as a raw region served from the image.
    fn region(&self) -> Region {
        let page = ps();
        let src: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(self.pages, page)));
        // SAFETY: the range is the child's memory (its copy of `guest`), which the child asked
        // us to define; nothing in this process is written.
        unsafe {
            Region::from_raw_parts(
                self.guest.addr() as *mut libc::c_void,
                self.pages * page,
                page,
                src,
            )
        }
    }

    /// Reaps the child (bounded) and checks that it read every byte right.
    fn reap(&self) {
        let status = wait_child_bounded(self.pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
    }

    /// Lets the child touch its memory.
    fn go(&self) {
        // SAFETY: writes the go byte from a live buffer.
        let sent = unsafe { libc::write(self.sock.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        assert_eq!(sent, 1);
    }
}

#[test]
fn serving_another_process_until_it_exits() {
    let pages = 64;
    let (vmm, uffd) = Vmm::fork(pages);
    let server = ServerBuilder::new()
        .region(vmm.region())
        .register(false)
        .background_threads(0)
        .monitored_process(vmm.pid)
        .track_dirty(true)
        .start(uffd)
        .unwrap();
    vmm.go();
    let why = server
        .wait_halted(TIMEOUT)
        .expect("the server noticed the exit");
    assert!(why.contains("exited"), "{why}");
    vmm.reap();
    // The process is gone, but the pages it wrote are the server's own record.
    let dirty = server.dirty_pages().unwrap();
    assert_eq!(dirty_set(&dirty, ps()), vec![3, 7]);
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    assert_eq!(stats.wp_faults, 2, "{stats:?}");
}

/// The async server watches a "VMM" child as the threaded one does: it serves the child's
/// faults from the runtime's tasks and stops, saying why, when the child exits.
#[cfg(feature = "tokio")]
#[test]
fn an_async_server_serves_another_process_until_it_exits() {
    use userfaultfd::serve::{AsyncRegion, AsyncServerBuilder};

    let pages = 64;
    // Forked before the runtime starts its threads.
    let (vmm, uffd) = Vmm::fork(pages);
    let rt = common::serving::two_worker_runtime();
    let (why, stats) = rt.block_on(async {
        let server = AsyncServerBuilder::new()
            .region(AsyncRegion::from(vmm.region()))
            .register(false)
            .background_fetches(0)
            .monitored_process(vmm.pid)
            .start(uffd)
            .unwrap();
        vmm.go();
        let why = server.wait_halted(TIMEOUT).await;
        (why, server.shutdown().await.unwrap())
    });
    vmm.reap();
    let why = why.expect("the async server noticed the exit");
    assert!(why.contains("monitored process exited"), "{why}");
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
}

#[test]
fn a_forked_child_is_served_through_on_fork() {
    if !test_kit::privilege::require(test_kit::privilege::Need::CapSysPtrace) {
        return;
    }
    let page = ps();
    let pages = 64;
    let uffd = match UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::EVENT_FORK)
        .create()
    {
        Ok(u) => u,
        Err(e) => {
            test_kit::report::skip(format!("EVENT_FORK refused: {e}"));
            return;
        }
    };
    let m = anon(pages);
    let src: Arc<dyn PageSource> = Arc::new(MemorySource::new(image(pages, page)));
    // No other test of this binary forks while the EVENT_FORK server runs.
    let _forks = fork_lock();
    let children: Arc<Mutex<Vec<Server>>> = Arc::new(Mutex::new(Vec::new()));
    let (addr, len) = (m.as_ptr() as usize, pages * page);
    let server = {
        let children = Arc::clone(&children);
        let src = Arc::clone(&src);
        ServerBuilder::new()
            .region(Region::new(m.clone(), src.clone()))
            .background_threads(0)
            .prefetch(0)
            .on_fork(move |child_uffd| {
                // The child's copy of the region, served by a server of its own.
                // SAFETY: the range is the child's copy of `m`, which its uffd covers.
                let region = unsafe {
                    Region::from_raw_parts(addr as *mut libc::c_void, len, page, src.clone())
                };
                let s = ServerBuilder::new()
                    .region(region)
                    .register(false)
                    .background_threads(0)
                    .start(child_uffd)
                    .expect("child server");
                children.lock().unwrap().push(s);
            })
            .start(uffd)
            .unwrap()
    };
    // Page 0 is served in the parent before the fork; the child sees it (copied by fork) and
    // faults on the others, served through its own uffd.
    assert_eq!(m.read_obj::<u8>(0).unwrap(), byte_of(0));
    // SAFETY: the child only performs volatile reads and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut code = 0;
        for p in 0..pages {
            // SAFETY: the page is mapped in the child (a copy of our address space).
            let v = unsafe { std::ptr::read_volatile((addr + p * page) as *const u8) };
            if v != byte_of(p) {
                code = 1;
            }
        }
        // SAFETY: ends the child without running destructors.
        unsafe { libc::_exit(code) };
    }
    let status = wait_child_bounded(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    // The child server serves faults from the moment its threads start, which can be before
    // the callback that started it has stored it.
    common::wait_until("the child server to be stored", || {
        children.lock().unwrap().len() == 1
    });
    let kids = std::mem::take(&mut *children.lock().unwrap());
    let child_stats = kids.into_iter().next().unwrap().shutdown().unwrap();
    // Page 0 was already there (copied by fork: EEXIST, counted once); the rest was served.
    assert_eq!(child_stats.pages_present(), pages as u64, "{child_stats:?}");
    assert!(child_stats.demand_faults >= 1, "{child_stats:?}");
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.events, 1, "{stats:?}");
}

/// Waits for child `pid` through a pidfd, at most [`TIMEOUT`] (then kills it and fails).
fn wait_child_bounded(pid: libc::pid_t) -> i32 {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
    // SAFETY: a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if common::poll_in(&fd, common::TIMEOUT_MS) == 0 {
        // SAFETY: kills our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaps our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}
