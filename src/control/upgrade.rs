//! Cluster versions through the [`Backend`] seam: the status of an upgrade (the active
//! version and what every store reports) and its finalize, refused unless every store
//! of the cluster positively reports that it supports the target (ARCHITECTURE.md,
//! "Cluster versions").

use std::collections::BTreeSet;

use regionkv_engine::StoreId;
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult};
use regionkv_raft::version::CLUSTER_VERSION_MAX;

use super::ClusterOps;
use crate::defaults::ADMIN_DEADLINE;
use crate::error::{Error, Result};

/// Most regions a walk of the directory visits: a bound on the loop, far above any
/// cluster's count.
const REGIONS_WALKED_MAX: usize = 1 << 22;

/// The cluster's version and what each of its stores reports
/// ([`Cluster::upgrade_status`](crate::Cluster::upgrade_status), `regionkv client
/// upgrade status`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradeStatus {
    /// The active cluster version, as the directory holds it.
    pub active: u32,
    /// Every store of the cluster (each holding a replica of a region the directory
    /// lists, or of the directory), and every store the driver knows, by id.
    pub stores: Vec<StoreVersion>,
}

/// What one store reports of cluster versions. `None` is "not reported" (a binary
/// from before the version gate, or a store that did not answer), never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreVersion {
    /// The store.
    pub store: StoreId,
    /// The version it runs at, as it knows it.
    pub active: Option<u32>,
    /// The newest version it supports.
    pub max: Option<u32>,
}

impl StoreVersion {
    /// A report of `store`'s versions.
    pub fn new(store: StoreId, active: Option<u32>, max: Option<u32>) -> StoreVersion {
        StoreVersion { store, active, max }
    }
}

impl ClusterOps {
    /// The active cluster version, as the directory's replicas that answer hold it.
    pub fn cluster_version(&self) -> Result<u32> {
        self.backend.cluster_version().ok_or_else(|| Error::Unavailable {
            waited: std::time::Duration::ZERO,
            last: "no replica of the directory answered".into(),
        })
    }

    /// Every store that holds a replica of the directory (as any store that answers
    /// sees it) or of a region the directory lists (walked by key).
    fn cluster_stores(&self) -> Result<BTreeSet<StoreId>> {
        let mut stores = BTreeSet::new();
        for store in self.backend.store_ids() {
            if let Some(status) = self.backend.peer_status(store, DIRECTORY) {
                stores.extend(status.region.peers.iter().map(|p| p.store));
            }
        }
        let mut key = Vec::new();
        for _ in 0..REGIONS_WALKED_MAX {
            let record = self.backend.locate(&key).ok_or_else(|| Error::Unavailable {
                waited: std::time::Duration::ZERO,
                last: format!("no store knows the region holding {key:?}"),
            })?;
            stores.extend(record.region.peers.iter().map(|p| p.store));
            match record.region.end {
                Some(end) if end > key => key = end,
                Some(end) => {
                    return Err(Error::InvalidRequest(format!(
                        "the directory's region {} ends at {end:?}, not after {key:?}",
                        record.region.id
                    )));
                }
                None => return Ok(stores),
            }
        }
        Err(Error::InvalidRequest(format!("the directory lists over {REGIONS_WALKED_MAX} regions")))
    }

    /// The active version and what every store of the cluster reports.
    pub fn upgrade_status(&self) -> Result<UpgradeStatus> {
        let active = self.cluster_version()?;
        let mut stores = self.cluster_stores()?;
        stores.extend(self.backend.store_ids());
        let stores = stores
            .into_iter()
            .map(|s| self.backend.store_version(s).unwrap_or(StoreVersion::new(s, None, None)))
            .collect();
        Ok(UpgradeStatus { active, stores })
    }

    /// Raises the cluster version to `target` (default: the newest this binary
    /// runs), driven by store `by`; returns the active version after. Refused, with
    /// nothing proposed, unless every store of the cluster positively reports that it
    /// supports `target` ([`Error::UpgradeRefused`] names the first that does not). A
    /// target at or below the active version changes nothing.
    pub fn finalize_upgrade(&self, target: Option<u32>, by: StoreId) -> Result<u32> {
        let target = target.unwrap_or(CLUSTER_VERSION_MAX);
        if target == 0 {
            return Err(Error::InvalidRequest("cluster versions start at 1".into()));
        }
        for store in self.cluster_stores()? {
            let supported = self.backend.store_version(store).and_then(|v| v.max);
            if supported.is_none_or(|max| max < target) {
                return Err(Error::UpgradeRefused { store, target, supported });
            }
        }
        let cmd = DirCmd::SetClusterVersion { target, by };
        match self.directory(&cmd, ADMIN_DEADLINE)? {
            DirResult::ClusterVersion { active } => {
                tracing::info!(active, by = by.0, "cluster version finalized");
                Ok(active)
            }
            other => Err(Error::Protocol(format!("a finalize answered {other:?}"))),
        }
    }
}
