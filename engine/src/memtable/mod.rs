//! The MVCC memtable: one concurrent ordered map for every region of a store.
//!
//! Versions of keys are stored in *leaves*: immutable, sorted runs of encoded entries,
//! at most about [`LEAF_MAX_BYTES`] long, indexed by their first key in a `BTreeMap`.
//! Entries are ordered by user key ascending, then sequence number descending, so the
//! newest version of a key comes first; all versions of a key live in one leaf.
//!
//! ```text
//!  index (RwLock<BTreeMap>):   "" -> leaf 0     "f.." -> leaf 1     "q.." -> leaf 2
//!                              leaf i covers [its start, the next start)
//!
//!  leaf (one allocation):  | entry | entry | ... | entry | offsets: u32 each | n: u32 |
//!
//!  entry
//!  0                    8            12           16           16+klen
//!  +--------------------+------------+------------+------------+-------------+
//!  | seq << 8 | kind    | klen       | vlen       | key        | value       |
//!  | u64 LE             | u32 LE     | u32 LE     | klen bytes | vlen bytes  |
//!  +--------------------+------------+------------+------------+-------------+
//!  kind: 1 = put, 2 = delete (tombstone, vlen 0)
//! ```
//!
//! Concurrency: one writer at a time (the engine's commit lock), any number of
//! readers. A writer copies each leaf it changes, merges its sorted batch in (pruning
//! versions no reader can see while it is at it), and swaps the new leaves into the
//! index under a short write lock. Readers hold a leaf through an `Arc`, so a scan or
//! a checkpoint never blocks writers and always sees a consistent leaf. A version is
//! dropped only if no live snapshot and no snapshot that may still be taken before the
//! writer publishes (those read at the current visible sequence number) can see it.
//!
//! Why not a skip list (crossbeam-skiplist, the first implementation), measured by
//! `regionkv bench engine` at 1 M keys of 16 + 100 bytes: a node plus a separate entry
//! allocation per version cost 82 resident bytes per key beyond the data (leaves: 36-40),
//! and every scan step was a dependent cache miss (scans 1.3 M keys/s, leaves 4-6 M;
//! checkpoint writes ~150 MiB/s, leaves 240-850 MiB/s on a shared machine). Applying
//! stays at 0.7-0.9x of the bare skip list's insert rate; the price of leaves is copying
//! a 2-4 KiB leaf per touched leaf per commit, and values much larger than a leaf make
//! writes near them expensive (each write copies its leaf).
//!
//! Splits and merges of regions move no data: regions are ranges over this one map.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::region::in_range;

mod leaf;

pub(crate) use leaf::{Batch, ENTRY_HEADER_LEN, encoded_pair};
use leaf::{
    KIND_SEARCH, Leaf, LeafBuilder, SEQ_WORD_LEN, charge_of, is_delete, key_of, seq_of, value_of,
    word,
};

/// Largest sequence number: 56 bits, the low byte of the word holds the kind.
pub const MAX_SEQ: u64 = (1 << 56) - 1;
/// Bytes charged per entry beyond its encoding: its 4-byte offset in the leaf, plus
/// its share of the leaf's slack, index entry and allocation headers. Calibrated with
/// `regionkv bench engine`: 36 resident bytes per key beyond key and value at 1 M keys
/// of 16 + 100 bytes = the 16-byte entry header + 20.
pub const ENTRY_OVERHEAD_BYTES: u64 = 20;
/// Leaves a scan takes per acquisition of the index lock.
const SCAN_LEAVES_PER_LOCK: usize = 32;
/// A leaf that would grow past this many bytes of entries is split into equal parts
/// (B-tree style, so leaves stay between half full and full under random inserts).
pub const LEAF_MAX_BYTES: usize = 4096;

/// A sequence number: the position of a committed write in the engine's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

