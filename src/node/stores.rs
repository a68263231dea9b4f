//! The [`Backend`] of a [`Node`](super::Node)'s `Db`: this node's store in process,
//! the other stores over the client protocol ([`RemoteStores`]); routing takes the
//! newer of what this store and the others know of a key's region.

use std::sync::{Arc, Weak};

use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::directory::{DirCmd, DirResult, RegionRecord};
use regionkv_raft::{
    AdminRequest, ChangePeersRequest, MergeStatus, PeerStatus, ReadRequest, Reply, Store,
    TxnRequest, WriteRequest,
};

use super::NodeShared;
use crate::backend::{Backend, directory_version, local_version, newer};
use crate::control::StoreVersion;
use crate::remote::RemoteStores;
use crate::server::ClientHandler;

/// This node's store in process, the other stores over the client protocol.
pub(super) struct NodeStores {
    pub(super) shared: Weak<NodeShared>,
    pub(super) id: StoreId,
    pub(super) local: Arc<Store>,
    pub(super) remote: Arc<RemoteStores>,
}

impl NodeStores {
    fn is_local(&self, store: StoreId) -> bool {
        store == self.id
    }
}

impl Backend for NodeStores {
    fn is_shut(&self) -> bool {
        self.shared.upgrade().is_none_or(|s| s.is_shut())
    }

    fn store_ids(&self) -> Vec<StoreId> {
        let mut ids = self.remote.store_ids();
        ids.push(self.id);
        ids.sort_unstable();
        ids
    }

    /// `Db` waits for the reply: a local write may run on its thread.
    fn write(&self, store: StoreId, req: WriteRequest) {
        if self.is_local(store) {
            self.local.write_here(req);
        } else {
            self.remote.write(store, req);
        }
    }

    fn read(&self, store: StoreId, req: ReadRequest) {
        if self.is_local(store) { self.local.read(req) } else { self.remote.read(store, req) }
    }

    fn admin(&self, store: StoreId, req: AdminRequest) {
        if self.is_local(store) { self.local.admin(req) } else { self.remote.admin(store, req) }
    }

    fn change_peers(&self, store: StoreId, req: ChangePeersRequest) {
        if self.is_local(store) {
            self.local.change_peers(req);
        } else {
            self.remote.change_peers(store, req);
        }
    }

    fn directory(&self, store: StoreId, cmd: DirCmd, reply: Reply<DirResult>) {
        if self.is_local(store) {
            self.local.directory(cmd, reply);
        } else {
            self.remote.directory(store, cmd, reply);
        }
    }

    fn txn(&self, store: StoreId, req: TxnRequest) {
        if self.is_local(store) { self.local.txn(req) } else { self.remote.txn(store, req) }
    }

    fn timestamps(&self, store: StoreId, count: u32, reply: Reply<u64>) {
        if self.is_local(store) {
            self.local.timestamps(count, reply);
        } else {
            self.remote.timestamps(store, count, reply);
        }
    }

    fn merge_status(&self, store: StoreId, region: RegionId) -> regionkv_raft::Result<MergeStatus> {
        if self.is_local(store) {
            self.local.merge_status(region)
        } else {
            self.remote.merge_status(store, region)
        }
    }

    fn peer_status(&self, store: StoreId, region: RegionId) -> Option<PeerStatus> {
        if self.is_local(store) {
            self.local.peer_status(region)
        } else {
            self.remote.peer_status(store, region)
        }
    }

    fn cluster_version(&self) -> Option<u32> {
        // The highest of this store's replica of the directory (it may lag) and the
        // others'.
        directory_version(&self.local).max(self.remote.cluster_version())
    }

    fn store_version(&self, store: StoreId) -> Option<StoreVersion> {
        if self.is_local(store) {
            Some(local_version(&self.local))
        } else {
            self.remote.store_version(store)
        }
    }

    fn dups_of(&self, store: StoreId) -> Option<Vec<regionkv_raft::directory::DupRecord>> {
        if self.is_local(store) {
            crate::backend::directory_dups(&self.local)
        } else {
            self.remote.dups_of(store)
        }
    }

    fn sink(&self, store: StoreId, req: regionkv_raft::sink::SinkRequest) {
        if self.is_local(store) { self.local.sink(req) } else { self.remote.sink(store, req) }
    }

    fn locate(&self, key: &[u8]) -> Option<RegionRecord> {
        let local = self.shared.upgrade().and_then(|s| s.locate_local(key));
        let remote = self.remote.locate(key);
        match (local, remote) {
            (Some(l), Some(r)) if newer(&r.region, &l.region) => Some(r),
            (Some(l), _) => Some(l),
            (None, r) => r,
        }
    }
}
