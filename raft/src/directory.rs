//! The cluster directory: a small Raft group ([`DIRECTORY`], region 0) outside the user
//! key space, on the same stores as everything else (`TiKV`'s PD reduced to a Raft
//! group). It allocates ids (of regions, peers and stores) and keeps the region
//! directory: each region's range, epoch and last known leader.
//!
//! Its replicas apply into a store's second engine (`<store>/directory`), which hosts
//! only region 0; the directory is a few records in it:
//!
//! ```text
//!  key                              value (format u8 = 1, then TLV)
//!  "n"                              next id: 1 u64
//!  "r" 0x01 <end key>               a region whose end is <end key>:
//!  "r" 0x02                         the region whose end is unbounded
//!                                     1 region (engine codec)  2 leader store (optional)
//!  "i" <region id, u64 BE>          the directory key of that region's record
//!  "h" <seq, u64 BE>                 a health event (the monitor's audit ring, the last
//!                                     HEALTH_EVENTS_KEPT): 1 holder store, 2 region,
//!                                     3 repair kind, 4 reason, 5 event, 6 store removed
//!                                     (optional), 7 store added (optional)
//!  "H"                               the next health event's seq: 1 u64
//!  "v"                              the cluster version ([`ClusterVersion`]):
//!                                     1 active u32  2 finalized by store (optional)
//!                                     3 at index (optional)
//!  "T"                              the timestamp oracle's limit (`crate::tso`): 1 u64
//! ```
//!
//! No `"v"` record means [`CLUSTER_VERSION_INITIAL`]: a cluster from before the version
//! gate. [`DirCmd::SetClusterVersion`] raises it (ARCHITECTURE.md, "Cluster versions");
//! it never goes down.
//!
//! Records are keyed by their end so that the region holding key `k` is the first
//! record after `"r" 0x01 k` (its end is the first one above `k`).
//!
//! Every change goes through the group's log as a [`DirCmd`]; applying one is
//! deterministic (it reads only the directory itself). A report never moves a region
//! back: a record is replaced only by one of a newer epoch, and a new record removes
//! the older ones whose ranges it overlaps (a split's parent range, a merge's source).
//! Readers that only route requests may read any replica (stale is fine: a stale
//! route is refused with the current region, and the client learns from that).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{ApplyRound, Engine, Epoch, ReadView, Region, RegionId, StoreId};

use crate::error::{Error, Result};
use crate::version::CLUSTER_VERSION_INITIAL;

/// The directory's region id.
pub const DIRECTORY: RegionId = RegionId(0);

/// Ids below this one are for bootstrap (stores `1..=n`, regions 0 and 1, the peers of
/// bootstrapped regions); the directory allocates from here on.
pub const FIRST_ALLOCATED_ID: u64 = 1000;

/// The most ids one [`DirCmd::AllocIds`] takes (a split into 10,000 regions takes
/// 9,999); a larger count is refused.
pub const MAX_IDS_PER_ALLOCATION: u64 = 1 << 16;

/// The format of directory records and commands.
pub(crate) const FORMAT_VERSION: u8 = 1;

const KEY_NEXT_ID: &[u8] = b"n";
const KEY_VERSION: &[u8] = b"v";
const KEY_REGION: u8 = b'r';
const KEY_INDEX: u8 = b'i';
const KEY_HEALTH: u8 = b'h';
const KEY_HEALTH_NEXT: &[u8] = b"H";

/// Health events the directory keeps (the oldest goes when one more is recorded).
pub const HEALTH_EVENTS_KEPT: u64 = 256;
/// The longest text a health event's fields may carry.
pub const HEALTH_EVENT_TEXT_MAX: usize = 1024;
const END_BOUNDED: u8 = 1;
const END_UNBOUNDED: u8 = 2;

const REC_REGION: u16 = 1;
const REC_LEADER: u16 = 2;
const REC_TAGS: &[u16] = &[REC_REGION, REC_LEADER];
const NEXT_ID: u16 = 1;
const V_ACTIVE: u16 = 1;
const V_FINALIZED_BY: u16 = 2;
const V_AT_INDEX: u16 = 3;
const V_TAGS: &[u16] = &[V_ACTIVE, V_FINALIZED_BY, V_AT_INDEX];

// Command fields.
const CMD_KIND: u16 = 1;
const CMD_COUNT: u16 = 2;
const CMD_RECORD: u16 = 3;
const CMD_HEALTH: u16 = 6;
/// Needs cluster version 2 (`crate::version::HEALTH_AUDIT`).
const KIND_HEALTH: u64 = 4;

