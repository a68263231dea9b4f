//! Cluster-wide operations written against the [`Backend`] seam only: directory
//! commands, split and merge ([`ClusterOps`]), store membership (`membership`: a
//! store added to or removed from every region), and the background work of a cluster
//! ([`Background`]: forwarding leaders' reports to the directory, automatic split and
//! merge). A
//! [`Cluster`](crate::Cluster) runs them over its in-process stores, a
//! [`Node`](crate::Node) over its own store and its peers (in-process for the first,
//! the client protocol for the others).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regionkv_engine::{Epoch, Region, RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult, RegionRecord};
use regionkv_raft::merge_driver::{self, MergeOptions, RegionAdmin};
use regionkv_raft::txn::mvcc::split_boundary;
use regionkv_raft::{AdminCmd, AdminRequest, AdminResult, MergeStatus, StateRole, Store};

use crate::autosplit::{Action, Planner, SplitPolicy};
use crate::backend::Backend;
use crate::db::ask;
use crate::defaults::{
    ADMIN_ATTEMPT_TIMEOUT, ADMIN_DEADLINE, ALLOC_IDS_DEADLINE, DIRECTORY_ATTEMPT_TIMEOUT,
    DRIVER_RETRY_PAUSE, REPORT_DEADLINE, SPLIT_DEADLINE,
};
use crate::error::{Error, Result};
use crate::region_info::RegionInfo;
use crate::router::Router;

mod membership;
mod upgrade;

pub use upgrade::{StoreVersion, UpgradeStatus};

/// Runs `cmd` on the directory's leader as `backend` reaches it, retrying until
/// `timeout`.
pub(crate) fn directory_on<B: Backend + ?Sized>(
    backend: &B,
    cmd: &DirCmd,
    timeout: Duration,
) -> Result<DirResult> {
    let start = Instant::now();
    let mut last = String::from("no leader of the directory");
    // Bounded by `timeout`; every turn sleeps.
    while start.elapsed() < timeout {
        if backend.is_shut() {
            return Err(Error::Shutdown);
        }
        if let Some(leader) = backend.leader_of(DIRECTORY) {
            let cmd = cmd.clone();
            match ask(DIRECTORY_ATTEMPT_TIMEOUT, |reply| {
                backend.directory(leader, cmd, reply);
            }) {
                Some(Ok(result)) => return Ok(result),
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => last = e.to_string(),
                Some(Err(e)) => return Err(e.into()),
                None => last = format!("store {leader} did not answer"),
            }
        }
        std::thread::sleep(DRIVER_RETRY_PAUSE);
    }
    Err(Error::Unavailable { waited: start.elapsed(), last })
}

/// Drives directory commands, splits and merges through a backend.
pub(crate) struct ClusterOps {
    backend: Arc<dyn Backend>,
    router: Router,
    /// One split or merge driven at a time by this driver (a merge must have one).
    admin_lock: Mutex<()>,
}

impl ClusterOps {
    pub fn new(backend: Arc<dyn Backend>) -> ClusterOps {
        ClusterOps { router: Router::new(backend.clone()), backend, admin_lock: Mutex::new(()) }
    }

    /// The stores, as this driver reaches them.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Runs `cmd` on the directory's leader, retrying until `timeout`.
    pub fn directory(&self, cmd: &DirCmd, timeout: Duration) -> Result<DirResult> {
        directory_on(self.backend.as_ref(), cmd, timeout)
    }

    /// Allocates `count` fresh ids (regions and peers share the allocator); returns the
    /// first.
    pub fn alloc_ids(&self, count: u64) -> Result<u64> {
        match self.directory(&DirCmd::AllocIds { count }, ALLOC_IDS_DEADLINE)? {
            DirResult::Ids { first, .. } => Ok(first),
            other @ (DirResult::Reported { .. }
            | DirResult::Recorded { .. }
            | DirResult::ClusterVersion { .. }
            | DirResult::TsLimit { .. }
            | DirResult::GcSafepoint { .. }
            | DirResult::Dup { .. }) => {
                Err(Error::InvalidRequest(format!("the directory answered {other:?}")))
            }
        }
    }

