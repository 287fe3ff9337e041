//! Volatile views of mapped memory.
//!
//! Mapped memory is not ordinary Rust memory: another process, another view of
//! the same memfd, the device behind a file or a userfaultfd handler can
//! change its bytes at any time, and touching it can fault. This module never
//! creates `&[u8]`/`&mut [u8]` into such memory: every access is a volatile
//! load or store through a raw pointer, so the compiler neither caches nor
//! elides it.

use std::marker::PhantomData;
use std::mem::{align_of, size_of, MaybeUninit};
use std::ptr;

use crate::range::check_range;
use crate::{DataInit, Error, Result};

/// Width of the word-sized accesses used for bulk copies.
const WORD: usize = size_of::<u64>();

/// Copies `len` bytes from ordinary memory at `src` to volatile memory at `dst`.
///
/// Stores to `dst` are volatile and, in the middle of the range, 8 bytes wide
/// and 8-byte aligned.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the
/// two ranges must not overlap.
pub(crate) unsafe fn copy_to_volatile(dst: *mut u8, src: *const u8, len: usize) {
    let mut i = 0;
    while i < len && (dst as usize + i) % WORD != 0 {
        // SAFETY: i < len, so both pointers are in bounds by the caller's contract.
        unsafe { ptr::write_volatile(dst.add(i), *src.add(i)) };
        i += 1;
    }
    while len - i >= WORD {
        // SAFETY: i + WORD <= len, so 8 bytes are in bounds on both sides; `dst + i`
        // is 8-aligned (the loop above aligned it); `src` is read unaligned.
        unsafe {
            let word = ptr::read_unaligned(src.add(i).cast::<u64>());
            ptr::write_volatile(dst.add(i).cast::<u64>(), word);
        }
        i += WORD;
    }
    while i < len {
        // SAFETY: i < len, in bounds by the caller's contract.
        unsafe { ptr::write_volatile(dst.add(i), *src.add(i)) };
        i += 1;
    }
}

