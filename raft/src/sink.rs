//! Duplication, the follower side: the `SINK` commands by which a follower cluster's
//! region applies another (source) cluster's seed and log exactly once by source
//! position (ARCHITECTURE.md, "Duplication (follower side: the sink)").
//!
//! The state is the engine's (`regionkv_engine::sink`): per (duplication, source
//! region) an entry of key-range pieces, each with the source index applied up to (its
//! mark). A command is applied by every replica at the same index, from the command,
//! the region (its range, epoch version, merge state), its data and that state only,
//! after the round before it is committed; the data it writes is committed in its own
//! round before the state is set, so every image holds both as of one index. Every
//! check is a refusal (`Error::SinkRefused`, `KeyNotInRegion`, `EpochNotMatch`,
//! `Merging`, `InvalidRequest`: nothing changed):
//!
//! - `Begin { seed_id, range }`: deletes every key of `range ∩ region` and sets the
//!   entry to `{incarnation, seed_id, [range ∩ region, mark 0]}`. The same seed id
//!   again changes nothing; another seed id of a seeding entry restarts (wipes again);
//!   a higher incarnation replaces the entry; a lower one is `StaleIncarnation`; the
//!   same incarnation on an entry that is not seeding (its seed ended, or it streams)
//!   is `AlreadySeeded` (a late duplicate `Begin` must not wipe applied data).
//! - `Chunk { seed_id, puts }`: puts, only while the entry loads that seed, keys in its
//!   pieces.
//! - `End { seed_id, seed_index }`: every mark = `seed_index`, the seed done; again
//!   with the same index: nothing changes.
//! - `Apply { range, upto, ops }`: refused while seeding; an absent entry is created
//!   (mark 0: a source split child's first batch). Op `(i, key, value)` is applied iff
//!   `i > mark_of(key)` (the mark before the command); then every part of
//!   `range ∩ region` is raised to `max(mark, upto)`. Ops must lie in `range ∩ region`
//!   and at or below `upto`.
//! - `Promote`: drops every entry of the duplication (the range becomes writable).
//!
//! An entry of a newer format freezes its duplication (`Frozen`). A client write to a
//! key a sink piece holds is refused `StandbyReadOnly` (before proposing, and at apply:
//! `core/sink_apply.rs`, `Applier::write`).
//!
//! ```text
//!  | format u8 = 1 | TLV: tag 7 SINK (nested)                                          |
//!  |   1 epoch (nested)   2 kind: 1 begin, 2 chunk, 3 end, 4 apply, 5 promote          |
//!  |     (0 reserved: damage; above 5: a kind this binary does not know)              |
//!  |   3 dup id   4 incarnation   5 source region                                    |
//!  |   6 seed id (begin, chunk, end)   7 seed index (end)   8 upto (apply)            |
//!  |   9 start   10 end | 11 unbounded end (empty)   (begin, apply)                   |
//!  |   12 put (nested, repeated: 1 key, 2 value)   (chunk)                            |
//!  |   13 op (nested, repeated: 1 source index, 2 key, 3 value | 4 delete (empty))    |
//! ```

use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::sink::{SinkEntry, SinkSlot, SinkTable};
use regionkv_engine::{Epoch, Region, RegionId};

use crate::error::{Error, Result};
use crate::request::Reply;

const S_EPOCH: u16 = 1;
const S_KIND: u16 = 2;
const S_DUP_ID: u16 = 3;
const S_INCARNATION: u16 = 4;
const S_SOURCE_REGION: u16 = 5;
const S_SEED_ID: u16 = 6;
const S_SEED_INDEX: u16 = 7;
const S_UPTO: u16 = 8;
const S_START: u16 = 9;
const S_END: u16 = 10;
const S_UNBOUNDED: u16 = 11;
const S_PUT: u16 = 12;
const S_OP: u16 = 13;
const TAGS: &[u16] = &[
    S_EPOCH,
    S_KIND,
    S_DUP_ID,
    S_INCARNATION,
    S_SOURCE_REGION,
    S_SEED_ID,
    S_SEED_INDEX,
    S_UPTO,
    S_START,
    S_END,
    S_UNBOUNDED,
    S_PUT,
    S_OP,
];
const PUT_KEY: u16 = 1;
const PUT_VALUE: u16 = 2;
const OP_INDEX: u16 = 1;
const OP_KEY: u16 = 2;
const OP_VALUE: u16 = 3;
const OP_DELETE: u16 = 4;
const KIND_BEGIN: u64 = 1;
const KIND_CHUNK: u64 = 2;
const KIND_END: u64 = 3;
const KIND_APPLY: u64 = 4;
const KIND_PROMOTE: u64 = 5;

