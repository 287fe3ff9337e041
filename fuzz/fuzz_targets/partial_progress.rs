//! The partial-progress rule, `userfaultfd::range_outcome`, on arbitrary operations, errnos,
//! output fields (bytes done or `-errno`), lengths and addresses: it never panics, agrees with
//! the rule as documented (re-stated below as a reference model), and every error it returns
//! keeps the invariants callers rely on (`bytes_done` in `(0, len)` only for partial progress,
//! `errno`/`operation` accessors, the message, the conversion to `std::io::Error`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use userfaultfd::{range_outcome, Errno, Error, Operation};

const OPS: [Operation; 5] = [
    Operation::Copy,
    Operation::Zeropage,
    Operation::Continue,
    Operation::Poison,
    Operation::Move,
];

/// The rule as documented on `userfaultfd::Error` and in `ioctl_userfaultfd(2)`.
fn model(
    op: Operation,
    ret: Result<i32, Errno>,
    field: i64,
    len: usize,
    dst: usize,
) -> Result<usize, Error> {
    match ret {
        Ok(_) => Ok(len),
        Err(errno) if field > 0 && (field as u64) < len as u64 => Err(Error::PartialProgress {
            op,
            done: field as usize,
            len,
            errno,
        }),
        Err(Errno::EEXIST) => Err(Error::AlreadyMapped { op, addr: dst }),
        Err(Errno::EAGAIN) => Err(Error::MappingChanging { op }),
        Err(errno) => Err(Error::Os { op, errno }),
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
    let ok = raw_errno == 0;
    let field = i64::from_ne_bytes(take::<8>(&mut d));
    let len = usize::from_ne_bytes(take::<8>(&mut d));
    let dst = usize::from_ne_bytes(take::<8>(&mut d));
    let errno = Errno::from_raw(raw_errno);
    let ret = if ok { Ok(0) } else { Err(errno) };
    let got = range_outcome(op, ret.err(), field, len, dst);
    let want = model(op, ret, field, len, dst);
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
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
