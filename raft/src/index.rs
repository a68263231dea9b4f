//! [`RaftIndex`]: a position in one region's Raft log, a type of its own so that it is
//! never mistaken for a WAL byte position (`Lsn`) or a term.

use std::fmt;

/// The index of an entry in one region's Raft log (raft-rs counts from 1; 0 is "none").
///
/// raft-rs hands indexes around as bare `u64`; the store wraps one where it leaves
/// raft-rs's own types, e.g. as the position of a region's ingest [`Timeline`]
/// (`regionkv_wal::Timeline<RaftIndex>`).
///
/// [`Timeline`]: regionkv_wal::Timeline
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RaftIndex(pub u64);

impl fmt::Display for RaftIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft index {}", self.0)
    }
}
