//! REQUEST payloads of the client protocol: what a client asks a node, encoded by
//! [`encode_request`] and decoded (never panicking) by [`decode_request`].

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, Field};
use regionkv_engine::{Epoch, Peer, PeerId, RegionId, SessionId, StoreId};
use regionkv_raft::{Op, PeerChange, Query, WriteSession};

use super::records::{
    D, admin_cmd_of, dir_cmd_of, epoch_of, nested, opt_u64, parse, put_admin_cmd, put_dir_cmd,
    put_epoch, put_range, range_of, req_u64,
};
use super::{Request, dup, sink, tso, txn, txn_ops};

// Request tags.
pub(super) const Q_ID: u16 = 1;
const Q_WRITE: u16 = 10;
const Q_READ: u16 = 11;
const Q_ADMIN: u16 = 12;
const Q_DIRECTORY: u16 = 13;
const Q_MERGE_STATUS: u16 = 14;
const Q_PEER_STATUS: u16 = 15;
const Q_LOCATE: u16 = 16;
const Q_STATUS: u16 = 17;
const Q_MEMBERS: u16 = 18;
const Q_SPLIT: u16 = 19;
const Q_MERGE: u16 = 20;
const Q_REGIONS: u16 = 21;
const Q_LOCAL_SCAN: u16 = 22;
const Q_CHANGE_PEERS: u16 = 23;
const Q_STORE_ADD: u16 = 24;
const Q_STORE_REMOVE: u16 = 25;
const Q_MEMBER: u16 = 26;
const Q_CLUSTER_VERSION: u16 = 27;
const Q_UPGRADE_STATUS: u16 = 28;
const Q_FINALIZE_UPGRADE: u16 = 29;
const U_TARGET: u16 = 1;
// The health monitor's surfaces (27 to 31 are the version gate's).
const Q_HEALTH: u16 = 32;
const HQ_AUDIT: u16 = 1;
// Transactions (`txn.rs`).
const Q_TXN: u16 = 33;
const Q_TXN_IDS: u16 = 34;
// The recovery daemon's operator requests (`txn_ops.rs`).
const Q_TXN_LIST: u16 = 35;
const Q_TXN_RECOVER: u16 = 36;
const Q_TAGS: &[u16] = &[
    Q_ID,
    Q_WRITE,
    Q_READ,
    Q_ADMIN,
    Q_DIRECTORY,
    Q_MERGE_STATUS,
    Q_PEER_STATUS,
    Q_LOCATE,
    Q_STATUS,
    Q_MEMBERS,
    Q_SPLIT,
    Q_MERGE,
    Q_REGIONS,
    Q_LOCAL_SCAN,
    Q_CHANGE_PEERS,
    Q_STORE_ADD,
    Q_STORE_REMOVE,
    Q_MEMBER,
    Q_CLUSTER_VERSION,
    Q_UPGRADE_STATUS,
    Q_FINALIZE_UPGRADE,
    Q_HEALTH,
    Q_TXN,
    Q_TXN_IDS,
    Q_TXN_LIST,
    Q_TXN_RECOVER,
    tso::Q_TIMESTAMPS,
    dup::Q_DUPS,
    dup::Q_DUP_COMMAND,
    sink::Q_SINK,
];

/// The request kinds added after the first release (`decode_later`).
const Q_LATER: &[u16] = &[
    Q_CLUSTER_VERSION,
    Q_UPGRADE_STATUS,
    Q_FINALIZE_UPGRADE,
    Q_HEALTH,
    Q_TXN,
    Q_TXN_IDS,
    Q_TXN_LIST,
    Q_TXN_RECOVER,
    tso::Q_TIMESTAMPS,
    dup::Q_DUPS,
    dup::Q_DUP_COMMAND,
    sink::Q_SINK,
];

