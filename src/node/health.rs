//! The health monitor in a [`Node`](crate::Node): the node whose store leads the
//! directory's group runs it (ARCHITECTURE.md, "Health monitor"). It collects its own
//! store's status and asks every other member for its own over the client protocol; a
//! member that does not answer is left out (the monitor's clock decides when it is
//! down). Repairs go through the node's cluster driver, as a client's store add does.

use std::sync::Weak;

use regionkv_engine::StoreId;
use regionkv_raft::StateRole;
use regionkv_raft::directory::{DIRECTORY, HealthEvent, RegionRecord};

use super::NodeShared;
use crate::backend::Backend;
use crate::control::ClusterOps;
use crate::health::HealthHost;
use crate::proto::StoreStatus;

/// The health monitor's view of a node: this store in process, the others remote.
pub(super) struct NodeHealth(pub(super) Weak<NodeShared>);

impl HealthHost for NodeHealth {
    fn directory_leader(&self) -> Option<StoreId> {
        let shared = self.0.upgrade()?;
        let leads = !shared.is_shut_now()
            && shared.store.peer_status(DIRECTORY).is_some_and(|p| p.role == StateRole::Leader);
        leads.then_some(shared.id)
    }

    fn health_events(&self) -> Vec<(u64, HealthEvent)> {
        let Some(shared) = self.0.upgrade() else { return Vec::new() };
        let view = shared.store.context().directory.read_view();
        regionkv_raft::directory::health_events(&view).unwrap_or_default()
    }

    fn collect(&self) -> Vec<StoreStatus> {
        let Some(shared) = self.0.upgrade() else { return Vec::new() };
        let mut out = vec![shared.own_status()];
        for store in shared.remote.store_ids().into_iter().filter(|&s| s != shared.id) {
            if let Ok(status) = shared.remote.status(store) {
                out.push(status);
            }
        }
        out
    }

    fn directory(&self) -> Vec<RegionRecord> {
        let Some(shared) = self.0.upgrade() else { return Vec::new() };
        let view = shared.store.context().directory.read_view();
        regionkv_raft::directory::regions(&view).unwrap_or_default()
    }

    fn run_ops(&self, f: &mut dyn FnMut(&ClusterOps)) {
        if let Some(shared) = self.0.upgrade()
            && !shared.is_shut_now()
        {
            f(&shared.control);
        }
    }
}
