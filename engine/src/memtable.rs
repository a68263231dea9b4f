//! The MVCC memtable: one concurrent ordered map for every region of a store.
//!
//! Each version of a key is one entry of a lock-free skip list (crossbeam-skiplist),
//! ordered by user key ascending, then sequence number descending, so the newest
//! version of a key comes first and a point read at snapshot `s` is one seek to
//! `(key, s)`. An entry is a single heap allocation holding the key, the value and
//! the sequence number, which keeps the per-key overhead to the skip-list node, one
//! allocation header and 12 bytes of framing:
//!
//! ```text
//!  0                    8            12           12+klen
//!  +--------------------+------------+------------+-------------+
//!  | seq << 8 | kind    | klen       | key        | value       |
//!  | u64 LE             | u32 LE     | klen bytes | rest        |
//!  +--------------------+------------+------------+-------------+
//!  kind: 1 = put, 2 = delete (tombstone, no value), 0xff = search key only
//! ```
//!
//! Splits and merges move no data: regions are ranges over this one map.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;
use crossbeam_skiplist::map::Entry;

use crate::region::in_range;

/// Bytes of framing in front of every key.
pub(crate) const ENTRY_HEADER_LEN: usize = 12;
/// Largest sequence number: 56 bits, the low byte of the word holds the kind.
pub const MAX_SEQ: u64 = (1 << 56) - 1;
/// Estimated bytes per entry beyond the encoded entry itself: the skip-list node (16
/// bytes of key handle, 8 of reference count, 2 tower pointers on average: a 48-byte
/// allocation) and the allocator's headers and rounding of both allocations. Calibrated
/// against `regionkv bench engine`, which measured 82 resident bytes per key beyond
/// key and value (this charge: 72 + the 12-byte entry header = 84).
pub const ENTRY_OVERHEAD_BYTES: u64 = 72;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_SEARCH: u8 = 0xff;

/// A sequence number: the position of a committed round in the engine's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// One encoded version of a key; the skip list's key type.
#[derive(Debug)]
pub(crate) struct EntryKey(Box<[u8]>);

impl EntryKey {
    fn encode(kind: u8, seq: u64, key: &[u8], value: &[u8]) -> EntryKey {
        let mut buf = Vec::with_capacity(ENTRY_HEADER_LEN + key.len() + value.len());
        buf.extend_from_slice(&((seq << 8) | u64::from(kind)).to_le_bytes());
        // Keys are bounded by MAX_KEY_BYTES, far below 4 GiB.
        buf.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        EntryKey(buf.into_boxed_slice())
    }

    /// A put of `key = value`, sequence number to be set at commit.
    pub fn put(key: &[u8], value: &[u8]) -> EntryKey {
        EntryKey::encode(KIND_PUT, 0, key, value)
    }

    /// A tombstone for `key`, sequence number to be set at commit.
    pub fn delete(key: &[u8]) -> EntryKey {
        EntryKey::encode(KIND_DELETE, 0, key, &[])
    }

    /// The position of the newest version of `key` visible at `seq`.
    fn search(key: &[u8], seq: u64) -> EntryKey {
        EntryKey::encode(KIND_SEARCH, seq, key, &[])
    }

    fn word(&self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(a)
    }

    fn key_len(&self) -> usize {
        u32::from_le_bytes([self.0[8], self.0[9], self.0[10], self.0[11]]) as usize
    }

    pub fn seq(&self) -> u64 {
        self.word() >> 8
    }

    pub fn set_seq(&mut self, seq: u64) {
        let word = (seq << 8) | u64::from(self.kind_byte());
        self.0[..8].copy_from_slice(&word.to_le_bytes());
    }

    fn kind_byte(&self) -> u8 {
        self.0[0]
    }

    pub fn is_delete(&self) -> bool {
        self.kind_byte() == KIND_DELETE
    }

    pub fn key(&self) -> &[u8] {
        &self.0[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + self.key_len()]
    }

    pub fn value(&self) -> &[u8] {
        &self.0[ENTRY_HEADER_LEN + self.key_len()..]
    }

    /// Bytes charged to the memory account for this entry.
    pub fn charge(&self) -> u64 {
        self.0.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

impl PartialEq for EntryKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for EntryKey {}

impl PartialOrd for EntryKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntryKey {
    /// User key ascending, then sequence number (and kind) descending.
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key()).then_with(|| other.word().cmp(&self.word()))
    }
}

