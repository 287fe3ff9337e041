//! Pages over TCP: the page-server protocol, its client [`TcpSource`] (a [`PageSource`](crate::serve::PageSource) that
//! reads an image held by another process) and its server side ([`TcpImageServer`],
//! [`serve_connection`]), for post-copy migration and remote snapshot restore.
//!
//! The protocol is specified in [`TcpSource`]'s documentation; its constants are here. The
//! files: `wire.rs` (message layout and bounded socket I/O), `client.rs` ([`TcpSource`]),
//! `server.rs` ([`TcpImageServer`], [`serve_connection`]).

use std::time::Duration;

mod client;
mod server;
mod wire;

pub use client::{TcpSource, TcpSourceBuilder, TcpSourceStats};
pub use server::{
    serve_connection, ConnectionStats, ImageServerStats, TcpImageServer, TcpImageServerHandle,
};

/// The protocol version this module speaks (the greeting's `version`).
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest request, in bytes (8 MiB). A [`TcpSource`] splits larger reads.
pub const MAX_REQUEST: usize = 8 << 20;
/// The largest error message a reply carries, in bytes.
pub const MAX_MESSAGE: usize = 1024;
/// Reply status: the bytes follow.
pub const STATUS_OK: u32 = 0;
/// Reply status: the request was malformed (wrong magic, `len` 0 or above [`MAX_REQUEST`]).
pub const STATUS_BAD_REQUEST: u32 = 1;
/// Reply status: the request reaches past the image's end.
pub const STATUS_OUT_OF_RANGE: u32 = 2;
/// Reply status: the server could not read its image.
pub const STATUS_SOURCE_ERROR: u32 = 3;

const GREETING_MAGIC: [u8; 8] = *b"UFFDPAGE";
const REQUEST_MAGIC: [u8; 4] = *b"UFRQ";
const REPLY_MAGIC: [u8; 4] = *b"UFRP";
const GREETING_LEN: usize = 24;
const REQUEST_LEN: usize = 16;
const REPLY_LEN: usize = 20;

/// Default [`TcpSourceBuilder::io_timeout`] and [`TcpImageServer::io_timeout`].
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`TcpSourceBuilder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::wire::{greeting, reply_header};
    use super::*;
    use crate::serve::MemorySource;
    use crate::serve::PageSource;
    use std::io;
    use std::net::TcpListener;
    use std::sync::Arc;

    #[test]
    fn layout() {
        let g = greeting(0x0102_0304_0506_0708);
        assert_eq!(&g[..8], b"UFFDPAGE");
        assert_eq!(&g[8..16], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&g[16..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        let h = reply_header(STATUS_OUT_OF_RANGE, 4096, 3);
        assert_eq!(
            h,
            [b'U', b'F', b'R', b'P', 2, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]
        );
    }

    #[test]
    fn round_trip_and_refusals() {
        let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let server = TcpImageServer::new(
            TcpListener::bind("127.0.0.1:0").unwrap(),
            Arc::new(MemorySource::new(image.clone())),
        )
        .start()
        .unwrap();
        let src = TcpSource::builder()
            .connections(2)
            .connect(server.local_addr())
            .unwrap();
        assert_eq!(src.len(), 100_000);
        let mut b = vec![0u8; 777];
        src.read_at(12_345, &mut b).unwrap();
        assert_eq!(b, image[12_345..12_345 + 777]);
        let e = src.read_at(99_999, &mut [0u8; 2]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(src.stats().failures, 0);
        drop(src);
        assert!(server.wait_idle(Duration::from_secs(10)));
        let stats = server.shutdown();
        assert_eq!((stats.requests, stats.bytes), (1, 777));
    }
}
