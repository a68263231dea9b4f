//! Transactions through `Db` on an in-process `Cluster` of three stores and several
//! regions (ARCHITECTURE.md, "Transactions"): a batch that spans regions is written
//! whole; a live lock fails it with `Conflict` and nothing is written; readers never
//! see part of a batch while writers move money between regions; a coordinator that
//! stops after its prewrites leaves locks that a reader resolves after their TTL (as
//! aborted, or as committed when the commit was applied); `txn_outcome` reads the
//! record; a cluster below version 3 refuses a batch that spans regions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use regionkv::layers::raft::txn::plan::TxnPlan;
use regionkv::{
    Cluster, Db, Error, LockWait, Op, TxnCmd, TxnOutcome, TxnReply, TxnState, WriteBatch,
};

/// Three stores, user regions split at `m` and `t`.
fn cluster(dir: &std::path::Path) -> Cluster {
    let cluster = Cluster::builder().dir(dir).stores(3).build().unwrap();
    cluster.split_keys(&["m", "t"]).unwrap();
    cluster
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn get(db: &Db, key: &str) -> Option<String> {
    db.get(key).unwrap().map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// Prewrites `plan` region by region as a coordinator would, by hand: `parts` are the
/// plan's keys grouped by region.
fn prewrite(db: &Db, plan: &TxnPlan, parts: &[&[&str]]) {
    for part in parts {
        let ops: Vec<Op> = plan
            .ops
            .iter()
            .filter(|op| part.iter().any(|k| op.key() == k.as_bytes()))
            .cloned()
            .collect();
        assert_eq!(db.txn_call(plan.prewrite(ops)).unwrap(), TxnReply::Done);
    }
}

#[test]
fn a_batch_across_regions_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut batch = WriteBatch::new();
    batch.put("apple", "1").put("melon", "2").put("tomato", "3").put("zucchini", "4");
    db.write(batch).unwrap();
    for (k, v) in [("apple", "1"), ("melon", "2"), ("tomato", "3"), ("zucchini", "4")] {
        assert_eq!(get(&db, k).as_deref(), Some(v), "{k}");
    }
    // A second batch over the same keys, with a delete: all of it again.
    let mut batch = WriteBatch::new();
    batch.put("apple", "10").delete("melon").put("zucchini", "40");
    db.write(batch).unwrap();
    let rows = db.scan(.., 100).unwrap();
    let rows: Vec<(&[u8], &[u8])> = rows.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    assert_eq!(
        rows,
        vec![(&b"apple"[..], &b"10"[..]), (b"tomato", b"3"), (b"zucchini", b"40")],
        "the scan sees every key of both batches"
    );
    cluster.shutdown().unwrap();
}

#[test]
fn a_committed_transaction_s_outcome_is_read_from_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let plan = TxnPlan::new(1 << 40, vec![put("a1", "x"), put("z1", "y")], 60_000, None);
    assert_eq!(db.txn_outcome(plan.txn_id, "a1").unwrap(), TxnOutcome::Unknown);
    prewrite(&db, &plan, &[&["a1"], &["z1"]]);
    assert_eq!(db.txn_outcome(plan.txn_id, "a1").unwrap(), TxnOutcome::Pending);
    assert_eq!(
        db.txn_call(plan.commit()).unwrap(),
        TxnReply::Status(TxnState::Committed { commit_ts: None })
    );
    assert_eq!(db.txn_outcome(plan.txn_id, "a1").unwrap(), TxnOutcome::Committed);
    // The secondary was never resolved by the coordinator: a reader does it.
    assert_eq!(get(&db, "z1").as_deref(), Some("y"));
    assert_eq!(get(&db, "a1").as_deref(), Some("x"));
    // A command whose keys span regions is refused whole.
    let spanning = TxnCmd::Resolve {
        txn_id: plan.txn_id,
        keys: vec![Bytes::from_static(b"a1"), Bytes::from_static(b"z1")],
        commit: true,
        commit_ts: None,
    };
    assert!(matches!(db.txn_call(spanning), Err(Error::CrossRegionBatch { .. })));
    cluster.shutdown().unwrap();
}

