//! The `TXN` entry's body (top-level tag 5 of a normal entry, laid out in
//! `crate::command`'s module docs): one transaction command per entry, never with
//! writes, stamped with the proposing leader's clock.

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, DecodeResult, TlvRecord, UnknownTags};
use regionkv_engine::{Epoch, StoreId};

use super::{RecordInit, TxnCmd};
use crate::command::{WriteSession, decode_epoch, decode_op, put_epoch, put_op};

const T_EPOCH: u16 = 1;
const T_NOW: u16 = 2;
const T_KIND: u16 = 3;
const T_TXN_ID: u16 = 4;
const T_PRIMARY: u16 = 5;
const T_OP: u16 = 6;
const T_TTL: u16 = 7;
const T_RECORD: u16 = 8;
const T_KEY: u16 = 9;
const T_COMMIT: u16 = 10;
const T_ABORT_IF_EXPIRED: u16 = 11;
const T_FORGET: u16 = 12;
const T_NEW_FLOOR: u16 = 13;
// Snapshot isolation (optional; absent: a level-1 command, byte for byte as before).
const T_START_TS: u16 = 14;
const T_COMMIT_TS: u16 = 15;
// Async commit (cluster version 4).
const T_STAGING: u16 = 16;
const T_ITEM: u16 = 17;
// Version GC (helper "gc"'s tags 24-27; kind 11).
const T_SAFEPOINT: u16 = 24;
// A prewrite's client session (cluster version 4; absent: applied as it comes).
const T_SESSION: u16 = 28;
// Async commit of a snapshot transaction: the leader-stamped minimum commit timestamp
// of a prewrite (cluster version 5; helper "si-async"'s tags 30-33).
const T_MIN_COMMIT_TS: u16 = 30;
const TXN_TAGS: &[u16] = &[
    T_EPOCH,
    T_NOW,
    T_KIND,
    T_TXN_ID,
    T_PRIMARY,
    T_OP,
    T_TTL,
    T_RECORD,
    T_KEY,
    T_COMMIT,
    T_ABORT_IF_EXPIRED,
    T_FORGET,
    T_NEW_FLOOR,
    T_START_TS,
    T_COMMIT_TS,
    T_STAGING,
    T_ITEM,
    T_SAFEPOINT,
    T_SESSION,
    T_MIN_COMMIT_TS,
];
const R_PARTICIPANT: u16 = 1;
const R_COORDINATOR: u16 = 2;
const F_PRIMARY: u16 = 1;
const F_TXN_ID: u16 = 2;
const I_TXN_ID: u16 = 1;
const I_PRIMARY: u16 = 2;
const I_KEY: u16 = 3;
const I_COMMIT: u16 = 4;
const I_COMMIT_TS: u16 = 5;
const ITEM_TAGS: &[u16] = &[I_TXN_ID, I_PRIMARY, I_KEY, I_COMMIT, I_COMMIT_TS];
const S_ID: u16 = 1;
const S_SEQ: u16 = 2;

const KIND_PREWRITE: u64 = 1;
const KIND_COMMIT: u64 = 2;
const KIND_RESOLVE: u64 = 3;
const KIND_CHECK_STATUS: u64 = 4;
const KIND_HEARTBEAT: u64 = 5;
const KIND_FORGET: u64 = 6;
const KIND_RESOLVE_MANY: u64 = 7;
const KIND_CHECK_LOCKS: u64 = 8;
/// Since cluster version 4 (`version::TXN_V2`).
const KIND_ONE_PHASE: u64 = 9;
/// Needs cluster version 4 (`crate::version::TXN_V2`).
const KIND_COLLECT_VERSIONS: u64 = 11;

/// The reason of the decode error for a `TXN` kind this binary does not know (see
/// `crate::command::is_unknown_kind`).
pub(crate) const UNKNOWN_TXN: &str = "unknown transaction command";

/// A transaction command as its entry carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TxnEntry {
    /// The region's epoch the client routed it with.
    pub epoch: Epoch,
    /// The proposing leader's clock (ms since the Unix epoch): every time comparison
    /// of the apply uses it.
    pub now_ms: u64,
    /// The command.
    pub cmd: TxnCmd,
}

