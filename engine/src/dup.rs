//! Duplication, the engine's part: each region's duplication state (one entry per
//! duplication of the region's keys to another cluster), its on-disk format, and how
//! it moves with split and merge (ARCHITECTURE.md, "Duplication").
//!
//! The state is replicated: the Raft layer changes it only by applying a `DUP` command
//! (every replica at the same index, from the command and this state only), and the
//! engine carries it in every image of the region (checkpoint format 4, header field 6)
//! at exactly the image's applied index. Everything a stage needs to resume is in the
//! entry that holds the stage: `min_ckpt_index` is the index of the command that
//! started the duplication, decided once by the log and never recomputed.
//!
//! Each entry is encoded behind its own format byte:
//!
//! ```text
//!  entry (format 1)
//!  | format u8 = 1 | TLV:
//!    1 dup id u64                 2 incarnation u64 (a u32)
//!    3 stage u64 (1 prepare, 2 seeding, 3 streaming; 0 and unknown codes: unspecified)
//!    4 min ckpt index u64         5 seed index u64 (optional)
//!    6 confirmed u64 (optional)   7 depends on (nested, repeated: 1 region u64, 2 index u64)
//!    8 started at index u64
//!    9 fence (nested, optional; written from cluster version 8 only):
//!        1 range start   2 range end  or  3 range end unbounded (empty)   4 at index u64
//!
//!  table (checkpoint header field 6, and a status report's dup field)
//!    1 entry (nested, repeated): 1 dup id u64, 2 entry bytes (as above)
//! ```
//!
//! Unknown tags are skipped; a missing required field is corruption. An entry whose
//! format byte is above [`DUP_FORMAT_MAX_READ`] is kept byte for byte and never decoded
//! ([`DupEntry::Unreadable`]): it holds the region's log whole (floor 0) and freezes the
//! region's duplication state (no command changes it, no split or merge). A stage code
//! this binary does not know decodes as [`DupStage::Unspecified`]: that entry is frozen,
//! holds its floor at `min_ckpt_index`, and is never advanced or released except by an
//! explicit stop.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use crate::region::RegionId;
use crate::txn::Unreadable;

/// The format of the entries this binary writes.
pub const DUP_FORMAT: u8 = 1;
/// The newest entry format this binary decodes.
pub const DUP_FORMAT_MAX_READ: u8 = 1;

const E_DUP_ID: u16 = 1;
const E_INCARNATION: u16 = 2;
const E_STAGE: u16 = 3;
const E_MIN_CKPT_INDEX: u16 = 4;
const E_SEED_INDEX: u16 = 5;
const E_CONFIRMED: u16 = 6;
const E_DEPENDS_ON: u16 = 7;
const E_STARTED_AT: u16 = 8;
const E_FENCE: u16 = 9;
const FENCE_START: u16 = 1;
const FENCE_END: u16 = 2;
const FENCE_END_UNBOUNDED: u16 = 3;
const FENCE_AT: u16 = 4;
const ENTRY_TAGS: &[u16] = &[
    E_DUP_ID,
    E_INCARNATION,
    E_STAGE,
    E_MIN_CKPT_INDEX,
    E_SEED_INDEX,
    E_CONFIRMED,
    E_DEPENDS_ON,
    E_STARTED_AT,
    E_FENCE,
];
const DEP_REGION: u16 = 1;
const DEP_INDEX: u16 = 2;
const T_ENTRY: u16 = 1;
const TE_DUP_ID: u16 = 1;
const TE_BYTES: u16 = 2;

/// Where one duplication of a region stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DupStage {
    /// Code 0, or a code this binary does not know: the entry is frozen.
    Unspecified,
    /// Started: the log after `min_ckpt_index` is kept until an image is chosen.
    Prepare,
    /// An image at `seed_index` is being shipped.
    Seeding,
    /// The log after `confirmed` is being shipped.
    Streaming,
}

impl DupStage {
    /// The stage's code on disk.
    pub fn code(self) -> u64 {
        match self {
            DupStage::Unspecified => 0,
            DupStage::Prepare => 1,
            DupStage::Seeding => 2,
            DupStage::Streaming => 3,
        }
    }

    /// The stage of a code; an unknown code is `Unspecified`.
    pub fn from_code(code: u64) -> DupStage {
        match code {
            1 => DupStage::Prepare,
            2 => DupStage::Seeding,
            3 => DupStage::Streaming,
            _ => DupStage::Unspecified,
        }
    }
}

