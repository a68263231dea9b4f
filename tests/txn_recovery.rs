//! The transaction recovery daemon through a `Cluster` (ARCHITECTURE.md, "The recovery
//! daemon"; the fourth invariant): it finishes what a stopped coordinator left (commits
//! a committed transaction's leftover locks, aborts an expired pending one and an
//! orphan lock), it defers with a gate closed and proposes nothing, it never decodes an
//! entry of a newer format (and the engine keeps serving the other keys), a store
//! holding in-doubt transactions in every state is recovered correctly once the gate
//! opens, and a turn racing splits and merges always ends (a watchdog).

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use TxnStatus::{Aborted, Committed, Pending, Unspecified};
use regionkv::layers::engine::txn::{Lock, LockOp, TxnId, TxnRecord, TxnStatus};
use regionkv::layers::raft::txn::{RecordInit, TxnCmd, TxnReply, TxnState};
use regionkv::layers::raft::{Op, Store};
use regionkv::{Bytes, Cluster, Db, Error, TxnGate};

const STORES: u64 = 3;

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: b(key), value: b(value) }
}

/// Three stores, two regions split at "m", the daemon every 50 ms.
fn cluster(dir: &std::path::Path) -> Result<Cluster, Error> {
    let cluster = Cluster::builder()
        .dir(dir)
        .stores(STORES as usize)
        .txn_recover_interval(Duration::from_millis(50))
        .build()?;
    cluster.split("m")?;
    Ok(cluster)
}

/// Prewrites `ops` (all in one region) for `txn` whose primary is `primary`; with
/// `participants`, this is the primary's region and the record is created.
fn prewrite(
    db: &Db,
    txn: u64,
    primary: &str,
    ops: Vec<Op>,
    ttl_ms: u64,
    participants: Option<&[&str]>,
) -> Result<(), Error> {
    let record = participants.map(|p| RecordInit {
        participants: p.iter().map(|k| b(k)).collect(),
        coordinator: None,
        staging: false,
    });
    db.txn_call(TxnCmd::Prewrite {
        min_commit: None,
        txn_id: txn,
        primary_key: b(primary),
        ops,
        ttl_ms,
        record,
        start_ts: None,
        session: None,
    })?;
    Ok(())
}

fn locks_left(cluster: &Cluster) -> usize {
    cluster.txn_list(false, None).iter().filter(|e| e.kind == "lock").count()
}

#[test]
fn the_daemon_finishes_what_a_stopped_coordinator_left() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let cluster = cluster(dir.path())?;
    let db = cluster.db();
    // Committed, its secondary "n1" left locked: the coordinator stopped after commit.
    // (Its TTL is long enough for the commit to come first; then its leftover lock
    // expires and the daemon resolves it.)
    prewrite(&db, 101, "a1", vec![put("a1", "A")], 2_000, Some(&["a1", "n1"]))?;
    prewrite(&db, 101, "a1", vec![put("n1", "A")], 2_000, None)?;
    let decided =
        db.txn_call(TxnCmd::Commit { txn_id: 101, primary_key: b("a1"), commit_ts: None })?;
    assert_eq!(decided, TxnReply::Status(TxnState::Committed { commit_ts: None }));
    // Pending, never committed: the coordinator stopped after its prewrites.
    prewrite(&db, 102, "b1", vec![put("b1", "B")], 300, Some(&["b1", "o1"]))?;
    prewrite(&db, 102, "b1", vec![put("o1", "B")], 300, None)?;
    // An orphan lock: its primary's region never got the prewrite with the record.
    prewrite(&db, 103, "c0", vec![put("p1", "C")], 300, None)?;

    wait_for("every lock resolved", || locks_left(&cluster) == 0);
    assert_eq!(db.get("a1")?, Some(b("A")));
    assert_eq!(db.get("n1")?, Some(b("A")), "the committed secondary was applied");
    for key in ["b1", "o1", "p1"] {
        assert_eq!(db.get(key)?, None, "{key} of an aborted transaction");
    }
    assert_eq!(db.txn_outcome(102, "b1")?, regionkv::TxnOutcome::Aborted);
    assert_eq!(db.txn_outcome(103, "c0")?, regionkv::TxnOutcome::Aborted, "presumed abort");
    let stats = cluster.txn_recovery_stats();
    let committed: u64 = stats.iter().map(|(_, s)| s.resolved_committed).sum();
    let aborted: u64 = stats.iter().map(|(_, s)| s.resolved_aborted).sum();
    assert!(committed >= 1 && aborted >= 3, "{stats:#?}");
    cluster.shutdown()?;
    Ok(())
}

