//! The client protocol's sub-records: each a `put_*` that appends it and a `*_of` that
//! decodes it (epochs, regions, ranges, admin and directory commands and results,
//! merge statuses, metrics, region infos), and the decoding helpers they share. Status
//! records are in `status.rs`.

use regionkv_engine::codec::{self, DecodeError, Field, TlvRecord, UnknownTags};
use regionkv_engine::{Epoch, MergeState, Region, RegionId, StoreId};
use regionkv_raft::directory::{self, DirCmd, DirResult, RegionRecord};
use regionkv_raft::{AdminCmd, AdminResult, MergeStatus, StoreMetrics};
use regionkv_wal::{Histogram, HistogramSnapshot, WalStats};

use super::status::{peer_status_of, put_peer_status};
use crate::region_info::RegionInfo;

// Epoch fields.
const EP_VERSION: u16 = 1;
const EP_CONF_VER: u16 = 2;
// Scan range fields.
const S_START: u16 = 1;
const S_END: u16 = 2;
const S_UNBOUNDED: u16 = 3;
const S_LIMIT: u16 = 4;

pub(super) type D<T> = Result<T, DecodeError>;

pub(super) fn parse<'a>(buf: &'a [u8], tags: &[u16]) -> D<TlvRecord<'a>> {
    // Always skip unknown tags: they come from a newer, compatible writer.
    TlvRecord::parse(buf, tags, UnknownTags::Skip)
}

pub(super) fn nested<'a>(field: &Field<'a>, tags: &[u16]) -> D<TlvRecord<'a>> {
    parse(field.value, tags).map_err(|e| e.shifted(field.offset))
}

pub(super) fn req_u64(rec: &TlvRecord<'_>, tag: u16, what: &'static str) -> D<u64> {
    rec.required(tag, what)?.as_u64()
}

pub(super) fn opt_u64(rec: &TlvRecord<'_>, tag: u16) -> D<Option<u64>> {
    rec.optional(tag)?.map(|f| f.as_u64()).transpose()
}

pub(super) fn put_flag(o: &mut Vec<u8>, tag: u16, flag: bool) {
    codec::put_field(o, tag, &[u8::from(flag)]);
}

pub(super) fn put_epoch(out: &mut Vec<u8>, tag: u16, epoch: Epoch) {
    codec::put_nested(out, tag, |o| {
        codec::put_u64(o, EP_VERSION, epoch.version);
        codec::put_u64(o, EP_CONF_VER, epoch.conf_ver);
    });
}

pub(super) fn epoch_of(rec: &TlvRecord<'_>, tag: u16) -> D<Epoch> {
    let f = rec.required(tag, "epoch missing")?;
    let e = nested(&f, &[EP_VERSION, EP_CONF_VER])?;
    Ok(Epoch {
        version: req_u64(&e, EP_VERSION, "epoch version missing")?,
        conf_ver: req_u64(&e, EP_CONF_VER, "epoch conf_ver missing")?,
    })
}

pub(super) fn put_region(out: &mut Vec<u8>, tag: u16, region: &Region) {
    codec::put_nested(out, tag, |o| codec::put_region(o, region));
}

pub(super) fn region_of(field: &Field<'_>) -> D<Region> {
    codec::decode_region(field.value, UnknownTags::Skip).map_err(|e| e.shifted(field.offset))
}

pub(super) fn put_range(out: &mut Vec<u8>, start: &[u8], end: Option<&[u8]>, limit: usize) {
    codec::put_field(out, S_START, start);
    codec::put_range_end(out, S_END, S_UNBOUNDED, end);
    codec::put_u64(out, S_LIMIT, limit as u64);
}

pub(super) fn range_of(field: &Field<'_>) -> D<(Vec<u8>, Option<Vec<u8>>, usize)> {
    let s = nested(field, &[S_START, S_END, S_UNBOUNDED, S_LIMIT])?;
    let start = s.required(S_START, "scan start missing")?.value.to_vec();
    let end = codec::range_end(&s, S_END, S_UNBOUNDED)?;
    let limit = usize::try_from(req_u64(&s, S_LIMIT, "scan limit missing")?).unwrap_or(usize::MAX);
    Ok((start, end, limit))
}

