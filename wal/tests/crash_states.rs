//! Crash states (reliability layer L2): a workload on the simulated file system is cut
//! after every single I/O operation, each cut is materialized as lost, persisted, torn
//! (512-byte sectors) and bit-flipped unsynced data, and the log is recovered. The
//! workload appends as a store's writers do: concurrent appenders, one record each,
//! that group commit writes several to a group, made deterministic by holding the
//! writer at each write until the next group has queued. In every state:
//!
//! - P1: every acknowledged record is there, at the Lsn its append returned;
//! - P2: nothing else is there but records that were issued, whole;
//! - P3: the records form a gap-free run of what was issued, and damage at or below a
//!   durably referenced position is reported, never cut away.
//!
//! Replay one crash point: `CRASH_POINT=<op> cargo test --release --test crash_states`;
//! add `CRASH_TRACE=1` to print every I/O operation of the replay.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::Scope;
use std::time::{Duration, Instant};

use regionkv_wal::fs::{SimOp, SimOpKind};
use regionkv_wal::{CrashMode, Error, Lsn, RecoveryMode, SimFs, SparePreparation, Wal, WalOptions};

fn options() -> WalOptions {
    WalOptions::default()
        .segment_bytes(4096)
        .spare_segments(1)
        .spare_preparation(SparePreparation::OnDemand)
}

/// Payloads are unique: the index is in the first 4 bytes.
fn payload(index: u32) -> Vec<u8> {
    let len = 4 + (index as usize * 53) % 220;
    let mut p: Vec<u8> = (0..len).map(|j| (index as usize * 7 + j) as u8).collect();
    p[..4].copy_from_slice(&index.to_le_bytes());
    p
}

/// A tiny deterministic generator for group sizes.
fn group_sizes(seed: u64) -> impl Iterator<Item = usize> {
    let mut x = seed;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + (x % 7) as usize
    })
}

const RECORDS: u32 = 320;

/// How long any wait of the workload may take before the test calls it stuck.
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// What the workload did before the machine stopped.
#[derive(Debug, Default)]
struct History {
    /// Every payload handed to `append`, in the order the log took them.
    issued: Vec<Vec<u8>>,
    /// Acknowledged records: issue index -> Lsn.
    acked: HashMap<usize, Lsn>,
    /// The highest position a purge was asked to keep from.
    purged_below: Lsn,
}

/// Holds the log's writer at each write into a segment until the workload lets it
/// through, so that appenders queue up behind a group being written, in a known order:
/// group commit as concurrent writers drive it in production, made deterministic.
#[derive(Default)]
struct Turnstile {
    state: Mutex<TurnstileState>,
    changed: Condvar,
}

#[derive(Default)]
struct TurnstileState {
    /// Writes pass freely (while the log opens, and while the workload drains).
    open: bool,
    /// Writes that may pass while closed.
    permits: u64,
    /// A write waits at the turnstile.
    waiting: bool,
}

impl Turnstile {
    /// Called by the file system before a segment write.
    fn pass(&self) {
        let mut st = self.state.lock().unwrap();
        st.waiting = true;
        self.changed.notify_all();
        while !st.open && st.permits == 0 {
            st = self.changed.wait(st).unwrap();
        }
        if !st.open {
            st.permits -= 1;
        }
        st.waiting = false;
        self.changed.notify_all();
    }

    fn set_open(&self, open: bool) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).open = open;
        self.changed.notify_all();
    }

    fn let_one_through(&self) {
        self.state.lock().unwrap().permits += 1;
        self.changed.notify_all();
    }

    /// True if a write waits and no permit is pending for it.
    fn holds_a_write(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.waiting && st.permits == 0
    }
}

/// Opens a [`Turnstile`] when dropped.
struct OpenOnDrop<'t>(&'t Turnstile);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set_open(true);
    }
}

/// Waits, bounded, until `done` holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STUCK_AFTER;
    let mut spins = 0u32;
    while !done() {
        assert!(Instant::now() < deadline, "the workload is stuck waiting for {what}");
        spins += 1;
        if spins < 1000 { std::hint::spin_loop() } else { std::thread::yield_now() }
    }
}

/// True for a write of records into a segment: past the segment header (a spare being
/// made or installed is written from offset 0). A handle keeps the name it was opened
/// under, so an installed spare's writes still name the spare.
fn is_record_write(op: &SimOp) -> bool {
    op.kind == SimOpKind::Write && op.offset > 0 && op.path.extension() == Some("wal".as_ref())
}

