//! Sources backed by a file: [`FileSource`] (read with `pread(2)`) and [`MappedFileSource`]
//! (mapped read-only with `mmap(2)`, so the server copies straight from the page cache).
//!
//! Both report holes of sparse files with `lseek(2)` `SEEK_DATA`, so the server maps zero pages
//! there instead of reading and copying zeros.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use mmap::{MemoryMapping, MemoryMappingBuilder, Protection};

use super::{DirectView, PageSource};

/// What a file source knows about its file: its length when opened, and whether it is a
/// regular file (whose current size `fstat(2)` reports) or a device.
#[derive(Debug)]
struct Opened {
    file: File,
    len: u64,
    regular: bool,
}

impl Opened {
    /// Records `file`'s length: `fstat(2)` for a regular file, `lseek(2)` to the end for a block
    /// device (whose `st_size` is 0).
    fn new(file: File) -> io::Result<Opened> {
        let meta = file.metadata()?;
        let ft = meta.file_type();
        let len = if ft.is_block_device() {
            // The file position is irrelevant: every read is positioned (pread(2)).
            (&file).seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Opened {
            file,
            len,
            regular: ft.is_file(),
        })
    }

    /// `offset..offset + len` as a range inside the length recorded at construction, or the
    /// `UnexpectedEof` error a read of it gets.
    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(past_end(offset, len, self.len)),
        }
    }

    /// `pread(2)` of all of `buf` at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // Shorter than when it was opened: truncated meanwhile.
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end of the file \
                         (truncated below its length of {} bytes when opened)",
                        buf.len(),
                        self.len
                    ),
                )
            } else {
                e
            }
        })
    }

    /// Whether `offset..offset + len` is a hole: `lseek(2)` with `SEEK_DATA` finds no data
    /// before `offset + len`. No allocation; one system call (two when no data follows
    /// `offset`: `fstat(2)` then checks that the file still reaches `offset + len`).
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if end > self.len {
            // Not readable at all (read_at fails there): certainly not known to be zeros.
            return false;
        }
        if len == 0 {
            return true;
        }
        let Ok(off) = libc::off_t::try_from(offset) else {
            return false;
        };
        // SAFETY: lseek(2) on a descriptor `self.file` owns and keeps open; it takes no
        // pointers. Moving the file position is harmless: every read is positioned.
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), off, libc::SEEK_DATA) };
        if data >= 0 {
            return data as u64 >= end;
        }
        match io::Error::last_os_error().raw_os_error() {
            // No data at or after `offset`: a hole up to the end of the file, provided the file
            // still reaches `end` (a file truncated meanwhile must fail its reads instead, so
            // the server applies its failure policy rather than serving zeros). A device
            // reports ENXIO only past its end.
            Some(libc::ENXIO) => self.regular && self.file.metadata().is_ok_and(|m| m.len() >= end),
            // EINVAL: the file system does not support SEEK_DATA (before Linux 3.1, or a
            // special file); anything else: unknown. Either way: not known to be zeros.
            _ => false,
        }
    }
}

/// The error of a read of `len` bytes at `offset` from a source of `source_len` bytes that
/// runs past its end.
fn past_end(offset: u64, len: usize, source_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} past the end of a {source_len}-byte file"),
    )
}

