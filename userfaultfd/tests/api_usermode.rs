//! `UFFD_USER_MODE_ONLY` (and `SIGBUS` mode): a fault the kernel takes on the program's behalf
//! fails with `EFAULT` and produces no message.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use common::*;
use userfaultfd::{FaultKind, FeatureFlags, UffdBuilder};

fn pipe_with(bytes: &[u8]) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` receives two new descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are new and owned only here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: `bytes` is readable for its length.
    let n = unsafe { libc::write(w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
    (r, w)
}

/// `read(2)` from a pipe into `dst`: returns the result and errno.
fn kernel_write_into(r: &OwnedFd, dst: usize, len: usize) -> (isize, i32) {
    // SAFETY: `dst` is a registered missing page of a live mapping; the kernel's copy_to_user
    // either fills it or fails with EFAULT.
    let n = unsafe { libc::read(r.as_raw_fd(), dst as *mut _, len) };
    (
        n,
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    )
}

#[test]
fn kernel_access_is_efault_without_message() {
    let ps = ps();
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .non_blocking(true)
        .create()
        .unwrap();
    let mem = Map::anon(2 * ps);
    uffd.register(mem.ptr(), 2 * ps).unwrap();
    let (r, _w) = pipe_with(b"hello");
    let (n, errno) = kernel_write_into(&r, mem.addr(), 5);
    assert_eq!((n, errno), (-1, libc::EFAULT));
    // No message was queued for the kernel-mode fault.
    assert_eq!(poll_in(&uffd, 0), 0);
    assert!(uffd.read_event().unwrap().is_none());

    // A user-mode access to the same page is reported as usual.
    let rx = reader(mem.addr());
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::Missing, mem.addr()));
    // SAFETY: missing page of our registered mapping.
    unsafe { uffd.zeropage(mem.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0);
    // Now the page is present: the kernel write succeeds.
    let (n, _) = kernel_write_into(&r, mem.addr(), 5);
    assert_eq!(n, 5);
    assert_eq!(mem.read(4), b'o');
}

#[test]
fn kernel_access_is_reported_without_user_mode_only() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    // Root (or /dev/userfaultfd) may handle kernel-mode faults: the read(2) blocks in the
    // kernel until the handler resolves the fault, then succeeds.
    let uffd = uffd();
    let mem = Map::anon(ps);
    uffd.register(mem.ptr(), ps).unwrap();
    let (r, _w) = pipe_with(b"abc");
    let addr = mem.addr();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(kernel_write_into(&r, addr, 3).0).unwrap());
    let (kind, _, a, _) = next_fault(&uffd);
    assert_eq!((kind, a), (FaultKind::Missing, addr));
    // SAFETY: missing page of our registered mapping.
    unsafe { uffd.zeropage(mem.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 3);
    assert_eq!(mem.read(2), b'c');
}

#[test]
fn sigbus_mode_sends_no_message() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = uffd_with(FeatureFlags::SIGBUS);
    assert!(uffd.features().contains(FeatureFlags::SIGBUS));
    let mem = Map::anon(ps);
    // The safe raw-pointer form refuses a SIGBUS fd (a fault would trap Rust memory).
    assert!(matches!(
        uffd.register(mem.ptr(), ps),
        Err(userfaultfd::Error::RequiresUnsafe { .. })
    ));
    // SAFETY: `mem` is reached only through the kernel-mode write below, which gets EFAULT.
    unsafe { uffd.register_unchecked(mem.ptr(), ps, userfaultfd::RegisterMode::MISSING) }.unwrap();
    // A kernel-mode access gets SIGBUS from the fault handler, which the syscall reports as
    // EFAULT; nothing is queued.
    let (r, _w) = pipe_with(b"x");
    let (n, errno) = kernel_write_into(&r, mem.addr(), 1);
    assert_eq!((n, errno), (-1, libc::EFAULT));
    assert!(uffd.read_event().unwrap().is_none());
}