/// One duplication's state in one region (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDupState {
    /// The duplication (allocated by the cluster, never reused).
    pub dup_id: u64,
    /// Raised by every reseed; commands of an older incarnation are refused.
    pub incarnation: u32,
    /// Where it stands.
    pub stage: DupStage,
    /// The Raft index of the command that started it (>= 1): the image shipped is at
    /// or after it, so the log after it is kept.
    pub min_ckpt_index: u64,
    /// The index of the image being shipped (set by `Seeded`); `None` before.
    pub seed_index: Option<u64>,
    /// The index up to which the other cluster confirmed this region's log; `None`
    /// before streaming.
    pub confirmed: Option<u64>,
    /// Regions whose log this region's stream waits for: (region, the index of it that
    /// must be confirmed first): the parent of a split, the source of a merge.
    pub depends_on: Vec<(RegionId, u64)>,
    /// The index of the command that created the entry (its own `Start`, the split or
    /// the merge that gave it to this region).
    pub started_at_index: u64,
    /// The cutover's fence (`None`: not fenced): from it on, the region refuses client
    /// writes to keys of the duplicated range, so the log up to it is all the follower
    /// misses.
    pub fence: Option<DupFence>,
}

/// A cutover's fence in one region: the duplicated range (whole, not clipped to the
/// region, so split children and merged regions keep it as is) and the index of the
/// `Fence` command that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DupFence {
    /// The duplicated range's first key.
    pub start: Vec<u8>,
    /// The key past the duplicated range (`None`: unbounded).
    pub end: Option<Vec<u8>>,
    /// The index of the `Fence` command: no client write to the range applies after it.
    pub at_index: u64,
}

impl DupFence {
    /// True if the fence holds `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

impl RegionDupState {
    /// The lowest index whose log this entry still needs kept after it: compaction of
    /// the region's log stops at it.
    pub fn floor(&self) -> u64 {
        match self.stage {
            DupStage::Prepare | DupStage::Unspecified => self.min_ckpt_index,
            DupStage::Seeding => self.seed_index.unwrap_or(self.min_ckpt_index),
            DupStage::Streaming => self.confirmed.unwrap_or(self.min_ckpt_index),
        }
    }

    /// True if the entry is frozen: its stage is one this binary does not know.
    pub fn is_frozen(&self) -> bool {
        self.stage == DupStage::Unspecified
    }

    /// The entry's bytes: format byte, then TLV.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 * (codec::FIELD_HEADER_LEN + 8));
        out.push(DUP_FORMAT);
        codec::put_u64(&mut out, E_DUP_ID, self.dup_id);
        codec::put_u64(&mut out, E_INCARNATION, u64::from(self.incarnation));
        codec::put_u64(&mut out, E_STAGE, self.stage.code());
        codec::put_u64(&mut out, E_MIN_CKPT_INDEX, self.min_ckpt_index);
        if let Some(seed) = self.seed_index {
            codec::put_u64(&mut out, E_SEED_INDEX, seed);
        }
        if let Some(confirmed) = self.confirmed {
            codec::put_u64(&mut out, E_CONFIRMED, confirmed);
        }
        for (region, index) in &self.depends_on {
            codec::put_nested(&mut out, E_DEPENDS_ON, |out| {
                codec::put_u64(out, DEP_REGION, region.0);
                codec::put_u64(out, DEP_INDEX, *index);
            });
        }
        codec::put_u64(&mut out, E_STARTED_AT, self.started_at_index);
        if let Some(fence) = &self.fence {
            codec::put_nested(&mut out, E_FENCE, |out| {
                codec::put_field(out, FENCE_START, &fence.start);
                codec::put_range_end(out, FENCE_END, FENCE_END_UNBOUNDED, fence.end.as_deref());
                codec::put_u64(out, FENCE_AT, fence.at_index);
            });
        }
        out
    }

    /// Decodes an entry, its format byte checked first; never panics.
    pub fn decode(bytes: &[u8]) -> Result<RegionDupState, Unreadable> {
        let body = match bytes.split_first() {
            None => return Err(Unreadable::Corrupt(DecodeError::new(0, "empty dup entry"))),
            Some((&0, _)) => {
                return Err(Unreadable::Corrupt(DecodeError::new(0, "dup entry format 0")));
            }
            Some((&format, _)) if format > DUP_FORMAT_MAX_READ => {
                return Err(Unreadable::TooNew { format });
            }
            Some((_, body)) => body,
        };
        decode_body(body).map_err(|e| Unreadable::Corrupt(e.shifted(1)))
    }
}

