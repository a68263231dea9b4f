//! Duplications as the directory holds them (cluster version 7, `crate::version::DUP_V2`):
//! one record per duplication, its cluster-level status, and the transitions allowed
//! between statuses, checked when a command applies (so every replica of the
//! directory refuses a wrong one alike, and nothing changes).
//!
//! ```text
//!  "d" <dup id u64 BE>  | format u8 = 1 | TLV:                                   |
//!    1 dup id u64   2 status u64 (0 reserved: unknown, frozen)   3 incarnation u64  |
//!    4 range start   5 range end  or  6 range end unbounded (empty)                 |
//!    7 remote name (bytes: an in-process name, or "host:port[,host:port]")          |
//!    8 remote cluster id u64 (optional)   9 remote secret (optional)                |
//!   10 seed flag   11 broken reason u64 (optional; 0 reserved)                      |
//!   12 created at, ms since the epoch (optional)                                    |
//! ```
//!
//! The statuses and their transitions (`allowed`):
//!
//! ```text
//!   Init ──► Prepare ──► App ──► Log ◄──► Paused
//!     └────────────────────────► Log            (no seed: the operator vouches)
//!   Prepare | App | Log | Paused ──► Broken ──► Prepare   (a reseed: incarnation + 1)
//!   Log | Paused ──► CuttingOver ──► CutOver      (cluster version 8: the cutover)
//!   any ──► Removed   (then `DropDup` deletes the record)
//! ```
//!
//! `CuttingOver` fences every covered source region (a `DUP` `Fence`: client writes in
//! the range refused from it on), ships the log up to each fence, then promotes the
//! follower; `CutOver` records that it was. A cutover that stops half way (a crash)
//! resumes from the status and each region's entry: nothing else is needed. There is
//! no way back from `CuttingOver` but `Removed` (a fenced range is not reopened by a
//! status: the fence goes with the region's entry, when the duplication is removed).
//!
//! A status this binary does not know decodes as [`DupStatus::Unspecified`]: the
//! duplication is frozen (no transition out of it but `Removed`; the drivers neither
//! ship nor release anything for it). The status change is one Raft command that names
//! the status it moves from (compare and set), so two drivers racing on one
//! transition get one applied and the other refused.

use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{ApplyRound, ReadView};

use super::{DIRECTORY, DirResult, FORMAT_VERSION, corrupt};
use crate::dup::DupRefusal;
use crate::error::{Error, Result};

const KEY_DUP: u8 = b'd';

const F_ID: u16 = 1;
const F_STATUS: u16 = 2;
const F_INCARNATION: u16 = 3;
const F_START: u16 = 4;
const F_END: u16 = 5;
const F_END_UNBOUNDED: u16 = 6;
const F_REMOTE: u16 = 7;
const F_REMOTE_CLUSTER: u16 = 8;
const F_REMOTE_SECRET: u16 = 9;
const F_SEED: u16 = 10;
const F_BROKEN: u16 = 11;
const F_CREATED: u16 = 12;
const FIELDS: &[u16] = &[
    F_ID,
    F_STATUS,
    F_INCARNATION,
    F_START,
    F_END,
    F_END_UNBOUNDED,
    F_REMOTE,
    F_REMOTE_CLUSTER,
    F_REMOTE_SECRET,
    F_SEED,
    F_BROKEN,
    F_CREATED,
];

/// The longest remote name or secret a record takes.
pub const DUP_TEXT_MAX: usize = 4096;

