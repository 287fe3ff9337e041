//! `ObjectStoreSource` against a real S3 server (moto, started per test on a free loopback
//! port; `.ci/moto-setup` installs it, and a test without it is reported as skipped): a restore
//! through the threaded server verified byte for byte, async reads, a missing object, a
//! truncated one, refused credentials, the server killed in the middle of a restore (zero fill,
//! and SIGBUS in a re-executed child), and one GET per chunk however many threads fault on it.
//!
//! Every wait is bounded: faulting reads run on helper threads awaited with a timeout, the
//! source's requests run under a short retry policy, and the server's population is awaited
//! with `wait_populated`.

mod common;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use test_kit::pattern::{dense_byte, dense_image};

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use mmap::MemoryMapping;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use userfaultfd::serve::{
    AsyncPageSource, FailurePolicy, ObjectStoreSource, ObjectStoreSourceError, PageSource, Region,
    RetryPolicy, ServerBuilder,
};
use userfaultfd::{FeatureFlags, UffdBuilder};

use common::moto::Moto;

const TIMEOUT: Duration = Duration::from_secs(30);
const BUCKET: &str = "images";
const MIB: usize = 1 << 20;
const CHUNK: usize = 2 * MIB;
const CHILD_ENV: &str = "UFFD_OBJSTORE_CHILD";

fn ps() -> usize {
    userfaultfd::page_size()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An S3 client of `moto` with the given key.
fn s3(moto: &Moto, key: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(key)
            .with_secret_access_key("secret")
            .build()
            .unwrap(),
    )
}

/// moto with the bucket and `len` bytes of [`image`] at `img`, and a client; `None` (after
/// reporting the skip) without moto.
fn moto_with_image(len: usize) -> Option<(Moto, Arc<dyn ObjectStore>, Vec<u8>)> {
    let moto = match Moto::start() {
        Ok(m) => m,
        Err(reason) => {
            test_kit::report::skip(reason);
            return None;
        }
    };
    moto.create_bucket(BUCKET);
    let store = s3(&moto, "testing");
    let bytes = dense_image(len);
    rt().block_on(store.put(&Path::from("img"), PutPayload::from(bytes.clone())))
        .unwrap();
    Some((moto, store, bytes))
}

/// Short bounds, so a dead server fails a read in well under a second.
/// A source reading only what is asked (no read-ahead), failing fast.
fn lazy_source(store: Arc<dyn ObjectStore>) -> ObjectStoreSource {
    ObjectStoreSource::builder(store, Path::from("img"))
        .readahead(0)
        .retry(fast_retry())
        .open_blocking()
        .unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::new()
        .max_retries(1)
        .initial_backoff(Duration::from_millis(10))
        .attempt_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .deadline(Duration::from_secs(4))
}

/// Reads byte `off` of `m` on a helper thread, bounded.
fn touch(m: &Arc<MemoryMapping>, off: usize) -> u8 {
    let (tx, rx) = mpsc::channel();
    let m = m.clone();
    std::thread::spawn(move || {
        let _ = tx.send(m.read_obj::<u8>(off).unwrap());
    });
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("a read of offset {off} did not finish within {TIMEOUT:?}"))
}

fn verify(m: &MemoryMapping, bytes: &[u8]) {
    let mut got = vec![0u8; bytes.len()];
    m.read_slice(&mut got, 0).unwrap();
    if let Some(i) = (0..bytes.len()).find(|&i| got[i] != bytes[i]) {
        panic!("byte {i:#x}: {} instead of {}", got[i], bytes[i]);
    }
}

fn user_uffd() -> userfaultfd::Uffd {
    UffdBuilder::new().user_mode_only(true).create().unwrap()
}

#[test]
fn restore_through_the_threaded_server_from_s3() {
    let len = 8 * MIB + 3 * ps(); // a short last chunk
    let Some((moto, _store, bytes)) = moto_with_image(len) else {
        return;
    };
    // Built from a URL with options, as a user would.
    let src = ObjectStoreSource::from_url(&format!("s3://{BUCKET}/img"))
        .unwrap()
        .option("endpoint", moto.endpoint())
        .option("allow_http", "true")
        .option("region", "us-east-1")
        .option("access_key_id", "testing")
        .option("secret_access_key", "secret")
        .retry(fast_retry())
        .open_blocking()
        .unwrap();
    assert_eq!(PageSource::len(&src), len as u64);
    assert!(src.e_tag().is_some(), "moto gives an ETag");
    let src = Arc::new(src);
    let m = Arc::new(MemoryMapping::new_private(len).unwrap());
    let server = ServerBuilder::new()
        .prefetch(CHUNK)
        .prefetch_max(CHUNK)
        .region(Region::new(m.clone(), src.clone()))
        .start(user_uffd())
        .unwrap();
    assert_eq!(touch(&m, 5 * MIB + 17), dense_byte(5 * MIB + 17));
    server.wait_populated(TIMEOUT).unwrap();
    verify(&m, &bytes);
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.source_errors, 0);
    let s = src.stats();
    assert_eq!(s.chunks_fetched, 5, "{s:?}");
    assert_eq!(s.gets, 5, "one GET per chunk: {s:?}");
    assert_eq!(s.bytes_fetched, len as u64);
}

