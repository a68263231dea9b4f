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
//! A node starts from its files once its data directory holds a mark (`bootstrapped`
//! or `joined`). A node whose data directory holds none starts only when told how
//! (ARCHITECTURE.md, "Store identity"):
//!
//! - [`InitialClusterState::New`] (`regionkv node --bootstrap`): a fresh cluster
//!   bootstraps deterministically: every node creates the cluster directory (region 0)
//!   and the first region (the whole key space) with the same peers, one per
//!   configured store (peer id = store id), exactly as [`Cluster`](crate::Cluster)
//!   does, then writes the `bootstrapped` mark;
//! - [`InitialClusterState::Existing`] (`--join`): the node starts an empty store and
//!   writes the `joined` mark; it holds nothing until the cluster adds it
//!   ([`Client::add_store`](crate::Client::add_store)), as a learner of every region
//!   filled by snapshots, then as a voter;
//! - neither: [`Error::NotInitialized`], which says how to join. A node whose disk was
//!   lost must never bootstrap again under its old id: it would vote with an empty log.
//!
//! Each store has an incarnation (random, in its manifest), which the transport's
//! handshake carries: peers refuse a store id whose incarnation changed while regions
//! still list it ("store N was replaced: remove it and add it back"). A reporter
//! thread forwards what this store's leaders report (splits, merges, leadership) to
//! the directory's leader, wherever it is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use regionkv_engine::{Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, RegionRecord};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::handshake::ClusterId;
use regionkv_raft::transport::seal::LinkMode;
use regionkv_raft::transport::tcp::{SECRET_BYTES_MIN, TcpConfig, TcpTransport};
use regionkv_raft::{PeerStatus, Store, StoreConfig, StoreMetrics, StoreOptions};
use regionkv_wal::{CancellationToken, FileSystem, Gate, RealFs};

use crate::autosplit::SplitPolicy;
use crate::backend::{Backend, locate_on};
use crate::cluster::FIRST_REGION;
use crate::control::{Background, ClusterOps, UpgradeStatus};
use crate::db::Db;
use crate::defaults::{self, NODE_TASKS_TIMEOUT, REPORT_INTERVAL};
use crate::error::{Error, Result};
use crate::health::{AuditEntry, HealthConfig, HealthReport, HealthRunner};
use crate::proto::{self, HealthAnswer, StoreStatus};
use crate::region_info::{RegionInfo, region_table};
use crate::remote::RemoteStores;
use crate::router::Router;
use crate::server::{ClientHandler, ClientService, ClientStats};
use crate::status_http::StatusServer;
use crate::txn_recovery::TxnDaemon;

mod health;
mod status;
mod stores;
mod txn;

use stores::NodeStores;

/// The file a node writes once it has bootstrapped its regions.
const BOOTSTRAPPED: &str = "bootstrapped";
/// The file a node writes once it has started an empty store to join a cluster.
const JOINED: &str = "joined";