/// A duplication's cluster-level status. Code 0 is reserved: a code this binary does
/// not know decodes as [`DupStatus::Unspecified`], which freezes the duplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DupStatus {
    /// Unknown (a newer binary's status): frozen.
    Unspecified,
    /// Added: the source regions are being started (each gets its floor).
    Init,
    /// Every source region holds its floor; images are being taken.
    Prepare,
    /// The follower cluster is loading the images.
    App,
    /// The log after the images is being shipped.
    Log,
    /// Shipping is paused; the floors hold the log.
    Paused,
    /// Stopped by a fault (see the reason); a reseed starts a new incarnation.
    Broken,
    /// Removed: the regions drop their state, then the record goes.
    Removed,
    /// Cutting over (cluster version 8, `crate::version::DUP_V3`): every covered
    /// source region is fenced (client writes in the range refused), the log up to
    /// the fence ships, then the follower is promoted.
    CuttingOver,
    /// Cut over: the follower was promoted (writable); the source range stays fenced.
    CutOver,
}

impl DupStatus {
    /// The status's code.
    pub fn code(self) -> u64 {
        match self {
            DupStatus::Unspecified => 0,
            DupStatus::Init => 1,
            DupStatus::Prepare => 2,
            DupStatus::App => 3,
            DupStatus::Log => 4,
            DupStatus::Paused => 5,
            DupStatus::Broken => 6,
            DupStatus::Removed => 7,
            DupStatus::CuttingOver => 8,
            DupStatus::CutOver => 9,
        }
    }

    /// The status of `code`; an unknown code is [`DupStatus::Unspecified`].
    pub fn from_code(code: u64) -> DupStatus {
        match code {
            1 => DupStatus::Init,
            2 => DupStatus::Prepare,
            3 => DupStatus::App,
            4 => DupStatus::Log,
            5 => DupStatus::Paused,
            6 => DupStatus::Broken,
            7 => DupStatus::Removed,
            8 => DupStatus::CuttingOver,
            9 => DupStatus::CutOver,
            _ => DupStatus::Unspecified,
        }
    }

    /// The status's name, as the CLI prints it.
    pub fn name(self) -> &'static str {
        match self {
            DupStatus::Unspecified => "unspecified",
            DupStatus::Init => "init",
            DupStatus::Prepare => "prepare",
            DupStatus::App => "app",
            DupStatus::Log => "log",
            DupStatus::Paused => "paused",
            DupStatus::Broken => "broken",
            DupStatus::Removed => "removed",
            DupStatus::CuttingOver => "cutting over",
            DupStatus::CutOver => "cut over",
        }
    }
}

/// Why a duplication is broken. Code 0 is reserved: a code this binary does not know
/// decodes as [`BrokenReason::Unspecified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BrokenReason {
    /// Unknown (a newer binary's reason).
    Unspecified,
    /// The log held for it grew past the retention bound: it was released.
    LogRetentionExceeded,
    /// A source region's leader no longer has the log after what was confirmed.
    LogGap,
    /// The follower cluster refused what was shipped, for good.
    FollowerRejected,
    /// The follower cluster runs a binary that does not know duplication.
    FollowerTooOld,
    /// A source region's log holds an entry duplication cannot ship.
    UnsupportedEntry,
    /// An operator said so.
    Operator,
}

impl BrokenReason {
    /// The reason's code.
    pub fn code(self) -> u64 {
        match self {
            BrokenReason::Unspecified => 0,
            BrokenReason::LogRetentionExceeded => 1,
            BrokenReason::LogGap => 2,
            BrokenReason::FollowerRejected => 3,
            BrokenReason::FollowerTooOld => 4,
            BrokenReason::UnsupportedEntry => 5,
            BrokenReason::Operator => 6,
        }
    }

    /// The reason of `code`; an unknown code is [`BrokenReason::Unspecified`].
    pub fn from_code(code: u64) -> BrokenReason {
        match code {
            1 => BrokenReason::LogRetentionExceeded,
            2 => BrokenReason::LogGap,
            3 => BrokenReason::FollowerRejected,
            4 => BrokenReason::FollowerTooOld,
            5 => BrokenReason::UnsupportedEntry,
            6 => BrokenReason::Operator,
            _ => BrokenReason::Unspecified,
        }
    }