#[test]
fn the_daemon_settles_staging_transactions_by_the_participant_check() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let cluster = cluster(dir.path())?;
    let db = cluster.db();
    let staged = |txn: u64, keys: [&str; 2]| {
        let ops = keys.iter().map(|k| put(k, "S")).collect();
        regionkv::layers::raft::txn::plan::TxnPlan::new(txn, ops, 300, None).with_staging(true)
    };
    // Every prewrite applied, the coordinator gone: committed.
    let done = staged(201, ["d1", "q1"]);
    for op in &done.ops {
        assert_eq!(db.txn_call(done.prewrite(vec![op.clone()]))?, TxnReply::Done);
    }
    // Only the primary's: aborted, and the other prewrite is refused from then on.
    let half = staged(202, ["e1", "r1"]);
    assert_eq!(db.txn_call(half.prewrite(vec![half.ops[0].clone()]))?, TxnReply::Done);
    wait_for("every lock resolved", || locks_left(&cluster) == 0);
    assert_eq!(db.txn_outcome(201, "d1")?, regionkv::TxnOutcome::Committed);
    assert_eq!(db.txn_outcome(202, "e1")?, regionkv::TxnOutcome::Aborted);
    assert_eq!((db.get("d1")?, db.get("q1")?), (Some(b("S")), Some(b("S"))));
    assert_eq!(db.get("e1")?, None);
    match db.txn_call(half.prewrite(vec![half.ops[1].clone()])) {
        Err(Error::TxnAborted { txn_id: 202 }) => {}
        other => panic!("a prevented prewrite answered {other:?}"),
    }
    let stats = cluster.txn_recovery_stats();
    let aborted: u64 = stats.iter().map(|(_, s)| s.aborted_in_doubt).sum();
    assert!(aborted >= 1, "{stats:#?}");
    cluster.shutdown()?;
    Ok(())
}

/// Writes `lock` on `key` and `records` into the region holding them, on every store's
/// engine, behind Raft's back: the test hook for entries no command of this binary
/// writes (another format, an unknown status) and for stores written before.
fn plant(
    cluster: &Cluster,
    locks: &[(&str, Bytes)],
    records: &[(&str, u64, Bytes)],
) -> Result<(), Error> {
    for id in 1..=STORES {
        cluster
            .with_store(id, |store: &Store| -> Result<(), Error> {
                let engine = &store.context().engine;
                let into = |key: &str| engine.region_for_key(key.as_bytes()).expect("a region");
                for (key, bytes) in locks {
                    let region = into(key);
                    let mut round = engine.begin_round();
                    round.prepare_for_region(region.id, region.epoch).map_err(|e| store_err(&e))?;
                    round
                        .set_txn_lock(key.as_bytes(), Some(bytes.clone()))
                        .map_err(|e| store_err(&e))?;
                    round.commit().map_err(|e| store_err(&e))?;
                }
                for (primary, txn, bytes) in records {
                    let region = into(primary);
                    let mut round = engine.begin_round();
                    round.prepare_for_region(region.id, region.epoch).map_err(|e| store_err(&e))?;
                    round
                        .set_txn_record(primary.as_bytes(), *txn, Some(bytes.clone()))
                        .map_err(|e| store_err(&e))?;
                    round.commit().map_err(|e| store_err(&e))?;
                }
                Ok(())
            })
            .expect("store running")?;
    }
    Ok(())
}

fn store_err(e: &regionkv::layers::engine::Error) -> Error {
    Error::InvalidRequest(format!("planting: {e}"))
}

