//! The fault-handling thread shared by the scenarios, and the faulting loop.

use std::hint::black_box;
use std::ptr;
use std::time::{Duration, Instant};

use libc::c_void;
use userfaultfd::{Error, Event, EventBuffer, Uffd};

use crate::mem::PAGE;

/// How long a handler waits for the next fault before it gives up (a lost wake-up or a kernel
/// that never reports): far above any real round trip, so the benchmark cannot hang.
const STALL: Duration = Duration::from_secs(10);

/// How the handler waits and reads.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Busy-poll `read` (the fd is non-blocking) instead of sleeping in `poll(2)`.
    pub spin: bool,
    /// Messages per `read`: 1 uses `read_event`, more uses `read_events`.
    pub batch: usize,
}

/// Serves faults until `pages` pages have been resolved. `resolve(addr)` resolves the fault at
/// `addr` and returns how many pages it made present. Returns the number of fault messages.
///
/// On any failure it unregisters `range` (which wakes the faulting threads, so they finish and
/// the scenario fails verification instead of hanging) and returns the error.
pub fn serve(
    uffd: &Uffd,
    style: Style,
    range: (usize, usize),
    pages: usize,
    mut resolve: impl FnMut(*mut c_void) -> Result<usize, Error>,
) -> Result<usize, String> {
    // Allocated before the first fault: the loop below does not allocate.
    let mut buf = EventBuffer::new(style.batch.max(1));
    let mut done = 0usize;
    let mut faults = 0usize;
    let mut outcome = Ok(());
    'serve: while done < pages {
        if let Err(e) = wait(uffd, style.spin) {
            outcome = Err(e);
            break;
        }
        if style.batch <= 1 {
            match uffd.read_event() {
                Ok(None) => continue,
                Ok(Some(Event::Pagefault { addr, .. })) => match resolve(addr) {
                    Ok(n) => {
                        done += n;
                        faults += 1;
                    }
                    Err(e) => {
                        outcome = Err(format!("resolving {addr:?}: {e}"));
                        break;
                    }
                },
                Ok(Some(other)) => {
                    outcome = Err(format!("unexpected event {other:?}"));
                    break;
                }
                Err(e) => {
                    outcome = Err(format!("read: {e}"));
                    break;
                }
            }
        } else {
            let events = match uffd.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(e) => {
                    outcome = Err(format!("read: {e}"));
                    break;
                }
            };
            for ev in events {
                match ev {
                    Ok(Event::Pagefault { addr, .. }) => match resolve(addr) {
                        Ok(n) => {
                            done += n;
                            faults += 1;
                        }
                        Err(e) => {
                            outcome = Err(format!("resolving {addr:?}: {e}"));
                            break 'serve;
                        }
                    },
                    Ok(other) => {
                        outcome = Err(format!("unexpected event {other:?}"));
                        break 'serve;
                    }
                    Err(e) => {
                        outcome = Err(format!("read: {e}"));
                        break 'serve;
                    }
                }
            }
        }
    }
    match outcome {
        Ok(()) => Ok(faults),
        Err(e) => {
            let _ = uffd.unregister(range.0 as *mut c_void, range.1);
            Err(e)
        }
    }
}

/// Waits until a message may be pending: `poll(2)` with a deadline, or nothing when spinning
/// (the non-blocking `read` is then the wait; a spinning handler that sees nothing for `STALL`
/// would be caught by the faulting side finishing, so a deadline is kept here too).
fn wait(uffd: &Uffd, spin: bool) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    if spin {
        return Ok(());
    }
    let mut pfd = libc::pollfd {
        fd: uffd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one live pollfd, as the count says.
        let r = unsafe { libc::poll(&mut pfd, 1, STALL.as_millis() as libc::c_int) };
        match r {
            1.. if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 => {
                return Err(format!("poll: revents {:#x}", pfd.revents))
            }
            1.. => return Ok(()),
            0 => return Err(format!("no fault reported for {STALL:?}")),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(format!("poll: {}", std::io::Error::last_os_error())),
        }
    }
}

/// Resolves `[dst, dst+len)` with `UFFDIO_COPY` from `src`, page by page where a page is
/// already present; returns the pages this call made present. A page already present
/// ([`Error::AlreadyMapped`]) only needs a wake.
pub fn copy_span(uffd: &Uffd, src: usize, dst: usize, len: usize) -> Result<usize, Error> {
    // SAFETY: the scenarios pass a `dst` range inside a mapping they registered and own, and a
    // `src` range inside a live, filled mapping; nothing holds references into either.
    match unsafe { uffd.copy(src as *const c_void, dst as *mut c_void, len, true) } {
        Ok(n) => Ok(n / PAGE),
        Err(Error::AlreadyMapped { .. }) if len == PAGE => {
            uffd.wake(dst as *mut c_void, PAGE)?;
            Ok(0)
        }
        Err(Error::AlreadyMapped { .. }) | Err(Error::PartialProgress { .. }) => {
            // Some pages of the span exist: fall back to single pages.
            let mut made = 0;
            for off in (0..len).step_by(PAGE) {
                made += copy_span(uffd, src + off, dst + off, PAGE)?;
            }
            Ok(made)
        }
        Err(e) => Err(e),
    }
}

/// Touches pages `first..first+count` of the range at `base` in order, one byte per page: a
/// read, or when `write` a store of `byte(page)`. Returns the time of the first and the last
/// touch.
pub fn touch(
    base: usize,
    first: usize,
    count: usize,
    write: bool,
    byte: impl Fn(usize) -> u8,
) -> (Instant, Instant) {
    let mut sum = 0u64;
    let t0 = Instant::now();
    for i in first..first + count {
        let p = base + i * PAGE;
        if write {
            // SAFETY: the page lies in a live mapping of the scenario; the store may fault and
            // wait for the handler, which is the point.
            unsafe { ptr::write_volatile(p as *mut u8, byte(i)) };
        } else {
            // SAFETY: as above, a load.
            sum += u64::from(unsafe { ptr::read_volatile(p as *const u8) });
        }
    }
    let t1 = Instant::now();
    black_box(sum);
    (t0, t1)
}
