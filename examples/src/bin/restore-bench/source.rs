//! The throttle that makes the page cache stand for a disk or a network peer, and the
//! `PageSource` wrapper that applies it to every read.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use userfaultfd::serve::PageSource;

/// A slow medium: every request waits `latency` (requests overlap in it, as on a disk with a
/// queue or a network with several requests in flight), then its bytes cross one shared link of
/// `bytes_per_sec` (transfers are serialised: concurrent readers share the bandwidth).
///
/// Waiting is sleeping: the point is to stand for a device the CPU waits on, not to burn it.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: Option<u64>,
    latency: Duration,
    /// When the link is free again.
    link_free: Mutex<Instant>,
}

impl Throttle {
    /// A throttle of `mbps` megabytes (10^6 bytes) per second (`None`: unlimited) and
    /// `latency` per request.
    pub fn new(mbps: Option<u64>, latency: Duration) -> Throttle {
        Throttle {
            bytes_per_sec: mbps.map(|m| m * 1_000_000),
            latency,
            link_free: Mutex::new(Instant::now()),
        }
    }

    /// Sleeps as long as reading `len` bytes from the medium takes now.
    pub fn wait(&self, len: usize) {
        let now = Instant::now();
        let transfer = self.bytes_per_sec.map_or(Duration::ZERO, |b| {
            Duration::from_secs_f64(len as f64 / b as f64)
        });
        let done = {
            let mut free = self
                .link_free
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let start = (*free).max(now + self.latency);
            *free = start + transfer;
            *free
        };
        let left = done.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left);
        }
    }
}

/// A source whose every read first waits for the [`Throttle`]. It has no direct view, so the
/// server must read through [`read_at`](PageSource::read_at) (into its bounce buffers), as it
/// would from a disk or a socket.
pub struct Throttled {
    inner: Arc<dyn PageSource>,
    throttle: Arc<Throttle>,
}

impl Throttled {
    /// `inner`, read through `throttle`.
    pub fn new(inner: Arc<dyn PageSource>, throttle: Arc<Throttle>) -> Throttled {
        Throttled { inner, throttle }
    }
}

impl PageSource for Throttled {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.throttle.wait(buf.len());
        self.inner.read_at(offset, buf)
    }

    fn is_zero(&self, offset: u64, len: u64) -> bool {
        // What the medium's metadata knows (holes) costs no transfer.
        self.inner.is_zero(offset, len)
    }
    // No `direct`: a throttled medium is not memory.
}
