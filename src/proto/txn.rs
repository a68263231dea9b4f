//! The transaction records of the client protocol (since cluster version 3): the TXN
//! request (one [`TxnCmd`] to one region), its answer (a [`TxnReply`]), the request
//! for transaction ids, and the fields of the four transaction refusals.
//!
//! ```text
//!  REQUEST  33 txn { 1 region, 2 epoch, 3 kind (1 prewrite, 2 commit, 3 resolve,
//!                    4 check status, 5 heartbeat, 6 forget; 0 reserved),
//!                    4 txn id, 5 primary key, 6 op* { 1 kind (1 put, 2 delete), 2 key,
//!                    3 value }, 7 ttl ms, 8 record { 1 participant*, 2 coordinator
//!                    (optional) } (optional: the primary's prewrite), 9 key*,
//!                    10 commit (0/1), 11 abort if expired (0/1),
//!                    12 forgotten* { 1 primary key, 2 txn id }, 13 new floor,
//!                    14 start ts (optional: a snapshot-isolated prewrite),
//!                    15 commit ts (optional: a snapshot-isolated commit or resolve),
//!                    42 gc safepoint (kind 11, collect versions: with 9 key*),
//!                    16 staging, 17 item* (async commit),
//!                    44 session { 1 id, 2 seq } (optional: a numbered prewrite) }
//!           34 txn ids { 1 count }   (answered with a directory result `ids`)
//!  RESPONSE 51 txn { 1 kind (1 done, 2 status), 2 state { 1 kind (1 pending,
//!                    2 committed, 3 aborted, 4 not found, 5 frozen), 2 expires at ms,
//!                    3 floor, 4 reason, 5 commit ts (optional) },
//!                    70 staged (optional, 1: a staging prewrite's `Done`) }
//!  error    13 key, 14 txn id, 15 primary key, 16 expires at ms, 17 floor,
//!           18 lock start ts, 19 start ts, 20 conflict ts
//!           (each optional; codes 23 locked, 24 txn aborted, 25 txn not found,
//!           26 txn too old, 27 write conflict)
//! ```
//!
//! A node confirms a staging prewrite (async commit) by tag 70 of its `Done`; a node of
//! an older binary skips the flag, applies a plain prewrite and does not confirm it,
//! and the client side answers that `TxnReply::Unstaged` (the coordinator then commits
//! in two phases). Such a node answers a command kind of version 4 `Malformed`, which
//! the client side turns into `FeatureNotActive` (nothing was done).
//!
//! A node from before transactions answers both requests `UnsupportedRequest`, which
//! the client turns into `FeatureNotActive` (the cluster cannot run at version 3 with
//! such a node in it). An unknown command kind is refused whole (never guessed); an
//! unknown state kind decodes as `Frozen` (neither committed nor aborted: nobody acts
//! on it). An absent optional field is unknown: an absent lock expiry never makes a
//! lock look expired (it decodes as "never"), an absent floor as 0 (nothing is below
//! it, so nothing is taken for finished).

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, Field, TlvRecord};
use regionkv_engine::{Epoch, RegionId, SessionId, StoreId};
use regionkv_raft::{
    MinCommit, Op, RecordInit, SyncedTs, TxnCmd, TxnReply, TxnState, WriteSession,
};

use super::error::ErrorCode;
use super::records::{D, epoch_of, nested, opt_u64, put_epoch, req_u64};