/// Writes the body of a `TXN` field.
pub(crate) fn encode(out: &mut Vec<u8>, entry: &TxnEntry) {
    codec::put_nested(out, T_EPOCH, |out| put_epoch(out, entry.epoch));
    codec::put_u64(out, T_NOW, entry.now_ms);
    let flag = |b: bool| [u8::from(b)];
    match &entry.cmd {
        cmd @ TxnCmd::Prewrite { .. } => put_prewrite(out, cmd),
        TxnCmd::Commit { txn_id, primary_key, commit_ts } => {
            codec::put_u64(out, T_KIND, KIND_COMMIT);
            codec::put_u64(out, T_TXN_ID, *txn_id);
            codec::put_field(out, T_PRIMARY, primary_key);
            if let Some(ts) = commit_ts {
                codec::put_u64(out, T_COMMIT_TS, *ts);
            }
        }
        TxnCmd::Resolve { txn_id, keys, commit, commit_ts } => {
            codec::put_u64(out, T_KIND, KIND_RESOLVE);
            codec::put_u64(out, T_TXN_ID, *txn_id);
            for key in keys {
                codec::put_field(out, T_KEY, key);
            }
            codec::put_field(out, T_COMMIT, &flag(*commit));
            if let Some(ts) = commit_ts {
                codec::put_u64(out, T_COMMIT_TS, *ts);
            }
        }
        TxnCmd::CheckStatus { txn_id, primary_key, abort_if_expired } => {
            codec::put_u64(out, T_KIND, KIND_CHECK_STATUS);
            codec::put_u64(out, T_TXN_ID, *txn_id);
            codec::put_field(out, T_PRIMARY, primary_key);
            codec::put_field(out, T_ABORT_IF_EXPIRED, &flag(*abort_if_expired));
        }
        TxnCmd::Heartbeat { txn_id, primary_key, ttl_ms } => {
            codec::put_u64(out, T_KIND, KIND_HEARTBEAT);
            codec::put_u64(out, T_TXN_ID, *txn_id);
            codec::put_field(out, T_PRIMARY, primary_key);
            codec::put_u64(out, T_TTL, *ttl_ms);
        }
        TxnCmd::Forget { records, new_floor } => {
            codec::put_u64(out, T_KIND, KIND_FORGET);
            for (primary_key, txn_id) in records {
                codec::put_nested(out, T_FORGET, |out| {
                    codec::put_field(out, F_PRIMARY, primary_key);
                    codec::put_u64(out, F_TXN_ID, *txn_id);
                });
            }
            codec::put_u64(out, T_NEW_FLOOR, *new_floor);
        }
        TxnCmd::ResolveMany { items } => put_items(out, items),
        TxnCmd::CheckLocks { txn_id, keys } => {
            codec::put_u64(out, T_KIND, KIND_CHECK_LOCKS);
            codec::put_u64(out, T_TXN_ID, *txn_id);
            for key in keys {
                codec::put_field(out, T_KEY, key);
            }
        }
        TxnCmd::CollectVersions { safepoint, keys } => {
            codec::put_u64(out, T_KIND, KIND_COLLECT_VERSIONS);
            codec::put_u64(out, T_SAFEPOINT, *safepoint);
            for key in keys {
                codec::put_field(out, T_KEY, key);
            }
        }
        // `synced` is the client's word to the leader, never in an entry.
        TxnCmd::OnePhase { start_ts, ops, commit_ts, synced: _, session } => {
            put_one_phase(out, *start_ts, ops, *commit_ts, *session);
        }
    }
}

