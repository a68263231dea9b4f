//! How a client reaches the stores: the [`Backend`] seam, and its in-process
//! implementation over a [`Cluster`](crate::Cluster)'s stores.
//!
//! Routing, retries and the merge driver are written against the seam only, so that a
//! client of stores in other processes (over TCP) reuses them as they are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::control::StoreVersion;
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::{self, DIRECTORY, DirCmd, DirResult, RegionRecord};
use regionkv_raft::{
    AdminRequest, ChangePeersRequest, MergeStatus, PeerStatus, ReadRequest, Reply, StateRole,
    Store, TxnRequest, WriteRequest,
};

use crate::defaults::{DIRECTORY_ATTEMPT_TIMEOUT, DRIVER_RETRY_PAUSE};

/// Requests to stores. Each call hands its reply to `reply` (or returns it), and fails
/// with a retryable error when the store cannot take it.
pub(crate) trait Backend: Send + Sync {
    /// True once the client's cluster is shut down for good.
    fn is_shut(&self) -> bool;
    /// Stores that may be reached.
    fn store_ids(&self) -> Vec<StoreId>;
    fn write(&self, store: StoreId, req: WriteRequest);
    fn read(&self, store: StoreId, req: ReadRequest);
    fn admin(&self, store: StoreId, req: AdminRequest);
    /// One membership change of one region, to `store`'s replica (its leader).
    fn change_peers(&self, store: StoreId, req: ChangePeersRequest);
    fn directory(&self, store: StoreId, cmd: DirCmd, reply: Reply<DirResult>);
    /// One transaction command to `store`'s replica of its region (its leader).
    fn txn(&self, store: StoreId, req: TxnRequest);
    /// `count` fresh ids from the directory (transaction ids; at most
    /// [`TXN_IDS_MAX`](crate::proto::TXN_IDS_MAX)); returns the first. Asks the
    /// directory's leader, retrying until `deadline`.
    fn txn_ids(&self, count: u64, deadline: Duration) -> crate::Result<u64> {
        directory_ids(self, count, deadline)
    }
    /// `count` consecutive timestamps from the oracle on `store` (the directory's
    /// leader, for them to be served); `reply` gets the first.
    fn timestamps(&self, store: StoreId, count: u32, reply: Reply<u64>);
    fn merge_status(&self, store: StoreId, region: RegionId) -> regionkv_raft::Result<MergeStatus>;
    /// The status of `store`'s replica of `region`, if it has one.
    fn peer_status(&self, store: StoreId, region: RegionId) -> Option<PeerStatus>;
    /// Where `key` lives, as some replica of the directory (or, before the directory
    /// heard of it, some store) knows it: possibly stale, which routing corrects.
    fn locate(&self, key: &[u8]) -> Option<RegionRecord>;
    /// The cluster version the directory holds, as the replicas of it that answer read
    /// it (the highest); `None` if none answered.
    fn cluster_version(&self) -> Option<u32>;
    /// What `store` reports of its cluster versions; `None` if it did not answer.
    fn store_version(&self, store: StoreId) -> Option<StoreVersion>;
    /// The duplications the directory holds, as a replica of it reads them (the
    /// leader's if it answers, else another: possibly stale); `None` if none answered.
    fn dups(&self) -> Option<Vec<directory::DupRecord>> {
        let mut stores = self.store_ids();
        // The directory's leader first: its replica is the freshest.
        if let Some(leader) = self.leader_of(DIRECTORY) {
            stores.retain(|s| *s != leader);
            stores.insert(0, leader);
        }
        stores.into_iter().find_map(|s| self.dups_of(s))
    }
    /// Runs a client's duplication command (`AddDup`, `AlterDup`) on the directory's
    /// leader, retrying until `deadline`: a raw directory command in process, a
    /// dedicated request over the client protocol.
    fn dup_command(&self, cmd: &DirCmd, deadline: Duration) -> crate::Result<DirResult> {
        crate::control::directory_on(self, cmd, deadline)
    }
    /// One duplication sink command to `store`'s replica of its region (its leader):
    /// in process, or over the client protocol (request 82).
    fn sink(&self, store: StoreId, req: regionkv_raft::sink::SinkRequest);
    /// The duplications `store`'s replica of the directory holds (`None`: it hosts
    /// none, or did not answer).
    fn dups_of(&self, store: StoreId) -> Option<Vec<directory::DupRecord>>;
    /// The store whose replica leads `region` with the highest term, if any is known.
    fn leader_of(&self, region: RegionId) -> Option<StoreId> {
        let mut best: Option<(u64, StoreId)> = None;
        for store in self.store_ids() {
            if let Some(s) = self.peer_status(store, region)
                && s.role == StateRole::Leader
                && best.is_none_or(|(term, _)| s.term > term)
            {
                best = Some((s.term, store));
            }
        }
        best.map(|(_, store)| store)
    }
    /// Duplication's verify: the fingerprint of each of `ranges` on `store`'s replica of
    /// `region`, with its applied index and tables as of it. Only stores in this process
    /// answer so far (over the client protocol: not built; client tags 84-87 are set
    /// aside for it).
    fn range_fingerprint(
        &self,
        store: StoreId,
        region: RegionId,
        ranges: &[regionkv_raft::dup_fingerprint::KeyRange],
    ) -> regionkv_raft::Result<regionkv_raft::dup_fingerprint::RegionFingerprint> {
        let _ = (store, region, ranges);
        Err(regionkv_raft::Error::InvalidRequest(
            "a range fingerprint is read only from a cluster in this process so far".into(),
        ))
    }
    /// Duplication's verify: `store`'s log of `region` after `after`
    /// (`Store::dup_read_log`). In this process only so far.
    fn dup_read_log(
        &self,
        store: StoreId,
        region: RegionId,
        after: u64,
        max_bytes: usize,
    ) -> regionkv_raft::Result<regionkv_raft::DupLogBatch> {
        let _ = (store, region, after, max_bytes);
        Err(regionkv_raft::Error::InvalidRequest(
            "a duplication log is read only from a cluster in this process so far".into(),
        ))
    }
    /// The in-process follower cluster registered as `name` (`None`: none, or not in
    /// this process).
    fn dup_target(&self, name: &str) -> Option<crate::Db> {
        let _ = name;
        None
    }
}

