//! [`ObjectStoreSource`]: a snapshot image read from object storage, chunk by chunk, as its
//! pages are faulted in (feature `object-store`). The documentation is on the type.

mod builder;
mod cache;
mod disk;
mod error;
mod retry;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::object_store::path::Path;
use ::object_store::{GetOptions, ObjectStore};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

pub use builder::ObjectStoreSourceBuilder;
pub use error::ObjectStoreSourceError;
pub use retry::RetryPolicy;

use super::{AsyncPageSource, PageSource, SourceFuture};
use builder::OwnedRuntime;
use cache::{ChunkCache, Flight, FlightGuard, Lookup};
use disk::CacheFile;

/// Default [`ObjectStoreSourceBuilder::chunk_size`]: 2 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;
/// Default [`ObjectStoreSourceBuilder::cache_bytes`]: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Default [`ObjectStoreSourceBuilder::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default [`ObjectStoreSourceBuilder::readahead`].
pub const DEFAULT_READAHEAD: usize = 4;

/// A snapshot image read from object storage (S3 and every other
/// back end of the [`object_store`] crate), chunk by chunk, as its pages are faulted in.
/// Feature `object-store` (which needs Rust 1.85, `object_store`'s own minimum; the rest of
/// the crate builds with 1.80).
///
/// # Layout: one object, read in ranged chunks
///
/// The image is **one object**, exactly the bytes of the memory file (what `aws s3 cp mem
/// s3://bucket/key` or [`ObjectStore::put`](object_store::ObjectStoreExt::put) uploads). The
/// source reads it in aligned chunks (default 2 MiB) with ranged `GET`s. Why one object rather
/// than one object per chunk:
///
/// - No special upload, manifest or naming scheme: the object an eager restore would download
///   is the object this source reads, and any tool can write or inspect it.
/// - **One version**: the source records the object's ETag when it opens it and sends it with
///   every request (`If-Match`), so an object replaced during a restore fails the reads
///   ([`ObjectStoreSourceError::Changed`]) instead of mixing chunks of two images. Separate
///   chunk objects have no such single version.
/// - On S3 a ranged `GET` costs the same whatever the object's size, and ranges of one object
///   are fetched concurrently as well as separate objects are. (Local S3 emulators may differ:
///   moto reads the whole stored object for every ranged `GET`, so there a chunk of a 256 MiB
///   object costs as much as downloading it; figures measured against it say more about moto
///   than about this source.)
///
/// # Chunks, cache, single flight
///
/// A read needs the chunks it covers. A chunk is fetched **once** however many faults want it
/// at the same time: the first read starts the request (as a task on the source's runtime, so
/// it completes even if that reader gives up) and every other read of the chunk waits for the
/// same answer. Fetched chunks stay in a cache bounded by
/// [`cache_bytes`](ObjectStoreSourceBuilder::cache_bytes) (default 64 MiB); when it is full, a
/// chunk whose every page was read goes first (a server copies each page once), then the least
/// recently used one. After a read, up to [`readahead`](ObjectStoreSourceBuilder::readahead)
/// following chunks are fetched too (default 4), while the cache has room for them and fewer
/// than [`concurrency`](ObjectStoreSourceBuilder::concurrency) requests are in flight (default
/// 8), so a background fill moving through the image keeps several requests going.
///
/// With the threaded [`Server`](crate::serve::Server), set its
/// [`prefetch`](crate::serve::ServerBuilder::prefetch) and
/// [`prefetch_max`](crate::serve::ServerBuilder::prefetch_max) to the source's
/// [`chunk_size`](ObjectStoreSource::chunk_size): a fault then brings in its whole chunk at
/// once, and no chunk has to be fetched again after eviction.
///
/// # Failures
///
/// Requests are retried with backoff within short bounds ([`RetryPolicy`]), so a fault waits
/// at most [`RetryPolicy::deadline`] for a store that does not answer. Errors are typed
/// ([`ObjectStoreSourceError`]: missing object, refused credentials, an object shorter than
/// the regions, a changed object, time-outs); the server gets them as an [`std::io::Error`]
/// whose kind says which, and applies its [`FailurePolicy`](crate::serve::FailurePolicy).
///
/// # Sync and async
///
/// The source is an [`AsyncPageSource`] (for async servers) and a [`PageSource`] (for the
/// threaded [`Server`](crate::serve::Server)). Its requests run on a tokio runtime:
/// [`ObjectStoreSourceBuilder::open_blocking`] starts one the source owns (one thread, named
/// `uffd-objstore`), [`ObjectStoreSourceBuilder::open`] uses the runtime it is awaited on. The
/// blocking [`PageSource::read_at`] waits for that runtime from the calling thread, so it must
/// not be called from a thread of a tokio runtime (it returns an error there instead of
/// blocking the runtime, which could deadlock it); the server's threads are plain threads.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{ObjectStoreSource, Region, ServerBuilder};
///
/// // Credentials and region from the environment (AWS_ACCESS_KEY_ID, ...), as object_store's
/// // AmazonS3Builder::from_env reads them; options override them.
/// let source = ObjectStoreSource::from_url("s3://snapshots/vm1/mem")?
///     .option("endpoint", "http://127.0.0.1:9000")
///     .option("allow_http", "true")
///     .open_blocking()?;
/// let chunk = source.chunk_size() as usize;
/// let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(source.len() as usize)?);
/// let server = ServerBuilder::new()
///     .prefetch(chunk)
///     .prefetch_max(chunk)
///     .region(Region::new(memory.clone(), Arc::new(source)))
///     .start(userfaultfd::UffdBuilder::new().create()?)?;
/// server.wait_populated(Duration::from_secs(60))?;
/// # Ok(()) }
/// ```
///
/// Build it with [`ObjectStoreSource::builder`] (a store and a path) or
/// [`ObjectStoreSource::from_url`] (a URL, options and the environment).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use object_store::{memory::InMemory, path::Path, ObjectStore, ObjectStoreExt};
/// use userfaultfd::serve::{ObjectStoreSource, PageSource};
///
/// let store = Arc::new(InMemory::new());
/// let image: Vec<u8> = (0..(3u32 << 20)).map(|i| (i >> 12) as u8).collect();
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// rt.block_on(store.put(&Path::from("img"), image.into()))?;
///
/// let source = ObjectStoreSource::builder(store, Path::from("img"))
///     .readahead(0) // only what is read
///     .open_blocking()?;
/// assert_eq!(source.len(), 3 << 20);
/// let mut page = vec![0u8; 4096];
/// source.read_at(5 * 4096, &mut page)?; // GETs the first 2 MiB chunk
/// assert!(page.iter().all(|&b| b == 5));
/// assert_eq!(source.stats().gets, 1);
/// # Ok(()) }
/// ```
pub struct ObjectStoreSource {
    inner: Arc<Inner>,
    _runtime: Option<OwnedRuntime>,
}