/// What a writer may drop: versions that no snapshot, present or future, can see.
#[derive(Debug, Clone)]
pub(crate) struct Visibility {
    /// Sequence numbers of live snapshots, ascending.
    pub snapshots: Vec<u64>,
    /// The latest published sequence number: snapshots taken before the writer
    /// publishes read here.
    pub visible: u64,
}

impl Visibility {
    /// True if a reader at some `s` with `seq <= s < newer` exists or may appear.
    fn needs(&self, seq: u64, newer: u64) -> bool {
        let in_window = |s: u64| seq <= s && s < newer;
        if in_window(self.visible) {
            return true;
        }
        let first = self.snapshots.partition_point(|&s| s < seq);
        self.snapshots.get(first).is_some_and(|&s| s < newer)
    }
}

/// Pushes the versions of one key (newest first) that a reader may see; returns the
/// charge of the dropped ones. Every dropped entry is reported to `on_charge`.
fn push_visible(
    versions: &[&[u8]],
    vis: &Visibility,
    out: &mut LeafBuilder,
    on_charge: &mut dyn FnMut(&[u8], i64),
) -> u64 {
    let mut keep = [false; 64];
    let mut keep_vec;
    let keep: &mut [bool] = if versions.len() <= keep.len() {
        &mut keep[..versions.len()]
    } else {
        keep_vec = vec![false; versions.len()];
        &mut keep_vec
    };
    let mut newer = u64::MAX;
    for (i, e) in versions.iter().enumerate() {
        let seq = seq_of(e);
        keep[i] = i == 0 || vis.needs(seq, newer);
        newer = seq;
    }
    // A tombstone with nothing older kept shadows nothing.
    for i in (0..versions.len()).rev() {
        if !keep[i] {
            continue;
        }
        if is_delete(versions[i]) {
            keep[i] = false;
        } else {
            break;
        }
    }
    let mut freed = 0;
    for (e, &k) in versions.iter().zip(keep.iter()) {
        if k {
            out.push(e);
        } else {
            freed += charge_of(e);
            on_charge(key_of(e), -(charge_of(e).cast_signed()));
        }
    }
    freed
}

/// Feeds the versions of each key of `leaf` (newest first) to `f`, key by key.
fn for_each_key<'l>(leaf: &'l Leaf, mut f: impl FnMut(&[&'l [u8]])) {
    let mut versions: Vec<&'l [u8]> = Vec::new();
    for i in 0..leaf.len() {
        let entry = leaf.entry(i);
        if versions.last().is_some_and(|last| key_of(last) != key_of(entry)) {
            f(&versions);
            versions.clear();
        }
        versions.push(entry);
    }
    if !versions.is_empty() {
        f(&versions);
    }
}

/// What a read found for a key at a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Value(Bytes),
    Deleted,
    Missing,
}

/// A leaf's start key in the index. The first 16 bytes are also kept inline, as a
/// big-endian integer of the zero-padded prefix, so that most comparisons during a
/// lookup need no pointer chase to the key's heap bytes (zero padding keeps the order:
/// when two prefixes differ, the keys differ the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
struct IndexKey {
    prefix: u128,
    key: Vec<u8>,
}

impl IndexKey {
    fn new(key: &[u8]) -> IndexKey {
        IndexKey::from_vec(key.to_vec())
    }

    fn from_vec(key: Vec<u8>) -> IndexKey {
        IndexKey { prefix: prefix_of(&key), key }
    }

    /// Makes this key `key`, reusing its buffer.
    fn set(&mut self, key: &[u8]) -> &IndexKey {
        self.key.clear();
        self.key.extend_from_slice(key);
        self.prefix = prefix_of(key);
        self
    }
}

/// The first 16 bytes of `key`, zero-padded, as a big-endian integer.
fn prefix_of(key: &[u8]) -> u128 {
    let mut p = [0u8; 16];
    let n = key.len().min(16);
    p[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(p)
}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix.cmp(&other.prefix).then_with(|| self.key.cmp(&other.key))
    }
}

