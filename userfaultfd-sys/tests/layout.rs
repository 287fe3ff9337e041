//! Layout and constant tests for the generated bindings, written against the kernel's documented
//! uAPI (`include/uapi/linux/userfaultfd.h` and `linux/fs.h` of Linux 6.12), not against bindgen's
//! own output: size, alignment, every field's offset and type, and every constant's value.
//!
//! bindgen also emits compile-time layout assertions inside `src/bindings.rs`; those only prove
//! the Rust types match what clang computed from the headers. These tests pin the ABI itself, so
//! a regeneration that changes a layout or a value fails here, with the field's name.

use core::mem::{align_of, offset_of, size_of};
use userfaultfd_sys::*;

/// Asserts the size, the alignment and the offset and type of every field of a struct.
///
/// The exhaustive pattern in `_all_fields_listed` makes a field added to (or renamed in) the
/// generated struct a compile error here, so "every field" cannot silently become "most fields".
macro_rules! assert_struct_layout {
    ($t:ident, size = $size:expr, align = $align:expr, { $($field:ident: $ty:ty = $off:expr),+ $(,)? }) => {{
        #[allow(dead_code, clippy::unnecessary_operation)]
        fn _all_fields_listed(v: $t) {
            let $t { $($field: _),+ } = v;
            // Reading a field by value (also from a packed struct) checks its declared type.
            $( let _: $ty = v.$field; )+
        }
        assert_eq!(size_of::<$t>(), $size, concat!("size of ", stringify!($t)));
        assert_eq!(align_of::<$t>(), $align, concat!("alignment of ", stringify!($t)));
        $(
            assert_eq!(
                offset_of!($t, $field),
                $off,
                concat!("offset of ", stringify!($t), "::", stringify!($field))
            );
            assert_eq!(
                size_of::<$ty>(),
                {
                    fn field_size<F>(_: fn(&$t) -> F) -> usize { size_of::<F>() }
                    // Copying the field out (never referencing it) also works for packed structs.
                    field_size(|v: &$t| v.$field)
                },
                concat!("size of ", stringify!($t), "::", stringify!($field))
            );
        )+
    }};
}

#[test]
fn uffd_msg_header() {
    // §1.7: 32 bytes, `__packed`, so alignment 1; event and three reserved fields, then the union.
    assert_struct_layout!(uffd_msg, size = 32, align = 1, {
        event: u8 = 0,
        reserved1: u8 = 1,
        reserved2: u16 = 2,
        reserved3: u32 = 4,
        arg: uffd_msg_arg = 8,
    });
}

#[test]
fn uffd_msg_arg_union() {
    // A union: every member starts at 0; the largest members (pagefault, remap, reserved) are
    // 24 bytes; alignment 8 inside (the enclosing `uffd_msg` is packed, so this alignment is
    // never relied on there).
    assert_eq!(size_of::<uffd_msg_arg>(), 24);
    assert_eq!(align_of::<uffd_msg_arg>(), 8);
    assert_eq!(offset_of!(uffd_msg_arg, pagefault), 0);
    assert_eq!(offset_of!(uffd_msg_arg, fork), 0);
    assert_eq!(offset_of!(uffd_msg_arg, remap), 0);
    assert_eq!(offset_of!(uffd_msg_arg, remove), 0);
    assert_eq!(offset_of!(uffd_msg_arg, reserved), 0);
    // The members' types, by a field access that only type-checks with the right ones.
    #[allow(dead_code)]
    fn _member_types(v: uffd_msg_arg) {
        // SAFETY: never called; only type-checked. (Every member is plain integers, so any read
        // would be sound anyway.)
        unsafe {
            let _: uffd_msg_pagefault = v.pagefault;
            let _: uffd_msg_fork = v.fork;
            let _: uffd_msg_remap = v.remap;
            let _: uffd_msg_remove = v.remove;
            let _: uffd_msg_reserved = v.reserved;
        }
    }
}