// Nested request fields.
const F_REGION: u16 = 1;
const F_EPOCH: u16 = 2;
const F_OPS: u16 = 3;
/// Since 0.1: optional, absent = a client without sessions.
const F_SESSION: u16 = 4;
const S_ID: u16 = 1;
const S_SEQ: u16 = 2;
const F_CMD: u16 = 3;
const F_GET: u16 = 3;
const F_SCAN: u16 = 4;
/// Optional (helper "gc"'s tag 42): the snapshot timestamp of a transaction's get or
/// scan (`Query::read_ts`); absent = a raw read. A node that predates it skips the tag
/// (every nested record skips unknown tags) and serves the read raw, unchecked: such
/// a node cannot have collected a version (collection needs cluster version 4).
const F_READ_TS: u16 = 42;
const OP_KIND: u16 = 1;
const OP_KEY: u16 = 2;
const OP_VALUE: u16 = 3;
const OP_PUT: u64 = 1;
const OP_DELETE: u64 = 2;
const K_KEY: u16 = 1;
const M_LEFT: u16 = 1;
const M_RIGHT: u16 = 2;
const F_CHANGE: u16 = 3;
const C_KIND: u16 = 1;
const C_PEER: u16 = 2;
const C_STORE: u16 = 3;
const C_ADD_VOTER: u64 = 1;
const C_ADD_LEARNER: u64 = 2;
const C_REMOVE: u64 = 3;
const ST_STORE: u16 = 1;
const ST_ADDR: u16 = 2;

/// A REQUEST payload.
pub(crate) fn encode_request(id: u64, req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    codec::put_u64(&mut out, Q_ID, id);
    match req {
        Request::Write { region, epoch, ops, session } => {
            codec::put_nested(&mut out, Q_WRITE, |o| {
                put_write(o, *region, *epoch, ops, session.as_ref());
            });
        }
        Request::Read { region, epoch, query } => {
            codec::put_nested(&mut out, Q_READ, |o| put_read(o, *region, *epoch, query));
        }
        Request::Admin { region, epoch, cmd } => codec::put_nested(&mut out, Q_ADMIN, |o| {
            codec::put_u64(o, F_REGION, region.0);
            put_epoch(o, F_EPOCH, *epoch);
            codec::put_nested(o, F_CMD, |o| put_admin_cmd(o, cmd));
        }),
        Request::Directory { cmd } => codec::put_nested(&mut out, Q_DIRECTORY, |o| {
            codec::put_nested(o, 1, |o| put_dir_cmd(o, cmd));
        }),
        Request::MergeStatus { region } => codec::put_nested(&mut out, Q_MERGE_STATUS, |o| {
            codec::put_u64(o, F_REGION, region.0);
        }),
        Request::PeerStatus { region } => codec::put_nested(&mut out, Q_PEER_STATUS, |o| {
            codec::put_u64(o, F_REGION, region.0);
        }),
        Request::Locate { key } => {
            codec::put_nested(&mut out, Q_LOCATE, |o| codec::put_field(o, K_KEY, key));
        }
        Request::Status => codec::put_field(&mut out, Q_STATUS, &[]),
        Request::Members => codec::put_field(&mut out, Q_MEMBERS, &[]),
        Request::Split { key } => {
            codec::put_nested(&mut out, Q_SPLIT, |o| codec::put_field(o, K_KEY, key));
        }
        Request::Merge { left, right } => codec::put_nested(&mut out, Q_MERGE, |o| {
            codec::put_u64(o, M_LEFT, left.0);
            codec::put_u64(o, M_RIGHT, right.0);
        }),
        Request::Regions => codec::put_field(&mut out, Q_REGIONS, &[]),
        Request::LocalScan { start, end, limit } => {
            codec::put_nested(&mut out, Q_LOCAL_SCAN, |o| {
                put_range(o, start, end.as_deref(), *limit);
            });
        }
        Request::ChangePeers { region, epoch, change } => {
            codec::put_nested(&mut out, Q_CHANGE_PEERS, |o| {
                codec::put_u64(o, F_REGION, region.0);
                put_epoch(o, F_EPOCH, *epoch);
                codec::put_nested(o, F_CHANGE, |o| put_peer_change(o, change));
            });
        }
        Request::StoreAdd { store, addr } => codec::put_nested(&mut out, Q_STORE_ADD, |o| {
            codec::put_u64(o, ST_STORE, store.0);
            codec::put_field(o, ST_ADDR, addr.as_bytes());
        }),
        Request::StoreRemove { store } => codec::put_nested(&mut out, Q_STORE_REMOVE, |o| {
            codec::put_u64(o, ST_STORE, store.0);
        }),
        Request::Member { store, addr } => codec::put_nested(&mut out, Q_MEMBER, |o| {
            codec::put_u64(o, ST_STORE, store.0);
            codec::put_field(o, ST_ADDR, addr.as_bytes());
        }),
        Request::ClusterVersion => codec::put_field(&mut out, Q_CLUSTER_VERSION, &[]),
        Request::UpgradeStatus => codec::put_field(&mut out, Q_UPGRADE_STATUS, &[]),
        Request::FinalizeUpgrade { target } => {
            codec::put_nested(&mut out, Q_FINALIZE_UPGRADE, |o| {
                if let Some(target) = target {
                    codec::put_u64(o, U_TARGET, u64::from(*target));
                }
            });
        }
        Request::Health { audit } => codec::put_nested(&mut out, Q_HEALTH, |o| {
            codec::put_u64(o, HQ_AUDIT, u64::from(*audit));
        }),
        Request::Txn { region, epoch, cmd } => {
            codec::put_nested(&mut out, Q_TXN, |o| txn::put_txn(o, *region, *epoch, cmd));
        }
        Request::Timestamps { count } => tso::put_request(&mut out, *count),
        Request::Dups => dup::put_request(&mut out),
        Request::DupCommand { cmd } => dup::put_command(&mut out, cmd),
        Request::Sink { region, cmd } => sink::put_request(&mut out, *region, cmd),
        Request::TxnIds { count } => codec::put_nested(&mut out, Q_TXN_IDS, |o| {
            codec::put_u64(o, txn::TI_COUNT, *count);
        }),
        Request::TxnList { in_doubt_only, older_than_ms } => {
            codec::put_nested(&mut out, Q_TXN_LIST, |o| {
                txn_ops::put_list(o, *in_doubt_only, *older_than_ms);
            });
        }
        Request::TxnRecover { region } => {
            codec::put_nested(&mut out, Q_TXN_RECOVER, |o| txn_ops::put_recover(o, *region));
        }
    }
    out
}

