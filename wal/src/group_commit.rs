//! Group commit: many appenders, one write and one fdatasync per group, and up to
//! [`MAX_IN_FLIGHT`] groups in flight at once.
//!
//! Appenders join the *open* group under a short lock, copying their payload into the
//! group's buffer. The first appender of a group is its *leader*; the others park. The
//! leader waits until the previous group has been *written* (groups are written one at
//! a time, in order) and until fewer than [`MAX_IN_FLIGHT`] groups are in flight, takes
//! the open group (a fresh one opens for the next appenders), and hands it to the
//! [`GroupWriter`] without holding the lock. Once its records are written, the next
//! group's leader may write while this one's fdatasync runs ([`PendingSync::sync`], on
//! its own file handle; see `writer.rs`). The leader then waits for its *turn*: a
//! group's outcome is published strictly in group order, so a group whose sync
//! returned first still waits for every earlier group's. Then it publishes the outcome
//! and unparks its followers. An appender learns its [`Lsn`] only from that outcome,
//! so only after the fsync covering its record, and every earlier group's, returned
//! `Ok`.
//!
//! ```text
//!  appender ─┐  lock: copy into open group ─┬─ first?  leader: wait prev write, slot ─ take ─ write ─ sync ─ wait turn ─ publish ─ unpark
//!  appender ─┤                              └─ else    park ........................................................ woken ─ read Lsn
//!  next leader:                                          wait prev write ─ take ─ write ─ sync (overlaps the sync above) ─ wait turn ─ ...
//! ```
//!
//! Memory is bounded: the open group holds at most `max_group_bytes` (a lone oversized
//! append excepted), and appenders that do not fit wait for the next group. At most
//! `MAX_IN_FLIGHT + 1` groups exist at once: those in flight and the open one.
//!
//! Failure is latched: once a write or sync fails, the failing group's appenders get
//! [`Error::Indeterminate`], and so do those of every group in flight that has not
//! published its outcome yet (their records were handed to the writer); every later
//! appender, and the queued group, get [`Error::Poisoned`]. Nothing is retried.

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

/// Most groups written but not yet published at once: one whose fdatasync runs while
/// the next is written and synced. Concurrent fdatasyncs of one file overlap in the
/// device (measured in the commit that added this), so two in flight nearly double the
/// groups per second when the fsync is the wait.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// The I/O side of group commit. One leader at a time writes; syncs may overlap.
pub(crate) trait GroupWriter: Send {
    /// What is left to make a written group durable.
    type Pending: PendingSync;

    /// Writes every record of `group` after every earlier group's, pushing each record's
    /// Lsn onto `lsns` in order, and returns the sync that will make them durable.
    /// `lane` (below [`MAX_IN_FLIGHT`]) says which file handle that sync uses; the
    /// kernel never has two syncs of one lane in flight. On error the group's outcome
    /// is unknown.
    fn write_group(
        &mut self,
        group: &mut GroupBuf,
        lsns: &mut Vec<Lsn>,
        lane: usize,
    ) -> Result<Self::Pending, Cause>;
}

/// The durability half of a written group, run without the writer.
pub(crate) trait PendingSync: Send {
    /// Makes the group durable (one fdatasync). May run while later groups are written
    /// and while an earlier group's sync runs. On error the outcome is unknown.
    fn sync(&self) -> Result<(), Cause>;

    /// Publishes the group as durable. Called in group order, only after this group's
    /// sync and every earlier group's returned `Ok`, and never after a failure.
    fn publish(self);
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
    /// Groups whose sync returned before an earlier group had published, so that they
    /// waited for their turn.
    pub turn_waits: u64,
}

#[derive(Debug)]
enum Failure {
    /// The group was handed to the writer and the writer failed.
    Indeterminate(Cause),
    /// The group was never written: the log had failed before.
    Poisoned(Cause),
}

/// How many followers each woken appender unparks: followers are woken in a tree, the
/// leader waking the first two, follower `i` then `2i + 2` and `2i + 3`, so no thread
/// makes more than two wake-up calls and the wake-ups of a large group spread over the
/// threads (and cores) already awake.
const WAKE_FANOUT: usize = 2;

/// How one group ended; shared by its appenders.
#[derive(Debug)]
struct Outcome {
    done: AtomicBool,
    published: Mutex<Option<Published>>,
}

#[derive(Debug)]
struct Published {
    result: Result<Vec<Lsn>, Failure>,
    /// The group's followers, in the order they joined: follower `i` is at index `i`.
    followers: Vec<Thread>,
}

