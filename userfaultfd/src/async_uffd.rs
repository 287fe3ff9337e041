//! [`AsyncUffd`]: reading a userfaultfd's events from async code, on tokio (feature `tokio`).

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;

use crate::error::{Error, Operation, Result};
use crate::event::{Event, EventBuffer, Events};
use crate::Uffd;

/// A [`Uffd`] whose events are awaited instead of blocked on: tokio's
/// [`AsyncFd`] over an owned, **non-blocking** userfaultfd (feature `tokio`).
///
/// Reading is async ([`read_event`](Self::read_event), [`read_events`](Self::read_events), the
/// [`Stream`](futures_core::Stream) of [`events`](Self::events)); everything else (registering,
/// `copy`, `wake`, ...) is the inner `Uffd`'s, through [`get_ref`](Self::get_ref) (the ioctls
/// never block on the handler, so they need no async form).
///
/// Readiness is the fd's `poll(2)`/`epoll(7)` readability, a read is one `read(2)` of
/// `struct uffd_msg`s, as `userfaultfd(2)` describes; Linux 4.3 (the fd's `poll` support is as
/// old as userfaultfd). The fd must have been
/// created with [`UffdBuilder::non_blocking(true)`](crate::UffdBuilder::non_blocking): the kernel
/// reports `EPOLLERR`, never `EPOLLIN`, for a blocking userfaultfd (its `poll` refuses to promise
/// that a read would not block), so [`new`](Self::new) refuses one with [`Error::Blocking`].
///
/// # Cancellation safety
///
/// Every read method is cancellation safe: dropping its future before it completes loses no
/// event. The futures await only *readiness* (the reactor saying the fd may be readable); the
/// `read(2)` itself runs synchronously once readiness is reported, inside the same poll that
/// returns its result, so there is no point at which a message has been taken from the kernel
/// but not yet handed to the caller. When the read finds nothing (`EAGAIN`: another reader took
/// the message, or the fault was woken before it was read), the readiness is cleared and the
/// future waits again; a dropped future has then read nothing at all. So `read_event` may be
/// used in `tokio::select!` next to a shutdown signal or a timeout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use userfaultfd::mmap::MemoryMapping;
/// use userfaultfd::{AsyncUffd, Event, RegisterMode, UffdBuilder};
///
/// let page = userfaultfd::page_size();
/// let uffd = UffdBuilder::new().user_mode_only(true).non_blocking(true).create()?;
/// let uffd = AsyncUffd::new(uffd)?;
/// let mem = std::sync::Arc::new(MemoryMapping::new_private(page)?);
/// uffd.get_ref().register_region(&*mem, RegisterMode::MISSING)?;
///
/// // A thread touches the page; this task serves it.
/// let toucher = {
///     let mem = mem.clone();
///     std::thread::spawn(move || mem.read_obj::<u8>(100).unwrap())
/// };
/// match uffd.read_event().await? {
///     Event::Pagefault { .. } => {
///         uffd.get_ref().copy_region(&*mem, 0, &vec![42u8; page], true)?;
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// assert_eq!(toucher.join().unwrap(), 42);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncUffd {
    inner: AsyncFd<Uffd>,
}

impl AsyncUffd {
    /// Registers `uffd` with the current tokio runtime's reactor.
    ///
    /// Must be called from within a tokio runtime whose IO driver is enabled (inside a task, or
    /// under `Runtime::enter`; `#[tokio::main]` and `Runtime::new` enable it). On error `uffd` is
    /// dropped, which closes it; use [`try_new`](Self::try_new) to get it back.
    ///
    /// # Errors
    ///
    /// [`Error::Blocking`] when `uffd` lacks `O_NONBLOCK`; [`Error::InvalidArgument`] outside a
    /// tokio runtime or on one without IO; [`Error::Os`] (`op` [`Operation::Fcntl`] or
    /// [`Operation::Epoll`]) when the kernel refuses the check or the registration.
    pub fn new(uffd: Uffd) -> Result<AsyncUffd> {
        Self::try_new(uffd).map_err(|(e, _)| e)
    }