const T_REGION: u16 = 1;
const T_EPOCH: u16 = 2;
const T_KIND: u16 = 3;
const T_TXN_ID: u16 = 4;
const T_PRIMARY: u16 = 5;
const T_OP: u16 = 6;
const T_TTL: u16 = 7;
const T_RECORD: u16 = 8;
const T_KEY: u16 = 9;
const T_COMMIT: u16 = 10;
const T_ABORT_IF_EXPIRED: u16 = 11;
const T_FORGOTTEN: u16 = 12;
const T_NEW_FLOOR: u16 = 13;
const T_START_TS: u16 = 14;
const T_COMMIT_TS: u16 = 15;
/// Since one-phase snapshot commits: a `SyncedTs` (both or neither).
const T_SYNC_TERM: u16 = 20;
const T_SYNC_TS: u16 = 21;
/// Helper "gc"'s tag 42: a version GC chunk's safepoint.
const T_SAFEPOINT: u16 = 42;
/// Helper "si-async"'s tag 50 (cluster version 5): a snapshot prewrite asks for a
/// minimum commit timestamp (1); its `synced` rides tags 20 and 21, as a one-phase
/// commit's. A node of an older binary skips it and answers `Done`, which the client
/// never takes as an async commit (`regionkv_raft::txn::staging`).
const T_MIN_COMMIT: u16 = 50;
const T_TAGS: &[u16] = &[
    T_REGION,
    T_EPOCH,
    T_KIND,
    T_TXN_ID,
    T_PRIMARY,
    T_OP,
    T_TTL,
    T_RECORD,
    T_KEY,
    T_COMMIT,
    T_ABORT_IF_EXPIRED,
    T_FORGOTTEN,
    T_NEW_FLOOR,
    T_START_TS,
    T_COMMIT_TS,
    T_STAGING,
    T_ITEM,
    T_SYNC_TERM,
    T_SYNC_TS,
    T_SAFEPOINT,
    T_SESSION,
    T_MIN_COMMIT,
];
// Async commit (cluster version 4): the staging flag of a prewrite with a record, and
// the items of a batched resolve.
const T_STAGING: u16 = 16;
const T_ITEM: u16 = 17;
// A prewrite's client session (cluster version 4): a copy of a prewrite a region
// applied already locks nothing (ARCHITECTURE.md, "Exactly once"). A node from before
// it skips the field and applies the prewrite as it comes.
const T_SESSION: u16 = 44;
const SE_ID: u16 = 1;
const SE_SEQ: u16 = 2;
const K_RESOLVE_MANY: u64 = 7;
const K_CHECK_LOCKS: u64 = 8;
const IT_TXN_ID: u16 = 1;
const IT_PRIMARY: u16 = 2;
const IT_KEY: u16 = 3;
const IT_COMMIT: u16 = 4;
const IT_COMMIT_TS: u16 = 5;
const IT_TAGS: &[u16] = &[IT_TXN_ID, IT_PRIMARY, IT_KEY, IT_COMMIT, IT_COMMIT_TS];
const K_PREWRITE: u64 = 1;
const K_COMMIT: u64 = 2;
const K_RESOLVE: u64 = 3;
const K_CHECK_STATUS: u64 = 4;
const K_HEARTBEAT: u64 = 5;
const K_FORGET: u64 = 6;
/// Since one-phase snapshot commits (cluster version 4).
const K_ONE_PHASE: u64 = 9;
/// Version GC (cluster version 4): an older node refuses the kind whole.
const K_COLLECT_VERSIONS: u64 = 11;
const OP_KIND: u16 = 1;
const OP_KEY: u16 = 2;
const OP_VALUE: u16 = 3;
const OP_PUT: u64 = 1;
const OP_DELETE: u64 = 2;
const RI_PARTICIPANT: u16 = 1;
const RI_COORDINATOR: u16 = 2;
const FG_KEY: u16 = 1;
const FG_TXN_ID: u16 = 2;
/// The txn ids request's count.
pub(super) const TI_COUNT: u16 = 1;

// The answer.
const A_KIND: u16 = 1;
const A_STATE: u16 = 2;
const AK_DONE: u64 = 1;
const AK_STATUS: u64 = 2;
// Async commit: a participant check's answer, a batched resolve's per-item states.
const A_ALL_LOCKED: u16 = 3;
const A_ITEM: u16 = 4;
const AK_CHECKED: u64 = 3;
const AK_RESOLVED: u64 = 4;
// Helper "si-async" (cluster version 5): a prewrite's minimum commit timestamp (answer
// kind 12, tag 50) and a check's (tag 51, optional).
const AK_PREWRITTEN: u64 = 12;
const A_MIN_COMMIT_TS: u16 = 50;
const A_CHECKED_MIN_COMMIT_TS: u16 = 51;
const AI_STATE: u16 = 1;
/// Helper "loose"'s answer tag 70: a `Done` that confirms a staging prewrite was read
/// and proposed as one (1). Absent: unknown, so the prewrite may have applied as a
/// plain one (a node of an older binary skips the flag).
const A_STAGED: u16 = 70;
const S_PARTICIPANT: u16 = 6;
const SK_STAGING: u64 = 6;
const S_KIND: u16 = 1;
const S_EXPIRES_AT: u16 = 2;
const S_FLOOR: u16 = 3;
const S_REASON: u16 = 4;
const S_COMMIT_TS: u16 = 5;
const SK_PENDING: u64 = 1;
const SK_COMMITTED: u64 = 2;
const SK_ABORTED: u64 = 3;
const SK_NOT_FOUND: u64 = 4;
const SK_FROZEN: u64 = 5;

