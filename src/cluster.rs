//! [`Cluster`]: stores in this process, on real files, talking over in-process channels,
//! and [`ClusterBuilder`], how to start one (its defaults come from `defaults.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use regionkv_engine::{Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, RegionRecord};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::version::CLUSTER_VERSION_MAX;
use regionkv_raft::{PeerStatus, Store, StoreConfig, StoreMetrics, StoreOptions};
use regionkv_wal::{CancellationToken, RealFs, WalOptions};

use crate::autosplit::SplitPolicy;
use crate::backend::{Backend, LocalStores};
use crate::control::{Background, ClusterOps, UpgradeStatus};
use crate::db::Db;
use crate::defaults::{self, REPORT_INTERVAL};
use crate::error::{Error, Result};
use crate::health::{AuditEntry, HealthConfig, HealthHost, HealthReport, HealthRunner};
use crate::proto::StoreStatus;
use crate::region_info::{RegionInfo, region_table};
use crate::router::Router;
use crate::txn_recovery::{TxnDaemon, TxnEntry, TxnRecovery, TxnRecoveryStats, TxnRecoveryTurn};
use crate::version_gc::VersionGcStats;

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
    left_out: Vec<StoreId>,
    spares: usize,
    health: Option<HealthConfig>,
    cluster_version_max: BTreeMap<StoreId, u32>,
    txn_recover_interval: Duration,
    gc_life_time: Duration,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            dir: None,
            stores: defaults::STORES,
            tick_interval: defaults::TICK_INTERVAL,
            pollers: defaults::POLLERS,
            segment_bytes: WalOptions::default().segment_bytes,
            checkpoint_log_bytes: defaults::CHECKPOINT_LOG_BYTES,
            split_policy: SplitPolicy::default(),
            left_out: Vec::new(),
            spares: 0,
            health: None,
            txn_recover_interval: crate::txn_recovery::TXN_RECOVER_INTERVAL,
            gc_life_time: crate::version_gc::GC_LIFE_TIME,
            cluster_version_max: BTreeMap::new(),
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

    /// Leaves `store` out when the cluster starts: it is a member of every region a new
    /// cluster bootstraps, but it is not started (as if its process were down), so the
    /// others run on a quorum without it. [`Cluster::restart_store`] starts it later; a
    /// store that never ran fills its replicas from the others' snapshots. For testing
    /// an application under a missing store; may be given more than once.
    #[must_use]
    pub fn leave_out(mut self, store: impl Into<StoreId>) -> Self {
        self.left_out.push(store.into());
        self
    }

    /// Adds `n` spare stores (ids after the cluster's stores): started empty, members of
    /// no region, ready for the health monitor to place replicas on (a dead store's
    /// replicas are replaced there). Default 0.
    #[must_use]
    pub fn spares(mut self, n: usize) -> Self {
        self.spares = n;
        self
    }

    /// Runs `store` as a binary that supports cluster versions up to `max` (default:
    /// this binary's newest): for testing an upgrade with a store left behind. A new
    /// cluster starts at the newest version all its stores support.
    #[must_use]
    pub fn cluster_version_max(mut self, store: impl Into<StoreId>, max: u32) -> Self {
        self.cluster_version_max.insert(store.into(), max);
        self
    }

    /// When regions split and merge on their own (default: [`SplitPolicy::default`]).
    #[must_use]
    pub fn split_policy(mut self, policy: SplitPolicy) -> Self {
        self.split_policy = policy;
        self
    }

    /// How the health monitor judges and repairs (default: [`HealthConfig::default`],
    /// with the replication factor the number of stores: every store holds every region at the start).
    #[must_use]
    pub fn health(mut self, config: HealthConfig) -> Self {
        self.health = Some(config);
        self
    }

    /// How often each store's transaction recovery daemon takes a turn (default 5 s;
    /// see ARCHITECTURE.md, "The recovery daemon").
    #[must_use]
    pub fn txn_recover_interval(mut self, interval: Duration) -> Self {
        self.txn_recover_interval = interval;
        self
    }

    /// How long a replaced version stays readable before the version GC may collect
    /// it ([`GC_LIFE_TIME`](crate::GC_LIFE_TIME) by default): a transaction older than
    /// that gets [`Error::SnapshotTooOld`](crate::Error::SnapshotTooOld).
    #[must_use]
    pub fn gc_life_time(mut self, life: Duration) -> Self {
        self.gc_life_time = life;
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
        // New if no store has files yet (a store left out may never have run).
        let fresh = (1..=self.stores as u64).all(|id| !store_dir(&dir, StoreId(id)).exists());
        let local = Arc::new(LocalStores {
            stores: RwLock::new(BTreeMap::new()),
            shut: AtomicBool::new(false),
            dup_targets: crate::dup::driver::Targets::default(),
        });
        let dup_targets = local.dup_targets.clone();
        let inner = Arc::new(ClusterInner {
            dir,
            net: LocalNetwork::new(1),
            ops: ClusterOps::new(local.clone()),
            local,
            health: HealthRunner::new(self.health.clone().unwrap_or_else(|| HealthConfig {
                replication_factor: self.stores,
                ..HealthConfig::default()
            })),
            health_cancel: CancellationToken::new(),
            health_thread: Mutex::new(None),
            versions: Mutex::new(self.cluster_version_max.clone()),
            txn: TxnDaemon::with_gc(
                self.txn_recover_interval,
                self.gc_life_time,
                crate::version_gc::GC_INTERVAL,
            ),
            builder: self,
            scheduler: Mutex::new(None),
            dup_targets,
        });
        let ids: Vec<StoreId> = (1..=inner.builder.stores as u64).map(StoreId).collect();
        if let Some(id) = inner.builder.left_out.iter().find(|id| !ids.contains(id)) {
            return Err(Error::InvalidRequest(format!(
                "store {id} is left out, but the cluster's stores are 1 to {}",
                ids.len()
            )));
        }
        // A store of a new cluster joins the network only once it is bootstrapped:
        // a peer's vote request reaching it before would create a replica that holds
        // nothing and waits for a snapshot, which no leader can make before its group
        // committed an entry (no write would ever commit).
        for &id in ids.iter().filter(|id| !inner.builder.left_out.contains(id)) {
            inner.start_store(id, !fresh)?;
        }
        if fresh {
            // A store left out bootstraps when it first starts (`restart_store`); the
            // mark says it may, and is written before any other store runs a region.
            for &id in &inner.builder.left_out {
                write_durably(&pending_bootstrap(&inner.dir, id))?;
            }
            let stores: Vec<(StoreId, Arc<Store>)> =
                inner.local.stores.read().iter().map(|(&id, s)| (id, s.clone())).collect();
            for (_, store) in &stores {
                inner.bootstrap(store)?;
            }
            for (id, store) in &stores {
                inner.net.register(*id, store.inbox());
            }
        }
        for id in
            (1..=inner.builder.spares as u64).map(|i| StoreId(inner.builder.stores as u64 + i))
        {
            let first_start = !store_dir(&inner.dir, id).exists();
            inner.start_store(id, true)?;
            if first_start {
                // As a node that joins: every peer the cluster gives it has a greater id.
                let floor = inner.ops.alloc_ids(1)?;
                let store = inner.local.stores.read().get(&id).cloned();
                if let Some(store) = store {
                    store.peer_book().set_peer_floor(PeerId(floor))?;
                }
            }
        }
        let scheduler = {
            let inner = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("cluster-scheduler".into())
                .spawn(move || scheduler_loop(&inner))?
        };
        let health = {
            let host = ClusterHealth(Arc::downgrade(&inner));
            let (runner, cancel) = (inner.health.clone(), inner.health_cancel.clone());
            std::thread::Builder::new()
                .name("cluster-health".into())
                .spawn(move || runner.run(&host, &cancel))?
        };
        *inner.scheduler.lock() = Some(scheduler);
        *inner.health_thread.lock() = Some(health);
        let weak = Arc::downgrade(&inner);
        inner.txn.start(
            "cluster-txn-recovery".into(),
            Box::new(move || {
                let inner = weak.upgrade()?;
                let stores = inner.local.stores.read().values().cloned().collect();
                Some((stores, Db::new(Router::new(inner.local.clone()))))
            }),
        )?;
        Ok(Cluster { inner })
    }
}

