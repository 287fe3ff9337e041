//! Reading the userfaultfd: one batch of messages, read and handled under the event lock. The
//! threaded server's handlers and the async server's reader both read through
//! [`Shared::read_batch`], and differ only in how they wait for the fd and serve the faults.

use std::time::Instant;

use super::error::ServeError;
use super::shared::Shared;
use crate::{Error, Event, EventBuffer, FaultKind, ReadWrite};

/// A page fault read from the userfaultfd, for the caller to serve: its address, kind and
/// access, and when its batch was read (for the latency statistics).
pub(super) type Fault = (usize, FaultKind, ReadWrite, Instant);

/// What [`Shared::read_batch`] found.
pub(super) enum Batch {
    /// No message was pending.
    Empty,
    /// Messages were read and handled.
    Read,
    /// The read was interrupted by a signal: nothing was read.
    Interrupted,
    /// The read failed: the error was reported and the server halted; the caller stops.
    Failed,
}

impl Shared {
    /// Reads the pending messages into `buf` and handles them, holding the event lock for
    /// writing (so that no resolution lands between a REMOVE's read and the marking of its
    /// pages): write-protect faults are resolved and the other events applied at once;
    /// missing and minor faults are appended to `faults`, for the caller to serve after the
    /// lock is released; messages that cannot be decoded are reported.
    pub(super) fn read_batch(&self, buf: &mut EventBuffer, faults: &mut Vec<Fault>) -> Batch {
        let _guard = self.event_lock.as_ref().map(|l| l.write());
        match self.uffd.fill_events(buf) {
            Ok(0) => return Batch::Empty,
            Ok(_) => {}
            Err(Error::Interrupted { .. }) => return Batch::Interrupted,
            Err(e) => {
                self.report(&ServeError::Uffd(e));
                self.halt("reading the userfaultfd failed".into(), true);
                return Batch::Failed;
            }
        }
        let now = Instant::now();
        for ev in self.uffd.buffered_events(buf) {
            match ev {
                Ok(Event::Pagefault {
                    kind: FaultKind::WriteProtected,
                    addr,
                    ..
                }) => self.write_fault(addr as usize),
                Ok(Event::Pagefault { addr, kind, rw, .. }) => {
                    faults.push((addr as usize, kind, rw, now));
                }
                Ok(other) => self.apply_event(other),
                Err(e) => self.report(&ServeError::Uffd(e)),
            }
        }
        Batch::Read
    }
}
