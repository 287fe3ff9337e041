//! `Message::from_bytes` on arbitrary 32-byte messages: never panics, agrees with
//! `Message::decode` of the same bytes as a `uffd_msg`, and decodes every field of the five
//! known events from the offsets of `struct uffd_msg` (`event` at 0, the `arg` union at 8; see
//! `userfaultfd(2)`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use userfaultfd::{sys, Error, FaultKind, Message, ReadWrite};

fn word(b: &[u8; 32], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

fn half(b: &[u8; 32], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut b = [0u8; 32];
    let n = data.len().min(32);
    b[..n].copy_from_slice(&data[..n]);
    let m = Message::from_bytes(&b);
    // SAFETY: uffd_msg is 32 bytes of plain integers (packed): every byte pattern is valid.
    let msg: sys::uffd_msg = unsafe { std::mem::transmute(b) };
    let again = Message::decode(&msg);
    match (&m, &again) {
        (Ok(x), Ok(y)) => assert_eq!(x, y),
        (
            Err(Error::UnrecognizedEvent { event: e1, raw: r1 }),
            Err(Error::UnrecognizedEvent { event: e2, raw: r2 }),
        ) => {
            assert_eq!((e1, r1), (e2, r2));
        }
        _ => panic!("from_bytes {m:?} vs decode {again:?}"),
    }
    match m {
        Ok(Message::Pagefault {
            kind,
            rw,
            addr,
            thread_id,
            flags,
        }) => {
            assert_eq!(b[0], sys::UFFD_EVENT_PAGEFAULT);
            let f = word(&b, 8);
            assert_eq!(flags, f);
            assert_eq!(addr as u64, word(&b, 16));
            assert_eq!(thread_id as u32, half(&b, 24));
            let want_kind = if f & sys::UFFD_PAGEFAULT_FLAG_WP != 0 {
                FaultKind::WriteProtected
            } else if f & sys::UFFD_PAGEFAULT_FLAG_MINOR != 0 {
                FaultKind::Minor
            } else {
                FaultKind::Missing
            };
            assert_eq!(kind, want_kind);
            let want_rw = if f & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0 {
                ReadWrite::Write
            } else {
                ReadWrite::Read
            };
            assert_eq!(rw, want_rw);
        }
        Ok(Message::Fork { fd }) => {
            assert_eq!(b[0], sys::UFFD_EVENT_FORK);
            assert_eq!(fd as u32, half(&b, 8));
        }
        Ok(Message::Remap { from, to, len }) => {
            assert_eq!(b[0], sys::UFFD_EVENT_REMAP);
            assert_eq!(
                (from as u64, to as u64, len as u64),
                (word(&b, 8), word(&b, 16), word(&b, 24))
            );
        }
        Ok(Message::Remove { start, end }) => {
            assert_eq!(b[0], sys::UFFD_EVENT_REMOVE);
            assert_eq!((start as u64, end as u64), (word(&b, 8), word(&b, 16)));
        }
        Ok(Message::Unmap { start, end }) => {
            assert_eq!(b[0], sys::UFFD_EVENT_UNMAP);
            assert_eq!((start as u64, end as u64), (word(&b, 8), word(&b, 16)));
        }
        Ok(other) => panic!("unknown message kind {other:?}"),
        Err(Error::UnrecognizedEvent { event, raw }) => {
            assert_eq!(event, b[0]);
            assert_eq!(raw, b);
            assert!(!(0x12..=0x16).contains(&event));
            // The error's own accessors agree.
            let e = Error::UnrecognizedEvent { event, raw };
            assert_eq!(e.errno(), None);
            let _ = e.to_string();
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
});
