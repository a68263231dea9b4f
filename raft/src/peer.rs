//! One replica of one region on this store: a raft-rs `RawNode` and what surrounds it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use raft::eraftpb::Entry;
use raft::{RawNode, StateRole};
use regionkv_engine::checkpoint::CheckpointFile;
use regionkv_engine::{
    CheckpointReceiver, Epoch, MergeState, PeerId, ReceivedCheckpoint, Region, RegionId, StoreId,
};
use regionkv_wal::Timeline;

use crate::command::{AdminCmd, Op, Write};
use crate::error::{Error, Result};
use crate::storage::{PeerStorage, SnapshotSlot};

/// A callback that receives the outcome of a request.
pub type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A client write to one region.
pub struct WriteRequest {
    /// The region the client routed the write to.
    pub region: RegionId,
    /// The region's epoch as the client knows it.
    pub epoch: Epoch,
    /// The changes; they apply together or not at all.
    pub ops: Vec<Op>,
    /// Called once the write is applied (or refused).
    pub reply: Reply<()>,
}

/// What a read asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// The value of one key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Up to `limit` pairs with `start <= key < end` (`end == None`: to the region's end).
    Scan {
        /// First key (inclusive).
        start: Bytes,
        /// Last key (exclusive).
        end: Option<Bytes>,
        /// Most pairs returned.
        limit: usize,
    },
}

/// What a read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryResult {
    /// The value of a `Get`.
    Value(Option<Bytes>),
    /// The pairs of a `Scan`, in key order.
    Rows(Vec<(Bytes, Bytes)>),
}

/// A linearizable read of one region.
pub struct ReadRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the client knows it.
    pub epoch: Epoch,
    /// What to read.
    pub query: Query,
    /// Called with the result.
    pub reply: Reply<QueryResult>,
}

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// Add a voting replica.
    AddVoter(regionkv_engine::Peer),
    /// Add a non-voting replica (it catches up without affecting quorums).
    AddLearner(regionkv_engine::Peer),
    /// Remove a replica.
    Remove(PeerId),
}

/// A membership change of one region.
pub struct ChangePeersRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the caller knows it.
    pub epoch: Epoch,
    /// The change.
    pub change: PeerChange,
    /// Called with the region after the change is applied.
    pub reply: Reply<Region>,
}

/// A change to a region's shape (split, merge), proposed to its leader.
pub struct AdminRequest {
    /// The region.
    pub region: RegionId,
    /// The region's epoch as the caller knows it.
    pub epoch: Epoch,
    /// The command.
    pub cmd: AdminCmd,
    /// Called with the outcome once the command is applied (or refused).
    pub reply: Reply<AdminResult>,
}

/// What an applied admin command produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminResult {
    /// The regions of a split, in key order; the first is the parent.
    Split(Vec<Region>),
    /// A merge source, prepared: it takes no writes until merged or rolled back.
    Prepared {
        /// The source as the prepare left it.
        source: Region,
        /// Index of the prepare command in the source's log.
        prepare_index: u64,
        /// Its term.
        prepare_term: u64,
    },
    /// The target of a merge, grown over the source's range.
    Merged(Region),
    /// A merge source after its rollback: it takes writes again.
    RolledBack(Region),
}

/// A merge source as its leader sees it, for whoever drives the merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeStatus {
    /// The region.
    pub region: Region,
    /// The merge prepared on it, if any.
    pub merge: Option<MergeState>,
    /// True once every replica's log holds the prepare command: the merge may commit
    /// (a lagging replica can then finish applying its own log).
    pub all_matched: bool,
}

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
    Directory(Reply<crate::directory::DirResult>),
}

/// A merge target on this store waiting for its source replica here to apply the
/// source's log up to the prepare command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CatchUp {
    pub target: RegionId,
    pub index: u64,
}

/// Committed entries a merge target holds back, from its commit merge on, until the
/// source replica here has caught up.
pub(crate) struct Paused {
    pub source: RegionId,
    pub entries: Vec<Entry>,
}

