//! Poison pills: malformed admin and directory commands, writes and snapshots that every
//! replica refuses the same way, as a no-op with a typed error to whoever proposed
//! them. Before these fixes one such command stopped every store of its region (the
//! apply error stopped the store, and the committed entry was applied again after
//! every restart), or destroyed a live region's log. Each test proposes the pill, then
//! checks that the cluster keeps serving, that nothing was tombstoned, and that every
//! store restarts. The simulator's own check fails a run as soon as any store stops
//! (A1: its disks never fail, so nothing may stop a store).
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_poison`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::RegionId;
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Error, Op};

use common::{R1, SECOND, put};

/// Three stores hosting the directory and region 1, each with a leader.
fn cluster_with_directory(seed: u64) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.directory = true;
    // Room in a WAL record for a write over the engine's key limit.
    config.segment_bytes = 1 << 20;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
    c.wait_leader(R1, 10 * SECOND).expect("a leader of region 1");
    c
}

/// Runs `cmd` on the directory's leader, retrying routing errors.
fn directory(c: &mut SimCluster, cmd: &DirCmd) -> Result<DirResult, Error> {
    let deadline = c.now() + 10 * SECOND;
    let mut last = Error::NotLeader { region: DIRECTORY, leader: None };
    while c.now() < deadline {
        let Some(leader) = c.wait_leader(DIRECTORY, SECOND) else { continue };
        let pending = c.directory(leader, cmd);
        match c.wait(&pending, SECOND) {
            Some(Err(e)) if e.is_retryable() => last = e,
            Some(result) => return result,
            None => {}
        }
        c.run_for(Duration::from_millis(20));
    }
    Err(last)
}

/// The cluster serves: the directory allocates, region 1 takes a write, on every store
/// the regions it had are still there; then the same after every store restarts.
fn keeps_serving(c: &mut SimCluster, tag: &str) {
    for round in 0..2 {
        match directory(c, &DirCmd::AllocIds { count: 2 }) {
            Ok(DirResult::Ids { first, count: 2 }) => assert!(first >= 1000),
            other => panic!("{tag}: the directory does not allocate: {other:?}"),
        }
        assert!(put(c, &format!("{tag}-{round}"), "v", 10 * SECOND), "{tag}: no write");
        for store in c.store_ids() {
            let ids: Vec<RegionId> = c.status(store).iter().map(|p| p.region.id).collect();
            assert!(ids.contains(&DIRECTORY) && ids.contains(&R1), "{tag}: {ids:?}");
        }
        if round == 0 {
            for store in c.store_ids() {
                c.crash(store, regionkv_wal::CrashMode::Lost);
            }
            for store in c.store_ids() {
                c.restart(store).unwrap_or_else(|e| panic!("{tag}: restart failed: {e}"));
            }
        }
    }
}

#[test]
fn an_id_allocation_past_the_id_space_is_refused_and_every_store_keeps_serving() {
    let mut c = cluster_with_directory(1);
    let refused = directory(&mut c, &DirCmd::AllocIds { count: u64::MAX });
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    // Far below the id space, but above what one command may take.
    let refused = directory(&mut c, &DirCmd::AllocIds { count: 1 << 20 });
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    keeps_serving(&mut c, "alloc");
}

#[test]
fn a_write_over_the_engine_limits_is_refused_and_the_store_keeps_serving() {
    let mut c = cluster_with_directory(2);
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let key = Bytes::from(vec![b'k'; 100 << 10]);
    let pending = c.write(leader, R1, vec![Op::Put { key, value: Bytes::from_static(b"v") }]);
    let refused = c.wait(&pending, 5 * SECOND).expect("answered");
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    keeps_serving(&mut c, "limits");
}

#[test]
fn a_membership_change_committed_after_a_merge_prepare_is_refused_and_the_store_keeps_serving() {
    let mut c = cluster_with_directory(3);
    assert!(put(&mut c, "a", "1", 10 * SECOND) && put(&mut c, "x", "1", 10 * SECOND));
    let parts = common::split(&mut c, R1, &["m"]).unwrap();
    let source = parts[1].id;
    common::converge(&mut c);
    let leader = c.wait_leader(source, 10 * SECOND).unwrap();
    let target = c.region(leader, R1).unwrap();
    let victim = parts[1].peers.iter().find(|p| p.store != leader).unwrap().id;
    // Proposed in the same instant: the prepare first, the removal after it.
    let prepare = c.admin(leader, source, regionkv_raft::AdminCmd::PrepareMerge { target });
    let change = c.change_peers(leader, source, regionkv_raft::PeerChange::Remove(victim));
    assert!(c.wait(&prepare, 5 * SECOND).expect("prepared").is_ok());
    let refused = c.wait(&change, 5 * SECOND).expect("answered");
    assert!(matches!(refused, Err(Error::Merging { .. })), "{refused:?}");
    let members = c.region(leader, source).unwrap().peers;
    assert_eq!(members, parts[1].peers, "the source keeps the members the prepare saw");
    keeps_serving(&mut c, "conf-change");
}
