//! Reading and decoding `struct uffd_msg`: page faults and the four non-cooperative events.
//!
//! Decoding ([`Message::decode`]) is a pure function of the 32 raw bytes. Reading never
//! allocates: with `UFFD_FEATURE_EVENT_FORK` the forking thread holds the C library's malloc locks
//! until its event is read, so a reader that allocated could deadlock the fork.
//!
//! Kernel references: [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
//! ("Reading from the userfaultfd structure"),
//! `Documentation/admin-guide/mm/userfaultfd.rst` ("Non-cooperative userfaultfd").

use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use libc::c_void;
use nix::errno::Errno;
use nix::unistd::Pid;
use userfaultfd_sys as sys;

use crate::error::{Error, Operation, Result};
use crate::raw;
use crate::Uffd;

const MSG_SIZE: usize = size_of::<sys::uffd_msg>();

/// Whether a faulting access was a read or a write (`UFFD_PAGEFAULT_FLAG_WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadWrite {
    /// A read (or instruction fetch).
    Read,
    /// A write.
    Write,
}

/// Why a page fault was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The page is missing (`UFFDIO_REGISTER_MODE_MISSING`, Linux 4.3). Resolve with `copy`,
    /// `zeropage`, `r#move` or `poison`.
    Missing,
    /// A write to a write-protected page (`UFFD_PAGEFAULT_FLAG_WP`, Linux 5.7). Resolve with
    /// `remove_write_protection`.
    WriteProtected,
    /// The page is in the page cache but not mapped here (`UFFD_PAGEFAULT_FLAG_MINOR`,
    /// Linux 5.13). Resolve with `r#continue`.
    Minor,
}

/// An event read from a [`Uffd`] (`read(2)` of a `struct uffd_msg`).
///
/// The variants and fields are those of the `userfaultfd` 0.9 crate. A message with an event
/// code this crate does not know is reported as [`Error::UnrecognizedEvent`], which carries the
/// raw bytes.
#[derive(Debug)]
pub enum Event {
    /// A page fault (`UFFD_EVENT_PAGEFAULT`, Linux 4.3). The faulting thread sleeps until the
    /// range is resolved and woken.
    Pagefault {
        /// Why the fault was reported.
        kind: FaultKind,
        /// The access that faulted.
        rw: ReadWrite,
        /// The faulting address: rounded down to the page unless
        /// [`FeatureFlags::EXACT_ADDRESS`](crate::FeatureFlags::EXACT_ADDRESS) (Linux 5.18) is
        /// enabled.
        addr: *mut c_void,
        /// The faulting thread's id in the reader's pid namespace when
        /// [`FeatureFlags::THREAD_ID`](crate::FeatureFlags::THREAD_ID) (Linux 4.14) is enabled,
        /// otherwise 0.
        thread_id: Pid,
    },
    /// The monitored process forked (`UFFD_EVENT_FORK`, Linux 4.11, needs
    /// [`FeatureFlags::EVENT_FORK`](crate::FeatureFlags::EVENT_FORK)). `uffd` handles the
    /// child's copies of the registered ranges; it was installed in this process by the `read`,
    /// and is owned (closed on drop).
    Fork {
        /// The child's userfaultfd.
        uffd: Uffd,
    },
    /// A registered range moved with `mremap(2)` (`UFFD_EVENT_REMAP`, Linux 4.11, needs
    /// [`FeatureFlags::EVENT_REMAP`](crate::FeatureFlags::EVENT_REMAP)).
    Remap {
        /// Old start address.
        from: *mut c_void,
        /// New start address.
        to: *mut c_void,
        /// Length of the moved range (for a shrinking `mremap`, the new, smaller length; the
        /// cut-off tail and then the old range are reported as [`Event::Unmap`] when
        /// `EVENT_UNMAP` is enabled).
        len: usize,
    },
    /// Pages of a registered range were dropped by `madvise(MADV_DONTNEED/MADV_REMOVE)`
    /// (`UFFD_EVENT_REMOVE`, Linux 4.11, needs
    /// [`FeatureFlags::EVENT_REMOVE`](crate::FeatureFlags::EVENT_REMOVE)). The range stays
    /// registered; the next faults there must be served as zero pages.
    Remove {
        /// Start of the dropped range.
        start: *mut c_void,
        /// End (exclusive).
        end: *mut c_void,
    },
    /// A registered range was unmapped (`UFFD_EVENT_UNMAP`, Linux 4.11, needs
    /// [`FeatureFlags::EVENT_UNMAP`](crate::FeatureFlags::EVENT_UNMAP)). The registration is gone.
    Unmap {
        /// Start of the unmapped range.
        start: *mut c_void,
        /// End (exclusive).
        end: *mut c_void,
    },
}