    /// The reason's name, as the CLI prints it.
    pub fn name(self) -> &'static str {
        match self {
            BrokenReason::Unspecified => "unspecified",
            BrokenReason::LogRetentionExceeded => "log retention exceeded",
            BrokenReason::LogGap => "log gap",
            BrokenReason::FollowerRejected => "follower rejected",
            BrokenReason::FollowerTooOld => "follower too old",
            BrokenReason::UnsupportedEntry => "unsupported log entry",
            BrokenReason::Operator => "operator",
        }
    }
}

/// Where a duplication ships to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DupRemote {
    /// An in-process cluster's name, or the follower nodes' addresses
    /// (`host:port[,host:port]`).
    pub name: String,
    /// The follower cluster's id (`None`: an in-process follower).
    pub cluster_id: Option<u64>,
    /// The follower cluster's client secret (`None`: an in-process follower).
    pub secret: Option<Vec<u8>>,
}

/// One duplication, as the directory holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DupRecord {
    /// Its id (allocated by the directory, never reused).
    pub dup_id: u64,
    /// Its status.
    pub status: DupStatus,
    /// 1, then one more on every reseed.
    pub incarnation: u32,
    /// The first key duplicated.
    pub start: Vec<u8>,
    /// The key past the last duplicated (`None`: unbounded).
    pub end: Option<Vec<u8>>,
    /// The follower cluster.
    pub remote: DupRemote,
    /// False: the follower is not seeded (the operator vouches that it holds the
    /// range already); the duplication goes from `Init` straight to `Log`.
    pub seed: bool,
    /// Why it is broken (`None`: not broken, or not said).
    pub broken: Option<BrokenReason>,
    /// When it was added, in ms since the Unix epoch (`None`: unknown).
    pub created_at_ms: Option<u64>,
}

impl DupRecord {
    /// True if `key` is in the duplicated range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// True if the duplicated range overlaps `[start, end)`.
    pub fn overlaps(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        let before_end = end.is_none_or(|end| self.start.as_slice() < end);
        let after_start = self.end.as_deref().is_none_or(|e| start < e);
        before_end && after_start
    }
}

/// True for the statuses of the cutover (cluster version 8, `crate::version::DUP_V3`):
/// a move to or from one is refused by the proposer below that version.
pub fn is_cutover_status(status: DupStatus) -> bool {
    matches!(status, DupStatus::CuttingOver | DupStatus::CutOver)
}

/// True if a duplication may move from `from` to `to`.
pub fn allowed(from: DupStatus, to: DupStatus) -> bool {
    use DupStatus::{
        App, Broken, CutOver, CuttingOver, Init, Log, Paused, Prepare, Removed, Unspecified,
    };
    match (from, to) {
        (_, Unspecified) | (Removed, _) => false,
        (_, Removed)
        | (Init, Prepare | Log)
        | (Prepare, App)
        | (App | Paused, Log)
        | (Log, Paused)
        | (Prepare | App | Log | Paused, Broken)
        | (Broken, Prepare)
        | (Log | Paused, CuttingOver)
        | (CuttingOver, CutOver) => true,
        _ => false,
    }
}

fn key(dup_id: u64) -> Vec<u8> {
    let mut key = vec![KEY_DUP];
    key.extend_from_slice(&dup_id.to_be_bytes());
    key
}

/// The record's bytes (format 1).
pub fn encode(record: &DupRecord) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    codec::put_u64(&mut out, F_ID, record.dup_id);
    codec::put_u64(&mut out, F_STATUS, record.status.code());
    codec::put_u64(&mut out, F_INCARNATION, u64::from(record.incarnation));
    codec::put_field(&mut out, F_START, &record.start);
    codec::put_range_end(&mut out, F_END, F_END_UNBOUNDED, record.end.as_deref());
    codec::put_field(&mut out, F_REMOTE, record.remote.name.as_bytes());
    if let Some(id) = record.remote.cluster_id {
        codec::put_u64(&mut out, F_REMOTE_CLUSTER, id);
    }
    if let Some(secret) = &record.remote.secret {
        codec::put_field(&mut out, F_REMOTE_SECRET, secret);
    }
    codec::put_field(&mut out, F_SEED, &[u8::from(record.seed)]);
    if let Some(reason) = record.broken {
        codec::put_u64(&mut out, F_BROKEN, reason.code());
    }
    if let Some(at) = record.created_at_ms {
        codec::put_u64(&mut out, F_CREATED, at);
    }
    out
}