/// The most transaction ids one txn ids request takes.
pub(crate) const TXN_IDS_MAX: u64 = 1024;

/// A prewrite's session: field 44 (nested: 1 id, 2 seq).
fn put_session(o: &mut Vec<u8>, session: WriteSession) {
    codec::put_nested(o, T_SESSION, |o| {
        codec::put_u64(o, SE_ID, session.id.0);
        codec::put_u64(o, SE_SEQ, session.seq);
    });
}

/// A prewrite's session, if the request carries one.
fn session_of(r: &TlvRecord<'_>) -> D<Option<WriteSession>> {
    let Some(f) = r.optional(T_SESSION)? else { return Ok(None) };
    let se = nested(&f, &[SE_ID, SE_SEQ])?;
    Ok(Some(WriteSession {
        id: SessionId(req_u64(&se, SE_ID, "session id missing")?),
        seq: req_u64(&se, SE_SEQ, "session seq missing")?,
    }))
}

/// The fields of a TXN request.
pub(super) fn put_txn(o: &mut Vec<u8>, region: RegionId, epoch: Epoch, cmd: &TxnCmd) {
    codec::put_u64(o, T_REGION, region.0);
    put_epoch(o, T_EPOCH, epoch);
    match cmd {
        cmd @ TxnCmd::Prewrite { .. } => put_prewrite(o, cmd),
        TxnCmd::ResolveMany { items } => put_items(o, items),
        TxnCmd::CheckLocks { txn_id, keys } => {
            codec::put_u64(o, T_KIND, K_CHECK_LOCKS);
            codec::put_u64(o, T_TXN_ID, *txn_id);
            for key in keys {
                codec::put_field(o, T_KEY, key);
            }
        }
        TxnCmd::Commit { txn_id, primary_key, commit_ts } => {
            codec::put_u64(o, T_KIND, K_COMMIT);
            codec::put_u64(o, T_TXN_ID, *txn_id);
            codec::put_field(o, T_PRIMARY, primary_key);
            if let Some(ts) = commit_ts {
                codec::put_u64(o, T_COMMIT_TS, *ts);
            }
        }
        TxnCmd::Resolve { txn_id, keys, commit, commit_ts } => {
            codec::put_u64(o, T_KIND, K_RESOLVE);
            codec::put_u64(o, T_TXN_ID, *txn_id);
            for k in keys {
                codec::put_field(o, T_KEY, k);
            }
            codec::put_u64(o, T_COMMIT, u64::from(*commit));
            if let Some(ts) = commit_ts {
                codec::put_u64(o, T_COMMIT_TS, *ts);
            }
        }
        TxnCmd::CheckStatus { txn_id, primary_key, abort_if_expired } => {
            codec::put_u64(o, T_KIND, K_CHECK_STATUS);
            codec::put_u64(o, T_TXN_ID, *txn_id);
            codec::put_field(o, T_PRIMARY, primary_key);
            codec::put_u64(o, T_ABORT_IF_EXPIRED, u64::from(*abort_if_expired));
        }
        TxnCmd::Heartbeat { txn_id, primary_key, ttl_ms } => {
            codec::put_u64(o, T_KIND, K_HEARTBEAT);
            codec::put_u64(o, T_TXN_ID, *txn_id);
            codec::put_field(o, T_PRIMARY, primary_key);
            codec::put_u64(o, T_TTL, *ttl_ms);
        }
        TxnCmd::Forget { records, new_floor } => {
            codec::put_u64(o, T_KIND, K_FORGET);
            for (key, txn_id) in records {
                codec::put_nested(o, T_FORGOTTEN, |o| {
                    codec::put_field(o, FG_KEY, key);
                    codec::put_u64(o, FG_TXN_ID, *txn_id);
                });
            }
            codec::put_u64(o, T_NEW_FLOOR, *new_floor);
        }
        TxnCmd::CollectVersions { safepoint, keys } => {
            codec::put_u64(o, T_KIND, K_COLLECT_VERSIONS);
            codec::put_u64(o, T_SAFEPOINT, *safepoint);
            for k in keys {
                codec::put_field(o, T_KEY, k);
            }
        }
        TxnCmd::OnePhase { start_ts, ops, commit_ts, synced, session } => {
            codec::put_u64(o, T_KIND, K_ONE_PHASE);
            codec::put_u64(o, T_START_TS, *start_ts);
            for op in ops {
                codec::put_nested(o, T_OP, |o| put_op(o, op));
            }
            if let Some(ts) = commit_ts {
                codec::put_u64(o, T_COMMIT_TS, *ts);
            }
            if let Some(SyncedTs { term, ts }) = synced {
                codec::put_u64(o, T_SYNC_TERM, *term);
                codec::put_u64(o, T_SYNC_TS, *ts);
            }
            if let Some(session) = session {
                put_session(o, *session);
            }
        }
    }
}

