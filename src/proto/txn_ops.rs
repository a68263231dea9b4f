//! The transaction recovery daemon's operator requests on the client protocol
//! (`regionkv client txn list|recover`; ARCHITECTURE.md, "The recovery daemon"): the
//! locks and records of the regions a node's store leads, and one recovery turn now.
//! States, gates and reasons travel as their names: a name this binary does not know
//! (a newer node's) reads as `"unknown"`, never as another.
//!
//! ```text
//!  35 txn list     { 1 in doubt only (0/1), 2 older than ms (optional) }
//!  36 txn recover  { 1 region (optional: every region the store leads) }
//!  52 txn entries  { 1 entry* { 1 region, 2 store, 3 kind, 4 key, 5 txn id (optional),
//!                     6 primary key (optional), 7 state, 8 age ms (optional),
//!                     9 expires at ms (optional), 10 in doubt (0/1) } }
//!  53 txn turn     { 1 store, 2 deferred gate (optional), 3 region*, 4 resolved
//!                    committed, 5 resolved aborted, 6 aborted in doubt, 7 forgotten,
//!                    8 error*, 9 in doubt, 10 unreadable* { 1 reason, 2 count },
//!                    11 frozen* { 1 reason, 2 count } }
//! ```
//!
//! Since transactions; an older node answers `UnsupportedRequest`.

use std::collections::BTreeMap;

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, Field, TlvRecord};
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::txn::recovery::Gate;

use super::records::{D, nested, req_u64};
use crate::txn_recovery::{TxnEntry, TxnRecoveryTurn};

pub(super) const L_IN_DOUBT: u16 = 1;
pub(super) const L_OLDER_THAN_MS: u16 = 2;
pub(super) const V_REGION: u16 = 1;

const E_ENTRY: u16 = 1;
const E_REGION: u16 = 1;
const E_STORE: u16 = 2;
const E_KIND: u16 = 3;
const E_KEY: u16 = 4;
const E_TXN: u16 = 5;
const E_PRIMARY: u16 = 6;
const E_STATE: u16 = 7;
const E_AGE_MS: u16 = 8;
const E_EXPIRES_MS: u16 = 9;
const E_IN_DOUBT: u16 = 10;

const T_STORE: u16 = 1;
const T_DEFERRED: u16 = 2;
const T_REGION: u16 = 3;
const T_COMMITTED: u16 = 4;
const T_ABORTED: u16 = 5;
const T_ABORTED_IN_DOUBT: u16 = 6;
const T_FORGOTTEN: u16 = 7;
const T_ERROR: u16 = 8;
const T_IN_DOUBT: u16 = 9;
const T_UNREADABLE: u16 = 10;
const T_FROZEN: u16 = 11;
const C_REASON: u16 = 1;
const C_COUNT: u16 = 2;

/// Every name an entry's kind, state or a count's reason can have.
const NAMES: &[&str] = &[
    "lock",
    "record",
    "locked",
    "pending",
    "committed",
    "aborted",
    "too_new",
    "corrupt",
    "unknown_status",
    "unknown_op",
];

/// A name this binary knows, else `"unknown"`.
fn known(bytes: &[u8]) -> &'static str {
    NAMES.iter().copied().find(|n| n.as_bytes() == bytes).unwrap_or("unknown")
}

fn flag(r: &TlvRecord<'_>, tag: u16) -> D<bool> {
    match r.optional(tag)? {
        None => Ok(false),
        Some(f) => match f.as_u64()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::new(f.offset, "a flag is 0 or 1")),
        },
    }
}

fn opt_u64(r: &TlvRecord<'_>, tag: u16) -> D<Option<u64>> {
    r.optional(tag)?.map(|f| f.as_u64()).transpose()
}

fn opt_bytes(r: &TlvRecord<'_>, tag: u16) -> D<Option<Bytes>> {
    Ok(r.optional(tag)?.map(|f| Bytes::copy_from_slice(f.value)))
}

fn req_bytes<'a>(r: &TlvRecord<'a>, tag: u16, missing: &'static str) -> D<&'a [u8]> {
    Ok(r.required(tag, missing)?.value)
}

/// The body of a txn list request.
pub(super) fn put_list(o: &mut Vec<u8>, in_doubt_only: bool, older_than_ms: Option<u64>) {
    codec::put_u64(o, L_IN_DOUBT, u64::from(in_doubt_only));
    if let Some(ms) = older_than_ms {
        codec::put_u64(o, L_OLDER_THAN_MS, ms);
    }
}

/// Decodes a txn list request's body: (in doubt only, older than ms).
pub(super) fn list_of(f: &Field<'_>) -> D<(bool, Option<u64>)> {
    let r = nested(f, &[L_IN_DOUBT, L_OLDER_THAN_MS])?;
    Ok((flag(&r, L_IN_DOUBT)?, opt_u64(&r, L_OLDER_THAN_MS)?))
}

/// The body of a txn recover request.
pub(super) fn put_recover(o: &mut Vec<u8>, region: Option<RegionId>) {
    if let Some(region) = region {
        codec::put_u64(o, V_REGION, region.0);
    }
}

