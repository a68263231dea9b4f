//! [`StoreCore`]: the step functions of a store's Raft groups, and the Ready loop that
//! turns what they did into log writes, messages, applied entries and replies.
//!
//! The core owns a set of replicas (all of a store's, or one poller's share) and changes
//! only in response to its step functions: [`StoreCore::on_tick`],
//! [`StoreCore::on_envelopes`], [`StoreCore::on_write`], [`StoreCore::on_read`],
//! [`StoreCore::on_change_peers`], [`StoreCore::on_admin`], [`StoreCore::on_task`] and
//! [`StoreCore::on_persisted`]. What it cannot do itself comes out of
//! [`StoreCore::flush`] as an [`Output`] for a driver to carry out:
//!
//! - `messages`: to send now; a leader's appends go out in parallel with its own fsync
//!   (safe: raft-rs counts the leader in a commit quorum only for what it persisted);
//! - `write`: a [`WriteTask`]: the staged log write to make durable, the messages that
//!   may only leave after it is durable (votes, append responses), and the readies to
//!   report back through `on_persisted` once it is;
//! - `tasks`: [`CoreTask`]s for regions another core owns (split children to create,
//!   merge sources and targets to coordinate), for the driver to hand over through
//!   [`StoreCore::on_task`].
//!
//! # Life of a put
//!
//! 1. `propose.rs` [`StoreCore::on_write`]: the leader checks the write (epoch, merge,
//!    keys) and adds it to its replica's batch; the region is marked dirty.
//! 2. `mod.rs` [`StoreCore::flush`] -> `flush_replica` -> `propose.rs` `propose_batch`:
//!    the turn's batch is encoded into as few entries as `max_entry_bytes` allows, and
//!    `Replica::propose` (`replica.rs`) hands each to raft-rs and records who waits.
//! 3. `mod.rs` `flush_replica`, on the ready: `messages.rs` `route` sends the appends
//!    (`SendWhen::Now`), and the entries are staged into the pass's log write.
//! 4. The driver persists the [`WriteTask`] (`store.rs` `writer_loop`, or the
//!    simulator), sends what waited for it, and reports back: `mod.rs`
//!    [`StoreCore::on_persisted`]. The followers' acknowledgements arrive through
//!    `messages.rs` [`StoreCore::on_envelopes`], and the entry commits.
//! 5. `mod.rs` `flush_replica` takes the committed entry -> `apply.rs` `apply` ->
//!    `apply_entry` -> `Applier::write` buffers it in the pass's write-batch round, and
//!    `resolve_proposals` matches it (by index and term) with the waiting reply.
//! 6. `mod.rs` `flush` -> `apply.rs` `Applier::finish`: the round commits (the write is
//!    visible in the memtable) and the reply is called; `after_apply` then tells raft-rs
//!    the applied index and serves reads that waited for it.
//!
//! Committed entries of every region a flush pass touches are applied in one
//! write-batch round ([`regionkv_engine::ApplyRound`]): the round prepares region after
//! region, is cut (committed) before every admin command, and ends with the pass;
//! replies, reads and checkpoints wait for the round's commit.
//!
//! # Where the core waits for a disk
//!
//! Ordinary log writes leave as [`WriteTask`]s, but these steps write and fsync on the
//! core's own thread, and every region of the core waits for them (a poller handles no
//! request, message or tick meanwhile); a checkpoint's cost grows with its region:
//!
//! - applying a split (`admin_apply.rs` `apply_split`): the children's logs are made
//!   durable with `RaftLog::persist` (a WAL append and fdatasync, outside the writer
//!   thread), then `Engine::split_at` checkpoints every part and fsyncs the manifest;
//! - applying a merge step (`apply_admin`): `Engine::prepare_merge` and
//!   `rollback_merge` checkpoint the source, `Engine::merge_at` the merged target, each
//!   with a manifest fsync;
//! - applying a membership change (`apply_conf_change`), bootstrapping and destroying
//!   a replica (`lifecycle.rs`): a manifest write and fsync;
//! - checkpoints (`snapshot.rs` `maybe_checkpoint`), a snapshot prepared for a follower
//!   (`prepare_snapshot`) and a received one installed (`install_snapshot`): a
//!   checkpoint file written and fsynced, then the manifest;
//! - reads of log entries no longer cached (for a follower far behind) read the WAL.
//!
//! The deterministic simulator and the threaded production driver both drive this
//! same code; only where and when a `WriteTask` is persisted differs.
//!
//! # Files
//!
//! `propose.rs` (requests in), `messages.rs` (envelopes in, messages out), `apply.rs`
//! (committed entries), `admin_apply.rs` (splits, merges, membership, and the core
//! tasks), `snapshot.rs` (snapshots and checkpoints), `hibernate.rs` (ticks and
//! hibernation), `lifecycle.rs` (replicas created and removed, WAL purge, engine
//! garbage collection), `context.rs` and `output.rs` (what the core shares and hands
//! out).

