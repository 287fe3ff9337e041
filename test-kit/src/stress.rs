//! The stress engine shared by `userfaultfd/tests/stress.rs` and the `uffd-stress` command, modelled on the
//! kernel's `tools/testing/selftests/mm/uffd-stress.c`.
//!
//! Two areas of `pages` pages, `src` and `dst`. Every page holds a spin lock (offset 0), a
//! counter (offset 8) and its own index (offset 16); a shadow array holds the expected counters.
//! Each bounce registers `dst` (missing pages) with a new userfaultfd and runs, per CPU:
//!
//! * a locking thread: picks a page (sequentially or at random), takes its lock (the first touch
//!   faults), checks the counter against the shadow and increments both;
//! * a fault-handling thread: blocking `read` or `poll` + non-blocking read; resolves missing
//!   faults by copying the page from `src`, write-protect faults by removing the protection;
//! * a background thread: copies its share of the pages from `src` while faults race for them
//!   (`EEXIST` = [`Error::AlreadyMapped`] is expected and followed by a wake).
//!
//! Then `src` and `dst` swap and the new `dst` is emptied again. The bounce number's bits choose
//! the modes: 1 random pages, 2 racing (handlers copy twice and must see `EEXIST`), 4 poll
//! instead of blocking reads, 8 a full verify sweep (always done on the last bounce).
//! With write-protect every page is placed with `CopyMode::WP`, so every first write takes a
//! write-protect fault as well.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use libc::c_void;
use userfaultfd::{
    CopyMode, Error, Event, EventBuffer, FaultKind, FeatureFlags, RegisterMode, Uffd, UffdBuilder,
};

/// The kind of memory under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Private anonymous memory (`MADV_NOHUGEPAGE`).
    Anon,
    /// A memfd mapped `MAP_SHARED`: not `MAP_PRIVATE`, where under write protection and load a
    /// missing fault rarely (about 1 run in 10-25 on 6.18) arrives flagged as a write, from the
    /// kernel side (the kernel's own stress test maps shmem shared too).
    Shmem,
    /// A `MFD_HUGETLB` memfd mapped `MAP_SHARED`, in 2 MiB pages.
    Hugetlb,
}

/// One stress run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The memory type.
    pub kind: MemKind,
    /// Pages per area (counted pages; a few extra stop pages are added).
    pub pages: usize,
    /// Bounces (each swaps `src` and `dst`).
    pub bounces: usize,
    /// Place pages write-protected and resolve write-protect faults too.
    pub wp: bool,
    /// Threads of each kind (locking, handling, background); usually the CPU count.
    pub threads: usize,
    /// Lock operations each locking thread does at least per bounce.
    pub ops_per_bounce: usize,
    /// Time one bounce may take before the run fails as hung.
    pub bounce_limit: Duration,
}

/// What a successful run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Missing faults resolved by the handlers.
    pub missing_faults: u64,
    /// Write-protect faults resolved.
    pub wp_faults: u64,
    /// `EEXIST` answers met (handler or background lost a race, or a racing double copy).
    pub eexist: u64,
    /// Lock operations (counter increments).
    pub lock_ops: u64,
    /// Pages verified by full sweeps.
    pub verified_pages: u64,
}

/// Why a run cannot happen on this machine (reported as a skip, not a failure).
#[derive(Debug)]
pub enum Outcome {
    /// The run completed and every counter matched.
    Done(Report),
    /// The run was not possible here, with the reason.
    Skipped(String),
}

const MODE_RANDOM: usize = 1;
const MODE_RACING: usize = 2;
const MODE_POLL: usize = 4;
const MODE_VERIFY: usize = 8;

const HUGE: usize = 2 << 20;
const OFF_LOCK: usize = 0;
const OFF_COUNT: usize = 8;
const OFF_INDEX: usize = 16;

