//! [`StoreCore`]: the step functions of a store's Raft groups.
//!
//! The core owns a set of peers (all of a store's, or one poller's share) and changes
//! only in response to its step functions: [`StoreCore::on_tick`],
//! [`StoreCore::on_envelopes`], [`StoreCore::on_write`], [`StoreCore::on_read`],
//! [`StoreCore::on_change_peers`] and [`StoreCore::on_persisted`]. It does no I/O of
//! its own but two kinds: applying committed entries into the in-memory engine (and
//! checkpoints, which the engine writes), and reading the log. Everything else comes out
//! of [`StoreCore::flush`] as an [`Output`] for a driver to carry out:
//!
//! - `messages`: to send now; a leader's appends go out in parallel with its own fsync
//!   (raft thesis 10.2.1);
//! - `write`: a [`WriteTask`]: the staged log write to make durable, the messages that
//!   may only leave after it is durable (votes, append responses), and the readies to
//!   report back through `on_persisted` once it is;
//! - `controls`: [`Control`]s for regions another core owns (split children to create,
//!   merge sources and targets to coordinate), for the driver to hand over through
//!   [`StoreCore::on_control`].
//!
//! Committed entries of every region a flush pass touches are applied in one
//! write-batch round ([`ApplyRound`]): the round prepares region after region, is cut
//! (committed) before every admin command, and ends with the pass; replies, reads and
//! checkpoints wait for the round's commit.
//!
//! The deterministic simulator and the threaded production driver both drive this
//! same code; only where and when a `WriteTask` is persisted differs.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
    MessageType, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use regionkv_engine::checkpoint::CheckpointChunks;
use regionkv_engine::{
    ApplyRound, CheckpointChunk, Engine, MergeState, PeerId, Region, RegionId, StoreId,
};
use regionkv_wal::{CancellationToken, Lsn, Timeline};

use crate::command::{self, Admin, AdminCmd, ChangePeersContext, Command, Op, Write};
use crate::config::{ReadMode, StoreConfig};
use crate::directory::{self, DIRECTORY, DirCmd, DirResult, RegionRecord};
use crate::error::{Error, Result};
use crate::log::{LogState, LogWrite, RaftLog};
use crate::logger::raft_logger;
use crate::metrics::{StoreMetrics, WriteMetrics};
use crate::peer::{
    AdminRequest, AdminResult, CatchUp, ChangePeersRequest, Incoming, MergeStatus, Paused, Peer,
    PeerChange, Proposal, Query, QueryResult, ReadRequest, Reply, Waiting, WriteRequest,
};
use crate::storage::PeerStorage;
use crate::transport::{Body, Envelope, KeyRange, SnapshotChunk};

/// Sees every entry a store applies: `(region, index, term, data)`. For checkers.
pub type ApplyObserver = Box<dyn Fn(RegionId, u64, u64, &[u8]) + Send + Sync>;

/// Chooses a peer's election timeout in ticks, given its region and peer id. Lets a
/// deterministic driver replace raft-rs's thread-local randomness with a seed.
pub type ElectionTicks = Box<dyn Fn(RegionId, PeerId) -> usize + Send + Sync>;

/// What a store shares between its cores and drivers.
pub struct StoreContext {
    /// How the store runs.
    pub config: StoreConfig,
    /// The store's engine: every user region.
    pub engine: Engine,
    /// The engine of the cluster directory's replica (region 0, [`DIRECTORY`]).
    pub directory: Engine,
    /// The store's Raft log.
    pub log: Arc<RaftLog>,
    /// Cancelled when the store shuts down; every timeline's token is a child.
    pub cancel: CancellationToken,
    /// Called for every applied entry, if set.
    pub apply_observer: Option<ApplyObserver>,
    /// Fixes each peer's election timeout, if set (else raft-rs randomizes it).
    pub election_ticks: Option<ElectionTicks>,
    /// Write-path counters of every core of the store.
    pub metrics: WriteMetrics,
}

impl std::fmt::Debug for StoreContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreContext").field("store", &self.config.store_id).finish_non_exhaustive()
    }
}

impl StoreContext {
    /// A context with no observers.
    pub fn new(
        config: StoreConfig,
        engine: Engine,
        directory: Engine,
        log: Arc<RaftLog>,
        cancel: CancellationToken,
    ) -> StoreContext {
        StoreContext {
            config,
            engine,
            directory,
            log,
            cancel,
            apply_observer: None,
            election_ticks: None,
            metrics: WriteMetrics::default(),
        }
    }

    /// The engine that holds `region`: the directory's for [`DIRECTORY`], else the
    /// store's.
    pub fn engine_of(&self, region: RegionId) -> &Engine {
        if region == DIRECTORY { &self.directory } else { &self.engine }
    }
}

/// The Raft index and term a region created by a split starts its log at: its log
/// begins as if entries up to this index, of this term, had been compacted (raft-rs
/// needs a non-zero starting point that no real entry of the child can have reached).
pub const RAFT_INIT_INDEX: u64 = 5;
/// See [`RAFT_INIT_INDEX`].
pub const RAFT_INIT_TERM: u64 = 5;

/// Work for the core that owns a region, handed over by another core (or queued by a
/// core for itself). Splits and merges touch two regions; each region's state changes
/// only in the core that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Create the replica of split child `region`: the engine hosts it and its log
    /// exists. It campaigns at once if the parent's leader was on this store.
    Adopt {
        /// The child.
        region: RegionId,
        /// Campaign now.
        campaign: bool,
    },
    /// Merge target `target` here waits for merge source `source` here to apply its
    /// log up to `index` (whose term is `term`).
    CatchUp {
        /// The source.
        source: RegionId,
        /// The target waiting.
        target: RegionId,
        /// Index of the source's prepare command.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// Merge source `source` here has applied its prepare command.
    SourceReady {
        /// The target waiting.
        target: RegionId,
        /// The source.
        source: RegionId,
    },
    /// `source` was merged into a target here: its replica goes (the engine no
    /// longer hosts it).
    Merged {
        /// The source.
        source: RegionId,
    },
}

impl Control {
    /// The region whose core must handle this.
    pub fn region(&self) -> RegionId {
        match self {
            Control::Adopt { region, .. } => *region,
            Control::CatchUp { source, .. } | Control::Merged { source } => *source,
            Control::SourceReady { target, .. } => *target,
        }
    }
}

/// A log write to make durable, and what waits for it.
#[derive(Debug)]
pub struct WriteTask {
    /// The staged changes.
    pub write: LogWrite,
    /// Messages that may leave only once the write is durable.
    pub messages: Vec<Envelope>,
    /// Readies to report through [`StoreCore::on_persisted`] once it is.
    pub readies: Vec<(RegionId, u64)>,
}

/// What a [`StoreCore::flush`] asks the driver to do.
#[derive(Debug, Default)]
pub struct Output {
    /// Send these now.
    pub messages: Vec<Envelope>,
    /// Persist this, then send its messages and report its readies.
    pub write: Option<WriteTask>,
    /// Hand these to the cores that own their regions ([`Control::region`]).
    pub controls: Vec<Control>,
    /// Regions this store leads that changed (split, merge, membership, leadership):
    /// for the cluster directory.
    pub reports: Vec<RegionRecord>,
}

/// One peer's status, for monitors and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The region as this store knows it.
    pub region: Region,
    /// This store's replica.
    pub peer: PeerId,
    /// Leader, follower, candidate or pre-candidate.
    pub role: StateRole,
    /// The current term.
    pub term: u64,
    /// The leader's peer id, if known.
    pub leader: Option<PeerId>,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied.
    pub applied: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// True once the replica holds data (a snapshot or bootstrap).
    pub initialized: bool,
    /// True while the replica hibernates (does not tick).
    pub hibernated: bool,
}

/// How many times `flush` re-runs readies made by the previous round (light readies
/// after an inline persist, cascaded applies); bounds the loop.
const MAX_READY_PASSES: usize = 8;

/// Purge the WAL every this many ticks.
const PURGE_EVERY_TICKS: u64 = 50;

/// Write-batch rounds this core committed, by how many regions each prepared (the
/// apply loop's shape, for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyStats {
    /// Rounds committed.
    pub rounds: u64,
    /// Rounds that prepared no region (a pass that applied nothing, or only admin
    /// commands, which are barriers outside rounds).
    pub rounds_without_regions: u64,
    /// Rounds that prepared two regions or more.
    pub rounds_with_several_regions: u64,
    /// The most regions one round prepared.
    pub most_regions_in_a_round: usize,
}

impl ApplyStats {
    fn count(&mut self, prepared: usize) {
        self.rounds += 1;
        self.rounds_without_regions += u64::from(prepared == 0);
        self.rounds_with_several_regions += u64::from(prepared >= 2);
        self.most_regions_in_a_round = self.most_regions_in_a_round.max(prepared);
    }

    pub(crate) fn add(&mut self, other: &ApplyStats) {
        self.rounds += other.rounds;
        self.rounds_without_regions += other.rounds_without_regions;
        self.rounds_with_several_regions += other.rounds_with_several_regions;
        self.most_regions_in_a_round =
            self.most_regions_in_a_round.max(other.most_regions_in_a_round);
    }
}

/// The Raft groups of a store (or a share of them) and their step functions.
pub struct StoreCore {
    ctx: Arc<StoreContext>,
    peers: HashMap<RegionId, Peer>,
    /// Peers that are not hibernating: the only ones a tick visits, so that thousands
    /// of idle regions cost nothing per tick. Kept equal to the peers whose
    /// `hibernated` flag is false.
    awake: HashSet<RegionId>,
    /// Regions whose replica here was removed; messages for them are ignored.
    tombstones: HashSet<RegionId>,
    /// Peers that may have a ready; ordered for determinism.
    dirty: BTreeSet<RegionId>,
    write: LogWrite,
    readies: Vec<(RegionId, u64)>,
    outbox: Vec<Envelope>,
    after_persist: Vec<Envelope>,
    ticks: u64,
    /// Controls for regions this core owns, handled at the start of each pass.
    controls: VecDeque<Control>,
    /// Controls for regions other cores own, for the driver.
    foreign: Vec<Control>,
    /// Region changes for the directory, for the driver.
    reports: Vec<RegionRecord>,
    apply_stats: ApplyStats,
    /// The tick at which each other store was last heard from.
    store_heard: HashMap<StoreId, u64>,
    /// Which regions this core owns, for cores that share a store.
    owns: Box<dyn Fn(RegionId) -> bool + Send>,
}

impl std::fmt::Debug for StoreCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCore")
            .field("store", &self.ctx.config.store_id)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