// SAFETY: the raw pointers in `Event` are addresses reported by the kernel, never dereferenced
// by this crate; `Uffd` is Send. Sending an address to another thread is harmless.
unsafe impl Send for Event {}

/// One decoded `uffd_msg`, before a fork's fd is taken into ownership. Plain data: `Copy`,
/// comparable, and produced by a pure function of the message bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Message {
    /// `UFFD_EVENT_PAGEFAULT`.
    Pagefault {
        /// From `UFFD_PAGEFAULT_FLAG_WP` / `_MINOR`.
        kind: FaultKind,
        /// From `UFFD_PAGEFAULT_FLAG_WRITE`.
        rw: ReadWrite,
        /// `arg.pagefault.address`.
        addr: usize,
        /// `arg.pagefault.feat.ptid`.
        thread_id: i32,
        /// `arg.pagefault.flags`, including bits this crate does not name.
        flags: u64,
    },
    /// `UFFD_EVENT_FORK`: `arg.fork.ufd`, a descriptor already installed in the reader.
    Fork {
        /// The child's userfaultfd.
        fd: RawFd,
    },
    /// `UFFD_EVENT_REMAP`.
    Remap {
        /// `arg.remap.from`.
        from: usize,
        /// `arg.remap.to`.
        to: usize,
        /// `arg.remap.len`.
        len: usize,
    },
    /// `UFFD_EVENT_REMOVE`.
    Remove {
        /// `arg.remove.start`.
        start: usize,
        /// `arg.remove.end`.
        end: usize,
    },
    /// `UFFD_EVENT_UNMAP`.
    Unmap {
        /// `arg.remove.start`.
        start: usize,
        /// `arg.remove.end`.
        end: usize,
    },
}

fn word(bytes: &[u8; MSG_SIZE], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(w)
}

fn half(bytes: &[u8; MSG_SIZE], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(w)
}

