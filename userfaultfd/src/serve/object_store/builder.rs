//! Opening an [`ObjectStoreSource`]: the store (given, or built from a URL with options and
//! the environment), the knobs, the `HEAD` that finds the object's size and ETag, and the
//! runtime the requests run on.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use ::object_store::path::Path;
use ::object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, ObjectStoreScheme, RetryConfig,
};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::cache::ChunkCache;
use super::{
    Counters, Inner, ObjectStoreSource, ObjectStoreSourceError, RetryPolicy, DEFAULT_CACHE_BYTES,
    DEFAULT_CHUNK_SIZE, DEFAULT_CONCURRENCY, DEFAULT_READAHEAD,
};

/// The runtime an [`ObjectStoreSource`] opened with
/// [`open_blocking`](ObjectStoreSourceBuilder::open_blocking) owns: a current-thread runtime
/// driven by its own thread, stopped (and the thread joined) when the source is dropped.
pub(super) struct OwnedRuntime {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OwnedRuntime {
    fn start() -> Result<(OwnedRuntime, Handle), ObjectStoreSourceError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ObjectStoreSourceError::Runtime(format!("cannot build a runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("uffd-objstore".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
                // Requests in flight are dropped; blocking tasks (local files) get a bound.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| ObjectStoreSourceError::Runtime(format!("cannot start a thread: {e}")))?;
        Ok((
            OwnedRuntime {
                stop: Some(stop),
                thread: Some(thread),
            },
            handle,
        ))
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            // The thread ends within the shutdown bound, unless this is that very thread (the
            // last reference dropped by a task of the runtime): then it ends on its own.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

enum Spec {
    Store {
        store: Arc<dyn ObjectStore>,
        path: Path,
    },
    Url {
        url: url::Url,
        options: Vec<(String, String)>,
    },
}

/// Configures and opens an [`ObjectStoreSource`]. From [`ObjectStoreSource::builder`] or
/// [`ObjectStoreSource::from_url`].
///
/// | knob | default | what it does |
/// |---|---|---|
/// | [`chunk_size`](Self::chunk_size) | 2 MiB | bytes per request (a power of two, 4 KiB to 1 GiB) |
/// | [`cache_bytes`](Self::cache_bytes) | 64 MiB | memory bound of fetched chunks (at least one chunk) |
/// | [`concurrency`](Self::concurrency) | 8 | requests in flight at most |
/// | [`readahead`](Self::readahead) | 4 | chunks fetched after each read's last (0: none) |
/// | [`retry`](Self::retry) | [`RetryPolicy::new`] | retries and the bounds of one chunk |
/// | [`len`](Self::len) | `HEAD` | the object's size, trusted without a `HEAD` |
/// | [`min_len`](Self::min_len) | none | fail at open if the object is shorter (the regions' size) |
/// | [`option`](Self::option) | environment | S3 settings, for URL-built stores |
pub struct ObjectStoreSourceBuilder {
    spec: Spec,
    chunk: u64,
    cache_bytes: usize,
    concurrency: usize,
    readahead: usize,
    retry: RetryPolicy,
    len: Option<u64>,
    min_len: Option<u64>,
    handle: Option<Handle>,
    cache_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ObjectStoreSourceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.spec {
            Spec::Store { store, path } => format!("{store} {path}"),
            Spec::Url { url, .. } => url.to_string(),
        };
        f.debug_struct("ObjectStoreSourceBuilder")
            .field("target", &target)
            .field("chunk", &self.chunk)
            .field("cache_bytes", &self.cache_bytes)
            .field("concurrency", &self.concurrency)
            .field("readahead", &self.readahead)
            .field("retry", &self.retry)
            .field("len", &self.len)
            .field("min_len", &self.min_len)
            .field("cache_file", &self.cache_file)
            .finish_non_exhaustive()
    }
}

fn config(msg: impl Into<String>) -> ObjectStoreSourceError {
    ObjectStoreSourceError::Config(msg.into())
}

impl ObjectStoreSourceBuilder {
    fn with_spec(spec: Spec) -> ObjectStoreSourceBuilder {
        ObjectStoreSourceBuilder {
            spec,
            chunk: DEFAULT_CHUNK_SIZE,
            cache_bytes: DEFAULT_CACHE_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
            readahead: DEFAULT_READAHEAD,
            retry: RetryPolicy::new(),
            len: None,
            min_len: None,
            handle: None,
            cache_file: None,
        }
    }

    pub(super) fn from_store(store: Arc<dyn ObjectStore>, path: Path) -> ObjectStoreSourceBuilder {
        Self::with_spec(Spec::Store { store, path })
    }

    pub(super) fn from_url(url: &str) -> Result<ObjectStoreSourceBuilder, ObjectStoreSourceError> {
        let url = url::Url::parse(url).map_err(|e| config(format!("bad URL {url:?}: {e}")))?;
        ObjectStoreScheme::parse(&url)
            .map_err(|e| config(format!("unsupported URL {url}: {e}")))?;
        Ok(Self::with_spec(Spec::Url {
            url,
            options: Vec::new(),
        }))
    }

    /// Bytes per request (default 2 MiB): a power of two from 4 KiB to 1 GiB. Larger chunks
    /// mean fewer requests and a longer wait for the first fault of each chunk.
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk = bytes;
        self
    }

    /// The memory bound of fetched chunks (default 64 MiB; at least one chunk). Chunks in
    /// flight come on top: at most [`concurrency`](Self::concurrency) of them.
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Requests in flight at most (default 8; at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Chunks fetched ahead of each read (default 4; 0 turns read-ahead off, for lazily
    /// populated memory that never reads the whole image).
    pub fn readahead(mut self, chunks: usize) -> Self {
        self.readahead = chunks;
        self
    }

    /// Retries and bounds (default [`RetryPolicy::new`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Also keep fetched chunks in a local file at `path` (created if missing; its index goes
    /// beside it, at `PATH.index`), so a chunk evicted from the memory cache, or wanted by a
    /// later source opened on the same file, is read from local disk instead of the store.
    /// A later source reuses the file's chunks only when the object's ETag, length and the
    /// chunk size are the ones they were fetched with (a source opened with [`len`](Self::len)
    /// has no ETag, so its file starts empty every time); one source at a time holds the file
    /// (a lock). The index lists only chunks already flushed to disk, so a crash loses chunks,
    /// never mixes them.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use object_store::{memory::InMemory, path::Path, ObjectStoreExt};
    /// use userfaultfd::serve::{ObjectStoreSource, PageSource};
    ///
    /// let store = Arc::new(InMemory::new());
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// rt.block_on(store.put(&Path::from("img"), vec![7u8; 4 << 20].into()))?;
    /// let dir = std::env::temp_dir().join(format!("uffd-doc-cache-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let mut page = vec![0u8; 4096];
    /// for run in 0..2 {
    ///     let source = ObjectStoreSource::builder(store.clone(), Path::from("img"))
    ///         .cache_file(dir.join("img.cache"))
    ///         .readahead(0)
    ///         .open_blocking()?;
    ///     source.read_at(0, &mut page)?;
    ///     // The first source fetched the chunk; the second read it from the file.
    ///     assert_eq!(source.stats().gets, if run == 0 { 1 } else { 0 });
    /// }
    /// assert!(page.iter().all(|&b| b == 7));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn cache_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.cache_file = Some(path.into());
        self
    }

    /// The object's size, when it is known (the memory size of the VM it backs): no `HEAD` at
    /// open, and no ETag check. An object shorter than this fails the reads past its end
    /// ([`ObjectStoreSourceError::TooShort`]).
    pub fn len(mut self, bytes: u64) -> Self {
        self.len = Some(bytes);
        self
    }

    /// Fails [`open`](Self::open) with [`ObjectStoreSourceError::TooShort`] if the object holds
    /// fewer than `bytes` (the size of the regions it will back).
    pub fn min_len(mut self, bytes: u64) -> Self {
        self.min_len = Some(bytes);
        self
    }

    /// The runtime the source's requests run on (default: the one
    /// [`open`](Self::open) is awaited on; for [`open_blocking`](Self::open_blocking), a runtime
    /// of the source's own). Blocking reads need that runtime to keep running.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// A setting of a store built from a URL, overriding the environment: a key of
    /// `object_store`'s `AmazonS3ConfigKey` for S3 (`endpoint`, `access_key_id`,
    /// `secret_access_key`, `token`, `region`, `allow_http`, `timeout`, ...). An unknown key
    /// fails [`open`](Self::open) with [`ObjectStoreSourceError::Config`]. Ignored for a store
    /// passed in.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Spec::Url { options, .. } = &mut self.spec {
            options.push((key.into(), value.into()));
        }
        self
    }