    /// [`new`](Self::new), handing `uffd` back with the error (`None` only on a runtime
    /// without IO, where tokio consumes it), e.g. to serve it another way.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use userfaultfd::{AsyncUffd, Error, UffdBuilder};
    /// let blocking = UffdBuilder::new().user_mode_only(true).create().unwrap();
    /// let (err, _uffd) = AsyncUffd::try_new(blocking).unwrap_err();
    /// assert!(matches!(err, Error::Blocking { .. }));
    /// assert!(err.to_string().contains("non_blocking(true)"));
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    #[allow(clippy::result_large_err)]
    pub fn try_new(uffd: Uffd) -> std::result::Result<AsyncUffd, (Error, Option<Uffd>)> {
        match is_non_blocking(uffd.as_fd()) {
            Ok(true) => {}
            Ok(false) => {
                return Err((
                    Error::Blocking {
                        op: Operation::Epoll,
                    },
                    Some(uffd),
                ))
            }
            Err(e) => return Err((e, Some(uffd))),
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err((
                Error::InvalidArgument {
                    op: Operation::Epoll,
                    reason: "AsyncUffd::new must be called from within a tokio runtime \
                             (inside a task, or under Runtime::enter)",
                },
                Some(uffd),
            ));
        }
        // tokio panics (instead of returning an error) on a runtime built without IO.
        // `try_new` is deprecated from tokio 1.54 in favour of the `unsafe` `register`, which
        // tokio 1.48 (the oldest this crate accepts) lacks. What `register` asks of its caller
        // holds here: the `Uffd` owns its fd, keeps it open until it is dropped or taken back
        // with `into_inner`, and always returns that same fd from `as_raw_fd`.
        #[allow(deprecated)]
        let registered = catch_unwind(AssertUnwindSafe(|| AsyncFd::try_new(uffd)));
        match registered {
            Ok(Ok(inner)) => Ok(AsyncUffd { inner }),
            Ok(Err(e)) => {
                let (uffd, err) = e.into_parts();
                Err((io_error(Operation::Epoll, &err), Some(uffd)))
            }
            Err(_) => Err((
                Error::InvalidArgument {
                    op: Operation::Epoll,
                    reason: "the tokio runtime has no IO driver: build it with enable_io() \
                             (or enable_all())",
                },
                None,
            )),
        }
    }

    /// The `Uffd`, for its ioctls (`register`, `copy`, `wake`, ...). Do not read events from it
    /// directly: a blocking-style read here would bypass the readiness this wrapper tracks
    /// (harmless, since the fd is non-blocking, but the reads here are the supported way).
    pub fn get_ref(&self) -> &Uffd {
        self.inner.get_ref()
    }

    /// Deregisters the fd from the reactor and returns the `Uffd` (still non-blocking).
    pub fn into_inner(self) -> Uffd {
        self.inner.into_inner()
    }