/// The cluster's background work (see [`Background`]): leaves when the cluster is
/// dropped or shut.
fn scheduler_loop(inner: &std::sync::Weak<ClusterInner>) {
    let mut background = Background::new();
    if let Some(inner) = inner.upgrade() {
        background.dup.targets = inner.dup_targets.clone();
    }
    loop {
        std::thread::sleep(REPORT_INTERVAL);
        let Some(inner) = inner.upgrade() else { return };
        if inner.local.is_shut() {
            return;
        }
        let stores: Vec<Arc<Store>> = inner.local.stores.read().values().cloned().collect();
        background.turn(&inner.ops, &stores, &inner.builder.split_policy);
    }
}

fn store_dir(dir: &Path, id: StoreId) -> PathBuf {
    dir.join(format!("store-{}", id.0))
}

/// The mark of a store that was left out of a new cluster and has not bootstrapped yet.
fn pending_bootstrap(dir: &Path, id: StoreId) -> PathBuf {
    dir.join(format!("store-{}.bootstrap-pending", id.0))
}

/// Creates an empty file and makes it and its name durable.
fn write_durably(path: &Path) -> Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

pub(crate) struct ClusterInner {
    dir: PathBuf,
    net: LocalNetwork,
    local: Arc<LocalStores>,
    /// Directory commands, splits and merges over the local stores.
    ops: ClusterOps,
    builder: ClusterBuilder,
    /// The newest cluster version each store runs at from its next start, if not this
    /// binary's (`ClusterBuilder::cluster_version_max`).
    versions: Mutex<BTreeMap<StoreId, u32>>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    health: Arc<HealthRunner>,
    health_cancel: CancellationToken,
    health_thread: Mutex<Option<JoinHandle<()>>>,
    /// The stores' transaction recovery daemons (`txn_recovery.rs`).
    txn: Arc<TxnDaemon>,
    /// Follower clusters in this process that duplications may ship to, by name.
    dup_targets: crate::dup::driver::Targets,
}