/// The fields of a write request.
fn put_write(
    o: &mut Vec<u8>,
    region: RegionId,
    epoch: Epoch,
    ops: &[Op],
    session: Option<&WriteSession>,
) {
    codec::put_u64(o, F_REGION, region.0);
    put_epoch(o, F_EPOCH, epoch);
    for op in ops {
        codec::put_nested(o, F_OPS, |o| match op {
            Op::Put { key, value } => {
                codec::put_u64(o, OP_KIND, OP_PUT);
                codec::put_field(o, OP_KEY, key);
                codec::put_field(o, OP_VALUE, value);
            }
            Op::Delete { key } => {
                codec::put_u64(o, OP_KIND, OP_DELETE);
                codec::put_field(o, OP_KEY, key);
            }
        });
    }
    if let Some(s) = session {
        codec::put_nested(o, F_SESSION, |o| {
            codec::put_u64(o, S_ID, s.id.0);
            codec::put_u64(o, S_SEQ, s.seq);
        });
    }
}

/// The fields of one membership change.
fn put_peer_change(o: &mut Vec<u8>, change: &PeerChange) {
    let (kind, peer, store) = match change {
        PeerChange::AddVoter(p) => (C_ADD_VOTER, p.id, Some(p.store)),
        PeerChange::AddLearner(p) => (C_ADD_LEARNER, p.id, Some(p.store)),
        PeerChange::Remove(id) => (C_REMOVE, *id, None),
    };
    codec::put_u64(o, C_KIND, kind);
    codec::put_u64(o, C_PEER, peer.0);
    if let Some(store) = store {
        codec::put_u64(o, C_STORE, store.0);
    }
}