const HE_HOLDER: u16 = 1;
const HE_REGION: u16 = 2;
const HE_KIND: u16 = 3;
const HE_REASON: u16 = 4;
const HE_EVENT: u16 = 5;
const HE_REMOVE: u16 = 6;
const HE_ADD: u16 = 7;
const HE_TAGS: &[u16] = &[HE_HOLDER, HE_REGION, HE_KIND, HE_REASON, HE_EVENT, HE_REMOVE, HE_ADD];
const CMD_TARGET: u16 = 4;
const CMD_BY: u16 = 5;
const CMD_LIMIT: u16 = 7;
const CMD_TAGS: &[u16] = &[
    CMD_KIND,
    CMD_COUNT,
    CMD_RECORD,
    CMD_TARGET,
    CMD_BY,
    CMD_HEALTH,
    7,
    8,
    CMD_DUP,
    CMD_DUP_ID,
    CMD_DUP_FROM,
    CMD_DUP_TO,
    CMD_DUP_REASON,
];
const KIND_ALLOC: u64 = 1;
const KIND_REPORT: u64 = 2;
const KIND_SET_VERSION: u64 = 3;
/// Needs cluster version 3 (`crate::version::TXN`).
const KIND_TS_LIMIT: u64 = 5;
/// Needs cluster version 4 (`crate::version::TXN_V2`).
const KIND_GC_SAFEPOINT: u64 = 6;
const CMD_SAFEPOINT: u16 = 8;
/// Need cluster version 7 (`crate::version::DUP_V2`).
const KIND_ADD_DUP: u64 = 7;
const KIND_ALTER_DUP: u64 = 8;
const KIND_DROP_DUP: u64 = 9;
/// A duplication record ([`dups::encode`], its format byte first).
const CMD_DUP: u16 = 9;
const CMD_DUP_ID: u16 = 10;
const CMD_DUP_FROM: u16 = 11;
const CMD_DUP_TO: u16 = 12;
const CMD_DUP_REASON: u16 = 13;

/// The reason of the decode error for a directory command kind this binary does not
/// know (`command::is_unknown_kind`).
pub(crate) const UNKNOWN_DIRECTORY_COMMAND: &str = "unknown directory command";

/// The cluster version that introduced [`DirCmd::SetClusterVersion`]: a binary that
/// supports only version 1 does not know the kind. It is proposed only by a finalize,
/// which runs once every store reported that it supports the target (so at least 2),
/// or by a directory leader that re-asserts a version its store learned (see
/// `StoreCore::assert_cluster_version`): a replica of an older binary never meets it
/// while the cluster version says it cannot exist.
pub const SET_CLUSTER_VERSION_SINCE: u32 = 2;

/// The cluster version as the directory holds it (its `"v"` record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterVersion {
    /// The active version: command kinds introduced up to it may be proposed.
    pub active: u32,
    /// The store that finalized it (`None`: unknown, or no record).
    pub finalized_by: Option<StoreId>,
    /// The directory log index at which it was finalized (`None`: no record).
    pub at_index: Option<u64>,
}

impl ClusterVersion {
    /// What a directory without a `"v"` record holds.
    pub const INITIAL: ClusterVersion =
        ClusterVersion { active: CLUSTER_VERSION_INITIAL, finalized_by: None, at_index: None };
}

/// What the directory knows of one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionRecord {
    /// The region: range, epoch, peers.
    pub region: Region,
    /// The store that last reported leading it (`None`: unknown).
    pub leader: Option<StoreId>,
}

