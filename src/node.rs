//! [`Node`]: one store in this process, talking TCP to the stores of the other nodes,
//! and serving the client protocol to other processes on the same address.
//!
//! ```text
//!                      one listening address (NodeConfig::listen_addr)
//!  other stores ──"RKVW" store handshake──► TcpTransport ──envelopes──► Store
//!  clients ──────"rkvc" client handshake──►   └─ first byte ─► ClientService ──► Store
//!                                                               (split, merge: Control)
//!  node.db() ──► Db ──► NodeStores: this store in process, the others as RemoteStores
//! ```
//!
//! A fresh cluster bootstraps deterministically: every node creates the cluster
//! directory (region 0) and the first region (the whole key space) with the same peers,
//! one per configured store (peer id = store id), exactly as [`Cluster`](crate::Cluster)
//! does, then writes a `bootstrapped` mark in its data directory. A node whose mark is
//! there starts from its files. A reporter thread forwards what this store's leaders
//! report (splits, merges, leadership) to the directory's leader, wherever it is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use regionkv_engine::{Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult, RegionRecord};
use regionkv_raft::transport::handshake::ClusterId;
use regionkv_raft::transport::tcp::{SECRET_BYTES_MIN, TcpConfig, TcpTransport};
use regionkv_raft::transport::{InboxSlot, Transport};
use regionkv_raft::{
    AdminRequest, MergeStatus, PeerStatus, ReadRequest, Reply, Store, StoreConfig, StoreMetrics,
    StoreOptions, WriteRequest,
};
use regionkv_wal::{CancellationToken, Gate, RealFs};

use crate::autosplit::SplitPolicy;
use crate::backend::{Backend, locate_on, newer};
use crate::cluster::FIRST_REGION;
use crate::control::{Background, ClusterOps};
use crate::db::Db;
use crate::defaults::{self, NODE_TASKS_TIMEOUT, REPORT_INTERVAL};
use crate::error::{Error, Result};
use crate::proto::{self, StoreStatus};
use crate::region_info::{RegionInfo, region_table};
use crate::remote::RemoteStores;
use crate::router::Router;
use crate::server::{ClientHandler, ClientService, ClientStats};

/// The file a node writes once it has bootstrapped its regions.
const BOOTSTRAPPED: &str = "bootstrapped";

/// How to run a [`Node`]. [`NodeConfig::new`] fills in defaults for the rest.
#[derive(Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// This node's store id (not 0: clients use 0).
    pub store_id: StoreId,
    /// Where the store keeps its files (created if missing).
    pub data_dir: PathBuf,
    /// Where the node listens, for other stores and for clients alike (port 0: any).
    pub listen_addr: SocketAddr,
    /// The other stores of the cluster and where they listen. Every node of a cluster
    /// must be given the same set of stores: a fresh cluster's first region is
    /// replicated on exactly these stores and this one.
    pub peers: BTreeMap<StoreId, SocketAddr>,
    /// The cluster's id: nodes and clients of another cluster are refused.
    pub cluster_id: ClusterId,
    /// The cluster's shared secret (at least 16 bytes): nodes and clients prove they
    /// know it without sending it.
    pub secret: Vec<u8>,
    /// Time between Raft ticks (default 50 ms; the election timeout is 10-20 ticks).
    pub tick_interval: Duration,
    /// Poller threads of the store (default 1).
    pub pollers: usize,
    /// When this node splits and merges the regions its store leads (default
    /// [`SplitPolicy::default`]).
    pub split_policy: SplitPolicy,
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("store_id", &self.store_id)
            .field("data_dir", &self.data_dir)
            .field("listen_addr", &self.listen_addr)
            .field("peers", &self.peers)
            .field("cluster_id", &self.cluster_id)
            .field("secret", &"(hidden)")
            .field("tick_interval", &self.tick_interval)
            .field("pollers", &self.pollers)
            .field("split_policy", &self.split_policy)
            .finish()
    }
}

impl NodeConfig {
    /// A configuration with no peers (add them to [`NodeConfig::peers`]) and defaults.
    pub fn new(
        store_id: StoreId,
        data_dir: impl Into<PathBuf>,
        listen_addr: SocketAddr,
        cluster_id: ClusterId,
        secret: impl Into<Vec<u8>>,
    ) -> NodeConfig {
        NodeConfig {
            store_id,
            data_dir: data_dir.into(),
            listen_addr,
            peers: BTreeMap::new(),
            cluster_id,
            secret: secret.into(),
            tick_interval: defaults::TICK_INTERVAL,
            pollers: defaults::POLLERS,
            split_policy: SplitPolicy::default(),
        }
    }

