//! A deterministic simulator that drives real stores on one thread.
//!
//! Each simulated store is the production code ([`StoreCore`], [`RaftLog`] on a
//! [`Wal`], an [`Engine`]) on its own simulated disk ([`SimFs`]). A virtual clock and
//! one seeded generator decide everything else: when ticks happen, how long messages
//! travel (and whether the [`Faults`] drop, duplicate or delay them), how long each
//! write takes to become durable, and what a crash leaves on disk. The same seed gives
//! the same run, event for event ([`SimCluster::trace_hash`]).
//!
//! Checkers run after every event:
//! - P5: at most one leader per region and term, across restarts;
//! - P6: the entry applied at an index of a region is the same on every replica;
//! - rounds: between flushes no write-batch round holds a region pin (a round pins
//!   the regions it prepared until it is committed or dropped);
//! - P7: on every store, a region's term and epoch never go back (across restarts),
//!   and commit and applied index never go back while the store runs (after a restart
//!   the applied index starts at the region's checkpoint and the log is replayed
//!   before any read is served);
//! - A1: no store stops (the simulated disks never fail, and nothing else may stop a
//!   store: a command that cannot apply is refused);
//! - alone: every core's list of replicas that may have a peer on another store (what
//!   lets a caller run the core, `store/solo.rs`) is exact, through membership
//!   changes, splits, merges, snapshots and restarts;
//! - D1: no replica compacts its log past its region's duplication floor (its log
//!   start moves past the floor only by installing a snapshot, which restarts the
//!   log after the snapshot's index: a log gap, not a compaction).
//!
//! A violation panics with the seed, so the failing run can be replayed.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use raft::StateRole;
use raft::eraftpb::MessageType;
use regionkv_engine::{
    Engine, EngineOptions, Epoch, Incarnation, Peer, PeerId, Region, RegionId, StoreId,
};
use regionkv_wal::fs::FileSystem;
use regionkv_wal::{CancellationToken, RecoveryMode, SimFs, SparePreparation, Wal, WalOptions};

use crate::config::StoreConfig;
use crate::core::{StoreContext, StoreCore, WriteTask};
use crate::error::{Error, Result};
use crate::identity::{Admission, PeerBook, StoreIdentity};
use crate::log::RaftLog;
use crate::replica::PeerStatus;
use crate::transport::local::{Faults, SplitMix};
use crate::transport::{Body, Envelope};

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Stores that bootstrap region 1 together (ids 1..=voters).
    pub voters: usize,
    /// Stores that start empty (ids after the voters), for membership changes.
    pub spares: usize,
    /// Virtual time between ticks.
    pub tick: Duration,
    /// Message latency range.
    pub latency: (Duration, Duration),
    /// Range of the time a write takes to become durable.
    pub fsync: (Duration, Duration),
    /// WAL segment size (small, so segments roll and purge).
    pub segment_bytes: u64,
    /// Checkpoint a region after this many bytes of applied entries.
    pub checkpoint_log_bytes: u64,
    /// How leaders serve reads.
    pub read_mode: crate::ReadMode,
    /// Bootstrap the cluster directory (region 0) on the voters too.
    pub directory: bool,
    /// The stores' [`StoreConfig::image_hash_interval`] (off by default).
    pub image_hash_interval: Option<Duration>,
    /// Stores run as an older binary: the newest cluster version each supports
    /// (`StoreConfig::cluster_version_max`); every other store supports this binary's.
    /// Change it between a stop and a restart to upgrade or downgrade a store.
    pub cluster_version_max: BTreeMap<StoreId, u32>,
    /// Bytes of data one write-batch round of an apply pass takes before it is cut
    /// (`StoreConfig::apply_round_bytes`; `None`: the engine's bound, 256 MiB): small,
    /// so that one entry's writes land in several rounds.
    pub round_bytes: Option<usize>,
}

impl SimConfig {
    /// Three voters, no spares, 10 ms ticks, 0.2–2 ms messages, 0.1–1 ms fsyncs.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            voters: 3,
            spares: 0,
            tick: Duration::from_millis(10),
            latency: (Duration::from_micros(200), Duration::from_millis(2)),
            fsync: (Duration::from_micros(100), Duration::from_millis(1)),
            segment_bytes: 64 << 10,
            checkpoint_log_bytes: 64 << 10,
            read_mode: crate::ReadMode::ReadIndex,
            directory: false,
            image_hash_interval: None,
            cluster_version_max: BTreeMap::new(),
            round_bytes: None,
        }
    }
}