/// How a node whose data directory holds no store starts (as etcd's
/// `--initial-cluster-state`). Ignored once the data directory holds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialClusterState {
    /// Bootstrap a new cluster: this node and its configured peers are its first
    /// stores, and each creates the same first regions (`regionkv node --bootstrap`,
    /// `initial_cluster_state = "new"`). Give it only on the first start of a new
    /// cluster's nodes.
    New,
    /// Join a running cluster with an empty store, to be added by
    /// [`Client::add_store`](crate::Client::add_store) (`--join`,
    /// `initial_cluster_state = "existing"`). Also how a store whose disk was lost
    /// comes back, after [`Client::remove_store`](crate::Client::remove_store).
    Existing,
}

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
    /// The cluster's shared secret (at least 16 bytes): nodes prove they know it
    /// without sending it (and clients too, unless `client_secret` is set).
    pub secret: Vec<u8>,
    /// The clients' secret (at least 16 bytes, not the cluster secret), if clients
    /// get one of their own (`regionkv node --client-secret-file`): then a client
    /// proves this one, and a client holding only it can neither open a store link
    /// nor claim a store id on the client protocol (raw admin and directory commands
    /// stay with the stores). Default `None`: clients prove the cluster secret.
    pub client_secret: Option<Vec<u8>>,
    /// Plaintext links, for benchmarks (`regionkv node --insecure`): after the
    /// handshake, frames between stores and with clients go unencrypted and
    /// unauthenticated. Default `false`: sealed links. A node refuses peers and
    /// clients that run the other mode.
    pub insecure: bool,
    /// Time between Raft ticks (default 50 ms; the election timeout is 10-20 ticks).
    pub tick_interval: Duration,
    /// Poller threads of the store (default 1).
    pub pollers: usize,
    /// When this node splits and merges the regions its store leads (default
    /// [`SplitPolicy::default`]).
    pub split_policy: SplitPolicy,
    /// How to start if the data directory holds no store yet (default `None`: such a
    /// node refuses to start with [`Error::NotInitialized`]); see
    /// [`NodeConfig::bootstrap`] and [`NodeConfig::join`].
    pub initial_cluster_state: Option<InitialClusterState>,
    /// How the health monitor judges and repairs, when this node's store leads the
    /// directory (default `None`: [`HealthConfig::default`] with a replication factor
    /// of this node's stores, its peers and itself, at most 3).
    pub health: Option<HealthConfig>,
    /// How often the store's transaction recovery daemon takes a turn (default 5 s).
    pub txn_recover_interval: Duration,
    /// How long a version stays readable after a newer one replaced it: the version
    /// GC's safepoint is the oracle's timestamp minus this (default
    /// [`GC_LIFE_TIME`](crate::GC_LIFE_TIME), 10 minutes); a transaction older than
    /// it gets `SnapshotTooOld`.
    pub gc_life_time: Duration,
    /// Tests only: run as a binary that supports cluster versions up to this one
    /// would (its store's maximum, and transaction requests read as such a binary
    /// reads them: `server/older.rs`). `None`: this binary.
    #[doc(hidden)]
    pub emulate_binary_max: Option<u32>,
    /// Where to serve `GET /metrics` (Prometheus text) and `GET /health` over HTTP
    /// (`regionkv node --status-addr`; port 0: any, see [`Node::status_addr`]).
    /// Default `None`: not served.
    pub status_addr: Option<SocketAddr>,
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
            .field("client_secret", &self.client_secret.as_ref().map(|_| "(hidden)"))
            .field("insecure", &self.insecure)
            .field("tick_interval", &self.tick_interval)
            .field("pollers", &self.pollers)
            .field("split_policy", &self.split_policy)
            .field("initial_cluster_state", &self.initial_cluster_state)
            .field("health", &self.health)
            .field("txn_recover_interval", &self.txn_recover_interval)
            .field("gc_life_time", &self.gc_life_time)
            .field("emulate_binary_max", &self.emulate_binary_max)
            .field("status_addr", &self.status_addr)
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
            client_secret: None,
            insecure: false,
            tick_interval: defaults::TICK_INTERVAL,
            pollers: defaults::POLLERS,
            split_policy: SplitPolicy::default(),
            initial_cluster_state: None,
            health: None,
            txn_recover_interval: crate::txn_recovery::TXN_RECOVER_INTERVAL,
            gc_life_time: crate::version_gc::GC_LIFE_TIME,
            emulate_binary_max: None,
            status_addr: None,
        }
    }

    /// How the health monitor judges and repairs (see [`NodeConfig::health`]).
    #[must_use]
    pub fn health(mut self, config: HealthConfig) -> NodeConfig {
        self.health = Some(config);
        self
    }

    /// The health monitor's settings: the configured ones, else the defaults with a
    /// replication factor of the stores this node was configured with (at most 3).
    fn health_config(&self) -> HealthConfig {
        self.health.clone().unwrap_or_else(|| HealthConfig {
            replication_factor: (self.peers.len() + 1).min(3),
            ..HealthConfig::default()
        })
    }

    /// Serves `/metrics` and `/health` over HTTP at `addr` (see
    /// [`NodeConfig::status_addr`]).
    #[must_use]
    pub fn status_addr(mut self, addr: SocketAddr) -> NodeConfig {
        self.status_addr = Some(addr);
        self
    }

    /// Bootstraps a new cluster if the data directory holds no store
    /// ([`InitialClusterState::New`]).
    #[must_use]
    pub fn bootstrap(mut self) -> NodeConfig {
        self.initial_cluster_state = Some(InitialClusterState::New);
        self
    }

    /// Joins a running cluster with an empty store if the data directory holds none
    /// ([`InitialClusterState::Existing`]).
    #[must_use]
    pub fn join(mut self) -> NodeConfig {
        self.initial_cluster_state = Some(InitialClusterState::Existing);
        self
    }

    /// Adds (or moves) a peer store.
    #[must_use]
    pub fn peer(mut self, store: StoreId, addr: SocketAddr) -> NodeConfig {
        self.peers.insert(store, addr);
        self
    }

    /// The options of the node's store.
    fn store_options(&self) -> StoreOptions {
        let mut store_config = StoreConfig::new(self.store_id)
            .tick_interval(self.tick_interval)
            .image_hash_interval(Some(crate::defaults::IMAGE_HASH_INTERVAL));
        if let Some(max) = self.emulate_binary_max {
            store_config = store_config.cluster_version_max(max);
        }
        let mut options = StoreOptions::new(store_config);
        options.pollers = self.pollers;
        options
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
        } else if self.client_secret.as_ref().is_some_and(|c| c.len() < SECRET_BYTES_MIN) {
            Some(format!("the client secret must have at least {SECRET_BYTES_MIN} bytes"))
        } else if self.client_secret.as_ref() == Some(&self.secret) {
            Some("the client secret must differ from the cluster secret".into())
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
    transport: Arc<TcpTransport>,
    control: ClusterOps,
    /// Every store of the cluster and where it listens, this one included.
    members: parking_lot::RwLock<BTreeMap<StoreId, String>>,
    split_policy: SplitPolicy,
    shut: AtomicBool,
    cancel: CancellationToken,
    /// Admin requests from clients run inside.
    tasks: Gate,
    task_threads: Mutex<Vec<JoinHandle<()>>>,
    /// The health monitor (it acts while this store leads the directory).
    health: Arc<HealthRunner>,
    /// The store's transaction recovery daemon (`txn_recovery.rs`).
    txn: Arc<TxnDaemon>,
}

