//! A bounded many-to-one queue that the receiver drains whole.
//!
//! Pollers and writers take everything queued at once (one lock per batch), and a
//! sender wakes the receiver only if it is actually asleep. Unlike a spinning channel,
//! an idle receiver costs nothing: on a machine with fewer cores than threads, spinning
//! or yielding receivers take CPU from the threads doing the work.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Why a send failed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError<T> {
    /// The queue is at its bound (only from `try_send`).
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    receiver_asleep: bool,
    senders_waiting: usize,
    closed: bool,
}

/// The queue; share it in an `Arc`.
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    room: Condvar,
    capacity: usize,
}

impl<T> Mailbox<T> {
    pub fn new(capacity: usize) -> Mailbox<T> {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                receiver_asleep: false,
                senders_waiting: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item`, waiting while the queue is full (backpressure).
    pub fn send(&self, item: T) -> Result<(), SendError<T>> {
        let mut st = self.state.lock();
        while st.queue.len() >= self.capacity && !st.closed {
            st.senders_waiting += 1;
            self.room.wait(&mut st);
            st.senders_waiting -= 1;
        }
        self.push(st, item)
    }

    /// Queues `item` unless the queue is full.
    pub fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        let st = self.state.lock();
        if st.queue.len() >= self.capacity && !st.closed {
            return Err(SendError::Full(item));
        }
        self.push(st, item)
    }

    fn push(
        &self,
        mut st: parking_lot::MutexGuard<'_, State<T>>,
        item: T,
    ) -> Result<(), SendError<T>> {
        if st.closed {
            return Err(SendError::Closed(item));
        }
        st.queue.push_back(item);
        let wake = st.receiver_asleep;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves everything queued into `out`, waiting until `deadline` if nothing is.
    /// Returns false once the mailbox is closed and empty.
    pub fn recv_all(&self, out: &mut Vec<T>, deadline: Instant) -> bool {
        let mut st = self.state.lock();
        while st.queue.is_empty() && !st.closed {
            st.receiver_asleep = true;
            let timed_out = self.ready.wait_until(&mut st, deadline).timed_out();
            st.receiver_asleep = false;
            if timed_out {
                break;
            }
        }
        let open = !st.closed || !st.queue.is_empty();
        out.extend(st.queue.drain(..));
        let wake_senders = st.senders_waiting > 0;
        drop(st);
        if wake_senders {
            self.room.notify_all();
        }
        open
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

    #[test]
    fn drains_in_order_and_bounds_senders() {
        let mb = Arc::new(Mailbox::new(2));
        mb.send(1).unwrap();
        mb.send(2).unwrap();
        assert_eq!(mb.try_send(3), Err(SendError::Full(3)));
        let sender = {
            let mb = mb.clone();
            std::thread::spawn(move || mb.send(3))
        };
        let mut out = Vec::new();
        while out.len() < 3 {
            assert!(mb.recv_all(&mut out, Instant::now() + Duration::from_secs(10)));
        }
        assert_eq!(out, vec![1, 2, 3]);
        sender.join().unwrap().unwrap();
        mb.close();
        assert_eq!(mb.send(4), Err(SendError::Closed(4)));
        assert!(!mb.recv_all(&mut out, Instant::now()));
    }

    #[test]
    fn a_sleeping_receiver_is_woken() {
        let mb = Arc::new(Mailbox::new(8));
        let receiver = {
            let mb = mb.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                mb.recv_all(&mut out, Instant::now() + Duration::from_secs(30));
                out
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        mb.send(7).unwrap();
        assert_eq!(receiver.join().unwrap(), vec![7]);
    }
}
