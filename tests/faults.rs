//! Faults for users' own tests: an in-process `Cluster` opened with a store left out,
//! and its network's fault rules (partition, isolate, drops scoped by store and
//! region), each healed and followed by every replica converging.

use std::time::{Duration, Instant};

use regionkv::faults::{Action, Rule, Scope};
use regionkv::{Cluster, StoreId};

fn key(i: usize) -> String {
    format!("key{i:03}")
}

/// Waits until `store`'s own replica holds `value` under `key`.
fn replica_has(cluster: &Cluster, store: u64, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if cluster.local_get(store, key).ok().flatten().as_deref() == Some(value.as_bytes()) {
            return;
        }
        assert!(Instant::now() < deadline, "store {store} never got {key}={value}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn builder(dir: &std::path::Path) -> regionkv::ClusterBuilder {
    Cluster::builder().dir(dir).stores(3).tick_interval(Duration::from_millis(20))
}

#[test]
fn a_store_left_out_at_start_joins_later_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = builder(dir.path()).leave_out(3).build().unwrap();
    assert_eq!(cluster.store_ids(), vec![StoreId(1), StoreId(2)]);
    let db = cluster.db();
    for i in 0..50 {
        db.put(key(i), format!("v{i}")).unwrap();
    }
    cluster.split(key(25)).unwrap();
    db.put(key(49), "last").unwrap();
    assert!(cluster.local_get(3, key(0)).is_err(), "store 3 is not running");

    cluster.restart_store(3).unwrap();
    replica_has(&cluster, 3, &key(0), "v0");
    replica_has(&cluster, 3, &key(49), "last");
    cluster.shutdown().unwrap();

    // Reopened, the cluster is not new: nothing is bootstrapped again.
    let cluster = builder(dir.path()).build().unwrap();
    assert_eq!(cluster.db().get(key(49)).unwrap().as_deref(), Some(&b"last"[..]));
    cluster.shutdown().unwrap();
}

#[test]
fn leaving_out_a_store_that_is_not_in_the_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = builder(dir.path()).leave_out(4).build().unwrap_err();
    assert!(err.to_string().contains("store 4"), "{err}");
}

#[test]
fn a_partition_and_an_isolated_store_heal_and_every_replica_converges() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = builder(dir.path()).build().unwrap();
    let db = cluster.db();
    db.put("a", "1").unwrap();
    // A put returns once its leader applied it; store 1 may not have yet.
    replica_has(&cluster, 1, "a", "1");

    // Store 1 alone on one side: the majority side keeps (or elects) a leader.
    cluster.faults().partition(&[StoreId(1)], &[StoreId(2), StoreId(3)]);
    db.put("a", "2").unwrap();
    replica_has(&cluster, 2, "a", "2");
    replica_has(&cluster, 3, "a", "2");
    assert_eq!(cluster.local_get(1, "a").unwrap().as_deref(), Some(&b"1"[..]));
    cluster.faults().clear();
    replica_has(&cluster, 1, "a", "2");

    cluster.faults().isolate(StoreId(2));
    db.put("a", "3").unwrap();
    replica_has(&cluster, 1, "a", "3");
    assert_eq!(cluster.local_get(2, "a").unwrap().as_deref(), Some(&b"2"[..]));
    cluster.faults().clear();
    replica_has(&cluster, 2, "a", "3");
    cluster.shutdown().unwrap();
}

#[test]
fn a_rule_scoped_to_one_region_holds_back_only_that_region() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = builder(dir.path()).build().unwrap();
    let db = cluster.db();
    let parts = cluster.split("m").unwrap();
    let right = parts[1].id;
    // Nothing of the right region reaches store 3 (appends, heartbeats, snapshots).
    cluster.faults().add(Rule {
        scope: Scope { to: Some(StoreId(3)), region: Some(right), ..Scope::any() },
        action: Action::Drop(1.0),
    });
    db.put("b", "left").unwrap();
    db.put("x", "right").unwrap();
    replica_has(&cluster, 3, "b", "left");
    replica_has(&cluster, 2, "x", "right");
    replica_has(&cluster, 1, "x", "right");
    assert_eq!(cluster.local_get(3, "x").unwrap(), None);
    cluster.faults().clear();
    replica_has(&cluster, 3, "x", "right");
    cluster.shutdown().unwrap();
}
