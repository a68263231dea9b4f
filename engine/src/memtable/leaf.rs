//! The memtable's storage: encoded entries (the layout is drawn in the module above),
//! batches of them to apply, and the immutable sorted leaves built from them.

use std::cmp::Ordering;

use super::{ENTRY_OVERHEAD_BYTES, LEAF_MAX_BYTES, MAX_SEQ};

/// Bytes of framing in front of every key.
pub(crate) const ENTRY_HEADER_LEN: usize = 16;
/// Bytes of the sequence number and kind word that opens every entry.
pub(super) const SEQ_WORD_LEN: usize = 8;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// The word a search uses: sorts before every version at or below its sequence number.
pub(super) const KIND_SEARCH: u64 = 0xff;

const _: () = assert!(MAX_SEQ << 8 >> 8 == MAX_SEQ, "seq and kind share a u64");

// Accessors of an encoded entry. Entries are written only by the memtable, and every
// slice handed to these functions is exactly one entry, so the lengths hold.

pub(super) fn word(e: &[u8]) -> u64 {
    u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]])
}

pub(super) fn seq_of(e: &[u8]) -> u64 {
    word(e) >> 8
}

pub(super) fn is_delete(e: &[u8]) -> bool {
    e[0] == KIND_DELETE
}

fn key_len(e: &[u8]) -> usize {
    u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as usize
}

fn value_len(e: &[u8]) -> usize {
    u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as usize
}

pub(super) fn key_of(e: &[u8]) -> &[u8] {
    &e[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + key_len(e)]
}

pub(super) fn value_of(e: &[u8]) -> &[u8] {
    let start = ENTRY_HEADER_LEN + key_len(e);
    &e[start..start + value_len(e)]
}

/// The entry without its sequence word: `klen u32 LE, vlen u32 LE, key, value`, which
/// is byte for byte how a checkpoint block stores a pair (see [`crate::checkpoint`]).
pub(crate) fn encoded_pair(e: &[u8]) -> &[u8] {
    &e[SEQ_WORD_LEN..]
}

fn entry_len(e: &[u8]) -> usize {
    ENTRY_HEADER_LEN + key_len(e) + value_len(e)
}