    /// Adds (or moves) a peer store.
    #[must_use]
    pub fn peer(mut self, store: StoreId, addr: SocketAddr) -> NodeConfig {
        self.peers.insert(store, addr);
        self
    }

    fn validate(&self) -> Result<()> {
        let problem = if self.store_id.0 == 0 {
            Some("store id 0 is reserved for clients; number stores from 1".to_string())
        } else if self.peers.contains_key(&self.store_id) {
            Some(format!("the peers name this node's own store id {}", self.store_id))
        } else if self.peers.contains_key(&StoreId(0)) {
            Some("a peer has store id 0, which is reserved for clients".into())
        } else if self.secret.len() < SECRET_BYTES_MIN {
            Some(format!("the cluster secret must have at least {SECRET_BYTES_MIN} bytes"))
        } else if self.pollers == 0 || self.tick_interval.is_zero() {
            Some("pollers and tick_interval must not be zero".into())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::Config(p)))
    }
}

/// What [`NodeStores`] and the client service share: the node while it runs.
pub(crate) struct NodeShared {
    id: StoreId,
    pub store: Arc<Store>,
    remote: Arc<RemoteStores>,
    control: ClusterOps,
    members: Vec<(StoreId, String)>,
    split_policy: SplitPolicy,
    shut: AtomicBool,
    cancel: CancellationToken,
    /// Admin requests from clients run inside.
    tasks: Gate,
    task_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl NodeShared {
    fn statuses(&self) -> Vec<(StoreId, Vec<PeerStatus>)> {
        let mut out = vec![(self.id, self.store.status())];
        for store in self.remote.store_ids() {
            if let Ok(s) = self.remote.status(store) {
                out.push((s.store, s.peers));
            }
        }
        out
    }
}

impl ClientHandler for NodeShared {
    fn is_shut(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn members(&self) -> Vec<(StoreId, String)> {
        self.members.clone()
    }

    /// Where `key` lives as this store knows it: its directory replica, else the
    /// regions it hosts.
    fn locate_local(&self, key: &[u8]) -> Option<RegionRecord> {
        locate_on(std::slice::from_ref(&self.store), key)
    }

    fn spawn_task(&self, name: &'static str, f: Box<dyn FnOnce() + Send>) -> bool {
        let Ok(guard) = self.tasks.enter(name) else { return false };
        let spawned = std::thread::Builder::new().name("node-task".into()).spawn(move || {
            let _guard = guard;
            f();
        });
        match spawned {
            Ok(handle) => {
                let mut threads = self.task_threads.lock();
                threads.retain(|h| !h.is_finished());
                threads.push(handle);
                true
            }
            Err(_) => false,
        }
    }

    fn regions(&self) -> Vec<RegionInfo> {
        region_table(self.statuses())
    }

    fn split(&self, key: &[u8]) -> Result<Vec<Region>> {
        self.control.split(key, || region_table(self.statuses()))
    }

    fn merge(&self, left: RegionId, right: RegionId) -> Result<Region> {
        self.control.merge(left, right)
    }
}

/// This node's store in process, the other stores over the client protocol.
struct NodeStores {
    shared: Weak<NodeShared>,
    id: StoreId,
    local: Arc<Store>,
    remote: Arc<RemoteStores>,
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

    fn write(&self, store: StoreId, req: WriteRequest) {
        if self.is_local(store) { self.local.write(req) } else { self.remote.write(store, req) }
    }

    fn read(&self, store: StoreId, req: ReadRequest) {
        if self.is_local(store) { self.local.read(req) } else { self.remote.read(store, req) }
    }

    fn admin(&self, store: StoreId, req: AdminRequest) {
        if self.is_local(store) { self.local.admin(req) } else { self.remote.admin(store, req) }
    }

