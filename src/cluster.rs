//! [`Cluster`]: stores in this process, on real files, talking over in-process channels.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::admin::{self, MergeOptions, RegionAdmin};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult, RegionRecord};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{
    AdminCmd, AdminRequest, AdminResult, MergeStatus, PeerStatus, StateRole, Store, StoreConfig,
    StoreMetrics, StoreOptions,
};
use regionkv_wal::{RealFs, WalOptions};

use crate::autosplit::{Action, Planner, SplitPolicy};
use crate::backend::{Backend, LocalStores};
use crate::db::{Db, ask};
use crate::error::{Error, Result};
use crate::router::Router;

/// The region every new cluster starts with: the whole key space.
pub(crate) const FIRST_REGION: RegionId = RegionId(1);

/// How to build a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    dir: Option<PathBuf>,
    stores: usize,
    tick_interval: Duration,
    pollers: usize,
    segment_bytes: u64,
    checkpoint_log_bytes: u64,
    split_policy: SplitPolicy,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            dir: None,
            stores: 3,
            tick_interval: Duration::from_millis(50),
            pollers: 1,
            segment_bytes: 64 << 20,
            checkpoint_log_bytes: 64 << 20,
            split_policy: SplitPolicy::default(),
        }
    }
}

impl ClusterBuilder {
    /// The directory holding every store's files (required). A directory that already
    /// holds a cluster is reopened: each store recovers from its files.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How many stores (default 3). A new cluster replicates its first region on all.
    #[must_use]
    pub fn stores(mut self, stores: usize) -> Self {
        self.stores = stores;
        self
    }

    /// Time between Raft ticks (default 50 ms; the election timeout is 10-20 ticks).
    #[must_use]
    pub fn tick_interval(mut self, interval: Duration) -> Self {
        self.tick_interval = interval;
        self
    }

    /// Poller threads per store (default 1).
    #[must_use]
    pub fn pollers(mut self, pollers: usize) -> Self {
        self.pollers = pollers;
        self
    }

    /// Size of each WAL segment file (default 64 MiB).
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Checkpoint a region after this many bytes of applied log (default 64 MiB).
    #[must_use]
    pub fn checkpoint_log_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_log_bytes = bytes;
        self
    }

    /// When regions split and merge on their own (default: [`SplitPolicy::default`]).
    #[must_use]
    pub fn split_policy(mut self, policy: SplitPolicy) -> Self {
        self.split_policy = policy;
        self
    }

    /// Starts the cluster.
    pub fn build(self) -> Result<Cluster> {
        let dir = self
            .dir
            .clone()
            .ok_or_else(|| Error::InvalidRequest("Cluster::builder() needs a dir".into()))?;
        if self.stores == 0 {
            return Err(Error::InvalidRequest("a cluster needs at least one store".into()));
        }
        std::fs::create_dir_all(&dir)?;
        let fresh = !store_dir(&dir, StoreId(1)).exists();
        let local = Arc::new(LocalStores {
            stores: RwLock::new(BTreeMap::new()),
            shut: AtomicBool::new(false),
        });
        let inner = Arc::new(ClusterInner {
            dir,
            net: LocalNetwork::new(1),
            router: Router::new(local.clone()),
            local,
            builder: self,
            scheduler: Mutex::new(None),
            admin_lock: Mutex::new(()),
        });
        let ids: Vec<StoreId> = (1..=inner.builder.stores as u64).map(StoreId).collect();
        for &id in &ids {
            inner.start_store(id)?;
        }
        if fresh {
            // Every store replicates the directory and the first region; the peers of
            // bootstrapped regions take the ids of their stores.
            let peers: Vec<Peer> =
                ids.iter().map(|&s| Peer { id: PeerId(s.0), store: s }).collect();
            for id in [DIRECTORY, FIRST_REGION] {
                let region = Region { peers: peers.clone(), ..Region::whole(id) };
                for store in inner.local.stores.read().values() {
                    store.bootstrap_region(region.clone())?;
                }
            }
        }
        let scheduler = {
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("cluster-scheduler".into())
                .spawn(move || scheduler_loop(&inner))?
        };
        *inner.scheduler.lock() = Some(scheduler);
        Ok(Cluster { inner })
    }
}

