//! Pages over TCP: the page-server protocol, its client [`TcpSource`] (a [`PageSource`] that
//! reads an image held by another process) and its server side ([`TcpImageServer`],
//! [`serve_connection`]), for post-copy migration and remote snapshot restore.
//!
//! The protocol is specified in [`TcpSource`]'s documentation; its constants are here.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::PageSource;

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

fn greeting(len: u64) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..8].copy_from_slice(&GREETING_MAGIC);
    g[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    g[16..24].copy_from_slice(&len.to_le_bytes());
    g
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn reply_header(status: u32, offset: u64, len: u32) -> [u8; REPLY_LEN] {
    let mut h = [0u8; REPLY_LEN];
    h[..4].copy_from_slice(&REPLY_MAGIC);
    h[4..8].copy_from_slice(&status.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..20].copy_from_slice(&len.to_le_bytes());
    h
}

fn status_name(status: u32) -> &'static str {
    match status {
        STATUS_OK => "ok",
        STATUS_BAD_REQUEST => "bad request",
        STATUS_OUT_OF_RANGE => "out of range",
        STATUS_SOURCE_ERROR => "source error",
        _ => "unknown status",
    }
}

/// How a bounded read ended short.
enum Short {
    /// The deadline passed.
    Timeout,
    /// End of stream after `n` bytes.
    Eof(usize),
    /// Another error, after `n` bytes.
    Io(usize, io::Error),
}

/// Reads all of `buf` before `deadline` (the socket's read time-out is set to what is left
/// before each `read(2)`).
fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), Short> {
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
fn write_full(stream: &mut TcpStream, buf: &[u8], deadline: Instant) -> io::Result<()> {
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

/// Options of a [`TcpSource`], and its [`connect`](Self::connect).
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// use userfaultfd::serve::TcpSource;
///
/// let source = TcpSource::builder()
///     .connect_timeout(Duration::from_secs(2))
///     .io_timeout(Duration::from_secs(5))
///     .connections(4)
///     .connect("127.0.0.1:7777")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TcpSourceBuilder {
    connect_timeout: Duration,
    io_timeout: Duration,
    connections: usize,
    max_failures: u32,
}

impl Default for TcpSourceBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpSourceBuilder {
    /// The defaults: connect time-out 5 s, I/O time-out 10 s, at most 4 connections, give up
    /// after 3 failed reads in a row.
    pub fn new() -> TcpSourceBuilder {
        TcpSourceBuilder {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
            connections: 4,
            max_failures: 3,
        }
    }

    /// How long opening a connection (TCP handshake) may take (default 5 s; a zero duration is
    /// taken as 1 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> TcpSourceBuilder {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long one exchange may take: receiving the greeting, or sending a request and
    /// receiving all of its reply (default 10 s; a zero duration is taken as 1 ms). A read
    /// that takes longer fails with [`TimedOut`](io::ErrorKind::TimedOut).
    pub fn io_timeout(mut self, timeout: Duration) -> TcpSourceBuilder {
        self.io_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The most connections open at once (default 4, at least 1): that many reads proceed
    /// concurrently, one per connection; more callers wait for a connection to be free.
    /// Connections are opened when needed and kept for later reads. Match it to the server's
    /// threads that read (handler threads, background fill threads, replay).
    pub fn connections(mut self, n: usize) -> TcpSourceBuilder {
        self.connections = n.max(1);
        self
    }

    /// After this many reads in a row failed (default 3, at least 1), the source gives up:
    /// every later read fails at once, without network traffic, so that a dead or hung page
    /// server costs a few time-outs rather than one per page.
    pub fn max_failures(mut self, n: u32) -> TcpSourceBuilder {
        self.max_failures = n.max(1);
        self
    }

    /// Connects to the page server at `addr`, reads its greeting, and returns the source, which
    /// keeps that first connection for its reads.
    ///
    /// # Errors
    ///
    /// What resolving `addr` or connecting reports (`ConnectionRefused`, `TimedOut`, ...);
    /// [`InvalidData`](io::ErrorKind::InvalidData) when the peer's greeting is not that of a
    /// version-1 page server; `TimedOut` or `UnexpectedEof` when the greeting does not come in
    /// full within the I/O time-out.
    pub fn connect(self, addr: impl ToSocketAddrs) -> io::Result<TcpSource> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the page server's address resolved to nothing",
            ));
        }
        let (conn, len) = open(&addrs, None, self.connect_timeout, self.io_timeout)?;
        let mut idle = Vec::with_capacity(self.connections);
        idle.push(conn);
        Ok(TcpSource {
            addr: addrs[0],
            addrs,
            len,
            options: self,
            pool: Mutex::new(Pool { idle, open: 1 }),
            freed: Condvar::new(),
            failures: AtomicU32::new(0),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            counters: ClientCounters::default(),
        })
    }
}

