//! Plain-data types that may be copied to and from mapped memory.

/// Types whose values are just bytes: any byte pattern of the right size is a
/// valid value, and a value's bytes contain no padding.
///
/// [`MemoryMapping::read_obj`](crate::MemoryMapping::read_obj),
/// [`write_obj`](crate::MemoryMapping::write_obj) and
/// [`VolatileSlice::read_obj`](crate::VolatileSlice::read_obj) move such values
/// to and from mapped memory by copying their bytes. Mapped memory can hold
/// anything (a file's contents, what another process wrote, zeros a
/// userfaultfd handler supplied), so reading a type that has invalid bit
/// patterns (`bool`, `char`, enums, references) would be undefined behaviour;
/// this trait rules those types out.
///
/// Implemented for the integer types, `f32`/`f64`, and arrays of any
/// `DataInit` type.
///
/// # Safety
///
/// Implement this only for a type `T` where:
/// - every sequence of `size_of::<T>()` initialised bytes is a valid `T`
///   (no `bool`, `char`, enums, `NonZero*`, references, `Box`, ...);
/// - `T` has no padding bytes, so that [`DataInit::as_bytes`] reads only
///   initialised memory (for a `#[repr(C)]` struct: fields laid out without
///   gaps and no trailing padding);
/// - `T` has no interior mutability and no `Drop` glue (implied by `Copy`).
///
/// # Example
///
/// ```
/// use mmap::DataInit;
///
/// #[derive(Clone, Copy, Debug, Default, PartialEq)]
/// #[repr(C)]
/// struct Header {
///     magic: u32,
///     len: u32,
/// }
/// // SAFETY: two u32 fields, repr(C): no padding, and every bit pattern is a
/// // valid pair of u32s.
/// unsafe impl DataInit for Header {}
///
/// let m = mmap::MemoryMapping::new(4096)?;
/// let h = Header { magic: 0xfeed, len: 12 };
/// m.write_obj(h, 64)?;
/// assert_eq!(m.read_obj::<Header>(64)?, h);
/// assert_eq!(h.as_bytes().len(), 8);
/// # Ok::<(), mmap::Error>(())
/// ```
pub unsafe trait DataInit: Copy + Send + Sync + 'static {
    /// The bytes of `self`.
    fn as_bytes(&self) -> &[u8] {
        // The returned slice borrows `self`, so it cannot outlive it; `u8` has alignment 1.
        // SAFETY: `self` is a valid reference to `size_of::<Self>()` bytes, all initialised
        // because the trait contract rules out padding.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }

    /// The bytes of `self`, writable.
    ///
    /// Any bytes written leave a valid `Self`, by the trait contract.
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; the slice borrows `self` mutably, so it is the
        // only access while it lives, and any bytes written through it form a
        // valid `Self` because every bit pattern is valid for `DataInit` types.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self as *mut Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }

    /// A value with every byte zero.
    fn zeroed() -> Self {
        // SAFETY: all-zero bytes are one of the bit patterns every `DataInit` type
        // accepts.
        unsafe { std::mem::zeroed() }
    }
}

macro_rules! impl_data_init {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: primitive numbers have no padding and every bit pattern is a
            // valid value (for floats, including NaNs).
            unsafe impl DataInit for $t {}
        )*
    };
}

impl_data_init!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

// SAFETY: an array has no padding between or after its elements (its size is
// exactly `N * size_of::<T>()`), and it is valid exactly when each element is,
// which any byte pattern ensures because `T: DataInit`.
unsafe impl<T: DataInit, const N: usize> DataInit for [T; N] {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_bytes_is_native_endian() {
        assert_eq!(0x0102_0304u32.as_bytes(), &0x0102_0304u32.to_ne_bytes());
        let a = [1u16, 2, 3];
        assert_eq!(a.as_bytes().len(), 6);
    }

    #[test]
    fn as_bytes_mut_writes_through() {
        let mut v = 0u64;
        v.as_bytes_mut().copy_from_slice(&7u64.to_ne_bytes());
        assert_eq!(v, 7);
    }

    #[test]
    fn zeroed_is_zero() {
        assert_eq!(<[u32; 4]>::zeroed(), [0; 4]);
        assert_eq!(f64::zeroed(), 0.0);
    }
}
