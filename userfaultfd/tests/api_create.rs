//! Creating userfaultfds: every creation method, feature negotiation, ioctl requirements, fd
//! flags, and no descriptor leaks on success or failure.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Mutex;

use common::*;
use userfaultfd::Errno;
use userfaultfd::{CreationMethod, Error, FeatureFlags, IoctlFlags, Operation, UffdBuilder};

/// Serialises the tests of this file, which count this process's open descriptors.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fd_flags(fd: i32) -> (i32, i32) {
    // SAFETY: F_GETFD/F_GETFL have no memory effects.
    unsafe {
        (
            libc::fcntl(fd, libc::F_GETFD),
            libc::fcntl(fd, libc::F_GETFL),
        )
    }
}

#[test]
fn every_creation_method_works_as_root() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require_all(&[
        test_kit::privilege::Need::Syscall,
        test_kit::privilege::Need::Device,
    ]) {
        return;
    }
    let before = count_fds();
    for method in [
        CreationMethod::Auto,
        CreationMethod::Syscall,
        CreationMethod::Device,
    ] {
        for user_mode_only in [false, true] {
            let uffd = UffdBuilder::new()
                .creation_method(method)
                .user_mode_only(user_mode_only)
                .non_blocking(true)
                .create()
                .unwrap_or_else(|e| panic!("{method:?}: {e}"));
            assert_eq!(
                count_fds(),
                before + 1,
                "{method:?}: one fd, device fd closed"
            );
            let (fdfl, fl) = fd_flags(uffd.as_raw_fd());
            assert_eq!(fdfl & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
            assert_eq!(fl & libc::O_NONBLOCK, libc::O_NONBLOCK);
            assert_eq!(uffd.api_ioctls(), IoctlFlags::API_IOCTLS);
            // The fd works: register and resolve something.
            let mem = Map::anon(ps());
            uffd.register(mem.ptr(), ps()).unwrap();
            // SAFETY: missing page of our registered mapping.
            unsafe { uffd.zeropage(mem.ptr(), ps(), true) }.unwrap();
            mem.assert_all(0, ps(), 0);
        }
    }
    assert_eq!(count_fds(), before);
}

#[test]
fn defaults_and_flags() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    // Default: close-on-exec on, blocking.
    let uffd = UffdBuilder::new().create().unwrap();
    let (fdfl, fl) = fd_flags(uffd.as_raw_fd());
    assert_eq!(fdfl & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    assert_eq!(fl & libc::O_NONBLOCK, 0);
    let uffd = UffdBuilder::new().close_on_exec(false).create().unwrap();
    let (fdfl, _) = fd_flags(uffd.as_raw_fd());
    assert_eq!(fdfl & libc::FD_CLOEXEC, 0);
}

#[test]
fn features_are_reported() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::CapSysPtrace) {
        return;
    }
    let before = count_fds();
    let probed = UffdBuilder::probe_features().unwrap();
    assert_eq!(count_fds(), before, "probe closes its throwaway fd");
    // Everything a 6.18 x86_64 kernel supports; on an older kernel, exactly those its version
    // brings (6.1 lacks the four of 6.4 to 6.8).
    let running = kernel::version();
    for f in [
        FeatureFlags::PAGEFAULT_FLAG_WP,
        FeatureFlags::EVENT_FORK,
        FeatureFlags::EVENT_REMAP,
        FeatureFlags::EVENT_REMOVE,
        FeatureFlags::MISSING_HUGETLBFS,
        FeatureFlags::MISSING_SHMEM,
        FeatureFlags::EVENT_UNMAP,
        FeatureFlags::SIGBUS,
        FeatureFlags::THREAD_ID,
        FeatureFlags::MINOR_HUGETLBFS,
        FeatureFlags::MINOR_SHMEM,
        FeatureFlags::EXACT_ADDRESS,
        FeatureFlags::WP_HUGETLBFS_SHMEM,
        FeatureFlags::WP_UNPOPULATED,
        FeatureFlags::POISON,
        FeatureFlags::WP_ASYNC,
        FeatureFlags::MOVE,
    ] {
        let since = f.since().expect("a named feature");
        let (major, minor) = since.split_once('.').expect("major.minor");
        let brought = (major.parse().unwrap(), minor.parse().unwrap());
        if running >= brought {
            assert!(probed.contains(f), "{f:?} missing from {probed:?}");
        } else {
            assert!(
                !probed.contains(f),
                "{f:?} (Linux {since}) reported by Linux {running:?}"
            );
        }
    }
    let want = FeatureFlags::THREAD_ID | FeatureFlags::EXACT_ADDRESS | FeatureFlags::EVENT_FORK;
    let uffd = UffdBuilder::new().require_features(want).create().unwrap();
    assert_eq!(uffd.features(), want, "features() is what was enabled");
    assert_eq!(uffd.supported_features(), probed);
    // Requesting features is cumulative.
    let uffd = UffdBuilder::new()
        .require_features(FeatureFlags::THREAD_ID)
        .require_features(FeatureFlags::SIGBUS)
        .create()
        .unwrap();
    assert_eq!(
        uffd.features(),
        FeatureFlags::THREAD_ID | FeatureFlags::SIGBUS
    );
}