impl NodeShared {
    fn is_shut_now(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    fn own_status(&self) -> StoreStatus {
        StoreStatus::of_store(self.id, &self.store)
    }

    /// Every node dials the store at `addr` from now on (best effort: a node that does
    /// not hear it learns it from its configuration at its next start).
    fn add_member(&self, store: StoreId, addr: &str) -> Result<()> {
        self.learn_member(store, addr)?;
        for other in self.remote.store_ids().into_iter().filter(|&s| s != store) {
            let member = proto::Request::Member { store, addr: addr.to_owned() };
            if let Err(e) = self.remote.ask(other, &member) {
                tracing::warn!(store = other.0, error = %e, "a node did not learn the new member's address");
            }
        }
        Ok(())
    }

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
        self.members.read().iter().map(|(s, a)| (*s, a.clone())).collect()
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

    fn add_store(&self, store: StoreId, addr: &str) -> Result<Vec<Region>> {
        self.add_member(store, addr)?;
        self.control.add_store(store, || region_table(self.statuses()))
    }

    fn remove_store(&self, store: StoreId) -> Result<Vec<Region>> {
        self.control.remove_store(store, || region_table(self.statuses()))
    }

    fn health(&self, audit: bool) -> HealthAnswer {
        if audit {
            self.health.audit().map_or(HealthAnswer::NotMonitor, |entries| HealthAnswer::Audit {
                entries,
                skipped: 0,
            })
        } else {
            self.health
                .report()
                .map_or(HealthAnswer::NotMonitor, |r| HealthAnswer::Report(Box::new(r)))
        }
    }

    fn upgrade_status(&self) -> Result<UpgradeStatus> {
        self.control.upgrade_status()
    }

    fn txn_ids(&self, count: u64) -> Result<u64> {
        self.control.alloc_ids(count)
    }

    fn dup_command(
        &self,
        cmd: regionkv_raft::directory::DirCmd,
    ) -> Result<regionkv_raft::directory::DirResult> {
        self.control.directory(&cmd, crate::defaults::ADMIN_DEADLINE)
    }

    fn txn_list(&self, in_doubt_only: bool, older_than_ms: Option<u64>) -> Vec<crate::TxnEntry> {
        txn::list(self, in_doubt_only, older_than_ms)
    }

    fn txn_recover(&self, region: Option<RegionId>) -> crate::TxnRecoveryTurn {
        txn::recover(self, region)
    }

    fn finalize_upgrade(&self, target: Option<u32>) -> Result<u32> {
        let active = self.control.finalize_upgrade(target, self.id)?;
        self.store.learn_cluster_version(active)?;
        Ok(active)
    }

    fn learn_member(&self, store: StoreId, addr: &str) -> Result<()> {
        let parsed: SocketAddr = addr.parse().map_err(|e| {
            Error::InvalidRequest(format!("store {store}'s address {addr:?} is not IP:PORT: {e}"))
        })?;
        if store == self.id || store == proto::CLIENT_ID {
            return Err(Error::InvalidRequest(format!(
                "store {store} cannot be added: it is this node's own id, or the clients' (0)"
            )));
        }
        self.transport.set_peer_addr(store, parsed)?;
        self.remote.set_addr(store, parsed);
        self.members.write().insert(store, parsed.to_string());
        Ok(())
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
/// .peer(StoreId(3), "127.0.0.1:7003".parse()?)
/// // The first start of a new cluster's node; ignored once its data dir holds a store.
/// .bootstrap();
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
    health: Mutex<Option<JoinHandle<()>>>,
    local_addr: SocketAddr,
    stopped: Mutex<bool>,
    /// The HTTP status server (`/metrics`, `/health`), if configured. It outlives
    /// [`Node::shutdown`] (answering 503) and stops when the node is dropped.
    status: Option<StatusServer>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("store", &self.shared.id)
            .field("addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// The node's side of the client protocol: clients prove the client secret's key if
/// there is one (else the cluster secret's), other nodes the cluster secret's.
fn client_service(config: &NodeConfig) -> ClientService {
    ClientService::new(proto::client_key(&config.secret), config.cluster_id, config.store_id)
        .emulating(config.emulate_binary_max)
        .securing(
            config.client_secret.as_deref().map(proto::client_key),
            LinkMode::from_insecure(config.insecure),
        )
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
        let fs = Arc::new(RealFs);
        fs.create_dir_all_durable(&config.data_dir)?;
        let first = first_start(&config)?;
        let id = config.store_id;
        let service = Arc::new(client_service(&config));
        // The store first: its incarnation goes in the transport's handshake. What it
        // sends before the transport is up is dropped (Raft resends).
        let outbound = Arc::new(TransportSlot::default());
        let as_transport: Arc<dyn Transport> = outbound.clone();
        let options = config.store_options();
        let store = Arc::new(Store::start(fs, &config.data_dir, &options, &as_transport)?);
        let remote = Arc::new(RemoteStores::new(
            proto::client_key(&config.secret),
            config.cluster_id,
            id,
            config.peers.clone(),
            LinkMode::from_insecure(config.insecure),
        ));
        if first == Some(InitialClusterState::Existing)
            && let Err(e) = join_floor(&remote, &store)
        {
            let _ = store.shutdown();
            return Err(e);
        }
        // Bootstrapped before it listens: a peer's vote request reaching a store of a
        // new cluster before its bootstrap would create a replica that holds nothing and
        // waits for a snapshot, which no leader can make before its group committed an
        // entry (no write would ever commit).
        if let Some(state) = first
            && let Err(e) = initialize(&config, &store, state)
        {
            let _ = store.shutdown();
            return Err(e);
        }
        let mut tcp =
            TcpConfig::new(id, config.listen_addr, config.cluster_id, config.secret.clone());
        tcp.peers = config.peers.iter().map(|(&s, &a)| (s, a)).collect();
        tcp.inbound_connections_max = 256;
        tcp.insecure = config.insecure;
        tcp.identity = Some(store.peer_book().clone());
        let transport = match TcpTransport::start_with(tcp, store.inbox(), Some(service.clone())) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                let _ = store.shutdown();
                return Err(e.into());
            }
        };
        let _ = outbound.0.set(transport.clone());
        let local_addr = transport.local_addr();

        let mut members: BTreeMap<StoreId, String> =
            config.peers.iter().map(|(&s, a)| (s, a.to_string())).collect();
        members.insert(id, local_addr.to_string());
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
                transport: transport.clone(),
                control: ClusterOps::new(backend),
                members: parking_lot::RwLock::new(members),
                split_policy: config.split_policy.clone(),
                shut: AtomicBool::new(false),
                cancel: CancellationToken::new(),
                tasks: Gate::new(),
                task_threads: Mutex::default(),
                health: HealthRunner::new(config.health_config()),
                txn: TxnDaemon::with_gc(
                    config.txn_recover_interval,
                    config.gc_life_time,
                    crate::version_gc::GC_INTERVAL,
                ),
            }
        });
        let backend =
            Arc::new(NodeStores { shared: Arc::downgrade(&shared), id, local: store, remote });
        service.bind(Arc::<NodeShared>::downgrade(&shared));
        let (reporter, health) = spawn_loops(&shared)?;
        txn::start(&shared)?;
        let incarnation = shared.store.peer_book().incarnation();
        let mut node = Node {
            shared,
            transport,
            service,
            backend,
            reporter: Mutex::new(Some(reporter)),
            health: Mutex::new(Some(health)),
            local_addr,
            stopped: Mutex::new(false),
            status: None,
        };
        if let Some(addr) = config.status_addr {
            // On failure the node is dropped: shut down in order.
            node.status = Some(status::start(addr, &node.shared, &node.service)?);
        }
        tracing::info!(store = id.0, addr = %local_addr, %incarnation, "node started");
        Ok(node)
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

    /// Hashes every replica of `region` at one Raft index; see
    /// [`Cluster::verify_region`](crate::Cluster::verify_region). A replica on another
    /// node reports its hash over the client protocol's peer status (`None` from a
    /// node whose status does not carry it).
    pub fn verify_region(&self, region: impl Into<RegionId>) -> Result<Vec<crate::ReplicaHash>> {
        self.shared.control.verify_region(region.into())
    }

    /// The user regions in key order, as the replicas of the stores that answer see
    /// them.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.shared.regions()
    }

    /// Adds store `store`, listening at `addr`, to the cluster: every node dials it
    /// there, and it joins the directory's group and every region as a learner with a
    /// new peer id (from the directory), is filled by a snapshot and, once caught up,
    /// promoted to a voter. The store must be running, started with
    /// [`NodeConfig::join`]. Returns the regions as they are afterwards. This is the
    /// second half of replacing a store whose disk was lost (after
    /// [`Node::remove_store`]); running it again is harmless.
    pub fn add_store(&self, store: StoreId, addr: SocketAddr) -> Result<Vec<Region>> {
        self.shared.add_store(store, &addr.to_string())
    }

    /// Removes store `store` from every region and the directory's group (one
    /// membership change per region). Its peers then accept it again with a new
    /// incarnation, so a node whose disk was lost can come back with `--join` and be
    /// added with [`Node::add_store`]. Returns the regions as they are afterwards.
    pub fn remove_store(&self, store: StoreId) -> Result<Vec<Region>> {
        self.shared.remove_store(store)
    }

    /// Makes store `store`, listening at `addr`, a member of the cluster without adding
    /// it to any region: every node dials it there, and the health monitor collects its
    /// status and may place replicas on it (a spare). The store must be running,
    /// started with [`NodeConfig::join`]. Running it again is harmless.
    pub fn add_member(&self, store: StoreId, addr: SocketAddr) -> Result<()> {
        self.shared.add_member(store, &addr.to_string())
    }

    /// The health monitor's last evaluation: problems, the analyses that lacked
    /// information, planned repairs, every store's liveness. `None` unless this node
    /// runs the monitor (its store leads the directory's group).
    pub fn health(&self) -> Option<HealthReport> {
        self.shared.health.report()
    }

    /// The repairs the health monitor carried out, and why (oldest first); empty
    /// unless this node runs the monitor.
    pub fn health_audit(&self) -> Vec<AuditEntry> {
        self.shared.health.audit().unwrap_or_default()
    }

    /// Changes the health monitor's settings (a detect-only switch, dry run, a
    /// maintenance window, timeouts).
    pub fn configure_health(&self, f: impl FnOnce(&mut HealthConfig)) {
        self.shared.health.configure(f);
    }

    /// The active cluster version and what every store of the cluster reports (see
    /// [`Cluster::upgrade_status`](crate::Cluster::upgrade_status)).
    pub fn upgrade_status(&self) -> Result<UpgradeStatus> {
        self.shared.upgrade_status()
    }

    /// The active cluster version, as the directory holds it.
    pub fn cluster_version(&self) -> Result<u32> {
        self.shared.control.cluster_version()
    }

    /// Raises the cluster version to `target` (default: the newest this binary runs);
    /// see [`Cluster::finalize_upgrade`](crate::Cluster::finalize_upgrade).
    pub fn finalize_upgrade(&self, target: Option<u32>) -> Result<u32> {
        self.shared.finalize_upgrade(target)
    }

    /// This node's store's status report: its replicas, its metrics, and the fields
    /// of status schema 2 (schema, binary version, boot id and report number, state,
    /// capacity). Each call takes the store's next report number.
    pub fn status(&self) -> StoreStatus {
        self.shared.own_status()
    }

    /// This node's store's metrics: regions, leaders, applied lag, write latency and
    /// batching, WAL fsync latency and group size.
    pub fn metrics(&self) -> StoreMetrics {
        self.shared.store.metrics()
    }

    /// Where the node serves `/metrics` and `/health` over HTTP (`None`: not
    /// configured, [`NodeConfig::status_addr`]).
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status.as_ref().map(StatusServer::local_addr)
    }

    /// Counters of the client protocol (connections, refused handshakes, bad frames).
    pub fn client_stats(&self) -> ClientStats {
        self.service.stats()
    }

    /// Counters of the store transport.
    pub fn transport_stats(&self) -> regionkv_raft::transport::tcp::TcpStats {
        self.transport.stats()
    }

    /// The store transport's latest failed handshakes, oldest first: a peer refused
    /// as replaced shows here with [`RejectReason::Replaced`](crate::RejectReason).
    pub fn transport_rejections(&self) -> Vec<regionkv_raft::transport::tcp::Rejection> {
        self.transport.recent_rejections()
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
        // The health monitor stops at its next turn, or between two steps of a repair.
        if let Some(health) = self.health.lock().take() {
            let _ = health.join();
        }
        shared.txn.stop();
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

    /// Stops at once, as a crash would leave it (minus the page cache): the store is
    /// killed (nothing flushed, no clean mark; its next open recovers from the log), then
    /// every connection closes and the node's threads stop. For tests and demos of
    /// failures (the health monitor's dead-store repair). [`Node::shutdown`] afterwards
    /// does nothing.
    pub fn kill(&self) {
        let mut stopped = self.stopped.lock();
        if *stopped {
            return;
        }
        *stopped = true;
        let shared = &self.shared;
        shared.shut.store(true, Ordering::SeqCst);
        shared.store.kill();
        self.transport.shutdown();
        shared.remote.close();
        shared.cancel.cancel();
        shared.txn.stop();
        for thread in [self.reporter.lock().take(), self.health.lock().take()].into_iter().flatten()
        {
            let _ = thread.join();
        }
        tracing::info!(store = shared.id.0, "node killed");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(store = self.shared.id.0, error = %e, "node shutdown on drop failed");
        }
    }
}

