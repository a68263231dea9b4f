//! Replica image hashes (`AdminCmd::ComputeHash`, issue 14): refused until the cluster
//! runs at version 2; then every replica hashes its image of the region at the
//! command's index, alike through writes, splits, snapshots and replays after a crash;
//! a replica whose engine holds something the log never carried reports another hash
//! at the same index (what the health monitor's replica divergence analysis reads),
//! and so does one whose transaction state differs from the others' (a lock).
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_image_hash`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{Epoch, RegionId, StoreId};
use regionkv_raft::directory::DIRECTORY;
use regionkv_raft::merge_driver::{self, MergeOptions, RegionAdmin};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{AdminCmd, AdminResult, Error, Op};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, converge, letters, put, split, write_keys};

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => default.collect(),
    }
}

/// A cluster whose voters run as binaries of cluster version 1: it starts at 1.
fn at_version_1(mut config: SimConfig) -> SimCluster {
    config.cluster_version_max = (1..=config.voters as u64).map(|s| (StoreId(s), 1)).collect();
    SimCluster::new(config).unwrap()
}

/// Upgrades `store` to this binary (a restart as a binary of version 2) and tells it
/// the cluster runs at 2.
fn upgrade(c: &mut SimCluster, store: StoreId) {
    c.stop(store);
    c.set_cluster_version_max(store, 2);
    c.restart(store).unwrap();
    c.learn_cluster_version(store, 2);
}

fn learn_everywhere(c: &mut SimCluster, version: u32) {
    for store in c.store_ids() {
        c.learn_cluster_version(store, version);
    }
}

/// Proposes a `ComputeHash` on `region`'s leader (retrying routing); the leader's
/// `(index, hash)`.
fn compute(c: &mut SimCluster, region: RegionId) -> Result<(u64, u64), Error> {
    let epoch = c.leader(region).and_then(|l| c.region(l, region)).map(|r| r.epoch);
    match RegionAdmin::admin(c, region, epoch.unwrap_or_default(), AdminCmd::ComputeHash)? {
        AdminResult::ImageHash { index, hash } => Ok((index, hash)),
        other => panic!("a hash request answered {other:?}"),
    }
}

/// Every running replica's image hash once each applied `index` (bounded): by store.
fn hashes_at(
    c: &mut SimCluster,
    region: RegionId,
    index: u64,
) -> Vec<(StoreId, Option<(u64, u64)>)> {
    let hosting = |c: &SimCluster| -> Vec<StoreId> {
        c.store_ids()
            .into_iter()
            .filter(|&s| c.status(s).iter().any(|p| p.region.id == region && p.initialized))
            .collect()
    };
    let applied = c.run_until(10 * SECOND, |c| {
        hosting(c)
            .into_iter()
            .all(|s| c.status(s).iter().any(|p| p.region.id == region && p.applied >= index))
    });
    assert!(applied, "every replica of region {region} applies {index}");
    hosting(c)
        .into_iter()
        .map(|s| {
            let status = c.status(s).into_iter().find(|p| p.region.id == region);
            (s, status.and_then(|p| p.image_hash))
        })
        .collect()
}

/// Computes a hash of `region` and checks that every replica reports the leader's,
/// at the leader's index; returns it.
fn all_agree(c: &mut SimCluster, region: RegionId, tag: &str) -> (u64, u64) {
    let leader = compute(c, region).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let all = hashes_at(c, region, leader.0);
    assert!(all.len() >= 3, "{tag}: three replicas of region {region}: {all:?}");
    for (store, hash) in &all {
        assert_eq!(
            *hash,
            Some(leader),
            "{tag}: store {store}'s replica of region {region}: {all:?}"
        );
    }
    leader
}

#[test]
fn refused_until_the_cluster_runs_at_version_2_and_nothing_is_proposed() {
    let mut c = at_version_1(SimConfig::new(1));
    assert!(put(&mut c, "a", "1", 10 * SECOND));
    let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
    // Every store but the leader knows version 2: the leader decides.
    for store in c.store_ids().into_iter().filter(|&s| s != leader) {
        upgrade(&mut c, store);
    }
    assert!(c.run_until(10 * SECOND, |c| c.leader(R1) == Some(leader)), "the leader stays");
    let before = c.status(leader)[0].last_index;
    let pending = c.admin(leader, R1, AdminCmd::ComputeHash);
    match c.wait(&pending, SECOND) {
        Some(Err(Error::FeatureNotActive { feature, active, needed })) => {
            assert_eq!((feature, active, needed), ("image-hash", 1, 2));
        }
        other => panic!("{other:?}"),
    }
    c.run_for(SECOND);
    assert_eq!(c.status(leader)[0].last_index, before, "nothing was proposed");
    for store in c.store_ids() {
        assert_eq!(c.status(store)[0].image_hash, None, "store {store}");
    }
    // The periodic check is off by default, and refused the same way when on: see
    // `periodic_hashes_come_only_once_the_version_allows`.
    upgrade(&mut c, leader);
    let (index, _) = all_agree(&mut c, R1, "after learning version 2");
    assert!(index > before);
    // Accepted at any epoch (it changes nothing; the hash names the epoch it covered),
    // and it records nothing in the region's metadata.
    let meta = |c: &SimCluster| -> Vec<Option<u64>> {
        c.store_ids().into_iter().map(|s| c.engine(s).and_then(|e| e.meta_index(R1))).collect()
    };
    let meta_before = meta(&c);
    let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let stale = c.admin_at(leader, R1, Epoch { version: 0, conf_ver: 0 }, AdminCmd::ComputeHash);
    match c.wait(&stale, 5 * SECOND) {
        Some(Ok(AdminResult::ImageHash { index: at, .. })) => assert!(at > index),
        other => panic!("a stale epoch: {other:?}"),
    }
    c.run_for(SECOND);
    assert_eq!(meta(&c), meta_before);
}

#[test]
fn every_replica_reports_the_same_hash_through_writes_a_split_a_snapshot_and_a_merge() {
    for seed in seeds(0..6) {
        let mut config = SimConfig::new(200 + seed);
        config.directory = true;
        config.checkpoint_log_bytes = 4 << 10; // checkpoint and compact often: snapshots
        let mut c = SimCluster::new(config).unwrap();
        c.wait_leader(R1, 10 * SECOND).expect("a leader");
        c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
        learn_everywhere(&mut c, 2);
        let tag = |what: &str| format!("seed {seed}: {what}");
        let mut model = std::collections::BTreeMap::new();
        let empty = all_agree(&mut c, R1, &tag("empty"));
        write_keys(&mut c, &mut model, &letters(26), "v1");
        let written = all_agree(&mut c, R1, &tag("written"));
        assert_ne!(written.1, empty.1, "{}", tag("writes change the hash"));
        all_agree(&mut c, DIRECTORY, &tag("the directory"));
        // A split: each part hashes its own range at its own index.
        let parts = split(&mut c, R1, &["m"]).unwrap_or_else(|e| panic!("{}: {e}", tag("split")));
        converge(&mut c);
        for part in &parts {
            all_agree(&mut c, part.id, &tag("a split part"));
        }
        // A follower cut off while the leader writes and compacts past it catches up
        // by a snapshot; then hashes like the others.
        let right = parts[1].id;
        let leader = c.wait_leader(right, 10 * SECOND).expect("a leader of the right part");
        let lagging = c.store_ids().into_iter().find(|&s| s != leader).expect("a follower");
        let image = |c: &SimCluster| {
            c.engine(lagging).and_then(|e| e.image_index(right).ok().flatten()).unwrap_or(0)
        };
        let before = image(&c);
        c.faults().isolate(lagging);
        let value = "x".repeat(200);
        for i in 0..60 {
            assert!(put(&mut c, &format!("s{i:03}"), &value, 10 * SECOND), "{}", tag("write"));
        }
        c.faults().clear();
        assert!(
            c.run_until(30 * SECOND, |c| image(c) > before),
            "{}",
            tag("the lagging store installs a snapshot")
        );
        converge(&mut c);
        for part in &parts {
            all_agree(&mut c, part.id, &tag("after the snapshot"));
        }
        write_keys(&mut c, &mut model, &letters(26), "v2");
        all_agree(&mut c, parts[0].id, &tag("written again"));
        // Merged back: the target hashes the joined range.
        let merged = merge_driver::merge(&mut c, right, parts[0].id, MergeOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", tag("merge")));
        converge(&mut c);
        let after = all_agree(&mut c, merged.id, &tag("merged"));
        assert_eq!(common::scan_all(&mut c), {
            let mut all = model.clone();
            for i in 0..60 {
                all.insert(format!("s{i:03}"), value.clone());
            }
            all
        });
        assert_ne!(after.1, written.1, "{}", tag("the merged image is another"));
    }
}

#[test]
fn a_replica_whose_engine_diverged_reports_another_hash_at_the_same_index() {
    for seed in seeds(0..4) {
        let mut c = common::cluster(300 + seed);
        learn_everywhere(&mut c, 2);
        let mut model = std::collections::BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(10), "v");
        all_agree(&mut c, R1, &format!("seed {seed}: before"));
        let leader = c.leader(R1).expect("a leader");
        let rogue = c.store_ids().into_iter().find(|&s| s != leader).expect("a follower");
        // A key only this replica's engine holds: no Raft entry carried it.
        let epoch = c.region(rogue, R1).expect("hosted").epoch;
        let engine = c.engine(rogue).expect("running");
        let mut round = engine.begin_round();
        round.prepare_for_region(R1, epoch).unwrap();
        round.put(b"rogue", b"1").unwrap();
        round.commit().unwrap();
        let (index, hash) = compute(&mut c, R1).unwrap();
        let all = hashes_at(&mut c, R1, index);
        for (store, reported) in &all {
            let (at, h) = reported.unwrap_or_else(|| panic!("seed {seed}: store {store}: none"));
            assert_eq!(at, index, "seed {seed}: store {store}: {all:?}");
            if *store == rogue {
                assert_ne!(h, hash, "seed {seed}: the diverged replica: {all:?}");
            } else {
                assert_eq!(h, hash, "seed {seed}: store {store}: {all:?}");
            }
        }
        // Diverged again the other way (a key missing on one replica): detected too.
        let delete = Op::Delete { key: Bytes::from_static(b"rogue") };
        assert!(common::write_r1(&mut c, &[delete], 10 * SECOND));
        all_agree(&mut c, R1, &format!("seed {seed}: the rogue key deleted through Raft"));
    }
}

#[test]
fn replay_after_a_crash_reproduces_the_hash() {
    for seed in seeds(0..4) {
        let mut c = common::cluster(400 + seed);
        learn_everywhere(&mut c, 2);
        let mut model = std::collections::BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(20), "v");
        let computed = all_agree(&mut c, R1, &format!("seed {seed}"));
        // Writes after it: the replay must hash the image at the command's index, not
        // the image the store crashed with.
        write_keys(&mut c, &mut model, &letters(20), "w");
        converge(&mut c);
        for store in c.store_ids() {
            // The region's image on disk is older than the command: the restart
            // applies it again from the log.
            let image = c.engine(store).and_then(|e| e.image_index(R1).ok().flatten());
            assert!(image.is_none_or(|i| i < computed.0), "seed {seed}: image {image:?}");
            let mode = if store.0 % 2 == 0 { CrashMode::Lost } else { CrashMode::Persisted };
            c.crash(store, mode);
            c.restart(store).unwrap_or_else(|e| panic!("seed {seed}: store {store}: {e}"));
            let replayed = c.run_until(10 * SECOND, |c| {
                c.status(store).first().is_some_and(|p| p.applied >= computed.0)
            });
            assert!(replayed, "seed {seed}: store {store} applies its log again");
            let after = c.status(store)[0].image_hash;
            assert_eq!(after, Some(computed), "seed {seed}: store {store} after its restart");
        }
    }
}

#[test]
fn periodic_hashes_come_only_once_the_version_allows() {
    let mut config = SimConfig::new(500);
    config.image_hash_interval = Some(Duration::from_secs(2));
    let mut c = at_version_1(config);
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let every_replica =
        |c: &SimCluster| c.store_ids().into_iter().all(|s| c.status(s)[0].image_hash.is_some());
    // A write a second: a hibernating region is not woken for its hash, its turn
    // comes when a write wakes it.
    let mut writes = 0;
    let mut write_for = |c: &mut SimCluster, seconds: usize| {
        for _ in 0..seconds {
            assert!(put(c, &format!("k{writes}"), "v", 10 * SECOND));
            writes += 1;
            c.run_for(SECOND);
            if every_replica(c) {
                return;
            }
        }
    };
    write_for(&mut c, 8);
    for store in c.store_ids() {
        assert_eq!(c.status(store)[0].image_hash, None, "store {store}: gate closed");
    }
    for store in c.store_ids() {
        upgrade(&mut c, store);
        c.wait_leader(R1, 10 * SECOND).expect("a leader");
    }
    write_for(&mut c, 20);
    assert!(every_replica(&c), "a periodic hash on every replica");
    // The replicas that hashed at the leader's latest index agree with it.
    converge(&mut c);
    let leader = c.leader(R1).expect("a leader");
    let at_leader = c.status(leader)[0].image_hash.expect("hashed");
    let all = hashes_at(&mut c, R1, at_leader.0);
    for (store, hash) in &all {
        assert_eq!(*hash, Some(at_leader), "store {store}: {all:?}");
    }
}

#[test]
fn replicas_that_differ_only_in_a_lock_report_different_hashes() {
    for seed in seeds(0..2) {
        let mut c = common::cluster(320 + seed);
        learn_everywhere(&mut c, 2);
        let mut model = std::collections::BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(10), "v");
        let before = all_agree(&mut c, R1, &format!("seed {seed}: before"));
        let leader = c.leader(R1).expect("a leader");
        let rogue = c.store_ids().into_iter().find(|&s| s != leader).expect("a follower");
        // A lock only this replica's engine holds (its data is the others'): no Raft
        // entry carried it.
        let epoch = c.region(rogue, R1).expect("hosted").epoch;
        let engine = c.engine(rogue).expect("running");
        let mut round = engine.begin_round();
        round.prepare_for_region(R1, epoch).unwrap();
        round.set_txn_lock(b"b", Some(bytes::Bytes::from_static(b"\x01a lock"))).unwrap();
        round.commit().unwrap();
        let (index, hash) = compute(&mut c, R1).unwrap();
        assert_ne!(index, before.0);
        let all = hashes_at(&mut c, R1, index);
        for (store, reported) in &all {
            let (at, h) = reported.unwrap_or_else(|| panic!("seed {seed}: store {store}: none"));
            assert_eq!(at, index, "seed {seed}: store {store}: {all:?}");
            if *store == rogue {
                assert_ne!(h, hash, "seed {seed}: the replica holding a lock: {all:?}");
            } else {
                assert_eq!(h, hash, "seed {seed}: store {store}: {all:?}");
            }
        }
        // The lock removed on that replica: all agree again.
        let engine = c.engine(rogue).expect("running");
        let mut round = engine.begin_round();
        round.prepare_for_region(R1, epoch).unwrap();
        round.set_txn_lock(b"b", None).unwrap();
        round.commit().unwrap();
        all_agree(&mut c, R1, &format!("seed {seed}: the lock removed"));
    }
}