type Index = BTreeMap<IndexKey, Arc<Leaf>>;
/// Leaves rebuilt from one leaf, with their start keys (`None`: the old leaf's).
type Rebuilt = Vec<(Option<Vec<u8>>, Leaf)>;

/// The concurrent MVCC map. See the module docs.
#[derive(Debug)]
pub(crate) struct Memtable {
    /// Leaves by start key; the first start is always the empty key.
    index: RwLock<Index>,
    /// Sum of the charge of every entry.
    bytes: AtomicU64,
    entries: AtomicUsize,
}

impl Default for Memtable {
    fn default() -> Self {
        Memtable::new()
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: it never faults and
/// changes nothing a program can observe).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, reason = "a prefetch hint; halves the time of a full scan (measured)")]
fn prefetch(p: *const u8) {
    // SAFETY: `prefetch` only hints the cache; it does not access memory in the
    // language's sense and cannot fault, whatever the address. The call is unsafe only
    // because the intrinsic is declared with `#[target_feature(enable = "sse")]`, and
    // SSE is part of the x86_64 baseline.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_p: *const u8) {}

/// Prefetches every cache line of `leaf`'s buffer.
///
/// Leaves are separate allocations that random writes scatter over the heap, so a
/// scan in key order jumps to a cold page at every leaf: a TLB miss and a few cache
/// misses before the hardware prefetcher catches on. Asking for the next leaf while
/// the current one is read halved a full scan of 1 M keys of 16 + 100 bytes here
/// (62-77 ms -> 29-41 ms; loading a byte of each line instead, safely, gave 37-56 ms).
fn prefetch_leaf(leaf: &Leaf) {
    let buf = leaf.buf.as_ptr();
    for at in (0..leaf.buf.len()).step_by(64) {
        prefetch(buf.wrapping_add(at));
    }
    prefetch(buf.wrapping_add(leaf.buf.len() - 1));
}

/// The leaf covering `key`, with its start: one descent of the index.
fn leaf_at<'i>(index: &'i Index, key: &[u8]) -> (&'i IndexKey, &'i Arc<Leaf>) {
    leaf_at_probe(index, &IndexKey::new(key))
}

/// [`leaf_at`] for a search key the caller built (a writer reuses one buffer for every
/// key of its batch rather than allocating a copy of each).
fn leaf_at_probe<'i>(index: &'i Index, probe: &IndexKey) -> (&'i IndexKey, &'i Arc<Leaf>) {
    index
        .range((Unbounded, Included(probe)))
        .next_back()
        .or_else(|| index.iter().next())
        .expect("the index always holds the leaf at the empty key")
}

/// The leaf covering `key` and the start of the next leaf.
fn leaf_for<'i>(
    index: &'i Index,
    key: &[u8],
) -> (&'i IndexKey, &'i Arc<Leaf>, Option<&'i IndexKey>) {
    let (start, leaf) = leaf_at(index, key);
    let next = index.range((Excluded(start), Unbounded)).next();
    (start, leaf, next.map(|(k, _)| k))
}

impl Memtable {
    pub fn new() -> Memtable {
        Memtable {
            index: RwLock::new(BTreeMap::from([(IndexKey::new(b""), Arc::new(Leaf::default()))])),
            bytes: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
        }
    }

    /// Bytes charged for every entry.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    /// Number of entries (versions and tombstones).
    pub fn len(&self) -> usize {
        self.entries.load(AtomicOrdering::Relaxed)
    }

    /// Number of leaves.
    #[cfg(test)]
    pub fn leaves(&self) -> usize {
        self.index.read().len()
    }

    fn account(&self, added: u64, freed: u64, entries_added: usize, entries_freed: usize) {
        self.bytes.fetch_add(added, AtomicOrdering::Relaxed);
        self.bytes.fetch_sub(freed, AtomicOrdering::Relaxed);
        self.entries.fetch_add(entries_added, AtomicOrdering::Relaxed);
        self.entries.fetch_sub(entries_freed, AtomicOrdering::Relaxed);
    }