/// The outcome of a request, filled in when it completes.
#[derive(Debug)]
pub struct Pending<T>(Arc<Mutex<Option<Result<T>>>>);

impl<T> Clone for Pending<T> {
    fn clone(&self) -> Self {
        Pending(self.0.clone())
    }
}

impl<T> Pending<T> {
    fn new() -> Pending<T> {
        Pending(Arc::new(Mutex::new(None)))
    }

    fn reply(&self) -> Box<dyn FnOnce(Result<T>) + Send>
    where
        T: Send + 'static,
    {
        let slot = self.0.clone();
        Box::new(move |r| *slot.lock() = Some(r))
    }

    /// True once the request completed (or failed).
    pub fn is_done(&self) -> bool {
        self.0.lock().is_some()
    }

    /// Takes the outcome, if there is one.
    pub fn take(&self) -> Option<Result<T>> {
        self.0.lock().take()
    }
}

#[derive(Debug)]
enum Event {
    Tick(StoreId),
    /// Envelopes for a store, and their sender's identity when it sent them.
    Deliver(StoreId, Option<StoreIdentity>, Vec<Envelope>),
    Persisted(StoreId, u64),
}

/// A running store.
struct Running {
    core: StoreCore,
    /// The incarnations this store accepted (its transport's check, applied per
    /// message here).
    book: Arc<PeerBook>,
    wal: Wal,
    engine: Engine,
    /// Writes waiting to be persisted, in order; the first is in flight.
    writes: std::collections::VecDeque<WriteTask>,
    in_flight: bool,
}

struct SimStore {
    disk: SimFs,
    running: Option<Running>,
    /// Bumped at every crash or stop, so events of an earlier run are ignored.
    life: u64,
    /// Bumped when the disk is wiped: draws the next disk's incarnation.
    disks: u64,
    /// The store's identity as its last start made it (what its handshake sends).
    identity: Option<StoreIdentity>,
    /// The next start opens as if its WAL recovery had cut valid records.
    log_cut: bool,
    /// Writes do not become durable until released (`SimCluster::hold_writes`).
    writes_held: bool,
    /// How far the store's wall clock runs behind the cluster's, in ms
    /// (`SimCluster::set_clock_behind`).
    clock_behind: Arc<AtomicU64>,
}

/// Invariant state shared with the apply observers.
#[derive(Default)]
struct Checks {
    /// (region, term) -> the store that led it.
    leaders: HashMap<(RegionId, u64), StoreId>,
    /// (region, index) -> hash of (term, data) applied there.
    applied: HashMap<(RegionId, u64), u64>,
    /// (store, region) -> highest (term, epoch) seen.
    durable_max: HashMap<(StoreId, RegionId), Epoch>,
    /// (store, region) -> highest term made durable (a term only in memory may be
    /// lost by a crash: nothing was sent under it).
    durable_term: HashMap<(StoreId, RegionId), u64>,
    /// (store, region, peer) -> highest (commit, applied) seen in this incarnation (a
    /// replica removed and added back is a new peer).
    running_max: HashMap<(StoreId, RegionId, PeerId), (u64, u64)>,
    /// (store, region, peer) -> the log's first index when last checked (D1).
    first_index: HashMap<(StoreId, RegionId, PeerId), u64>,
    violation: Option<String>,
}

/// A simulated cluster.
pub struct SimCluster {
    config: SimConfig,
    now: Duration,
    /// `now` as the stores' wall clock reads it (ms since the Unix epoch, from
    /// [`WALL_CLOCK_START_MS`]): leaders stamp it into writes with a session.
    wall_ms: Arc<AtomicU64>,
    rng: SplitMix,
    events: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    stores: BTreeMap<StoreId, SimStore>,
    faults: Faults,
    trace: DefaultHasher,
    checks: Arc<Mutex<Checks>>,
    /// The last id handed out by `new_id`, for regions and peers alike (ids come from
    /// where the directory allocates them).
    last_region_id: u64,
    /// Reports for the directory, until taken.
    reports: Vec<crate::directory::RegionRecord>,
    /// Envelopes handed to the network so far.
    sent: u64,
    /// Envelopes sent so far, by region.
    sent_by_region: BTreeMap<RegionId, u64>,
}