/// The reason of the decode error for a kind this binary does not know.
pub(crate) const UNKNOWN_SINK: &str = "unknown sink command";

/// One op of a source region's log, as shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkOp {
    /// The Raft index of the source entry that wrote it.
    pub source_index: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The value put; `None`: a delete.
    pub value: Option<Vec<u8>>,
}

/// What a `SINK` command does (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkCmd {
    /// Starts loading seed `seed_id` over `[start, end)` (clipped to the region).
    Begin {
        /// The seed (a new one restarts).
        seed_id: u64,
        /// The source region's range.
        start: Vec<u8>,
        /// Its end; `None`: unbounded.
        end: Option<Vec<u8>>,
    },
    /// Puts of the seed.
    Chunk {
        /// The seed they belong to.
        seed_id: u64,
        /// Keys and values.
        puts: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The seed is loaded: it was the source's image at `seed_index`.
    End {
        /// The seed.
        seed_id: u64,
        /// The source index of the image.
        seed_index: u64,
    },
    /// Ops of the source region's log, covering `[start, end)` up to `upto`.
    Apply {
        /// The source region's range as shipped.
        start: Vec<u8>,
        /// Its end; `None`: unbounded.
        end: Option<Vec<u8>>,
        /// Every op of the range up to this source index is in the batch (or applied).
        upto: u64,
        /// The ops, in source order.
        ops: Vec<SinkOp>,
    },
    /// Drops every entry of the duplication: its keys become writable.
    Promote,
}

/// A `SINK` command and what it is about: one entry's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkEntryCmd {
    /// The follower region's epoch the command was routed with.
    pub epoch: Epoch,
    /// The duplication.
    pub dup_id: u64,
    /// Its incarnation.
    pub incarnation: u32,
    /// The source cluster's region.
    pub source_region: u64,
    /// The command.
    pub cmd: SinkCmd,
}

/// A `SINK` command for a follower region's leader to propose (`StoreCore::on_sink`).
pub struct SinkRequest {
    /// The follower region.
    pub region: RegionId,
    /// The command, with the region's epoch as the caller knows it.
    pub cmd: SinkEntryCmd,
    /// Called once it is applied (or refused).
    pub reply: Reply<SinkResult>,
}

/// What an applied `SINK` command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkResult {
    /// The command's Raft index (in the follower region's log).
    pub index: u64,
    /// Ops (or puts) written.
    pub applied_ops: usize,
    /// Ops skipped: at or below their key's mark (applied before).
    pub skipped_ops: usize,
    /// The entry after the command (`None` after a promote).
    pub entry: Option<SinkEntry>,
}

/// Why a `SINK` command was refused ([`Error::SinkRefused`]). Code 0 is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SinkRefusal {
    /// No reason given, or one this binary does not know.
    Unspecified,
    /// The region has no entry of the (duplication, source region).
    NotFound,
    /// The command's incarnation is below the entry's.
    StaleIncarnation,
    /// The command's incarnation is above the entry's, and the command does not start
    /// one (only `Begin` does).
    WrongIncarnation,
    /// The entry is not loading this seed.
    WrongSeed,
    /// The entry is loading a seed: no log is applied until it ends.
    Seeding,
    /// A `Begin` of the entry's incarnation when it is not seeding.
    AlreadySeeded,
    /// A key outside the entry's pieces or the shipped range, a range outside the
    /// region, or an op above `upto`.
    OutOfRange,
    /// An entry of the duplication is of a format this binary cannot read.
    Frozen,
}