/// Decodes a record written by [`encode`]; unknown tags are skipped.
pub fn decode(buf: &[u8]) -> DecodeResult<DupRecord> {
    let (&version, body) = buf.split_first().ok_or(DecodeError::new(0, "empty record"))?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::new(0, "duplication record of an unknown format version"));
    }
    decode_body(body).map_err(|e| e.shifted(1))
}

fn decode_body(body: &[u8]) -> DecodeResult<DupRecord> {
    let rec = TlvRecord::parse(body, FIELDS, UnknownTags::Skip)?;
    let incarnation = rec.required(F_INCARNATION, "incarnation")?;
    let name = rec.required(F_REMOTE, "remote")?;
    Ok(DupRecord {
        dup_id: rec.required(F_ID, "dup id")?.as_u64()?,
        status: DupStatus::from_code(rec.required(F_STATUS, "status")?.as_u64()?),
        incarnation: u32::try_from(incarnation.as_u64()?)
            .map_err(|_| DecodeError::new(incarnation.offset, "incarnation past u32"))?,
        start: rec.required(F_START, "range start")?.value.to_vec(),
        end: codec::range_end(&rec, F_END, F_END_UNBOUNDED)?,
        remote: DupRemote {
            name: String::from_utf8(name.value.to_vec())
                .map_err(|_| DecodeError::new(name.offset, "remote name is not UTF-8"))?,
            cluster_id: rec.optional(F_REMOTE_CLUSTER)?.map(|f| f.as_u64()).transpose()?,
            secret: rec.optional(F_REMOTE_SECRET)?.map(|f| f.value.to_vec()),
        },
        seed: rec.required(F_SEED, "seed flag")?.as_bool()?,
        broken: rec
            .optional(F_BROKEN)?
            .map(|f| f.as_u64().map(BrokenReason::from_code))
            .transpose()?,
        created_at_ms: rec.optional(F_CREATED)?.map(|f| f.as_u64()).transpose()?,
    })
}

