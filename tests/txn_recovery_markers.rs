//! The recovery daemon's deferred-gate markers outlive a restart: kept in the store
//! engine's manifest (task state `txn.recovery`), shown in
//! `StoreMetrics::txn_recovery_deferred` (the gate, and since when every turn was
//! deferred), cleared by the first turn past the gates; a saved state that does not
//! decode is dropped, never a panic.
//!
//! Bug fixed here: the markers lived in the daemon's memory only, so after a restart
//! nothing said how long recovery had been held back, and no metric showed it.

use std::time::Duration;

use regionkv::layers::raft::txn::recovery_state::{RecoveryState, TASK};
use regionkv::{Cluster, StoreId, TxnGate};

/// One store at cluster version 2: transactions are not active (G2 closed).
fn cluster_at_2(dir: &std::path::Path) -> Cluster {
    Cluster::builder()
        .dir(dir)
        .stores(1)
        .txn_recover_interval(Duration::from_secs(3600))
        .cluster_version_max(1, 2)
        .build()
        .expect("cluster")
}

fn deferred(cluster: &Cluster) -> Option<(TxnGate, u64)> {
    cluster.metrics()[0].1.txn_recovery_deferred
}

fn restart(cluster: &Cluster) {
    cluster.stop_store(1).unwrap();
    cluster.restart_store(1).unwrap();
}

#[test]
fn deferred_gate_markers_survive_a_restart_show_in_metrics_and_clear_when_a_turn_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_at_2(dir.path());
    assert_eq!(deferred(&cluster), None, "no turn yet");
    let turns = cluster.txn_recover(None);
    assert_eq!(turns[0].deferred, Some(TxnGate::ClusterVersion));
    let Some((TxnGate::ClusterVersion, since_ms)) = deferred(&cluster) else {
        panic!("the deferral is not in the metrics: {:?}", deferred(&cluster))
    };
    assert!(since_ms > 0);

    // Across a restart: the marker is read from the manifest before any turn, and the
    // next deferred turn keeps its start.
    restart(&cluster);
    assert_eq!(deferred(&cluster), Some((TxnGate::ClusterVersion, since_ms)));
    assert_eq!(cluster.txn_recover(None)[0].deferred, Some(TxnGate::ClusterVersion));
    assert_eq!(deferred(&cluster), Some((TxnGate::ClusterVersion, since_ms)));
    let saved = cluster.with_store(1, |s| s.context().engine.task_state(TASK)).flatten();
    let saved = RecoveryState::decode(&saved.expect("saved")).unwrap();
    assert_eq!(saved.deferred.len(), 1);

    // The gate opens: the first turn past it clears the marker, for good.
    cluster.set_cluster_version_max(StoreId(1), 3);
    restart(&cluster);
    assert_eq!(cluster.finalize_upgrade(Some(3)).unwrap(), 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.txn_recover(None)[0].deferred.is_some() {
        assert!(std::time::Instant::now() < deadline, "the gate never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(deferred(&cluster), None);
    restart(&cluster);
    assert_eq!(deferred(&cluster), None);
    assert_eq!(cluster.with_store(1, |s| s.context().engine.task_state(TASK)), Some(None));
    cluster.shutdown().unwrap();
}

#[test]
fn a_saved_state_that_does_not_decode_is_dropped_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_at_2(dir.path());
    // A newer format, then damage: neither is read, the daemon starts afresh.
    for garbage in [vec![9, 1, 2, 3], vec![1, 1, 0, 50]] {
        cluster
            .with_store(1, |s| s.context().engine.set_task_state(TASK, Some(garbage.clone())))
            .unwrap()
            .unwrap();
        restart(&cluster);
        assert_eq!(deferred(&cluster), None, "unreadable: no marker");
        assert_eq!(cluster.txn_recover(None)[0].deferred, Some(TxnGate::ClusterVersion));
        assert!(matches!(deferred(&cluster), Some((TxnGate::ClusterVersion, _))));
    }
    cluster.shutdown().unwrap();
}