    fn directory(&self, store: StoreId, cmd: DirCmd, reply: Reply<DirResult>) {
        if self.is_local(store) {
            self.local.directory(cmd, reply);
        } else {
            self.remote.directory(store, cmd, reply);
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

/// One store in this process, replicating over TCP with the stores of the other
/// nodes, and serving clients of other processes ([`Client`](crate::Client)) on the
/// same address.
///
/// ```no_run
/// use regionkv::{ClusterId, Node, NodeConfig, StoreId};
///
/// let config = NodeConfig::new(
///     StoreId(1),
///     "/var/lib/regionkv/1",
///     "127.0.0.1:7001".parse()?,
///     ClusterId(1),
///     b"a cluster secret of 16+ bytes".to_vec(),
/// )
/// .peer(StoreId(2), "127.0.0.1:7002".parse()?)
/// .peer(StoreId(3), "127.0.0.1:7003".parse()?);
/// let node = Node::open(config)?;
/// node.db().put(b"hello", b"world")?;
/// node.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Node {
    shared: Arc<NodeShared>,
    transport: Arc<TcpTransport>,
    service: Arc<ClientService>,
    backend: Arc<NodeStores>,
    reporter: Mutex<Option<JoinHandle<()>>>,
    local_addr: SocketAddr,
    stopped: Mutex<bool>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("store", &self.shared.id)
            .field("addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts the node: binds its address, opens (or recovers) its store, bootstraps a
    /// fresh cluster's regions, and starts serving clients.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the issue fixes this signature; taking the config by value leaves room to keep it"
    )]
    pub fn open(config: NodeConfig) -> Result<Node> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)?;
        let id = config.store_id;
        let service =
            Arc::new(ClientService::new(proto::client_key(&config.secret), config.cluster_id, id));
        let slot = InboxSlot::new();
        let mut tcp =
            TcpConfig::new(id, config.listen_addr, config.cluster_id, config.secret.clone());
        tcp.peers = config.peers.iter().map(|(&s, &a)| (s, a)).collect();
        tcp.inbound_connections_max = 256;
        let transport =
            Arc::new(TcpTransport::start_with(tcp, slot.clone(), Some(service.clone()))?);
        let local_addr = transport.local_addr();
        let as_transport: Arc<dyn Transport> = transport.clone();
        let store_config = StoreConfig::new(id).tick_interval(config.tick_interval);
        let mut options = StoreOptions::new(store_config);
        options.pollers = config.pollers;
        let store = match Store::start(Arc::new(RealFs), &config.data_dir, &options, &as_transport)
        {
            Ok(s) => Arc::new(s),
            Err(e) => {
                transport.shutdown();
                return Err(e.into());
            }
        };
        slot.bind(store.inbox());
        let stop = |e: Error| {
            let _ = store.shutdown();
            transport.shutdown();
            e
        };
        bootstrap(&config, &store).map_err(stop)?;

        let remote = Arc::new(RemoteStores::new(
            proto::client_key(&config.secret),
            config.cluster_id,
            config.peers.clone(),
        ));
        let mut members: Vec<(StoreId, String)> =
            config.peers.iter().map(|(&s, a)| (s, a.to_string())).collect();
        members.push((id, local_addr.to_string()));
        members.sort();
        let shared = Arc::new_cyclic(|weak: &Weak<NodeShared>| {
            let backend: Arc<dyn Backend> = Arc::new(NodeStores {
                shared: weak.clone(),
                id,
                local: store.clone(),
                remote: remote.clone(),
            });
            NodeShared {
                id,
                store: store.clone(),
                remote: remote.clone(),
                control: ClusterOps::new(backend),
                members,
                split_policy: config.split_policy.clone(),
                shut: AtomicBool::new(false),
                cancel: CancellationToken::new(),
                tasks: Gate::new(),
                task_threads: Mutex::default(),
            }
        });
        let backend =
            Arc::new(NodeStores { shared: Arc::downgrade(&shared), id, local: store, remote });
        service.bind(Arc::<NodeShared>::downgrade(&shared));
        let reporter = {
            let weak = Arc::downgrade(&shared);
            let cancel = shared.cancel.clone();
            std::thread::Builder::new()
                .name(format!("node-reporter-{}", id.0))
                .spawn(move || report_loop(&weak, &cancel))?
        };
        tracing::info!(store = id.0, addr = %local_addr, "node started");
        Ok(Node {
            shared,
            transport,
            service,
            backend,
            reporter: Mutex::new(Some(reporter)),
            local_addr,
            stopped: Mutex::new(false),
        })
    }

    /// This node's store id.
    pub fn store_id(&self) -> StoreId {
        self.shared.id
    }

    /// The address the node listens on (for stores and clients).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A client of the cluster through this node: this store in process, the others
    /// over TCP. Routing and retries as [`Cluster::db`](crate::Cluster::db).
    pub fn db(&self) -> Db {
        Db::new(Router::new(self.backend.clone()))
    }