/// A change to the directory, replicated through its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirCmd {
    /// Allocate `count` fresh ids.
    AllocIds {
        /// How many.
        count: u64,
    },
    /// Regions as their leaders see them now.
    Report {
        /// The records.
        records: Vec<RegionRecord>,
    },
    /// One step of a health repair, recorded before the step is taken: the monitor's
    /// audit, and its fence (only the directory's leader can get one applied).
    RecordHealth {
        /// The event.
        event: Box<HealthEvent>,
    },
    /// Raise the cluster version to `target` (a finalized upgrade). Idempotent: a
    /// target at or below the active version changes nothing. A kind of version
    /// [`SET_CLUSTER_VERSION_SINCE`].
    SetClusterVersion {
        /// The version to run at.
        target: u32,
        /// The store that drove the finalize.
        by: StoreId,
    },
    /// Persist the timestamp oracle's limit (`crate::tso`), as `max(held, limit)`.
    /// A kind of version [`crate::version::TXN`].
    SaveTsLimit {
        /// No timestamp at or above it is handed out before a higher one is saved.
        limit: u64,
    },
    /// Raise the version GC safepoint (record `"G"`, [`gc`]) to `max(held, safepoint)`.
    /// A kind of version [`crate::version::TXN_V2`].
    SetGcSafepoint {
        /// The safepoint proposed (an oracle timestamp minus the GC life time).
        safepoint: u64,
    },
    /// Add a duplication ([`dups`]), in `Init`. A kind of version
    /// [`crate::version::DUP_V2`], as are the two below.
    AddDup {
        /// The record (its id allocated from the directory's ids).
        record: Box<DupRecord>,
    },
    /// Move a duplication from one status to another (`dups::alter`; the statuses and
    /// their transitions are in [`dups`]).
    AlterDup(DupAlteration),
    /// Delete a `Removed` duplication's record.
    DropDup {
        /// The duplication.
        dup_id: u64,
    },
}

/// One line of the health monitor's audit, as the directory keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// The store whose monitor acts.
    pub holder: StoreId,
    /// The region repaired.
    pub region: RegionId,
    /// The repair's kind, by name.
    pub kind: String,
    /// The analysis that asked for it, by name.
    pub reason: String,
    /// "started", "done: ...", "failed: ...".
    pub event: String,
    /// The store whose peer the repair removes, if any.
    pub remove: Option<StoreId>,
    /// The store the repair adds a peer on, if any.
    pub add: Option<StoreId>,
}

/// What an applied [`DirCmd`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirResult {
    /// Ids `first .. first + count`, never handed out before.
    Ids {
        /// The first id.
        first: u64,
        /// How many.
        count: u64,
    },
    /// How many reported records changed the directory (the others were stale).
    Reported {
        /// Records taken.
        taken: usize,
    },
    /// A health event recorded under this sequence number.
    Recorded {
        /// Its number.
        seq: u64,
    },
    /// The cluster version active after the command.
    ClusterVersion {
        /// The active version.
        active: u32,
    },
    /// The timestamp oracle's limit before and after a [`DirCmd::SaveTsLimit`].
    #[allow(missing_docs)] // the limit held before (0: none), and now
    TsLimit { previous: u64, limit: u64 },
    /// The version GC safepoint held after a [`DirCmd::SetGcSafepoint`].
    GcSafepoint {
        /// The safepoint.
        safepoint: u64,
    },
    /// A duplication after an `AddDup`, `AlterDup` or `DropDup` (`None`: no record).
    Dup {
        /// The record.
        record: Option<Box<DupRecord>>,
    },
}

fn region_key(end: Option<&[u8]>) -> Vec<u8> {
    match end {
        Some(end) => [&[KEY_REGION, END_BOUNDED][..], end].concat(),
        None => vec![KEY_REGION, END_UNBOUNDED],
    }
}

fn index_key(id: RegionId) -> Vec<u8> {
    let mut key = vec![KEY_INDEX];
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

fn encode_record(record: &RegionRecord) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    put_record_fields(&mut out, record);
    out
}

fn put_record_fields(out: &mut Vec<u8>, record: &RegionRecord) {
    codec::put_nested(out, REC_REGION, |out| codec::put_region(out, &record.region));
    if let Some(leader) = record.leader {
        codec::put_u64(out, REC_LEADER, leader.0);
    }
}

fn decode_record_fields(buf: &[u8]) -> DecodeResult<RegionRecord> {
    let rec = TlvRecord::parse(buf, REC_TAGS, UnknownTags::Reject)?;
    let f = rec.required(REC_REGION, "record region")?;
    let region =
        codec::decode_region(f.value, UnknownTags::Reject).map_err(|e| e.shifted(f.offset))?;
    // Absent means unknown (invariant 5 in ARCHITECTURE.md), never "store 0".
    let leader = rec.optional(REC_LEADER)?.map(|f| f.as_u64().map(StoreId)).transpose()?;
    Ok(RegionRecord { region, leader })
}

fn decode_record(buf: &[u8]) -> DecodeResult<RegionRecord> {
    let (&version, body) = buf.split_first().ok_or(DecodeError::new(0, "empty record"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "directory record of an unknown format version"));
    }
    decode_record_fields(body).map_err(|e| e.shifted(1))
}

