//! The client: [`TcpSource`], a [`PageSource`] over a pool of connections to a page server.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::wire::*;
use super::*;
use crate::serve::PageSource;

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
/// The runtime then applies its [`FailurePolicy`](crate::serve::FailurePolicy) to the pages whose
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
/// assert_eq!(stats.bytes_copied as usize, 64 * page); // every page copied once
/// // Every page came over TCP; the faulting page may come again inside the one request that
/// // brings the pages on both sides of it (read-through coalescing).
/// assert!(source.stats().bytes as usize >= 64 * page);
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
