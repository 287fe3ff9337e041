//! The fetch scheduler: a bounded number of source reads in flight, handed out by priority.
//!
//! A fetch holds a [`Permit`] while it reads and installs. Demand fetches may use every slot;
//! prefetch and background fetches only the slots below `low_max`, so some slots are always
//! left to demand faults. When a permit is given back, the slot goes to the oldest waiter of
//! the highest priority that may take it (a queue per priority), so demand faults overtake
//! queued prefetch, and prefetch overtakes background fill.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// What a fetch is for, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    /// A faulting thread waits for it.
    Demand = 0,
    /// The rest of a fault's chunk.
    Prefetch = 1,
    /// Background fill.
    Background = 2,
}

struct State {
    in_flight: usize,
    waiting: [VecDeque<oneshot::Sender<Permit>>; 3],
}

/// Hands out at most `max` permits at once, `low_max` of them to non-demand fetches.
pub(super) struct Scheduler {
    max: usize,
    low_max: usize,
    state: Mutex<State>,
}

/// A slot of the scheduler, given back on drop.
pub(super) struct Permit {
    sched: Arc<Scheduler>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.sched.release();
    }
}

impl Scheduler {
    /// `max` slots (at least 1), of which non-demand fetches may hold `max - max / 4` (at
    /// least one slot kept for demand when `max >= 2`).
    pub(super) fn new(max: usize) -> Arc<Scheduler> {
        let max = max.max(1);
        let reserve = if max >= 2 { (max / 4).max(1) } else { 0 };
        Arc::new(Scheduler {
            max,
            low_max: max - reserve,
            state: Mutex::new(State {
                in_flight: 0,
                waiting: Default::default(),
            }),
        })
    }

    fn limit(&self, prio: Priority) -> usize {
        match prio {
            Priority::Demand => self.max,
            _ => self.low_max,
        }
    }

    /// Permits held now.
    pub(super) fn in_flight(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight
    }

    /// Waits for a slot. Cancellation safe: a dropped wait takes no slot (a slot handed to it
    /// meanwhile is given back when its permit is dropped with the channel).
    pub(super) async fn acquire(self: &Arc<Self>, prio: Priority) -> Permit {
        loop {
            let rx = {
                let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                // Nobody of this or a higher priority is queued ahead, and a slot is free.
                let ahead = st.waiting[..=prio as usize]
                    .iter()
                    .any(|q| q.iter().any(|tx| !tx.is_closed()));
                if !ahead && st.in_flight < self.limit(prio) {
                    st.in_flight += 1;
                    return Permit {
                        sched: Arc::clone(self),
                    };
                }
                let (tx, rx) = oneshot::channel();
                st.waiting[prio as usize].push_back(tx);
                rx
            };
            if let Ok(permit) = rx.await {
                return permit;
            }
            // The sender was dropped unsent (never happens while the scheduler lives): queue
            // again.
        }
    }

    /// A slot was given back: hand it to the most urgent waiter that may take it.
    fn release(self: &Arc<Self>) {
        loop {
            let tx = {
                let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                st.in_flight -= 1;
                let mut next = None;
                for prio in [Priority::Demand, Priority::Prefetch, Priority::Background] {
                    if st.in_flight >= self.limit(prio) {
                        continue;
                    }
                    while let Some(tx) = st.waiting[prio as usize].pop_front() {
                        if !tx.is_closed() {
                            next = Some(tx);
                            break;
                        }
                    }
                    if next.is_some() {
                        break;
                    }
                }
                match next {
                    Some(tx) => {
                        st.in_flight += 1;
                        tx
                    }
                    None => return,
                }
            };
            // Sent outside the lock: a permit dropped by a receiver that just went away
            // would release (and lock) again.
            match tx.send(Permit {
                sched: Arc::clone(self),
            }) {
                Ok(()) => return,
                // The waiter went away before the send: the slot counted for it is still
                // ours; take it back and try the next waiter.
                Err(permit) => std::mem::forget(permit),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        std::pin::Pin::new(f).poll(&mut cx)
    }

    #[test]
    fn demand_overtakes_queued_background_and_the_bound_holds() {
        let s = Scheduler::new(2);
        assert_eq!((s.max, s.low_max), (2, 1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let bg = s.acquire(Priority::Background).await;
            // The second slot is kept for demand: background waits...
            let mut bg2 = Box::pin(s.acquire(Priority::Background));
            assert!(poll_once(&mut bg2).is_pending());
            // ...and demand gets it at once.
            let d = s.acquire(Priority::Demand).await;
            assert_eq!(s.in_flight(), 2);
            // Full: a second demand queues too, and gets the next free slot first.
            let mut d2 = Box::pin(s.acquire(Priority::Demand));
            assert!(poll_once(&mut d2).is_pending());
            drop(bg);
            let d2 = match poll_once(&mut d2) {
                Poll::Ready(p) => p,
                Poll::Pending => panic!("the queued demand fetch did not get the slot"),
            };
            assert!(poll_once(&mut bg2).is_pending());
            assert_eq!(s.in_flight(), 2);
            drop(d);
            // One slot free, but it is the one kept for demand: background still waits.
            assert!(poll_once(&mut bg2).is_pending());
            drop(d2);
            let Poll::Ready(_bg2) = poll_once(&mut bg2) else {
                panic!("background did not get the freed slot");
            };
            assert_eq!(s.in_flight(), 1);
        });
    }

    #[test]
    fn a_dropped_wait_takes_no_slot() {
        let s = Scheduler::new(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let held = s.acquire(Priority::Demand).await;
            let mut w = Box::pin(s.acquire(Priority::Demand));
            assert!(poll_once(&mut w).is_pending());
            drop(w);
            drop(held);
            assert_eq!(s.in_flight(), 0);
            let _p = s.acquire(Priority::Prefetch).await;
            assert_eq!(s.in_flight(), 1);
        });
    }
}
