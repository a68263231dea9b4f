//! Region metadata: ids, epochs, peers and key ranges.

use std::fmt;

/// The id of a region (one Raft group), unique in the cluster and never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RegionId(pub u64);

/// The id of a store (one process, one engine).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StoreId(pub u64);

/// The id of one replica of a region, unique in the cluster.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerId(pub u64);

/// One life of a store's disk: a random number written to the manifest when the store
/// is first opened, and never changed while the files last. A store id whose
/// incarnation changed lost its disk (wiped, or replaced): it must not take part under
/// its old peer ids (ARCHITECTURE.md, "Store identity").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Incarnation(pub u64);

macro_rules! id_fmt {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({})"), self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        impl From<u64> for $t {
            fn from(id: u64) -> $t {
                $t(id)
            }
        }
    )*};
}
id_fmt!(RegionId, StoreId, PeerId, Incarnation);

/// A region's epoch: `version` grows on every split and merge, `conf_ver` on every
/// membership change. A request routed with an older epoch is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Epoch {
    /// Bumped by split and merge.
    pub version: u64,
    /// Bumped by membership changes.
    pub conf_ver: u64,
}

impl Epoch {
    /// The epoch of a region created by bootstrap.
    pub const INITIAL: Epoch = Epoch { version: 1, conf_ver: 1 };

    /// True if `self` is at least as new as `other` in both components.
    pub fn covers(self, other: Epoch) -> bool {
        self.version >= other.version && self.conf_ver >= other.conf_ver
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(version {}, conf_ver {})", self.version, self.conf_ver)
    }
}

/// One replica of a region: which peer, on which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The replica's id.
    pub id: PeerId,
    /// The store that hosts it.
    pub store: StoreId,
}

/// A region: a contiguous key range `[start, end)` replicated by one Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// The region's id.
    pub id: RegionId,
    /// First key in the region (inclusive); empty for the first region.
    pub start: Vec<u8>,
    /// First key after the region (exclusive); `None` means unbounded.
    pub end: Option<Vec<u8>>,
    /// Split/merge and membership generation.
    pub epoch: Epoch,
    /// The replicas.
    pub peers: Vec<Peer>,
}

impl Region {
    /// A region over `[start, end)` with the initial epoch and no peers.
    pub fn new(id: RegionId, start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) -> Region {
        Region { id, start: start.into(), end, epoch: Epoch::INITIAL, peers: Vec::new() }
    }

    /// The region covering the whole key space.
    pub fn whole(id: RegionId) -> Region {
        Region::new(id, Vec::new(), None)
    }

    /// True if `key` is in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        in_range(key, &self.start, self.end.as_deref())
    }

    /// True if the range is not empty (`start < end`).
    pub fn is_valid_range(&self) -> bool {
        self.end.as_deref().is_none_or(|end| self.start.as_slice() < end)
    }
}

/// True if `key` is in `[start, end)`, where `end == None` is unbounded.
///
/// An empty `start` is tested by length, not compared: the empty start of the first
/// region is usually an unallocated `Vec` whose pointer is dangling, and glibc's
/// AVX-512 `memcmp` then takes a masked load from an unmapped page, a fault-suppression
/// assist of ~120-140 ns per call here (vs 4-9 ns against a real allocation), which made
/// checkpoint verification and load 5-7x slower than their checksums.
pub(crate) fn in_range(key: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    (start.is_empty() || key >= start) && end.is_none_or(|end| key < end)
}

/// The intersection of `[a_start, a_end)` and `[b_start, b_end)`, if not empty.
pub(crate) fn intersect<'a>(
    a: (&'a [u8], Option<&'a [u8]>),
    b: (&'a [u8], Option<&'a [u8]>),
) -> Option<(&'a [u8], Option<&'a [u8]>)> {
    let start = a.0.max(b.0);
    let end = match (a.1, b.1) {
        (None, e) | (e, None) => e,
        (Some(x), Some(y)) => Some(x.min(y)),
    };
    end.is_none_or(|end| start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = Region::new(RegionId(1), b"b".to_vec(), Some(b"d".to_vec()));
        assert!(!r.contains(b"a"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"c\xff"));
        assert!(!r.contains(b"d"));
        assert!(Region::whole(RegionId(2)).contains(b""));
        assert!(!Region::new(RegionId(3), b"b".to_vec(), Some(b"b".to_vec())).is_valid_range());
        assert_eq!(intersect((b"a", Some(b"c")), (b"b", None)), Some((&b"b"[..], Some(&b"c"[..]))));
        assert_eq!(intersect((b"a", Some(b"b")), (b"b", None)), None);
        assert_eq!(intersect((b"", None), (b"x", None)), Some((&b"x"[..], None)));
    }
}
