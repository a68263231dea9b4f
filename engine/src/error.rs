//! The engine's error type, classified by the [`ErrorClass`] that the log crate defines
//! for every storage layer.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use regionkv_wal::ErrorClass;

use crate::region::{Epoch, Region, RegionId, StoreId};

/// What went wrong in the engine, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system call failed while reading (open, list, map). Nothing durable
    /// changed; the engine is unaffected.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The operation that failed, such as "open" or "map".
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk (or received from a peer) failed a check.
    #[error(
        "corrupt {file} at offset {offset}: {reason}; do not trust this file: restore the \
         region from a replica's checkpoint"
    )]
    Corruption {
        /// The damaged file, or a description of the stream it came from.
        file: PathBuf,
        /// Byte offset of the damage inside the file.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// A file was written by a newer format than this binary reads.
    #[error(
        "{file} has format version {found} and needs a reader of at least version {min_reader}, \
         but this binary reads up to version {supported}: run a newer regionkv"
    )]
    TooNew {
        /// The file.
        file: PathBuf,
        /// The format version in its header.
        found: u32,
        /// The oldest reader version the writer declared able to read it.
        min_reader: u32,
        /// The newest format this binary knows.
        supported: u32,
    },

    /// A durable write (fsync, rename, directory sync) failed earlier; the engine
    /// refuses every further change.
    ///
    /// An fsync error is never retried: the kernel may have dropped the dirty pages, so
    /// a retry could report success for data that is gone.
    #[error(
        "the engine failed earlier ({cause}) and accepts no more changes: drop it and reopen \
         the directory to recover from the last durable state"
    )]
    Poisoned {
        /// The failure that poisoned the engine.
        cause: Arc<str>,
    },

    /// The engine was closed.
    #[error("the engine is closed")]
    Closed,

    /// This store does not host the region.
    #[error("region {region} is not hosted by this store; refresh the routing table and retry")]
    RegionNotFound {
        /// The region asked for.
        region: RegionId,
    },

    /// The request was routed with an epoch that is not the region's current one.
    #[error(
        "region {region}: epoch {requested} does not match the current {}; refresh the region \
         and retry",
        current.first().map_or_else(|| "(unknown)".to_owned(), |r| r.epoch.to_string())
    )]
    EpochNotMatch {
        /// The region asked for.
        region: RegionId,
        /// The epoch the caller sent.
        requested: Epoch,
        /// The region as it is now (first), then its neighbours, so a router can refresh.
        current: Vec<Region>,
    },

    /// A key is outside the range of the region it was written to.
    #[error("key {key:?} is not in region {}; route it to the region that holds it", region.id)]
    KeyNotInRegion {
        /// The key.
        key: Vec<u8>,
        /// The region prepared for the write, as it was when prepared.
        region: Box<Region>,
    },

    /// A put or delete came before any `prepare_for_region` of the round.
    #[error("no region is prepared in this apply round: call prepare_for_region first")]
    NoRegionPrepared,

    /// A region that is not the current one was prepared again in the same round.
    ///
    /// A round prepares each region at most once, in turn; coming back to an earlier
    /// region means the caller lost track of its batch.
    #[error(
        "region {region} was already prepared earlier in this round and is not the current \
         region: finish the round first, then start a new one"
    )]
    RegionAlreadyPrepared {
        /// The region.
        region: RegionId,
    },

    /// A region is pinned by an open apply round and cannot be removed now.
    #[error("region {region} is pinned by {pins} open apply round(s); retry after they end")]
    RegionBusy {
        /// The region.
        region: RegionId,
        /// Rounds that hold it.
        pins: u32,
    },

    /// A region change would break the partition of the key space.
    #[error("region change rejected: {reason}")]
    RegionChange {
        /// Why the change is invalid.
        reason: RegionChangeError,
    },

    /// The directory belongs to another store.
    #[error("the directory belongs to store {found}, not {expected}: open the right directory")]
    StoreMismatch {
        /// The store id given in the options.
        expected: StoreId,
        /// The store id in the manifest.
        found: StoreId,
    },

    /// A key, value or batch exceeds a limit.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large: "key", "value", "round" or "checkpoint chunk".
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A checkpoint transfer received a chunk out of order.
    #[error("checkpoint chunk at offset {got} arrived, but offset {expected} was expected")]
    ChunkOutOfOrder {
        /// The offset the receiver needs next.
        expected: u64,
        /// The offset that came.
        got: u64,
    },

    /// The options passed to [`crate::Engine::open`] cannot work.
    #[error("invalid engine options: {0}")]
    InvalidOptions(String),
}

