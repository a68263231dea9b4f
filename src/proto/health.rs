//! The health monitor's answer on the client protocol (`Request::Health`): its last
//! report, or its audit, or "not the monitor" from a node whose store does not lead
//! the directory. Analyses, fields, repair kinds, priorities and liveness travel as
//! their names, never as numbers: a name this binary does not know (a newer node's
//! analysis) is skipped and counted, never taken for another.
//!
//! ```text
//!  health       1 format version (1), and exactly one of
//!               2 not the monitor   3 report   4 audit { 1 entry* }
//!  report       1 at (us)  2 detection*  3 insufficient*  4 planned*  5 dry run (0/1)
//!               6 store*  7 insufficient total* { 1 analysis, 2 field, 3 count }
//!               8 repairs total* { 1 repair kind, 2 result, 3 count }
//!               9 turns whose repairs waited for the cluster version
//!  detection    1 analysis  2 priority  3 subject  4 detail  5 since (us)
//!  insufficient 1 analysis  2 subject  3 field  4 store that did not report it (optional)
//!  subject      exactly one of 1 region id | 2 store id | 3 cluster (empty)
//!  planned      1 repair kind  2 region  3 reason (analysis)  4 store to remove (optional)
//!  store        1 store  2 liveness (up, unknown, down)  3 down since (us; with down)
//!               4 status schema (optional: absent = no report yet)  5 binary (optional)
//!               6 lifecycle (optional)  7 leaders  8 replicas
//!  audit entry  1 seq  2 at (us)  3 planned  4 event
//! ```
//!
//! A format version other than 1 is refused as a whole (a newer node changed the
//! meaning, not only added fields); within version 1 fields grow by new tags, which a
//! reader skips.

use std::time::Duration;

use regionkv_engine::codec::{self, DecodeError, Field};
use regionkv_engine::{RegionId, StoreId};

use super::records::{D, nested, opt_u64, req_u64};
use crate::health::{
    AnalysisCode, AuditEntry, Detection, FieldId, HealthReport, Insufficient, Liveness,
    PlannedRepair, Priority, RepairKind, StoreHealth, StoreLifecycle, Subject, Unknown,
};

/// What a node answers to `Request::Health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HealthAnswer {
    /// This node does not run the monitor (its store does not lead the directory).
    NotMonitor,
    /// The monitor's last evaluation (`skipped` counts what the decoder could not
    /// name; see [`HealthReport::skipped`]).
    Report(Box<HealthReport>),
    /// The monitor's audit, oldest first; `skipped` counts the entries a decoder left
    /// out because it could not name their repair (0 when encoded).
    Audit { entries: Vec<AuditEntry>, skipped: u64 },
}

/// The format version of the health record.
const FORMAT: u64 = 1;

const H_FORMAT: u16 = 1;
const H_NOT_MONITOR: u16 = 2;
const H_REPORT: u16 = 3;
const H_AUDIT: u16 = 4;

const R_AT: u16 = 1;
const R_DETECTION: u16 = 2;
const R_INSUFFICIENT: u16 = 3;
const R_PLANNED: u16 = 4;
const R_DRY_RUN: u16 = 5;
const R_STORE: u16 = 6;
const R_INSUFFICIENT_TOTAL: u16 = 7;
const R_REPAIRS_TOTAL: u16 = 8;
const R_REPAIRS_DEFERRED: u16 = 9;

const D_ANALYSIS: u16 = 1;
const D_PRIORITY: u16 = 2;
const D_SUBJECT: u16 = 3;
const D_DETAIL: u16 = 4;
const D_SINCE: u16 = 5;

const I_ANALYSIS: u16 = 1;
const I_SUBJECT: u16 = 2;
const I_FIELD: u16 = 3;
const I_STORE: u16 = 4;

const SJ_REGION: u16 = 1;
const SJ_STORE: u16 = 2;
const SJ_CLUSTER: u16 = 3;

const P_KIND: u16 = 1;
const P_REGION: u16 = 2;
const P_REASON: u16 = 3;
const P_REMOVE: u16 = 4;

const S_STORE: u16 = 1;
const S_LIVENESS: u16 = 2;
const S_DOWN_SINCE: u16 = 3;
const S_SCHEMA: u16 = 4;
const S_BINARY: u16 = 5;
const S_LIFECYCLE: u16 = 6;
const S_LEADERS: u16 = 7;
const S_REPLICAS: u16 = 8;

const T_NAME: u16 = 1;
const T_OTHER: u16 = 2;
const T_COUNT: u16 = 3;