    fn check(&self) -> Result<(), ObjectStoreSourceError> {
        if !self.chunk.is_power_of_two() || !(4096..=1 << 30).contains(&self.chunk) {
            return Err(config(format!(
                "chunk_size {} is not a power of two from 4 KiB to 1 GiB",
                self.chunk
            )));
        }
        if (self.cache_bytes as u64) < self.chunk {
            return Err(config(format!(
                "cache_bytes {} is smaller than a chunk ({})",
                self.cache_bytes, self.chunk
            )));
        }
        if self.concurrency == 0 {
            return Err(config("concurrency must be at least 1"));
        }
        self.retry.check()
    }

    /// The store and the object's path this builder reads: the ones given, or the ones built
    /// from the URL, options and environment as [`open`](Self::open) builds them (the same
    /// client, e.g. to upload the image first).
    ///
    /// # Errors
    ///
    /// [`ObjectStoreSourceError::Config`] for a URL, option or setting the store refuses.
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, Path), ObjectStoreSourceError> {
        match &self.spec {
            Spec::Store { store, path } => Ok((store.clone(), path.clone())),
            Spec::Url { url, options } => {
                let (scheme, _) = ObjectStoreScheme::parse(url)
                    .map_err(|e| config(format!("unsupported URL {url}: {e}")))?;
                if scheme != ObjectStoreScheme::AmazonS3 {
                    if let Some((k, _)) = options.first() {
                        return Err(config(format!("option {k:?} applies to s3:// URLs only")));
                    }
                    let (store, path) = ::object_store::parse_url(url)
                        .map_err(|e| config(format!("cannot open {url}: {e}")))?;
                    return Ok((Arc::from(store), path));
                }
                let ms = |d: Duration| format!("{}ms", d.as_millis());
                // The client's retries are off: the source's policy is the only one.
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        ms(self.retry.get_attempt_timeout()),
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        ms(self.retry.get_connect_timeout()),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 0,
                        retry_timeout: self.retry.get_deadline(),
                    });
                for (k, v) in options {
                    let key: AmazonS3ConfigKey = k
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|_| config(format!("unknown S3 option {k:?}")))?;
                    b = b.with_config(key, v.clone());
                }
                let store = b
                    .build()
                    .map_err(|e| config(format!("cannot configure S3 for {url}: {e}")))?;
                let (_, path) = ObjectStoreScheme::parse(url)
                    .map_err(|e| config(format!("unsupported URL {url}: {e}")))?;
                Ok((Arc::new(store), path))
            }
        }
    }

    /// Opens the source on the runtime this is awaited on (or the one given with
    /// [`runtime`](Self::runtime)): builds the store, and asks the object's size and ETag
    /// (`HEAD`, under the retry policy) unless [`len`](Self::len) was given.
    ///
    /// # Errors
    ///
    /// [`ObjectStoreSourceError::Config`] for bad settings or when not awaited inside a tokio
    /// runtime, [`NotFound`](ObjectStoreSourceError::NotFound),
    /// [`PermissionDenied`](ObjectStoreSourceError::PermissionDenied),
    /// [`TooShort`](ObjectStoreSourceError::TooShort) against [`min_len`](Self::min_len), and
    /// the store's other errors.
    pub async fn open(self) -> Result<ObjectStoreSource, ObjectStoreSourceError> {
        let handle = match &self.handle {
            Some(h) => h.clone(),
            None => Handle::try_current().map_err(|_| {
                config("open() must be awaited inside a tokio runtime; use open_blocking()")
            })?,
        };
        let inner = self.open_inner(handle).await?;
        Ok(ObjectStoreSource::assemble(inner, None))
    }

    /// Opens the source from a plain thread, on a runtime the source owns (one thread), or on
    /// the one given with [`runtime`](Self::runtime). Blocks for the `HEAD`, at most about
    /// twice the retry policy's deadline.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); [`ObjectStoreSourceError::Runtime`] when called on a thread of a
    /// tokio runtime (await [`open`](Self::open) there) or when no runtime could be started.
    pub fn open_blocking(self) -> Result<ObjectStoreSource, ObjectStoreSourceError> {
        if Handle::try_current().is_ok() {
            return Err(ObjectStoreSourceError::Runtime(
                "open_blocking() was called on a thread of a tokio runtime: await open() there"
                    .into(),
            ));
        }
        let (owned, handle) = match &self.handle {
            Some(h) => (None, h.clone()),
            None => {
                let (rt, h) = OwnedRuntime::start()?;
                (Some(rt), h)
            }
        };
        let bound = self.retry.get_deadline() * 2 + Duration::from_secs(1);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let h = handle.clone();
        handle.spawn(async move {
            let _ = tx.send(self.open_inner(h).await);
        });
        let inner = match rx.recv_timeout(bound) {
            Ok(r) => r?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(ObjectStoreSourceError::Runtime(format!(
                    "opening the object did not finish within {bound:?}"
                )))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ObjectStoreSourceError::Runtime(
                    "the runtime shut down while opening the object".into(),
                ))
            }
        };
        Ok(ObjectStoreSource::assemble(inner, owned))
    }

    async fn open_inner(self, handle: Handle) -> Result<Inner, ObjectStoreSourceError> {
        self.check()?;
        let (store, path) = self.store()?;
        let path_text = path.to_string();
        let counters = Counters::default();
        let (len, e_tag) = match self.len {
            Some(len) => (len, None),
            None => {
                let meta = self
                    .retry
                    .run(&path_text, &counters.retries, || {
                        let (store, path) = (store.clone(), path.clone());
                        async move { store.head(&path).await }
                    })
                    .await?;
                (meta.size, meta.e_tag)
            }
        };
        if let Some(min) = self.min_len {
            if len < min {
                return Err(ObjectStoreSourceError::TooShort {
                    path: path_text,
                    len,
                    needed: min,
                });
            }
        }
        let disk = match &self.cache_file {
            Some(p) => {
                let (p, chunk, tag) = (p.clone(), self.chunk, e_tag.clone());
                let open = move || super::disk::CacheFile::open(&p, len, chunk, tag.as_deref());
                let file = tokio::task::spawn_blocking(open).await.map_err(|e| {
                    ObjectStoreSourceError::Runtime(format!("opening the cache file: {e}"))
                })??;
                Some(Arc::new(file))
            }
            None => None,
        };
        Ok(Inner {
            store,
            path,
            path_text,
            len,
            e_tag,
            chunk: self.chunk,
            cache: Arc::new(ChunkCache::new(self.cache_bytes, self.chunk as usize)),
            retry: self.retry,
            gate: Semaphore::new(self.concurrency),
            concurrency: self.concurrency,
            readahead: self.readahead,
            handle,
            counters,
            disk,
        })
    }
}