// ---- admin and directory commands ----

const A_KIND: u16 = 1;
const A_KEY: u16 = 2;
const A_ID: u16 = 3;
const A_REGION: u16 = 4;
const A_INDEX: u16 = 5;
const A_TERM: u16 = 6;
const A_HASH: u16 = 7;
const A_TAGS: &[u16] = &[A_KIND, A_KEY, A_ID, A_REGION, A_INDEX, A_TERM, A_HASH];
const AK_SPLIT: u64 = 1;
const AK_PREPARE: u64 = 2;
const AK_COMMIT: u64 = 3;
const AK_ROLLBACK: u64 = 4;
const AK_COMPUTE_HASH: u64 = 5;
const AR_SPLIT: u64 = 1;
const AR_PREPARED: u64 = 2;
const AR_MERGED: u64 = 3;
const AR_ROLLED_BACK: u64 = 4;
const AR_IMAGE_HASH: u64 = 5;

pub(super) fn put_admin_cmd(o: &mut Vec<u8>, cmd: &AdminCmd) {
    match cmd {
        AdminCmd::Split { split_keys, new_ids } => {
            codec::put_u64(o, A_KIND, AK_SPLIT);
            for k in split_keys {
                codec::put_field(o, A_KEY, k);
            }
            for id in new_ids {
                codec::put_u64(o, A_ID, id.0);
            }
        }
        AdminCmd::PrepareMerge { target } => {
            codec::put_u64(o, A_KIND, AK_PREPARE);
            put_region(o, A_REGION, target);
        }
        AdminCmd::CommitMerge { source, prepare_index, prepare_term } => {
            codec::put_u64(o, A_KIND, AK_COMMIT);
            put_region(o, A_REGION, source);
            codec::put_u64(o, A_INDEX, *prepare_index);
            codec::put_u64(o, A_TERM, *prepare_term);
        }
        AdminCmd::RollbackMerge { prepare_index } => {
            codec::put_u64(o, A_KIND, AK_ROLLBACK);
            codec::put_u64(o, A_INDEX, *prepare_index);
        }
        AdminCmd::ComputeHash => codec::put_u64(o, A_KIND, AK_COMPUTE_HASH),
    }
}

pub(super) fn admin_cmd_of(f: &Field<'_>) -> D<AdminCmd> {
    let r = nested(f, A_TAGS)?;
    let region = || region_of(&r.required(A_REGION, "region missing")?);
    let index = || req_u64(&r, A_INDEX, "prepare index missing");
    Ok(match req_u64(&r, A_KIND, "admin kind missing")? {
        AK_SPLIT => AdminCmd::Split {
            split_keys: r.repeated(A_KEY).map(|k| k.value.to_vec()).collect(),
            new_ids: r.repeated(A_ID).map(|i| i.as_u64().map(RegionId)).collect::<D<_>>()?,
        },
        AK_PREPARE => AdminCmd::PrepareMerge { target: region()? },
        AK_COMMIT => AdminCmd::CommitMerge {
            source: region()?,
            prepare_index: index()?,
            prepare_term: req_u64(&r, A_TERM, "prepare term missing")?,
        },
        AK_ROLLBACK => AdminCmd::RollbackMerge { prepare_index: index()? },
        AK_COMPUTE_HASH => AdminCmd::ComputeHash,
        _ => return Err(DecodeError::new(f.offset, "unknown admin command")),
    })
}

