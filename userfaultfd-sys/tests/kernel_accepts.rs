//! Every ioctl request number of the crate is accepted by the running kernel.
//!
//! Each ioctl is issued on a real userfaultfd (or `/dev/userfaultfd`, or `/proc/self/pagemap`)
//! with deliberately bad arguments, and the errno must be exactly the one the kernel documents
//! (`ioctl_userfaultfd(2)`, `UFFDIO_*(2const)`, `PAGEMAP_SCAN(2const)`, `fs/userfaultfd.c`).
//!
//! A wrong request number does not give `ENOTTY` here: the userfaultfd, the device and the
//! pagemap file all answer an unknown command with `EINVAL` (see `unknown_commands_get_einval`).
//! So `EINVAL` alone proves little, and every ioctl also gets a check whose answer only a
//! recognised command can produce: `EFAULT` for a NULL argument (the kernel tried to copy the
//! struct the number encodes), `ENOENT` for an unregistered range, or success.
//!
//! Needs permission to create a userfaultfd: root, `CAP_SYS_PTRACE`, or
//! `vm.unprivileged_userfaultfd=1` (and read-write access to `/dev/userfaultfd` for the device
//! test). Linux 6.8 or later (`UFFDIO_MOVE`).

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

use libc::{c_int, EFAULT, EINVAL, ENOENT};
use test_kit::mapping::Map;
use userfaultfd_sys::*;

/// Whether the running kernel is at least `major.minor` (`uname(2)`). Before the version that
/// brings an ioctl the kernel answers it with `EINVAL` (userfaultfd) or `ENOTTY` (pagemap).
fn linux_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: utsname is plain old data, filled by uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    assert_eq!(unsafe { libc::uname(&mut u) }, 0);
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (major, minor)
}

/// On a kernel before `since`, asserts that `got` is what it answers for the unknown ioctl
/// `name` (`want`), records the test as asserted-unsupported, and returns true: return then.
fn lacks_ioctl(name: &str, since: (u32, u32), got: Result<c_int, c_int>, want: c_int) -> bool {
    if linux_at_least(since.0, since.1) {
        return false;
    }
    assert_eq!(
        got,
        Err(want),
        "{name} before Linux {}.{}",
        since.0,
        since.1
    );
    test_kit::report::unsupported(
        name,
        &format!("{}.{}", since.0, since.1),
        format!("errno {want} for the unknown ioctl"),
    );
    true
}

/// Opens a userfaultfd with `userfaultfd(2)`; the handshake is not done yet.
fn raw_uffd() -> OwnedFd {
    // SAFETY: `userfaultfd(2)` takes one flags argument and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(
        fd >= 0,
        "userfaultfd(2) failed: {} (needs root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)",
        io::Error::last_os_error()
    );
    let fd = c_int::try_from(fd).expect("file descriptors fit in an int");
    // SAFETY: the syscall just returned this descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A userfaultfd after a successful `UFFDIO_API` with no features requested.
