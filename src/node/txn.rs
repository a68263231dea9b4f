//! The transaction recovery daemon in a [`Node`]: one thread, its store's turns
//! (ARCHITECTURE.md, "The recovery daemon"), and the operator's entry points.

use std::sync::Arc;
use std::time::Duration;

use regionkv_engine::RegionId;

use super::{Node, NodeShared, NodeStores};
use crate::db::Db;
use crate::error::Result;
use crate::router::Router;
use crate::txn_recovery::{TxnEntry, TxnRecovery, TxnRecoveryStats, TxnRecoveryTurn};
use crate::version_gc::VersionGcStats;

/// Starts the node's daemon: it runs until the node stops or is gone.
pub(super) fn start(shared: &Arc<NodeShared>) -> Result<()> {
    let weak = Arc::downgrade(shared);
    shared.txn.start(
        format!("node-txn-recovery-{}", shared.id.0),
        Box::new(move || {
            let shared = weak.upgrade()?;
            if shared.is_shut_now() {
                return None;
            }
            let backend = Arc::new(NodeStores {
                shared: weak.clone(),
                id: shared.id,
                local: shared.store.clone(),
                remote: shared.remote.clone(),
            });
            Some((vec![shared.store.clone()], Db::new(Router::new(backend))))
        }),
    )
}

/// The entries of the regions the node's store leads (`older_than_ms`: at least that old).
pub(super) fn list(
    shared: &NodeShared,
    in_doubt_only: bool,
    older_than_ms: Option<u64>,
) -> Vec<TxnEntry> {
    TxnRecovery::list(&shared.store, in_doubt_only, older_than_ms.map(Duration::from_millis))
}

/// One turn now on the node's store (the node's own `Db`); a node that is stopping
/// answers a turn deferred at the shutdown gate.
pub(super) fn recover(shared: &NodeShared, region: Option<RegionId>) -> TxnRecoveryTurn {
    shared.txn.recover_host(region).into_iter().next().unwrap_or_else(|| TxnRecoveryTurn {
        store: shared.id,
        deferred: Some(regionkv_raft::txn::recovery::Gate::Shutdown),
        ..TxnRecoveryTurn::default()
    })
}

impl Node {
    /// The transaction locks and records of the regions this node's store leads; see
    /// [`Cluster::txn_list`](crate::Cluster::txn_list).
    pub fn txn_list(&self, in_doubt_only: bool, older_than: Option<Duration>) -> Vec<TxnEntry> {
        TxnRecovery::list(&self.shared.store, in_doubt_only, older_than)
    }

    /// One recovery turn now on this node's store (gates first); see
    /// [`Cluster::txn_recover`](crate::Cluster::txn_recover).
    pub fn txn_recover(&self, region: Option<RegionId>) -> TxnRecoveryTurn {
        recover(&self.shared, region)
    }

    /// One version GC turn now on this node's store (the safepoint `at`, or the
    /// oracle's timestamp minus [`NodeConfig::gc_life_time`](crate::NodeConfig)); see
    /// [`Cluster::version_gc`](crate::Cluster::version_gc).
    pub fn version_gc(&self, at: Option<u64>) -> Result<VersionGcStats> {
        let db = self.db();
        let turns = self.shared.txn.gc_now(std::slice::from_ref(&self.shared.store), &db, at)?;
        Ok(turns.into_iter().next().map(|(_, s)| s).unwrap_or_default())
    }

    /// The daemon's counters.
    pub fn txn_recovery_stats(&self) -> TxnRecoveryStats {
        self.shared
            .txn
            .stats()
            .into_iter()
            .find(|(id, _)| *id == self.shared.id)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }
}