pub(super) fn put_admin_result(o: &mut Vec<u8>, result: &AdminResult) {
    match result {
        AdminResult::Split(parts) => {
            codec::put_u64(o, A_KIND, AR_SPLIT);
            for p in parts {
                put_region(o, A_REGION, p);
            }
        }
        AdminResult::Prepared { source, prepare_index, prepare_term } => {
            codec::put_u64(o, A_KIND, AR_PREPARED);
            put_region(o, A_REGION, source);
            codec::put_u64(o, A_INDEX, *prepare_index);
            codec::put_u64(o, A_TERM, *prepare_term);
        }
        AdminResult::Merged(r) => {
            codec::put_u64(o, A_KIND, AR_MERGED);
            put_region(o, A_REGION, r);
        }
        AdminResult::RolledBack(r) => {
            codec::put_u64(o, A_KIND, AR_ROLLED_BACK);
            put_region(o, A_REGION, r);
        }
        AdminResult::ImageHash { index, hash } => {
            codec::put_u64(o, A_KIND, AR_IMAGE_HASH);
            codec::put_u64(o, A_INDEX, *index);
            codec::put_u64(o, A_HASH, *hash);
        }
    }
}

pub(super) fn admin_result_of(f: &Field<'_>) -> D<AdminResult> {
    let r = nested(f, A_TAGS)?;
    let region = || region_of(&r.required(A_REGION, "region missing")?);
    Ok(match req_u64(&r, A_KIND, "admin result kind missing")? {
        AR_SPLIT => {
            AdminResult::Split(r.repeated(A_REGION).map(|f| region_of(&f)).collect::<D<_>>()?)
        }
        AR_PREPARED => AdminResult::Prepared {
            source: region()?,
            prepare_index: req_u64(&r, A_INDEX, "prepare index missing")?,
            prepare_term: req_u64(&r, A_TERM, "prepare term missing")?,
        },
        AR_MERGED => AdminResult::Merged(region()?),
        AR_ROLLED_BACK => AdminResult::RolledBack(region()?),
        AR_IMAGE_HASH => AdminResult::ImageHash {
            index: req_u64(&r, A_INDEX, "image hash index missing")?,
            hash: req_u64(&r, A_HASH, "image hash missing")?,
        },
        _ => return Err(DecodeError::new(f.offset, "unknown admin result")),
    })
}

const DC_KIND: u16 = 1;
const DC_COUNT: u16 = 2;
const DC_RECORD: u16 = 3;
const DC_FIRST: u16 = 4;
const DC_TAKEN: u16 = 5;
const DC_TARGET: u16 = 6;
const DC_BY: u16 = 7;
const DC_ACTIVE: u16 = 8;
const DC_HEALTH: u16 = 9;
const DC_SEQ: u16 = 10;
const DC_LIMIT: u16 = 11;
const DC_PREVIOUS: u16 = 12;
const DC_TAGS: &[u16] = &[
    DC_KIND,
    DC_COUNT,
    DC_RECORD,
    DC_FIRST,
    DC_TAKEN,
    DC_TARGET,
    DC_BY,
    DC_ACTIVE,
    DC_HEALTH,
    DC_SEQ,
    DC_LIMIT,
    DC_PREVIOUS,
    DC_SAFEPOINT,
    DC_DUP_CMD,
    DC_DUP_RECORD,
];
/// A duplication command (`DirCmd::AddDup`, `AlterDup`, `DropDup`; kind 7, since
/// cluster version 7), carried as the directory's own encoding of it (which has its
/// own kinds), and the duplication record a result holds (optional: none when
/// dropped), as the directory encodes it (its format byte first).
const DC_DUP_CMD: u16 = 43;
const DC_DUP_RECORD: u16 = 44;
const DK_DUP: u64 = 7;
/// Helper "gc"'s tag 42: the version GC safepoint of `DirCmd::SetGcSafepoint` and of
/// its result (kind 6, since cluster version 4).
const DC_SAFEPOINT: u16 = 42;
const DK_GC_SAFEPOINT: u64 = 6;
/// The timestamp oracle's limit (`DirCmd::SaveTsLimit`), since cluster version 3.
const DK_TS_LIMIT: u64 = 5;
const DK_HEALTH: u64 = 4;
const DK_ALLOC: u64 = 1;
const DK_REPORT: u64 = 2;
const DK_SET_VERSION: u64 = 3;