/// Appends `RECORDS` records from concurrent appenders, in groups of 1..=7 that queue
/// up behind the group being written (one write and one fsync per group, as group
/// commit forms them for concurrent writers), purging now and then. The [`Turnstile`]
/// makes it deterministic: each appender joins the queue before the next one starts, so
/// issue order is Lsn order and every run does the same I/O. Stops at the first error,
/// as a store whose log failed would.
fn workload(fs: &SimFs) -> History {
    let mut h = History::default();
    let turnstile = Arc::new(Turnstile::default());
    turnstile.set_open(true);
    let trace = std::env::var_os("CRASH_TRACE").is_some();
    let gate = turnstile.clone();
    fs.set_fault_hook(Box::new(move |op| {
        if trace {
            eprintln!(
                "op {:>4} {:?} {} offset={} len={}",
                op.index,
                op.kind,
                op.path.display(),
                op.offset,
                op.len
            );
        }
        if is_record_write(op) {
            gate.pass();
        }
        None
    }));
    if let Ok(wal) = Wal::open(Arc::new(fs.clone()), "/wal", options()) {
        turnstile.set_open(false);
        std::thread::scope(|s| {
            // Opens the turnstile however this closure ends, so that the scope can join
            // every appender even after a failed check.
            let _open = OpenOnDrop(&turnstile);
            let mut appenders = Appenders::new(s, &wal);
            run_groups(&mut appenders, &wal, &turnstile, &mut h);
            turnstile.set_open(true);
            appenders.join_all();
        });
    }
    fs.clear_fault_hook();
    h
}

/// What an appender reports: the record's issue index and the outcome of its append.
type Appended = (usize, Result<Lsn, Error>);

/// Appender threads, started as needed and reused: each appends one record at a time.
struct Appenders<'s, 'e> {
    scope: &'s Scope<'s, 'e>,
    wal: &'s Wal,
    /// Threads waiting for a record.
    idle: Vec<Sender<(usize, Vec<u8>)>>,
    /// Threads appending, by the issue index of their record.
    busy: HashMap<usize, Sender<(usize, Vec<u8>)>>,
    done_tx: Sender<Appended>,
    done_rx: Receiver<Appended>,
    /// Appends finished and not yet taken.
    finished: Vec<Appended>,
}

impl<'s, 'e> Appenders<'s, 'e> {
    fn new(scope: &'s Scope<'s, 'e>, wal: &'s Wal) -> Self {
        let (done_tx, done_rx) = channel();
        Appenders {
            scope,
            wal,
            idle: Vec::new(),
            busy: HashMap::new(),
            done_tx,
            done_rx,
            finished: Vec::new(),
        }
    }

    /// Starts appending `payload`, the record issued as `index`.
    fn start(&mut self, index: usize, payload: Vec<u8>) {
        let worker = self.idle.pop().unwrap_or_else(|| {
            let (tx, rx) = channel::<(usize, Vec<u8>)>();
            let (wal, done) = (self.wal, self.done_tx.clone());
            self.scope.spawn(move || {
                for (index, payload) in rx {
                    let _ = done.send((index, wal.append(&payload)));
                }
            });
            tx
        });
        worker.send((index, payload)).expect("appender threads run until dropped");
        self.busy.insert(index, worker);
    }

    fn on_done(&mut self, (index, result): Appended) {
        if let Some(worker) = self.busy.remove(&index) {
            self.idle.push(worker);
        }
        self.finished.push((index, result));
    }

    fn poll(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.on_done(done);
        }
    }

    fn is_finished(&mut self, index: usize) -> bool {
        self.poll();
        !self.busy.contains_key(&index)
    }

    fn all_finished(&mut self) -> bool {
        self.poll();
        self.busy.is_empty()
    }

    /// Waits for every append under way.
    fn join_all(&mut self) {
        while !self.busy.is_empty() {
            let done = self.done_rx.recv_timeout(STUCK_AFTER).expect("appends finish");
            self.on_done(done);
        }
    }

    /// Records the finished appends in `h`; false if one failed.
    fn collect(&mut self, h: &mut History) -> bool {
        let mut ok = true;
        for (index, result) in self.finished.drain(..) {
            match result {
                Ok(lsn) => {
                    h.acked.insert(index, lsn);
                }
                Err(_) => ok = false,
            }
        }
        ok
    }
}