/// How often the scheduler forwards region reports to the directory.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Most region records in one directory command.
const REPORTS_PER_COMMAND: usize = 512;

/// The cluster's background work: forwards what the stores' leaders report (splits,
/// merges, leadership) to the directory, and splits and merges regions by the
/// builder's [`SplitPolicy`]. Leaves when the cluster is dropped or shut.
fn scheduler_loop(inner: &std::sync::Weak<ClusterInner>) {
    let mut pending: HashMap<RegionId, RegionRecord> = HashMap::new();
    let mut planner = Planner::default();
    let mut next_check = Instant::now();
    loop {
        std::thread::sleep(REPORT_INTERVAL);
        let Some(inner) = inner.upgrade() else { return };
        if inner.local.is_shut() {
            return;
        }
        if Instant::now() >= next_check {
            let policy = inner.builder.split_policy.clone();
            next_check = Instant::now() + policy.check_interval;
            auto_split(&inner, &policy, &mut planner);
        }
        for store in inner.local.stores.read().values() {
            for record in store.take_reports() {
                pending.insert(record.region.id, record);
            }
        }
        if pending.is_empty() {
            continue;
        }
        let mut records: Vec<RegionRecord> = pending.values().cloned().collect();
        records.sort_by_key(|r| r.region.id);
        // Bounded commands: a split into thousands of regions reports thousands.
        for chunk in records.chunks(REPORTS_PER_COMMAND) {
            let cmd = DirCmd::Report { records: chunk.to_vec() };
            if inner.directory(&cmd, Duration::from_secs(2)).is_err() {
                break;
            }
            for r in chunk {
                pending.remove(&r.region.id);
            }
        }
    }
}

/// Plans splits and merges of the regions each store leads, from that store's
/// engine, and carries them out like asked-for ones. A failure (a region that changed
/// meanwhile, a leader that moved) only waits for the next check.
fn auto_split(inner: &Arc<ClusterInner>, policy: &SplitPolicy, planner: &mut Planner) {
    let stores: Vec<Arc<Store>> = inner.local.stores.read().values().cloned().collect();
    let mut actions = Vec::new();
    let mut led_anywhere = Vec::new();
    for store in &stores {
        let mut led: Vec<Region> = store
            .status()
            .into_iter()
            .filter(|p| p.role == StateRole::Leader && p.initialized && p.region.id != DIRECTORY)
            .map(|p| p.region)
            .collect();
        led.sort_by(|a, b| a.start.cmp(&b.start));
        led_anywhere.extend(led.iter().cloned());
        // One planner for the cluster: regions are planned by whichever store leads them.
        actions.extend(planner.plan_part(policy, &store.context().engine, &led, Instant::now()));
    }
    planner.keep_only(&led_anywhere);
    let cluster = Cluster { inner: inner.clone() };
    for action in actions {
        if inner.local.is_shut() {
            return;
        }
        let result = match &action {
            Action::Split { key, .. } => cluster.split(key).map(drop),
            Action::Merge { left, right } => cluster.merge(*left, *right).map(drop),
        };
        match result {
            Ok(()) => tracing::info!(?action, "automatic split or merge done"),
            Err(e) => tracing::debug!(?action, error = %e, "automatic split or merge not done"),
        }
    }
}

fn store_dir(dir: &Path, id: StoreId) -> PathBuf {
    dir.join(format!("store-{}", id.0))
}

pub(crate) struct ClusterInner {
    dir: PathBuf,
    net: LocalNetwork,
    local: Arc<LocalStores>,
    router: Router,
    builder: ClusterBuilder,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// One split or merge driven at a time (a merge must have one driver).
    admin_lock: Mutex<()>,
}

impl ClusterInner {
    fn options(&self, id: StoreId) -> StoreOptions {
        let b = &self.builder;
        let config = StoreConfig::new(id)
            .tick_interval(b.tick_interval)
            .checkpoint_log_bytes(b.checkpoint_log_bytes);
        let mut options = StoreOptions::new(config);
        options.pollers = b.pollers;
        options.wal = WalOptions::default().segment_bytes(b.segment_bytes);
        options
    }

    fn start_store(&self, id: StoreId) -> Result<()> {
        let transport: Arc<dyn Transport> = Arc::new(self.net.transport(id));
        let store = Store::start(
            Arc::new(RealFs),
            &store_dir(&self.dir, id),
            &self.options(id),
            &transport,
        )?;
        self.net.register(id, store.inbox());
        self.local.stores.write().insert(id, Arc::new(store));
        Ok(())
    }