    /// Merges `batch` (sequence numbers set, sorted) into the map, dropping versions
    /// nobody can see in every leaf it touches. `on_charge(key, delta)` hears about
    /// every entry added (+) and dropped (-). The caller is the only writer.
    pub fn apply(&self, batch: &Batch, vis: &Visibility, on_charge: &mut dyn FnMut(&[u8], i64)) {
        if batch.is_empty() {
            return;
        }
        // Group the batch by the leaf each entry falls in.
        let mut groups: Vec<(IndexKey, Arc<Leaf>, std::ops::Range<usize>)> = Vec::new();
        {
            let index = self.index.read();
            // One descent of the index per key: a batch's keys are usually far apart,
            // so finding where each leaf ends would cost a second descent per leaf.
            let mut probe = IndexKey::new(b"");
            let mut i = 0;
            let mut at = leaf_at_probe(&index, probe.set(key_of(batch.entry(0))));
            while i < batch.len() {
                let (start, leaf) = at;
                let mut j = i + 1;
                while j < batch.len() {
                    at = leaf_at_probe(&index, probe.set(key_of(batch.entry(j))));
                    if !Arc::ptr_eq(at.1, leaf) {
                        break;
                    }
                    j += 1;
                }
                groups.push((start.clone(), leaf.clone(), i..j));
                i = j;
            }
        }
        // The leaves are far apart in memory: ask for all of them before reading any.
        for (_, leaf, _) in &groups {
            prefetch_leaf(leaf);
        }
        let mut added = 0u64;
        let mut freed = 0u64;
        let mut kept_entries = 0usize;
        let mut old_entries = 0usize;
        let mut replacements = Vec::with_capacity(groups.len());
        for (start, leaf, range) in groups {
            let mut versions: Vec<&[u8]> = Vec::new();
            let new_bytes: usize = range.clone().map(|i| batch.entry(i).len()).sum();
            let mut builder =
                LeafBuilder::new(leaf.data_len() + new_bytes, leaf.len() + range.len());
            old_entries += leaf.len();
            // Old entries of keys the batch does not touch are copied as they are (a
            // GC sweep prunes them); each written key's versions, new and old, go
            // through the visibility rule.
            let mut pos = 0;
            let mut i = range.start;
            while i < range.end {
                let first = batch.entry(i);
                let key = key_of(first);
                let mut j = i;
                while j < range.end && key_of(batch.entry(j)) == key {
                    let e = batch.entry(j);
                    added += charge_of(e);
                    on_charge(key, charge_of(e).cast_signed());
                    j += 1;
                }
                let first_old = leaf.lower_bound_from(pos, key, u64::MAX);
                builder.push_run(&leaf, pos, first_old);
                pos = first_old;
                let old_start = pos;
                while pos < leaf.len() && key_of(leaf.entry(pos)) == key {
                    pos += 1;
                }
                if j == i + 1 && old_start == pos && !is_delete(first) {
                    // The common case: a new key, one put. Nothing to prune.
                    builder.push(first);
                    i = j;
                    continue;
                }
                versions.clear();
                versions.extend((i..j).map(|x| batch.entry(x)));
                versions.extend((old_start..pos).map(|x| leaf.entry(x)));
                i = j;
                // New versions are newer than old ones (sequence numbers only grow),
                // so the list is newest first; keep it so if a caller broke that.
                if !versions.is_sorted_by(|a, b| word(a) >= word(b)) {
                    versions.sort_unstable_by_key(|e| std::cmp::Reverse(word(e)));
                }
                freed += push_visible(&versions, vis, &mut builder, on_charge);
            }
            builder.push_run(&leaf, pos, leaf.len());
            let leaves = builder.finish();
            kept_entries += leaves.iter().map(|(_, l)| l.len()).sum::<usize>();
            replacements.push((start, leaves));
        }
        self.install(replacements);
        self.account(added, freed, kept_entries, old_entries);
        debug_assert!(self.bytes.load(AtomicOrdering::Relaxed) < u64::MAX / 2);
    }