/// `count` fresh ids from the directory's leader, as `backend` reaches it (raw
/// directory commands: in process, or a node's own backend), retrying until
/// `deadline`.
pub(crate) fn directory_ids<B: Backend + ?Sized>(
    backend: &B,
    count: u64,
    deadline: Duration,
) -> crate::Result<u64> {
    use crate::error::Error;
    let start = Instant::now();
    let mut last = String::from("no leader of the directory");
    // Bounded by `deadline`; every failed turn sleeps.
    while start.elapsed() < deadline {
        if backend.is_shut() {
            return Err(Error::Shutdown);
        }
        if let Some(leader) = backend.leader_of(DIRECTORY) {
            let cmd = DirCmd::AllocIds { count };
            match crate::db::ask(DIRECTORY_ATTEMPT_TIMEOUT, |reply| {
                backend.directory(leader, cmd, reply);
            }) {
                Some(Ok(DirResult::Ids { first, .. })) => return Ok(first),
                Some(Ok(other)) => {
                    return Err(Error::Protocol(format!("the directory answered {other:?}")));
                }
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => last = e.to_string(),
                Some(Err(e)) => return Err(e.into()),
                None => last = format!("store {leader} did not answer"),
            }
        }
        std::thread::sleep(DRIVER_RETRY_PAUSE);
    }
    Err(Error::Unavailable { waited: start.elapsed(), last })
}

/// The cluster version `store`'s replica of the directory holds, if it hosts one.
pub(crate) fn directory_version(store: &Store) -> Option<u32> {
    let directory = &store.context().directory;
    directory.region(DIRECTORY)?;
    directory::cluster_version(&directory.read_view()).ok().map(|v| v.active)
}

/// The duplications `store`'s replica of the directory holds, if it hosts one (and it
/// reads).
pub(crate) fn directory_dups(store: &Store) -> Option<Vec<directory::DupRecord>> {
    let directory = &store.context().directory;
    directory.region(DIRECTORY)?;
    match directory::dups::dups(&directory.read_view()) {
        Ok(records) => Some(records),
        Err(e) => {
            tracing::warn!(error = %e, "the directory's duplication records do not read");
            None
        }
    }
}

/// What `store` (in this process) reports of its cluster versions.
pub(crate) fn local_version(store: &Store) -> StoreVersion {
    let id = store.context().config.store_id;
    StoreVersion::new(id, Some(store.cluster_version()), Some(store.cluster_version_max()))
}

/// The stores of a [`Cluster`](crate::Cluster), called in this process.
pub(crate) struct LocalStores {
    pub stores: RwLock<BTreeMap<StoreId, Arc<Store>>>,
    pub shut: AtomicBool,
    /// The follower clusters in this process its duplications ship to (the cluster's
    /// driver shares them).
    pub dup_targets: crate::dup::driver::Targets,
}

impl LocalStores {
    fn store(&self, id: StoreId) -> Option<Arc<Store>> {
        self.stores.read().get(&id).cloned()
    }

    fn all(&self) -> Vec<Arc<Store>> {
        self.stores.read().values().cloned().collect()
    }
}

/// A store that is not running answers like one shutting down: try elsewhere.
fn gone<T>(reply: Reply<T>) {
    reply(Err(regionkv_raft::Error::Cancelled));
}

