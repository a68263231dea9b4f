//! Duplication, the follower side's engine part: each follower region's "sink" state
//! (ARCHITECTURE.md, "Duplication (follower side: the sink)"): per duplication and
//! source region, which parts of the region's key range were applied from the source's
//! log up to which source index (the marks), and whether a seed is being loaded.
//!
//! The state is replicated: the Raft layer changes it only by applying a `SINK` command
//! (every replica at the same index, from the command and this state only), in the same
//! apply step as the data the command writes, between rounds; the engine carries it in
//! every image of the region (checkpoint format 5, header field 7) at exactly the
//! image's applied index. So after a crash a replica's marks and data are those of one
//! index, and a source op is applied at most once (`source_index > mark`).
//!
//! Each entry is encoded behind its own format byte:
//!
//! ```text
//!  entry (format 1)
//!  | format u8 = 1 | TLV:
//!    1 dup id u64               2 source region u64        3 incarnation u64 (a u32)
//!    4 seed id u64 (optional: present while a seed is loading)
//!    5 piece (nested, repeated, sorted, disjoint):
//!        1 start bytes   2 end bytes | 3 unbounded end (empty)   4 mark u64
//!
//!  table (checkpoint header field 7)
//!    1 entry (nested, repeated): 1 dup id u64, 2 source region u64, 3 entry bytes
//! ```
//!
//! Unknown tags are skipped; a missing required field is corruption. An entry whose
//! format byte is above [`SINK_FORMAT_MAX_READ`] is kept byte for byte and never
//! decoded ([`SinkSlot::Unreadable`]): its duplication is frozen (every `SINK` command
//! of that duplication is refused, the entry is never dropped, not even by a promote),
//! and since its pieces are unknown it covers the whole region for the standby check.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use crate::region::{in_range, intersect};
use crate::txn::Unreadable;

/// The format of the entries this binary writes.
pub const SINK_FORMAT: u8 = 1;
/// The newest entry format this binary decodes.
pub const SINK_FORMAT_MAX_READ: u8 = 1;

const E_DUP_ID: u16 = 1;
const E_SOURCE_REGION: u16 = 2;
const E_INCARNATION: u16 = 3;
const E_SEED_ID: u16 = 4;
const E_PIECE: u16 = 5;
const ENTRY_TAGS: &[u16] = &[E_DUP_ID, E_SOURCE_REGION, E_INCARNATION, E_SEED_ID, E_PIECE];
const P_START: u16 = 1;
const P_END: u16 = 2;
const P_UNBOUNDED: u16 = 3;
const P_MARK: u16 = 4;
const T_ENTRY: u16 = 1;
const TE_DUP_ID: u16 = 1;
const TE_SOURCE_REGION: u16 = 2;
const TE_BYTES: u16 = 3;

/// A key range `[start, end)`; `end: None` is unbounded.
pub type KeyRange = (Vec<u8>, Option<Vec<u8>>);

/// Part of a follower region applied from a source region's log up to `mark`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkPiece {
    /// First key.
    pub start: Vec<u8>,
    /// End (exclusive); `None`: unbounded.
    pub end: Option<Vec<u8>>,
    /// The source index up to which every op of the source region on these keys is
    /// applied here (0: none yet).
    pub mark: u64,
}

impl SinkPiece {
    fn range(&self) -> (&[u8], Option<&[u8]>) {
        (&self.start, self.end.as_deref())
    }

    fn with(start: &[u8], end: Option<&[u8]>, mark: u64) -> SinkPiece {
        SinkPiece { start: start.to_vec(), end: end.map(<[u8]>::to_vec), mark }
    }
}

/// One duplication's sink state for one source region, in one follower region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkEntry {
    /// The duplication.
    pub dup_id: u64,
    /// The source cluster's region whose log this applies.
    pub source_region: u64,
    /// The duplication's incarnation (a reseed raises it).
    pub incarnation: u32,
    /// The seed being loaded; `None` once loaded (or never seeded: streaming only).
    pub seed_id: Option<u64>,
    /// Sorted, disjoint, inside the follower region.
    pub pieces: Vec<SinkPiece>,
}

impl SinkEntry {
    /// The mark of the piece holding `key`; 0 if none does.
    pub fn mark_of(&self, key: &[u8]) -> u64 {
        self.piece_of(key).map_or(0, |p| p.mark)
    }

    /// The piece holding `key`.
    pub fn piece_of(&self, key: &[u8]) -> Option<&SinkPiece> {
        let after = self.pieces.partition_point(|p| p.start.as_slice() <= key);
        let piece = &self.pieces[after.checked_sub(1)?];
        in_range(key, &piece.start, piece.end.as_deref()).then_some(piece)
    }