impl Drop for ObjectStoreSource {
    fn drop(&mut self) {
        // Chunk writes to the cache file run on the runtime's blocking threads, and a runtime
        // shutting down drops the ones not started: let them finish (briefly) while it runs,
        // so the file's index, written when the last of them ends, lists every fetched chunk.
        if let Some(disk) = &self.inner.disk {
            disk.wait_written(Duration::from_secs(2));
        }
    }
}

impl std::fmt::Debug for ObjectStoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreSource")
            .field("store", &format_args!("{}", self.inner.store))
            .field("path", &self.inner.path_text)
            .field("len", &self.inner.len)
            .field("chunk_size", &self.inner.chunk)
            .field("e_tag", &self.inner.e_tag)
            .finish_non_exhaustive()
    }
}

/// What an [`ObjectStoreSource`] did so far ([`ObjectStoreSource::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectStoreStats {
    /// Ranged `GET` requests sent (retries included).
    pub gets: u64,
    /// Chunks fetched successfully.
    pub chunks_fetched: u64,
    /// Bytes of chunks fetched successfully.
    pub bytes_fetched: u64,
    /// Requests retried after an error worth retrying.
    pub retries: u64,
    /// Chunk fetches that failed for good.
    pub failed_fetches: u64,
    /// Reads served wholly from cached chunks.
    pub cache_hits: u64,
    /// Times a read waited for a fetch another read had started (single flight).
    pub joined_fetches: u64,
    /// Fetches started by read-ahead.
    pub readaheads: u64,
    /// Chunks evicted from the cache.
    pub evictions: u64,
    /// Bytes of chunks in the cache now.
    pub cached_bytes: usize,
    /// Chunks read from the [cache file](ObjectStoreSourceBuilder::cache_file) instead of the
    /// store.
    pub cache_file_hits: u64,
    /// Chunks the cache file holds now (fetched by this source or an earlier one).
    pub cache_file_chunks: u64,
    /// Cache-file reads and writes that failed (each chunk concerned went to the store).
    pub cache_file_errors: u64,
}

