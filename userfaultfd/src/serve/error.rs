//! Errors of the fault-handling runtime.

use std::io;
use std::time::Duration;

/// What went wrong in a [`Server`](super::Server): refused configuration, a failed source read,
/// a failed userfaultfd call, or the server stopping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The builder's configuration or a region was refused before anything started.
    #[error("invalid server configuration: {0}")]
    Config(String),

    /// A source read failed; the pages concerned were resolved by the failure policy.
    #[error("source read of {len} bytes at offset {offset} (region {region}) failed: {error}")]
    Source {
        /// Index of the region (in the order the builder got them).
        region: usize,
        /// Offset in the source.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// What the source said.
        #[source]
        error: io::Error,
    },

    /// A userfaultfd call failed in a way the server could not absorb.
    #[error(transparent)]
    Uffd(#[from] crate::Error),

    /// A bounded wait ended before its condition held.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// The server stopped before the wait's condition held (shut down, the source failed under
    /// [`FailurePolicy::Stop`](super::FailurePolicy::Stop), the monitored process exited, or a
    /// handler thread panicked).
    #[error("the server stopped: {0}")]
    Stopped(String),

    /// A server thread panicked; the server stopped serving (see
    /// [`FailurePolicy::Stop`](super::FailurePolicy::Stop) for what faulting threads then see).
    #[error("a server thread panicked: {0}")]
    Panicked(String),

    /// A fault arrived at an address outside every served region; it was left unresolved.
    #[error("a fault at {0:#x} lies outside every served region")]
    Unserved(usize),
}