/// The two areas and the memory behind them.
struct Areas {
    psize: usize,
    /// Pages per area including the stop pages.
    total: usize,
    /// Base addresses of the two areas; `cur_src` indexes the current source.
    base: [usize; 2],
    /// memfd for shmem/hugetlb (area i at file offset `i * area_len`).
    memfd: Option<OwnedFd>,
}

impl Areas {
    fn area_len(&self) -> usize {
        self.total * self.psize
    }

    fn new(kind: MemKind, total: usize) -> Result<Areas, String> {
        let psize = match kind {
            MemKind::Hugetlb => HUGE,
            _ => userfaultfd::page_size(),
        };
        let len = total * psize;
        let mut a = Areas {
            psize,
            total,
            base: [0; 2],
            memfd: None,
        };
        if kind != MemKind::Anon {
            let flags = libc::MFD_CLOEXEC
                | if kind == MemKind::Hugetlb {
                    libc::MFD_HUGETLB | libc::MFD_HUGE_2MB
                } else {
                    0
                };
            // SAFETY: a NUL-terminated name; memfd_create returns a new fd or -1.
            let fd = unsafe { libc::memfd_create(c"uffd-stress".as_ptr(), flags) };
            if fd < 0 {
                return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: a new fd owned only here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: ftruncate on our memfd.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), (2 * len) as libc::off_t) } != 0 {
                return Err(format!("ftruncate: {}", std::io::Error::last_os_error()));
            }
            a.memfd = Some(fd);
        }
        for i in 0..2 {
            let (flags, fd, off) = match &a.memfd {
                None => (
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                ),
                Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd(), i * len),
            };
            // SAFETY: a new mapping of our own memory; no existing memory is affected.
            let p = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd,
                    off as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            a.base[i] = p as usize;
            if kind == MemKind::Anon {
                // COPY refuses a THP-mapped destination (EEXIST, §1.9): keep pages small.
                // SAFETY: advice on our own mapping.
                unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
            }
        }
        Ok(a)
    }

    /// Drops every page of area `i`, so that each access faults as missing again.
    fn release(&self, i: usize) -> Result<(), String> {
        let len = self.area_len();
        let r = match &self.memfd {
            // SAFETY: our own mapping; its contents are discarded on purpose.
            None => unsafe { libc::madvise(self.base[i] as *mut c_void, len, libc::MADV_DONTNEED) },
            // SAFETY: punches a hole in our own memfd; the mappings then fault again.
            Some(fd) => unsafe {
                libc::fallocate(
                    fd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (i * len) as libc::off_t,
                    len as libc::off_t,
                )
            },
        };
        if r != 0 {
            return Err(format!("release: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn page(&self, area: usize, p: usize) -> usize {
        self.base[area] + p * self.psize
    }
}

impl Drop for Areas {
    fn drop(&mut self) {
        for b in self.base {
            if b != 0 {
                // SAFETY: the areas were mapped by `new` and are unmapped only here.
                unsafe { libc::munmap(b as *mut c_void, self.area_len()) };
            }
        }
    }
}

/// The fields of a page, as atomics (the page is shared by all threads).
fn lock_of(page: usize) -> &'static AtomicU32 {
    // SAFETY: `page` is the page-aligned start of a mapped page of an area that outlives every
    // thread using it; offset 0 is 4-byte aligned and only accessed atomically.
    unsafe { &*((page + OFF_LOCK) as *const AtomicU32) }
}

fn count_of(page: usize) -> &'static AtomicU64 {
    // SAFETY: as in `lock_of`; offset 8 is 8-byte aligned and only accessed atomically.
    unsafe { &*((page + OFF_COUNT) as *const AtomicU64) }
}

fn index_of(page: usize) -> &'static AtomicU64 {
    // SAFETY: as in `lock_of`; offset 16 is 8-byte aligned and only accessed atomically.
    unsafe { &*((page + OFF_INDEX) as *const AtomicU64) }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// State shared by the threads of one bounce.
