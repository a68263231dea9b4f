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
        min_commit_ts: None,
        txn_id: TxnId(txn_id),
        primary_key: Bytes::copy_from_slice(primary),
        op: LockOp::Put,
        value: Some(Bytes::copy_from_slice(value)),
        created_at_ms: 1_000,
        ttl_ms: 3_000,
        start_ts: None,
    };
    Bytes::from(lock.encode())
}

fn record_entry(txn_id: u64, primary: &[u8]) -> Bytes {
    let record = TxnRecord {
        min_commit_ts: None,
        txn_id: TxnId(txn_id),
        status: TxnStatus::Pending,
        primary_key: Bytes::copy_from_slice(primary),
        participants: vec![Bytes::copy_from_slice(primary)],
        created_at_ms: 1_000,
        ttl_ms: 3_000,
        last_heartbeat_ms: 1_000,
        coordinator: None,
        decided_at_index: None,
        start_ts: None,
        commit_ts: None,
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

/// Writes locks on `keys` (and a record at each), and raises the floor, in region `id`.
fn lock_keys(engine: &Engine, id: u64, keys: &[&[u8]], floor: u64) -> TestResult {
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(id), epoch(engine, id))?;
    for (i, key) in keys.iter().enumerate() {
        let txn = 100 + i as u64;
        round.set_txn_lock(key, Some(lock_entry(txn, key, b"v")))?;
        round.set_txn_record(key, txn, Some(record_entry(txn, key)))?;
    }
    round.raise_txn_floor(floor)?;
    round.commit()?;
    Ok(())
}

fn reopen(fs: &Arc<SimFs>, engine: Engine) -> Result<Engine, Error> {
    engine.close()?;
    drop(engine);
    Engine::open(fs.clone(), "/e", EngineOptions::new(StoreId(1)))
}

fn lock_keys_of(engine: &Engine, id: u64) -> Vec<Bytes> {
    engine.txn_table(RegionId(id)).unwrap_or_default().locks.keys().cloned().collect()
}

#[test]
fn txn_state_survives_a_checkpoint_and_a_restart() -> TestResult {
    let fs = Arc::new(SimFs::new());
    let engine = Engine::open(fs.clone(), "/e", EngineOptions::new(StoreId(1)))?;
    engine.insert_region(Region::whole(RegionId(1)))?;
    lock_keys(&engine, 1, &[b"a", b"k"], 8)?;
    let before = engine.txn_table(RegionId(1)).ok_or("no table")?;
    engine.checkpoint(RegionId(1), 10)?;
    let engine = reopen(&fs, engine)?;
    assert_eq!(engine.txn_table(RegionId(1)), Some(before));
    assert_eq!(engine.txn_lock_total(), 2, "the store-wide count is rebuilt at open");
    assert!(engine.txn_lock(RegionId(1), b"k").is_some());
    Ok(())
}

/// The barrier variants write each region's state into the image they produce; the
/// plain ones leave the parent's image, which each part reads its range of at open.
#[test]
fn split_and_merge_images_carry_each_parts_state_across_a_restart() -> TestResult {
    for barrier in [true, false] {
        let fs = Arc::new(SimFs::new());
        let engine = Engine::open(fs.clone(), "/e", EngineOptions::new(StoreId(1)))?;
        engine.insert_region(Region::whole(RegionId(1)))?;
        lock_keys(&engine, 1, &[b"b", b"p", b"x"], 5)?;
        let (keys, ids) = ([b"g".to_vec(), b"o".to_vec()], [RegionId(2), RegionId(3)]);
        if barrier {
            engine.split_at(RegionId(1), &keys, &ids, 10, 5)?;
        } else {
            engine.checkpoint(RegionId(1), 9)?;
            engine.split(RegionId(1), &keys, &ids)?;
        }
        let engine = reopen(&fs, engine)?;
        assert_eq!(lock_keys_of(&engine, 1), vec![Bytes::from_static(b"b")], "{barrier}");
        assert!(lock_keys_of(&engine, 2).is_empty());
        assert_eq!(
            lock_keys_of(&engine, 3),
            vec![Bytes::from_static(b"p"), Bytes::from_static(b"x")]
        );
        for id in [1, 2, 3] {
            let table = engine.txn_table(RegionId(id)).ok_or("no table")?;
            // Region 2 holds no key, lock or record, only the floor: with a barrier its
            // image is a file all the same (an empty image would lose the floor).
            assert_eq!(table.floor, 5, "region {id} keeps the floor ({barrier})");
            assert_eq!(table.records.len(), table.locks.len());
        }
        assert_eq!(engine.txn_lock_total(), 3);
        if barrier {
            engine.merge_at(RegionId(3), RegionId(2), 20)?;
        } else {
            engine.merge(RegionId(3), RegionId(2))?;
        }
        let engine = reopen(&fs, engine)?;
        assert_eq!(
            lock_keys_of(&engine, 2),
            vec![Bytes::from_static(b"p"), Bytes::from_static(b"x")]
        );
        assert_eq!(engine.txn_table(RegionId(2)).map(|t| t.floor), Some(5));
        assert_eq!(engine.txn_lock_total(), 3);
    }
    Ok(())
}

#[test]
fn an_installed_checkpoint_brings_its_state_and_replaces_the_old_one() -> TestResult {
    let leader = Engine::open(Arc::new(SimFs::new()), "/leader", EngineOptions::new(StoreId(2)))?;
    let fs = Arc::new(SimFs::new());
    let lagging = Engine::open(fs.clone(), "/e", EngineOptions::new(StoreId(1)))?;
    for engine in [&leader, &lagging] {
        engine.insert_region(Region::whole(RegionId(1)))?;
    }
    // The lagging replica still holds a lock the leader resolved since.
    lock_keys(&lagging, 1, &[b"old", b"older"], 1)?;
    lock_keys(&leader, 1, &[b"new"], 6)?;
    leader.checkpoint(RegionId(1), 9)?;
    let mut receiver = lagging.receive_checkpoint()?;
    for chunk in leader.checkpoint_chunks(RegionId(1), 64)? {
        receiver.push(&chunk)?;
    }
    lagging.install_checkpoint(receiver.finish()?)?;
    assert_eq!(lagging.txn_table(RegionId(1)), leader.txn_table(RegionId(1)));
    assert_eq!(lagging.txn_lock_total(), 1, "the old locks went with the old image");
    let lagging = reopen(&fs, lagging)?;
    assert_eq!(lagging.txn_table(RegionId(1)), leader.txn_table(RegionId(1)));
    assert_eq!(lagging.txn_lock_total(), 1);
    Ok(())
}

/// Locks and records count against the round's byte bound like data; a full round
/// still reads.
#[test]
fn txn_changes_count_against_the_rounds_bound() -> TestResult {
    let options = EngineOptions::new(StoreId(1)).max_round_bytes(64);
    let engine = Engine::open(Arc::new(SimFs::new()), "/e", options)?;
    engine.insert_region(Region::whole(RegionId(1)))?;
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    round.set_txn_lock(b"k", Some(Bytes::from(vec![1u8; 63])))?; // the round is full
    let full = round.set_txn_record(b"k", 1, Some(Bytes::from(vec![1u8; 8])));
    assert!(matches!(full, Err(Error::TooLarge { what: "round", .. })), "{full:?}");
    assert!(round.txn_lock(b"k")?.is_some(), "a full round still reads");
    assert_eq!(round.txn_record(b"k", 1)?, None, "the refused change is not there");
    round.commit()?;
    assert_eq!(engine.txn_lock_total(), 1);
    Ok(())
}

#[test]
fn the_oldest_lock_age_is_read_in_place_per_region() -> TestResult {
    let engine = engine_with(&[(1, b"", Some(b"m")), (2, b"m", None)])?;
    assert_eq!(engine.txn_oldest_lock_age_ms(RegionId(1), 5_000), 0, "no lock anywhere");
    let at = |created_at_ms: u64| {
        let mut lock = Lock::decode(&lock_entry(5, b"a", b"v")).expect("readable");
        lock.created_at_ms = created_at_ms;
        Bytes::from(lock.encode())
    };
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    round.set_txn_lock(b"a", Some(at(1_000)))?;
    round.set_txn_lock(b"b", Some(at(400)))?;
    round.set_txn_lock(b"c", Some(Bytes::from_static(&[9, 9])))?; // unreadable: no age
    round.prepare_for_region(RegionId(2), epoch(&engine, 2))?;
    round.set_txn_lock(b"x", Some(at(3_000)))?;
    round.commit()?;
    assert_eq!(engine.txn_oldest_lock_age_ms(RegionId(1), 5_000), 4_600);
    assert_eq!(engine.txn_oldest_lock_age_ms(RegionId(2), 5_000), 2_000);
    assert_eq!(engine.txn_oldest_lock_age_ms(RegionId(2), 2_000), 0, "a clock behind: 0");
    assert_eq!(engine.txn_oldest_lock_age_ms(RegionId(3), 5_000), 0, "no such region");
    // The same answer as the copy of the table it replaces.
    let table = engine.txn_table(RegionId(1)).unwrap_or_default();
    let copied = table
        .locks
        .values()
        .filter_map(|b| Lock::decode(b).ok())
        .map(|l| 5_000u64.saturating_sub(l.created_at_ms))
        .max();
    assert_eq!(copied, Some(4_600));
    Ok(())
}
