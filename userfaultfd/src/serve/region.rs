//! A region to serve: where it is, what backs it, and who keeps its memory alive.

use std::any::Any;
use std::sync::Arc;

use libc::c_void;
use mmap::MappedRegion;

use super::PageSource;

/// One address range a [`Server`](super::Server) resolves faults in, and the [`PageSource`]
/// that backs it: byte `i` of the range is byte `source_offset + i` of the source.
///
/// Build it over an owned mapping with [`Region::new`] (safe: the server keeps the mapping
/// alive and writes only into it), or over raw addresses with the `unsafe`
/// [`Region::from_raw_parts`] (another process's memory, as a Firecracker handler serves).
pub struct Region {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) page_size: usize,
    pub(crate) source: Arc<dyn PageSource>,
    pub(crate) source_offset: u64,
    pub(crate) minor: bool,
    /// Keeps an owned mapping alive as long as the server runs.
    pub(crate) _owner: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("page_size", &self.page_size)
            .field("source_len", &self.source.len())
            .field("source_offset", &self.source_offset)
            .finish()
    }
}

impl Region {
    /// The whole of `memory` (its size rounded up to its page size), backed by `source` from
    /// offset 0. The server holds a reference to `memory`, so it stays mapped while served;
    /// the program reads it through `memory`'s volatile accessors meanwhile.
    ///
    /// Safe: a [`MappedRegion`] is memory no Rust reference points into, so the server may
    /// define its bytes, and poison pages whose source failed (see
    /// [`FailurePolicy`](super::FailurePolicy)).
    pub fn new<R: MappedRegion + 'static>(memory: Arc<R>, source: Arc<dyn PageSource>) -> Region {
        let page_size = memory.page_size();
        let len = memory.size().div_ceil(page_size) * page_size;
        Region {
            addr: memory.as_ptr() as usize,
            len,
            page_size,
            source,
            source_offset: 0,
            minor: false,
            _owner: Some(memory),
        }
    }

    /// `len` bytes at `addr`, with pages of `page_size` bytes (the base page size, or the huge
    /// page size of hugetlb memory), backed by `source` from offset 0.
    ///
    /// # Safety
    ///
    /// The server will copy source bytes into the range, map zero pages, and (with
    /// [`FailurePolicy::Poison`](super::FailurePolicy::Poison)) poison pages, at any time while
    /// it runs. The caller must be entitled to define the range's contents: memory of another
    /// process (a VMM's guest memory), or memory of this process that no Rust reference or
    /// owning value (a `Vec`, a stack) relies on, and that stays mapped while the server runs
    /// (or whose unmapping the server learns of through `EVENT_UNMAP`).
    pub unsafe fn from_raw_parts(
        addr: *mut c_void,
        len: usize,
        page_size: usize,
        source: Arc<dyn PageSource>,
    ) -> Region {
        Region {
            addr: addr as usize,
            len,
            page_size,
            source,
            source_offset: 0,
            minor: false,
            _owner: None,
        }
    }

    /// Serves the region from `offset` in the source instead of 0 (several regions of one
    /// memory file, as Firecracker's `offset` field describes).
    pub fn source_offset(mut self, offset: u64) -> Region {
        self.source_offset = offset;
        self
    }

    /// Serve the region's minor faults with `UFFDIO_CONTINUE` (Linux 5.13 for hugetlbfs, 5.14
    /// for shmem): the region is a **shared** mapping of a file (a memfd, tmpfs or hugetlbfs
    /// file) whose page cache already holds the image, so a fault only needs the page mapped,
    /// never copied, and every VM mapping the same file shares its pages. Pages not in the page
    /// cache fault as missing and are copied from the source (which puts them in the page
    /// cache). The server registers the region `MINOR | MISSING`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use userfaultfd::serve::{MemorySource, Region, ServerBuilder};
    /// let page = userfaultfd::page_size();
    /// let image: Vec<u8> = (0..16 * page).map(|i| (i / page) as u8).collect();
    /// // The image in a memfd's page cache (written through a view of its own)...
    /// let file = userfaultfd::mmap::SharedMemory::new("image", (16 * page) as u64)?;
    /// userfaultfd::mmap::MemoryMapping::from_fd(&file, 16 * page)?.write_slice(&image, 0)?;
    /// // ...and the guest's view of it, served by CONTINUE.
    /// let guest = Arc::new(userfaultfd::mmap::MemoryMapping::from_fd(&file, 16 * page)?);
    /// let server = ServerBuilder::new()
    ///     .region(Region::new(guest.clone(), Arc::new(MemorySource::new(image))).minor())
    ///     .start(userfaultfd::UffdBuilder::new().user_mode_only(true).create()?)?;
    /// assert_eq!(guest.read_obj::<u8>(9 * page)?, 9);
    /// let stats = server.shutdown()?;
    /// assert!(stats.pages_continue > 0);
    /// # Ok(()) }
    /// ```
    pub fn minor(mut self) -> Region {
        self.minor = true;
        self
    }

    /// Start address.
    pub fn addr(&self) -> *mut c_void {
        self.addr as *mut c_void
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (the server refuses empty regions).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
}