fn version_of(r: &codec::TlvRecord<'_>, tag: u16, what: &'static str) -> D<u32> {
    let f = r.required(tag, what)?;
    u32::try_from(f.as_u64()?).map_err(|_| DecodeError::new(f.offset, "version over u32"))
}
const RR_REGION: u16 = 1;
const RR_LEADER: u16 = 2;

pub(super) fn put_record(o: &mut Vec<u8>, tag: u16, record: &RegionRecord) {
    codec::put_nested(o, tag, |o| {
        put_region(o, RR_REGION, &record.region);
        if let Some(l) = record.leader {
            codec::put_u64(o, RR_LEADER, l.0);
        }
    });
}

pub(super) fn record_of(f: &Field<'_>) -> D<RegionRecord> {
    let r = nested(f, &[RR_REGION, RR_LEADER])?;
    Ok(RegionRecord {
        region: region_of(&r.required(RR_REGION, "region missing")?)?,
        leader: opt_u64(&r, RR_LEADER)?.map(StoreId),
    })
}

pub(super) fn put_dir_cmd(o: &mut Vec<u8>, cmd: &DirCmd) {
    match cmd {
        DirCmd::AllocIds { count } => {
            codec::put_u64(o, DC_KIND, DK_ALLOC);
            codec::put_u64(o, DC_COUNT, *count);
        }
        DirCmd::Report { records } => {
            codec::put_u64(o, DC_KIND, DK_REPORT);
            for r in records {
                put_record(o, DC_RECORD, r);
            }
        }
        DirCmd::RecordHealth { event } => {
            codec::put_u64(o, DC_KIND, DK_HEALTH);
            codec::put_nested(o, DC_HEALTH, |o| directory::put_health_fields(o, event));
        }
        DirCmd::SetClusterVersion { target, by } => {
            codec::put_u64(o, DC_KIND, DK_SET_VERSION);
            codec::put_u64(o, DC_TARGET, u64::from(*target));
            codec::put_u64(o, DC_BY, by.0);
        }
        DirCmd::SaveTsLimit { limit } => {
            codec::put_u64(o, DC_KIND, DK_TS_LIMIT);
            codec::put_u64(o, DC_LIMIT, *limit);
        }
        DirCmd::SetGcSafepoint { safepoint } => {
            codec::put_u64(o, DC_KIND, DK_GC_SAFEPOINT);
            codec::put_u64(o, DC_SAFEPOINT, *safepoint);
        }
        DirCmd::AddDup { .. } | DirCmd::AlterDup(_) | DirCmd::DropDup { .. } => {
            codec::put_u64(o, DC_KIND, DK_DUP);
            let mut inner = Vec::new();
            directory::encode_cmd(&mut inner, cmd);
            codec::put_field(o, DC_DUP_CMD, &inner);
        }
    }
}

pub(super) fn dir_cmd_of(f: &Field<'_>) -> D<DirCmd> {
    let r = nested(f, DC_TAGS)?;
    Ok(match req_u64(&r, DC_KIND, "directory command kind missing")? {
        DK_ALLOC => DirCmd::AllocIds { count: req_u64(&r, DC_COUNT, "count missing")? },
        DK_REPORT => DirCmd::Report {
            records: r.repeated(DC_RECORD).map(|f| record_of(&f)).collect::<D<_>>()?,
        },
        DK_HEALTH => {
            let h = r.required(DC_HEALTH, "health event missing")?;
            DirCmd::RecordHealth {
                event: Box::new(
                    directory::decode_health_fields(h.value).map_err(|e| e.shifted(h.offset))?,
                ),
            }
        }
        DK_SET_VERSION => DirCmd::SetClusterVersion {
            target: version_of(&r, DC_TARGET, "target version missing")?,
            by: StoreId(req_u64(&r, DC_BY, "finalizing store missing")?),
        },
        DK_TS_LIMIT => DirCmd::SaveTsLimit { limit: req_u64(&r, DC_LIMIT, "limit missing")? },
        DK_GC_SAFEPOINT => {
            DirCmd::SetGcSafepoint { safepoint: req_u64(&r, DC_SAFEPOINT, "safepoint missing")? }
        }
        DK_DUP => {
            let c = r.required(DC_DUP_CMD, "duplication command missing")?;
            match directory::decode_cmd(c.value).map_err(|e| e.shifted(c.offset))? {
                cmd @ (DirCmd::AddDup { .. } | DirCmd::AlterDup(_) | DirCmd::DropDup { .. }) => cmd,
                _ => return Err(DecodeError::new(c.offset, "not a duplication command")),
            }
        }
        _ => return Err(DecodeError::new(f.offset, "unknown directory command")),
    })
}