/// A prewrite's kind and fields.
fn put_prewrite(o: &mut Vec<u8>, cmd: &TxnCmd) {
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

    codec::put_u64(o, T_KIND, K_PREWRITE);
    if let Some(asked) = min_commit {
        codec::put_u64(o, T_MIN_COMMIT, 1);
        if let Some(SyncedTs { term, ts }) = asked.synced {
            codec::put_u64(o, T_SYNC_TERM, term);
            codec::put_u64(o, T_SYNC_TS, ts);
        }
    }
    codec::put_u64(o, T_TXN_ID, *txn_id);
    codec::put_field(o, T_PRIMARY, primary_key);
    for op in ops {
        codec::put_nested(o, T_OP, |o| put_op(o, op));
    }
    codec::put_u64(o, T_TTL, *ttl_ms);
    if let Some(record) = record {
        put_record_init(o, record);
    }
    if let Some(ts) = start_ts {
        codec::put_u64(o, T_START_TS, *ts);
    }
    if record.as_ref().is_some_and(|r| r.staging) {
        codec::put_u64(o, T_STAGING, 1);
    }
    if let Some(session) = session {
        put_session(o, *session);
    }
}

/// The record a primary's prewrite creates (its staging flag goes apart, `T_STAGING`).
fn put_record_init(o: &mut Vec<u8>, record: &RecordInit) {
    codec::put_nested(o, T_RECORD, |o| {
        for p in &record.participants {
            codec::put_field(o, RI_PARTICIPANT, p);
        }
        if let Some(c) = record.coordinator {
            codec::put_u64(o, RI_COORDINATOR, c.0);
        }
    });
}

/// A `ResolveMany`'s kind and items.
fn put_items(o: &mut Vec<u8>, items: &[regionkv_raft::txn::ResolveItem]) {
    codec::put_u64(o, T_KIND, K_RESOLVE_MANY);
    for item in items {
        codec::put_nested(o, T_ITEM, |o| {
            codec::put_u64(o, IT_TXN_ID, item.txn_id);
            if let Some(p) = &item.primary_key {
                codec::put_field(o, IT_PRIMARY, p);
            }
            for key in &item.keys {
                codec::put_field(o, IT_KEY, key);
            }
            codec::put_u64(o, IT_COMMIT, u64::from(item.commit));
            if let Some(ts) = item.commit_ts {
                codec::put_u64(o, IT_COMMIT_TS, ts);
            }
        });
    }
}

fn put_op(o: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Put { key, value } => {
            codec::put_u64(o, OP_KIND, OP_PUT);
            codec::put_field(o, OP_KEY, key);
            codec::put_field(o, OP_VALUE, value);
        }
        Op::Delete { key } => {
            codec::put_u64(o, OP_KIND, OP_DELETE);
            codec::put_field(o, OP_KEY, key);
        }
    }
}

fn op_of(f: &Field<'_>) -> D<Op> {
    let o = nested(f, &[OP_KIND, OP_KEY, OP_VALUE])?;
    let key = Bytes::copy_from_slice(o.required(OP_KEY, "op key missing")?.value);
    Ok(match req_u64(&o, OP_KIND, "op kind missing")? {
        OP_PUT => Op::Put {
            key,
            value: Bytes::copy_from_slice(o.required(OP_VALUE, "put value missing")?.value),
        },
        OP_DELETE => Op::Delete { key },
        // The transaction is atomic: an op this binary does not know fails it whole.
        _ => return Err(DecodeError::new(f.offset, "unknown write op kind")),
    })
}

/// A 0/1 flag that must be present.
fn flag(r: &TlvRecord<'_>, tag: u16, what: &'static str) -> D<bool> {
    let f = r.required(tag, what)?;
    match f.as_u64()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::new(f.offset, "a flag is 0 or 1")),
    }
}

