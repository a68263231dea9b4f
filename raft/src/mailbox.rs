//! A many-to-one queue in three lanes that the receiver drains whole.
//!
//! Pollers and writers take everything queued at once (one lock per batch), and a
//! sender wakes the receiver only if it is actually asleep. Unlike a spinning channel,
//! an idle receiver costs nothing: on a machine with fewer cores than threads, spinning
//! or yielding receivers take CPU from the threads doing the work.
//!
//! The lanes (A5 and A9 in ARCHITECTURE.md's Store section) keep overload on the
//! clients: a full lane never holds back another, and the receiver drains them in
//! order, system first.
//!
//! | lane | carries | bound | when full |
//! |---|---|---|---|
//! | [`Lane::System`] | the store's own traffic: persisted notifications, tasks between cores, status calls | none: bounded by the work that produces it | never full |
//! | [`Lane::Peer`] | Raft envelopes | its capacity | `try_send` refuses (Raft resends) |
//! | [`Lane::Client`] | client requests | its capacity | `send` waits (backpressure); the receiver may also leave the lane undrained |

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Why a send failed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError<T> {
    /// The lane is at its bound (only from `try_send`).
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// One of a mailbox's queues (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Unbounded, drained first.
    System,
    /// Bounded, drained second.
    Peer,
    /// Bounded, drained last, and only when the receiver asks for it.
    Client,
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::System => 0,
            Lane::Peer => 1,
            Lane::Client => 2,
        }
    }
}

#[derive(Debug)]
struct State<T> {
    /// By [`Lane::index`].
    lanes: [VecDeque<T>; 3],
    receiver_asleep: bool,
    /// While asleep: whether the receiver waits for client items too.
    receiver_takes_clients: bool,
    senders_waiting: usize,
    closed: bool,
}

impl<T> State<T> {
    fn has_work(&self, clients: bool) -> bool {
        !self.lanes[0].is_empty()
            || !self.lanes[1].is_empty()
            || (clients && !self.lanes[2].is_empty())
    }
}

/// The queue; share it in an `Arc`.
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    room: Condvar,
    /// By [`Lane::index`].
    capacity: [usize; 3],
}