/// The store's outbound messages, to the TCP transport once it is up (the store starts
/// first: its incarnation goes in the transport's handshake).
#[derive(Default)]
struct TransportSlot(OnceLock<Arc<TcpTransport>>);

impl Transport for TransportSlot {
    fn send(&self, envelopes: Vec<regionkv_raft::transport::Envelope>) {
        if let Some(transport) = self.0.get() {
            transport.send(envelopes);
        }
    }
}

/// What a node must do before it serves: `None` if its data directory holds a store
/// it started before (the initial cluster state, if given, is ignored); else how to
/// initialize it, or [`Error::NotInitialized`] if the configuration does not say.
fn first_start(config: &NodeConfig) -> Result<Option<InitialClusterState>> {
    let dir = &config.data_dir;
    if dir.join(BOOTSTRAPPED).try_exists()? || dir.join(JOINED).try_exists()? {
        if let Some(state) = config.initial_cluster_state {
            tracing::info!(store = config.store_id.0, dir = %dir.display(), ?state, "the data dir holds a store already: the initial cluster state is ignored");
        }
        return Ok(None);
    }
    match config.initial_cluster_state {
        Some(state) => Ok(Some(state)),
        None => Err(Error::NotInitialized { data_dir: dir.clone() }),
    }
}

/// Initializes a store started for the first time, then writes its mark (durably,
/// before the node serves: a restart starts from the files). A crash before the mark
/// leaves a data directory that is initialized again with the same flag.
fn initialize(config: &NodeConfig, store: &Store, state: InitialClusterState) -> Result<()> {
    let mark = match state {
        InitialClusterState::New => {
            bootstrap(config, store)?;
            BOOTSTRAPPED
        }
        InitialClusterState::Existing => {
            tracing::info!(
                store = config.store_id.0,
                "joined with an empty store: add it to the cluster with `regionkv client store add`"
            );
            JOINED
        }
    };
    let file = std::fs::File::create(config.data_dir.join(mark))?;
    file.sync_all()?;
    std::fs::File::open(&config.data_dir)?.sync_all()?;
    Ok(())
}

