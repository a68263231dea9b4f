//! The Raft layer's error type and its classes.

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
        reason: &'static str,
    },
    /// The proposal was dropped (leadership changed, or its entry was overwritten)
    /// before it committed; its outcome is known: not applied. Retry.
    #[error("proposal to region {} dropped before commit ({reason}); retry", region.0)]
    Dropped {
        /// The region.
        region: RegionId,
        /// Why.
        reason: &'static str,
    },
    /// The store is shutting down; nothing was done.
    #[error("the store is shutting down")]
    Cancelled,
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
            | Error::Dropped { .. } => true,
            Error::RegionExists { .. }
            | Error::Cancelled
            | Error::Timeout { .. }
            | Error::Compacted { .. }
            | Error::EntryUnavailable { .. }
            | Error::LogCorruption { .. }
            | Error::Malformed(_)
            | Error::InvalidRequest(_)
            | Error::MergeAborted { .. }
            | Error::Wal(_)
            | Error::Engine(_)
            | Error::Raft(_)
            | Error::Internal(_) => false,
        }
    }

    /// True if the error comes from shutdown.
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::Wal(e) => e.is_cancelled(),
            _ => false,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