pub(super) fn put_dir_result(o: &mut Vec<u8>, result: &DirResult) {
    match result {
        DirResult::Ids { first, count } => {
            codec::put_u64(o, DC_KIND, DK_ALLOC);
            codec::put_u64(o, DC_FIRST, *first);
            codec::put_u64(o, DC_COUNT, *count);
        }
        DirResult::Reported { taken } => {
            codec::put_u64(o, DC_KIND, DK_REPORT);
            codec::put_u64(o, DC_TAKEN, *taken as u64);
        }
        DirResult::Recorded { seq } => {
            codec::put_u64(o, DC_KIND, DK_HEALTH);
            codec::put_u64(o, DC_SEQ, *seq);
        }
        DirResult::ClusterVersion { active } => {
            codec::put_u64(o, DC_KIND, DK_SET_VERSION);
            codec::put_u64(o, DC_ACTIVE, u64::from(*active));
        }
        DirResult::TsLimit { previous, limit } => {
            codec::put_u64(o, DC_KIND, DK_TS_LIMIT);
            codec::put_u64(o, DC_PREVIOUS, *previous);
            codec::put_u64(o, DC_LIMIT, *limit);
        }
        DirResult::GcSafepoint { safepoint } => {
            codec::put_u64(o, DC_KIND, DK_GC_SAFEPOINT);
            codec::put_u64(o, DC_SAFEPOINT, *safepoint);
        }
        DirResult::Dup { record } => {
            codec::put_u64(o, DC_KIND, DK_DUP);
            if let Some(record) = record {
                codec::put_field(o, DC_DUP_RECORD, &directory::dups::encode(record));
            }
        }
    }
}

pub(super) fn dir_result_of(f: &Field<'_>) -> D<DirResult> {
    let r = nested(f, DC_TAGS)?;
    Ok(match req_u64(&r, DC_KIND, "directory result kind missing")? {
        DK_ALLOC => DirResult::Ids {
            first: req_u64(&r, DC_FIRST, "first id missing")?,
            count: req_u64(&r, DC_COUNT, "count missing")?,
        },
        DK_REPORT => DirResult::Reported {
            taken: usize::try_from(req_u64(&r, DC_TAKEN, "taken missing")?).unwrap_or(usize::MAX),
        },
        DK_HEALTH => DirResult::Recorded { seq: req_u64(&r, DC_SEQ, "seq missing")? },
        DK_SET_VERSION => {
            DirResult::ClusterVersion { active: version_of(&r, DC_ACTIVE, "active missing")? }
        }
        DK_TS_LIMIT => DirResult::TsLimit {
            previous: req_u64(&r, DC_PREVIOUS, "previous limit missing")?,
            limit: req_u64(&r, DC_LIMIT, "limit missing")?,
        },
        DK_GC_SAFEPOINT => {
            DirResult::GcSafepoint { safepoint: req_u64(&r, DC_SAFEPOINT, "safepoint missing")? }
        }
        DK_DUP => DirResult::Dup {
            record: r
                .optional(DC_DUP_RECORD)?
                .map(|f| directory::dups::decode(f.value).map_err(|e| e.shifted(f.offset)))
                .transpose()?
                .map(Box::new),
        },
        _ => return Err(DecodeError::new(f.offset, "unknown directory result")),
    })
}

// ---- metrics ----