/// A prewrite's kind and fields.
fn put_prewrite(out: &mut Vec<u8>, cmd: &TxnCmd) {
    let TxnCmd::Prewrite {
        txn_id,
        primary_key,
        ops,
        ttl_ms,
        record,
        start_ts,
        session,
        min_commit,
    } = cmd
    else {
        return;
    };
    let flag = |b: bool| [u8::from(b)];

    codec::put_u64(out, T_KIND, KIND_PREWRITE);
    codec::put_u64(out, T_TXN_ID, *txn_id);
    codec::put_field(out, T_PRIMARY, primary_key);
    for op in ops {
        codec::put_nested(out, T_OP, |out| put_op(out, op));
    }
    codec::put_u64(out, T_TTL, *ttl_ms);
    if let Some(record) = record {
        codec::put_nested(out, T_RECORD, |out| {
            for key in &record.participants {
                codec::put_field(out, R_PARTICIPANT, key);
            }
            if let Some(store) = record.coordinator {
                codec::put_u64(out, R_COORDINATOR, store.0);
            }
        });
    }
    if let Some(ts) = start_ts {
        codec::put_u64(out, T_START_TS, *ts);
    }
    if record.as_ref().is_some_and(|r| r.staging) {
        codec::put_field(out, T_STAGING, &flag(true));
    }
    if let Some(session) = session {
        put_session(out, *session);
    }
    // `synced` is the client's word to the leader, never in an entry.
    if let Some(ts) = min_commit.and_then(|m| m.ts) {
        codec::put_u64(out, T_MIN_COMMIT_TS, ts);
    }
}

/// A one-phase commit's kind and fields.
fn put_one_phase(
    out: &mut Vec<u8>,
    start_ts: u64,
    ops: &[crate::command::Op],
    commit_ts: Option<u64>,
    session: Option<WriteSession>,
) {
    codec::put_u64(out, T_KIND, KIND_ONE_PHASE);
    codec::put_u64(out, T_START_TS, start_ts);
    for op in ops {
        codec::put_nested(out, T_OP, |out| put_op(out, op));
    }
    if let Some(ts) = commit_ts {
        codec::put_u64(out, T_COMMIT_TS, ts);
    }
    if let Some(session) = session {
        put_session(out, session);
    }
}

/// A `ResolveMany`'s kind and items.
fn put_items(out: &mut Vec<u8>, items: &[super::ResolveItem]) {
    codec::put_u64(out, T_KIND, KIND_RESOLVE_MANY);
    for item in items {
        codec::put_nested(out, T_ITEM, |out| {
            codec::put_u64(out, I_TXN_ID, item.txn_id);
            if let Some(primary) = &item.primary_key {
                codec::put_field(out, I_PRIMARY, primary);
            }
            for key in &item.keys {
                codec::put_field(out, I_KEY, key);
            }
            codec::put_field(out, I_COMMIT, &[u8::from(item.commit)]);
            if let Some(ts) = item.commit_ts {
                codec::put_u64(out, I_COMMIT_TS, ts);
            }
        });
    }
}