/// Every duplication the directory holds, by id.
pub fn dups(snapshot: &ReadView) -> Result<Vec<DupRecord>> {
    let from = [KEY_DUP];
    let to = [KEY_DUP + 1];
    let mut out = Vec::new();
    let mut failed = None;
    snapshot.for_each(&from, Some(&to), |_, value| match decode(value) {
        Ok(record) => {
            out.push(record);
            true
        }
        Err(e) => {
            failed = Some(corrupt("duplication record", &e));
            false
        }
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The duplication `dup_id`, if the directory holds it.
pub fn dup(snapshot: &ReadView, dup_id: u64) -> Result<Option<DupRecord>> {
    snapshot
        .get(&key(dup_id))
        .map(|value| decode(&value).map_err(|e| corrupt("duplication record", &e)))
        .transpose()
}

fn refused(dup_id: u64, reason: DupRefusal) -> Error {
    Error::DupRefused { region: DIRECTORY, dup_id, reason }
}

/// Why `record` cannot be added, from the record alone.
pub(crate) fn check_add(record: &DupRecord) -> Result<()> {
    let invalid = |why: &str| Err(Error::InvalidRequest(format!("duplication: {why}")));
    if record.dup_id == 0 {
        return invalid("id 0 is reserved");
    }
    if record.status != DupStatus::Init || record.incarnation != 1 || record.broken.is_some() {
        return invalid("a duplication is added in Init, at incarnation 1, not broken");
    }
    if record.end.as_deref().is_some_and(|end| end <= record.start.as_slice()) {
        return invalid("an empty key range");
    }
    let secret = record.remote.secret.as_ref().map_or(0, Vec::len);
    if record.remote.name.is_empty() || record.remote.name.len().max(secret) > DUP_TEXT_MAX {
        return invalid("a remote name of 1 to 4096 bytes, and a secret of at most 4096");
    }
    Ok(())
}

/// Applies an `AddDup`: the record, in `Init`. An id the directory holds (in any
/// status) is refused.
pub(crate) fn add(
    snapshot: &ReadView,
    round: &mut ApplyRound<'_>,
    record: &DupRecord,
) -> Result<Result<DirResult>> {
    if dup(snapshot, record.dup_id)?.is_some() {
        return Ok(Err(refused(record.dup_id, DupRefusal::Exists)));
    }
    round.put(&key(record.dup_id), &encode(record))?;
    Ok(Ok(DirResult::Dup { record: Some(Box::new(record.clone())) }))
}

/// Applies an `AlterDup`: `from` must be the held status (else `WrongStage`), and the
/// move allowed (else `InvalidTransition`). `Broken -> Prepare` is a reseed: one more
/// incarnation, the reason cleared. A move to `Broken` records `reason`.
pub(crate) fn alter(
    snapshot: &ReadView,
    round: &mut ApplyRound<'_>,
    alteration: &DupAlteration,
) -> Result<Result<DirResult>> {
    let &DupAlteration { dup_id, from, to, reason } = alteration;
    let Some(mut record) = dup(snapshot, dup_id)? else {
        return Ok(Err(refused(dup_id, DupRefusal::NotFound)));
    };
    if record.status != from {
        return Ok(Err(refused(dup_id, DupRefusal::WrongStage)));
    }
    if !allowed(from, to) {
        let reason = if from == DupStatus::Unspecified {
            DupRefusal::Frozen
        } else {
            DupRefusal::InvalidTransition
        };
        return Ok(Err(refused(dup_id, reason)));
    }
    if (from, to) == (DupStatus::Broken, DupStatus::Prepare) {
        let Some(next) = record.incarnation.checked_add(1) else {
            return Ok(Err(refused(dup_id, DupRefusal::InvalidTransition)));
        };
        record.incarnation = next;
        record.broken = None;
    }
    if to == DupStatus::Broken {
        record.broken = Some(reason.unwrap_or(BrokenReason::Unspecified));
    }
    record.status = to;
    round.put(&key(dup_id), &encode(&record))?;
    Ok(Ok(DirResult::Dup { record: Some(Box::new(record)) }))
}

/// Applies a `DropDup`: only a `Removed` record goes (else `WrongStage`); a missing
/// one answers `None` (a retried drop).
pub(crate) fn drop_record(
    snapshot: &ReadView,
    round: &mut ApplyRound<'_>,
    dup_id: u64,
) -> Result<Result<DirResult>> {
    match dup(snapshot, dup_id)? {
        None => Ok(Ok(DirResult::Dup { record: None })),
        Some(record) if record.status != DupStatus::Removed => {
            Ok(Err(refused(dup_id, DupRefusal::WrongStage)))
        }
        Some(_) => {
            round.delete(&key(dup_id))?;
            Ok(Ok(DirResult::Dup { record: None }))
        }
    }
}

/// One status change of one duplication ([`super::DirCmd::AlterDup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DupAlteration {
    /// The duplication.
    pub dup_id: u64,
    /// The status it must hold now.
    pub from: DupStatus,
    /// The status it moves to.
    pub to: DupStatus,
    /// Why, for a move to `Broken` (`None`: not said).
    pub reason: Option<BrokenReason>,
}

#[cfg(test)]
mod tests;