impl Outcome {
    fn new() -> Self {
        Outcome { done: AtomicBool::new(false), published: Mutex::new(None) }
    }

    /// Publishes the group's outcome and wakes the root of the wake-up tree.
    fn publish(&self, result: Result<Vec<Lsn>, Failure>, followers: Vec<Thread>) {
        let first: Vec<Thread> = followers.iter().take(WAKE_FANOUT).cloned().collect();
        *self.published.lock() = Some(Published { result, followers });
        self.done.store(true, Ordering::Release);
        for thread in first {
            thread.unpark();
        }
    }

    fn wait(&self) {
        // Unpark before park leaves a token, so a wake-up cannot be lost; park may also
        // return spuriously, hence the loop.
        while !self.done.load(Ordering::Acquire) {
            park();
        }
    }

    /// Reads this appender's Lsns; a follower (`follower` is its index) first wakes its
    /// children in the wake-up tree.
    fn read(
        &self,
        first: usize,
        count: usize,
        out: &mut Vec<Lsn>,
        follower: Option<usize>,
    ) -> Result<(), Error> {
        let guard = self.published.lock();
        let published = guard.as_ref().expect("read after publish");
        let children: Vec<Thread> = follower
            .map(|i| WAKE_FANOUT * i + WAKE_FANOUT)
            .and_then(|c| {
                published.followers.get(c..(c + WAKE_FANOUT).min(published.followers.len()))
            })
            .unwrap_or_default()
            .to_vec();
        let result = match &published.result {
            Ok(lsns) => {
                out.extend_from_slice(&lsns[first..first + count]);
                Ok(())
            }
            Err(Failure::Indeterminate(cause)) => {
                Err(Error::Indeterminate { cause: cause.clone() })
            }
            Err(Failure::Poisoned(cause)) => Err(Error::Poisoned { cause: cause.clone() }),
        };
        drop(guard);
        for thread in children {
            thread.unpark();
        }
        result
    }
}

#[derive(Debug)]
struct State {
    open: GroupBuf,
    open_outcome: Arc<Outcome>,
    /// Followers of the open group, in the order they joined (woken in a tree).
    open_waiters: Vec<Thread>,
    open_has_leader: bool,
    /// A leader is inside `write_group`.
    writing: bool,
    /// `with_writer` calls that have the writer or wait for the groups in flight to
    /// publish: no leader takes a group while any is pending.
    borrowers: usize,
    /// Groups handed to the writer and not yet published (at most [`MAX_IN_FLIGHT`]).
    in_flight: usize,
    /// Number of the next group handed to the writer.
    next_ticket: u64,
    /// Groups published so far: the group numbered `published` publishes next.
    published: u64,
    /// Records of the last group handed to the writer.
    last_records: usize,
    /// While a leader lingers for its group to grow (see `lead`): the size it waits
    /// for; 0 otherwise.
    linger_target: usize,
    failed: Option<Cause>,
    closed: bool,
    /// The buffer of the last written group, kept for its capacity.
    spare: GroupBuf,
    stats: KernelStats,
}