/// A [`PageSource`] that reads a file with `pread(2)` (any Linux): a regular file, or a block
/// device. The server reads into its bounce buffer, then copies (`UFFDIO_COPY`); holes of a
/// sparse file are mapped as zero pages without reading (`UFFDIO_ZEROPAGE`, see
/// [`is_zero`](PageSource::is_zero)).
///
/// The source's length is the file's length when the source was made: reads past it fail with
/// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) even if the file grew since. The file should
/// not change while it is served; if it is truncated, reads past its new end fail (and the
/// server applies its [`FailurePolicy`](super::FailurePolicy) to those pages).
///
/// Use [`MappedFileSource`] to save the copy into the bounce buffer.
///
/// Linux: any version for `pread(2)`; Linux 3.1 for `SEEK_DATA` (`lseek(2)`), without which
/// holes are simply read.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::io::Write;
/// use userfaultfd::serve::{FileSource, PageSource};
///
/// let path = std::env::temp_dir().join(format!("uffd-doc-filesource-{}", std::process::id()));
/// std::fs::File::create(&path)?.write_all(&[7u8; 8192])?;
/// let src = FileSource::open(&path)?;
/// std::fs::remove_file(&path)?; // the source keeps the file open
///
/// assert_eq!(src.len(), 8192);
/// let mut page = [0u8; 4096];
/// src.read_at(4096, &mut page)?;
/// assert_eq!(page, [7u8; 4096]);
/// // A read past the end fails rather than returning a partly filled page.
/// let e = src.read_at(6000, &mut page).unwrap_err();
/// assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
/// assert!(src.direct().is_none()); // the server reads into its bounce buffer
/// # Ok(()) }
/// ```
///
/// Serving a sparse snapshot: its holes become zero pages.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::fs::FileExt;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{FileSource, Region, ServerBuilder};
/// use userfaultfd::UffdBuilder;
///
/// let len = 4 << 20;
/// let path = std::env::temp_dir().join(format!("uffd-doc-sparse-{}", std::process::id()));
/// let file = std::fs::File::create(&path)?;
/// file.set_len(len as u64)?; // 4 MiB of hole...
/// file.write_all_at(b"data", 3 << 20)?; // ...with data at 3 MiB
/// let source = Arc::new(FileSource::open(&path)?);
/// std::fs::remove_file(&path)?;
///
/// let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(len)?);
/// let server = ServerBuilder::new()
///     .region(Region::new(memory.clone(), source))
///     .start(UffdBuilder::new().user_mode_only(true).create()?)?;
/// assert_eq!(memory.read_obj::<[u8; 4]>(3 << 20)?, *b"data");
/// server.wait_populated(Duration::from_secs(10))?;
/// let stats = server.shutdown()?;
/// assert_eq!(stats.pages_present() as usize, len / userfaultfd::page_size());
/// // On a file system that reports holes (ext4, XFS, Btrfs, tmpfs...) the first 2 MiB
/// // were mapped as zero pages, never read.
/// println!("{} zero pages", stats.pages_zero);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileSource {
    inner: Opened,
}

impl FileSource {
    /// A source reading `file` (opened for reading), of the length it has now: `fstat(2)`'s
    /// `st_size` for a regular file, `lseek(2)` to the end for a block device.
    ///
    /// # Errors
    ///
    /// What `fstat(2)` or `lseek(2)` report.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use userfaultfd::serve::{FileSource, PageSource};
    ///
    /// let path = std::env::temp_dir().join(format!("uffd-doc-filesource-new-{}", std::process::id()));
    /// std::fs::write(&path, b"snapshot")?;
    /// let src = FileSource::new(std::fs::File::open(&path)?)?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(src.len(), 8);
    /// # Ok(()) }
    /// ```
    pub fn new(file: File) -> io::Result<FileSource> {
        Ok(FileSource {
            inner: Opened::new(file)?,
        })
    }

    /// Opens `path` read-only and makes a source of it (see [`new`](Self::new)).
    ///
    /// # Errors
    ///
    /// What `open(2)`, `fstat(2)` or `lseek(2)` report (`NotFound`, `PermissionDenied`, ...).
    ///
    /// ```
    /// use userfaultfd::serve::FileSource;
    /// let e = FileSource::open("/nonexistent/snapshot").unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    /// ```
    pub fn open(path: impl AsRef<Path>) -> io::Result<FileSource> {
        FileSource::new(File::open(path)?)
    }

    /// The open file. Read it with positioned reads (`FileExt::read_at`): `is_zero` moves its
    /// file position (`lseek(2)`).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use userfaultfd::serve::FileSource;
    ///
    /// let path = std::env::temp_dir().join(format!("uffd-doc-file-{}", std::process::id()));
    /// std::fs::write(&path, b"abc")?;
    /// let src = FileSource::open(&path)?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(src.file().metadata()?.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn file(&self) -> &File {
        &self.inner.file
    }
}

impl PageSource for FileSource {
    /// The file's length when the source was made.
    fn len(&self) -> u64 {
        self.inner.len
    }

    /// `pread(2)` until `buf` is full (retrying `EINTR` and short reads).
    ///
    /// # Errors
    ///
    /// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) (with the offset and length in the
    /// message) for a range past [`len`](PageSource::len), or past the end of a file truncated
    /// meanwhile; otherwise what `pread(2)` reports (`EIO`, ...).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    /// Whether the range is a hole of the file: `lseek(2)` with `SEEK_DATA` (Linux 3.1; most
    /// file systems, including ext4, XFS, Btrfs and tmpfs) finds no data before its end.
    /// `false` where the file system cannot tell (`EINVAL`: every byte is then data), for a
    /// block device, and for a range past the file's end. One system call, no allocation.
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        self.inner.is_hole(offset, len)
    }
}