/// An open connection (the greeting was read).
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
}

/// Opens a connection to the first of `addrs` that answers and reads its greeting; the image
/// length must be `expect` when given (a reconnection).
fn open(
    addrs: &[SocketAddr],
    expect: Option<u64>,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> io::Result<(Conn, u64)> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect_timeout(&addr, connect_timeout) {
            Ok(stream) => return greet(stream, addr, expect, io_timeout),
            Err(e) => {
                last = Some(io::Error::new(
                    e.kind(),
                    format!("cannot connect to the page server at {addr}: {e}"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotConnected)))
}

fn greet(
    mut stream: TcpStream,
    peer: SocketAddr,
    expect: Option<u64>,
    io_timeout: Duration,
) -> io::Result<(Conn, u64)> {
    stream.set_nodelay(true)?;
    let mut g = [0u8; GREETING_LEN];
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    match read_full(&mut stream, &mut g, Instant::now() + io_timeout) {
        Ok(()) => {}
        Err(Short::Timeout) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no greeting from the page server at {peer} within {io_timeout:?}"),
            ))
        }
        Err(Short::Eof(n)) => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the page server at {peer} closed the connection after {n} bytes of its \
                     {GREETING_LEN}-byte greeting"
                ),
            ))
        }
        Err(Short::Io(_, e)) => {
            return Err(io::Error::new(
                e.kind(),
                format!("reading the greeting of the page server at {peer}: {e}"),
            ))
        }
    }
    if g[..8] != GREETING_MAGIC {
        return Err(bad(format!(
            "{peer} is not a page server: its greeting starts with {:02x?}, not \"UFFDPAGE\"",
            &g[..8]
        )));
    }
    let version = u32_at(&g, 8);
    if version != PROTOCOL_VERSION || u32_at(&g, 12) != 0 {
        return Err(bad(format!(
            "the page server at {peer} speaks protocol version {version} (flags {:#x}); this \
             client speaks version {PROTOCOL_VERSION}",
            u32_at(&g, 12)
        )));
    }
    let len = u64_at(&g, 16);
    if let Some(want) = expect {
        if len != want {
            return Err(bad(format!(
                "the page server at {peer} now serves {len} bytes, not {want}: another image"
            )));
        }
    }
    Ok((Conn { stream, peer }, len))
}

struct Pool {
    idle: Vec<Conn>,
    /// Connections open: idle ones and those in use.
    open: usize,
}

#[derive(Default)]
struct ClientCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    failures: AtomicU64,
}

/// What a [`TcpSource`] has done ([`TcpSource::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpSourceStats {
    /// Requests answered with the image's bytes.
    pub requests: u64,
    /// Image bytes received.
    pub bytes: u64,
    /// Connections opened, the first included.
    pub connections: u64,
    /// Reads that failed (time-outs, corrupt replies, error statuses, lost connections).
    pub failures: u64,
}