#[test]
fn unsupported_feature_is_reported_and_leaks_nothing() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require_all(&[
        test_kit::privilege::Need::Syscall,
        test_kit::privilege::Need::Device,
    ]) {
        return;
    }
    let before = count_fds();
    let bogus = FeatureFlags::from_bits_retain(1 << 40);
    for method in [CreationMethod::Syscall, CreationMethod::Device] {
        let e = UffdBuilder::new()
            .creation_method(method)
            .require_features(bogus | FeatureFlags::THREAD_ID)
            .create()
            .unwrap_err();
        match &e {
            Error::UnsupportedFeatures { missing, supported } => {
                assert_eq!(*missing, bogus);
                assert!(supported.contains(FeatureFlags::THREAD_ID));
            }
            other => panic!("expected UnsupportedFeatures, got {other:?}"),
        }
        assert_eq!(e.operation(), Some(Operation::Api));
        assert!(e.to_string().contains("UFFDIO_API"), "{e}");
    }
    assert_eq!(count_fds(), before);
}

#[test]
fn require_ioctls() {
    // First: the privilege probes open descriptors of their own.
    let _g = serial();
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let before = count_fds();
    // The API ioctls are always there.
    let uffd = UffdBuilder::new()
        .require_ioctls(IoctlFlags::REGISTER | IoctlFlags::UNREGISTER | IoctlFlags::API)
        .create()
        .unwrap();
    drop(uffd);
    // Range ioctls this kernel can provide are accepted at creation and checked at register;
    // those its features cannot provide (MOVE before 6.8, POISON before 6.6) are refused at
    // creation.
    let supported = UffdBuilder::probe_features().unwrap();
    let mut want = IoctlFlags::COPY;
    for (ioctl, feature) in [
        (IoctlFlags::MOVE, FeatureFlags::MOVE),
        (IoctlFlags::POISON, FeatureFlags::POISON),
    ] {
        if supported.contains(feature) {
            want |= ioctl;
            continue;
        }
        let e = UffdBuilder::new()
            .require_ioctls(IoctlFlags::COPY | ioctl)
            .create()
            .unwrap_err();
        match &e {
            Error::UnsupportedIoctls {
                op: Operation::Api,
                missing,
                ..
            } => assert_eq!(*missing, ioctl, "{e}"),
            other => panic!("expected UnsupportedIoctls for {ioctl:?}, got {other:?}"),
        }
        let since = feature.since().unwrap();
        test_kit::report::unsupported(&format!("UFFDIO_{}", kernel::name(feature)), since, &e);
    }
    let uffd = UffdBuilder::new()
        .non_blocking(true)
        .require_ioctls(want)
        .create()
        .unwrap();
    let mem = Map::anon(ps());
    let got = uffd.register(mem.ptr(), ps()).unwrap();
    assert!(got.contains(want));
    drop(uffd);
    // An ioctl bit no kernel has: refused at creation, no fd leaked.
    let bogus = IoctlFlags::from_bits_retain(1 << 30);
    let e = UffdBuilder::new()
        .require_ioctls(bogus)
        .create()
        .unwrap_err();
    match e {
        Error::UnsupportedIoctls {
            op: Operation::Api,
            missing,
            ..
        } => assert_eq!(missing, bogus),
        other => panic!("expected UnsupportedIoctls, got {other:?}"),
    }
    // WRITE_PROTECT is not returned for a MISSING-only range: refused at register. The range
    // stays registered (it may have been before): another uffd cannot take it until it is
    // unregistered.
    let uffd = UffdBuilder::new()
        .require_ioctls(IoctlFlags::WRITE_PROTECT)
        .create()
        .unwrap();
    let e = uffd.register(mem.ptr(), ps()).unwrap_err();
    match e {
        Error::UnsupportedIoctls {
            op: Operation::Register,
            missing,
            available,
        } => {
            assert_eq!(missing, IoctlFlags::WRITE_PROTECT);
            assert!(available.contains(IoctlFlags::COPY));
        }
        other => panic!("expected UnsupportedIoctls, got {other:?}"),
    }
    let other = UffdBuilder::new().create().unwrap();
    let busy = other.register(mem.ptr(), ps()).unwrap_err();
    assert_eq!(busy.errno(), Some(userfaultfd::Errno::EBUSY), "{busy:?}");
    uffd.unregister(mem.ptr(), ps()).unwrap();
    other.register(mem.ptr(), ps()).unwrap();
    drop((uffd, other));
    assert_eq!(count_fds(), before);
}

