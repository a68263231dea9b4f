//! [`Replica`]: this store's running copy of one region's Raft group, a raft-rs
//! `RawNode` with the queues, indexes and transfers around it.
//!
//! Words: a *peer* is a member of a region's group (`regionkv_engine::Peer`, an id and
//! the store that hosts it); a *replica* is the running copy of the group on this store.
//! The store core owns the replicas and drives them; a replica answers questions about
//! its group and proposes, but never touches the engine, the log or the network.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, HardState, Message};
use raft::{RawNode, StateRole};
use regionkv_engine::checkpoint::CheckpointFile;
use regionkv_engine::{
    CheckpointReceiver, Epoch, IdHashMap, MergeState, PeerId, ReceivedCheckpoint, Region, RegionId,
    StoreId,
};
use regionkv_wal::Timeline;

use crate::command::{Op, Write};
use crate::directory::DirResult;
use crate::error::{DropReason, Error, Result};
use crate::index::RaftIndex;
use crate::request::{AdminResult, ReadRequest, Reply};
use crate::status::{FollowerProgress, ReportedRole, TimelineState};
use crate::storage::{PeerStorage, SnapshotSlot};
use crate::txn::TxnReply;

/// A proposal in flight: the entry it became, and who waits for it.
pub(crate) struct Proposal {
    pub index: u64,
    pub term: u64,
    pub waiting: Waiting,
}

/// Who waits for a proposal.
pub(crate) enum Waiting {
    /// One reply per client write of the entry, in order.
    Writes(Vec<Reply<()>>),
    /// A membership change.
    ChangePeers(Reply<Region>),
    /// An admin command.
    Admin(Reply<AdminResult>),
    /// A directory command.
    Directory(Reply<DirResult>),
    /// A transaction command.
    Txn(Reply<TxnReply>),
    /// One reply per transaction command of the entry (a batch), in order.
    Txns(Vec<Reply<TxnReply>>),
    /// A duplication command.
    Dup(Reply<crate::dup::DupReply>),
    /// A sink command.
    Sink(Reply<crate::sink::SinkResult>),
}

impl Waiting {
    /// Answers everyone waiting with `error()`.
    pub fn fail(self, error: impl Fn() -> Error) {
        match self {
            Waiting::Writes(replies) => replies.into_iter().for_each(|r| r(Err(error()))),
            Waiting::ChangePeers(reply) => reply(Err(error())),
            Waiting::Admin(reply) => reply(Err(error())),
            Waiting::Directory(reply) => reply(Err(error())),
            Waiting::Txn(reply) => reply(Err(error())),
            Waiting::Txns(replies) => replies.into_iter().for_each(|r| r(Err(error()))),
            Waiting::Dup(reply) => reply(Err(error())),
            Waiting::Sink(reply) => reply(Err(error())),
        }
    }

    /// Answers a proposal raft-rs refused. One it dropped (no leader here, a leader
    /// moving away, a membership change still pending) was never appended: every
    /// request learns that it was dropped, which is retryable (at the new leader, or
    /// after the pending change). Other refusals are raft-rs's error.
    fn refuse(self, region: RegionId, error: raft::Error) {
        if matches!(error, raft::Error::ProposalDropped) {
            let reason = DropReason::LeadershipChanging;
            return self.fail(|| Error::Dropped { region, reason });
        }
        match self {
            Waiting::Writes(replies) => {
                let reason = DropReason::Refused;
                for reply in replies {
                    reply(Err(Error::Dropped { region, reason }));
                }
            }
            Waiting::ChangePeers(reply) => reply(Err(error.into())),
            Waiting::Admin(reply) => reply(Err(error.into())),
            Waiting::Directory(reply) => reply(Err(error.into())),
            Waiting::Txn(reply) => reply(Err(error.into())),
            Waiting::Txns(replies) => {
                let reason = DropReason::Refused;
                for reply in replies {
                    reply(Err(Error::Dropped { region, reason }));
                }
            }
            Waiting::Dup(reply) => reply(Err(error.into())),
            Waiting::Sink(reply) => reply(Err(error.into())),
        }
    }
}

