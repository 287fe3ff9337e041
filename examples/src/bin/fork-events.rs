//! Non-cooperative userfaultfd: a monitor that follows the address-space changes of the
//! workload it serves (what CRIU's lazy-pages daemon does).
//!
//! The uffd is created with `EVENT_FORK | EVENT_REMAP | EVENT_REMOVE | EVENT_UNMAP`. A monitor
//! thread serves missing-page faults of a tracked region with a pattern, and the workload (the
//! main thread) then:
//!
//! 1. touches some pages (served by the monitor);
//! 2. `fork`s: the child touches pages that were still missing; its faults arrive on the new uffd
//!    of the `Fork` event, which the monitor serves; the child verifies them and `_exit`s;
//! 3. `mremap`s the region elsewhere: the monitor follows the `Remap` and serves later faults
//!    relative to the new address;
//! 4. `madvise(MADV_DONTNEED)`s two pages: after the `Remove` the monitor zero-fills them;
//! 5. `munmap`s the region: on `Unmap` the monitor stops tracking it.
//!
//! The thread doing fork/mremap/madvise/munmap blocks until the monitor has read the event, so
//! the monitor runs on its own thread, and its read path does not allocate. `EVENT_FORK` needs
//! `CAP_SYS_PTRACE` (run as root).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use clap::Parser;
use test_kit::args;
use test_kit::child::wait_child;
use test_kit::exit::{fail, finish};
use test_kit::mapping::no_huge_pages;
use test_kit::page_size;
use test_kit::pattern::{fill_page, pattern_word};
use test_kit::wait::{wait_readable, StopSignal, Wait};
use userfaultfd::{Error, Event, EventBuffer, FeatureFlags, Operation, Uffd, UffdBuilder};

/// Follows fork, mremap, madvise(MADV_DONTNEED) and munmap of a workload with userfaultfd's
/// non-cooperative events (needs CAP_SYS_PTRACE for EVENT_FORK). Takes no arguments.
#[derive(Parser, Debug)]
#[command(name = "fork-events")]
struct Cli {}

const SEED: u64 = 0xf0_4b;
const PAGES: usize = 16;

/// What the monitor knows and counted.
#[derive(Default, Debug)]
struct State {
    /// The tracked region (start, len), `None` after its `Unmap`.
    tracked: Option<(usize, usize)>,
    /// Pages (by index) dropped by `Remove`: served as zero pages from now on.
    removed: BTreeSet<usize>,
    parent_faults: u64,
    child_faults: u64,
    zero_fills: u64,
    forks: u64,
    remaps: u64,
    removes: u64,
    unmaps: u64,
    other_unmaps: u64,
}

struct Monitor<'a> {
    uffd: &'a Uffd,
    state: &'a Mutex<State>,
    changed: &'a Condvar,
    stop: &'a StopSignal,
}

/// Waits (at most 10 s) until the monitor has applied an event: the workload's mremap or munmap
/// returns as soon as the monitor has *read* the event, possibly before it updated its state.
fn await_state(state: &Mutex<State>, changed: &Condvar, pred: impl Fn(&State) -> bool) -> bool {
    let guard = state.lock().unwrap();
    let (guard, _) = changed
        .wait_timeout_while(guard, Duration::from_secs(10), |st| !pred(st))
        .unwrap();
    pred(&guard)
}