/// The groups of [`workload`]; returns at the end or at the first failed append.
fn run_groups(
    appenders: &mut Appenders<'_, '_>,
    wal: &Wal,
    turnstile: &Turnstile,
    h: &mut History,
) {
    // Lets every write through and waits for every append; false if one failed.
    let drain = |appenders: &mut Appenders<'_, '_>, h: &mut History| -> bool {
        turnstile.set_open(true);
        appenders.join_all();
        turnstile.set_open(false);
        appenders.collect(h)
    };
    // Some(n) while a write is held at the turnstile (a group is being written): new
    // appenders queue behind it, n of them so far.
    let mut queued: Option<usize> = None;
    let mut sizes = group_sizes(0x5eed);
    let mut next = 0u32;
    while next < RECORDS {
        let n = sizes.next().unwrap().min((RECORDS - next) as usize);
        for record in next..next + n as u32 {
            let index = h.issued.len();
            h.issued.push(payload(record));
            appenders.start(index, payload(record));
            if let Some(queued) = queued.as_mut() {
                // It joins the open group, behind the one being written.
                *queued += 1;
                let expect = *queued;
                wait_for("an appender to queue", || {
                    wal.queued_records() == expect || appenders.is_finished(index)
                });
            } else {
                // The writer is idle: it leads a group of its own, held at the turnstile.
                wait_for("a group to be written", || {
                    turnstile.holds_a_write() || appenders.is_finished(index)
                });
                queued = Some(0);
            }
            if appenders.is_finished(index) {
                // Only a failure ends an append that was held or queued.
                drain(appenders, h);
                return;
            }
        }
        next += n as u32;
        // Let the held write through; the queued appenders form the next group.
        turnstile.let_one_through();
        wait_for("the next write or the last ack", || {
            turnstile.holds_a_write() || appenders.all_finished()
        });
        queued = turnstile.holds_a_write().then(|| wal.queued_records());
        if !appenders.collect(h) {
            drain(appenders, h);
            return;
        }
        if next % 60 < n as u32 {
            // A purge touches the file system, which a held write blocks: drain first.
            if !drain(appenders, h) {
                return;
            }
            queued = None;
            // Keep the last ~40 records; everything older may go.
            let keep = h.acked[&(h.issued.len().saturating_sub(40))];
            // Once a purge is asked for, records below its point may go, even if the
            // call does not return.
            h.purged_below = keep;
            if wal.purge_below(keep).is_err() {
                return;
            }
        }
    }
    drain(appenders, h);
}

