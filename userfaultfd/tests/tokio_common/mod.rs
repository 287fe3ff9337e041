//! Shared helpers of the `tokio_serve*` tests: the test image, touching threads, and an async
//! source over the image that records its reads.
#![allow(dead_code)]

use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use mmap::MemoryMapping;
use userfaultfd::serve::{AsyncPageSource, MemorySource, PageSource, SourceFuture};
use userfaultfd::UffdBuilder;

use crate::common::{ps, TIMEOUT};

/// Page `n` of an image holds the byte `(n * 7 + 3) as u8` (zero every eighth page).
pub fn byte_of(page: usize) -> u8 {
    if page % 8 == 7 {
        0
    } else {
        (page * 7 + 3) as u8
    }
}

pub fn image(pages: usize, page: usize) -> Vec<u8> {
    (0..pages * page).map(|i| byte_of(i / page)).collect()
}

pub fn user_uffd() -> userfaultfd::Uffd {
    UffdBuilder::new().user_mode_only(true).create().unwrap()
}

pub fn anon(pages: usize) -> Arc<MemoryMapping> {
    Arc::new(MemoryMapping::new_private(pages * ps()).unwrap())
}

/// Checks three bytes of every page of `m` against [`byte_of`].
pub fn verify(m: &MemoryMapping, page: usize) {
    for p in 0..m.size() / page {
        for off in [0, page / 2, page - 1] {
            assert_eq!(
                m.read_obj::<u8>(p * page + off).unwrap(),
                byte_of(p),
                "page {p}+{off}"
            );
        }
    }
}

/// Touches every page of `m` from `threads` threads, each in its own order, checking each
/// byte; fails the test after `TIMEOUT`.
pub fn touch_all(m: &Arc<MemoryMapping>, page: usize, threads: usize) {
    touch_all_from(m, page, threads, 0);
}

/// [`touch_all`] for a region served from page `shift` of the image on.
pub fn touch_all_from(m: &Arc<MemoryMapping>, page: usize, threads: usize, shift: usize) {
    let pages = m.size() / page;
    let (tx, rx) = mpsc::channel();
    for t in 0..threads {
        let (m, tx) = (Arc::clone(m), tx.clone());
        thread::spawn(move || {
            let stride = [1, 3, 5, 7, 11, 13, 17, 19][t % 8];
            for i in 0..pages {
                let p = (i * stride + t) % pages;
                let want = byte_of(p + shift);
                assert_eq!(m.read_obj::<u8>(p * page + 1).unwrap(), want, "page {p}");
            }
            tx.send(()).unwrap();
        });
    }
    for _ in 0..threads {
        rx.recv_timeout(TIMEOUT)
            .expect("a touching thread is stuck");
    }
}

/// A thread reading byte 0 of page `p` of `m`; its result arrives on the channel.
pub fn touch(m: &Arc<MemoryMapping>, p: usize) -> mpsc::Receiver<u8> {
    let (tx, rx) = mpsc::channel();
    let m = Arc::clone(m);
    thread::spawn(move || tx.send(m.read_obj::<u8>(p * ps()).unwrap()).unwrap());
    rx
}

/// An async source over an image that records every read (offset, length), optionally
/// with a chunk size.
pub struct Image {
    pub bytes: Vec<u8>,
    pub chunk: Option<u64>,
    pub reads: Mutex<Vec<(u64, usize)>>,
}

impl Image {
    pub fn new(pages: usize, page: usize, chunk: Option<u64>) -> Arc<Image> {
        Arc::new(Image {
            bytes: image(pages, page),
            chunk,
            reads: Mutex::new(Vec::new()),
        })
    }
}

pub fn copy_out(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    MemorySource::new(bytes).read_at(offset, buf)
}

impl AsyncPageSource for Image {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> SourceFuture<'a, io::Result<()>> {
        Box::pin(async move {
            self.reads.lock().unwrap().push((offset, buf.len()));
            // A real request would be awaited here: let others run meanwhile.
            tokio::task::yield_now().await;
            copy_out(&self.bytes, offset, buf)
        })
    }
    fn chunk_size(&self) -> Option<u64> {
        self.chunk
    }
}