impl Message {
    /// Decodes the 32 bytes of a `struct uffd_msg` (layout in `userfaultfd(2)`; `event` at 0,
    /// the `arg` union at 8).
    ///
    /// Never panics and never allocates.
    ///
    /// ```
    /// use userfaultfd::{FaultKind, Message, ReadWrite};
    /// let mut raw = [0u8; 32];
    /// raw[0] = 0x12; // UFFD_EVENT_PAGEFAULT
    /// raw[8] = 1; // UFFD_PAGEFAULT_FLAG_WRITE
    /// raw[16..24].copy_from_slice(&0x7f00_0000_1000u64.to_ne_bytes());
    /// let m = Message::from_bytes(&raw).unwrap();
    /// assert_eq!(m, Message::Pagefault {
    ///     kind: FaultKind::Missing, rw: ReadWrite::Write, addr: 0x7f00_0000_1000,
    ///     thread_id: 0, flags: 1,
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnrecognizedEvent`] for an event code other than `0x12..=0x16`.
    pub fn from_bytes(bytes: &[u8; MSG_SIZE]) -> Result<Message> {
        let event = bytes[0];
        Ok(match event {
            sys::UFFD_EVENT_PAGEFAULT => {
                let flags = word(bytes, 8);
                let kind = if flags & sys::UFFD_PAGEFAULT_FLAG_WP != 0 {
                    FaultKind::WriteProtected
                } else if flags & sys::UFFD_PAGEFAULT_FLAG_MINOR != 0 {
                    FaultKind::Minor
                } else {
                    FaultKind::Missing
                };
                let rw = if flags & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0 {
                    ReadWrite::Write
                } else {
                    ReadWrite::Read
                };
                Message::Pagefault {
                    kind,
                    rw,
                    addr: word(bytes, 16) as usize,
                    thread_id: half(bytes, 24) as i32,
                    flags,
                }
            }
            sys::UFFD_EVENT_FORK => Message::Fork {
                fd: half(bytes, 8) as RawFd,
            },
            sys::UFFD_EVENT_REMAP => Message::Remap {
                from: word(bytes, 8) as usize,
                to: word(bytes, 16) as usize,
                len: word(bytes, 24) as usize,
            },
            sys::UFFD_EVENT_REMOVE => Message::Remove {
                start: word(bytes, 8) as usize,
                end: word(bytes, 16) as usize,
            },
            sys::UFFD_EVENT_UNMAP => Message::Unmap {
                start: word(bytes, 8) as usize,
                end: word(bytes, 16) as usize,
            },
            _ => return Err(Error::UnrecognizedEvent { event, raw: *bytes }),
        })
    }

    /// Decodes a `struct uffd_msg`; see [`Message::from_bytes`].
    ///
    /// # Errors
    ///
    /// [`Error::UnrecognizedEvent`] for an unknown event code.
    pub fn decode(msg: &sys::uffd_msg) -> Result<Message> {
        Self::from_bytes(msg_bytes(msg))
    }
}

fn msg_bytes(msg: &sys::uffd_msg) -> &[u8; MSG_SIZE] {
    // SAFETY: `uffd_msg` is a 32-byte packed struct of integers (size asserted by the sys
    // crate's layout checks), fully initialised, so viewing it as 32 bytes is sound; the
    // resulting reference borrows `msg`.
    unsafe { &*(msg as *const sys::uffd_msg).cast::<[u8; MSG_SIZE]>() }
}

/// Turns a decoded message into an [`Event`], taking ownership of a fork's fd.
fn to_event(m: Message, parent: &Uffd) -> Event {
    match m {
        Message::Pagefault {
            kind,
            rw,
            addr,
            thread_id,
            ..
        } => Event::Pagefault {
            kind,
            rw,
            addr: addr as *mut c_void,
            thread_id: Pid::from_raw(thread_id),
        },
        Message::Fork { fd } => {
            // SAFETY: the kernel installed `fd` into this process's table during the read that
            // produced this message, and this is the only place that takes it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            Event::Fork {
                uffd: parent.forked(owned),
            }
        }
        Message::Remap { from, to, len } => Event::Remap {
            from: from as *mut c_void,
            to: to as *mut c_void,
            len,
        },
        Message::Remove { start, end } => Event::Remove {
            start: start as *mut c_void,
            end: end as *mut c_void,
        },
        Message::Unmap { start, end } => Event::Unmap {
            start: start as *mut c_void,
            end: end as *mut c_void,
        },
    }
}

/// Storage for [`Uffd::read_events`]: room for a fixed number of messages, allocated once.
///
/// Fork events carry a descriptor the kernel installed during the read. If the iterator is
/// dropped before it yields them, those descriptors are closed when the buffer is read into
/// again or dropped, so none leaks.
pub struct EventBuffer {
    msgs: Box<[MaybeUninit<sys::uffd_msg>]>,
    filled: usize,
    next: usize,
}

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuffer")
            .field("capacity", &self.msgs.len())
            .field("unconsumed", &(self.filled - self.next))
            .finish()
    }
}

impl EventBuffer {
    /// The largest buffer: 65,536 messages (2 MiB), far more than one `read(2)` can find
    /// pending (one message per blocked faulting thread, plus events).
    pub const MAX_CAPACITY: usize = 1 << 16;

    /// A buffer for up to `size` messages per `read`, clamped to [`MAX_CAPACITY`](Self::MAX_CAPACITY)
    /// (use [`try_new`](Self::try_new) to be told instead). A buffer of size 0 is allowed, but
    /// reading into it fails with [`Error::InvalidArgument`].
    ///
    /// ```
    /// let buf = userfaultfd::EventBuffer::new(usize::MAX);
    /// assert_eq!(buf.capacity(), userfaultfd::EventBuffer::MAX_CAPACITY);
    /// ```
    pub fn new(size: usize) -> Self {
        Self::with_capacity(size.min(Self::MAX_CAPACITY))
    }

    /// A buffer for up to `size` messages per `read`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `size` exceeds [`MAX_CAPACITY`](Self::MAX_CAPACITY).
    pub fn try_new(size: usize) -> Result<Self> {
        if size > Self::MAX_CAPACITY {
            return Err(Error::InvalidArgument {
                op: Operation::Read,
                reason: "an EventBuffer holds at most EventBuffer::MAX_CAPACITY messages",
            });
        }
        Ok(Self::with_capacity(size))
    }

