//! The daemon inside the crate: gates before anything is decoded, and the test-only
//! ungated turn (seeds' "gate off" case: decoding field by field alone is safe, and the
//! outcome for readable records is the one the gated turn gives).

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::txn::{Lock, LockOp, TxnId, TxnRecord, TxnStatus};
use regionkv_raft::txn::recovery::Gate;

use crate::Cluster;

/// Stores at cluster version 2: transactions are not active (G2 closed).
fn cluster_at_2(dir: &std::path::Path) -> Cluster {
    let mut builder =
        Cluster::builder().dir(dir).stores(1).txn_recover_interval(Duration::from_secs(3600));
    builder = builder.cluster_version_max(1, 2);
    builder.build().expect("cluster")
}

#[test]
fn every_turn_defers_while_the_cluster_version_is_older() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_at_2(dir.path());
    for _ in 0..3 {
        let turns = cluster.txn_recover(None);
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].deferred, Some(Gate::ClusterVersion));
    }
    let stats = cluster.txn_recovery_stats();
    assert_eq!(stats[0].1.deferred.get("cluster_version"), Some(&3));
    assert_eq!(stats[0].1.turns, 0);
    cluster.shutdown().unwrap();
}

#[test]
fn the_ungated_turn_decodes_field_by_field_and_shortens_no_lease() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_at_2(dir.path());
    cluster.db().put("leader?", "1").unwrap();
    let now = regionkv_raft::system_clock_ms();
    // A lock alive by its own fields (its record has no optional field set): the
    // ungated turn must leave it, as the gated one would.
    let lock = Lock {
        min_commit_ts: None,
        txn_id: TxnId(5),
        primary_key: Bytes::from_static(b"p"),
        op: LockOp::Put,
        value: Some(Bytes::from_static(b"v")),
        created_at_ms: now,
        ttl_ms: 3_600_000,
        start_ts: None,
    };
    let record = TxnRecord {
        min_commit_ts: None,
        txn_id: TxnId(5),
        status: TxnStatus::Pending,
        primary_key: Bytes::from_static(b"p"),
        participants: vec![Bytes::from_static(b"p")],
        created_at_ms: now,
        ttl_ms: 3_600_000,
        last_heartbeat_ms: now,
        coordinator: None,
        decided_at_index: None,
        start_ts: None,
        commit_ts: None,
    };
    cluster
        .with_store(1, |store| {
            let engine = &store.context().engine;
            let region = engine.region_for_key(b"p").unwrap();
            let mut round = engine.begin_round();
            round.prepare_for_region(region.id, region.epoch).unwrap();
            round.set_txn_lock(b"p", Some(Bytes::from(lock.encode()))).unwrap();
            round.set_txn_record(b"p", 5, Some(Bytes::from(record.encode()))).unwrap();
            round.commit().unwrap();
        })
        .unwrap();
    let db = cluster.db();
    let turn = cluster
        .with_store(1, |store| {
            cluster
                .txn_daemon()
                .of(store.context().config.store_id)
                .recover_once_ungated(store, &db)
        })
        .unwrap();
    assert_eq!(turn.deferred, None);
    assert!(!turn.regions.is_empty(), "{turn:?}");
    assert!(turn.unreadable.is_empty() && turn.frozen.is_empty(), "{turn:?}");
    assert_eq!((turn.resolved_committed, turn.resolved_aborted, turn.in_doubt), (0, 0, 0));
    assert_eq!(cluster.txn_list(false, None).len(), 2);
    cluster.shutdown().unwrap();
}

#[test]
fn a_decided_record_is_forgotten_after_its_keys_are_resolved_and_the_floor_rises() {
    use regionkv_raft::txn::recovery::RecoveryLimits;
    use regionkv_raft::{Op, RecordInit, TxnCmd, TxnReply, TxnState};

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder()
        .dir(dir.path())
        .stores(1)
        .txn_recover_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let db = cluster.db();
    db.put("leader?", "1").unwrap();
    let keys = [Bytes::from_static(b"f1"), Bytes::from_static(b"f2")];
    let ops = keys.iter().map(|k| Op::Put { key: k.clone(), value: Bytes::from_static(b"v") });
    let record = RecordInit { participants: keys.to_vec(), coordinator: None, staging: false };
    db.txn_call(TxnCmd::Prewrite {
        min_commit: None,
        txn_id: 40,
        primary_key: keys[0].clone(),
        ops: ops.collect(),
        ttl_ms: 1,
        record: Some(record),
        start_ts: None,
        session: None,
    })
    .unwrap();
    let decided =
        db.txn_call(TxnCmd::Commit { txn_id: 40, primary_key: keys[0].clone(), commit_ts: None });
    assert_eq!(decided.unwrap(), TxnReply::Status(TxnState::Committed { commit_ts: None }));
    std::thread::sleep(Duration::from_millis(5)); // past its TTL, by the record's fields
    let daemon = crate::txn_recovery::TxnRecovery::new(crate::StoreId(1))
        .with_limits(RecoveryLimits { forget_delay_ms: 0, ..RecoveryLimits::default() });
    let turn = cluster.with_store(1, |store| daemon.turn(store, &db, None)).unwrap();
    assert_eq!((turn.deferred, turn.forgotten), (None, 1), "{turn:?}");
    assert!(cluster.txn_list(false, None).is_empty());
    let floor = cluster
        .with_store(1, |store| {
            let engine = &store.context().engine;
            let region = engine.region_for_key(b"f1").unwrap();
            engine.txn_table(region.id).unwrap().floor
        })
        .unwrap();
    assert_eq!(floor, 41);
    assert_eq!(db.get("f2").unwrap(), Some(Bytes::from_static(b"v")));
    assert_eq!(db.txn_outcome(40, "f1").unwrap(), crate::TxnOutcome::Unknown);
    cluster.shutdown().unwrap();
}