/// Decodes a txn recover request's body.
pub(super) fn recover_of(f: &Field<'_>) -> D<Option<RegionId>> {
    let r = nested(f, &[V_REGION])?;
    Ok(opt_u64(&r, V_REGION)?.map(RegionId))
}

/// A txn entries answer's body.
pub(super) fn put_entries(o: &mut Vec<u8>, entries: &[TxnEntry]) {
    for e in entries {
        codec::put_nested(o, E_ENTRY, |o| {
            codec::put_u64(o, E_REGION, e.region.0);
            codec::put_u64(o, E_STORE, e.store.0);
            codec::put_field(o, E_KIND, e.kind.as_bytes());
            codec::put_field(o, E_KEY, &e.key);
            if let Some(id) = e.txn_id {
                codec::put_u64(o, E_TXN, id);
            }
            if let Some(p) = &e.primary_key {
                codec::put_field(o, E_PRIMARY, p);
            }
            codec::put_field(o, E_STATE, e.state.as_bytes());
            if let Some(age) = e.age_ms {
                codec::put_u64(o, E_AGE_MS, age);
            }
            if let Some(at) = e.expires_at_ms {
                codec::put_u64(o, E_EXPIRES_MS, at);
            }
            codec::put_u64(o, E_IN_DOUBT, u64::from(e.in_doubt));
        });
    }
}

/// Decodes a txn entries answer's body.
pub(super) fn entries_of(f: &Field<'_>) -> D<Vec<TxnEntry>> {
    let r = nested(f, &[E_ENTRY])?;
    let mut out = Vec::new();
    for field in r.repeated(E_ENTRY) {
        let e = nested(
            &field,
            &[
                E_REGION,
                E_STORE,
                E_KIND,
                E_KEY,
                E_TXN,
                E_PRIMARY,
                E_STATE,
                E_AGE_MS,
                E_EXPIRES_MS,
                E_IN_DOUBT,
            ],
        )?;
        out.push(TxnEntry {
            region: RegionId(req_u64(&e, E_REGION, "region missing")?),
            store: StoreId(req_u64(&e, E_STORE, "store missing")?),
            kind: known(req_bytes(&e, E_KIND, "kind missing")?),
            key: Bytes::copy_from_slice(req_bytes(&e, E_KEY, "key missing")?),
            txn_id: opt_u64(&e, E_TXN)?,
            primary_key: opt_bytes(&e, E_PRIMARY)?,
            state: known(req_bytes(&e, E_STATE, "state missing")?),
            age_ms: opt_u64(&e, E_AGE_MS)?,
            expires_at_ms: opt_u64(&e, E_EXPIRES_MS)?,
            in_doubt: flag(&e, E_IN_DOUBT)?,
        });
    }
    Ok(out)
}

fn put_counts(o: &mut Vec<u8>, tag: u16, counts: &BTreeMap<&'static str, u64>) {
    for (reason, n) in counts {
        codec::put_nested(o, tag, |o| {
            codec::put_field(o, C_REASON, reason.as_bytes());
            codec::put_u64(o, C_COUNT, *n);
        });
    }
}

fn counts_of(r: &TlvRecord<'_>, tag: u16) -> D<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for field in r.repeated(tag) {
        let c = nested(&field, &[C_REASON, C_COUNT])?;
        let reason = known(req_bytes(&c, C_REASON, "reason missing")?);
        *out.entry(reason).or_default() += req_u64(&c, C_COUNT, "count missing")?;
    }
    Ok(out)
}

/// A txn turn answer's body.
pub(super) fn put_turn(o: &mut Vec<u8>, t: &TxnRecoveryTurn) {
    codec::put_u64(o, T_STORE, t.store.0);
    if let Some(gate) = t.deferred {
        codec::put_field(o, T_DEFERRED, gate.label().as_bytes());
    }
    for r in &t.regions {
        codec::put_u64(o, T_REGION, r.0);
    }
    codec::put_u64(o, T_COMMITTED, t.resolved_committed);
    codec::put_u64(o, T_ABORTED, t.resolved_aborted);
    codec::put_u64(o, T_ABORTED_IN_DOUBT, t.aborted_in_doubt);
    codec::put_u64(o, T_FORGOTTEN, t.forgotten);
    for e in &t.errors {
        codec::put_field(o, T_ERROR, e.as_bytes());
    }
    codec::put_u64(o, T_IN_DOUBT, t.in_doubt);
    put_counts(o, T_UNREADABLE, &t.unreadable);
    put_counts(o, T_FROZEN, &t.frozen);
}