const M_REGIONS: u16 = 1;
const M_LEADERS: u16 = 2;
const M_HIBERNATING: u16 = 3;
const M_LAG_TOTAL: u16 = 4;
const M_LAG_MAX: u16 = 5;
pub(super) const M_WRITE_LATENCY: u16 = 6;
const M_WRITES_PROPOSED: u16 = 7;
const M_ENTRIES_PROPOSED: u16 = 8;
const M_APPLY: u16 = 9;
pub(super) const M_WAL: u16 = 10;
const M_TAGS: &[u16] = &[
    M_REGIONS,
    M_LEADERS,
    M_HIBERNATING,
    M_LAG_TOTAL,
    M_LAG_MAX,
    M_WRITE_LATENCY,
    M_WRITES_PROPOSED,
    M_ENTRIES_PROPOSED,
    M_APPLY,
    M_WAL,
];

const AP_ROUNDS: u16 = 1;
const AP_WITHOUT: u16 = 2;
const AP_SEVERAL: u16 = 3;
const AP_MOST: u16 = 4;

const W_RECORDS: u16 = 1;
const W_GROUPS: u16 = 2;
const W_FSYNCS: u16 = 3;
const W_BYTES: u16 = 4;
const W_ROLLS: u16 = 5;
const W_HIGH_WATER: u16 = 6;
const W_SPARES: u16 = 7;
const W_FSYNC_LATENCY: u16 = 8;
const W_GROUP_RECORDS: u16 = 9;
const W_TAGS: &[u16] = &[
    W_RECORDS,
    W_GROUPS,
    W_FSYNCS,
    W_BYTES,
    W_ROLLS,
    W_HIGH_WATER,
    W_SPARES,
    W_FSYNC_LATENCY,
    W_GROUP_RECORDS,
];

pub(super) const H_SUM: u16 = 1;
pub(super) const H_MAX: u16 = 2;
pub(super) const H_BUCKET: u16 = 3;
pub(super) const HB_INDEX: u16 = 1;
pub(super) const HB_SAMPLES: u16 = 2;

fn put_histogram(o: &mut Vec<u8>, tag: u16, h: &HistogramSnapshot) {
    codec::put_nested(o, tag, |o| {
        codec::put_u64(o, H_SUM, h.sum());
        codec::put_u64(o, H_MAX, h.max());
        for (index, samples) in h.buckets() {
            codec::put_nested(o, H_BUCKET, |o| {
                codec::put_u64(o, HB_INDEX, index as u64);
                codec::put_u64(o, HB_SAMPLES, samples);
            });
        }
    });
}

fn histogram_of(rec: &TlvRecord<'_>, tag: u16, what: &'static str) -> D<HistogramSnapshot> {
    let r = nested(&rec.required(tag, what)?, &[H_SUM, H_MAX, H_BUCKET])?;
    let mut buckets = Vec::new();
    for field in r.repeated(H_BUCKET) {
        let b = nested(&field, &[HB_INDEX, HB_SAMPLES])?;
        let index = req_u64(&b, HB_INDEX, "bucket index missing")?;
        let index = usize::try_from(index)
            .ok()
            .filter(|&i| i < Histogram::BUCKETS)
            .ok_or_else(|| DecodeError::new(field.offset, "histogram bucket index out of range"))?;
        buckets.push((index, req_u64(&b, HB_SAMPLES, "bucket samples missing")?));
    }
    Ok(HistogramSnapshot::from_parts(
        buckets,
        req_u64(&r, H_SUM, "histogram sum missing")?,
        req_u64(&r, H_MAX, "histogram max missing")?,
    ))
}

pub(super) fn put_metrics(o: &mut Vec<u8>, tag: u16, m: &StoreMetrics) {
    codec::put_nested(o, tag, |o| put_metrics_fields(o, m));
}

