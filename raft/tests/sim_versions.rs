//! The cluster version gate in the simulator (ARCHITECTURE.md, "Cluster versions"):
//! a new cluster starts at the newest version all its first stores run; a store run as
//! an older binary (`cluster_version_max = 1`) keeps the cluster at version 1 and
//! refuses, as a no-op, a command kind it does not know while the version says none
//! can exist, but halts its replica once its view of the version is above its binary;
//! a version above a binary halts that binary's replicas, never its store; a store
//! that ran at a version refuses to open under an older binary and opens again once
//! upgraded.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_versions`.

mod common;

use std::time::Duration;

use regionkv_engine::StoreId;
use regionkv_raft::directory::{self, DIRECTORY, DirCmd, DirResult};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::version::{CLUSTER_VERSION_MAX, IMAGE_HASH};
use regionkv_raft::{Error, Op};

use common::{R1, SECOND, directory};

const OLD: StoreId = StoreId(3);

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..=4).collect(),
    }
}

/// Three stores hosting the directory and region 1; the stores in `old` run as a
/// binary that supports cluster version 1 only.
fn cluster(seed: u64, old: &[StoreId]) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.directory = true;
    for &s in old {
        config.cluster_version_max.insert(s, 1);
    }
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
    c.wait_leader(R1, 10 * SECOND).expect("a leader of region 1");
    c
}

/// The version `store`'s directory replica holds.
fn held(c: &SimCluster, store: StoreId) -> u32 {
    let ctx = c.context(store).expect("running");
    directory::cluster_version(&ctx.directory.read_view()).unwrap().active
}

/// Region 1 takes a write through its leader.
fn region_1_serves(c: &mut SimCluster, seed: u64) {
    let op = Op::Put { key: "k".into(), value: "v".into() };
    assert!(common::write_r1(c, &[op], 10 * SECOND), "seed {seed}: region 1 takes no write");
}

#[test]
fn a_new_cluster_starts_at_the_newest_version_its_stores_run() {
    for seed in seeds() {
        let mut c = cluster(seed, &[]);
        let all = |c: &SimCluster| {
            c.store_ids().into_iter().all(|s| {
                held(c, s) == CLUSTER_VERSION_MAX
                    && c.cluster_version(s) == Some(CLUSTER_VERSION_MAX)
            })
        };
        assert!(c.run_until(10 * SECOND, |c| all(c)), "seed {seed}: the record never landed");
        for s in c.store_ids() {
            let ctx = c.context(s).unwrap();
            assert!(ctx.cluster_version.check(IMAGE_HASH).is_ok(), "seed {seed}");
            let record = directory::cluster_version(&ctx.directory.read_view()).unwrap();
            assert!(record.finalized_by.is_some() && record.at_index.is_some(), "{record:?}");
        }
    }
}

#[test]
fn an_older_store_keeps_the_cluster_at_1_and_refuses_a_kind_it_does_not_know() {
    for seed in seeds() {
        let mut c = cluster(seed, &[OLD]);
        c.run_for(3 * SECOND);
        for s in c.store_ids() {
            assert_eq!((held(&c, s), c.cluster_version(s)), (1, Some(1)), "seed {seed}: {s}");
            let refused = c.context(s).unwrap().cluster_version.check(IMAGE_HASH);
            assert!(matches!(refused, Err(Error::FeatureNotActive { needed: 2, .. })));
        }
        // A version set without a finalize's check (as a forged command would be):
        // the store that does not know the kind refuses it and goes on.
        let cmd = DirCmd::SetClusterVersion { target: 2, by: StoreId(1) };
        assert_eq!(directory(&mut c, &cmd).unwrap(), DirResult::ClusterVersion { active: 2 });
        let applied = |c: &mut SimCluster| {
            let leader = c.leader(DIRECTORY).expect("a leader");
            let at = |s| c.status(s).into_iter().find(|p| p.region.id == DIRECTORY).unwrap();
            at(OLD).applied >= at(leader).applied
        };
        assert!(c.run_until(10 * SECOND, applied), "seed {seed}: store 3 did not catch up");
        assert!(c.is_running(OLD), "seed {seed}");
        assert_eq!((held(&c, OLD), c.cluster_version(OLD)), (1, Some(1)), "seed {seed}");
        assert_eq!(c.metrics(OLD).unwrap().unknown_kinds_refused, 1, "seed {seed}");
        for s in [StoreId(1), StoreId(2)] {
            assert_eq!(c.metrics(s).unwrap().unknown_kinds_refused, 0, "seed {seed}");
        }
        region_1_serves(&mut c, seed);
    }
}