/// What a replica proposes.
pub(crate) enum Proposed {
    /// A normal entry: encoded client writes, an admin or a directory command.
    Entry(Vec<u8>),
    /// A membership change, with its context (the epoch and the added peers' stores).
    ConfChange { context: Vec<u8>, change: ConfChangeV2 },
}

/// Client writes waiting to be proposed, and proposals waiting for their entries.
#[derive(Default)]
pub(crate) struct Proposals {
    /// Client writes to propose at the end of this turn, and their replies.
    pub batch: Vec<(Write, Reply<()>)>,
    /// Transaction commands to propose at the end of this turn, together (cluster
    /// version 5 on; `StoreCore::propose_txns`).
    pub txns: Vec<QueuedTxn>,
    /// Proposed, in index order: resolved when their entries apply.
    pub in_flight: VecDeque<Proposal>,
}

/// A transaction command taken this turn, checked and encoded as its own entry's
/// data would be ([`crate::command::encode_txn`]), with its reply.
pub(crate) struct QueuedTxn {
    /// The command alone, as an entry's data.
    pub data: Vec<u8>,
    /// Its proposer's reply.
    pub reply: Reply<TxnReply>,
    /// A one-phase commit (counted apart).
    pub one_phase: bool,
    /// A batched resolve's items (counted).
    pub resolve_items: Option<usize>,
}

/// Linearizable reads, from taken to served.
pub(crate) struct Reads {
    /// Taken this turn, sent to raft-rs as one `ReadIndex` request at the end of it
    /// (raft-rs drops a request made before the leader committed in its term, so they
    /// wait here until it has).
    pub unissued: Vec<ReadRequest>,
    /// Sent to raft-rs as `ReadIndex` requests, by context.
    pub pending: HashMap<u64, Vec<ReadRequest>>,
    /// Confirmed at an index, waiting for apply to reach it.
    pub ready: VecDeque<(u64, Vec<ReadRequest>)>,
    /// The context of the next `ReadIndex` request.
    pub next_ctx: u64,
    /// The epoch the region is listed with in the store's `LocalReads` (its gets are
    /// answered on the caller's thread), if it is.
    pub local: Option<Epoch>,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            unissued: Vec::new(),
            pending: HashMap::new(),
            ready: VecDeque::new(),
            next_ctx: 1,
            local: None,
        }
    }
}

/// Where this replica stands in a merge, as source or as target.
#[derive(Default)]
pub(crate) struct MergeProgress {
    /// The merge this region is the prepared source of (mirrors the engine).
    pub state: Option<MergeState>,
    /// As a merge source: the targets waiting for this replica to catch up (one, but
    /// for commit merges no driver proposed).
    pub catch_up: Vec<CatchUp>,
    /// As a merge target: entries held back until the source caught up.
    pub paused: Option<Paused>,
    /// As a merge target: the source that reported it caught up.
    pub source_ready: Option<RegionId>,
}

/// A merge target on this store waiting for its source replica here to apply the
/// source's log up to the prepare command (at `index`, of `term`, as the target's
/// commit merge says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CatchUp {
    pub target: RegionId,
    pub index: u64,
    pub term: u64,
}

impl CatchUp {
    /// The merge state the commit merge expects the source's prepare to have recorded.
    pub fn expected(&self) -> MergeState {
        MergeState { target: self.target, prepare_index: self.index, prepare_term: self.term }
    }
}

/// Committed entries a merge target holds back, from its commit merge on, until the
/// source replica here has caught up.
pub(crate) struct Paused {
    pub source: RegionId,
    pub entries: Vec<Entry>,
}

/// Snapshots out of this replica (to followers) and into it (from its leader).
pub(crate) struct SnapshotTransfer {
    /// What raft-rs reads when it asks this replica's storage for a snapshot.
    pub slot: Arc<Mutex<SnapshotSlot>>,
    /// The checkpoint backing the snapshot in `slot`, kept mapped until sent.
    pub file: Option<CheckpointFile>,
    /// A snapshot's checkpoint arriving chunk by chunk.
    pub incoming: Option<Incoming>,
    /// A checkpoint received whole, waiting for its snapshot message.
    pub received: Option<Received>,
    /// A snapshot installed, whose apply raft-rs learns once its ready is persisted.
    pub installed: Option<Installed>,
    /// A leadership transfer (`MsgTimeoutNow`) that arrived while `installed` was
    /// set: stepped once the snapshot is persisted (`core/snapshot.rs`,
    /// `awaits_snapshot_persist`).
    pub timeout_now: Option<Message>,
    /// The index of the last snapshot this replica installed since the store started:
    /// its log restarted after it, which may be past its duplication floor (a log gap,
    /// not a compaction; see `StoreCore::dup_retention`).
    pub installed_at: Option<u64>,
}

