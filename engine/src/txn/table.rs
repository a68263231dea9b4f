//! A region's transaction state as tables ([`TxnTable`]): split by key, joined on a
//! merge, encoded into checkpoints; and a round's unpublished changes to it
//! ([`TxnOverlay`]).
//!
//! In a checkpoint the table is one nested header field (`checkpoint/format.rs`):
//!
//! ```text
//!  1 floor u64
//!  2 lock (nested, repeated, by key):              1 key, 2 entry bytes
//!  3 record (nested, repeated, by primary key, id): 1 primary key, 2 txn id u64,
//!                                                  3 entry bytes
//!  4 gc floor u64 (optional: absent = 0, never collected; written only when set)
//! ```
//!
//! Tag 4 is written only once a region collected versions, which needs cluster
//! version 4 (`TXN_V2`): every binary of such a cluster reads it. Unknown top-level
//! tags are skipped (a later optional field); the nested ones are still refused.
//!
//! Entries are copied byte for byte (each behind its own format byte): a checkpoint
//! never decodes them, so an entry too new for this binary moves like any other.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::TxnTable;
use crate::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use crate::region::in_range;

const T_FLOOR: u16 = 1;
const T_LOCK: u16 = 2;
const T_RECORD: u16 = 3;
const T_GC_FLOOR: u16 = 4;
const L_KEY: u16 = 1;
const L_ENTRY: u16 = 2;
const R_PRIMARY_KEY: u16 = 1;
const R_TXN_ID: u16 = 2;
const R_ENTRY: u16 = 3;