    /// Splits the region holding the first of `keys` at every one of them, in one Raft
    /// command; see [`Cluster::split_keys`](crate::Cluster::split_keys).
    pub fn split_keys(&self, keys: &[Vec<u8>]) -> Result<Vec<Region>> {
        // A key inside a transactional user key's versions moves to its lock key.
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| split_boundary(k).to_vec()).collect();
        let keys = keys.as_slice();
        let Some(first) = keys.first() else { return Ok(Vec::new()) };
        let _one = self.admin_lock.lock();
        let start = Instant::now();
        // Bounded: each turn follows a changed region, for at most SPLIT_DEADLINE.
        loop {
            let record = self
                .router
                .locate(first)
                .ok_or_else(|| Error::InvalidRequest("no region holds the key".into()))?;
            let region = record.region;
            // Fresh ids for every attempt: a region refuses ids allocated before its
            // last split (its id floor), which another split may have raised meanwhile.
            let first_id = self.alloc_ids(keys.len() as u64)?;
            let new_ids: Vec<RegionId> =
                (0..keys.len() as u64).map(|i| RegionId(first_id + i)).collect();
            let cmd = AdminCmd::Split { split_keys: keys.to_vec(), new_ids };
            let mut admin = BackendAdmin { ops: self, start };
            match admin.admin(region.id, region.epoch, cmd) {
                Ok(AdminResult::Split(parts)) => {
                    self.router.learn(&parts);
                    return Ok(parts);
                }
                Ok(other) => {
                    return Err(Error::InvalidRequest(format!("a split answered {other:?}")));
                }
                // The router learned the region's current shape from the refusal.
                Err(regionkv_raft::Error::EpochNotMatch { .. })
                    if start.elapsed() < SPLIT_DEADLINE => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Splits the region holding `key` at `key`; see [`Cluster::split`](crate::Cluster::split).
    pub fn split(&self, key: &[u8], regions: impl Fn() -> Vec<RegionInfo>) -> Result<Vec<Region>> {
        // A key inside a transactional user key's versions moves to its lock key.
        let boundary = split_boundary(key);
        let key = boundary.as_ref();
        if key.is_empty() {
            return Err(Error::InvalidRequest("the empty key starts the first region".into()));
        }
        let _one = self.admin_lock.lock();
        let start = Instant::now();
        // Bounded: each turn follows a changed region, for at most SPLIT_DEADLINE.
        loop {
            let record = self
                .router
                .locate(key)
                .ok_or_else(|| Error::InvalidRequest("no region holds the key".into()))?;
            let region = record.region;
            if region.start == key {
                let left = regions().into_iter().find(|r| r.region.end.as_deref() == Some(key));
                return Ok(left.into_iter().map(|r| r.region).chain([region]).collect());
            }
            // A fresh id for every attempt (see `split_keys`).
            let new_id = RegionId(self.alloc_ids(1)?);
            let cmd = AdminCmd::Split { split_keys: vec![key.to_vec()], new_ids: vec![new_id] };
            let mut admin = BackendAdmin { ops: self, start };
            match admin.admin(region.id, region.epoch, cmd) {
                Ok(AdminResult::Split(parts)) => {
                    self.router.learn(&parts);
                    return Ok(parts);
                }
                Ok(other) => {
                    return Err(Error::InvalidRequest(format!("a split answered {other:?}")));
                }
                // The router learned the region's current shape from the refusal.
                Err(regionkv_raft::Error::EpochNotMatch { .. })
                    if start.elapsed() < SPLIT_DEADLINE => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Merges region `right` into its left neighbour `left`; see
    /// [`Cluster::merge`](crate::Cluster::merge).
    pub fn merge(&self, left: RegionId, right: RegionId) -> Result<Region> {
        let _one = self.admin_lock.lock();
        let mut admin = BackendAdmin { ops: self, start: Instant::now() };
        match merge_driver::merge(&mut admin, right, left, MergeOptions::default()) {
            Ok(merged) => {
                self.router.forget(right);
                self.router.learn(std::slice::from_ref(&merged));
                Ok(merged)
            }
            Err(e) => {
                // Prepared, rolled back or half done: both regions may have moved on
                // (a rollback bumps the source's version twice); the next request finds
                // them anew.
                self.router.forget(right);
                self.router.forget(left);
                Err(e.into())
            }
        }
    }
}

/// One replica's image hash at a `ComputeHash` index: its store, and `(index, hash)`
/// if known (see [`Cluster::verify_region`](crate::Cluster::verify_region)).
pub type ReplicaHash = (StoreId, Option<(u64, u64)>);

impl ClusterOps {
    /// Proposes a `ComputeHash` at `region`'s leader, then waits (up to
    /// [`ADMIN_DEADLINE`]) until every replica of the region on a reachable store
    /// applied it; see [`Cluster::verify_region`](crate::Cluster::verify_region).
    pub fn verify_region(&self, region: RegionId) -> Result<Vec<ReplicaHash>> {
        let mut admin = BackendAdmin { ops: self, start: Instant::now() };
        // The epoch is not checked for this command (`check_admin`).
        let index = match admin.admin(region, Epoch::default(), AdminCmd::ComputeHash)? {
            AdminResult::ImageHash { index, .. } => index,
            other => {
                return Err(Error::InvalidRequest(format!("a hash request answered {other:?}")));
            }
        };
        let at_index = |s: &regionkv_raft::PeerStatus| s.image_hash.filter(|(i, _)| *i == index);
        let deadline = Instant::now() + ADMIN_DEADLINE;
        // Bounded by the deadline; every turn sleeps.
        loop {
            let reachable = self.backend.store_ids();
            let statuses: Vec<(StoreId, Option<regionkv_raft::PeerStatus>)> =
                reachable.iter().map(|&s| (s, self.backend.peer_status(s, region))).collect();
            // The members as the most advanced replica knows them.
            let members: Vec<StoreId> = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref())
                .max_by_key(|s| (s.region.epoch.conf_ver, s.applied))
                .map(|s| s.region.peers.iter().map(|p| p.store).collect())
                .unwrap_or_default();
            let applied = |store: StoreId| {
                statuses
                    .iter()
                    .any(|(s, st)| *s == store && st.as_ref().is_some_and(|st| st.applied >= index))
            };
            let done = members.iter().all(|&m| !reachable.contains(&m) || applied(m));
            if done || Instant::now() >= deadline || self.backend.is_shut() {
                let mut out: Vec<ReplicaHash> = members
                    .iter()
                    .map(|&m| {
                        let status =
                            statuses.iter().find(|(s, _)| *s == m).and_then(|(_, s)| s.as_ref());
                        (m, status.and_then(at_index))
                    })
                    .collect();
                out.sort_by_key(|(s, _)| *s);
                return Ok(out);
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE);
        }
    }
}

/// Admin requests to region leaders, for the merge driver: finds the leader (the
/// router's hint, else the stores' view) and retries routing errors.
struct BackendAdmin<'a> {
    ops: &'a ClusterOps,
    start: Instant,
}

impl BackendAdmin<'_> {
    fn leader(&self, region: RegionId) -> Option<StoreId> {
        self.ops
            .router
            .cached(region)
            .and_then(|r| r.leader)
            .or_else(|| self.ops.backend.leader_of(region))
    }

    fn retry<T>(
        &mut self,
        region: RegionId,
        mut f: impl FnMut(&dyn Backend, StoreId) -> Option<regionkv_raft::Result<T>>,
    ) -> regionkv_raft::Result<T> {
        let deadline = Instant::now() + ADMIN_DEADLINE;
        let mut last = regionkv_raft::Error::NotLeader { region, leader: None };
        // Bounded by the deadline; every turn sleeps.
        while Instant::now() < deadline {
            if self.ops.backend.is_shut() {
                return Err(regionkv_raft::Error::Cancelled);
            }
            let Some(leader) = self.leader(region) else {
                std::thread::sleep(DRIVER_RETRY_PAUSE);
                continue;
            };
            match f(self.ops.backend.as_ref(), leader) {
                // Learned as `Db` learns from a refusal (`Db::call`): the leader's hint,
                // the region's current shape. A stale epoch is the caller's to act on
                // (route again, or give up): resending it until the deadline cannot help.
                Some(Err(regionkv_raft::Error::NotLeader { leader: Some(l), .. }))
                    if l != leader =>
                {
                    self.ops.router.set_leader(region, Some(l));
                    last = regionkv_raft::Error::NotLeader { region, leader: Some(l) };
                    continue;
                }
                Some(Err(e @ regionkv_raft::Error::EpochNotMatch { .. })) => {
                    if let regionkv_raft::Error::EpochNotMatch { current, .. } = &e {
                        self.ops.router.learn(current);
                        if current.iter().all(|r| r.id != region) {
                            self.ops.router.forget(region);
                        }
                    }
                    return Err(e);
                }
                Some(Err(e @ regionkv_raft::Error::KeyNotInRegion { .. })) => {
                    if let regionkv_raft::Error::KeyNotInRegion { current, .. } = &e {
                        match current {
                            Some(r) => self.ops.router.learn(std::slice::from_ref(r)),
                            None => self.ops.router.forget(region),
                        }
                    }
                    return Err(e);
                }
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                    self.ops.router.set_leader(region, None);
                    last = e;
                }
                Some(result) => return result,
                None => last = regionkv_raft::Error::Timeout { region },
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE);
        }
        Err(last)
    }
}

impl RegionAdmin for BackendAdmin<'_> {
    fn admin(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        cmd: AdminCmd,
    ) -> regionkv_raft::Result<AdminResult> {
        self.retry(region, |backend, store| {
            let cmd = cmd.clone();
            ask(ADMIN_ATTEMPT_TIMEOUT, |reply| {
                backend.admin(store, AdminRequest { region, epoch, cmd, reply });
            })
        })
    }

