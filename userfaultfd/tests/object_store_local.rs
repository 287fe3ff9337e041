//! `ObjectStoreSource` over the stores that need no server: `LocalFileSystem` (also through a
//! `file://` URL) and `InMemory`, each restored through the threaded server and verified byte
//! for byte; a replaced object (ETag), the blocking read refused on a runtime thread, and bad
//! settings, each a typed error.

use std::io;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use test_kit::pattern::{dense_byte, dense_image};

use mmap::MemoryMapping;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use userfaultfd::serve::{
    ObjectStoreSource, ObjectStoreSourceError, PageSource, Region, RetryPolicy, ServerBuilder,
};
use userfaultfd::UffdBuilder;

const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn put(store: &dyn ObjectStore, path: &str, bytes: &[u8]) {
    rt().block_on(store.put(&Path::from(path), PutPayload::from(bytes.to_vec())))
        .unwrap();
}

/// Restores `src` into fresh memory through the threaded server and checks every byte.
fn restore_and_verify(src: ObjectStoreSource, bytes: &[u8]) -> ObjectStoreSource {
    let src = Arc::new(src);
    let chunk = src.chunk_size() as usize;
    let m = Arc::new(MemoryMapping::new_private(bytes.len()).unwrap());
    let server = ServerBuilder::new()
        .prefetch(chunk)
        .prefetch_max(chunk)
        .region(Region::new(m.clone(), src.clone()))
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let mm = m.clone();
    let off = bytes.len() / 2 + 9;
    std::thread::spawn(move || {
        let _ = tx.send(mm.read_obj::<u8>(off).unwrap());
    });
    assert_eq!(rx.recv_timeout(TIMEOUT).expect("first touch"), bytes[off]);
    server.wait_populated(TIMEOUT).unwrap();
    let mut got = vec![0u8; bytes.len()];
    m.read_slice(&mut got, 0).unwrap();
    assert!(got == bytes, "restored bytes differ from the image");
    assert_eq!(server.shutdown().unwrap().source_errors, 0);
    Arc::try_unwrap(src).expect("the server released the source")
}

#[test]
fn local_file_system_store_and_file_url() {
    let dir = std::env::temp_dir().join(format!("uffd-objstore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = dense_image(5 * MIB + 4096);
    let store = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());
    put(&*store, "snap/mem", &bytes);

    let src = ObjectStoreSource::builder(store, Path::from("snap/mem"))
        .chunk_size(MIB as u64)
        .open_blocking()
        .unwrap();
    let src = restore_and_verify(src, &bytes);
    assert_eq!(src.stats().chunks_fetched, 6);

    let url = format!("file://{}/snap/mem", dir.display());
    let src = ObjectStoreSource::from_url(&url)
        .unwrap()
        .open_blocking()
        .unwrap();
    assert_eq!(PageSource::len(&src), bytes.len() as u64);
    restore_and_verify(src, &bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn in_memory_store() {
    let bytes = dense_image(3 * MIB);
    let store = Arc::new(InMemory::new());
    put(&*store, "mem", &bytes);
    let src = ObjectStoreSource::builder(store, Path::from("mem"))
        .cache_bytes(2 * MIB) // one chunk: eviction in use
        .open_blocking()
        .unwrap();
    let src = restore_and_verify(src, &bytes);
    let s = src.stats();
    assert_eq!(s.chunks_fetched, 2, "{s:?}");
    assert!(s.cached_bytes <= 2 * MIB, "{s:?}");
}

#[test]
fn a_replaced_object_fails_the_reads_instead_of_mixing_images() {
    let store = Arc::new(InMemory::new());
    put(&*store, "mem", &dense_image(4 * MIB));
    let src = ObjectStoreSource::builder(store.clone(), Path::from("mem"))
        .readahead(0)
        .open_blocking()
        .unwrap();
    let mut page = vec![0u8; 4096];
    src.read_blocking(0, &mut page).unwrap();
    put(&*store, "mem", &vec![0xAA; 4 * MIB]);
    let e = src.read_blocking(3 * MIB as u64, &mut page).unwrap_err();
    assert!(matches!(e, ObjectStoreSourceError::Changed { .. }), "{e}");
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidData);
}

#[test]
fn the_blocking_read_is_refused_on_a_runtime_thread() {
    let store = Arc::new(InMemory::new());
    put(&*store, "mem", &dense_image(MIB));
    let src = ObjectStoreSource::builder(store.clone(), Path::from("mem"))
        .open_blocking()
        .unwrap();
    let e = rt().block_on(async {
        let mut page = vec![0u8; 4096];
        PageSource::read_at(&src, 0, &mut page).unwrap_err()
    });
    assert!(e.to_string().contains("tokio runtime"), "{e}");
    // And so is open_blocking; open() works there.
    rt().block_on(async {
        let e = ObjectStoreSource::builder(store.clone(), Path::from("mem"))
            .open_blocking()
            .unwrap_err();
        assert!(matches!(e, ObjectStoreSourceError::Runtime(_)), "{e}");
        let src = ObjectStoreSource::builder(store.clone(), Path::from("mem"))
            .open()
            .await
            .unwrap();
        let mut page = vec![0u8; 4096];
        src.read(4096, &mut page).await.unwrap();
        assert!(page.iter().all(|&b| b == dense_byte(4096)) || page[0] == dense_byte(4096));
    });
    // open() outside a runtime, without one given: typed, no panic.
    let e = futures_util::FutureExt::now_or_never(
        ObjectStoreSource::builder(store, Path::from("mem")).open(),
    )
    .expect("fails at once")
    .unwrap_err();
    assert!(matches!(e, ObjectStoreSourceError::Config(_)), "{e}");
}

#[test]
fn bad_settings_are_config_errors() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    put(&*store, "mem", &dense_image(MIB));
    let open = |b: userfaultfd::serve::ObjectStoreSourceBuilder| b.open_blocking().unwrap_err();
    let b = || ObjectStoreSource::builder(store.clone(), Path::from("mem"));
    for e in [
        open(b().chunk_size(3 << 20)),
        open(b().chunk_size(1024)),
        open(b().chunk_size(1 << 31)),
        open(b().cache_bytes(MIB).chunk_size(2 << 20)),
        open(b().concurrency(0)),
        open(b().retry(RetryPolicy::new().deadline(Duration::ZERO))),
    ] {
        assert!(matches!(e, ObjectStoreSourceError::Config(_)), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
    }
    for url in ["not a url", "ftp://host/x", "gs://bucket/x"] {
        let e = ObjectStoreSource::from_url(url).and_then(|b| b.open_blocking());
        assert!(
            matches!(e, Err(ObjectStoreSourceError::Config(_))),
            "{url}: {e:?}"
        );
    }
    let e = ObjectStoreSource::from_url("s3://bucket/key")
        .unwrap()
        .option("no_such_option", "1")
        .open_blocking()
        .unwrap_err();
    assert!(e.to_string().contains("no_such_option"), "{e}");
    let e = ObjectStoreSource::from_url("memory:///mem")
        .unwrap()
        .option("endpoint", "http://x")
        .open_blocking()
        .unwrap_err();
    assert!(matches!(e, ObjectStoreSourceError::Config(_)), "{e}");
    // A read past the end is typed, never a panic.
    let src = b().open_blocking().unwrap();
    let e = src.read_blocking(u64::MAX - 1, &mut [0u8; 16]).unwrap_err();
    assert!(matches!(e, ObjectStoreSourceError::TooShort { .. }), "{e}");
    src.read_blocking(MIB as u64, &mut []).unwrap();
}
