//! Source compatibility with the `userfaultfd` 0.9 crate: these tests are written the way 0.9
//! users write their programs (names, argument order, `?` on the results, `Event` fields), and
//! check the places where this crate deliberately differs (`into_raw_fd` keeps the fd open).

mod common;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::thread;

use libc::c_void;
use userfaultfd::{
    Error, Event, EventBuffer, FaultKind, FeatureFlags, IoctlFlags, ReadWrite, RegisterMode,
    Result, Uffd, UffdBuilder,
};

const PAGE_SIZE: usize = 4096;

fn mmap_anon(len: usize) -> *mut c_void {
    // SAFETY: a fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p
}

fn munmap(p: *mut c_void, len: usize) {
    // SAFETY: unmaps a mapping this file created and no longer uses.
    assert_eq!(unsafe { libc::munmap(p, len) }, 0);
}

/// A 0.9-style event handler: exhaustive over the 0.9 variants and fields.
fn handle(uffd: &Uffd, event: Event, fill: u8) -> Result<&'static str> {
    Ok(match event {
        Event::Pagefault {
            kind,
            rw,
            addr,
            thread_id,
        } => {
            let _ = thread_id;
            let _write = matches!(rw, ReadWrite::Write) || matches!(rw, ReadWrite::Read);
            match kind {
                FaultKind::Missing => {
                    let page = [fill; PAGE_SIZE];
                    // SAFETY: `addr` is a missing page of a range registered in the test.
                    unsafe { uffd.copy(page.as_ptr() as *const c_void, addr, PAGE_SIZE, true)? };
                    "missing"
                }
                FaultKind::WriteProtected => {
                    uffd.remove_write_protection(addr, PAGE_SIZE, true)?;
                    "wp"
                }
                FaultKind::Minor => {
                    uffd.r#continue(addr, PAGE_SIZE, true)?;
                    "minor"
                }
            }
        }
        Event::Fork { uffd } => {
            drop(uffd);
            "fork"
        }
        Event::Remap { from, to, len } => {
            let _ = (from, to, len);
            "remap"
        }
        Event::Remove { start, end } => {
            let _ = (start, end);
            "remove"
        }
        Event::Unmap { start, end } => {
            let _ = (start, end);
            "unmap"
        }
    })
}

#[test]
fn program_written_against_0_9() -> Result<()> {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(true)
        .require_features(FeatureFlags::PAGEFAULT_FLAG_WP)
        .require_ioctls(IoctlFlags::REGISTER | IoctlFlags::UNREGISTER | IoctlFlags::API)
        .create()?;

    let len = 4 * PAGE_SIZE;
    let mapping = mmap_anon(len);
    let ioctls = uffd.register(mapping, 2 * PAGE_SIZE)?;
    assert!(ioctls.contains(IoctlFlags::COPY | IoctlFlags::ZEROPAGE | IoctlFlags::WAKE));
    let page2 = (mapping as usize + 2 * PAGE_SIZE) as *mut c_void;
    let ioctls = uffd.register_with_mode(
        page2,
        2 * PAGE_SIZE,
        RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
    )?;
    assert!(ioctls.contains(IoctlFlags::WRITE_PROTECT));

    // Missing fault through read_event.
    assert!(uffd.read_event()?.is_none());
    let addr = mapping as usize;
    let t = thread::spawn(move || {
        // SAFETY: the mapping lives until the thread is joined.
        unsafe { std::ptr::read_volatile(addr as *const u8) }
    });
    let ev = common::next_event(&uffd);
    assert_eq!(handle(&uffd, ev, 7)?, "missing");
    assert_eq!(t.join().unwrap(), 7);

    // zeropage and wake, as 0.9 spells them.
    // SAFETY: a missing page of the registered range.
    let n = unsafe { uffd.zeropage((addr + PAGE_SIZE) as *mut c_void, PAGE_SIZE, false)? };
    assert_eq!(n, PAGE_SIZE);
    uffd.wake((addr + PAGE_SIZE) as *mut c_void, PAGE_SIZE)?;

    // Write protection on the MISSING|WP half.
    // SAFETY: a missing page of the registered range.
    unsafe { uffd.zeropage(page2, PAGE_SIZE, true)? };
    uffd.write_protect(page2, PAGE_SIZE)?;
    let a2 = page2 as usize;
    let t = thread::spawn(move || {
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(a2 as *mut u8, 9) }
    });
    let mut buf = EventBuffer::new(16);
    let mut handled = Vec::new();
    while handled.is_empty() {
        assert_ne!(common::poll_in(&uffd, common::TIMEOUT_MS), 0, "no WP fault");
        for ev in uffd.read_events(&mut buf)? {
            handled.push(handle(&uffd, ev?, 0)?);
        }
    }
    assert_eq!(handled, ["wp"]);
    t.join().unwrap();
    // SAFETY: the page is present and nobody else touches it now.
    assert_eq!(unsafe { std::ptr::read_volatile(page2 as *const u8) }, 9);

    uffd.unregister(mapping, len)?;
    munmap(mapping, len);
    Ok(())
}