/// A [`PageSource`] whose image is held by a page server over TCP (a [`TcpImageServer`], or
/// anything speaking the [protocol](#protocol-version-1)): post-copy migration, restore from
/// a remote snapshot.
///
/// **Connections.** The source keeps a small pool of connections
/// ([`connections`](TcpSourceBuilder::connections), default 4), each used by one read at a
/// time, so the server's handler and background threads read concurrently. A read takes an
/// idle connection, or opens one if fewer are open, or waits (bounded) for one to be freed.
///
/// **Failures.** A read sends one request per [`MAX_REQUEST`] bytes and checks every reply:
/// a time-out, a closed connection, a short reply, a wrong magic, offset or length, or an
/// error status fails the read with an `io::Error` saying what happened, and the connection is
/// closed (its stream can no longer be trusted); a later read opens a new one. A kept
/// connection that the server closed meanwhile (its idle time-out) is noticed when no byte of
/// the reply comes: that read is retried once on a new connection. After
/// [`max_failures`](TcpSourceBuilder::max_failures) failed reads in a row the source gives up
/// for good: later reads fail at once with the last error; make a new source to try again.
/// Reads never panic and never wait beyond the time-outs.
///
/// The runtime then applies its [`FailurePolicy`](super::FailurePolicy) to the pages whose
/// read failed.
///
/// A successful read allocates nothing: the image's bytes go straight into the caller's
/// buffer.
///
/// # Protocol (version 1)
///
/// Every integer is a fixed-width **little-endian** unsigned integer; there is no padding.
///
/// **Greeting**, sent by the server as soon as it accepts a connection (24 bytes):
///
/// | bytes  | field     | value                                             |
/// |--------|-----------|---------------------------------------------------|
/// | 0..8   | magic     | `b"UFFDPAGE"`                                     |
/// | 8..12  | version   | `u32`: [`PROTOCOL_VERSION`] (1)                   |
/// | 12..16 | reserved  | `u32`: 0                                          |
/// | 16..24 | length    | `u64`: bytes in the image                         |
///
/// A client checks the magic, the version and the reserved field, and closes the connection
/// if any differs: it is not talking to a page server of this version.
///
/// **Request**, sent by the client (16 bytes): the next request may only be sent once the
/// previous reply was read in full.
///
/// | bytes  | field  | value                                                    |
/// |--------|--------|----------------------------------------------------------|
/// | 0..4   | magic  | `b"UFRQ"`                                                |
/// | 4..8   | len    | `u32`: bytes wanted, `1..=`[`MAX_REQUEST`] (8 MiB)       |
/// | 8..16  | offset | `u64`: byte offset in the image; `offset + len <= length` |
///
/// **Reply** (20-byte header, then `len` bytes):
///
/// | bytes  | field  | value                                                             |
/// |--------|--------|-------------------------------------------------------------------|
/// | 0..4   | magic  | `b"UFRP"`                                                         |
/// | 4..8   | status | `u32`: [`STATUS_OK`] (0) or an error status (below)               |
/// | 8..16  | offset | `u64`: the request's offset, echoed                               |
/// | 16..20 | len    | `u32`: bytes that follow                                          |
///
/// With [`STATUS_OK`], `len` is the request's `len` and the image's bytes
/// `offset..offset + len` follow. Otherwise a UTF-8 message of at most [`MAX_MESSAGE`] (1 KiB)
/// bytes follows, and the server then closes the connection. The error statuses:
/// [`STATUS_BAD_REQUEST`] (1: wrong magic, `len` 0 or above [`MAX_REQUEST`]),
/// [`STATUS_OUT_OF_RANGE`] (2: past the image's end), [`STATUS_SOURCE_ERROR`] (3: the server
/// could not read its image). A client treats anything else (another magic, an unknown
/// status, an offset that is not the one asked, a `len` other than the one asked, a longer
/// message, a connection closed mid-reply) as a corrupt stream, and closes the connection.
///
/// There is no other message: a client closes its connection to end it; a server closes a
/// connection that sent nothing for its idle time-out.
///
/// ## Time-outs and limits
///
/// Nothing waits without a bound. The client's [`io_timeout`](TcpSourceBuilder::io_timeout)
/// bounds each whole exchange (the greeting; a request and its whole reply), not just each
/// system call; connecting is bounded by [`connect_timeout`](TcpSourceBuilder::connect_timeout).
/// The server bounds the wait for a request by its
/// [`idle_timeout`](TcpImageServer::idle_timeout) and the sending of a greeting or a reply by
/// its [`io_timeout`](TcpImageServer::io_timeout). No request exceeds [`MAX_REQUEST`] bytes,
/// so neither side buffers more than that per connection (a client splits larger reads into
/// several requests).
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::TcpListener;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{
///     MemorySource, PageSource, Region, ServerBuilder, TcpImageServer, TcpSource,
/// };
/// use userfaultfd::UffdBuilder;
///
/// let page = userfaultfd::page_size();
/// // The source process: page n of its image holds the byte n.
/// let image: Vec<u8> = (0..64 * page).map(|i| (i / page) as u8).collect();
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let pages = TcpImageServer::new(listener, Arc::new(MemorySource::new(image))).start()?;
///
/// // The destination: empty memory, filled on demand from the page server.
/// let source = Arc::new(TcpSource::connect(pages.local_addr())?);
/// assert_eq!(source.len() as usize, 64 * page);
/// let memory = Arc::new(userfaultfd::mmap::MemoryMapping::new_private(64 * page)?);
/// let server = ServerBuilder::new()
///     .region(Region::new(memory.clone(), source.clone()))
///     .start(UffdBuilder::new().user_mode_only(true).create()?)?;
/// assert_eq!(memory.read_obj::<u8>(40 * page)?, 40); // a fault, served over TCP
/// server.wait_populated(Duration::from_secs(10))?; // background fill fetched the rest
/// for n in 0..64 {
///     assert_eq!(memory.read_obj::<u8>(n * page + 7)?, n as u8);
/// }
/// let stats = server.shutdown()?;
/// assert_eq!(stats.pages_present(), 64);
/// assert_eq!(source.stats().bytes as usize, 64 * page); // every page fetched once
/// drop(source); // closes the connections
/// pages.shutdown();
/// # Ok(()) }
/// ```
pub struct TcpSource {
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    len: u64,
    options: TcpSourceBuilder,
    pool: Mutex<Pool>,
    freed: Condvar,
    failures: AtomicU32,
    broken: Mutex<Option<(io::ErrorKind, String)>>,
    is_broken: AtomicBool,
    counters: ClientCounters,
}

impl fmt::Debug for TcpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSource")
            .field("addr", &self.addr)
            .field("len", &self.len)
            .field("options", &self.options)
            .field("broken", &self.is_broken.load(Ordering::Relaxed))
            .field("stats", &self.stats())
            .finish()
    }
}

