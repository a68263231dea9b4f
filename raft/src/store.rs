//! [`Store`]: the production driver, running a store's Raft groups on threads.
//!
//! ```text
//!  transport ──envelopes──► inbox ──(region hash)──► poller i ──WriteTask──► writer i ──► WAL
//!  clients ──requests────────────────────────────────┘   ▲  │                   │ (group commit
//!                                                        │  └─messages─► transport   across writers)
//!                                                        └──── persisted ◄─────┘ + after-persist messages
//! ```
//!
//! Each poller thread owns the regions whose id hashes to it and runs a [`StoreCore`]
//! over them: it drains its mailbox, ticks on time, flushes, sends the messages that
//! may leave at once, and hands the log write to its writer. Each writer thread
//! persists its poller's writes in order (everything queued, in as few WAL records as
//! fit), then sends the messages that had to wait for the fsync and reports back.
//! Writers of different pollers share fsyncs through the WAL's group commit.
//!
//! Nothing in the store's own loop waits for a full queue (A5 and A9 in
//! ARCHITECTURE.md's Raft layer section). A poller's mailbox has three lanes, drained
//! in this order: *system* (unbounded: the writer's persisted notifications, core
//! tasks from other pollers, status calls), *peer* (Raft envelopes, bounded: the
//! transport drops what does not fit, and Raft resends) and *client* (requests,
//! bounded: senders wait). The writer's queue never blocks the poller either; instead,
//! with [`WRITER_BACKLOG`] write tasks not yet reported durable, the poller leaves its
//! client lane undrained until the writer catches up. A slow disk pushes back on
//! clients, never on Raft or on the writer.
//!
//! A poller never waits for the log writes of ordinary readies, but it does wait for a
//! disk, inline, while it applies a split (the children's logs are persisted with
//! `RaftLog::persist`, a WAL fdatasync, then every part is checkpointed), a merge step
//! (a checkpoint and a manifest fsync) or a membership change (a manifest fsync), and
//! while it checkpoints a region, prepares a snapshot or installs one. Meanwhile every
//! region of that poller waits: no requests, messages or ticks are handled. The core's
//! module docs list each of these steps.
//!
//! Each poller also has a reader thread: the poller confirms a scan (read index, epoch)
//! and takes the engine's read view, and the reader runs it (`reader.rs`), so that a
//! long scan holds up no region of the poller.
//!
//! Shutdown is ordered, each step once the one before is done: the store's token is
//! cancelled (and with it every timeline's), pollers stop taking requests and shut their
//! timelines down (bounded), readers answer their queued scans `Cancelled` and stop,
//! writers drain and stop, then the WAL is closed with its seal and the engine with its
//! clean-shutdown mark. [`Store::kill`] skips all of it, as a crash would.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use parking_lot::Mutex;
use regionkv_engine::{Engine, EngineOptions, Region, RegionId};
use regionkv_wal::fs::FileSystem;
use regionkv_wal::{CancellationToken, RecoveryMode, Wal, WalOptions};

use crate::config::StoreConfig;
use crate::core::{CoreTask, StoreContext, StoreCore, WriteTask};
use crate::directory::{DIRECTORY, DirCmd, DirResult, RegionRecord};
use crate::error::{Error, Result};
use crate::identity::{PeerBook, fresh_incarnation};
use crate::log::RaftLog;
use crate::mailbox::{Lane, Mailbox, SendError};
use crate::metrics::StoreMetrics;
use crate::replica::PeerStatus;
use crate::request::{
    AdminRequest, ChangePeersRequest, MergeStatus, ReadRequest, Reply, WriteRequest,
};
use crate::transport::{Envelope, Inbox, Transport};

mod dup_source;
mod solo;

use self::solo::{Outlets, Persist, SharedCore, Turn, finish_turn};

/// Requests a poller takes.
enum Msg {
    Envelopes(Vec<Envelope>),
    Write(WriteRequest),
    Read(ReadRequest),
    ChangePeers(ChangePeersRequest),
    TransferLeader(RegionId, regionkv_engine::PeerId),
    Bootstrap(Region, Sender<Result<()>>),
    /// From the writer: `tasks` write tasks are durable, with these readies.
    Persisted {
        readies: Vec<(RegionId, u64)>,
        tasks: usize,
    },
    Status(Sender<Vec<PeerStatus>>),
    Metrics(Sender<StoreMetrics>),
    Admin(Box<AdminRequest>),
    MergeStatus(RegionId, Sender<Result<MergeStatus>>),
    Task(CoreTask),
    Directory(DirCmd, Reply<DirResult>),
    Timestamps(u32, Reply<u64>),
    Txn(Box<crate::txn::TxnRequest>),
    Dup(Box<crate::dup::DupRequest>),
    Sink(Box<crate::sink::SinkRequest>),
    PeerStatus(RegionId, Sender<Option<PeerStatus>>),
    /// Duplication's seed: a checkpoint at or past the index (`Store::dup_seed_image`).
    DupCheckpoint(RegionId, u64, Sender<Result<u64>>),
    /// Duplication's verify: the region's data, applied index and tables as of one
    /// index (`Store::region_view`).
    RegionView(RegionId, Sender<Result<crate::dup_fingerprint::RegionView>>),
}

