//! Counters and the demand-fault latency histogram of a [`Server`](super::Server).
//!
//! Everything is a relaxed atomic updated in place: recording a fault allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two in the latency histogram (relative error under 1/4).
const SUB: usize = 4;
/// Buckets: values up to 2^40 ns (~18 minutes), larger ones land in the last.
const BUCKETS: usize = 41 * SUB;

/// A log-linear histogram of durations in nanoseconds.
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    max: AtomicU64,
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let log = 63 - ns.leading_zeros() as usize; // >= 2
    let sub = ((ns >> (log - 2)) & (SUB as u64 - 1)) as usize;
    ((log - 1) * SUB + sub).min(BUCKETS - 1)
}

/// The largest value that lands in bucket `b`.
fn bucket_top(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let log = b / SUB + 1;
    let sub = (b % SUB) as u64;
    ((SUB as u64 + sub + 1) << (log - 2)) - 1
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// (p50, p99, max, count).
    pub(crate) fn summary(&self) -> Latency {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let quantile = |q: f64| -> Duration {
            if total == 0 {
                return Duration::ZERO;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (b, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(bucket_top(b).min(max));
                }
            }
            Duration::from_nanos(max)
        };
        Latency {
            count: total,
            p50: quantile(0.50),
            p99: quantile(0.99),
            max: Duration::from_nanos(max),
        }
    }
}

/// Latency of demand faults: from the moment the server read the fault to the moment the
/// faulting thread was woken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Faults measured.
    pub count: u64,
    /// Median (bucket upper bound: within 25 %).
    pub p50: Duration,
    /// 99th percentile (bucket upper bound).
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

/// The live counters.
pub(crate) struct Counters {
    pub demand_faults: AtomicU64,
    pub pages_demand: AtomicU64,
    pub pages_prefetch: AtomicU64,
    pub pages_background: AtomicU64,
    pub pages_replay: AtomicU64,
    pub pages_zero: AtomicU64,
    pub pages_continue: AtomicU64,
    pub pages_removed_zero: AtomicU64,
    pub pages_dropped: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub copy_ioctls: AtomicU64,
    pub already_mapped: AtomicU64,
    pub mapping_changing: AtomicU64,
    pub source_errors: AtomicU64,
    pub pages_failed: AtomicU64,
    pub events: AtomicU64,
    pub wp_faults: AtomicU64,
    pub populated_ns: AtomicU64,
    pub latency: Histogram,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            demand_faults: AtomicU64::new(0),
            pages_demand: AtomicU64::new(0),
            pages_prefetch: AtomicU64::new(0),
            pages_background: AtomicU64::new(0),
            pages_replay: AtomicU64::new(0),
            pages_zero: AtomicU64::new(0),
            pages_continue: AtomicU64::new(0),
            pages_removed_zero: AtomicU64::new(0),
            pages_dropped: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            copy_ioctls: AtomicU64::new(0),
            already_mapped: AtomicU64::new(0),
            mapping_changing: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            pages_failed: AtomicU64::new(0),
            events: AtomicU64::new(0),
            wp_faults: AtomicU64::new(0),
            populated_ns: AtomicU64::new(0),
            latency: Histogram::new(),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let populated = g(&self.populated_ns);
        Stats {
            demand_faults: g(&self.demand_faults),
            pages_demand: g(&self.pages_demand),
            pages_prefetch: g(&self.pages_prefetch),
            pages_background: g(&self.pages_background),
            pages_replay: g(&self.pages_replay),
            pages_zero: g(&self.pages_zero),
            pages_continue: g(&self.pages_continue),
            pages_removed_zero: g(&self.pages_removed_zero),
            pages_dropped: g(&self.pages_dropped),
            bytes_copied: g(&self.bytes_copied),
            copy_ioctls: g(&self.copy_ioctls),
            already_mapped: g(&self.already_mapped),
            mapping_changing: g(&self.mapping_changing),
            source_errors: g(&self.source_errors),
            pages_failed: g(&self.pages_failed),
            events: g(&self.events),
            wp_faults: g(&self.wp_faults),
            time_to_populated: (populated != 0).then(|| Duration::from_nanos(populated)),
            latency: self.latency.summary(),
        }
    }
}

/// What a [`Server`](super::Server) has done so far ([`Server::stats`](super::Server::stats)).
///
/// Pages are counted by the path that made them present; a page is counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Page-fault messages read (a fault delivered twice counts twice).
    pub demand_faults: u64,
    /// Pages made present for a demand fault (the faulting page itself).
    pub pages_demand: u64,
    /// Pages made present by prefetch around a demand fault.
    pub pages_prefetch: u64,
    /// Pages made present by background fill.
    pub pages_background: u64,
    /// Pages made present by replaying a working set.
    pub pages_replay: u64,
    /// Of all the above, pages mapped as zero pages because the source said they were zero.
    pub pages_zero: u64,
    /// Of all the above, pages mapped from the file's page cache with `UFFDIO_CONTINUE`
    /// (regions made [`minor`](super::Region::minor)): no copy.
    pub pages_continue: u64,
    /// Pages served as zeros after a REMOVE event (never from the source).
    pub pages_removed_zero: u64,
    /// Pages faulted on again after the program dropped them without a REMOVE event
    /// (`MADV_DONTNEED` on a uffd without `EVENT_REMOVE`): served as the kernel would, zeros
    /// for anonymous memory, the file's page for a shared mapping.
    pub pages_dropped: u64,
    /// Bytes copied into the regions with `UFFDIO_COPY`.
    pub bytes_copied: u64,
    /// `UFFDIO_COPY` and `UFFDIO_ZEROPAGE` calls that resolved at least one page.
    pub copy_ioctls: u64,
    /// `EEXIST` answers (a page was already there): the range was woken.
    pub already_mapped: u64,
    /// `EAGAIN` answers (an event was pending): the claim was released and retried.
    pub mapping_changing: u64,
    /// Source reads that failed.
    pub source_errors: u64,
    /// Pages resolved by the failure policy (poisoned or zero-filled) after a source error.
    pub pages_failed: u64,
    /// Non-cooperative events read (REMOVE, UNMAP, REMAP, FORK).
    pub events: u64,
    /// Write-protect faults resolved (synchronous dirty tracking).
    pub wp_faults: u64,
    /// From `start()` to the moment every page of every region was present, once reached.
    pub time_to_populated: Option<Duration>,
    /// Demand-fault latency, read to wake.
    pub latency: Latency,
}

impl Stats {
    /// Pages made present by any path.
    pub fn pages_present(&self) -> u64 {
        self.pages_demand + self.pages_prefetch + self.pages_background + self.pages_replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for ns in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 65_535, 1 << 30, 1 << 39] {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns}");
            assert!(
                bucket_top(b) >= ns,
                "{ns} above bucket {b} top {}",
                bucket_top(b)
            );
            assert!(
                b == 0 || bucket_top(b - 1) < ns,
                "{ns} not in the lowest bucket"
            );
            last = b;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let l = h.summary();
        assert_eq!(l.count, 100);
        assert_eq!(l.max, Duration::from_micros(100));
        // Within a bucket (25 %) of the true values.
        assert!(l.p50 >= Duration::from_micros(50) && l.p50 <= Duration::from_micros(63));
        assert!(l.p99 >= Duration::from_micros(99) && l.p99 <= Duration::from_micros(100));
    }
}
