//! Regions split on their own when they pass the policy's key bound, and small
//! neighbours merge back once they shrink: every key survives both, and the client
//! follows without seeing an error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regionkv::{Cluster, SplitPolicy};

mod common;

use common::check_all;

fn key(i: usize) -> String {
    format!("key{i:05}")
}

/// Keys of `model` in each of the cluster's regions, in key order.
fn keys_per_region(cluster: &Cluster, model: &BTreeMap<String, String>) -> Vec<usize> {
    cluster
        .regions()
        .iter()
        .map(|info| {
            let (start, end) = (&info.region.start, &info.region.end);
            model
                .keys()
                .filter(|k| {
                    k.as_bytes() >= start.as_slice()
                        && end.as_ref().is_none_or(|e| k.as_bytes() < e.as_slice())
                })
                .count()
        })
        .collect()
}

/// Waits (bounded) until `cond` holds of the keys per region.
fn wait_for(
    cluster: &Cluster,
    model: &BTreeMap<String, String>,
    what: &str,
    cond: impl Fn(&[usize]) -> bool,
) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = keys_per_region(cluster, model);
        if cond(&counts) {
            return counts;
        }
        if Instant::now() >= deadline {
            // Which store leads each region, and each replica's state: what a stalled
            // split or merge needs to be told apart.
            for info in cluster.regions() {
                let replicas: Vec<_> = (info.replicas.iter())
                    .map(|(s, p)| (s.0, p.role, p.term, p.applied, p.hibernated))
                    .collect();
                eprintln!(
                    "region {} {:?}..{:?} epoch {:?} led from {:?}: {replicas:?}",
                    info.region.id,
                    String::from_utf8_lossy(&info.region.start),
                    info.region.end.as_deref().map(String::from_utf8_lossy),
                    info.region.epoch,
                    info.leader,
                );
            }
        }
        assert!(Instant::now() < deadline, "{what}: keys per region still {counts:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn regions_split_past_the_key_bound_and_merge_back_when_small() {
    let dir = tempfile::tempdir().unwrap();
    let policy = SplitPolicy::default()
        .split_above(u64::MAX, 200)
        .merge_below(u64::MAX, 40)
        .merge_after(Duration::from_millis(300))
        .check_interval(Duration::from_millis(100));
    let cluster = Cluster::builder()
        .dir(dir.path())
        .stores(3)
        .tick_interval(Duration::from_millis(20))
        .split_policy(policy)
        .build()
        .unwrap();
    let db = cluster.db();
    let mut model = BTreeMap::new();
    for i in 0..1000 {
        db.put(key(i), format!("v{i}")).unwrap();
        model.insert(key(i), format!("v{i}"));
    }
    // 1000 keys, at most 200 per region: the splits go on until every region is
    // under the bound (so at least five regions).
    let n = wait_for(&cluster, &model, "splits", |c| c.iter().all(|&k| k <= 200)).len();
    assert!(n >= 5, "{n} regions for 1000 keys at most 200 each");
    check_all(&db, &model);
    // Delete nearly everything: the regions become small and merge.
    for i in (0..1000).filter(|i| i % 100 != 0) {
        db.delete(key(i)).unwrap();
        model.remove(&key(i));
    }
    wait_for(&cluster, &model, "merges", |c| c.len() < n / 2);
    check_all(&db, &model);
    for k in model.keys() {
        assert!(db.get(k).unwrap().is_some(), "{k} lost");
    }
    cluster.shutdown().unwrap();
}
