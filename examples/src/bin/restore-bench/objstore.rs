//! `--source URL`: the image in object storage. The bench uploads its generated image to the
//! object (overwriting it), then restores it with `eager` (a concurrent download of every
//! chunk) and `serve` (the threaded server over `ObjectStoreSource`), both with the same
//! client, the same chunks (one object, ranged `GET`s of `chunk_size`) and the same number of
//! requests in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use userfaultfd::mmap::MemoryMapping;
use userfaultfd::serve::{ObjectStoreSource, DEFAULT_CONCURRENCY};

/// Where the image lives and how to reach it.
pub struct ObjectImage {
    pub url: String,
    pub options: Vec<String>,
}

impl ObjectImage {
    fn builder(&self) -> Result<userfaultfd::serve::ObjectStoreSourceBuilder, String> {
        examples::object_source_builder(&self.url, &self.options)
    }

    /// Uploads the image file to the object; returns the seconds it took.
    pub fn upload(&self, file: &std::path::Path) -> Result<f64, String> {
        let (store, path): (Arc<dyn ObjectStore>, Path) =
            self.builder()?.store().map_err(|e| e.to_string())?;
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        rt.block_on(store.put(&path, PutPayload::from(bytes)))
            .map_err(|e| format!("uploading the image to {}: {e}", self.url))?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// A source with a cold cache (opened before the clock starts).
    pub fn source(&self) -> Result<ObjectStoreSource, String> {
        self.builder()?
            .open_blocking()
            .map_err(|e| format!("opening {}: {e}", self.url))
    }

    /// The source `eager` downloads with: no read-ahead (the threads ask for every chunk), a
    /// cache of a few chunks (each is read once). Opened before the clock starts, as `serve`'s.
    pub fn download_source(&self) -> Result<ObjectStoreSource, String> {
        self.builder()?
            .readahead(0)
            .cache_bytes(DEFAULT_CONCURRENCY * 2 * (2 << 20))
            .open_blocking()
            .map_err(|e| format!("opening {}: {e}", self.url))
    }

    /// `eager`: every chunk downloaded into `memory` by as many threads as the source has
    /// requests in flight, each `GET` straight into its place.
    pub fn download(src: &ObjectStoreSource, memory: &Arc<MemoryMapping>) -> Result<(), String> {
        let chunk = src.chunk_size() as usize;
        let len = memory.size().min(src.len() as usize);
        let chunks = len.div_ceil(chunk);
        let next = AtomicU64::new(0);
        let base = memory.as_ptr() as usize;
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..DEFAULT_CONCURRENCY)
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            if i >= chunks {
                                return Ok(());
                            }
                            let off = i * chunk;
                            let n = chunk.min(len - off);
                            // SAFETY: `off..off + n` lies inside `memory`, a mapping this
                            // benchmark owns and shares with no reader yet (the workload starts
                            // after the download); each chunk is written by one thread only.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut((base + off) as *mut u8, n)
                            };
                            src.read_blocking(off as u64, dst)
                                .map_err(|e| format!("downloading chunk {i}: {e}"))?;
                        }
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| "a download thread panicked".to_string())?
            })
        })
    }
}

/// `gets=N chunks=M gets_per_chunk=R` of a source after a run, for the output line.
pub fn counters(src: &ObjectStoreSource, image_len: usize) -> Vec<(&'static str, String)> {
    let s = src.stats();
    let chunks = image_len.div_ceil(src.chunk_size() as usize) as f64;
    vec![
        ("gets", s.gets.to_string()),
        ("gets_per_chunk", format!("{:.3}", s.gets as f64 / chunks)),
    ]
}