#[test]
fn async_reads_straight_from_the_source() {
    let Some((_moto, store, bytes)) = moto_with_image(6 * MIB) else {
        return;
    };
    rt().block_on(async {
        let src = ObjectStoreSource::builder(store, Path::from("img"))
            .chunk_size(MIB as u64)
            .retry(fast_retry())
            .open()
            .await
            .unwrap();
        assert_eq!(AsyncPageSource::chunk_size(&src), Some(MIB as u64));
        // Across a chunk boundary, then inside a cached chunk.
        let mut buf = vec![0u8; 3 * ps()];
        let at = MIB - ps();
        AsyncPageSource::read_at(&src, at as u64, &mut buf)
            .await
            .unwrap();
        assert_eq!(buf, bytes[at..at + buf.len()]);
        let mut one = vec![0u8; 100];
        AsyncPageSource::read_at(&src, 5 * MIB as u64 + 7, &mut one)
            .await
            .unwrap();
        assert_eq!(one, bytes[5 * MIB + 7..5 * MIB + 107]);
        // Past the end: typed, UnexpectedEof for the server.
        let e = AsyncPageSource::read_at(&src, 6 * MIB as u64 - 10, &mut one)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // Many reads at once of one chunk not fetched yet: one GET between them.
        let before = src.stats().gets;
        let reads = (0..8).map(|k| {
            let src = &src;
            async move {
                let mut b = vec![0u8; 64];
                src.read(3 * MIB as u64 + k * 4096, &mut b).await.map(|_| b)
            }
        });
        for (k, r) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let off = 3 * MIB + k * 4096;
            assert_eq!(r.unwrap(), bytes[off..off + 64]);
        }
        let s = src.stats();
        assert!(s.gets - before <= 1 + s.readaheads, "{s:?}");
    });
}