    /// True if a piece holds `key`.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.piece_of(key).is_some()
    }

    /// Raises the mark of every part of `[start, end)` to at least `upto`; parts no
    /// piece held get `upto`. Adjacent pieces of one mark are joined.
    pub fn raise(&mut self, start: &[u8], end: Option<&[u8]>, upto: u64) {
        let mut out = Vec::with_capacity(self.pieces.len() + 2);
        let mut inside = Vec::new();
        for p in &self.pieces {
            out.extend(subtract(p, start, end));
            if let Some((s, e)) = intersect(p.range(), (start, end)) {
                inside.push(SinkPiece::with(s, e, p.mark.max(upto)));
            }
        }
        // The gaps of the range between the pieces inside it.
        let mut cursor = Some(start.to_vec());
        for p in &inside {
            if let Some(c) = &cursor
                && c.as_slice() < p.start.as_slice()
            {
                out.push(SinkPiece { start: c.clone(), end: Some(p.start.clone()), mark: upto });
            }
            cursor.clone_from(&p.end);
        }
        if let Some(c) = cursor
            && end.is_none_or(|e| c.as_slice() < e)
        {
            out.push(SinkPiece { start: c, end: end.map(<[u8]>::to_vec), mark: upto });
        }
        out.extend(inside);
        self.pieces = coalesce(out);
    }

    /// The entry with its pieces clipped to `[start, end)` (those outside dropped).
    #[must_use]
    pub fn clipped(&self, start: &[u8], end: Option<&[u8]>) -> SinkEntry {
        let pieces = (self.pieces.iter())
            .filter_map(|p| intersect(p.range(), (start, end)).map(|(s, e)| (s, e, p.mark)))
            .map(|(s, e, mark)| SinkPiece::with(s, e, mark))
            .collect();
        SinkEntry { pieces, ..self.clone() }
    }

    /// The entry's bytes: format byte, then TLV.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SINK_FORMAT];
        codec::put_u64(&mut out, E_DUP_ID, self.dup_id);
        codec::put_u64(&mut out, E_SOURCE_REGION, self.source_region);
        codec::put_u64(&mut out, E_INCARNATION, u64::from(self.incarnation));
        if let Some(seed) = self.seed_id {
            codec::put_u64(&mut out, E_SEED_ID, seed);
        }
        for p in &self.pieces {
            codec::put_nested(&mut out, E_PIECE, |out| {
                codec::put_field(out, P_START, &p.start);
                codec::put_range_end(out, P_END, P_UNBOUNDED, p.end.as_deref());
                codec::put_u64(out, P_MARK, p.mark);
            });
        }
        out
    }

    /// Decodes an entry, its format byte checked first; never panics.
    pub fn decode(bytes: &[u8]) -> Result<SinkEntry, Unreadable> {
        let body = match bytes.split_first() {
            None => return Err(Unreadable::Corrupt(DecodeError::new(0, "empty sink entry"))),
            Some((&0, _)) => {
                return Err(Unreadable::Corrupt(DecodeError::new(0, "sink entry format 0")));
            }
            Some((&format, _)) if format > SINK_FORMAT_MAX_READ => {
                return Err(Unreadable::TooNew { format });
            }
            Some((_, body)) => body,
        };
        decode_body(body).map_err(|e| Unreadable::Corrupt(e.shifted(1)))
    }
}

/// The parts of `p` outside `[start, end)`.
fn subtract(p: &SinkPiece, start: &[u8], end: Option<&[u8]>) -> Vec<SinkPiece> {
    let mut out = Vec::new();
    if p.start.as_slice() < start {
        let left_end = match p.end.as_deref() {
            Some(e) if e <= start => e,
            _ => start,
        };
        out.push(SinkPiece::with(&p.start, Some(left_end), p.mark));
    }
    if let Some(e) = end
        && p.end.as_deref().is_none_or(|pe| e < pe)
    {
        let right_start = e.max(p.start.as_slice());
        out.push(SinkPiece::with(right_start, p.end.as_deref(), p.mark));
    }
    out
}

/// Sorts disjoint pieces and joins adjacent ones of one mark.
fn coalesce(mut pieces: Vec<SinkPiece>) -> Vec<SinkPiece> {
    pieces.retain(|p| p.end.as_deref().is_none_or(|e| p.start.as_slice() < e));
    pieces.sort_by(|a, b| a.start.cmp(&b.start));
    let mut out: Vec<SinkPiece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match out.last_mut() {
            Some(last)
                if last.mark == p.mark && last.end.as_deref() == Some(p.start.as_slice()) =>
            {
                last.end = p.end;
            }
            _ => out.push(p),
        }
    }
    out
}

