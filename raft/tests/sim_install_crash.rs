//! A6: a store crashes after a received snapshot's checkpoint is installed in its engine
//! (durably) and before the region's new log state is (that write waits for the
//! writer's next fsync). Before the fix the store refused to open at all ("the engine's
//! image is at index N, past the end of the log ...: restore this store from a
//! replica"), for every region, and the usual way out (wiping the data dir) is S1. Now
//! the checkpoint's header holds the snapshot's term and members, and open restarts
//! that region's log right after the image: the store opens, catches up, and holds
//! every acknowledged write.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_install_crash`.

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Op, Query, QueryResult};
use regionkv_wal::CrashMode;

const R1: RegionId = RegionId(1);
const SECOND: Duration = Duration::from_secs(1);

fn write(c: &mut SimCluster, key: &str, value: &str) -> bool {
    let op = Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()) };
    let deadline = c.now() + 10 * SECOND;
    while c.now() < deadline {
        let Some(leader) = c.wait_leader(R1, 5 * SECOND) else { return false };
        let pending = c.write(leader, R1, vec![op.clone()]);
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(())) => return true,
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(20)),
            Some(Err(e)) => panic!("unexpected write error: {e}"),
            None => {}
        }
    }
    false
}

fn image_index(c: &SimCluster, store: StoreId) -> u64 {
    c.engine(store).and_then(|e| e.image_index(R1).ok().flatten()).unwrap_or(0)
}

fn run(seed: u64) {
    let mut config = SimConfig::new(seed);
    config.checkpoint_log_bytes = 2 << 10; // checkpoint (and compact) often
    let mut c = SimCluster::new(config).unwrap();
    let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let lagging = c.store_ids().into_iter().find(|&s| s != leader).expect("a follower");
    c.faults().isolate(lagging);
    let value = "x".repeat(100);
    for i in 0..100 {
        assert!(write(&mut c, &format!("k{i:03}"), &value), "seed {seed}: write {i}");
    }
    let before = image_index(&c, lagging);
    c.faults().clear();
    // The moment the lagging store's engine holds the snapshot's image and its log
    // write has not been persisted yet (the simulator checks between events).
    let installed = c.run_until(30 * SECOND, |c| image_index(c, lagging) > before);
    assert!(installed, "seed {seed}: the lagging store installs a snapshot");
    c.crash(lagging, CrashMode::Lost);
    c.restart(lagging).unwrap_or_else(|e| panic!("seed {seed}: the store does not open: {e}"));
    // It catches up, and holds every write.
    let caught_up = |c: &mut SimCluster| {
        let commit = c.leader(R1).and_then(|l| c.status(l).first().map(|s| s.commit));
        let applied = c.status(lagging).first().filter(|s| s.initialized).map(|s| s.applied);
        commit.is_some() && applied >= commit
    };
    assert!(c.run_until(30 * SECOND, caught_up), "seed {seed}: it catches up");
    let rows = c.engine(lagging).expect("running").read_view().scan(b"k", None, 1000);
    assert_eq!(rows.len(), 100, "seed {seed}: every write on the recovered replica");
    assert!(write(&mut c, "after", "1"));
    let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let read = c.read(leader, R1, Query::Get { key: Bytes::from_static(b"k042"), read_ts: None });
    match c.wait(&read, 5 * SECOND) {
        Some(Ok(QueryResult::Value(Some(v)))) => assert_eq!(v, value.as_bytes()),
        other => panic!("seed {seed}: read {other:?}"),
    }
}

#[test]
fn a_crash_between_installing_a_snapshot_and_persisting_its_log_recovers_the_region() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (40..48).collect(),
    };
    for seed in seeds {
        run(seed);
    }
}