fn raft_config(config: &StoreConfig, id: u64, applied: u64) -> raft::Config {
    raft::Config {
        id,
        election_tick: config.election_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        applied,
        max_size_per_msg: config.max_append_bytes,
        max_inflight_msgs: config.max_inflight_appends,
        check_quorum: true,
        pre_vote: true,
        read_only_option: match config.read_mode {
            ReadMode::ReadIndex => ReadOnlyOption::Safe,
            ReadMode::Lease => ReadOnlyOption::LeaseBased,
        },
        ..raft::Config::default()
    }
}

impl StoreCore {
    /// Opens the cores's share of a store: a peer for every region `owns` accepts that
    /// the engine hosts or the log has (an uninitialized replica). Committed entries
    /// after each region's checkpoint are applied again by the first flushes.
    pub fn open(
        ctx: Arc<StoreContext>,
        owns: Box<dyn Fn(RegionId) -> bool + Send>,
    ) -> Result<StoreCore> {
        let write = ctx.log.begin_write();
        let mut core = StoreCore {
            ctx,
            peers: HashMap::new(),
            awake: HashSet::new(),
            tombstones: HashSet::new(),
            dirty: BTreeSet::new(),
            write,
            readies: Vec::new(),
            outbox: Vec::new(),
            after_persist: Vec::new(),
            ticks: 0,
            controls: VecDeque::new(),
            foreign: Vec::new(),
            reports: Vec::new(),
            apply_stats: ApplyStats::default(),
            store_heard: HashMap::new(),
            owns,
        };
        let hosted: HashMap<RegionId, Region> = core
            .ctx
            .engine
            .regions()
            .into_iter()
            .chain(core.ctx.directory.regions())
            .map(|r| (r.id, r))
            .collect();
        let mut ids: Vec<RegionId> = core.ctx.log.region_ids();
        // Hosted by the engine but without a log: a bootstrap that crashed between its
        // engine change and its log write. The log is made from the engine's region.
        let mut unlogged: Vec<&Region> = hosted
            .values()
            .filter(|r| (core.owns)(r.id) && core.ctx.log.state(r.id).is_none())
            .collect();
        unlogged.sort_by_key(|r| r.id);
        for region in unlogged {
            core.create_log_from_engine(region)?;
            ids.push(region.id);
        }
        ids.sort_unstable();
        for id in ids {
            if !(core.owns)(id) {
                continue;
            }
            let state = core.ctx.log.state(id).ok_or(Error::RegionNotFound { region: id })?;
            if let Some(region) = hosted.get(&id) {
                let applied = core.ctx.engine_of(id).image_index(id)?.unwrap_or(0);
                core.add_peer(
                    region.clone(),
                    true,
                    PeerId(state.peer_id),
                    applied,
                    state.conf_index,
                )?;
            } else if !state.conf_state.voters.is_empty() || !state.conf_state.learners.is_empty() {
                // An initialized log the engine does not host: the replica was removed
                // (a membership change, or merged away) and a crash came before its log
                // was tombstoned; or a split child whose split never became durable in
                // the engine (the split is applied again from the parent's log).
                tracing::info!(
                    region = id.0,
                    "tombstoning the log of a replica the engine no longer hosts"
                );
                core.ctx.log.stage_tombstone(&mut core.write, id);
            } else {
                // In the log but not the engine: a replica waiting for its snapshot.
                let region = Region::new(id, Vec::new(), Some(Vec::new()));
                core.add_peer(region, false, PeerId(state.peer_id), 0, state.conf_index)?;
            }
        }
        Ok(core)
    }

    /// Creates the log of a region the engine hosts: it starts after the region's
    /// image (empty for a bootstrapped region; [`RAFT_INIT_INDEX`] for a split child),
    /// with the region's peers as voters.
    fn create_log_from_engine(&mut self, region: &Region) -> Result<()> {
        let me = self.ctx.config.store_id;
        let Some(peer) = region.peers.iter().find(|p| p.store == me) else {
            return Err(Error::Internal(format!(
                "region {} is hosted here but lists no peer on store {me}",
                region.id
            )));
        };
        let image = self.ctx.engine_of(region.id).image_index(region.id)?.unwrap_or(0);
        let term = match image {
            0 => 0,
            RAFT_INIT_INDEX => RAFT_INIT_TERM,
            _ => {
                return Err(Error::Internal(format!(
                    "region {} has an image at {image} but no log; restore this store from a replica",
                    region.id
                )));
            }
        };
        let mut state = LogState {
            first_index: image + 1,
            truncated_term: term,
            peer_id: peer.id.0,
            conf_index: image,
            ..LogState::default()
        };
        state.conf_state.voters = region.peers.iter().map(|p| p.id.0).collect();
        state.hard_state.term = term;
        state.hard_state.commit = image;
        tracing::info!(region = region.id.0, image, "created the log of a hosted region");
        self.ctx.log.create_region(&mut self.write, region.id, state)
    }

    fn add_peer(
        &mut self,
        region: Region,
        initialized: bool,
        id: PeerId,
        applied: u64,
        conf_index: u64,
    ) -> Result<()> {
        let storage = PeerStorage::new(region.id, self.ctx.log.clone())?;
        let snapshot_slot = storage.snapshot_slot().clone();
        let (first, last) = self.ctx.log.bounds(region.id)?;
        // raft-rs requires applied >= first_index - 1; a checkpoint older than the
        // compaction point would be a bug (compaction follows checkpoints).
        let applied = applied.max(first.saturating_sub(1));
        if applied > last {
            return Err(Error::Internal(format!(
                "region {}: the engine's image is at index {applied}, past the end of the log \
                 ({last}); a crash interrupted a snapshot install: restore this store from a \
                 replica",
                region.id
            )));
        }
        // An image is written at the applied index, synchronously, while the hard state
        // recording the commit index that allowed the apply is persisted with the next
        // log write: a crash in between leaves the durable commit index behind the
        // image. What was applied was committed, so the commit index moves up to it.
        if let Some(state) = self.ctx.log.state(region.id)
            && state.hard_state.commit < applied
        {
            let mut hs = state.hard_state;
            hs.commit = applied;
            self.ctx.log.stage(&mut self.write, region.id, Vec::new(), Some(&hs))?;
        }
        let mut config = raft_config(&self.ctx.config, id.0, applied);
        if let Some(choose) = &self.ctx.election_ticks {
            // One fixed timeout per peer: raft-rs draws from [min, max), so max = min + 1.
            let ticks = choose(region.id, id).max(config.heartbeat_tick + 1);
            config.min_election_tick = ticks;
            config.max_election_tick = ticks + 1;
        }
        let raw = RawNode::new(&config, storage, &raft_logger())?;
        let merge =
            if initialized { self.ctx.engine_of(region.id).merge_state(region.id) } else { None };
        let timeline = Timeline::new(
            format!("store-{}/region-{}", self.ctx.config.store_id, region.id),
            &self.ctx.cancel,
        );
        let region_id = region.id;
        self.awake.insert(region_id);
        self.peers.insert(
            region_id,
            Peer {
                region,
                initialized,
                id,
                raw,
                snapshot_slot,
                snapshot_file: None,
                batch: Vec::new(),
                batch_bytes: 0,
                proposals: VecDeque::new(),
                reads_unissued: Vec::new(),
                reads_pending: HashMap::new(),
                reads_ready: VecDeque::new(),
                next_read_ctx: 1,
                applied_index: applied,
                checkpoint_index: applied,
                applied_bytes_since_checkpoint: 0,
                conf_index,
                known_stores: HashMap::new(),
                incoming: None,
                received: None,
                snapshot_applied: None,
                timeline,
                removed: false,
                merge,
                catch_up: None,
                paused: None,
                source_ready: None,
                hibernated: false,
                idle_ticks: 0,
            },
        );
        self.dirty.insert(region_id);
        Ok(())
    }

    /// Creates a region from nothing on this store (cluster bootstrap): the engine
    /// hosts it empty, its log starts with `region.peers` as voters.
    pub fn bootstrap_region(&mut self, region: Region) -> Result<()> {
        let me = self.ctx.config.store_id;
        let peer = *region.peers.iter().find(|p| p.store == me).ok_or_else(|| {
            Error::Internal(format!(
                "bootstrap of region {} that has no peer on store {me}",
                region.id
            ))
        })?;
        let mut conf_state = ConfState::default();
        conf_state.voters = region.peers.iter().map(|p| p.id.0).collect();
        let state =
            LogState { first_index: 1, conf_state, peer_id: peer.id.0, ..LogState::default() };
        self.ctx.engine_of(region.id).insert_region(region.clone())?;
        self.ctx.log.create_region(&mut self.write, region.id, state)?;
        self.add_peer(region, true, peer.id, 0, 0)
    }

    /// The context this core works in.
    pub fn context(&self) -> &Arc<StoreContext> {
        &self.ctx
    }

    /// The write-batch rounds this core committed so far.
    pub fn apply_stats(&self) -> ApplyStats {
        self.apply_stats
    }

    /// This core's metrics: its replicas and apply rounds, with the store-wide
    /// write-path and WAL figures. A store with several cores adds up their replica
    /// figures ([`Store::metrics`](crate::Store::metrics)).
    pub fn metrics(&self) -> StoreMetrics {
        let mut m = StoreMetrics { apply: self.apply_stats, ..StoreMetrics::default() };
        for peer in self.peers.values() {
            if peer.region.id == DIRECTORY || !peer.initialized {
                continue;
            }
            let lag = peer.raw.raft.raft_log.committed.saturating_sub(peer.applied_index);
            m.regions += 1;
            m.leaders += u64::from(peer.is_leader());
            m.hibernating += u64::from(peer.hibernated);
            m.applied_lag_total += lag;
            m.applied_lag_max = m.applied_lag_max.max(lag);
        }
        self.ctx.metrics.fill(&mut m);
        m.wal = self.ctx.log.wal().stats();
        m
    }