/// A snapshot being received, chunk by chunk.
pub(crate) struct Incoming {
    pub index: u64,
    pub term: u64,
    /// Offset the next chunk must start at.
    pub next_offset: u64,
    pub receiver: CheckpointReceiver,
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

/// A replica of a region.
pub(crate) struct Peer {
    /// The region as this replica knows it (a mirror of the engine's, once initialized).
    pub region: Region,
    /// False until the replica has data: created by a message, waiting for a snapshot.
    pub initialized: bool,
    pub id: PeerId,
    pub raw: RawNode<PeerStorage>,
    pub snapshot_slot: Arc<Mutex<SnapshotSlot>>,
    /// The checkpoint backing the snapshot in `snapshot_slot`, kept mapped until sent.
    pub snapshot_file: Option<CheckpointFile>,
    /// Client writes to propose at the end of this turn, and their replies.
    pub batch: Vec<(Write, Reply<()>)>,
    pub batch_bytes: usize,
    pub proposals: VecDeque<Proposal>,
    /// Reads taken this turn, sent to raft-rs as one `ReadIndex` request at the end of
    /// it (raft-rs drops a request made before the leader committed in its term, so
    /// they wait here until it has).
    pub reads_unissued: Vec<ReadRequest>,
    /// Reads sent to raft-rs as `ReadIndex` requests, by context.
    pub reads_pending: HashMap<u64, Vec<ReadRequest>>,
    /// Reads confirmed at an index, waiting for apply to reach it.
    pub reads_ready: VecDeque<(u64, Vec<ReadRequest>)>,
    pub next_read_ctx: u64,
    pub applied_index: u64,
    /// The index of the region's latest checkpoint.
    pub checkpoint_index: u64,
    /// Bytes of entries applied since that checkpoint.
    pub applied_bytes_since_checkpoint: u64,
    /// The index whose application produced raft-rs's current conf state.
    pub conf_index: u64,
    /// Stores of peers learned from messages (an uninitialized replica knows no region).
    pub known_stores: HashMap<PeerId, StoreId>,
    pub incoming: Option<Incoming>,
    pub received: Option<(u64, u64, ReceivedCheckpoint)>,
    /// A snapshot installed by ready `.0` at index `.1`: raft-rs is told it is applied
    /// once that ready is persisted.
    pub snapshot_applied: Option<(u64, u64)>,
    pub timeline: Timeline,
    /// Set when a membership change removed this replica: it is destroyed after the
    /// turn that applied the change.
    pub removed: bool,
    /// The merge this region is the prepared source of (mirrors the engine).
    pub merge: Option<MergeState>,
    /// As a merge source: the target waiting for this replica to catch up.
    pub catch_up: Option<CatchUp>,
    /// As a merge target: entries held back until the source caught up.
    pub paused: Option<Paused>,
    /// As a merge target: the source that reported it caught up.
    pub source_ready: Option<RegionId>,
    /// Not ticking: the group was quiet (see `StoreCore::maybe_hibernate`).
    pub hibernated: bool,
    /// Ticks since this leader last had something to do.
    pub idle_ticks: u32,
}

impl Peer {
    /// This replica's status.
    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            region: self.region.clone(),
            peer: self.id,
            role: self.raw.raft.state,
            term: self.raw.raft.term,
            leader: (self.raw.raft.leader_id != raft::INVALID_ID)
                .then_some(PeerId(self.raw.raft.leader_id)),
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied_index,
            last_index: self.raw.raft.raft_log.last_index(),
            initialized: self.initialized,
            hibernated: self.hibernated,
        }
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

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == raft::StateRole::Leader
    }

    /// Ends hibernation: the peer ticks again and counts idle time anew. A leader
    /// forgets how far its followers committed: a follower that restarted meanwhile may
    /// have come back with a lower commit index (it is not synced on its own), and
    /// raft-rs only ever raises what it recorded. The group is quiescent again only once
    /// every follower answered since.
    pub fn wake(&mut self) {
        if !self.hibernated {
            return;
        }
        self.hibernated = false;
        self.idle_ticks = 0;
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
        match self.merge {
            Some(m) => Err(Error::Merging { region: self.region.id, target: m.target }),
            None => Ok(()),
        }
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

    /// Fails what can no longer succeed once this peer stops leading: writes not yet
    /// proposed, and reads not yet confirmed. Proposed entries are left alone: they may
    /// still commit, and resolve when applied (matched by index and term).
    pub fn fail_unproposed(&mut self, error: impl Fn() -> Error) {
        for (_, reply) in self.batch.drain(..) {
            reply(Err(error()));
        }
        self.batch_bytes = 0;
        for read in self.reads_unissued.drain(..) {
            (read.reply)(Err(error()));
        }
        for (_, reads) in self.reads_pending.drain() {
            for read in reads {
                (read.reply)(Err(error()));
            }
        }
    }

    /// Fails everything waiting on this peer with `error()` (shutdown, removal).
    pub fn fail_all(&mut self, error: impl Fn() -> Error) {
        self.fail_unproposed(&error);
        for proposal in self.proposals.drain(..) {
            match proposal.waiting {
                Waiting::Writes(replies) => replies.into_iter().for_each(|r| r(Err(error()))),
                Waiting::ChangePeers(reply) => reply(Err(error())),
                Waiting::Admin(reply) => reply(Err(error())),
                Waiting::Directory(reply) => reply(Err(error())),
            }
        }
        for (_, reads) in self.reads_ready.drain(..) {
            for read in reads {
                (read.reply)(Err(error()));
            }
        }
    }
}