/// A store id and an address (`store add`, `member`).
fn store_and_addr(f: &Field<'_>) -> D<(StoreId, String)> {
    let r = nested(f, &[ST_STORE, ST_ADDR])?;
    let store = StoreId(req_u64(&r, ST_STORE, "store missing")?);
    let addr = r.required(ST_ADDR, "address missing")?;
    let text = std::str::from_utf8(addr.value)
        .map_err(|_| DecodeError::new(addr.offset, "address is not UTF-8"))?;
    Ok((store, text.to_owned()))
}

fn peer_change_of(f: &Field<'_>) -> D<PeerChange> {
    let c = nested(f, &[C_KIND, C_PEER, C_STORE])?;
    let id = PeerId(req_u64(&c, C_PEER, "peer id missing")?);
    let peer = |c: &codec::TlvRecord<'_>| -> D<Peer> {
        Ok(Peer { id, store: StoreId(req_u64(c, C_STORE, "peer store missing")?) })
    };
    Ok(match req_u64(&c, C_KIND, "change kind missing")? {
        C_ADD_VOTER => PeerChange::AddVoter(peer(&c)?),
        C_ADD_LEARNER => PeerChange::AddLearner(peer(&c)?),
        C_REMOVE => PeerChange::Remove(id),
        // Unknown (or 0, unspecified): never guessed.
        _ => return Err(DecodeError::new(f.offset, "unknown membership change kind")),
    })
}

/// Why a request did not decode.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The payload is not a valid request (the id, if it could be read).
    Malformed { id: Option<u64>, error: DecodeError },
    /// A well-formed request of a kind this binary does not know (a newer client).
    Unsupported { id: u64 },
}

/// Decodes a REQUEST payload. Never panics.
pub(crate) fn decode_request(payload: &[u8]) -> Result<(u64, Request), RequestError> {
    let rec =
        parse(payload, Q_TAGS).map_err(|error| RequestError::Malformed { id: None, error })?;
    let id = req_u64(&rec, Q_ID, "request id missing")
        .map_err(|error| RequestError::Malformed { id: None, error })?;
    let bodies: Vec<Field<'_>> =
        Q_TAGS.iter().filter(|&&t| t != Q_ID).filter_map(|&t| rec.optional(t).ok()?).collect();
    let body = match bodies.as_slice() {
        [] => return Err(RequestError::Unsupported { id }),
        [one] => *one,
        [_, second, ..] => {
            return Err(RequestError::Malformed {
                id: Some(id),
                error: DecodeError::new(second.offset, "a request has more than one body"),
            });
        }
    };
    decode_body(&body)
        .map(|r| (id, r))
        .map_err(|error| RequestError::Malformed { id: Some(id), error })
}