pub(super) fn put_metrics_fields(o: &mut Vec<u8>, m: &StoreMetrics) {
    codec::put_u64(o, M_REGIONS, m.regions);
    codec::put_u64(o, M_LEADERS, m.leaders);
    codec::put_u64(o, M_HIBERNATING, m.hibernating);
    codec::put_u64(o, M_LAG_TOTAL, m.applied_lag_total);
    codec::put_u64(o, M_LAG_MAX, m.applied_lag_max);
    put_histogram(o, M_WRITE_LATENCY, &m.write_latency_us);
    codec::put_u64(o, M_WRITES_PROPOSED, m.writes_proposed);
    codec::put_u64(o, M_ENTRIES_PROPOSED, m.entries_proposed);
    codec::put_nested(o, M_APPLY, |o| {
        codec::put_u64(o, AP_ROUNDS, m.apply.rounds);
        codec::put_u64(o, AP_WITHOUT, m.apply.rounds_without_regions);
        codec::put_u64(o, AP_SEVERAL, m.apply.rounds_with_several_regions);
        codec::put_u64(o, AP_MOST, m.apply.most_regions_in_a_round as u64);
    });
    let w = &m.wal;
    codec::put_nested(o, M_WAL, |o| {
        codec::put_u64(o, W_RECORDS, w.records);
        codec::put_u64(o, W_GROUPS, w.groups);
        codec::put_u64(o, W_FSYNCS, w.fsyncs);
        codec::put_u64(o, W_BYTES, w.bytes_written);
        codec::put_u64(o, W_ROLLS, w.segment_rolls);
        codec::put_u64(o, W_HIGH_WATER, w.queued_bytes_high_water as u64);
        codec::put_u64(o, W_SPARES, w.spare_segments as u64);
        put_histogram(o, W_FSYNC_LATENCY, &w.fsync_latency_us);
        put_histogram(o, W_GROUP_RECORDS, &w.group_records);
    });
}

/// Decodes a metrics record. Its first fields are required: a metrics record always
/// had them; fields added to it later will be optional.
pub(super) fn metrics_of(field: &Field<'_>) -> D<StoreMetrics> {
    let rec = nested(field, M_TAGS)?;
    let mut out = StoreMetrics::default();
    out.regions = req_u64(&rec, M_REGIONS, "regions missing")?;
    out.leaders = req_u64(&rec, M_LEADERS, "leaders missing")?;
    out.hibernating = req_u64(&rec, M_HIBERNATING, "hibernating missing")?;
    out.applied_lag_total = req_u64(&rec, M_LAG_TOTAL, "applied lag total missing")?;
    out.applied_lag_max = req_u64(&rec, M_LAG_MAX, "applied lag max missing")?;
    out.write_latency_us = histogram_of(&rec, M_WRITE_LATENCY, "write latency missing")?;
    out.writes_proposed = req_u64(&rec, M_WRITES_PROPOSED, "writes proposed missing")?;
    out.entries_proposed = req_u64(&rec, M_ENTRIES_PROPOSED, "entries proposed missing")?;
    let apply = nested(
        &rec.required(M_APPLY, "apply stats missing")?,
        &[AP_ROUNDS, AP_WITHOUT, AP_SEVERAL, AP_MOST],
    )?;
    out.apply.rounds = req_u64(&apply, AP_ROUNDS, "apply rounds missing")?;
    out.apply.rounds_without_regions = req_u64(&apply, AP_WITHOUT, "apply rounds missing")?;
    out.apply.rounds_with_several_regions = req_u64(&apply, AP_SEVERAL, "apply rounds missing")?;
    out.apply.most_regions_in_a_round =
        usize::try_from(req_u64(&apply, AP_MOST, "apply rounds missing")?).unwrap_or(usize::MAX);
    let wal_rec = nested(&rec.required(M_WAL, "wal stats missing")?, W_TAGS)?;
    let mut wal = WalStats::default();
    wal.records = req_u64(&wal_rec, W_RECORDS, "wal records missing")?;
    wal.groups = req_u64(&wal_rec, W_GROUPS, "wal groups missing")?;
    wal.fsyncs = req_u64(&wal_rec, W_FSYNCS, "wal fsyncs missing")?;
    wal.bytes_written = req_u64(&wal_rec, W_BYTES, "wal bytes missing")?;
    wal.segment_rolls = req_u64(&wal_rec, W_ROLLS, "wal rolls missing")?;
    wal.queued_bytes_high_water =
        usize::try_from(req_u64(&wal_rec, W_HIGH_WATER, "wal high water missing")?)
            .unwrap_or(usize::MAX);
    wal.spare_segments =
        usize::try_from(req_u64(&wal_rec, W_SPARES, "wal spares missing")?).unwrap_or(usize::MAX);
    wal.fsync_latency_us = histogram_of(&wal_rec, W_FSYNC_LATENCY, "fsync latency missing")?;
    wal.group_records = histogram_of(&wal_rec, W_GROUP_RECORDS, "group records missing")?;
    out.wal = wal;
    Ok(out)
}