const A_ENTRY: u16 = 1;
const AE_SEQ: u16 = 1;
const AE_AT: u16 = 2;
const AE_REPAIR: u16 = 3;
const AE_EVENT: u16 = 4;

// ---- names ----

/// Every field the monitor may name (the match below fails to compile when one is added
/// and not listed).
const FIELDS: [FieldId; 11] = [
    FieldId::Role,
    FieldId::FirstIndex,
    FieldId::Timeline,
    FieldId::Progress,
    FieldId::RecentActive,
    FieldId::IsLearner,
    FieldId::ImageHash,
    FieldId::BinaryVersion,
    FieldId::StoreState,
    FieldId::StatusSchema,
    FieldId::OldestLockAge,
];

const _: fn(FieldId) = |f| match f {
    FieldId::Role
    | FieldId::FirstIndex
    | FieldId::Timeline
    | FieldId::Progress
    | FieldId::RecentActive
    | FieldId::IsLearner
    | FieldId::ImageHash
    | FieldId::BinaryVersion
    | FieldId::StoreState
    | FieldId::StatusSchema
    | FieldId::OldestLockAge => {}
};

const KINDS: [RepairKind; 4] = [
    RepairKind::WakeRegion,
    RepairKind::ReplaceReplica,
    RepairKind::AddReplica,
    RepairKind::RemoveReplica,
];

const _: fn(RepairKind) = |k| match k {
    RepairKind::WakeRegion
    | RepairKind::ReplaceReplica
    | RepairKind::AddReplica
    | RepairKind::RemoveReplica => {}
};

impl Priority {
    /// Its name in reports (the client protocol's health record, the CLI).
    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

fn priority_of(name: &str) -> Option<Priority> {
    [Priority::Critical, Priority::High, Priority::Medium, Priority::Low]
        .into_iter()
        .find(|p| p.name() == name)
}

impl StoreLifecycle {
    /// Its name in reports (the client protocol's health record, the CLI).
    pub fn name(self) -> &'static str {
        match self {
            StoreLifecycle::Serving => "serving",
            StoreLifecycle::Stopping => "stopping",
            StoreLifecycle::Failed => "failed",
            StoreLifecycle::Recovering => "recovering",
        }
    }
}

fn lifecycle_of(name: &str) -> Option<StoreLifecycle> {
    [
        StoreLifecycle::Serving,
        StoreLifecycle::Stopping,
        StoreLifecycle::Failed,
        StoreLifecycle::Recovering,
    ]
    .into_iter()
    .find(|s| s.name() == name)
}

fn field_of(name: &str) -> Option<FieldId> {
    FIELDS.into_iter().find(|f| f.name() == name)
}

fn kind_of(name: &str) -> Option<RepairKind> {
    KINDS.into_iter().find(|k| k.name() == name)
}

// ---- encoding ----

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn put_str(o: &mut Vec<u8>, tag: u16, s: &str) {
    codec::put_field(o, tag, s.as_bytes());
}

fn put_subject(o: &mut Vec<u8>, tag: u16, s: Subject) {
    codec::put_nested(o, tag, |o| match s {
        Subject::Region(r) => codec::put_u64(o, SJ_REGION, r.0),
        Subject::Store(s) => codec::put_u64(o, SJ_STORE, s.0),
        Subject::Cluster => codec::put_field(o, SJ_CLUSTER, &[]),
    });
}

fn put_planned(o: &mut Vec<u8>, tag: u16, p: &PlannedRepair) {
    codec::put_nested(o, tag, |o| {
        put_str(o, P_KIND, p.kind.name());
        codec::put_u64(o, P_REGION, p.region.0);
        put_str(o, P_REASON, p.reason.name());
        if let Some(s) = p.remove {
            codec::put_u64(o, P_REMOVE, s.0);
        }
    });
}