#[test]
fn an_older_store_above_its_version_halts_the_replica_and_refuses_to_reopen_until_upgraded() {
    for seed in seeds() {
        let mut c = cluster(seed, &[OLD]);
        // The store learns version 2 (as from another store's directory replica).
        assert!(c.context(OLD).unwrap().learn_cluster_version(2).unwrap());
        let cmd = DirCmd::SetClusterVersion { target: 2, by: StoreId(1) };
        assert_eq!(directory(&mut c, &cmd).unwrap(), DirResult::ClusterVersion { active: 2 });
        let halted = |c: &mut SimCluster| {
            let pending = c.directory(OLD, &DirCmd::AllocIds { count: 1 });
            matches!(pending.take(), Some(Err(Error::ReplicaHalted { .. })))
        };
        assert!(c.run_until(10 * SECOND, halted), "seed {seed}: the replica did not halt");
        let pending = c.directory(OLD, &DirCmd::AllocIds { count: 1 });
        match pending.take() {
            Some(Err(e @ Error::ReplicaHalted { .. })) => {
                let text = e.to_string();
                assert!(text.contains("cluster version 2 is active"), "{text}");
                assert!(text.contains("supports up to 1: upgrade this store"), "{text}");
            }
            other => panic!("seed {seed}: {other:?}"),
        }
        assert!(c.is_running(OLD), "seed {seed}: the store stopped");
        assert_eq!(c.metrics(OLD).unwrap().unknown_kinds_refused, 0, "seed {seed}");
        region_1_serves(&mut c, seed);
        // The same binary refuses to open the store again.
        c.stop(OLD);
        match c.restart(OLD) {
            Err(e @ Error::StoreVersionTooNew { ran: 2, supported: 1 }) => {
                assert!(e.to_string().contains("run a newer binary"), "{e}");
            }
            other => panic!("seed {seed}: an older binary opened the store: {other:?}"),
        }
        // Upgraded, it opens, applies its directory log and runs at 2.
        c.set_cluster_version_max(OLD, CLUSTER_VERSION_MAX);
        c.restart(OLD).unwrap();
        let caught_up = |c: &mut SimCluster| c.is_running(OLD) && held(c, OLD) == 2;
        assert!(c.run_until(10 * SECOND, caught_up), "seed {seed}: store 3 did not catch up");
        assert_eq!(c.cluster_version(OLD), Some(2), "seed {seed}");
        assert!(c.context(OLD).unwrap().cluster_version.check(IMAGE_HASH).is_ok());
        let pending = c.directory(OLD, &DirCmd::AllocIds { count: 1 });
        assert!(!matches!(pending.take(), Some(Err(Error::ReplicaHalted { .. }))), "seed {seed}");
    }
}

#[test]
fn a_version_above_a_binary_halts_its_replicas_never_its_store() {
    for seed in seeds() {
        let mut c = cluster(seed, &[]);
        c.run_until(10 * SECOND, |c| {
            c.store_ids().iter().all(|&s| held(c, s) == CLUSTER_VERSION_MAX)
        });
        let leader = c.wait_leader(DIRECTORY, 10 * SECOND).unwrap();
        let cmd = DirCmd::SetClusterVersion { target: CLUSTER_VERSION_MAX + 1, by: leader };
        let pending = c.directory(leader, &cmd);
        let halted = |c: &mut SimCluster| {
            c.store_ids().into_iter().all(|s| {
                let probe = c.directory(s, &DirCmd::AllocIds { count: 1 });
                matches!(probe.take(), Some(Err(Error::ReplicaHalted { .. })))
            })
        };
        assert!(c.run_until(10 * SECOND, halted), "seed {seed}: not every replica halted");
        assert!(!matches!(pending.take(), Some(Ok(_))), "seed {seed}: the proposer got success");
        for s in c.store_ids() {
            assert!(c.is_running(s), "seed {seed}: store {s} stopped");
            assert_eq!(
                held(&c, s),
                CLUSTER_VERSION_MAX,
                "seed {seed}: store {s} recorded a version it cannot run"
            );
        }
        region_1_serves(&mut c, seed);
    }
}

#[test]
fn a_store_given_the_directory_by_a_snapshot_learns_its_version() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        config.directory = true;
        config.spares = 1;
        config.checkpoint_log_bytes = 4 << 10;
        let mut c = SimCluster::new(config).unwrap();
        let spare = StoreId(4);
        c.run_until(10 * SECOND, |c| (1..=3).all(|s| held(c, StoreId(s)) == CLUSTER_VERSION_MAX));
        assert_eq!(c.cluster_version(spare), Some(1), "seed {seed}: the spare never ran");
        // Enough directory log for a checkpoint: a new replica is sent a snapshot.
        for _ in 0..400 {
            directory(&mut c, &DirCmd::AllocIds { count: 1 }).unwrap();
        }
        let peer = regionkv_engine::Peer { id: c.new_peer_id(), store: spare };
        let deadline = c.now() + 30 * SECOND;
        loop {
            assert!(c.now() < deadline, "seed {seed}: the learner was not added");
            let leader = c.wait_leader(DIRECTORY, 10 * SECOND).expect("a leader");
            let change = regionkv_raft::PeerChange::AddLearner(peer);
            let pending = c.change_peers(leader, DIRECTORY, change);
            match c.wait(&pending, 2 * SECOND) {
                Some(Ok(_)) => break,
                Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(50)),
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        let learned = |c: &mut SimCluster| c.cluster_version(spare) == Some(CLUSTER_VERSION_MAX);
        assert!(
            c.run_until(30 * SECOND, learned),
            "seed {seed}: the spare never learned the version"
        );
        assert_eq!(held(&c, spare), CLUSTER_VERSION_MAX, "seed {seed}");
    }
}
