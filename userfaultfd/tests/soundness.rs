//! The soundness rule against the running kernel: no safe call lets safe code take ownership of a
//! descriptor it was not handed, or make memory that Rust code may reference trap; and the
//! corrections that came with it (registrations kept, interruptible reads, fork descriptors
//! closed on every path, the features the kernel really enabled, the device fallback).
//!
//! Cases that must watch a process die of `SIGBUS`, or that install a seccomp filter, run in a
//! child: the test binary re-executes itself for that one test with [`CHILD_ENV`] set, and the
//! parent waits for it through a pidfd, at most [`TIMEOUT`].

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use common::{fd_is_open, next_fault, ps, recv, Map, TIMEOUT};
use mmap::MemoryMapping;
use userfaultfd::{
    Error, Event, FaultKind, FeatureFlags, IoctlFlags, Operation, RegisterMode, Uffd, UffdBuilder,
};

/// Set in a re-executed child: the name of the case to run there.
const CHILD_ENV: &str = "UFFD_SOUNDNESS_CHILD";

// ---------------------------------------------------------------------------------------------
// Item 1: a forged FORK message cannot make the crate close a descriptor it does not own.

#[test]
fn a_file_forging_a_fork_message_never_becomes_a_uffd() {
    // The victim: a descriptor the program keeps using.
    let victim = std::fs::File::open("/dev/null").expect("open /dev/null");
    let victim_fd = victim.as_raw_fd();
    // A pipe whose next 32 bytes decode as UFFD_EVENT_FORK naming the victim.
    let (r, mut w) = std::io::pipe().expect("pipe");
    let mut msg = [0u8; 32];
    msg[0] = userfaultfd::sys::UFFD_EVENT_FORK;
    msg[8..12].copy_from_slice(&(victim_fd as u32).to_ne_bytes());
    std::io::Write::write_all(&mut w, &msg).expect("write forged message");

    match Uffd::try_from(OwnedFd::from(r)) {
        Err(Error::NotUserfaultfd { .. }) => {}
        other => panic!("a pipe became a Uffd: {other:?}"),
    }
    assert!(fd_is_open(victim_fd), "the victim descriptor was closed");
    drop(victim);
}

#[test]
fn a_real_userfaultfd_converts_with_its_features() {
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::THREAD_ID)
        .create()
        .unwrap();
    let fd: OwnedFd = uffd.into();
    let uffd = Uffd::try_from(fd).expect("a userfaultfd converts");
    assert_eq!(uffd.features(), FeatureFlags::THREAD_ID);
}

// ---------------------------------------------------------------------------------------------
// Item 4: POISON and the SIGBUS feature.

#[test]
fn poison_region_is_safe_over_an_owned_mapping_and_traps_there() {
    const NAME: &str = "poison_region_is_safe_over_an_owned_mapping_and_traps_there";
    let ps = ps();
    let uffd = UffdBuilder::new().user_mode_only(true).create().unwrap();
    let mem = MemoryMapping::new_private(2 * ps).unwrap();
    uffd.register_region(&mem, RegisterMode::MISSING).unwrap();
    let poisoned = uffd.poison_region(&mem, ps, ps, true);
    if !uffd.supported_features().contains(FeatureFlags::POISON) {
        common::kernel::assert_lacks(FeatureFlags::POISON, &poisoned.unwrap_err());
        return;
    }
    assert_eq!(poisoned.unwrap(), ps);
    // Poison never replaces anything, itself included.
    let e = uffd.poison_region(&mem, ps, ps, true).unwrap_err();
    assert!(matches!(e, Error::AlreadyMapped { .. }), "{e:?}");
    // Outside the region: refused before the kernel is asked.
    let e = uffd.poison_region(&mem, 2 * ps, ps, true).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                op: Operation::Poison,
                ..
            }
        ),
        "{e:?}"
    );
    if common::is_child(CHILD_ENV, NAME) {
        // Reading the poisoned page through the mapping's own accessor traps: the owner's
        // choice, on memory no Rust reference points into.
        let _ = mem.read_obj::<u8>(ps);
        println!("CHILD READ THE POISONED PAGE WITHOUT A SIGNAL");
        std::process::exit(3);
    }
    let (status, out) = common::run_child(CHILD_ENV, NAME);
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "child: {status:?}\n{out}"
    );
}