#[test]
fn a_live_lock_fails_the_batch_with_conflict_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    db.put("zebra", "old").unwrap();
    // Another coordinator holds "zebra" (alive for a minute).
    let holder = TxnPlan::new(1 << 41, vec![put("zebra", "theirs")], 60_000, None);
    prewrite(&db, &holder, &[&["zebra"]]);

    let mut batch = WriteBatch::new();
    batch.put("ant", "mine").put("zebra", "mine");
    match db.write(batch.clone()) {
        Err(e @ Error::Conflict { .. }) => {
            assert!(e.is_retryable());
            assert!(
                matches!(e, Error::Conflict { ref key, txn_id } if key == "zebra" && txn_id == holder.txn_id)
            );
        }
        other => panic!("a batch over a live lock: {other:?}"),
    }
    // A one-region write over it conflicts too; waiting a while does not help.
    assert!(matches!(db.put("zebra", "raw"), Err(Error::Conflict { .. })));
    let waiting = db.clone().with_lock_wait(LockWait::Wait(Duration::from_millis(200)));
    assert!(matches!(waiting.write(batch.clone()), Err(Error::Conflict { .. })));
    // A read over it answers per the lock wait too: `NoWait`, a conflict at once
    // (before the fix it waited for the holder until its deadline).
    let reader = db.clone().with_deadline(Duration::from_secs(120));
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(reader.get("zebra")).unwrap());
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Err(Error::Conflict { key, .. })) => assert_eq!(key, "zebra"),
        answered => panic!("a read over a live lock answered {answered:?}"),
    }
    waiter.join().unwrap();
    // Nothing of ours was written, and our own locks are gone: "ant" is free.
    assert_eq!(get(&db, "ant"), None);
    db.put("ant", "free").unwrap();
    // The holder commits: its value, and the batch goes through now.
    db.txn_call(holder.commit()).unwrap();
    assert_eq!(get(&db, "zebra").as_deref(), Some("theirs"));
    db.write(batch).unwrap();
    assert_eq!(
        (get(&db, "ant").as_deref(), get(&db, "zebra").as_deref()),
        (Some("mine"), Some("mine"))
    );
    cluster.shutdown().unwrap();
}

#[test]
fn locks_of_a_stopped_coordinator_are_resolved_by_a_reader_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    db.put("b2", "old").unwrap();
    db.put("y2", "old").unwrap();
    // Prewritten everywhere, never committed; a short TTL.
    let stopped = TxnPlan::new(1 << 42, vec![put("b2", "new"), put("y2", "new")], 200, None);
    prewrite(&db, &stopped, &[&["b2"], &["y2"]]);
    // Readers that wait for a live lock (longer than the TTL).
    let db = db.with_lock_wait(LockWait::Wait(Duration::from_secs(60)));
    // A scan meets a lock, waits out the TTL, aborts the record and drops the lock;
    // then the next; the gets find none left.
    let rows: Vec<(Bytes, Bytes)> = db.scan(.., 10).unwrap();
    let old = Bytes::from_static(b"old");
    assert_eq!(
        rows,
        vec![(Bytes::from_static(b"b2"), old.clone()), (Bytes::from_static(b"y2"), old)]
    );
    assert_eq!(get(&db, "y2").as_deref(), Some("old"));
    assert_eq!(get(&db, "b2").as_deref(), Some("old"));
    assert_eq!(db.txn_outcome(stopped.txn_id, "b2").unwrap(), TxnOutcome::Aborted);
    // A late commit of it is refused: aborted is definite.
    assert!(matches!(db.txn_call(stopped.commit()), Err(Error::TxnAborted { .. })));
    assert_eq!(db.scan(.., 10).unwrap().len(), 2);
    cluster.shutdown().unwrap();
}

/// One writer's pair of accounts in different regions: "a/{w}" and "z/{w}", each
/// "balance:seq", where seq counts the writer's transfers.
fn parse(v: Option<Bytes>) -> (i64, u64) {
    let v = String::from_utf8(v.expect("an account").to_vec()).unwrap();
    let (balance, seq) = v.split_once(':').unwrap();
    (balance.parse().unwrap(), seq.parse().unwrap())
}

#[test]
fn readers_never_see_part_of_a_transfer_between_regions() {
    const WRITERS: usize = 3;
    const TRANSFERS: u64 = 40;
    const START: i64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut opening = WriteBatch::new();
    for w in 0..WRITERS {
        opening
            .put(format!("a/{w}"), format!("{START}:0"))
            .put(format!("z/{w}"), format!("{START}:0"));
    }
    db.write(opening).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let db = db.clone();
            s.spawn(move || {
                let (mut a, mut z) = (START, START);
                for seq in 1..=TRANSFERS {
                    let amount = (i64::try_from(seq * 7 + w as u64).unwrap()) % 13 - 6;
                    a -= amount;
                    z += amount;
                    let mut batch = WriteBatch::new();
                    batch
                        .put(format!("a/{w}"), format!("{a}:{seq}"))
                        .put(format!("z/{w}"), format!("{z}:{seq}"));
                    // Retryable ends write nothing (a reader's resolve may abort a
                    // transaction it thought expired): write it again.
                    while let Err(e) = db.write(batch.clone()) {
                        assert!(
                            matches!(e, Error::Conflict { .. } | Error::TxnAborted { .. }),
                            "{e}"
                        );
                    }
                }
            });
        }
        for r in 0..2 {
            let (db, done, checked) = (db.clone(), done.clone(), checked.clone());
            s.spawn(move || {
                let mut turn = 0usize;
                // One turn more after `done`: every writer has finished by then, so a
                // loaded machine that interleaved every pair before still compares one.
                loop {
                    let last = done.load(Ordering::SeqCst);
                    turn += 1;
                    let w = (turn + r) % WRITERS;
                    // "a" first, then "z": a batch is visible whole, so "z" is at
                    // least as new as "a" was.
                    let (a, seq_a) = parse(db.get(format!("a/{w}")).unwrap());
                    let (z, seq_z) = parse(db.get(format!("z/{w}")).unwrap());
                    assert!(seq_z >= seq_a, "writer {w}: z at transfer {seq_z} after a at {seq_a}");
                    if seq_z == seq_a {
                        assert_eq!(a + z, 2 * START, "writer {w} at transfer {seq_a}");
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                    if last {
                        break;
                    }
                }
            });
        }
        // Once every writer's last transfer is visible, the readers stop.
        s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                let rows = db.scan(.., 100).unwrap();
                let finished =
                    rows.iter().filter(|(_, v)| parse(Some(v.clone())).1 == TRANSFERS).count();
                if finished == 2 * WRITERS {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            done.store(true, Ordering::SeqCst);
        });
    });
    let total: i64 = db.scan(.., 100).unwrap().into_iter().map(|(_, v)| parse(Some(v)).0).sum();
    assert_eq!(
        total,
        2 * START * i64::try_from(WRITERS).unwrap(),
        "money is neither made nor lost"
    );
    assert!(checked.load(Ordering::Relaxed) > 0, "the readers compared pairs");
    cluster.shutdown().unwrap();
}

