//! Duplication's verify: a fingerprint of one key range of one replica's image, at a
//! known applied index, with the replica's duplication and sink state as of that same
//! index (ARCHITECTURE.md, "Duplication: verify and cutover").
//!
//! The replica's poller hands out, between rounds, a pinned read view together with
//! the applied index and both tables ([`Store::region_view`](crate::Store::region_view)):
//! nothing applies between the three, so the data, the source's `confirmed` and the
//! follower's marks are all as of one index. The hash runs on the caller's thread over
//! the pinned view (the poller is not held).
//!
//! The fingerprint is 64-bit FNV-1a over, in order:
//!
//! ```text
//!  | version u8 = 1 | per live pair in key order, within [start, end),               |
//!  |   the transactional keyspace (first byte 0xFE) left out:                         |
//!  |   key (u64 length, bytes), value (u64 length, bytes)                             |
//! ```
//!
//! Integers are little-endian. It depends on the pairs only (not on the region, its
//! epoch nor the cluster), so two clusters whose regions are cut differently compare
//! one range by combining their regions' fingerprints in key order
//! ([`RangeHasher`] takes the pairs of consecutive views). Fixed: a test pins a value.

use regionkv_engine::dup::DupTable;
use regionkv_engine::sink::SinkTable;
use regionkv_engine::{ReadView, Region};

/// A key range: its first key, and the key past it (`None`: unbounded).
pub type KeyRange = (Vec<u8>, Option<Vec<u8>>);

/// The first byte hashed: the layout's version.
pub const FINGERPRINT_VERSION: u8 = 1;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const TXN_KEYSPACE: u8 = 0xFE;

/// A range's fingerprint, fed view by view in key order.
#[derive(Clone, Debug)]
pub struct RangeHasher {
    hash: u64,
    pairs: u64,
}

impl Default for RangeHasher {
    fn default() -> Self {
        let mut h = RangeHasher { hash: FNV_OFFSET, pairs: 0 };
        h.bytes(&[FINGERPRINT_VERSION]);
        h
    }
}

impl RangeHasher {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
    }

    fn field(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_le_bytes());
        self.bytes(bytes);
    }

    /// Feeds one pair (pairs must come in key order).
    pub fn pair(&mut self, key: &[u8], value: &[u8]) {
        if key.first() == Some(&TXN_KEYSPACE) {
            return;
        }
        self.field(key);
        self.field(value);
        self.pairs += 1;
    }

    /// Feeds every live pair of `view` in `[start, end)`.
    pub fn view(&mut self, view: &ReadView, start: &[u8], end: Option<&[u8]>) {
        view.for_each(start, end, |k, v| {
            self.pair(k, v);
            true
        });
    }

    /// The fingerprint: (hash, pairs hashed).
    pub fn finish(&self) -> Fingerprint {
        Fingerprint { hash: self.hash, pairs: self.pairs }
    }
}

/// A range's fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// 64-bit FNV-1a (see the module docs).
    pub hash: u64,
    /// The pairs hashed.
    pub pairs: u64,
}

/// One replica's region as of one applied index: a pinned view of its data, and its
/// duplication and sink state as of the same index.
pub struct RegionView {
    /// The region as the replica holds it.
    pub region: Region,
    /// The replica's applied index: the view holds every entry up to it, none after.
    pub applied: u64,
    /// True if the replica leads the region.
    pub leader: bool,
    /// The pinned data (the whole engine's; read only the region's keys).
    pub view: ReadView,
    /// The region's duplication state (source side).
    pub dups: Option<DupTable>,
    /// The region's sink state (follower side).
    pub sinks: Option<SinkTable>,
}

/// A [`RegionView`] fingerprinted over one range: what a verify compares.
#[derive(Clone, Debug)]
pub struct RegionFingerprint {
    /// The region as the replica holds it.
    pub region: Region,
    /// The replica's applied index: the fingerprint is of the data as of it.
    pub applied: u64,
    /// True if the replica leads the region.
    pub leader: bool,
    /// The fingerprint of each range asked for, cut to the region, in order.
    pub fingerprints: Vec<Fingerprint>,
    /// The region's duplication state as of `applied` (source side).
    pub dups: Option<DupTable>,
    /// The region's sink state as of `applied` (follower side).
    pub sinks: Option<SinkTable>,
}

impl RegionView {
    /// Fingerprints each of `ranges` cut to the region, and drops the view.
    pub fn fingerprinted(self, ranges: &[KeyRange]) -> RegionFingerprint {
        let fingerprints = ranges.iter().map(|(s, e)| self.fingerprint(s, e.as_deref())).collect();
        RegionFingerprint {
            region: self.region,
            applied: self.applied,
            leader: self.leader,
            fingerprints,
            dups: self.dups,
            sinks: self.sinks,
        }
    }

    /// The fingerprint of `[start, end)` cut to the region.
    pub fn fingerprint(&self, start: &[u8], end: Option<&[u8]>) -> Fingerprint {
        let mut h = RangeHasher::default();
        let (start, end) = self.clip(start, end);
        h.view(&self.view, start, end);
        h.finish()
    }

    /// `[start, end)` cut to the region (possibly empty: `start >= end`).
    pub fn clip<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> (&'a [u8], Option<&'a [u8]>) {
        let start = start.max(self.region.start.as_slice());
        let end = match (end, self.region.end.as_deref()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_pinned_and_leaves_the_transactional_keyspace_out() {
        let mut h = RangeHasher::default();
        h.pair(b"a", b"1");
        h.pair(b"b", b"");
        let fp = h.finish();
        assert_eq!(fp.pairs, 2);
        // Computed by hand from the layout (an independent FNV-1a), not read back.
        assert_eq!(fp.hash, 0xfe4d_7044_68fb_c82d, "the layout is fixed: {:#x}", fp.hash);
        h.pair(&[0xFE, 1], b"x");
        assert_eq!(h.finish(), fp);
        // Lengths keep ("ab", "c") apart from ("a", "bc").
        let mut x = RangeHasher::default();
        x.pair(b"ab", b"c");
        let mut y = RangeHasher::default();
        y.pair(b"a", b"bc");
        assert_ne!(x.finish().hash, y.finish().hash);
    }
}