/// Bytes charged to the memory account for an entry.
pub(super) fn charge_of(e: &[u8]) -> u64 {
    e.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// User key ascending, then sequence number (and kind) descending.
fn cmp_entries(a: &[u8], b: &[u8]) -> Ordering {
    key_of(a).cmp(key_of(b)).then_with(|| word(b).cmp(&word(a)))
}

fn encode_into(buf: &mut Vec<u8>, kind: u8, seq: u64, key: &[u8], value: &[u8]) {
    // One growth, not one per part (four for a batch's first entry).
    buf.reserve(ENTRY_HEADER_LEN + key.len() + value.len());
    buf.extend_from_slice(&((seq << 8) | u64::from(kind)).to_le_bytes());
    // Keys and values are bounded by the engine's limits, far below 4 GiB.
    buf.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

/// Writes to apply together: encoded entries in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    /// Start of each entry in `buf`, in push order (after [`Batch::sort`], key order).
    offsets: Vec<usize>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.offsets.push(self.buf.len());
        encode_into(&mut self.buf, KIND_PUT, 0, key, value);
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.offsets.push(self.buf.len());
        encode_into(&mut self.buf, KIND_DELETE, 0, key, &[]);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.offsets.clear();
    }

    pub(super) fn entry(&self, i: usize) -> &[u8] {
        let start = self.offsets[i];
        &self.buf[start..start + entry_len(&self.buf[start..])]
    }

    /// Gives the writes sequence numbers `first, first + 1, ...` in push order, so a
    /// later write of the same key wins.
    pub fn set_seqs(&mut self, first: u64) {
        for (i, &at) in self.offsets.iter().enumerate() {
            let kind = u64::from(self.buf[at]);
            let w = ((first + i as u64) << 8) | kind;
            self.buf[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Orders the writes as the map does.
    pub fn sort(&mut self) {
        let buf = &self.buf;
        let at = |o: usize| &buf[o..o + entry_len(&buf[o..])];
        self.offsets.sort_unstable_by(|&a, &b| cmp_entries(at(a), at(b)));
    }
}

/// An immutable sorted run of entries, in one allocation (the offsets trail the
/// entries, so a writer fills the buffer front to back in one pass):
///
/// ```text
///  0                              D                 D + 4n     D + 4n + 4
///  +------------------------------+-----------------+----------+
///  | entries, back to back        | offsets n x u32 | n u32 LE |
///  +------------------------------+-----------------+----------+
/// ```
#[derive(Debug)]
pub(super) struct Leaf {
    pub(super) buf: Box<[u8]>,
}

impl Default for Leaf {
    fn default() -> Self {
        Leaf { buf: Box::new([0; 4]) }
    }
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

impl Leaf {
    pub(super) fn len(&self) -> usize {
        u32_at(&self.buf, self.buf.len() - 4)
    }

    /// Bytes of entries (where the offsets start).
    pub(super) fn data_len(&self) -> usize {
        self.buf.len() - 4 - 4 * self.len()
    }

    pub(super) fn entry(&self, i: usize) -> &[u8] {
        let offsets = self.data_len();
        let start = u32_at(&self.buf, offsets + 4 * i);
        let end = if i + 1 < self.len() { u32_at(&self.buf, offsets + 4 * i + 4) } else { offsets };
        &self.buf[start..end]
    }

    /// Index of the first entry at or after `(key, word)` in map order.
    pub(super) fn lower_bound(&self, key: &[u8], w: u64) -> usize {
        self.lower_bound_from(0, key, w)
    }

    /// [`Leaf::lower_bound`], knowing the answer is at least `lo`.
    pub(super) fn lower_bound_from(&self, lo: usize, key: &[u8], w: u64) -> usize {
        let mut lo = lo;
        let mut hi = self.len();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.entry(mid);
            let before = key_of(e).cmp(key).then_with(|| w.cmp(&word(e))) == Ordering::Less;
            if before { lo = mid + 1 } else { hi = mid }
        }
        lo
    }
}

/// Builds leaves from entries pushed in map order, cutting at key boundaries once a
/// leaf holds `piece_bytes`. Entries are written straight into the leaf's final
/// buffer, sized from the caller's estimate, so an unsplit leaf is exactly one
/// allocation and one copy.
pub(super) struct LeafBuilder {
    /// Finished leaves with their start keys (`None`: the start of the leaf being
    /// rebuilt, which keeps its index key).
    out: Vec<(Option<Vec<u8>>, Leaf)>,
    data: Vec<u8>,
    offsets: Vec<u32>,
    /// Start key of the leaf being built, if it is not the first.
    start: Option<Vec<u8>>,
    first: bool,
    piece_bytes: usize,
    /// Bytes of the whole estimate not yet written, for sizing the next buffer.
    remaining_bytes: usize,
    remaining_entries: usize,
}

impl LeafBuilder {
    /// A builder for about `total_bytes` of entries in `total_entries` entries.
    pub(super) fn new(total_bytes: usize, total_entries: usize) -> LeafBuilder {
        let pieces = total_bytes.div_ceil(LEAF_MAX_BYTES).max(1);
        let mut b = LeafBuilder {
            out: Vec::new(),
            data: Vec::new(),
            offsets: Vec::with_capacity(total_entries.min(1 << 16)),
            start: None,
            first: true,
            piece_bytes: total_bytes.div_ceil(pieces).max(1),
            remaining_bytes: total_bytes,
            remaining_entries: total_entries,
        };
        b.data = b.next_buffer();
        b
    }

    /// A buffer for the next leaf: exact if the rest fits in one piece.
    fn next_buffer(&self) -> Vec<u8> {
        let trailer = |entries: usize| 4 * entries + 4;
        if self.remaining_bytes <= self.piece_bytes + self.piece_bytes / 4 {
            Vec::with_capacity(self.remaining_bytes + trailer(self.remaining_entries))
        } else {
            let share = self.piece_bytes + self.piece_bytes / 4;
            let entries = self.remaining_entries * share / self.remaining_bytes.max(1) + 1;
            Vec::with_capacity(share + trailer(entries))
        }
    }

    /// Appends an entry (in map order), first cutting a leaf if this one is full and
    /// `e` starts a new key: versions of one key are never split between leaves.
    pub(super) fn push(&mut self, e: &[u8]) {
        if self.data.len() >= self.piece_bytes {
            let key = key_of(e);
            let same_key =
                self.offsets.last().is_some_and(|&o| key_of(&self.data[o as usize..]) == key);
            if !same_key {
                self.cut();
                self.start = Some(key.to_vec());
            }
        }
        // Leaf offsets are u32: a leaf holds at most a few entries beyond its target,
        // and an entry at most the engine's value limit (below 2 GiB).
        self.offsets.push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
        self.data.extend_from_slice(e);
    }

    /// Appends a put of `key` at `seq` whose key and value come encoded as `pair` (see
    /// [`encoded_pair`]): the entry is its sequence word and a copy of `pair`.
    pub(super) fn push_encoded_put(&mut self, seq: u64, key: &[u8], pair: &[u8]) {
        if self.data.len() >= self.piece_bytes {
            let same_key =
                self.offsets.last().is_some_and(|&o| key_of(&self.data[o as usize..]) == key);
            if !same_key {
                self.cut();
                self.start = Some(key.to_vec());
            }
        }
        self.offsets.push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
        self.data.extend_from_slice(&((seq << 8) | u64::from(KIND_PUT)).to_le_bytes());
        self.data.extend_from_slice(pair);
    }

    /// Appends the old leaf's entries `from..to` (whole keys, in map order): one copy
    /// when they fit in the current leaf, entry by entry otherwise.
    pub(super) fn push_run(&mut self, leaf: &Leaf, from: usize, to: usize) {
        if from >= to {
            return;
        }
        let offsets = leaf.data_len();
        let off =
            |i: usize| if i < leaf.len() { u32_at(&leaf.buf, offsets + 4 * i) } else { offsets };
        let (start, end) = (off(from), off(to));
        if self.data.len() + (end - start) > self.piece_bytes {
            for x in from..to {
                self.push(leaf.entry(x));
            }
            return;
        }
        // Offsets in the new leaf: shifted by where the run lands.
        let shift = self.data.len().wrapping_sub(start);
        for x in from..to {
            let o = off(x).wrapping_add(shift);
            self.offsets.push(u32::try_from(o).unwrap_or(u32::MAX));
        }
        self.data.extend_from_slice(&leaf.buf[start..end]);
    }

    fn cut(&mut self) {
        self.cut_then(true);
    }

    /// Finishes the leaf being built; `more`: another follows (its buffer is sized
    /// now), else this is the last.
    fn cut_then(&mut self, more: bool) {
        let n = self.offsets.len();
        self.remaining_bytes = self.remaining_bytes.saturating_sub(self.data.len());
        self.remaining_entries = self.remaining_entries.saturating_sub(n);
        let next = if more { self.next_buffer() } else { Vec::new() };
        let mut buf = std::mem::replace(&mut self.data, next);
        for o in &self.offsets {
            buf.extend_from_slice(&o.to_le_bytes());
        }
        // Leaves hold far fewer than 2^32 entries (a few KiB of them).
        buf.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        let leaf = Leaf { buf: buf.into_boxed_slice() };
        self.offsets.clear();
        let start = if self.first { None } else { self.start.take() };
        self.first = false;
        self.out.push((start, leaf));
    }

    pub(super) fn finish(mut self) -> Vec<(Option<Vec<u8>>, Leaf)> {
        if self.first || !self.offsets.is_empty() {
            self.remaining_bytes = 0;
            self.remaining_entries = 0;
            self.cut_then(false);
        }
        self.out
    }
}