/// The group-commit kernel around a [`GroupWriter`].
#[derive(Debug)]
pub(crate) struct GroupCommit<W> {
    // Lock order: `writer` is never locked while `state` is held (a leader drops
    // `state` before it locks `writer`), and whoever holds `writer` (a leader, `close`,
    // `with_writer`) does not wait for `state`'s conditions.
    state: Mutex<State>,
    /// Signalled when a group has been written or published, or the log fails: the open
    /// group's leader, `close` and `with_writer` wait here.
    written: Condvar,
    /// Signalled when a group publishes: leaders whose sync returned wait here for
    /// their turn.
    turn: Condvar,
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
                borrowers: 0,
                in_flight: 0,
                next_ticket: 0,
                published: 0,
                last_records: 0,
                linger_target: 0,
                failed: None,
                closed: false,
                spare: GroupBuf::default(),
                stats: KernelStats::default(),
            }),
            written: Condvar::new(),
            turn: Condvar::new(),
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
        if st.linger_target != 0 && st.open.slots.len() >= st.linger_target {
            st.linger_target = 0;
            self.written.notify_all();
        }
        let outcome = st.open_outcome.clone();
        let follower = if st.open_has_leader {
            let index = st.open_waiters.len();
            st.open_waiters.push(current());
            drop(st);
            outcome.wait();
            Some(index)
        } else {
            st.open_has_leader = true;
            self.lead(st);
            None
        };
        outcome.read(first, records.len(), out, follower)
    }

    /// Runs as the open group's leader: writes it after the previous group, syncs it,
    /// publishes the outcome in group order and wakes the followers.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        while (st.writing || st.borrowers > 0 || st.in_flight >= MAX_IN_FLIGHT)
            && st.failed.is_none()
        {
            st = self.written.wait(st);
        }
        if let Some(delay) = self.limits.delay.filter(|_| st.failed.is_none()) {
            drop(st);
            std::thread::sleep(delay);
            st = self.state.lock();
        } else {
            // With a group syncing ahead, a group taken at once would hold only the few
            // appenders that came during that group's write, and the next would wait for
            // both syncs: linger until this group is as large as the one ahead, or that
            // one is published (a bound of one sync), so the two in flight share the
            // appenders evenly.
            let target = st.last_records;
            while st.in_flight > 0 && st.open.slots.len() < target && st.failed.is_none() {
                st.linger_target = target;
                st = self.written.wait(st);
            }
            st.linger_target = 0;
        }
        let spare = mem::take(&mut st.spare);
        let mut group = mem::replace(&mut st.open, spare);
        let waiters = mem::take(&mut st.open_waiters);
        let outcome = mem::replace(&mut st.open_outcome, Arc::new(Outcome::new()));
        st.open_has_leader = false;
        st.stats.groups += 1;
        st.stats.records += group.slots.len() as u64;
        st.last_records = group.slots.len();

        let result = if let Some(cause) = st.failed.clone() {
            drop(st);
            Err(Failure::Poisoned(cause))
        } else {
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.in_flight += 1;
            st.writing = true;
            drop(st);
            self.room.notify_all();
            let lane = usize::try_from(ticket % MAX_IN_FLIGHT as u64).expect("below the bound");
            let mut lsns = Vec::with_capacity(group.slots.len());
            let written = self.writer.lock().write_group(&mut group, &mut lsns, lane);
            let mut st = self.state.lock();
            st.writing = false;
            if let Err(cause) = &written {
                st.failed.get_or_insert(cause.clone());
            }
            group.clear();
            st.spare = group;
            drop(st);
            // The next group's leader writes while this group syncs.
            self.written.notify_all();
            let synced = written.and_then(|pending| pending.sync().map(|()| pending));
            let mut st = self.state.lock();
            if let Err(cause) = &synced {
                st.failed.get_or_insert(cause.clone());
            }
            // Outcomes are published in group order: an fsync that returned early does
            // not make this group durable before every earlier group is.
            if st.published != ticket {
                st.stats.turn_waits += 1;
            }
            while st.published != ticket {
                st = self.turn.wait(st);
            }
            let result = match synced {
                Err(cause) => Err(Failure::Indeterminate(cause)),
                Ok(pending) => match &st.failed {
                    None => {
                        pending.publish();
                        Ok(lsns)
                    }
                    // Another group failed first: this one's records were handed to the
                    // writer, so their fate is unknown too.
                    Some(cause) => Err(Failure::Indeterminate(cause.clone())),
                },
            };
            st.published += 1;
            st.in_flight -= 1;
            drop(st);
            self.turn.notify_all();
            result
        };
        let failed = result.is_err();
        // Wake the next group's leader (or `close`) before our own followers: the disk
        // should not wait for our bookkeeping.
        self.written.notify_all();
        if failed {
            self.room.notify_all();
        }
        outcome.publish(result, waiters);
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
        while st.writing || st.in_flight > 0 || st.open_has_leader {
            st = self.written.wait(st);
        }
        if let Some(cause) = &st.failed {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        drop(st);
        Ok(last(&mut self.writer.lock()))
    }

    /// Runs `f` on the writer once every group in flight is published, unless the log
    /// failed or closed; no group is taken until `f` returns.
    pub fn with_writer<R>(&self, f: impl FnOnce(&mut W) -> R) -> Result<R, Error> {
        let mut st = self.state.lock();
        // The writer is locked only once nothing is in flight: a leader that took its
        // ticket locks the writer after dropping `state`, so holding the writer while
        // waiting for it would deadlock.
        st.borrowers += 1;
        while (st.writing || st.in_flight > 0) && st.failed.is_none() {
            st = self.written.wait(st);
        }
        let refused = if let Some(cause) = &st.failed {
            Some(Error::Poisoned { cause: cause.clone() })
        } else if st.closed {
            Some(Error::Closed)
        } else {
            None
        };
        drop(st);
        let result = match refused {
            Some(e) => Err(e),
            None => Ok(f(&mut self.writer.lock())),
        };
        self.state.lock().borrowers -= 1;
        self.written.notify_all();
        result
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
        syncs: Arc<Syncs>,
    }

    /// The syncs of a [`Recorder`]'s groups (numbered from 1): a test may hold one until
    /// it says, or make it fail; each returned and each published group is logged.
    #[derive(Default)]
    struct Syncs {
        state: std::sync::Mutex<SyncLog>,
        changed: std::sync::Condvar,
    }

    #[derive(Default)]
    struct SyncLog {
        held: BTreeSet<usize>,
        fail: BTreeSet<usize>,
        started: Vec<usize>,
        returned: Vec<usize>,
        published: Vec<usize>,
    }

    impl Syncs {
        fn log(&self) -> std::sync::MutexGuard<'_, SyncLog> {
            self.state.lock().unwrap()
        }

        fn release(&self, group: usize) {
            self.log().held.remove(&group);
            self.changed.notify_all();
        }
    }

    struct Pending {
        group: usize,
        syncs: Arc<Syncs>,
    }

    impl PendingSync for Pending {
        fn sync(&self) -> Result<(), Cause> {
            let mut log = self.syncs.log();
            log.started.push(self.group);
            self.syncs.changed.notify_all();
            while log.held.contains(&self.group) {
                log = self.syncs.changed.wait(log).unwrap();
            }
            log.returned.push(self.group);
            let failed = log.fail.contains(&self.group);
            drop(log);
            self.syncs.changed.notify_all();
            if failed { Err("injected sync failure".into()) } else { Ok(()) }
        }

        fn publish(self) {
            self.syncs.log().published.push(self.group);
        }
    }

    impl GroupWriter for Recorder {
        type Pending = Pending;

        fn write_group(
            &mut self,
            group: &mut GroupBuf,
            lsns: &mut Vec<Lsn>,
            _lane: usize,
        ) -> Result<Pending, Cause> {
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
            Ok(Pending { group: self.groups, syncs: self.syncs.clone() })
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

    /// Starts an append of `payload` on a new thread.
    fn append_on_thread(
        gc: &Arc<GroupCommit<Recorder>>,
        payload: &'static [u8],
    ) -> thread::JoinHandle<Result<Lsn, Error>> {
        let gc = gc.clone();
        thread::spawn(move || append(&gc, payload))
    }

    /// Waits until `done` holds of the sync log.
    fn wait_for(syncs: &Syncs, done: impl Fn(&SyncLog) -> bool) {
        let mut log = syncs.log();
        while !done(&log) {
            log = syncs.changed.wait(log).unwrap();
        }
    }

    /// Spins until `done` holds of the kernel's counters or of the sync log.
    fn spin_until(
        gc: &GroupCommit<Recorder>,
        syncs: &Syncs,
        done: impl Fn(&KernelStats, &SyncLog) -> bool,
    ) {
        while !done(&gc.stats(), &syncs.log()) {
            thread::yield_now();
        }
    }

    #[test]
    fn a_group_synced_before_an_earlier_one_is_published_after_it() {
        let syncs = Arc::new(Syncs::default());
        syncs.log().held.insert(1);
        let recorder = Recorder { syncs: syncs.clone(), ..Recorder::default() };
        let gc = Arc::new(GroupCommit::new(recorder, limits(1024)));
        // Group 1 is written; its sync is held.
        let first = append_on_thread(&gc, b"one");
        wait_for(&syncs, |log| log.started.contains(&1));
        // Group 2 is written while group 1 syncs, and its own sync returns at once.
        let second = append_on_thread(&gc, b"two");
        wait_for(&syncs, |log| log.returned.contains(&2));
        // It waits for its turn: nothing is published while group 1's sync is held.
        spin_until(&gc, &syncs, |stats, log| stats.turn_waits == 1 || !log.published.is_empty());
        assert_eq!(syncs.log().published, Vec::<usize>::new(), "group 2 published before group 1");
        assert!(!second.is_finished(), "group 2 acknowledged before group 1 was durable");
        syncs.release(1);
        let (one, two) = (first.join().unwrap().unwrap(), second.join().unwrap().unwrap());
        assert!(one < two);
        assert_eq!(syncs.log().published, vec![1, 2]);
        assert_eq!(syncs.log().returned, vec![2, 1]);
    }

    #[test]
    fn a_failed_sync_makes_every_unpublished_group_indeterminate() {
        let syncs = Arc::new(Syncs::default());
        syncs.log().held.insert(1);
        syncs.log().fail.insert(1);
        let recorder = Recorder { syncs: syncs.clone(), ..Recorder::default() };
        let gc = Arc::new(GroupCommit::new(recorder, limits(1024)));
        let first = append_on_thread(&gc, b"one");
        wait_for(&syncs, |log| log.started.contains(&1));
        let second = append_on_thread(&gc, b"two");
        spin_until(&gc, &syncs, |stats, _| stats.turn_waits == 1);
        syncs.release(1);
        // Group 2's own sync returned Ok, but group 1's failed first in group order.
        assert!(matches!(first.join().unwrap(), Err(Error::Indeterminate { .. })));
        assert!(matches!(second.join().unwrap(), Err(Error::Indeterminate { .. })));
        assert!(syncs.log().published.is_empty());
        assert!(matches!(append(&gc, b"three"), Err(Error::Poisoned { .. })));
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
        /// The end of the last group published, as the durable end would be.
        published: Arc<loom::sync::atomic::AtomicU64>,
    }

    impl Counter {
        fn new(fail: bool) -> Counter {
            Counter { next: 0, fail, published: Arc::new(loom::sync::atomic::AtomicU64::new(0)) }
        }
    }

    struct Synced {
        end: u64,
        published: Arc<loom::sync::atomic::AtomicU64>,
    }

    impl PendingSync for Synced {
        fn sync(&self) -> Result<(), Cause> {
            Ok(())
        }

        fn publish(self) {
            let before = self.published.swap(self.end, Ordering::SeqCst);
            assert!(before < self.end, "published out of group order: {before} then {}", self.end);
        }
    }

    impl GroupWriter for Counter {
        type Pending = Synced;

        fn write_group(
            &mut self,
            group: &mut GroupBuf,
            lsns: &mut Vec<Lsn>,
            _lane: usize,
        ) -> Result<Synced, Cause> {
            if self.fail {
                return Err("injected".into());
            }
            for _ in &group.slots {
                lsns.push(Lsn(self.next));
                self.next += 1;
            }
            Ok(Synced { end: self.next, published: self.published.clone() })
        }
    }

    /// Appends one record; an acknowledged one lies below the published end.
    fn append(gc: &GroupCommit<Counter>) -> Result<Lsn, Error> {
        let mut out = Vec::new();
        gc.commit(RecordKind::Data, &[(b"x", 0)], &mut out)?;
        let published = gc.writer.lock().published.load(Ordering::SeqCst);
        assert!(out[0].0 < published, "acknowledged before its group was published");
        Ok(out[0])
    }

    #[test]
    fn loom_three_appenders_all_acknowledged_once() {
        // With two groups in flight and the wake-up tree, the unbounded search of three
        // appenders runs for many minutes; four preemptions (13 s here) cover a group
        // that publishes while the next syncs and one that lingers.
        let mut model = loom::model::Builder::new();
        model.preemption_bound.get_or_insert(4);
        model.check(|| {
            let limits = Limits { max_group_bytes: 64, max_group_records: 2, delay: None };
            let gc = Arc::new(GroupCommit::new(Counter::new(false), limits));
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
            let gc = Arc::new(GroupCommit::new(Counter::new(true), limits));
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
    fn loom_with_writer_waits_for_the_group_in_flight() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound.get_or_insert(4);
        model.check(|| {
            let limits = Limits { max_group_bytes: 64, max_group_records: 8, delay: None };
            let gc = Arc::new(GroupCommit::new(Counter::new(false), limits));
            let appender = {
                let gc = gc.clone();
                loom::thread::spawn(move || append(&gc).unwrap())
            };
            // The writer is had between groups: nothing published is unwritten, and no
            // deadlock with a leader that took its group.
            let (written, published) =
                gc.with_writer(|w| (w.next, w.published.load(Ordering::SeqCst))).unwrap();
            assert_eq!(written, published, "with_writer ran while a group was in flight");
            assert_eq!(appender.join().unwrap(), Lsn(0));
        });
    }

    #[test]
    fn loom_close_waits_for_queued_groups() {
        loom::model(|| {
            let limits = Limits { max_group_bytes: 64, max_group_records: 8, delay: None };
            let gc = Arc::new(GroupCommit::new(Counter::new(false), limits));
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
