//! Bounds-checked volatile access through `MemoryMapping` and `VolatileSlice`:
//! objects, slices that copy all or nothing, views of the same memfd, and
//! aligned accesses that do not tear under a concurrent writer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::pattern;
use mmap::{DataInit, Error, MemoryMapping, SharedMemory, VolatileSlice};

fn ps() -> usize {
    mmap::pagesize()
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
struct Record {
    id: u64,
    flags: u32,
    len: u16,
    kind: [u8; 2],
}
// SAFETY: repr(C) with fields 8 + 4 + 2 + 2 = 16 bytes at offsets 0, 8, 12, 14:
// no padding, and any bytes are valid integers.
unsafe impl DataInit for Record {}

#[test]
fn objects_of_every_primitive_type() {
    let m = MemoryMapping::new(ps()).unwrap();
    macro_rules! round_trip {
        ($($t:ty = $v:expr),*) => {$(
            for off in [0, 1, 3, 8, ps() - std::mem::size_of::<$t>()] {
                m.write_obj::<$t>($v, off).unwrap();
                assert_eq!(m.read_obj::<$t>(off).unwrap(), $v, "{} at {off}", stringify!($t));
            }
        )*};
    }
    round_trip!(
        u8 = 0xa5,
        u16 = 0xbeef,
        u32 = 0xdead_beef,
        u64 = 0x0123_4567_89ab_cdef,
        u128 = u128::MAX - 7,
        usize = usize::MAX / 3,
        i8 = -5,
        i16 = -300,
        i32 = i32::MIN,
        i64 = -1,
        i128 = i128::MIN + 1,
        isize = -42,
        f32 = 1.5,
        f64 = -2.25,
        [u32; 5] = [1, 2, 3, 4, 5],
        [[u8; 3]; 2] = [[1, 2, 3], [4, 5, 6]]
    );
    let r = Record {
        id: 7,
        flags: 0x10,
        len: 3,
        kind: *b"ok",
    };
    m.write_obj(r, 100).unwrap();
    assert_eq!(m.read_obj::<Record>(100).unwrap(), r);
    assert_eq!(m.read_obj::<u64>(100).unwrap(), 7);
    assert_eq!(m.read_obj::<[u8; 2]>(114).unwrap(), *b"ok");
}

#[test]
fn objects_out_of_bounds_are_refused() {
    let m = MemoryMapping::new(ps()).unwrap();
    assert_eq!(
        m.read_obj::<u32>(ps() - 3).unwrap_err(),
        Error::InvalidRange {
            op: "read_obj",
            offset: ps() - 3,
            count: 4,
            size: ps()
        }
    );
    assert_eq!(
        m.write_obj(0u16, usize::MAX).unwrap_err(),
        Error::InvalidRange {
            op: "write_obj",
            offset: usize::MAX,
            count: 2,
            size: ps()
        }
    );
    assert_eq!(
        m.read_obj_volatile::<u64>(4).unwrap_err(),
        Error::UnalignedOffset {
            op: "read_obj_volatile",
            offset: 4,
            align: 8
        }
    );
    assert!(matches!(
        m.write_obj_volatile(0u32, ps()),
        Err(Error::InvalidRange {
            op: "write_obj_volatile",
            ..
        })
    ));
}

#[test]
fn slices_copy_all_or_nothing() {
    let m = MemoryMapping::new(2 * ps()).unwrap();
    let data = pattern(2 * ps(), 11);
    m.write_slice(&data, 0).unwrap();

    let mut buf = vec![0xee; 100];
    assert_eq!(
        m.read_slice(&mut buf, 2 * ps() - 99).unwrap_err(),
        Error::InvalidRange {
            op: "read_slice",
            offset: 2 * ps() - 99,
            count: 100,
            size: 2 * ps()
        }
    );
    assert!(
        buf.iter().all(|&b| b == 0xee),
        "a failed read_slice copied something"
    );
    assert_eq!(
        m.write_slice(&buf, 2 * ps() - 99).unwrap_err(),
        Error::InvalidRange {
            op: "write_slice",
            offset: 2 * ps() - 99,
            count: 100,
            size: 2 * ps()
        }
    );
    let mut all = vec![0u8; 2 * ps()];
    m.read_slice(&mut all, 0).unwrap();
    assert_eq!(all, data, "a failed write_slice changed the mapping");

    m.read_slice(&mut buf, 2 * ps() - 100).unwrap();
    assert_eq!(buf, &data[2 * ps() - 100..]);
    // Empty slices at the very end are fine.
    m.read_slice(&mut [], 2 * ps()).unwrap();
    m.write_slice(&[], 2 * ps()).unwrap();
}

#[test]
fn bulk_copies_at_unaligned_offsets() {
    let len = 1 << 20;
    let m = MemoryMapping::new_private(len + 64).unwrap();
    let data = pattern(len, 13);
    for off in [0, 1, 7, 8, 13] {
        let s = m.get_slice(off, len).unwrap();
        assert_eq!(s.copy_from(&data), len);
        let mut back = vec![0u8; len];
        assert_eq!(s.copy_to(&mut back), len);
        assert!(back == data, "mismatch at offset {off}");
        let mut odd = vec![0u8; len - 3];
        s.sub_slice(3, len - 3).unwrap().copy_to(&mut odd);
        assert!(odd == data[3..]);
    }
}

#[test]
fn volatile_slices_between_views() {
    let shm = SharedMemory::new("vs", 2 * ps() as u64).unwrap();
    let a = MemoryMapping::from_fd(&shm, 2 * ps()).unwrap();
    let b = MemoryMapping::from_fd(&shm, 2 * ps()).unwrap();
    let private = MemoryMapping::new_private(ps()).unwrap();
    private.write_slice(b"from private memory", 0).unwrap();

    let src = private.get_slice(0, 19).unwrap();
    assert_eq!(src.copy_to_volatile(a.get_slice(ps(), 19).unwrap()), 19);
    let mut buf = [0u8; 19];
    b.get_slice(ps(), 19).unwrap().copy_to(&mut buf);
    assert_eq!(&buf, b"from private memory");

    b.get_slice(ps(), ps()).unwrap().write_bytes(0x77);
    assert_eq!(a.read_obj::<[u8; 4]>(2 * ps() - 4).unwrap(), [0x77; 4]);

    let view: VolatileSlice<'_> = a.get_slice(0, 2 * ps()).unwrap();
    assert_eq!(view.len(), 2 * ps());
    assert_eq!(view.as_ptr(), a.as_ptr());
    assert_eq!(view.read_obj::<u8>(ps()).unwrap(), 0x77);
    view.write_obj(0x1122_u16, 3).unwrap();
    assert_eq!(b.read_obj::<u16>(3).unwrap(), 0x1122);
    assert!(matches!(
        view.sub_slice(ps(), ps() + 1),
        Err(Error::InvalidRange {
            op: "sub_slice",
            ..
        })
    ));
}

#[test]
fn reads_see_changes_made_underneath() {
    let shm = SharedMemory::new("underneath", ps() as u64).unwrap();
    let reader = MemoryMapping::from_fd(&shm, ps()).unwrap();
    let writer = MemoryMapping::from_fd(&shm, ps()).unwrap();
    for i in 0..1000u32 {
        writer.write_obj(i, 64).unwrap();
        assert_eq!(reader.read_obj::<u32>(64).unwrap(), i);
    }
}

#[test]
fn aligned_words_do_not_tear() {
    let m = MemoryMapping::new(ps()).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                m.write_obj(v, 8).unwrap();
                v = !v;
            }
        });
        for _ in 0..200_000 {
            let x = m.read_obj::<u64>(8).unwrap();
            assert!(x == 0 || x == u64::MAX, "torn read {x:#x}");
            let y = m.read_obj_volatile::<u64>(8).unwrap();
            assert!(y == 0 || y == u64::MAX, "torn read {y:#x}");
        }
        stop.store(true, Ordering::Relaxed);
    });
}