/// A TXN request: its region, epoch and command. Never panics.
pub(super) fn txn_of(f: &Field<'_>) -> D<(RegionId, Epoch, TxnCmd)> {
    let r = nested(f, T_TAGS)?;
    let region = RegionId(req_u64(&r, T_REGION, "region missing")?);
    let epoch = epoch_of(&r, T_EPOCH)?;
    let txn_id = || req_u64(&r, T_TXN_ID, "txn id missing");
    let primary_key = || -> D<Bytes> {
        Ok(Bytes::copy_from_slice(r.required(T_PRIMARY, "primary missing")?.value))
    };
    let cmd = match req_u64(&r, T_KIND, "txn kind missing")? {
        K_PREWRITE => TxnCmd::Prewrite {
            txn_id: txn_id()?,
            primary_key: primary_key()?,
            ops: r.repeated(T_OP).map(|op| op_of(&op)).collect::<D<_>>()?,
            ttl_ms: req_u64(&r, T_TTL, "ttl missing")?,
            record: match r.optional(T_RECORD)? {
                None => None,
                Some(rec) => {
                    let rec = nested(&rec, &[RI_PARTICIPANT, RI_COORDINATOR])?;
                    Some(RecordInit {
                        participants: rec
                            .repeated(RI_PARTICIPANT)
                            .map(|p| Bytes::copy_from_slice(p.value))
                            .collect(),
                        coordinator: opt_u64(&rec, RI_COORDINATOR)?.map(StoreId),
                        staging: opt_u64(&r, T_STAGING)? == Some(1),
                    })
                }
            },
            start_ts: opt_u64(&r, T_START_TS)?,
            session: session_of(&r)?,
            min_commit: match opt_u64(&r, T_MIN_COMMIT)? {
                Some(1) => Some(MinCommit { ts: None, synced: synced_of(&r, f)? }),
                _ => None,
            },
        },
        K_COMMIT => TxnCmd::Commit {
            txn_id: txn_id()?,
            primary_key: primary_key()?,
            commit_ts: opt_u64(&r, T_COMMIT_TS)?,
        },
        K_RESOLVE => TxnCmd::Resolve {
            txn_id: txn_id()?,
            keys: r.repeated(T_KEY).map(|k| Bytes::copy_from_slice(k.value)).collect(),
            commit: flag(&r, T_COMMIT, "commit flag missing")?,
            commit_ts: opt_u64(&r, T_COMMIT_TS)?,
        },
        K_CHECK_STATUS => TxnCmd::CheckStatus {
            txn_id: txn_id()?,
            primary_key: primary_key()?,
            abort_if_expired: flag(&r, T_ABORT_IF_EXPIRED, "abort flag missing")?,
        },
        K_HEARTBEAT => TxnCmd::Heartbeat {
            txn_id: txn_id()?,
            primary_key: primary_key()?,
            ttl_ms: req_u64(&r, T_TTL, "ttl missing")?,
        },
        K_FORGET => {
            let mut records = Vec::new();
            for fg in r.repeated(T_FORGOTTEN) {
                let fg = nested(&fg, &[FG_KEY, FG_TXN_ID])?;
                records.push((
                    Bytes::copy_from_slice(fg.required(FG_KEY, "forgotten key missing")?.value),
                    req_u64(&fg, FG_TXN_ID, "forgotten txn id missing")?,
                ));
            }
            TxnCmd::Forget { records, new_floor: req_u64(&r, T_NEW_FLOOR, "new floor missing")? }
        }
        K_RESOLVE_MANY => {
            let mut items = Vec::new();
            for it in r.repeated(T_ITEM) {
                let it = nested(&it, IT_TAGS)?;
                items.push(regionkv_raft::txn::ResolveItem {
                    txn_id: req_u64(&it, IT_TXN_ID, "item txn id missing")?,
                    primary_key: it.optional(IT_PRIMARY)?.map(|p| Bytes::copy_from_slice(p.value)),
                    keys: it.repeated(IT_KEY).map(|k| Bytes::copy_from_slice(k.value)).collect(),
                    commit: flag(&it, IT_COMMIT, "item commit flag missing")?,
                    commit_ts: opt_u64(&it, IT_COMMIT_TS)?,
                });
            }
            TxnCmd::ResolveMany { items }
        }
        K_CHECK_LOCKS => TxnCmd::CheckLocks {
            txn_id: txn_id()?,
            keys: r.repeated(T_KEY).map(|k| Bytes::copy_from_slice(k.value)).collect(),
        },
        K_ONE_PHASE => TxnCmd::OnePhase {
            start_ts: req_u64(&r, T_START_TS, "start timestamp missing")?,
            ops: r.repeated(T_OP).map(|op| op_of(&op)).collect::<D<_>>()?,
            commit_ts: opt_u64(&r, T_COMMIT_TS)?,
            synced: synced_of(&r, f)?,
            session: session_of(&r)?,
        },
        K_COLLECT_VERSIONS => TxnCmd::CollectVersions {
            safepoint: req_u64(&r, T_SAFEPOINT, "gc safepoint missing")?,
            keys: r.repeated(T_KEY).map(|k| Bytes::copy_from_slice(k.value)).collect(),
        },
        // Unknown (or 0, unspecified): never guessed.
        _ => return Err(DecodeError::new(f.offset, "unknown transaction command kind")),
    };
    Ok((region, epoch, cmd))
}

