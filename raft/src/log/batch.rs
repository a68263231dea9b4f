//! The WAL record of the Raft log: one batch of items from any number of regions.
//!
//! ```text
//!  0        1
//!  +--------+---------------------------------------------------------------+
//!  | format | TLV record (regionkv_engine::codec): items, in order           |
//!  | u8 = 2 |   tag 1 ENTRIES  (nested, repeated)                           |
//!  |        |     1 region u64, 2 first_index u64, 3 entry (nested, rep.):  |
//!  |        |       1 term u64, 2 kind u64, 3 data, 4 context               |
//!  |        |   tag 2 STATE    (nested, repeated)                           |
//!  |        |     1 region, 2 term, 3 vote, 4 commit, 5 conf state (nested: |
//!  |        |       1 voter, 2 learner, 3 outgoing voter, 4 next learner    |
//!  |        |       (all repeated u64), 5 auto_leave flag),                  |
//!  |        |     6 first_index, 7 truncated_term, 8 peer id, 9 conf index, |
//!  |        |     since format 2, optional: 10 id floor, 11 the index that  |
//!  |        |       set it, 12 votes-from index                             |
//!  |        |   tag 3 TOMBSTONE (nested, repeated): 1 region, since format  |
//!  |        |     2, optional: 2 version, 3 conf_ver (the destroyed epoch)  |
//!  +--------+---------------------------------------------------------------+
//! ```
//!
//! Format 1 had no optional fields; its records are read as format 2 records whose
//! optional fields are absent (`None`: unknown, never a default). Format 2 is what this
//! binary writes; a binary that reads only format 1 refuses it by its version byte.
//!
//! Items apply in record order, and records in WAL order: an ENTRIES item replaces
//! every entry of its region from `first_index` on (Raft overwrites an uncommitted
//! tail); a STATE item is the region's whole durable state (its hard state, conf state
//! and the compaction point); a TOMBSTONE removes the region's log. The WAL frames and
//! checksums each record; this format adds its version byte and bounds-checks every
//! field, so a record written by a newer version is refused, never guessed at.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{Epoch, RegionId};

/// The format this binary writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u8 = 2;
/// The oldest format this binary reads (migrated on read: see the module docs).
const OLDEST_FORMAT_VERSION: u8 = 1;

const ENTRIES: u16 = 1;
const STATE: u16 = 2;
const TOMBSTONE: u16 = 3;

const E_REGION: u16 = 1;
const E_FIRST_INDEX: u16 = 2;
const E_ENTRY: u16 = 3;

const ENTRY_TERM: u16 = 1;
const ENTRY_KIND: u16 = 2;
const ENTRY_DATA: u16 = 3;
const ENTRY_CONTEXT: u16 = 4;

const S_REGION: u16 = 1;
const S_TERM: u16 = 2;
const S_VOTE: u16 = 3;
const S_COMMIT: u16 = 4;
const S_CONF: u16 = 5;
const S_FIRST_INDEX: u16 = 6;
const S_TRUNCATED_TERM: u16 = 7;
const S_PEER_ID: u16 = 8;
const S_CONF_INDEX: u16 = 9;
// Since format 2, optional.
const S_ID_FLOOR: u16 = 10;
const S_ID_FLOOR_INDEX: u16 = 11;
const S_VOTES_FROM: u16 = 12;

const C_VOTER: u16 = 1;
const C_LEARNER: u16 = 2;
const C_VOTER_OUTGOING: u16 = 3;
const C_LEARNER_NEXT: u16 = 4;
const C_AUTO_LEAVE: u16 = 5;

const T_REGION: u16 = 1;
// Since format 2, optional.
const T_VERSION: u16 = 2;
const T_CONF_VER: u16 = 3;

/// A region's whole durable log state apart from its entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogState {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Voters and learners.
    pub conf_state: ConfState,
    /// The first index still in the log; everything below was compacted.
    pub first_index: u64,
    /// The term of entry `first_index - 1`.
    pub truncated_term: u64,
    /// This store's replica of the region (the Raft id).
    pub peer_id: u64,
    /// The index of the entry whose application produced `conf_state` (0: the initial
    /// configuration); replay never applies a conf change at or below it again.
    pub conf_index: u64,
    /// The lowest id a split of the region may give a new region, and the index of the
    /// split or merge that set it (`None`: never set; see `core/admin_apply.rs`,
    /// `check_split_ids`). Replicated state: every replica of the region sets it at
    /// the same index, a split child and a merged target inherit it, a snapshot carries
    /// it.
    pub id_floor: Option<IdFloor>,
    /// Set after a point-in-time cut of the WAL tail (which may have dropped this
    /// region's latest term and vote): the replica grants no vote and does not campaign
    /// until its commit index reached this index (`None`: it votes).
    pub votes_from: Option<u64>,
}