fn ready_uffd() -> OwnedFd {
    let fd = raw_uffd();
    let mut api = uffdio_api {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: `api` is a live `uffdio_api`, the type `UFFDIO_API` encodes, and holds no address.
    unsafe { ioctl(&fd, UFFDIO_API, &mut api) }.expect("UFFDIO_API");
    fd
}

/// The argument size a request number encodes (asm-generic and the 13-bit families alike keep
/// it at bit 16).
fn encoded_size(request: u32) -> usize {
    let bits = ioctl::IoctlEncoding::NATIVE.size_bits();
    ((request >> 16) & ((1 << bits) - 1)) as usize
}

/// `ioctl(fd, request, arg)`, returning the result or the errno.
///
/// # Safety
///
/// `T` must be the struct `request` encodes (its size is also asserted), and every address
/// inside `*arg` that the kernel may write to or remap must lie in memory this test owns and that
/// no Rust reference points into (a [`Mapping`]), or be one the kernel rejects before use.
unsafe fn ioctl<T>(fd: &impl AsRawFd, request: u32, arg: &mut T) -> Result<c_int, c_int> {
    assert_eq!(
        encoded_size(request),
        size_of::<T>(),
        "argument type of {request:#x}"
    );
    let arg: *mut T = arg;
    // SAFETY: `arg` points to a live, exclusively borrowed `T` of the size the request encodes,
    // so the kernel's copy in and out stays inside it; the caller vouches for the addresses the
    // struct holds.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg.cast::<c_void>()) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, request, NULL)`: the kernel must fail to copy the argument.
fn ioctl_null(fd: &impl AsRawFd, request: u32) -> Result<c_int, c_int> {
    // SAFETY: a NULL argument is never dereferenced in user space; the kernel's copy from (or to)
    // address 0 fails with EFAULT because page 0 is never mapped (`vm.mmap_min_addr`).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, ptr::null_mut::<c_void>()) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `ioctl(fd, request, value)` for an `_IO` request whose argument is passed by value.
fn ioctl_value(fd: &impl AsRawFd, request: u32, value: libc::c_ulong) -> Result<c_int, c_int> {
    assert_eq!(
        encoded_size(request),
        0,
        "{request:#x} is not an _IO request"
    );
    // SAFETY: an `_IO` request transfers nothing through memory: `value` is an integer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, value) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn errno() -> c_int {
    io::Error::last_os_error()
        .raw_os_error()
        .expect("set by the failed call")
}

fn page_size() -> u64 {
    // SAFETY: `sysconf` reads a configuration value and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).expect("a positive page size")
}

/// Anonymous private read-write pages, unmapped on drop. Rust never references them: they are
/// only read and written by the kernel and through raw pointers, so ioctls may remap them.
struct Mapping(Map);

impl Mapping {
    fn new(pages: u64) -> Mapping {
        Mapping(Map::anon(
            usize::try_from(pages * page_size()).expect("fits"),
        ))
    }

    /// Address of page `i`.
    fn page(&self, i: u64) -> u64 {
        self.0.addr() as u64 + i * page_size()
    }

    fn range(&self, first: u64, pages: u64) -> uffdio_range {
        uffdio_range {
            start: self.page(first),
            len: pages * page_size(),
        }
    }

    /// Writes `byte` to the first byte of page `i`, populating it.
    fn touch(&self, i: u64, byte: u8) {
        let p = self.page(i) as *mut u8;
        // SAFETY: `p` lies inside this read-write mapping, which only the tests touch, and only
        // through raw pointers.
        unsafe { p.write_volatile(byte) }
    }

    /// Reads the first byte of page `i`.
    fn peek(&self, i: u64) -> u8 {
        let p = self.page(i) as *const u8;
        // SAFETY: as in `touch`; callers only read pages that are present or not registered.
        unsafe { p.read_volatile() }
    }
}

/// Registers `pages` pages of `map` on `fd` in MISSING mode and returns the `ioctls` answer.
fn register_missing(fd: &OwnedFd, map: &Mapping, pages: u64) -> u64 {
    let mut reg = uffdio_register {
        range: map.range(0, pages),
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: `reg` is the `uffdio_register` the request encodes; its range is a `Mapping`.
    unsafe { ioctl(fd, UFFDIO_REGISTER, &mut reg) }.expect("UFFDIO_REGISTER");
    reg.ioctls
}

const SENTINEL: i64 = 0x5a5a;

#[test]
fn unknown_commands_get_einval() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    // Why EINVAL alone would not prove a number is accepted.
    let fd = ready_uffd();
    let unknown = ioctl::IoctlEncoding::NATIVE.ioc(
        ioctl::IoctlDir::ReadWrite,
        UFFDIO,
        0x3e,
        size_of::<uffdio_api>(),
    );
    assert_eq!(ioctl_null(&fd, unknown), Err(EINVAL));
    // The right number with the wrong size is another command to the kernel.
    let wrong_size = ioctl::IoctlEncoding::NATIVE.ioc(
        ioctl::IoctlDir::ReadWrite,
        UFFDIO,
        _UFFDIO_COPY,
        size_of::<uffdio_copy>() - 8,
    );
    assert_eq!(ioctl_null(&fd, wrong_size), Err(EINVAL));
}

#[test]
fn api() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = raw_uffd();
    let handshake = |api: u64, features: u64| {
        let mut arg = uffdio_api {
            api,
            features,
            ioctls: 7,
        };
        // SAFETY: `arg` is the `uffdio_api` the request encodes and holds no address, so the
        // kernel reads and writes only its 24 bytes.
        let r = unsafe { ioctl(&fd, UFFDIO_API, &mut arg) };
        (r, arg)
    };
    // Before the handshake every other ioctl is refused.
    let map = Mapping::new(1);
    let mut reg = uffdio_register {
        range: map.range(0, 1),
        mode: 1,
        ioctls: 0,
    };
    // SAFETY: `reg` is the `uffdio_register` the request encodes; its range is a `Mapping`
    // (and the kernel refuses the call before looking at it).
    let early = unsafe { ioctl(&fd, UFFDIO_REGISTER, &mut reg) };
    assert_eq!(early, Err(EINVAL));

    // NULL: the kernel cannot copy the `uffdio_api` in.
    assert_eq!(ioctl_null(&fd, UFFDIO_API), Err(EFAULT));
    // A wrong `api` value: the kernel zeroes the whole struct on the way out, and the fd stays
    // uninitialised.
    let zeroed = uffdio_api::default();
    assert_eq!(handshake(0xAB, 0), (Err(EINVAL), zeroed));
    // A feature bit no kernel defines.
    assert_eq!(handshake(UFFD_API, 1 << 63), (Err(EINVAL), zeroed));
    // The real handshake succeeds and reports the three always-available ioctls.
    let (r, answer) = handshake(UFFD_API, 0);
    assert_eq!(r, Ok(0));
    assert_eq!(answer.ioctls, UFFD_API_IOCTLS);
    if linux_at_least(6, 8) {
        assert_ne!(
            answer.features & UFFD_FEATURE_MOVE,
            0,
            "Linux 6.8+ reports MOVE"
        );
    } else {
        let late = UFFD_FEATURE_WP_UNPOPULATED
            | UFFD_FEATURE_POISON
            | UFFD_FEATURE_WP_ASYNC
            | UFFD_FEATURE_MOVE;
        let want = [(6, 4), (6, 6), (6, 7), (6, 8)]
            .iter()
            .zip([
                UFFD_FEATURE_WP_UNPOPULATED,
                UFFD_FEATURE_POISON,
                UFFD_FEATURE_WP_ASYNC,
                UFFD_FEATURE_MOVE,
            ])
            .filter(|((a, b), _)| linux_at_least(*a, *b))
            .fold(0, |acc, (_, f)| acc | f);
        assert_eq!(answer.features & late, want, "features of Linux 6.4 to 6.8");
    }
    // A second handshake on the same fd.
    assert_eq!(handshake(UFFD_API, 0).0, Err(EINVAL));
    // The copy-in still comes first.
    assert_eq!(ioctl_null(&fd, UFFDIO_API), Err(EFAULT));
}

#[test]
fn register_and_unregister() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let map = Mapping::new(4);
    let page = page_size();
    let register = |start: u64, len: u64, mode: u64| {
        let mut arg = uffdio_register {
            range: uffdio_range { start, len },
            mode,
            ioctls: 0,
        };
        // SAFETY: `arg` is the `uffdio_register` the request encodes; its range lies in a
        // `Mapping`, whose pages registering does not change.
        let r = unsafe { ioctl(&fd, UFFDIO_REGISTER, &mut arg) };
        (r, arg.ioctls)
    };
    let unregister = |start: u64, len: u64| {
        let mut arg = uffdio_range { start, len };
        // SAFETY: `arg` is the `uffdio_range` the request encodes; it lies in a `Mapping`.
        unsafe { ioctl(&fd, UFFDIO_UNREGISTER, &mut arg) }
    };
    let (start, missing) = (map.page(0), UFFDIO_REGISTER_MODE_MISSING);

    assert_eq!(ioctl_null(&fd, UFFDIO_REGISTER), Err(EFAULT));
    assert_eq!(register(start, 4 * page, 0).0, Err(EINVAL), "mode 0");
    assert_eq!(
        register(start, 4 * page, 1 << 10).0,
        Err(EINVAL),
        "unknown mode bit"
    );
    assert_eq!(register(start, 0, missing).0, Err(EINVAL), "len 0");
    assert_eq!(
        register(start + 8, page, missing).0,
        Err(EINVAL),
        "unaligned start"
    );
    assert_eq!(
        register(start, page + 8, missing).0,
        Err(EINVAL),
        "len not page multiple"
    );
    // A good registration of anonymous memory grants every range ioctl except WRITEPROTECT (no
    // MODE_WP) and CONTINUE (no MODE_MINOR).
    let mut not_granted = 1 << _UFFDIO_WRITEPROTECT | 1 << _UFFDIO_CONTINUE;
    if !linux_at_least(6, 8) {
        not_granted |= 1 << _UFFDIO_MOVE;
    }
    if !linux_at_least(6, 6) {
        not_granted |= 1 << _UFFDIO_POISON;
    }
    let granted = UFFD_API_RANGE_IOCTLS & !not_granted;
    assert_eq!(register(start, 4 * page, missing), (Ok(0), granted));

    assert_eq!(ioctl_null(&fd, UFFDIO_UNREGISTER), Err(EFAULT));
    assert_eq!(unregister(start, 0), Err(EINVAL), "len 0");
    assert_eq!(unregister(start + 8, page), Err(EINVAL), "unaligned start");
    assert_eq!(unregister(start, 4 * page), Ok(0));
}

#[test]
fn wake() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let map = Mapping::new(2);
    let wake = |start: u64, len: u64| {
        let mut arg = uffdio_range { start, len };
        // SAFETY: `arg` is the `uffdio_range` the request encodes; waking reads it and touches
        // no memory.
        unsafe { ioctl(&fd, UFFDIO_WAKE, &mut arg) }
    };
    assert_eq!(ioctl_null(&fd, UFFDIO_WAKE), Err(EFAULT));
    assert_eq!(wake(map.page(0), 0), Err(EINVAL), "len 0");
    assert_eq!(
        wake(map.page(0) + 1, page_size()),
        Err(EINVAL),
        "unaligned start"
    );
    // Waking a range nobody waits on succeeds.
    assert_eq!(wake(map.page(0), 2 * page_size()), Ok(0));
}