/// A timestamp synced after an unsynced refusal (tags 20, 21: both or neither).
fn synced_of(r: &TlvRecord<'_>, f: &Field<'_>) -> D<Option<SyncedTs>> {
    match (opt_u64(r, T_SYNC_TERM)?, opt_u64(r, T_SYNC_TS)?) {
        (Some(term), Some(ts)) => Ok(Some(SyncedTs { term, ts })),
        (None, None) => Ok(None),
        _ => Err(DecodeError::new(f.offset, "half a synced timestamp")),
    }
}

/// The fields of a TXN answer.
pub(super) fn put_txn_reply(o: &mut Vec<u8>, reply: &TxnReply) {
    match reply {
        // `Unstaged` is what a node sends that does not confirm the staging flag.
        TxnReply::Done | TxnReply::Unstaged => codec::put_u64(o, A_KIND, AK_DONE),
        TxnReply::Status(state) => {
            codec::put_u64(o, A_KIND, AK_STATUS);
            codec::put_nested(o, A_STATE, |o| put_state(o, state));
        }
        TxnReply::Checked { all_locked, min_commit_ts } => {
            codec::put_u64(o, A_KIND, AK_CHECKED);
            codec::put_u64(o, A_ALL_LOCKED, u64::from(*all_locked));
            if let Some(ts) = min_commit_ts {
                codec::put_u64(o, A_CHECKED_MIN_COMMIT_TS, *ts);
            }
        }
        TxnReply::Prewritten { min_commit_ts } => {
            codec::put_u64(o, A_KIND, AK_PREWRITTEN);
            codec::put_u64(o, A_MIN_COMMIT_TS, *min_commit_ts);
        }
        TxnReply::Resolved(states) => {
            codec::put_u64(o, A_KIND, AK_RESOLVED);
            for state in states {
                codec::put_nested(o, A_ITEM, |o| {
                    if let Some(state) = state {
                        codec::put_nested(o, AI_STATE, |o| put_state(o, state));
                    }
                });
            }
        }
    }
}

fn put_state(o: &mut Vec<u8>, state: &TxnState) {
    match state {
        TxnState::Pending { expires_at_ms } => {
            codec::put_u64(o, S_KIND, SK_PENDING);
            codec::put_u64(o, S_EXPIRES_AT, *expires_at_ms);
        }
        TxnState::Staging { expires_at_ms, participants } => {
            codec::put_u64(o, S_KIND, SK_STAGING);
            codec::put_u64(o, S_EXPIRES_AT, *expires_at_ms);
            for p in participants {
                codec::put_field(o, S_PARTICIPANT, p);
            }
        }
        TxnState::Committed { commit_ts } => {
            codec::put_u64(o, S_KIND, SK_COMMITTED);
            if let Some(ts) = commit_ts {
                codec::put_u64(o, S_COMMIT_TS, *ts);
            }
        }
        TxnState::Aborted => codec::put_u64(o, S_KIND, SK_ABORTED),
        TxnState::NotFound { floor } => {
            codec::put_u64(o, S_KIND, SK_NOT_FOUND);
            codec::put_u64(o, S_FLOOR, *floor);
        }
        TxnState::Frozen { reason } => {
            codec::put_u64(o, S_KIND, SK_FROZEN);
            codec::put_field(o, S_REASON, reason.as_bytes());
        }
    }
}