/// A region's id floor ([`LogState::id_floor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdFloor {
    /// Every id a split of the region gives a new region is at least this.
    pub next_id: u64,
    /// The Raft index of the split or merge that set it.
    pub set_at: u64,
}

/// Where an encoded entry sits inside a batch's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntrySpan {
    pub term: u64,
    /// Offset of the entry's nested record from the start of the payload.
    pub offset: u32,
    pub len: u32,
}

/// A batch being built by the writer.
#[derive(Debug)]
pub(crate) struct BatchEncoder {
    buf: Vec<u8>,
    /// Spans of the entries of each ENTRIES item, in the order they were added.
    spans: Vec<Vec<EntrySpan>>,
}

impl Default for BatchEncoder {
    fn default() -> Self {
        BatchEncoder { buf: vec![FORMAT_VERSION], spans: Vec::new() }
    }
}

/// Bytes an ENTRIES item adds to a record besides its entries: its field header, the
/// region and the first index.
pub(crate) const ENTRIES_ITEM_BYTES: usize = codec::FIELD_HEADER_LEN + 2 * U64_FIELD_BYTES;

/// Bytes of one `put_u64` field.
const U64_FIELD_BYTES: usize = codec::FIELD_HEADER_LEN + 8;

/// Bytes `e` takes inside an ENTRIES item (exact: `add_entries` checks it).
pub(crate) fn entry_encoded_len(e: &Entry) -> usize {
    let context = if e.context.is_empty() { 0 } else { codec::FIELD_HEADER_LEN + e.context.len() };
    2 * codec::FIELD_HEADER_LEN + 2 * U64_FIELD_BYTES + e.data.len() + context
}

/// A point of a [`BatchEncoder`] to go back to ([`BatchEncoder::rollback`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    bytes: usize,
    items: usize,
}

impl BatchEncoder {
    /// Bytes of the payload so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no item was added.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 1
    }

    /// The point to go back to if what is added next does not fit.
    pub fn mark(&self) -> Mark {
        Mark { bytes: self.buf.len(), items: self.spans.len() }
    }

    /// Forgets every item added since `mark`.
    pub fn rollback(&mut self, mark: Mark) {
        self.buf.truncate(mark.bytes);
        self.spans.truncate(mark.items);
    }

    /// Bytes a STATE item for `state` takes.
    pub fn state_len(region: RegionId, state: &LogState) -> usize {
        let mut scratch = BatchEncoder::default();
        scratch.add_state(region, state);
        scratch.len() - 1
    }

    /// Adds the entries of one region; they must be consecutive from their first index.
    pub fn add_entries(&mut self, region: RegionId, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        // One growth for the item, not one per field.
        self.buf.reserve(ENTRIES_ITEM_BYTES + entries.iter().map(entry_encoded_len).sum::<usize>());
        let mut spans = Vec::with_capacity(entries.len());
        let buf = &mut self.buf;
        codec::put_nested(buf, ENTRIES, |out| {
            codec::put_u64(out, E_REGION, region.0);
            codec::put_u64(out, E_FIRST_INDEX, first.index);
            for (i, e) in entries.iter().enumerate() {
                debug_assert_eq!(e.index, first.index + i as u64, "entries are consecutive");
                let at = out.len() + codec::FIELD_HEADER_LEN;
                codec::put_nested(out, E_ENTRY, |out| {
                    codec::put_u64(out, ENTRY_TERM, e.term);
                    codec::put_u64(out, ENTRY_KIND, e.get_entry_type() as u64);
                    codec::put_field(out, ENTRY_DATA, &e.data);
                    if !e.context.is_empty() {
                        codec::put_field(out, ENTRY_CONTEXT, &e.context);
                    }
                });
                let len = out.len() - at;
                debug_assert_eq!(len + codec::FIELD_HEADER_LEN, entry_encoded_len(e));
                spans.push(EntrySpan { term: e.term, offset: at as u32, len: len as u32 });
            }
        });
        self.spans.push(spans);
    }

    /// Adds a region's whole state.
    pub fn add_state(&mut self, region: RegionId, state: &LogState) {
        codec::put_nested(&mut self.buf, STATE, |out| {
            codec::put_u64(out, S_REGION, region.0);
            codec::put_u64(out, S_TERM, state.hard_state.term);
            codec::put_u64(out, S_VOTE, state.hard_state.vote);
            codec::put_u64(out, S_COMMIT, state.hard_state.commit);
            codec::put_nested(out, S_CONF, |out| put_conf_state(out, &state.conf_state));
            codec::put_u64(out, S_FIRST_INDEX, state.first_index);
            codec::put_u64(out, S_TRUNCATED_TERM, state.truncated_term);
            codec::put_u64(out, S_PEER_ID, state.peer_id);
            codec::put_u64(out, S_CONF_INDEX, state.conf_index);
            if let Some(floor) = state.id_floor {
                codec::put_u64(out, S_ID_FLOOR, floor.next_id);
                codec::put_u64(out, S_ID_FLOOR_INDEX, floor.set_at);
            }
            if let Some(index) = state.votes_from {
                codec::put_u64(out, S_VOTES_FROM, index);
            }
        });
    }

    /// Adds the removal of a region's log; `epoch`: the epoch of the replica destroyed
    /// (messages of that epoch or older are dropped from then on), `None` for a log that
    /// was never a replica's (a leftover of an interrupted split).
    pub fn add_tombstone(&mut self, region: RegionId, epoch: Option<Epoch>) {
        codec::put_nested(&mut self.buf, TOMBSTONE, |out| {
            codec::put_u64(out, T_REGION, region.0);
            if let Some(epoch) = epoch {
                codec::put_u64(out, T_VERSION, epoch.version);
                codec::put_u64(out, T_CONF_VER, epoch.conf_ver);
            }
        });
    }

    /// The payload to append to the WAL, and the entry spans of each ENTRIES item in
    /// the order they were added.
    pub fn finish(self) -> (Vec<u8>, Vec<Vec<EntrySpan>>) {
        (self.buf, self.spans)
    }
}