/// Checks P1–P3 on a recovered log.
fn check(wal: &Wal, h: &History, context: &str) {
    let records: Vec<(Lsn, Vec<u8>)> = wal
        .iter_from(wal.first_lsn())
        .unwrap_or_else(|e| panic!("{context}: iterate: {e}"))
        .map(|r| r.map(|r| (r.lsn, r.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{context}: read: {e}"));
    if records.is_empty() {
        assert!(
            h.acked.is_empty() || h.acked.values().all(|&l| l < h.purged_below),
            "{context}: P1: log empty but records were acknowledged"
        );
        return;
    }
    // P2 + P3: the recovered records are issued[start..start + len], in order.
    let first_index = u32::from_le_bytes(records[0].1[..4].try_into().unwrap()) as usize;
    for (i, (lsn, data)) in records.iter().enumerate() {
        let index = first_index + i;
        assert!(index < h.issued.len(), "{context}: P2: record {index} was never issued");
        assert_eq!(
            data, &h.issued[index],
            "{context}: P2/P3: record at {lsn:?} is not issue #{index} (a gap, a phantom, or damage)"
        );
        if let Some(&acked_lsn) = h.acked.get(&index) {
            assert_eq!(*lsn, acked_lsn, "{context}: P1: issue #{index} moved");
        }
    }
    // P1: every acknowledged record at or above the purge point is there.
    let end_index = first_index + records.len();
    for (&index, &lsn) in &h.acked {
        if lsn >= h.purged_below {
            assert!(
                index >= first_index && index < end_index,
                "{context}: P1: acknowledged issue #{index} at {lsn:?} lost"
            );
        }
    }
}

fn modes(seed: u64) -> [CrashMode; 4] {
    [CrashMode::Lost, CrashMode::Persisted, CrashMode::Torn { seed }, CrashMode::BitFlip { seed }]
}

/// How a crash state recovered.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `TolerateTornTail` found nothing to cut.
    Intact,
    /// `TolerateTornTail` cut a torn tail.
    CutTornTail,
    /// `TolerateTornTail` refused (damage followed by valid records); `PointInTime` cut.
    NeededPointInTime,
}

/// Recovers a crash image and checks it.
fn recover_and_check(disk: &SimFs, h: &History, mode: CrashMode, context: &str) -> Outcome {
    let open = |recovery| Wal::open(Arc::new(disk.clone()), "/wal", options().recovery(recovery));
    match open(RecoveryMode::TolerateTornTail) {
        Ok(wal) => {
            check(&wal, h, context);
            let outcome = if wal.recovery_report().truncation.is_some() {
                Outcome::CutTornTail
            } else {
                Outcome::Intact
            };
            // The recovered log takes new appends and survives another crash.
            let lsn = wal
                .append(b"after recovery")
                .unwrap_or_else(|e| panic!("{context}: append after recovery: {e}"));
            drop(wal);
            let again =
                Wal::open(Arc::new(disk.image_after_crash(CrashMode::Lost)), "/wal", options())
                    .unwrap_or_else(|e| panic!("{context}: second recovery: {e}"));
            assert_eq!(&again.read(lsn).unwrap().payload[..], b"after recovery", "{context}");
            outcome
        }
        Err(Error::Corruption { segment, offset, reason }) => {
            // Only a flipped bit in unsynced data may stop a torn-tail recovery, and only
            // where damage is followed by (unacknowledged) valid records.
            assert!(
                matches!(mode, CrashMode::BitFlip { .. }),
                "{context}: unexpected corruption at {segment}+{offset}: {reason}"
            );
            assert!(reason.contains("followed by valid records"), "{context}: {reason}");
            let wal = open(RecoveryMode::PointInTime).unwrap_or_else(|e| {
                panic!("{context}: PointInTime must cut beyond acknowledged data: {e}")
            });
            check(&wal, h, context);
            assert!(wal.recovery_report().truncation.is_some());
            Outcome::NeededPointInTime
        }
        Err(e) => panic!("{context}: recovery failed: {e}"),
    }
}

#[test]
fn every_crash_point_in_every_crash_mode_recovers_the_acknowledged_prefix() {
    let total_ops = {
        let fs = SimFs::new();
        let h = workload(&fs);
        assert_eq!(h.acked.len(), RECORDS as usize, "the workload completes without faults");
        fs.op_count()
    };
    assert!(total_ops > 200, "the workload exercises many I/O operations: {total_ops}");
    let points: Vec<u64> = match std::env::var("CRASH_POINT") {
        Ok(p) => vec![p.parse().expect("CRASH_POINT is an op number")],
        Err(_) => (0..=total_ops).collect(),
    };
    let mut outcomes: HashMap<(String, &str), usize> = HashMap::new();
    for &point in &points {
        let fs = SimFs::new();
        fs.halt_after(point);
        let h = workload(&fs);
        for mode in modes(point) {
            let context = format!(
                "crash after op {point}/{total_ops}, {mode:?} (replay: CRASH_POINT={point})"
            );
            let outcome = recover_and_check(&fs.image_after_crash(mode), &h, mode, &context);
            let mode_name =
                format!("{mode:?}").split_whitespace().next().unwrap_or_default().to_owned();
            *outcomes.entry((mode_name, outcome_name(&outcome))).or_default() += 1;
        }
    }
    eprintln!("crash states by (mode, outcome): {outcomes:?}");
    if points.len() > 1 {
        // The enumeration must reach the interesting states, or it proves little.
        let count = |mode: &str, outcome: &'static str| {
            outcomes.get(&(mode.to_owned(), outcome)).copied().unwrap_or(0)
        };
        assert!(count("Torn", "cut") > 0, "some torn writes are cut");
        assert!(
            count("BitFlip", "cut") + count("BitFlip", "point-in-time") > 0,
            "some flips are found"
        );
        // One flipped bit leaves one run of valid records after it, all stamped below
        // it (the flip is in unsynced data): an unacknowledged tail, cut without
        // PointInTime (recovery.rs, rule 2).
        assert!(count("BitFlip", "cut") > 0, "some flips are cut as torn tails");
        assert_eq!(count("BitFlip", "point-in-time"), 0, "one flip never needs PointInTime");
        assert_eq!(
            count("Persisted", "cut") + count("Lost", "cut"),
            0,
            "clean cuts are never torn"
        );
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Intact => "intact",
        Outcome::CutTornTail => "cut",
        Outcome::NeededPointInTime => "point-in-time",
    }
}

#[test]
fn damage_below_a_durable_reference_is_reported_not_cut() {
    let fs = SimFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let lsns: Vec<Lsn> = (0..5).map(|i| wal.append(&payload(i)).unwrap()).collect();
    drop(wal);
    let segment = std::path::Path::new("/wal/0000000000000001.wal");
    // Bit rot in the payload of the second record: later records' durable stamps
    // prove it was acknowledged.
    fs.corrupt(segment, 64 + (lsns[1].0 - lsns[0].0) + 30, 0x10).unwrap();
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::PointInTime] {
        let err = Wal::open(Arc::new(fs.clone()), "/wal", options().recovery(mode)).unwrap_err();
        assert!(
            matches!(&err, Error::Corruption { offset, reason, .. } if *offset == 64 + (lsns[1].0 - lsns[0].0) && reason.contains("durably referenced")),
            "{mode:?}: {err}"
        );
    }

    // Damage to the very last record is proven durable only by the caller's floor.
    let fs = SimFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    let mut last = Lsn::ZERO;
    for i in 0..3 {
        last = wal.append(&payload(i)).unwrap();
    }
    drop(wal);
    fs.corrupt(segment, 64 + last.0 + 30, 0x01).unwrap();
    let cut =
        Wal::open(Arc::new(fs.image_after_crash(CrashMode::Persisted)), "/wal", options()).unwrap();
    assert!(cut.recovery_report().truncation.is_some(), "without a reference it is a torn tail");
    let floor = last.advance(1);
    let err = Wal::open(Arc::new(fs), "/wal", options().durable_floor(floor)).unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let fs = SimFs::new();
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
    for i in 0..100 {
        wal.append(&payload(i)).unwrap();
    }
    assert!(wal.stats().segment_rolls >= 3);
    drop(wal);
    regionkv_wal::fs::FileSystem::remove_file(
        &fs,
        std::path::Path::new("/wal/0000000000000002.wal"),
    )
    .unwrap();
    let err = Wal::open(Arc::new(fs), "/wal", options()).unwrap_err();
    assert!(matches!(err, Error::Corruption { reason, .. } if reason.contains("missing")));
}

