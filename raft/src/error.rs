//! The Raft layer's error type and its classes, and the typed reasons of dropped
//! proposals and aborted merges (which cross the client protocol as codes).

use std::fmt;

use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_wal::Lsn;

/// What went wrong in the Raft layer, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This store does not lead the region; retry at the leader (if known).
    #[error("not the leader of region {}; leader: {leader:?}", region.0)]
    NotLeader {
        /// The region.
        region: RegionId,
        /// The store believed to lead it, if any.
        leader: Option<StoreId>,
    },
    /// The request was routed with a stale view of the region; refresh and retry.
    #[error("epoch of region {} does not match; current regions: {current:?}", region.0)]
    EpochNotMatch {
        /// The region the request was routed to.
        region: RegionId,
        /// The regions as this store knows them now (the region, or what replaced it).
        current: Vec<Region>,
    },
    /// A key is outside the region the request was routed to; refresh and retry.
    #[error("key is not in region {}", region.0)]
    KeyNotInRegion {
        /// The region the request was routed to.
        region: RegionId,
        /// The region as this store knows it.
        current: Option<Region>,
    },
    /// This store has no replica of the region; refresh and retry elsewhere.
    #[error("region {} is not on this store", region.0)]
    RegionNotFound {
        /// The region.
        region: RegionId,
    },
    /// A replica of the region already exists here.
    #[error("region {} already exists on this store", region.0)]
    RegionExists {
        /// The region.
        region: RegionId,
    },
    /// The region is the source of a prepared merge and takes no writes until the
    /// merge commits (its keys then belong to the target) or rolls back; retry.
    #[error("region {} is merging into region {}; retry", region.0, target.0)]
    Merging {
        /// The region.
        region: RegionId,
        /// The region it merges into.
        target: RegionId,
    },
    /// A merge was rolled back: the source takes writes again, nothing moved. It may
    /// be tried again.
    #[error("merge of region {} rolled back: {reason}", region.0)]
    MergeAborted {
        /// The region that was to merge away (the source).
        region: RegionId,
        /// Why.
        reason: MergeAbortReason,
    },
    /// The proposal was dropped (leadership changed, or its entry was overwritten)
    /// before it committed; its outcome is known: not applied. Retry.
    #[error("proposal to region {} dropped before commit ({reason}); retry", region.0)]
    Dropped {
        /// The region.
        region: RegionId,
        /// Why.
        reason: DropReason,
    },
    /// This store's replica of the region stopped applying its log: it met a committed
    /// entry it cannot apply here (a command written by a newer regionkv, or a conflict
    /// with what this store holds that its group's other replicas may not have). The
    /// store and its other regions go on; the region is served by its other replicas.
    #[error(
        "this store's replica of region {} stopped applying ({reason}); the region is served \
         by its other replicas: upgrade this store, or remove this replica and add it back",
        region.0
    )]
    ReplicaHalted {
        /// The region.
        region: RegionId,
        /// What it could not apply.
        reason: String,
    },
    /// Refused before it was proposed: the command kind needs a newer cluster version
    /// than the one active (`crate::version`). Nothing was done; finalize the upgrade
    /// once every store runs a binary that supports `needed`.
    #[error(
        "{feature} needs cluster version {needed}, the cluster runs at {active}; upgrade \
         every store, then finalize the upgrade"
    )]
    FeatureNotActive {
        /// The feature.
        feature: &'static str,
        /// The active cluster version, as the refusing store knows it.
        active: u32,
        /// The version that introduced the feature.
        needed: u32,
    },
    /// This store's binary cannot run at the cluster's active version (a finalized
    /// version above its `StoreConfig::cluster_version_max`, or a command of a kind
    /// it does not know while that version is active): the replica that met it halts
    /// ([`Error::ReplicaHalted`] says why); the store goes on.
    #[error(
        "cluster version {active} is active; this binary supports up to {supported}: \
         upgrade this store"
    )]
    ClusterVersionTooNew {
        /// The active cluster version.
        active: u32,
        /// The newest this store runs at.
        supported: u32,
    },
    /// The store refuses to open: it already ran at a cluster version newer than this
    /// binary supports (its persisted version, or its directory replica's record).
    #[error(
        "this store ran at cluster version {ran}, this binary supports up to {supported}: \
         run a newer binary"
    )]
    StoreVersionTooNew {
        /// The version the store ran at.
        ran: u32,
        /// The newest this binary (as configured) runs at.
        supported: u32,
    },
    /// Refused at apply: `key` holds a lock of another transaction (a raw write, a
    /// one-region batch, or another transaction's prewrite). Nothing was written;
    /// resolve the holder through its record (`primary_key`'s region), or wait, and
    /// retry. A lock this binary cannot read names no holder (`txn_id` 0, an empty
    /// primary key) and never expires (`expires_at_ms` is `u64::MAX`): wait.
    #[error(
        "key {key:?} is locked by transaction {txn_id} (primary {primary_key:?}); retry once it is resolved"
    )]
    Locked {
        /// The locked key.
        key: bytes::Bytes,
        /// The transaction holding the lock.
        txn_id: u64,
        /// That transaction's primary key: where its record is.
        primary_key: bytes::Bytes,
        /// When the lock may be resolved by others (ms since the Unix epoch, by the
        /// lock's own fields).
        expires_at_ms: u64,
        /// The holder's start timestamp, if it is a snapshot-isolated transaction
        /// (`None`: a level-1 lock, or one this binary cannot read).
        lock_start_ts: Option<u64>,
    },
    /// Refused at apply: a snapshot-isolated prewrite of `key` at `start_ts` met a
    /// version committed at `conflict_ts > start_ts` (a write-write conflict: a
    /// transaction that committed after this one started wrote the key). Nothing was
    /// written; the transaction must be retried with a new start timestamp.
    #[error(
        "write conflict on key {key:?}: a version committed at {conflict_ts}, after the \
         transaction's start at {start_ts}; retry the transaction"
    )]
    WriteConflict {
        /// The key (a lock key of the transactional keyspace).
        key: bytes::Bytes,
        /// The refused transaction's start timestamp.
        start_ts: u64,
        /// The commit timestamp of the newest committed version of the key.
        conflict_ts: u64,
    },
    /// Refused before it was proposed: a one-phase commit (`TxnCmd::OnePhase`) reached
    /// a leader of `region` that does not know what reads its predecessors served, so
    /// it cannot choose a safe commit timestamp yet. Nothing was done: take a
    /// timestamp from the oracle now (after this answer) and send the command again
    /// with it and `term` (`SyncedTs`), or commit in two phases.
    #[error(
        "region {region}'s leader (term {term}) has no timestamp from the oracle yet;          send the one-phase commit again with a fresh timestamp"
    )]
    ReadTsUnsynced {
        /// The region.
        region: RegionId,
        /// The leader's term.
        term: u64,
    },
    /// A definite outcome: the transaction is aborted (a commit or a prewrite with its
    /// record came after the abort). Nothing of it was or will be applied.
    #[error("transaction {txn_id} is aborted")]
    TxnAborted {
        /// The transaction.
        txn_id: u64,
    },
    /// The transaction has no record in its primary's region: never prewritten there,
    /// or finished and forgotten (`txn_id < floor`).
    #[error("transaction {txn_id} has no record (the region's floor is {floor})")]
    TxnNotFound {
        /// The transaction.
        txn_id: u64,
        /// The region's transaction floor: ids below it are finished.
        floor: u64,
    },
    /// Refused at apply: a prewrite of a transaction below its region's floor (its id
    /// is finished there). Nothing was written; the transaction must start again.
    #[error("transaction {txn_id} is below the region's floor {floor}: start a new one")]
    TxnTooOld {
        /// The transaction.
        txn_id: u64,
        /// The region's floor.
        floor: u64,
    },
    /// A snapshot read, prewrite or commit at `read_ts` below the region's version GC
    /// floor: versions it could read may have been collected. Nothing was read or
    /// written; not retryable within the transaction: start a new one.
    #[error(
        "snapshot at {read_ts} is older than the region's version GC floor {floor}: start a \
         new transaction"
    )]
    SnapshotTooOld {
        /// The snapshot's timestamp (a transaction's start timestamp).
        read_ts: u64,
        /// The region's GC floor (the safepoint it collected at).
        floor: u64,
    },
    /// Refused (before it was proposed, or at apply, alike on every replica): a split
    /// or merge of a region whose duplication `dup_id` is preparing or seeding (or
    /// frozen). Nothing was done; retry once the duplication streams.
    #[error(
        "region {} takes part in duplication {dup_id}, which is preparing or seeding: no \
         split or merge until it streams; retry later",
        region.0
    )]
    DuplicationSeeding {
        /// The region.
        region: RegionId,
        /// The duplication that holds it.
        dup_id: u64,
    },
    /// Refused at apply, alike on every replica: a `DUP` command that does not fit the
    /// region's duplication state (`crate::dup`). Nothing changed.
    #[error("duplication {dup_id} in region {}: refused ({reason})", region.0)]
    DupRefused {
        /// The region.
        region: RegionId,
        /// The duplication.
        dup_id: u64,
        /// Why.
        reason: crate::dup::DupRefusal,
    },
    /// Duplication's log reader (`Store::dup_read_log`): the entries asked for start
    /// below the first index this replica still has (compacted, or never held: it
    /// installed a snapshot past them). Nothing was read; the shipper fetches them
    /// elsewhere or reseeds the region.
    #[error(
        "region {}: the log asked for by a duplication starts below this replica's first \
         index {first_available}",
        region.0
    )]
    DupLogGap {
        /// The region.
        region: RegionId,
        /// The first index this replica's log holds now.
        first_available: u64,
    },
    /// Duplication's log reader: the entry at `index` changed raw keys by what the
    /// entry alone does not say (a transaction's commit writes its locks' values).
    /// Nothing after it was read; the duplication cannot go on from this log.
    #[error("region {}: entry {index} ({kind}) cannot be duplicated from the log", region.0)]
    DupUnsupportedEntry {
        /// The region.
        region: RegionId,
        /// The entry.
        index: u64,
        /// What it holds.
        kind: &'static str,
    },
    /// Duplication's log reader: entry `index` was applied before this store restarted
    /// (it applied the region's entries up to `known_from` then), so which of its
    /// writes applied (a stale epoch, a locked key or a retry skips one) is not known
    /// here. Nothing was read; read from a replica that applied it, or reseed.
    #[error(
        "region {}: which writes of entry {index} applied is not known on this store (it \
         recorded outcomes after {known_from} only)",
        region.0
    )]
    DupOutcomeUnknown {
        /// The region.
        region: RegionId,
        /// The first entry asked for.
        index: u64,
        /// Outcomes are known for entries after this one.
        known_from: u64,
    },
    /// Refused at apply, alike on every replica: a `SINK` command that does not fit the
    /// follower region's sink state (`crate::sink`). Nothing changed.
    #[error("sink of duplication {dup_id} in region {}: refused ({reason})", region.0)]
    SinkRefused {
        /// The follower region.
        region: RegionId,
        /// The duplication.
        dup_id: u64,
        /// Why.
        reason: crate::sink::SinkRefusal,
    },
    /// Refused (before it was proposed, or at apply, alike on every replica): a client
    /// write to a key that a duplication's sink holds (the key is a read-only standby
    /// copy of another cluster's until the duplication is promoted). Nothing changed.
    #[error(
        "region {} is a read-only standby of duplication {dup_id} for this key: no client \
         write until it is promoted",
        region.0
    )]
    StandbyReadOnly {
        /// The follower region.
        region: RegionId,
        /// The duplication whose sink holds the key.
        dup_id: u64,
    },
    /// Refused (before it was proposed, or at apply, alike on every replica): a client
    /// write to a key of a duplication that is cut over (or cutting over) to its
    /// follower cluster: the source range is fenced. Nothing changed.
    #[error(
        "region {} is fenced by the cutover of duplication {dup_id}: cut over to the \
         follower cluster and write there",
        region.0
    )]
    DupFenced {
        /// The source region.
        region: RegionId,
        /// The duplication whose cutover fences the key.
        dup_id: u64,
    },
    /// Refused before it was proposed: the store is shutting down (or not running).
    /// Nothing was done; safe to retry elsewhere.
    #[error("the store is stopping, stopped or unreachable; nothing was done")]
    Cancelled,
    /// The store shut down (or its replica of the region was removed) while the
    /// request was in flight: proposed, so it may still commit and apply. The outcome
    /// is unknown. A write with a session ([`crate::WriteSession`]) may be retried
    /// with the same session and number: it applies at most once. One without must
    /// not be retried blindly.
    #[error(
        "region {}: the store stopped with the request in flight; the outcome is unknown",
        region.0
    )]
    CancelledInFlight {
        /// The region.
        region: RegionId,
    },
    /// No reply within the deadline; the write may or may not have been applied.
    #[error("no reply from region {} within the deadline; the outcome is unknown", region.0)]
    Timeout {
        /// The region.
        region: RegionId,
    },
    /// Log entries below the compaction point were asked for.
    #[error("entry {index} of region {} was compacted", region.0)]
    Compacted {
        /// The region.
        region: RegionId,
        /// The index asked for.
        index: u64,
    },
    /// Log entries past the end of the log were asked for.
    #[error("entry {index} of region {} is not in the log", region.0)]
    EntryUnavailable {
        /// The region.
        region: RegionId,
        /// The index asked for.
        index: u64,
    },
    /// A Raft log record did not decode: the store's log is damaged.
    #[error("corrupt Raft log record at lsn {lsn}: {reason}; restore this store from a replica")]
    LogCorruption {
        /// The WAL record.
        lsn: Lsn,
        /// What check failed.
        reason: String,
    },
    /// The request can never succeed as asked (bad split keys, a merge of regions
    /// that are not neighbours, ...); fix the request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A message from the network did not decode; it was dropped.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The log failed.
    #[error(transparent)]
    Wal(#[from] regionkv_wal::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] regionkv_engine::Error),
    /// raft-rs refused a step.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// An invariant of this crate did not hold: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True if the caller should refresh its routing and retry. Exhaustive on purpose.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NotLeader { .. }
            | Error::EpochNotMatch { .. }
            | Error::KeyNotInRegion { .. }
            | Error::RegionNotFound { .. }
            | Error::Merging { .. }
            | Error::ReplicaHalted { .. }
            | Error::DuplicationSeeding { .. }
            | Error::Dropped { .. } => true,
            Error::RegionExists { .. }
            | Error::Cancelled
            | Error::CancelledInFlight { .. }
            | Error::Timeout { .. }
            | Error::Compacted { .. }
            | Error::EntryUnavailable { .. }
            | Error::LogCorruption { .. }
            | Error::Malformed(_)
            | Error::InvalidRequest(_)
            | Error::FeatureNotActive { .. }
            | Error::Locked { .. }
            | Error::WriteConflict { .. }
            | Error::ReadTsUnsynced { .. }
            | Error::TxnAborted { .. }
            | Error::TxnNotFound { .. }
            | Error::TxnTooOld { .. }
            | Error::SnapshotTooOld { .. }
            | Error::DupRefused { .. }
            | Error::DupLogGap { .. }
            | Error::DupUnsupportedEntry { .. }
            | Error::DupOutcomeUnknown { .. }
            | Error::SinkRefused { .. }
            | Error::StandbyReadOnly { .. }
            | Error::DupFenced { .. }
            | Error::ClusterVersionTooNew { .. }
            | Error::StoreVersionTooNew { .. }
            | Error::MergeAborted { .. }
            | Error::Wal(_)
            | Error::Engine(_)
            | Error::Raft(_)
            | Error::Internal(_) => false,
        }
    }

    /// True if the error must stop the store: its log or engine failed (I/O, a poisoned
    /// engine, a damaged file), so the state in memory may be ahead of what is durable
    /// and only a restart (recovering from disk) may go on. Everything else that can go
    /// wrong applying a command is a refusal (the command is applied as a no-op and its
    /// proposer told why), or at worst halts one replica. Exhaustive on purpose.
    pub fn is_store_failure(&self) -> bool {
        match self {
            Error::Wal(e) => !e.is_cancelled(),
            Error::Engine(e) => matches!(
                e.class(),
                regionkv_engine::ErrorClass::Io
                    | regionkv_engine::ErrorClass::Fatal
                    | regionkv_engine::ErrorClass::Corruption
            ),
            Error::LogCorruption { .. } => true,
            Error::NotLeader { .. }
            | Error::EpochNotMatch { .. }
            | Error::KeyNotInRegion { .. }
            | Error::RegionNotFound { .. }
            | Error::RegionExists { .. }
            | Error::Merging { .. }
            | Error::MergeAborted { .. }
            | Error::Dropped { .. }
            | Error::ReplicaHalted { .. }
            | Error::Cancelled
            | Error::CancelledInFlight { .. }
            | Error::Timeout { .. }
            | Error::Compacted { .. }
            | Error::EntryUnavailable { .. }
            | Error::InvalidRequest(_)
            | Error::FeatureNotActive { .. }
            | Error::Locked { .. }
            | Error::WriteConflict { .. }
            | Error::ReadTsUnsynced { .. }
            | Error::TxnAborted { .. }
            | Error::TxnNotFound { .. }
            | Error::TxnTooOld { .. }
            | Error::SnapshotTooOld { .. }
            | Error::DupRefused { .. }
            | Error::DupLogGap { .. }
            | Error::DupUnsupportedEntry { .. }
            | Error::DupOutcomeUnknown { .. }
            | Error::SinkRefused { .. }
            | Error::StandbyReadOnly { .. }
            | Error::DupFenced { .. }
            | Error::DuplicationSeeding { .. }
            | Error::ClusterVersionTooNew { .. }
            | Error::StoreVersionTooNew { .. }
            | Error::Malformed(_)
            | Error::Raft(_)
            | Error::Internal(_) => false,
        }
    }

    /// True if the error comes from shutdown (before propose, or in flight: see
    /// [`Error::is_outcome_unknown`]).
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled | Error::CancelledInFlight { .. } => true,
            Error::Wal(e) => e.is_cancelled(),
            Error::Engine(e) => e.is_cancelled(),
            _ => false,
        }
    }

    /// True if the request may have taken effect although it failed: it was in flight
    /// when its store stopped, or no answer came in time. Retrying a write then is
    /// safe only with its session. Exhaustive on purpose.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Error::CancelledInFlight { .. } | Error::Timeout { .. } => true,
            Error::NotLeader { .. }
            | Error::EpochNotMatch { .. }
            | Error::KeyNotInRegion { .. }
            | Error::RegionNotFound { .. }
            | Error::RegionExists { .. }
            | Error::Merging { .. }
            | Error::MergeAborted { .. }
            | Error::Dropped { .. }
            | Error::ReplicaHalted { .. }
            | Error::Cancelled
            | Error::Compacted { .. }
            | Error::EntryUnavailable { .. }
            | Error::LogCorruption { .. }
            | Error::InvalidRequest(_)
            | Error::FeatureNotActive { .. }
            | Error::Locked { .. }
            | Error::WriteConflict { .. }
            | Error::ReadTsUnsynced { .. }
            | Error::TxnAborted { .. }
            | Error::TxnNotFound { .. }
            | Error::TxnTooOld { .. }
            | Error::SnapshotTooOld { .. }
            | Error::DupRefused { .. }
            | Error::DupLogGap { .. }
            | Error::DupUnsupportedEntry { .. }
            | Error::DupOutcomeUnknown { .. }
            | Error::SinkRefused { .. }
            | Error::StandbyReadOnly { .. }
            | Error::DupFenced { .. }
            | Error::DuplicationSeeding { .. }
            | Error::ClusterVersionTooNew { .. }
            | Error::StoreVersionTooNew { .. }
            | Error::Malformed(_)
            | Error::Wal(_)
            | Error::Engine(_)
            | Error::Raft(_)
            | Error::Internal(_) => false,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a proposal was dropped before it committed ([`Error::Dropped`]). Code 0 is
