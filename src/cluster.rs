//! [`Cluster`]: stores in this process, on real files, talking over in-process channels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use regionkv_engine::{Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{PeerStatus, Store, StoreConfig, StoreOptions};
use regionkv_wal::{RealFs, WalOptions};

use crate::db::Db;
use crate::error::{Error, Result};

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
        let inner = Arc::new(ClusterInner {
            dir,
            net: LocalNetwork::new(1),
            stores: RwLock::new(BTreeMap::new()),
            builder: self,
            shut: AtomicBool::new(false),
        });
        let ids: Vec<StoreId> = (1..=inner.builder.stores as u64).map(StoreId).collect();
        for &id in &ids {
            inner.start_store(id)?;
        }
        if fresh {
            let peers: Vec<Peer> =
                ids.iter().map(|&s| Peer { id: PeerId(s.0), store: s }).collect();
            let region = Region { peers, ..Region::whole(FIRST_REGION) };
            for store in inner.stores.read().values() {
                store.bootstrap_region(region.clone())?;
            }
        }
        Ok(Cluster { inner })
    }
}

fn store_dir(dir: &Path, id: StoreId) -> PathBuf {
    dir.join(format!("store-{}", id.0))
}

pub(crate) struct ClusterInner {
    dir: PathBuf,
    net: LocalNetwork,
    pub(crate) stores: RwLock<BTreeMap<StoreId, Arc<Store>>>,
    builder: ClusterBuilder,
    pub(crate) shut: AtomicBool,
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
        self.stores.write().insert(id, Arc::new(store));
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

    /// A client of this cluster.
    pub fn db(&self) -> Db {
        Db::new(self.inner.clone())
    }

    /// Ids of the running stores.
    pub fn store_ids(&self) -> Vec<StoreId> {
        self.inner.stores.read().keys().copied().collect()
    }

    /// The status of every peer of every running store.
    pub fn status(&self) -> Vec<(StoreId, Vec<PeerStatus>)> {
        let stores: Vec<(StoreId, Arc<Store>)> =
            self.inner.stores.read().iter().map(|(&id, s)| (id, s.clone())).collect();
        stores.into_iter().map(|(id, s)| (id, s.status())).collect()
    }

    fn take(&self, id: StoreId) -> Result<Arc<Store>> {
        self.inner.net.unregister(id);
        self.inner
            .stores
            .write()
            .remove(&id)
            .ok_or_else(|| Error::InvalidRequest(format!("store {id} is not running")))
    }

    /// Reads `key` from `store`'s own replica, without Raft: what that replica has
    /// applied so far (it may lag the leader). For checking that every replica holds
    /// the data, not for serving reads: use [`Db::get`] for those.
    pub fn local_get(&self, store: StoreId, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        let stores = self.inner.stores.read();
        let s = stores
            .get(&store)
            .ok_or_else(|| Error::InvalidRequest(format!("store {store} is not running")))?;
        Ok(s.context().engine.snapshot().get(key))
    }

    /// WAL counters of every running store (records, groups, fsyncs, ...).
    pub fn wal_stats(&self) -> Vec<(StoreId, regionkv_wal::WalStats)> {
        self.inner
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
        if self.inner.stores.read().contains_key(&id) {
            return Ok(());
        }
        self.inner.start_store(id)
    }

    /// Stops every store cleanly. Clients get [`Error::Shutdown`] afterwards.
    pub fn shutdown(&self) -> Result<()> {
        self.inner.shut.store(true, Ordering::SeqCst);
        let stores = std::mem::take(&mut *self.inner.stores.write());
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