/// Encodes a command as the data of a directory entry (inside the command format's
/// tag 3; see `command`).
/// Writes `cmd`'s fields (the directory's own encoding of its commands).
pub fn encode_cmd(out: &mut Vec<u8>, cmd: &DirCmd) {
    match cmd {
        DirCmd::AllocIds { count } => {
            codec::put_u64(out, CMD_KIND, KIND_ALLOC);
            codec::put_u64(out, CMD_COUNT, *count);
        }
        DirCmd::Report { records } => {
            codec::put_u64(out, CMD_KIND, KIND_REPORT);
            for r in records {
                codec::put_nested(out, CMD_RECORD, |out| put_record_fields(out, r));
            }
        }
        DirCmd::RecordHealth { event } => {
            codec::put_u64(out, CMD_KIND, KIND_HEALTH);
            codec::put_nested(out, CMD_HEALTH, |out| put_health_fields(out, event));
        }
        DirCmd::SetClusterVersion { target, by } => {
            codec::put_u64(out, CMD_KIND, KIND_SET_VERSION);
            codec::put_u64(out, CMD_TARGET, u64::from(*target));
            codec::put_u64(out, CMD_BY, by.0);
        }
        DirCmd::SaveTsLimit { limit } => {
            codec::put_u64(out, CMD_KIND, KIND_TS_LIMIT);
            codec::put_u64(out, CMD_LIMIT, *limit);
        }
        DirCmd::SetGcSafepoint { safepoint } => {
            codec::put_u64(out, CMD_KIND, KIND_GC_SAFEPOINT);
            codec::put_u64(out, CMD_SAFEPOINT, *safepoint);
        }
        DirCmd::AddDup { record } => {
            codec::put_u64(out, CMD_KIND, KIND_ADD_DUP);
            codec::put_field(out, CMD_DUP, &dups::encode(record));
        }
        DirCmd::AlterDup(a) => {
            codec::put_u64(out, CMD_KIND, KIND_ALTER_DUP);
            codec::put_u64(out, CMD_DUP_ID, a.dup_id);
            codec::put_u64(out, CMD_DUP_FROM, a.from.code());
            codec::put_u64(out, CMD_DUP_TO, a.to.code());
            if let Some(reason) = a.reason {
                codec::put_u64(out, CMD_DUP_REASON, reason.code());
            }
        }
        DirCmd::DropDup { dup_id } => {
            codec::put_u64(out, CMD_KIND, KIND_DROP_DUP);
            codec::put_u64(out, CMD_DUP_ID, *dup_id);
        }
    }
}

/// Writes `e`'s fields (the client protocol carries them as the directory does).
pub fn put_health_fields(out: &mut Vec<u8>, e: &HealthEvent) {
    codec::put_u64(out, HE_HOLDER, e.holder.0);
    codec::put_u64(out, HE_REGION, e.region.0);
    codec::put_field(out, HE_KIND, e.kind.as_bytes());
    codec::put_field(out, HE_REASON, e.reason.as_bytes());
    codec::put_field(out, HE_EVENT, e.event.as_bytes());
    if let Some(s) = e.remove {
        codec::put_u64(out, HE_REMOVE, s.0);
    }
    if let Some(s) = e.add {
        codec::put_u64(out, HE_ADD, s.0);
    }
}

/// Reads a health event's fields.
pub fn decode_health_fields(buf: &[u8]) -> DecodeResult<HealthEvent> {
    // Fields added later are skipped by this binary (absent is unknown).
    let rec = TlvRecord::parse(buf, HE_TAGS, UnknownTags::Skip)?;
    let text = |tag, what| -> DecodeResult<String> {
        let f = rec.required(tag, what)?;
        String::from_utf8(f.value.to_vec()).map_err(|_| DecodeError::new(f.offset, "not UTF-8"))
    };
    Ok(HealthEvent {
        holder: StoreId(rec.required(HE_HOLDER, "holder")?.as_u64()?),
        region: RegionId(rec.required(HE_REGION, "region")?.as_u64()?),
        kind: text(HE_KIND, "kind")?,
        reason: text(HE_REASON, "reason")?,
        event: text(HE_EVENT, "event")?,
        remove: rec.optional(HE_REMOVE)?.map(|f| f.as_u64().map(StoreId)).transpose()?,
        add: rec.optional(HE_ADD)?.map(|f| f.as_u64().map(StoreId)).transpose()?,
    })
}