/// The health monitor's view of a [`Cluster`]: every store is in this process.
struct ClusterHealth(std::sync::Weak<ClusterInner>);

impl ClusterHealth {
    fn stores(&self) -> Vec<Arc<Store>> {
        self.0
            .upgrade()
            .map_or_else(Vec::new, |inner| inner.local.stores.read().values().cloned().collect())
    }
}

impl HealthHost for ClusterHealth {
    fn directory_leader(&self) -> Option<StoreId> {
        self.stores()
            .iter()
            .find(|s| {
                s.peer_status(DIRECTORY).is_some_and(|p| p.role == regionkv_raft::StateRole::Leader)
            })
            .map(|s| s.context().config.store_id)
    }

    fn health_events(&self) -> Vec<(u64, regionkv_raft::directory::HealthEvent)> {
        health_events_of(&self.stores())
    }

    fn collect(&self) -> Vec<StoreStatus> {
        self.stores()
            .iter()
            .map(|s| StoreStatus::of_store(s.context().config.store_id, s))
            .collect()
    }

    fn directory(&self) -> Vec<RegionRecord> {
        directory_of(&self.stores())
    }

    fn run_ops(&self, f: &mut dyn FnMut(&ClusterOps)) {
        if let Some(inner) = self.0.upgrade() {
            f(&inner.ops);
        }
    }
}

/// The directory's health events, from the replica of the first of `stores` that
/// leads it (else any that has one).
fn health_events_of(stores: &[Arc<Store>]) -> Vec<(u64, regionkv_raft::directory::HealthEvent)> {
    let leads = |s: &&Arc<Store>| {
        s.peer_status(DIRECTORY).is_some_and(|p| p.role == regionkv_raft::StateRole::Leader)
    };
    let first = stores.iter().find(leads).or_else(|| stores.first());
    first
        .and_then(|s| {
            regionkv_raft::directory::health_events(&s.context().directory.read_view()).ok()
        })
        .unwrap_or_default()
}