/// Records the peer floor of a store joining a running cluster: an id from the
/// cluster's allocator, asked of its nodes over the client protocol. Every peer the
/// cluster adds to this store gets a greater id; every peer of an earlier life of the
/// store (whose disk was lost) has a smaller one, and is never taken for this one.
fn join_floor(remote: &Arc<RemoteStores>, store: &Store) -> Result<()> {
    let backend: Arc<dyn Backend> = remote.clone();
    let floor = ClusterOps::new(backend).alloc_ids(1).map_err(|e| Error::Unavailable {
        waited: defaults::ALLOC_IDS_DEADLINE,
        last: format!(
            "joining the cluster: no id from its directory ({e}); are the peers' addresses \
                 right, and are their nodes up?"
        ),
    })?;
    store.peer_book().set_peer_floor(PeerId(floor))?;
    tracing::info!(
        floor,
        "joining a running cluster: the peers of this store have ids above the floor"
    );
    Ok(())
}

/// Creates the directory and the first region on this store: every node of a fresh
/// cluster creates the same regions.
fn bootstrap(config: &NodeConfig, store: &Store) -> Result<()> {
    let mut stores: Vec<StoreId> = config.peers.keys().copied().collect();
    stores.push(config.store_id);
    stores.sort_unstable();
    let peers: Vec<Peer> = stores.iter().map(|&s| Peer { id: PeerId(s.0), store: s }).collect();
    // A new cluster runs at the newest version of this binary, which every node of it
    // runs (ARCHITECTURE.md, "Cluster versions").
    store.learn_cluster_version(store.cluster_version_max())?;
    for id in [DIRECTORY, FIRST_REGION] {
        let region = Region { peers: peers.clone(), ..Region::whole(id) };
        match store.bootstrap_region(region) {
            // A crash after the bootstrap and before the mark: the region is there.
            Ok(()) | Err(regionkv_raft::Error::RegionExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Starts the node's background threads: the reporter and the health monitor (both
/// stop once the node's cancellation token is cancelled).
fn spawn_loops(shared: &Arc<NodeShared>) -> Result<(JoinHandle<()>, JoinHandle<()>)> {
    let id = shared.id;
    let reporter = {
        let weak = Arc::downgrade(shared);
        let cancel = shared.cancel.clone();
        std::thread::Builder::new()
            .name(format!("node-reporter-{}", id.0))
            .spawn(move || report_loop(&weak, &cancel))?
    };
    let health = {
        let host = health::NodeHealth(Arc::downgrade(shared));
        let (runner, cancel) = (shared.health.clone(), shared.cancel.clone());
        std::thread::Builder::new()
            .name(format!("node-health-{}", id.0))
            .spawn(move || runner.run(&host, &cancel))?
    };
    Ok((reporter, health))
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