struct Bounce<'a> {
    cfg: &'a Config,
    areas: &'a Areas,
    uffd: &'a Uffd,
    src: usize,
    dst: usize,
    mode: usize,
    bounce: usize,
    shadow: &'a [AtomicU64],
    deadline: Instant,
    background_done: AtomicBool,
    stop_pipe: [i32; 2],
    errors: Mutex<Vec<String>>,
    failed: AtomicBool,
    missing: AtomicU64,
    wpf: AtomicU64,
    eexist: AtomicU64,
    ops: AtomicU64,
    stops_seen: AtomicUsize,
}

impl Bounce<'_> {
    /// Records a failure. The first one also unregisters the data pages of `dst`, so locking
    /// threads blocked in (or looping through) their faults get the kernel's default handling
    /// and can see the failure and stop; the stop pages stay registered, so the blocking
    /// handlers are still released by them. The message is also printed at once, so it is seen
    /// even if the bounce never returns.
    fn fail(&self, msg: String) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            let a = self.areas;
            let _ = self
                .uffd
                .unregister(a.base[self.dst] as *mut c_void, self.cfg.pages * a.psize);
        }
        // Straight to fd 2, not through the test harness's capture: if the process dies (a
        // locker released into default handling can take SIGBUS when huge pages ran out), a
        // captured message would be lost with it.
        let _ = writeln!(
            std::io::stderr(),
            "stress: bounce {} mode {:#x}: {msg}",
            self.bounce,
            self.mode
        );
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 20 {
            e.push(format!(
                "bounce {} mode {:#x}: {msg}",
                self.bounce, self.mode
            ));
        }
    }

    /// Whether the bounce failed or ran past its deadline (which fails it, once).
    fn late(&self) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return true;
        }
        if Instant::now() > self.deadline {
            self.fail("deadline passed: hung?".into());
            return true;
        }
        false
    }

    /// Copies page `p` of `src` into `dst` (write-protected in WP runs); `EEXIST` means another
    /// thread won, so wake the page. Returns whether this call placed the page.
    fn place(&self, p: usize) -> bool {
        let a = self.areas;
        let (s, d) = (a.page(self.src, p), a.page(self.dst, p));
        let mode = if self.cfg.wp {
            CopyMode::WP
        } else {
            CopyMode::empty()
        };
        // SAFETY: `d` is a page of the registered destination area, whose contents the stress
        // engine defines; `s` is a readable page of the source area that no thread writes
        // during the bounce.
        let r = unsafe {
            self.uffd
                .copy_with_mode(s as *const c_void, d as *mut c_void, a.psize, mode)
        };
        match r {
            Ok(n) if n == a.psize => true,
            Ok(n) => {
                self.fail(format!("copy of page {p} returned {n}"));
                false
            }
            Err(Error::AlreadyMapped { addr, .. }) if addr == d => {
                self.eexist.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = self.uffd.wake(d as *mut c_void, a.psize) {
                    self.fail(format!("wake page {p}: {e}"));
                }
                false
            }
            Err(e) => {
                self.fail(format!("copy of page {p}: {e:?}"));
                false
            }
        }
    }

    fn locker(&self, t: usize) {
        let n = self.cfg.pages;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (((self.bounce as u64) << 32) | (t as u64 + 1)));
        let mut seq = t * n / self.cfg.threads.max(1);
        let mut done = 0usize;
        while !(done >= self.cfg.ops_per_bounce && self.background_done.load(Ordering::Acquire)) {
            if self.late() {
                return;
            }
            let p = if self.mode & MODE_RANDOM != 0 {
                rng.below(n)
            } else {
                seq = (seq + 1) % n;
                seq
            };
            let page = self.areas.page(self.dst, p);
            let lock = lock_of(page);
            // The first touch of the page faults (missing, then write-protect in WP runs).
            while lock
                .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                if self.late() {
                    return;
                }
                std::hint::spin_loop();
                thread::yield_now();
            }
            let got = count_of(page).load(Ordering::Relaxed);
            let want = self.shadow[p].load(Ordering::Relaxed);
            let idx = index_of(page).load(Ordering::Relaxed);
            if got != want || idx != p as u64 {
                self.fail(format!(
                    "page {p}: counter {got} but shadow {want}; index field {idx}"
                ));
            }
            count_of(page).store(got.wrapping_add(1), Ordering::Relaxed);
            self.shadow[p].store(want.wrapping_add(1), Ordering::Relaxed);
            lock.store(0, Ordering::Release);
            done += 1;
        }
        self.ops.fetch_add(done as u64, Ordering::Relaxed);
    }

    fn background(&self, t: usize) {
        let n = self.cfg.pages;
        let per = n.div_ceil(self.cfg.threads);
        let range: Vec<usize> = (t * per..((t + 1) * per).min(n)).collect();
        // Racing bounces copy their share backwards, against the lockers' sequential sweep.
        let order: Box<dyn Iterator<Item = &usize>> = if self.mode & MODE_RACING != 0 {
            Box::new(range.iter().rev())
        } else {
            Box::new(range.iter())
        };
        for &p in order {
            if self.late() {
                return;
            }
            self.place(p);
        }
    }

    /// Resolves one fault; returns true when it was a stop page (the handler then exits).
    fn handle(&self, kind: FaultKind, addr: usize, zero: &[u8]) -> bool {
        let a = self.areas;
        let base = a.base[self.dst];
        if addr < base || addr >= base + a.area_len() {
            self.fail(format!("fault outside dst at {addr:#x}"));
            return false;
        }
        let p = (addr - base) / a.psize;
        let page = a.page(self.dst, p);
        if p >= self.cfg.pages {
            // A stop page: place zeros and leave. Each blocking handler must leave on a stop
            // page of its own, so a stop fault delivered again (the page is there) is only
            // woken, and this handler goes on reading.
            // SAFETY: a stop page of the registered dst area, used by nothing else; `zero` is
            // readable for a whole page.
            let r = unsafe {
                self.uffd
                    .copy(zero.as_ptr().cast(), page as *mut c_void, a.psize, true)
            };
            match r {
                Ok(_) => {
                    self.stops_seen.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                Err(Error::AlreadyMapped { .. }) => {
                    if let Err(e) = self.uffd.wake(page as *mut c_void, a.psize) {
                        self.fail(format!("wake stop page {p}: {e:?}"));
                    }
                    return false;
                }
                Err(e) => {
                    self.fail(format!("stop page {p}: {e:?}"));
                    return true;
                }
            }
        }
        match kind {
            FaultKind::Missing => {
                self.missing.fetch_add(1, Ordering::Relaxed);
                if self.place(p) && self.mode & MODE_RACING != 0 {
                    // Copy it again: the page is there, so the kernel must say EEXIST.
                    let s = a.page(self.src, p);
                    // SAFETY: as in `place`; the kernel never overwrites a present page.
                    let r = unsafe {
                        self.uffd
                            .copy(s as *const c_void, page as *mut c_void, a.psize, true)
                    };
                    match r {
                        Err(Error::AlreadyMapped { .. }) => {
                            self.eexist.fetch_add(1, Ordering::Relaxed);
                        }
                        other => self.fail(format!("double copy of page {p}: {other:?}")),
                    }
                }
            }
            FaultKind::WriteProtected if self.cfg.wp => {
                self.wpf.fetch_add(1, Ordering::Relaxed);
                if let Err(e) =
                    self.uffd
                        .remove_write_protection(page as *mut c_void, a.psize, true)
                {
                    self.fail(format!("un-write-protect page {p}: {e:?}"));
                }
            }
            other => self.fail(format!("unexpected {other:?} fault on page {p}")),
        }
        false
    }

    fn handler(&self) {
        let zero = vec![0u8; self.areas.psize];
        if self.mode & MODE_POLL == 0 {
            // Blocking reads, one message each; the stop pages end the loop. A handler that
            // runs past the deadline (faults that never settle) fails the bounce but goes on
            // serving until its stop page comes.
            loop {
                self.late();
                match self.uffd.read_event() {
                    Ok(Some(Event::Pagefault { kind, addr, .. })) => {
                        if self.handle(kind, addr as usize, &zero) {
                            return;
                        }
                    }
                    Ok(other) => {
                        self.fail(format!("unexpected event {other:?}"));
                        return;
                    }
                    Err(e) => {
                        self.fail(format!("read: {e:?}"));
                        return;
                    }
                }
            }
        }
        let mut buf = EventBuffer::new(16);
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop_pipe[0],
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
            if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                self.fail(format!("poll: {}", std::io::Error::last_os_error()));
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            if self.late() {
                return;
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                self.fail(format!("poll revents {:#x}", fds[0].revents));
                return;
            }
            if fds[0].revents & libc::POLLIN == 0 {
                continue;
            }
            let events = match self.uffd.read_events(&mut buf) {
                Ok(evs) => evs,
                Err(e) => {
                    self.fail(format!("read_events: {e:?}"));
                    return;
                }
            };
            for ev in events {
                match ev {
                    Ok(Event::Pagefault { kind, addr, .. }) => {
                        self.handle(kind, addr as usize, &zero);
                    }
                    other => self.fail(format!("unexpected event {other:?}")),
                }
            }
        }
    }
}