fn health_key(seq: u64) -> Vec<u8> {
    let mut key = vec![KEY_HEALTH];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The health events the directory keeps, oldest first, with their numbers.
pub fn health_events(snapshot: &ReadView) -> Result<Vec<(u64, HealthEvent)>> {
    let mut out = Vec::new();
    let mut failed = None;
    snapshot.for_each(&[KEY_HEALTH], Some(&[KEY_HEALTH + 1]), |key, value| {
        let decoded = (|| -> DecodeResult<(u64, HealthEvent)> {
            let seq = key
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or(DecodeError::new(0, "health event key"))?;
            let (&version, body) = value.split_first().ok_or(DecodeError::new(0, "empty"))?;
            if version != FORMAT_VERSION {
                return Err(DecodeError::new(0, "health event of an unknown format version"));
            }
            Ok((seq, decode_health_fields(body).map_err(|e| e.shifted(1))?))
        })();
        match decoded {
            Ok(e) => {
                out.push(e);
                true
            }
            Err(e) => {
                failed = Some(corrupt("health event", &e));
                false
            }
        }
    });
    failed.map_or(Ok(out), Err)
}

/// The next health event's number.
fn next_health_seq(snapshot: &ReadView) -> Result<u64> {
    let Some(value) = snapshot.get(KEY_HEALTH_NEXT) else { return Ok(1) };
    let decode = || -> DecodeResult<u64> {
        let (&version, body) = value.split_first().ok_or(DecodeError::new(0, "empty"))?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::new(0, "unknown format version"));
        }
        TlvRecord::parse(body, &[NEXT_ID], UnknownTags::Reject)?.required(NEXT_ID, "next")?.as_u64()
    };
    decode().map_err(|e| corrupt("next health event", &e))
}

/// Decodes a command written by [`encode_cmd`].
pub fn decode_cmd(buf: &[u8]) -> DecodeResult<DirCmd> {
    let rec = TlvRecord::parse(buf, CMD_TAGS, UnknownTags::Reject)?;
    match rec.required(CMD_KIND, "directory command kind")?.as_u64()? {
        KIND_ALLOC => {
            Ok(DirCmd::AllocIds { count: rec.required(CMD_COUNT, "id count")?.as_u64()? })
        }
        KIND_REPORT => {
            let mut records = Vec::new();
            for f in rec.repeated(CMD_RECORD) {
                records.push(decode_record_fields(f.value).map_err(|e| e.shifted(f.offset))?);
            }
            Ok(DirCmd::Report { records })
        }
        KIND_HEALTH => {
            let f = rec.required(CMD_HEALTH, "health event")?;
            let event = decode_health_fields(f.value).map_err(|e| e.shifted(f.offset))?;
            Ok(DirCmd::RecordHealth { event: Box::new(event) })
        }
        KIND_SET_VERSION => {
            let target = rec.required(CMD_TARGET, "target version")?;
            Ok(DirCmd::SetClusterVersion {
                target: u32::try_from(target.as_u64()?)
                    .map_err(|_| DecodeError::new(target.offset, "target version over u32"))?,
                by: StoreId(rec.required(CMD_BY, "finalizing store")?.as_u64()?),
            })
        }
        KIND_TS_LIMIT => {
            Ok(DirCmd::SaveTsLimit { limit: rec.required(CMD_LIMIT, "limit")?.as_u64()? })
        }
        KIND_GC_SAFEPOINT => Ok(DirCmd::SetGcSafepoint {
            safepoint: rec.required(CMD_SAFEPOINT, "safepoint")?.as_u64()?,
        }),
        KIND_ADD_DUP => {
            let f = rec.required(CMD_DUP, "duplication record")?;
            let record = dups::decode(f.value).map_err(|e| e.shifted(f.offset))?;
            Ok(DirCmd::AddDup { record: Box::new(record) })
        }
        KIND_ALTER_DUP => {
            let status = |tag, what| rec.required(tag, what)?.as_u64().map(DupStatus::from_code);
            Ok(DirCmd::AlterDup(DupAlteration {
                dup_id: rec.required(CMD_DUP_ID, "dup id")?.as_u64()?,
                from: status(CMD_DUP_FROM, "from status")?,
                to: status(CMD_DUP_TO, "to status")?,
                reason: rec
                    .optional(CMD_DUP_REASON)?
                    .map(|f| f.as_u64().map(BrokenReason::from_code))
                    .transpose()?,
            }))
        }
        KIND_DROP_DUP => {
            Ok(DirCmd::DropDup { dup_id: rec.required(CMD_DUP_ID, "dup id")?.as_u64()? })
        }
        _ => Err(DecodeError::new(0, UNKNOWN_DIRECTORY_COMMAND)),
    }
}