#[derive(Default)]
struct Counters {
    gets: AtomicU64,
    chunks: AtomicU64,
    bytes: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    hits: AtomicU64,
    joins: AtomicU64,
    readaheads: AtomicU64,
    disk_hits: AtomicU64,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    path: Path,
    path_text: String,
    len: u64,
    e_tag: Option<String>,
    chunk: u64,
    cache: Arc<ChunkCache>,
    retry: RetryPolicy,
    gate: Semaphore,
    concurrency: usize,
    readahead: usize,
    handle: Handle,
    counters: Counters,
    disk: Option<Arc<CacheFile>>,
}

/// A chunk a read needs: cached already, or being fetched.
enum Need {
    Have(Bytes),
    Wait(Arc<Flight>),
}

impl Inner {
    fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk)
    }

    /// The chunk indices `offset..offset + len` covers, after checking it lies in the object.
    fn span(&self, offset: u64, len: usize) -> Result<Option<(u64, u64)>, ObjectStoreSourceError> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(ObjectStoreSourceError::TooShort {
                path: self.path_text.clone(),
                len: self.len,
                needed: offset.saturating_add(len as u64),
            });
        };
        Ok((len > 0).then(|| (offset / self.chunk, (end - 1) / self.chunk)))
    }

    /// Looks chunk `index` up, starting its fetch if nobody has.
    fn need(self: &Arc<Self>, index: u64) -> Need {
        match self.cache.lookup(index) {
            Lookup::Hit(b) => Need::Have(b),
            Lookup::Wait(f) => {
                self.counters.joins.fetch_add(1, Ordering::Relaxed);
                Need::Wait(f)
            }
            Lookup::Fetch(f) => {
                self.spawn_fetch(index, f.clone());
                Need::Wait(f)
            }
        }
    }

    /// Looks chunks `first..=last` up (starting the fetches nobody started), then starts the
    /// read-ahead after them.
    fn needs(self: &Arc<Self>, first: u64, last: u64) -> Vec<Need> {
        let needs = (first..=last).map(|i| self.need(i)).collect();
        if self.readahead > 0 {
            self.read_ahead(last);
        }
        needs
    }

    /// Starts read-ahead of the chunks after `last`, as room and the concurrency allow.
    fn read_ahead(self: &Arc<Self>, last: u64) {
        let max_loading = self.concurrency.saturating_sub(1);
        for i in (last + 1)..(last + 1 + self.readahead as u64).min(self.chunks()) {
            if let Some(f) = self.cache.try_readahead(i, max_loading) {
                self.counters.readaheads.fetch_add(1, Ordering::Relaxed);
                self.spawn_fetch(i, f);
            }
        }
    }

    /// Fetches chunk `index` in a task of the source's runtime, which completes `flight`.
    fn spawn_fetch(self: &Arc<Self>, index: u64, flight: Arc<Flight>) {
        let mut guard = FlightGuard {
            cache: self.cache.clone(),
            index,
            flight,
            finished: false,
        };
        let inner = self.clone();
        // If the runtime is gone, the future is dropped at once and the guard fails the flight.
        self.handle.spawn(async move {
            let (outcome, fresh) = inner.fetch(index).await;
            guard.finished = true;
            inner.cache.finish(index, &guard.flight, outcome, fresh);
        });
    }

    /// One chunk from the store, within the retry policy; `false` with an error held from a
    /// recent failure (no request made).
    async fn fetch(&self, index: u64) -> (Result<Bytes, ObjectStoreSourceError>, bool) {
        // The cache file first: a chunk it holds needs no request, even while the store fails.
        if let Some(disk) = self.disk.as_ref().filter(|d| d.has(index)) {
            let disk = Arc::clone(disk);
            if let Ok(Some(b)) = tokio::task::spawn_blocking(move || disk.read_chunk(index)).await {
                self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                return (Ok(b), true);
            }
        }
        let hold = self.retry.get_failure_hold();
        if let Some(e) = self.cache.held_failure(hold) {
            return (Err(e), false);
        }
        let Ok(_permit) = self.gate.acquire().await else {
            let e = ObjectStoreSourceError::Runtime("the source is shutting down".into());
            return (Err(e), false);
        };
        if let Some(e) = self.cache.held_failure(hold) {
            return (Err(e), false);
        }
        let start = index * self.chunk;
        let end = (start + self.chunk).min(self.len);
        let got = self
            .retry
            .run(&self.path_text, &self.counters.retries, || {
                self.counters.gets.fetch_add(1, Ordering::Relaxed);
                let opts = GetOptions::new()
                    .with_range(Some(start..end))
                    .with_if_match(self.e_tag.clone());
                let store = self.store.clone();
                let path = self.path.clone();
                async move { store.get_opts(&path, opts).await?.bytes().await }
            })
            .await;
        let res = match got {
            // A range reaching past a truncated object's end comes back short, not failed.
            Ok(b) if (b.len() as u64) < end - start => Err(ObjectStoreSourceError::TooShort {
                path: self.path_text.clone(),
                len: start + b.len() as u64,
                needed: end,
            }),
            Ok(b) => Ok(b.slice(..(end - start) as usize)),
            Err(e) => Err(e),
        };
        match &res {
            Ok(b) => {
                if let Some(disk) = &self.disk {
                    // Written beside the read: the waiting faults need not wait for the disk.
                    let write = disk.write_later(index, b.clone());
                    drop(tokio::task::spawn_blocking(move || write.run()));
                }
                self.counters.chunks.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                self.cache.clear_failure();
            }
            Err(_) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        (res, true)
    }

    /// Copies the part of chunk `index` that `offset..` covers into `buf`, returns the bytes
    /// copied.
    fn copy_out(&self, index: u64, data: &[u8], offset: u64, buf: &mut [u8]) -> usize {
        let chunk_start = index * self.chunk;
        let from = offset.max(chunk_start);
        let at = (from - offset) as usize;
        let in_chunk = (from - chunk_start) as usize;
        let n = (data.len() - in_chunk).min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&data[in_chunk..in_chunk + n]);
        self.cache.consume(index, in_chunk, in_chunk + n);
        n
    }

    /// The fast path: `buf` filled from cached chunks, or `false`.
    fn read_cached(&self, first: u64, last: u64, offset: u64, buf: &mut [u8]) -> bool {
        let Some(chunks) = self.cache.all_cached(first..=last) else {
            return false;
        };
        for (i, data) in (first..=last).zip(&chunks) {
            self.copy_out(i, data, offset, buf);
        }
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Starts a read of `buf.len()` bytes at `offset`: the chunks it still has to wait for, or
    /// `None` when it is done (empty, or served from cached chunks; read-ahead started).
    fn begin(
        self: &Arc<Self>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<(u64, u64)>, ObjectStoreSourceError> {
        let Some((first, last)) = self.span(offset, buf.len())? else {
            return Ok(None);
        };
        if self.read_cached(first, last, offset, buf) {
            if self.readahead > 0 {
                self.read_ahead(last);
            }
            return Ok(None);
        }
        Ok(Some((first, last)))
    }

    async fn read(
        self: &Arc<Self>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ObjectStoreSourceError> {
        let Some((first, last)) = self.begin(offset, buf)? else {
            return Ok(());
        };
        for (i, need) in (first..=last).zip(self.needs(first, last)) {
            let data = match need {
                Need::Have(b) => b,
                Need::Wait(f) => f.wait().await?,
            };
            self.copy_out(i, &data, offset, buf);
        }
        Ok(())
    }

    fn read_blocking(
        self: &Arc<Self>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ObjectStoreSourceError> {
        let Some((first, last)) = self.begin(offset, buf)? else {
            return Ok(());
        };
        if Handle::try_current().is_ok() {
            return Err(ObjectStoreSourceError::Runtime(
                "the blocking PageSource::read_at of an ObjectStoreSource was called on a thread \
                 of a tokio runtime, where waiting could deadlock it: use AsyncPageSource::read_at \
                 there"
                    .into(),
            ));
        }
        let needs = self.needs(first, last);
        // The fetch ends within the deadline; the margin covers waiting for a permit.
        let bound = self.retry.get_deadline() * 2 + Duration::from_secs(1);
        for (i, need) in (first..=last).zip(needs) {
            let data = match need {
                Need::Have(b) => b,
                Need::Wait(f) => match f.wait_blocking(bound) {
                    Some(outcome) => outcome?,
                    None => {
                        return Err(ObjectStoreSourceError::TimedOut {
                            path: self.path_text.clone(),
                            elapsed: bound,
                            attempts: 0,
                        })
                    }
                },
            };
            self.copy_out(i, &data, offset, buf);
        }
        Ok(())
    }
}

impl ObjectStoreSource {
    /// A builder for the object at `path` of `store`.
    pub fn builder(store: Arc<dyn ObjectStore>, path: Path) -> ObjectStoreSourceBuilder {
        ObjectStoreSourceBuilder::from_store(store, path)
    }

    /// A builder for the object a URL names, as `object_store` users write them:
    /// `s3://bucket/key` (also `s3a://`, and `https://` S3 endpoints), `file:///path`,
    /// `memory:///key`. For S3, settings come from the environment first (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ... as
    /// `AmazonS3Builder::from_env` reads them), then from
    /// [`option`](ObjectStoreSourceBuilder::option)s (`endpoint`, `access_key_id`,
    /// `secret_access_key`, `region`, `allow_http`, ...: the keys of `AmazonS3ConfigKey`).
    ///
    /// # Errors
    ///
    /// [`ObjectStoreSourceError::Config`] for a URL that does not parse.
    pub fn from_url(url: &str) -> Result<ObjectStoreSourceBuilder, ObjectStoreSourceError> {
        ObjectStoreSourceBuilder::from_url(url)
    }

    fn assemble(inner: Inner, runtime: Option<OwnedRuntime>) -> ObjectStoreSource {
        ObjectStoreSource {
            inner: Arc::new(inner),
            _runtime: runtime,
        }
    }

    /// Bytes in the object (as `HEAD` said at open, or as
    /// [`ObjectStoreSourceBuilder::len`] set).
    pub fn len(&self) -> u64 {
        self.inner.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The chunk size: the granularity of every request.
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk
    }

    /// The object's path in the store.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The ETag sent with every request (`If-Match`), if the store gave one at open.
    pub fn e_tag(&self) -> Option<&str> {
        self.inner.e_tag.as_deref()
    }

    /// The counters so far.
    pub fn stats(&self) -> ObjectStoreStats {
        let c = &self.inner.counters;
        let (cached_bytes, _, evictions) = self.inner.cache.usage();
        ObjectStoreStats {
            gets: c.gets.load(Ordering::Relaxed),
            chunks_fetched: c.chunks.load(Ordering::Relaxed),
            bytes_fetched: c.bytes.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            failed_fetches: c.failed.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            joined_fetches: c.joins.load(Ordering::Relaxed),
            readaheads: c.readaheads.load(Ordering::Relaxed),
            evictions,
            cached_bytes,
            cache_file_hits: c.disk_hits.load(Ordering::Relaxed),
            cache_file_chunks: self.inner.disk.as_ref().map_or(0, |d| d.chunks_present()),
            cache_file_errors: self.inner.disk.as_ref().map_or(0, |d| d.errors()),
        }
    }

    /// Flushes the [cache file](ObjectStoreSourceBuilder::cache_file) to disk and writes its
    /// index, so a later source finds every chunk fetched so far (otherwise the index is written
    /// every few dozen chunks, when the file holds the whole object, and when the source is
    /// dropped). Waits (at most 10 s) for the writes of chunks already fetched. Does nothing
    /// without a cache file. Blocking (an `fdatasync`).
    ///
    /// # Errors
    ///
    /// The file system's error.
    pub fn flush_cache_file(&self) -> io::Result<()> {
        let Some(disk) = &self.inner.disk else {
            return Ok(());
        };
        // Chunks fetched before this call are being written beside their reads: wait for them.
        if !disk.wait_written(Duration::from_secs(10)) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "chunk writes to the cache file did not finish within 10 s",
            ));
        }
        disk.flush()
    }

    /// Reads `buf.len()` bytes at `offset` (async; what [`AsyncPageSource::read_at`] does),
    /// with the typed error.
    ///
    /// # Errors
    ///
    /// See [`ObjectStoreSourceError`].
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ObjectStoreSourceError> {
        self.inner.read(offset, buf).await
    }

    /// Reads `buf.len()` bytes at `offset`, blocking the calling thread (what
    /// [`PageSource::read_at`] does), with the typed error. Not on a tokio runtime's thread
    /// (see [`ObjectStoreSource`], "Sync and async").
    ///
    /// # Errors
    ///
    /// See [`ObjectStoreSourceError`]; [`ObjectStoreSourceError::Runtime`] on a runtime thread.
    pub fn read_blocking(&self, offset: u64, buf: &mut [u8]) -> Result<(), ObjectStoreSourceError> {
        self.inner.read_blocking(offset, buf)
    }
}

impl PageSource for ObjectStoreSource {
    fn len(&self) -> u64 {
        self.inner.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner
            .read_blocking(offset, buf)
            .map_err(io::Error::from)
    }
}

impl AsyncPageSource for ObjectStoreSource {
    fn len(&self) -> u64 {
        self.inner.len
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move { self.inner.read(offset, buf).await.map_err(io::Error::from) })
    }

    fn chunk_size(&self) -> Option<u64> {
        Some(self.inner.chunk)
    }
}
