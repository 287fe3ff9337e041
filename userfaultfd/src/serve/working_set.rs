//! Working sets: the order in which a workload first demanded its pages, recorded by one
//! restore and replayed by the next (REAP, ASPLOS '21: "Benchmarking, analysis, and
//! optimization of serverless function snapshots").
//!
//! The file format is documented on [`WorkingSet`].

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

const MAGIC: &[u8; 8] = b"UFFDWSET";
/// The version this crate writes; it reads this one and version 1 (which has no flags).
const VERSION: u32 = 2;
/// Header flag: the entries are exactly the pages demanded (see [`WorkingSet::is_exact`]).
const FLAG_EXACT: u32 = 1;
const HEADER: usize = 24;
const ENTRY: usize = 16;

/// Why a working-set file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkingSetError {
    /// Reading or writing the file failed.
    #[error("working-set file: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with the magic `UFFDWSET`.
    #[error("not a working-set file (no UFFDWSET magic)")]
    BadMagic,
    /// The file's version is not one this crate reads.
    #[error("working-set file version {0} is not supported (this crate reads versions 1 and 2)")]
    Version(u32),
    /// The file ends before its header or its entries do, or goes on after them.
    #[error("working-set file is {got} bytes, its header promises {want}")]
    Length {
        /// The file's size.
        got: u64,
        /// The size its header promises.
        want: u64,
    },
    /// A reserved field (or a flag this crate does not know) is not zero.
    #[error("working-set file: reserved field not zero at byte {0}")]
    Reserved(u64),
}

/// The pages a workload demanded, in the order it first demanded them: a list of
/// `(region index, byte offset in the region)`.
///
/// Recorded by a server built with
/// [`record_working_set`](super::ServerBuilder::record_working_set) ([`Server::working_set`](super::Server::working_set)),
/// saved with [`write_to`](Self::write_to), loaded with [`read_from`](Self::read_from) and
/// replayed by [`ServerBuilder::replay`](super::ServerBuilder::replay): those pages are copied
/// first, in that order, as soon as the server starts.
///
/// A set is **exact** ([`is_exact`](Self::is_exact)) when it was recorded with
/// [`exact_recording`](super::ServerBuilder::exact_recording): the server served only the
/// faulting pages while recording, so every page the workload touched is an entry, and replay
/// copies just those pages (adjacent ones in one read). A set recorded while the server
/// prefetched holds only the first page of each chunk the workload touched (prefetch made the
/// rest present before they were touched), so replay copies each entry with the prefetch chunk
/// around it: more data, fewer entries.
///
/// # File format
///
/// Little-endian throughout:
///
/// | bytes | field |
/// |---|---|
/// | 8 | magic `UFFDWSET` |
/// | 4 | version, `2` |
/// | 4 | flags: bit 0 set when the set is [exact](Self::is_exact); the other bits `0` |
/// | 8 | `n`, the number of entries |
/// | 16 × `n` | entries: region index (`u32`), reserved `u32` (`0`), byte offset of the page in the region (`u64`) |
///
/// Nothing follows the entries. Version 1 files (written before exact sets existed) are read
/// too: their flags field is reserved, `0`. A file that is shorter, longer, has another magic
/// or version, or a non-zero reserved field or unknown flag, is refused with
/// [`WorkingSetError`].
///
/// # Example
///
/// ```
/// use userfaultfd::serve::WorkingSet;
/// let ws = WorkingSet::from_entries(vec![(0, 8192), (0, 4096), (1, 0)]);
/// let mut file = Vec::new();
/// ws.write_to(&mut file)?;
/// assert_eq!(file.len(), 24 + 3 * 16);
/// assert_eq!(WorkingSet::read_from(&file[..])?, ws);
/// assert!(WorkingSet::read_from(&file[..30]).is_err()); // truncated
/// # Ok::<(), userfaultfd::serve::WorkingSetError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkingSet {
    entries: Vec<(u32, u64)>,
    exact: bool,
}

impl WorkingSet {
    /// A working set of the given `(region index, byte offset)` entries, not
    /// [exact](Self::is_exact): replay copies each entry's prefetch chunk.
    pub fn from_entries(entries: Vec<(u32, u64)>) -> WorkingSet {
        WorkingSet {
            entries,
            exact: false,
        }
    }

    /// The same set, marked [exact](Self::is_exact) or not.
    pub fn with_exact(mut self, exact: bool) -> WorkingSet {
        self.exact = exact;
        self
    }