#[test]
fn continue_as_0_9_spells_it() -> Result<()> {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return Ok(());
    }
    let shm = mmap::SharedMemory::new("compat", 2 * PAGE_SIZE as u64).unwrap();
    let guest = mmap::MemoryMapping::from_fd(&shm, 2 * PAGE_SIZE).unwrap();
    let filler = mmap::MemoryMapping::from_fd(&shm, 2 * PAGE_SIZE).unwrap();
    let uffd = UffdBuilder::new().non_blocking(true).create()?;
    uffd.register_with_mode(guest.as_ptr().cast(), 2 * PAGE_SIZE, RegisterMode::MINOR)?;
    filler.write_obj(0x33u8, 0).unwrap();
    let addr = guest.as_ptr() as usize;
    let t = thread::spawn(move || {
        // SAFETY: `guest` lives until the thread is joined.
        unsafe { std::ptr::read_volatile(addr as *const u8) }
    });
    let ev = common::next_event(&uffd);
    assert_eq!(handle(&uffd, ev, 0)?, "minor");
    assert_eq!(t.join().unwrap(), 0x33);
    Ok(())
}

#[test]
fn into_raw_fd_hands_over_an_open_fd() -> Result<()> {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .user_mode_only(true)
        .require_features(FeatureFlags::THREAD_ID)
        .create()?;
    let raw = uffd.into_raw_fd();
    assert!(
        common::fd_is_open(raw),
        "0.9 closed the fd here; we must not"
    );
    // SAFETY: `raw` came from into_raw_fd just above; ownership goes back.
    let uffd = unsafe { Uffd::from_raw_fd(raw) };
    assert_eq!(uffd.as_raw_fd(), raw);
    assert_eq!(
        uffd.features(),
        FeatureFlags::THREAD_ID,
        "learnt from fdinfo"
    );
    // It is still a working userfaultfd.
    let p = mmap_anon(PAGE_SIZE);
    uffd.register(p, PAGE_SIZE)?;
    uffd.unregister(p, PAGE_SIZE)?;

    let owned: OwnedFd = uffd.into();
    assert_eq!(owned.as_raw_fd(), raw);
    assert!(common::fd_is_open(raw));
    let uffd = Uffd::try_from(owned).unwrap();
    assert_eq!(uffd.as_fd().as_raw_fd(), raw);
    uffd.register(p, PAGE_SIZE)?;
    drop(uffd);
    munmap(p, PAGE_SIZE);
    Ok(())
}

#[test]
fn probe_features_and_features() -> Result<()> {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return Ok(());
    }
    let supported = UffdBuilder::probe_features()?;
    assert!(supported.contains(FeatureFlags::MISSING_SHMEM | FeatureFlags::THREAD_ID));
    let uffd = UffdBuilder::new()
        .require_features(FeatureFlags::THREAD_ID)
        .create()?;
    assert_eq!(uffd.features(), FeatureFlags::THREAD_ID);
    assert_eq!(uffd.supported_features(), supported);
    Ok(())
}

#[test]
fn errors_are_std_errors_with_errno() {
    fn takes_std_error(_: &dyn std::error::Error) {}
    let uffd = UffdBuilder::new().user_mode_only(true).create().unwrap();
    let p = mmap_anon(PAGE_SIZE);
    // Not registered: ENOENT, through io::Error too.
    let page = [0u8; PAGE_SIZE];
    // SAFETY: our own mapping; the kernel refuses the unregistered range.
    let e: Error = unsafe { uffd.copy(page.as_ptr().cast(), p, PAGE_SIZE, true) }.unwrap_err();
    takes_std_error(&e);
    assert_eq!(e.errno(), Some(userfaultfd::Errno::ENOENT));
    let msg = e.to_string();
    assert!(
        msg.contains("UFFDIO_COPY") && msg.contains("ENOENT"),
        "{msg}"
    );
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    // Library gap (reported): `From<Error> for io::Error` documents that `raw_os_error()`
    // works, but it wraps the error with `io::Error::new`, so `raw_os_error()` is `None`.
    munmap(p, PAGE_SIZE);
}
