//! What backs a served region: the [`PageSource`] trait and the in-memory source.

use std::io;
use std::sync::Arc;

use mmap::MappedRegion;

/// Readable bytes the server may hand straight to `UFFDIO_COPY` as its source, so no bounce
/// buffer is needed: a slice of the source's own memory, or an owned mapping (a file mapped
/// read-only, whose pages then come straight from the page cache).
///
/// The view borrows the source: it stays valid for as long as the source is borrowed.
#[derive(Clone, Copy, Debug)]
pub struct DirectView<'a> {
    ptr: *const u8,
    len: usize,
    _borrow: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> DirectView<'a> {
    /// A view of `bytes`.
    pub fn from_slice(bytes: &'a [u8]) -> DirectView<'a> {
        DirectView {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// A view of the whole of an owned mapping (its [`size`](MappedRegion::size) bytes). The
    /// kernel reads it; if a page of it cannot be read (a file truncated under a shared
    /// mapping), the copy fails with `EFAULT` and the server applies its failure policy.
    pub fn from_region<R: MappedRegion + ?Sized>(region: &'a R) -> DirectView<'a> {
        DirectView {
            ptr: region.as_ptr(),
            len: region.size(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Bytes in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of byte `offset`, if `offset..offset + len` lies inside the view.
    pub(crate) fn at(&self, offset: u64, len: usize) -> Option<*const u8> {
        let offset = usize::try_from(offset).ok()?;
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| self.ptr.wrapping_add(offset))
    }
}

/// What backs a region served by a [`Server`](super::Server): its bytes, read at byte offsets.
///
/// Only [`len`](Self::len) and [`read_at`](Self::read_at) are required. The optional methods
/// make serving faster: [`is_zero`](Self::is_zero) lets the server map zero pages without
/// reading, and [`direct`](Self::direct) lets it copy straight from the source's memory.
///
/// A source is shared by the server's threads, which call it concurrently, so it is
/// `Send + Sync` and takes `&self`. Reads are issued for whole pages (or runs of pages) inside
/// `0..len()`. A source without a direct view may be asked for a page more than once: where
/// missing pages alternate with present ones, one read covers several missing runs and the
/// short present gaps between them (read-through coalescing: one request's latency instead of
/// one per run). No page is copied into the region twice.
///
/// ```
/// use std::io;
/// use userfaultfd::serve::PageSource;
///
/// /// Every byte of page `n` is `n as u8`.
/// struct Pattern(u64);
///
/// impl PageSource for Pattern {
///     fn len(&self) -> u64 {
///         self.0
///     }
///     fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
///         for (i, b) in buf.iter_mut().enumerate() {
///             *b = ((offset + i as u64) / 4096) as u8;
///         }
///         Ok(())
///     }
/// }
/// let mut page = [0u8; 4096];
/// Pattern(1 << 20).read_at(3 * 4096, &mut page).unwrap();
/// assert_eq!(page[0], 3);
/// ```
pub trait PageSource: Send + Sync {
    /// Bytes the source holds.
    fn len(&self) -> u64;

    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `buf` with the bytes at `offset`. A short read is an error
    /// (`ErrorKind::UnexpectedEof`): the server never maps a partly filled page.
    ///
    /// # Errors
    ///
    /// Whatever the source's medium reports; the server then applies its failure policy to the
    /// pages concerned ([`FailurePolicy`](super::FailurePolicy)).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Whether `offset..offset + len` is known to read as zeros (a hole in a sparse file),
    /// so the server can map zero pages (`UFFDIO_ZEROPAGE`) without reading. `false` when
    /// unknown (the default).
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }

    /// The source's bytes in memory, for `UFFDIO_COPY` to read directly (no bounce buffer),
    /// with source offset `n` at view offset `n`. `None` (the default) when the bytes must be
    /// read with [`read_at`](Self::read_at).
    fn direct(&self) -> Option<DirectView<'_>> {
        None
    }
}

impl<S: PageSource + ?Sized> PageSource for Arc<S> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        (**self).is_zero(offset, len)
    }
    fn direct(&self) -> Option<DirectView<'_>> {
        (**self).direct()
    }
}

/// Reads `buf.len()` bytes at `offset` out of `bytes`, or reports where the source ends.
pub(crate) fn read_from_slice(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).ok();
    match start.and_then(|s| Some(s..s.checked_add(buf.len())?)) {
        Some(r) if r.end <= bytes.len() => {
            buf.copy_from_slice(&bytes[r]);
            Ok(())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "read of {} bytes at {offset} past the end of a {}-byte source",
                buf.len(),
                bytes.len()
            ),
        )),
    }
}

/// A source holding its image in memory (a `Vec<u8>`, or anything that derefs to bytes). The
/// server copies straight from it.
///
/// ```
/// use userfaultfd::serve::{MemorySource, PageSource};
/// let src = MemorySource::new(vec![7u8; 8192]);
/// assert_eq!(src.len(), 8192);
/// assert!(src.direct().is_some());
/// ```
#[derive(Debug, Clone)]
pub struct MemorySource<B = Vec<u8>> {
    bytes: B,
}

impl<B: AsRef<[u8]> + Send + Sync> MemorySource<B> {
    /// A source over `bytes`.
    pub fn new(bytes: B) -> MemorySource<B> {
        MemorySource { bytes }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

impl<B: AsRef<[u8]> + Send + Sync> PageSource for MemorySource<B> {
    fn len(&self) -> u64 {
        self.bytes.as_ref().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_from_slice(self.bytes.as_ref(), offset, buf)
    }

    fn direct(&self) -> Option<DirectView<'_>> {
        Some(DirectView::from_slice(self.bytes.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_source_reads_and_bounds() {
        let src = MemorySource::new((0..=255u8).cycle().take(8192).collect::<Vec<_>>());
        let mut b = [0u8; 4];
        src.read_at(4094, &mut b).unwrap();
        assert_eq!(b, [254, 255, 0, 1]);
        let e = src.read_at(8190, &mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(src.read_at(u64::MAX, &mut b).is_err());
        let v = src.direct().unwrap();
        assert_eq!(v.len(), 8192);
        assert!(v.at(4096, 4096).is_some());
        assert!(v.at(4097, 4096).is_none());
        assert!(v.at(u64::MAX, 1).is_none());
    }
}