/// A [`PageSource`] over a file mapped read-only and shared (`mmap(2)` with `PROT_READ`,
/// `MAP_SHARED`): the server's `UFFDIO_COPY` reads straight from the mapping
/// ([`direct`](PageSource::direct)), that is from the file's page cache, with no bounce buffer
/// and no `pread(2)`. Holes of a sparse file are mapped as zero pages without touching the
/// mapping (`lseek(2)` `SEEK_DATA`, Linux 3.1), as for [`FileSource`].
///
/// **Why `MAP_SHARED`:** a shared read-only mapping *is* the page cache: every page of it is
/// the file's cached page, never a private copy, and it always shows the file's current
/// contents (a read-only `MAP_PRIVATE` mapping would in practice also map the cached pages,
/// since nothing ever writes to trigger copy-on-write, but POSIX leaves it unspecified whether
/// later changes to the file show through, and the mapping would be charged as private memory
/// if it were ever made writable). Reading the file only needs it open for reading.
///
/// **Empty files are refused** ([`new`](Self::new) fails with `InvalidInput`): `mmap(2)` of
/// length 0 is `EINVAL`, and a server refuses empty regions anyway. Use [`FileSource`] for a
/// file that may be empty.
///
/// **Truncation:** the file must not be truncated while it is mapped. If it is, the server's
/// copies from the missing pages fail with `EFAULT` (and its
/// [`FailurePolicy`](super::FailurePolicy) applies), but [`read_at`](PageSource::read_at),
/// which copies through the mapping, gets `SIGBUS`, as any access to a shared file mapping past
/// the file's end does.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::io::Write;
/// use userfaultfd::serve::{MappedFileSource, PageSource};
///
/// let path = std::env::temp_dir().join(format!("uffd-doc-mapped-{}", std::process::id()));
/// std::fs::File::create(&path)?.write_all(&[9u8; 3 * 4096])?;
/// let src = MappedFileSource::open(&path)?;
/// std::fs::remove_file(&path)?; // the mapping and the open file keep it alive
///
/// assert_eq!(src.len(), 3 * 4096);
/// assert_eq!(src.direct().unwrap().len(), 3 * 4096); // the server copies from here
/// let mut buf = [0u8; 100];
/// src.read_at(5000, &mut buf)?;
/// assert_eq!(buf, [9u8; 100]);
/// # Ok(()) }
/// ```
///
/// Serving a region from it (the server copies from the page cache, no bounce buffer):
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{MappedFileSource, Region, ServerBuilder};
/// use userfaultfd::UffdBuilder;
///
/// let page = userfaultfd::page_size();
/// let image: Vec<u8> = (0..64 * page).map(|i| (i / page) as u8).collect();
/// let path = std::env::temp_dir().join(format!("uffd-doc-mapped-serve-{}", std::process::id()));
/// std::fs::write(&path, &image)?;
/// let source = Arc::new(MappedFileSource::open(&path)?);
/// std::fs::remove_file(&path)?;
///
/// let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(64 * page)?);
/// let server = ServerBuilder::new()
///     .region(Region::new(memory.clone(), source))
///     .start(UffdBuilder::new().user_mode_only(true).create()?)?;
/// assert_eq!(memory.read_obj::<u8>(10 * page)?, 10); // faults, copied from the file
/// let stats = server.shutdown_populated(Duration::from_secs(10))?;
/// assert_eq!(stats.bytes_copied as usize, 64 * page);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MappedFileSource {
    mapping: MemoryMapping,
    /// Kept open for `lseek(2)` (`SEEK_DATA`).
    inner: Opened,
}