/// Why a change of the region map is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegionChangeError {
    /// A region's start is not below its end.
    #[error("region {region} has an empty range")]
    EmptyRange {
        /// The region.
        region: RegionId,
    },
    /// The region is not hosted by this store.
    #[error("region {region} is not hosted")]
    NotHosted {
        /// The region.
        region: RegionId,
    },
    /// A new region overlaps a hosted one.
    #[error("region {region} overlaps hosted region {existing}")]
    Overlap {
        /// The new region.
        region: RegionId,
        /// The hosted region it overlaps.
        existing: RegionId,
    },
    /// A region id is already used by a hosted region.
    #[error("region id {region} is already in use")]
    IdInUse {
        /// The id.
        region: RegionId,
    },
    /// Split keys are not strictly increasing inside the region, or do not match the ids.
    #[error("invalid split of region {region}: {reason}")]
    InvalidSplit {
        /// The region.
        region: RegionId,
        /// What is wrong.
        reason: &'static str,
    },
    /// Merge of two regions that are not neighbours (or the same region).
    #[error("regions {source_region} and {target} are not adjacent")]
    NotAdjacent {
        /// The region merged away.
        source_region: RegionId,
        /// The region that absorbs it.
        target: RegionId,
    },
    /// An epoch that does not advance.
    #[error("region {region}: new epoch {new} does not advance {old}")]
    StaleEpoch {
        /// The region.
        region: RegionId,
        /// Its current epoch.
        old: Epoch,
        /// The epoch offered.
        new: Epoch,
    },
    /// The map would not partition the key space (an internal check; a bug if seen).
    #[error("partition invariant broken: {0}")]
    Partition(&'static str),
}

impl Error {
    /// The class of this error. Exhaustive on purpose: a new variant must be classified.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::RegionNotFound { .. }
            | Error::EpochNotMatch { .. }
            | Error::KeyNotInRegion { .. }
            | Error::RegionBusy { .. } => ErrorClass::Retryable,
            Error::Closed => ErrorClass::Cancelled,
            Error::Corruption { .. } | Error::TooNew { .. } | Error::StoreMismatch { .. } => {
                ErrorClass::Corruption
            }
            Error::Poisoned { .. } => ErrorClass::Fatal,
            Error::NoRegionPrepared
            | Error::RegionAlreadyPrepared { .. }
            | Error::RegionChange { .. }
            | Error::TooLarge { .. }
            | Error::ChunkOutOfOrder { .. }
            | Error::InvalidOptions(_) => ErrorClass::InvalidInput,
            Error::Io { .. } => ErrorClass::Io,
        }
    }

    /// True if refreshing routing information and retrying can succeed.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// True if the error comes from the engine being closed.
    pub fn is_cancelled(&self) -> bool {
        self.class() == ErrorClass::Cancelled
    }

    /// True if the engine must be reopened.
    pub fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::Fatal
    }

    /// True if bytes on disk cannot be trusted or read.
    pub fn is_corruption(&self) -> bool {
        self.class() == ErrorClass::Corruption
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { op, path: path.into(), source }
    }

    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption { file: file.into(), offset, reason: reason.into() }
    }
}

impl From<RegionChangeError> for Error {
    fn from(reason: RegionChangeError) -> Self {
        Error::RegionChange { reason }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
