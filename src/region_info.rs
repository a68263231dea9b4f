//! [`RegionInfo`], the region table the facade hands back (`Cluster::regions`,
//! `Node::regions`, `Client::regions`), and how it is built from the stores' statuses.

use std::collections::BTreeMap;

use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::DIRECTORY;
use regionkv_raft::{PeerStatus, StateRole};

use crate::backend::newer;

/// A region as the cluster knows it: its range, epoch, replicas, and leader.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegionInfo {
    /// Id, range, epoch and replicas.
    pub region: Region,
    /// The store whose replica leads it, if one does.
    pub leader: Option<StoreId>,
    /// The replicas' roles, terms and indexes, by store.
    pub replicas: Vec<(StoreId, PeerStatus)>,
}

/// The user regions in key order from the statuses of the stores' replicas, each as
/// its most advanced replica sees it (the directory's own group is not listed).
pub(crate) fn region_table(statuses: Vec<(StoreId, Vec<PeerStatus>)>) -> Vec<RegionInfo> {
    let mut by_id: BTreeMap<RegionId, RegionInfo> = BTreeMap::new();
    for (store, peers) in statuses {
        for p in peers.into_iter().filter(|p| p.initialized && p.region.id != DIRECTORY) {
            let info = by_id.entry(p.region.id).or_insert_with(|| RegionInfo {
                region: p.region.clone(),
                leader: None,
                replicas: Vec::new(),
            });
            if newer(&p.region, &info.region) {
                info.region = p.region.clone();
            }
            if p.role == StateRole::Leader
                && info.replicas.iter().all(|(_, r)| r.role != StateRole::Leader || r.term < p.term)
            {
                info.leader = Some(store);
            }
            info.replicas.push((store, p));
        }
    }
    let mut regions: Vec<RegionInfo> = by_id.into_values().collect();
    regions.sort_by(|a, b| a.region.start.cmp(&b.region.start));
    // Only the newest region over each range (a lagging replica may hold an older one).
    let all = regions.clone();
    regions.retain(|r| {
        !all.iter().any(|o| {
            o.region.id != r.region.id
                && o.region.epoch.version > r.region.epoch.version
                && o.region.end.as_ref().is_none_or(|e| *e > r.region.start)
                && r.region.end.as_ref().is_none_or(|e| *e > o.region.start)
        })
    });
    regions
}
