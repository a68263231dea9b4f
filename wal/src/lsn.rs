//! Positions in the log.

use std::fmt;

/// A log sequence number: the position of a record in the log's logical byte stream.
///
/// Lsns grow monotonically across segments and never repeat, even after a segment file
/// is recycled. The Lsn of a record is the logical position of its header, so the Lsn
/// of the next record is `lsn + header + payload`. An Lsn handed out by [`crate::Wal`]
/// always names a record boundary; any other value is not a record.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position of the first record of a new log.
    pub const ZERO: Lsn = Lsn(0);

    /// The position `bytes` further on.
    #[must_use]
    pub fn advance(self, bytes: u64) -> Lsn {
        Lsn(self.0 + bytes)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({})", self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of a segment file; ids of live segments are consecutive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SegmentId(pub u64);

impl SegmentId {
    /// The id that follows this one.
    #[must_use]
    pub fn next(self) -> SegmentId {
        SegmentId(self.0 + 1)
    }
}

impl fmt::Debug for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentId({})", self.0)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