fn put_report(o: &mut Vec<u8>, r: &HealthReport) {
    codec::put_u64(o, R_AT, micros(r.at));
    for d in &r.detections {
        codec::put_nested(o, R_DETECTION, |o| {
            put_str(o, D_ANALYSIS, d.code.name());
            put_str(o, D_PRIORITY, d.priority.name());
            put_subject(o, D_SUBJECT, d.subject);
            put_str(o, D_DETAIL, &d.detail);
            codec::put_u64(o, D_SINCE, micros(d.since));
        });
    }
    for i in &r.insufficient {
        codec::put_nested(o, R_INSUFFICIENT, |o| {
            put_str(o, I_ANALYSIS, i.code.name());
            put_subject(o, I_SUBJECT, i.subject);
            put_str(o, I_FIELD, i.missing.field.name());
            if let Some(s) = i.missing.store {
                codec::put_u64(o, I_STORE, s.0);
            }
        });
    }
    for p in &r.planned {
        put_planned(o, R_PLANNED, p);
    }
    codec::put_u64(o, R_DRY_RUN, u64::from(r.dry_run));
    for s in &r.stores {
        codec::put_nested(o, R_STORE, |o| {
            codec::put_u64(o, S_STORE, s.store.0);
            let liveness = match s.liveness {
                Liveness::Up => "up",
                Liveness::Unknown => "unknown",
                Liveness::Down { since } => {
                    codec::put_u64(o, S_DOWN_SINCE, micros(since));
                    "down"
                }
            };
            put_str(o, S_LIVENESS, liveness);
            if let Some((schema, binary, lifecycle)) = &s.report {
                codec::put_u64(o, S_SCHEMA, u64::from(*schema));
                if let Some(b) = binary {
                    put_str(o, S_BINARY, b);
                }
                if let Some(l) = lifecycle {
                    put_str(o, S_LIFECYCLE, l.name());
                }
            }
            codec::put_u64(o, S_LEADERS, s.leaders as u64);
            codec::put_u64(o, S_REPLICAS, s.replicas as u64);
        });
    }
    for (code, field, n) in &r.insufficient_total {
        codec::put_nested(o, R_INSUFFICIENT_TOTAL, |o| {
            put_str(o, T_NAME, code.name());
            put_str(o, T_OTHER, field.name());
            codec::put_u64(o, T_COUNT, *n);
        });
    }
    for (kind, result, n) in &r.repairs_total {
        codec::put_nested(o, R_REPAIRS_TOTAL, |o| {
            put_str(o, T_NAME, kind.name());
            put_str(o, T_OTHER, result);
            codec::put_u64(o, T_COUNT, *n);
        });
    }
    codec::put_u64(o, R_REPAIRS_DEFERRED, r.repairs_deferred);
}

fn put_audit(o: &mut Vec<u8>, entries: &[AuditEntry]) {
    for e in entries {
        codec::put_nested(o, A_ENTRY, |o| {
            codec::put_u64(o, AE_SEQ, e.seq);
            codec::put_u64(o, AE_AT, micros(e.at));
            put_planned(o, AE_REPAIR, &e.repair);
            put_str(o, AE_EVENT, &e.event);
        });
    }
}

/// Appends the health record under `tag`.
pub(super) fn put_health(out: &mut Vec<u8>, tag: u16, answer: &HealthAnswer) {
    codec::put_nested(out, tag, |o| {
        codec::put_u64(o, H_FORMAT, FORMAT);
        match answer {
            HealthAnswer::NotMonitor => codec::put_field(o, H_NOT_MONITOR, &[]),
            HealthAnswer::Report(r) => codec::put_nested(o, H_REPORT, |o| put_report(o, r)),
            HealthAnswer::Audit { entries, skipped: _ } => {
                codec::put_nested(o, H_AUDIT, |o| put_audit(o, entries));
            }
        }
    });
}

// ---- decoding ----

fn str_of<'a>(f: &Field<'a>) -> D<&'a str> {
    std::str::from_utf8(f.value).map_err(|_| DecodeError::new(f.offset, "a name is not UTF-8"))
}

fn req_str<'a>(r: &codec::TlvRecord<'a>, tag: u16, what: &'static str) -> D<&'a str> {
    str_of(&r.required(tag, what)?)
}

fn duration_of(r: &codec::TlvRecord<'_>, tag: u16, what: &'static str) -> D<Duration> {
    Ok(Duration::from_micros(req_u64(r, tag, what)?))
}

/// A subject, or `None` if it is of a kind this binary does not know.
fn subject_of(f: &Field<'_>) -> D<Option<Subject>> {
    let r = nested(f, &[SJ_REGION, SJ_STORE, SJ_CLUSTER])?;
    let region = opt_u64(&r, SJ_REGION)?;
    let store = opt_u64(&r, SJ_STORE)?;
    let cluster = r.optional(SJ_CLUSTER)?;
    Ok(match (region, store, cluster) {
        (Some(id), None, None) => Some(Subject::Region(RegionId(id))),
        (None, Some(id), None) => Some(Subject::Store(StoreId(id))),
        (None, None, Some(_)) => Some(Subject::Cluster),
        (None, None, None) => None,
        _ => return Err(DecodeError::new(f.offset, "a subject is of one kind")),
    })
}