/// A snapshot being received, chunk by chunk.
pub(crate) struct Incoming {
    pub index: u64,
    pub term: u64,
    /// Offset the next chunk must start at.
    pub next_offset: u64,
    pub receiver: CheckpointReceiver,
}

/// A snapshot's checkpoint, received whole.
pub(crate) struct Received {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    pub checkpoint: ReceivedCheckpoint,
}

/// A snapshot installed by ready `ready` at `index`: raft-rs is told it is applied once
/// that ready is persisted (it requires applied <= persisted).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Installed {
    pub ready: u64,
    pub index: u64,
}

/// Whether the replica ticks.
#[derive(Default)]
pub(crate) struct Hibernation {
    /// Not ticking: the group was quiet (see `StoreCore::maybe_hibernate`).
    pub hibernated: bool,
    /// Ticks since this leader last had something to do.
    pub idle_ticks: u32,
}

/// Whether a replica holds its region's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contents {
    /// Created by a message of its group (a membership change added it): it holds
    /// nothing until a snapshot arrives, and its `region` is a placeholder (the id, no
    /// peers, an empty range).
    AwaitingSnapshot,
    /// Holds the region's data: bootstrapped, split off, reopened or installed from a
    /// snapshot.
    Data,
}

/// What a new replica starts from.
pub(crate) struct ReplicaInit {
    /// The region as the engine hosts it, or a placeholder for a replica awaiting its
    /// snapshot.
    pub region: Region,
    pub contents: Contents,
    /// This store's peer in the group.
    pub id: PeerId,
    /// The index of the engine's image of the region (0: none).
    pub applied_index: u64,
    /// The index whose application produced the log's conf state.
    pub conf_index: u64,
}

impl ReplicaInit {
    /// A replica of `region` that holds nothing until a snapshot arrives.
    pub fn awaiting_snapshot(region: RegionId, id: PeerId, conf_index: u64) -> ReplicaInit {
        ReplicaInit {
            region: Region::new(region, Vec::new(), Some(Vec::new())),
            contents: Contents::AwaitingSnapshot,
            id,
            applied_index: 0,
            conf_index,
        }
    }
}

/// One replica's status, for monitors and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The region as this store knows it.
    pub region: Region,
    /// This store's peer in the region's group.
    pub peer: PeerId,
    /// Leader, follower, candidate or pre-candidate, for routing: a role code this
    /// binary does not know decodes as a follower (never taken for leadership). A
    /// health monitor reads [`PeerStatus::reported_role`] instead.
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
    // Fields added with status schema 2: `None` is unknown (an older store, or not known
    // here), never a default (ARCHITECTURE.md, "Versions").
    /// The role as reported: a health monitor reads this field, never
    /// [`PeerStatus::role`] (which takes an unknown role for a follower, as routing
    /// must). `Unspecified` when the sender's role code is unknown here, or absent.
    pub reported_role: ReportedRole,
    /// The log's first index (its compaction point + 1). None: unknown (an older store,
    /// or not known here).
    pub first_index: Option<u64>,
    /// The state of the replica's apply timeline; a halted replica reports `Broken`.
    /// None: unknown (an older store, or not known here).
    pub timeline: Option<TimelineState>,
    /// True while the replica is a prepared merge source. None: unknown (an older
    /// store, or not known here).
    pub merge_pending: Option<bool>,
    /// A leader's view of every other member of its group; None on a follower, and
    /// unknown (an older store, or not known here).
    pub progress: Option<Vec<FollowerProgress>>,
    /// True if the replica is a learner of its group. None: unknown (an older store, or
    /// not known here: a replica that holds no data yet does not know its group).
    pub is_learner: Option<bool>,
    /// `(index, hash)` of the replica's last image hash. None: unknown (an older store,
    /// or no hash computed here yet).
    pub image_hash: Option<(u64, u64)>,
    /// Why the replica halted, if it did. None: not halted, or unknown (an older store);
    /// [`PeerStatus::timeline`] tells them apart (a store that sends it reports a
    /// halted replica as `Broken`).
    pub halted: Option<String>,
    /// On a leader: the age in ms (by the store's clock) of the oldest transaction lock
    /// its region holds, 0 if it holds none. None on a follower, and unknown (an older
    /// store, or not known here). A health monitor reports a leader whose oldest lock is
    /// old (an in-doubt transaction nobody resolves).
    pub oldest_lock_age_ms: Option<u64>,
    /// The region's duplication state as this replica applied it (its floor:
    /// `DupTable::floor`; empty: the region takes part in none). None: unknown (an
    /// older store, a replica that holds no data yet, or not known here).
    pub dups: Option<regionkv_engine::dup::DupTable>,
    /// The region's sink state (duplication, follower side) as this replica applied
    /// it; empty: it sinks nothing. None: unknown (as `dups`). In memory only.
    pub sinks: Option<regionkv_engine::sink::SinkTable>,
}

