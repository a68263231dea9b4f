//! The fast paths of two-phase commit (`two_phase.rs`): prewrites sent to the leaders
//! routing knows fall back to the routed path when a region changed under them, and a
//! background resolve that finds no room is left to readers with no lock lost.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regionkv_engine::SessionId;
use regionkv_raft::Error as E;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Op, TxnReply, TxnState, WriteSession};

use crate::db::{Db, Session};
use crate::error::Error;
use crate::{Cluster, WriteBatch};

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn get(db: &Db, key: &str) -> Option<String> {
    db.get(key).unwrap().map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// Three stores, user regions split at `m`, and a client that knows both regions'
/// leaders.
fn cluster(dir: &std::path::Path) -> (Cluster, Db) {
    let cluster = Cluster::builder().dir(dir).stores(3).build().unwrap();
    cluster.split("m").unwrap();
    let db = cluster.db();
    db.put("a-warm", "1").unwrap();
    db.put("z-warm", "1").unwrap();
    (cluster, db)
}

/// A transaction of `apple` (primary) and `zebra`, prewritten and committed by hand:
/// the lock on `zebra` is left for a resolve.
fn committed_by_hand(db: &Db) -> TxnPlan {
    let plan = TxnPlan::new(
        db.next_txn_id().unwrap(),
        vec![put("apple", "1"), put("zebra", "2")],
        db.txn_ttl_ms,
        None,
    );
    for op in &plan.ops {
        assert_eq!(db.txn_call(plan.prewrite(vec![op.clone()])).unwrap(), TxnReply::Done);
    }
    assert_eq!(
        db.txn_call(plan.commit()).unwrap(),
        TxnReply::Status(TxnState::Committed { commit_ts: None })
    );
    plan
}

/// The transaction whose lock `key` holds, if any: another transaction's prewrite
/// of it, by hand (dropped again if it took the key).
fn lock_holder(db: &Db, key: &str) -> Option<u64> {
    let probe = TxnPlan::new(db.next_txn_id().unwrap(), vec![put(key, "probe")], 60_000, None);
    match db.txn_call(probe.prewrite(probe.ops.clone())) {
        Ok(_) => {
            db.txn_call(probe.resolve(probe.keys(), false)).unwrap();
            None
        }
        Err(Error::Store(E::Locked { txn_id, .. })) => Some(txn_id),
        Err(e) => panic!("a probe of {key}: {e}"),
    }
}

/// Forgets the leader of `key`'s region: a transaction command for it cannot be sent
/// straight to its leader and goes the routed way.
fn forget_leader(db: &Db, key: &str) {
    let region = db.router.locate(key.as_bytes()).unwrap().region.id;
    db.router.set_leader(region, None);
}

#[test]
fn a_resolve_the_full_queue_cannot_take_leaves_its_lock_to_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, db) = cluster(dir.path());
    // A resolver whose queue takes nothing.
    let (full, _held) = mpsc::sync_channel(0);
    db.txn.resolver.set(Some(full)).unwrap();
    let plan = committed_by_hand(&db);
    forget_leader(&db, "zebra");
    db.resolve_in_background(&plan, true);
    // Nobody resolved `zebra`'s lock: it is still there, lost to no one...
    assert_eq!(lock_holder(&db, "zebra"), Some(plan.txn_id));
    // ...and the first reader applies it from the record.
    assert_eq!(get(&db, "zebra").as_deref(), Some("2"));
    assert_eq!(lock_holder(&db, "zebra"), None);
    assert_eq!(get(&db, "apple").as_deref(), Some("1"));
    cluster.shutdown().unwrap();
}

#[test]
fn a_resolve_not_sent_to_a_leader_is_done_by_the_resolver_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, db) = cluster(dir.path());
    let plan = committed_by_hand(&db);
    forget_leader(&db, "zebra");
    db.resolve_in_background(&plan, true);
    // No reader: the resolver thread applies the lock (bounded wait for it).
    let start = Instant::now();
    while lock_holder(&db, "zebra").is_some() {
        assert!(start.elapsed() < Duration::from_secs(30), "the resolver never resolved zebra");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(&db, "zebra").as_deref(), Some("2"));
    cluster.shutdown().unwrap();
}

#[test]
fn prewrites_sent_to_regions_that_changed_since_routing_go_the_routed_way() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, db) = cluster(dir.path());
    // Both regions split behind this client's back: its routing (with leaders) names
    // regions whose epochs are stale, so both first attempts are refused.
    cluster.split("f").unwrap();
    cluster.split("t").unwrap();
    let stale = db.router.locate(b"zebra").unwrap().region;
    assert!(stale.contains(b"n"), "the client still routes by the old region");
    let mut batch = WriteBatch::new();
    batch.put("apple", "1").put("grape", "2").put("nut", "3").put("zebra", "4");
    db.write(batch).unwrap();
    for (k, v) in [("apple", "1"), ("grape", "2"), ("nut", "3"), ("zebra", "4")] {
        assert_eq!(get(&db, k).as_deref(), Some(v), "{k}");
        assert_eq!(lock_holder(&db, k), None, "{k} holds no lock");
    }
    assert!(!db.router.locate(b"zebra").unwrap().region.contains(b"n"), "routing learned");
    cluster.shutdown().unwrap();
}

#[test]
fn a_late_copy_of_a_db_prewrite_locks_nothing_after_the_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, db) = cluster(dir.path());
    let coordinator = cluster.db();
    // A session of known id in the coordinator's pool: the 1PC attempt numbers 11 (and
    // sends nothing: the batch spans regions), the first part of the prewrite phase
    // (by region id) 12.
    let known = SessionId(0x5e55);
    coordinator.sessions.give_back(Session { id: known, last_seq: 10 });
    let mut batch = WriteBatch::new();
    batch.put("apple", "t");
    batch.put("zebra", "t");
    coordinator.write(batch).unwrap();
    let pooled: Vec<(SessionId, u64)> =
        coordinator.sessions.idle.lock().iter().map(|s| (s.id, s.last_seq)).collect();
    assert!(pooled.contains(&(known, 12)), "{pooled:?}");
    assert_eq!(pooled.len(), 2, "one session per part: {pooled:?}");
    let region = |key: &str| db.router.locate(key.as_bytes()).unwrap().region.id;
    let key = if region("apple") < region("zebra") { "apple" } else { "zebra" };
    // Committed and resolved (a reader resolves what is left), then a newer write.
    assert_eq!(get(&db, key).as_deref(), Some("t"));
    db.put(key, "newer").unwrap();
    // A copy numbered as that part (the transaction is gone: a fresh id will do, the
    // number decides) locks nothing.
    let copy = TxnPlan::new(db.next_txn_id().unwrap(), vec![put(key, "t")], 60_000, None);
    let numbered = copy.prewrite_in(copy.ops.clone(), WriteSession { id: known, seq: 12 });
    assert_eq!(db.txn_call(numbered).unwrap(), TxnReply::Done);
    assert_eq!(lock_holder(&db, key), None);
    assert_eq!(get(&db, key).as_deref(), Some("newer"));
    cluster.shutdown().unwrap();
}
