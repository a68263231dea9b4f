//! Regions through the public API: `Cluster::split` and `Cluster::merge` on real files
//! and threads, a `Db` that routes across regions and follows changes it did not see,
//! and the cluster directory catching up with every change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regionkv::{Cluster, WriteBatch};

mod common;

use common::check_all;

fn cluster(dir: &std::path::Path) -> Cluster {
    Cluster::builder().dir(dir).stores(3).tick_interval(Duration::from_millis(20)).build().unwrap()
}

fn key(i: usize) -> String {
    format!("key{i:04}")
}

/// Waits until the directory lists exactly the cluster's regions.
fn directory_catches_up(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: Vec<_> = cluster.regions().into_iter().map(|r| r.region).collect();
        let listed: Vec<_> = cluster.directory().into_iter().map(|r| r.region).collect();
        if live == listed {
            return;
        }
        assert!(Instant::now() < deadline, "directory {listed:?} never matched {live:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn splits_and_merges_through_the_api_keep_every_key_and_the_directory_follows() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut model = BTreeMap::new();
    for i in 0..300 {
        db.put(key(i), format!("v{i}")).unwrap();
        model.insert(key(i), format!("v{i}"));
    }
    for at in [100, 200, 50, 250] {
        let parts = cluster.split(key(at)).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].start, key(at).as_bytes());
        check_all(&db, &model);
    }
    let regions = cluster.regions();
    assert_eq!(regions.len(), 5);
    assert!(regions.iter().all(|r| r.leader.is_some() && r.replicas.len() == 3));
    // Splitting at an existing boundary changes nothing.
    assert_eq!(cluster.split(key(100)).unwrap().len(), 2);
    assert_eq!(cluster.regions().len(), 5);
    directory_catches_up(&cluster);

    // Writes keep flowing across the new regions.
    for i in (0..300).step_by(3) {
        db.put(key(i), format!("w{i}")).unwrap();
        model.insert(key(i), format!("w{i}"));
    }
    check_all(&db, &model);

    // Merge neighbours back, right into left, until one region is left.
    while cluster.regions().len() > 1 {
        let regions = cluster.regions();
        let (left, right) = (regions[0].region.id, regions[1].region.id);
        let merged = cluster.merge(left, right).unwrap();
        assert_eq!(merged.id, left);
        assert_eq!(merged.end, regions[1].region.end);
        check_all(&db, &model);
    }
    directory_catches_up(&cluster);
    cluster.shutdown().unwrap();

    // Everything survives a restart, regions and data.
    let cluster = self::cluster(dir.path());
    assert_eq!(cluster.regions().len(), 1);
    check_all(&cluster.db(), &model);
    cluster.shutdown().unwrap();
}

#[test]
fn a_client_with_a_stale_cache_follows_changes_it_did_not_see() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    db.put("a", "1").unwrap();
    db.put("z", "1").unwrap();
    // Each `Cluster::db` has its own cache: the changes below happen behind this
    // client's back.
    let parts = cluster.split("m").unwrap();
    db.put("z", "2").unwrap(); // its cached region lost "z": refused, relearned, retried
    assert_eq!(db.get("z").unwrap().as_deref(), Some(&b"2"[..]));
    let merged = cluster.merge(parts[0].id, parts[1].id).unwrap();
    assert!(merged.end.is_none());
    db.put("q", "3").unwrap(); // the right region is gone: found anew
    assert_eq!(db.scan(.., 10).unwrap().len(), 3);
    cluster.shutdown().unwrap();
}

#[test]
fn a_batch_spanning_regions_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    cluster.split("m").unwrap();
    // Two-phase commit (tests/txn.rs has the rest: conflicts, readers, recovery, and
    // the refusal below cluster version 3).
    let mut batch = WriteBatch::new();
    batch.put("a", "1").put("x", "1");
    db.write(batch).unwrap();
    let mut batch = WriteBatch::new();
    batch.put("a", "1").put("b", "2");
    db.write(batch).unwrap();
    assert_eq!(db.scan(.., 10).unwrap().len(), 3);
    cluster.shutdown().unwrap();
}

/// Item 5 of issue 11: a merge rolled back with a store down (its source's version
/// moved twice: prepare, rollback), then every later split inside that region failed
/// after 10 s with `EpochNotMatch`, even once the store was back: the admin path kept
/// resending the epoch it had cached before the merge until its deadline. Admin paths
/// now learn the current regions from a refusal, as `Db` does.
#[test]
fn a_region_that_rolled_back_a_merge_can_be_split_again() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let mut model = BTreeMap::new();
    for i in 0..200 {
        db.put(key(i), format!("v{i}")).unwrap();
        model.insert(key(i), format!("v{i}"));
    }
    let parts = cluster.split(key(100)).unwrap();
    cluster.stop_store(3u64).unwrap();
    // The source's replica on store 3 never gets the prepare: the merge rolls back.
    let err = cluster.merge(parts[0].id, parts[1].id).unwrap_err();
    assert!(err.to_string().contains("rolled back"), "{err}");
    for i in (0..200).step_by(7) {
        db.put(key(i), format!("w{i}")).unwrap();
        model.insert(key(i), format!("w{i}"));
    }
    cluster.restart_store(3u64).unwrap();
    let started = Instant::now();
    let split = cluster.split(key(150)).unwrap();
    assert_eq!(split.len(), 2);
    assert_eq!(split[1].start, key(150).as_bytes());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(cluster.regions().len(), 3);
    check_all(&db, &model);
    cluster.shutdown().unwrap();
}