/// This store's replica of a region.
pub(crate) struct Replica {
    /// The region as this replica knows it (a mirror of the engine's, once it holds
    /// the region).
    pub region: Region,
    pub contents: Contents,
    pub id: PeerId,
    pub raw: RawNode<PeerStorage>,
    pub proposals: Proposals,
    pub reads: Reads,
    pub applied_index: u64,
    /// The index of the region's latest checkpoint.
    pub checkpoint_index: u64,
    /// Bytes of entries applied since that checkpoint.
    pub applied_bytes_since_checkpoint: u64,
    /// The index whose application produced raft-rs's current conf state.
    pub conf_index: u64,
    /// Stores of peers learned from messages (a replica awaiting its snapshot knows no
    /// region).
    pub known_stores: IdHashMap<PeerId, StoreId>,
    pub snapshot: SnapshotTransfer,
    pub timeline: Timeline<RaftIndex>,
    /// Set when a membership change removed this replica: it is destroyed after the
    /// turn that applied the change.
    pub removed: bool,
    pub merge: MergeProgress,
    pub hibernation: Hibernation,
    /// Ticks since a leader of the group last claimed this replica (an append, a
    /// heartbeat or a snapshot); an uninitialized replica unclaimed for long is
    /// collected (see `StoreCore::collect_unclaimed`).
    pub unclaimed_ticks: u64,
    /// Set when the replica met a committed entry it cannot apply (see
    /// [`Error::ReplicaHalted`]): it applies nothing more until the store restarts, and
    /// refuses requests; its log still takes part in replication.
    pub halted: Option<String>,
    /// `(index, hash)` of the last `ComputeHash` command applied (see
    /// [`PeerStatus::image_hash`]).
    pub image_hash: Option<(u64, u64)>,
    /// The store tick at which this replica, while it leads and is awake, proposes
    /// its next periodic `ComputeHash` (`StoreCore::propose_image_hashes`); `None`
    /// until first set.
    pub image_hash_due: Option<u64>,
    /// The region's watch for duplication's readers (`dup_source`), once this
    /// replica first applied or published.
    pub source: Option<std::sync::Arc<crate::dup_source::SourceWatch>>,
}

impl Replica {
    /// A replica started from `init`, around its raft-rs node; `merge` is the merge the
    /// engine has it prepared for, if any.
    pub fn new(
        init: ReplicaInit,
        raw: RawNode<PeerStorage>,
        timeline: Timeline<RaftIndex>,
        merge: Option<MergeState>,
    ) -> Replica {
        let slot = raw.store().snapshot_slot().clone();
        Replica {
            region: init.region,
            contents: init.contents,
            id: init.id,
            raw,
            proposals: Proposals::default(),
            reads: Reads::default(),
            applied_index: init.applied_index,
            checkpoint_index: init.applied_index,
            applied_bytes_since_checkpoint: 0,
            conf_index: init.conf_index,
            known_stores: IdHashMap::default(),
            snapshot: SnapshotTransfer {
                slot,
                file: None,
                incoming: None,
                received: None,
                installed: None,
                timeout_now: None,
                installed_at: None,
            },
            timeline,
            removed: false,
            merge: MergeProgress { state: merge, ..MergeProgress::default() },
            hibernation: Hibernation::default(),
            halted: None,
            image_hash: None,
            image_hash_due: None,
            unclaimed_ticks: 0,
            source: None,
        }
    }

