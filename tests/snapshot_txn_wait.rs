//! Lock waits of snapshot-isolated transactions (`Db::transaction`) on an in-process
//! `Cluster` of three stores: a live lock of another transaction, held by a
//! coordinator driven by hand between its prewrite and its commit.
//!
//! Bug fixed here: a transaction's commit that met a live lock answered
//! `Error::Conflict` at once whatever the `Db`'s `LockWait`, so a client that asked to
//! wait (`LockWait::Wait`) lost to any transaction in flight. Now the commit waits per
//! the `LockWait` (resolving through the holder's record meanwhile), like a level-1
//! write. Reads likewise: a read that met a live lock waited for the holder until the
//! deadline whatever the `LockWait`; now it waits per the `LockWait` too (`NoWait`:
//! `Conflict` at once; `Wait(t)`: up to `t`), snapshot and level-1 reads alike, and
//! reads what the holder committed below its start when it waited long enough.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use regionkv::layers::raft::txn::mvcc;
use regionkv::{Cluster, Db, Error, LockWait, Op, RecordInit, TxnCmd, TxnReply, TxnState};

/// An id no allocation reaches in these tests (the floor stays below it).
const HOLDER: u64 = 1 << 40;

/// Three stores; the keyspace split at the lock key of user key "m".
fn cluster(dir: &std::path::Path) -> Cluster {
    let cluster = Cluster::builder().dir(dir).stores(3).build().unwrap();
    cluster.split_keys(&[mvcc::lock_key(b"m")]).unwrap();
    cluster
}

fn text(v: Option<Bytes>) -> Option<String> {
    v.map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// Prewrites `user = value` for transaction `HOLDER` started at `start_ts`, its only
/// key (so its primary): a live lock, with its record, for a minute.
fn hold(db: &Db, user: &str, value: &str, start_ts: u64) {
    let key = mvcc::lock_key(user.as_bytes());
    let cmd = TxnCmd::Prewrite {
        min_commit: None,
        txn_id: HOLDER,
        primary_key: key.clone(),
        ops: vec![Op::Put { key: key.clone(), value: Bytes::copy_from_slice(value.as_bytes()) }],
        ttl_ms: 60_000,
        record: Some(RecordInit { participants: vec![key], coordinator: None, staging: false }),
        start_ts: Some(start_ts),
        session: None,
    };
    assert_eq!(db.txn_call(cmd).unwrap(), TxnReply::Done);
}

/// Commits the held transaction at `commit_ts` (its one lock applies with the record).
fn commit_held(db: &Db, user: &str, commit_ts: u64) {
    let cmd = TxnCmd::Commit {
        txn_id: HOLDER,
        primary_key: mvcc::lock_key(user.as_bytes()),
        commit_ts: Some(commit_ts),
    };
    assert_eq!(
        db.txn_call(cmd).unwrap(),
        TxnReply::Status(TxnState::Committed { commit_ts: Some(commit_ts) })
    );
}

/// Drops the held transaction's lock (what its coordinator does when it gives up).
fn drop_held(db: &Db, user: &str) {
    let keys = vec![mvcc::lock_key(user.as_bytes())];
    let cmd = TxnCmd::Resolve { txn_id: HOLDER, keys, commit: false, commit_ts: None };
    assert_eq!(db.txn_call(cmd).unwrap(), TxnReply::Done);
}

#[test]
fn a_commit_waits_for_a_live_lock_per_the_lock_wait_and_goes_through_once_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let start = db.timestamp().unwrap();
    hold(&db, "k", "held", start);

    // No wait (the default): a conflict at once, nothing written.
    let mut t = db.transaction().unwrap();
    t.put("k", "no-wait");
    t.put("z", "no-wait"); // the other region
    let lost = t.commit();
    assert!(matches!(&lost, Err(Error::Conflict { key, .. }) if key.as_ref() == b"k"), "{lost:?}");
    // A short wait for a holder that never finishes: a conflict too.
    let waiting = db.clone().with_lock_wait(LockWait::Wait(Duration::from_millis(200)));
    let mut t = waiting.transaction().unwrap();
    t.put("k", "short");
    let lost = t.commit();
    assert!(matches!(&lost, Err(Error::Conflict { key, .. }) if key.as_ref() == b"k"), "{lost:?}");

    // A long wait: the commit is still waiting when the holder gives up, then wins.
    let patient = db.clone().with_lock_wait(LockWait::Wait(Duration::from_secs(60)));
    let mut t = patient.transaction().unwrap();
    t.put("k", "patient");
    t.put("z", "patient");
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(t.commit()).unwrap());
    // Before the fix the commit answered `Conflict` here already.
    match rx.recv_timeout(Duration::from_secs(2)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        answered => panic!("the commit did not wait for the live lock: {answered:?}"),
    }
    drop_held(&db, "k");
    rx.recv().unwrap().unwrap();
    waiter.join().unwrap();
    let now = db.transaction().unwrap();
    assert_eq!(text(now.get("k").unwrap()).as_deref(), Some("patient"));
    assert_eq!(text(now.get("z").unwrap()).as_deref(), Some("patient"));
    cluster.shutdown().unwrap();
}