impl Msg {
    /// The mailbox lane this message rides (see `crate::mailbox`): the store's own
    /// traffic and synchronous status calls never wait behind clients or peers.
    fn lane(&self) -> Lane {
        match self {
            Msg::Envelopes(_) => Lane::Peer,
            Msg::Write(_)
            | Msg::Read(_)
            | Msg::ChangePeers(_)
            | Msg::TransferLeader(..)
            | Msg::Admin(_)
            | Msg::Txn(_)
            | Msg::Dup(_)
            | Msg::DupCheckpoint(..)
            | Msg::RegionView(..)
            | Msg::Sink(_)
            | Msg::Directory(..)
            | Msg::Timestamps(..) => Lane::Client,
            Msg::Bootstrap(..)
            | Msg::Persisted { .. }
            | Msg::Status(_)
            | Msg::Metrics(_)
            | Msg::MergeStatus(..)
            | Msg::Task(_)
            | Msg::PeerStatus(..) => Lane::System,
        }
    }
}

/// Bounds of a poller's peer lane (envelope batches) and client lane (requests).
const PEER_QUEUE: usize = 4096;
const CLIENT_QUEUE: usize = 4096;
/// Write tasks a poller has handed to its writer and not yet heard are durable, past
/// which it takes no client requests (they wait in the client lane, then their
/// senders block): the writer's backlog is bounded by backpressure on clients, never
/// by blocking the poller (A5 in ARCHITECTURE.md's Store section).
const WRITER_BACKLOG: usize = 64;

/// How a [`Store`] runs on threads.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The Raft and store configuration.
    pub config: StoreConfig,
    /// Poller threads (each with its writer thread).
    pub pollers: usize,
    /// Options of the store's WAL.
    pub wal: WalOptions,
    /// How long shutdown waits for tasks inside each timeline.
    pub shutdown_timeout: Duration,
}