    /// True once the replica holds its region's data.
    pub fn is_initialized(&self) -> bool {
        self.contents == Contents::Data
    }

    /// The index of the last entry in the log (durable or not).
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// The highest index known committed.
    pub fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Leader, follower, candidate or pre-candidate.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    pub fn is_leader(&self) -> bool {
        self.role() == StateRole::Leader
    }

    /// True if this replica knows of no leader in its term.
    pub fn knows_no_leader(&self) -> bool {
        self.raw.raft.leader_id == raft::INVALID_ID
    }

    /// The group's members as raft-rs has them now.
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// raft-rs's hard state (term, vote, commit).
    pub fn hard_state(&self) -> HardState {
        self.raw.raft.hard_state()
    }

    /// True once this leader committed an entry of its term (raft-rs drops a
    /// `ReadIndex` request made before).
    pub fn has_committed_in_its_term(&self) -> bool {
        self.raw.raft.commit_to_current_term()
    }

    /// True if this replica holds its region's data and no other peer is a member of
    /// its group (no other voter, no learner, no joint configuration): nothing it does
    /// waits for, or is awaited by, another store.
    pub fn is_alone(&self) -> bool {
        let prs = self.raw.raft.prs();
        self.is_initialized() && prs.is_singleton() && prs.iter().all(|(id, _)| *id == self.id.0)
    }

    /// True if this replica's gets may be answered on the caller's thread
    /// (`reader::LocalReads`): it is the group's only voter (no joint configuration),
    /// leads, has committed an entry of its term and applied every committed entry,
    /// and nothing (a merge, a halt, a removal) stops it from serving reads.
    pub fn reads_locally(&self) -> bool {
        let prs = self.raw.raft.prs();
        self.is_leader()
            && self.is_initialized()
            && self.halted.is_none()
            && !self.removed
            && self.check_readable().is_ok()
            && prs.is_singleton()
            && prs.conf().voters().contains(self.id.0)
            && self.has_committed_in_its_term()
            && self.applied_index >= self.committed()
    }

    /// True while a membership change is proposed and not applied yet.
    pub fn has_pending_conf_change(&self) -> bool {
        self.raw.raft.pending_conf_index > self.applied_index
    }

    /// True once every member's log holds `index` (as this leader knows).
    pub fn all_matched(&self, index: u64) -> bool {
        self.raw.raft.prs().iter().all(|(_, pr)| pr.matched >= index)
    }

    /// True if the group is quiescent, as this leader sees it: every replica holds the
    /// whole log, which ends with a committed entry of this leader's term, and nothing
    /// is proposed, read, moving or changing. The followers learn that commit from the
    /// hibernation notice (`StoreCore::on_hibernate`).
    pub fn is_quiescent(&self) -> bool {
        let raft = &self.raw.raft;
        let last = self.last_index();
        self.is_initialized()
            && self.proposals.batch.is_empty()
            && self.proposals.txns.is_empty()
            && self.proposals.in_flight.is_empty()
            && self.reads.unissued.is_empty()
            && self.reads.pending.is_empty()
            && self.reads.ready.is_empty()
            && self.merge.catch_up.is_empty()
            && self.merge.paused.is_none()
            && self.snapshot.incoming.is_none()
            && raft.lead_transferee.is_none()
            && !self.has_pending_conf_change()
            && raft.raft_log.committed == last
            && raft.raft_log.term(last).ok() == Some(raft.term)
            && raft.raft_log.persisted == last
            && self.applied_index == last
            && raft.prs().iter().all(|(&id, pr)| id == raft.id || pr.matched == last)
    }

    /// True if this follower may hibernate on the notice of its leader's store `from`
    /// (leading in `term`, its log ending at `index`): it follows that leader in that
    /// term, its log is complete and committed, and nothing waits on it.
    pub fn may_hibernate_after(&self, from: StoreId, term: u64, index: u64) -> bool {
        self.role() == StateRole::Follower
            && self.term() == term
            && self.leader_store() == Some(from)
            && self.last_index() == index
            && self.committed() == index
            && self.reads.unissued.is_empty()
            && self.merge.paused.is_none()
            && self.merge.catch_up.is_empty()
    }