#[test]
fn a_reader_waits_for_a_held_lock_and_reads_what_the_holder_committed_below_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut t = db.transaction().unwrap();
    t.put("k", "old");
    t.commit().unwrap();
    // The holder prewrote and took its commit timestamp, then a reader started: the
    // holder's commit lands below the reader's start, so the reader must wait for it.
    let start = db.timestamp().unwrap();
    hold(&db, "k", "new", start);
    let commit_ts = db.timestamp().unwrap();
    // A reader that does not wait, or waits a little: a conflict while the holder
    // still holds (before the fix both waited for it until their deadline).
    for wait in [LockWait::NoWait, LockWait::Wait(Duration::from_millis(200))] {
        let reader = db.clone().with_deadline(Duration::from_secs(120)).with_lock_wait(wait);
        let t = reader.transaction().unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || tx.send(t.get("k").map(text)).unwrap());
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Err(Error::Conflict { .. })) => {}
            answered => panic!("{wait:?}: a read over a held lock answered {answered:?}"),
        }
        waiter.join().unwrap();
    }
    let db = db.with_lock_wait(LockWait::Wait(Duration::from_secs(60)));
    let reader = db.transaction().unwrap();
    assert!(reader.start_ts() > commit_ts);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = reader.get("k").map(text);
        let scanned = reader.scan(.., 10).map(|rows| rows.len());
        tx.send((r, scanned)).unwrap();
    });
    match rx.recv_timeout(Duration::from_millis(300)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        answered => panic!("the reader did not wait for the held lock: {answered:?}"),
    }
    commit_held(&db, "k", commit_ts);
    let (read, scanned) = rx.recv().unwrap();
    assert_eq!(read.unwrap().as_deref(), Some("new"));
    assert_eq!(scanned.unwrap(), 1);
    waiter.join().unwrap();

    // A holder that never finishes: the reader gives up at its deadline with a
    // conflict (retryable), and reads nothing uncommitted.
    let start = db.timestamp().unwrap();
    let mut later = db.transaction().unwrap();
    later.put("j", "x");
    later.commit().unwrap();
    let short = db.clone().with_deadline(Duration::from_millis(500));
    let key = mvcc::lock_key(b"j");
    let cmd = TxnCmd::Prewrite {
        min_commit: None,
        txn_id: HOLDER + 1,
        primary_key: key.clone(),
        ops: vec![Op::Delete { key: key.clone() }],
        ttl_ms: 60_000,
        record: Some(RecordInit { participants: vec![key], coordinator: None, staging: false }),
        start_ts: Some(start),
        session: None,
    };
    // Refused: "j" has a version committed after `start`; a fresh start locks it.
    assert!(db.txn_call(cmd.clone()).is_err());
    let TxnCmd::Prewrite { txn_id, primary_key, ops, ttl_ms, record, .. } = cmd else {
        unreachable!()
    };
    let fresh = db.timestamp().unwrap();
    let cmd = TxnCmd::Prewrite {
        min_commit: None,
        txn_id,
        primary_key,
        ops,
        ttl_ms,
        record,
        start_ts: Some(fresh),
        session: None,
    };
    assert_eq!(db.txn_call(cmd).unwrap(), TxnReply::Done);
    let reader = short.transaction().unwrap();
    let got = reader.get("j");
    assert!(matches!(&got, Err(Error::Conflict { .. })), "{got:?}");
    assert!(got.unwrap_err().is_retryable());
    cluster.shutdown().unwrap();
}
