//! The wire format: message layout, and socket reads and writes bounded by a deadline.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::*;

pub(super) fn greeting(len: u64) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..8].copy_from_slice(&GREETING_MAGIC);
    g[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    g[16..24].copy_from_slice(&len.to_le_bytes());
    g
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

pub(super) fn reply_header(status: u32, offset: u64, len: u32) -> [u8; REPLY_LEN] {
    let mut h = [0u8; REPLY_LEN];
    h[..4].copy_from_slice(&REPLY_MAGIC);
    h[4..8].copy_from_slice(&status.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..20].copy_from_slice(&len.to_le_bytes());
    h
}

pub(super) fn status_name(status: u32) -> &'static str {
    match status {
        STATUS_OK => "ok",
        STATUS_BAD_REQUEST => "bad request",
        STATUS_OUT_OF_RANGE => "out of range",
        STATUS_SOURCE_ERROR => "source error",
        _ => "unknown status",
    }
}

/// How a bounded read ended short.
pub(super) enum Short {
    /// The deadline passed.
    Timeout,
    /// End of stream after `n` bytes.
    Eof(usize),
    /// Another error, after `n` bytes.
    Io(usize, io::Error),
}

/// Reads all of `buf` before `deadline` (the socket's read time-out is set to what is left
/// before each `read(2)`).
pub(super) fn read_full(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), Short> {
    let mut n = 0;
    while n < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Short::Timeout);
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return Err(Short::Io(n, e));
        }
        match stream.read(&mut buf[n..]) {
            Ok(0) => return Err(Short::Eof(n)),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Short::Timeout)
            }
            Err(e) => return Err(Short::Io(n, e)),
        }
    }
    Ok(())
}

/// Writes all of `buf` before `deadline`.
pub(super) fn write_full(stream: &mut TcpStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
    let mut n = 0;
    while n < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(&buf[n..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The client.