fn lock_of(txn: u64, primary: &str, value: &str, created_at_ms: u64, ttl_ms: u64) -> Bytes {
    Bytes::from(
        Lock {
            min_commit_ts: None,
            txn_id: TxnId(txn),
            primary_key: b(primary),
            op: LockOp::Put,
            value: Some(b(value)),
            created_at_ms,
            ttl_ms,
            start_ts: None,
        }
        .encode(),
    )
}

fn record_of(
    txn: u64,
    primary: &str,
    status: TxnStatus,
    keys: &[&str],
    at_ms: u64,
    ttl_ms: u64,
) -> Bytes {
    Bytes::from(
        TxnRecord {
            min_commit_ts: None,
            txn_id: TxnId(txn),
            status,
            primary_key: b(primary),
            participants: keys.iter().map(|k| b(k)).collect(),
            created_at_ms: at_ms,
            ttl_ms,
            last_heartbeat_ms: at_ms,
            coordinator: None,
            decided_at_index: None,
            start_ts: None,
            commit_ts: None,
        }
        .encode(),
    )
}

fn deferred(cluster: &Cluster, gate: TxnGate) -> u64 {
    cluster
        .txn_recovery_stats()
        .iter()
        .map(|(_, s)| s.deferred.get(gate.label()).copied().unwrap_or(0))
        .sum()
}

#[test]
fn a_closed_version_gate_defers_and_proposes_nothing() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let mut builder = Cluster::builder()
        .dir(dir.path())
        .stores(STORES as usize)
        .txn_recover_interval(Duration::from_millis(20));
    for id in 1..=STORES {
        builder = builder.cluster_version_max(id, 2);
    }
    let cluster = builder.build()?;
    assert!(cluster.cluster_version()? < 3, "transactions not active");
    let db = cluster.db();
    db.put("k0", "1")?; // a leader
    match prewrite(&db, 7, "k", vec![put("k", "v")], 100, Some(&["k"])) {
        Err(Error::FeatureNotActive { .. }) => {}
        other => panic!("a prewrite before the version gate: {other:?}"),
    }
    // An expired lock (planted: no command could write it): a turn with the gate open
    // would resolve it.
    plant(&cluster, &[("k", lock_of(7, "k", "v", 0, 1))], &[])?;
    for turn in cluster.txn_recover(None) {
        assert_eq!(turn.deferred, Some(TxnGate::ClusterVersion), "{turn:?}");
        assert!(turn.regions.is_empty() && turn.errors.is_empty());
    }
    wait_for("the daemon's own turns deferred", || {
        deferred(&cluster, TxnGate::ClusterVersion) > 10
    });
    assert_eq!(locks_left(&cluster), 1, "nothing proposed: the lock is still there");
    let stats = cluster.txn_recovery_stats();
    assert!(stats.iter().all(|(_, s)| s.turns == 0 && s.unreadable.is_empty()), "{stats:#?}");
    cluster.shutdown()?;
    Ok(())
}

#[test]
fn entries_of_a_newer_format_are_skipped_counted_never_decoded() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let cluster = cluster(dir.path())?;
    let db = cluster.db();
    db.put("a", "1")?;
    // Format byte 3 (newer than this binary reads), then bytes format 1 could not
    // decode: if anything decoded past the byte it would be counted corrupt.
    let newer = Bytes::from_static(&[3, 0xff, 0xff, 0xff, 0xff]);
    plant(&cluster, &[("x", newer.clone())], &[("y", 9, newer)])?;
    let too_new = |turns: &[regionkv::TxnRecoveryTurn]| -> u64 {
        turns.iter().map(|t| t.unreadable.get("too_new").copied().unwrap_or(0)).sum()
    };
    // Once the right region has a leader (just split), its turn counts both entries.
    let mut turns = Vec::new();
    wait_for("a turn over the planted entries", || {
        turns = cluster.txn_recover(None);
        too_new(&turns) > 0
    });
    assert_eq!(too_new(&turns), 2, "{turns:#?}");
    assert!(turns.iter().all(|t| !t.unreadable.contains_key("corrupt") && t.errors.is_empty()));
    let listed = cluster.txn_list(false, None);
    assert!(listed.iter().all(|e| e.state == "too_new" && e.age_ms.is_none()), "{listed:#?}");
    // The engine still serves every other key, reads and writes.
    assert_eq!(db.get("a")?, Some(b("1")));
    db.put("b", "2")?;
    assert_eq!(db.get("b")?, Some(b("2")));
    // The unreadable lock still refuses a raw write to its key.
    assert!(db.put("x", "3").is_err());
    cluster.shutdown()?;
    Ok(())
}