fn decode_body(f: &Field<'_>) -> D<Request> {
    Ok(match f.tag {
        Q_WRITE => {
            let r = nested(f, &[F_REGION, F_EPOCH, F_OPS, F_SESSION])?;
            let mut ops = Vec::new();
            for op in r.repeated(F_OPS) {
                let o = nested(&op, &[OP_KIND, OP_KEY, OP_VALUE])?;
                let key = Bytes::copy_from_slice(o.required(OP_KEY, "op key missing")?.value);
                ops.push(match req_u64(&o, OP_KIND, "op kind missing")? {
                    OP_PUT => Op::Put {
                        key,
                        value: Bytes::copy_from_slice(
                            o.required(OP_VALUE, "put value missing")?.value,
                        ),
                    },
                    OP_DELETE => Op::Delete { key },
                    // An op this binary does not know must fail the whole batch, never
                    // be skipped: the batch is atomic.
                    _ => return Err(DecodeError::new(op.offset, "unknown write op kind")),
                });
            }
            let session = match r.optional(F_SESSION)? {
                Some(s) => {
                    let s = nested(&s, &[S_ID, S_SEQ])?;
                    Some(WriteSession {
                        id: SessionId(req_u64(&s, S_ID, "session id missing")?),
                        seq: req_u64(&s, S_SEQ, "session seq missing")?,
                    })
                }
                None => None,
            };
            Request::Write {
                region: RegionId(req_u64(&r, F_REGION, "region missing")?),
                epoch: epoch_of(&r, F_EPOCH)?,
                ops,
                session,
            }
        }
        Q_READ => read_of(f)?,
        Q_ADMIN => {
            let r = nested(f, &[F_REGION, F_EPOCH, F_CMD])?;
            Request::Admin {
                region: RegionId(req_u64(&r, F_REGION, "region missing")?),
                epoch: epoch_of(&r, F_EPOCH)?,
                cmd: admin_cmd_of(&r.required(F_CMD, "admin command missing")?)?,
            }
        }
        Q_DIRECTORY => {
            let r = nested(f, &[1])?;
            Request::Directory { cmd: dir_cmd_of(&r.required(1, "directory command missing")?)? }
        }
        Q_MERGE_STATUS | Q_PEER_STATUS => {
            let r = nested(f, &[F_REGION])?;
            let region = RegionId(req_u64(&r, F_REGION, "region missing")?);
            if f.tag == Q_MERGE_STATUS {
                Request::MergeStatus { region }
            } else {
                Request::PeerStatus { region }
            }
        }
        Q_LOCATE | Q_SPLIT => {
            let r = nested(f, &[K_KEY])?;
            let key = r.required(K_KEY, "key missing")?.value.to_vec();
            if f.tag == Q_LOCATE { Request::Locate { key } } else { Request::Split { key } }
        }
        Q_STATUS => Request::Status,
        Q_MEMBERS => Request::Members,
        Q_REGIONS => Request::Regions,
        Q_MERGE => {
            let r = nested(f, &[M_LEFT, M_RIGHT])?;
            Request::Merge {
                left: RegionId(req_u64(&r, M_LEFT, "left region missing")?),
                right: RegionId(req_u64(&r, M_RIGHT, "right region missing")?),
            }
        }
        Q_LOCAL_SCAN => {
            let (start, end, limit) = range_of(f)?;
            Request::LocalScan { start, end, limit }
        }
        Q_CHANGE_PEERS | Q_STORE_ADD | Q_STORE_REMOVE | Q_MEMBER => decode_membership(f)?,
        t if Q_LATER.contains(&t) => decode_later(f)?,
        _ => return Err(DecodeError::new(f.offset, "unknown request body")),
    })
}

/// The request kinds added after the first release: the cluster version's, health,
/// transactions.
fn decode_later(f: &Field<'_>) -> D<Request> {
    match f.tag {
        Q_HEALTH => health_request_of(f),
        Q_TXN => {
            let (region, epoch, cmd) = txn::txn_of(f)?;
            Ok(Request::Txn { region, epoch, cmd })
        }
        Q_TXN_IDS => {
            let r = nested(f, &[txn::TI_COUNT])?;
            Ok(Request::TxnIds { count: req_u64(&r, txn::TI_COUNT, "count missing")? })
        }
        Q_TXN_LIST => {
            let (in_doubt_only, older_than_ms) = txn_ops::list_of(f)?;
            Ok(Request::TxnList { in_doubt_only, older_than_ms })
        }
        Q_TXN_RECOVER => Ok(Request::TxnRecover { region: txn_ops::recover_of(f)? }),
        tso::Q_TIMESTAMPS => Ok(Request::Timestamps { count: tso::request_of(f)? }),
        dup::Q_DUPS => Ok(Request::Dups),
        dup::Q_DUP_COMMAND => Ok(Request::DupCommand { cmd: dup::command_of(f)? }),
        sink::Q_SINK => {
            let (region, cmd) = sink::request_of(f)?;
            Ok(Request::Sink { region, cmd })
        }
        _ => decode_upgrade(f),
    }
}