#[test]
fn uffd_msg_pagefault_member() {
    assert_struct_layout!(uffd_msg_pagefault, size = 24, align = 8, {
        flags: u64 = 0,
        address: u64 = 8,
        feat: uffd_msg_pagefault_feat = 16,
    });
    // `feat` is a union of one `__u32 ptid`; the 4 bytes after it are padding of `pagefault`.
    assert_eq!(size_of::<uffd_msg_pagefault_feat>(), 4);
    assert_eq!(align_of::<uffd_msg_pagefault_feat>(), 4);
    assert_eq!(offset_of!(uffd_msg_pagefault_feat, ptid), 0);
    #[allow(dead_code)]
    fn _ptid_type(v: uffd_msg_pagefault_feat) {
        // SAFETY: never called; only type-checked (and `ptid` is the union's only member).
        let _: u32 = unsafe { v.ptid };
    }
}

#[test]
fn uffd_msg_other_members() {
    assert_struct_layout!(uffd_msg_fork, size = 4, align = 4, { ufd: u32 = 0 });
    assert_struct_layout!(uffd_msg_remap, size = 24, align = 8, {
        from: u64 = 0,
        to: u64 = 8,
        len: u64 = 16,
    });
    assert_struct_layout!(uffd_msg_remove, size = 16, align = 8, {
        start: u64 = 0,
        end: u64 = 8,
    });
    assert_struct_layout!(uffd_msg_reserved, size = 24, align = 8, {
        reserved1: u64 = 0,
        reserved2: u64 = 8,
        reserved3: u64 = 16,
    });
}

#[test]
fn uffd_msg_absolute_offsets() {
    // The offsets §1.7 documents, from the start of the 32-byte message.
    let arg = offset_of!(uffd_msg, arg);
    let pf = arg + offset_of!(uffd_msg_arg, pagefault);
    assert_eq!(pf + offset_of!(uffd_msg_pagefault, flags), 8);
    assert_eq!(pf + offset_of!(uffd_msg_pagefault, address), 16);
    let feat = pf + offset_of!(uffd_msg_pagefault, feat);
    assert_eq!(feat + offset_of!(uffd_msg_pagefault_feat, ptid), 24);
    assert_eq!(
        arg + offset_of!(uffd_msg_arg, fork) + offset_of!(uffd_msg_fork, ufd),
        8
    );
    let remap = arg + offset_of!(uffd_msg_arg, remap);
    assert_eq!(remap + offset_of!(uffd_msg_remap, from), 8);
    assert_eq!(remap + offset_of!(uffd_msg_remap, to), 16);
    assert_eq!(remap + offset_of!(uffd_msg_remap, len), 24);
    let remove = arg + offset_of!(uffd_msg_arg, remove);
    assert_eq!(remove + offset_of!(uffd_msg_remove, start), 8);
    assert_eq!(remove + offset_of!(uffd_msg_remove, end), 16);
    let reserved = arg + offset_of!(uffd_msg_arg, reserved);
    assert_eq!(reserved + offset_of!(uffd_msg_reserved, reserved1), 8);
    assert_eq!(reserved + offset_of!(uffd_msg_reserved, reserved2), 16);
    assert_eq!(reserved + offset_of!(uffd_msg_reserved, reserved3), 24);
}

/// Reads every union view of a message whose bytes are all distinct, so each field must come
/// from exactly the bytes §1.7 names (endian-neutral: expectations use native byte order).
#[test]
fn uffd_msg_views_read_the_documented_bytes() {
    let mut raw = [0u8; 32];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = 0x40 + i as u8;
    }
    raw[0] = UFFD_EVENT_PAGEFAULT;
    let u64_at = |off: usize| u64::from_ne_bytes(raw[off..off + 8].try_into().unwrap());
    let u32_at = |off: usize| u32::from_ne_bytes(raw[off..off + 4].try_into().unwrap());
    let u16_at = |off: usize| u16::from_ne_bytes(raw[off..off + 2].try_into().unwrap());
    // SAFETY: `uffd_msg` is 32 bytes (asserted above), has alignment 1 (packed) and consists only
    // of integers, for which every bit pattern is valid; `read_unaligned` copies it out of `raw`.
    let msg: uffd_msg = unsafe { core::ptr::read_unaligned(raw.as_ptr().cast()) };
    // SAFETY: every member of the union is plain integers and all 24 bytes are initialised, so
    // each view is a valid value; the fields are copied out by value (the struct is packed).
    let (pf, ptid, fork, remap, remove, reserved) = unsafe {
        (
            msg.arg.pagefault,
            msg.arg.pagefault.feat.ptid,
            msg.arg.fork,
            msg.arg.remap,
            msg.arg.remove,
            msg.arg.reserved,
        )
    };
    let (event, r1, r2, r3) = (msg.event, msg.reserved1, msg.reserved2, msg.reserved3);
    assert_eq!(event, 0x12);
    assert_eq!((r1, r2, r3), (raw[1], u16_at(2), u32_at(4)));
    assert_eq!(
        (pf.flags, pf.address, ptid),
        (u64_at(8), u64_at(16), u32_at(24))
    );
    assert_eq!(fork.ufd, u32_at(8));
    assert_eq!(
        (remap.from, remap.to, remap.len),
        (u64_at(8), u64_at(16), u64_at(24))
    );
    assert_eq!((remove.start, remove.end), (u64_at(8), u64_at(16)));
    assert_eq!(
        (reserved.reserved1, reserved.reserved2, reserved.reserved3),
        (u64_at(8), u64_at(16), u64_at(24))
    );
}

