//! The optional cache file of an [`ObjectStoreSource`](super::ObjectStoreSource): chunks
//! fetched from the store are also written to a local file, at their offsets in the object, so
//! a chunk evicted from the memory cache, or wanted again by a later process restoring the same
//! image, is read from local disk instead of the store.
//!
//! Two files: the data file at the path given (sparse, as long as the object) and an index
//! beside it (`PATH.index`) that says which chunks of which object version the data file
//! holds. The index is written (to a temporary file, then renamed over the old one) only after
//! the data it lists was flushed to disk (`fdatasync`), so a crash leaves an index that lists
//! fewer chunks than the file holds, never more. It is written every [`FLUSH_EVERY`] new
//! chunks, when the file holds the whole object, and when the source is dropped.
//!
//! A later open reuses the file only for the same object version: the same length and chunk
//! size and the same ETag, which the store gave at open. Without an ETag (a source opened with
//! [`len`](super::ObjectStoreSourceBuilder::len), which skips the `HEAD`) there is no version to
//! check, so the file then starts empty at every open. A corrupt or foreign index is ignored
//! the same way.
//!
//! One source at a time uses a cache file: the data file is locked (`flock(2)`, exclusive) for
//! the source's lifetime, and a second open fails with
//! [`ObjectStoreSourceError::CacheFile`]. Processes that restore many VMs from one image share
//! one source, and so one cache file, between them.
//!
//! The cache file is an optimisation: a chunk that cannot be written or read back is fetched
//! from the store as if the file did not have it (and counted in
//! [`ObjectStoreStats::cache_file_errors`](super::ObjectStoreStats::cache_file_errors)).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ObjectStoreSourceError;

/// New chunks written between two flushes of the index.
pub(super) const FLUSH_EVERY: u64 = 32;

const MAGIC: &[u8; 8] = b"UFFDOSCF";
const VERSION: u32 = 1;
/// Longest ETag the index stores (S3's are 34 bytes; the limit only bounds a corrupt file).
const MAX_E_TAG: usize = 1024;

/// What the index of a cache file says, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Index {
    chunk: u64,
    len: u64,
    e_tag: String,
    present: Vec<u64>,
}

fn words(chunks: u64) -> usize {
    chunks.div_ceil(64) as usize
}

/// FNV-1a, 64 bits: detects a torn or corrupt index (not an adversary).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Index {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.e_tag.len() + self.present.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.chunk.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(self.e_tag.len() as u32).to_le_bytes());
        out.extend_from_slice(self.e_tag.as_bytes());
        for w in &self.present {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// The index in `bytes`, or `None` for anything that is not a whole, intact index.
    fn decode(bytes: &[u8]) -> Option<Index> {
        let (body, sum) = bytes.split_at(bytes.len().checked_sub(8)?);
        if checksum(body) != u64::from_le_bytes(sum.try_into().ok()?) {
            return None;
        }
        let mut r = body;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, rest) = r.split_at_checked(n)?;
            r = rest;
            Some(head)
        };
        if take(8)? != MAGIC {
            return None;
        }
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        if u32_at(take(4)?) != VERSION {
            return None;
        }
        let chunk = u64_at(take(8)?);
        let len = u64_at(take(8)?);
        let tag_len = u32_at(take(4)?) as usize;
        if tag_len > MAX_E_TAG || chunk == 0 {
            return None;
        }
        let e_tag = String::from_utf8(take(tag_len)?.to_vec()).ok()?;
        let n = words(len.div_ceil(chunk));
        let present = take(n.checked_mul(8)?)?
            .chunks_exact(8)
            .map(u64_at)
            .collect();
        if !r.is_empty() {
            return None;
        }
        Some(Index {
            chunk,
            len,
            e_tag,
            present,
        })
    }
}

struct State {
    present: Vec<u64>,
    /// Chunks marked present since the index was last written.
    unflushed: u64,
    count: u64,
}

/// An open, locked cache file.
pub(super) struct CacheFile {
    path: PathBuf,
    index_path: PathBuf,
    file: File,
    chunk: u64,
    len: u64,
    /// The version the file holds chunks of; `None`: not reusable by a later open.
    e_tag: Option<String>,
    state: Mutex<State>,
    errors: AtomicU64,
    /// Writes handed out ([`CacheFile::write_later`]) and not done yet.
    pending: Mutex<u64>,
    written: Condvar,
}

/// A chunk write handed to another thread: counted as pending until it is done or dropped.
pub(super) struct PendingWrite {
    file: Arc<CacheFile>,
    index: u64,
    data: Bytes,
}

impl PendingWrite {
    /// Writes the chunk (see [`CacheFile::write_chunk`]).
    pub(super) fn run(self) {
        self.file.write_chunk(self.index, &self.data);
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        let mut n = self
            .file
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n -= 1;
        self.file.written.notify_all();
    }
}

impl std::fmt::Debug for CacheFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFile")
            .field("path", &self.path)
            .field("chunks_present", &self.lock().count)
            .finish_non_exhaustive()
    }
}

fn cache_error(path: &Path, source: io::Error) -> ObjectStoreSourceError {
    ObjectStoreSourceError::CacheFile {
        path: path.to_path_buf(),
        source: std::sync::Arc::new(source),
    }
}