/// A planned repair, or `None` if it names what this binary does not know.
fn planned_of(f: &Field<'_>) -> D<Option<PlannedRepair>> {
    let r = nested(f, &[P_KIND, P_REGION, P_REASON, P_REMOVE])?;
    let kind = kind_of(req_str(&r, P_KIND, "repair kind missing")?);
    let reason = AnalysisCode::from_name(req_str(&r, P_REASON, "repair reason missing")?);
    let region = RegionId(req_u64(&r, P_REGION, "repair region missing")?);
    let remove = opt_u64(&r, P_REMOVE)?.map(StoreId);
    Ok(kind.zip(reason).map(|(kind, reason)| PlannedRepair { kind, region, reason, remove }))
}

const REPORT_TAGS: &[u16] = &[
    R_AT,
    R_DETECTION,
    R_INSUFFICIENT,
    R_PLANNED,
    R_DRY_RUN,
    R_STORE,
    R_INSUFFICIENT_TOTAL,
    R_REPAIRS_TOTAL,
    R_REPAIRS_DEFERRED,
];

/// One store's health, or `None` if its liveness is of a kind this binary does not
/// know; and how many names it could not read (a lifecycle it does not know is None).
fn store_health_of(field: &Field<'_>) -> D<(Option<StoreHealth>, u64)> {
    let mut unknown = 0;
    let s = nested(
        field,
        &[
            S_STORE,
            S_LIVENESS,
            S_DOWN_SINCE,
            S_SCHEMA,
            S_BINARY,
            S_LIFECYCLE,
            S_LEADERS,
            S_REPLICAS,
        ],
    )?;
    let liveness = match req_str(&s, S_LIVENESS, "liveness missing")? {
        "up" => Some(Liveness::Up),
        "unknown" => Some(Liveness::Unknown),
        "down" => Some(Liveness::Down { since: duration_of(&s, S_DOWN_SINCE, "since missing")? }),
        _ => None,
    };
    let report = match opt_u64(&s, S_SCHEMA)? {
        Some(schema) => {
            let schema = u32::try_from(schema)
                .map_err(|_| DecodeError::new(field.offset, "status schema over u32"))?;
            let binary = s.optional(S_BINARY)?.map(|b| str_of(&b)).transpose()?;
            let lifecycle = match s.optional(S_LIFECYCLE)? {
                Some(l) => {
                    let known = lifecycle_of(str_of(&l)?);
                    // An unknown lifecycle is unknown (None), and counted.
                    unknown += u64::from(known.is_none());
                    known
                }
                None => None,
            };
            Some((schema, binary.map(str::to_owned), lifecycle))
        }
        None => None,
    };
    let count = |tag, what| -> D<usize> {
        usize::try_from(req_u64(&s, tag, what)?)
            .map_err(|_| DecodeError::new(field.offset, "a count over usize"))
    };
    let store = StoreId(req_u64(&s, S_STORE, "store missing")?);
    let (leaders, replicas) =
        (count(S_LEADERS, "leaders missing")?, count(S_REPLICAS, "replicas missing")?);
    if liveness.is_none() {
        unknown += 1;
    }
    Ok((
        liveness.map(|liveness| StoreHealth { store, liveness, report, leaders, replicas }),
        unknown,
    ))
}