/// The stores' wall clock at virtual time zero (ms since the Unix epoch): a fixed
/// date, so that runs replay.
pub const WALL_CLOCK_START_MS: u64 = 1_700_000_000_000;

fn wal_options(segment_bytes: u64, recovery: RecoveryMode) -> WalOptions {
    WalOptions::default()
        .segment_bytes(segment_bytes)
        .spare_segments(1)
        .spare_preparation(SparePreparation::OnDemand)
        .recovery(recovery)
}

fn hash_of(term: u64, data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    term.hash(&mut h);
    data.hash(&mut h);
    h.finish()
}

impl SimStore {
    fn new(disk: SimFs) -> SimStore {
        SimStore {
            disk,
            running: None,
            life: 0,
            disks: 0,
            identity: None,
            log_cut: false,
            writes_held: false,
            clock_behind: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl SimCluster {
    /// Bootstraps region 1 (the whole key space) on the voters and starts everyone.
    pub fn new(config: SimConfig) -> Result<SimCluster> {
        let mut cluster = SimCluster {
            rng: SplitMix(config.seed),
            config,
            now: Duration::ZERO,
            wall_ms: Arc::new(AtomicU64::new(WALL_CLOCK_START_MS)),
            events: BTreeMap::new(),
            seq: 0,
            stores: BTreeMap::new(),
            faults: Faults::new(),
            trace: DefaultHasher::new(),
            checks: Arc::default(),
            last_region_id: crate::directory::FIRST_ALLOCATED_ID - 1,
            reports: Vec::new(),
            sent: 0,
            sent_by_region: BTreeMap::new(),
        };
        let total = cluster.config.voters + cluster.config.spares;
        let voters: Vec<Peer> = (1..=cluster.config.voters as u64)
            .map(|s| Peer { id: PeerId(s), store: StoreId(s) })
            .collect();
        for s in 1..=total as u64 {
            let id = StoreId(s);
            cluster.stores.insert(id, SimStore::new(SimFs::new()));
            cluster.start(id, None)?;
            if s <= cluster.config.voters as u64 {
                let region = Region { peers: voters.clone(), ..Region::whole(RegionId(1)) };
                let directory = cluster.config.directory.then(|| Region {
                    peers: voters.clone(),
                    ..Region::whole(crate::directory::DIRECTORY)
                });
                // A new cluster starts at the newest version all its first stores run
                // (ARCHITECTURE.md, "Cluster versions").
                let version = (1..=cluster.config.voters as u64)
                    .map(|s| cluster.version_max(StoreId(s)))
                    .min()
                    .unwrap_or(crate::version::CLUSTER_VERSION_INITIAL);
                let running = cluster.running(id)?;
                running.core.context().learn_cluster_version(version)?;
                if let Some(directory) = directory {
                    running.core.bootstrap_region(directory)?;
                }
                running.core.bootstrap_region(region)?;
                cluster.process(id);
            }
        }
        Ok(cluster)
    }

    /// The newest cluster version `store` runs at (see
    /// [`SimConfig::cluster_version_max`]).
    fn version_max(&self, store: StoreId) -> u32 {
        self.config
            .cluster_version_max
            .get(&store)
            .copied()
            .unwrap_or(crate::version::CLUSTER_VERSION_MAX)
    }

    /// Runs `store` as a binary that supports cluster versions up to `max` from its
    /// next start (a restart upgrades or downgrades it).
    pub fn set_cluster_version_max(&mut self, store: StoreId, max: u32) {
        self.config.cluster_version_max.insert(store, max);
    }

    /// The shared context of `store` (its engines, configuration and cluster version
    /// view), if it runs.
    pub fn context(&self, store: StoreId) -> Option<&Arc<StoreContext>> {
        self.stores.get(&store)?.running.as_ref().map(|r| r.core.context())
    }

    /// The cluster version `store` runs at as it knows it, if it runs.
    pub fn cluster_version(&self, store: StoreId) -> Option<u32> {
        self.stores.get(&store)?.running.as_ref().map(|r| r.core.context().cluster_version.active())
    }

    fn running(&mut self, store: StoreId) -> Result<&mut Running> {
        self.stores
            .get_mut(&store)
            .and_then(|s| s.running.as_mut())
            .ok_or(Error::Internal(format!("store {store} is not running")))
    }

    /// Opens a store on its disk (recovering whatever is there) and schedules its ticks;
    /// `floor` is the peer floor of a store that joins the cluster (see
    /// `crate::identity`).
    fn start(&mut self, id: StoreId, floor: Option<PeerId>) -> Result<()> {
        let disk = self.stores[&id].disk.clone();
        let fs: Arc<dyn FileSystem> = Arc::new(disk);
        let segment_bytes = self.config.segment_bytes;
        let wal = match Wal::open(
            fs.clone(),
            "/store/wal",
            wal_options(segment_bytes, RecoveryMode::TolerateTornTail),
        ) {
            Ok(wal) => wal,
            // A replicated store may cut a damaged tail of unacknowledged writes; it
            // catches up from the leader.
            Err(regionkv_wal::Error::Corruption { .. }) => Wal::open(
                fs.clone(),
                "/store/wal",
                wal_options(segment_bytes, RecoveryMode::PointInTime),
            )?,
            Err(e) => return Err(e.into()),
        };
        let engine = Engine::open(fs.clone(), "/store/engine", EngineOptions::new(id))?;
        let directory = Engine::open(fs, "/store/directory", EngineOptions::new(id))?;
        // The same identity as a store's: an incarnation per disk (drawn from the seed),
        // a peer book, and a floor for a store that joined.
        let mut h = DefaultHasher::new();
        (self.config.seed, id.0, self.stores[&id].disks).hash(&mut h);
        let incarnation = engine.ensure_incarnation(Incarnation(h.finish()))?;
        let book = Arc::new(PeerBook::open(id, incarnation, engine.clone(), directory.clone())?);
        if let Some(floor) = floor {
            book.set_peer_floor(floor)?;
        }
        let mut config = StoreConfig::new(id)
            .tick_interval(self.config.tick)
            .checkpoint_log_bytes(self.config.checkpoint_log_bytes)
            .image_hash_interval(self.config.image_hash_interval);
        config.snapshot_chunk_bytes = 4096;
        config.read_mode = self.config.read_mode;
        config.cluster_version_max = self.version_max(id);
        config.apply_round_bytes = self.config.round_bytes;
        let log = Arc::new(RaftLog::open(wal.clone(), config.log)?);
        let mut ctx =
            StoreContext::new(config, engine.clone(), directory, log, CancellationToken::new());
        let forced = std::mem::take(&mut self.stores.get_mut(&id).expect("known store").log_cut);
        ctx.log_cut = forced || crate::core::wal_lost_records(&wal);
        let checks = self.checks.clone();
        ctx.apply_observer = Some(Box::new(move |region, index, term, data| {
            let mut c = checks.lock();
            let h = hash_of(term, data);
            if let Some(&prev) = c.applied.get(&(region, index))
                && prev != h
                && c.violation.is_none()
            {
                c.violation = Some(format!(
                    "P6: region {region} index {index} applied differently on two replicas (store {id})"
                ));
            }
            c.applied.insert((region, index), h);
        }));
        let seed = self.config.seed;
        ctx.election_ticks = Some(Box::new(move |region, peer| {
            let mut h = DefaultHasher::new();
            (seed, region.0, peer.0).hash(&mut h);
            10 + (h.finish() % 10) as usize
        }));
        let wall_ms = self.wall_ms.clone();
        let behind = self.stores[&id].clock_behind.clone();
        ctx.clock = Some(Box::new(move || {
            wall_ms.load(Ordering::Relaxed).saturating_sub(behind.load(Ordering::Relaxed))
        }));
        ctx.open_cluster_version()?;
        let core = StoreCore::open(Arc::new(ctx), Box::new(|_| true))?;
        let store = self.stores.get_mut(&id).expect("known store");
        store.identity = Some(book.identity());
        store.running = Some(Running {
            core,
            book,
            wal,
            engine,
            writes: std::collections::VecDeque::new(),
            in_flight: false,
        });
        self.checks.lock().running_max.retain(|(s, _, _), _| *s != id);
        let at = self.now + self.config.tick;
        self.schedule(at, Event::Tick(id));
        Ok(())
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn between(&mut self, (min, max): (Duration, Duration)) -> Duration {
        let span = max.saturating_sub(min).as_nanos() as u64;
        min + Duration::from_nanos(if span == 0 { 0 } else { self.rng.next_u64() % span })
    }

    fn trace(&mut self, what: impl Hash) {
        self.now.hash(&mut self.trace);
        what.hash(&mut self.trace);
    }

    /// Runs a store's flush and hands its output to the network and the disk.
    fn process(&mut self, id: StoreId) {
        let Some(running) = self.stores.get_mut(&id).and_then(|s| s.running.as_mut()) else {
            return;
        };
        let out = running.core.flush();
        // One core owns every region of a simulated store: nothing is foreign.
        debug_assert!(out.tasks.is_empty());
        for task in out.tasks {
            running.core.on_task(task);
        }
        self.reports.extend(out.reports);
        if let Some(write) = out.write {
            running.writes.push_back(write);
        }
        let start_write = !running.in_flight && !running.writes.is_empty();
        if start_write {
            running.in_flight = true;
        }
        self.send(out.messages);
        if start_write {
            let life = self.stores[&id].life;
            let at = self.now + self.between(self.config.fsync);
            self.schedule(at, Event::Persisted(id, life));
        }
    }

    fn send(&mut self, envelopes: Vec<Envelope>) {
        self.sent += envelopes.len() as u64;
        for env in &envelopes {
            *self.sent_by_region.entry(env.region).or_default() += 1;
        }
        let mut by_arrival: BTreeMap<(Duration, StoreId), Vec<Envelope>> = BTreeMap::new();
        let from = envelopes.first().map(|e| e.from);
        let identity = from.and_then(|f| self.stores.get(&f)).and_then(|s| s.identity);
        for env in envelopes {
            // The sender's transport vets the receiver (as a TCP connector does).
            if !self.admits(env.from, env.to, self.stores.get(&env.to).and_then(|s| s.identity)) {
                self.trace(("refused", env.from.0, env.to.0));
                continue;
            }
            let fate = self.faults.decide(&env, &mut self.rng);
            for _ in 0..fate.copies {
                let at = self.now + self.between(self.config.latency) + fate.delay;
                by_arrival.entry((at, env.to)).or_default().push(env.clone());
            }
        }
        for ((at, to), batch) in by_arrival {
            self.schedule(at, Event::Deliver(to, identity, batch));
        }
    }

    /// True if `store`'s peer book accepts `peer` as `identity` (or `store` is down:
    /// nothing of its own is checked then).
    fn admits(&self, store: StoreId, peer: StoreId, identity: Option<StoreIdentity>) -> bool {
        let Some(running) = self.stores.get(&store).and_then(|s| s.running.as_ref()) else {
            return true;
        };
        running.book.admit(peer, identity) == Admission::Accepted
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(id) => {
                let Some(running) = self.stores.get_mut(&id).and_then(|s| s.running.as_mut())
                else {
                    return;
                };
                running.core.on_tick();
                self.trace(("tick", id.0));
                self.process(id);
                let at = self.now + self.config.tick;
                self.schedule(at, Event::Tick(id));
            }
            Event::Deliver(id, identity, mut envelopes) => {
                // The receiver's transport vets the sender (as a TCP acceptor does).
                if let Some(from) = envelopes.first().map(|e| e.from)
                    && !self.admits(id, from, identity)
                {
                    self.trace(("refused", from.0, id.0));
                    envelopes.clear();
                }
                for env in &envelopes {
                    let (kind, term, index) = match &env.body {
                        Body::Raft(m) => (m.get_msg_type() as i32, m.term, m.index),
                        Body::SnapshotChunk(c) => (-1, c.term, c.offset),
                        Body::Hibernate { term, index } => (-2, *term, *index),
                        Body::Alive => (-3, 0, 0),
                        Body::Gone { peer } => (-4, *peer, 0),
                    };
                    self.trace(("deliver", env.region.0, env.from.0, env.to.0, kind, term, index));
                }
                let Some(running) = self.stores.get_mut(&id).and_then(|s| s.running.as_mut())
                else {
                    return;
                };
                running.core.on_envelopes(envelopes);
                self.process(id);
            }
            Event::Persisted(id, life) => {
                let Some(store) = self.stores.get_mut(&id) else { return };
                if store.life != life {
                    return; // the write died with the store
                }
                if store.writes_held {
                    // Still in flight: it completes a tick after its release.
                    let at = self.now + self.config.tick;
                    self.schedule(at, Event::Persisted(id, life));
                    return;
                }
                let Some(running) = store.running.as_mut() else { return };
                let task = running.writes.pop_front().expect("a write is in flight");
                running.in_flight = false;
                let readies = task.readies;
                let terms: Vec<(RegionId, u64)> = task.write.terms().collect();
                let result = running.core.context().log.persist(task.write);
                let lsn = match result {
                    Ok(lsn) => lsn.0,
                    Err(e) => {
                        panic!("seed {}: store {id} could not persist: {e}", self.config.seed)
                    }
                };
                self.trace(("persisted", id.0, lsn));
                {
                    let mut checks = self.checks.lock();
                    for (region, term) in terms {
                        let durable = checks.durable_term.entry((id, region)).or_default();
                        *durable = (*durable).max(term);
                    }
                }
                self.send(task.messages);
                let running =
                    self.stores.get_mut(&id).and_then(|s| s.running.as_mut()).expect("running");
                running.core.on_persisted(&readies);
                self.process(id);
            }
        }
        self.check();
    }

    /// Runs until virtual time `until` (or forever, bounded by `max_events`).
    fn run_to(&mut self, until: Duration, stop: &mut dyn FnMut(&mut SimCluster) -> bool) -> bool {
        // A bound on the loop: far more events than any test needs.
        for _ in 0..50_000_000u64 {
            if stop(self) {
                return true;
            }
            let Some((&(at, seq), _)) = self.events.iter().next() else { return false };
            if at > until {
                self.set_now(until);
                return false;
            }
            let event = self.events.remove(&(at, seq)).expect("peeked");
            self.set_now(at);
            self.handle(event);
        }
        panic!("seed {}: the simulation did not settle", self.config.seed);
    }

    /// Moves virtual time (and the stores' wall clock with it).
    fn set_now(&mut self, now: Duration) {
        self.now = now;
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        self.wall_ms.store(WALL_CLOCK_START_MS.saturating_add(ms), Ordering::Relaxed);
    }

    /// Advances virtual time by `duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_to(until, &mut |_| false);
    }

    /// Runs until `cond` holds or `max` virtual time passed; true if it held.
    pub fn run_until(
        &mut self,
        max: Duration,
        mut cond: impl FnMut(&mut SimCluster) -> bool,
    ) -> bool {
        let until = self.now + max;
        self.run_to(until, &mut cond)
    }

    /// Virtual time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The network's fault rules.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A hash of every event so far: equal for equal seeds (P15).
    pub fn trace_hash(&self) -> u64 {
        self.trace.clone().finish()
    }

    /// Stores, running or not.
    pub fn store_ids(&self) -> Vec<StoreId> {
        self.stores.keys().copied().collect()
    }

    /// True if `store` is running.
    pub fn is_running(&self, store: StoreId) -> bool {
        self.stores.get(&store).is_some_and(|s| s.running.is_some())
    }

    /// The status of every peer on `store` (empty if it is down).
    pub fn status(&self, store: StoreId) -> Vec<PeerStatus> {
        self.stores
            .get(&store)
            .and_then(|s| s.running.as_ref())
            .map_or_else(Vec::new, |r| r.core.status())
    }

    /// The store whose peer leads `region` with the highest term, if any.
    pub fn leader(&self, region: RegionId) -> Option<StoreId> {
        let mut best: Option<(u64, StoreId)> = None;
        for &id in self.stores.keys() {
            for s in self.status(id) {
                if s.region.id == region
                    && s.role == StateRole::Leader
                    && best.is_none_or(|(t, _)| s.term > t)
                {
                    best = Some((s.term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Runs until `region` has a leader; returns it.
    pub fn wait_leader(&mut self, region: RegionId, max: Duration) -> Option<StoreId> {
        self.run_until(max, |c| c.leader(region).is_some());
        self.leader(region)
    }

    /// The region as `store` knows it.
    pub fn region(&self, store: StoreId, region: RegionId) -> Option<Region> {
        self.status(store).into_iter().find(|s| s.region.id == region).map(|s| s.region)
    }

    /// The epoch of the tombstone `store`'s log holds for `region` (a replica of it
    /// destroyed there), if it runs and holds one.
    pub fn tombstone(&self, store: StoreId, region: RegionId) -> Option<regionkv_engine::Epoch> {
        self.stores.get(&store)?.running.as_ref()?.core.context().log.tombstone(region)
    }

    /// The write-batch rounds `store`'s core committed since it last started.
    pub fn apply_stats(&self, store: StoreId) -> Option<crate::ApplyStats> {
        self.stores.get(&store)?.running.as_ref().map(|r| r.core.apply_stats())
    }

    /// `store`'s metrics (its one core's replicas, the write path, the WAL), if it runs.
    pub fn metrics(&self, store: StoreId) -> Option<crate::StoreMetrics> {
        self.stores.get(&store)?.running.as_ref().map(|r| r.core.metrics())
    }

    /// Slots for appends in flight that `store`'s replicas hold (see
    /// [`StoreCore::inflight_slots`]), if it runs.
    pub fn inflight_slots(&self, store: StoreId) -> Option<usize> {
        self.stores.get(&store)?.running.as_ref().map(|r| r.core.inflight_slots())
    }

    /// A fresh region id, unique in the cluster, increasing as the directory allocates
    /// them (from [`FIRST_ALLOCATED_ID`](crate::directory::FIRST_ALLOCATED_ID)).
    pub fn new_id(&mut self) -> u64 {
        self.last_region_id += 1;
        self.last_region_id
    }

    /// A fresh peer id, unique in the cluster: from the same allocator as region ids
    /// (as the directory's), so above the peer floor of every store that joined.
    pub fn new_peer_id(&mut self) -> PeerId {
        PeerId(self.new_id())
    }

    /// Messages of `kind` dropped or not, for tests that count traffic (debugging aid).
    pub fn is_raft(env: &Envelope, kind: MessageType) -> bool {
        matches!(&env.body, Body::Raft(m) if m.get_msg_type() == kind)
    }

    /// Envelopes the stores sent so far (before faults).
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// Envelopes the stores sent so far about `region` (before faults).
    pub fn messages_sent_for(&self, region: RegionId) -> u64 {
        self.sent_by_region.get(&region).copied().unwrap_or(0)
    }

    /// Region changes reported by the stores' leaders since the last call.
    pub fn take_reports(&mut self) -> Vec<crate::directory::RegionRecord> {
        std::mem::take(&mut self.reports)
    }

    /// The engine of `store`, if it runs (for inspection: what a replica holds).
    pub fn engine(&self, store: StoreId) -> Option<&Engine> {
        self.stores.get(&store).and_then(|s| s.running.as_ref()).map(|r| &r.engine)
    }

    /// Tells `store` (if it runs) that the cluster runs at version `active` (until the
    /// directory's version record does: `crate::version`); a restart forgets it.
    pub fn learn_cluster_version(&mut self, store: StoreId, active: u32) {
        if let Some(r) = self.stores.get(&store).and_then(|s| s.running.as_ref()) {
            r.core.context().cluster_version.learn(active);
        }
    }

    /// The disk of `store`, for inspection.
    pub fn disk(&self, store: StoreId) -> Option<&SimFs> {
        self.stores.get(&store).map(|s| &s.disk)
    }

    /// True if `path` exists on `store`'s disk (for tests of purge and checkpoints).
    pub fn disk_has(&self, store: StoreId, path: &Path) -> bool {
        self.disk(store).is_some_and(|d| d.contents(path).is_some())
    }
}

mod checks;
mod nemesis;
mod requests;