impl CacheFile {
    /// Opens (creating it if needed) and locks the cache file at `path` for the object version
    /// `(len, chunk, e_tag)`; reuses the chunks its index lists when the version matches.
    pub(super) fn open(
        path: &Path,
        len: u64,
        chunk: u64,
        e_tag: Option<&str>,
    ) -> Result<CacheFile, ObjectStoreSourceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| cache_error(path, e))?;
        // SAFETY: flock takes an fd this function owns (through `file`) and flags; it touches no
        // memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            let e = if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the cache file is in use by another source (it is locked): share one \
                     source, or give each its own file",
                )
            } else {
                e
            };
            return Err(cache_error(path, e));
        }
        let mut index_path = path.as_os_str().to_owned();
        index_path.push(".index");
        let index_path = PathBuf::from(index_path);
        let chunks = len.div_ceil(chunk);
        let reused = e_tag.and_then(|tag| {
            let index = Index::decode(&fs::read(&index_path).ok()?)?;
            let size = file.metadata().ok()?.len();
            (index.chunk == chunk && index.len == len && index.e_tag == tag && size >= len)
                .then_some(index.present)
        });
        let present = match reused {
            Some(p) => p,
            None => {
                // A new version (or none to check): forget the old index first, so a crash
                // while the data is replaced cannot leave it describing new bytes.
                match fs::remove_file(&index_path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(cache_error(&index_path, e))
                    }
                    _ => {}
                }
                file.set_len(0).map_err(|e| cache_error(path, e))?;
                file.set_len(len).map_err(|e| cache_error(path, e))?;
                vec![0; words(chunks)]
            }
        };
        let count = present.iter().map(|w| u64::from(w.count_ones())).sum();
        Ok(CacheFile {
            path: path.to_path_buf(),
            index_path,
            file,
            chunk,
            len,
            e_tag: e_tag.map(str::to_owned),
            state: Mutex::new(State {
                present,
                unflushed: 0,
                count,
            }),
            errors: AtomicU64::new(0),
            pending: Mutex::new(0),
            written: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk)
    }

    /// The byte range of chunk `index` in the object.
    fn range(&self, index: u64) -> (u64, usize) {
        let start = index * self.chunk;
        (start, (self.len - start).min(self.chunk) as usize)
    }

    /// Whether the file holds chunk `index`.
    pub(super) fn has(&self, index: u64) -> bool {
        let st = self.lock();
        st.present
            .get((index / 64) as usize)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Chunks the file holds.
    pub(super) fn chunks_present(&self) -> u64 {
        self.lock().count
    }

    /// Cache-file operations that failed so far (each then went to the store).
    pub(super) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Chunk `index` read back from the file, or `None` when the file lacks it or cannot be
    /// read (the chunk is then forgotten, and fetched from the store).
    pub(super) fn read_chunk(&self, index: u64) -> Option<Bytes> {
        if index >= self.chunks() || !self.has(index) {
            return None;
        }
        let (start, n) = self.range(index);
        let mut buf = vec![0u8; n];
        match self.file.read_exact_at(&mut buf, start) {
            Ok(()) => Some(Bytes::from(buf)),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut st = self.lock();
                if let Some(w) = st.present.get_mut((index / 64) as usize) {
                    if *w & (1 << (index % 64)) != 0 {
                        *w &= !(1 << (index % 64));
                        st.count -= 1;
                    }
                }
                None
            }
        }
    }

    /// Writes chunk `index` (its whole bytes, as fetched) to the file and lists it, flushing the
    /// index every [`FLUSH_EVERY`] chunks and once the file holds the whole object. A failed
    /// write is counted and otherwise ignored.
    pub(super) fn write_chunk(&self, index: u64, data: &[u8]) {
        let (start, n) = self.range(index);
        if index >= self.chunks() || data.len() != n || self.has(index) {
            return;
        }
        if self.file.write_all_at(data, start).is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let flush = {
            let mut st = self.lock();
            let w = &mut st.present[(index / 64) as usize];
            if *w & (1 << (index % 64)) != 0 {
                return;
            }
            *w |= 1 << (index % 64);
            st.count += 1;
            st.unflushed += 1;
            st.unflushed >= FLUSH_EVERY || st.count == self.chunks()
        };
        if flush && self.flush().is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A write of chunk `index` to be run elsewhere ([`PendingWrite::run`]); [`wait_written`]
    /// waits for it.
    ///
    /// [`wait_written`]: CacheFile::wait_written
    pub(super) fn write_later(self: &Arc<Self>, index: u64, data: Bytes) -> PendingWrite {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        PendingWrite {
            file: Arc::clone(self),
            index,
            data,
        }
    }

    /// Waits, at most `timeout`, until no write handed out is pending; whether none is.
    pub(super) fn wait_written(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .written
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Flushes the data to disk, then writes the index listing it (atomically: a temporary file
    /// renamed over the old index).
    pub(super) fn flush(&self) -> io::Result<()> {
        let Some(e_tag) = &self.e_tag else {
            // No version to check: a later open would not reuse the file anyway.
            return Ok(());
        };
        let present = {
            let mut st = self.lock();
            st.unflushed = 0;
            st.present.clone()
        };
        // Every chunk in `present` was written before it was listed there.
        self.file.sync_data()?;
        let index = Index {
            chunk: self.chunk,
            len: self.len,
            e_tag: e_tag.clone(),
            present,
        };
        let mut tmp = self.index_path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp)?;
        f.write_all(&index.encode())?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, &self.index_path)
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        if self.lock().unflushed > 0 {
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        Index {
            chunk: 1 << 21,
            len: (130 << 21) + 5,
            e_tag: "\"abc\"".into(),
            present: vec![u64::MAX, 0, 0b101],
        }
    }

    #[test]
    fn index_round_trips() {
        let i = index();
        assert_eq!(Index::decode(&i.encode()), Some(i));
    }

    #[test]
    fn a_damaged_index_is_refused() {
        let bytes = index().encode();
        for cut in 0..bytes.len() {
            assert_eq!(Index::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert_eq!(Index::decode(&b), None, "flipped byte {at}");
        }
        let mut longer = bytes.clone();
        longer.insert(20, 0);
        assert_eq!(Index::decode(&longer), None);
    }
}
