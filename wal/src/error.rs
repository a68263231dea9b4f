//! The log's error type, and the [`ErrorClass`] that every storage layer classifies its
//! errors by.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::lsn::{Lsn, SegmentId};

/// What went wrong in the log, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system call failed outside the write path (open, read, purge).
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The operation that failed, such as "read" or "rename".
        op: &'static str,
        /// The file or directory it failed on.
        path: PathBuf,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk that the log needs are damaged.
    #[error(
        "corrupt log in segment {segment} at offset {offset}: {reason}; the data there cannot be \
         trusted: restore this store from a replica or a backup (or, if the damage is beyond \
         every acknowledged write, open with RecoveryMode::PointInTime)"
    )]
    Corruption {
        /// The segment holding the damage.
        segment: SegmentId,
        /// Byte offset of the damaged record inside the segment file.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// This append may or may not be durable: the log failed while writing or syncing it.
    ///
    /// The log is now poisoned. Reopen it (which recovers from what is on disk) and look
    /// for the record before deciding to write it again.
    #[error(
        "the outcome of this append is unknown: the log failed while writing it ({cause}); \
         reopen the log and check whether the record is present"
    )]
    Indeterminate {
        /// The I/O failure that poisoned the log.
        cause: Arc<str>,
    },

    /// The log failed earlier (an fsync or write error) and refuses all further writes.
    ///
    /// An fsync error is never retried: the kernel may have dropped the dirty pages, so
    /// a retry could report success for data that is gone (`PostgreSQL`'s fsyncgate).
    #[error(
        "the log failed earlier ({cause}) and accepts no more writes: drop every handle and \
         reopen the directory to recover"
    )]
    Poisoned {
        /// The I/O failure that poisoned the log.
        cause: Arc<str>,
    },

    /// The log was closed; nothing was written.
    #[error("the log is closed; nothing was written")]
    Closed,

    /// A record is larger than a segment can hold.
    #[error(
        "a record of {len} bytes exceeds the largest this log takes ({max} bytes): split it, or \
         use larger segments"
    )]
    RecordTooLarge {
        /// The record's payload length.
        len: usize,
        /// The largest payload a segment of the configured size can hold.
        max: usize,
    },

    /// A read asked for a position that is not in the readable log.
    #[error(
        "lsn {lsn} is outside the readable log [{first}, {end}); it was purged or not yet written"
    )]
    LsnOutOfRange {
        /// The position asked for.
        lsn: Lsn,
        /// The first position still in the log.
        first: Lsn,
        /// One past the last durable position.
        end: Lsn,
    },

    /// No record starts at this position (it is in the log, but not a record's Lsn).
    #[error("no record starts at lsn {lsn}; Lsns come from append or from iteration")]
    NoRecord {
        /// The position asked for.
        lsn: Lsn,
    },

    /// A segment was written by a newer format than this binary reads.
    #[error(
        "segment {segment} has format version {found}, but this binary reads versions up to \
         {supported}: run a newer regionkv"
    )]
    UnsupportedFormat {
        /// The segment with the unknown format.
        segment: SegmentId,
        /// The version found in its header.
        found: u32,
        /// The newest version this binary reads.
        supported: u32,
    },

    /// [`crate::RecoveryMode::AbsoluteConsistency`] was asked for, but the log does not
    /// end with the seal that a clean close writes.
    #[error(
        "the log was not closed cleanly (no seal at its end, segment {segment} offset {offset}); \
         open it with RecoveryMode::TolerateTornTail"
    )]
    NotCleanlyClosed {
        /// The last segment.
        segment: SegmentId,
        /// Where the log ends.
        offset: u64,
    },

    /// The options passed to [`crate::Wal::open`] cannot work together.
    #[error("invalid log options: {0}")]
    InvalidOptions(String),
}

/// What a caller can do about an error. One classification for the storage layers: the
/// log's [`Error::class`] and the engine's both answer with it, so callers classify
/// alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Routing information is stale or a resource is busy: refresh and retry. The log
    /// itself never says so.
    Retryable,
    /// The component is shutting down or shut down: not a failure of the data.
    Cancelled,
    /// Damage on disk or an unreadable format: stop and repair (restore, or for the log
    /// a more tolerant recovery mode).
    Corruption,
    /// The component failed: reopen it; the outcome of writes in flight is unknown.
    Fatal,
    /// The caller asked for something impossible; fix the call.
    InvalidInput,
    /// An I/O error outside the write path; durable state is unaffected.
    Io,
}

impl Error {
    /// The class of this error. Exhaustive on purpose: a new variant must be classified.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Closed => ErrorClass::Cancelled,
            Error::Corruption { .. }
            | Error::UnsupportedFormat { .. }
            | Error::NotCleanlyClosed { .. } => ErrorClass::Corruption,
            Error::Indeterminate { .. } | Error::Poisoned { .. } => ErrorClass::Fatal,
            Error::RecordTooLarge { .. }
            | Error::LsnOutOfRange { .. }
            | Error::NoRecord { .. }
            | Error::InvalidOptions(_) => ErrorClass::InvalidInput,
            Error::Io { .. } => ErrorClass::Io,
        }
    }

    /// True if the error comes from the log being shut down.
    pub fn is_cancelled(&self) -> bool {
        self.class() == ErrorClass::Cancelled
    }

    /// True if the outcome of the write is unknown or the log refuses writes.
    pub fn is_fatal(&self) -> bool {
        self.class() == ErrorClass::Fatal
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { op, path: path.into(), source }
    }

    pub(crate) fn corruption(segment: SegmentId, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption { segment, offset, reason: reason.into() }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