/// The answer `Done` to a staging prewrite whose flag the node read and proposed (its
/// record is `Staging`): the kind and the confirmation, tag 70.
pub(super) fn put_txn_staged(o: &mut Vec<u8>) {
    codec::put_u64(o, A_KIND, AK_DONE);
    codec::put_u64(o, A_STAGED, 1);
}

/// A TXN answer: `Response::TxnStaged` for a `Done` that confirms a staging prewrite,
/// else `Response::Txn`. Never panics.
pub(super) fn txn_answer_of(f: &Field<'_>) -> D<super::Response> {
    let r = nested(f, &[A_KIND, A_STAGED])?;
    if req_u64(&r, A_KIND, "txn answer kind missing")? == AK_DONE
        && opt_u64(&r, A_STAGED)? == Some(1)
    {
        return Ok(super::Response::TxnStaged);
    }
    txn_reply_of(f).map(super::Response::Txn)
}

/// A TXN answer. Never panics.
pub(super) fn txn_reply_of(f: &Field<'_>) -> D<TxnReply> {
    let r = nested(
        f,
        &[A_KIND, A_STATE, A_ALL_LOCKED, A_ITEM, A_MIN_COMMIT_TS, A_CHECKED_MIN_COMMIT_TS],
    )?;
    Ok(match req_u64(&r, A_KIND, "txn answer kind missing")? {
        AK_DONE => TxnReply::Done,
        AK_STATUS => TxnReply::Status(state_of(&r.required(A_STATE, "txn state missing")?)?),
        AK_CHECKED => TxnReply::Checked {
            all_locked: flag(&r, A_ALL_LOCKED, "check answer missing")?,
            min_commit_ts: opt_u64(&r, A_CHECKED_MIN_COMMIT_TS)?,
        },
        AK_PREWRITTEN => TxnReply::Prewritten {
            min_commit_ts: req_u64(&r, A_MIN_COMMIT_TS, "minimum commit timestamp missing")?,
        },
        AK_RESOLVED => {
            let mut states = Vec::new();
            for item in r.repeated(A_ITEM) {
                let item = nested(&item, &[AI_STATE])?;
                states.push(item.optional(AI_STATE)?.map(|s| state_of(&s)).transpose()?);
            }
            TxnReply::Resolved(states)
        }
        _ => return Err(DecodeError::new(f.offset, "unknown txn answer kind")),
    })
}

fn state_of(f: &Field<'_>) -> D<TxnState> {
    let s = nested(f, &[S_KIND, S_EXPIRES_AT, S_FLOOR, S_REASON, S_COMMIT_TS, S_PARTICIPANT])?;
    Ok(match opt_u64(&s, S_KIND)?.unwrap_or(0) {
        // Absent expiry: unknown, so never expired (it never shortens a lease).
        SK_PENDING => {
            TxnState::Pending { expires_at_ms: opt_u64(&s, S_EXPIRES_AT)?.unwrap_or(u64::MAX) }
        }
        // Absent expiry: never expired.
        SK_STAGING => TxnState::Staging {
            expires_at_ms: opt_u64(&s, S_EXPIRES_AT)?.unwrap_or(u64::MAX),
            participants: s
                .repeated(S_PARTICIPANT)
                .map(|p| Bytes::copy_from_slice(p.value))
                .collect(),
        },
        SK_COMMITTED => TxnState::Committed { commit_ts: opt_u64(&s, S_COMMIT_TS)? },
        SK_ABORTED => TxnState::Aborted,
        // Absent floor: 0, nothing is taken for finished.
        SK_NOT_FOUND => TxnState::NotFound { floor: opt_u64(&s, S_FLOOR)?.unwrap_or(0) },
        SK_FROZEN => TxnState::Frozen {
            reason: s
                .optional(S_REASON)?
                .map_or_else(|| "unknown".to_owned(), |r| String::from_utf8_lossy(r.value).into()),
        },
        // A state this binary does not know: nobody here may act on it.
        _ => TxnState::Frozen { reason: "unknown_state".to_owned() },
    })
}

/// The fields of a transaction refusal (locked, aborted, not found, too old); each
/// absent is unknown, never made up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TxnFields {
    pub key: Option<Bytes>,
    pub txn_id: Option<u64>,
    pub primary_key: Option<Bytes>,
    pub expires_at_ms: Option<u64>,
    pub floor: Option<u64>,
    pub lock_start_ts: Option<u64>,
    pub start_ts: Option<u64>,
    pub conflict_ts: Option<u64>,
    /// A leader's term (`ReadTsUnsynced`).
    pub term: Option<u64>,
}