/// reserved: a code this binary does not know (from a newer store) decodes as
/// [`DropReason::Unspecified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// No reason given, or one this binary does not know.
    Unspecified,
    /// raft-rs accepted the proposal but appended nothing (it dropped it silently).
    NotAppended,
    /// raft-rs refused it because leadership is changing.
    LeadershipChanging,
    /// raft-rs refused it for another reason.
    Refused,
    /// A membership change is still pending; a merge must wait until it applied.
    ConfChangePending,
    /// Its entry was applied before a restart, so its reply was lost with the process.
    AppliedBeforeRestart,
    /// A new leader overwrote its entry.
    Overwritten,
    /// The group holds too many bytes proposed and not yet committed
    /// (`StoreConfig::max_uncommitted_bytes`): retry once it has committed them.
    UncommittedLimit,
    /// A snapshot read met a one-phase commit in flight at or below its read
    /// timestamp (`TxnCmd::OnePhase`): retry once it has applied or been refused.
    CommitPending,
}

impl DropReason {
    /// The reason's code on the wire.
    pub fn code(self) -> u64 {
        match self {
            DropReason::Unspecified => 0,
            DropReason::NotAppended => 1,
            DropReason::LeadershipChanging => 2,
            DropReason::Refused => 3,
            DropReason::ConfChangePending => 4,
            DropReason::AppliedBeforeRestart => 5,
            DropReason::Overwritten => 6,
            DropReason::UncommittedLimit => 7,
            DropReason::CommitPending => 8,
        }
    }

