//! A region's transaction state in the engine: changed through apply rounds
//! (published after the round's data when it commits, dropped otherwise), read
//! through the engine, partitioned by split, joined by merge, dropped with its region.

use std::sync::Arc;

use bytes::Bytes;
use regionkv_engine::txn::{Lock, LockOp, TxnId, TxnRecord, TxnStatus, TxnTable};
use regionkv_engine::{Engine, EngineOptions, Epoch, Error, Region, RegionId, StoreId};
use regionkv_wal::SimFs;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A region to host: id, start, end.
type Spec<'a> = (u64, &'a [u8], Option<&'a [u8]>);

fn engine_with(regions: &[Spec<'_>]) -> Result<Engine, Error> {
    let engine = Engine::open(Arc::new(SimFs::new()), "/e", EngineOptions::new(StoreId(1)))?;
    for &(id, start, end) in regions {
        engine.insert_region(Region::new(RegionId(id), start.to_vec(), end.map(<[u8]>::to_vec)))?;
    }
    Ok(engine)
}

fn epoch(engine: &Engine, id: u64) -> Epoch {
    engine.region(RegionId(id)).map(|r| r.epoch).unwrap_or_default()
}

fn lock_entry(txn_id: u64, primary: &[u8], value: &[u8]) -> Bytes {
    let lock = Lock {
        txn_id: TxnId(txn_id),
        primary_key: Bytes::copy_from_slice(primary),
        op: LockOp::Put,
        value: Some(Bytes::copy_from_slice(value)),
        created_at_ms: 1_000,
        ttl_ms: 3_000,
    };
    Bytes::from(lock.encode())
}

fn record_entry(txn_id: u64, primary: &[u8]) -> Bytes {
    let record = TxnRecord {
        txn_id: TxnId(txn_id),
        status: TxnStatus::Pending,
        primary_key: Bytes::copy_from_slice(primary),
        participants: vec![Bytes::copy_from_slice(primary)],
        created_at_ms: 1_000,
        ttl_ms: 3_000,
        last_heartbeat_ms: 1_000,
        coordinator: None,
        decided_at_index: None,
    };
    Bytes::from(record.encode())
}

#[test]
fn a_rounds_changes_are_its_own_until_it_commits() -> TestResult {
    let engine = engine_with(&[(1, b"", None)])?;
    let lock = lock_entry(5, b"k", b"v");
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    round.put(b"k", b"old")?;
    round.set_txn_lock(b"k", Some(lock.clone()))?;
    round.set_txn_record(b"k", 5, Some(record_entry(5, b"k")))?;
    round.raise_txn_floor(3)?;
    round.raise_txn_floor(2)?;
    // The round reads its own changes; nobody else does.
    assert_eq!(round.txn_lock(b"k")?, Some(lock.clone()));
    assert!(round.txn_record(b"k", 5)?.is_some());
    assert_eq!(round.txn_record(b"k", 6)?, None);
    assert_eq!(round.txn_floor()?, 3, "a floor is never lowered");
    assert!(!engine.has_txn_locks());
    assert_eq!(engine.txn_lock(RegionId(1), b"k"), None);
    round.commit()?;
    // Published after the data: a reader that sees the lock gone sees the data.
    assert!(engine.has_txn_locks());
    assert_eq!(engine.txn_lock_total(), 1);
    assert_eq!(engine.txn_lock(RegionId(1), b"k"), Some(lock.clone()));
    let table = engine.txn_table(RegionId(1)).ok_or("no table")?;
    assert_eq!(table.floor, 3);
    assert_eq!(table.records.len(), 1);

    // Resolve: data and the lock's removal in one round.
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    assert_eq!(round.txn_lock(b"k")?, Some(lock), "the round sees what is published");
    assert_eq!(round.txn_floor()?, 3);
    round.put(b"k", b"v")?;
    round.set_txn_lock(b"k", None)?;
    assert_eq!(round.txn_lock(b"k")?, None, "its own removal");
    round.commit()?;
    assert!(!engine.has_txn_locks());
    assert_eq!(engine.read_view().get(b"k").as_deref(), Some(&b"v"[..]));
    assert_eq!(engine.txn_table(RegionId(1)).map(|t| t.locks.len()), Some(0));
    assert_eq!(engine.txn_table(RegionId(9)), None, "no such region");
    Ok(())
}

#[test]
fn a_round_that_does_not_commit_publishes_nothing() -> TestResult {
    let engine = engine_with(&[(1, b"", None)])?;
    for end in ["drop", "clear"] {
        let mut round = engine.begin_round();
        round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
        round.set_txn_lock(b"k", Some(lock_entry(1, b"k", b"v")))?;
        round.set_txn_record(b"k", 1, Some(record_entry(1, b"k")))?;
        round.raise_txn_floor(7)?;
        assert!(!round.txn_unchanged());
        if end == "drop" {
            drop(round);
        } else {
            round.clear();
            assert!(round.txn_unchanged(), "clear drops the overlay");
            // The cleared round is back at the start: no region, so no txn access.
            assert!(matches!(round.txn_lock(b"k"), Err(Error::NoRegionPrepared)));
            round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
            assert_eq!(round.txn_lock(b"k")?, None);
            assert_eq!(round.txn_floor()?, 0);
            round.commit()?;
        }
        assert!(!engine.has_txn_locks(), "{end}");
        assert_eq!(engine.txn_table(RegionId(1)), Some(TxnTable::default()), "{end}");
    }
    Ok(())
}

#[test]
fn txn_changes_need_a_prepared_region_and_a_key_in_it() -> TestResult {
    let engine = engine_with(&[(1, b"", Some(b"m")), (2, b"m", None)])?;
    let mut round = engine.begin_round();
    let entry = lock_entry(1, b"a", b"v");
    assert!(matches!(round.set_txn_lock(b"a", Some(entry.clone())), Err(Error::NoRegionPrepared)));
    assert!(matches!(round.raise_txn_floor(1), Err(Error::NoRegionPrepared)));
    assert!(matches!(round.txn_floor(), Err(Error::NoRegionPrepared)));
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    let outside = round.set_txn_lock(b"x", Some(entry.clone()));
    assert!(matches!(outside, Err(Error::KeyNotInRegion { .. })), "{outside:?}");
    let outside = round.set_txn_record(b"x", 1, None);
    assert!(matches!(outside, Err(Error::KeyNotInRegion { .. })), "{outside:?}");
    assert!(matches!(round.txn_lock(b"x"), Err(Error::KeyNotInRegion { .. })));
    assert!(matches!(round.txn_record(b"x", 1), Err(Error::KeyNotInRegion { .. })));
    // Two regions in one round: each change goes to its own region.
    round.set_txn_lock(b"a", Some(entry.clone()))?;
    round.prepare_for_region(RegionId(2), epoch(&engine, 2))?;
    round.set_txn_lock(b"x", Some(lock_entry(1, b"a", b"w")))?;
    round.raise_txn_floor(4)?;
    round.commit()?;
    assert_eq!(engine.txn_lock(RegionId(1), b"a"), Some(entry));
    assert_eq!(engine.txn_lock(RegionId(2), b"a"), None);
    assert!(engine.txn_lock(RegionId(2), b"x").is_some());
    assert_eq!(engine.txn_table(RegionId(1)).map(|t| t.floor), Some(0));
    assert_eq!(engine.txn_table(RegionId(2)).map(|t| t.floor), Some(4));
    assert_eq!(engine.txn_lock_total(), 2);
    Ok(())
}

#[test]
fn locks_are_listed_by_range_with_a_limit() -> TestResult {
    let engine = engine_with(&[(1, b"", None)])?;
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    for key in [&b"a"[..], b"c", b"e", b"g"] {
        round.set_txn_lock(key, Some(lock_entry(1, b"a", key)))?;
    }
    round.commit()?;
    let keys = |start: &[u8], end: Option<&[u8]>, limit| -> Vec<Bytes> {
        engine.txn_locks(RegionId(1), start, end, limit).into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(
        keys(b"b", Some(b"g"), 10),
        vec![Bytes::from_static(b"c"), Bytes::from_static(b"e")]
    );
    assert_eq!(keys(b"", None, 3).len(), 3);
    assert_eq!(keys(b"a", None, 1), vec![Bytes::from_static(b"a")]);
    assert!(keys(b"h", None, 10).is_empty());
    assert!(keys(b"", None, 0).is_empty());
    assert!(engine.txn_locks(RegionId(2), b"", None, 10).is_empty(), "no such region");
    Ok(())
}

/// Locks by key and records by primary key go with their ranges; every part keeps the
/// floor; a merge joins them back with the larger floor; removing a region drops its
/// table and its locks from the store's count.
#[test]
fn split_partitions_merge_joins_and_remove_drops() -> TestResult {
    for barrier in [false, true] {
        let engine = engine_with(&[(1, b"", None)])?;
        let mut round = engine.begin_round();
        round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
        for (key, txn) in [(&b"b"[..], 1), (b"h", 2), (b"p", 3), (b"x", 4)] {
            round.set_txn_lock(key, Some(lock_entry(txn, key, b"v")))?;
            round.set_txn_record(key, txn, Some(record_entry(txn, key)))?;
        }
        round.raise_txn_floor(10)?;
        round.commit()?;
        let splits = [b"g".to_vec(), b"o".to_vec()];
        let new_ids = [RegionId(2), RegionId(3)];
        if barrier {
            engine.split_at(RegionId(1), &splits, &new_ids, 20, 5)?;
        } else {
            engine.split(RegionId(1), &splits, &new_ids)?;
        }
        let keys_of = |id| -> Vec<Bytes> {
            let table = engine.txn_table(RegionId(id)).unwrap_or_default();
            table.locks.keys().cloned().collect()
        };
        assert_eq!(keys_of(1), vec![Bytes::from_static(b"b")]);
        assert_eq!(keys_of(2), vec![Bytes::from_static(b"h")]);
        assert_eq!(keys_of(3), vec![Bytes::from_static(b"p"), Bytes::from_static(b"x")]);
        for id in [1, 2, 3] {
            let table = engine.txn_table(RegionId(id)).ok_or("no table")?;
            assert_eq!(table.floor, 10, "region {id} inherits the floor");
            assert_eq!(table.records.len(), table.locks.len(), "records go by primary key");
        }
        assert_eq!(engine.txn_lock_total(), 4, "a split adds and drops no lock");

        // A later floor on one side: the join takes the larger.
        let mut round = engine.begin_round();
        round.prepare_for_region(RegionId(2), epoch(&engine, 2))?;
        round.raise_txn_floor(15)?;
        round.commit()?;
        if barrier {
            engine.merge_at(RegionId(2), RegionId(1), 30)?;
        } else {
            engine.merge(RegionId(2), RegionId(1))?;
        }
        let joined = engine.txn_table(RegionId(1)).ok_or("no table")?;
        assert_eq!(joined.floor, 15);
        assert_eq!(
            joined.locks.keys().cloned().collect::<Vec<_>>(),
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"h")]
        );
        assert_eq!(joined.records.len(), 2);
        assert_eq!(engine.txn_lock_total(), 4);

        engine.remove_region(RegionId(3))?;
        assert_eq!(engine.txn_lock_total(), 2);
        engine.remove_region(RegionId(1))?;
        assert!(!engine.has_txn_locks());
    }
    Ok(())
}