#[test]
fn copy() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let src = Mapping::new(1);
    src.touch(0, 0x77);
    let unregistered = Mapping::new(1);
    let dst = Mapping::new(2);
    register_missing(&fd, &dst, 2);
    let page = page_size();
    let copy = |dst: u64, src: u64, len: u64, mode: u64| {
        let mut arg = uffdio_copy {
            dst,
            src,
            len,
            mode,
            copy: SENTINEL,
        };
        // SAFETY: `arg` is the `uffdio_copy` the request encodes; `dst` and `src` are addresses
        // in `Mapping`s, which nothing in Rust references, or ones the kernel rejects.
        let r = unsafe { ioctl(&fd, UFFDIO_COPY, &mut arg) };
        (r, arg.copy)
    };

    assert_eq!(ioctl_null(&fd, UFFDIO_COPY), Err(EFAULT));
    // Early validation fails without touching the output field.
    assert_eq!(
        copy(dst.page(0), src.page(0), 0, 0),
        (Err(EINVAL), SENTINEL),
        "len 0"
    );
    assert_eq!(
        copy(dst.page(0) + 8, src.page(0), page, 0),
        (Err(EINVAL), SENTINEL),
        "unaligned"
    );
    assert_eq!(
        copy(dst.page(0), src.page(0), page, 1 << 10),
        (Err(EINVAL), SENTINEL),
        "mode"
    );
    // A valid but unregistered destination: ENOENT, also in the field.
    let enoent = -i64::from(ENOENT);
    assert_eq!(
        copy(unregistered.page(0), src.page(0), page, 0),
        (Err(ENOENT), enoent)
    );
    // A registered destination and a good source: done, then EEXIST on the same page.
    assert_eq!(
        copy(dst.page(0), src.page(0), page, 0),
        (Ok(0), page as i64)
    );
    assert_eq!(dst.peek(0), 0x77);
    let eexist = -i64::from(libc::EEXIST);
    assert_eq!(
        copy(dst.page(0), src.page(0), page, 0),
        (Err(libc::EEXIST), eexist)
    );
}