    /// Advances every group's logical clock by one tick.
    /// Hibernating peers do not tick; a leader with nothing new since its last tick
    /// whose group is quiescent hibernates first (see `maybe_hibernate`).
    pub fn on_tick(&mut self) {
        self.ticks += 1;
        // Leaders idle long enough try to hibernate before they tick: a quiescent
        // group goes to sleep instead of sending the heartbeat round this tick may owe.
        if let Some(after) = self.hibernate_after() {
            let mut quiet: Vec<RegionId> = self
                .awake
                .iter()
                .copied()
                .filter(|id| {
                    self.peers
                        .get(id)
                        .is_some_and(|p| p.is_leader() && p.idle_ticks.saturating_add(1) >= after)
                })
                .collect();
            quiet.sort_unstable(); // deterministic message order
            for id in quiet {
                self.maybe_hibernate(id);
            }
        }
        for &id in &self.awake {
            let Some(peer) = self.peers.get_mut(&id) else { continue };
            if peer.raw.tick() {
                self.dirty.insert(id);
            }
            peer.idle_ticks = peer.idle_ticks.saturating_add(1);
        }
        self.check_liveness();
        if self.ticks.is_multiple_of(PURGE_EVERY_TICKS) {
            self.plan_purge();
        }
    }

    /// Ticks of nothing to do after which a leader tries to hibernate (`None`: never):
    /// the first tick with nothing new since the last. Quiescence needs every follower
    /// to have committed the whole log, which raft-rs's commit broadcast tells them
    /// within a round trip; a group that is not quiescent yet tries again next tick.
    /// With thousands of regions written now and then, a region that sleeps between
    /// writes costs two notices per write instead of a heartbeat round every interval.
    fn hibernate_after(&self) -> Option<u32> {
        let config = &self.ctx.config;
        // A lease holder must tick: check-quorum is what ends its lease.
        (config.hibernate_regions && config.read_mode != ReadMode::Lease).then_some(1)
    }

    /// Hibernates the leader of `region` if its group is quiescent: every replica
    /// holds and has committed the whole log, nothing is proposed, read or moving.
    /// Its followers are told, and stop ticking once their own logs agree.
    fn maybe_hibernate(&mut self, region: RegionId) {
        let me = self.ctx.config.store_id;
        let Some(peer) = self.peers.get_mut(&region) else { return };
        let raft = &peer.raw.raft;
        let last = raft.raft_log.last_index();
        let quiescent = peer.initialized
            && peer.batch.is_empty()
            && peer.proposals.is_empty()
            && peer.reads_unissued.is_empty()
            && peer.reads_pending.is_empty()
            && peer.reads_ready.is_empty()
            && peer.catch_up.is_none()
            && peer.paused.is_none()
            && peer.incoming.is_none()
            && raft.lead_transferee.is_none()
            && raft.pending_conf_index <= peer.applied_index
            && raft.raft_log.committed == last
            && raft.raft_log.persisted == last
            && peer.applied_index == last
            && raft.prs().iter().all(|(&id, pr)| {
                id == raft.id || (pr.matched == last && pr.committed_index == last)
            });
        if !quiescent {
            return;
        }
        peer.hibernated = true;
        self.awake.remove(&region);
        let (term, epoch) = (raft.term, peer.region.epoch);
        let followers: Vec<StoreId> =
            peer.region.peers.iter().filter(|p| p.store != me).map(|p| p.store).collect();
        for to in followers {
            self.outbox.push(Envelope {
                region,
                from: me,
                to,
                epoch: Some(epoch),
                range: None,
                body: Body::Hibernate { term, index: last },
            });
        }
        tracing::trace!(region = region.0, term, index = last, "hibernating");
    }

    /// Wakes `region`: it ticks again, and as a leader counts idle time anew.
    fn wake(&mut self, region: RegionId) {
        if let Some(peer) = self.peers.get_mut(&region) {
            peer.wake();
            peer.idle_ticks = 0;
            self.awake.insert(region);
        }
    }