    fn merge_status(&mut self, region: RegionId) -> regionkv_raft::Result<MergeStatus> {
        self.retry(region, |backend, store| Some(backend.merge_status(store, region)))
    }

    fn pause(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn elapsed(&mut self) -> Duration {
        self.start.elapsed()
    }
}

/// How often a driver's stores learn the cluster version from the directory.
const VERSION_INTERVAL: Duration = Duration::from_secs(1);

/// Teaches `stores` the cluster version the directory holds (a store without a
/// replica of the directory learns it only so; ARCHITECTURE.md, "Cluster versions").
fn learn_cluster_version(ops: &ClusterOps, stores: &[Arc<Store>]) {
    let Some(active) = ops.backend.cluster_version() else { return };
    for store in stores {
        if let Err(e) = store.learn_cluster_version(active) {
            tracing::warn!(store = store.context().config.store_id.0, error = %e, "could not persist the cluster version");
        }
    }
}

/// Most region records in one directory command.
const REPORTS_PER_COMMAND: usize = 512;

/// The background work of a cluster driver, one turn every
/// [`REPORT_INTERVAL`](crate::defaults::REPORT_INTERVAL): forwards what the stores'
/// leaders report (splits, merges, leadership) to the directory, and splits and merges
/// regions by a [`SplitPolicy`].
pub(crate) struct Background {
    pending: HashMap<RegionId, RegionRecord>,
    planner: Planner,
    next_check: Instant,
    /// When the stores next learn the cluster version from the directory.
    next_version: Instant,
    /// Duplications' steps.
    pub dup: crate::dup::driver::DupDriver,
}

impl Background {
    pub fn new() -> Background {
        Background {
            pending: HashMap::new(),
            planner: Planner::default(),
            next_check: Instant::now(),
            next_version: Instant::now(),
            dup: crate::dup::driver::DupDriver::new(),
        }
    }