#[test]
fn a_missing_object_is_not_found() {
    let Some((moto, store, _)) = moto_with_image(MIB) else {
        return;
    };
    let e = ObjectStoreSource::builder(store.clone(), Path::from("nope"))
        .retry(fast_retry())
        .open_blocking()
        .unwrap_err();
    assert!(matches!(e, ObjectStoreSourceError::NotFound { .. }), "{e}");
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    // A missing bucket too.
    let e = ObjectStoreSource::from_url("s3://no-such-bucket/img")
        .unwrap()
        .option("endpoint", moto.endpoint())
        .option("allow_http", "true")
        .option("access_key_id", "testing")
        .option("secret_access_key", "secret")
        .option("region", "us-east-1")
        .retry(fast_retry())
        .open_blocking()
        .unwrap_err();
    assert!(matches!(e, ObjectStoreSourceError::NotFound { .. }), "{e}");
    // Deleted after open: the server's reads get NotFound.
    let src = ObjectStoreSource::builder(store.clone(), Path::from("img"))
        .retry(fast_retry())
        .open_blocking()
        .unwrap();
    rt().block_on(store.delete(&Path::from("img"))).unwrap();
    let e = PageSource::read_at(&src, 0, &mut [0u8; 4096]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    let typed = e
        .get_ref()
        .unwrap()
        .downcast_ref::<ObjectStoreSourceError>();
    assert!(
        matches!(typed, Some(ObjectStoreSourceError::NotFound { .. })),
        "{e}"
    );
}

#[test]
fn an_object_shorter_than_the_regions_is_refused_or_fails_the_reads() {
    let Some((_moto, store, bytes)) = moto_with_image(3 * MIB) else {
        return;
    };
    // Known at open.
    let e = ObjectStoreSource::builder(store.clone(), Path::from("img"))
        .min_len(4 * MIB as u64)
        .open_blocking()
        .unwrap_err();
    assert!(
        matches!(e, ObjectStoreSourceError::TooShort { len, needed, .. }
            if len == 3 * MIB as u64 && needed == 4 * MIB as u64),
        "{e}"
    );
    // The server refuses a region longer than the object's HEAD size.
    let src = ObjectStoreSource::builder(store.clone(), Path::from("img"))
        .open_blocking()
        .unwrap();
    let m = Arc::new(MemoryMapping::new_private(4 * MIB).unwrap());
    let e = ServerBuilder::new()
        .region(Region::new(m.clone(), Arc::new(src)))
        .start(user_uffd())
        .unwrap_err();
    assert!(e.to_string().contains("past the source's end"), "{e}");
    // Told a length (no HEAD): the pages past the real end fail with UnexpectedEof, and
    // the failure policy (zero fill here) resolves them.
    let src = ObjectStoreSource::builder(store, Path::from("img"))
        .len(4 * MIB as u64)
        .readahead(0)
        .retry(fast_retry())
        .open_blocking()
        .unwrap();
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let seen = kinds.clone();
    let server = ServerBuilder::new()
        .prefetch(CHUNK)
        .prefetch_max(CHUNK)
        .background_threads(0)
        .failure_policy(FailurePolicy::ZeroFill)
        .on_error(move |e| {
            if let userfaultfd::serve::ServeError::Source { error, .. } = e {
                seen.lock().unwrap().push(error.kind());
            }
        })
        .region(Region::new(m.clone(), Arc::new(src)))
        .start(user_uffd())
        .unwrap();
    assert_eq!(touch(&m, MIB + 5), bytes[MIB + 5]);
    assert_eq!(
        touch(&m, 3 * MIB + 5),
        0,
        "zero-filled past the object's end"
    );
    let stats = server.shutdown().unwrap();
    assert!(stats.source_errors > 0);
    let kinds = kinds.lock().unwrap();
    assert!(!kinds.is_empty());
    assert!(
        kinds.iter().all(|k| *k == io::ErrorKind::UnexpectedEof),
        "{kinds:?}"
    );
}

#[test]
fn wrong_credentials_are_permission_denied() {
    // Every request is checked (moto checks none by default). Credentials are checked before
    // the bucket is looked up, so none is needed.
    let moto = match Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) {
        Ok(m) => m,
        Err(reason) => return test_kit::report::skip(reason),
    };
    let e = ObjectStoreSource::builder(s3(&moto, "wrong-key"), Path::from("img"))
        .retry(fast_retry())
        .open_blocking()
        .unwrap_err();
    assert!(
        matches!(e, ObjectStoreSourceError::PermissionDenied { .. }),
        "{e:?}"
    );
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);
    // Without a HEAD (length given), the reads are refused the same way.
    let src = ObjectStoreSource::builder(s3(&moto, "wrong-key"), Path::from("img"))
        .len(MIB as u64)
        .retry(fast_retry())
        .open_blocking()
        .unwrap();
    let e = PageSource::read_at(&src, 0, &mut [0u8; 4096]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert_eq!(src.stats().gets, 1, "not retried");
}

/// The server killed after the first chunk came in: `policy` resolves the next fault.
fn restore_then_kill(
    policy: FailurePolicy,
) -> Option<(Arc<MemoryMapping>, userfaultfd::serve::Server, Moto)> {
    let (mut moto, store, bytes) = moto_with_image(8 * MIB)?;
    let src = lazy_source(store);
    let m = Arc::new(MemoryMapping::new_private(8 * MIB).unwrap());
    let server = ServerBuilder::new()
        .prefetch(CHUNK)
        .prefetch_max(CHUNK)
        .background_threads(0)
        .failure_policy(policy)
        .region(Region::new(m.clone(), Arc::new(src)))
        .start(user_uffd())
        .unwrap();
    assert_eq!(touch(&m, 3), bytes[3]);
    moto.kill();
    Some((m, server, moto))
}

#[test]
fn s3_killed_mid_restore_zero_fills() {
    let Some((m, server, _moto)) = restore_then_kill(FailurePolicy::ZeroFill) else {
        return;
    };
    assert_eq!(touch(&m, 5 * MIB), 0);
    assert_eq!(touch(&m, 7 * MIB + 1), 0);
    assert_eq!(
        touch(&m, 4),
        dense_byte(4),
        "the chunk fetched before still reads"
    );
    let stats = server.shutdown().unwrap();
    assert!(
        stats.source_errors > 0 && stats.pages_failed > 0,
        "{stats:?}"
    );
}

