//! Group commit: many appenders, one write and one fdatasync per group.
//!
//! Appenders join the *open* group under a short lock, copying their payload into the
//! group's buffer. The first appender of a group is its *leader*; the others park. The
//! leader waits until the previous group has been written (one group is written at a
//! time, in order), takes the open group (a fresh one opens for the next appenders),
//! hands it to the [`GroupWriter`] without holding the lock, then publishes the outcome
//! and unparks its followers. An appender learns its [`Lsn`] only from that outcome, so
//! only after the fsync covering its record returned `Ok`.
//!
//! ```text
//!  appender ─┐  lock: copy into open group ─┬─ first?  leader: wait prev ─ take ─ write+sync ─ publish ─ unpark
//!  appender ─┤                              └─ else    park ................................. woken ─ read Lsn
//! ```
//!
//! Memory is bounded: the open group holds at most `max_group_bytes` (a lone oversized
//! append excepted), and appenders that do not fit wait for the next group. At most two
//! groups exist at once: the one being written and the open one.
//!
//! Failure is latched: once a write or sync fails, the failing group's appenders get
//! [`Error::Indeterminate`], and every later appender, and the queued group, get
//! [`Error::Poisoned`]. Nothing is retried.

use std::mem;
use std::time::Duration;

use crate::error::Error;
use crate::lsn::Lsn;
use crate::record::{HEADER_LEN, RecordKind};
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, MutexGuard, Ordering, Thread, current, park};

/// Why the log failed; plain data, so not one of loom's modelled types.
pub(crate) type Cause = std::sync::Arc<str>;

/// One queued record: where it sits in [`GroupBuf::bytes`] and what its header needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// Offset of the record's header slot in the group buffer; the payload follows it.
    pub offset: usize,
    pub len: u32,
    pub kind: RecordKind,
    pub pcrc: u32,
}

/// The records of one group, framed back to back with blank headers.
#[derive(Debug, Default)]
pub(crate) struct GroupBuf {
    pub bytes: Vec<u8>,
    pub slots: Vec<Slot>,
}

impl GroupBuf {
    pub fn push(&mut self, kind: RecordKind, payload: &[u8], pcrc: u32) {
        let offset = self.bytes.len();
        self.bytes.resize(offset + HEADER_LEN, 0);
        self.bytes.extend_from_slice(payload);
        let len = u32::try_from(payload.len()).expect("payload lengths are checked on append");
        self.slots.push(Slot { offset, len, kind, pcrc });
    }

    /// The encoded length of slot `i`, header included.
    pub fn encoded_len(&self, i: usize) -> usize {
        HEADER_LEN + self.slots[i].len as usize
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.slots.clear();
    }
}

/// The I/O side of group commit, driven by one leader at a time.
pub(crate) trait GroupWriter: Send {
    /// Writes every record of `group` and makes it durable, pushing each record's Lsn
    /// onto `lsns` in order. On error the group's outcome is unknown.
    fn write_group(&mut self, group: &mut GroupBuf, lsns: &mut Vec<Lsn>) -> Result<(), Cause>;
}

/// Bounds and pacing of groups.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_group_bytes: usize,
    pub max_group_records: usize,
    /// How long a leader lingers for more appenders before writing.
    pub delay: Option<Duration>,
}

/// Counters read by [`crate::Wal::stats`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KernelStats {
    pub groups: u64,
    pub records: u64,
    pub queued_bytes_high_water: usize,
}

#[derive(Debug)]
enum Failure {
    /// The group was handed to the writer and the writer failed.
    Indeterminate(Cause),
    /// The group was never written: the log had failed before.
    Poisoned(Cause),
}

/// How one group ended; shared by its appenders.
#[derive(Debug)]
struct Outcome {
    done: AtomicBool,
    result: Mutex<Option<Result<Vec<Lsn>, Failure>>>,
}

impl Outcome {
    fn new() -> Self {
        Outcome { done: AtomicBool::new(false), result: Mutex::new(None) }
    }

    fn publish(&self, result: Result<Vec<Lsn>, Failure>) {
        *self.result.lock() = Some(result);
        self.done.store(true, Ordering::Release);
    }

    fn wait(&self) {
        // Unpark before park leaves a token, so a wake-up cannot be lost; park may also
        // return spuriously, hence the loop.
        while !self.done.load(Ordering::Acquire) {
            park();
        }
    }

