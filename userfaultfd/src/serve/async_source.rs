//! The async counterpart of [`PageSource`](super::PageSource), for sources whose reads are
//! network requests (object storage): many reads in flight at once on one runtime, instead of
//! one blocked thread per read. Feature `tokio`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

/// The future an [`AsyncPageSource`] returns: boxed, so the trait can be used as
/// `Arc<dyn AsyncPageSource>`.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What backs a region when its bytes come from an async medium, such as an object store.
///
/// Only [`len`](Self::len) and [`read_at`](Self::read_at) are required. The server issues reads
/// for whole pages or runs of pages inside `0..len()`, many at once, and calls the source from
/// several tasks concurrently, so it is `Send + Sync` and takes `&self`.
///
/// ```
/// use std::io;
/// use userfaultfd::serve::{AsyncPageSource, SourceFuture};
///
/// /// Every byte of page `n` is `n as u8`.
/// struct Pattern(u64);
///
/// impl AsyncPageSource for Pattern {
///     fn len(&self) -> u64 {
///         self.0
///     }
///     fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
///         Box::pin(async move {
///             for (i, b) in buf.iter_mut().enumerate() {
///                 *b = ((offset + i as u64) / 4096) as u8;
///             }
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait AsyncPageSource: Send + Sync {
    /// Bytes the source holds.
    fn len(&self) -> u64;

    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `buf` with the bytes at `offset`. A short read is an error
    /// (`ErrorKind::UnexpectedEof`): the server never maps a partly filled page. Dropping the
    /// future abandons the read.
    ///
    /// # Errors
    ///
    /// Whatever the medium reports; the server then applies its failure policy to the pages
    /// concerned ([`FailurePolicy`](super::FailurePolicy)).
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>>;

    /// Whether `offset..offset + len` is known to read as zeros, so the server can map zero
    /// pages without reading. `false` when unknown (the default).
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }

    /// The granularity the medium is best read in (an object store's chunk size), so the
    /// server can align prefetch and background reads to it. `None` (the default) when any
    /// run of pages is as good as another.
    fn chunk_size(&self) -> Option<u64> {
        None
    }
}

impl<S: AsyncPageSource + ?Sized> AsyncPageSource for Arc<S> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        (**self).read_at(offset, buf)
    }
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        (**self).is_zero(offset, len)
    }
    fn chunk_size(&self) -> Option<u64> {
        (**self).chunk_size()
    }
}