/// Checks that the features a configuration needs are present, and for hugetlb that enough
/// huge pages are free.
fn precheck(cfg: &Config, total: usize) -> Option<String> {
    let f = match UffdBuilder::probe_features() {
        Ok(f) => f,
        Err(e) => return Some(format!("no userfaultfd: {e}")),
    };
    let need = match cfg.kind {
        MemKind::Anon => FeatureFlags::empty(),
        MemKind::Shmem => FeatureFlags::MISSING_SHMEM,
        MemKind::Hugetlb => FeatureFlags::MISSING_HUGETLBFS,
    } | if cfg.wp {
        FeatureFlags::PAGEFAULT_FLAG_WP
            | if cfg.kind == MemKind::Anon {
                FeatureFlags::empty()
            } else {
                FeatureFlags::WP_HUGETLBFS_SHMEM
            }
    } else {
        FeatureFlags::empty()
    };
    if !f.contains(need) {
        return Some(format!("the kernel lacks {:?}", need - f));
    }
    if cfg.kind == MemKind::Hugetlb {
        let free =
            std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(0);
        if free < 2 * total {
            return Some(format!(
                "{free} free 2 MiB huge pages, {} needed (sysctl -w vm.nr_hugepages=128)",
                2 * total
            ));
        }
    }
    None
}