#[test]
fn uffdio_structs() {
    assert_struct_layout!(uffdio_api, size = 24, align = 8, {
        api: u64 = 0,
        features: u64 = 8,
        ioctls: u64 = 16,
    });
    assert_struct_layout!(uffdio_range, size = 16, align = 8, {
        start: u64 = 0,
        len: u64 = 8,
    });
    assert_struct_layout!(uffdio_register, size = 32, align = 8, {
        range: uffdio_range = 0,
        mode: u64 = 16,
        ioctls: u64 = 24,
    });
    // The output fields (`copy`, `zeropage`, `mapped`, `updated`, `move`) are `__s64`: bytes done
    // or a negated errno.
    assert_struct_layout!(uffdio_copy, size = 40, align = 8, {
        dst: u64 = 0,
        src: u64 = 8,
        len: u64 = 16,
        mode: u64 = 24,
        copy: i64 = 32,
    });
    assert_struct_layout!(uffdio_zeropage, size = 32, align = 8, {
        range: uffdio_range = 0,
        mode: u64 = 16,
        zeropage: i64 = 24,
    });
    assert_struct_layout!(uffdio_writeprotect, size = 24, align = 8, {
        range: uffdio_range = 0,
        mode: u64 = 16,
    });
    assert_struct_layout!(uffdio_continue, size = 32, align = 8, {
        range: uffdio_range = 0,
        mode: u64 = 16,
        mapped: i64 = 24,
    });
    assert_struct_layout!(uffdio_poison, size = 32, align = 8, {
        range: uffdio_range = 0,
        mode: u64 = 16,
        updated: i64 = 24,
    });
    // C's `move` is a Rust keyword; bindgen names the field `move_`.
    assert_struct_layout!(uffdio_move, size = 40, align = 8, {
        dst: u64 = 0,
        src: u64 = 8,
        len: u64 = 16,
        mode: u64 = 24,
        move_: i64 = 32,
    });
}

#[test]
fn pagemap_scan_structs() {
    // §1.8: twelve `__u64`; the kernel refuses any `size` other than 96.
    assert_struct_layout!(pm_scan_arg, size = 96, align = 8, {
        size: u64 = 0,
        flags: u64 = 8,
        start: u64 = 16,
        end: u64 = 24,
        walk_end: u64 = 32,
        vec: u64 = 40,
        vec_len: u64 = 48,
        max_pages: u64 = 56,
        category_inverted: u64 = 64,
        category_mask: u64 = 72,
        category_anyof_mask: u64 = 80,
        return_mask: u64 = 88,
    });
    assert_struct_layout!(page_region, size = 24, align = 8, {
        start: u64 = 0,
        end: u64 = 8,
        categories: u64 = 16,
    });
}

#[test]
fn api_and_ioctl_type_constants() {
    assert_eq!(UFFD_API, 0xAA);
    let _: u64 = UFFD_API; // compared with `uffdio_api.api`
    assert_eq!(UFFD_USER_MODE_ONLY, 1);
    let _: core::ffi::c_int = UFFD_USER_MODE_ONLY; // a `userfaultfd(2)` flag, like O_CLOEXEC
    assert_eq!(USERFAULTFD_IOC, 0xAA);
    assert_eq!(UFFDIO, 0xAA);
    assert_eq!(ioctl::PROCFS_IOCTL_MAGIC, u32::from(b'f'));
}