impl StoreOptions {
    /// One poller and default WAL options for `config`.
    pub fn new(config: StoreConfig) -> StoreOptions {
        StoreOptions {
            config,
            pollers: 1,
            wal: WalOptions::default(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the transport hands a store its envelopes.
struct StoreInbox {
    pollers: Vec<Arc<Mailbox<Msg>>>,
    dropped: AtomicU64,
    /// Region changes for the directory, newest per region, until taken.
    reports: Mutex<HashMap<RegionId, RegionRecord>>,
}

/// Opens the store's WAL in `dir/wal`. A replica may cut damage in the last group of
/// records, which may hold acknowledged writes and its latest vote: its regions vote
/// again only once caught up past the cut (`StoreContext::log_cut`).
fn open_wal(fs: Arc<dyn FileSystem>, dir: &Path, options: &StoreOptions) -> Result<Wal> {
    let wal_dir = dir.join("wal");
    match Wal::open(fs.clone(), &wal_dir, options.wal.clone()) {
        Ok(wal) => Ok(wal),
        Err(regionkv_wal::Error::Corruption { .. })
            if options.wal.recovery == RecoveryMode::TolerateTornTail =>
        {
            tracing::warn!(dir = %wal_dir.display(), "WAL damaged beyond its torn tail; recovering to the last good record");
            let point_in_time = options.wal.clone().recovery(RecoveryMode::PointInTime);
            Ok(Wal::open(fs, &wal_dir, point_in_time)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A fresh boot id (see [`Store::boot_id`]) from the operating system's randomness.
fn fresh_boot_id() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness for a boot id: {e}")))?;
    Ok(u64::from_le_bytes(bytes))
}

fn poller_of(region: RegionId, pollers: usize) -> usize {
    // Fibonacci hashing spreads consecutive ids.
    ((region.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % pollers as u64) as usize
}

impl Inbox for StoreInbox {
    fn deliver(&self, envelopes: Vec<Envelope>) {
        let n = self.pollers.len();
        let mut shards: Vec<Vec<Envelope>> = (0..n).map(|_| Vec::new()).collect();
        for env in envelopes {
            shards[poller_of(env.region, n)].push(env);
        }
        for (i, batch) in shards.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let len = batch.len() as u64;
            if self.pollers[i].try_send(Lane::Peer, Msg::Envelopes(batch)).is_err() {
                // Raft resends what a full lane drops; clients never fill this one.
                self.dropped.fetch_add(len, Ordering::Relaxed);
            }
        }
    }
}

/// A running store: its Raft groups on poller and writer threads.
pub struct Store {
    ctx: Arc<StoreContext>,
    /// Each poller's core, which a caller may run (`store/solo.rs`), and its writer's
    /// queue, by poller.
    cores: Vec<(Arc<SharedCore>, Arc<Mailbox<WriteTask>>)>,
    transport: Arc<dyn Transport>,
    /// This store's incarnation and the peers' (`crate::identity`), for its transport.
    book: Arc<PeerBook>,
    wal: Wal,
    inbox: Arc<StoreInbox>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set by `kill`: threads leave at once, nothing is flushed.
    killed: Arc<AtomicBool>,
    shutdown_timeout: Duration,
    /// Drawn at random when the store started (see [`Store::boot_id`]).
    boot_id: u64,
    /// Status reports numbered in this start (see [`Store::next_report_seq`]).
    reports_numbered: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("store", &self.ctx.config.store_id).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `dir` (its WAL in `dir/wal`, its engine in `dir/engine`),
    /// recovers it, and starts its threads. Messages go out through `transport`;
    /// register [`Store::inbox`] with the transport for messages to come in.
    pub fn start(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: &StoreOptions,
        transport: &Arc<dyn Transport>,
    ) -> Result<Store> {
        let wal = open_wal(fs.clone(), dir, options)?;
        let id = options.config.store_id;
        let engine = Engine::open(fs.clone(), dir.join("engine"), EngineOptions::new(id))?;
        let directory = Engine::open(fs, dir.join("directory"), EngineOptions::new(id))?;
        let incarnation = engine.ensure_incarnation(fresh_incarnation()?)?;
        let boot_id = fresh_boot_id()?;
        let book = Arc::new(PeerBook::open(id, incarnation, engine.clone(), directory.clone())?);
        let log = Arc::new(RaftLog::open(wal.clone(), options.config.log)?);
        let cancel = CancellationToken::new();
        let mut ctx = StoreContext::new(options.config.clone(), engine, directory, log, cancel);
        ctx.log_cut = crate::core::wal_lost_records(&wal);
        // Before any replica applies: an older binary refuses a store that ran newer.
        ctx.open_cluster_version()?;
        let ctx = Arc::new(ctx);
        let pollers = options.pollers.max(1);
        let mut senders = Vec::with_capacity(pollers);
        for _ in 0..pollers {
            senders.push(Arc::new(Mailbox::new(PEER_QUEUE, CLIENT_QUEUE)));
        }
        let receivers = senders.clone();
        let inbox = Arc::new(StoreInbox {
            pollers: senders.clone(),
            dropped: AtomicU64::new(0),
            reports: Mutex::new(HashMap::new()),
        });
        let killed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut cores = Vec::with_capacity(pollers);
        let all_pollers: Arc<Vec<Arc<Mailbox<Msg>>>> = Arc::new(senders.clone());
        for (i, rx) in receivers.into_iter().enumerate() {
            let mut core =
                StoreCore::open(ctx.clone(), Box::new(move |r| poller_of(r, pollers) == i))?;
            // The poller's reader thread: its confirmed scans run there (`reader.rs`).
            let (scans, reader) = crate::reader::spawn(&ctx, i)?;
            core.serve_scans_on(scans);
            // Only the system lane is used: bounded by `WRITER_BACKLOG` (see there).
            let wtx = Arc::new(Mailbox::<WriteTask>::new(1, 1));
            let wrx = wtx.clone();
            let core = Arc::new(SharedCore::new(core));
            cores.push((core.clone(), wtx.clone()));
            let store_id = ctx.config.store_id.0;
            let writer = {
                let (ctx, transport, back, killed) =
                    (ctx.clone(), transport.clone(), senders[i].clone(), killed.clone());
                std::thread::Builder::new()
                    .name(format!("s{store_id}-writer-{i}"))
                    .spawn(move || writer_loop(&ctx, &wrx, transport.as_ref(), &back, &killed))
                    .map_err(|e| Error::Internal(format!("spawn writer: {e}")))?
            };
            let poller = {
                let (transport, killed) = (transport.clone(), killed.clone());
                let timeout = options.shutdown_timeout;
                let others = all_pollers.clone();
                let inbox = inbox.clone();
                std::thread::Builder::new()
                    .name(format!("s{store_id}-poller-{i}"))
                    .spawn(move || {
                        let pollers = Pollers { mailboxes: &others, inbox: &inbox };
                        poller_loop(
                            &core,
                            &rx,
                            &wtx,
                            &pollers,
                            transport.as_ref(),
                            &killed,
                            timeout,
                        );
                    })
                    .map_err(|e| Error::Internal(format!("spawn poller: {e}")))?
            };
            threads.push(poller);
            threads.push(writer);
            threads.push(reader);
        }
        tracing::info!(store = ctx.config.store_id.0, pollers, dir = %dir.display(), "store started");
        Ok(Store {
            ctx,
            cores,
            transport: transport.clone(),
            book,
            wal,
            inbox,
            threads: Mutex::new(threads),
            killed,
            shutdown_timeout: options.shutdown_timeout,
            boot_id,
            reports_numbered: AtomicU64::new(0),
        })
    }

    /// This store's incarnation, and the incarnation each peer store was last
    /// accepted with: give it to the transport (`TcpConfig::identity`).
    pub fn peer_book(&self) -> &Arc<PeerBook> {
        &self.book
    }

    /// Where the transport delivers this store's envelopes.
    pub fn inbox(&self) -> Arc<dyn Inbox> {
        self.inbox.clone()
    }

    /// The store's shared context (engine, log, configuration).
    pub fn context(&self) -> &Arc<StoreContext> {
        &self.ctx
    }

    fn send(&self, region: RegionId, msg: Msg) -> Result<()> {
        if self.ctx.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let i = poller_of(region, self.inbox.pollers.len());
        self.inbox.pollers[i].send(msg.lane(), msg).map_err(|_| Error::Cancelled)
    }

    /// Creates `region` from nothing on this store (cluster bootstrap).
    pub fn bootstrap_region(&self, region: Region) -> Result<()> {
        let (tx, rx) = bounded(1);
        self.send(region.id, Msg::Bootstrap(region, tx))?;
        rx.recv().map_err(|_| Error::Cancelled)?
    }

    /// Submits a write; its reply is called when it is applied or refused.
    pub fn write(&self, req: WriteRequest) {
        let region = req.region;
        if let Err(Msg::Write(req)) = self.try_send(region, Msg::Write(req)) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// Submits a write for a caller that waits for its reply anyway (`Db`). If the
    /// region's poller is idle and hosts no replica with a peer on another store, the
    /// write runs on this thread, its fsync included, and its reply is called before
    /// this returns: no thread is woken (`store/solo.rs`). Otherwise as
    /// [`Store::write`]. Not for a thread that serves other requests meanwhile (a
    /// server connection): it would wait for each write's fsync in turn.
    pub fn write_here(&self, req: WriteRequest) {
        let Some(req) = self.take_turn(req) else { return };
        self.write(req);
    }

    /// Submits a linearizable read. A get of a region whose only voter is this store's
    /// leader is answered here, on the caller's thread (`reader::LocalReads`); any
    /// other read goes through the region's poller.
    pub fn read(&self, req: ReadRequest) {
        if self.ctx.cancel.is_cancelled() {
            (req.reply)(Err(Error::Cancelled));
            return;
        }
        let Some(req) = self.ctx.local_reads.serve(&self.ctx, req) else { return };
        let region = req.region;
        if let Err(Msg::Read(req)) = self.try_send(region, Msg::Read(req)) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// Submits a transaction command; its reply is called when it is applied or
    /// refused. Refused with `Error::FeatureNotActive` before the cluster runs at
    /// `version::TXN`.
    pub fn txn(&self, req: crate::txn::TxnRequest) {
        let region = req.region;
        if let Err(Msg::Txn(req)) = self.try_send(region, Msg::Txn(Box::new(req))) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// Submits a duplication command (`crate::dup`); its reply is called when it is
    /// applied or refused. Refused with `Error::FeatureNotActive` before the cluster
    /// runs at `version::DUP`.
    pub fn dup(&self, req: crate::dup::DupRequest) {
        let region = req.region;
        if let Err(Msg::Dup(req)) = self.try_send(region, Msg::Dup(Box::new(req))) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// Submits a sink command (`crate::sink`: duplication, follower side); its reply
    /// is called when it is applied or refused. Refused with
    /// `Error::FeatureNotActive` before the cluster runs at `version::DUP_V2`.
    pub fn sink(&self, req: crate::sink::SinkRequest) {
        let region = req.region;
        if let Err(Msg::Sink(req)) = self.try_send(region, Msg::Sink(Box::new(req))) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// Region `region`'s sink state as this store applied it (empty: it sinks
    /// nothing); `None` if the store does not host the region.
    pub fn sink_table(&self, region: RegionId) -> Option<regionkv_engine::sink::SinkTable> {
        if region == crate::directory::DIRECTORY {
            return None;
        }
        self.ctx.engine.sink_table(region)
    }

    /// Submits a membership change.
    pub fn change_peers(&self, req: ChangePeersRequest) {
        let region = req.region;
        if let Err(Msg::ChangePeers(req)) = self.try_send(region, Msg::ChangePeers(req)) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// Submits an admin command (split, merge steps) to this store's replica of its region.
    pub fn admin(&self, req: AdminRequest) {
        let region = req.region;
        if let Err(Msg::Admin(req)) = self.try_send(region, Msg::Admin(Box::new(req))) {
            (req.reply)(Err(Error::Cancelled));
        }
    }

    /// The merge status of `region`, from its leader here.
    pub fn merge_status(&self, region: RegionId) -> Result<MergeStatus> {
        let (tx, rx) = bounded(1);
        self.send(region, Msg::MergeStatus(region, tx))?;
        rx.recv_timeout(Duration::from_secs(10)).map_err(|_| Error::Timeout { region })?
    }

    /// Asks the leader of `region` here to hand leadership to peer `to`.
    pub fn transfer_leader(&self, region: RegionId, to: regionkv_engine::PeerId) -> Result<()> {
        self.send(region, Msg::TransferLeader(region, to))
    }

    /// Hands a request to its poller, blocking while its lane is full (backpressure);
    /// gives the request back if the store is stopping. (A read's `Query` carries its
    /// read timestamp: `Msg` passed the lint's 128 bytes; boxing it would cost every
    /// request an allocation, to spare a copy on the stopping path only.)
    #[allow(clippy::result_large_err)]
    fn try_send(&self, region: RegionId, msg: Msg) -> std::result::Result<(), Msg> {
        if self.ctx.cancel.is_cancelled() {
            return Err(msg);
        }
        let i = poller_of(region, self.inbox.pollers.len());
        self.inbox.pollers[i].send(msg.lane(), msg).map_err(|e| match e {
            SendError::Full(msg) | SendError::Closed(msg) => msg,
        })
    }

    /// The status of every replica on this store.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.status_report().0
    }

    /// The status of every replica on this store, by region id, and true if the list
    /// is complete: every poller answered in time (one that did not is left out).
    pub fn status_report(&self) -> (Vec<PeerStatus>, bool) {
        let mut all = Vec::new();
        let mut complete = true;
        for poller in &self.inbox.pollers {
            let (tx, rx) = bounded(1);
            if poller.send(Lane::System, Msg::Status(tx)).is_ok()
                && let Ok(status) = rx.recv_timeout(Duration::from_secs(10))
            {
                all.extend(status);
            } else {
                complete = false;
            }
        }
        all.sort_by_key(|s| s.region.id);
        (all, complete)
    }

    /// A random number drawn when this store started: a status report with another
    /// one comes from another start of the store.
    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// The next number of this start's status reports: 1, then 2, and so on. A
    /// monitor drops a report whose `(boot id, number)` is not newer than the last it
    /// kept (reports can be reordered on the way).
    pub fn next_report_seq(&self) -> u64 {
        self.reports_numbered.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The failure that stopped the store, if one did (a log write, an apply, a
    /// poisoned log or engine).
    pub fn failure(&self) -> Option<String> {
        self.ctx.failure()
    }

    /// True once the store began to stop: a shutdown, a kill or a failure.
    pub fn is_stopping(&self) -> bool {
        self.ctx.cancel.is_cancelled()
    }

    /// The store's metrics: its replicas (regions, leaders, hibernating, applied lag),
    /// write latency and batching, apply rounds and WAL figures. Each poller answers
    /// for its replicas; one that does not answer in time is left out.
    pub fn metrics(&self) -> StoreMetrics {
        let mut total = StoreMetrics::default();
        for poller in &self.inbox.pollers {
            let (tx, rx) = bounded(1);
            if poller.send(Lane::System, Msg::Metrics(tx)).is_ok()
                && let Ok(part) = rx.recv_timeout(Duration::from_secs(10))
            {
                total.add_replicas(&part);
            }
        }
        self.ctx.metrics.fill(&mut total);
        total.wal = self.wal.stats();
        let recovery = self.ctx.engine.task_state(crate::txn::recovery_state::TASK);
        total.txn_recovery_deferred = recovery
            .and_then(|b| crate::txn::recovery_state::RecoveryState::decode(&b).ok())
            .and_then(|s| s.first_deferred());
        total
    }

    /// Region changes seen by this store's leaders since the last call (the newest per
    /// region), for the cluster directory.
    pub fn take_reports(&self) -> Vec<RegionRecord> {
        let mut reports: Vec<RegionRecord> =
            std::mem::take(&mut *self.inbox.reports.lock()).into_values().collect();
        reports.sort_by_key(|r| r.region.id);
        reports
    }

    /// The cluster version this store runs at, as it last learned it
    /// (`crate::version`).
    pub fn cluster_version(&self) -> u32 {
        self.ctx.cluster_version.active()
    }

    /// The newest cluster version this store supports: its configured
    /// [`StoreConfig::cluster_version_max`].
    pub fn cluster_version_max(&self) -> u32 {
        self.ctx.config.cluster_version_max
    }

    /// Learns that the cluster runs at `active`, durably (see
    /// [`StoreContext::learn_cluster_version`]); true if this store's view moved.
    pub fn learn_cluster_version(&self, active: u32) -> Result<bool> {
        self.ctx.learn_cluster_version(active)
    }

    /// Submits a command to the cluster directory, whose leader must be on this store.
    pub fn directory(&self, cmd: DirCmd, reply: Reply<DirResult>) {
        if let Err(Msg::Directory(_, reply)) = self.try_send(DIRECTORY, Msg::Directory(cmd, reply))
        {
            reply(Err(Error::Cancelled));
        }
    }

    /// `count` consecutive timestamps from the oracle (`crate::tso`), whose directory
    /// leader must be on this store: `reply` gets the first of them.
    pub fn timestamps(&self, count: u32, reply: Reply<u64>) {
        if let Err(Msg::Timestamps(_, reply)) =
            self.try_send(DIRECTORY, Msg::Timestamps(count, reply))
        {
            reply(Err(Error::Cancelled));
        }
    }

    /// The status of this store's replica of `region`, if it has one (cheaper than
    /// [`Store::status`] on a store with many regions).
    pub fn peer_status(&self, region: RegionId) -> Option<PeerStatus> {
        let (tx, rx) = bounded(1);
        self.send(region, Msg::PeerStatus(region, tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok().flatten()
    }

    /// Envelopes dropped because a poller's queue was full.
    pub fn dropped_envelopes(&self) -> u64 {
        self.inbox.dropped.load(Ordering::Relaxed)
    }

    /// Shuts down in order and writes the clean-shutdown marks. See the module docs.
    ///
    /// If a thread has not stopped by its deadline (a writer inside an fsync that does
    /// not return, a poller inside a long apply), no mark is written and an error
    /// names the threads: the next open recovers as after a crash, which is right for a
    /// state a running thread may still change.
    pub fn shutdown(&self) -> Result<()> {
        // 1. Cancel: requests are refused from now on, timelines see shutdown.
        self.ctx.cancel.cancel();
        // 2-4. Pollers shut their timelines down and leave; writers drain and leave.
        let running = self.join();
        if !running.is_empty() {
            tracing::warn!(store = self.ctx.config.store_id.0, threads = ?running, "threads did not stop in time; no clean-shutdown mark written");
            return Err(Error::Internal(format!(
                "threads {running:?} did not stop within {:?}: no clean-shutdown mark was \
                 written; the next open recovers as after a crash",
                self.shutdown_timeout * 2
            )));
        }
        // 5. The clean-shutdown marks.
        self.wal.close()?;
        self.ctx.engine.close()?;
        self.ctx.directory.close()?;
        tracing::info!(store = self.ctx.config.store_id.0, "store shut down cleanly");
        Ok(())
    }

    /// Stops at once: nothing is flushed or closed, as a crash would leave it (minus
    /// the page cache, which a process kill does not lose).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.ctx.cancel.cancel();
        let _ = self.join();
    }

    /// Waits (bounded) for every thread to stop; returns the names of those that did
    /// not.
    fn join(&self) -> Vec<String> {
        let threads = std::mem::take(&mut *self.threads.lock());
        let deadline = Instant::now() + self.shutdown_timeout * 2;
        let mut running = Vec::new();
        for t in threads {
            // Threads leave on cancellation within a tick; the deadline is a last guard.
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                let name = t.thread().name().unwrap_or("unnamed").to_owned();
                tracing::warn!(thread = %name, "thread did not stop in time");
                running.push(name);
            }
        }
        running
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if !self.threads.lock().is_empty() {
            self.kill();
        }
    }
}

fn handle(core: &mut StoreCore, msg: Msg) {
    match msg {
        Msg::Envelopes(envs) => core.on_envelopes(envs),
        Msg::Write(req) => core.on_write(req),
        Msg::Read(req) => core.on_read(req),
        Msg::ChangePeers(req) => core.on_change_peers(req),
        Msg::TransferLeader(region, to) => core.on_transfer_leader(region, to),
        Msg::Bootstrap(region, reply) => {
            let _ = reply.send(core.bootstrap_region(region));
        }
        Msg::Persisted { readies, .. } => core.on_persisted(&readies),
        Msg::Status(reply) => {
            let _ = reply.send(core.status());
        }
        Msg::Metrics(reply) => {
            let _ = reply.send(core.metrics());
        }
        Msg::Admin(req) => core.on_admin(*req),
        Msg::Txn(req) => core.on_txn(*req),
        Msg::Dup(req) => core.on_dup(*req),
        Msg::Sink(req) => core.on_sink(*req),
        Msg::MergeStatus(region, reply) => {
            let _ = reply.send(core.merge_status(region));
        }
        Msg::Task(task) => core.on_task(task),
        Msg::Directory(cmd, reply) => core.on_directory(&cmd, reply),
        Msg::Timestamps(count, reply) => core.on_timestamps(count, reply),
        Msg::PeerStatus(region, reply) => {
            let _ = reply.send(core.peer_status(region));
        }
        Msg::DupCheckpoint(region, min_index, reply) => {
            let _ = reply.send(core.on_dup_checkpoint(region, min_index));
        }
        Msg::RegionView(region, reply) => {
            let _ = reply.send(core.region_view(region));
        }
    }
}

/// What a poller hands to its siblings and to the store: core tasks that cross from
/// one poller to another, and reports for the directory.
struct Pollers<'a> {
    mailboxes: &'a [Arc<Mailbox<Msg>>],
    inbox: &'a StoreInbox,
}

impl Pollers<'_> {
    fn send(&self, task: CoreTask) {
        let i = poller_of(task.region(), self.mailboxes.len());
        // The system lane never blocks (two pollers sending each other tasks cannot
        // wedge) and never drops: one lost would stall a merge or leave a split child
        // without its replica until a restart.
        if self.mailboxes[i].send(Lane::System, Msg::Task(task)).is_err() {
            tracing::debug!("core task dropped: the poller stopped");
        }
    }

    fn report(&self, reports: Vec<RegionRecord>) {
        if reports.is_empty() {
            return;
        }
        let mut pending = self.inbox.reports.lock();
        for r in reports {
            pending.insert(r.region.id, r);
        }
    }
}

/// A poller: its turns run its core under the lock it shares with callers on the fast
/// path (`store/solo.rs`), and it never sleeps holding it.
fn poller_loop(
    shared: &SharedCore,
    inbox: &Mailbox<Msg>,
    writer: &Mailbox<WriteTask>,
    pollers: &Pollers<'_>,
    transport: &dyn Transport,
    killed: &AtomicBool,
    shutdown_timeout: Duration,
) {
    let ctx = shared
        .turn
        .lock()
        .as_ref()
        .expect("a poller's core, until it leaves")
        .core
        .context()
        .clone();
    let tick = ctx.config.tick_interval;
    let cancel = ctx.cancel.clone();
    let mut next_tick = Instant::now() + tick;
    let mut batch = Vec::new();
    // The backlog as this poller's last turn left it (`Turn::backlog`).
    let mut backlog = 0usize;
    loop {
        if killed.load(Ordering::Relaxed) {
            // Once a caller's turn is over, no caller runs the core again.
            shared.turn.lock().take();
            leave(inbox, writer);
            return;
        }
        if cancel.is_cancelled() {
            // Persisted notifications still arrive while the writer drains; serve
            // them so waiting clients learn their outcome, then stop the timelines.
            inbox.recv_all(&mut batch, Instant::now(), true);
            let mut guard = shared.turn.lock();
            let Turn { core, .. } = guard.as_mut().expect("a poller's core, until it leaves");
            for msg in batch.drain(..) {
                if let Msg::Persisted { .. } | Msg::Status(_) | Msg::Metrics(_) | Msg::Task(_) = msg
                {
                    handle(core, msg);
                } else {
                    refuse(msg);
                }
            }
            core.shutdown(shutdown_timeout);
            guard.take();
            drop(guard);
            leave(inbox, writer);
            return;
        }
        // Clients wait while the writer is behind; Raft and the writer never do.
        if !inbox.recv_all(&mut batch, next_tick, backlog < WRITER_BACKLOG) {
            shared.turn.lock().take();
            leave(inbox, writer);
            return;
        }
        let mut guard = shared.turn.lock();
        let turn = guard.as_mut().expect("a poller's core, until it leaves");
        let core = &mut turn.core;
        for msg in batch.drain(..) {
            if let Msg::Persisted { tasks, .. } = &msg {
                turn.backlog = turn.backlog.saturating_sub(*tasks);
            }
            handle(core, msg);
        }
        if Instant::now() >= next_tick {
            core.on_tick();
            next_tick += tick;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick; // fell behind: do not tick in a burst
            }
        }
        let out = core.flush();
        let to = Outlets { ctx: &ctx, pollers, transport, writer };
        if !finish_turn(turn, out, &to, Persist::Writer) {
            guard.take();
            return; // the writer stopped: the store failed
        }
        backlog = turn.backlog;
    }
}

/// A poller stops: its writer drains what it has and stops, and requests still
/// queued (or sent from now on) are refused, so that no client waits for room in a
/// lane nobody drains.
fn leave(inbox: &Mailbox<Msg>, writer: &Mailbox<WriteTask>) {
    writer.close();
    inbox.close();
    let mut rest = Vec::new();
    inbox.recv_all(&mut rest, Instant::now(), true);
    rest.into_iter().for_each(refuse);
}

fn refuse(msg: Msg) {
    match msg {
        Msg::Write(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::Read(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::ChangePeers(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::Bootstrap(_, reply) => {
            let _ = reply.send(Err(Error::Cancelled));
        }
        Msg::Admin(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::Txn(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::Dup(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::Sink(req) => (req.reply)(Err(Error::Cancelled)),
        Msg::Directory(_, reply) => reply(Err(Error::Cancelled)),
        Msg::Timestamps(_, reply) => reply(Err(Error::Cancelled)),
        Msg::MergeStatus(_, reply) => {
            let _ = reply.send(Err(Error::Cancelled));
        }
        Msg::DupCheckpoint(_, _, reply) => {
            let _ = reply.send(Err(Error::Cancelled));
        }
        Msg::RegionView(_, reply) => {
            let _ = reply.send(Err(Error::Cancelled));
        }
        Msg::Envelopes(_)
        | Msg::PeerStatus(..)
        | Msg::TransferLeader(..)
        | Msg::Persisted { .. }
        | Msg::Status(_)
        | Msg::Metrics(_)
        | Msg::Task(_) => {}
    }
}

fn writer_loop(
    ctx: &StoreContext,
    inbox: &Mailbox<WriteTask>,
    transport: &dyn Transport,
    back: &Mailbox<Msg>,
    killed: &AtomicBool,
) {
    let mut tasks = Vec::new();
    // The poller closes the mailbox when it stops; a far deadline only bounds the wait.
    while inbox.recv_all(&mut tasks, Instant::now() + Duration::from_secs(1), true) {
        if killed.load(Ordering::Relaxed) {
            return;
        }
        if tasks.is_empty() {
            continue;
        }
        let done = tasks.len();
        let mut writes = Vec::with_capacity(tasks.len());
        let mut messages = Vec::new();
        let mut readies = Vec::new();
        for task in tasks.drain(..) {
            if !task.write.is_empty() {
                writes.push(task.write);
            }
            messages.extend(task.messages);
            readies.extend(task.readies);
        }
        if !writes.is_empty()
            && let Err(e) = ctx.log.persist_all(&writes)
        {
            // Fail-stop: nothing more is acknowledged; a restart recovers from disk.
            if ctx.cancel.is_cancelled() || e.is_cancelled() {
                tracing::debug!(error = %e, "log write stopped by shutdown");
                ctx.cancel.cancel();
            } else {
                tracing::error!(store = ctx.config.store_id.0, error = %e, "log write failed; the store stops");
                ctx.stop_on_failure(&e);
            }
            return;
        }
        if killed.load(Ordering::Relaxed) {
            return;
        }
        transport.send(messages);
        // The system lane: never full, so the writer never waits for its poller (A5).
        // Closed once the poller left; what is still queued is persisted all the same.
        let _ = back.send(Lane::System, Msg::Persisted { readies, tasks: done });
    }
}