/// Decodes a txn turn answer's body. A deferring gate this binary does not know is
/// refused (a turn that says "deferred" must not read as "ran").
pub(super) fn turn_of(f: &Field<'_>) -> D<TxnRecoveryTurn> {
    let r = nested(
        f,
        &[
            T_STORE,
            T_DEFERRED,
            T_REGION,
            T_COMMITTED,
            T_ABORTED,
            T_ABORTED_IN_DOUBT,
            T_FORGOTTEN,
            T_ERROR,
            T_IN_DOUBT,
            T_UNREADABLE,
            T_FROZEN,
        ],
    )?;
    let deferred = match r.optional(T_DEFERRED)? {
        None => None,
        Some(g) => Some(
            Gate::ALL
                .into_iter()
                .find(|gate| gate.label().as_bytes() == g.value)
                .ok_or_else(|| DecodeError::new(g.offset, "unknown recovery gate"))?,
        ),
    };
    let count = |tag| opt_u64(&r, tag).map(Option::unwrap_or_default);
    Ok(TxnRecoveryTurn {
        store: StoreId(req_u64(&r, T_STORE, "store missing")?),
        deferred,
        regions: r.repeated(T_REGION).map(|f| f.as_u64().map(RegionId)).collect::<D<_>>()?,
        resolved_committed: count(T_COMMITTED)?,
        resolved_aborted: count(T_ABORTED)?,
        aborted_in_doubt: count(T_ABORTED_IN_DOUBT)?,
        forgotten: count(T_FORGOTTEN)?,
        errors: r
            .repeated(T_ERROR)
            .map(|f| String::from_utf8_lossy(f.value).into_owned())
            .collect(),
        in_doubt: count(T_IN_DOUBT)?,
        unreadable: counts_of(&r, T_UNREADABLE)?,
        frozen: counts_of(&r, T_FROZEN)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use regionkv_engine::{RegionId, StoreId};
    use regionkv_raft::txn::recovery::Gate;

    use crate::proto::{
        Request, Response, decode_request, decode_response, encode_request, encode_response,
    };
    use crate::txn_recovery::{TxnEntry, TxnRecoveryTurn};

    fn entry(state: &'static str, read: bool) -> TxnEntry {
        TxnEntry {
            region: RegionId(4),
            store: StoreId(2),
            kind: "lock",
            key: Bytes::from_static(b"k"),
            txn_id: read.then_some(9),
            primary_key: read.then(|| Bytes::from_static(b"p")),
            state,
            age_ms: read.then_some(1_500),
            expires_at_ms: read.then_some(77),
            in_doubt: read,
        }
    }

    fn round_trip(answer: Response) -> Response {
        let bytes = encode_response(3, &Ok(answer));
        let (id, decoded) = decode_response(&bytes).expect("decodes");
        assert_eq!(id, 3);
        decoded.expect("an answer")
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::TxnList { in_doubt_only: true, older_than_ms: Some(30_000) },
            Request::TxnList { in_doubt_only: false, older_than_ms: None },
            Request::TxnRecover { region: Some(RegionId(7)) },
            Request::TxnRecover { region: None },
        ] {
            let bytes = encode_request(11, &req);
            assert_eq!(decode_request(&bytes).expect("decodes"), (11, req));
        }
    }

    #[test]
    fn entries_round_trip_and_absent_fields_stay_absent() {
        let entries = vec![entry("locked", true), entry("too_new", false)];
        match round_trip(Response::TxnEntries(entries.clone())) {
            Response::TxnEntries(back) => assert_eq!(back, entries),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_this_binary_does_not_know_reads_as_unknown() {
        let mut out = Vec::new();
        super::put_entries(&mut out, &[entry("locked", true)]);
        // The same length: only the name changes (a newer node's state).
        let at = out.windows(6).position(|w| w == b"locked").expect("the state's name");
        out[at..at + 6].copy_from_slice(b"lockee");
        let patched = &out[..];
        let mut body = Vec::new();
        regionkv_engine::codec::put_field(&mut body, 52, patched);
        let rec = crate::proto::records::parse(&body, &[52]).unwrap();
        let entries = super::entries_of(&rec.required(52, "body").unwrap()).unwrap();
        assert_eq!(entries[0].state, "unknown");
    }

    #[test]
    fn turns_round_trip() {
        let turn = TxnRecoveryTurn {
            store: StoreId(1),
            deferred: None,
            regions: vec![RegionId(1), RegionId(5)],
            resolved_committed: 2,
            resolved_aborted: 3,
            aborted_in_doubt: 1,
            forgotten: 4,
            errors: vec!["region 5 unavailable".into()],
            in_doubt: 1,
            unreadable: BTreeMap::from([("too_new", 2)]),
            frozen: BTreeMap::from([("unknown_status", 1)]),
        };
        let deferred =
            TxnRecoveryTurn { deferred: Some(Gate::ClusterVersion), ..TxnRecoveryTurn::default() };
        for t in [turn, deferred] {
            match round_trip(Response::TxnTurn(Box::new(t.clone()))) {
                Response::TxnTurn(back) => assert_eq!(*back, t),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut body = Vec::new();
            regionkv_engine::codec::put_field(&mut body, 1, &bytes);
            if let Ok(rec) = crate::proto::records::parse(&body, &[1]) {
                let f = rec.required(1, "body").unwrap();
                let _ = super::entries_of(&f);
                let _ = super::turn_of(&f);
                let _ = super::list_of(&f);
                let _ = super::recover_of(&f);
            }
        }
    }
}
