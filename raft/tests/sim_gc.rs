//! Regression test: nothing ran `Engine::gc`, so old versions of keys that a snapshot
//! still needed when they were overwritten stayed in the memtable for good once their
//! leaves were not written again (a store that took reads while keys were rewritten
//! kept every rewritten version of its idle keys). Fix: the store core sweeps both of
//! its engines with `Engine::gc` on a periodic tick, so the versions go once no
//! snapshot can see them.

mod common;

use regionkv_engine::ReadView;
use regionkv_raft::sim::SimCluster;

use common::{SECOND, cluster, converge, put};

const KEYS: usize = 40;
const ROUNDS: usize = 10;

#[test]
fn versions_no_snapshot_sees_are_dropped_on_idle_keys() {
    let mut c = cluster(31);
    let stores = c.store_ids();
    // Each round rewrites every key while a snapshot of the previous state is held on
    // every store: commit cannot drop the version the snapshot sees.
    let mut held: Vec<ReadView> = Vec::new();
    for round in 0..ROUNDS {
        for &s in &stores {
            held.push(c.engine(s).expect("running").read_view());
        }
        for k in 0..KEYS {
            let (key, value) = (format!("k{k:02}"), format!("v{round}"));
            assert!(put(&mut c, &key, &value, 10 * SECOND), "write of {key} not acknowledged");
        }
    }
    converge(&mut c);
    let before = entries(&c);
    assert!(
        before.iter().all(|&n| n > KEYS * (ROUNDS - 1)),
        "the held snapshots kept the old versions: {before:?}"
    );
    // Nothing writes any more and no snapshot is left: only a sweep drops the versions.
    drop(held);
    c.run_for(5 * SECOND);
    let after = entries(&c);
    assert!(
        after.iter().all(|&n| n == KEYS),
        "one version per key is left: {before:?} -> {after:?}"
    );
}

/// Entries (versions and tombstones) in each store's engine.
fn entries(c: &SimCluster) -> Vec<usize> {
    c.store_ids().iter().map(|&s| c.engine(s).expect("running").memory().entries).collect()
}
