//! A hasher for maps keyed by small integer ids ([`RegionId`](crate::RegionId),
//! [`PeerId`](crate::PeerId), [`StoreId`](crate::StoreId)): one multiply per id instead
//! of the default hasher's rounds (`SipHash`).
//!
//! A store looks regions up by id many times per write (the core's replica table, the
//! log's region table, the engine's region map); with 10,000 regions written at random
//! the default hasher (`SipHash`) showed in every profile (ARCHITECTURE.md, "Many regions"). Ids
//! are allocated by the cluster, never chosen by a client, so a hash an adversary could
//! collide is no concern here.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Odd constant with well-spread bits (2^64 divided by the golden ratio): multiplying
/// by it is a bijection that moves every input bit into the high bits, which the hash
/// table's control bytes use, while sequential ids keep distinct low bits (buckets).
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The hasher: `(state rotl 5 ^ word) * SEED` per word written.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// Builds [`IdHasher`]s.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;
/// A `HashMap` keyed by an id.
pub type IdHashMap<K, V> = HashMap<K, V, IdBuildHasher>;
/// A `HashSet` of ids.
pub type IdHashSet<K> = HashSet<K, IdBuildHasher>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use crate::RegionId;

    /// Sequential ids, the common case, spread over low bits (buckets) and over the top
    /// seven bits (the table's control bytes) alike.
    #[test]
    fn sequential_ids_spread() {
        let build = IdBuildHasher::default();
        let hashes: Vec<u64> = (1000..1000 + 4096).map(|i| build.hash_one(RegionId(i))).collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        assert_eq!(low.len(), 4096, "sequential ids take distinct buckets");
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(top.len(), 128, "every control byte value is used");
        let mut map: IdHashMap<RegionId, u64> = IdHashMap::default();
        for i in 0..10_000 {
            map.insert(RegionId(i), i);
        }
        assert!((0..10_000).all(|i| map[&RegionId(i)] == i));
    }
}
