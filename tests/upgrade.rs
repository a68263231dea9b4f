//! The cluster version gate through a `Cluster` (ARCHITECTURE.md, "Cluster versions"):
//! a new cluster starts at the newest version its stores support; a store run as an
//! older binary holds a finalize back (refused, naming it, nothing proposed) until it
//! is upgraded; after the finalize every store runs at the new version, which survives
//! a restart of the whole cluster, and an older binary refuses to open such a store.

use std::time::{Duration, Instant};

use regionkv::layers::raft::version::{CLUSTER_VERSION_MAX, ClusterVersionView, IMAGE_HASH};
use regionkv::{Cluster, Error, StoreError, StoreId, UpgradeStatus};

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What store `id` reports.
fn reported(status: &UpgradeStatus, id: u64) -> (Option<u32>, Option<u32>) {
    let s = status.stores.iter().find(|s| s.store == StoreId(id)).expect("listed");
    (s.active, s.max)
}

#[test]
fn a_new_cluster_runs_at_the_newest_version() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::builder().dir(dir.path()).stores(3).build()?;
    let newest = Some(CLUSTER_VERSION_MAX);
    wait_for("the directory's version", || cluster.cluster_version().ok() == newest);
    let status = cluster.upgrade_status()?;
    assert_eq!(status.active, CLUSTER_VERSION_MAX);
    for id in 1..=3 {
        assert_eq!(reported(&status, id), (newest, newest));
    }
    // Finalizing again changes nothing.
    assert_eq!(cluster.finalize_upgrade(None)?, CLUSTER_VERSION_MAX);
    cluster.shutdown()
}

#[test]
fn an_older_store_holds_the_finalize_back_until_it_is_upgraded() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    // Binaries of versions 2, 2 and 1 (the newest binary's own version is in the test
    // above).
    let builder = Cluster::builder()
        .dir(dir.path())
        .stores(3)
        .cluster_version_max(1, 2)
        .cluster_version_max(2, 2)
        .cluster_version_max(3, 1);
    let cluster = builder.clone().build()?;
    cluster.db().put("k", "v")?;
    let status = cluster.upgrade_status()?;
    assert_eq!(status.active, 1);
    assert_eq!(reported(&status, 3), (Some(1), Some(1)));
    assert_eq!(reported(&status, 1), (Some(1), Some(2)));
    for s in &status.stores {
        let refused = ClusterVersionView::new(s.active.unwrap()).check(IMAGE_HASH);
        assert!(matches!(refused, Err(StoreError::FeatureNotActive { .. })), "{refused:?}");
    }
    // To version 2 (the newest these binaries all know).
    match cluster.finalize_upgrade(Some(2)) {
        Err(e @ Error::UpgradeRefused { store: StoreId(3), target: 2, supported: Some(1) }) => {
            assert!(e.to_string().contains("store 3 supports cluster versions up to 1"), "{e}");
        }
        other => panic!("a finalize with an older store was not refused: {other:?}"),
    }
    // Nothing was proposed.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.cluster_version()?, 1);

    // Store 3 is upgraded (restarted as the newer binary): the finalize goes through
    // and every store learns the version.
    cluster.stop_store(3)?;
    cluster.set_cluster_version_max(3, 2);
    cluster.restart_store(3)?;
    assert_eq!(cluster.finalize_upgrade(Some(2))?, 2);
    assert_eq!(cluster.cluster_version()?, 2);
    let status = cluster.upgrade_status()?;
    for id in 1..=3 {
        assert_eq!(reported(&status, id), (Some(2), Some(2)));
    }
    for s in &status.stores {
        assert!(ClusterVersionView::new(s.active.unwrap()).check(IMAGE_HASH).is_ok());
    }

    // An older binary refuses to open a store that ran at version 2.
    cluster.stop_store(3)?;
    cluster.set_cluster_version_max(3, 1);
    match cluster.restart_store(3) {
        Err(e @ Error::Store(StoreError::StoreVersionTooNew { ran: 2, supported: 1 })) => {
            let text = e.to_string();
            assert!(text.contains("this binary supports up to 1: run a newer binary"), "{text}");
        }
        other => panic!("an older binary opened the store: {other:?}"),
    }
    cluster.set_cluster_version_max(3, 2);
    cluster.restart_store(3)?;
    cluster.shutdown()?;

    // The whole cluster restarts at version 2: each store persisted it.
    let cluster = builder.cluster_version_max(3, 2).build()?;
    let status = cluster.upgrade_status()?;
    for id in 1..=3 {
        assert_eq!(reported(&status, id).0, Some(2));
    }
    assert_eq!(cluster.db().get("k")?.as_deref(), Some(&b"v"[..]));
    cluster.shutdown()
}