    /// Swaps rebuilt leaves into the index, after removing the leaves `remove`.
    fn install_replacing(&self, remove: &[IndexKey], replacements: Vec<(IndexKey, Rebuilt)>) {
        let mut index = self.index.write();
        for key in remove {
            index.remove(key);
        }
        Self::install_locked(&mut index, replacements);
    }

    /// Swaps rebuilt leaves into the index.
    fn install(&self, replacements: Vec<(IndexKey, Rebuilt)>) {
        Self::install_locked(&mut self.index.write(), replacements);
    }

    fn install_locked(index: &mut Index, replacements: Vec<(IndexKey, Rebuilt)>) {
        for (start, leaves) in replacements {
            for (leaf_start, leaf) in leaves {
                match leaf_start {
                    // The rebuilt leaf keeps its index key; empty, its range joins the
                    // previous leaf's (the first leaf, at the empty key, always stays).
                    None if leaf.len() == 0 && !start.key.is_empty() => {
                        index.remove(&start);
                    }
                    None => match index.get_mut(&start) {
                        Some(slot) => *slot = Arc::new(leaf),
                        None => {
                            index.insert(start.clone(), Arc::new(leaf));
                        }
                    },
                    Some(key) => {
                        index.insert(IndexKey::from_vec(key), Arc::new(leaf));
                    }
                }
            }
        }
    }

    /// Loads sorted, distinct puts at `seq` into `[start, end)`, which must hold no
    /// entries (a fresh engine, or a range no region hosted). `fill` hands each pair to
    /// the function it is given, in key order, as `(key, pair)` with the pair encoded
    /// as a checkpoint stores it ([`encoded_pair`]); each is copied straight into the
    /// new leaves. `estimate` is about how many (entries, key and value bytes) come.
    /// Returns the entries loaded and the bytes charged. The caller is the only writer.
    ///
    /// If `fill` fails, nothing is loaded and its error is returned.
    pub fn load_sorted<T, E>(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        seq: u64,
        estimate: (usize, usize),
        fill: impl FnOnce(&mut dyn FnMut(&[u8], &[u8])) -> Result<T, E>,
    ) -> Result<(T, u64, u64), E> {
        let leaves = self.leaves_in(start, end);
        let old_bytes: usize = leaves.iter().map(|(_, l)| l.data_len()).sum();
        let old_entries: usize = leaves.iter().map(|(_, l)| l.len()).sum();
        let mut builder = LeafBuilder::new(
            old_bytes + estimate.1 + estimate.0 * ENTRY_HEADER_LEN,
            old_entries + estimate.0,
        );
        // Old entries before the range can only be in the first leaf; none are inside.
        let first = &leaves[0].1;
        let below = first.lower_bound(start, u64::MAX);
        builder.push_run(first, 0, below);
        let mut loaded = 0u64;
        let mut charged = 0u64;
        let mut last: Option<Vec<u8>> = None;
        let filled = fill(&mut |k, pair| {
            debug_assert!(in_range(k, start, end), "loaded keys are inside the range");
            debug_assert!(last.as_deref().is_none_or(|l| l < k), "loaded keys are sorted");
            if cfg!(debug_assertions) {
                last = Some(k.to_vec());
            }
            builder.push_encoded_put(seq, k, pair);
            loaded += 1;
            charged += (SEQ_WORD_LEN + pair.len()) as u64 + ENTRY_OVERHEAD_BYTES;
        })?;
        for (i, (_, leaf)) in leaves.iter().enumerate() {
            let from = if i == 0 { below } else { 0 };
            let at_end = end.map_or(leaf.len(), |e| leaf.lower_bound_from(from, e, u64::MAX));
            builder.push_run(leaf, at_end.max(from), leaf.len());
        }
        let rebuilt = builder.finish();
        let kept: usize = rebuilt.iter().map(|(_, l)| l.len()).sum();
        let remove: Vec<IndexKey> = leaves[1..].iter().map(|(k, _)| k.clone()).collect();
        self.install_replacing(&remove, vec![(leaves[0].0.clone(), rebuilt)]);
        self.account(charged, 0, kept, old_entries);
        Ok((filled, loaded, charged))
    }