use std::collections::VecDeque;
use std::sync::Arc;

use raft::StateRole;
use regionkv_engine::{IdHashMap, IdHashSet, PeerId, Region, RegionId, StoreId};

use crate::directory::{DIRECTORY, RegionRecord};
use crate::error::{Error, Result};
use crate::log::LogWrite;
use crate::metrics::{ApplyStats, StoreMetrics};
use crate::replica::{Contents, Installed, PeerStatus, Replica, ReplicaInit};
use crate::request::MergeStatus;
use crate::transport::Envelope;

mod admin_apply;
mod apply;
mod context;
mod dirty;
mod dup_apply;
mod hibernate;
mod lifecycle;
mod messages;
mod output;
mod propose;
mod sink_apply;
mod snapshot;
mod tso;
mod txn_apply;

use self::apply::Applier;
pub use self::context::{
    ApplyObserver, Clock, ElectionTicks, RAFT_INIT_INDEX, RAFT_INIT_TERM, ScanHook, StoreContext,
    system_clock_ms, wal_lost_records,
};
pub use self::dup_apply::DupRetention;
use self::messages::SendWhen;
pub use self::output::{CoreTask, Output, WriteTask};

/// How many times `flush` re-runs readies made by the previous round (light readies
/// after an inline persist, cascaded applies); bounds the loop.
const MAX_READY_PASSES: usize = 8;

/// Who leads a region reported to the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leadership {
    /// This store, which reports it.
    ThisStore,
    /// Not known yet: a split child this store's leader created, before its election.
    Unknown,
}

/// The Raft groups of a store (or a share of them) and their step functions.
pub struct StoreCore {
    ctx: Arc<StoreContext>,
    /// Boxed: a replica is over 2 KiB, and the table keeps spare slots (up to as many
    /// as it holds); boxed, a spare slot costs a pointer and probing stays in a compact
    /// array (ARCHITECTURE.md, "Many regions").
    replicas: IdHashMap<RegionId, Box<Replica>>,
    /// Replicas that are not hibernating: the only ones a tick visits, so that thousands
    /// of idle regions cost nothing per tick. Kept equal to the replicas whose
    /// `hibernated` flag is false.
    awake: IdHashSet<RegionId>,
    /// Replicas that may have a ready; ordered for determinism.
    dirty: dirty::Dirty,
    write: LogWrite,
    readies: Vec<(RegionId, u64)>,
    outbox: Vec<Envelope>,
    after_persist: Vec<Envelope>,
    ticks: u64,
    /// Tasks for regions this core owns, handled at the start of each pass.
    tasks: VecDeque<CoreTask>,
    /// Tasks for regions other cores own, for the driver.
    foreign_tasks: Vec<CoreTask>,
    /// Region changes for the directory, for the driver.
    reports: Vec<RegionRecord>,
    apply_stats: ApplyStats,
    /// The tick at which each other store was last heard from.
    store_heard: IdHashMap<StoreId, u64>,
    /// The other stores hosting a peer of a region here, to tell that this store is
    /// alive; found again once per silence window (`hibernate.rs`, `check_liveness`).
    alive_to: Vec<StoreId>,
    /// Which regions this core owns, for cores that share a store.
    owns: Box<dyn Fn(RegionId) -> bool + Send>,
    /// Regions that neither vote nor campaign until their commit index reaches this
    /// (their log lost its tail to a point-in-time recovery; see `mark_log_cut`).
    catching_up: IdHashMap<RegionId, u64>,
    /// Merge targets here waiting for a source replica this store does not have yet
    /// (a split it has not applied will create it), by source; see `catch_up`.
    awaiting_source: IdHashMap<RegionId, Vec<crate::replica::CatchUp>>,
    /// Vote requests for regions this store does not host yet but that overlap one it
    /// does (typically a split child whose first campaign came before this store
    /// applied the split), kept until the split creates the replica (`CoreTask::Adopt`
    /// steps them): by region, the tick the last came and one per sending store. See
    /// `hold_vote` (`messages.rs`).
    held_votes: IdHashMap<RegionId, (u64, Vec<Envelope>)>,
    /// The removed peers told they are gone (`Body::Gone`), by region: each peer and the
    /// tick it was last told (at most once an election timeout; see `tell_gone` in
    /// `messages.rs`).
    told_gone: IdHashMap<RegionId, Vec<(PeerId, u64)>>,
    /// Where confirmed scans run: inline (the simulator) or on the poller's reader
    /// thread (`Store`; see `reader.rs`).
    scans: crate::reader::Scans,
    /// Replicas that are not alone in their group (`Replica::is_alone`): they may have
    /// a peer on another store, which must not wait behind a caller's fsync. Kept
    /// true by `note_peers` wherever a replica is created, changes its members (only
    /// inside its flush: a membership change, a snapshot) or goes; a driver lets
    /// callers run this core only while it is empty (`store/solo.rs`).
    not_alone: IdHashSet<RegionId>,
    /// Regions that refused an entry of a kind this binary does not know since the
    /// core opened: logged once each (`apply.rs`, `unknown_kind`).
    unknown_kinds_logged: IdHashSet<RegionId>,
    /// The timestamp oracle, served while this core leads the directory (`tso.rs`).
    tso: tso::Oracle,
}