#[test]
fn sigbus_feature_refuses_raw_registration() {
    const NAME: &str = "sigbus_feature_refuses_raw_registration";
    let ps = ps();
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .require_features(FeatureFlags::SIGBUS)
        .create()
        .unwrap();
    // A live Vec: registering its pages safely would make a later safe read trap.
    let mut v = vec![0u8; 4 * ps];
    let start = (v.as_mut_ptr() as usize).next_multiple_of(ps);
    let e = uffd
        .register(start as *mut libc::c_void, ps)
        .expect_err("raw registration with SIGBUS must be refused");
    assert!(
        matches!(
            e,
            Error::RequiresUnsafe {
                op: Operation::Register,
                ..
            }
        ),
        "{e:?}"
    );
    drop(v);

    // The owned-region form is allowed, and the unchecked form for callers who vouch.
    let mem = MemoryMapping::new_private(2 * ps).unwrap();
    uffd.register_region(&mem, RegisterMode::MISSING).unwrap();
    let raw = Map::anon(ps);
    // SAFETY: `raw` is this test's mapping, never read while registered.
    unsafe { uffd.register_unchecked(raw.ptr(), ps, RegisterMode::MISSING) }.unwrap();
    uffd.unregister(raw.ptr(), ps).unwrap();

    if common::is_child(CHILD_ENV, NAME) {
        // What the refusal prevents: a missing page of a SIGBUS registration traps.
        let _ = mem.read_obj::<u8>(0);
        println!("CHILD READ A MISSING SIGBUS PAGE WITHOUT A SIGNAL");
        std::process::exit(3);
    }
    let (status, out) = common::run_child(CHILD_ENV, NAME);
    assert_eq!(
        status.signal(),
        Some(libc::SIGBUS),
        "child: {status:?}\n{out}"
    );
}

#[test]
fn without_sigbus_raw_registration_stays_safe() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = common::uffd();
    let m = Map::anon(2 * ps);
    uffd.register(m.ptr(), 2 * ps).unwrap();
    // Closing the uffd releases the range to the kernel's default handling: a read sees zeros.
    drop(uffd);
    assert_eq!(m.read(0), 0);
}

// ---------------------------------------------------------------------------------------------
// Item 6: a failed ioctl requirement no longer unregisters an earlier registration.

#[test]
fn unsupported_ioctls_keep_an_earlier_registration() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .require_ioctls(IoctlFlags::WRITE_PROTECT)
        .create()
        .unwrap();
    let m = Map::anon(ps);
    uffd.register_with_mode(
        m.ptr(),
        ps,
        RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
    )
    .unwrap();
    // Registering MISSING alone returns no WRITEPROTECT: the requirement fails...
    let e = uffd
        .register_with_mode(m.ptr(), ps, RegisterMode::MISSING)
        .unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedIoctls { missing, .. } if missing == IoctlFlags::WRITE_PROTECT),
        "{e:?}"
    );
    // ...but the range is still registered: a fault waits for the handler's data instead of
    // getting a zero page from the kernel.
    let rx = common::reader(m.addr());
    let (kind, _, addr, _) = next_fault(&uffd);
    assert_eq!((kind, addr), (FaultKind::Missing, m.addr()));
    let page = vec![0x5au8; ps];
    // SAFETY: the test's own page, read only by the faulting thread that waits for it.
    unsafe { uffd.copy(page.as_ptr().cast(), m.ptr(), ps, true) }.unwrap();
    assert_eq!(recv(&rx), 0x5a);
}

// ---------------------------------------------------------------------------------------------
// Item 7: a blocking read can be interrupted.

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_signal_without_sa_restart_interrupts_a_blocking_read() {
    // SAFETY: `sigaction` is plain data for which zeroes are a valid value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = count_signal as *const () as usize;
    sa.sa_flags = 0; // no SA_RESTART: the read must come back with EINTR
                     // SAFETY: the handler only touches an atomic; SIGUSR1 is used by no other test here.
    let r = unsafe { libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    let uffd = UffdBuilder::new().user_mode_only(true).create().unwrap();
    let (tx, rx) = mpsc::channel();
    // Not a scoped thread: should the read never return, the test fails instead of hanging on
    // the join.
    let reader = thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(Ok(unsafe { libc::pthread_self() })).unwrap();
        tx.send(Err(uffd.read_event().map(|_| ()))).unwrap();
    });
    let thread = match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(t)) => t,
        other => panic!("reader did not start: {other:?}"),
    };
    // The reader may not be inside read(2) yet: signal until it comes back, bounded.
    let deadline = Instant::now() + TIMEOUT;
    let result = loop {
        assert!(Instant::now() < deadline, "read_event was not interrupted");
        // SAFETY: the thread is not joined before this loop ends, so `thread` stays valid.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        match rx.recv_timeout(std::time::Duration::from_millis(10)) {
            Ok(Err(r)) => break r,
            Ok(Ok(_)) => unreachable!(),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("reader died: {e}"),
        }
    };
    reader.join().unwrap();
    match result {
        Err(Error::Interrupted {
            op: Operation::Read,
        }) => {}
        other => panic!("expected Interrupted, got {other:?}"),
    }
    assert!(SIGNALS.load(Ordering::SeqCst) > 0);
}