/// Reads the body of a `TXN` field (`buf`, a slice of `data`: keys and values are
/// slices of `data`). Offsets in errors are from the start of `buf`.
pub(crate) fn decode(data: &Bytes, buf: &[u8]) -> DecodeResult<TxnEntry> {
    let rec = TlvRecord::parse(buf, TXN_TAGS, UnknownTags::Reject)?;
    let epoch_field = rec.required(T_EPOCH, "txn epoch")?;
    let epoch = decode_epoch(epoch_field.value).map_err(|e| e.shifted(epoch_field.offset))?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64());
    let bytes_of = |tag, what| rec.required(tag, what).map(|f| data.slice_ref(f.value));
    let flag_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_bool());
    let optional_u64 = |tag| rec.optional(tag).and_then(|f| f.map(|f| f.as_u64()).transpose());
    let now_ms = u64_of(T_NOW, "txn now")?;
    let kind = u64_of(T_KIND, "txn kind")?;
    // Fields a kind does not carry are damage (alike on every replica).
    let allowed: &[u16] = match kind {
        KIND_PREWRITE => &[
            T_TXN_ID,
            T_PRIMARY,
            T_OP,
            T_TTL,
            T_RECORD,
            T_START_TS,
            T_STAGING,
            T_SESSION,
            T_MIN_COMMIT_TS,
        ],
        KIND_COMMIT => &[T_TXN_ID, T_PRIMARY, T_COMMIT_TS],
        KIND_RESOLVE => &[T_TXN_ID, T_KEY, T_COMMIT, T_COMMIT_TS],
        KIND_CHECK_STATUS => &[T_TXN_ID, T_PRIMARY, T_ABORT_IF_EXPIRED],
        KIND_HEARTBEAT => &[T_TXN_ID, T_PRIMARY, T_TTL],
        KIND_FORGET => &[T_FORGET, T_NEW_FLOOR],
        KIND_RESOLVE_MANY => &[T_ITEM],
        KIND_CHECK_LOCKS => &[T_TXN_ID, T_KEY],
        KIND_ONE_PHASE => &[T_START_TS, T_OP, T_COMMIT_TS, T_SESSION],
        KIND_COLLECT_VERSIONS => &[T_SAFEPOINT, T_KEY],
        0 => return Err(DecodeError::new(0, "transaction command of kind 0")),
        _ => return Err(DecodeError::new(0, UNKNOWN_TXN)),
    };
    for tag in TXN_TAGS.iter().filter(|t| ![T_EPOCH, T_NOW, T_KIND].contains(t)) {
        if !allowed.contains(tag)
            && let Some(f) = rec.repeated(*tag).next()
        {
            return Err(DecodeError::new(
                f.offset,
                "a field this transaction command does not take",
            ));
        }
    }
    let cmd = match kind {
        KIND_PREWRITE => {
            let ops = ops_of(data, &rec)?;
            let record = decode_record(data, &rec)?;
            TxnCmd::Prewrite {
                txn_id: u64_of(T_TXN_ID, "txn id")?,
                primary_key: bytes_of(T_PRIMARY, "txn primary key")?,
                ops,
                ttl_ms: u64_of(T_TTL, "txn ttl")?,
                record,
                start_ts: optional_u64(T_START_TS)?,
                session: decode_session(&rec)?,
                min_commit: optional_u64(T_MIN_COMMIT_TS)?
                    .map(|ts| super::MinCommit { ts: Some(ts), synced: None }),
            }
        }
        KIND_COMMIT => TxnCmd::Commit {
            txn_id: u64_of(T_TXN_ID, "txn id")?,
            primary_key: bytes_of(T_PRIMARY, "txn primary key")?,
            commit_ts: optional_u64(T_COMMIT_TS)?,
        },
        KIND_RESOLVE => TxnCmd::Resolve {
            txn_id: u64_of(T_TXN_ID, "txn id")?,
            keys: rec.repeated(T_KEY).map(|f| data.slice_ref(f.value)).collect(),
            commit: flag_of(T_COMMIT, "txn resolve commit")?,
            commit_ts: optional_u64(T_COMMIT_TS)?,
        },
        KIND_CHECK_STATUS => TxnCmd::CheckStatus {
            txn_id: u64_of(T_TXN_ID, "txn id")?,
            primary_key: bytes_of(T_PRIMARY, "txn primary key")?,
            abort_if_expired: flag_of(T_ABORT_IF_EXPIRED, "txn abort if expired")?,
        },
        KIND_HEARTBEAT => TxnCmd::Heartbeat {
            txn_id: u64_of(T_TXN_ID, "txn id")?,
            primary_key: bytes_of(T_PRIMARY, "txn primary key")?,
            ttl_ms: u64_of(T_TTL, "txn ttl")?,
        },
        KIND_RESOLVE_MANY => TxnCmd::ResolveMany { items: decode_items(data, &rec)? },
        KIND_CHECK_LOCKS => TxnCmd::CheckLocks {
            txn_id: u64_of(T_TXN_ID, "txn id")?,
            keys: rec.repeated(T_KEY).map(|f| data.slice_ref(f.value)).collect(),
        },
        KIND_ONE_PHASE => TxnCmd::OnePhase {
            start_ts: u64_of(T_START_TS, "txn start timestamp")?,
            ops: ops_of(data, &rec)?,
            commit_ts: optional_u64(T_COMMIT_TS)?,
            synced: None,
            session: decode_session(&rec)?,
        },
        KIND_COLLECT_VERSIONS => TxnCmd::CollectVersions {
            safepoint: u64_of(T_SAFEPOINT, "gc safepoint")?,
            keys: rec.repeated(T_KEY).map(|f| data.slice_ref(f.value)).collect(),
        },
        _ => forget_of(data, &rec)?,
    };
    Ok(TxnEntry { epoch, now_ms, cmd })
}