    /// The newest version of `key` at `seq` or below.
    pub fn get(&self, key: &[u8], seq: u64) -> Found {
        let index = self.index.read();
        let (_, leaf) = leaf_at(&index, key);
        let i = leaf.lower_bound(key, (seq << 8) | KIND_SEARCH);
        if i >= leaf.len() {
            return Found::Missing;
        }
        let e = leaf.entry(i);
        if key_of(e) != key {
            Found::Missing
        } else if is_delete(e) {
            Found::Deleted
        } else {
            Found::Value(Bytes::copy_from_slice(value_of(e)))
        }
    }

    /// Calls `f(key, value)` for the live keys in `[start, end)` at `seq`, in order,
    /// until it returns false or `limit` keys were visited. Holds no lock while `f`
    /// runs.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        seq: u64,
        limit: usize,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        let mut emitted = 0usize;
        self.visit_newest(start, end, seq, |e| {
            if is_delete(e) {
                return true;
            }
            if emitted >= limit {
                return false;
            }
            emitted += 1;
            f(key_of(e), value_of(e)) && emitted < limit
        });
    }

    /// Calls `f(key, kv)` for the live keys in `[start, end)` at `seq`, in order, until
    /// it returns false, where `kv` is the pair encoded as a checkpoint entry
    /// ([`encoded_pair`]): a checkpoint copies each pair with one `memcpy`.
    pub fn scan_encoded(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        seq: u64,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        self.visit_newest(start, end, seq, |e| is_delete(e) || f(key_of(e), encoded_pair(e)));
    }

    /// Calls `f(entry)` with the newest version at or below `seq` of every key in
    /// `[start, end)` (tombstones included), in key order, until it returns false.
    /// Holds no lock while `f` runs.
    fn visit_newest(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        seq: u64,
        mut f: impl FnMut(&[u8]) -> bool,
    ) {
        let mut cursor = start.to_vec();
        let mut batch: Vec<Arc<Leaf>> = Vec::with_capacity(SCAN_LEAVES_PER_LOCK);
        // Bounded by the number of leaves: every pass moves the cursor past a leaf.
        loop {
            // Take the next few leaves under one short read lock, walking the index in
            // order (no lookups); they stay valid, immutable images after it is released.
            batch.clear();
            let next = {
                let index = self.index.read();
                let (first, leaf, _) = leaf_for(&index, &cursor);
                batch.push(leaf.clone());
                let mut after = index.range((Excluded(first), Unbounded));
                let mut next = None;
                for (k, l) in after.by_ref() {
                    if batch.len() == SCAN_LEAVES_PER_LOCK
                        || end.is_some_and(|e| k.key.as_slice() >= e)
                    {
                        next = Some(k.key.clone());
                        break;
                    }
                    batch.push(l.clone());
                }
                next
            };
            for (n, leaf) in batch.iter().enumerate() {
                // Two leaves ahead, the leaf's header (where its buffer is); one leaf
                // ahead, the buffer.
                if let Some(after_next) = batch.get(n + 2) {
                    prefetch(Arc::as_ptr(after_next).cast());
                }
                if let Some(next) = batch.get(n + 1) {
                    prefetch_leaf(next);
                }
                // Only the first leaf holds keys below the cursor; the others start
                // after it (a search there would only cost cache misses).
                let from = if n == 0 { leaf.lower_bound(&cursor, u64::MAX) } else { 0 };
                let mut done: Option<&[u8]> = None;
                for i in from..leaf.len() {
                    let e = leaf.entry(i);
                    let k = key_of(e);
                    if end.is_some_and(|end| k >= end) {
                        return;
                    }
                    if seq_of(e) > seq || done == Some(k) {
                        continue;
                    }
                    done = Some(k);
                    if !f(e) {
                        return;
                    }
                }
            }
            match next {
                Some(n) if end.is_none_or(|end| n.as_slice() < end) => cursor = n,
                _ => return,
            }
        }
    }

    /// The leaves overlapping `[start, end)` with their start keys.
    fn leaves_in(&self, start: &[u8], end: Option<&[u8]>) -> Vec<(IndexKey, Arc<Leaf>)> {
        let index = self.index.read();
        let (first, leaf, _) = leaf_for(&index, start);
        let mut out = vec![(first.clone(), leaf.clone())];
        let end = end.map(IndexKey::new);
        let upper = end.as_ref().map_or(Unbounded, Excluded);
        for (k, l) in index.range((Excluded(first), upper)) {
            out.push((k.clone(), l.clone()));
        }
        out
    }

    /// Bytes charged for the entries in `[start, end)`.
    pub fn range_bytes(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
        let mut total = 0;
        for (_, leaf) in self.leaves_in(start, end) {
            for i in 0..leaf.len() {
                let e = leaf.entry(i);
                if in_range(key_of(e), start, end) {
                    total += charge_of(e);
                }
            }
        }
        total
    }

    /// Removes every entry in `[start, end)`; returns the bytes freed. The caller is
    /// the only writer.
    pub fn remove_range(&self, start: &[u8], end: Option<&[u8]>) -> u64 {
        let mut freed = 0;
        let mut removed = 0;
        let mut replacements = Vec::new();
        for (leaf_start, leaf) in self.leaves_in(start, end) {
            let mut builder = LeafBuilder::new(leaf.data_len(), leaf.len());
            let mut touched = false;
            for i in 0..leaf.len() {
                let e = leaf.entry(i);
                if in_range(key_of(e), start, end) {
                    freed += charge_of(e);
                    removed += 1;
                    touched = true;
                } else {
                    builder.push(e);
                }
            }
            if touched {
                replacements.push((leaf_start, builder.finish()));
            }
        }
        self.install(replacements);
        self.account(0, freed, 0, removed);
        freed
    }

    /// Drops versions nobody can see in the leaves from the one holding `cursor`, until
    /// about `max_keys` keys were looked at. Returns the start of the next leaf to
    /// sweep (`None`: the sweep reached the end), the keys looked at and bytes freed.
    pub fn gc(
        &self,
        cursor: &[u8],
        max_keys: usize,
        vis: &Visibility,
        on_charge: &mut dyn FnMut(&[u8], i64),
    ) -> (Option<Vec<u8>>, usize, u64) {
        let mut keys = 0usize;
        let mut freed = 0u64;
        let mut old_entries = 0usize;
        let mut kept = 0usize;
        let mut replacements = Vec::new();
        let mut next_cursor = Some(cursor.to_vec());
        // Bounded by the number of leaves and by max_keys.
        while let Some(at) = next_cursor.take() {
            if keys >= max_keys {
                next_cursor = Some(at);
                break;
            }
            let (start, leaf, next) = {
                let index = self.index.read();
                let (s, l, n) = leaf_for(&index, &at);
                (s.clone(), l.clone(), n.map(|n| n.key.clone()))
            };
            let mut builder = LeafBuilder::new(leaf.data_len(), leaf.len());
            let mut leaf_freed = 0;
            for_each_key(&leaf, |versions| {
                keys += 1;
                leaf_freed += push_visible(versions, vis, &mut builder, on_charge);
            });
            if leaf_freed > 0 {
                let leaves = builder.finish();
                old_entries += leaf.len();
                kept += leaves.iter().map(|(_, l)| l.len()).sum::<usize>();
                freed += leaf_freed;
                replacements.push((start, leaves));
            }
            next_cursor = next;
        }
        self.install(replacements);
        self.account(0, freed, kept, old_entries);
        (next_cursor, keys, freed)
    }
}

#[cfg(test)]
mod tests;