#[test]
fn zeropage() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let unregistered = Mapping::new(1);
    let dst = Mapping::new(1);
    register_missing(&fd, &dst, 1);
    let zeropage = |range: uffdio_range, mode: u64| {
        let mut arg = uffdio_zeropage {
            range,
            mode,
            zeropage: SENTINEL,
        };
        // SAFETY: `arg` is the `uffdio_zeropage` the request encodes; its range lies in a
        // `Mapping`, which nothing in Rust references.
        let r = unsafe { ioctl(&fd, UFFDIO_ZEROPAGE, &mut arg) };
        (r, arg.zeropage)
    };

    assert_eq!(ioctl_null(&fd, UFFDIO_ZEROPAGE), Err(EFAULT));
    assert_eq!(
        zeropage(dst.range(0, 0), 0),
        (Err(EINVAL), SENTINEL),
        "len 0"
    );
    assert_eq!(
        zeropage(dst.range(0, 1), 1 << 10),
        (Err(EINVAL), SENTINEL),
        "mode"
    );
    let enoent = -i64::from(ENOENT);
    assert_eq!(zeropage(unregistered.range(0, 1), 0), (Err(ENOENT), enoent));
    assert_eq!(zeropage(dst.range(0, 1), 0), (Ok(0), page_size() as i64));
    assert_eq!(dst.peek(0), 0);
}

