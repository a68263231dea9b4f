//! The health monitor in an in-process `Cluster`: silent on a healthy cluster, and a
//! store killed past the dead timeout has its replicas replaced on the spare store,
//! one membership change at a time, audited, with every acknowledged write kept.

use std::time::{Duration, Instant};

use regionkv::health::{AnalysisCode, HealthConfig, RepairKind};
use regionkv::{Cluster, StoreId};

fn config(dry_run: bool) -> HealthConfig {
    HealthConfig {
        replication_factor: 3,
        interval: Duration::from_millis(100),
        store_down_after: Duration::from_millis(800),
        store_dead_after: Duration::from_millis(2500),
        dry_run,
        ..HealthConfig::default()
    }
}

fn cluster(dir: &std::path::Path, dry_run: bool) -> Cluster {
    Cluster::builder()
        .dir(dir)
        .stores(3)
        .spares(1)
        .tick_interval(Duration::from_millis(20))
        .health(config(dry_run))
        .build()
        .unwrap()
}

/// Waits (bounded) until `cond` holds of the cluster.
fn wait_for(cluster: &Cluster, what: &str, mut cond: impl FnMut(&Cluster) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cond(cluster) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within 60 s; health: {:#?}", cluster.health());
}

fn detected(cluster: &Cluster, code: AnalysisCode) -> bool {
    cluster.health().is_some_and(|h| h.detections.iter().any(|d| d.code == code))
}

#[test]
fn a_dead_store_s_replicas_move_to_the_spare_and_nothing_else_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), false);
    let db = cluster.db();
    for i in 0..50 {
        db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
    }
    // Healthy: the monitor runs, sees every store, repairs nothing.
    wait_for(&cluster, "a monitor turn seeing four stores", |c| {
        c.health().is_some_and(|h| h.stores.iter().filter(|s| s.report.is_some()).count() == 4)
    });
    std::thread::sleep(Duration::from_secs(1));
    let healthy = cluster.health().unwrap();
    assert!(healthy.detections.is_empty(), "{:?}", healthy.detections);
    assert!(cluster.health_audit().is_empty());

    cluster.kill_store(3).unwrap();
    wait_for(&cluster, "store 3 down", |c| detected(c, AnalysisCode::StoreDown));
    for i in 50..80 {
        db.put(format!("k{i:03}"), format!("v{i}")).unwrap();
    }
    wait_for(&cluster, "store 3's replicas replaced on store 4", |c| {
        let directory = c.directory();
        let regions = c.regions();
        !regions.is_empty()
            && regions.iter().all(|r| {
                let stores: Vec<StoreId> = r.region.peers.iter().map(|p| p.store).collect();
                stores.len() == 3 && stores.contains(&StoreId(4)) && !stores.contains(&StoreId(3))
            })
            && directory.iter().all(|r| !r.region.peers.iter().any(|p| p.store == StoreId(3)))
    });
    let audit = cluster.health_audit();
    assert!(!audit.is_empty());
    for entry in &audit {
        assert_eq!(entry.repair.kind, RepairKind::ReplaceReplica, "{entry:?}");
        assert_eq!(entry.repair.remove, Some(StoreId(3)));
    }
    let started = audit.iter().filter(|e| e.event == "started").count();
    let done = audit.iter().filter(|e| e.event.starts_with("done")).count();
    assert_eq!(started, done, "{audit:?}");
    for i in 0..80 {
        assert_eq!(
            db.get(format!("k{i:03}")).unwrap().as_deref(),
            Some(format!("v{i}").as_bytes())
        );
    }
    cluster.shutdown().unwrap();
}

#[test]
fn a_dry_run_plans_the_replacement_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), true);
    cluster.db().put("a", "1").unwrap();
    wait_for(&cluster, "a first turn", |c| c.health().is_some());
    cluster.kill_store(3).unwrap();
    wait_for(&cluster, "the replacement planned", |c| {
        c.health().is_some_and(|h| {
            h.dry_run && h.planned.iter().any(|p| p.kind == RepairKind::ReplaceReplica)
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(cluster.health_audit().is_empty());
    assert!(cluster.regions().iter().all(|r| r.region.peers.iter().any(|p| p.store == StoreId(3))));
    cluster.shutdown().unwrap();
}