/// Runs the stress test described in the module docs.
///
/// # Errors
///
/// Every counter mismatch, unexpected error or hang, as text naming the bounce, page and values.
pub fn run(cfg: &Config) -> Result<Outcome, String> {
    let threads = cfg.threads.max(1);
    let cfg = &Config { threads, ..*cfg };
    // Extra pages at the end of each area, one per handler, whose faults stop blocking readers.
    let total = cfg.pages + threads;
    if let Some(why) = precheck(cfg, total) {
        return Ok(Outcome::Skipped(why));
    }
    let areas = Areas::new(cfg.kind, total)?;
    // Initial contents of the first source area.
    for p in 0..cfg.pages {
        let page = areas.page(0, p);
        lock_of(page).store(0, Ordering::Relaxed);
        count_of(page).store(p as u64 * 3 + 1, Ordering::Relaxed);
        index_of(page).store(p as u64, Ordering::Relaxed);
    }
    let shadow: Vec<AtomicU64> = (0..cfg.pages)
        .map(|p| AtomicU64::new(p as u64 * 3 + 1))
        .collect();
    areas.release(1)?;
    let mut report = Report::default();
    let mut src = 0;
    for bounce in 0..cfg.bounces {
        let dst = 1 - src;
        let mut mode = bounce % 16;
        if bounce + 1 == cfg.bounces {
            mode |= MODE_VERIFY;
        }
        let uffd = UffdBuilder::new()
            .non_blocking(mode & MODE_POLL != 0)
            .create()
            .map_err(|e| format!("create: {e}"))?;
        let reg = if cfg.wp {
            RegisterMode::MISSING | RegisterMode::WRITE_PROTECT
        } else {
            RegisterMode::MISSING
        };
        uffd.register_with_mode(areas.base[dst] as *mut c_void, areas.area_len(), reg)
            .map_err(|e| format!("register: {e}"))?;
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` has room for two fds.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two new fds owned only here.
        let pipe_fds = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let b = Bounce {
            cfg,
            areas: &areas,
            uffd: &uffd,
            src,
            dst,
            mode,
            bounce,
            shadow: &shadow,
            deadline: Instant::now() + cfg.bounce_limit,
            background_done: AtomicBool::new(false),
            stop_pipe: pipe,
            errors: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
            missing: AtomicU64::new(0),
            wpf: AtomicU64::new(0),
            eexist: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            stops_seen: AtomicUsize::new(0),
        };
        let br = &b;
        thread::scope(|s| {
            let handlers: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || br.handler()))
                .collect();
            let lockers: Vec<_> = (0..threads)
                .map(|t| s.spawn(move || br.locker(t)))
                .collect();
            let bgs: Vec<_> = (0..threads)
                .map(|t| s.spawn(move || br.background(t)))
                .collect();
            for h in bgs {
                if h.join().is_err() {
                    b.fail("background thread panicked".into());
                }
            }
            b.background_done.store(true, Ordering::Release);
            for h in lockers {
                if h.join().is_err() {
                    b.fail("locking thread panicked".into());
                }
            }
            if mode & MODE_POLL != 0 {
                // SAFETY: writes one byte from a live buffer to our pipe.
                unsafe { libc::write(pipe[1], [1u8].as_ptr().cast(), 1) };
            } else {
                // Each blocked reader ends on the fault of one stop page.
                for i in 0..threads {
                    let addr = areas.page(dst, cfg.pages + i);
                    s.spawn(move || {
                        // SAFETY: a mapped stop page; the read blocks until a handler fills it.
                        unsafe { ptr::read_volatile(addr as *const u8) }
                    });
                }
            }
            for h in handlers {
                if h.join().is_err() {
                    b.fail("handler thread panicked".into());
                }
            }
        });
        drop(pipe_fds);
        let errors = b.errors.into_inner().unwrap_or_else(|p| p.into_inner());
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        report.missing_faults += b.missing.into_inner();
        report.wp_faults += b.wpf.into_inner();
        report.eexist += b.eexist.into_inner();
        report.lock_ops += b.ops.into_inner();
        drop(uffd);
        // Every page of dst is present now (the background threads placed all of them).
        if mode & MODE_VERIFY != 0 {
            for (p, sh) in shadow.iter().enumerate() {
                let page = areas.page(dst, p);
                let (got, want) = (
                    count_of(page).load(Ordering::Relaxed),
                    sh.load(Ordering::Relaxed),
                );
                let (lock, idx) = (
                    lock_of(page).load(Ordering::Relaxed),
                    index_of(page).load(Ordering::Relaxed),
                );
                if got != want || lock != 0 || idx != p as u64 {
                    return Err(format!(
                        "bounce {bounce} verify: page {p}: counter {got} shadow {want} lock {lock} index {idx}"
                    ));
                }
            }
            report.verified_pages += cfg.pages as u64;
        }
        // Swap: dst becomes the source; the old source is emptied to be the next destination.
        areas.release(src)?;
        src = dst;
    }
    Ok(Outcome::Done(report))
}

/// Runs [`run`] on its own thread and gives up (as an error) if it does not finish in
/// `limit`: a hang fails instead of blocking the caller forever.
///
/// # Errors
///
/// As [`run`], plus the time-out.
pub fn run_bounded(cfg: Config, limit: Duration) -> Result<Outcome, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(run(&cfg));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{cfg:?}: no result after {limit:?} (hung or panicked)"
        )),
    }
}