#[test]
fn move_() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let src = Mapping::new(2);
    src.touch(0, 0x42); // page 1 stays a hole
    let unregistered = Mapping::new(1);
    let dst = Mapping::new(2);
    register_missing(&fd, &dst, 2);
    let page = page_size();
    let mv = |dst: u64, src: u64, len: u64, mode: u64| {
        let mut arg = uffdio_move {
            dst,
            src,
            len,
            mode,
            move_: SENTINEL,
        };
        // SAFETY: `arg` is the `uffdio_move` the request encodes; `dst` and `src` are addresses
        // in `Mapping`s, which nothing in Rust references, so moving pages between them is fine.
        let r = unsafe { ioctl(&fd, UFFDIO_MOVE, &mut arg) };
        (r, arg.move_)
    };

    if lacks_ioctl("UFFDIO_MOVE", (6, 8), ioctl_null(&fd, UFFDIO_MOVE), EINVAL) {
        return;
    }
    assert_eq!(ioctl_null(&fd, UFFDIO_MOVE), Err(EFAULT));
    assert_eq!(
        mv(dst.page(0), src.page(0), 0, 0),
        (Err(EINVAL), SENTINEL),
        "len 0"
    );
    assert_eq!(
        mv(dst.page(0), src.page(0) + 8, page, 0),
        (Err(EINVAL), SENTINEL),
        "unaligned"
    );
    // A destination not registered with this uffd.
    assert_eq!(
        mv(unregistered.page(0), src.page(0), page, 0).0,
        Err(EINVAL)
    );
    // A hole in the source without ALLOW_SRC_HOLES.
    assert_eq!(
        mv(dst.page(1), src.page(1), page, 0),
        (Err(ENOENT), -i64::from(ENOENT))
    );
    // A real move: the page changes places and the source becomes a hole.
    assert_eq!(mv(dst.page(0), src.page(0), page, 0), (Ok(0), page as i64));
    assert_eq!(dst.peek(0), 0x42);
    assert_eq!(src.peek(0), 0);
}