    /// Whether the entries are every page the workload touched (recorded with
    /// [`exact_recording`](super::ServerBuilder::exact_recording)), so replay copies just
    /// those pages; otherwise each entry stands for its prefetch chunk.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The entries, in demand order.
    pub fn entries(&self) -> &[(u32, u64)] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the file format described in the [type documentation](WorkingSet).
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::Io`] from the writer.
    pub fn write_to(&self, mut w: impl Write) -> Result<(), WorkingSetError> {
        let mut buf = Vec::with_capacity(HEADER + ENTRY * self.entries.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.exact { FLAG_EXACT } else { 0 };
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for &(region, offset) in &self.entries {
            buf.extend_from_slice(&region.to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
        }
        w.write_all(&buf)?;
        w.flush()?;
        Ok(())
    }

    /// Writes the working set to a new file at `path` (replacing one that exists).
    ///
    /// # Errors
    ///
    /// [`WorkingSetError::Io`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), WorkingSetError> {
        self.write_to(io::BufWriter::new(std::fs::File::create(path)?))
    }

    /// Reads the file format described in the [type documentation](WorkingSet), checking every
    /// field; never panics on bad input.
    ///
    /// # Errors
    ///
    /// [`WorkingSetError`]: bad magic, version or reserved field, a truncated or over-long
    /// file, or the reader's I/O error.
    pub fn read_from(mut r: impl Read) -> Result<WorkingSet, WorkingSetError> {
        let mut header = [0u8; HEADER];
        let got = read_full(&mut r, &mut header)?;
        if got >= 8 && &header[..8] != MAGIC {
            return Err(WorkingSetError::BadMagic);
        }
        if got < HEADER {
            return Err(WorkingSetError::Length {
                got: got as u64,
                want: HEADER as u64,
            });
        }
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let version = word(8);
        let known_flags = match version {
            1 => 0,
            VERSION => FLAG_EXACT,
            _ => return Err(WorkingSetError::Version(version)),
        };
        let flags = word(12);
        if flags & !known_flags != 0 {
            return Err(WorkingSetError::Reserved(12));
        }
        let n = u64::from_le_bytes(header[16..24].try_into().unwrap());
        let want = n
            .checked_mul(ENTRY as u64)
            .and_then(|b| b.checked_add(HEADER as u64))
            .unwrap_or(u64::MAX);
        // Read in bounded steps, so a header promising an absurd count cannot make this
        // allocate more than the file holds.
        let mut entries = Vec::new();
        let mut chunk = vec![0u8; ENTRY * 4096];
        let mut read = HEADER as u64;
        loop {
            let got = read_full(&mut r, &mut chunk)?;
            if got % ENTRY != 0 || read + got as u64 > want {
                return Err(WorkingSetError::Length {
                    got: read + got as u64,
                    want,
                });
            }
            for e in chunk[..got].chunks_exact(ENTRY) {
                if e[4..8] != [0; 4] {
                    return Err(WorkingSetError::Reserved(read + 4));
                }
                entries.push((
                    u32::from_le_bytes(e[..4].try_into().unwrap()),
                    u64::from_le_bytes(e[8..16].try_into().unwrap()),
                ));
                read += ENTRY as u64;
            }
            if got < chunk.len() {
                break;
            }
        }
        if read != want {
            return Err(WorkingSetError::Length { got: read, want });
        }
        Ok(WorkingSet {
            entries,
            exact: flags & FLAG_EXACT != 0,
        })
    }

    /// Reads a working-set file.
    ///
    /// # Errors
    ///
    /// As [`read_from`](Self::read_from).
    pub fn load(path: impl AsRef<Path>) -> Result<WorkingSet, WorkingSetError> {
        Self::read_from(io::BufReader::new(std::fs::File::open(path)?))
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The recorder: a fixed array (one slot per page of every region) filled in demand order
/// without allocating.
pub(crate) struct Recorder {
    slots: Box<[AtomicU64]>,
    next: AtomicUsize,
    /// Cleared by `Server::finish_recording`: later demands are not recorded.
    active: AtomicBool,
    /// Recording exactly (`ServerBuilder::exact_recording`): the recorded set is exact.
    exact: bool,
}

impl Recorder {
    /// A recorder for at most `capacity` pages; `exact` when the server serves only the
    /// faulting pages while it records.
    pub(crate) fn new(capacity: usize, exact: bool) -> Recorder {
        Recorder {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            active: AtomicBool::new(true),
            exact,
        }
    }

    /// Whether the recorded set is exact (every touched page, not one per prefetch chunk).
    pub(crate) fn is_exact(&self) -> bool {
        self.exact
    }

    /// Records the first demand of `page` of region `region` (each page is recorded at most
    /// once by the caller, which owns the page's claim).
    pub(crate) fn record(&self, region: usize, page: usize) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.slots.get(i) {
            slot.store(((region as u64) << 40) | page as u64, Ordering::Relaxed);
        }
    }

    /// Stops recording.
    pub(crate) fn finish(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    /// The entries so far, as `(region, page)`.
    pub(crate) fn pages(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.next.load(Ordering::Acquire).min(self.slots.len());
        self.slots[..n].iter().map(|s| {
            let v = s.load(Ordering::Relaxed);
            ((v >> 40) as usize, (v & ((1 << 40) - 1)) as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ws: &WorkingSet) -> Vec<u8> {
        let mut v = Vec::new();
        ws.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let ws = WorkingSet::from_entries((0..5000).map(|i| (i % 3, i as u64 * 4096)).collect());
        let good = file(&ws);
        assert_eq!(WorkingSet::read_from(&good[..]).unwrap(), ws);
        assert_eq!(
            WorkingSet::read_from(&file(&WorkingSet::default())[..])
                .unwrap()
                .len(),
            0
        );

        for cut in [0, 5, 8, 23, 24, 25, good.len() - 1] {
            assert!(
                matches!(
                    WorkingSet::read_from(&good[..cut]),
                    Err(WorkingSetError::Length { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.extend_from_slice(&[0; 16]);
        assert!(matches!(
            WorkingSet::read_from(&long[..]),
            Err(WorkingSetError::Length { .. })
        ));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            WorkingSet::read_from(&bad[..]),
            Err(WorkingSetError::BadMagic)
        ));
        let mut bad = good.clone();
        bad[8] = 3;
        assert!(matches!(
            WorkingSet::read_from(&bad[..]),
            Err(WorkingSetError::Version(3))
        ));
        let mut bad = good.clone();
        bad[12] = 2; // a flag this version does not define
        assert!(matches!(
            WorkingSet::read_from(&bad[..]),
            Err(WorkingSetError::Reserved(12))
        ));
        // Version 1 has no flags: the exact bit is a reserved bit there.
        let mut v1 = good.clone();
        v1[8] = 1;
        assert_eq!(WorkingSet::read_from(&v1[..]).unwrap(), ws);
        v1[12] = 1;
        assert!(matches!(
            WorkingSet::read_from(&v1[..]),
            Err(WorkingSetError::Reserved(12))
        ));
        let mut bad = good.clone();
        bad[24 + 16 * 7 + 5] = 1;
        assert!(matches!(
            WorkingSet::read_from(&bad[..]),
            Err(WorkingSetError::Reserved(_))
        ));
        // A header promising 2^60 entries on a short file: refused without a huge allocation.
        let mut absurd = good[..24].to_vec();
        absurd[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        absurd.extend_from_slice(&[0; 32]);
        assert!(matches!(
            WorkingSet::read_from(&absurd[..]),
            Err(WorkingSetError::Length { .. })
        ));
    }

    #[test]
    fn the_exact_flag_round_trips() {
        let ws = WorkingSet::from_entries(vec![(0, 4096), (0, 0)]).with_exact(true);
        let bytes = file(&ws);
        assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 1);
        let back = WorkingSet::read_from(&bytes[..]).unwrap();
        assert!(back.is_exact());
        assert_eq!(back, ws);
        assert!(!WorkingSet::read_from(&file(&ws.with_exact(false))[..])
            .unwrap()
            .is_exact());
    }

    #[test]
    fn a_finished_recorder_records_nothing_more() {
        let r = Recorder::new(4, false);
        r.record(0, 1);
        r.finish();
        r.record(0, 2);
        assert_eq!(r.pages().collect::<Vec<_>>(), [(0, 1)]);
    }

    #[test]
    fn recorder_keeps_order_and_bounds() {
        let r = Recorder::new(3, false);
        r.record(0, 5);
        r.record(2, 1);
        r.record(1, (1 << 39) + 7);
        r.record(0, 9); // beyond capacity: dropped
        let got: Vec<_> = r.pages().collect();
        assert_eq!(got, vec![(0, 5), (2, 1), (1, (1 << 39) + 7)]);
    }
}