/// The record a prewrite creates (the primary's region), with its staging flag.
fn decode_record(data: &Bytes, rec: &TlvRecord<'_>) -> DecodeResult<Option<RecordInit>> {
    let staging = rec.optional(T_STAGING)?;
    let Some(f) = rec.optional(T_RECORD)? else {
        return match staging {
            Some(s) => Err(DecodeError::new(s.offset, "a staging flag without a record")),
            None => Ok(None),
        };
    };
    let at = |e: DecodeError| e.shifted(f.offset);
    let r = TlvRecord::parse(f.value, &[R_PARTICIPANT, R_COORDINATOR], UnknownTags::Reject)
        .map_err(at)?;
    let participants = r.repeated(R_PARTICIPANT).map(|p| data.slice_ref(p.value)).collect();
    let coordinator = r
        .optional(R_COORDINATOR)
        .and_then(|c| c.map(|c| c.as_u64()).transpose())
        .map_err(at)?
        .map(StoreId);
    let staging = staging.map(|f| f.as_bool()).transpose()?.unwrap_or(false);
    Ok(Some(RecordInit { participants, coordinator, staging }))
}

/// Writes a prewrite's client session: tag 28 (nested: 1 id, 2 seq).
fn put_session(out: &mut Vec<u8>, session: WriteSession) {
    codec::put_nested(out, T_SESSION, |out| {
        codec::put_u64(out, S_ID, session.id.0);
        codec::put_u64(out, S_SEQ, session.seq);
    });
}

/// A prewrite's client session, if it carries one.
fn decode_session(rec: &TlvRecord<'_>) -> DecodeResult<Option<WriteSession>> {
    let Some(f) = rec.optional(T_SESSION)? else { return Ok(None) };
    let at = |e: DecodeError| e.shifted(f.offset);
    let r = TlvRecord::parse(f.value, &[S_ID, S_SEQ], UnknownTags::Reject).map_err(at)?;
    let id = r.required(S_ID, "prewrite session id").and_then(|v| v.as_u64()).map_err(at)?;
    let seq = r.required(S_SEQ, "prewrite session seq").and_then(|v| v.as_u64()).map_err(at)?;
    Ok(Some(WriteSession { id: regionkv_engine::SessionId(id), seq }))
}

/// The items of a `ResolveMany`.
fn decode_items(data: &Bytes, rec: &TlvRecord<'_>) -> DecodeResult<Vec<super::ResolveItem>> {
    let mut items = Vec::new();
    for f in rec.repeated(T_ITEM) {
        let at = |e: DecodeError| e.shifted(f.offset);
        let r = TlvRecord::parse(f.value, ITEM_TAGS, UnknownTags::Reject).map_err(at)?;
        let txn_id = r.required(I_TXN_ID, "item txn id").and_then(|v| v.as_u64());
        let commit = r.required(I_COMMIT, "item commit").and_then(|v| v.as_bool());
        let commit_ts = r.optional(I_COMMIT_TS).and_then(|c| c.map(|c| c.as_u64()).transpose());
        let primary = r.optional(I_PRIMARY).map_err(at)?;
        items.push(super::ResolveItem {
            txn_id: txn_id.map_err(at)?,
            primary_key: primary.map(|p| data.slice_ref(p.value)),
            keys: r.repeated(I_KEY).map(|k| data.slice_ref(k.value)).collect(),
            commit: commit.map_err(at)?,
            commit_ts: commit_ts.map_err(at)?,
        });
    }
    Ok(items)
}

/// The ops of a prewrite or a one-phase commit.
fn ops_of(data: &Bytes, rec: &TlvRecord<'_>) -> DecodeResult<Vec<crate::command::Op>> {
    rec.repeated(T_OP).map(|f| decode_op(data, f.value).map_err(|e| e.shifted(f.offset))).collect()
}

