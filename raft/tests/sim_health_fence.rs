//! The health monitor's fence, in the simulator: each repair step is recorded in the
//! directory before it is taken (`DirCmd::RecordHealth`), so only the directory's
//! current leader can take one; a leader cut off from its peers gets nothing applied.
//! The record is a command kind of cluster version 2: refused before it is active.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult, HealthEvent};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Error, version};

use common::SECOND;

fn cluster(seed: u64, max: Option<u32>) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.directory = true;
    if let Some(max) = max {
        config.cluster_version_max = (1..=3).map(|s| (StoreId(s), max)).collect::<BTreeMap<_, _>>();
    }
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
    c
}

fn step(region: u64) -> DirCmd {
    DirCmd::RecordHealth {
        event: Box::new(HealthEvent {
            holder: StoreId(1),
            region: RegionId(region),
            kind: "replace-replica".into(),
            reason: "store-dead".into(),
            event: "started".into(),
            remove: Some(StoreId(3)),
            add: None,
        }),
    }
}

/// `cmd` at `store`, waited for (bounded).
fn ask(c: &mut SimCluster, store: StoreId, cmd: &DirCmd) -> Option<Result<DirResult, Error>> {
    let pending = c.directory(store, cmd);
    c.wait(&pending, 2 * SECOND)
}

/// `cmd` at whichever store leads the directory, retrying routing errors.
fn record(c: &mut SimCluster, cmd: &DirCmd) -> Result<DirResult, Error> {
    let deadline = c.now() + 20 * SECOND;
    let mut last = Error::NotLeader { region: DIRECTORY, leader: None };
    while c.now() < deadline {
        if let Some(leader) = c.wait_leader(DIRECTORY, SECOND) {
            match ask(c, leader, cmd) {
                Some(Err(e)) if e.is_retryable() || matches!(e, Error::FeatureNotActive { .. }) => {
                    last = e;
                }
                Some(result) => return result,
                None => {}
            }
        }
        c.run_for(Duration::from_millis(50));
    }
    Err(last)
}

#[test]
fn a_directory_leader_cut_off_from_its_peers_records_no_repair_step() {
    for seed in 0..8 {
        let mut c = cluster(seed, None);
        // A new cluster runs at the newest version once its directory leader says so.
        let first = record(&mut c, &step(1));
        assert!(matches!(first, Ok(DirResult::Recorded { seq: 1 })), "seed {seed}: {first:?}");
        let old = c.wait_leader(DIRECTORY, SECOND).expect("a leader");
        c.faults().isolate(old);
        let stale = ask(&mut c, old, &step(2));
        assert!(
            !matches!(stale, Some(Ok(_))),
            "seed {seed}: the cut-off leader recorded {stale:?}"
        );
        // The others elect a leader, which records.
        let others: Vec<StoreId> = (1..=3).map(StoreId).filter(|s| *s != old).collect();
        let found =
            c.run_until(10 * SECOND, |c| c.leader(DIRECTORY).is_some_and(|l| others.contains(&l)));
        assert!(found, "seed {seed}: no new directory leader");
        let new = c.leader(DIRECTORY).expect("a leader");
        let second = ask(&mut c, new, &step(3));
        assert!(
            matches!(second, Some(Ok(DirResult::Recorded { seq: 2 }))),
            "seed {seed}: {second:?}"
        );
        // Healed, the old leader's attempt never applies: the next step is number 3.
        c.faults().clear();
        c.run_for(2 * SECOND);
        let third = record(&mut c, &step(4));
        assert!(matches!(third, Ok(DirResult::Recorded { seq: 3 })), "seed {seed}: {third:?}");
    }
}

#[test]
fn a_repair_step_is_refused_before_cluster_version_2_and_nothing_is_proposed() {
    let mut c = cluster(7, Some(1));
    let leader = c.wait_leader(DIRECTORY, SECOND).expect("a leader");
    match ask(&mut c, leader, &step(1)) {
        Some(Err(Error::FeatureNotActive { feature, active: 1, needed })) => {
            assert_eq!((feature, needed), (version::HEALTH_AUDIT.name, 2));
        }
        other => panic!("{other:?}"),
    }
}