/// How a request failed.
struct Failed {
    error: io::Error,
    /// Nothing of the reply came: the connection was closed (or reset) before it.
    stale: bool,
}

impl TcpSource {
    /// Connects to the page server at `addr` with the default options (see
    /// [`TcpSourceBuilder`]).
    ///
    /// # Errors
    ///
    /// As [`TcpSourceBuilder::connect`].
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpSource> {
        TcpSourceBuilder::new().connect(addr)
    }

    /// A builder, to set time-outs and the number of connections.
    pub fn builder() -> TcpSourceBuilder {
        TcpSourceBuilder::new()
    }

    /// The page server's address (the one the first connection reached first).
    pub fn peer_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the source has done so far.
    pub fn stats(&self) -> TcpSourceStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TcpSourceStats {
            requests: g(&self.counters.requests),
            bytes: g(&self.counters.bytes),
            connections: g(&self.counters.connections) + 1,
            failures: g(&self.counters.failures),
        }
    }

    /// Whether the source gave up after [`max_failures`](TcpSourceBuilder::max_failures)
    /// failed reads in a row.
    pub fn is_broken(&self) -> bool {
        self.is_broken.load(Ordering::Acquire)
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection (`true`: it was kept from an earlier read), or a new one.
    fn take(&self) -> io::Result<(Conn, bool)> {
        // Holders give their connection back within their I/O time-out (or a connect).
        let bound = self.options.io_timeout * 2 + self.options.connect_timeout;
        let deadline = Instant::now() + bound;
        let mut pool = self.lock_pool();
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok((c, true));
            }
            if pool.open < self.options.connections {
                pool.open += 1;
                drop(pool);
                return self.reopen().map(|c| (c, false));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no connection to the page server at {} was free within {bound:?}",
                        self.addr
                    ),
                ));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Opens a connection for a slot already counted in `open`; frees the slot on failure.
    fn reopen(&self) -> io::Result<Conn> {
        let r = open(
            &self.addrs,
            Some(self.len),
            self.options.connect_timeout,
            self.options.io_timeout,
        );
        match r {
            Ok((c, _)) => {
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                Ok(c)
            }
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    fn give_back(&self, c: Conn) {
        self.lock_pool().idle.push(c);
        self.freed.notify_one();
    }

    /// Frees the slot of a connection that was closed.
    fn discard(&self) {
        self.lock_pool().open -= 1;
        self.freed.notify_one();
    }

    /// One request for all of `buf` (at most [`MAX_REQUEST`] bytes) at `offset`.
    fn request(&self, c: &mut Conn, offset: u64, buf: &mut [u8]) -> Result<(), Failed> {
        let (peer, asked) = (c.peer, buf.len());
        let what = || format!("read of {asked} bytes at {offset} from {peer}");
        let deadline = Instant::now() + self.options.io_timeout;
        let mut req = [0u8; REQUEST_LEN];
        req[..4].copy_from_slice(&REQUEST_MAGIC);
        req[4..8].copy_from_slice(&(asked as u32).to_le_bytes());
        req[8..16].copy_from_slice(&offset.to_le_bytes());
        if let Err(e) = write_full(&mut c.stream, &req, deadline) {
            let stale = matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            );
            return Err(Failed {
                error: io::Error::new(e.kind(), format!("{}: sending the request: {e}", what())),
                stale,
            });
        }
        let timeout = self.options.io_timeout;
        let short = |s: Short, part: &str, expected: usize| -> Failed {
            match s {
                Short::Timeout => Failed {
                    error: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{}: no complete reply within {timeout:?}", what()),
                    ),
                    stale: false,
                },
                Short::Eof(n) => Failed {
                    error: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: the connection was closed after {n} of the {expected} bytes of \
                             the reply's {part}",
                            what()
                        ),
                    ),
                    stale: n == 0 && part == "header",
                },
                Short::Io(n, e) => Failed {
                    stale: n == 0 && part == "header" && e.kind() == io::ErrorKind::ConnectionReset,
                    error: io::Error::new(
                        e.kind(),
                        format!("{}: receiving the reply's {part}: {e}", what()),
                    ),
                },
            }
        };
        let mut h = [0u8; REPLY_LEN];
        read_full(&mut c.stream, &mut h, deadline).map_err(|s| short(s, "header", REPLY_LEN))?;
        let corrupt = |msg: String| Failed {
            error: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: corrupt reply: {msg}", what()),
            ),
            stale: false,
        };
        if h[..4] != REPLY_MAGIC {
            return Err(corrupt(format!(
                "header starts with {:02x?}, not \"UFRP\"",
                &h[..4]
            )));
        }
        let (status, echo, len) = (u32_at(&h, 4), u64_at(&h, 8), u32_at(&h, 16) as usize);
        if echo != offset {
            return Err(corrupt(format!("it is for offset {echo}")));
        }
        match status {
            STATUS_OK if len == asked => {
                read_full(&mut c.stream, buf, deadline).map_err(|s| short(s, "data", len))?;
                Ok(())
            }
            STATUS_OK => Err(corrupt(format!(
                "it announces {len} bytes for the {asked} asked"
            ))),
            STATUS_BAD_REQUEST | STATUS_OUT_OF_RANGE | STATUS_SOURCE_ERROR
                if len <= MAX_MESSAGE =>
            {
                let mut msg = [0u8; MAX_MESSAGE];
                read_full(&mut c.stream, &mut msg[..len], deadline)
                    .map_err(|s| short(s, "message", len))?;
                let kind = match status {
                    STATUS_BAD_REQUEST => io::ErrorKind::InvalidInput,
                    STATUS_OUT_OF_RANGE => io::ErrorKind::UnexpectedEof,
                    _ => io::ErrorKind::Other,
                };
                Err(Failed {
                    error: io::Error::new(
                        kind,
                        format!(
                            "{}: the page server refused it ({}): {}",
                            what(),
                            status_name(status),
                            String::from_utf8_lossy(&msg[..len])
                        ),
                    ),
                    stale: false,
                })
            }
            _ => Err(corrupt(format!(
                "status {status} ({}) with {len} bytes",
                status_name(status)
            ))),
        }
    }

    /// Reads `buf` at `offset` in requests of at most [`MAX_REQUEST`] bytes on one connection.
    fn read_on(&self, c: &mut Conn, offset: u64, buf: &mut [u8]) -> Result<(), Failed> {
        let mut at = offset;
        for (k, chunk) in buf.chunks_mut(MAX_REQUEST).enumerate() {
            let r = self.request(c, at, chunk);
            if let Err(mut f) = r {
                // Only the first request can meet a connection closed while it was idle.
                f.stale &= k == 0;
                return Err(f);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            at += chunk.len() as u64;
        }
        Ok(())
    }

    fn give_up_error(&self) -> io::Error {
        let b = self.broken.lock().unwrap_or_else(PoisonError::into_inner);
        let (kind, msg) = b
            .clone()
            .unwrap_or((io::ErrorKind::Other, String::from("unknown error")));
        io::Error::new(
            kind,
            format!(
                "gave up on the page server at {} after {} failed reads in a row; the last: {msg}",
                self.addr, self.options.max_failures
            ),
        )
    }

    fn failed(&self, e: io::Error) -> io::Error {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.options.max_failures && !self.is_broken.load(Ordering::Acquire) {
            *self.broken.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((e.kind(), e.to_string()));
            self.is_broken.store(true, Ordering::Release);
            // Close the kept connections: nothing will use them.
            let idle = std::mem::take(&mut self.lock_pool().idle);
            for c in idle {
                let _ = c.stream.shutdown(Shutdown::Both);
                self.discard();
            }
        }
        e
    }
}