impl Monitor<'_> {
    fn run(&self) -> Result<(), String> {
        let ps = page_size();
        // Allocated before any event: reading must not allocate (fork holds malloc's locks).
        let mut buf = EventBuffer::new(8);
        let mut child_buf = EventBuffer::new(8);
        let mut child: Option<(Uffd, usize)> = None;
        let mut page = vec![0u8; ps];
        let mut pending: Vec<(bool, usize)> = Vec::with_capacity(64);
        loop {
            let timeout = if pending.is_empty() {
                Duration::from_secs(30)
            } else {
                Duration::from_millis(1)
            };
            let fds: [BorrowedFd<'_>; 2];
            let wait = match &child {
                Some((c, _)) => {
                    fds = [self.uffd.as_fd(), c.as_fd()];
                    wait_readable(&fds, Some(self.stop), timeout)
                }
                None => wait_readable(&[self.uffd.as_fd()], Some(self.stop), timeout),
            };
            let ready = match wait {
                Ok(Wait::Ready(i)) => Some(i),
                Ok(Wait::Stopped) => return Ok(()),
                Ok(Wait::TimedOut) if !pending.is_empty() => None,
                other => return Err(format!("waiting for events: {other:?}")),
            };
            match ready {
                Some(0) => {
                    for event in self.uffd.read_events(&mut buf).map_err(|e| e.to_string())? {
                        match event.map_err(|e| e.to_string())? {
                            Event::Pagefault { addr, .. } => pending.push((false, addr as usize)),
                            Event::Fork { uffd } => {
                                let mut st = self.state.lock().unwrap();
                                st.forks += 1;
                                let base = st.tracked.map(|t| t.0).unwrap_or(0);
                                // The child's address space is a copy: same addresses.
                                child = Some((uffd, base));
                            }
                            Event::Remap { from, to, len } => {
                                let mut st = self.state.lock().unwrap();
                                st.remaps += 1;
                                if st.tracked.map(|t| t.0) == Some(from as usize) {
                                    st.tracked = Some((to as usize, len));
                                }
                            }
                            Event::Remove { start, end } => {
                                let mut st = self.state.lock().unwrap();
                                st.removes += 1;
                                if let Some((base, _)) = st.tracked {
                                    for p in
                                        (start as usize - base) / ps..(end as usize - base) / ps
                                    {
                                        st.removed.insert(p);
                                    }
                                }
                            }
                            Event::Unmap { start, end } => {
                                let mut st = self.state.lock().unwrap();
                                match st.tracked {
                                    Some((base, len))
                                        if (start as usize) < base + len
                                            && (end as usize) > base =>
                                    {
                                        st.unmaps += 1;
                                        st.tracked = None;
                                    }
                                    // E.g. the old range after an mremap move.
                                    _ => st.other_unmaps += 1,
                                }
                            }
                        }
                    }
                }
                Some(_) => {
                    let (c, _) = child.as_ref().expect("polled");
                    for event in c.read_events(&mut child_buf).map_err(|e| e.to_string())? {
                        match event.map_err(|e| e.to_string())? {
                            Event::Pagefault { addr, .. } => pending.push((true, addr as usize)),
                            other => return Err(format!("unexpected child event {other:?}")),
                        }
                    }
                }
                None => {}
            }
            self.changed.notify_all();
            // Serve faults; those refused while an event is unread wait for the next round.
            let mut i = 0;
            while i < pending.len() {
                let (is_child, addr) = pending[i];
                let (uffd, base) = if is_child {
                    let (c, b) = child.as_ref().expect("child fault");
                    (c, *b)
                } else {
                    match self.state.lock().unwrap().tracked {
                        Some((b, _)) => (self.uffd, b),
                        None => return Err(format!("fault at {addr:#x} after the unmap")),
                    }
                };
                match self.serve(uffd, base, addr & !(ps - 1), is_child, &mut page) {
                    Ok(()) => {
                        pending.swap_remove(i);
                    }
                    Err(Error::MappingChanging { .. }) => i += 1,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }

    fn serve(
        &self,
        uffd: &Uffd,
        base: usize,
        addr: usize,
        child: bool,
        page: &mut [u8],
    ) -> Result<(), Error> {
        let ps = page.len();
        let index = (addr - base) / ps;
        let zero = self.state.lock().unwrap().removed.contains(&index);
        let dst = addr as *mut libc::c_void;
        let r = if zero {
            // SAFETY: `dst` is a missing page of the region this program registered; after a
            // MADV_DONTNEED its contents are defined to be zero.
            unsafe { uffd.zeropage(dst, ps, true) }
        } else {
            fill_page(SEED, index as u64, page);
            // SAFETY: `dst` is a missing page of the registered region (in this process or in
            // the forked child), whose contents the monitor defines; `page` is a live buffer.
            unsafe { uffd.copy(page.as_ptr().cast(), dst, ps, true) }
        };
        match r {
            Ok(_) => {}
            // A fault delivered again after it was resolved: wake it, count it once.
            Err(Error::AlreadyMapped { .. }) => return uffd.wake(dst, ps),
            Err(e) => return Err(e),
        }
        let mut st = self.state.lock().unwrap();
        if child {
            st.child_faults += 1;
        } else {
            st.parent_faults += 1;
        }
        if zero {
            st.zero_fills += 1;
        }
        Ok(())
    }
}

/// Checks pages `from..to` of the region at `base` against the pattern (zero for `zeros`).
/// Allocation-free and async-signal-safe: the forked child runs it.
fn pages_ok(base: usize, from: usize, to: usize, zeros: &[usize]) -> bool {
    let ps = page_size();
    for p in from..to {
        let zero = zeros.contains(&p);
        for i in 0..ps / 8 {
            // SAFETY: the page lies inside the region mapped by the caller; a missing page
            // blocks until the monitor fills it. Volatile, as the monitor writes it.
            let v = unsafe { std::ptr::read_volatile((base + p * ps + i * 8) as *const u64) };
            let want = if zero {
                0
            } else {
                pattern_word(SEED, p as u64, i)
            };
            if v != want {
                return false;
            }
        }
    }
    true
}

fn workload(
    uffd: &Uffd,
    state: &Mutex<State>,
    changed: &Condvar,
) -> Result<(), Box<dyn std::error::Error>> {
    let ps = page_size();
    let len = PAGES * ps;
    // Raw mmap: mremap and munmap below move and destroy the mapping behind any RAII owner.
    // SAFETY: a new anonymous private mapping at an address the kernel chooses.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    no_huge_pages(base.cast(), len)?;
    uffd.register(base, len)?;
    state.lock().unwrap().tracked = Some((base as usize, len));
    let base = base as usize;

    // 1. Faults of the process itself.
    if !pages_ok(base, 0, 4, &[]) {
        return Err(fail("pages 0..4 are wrong"));
    }
    println!("1. touched pages 0..4: served by the monitor");

    // 2. fork: the child touches pages 4..8, served through the Fork event's uffd.
    // SAFETY: the child only runs `pages_ok` (volatile reads and arithmetic, no allocation or
    // locks) and `_exit`, which are async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        let ok = pages_ok(base, 0, 8, &[]);
        // SAFETY: _exit ends the child without running the parent's atexit handlers or
        // destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let status = wait_child(pid, Duration::from_secs(30))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(fail(format!(
            "the child failed its verification (wait status {status:#x})"
        )));
    }
    // The counters are bumped just after each copy, so the child may have exited before that.
    await_state(state, changed, |st| st.child_faults >= 4);
    let child_faults = state.lock().unwrap().child_faults;
    println!("2. fork: the child read pages 0..8 ({child_faults} faults served through the Fork uffd) and verified them");
    if child_faults < 4 {
        return Err(fail(format!(
            "expected at least 4 child faults, got {child_faults}"
        )));
    }

    // 3. mremap to a new place: the monitor follows the Remap.
    // SAFETY: reserving an inaccessible range for the move target.
    let target = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if target == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: moves our own mapping over our own reservation; nothing else refers to either.
    let moved = unsafe {
        libc::mremap(
            base as *mut _,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target,
        )
    };
    if moved == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let base = moved as usize;
    if !await_state(state, changed, |st| st.tracked == Some((base, len))) {
        return Err(fail("the monitor did not follow the mremap"));
    }
    if !pages_ok(base, 0, 12, &[]) {
        return Err(fail("pages 0..12 are wrong after mremap"));
    }
    println!("3. mremap to {base:#x}: the monitor followed the Remap; pages 0..4 moved, 4..12 served at the new address");

    // 4. MADV_DONTNEED: the monitor zero-fills the dropped pages.
    // SAFETY: drops two pages of our own private mapping; nothing references them.
    if unsafe { libc::madvise((base + 2 * ps) as *mut _, 2 * ps, libc::MADV_DONTNEED) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if !pages_ok(base, 0, PAGES, &[2, 3]) {
        return Err(fail("pages are wrong after MADV_DONTNEED"));
    }
    println!("4. madvise(MADV_DONTNEED) of pages 2..4: zero-filled after the Remove; all {PAGES} pages verified");

    // 5. munmap: the monitor stops tracking.
    // SAFETY: unmaps our own mapping; nothing refers to it afterwards.
    if unsafe { libc::munmap(base as *mut _, len) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if !await_state(state, changed, |st| st.tracked.is_none()) {
        return Err(fail("the monitor still tracks the region after munmap"));
    }
    println!("5. munmap: the monitor saw the Unmap and stopped tracking the region");
    Ok(())
}

/// What to do when creating the uffd fails with `EPERM`. The library's own advice for `EPERM`
/// (the sysctl, `/dev/userfaultfd`, user-mode-only faults) is about kernel-mode faults and does
/// not help here: `UFFD_FEATURE_EVENT_FORK` needs `CAP_SYS_PTRACE` whatever the creation method.
fn needs_ptrace(op: Operation) -> String {
    format!(
        "fork-events needs CAP_SYS_PTRACE (in the initial user namespace): run it as root, or \
         give the binary the capability (`setcap cap_sys_ptrace+ep fork-events`). The \
         EVENT_FORK feature requires it; vm.unprivileged_userfaultfd, access to \
         /dev/userfaultfd and user-mode-only faults do not help. ({op} failed with EPERM)"
    )
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let uffd = match UffdBuilder::new()
        .non_blocking(true)
        .require_features(
            FeatureFlags::EVENT_FORK
                | FeatureFlags::EVENT_REMAP
                | FeatureFlags::EVENT_REMOVE
                | FeatureFlags::EVENT_UNMAP,
        )
        .create()
    {
        Ok(u) => u,
        Err(Error::PermissionDenied { op }) => return Err(fail(needs_ptrace(op))),
        Err(e) => return Err(e.into()),
    };
    let state = Mutex::new(State::default());
    let changed = Condvar::new();
    let stop = StopSignal::new()?;
    let (workload_result, monitor_result) = std::thread::scope(|s| {
        let monitor = s.spawn(|| {
            Monitor {
                uffd: &uffd,
                state: &state,
                changed: &changed,
                stop: &stop,
            }
            .run()
        });
        let w = workload(&uffd, &state, &changed);
        stop.signal();
        (w, monitor.join())
    });
    monitor_result
        .map_err(|_| fail("the monitor panicked"))?
        .map_err(|e| fail(format!("monitor: {e}")))?;
    workload_result?;
    let st = state.into_inner().unwrap();
    println!(
        "events: fork {}, remap {}, remove {}, unmap {} (+{} of other ranges); faults: parent {}, child {}, zero-filled {}",
        st.forks, st.remaps, st.removes, st.unmaps, st.other_unmaps, st.parent_faults, st.child_faults, st.zero_fills
    );
    if st.forks != 1 || st.remaps != 1 || st.removes != 1 || st.unmaps != 1 || st.zero_fills != 2 {
        return Err(fail("unexpected event counts"));
    }
    println!("verified: every event followed, every page as expected");
    Ok(())
}

fn main() -> ExitCode {
    let Cli {} = args::parse();
    finish("fork-events", run())
}
