//! The fault-handling hot path does not touch the heap.
//!
//! A counting `#[global_allocator]` counts the allocations made by the handler thread while a
//! window is open. Inside the window the handler resolves a few thousand real faults with
//! `read_event`, `read_events` (its `EventBuffer` is allocated before the window), `copy`,
//! `zeropage`, `r#move`, `r#continue` (on a memfd registered MINOR), `remove_write_protection`
//! plus `wake` (write-protect faults); a second window issues `write_protect` and `poison`. The
//! test then asserts that the windows saw zero allocations. It is deterministic (no timing) and needs a
//! kernel with MOVE (6.8) and POISON (6.6); without them it says so and passes vacuously.
//!
//! The handler counts pages, not messages: a fault can be delivered again after it was read
//! (a faulting thread woken early, by a signal say, retries and queues a new message; the
//! kernel's uffd selftests treat the resulting `EEXIST` the same way), so a repeated fault is
//! woken and not counted twice. `write_protect` and `poison` run in a second window, after the
//! faulting thread has finished: re-protecting the pages while its last write was woken but not
//! yet retried made that write fault again with nobody left to serve it (the hang this test
//! used to have under load). Every wait is bounded by [`STALL`], and a failure closes the
//! userfaultfd (which lets the faulting thread finish) before it panics, so the test fails
//! instead of hanging.

use std::os::fd::AsRawFd;
use std::ptr;
use std::thread;
use std::time::Duration;

use libc::c_void;
use test_kit::mapping::Map;
use userfaultfd::{
    Error, Event, EventBuffer, FaultKind, FeatureFlags, RegisterMode, Uffd, UffdBuilder,
};

mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;

const PAGE: usize = 4096;
/// Pages in each of the three faulting regions (anonymous MISSING, memfd MINOR, anonymous WP).
const PAGES: usize = 1024;
/// Pages poisoned without a fault.
const POISON_PAGES: usize = 64;
/// How long the handler waits for the next message before it declares the test stuck.
const STALL: Duration = Duration::from_secs(30);

/// Private anonymous memory of `len` bytes (`MADV_NOHUGEPAGE`: every page faults on its own).
fn anon(len: usize) -> Map {
    let m = Map::anon(len);
    m.no_huge_pages().expect("madvise");
    m
}

/// `MAP_SHARED` of the memfd `fd` (`MADV_NOHUGEPAGE`).
fn shared(len: usize, fd: libc::c_int) -> Map {
    let m = Map::try_new(len, libc::MAP_SHARED, fd).expect("mmap");
    m.no_huge_pages().expect("madvise");
    m
}

fn copy_byte(i: usize) -> u8 {
    (i % 251) as u8 + 1
}
fn move_byte(i: usize) -> u8 {
    (i % 241) as u8 + 3
}
fn shm_byte(i: usize) -> u8 {
    (i % 239) as u8 + 5
}