    fn with_capacity(size: usize) -> Self {
        let mut v = Vec::with_capacity(size);
        v.resize_with(size, MaybeUninit::uninit);
        EventBuffer {
            msgs: v.into_boxed_slice(),
            filled: 0,
            next: 0,
        }
    }

    /// How many messages one read can return.
    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }

    fn msg(&self, i: usize) -> &sys::uffd_msg {
        debug_assert!(i < self.filled);
        // SAFETY: messages below `filled` were written by the kernel's read.
        unsafe { self.msgs[i].assume_init_ref() }
    }

    /// Closes the descriptors of fork events that were read but never yielded.
    fn release_unconsumed(&mut self) {
        for i in self.next..self.filled {
            if let Ok(Message::Fork { fd }) = Message::decode(self.msg(i)) {
                // SAFETY: the kernel installed `fd` for this unconsumed message and nothing took
                // ownership of it; closing it here is the only close.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        self.filled = 0;
        self.next = 0;
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        self.release_unconsumed();
    }
}

/// Iterator over the events of one [`Uffd::read_events`] call.
pub struct Events<'a> {
    buf: &'a mut EventBuffer,
    parent: &'a Uffd,
}

impl Iterator for Events<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        if self.buf.next >= self.buf.filled {
            return None;
        }
        let m = Message::decode(self.buf.msg(self.buf.next));
        self.buf.next += 1;
        Some(m.map(|m| to_event(m, self.parent)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.buf.filled - self.buf.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Events<'_> {}

impl Uffd {
    /// Reads one event. Blocks until one arrives, unless the fd is non-blocking, in which case
    /// `Ok(None)` means none is pending.
    ///
    /// Allocation-free. Pending page faults are delivered before non-cooperative events, and
    /// each fault message is read by one reader even with several readers. The message layout is
    /// that of [`userfaultfd(2)`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html).
    ///
    /// # Count pages, not messages
    ///
    /// One page can be reported more than once: two threads touching it each report a fault,
    /// and the kernel can deliver a fault again after it was resolved. The second resolution of such a page then fails with
    /// [`Error::AlreadyMapped`] (wake the range and go on), and a repeated write-protect fault
    /// finds the page already writable. So a handler that expects N pages must keep a record of
    /// the pages it resolved and stop when all N are done, not after N messages: stopping after
    /// N messages can leave one page unresolved and a thread blocked on it forever. The
    /// [crate example](crate#example) keeps such a record.
    ///
    /// ```no_run
    /// # fn f(uffd: &userfaultfd::Uffd) -> userfaultfd::Result<()> {
    /// use userfaultfd::{Error, Event};
    /// let page = userfaultfd::page_size();
    /// if let Some(Event::Pagefault { addr, .. }) = uffd.read_event()? {
    ///     // SAFETY: addr is a page of a range this program registered MISSING, whose contents
    ///     // no Rust reference assumes.
    ///     match unsafe { uffd.zeropage(addr, page, true) } {
    ///         Ok(_) => {}
    ///         Err(Error::AlreadyMapped { .. }) => uffd.wake(addr, page)?, // a repeated fault
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// A blocking read waits until an event arrives or a signal handler installed without
    /// `SA_RESTART` interrupts it ([`Error::Interrupted`]; call again to keep waiting). To stop
    /// a handler thread, prefer a non-blocking fd with `poll(2)` on it and on an eventfd or
    /// pipe of your own.
    ///
    /// # Errors
    ///
    /// [`Error::Os`] for `read(2)` errors (`EINVAL` before the handshake), [`Error::Interrupted`],
    /// [`Error::ReadEof`], [`Error::IncompleteMsg`], [`Error::UnrecognizedEvent`].
    #[doc(alias = "read")]
    pub fn read_event(&self) -> Result<Option<Event>> {
        let mut msg = MaybeUninit::<sys::uffd_msg>::uninit();
        let n = self.read_msgs(msg.as_mut_ptr().cast(), MSG_SIZE)?;
        if n == 0 {
            return Ok(None);
        }
        // SAFETY: the kernel wrote one whole message (read_msgs checked the byte count).
        let msg = unsafe { msg.assume_init() };
        Message::decode(&msg).map(|m| Some(to_event(m, self)))
    }

    /// Reads as many events as are pending and fit in `buf` (at least one, blocking if the fd
    /// is blocking; none if it is non-blocking and nothing is pending). One `read(2)` call;
    /// allocation-free.
    ///
    /// ```no_run
    /// # fn f(uffd: &userfaultfd::Uffd) -> userfaultfd::Result<()> {
    /// let mut buf = userfaultfd::EventBuffer::new(64);
    /// for event in uffd.read_events(&mut buf)? {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`read_event`](Self::read_event), plus [`Error::InvalidArgument`] for a buffer of size 0.
    /// After [`Error::IncompleteMsg`] (which a userfaultfd never causes) the descriptors of
    /// whole fork messages before the fragment are closed with the buffer's next use or drop.
    pub fn read_events<'a>(&'a self, buf: &'a mut EventBuffer) -> Result<Events<'a>> {
        self.fill_events(buf)?;
        Ok(self.buffered_events(buf))
    }

    /// The events a [`fill_events`](Self::fill_events) left in `buf`, as `read_events` returns
    /// them.
    pub(crate) fn buffered_events<'a>(&'a self, buf: &'a mut EventBuffer) -> Events<'a> {
        Events { buf, parent: self }
    }

    /// The `read(2)` of [`read_events`](Self::read_events), without the iterator: returns the
    /// number of messages now in `buf` (0: none pending on a non-blocking fd).
    pub(crate) fn fill_events(&self, buf: &mut EventBuffer) -> Result<usize> {
        buf.release_unconsumed();
        if buf.msgs.is_empty() {
            return Err(Error::InvalidArgument {
                op: Operation::Read,
                reason: "the EventBuffer has room for no message",
            });
        }
        let n = match self.read_msgs(buf.msgs.as_mut_ptr().cast(), buf.msgs.len() * MSG_SIZE) {
            Ok(n) => n,
            Err(e @ Error::IncompleteMsg { read, .. }) => {
                // The whole messages before the fragment were read: their fork descriptors
                // (installed by this read) are closed when the buffer is reused or dropped.
                buf.filled = read / MSG_SIZE;
                buf.next = 0;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        buf.filled = n / MSG_SIZE;
        buf.next = 0;
        Ok(buf.filled)
    }

    /// One `read(2)`; returns the bytes read (a multiple of the message size, 0 for "nothing
    /// pending" on a non-blocking fd).
    fn read_msgs(&self, ptr: *mut c_void, len: usize) -> Result<usize> {
        // SAFETY: callers pass a buffer valid for writes of `len` bytes.
        match unsafe { raw::read(self.as_fd(), ptr, len) } {
            Err(Errno::EAGAIN) => Ok(0),
            Err(Errno::EINTR) => Err(Error::Interrupted {
                op: Operation::Read,
            }),
            Err(errno) => Err(Error::Os {
                op: Operation::Read,
                errno,
                range: None,
            }),
            Ok(0) => Err(Error::ReadEof),
            Ok(n) if n % MSG_SIZE != 0 => Err(Error::IncompleteMsg {
                read: n,
                expected: MSG_SIZE,
            }),
            Ok(n) => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: u8, words: [u64; 3]) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = event;
        for (i, w) in words.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        b
    }

    #[test]
    fn pagefault_flag_combinations() {
        let cases = [
            (0, FaultKind::Missing, ReadWrite::Read),
            (1, FaultKind::Missing, ReadWrite::Write),
            (2, FaultKind::WriteProtected, ReadWrite::Read),
            (3, FaultKind::WriteProtected, ReadWrite::Write),
            (4, FaultKind::Minor, ReadWrite::Read),
            (5, FaultKind::Minor, ReadWrite::Write),
            (1 << 40 | 1, FaultKind::Missing, ReadWrite::Write),
        ];
        for (flags, kind, rw) in cases {
            let b = msg(sys::UFFD_EVENT_PAGEFAULT, [flags, 0x1234_5000, 77]);
            assert_eq!(
                Message::from_bytes(&b).unwrap(),
                Message::Pagefault {
                    kind,
                    rw,
                    addr: 0x1234_5000,
                    thread_id: 77,
                    flags
                },
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn non_cooperative_events() {
        let b = msg(sys::UFFD_EVENT_FORK, [9, 0, 0]);
        assert_eq!(Message::from_bytes(&b).unwrap(), Message::Fork { fd: 9 });
        let b = msg(sys::UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x3000]);
        assert_eq!(
            Message::from_bytes(&b).unwrap(),
            Message::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x3000
            }
        );
        let b = msg(sys::UFFD_EVENT_REMOVE, [0x1000, 0x2000, 0]);
        assert_eq!(
            Message::from_bytes(&b).unwrap(),
            Message::Remove {
                start: 0x1000,
                end: 0x2000
            }
        );
        let b = msg(sys::UFFD_EVENT_UNMAP, [0x1000, 0x2000, 0]);
        assert_eq!(
            Message::from_bytes(&b).unwrap(),
            Message::Unmap {
                start: 0x1000,
                end: 0x2000
            }
        );
    }

    #[test]
    fn unknown_event_is_an_error_with_the_bytes() {
        for code in [0u8, 0x11, 0x17, 0xff] {
            let b = msg(code, [1, 2, 3]);
            match Message::from_bytes(&b) {
                Err(Error::UnrecognizedEvent { event, raw }) => {
                    assert_eq!(event, code);
                    assert_eq!(raw, b);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn decode_reads_the_sys_struct() {
        let b = msg(sys::UFFD_EVENT_REMOVE, [0x5000, 0x6000, 0]);
        // SAFETY: uffd_msg is 32 bytes of plain integers, so any byte pattern is valid.
        let m: sys::uffd_msg = unsafe { std::mem::transmute(b) };
        assert_eq!(
            Message::decode(&m).unwrap(),
            Message::Remove {
                start: 0x5000,
                end: 0x6000
            }
        );
    }

    #[test]
    fn fork_fds_before_a_fragment_are_closed() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        // A descriptor the test hands to the message, at a number no other test gets.
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_DUPFD_CLOEXEC duplicates our own open fd; the result is a new fd.
        let victim = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 900) };
        assert!(victim >= 900);
        // A pipe standing in for a userfaultfd (this module can build a Uffd from any fd, which
        // the public API cannot): a whole FORK message naming `victim`, then 8 stray bytes.
        let (r, mut w) = std::io::pipe().unwrap();
        let mut bytes = msg(sys::UFFD_EVENT_FORK, [victim as u64, 0, 0]).to_vec();
        bytes.extend_from_slice(&[0u8; 8]);
        w.write_all(&bytes).unwrap();
        let info = crate::uffd::ApiInfo {
            features: crate::FeatureFlags::empty(),
            supported: crate::FeatureFlags::empty(),
            ioctls: crate::IoctlFlags::empty(),
            required_range_ioctls: crate::IoctlFlags::empty(),
            features_known: true,
        };
        let uffd = Uffd::from_parts(OwnedFd::from(r), info);
        let mut buf = EventBuffer::new(4);
        match uffd.read_events(&mut buf) {
            Err(Error::IncompleteMsg { read: 40, .. }) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
        // SAFETY: F_GETFD has no memory effects.
        assert!(unsafe { libc::fcntl(victim, libc::F_GETFD) } >= 0);
        drop(buf);
        // SAFETY: as above.
        let open_after = unsafe { libc::fcntl(victim, libc::F_GETFD) } >= 0;
        assert!(!open_after, "fork fd leaked");
    }

    #[test]
    fn capacity_is_bounded() {
        assert_eq!(
            EventBuffer::new(usize::MAX).capacity(),
            EventBuffer::MAX_CAPACITY
        );
        assert_eq!(EventBuffer::new(3).capacity(), 3);
        assert!(matches!(
            EventBuffer::try_new(EventBuffer::MAX_CAPACITY + 1),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(
            EventBuffer::try_new(EventBuffer::MAX_CAPACITY)
                .unwrap()
                .capacity(),
            EventBuffer::MAX_CAPACITY
        );
    }

    #[test]
    fn empty_buffer_is_rejected() {
        let uffd = crate::UffdBuilder::new()
            .user_mode_only(true)
            .non_blocking(true)
            .create()
            .unwrap();
        let mut buf = EventBuffer::new(0);
        assert!(matches!(
            uffd.read_events(&mut buf),
            Err(Error::InvalidArgument { .. })
        ));
        let mut buf = EventBuffer::new(4);
        assert_eq!(uffd.read_events(&mut buf).unwrap().count(), 0);
        assert!(uffd.read_event().unwrap().is_none());
    }
}
