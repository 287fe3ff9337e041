//! Black-box tests of the TCP page source of `userfaultfd::serve` ([`TcpSource`],
//! [`TcpImageServer`]) on the real kernel, over loopback (127.0.0.1) only: the protocol's bytes
//! as documented, concurrent reads, a full restore through a [`ServerBuilder`] verified byte
//! for byte, and hostile or failing peers (wrong greeting, truncated or corrupt replies, a peer
//! that never answers, an error status, the server gone mid-restore), which must end in an
//! `io::Error` and the runtime's failure policy, never a panic or a hang.
//!
//! Every wait is bounded: faulting reads run on helper threads whose results are awaited with a
//! time-out; fake peers are scripted, and no test sleeps to synchronise.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};
use test_kit::pattern::dense_image;

use mmap::MemoryMapping;
use userfaultfd::serve::tcp::MAX_REQUEST;
use userfaultfd::serve::{
    FailurePolicy, MemorySource, PageSource, Region, Server, ServerBuilder, TcpImageServer,
    TcpImageServerHandle, TcpSource,
};
use userfaultfd::UffdBuilder;

/// Bound of every wait (never reached when things work).
const TIMEOUT: Duration = Duration::from_secs(30);
/// The short I/O time-out of the tests with peers that do not answer.
const SHORT: Duration = Duration::from_millis(200);

fn ps() -> usize {
    userfaultfd::page_size()
}

fn serve(bytes: Vec<u8>) -> TcpImageServerHandle {
    TcpImageServer::new(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(MemorySource::new(bytes)),
    )
    .start()
    .unwrap()
}

/// Runs `f` on a helper thread and returns its result, failing the test after [`TIMEOUT`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("{what} did not finish within {TIMEOUT:?}"))
}

/// A greeting as the documentation specifies it.
fn greeting(len: u64) -> Vec<u8> {
    let mut g = b"UFFDPAGE".to_vec();
    g.extend_from_slice(&1u32.to_le_bytes());
    g.extend_from_slice(&0u32.to_le_bytes());
    g.extend_from_slice(&len.to_le_bytes());
    g
}

/// A reply header as the documentation specifies it.
fn reply(magic: &[u8; 4], status: u32, offset: u64, len: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&status.to_le_bytes());
    h.extend_from_slice(&offset.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// A request as the documentation specifies it.
fn request(magic: &[u8; 4], len: u32, offset: u64) -> Vec<u8> {
    let mut r = magic.to_vec();
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&offset.to_le_bytes());
    r
}

/// A scripted peer on 127.0.0.1: `script` runs on every accepted connection, on its own
/// thread, with the decoded requests read for it. The thread blocked in `accept` is left
/// behind when the test ends.
fn fake_peer(
    script: impl Fn(&mut TcpStream) + Send + Sync + 'static,
) -> (SocketAddr, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let (script, tx) = (Arc::clone(&script), tx.clone());
            thread::spawn(move || {
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                script(&mut s);
                let _ = tx.send(());
            });
        }
    });
    (addr, rx)
}

/// Reads one request: (magic, len, offset), or `None` at end of stream.
fn read_request(s: &mut TcpStream) -> Option<([u8; 4], u32, u64)> {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).ok()?;
    Some((
        r[..4].try_into().unwrap(),
        u32::from_le_bytes(r[4..8].try_into().unwrap()),
        u64::from_le_bytes(r[8..16].try_into().unwrap()),
    ))
}