/// Runs `f` in a forked child after dropping to uid/gid 65534 (no capabilities); returns the
/// child's exit code. `f` must not allocate or take locks (another thread may have held them
/// at fork time): the library's create paths used here only make system calls.
fn as_nobody(f: fn() -> i32) -> i32 {
    // SAFETY: the child runs only raw system calls and the allocation-free `f`, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw system calls in the child (the libc wrappers would signal other
        // threads, which do not exist here), then _exit.
        unsafe {
            if libc::syscall(libc::SYS_setgid, 65534) != 0
                || libc::syscall(libc::SYS_setuid, 65534) != 0
            {
                libc::_exit(100);
            }
            libc::_exit(f());
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

#[test]
fn unprivileged_errors_are_distinct_and_user_mode_only_works() {
    let _g = serial();
    let unprivileged = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    if unprivileged {
        test_kit::report::skip(
            "vm.unprivileged_userfaultfd=1 lets anyone use the syscall, so nothing is refused \
             (sysctl -w vm.unprivileged_userfaultfd=0)",
        );
        return;
    }
    if !test_kit::privilege::is_root()
        && test_kit::privilege::missing(test_kit::privilege::Need::Device).is_none()
    {
        test_kit::report::skip(
            "this user may open /dev/userfaultfd, so its refusal cannot be checked: run as root \
             (the test drops to nobody) or as a user without access to the device",
        );
        return;
    }
    let code = as_nobody(|| {
        // The device is 0600 root: EACCES, its own error.
        match UffdBuilder::new()
            .creation_method(CreationMethod::Device)
            .create()
        {
            Err(Error::DeviceAccess {
                op: Operation::OpenDevice,
                errno: Errno::EACCES,
            }) => {}
            _ => return 1,
        }
        // The syscall for kernel-mode faults: EPERM, PermissionDenied.
        match UffdBuilder::new()
            .creation_method(CreationMethod::Syscall)
            .create()
        {
            Err(Error::PermissionDenied {
                op: Operation::Syscall,
            }) => {}
            _ => return 2,
        }
        // Auto falls back from the inaccessible device to the syscall.
        match UffdBuilder::new().create() {
            Err(Error::PermissionDenied {
                op: Operation::Syscall,
            }) => {}
            _ => return 3,
        }
        // User-mode-only needs no privilege.
        match UffdBuilder::new().user_mode_only(true).create() {
            Ok(u) => drop(u),
            Err(_) => return 4,
        }
        0
    });
    match code {
        0 => {}
        100 => test_kit::report::skip("could not drop to nobody to be refused: run as root"),
        c => panic!("unprivileged check {c} failed (see the closure in this test)"),
    }
    // The EPERM message explains what to do.
    let e = Error::PermissionDenied {
        op: Operation::Syscall,
    };
    assert!(e.to_string().contains("unprivileged_userfaultfd"), "{e}");
    assert!(e.to_string().contains("user_mode_only"), "{e}");
    assert_eq!(e.errno(), Some(Errno::EPERM));
}
