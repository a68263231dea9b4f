//! The hash of a replica's image of its region (the `ComputeHash` admin command,
//! ARCHITECTURE.md "Regions"): every replica computes it at the same Raft index, so two
//! replicas that report different hashes at one index hold different data.
//!
//! The hash is 64-bit FNV-1a over, in order:
//!
//! ```text
//!  | version u8 = 1 | region id u64 | start (u64 length, bytes)                  |
//!  | end: u8 0 (unbounded) or 1, then (u64 length, bytes)                        |
//!  | epoch version u64 | epoch conf_ver u64                                      |
//!  | per live pair in key order: key (u64 length, bytes), value (u64 length, bytes) |
//!  | only if the region holds transaction state (a lock, a record or a floor):     |
//!  |   marker u64 = u64::MAX (no key is that long) | txn layout version u8 = 1   |
//!  |   floor u64 | lock count u64 | per lock in key order: key, stored bytes     |
//!  |   record count u64 | per record in (primary key, txn id) order:            |
//!  |     primary key, txn id u64, stored bytes      (each "key"/"bytes": u64 length, bytes) |
//! ```
//!
//! Integers are little-endian. Lengths keep `("ab", "c")` apart from `("a", "bc")`.
//! Locks and records are hashed as the engine stores them (encoded), so two replicas
//! whose transaction state differs in any byte (a lock one holds and the other does
//! not, a record decided on one only) are told apart, a frozen entry included. A
//! region without transaction state hashes exactly as before the section existed:
//! replicas of binaries from before transactions still agree with this one there
//! (and no region of a cluster below the transactions' version holds any).
//! The function and its layout are fixed (a test pins a value): a release that changed
//! them would report every replica of a mixed cluster as diverged, so a change needs a
//! new version byte, and replicas compare hashes of one version only.

use regionkv_engine::txn::TxnTable;
use regionkv_engine::{ReadView, Region};

/// The first byte hashed: the layout's version.
pub const IMAGE_HASH_VERSION: u8 = 1;

/// The version byte of the transaction section (after its marker).
pub const IMAGE_HASH_TXN_VERSION: u8 = 1;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a, fed in pieces.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.bytes(bytes);
    }
}

/// The hash of `region`'s range and epoch, of every live pair of `view` in the
/// range, and of the region's transaction state `txn` (as published with `view`).
pub fn region_image_hash(view: &ReadView, region: &Region, txn: &TxnTable) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    hash_header(&mut h, region);
    view.for_each(&region.start, region.end.as_deref(), |key, value| {
        h.field(key);
        h.field(value);
        true
    });
    hash_txn(&mut h, txn);
    h.0
}

/// The transaction section, if there is transaction state (see the module docs).
fn hash_txn(h: &mut Fnv, txn: &TxnTable) {
    if txn.is_empty() {
        return;
    }
    h.u64(u64::MAX);
    h.bytes(&[IMAGE_HASH_TXN_VERSION]);
    h.u64(txn.floor);
    h.u64(txn.locks.len() as u64);
    for (key, lock) in &txn.locks {
        h.field(key);
        h.field(lock);
    }
    h.u64(txn.records.len() as u64);
    for ((primary_key, txn_id), record) in &txn.records {
        h.field(primary_key);
        h.u64(*txn_id);
        h.field(record);
    }
    // The version GC floor, once set (a table without one hashes as before).
    if txn.gc_floor > 0 {
        h.u64(txn.gc_floor);
    }
}

fn hash_header(h: &mut Fnv, region: &Region) {
    h.bytes(&[IMAGE_HASH_VERSION]);
    h.u64(region.id.0);
    h.field(&region.start);
    match &region.end {
        None => h.bytes(&[0]),
        Some(end) => {
            h.bytes(&[1]);
            h.field(end);
        }
    }
    h.u64(region.epoch.version);
    h.u64(region.epoch.conf_ver);
}

/// [`region_image_hash`] of `pairs` (sorted by key, all inside the region): the same
/// value the engine's view gives for the same pairs.
pub fn hash_of_pairs<'a>(
    region: &Region,
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    hash_header(&mut h, region);
    for (key, value) in pairs {
        h.field(key);
        h.field(value);
    }
    h.0
}