    /// Store liveness, for hibernation: tells the other stores this one is alive (the
    /// core that owns the directory's replica speaks for the store), and wakes the
    /// hibernating followers of leaders whose stores fell silent, so they elect anew.
    fn check_liveness(&mut self) {
        let me = self.ctx.config.store_id;
        let config = &self.ctx.config;
        if !config.hibernate_regions {
            return;
        }
        // Several per silence window (two election timeouts).
        let every = (config.election_ticks / 2).max(1) as u64;
        if (self.owns)(DIRECTORY) && self.ticks.is_multiple_of(every) {
            let mut stores: BTreeSet<StoreId> = BTreeSet::new();
            for peer in self.peers.values() {
                stores.extend(peer.region.peers.iter().map(|p| p.store));
            }
            stores.remove(&me);
            for to in stores {
                self.outbox.push(Envelope {
                    region: DIRECTORY,
                    from: me,
                    to,
                    epoch: None,
                    range: None,
                    body: Body::Alive,
                });
            }
        }
        let silent_after = (config.election_ticks * 2) as u64;
        let ticks = self.ticks;
        let silent: HashSet<StoreId> = self
            .store_heard
            .iter()
            .filter(|&(_, &heard)| ticks.saturating_sub(heard) > silent_after)
            .map(|(&store, _)| store)
            .collect();
        if silent.is_empty() {
            return;
        }
        let woken: Vec<RegionId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.hibernated && p.leader_store().is_some_and(|l| silent.contains(&l)))
            .map(|(&id, _)| id)
            .collect();
        for region in woken {
            self.wake(region);
        }
    }

    /// Takes envelopes that arrived from other stores.
    pub fn on_envelopes(&mut self, envelopes: Vec<Envelope>) {
        for env in envelopes {
            let region = env.region;
            self.store_heard.insert(env.from, self.ticks);
            if let Err(e) = self.on_envelope(env) {
                tracing::debug!(region = region.0, error = %e, "dropped a message");
            }
        }
    }

    fn on_envelope(&mut self, env: Envelope) -> Result<()> {
        if env.to != self.ctx.config.store_id
            || matches!(env.body, Body::Alive)
            || !(self.owns)(env.region)
            || self.tombstones.contains(&env.region)
        {
            return Ok(());
        }
        let Envelope { region, from, range, body, .. } = env;
        if let Body::Hibernate { term, index } = body {
            self.on_hibernate(region, from, term, index);
            return Ok(());
        }
        if !self.peers.contains_key(&region) {
            // A replica added by a membership change learns of its region from the
            // first message; it holds nothing until a snapshot arrives. But if the
            // region's range overlaps one hosted here, this store is behind: its own
            // split (or merge) will create the region, with its data; wait for that.
            // An unknown range decides nothing (design 5.5): no replica is created.
            let to = match &body {
                Body::Raft(m) => m.to,
                // The Raft message comes before a snapshot's chunks.
                Body::SnapshotChunk(_) | Body::Hibernate { .. } | Body::Alive => return Ok(()),
            };
            let Some(range) = range else { return Ok(()) };
            // The engine knows every region of the store, whichever core owns it; one
            // it hosts under this id is a split child whose replica is being created.
            let engine = self.ctx.engine_of(region);
            if engine.region(region).is_some()
                || !engine.overlapping(&range.start, range.end.as_deref()).is_empty()
            {
                return Ok(());
            }
            self.create_uninitialized(region, PeerId(to))?;
        }
        let peer = self.peers.get_mut(&region).expect("created above");
        // Any message wakes a hibernating replica, but heartbeat traffic: a leader's
        // responses keep coming for a while after it went quiet, and a follower
        // answers a leader's heartbeat without ticking (a heartbeat sent just before
        // the leader's notice may arrive just after it).
        let kind = match &body {
            Body::Raft(m) => Some(m.get_msg_type()),
            _ => None,
        };
        let heartbeat =
            matches!(kind, Some(MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse));
        if !heartbeat {
            peer.wake();
            peer.idle_ticks = 0;
            self.awake.insert(region);
        }
        match body {
            Body::Hibernate { .. } | Body::Alive => {}
            Body::Raft(msg) => {
                if msg.to != peer.id.0 {
                    return Ok(()); // for an older replica of the region on this store
                }
                peer.known_stores.insert(PeerId(msg.from), from);
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    let meta = msg.get_snapshot().get_metadata();
                    let ready = peer
                        .received
                        .as_ref()
                        .is_some_and(|(i, t, _)| *i == meta.index && *t == meta.term);
                    if !ready {
                        // The checkpoint did not arrive whole; the leader sends again.
                        tracing::debug!(
                            region = region.0,
                            index = meta.index,
                            "snapshot message without its checkpoint"
                        );
                        return Ok(());
                    }
                }
                peer.raw.step(msg)?;
            }
            Body::SnapshotChunk(chunk) => self.on_snapshot_chunk(region, chunk)?,
        }
        self.dirty.insert(region);
        Ok(())
    }

    /// A leader's notice that it hibernates: this follower does too if it follows
    /// that leader in that term and its log is complete and committed.
    fn on_hibernate(&mut self, region: RegionId, from: StoreId, term: u64, index: u64) {
        let Some(peer) = self.peers.get_mut(&region) else { return };
        let raft = &peer.raw.raft;
        if raft.state == StateRole::Follower
            && raft.term == term
            && peer.leader_store() == Some(from)
            && raft.raft_log.last_index() == index
            && raft.raft_log.committed == index
            && peer.reads_unissued.is_empty()
            && peer.paused.is_none()
            && peer.catch_up.is_none()
        {
            peer.hibernated = true;
            self.awake.remove(&region);
        }
    }

    fn create_uninitialized(&mut self, region: RegionId, id: PeerId) -> Result<()> {
        let state = LogState { first_index: 1, peer_id: id.0, ..LogState::default() };
        self.ctx.log.create_region(&mut self.write, region, state)?;
        tracing::info!(
            region = region.0,
            peer = id.0,
            "created a replica to be filled by a snapshot"
        );
        self.add_peer(Region::new(region, Vec::new(), Some(Vec::new())), false, id, 0, 0)
    }

    fn on_snapshot_chunk(&mut self, region: RegionId, chunk: SnapshotChunk) -> Result<()> {
        let peer = self.peers.get_mut(&region).expect("checked by caller");
        if chunk.offset == 0 {
            peer.incoming = Some(Incoming {
                index: chunk.index,
                term: chunk.term,
                next_offset: 0,
                receiver: self.ctx.engine_of(region).receive_checkpoint()?,
            });
        }
        let Some(incoming) = peer.incoming.as_mut() else { return Ok(()) };
        if (incoming.index, incoming.term, incoming.next_offset)
            != (chunk.index, chunk.term, chunk.offset)
        {
            peer.incoming = None; // a chunk went missing: drop the transfer, the leader resends
            return Ok(());
        }
        let last = chunk.is_last();
        let data = CheckpointChunk {
            offset: chunk.offset,
            file_bytes: chunk.file_bytes,
            data: chunk.data,
        };
        incoming.next_offset = chunk.offset + data.data.len() as u64;
        if let Err(e) = incoming.receiver.push(&data) {
            peer.incoming = None;
            return Err(e.into());
        }
        if last {
            let done = peer.incoming.take().expect("checked");
            let received = done.receiver.finish()?;
            peer.received = Some((done.index, done.term, received));
        }
        Ok(())
    }

    /// Takes a client write.
    pub fn on_write(&mut self, req: WriteRequest) {
        self.wake(req.region);
        if req.region == DIRECTORY {
            (req.reply)(Err(Error::InvalidRequest(
                "the cluster directory takes directory commands only".into(),
            )));
            return;
        }
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if let Err(e) = peer.check_version(req.epoch).and_then(|()| peer.check_not_merging()) {
            (req.reply)(Err(e));
            return;
        }
        if req.ops.iter().any(|op| !peer.region.contains(op.key())) {
            (req.reply)(Err(Error::KeyNotInRegion {
                region: peer.region.id,
                current: Some(peer.region.clone()),
            }));
            return;
        }
        let write = Write { epoch: req.epoch, ops: req.ops };
        peer.batch_bytes += write.encoded_len();
        peer.batch.push((write, self.ctx.metrics.timed(req.reply)));
        self.dirty.insert(req.region);
    }

    /// Takes a linearizable read.
    pub fn on_read(&mut self, req: ReadRequest) {
        self.wake(req.region);
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if let Err(e) = peer.check_version(req.epoch) {
            (req.reply)(Err(e));
            return;
        }
        peer.reads_unissued.push(req);
        self.dirty.insert(peer.region.id);
    }

    /// Sends the reads taken this turn to raft-rs as one `ReadIndex` request, once this
    /// leader has committed an entry of its term (raft-rs drops a request before).
    fn issue_reads(&mut self, region: RegionId) {
        let Some(peer) = self.peers.get_mut(&region) else { return };
        if peer.reads_unissued.is_empty() || !peer.raw.raft.commit_to_current_term() {
            return;
        }
        let ctx = peer.next_read_ctx;
        peer.next_read_ctx += 1;
        peer.raw.read_index(ctx.to_le_bytes().to_vec());
        let reads = std::mem::take(&mut peer.reads_unissued);
        peer.reads_pending.entry(ctx).or_default().extend(reads);
    }

    /// Takes a membership change (one peer at a time).
    pub fn on_change_peers(&mut self, req: ChangePeersRequest) {
        self.wake(req.region);
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if req.epoch != peer.region.epoch {
            (req.reply)(Err(Error::EpochNotMatch {
                region: req.region,
                current: vec![peer.region.clone()],
            }));
            return;
        }
        if let Err(e) = peer.check_not_merging() {
            (req.reply)(Err(e));
            return;
        }
        let mut single = ConfChangeSingle::default();
        let mut added = Vec::new();
        match req.change {
            PeerChange::AddVoter(p) => {
                single.set_change_type(ConfChangeType::AddNode);
                single.node_id = p.id.0;
                added.push(p);
            }
            PeerChange::AddLearner(p) => {
                single.set_change_type(ConfChangeType::AddLearnerNode);
                single.node_id = p.id.0;
                added.push(p);
            }
            PeerChange::Remove(id) => {
                single.set_change_type(ConfChangeType::RemoveNode);
                single.node_id = id.0;
            }
        }
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let context =
            command::encode_change_peers(&ChangePeersContext { epoch: req.epoch, peers: added });
        let before = peer.raw.raft.raft_log.last_index();
        if let Err(e) = peer.raw.propose_conf_change(context, cc) {
            (req.reply)(Err(e.into()));
            return;
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            (req.reply)(Err(Error::Dropped {
                region: req.region,
                reason: crate::error::DropReason::NotAppended,
            }));
            return;
        }
        peer.proposals.push_back(Proposal {
            index,
            term: peer.raw.raft.term,
            waiting: Waiting::ChangePeers(req.reply),
        });
        self.dirty.insert(req.region);
    }

    /// Takes an admin command (split, prepare, commit or roll back a merge). It is
    /// checked here against the leader's view, and again when applied, where the
    /// decision is made from replicated state only.
    pub fn on_admin(&mut self, req: AdminRequest) {
        self.wake(req.region);
        let Some(peer) = self.peers.get_mut(&req.region) else {
            (req.reply)(Err(Error::RegionNotFound { region: req.region }));
            return;
        };
        if !peer.is_leader() {
            let e = peer.not_leader();
            (req.reply)(Err(e));
            return;
        }
        if let Err(e) = check_admin(peer, req.epoch, &req.cmd, peer.applied_index + 1) {
            (req.reply)(Err(e));
            return;
        }
        if let AdminCmd::PrepareMerge { .. } = req.cmd
            && peer.raw.raft.pending_conf_index > peer.applied_index
        {
            (req.reply)(Err(Error::Dropped {
                region: req.region,
                reason: crate::error::DropReason::ConfChangePending,
            }));
            return;
        }
        let data = command::encode_admin(&Admin { epoch: req.epoch, cmd: req.cmd });
        let before = peer.raw.raft.raft_log.last_index();
        if let Err(e) = peer.raw.propose(Vec::new(), data) {
            (req.reply)(Err(e.into()));
            return;
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            (req.reply)(Err(Error::Dropped {
                region: req.region,
                reason: crate::error::DropReason::NotAppended,
            }));
            return;
        }
        peer.proposals.push_back(Proposal {
            index,
            term: peer.raw.raft.term,
            waiting: Waiting::Admin(req.reply),
        });
        self.dirty.insert(req.region);
    }

    /// Takes a command for the cluster directory (this store must lead it).
    pub fn on_directory(&mut self, cmd: &DirCmd, reply: Reply<DirResult>) {
        self.wake(DIRECTORY);
        let Some(peer) = self.peers.get_mut(&DIRECTORY) else {
            reply(Err(Error::RegionNotFound { region: DIRECTORY }));
            return;
        };
        if !peer.is_leader() {
            reply(Err(peer.not_leader()));
            return;
        }
        let before = peer.raw.raft.raft_log.last_index();
        if let Err(e) = peer.raw.propose(Vec::new(), command::encode_directory(cmd)) {
            reply(Err(e.into()));
            return;
        }
        let index = peer.raw.raft.raft_log.last_index();
        if index == before {
            reply(Err(Error::Dropped {
                region: DIRECTORY,
                reason: crate::error::DropReason::NotAppended,
            }));
            return;
        }
        peer.proposals.push_back(Proposal {
            index,
            term: peer.raw.raft.term,
            waiting: Waiting::Directory(reply),
        });
        self.dirty.insert(DIRECTORY);
    }

    /// The merge status of `region`, as its leader sees it.
    pub fn merge_status(&self, region: RegionId) -> Result<MergeStatus> {
        let peer = self.peers.get(&region).ok_or(Error::RegionNotFound { region })?;
        if !peer.is_leader() {
            return Err(peer.not_leader());
        }
        let all_matched = peer.merge.is_some_and(|m| {
            peer.raw.raft.prs().iter().all(|(_, pr)| pr.matched >= m.prepare_index)
        });
        Ok(MergeStatus { region: peer.region.clone(), merge: peer.merge, all_matched })
    }

    /// Takes a [`Control`] for a region this core owns.
    pub fn on_control(&mut self, control: Control) {
        self.wake(control.region());
        self.controls.push_back(control);
    }

    /// Queues `control` for the core that owns its region.
    fn send_control(&mut self, control: Control) {
        if (self.owns)(control.region()) {
            self.wake(control.region());
            self.controls.push_back(control);
        } else {
            self.foreign.push(control);
        }
    }

    fn run_controls(&mut self) {
        while let Some(control) = self.controls.pop_front() {
            let region = control.region();
            if let Err(e) = self.run_control(control) {
                Self::on_peer_error(region, &e);
            }
        }
    }

    #[allow(
        clippy::needless_pass_by_value,
        reason = "a control is handled once: taking it says so"
    )]
    fn run_control(&mut self, control: Control) -> Result<()> {
        match control {
            Control::Adopt { region, campaign } => {
                if self.peers.contains_key(&region) {
                    return Ok(());
                }
                let hosted = self
                    .ctx
                    .engine_of(region)
                    .region(region)
                    .ok_or(Error::RegionNotFound { region })?;
                let state = self.ctx.log.state(region).ok_or(Error::RegionNotFound { region })?;
                let applied =
                    self.ctx.engine_of(region).image_index(region)?.unwrap_or(RAFT_INIT_INDEX);
                self.tombstones.remove(&region);
                self.add_peer(hosted, true, PeerId(state.peer_id), applied, state.conf_index)?;
                if campaign {
                    let peer = self.peers.get_mut(&region).expect("just added");
                    peer.raw.campaign()?;
                }
                tracing::info!(region = region.0, campaign, "created the replica of a split child");
            }
            Control::CatchUp { source, target, index, term } => {
                let Some(peer) = self.peers.get_mut(&source) else {
                    tracing::warn!(
                        source = source.0,
                        target = target.0,
                        "merge source has no replica here"
                    );
                    return Ok(());
                };
                peer.catch_up = Some(CatchUp { target, index });
                let log = &mut peer.raw.raft.raft_log;
                // The target committed its merge, so the source's prepare command is
                // committed in the source's group; if this replica's log holds that very
                // entry, it may commit it without hearing from the source's leader
                // (which may be gone already).
                if peer.applied_index < index
                    && log.committed < index
                    && log.persisted >= index
                    && log.term(index).ok() == Some(term)
                {
                    log.commit_to(index);
                }
                self.dirty.insert(source);
                self.check_catch_up(source);
            }
            Control::SourceReady { target, source } => {
                if let Some(peer) = self.peers.get_mut(&target) {
                    peer.source_ready = Some(source);
                    self.dirty.insert(target);
                }
            }
            Control::Merged { source } => self.destroy(source)?,
        }
        Ok(())
    }

    /// Reports `region` to the directory if this store leads it. `leader` false: a
    /// region this leader created (a split child) whose leader is not known yet.
    fn report(&mut self, region: &Region, leader: bool) {
        if region.id == DIRECTORY {
            return;
        }
        let me = self.ctx.config.store_id;
        self.reports.push(RegionRecord { region: region.clone(), leader: leader.then_some(me) });
    }

    /// Tells a waiting merge target once this source replica applied far enough.
    fn check_catch_up(&mut self, source: RegionId) {
        let Some(peer) = self.peers.get_mut(&source) else { return };
        let Some(catch_up) = peer.catch_up else { return };
        if peer.applied_index >= catch_up.index {
            peer.catch_up = None;
            self.send_control(Control::SourceReady { target: catch_up.target, source });
        }
    }

    /// Asks the leader of `region` to hand leadership to `to`.
    pub fn on_transfer_leader(&mut self, region: RegionId, to: PeerId) {
        self.wake(region);
        if let Some(peer) = self.peers.get_mut(&region) {
            peer.raw.transfer_leader(to.0);
            self.dirty.insert(region);
        }
    }

    /// Reports that the writes carrying these readies are durable.
    pub fn on_persisted(&mut self, readies: &[(RegionId, u64)]) {
        for &(region, number) in readies {
            if let Some(peer) = self.peers.get_mut(&region) {
                peer.raw.on_persist_ready(number);
                if let Some((ready, index)) = peer.snapshot_applied
                    && ready <= number
                {
                    peer.raw.advance_apply_to(index);
                    peer.snapshot_applied = None;
                }
                self.dirty.insert(region);
            }
        }
    }

    /// The status of every peer, by region id.
    pub fn status(&self) -> Vec<PeerStatus> {
        let mut out: Vec<PeerStatus> = self.peers.values().map(peer_status).collect();
        out.sort_by_key(|s| s.region.id);
        out
    }

    /// The status of the peer of `region`, if there is one.
    pub fn peer_status(&self, region: RegionId) -> Option<PeerStatus> {
        self.peers.get(&region).map(peer_status)
    }

    /// True if any peer may have work for `flush`.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.outbox.is_empty()
            || !self.write.is_empty()
            || !self.controls.is_empty()
            || !self.foreign.is_empty()
    }

    /// Handles every pending ready: proposes batched writes, applies what committed,
    /// stages what must be persisted. See the module docs for what comes out.
    pub fn flush(&mut self) -> Output {
        let _span =
            tracing::trace_span!("store.flush", store = self.ctx.config.store_id.0).entered();
        for _ in 0..MAX_READY_PASSES {
            self.run_controls();
            if self.dirty.is_empty() {
                break;
            }
            let dirty = std::mem::take(&mut self.dirty);
            let engine = self.ctx.engine.clone();
            let mut applier = Applier::new(&engine);
            let mut touched = Vec::new();
            for region in dirty {
                match self.flush_peer(region, &mut applier) {
                    Ok(true) => touched.push(region),
                    Ok(false) => {}
                    Err(e) => {
                        Self::on_peer_error(region, &e);
                        applier.failed = true;
                    }
                }
            }
            // The pass's round ends: what every region wrote becomes visible together,
            // then their clients hear of it.
            if let Err(e) = applier.finish(&mut self.apply_stats) {
                if !e.is_cancelled() {
                    // Entries were taken as applied; the store must not go on from a
                    // state it does not have. A restart replays them from the log.
                    tracing::error!(store = self.ctx.config.store_id.0, error = %e, "apply failed; the store stops");
                }
                self.ctx.cancel.cancel();
                break;
            }
            for region in touched {
                if let Err(e) = self.after_apply(region) {
                    Self::on_peer_error(region, &e);
                }
            }
        }
        let messages = std::mem::take(&mut self.outbox);
        let write =
            if self.write.is_empty() && self.readies.is_empty() && self.after_persist.is_empty() {
                None
            } else {
                Some(WriteTask {
                    write: std::mem::replace(&mut self.write, self.ctx.log.begin_write()),
                    messages: std::mem::take(&mut self.after_persist),
                    readies: std::mem::take(&mut self.readies),
                })
            };
        Output {
            messages,
            write,
            controls: std::mem::take(&mut self.foreign),
            reports: std::mem::take(&mut self.reports),
        }
    }

    fn on_peer_error(region: RegionId, error: &Error) {
        if error.is_cancelled() {
            tracing::debug!(region = region.0, "peer stopped by shutdown");
        } else {
            tracing::error!(region = region.0, error = %error, "peer failed");
        }
    }

    /// Handles one peer's ready; true if it applied entries into `applier` (the rest
    /// of its turn comes after the round is committed, in `after_apply`).
    fn flush_peer(&mut self, region: RegionId, applier: &mut Applier<'_>) -> Result<bool> {
        self.propose_batch(region);
        self.issue_reads(region);
        self.prepare_snapshot(region)?;
        let Some(peer) = self.peers.get_mut(&region) else { return Ok(false) };
        let resume = peer.paused.as_ref().is_some_and(|p| peer.source_ready == Some(p.source));
        if resume {
            // The source caught up: apply what was held back, the commit merge first.
            let held = peer.paused.take().map(|p| p.entries).unwrap_or_default();
            self.apply(region, held, applier)?;
            return Ok(true);
        }
        if !peer.raw.has_ready() {
            return Ok(false);
        }
        let mut ready = peer.raw.ready();
        let me = self.ctx.config.store_id;

        // Messages that need not wait for our own fsync (a leader's).
        let now = ready.take_messages();
        self.route(region, now, false);

        // A snapshot to install: its checkpoint arrived in chunks before the message.
        let mut installed = None;
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(region, &snap)?;
            installed = Some(snap.get_metadata().index);
        }

        // Committed entries (already durable here): apply them.
        let committed = ready.take_committed_entries();
        let has_committed = !committed.is_empty();
        if has_committed {
            self.apply(region, committed, applier)?;
        }

        let peer = self.peers.get_mut(&region).expect("present");
        // Entries and hard state: readable now, durable with the write.
        let entries = ready.take_entries();
        match ready.hs() {
            // Only the commit index moved: no state record for it (see `keep_commit`).
            Some(hs) if !ready.must_sync() => {
                self.ctx.log.stage(&mut self.write, region, entries, None)?;
                self.ctx.log.keep_commit(region, hs)?;
            }
            hs => self.ctx.log.stage(&mut self.write, region, entries, hs)?,
        }
        for state in ready.take_read_states() {
            let ctx = u64::from_le_bytes(
                state.request_ctx.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default(),
            );
            if let Some(reads) = peer.reads_pending.remove(&ctx) {
                peer.reads_ready.push_back((state.index, reads));
            }
        }
        let mut became_leader = None;
        if let Some(ss) = ready.ss() {
            if ss.raft_state == StateRole::Leader {
                became_leader = peer.initialized.then(|| peer.region.clone());
            } else {
                let leader = peer.leader_store();
                peer.fail_unproposed(|| Error::NotLeader { region, leader });
            }
            tracing::debug!(store = me.0, region = region.0, role = ?ss.raft_state, leader = ss.leader_id, "role changed");
        }
        let persisted = ready.take_persisted_messages();
        let number = ready.number();
        peer.raw.advance_append_async(ready);
        if let Some(index) = installed {
            // The snapshot's state is applied; raft-rs learns it once the snapshot is
            // persisted (it requires applied <= persisted).
            peer.snapshot_applied = Some((number, index));
        }
        self.readies.push((region, number));
        self.route(region, persisted, true);
        if let Some(led) = became_leader {
            self.report(&led, true);
        }
        if !has_committed {
            self.serve_reads(region);
        }
        self.dirty.insert(region); // a later pass may have a light ready
        Ok(has_committed)
    }

    /// The rest of a peer's turn once the round holding what it applied is
    /// committed: raft-rs learns the applied index, reads at it are served, a
    /// checkpoint may be due, a removed replica goes.
    fn after_apply(&mut self, region: RegionId) -> Result<()> {
        let Some(peer) = self.peers.get_mut(&region) else { return Ok(()) };
        peer.raw.advance_apply_to(peer.applied_index);
        self.serve_reads(region);
        self.check_catch_up(region);
        self.maybe_checkpoint(region)?;
        if self.peers.get(&region).is_some_and(|p| p.removed) {
            self.destroy(region)?;
        } else {
            self.dirty.insert(region);
        }
        Ok(())
    }

    /// Proposes the writes batched this turn as few entries as the size bound allows.
    fn propose_batch(&mut self, region: RegionId) {
        let max = self.ctx.config.max_entry_bytes;
        let Some(peer) = self.peers.get_mut(&region) else { return };
        if peer.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut peer.batch);
        peer.batch_bytes = 0;
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut bytes = 0;
        let mut chunks = Vec::new();
        for (write, reply) in batch {
            let len = write.encoded_len();
            if !writes.is_empty() && bytes + len > max {
                chunks.push((std::mem::take(&mut writes), std::mem::take(&mut replies)));
                bytes = 0;
            }
            bytes += len;
            writes.push(write);
            replies.push(reply);
        }
        chunks.push((writes, replies));
        for (writes, replies) in chunks {
            if !peer.is_leader() {
                for reply in replies {
                    reply(Err(peer.not_leader()));
                }
                continue;
            }
            let data = command::encode_writes(&writes);
            let before = peer.raw.raft.raft_log.last_index();
            match peer.raw.propose(Vec::new(), data) {
                Ok(()) if peer.raw.raft.raft_log.last_index() > before => {
                    self.ctx.metrics.on_proposed(writes.len());
                    let index = peer.raw.raft.raft_log.last_index();
                    peer.proposals.push_back(Proposal {
                        index,
                        term: peer.raw.raft.term,
                        waiting: Waiting::Writes(replies),
                    });
                }
                Ok(()) => {
                    for reply in replies {
                        reply(Err(Error::Dropped {
                            region,
                            reason: crate::error::DropReason::NotAppended,
                        }));
                    }
                }
                Err(e) => {
                    let reason = if matches!(e, raft::Error::ProposalDropped) {
                        crate::error::DropReason::LeadershipChanging
                    } else {
                        crate::error::DropReason::Refused
                    };
                    for reply in replies {
                        reply(Err(Error::Dropped { region, reason }));
                    }
                }
            }
        }
    }

    /// Turns envelopes into messages to send now or after the write persists; a
    /// snapshot message is preceded by its checkpoint's chunks.
    fn route(&mut self, region: RegionId, messages: Vec<Message>, after_persist: bool) {
        if messages.is_empty() {
            return;
        }
        let me = self.ctx.config.store_id;
        let chunk_bytes = self.ctx.config.snapshot_chunk_bytes;
        let peer = self.peers.get_mut(&region).expect("present");
        let epoch = peer.initialized.then_some(peer.region.epoch);
        let range = peer
            .initialized
            .then(|| KeyRange { start: peer.region.start.clone(), end: peer.region.end.clone() });
        for msg in messages {
            let Some(to) = peer.store_of(PeerId(msg.to)) else {
                tracing::debug!(
                    region = region.0,
                    to = msg.to,
                    "no store known for peer; message dropped"
                );
                continue;
            };
            let mut out = Vec::new();
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                let meta = msg.get_snapshot().get_metadata();
                match &peer.snapshot_file {
                    Some(file) if file.header().applied_index == meta.index => {
                        for chunk in CheckpointChunks::new(file, chunk_bytes) {
                            out.push(Envelope {
                                region,
                                from: me,
                                to,
                                epoch,
                                range: range.clone(),
                                body: Body::SnapshotChunk(SnapshotChunk {
                                    index: meta.index,
                                    term: meta.term,
                                    offset: chunk.offset,
                                    file_bytes: chunk.file_bytes,
                                    data: chunk.data,
                                }),
                            });
                        }
                        // The follower confirms by its next append response; a lost
                        // transfer shows as a rejection and a new snapshot.
                        peer.raw.report_snapshot(msg.to, SnapshotStatus::Finish);
                    }
                    _ => {
                        peer.raw.report_snapshot(msg.to, SnapshotStatus::Failure);
                        continue;
                    }
                }
            }
            out.push(Envelope {
                region,
                from: me,
                to,
                epoch,
                range: range.clone(),
                body: Body::Raft(msg),
            });
            if after_persist {
                self.after_persist.extend(out);
            } else {
                self.outbox.extend(out);
            }
        }
    }

    /// Makes a snapshot raft-rs asked for: a checkpoint of the region as applied now.
    fn prepare_snapshot(&mut self, region: RegionId) -> Result<()> {
        let Some(peer) = self.peers.get_mut(&region) else { return Ok(()) };
        let wanted = peer.snapshot_slot.lock().wanted.take();
        let Some(wanted) = wanted else { return Ok(()) };
        // A merge source makes no snapshot: a replica that needs one cannot have the
        // prepare command in its log, and the merge waits (or rolls back) instead.
        if peer.applied_index < wanted || !peer.initialized || peer.merge.is_some() {
            peer.snapshot_slot.lock().wanted = Some(wanted);
            return Ok(());
        }
        let term = self.ctx.log.term(region, peer.applied_index)?;
        let engine = self.ctx.engine_of(region);
        let meta = engine.checkpoint(region, peer.applied_index)?;
        let file = engine.latest_checkpoint(region)?.ok_or_else(|| {
            Error::Internal(format!(
                "checkpoint of region {} at {} not found",
                region.0, meta.applied_index
            ))
        })?;
        peer.checkpoint_index = peer.applied_index;
        peer.applied_bytes_since_checkpoint = 0;
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = peer.applied_index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(peer.raw.raft.prs().conf().to_conf_state());
        peer.snapshot_slot.lock().ready = Some(snap);
        peer.snapshot_file = Some(file);
        self.ctx.log.stage_compaction(&mut self.write, region, peer.checkpoint_index)?;
        tracing::info!(region = region.0, index = peer.applied_index, "prepared a snapshot");
        Ok(())
    }

    /// Installs a received snapshot: the engine takes the checkpoint (durably), then
    /// the log restarts after it.
    fn install_snapshot(&mut self, region: RegionId, snap: &Snapshot) -> Result<()> {
        let peer = self.peers.get_mut(&region).expect("present");
        let meta = snap.get_metadata();
        let Some((index, term, received)) = peer.received.take() else {
            return Err(Error::Internal(format!(
                "snapshot of region {} at {} without its checkpoint",
                region.0, meta.index
            )));
        };
        if (index, term) != (meta.index, meta.term) {
            return Err(Error::Internal(format!(
                "snapshot {}/{} does not match the received checkpoint {index}/{term}",
                meta.index, meta.term
            )));
        }
        let installed = self.ctx.engine_of(region).install_checkpoint(received)?;
        let state = LogState {
            hard_state: peer.raw.raft.hard_state(),
            conf_state: meta.get_conf_state().clone(),
            first_index: meta.index + 1,
            truncated_term: meta.term,
            peer_id: peer.id.0,
            conf_index: meta.index,
        };
        self.ctx.log.stage_snapshot(&mut self.write, region, state)?;
        peer.region = installed;
        peer.initialized = true;
        peer.applied_index = meta.index;
        peer.checkpoint_index = meta.index;
        peer.conf_index = meta.index;
        peer.applied_bytes_since_checkpoint = 0;
        tracing::info!(region = region.0, index = meta.index, "installed a snapshot");
        Ok(())
    }

    /// Applies committed entries of one region into the pass's round, each through
    /// the region's timeline. A commit merge whose source replica here has not caught
    /// up yet holds itself and everything after it back (`Peer::paused`).
    fn apply(
        &mut self,
        region: RegionId,
        entries: Vec<Entry>,
        applier: &mut Applier<'_>,
    ) -> Result<()> {
        let peer = self.peers.get_mut(&region).expect("present");
        if let Some(paused) = peer.paused.as_mut() {
            paused.entries.extend(entries);
            return Ok(());
        }
        let timeline = peer.timeline.clone();
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            if let Some((source, index, term)) = self.merge_wait(region, &entry) {
                let held: Vec<Entry> = std::iter::once(entry).chain(entries).collect();
                tracing::info!(
                    target = region.0,
                    source = source.0,
                    index,
                    "merge waits for its source to catch up"
                );
                let peer = self.peers.get_mut(&region).expect("present");
                peer.paused = Some(Paused { source, entries: held });
                self.send_control(Control::CatchUp { source, target: region, index, term });
                return Ok(());
            }
            timeline
                .ingest(Lsn(entry.index), || {
                    self.apply_entry(region, &entry, applier).map_err(ingest_error)
                })
                .map_err(|e| {
                    if e.is_cancelled() {
                        Error::Cancelled
                    } else {
                        Error::Internal(format!("apply of region {} failed: {e}", region.0))
                    }
                })?;
        }
        Ok(())
    }

    /// If `entry` is a commit merge that will apply but whose source replica here has
    /// not reported catching up: the source, and the index and term it must reach.
    fn merge_wait(&self, region: RegionId, entry: &Entry) -> Option<(RegionId, u64, u64)> {
        if entry.get_entry_type() != EntryType::EntryNormal || !command::is_admin(&entry.data) {
            return None;
        }
        let Ok(Command::Admin(admin)) = command::decode(&entry.data) else { return None };
        let AdminCmd::CommitMerge { source, prepare_index, prepare_term } = &admin.cmd else {
            return None;
        };
        let peer = self.peers.get(&region)?;
        let meta_index =
            self.ctx.engine_of(region).meta_index(region).unwrap_or(peer.checkpoint_index);
        if entry.index <= peer.applied_index
            || entry.index <= meta_index
            || check_admin(peer, admin.epoch, &admin.cmd, entry.index).is_err()
            || peer.source_ready == Some(source.id)
        {
            return None;
        }
        Some((source.id, *prepare_index, *prepare_term))
    }

    /// Applies one committed entry and resolves the proposal waiting for it.
    fn apply_entry(
        &mut self,
        region: RegionId,
        entry: &Entry,
        applier: &mut Applier<'_>,
    ) -> Result<()> {
        let peer = self.peers.get_mut(&region).expect("present");
        if entry.index <= peer.applied_index {
            return Ok(()); // applied before a restart, or by a snapshot
        }
        peer.applied_bytes_since_checkpoint += entry.data.len() as u64;
        if let Some(observe) = &self.ctx.apply_observer {
            observe(region, entry.index, entry.term, &entry.data);
        }
        let outcome = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => Outcome::Nothing, // a new leader's no-op
            EntryType::EntryNormal => match command::decode(&entry.data).map_err(|e| {
                Error::Internal(format!("undecodable entry {}: {}", entry.index, e.reason))
            })? {
                Command::Writes(writes) if region == DIRECTORY => {
                    let refused = || Error::InvalidRequest("client writes to the directory".into());
                    Outcome::Writes(writes.iter().map(|_| Err(refused())).collect())
                }
                Command::Writes(writes) => {
                    let mut results = Vec::with_capacity(writes.len());
                    for write in &writes {
                        results.push(applier.write(peer, write)?);
                    }
                    Outcome::Writes(results)
                }
                Command::Directory(cmd) if region == DIRECTORY => {
                    let epoch = peer.region.epoch;
                    Outcome::Directory(Ok(directory::apply(&self.ctx.directory, epoch, &cmd)?))
                }
                Command::Directory(_) => Outcome::Directory(Err(Error::InvalidRequest(
                    "a directory command outside the directory".into(),
                ))),
                Command::Admin(admin) => {
                    // Admin commands change durable metadata; the data before them
                    // (of every region in the round) lands first.
                    applier.cut()?;
                    Outcome::Admin(self.apply_admin(region, entry, admin)?)
                }
            },
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                applier.cut()?;
                self.apply_conf_change(region, entry)?;
                Outcome::Nothing
            }
        };
        let peer = self.peers.get_mut(&region).expect("present");
        peer.applied_index = entry.index;
        resolve_proposals(peer, entry, outcome, &mut applier.replies);
        Ok(())
    }

    /// Applies an admin command. The outer result fails the apply (the store stops);
    /// the inner one is the command's outcome, decided from replicated state only, so
    /// that every replica decides alike.
    fn apply_admin(
        &mut self,
        region: RegionId,
        entry: &Entry,
        admin: Admin,
    ) -> Result<Result<AdminResult>> {
        let peer = self.peers.get_mut(&region).expect("present");
        let meta_index =
            self.ctx.engine_of(region).meta_index(region).unwrap_or(peer.checkpoint_index);
        if entry.index <= meta_index {
            // Applied before a restart: the engine's metadata (and for a split, the
            // children's replicas) reflect it already.
            let engine = self.ctx.engine_of(region);
            peer.region = engine.region(region).ok_or(Error::RegionNotFound { region })?;
            peer.merge = engine.merge_state(region);
            return Ok(Err(Error::Dropped {
                region,
                reason: crate::error::DropReason::AppliedBeforeRestart,
            }));
        }
        if let Err(refused) = check_admin(peer, admin.epoch, &admin.cmd, entry.index) {
            tracing::info!(region = region.0, index = entry.index, error = %refused, "admin command refused");
            return Ok(Err(refused));
        }
        let result = match admin.cmd {
            AdminCmd::Split { split_keys, new_ids } => {
                self.apply_split(region, entry, &split_keys, &new_ids)?
            }
            AdminCmd::PrepareMerge { target } => {
                let merge = MergeState {
                    target: target.id,
                    prepare_index: entry.index,
                    prepare_term: entry.term,
                };
                let source = self.ctx.engine.prepare_merge(region, merge, entry.index)?;
                let peer = self.peers.get_mut(&region).expect("present");
                peer.region = source.clone();
                peer.merge = Some(merge);
                peer.fail_unproposed(|| Error::Merging { region, target: target.id });
                tracing::info!(
                    source = region.0,
                    target = target.id.0,
                    index = entry.index,
                    "merge prepared"
                );
                AdminResult::Prepared {
                    source,
                    prepare_index: entry.index,
                    prepare_term: entry.term,
                }
            }
            AdminCmd::CommitMerge { source, prepare_index, prepare_term } => {
                let expected = MergeState { target: region, prepare_index, prepare_term };
                if self.ctx.engine.merge_state(source.id) != Some(expected) {
                    return Err(Error::Internal(format!(
                        "commit merge of region {} into {region} at {}: the source here is not \
                         prepared as the committed command says",
                        source.id, entry.index
                    )));
                }
                let merged = self.ctx.engine.merge_at(source.id, region, entry.index)?;
                let peer = self.peers.get_mut(&region).expect("present");
                peer.region = merged.clone();
                peer.source_ready = None;
                self.send_control(Control::Merged { source: source.id });
                tracing::info!(
                    source = source.id.0,
                    target = region.0,
                    index = entry.index,
                    "merge committed"
                );
                AdminResult::Merged(merged)
            }
            AdminCmd::RollbackMerge { .. } => {
                let source = self.ctx.engine.rollback_merge(region, entry.index)?;
                let peer = self.peers.get_mut(&region).expect("present");
                peer.region = source.clone();
                peer.merge = None;
                tracing::info!(source = region.0, index = entry.index, "merge rolled back");
                AdminResult::RolledBack(source)
            }
        };
        if self.peers.get(&region).is_some_and(Peer::is_leader) {
            match &result {
                AdminResult::Split(parts) => {
                    for (i, part) in parts.iter().enumerate() {
                        self.report(part, i == 0);
                    }
                }
                AdminResult::Prepared { source: r, .. }
                | AdminResult::Merged(r)
                | AdminResult::RolledBack(r) => self.report(&r.clone(), true),
            }
        }
        Ok(Ok(result))
    }

    /// Splits `region` at the split command `entry`: the children's logs are made
    /// durable first, then the engine splits (a checkpoint barrier), then the
    /// children's replicas are created. A crash in between leaves logs of children the
    /// engine does not host: they are tombstoned at the next open, and the split is
    /// applied again from the parent's log.
    fn apply_split(
        &mut self,
        region: RegionId,
        entry: &Entry,
        split_keys: &[Vec<u8>],
        new_ids: &[RegionId],
    ) -> Result<AdminResult> {
        let peer = self.peers.get(&region).expect("present");
        let conf_state = peer.raw.raft.prs().conf().to_conf_state();
        let peer_id = peer.id;
        let campaign = peer.is_leader();
        let mut leftovers = self.ctx.log.begin_write();
        for id in new_ids {
            if self.ctx.log.state(*id).is_some() {
                self.ctx.log.stage_tombstone(&mut leftovers, *id);
            }
        }
        if !leftovers.is_empty() {
            self.ctx.log.persist(leftovers)?;
        }
        let mut write = self.ctx.log.begin_write();
        for id in new_ids {
            let mut state = LogState {
                first_index: RAFT_INIT_INDEX + 1,
                truncated_term: RAFT_INIT_TERM,
                conf_state: conf_state.clone(),
                peer_id: peer_id.0,
                conf_index: RAFT_INIT_INDEX,
                ..LogState::default()
            };
            state.hard_state.term = RAFT_INIT_TERM;
            state.hard_state.commit = RAFT_INIT_INDEX;
            self.ctx.log.create_region(&mut write, *id, state)?;
        }
        self.ctx.log.persist(write)?;
        let parts =
            self.ctx.engine.split_at(region, split_keys, new_ids, entry.index, RAFT_INIT_INDEX)?;
        let peer = self.peers.get_mut(&region).expect("present");
        peer.region = parts[0].clone();
        for child in &parts[1..] {
            self.send_control(Control::Adopt { region: child.id, campaign });
        }
        tracing::info!(region = region.0, index = entry.index, children = ?new_ids, "split");
        Ok(AdminResult::Split(parts))
    }

    /// Applies a membership change: raft-rs's configuration and the region's peers.
    ///
    /// Replay after a restart must not apply a change twice: raft-rs's configuration
    /// already reflects entries up to the log's `conf_index`, and the engine's region
    /// reflects admin entries up to its `meta_index`.
    fn apply_conf_change(&mut self, region: RegionId, entry: &Entry) -> Result<()> {
        let me = self.ctx.config.store_id;
        let peer = self.peers.get_mut(&region).expect("present");
        if entry.get_entry_type() != EntryType::EntryConfChangeV2 {
            return Err(Error::Internal(format!(
                "entry {} is a v1 conf change, which regionkv never proposes",
                entry.index
            )));
        }
        let cc = ConfChangeV2::parse_from_bytes(&entry.data)
            .map_err(|e| Error::Internal(format!("conf change at {}: {e}", entry.index)))?;
        let ctx = command::decode_change_peers(&entry.context).map_err(|e| {
            Error::Internal(format!("conf change context at {}: {}", entry.index, e.reason))
        })?;
        // A prepared merge source keeps its members: a change proposed before the
        // prepare and committed after it applies as no change (the merge's commit
        // relies on the members the prepare saw).
        if peer.merge.is_some_and(|m| entry.index > m.prepare_index) {
            if entry.index > peer.conf_index {
                let cs = peer.raw.apply_conf_change(&ConfChangeV2::default())?;
                self.ctx.log.stage_conf_state(&mut self.write, region, cs, entry.index)?;
                peer.conf_index = entry.index;
            }
            tracing::info!(
                region = region.0,
                index = entry.index,
                "membership change refused: a merge is prepared"
            );
            return Ok(());
        }
        if entry.index > peer.conf_index {
            let cs = peer.raw.apply_conf_change(&cc)?;
            self.ctx.log.stage_conf_state(&mut self.write, region, cs, entry.index)?;
            peer.conf_index = entry.index;
        }
        // `None`: nothing recorded; metadata is at least as new as the checkpoint.
        let meta_index =
            self.ctx.engine_of(region).meta_index(region).unwrap_or(peer.checkpoint_index);
        if entry.index > meta_index {
            let mut peers = peer.region.peers.clone();
            for change in cc.get_changes() {
                let id = PeerId(change.node_id);
                match change.get_change_type() {
                    ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                        if !peers.iter().any(|p| p.id == id) {
                            let Some(added) = ctx.peers.iter().find(|p| p.id == id) else {
                                return Err(Error::Internal(format!(
                                    "conf change at {} adds peer {id} without its store",
                                    entry.index
                                )));
                            };
                            peers.push(*added);
                        }
                    }
                    ConfChangeType::RemoveNode => peers.retain(|p| p.id != id),
                }
            }
            peer.region = self.ctx.engine_of(region).change_peers(region, peers, entry.index)?;
        } else {
            peer.region = self
                .ctx
                .engine_of(region)
                .region(region)
                .ok_or(Error::RegionNotFound { region })?;
        }
        if !peer.region.peers.iter().any(|p| p.id == peer.id && p.store == me) {
            peer.removed = true;
        }
        tracing::info!(region = region.0, index = entry.index, epoch = %peer.region.epoch, peers = ?peer.region.peers, "applied a membership change");
        if peer.is_leader() {
            let changed = peer.region.clone();
            self.report(&changed, true);
        }
        Ok(())
    }

    /// Serves confirmed reads whose index has been applied.
    fn serve_reads(&mut self, region: RegionId) {
        let Some(peer) = self.peers.get_mut(&region) else { return };
        while peer.reads_ready.front().is_some_and(|(index, _)| *index <= peer.applied_index) {
            let (_, reads) = peer.reads_ready.pop_front().expect("peeked");
            let snapshot = self.ctx.engine_of(region).snapshot();
            for read in reads {
                let result = peer
                    .check_version(read.epoch)
                    .and_then(|()| run_query(&snapshot, &peer.region, &read.query));
                (read.reply)(result);
            }
        }
    }

    /// Checkpoints a region once enough log has been applied since the last, and
    /// compacts its log up to the checkpoint.
    fn maybe_checkpoint(&mut self, region: RegionId) -> Result<()> {
        let Some(peer) = self.peers.get_mut(&region) else { return Ok(()) };
        if !peer.initialized
            || peer.applied_bytes_since_checkpoint < self.ctx.config.checkpoint_log_bytes
            || peer.applied_index <= peer.checkpoint_index
            || peer.merge.is_some()
        {
            return Ok(());
        }
        self.ctx.engine_of(region).checkpoint(region, peer.applied_index)?;
        peer.checkpoint_index = peer.applied_index;
        peer.applied_bytes_since_checkpoint = 0;
        peer.snapshot_file = None;
        peer.snapshot_slot.lock().ready = None;
        self.ctx.log.stage_compaction(&mut self.write, region, peer.checkpoint_index)?;
        tracing::debug!(
            region = region.0,
            index = peer.checkpoint_index,
            "checkpointed and compacted"
        );
        Ok(())
    }

    /// Removes a replica that a membership change removed.
    fn destroy(&mut self, region: RegionId) -> Result<()> {
        let Some(mut peer) = self.peers.remove(&region) else { return Ok(()) };
        self.awake.remove(&region);
        peer.fail_all(|| Error::RegionNotFound { region });
        // A merged source is gone from the engine already.
        let engine = self.ctx.engine_of(region);
        if peer.initialized && engine.region(region).is_some() {
            engine.remove_region(region)?;
        }
        self.ctx.log.stage_tombstone(&mut self.write, region);
        self.tombstones.insert(region);
        tracing::info!(region = region.0, "removed this store's replica");
        Ok(())
    }

    /// Plans a WAL purge: stages state rewrites for idle regions, and purges what the
    /// plan allows now.
    fn plan_purge(&mut self) {
        let plan = self.ctx.log.purge_plan();
        for region in &plan.rewrite {
            if self.peers.contains_key(region) {
                let _ = self.ctx.log.stage_state_rewrite(&mut self.write, *region);
            }
        }
        match self.ctx.log.purge(&plan) {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(segments = n, below = %plan.purge_below, "purged WAL segments");
            }
            Err(e) => tracing::warn!(error = %e, "WAL purge failed; will retry"),
        }
    }

    /// Stops every peer: fails what waits with `Cancelled`, shuts timelines down.
    pub fn shutdown(&mut self, timeout: std::time::Duration) {
        for peer in self.peers.values_mut() {
            peer.fail_all(|| Error::Cancelled);
            if let Err(e) = peer.timeline.shutdown(timeout, || Ok(())) {
                tracing::warn!(error = %e, "timeline did not shut down cleanly");
            }
        }
    }
}