const MS_REGION: u16 = 1;
const MS_TARGET: u16 = 2;
const MS_INDEX: u16 = 3;
const MS_TERM: u16 = 4;
const MS_ALL_MATCHED: u16 = 5;
const MS_MERGE: u16 = 6;

pub(super) fn put_merge_status(o: &mut Vec<u8>, s: &MergeStatus) {
    put_region(o, MS_REGION, &s.region);
    if let Some(m) = &s.merge {
        codec::put_nested(o, MS_MERGE, |o| {
            codec::put_u64(o, MS_TARGET, m.target.0);
            codec::put_u64(o, MS_INDEX, m.prepare_index);
            codec::put_u64(o, MS_TERM, m.prepare_term);
        });
    }
    put_flag(o, MS_ALL_MATCHED, s.all_matched);
}

pub(super) fn merge_status_of(f: &Field<'_>) -> D<MergeStatus> {
    let r = nested(f, &[MS_REGION, MS_ALL_MATCHED, MS_MERGE])?;
    let merge = match r.optional(MS_MERGE)? {
        Some(m) => {
            let m = nested(&m, &[MS_TARGET, MS_INDEX, MS_TERM])?;
            Some(MergeState {
                target: RegionId(req_u64(&m, MS_TARGET, "merge target missing")?),
                prepare_index: req_u64(&m, MS_INDEX, "prepare index missing")?,
                prepare_term: req_u64(&m, MS_TERM, "prepare term missing")?,
            })
        }
        None => None,
    };
    Ok(MergeStatus {
        region: region_of(&r.required(MS_REGION, "region missing")?)?,
        merge,
        all_matched: r.required(MS_ALL_MATCHED, "all_matched missing")?.as_bool()?,
    })
}

const RI_REGION: u16 = 1;
const RI_LEADER: u16 = 2;
const RI_REPLICA: u16 = 3;
const RP_STORE: u16 = 1;
const RP_STATUS: u16 = 2;

pub(super) fn put_region_info(o: &mut Vec<u8>, tag: u16, info: &RegionInfo) {
    codec::put_nested(o, tag, |o| {
        put_region(o, RI_REGION, &info.region);
        if let Some(l) = info.leader {
            codec::put_u64(o, RI_LEADER, l.0);
        }
        for (store, status) in &info.replicas {
            codec::put_nested(o, RI_REPLICA, |o| {
                codec::put_u64(o, RP_STORE, store.0);
                put_peer_status(o, RP_STATUS, status);
            });
        }
    });
}

pub(super) fn region_info_of(f: &Field<'_>) -> D<RegionInfo> {
    let r = nested(f, &[RI_REGION, RI_LEADER, RI_REPLICA])?;
    let mut replicas = Vec::new();
    for rep in r.repeated(RI_REPLICA) {
        let p = nested(&rep, &[RP_STORE, RP_STATUS])?;
        replicas.push((
            StoreId(req_u64(&p, RP_STORE, "replica store missing")?),
            peer_status_of(&p.required(RP_STATUS, "replica status missing")?)?,
        ));
    }
    Ok(RegionInfo {
        region: region_of(&r.required(RI_REGION, "region missing")?)?,
        leader: opt_u64(&r, RI_LEADER)?.map(StoreId),
        replicas,
    })
}