    /// Runs `cmd` on the directory's leader, retrying until `timeout`.
    fn directory(&self, cmd: &DirCmd, timeout: Duration) -> Result<DirResult> {
        let start = Instant::now();
        let mut last = String::from("no leader");
        while start.elapsed() < timeout {
            if self.local.is_shut() {
                return Err(Error::Shutdown);
            }
            if let Some(leader) = self.local.leader_of(DIRECTORY) {
                let cmd = cmd.clone();
                match ask(Duration::from_secs(2), |reply| {
                    self.local.directory(leader, cmd, reply);
                }) {
                    Some(Ok(result)) => return Ok(result),
                    Some(Err(e)) if e.is_retryable() || e.is_cancelled() => last = e.to_string(),
                    Some(Err(e)) => return Err(e.into()),
                    None => last = "no answer".into(),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::Unavailable { waited: start.elapsed(), last })
    }

    /// Fresh ids from the directory.
    fn alloc_ids(&self, count: u64) -> Result<u64> {
        match self.directory(&DirCmd::AllocIds { count }, Duration::from_secs(10))? {
            DirResult::Ids { first, .. } => Ok(first),
            other @ DirResult::Reported { .. } => {
                Err(Error::InvalidRequest(format!("the directory answered {other:?}")))
            }
        }
    }
}

/// Admin requests to region leaders over the backend, for the merge driver: finds the
/// leader (the router's hint, else the stores' view), retries routing errors.
struct Admin<'a> {
    inner: &'a ClusterInner,
    start: Instant,
}

impl Admin<'_> {
    fn leader(&self, region: RegionId) -> Option<StoreId> {
        self.inner
            .router
            .cached(region)
            .and_then(|r| r.leader)
            .or_else(|| self.inner.local.leader_of(region))
    }

    fn retry<T>(
        &mut self,
        region: RegionId,
        mut f: impl FnMut(&ClusterInner, StoreId) -> Option<regionkv_raft::Result<T>>,
    ) -> regionkv_raft::Result<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = regionkv_raft::Error::NotLeader { region, leader: None };
        while Instant::now() < deadline {
            if self.inner.local.is_shut() {
                return Err(regionkv_raft::Error::Cancelled);
            }
            let Some(leader) = self.leader(region) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            match f(self.inner, leader) {
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                    self.inner.router.set_leader(region, None);
                    last = e;
                }
                Some(result) => return result,
                None => last = regionkv_raft::Error::Timeout { region },
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last)
    }
}

impl RegionAdmin for Admin<'_> {
    fn admin(
        &mut self,
        region: RegionId,
        epoch: Epoch,
        cmd: AdminCmd,
    ) -> regionkv_raft::Result<AdminResult> {
        self.retry(region, |inner, store| {
            let cmd = cmd.clone();
            ask(Duration::from_secs(5), |reply| {
                inner.local.admin(store, AdminRequest { region, epoch, cmd, reply });
            })
        })
    }

    fn merge_status(&mut self, region: RegionId) -> regionkv_raft::Result<MergeStatus> {
        self.retry(region, |inner, store| Some(inner.local.merge_status(store, region)))
    }

    fn pause(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn elapsed(&mut self) -> Duration {
        self.start.elapsed()
    }
}

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

/// Stores in this process, on real files, talking over in-process channels: for tests,
/// demos and embedding a replicated store in one process.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let cluster = regionkv::Cluster::builder().dir(dir.path()).stores(3).build()?;
/// let db = cluster.db();
/// db.put(b"hello", b"world")?;
/// assert_eq!(db.get(b"hello")?.as_deref(), Some(&b"world"[..]));
/// cluster.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.inner.dir)
            .field("stores", &self.store_ids())
            .finish()
    }
}

impl Cluster {
    /// Starts building a cluster.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// A new client of this cluster, with its own region cache (its clones share it).
    pub fn db(&self) -> Db {
        Db::new(Router::new(self.inner.local.clone()))
    }

    /// Ids of the running stores.
    pub fn store_ids(&self) -> Vec<StoreId> {
        self.inner.local.store_ids()
    }