#[test]
fn ioctl_bit_numbers() {
    let nrs: [(u32, u32); 10] = [
        (_UFFDIO_REGISTER, 0x00),
        (_UFFDIO_UNREGISTER, 0x01),
        (_UFFDIO_WAKE, 0x02),
        (_UFFDIO_COPY, 0x03),
        (_UFFDIO_ZEROPAGE, 0x04),
        (_UFFDIO_MOVE, 0x05),
        (_UFFDIO_WRITEPROTECT, 0x06),
        (_UFFDIO_CONTINUE, 0x07),
        (_UFFDIO_POISON, 0x08),
        (_UFFDIO_API, 0x3F),
    ];
    for (i, (have, want)) in nrs.iter().enumerate() {
        assert_eq!(have, want, "row {i}");
    }
}

#[test]
fn ioctl_masks() {
    let bit = |nr: u32| 1u64 << nr;
    assert_eq!(UFFD_API_IOCTLS, 0x8000_0000_0000_0003);
    assert_eq!(
        UFFD_API_IOCTLS,
        bit(_UFFDIO_REGISTER) | bit(_UFFDIO_UNREGISTER) | bit(_UFFDIO_API)
    );
    // WAKE, COPY, ZEROPAGE, MOVE, WRITEPROTECT, CONTINUE, POISON.
    assert_eq!(UFFD_API_RANGE_IOCTLS, 0x1fc);
    assert_eq!(
        UFFD_API_RANGE_IOCTLS,
        bit(_UFFDIO_WAKE)
            | bit(_UFFDIO_COPY)
            | bit(_UFFDIO_ZEROPAGE)
            | bit(_UFFDIO_MOVE)
            | bit(_UFFDIO_WRITEPROTECT)
            | bit(_UFFDIO_CONTINUE)
            | bit(_UFFDIO_POISON)
    );
    // hugetlb: no ZEROPAGE, no MOVE.
    assert_eq!(UFFD_API_RANGE_IOCTLS_BASIC, 0x1cc);
    assert_eq!(
        UFFD_API_RANGE_IOCTLS_BASIC,
        bit(_UFFDIO_WAKE)
            | bit(_UFFDIO_COPY)
            | bit(_UFFDIO_WRITEPROTECT)
            | bit(_UFFDIO_CONTINUE)
            | bit(_UFFDIO_POISON)
    );
}

#[test]
fn events_and_pagefault_flags() {
    // `u8`, the type of `uffd_msg.event`, so they can be matched against it directly.
    let events: [(u8, u8); 5] = [
        (UFFD_EVENT_PAGEFAULT, 0x12),
        (UFFD_EVENT_FORK, 0x13),
        (UFFD_EVENT_REMAP, 0x14),
        (UFFD_EVENT_REMOVE, 0x15),
        (UFFD_EVENT_UNMAP, 0x16),
    ];
    for (i, (have, want)) in events.iter().enumerate() {
        assert_eq!(have, want, "event row {i}");
    }
    let flags: [(u64, u64); 3] = [
        (UFFD_PAGEFAULT_FLAG_WRITE, 1),
        (UFFD_PAGEFAULT_FLAG_WP, 2),
        (UFFD_PAGEFAULT_FLAG_MINOR, 4),
    ];
    for (i, (have, want)) in flags.iter().enumerate() {
        assert_eq!(have, want, "pagefault flag row {i}");
    }
}