/// The same check with concurrent appenders, so that crashes land inside real group
/// commits (groups formed by timing, not by the test). The op sequence differs run to
/// run, so each halt point is a different interleaving; the properties hold for all.
#[test]
fn crashes_during_concurrent_group_commit_keep_every_acknowledged_record() {
    const THREADS: u32 = 4;
    const PER_THREAD: u32 = 80;
    for point in (5..400).step_by(7) {
        let fs = SimFs::new();
        let wal = Wal::open(Arc::new(fs.clone()), "/wal", options()).unwrap();
        fs.halt_after(point);
        let acked: Vec<(Lsn, Vec<u8>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let wal = &wal;
                    s.spawn(move || {
                        let mut acked = Vec::new();
                        for i in 0..PER_THREAD {
                            let p = payload(t * 1000 + i);
                            match wal.append(&p) {
                                Ok(lsn) => acked.push((lsn, p)),
                                Err(_) => break,
                            }
                        }
                        acked
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        drop(wal);
        for mode in modes(point) {
            let context = format!("concurrent, halt after {point} ops, {mode:?}");
            let disk = fs.image_after_crash(mode);
            let open = |r| Wal::open(Arc::new(disk.clone()), "/wal", options().recovery(r));
            let wal = match open(RecoveryMode::TolerateTornTail) {
                Ok(wal) => wal,
                Err(Error::Corruption { .. }) if matches!(mode, CrashMode::BitFlip { .. }) => {
                    open(RecoveryMode::PointInTime).unwrap_or_else(|e| panic!("{context}: {e}"))
                }
                Err(e) => panic!("{context}: {e}"),
            };
            let recovered: HashMap<Lsn, Vec<u8>> = wal
                .iter_from(wal.first_lsn())
                .unwrap()
                .map(|r| r.map(|r| (r.lsn, r.payload.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
            for (lsn, p) in &acked {
                assert_eq!(
                    recovered.get(lsn),
                    Some(p),
                    "{context}: P1: acknowledged record at {lsn:?} lost"
                );
            }
            for p in recovered.values() {
                let id = u32::from_le_bytes(p[..4].try_into().unwrap());
                assert_eq!(
                    p,
                    &payload(id),
                    "{context}: P2: a recovered record was never issued whole"
                );
                assert!(id % 1000 < PER_THREAD && id / 1000 < THREADS, "{context}: P2: phantom");
            }
        }
    }
}
