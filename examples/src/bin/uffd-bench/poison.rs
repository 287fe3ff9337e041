//! Surviving `UFFDIO_POISON`: the `SIGBUS` the faulting thread takes when it retries a poisoned
//! page.
//!
//! How the toucher continues: the `SIGBUS` handler checks that the address is the next page of
//! the poisoned range, counts it, and then replaces the poison marker with a real page by
//! issuing `UFFDIO_COPY` of a marker page onto the poisoned address (on Linux 6.18 COPY over a
//! poison marker succeeds, as seen here). When the handler returns, the faulting load
//! is restarted and now reads the marker page. Everything the handler does is async-signal-safe:
//! atomics, one `ioctl(2)` (a plain system call), and, should that COPY fail, one `mmap(2)`
//! with `MAP_FIXED` of an anonymous page over the address so the load still completes (and the
//! failure is recorded, so the scenario fails verification instead of looping on `SIGBUS`).
//! `errno` is saved and restored around it.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use userfaultfd::sys;

use crate::mem::PAGE;

static UFFD: AtomicI32 = AtomicI32::new(-1);
static BASE: AtomicUsize = AtomicUsize::new(0);
static PAGES: AtomicUsize = AtomicUsize::new(0);
static MARKER: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static BAD: AtomicUsize = AtomicUsize::new(0);

/// The byte (repeated) of the page the signal handler copies over each poisoned page.
pub const MARKER_BYTE: u8 = 0xa5;

/// Arms the handler for the range `[base, base + pages * PAGE)` of the userfaultfd `uffd`;
/// `marker` is a live page filled with [`MARKER_BYTE`] that outlives the scenario.
pub fn arm(uffd: libc::c_int, base: usize, pages: usize, marker: usize) -> Result<(), String> {
    UFFD.store(uffd, Ordering::SeqCst);
    BASE.store(base, Ordering::SeqCst);
    PAGES.store(pages, Ordering::SeqCst);
    MARKER.store(marker, Ordering::SeqCst);
    NEXT.store(0, Ordering::SeqCst);
    BAD.store(0, Ordering::SeqCst);
    // SAFETY: `sigaction` is plain data for which zeroes are a valid (empty) value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigbus as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa` is initialised, the handler has the SA_SIGINFO signature and only does
    // async-signal-safe work; the old action is not needed.
    if unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Restores the default `SIGBUS` action and returns `(signals taken, problems)`.
pub fn disarm() -> (usize, usize) {
    // SAFETY: restoring SIG_DFL for SIGBUS has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    PAGES.store(0, Ordering::SeqCst);
    (NEXT.load(Ordering::SeqCst), BAD.load(Ordering::SeqCst))
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let base = BASE.load(Ordering::SeqCst);
    let pages = PAGES.load(Ordering::SeqCst);
    if addr < base || addr >= base + pages * PAGE {
        // Not ours: restore the default action; the fault repeats and terminates the process.
        // SAFETY: signal(2) is async-signal-safe.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot.
    let saved_errno = unsafe { *libc::__errno_location() };
    let page = addr & !(PAGE - 1);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    if page != base + n * PAGE {
        BAD.fetch_add(1, Ordering::SeqCst);
    }
    let mut copy = sys::uffdio_copy {
        dst: page as u64,
        src: MARKER.load(Ordering::SeqCst) as u64,
        len: PAGE as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: `copy` is a live uffdio_copy; the destination is a poisoned page of the range the
    // benchmark owns and nothing references, the source the live marker page.
    let r = unsafe {
        libc::ioctl(
            UFFD.load(Ordering::SeqCst),
            sys::UFFDIO_COPY as _,
            &mut copy,
        )
    };
    if r != 0 {
        BAD.fetch_add(1, Ordering::SeqCst);
        // SAFETY: replaces exactly the one poisoned page of the benchmark's own range with a
        // zero page, so the interrupted load can complete; mmap is a plain system call.
        unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}