/// A `Forget` command's fields.
fn forget_of(data: &Bytes, rec: &TlvRecord<'_>) -> DecodeResult<TxnCmd> {
    let mut records = Vec::new();
    for f in rec.repeated(T_FORGET) {
        let at = |e: DecodeError| e.shifted(f.offset);
        let r =
            TlvRecord::parse(f.value, &[F_PRIMARY, F_TXN_ID], UnknownTags::Reject).map_err(at)?;
        let key = r.required(F_PRIMARY, "forget primary key").map_err(at)?;
        let id = r.required(F_TXN_ID, "forget txn id").and_then(|v| v.as_u64());
        records.push((data.slice_ref(key.value), id.map_err(at)?));
    }
    let new_floor = rec.required(T_NEW_FLOOR, "txn new floor")?.as_u64()?;
    Ok(TxnCmd::Forget { records, new_floor })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use regionkv_engine::SessionId;

    use super::*;
    use crate::command::{self, Command, Op};

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (arb_bytes(12), arb_bytes(24)).prop_map(|(key, value)| Op::Put { key, value }),
            arb_bytes(12).prop_map(|key| Op::Delete { key }),
        ]
    }

    fn arb_cmd() -> impl Strategy<Value = TxnCmd> {
        let record = proptest::option::of((
            proptest::collection::vec(arb_bytes(8), 0..4),
            proptest::option::of(any::<u64>()),
        ))
        .prop_map(|r| {
            r.map(|(participants, coordinator)| RecordInit {
                participants,
                coordinator: coordinator.map(StoreId),
                staging: coordinator.is_some_and(|c| c % 2 == 0),
            })
        });
        let item = (
            any::<u64>(),
            proptest::option::of(arb_bytes(8)),
            proptest::collection::vec(arb_bytes(8), 0..3),
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(txn_id, primary_key, keys, commit, commit_ts)| {
                super::super::ResolveItem { txn_id, primary_key, keys, commit, commit_ts }
            });
        prop_oneof![
            (
                any::<u64>(),
                arb_bytes(8),
                proptest::collection::vec(arb_op(), 0..4),
                any::<u64>(),
                record,
                proptest::option::of(any::<u64>()),
                proptest::option::of((any::<u64>(), any::<u64>())),
            )
                .prop_map(
                    |(txn_id, primary_key, ops, ttl_ms, record, start_ts, session)| {
                        let session =
                            session.map(|(id, seq)| WriteSession { id: SessionId(id), seq });
                        TxnCmd::Prewrite {
                            min_commit: None,
                            txn_id,
                            primary_key,
                            ops,
                            ttl_ms,
                            record,
                            start_ts,
                            session,
                        }
                    }
                ),
            (any::<u64>(), arb_bytes(8), proptest::option::of(any::<u64>())).prop_map(
                |(txn_id, primary_key, commit_ts)| TxnCmd::Commit {
                    txn_id,
                    primary_key,
                    commit_ts
                }
            ),
            (
                any::<u64>(),
                proptest::collection::vec(arb_bytes(8), 0..4),
                any::<bool>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(txn_id, keys, commit, commit_ts)| TxnCmd::Resolve {
                    txn_id,
                    keys,
                    commit,
                    commit_ts
                }),
            (any::<u64>(), proptest::collection::vec(arb_bytes(12), 0..4))
                .prop_map(|(safepoint, keys)| TxnCmd::CollectVersions { safepoint, keys }),
            (any::<u64>(), arb_bytes(8), any::<bool>()).prop_map(
                |(txn_id, primary_key, abort_if_expired)| TxnCmd::CheckStatus {
                    txn_id,
                    primary_key,
                    abort_if_expired
                }
            ),
            (any::<u64>(), arb_bytes(8), any::<u64>()).prop_map(|(txn_id, primary_key, ttl_ms)| {
                TxnCmd::Heartbeat { txn_id, primary_key, ttl_ms }
            }),
            (proptest::collection::vec((arb_bytes(8), any::<u64>()), 0..4), any::<u64>())
                .prop_map(|(records, new_floor)| TxnCmd::Forget { records, new_floor }),
            proptest::collection::vec(item, 0..3).prop_map(|items| TxnCmd::ResolveMany { items }),
            (any::<u64>(), proptest::collection::vec(arb_bytes(8), 0..4))
                .prop_map(|(txn_id, keys)| TxnCmd::CheckLocks { txn_id, keys }),
            (
                any::<u64>(),
                proptest::collection::vec(arb_op(), 0..4),
                proptest::option::of(any::<u64>()),
                proptest::option::of((any::<u64>(), any::<u64>()))
            )
                .prop_map(|(start_ts, ops, commit_ts, session)| TxnCmd::OnePhase {
                    start_ts,
                    ops,
                    commit_ts,
                    synced: None,
                    session: session.map(|(id, seq)| WriteSession { id: SessionId(id), seq }),
                }),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = TxnEntry> {
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_cmd()).prop_map(
            |(version, conf_ver, now_ms, cmd)| TxnEntry {
                epoch: Epoch { version, conf_ver },
                now_ms,
                cmd,
            },
        )
    }

    proptest! {
        #[test]
        fn txn_batches_round_trip_in_order_and_damage_never_panics(
            entries in proptest::collection::vec(arb_entry(), 1..5)
        ) {
            let each: Vec<Vec<u8>> = entries.iter().map(command::encode_txn).collect();
            let parts: Vec<&[u8]> = each.iter().map(Vec::as_slice).collect();
            let data = Bytes::from(command::encode_txns(&parts));
            let decoded = command::decode(&data).unwrap();
            if let [one] = entries.as_slice() {
                // A lone command keeps its own entry's shape, byte for byte.
                prop_assert_eq!(&data[..], &each[0][..]);
                prop_assert_eq!(decoded, Command::Txn(one.clone()));
            } else {
                let len = command::ENCODED_TXNS_BYTES
                    + each.iter().map(|e| e.len() - 1).sum::<usize>();
                prop_assert_eq!(data.len(), len);
                prop_assert_eq!(decoded.clone(), Command::Txns(entries));
                // A batch is of version 5, whatever it holds.
                prop_assert_eq!(decoded.since(), crate::version::TXN_V3.since);
            }
            for bit in (0..data.len() * 8).step_by(7) {
                let mut damaged = data.to_vec();
                damaged[bit / 8] ^= 1 << (bit % 8);
                let _ = command::decode(&Bytes::from(damaged));
            }
        }

        #[test]
        fn txn_round_trips_and_damage_never_panics(entry in arb_entry()) {
            let data = Bytes::from(command::encode_txn(&entry));
            prop_assert_eq!(command::decode(&data).unwrap(), Command::Txn(entry.clone()));
            let since = if entry.cmd.needs_v2() {
                crate::version::TXN_V2.since
            } else {
                crate::version::TXN.since
            };
            prop_assert_eq!(Command::Txn(entry).since(), since);
            for bit in 0..data.len() * 8 {
                let mut damaged = data.to_vec();
                damaged[bit / 8] ^= 1 << (bit % 8);
                let _ = command::decode(&Bytes::from(damaged));
            }
            for len in 0..data.len() {
                let _ = command::decode(&data.slice(..len));
            }
        }
    }

    /// A `TXN` entry laid out by hand with `kind` and the fields of a commit.
    fn with_kind(kind: u64) -> Bytes {
        let mut out = vec![1];
        codec::put_nested(&mut out, 5, |out| {
            codec::put_nested(out, T_EPOCH, |out| command::put_epoch(out, Epoch::INITIAL));
            codec::put_u64(out, T_NOW, 7);
            codec::put_u64(out, T_KIND, kind);
            codec::put_u64(out, T_TXN_ID, 1);
            codec::put_field(out, T_PRIMARY, b"k");
        });
        Bytes::from(out)
    }

    #[test]
    fn a_txn_kind_this_binary_does_not_know_is_an_unknown_kind_and_zero_is_damage() {
        assert_eq!(
            command::decode(&with_kind(2)).unwrap(),
            Command::Txn(TxnEntry {
                epoch: Epoch::INITIAL,
                now_ms: 7,
                cmd: TxnCmd::Commit {
                    txn_id: 1,
                    primary_key: Bytes::from_static(b"k"),
                    commit_ts: None
                },
            })
        );
        let e = command::decode(&with_kind(99)).unwrap_err();
        assert!(command::is_unknown_kind(&e), "{e:?}");
        let e = command::decode(&with_kind(0)).unwrap_err();
        assert!(!command::is_unknown_kind(&e), "{e:?}");
        // A field another kind takes (a TTL on a commit) is damage.
        let mut out = with_kind(2).to_vec();
        let mut ttl = Vec::new();
        codec::put_u64(&mut ttl, T_TTL, 1);
        out.extend_from_slice(&ttl);
        let len = u32::try_from(out.len() - 1 - codec::FIELD_HEADER_LEN).unwrap();
        out[3..7].copy_from_slice(&len.to_le_bytes());
        let e = command::decode(&Bytes::from(out)).unwrap_err();
        assert!(!command::is_unknown_kind(&e), "{e:?}");
    }

    #[test]
    fn a_prewrite_session_round_trips_and_without_one_a_prewrite_encodes_as_before() {
        let op = Op::Put { key: Bytes::from_static(b"n1"), value: Bytes::from_static(b"v") };
        let prewrite = |session| TxnEntry {
            epoch: Epoch::INITIAL,
            now_ms: 7,
            cmd: TxnCmd::Prewrite {
                min_commit: None,
                txn_id: 3,
                primary_key: Bytes::from_static(b"a1"),
                ops: vec![op.clone()],
                ttl_ms: 100,
                record: None,
                start_ts: None,
                session,
            },
        };
        // The layout before sessions, by hand.
        let mut body = Vec::new();
        codec::put_nested(&mut body, T_EPOCH, |out| command::put_epoch(out, Epoch::INITIAL));
        codec::put_u64(&mut body, T_NOW, 7);
        codec::put_u64(&mut body, T_KIND, KIND_PREWRITE);
        codec::put_u64(&mut body, T_TXN_ID, 3);
        codec::put_field(&mut body, T_PRIMARY, b"a1");
        codec::put_nested(&mut body, T_OP, |out| command::put_op(out, &op));
        codec::put_u64(&mut body, T_TTL, 100);
        let entry = |body: &[u8]| {
            let mut out = vec![1];
            codec::put_nested(&mut out, 5, |out| out.extend_from_slice(body));
            Bytes::from(out)
        };
        let old = entry(&body);
        let without = prewrite(None);
        assert_eq!(command::encode_txn(&without), old.to_vec());
        assert_eq!(command::decode(&old).unwrap(), Command::Txn(without.clone()));
        assert_eq!(Command::Txn(without).since(), crate::version::TXN.since);
        // With a session: the same fields, then tag 28 (1 id, 2 seq).
        let mut session = Vec::new();
        codec::put_nested(&mut session, T_SESSION, |out| {
            codec::put_u64(out, S_ID, 9);
            codec::put_u64(out, S_SEQ, 4);
        });
        let newer = entry(&[body.as_slice(), &session].concat());
        let with = prewrite(Some(WriteSession { id: SessionId(9), seq: 4 }));
        assert_eq!(command::encode_txn(&with), newer.to_vec());
        assert_eq!(command::decode(&newer).unwrap(), Command::Txn(with.clone()));
        assert_eq!(Command::Txn(with).since(), crate::version::TXN_V2.since);
        // A session without its number is damage; so is a session on a commit.
        let mut half = Vec::new();
        codec::put_nested(&mut half, T_SESSION, |out| codec::put_u64(out, S_ID, 9));
        let e = command::decode(&entry(&[body.as_slice(), &half].concat())).unwrap_err();
        assert!(!command::is_unknown_kind(&e), "{e:?}");
        let mut commit = with_kind(2).to_vec();
        commit.extend_from_slice(&session);
        let len = u32::try_from(commit.len() - 1 - codec::FIELD_HEADER_LEN).unwrap();
        commit[3..7].copy_from_slice(&len.to_le_bytes());
        let e = command::decode(&Bytes::from(commit)).unwrap_err();
        assert!(!command::is_unknown_kind(&e), "{e:?}");
    }

    #[test]
    fn a_txn_command_never_shares_its_entry() {
        let mut out = with_kind(2).to_vec();
        let write = command::encode_writes(&[command::Write {
            epoch: Epoch::INITIAL,
            ops: vec![],
            session: None,
            time_ms: None,
        }]);
        out.extend_from_slice(&write[1..]);
        let e = command::decode(&Bytes::from(out)).unwrap_err();
        assert!(!command::is_unknown_kind(&e), "{e:?}");
    }
}