#[test]
fn fault_hot_path_does_not_allocate() {
    let supported = UffdBuilder::probe_features().expect("probe features");
    let needed = FeatureFlags::MOVE
        | FeatureFlags::POISON
        | FeatureFlags::MINOR_SHMEM
        | FeatureFlags::PAGEFAULT_FLAG_WP;
    if !supported.contains(needed) {
        let missing = needed - supported;
        for (name, f) in missing.iter_names() {
            let since = f.since().expect("a named feature");
            if !(FeatureFlags::MOVE | FeatureFlags::POISON).contains(f) {
                test_kit::report::skip(format!("the kernel lacks {name} (Linux {since})"));
                continue;
            }
            // MOVE (6.8), POISON (6.6): the library's typed error, naming feature and version.
            let e = UffdBuilder::new().require_features(f).create().unwrap_err();
            assert!(
                matches!(e, Error::UnsupportedFeatures { missing, .. } if missing == f),
                "{e:?}"
            );
            assert!(
                e.to_string().contains(&format!("{name} (Linux {since})")),
                "{e}"
            );
            test_kit::report::unsupported(name, since, &e);
        }
        return;
    }
    let uffd = match UffdBuilder::new()
        .user_mode_only(true)
        .non_blocking(true)
        .create()
    {
        Ok(u) => u,
        Err(e @ Error::Unsupported { .. }) => {
            test_kit::report::skip(format!(
                "no userfaultfd in this kernel: {e} (CONFIG_USERFAULTFD)"
            ));
            return;
        }
        Err(e) => panic!("create: {e}"),
    };

    // --- Setup, outside the window. ---
    let len = PAGES * PAGE;
    // Anonymous MISSING: pages resolved by copy (i % 3 == 0), zeropage (1) and move (2).
    let missing = anon(len);
    uffd.register(missing.ptr(), len).expect("register MISSING");
    let copy_src = anon(PAGE);
    copy_src.fill_pages(|_| 0);
    let copy_src_page = copy_src.addr();
    let move_src = anon(len);
    move_src.fill_pages(move_byte);

    // memfd MINOR: filled through an unregistered view, resolved with CONTINUE.
    // SAFETY: the name is a NUL-terminated string; memfd_create returns a new fd or -1.
    let memfd = unsafe { libc::memfd_create(c"no-alloc".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(memfd >= 0, "memfd_create");
    // SAFETY: `memfd` is the fd just created.
    assert_eq!(unsafe { libc::ftruncate(memfd, len as libc::off_t) }, 0);
    let minor = shared(len, memfd);
    let filler = shared(len, memfd);
    filler.fill_pages(shm_byte);
    uffd.register_with_mode(minor.ptr(), len, RegisterMode::MINOR)
        .expect("register MINOR");

    // Anonymous WP: populated, then write-protected; writes fault until unprotected.
    let wp = anon(len);
    wp.fill_pages(|_| 0xee);
    uffd.register_with_mode(wp.ptr(), len, RegisterMode::WRITE_PROTECT)
        .expect("register WP");
    uffd.write_protect(wp.ptr(), len).expect("write_protect");

    // Missing pages poisoned without any fault.
    let poisoned = anon(POISON_PAGES * PAGE);
    uffd.register(poisoned.ptr(), POISON_PAGES * PAGE)
        .expect("register poison range");

    let mut buf = EventBuffer::new(64);
    let (m_addr, n_addr, w_addr) = (missing.addr(), minor.addr(), wp.addr());
    let toucher = thread::spawn(move || {
        let mut sum = 0u64;
        for i in 0..PAGES {
            // SAFETY: the page is mapped; the read blocks until the handler resolves it.
            sum += u64::from(unsafe { ptr::read_volatile((m_addr + i * PAGE) as *const u8) });
        }
        for i in 0..PAGES {
            // SAFETY: as above (a minor fault).
            sum += u64::from(unsafe { ptr::read_volatile((n_addr + i * PAGE) as *const u8) });
        }
        for i in 0..PAGES {
            // SAFETY: the page is mapped and populated; the write waits for unprotection.
            unsafe { ptr::write_volatile((w_addr + i * PAGE) as *mut u8, i as u8) };
        }
        sum
    });

    // The counter works: one allocation inside a trial window is seen.
    counting_alloc::count_this_thread(true);
    drop(std::hint::black_box(Box::new(7u8)));
    counting_alloc::count_this_thread(false);
    assert_eq!(
        counting_alloc::take_allocations(),
        1,
        "the counting allocator counts"
    );

    // Allocated before the window: which pages are resolved, per region.
    let mut state = Handler {
        regions: [m_addr, n_addr, w_addr],
        move_src: &move_src,
        copy_src: copy_src_page,
        resolved: vec![false; 3 * PAGES],
        faults: [0; 3],
        repeated: 0,
    };

    // --- The window: only the handler thread's allocations count. ---
    counting_alloc::count_this_thread(true);
    let outcome = state.serve(&uffd, &mut buf);
    counting_alloc::count_this_thread(false);
    if let Err(e) = outcome {
        // Closing the userfaultfd unregisters every range and wakes the faulting thread, which
        // then gets the kernel's default handling and finishes: fail, do not hang.
        drop(uffd);
        let _ = toucher.join();
        panic!("{e} (pages resolved per region: {:?})", state.faults);
    }
    // Every page is resolved, so the toucher finishes; joining is outside the windows.
    let sum = toucher.join().expect("toucher");

    // --- Second window: write-protect and poison without faults. ---
    counting_alloc::count_this_thread(true);
    let outcome = (|| {
        for i in 0..PAGES {
            uffd.write_protect(wp.page(i), PAGE)
                .map_err(|e| format!("write_protect: {e}"))?;
        }
        for i in 0..POISON_PAGES {
            // SAFETY: `poisoned` is this test's raw mapping, never touched after this.
            match unsafe { uffd.poison(poisoned.page(i), PAGE, false) } {
                Ok(PAGE) => {}
                other => return Err(format!("poison page {i}: {other:?}")),
            }
        }
        Ok(())
    })();
    counting_alloc::count_this_thread(false);
    let allocs = counting_alloc::allocations();
    if let Err(e) = outcome {
        panic!("{e}");
    }

    // --- Checks, outside the windows. ---
    assert_eq!(
        allocs, 0,
        "the handler allocated {allocs} times while resolving faults"
    );
    assert_eq!(
        state.faults, [PAGES; 3],
        "pages resolved per region (missing, minor, wp)"
    );
    if state.repeated > 0 {
        eprintln!(
            "{} faults were delivered again after being read",
            state.repeated
        );
    }
    let mut expect = 0u64;
    for i in 0..PAGES {
        let want = match i % 3 {
            0 => copy_byte(i),
            1 => 0,
            _ => move_byte(i),
        };
        assert_eq!(missing.page_byte(i), want, "missing page {i}");
        assert_eq!(minor.page_byte(i), shm_byte(i), "minor page {i}");
        assert_eq!(wp.page_byte(i), i as u8, "wp page {i}");
        expect += u64::from(want) + u64::from(shm_byte(i));
        if i % 3 == 2 {
            assert_eq!(
                move_src.page_byte(i),
                0,
                "moved-out source page {i} is a hole"
            );
        }
    }
    assert_eq!(sum, expect, "bytes the toucher read");
    // SAFETY: `memfd` is ours; both mappings keep the file alive.
    unsafe { libc::close(memfd) };
}

/// The handler's state: every buffer it needs is allocated before the window opens.
struct Handler<'a> {
    /// Base addresses of the MISSING, MINOR and WP regions.
    regions: [usize; 3],
    move_src: &'a Map,
    copy_src: usize,
    /// `resolved[region * PAGES + page]`.
    resolved: Vec<bool>,
    /// Distinct pages resolved per region.
    faults: [usize; 3],
    /// Messages for faults that were already resolved.
    repeated: usize,
}

impl Handler<'_> {
    /// Serves faults until every page of the three regions is resolved, alternating between
    /// `read_event` and `read_events`. Allocation-free unless something fails.
    fn serve(&mut self, uffd: &Uffd, buf: &mut EventBuffer) -> Result<(), String> {
        let mut use_batch = false;
        while self.faults.iter().sum::<usize>() < 3 * PAGES {
            wait_readable(uffd)?;
            if use_batch {
                for ev in uffd
                    .read_events(buf)
                    .map_err(|e| format!("read_events: {e}"))?
                {
                    self.resolve(uffd, ev.map_err(|e| format!("event: {e}"))?)?;
                }
            } else {
                // `None`: the fault was woken between poll and read; poll again.
                if let Some(ev) = uffd.read_event().map_err(|e| format!("read_event: {e}"))? {
                    self.resolve(uffd, ev)?;
                }
            }
            use_batch = !use_batch;
        }
        Ok(())
    }

    /// Resolves one fault, or only wakes it if its page was resolved before.
    fn resolve(&mut self, uffd: &Uffd, ev: Event) -> Result<(), String> {
        let Event::Pagefault { kind, addr, .. } = ev else {
            return Err(format!("unexpected event {ev:?}"));
        };
        let region = match kind {
            FaultKind::Missing => 0,
            FaultKind::Minor => 1,
            FaultKind::WriteProtected => 2,
        };
        let idx = (addr as usize).wrapping_sub(self.regions[region]) / PAGE;
        if idx >= PAGES {
            return Err(format!("{kind:?} fault at {addr:?} outside its region"));
        }
        if std::mem::replace(&mut self.resolved[region * PAGES + idx], true) {
            self.repeated += 1;
            return uffd
                .wake(addr, PAGE)
                .map_err(|e| format!("wake {addr:?}: {e}"));
        }
        let r = match (kind, idx % 3) {
            (FaultKind::Missing, 0) => {
                // SAFETY: `copy_src` is a live one-page mapping only this thread writes
                // (volatile, before the copy); `addr` is a missing page of a registered range.
                unsafe {
                    ptr::write_volatile(self.copy_src as *mut u8, copy_byte(idx));
                    uffd.copy(self.copy_src as *const c_void, addr, PAGE, true)
                }
            }
            // SAFETY: `addr` is a missing page of a range registered above.
            (FaultKind::Missing, 1) => unsafe { uffd.zeropage(addr, PAGE, true) },
            // SAFETY: the source page is a populated, exclusive page of `move_src` that nothing
            // references (it is moved once: `resolved` guards against a repeated fault);
            // `addr` is a missing registered page.
            (FaultKind::Missing, _) => unsafe {
                uffd.r#move(self.move_src.page(idx), addr, PAGE, true)
            },
            (FaultKind::Minor, _) => uffd.r#continue(addr, PAGE, true),
            (FaultKind::WriteProtected, _) => uffd
                .remove_write_protection(addr, PAGE, false)
                .and_then(|()| uffd.wake(addr, PAGE))
                .map(|()| PAGE),
        };
        match r {
            Ok(PAGE) => {
                self.faults[region] += 1;
                Ok(())
            }
            other => Err(format!(
                "resolving the {kind:?} fault at {addr:?}: {other:?}"
            )),
        }
    }
}

/// Waits, bounded by [`STALL`], until the non-blocking `uffd` is readable.
fn wait_readable(uffd: &Uffd) -> Result<(), String> {
    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one live pollfd, as the count says.
        match unsafe { libc::poll(&mut pfd, 1, STALL.as_millis() as libc::c_int) } {
            0 => return Err(format!("no fault reported for {STALL:?}")),
            1 if pfd.revents & libc::POLLIN != 0 => return Ok(()),
            1 => return Err(format!("poll: revents {:#x}", pfd.revents)),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(format!("poll: {}", std::io::Error::last_os_error())),
        }
    }
}