    /// Splits the region holding `key` at `key`; see [`Cluster::split`](crate::Cluster::split).
    pub fn split(&self, key: impl AsRef<[u8]>) -> Result<Vec<Region>> {
        self.shared.split(key.as_ref())
    }

    /// Merges region `right` into its left neighbour `left`; see
    /// [`Cluster::merge`](crate::Cluster::merge).
    pub fn merge(&self, left: impl Into<RegionId>, right: impl Into<RegionId>) -> Result<Region> {
        self.shared.merge(left.into(), right.into())
    }

    /// The user regions in key order, as the replicas of the stores that answer see
    /// them.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.shared.regions()
    }

    /// This node's store's status, with its metrics.
    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            store: self.shared.id,
            peers: self.shared.store.status(),
            metrics: Some(self.shared.store.metrics()),
        }
    }

    /// This node's store's metrics: regions, leaders, applied lag, write latency and
    /// batching, WAL fsync latency and group size.
    pub fn metrics(&self) -> StoreMetrics {
        self.shared.store.metrics()
    }

    /// Counters of the client protocol (connections, refused handshakes, bad frames).
    pub fn client_stats(&self) -> ClientStats {
        self.service.stats()
    }

    /// Counters of the store transport.
    pub fn transport_stats(&self) -> regionkv_raft::transport::tcp::TcpStats {
        self.transport.stats()
    }

    /// Stops the node in order, each step bounded: clients are refused from now on;
    /// the reporter and admin requests in flight stop; the store shuts down (timelines
    /// flushed, WAL sealed, clean marks written); then the transport closes every
    /// connection. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        let mut stopped = self.stopped.lock();
        if *stopped {
            return Ok(());
        }
        *stopped = true;
        let shared = &self.shared;
        // 1. New client requests are answered `Cancelled`; Db handles see `Shutdown`.
        shared.shut.store(true, Ordering::SeqCst);
        // 2. The reporter stops at its next tick; admin requests in flight finish
        //    (they see the shut flag at their next retry).
        shared.cancel.cancel();
        if let Some(reporter) = self.reporter.lock().take() {
            let _ = reporter.join();
        }
        if let Err(e) = shared.tasks.close(NODE_TASKS_TIMEOUT) {
            tracing::warn!(store = shared.id.0, error = %e, "admin requests did not finish in time");
        }
        for handle in std::mem::take(&mut *shared.task_threads.lock()) {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
        // 3. The store, in its own order (invariant 2 in ARCHITECTURE.md: cancel, stop
        //    the timelines, wait for the gate, flush, then the clean mark).
        let result = shared.store.shutdown();
        // 4. Connections: stores and clients, then this node's connections to peers.
        self.transport.shutdown();
        shared.remote.close();
        tracing::info!(store = shared.id.0, "node stopped");
        result.map_err(Error::from)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(store = self.shared.id.0, error = %e, "node shutdown on drop failed");
        }
    }
}

/// Creates the directory and the first region on this store unless the node has
/// bootstrapped before. Every node of a fresh cluster creates the same regions.
fn bootstrap(config: &NodeConfig, store: &Store) -> Result<()> {
    let mark = config.data_dir.join(BOOTSTRAPPED);
    if mark.exists() {
        return Ok(());
    }
    let mut stores: Vec<StoreId> = config.peers.keys().copied().collect();
    stores.push(config.store_id);
    stores.sort_unstable();
    let peers: Vec<Peer> = stores.iter().map(|&s| Peer { id: PeerId(s.0), store: s }).collect();
    for id in [DIRECTORY, FIRST_REGION] {
        let region = Region { peers: peers.clone(), ..Region::whole(id) };
        match store.bootstrap_region(region) {
            // A crash after the bootstrap and before the mark: the region is there.
            Ok(()) | Err(regionkv_raft::Error::RegionExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The mark is durable before the node serves: a restart must not bootstrap again.
    let file = std::fs::File::create(&mark)?;
    file.sync_all()?;
    std::fs::File::open(&config.data_dir)?.sync_all()?;
    Ok(())
}

/// Forwards this store's region reports to the directory's leader until cancelled.
fn report_loop(shared: &Weak<NodeShared>, cancel: &CancellationToken) {
    let mut background = Background::new();
    // Bounded: ends when the node is cancelled or gone; every turn waits an interval.
    while !cancel.wait_timeout(REPORT_INTERVAL) {
        let Some(shared) = shared.upgrade() else { return };
        let stores = [shared.store.clone()];
        background.turn(&shared.control, &stores, &shared.split_policy);
    }
}