    fn read(&self, first: usize, count: usize, out: &mut Vec<Lsn>) -> Result<(), Error> {
        match self.result.lock().as_ref().expect("read after publish") {
            Ok(lsns) => {
                out.extend_from_slice(&lsns[first..first + count]);
                Ok(())
            }
            Err(Failure::Indeterminate(cause)) => {
                Err(Error::Indeterminate { cause: cause.clone() })
            }
            Err(Failure::Poisoned(cause)) => Err(Error::Poisoned { cause: cause.clone() }),
        }
    }
}

#[derive(Debug)]
struct State {
    open: GroupBuf,
    open_outcome: Arc<Outcome>,
    /// Followers of the open group, unparked by its leader.
    open_waiters: Vec<Thread>,
    open_has_leader: bool,
    /// A leader is inside `write_group`.
    writing: bool,
    failed: Option<Cause>,
    closed: bool,
    /// The buffer of the last written group, kept for its capacity.
    spare: GroupBuf,
    stats: KernelStats,
}

/// The group-commit kernel around a [`GroupWriter`].
#[derive(Debug)]
pub(crate) struct GroupCommit<W> {
    // Lock order: `writer` may be held while taking `state` (`with_writer`), never the
    // reverse: a leader drops `state` before it locks `writer`.
    state: Mutex<State>,
    /// Signalled when a group finishes: the open group's leader and `close` wait here.
    written: Condvar,
    /// Signalled when the open group is taken, or the log fails or closes.
    room: Condvar,
    writer: Mutex<W>,
    limits: Limits,
}

