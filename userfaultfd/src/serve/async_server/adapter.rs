//! [`BlockingSource`]: a synchronous [`PageSource`] used as an [`AsyncPageSource`].

use std::io;
use std::sync::Arc;

use super::super::{AsyncPageSource, PageSource, SourceFuture};

/// A synchronous [`PageSource`] (a file, a socket, memory) as an [`AsyncPageSource`], so that
/// the [`AsyncServer`](super::AsyncServer) serves it too. Feature `tokio`.
///
/// By default each read runs on tokio's blocking pool (`spawn_blocking`), into a buffer of its
/// own that is then copied into the server's: a blocking `pread` or socket read never stalls a
/// runtime worker, and many run at once (up to the pool's size, 512 threads by default, and the
/// server's [`max_fetches`](super::AsyncServerBuilder::max_fetches)). A source whose reads never
/// block (bytes already in memory, [`MemorySource`](super::super::MemorySource)) can be read
/// [`inline`](Self::inline) on the task instead, saving the thread hop and the copy.
///
/// Dropping a read's future (a server shutting down) abandons the wait; a read already running
/// on the pool finishes there and its bytes are discarded.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::sync::Arc;
/// use userfaultfd::serve::{AsyncPageSource, BlockingSource, MemorySource};
/// let source = BlockingSource::new(Arc::new(MemorySource::new(vec![7u8; 8192])));
/// let mut buf = [0u8; 16];
/// source.read_at(4096, &mut buf).await?;
/// assert_eq!(buf, [7u8; 16]);
/// # Ok(()) }
/// ```
pub struct BlockingSource {
    source: Arc<dyn PageSource>,
    inline: bool,
}

impl std::fmt::Debug for BlockingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingSource")
            .field("len", &self.source.len())
            .field("inline", &self.inline)
            .finish()
    }
}

impl BlockingSource {
    /// `source`, read on tokio's blocking pool.
    pub fn new(source: Arc<dyn PageSource>) -> BlockingSource {
        BlockingSource {
            source,
            inline: false,
        }
    }

    /// `source`, read directly on the calling task: only for sources whose reads never block
    /// (a read that blocks here stalls a runtime worker and every task on it).
    pub fn inline(source: Arc<dyn PageSource>) -> BlockingSource {
        BlockingSource {
            source,
            inline: true,
        }
    }
}

impl AsyncPageSource for BlockingSource {
    fn len(&self) -> u64 {
        self.source.len()
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        if self.inline {
            let res = self.source.read_at(offset, buf);
            return Box::pin(std::future::ready(res));
        }
        Box::pin(async move {
            let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                io::Error::other("BlockingSource reads need a tokio runtime (spawn_blocking)")
            })?;
            let source = Arc::clone(&self.source);
            let len = buf.len();
            let bytes = handle
                .spawn_blocking(move || {
                    let mut bytes = vec![0u8; len];
                    source.read_at(offset, &mut bytes).map(|()| bytes)
                })
                .await
                .map_err(|e| io::Error::other(format!("the blocking read failed: {e}")))??;
            buf.copy_from_slice(&bytes);
            Ok(())
        })
    }

    fn is_zero(&self, offset: u64, len: u64) -> bool {
        self.source.is_zero(offset, len)
    }
}