impl SinkRefusal {
    /// The reason's code.
    pub fn code(self) -> u64 {
        match self {
            SinkRefusal::Unspecified => 0,
            SinkRefusal::NotFound => 1,
            SinkRefusal::StaleIncarnation => 2,
            SinkRefusal::WrongIncarnation => 3,
            SinkRefusal::WrongSeed => 4,
            SinkRefusal::Seeding => 5,
            SinkRefusal::AlreadySeeded => 6,
            SinkRefusal::OutOfRange => 7,
            SinkRefusal::Frozen => 8,
        }
    }
}

impl SinkRefusal {
    /// The reason of `code`; an unknown code (or 0) is [`SinkRefusal::Unspecified`].
    pub fn from_code(code: u64) -> SinkRefusal {
        match code {
            1 => SinkRefusal::NotFound,
            2 => SinkRefusal::StaleIncarnation,
            3 => SinkRefusal::WrongIncarnation,
            4 => SinkRefusal::WrongSeed,
            5 => SinkRefusal::Seeding,
            6 => SinkRefusal::AlreadySeeded,
            7 => SinkRefusal::OutOfRange,
            8 => SinkRefusal::Frozen,
            _ => SinkRefusal::Unspecified,
        }
    }
}

impl std::fmt::Display for SinkRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SinkRefusal::Unspecified => "unspecified",
            SinkRefusal::NotFound => "no sink entry of the duplication and source region",
            SinkRefusal::StaleIncarnation => "an incarnation below the entry's",
            SinkRefusal::WrongIncarnation => "an incarnation above the entry's: begin a seed",
            SinkRefusal::WrongSeed => "not the seed the entry is loading",
            SinkRefusal::Seeding => "the entry is loading a seed",
            SinkRefusal::AlreadySeeded => "the entry's seed ended at this incarnation",
            SinkRefusal::OutOfRange => "a key or range outside the region, the entry or the batch",
            SinkRefusal::Frozen => "frozen (an entry of a format this binary does not know)",
        })
    }
}

/// A `SINK` command's fields as another protocol carries them (the client protocol's
/// sink request): the body of tag 7, without the command's format byte.
pub fn encode_entry_cmd(entry: &SinkEntryCmd) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, entry);
    out
}

/// Reads what [`encode_entry_cmd`] wrote; never panics (a kind this binary does not
/// know is an error).
pub fn decode_entry_cmd(buf: &[u8]) -> DecodeResult<SinkEntryCmd> {
    decode(buf)
}

/// Writes a `SINK` command's fields (the body of tag 7).
pub(crate) fn encode(out: &mut Vec<u8>, entry: &SinkEntryCmd) {
    codec::put_nested(out, S_EPOCH, |out| crate::command::put_epoch(out, entry.epoch));
    let kind = match &entry.cmd {
        SinkCmd::Begin { .. } => KIND_BEGIN,
        SinkCmd::Chunk { .. } => KIND_CHUNK,
        SinkCmd::End { .. } => KIND_END,
        SinkCmd::Apply { .. } => KIND_APPLY,
        SinkCmd::Promote => KIND_PROMOTE,
    };
    codec::put_u64(out, S_KIND, kind);
    codec::put_u64(out, S_DUP_ID, entry.dup_id);
    codec::put_u64(out, S_INCARNATION, u64::from(entry.incarnation));
    codec::put_u64(out, S_SOURCE_REGION, entry.source_region);
    let range = |out: &mut Vec<u8>, start: &[u8], end: Option<&[u8]>| {
        codec::put_field(out, S_START, start);
        codec::put_range_end(out, S_END, S_UNBOUNDED, end);
    };
    match &entry.cmd {
        SinkCmd::Begin { seed_id, start, end } => {
            codec::put_u64(out, S_SEED_ID, *seed_id);
            range(out, start, end.as_deref());
        }
        SinkCmd::Chunk { seed_id, puts } => {
            codec::put_u64(out, S_SEED_ID, *seed_id);
            for (key, value) in puts {
                codec::put_nested(out, S_PUT, |out| {
                    codec::put_field(out, PUT_KEY, key);
                    codec::put_field(out, PUT_VALUE, value);
                });
            }
        }
        SinkCmd::End { seed_id, seed_index } => {
            codec::put_u64(out, S_SEED_ID, *seed_id);
            codec::put_u64(out, S_SEED_INDEX, *seed_index);
        }
        SinkCmd::Apply { start, end, upto, ops } => {
            codec::put_u64(out, S_UPTO, *upto);
            range(out, start, end.as_deref());
            for op in ops {
                codec::put_nested(out, S_OP, |out| {
                    codec::put_u64(out, OP_INDEX, op.source_index);
                    codec::put_field(out, OP_KEY, &op.key);
                    match &op.value {
                        Some(v) => codec::put_field(out, OP_VALUE, v),
                        None => codec::put_field(out, OP_DELETE, &[]),
                    }
                });
            }
        }
        SinkCmd::Promote => {}
    }
}