impl<W: GroupWriter> GroupCommit<W> {
    pub fn new(writer: W, limits: Limits) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                open: GroupBuf::default(),
                open_outcome: Arc::new(Outcome::new()),
                open_waiters: Vec::new(),
                open_has_leader: false,
                writing: false,
                failed: None,
                closed: false,
                spare: GroupBuf::default(),
                stats: KernelStats::default(),
            }),
            written: Condvar::new(),
            room: Condvar::new(),
            writer: Mutex::new(writer),
            limits,
        }
    }

    /// Appends `records` (payload, payload checksum) as consecutive records of one group
    /// and returns once they are durable, pushing their Lsns onto `out`.
    pub fn commit(
        &self,
        kind: RecordKind,
        records: &[(&[u8], u32)],
        out: &mut Vec<Lsn>,
    ) -> Result<(), Error> {
        let bytes: usize = records.iter().map(|(p, _)| HEADER_LEN + p.len()).sum();
        let mut st = self.state.lock();
        loop {
            if let Some(cause) = &st.failed {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            let open = &st.open;
            let fits = open.slots.is_empty()
                || (open.bytes.len() + bytes <= self.limits.max_group_bytes
                    && open.slots.len() + records.len() <= self.limits.max_group_records);
            if fits {
                break;
            }
            st = self.room.wait(st);
        }
        let first = st.open.slots.len();
        for &(payload, pcrc) in records {
            st.open.push(kind, payload, pcrc);
        }
        st.stats.queued_bytes_high_water =
            st.stats.queued_bytes_high_water.max(st.open.bytes.len());
        let outcome = st.open_outcome.clone();
        if st.open_has_leader {
            st.open_waiters.push(current());
            drop(st);
            outcome.wait();
        } else {
            st.open_has_leader = true;
            self.lead(st);
        }
        outcome.read(first, records.len(), out)
    }

    /// Runs as the open group's leader: writes it after the previous group, publishes
    /// the outcome and wakes the followers.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        while st.writing && st.failed.is_none() {
            st = self.written.wait(st);
        }
        if let Some(delay) = self.limits.delay.filter(|_| st.failed.is_none()) {
            drop(st);
            std::thread::sleep(delay);
            st = self.state.lock();
        }
        let spare = mem::take(&mut st.spare);
        let mut group = mem::replace(&mut st.open, spare);
        let waiters = mem::take(&mut st.open_waiters);
        let outcome = mem::replace(&mut st.open_outcome, Arc::new(Outcome::new()));
        st.open_has_leader = false;
        st.stats.groups += 1;
        st.stats.records += group.slots.len() as u64;

        let result = if let Some(cause) = st.failed.clone() {
            drop(st);
            Err(Failure::Poisoned(cause))
        } else {
            st.writing = true;
            drop(st);
            self.room.notify_all();
            let mut lsns = Vec::with_capacity(group.slots.len());
            let written = self.writer.lock().write_group(&mut group, &mut lsns);
            let mut st = self.state.lock();
            st.writing = false;
            if let Err(cause) = &written {
                st.failed = Some(cause.clone());
            }
            group.clear();
            st.spare = group;
            drop(st);
            written.map(|()| lsns).map_err(Failure::Indeterminate)
        };
        let failed = result.is_err();
        // Wake the next group's leader (or `close`) before our own followers: the disk
        // should not wait for our bookkeeping.
        self.written.notify_all();
        if failed {
            self.room.notify_all();
        }
        outcome.publish(result);
        for waiter in waiters {
            waiter.unpark();
        }
    }

    /// Stops taking appends, waits until every queued group is written, then gives the
    /// writer to `last` (to seal the log). Later appends get [`Error::Closed`].
    pub fn close<R>(&self, last: impl FnOnce(&mut W) -> R) -> Result<R, Error> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::Closed);
        }
        st.closed = true;
        drop(st);
        self.room.notify_all();
        let mut st = self.state.lock();
        while st.writing || st.open_has_leader {
            st = self.written.wait(st);
        }
        if let Some(cause) = &st.failed {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        drop(st);
        Ok(last(&mut self.writer.lock()))
    }

    /// Runs `f` on the writer between groups, unless the log failed or closed.
    pub fn with_writer<R>(&self, f: impl FnOnce(&mut W) -> R) -> Result<R, Error> {
        let mut writer = self.writer.lock();
        let st = self.state.lock();
        if let Some(cause) = &st.failed {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        if st.closed {
            return Err(Error::Closed);
        }
        drop(st);
        Ok(f(&mut writer))
    }

    /// Latches a failure found outside a group (by `with_writer` work).
    pub fn fail(&self, cause: Cause) {
        let mut st = self.state.lock();
        st.failed.get_or_insert(cause);
        drop(st);
        self.room.notify_all();
        self.written.notify_all();
    }

    /// The failure that latched the log, if any.
    pub fn failure(&self) -> Option<Cause> {
        self.state.lock().failed.clone()
    }

    pub fn stats(&self) -> KernelStats {
        self.state.lock().stats
    }

    /// Records in the open group, waiting for the next write.
    pub fn queued_records(&self) -> usize {
        self.state.lock().open.slots.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::BTreeSet;
    use std::thread;

    use super::*;

    /// Assigns consecutive Lsns and remembers what was written, in order.
    #[derive(Default)]
    struct Recorder {
        next: u64,
        written: Vec<Vec<u8>>,
        fail_on_group: Option<usize>,
        groups: usize,
    }

    impl GroupWriter for Recorder {
        fn write_group(&mut self, group: &mut GroupBuf, lsns: &mut Vec<Lsn>) -> Result<(), Cause> {
            self.groups += 1;
            if self.fail_on_group == Some(self.groups) {
                return Err("injected".into());
            }
            for (i, slot) in group.slots.iter().enumerate() {
                let start = slot.offset + HEADER_LEN;
                self.written.push(group.bytes[start..start + slot.len as usize].to_vec());
                lsns.push(Lsn(self.next));
                self.next += group.encoded_len(i) as u64;
            }
            Ok(())
        }
    }

    fn limits(max_group_bytes: usize) -> Limits {
        Limits { max_group_bytes, max_group_records: usize::MAX, delay: None }
    }

    fn append(gc: &GroupCommit<Recorder>, payload: &[u8]) -> Result<Lsn, Error> {
        let mut out = Vec::new();
        gc.commit(RecordKind::Data, &[(payload, 0)], &mut out)?;
        Ok(out[0])
    }

    #[test]
    fn concurrent_appenders_get_distinct_lsns_in_write_order() {
        let gc = Arc::new(GroupCommit::new(Recorder::default(), limits(4096)));
        let handles: Vec<_> = (0..8u8)
            .map(|t| {
                let gc = gc.clone();
                thread::spawn(move || {
                    (0..200u16)
                        .map(|i| {
                            let [hi, lo] = i.to_be_bytes();
                            let payload = [t, hi, lo];
                            (append(&gc, &payload).unwrap(), payload.to_vec())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let acked: Vec<(Lsn, Vec<u8>)> =
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let lsns: BTreeSet<Lsn> = acked.iter().map(|(l, _)| *l).collect();
        assert_eq!(lsns.len(), acked.len(), "Lsns are unique");
        let writer = gc.writer.lock();
        // Each record's Lsn names exactly the record written there.
        let by_lsn: Vec<Lsn> =
            (0..writer.written.len()).map(|i| Lsn((i * (HEADER_LEN + 3)) as u64)).collect();
        for (lsn, payload) in &acked {
            let index = by_lsn.binary_search(lsn).unwrap();
            assert_eq!(&writer.written[index], payload);
        }
        let stats = gc.stats();
        assert_eq!(stats.records, 1600);
        assert!(stats.groups <= 1600);
        assert!(stats.queued_bytes_high_water <= 4096 + HEADER_LEN + 3);
    }

    #[test]
    fn a_failed_group_is_indeterminate_and_the_log_stays_poisoned() {
        let recorder = Recorder { fail_on_group: Some(2), ..Recorder::default() };
        let gc = GroupCommit::new(recorder, limits(1024));
        assert!(append(&gc, b"one").is_ok());
        assert!(matches!(append(&gc, b"two"), Err(Error::Indeterminate { .. })));
        assert!(matches!(append(&gc, b"three"), Err(Error::Poisoned { .. })));
        assert!(matches!(gc.close(|_| ()), Err(Error::Poisoned { .. })));
        assert_eq!(gc.writer.lock().written, vec![b"one".to_vec()]);
    }

    #[test]
    fn close_refuses_later_appends() {
        let gc = GroupCommit::new(Recorder::default(), limits(1024));
        append(&gc, b"one").unwrap();
        let groups = gc.close(|w| w.groups).unwrap();
        assert_eq!(groups, 1);
        assert!(matches!(append(&gc, b"two"), Err(Error::Closed)));
        assert!(matches!(gc.close(|_| ()), Err(Error::Closed)));
    }
}

/// Exhaustive interleavings of the kernel under loom:
/// `RUSTFLAGS="--cfg loom" cargo test -p regionkv-wal --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    struct Counter {
        next: u64,
        fail: bool,
    }

    impl GroupWriter for Counter {
        fn write_group(&mut self, group: &mut GroupBuf, lsns: &mut Vec<Lsn>) -> Result<(), Cause> {
            if self.fail {
                return Err("injected".into());
            }
            for _ in &group.slots {
                lsns.push(Lsn(self.next));
                self.next += 1;
            }
            Ok(())
        }
    }

    fn append(gc: &GroupCommit<Counter>) -> Result<Lsn, Error> {
        let mut out = Vec::new();
        gc.commit(RecordKind::Data, &[(b"x", 0)], &mut out)?;
        Ok(out[0])
    }

    #[test]
    fn loom_three_appenders_all_acknowledged_once() {
        loom::model(|| {
            let limits = Limits { max_group_bytes: 64, max_group_records: 2, delay: None };
            let gc = Arc::new(GroupCommit::new(Counter { next: 0, fail: false }, limits));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let gc = gc.clone();
                    loom::thread::spawn(move || append(&gc).unwrap())
                })
                .collect();
            let mine = append(&gc).unwrap();
            let mut all: Vec<Lsn> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            all.push(mine);
            all.sort();
            assert_eq!(all, vec![Lsn(0), Lsn(1), Lsn(2)], "no lost wake-up, no duplicate");
        });
    }

    #[test]
    fn loom_failure_reaches_every_waiter() {
        loom::model(|| {
            let limits = Limits { max_group_bytes: 64, max_group_records: 8, delay: None };
            let gc = Arc::new(GroupCommit::new(Counter { next: 0, fail: true }, limits));
            let other = {
                let gc = gc.clone();
                loom::thread::spawn(move || append(&gc))
            };
            let mine = append(&gc);
            let theirs = other.join().unwrap();
            for r in [mine, theirs] {
                assert!(matches!(r, Err(Error::Indeterminate { .. } | Error::Poisoned { .. })));
            }
        });
    }

    #[test]
    fn loom_close_waits_for_queued_groups() {
        loom::model(|| {
            let limits = Limits { max_group_bytes: 64, max_group_records: 8, delay: None };
            let gc = Arc::new(GroupCommit::new(Counter { next: 0, fail: false }, limits));
            let appender = {
                let gc = gc.clone();
                loom::thread::spawn(move || append(&gc))
            };
            let written_at_close = gc.close(|w| w.next).unwrap();
            match appender.join().unwrap() {
                // Acknowledged appends were written before close saw the writer.
                Ok(_) => assert_eq!(written_at_close, 1),
                Err(e) => {
                    assert!(matches!(e, Error::Closed));
                    assert_eq!(written_at_close, 0);
                }
            }
        });
    }
}
