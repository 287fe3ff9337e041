//! Shared helpers of the `tokio_serve*` tests: an async source over the test image that records
//! its reads (the image and the touching threads are `common::serving`'s, re-exported here).
#![allow(dead_code)]

use std::io;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use mmap::MemoryMapping;
use userfaultfd::serve::{AsyncPageSource, MemorySource, PageSource, SourceFuture};

use crate::common::ps;

#[allow(unused_imports)] // each tokio test uses some of them
pub use crate::common::serving::{
    anon, byte_of, check_background_rate, hugetlb_mapping, image, touch_all, touch_all_from,
    user_uffd, user_uffd_with, verify,
};

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