fn put_conf_state(out: &mut Vec<u8>, cs: &ConfState) {
    for (tag, ids) in [
        (C_VOTER, &cs.voters),
        (C_LEARNER, &cs.learners),
        (C_VOTER_OUTGOING, &cs.voters_outgoing),
        (C_LEARNER_NEXT, &cs.learners_next),
    ] {
        for &id in ids {
            codec::put_u64(out, tag, id);
        }
    }
    codec::put_field(out, C_AUTO_LEAVE, &[u8::from(cs.auto_leave)]);
}

fn decode_conf_state(buf: &[u8]) -> DecodeResult<ConfState> {
    let rec = TlvRecord::parse(
        buf,
        &[C_VOTER, C_LEARNER, C_VOTER_OUTGOING, C_LEARNER_NEXT, C_AUTO_LEAVE],
        UnknownTags::Reject,
    )?;
    let ids = |tag| rec.repeated(tag).map(|f| f.as_u64()).collect::<DecodeResult<Vec<u64>>>();
    let mut cs = ConfState::default();
    cs.voters = ids(C_VOTER)?;
    cs.learners = ids(C_LEARNER)?;
    cs.voters_outgoing = ids(C_VOTER_OUTGOING)?;
    cs.learners_next = ids(C_LEARNER_NEXT)?;
    cs.auto_leave = rec.required(C_AUTO_LEAVE, "conf state auto_leave")?.as_bool()?;
    Ok(cs)
}

/// One decoded item of a batch.
#[derive(Debug, PartialEq)]
pub(crate) enum Item {
    Entries { region: RegionId, first_index: u64, spans: Vec<EntrySpan> },
    State { region: RegionId, state: LogState },
    Tombstone { region: RegionId, epoch: Option<Epoch> },
}