/// Waits until every store's image of every region reaches the index its leader
/// committed: the planted entries went into each store's engine outside the log, so
/// only a checkpoint at or past the writes that followed them keeps them (a
/// follower's own commit index may still be older, and its image with it).
fn checkpointed_everywhere(cluster: &Cluster) {
    let mut target = std::collections::BTreeMap::new();
    for id in 1..=STORES {
        for p in cluster.with_store(id, |store: &Store| store.status()).unwrap_or_default() {
            if p.region.id.0 != 0 {
                let t = target.entry(p.region.id).or_insert(0);
                *t = p.commit.max(*t);
            }
        }
    }
    for id in 1..=STORES {
        wait_for("every region checkpointed after the planting", || {
            cluster
                .with_store(id, |store: &Store| {
                    target.iter().all(|(region, commit)| {
                        let image = store.context().engine.image_index(*region);
                        image.ok().flatten() >= Some(*commit)
                    })
                })
                .unwrap_or(false)
        });
    }
}

/// The upgrade of the issue: stores run by a binary of cluster version 2, holding
/// in-doubt transactions in every state (planted through the engine, then written to
/// disk by a checkpoint of every region), are stopped and reopened by this one (their
/// view still 2 until the finalize); with the gate closed the daemon defers and changes nothing, without a
/// panic (debug assertions are on in this test binary unless built in release); once
/// the cluster is finalized to 3 each state ends as it must.
#[test]
fn in_doubt_transactions_in_every_state_across_an_upgrade() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let mut builder = Cluster::builder()
        .dir(dir.path())
        .stores(STORES as usize)
        // A checkpoint after every write: the planted entries reach the disk.
        .checkpoint_log_bytes(1)
        .txn_recover_interval(Duration::from_millis(20));
    for id in 1..=STORES {
        builder = builder.cluster_version_max(id, 2);
    }
    let cluster = builder.build()?;
    cluster.split("m")?;
    let db = cluster.db();
    wait_for("a leader in both regions", || {
        db.put("keep", "1").is_ok() && db.put("zz", "1").is_ok()
    });
    assert!(cluster.cluster_version()? < 3, "transactions not active");

    let (old, young, ttl) = (now_ms() - 60_000, now_ms(), 3_600_000);
    plant(
        &cluster,
        &[
            // 11 pending and expired: its primary and a secondary.
            ("a11", lock_of(11, "a11", "x", old, 1_000)),
            ("n11", lock_of(11, "a11", "x", old, 1_000)),
            // 12 pending and alive.
            ("a12", lock_of(12, "a12", "x", young, ttl)),
            ("n12", lock_of(12, "a12", "x", young, ttl)),
            // 13 committed (its primary resolved), a secondary left.
            ("n13", lock_of(13, "a13", "C", old, 1_000)),
            // 14 aborted, a secondary left.
            ("n14", lock_of(14, "a14", "x", old, 1_000)),
            // 15 an orphan lock: no record anywhere.
            ("n15", lock_of(15, "a15", "x", old, 1_000)),
        ],
        &[
            ("a11", 11, record_of(11, "a11", Pending, &["a11", "n11"], old, 1_000)),
            ("a12", 12, record_of(12, "a12", Pending, &["a12", "n12"], young, ttl)),
            ("a13", 13, record_of(13, "a13", Committed, &["a13", "n13"], old, 1_000)),
            ("a14", 14, record_of(14, "a14", Aborted, &["a14", "n14"], old, 1_000)),
            ("a16", 16, record_of(16, "a16", Unspecified, &["a16"], old, 1_000)),
        ],
    )?;

    // Written to disk: a write to each region, then a checkpoint of each region on
    // every store at or past it.
    db.put("keep", "2")?;
    db.put("zz", "2")?;
    checkpointed_everywhere(&cluster);
    // The new binary: every store stopped and reopened with this binary's maximum; the
    // cluster stays at 2 until finalized.
    for id in 1..=STORES {
        cluster.set_cluster_version_max(id, 3);
        cluster.stop_store(id)?;
        cluster.restart_store(id)?;
    }
    wait_for("a leader in both regions", || db.get("keep").is_ok() && db.get("zz").is_ok());
    assert!(cluster.cluster_version()? < 3, "transactions not active");

    // Gate closed: deferred, nothing changed, nothing decoded.
    let listed = |cluster: &Cluster| -> Vec<(&'static str, Bytes, &'static str)> {
        let mut l: Vec<_> =
            cluster.txn_list(false, None).into_iter().map(|e| (e.kind, e.key, e.state)).collect();
        l.sort();
        l
    };
    // Each region's leader lists its entries: all twelve survived the reopen.
    wait_for("every planted entry listed", || listed(&cluster).len() == 12);
    let before = listed(&cluster);
    for turn in cluster.txn_recover(None) {
        assert_eq!(turn.deferred, Some(TxnGate::ClusterVersion));
    }
    assert_eq!(listed(&cluster), before);

    // Gate open.
    assert_eq!(cluster.finalize_upgrade(Some(3))?, 3);
    wait_for("the expired and decided transactions resolved", || {
        let mut left: Vec<String> = cluster
            .txn_list(false, None)
            .into_iter()
            .filter(|e| e.kind == "lock")
            .map(|e| String::from_utf8_lossy(&e.key).into_owned())
            .collect();
        left.sort();
        left == ["a12", "n12"]
    });
    assert_eq!(db.get("n13")?, Some(b("C")), "the committed secondary applied");
    for key in ["a11", "n11", "n14", "n15"] {
        assert_eq!(cluster.local_get(1, key)?, None, "{key} aborted");
    }
    assert_eq!(db.txn_outcome(11, "a11")?, regionkv::TxnOutcome::Aborted);
    assert_eq!(db.txn_outcome(12, "a12")?, regionkv::TxnOutcome::Pending);
    let turn: Vec<_> = cluster.txn_recover(None);
    let frozen: u64 =
        turn.iter().map(|t| t.frozen.get("unknown_status").copied().unwrap_or(0)).sum();
    assert_eq!(frozen, 1, "the record of an unknown status is frozen: {turn:#?}");
    let listed = cluster.txn_list(false, None);
    assert!(listed.iter().any(|e| e.state == "unknown_status"), "{listed:#?}");
    cluster.shutdown()?;
    Ok(())
}