fn decode_body(body: &[u8]) -> DecodeResult<SinkEntry> {
    let rec = TlvRecord::parse(body, ENTRY_TAGS, UnknownTags::Skip)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let incarnation = u32::try_from(u64_of(E_INCARNATION, "sink incarnation")?)
        .map_err(|_| DecodeError::new(0, "sink incarnation above u32"))?;
    let seed_id = rec.optional(E_SEED_ID)?.map(|f| f.as_u64()).transpose()?;
    let mut pieces: Vec<SinkPiece> = Vec::new();
    for field in rec.repeated(E_PIECE) {
        let at = |e: DecodeError| e.shifted(field.offset);
        let p = TlvRecord::parse(
            field.value,
            &[P_START, P_END, P_UNBOUNDED, P_MARK],
            UnknownTags::Skip,
        )
        .map_err(at)?;
        let start = p.required(P_START, "piece start").map_err(at)?.value.to_vec();
        let end = codec::range_end(&p, P_END, P_UNBOUNDED).map_err(at)?;
        let mark = p.required(P_MARK, "piece mark").and_then(|f| f.as_u64()).map_err(at)?;
        if end.as_deref().is_some_and(|e| e <= start.as_slice()) {
            return Err(at(DecodeError::new(0, "empty sink piece")));
        }
        if let Some(last) = pieces.last()
            && last.end.as_deref().is_none_or(|e| e > start.as_slice())
        {
            return Err(at(DecodeError::new(0, "sink pieces unsorted or overlapping")));
        }
        pieces.push(SinkPiece { start, end, mark });
    }
    Ok(SinkEntry {
        dup_id: u64_of(E_DUP_ID, "sink dup id")?,
        source_region: u64_of(E_SOURCE_REGION, "sink source region")?,
        incarnation,
        seed_id,
        pieces,
    })
}

/// One entry of a region's sink table: decoded, or of a format this binary cannot
/// read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSlot {
    /// Decoded.
    Known(SinkEntry),
    /// Of a newer format, kept byte for byte: its duplication is frozen.
    Unreadable(Bytes),
}

impl SinkSlot {
    fn encoded(&self) -> Bytes {
        match self {
            SinkSlot::Known(e) => Bytes::from(e.encode()),
            SinkSlot::Unreadable(b) => b.clone(),
        }
    }
}

/// A follower region's sink state: one entry per (duplication, source region).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkTable {
    entries: BTreeMap<(u64, u64), SinkSlot>,
}

impl SinkTable {
    /// True if the region sinks no duplication.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry of `(dup_id, source_region)`.
    pub fn get(&self, dup_id: u64, source_region: u64) -> Option<&SinkSlot> {
        self.entries.get(&(dup_id, source_region))
    }

    /// Every entry, by (duplication, source region).
    pub fn iter(&self) -> impl Iterator<Item = ((u64, u64), &SinkSlot)> {
        self.entries.iter().map(|(k, e)| (*k, e))
    }

    /// Sets (adds or replaces) the entry of `(entry.dup_id, entry.source_region)`.
    pub fn set(&mut self, entry: SinkEntry) {
        self.entries.insert((entry.dup_id, entry.source_region), SinkSlot::Known(entry));
    }