fn report_of(f: &Field<'_>) -> D<HealthReport> {
    let r = nested(f, REPORT_TAGS)?;
    let skipped = std::cell::Cell::new(0u64);
    let keep = |known: bool| {
        if !known {
            skipped.set(skipped.get() + 1);
        }
        known
    };
    let mut detections = Vec::new();
    for d in r.repeated(R_DETECTION) {
        let d = nested(&d, &[D_ANALYSIS, D_PRIORITY, D_SUBJECT, D_DETAIL, D_SINCE])?;
        let code = AnalysisCode::from_name(req_str(&d, D_ANALYSIS, "analysis missing")?);
        let priority = priority_of(req_str(&d, D_PRIORITY, "priority missing")?);
        let subject = subject_of(&d.required(D_SUBJECT, "subject missing")?)?;
        let detail = req_str(&d, D_DETAIL, "detail missing")?.to_owned();
        let since = duration_of(&d, D_SINCE, "since missing")?;
        if keep(code.is_some() && priority.is_some() && subject.is_some())
            && let (Some(code), Some(priority), Some(subject)) = (code, priority, subject)
        {
            detections.push(Detection { code, priority, subject, detail, since });
        }
    }
    let mut insufficient = Vec::new();
    for i in r.repeated(R_INSUFFICIENT) {
        let i = nested(&i, &[I_ANALYSIS, I_SUBJECT, I_FIELD, I_STORE])?;
        let code = AnalysisCode::from_name(req_str(&i, I_ANALYSIS, "analysis missing")?);
        let subject = subject_of(&i.required(I_SUBJECT, "subject missing")?)?;
        let field = field_of(req_str(&i, I_FIELD, "field missing")?);
        let store = opt_u64(&i, I_STORE)?.map(StoreId);
        if keep(code.is_some() && subject.is_some() && field.is_some())
            && let (Some(code), Some(subject), Some(field)) = (code, subject, field)
        {
            insufficient.push(Insufficient { code, subject, missing: Unknown { field, store } });
        }
    }
    let mut planned = Vec::new();
    for p in r.repeated(R_PLANNED) {
        let p = planned_of(&p)?;
        if keep(p.is_some()) {
            planned.extend(p);
        }
    }
    let mut stores = Vec::new();
    for field in r.repeated(R_STORE) {
        let (store, unknown) = store_health_of(&field)?;
        skipped.set(skipped.get() + unknown);
        stores.extend(store);
    }
    let mut insufficient_total = Vec::new();
    for t in r.repeated(R_INSUFFICIENT_TOTAL) {
        let t = nested(&t, &[T_NAME, T_OTHER, T_COUNT])?;
        let code = AnalysisCode::from_name(req_str(&t, T_NAME, "analysis missing")?);
        let field = field_of(req_str(&t, T_OTHER, "field missing")?);
        let n = req_u64(&t, T_COUNT, "count missing")?;
        if keep(code.is_some() && field.is_some())
            && let (Some(code), Some(field)) = (code, field)
        {
            insufficient_total.push((code, field, n));
        }
    }
    let mut repairs_total = Vec::new();
    for t in r.repeated(R_REPAIRS_TOTAL) {
        let t = nested(&t, &[T_NAME, T_OTHER, T_COUNT])?;
        let kind = kind_of(req_str(&t, T_NAME, "repair kind missing")?);
        let result = req_str(&t, T_OTHER, "result missing")?.to_owned();
        let n = req_u64(&t, T_COUNT, "count missing")?;
        if keep(kind.is_some())
            && let Some(kind) = kind
        {
            repairs_total.push((kind, result, n));
        }
    }
    let dry_run = match req_u64(&r, R_DRY_RUN, "dry run missing")? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::new(f.offset, "dry run is 0 or 1")),
    };
    Ok(HealthReport {
        at: duration_of(&r, R_AT, "report time missing")?,
        detections,
        insufficient,
        planned,
        dry_run,
        stores,
        insufficient_total,
        repairs_total,
        skipped: skipped.get(),
        repairs_deferred: req_u64(&r, R_REPAIRS_DEFERRED, "repairs deferred missing")?,
    })
}

fn audit_of(f: &Field<'_>) -> D<(Vec<AuditEntry>, u64)> {
    let r = nested(f, &[A_ENTRY])?;
    let (mut entries, mut skipped) = (Vec::new(), 0);
    for e in r.repeated(A_ENTRY) {
        let e = nested(&e, &[AE_SEQ, AE_AT, AE_REPAIR, AE_EVENT])?;
        let seq = req_u64(&e, AE_SEQ, "audit seq missing")?;
        let at = duration_of(&e, AE_AT, "audit time missing")?;
        let repair = planned_of(&e.required(AE_REPAIR, "audit repair missing")?)?;
        let event = req_str(&e, AE_EVENT, "audit event missing")?.to_owned();
        match repair {
            Some(repair) => entries.push(AuditEntry { seq, at, repair, event }),
            None => skipped += 1,
        }
    }
    Ok((entries, skipped))
}

/// Decodes the health record. Never panics.
pub(super) fn health_of(f: &Field<'_>) -> D<HealthAnswer> {
    let r = nested(f, &[H_FORMAT, H_NOT_MONITOR, H_REPORT, H_AUDIT])?;
    if req_u64(&r, H_FORMAT, "health format missing")? != FORMAT {
        return Err(DecodeError::new(
            f.offset,
            "a health record of a newer format: upgrade this client",
        ));
    }
    let bodies = [r.optional(H_NOT_MONITOR)?, r.optional(H_REPORT)?, r.optional(H_AUDIT)?];
    Ok(match bodies {
        [Some(_), None, None] => HealthAnswer::NotMonitor,
        [None, Some(report), None] => HealthAnswer::Report(Box::new(report_of(&report)?)),
        [None, None, Some(audit)] => {
            let (entries, skipped) = audit_of(&audit)?;
            HealthAnswer::Audit { entries, skipped }
        }
        _ => return Err(DecodeError::new(f.offset, "a health record holds exactly one answer")),
    })
}