fn encode_version(version: &ClusterVersion) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_u64(&mut out, V_ACTIVE, u64::from(version.active));
    if let Some(by) = version.finalized_by {
        codec::put_u64(&mut out, V_FINALIZED_BY, by.0);
    }
    if let Some(index) = version.at_index {
        codec::put_u64(&mut out, V_AT_INDEX, index);
    }
    out
}

fn decode_version(buf: &[u8]) -> DecodeResult<ClusterVersion> {
    let (&version, body) = buf.split_first().ok_or(DecodeError::new(0, "empty record"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "cluster version record of an unknown format version"));
    }
    let rec = TlvRecord::parse(body, V_TAGS, UnknownTags::Skip).map_err(|e| e.shifted(1))?;
    let active = rec.required(V_ACTIVE, "active version").map_err(|e| e.shifted(1))?;
    let active = u32::try_from(active.as_u64().map_err(|e| e.shifted(1))?)
        .map_err(|_| DecodeError::new(1 + active.offset, "active version over u32"))?;
    let u64_of = |tag| -> DecodeResult<Option<u64>> {
        rec.optional(tag).and_then(|f| f.map(|f| f.as_u64()).transpose()).map_err(|e| e.shifted(1))
    };
    Ok(ClusterVersion {
        active,
        finalized_by: u64_of(V_FINALIZED_BY)?.map(StoreId),
        at_index: u64_of(V_AT_INDEX)?,
    })
}

/// The cluster version the directory in `snapshot` holds: [`ClusterVersion::INITIAL`]
/// if it has no `"v"` record; an error if the record does not decode.
pub fn cluster_version(snapshot: &ReadView) -> Result<ClusterVersion> {
    match snapshot.get(KEY_VERSION) {
        None => Ok(ClusterVersion::INITIAL),
        Some(value) => decode_version(&value).map_err(|e| corrupt("cluster version", &e)),
    }
}

pub(crate) fn corrupt(what: &str, e: &DecodeError) -> Error {
    Error::Internal(format!("directory {what} does not decode: {} at byte {}", e.reason, e.offset))
}

/// The next id to allocate.
fn next_id(snapshot: &ReadView) -> Result<u64> {
    let Some(value) = snapshot.get(KEY_NEXT_ID) else { return Ok(FIRST_ALLOCATED_ID) };
    let decode = || -> DecodeResult<u64> {
        let (&version, body) = value.split_first().ok_or(DecodeError::new(0, "empty"))?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::new(0, "unknown format version"));
        }
        TlvRecord::parse(body, &[NEXT_ID], UnknownTags::Reject)?
            .required(NEXT_ID, "next id")?
            .as_u64()
    };
    decode().map_err(|e| corrupt("next id", &e))
}