/// Reads a `SINK` command's fields; never panics.
pub(crate) fn decode(buf: &[u8]) -> DecodeResult<SinkEntryCmd> {
    let rec = TlvRecord::parse(buf, TAGS, UnknownTags::Reject)?;
    let epoch_field = rec.required(S_EPOCH, "sink epoch")?;
    let epoch = crate::command::decode_epoch(epoch_field.value)
        .map_err(|e| e.shifted(epoch_field.offset))?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let kind = u64_of(S_KIND, "sink kind")?;
    match kind {
        0 => return Err(DecodeError::new(0, "sink kind 0")),
        k if k > KIND_PROMOTE => return Err(DecodeError::new(0, UNKNOWN_SINK)),
        _ => {}
    }
    let incarnation = u32::try_from(u64_of(S_INCARNATION, "sink incarnation")?)
        .map_err(|_| DecodeError::new(0, "sink incarnation above u32"))?;
    let range = || -> DecodeResult<(Vec<u8>, Option<Vec<u8>>)> {
        let start = rec.required(S_START, "sink range start")?.value.to_vec();
        Ok((start, codec::range_end(&rec, S_END, S_UNBOUNDED)?))
    };
    let cmd = match kind {
        KIND_BEGIN => {
            let (start, end) = range()?;
            SinkCmd::Begin { seed_id: u64_of(S_SEED_ID, "seed id")?, start, end }
        }
        KIND_CHUNK => {
            let mut puts = Vec::new();
            for f in rec.repeated(S_PUT) {
                let at = |e: DecodeError| e.shifted(f.offset);
                let p = TlvRecord::parse(f.value, &[PUT_KEY, PUT_VALUE], UnknownTags::Reject)
                    .map_err(at)?;
                let key = p.required(PUT_KEY, "put key").map_err(at)?.value.to_vec();
                let value = p.required(PUT_VALUE, "put value").map_err(at)?.value.to_vec();
                puts.push((key, value));
            }
            SinkCmd::Chunk { seed_id: u64_of(S_SEED_ID, "seed id")?, puts }
        }
        KIND_END => SinkCmd::End {
            seed_id: u64_of(S_SEED_ID, "seed id")?,
            seed_index: u64_of(S_SEED_INDEX, "seed index")?,
        },
        KIND_APPLY => {
            let (start, end) = range()?;
            let mut ops = Vec::new();
            for f in rec.repeated(S_OP) {
                ops.push(decode_op(f.value).map_err(|e| e.shifted(f.offset))?);
            }
            SinkCmd::Apply { start, end, upto: u64_of(S_UPTO, "upto")?, ops }
        }
        _ => SinkCmd::Promote,
    };
    Ok(SinkEntryCmd {
        epoch,
        dup_id: u64_of(S_DUP_ID, "sink dup id")?,
        incarnation,
        source_region: u64_of(S_SOURCE_REGION, "sink source region")?,
        cmd,
    })
}

