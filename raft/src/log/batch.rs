//! The WAL record of the Raft log: one batch of items from any number of regions.
//!
//! ```text
//!  0        1
//!  +--------+---------------------------------------------------------------+
//!  | format | TLV record (regionkv_engine::codec): items, in order           |
//!  | u8 = 1 |   tag 1 ENTRIES  (nested, repeated)                           |
//!  |        |     1 region u64, 2 first_index u64, 3 entry (nested, rep.):  |
//!  |        |       1 term u64, 2 kind u64, 3 data, 4 context               |
//!  |        |   tag 2 STATE    (nested, repeated)                           |
//!  |        |     1 region, 2 term, 3 vote, 4 commit, 5 conf state (nested: |
//!  |        |       1 voter, 2 learner, 3 outgoing voter, 4 next learner    |
//!  |        |       (all repeated u64), 5 auto_leave flag),                  |
//!  |        |     6 first_index, 7 truncated_term                           |
//!  |        |   tag 3 TOMBSTONE (nested, repeated): 1 region                |
//!  +--------+---------------------------------------------------------------+
//! ```
//!
//! Items apply in record order, and records in WAL order: an ENTRIES item replaces
//! every entry of its region from `first_index` on (Raft overwrites an uncommitted
//! tail); a STATE item is the region's whole durable state (its hard state, conf state
//! and the compaction point); a TOMBSTONE removes the region's log. The WAL frames and
//! checksums each record; this format adds its version byte and bounds-checks every
//! field, so a record written by a newer version is refused, never guessed at.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use regionkv_engine::RegionId;
use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};

/// The format this binary writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u8 = 1;

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

const C_VOTER: u16 = 1;
const C_LEARNER: u16 = 2;
const C_VOTER_OUTGOING: u16 = 3;
const C_LEARNER_NEXT: u16 = 4;
const C_AUTO_LEAVE: u16 = 5;

const T_REGION: u16 = 1;

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

impl BatchEncoder {
    /// Adds the entries of one region; they must be consecutive from their first index.
    pub fn add_entries(&mut self, region: RegionId, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
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
        });
    }

    /// Adds the removal of a region's log.
    pub fn add_tombstone(&mut self, region: RegionId) {
        codec::put_nested(&mut self.buf, TOMBSTONE, |out| codec::put_u64(out, T_REGION, region.0));
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
    Tombstone { region: RegionId },
}

/// Decodes a batch's items. Never panics, whatever `payload` holds.
pub(crate) fn decode(payload: &[u8]) -> DecodeResult<Vec<Item>> {
    let (&version, body) =
        payload.split_first().ok_or(DecodeError::new(0, "empty Raft log record"))?;
    if version != FORMAT_VERSION {
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
            STATE => {
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
                ];
                let rec = TlvRecord::parse(field.value, &known, UnknownTags::Reject).map_err(at)?;
                let u64_of =
                    |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(at);
                let mut hard_state = HardState::default();
                hard_state.term = u64_of(S_TERM, "state term")?;
                hard_state.vote = u64_of(S_VOTE, "state vote")?;
                hard_state.commit = u64_of(S_COMMIT, "state commit")?;
                let conf = rec.required(S_CONF, "state conf state").map_err(at)?;
                let conf_state =
                    decode_conf_state(conf.value).map_err(|e| e.shifted(base + conf.offset))?;
                items.push(Item::State {
                    region: RegionId(u64_of(S_REGION, "state region")?),
                    state: LogState {
                        hard_state,
                        conf_state,
                        first_index: u64_of(S_FIRST_INDEX, "state first index")?,
                        truncated_term: u64_of(S_TRUNCATED_TERM, "state truncated term")?,
                        peer_id: u64_of(S_PEER_ID, "state peer id")?,
                        conf_index: u64_of(S_CONF_INDEX, "state conf index")?,
                    },
                });
            }
            TOMBSTONE => {
                let rec =
                    TlvRecord::parse(field.value, &[T_REGION], UnknownTags::Reject).map_err(at)?;
                let region = RegionId(
                    rec.required(T_REGION, "tombstone region").map_err(at)?.as_u64().map_err(at)?,
                );
                items.push(Item::Tombstone { region });
            }
            _ => return Err(DecodeError::new(field.offset + 1, "unknown Raft log item")),
        }
    }
    Ok(items)
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
        enc.add_tombstone(RegionId(6));
        let (payload, spans) = enc.finish();
        let payload = Bytes::from(payload);
        let items = decode(&payload).unwrap();
        assert_eq!(items.len(), 3);
        let Item::Entries { region, first_index, spans: decoded } = &items[0] else { panic!() };
        assert_eq!((*region, *first_index), (RegionId(5), 7));
        assert_eq!(decoded, &spans[0]);
        for (i, span) in decoded.iter().enumerate() {
            let e = entry_at(&payload, *span, 7 + i as u64).unwrap();
            assert_eq!(e, es[i]);
        }
        assert_eq!(items[1], Item::State { region: RegionId(5), state: state(4) });
        assert_eq!(items[2], Item::Tombstone { region: RegionId(6) });
    }

    #[test]
    fn a_newer_format_is_refused() {
        let mut enc = BatchEncoder::default();
        enc.add_tombstone(RegionId(1));
        let (mut payload, _) = enc.finish();
        payload[0] = 2;
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