/// [`hash_of_pairs`] of a region that also holds transaction state `txn`.
pub fn hash_of_pairs_and_txn<'a>(
    region: &Region,
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    txn: &TxnTable,
) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    hash_header(&mut h, region);
    for (key, value) in pairs {
        h.field(key);
        h.field(value);
    }
    hash_txn(&mut h, txn);
    h.0
}

#[cfg(test)]
mod tests {
    use regionkv_engine::{Epoch, RegionId};

    use super::*;

    fn region(end: Option<&[u8]>) -> Region {
        Region {
            id: RegionId(7),
            start: b"a".to_vec(),
            end: end.map(<[u8]>::to_vec),
            epoch: Epoch { version: 2, conf_ver: 3 },
            peers: Vec::new(),
        }
    }

    #[test]
    fn fnv_is_the_published_function() {
        // FNV-1a 64 of "a" and of "foobar", the function's reference values.
        let mut h = Fnv(FNV_OFFSET);
        h.bytes(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv(FNV_OFFSET);
        h.bytes(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_layout_is_pinned() {
        // A change of this value changes what every replica reports: see the module.
        // (Computed independently from the layout in the module doc.)
        let pairs: [(&[u8], &[u8]); 2] = [(b"k1", b"v1"), (b"k2", b"")];
        assert_eq!(hash_of_pairs(&region(Some(b"z")), pairs), 0xbbe7_6c87_6d71_efea);
    }

    #[test]
    fn lengths_range_and_epoch_all_count() {
        let r = region(None);
        let one: [(&[u8], &[u8]); 1] = [(b"ab", b"c")];
        let other: [(&[u8], &[u8]); 1] = [(b"a", b"bc")];
        assert_ne!(hash_of_pairs(&r, one), hash_of_pairs(&r, other));
        assert_ne!(hash_of_pairs(&r, one), hash_of_pairs(&region(Some(b"z")), one));
        let mut newer = r.clone();
        newer.epoch.version += 1;
        assert_ne!(hash_of_pairs(&r, one), hash_of_pairs(&newer, one));
        assert_ne!(hash_of_pairs(&r, []), hash_of_pairs(&r, one));
    }

    #[test]
    fn transaction_state_counts_and_its_absence_keeps_the_pinned_value() {
        use bytes::Bytes;
        let r = region(Some(b"z"));
        let pairs: [(&[u8], &[u8]); 2] = [(b"k1", b"v1"), (b"k2", b"")];
        // No transaction state: the value pinned before the section existed.
        let none = TxnTable::default();
        assert_eq!(hash_of_pairs_and_txn(&r, pairs, &none), 0xbbe7_6c87_6d71_efea);
        let mut lock = TxnTable::default();
        lock.locks.insert(Bytes::from_static(b"k1"), Bytes::from_static(b"\x01lock"));
        let with_lock = hash_of_pairs_and_txn(&r, pairs, &lock);
        assert_ne!(with_lock, hash_of_pairs(&r, pairs), "a lock only one replica holds");
        let mut other = lock.clone();
        other.locks.insert(Bytes::from_static(b"k1"), Bytes::from_static(b"\x01lock2"));
        assert_ne!(hash_of_pairs_and_txn(&r, pairs, &other), with_lock, "a lock's bytes");
        let mut moved = TxnTable::default();
        moved.locks.insert(Bytes::from_static(b"k2"), Bytes::from_static(b"\x01lock"));
        assert_ne!(hash_of_pairs_and_txn(&r, pairs, &moved), with_lock, "a lock's key");
        let mut record = TxnTable::default();
        record.records.insert((Bytes::from_static(b"k1"), 5), Bytes::from_static(b"\x01rec"));
        let mut record6 = TxnTable::default();
        record6.records.insert((Bytes::from_static(b"k1"), 6), Bytes::from_static(b"\x01rec"));
        assert_ne!(
            hash_of_pairs_and_txn(&r, pairs, &record),
            hash_of_pairs_and_txn(&r, pairs, &record6)
        );
        let floor = TxnTable { floor: 3, ..TxnTable::default() };
        assert_ne!(hash_of_pairs_and_txn(&r, pairs, &floor), hash_of_pairs(&r, pairs));
    }
}
