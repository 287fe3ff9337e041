//! A file whose mmap(2) fails the way a hugetlbfs file's does when the huge
//! page pool is empty, without taking pages from the pool other tests share.
//!
//! The file lives on a hugetlbfs mount with `size=0`: every mapping that
//! reserves huge pages fails with `ENOMEM` in hugetlbfs's mmap handler, which
//! the kernel calls after clearing the range of a `MAP_FIXED` mapping, as it
//! does for an empty pool. The mount is made in a private mount namespace of a
//! short-lived helper thread, so no other thread or process sees it, and it
//! goes away when the file is closed. Needs `CAP_SYS_ADMIN`.
//!
//! Shared by the unit tests (`#[path]` in `src/lib.rs`) and the tests in
//! `tests/`, so it uses std and libc only.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;

/// Opens a file on a new `pagesize=2M,size=0` hugetlbfs mount, or says why it
/// cannot (not root, no 2 MiB hugetlbfs, no mount namespaces).
pub fn zero_size_hugetlbfs_file() -> Result<File, String> {
    std::thread::spawn(|| {
        let fail = |what: &str| format!("{what}: {}", io::Error::last_os_error());
        // SAFETY: unshare(2) gives this helper thread (only) its own mount
        // namespace and fs context (CLONE_NEWNS implies CLONE_FS); the thread
        // ends below, and with it the namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(fail("unshare(CLONE_NEWNS)"));
        }
        let root = CString::new("/").unwrap();
        // Keep the mount below from propagating to the parent namespace.
        // SAFETY: `root` is a valid C string; the other pointers may be null
        // for MS_PRIVATE.
        let ret = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if ret != 0 {
            return Err(fail("mount(MS_PRIVATE)"));
        }
        let dir = std::env::temp_dir();
        let target = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let (src, fstype) = (
            CString::new("none").unwrap(),
            CString::new("hugetlbfs").unwrap(),
        );
        let opts = CString::new("pagesize=2M,size=0").unwrap();
        // SAFETY: all pointers are valid C strings that outlive the call.
        let ret = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if ret != 0 {
            return Err(fail("mount(hugetlbfs, size=0)"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("zero-size-pool"))
            .map_err(|e| format!("open on hugetlbfs: {e}"));
        // SAFETY: `target` is a valid C string; the open file keeps the
        // detached file system alive.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        file
    })
    .join()
    .expect("the helper thread panicked")
}