    /// The status of every peer of every running store.
    pub fn status(&self) -> Vec<(StoreId, Vec<PeerStatus>)> {
        let stores: Vec<(StoreId, Arc<Store>)> =
            self.inner.local.stores.read().iter().map(|(&id, s)| (id, s.clone())).collect();
        stores.into_iter().map(|(id, s)| (id, s.status())).collect()
    }

    /// The metrics of every running store, by store id: regions, leaders, applied lag,
    /// write latency and batching, WAL fsync latency and group size.
    pub fn metrics(&self) -> Vec<(StoreId, StoreMetrics)> {
        let stores: Vec<(StoreId, Arc<Store>)> =
            self.inner.local.stores.read().iter().map(|(&id, s)| (id, s.clone())).collect();
        let mut out: Vec<(StoreId, StoreMetrics)> =
            stores.into_iter().map(|(id, s)| (id, s.metrics())).collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// The user regions of the cluster in key order, each as its most advanced
    /// replica sees it (the cluster directory's own group is not listed).
    pub fn regions(&self) -> Vec<RegionInfo> {
        let mut by_id: BTreeMap<RegionId, RegionInfo> = BTreeMap::new();
        for (store, peers) in self.status() {
            for p in peers.into_iter().filter(|p| p.initialized && p.region.id != DIRECTORY) {
                let info = by_id.entry(p.region.id).or_insert_with(|| RegionInfo {
                    region: p.region.clone(),
                    leader: None,
                    replicas: Vec::new(),
                });
                if crate::backend::newer(&p.region, &info.region) {
                    info.region = p.region.clone();
                }
                if p.role == StateRole::Leader
                    && info
                        .replicas
                        .iter()
                        .all(|(_, r)| r.role != StateRole::Leader || r.term < p.term)
                {
                    info.leader = Some(store);
                }
                info.replicas.push((store, p));
            }
        }
        // Only the newest region over each range (a lagging replica may still hold an
        // older one).
        let mut regions: Vec<RegionInfo> = by_id.into_values().collect();
        regions.sort_by(|a, b| a.region.start.cmp(&b.region.start));
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

    /// The regions as the cluster directory lists them (read from the replica of the
    /// directory on the first running store that has one: possibly a little behind).
    pub fn directory(&self) -> Vec<RegionRecord> {
        let stores = self.inner.local.stores.read();
        for store in stores.values() {
            let snapshot = store.context().directory.snapshot();
            if let Ok(regions) = regionkv_raft::directory::regions(&snapshot)
                && !regions.is_empty()
            {
                return regions;
            }
        }
        Vec::new()
    }

    /// Splits the region holding the first of `keys` at every one of them, in one
    /// Raft command (all must lie strictly inside that region, in increasing order):
    /// how a region is cut into many at once. Returns the regions, left first.
    pub fn split_keys<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Region>> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().to_vec()).collect();
        let Some(first) = keys.first() else { return Ok(Vec::new()) };
        let _one = self.inner.admin_lock.lock();
        let first_id = self.inner.alloc_ids(keys.len() as u64)?;
        let new_ids: Vec<RegionId> =
            (0..keys.len() as u64).map(|i| RegionId(first_id + i)).collect();
        let record = self
            .inner
            .router
            .locate(first)
            .ok_or_else(|| Error::InvalidRequest("no region holds the key".into()))?;
        let region = record.region;
        let cmd = AdminCmd::Split { split_keys: keys, new_ids };
        let mut admin = Admin { inner: &self.inner, start: Instant::now() };
        match admin.admin(region.id, region.epoch, cmd)? {
            AdminResult::Split(parts) => {
                self.inner.router.learn(&parts);
                Ok(parts)
            }
            other => Err(Error::InvalidRequest(format!("a split answered {other:?}"))),
        }
    }