impl<T> Mailbox<T> {
    /// A mailbox whose peer and client lanes hold `peers` and `clients` items.
    pub fn new(peers: usize, clients: usize) -> Mailbox<T> {
        Mailbox {
            state: Mutex::new(State {
                lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
                receiver_asleep: false,
                receiver_takes_clients: true,
                senders_waiting: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity: [usize::MAX, peers.max(1), clients.max(1)],
        }
    }

    fn full(&self, st: &State<T>, lane: Lane) -> bool {
        st.lanes[lane.index()].len() >= self.capacity[lane.index()]
    }

    /// Queues `item` in `lane`, waiting while the lane is full (backpressure; the
    /// system lane is never full).
    pub fn send(&self, lane: Lane, item: T) -> Result<(), SendError<T>> {
        let mut st = self.state.lock();
        while self.full(&st, lane) && !st.closed {
            st.senders_waiting += 1;
            self.room.wait(&mut st);
            st.senders_waiting -= 1;
        }
        self.push(st, lane, item)
    }

    /// Queues `item` in `lane` unless the lane is full.
    pub fn try_send(&self, lane: Lane, item: T) -> Result<(), SendError<T>> {
        let st = self.state.lock();
        if self.full(&st, lane) && !st.closed {
            return Err(SendError::Full(item));
        }
        self.push(st, lane, item)
    }

    fn push(
        &self,
        mut st: parking_lot::MutexGuard<'_, State<T>>,
        lane: Lane,
        item: T,
    ) -> Result<(), SendError<T>> {
        if st.closed {
            return Err(SendError::Closed(item));
        }
        st.lanes[lane.index()].push_back(item);
        let wake = st.receiver_asleep && (lane != Lane::Client || st.receiver_takes_clients);
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves everything queued into `out`, lane by lane (system, peer, then client,
    /// unless `clients` is false: client items then stay queued, and do not wake the
    /// receiver), waiting until `deadline` if nothing is. Returns false once the
    /// mailbox is closed and empty.
    pub fn recv_all(&self, out: &mut Vec<T>, deadline: Instant, clients: bool) -> bool {
        let mut st = self.state.lock();
        while !st.has_work(clients) && !st.closed {
            st.receiver_asleep = true;
            st.receiver_takes_clients = clients;
            let timed_out = self.ready.wait_until(&mut st, deadline).timed_out();
            st.receiver_asleep = false;
            if timed_out {
                break;
            }
        }
        let open = !st.closed || st.has_work(true);
        let lanes = if clients { 3 } else { 2 };
        let mut drained_full = false;
        for lane in 0..lanes {
            drained_full |= st.lanes[lane].len() >= self.capacity[lane];
            out.extend(st.lanes[lane].drain(..));
        }
        let wake_senders = st.senders_waiting > 0 && (clients || drained_full);
        drop(st);
        if wake_senders {
            self.room.notify_all();
        }
        open
    }

    /// True if nothing is queued in any lane.
    pub fn is_empty(&self) -> bool {
        !self.state.lock().has_work(true)
    }

    /// Refuses further sends; the receiver still gets what was queued.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn drains_in_order_and_bounds_senders() {
        let mb = Arc::new(Mailbox::new(1, 2));
        mb.send(Lane::Client, 1).unwrap();
        mb.send(Lane::Client, 2).unwrap();
        assert_eq!(mb.try_send(Lane::Client, 3), Err(SendError::Full(3)));
        let sender = {
            let mb = mb.clone();
            std::thread::spawn(move || mb.send(Lane::Client, 3))
        };
        let mut out = Vec::new();
        while out.len() < 3 {
            assert!(mb.recv_all(&mut out, far(), true));
        }
        assert_eq!(out, vec![1, 2, 3]);
        sender.join().unwrap().unwrap();
        mb.close();
        assert_eq!(mb.send(Lane::Client, 4), Err(SendError::Closed(4)));
        assert!(!mb.recv_all(&mut out, Instant::now(), true));
    }

    #[test]
    fn lanes_are_drained_system_first_and_a_full_lane_holds_back_no_other() {
        let mb = Mailbox::new(1, 1);
        mb.send(Lane::Client, "client").unwrap();
        mb.send(Lane::Peer, "peer").unwrap();
        assert_eq!(mb.try_send(Lane::Peer, "dropped"), Err(SendError::Full("dropped")));
        assert_eq!(mb.try_send(Lane::Client, "later"), Err(SendError::Full("later")));
        for _ in 0..10 {
            mb.try_send(Lane::System, "system").unwrap(); // never full
        }
        let mut out = Vec::new();
        assert!(mb.recv_all(&mut out, far(), true));
        assert_eq!(out[..10], ["system"; 10]);
        assert_eq!(out[10..], ["peer", "client"]);
    }

    #[test]
    fn client_items_wait_while_the_receiver_does_not_take_them() {
        let mb = Mailbox::new(4, 4);
        mb.send(Lane::Client, 1).unwrap();
        let mut out = Vec::new();
        // Only client items queued: the receiver sleeps until its deadline.
        assert!(mb.recv_all(&mut out, Instant::now() + Duration::from_millis(5), false));
        assert!(out.is_empty());
        mb.send(Lane::System, 2).unwrap();
        assert!(mb.recv_all(&mut out, far(), false));
        assert_eq!(out, vec![2]);
        assert!(mb.recv_all(&mut out, far(), true));
        assert_eq!(out, vec![2, 1]);
    }

    #[test]
    fn a_sleeping_receiver_is_woken() {
        let mb = Arc::new(Mailbox::new(8, 8));
        let receiver = {
            let mb = mb.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                mb.recv_all(&mut out, Instant::now() + Duration::from_secs(30), true);
                out
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        mb.send(Lane::Client, 7).unwrap();
        assert_eq!(receiver.join().unwrap(), vec![7]);
    }
}