    /// True if this replica's log holds entry `index` of `term` durably.
    pub fn holds_entry(&self, index: u64, term: u64) -> bool {
        let log = &self.raw.raft.raft_log;
        log.persisted >= index && log.term(index).ok() == Some(term)
    }

    /// Commits `index` from this replica's own log, which holds it durably (a merge
    /// target committed the merge naming that entry as this group's prepare command,
    /// which proves it committed here; this group's leader may be gone already). The
    /// caller checked that the entry is that prepare command.
    pub fn commit_held_entry(&mut self, index: u64, term: u64) {
        let log = &mut self.raw.raft.raft_log;
        if self.applied_index < index
            && log.committed < index
            && log.persisted >= index
            && log.term(index).ok() == Some(term)
        {
            log.commit_to(index);
        }
    }

    /// Proposes `proposed`. Once raft-rs appended it, `waiting` waits for its entry
    /// (resolved when the entry applies) and the entry's index is returned. If raft-rs
    /// refused or dropped it, `waiting` is answered with why, and `None` returned.
    pub fn propose(&mut self, proposed: Proposed, waiting: Waiting) -> Option<u64> {
        let region = self.region.id;
        let before = self.last_index();
        let entry = matches!(proposed, Proposed::Entry(_));
        let result = match proposed {
            Proposed::Entry(data) => self.raw.propose(Vec::new(), data),
            Proposed::ConfChange { context, change } => {
                self.raw.propose_conf_change(context, change)
            }
        };
        match result {
            Ok(()) if self.last_index() > before => {
                let index = self.last_index();
                let term = self.term();
                self.proposals.in_flight.push_back(Proposal { index, term, waiting });
                Some(index)
            }
            Ok(()) => {
                waiting.fail(|| Error::Dropped { region, reason: DropReason::NotAppended });
                None
            }
            // A leader, in its group and transferring nothing, drops an ordinary entry
            // only past raft-rs's `max_uncommitted_size`.
            Err(raft::Error::ProposalDropped)
                if entry
                    && self.is_leader()
                    && self.raw.raft.lead_transferee.is_none()
                    && self.raw.raft.prs().get(self.raw.raft.id).is_some() =>
            {
                let reason = DropReason::UncommittedLimit;
                waiting.fail(|| Error::Dropped { region, reason });
                None
            }
            Err(e) => {
                waiting.refuse(region, e);
                None
            }
        }
    }

    /// This replica's status.
    pub fn status(&self) -> PeerStatus {
        let leader = self.raw.raft.leader_id;
        PeerStatus {
            region: self.region.clone(),
            peer: self.id,
            role: self.role(),
            term: self.term(),
            leader: (leader != raft::INVALID_ID).then_some(PeerId(leader)),
            commit: self.committed(),
            applied: self.applied_index,
            last_index: self.last_index(),
            initialized: self.is_initialized(),
            hibernated: self.hibernation.hibernated,
            reported_role: self.role().into(),
            first_index: Some(self.raw.raft.raft_log.first_index()),
            timeline: Some(if self.halted.is_some() {
                TimelineState::Broken
            } else {
                self.timeline.state().into()
            }),
            merge_pending: Some(self.merge.state.is_some()),
            progress: self.is_leader().then(|| self.progress()),
            is_learner: self
                .is_initialized()
                .then(|| self.raw.raft.prs().conf().learners().contains(&self.id.0)),
            image_hash: self.image_hash,
            halted: self.halted.clone(),
            // Filled by the core, which reads the engine (`StoreCore::status`).
            oldest_lock_age_ms: None,
            dups: None,
            sinks: None,
        }
    }