/// Decodes a batch's items. Never panics, whatever `payload` holds.
pub(crate) fn decode(payload: &[u8]) -> DecodeResult<Vec<Item>> {
    let (&version, body) =
        payload.split_first().ok_or(DecodeError::new(0, "empty Raft log record"))?;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(DecodeError::new(0, "Raft log record of an unknown format version"));
    }
    let mut items = Vec::new();
    for field in codec::fields(body).map_err(|e| e.shifted(1))? {
        let base = field.offset + 1;
        let at = |e: DecodeError| e.shifted(base);
        match field.tag {
            ENTRIES => {
                let rec = TlvRecord::parse(
                    field.value,
                    &[E_REGION, E_FIRST_INDEX, E_ENTRY],
                    UnknownTags::Reject,
                )
                .map_err(at)?;
                let region = RegionId(
                    rec.required(E_REGION, "entries region").map_err(at)?.as_u64().map_err(at)?,
                );
                let first_index = rec
                    .required(E_FIRST_INDEX, "entries first index")
                    .map_err(at)?
                    .as_u64()
                    .map_err(at)?;
                let mut spans = Vec::new();
                for entry in rec.repeated(E_ENTRY) {
                    let e = decode_entry_fields(entry.value)
                        .map_err(|e| e.shifted(base + entry.offset))?;
                    let offset = u32::try_from(base + entry.offset)
                        .map_err(|_| DecodeError::new(base, "record too large"))?;
                    spans.push(EntrySpan { term: e.term, offset, len: entry.value.len() as u32 });
                }
                items.push(Item::Entries { region, first_index, spans });
            }
            STATE => items.push(decode_state(field.value).map_err(at)?),
            TOMBSTONE => items.push(decode_tombstone(field.value).map_err(at)?),
            _ => return Err(DecodeError::new(field.offset + 1, "unknown Raft log item")),
        }
    }
    Ok(items)
}

/// Decodes a STATE item's fields.
fn decode_state(value: &[u8]) -> DecodeResult<Item> {
    let known = [
        S_REGION,
        S_TERM,
        S_VOTE,
        S_COMMIT,
        S_CONF,
        S_FIRST_INDEX,
        S_TRUNCATED_TERM,
        S_PEER_ID,
        S_CONF_INDEX,
        S_ID_FLOOR,
        S_ID_FLOOR_INDEX,
        S_VOTES_FROM,
    ];
    let rec = TlvRecord::parse(value, &known, UnknownTags::Reject)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let optional = |tag| rec.optional(tag).and_then(|f| f.map(|f| f.as_u64()).transpose());
    let id_floor = match (optional(S_ID_FLOOR)?, optional(S_ID_FLOOR_INDEX)?) {
        (Some(next_id), Some(set_at)) => Some(IdFloor { next_id, set_at }),
        (None, None) => None,
        _ => return Err(DecodeError::new(0, "an id floor without its index")),
    };
    let mut hard_state = HardState::default();
    hard_state.term = u64_of(S_TERM, "state term")?;
    hard_state.vote = u64_of(S_VOTE, "state vote")?;
    hard_state.commit = u64_of(S_COMMIT, "state commit")?;
    let conf = rec.required(S_CONF, "state conf state")?;
    let conf_state = decode_conf_state(conf.value).map_err(|e| e.shifted(conf.offset))?;
    Ok(Item::State {
        region: RegionId(u64_of(S_REGION, "state region")?),
        state: LogState {
            hard_state,
            conf_state,
            first_index: u64_of(S_FIRST_INDEX, "state first index")?,
            truncated_term: u64_of(S_TRUNCATED_TERM, "state truncated term")?,
            peer_id: u64_of(S_PEER_ID, "state peer id")?,
            conf_index: u64_of(S_CONF_INDEX, "state conf index")?,
            id_floor,
            votes_from: optional(S_VOTES_FROM)?,
        },
    })
}

/// Decodes a TOMBSTONE item's fields.
fn decode_tombstone(value: &[u8]) -> DecodeResult<Item> {
    let rec = TlvRecord::parse(value, &[T_REGION, T_VERSION, T_CONF_VER], UnknownTags::Reject)?;
    let region = RegionId(rec.required(T_REGION, "tombstone region")?.as_u64()?);
    let optional = |tag| rec.optional(tag).and_then(|f| f.map(|f| f.as_u64()).transpose());
    let epoch = match (optional(T_VERSION)?, optional(T_CONF_VER)?) {
        (Some(version), Some(conf_ver)) => Some(Epoch { version, conf_ver }),
        (None, None) => None,
        _ => return Err(DecodeError::new(0, "a tombstone epoch missing a half")),
    };
    Ok(Item::Tombstone { region, epoch })
}

/// The fields of one encoded entry.
struct EntryFields<'a> {
    term: u64,
    kind: EntryType,
    data: &'a [u8],
    context: &'a [u8],
}

fn decode_entry_fields(buf: &[u8]) -> DecodeResult<EntryFields<'_>> {
    let rec = TlvRecord::parse(
        buf,
        &[ENTRY_TERM, ENTRY_KIND, ENTRY_DATA, ENTRY_CONTEXT],
        UnknownTags::Reject,
    )?;
    let term = rec.required(ENTRY_TERM, "entry term")?.as_u64()?;
    let kind_field = rec.required(ENTRY_KIND, "entry kind")?;
    let kind = match kind_field.as_u64()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return Err(DecodeError::new(kind_field.offset, "unknown entry kind")),
    };
    let data = rec.required(ENTRY_DATA, "entry data")?.value;
    let context = rec.optional(ENTRY_CONTEXT)?.map_or(&[][..], |f| f.value);
    Ok(EntryFields { term, kind, data, context })
}

