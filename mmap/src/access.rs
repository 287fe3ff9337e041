//! [`MemoryMapping`]'s bounds-checked volatile accessors (`get_slice`, `read_obj`,
//! `write_slice`, ...).

use crate::range::check_range;
#[cfg(doc)]
use crate::Error;
use crate::{DataInit, MemoryMapping, Result, VolatileSlice};

impl MemoryMapping {
    /// A volatile view of the whole mapping.
    fn whole(&self) -> VolatileSlice<'_> {
        // SAFETY: the mapping owns `addr..addr + size` until it is dropped, which
        // the borrow of `self` prevents while the slice lives, and this crate
        // creates no references into it.
        unsafe { VolatileSlice::new(self.addr, self.size) }
    }

    /// A bounds-checked volatile view of `count` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "get_slice"`) if the range is not inside the mapping.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// let s = m.get_slice(100, 4)?;
    /// s.copy_from(&[1, 2, 3, 4]);
    /// assert_eq!(m.read_obj::<[u8; 4]>(100)?, [1, 2, 3, 4]);
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn get_slice(&self, offset: usize, count: usize) -> Result<VolatileSlice<'_>> {
        check_range("get_slice", self.size, offset, count)?;
        self.whole().sub_slice(offset, count)
    }

    /// Reads a `T` at `offset` (any alignment) with volatile loads; see
    /// [`VolatileSlice::read_obj`] for when it is a single access.
    ///
    /// The read may block (a userfaultfd-registered page waits for its
    /// handler) or fault (`SIGBUS` past the end of a mapped file).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "read_obj"`) if the object is not inside the mapping.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.write_obj([1u16, 2, 3], 4089)?;
    /// assert_eq!(m.read_obj::<[u16; 3]>(4089)?, [1, 2, 3]);
    /// assert!(m.read_obj::<u64>(4090).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn read_obj<T: DataInit>(&self, offset: usize) -> Result<T> {
        self.whole().read_obj_op("read_obj", offset)
    }

    /// Writes `val` at `offset` (any alignment) with volatile stores.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "write_obj"`) if the object is not inside the mapping.
    ///
    /// # Example
    ///
    /// See [`read_obj`](Self::read_obj).
    pub fn write_obj<T: DataInit>(&self, val: T, offset: usize) -> Result<()> {
        self.whole().write_obj_op("write_obj", val, offset)
    }

    /// Reads a naturally aligned `T` at `offset` with one volatile load of
    /// type `T` (no tearing for `T` up to the word size).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] if the object is not inside the mapping,
    /// [`Error::UnalignedOffset`] if `offset` is not a multiple of `align_of::<T>()`.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.write_obj_volatile(3u64, 8)?;
    /// assert_eq!(m.read_obj_volatile::<u64>(8)?, 3);
    /// assert!(m.read_obj_volatile::<u64>(4).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn read_obj_volatile<T: DataInit>(&self, offset: usize) -> Result<T> {
        self.whole().read_obj_volatile(offset)
    }

    /// Writes a naturally aligned `T` at `offset` with one volatile store of
    /// type `T`.
    ///
    /// # Errors
    ///
    /// As [`read_obj_volatile`](Self::read_obj_volatile).
    pub fn write_obj_volatile<T: DataInit>(&self, val: T, offset: usize) -> Result<()> {
        self.whole().write_obj_volatile(val, offset)
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`: all of them, or none
    /// and an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "read_slice"`) if `offset..offset +
    /// buf.len()` is not inside the mapping; nothing is copied then.
    ///
    /// # Example
    ///
    /// ```
    /// let m = mmap::MemoryMapping::new(4096)?;
    /// m.write_slice(b"abc", 10)?;
    /// let mut buf = [0u8; 3];
    /// m.read_slice(&mut buf, 10)?;
    /// assert_eq!(&buf, b"abc");
    /// assert!(m.read_slice(&mut [0u8; 8], 4090).is_err());
    /// # Ok::<(), mmap::Error>(())
    /// ```
    pub fn read_slice(&self, buf: &mut [u8], offset: usize) -> Result<()> {
        check_range("read_slice", self.size, offset, buf.len())?;
        self.whole().sub_slice(offset, buf.len())?.copy_to(buf);
        Ok(())
    }

    /// Copies all of `buf` to `offset`: all of it, or nothing and an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRange`] (`op: "write_slice"`) if `offset..offset +
    /// buf.len()` is not inside the mapping; nothing is copied then.
    ///
    /// # Example
    ///
    /// See [`read_slice`](Self::read_slice).
    pub fn write_slice(&self, buf: &[u8], offset: usize) -> Result<()> {
        check_range("write_slice", self.size, offset, buf.len())?;
        self.whole().sub_slice(offset, buf.len())?.copy_from(buf);
        Ok(())
    }
}