#[test]
fn a_cluster_below_version_3_refuses_a_batch_across_regions() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Cluster::builder().dir(dir.path()).stores(3);
    let builder = (1..=3).fold(builder, |b, id| b.cluster_version_max(id, 2));
    let cluster = builder.build().unwrap();
    cluster.split("m").unwrap();
    let db = cluster.db();
    let mut batch = WriteBatch::new();
    batch.put("a", "1").put("z", "2");
    match db.write(batch) {
        Err(Error::FeatureNotActive { active: 2, needed: 3, .. }) => {}
        other => panic!("a batch across regions at version 2: {other:?}"),
    }
    assert_eq!((db.get("a").unwrap(), db.get("z").unwrap()), (None, None), "nothing written");
    // One region's batch is one Raft write, as before.
    let mut batch = WriteBatch::new();
    batch.put("a", "1").put("b", "2");
    db.write(batch).unwrap();
    assert_eq!(get(&db, "b").as_deref(), Some("2"));
    cluster.shutdown().unwrap();
}

#[test]
fn a_region_that_finished_every_id_the_client_can_get_is_unavailable_never_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let reader = cluster.db();
    // Short: the last attempt's prewrite may apply after the coordinator dropped its
    // locks (its answer came too late); a reader resolves that one after the TTL.
    let db = reader
        .clone()
        .with_deadline(Duration::from_secs(1))
        .with_txn_ttl(Duration::from_millis(100));
    // The region of "z..." takes no transaction below a floor past any id the
    // directory hands out: every prewrite there is TxnTooOld, with every fresh id too.
    let forget =
        TxnCmd::Forget { records: vec![(Bytes::from_static(b"zz"), 1)], new_floor: 1 << 62 };
    assert_eq!(db.txn_call(forget).unwrap(), TxnReply::Done);
    let mut batch = WriteBatch::new();
    batch.put("a3", "x").put("z3", "x");
    match db.write(batch) {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("a batch no id can write: {other:?}"),
    }
    assert_eq!((get(&reader, "a3"), get(&reader, "z3")), (None, None), "nothing written");
    // The other regions still take transactions.
    let mut batch = WriteBatch::new();
    batch.put("a3", "y").put("n3", "y");
    reader.write(batch).unwrap();
    assert_eq!(get(&reader, "n3").as_deref(), Some("y"));
    cluster.shutdown().unwrap();
}

/// An async-commit batch answered `Ok` whose client never decides nor resolves it (it
/// died right after the answer): the next writer of its keys, with the default
/// `NoWait`, waits for the `Staging` holder (decided by the participant check once
/// its TTL passed) and writes over it, instead of answering `Conflict` for a batch
/// already acknowledged. Before, that write failed with `Conflict` (and so did a
/// client's own next batch whenever its background resolve had not finished).
#[test]
fn a_writer_waits_for_an_acknowledged_batch_s_staging_lock_instead_of_conflicting() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let seams = regionkv::TxnSeams { drop_resolves: true, ..regionkv::TxnSeams::default() };
    let dying = cluster.db().with_txn_ttl(Duration::from_millis(300)).with_txn_seams(seams);
    let mut batch = WriteBatch::new();
    batch.put("apple", "first").put("zucchini", "first");
    dying.write(batch).unwrap();
    let db = cluster.db();
    let mut batch = WriteBatch::new();
    batch.put("apple", "second").put("zucchini", "second");
    db.write(batch).unwrap();
    db.put("zucchini", "third").unwrap();
    assert_eq!(get(&db, "apple").as_deref(), Some("second"));
    assert_eq!(get(&db, "zucchini").as_deref(), Some("third"));
    cluster.shutdown().unwrap();
}