impl std::fmt::Debug for StoreCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCore")
            .field("store", &self.ctx.config.store_id)
            .field("replicas", &self.replicas.len())
            .finish_non_exhaustive()
    }
}

impl StoreCore {
    /// Opens this core's share of a store: a replica for every region `owns` accepts that
    /// the engine hosts or the log has (an uninitialized replica). Committed entries
    /// after each region's checkpoint are applied again by the first flushes.
    pub fn open(
        ctx: Arc<StoreContext>,
        owns: Box<dyn Fn(RegionId) -> bool + Send>,
    ) -> Result<StoreCore> {
        lifecycle::check_config(&ctx.config)?;
        let write = ctx.log.begin_write();
        let mut core = StoreCore {
            ctx,
            replicas: IdHashMap::default(),
            awake: IdHashSet::default(),
            dirty: dirty::Dirty::default(),
            write,
            readies: Vec::new(),
            outbox: Vec::new(),
            after_persist: Vec::new(),
            ticks: 0,
            tasks: VecDeque::new(),
            foreign_tasks: Vec::new(),
            reports: Vec::new(),
            apply_stats: ApplyStats::default(),
            store_heard: IdHashMap::default(),
            alive_to: Vec::new(),
            owns,
            catching_up: IdHashMap::default(),
            awaiting_source: IdHashMap::default(),
            held_votes: IdHashMap::default(),
            told_gone: IdHashMap::default(),
            scans: crate::reader::Scans::Inline,
            not_alone: IdHashSet::default(),
            unknown_kinds_logged: IdHashSet::default(),
            tso: tso::Oracle::default(),
        };
        let hosted: IdHashMap<RegionId, Region> = core
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
                if !core.recover_interrupted_install(region, applied)? {
                    continue; // this region stays down; the rest of the store opens
                }
                let state = core.ctx.log.state(id).ok_or(Error::RegionNotFound { region: id })?;
                core.add_replica(ReplicaInit {
                    region: region.clone(),
                    contents: Contents::Data,
                    id: PeerId(state.peer_id),
                    applied_index: applied,
                    conf_index: state.conf_index,
                })?;
            } else if !state.conf_state.voters.is_empty() || !state.conf_state.learners.is_empty() {
                // An initialized log the engine does not host: the replica was removed
                // (a membership change, or merged away) and a crash came before its log
                // was tombstoned; or a split child whose split never became durable in
                // the engine (the split is applied again from the parent's log).
                tracing::info!(
                    region = id.0,
                    "tombstoning the log of a replica the engine no longer hosts"
                );
                core.ctx.log.stage_tombstone(&mut core.write, id, None);
            } else {
                // In the log but not the engine: a replica waiting for its snapshot.
                let peer = PeerId(state.peer_id);
                core.add_replica(ReplicaInit::awaiting_snapshot(id, peer, state.conf_index))?;
            }
        }
        core.mark_log_cut()?;
        Ok(core)
    }

    /// H2: after a point-in-time recovery cut valid records from the WAL (records that
    /// may have been fsynced and acknowledged: entries, a term, a vote), no region of
    /// this core votes or campaigns until it has caught up past the cut: until its
    /// commit index, learned from a leader, is past the last entry its log kept. Which
    /// regions the lost records held is unknown, so every region waits. The mark is
    /// durable (`LogState::votes_from`), so a restart before catching up keeps it.
    ///
    /// What this bounds: a vote lost with the tail is not given again to a candidate of
    /// that term until the group moved on past it, and a log that lost entries it
    /// acknowledged does not vote for a candidate lacking them before the leader
    /// re-sent them. If every replica of a region was cut at once, none votes: the
    /// region stays without a leader until an operator restores one from a replica.
    fn mark_log_cut(&mut self) -> Result<()> {
        let mut ids: Vec<RegionId> =
            self.replicas.keys().copied().filter(|id| (self.owns)(*id)).collect();
        ids.sort_unstable();
        for id in ids {
            if self.ctx.log_cut {
                let (_, last) = self.ctx.log.bounds(id)?;
                self.ctx.log.stage_votes_from(&mut self.write, id, Some(last + 1))?;
            }
            if let Some(index) = self.ctx.log.state(id).and_then(|s| s.votes_from) {
                tracing::warn!(
                    region = id.0,
                    index,
                    "the log lost its tail: no vote until caught up"
                );
                self.catching_up.insert(id, index);
            }
        }
        Ok(())
    }

    /// Lifts `region`'s no-vote mark once its commit index reached the mark.
    fn maybe_caught_up(&mut self, region: RegionId) -> Result<()> {
        let Some(&index) = self.catching_up.get(&region) else { return Ok(()) };
        if self.replicas.get(&region).is_some_and(|r| r.committed() >= index) {
            self.catching_up.remove(&region);
            self.ctx.log.stage_votes_from(&mut self.write, region, None)?;
            tracing::info!(region = region.0, index, "caught up past the cut log: votes again");
        }
        Ok(())
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
        for replica in self.replicas.values() {
            if replica.region.id == DIRECTORY || !replica.is_initialized() {
                continue;
            }
            let lag = replica.committed().saturating_sub(replica.applied_index);
            m.regions += 1;
            m.leaders += u64::from(replica.is_leader());
            m.hibernating += u64::from(replica.hibernation.hibernated);
            m.applied_lag_total += lag;
            m.applied_lag_max = m.applied_lag_max.max(lag);
        }
        self.ctx.metrics.fill(&mut m);
        m.wal = self.ctx.log.wal().stats();
        m
    }

    /// Slots raft-rs holds for appends in flight to followers, over every replica here
    /// (`max_inflight_appends` per follower a leader sent to and has not freed): a
    /// per-region memory figure for tests.
    #[doc(hidden)]
    pub fn inflight_slots(&self) -> usize {
        let prs = self.replicas.values().flat_map(|r| r.raw.raft.prs().iter());
        prs.map(|(_, pr)| pr.ins.buffer_capacity()).sum()
    }

    /// The merge status of `region`, as its leader sees it.
    pub fn merge_status(&self, region: RegionId) -> Result<MergeStatus> {
        let replica = self.replicas.get(&region).ok_or(Error::RegionNotFound { region })?;
        if !replica.is_leader() {
            return Err(replica.not_leader());
        }
        let merge = replica.merge.state;
        let all_matched = merge.is_some_and(|m| replica.all_matched(m.prepare_index));
        Ok(MergeStatus { region: replica.region.clone(), merge, all_matched })
    }

    /// The status of every replica, by region id.
    pub fn status(&self) -> Vec<PeerStatus> {
        let mut out: Vec<PeerStatus> = self.replicas.values().map(|r| r.status()).collect();
        // How long since this core heard from each follower's store (any message, the
        // directory's liveness notices included, so also while the group hibernates).
        for (status, replica) in out.iter_mut().zip(self.replicas.values()) {
            for p in status.progress.iter_mut().flatten() {
                p.ticks_since_heard = replica
                    .store_of(p.peer)
                    .and_then(|store| self.store_heard.get(&store))
                    .map(|&heard| self.ticks.saturating_sub(heard));
            }
            // A leader's oldest transaction lock, from the engine's published table
            // (a follower's table is the same state, a leader's is the one asked).
            if replica.is_leader() && replica.is_initialized() {
                let id = replica.region.id;
                let engine = self.ctx.engine_of(id);
                status.oldest_lock_age_ms =
                    Some(engine.txn_oldest_lock_age_ms(id, self.ctx.now_ms()));
            }
            status.dups = self.dups_of(replica);
            status.sinks = self.sinks_of(replica);
        }
        out.sort_by_key(|s| s.region.id);
        out
    }

    /// The status of the replica of `region`, if there is one.
    pub fn peer_status(&self, region: RegionId) -> Option<PeerStatus> {
        self.replicas.get(&region).map(|r| PeerStatus {
            dups: self.dups_of(r),
            sinks: self.sinks_of(r),
            ..r.status()
        })
    }

    /// True if a replica here may have a peer on another store (see `not_alone`): a
    /// caller must not run this core then (`store/solo.rs`).
    pub fn hosts_remote_peers(&self) -> bool {
        !self.not_alone.is_empty()
    }

    /// True if the list behind [`StoreCore::hosts_remote_peers`] names exactly the
    /// replicas that are not alone: an O(replicas) check for tests and the simulator.
    #[doc(hidden)]
    pub fn remote_peers_listed(&self) -> bool {
        let not_alone: IdHashSet<RegionId> =
            self.replicas.iter().filter(|(_, r)| !r.is_alone()).map(|(id, _)| *id).collect();
        not_alone == self.not_alone
    }

    /// Lists `region` in `not_alone`, or takes it off, as its replica is now.
    fn note_peers(&mut self, region: RegionId) {
        match self.replicas.get(&region) {
            Some(replica) if !replica.is_alone() => {
                self.not_alone.insert(region);
            }
            _ => {
                self.not_alone.remove(&region);
            }
        }
    }

    /// True if any replica may have work for `flush`.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.outbox.is_empty()
            || !self.write.is_empty()
            || !self.tasks.is_empty()
            || !self.foreign_tasks.is_empty()
            || self.tso.has_flush_work()
    }

    /// Handles every pending ready: proposes batched writes, applies what committed,
    /// stages what must be persisted. See the module docs for what comes out.
    pub fn flush(&mut self) -> Output {
        let _span =
            tracing::trace_span!("store.flush", store = self.ctx.config.store_id.0).entered();
        for _ in 0..MAX_READY_PASSES {
            self.run_tasks();
            self.serve_timestamps();
            if self.dirty.is_empty() {
                break;
            }
            let dirty = self.dirty.take();
            let engine = self.ctx.engine.clone();
            let mut applier = Applier::new(&engine, self.ctx.config.apply_round_bytes);
            let mut touched = Vec::new();
            for &region in &dirty {
                match self.flush_replica(region, &mut applier) {
                    Ok(true) => touched.push(region),
                    Ok(false) => {}
                    // The log or the engine failed: the store stops (below).
                    Err(e) if e.is_store_failure() || e.is_cancelled() || applier.has_failed() => {
                        applier.fail(self.on_replica_error(region, &e));
                    }
                    // Anything else stops this replica only; the store goes on.
                    Err(e) => self.halt(region, &e),
                }
                // A membership change or a snapshot changes members only here.
                self.note_peers(region);
            }
            self.dirty.give_back(dirty);
            // The pass's round ends: what every region wrote becomes visible together,
            // then their clients hear of it.
            if let Err(e) = applier.finish(&mut self.apply_stats) {
                if e.is_cancelled() || self.ctx.cancel.is_cancelled() {
                    tracing::debug!(
                        store = self.ctx.config.store_id.0,
                        "apply round dropped by shutdown"
                    );
                    self.ctx.cancel.cancel();
                } else {
                    // Entries were taken as applied; the store must not go on from a
                    // state it does not have. A restart replays them from the log.
                    tracing::error!(store = self.ctx.config.store_id.0, error = %e, "apply failed; the store stops");
                    self.ctx.stop_on_failure(&e);
                }
                break;
            }
            for region in touched {
                if let Err(e) = self.after_apply(region) {
                    self.on_replica_error(region, &e);
                }
            }
        }
        // The next pass likely sends about as many: one allocation, not a growth series.
        let sent = self.outbox.len();
        let messages = std::mem::replace(&mut self.outbox, Vec::with_capacity(sent));
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
            tasks: std::mem::take(&mut self.foreign_tasks),
            reports: std::mem::take(&mut self.reports),
        }
    }

    /// Stops `region`'s replica from applying more of its log, after `error` applying
    /// a committed entry that is neither a refusal (every replica refuses alike, as a
    /// no-op) nor a failure of the store's log or engine: a command of a newer format,
    /// or a conflict with what this store holds. Its group goes on without it (a leader
    /// hands its leadership over); the store and its other regions are unaffected.
    /// Requests in flight learn that their outcome is unknown, later ones are refused
    /// with [`Error::ReplicaHalted`]. A restart applies the log again.
    fn halt(&mut self, region: RegionId, error: &Error) {
        let store = self.ctx.config.store_id;
        tracing::error!(store = store.0, region = region.0, error = %error, "this store's replica stopped applying its log; the store goes on: upgrade this store, or remove this replica and add it back");
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        let reason = error.to_string();
        replica.halted = Some(reason.clone());
        let halted = || Error::ReplicaHalted { region, reason: reason.clone() };
        replica.fail_unproposed(halted);
        for proposal in replica.proposals.in_flight.drain(..) {
            proposal.waiting.fail(|| Error::Timeout { region });
        }
        for (_, reads) in replica.reads.ready.drain(..) {
            for read in reads {
                (read.reply)(Err(halted()));
            }
        }
        replica.merge.paused = None;
        self.unlist_reads(region);
        self.hand_over_leadership(region);
    }

    /// A halted replica that leads asks another voter to take over.
    pub(super) fn hand_over_leadership(&mut self, region: RegionId) {
        let Some(replica) = self.replicas.get_mut(&region) else { return };
        if replica.halted.is_none() || !replica.is_leader() {
            return;
        }
        let me = replica.id.0;
        if let Some(&to) = replica.conf_state().voters.iter().find(|&&v| v != me) {
            replica.raw.transfer_leader(to);
            self.dirty.insert(region);
        }
    }

    /// Logs a replica's error: below ERROR once shutdown began (then every error is a
    /// cancellation). Returns whether it was one.
    fn on_replica_error(&self, region: RegionId, error: &Error) -> bool {
        let cancelled = error.is_cancelled() || self.ctx.cancel.is_cancelled();
        if cancelled {
            tracing::debug!(region = region.0, "replica stopped by shutdown");
        } else {
            tracing::error!(region = region.0, error = %error, "replica failed");
        }
        cancelled
    }

    /// Handles one replica's ready; true if it applied entries into `applier` (the rest
    /// of its turn comes after the round is committed, in `after_apply`).
    fn flush_replica(&mut self, region: RegionId, applier: &mut Applier<'_>) -> Result<bool> {
        self.propose_txns(region);
        self.propose_batch(region);
        self.issue_reads(region);
        self.prepare_snapshot(region)?;
        let Some(replica) = self.replicas.get_mut(&region) else { return Ok(false) };
        let merge = &mut replica.merge;
        let resume = merge.paused.as_ref().is_some_and(|p| merge.source_ready == Some(p.source));
        if resume {
            // The source caught up: apply what was held back, the commit merge first.
            let held = merge.paused.take().map(|p| p.entries).unwrap_or_default();
            self.apply(region, held, applier)?;
            return Ok(true);
        }
        if !replica.raw.has_ready() {
            return Ok(false);
        }
        let mut ready = replica.raw.ready();
        let me = self.ctx.config.store_id;

        // Messages that need not wait for our own fsync (a leader's).
        let now = ready.take_messages();
        self.route(region, now, SendWhen::Now);

        // A snapshot to install: its checkpoint arrived in chunks before the message.
        let mut installed = None;
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            // What the pass applied so far lands first: the install may replace regions
            // the round holds (stale merge sources).
            applier.cut()?;
            self.install_snapshot(region, &snap)?;
            installed = Some(snap.get_metadata().index);
        }

        // Committed entries (already durable here): apply them.
        let committed = ready.take_committed_entries();
        let has_committed = !committed.is_empty();
        if has_committed {
            self.apply(region, committed, applier)?;
        }

        let replica = self.replicas.get_mut(&region).expect("present");
        // Entries and hard state: readable now, durable with the write.
        let entries = ready.take_entries();
        // A hard state that moved only the commit index costs no state record (see
        // `RaftLog::stage_in`, `keep_commit`).
        let handle = replica.raw.store().handle();
        self.ctx.log.stage_in(&mut self.write, handle, entries, ready.hs())?;
        for state in ready.take_read_states() {
            let ctx = u64::from_le_bytes(
                state.request_ctx.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default(),
            );
            if let Some(reads) = replica.reads.pending.remove(&ctx) {
                replica.reads.ready.push_back((state.index, reads));
            }
        }
        let mut became_leader = None;
        if let Some(ss) = ready.ss() {
            if ss.raft_state == StateRole::Leader {
                became_leader = replica.is_initialized().then(|| replica.region.clone());
            } else {
                let leader = replica.leader_store();
                replica.fail_unproposed(|| Error::NotLeader { region, leader });
            }
            tracing::debug!(store = me.0, region = region.0, role = ?ss.raft_state, leader = ss.leader_id, "role changed");
        }
        let persisted = ready.take_persisted_messages();
        let number = ready.number();
        replica.raw.advance_append_async(ready);
        self.maybe_caught_up(region)?;
        let replica = self.replicas.get_mut(&region).expect("present");
        if let Some(index) = installed {
            // The snapshot's state is applied; raft-rs learns it once the snapshot is
            // persisted (it requires applied <= persisted).
            replica.snapshot.installed = Some(Installed { ready: number, index });
        }
        self.readies.push((region, number));
        self.route(region, persisted, SendWhen::AfterPersist);
        if let Some(led) = became_leader {
            self.report(&led, Leadership::ThisStore);
        }
        if !has_committed {
            self.serve_reads(region);
            self.publish_reads(region);
        }
        self.dirty.insert(region); // a later pass may have a light ready
        Ok(has_committed)
    }

    /// The rest of a replica's turn once the round holding what it applied is
    /// committed: raft-rs learns the applied index, reads at it are served, a
    /// checkpoint may be due, a removed replica goes.
    fn after_apply(&mut self, region: RegionId) -> Result<()> {
        let Some(replica) = self.replicas.get_mut(&region) else { return Ok(()) };
        replica.raw.advance_apply_to(replica.applied_index);
        self.serve_reads(region);
        self.check_catch_up(region);
        self.maybe_checkpoint(region)?;
        if self.replicas.get(&region).is_some_and(|p| p.removed) {
            self.destroy(region)?;
        } else {
            self.dirty.insert(region);
        }
        self.publish_reads(region);
        Ok(())
    }

    /// Takes back the readies of a write task carried out (after `on_persisted`), to
    /// fill again: a lone store's put has two tasks, each a vector otherwise.
    pub fn recycle_readies(&mut self, mut readies: Vec<(RegionId, u64)>) {
        if self.readies.is_empty() && self.readies.capacity() < readies.capacity() {
            readies.clear();
            self.readies = readies;
        }
    }

    /// Reports that the writes carrying these readies are durable.
    pub fn on_persisted(&mut self, readies: &[(RegionId, u64)]) {
        for &(region, number) in readies {
            if let Some(replica) = self.replicas.get_mut(&region) {
                replica.raw.on_persist_ready(number);
                if let Some(installed) = replica.snapshot.installed
                    && installed.ready <= number
                {
                    replica.raw.advance_apply_to(installed.index);
                    replica.snapshot.installed = None;
                    // A transfer that came before the persist (`messages.rs`).
                    if let Some(msg) = replica.snapshot.timeout_now.take()
                        && let Err(e) = replica.raw.step(msg)
                    {
                        tracing::debug!(region = region.0, error = %e, "dropped a transfer");
                    }
                }
                let waited_for = !replica.merge.catch_up.is_empty();
                self.dirty.insert(region);
                if waited_for {
                    // A merge source a target waits for may hold its prepare durably now.
                    self.check_catch_up(region);
                }
            }
        }
    }

    /// Reports `region`, which this store leads or created (a split child), to the
    /// directory.
    fn report(&mut self, region: &Region, leadership: Leadership) {
        if region.id == DIRECTORY {
            return;
        }
        let leader = match leadership {
            Leadership::ThisStore => Some(self.ctx.config.store_id),
            Leadership::Unknown => None,
        };
        self.reports.push(RegionRecord { region: region.clone(), leader });
    }
}