impl Backend for LocalStores {
    fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Relaxed)
    }

    fn store_ids(&self) -> Vec<StoreId> {
        self.stores.read().keys().copied().collect()
    }

    fn write(&self, store: StoreId, req: WriteRequest) {
        match self.store(store) {
            // `Db` waits for the reply: the write may run on its thread.
            Some(s) => s.write_here(req),
            None => gone(req.reply),
        }
    }

    fn read(&self, store: StoreId, req: ReadRequest) {
        match self.store(store) {
            Some(s) => s.read(req),
            None => gone(req.reply),
        }
    }

    fn admin(&self, store: StoreId, req: AdminRequest) {
        match self.store(store) {
            Some(s) => s.admin(req),
            None => gone(req.reply),
        }
    }

    fn change_peers(&self, store: StoreId, req: ChangePeersRequest) {
        match self.store(store) {
            Some(s) => s.change_peers(req),
            None => gone(req.reply),
        }
    }

    fn directory(&self, store: StoreId, cmd: DirCmd, reply: Reply<DirResult>) {
        match self.store(store) {
            Some(s) => s.directory(cmd, reply),
            None => gone(reply),
        }
    }

    fn txn(&self, store: StoreId, req: TxnRequest) {
        match self.store(store) {
            Some(s) => s.txn(req),
            None => gone(req.reply),
        }
    }

    fn timestamps(&self, store: StoreId, count: u32, reply: Reply<u64>) {
        match self.store(store) {
            Some(s) => s.timestamps(count, reply),
            None => gone(reply),
        }
    }

    fn merge_status(&self, store: StoreId, region: RegionId) -> regionkv_raft::Result<MergeStatus> {
        self.store(store).ok_or(regionkv_raft::Error::Cancelled)?.merge_status(region)
    }

    fn peer_status(&self, store: StoreId, region: RegionId) -> Option<PeerStatus> {
        self.store(store)?.peer_status(region)
    }

    fn locate(&self, key: &[u8]) -> Option<RegionRecord> {
        locate_on(&self.all(), key)
    }

    fn cluster_version(&self) -> Option<u32> {
        self.all().iter().filter_map(|s| directory_version(s)).max()
    }

    fn store_version(&self, store: StoreId) -> Option<StoreVersion> {
        self.store(store).map(|s| local_version(&s))
    }

    fn dups_of(&self, store: StoreId) -> Option<Vec<directory::DupRecord>> {
        self.store(store).and_then(|s| directory_dups(&s))
    }

    fn sink(&self, store: StoreId, req: regionkv_raft::sink::SinkRequest) {
        match self.store(store) {
            Some(s) => s.sink(req),
            None => (req.reply)(Err(regionkv_raft::Error::Cancelled)),
        }
    }

    fn range_fingerprint(
        &self,
        store: StoreId,
        region: RegionId,
        ranges: &[regionkv_raft::dup_fingerprint::KeyRange],
    ) -> regionkv_raft::Result<regionkv_raft::dup_fingerprint::RegionFingerprint> {
        self.store(store).ok_or(regionkv_raft::Error::Cancelled)?.range_fingerprint(region, ranges)
    }

    fn dup_read_log(
        &self,
        store: StoreId,
        region: RegionId,
        after: u64,
        max_bytes: usize,
    ) -> regionkv_raft::Result<regionkv_raft::DupLogBatch> {
        self.store(store)
            .ok_or(regionkv_raft::Error::Cancelled)?
            .dup_read_log(region, after, max_bytes)
    }

    fn dup_target(&self, name: &str) -> Option<crate::Db> {
        self.dup_targets.read().get(name).cloned()
    }
}

/// Where `key` lives as `stores` know it: the newest record their replicas of the
/// directory hold, unless a region one of them hosts is newer still (a region the
/// directory has not heard of yet). On a tie the directory's record wins: it may name
/// the leader.
pub(crate) fn locate_on(stores: &[Arc<Store>], key: &[u8]) -> Option<RegionRecord> {
    let listed = stores.iter().filter_map(|store| {
        directory::lookup(&store.context().directory.read_view(), key).ok().flatten()
    });
    let hosted = stores.iter().filter_map(|store| {
        let region = store.context().engine.region_for_key(key)?;
        Some(RegionRecord { region, leader: None })
    });
    // The directory's records first, so that a hosted region must be strictly newer.
    listed.chain(hosted).fold(None, |best: Option<RegionRecord>, record| match best {
        Some(b) if !newer(&record.region, &b.region) => Some(b),
        _ => Some(record),
    })
}

/// True if `a` is a newer view than `b` of the regions holding some key.
pub(crate) fn newer(a: &Region, b: &Region) -> bool {
    (a.epoch.version, a.epoch.conf_ver) > (b.epoch.version, b.epoch.conf_ver)
}