impl PageSource for TcpSource {
    fn len(&self) -> u64 {
        self.len
    }

    /// Reads `buf.len()` bytes at `offset` from the page server (see [`TcpSource`]).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} past the end of the {}-byte image of {}",
                        buf.len(),
                        self.len,
                        self.addr
                    ),
                ))
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        if self.is_broken() {
            return Err(self.give_up_error());
        }
        let (mut c, kept) = self.take().map_err(|e| self.failed(e))?;
        let mut r = self.read_on(&mut c, offset, buf);
        if let Err(Failed { stale: true, .. }) = r {
            if kept {
                // Closed by the server while idle: once more on a new connection (same slot).
                let _ = c.stream.shutdown(Shutdown::Both);
                c = match open(
                    &self.addrs,
                    Some(self.len),
                    self.options.connect_timeout,
                    self.options.io_timeout,
                ) {
                    Ok((c, _)) => c,
                    Err(e) => {
                        self.discard();
                        return Err(self.failed(e));
                    }
                };
                self.counters.connections.fetch_add(1, Ordering::Relaxed);
                r = self.read_on(&mut c, offset, buf);
            }
        }
        match r {
            Ok(()) => {
                self.failures.store(0, Ordering::Release);
                self.give_back(c);
                Ok(())
            }
            Err(f) => {
                let _ = c.stream.shutdown(Shutdown::Both);
                drop(c);
                self.discard();
                Err(self.failed(f.error))
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The server.

/// What a page server did to one connection ([`serve_connection`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Requests answered with the image's bytes.
    pub requests: u64,
    /// Image bytes sent.
    pub bytes: u64,
}

/// Serves the image `image` on one accepted connection until the client closes it: sends the
/// greeting, then answers each request (see the [protocol](TcpSource#protocol-version-1)).
///
/// Waits at most `idle_timeout` for each request and at most `io_timeout` to send the
/// greeting or a reply. A malformed request (wrong magic, `len` 0 or above [`MAX_REQUEST`]),
/// one past the image's end, or one whose read of `image` fails is answered with an error
/// status and a message, and the connection is closed. The reply buffer grows to the largest
/// request served, at most [`MAX_REQUEST`] bytes.
///
/// # Errors
///
/// `Ok` when the client closed the connection between requests; otherwise what went wrong:
/// [`InvalidData`](io::ErrorKind::InvalidData) for a bad request (after answering it),
/// [`TimedOut`](io::ErrorKind::TimedOut), `UnexpectedEof` for a request cut short, the
/// socket's errors.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::net::{TcpListener, TcpStream};
/// use std::time::Duration;
/// use userfaultfd::serve::tcp::serve_connection;
/// use userfaultfd::serve::{MemorySource, PageSource, TcpSource};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let server = std::thread::spawn(move || {
///     let (stream, _) = listener.accept()?;
///     let image = MemorySource::new(b"hello, post-copy".to_vec());
///     serve_connection(stream, &image, Duration::from_secs(10), Duration::from_secs(10))
/// });
/// let source = TcpSource::builder().connections(1).connect(addr)?;
/// let mut buf = [0u8; 9];
/// source.read_at(7, &mut buf)?;
/// assert_eq!(&buf, b"post-copy");
/// drop(source);
/// assert_eq!(server.join().unwrap()?.requests, 1);
/// # Ok(()) }
/// ```
pub fn serve_connection(
    stream: TcpStream,
    image: &dyn PageSource,
    io_timeout: Duration,
    idle_timeout: Duration,
) -> io::Result<ConnectionStats> {
    serve_counted(stream, image, io_timeout, idle_timeout, None)
}

fn serve_counted(
    mut stream: TcpStream,
    image: &dyn PageSource,
    io_timeout: Duration,
    idle_timeout: Duration,
    totals: Option<&ImageShared>,
) -> io::Result<ConnectionStats> {
    let io_timeout = io_timeout.max(Duration::from_millis(1));
    let idle_timeout = idle_timeout.max(Duration::from_millis(1));
    stream.set_nodelay(true)?;
    let len = image.len();
    write_full(&mut stream, &greeting(len), Instant::now() + io_timeout)?;
    let mut stats = ConnectionStats::default();
    // The reply: header then data, sent with one write.
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut req = [0u8; REQUEST_LEN];
        match read_full(&mut stream, &mut req, Instant::now() + idle_timeout) {
            Ok(()) => {}
            Err(Short::Eof(0)) => return Ok(stats),
            Err(Short::Eof(n)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the client closed the connection after {n} bytes of a request"),
                ))
            }
            Err(Short::Timeout) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no request within {idle_timeout:?}"),
                ))
            }
            Err(Short::Io(_, e)) => return Err(e),
        }
        let (want, offset) = (u32_at(&req, 4) as usize, u64_at(&req, 8));
        let refusal = if req[..4] != REQUEST_MAGIC {
            Some((
                STATUS_BAD_REQUEST,
                format!("request starts with {:02x?}, not \"UFRQ\"", &req[..4]),
            ))
        } else if want == 0 || want > MAX_REQUEST {
            Some((
                STATUS_BAD_REQUEST,
                format!("request of {want} bytes: 1 to {MAX_REQUEST} allowed"),
            ))
        } else if offset.checked_add(want as u64).map_or(true, |e| e > len) {
            Some((
                STATUS_OUT_OF_RANGE,
                format!("request of {want} bytes at {offset} past the image's {len} bytes"),
            ))
        } else {
            out.resize(REPLY_LEN + want, 0);
            match image.read_at(offset, &mut out[REPLY_LEN..]) {
                Ok(()) => None,
                Err(e) => Some((
                    STATUS_SOURCE_ERROR,
                    format!("reading {want} bytes at {offset}: {e}"),
                )),
            }
        };
        let deadline = Instant::now() + io_timeout;
        if let Some((status, mut msg)) = refusal {
            if msg.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
            }
            let h = reply_header(status, offset, msg.len() as u32);
            let _ = write_full(&mut stream, &h, deadline)
                .and_then(|()| write_full(&mut stream, msg.as_bytes(), deadline));
            let _ = stream.shutdown(Shutdown::Both);
            if let Some(t) = totals {
                t.refused.fetch_add(1, Ordering::Relaxed);
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {msg}", status_name(status)),
            ));
        }
        out[..REPLY_LEN].copy_from_slice(&reply_header(STATUS_OK, offset, want as u32));
        write_full(&mut stream, &out, deadline)?;
        stats.requests += 1;
        stats.bytes += want as u64;
        if let Some(t) = totals {
            t.requests.fetch_add(1, Ordering::Relaxed);
            t.bytes.fetch_add(want as u64, Ordering::Relaxed);
        }
    }
}