impl MappedFileSource {
    /// Maps `file` (opened for reading) read-only and shared, over the length it has now
    /// (`fstat(2)`, or `lseek(2)` to the end for a block device).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty file (see the [type documentation](MappedFileSource)) or one
    /// larger than the address space; what `fstat(2)`, `lseek(2)` or `mmap(2)` report
    /// (`PermissionDenied` for a file not open for reading, `ENODEV` for a file that cannot be
    /// mapped, `ENOMEM`...).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use userfaultfd::serve::MappedFileSource;
    ///
    /// let path = std::env::temp_dir().join(format!("uffd-doc-mapped-new-{}", std::process::id()));
    /// std::fs::write(&path, b"")?;
    /// let e = MappedFileSource::new(std::fs::File::open(&path)?).unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput); // nothing to map
    /// std::fs::write(&path, b"not empty")?;
    /// let src = MappedFileSource::new(std::fs::File::open(&path)?)?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(userfaultfd::serve::PageSource::len(&src), 9);
    /// # Ok(()) }
    /// ```
    pub fn new(file: File) -> io::Result<MappedFileSource> {
        MappedFileSource::with_populate(file, false)
    }

    /// Opens `path` read-only and maps it (see [`new`](Self::new)).
    ///
    /// # Errors
    ///
    /// What `open(2)` reports, then as [`new`](Self::new).
    ///
    /// ```
    /// use userfaultfd::serve::MappedFileSource;
    /// let e = MappedFileSource::open("/nonexistent/snapshot").unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    /// ```
    pub fn open(path: impl AsRef<Path>) -> io::Result<MappedFileSource> {
        MappedFileSource::new(File::open(path)?)
    }

    /// As [`new`](Self::new), with `MAP_POPULATE` (`mmap(2)`): the whole file is read into
    /// the page cache and mapped before this returns, so the server's copies never wait for
    /// the disk. Costs the time to read the file (and page cache for all of it) up front.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use userfaultfd::serve::{MappedFileSource, PageSource};
    ///
    /// let path = std::env::temp_dir().join(format!("uffd-doc-populated-{}", std::process::id()));
    /// std::fs::write(&path, vec![1u8; 1 << 16])?;
    /// let src = MappedFileSource::new_populated(std::fs::File::open(&path)?)?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(src.len(), 1 << 16);
    /// # Ok(()) }
    /// ```
    pub fn new_populated(file: File) -> io::Result<MappedFileSource> {
        MappedFileSource::with_populate(file, true)
    }

    /// Opens `path` read-only and maps it with `MAP_POPULATE` (see
    /// [`new_populated`](Self::new_populated)).
    ///
    /// # Errors
    ///
    /// What `open(2)` reports, then as [`new`](Self::new).
    ///
    /// ```
    /// use userfaultfd::serve::MappedFileSource;
    /// assert!(MappedFileSource::open_populated("/nonexistent/snapshot").is_err());
    /// ```
    pub fn open_populated(path: impl AsRef<Path>) -> io::Result<MappedFileSource> {
        MappedFileSource::new_populated(File::open(path)?)
    }

    fn with_populate(file: File, populate: bool) -> io::Result<MappedFileSource> {
        let inner = Opened::new(file)?;
        if inner.len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty file (mmap(2) of length 0); use FileSource",
            ));
        }
        let size = usize::try_from(inner.len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {}-byte file does not fit in the address space",
                    inner.len
                ),
            )
        })?;
        let mut builder = MemoryMappingBuilder::new(size)
            .shared()
            .from_fd(&inner.file, 0)
            .protection(Protection::read());
        if populate {
            builder = builder.populate();
        }
        let mapping = builder.build()?;
        Ok(MappedFileSource { mapping, inner })
    }

    /// The open file (kept open for `lseek(2)`). Read it with positioned reads
    /// (`FileExt::read_at`): `is_zero` moves its file position.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use userfaultfd::serve::MappedFileSource;
    ///
    /// let path = std::env::temp_dir().join(format!("uffd-doc-mfile-{}", std::process::id()));
    /// std::fs::write(&path, b"abc")?;
    /// let src = MappedFileSource::open(&path)?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(src.file().metadata()?.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn file(&self) -> &File {
        &self.inner.file
    }

    /// The read-only mapping of the file (its [`size`](MemoryMapping::size) is the source's
    /// length), to read through its volatile accessors.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use userfaultfd::serve::MappedFileSource;
    ///
    /// let path = std::env::temp_dir().join(format!("uffd-doc-mapping-{}", std::process::id()));
    /// std::fs::write(&path, b"abcdef")?;
    /// let src = MappedFileSource::open(&path)?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!(src.mapping().size(), 6);
    /// assert_eq!(src.mapping().read_obj::<[u8; 3]>(3)?, *b"def");
    /// # Ok(()) }
    /// ```
    pub fn mapping(&self) -> &MemoryMapping {
        &self.mapping
    }
}