    /// Polls for one event: `Poll::Ready` with the event (or the read's error), or
    /// `Poll::Pending` with `cx`'s waker registered for the fd's readiness. The building block
    /// of [`read_event`](Self::read_event) and [`events`](Self::events), for hand-written
    /// futures; cancellation safe as they are.
    ///
    /// # Errors
    ///
    /// As [`Uffd::read_event`]; the reactor's own errors as [`Error::Os`] with
    /// [`Operation::Epoll`].
    pub fn poll_read_event(&self, cx: &mut Context<'_>) -> Poll<Result<Event>> {
        loop {
            let mut guard = match ready!(self.inner.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Err(io_error(Operation::Epoll, &e))),
            };
            // The read happens here, synchronously, after readiness: nothing is taken from the
            // kernel unless this poll returns it.
            match guard.get_inner().read_event() {
                Ok(Some(event)) => return Poll::Ready(Ok(event)),
                // EAGAIN: nothing pending after all; wait for the next readiness edge.
                Ok(None) => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Waits for, then reads, one event (one `read(2)` of one message). Cancellation safe (see
    /// the [type's documentation](Self#cancellation-safety)). Allocation-free apart from the
    /// future itself.
    ///
    /// Count pages, not messages, as with [`Uffd::read_event`]: one page can be reported more
    /// than once (two threads touching it, or a fault delivered again after it was resolved),
    /// so a handler that expects N pages keeps a record of the pages it resolved and stops
    /// when all N are done, not after N messages.
    ///
    /// # Errors
    ///
    /// As [`poll_read_event`](Self::poll_read_event).
    pub async fn read_event(&self) -> Result<Event> {
        poll_fn(|cx| self.poll_read_event(cx)).await
    }

    /// Waits until at least one event is pending, then reads as many as fit in `buf` with one
    /// `read(2)`, like [`Uffd::read_events`] on a blocking fd. The returned iterator yields at
    /// least one event. Cancellation safe: nothing is read into `buf` before the future
    /// completes.
    ///
    /// As with [`read_event`](Self::read_event), count pages, not messages: a page may be
    /// reported twice in one batch, or again in a later one after it was resolved.
    ///
    /// ```no_run
    /// # async fn f(uffd: &userfaultfd::AsyncUffd) -> userfaultfd::Result<()> {
    /// let mut buf = userfaultfd::EventBuffer::new(64);
    /// for event in uffd.read_events(&mut buf).await? {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Uffd::read_events`] (including [`Error::InvalidArgument`] for a buffer of size 0),
    /// plus the reactor's errors as [`Error::Os`] with [`Operation::Epoll`].
    pub async fn read_events<'a>(&'a self, buf: &'a mut EventBuffer) -> Result<Events<'a>> {
        let uffd = self.inner.get_ref();
        poll_fn(|cx| loop {
            let mut guard = match ready!(self.inner.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Err(io_error(Operation::Epoll, &e))),
            };
            match uffd.fill_events(buf) {
                Ok(0) => guard.clear_ready(),
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        })
        .await?;
        Ok(uffd.buffered_events(buf))
    }

    /// The events as a [`Stream`](futures_core::Stream): each item is one
    /// [`read_event`](Self::read_event). The stream never ends (a userfaultfd has no end of
    /// file while it is open); a read error is an item, after which the stream may be polled
    /// again. Dropping it mid-poll loses no event.
    ///
    /// ```no_run
    /// # async fn f(uffd: &userfaultfd::AsyncUffd) -> userfaultfd::Result<()> {
    /// use std::future::poll_fn;
    /// use std::pin::Pin;
    /// use futures_core::Stream;
    /// let mut events = uffd.events();
    /// while let Some(event) = poll_fn(|cx| Pin::new(&mut events).poll_next(cx)).await {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> EventStream<'_> {
        EventStream { uffd: self }
    }
}

impl AsFd for AsyncUffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get_ref().as_fd()
    }
}

impl AsRawFd for AsyncUffd {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// The [`Stream`](futures_core::Stream) of an [`AsyncUffd`]'s events
/// ([`AsyncUffd::events`]). Feature `tokio`.
#[derive(Debug)]
pub struct EventStream<'a> {
    uffd: &'a AsyncUffd,
}

impl futures_core::Stream for EventStream<'_> {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        self.uffd.poll_read_event(cx).map(Some)
    }
}

/// Whether `fd` has `O_NONBLOCK` (`fcntl(F_GETFL)`).
fn is_non_blocking(fd: BorrowedFd<'_>) -> Result<bool> {
    // SAFETY: F_GETFL reads the open file's status flags; no memory is involved.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(Error::last(Operation::Fcntl));
    }
    Ok(flags & libc::O_NONBLOCK != 0)
}

fn io_error(op: Operation, e: &io::Error) -> Error {
    Error::Os {
        op,
        errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        range: None,
    }
}