/// The directory's records, from the replica of the first of `stores` that has one.
fn directory_of(stores: &[Arc<Store>]) -> Vec<RegionRecord> {
    for store in stores {
        let snapshot = store.context().directory.read_view();
        if let Ok(regions) = regionkv_raft::directory::regions(&snapshot)
            && !regions.is_empty()
        {
            return regions;
        }
    }
    Vec::new()
}

impl ClusterInner {
    fn options(&self, id: StoreId) -> StoreOptions {
        let b = &self.builder;
        let max = self.versions.lock().get(&id).copied().unwrap_or(CLUSTER_VERSION_MAX);
        let config = StoreConfig::new(id)
            .tick_interval(b.tick_interval)
            .checkpoint_log_bytes(b.checkpoint_log_bytes)
            .image_hash_interval(Some(defaults::IMAGE_HASH_INTERVAL))
            .cluster_version_max(max);
        let mut options = StoreOptions::new(config);
        options.pollers = b.pollers;
        options.wal = WalOptions::default().segment_bytes(b.segment_bytes);
        options
    }

    /// Creates the regions every store of a new cluster starts with: the directory and
    /// the first region, replicated on every store, whose peers take their stores' ids.
    fn bootstrap(&self, store: &Store) -> Result<()> {
        let peers: Vec<Peer> = (1..=self.builder.stores as u64)
            .map(|s| Peer { id: PeerId(s), store: StoreId(s) })
            .collect();
        // A new cluster runs at the newest version all its stores support
        // (ARCHITECTURE.md, "Cluster versions"); every store learns the same.
        let versions = self.builder.cluster_version_max.values().copied();
        store.learn_cluster_version(versions.chain([CLUSTER_VERSION_MAX]).min().unwrap_or(1))?;
        for id in [DIRECTORY, FIRST_REGION] {
            match store.bootstrap_region(Region { peers: peers.clone(), ..Region::whole(id) }) {
                // A crash after bootstrapping but before the pending mark was removed.
                Ok(()) | Err(regionkv_raft::Error::RegionExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Starts store `id`; it joins the network at once if `join`, else the caller
    /// registers it (a new cluster's stores, once bootstrapped).
    fn start_store(&self, id: StoreId, join: bool) -> Result<()> {
        let transport: Arc<dyn Transport> = Arc::new(self.net.transport(id));
        let store = Store::start(
            Arc::new(RealFs),
            &store_dir(&self.dir, id),
            &self.options(id),
            &transport,
        )?;
        let pending = pending_bootstrap(&self.dir, id);
        if pending.exists() {
            // Left out of the new cluster and starting for the first time: the same
            // regions as every other store had at their start (it never acknowledged
            // anything, so starting from the common beginning is safe); Raft catches
            // it up from there. Bootstrapped before it joins the network (see `build`).
            self.bootstrap(&store)?;
            std::fs::remove_file(&pending)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        if join {
            self.net.register(id, store.inbox());
        }
        self.local.stores.write().insert(id, Arc::new(store));
        Ok(())
    }
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

    /// Names `follower` (a client of another cluster in this process) as a target of
    /// this cluster's duplications: `DupTarget::InProcess(name)` ships to it.
    pub fn add_duplication_target(&self, name: impl Into<String>, follower: Db) {
        self.inner.dup_targets.write().insert(name.into(), follower);
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

    /// The status report of running store `store`, as a `Node` of it would answer
    /// (`Node::status`); None if it is not running.
    pub fn store_status(&self, store: impl Into<StoreId>) -> Option<StoreStatus> {
        let id = store.into();
        let running = self.inner.local.stores.read().get(&id).cloned();
        running.map(|s| StoreStatus::of_store(id, &s))
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

    /// Every store's metrics in the Prometheus text format (`OpenMetrics` 1.0), as a
    /// node's `GET /metrics` serves them, each sample labelled with its store (no
    /// connection counters: a `Cluster` has no TCP; no health families).
    pub fn prometheus_text(&self) -> String {
        let stores = self.metrics().into_iter().map(|(store, m)| crate::prometheus::StoreFigures {
            store,
            metrics: Box::new(m),
            clients: None,
            transport: None,
        });
        crate::prometheus::render(crate::prometheus::Scrape {
            stores: stores.collect(),
            health: None,
        })
    }

    /// The user regions of the cluster in key order, each as its most advanced
    /// replica sees it (the cluster directory's own group is not listed).
    pub fn regions(&self) -> Vec<RegionInfo> {
        region_table(self.status())
    }

    /// The regions as the cluster directory lists them (read from the replica of the
    /// directory on the first running store that has one: possibly a little behind).
    pub fn directory(&self) -> Vec<RegionRecord> {
        let stores: Vec<Arc<Store>> = self.inner.local.stores.read().values().cloned().collect();
        directory_of(&stores)
    }

    /// The health monitor's last evaluation: problems, the analyses that lacked
    /// information, planned repairs, every store's liveness. `None` until the monitor's
    /// first turn (it runs while a store of this cluster leads the directory).
    pub fn health(&self) -> Option<HealthReport> {
        self.inner.health.report()
    }

    /// The repairs the health monitor carried out, and why (oldest first).
    pub fn health_audit(&self) -> Vec<AuditEntry> {
        self.inner.health.audit().unwrap_or_default()
    }

    /// Every repair step the health monitors of the cluster recorded in its directory
    /// (kept across restarts and leader changes; the last
    /// [`HEALTH_EVENTS_KEPT`](regionkv_raft::directory::HEALTH_EVENTS_KEPT)), oldest
    /// first, with their numbers.
    pub fn health_history(&self) -> Vec<(u64, regionkv_raft::directory::HealthEvent)> {
        let stores: Vec<Arc<Store>> = self.inner.local.stores.read().values().cloned().collect();
        health_events_of(&stores)
    }

    /// Changes the health monitor's settings (a detect-only switch, dry run, a
    /// maintenance window, the timeouts).
    pub fn configure_health(&self, f: impl FnOnce(&mut HealthConfig)) {
        self.inner.health.configure(f);
    }

    /// Splits the region holding the first of `keys` at every one of them, in one
    /// Raft command (all must lie strictly inside that region, in increasing order):
    /// how a region is cut into many at once. Returns the regions, left first.
    pub fn split_keys<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Region>> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().to_vec()).collect();
        self.inner.ops.split_keys(&keys)
    }

    /// Splits the region holding `key` at `key` (which becomes the first key of a new
    /// region). Returns the two regions, left first. Splitting at a key that already
    /// starts a region changes nothing and returns that region and its left neighbour.
    pub fn split(&self, key: impl AsRef<[u8]>) -> Result<Vec<Region>> {
        self.inner.ops.split(key.as_ref(), || self.regions())
    }

    /// Merges region `right` into its left neighbour `left` (prepare on the source, wait,
    /// commit; rolled back if the source cannot merge). Returns the merged region.
    pub fn merge(&self, left: impl Into<RegionId>, right: impl Into<RegionId>) -> Result<Region> {
        self.inner.ops.merge(left.into(), right.into())
    }

    /// Checks that every replica of `region` holds the same data: the region's leader
    /// proposes a `ComputeHash` (every replica hashes its image of the region at that
    /// Raft index), then this waits, bounded, until each replica applied it. Returns,
    /// for each store of the region, `Some((index, hash))`, or `None` where it is not
    /// known (the store is down, or did not apply the command in time). Two replicas
    /// with different hashes diverged. Refused with
    /// [`FeatureNotActive`](regionkv_raft::Error::FeatureNotActive) until the cluster
    /// runs at version 2.
    pub fn verify_region(&self, region: impl Into<RegionId>) -> Result<Vec<crate::ReplicaHash>> {
        self.inner.ops.verify_region(region.into())
    }

    /// The active cluster version, as the directory's replicas hold it (ARCHITECTURE.md,
    /// "Cluster versions").
    pub fn cluster_version(&self) -> Result<u32> {
        self.inner.ops.cluster_version()
    }

    /// The active cluster version and what every store of the cluster reports: the
    /// version it runs at and the newest it supports.
    pub fn upgrade_status(&self) -> Result<UpgradeStatus> {
        self.inner.ops.upgrade_status()
    }

    /// Raises the cluster version to `target` (default: the newest this binary runs),
    /// so that command kinds up to it may be proposed; returns the active version
    /// after. Refused ([`Error::UpgradeRefused`], naming the store), with nothing
    /// proposed, unless every store of the cluster (each holding a replica of a region
    /// the directory lists, or of the directory) reports that it supports `target`. A
    /// target at or below the active version changes nothing. Every running store
    /// learns the result before this returns.
    pub fn finalize_upgrade(&self, target: Option<u32>) -> Result<u32> {
        let stores: Vec<Arc<Store>> = self.inner.local.stores.read().values().cloned().collect();
        let by = self.inner.local.leader_of(DIRECTORY).unwrap_or(StoreId(0));
        let active = self.inner.ops.finalize_upgrade(target, by)?;
        for store in stores {
            store.learn_cluster_version(active)?;
        }
        Ok(active)
    }

    /// Runs `store` as a binary that supports cluster versions up to `max` from its
    /// next start ([`Cluster::restart_store`]): for testing an upgrade (or a
    /// downgrade, which a store that ran at a newer version refuses).
    pub fn set_cluster_version_max(&self, store: impl Into<StoreId>, max: u32) {
        self.inner.versions.lock().insert(store.into(), max);
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
    pub fn local_get(
        &self,
        store: impl Into<StoreId>,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<bytes::Bytes>> {
        let store = store.into();
        let stores = self.inner.local.stores.read();
        let s = stores
            .get(&store)
            .ok_or_else(|| Error::InvalidRequest(format!("store {store} is not running")))?;
        Ok(s.context().engine.read_view().get(key.as_ref()))
    }

    /// The fault rules of the cluster's in-process network, shared with it: partition
    /// stores, isolate one, or drop, delay (which reorders) and duplicate messages, by
    /// sending and receiving store, region and message type. Rules apply to messages
    /// sent after they are added; [`Faults::clear`](crate::faults::Faults::clear) heals
    /// everything. For testing an application under network faults:
    ///
    /// ```
    /// use regionkv::StoreId;
    /// # let dir = tempfile::tempdir()?;
    /// let cluster = regionkv::Cluster::builder().dir(dir.path()).stores(3).build()?;
    /// cluster.faults().isolate(StoreId(3)); // stores 1 and 2 keep a quorum
    /// cluster.db().put("k", "v")?;
    /// cluster.faults().clear();
    /// # cluster.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn faults(&self) -> crate::faults::Faults {
        self.inner.net.faults().clone()
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
    pub fn stop_store(&self, id: impl Into<StoreId>) -> Result<()> {
        let id = id.into();
        self.take(id)?.shutdown()?;
        Ok(())
    }

    /// Stops a store abruptly, as a crash: nothing is flushed or closed.
    pub fn kill_store(&self, id: impl Into<StoreId>) -> Result<()> {
        let id = id.into();
        self.take(id)?.kill();
        Ok(())
    }

    /// Starts a stopped or killed store again; it recovers from its files.
    pub fn restart_store(&self, id: impl Into<StoreId>) -> Result<()> {
        let id = id.into();
        if self.inner.local.stores.read().contains_key(&id) {
            return Ok(());
        }
        self.inner.start_store(id, true)
    }

    /// The transaction locks and records of the regions each running store leads
    /// (`in_doubt_only`: past their TTL and undecided; `older_than`: at least that old).
    /// An entry of a newer format is listed by its key and reason, never decoded.
    pub fn txn_list(&self, in_doubt_only: bool, older_than: Option<Duration>) -> Vec<TxnEntry> {
        let stores: Vec<Arc<Store>> = self.inner.local.stores.read().values().cloned().collect();
        stores.iter().flat_map(|s| TxnRecovery::list(s, in_doubt_only, older_than)).collect()
    }

    /// One recovery turn now on every running store (`region`: that region only, on
    /// the store that leads it), gates first: what each did, or the gate that
    /// deferred it.
    pub fn txn_recover(&self, region: Option<RegionId>) -> Vec<TxnRecoveryTurn> {
        let stores: Vec<Arc<Store>> = self.inner.local.stores.read().values().cloned().collect();
        self.inner.txn.recover_now(&stores, &self.db(), region)
    }

    /// Each store's recovery daemon counters (turns, deferrals by gate, resolves,
    /// forgets, what its last turn saw).
    pub fn txn_recovery_stats(&self) -> Vec<(StoreId, TxnRecoveryStats)> {
        self.inner.txn.stats()
    }

    /// One version GC turn now on every running store: the safepoint proposed is
    /// `at`, or the oracle's timestamp minus the GC life time (the directory never
    /// lowers it); each store collects the regions it leads below it. A snapshot
    /// below the safepoint is refused from then on ([`Error::SnapshotTooOld`]).
    pub fn version_gc(&self, at: Option<u64>) -> Result<Vec<(StoreId, VersionGcStats)>> {
        let stores: Vec<Arc<Store>> = self.inner.local.stores.read().values().cloned().collect();
        self.inner.txn.gc_now(&stores, &self.db(), at)
    }

    /// Each store's version GC counters (versions collected, its regions' GC floors,
    /// the last safepoint).
    pub fn version_gc_stats(&self) -> Vec<(StoreId, VersionGcStats)> {
        self.inner.txn.gc_stats()
    }

    #[cfg(test)]
    pub(crate) fn txn_daemon(&self) -> &TxnDaemon {
        &self.inner.txn
    }

    /// Runs `f` on a running store, for tests that reach below the facade (planting
    /// transaction entries of another format in its engine, say).
    #[doc(hidden)]
    pub fn with_store<R>(&self, id: impl Into<StoreId>, f: impl FnOnce(&Store) -> R) -> Option<R> {
        let store = self.inner.local.stores.read().get(&id.into()).cloned()?;
        Some(f(&store))
    }

    /// Stops every store cleanly. Clients get [`Error::Shutdown`] afterwards.
    pub fn shutdown(&self) -> Result<()> {
        self.inner.local.shut.store(true, Ordering::SeqCst);
        self.inner.health_cancel.cancel();
        self.inner.txn.stop();
        if let Some(scheduler) = self.inner.scheduler.lock().take() {
            let _ = scheduler.join();
        }
        if let Some(health) = self.inner.health_thread.lock().take() {
            let _ = health.join();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use regionkv_engine::StoreId;
    use regionkv_raft::StoreConfig;
    use regionkv_raft::transport::wire::ClusterId;

    use super::ClusterBuilder;
    use crate::NodeConfig;

    #[test]
    fn cluster_node_and_store_share_one_defaults_table() {
        let store = StoreConfig::new(StoreId(1));
        let cluster = ClusterBuilder::default();
        let addr = "127.0.0.1:0".parse().unwrap();
        let node = NodeConfig::new(StoreId(1), "unused", addr, ClusterId(1), b"secret".to_vec());
        assert_eq!(cluster.tick_interval, Duration::from_millis(50));
        assert_eq!(cluster.tick_interval, store.tick_interval);
        assert_eq!(node.tick_interval, store.tick_interval);
        assert_eq!(cluster.checkpoint_log_bytes, store.checkpoint_log_bytes);
        assert_eq!((cluster.pollers, node.pollers), (1, 1));
        assert_eq!((cluster.stores, cluster.segment_bytes), (3, 64 << 20));
        assert_eq!(store.image_hash_interval, None, "a bare store: off");
        assert_eq!(crate::defaults::IMAGE_HASH_INTERVAL, Duration::from_secs(600));
    }

    #[test]
    fn verify_region_finds_a_replica_that_diverged() {
        let dir = tempfile::tempdir().unwrap();
        // Store 3 runs as a binary of cluster version 1: the cluster starts at 1.
        let cluster = ClusterBuilder::default()
            .dir(dir.path())
            .stores(3)
            .cluster_version_max(3, 1)
            .build()
            .unwrap();
        let db = cluster.db();
        for i in 0..20 {
            db.put(format!("k{i:02}"), "v").unwrap();
        }
        let region = cluster.regions()[0].region.id;
        match cluster.verify_region(region) {
            Err(crate::Error::FeatureNotActive { needed: 2, .. }) => {}
            other => panic!("before version 2: {other:?}"),
        }
        // Store 3 upgrades; the cluster is finalized at 2.
        cluster.set_cluster_version_max(3, 2);
        cluster.stop_store(3).unwrap();
        cluster.restart_store(3).unwrap();
        assert_eq!(cluster.finalize_upgrade(Some(2)).unwrap(), 2);
        let stores: Vec<_> = cluster.inner.local.stores.read().values().cloned().collect();
        let all = cluster.verify_region(region).unwrap();
        assert_eq!(all.len(), 3, "{all:?}");
        let first = all[0].1.expect("hashed");
        assert!(all.iter().all(|(_, h)| *h == Some(first)), "{all:?}");
        // A key only store 3's engine holds.
        let rogue = &stores[2];
        let engine = &rogue.context().engine;
        let epoch = engine.region(region).unwrap().epoch;
        let mut round = engine.begin_round();
        round.prepare_for_region(region, epoch).unwrap();
        round.put(b"rogue", b"1").unwrap();
        round.commit().unwrap();
        let all = cluster.verify_region(region).unwrap();
        let (index, hash) = all[0].1.expect("hashed");
        assert!(index > first.0);
        for (store, h) in &all {
            let (at, h) = h.expect("hashed");
            assert_eq!(at, index);
            assert_eq!(h == hash, *store != rogue.context().config.store_id, "{all:?}");
        }
        cluster.shutdown().unwrap();
    }
}

#[cfg(test)]
mod health_tests {
    use std::time::{Duration, Instant};

    use regionkv_engine::{Peer, PeerId, StoreId};
    use regionkv_raft::{ChangePeersRequest, PeerChange};

    use super::{ClusterBuilder, FIRST_REGION};
    use crate::backend::Backend;
    use crate::health::HealthConfig;

    /// A monitor that stopped after the first step of a replacement (a learner on the
    /// spare) leaves the learner; the next one promotes it instead of failing for want
    /// of another store, or adding a second peer.
    #[test]
    fn a_learner_left_by_an_interrupted_replacement_is_promoted_not_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterBuilder::default()
            .dir(dir.path())
            .stores(3)
            .spares(1)
            .tick_interval(Duration::from_millis(20))
            .health(HealthConfig {
                replication_factor: 3,
                interval: Duration::from_millis(100),
                store_down_after: Duration::from_millis(800),
                store_dead_after: Duration::from_millis(2500),
                dry_run: true,
                ..HealthConfig::default()
            })
            .build()
            .unwrap();
        cluster.db().put("a", "1").unwrap();
        let local = &cluster.inner.local;
        let leader = local.leader_of(FIRST_REGION).expect("a leader");
        let epoch = local.peer_status(leader, FIRST_REGION).expect("hosted").region.epoch;
        let learner =
            Peer { id: PeerId(cluster.inner.ops.alloc_ids(1).unwrap()), store: StoreId(4) };
        let added = crate::db::ask(Duration::from_secs(5), |reply| {
            local.change_peers(
                leader,
                ChangePeersRequest {
                    region: FIRST_REGION,
                    epoch,
                    change: PeerChange::AddLearner(learner),
                    reply,
                },
            );
        });
        assert!(matches!(added, Some(Ok(_))), "{added:?}");
        cluster.kill_store(3).unwrap();
        cluster.configure_health(|c| c.dry_run = false);
        let deadline = Instant::now() + Duration::from_secs(60);
        let done = loop {
            let regions = cluster.regions();
            let ok = regions.iter().all(|r| {
                let on = |s: u64| r.region.peers.iter().filter(|p| p.store == StoreId(s)).count();
                r.region.peers.len() == 3 && on(3) == 0 && on(4) == 1
            });
            if ok || Instant::now() > deadline {
                break ok;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(done, "{:#?}\n{:#?}", cluster.regions(), cluster.health_audit());
        let r1 = cluster.regions().into_iter().find(|r| r.region.id == FIRST_REGION).unwrap();
        assert!(r1.region.peers.contains(&learner), "the learner was promoted: {:?}", r1.region);
        assert!(cluster.health_audit().iter().all(|e| !e.event.starts_with("failed")));
        cluster.shutdown().unwrap();
    }
}