#[test]
fn recovery_racing_splits_and_merges_ends_every_turn() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let cluster = std::sync::Arc::new(cluster(dir.path())?);
    let db = cluster.db();
    // Expired locks on both sides of the keys the splits cut at.
    for i in 0..40u64 {
        let key = format!("k{i:02}");
        prewrite(&db, 1_000 + i, &key, vec![put(&key, "v")], 1, Some(&[key.as_str()]))?;
    }
    let (tx, rx) = mpsc::channel();
    let turns = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            for _ in 0..30 {
                cluster.txn_recover(None);
                if tx.send(()).is_err() {
                    return;
                }
            }
        })
    };
    let splitter = {
        let cluster = cluster.clone();
        std::thread::spawn(move || -> Result<(), Error> {
            for round in 0..4 {
                let key = format!("k{}", 10 + round * 5);
                let parts = cluster.split(&key)?;
                if let [left, right] = parts.as_slice() {
                    cluster.merge(left.id, right.id)?;
                }
            }
            Ok(())
        })
    };
    // The watchdog: a turn that does not end within a minute is a deadlock.
    for _ in 0..30 {
        rx.recv_timeout(Duration::from_secs(60)).expect("a recovery turn did not end: deadlock");
    }
    turns.join().expect("turns");
    splitter.join().expect("splitter")?;
    wait_for("every expired lock resolved", || locks_left(&cluster) == 0);
    for i in 0..40u64 {
        assert_eq!(db.get(format!("k{i:02}"))?, None);
    }
    cluster.shutdown()?;
    Ok(())
}