fn ingest_error(e: Error) -> regionkv_wal::IngestError {
    regionkv_wal::IngestError::Apply(Box::new(e))
}

fn op_value_len(op: &Op) -> usize {
    match op {
        Op::Put { value, .. } => value.len(),
        Op::Delete { .. } => 0,
    }
}

/// The write-batch round of one flush pass over every region it touches, and the
/// replies waiting for it.
struct Applier<'e> {
    engine: &'e Engine,
    stats: ApplyStats,
    round: ApplyRound<'e>,
    /// Bytes of keys and values buffered in `round`.
    bytes: usize,
    max_bytes: usize,
    replies: Vec<(Reply<()>, Result<()>)>,
    /// Set when a region's apply failed: the round may hold part of a write and must
    /// not be committed.
    failed: bool,
}

impl<'e> Applier<'e> {
    fn new(engine: &'e Engine) -> Applier<'e> {
        Applier {
            engine,
            stats: ApplyStats::default(),
            round: engine.begin_round(),
            bytes: 0,
            max_bytes: engine.max_round_bytes(),
            replies: Vec::new(),
            failed: false,
        }
    }

    /// Ends the pass: commits the round (dropped, uncommitted, if an apply failed)
    /// and answers every client whose write it held.
    fn finish(mut self, stats: &mut ApplyStats) -> Result<()> {
        let result = if self.failed {
            Err(Error::Internal("an apply failed; the round is dropped".into()))
        } else {
            self.cut()
        };
        stats.add(&self.stats);
        let replies = std::mem::take(&mut self.replies);
        match &result {
            Ok(()) => replies.into_iter().for_each(|(reply, r)| reply(r)),
            Err(e) => {
                let cancelled = e.is_cancelled();
                for (reply, _) in replies {
                    reply(Err(if cancelled {
                        Error::Cancelled
                    } else {
                        Error::Internal(format!("apply failed: {e}"))
                    }));
                }
            }
        }
        result
    }

    /// Commits the current round (its writes become visible) and opens a fresh one.
    fn cut(&mut self) -> Result<()> {
        if self.failed {
            return Err(Error::Internal("an apply failed; the round is dropped".into()));
        }
        let full = std::mem::replace(&mut self.round, self.engine.begin_round());
        self.bytes = 0;
        self.stats.count(full.prepared_regions().len());
        if let Err(e) = full.commit() {
            self.failed = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Buffers one client write, whole: it never straddles two rounds. The outer error
    /// is a failure of the apply itself; the inner result is the write's own outcome (a
    /// stale epoch or a key outside the region refuses just this write).
    fn write(&mut self, peer: &Peer, write: &Write) -> Result<Result<()>> {
        if let Err(refused) = check_write(peer, write) {
            return Ok(Err(refused));
        }
        let bytes: usize = write.ops.iter().map(|op| op.key().len() + op_value_len(op)).sum();
        if self.bytes + bytes > self.max_bytes && !self.round.is_empty() {
            self.cut()?;
        }
        let region = &peer.region;
        self.round.prepare_for_region(region.id, region.epoch)?;
        for op in &write.ops {
            // An error here leaves part of the write buffered; it fails the whole
            // apply (the round is dropped uncommitted), never commits a part.
            match op {
                Op::Put { key, value } => self.round.put(key, value)?,
                Op::Delete { key } => self.round.delete(key)?,
            }
        }
        self.bytes += bytes;
        Ok(Ok(()))
    }
}

/// Why a committed client write must not apply, if it must not.
fn check_write(peer: &Peer, write: &Write) -> Result<()> {
    peer.check_version(write.epoch)?;
    let region = &peer.region;
    if write.ops.iter().any(|op| !region.contains(op.key())) {
        return Err(Error::KeyNotInRegion { region: region.id, current: Some(region.clone()) });
    }
    Ok(())
}

/// Matches an applied entry with the proposals waiting at or before its index: the
/// one with the same index and term gets the entry's outcome; any other was
/// overwritten by a new leader and is dropped.
fn resolve_proposals(
    peer: &mut Peer,
    entry: &Entry,
    outcome: Outcome,
    replies: &mut Vec<(Reply<()>, Result<()>)>,
) {
    let region = peer.region.id;
    let dropped = || Error::Dropped { region, reason: crate::error::DropReason::Overwritten };
    let mismatch = || Error::Internal("a proposal matched an entry of another kind".into());
    let mut outcome = Some(outcome);
    while peer.proposals.front().is_some_and(|p| p.index <= entry.index) {
        let proposal = peer.proposals.pop_front().expect("checked");
        let matched = proposal.index == entry.index && proposal.term == entry.term;
        match proposal.waiting {
            Waiting::Admin(reply) if matched => match outcome.take() {
                Some(Outcome::Admin(result)) => reply(result),
                _ => reply(Err(mismatch())),
            },
            Waiting::Admin(reply) => reply(Err(dropped())),
            Waiting::Directory(reply) if matched => match outcome.take() {
                Some(Outcome::Directory(result)) => reply(result),
                _ => reply(Err(mismatch())),
            },
            Waiting::Directory(reply) => reply(Err(dropped())),
            Waiting::Writes(waiting) if matched => {
                let results = match outcome.take() {
                    Some(Outcome::Writes(results)) => results,
                    _ => Vec::new(),
                };
                let mut results = results.into_iter();
                for reply in waiting {
                    let r = results.next().unwrap_or_else(|| {
                        Err(Error::Internal("fewer results than writes".into()))
                    });
                    replies.push((reply, r));
                }
            }
            Waiting::Writes(waiting) => {
                replies.extend(waiting.into_iter().map(|reply| (reply, Err(dropped()))));
            }
            Waiting::ChangePeers(reply) if matched => reply(Ok(peer.region.clone())),
            Waiting::ChangePeers(reply) => reply(Err(dropped())),
        }
    }
}

fn peer_status(p: &Peer) -> PeerStatus {
    PeerStatus {
        region: p.region.clone(),
        peer: p.id,
        role: p.raw.raft.state,
        term: p.raw.raft.term,
        leader: (p.raw.raft.leader_id != raft::INVALID_ID).then_some(PeerId(p.raw.raft.leader_id)),
        commit: p.raw.raft.raft_log.committed,
        applied: p.applied_index,
        last_index: p.raw.raft.raft_log.last_index(),
        initialized: p.initialized,
        hibernated: p.hibernated,
    }
}

/// What applying one entry produced, for the proposal waiting on it.
enum Outcome {
    /// A no-op or membership change (whose proposer is answered when it applies).
    Nothing,
    /// One result per client write of the entry.
    Writes(Vec<Result<()>>),
    /// An admin command's result.
    Admin(Result<AdminResult>),
    /// A directory command's result.
    Directory(Result<DirResult>),
}

/// Why an admin command must not apply at `index` (`applied + 1` when proposing):
/// checked by the leader before proposing and by every replica when applying, from the
/// region's replicated state only.
fn check_admin(
    peer: &Peer,
    epoch: regionkv_engine::Epoch,
    cmd: &AdminCmd,
    index: u64,
) -> Result<()> {
    let region = &peer.region;
    let stale = || Error::EpochNotMatch { region: region.id, current: vec![region.clone()] };
    let invalid = |reason: &str| Error::InvalidRequest(format!("region {}: {reason}", region.id));
    if region.id == DIRECTORY {
        return Err(invalid("the cluster directory is never split or merged"));
    }
    let merging = peer.merge.filter(|m| index > m.prepare_index);
    let neighbours = |other: &Region| {
        other.id != region.id
            && (other.end.as_ref() == Some(&region.start)
                || region.end.as_ref() == Some(&other.start))
    };
    let same_stores = |other: &Region| {
        let stores = |r: &Region| {
            let mut s: Vec<StoreId> = r.peers.iter().map(|p| p.store).collect();
            s.sort_unstable();
            s
        };
        stores(other) == stores(region)
    };
    match cmd {
        AdminCmd::Split { split_keys, new_ids } => {
            if epoch.version != region.epoch.version {
                return Err(stale());
            }
            if let Some(m) = merging {
                return Err(Error::Merging { region: region.id, target: m.target });
            }
            if split_keys.is_empty() || split_keys.len() != new_ids.len() {
                return Err(invalid("a split needs one new region id per split key"));
            }
            if !split_keys.windows(2).all(|w| w[0] < w[1]) {
                return Err(invalid("split keys are not strictly increasing"));
            }
            let first = &split_keys[0];
            let last = &split_keys[split_keys.len() - 1];
            if *first <= region.start || region.end.as_ref().is_some_and(|end| last >= end) {
                return Err(invalid("split keys must be strictly inside the region"));
            }
            let mut ids: Vec<RegionId> = new_ids.clone();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != new_ids.len() || ids.contains(&region.id) {
                return Err(invalid("new region ids must be distinct and new"));
            }
        }
        AdminCmd::PrepareMerge { target } => {
            if epoch != region.epoch {
                return Err(stale());
            }
            if let Some(m) = merging {
                return Err(Error::Merging { region: region.id, target: m.target });
            }
            if !neighbours(target) {
                return Err(invalid("a merge target must be a neighbour"));
            }
            if !same_stores(target) {
                return Err(invalid("a merge target must have replicas on the same stores"));
            }
        }
        AdminCmd::CommitMerge { source, .. } => {
            if epoch != region.epoch {
                return Err(stale());
            }
            if let Some(m) = merging {
                return Err(Error::Merging { region: region.id, target: m.target });
            }
            if !neighbours(source) || !same_stores(source) {
                return Err(invalid("the merge source is not a neighbour on the same stores"));
            }
        }
        AdminCmd::RollbackMerge { prepare_index } => {
            if merging.is_none_or(|m| m.prepare_index != *prepare_index) {
                return Err(invalid("no merge prepared at that index"));
            }
        }
    }
    Ok(())
}

fn run_query(
    snapshot: &regionkv_engine::Snapshot,
    region: &Region,
    query: &Query,
) -> Result<QueryResult> {
    match query {
        Query::Get { key } => {
            if !region.contains(key) {
                return Err(Error::KeyNotInRegion {
                    region: region.id,
                    current: Some(region.clone()),
                });
            }
            Ok(QueryResult::Value(snapshot.get(key)))
        }
        Query::Scan { start, end, limit } => {
            let start = start.as_ref().max(region.start.as_slice());
            let end = match (end.as_deref(), region.end.as_deref()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(QueryResult::Rows(snapshot.scan(start, end, *limit)))
        }
    }
}