impl TxnTable {
    /// Locks held.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Up to `limit` locks with `start <= key < end` (`None`: no end), in key order.
    pub fn locks_in(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Bytes, Bytes)> {
        if end.is_some_and(|end| end <= start) {
            return Vec::new();
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        (self.locks.range::<[u8], _>((Bound::Included(start), upper)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The part of the table in `[start, end)`: locks by key, records by primary key;
    /// the floor stays (every part of a region inherits it).
    #[must_use]
    pub fn restricted(&self, start: &[u8], end: Option<&[u8]>) -> TxnTable {
        TxnTable {
            locks: (self.locks.iter())
                .filter(|(k, _)| in_range(k, start, end))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            records: (self.records.iter())
                .filter(|((k, _), _)| in_range(k, start, end))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            floor: self.floor,
            gc_floor: self.gc_floor,
        }
    }

    /// Moves the entries in `[start, end)` out into a table of their own, which gets a
    /// copy of the floor (a split: the child's range leaves the parent).
    #[must_use]
    pub fn take_range(&mut self, start: &[u8], end: Option<&[u8]>) -> TxnTable {
        let part = self.restricted(start, end);
        self.locks.retain(|k, _| !in_range(k, start, end));
        self.records.retain(|(k, _), _| !in_range(k, start, end));
        part
    }

    /// Joins `other` into this table (a merge of disjoint ranges, or the parts of one
    /// region's image): every entry, and the larger floor.
    pub fn join(&mut self, other: TxnTable) {
        self.locks.extend(other.locks);
        self.records.extend(other.records);
        self.floor = self.floor.max(other.floor);
        self.gc_floor = self.gc_floor.max(other.gc_floor);
    }

    /// Bytes the table takes in a checkpoint's header (see the module docs).
    pub fn encoded_len(&self) -> usize {
        const H: usize = codec::FIELD_HEADER_LEN;
        let locks: usize = self.locks.iter().map(|(k, v)| 3 * H + k.len() + v.len()).sum();
        let records: usize =
            self.records.iter().map(|((k, _), v)| 4 * H + 8 + k.len() + v.len()).sum();
        let gc_floor = if self.gc_floor > 0 { H + 8 } else { 0 };
        H + 8 + locks + records + gc_floor
    }

    /// Appends the table as TLV fields (see the module docs).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, T_FLOOR, self.floor);
        if self.gc_floor > 0 {
            codec::put_u64(out, T_GC_FLOOR, self.gc_floor);
        }
        for (key, entry) in &self.locks {
            codec::put_nested(out, T_LOCK, |out| {
                codec::put_field(out, L_KEY, key);
                codec::put_field(out, L_ENTRY, entry);
            });
        }
        for ((key, txn_id), entry) in &self.records {
            codec::put_nested(out, T_RECORD, |out| {
                codec::put_field(out, R_PRIMARY_KEY, key);
                codec::put_u64(out, R_TXN_ID, *txn_id);
                codec::put_field(out, R_ENTRY, entry);
            });
        }
    }

    /// Decodes what [`TxnTable::encode`] wrote; every key must be in `[start, end)`.
    /// Never panics.
    pub(crate) fn decode(buf: &[u8], start: &[u8], end: Option<&[u8]>) -> DecodeResult<TxnTable> {
        let tags = [T_FLOOR, T_LOCK, T_RECORD, T_GC_FLOOR];
        let rec = TlvRecord::parse(buf, &tags, UnknownTags::Skip)?;
        let mut table = TxnTable {
            floor: rec.required(T_FLOOR, "transaction floor missing")?.as_u64()?,
            gc_floor: rec.optional(T_GC_FLOOR)?.map(|f| f.as_u64()).transpose()?.unwrap_or(0),
            ..TxnTable::default()
        };
        for f in rec.repeated(T_LOCK) {
            let at = |e: DecodeError| e.shifted(f.offset);
            let l =
                TlvRecord::parse(f.value, &[L_KEY, L_ENTRY], UnknownTags::Reject).map_err(at)?;
            let key = l.required(L_KEY, "lock key missing").map_err(at)?.value;
            let entry = l.required(L_ENTRY, "lock entry missing").map_err(at)?.value;
            if !in_range(key, start, end) {
                return Err(DecodeError::new(f.offset, "a lock outside the region"));
            }
            if table
                .locks
                .insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(entry))
                .is_some()
            {
                return Err(DecodeError::new(f.offset, "a key is locked twice"));
            }
        }
        for f in rec.repeated(T_RECORD) {
            let at = |e: DecodeError| e.shifted(f.offset);
            let r =
                TlvRecord::parse(f.value, &[R_PRIMARY_KEY, R_TXN_ID, R_ENTRY], UnknownTags::Reject)
                    .map_err(at)?;
            let key = r.required(R_PRIMARY_KEY, "record primary key missing").map_err(at)?.value;
            let txn_id = r
                .required(R_TXN_ID, "record txn id missing")
                .and_then(|v| v.as_u64())
                .map_err(at)?;
            let entry = r.required(R_ENTRY, "record entry missing").map_err(at)?.value;
            if !in_range(key, start, end) {
                return Err(DecodeError::new(f.offset, "a record outside the region"));
            }
            let id = (Bytes::copy_from_slice(key), txn_id);
            if table.records.insert(id, Bytes::copy_from_slice(entry)).is_some() {
                return Err(DecodeError::new(f.offset, "a record is listed twice"));
            }
        }
        Ok(table)
    }
}

/// A round's changes to one region's transaction state, published when the round
/// commits (after its data) and dropped with it otherwise. `None` removes.
#[derive(Clone, Debug, Default)]
pub(crate) struct TxnOverlay {
    pub locks: BTreeMap<Bytes, Option<Bytes>>,
    pub records: BTreeMap<(Bytes, u64), Option<Bytes>>,
    /// The floor raised to (never lower than the table's).
    pub floor: Option<u64>,
    /// The version GC's floor raised to (published BEFORE the round's data).
    pub gc_floor: Option<u64>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    fn table() -> TxnTable {
        let mut t = TxnTable { floor: 9, ..TxnTable::default() };
        for k in [&b"a"[..], b"f", b"m", b"x"] {
            t.locks.insert(b(k), b(&[1, k[0]]));
            t.records.insert((b(k), u64::from(k[0])), b(&[1, 7]));
        }
        t
    }

    #[test]
    fn take_range_partitions_and_join_restores() {
        let mut t = table();
        let right = t.take_range(b"g", None);
        assert_eq!(t.locks.keys().collect::<Vec<_>>(), [&b(b"a"), &b(b"f")]);
        assert_eq!(right.locks.keys().collect::<Vec<_>>(), [&b(b"m"), &b(b"x")]);
        assert_eq!(right.records.len(), 2);
        assert_eq!((t.floor, right.floor), (9, 9), "each part inherits the floor");
        let mut right = right;
        right.floor = 11;
        right.gc_floor = 5;
        t.gc_floor = 3;
        t.join(right);
        assert_eq!(
            t,
            TxnTable { floor: 11, gc_floor: 5, ..table() },
            "the floors of a join are the max"
        );
        assert_eq!(t.restricted(b"a", None).gc_floor, 5, "a part keeps the gc floor");
        assert_eq!(t.locks_in(b"b", Some(b"x"), 10).len(), 2);
        assert_eq!(t.locks_in(b"b", Some(b"x"), 1)[0].0, b(b"f"));
        assert!(t.locks_in(b"x", Some(b"b"), 10).is_empty());
    }

    #[test]
    fn the_table_round_trips_and_keys_outside_the_range_are_corrupt() {
        let t = table();
        let mut buf = Vec::new();
        t.encode(&mut buf);
        assert_eq!(buf.len(), t.encoded_len());
        assert_eq!(TxnTable::decode(&buf, b"", None), Ok(t.clone()));
        assert!(TxnTable::decode(&buf, b"b", None).is_err());
        // A GC floor: one optional field more; absent (0) it is not written at all.
        let gc = TxnTable { gc_floor: 77, ..t.clone() };
        let mut with = Vec::new();
        gc.encode(&mut with);
        assert_eq!(with.len(), gc.encoded_len());
        assert_eq!(with.len(), buf.len() + codec::FIELD_HEADER_LEN + 8);
        // Golden bytes: right after the floor, tag 4 (u16 LE), length 8 (u32 LE), u64 LE.
        assert_eq!(with[14..28], [4, 0, 8, 0, 0, 0, 77, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(with[..14], buf[..14]);
        assert_eq!(with[28..], buf[14..]);
        assert_eq!(TxnTable::decode(&with, b"", None), Ok(gc));
        // A later top-level field is skipped; the parse goes on.
        let mut later = Vec::new();
        codec::put_field(&mut later, 99, b"from a newer writer");
        later.extend_from_slice(&buf);
        assert_eq!(TxnTable::decode(&later, b"", None), Ok(t));
        assert!(TxnTable::decode(&buf, b"", Some(b"x")).is_err());
    }

    proptest! {
        #[test]
        fn damaged_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TxnTable::decode(&bytes, b"", None);
            let mut buf = Vec::new();
            table().encode(&mut buf);
            for cut in 0..buf.len() {
                let _ = TxnTable::decode(&buf[..cut], b"", None);
            }
        }
    }
}