    /// How this leader sees every other member of its group, by peer id.
    fn progress(&self) -> Vec<FollowerProgress> {
        let me = self.raw.raft.id;
        let mut out: Vec<FollowerProgress> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(&id, pr)| FollowerProgress {
                peer: PeerId(id),
                matched: pr.matched,
                state: pr.state.into(),
                recent_active: Some(pr.recent_active),
                ticks_since_heard: None,
            })
            .collect();
        out.sort_by_key(|p| p.peer);
        out
    }

    /// The store that hosts peer `id` of this region, if known.
    pub fn store_of(&self, id: PeerId) -> Option<StoreId> {
        self.region
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.store)
            .or_else(|| self.known_stores.get(&id).copied())
    }

    /// The store of the current leader, if known.
    pub fn leader_store(&self) -> Option<StoreId> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then(|| self.store_of(PeerId(leader))).flatten()
    }

    /// Ends hibernation: the replica ticks again and counts idle time anew. A leader
    /// forgets how far its followers committed: a follower that restarted meanwhile may
    /// have come back with a lower commit index (it is not synced on its own), and
    /// raft-rs only ever raises what it recorded. The group is quiescent again only once
    /// every follower answered since.
    pub fn wake(&mut self) {
        if !self.hibernation.hibernated {
            return;
        }
        self.hibernation.hibernated = false;
        self.hibernation.idle_ticks = 0;
        if self.is_leader() {
            let me = self.raw.raft.id;
            for (&id, pr) in self.raw.raft.mut_prs().iter_mut() {
                if id != me {
                    pr.committed_index = 0;
                }
            }
        }
    }

    /// Refuses client writes and shape changes while a merge is prepared here.
    pub fn check_not_merging(&self) -> Result<()> {
        match self.merge.state {
            Some(m) => Err(Error::Merging { region: self.region.id, target: m.target }),
            None => Ok(()),
        }
    }

    /// Refuses reads on a prepared merge source (the target may commit the merge and
    /// take writes to these keys at any time: this copy may be stale already), and on
    /// a merge target paused until its source replica here catches up (it holds back
    /// what it committed). Both are retryable.
    pub fn check_readable(&self) -> Result<()> {
        if let Some(m) = self.merge.state {
            return Err(Error::Merging { region: self.region.id, target: m.target });
        }
        if let Some(paused) = &self.merge.paused {
            return Err(Error::Merging { region: paused.source, target: self.region.id });
        }
        Ok(())
    }

    pub fn not_leader(&self) -> Error {
        Error::NotLeader { region: self.region.id, leader: self.leader_store() }
    }

    /// Refuses a request routed with an epoch whose `version` differs from the region's
    /// (a split or merge moved keys since); membership changes do not move keys.
    pub fn check_version(&self, epoch: Epoch) -> Result<()> {
        if epoch.version == self.region.epoch.version {
            Ok(())
        } else {
            Err(Error::EpochNotMatch { region: self.region.id, current: vec![self.region.clone()] })
        }
    }

    /// Refuses operations on keys outside the region.
    pub fn check_keys(&self, ops: &[Op]) -> Result<()> {
        let region = &self.region;
        if ops.iter().any(|op| !region.contains(op.key())) {
            return Err(Error::KeyNotInRegion { region: region.id, current: Some(region.clone()) });
        }
        Ok(())
    }

    /// Fails what can no longer succeed once this replica stops leading: writes not yet
    /// proposed, and reads not yet confirmed. Proposed entries are left alone: they may
    /// still commit, and resolve when applied (matched by index and term).
    pub fn fail_unproposed(&mut self, error: impl Fn() -> Error) {
        for (_, reply) in self.proposals.batch.drain(..) {
            reply(Err(error()));
        }
        for queued in self.proposals.txns.drain(..) {
            (queued.reply)(Err(error()));
        }
        for read in self.reads.unissued.drain(..) {
            (read.reply)(Err(error()));
        }
        for (_, reads) in self.reads.pending.drain() {
            for read in reads {
                (read.reply)(Err(error()));
            }
        }
    }

    /// Fails everything waiting on this replica (shutdown, removal): what was not
    /// proposed yet, and reads, with `error()`; proposals in flight, which may still
    /// commit and apply, with [`Error::CancelledInFlight`] (their outcome is unknown).
    pub fn fail_all(&mut self, error: impl Fn() -> Error) {
        self.fail_unproposed(&error);
        let region = self.region.id;
        for proposal in self.proposals.in_flight.drain(..) {
            proposal.waiting.fail(|| Error::CancelledInFlight { region });
        }
        for (_, reads) in self.reads.ready.drain(..) {
            for read in reads {
                (read.reply)(Err(error()));
            }
        }
    }
}