    /// Drops every entry of duplication `dup_id`; returns how many.
    pub fn remove_dup(&mut self, dup_id: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(d, _), _| *d != dup_id);
        before - self.entries.len()
    }

    /// True if an entry of duplication `dup_id` is of a format this binary cannot
    /// read: every command of that duplication is refused.
    pub fn is_frozen(&self, dup_id: u64) -> bool {
        (self.entries.range((dup_id, 0)..=(dup_id, u64::MAX)))
            .any(|(_, e)| matches!(e, SinkSlot::Unreadable(_)))
    }

    /// The mark of `key` for `(dup_id, source_region)`: its piece's, 0 if none.
    pub fn mark_of(&self, dup_id: u64, source_region: u64, key: &[u8]) -> u64 {
        match self.get(dup_id, source_region) {
            Some(SinkSlot::Known(e)) => e.mark_of(key),
            _ => 0,
        }
    }

    /// The duplication whose sink holds `key` (the key is a read-only standby), if
    /// any: an entry with a piece holding it, or an unreadable entry (its pieces are
    /// unknown: it holds every key).
    pub fn standby_of(&self, key: &[u8]) -> Option<u64> {
        self.entries.iter().find_map(|((dup, _), e)| match e {
            SinkSlot::Known(entry) => entry.covers(key).then_some(*dup),
            SinkSlot::Unreadable(_) => Some(*dup),
        })
    }

    /// The table a part `[start, end)` of a split gets: every entry with its pieces
    /// clipped to the part (those outside dropped). An entry left with no piece is
    /// dropped unless it is loading a seed (its seed id still decides which chunks
    /// apply); an unreadable entry is copied whole.
    #[must_use]
    pub fn restricted(&self, start: &[u8], end: Option<&[u8]>) -> SinkTable {
        let entries = (self.entries.iter())
            .filter_map(|(k, slot)| {
                let slot = match slot {
                    SinkSlot::Known(e) => {
                        let c = e.clipped(start, end);
                        if c.pieces.is_empty() && c.seed_id.is_none() {
                            return None;
                        }
                        SinkSlot::Known(c)
                    }
                    unreadable @ SinkSlot::Unreadable(_) => unreadable.clone(),
                };
                Some((*k, slot))
            })
            .collect();
        SinkTable { entries }
    }

    /// Takes in the table of a merged neighbour (its range disjoint from this one's).
    /// Per (duplication, source region): an entry only one side has is kept; two of
    /// one incarnation become one with both sides' pieces (concatenated: each side's
    /// keys keep their own marks; a `max` would skip ops one side had not applied, a
    /// `min` would replay ops over newer ones), the seed id this side's if it has one,
    /// else the other's; two of different incarnations keep the higher one's entry
    /// and drop the lower one's pieces (that range is reseeded by the new incarnation).
    /// An unreadable entry is kept over a readable one (never dropped).
    pub fn merge_from(&mut self, other: &SinkTable) {
        for (k, theirs) in &other.entries {
            let merged = match (self.entries.remove(k), theirs) {
                (None | Some(SinkSlot::Known(_)), t @ SinkSlot::Unreadable(_)) | (None, t) => {
                    t.clone()
                }
                (Some(mine @ SinkSlot::Unreadable(_)), _) => mine,
                (Some(SinkSlot::Known(mut mine)), SinkSlot::Known(t)) => {
                    match mine.incarnation.cmp(&t.incarnation) {
                        std::cmp::Ordering::Equal => {
                            mine.pieces.extend(t.pieces.iter().cloned());
                            mine.pieces = coalesce(std::mem::take(&mut mine.pieces));
                            mine.seed_id = mine.seed_id.or(t.seed_id);
                            SinkSlot::Known(mine)
                        }
                        std::cmp::Ordering::Greater => SinkSlot::Known(mine),
                        std::cmp::Ordering::Less => SinkSlot::Known(t.clone()),
                    }
                }
            };
            self.entries.insert(*k, merged);
        }
    }

    /// Bytes [`SinkTable::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.entries.values().map(|e| 4 * codec::FIELD_HEADER_LEN + 16 + e.encoded().len()).sum()
    }

    /// Writes the table's fields (see the module docs).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for ((dup, source), entry) in &self.entries {
            codec::put_nested(out, T_ENTRY, |out| {
                codec::put_u64(out, TE_DUP_ID, *dup);
                codec::put_u64(out, TE_SOURCE_REGION, *source);
                codec::put_field(out, TE_BYTES, &entry.encoded());
            });
        }
    }

    /// Reads a table. An entry of a readable format must decode and name the key it
    /// is filed under (else the table is corrupt); one of a newer format is kept.
    pub fn decode(buf: &[u8]) -> DecodeResult<SinkTable> {
        let rec = TlvRecord::parse(buf, &[T_ENTRY], UnknownTags::Skip)?;
        let mut entries = BTreeMap::new();
        for field in rec.repeated(T_ENTRY) {
            let at = |e: DecodeError| e.shifted(field.offset);
            let tags = &[TE_DUP_ID, TE_SOURCE_REGION, TE_BYTES];
            let e = TlvRecord::parse(field.value, tags, UnknownTags::Skip).map_err(at)?;
            let u64_of = |tag, what| e.required(tag, what).and_then(|f| f.as_u64()).map_err(at);
            let key = (
                u64_of(TE_DUP_ID, "sink entry dup")?,
                u64_of(TE_SOURCE_REGION, "sink entry source")?,
            );
            let bytes = e.required(TE_BYTES, "sink entry bytes").map_err(at)?;
            let slot = match SinkEntry::decode(bytes.value) {
                Ok(entry) if (entry.dup_id, entry.source_region) == key => SinkSlot::Known(entry),
                Ok(_) => return Err(at(DecodeError::new(0, "sink entry filed under another key"))),
                Err(Unreadable::TooNew { .. }) => {
                    SinkSlot::Unreadable(Bytes::copy_from_slice(bytes.value))
                }
                Err(Unreadable::Corrupt(e)) => return Err(at(e.shifted(bytes.offset))),
            };
            if entries.insert(key, slot).is_some() {
                return Err(at(DecodeError::new(0, "two sink entries of one key")));
            }
        }
        Ok(SinkTable { entries })
    }

    /// Takes in `other`'s entries in `[start, end)` only (loading a region's image
    /// made of several files: each part's range of its file's table).
    pub(crate) fn join_part(&mut self, other: &SinkTable, start: &[u8], end: Option<&[u8]>) {
        self.merge_from(&other.restricted(start, end));
    }
}

#[cfg(test)]
mod tests;