/// Rebuilds the entry at `index` from its span in `payload` (a WAL record's payload);
/// `data` and `context` are zero-copy slices of it.
pub(crate) fn entry_at(payload: &Bytes, span: EntrySpan, index: u64) -> DecodeResult<Entry> {
    let start = span.offset as usize;
    let end = start.checked_add(span.len as usize).filter(|&e| e <= payload.len());
    let Some(end) = end else {
        return Err(DecodeError::new(start, "entry span runs past its record"));
    };
    let fields = decode_entry_fields(&payload[start..end]).map_err(|e| e.shifted(start))?;
    let mut entry = Entry::default();
    entry.index = index;
    entry.term = fields.term;
    entry.set_entry_type(fields.kind);
    entry.data = payload.slice_ref(fields.data);
    entry.context = payload.slice_ref(fields.context);
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = Bytes::copy_from_slice(data);
        e
    }

    fn state(seed: u64) -> LogState {
        let mut s =
            LogState { first_index: seed + 1, truncated_term: seed / 2, ..LogState::default() };
        s.hard_state.term = seed;
        s.hard_state.vote = seed % 3;
        s.hard_state.commit = seed * 2;
        s.conf_state.voters = vec![1, 2, seed];
        s.conf_state.learners = vec![seed + 9];
        s
    }

    #[test]
    fn items_round_trip_and_entries_are_found_by_span() {
        let mut enc = BatchEncoder::default();
        let es: Vec<Entry> = (7..10).map(|i| entry(i, 3, format!("data-{i}").as_bytes())).collect();
        enc.add_entries(RegionId(5), &es);
        enc.add_state(RegionId(5), &state(4));
        enc.add_tombstone(RegionId(6), None);
        let floored = LogState {
            id_floor: Some(IdFloor { next_id: 1007, set_at: 12 }),
            votes_from: Some(30),
            ..state(9)
        };
        enc.add_state(RegionId(8), &floored);
        let epoch = Epoch { version: 4, conf_ver: 2 };
        enc.add_tombstone(RegionId(9), Some(epoch));
        let (payload, spans) = enc.finish();
        let payload = Bytes::from(payload);
        let items = decode(&payload).unwrap();
        assert_eq!(items.len(), 5);
        let Item::Entries { region, first_index, spans: decoded } = &items[0] else { panic!() };
        assert_eq!((*region, *first_index), (RegionId(5), 7));
        assert_eq!(decoded, &spans[0]);
        for (i, span) in decoded.iter().enumerate() {
            let e = entry_at(&payload, *span, 7 + i as u64).unwrap();
            assert_eq!(e, es[i]);
        }
        assert_eq!(items[1], Item::State { region: RegionId(5), state: state(4) });
        assert_eq!(items[2], Item::Tombstone { region: RegionId(6), epoch: None });
        assert_eq!(items[3], Item::State { region: RegionId(8), state: floored });
        assert_eq!(items[4], Item::Tombstone { region: RegionId(9), epoch: Some(epoch) });
    }

    /// The golden scenario: one record with entries (a normal entry and a membership
    /// change with its context), a region's whole state, and a tombstone.
    #[test]
    fn sizes_used_to_cut_records_are_exact() {
        let mut with_context = entry(8, 2, b"data");
        with_context.context = Bytes::from_static(b"ctx");
        let entries = [entry(7, 2, b""), with_context, entry(9, 2, &[7; 300])];
        let mut enc = BatchEncoder::default();
        enc.add_entries(RegionId(4), &entries);
        let expected =
            1 + ENTRIES_ITEM_BYTES + entries.iter().map(entry_encoded_len).sum::<usize>();
        assert_eq!(enc.len(), expected);
        let mark = enc.mark();
        enc.add_state(RegionId(4), &state(5));
        assert_eq!(enc.len(), expected + BatchEncoder::state_len(RegionId(4), &state(5)));
        enc.rollback(mark);
        assert_eq!(enc.len(), expected);
        let (payload, spans) = enc.finish();
        assert_eq!(spans.len(), 1);
        assert_eq!(decode(&payload).unwrap().len(), 1);
    }

    fn golden_scenario() -> Vec<u8> {
        let mut enc = BatchEncoder::default();
        let mut cc = entry(8, 3, b"conf-change");
        cc.set_entry_type(EntryType::EntryConfChangeV2);
        cc.context = Bytes::from_static(b"context");
        enc.add_entries(RegionId(5), &[entry(7, 3, b"put k=v"), cc]);
        enc.add_state(RegionId(5), &state(4));
        enc.add_tombstone(RegionId(6), None);
        if FORMAT_VERSION >= 2 {
            let floored = LogState {
                id_floor: Some(IdFloor { next_id: 1007, set_at: 12 }),
                votes_from: Some(30),
                ..state(9)
            };
            enc.add_state(RegionId(8), &floored);
            enc.add_tombstone(RegionId(9), Some(Epoch { version: 4, conf_ver: 2 }));
        }
        enc.finish().0
    }

    fn golden_path(version: u8) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/golden/raft-log-v{version}.bin"))
    }

    #[test]
    #[ignore = "writes the golden record of the current format version; run on a version bump"]
    fn regenerate_golden_record() {
        let path = golden_path(FORMAT_VERSION);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, golden_scenario()).unwrap();
    }

    #[test]
    fn golden_records_of_every_format_decode() {
        // Format 1: no optional fields; they decode as absent.
        let v1 = std::fs::read(golden_path(1)).unwrap();
        let items = decode(&v1).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[1], Item::State { region: RegionId(5), state: state(4) });
        assert_eq!(items[2], Item::Tombstone { region: RegionId(6), epoch: None });
        let Item::Entries { region, first_index, spans } = &items[0] else { panic!() };
        assert_eq!((*region, *first_index, spans.len()), (RegionId(5), 7, 2));
        let payload = Bytes::from(v1.clone());
        let cc = entry_at(&payload, spans[1], 8).unwrap();
        assert_eq!(cc.get_entry_type(), EntryType::EntryConfChangeV2);
        assert_eq!((&cc.data[..], &cc.context[..]), (&b"conf-change"[..], &b"context"[..]));
        // Format 2 (this binary's): the same, then a state with an id floor and a
        // votes-from index, and a tombstone with its epoch.
        let v2 = std::fs::read(golden_path(2)).unwrap();
        assert_eq!(v2, golden_scenario(), "format 2 is written as it was released");
        let items = decode(&v2).unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(&items[..3], &decode(&v1).unwrap()[..], "the format 1 items, unchanged");
        let Item::State { state, .. } = &items[3] else { panic!() };
        assert_eq!(state.id_floor, Some(IdFloor { next_id: 1007, set_at: 12 }));
        assert_eq!(state.votes_from, Some(30));
        let epoch = Some(Epoch { version: 4, conf_ver: 2 });
        assert_eq!(items[4], Item::Tombstone { region: RegionId(9), epoch });
    }

    #[test]
    fn a_newer_format_is_refused() {
        let mut enc = BatchEncoder::default();
        enc.add_tombstone(RegionId(1), None);
        let (mut payload, _) = enc.finish();
        payload[0] = FORMAT_VERSION + 1;
        assert!(decode(&payload).is_err());
        payload[0] = 0;
        assert!(decode(&payload).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let payload = Bytes::from(bytes);
            let _ = entry_at(&payload, EntrySpan { term: 0, offset: 3, len: 40 }, 1);
        }

        #[test]
        fn round_trips(regions in proptest::collection::vec((1u64..50, 1u64..1000, 0usize..4, any::<u64>()), 0..8)) {
            let mut enc = BatchEncoder::default();
            let mut expect = Vec::new();
            for &(region, first, n, seed) in &regions {
                let es: Vec<Entry> = (0..n as u64).map(|i| entry(first + i, seed % 7, &seed.to_le_bytes())).collect();
                enc.add_entries(RegionId(region), &es);
                enc.add_state(RegionId(region), &state(seed % 1000));
                if n > 0 {
                    expect.push((region, es));
                }
            }
            let (payload, _) = enc.finish();
            let payload = Bytes::from(payload);
            let items = decode(&payload).unwrap();
            let decoded: Vec<(u64, Vec<Entry>)> = items.iter().filter_map(|item| match item {
                Item::Entries { region, first_index, spans } => Some((region.0, spans.iter().enumerate()
                    .map(|(i, s)| entry_at(&payload, *s, first_index + i as u64).unwrap()).collect())),
                _ => None,
            }).collect();
            prop_assert_eq!(decoded, expect);
        }
    }
}
