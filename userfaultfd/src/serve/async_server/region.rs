//! A region served from an [`AsyncPageSource`]: [`AsyncRegion`].

use std::io;
use std::sync::Arc;

use libc::c_void;
use mmap::MappedRegion;

use super::super::{AsyncPageSource, PageSource, Region};
use super::adapter::BlockingSource;

/// One address range an [`AsyncServer`](super::AsyncServer) resolves faults in, and the
/// [`AsyncPageSource`] that backs it: byte `i` of the range is byte `source_offset + i` of the
/// source. The async counterpart of [`Region`], with the same constructors; a `Region` over a
/// synchronous [`PageSource`] converts with [`AsyncRegion::from`] (its reads then run on tokio's
/// blocking pool, see [`BlockingSource`]).
pub struct AsyncRegion {
    /// The region as the shared serving state sees it: its source is a stand-in that knows the
    /// length and the zero ranges but is never read (the async tasks read `source`).
    pub(super) region: Region,
    pub(super) source: Arc<dyn AsyncPageSource>,
}

impl std::fmt::Debug for AsyncRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRegion")
            .field("region", &self.region)
            .field("chunk_size", &self.source.chunk_size())
            .finish()
    }
}

impl AsyncRegion {
    /// The whole of `memory` (its size rounded up to its page size), backed by `source` from
    /// offset 0; the server keeps `memory` mapped while it serves. Safe, as [`Region::new`].
    pub fn new<R: MappedRegion + 'static>(
        memory: Arc<R>,
        source: Arc<dyn AsyncPageSource>,
    ) -> AsyncRegion {
        let region = Region::new(memory, stand_in(&source));
        AsyncRegion { region, source }
    }

    /// `len` bytes at `addr`, in pages of `page_size` bytes, backed by `source` from offset 0.
    ///
    /// # Safety
    ///
    /// As [`Region::from_raw_parts`]: the server will copy source bytes into the range, map
    /// zero pages and poison pages at any time while it runs, so the caller must be entitled
    /// to define the range's contents, and keep it mapped while the server runs (or let the
    /// server learn of its unmapping through `EVENT_UNMAP`).
    pub unsafe fn from_raw_parts(
        addr: *mut c_void,
        len: usize,
        page_size: usize,
        source: Arc<dyn AsyncPageSource>,
    ) -> AsyncRegion {
        // SAFETY: the caller upholds `Region::from_raw_parts`'s contract (the same as ours).
        let region = unsafe { Region::from_raw_parts(addr, len, page_size, stand_in(&source)) };
        AsyncRegion { region, source }
    }

    /// Serves the region from `offset` in the source instead of 0, as
    /// [`Region::source_offset`].
    pub fn source_offset(mut self, offset: u64) -> AsyncRegion {
        self.region = self.region.source_offset(offset);
        self
    }

    /// Serves the region's minor faults with `UFFDIO_CONTINUE` (a shared mapping of a file
    /// whose page cache holds the image), as [`Region::minor`]; pages not in the page cache
    /// are copied from the source.
    pub fn minor(mut self) -> AsyncRegion {
        self.region = self.region.minor();
        self
    }

    /// Start address.
    pub fn addr(&self) -> *mut c_void {
        self.region.addr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Whether the region is empty (the server refuses empty regions).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    /// Page size.
    pub fn page_size(&self) -> usize {
        self.region.page_size()
    }
}

impl From<Region> for AsyncRegion {
    /// The same region, its synchronous source read through a [`BlockingSource`] (reads on
    /// tokio's blocking pool).
    fn from(region: Region) -> AsyncRegion {
        let source: Arc<dyn AsyncPageSource> =
            Arc::new(BlockingSource::new(Arc::clone(&region.source)));
        AsyncRegion { region, source }
    }
}

/// The synchronous face of an async source inside the shared serving state: its length and
/// zero ranges (checked at start, and by the async tasks through the async source itself).
/// The async tasks never read it; a read is an error, which the failure policy would absorb.
struct StandIn(Arc<dyn AsyncPageSource>);

fn stand_in(source: &Arc<dyn AsyncPageSource>) -> Arc<dyn PageSource> {
    Arc::new(StandIn(Arc::clone(source)))
}

impl PageSource for StandIn {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an async page source is read by the async server's tasks only",
        ))
    }

    fn is_zero(&self, offset: u64, len: u64) -> bool {
        self.0.is_zero(offset, len)
    }
}