#[test]
fn writeprotect() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let unregistered = Mapping::new(1);
    unregistered.touch(0, 1);
    let wp = |range: uffdio_range, mode: u64| {
        let mut arg = uffdio_writeprotect { range, mode };
        // SAFETY: `arg` is the `uffdio_writeprotect` the request encodes; its range lies in a
        // `Mapping`, which nothing in Rust references.
        unsafe { ioctl(&fd, UFFDIO_WRITEPROTECT, &mut arg) }
    };
    assert_eq!(ioctl_null(&fd, UFFDIO_WRITEPROTECT), Err(EFAULT));
    assert_eq!(
        wp(unregistered.range(0, 0), UFFDIO_WRITEPROTECT_MODE_WP),
        Err(EINVAL),
        "len 0"
    );
    let both = UFFDIO_WRITEPROTECT_MODE_WP | UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
    assert_eq!(
        wp(unregistered.range(0, 1), both),
        Err(EINVAL),
        "WP|DONTWAKE"
    );
    assert_eq!(
        wp(unregistered.range(0, 1), UFFDIO_WRITEPROTECT_MODE_WP),
        Err(ENOENT)
    );
}

#[test]
fn continue_() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let unregistered = Mapping::new(1);
    let cont = |range: uffdio_range, mode: u64| {
        let mut arg = uffdio_continue {
            range,
            mode,
            mapped: SENTINEL,
        };
        // SAFETY: `arg` is the `uffdio_continue` the request encodes; its range lies in a
        // `Mapping`, which nothing in Rust references.
        let r = unsafe { ioctl(&fd, UFFDIO_CONTINUE, &mut arg) };
        (r, arg.mapped)
    };
    assert_eq!(ioctl_null(&fd, UFFDIO_CONTINUE), Err(EFAULT));
    assert_eq!(
        cont(unregistered.range(0, 0), 0),
        (Err(EINVAL), SENTINEL),
        "len 0"
    );
    assert_eq!(
        cont(unregistered.range(0, 1), 1 << 10),
        (Err(EINVAL), SENTINEL),
        "mode"
    );
    assert_eq!(
        cont(unregistered.range(0, 1), 0),
        (Err(ENOENT), -i64::from(ENOENT))
    );
}

#[test]
fn poison() {
    if !test_kit::privilege::require(test_kit::privilege::Need::Syscall) {
        return;
    }
    let fd = ready_uffd();
    let unregistered = Mapping::new(1);
    let dst = Mapping::new(1);
    register_missing(&fd, &dst, 1);
    let poison = |range: uffdio_range, mode: u64| {
        let mut arg = uffdio_poison {
            range,
            mode,
            updated: SENTINEL,
        };
        // SAFETY: `arg` is the `uffdio_poison` the request encodes; its range lies in a
        // `Mapping`, which nothing in Rust references (and which this test never reads after
        // poisoning it).
        let r = unsafe { ioctl(&fd, UFFDIO_POISON, &mut arg) };
        (r, arg.updated)
    };
    if lacks_ioctl(
        "UFFDIO_POISON",
        (6, 6),
        ioctl_null(&fd, UFFDIO_POISON),
        EINVAL,
    ) {
        return;
    }
    assert_eq!(ioctl_null(&fd, UFFDIO_POISON), Err(EFAULT));
    assert_eq!(poison(dst.range(0, 0), 0), (Err(EINVAL), SENTINEL), "len 0");
    assert_eq!(
        poison(dst.range(0, 1), 1 << 10),
        (Err(EINVAL), SENTINEL),
        "mode"
    );
    assert_eq!(
        poison(unregistered.range(0, 1), 0),
        (Err(ENOENT), -i64::from(ENOENT))
    );
    assert_eq!(poison(dst.range(0, 1), 0), (Ok(0), page_size() as i64));
    // POISON refuses to overwrite any PTE, its own marker included.
    let eexist = -i64::from(libc::EEXIST);
    assert_eq!(poison(dst.range(0, 1), 0), (Err(libc::EEXIST), eexist));
}