pub(super) const E_KEY: u16 = 13;
pub(super) const E_TXN_ID: u16 = 14;
pub(super) const E_PRIMARY_KEY: u16 = 15;
pub(super) const E_EXPIRES_AT: u16 = 16;
pub(super) const E_FLOOR: u16 = 17;
pub(super) const E_LOCK_START_TS: u16 = 18;
pub(super) const E_START_TS: u16 = 19;
pub(super) const E_CONFLICT_TS: u16 = 20;
pub(super) const E_TERM: u16 = 23;

impl TxnFields {
    /// The code and fields of a transaction refusal (`None`: `e` is none).
    pub(super) fn of(e: &regionkv_raft::Error) -> Option<(ErrorCode, TxnFields)> {
        use regionkv_raft::Error as E;
        Some(match e {
            E::Locked { key, txn_id, primary_key, expires_at_ms, lock_start_ts } => (
                ErrorCode::Locked,
                TxnFields {
                    key: Some(key.clone()),
                    txn_id: Some(*txn_id),
                    primary_key: Some(primary_key.clone()),
                    expires_at_ms: Some(*expires_at_ms),
                    lock_start_ts: *lock_start_ts,
                    ..TxnFields::default()
                },
            ),
            E::WriteConflict { key, start_ts, conflict_ts } => (
                ErrorCode::WriteConflict,
                TxnFields {
                    key: Some(key.clone()),
                    start_ts: Some(*start_ts),
                    conflict_ts: Some(*conflict_ts),
                    ..TxnFields::default()
                },
            ),
            E::TxnAborted { txn_id } => {
                (ErrorCode::TxnAborted, TxnFields { txn_id: Some(*txn_id), ..TxnFields::default() })
            }
            E::TxnNotFound { txn_id, floor } | E::TxnTooOld { txn_id, floor } => (
                if matches!(e, E::TxnNotFound { .. }) {
                    ErrorCode::TxnNotFound
                } else {
                    ErrorCode::TxnTooOld
                },
                TxnFields { txn_id: Some(*txn_id), floor: Some(*floor), ..TxnFields::default() },
            ),
            E::SnapshotTooOld { read_ts, floor } => (
                ErrorCode::SnapshotTooOld,
                TxnFields { start_ts: Some(*read_ts), floor: Some(*floor), ..TxnFields::default() },
            ),
            _ => return None,
        })
    }

    pub(super) fn encode(&self, o: &mut Vec<u8>) {
        if let Some(k) = &self.key {
            codec::put_field(o, E_KEY, k);
        }
        if let Some(id) = self.txn_id {
            codec::put_u64(o, E_TXN_ID, id);
        }
        if let Some(k) = &self.primary_key {
            codec::put_field(o, E_PRIMARY_KEY, k);
        }
        if let Some(at) = self.expires_at_ms {
            codec::put_u64(o, E_EXPIRES_AT, at);
        }
        if let Some(floor) = self.floor {
            codec::put_u64(o, E_FLOOR, floor);
        }
        for (tag, ts) in [
            (E_LOCK_START_TS, self.lock_start_ts),
            (E_START_TS, self.start_ts),
            (E_CONFLICT_TS, self.conflict_ts),
            (E_TERM, self.term),
        ] {
            if let Some(ts) = ts {
                codec::put_u64(o, tag, ts);
            }
        }
    }

    /// The fields of an error record (`None` if it has none).
    pub(super) fn decode(r: &TlvRecord<'_>) -> D<Option<Box<TxnFields>>> {
        let bytes = |tag| -> D<Option<Bytes>> {
            Ok(r.optional(tag)?.map(|f| Bytes::copy_from_slice(f.value)))
        };
        let t = TxnFields {
            key: bytes(E_KEY)?,
            txn_id: opt_u64(r, E_TXN_ID)?,
            primary_key: bytes(E_PRIMARY_KEY)?,
            expires_at_ms: opt_u64(r, E_EXPIRES_AT)?,
            floor: opt_u64(r, E_FLOOR)?,
            lock_start_ts: opt_u64(r, E_LOCK_START_TS)?,
            start_ts: opt_u64(r, E_START_TS)?,
            conflict_ts: opt_u64(r, E_CONFLICT_TS)?,
            term: opt_u64(r, E_TERM)?,
        };
        Ok((t != TxnFields::default()).then(|| Box::new(t)))
    }
}