impl PageSource for MappedFileSource {
    /// The file's length when it was mapped.
    fn len(&self) -> u64 {
        self.inner.len
    }

    /// Copies from the mapping (volatile loads), faulting the file's pages in as needed.
    ///
    /// # Errors
    ///
    /// [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) (with the offset and length in the
    /// message) for a range past [`len`](PageSource::len). A file truncated below the range
    /// raises `SIGBUS` instead (see the [type documentation](MappedFileSource)).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.check(offset, buf.len())?;
        // In range, so `offset` fits in usize (the mapping's size does) and read_slice copies
        // everything; its range error cannot happen but is passed on rather than assumed away.
        let off =
            usize::try_from(offset).map_err(|_| past_end(offset, buf.len(), self.inner.len))?;
        self.mapping.read_slice(buf, off).map_err(io::Error::from)
    }

    /// As [`FileSource`'s](FileSource#impl-PageSource-for-FileSource): `lseek(2)` with
    /// `SEEK_DATA` (Linux 3.1) on the open file.
    fn is_zero(&self, offset: u64, len: u64) -> bool {
        self.inner.is_hole(offset, len)
    }

    /// The whole mapping: the server copies from the page cache directly.
    fn direct(&self) -> Option<DirectView<'_>> {
        Some(DirectView::from_region(&self.mapping))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A unique temporary file holding `bytes`, removed on drop.
    struct Temp(std::path::PathBuf);

    impl Temp {
        fn new(tag: &str, bytes: &[u8]) -> Temp {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "uffd-unit-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            File::create(&path).unwrap().write_all(bytes).unwrap();
            Temp(path)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn bounds_are_checked_against_the_length_at_open() {
        let t = Temp::new("bounds", &[5u8; 10_000]);
        let src = FileSource::open(&t.0).unwrap();
        let mut b = [0u8; 8];
        assert!(src.read_at(9_992, &mut b).is_ok());
        for off in [9_993, 10_000, u64::MAX - 3, u64::MAX] {
            let e = src.read_at(off, &mut b).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{off}");
            assert!(e.to_string().contains(&off.to_string()), "{e}");
        }
        // Growing the file does not grow the source.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&t.0)
            .unwrap()
            .write_all(&[1; 100])
            .unwrap();
        assert!(src.read_at(10_000, &mut b).is_err());
        assert_eq!(src.len(), 10_000);
    }

    #[test]
    fn is_zero_edges() {
        let t = Temp::new("edges", &[1u8; 4096]);
        let src = FileSource::open(&t.0).unwrap();
        assert!(!src.is_zero(0, 4096));
        assert!(!src.is_zero(4000, 96));
        assert!(
            src.is_zero(4096, 0),
            "an empty range at the end reads as nothing"
        );
        assert!(!src.is_zero(4000, 97), "past the end");
        assert!(!src.is_zero(u64::MAX, 2), "overflow");
    }

    #[test]
    fn truncated_file_is_an_error_not_zeros() {
        let t = Temp::new("trunc", &[3u8; 3 * 4096]);
        let src = FileSource::open(&t.0).unwrap();
        File::options()
            .write(true)
            .open(&t.0)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let mut page = [0u8; 4096];
        src.read_at(0, &mut page).unwrap();
        let e = src.read_at(4096, &mut page).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("truncated"), "{e}");
        // SEEK_DATA finds no data past the new end (ENXIO); that is not a hole to serve.
        assert!(!src.is_zero(4096, 4096));
    }

    #[test]
    fn empty_files() {
        let t = Temp::new("empty", &[]);
        let src = FileSource::open(&t.0).unwrap();
        assert!(src.is_empty());
        assert!(src.read_at(0, &mut []).is_ok());
        assert!(src.read_at(0, &mut [0u8]).is_err());
        let e = MappedFileSource::open(&t.0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn mapped_tail_is_bounded_by_the_file_length() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let t = Temp::new("tail", &bytes);
        let src = MappedFileSource::open(&t.0).unwrap();
        assert_eq!(src.mapping().size(), 5000);
        let mut b = [0u8; 8];
        src.read_at(4992, &mut b).unwrap();
        assert_eq!(b, bytes[4992..]);
        assert_eq!(
            src.read_at(4993, &mut b).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let v = src.direct().unwrap();
        assert_eq!(v.len(), 5000);
        assert!(v.at(4096, 904).is_some());
        assert!(v.at(4096, 4096).is_none());
    }
}
