//! RESPONSE payloads of the client protocol: [`encode_response`] and
//! [`decode_response`].

use bytes::Bytes;
use regionkv_engine::StoreId;
use regionkv_engine::codec::{self, DecodeError, Field};
use regionkv_raft::transport::frame::WireError;
use regionkv_raft::{Page, QueryResult};

use super::Response;
use super::error::RemoteError;
use super::records::{
    D, admin_result_of, dir_result_of, merge_status_of, nested, parse, put_admin_result,
    put_dir_result, put_merge_status, put_record, put_region, put_region_info, record_of,
    region_info_of, region_of, req_u64,
};
use super::status::{
    StatusSchema, peer_status_of, put_peer_status, put_store_status_fields, store_status_of,
};

pub(super) const R_ID: u16 = 1;
pub(super) const R_ERROR: u16 = 2;
const R_DONE: u16 = 30;
const R_VALUE: u16 = 31;
const R_ROWS: u16 = 32;
const R_ADMIN: u16 = 33;
const R_DIRECTORY: u16 = 34;
const R_MERGE_STATUS: u16 = 35;
const R_PEER_STATUS: u16 = 36;
const R_LOCATED: u16 = 37;
pub(super) const R_STATUS: u16 = 38;
const R_MEMBERS: u16 = 39;
const R_REGIONS: u16 = 40;
const R_SPLIT: u16 = 41;
const R_MERGED: u16 = 42;
const R_NO_REPLY: u16 = 43;
const R_PEERS_CHANGED: u16 = 44;
const R_STORE_CHANGED: u16 = 45;
const R_CLUSTER_VERSION: u16 = 46;
const R_UPGRADE_STATUS: u16 = 47;
const UP_ACTIVE: u16 = 1;
const UP_STORE: u16 = 2;
const UV_STORE: u16 = 1;
const UV_ACTIVE: u16 = 2;
const UV_MAX: u16 = 3;
// The health monitor's answer (46 to 49 are the version gate's).
const R_HEALTH: u16 = 50;
// A transaction command's answer (`txn.rs`).
const R_TXN: u16 = 51;
// The recovery daemon's operator answers (`txn_ops.rs`).
const R_TXN_ENTRIES: u16 = 52;
const R_TXN_TURN: u16 = 53;
const R_TAGS: &[u16] = &[
    R_ID,
    R_ERROR,
    R_DONE,
    R_VALUE,
    R_ROWS,
    R_ADMIN,
    R_DIRECTORY,
    R_MERGE_STATUS,
    R_PEER_STATUS,
    R_LOCATED,
    R_STATUS,
    R_MEMBERS,
    R_REGIONS,
    R_SPLIT,
    R_MERGED,
    R_NO_REPLY,
    R_PEERS_CHANGED,
    R_STORE_CHANGED,
    R_CLUSTER_VERSION,
    R_UPGRADE_STATUS,
    R_HEALTH,
    R_TXN,
    R_TXN_ENTRIES,
    R_TXN_TURN,
    super::tso::R_TIMESTAMPS,
    super::dup::R_DUPS,
    super::sink::R_SINK,
];
const SOME: u16 = 1;
const NONE: u16 = 2;
const ROW: u16 = 1;
/// Where a capped scan resumes (`Page::resume`); added after v1's first release, so
/// optional: absent is a complete answer.
const ROWS_RESUME: u16 = 2;
const ROW_KEY: u16 = 1;
const ROW_VALUE: u16 = 2;

// A scan page at the store's default caps fits a response with room to spare: its
// keys and values (at most the byte cap, or one row of at most a Raft entry's 1 MiB)
// and the resume key (one key) within twice the byte cap, plus three field headers
// per row (ROW, ROW_KEY, ROW_VALUE).
const _: () = {
    use regionkv_raft::StoreConfig;
    let page = 2 * StoreConfig::DEFAULT_SCAN_BYTES_MAX
        + 3 * codec::FIELD_HEADER_LEN * StoreConfig::DEFAULT_SCAN_ROWS_MAX;
    assert!(page < super::RESPONSE_BYTES_MAX as usize);
};