fn decode_body(body: &[u8]) -> DecodeResult<RegionDupState> {
    let rec = TlvRecord::parse(body, ENTRY_TAGS, UnknownTags::Skip)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let optional = |tag| rec.optional(tag).and_then(|f| f.map(|f| f.as_u64()).transpose());
    let incarnation = u32::try_from(u64_of(E_INCARNATION, "dup incarnation")?)
        .map_err(|_| DecodeError::new(0, "dup incarnation above u32"))?;
    let mut depends_on = Vec::new();
    for dep in rec.repeated(E_DEPENDS_ON) {
        let at = |e: DecodeError| e.shifted(dep.offset);
        let d =
            TlvRecord::parse(dep.value, &[DEP_REGION, DEP_INDEX], UnknownTags::Skip).map_err(at)?;
        let region = d.required(DEP_REGION, "dependency region").and_then(|f| f.as_u64());
        let index = d.required(DEP_INDEX, "dependency index").and_then(|f| f.as_u64());
        depends_on.push((RegionId(region.map_err(at)?), index.map_err(at)?));
    }
    Ok(RegionDupState {
        dup_id: u64_of(E_DUP_ID, "dup id")?,
        incarnation,
        stage: DupStage::from_code(u64_of(E_STAGE, "dup stage")?),
        min_ckpt_index: u64_of(E_MIN_CKPT_INDEX, "dup min ckpt index")?,
        seed_index: optional(E_SEED_INDEX)?,
        confirmed: optional(E_CONFIRMED)?,
        depends_on,
        started_at_index: u64_of(E_STARTED_AT, "dup started at index")?,
        fence: rec.optional(E_FENCE)?.map(decode_fence).transpose()?,
    })
}

fn decode_fence(field: codec::Field<'_>) -> DecodeResult<DupFence> {
    let at = |e: DecodeError| e.shifted(field.offset);
    let f = TlvRecord::parse(
        field.value,
        &[FENCE_START, FENCE_END, FENCE_END_UNBOUNDED, FENCE_AT],
        UnknownTags::Skip,
    )
    .map_err(at)?;
    Ok(DupFence {
        start: f.required(FENCE_START, "fence start").map_err(at)?.value.to_vec(),
        end: codec::range_end(&f, FENCE_END, FENCE_END_UNBOUNDED).map_err(at)?,
        at_index: f.required(FENCE_AT, "fence index").and_then(|f| f.as_u64()).map_err(at)?,
    })
}

/// One entry of a region's table: decoded, or of a format this binary cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DupEntry {
    /// Decoded.
    Known(RegionDupState),
    /// Of a newer format, kept byte for byte: it holds the whole log (floor 0) and
    /// freezes the region's duplication state.
    Unreadable(Bytes),
}

impl DupEntry {
    /// The entry's floor (see [`RegionDupState::floor`]); 0 for an unreadable entry:
    /// what it needs is unknown, so nothing is compacted.
    pub fn floor(&self) -> u64 {
        match self {
            DupEntry::Known(state) => state.floor(),
            DupEntry::Unreadable(_) => 0,
        }
    }

    /// True if a split or merge of the region must wait: the entry is preparing or
    /// seeding (its image and stream cover the region as it is), frozen, unreadable,
    /// or fenced by a cutover (a split restarts the parts' entries at the split, which
    /// would count the log up to the fence as shipped before it is; a fenced range is
    /// retired, so it stays as it is).
    pub fn holds_topology(&self) -> bool {
        match self {
            DupEntry::Known(s) => s.stage != DupStage::Streaming || s.fence.is_some(),
            DupEntry::Unreadable(_) => true,
        }
    }

    fn encoded(&self) -> Bytes {
        match self {
            DupEntry::Known(state) => Bytes::from(state.encode()),
            DupEntry::Unreadable(bytes) => bytes.clone(),
        }
    }
}

/// A region's duplication state: one entry per duplication, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DupTable {
    entries: BTreeMap<u64, DupEntry>,
}

impl DupTable {
    /// True if the region takes part in no duplication.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many duplications the region takes part in.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry of duplication `dup_id`.
    pub fn get(&self, dup_id: u64) -> Option<&DupEntry> {
        self.entries.get(&dup_id)
    }