    /// Splits the region holding `key` at `key` (which becomes the first key of a new
    /// region). Returns the two regions, left first. Splitting at a key that already
    /// starts a region changes nothing and returns that region and its left neighbour.
    pub fn split(&self, key: impl AsRef<[u8]>) -> Result<Vec<Region>> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(Error::InvalidRequest("the empty key starts the first region".into()));
        }
        let _one = self.inner.admin_lock.lock();
        let new_id = RegionId(self.inner.alloc_ids(1)?);
        let start = Instant::now();
        loop {
            let record = self
                .inner
                .router
                .locate(key)
                .ok_or_else(|| Error::InvalidRequest("no region holds the key".into()))?;
            let region = record.region;
            if region.start == key {
                let left =
                    self.regions().into_iter().find(|r| r.region.end.as_deref() == Some(key));
                return Ok(left.into_iter().map(|r| r.region).chain([region]).collect());
            }
            let cmd = AdminCmd::Split { split_keys: vec![key.to_vec()], new_ids: vec![new_id] };
            let mut admin = Admin { inner: &self.inner, start };
            match admin.admin(region.id, region.epoch, cmd) {
                Ok(AdminResult::Split(parts)) => {
                    self.inner.router.learn(&parts);
                    return Ok(parts);
                }
                Ok(other) => {
                    return Err(Error::InvalidRequest(format!("a split answered {other:?}")));
                }
                Err(regionkv_raft::Error::EpochNotMatch { current, .. })
                    if start.elapsed() < Duration::from_secs(10) =>
                {
                    // The region changed meanwhile: route again.
                    self.inner.router.learn(&current);
                    self.inner.router.forget(region.id);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Merges region `right` into its left neighbour `left` (both on the same stores):
    /// `left` grows over `right`'s range, `right` is gone. Returns the merged region.
    /// A merge that cannot complete is rolled back ([`regionkv_raft::Error::MergeAborted`]).
    pub fn merge(&self, left: RegionId, right: RegionId) -> Result<Region> {
        let _one = self.inner.admin_lock.lock();
        let mut admin = Admin { inner: &self.inner, start: Instant::now() };
        let merged = admin::merge(&mut admin, right, left, MergeOptions::default())?;
        self.inner.router.learn(std::slice::from_ref(&merged));
        self.inner.router.forget(right);
        self.inner.router.learn(std::slice::from_ref(&merged));
        Ok(merged)
    }

    fn take(&self, id: StoreId) -> Result<Arc<Store>> {
        self.inner.net.unregister(id);
        self.inner
            .local
            .stores
            .write()
            .remove(&id)
            .ok_or_else(|| Error::InvalidRequest(format!("store {id} is not running")))
    }

    /// Reads `key` from `store`'s own replica, without Raft: what that replica has
    /// applied so far (it may lag the leader). For checking that every replica holds
    /// the data, not for serving reads: use [`Db::get`] for those.
    pub fn local_get(&self, store: StoreId, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        let stores = self.inner.local.stores.read();
        let s = stores
            .get(&store)
            .ok_or_else(|| Error::InvalidRequest(format!("store {store} is not running")))?;
        Ok(s.context().engine.snapshot().get(key))
    }

    /// WAL counters of every running store (records, groups, fsyncs, ...).
    pub fn wal_stats(&self) -> Vec<(StoreId, regionkv_wal::WalStats)> {
        self.inner
            .local
            .stores
            .read()
            .iter()
            .map(|(&id, s)| (id, s.context().log.wal().stats()))
            .collect()
    }

    /// Stops a store cleanly (its timelines shut down, its WAL sealed).
    pub fn stop_store(&self, id: StoreId) -> Result<()> {
        self.take(id)?.shutdown()?;
        Ok(())
    }

    /// Stops a store abruptly, as a crash: nothing is flushed or closed.
    pub fn kill_store(&self, id: StoreId) -> Result<()> {
        self.take(id)?.kill();
        Ok(())
    }

    /// Starts a stopped or killed store again; it recovers from its files.
    pub fn restart_store(&self, id: StoreId) -> Result<()> {
        if self.inner.local.stores.read().contains_key(&id) {
            return Ok(());
        }
        self.inner.start_store(id)
    }

    /// Stops every store cleanly. Clients get [`Error::Shutdown`] afterwards.
    pub fn shutdown(&self) -> Result<()> {
        self.inner.local.shut.store(true, Ordering::SeqCst);
        if let Some(scheduler) = self.inner.scheduler.lock().take() {
            let _ = scheduler.join();
        }
        let stores = std::mem::take(&mut *self.inner.local.stores.write());
        let mut first_error = None;
        for (id, store) in stores {
            self.inner.net.unregister(id);
            if let Err(e) = store.shutdown() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }
}