#[test]
fn userfaultfd_ioc_new() {
    if std::path::Path::new("/dev/userfaultfd").exists()
        && !test_kit::privilege::require(test_kit::privilege::Need::Device)
    {
        return;
    }
    let dev = match File::options()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("SKIP userfaultfd_ioc_new: no /dev/userfaultfd (Linux < 6.1)");
            return;
        }
        Err(e) => panic!("open /dev/userfaultfd: {e} (needs root or an ACL on the device)"),
    };
    // Flags other than O_CLOEXEC, O_NONBLOCK and UFFD_USER_MODE_ONLY.
    assert_eq!(ioctl_value(&dev, USERFAULTFD_IOC_NEW, 0x100), Err(EINVAL));
    // Any other command on the device.
    assert_eq!(
        ioctl_value(&dev, ioctl::io(USERFAULTFD_IOC, 0x01), 0),
        Err(EINVAL)
    );
    // Good flags: a new userfaultfd, on which the handshake works.
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_ulong;
    let fd = ioctl_value(&dev, USERFAULTFD_IOC_NEW, flags).expect("USERFAULTFD_IOC_NEW");
    assert!(fd >= 0);
    // SAFETY: the ioctl just returned this descriptor; nothing else owns it.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
    drop(dev);
    let mut api = uffdio_api {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: `api` is the `uffdio_api` the request encodes and holds no address.
    assert_eq!(unsafe { ioctl(&uffd, UFFDIO_API, &mut api) }, Ok(0));
    assert_eq!(api.ioctls, UFFD_API_IOCTLS);
}

#[test]
fn pagemap_scan() {
    let pagemap = File::open("/proc/self/pagemap").expect("open /proc/self/pagemap");
    let map = Mapping::new(4);
    map.touch(0, 1);
    map.touch(1, 1); // pages 2 and 3 stay unpopulated
    let mut regions = [page_region::default(); 4];
    let scan = |size: u64, regions: &mut [page_region; 4]| {
        let mut arg = pm_scan_arg {
            size,
            start: map.page(0),
            end: map.page(4),
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: PAGE_IS_PRESENT,
            return_mask: PAGE_IS_PRESENT,
            ..pm_scan_arg::default()
        };
        // SAFETY: `arg` is the `pm_scan_arg` the request encodes; `vec` points to `regions`,
        // exclusively borrowed for this call, and `vec_len` is its length, so the kernel writes
        // only inside it; `start..end` is a `Mapping`, which the scan only reads.
        unsafe { ioctl(&pagemap, PAGEMAP_SCAN, &mut arg) }
    };
    let enotty = libc::ENOTTY;
    if lacks_ioctl(
        "PAGEMAP_SCAN",
        (6, 7),
        ioctl_null(&pagemap, PAGEMAP_SCAN),
        enotty,
    ) {
        return;
    }
    assert_eq!(ioctl_null(&pagemap, PAGEMAP_SCAN), Err(EFAULT));
    let size = size_of::<pm_scan_arg>() as u64;
    assert_eq!(scan(0, &mut regions), Err(EINVAL), "size 0");
    assert_eq!(scan(size - 8, &mut regions), Err(EINVAL), "size 88");
    assert_eq!(scan(size + 8, &mut regions), Err(EINVAL), "size 104");
    // The right size: one region, the two present pages.
    assert_eq!(scan(size, &mut regions), Ok(1));
    assert_eq!(
        regions[0],
        page_region {
            start: map.page(0),
            end: map.page(2),
            categories: PAGE_IS_PRESENT
        }
    );
}