#[test]
fn s3_killed_mid_restore_poisons_the_pages() {
    const NAME: &str = "s3_killed_mid_restore_poisons_the_pages";
    if !UffdBuilder::probe_features()
        .unwrap()
        .contains(FeatureFlags::POISON)
    {
        return test_kit::report::skip("no UFFDIO_POISON on this kernel (Linux 6.6)");
    }
    if !common::moto::moto_server_path().exists() {
        // The same reason the child would give.
        let _ = Moto::start().map(drop).map_err(test_kit::report::skip);
        return;
    }
    if common::is_child(CHILD_ENV, NAME) {
        let Some((m, _server, _moto)) = restore_then_kill(FailurePolicy::Poison) else {
            std::process::exit(4);
        };
        let _ = m.read_obj::<u8>(5 * MIB);
        println!("CHILD READ A PAGE OF A DEAD S3 SERVER");
        std::process::exit(3);
    }
    let (status, out) = common::run_child(CHILD_ENV, NAME);
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
}

/// Counts ranged GETs by range, and can hold them until released.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    gets: Mutex<HashMap<(u64, u64), usize>>,
    gate: Mutex<Option<mpsc::Receiver<()>>>,
}

impl std::fmt::Display for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

impl Counting {
    fn new(inner: Arc<dyn ObjectStore>) -> Counting {
        Counting {
            inner,
            gets: Mutex::new(HashMap::new()),
            gate: Mutex::new(None),
        }
    }

    fn gets_of(&self, r: Range<u64>) -> usize {
        self.gets
            .lock()
            .unwrap()
            .get(&(r.start, r.end))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if let Some(GetRange::Bounded(r)) = &options.range {
            *self
                .gets
                .lock()
                .unwrap()
                .entry((r.start, r.end))
                .or_default() += 1;
        }
        let gate = self.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            // Held until the test releases it (bounded: a dropped sender releases it too).
            tokio::task::spawn_blocking(move || gate.recv_timeout(TIMEOUT))
                .await
                .unwrap()
                .expect("the test released the held GET");
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[test]
fn threads_faulting_on_one_chunk_cost_one_get() {
    let Some((_moto, store, bytes)) = moto_with_image(8 * MIB) else {
        return;
    };
    let counting = Arc::new(Counting::new(store));
    let src = lazy_source(counting.clone());
    let m = Arc::new(MemoryMapping::new_private(8 * MIB).unwrap());
    // No prefetch: every touched page is its own fault and its own source read.
    let server = ServerBuilder::new()
        .prefetch(0)
        .background_threads(0)
        .handler_threads(4)
        .region(Region::new(m.clone(), Arc::new(src)))
        .start(user_uffd())
        .unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let (tx, rx) = mpsc::channel();
    for k in 0..8usize {
        let (m, barrier, tx) = (m.clone(), barrier.clone(), tx.clone());
        std::thread::spawn(move || {
            barrier.wait();
            let off = 2 * MIB + k * 37 * 4096 + k;
            let _ = tx.send((off, m.read_obj::<u8>(off).unwrap()));
        });
    }
    for _ in 0..8 {
        let (off, v) = rx
            .recv_timeout(TIMEOUT)
            .expect("a faulting thread finished");
        assert_eq!(v, bytes[off]);
    }
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.demand_faults, 8, "{stats:?}");
    assert_eq!(counting.gets_of(2 * MIB as u64..4 * MIB as u64), 1);
    assert_eq!(counting.gets.lock().unwrap().values().sum::<usize>(), 1);
}

#[test]
fn concurrent_reads_of_a_chunk_in_flight_join_its_fetch() {
    let Some((_moto, store, bytes)) = moto_with_image(4 * MIB) else {
        return;
    };
    let counting = Arc::new(Counting::new(store));
    let (release, gate) = mpsc::channel();
    *counting.gate.lock().unwrap() = Some(gate);
    let src = Arc::new(
        ObjectStoreSource::builder(counting.clone(), Path::from("img"))
            .len(4 * MIB as u64)
            .readahead(0)
            .open_blocking()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    for k in 0..4usize {
        let (src, tx) = (src.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut b = vec![0u8; 4096];
            let r = src.read_blocking((k * 4096) as u64, &mut b);
            let _ = tx.send((k, r.map(|_| b)));
        });
    }
    // The first read's GET is held until the three others wait for it.
    common::wait_until("three reads joining the fetch in flight", || {
        src.stats().joined_fetches == 3
    });
    release.send(()).unwrap();
    for _ in 0..4 {
        let (k, r) = rx.recv_timeout(TIMEOUT).expect("a read finished");
        assert_eq!(r.unwrap(), bytes[k * 4096..(k + 1) * 4096]);
    }
    assert_eq!(src.stats().gets, 1);
    assert_eq!(counting.gets_of(0..CHUNK as u64), 1);
}