    /// Every entry, by duplication id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &DupEntry)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    /// Sets (adds or replaces) the entry of `state.dup_id`.
    pub fn set(&mut self, state: RegionDupState) {
        self.entries.insert(state.dup_id, DupEntry::Known(state));
    }

    /// Drops the entry of `dup_id`; returns it.
    pub fn remove(&mut self, dup_id: u64) -> Option<DupEntry> {
        self.entries.remove(&dup_id)
    }

    /// The lowest index whose log the region must keep after it (the smallest floor of
    /// its entries); `None` if it takes part in no duplication.
    pub fn floor(&self) -> Option<u64> {
        self.entries.values().map(DupEntry::floor).min()
    }

    /// True if an entry is of a format this binary cannot read: the table is frozen.
    pub fn is_frozen(&self) -> bool {
        self.entries.values().any(|e| matches!(e, DupEntry::Unreadable(_)))
    }

    /// The duplication whose cutover fence holds `key` (client writes to it are
    /// refused), if any.
    pub fn fenced_of(&self, key: &[u8]) -> Option<u64> {
        self.entries.iter().find_map(|(id, e)| match e {
            DupEntry::Known(s) if s.fence.as_ref().is_some_and(|f| f.contains(key)) => Some(*id),
            _ => None,
        })
    }

    /// The first duplication that holds splits and merges of the region back (see
    /// [`DupEntry::holds_topology`]), if any.
    pub fn holding_topology(&self) -> Option<u64> {
        self.entries.iter().find(|(_, e)| e.holds_topology()).map(|(id, _)| *id)
    }

    /// The table a child of a split gets: every streaming entry of this one (the
    /// parent's), restarted in the child's log at `child_index` (its first index),
    /// confirmed there, and depending on the parent's log up to `split_index`: the
    /// child's keys' older writes are in the parent's stream. Entries in any other
    /// stage are copied unchanged (the Raft layer refuses such a split).
    #[must_use]
    pub fn for_split_child(
        &self,
        parent: RegionId,
        split_index: u64,
        child_index: u64,
    ) -> DupTable {
        let entries = self
            .entries
            .iter()
            .map(|(id, entry)| {
                let entry = match entry {
                    DupEntry::Known(s) if s.stage == DupStage::Streaming => {
                        DupEntry::Known(RegionDupState {
                            dup_id: s.dup_id,
                            incarnation: s.incarnation,
                            stage: DupStage::Streaming,
                            min_ckpt_index: child_index,
                            seed_index: None,
                            confirmed: Some(child_index),
                            depends_on: vec![(parent, split_index)],
                            started_at_index: child_index,
                            fence: s.fence.clone(),
                        })
                    }
                    other => other.clone(),
                };
                (*id, entry)
            })
            .collect();
        DupTable { entries }
    }

    /// Takes in the table of a merge `source` (prepared at `prepare_index` of its log)
    /// as this region (the target) merges it at `merge_index` of its own log: an entry
    /// of a duplication both have keeps the target's stage and gains the dependency
    /// `(source, prepare_index)`; an entry only the source had comes over streaming,
    /// confirmed at `merge_index` of the target's log, with that dependency.
    pub fn merge_from(
        &mut self,
        from: &DupTable,
        source: RegionId,
        prepare_index: u64,
        merge_index: u64,
    ) {
        for (id, entry) in &from.entries {
            match (self.entries.get_mut(id), entry) {
                (Some(DupEntry::Known(mine)), source_entry) => {
                    mine.depends_on.push((source, prepare_index));
                    // A fence of either side holds the merged region's keys too.
                    if let (None, DupEntry::Known(s)) = (&mine.fence, source_entry) {
                        mine.fence.clone_from(&s.fence);
                    }
                }
                (Some(DupEntry::Unreadable(_)), _) => {}
                (None, DupEntry::Known(s)) => {
                    let moved = RegionDupState {
                        dup_id: s.dup_id,
                        incarnation: s.incarnation,
                        stage: DupStage::Streaming,
                        min_ckpt_index: merge_index,
                        seed_index: None,
                        confirmed: Some(merge_index),
                        depends_on: vec![(source, prepare_index)],
                        started_at_index: merge_index,
                        fence: s.fence.clone(),
                    };
                    self.entries.insert(*id, DupEntry::Known(moved));
                }
                (None, unreadable) => {
                    self.entries.insert(*id, unreadable.clone());
                }
            }
        }
    }