/// A page server: accepts connections on a [`TcpListener`] and serves each, on a thread of
/// its own, from one [`PageSource`] (a [`FileSource`](super::FileSource), a
/// [`MemorySource`](super::MemorySource), ...) with [`serve_connection`].
///
/// Configure it, then [`start`](Self::start) it; the [`TcpImageServerHandle`] stops it.
/// At most [`max_connections`](Self::max_connections) are served at once: a connection beyond
/// is closed at once (its client sees the greeting cut short).
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::net::TcpListener;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use userfaultfd::serve::{MemorySource, PageSource, TcpImageServer, TcpSource};
///
/// let image = Arc::new(MemorySource::new(vec![0xa5u8; 1 << 20]));
/// let server = TcpImageServer::new(TcpListener::bind("127.0.0.1:0")?, image)
///     .io_timeout(Duration::from_secs(5))
///     .idle_timeout(Duration::from_secs(60))
///     .max_connections(8)
///     .start()?;
/// let source = TcpSource::connect(server.local_addr())?;
/// let mut page = vec![0u8; 4096];
/// source.read_at(8192, &mut page)?;
/// assert!(page.iter().all(|&b| b == 0xa5));
/// drop(source);
/// // Every client came and went.
/// assert!(server.wait_idle(Duration::from_secs(10)));
/// let stats = server.shutdown();
/// assert_eq!((stats.connections, stats.requests, stats.bytes), (1, 1, 4096));
/// # Ok(()) }
/// ```
pub struct TcpImageServer {
    listener: TcpListener,
    image: Arc<dyn PageSource>,
    io_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

impl fmt::Debug for TcpImageServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpImageServer")
            .field("listener", &self.listener)
            .field("image_len", &self.image.len())
            .field("io_timeout", &self.io_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl TcpImageServer {
    /// A server of `image` on `listener` (bound by the caller: `127.0.0.1:0` for an ephemeral
    /// port), with the defaults: I/O time-out 10 s, idle time-out 60 s, 16 connections.
    pub fn new(listener: TcpListener, image: Arc<dyn PageSource>) -> TcpImageServer {
        TcpImageServer {
            listener,
            image,
            io_timeout: DEFAULT_IO_TIMEOUT,
            idle_timeout: Duration::from_secs(60),
            max_connections: 16,
        }
    }

    /// How long sending the greeting or one reply may take (default 10 s).
    pub fn io_timeout(mut self, timeout: Duration) -> TcpImageServer {
        self.io_timeout = timeout;
        self
    }

    /// How long a connection may stay without a request before the server closes it
    /// (default 60 s). A [`TcpSource`] reconnects when it finds a kept connection closed.
    pub fn idle_timeout(mut self, timeout: Duration) -> TcpImageServer {
        self.idle_timeout = timeout;
        self
    }

    /// Connections served at once (default 16, at least 1).
    pub fn max_connections(mut self, n: usize) -> TcpImageServer {
        self.max_connections = n.max(1);
        self
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// What `getsockname(2)` reports.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts accepting connections on a thread of its own.
    ///
    /// # Errors
    ///
    /// When the listener's address cannot be read or the thread cannot start.
    pub fn start(self) -> io::Result<TcpImageServerHandle> {
        let addr = self.listener.local_addr()?;
        let listener = Arc::new(self.listener);
        let shared = Arc::new(ImageShared {
            state: Mutex::new(ImageState {
                active: Vec::new(),
                threads: Vec::new(),
                accepted: 0,
                stopping: false,
            }),
            changed: Condvar::new(),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            over_limit: AtomicU64::new(0),
        });
        let cfg = Config {
            image: self.image,
            io_timeout: self.io_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        };
        let (l, s) = (Arc::clone(&listener), Arc::clone(&shared));
        let accept = thread::Builder::new()
            .name("uffd-page-server".into())
            .spawn(move || accept_loop(&l, &s, &cfg))?;
        Ok(TcpImageServerHandle {
            addr,
            listener,
            shared,
            accept: Some(accept),
        })
    }
}

struct Config {
    image: Arc<dyn PageSource>,
    io_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

struct ImageState {
    /// Connections being served: an id and a handle to shut the socket down.
    active: Vec<(u64, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
    accepted: u64,
    stopping: bool,
}

struct ImageShared {
    state: Mutex<ImageState>,
    changed: Condvar,
    requests: AtomicU64,
    bytes: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    over_limit: AtomicU64,
}

impl ImageShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ImageState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ImageShared>, cfg: &Config) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if shared.lock().stopping {
                    return;
                }
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    _ => {
                        // EMFILE and the like: retrying at once would spin.
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        };
        let mut st = shared.lock();
        st.threads.retain(|t| !t.is_finished());
        if st.stopping {
            return;
        }
        if st.active.len() >= cfg.max_connections {
            shared.over_limit.fetch_add(1, Ordering::Relaxed);
            drop(st);
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(handle) = stream.try_clone() else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let id = st.accepted;
        let (s, image) = (Arc::clone(shared), Arc::clone(&cfg.image));
        let (io_t, idle_t) = (cfg.io_timeout, cfg.idle_timeout);
        let spawned = thread::Builder::new()
            .name(format!("uffd-page-conn-{id}"))
            .spawn(move || {
                let r = serve_counted(stream, &*image, io_t, idle_t, Some(&s));
                if r.is_err() {
                    s.errors.fetch_add(1, Ordering::Relaxed);
                }
                let mut st = s.lock();
                st.active.retain(|(i, _)| *i != id);
                s.changed.notify_all();
            });
        match spawned {
            Ok(t) => {
                st.accepted += 1;
                st.active.push((id, handle));
                st.threads.push(t);
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                let _ = handle.shutdown(Shutdown::Both);
            }
        }
    }
}

/// What a [`TcpImageServer`] did ([`TcpImageServerHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageServerStats {
    /// Connections accepted and served.
    pub connections: u64,
    /// Connections open now.
    pub active: usize,
    /// Requests answered with the image's bytes.
    pub requests: u64,
    /// Image bytes sent.
    pub bytes: u64,
    /// Requests answered with an error status (the connection was then closed).
    pub refused: u64,
    /// Connections that ended with an error (a refused request, a time-out, a reset...).
    pub errors: u64,
    /// Connections closed at once because [`max_connections`](TcpImageServer::max_connections)
    /// were open.
    pub over_limit: u64,
}

/// A running [`TcpImageServer`]. Dropping it shuts the server down.
pub struct TcpImageServerHandle {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    shared: Arc<ImageShared>,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for TcpImageServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpImageServerHandle")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl TcpImageServerHandle {
    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server has done so far.
    pub fn stats(&self) -> ImageServerStats {
        let st = self.shared.lock();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ImageServerStats {
            connections: st.accepted,
            active: st.active.len(),
            requests: g(&self.shared.requests),
            bytes: g(&self.shared.bytes),
            refused: g(&self.shared.refused),
            errors: g(&self.shared.errors),
            over_limit: g(&self.shared.over_limit),
        }
    }

    /// Waits, at most `timeout`, until at least one connection was served and none is open:
    /// the client came and went. Returns whether that happened.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.accepted > 0 && st.active.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops accepting (later connection attempts are refused), closes every open connection
    /// (their clients' reads fail), waits for the threads and returns the final statistics.
    pub fn shutdown(mut self) -> ImageServerStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.lock().stopping = true;
        // SAFETY: shutdown(2) of a socket this handle keeps open; no memory is involved. On a
        // listening socket it makes the blocked accept(2) return (EINVAL) and refuses later
        // connections.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = accept.join();
        let threads = {
            let mut st = self.shared.lock();
            for (_, s) in &st.active {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut st.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for TcpImageServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::MemorySource;

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
