//! The cache file of `ObjectStoreSource` (`cache_file`), over the in-memory store, whose
//! `GET`s the source counts: a second source reads the chunks the first fetched from the file,
//! with no request, and restores the same bytes through the server; a replaced object, a
//! damaged index and a file without a version to check start empty; a file held by another
//! source, or in a directory that does not exist, is a typed error at open.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mmap::MemoryMapping;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use userfaultfd::serve::{
    ObjectStoreSource, ObjectStoreSourceError, PageSource, Region, ServerBuilder,
};
use userfaultfd::UffdBuilder;

const TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: u64 = 256 << 10;
/// Ten whole chunks and a short last one.
const LEN: usize = 10 * CHUNK as usize + 8192;

fn image(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| ((i / 4096 * 7 + i) % 253) as u8 ^ seed)
        .collect()
}

fn put(store: &InMemory, bytes: &[u8]) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.put(&Path::from("img"), PutPayload::from(bytes.to_vec())))
        .unwrap();
}

/// A directory of its own, removed at the end of the test.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("uffd-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self) -> PathBuf {
        self.0.join("img.cache")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn source(store: &Arc<InMemory>, file: &std::path::Path) -> ObjectStoreSource {
    ObjectStoreSource::builder(store.clone() as Arc<dyn ObjectStore>, Path::from("img"))
        .chunk_size(CHUNK)
        .readahead(0)
        .cache_file(file)
        .open_blocking()
        .unwrap()
}

/// Reads the whole object page by page (so every chunk is needed) and checks it.
fn read_all(src: &ObjectStoreSource, expected: &[u8]) {
    let mut page = vec![0u8; 4096];
    for off in (0..LEN).step_by(4096) {
        src.read_at(off as u64, &mut page).unwrap();
        assert!(page == expected[off..off + 4096], "bytes at {off} differ");
    }
}

const CHUNKS: u64 = (LEN as u64).div_ceil(CHUNK);

/// Reads every chunk through `src` and flushes its cache file.
fn fill(src: &ObjectStoreSource, expected: &[u8]) {
    read_all(src, expected);
    src.flush_cache_file().unwrap();
}

/// Checks that `src` found no chunk in its cache file and fetched every one from the store.
fn starts_empty(src: &ObjectStoreSource, expected: &[u8]) {
    assert_eq!(src.stats().cache_file_chunks, 0);
    read_all(src, expected);
    assert_eq!(src.stats().gets, CHUNKS);
}

#[test]
fn a_second_source_reads_the_chunks_from_the_file() {
    let dir = Dir::new("reuse");
    let store = Arc::new(InMemory::new());
    let bytes = image(0);
    put(&store, &bytes);

    let first = source(&store, &dir.file());
    fill(&first, &bytes);
    let s = first.stats();
    assert_eq!(s.gets, CHUNKS);
    assert_eq!(s.cache_file_chunks, CHUNKS);
    assert_eq!(s.cache_file_errors, 0);
    drop(first);

    // Restored through the server from the file alone: not one request.
    let second = Arc::new(source(&store, &dir.file()));
    assert_eq!(second.stats().cache_file_chunks, CHUNKS);
    let m = Arc::new(MemoryMapping::new_private(LEN.next_multiple_of(4096)).unwrap());
    let server = ServerBuilder::new()
        .prefetch(CHUNK as usize)
        .prefetch_max(CHUNK as usize)
        .region(Region::new(m.clone(), second.clone()))
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap();
    server.wait_populated(TIMEOUT).unwrap();
    let mut got = vec![0u8; LEN];
    m.read_slice(&mut got, 0).unwrap();
    assert!(got == bytes, "restored bytes differ from the image");
    assert_eq!(server.shutdown().unwrap().source_errors, 0);
    let s = second.stats();
    assert_eq!(s.gets, 0, "{s:?}");
    assert_eq!(s.cache_file_hits, CHUNKS, "{s:?}");
}

#[test]
fn dropping_the_source_writes_the_index() {
    let dir = Dir::new("drop");
    let store = Arc::new(InMemory::new());
    let bytes = image(3);
    put(&store, &bytes);
    let first = source(&store, &dir.file());
    let mut page = vec![0u8; 4096];
    // Two chunks, fewer than a flush needs: only the drop writes the index.
    first.read_at(0, &mut page).unwrap();
    first.read_at(5 * CHUNK, &mut page).unwrap();
    drop(first);
    let second = source(&store, &dir.file());
    assert_eq!(second.stats().cache_file_chunks, 2);
    read_all(&second, &bytes);
    let s = second.stats();
    assert_eq!(s.gets + s.cache_file_hits, CHUNKS, "{s:?}");
}

#[test]
fn a_replaced_object_starts_the_file_again() {
    let dir = Dir::new("replaced");
    let store = Arc::new(InMemory::new());
    let old = image(1);
    put(&store, &old);
    fill(&source(&store, &dir.file()), &old);

    let new = image(2);
    put(&store, &new); // a new ETag
    starts_empty(&source(&store, &dir.file()), &new);
}

#[test]
fn a_damaged_index_is_ignored() {
    let dir = Dir::new("damaged");
    let store = Arc::new(InMemory::new());
    let bytes = image(4);
    put(&store, &bytes);
    fill(&source(&store, &dir.file()), &bytes);

    let index = dir.0.join("img.cache.index");
    let mut raw = std::fs::read(&index).unwrap();
    let last = raw.len() - 9;
    raw[last] ^= 0xff;
    std::fs::write(&index, raw).unwrap();
    starts_empty(&source(&store, &dir.file()), &bytes);
}

#[test]
fn a_file_without_a_version_to_check_is_not_reused() {
    let dir = Dir::new("nolen");
    let store = Arc::new(InMemory::new());
    let bytes = image(5);
    put(&store, &bytes);
    let open = || {
        ObjectStoreSource::builder(store.clone() as Arc<dyn ObjectStore>, Path::from("img"))
            .chunk_size(CHUNK)
            .readahead(0)
            .len(LEN as u64) // no HEAD: no ETag
            .cache_file(dir.file())
            .open_blocking()
            .unwrap()
    };
    fill(&open(), &bytes);
    starts_empty(&open(), &bytes);
}

#[test]
fn a_file_held_by_another_source_or_in_no_directory_is_refused() {
    let dir = Dir::new("held");
    let store = Arc::new(InMemory::new());
    put(&store, &image(6));
    let first = source(&store, &dir.file());
    let err = ObjectStoreSource::builder(store.clone() as Arc<dyn ObjectStore>, Path::from("img"))
        .cache_file(dir.file())
        .open_blocking()
        .unwrap_err();
    assert!(
        matches!(&err, ObjectStoreSourceError::CacheFile { path, .. } if *path == dir.file()),
        "{err:?}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    // Released with the first source.
    drop(source(&store, &dir.file()));

    let err = ObjectStoreSource::builder(store as Arc<dyn ObjectStore>, Path::from("img"))
        .cache_file(dir.0.join("no/such/dir/img.cache"))
        .open_blocking()
        .unwrap_err();
    assert!(
        matches!(err, ObjectStoreSourceError::CacheFile { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