/// What a read found for a key at a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Value(Bytes),
    Deleted,
    Missing,
}

/// The concurrent MVCC map.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    map: SkipMap<EntryKey, ()>,
    /// Sum of [`EntryKey::charge`] over every entry.
    bytes: AtomicU64,
}

impl Memtable {
    pub fn new() -> Memtable {
        Memtable::default()
    }

    /// Bytes charged for every entry.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of entries (versions and tombstones).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Inserts one version. Sequence numbers are unique per write, so it never
    /// replaces an entry.
    pub fn insert(&self, entry: EntryKey) -> Entry<'_, EntryKey, ()> {
        self.account(entry.charge().cast_signed());
        self.map.insert(entry, ())
    }

    fn account(&self, delta: i64) {
        if delta >= 0 {
            self.bytes.fetch_add(delta.cast_unsigned(), AtomicOrdering::Relaxed);
        } else {
            self.bytes.fetch_sub(delta.unsigned_abs(), AtomicOrdering::Relaxed);
        }
    }

    /// The newest version of `key` at `seq` or below.
    pub fn get(&self, key: &[u8], seq: u64) -> Found {
        let search = EntryKey::search(key, seq);
        match self.map.lower_bound(Bound::Included(&search)) {
            Some(e) if e.key().key() == key => {
                if e.key().is_delete() {
                    Found::Deleted
                } else {
                    Found::Value(Bytes::copy_from_slice(e.key().value()))
                }
            }
            _ => Found::Missing,
        }
    }

    /// The first entry at or after `(key, seq)`.
    fn seek(&self, key: &[u8], seq: u64) -> Option<Entry<'_, EntryKey, ()>> {
        self.map.lower_bound(Bound::Included(&EntryKey::search(key, seq)))
    }

    /// Calls `f(key, value)` for the live keys in `[start, end)` at `seq`, in order,
    /// until it returns false or `limit` keys were visited.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        seq: u64,
        limit: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        let mut cursor = self.seek(start, MAX_SEQ);
        // The key whose visible version was handled; its older versions are skipped.
        // A copy, not an entry handle: holding handles costs reference-count traffic
        // on every node.
        let mut done_key: Vec<u8> = Vec::new();
        let mut have_done = false;
        let mut emitted = 0usize;
        while let Some(entry) = cursor {
            if emitted >= limit {
                return;
            }
            let k = entry.key();
            if !in_range(k.key(), start, end) {
                return;
            }
            let already = have_done && done_key == k.key();
            if !already && k.seq() <= seq {
                if !k.is_delete() {
                    emitted += 1;
                    if !f(k.key(), k.value()) {
                        return;
                    }
                }
                done_key.clear();
                done_key.extend_from_slice(k.key());
                have_done = true;
            }
            cursor = entry.next();
        }
    }

    /// Visits every entry in `[start, end)`, all versions, in order.
    pub fn for_each_version(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        mut f: impl FnMut(&Entry<'_, EntryKey, ()>),
    ) {
        let mut cursor = self.seek(start, MAX_SEQ);
        while let Some(entry) = cursor {
            if !in_range(entry.key().key(), start, end) {
                return;
            }
            f(&entry);
            cursor = entry.next();
        }
    }

    /// Bytes charged for the entries in `[start, end)`.
    pub fn range_bytes(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
        let mut total = 0;
        self.for_each_version(start, end, |e| total += e.key().charge());
        total
    }

    /// Removes every entry in `[start, end)`; returns the bytes freed.
    pub fn remove_range(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
        let mut freed = 0;
        self.for_each_version(start, end, |e| {
            if e.remove() {
                freed += e.key().charge();
            }
        });
        self.account(-(freed.cast_signed()));
        freed
    }

    /// Drops the versions of the key at `newest` (its newest version) that no snapshot
    /// can see. `snapshots` are the live snapshot sequence numbers, ascending. Returns
    /// the bytes freed.
    ///
    /// Version `i` (0 = newest) is visible to a snapshot `s` with
    /// `seq(i) <= s < seq(i - 1)`; the newest version is visible to the present. A
    /// tombstone with nothing older left shadows nothing and goes too.
    pub fn prune_key(&self, newest: &Entry<'_, EntryKey, ()>, snapshots: &[u64]) -> u64 {
        let key = newest.key().key();
        let next = newest.next();
        if !newest.key().is_delete() && next.as_ref().is_none_or(|n| n.key().key() != key) {
            return 0; // the common case: one live version
        }
        let mut keep: Vec<Entry<'_, EntryKey, ()>> = Vec::new();
        let mut drop: Vec<Entry<'_, EntryKey, ()>> = Vec::new();
        let mut newer_seq = u64::MAX;
        let mut cursor = Some(newest.clone());
        while let Some(entry) = cursor {
            if entry.key().key() != key {
                break;
            }
            let seq = entry.key().seq();
            let visible = newer_seq == u64::MAX || {
                let first = snapshots.partition_point(|&s| s < seq);
                snapshots.get(first).is_some_and(|&s| s < newer_seq)
            };
            newer_seq = seq;
            cursor = entry.next();
            if visible { keep.push(entry) } else { drop.push(entry) }
        }
        while keep.last().is_some_and(|e| e.key().is_delete()) {
            drop.extend(keep.pop());
        }
        let mut freed = 0;
        for entry in drop {
            if entry.remove() {
                freed += entry.key().charge();
            }
        }
        self.account(-(freed.cast_signed()));
        freed
    }

    /// The newest entry of `key` (any sequence number), if any.
    #[cfg(test)]
    pub fn newest(&self, key: &[u8]) -> Option<Entry<'_, EntryKey, ()>> {
        self.seek(key, MAX_SEQ).filter(|e| e.key().key() == key)
    }

    /// The first entry at or after `key` (any version).
    pub fn first_at_or_after(&self, key: &[u8]) -> Option<Entry<'_, EntryKey, ()>> {
        self.seek(key, MAX_SEQ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(m: &Memtable, key: &[u8], value: &[u8], seq: u64) {
        let mut e = EntryKey::put(key, value);
        e.set_seq(seq);
        m.insert(e);
    }

    fn del(m: &Memtable, key: &[u8], seq: u64) {
        let mut e = EntryKey::delete(key);
        e.set_seq(seq);
        m.insert(e);
    }

    fn scan_all(m: &Memtable, seq: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        m.scan(b"", None, seq, usize::MAX, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        });
        out
    }

    #[test]
    fn reads_see_the_newest_version_at_their_snapshot() {
        let m = Memtable::new();
        put(&m, b"a", b"1", 1);
        put(&m, b"ab", b"x", 1);
        put(&m, b"a", b"2", 3);
        del(&m, b"a", 5);
        assert_eq!(m.get(b"a", 0), Found::Missing);
        assert_eq!(m.get(b"a", 1), Found::Value(Bytes::from_static(b"1")));
        assert_eq!(m.get(b"a", 4), Found::Value(Bytes::from_static(b"2")));
        assert_eq!(m.get(b"a", 5), Found::Deleted);
        assert_eq!(m.get(b"ab", 9), Found::Value(Bytes::from_static(b"x")));
        assert_eq!(
            scan_all(&m, 4),
            vec![(b"a".to_vec(), b"2".to_vec()), (b"ab".to_vec(), b"x".to_vec())]
        );
        assert_eq!(scan_all(&m, 9), vec![(b"ab".to_vec(), b"x".to_vec())]);
    }

    #[test]
    fn pruning_keeps_exactly_what_snapshots_see() {
        let m = Memtable::new();
        for seq in 1..=5 {
            put(&m, b"k", &[seq as u8], seq);
        }
        let before = m.bytes();
        // Snapshots at 2 and 4 need versions 2 and 4; 5 is the newest.
        let freed = m.prune_key(&m.newest(b"k").unwrap(), &[2, 4]);
        assert!(freed > 0 && m.bytes() == before - freed);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(b"k", 2), Found::Value(Bytes::from_static(&[2])));
        assert_eq!(m.get(b"k", 3), Found::Value(Bytes::from_static(&[2])));
        assert_eq!(m.get(b"k", 4), Found::Value(Bytes::from_static(&[4])));
        del(&m, b"k", 6);
        m.prune_key(&m.newest(b"k").unwrap(), &[]);
        assert_eq!(m.len(), 0, "a tombstone over nothing goes too");
        assert_eq!(m.bytes(), 0);
    }
}