    /// The reason with this code; an unknown code is `Unspecified`.
    pub fn from_code(code: u64) -> DropReason {
        match code {
            1 => DropReason::NotAppended,
            2 => DropReason::LeadershipChanging,
            3 => DropReason::Refused,
            4 => DropReason::ConfChangePending,
            5 => DropReason::AppliedBeforeRestart,
            6 => DropReason::Overwritten,
            7 => DropReason::UncommittedLimit,
            8 => DropReason::CommitPending,
            _ => DropReason::Unspecified,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Unspecified => "unspecified; see the store's log",
            DropReason::NotAppended => "raft-rs dropped the proposal",
            DropReason::LeadershipChanging => "proposal dropped (leadership changing)",
            DropReason::Refused => "proposal refused",
            DropReason::ConfChangePending => {
                "a membership change is pending; merge after it applied"
            }
            DropReason::AppliedBeforeRestart => "applied before a restart",
            DropReason::Overwritten => "its entry was overwritten by a new leader",
            DropReason::UncommittedLimit => {
                "too many bytes proposed and not yet committed; retry once they commit"
            }
            DropReason::CommitPending => {
                "a one-phase commit at or below the read timestamp is in flight; retry"
            }
        })
    }
}

/// Why a merge was rolled back ([`Error::MergeAborted`]). Code 0 is reserved: a code
/// this binary does not know (from a newer store) decodes as
/// [`MergeAbortReason::Unspecified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MergeAbortReason {
    /// No reason given, or one this binary does not know.
    Unspecified,
    /// A replica of the source did not get the prepare command in time.
    PrepareNotReplicated,
    /// The target changed (a split or a membership change) before the commit.
    TargetChanged,
}

