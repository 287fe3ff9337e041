//! The server side: [`serve_connection`] and [`TcpImageServer`].

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::wire::*;
use super::*;
use crate::serve::PageSource;

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
/// its own, from one [`PageSource`] (a [`FileSource`](crate::serve::FileSource), a
/// [`MemorySource`](crate::serve::MemorySource), ...) with [`serve_connection`].
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
