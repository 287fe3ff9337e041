//! Bounded retries: how long one chunk may take before the server is told it failed.

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::ObjectStoreSourceError;

/// How an [`ObjectStoreSource`](super::ObjectStoreSource) retries a chunk's request, and the
/// bounds that keep a page fault from waiting long on a store that does not answer.
///
/// A request failing with an error worth retrying (connection refused or reset, a time-out, a
/// 5xx answer) is tried again after a backoff that starts at
/// [`initial_backoff`](Self::initial_backoff) and doubles up to
/// [`max_backoff`](Self::max_backoff), at most [`max_retries`](Self::max_retries) times; each
/// attempt is cut off after [`attempt_timeout`](Self::attempt_timeout), and the chunk as a whole
/// after [`deadline`](Self::deadline). Missing objects, refused credentials, a changed object and
/// a short object are final at once. After a chunk failed for good, reads of chunks not cached
/// fail at once with the same error for [`failure_hold`](Self::failure_hold) (cached chunks are
/// still served), so a dead store costs the server one deadline, not one per page (after a
/// failed read the server retries page by page, to narrow the failure down).
///
/// The defaults (3 retries, 50 ms doubling to 1 s, 5 s per attempt, 10 s per chunk, 1 s hold)
/// suit a store on the same network; a 2 MiB chunk takes about 25 ms from S3 in the same
/// region. Stores built by [`ObjectStoreSource::from_url`](super::ObjectStoreSource::from_url)
/// get the client's own retries turned off and its request time-out set to `attempt_timeout`,
/// so these bounds are the only ones; a store passed in keeps its own retry configuration,
/// under these bounds.
///
/// ```
/// use std::time::Duration;
/// use userfaultfd::serve::RetryPolicy;
///
/// let fast = RetryPolicy::new()
///     .max_retries(2)
///     .attempt_timeout(Duration::from_secs(1))
///     .deadline(Duration::from_secs(3));
/// assert_eq!(fast.get_max_retries(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Duration,
    connect_timeout: Duration,
    deadline: Duration,
    failure_hold: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// The defaults: 3 retries, backoff 50 ms doubling to 1 s, 5 s per attempt (1 s to
    /// connect), 10 s per chunk, failures held for 1 s.
    pub fn new() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
            failure_hold: Duration::from_secs(1),
        }
    }

    /// Retries after the first attempt (0: one attempt only).
    pub fn max_retries(mut self, n: u32) -> RetryPolicy {
        self.max_retries = n;
        self
    }

    /// The first backoff; each retry doubles it up to [`max_backoff`](Self::max_backoff).
    pub fn initial_backoff(mut self, d: Duration) -> RetryPolicy {
        self.initial_backoff = d;
        self
    }

    /// The largest backoff.
    pub fn max_backoff(mut self, d: Duration) -> RetryPolicy {
        self.max_backoff = d;
        self
    }

    /// How long one request (headers and body) may take.
    pub fn attempt_timeout(mut self, d: Duration) -> RetryPolicy {
        self.attempt_timeout = d;
        self
    }

    /// How long connecting may take, for stores built from a URL.
    pub fn connect_timeout(mut self, d: Duration) -> RetryPolicy {
        self.connect_timeout = d;
        self
    }

    /// How long one chunk may take, retries and backoff included: the longest a fault waits
    /// for the store before the server's failure policy applies.
    pub fn deadline(mut self, d: Duration) -> RetryPolicy {
        self.deadline = d;
        self
    }

    /// After a chunk failed for good, how long new requests fail at once without asking the
    /// store (0 turns this off).
    pub fn failure_hold(mut self, d: Duration) -> RetryPolicy {
        self.failure_hold = d;
        self
    }

    /// See [`max_retries`](Self::max_retries).
    pub fn get_max_retries(&self) -> u32 {
        self.max_retries
    }

    /// See [`attempt_timeout`](Self::attempt_timeout).
    pub fn get_attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// See [`connect_timeout`](Self::connect_timeout).
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// See [`deadline`](Self::deadline).
    pub fn get_deadline(&self) -> Duration {
        self.deadline
    }

    /// See [`failure_hold`](Self::failure_hold).
    pub fn get_failure_hold(&self) -> Duration {
        self.failure_hold
    }

    pub(super) fn check(&self) -> Result<(), ObjectStoreSourceError> {
        if self.attempt_timeout.is_zero() || self.deadline.is_zero() {
            return Err(ObjectStoreSourceError::Config(
                "attempt_timeout and deadline must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Runs `attempt` under this policy: retried while it fails with an error worth
    /// retrying, within the bounds. `retries` counts the retries made.
    pub(super) async fn run<T, F, Fut>(
        &self,
        path: &str,
        retries: &std::sync::atomic::AtomicU64,
        mut attempt: F,
    ) -> Result<T, ObjectStoreSourceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, object_store::Error>>,
    {
        let start = Instant::now();
        let mut backoff = self.initial_backoff;
        let mut attempts = 0u32;
        loop {
            let left = self.deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(ObjectStoreSourceError::TimedOut {
                    path: path.to_string(),
                    elapsed: start.elapsed(),
                    attempts,
                });
            }
            attempts += 1;
            let last = match tokio::time::timeout(self.attempt_timeout.min(left), attempt()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match ObjectStoreSourceError::classify(path, e) {
                    Ok(fatal) => return Err(fatal),
                    Err(transient) => Some(transient),
                },
                Err(_) => None,
            };
            let left = self.deadline.saturating_sub(start.elapsed());
            if attempts > self.max_retries || left <= backoff {
                return Err(match last {
                    Some(e) => ObjectStoreSourceError::Unavailable {
                        path: path.to_string(),
                        attempts,
                        elapsed: start.elapsed(),
                        source: std::sync::Arc::new(e),
                    },
                    None => ObjectStoreSourceError::TimedOut {
                        path: path.to_string(),
                        elapsed: start.elapsed(),
                        attempts,
                    },
                });
            }
            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}