    /// One turn over `stores` (those this driver runs in process).
    pub fn turn(&mut self, ops: &ClusterOps, stores: &[Arc<Store>], policy: &SplitPolicy) {
        if Instant::now() >= self.next_check {
            self.next_check = Instant::now() + policy.check_interval;
            self.split_and_merge(ops, stores, policy);
        }
        if Instant::now() >= self.next_version {
            self.next_version = Instant::now() + VERSION_INTERVAL;
            learn_cluster_version(ops, stores);
        }
        self.dup.turn(ops, stores);
        for store in stores {
            for record in store.take_reports() {
                self.pending.insert(record.region.id, record);
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let mut records: Vec<RegionRecord> = self.pending.values().cloned().collect();
        records.sort_by_key(|r| r.region.id);
        // Bounded commands: a split into thousands of regions reports thousands.
        for chunk in records.chunks(REPORTS_PER_COMMAND) {
            let cmd = DirCmd::Report { records: chunk.to_vec() };
            if let Err(e) = ops.directory(&cmd, REPORT_DEADLINE) {
                tracing::debug!(error = %e, "directory report deferred");
                break;
            }
            for r in chunk {
                self.pending.remove(&r.region.id);
            }
        }
    }

    /// Plans splits and merges of the regions the stores lead, each sized from its
    /// leader's engine, and carries them out like asked-for ones. A failure (a region
    /// that changed meanwhile, a leader that moved) only waits for the next check.
    fn split_and_merge(&mut self, ops: &ClusterOps, stores: &[Arc<Store>], policy: &SplitPolicy) {
        let led: Vec<Vec<Region>> = stores
            .iter()
            .map(|store| {
                store
                    .status()
                    .into_iter()
                    .filter(|p| {
                        p.role == StateRole::Leader && p.initialized && p.region.id != DIRECTORY
                    })
                    .map(|p| p.region)
                    .collect()
            })
            .collect();
        let views: Vec<(&regionkv_engine::Engine, &[Region])> = stores
            .iter()
            .zip(&led)
            .map(|(store, led)| (&store.context().engine, led.as_slice()))
            .collect();
        let actions = self.planner.plan_stores(policy, &views, Instant::now());
        for action in actions {
            if ops.backend.is_shut() {
                return;
            }
            let result = match &action {
                Action::Split { key, .. } => ops.split(key, Vec::new).map(drop),
                Action::Merge { left, right } => ops.merge(*left, *right).map(drop),
            };
            match result {
                Ok(()) => tracing::info!(?action, "automatic split or merge done"),
                Err(e) => tracing::debug!(?action, error = %e, "automatic split or merge not done"),
            }
        }
    }
}