impl MergeAbortReason {
    /// The reason's code on the wire.
    pub fn code(self) -> u64 {
        match self {
            MergeAbortReason::Unspecified => 0,
            MergeAbortReason::PrepareNotReplicated => 1,
            MergeAbortReason::TargetChanged => 2,
        }
    }

    /// The reason with this code; an unknown code is `Unspecified`.
    pub fn from_code(code: u64) -> MergeAbortReason {
        match code {
            1 => MergeAbortReason::PrepareNotReplicated,
            2 => MergeAbortReason::TargetChanged,
            _ => MergeAbortReason::Unspecified,
        }
    }
}

impl fmt::Display for MergeAbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MergeAbortReason::Unspecified => "unspecified; see the store's log",
            MergeAbortReason::PrepareNotReplicated => {
                "a source replica did not get the prepare command in time"
            }
            MergeAbortReason::TargetChanged => "the target changed (split or membership change)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_log_or_engine_is_shutdown_not_failure() {
        let engine = Error::Engine(regionkv_engine::Error::Closed);
        assert!(engine.is_cancelled() && !engine.is_store_failure());
        let wal = Error::Wal(regionkv_wal::Error::Closed);
        assert!(wal.is_cancelled() && !wal.is_store_failure());
        let poisoned = Error::Engine(regionkv_engine::Error::Poisoned { cause: "fsync".into() });
        assert!(!poisoned.is_cancelled() && poisoned.is_store_failure());
    }

    #[test]
    fn reasons_round_trip_through_their_codes_and_unknown_codes_are_unspecified() {
        for r in [
            DropReason::Unspecified,
            DropReason::NotAppended,
            DropReason::LeadershipChanging,
            DropReason::Refused,
            DropReason::ConfChangePending,
            DropReason::AppliedBeforeRestart,
            DropReason::Overwritten,
            DropReason::UncommittedLimit,
        ] {
            assert_eq!(DropReason::from_code(r.code()), r);
        }
        for r in [
            MergeAbortReason::Unspecified,
            MergeAbortReason::PrepareNotReplicated,
            MergeAbortReason::TargetChanged,
        ] {
            assert_eq!(MergeAbortReason::from_code(r.code()), r);
        }
        assert_eq!(DropReason::from_code(999), DropReason::Unspecified);
        assert_eq!(DropReason::from_code(u64::MAX), DropReason::Unspecified);
        assert_eq!(MergeAbortReason::from_code(3), MergeAbortReason::Unspecified);
    }
}
