//! Read-through coalescing: when prefetch, replay or background fill meets a stretch of a
//! region where missing pages alternate with pages already present (memory fragmented by a
//! working-set replay or by scattered demand faults), the source is read once for the whole
//! stretch, and only the missing runs are copied out of that one read.
//!
//! Why: every read of a disk or a network peer pays a per-request latency as well as its
//! bytes. Reading each missing run on its own pays that latency once per run; reading across
//! a short present gap costs the gap's bytes instead. A gap is read through when it is at most
//! [`COALESCE_GAP`] bytes: at 200 MB/s and 100 µs per request a request costs as much as 20 KB
//! of transfer, and `restore-bench` after an exact replay of 25 % and of 75 % of the pages
//! populated fastest with gaps of 16 to 32 KiB read through (128 KiB and 1 MiB read too many
//! present pages; none, one request per run, was 1.4 to 1.6 times slower). Sources with a direct
//! view (memory, a mapped
//! file) are never read, so they keep the per-run path, as do `MINOR` regions (mapped from the
//! page cache) and huge pages (a gap of one huge page costs more than a request).
//!
//! Page states are claimed as on every other path, after the read: a page is copied only by
//! the thread that claimed it from `MISSING`, so no page is copied twice, and a page removed
//! (`REMOVED`) or unmapped (`GONE`) while the read was in flight is never claimed, so source
//! bytes never land on it. A page that was `MISSING` when the read started can only still be
//! `MISSING` or have been taken by another path; either way the bytes read for it are its
//! source bytes.

use super::shared::{Path, Shared};
use super::state::MISSING;
use super::stats::Counters;

/// The longest gap of pages not missing (present, claimed by another thread, removed) that a
/// coalesced read spans, in bytes; at least one base page.
pub(super) const COALESCE_GAP: usize = 32 << 10;

impl Shared {
    /// Fills missing pages of region `ri` from page `first` (missing when the caller looked),
    /// reading no page at or past `limit`. Either one coalesced read covers several missing
    /// runs of `first..limit` separated by short gaps, or the run of missing pages at `first`
    /// is claimed and filled as [`fill`](Self::fill) does. Returns the page after the last one
    /// this call covered, or `None` when `first` was taken meanwhile (nothing was done).
    pub(super) fn fill_from(
        &self,
        ri: usize,
        first: usize,
        limit: usize,
        path: Path,
        bounce: &mut [u8],
    ) -> Option<usize> {
        if let Some(end) = self.coalesced_span(ri, first, limit) {
            if self.fill_coalesced(ri, first, end, path, bounce) {
                return Some(end);
            }
        }
        let r = &self.regions[ri];
        let stop = r.states.claim_run(first, limit);
        if stop == first {
            return None;
        }
        self.fill(ri, first, stop, path, bounce, false);
        Some(stop)
    }

    /// The end of the span from `first` that one read should cover: the end of the last
    /// missing run reachable from `first` (below `limit`, within the bounce buffer) over gaps
    /// of at most [`COALESCE_GAP`]. `None` when the span holds a single missing run (nothing to
    /// coalesce) or the region's source is not read.
    fn coalesced_span(&self, ri: usize, first: usize, limit: usize) -> Option<usize> {
        let r = &self.regions[ri];
        let max_gap = COALESCE_GAP.max(crate::page_size()) / r.page_size;
        if max_gap == 0 || r.minor || r.source.direct().is_some() {
            return None;
        }
        let limit = limit.min(first + self.chunk_max / r.page_size);
        let mut end = first;
        let mut runs = 0;
        let mut p = first;
        while p < limit {
            if r.states.get(p) == MISSING {
                runs += 1;
                while p < limit && r.states.get(p) == MISSING {
                    p += 1;
                }
                end = p;
            } else {
                let gap = p;
                while p < limit && p - gap <= max_gap && r.states.get(p) != MISSING {
                    p += 1;
                }
                if p - gap > max_gap || p == limit {
                    break;
                }
            }
        }
        (runs > 1).then_some(end)
    }

    /// Reads the source bytes of pages `first..end` of region `ri` in one request into
    /// `bounce`, then claims and installs each run of missing pages in it. Returns `false`
    /// (nothing claimed) when the read failed or the span is all zeros: the caller then fills
    /// run by run, which narrows a failure down to its pages and maps zero pages.
    fn fill_coalesced(
        &self,
        ri: usize,
        first: usize,
        end: usize,
        path: Path,
        bounce: &mut [u8],
    ) -> bool {
        let r = &self.regions[ri];
        let ps = r.page_size;
        let offset = r.source_offset + (first * ps) as u64;
        let len = (end - first) * ps;
        if r.source.is_zero(offset, len as u64) {
            return false;
        }
        let buf = &mut bounce[..len];
        // Only the last page of a region can reach past the source's end.
        let avail = r.source.len().saturating_sub(offset).min(len as u64) as usize;
        buf[avail..].fill(0);
        if r.source.read_at(offset, &mut buf[..avail]).is_err() {
            Counters::add(&self.counters.source_errors, 1);
            return false;
        }
        let mut p = first;
        while let Some(a) = r.states.next_missing(p, end) {
            let b = r.states.claim_run(a, end);
            if b == a {
                p = a + 1;
                continue;
            }
            let at = (a - first) * ps;
            let run_offset = offset + at as u64;
            let zero = !r.huge() && r.source.is_zero(run_offset, ((b - a) * ps) as u64);
            let src = if zero {
                std::ptr::null()
            } else {
                buf[at..].as_ptr()
            };
            // SAFETY: unless `zero`, `src` points into `buf` at the bytes of page `a`, and
            // `buf` holds the source bytes of every page up to `end >= b`: readable for
            // `(b - a) * ps` bytes, and not written until `install` returns.
            unsafe { self.install(ri, a, b, path, src, zero, false) };
            p = b;
        }
        true
    }
}