/// The directory as one command sees it while applying: the snapshot it started
/// from, under what the command wrote so far.
struct View<'a> {
    snapshot: &'a ReadView,
    /// Keys written by the command: a value, or `None` for a deleted key.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl View<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.overlay.get(key) {
            Some(value) => value.clone(),
            None => self.snapshot.get(key).map(|v| v.to_vec()),
        }
    }

    /// The record of region `id`, with its key.
    fn record_by_id(&self, id: RegionId) -> Result<Option<(Vec<u8>, RegionRecord)>> {
        let Some(key) = self.get(&index_key(id)) else { return Ok(None) };
        let Some(value) = self.get(&key) else { return Ok(None) };
        let record = decode_record(&value).map_err(|e| corrupt("record", &e))?;
        Ok((record.region.id == id).then_some((key, record)))
    }

    /// Records whose ranges overlap `[start, end)`, with their keys, in key order.
    fn overlapping(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, RegionRecord)>> {
        // Records are keyed by their end and never overlap: the first that may
        // overlap has an end above `start`, and once one starts at or after `end`,
        // so do all after it.
        let from = [&[KEY_REGION, END_BOUNDED][..], start, &[0]].concat();
        let to = [KEY_REGION, END_UNBOUNDED + 1];
        let within = |value: &[u8]| -> Result<Option<RegionRecord>> {
            let record = decode_record(value).map_err(|e| corrupt("record", &e))?;
            let past = end.is_some_and(|end| record.region.start.as_slice() >= end);
            Ok((!past).then_some(record))
        };
        let mut found: BTreeMap<Vec<u8>, RegionRecord> = BTreeMap::new();
        let mut failed = None;
        self.snapshot.for_each(&from, Some(&to), |key, value| {
            if self.overlay.contains_key(key) {
                return true; // the overlay decides for this key
            }
            match within(value) {
                Ok(Some(record)) => {
                    found.insert(key.to_vec(), record);
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let overlay = self.overlay.range::<[u8], _>((Included(&from[..]), Excluded(&to[..])));
        for (key, value) in overlay {
            let Some(value) = value else { continue };
            match within(value)? {
                Some(record) => {
                    found.insert(key.clone(), record);
                }
                None => break,
            }
        }
        Ok(found.into_iter().collect())
    }

    fn put(&mut self, round: &mut ApplyRound<'_>, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        round.put(&key, &value)?;
        self.overlay.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, round: &mut ApplyRound<'_>, key: Vec<u8>) -> Result<()> {
        round.delete(&key)?;
        self.overlay.insert(key, None);
        Ok(())
    }
}

/// The region holding `key`, as the directory knows it.
pub fn lookup(snapshot: &ReadView, key: &[u8]) -> Result<Option<RegionRecord>> {
    let view = View { snapshot, overlay: BTreeMap::new() };
    let found = view.overlapping(key, Some(&[key, &[0]].concat()))?;
    Ok(found.into_iter().map(|(_, r)| r).find(|r| r.region.contains(key)))
}

/// Every region the directory knows, in key order.
pub fn regions(snapshot: &ReadView) -> Result<Vec<RegionRecord>> {
    let view = View { snapshot, overlay: BTreeMap::new() };
    let mut out: Vec<RegionRecord> =
        view.overlapping(b"", None)?.into_iter().map(|(_, r)| r).collect();
    out.sort_by(|a, b| a.region.start.cmp(&b.region.start));
    Ok(out)
}

/// True if `a` is newer than `b` (a later split/merge, or the same and a later
/// membership change).
fn newer(a: Epoch, b: Epoch) -> bool {
    (a.version, a.conf_ver) > (b.version, b.conf_ver)
}

/// Applies `cmd`, the entry at `index` of the directory's log, to the directory in
/// `engine` (region 0 at `epoch`), deterministically.
/// The outer error fails the apply (the directory's engine or its records failed); the
/// inner one refuses the command, decided from the command and the directory alone, so
/// every replica refuses it alike and nothing changes. (Whether this binary can run at
/// the version a [`DirCmd::SetClusterVersion`] sets is its caller's check: it halts the
/// replica, see `core/apply.rs`.)
pub(crate) fn apply(
    engine: &Engine,
    epoch: Epoch,
    cmd: &DirCmd,
    index: u64,
) -> Result<Result<DirResult>> {
    if let Err(refused) = check(cmd) {
        return Ok(Err(refused));
    }
    let snapshot = engine.read_view();
    let mut round = engine.begin_round();
    round.prepare_for_region(DIRECTORY, epoch)?;
    let result = match cmd {
        DirCmd::AllocIds { count } => {
            let first = next_id(&snapshot)?;
            let Some(next) = first.checked_add(*count) else {
                return Ok(Err(Error::InvalidRequest(format!(
                    "{count} ids from {first} would run past the id space"
                ))));
            };
            let mut value = vec![FORMAT_VERSION];
            codec::put_u64(&mut value, NEXT_ID, next);
            round.put(KEY_NEXT_ID, &value)?;
            DirResult::Ids { first, count: *count }
        }
        DirCmd::Report { records } => {
            // Each record sees the ones before it in the batch.
            let mut view = View { snapshot: &snapshot, overlay: BTreeMap::new() };
            let mut taken = 0;
            for record in records {
                let region = &record.region;
                let mut current = view.overlapping(&region.start, region.end.as_deref())?;
                current.extend(view.record_by_id(region.id)?);
                current.sort_by(|a, b| a.0.cmp(&b.0));
                current.dedup_by(|a, b| a.0 == b.0);
                // Stale if anything it would replace is as new or newer; at the same
                // epoch a record replaces its own only to name a new leader.
                let stale = current.iter().any(|(_, r)| {
                    if r.region.id == region.id {
                        let news = newer(region.epoch, r.region.epoch)
                            || (region.epoch == r.region.epoch
                                && record.leader.is_some()
                                && record.leader != r.leader);
                        !news
                    } else {
                        r.region.epoch.version >= region.epoch.version
                    }
                });
                if stale {
                    continue;
                }
                for (key, old) in current {
                    view.delete(&mut round, key)?;
                    view.delete(&mut round, index_key(old.region.id))?;
                }
                let key = region_key(region.end.as_deref());
                view.put(&mut round, key.clone(), encode_record(record))?;
                view.put(&mut round, index_key(region.id), key)?;
                taken += 1;
            }
            DirResult::Reported { taken }
        }
        DirCmd::RecordHealth { event } => {
            let seq = next_health_seq(&snapshot)?;
            let mut value = vec![FORMAT_VERSION];
            put_health_fields(&mut value, event);
            round.put(&health_key(seq), &value)?;
            let mut next = vec![FORMAT_VERSION];
            codec::put_u64(&mut next, NEXT_ID, seq + 1);
            round.put(KEY_HEALTH_NEXT, &next)?;
            if seq > HEALTH_EVENTS_KEPT {
                round.delete(&health_key(seq - HEALTH_EVENTS_KEPT))?;
            }
            DirResult::Recorded { seq }
        }
        DirCmd::SetClusterVersion { target, by } => {
            let current = cluster_version(&snapshot)?;
            if *target > current.active {
                let next = ClusterVersion {
                    active: *target,
                    finalized_by: Some(*by),
                    at_index: Some(index),
                };
                round.put(KEY_VERSION, &encode_version(&next))?;
            }
            DirResult::ClusterVersion { active: current.active.max(*target) }
        }
        DirCmd::SaveTsLimit { limit } => crate::tso::save_limit(&snapshot, &mut round, *limit)?,
        DirCmd::SetGcSafepoint { safepoint } => {
            gc::set_safepoint(&snapshot, &mut round, *safepoint)?
        }
        DirCmd::AddDup { record } => match dups::add(&snapshot, &mut round, record)? {
            Ok(result) => result,
            Err(refused) => return Ok(Err(refused)),
        },
        DirCmd::AlterDup(a) => match dups::alter(&snapshot, &mut round, a)? {
            Ok(result) => result,
            Err(refused) => return Ok(Err(refused)),
        },
        DirCmd::DropDup { dup_id } => match dups::drop_record(&snapshot, &mut round, *dup_id)? {
            Ok(result) => result,
            Err(refused) => return Ok(Err(refused)),
        },
    };
    round.commit()?;
    Ok(Ok(result))
}

/// Why `cmd` must not apply, from the command alone.
fn check(cmd: &DirCmd) -> Result<()> {
    match cmd {
        DirCmd::AllocIds { count } if *count == 0 || *count > MAX_IDS_PER_ALLOCATION => {
            Err(Error::InvalidRequest(format!(
                "an allocation takes 1 to {MAX_IDS_PER_ALLOCATION} ids, not {count}"
            )))
        }
        DirCmd::RecordHealth { event } => {
            let longest = [&event.kind, &event.reason, &event.event].iter().map(|t| t.len()).max();
            if longest.unwrap_or(0) > HEALTH_EVENT_TEXT_MAX {
                return Err(Error::InvalidRequest(format!(
                    "a health event's text takes at most {HEALTH_EVENT_TEXT_MAX} bytes"
                )));
            }
            Ok(())
        }
        DirCmd::SetClusterVersion { target: 0, .. } => {
            Err(Error::InvalidRequest("cluster versions start at 1, not 0".into()))
        }
        DirCmd::AddDup { record } => dups::check_add(record),
        DirCmd::AllocIds { .. }
        | DirCmd::Report { .. }
        | DirCmd::SetClusterVersion { .. }
        | DirCmd::SaveTsLimit { .. }
        | DirCmd::SetGcSafepoint { .. }
        | DirCmd::AlterDup(_)
        | DirCmd::DropDup { .. } => Ok(()),
    }
}

pub mod dups;
pub mod gc;

pub use dups::{BrokenReason, DupAlteration, DupRecord, DupRemote, DupStatus};
#[cfg(test)]
mod tests;