fn elapsed_ok(t: Instant) {
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn round_trip_concurrent_reads() {
    let len = 9 << 20; // more than MAX_REQUEST, so one read is split
    let bytes = dense_image(len);
    let server = serve(bytes.clone());
    let src = Arc::new(
        TcpSource::builder()
            .connections(3)
            .connect(server.local_addr())
            .unwrap(),
    );
    assert_eq!(src.len(), len as u64);
    assert_eq!(src.peer_addr(), server.local_addr());

    // One read larger than a request.
    let mut all = vec![0u8; len];
    src.read_at(0, &mut all).unwrap();
    assert!(all == bytes, "whole image differs");
    assert_eq!(src.stats().requests, len.div_ceil(MAX_REQUEST) as u64);

    // Four threads on three connections, at odd offsets and lengths.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (src, bytes) = (Arc::clone(&src), bytes.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 3 * 4096 + 17];
                for k in 0..200 {
                    let off = (t * 7919 + k * 104_729) % (len - buf.len());
                    src.read_at(off as u64, &mut buf).unwrap();
                    assert!(buf[..] == bytes[off..off + buf.len()], "at {off}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = src.stats();
    assert!(st.connections <= 3, "{st:?}");
    assert_eq!(st.failures, 0);

    // Past the end: refused locally, the connections stay usable; empty reads succeed.
    let e = src.read_at(len as u64 - 1, &mut [0u8; 2]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(src.read_at(u64::MAX, &mut [0u8; 1]).is_err());
    src.read_at(len as u64, &mut []).unwrap();
    let mut b = [0u8; 1];
    src.read_at(len as u64 - 1, &mut b).unwrap();
    assert_eq!(b[0], bytes[len - 1]);
    assert!(!src.is_broken());

    drop(src);
    assert!(server.wait_idle(TIMEOUT), "connections not closed");
    let stats = server.shutdown();
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.bytes, (len + 4 * 200 * (3 * 4096 + 17) + 1) as u64);
}

/// The server's side of the protocol, byte for byte: greeting, a good request, and each bad
/// request answered with its error status, then the connection closed.
#[test]
fn server_speaks_the_documented_protocol() {
    let len = 16 * 4096;
    let bytes = dense_image(len);
    let server = serve(bytes.clone());
    let connect = || {
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut g = [0u8; 24];
        s.read_exact(&mut g).unwrap();
        assert_eq!(g[..], greeting(len as u64)[..]);
        s
    };
    let mut s = connect();
    s.write_all(&request(b"UFRQ", 100, 5000)).unwrap();
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[..], reply(b"UFRP", 0, 5000, 100)[..]);
    let mut data = [0u8; 100];
    s.read_exact(&mut data).unwrap();
    assert_eq!(data[..], bytes[5000..5100]);

    let bad: [(&[u8; 4], u32, u64, u32); 4] = [
        (b"GET ", 100, 0, 1),                    // wrong magic
        (b"UFRQ", 0, 0, 1),                      // empty
        (b"UFRQ", MAX_REQUEST as u32 + 1, 0, 1), // too long
        (b"UFRQ", 4096, len as u64 - 4095, 2),   // past the end
    ];
    for (magic, n, off, status) in bad {
        let mut s = connect();
        s.write_all(&request(magic, n, off)).unwrap();
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(
            h[..16],
            reply(b"UFRP", status, off, 0)[..16],
            "{magic:?} {n}"
        );
        let msg_len = u32::from_le_bytes(h[16..20].try_into().unwrap()) as usize;
        assert!(msg_len > 0 && msg_len <= 1024);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap(); // the server closes after the message
        assert_eq!(rest.len(), msg_len);
        assert!(std::str::from_utf8(&rest).is_ok());
    }
    drop(s);
    assert!(server.wait_idle(TIMEOUT));
    let stats = server.shutdown();
    assert_eq!((stats.requests, stats.refused), (1, 4), "{stats:?}");
}

/// Restores a whole image through the runtime: four threads touch pages in different orders
/// while two handler threads and a background thread read over three connections.
#[test]
fn full_restore_through_server() {
    let pages = 2048;
    let len = pages * ps();
    let bytes = Arc::new(dense_image(len));
    let pages_server = serve(bytes.to_vec());
    let src = Arc::new(
        TcpSource::builder()
            .connections(3)
            .connect(pages_server.local_addr())
            .unwrap(),
    );
    let memory = Arc::new(MemoryMapping::new_private(len).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(memory.clone(), src.clone()))
        .handler_threads(2)
        .background_threads(1)
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap();
    let touchers: Vec<_> = (0..4)
        .map(|t| {
            let (memory, bytes) = (memory.clone(), bytes.clone());
            thread::spawn(move || {
                let ps = ps();
                let mut page = vec![0u8; ps];
                for k in 0..pages {
                    // Each thread walks the pages with its own stride.
                    let p = (k * [1, 7, 13, 31][t] + t * 100) % pages;
                    memory.read_slice(&mut page, p * ps).unwrap();
                    assert!(page[..] == bytes[p * ps..(p + 1) * ps], "page {p}");
                }
            })
        })
        .collect();
    bounded("the touching threads", move || {
        for t in touchers {
            t.join().unwrap();
        }
    });
    server.wait_populated(TIMEOUT).unwrap();
    let mut all = vec![0u8; len];
    memory.read_slice(&mut all, 0).unwrap();
    assert!(all[..] == bytes[..], "restored memory differs");
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.pages_present(), pages as u64, "{stats:?}");
    assert_eq!(stats.source_errors, 0);
    // Every page was copied exactly once. Over TCP every byte came at least once; a page
    // already present may come again inside a request that brings the missing pages around it
    // (read-through coalescing: one request instead of one per missing run).
    assert_eq!(
        stats.bytes_copied, len as u64,
        "a page was copied twice: {stats:?}"
    );
    let st = src.stats();
    assert!(st.bytes >= len as u64, "a page never came: {st:?}");
    assert!(st.connections <= 3 && st.failures == 0, "{st:?}");
    drop(src);
    assert!(pages_server.wait_idle(TIMEOUT));
}

#[test]
fn wrong_peer_is_detected_at_connect() {
    // Not a page server at all.
    let (addr, _) = fake_peer(|s| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let e = TcpSource::connect(addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("not a page server"), "{e}");

    // Another version.
    let (addr, _) = fake_peer(|s| {
        let mut g = greeting(4096);
        g[8] = 2;
        let _ = s.write_all(&g);
    });
    let e = TcpSource::connect(addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("version 2"), "{e}");

    // A greeting cut short.
    let (addr, _) = fake_peer(|s| {
        let _ = s.write_all(&greeting(4096)[..10]);
    });
    let e = TcpSource::connect(addr).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

    // No greeting at all: the I/O time-out.
    let (addr, _) = fake_peer(|s| {
        let _ = s.read(&mut [0u8; 1]);
    });
    let t = Instant::now();
    let e = TcpSource::builder()
        .io_timeout(SHORT)
        .connect(addr)
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    elapsed_ok(t);

    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = TcpSource::connect(port).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
}

/// Each corrupt reply is an error of its own kind, with a message; none panics.
#[test]
fn corrupt_replies_are_errors() {
    type Script = fn(&mut TcpStream, u32, u64);
    let cases: [(&str, Script, io::ErrorKind, &str); 7] = [
        (
            "truncated data",
            |s, n, off| {
                let _ = s.write_all(&reply(b"UFRP", 0, off, n));
                let _ = s.write_all(&vec![1u8; n as usize / 2]);
                let _ = s.shutdown(Shutdown::Write);
            },
            io::ErrorKind::UnexpectedEof,
            "closed after",
        ),
        (
            "truncated header",
            |s, _, off| {
                let _ = s.write_all(&reply(b"UFRP", 0, off, 0)[..7]);
                let _ = s.shutdown(Shutdown::Write);
            },
            io::ErrorKind::UnexpectedEof,
            "closed after 7",
        ),
        (
            "longer than asked",
            |s, n, off| {
                let _ = s.write_all(&reply(b"UFRP", 0, off, n + 1));
                let _ = s.write_all(&vec![1u8; n as usize + 1]);
            },
            io::ErrorKind::InvalidData,
            "announces",
        ),
        (
            "wrong magic",
            |s, n, off| {
                let _ = s.write_all(&reply(b"XXXX", 0, off, n));
            },
            io::ErrorKind::InvalidData,
            "UFRP",
        ),
        (
            "another offset",
            |s, n, off| {
                let _ = s.write_all(&reply(b"UFRP", 0, off + 4096, n));
            },
            io::ErrorKind::InvalidData,
            "for offset",
        ),
        (
            "unknown status",
            |s, _, off| {
                let _ = s.write_all(&reply(b"UFRP", 77, off, 0));
            },
            io::ErrorKind::InvalidData,
            "status 77",
        ),
        (
            "huge message",
            |s, _, off| {
                let _ = s.write_all(&reply(b"UFRP", 3, off, u32::MAX));
            },
            io::ErrorKind::InvalidData,
            "corrupt",
        ),
    ];
    for (name, script, kind, text) in cases {
        let (addr, _) = fake_peer(move |s| {
            let _ = s.write_all(&greeting(64 * 4096));
            if let Some((_, n, off)) = read_request(s) {
                script(s, n, off);
            }
            // Keep the connection open until the client closes it.
            let _ = s.read(&mut [0u8; 1]);
        });
        let src = TcpSource::builder()
            .io_timeout(Duration::from_secs(5))
            .connect(addr)
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let t = Instant::now();
        let e = src.read_at(8192, &mut buf).unwrap_err();
        elapsed_ok(t);
        assert_eq!(e.kind(), kind, "{name}: {e}");
        assert!(e.to_string().contains(text), "{name}: {e}");
        assert!(e.to_string().contains("at 8192"), "{name}: {e}");
        assert_eq!(src.stats().failures, 1, "{name}");
    }
}

/// An error status is an error carrying the server's message; the connection is replaced and
/// a later read succeeds.
#[test]
fn error_status_then_reconnect() {
    /// Fails reads of its second page.
    struct Flaky(Vec<u8>);
    impl PageSource for Flaky {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            if offset < 8192 && offset + buf.len() as u64 > 4096 {
                return Err(io::Error::other("bad sector"));
            }
            buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
    }
    let bytes = dense_image(8 * 4096);
    let server = TcpImageServer::new(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(Flaky(bytes.clone())),
    )
    .start()
    .unwrap();
    let src = TcpSource::builder()
        .connections(1)
        .connect(server.local_addr())
        .unwrap();
    let mut page = vec![0u8; 4096];
    let e = src.read_at(4096, &mut page).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Other);
    assert!(e.to_string().contains("bad sector"), "{e}");
    src.read_at(3 * 4096, &mut page).unwrap();
    assert!(page[..] == bytes[3 * 4096..4 * 4096]);
    let st = src.stats();
    assert_eq!((st.connections, st.failures), (2, 1), "{st:?}");
    drop(src);
    assert!(server.wait_idle(TIMEOUT));
    let stats = server.shutdown();
    assert_eq!(stats.refused, 1);
}

/// A kept connection that the server closed for idleness is replaced without an error.
#[test]
fn idle_connection_closed_by_server_is_replaced() {
    let bytes = dense_image(8 * 4096);
    let server = TcpImageServer::new(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(MemorySource::new(bytes.clone())),
    )
    .idle_timeout(Duration::from_millis(50))
    .start()
    .unwrap();
    let src = TcpSource::connect(server.local_addr()).unwrap();
    // The server closes the idle connection; wait for that (bounded), not for a time.
    assert!(server.wait_idle(TIMEOUT));
    let mut page = vec![0u8; 4096];
    src.read_at(4096, &mut page).unwrap();
    assert!(page[..] == bytes[4096..8192]);
    let st = src.stats();
    assert_eq!((st.connections, st.failures), (2, 0), "{st:?}");
}

/// A peer that accepts requests and never answers: each read fails after the I/O time-out,
/// the source gives up after `max_failures`, and the runtime zero-fills (the policy of this
/// test) instead of leaving the faulting thread waiting.
#[test]
fn reply_that_never_comes_times_out() {
    let pages = 64;
    let (addr, _) = fake_peer(move |s| {
        let _ = s.write_all(&greeting((pages * ps()) as u64));
        // Read requests, answer none, until the client closes.
        while read_request(s).is_some() {}
    });
    let src = Arc::new(
        TcpSource::builder()
            .io_timeout(SHORT)
            .max_failures(2)
            .connect(addr)
            .unwrap(),
    );
    let t = Instant::now();
    let e = src.read_at(0, &mut vec![0u8; ps()]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() >= SHORT);
    elapsed_ok(t);
    assert!(!src.is_broken());

    let memory = Arc::new(MemoryMapping::new_private(pages * ps()).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(memory.clone(), src.clone()))
        .failure_policy(FailurePolicy::ZeroFill)
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap();
    let t = Instant::now();
    let m = memory.clone();
    let v = bounded("a fault on a hung peer", move || {
        m.read_obj::<u64>(5 * ps()).unwrap()
    });
    assert_eq!(v, 0, "zero-filled");
    server.wait_populated(TIMEOUT).unwrap();
    elapsed_ok(t);
    assert!(src.is_broken());
    let e = src.read_at(0, &mut vec![0u8; ps()]).unwrap_err();
    assert!(e.to_string().contains("gave up"), "{e}");
    let stats = finish(server);
    assert!(stats.source_errors > 0, "{stats:?}");
    assert_eq!(stats.pages_failed, pages as u64, "{stats:?}");
}

fn finish(server: Server) -> userfaultfd::serve::Stats {
    server.shutdown().unwrap()
}

/// The page server goes away mid-restore: pages fetched before are intact, later faults get
/// the failure policy (zero pages here), and nothing hangs.
#[test]
fn server_gone_mid_restore() {
    let pages = 256;
    let len = pages * ps();
    let bytes = dense_image(len);
    let pages_server = serve(bytes.clone());
    let src = Arc::new(TcpSource::connect(pages_server.local_addr()).unwrap());
    let memory = Arc::new(MemoryMapping::new_private(len).unwrap());
    let server = ServerBuilder::new()
        .region(Region::new(memory.clone(), src.clone()))
        .prefetch(0)
        .background_threads(0)
        .failure_policy(FailurePolicy::ZeroFill)
        .start(UffdBuilder::new().user_mode_only(true).create().unwrap())
        .unwrap();
    let half = pages / 2;
    let m = memory.clone();
    let first = bounded("the first half", move || {
        let mut page = vec![0u8; ps()];
        (0..half)
            .map(|p| {
                m.read_slice(&mut page, p * ps()).unwrap();
                page.clone()
            })
            .collect::<Vec<_>>()
    });
    for (p, page) in first.iter().enumerate() {
        assert!(page[..] == bytes[p * ps()..(p + 1) * ps()], "page {p}");
    }
    // The page server closes its connections and stops listening.
    let served = pages_server.shutdown();
    assert_eq!(served.bytes, (half * ps()) as u64);
    let m = memory.clone();
    let second = bounded("the second half", move || {
        (half..pages)
            .map(|p| m.read_obj::<u64>(p * ps()).unwrap())
            .collect::<Vec<_>>()
    });
    assert!(second.iter().all(|&w| w == 0), "not zero-filled");
    let stats = finish(server);
    assert!(stats.source_errors > 0, "{stats:?}");
    assert_eq!(stats.pages_failed, half as u64, "{stats:?}");
    assert_eq!(stats.pages_demand, half as u64, "{stats:?}");
    assert!(src.is_broken());
}
