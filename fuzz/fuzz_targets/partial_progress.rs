//! The partial-progress rule, `userfaultfd::range_outcome`, checked two ways:
//!
//! - **Against the kernel's behaviour, not against a copy of the rule.** The input picks what
//!   the kernel did (copied every byte; copied `k` bytes, `0 < k < len`, then stopped; or failed
//!   with errno `e` before any byte), and the target builds the return value and output field
//!   the kernel reports for that (`fs/userfaultfd.c`, as `ioctl_userfaultfd(2)` documents it:
//!   success is 0 with the field = `len`; partial progress is `EAGAIN` with the field = `k`; a
//!   failure is `-e` with the field = `-e`, where `EAGAIN` without progress means the mappings
//!   are changing). `range_outcome` must recover what happened.
//! - **On arbitrary operations, errnos, fields, lengths and addresses**: it never panics, and
//!   every error keeps the invariants callers rely on (`bytes_done` in `(0, len)` only for
//!   partial progress, the `errno`/`operation` accessors, the message, the conversion to
//!   `std::io::Error`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use userfaultfd::{range_outcome, AddrRange, Errno, Error, Operation};

const OPS: [Operation; 5] = [
    Operation::Copy,
    Operation::Zeropage,
    Operation::Continue,
    Operation::Poison,
    Operation::Move,
];

/// What the kernel did with a request of `len` bytes.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// Every byte done.
    Done,
    /// `k` bytes done, `0 < k < len`, then it stopped.
    Partial(usize),
    /// Nothing done: it failed with this errno.
    Failed(Errno),
}

impl Kernel {
    /// The ioctl's result and the output field, as the kernel sets them.
    fn report(self, len: usize) -> (Option<Errno>, i64) {
        match self {
            Kernel::Done => (None, len as i64),
            Kernel::Partial(k) => (Some(Errno::EAGAIN), k as i64),
            Kernel::Failed(e) => (Some(e), -(e as i64)),
        }
    }
}

/// Checks that `range_outcome` tells the caller what the kernel did.
fn check_kernel(op: Operation, kernel: Kernel, len: usize, dst: usize) {
    let (errno, field) = kernel.report(len);
    let got = range_outcome(op, errno, field, len, dst);
    match (kernel, &got) {
        (Kernel::Done, Ok(n)) => assert_eq!(*n, len),
        (
            Kernel::Partial(k),
            Err(Error::PartialProgress {
                op: o,
                dst: d,
                done,
                len: l,
                ..
            }),
        ) => assert!(*o == op && *d == dst && *done == k && *l == len, "{got:?}"),
        (Kernel::Failed(Errno::EEXIST), Err(Error::AlreadyMapped { op: o, addr })) => {
            assert!(*o == op && *addr == dst, "{got:?}")
        }
        (Kernel::Failed(Errno::EAGAIN), Err(Error::MappingChanging { op: o })) => {
            assert_eq!(*o, op)
        }
        (Kernel::Failed(e), Err(Error::Os { op: o, errno, range })) => {
            assert!(*o == op && errno == &e && e != Errno::EEXIST && e != Errno::EAGAIN);
            assert_eq!(*range, Some(AddrRange::new(dst, len)), "the error names the range");
        }
        _ => panic!("the kernel did {kernel:?} (len {len}); range_outcome says {got:?}"),
    }
}

fn take<const N: usize>(d: &mut &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = d.len().min(N);
    b[..n].copy_from_slice(&d[..n]);
    *d = &d[n..];
    b
}

fuzz_target!(|data: &[u8]| {
    let mut d = data;
    let op = OPS[take::<1>(&mut d)[0] as usize % OPS.len()];
    let raw_errno = i32::from_ne_bytes(take::<4>(&mut d)) & 0xfff;
    let field = i64::from_ne_bytes(take::<8>(&mut d));
    let len = usize::from_ne_bytes(take::<8>(&mut d));
    let dst = usize::from_ne_bytes(take::<8>(&mut d));

    // What the kernel did, from the same bytes: lengths are page multiples the kernel accepts
    // (below 2^47), a partial count lies strictly inside, a failure has a real errno.
    let klen = (len % (1 << 35) + 1) * 4096;
    let kernel = match field.rem_euclid(3) {
        0 => Kernel::Done,
        1 if klen > 4096 => Kernel::Partial(((dst % (klen / 4096 - 1)) + 1) * 4096),
        _ => Kernel::Failed(Errno::from_raw(raw_errno.max(1))),
    };
    if !matches!(kernel, Kernel::Failed(Errno::UnknownErrno)) {
        check_kernel(op, kernel, klen, dst);
    }

    // Arbitrary input: no panic, and the invariants of whatever comes out.
    let ok = raw_errno == 0;
    let errno = Errno::from_raw(raw_errno);
    let got = range_outcome(op, (!ok).then_some(errno), field, len, dst);
    match got {
        Ok(n) => assert_eq!(n, len),
        Err(e) => {
            // Invariants every outcome keeps.
            assert_eq!(e.operation(), Some(op));
            let done = e.bytes_done();
            match &e {
                Error::PartialProgress {
                    done: d2,
                    len: l2,
                    errno: e2,
                    ..
                } => {
                    assert!(done > 0 && done < len && done == *d2 && *l2 == len);
                    assert_eq!(e.errno(), Some(*e2));
                }
                Error::AlreadyMapped { addr, .. } => {
                    assert_eq!(*addr, dst);
                    assert_eq!(done, 0);
                    assert_eq!(e.errno(), Some(Errno::EEXIST));
                }
                Error::MappingChanging { .. } => {
                    assert_eq!(done, 0, "a negative field is never a byte count");
                    assert_eq!(e.errno(), Some(Errno::EAGAIN));
                }
                Error::Os { errno: e2, .. } => {
                    assert_eq!(done, 0);
                    assert_eq!(e.errno(), Some(*e2));
                }
                other => panic!("the rule produced {other:?}"),
            }
            let msg = e.to_string();
            assert!(msg.contains(op.name()), "{msg}");
            let errno_before = e.errno();
            let io: std::io::Error = e.into();
            if let Some(en) = errno_before {
                if en as i32 != 0 {
                    assert_eq!(
                        io.kind(),
                        std::io::Error::from_raw_os_error(en as i32).kind()
                    );
                }
            }
            let _ = io.to_string();
        }
    }
});