#[test]
fn the_17_feature_bits() {
    // (constant, bit number) in the order of the header (`linux/userfaultfd.h`).
    let features: [(u64, u32, &str); 17] = [
        (UFFD_FEATURE_PAGEFAULT_FLAG_WP, 0, "PAGEFAULT_FLAG_WP"),
        (UFFD_FEATURE_EVENT_FORK, 1, "EVENT_FORK"),
        (UFFD_FEATURE_EVENT_REMAP, 2, "EVENT_REMAP"),
        (UFFD_FEATURE_EVENT_REMOVE, 3, "EVENT_REMOVE"),
        (UFFD_FEATURE_MISSING_HUGETLBFS, 4, "MISSING_HUGETLBFS"),
        (UFFD_FEATURE_MISSING_SHMEM, 5, "MISSING_SHMEM"),
        (UFFD_FEATURE_EVENT_UNMAP, 6, "EVENT_UNMAP"),
        (UFFD_FEATURE_SIGBUS, 7, "SIGBUS"),
        (UFFD_FEATURE_THREAD_ID, 8, "THREAD_ID"),
        (UFFD_FEATURE_MINOR_HUGETLBFS, 9, "MINOR_HUGETLBFS"),
        (UFFD_FEATURE_MINOR_SHMEM, 10, "MINOR_SHMEM"),
        (UFFD_FEATURE_EXACT_ADDRESS, 11, "EXACT_ADDRESS"),
        (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 12, "WP_HUGETLBFS_SHMEM"),
        (UFFD_FEATURE_WP_UNPOPULATED, 13, "WP_UNPOPULATED"),
        (UFFD_FEATURE_POISON, 14, "POISON"),
        (UFFD_FEATURE_WP_ASYNC, 15, "WP_ASYNC"),
        (UFFD_FEATURE_MOVE, 16, "MOVE"),
    ];
    let mut all = 0u64;
    for (value, bit, name) in features {
        assert_eq!(value, 1u64 << bit, "UFFD_FEATURE_{name}");
        assert_eq!(
            all & value,
            0,
            "UFFD_FEATURE_{name} overlaps an earlier bit"
        );
        all |= value;
    }
    // UFFD_API_FEATURES is exactly the 17 bits.
    assert_eq!(UFFD_API_FEATURES, all);
    assert_eq!(UFFD_API_FEATURES, 0x1_ffff);
}

#[test]
fn register_modes() {
    assert_eq!(UFFDIO_REGISTER_MODE_MISSING, 1);
    assert_eq!(UFFDIO_REGISTER_MODE_WP, 2);
    assert_eq!(UFFDIO_REGISTER_MODE_MINOR, 4);
    assert_eq!(
        UFFD_API_REGISTER_MODES,
        UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR
    );
    assert_eq!(UFFD_API_REGISTER_MODES, 7);
}

#[test]
fn range_ioctl_modes() {
    let modes: [(u64, u64, &str); 10] = [
        (UFFDIO_COPY_MODE_DONTWAKE, 1, "COPY_MODE_DONTWAKE"),
        (UFFDIO_COPY_MODE_WP, 2, "COPY_MODE_WP"),
        (UFFDIO_ZEROPAGE_MODE_DONTWAKE, 1, "ZEROPAGE_MODE_DONTWAKE"),
        (UFFDIO_WRITEPROTECT_MODE_WP, 1, "WRITEPROTECT_MODE_WP"),
        (
            UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
            2,
            "WRITEPROTECT_MODE_DONTWAKE",
        ),
        (UFFDIO_CONTINUE_MODE_DONTWAKE, 1, "CONTINUE_MODE_DONTWAKE"),
        (UFFDIO_CONTINUE_MODE_WP, 2, "CONTINUE_MODE_WP"),
        (UFFDIO_POISON_MODE_DONTWAKE, 1, "POISON_MODE_DONTWAKE"),
        (UFFDIO_MOVE_MODE_DONTWAKE, 1, "MOVE_MODE_DONTWAKE"),
        (
            UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
            2,
            "MOVE_MODE_ALLOW_SRC_HOLES",
        ),
    ];
    for (have, want, name) in modes {
        assert_eq!(have, want, "UFFDIO_{name}");
    }
}

#[test]
fn pagemap_scan_constants() {
    let categories: [(u64, u32, &str); 8] = [
        (PAGE_IS_WPALLOWED, 0, "WPALLOWED"),
        (PAGE_IS_WRITTEN, 1, "WRITTEN"),
        (PAGE_IS_FILE, 2, "FILE"),
        (PAGE_IS_PRESENT, 3, "PRESENT"),
        (PAGE_IS_SWAPPED, 4, "SWAPPED"),
        (PAGE_IS_PFNZERO, 5, "PFNZERO"),
        (PAGE_IS_HUGE, 6, "HUGE"),
        (PAGE_IS_SOFT_DIRTY, 7, "SOFT_DIRTY"),
    ];
    for (value, bit, name) in categories {
        assert_eq!(value, 1u64 << bit, "PAGE_IS_{name}");
    }
    assert_eq!(PM_SCAN_WP_MATCHING, 1);
    assert_eq!(PM_SCAN_CHECK_WPASYNC, 2);
}
