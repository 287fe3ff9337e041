//! The typed errors of [`ObjectStoreSource`](super::ObjectStoreSource), and what the server sees
//! of them (an [`io::Error`] whose kind says which case it is).

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why an [`ObjectStoreSource`](super::ObjectStoreSource) could not be opened, or could not read
/// a chunk.
///
/// Reads made by a [`Server`](crate::serve::Server) reach it as an [`io::Error`] (the server
/// then applies its [`FailurePolicy`](crate::serve::FailurePolicy)); the kind tells the cases
/// apart, and [`io::Error::get_ref`] downcasts to this type for the details:
///
/// | variant | `io::ErrorKind` |
/// |---|---|
/// | [`NotFound`](Self::NotFound) | `NotFound` |
/// | [`PermissionDenied`](Self::PermissionDenied) | `PermissionDenied` |
/// | [`TooShort`](Self::TooShort) | `UnexpectedEof` |
/// | [`Changed`](Self::Changed) | `InvalidData` |
/// | [`TimedOut`](Self::TimedOut) | `TimedOut` |
/// | [`Unavailable`](Self::Unavailable), [`Store`](Self::Store) | `Other` |
/// | [`Config`](Self::Config) | `InvalidInput` |
/// | [`Runtime`](Self::Runtime) | `Other` |
/// | [`CacheFile`](Self::CacheFile) | the file system's (`WouldBlock` when locked) |
///
/// Cloneable (the store's error is shared behind an [`Arc`]), because every fault waiting for
/// one chunk gets the same error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectStoreSourceError {
    /// The object (or its bucket) does not exist. Not retried.
    #[error("object {path} not found: {source}")]
    NotFound {
        /// The object's path in the store.
        path: String,
        /// What the store said.
        #[source]
        source: Arc<object_store::Error>,
    },

    /// The credentials were refused or lack the right to read the object. Not retried.
    #[error("reading object {path} was refused (credentials or permissions): {source}")]
    PermissionDenied {
        /// The object's path in the store.
        path: String,
        /// What the store said.
        #[source]
        source: Arc<object_store::Error>,
    },

    /// The object holds fewer bytes than were asked for: shorter than the regions it backs
    /// (at open, against [`min_len`](super::ObjectStoreSourceBuilder::min_len)), or truncated
    /// since (a read returned fewer bytes than its range).
    #[error("object {path} is too short: {needed} bytes needed, it has {len}")]
    TooShort {
        /// The object's path in the store.
        path: String,
        /// Bytes the object has (or the range's end that was cut short).
        len: u64,
        /// Bytes that were needed.
        needed: u64,
    },

    /// The object was replaced since the source opened it (its ETag no longer matches): its
    /// chunks would mix two images. Not retried.
    #[error("object {path} changed since it was opened: {source}")]
    Changed {
        /// The object's path in the store.
        path: String,
        /// What the store said.
        #[source]
        source: Arc<object_store::Error>,
    },

    /// No answer within the source's deadline
    /// ([`RetryPolicy::deadline`](super::RetryPolicy::deadline)), retries included.
    #[error("reading object {path} timed out after {elapsed:?} ({attempts} attempts)")]
    TimedOut {
        /// The object's path in the store.
        path: String,
        /// Time spent on the chunk.
        elapsed: Duration,
        /// Requests made.
        attempts: u32,
    },

    /// Every attempt failed with an error worth retrying (connection refused or reset, a 5xx
    /// answer). Within [`RetryPolicy::failure_hold`](super::RetryPolicy::failure_hold) after
    /// a chunk failed, other chunks get that same error at once, without a request.
    #[error(
        "object store unavailable for {path} after {attempts} attempts in {elapsed:?}: {source}"
    )]
    Unavailable {
        /// The object's path in the store.
        path: String,
        /// Requests made.
        attempts: u32,
        /// Time spent on the chunk.
        elapsed: Duration,
        /// The last error.
        #[source]
        source: Arc<object_store::Error>,
    },

    /// Another error of the store, not worth retrying.
    #[error("object store error: {0}")]
    Store(#[source] Arc<object_store::Error>),

    /// A bad URL, option or setting, found before any request.
    #[error("invalid object store source configuration: {0}")]
    Config(String),

    /// The source's own tokio runtime could not be started, or was shut down under a read.
    #[error("the object store source's runtime failed: {0}")]
    Runtime(String),

    /// The [cache file](super::ObjectStoreSourceBuilder::cache_file) could not be opened,
    /// prepared or locked (at open only: later failures of the file are counted, and the
    /// chunk is fetched from the store instead). Kind `WouldBlock` when another source holds
    /// it.
    #[error("cache file {}: {source}", path.display())]
    CacheFile {
        /// The cache file (or its index).
        path: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: Arc<io::Error>,
    },
}

impl ObjectStoreSourceError {
    /// The [`io::ErrorKind`] the server sees for this error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::NotFound { .. } => io::ErrorKind::NotFound,
            Self::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
            Self::TooShort { .. } => io::ErrorKind::UnexpectedEof,
            Self::Changed { .. } => io::ErrorKind::InvalidData,
            Self::TimedOut { .. } => io::ErrorKind::TimedOut,
            Self::Config(_) => io::ErrorKind::InvalidInput,
            Self::Unavailable { .. } | Self::Store(_) | Self::Runtime(_) => io::ErrorKind::Other,
            Self::CacheFile { source, .. } => source.kind(),
        }
    }

    /// Classifies an error of the store for `path`: `Ok(error)` for a final answer, `Err(error)`
    /// for one worth retrying (returned as the store's error, to be kept as the last one).
    pub(super) fn classify(
        path: &str,
        e: object_store::Error,
    ) -> Result<ObjectStoreSourceError, object_store::Error> {
        use object_store::Error as E;
        let path = path.to_string();
        Ok(match e {
            E::NotFound { .. } => Self::NotFound {
                path,
                source: Arc::new(e),
            },
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Self::PermissionDenied {
                path,
                source: Arc::new(e),
            },
            E::Precondition { .. } | E::NotModified { .. } => Self::Changed {
                path,
                source: Arc::new(e),
            },
            E::Generic { .. } | E::JoinError { .. } => {
                // A range entirely past the object's end comes back as a generic 416.
                let text = e.to_string();
                if text.contains("416") || text.contains("InvalidRange") {
                    Self::Store(Arc::new(e))
                } else {
                    return Err(e);
                }
            }
            other => Self::Store(Arc::new(other)),
        })
    }
}

impl From<ObjectStoreSourceError> for io::Error {
    fn from(e: ObjectStoreSourceError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}
