//! The two-phase coordinator of `Db::write` stopped between its steps by test seams
//! (`Db::with_txn_seams`), on an in-process `Cluster` of three stores split at "m":
//!
//! - a commit applied whose answer (and the status check's after it) is lost ends in
//!   `Error::Indeterminate`, and `Db::txn_outcome` then says `Committed`, the batch
//!   visible whole;
//! - a commit request lost ends in `Indeterminate` too: `txn_outcome` says `Pending`,
//!   and `Aborted` once another client met a lock past its TTL, nothing visible;
//! - a coordinator held between its primary's prewrite and its commit for several
//!   TTLs heartbeats its record: another client meeting its (expired) lock does not
//!   abort it, and the batch commits when the coordinator goes on.
//!
//! These were covered at the protocol level in the simulator only; here they run
//! through `Db`.

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use regionkv::{Cluster, Db, Error, TxnOutcome, TxnSeams, WriteBatch};

/// Three stores, user regions split at "m", running at most `version`: at 3 the
/// coordinator's two-phase path has its own commit round, which the commit seams
/// stop (at 4 a cross-region write is async-committed once its prewrites applied,
/// see `tests/async_commit.rs`).
fn cluster(dir: &std::path::Path, version: u32) -> Cluster {
    let builder = Cluster::builder().dir(dir).stores(3);
    let builder = (1..=3).fold(builder, |b, id| b.cluster_version_max(id, version));
    let cluster = builder.build().unwrap();
    cluster.split_keys(&["m"]).unwrap();
    cluster
}

fn get(db: &Db, key: &str) -> Option<String> {
    db.get(key).unwrap().map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// "apple" (the primary, left of "m") and "zucchini" (right of it).
fn batch(tag: &str) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.put("apple", format!("a-{tag}")).put("zucchini", format!("z-{tag}"));
    batch
}

#[test]
fn an_applied_commit_whose_answers_are_lost_is_indeterminate_then_committed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3);
    let seams = TxnSeams { lose_commit_answers: true, ..TxnSeams::default() };
    let coordinator = cluster.db().with_txn_seams(seams);
    let Err(Error::Indeterminate { txn_id, primary_key }) = coordinator.write(batch("1")) else {
        panic!("a commit without an answer must be indeterminate")
    };
    assert_eq!(primary_key.as_ref(), b"apple", "the smallest key");
    let db = cluster.db();
    assert_eq!(db.txn_outcome(txn_id, &primary_key).unwrap(), TxnOutcome::Committed);
    // Whole: the secondary's lock (never resolved by the coordinator) is resolved by
    // the reader through the record.
    assert_eq!(get(&db, "zucchini").as_deref(), Some("z-1"));
    assert_eq!(get(&db, "apple").as_deref(), Some("a-1"));
    cluster.shutdown().unwrap();
}

#[test]
fn a_lost_commit_is_indeterminate_then_pending_then_aborted_by_a_reader_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 3);
    let db = cluster.db();
    db.write(batch("old")).unwrap();
    let seams = TxnSeams { drop_commit: true, ..TxnSeams::default() };
    let coordinator = cluster.db().with_txn_ttl(Duration::from_secs(1)).with_txn_seams(seams);
    let Err(Error::Indeterminate { txn_id, primary_key }) = coordinator.write(batch("new")) else {
        panic!("a commit never sent must be indeterminate")
    };
    let outcome = db.txn_outcome(txn_id, &primary_key).unwrap();
    // Pending until someone decides it (within its TTL, nobody does).
    assert_eq!(outcome, TxnOutcome::Pending);
    // A reader that waits for locks meets the secondary's lock, waits out its TTL and
    // aborts it through the record: the old value, nothing of the batch.
    let db = db.with_lock_wait(regionkv::LockWait::Wait(Duration::from_secs(60)));
    assert_eq!(get(&db, "zucchini").as_deref(), Some("z-old"));
    assert_eq!(db.txn_outcome(txn_id, &primary_key).unwrap(), TxnOutcome::Aborted);
    assert_eq!(get(&db, "apple").as_deref(), Some("a-old"));
    cluster.shutdown().unwrap();
}

#[test]
fn a_coordinator_held_past_the_ttl_heartbeats_and_another_client_does_not_abort_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), 4);
    // Long enough that a heartbeat every half TTL is never late on a loaded machine.
    let ttl = Duration::from_millis(1500);
    let (held_tx, held_rx) = mpsc::channel::<u64>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, release_rx) = (Mutex::new(held_tx), Mutex::new(release_rx));
    let seams = TxnSeams {
        hold_secondary_prewrite: Some(Box::new(move |txn_id| {
            held_tx.lock().unwrap().send(txn_id).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        })),
        ..TxnSeams::default()
    };
    let coordinator = cluster.db().with_txn_ttl(ttl).with_txn_seams(seams);
    let writer = std::thread::spawn(move || coordinator.write(batch("held")));
    let txn_id = held_rx.recv().unwrap();
    // Past two TTLs: the primary's lock expires by its own TTL; its record does not,
    // heartbeated by the coordinator every half TTL.
    std::thread::sleep(ttl * 2 + Duration::from_millis(300));
    let other = cluster.db().with_deadline(ttl * 2);
    let read = other.get("apple");
    assert!(
        matches!(&read, Err(Error::Conflict { txn_id: t, .. }) if *t == txn_id),
        "the other client must wait for the live holder, not abort it: {read:?}"
    );
    assert_eq!(other.txn_outcome(txn_id, "apple").unwrap(), TxnOutcome::Pending);
    release_tx.send(()).unwrap();
    writer.join().unwrap().unwrap();
    let db = cluster.db();
    // Async commit answered once every prewrite applied; the record's decision follows
    // in the background: wait for it (it must be the commit, never an abort).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let outcome = db.txn_outcome(txn_id, "apple").unwrap();
        if outcome != TxnOutcome::Pending || std::time::Instant::now() > deadline {
            break outcome;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(outcome, TxnOutcome::Committed);
    assert_eq!(get(&db, "apple").as_deref(), Some("a-held"));
    assert_eq!(get(&db, "zucchini").as_deref(), Some("z-held"));
    cluster.shutdown().unwrap();
}