fn decode_op(buf: &[u8]) -> DecodeResult<SinkOp> {
    let o = TlvRecord::parse(buf, &[OP_INDEX, OP_KEY, OP_VALUE, OP_DELETE], UnknownTags::Reject)?;
    let source_index = o.required(OP_INDEX, "op source index")?.as_u64()?;
    let key = o.required(OP_KEY, "op key")?.value.to_vec();
    let value = match (o.optional(OP_VALUE)?, o.optional(OP_DELETE)?) {
        (Some(v), None) => Some(v.value.to_vec()),
        (None, Some(d)) if d.value.is_empty() => None,
        _ => return Err(DecodeError::new(0, "op is neither a put nor a delete")),
    };
    Ok(SinkOp { source_index, key, value })
}

/// What applying a `SINK` command writes, besides the table.
#[derive(Debug, Default)]
pub(crate) struct SinkWrites {
    /// Keys deleted first (a `Begin`'s wipe).
    pub wipe: Vec<Vec<u8>>,
    /// Then puts (`Some`) and deletes (`None`), in order.
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Ops skipped (at or below their mark).
    pub skipped: usize,
}

/// Lists a region's keys in `[start, end)`.
pub(crate) type KeysIn<'a> = &'a dyn Fn(&[u8], Option<&[u8]>) -> Vec<Vec<u8>>;

/// `[start, end)` clipped to `region`, if not empty.
fn clip(region: &Region, start: &[u8], end: Option<&[u8]>) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let s = start.max(region.start.as_slice()).to_vec();
    let e = match (end, region.end.as_deref()) {
        (None, e) | (e, None) => e.map(<[u8]>::to_vec),
        (Some(a), Some(b)) => Some(a.min(b).to_vec()),
    };
    e.as_deref().is_none_or(|e| s.as_slice() < e).then_some((s, e))
}

/// Applies `entry` to `table` (region `region`'s sink state before it): what to write,
/// or why it is refused (then `table` is unchanged). `keys_in` lists the region's keys
/// in a range (a `Begin`'s wipe). Decided from the command, the region, its data and
/// the table only.
pub(crate) fn apply(
    table: &mut SinkTable,
    region: &Region,
    entry: &SinkEntryCmd,
    keys_in: KeysIn<'_>,
) -> Result<SinkWrites> {
    let (dup_id, source, inc) = (entry.dup_id, entry.source_region, entry.incarnation);
    let refused = |reason| Error::SinkRefused { region: region.id, dup_id, reason };
    if table.is_frozen(dup_id) {
        return Err(refused(SinkRefusal::Frozen));
    }
    if let SinkCmd::Promote = entry.cmd {
        table.remove_dup(dup_id);
        return Ok(SinkWrites::default());
    }
    let current = match table.get(dup_id, source) {
        Some(SinkSlot::Known(e)) => Some(e.clone()),
        Some(SinkSlot::Unreadable(_)) => return Err(refused(SinkRefusal::Frozen)),
        None => None,
    };
    if let Some(e) = &current {
        if inc < e.incarnation {
            return Err(refused(SinkRefusal::StaleIncarnation));
        }
        if inc > e.incarnation && !matches!(entry.cmd, SinkCmd::Begin { .. }) {
            return Err(refused(SinkRefusal::WrongIncarnation));
        }
    }
    let mut writes = SinkWrites::default();
    let next = match (&entry.cmd, current) {
        (SinkCmd::Begin { seed_id, .. }, Some(e))
            if e.incarnation == inc && e.seed_id == Some(*seed_id) =>
        {
            e // the same seed again: nothing to do
        }
        (SinkCmd::Begin { .. }, Some(e)) if e.incarnation == inc && e.seed_id.is_none() => {
            return Err(refused(SinkRefusal::AlreadySeeded));
        }
        (SinkCmd::Begin { seed_id, start, end }, _) => {
            let (s, e) =
                clip(region, start, end.as_deref()).ok_or(refused(SinkRefusal::OutOfRange))?;
            writes.wipe = keys_in(&s, e.as_deref());
            let piece = regionkv_engine::sink::SinkPiece { start: s, end: e, mark: 0 };
            SinkEntry {
                dup_id,
                source_region: source,
                incarnation: inc,
                seed_id: Some(*seed_id),
                pieces: vec![piece],
            }
        }
        (SinkCmd::Chunk { .. } | SinkCmd::End { .. }, None) => {
            return Err(refused(SinkRefusal::NotFound));
        }
        (SinkCmd::Chunk { seed_id, puts }, Some(e)) => {
            if e.seed_id != Some(*seed_id) {
                return Err(refused(SinkRefusal::WrongSeed));
            }
            if let Some((k, _)) = puts.iter().find(|(k, _)| !region.contains(k)) {
                return Err(not_in_region(region, k));
            }
            if puts.iter().any(|(k, _)| !e.covers(k)) {
                return Err(refused(SinkRefusal::OutOfRange));
            }
            writes.ops = puts.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            e
        }
        (SinkCmd::End { seed_id, seed_index }, Some(mut e)) => {
            let ended = e.seed_id.is_none() && e.pieces.iter().all(|p| p.mark == *seed_index);
            if !ended {
                if e.seed_id != Some(*seed_id) {
                    return Err(refused(SinkRefusal::WrongSeed));
                }
                e.seed_id = None;
                e.pieces.iter_mut().for_each(|p| p.mark = *seed_index);
                let pieces = std::mem::take(&mut e.pieces);
                for p in pieces {
                    e.raise(&p.start, p.end.as_deref(), p.mark);
                }
            }
            e
        }
        (SinkCmd::Apply { start, end, upto, ops }, current) => {
            let e = current.unwrap_or(SinkEntry {
                dup_id,
                source_region: source,
                incarnation: inc,
                seed_id: None,
                pieces: Vec::new(),
            });
            let batch = Batch { start, end: end.as_deref(), upto: *upto, ops };
            apply_ops(e, region, &batch, &mut writes).map_err(|r| r.map(refused))?
        }
        (SinkCmd::Promote, _) => return Ok(writes), // handled above
    };
    table.set(next);
    Ok(writes)
}