/// Copies `len` bytes from volatile memory at `src` to ordinary memory at `dst`.
///
/// Loads from `src` are volatile and, in the middle of the range, 8 bytes wide
/// and 8-byte aligned.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the
/// two ranges must not overlap.
pub(crate) unsafe fn copy_from_volatile(dst: *mut u8, src: *const u8, len: usize) {
    let mut i = 0;
    while i < len && (src as usize + i) % WORD != 0 {
        // SAFETY: i < len, in bounds by the caller's contract.
        unsafe { *dst.add(i) = ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    while len - i >= WORD {
        // SAFETY: i + WORD <= len; `src + i` is 8-aligned; `dst` is written unaligned.
        unsafe {
            let word = ptr::read_volatile(src.add(i).cast::<u64>());
            ptr::write_unaligned(dst.add(i).cast::<u64>(), word);
        }
        i += WORD;
    }
    while i < len {
        // SAFETY: i < len, in bounds by the caller's contract.
        unsafe { *dst.add(i) = ptr::read_volatile(src.add(i)) };
        i += 1;
    }
}

/// Copies `len` bytes between two volatile ranges, which may overlap (memmove
/// semantics for overlapping addresses).
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes.
unsafe fn copy_volatile(dst: *mut u8, src: *const u8, len: usize) {
    let (d, s) = (dst as usize, src as usize);
    if d > s && d - s < len {
        // dst overlaps the tail of src: copy backwards, byte by byte.
        for i in (0..len).rev() {
            // SAFETY: i < len, in bounds by the caller's contract.
            unsafe { ptr::write_volatile(dst.add(i), ptr::read_volatile(src.add(i))) };
        }
        return;
    }
    let mut i = 0;
    if (d ^ s) % WORD == 0 && (s < d || s - d >= WORD) {
        // Same alignment and not overlapping within a word: word-sized forward copy.
        while i < len && (s + i) % WORD != 0 {
            // SAFETY: i < len.
            unsafe { ptr::write_volatile(dst.add(i), ptr::read_volatile(src.add(i))) };
            i += 1;
        }
        while len - i >= WORD {
            // SAFETY: i + WORD <= len and both `src + i` and `dst + i` are 8-aligned.
            unsafe {
                let word = ptr::read_volatile(src.add(i).cast::<u64>());
                ptr::write_volatile(dst.add(i).cast::<u64>(), word);
            }
            i += WORD;
        }
    }
    while i < len {
        // SAFETY: i < len.
        unsafe { ptr::write_volatile(dst.add(i), ptr::read_volatile(src.add(i))) };
        i += 1;
    }
}

/// A bounds-checked view of `len` bytes of mapped memory, accessed only with
/// volatile loads and stores.
///
/// Obtained from [`MemoryMapping::get_slice`](crate::MemoryMapping::get_slice);
/// the lifetime ties it to the mapping, so it cannot outlive the `munmap`.
/// It is `Copy`: it is a pointer and a length, not an owner.
///
/// Reads may fault: on a page registered with userfaultfd a read or write
/// blocks until the handler resolves the fault, and on a file mapping past the
/// end of the file it raises `SIGBUS`. The bytes may change between two reads.
///
/// # Example
///
/// ```
/// let m = mmap::MemoryMapping::new(8192)?;
/// let s = m.get_slice(4096, 16)?;
/// s.copy_from(b"hello, volatile!");
/// let mut buf = [0u8; 5];
/// s.sub_slice(7, 5)?.copy_to(&mut buf);
/// assert_eq!(&buf, b"volat");
/// s.write_bytes(0);
/// assert_eq!(m.read_obj::<u64>(4096)?, 0);
/// # Ok::<(), mmap::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct VolatileSlice<'a> {
    ptr: *mut u8,
    len: usize,
    _mapping: PhantomData<&'a ()>,
}

// SAFETY: a `VolatileSlice` is a pointer and a length into mapped memory that the
// borrowed mapping keeps alive for 'a. Such memory is by nature shared with
// agents outside the program (other processes, the kernel, a userfaultfd
// handler), so this type never assumes exclusive access: every access is a
// volatile copy of plain data (`u8` or `DataInit` types, for which any byte
// pattern is valid), never a reference. Using it from several threads therefore
// adds nothing that is not already possible from another process.
unsafe impl Send for VolatileSlice<'_> {}
// SAFETY: see `Send`; `&VolatileSlice` only allows the same volatile copies.
unsafe impl Sync for VolatileSlice<'_> {}

impl std::fmt::Debug for VolatileSlice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolatileSlice")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> VolatileSlice<'a> {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// For the whole lifetime `'a`, `ptr..ptr + len` must stay mapped (so that
    /// volatile loads and stores to it do not touch memory owned by anything
    /// else), and no Rust reference (`&`/`&mut`) may point into it.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> VolatileSlice<'a> {
        VolatileSlice {
            ptr,
            len,
            _mapping: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of the first byte. Dereferencing it is up to the caller (use
    /// volatile accesses).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The `count` bytes at `offset` of this slice.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if `offset + count` overflows or exceeds [`len`](Self::len).
    pub fn sub_slice(&self, offset: usize, count: usize) -> Result<VolatileSlice<'a>> {
        check_range("sub_slice", self.len, offset, count)?;
        // SAFETY: offset + count <= self.len, so the sub-range lies inside this
        // slice, which satisfies `new`'s contract for 'a.
        Ok(unsafe { VolatileSlice::new(self.ptr.add(offset), count) })
    }

    /// Copies `min(self.len(), buf.len())` bytes from the start of this slice
    /// into `buf` and returns that count.
    ///
    /// Loads are volatile, 8 bytes at a time where alignment allows, so this
    /// is the fast path for bulk reads.
    pub fn copy_to(&self, buf: &mut [u8]) -> usize {
        let n = self.len.min(buf.len());
        // SAFETY: n bytes are in bounds of both; `buf` is ordinary memory borrowed
        // mutably, so it cannot overlap the mapping (no references into it exist).
        unsafe { copy_from_volatile(buf.as_mut_ptr(), self.ptr, n) };
        n
    }

    /// Copies `min(self.len(), buf.len())` bytes from `buf` to the start of
    /// this slice and returns that count.
    ///
    /// Stores are volatile, 8 bytes at a time where alignment allows, so this
    /// is the fast path for bulk writes (e.g. filling a page before
    /// `UFFDIO_CONTINUE`).
    pub fn copy_from(&self, buf: &[u8]) -> usize {
        let n = self.len.min(buf.len());
        // SAFETY: n bytes are in bounds of both; `buf` is ordinary memory, so it
        // is not inside the mapping.
        unsafe { copy_to_volatile(self.ptr, buf.as_ptr(), n) };
        n
    }

    /// Copies `min(self.len(), dst.len())` bytes to `dst` and returns that count.
    ///
    /// Overlapping addresses are handled like `memmove`. Where two slices are
    /// different views of the same pages (two mappings of one memfd), the
    /// contents of the aliased bytes afterwards are unspecified.
    pub fn copy_to_volatile(&self, dst: VolatileSlice<'_>) -> usize {
        let n = self.len.min(dst.len);
        // SAFETY: n bytes are in bounds of both slices, which are valid for
        // volatile access by their construction; overlap is handled.
        unsafe { copy_volatile(dst.ptr, self.ptr, n) };
        n
    }

    /// Sets every byte of the slice to `value`.
    pub fn write_bytes(&self, value: u8) {
        let word = u64::from_ne_bytes([value; WORD]);
        let mut i = 0;
        while i < self.len && (self.ptr as usize + i) % WORD != 0 {
            // SAFETY: i < len.
            unsafe { ptr::write_volatile(self.ptr.add(i), value) };
            i += 1;
        }
        while self.len - i >= WORD {
            // SAFETY: i + WORD <= len and `ptr + i` is 8-aligned.
            unsafe { ptr::write_volatile(self.ptr.add(i).cast::<u64>(), word) };
            i += WORD;
        }
        while i < self.len {
            // SAFETY: i < len.
            unsafe { ptr::write_volatile(self.ptr.add(i), value) };
            i += 1;
        }
    }

    /// Reads a `T` at `offset`, at any alignment.
    ///
    /// A naturally aligned `T` of 1, 2, 4 or 8 bytes is read with a single
    /// load, so it cannot tear; anything else is copied in pieces and may
    /// mix old and new bytes if another agent writes concurrently.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if `offset + size_of::<T>()` exceeds the slice.
    pub fn read_obj<T: DataInit>(&self, offset: usize) -> Result<T> {
        self.read_obj_op("read_obj", offset)
    }

    pub(crate) fn read_obj_op<T: DataInit>(&self, op: &'static str, offset: usize) -> Result<T> {
        check_range(op, self.len, offset, size_of::<T>())?;
        // SAFETY: the range check keeps `offset..offset + size_of::<T>()` inside the slice.
        let src = unsafe { self.ptr.add(offset) };
        if is_single_access::<T>(src) {
            // SAFETY: in bounds (checked), aligned for T (checked by
            // `is_single_access`), and any bit pattern is a valid T (`DataInit`).
            return Ok(unsafe { ptr::read_volatile(src.cast::<T>()) });
        }
        let mut val = MaybeUninit::<T>::uninit();
        // SAFETY: `val` is size_of::<T>() writable bytes of ordinary memory; `src`
        // is in bounds; every byte of `val` is written, and any bytes form a valid T.
        unsafe {
            copy_from_volatile(val.as_mut_ptr().cast::<u8>(), src, size_of::<T>());
            Ok(val.assume_init())
        }
    }

    /// Writes `val` at `offset`, at any alignment.
    ///
    /// A naturally aligned `T` of 1, 2, 4 or 8 bytes is written with a single
    /// store; anything else is written in pieces.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if `offset + size_of::<T>()` exceeds the slice.
    pub fn write_obj<T: DataInit>(&self, val: T, offset: usize) -> Result<()> {
        self.write_obj_op("write_obj", val, offset)
    }

    pub(crate) fn write_obj_op<T: DataInit>(
        &self,
        op: &'static str,
        val: T,
        offset: usize,
    ) -> Result<()> {
        check_range(op, self.len, offset, size_of::<T>())?;
        // SAFETY: the range check keeps the object inside the slice.
        let dst = unsafe { self.ptr.add(offset) };
        if is_single_access::<T>(dst) {
            // SAFETY: in bounds and aligned for T (checked).
            unsafe { ptr::write_volatile(dst.cast::<T>(), val) };
        } else {
            // SAFETY: in bounds; `val` is a local, so it does not overlap the mapping.
            unsafe { copy_to_volatile(dst, val.as_bytes().as_ptr(), size_of::<T>()) };
        }
        Ok(())
    }

    /// Reads a `T` at `offset` with one volatile load of type `T`, which must
    /// be naturally aligned.
    ///
    /// For `T` up to the machine word size this is a single instruction, so
    /// a concurrent writer's value is seen whole or not at all.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if the object exceeds the slice;
    /// [`Error::UnalignedOffset`] if its address is not a multiple of `align_of::<T>()`.
    pub fn read_obj_volatile<T: DataInit>(&self, offset: usize) -> Result<T> {
        let src = self.aligned_obj::<T>("read_obj_volatile", offset)?;
        // SAFETY: in bounds and aligned (checked), any bit pattern is a valid T.
        Ok(unsafe { ptr::read_volatile(src) })
    }

    /// Writes `val` at `offset` with one volatile store of type `T`, which must
    /// be naturally aligned.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if the object exceeds the slice;
    /// [`Error::UnalignedOffset`] if its address is not a multiple of `align_of::<T>()`.
    pub fn write_obj_volatile<T: DataInit>(&self, val: T, offset: usize) -> Result<()> {
        let dst = self.aligned_obj::<T>("write_obj_volatile", offset)?;
        // SAFETY: in bounds and aligned (checked).
        unsafe { ptr::write_volatile(dst, val) };
        Ok(())
    }

    fn aligned_obj<T>(&self, op: &'static str, offset: usize) -> Result<*mut T> {
        check_range(op, self.len, offset, size_of::<T>())?;
        // SAFETY: in bounds (checked).
        let p = unsafe { self.ptr.add(offset) };
        if (p as usize) % align_of::<T>() != 0 {
            return Err(Error::UnalignedOffset {
                op,
                offset: offset as u64,
                align: align_of::<T>() as u64,
            });
        }
        Ok(p.cast::<T>())
    }
}

/// Whether a `T` at `p` can be accessed with one naturally aligned load/store.
fn is_single_access<T>(p: *const u8) -> bool {
    matches!(size_of::<T>(), 1 | 2 | 4 | 8) && (p as usize) % align_of::<T>() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap buffer standing in for mapped memory (the volatile copies do not
    /// care where the memory is); the view is built without references into it.
    fn with_buf(len: usize, f: impl FnOnce(VolatileSlice<'_>)) {
        let mut backing = vec![0u64; len.div_ceil(8) + 1];
        let ptr = backing.as_mut_ptr().cast::<u8>();
        // SAFETY: `backing` outlives the call and is only accessed through the view.
        f(unsafe { VolatileSlice::new(ptr, len) });
        drop(backing);
    }

    #[test]
    fn copies_at_every_alignment_and_length() {
        with_buf(64, |s| {
            let src: Vec<u8> = (1..=64).collect();
            for start in 0..9 {
                for len in 0..(64 - start) {
                    s.write_bytes(0);
                    let sub = s.sub_slice(start, len).unwrap();
                    assert_eq!(sub.copy_from(&src[..len]), len);
                    let mut out = vec![0u8; 64];
                    s.copy_to(&mut out);
                    assert!(out[..start].iter().all(|&b| b == 0));
                    assert_eq!(&out[start..start + len], &src[..len]);
                    assert!(out[start + len..].iter().all(|&b| b == 0));
                    let mut back = vec![0u8; len];
                    assert_eq!(sub.copy_to(&mut back), len);
                    assert_eq!(back, &src[..len]);
                }
            }
        });
    }

    #[test]
    fn copy_counts_are_the_minimum() {
        with_buf(10, |s| {
            assert_eq!(s.copy_from(&[7u8; 20]), 10);
            let mut big = [0u8; 20];
            assert_eq!(s.copy_to(&mut big), 10);
            assert_eq!(&big[..10], &[7u8; 10]);
            assert_eq!(&big[10..], &[0u8; 10]);
        });
    }

    #[test]
    fn copy_to_volatile_handles_overlap_like_memmove() {
        with_buf(32, |s| {
            let src: Vec<u8> = (0..32).collect();
            s.copy_from(&src);
            // Forward overlap: dst after src.
            s.sub_slice(0, 24)
                .unwrap()
                .copy_to_volatile(s.sub_slice(8, 24).unwrap());
            let mut out = [0u8; 32];
            s.copy_to(&mut out);
            assert_eq!(&out[8..], &src[..24]);
            // Backward overlap: dst before src.
            s.copy_from(&src);
            s.sub_slice(3, 29)
                .unwrap()
                .copy_to_volatile(s.sub_slice(0, 29).unwrap());
            s.copy_to(&mut out);
            assert_eq!(&out[..29], &src[3..]);
        });
    }

    #[test]
    fn objects_at_odd_offsets() {
        with_buf(32, |s| {
            for off in 0..16 {
                s.write_obj(0x1122_3344_5566_7788u64, off).unwrap();
                assert_eq!(s.read_obj::<u64>(off).unwrap(), 0x1122_3344_5566_7788);
                s.write_obj([1u16, 2, 3], off).unwrap();
                assert_eq!(s.read_obj::<[u16; 3]>(off).unwrap(), [1, 2, 3]);
            }
            assert!(matches!(
                s.read_obj::<u64>(25),
                Err(Error::InvalidRange {
                    op: "read_obj",
                    offset: 25,
                    count: 8,
                    size: 32
                })
            ));
            assert!(matches!(
                s.write_obj(0u8, 32),
                Err(Error::InvalidRange {
                    op: "write_obj",
                    ..
                })
            ));
        });
    }

    #[test]
    fn volatile_objects_must_be_aligned() {
        with_buf(32, |s| {
            s.write_obj_volatile(5u32, 4).unwrap();
            assert_eq!(s.read_obj_volatile::<u32>(4).unwrap(), 5);
            assert_eq!(
                s.read_obj_volatile::<u32>(2),
                Err(Error::UnalignedOffset {
                    op: "read_obj_volatile",
                    offset: 2,
                    align: 4
                })
            );
            assert!(matches!(
                s.write_obj_volatile(1u64, 28),
                Err(Error::InvalidRange { .. })
            ));
        });
    }

    #[test]
    fn sub_slice_bounds() {
        with_buf(16, |s| {
            assert_eq!(s.sub_slice(16, 0).unwrap().len(), 0);
            assert!(s.sub_slice(16, 0).unwrap().is_empty());
            assert!(s.sub_slice(8, 9).is_err());
            assert!(matches!(
                s.sub_slice(usize::MAX, 2),
                Err(Error::InvalidRange {
                    op: "sub_slice",
                    ..
                })
            ));
        });
    }
}