// ---------------------------------------------------------------------------------------------
// Item 8: an absurd buffer size is clamped or refused, never a panic.

#[test]
fn event_buffer_sizes_are_bounded() {
    let buf = userfaultfd::EventBuffer::new(usize::MAX);
    assert_eq!(buf.capacity(), userfaultfd::EventBuffer::MAX_CAPACITY);
    assert!(matches!(
        userfaultfd::EventBuffer::try_new(usize::MAX),
        Err(Error::InvalidArgument {
            op: Operation::Read,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Item 10: the features the kernel enabled, region sizes, and the creation fallback.

#[test]
fn wp_async_reports_the_wp_unpopulated_the_kernel_adds() {
    let Some(uffd) = common::kernel::user_uffd_if_supported(FeatureFlags::WP_ASYNC) else {
        return;
    };
    let built = uffd.features();
    assert!(built.contains(FeatureFlags::WP_ASYNC | FeatureFlags::WP_UNPOPULATED));
    // The same as the kernel says for the fd.
    let fd: OwnedFd = uffd.into();
    assert_eq!(Uffd::try_from(fd).unwrap().features(), built);
}

#[test]
fn register_region_rounds_a_partial_page_up() {
    let uffd = UffdBuilder::new().user_mode_only(true).create().unwrap();
    let mem = MemoryMapping::new_private(100).unwrap();
    let ioctls = uffd.register_region(&mem, RegisterMode::MISSING).unwrap();
    assert!(ioctls.contains(IoctlFlags::COPY));
    assert_eq!(uffd.zeropage_region(&mem, 0, ps(), false).unwrap(), ps());
    uffd.unregister_region(&mem).unwrap();
}

/// A seccomp filter for the calling thread that fails `ioctl(_, USERFAULTFD_IOC_NEW, _)` with
/// `EPERM`, as an LSM refusing the device's ioctl would.
#[cfg(target_arch = "x86_64")]
fn refuse_ioc_new() {
    let ioc_new = userfaultfd::sys::USERFAULTFD_IOC_NEW;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // seccomp_data: nr at 0, arch at 4, ip at 8, args at 16 (the low half of args[1] at 24).
    let mut prog = [
        stmt(load, 0),
        jeq(libc::SYS_ioctl as u32, 0, 3),
        stmt(load, 24),
        jeq(ioc_new, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments; no_new_privs only restricts this process.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    // SAFETY: `fprog` points at a valid BPF program that lives across the call.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "seccomp: {}", std::io::Error::last_os_error());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn auto_falls_back_to_the_syscall_when_the_device_ioctl_is_refused() {
    use userfaultfd::CreationMethod;
    const NAME: &str = "auto_falls_back_to_the_syscall_when_the_device_ioctl_is_refused";
    if !std::path::Path::new("/dev/userfaultfd").exists() {
        println!("SKIPPED {NAME}: no /dev/userfaultfd (Linux 6.1) on this machine");
        return;
    }
    if !test_kit::privilege::require(test_kit::privilege::Need::Device) {
        return;
    }
    if !common::is_child(CHILD_ENV, NAME) {
        let (status, out) = common::run_child(CHILD_ENV, NAME);
        assert!(status.success(), "child: {status:?}\n{out}");
        assert!(out.contains("FALLBACK OK"), "{out}");
        return;
    }
    refuse_ioc_new();
    match UffdBuilder::new()
        .user_mode_only(true)
        .creation_method(CreationMethod::Device)
        .create()
    {
        Err(Error::Os {
            op: Operation::IocNew,
            errno: userfaultfd::Errno::EPERM,
            ..
        }) => {}
        other => panic!("the filter did not refuse the device: {other:?}"),
    }
    let uffd = UffdBuilder::new()
        .user_mode_only(true)
        .creation_method(CreationMethod::Auto)
        .create()
        .expect("Auto falls back to userfaultfd(2)");
    let mem = MemoryMapping::new_private(ps()).unwrap();
    uffd.register_region(&mem, RegisterMode::MISSING).unwrap();
    println!("FALLBACK OK");
}

// ---------------------------------------------------------------------------------------------
// Reading still works after all of the above: a fault round trip through a converted fd.

#[test]
fn a_converted_fd_serves_faults() {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let ps = ps();
    let fd: OwnedFd = common::uffd().into();
    let uffd = Uffd::try_from(fd).unwrap();
    let m = Map::anon(ps);
    uffd.register(m.ptr(), ps).unwrap();
    let rx = common::reader(m.addr());
    match common::next_event(&uffd) {
        Event::Pagefault { addr, .. } => {
            // SAFETY: the test's own page, read only by the faulting thread.
            unsafe { uffd.zeropage(addr, ps, true) }.unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(recv(&rx), 0);
}