/// An `Apply`'s range, `upto` and ops.
struct Batch<'a> {
    start: &'a [u8],
    end: Option<&'a [u8]>,
    upto: u64,
    ops: &'a [SinkOp],
}

/// Applies a batch to entry `e` (not seeding): the ops above their key's mark go to
/// `writes`, the others are counted skipped; then the batch's part of the region is
/// raised to `upto`. A refusal is `Err(Ok(reason))` or `Err(Err(error))`.
fn apply_ops(
    mut e: SinkEntry,
    region: &Region,
    batch: &Batch<'_>,
    writes: &mut SinkWrites,
) -> std::result::Result<SinkEntry, RefusedBy> {
    if e.seed_id.is_some() {
        return Err(RefusedBy::Reason(SinkRefusal::Seeding));
    }
    if let Some(op) = batch.ops.iter().find(|op| !region.contains(&op.key)) {
        return Err(RefusedBy::Error(not_in_region(region, &op.key)));
    }
    let in_batch =
        |k: &[u8]| (batch.start.is_empty() || k >= batch.start) && batch.end.is_none_or(|e| k < e);
    if batch.ops.iter().any(|op| !in_batch(&op.key) || op.source_index > batch.upto) {
        return Err(RefusedBy::Reason(SinkRefusal::OutOfRange));
    }
    for op in batch.ops {
        if op.source_index > e.mark_of(&op.key) {
            writes.ops.push((op.key.clone(), op.value.clone()));
        } else {
            writes.skipped += 1;
        }
    }
    if let Some((s, end)) = clip(region, batch.start, batch.end) {
        e.raise(&s, end.as_deref(), batch.upto);
    }
    Ok(e)
}

/// Why a batch is refused: a refusal reason, or another typed error.
enum RefusedBy {
    Reason(SinkRefusal),
    Error(Error),
}

impl RefusedBy {
    fn map(self, refused: impl Fn(SinkRefusal) -> Error) -> Error {
        match self {
            RefusedBy::Reason(r) => refused(r),
            RefusedBy::Error(e) => e,
        }
    }
}

fn not_in_region(region: &Region, _key: &[u8]) -> Error {
    Error::KeyNotInRegion { region: region.id, current: Some(region.clone()) }
}

#[cfg(test)]
mod tests;