/// A RESPONSE payload.
pub(crate) fn encode_response(id: u64, result: &Result<Response, RemoteError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    codec::put_u64(&mut out, R_ID, id);
    let o = &mut out;
    match result {
        Err(e) => codec::put_nested(o, R_ERROR, |o| e.encode(o)),
        Ok(Response::Done) => codec::put_field(o, R_DONE, &[]),
        Ok(Response::NoReply) => codec::put_field(o, R_NO_REPLY, &[]),
        Ok(Response::Query(QueryResult::Value(v))) => codec::put_nested(o, R_VALUE, |o| match v {
            Some(v) => codec::put_field(o, SOME, v),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::Query(QueryResult::Rows(page))) => codec::put_nested(o, R_ROWS, |o| {
            for (k, v) in &page.rows {
                codec::put_nested(o, ROW, |o| {
                    codec::put_field(o, ROW_KEY, k);
                    codec::put_field(o, ROW_VALUE, v);
                });
            }
            if let Some(resume) = &page.resume {
                codec::put_field(o, ROWS_RESUME, resume);
            }
        }),
        Ok(Response::Admin(a)) => codec::put_nested(o, R_ADMIN, |o| put_admin_result(o, a)),
        Ok(Response::Directory(d)) => codec::put_nested(o, R_DIRECTORY, |o| put_dir_result(o, d)),
        Ok(Response::MergeStatus(m)) => {
            codec::put_nested(o, R_MERGE_STATUS, |o| put_merge_status(o, m));
        }
        Ok(Response::PeerStatus(p)) => codec::put_nested(o, R_PEER_STATUS, |o| match p {
            Some(p) => put_peer_status(o, SOME, p),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::Located(l)) => codec::put_nested(o, R_LOCATED, |o| match l {
            Some(r) => put_record(o, SOME, r),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::Status(s)) => codec::put_nested(o, R_STATUS, |o| {
            put_store_status_fields(o, s, StatusSchema::CURRENT);
        }),
        Ok(Response::Members(m)) => codec::put_nested(o, R_MEMBERS, |o| {
            for (store, addr) in m {
                codec::put_nested(o, 1, |o| {
                    codec::put_u64(o, 1, store.0);
                    codec::put_field(o, 2, addr.as_bytes());
                });
            }
        }),
        Ok(Response::Regions(infos)) => codec::put_nested(o, R_REGIONS, |o| {
            for info in infos {
                put_region_info(o, 1, info);
            }
        }),
        Ok(Response::Split(parts)) => codec::put_nested(o, R_SPLIT, |o| {
            for p in parts {
                put_region(o, 1, p);
            }
        }),
        Ok(Response::Merged(r)) => codec::put_nested(o, R_MERGED, |o| put_region(o, 1, r)),
        Ok(Response::PeersChanged(r)) => {
            codec::put_nested(o, R_PEERS_CHANGED, |o| put_region(o, 1, r));
        }
        Ok(Response::StoreChanged(regions)) => codec::put_nested(o, R_STORE_CHANGED, |o| {
            for r in regions {
                put_region(o, 1, r);
            }
        }),
        Ok(Response::ClusterVersion(v)) => codec::put_nested(o, R_CLUSTER_VERSION, |o| match v {
            Some(v) => codec::put_u64(o, SOME, u64::from(*v)),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::UpgradeStatus(status)) => codec::put_nested(o, R_UPGRADE_STATUS, |o| {
            codec::put_u64(o, UP_ACTIVE, u64::from(status.active));
            for s in &status.stores {
                codec::put_nested(o, UP_STORE, |o| {
                    codec::put_u64(o, UV_STORE, s.store.0);
                    put_opt_version(o, UV_ACTIVE, s.active);
                    put_opt_version(o, UV_MAX, s.max);
                });
            }
        }),
        Ok(Response::Health(h)) => super::health::put_health(o, R_HEALTH, h),
        Ok(Response::Txn(t)) => codec::put_nested(o, R_TXN, |o| super::txn::put_txn_reply(o, t)),
        Ok(Response::TxnStaged) => codec::put_nested(o, R_TXN, super::txn::put_txn_staged),
        Ok(Response::Timestamps(first)) => super::tso::put_answer(o, *first),
        Ok(Response::Dups(records)) => super::dup::put_answer(o, records.as_deref()),
        Ok(Response::Sink(answer)) => super::sink::put_answer(o, answer),
        Ok(Response::TxnEntries(e)) => {
            codec::put_nested(o, R_TXN_ENTRIES, |o| super::txn_ops::put_entries(o, e));
        }
        Ok(Response::TxnTurn(t)) => {
            codec::put_nested(o, R_TXN_TURN, |o| super::txn_ops::put_turn(o, t));
        }
    }
    out
}

fn put_opt_version(o: &mut Vec<u8>, tag: u16, version: Option<u32>) {
    if let Some(v) = version {
        codec::put_u64(o, tag, u64::from(v));
    }
}

/// An optional version field: absent is `None` (not reported), never 0.
fn opt_version(r: &codec::TlvRecord<'_>, tag: u16) -> D<Option<u32>> {
    match r.optional(tag)? {
        Some(f) => u32::try_from(f.as_u64()?)
            .map(Some)
            .map_err(|_| DecodeError::new(f.offset, "cluster version over u32")),
        None => Ok(None),
    }
}

/// Decodes a RESPONSE payload: its request id, and the answer. Never panics.
pub(crate) fn decode_response(
    payload: &[u8],
) -> Result<(u64, Result<Response, RemoteError>), WireError> {
    let bad = WireError::malformed("response");
    let rec = parse(payload, R_TAGS).map_err(&bad)?;
    let id = req_u64(&rec, R_ID, "response id missing").map_err(&bad)?;
    let bodies: Vec<Field<'_>> =
        R_TAGS.iter().filter(|&&t| t != R_ID).filter_map(|&t| rec.optional(t).ok()?).collect();
    let [body] = bodies.as_slice() else {
        return Err(WireError::Malformed {
            what: "response",
            offset: 0,
            reason: "a response needs exactly one known body",
        });
    };
    let answer = decode_response_body(body).map_err(&bad)?;
    Ok((id, answer))
}

/// An optional value: `SOME` with it, or `NONE` (absent is not empty: neither is an
/// error).
fn some_or_none<'a>(f: &Field<'a>) -> D<Option<Field<'a>>> {
    let r = nested(f, &[SOME, NONE])?;
    match (r.optional(SOME)?, r.optional(NONE)?) {
        (Some(s), None) => Ok(Some(s)),
        (None, Some(_)) => Ok(None),
        _ => Err(DecodeError::new(f.offset, "exactly one of some and none")),
    }
}

fn decode_response_body(f: &Field<'_>) -> D<Result<Response, RemoteError>> {
    Ok(Ok(match f.tag {
        R_ERROR => return Ok(Err(RemoteError::decode(f)?)),
        R_DONE => Response::Done,
        R_NO_REPLY => Response::NoReply,
        R_VALUE => Response::Query(QueryResult::Value(
            some_or_none(f)?.map(|v| Bytes::copy_from_slice(v.value)),
        )),
        R_ROWS => {
            let r = nested(f, &[ROW, ROWS_RESUME])?;
            let mut rows = Vec::new();
            for row in r.repeated(ROW) {
                let kv = nested(&row, &[ROW_KEY, ROW_VALUE])?;
                rows.push((
                    Bytes::copy_from_slice(kv.required(ROW_KEY, "row key missing")?.value),
                    Bytes::copy_from_slice(kv.required(ROW_VALUE, "row value missing")?.value),
                ));
            }
            let resume = r.optional(ROWS_RESUME)?.map(|k| Bytes::copy_from_slice(k.value));
            Response::Query(QueryResult::Rows(Page { rows, resume }))
        }
        R_ADMIN => Response::Admin(admin_result_of(f)?),
        super::tso::R_TIMESTAMPS => Response::Timestamps(super::tso::answer_of(f)?),
        super::dup::R_DUPS => Response::Dups(super::dup::answer_of(f)?),
        super::sink::R_SINK => Response::Sink(super::sink::answer_of(f)?),
        R_DIRECTORY => Response::Directory(dir_result_of(f)?),
        R_MERGE_STATUS => Response::MergeStatus(merge_status_of(f)?),
        R_PEER_STATUS => Response::PeerStatus(
            some_or_none(f)?.map(|s| peer_status_of(&s).map(Box::new)).transpose()?,
        ),
        R_LOCATED => Response::Located(some_or_none(f)?.map(|s| record_of(&s)).transpose()?),
        R_STATUS => Response::Status(Box::new(store_status_of(f)?)),
        R_MEMBERS => {
            let r = nested(f, &[1])?;
            let mut members = Vec::new();
            for m in r.repeated(1) {
                let m = nested(&m, &[1, 2])?;
                let addr = m.required(2, "member address missing")?;
                let addr = std::str::from_utf8(addr.value)
                    .map_err(|_| DecodeError::new(addr.offset, "address is not UTF-8"))?;
                members.push((StoreId(req_u64(&m, 1, "member store missing")?), addr.to_owned()));
            }
            Response::Members(members)
        }
        R_REGIONS => {
            let r = nested(f, &[1])?;
            Response::Regions(r.repeated(1).map(|i| region_info_of(&i)).collect::<D<_>>()?)
        }
        R_SPLIT => {
            let r = nested(f, &[1])?;
            Response::Split(r.repeated(1).map(|p| region_of(&p)).collect::<D<_>>()?)
        }
        R_MERGED => {
            let r = nested(f, &[1])?;
            Response::Merged(region_of(&r.required(1, "region missing")?)?)
        }
        R_PEERS_CHANGED => {
            let r = nested(f, &[1])?;
            Response::PeersChanged(region_of(&r.required(1, "region missing")?)?)
        }
        R_STORE_CHANGED => {
            let r = nested(f, &[1])?;
            Response::StoreChanged(r.repeated(1).map(|p| region_of(&p)).collect::<D<_>>()?)
        }
        R_CLUSTER_VERSION => {
            let r = nested(f, &[SOME, NONE])?;
            match (opt_version(&r, SOME)?, r.optional(NONE)?) {
                (Some(v), None) => Response::ClusterVersion(Some(v)),
                (None, Some(_)) => Response::ClusterVersion(None),
                _ => return Err(DecodeError::new(f.offset, "exactly one of some and none")),
            }
        }
        R_UPGRADE_STATUS => {
            let r = nested(f, &[UP_ACTIVE, UP_STORE])?;
            let active = opt_version(&r, UP_ACTIVE)?
                .ok_or(DecodeError::new(f.offset, "active version missing"))?;
            let mut stores = Vec::new();
            for s in r.repeated(UP_STORE) {
                let v = nested(&s, &[UV_STORE, UV_ACTIVE, UV_MAX])?;
                stores.push(crate::StoreVersion {
                    store: StoreId(req_u64(&v, UV_STORE, "store missing")?),
                    active: opt_version(&v, UV_ACTIVE)?,
                    max: opt_version(&v, UV_MAX)?,
                });
            }
            Response::UpgradeStatus(crate::UpgradeStatus { active, stores })
        }
        R_HEALTH => Response::Health(super::health::health_of(f)?),
        R_TXN => super::txn::txn_answer_of(f)?,
        R_TXN_ENTRIES => Response::TxnEntries(super::txn_ops::entries_of(f)?),
        R_TXN_TURN => Response::TxnTurn(Box::new(super::txn_ops::turn_of(f)?)),
        _ => return Err(DecodeError::new(f.offset, "unknown response body")),
    }))
}
