//! `SIGUSR1` (print stats) and `SIGUSR2` (write dirty layers): the handlers only bump a
//! counter; each VM's thread notices the change within its 100 ms tick.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

static USR1: AtomicU64 = AtomicU64::new(0);
static USR2: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: one atomic add.
    match sig {
        libc::SIGUSR1 => USR1.fetch_add(1, Ordering::SeqCst),
        _ => USR2.fetch_add(1, Ordering::SeqCst),
    };
}

/// Installs the handlers (`SA_RESTART`: `accept` and the socket reads go on).
pub fn install() -> io::Result<()> {
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags); it is filled below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa` is a valid sigaction whose handler is async-signal-safe (an atomic add);
        // the old action is not asked for.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many `SIGUSR1` arrived so far.
pub fn usr1() -> u64 {
    USR1.load(Ordering::SeqCst)
}

/// How many `SIGUSR2` arrived so far.
pub fn usr2() -> u64 {
    USR2.load(Ordering::SeqCst)
}