/// A health request: the report, or (`audit` 1) the audit.
fn health_request_of(f: &Field<'_>) -> D<Request> {
    let r = nested(f, &[HQ_AUDIT])?;
    // Absent: the report.
    let audit = match r.optional(HQ_AUDIT)? {
        None => false,
        Some(a) => match a.as_u64()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::new(a.offset, "the audit flag is 0 or 1")),
        },
    };
    Ok(Request::Health { audit })
}

/// The cluster version requests: the version, the upgrade's status, a finalize (its
/// target, if given).
fn decode_upgrade(f: &Field<'_>) -> D<Request> {
    match f.tag {
        Q_CLUSTER_VERSION => return Ok(Request::ClusterVersion),
        Q_UPGRADE_STATUS => return Ok(Request::UpgradeStatus),
        _ => {}
    }
    let r = nested(f, &[U_TARGET])?;
    let target = match r.optional(U_TARGET)? {
        Some(t) => Some(
            u32::try_from(t.as_u64()?)
                .map_err(|_| DecodeError::new(t.offset, "target version over u32"))?,
        ),
        None => None,
    };
    Ok(Request::FinalizeUpgrade { target })
}

/// The membership requests: a change of one region, a store added or removed, a
/// member's address.
fn decode_membership(f: &Field<'_>) -> D<Request> {
    Ok(match f.tag {
        Q_CHANGE_PEERS => {
            let r = nested(f, &[F_REGION, F_EPOCH, F_CHANGE])?;
            Request::ChangePeers {
                region: RegionId(req_u64(&r, F_REGION, "region missing")?),
                epoch: epoch_of(&r, F_EPOCH)?,
                change: peer_change_of(&r.required(F_CHANGE, "change missing")?)?,
            }
        }
        Q_STORE_ADD => {
            let (store, addr) = store_and_addr(f)?;
            Request::StoreAdd { store, addr }
        }
        Q_STORE_REMOVE => {
            let r = nested(f, &[ST_STORE])?;
            Request::StoreRemove { store: StoreId(req_u64(&r, ST_STORE, "store missing")?) }
        }
        Q_MEMBER => {
            let (store, addr) = store_and_addr(f)?;
            Request::Member { store, addr }
        }
        _ => return Err(DecodeError::new(f.offset, "unknown request body")),
    })
}

/// A read request's fields: region, epoch, the query, and its read timestamp if any.
fn put_read(o: &mut Vec<u8>, region: RegionId, epoch: Epoch, query: &Query) {
    codec::put_u64(o, F_REGION, region.0);
    put_epoch(o, F_EPOCH, epoch);
    match query {
        Query::Get { key, .. } => {
            codec::put_nested(o, F_GET, |o| codec::put_field(o, K_KEY, key));
        }
        Query::Scan { start, end, limit, .. } => codec::put_nested(o, F_SCAN, |o| {
            put_range(o, start, end.as_deref(), *limit);
        }),
    }
    if let Some(ts) = query.read_ts() {
        codec::put_u64(o, F_READ_TS, ts);
    }
}

/// Decodes what [`put_read`] wrote.
fn read_of(f: &Field<'_>) -> D<Request> {
    let r = nested(f, &[F_REGION, F_EPOCH, F_GET, F_SCAN, F_READ_TS])?;
    let read_ts = opt_u64(&r, F_READ_TS)?;
    let query = match (r.optional(F_GET)?, r.optional(F_SCAN)?) {
        (Some(g), None) => {
            let g = nested(&g, &[K_KEY])?;
            Query::Get {
                key: Bytes::copy_from_slice(g.required(K_KEY, "key missing")?.value),
                read_ts,
            }
        }
        (None, Some(s)) => {
            let (start, end, limit) = range_of(&s)?;
            Query::Scan { start: start.into(), end: end.map(Bytes::from), limit, read_ts }
        }
        _ => return Err(DecodeError::new(f.offset, "a read needs exactly one query")),
    };
    Ok(Request::Read {
        region: RegionId(req_u64(&r, F_REGION, "region missing")?),
        epoch: epoch_of(&r, F_EPOCH)?,
        query,
    })
}