    /// Adds the entries of `other` whose duplication this table has none of (loading a
    /// region's image made of several files).
    pub(crate) fn join_missing(&mut self, other: &DupTable) {
        for (id, entry) in &other.entries {
            self.entries.entry(*id).or_insert_with(|| entry.clone());
        }
    }

    /// Bytes [`DupTable::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.entries.values().map(|e| 3 * codec::FIELD_HEADER_LEN + 8 + e.encoded().len()).sum()
    }

    /// Writes the table's fields (see the module docs).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for (id, entry) in &self.entries {
            codec::put_nested(out, T_ENTRY, |out| {
                codec::put_u64(out, TE_DUP_ID, *id);
                codec::put_field(out, TE_BYTES, &entry.encoded());
            });
        }
    }

    /// Reads a table. An entry of a readable format must decode and name the id it is
    /// filed under (else the table is corrupt); one of a newer format is kept as it is.
    pub fn decode(buf: &[u8]) -> DecodeResult<DupTable> {
        let rec = TlvRecord::parse(buf, &[T_ENTRY], UnknownTags::Skip)?;
        let mut entries = BTreeMap::new();
        for field in rec.repeated(T_ENTRY) {
            let at = |e: DecodeError| e.shifted(field.offset);
            let e = TlvRecord::parse(field.value, &[TE_DUP_ID, TE_BYTES], UnknownTags::Skip)
                .map_err(at)?;
            let id = e.required(TE_DUP_ID, "dup entry id").and_then(|f| f.as_u64()).map_err(at)?;
            let bytes = e.required(TE_BYTES, "dup entry bytes").map_err(at)?;
            let entry = match RegionDupState::decode(bytes.value) {
                Ok(state) if state.dup_id == id => DupEntry::Known(state),
                Ok(_) => return Err(at(DecodeError::new(0, "dup entry filed under another id"))),
                Err(Unreadable::TooNew { .. }) => {
                    DupEntry::Unreadable(Bytes::copy_from_slice(bytes.value))
                }
                Err(Unreadable::Corrupt(e)) => return Err(at(e.shifted(bytes.offset))),
            };
            if entries.insert(id, entry).is_some() {
                return Err(at(DecodeError::new(0, "two dup entries of one id")));
            }
        }
        Ok(DupTable { entries })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn state(stage: DupStage) -> RegionDupState {
        RegionDupState {
            dup_id: 9,
            incarnation: 2,
            stage,
            min_ckpt_index: 40,
            seed_index: Some(55),
            confirmed: Some(70),
            depends_on: vec![(RegionId(3), 12)],
            started_at_index: 40,
            fence: None,
        }
    }

    #[test]
    fn entries_round_trip_and_the_floor_follows_the_stage() {
        for (stage, floor) in [
            (DupStage::Prepare, 40),
            (DupStage::Seeding, 55),
            (DupStage::Streaming, 70),
            (DupStage::Unspecified, 40),
        ] {
            let s = state(stage);
            assert_eq!(RegionDupState::decode(&s.encode()).unwrap(), s);
            assert_eq!(s.floor(), floor, "{stage:?}");
        }
        // An unknown stage code decodes as Unspecified: frozen at min_ckpt_index.
        let mut bytes = state(DupStage::Prepare).encode();
        let at = bytes.windows(8).position(|w| w == 1u64.to_le_bytes()).unwrap();
        bytes[at] = 9;
        let s = RegionDupState::decode(&bytes).unwrap();
        assert!(s.is_frozen());
        assert_eq!(s.floor(), 40);
    }

    #[test]
    fn unknown_tags_are_skipped_and_newer_formats_are_kept_unread() {
        let mut bytes = state(DupStage::Seeding).encode();
        codec::put_u64(&mut bytes, 60, 1);
        assert_eq!(RegionDupState::decode(&bytes).unwrap(), state(DupStage::Seeding));
        let newer = Bytes::from_static(b"\x02from a newer binary");
        assert!(matches!(RegionDupState::decode(&newer), Err(Unreadable::TooNew { format: 2 })));
        let mut buf = Vec::new();
        codec::put_nested(&mut buf, T_ENTRY, |out| {
            codec::put_u64(out, TE_DUP_ID, 4);
            codec::put_field(out, TE_BYTES, &newer);
        });
        let table = DupTable::decode(&buf).unwrap();
        assert_eq!(table.get(4), Some(&DupEntry::Unreadable(newer)));
        assert!(table.is_frozen());
        assert_eq!(table.floor(), Some(0));
        let mut again = Vec::new();
        table.encode(&mut again);
        assert_eq!(again, buf, "kept byte for byte");
    }

    #[test]
    fn a_missing_required_field_or_a_mismatched_id_is_corrupt() {
        let mut bytes = vec![DUP_FORMAT];
        codec::put_u64(&mut bytes, E_DUP_ID, 1);
        assert!(matches!(RegionDupState::decode(&bytes), Err(Unreadable::Corrupt(_))));
        let mut buf = Vec::new();
        codec::put_nested(&mut buf, T_ENTRY, |out| {
            codec::put_u64(out, TE_DUP_ID, 5);
            codec::put_field(out, TE_BYTES, &state(DupStage::Prepare).encode());
        });
        assert!(DupTable::decode(&buf).is_err());
    }

    #[test]
    fn split_children_stream_from_their_first_index_and_merges_add_dependencies() {
        let mut parent = DupTable::default();
        parent.set(state(DupStage::Streaming));
        let child = parent.for_split_child(RegionId(1), 90, 5);
        let DupEntry::Known(c) = child.get(9).unwrap() else { panic!() };
        assert_eq!((c.stage, c.confirmed, c.min_ckpt_index), (DupStage::Streaming, Some(5), 5));
        assert_eq!(c.depends_on, vec![(RegionId(1), 90)]);
        assert_eq!(child.floor(), Some(5));
        // Merge: the target keeps its entry and depends on the source's prepare.
        let mut target = parent.clone();
        let mut source = DupTable::default();
        source.set(state(DupStage::Streaming));
        source.set(RegionDupState { dup_id: 11, ..state(DupStage::Streaming) });
        target.merge_from(&source, RegionId(2), 30, 100);
        let DupEntry::Known(t) = target.get(9).unwrap() else { panic!() };
        assert_eq!(t.confirmed, Some(70));
        assert_eq!(t.depends_on, vec![(RegionId(3), 12), (RegionId(2), 30)]);
        let DupEntry::Known(moved) = target.get(11).unwrap() else { panic!() };
        assert_eq!((moved.confirmed, moved.min_ckpt_index), (Some(100), 100));
        assert_eq!(moved.depends_on, vec![(RegionId(2), 30)]);
    }

    proptest! {
        #[test]
        fn damaged_tables_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DupTable::decode(&bytes);
            let _ = RegionDupState::decode(&bytes);
        }
    }

    #[test]
    fn a_fence_round_trips_in_its_golden_bytes_and_moves_with_split_and_merge() {
        let fence = DupFence { start: b"k".to_vec(), end: None, at_index: 77 };
        let fenced = RegionDupState { fence: Some(fence.clone()), ..state(DupStage::Streaming) };
        let bytes = fenced.encode();
        assert_eq!(RegionDupState::decode(&bytes).unwrap(), fenced);
        // Golden: the unfenced entry's bytes, then tag 9 holding 1 "k", 3 "", 4 77.
        let mut expect = state(DupStage::Streaming).encode();
        let field = |out: &mut Vec<u8>, tag: u16, v: &[u8]| {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&u32::try_from(v.len()).unwrap().to_le_bytes());
            out.extend_from_slice(v);
        };
        let mut inner = Vec::new();
        field(&mut inner, 1, b"k");
        field(&mut inner, 3, b"");
        field(&mut inner, 4, &77u64.to_le_bytes());
        field(&mut expect, 9, &inner);
        assert_eq!(bytes, expect);
        let mut table = DupTable::default();
        table.set(fenced.clone());
        assert_eq!(table.fenced_of(b"k"), Some(9));
        assert_eq!(table.fenced_of(b"zz"), Some(9));
        assert_eq!(table.fenced_of(b"a"), None);
        // A fenced region neither splits nor merges.
        assert_eq!(table.holding_topology(), Some(9));
        // Split children keep it; a merge keeps it whichever side held it.
        let child = table.for_split_child(RegionId(1), 90, 5);
        assert_eq!(child.fenced_of(b"m"), Some(9));
        let mut target = DupTable::default();
        target.set(state(DupStage::Streaming));
        assert_eq!(target.fenced_of(b"m"), None);
        target.merge_from(&table, RegionId(2), 100, 101);
        assert_eq!(target.fenced_of(b"m"), Some(9));
        let mut empty = DupTable::default();
        empty.merge_from(&table, RegionId(2), 100, 101);
        assert_eq!(empty.fenced_of(b"m"), Some(9));
    }
}
