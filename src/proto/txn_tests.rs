//! Unit tests of the transaction records of the client protocol (`txn.rs`): every
//! command, answer and refusal round-trips; absent optional fields are unknown
//! (never an expired lock, never a floor); unknown kinds are refused or frozen, never
//! guessed; damage never panics; the golden files hold what this binary writes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use regionkv_engine::codec;
use regionkv_engine::{Epoch, RegionId, SessionId, StoreId};
use regionkv_raft::directory::DirResult;
use regionkv_raft::{Op, RecordInit, TxnCmd, TxnReply, TxnState, WriteSession};

use super::error::E_CODE;
use super::request::Q_ID;
use super::response::{R_ERROR, R_ID};
use super::*;
use crate::Error;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One of each command kind (both prewrites: with and without the record).
fn commands() -> Vec<TxnCmd> {
    vec![
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 7,
            primary_key: b("a"),
            ops: vec![Op::Put { key: b("a"), value: b("1") }, Op::Delete { key: b("b") }],
            ttl_ms: 3_000,
            record: Some(RecordInit {
                participants: vec![b("a"), b("b"), b("x")],
                coordinator: Some(StoreId(2)),
                staging: false,
            }),
            start_ts: None,
            session: None,
        },
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 7,
            primary_key: b("a"),
            ops: vec![Op::Put { key: b("x"), value: Bytes::new() }],
            ttl_ms: 3_000,
            record: None,
            start_ts: None,
            session: None,
        },
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 8,
            primary_key: b("c"),
            ops: vec![Op::Put { key: b("c"), value: b("3") }],
            ttl_ms: 10,
            record: Some(RecordInit {
                participants: vec![b("c")],
                coordinator: None,
                staging: false,
            }),
            start_ts: None,
            session: None,
        },
        TxnCmd::Commit { txn_id: 7, primary_key: b("a"), commit_ts: None },
        TxnCmd::Resolve { txn_id: 7, keys: vec![b("x"), b("y")], commit: true, commit_ts: None },
        TxnCmd::Resolve { txn_id: 9, keys: vec![b("z")], commit: false, commit_ts: None },
        TxnCmd::CheckStatus { txn_id: 7, primary_key: b("a"), abort_if_expired: true },
        TxnCmd::CheckStatus { txn_id: 7, primary_key: b("a"), abort_if_expired: false },
        TxnCmd::Heartbeat { txn_id: 7, primary_key: b("a"), ttl_ms: 5_000 },
        TxnCmd::Forget { records: vec![(b("a"), 7), (b("c"), 8)], new_floor: 5 },
    ]
}

fn requests() -> Vec<Request> {
    let epoch = Epoch { version: 3, conf_ver: 2 };
    let mut out: Vec<Request> = commands()
        .into_iter()
        .map(|cmd| Request::Txn { region: RegionId(4), epoch, cmd })
        .collect();
    out.push(Request::TxnIds { count: 256 });
    out
}

fn answers() -> Vec<Result<Response, RemoteError>> {
    let states = [
        TxnState::Pending { expires_at_ms: 1_700_000_003_000 },
        TxnState::Committed { commit_ts: None },
        TxnState::Aborted,
        TxnState::NotFound { floor: 12 },
        TxnState::Frozen { reason: "too_new".into() },
    ];
    let mut out = vec![Ok(Response::Txn(TxnReply::Done))];
    out.extend(states.into_iter().map(|s| Ok(Response::Txn(TxnReply::Status(s)))));
    out.push(Ok(Response::Directory(DirResult::Ids { first: 1_000, count: 256 })));
    out.extend(refusals().iter().map(|e| Err(RemoteError::from(e))));
    out
}

/// The four transaction refusals, every field set.
fn refusals() -> Vec<regionkv_raft::Error> {
    use regionkv_raft::Error as E;
    vec![
        E::Locked {
            key: b("k"),
            txn_id: 7,
            primary_key: b("a"),
            expires_at_ms: 1_700_000_003_000,
            lock_start_ts: None,
        },
        E::TxnAborted { txn_id: 7 },
        E::TxnNotFound { txn_id: 7, floor: 3 },
        E::TxnTooOld { txn_id: 2, floor: 3 },
    ]
}

#[test]
fn every_command_answer_and_refusal_round_trips() {
    for (i, req) in requests().into_iter().enumerate() {
        let (id, back) = decode_request(&encode_request(i as u64, &req)).unwrap();
        assert_eq!((id, &back), (i as u64, &req));
    }
    for (i, answer) in answers().into_iter().enumerate() {
        let (id, back) = decode_response(&encode_response(i as u64, &answer)).unwrap();
        assert_eq!((id, &back), (i as u64, &answer));
    }
    for e in refusals() {
        let (_, back) = decode_response(&encode_response(1, &Err(RemoteError::from(&e)))).unwrap();
        let raft = back.unwrap_err().into_raft();
        assert_eq!(format!("{raft:?}"), format!("{e:?}"));
        assert!(!raft.is_retryable(), "a transaction refusal is the caller's to handle");
    }
}

#[test]
fn an_aborted_transaction_is_the_facade_s_retryable_txn_aborted() {
    let e = Error::from(regionkv_raft::Error::TxnAborted { txn_id: 7 });
    assert!(matches!(e, Error::TxnAborted { txn_id: 7 }) && e.is_retryable());
    let conflict = Error::Conflict { key: b("k"), txn_id: 7 };
    assert!(conflict.is_retryable());
    assert!(!Error::Indeterminate { txn_id: 7, primary_key: b("a") }.is_retryable());
}

/// An error record with `code` and the given transaction fields only.
fn bare_error(code: ErrorCode, fields: impl FnOnce(&mut Vec<u8>)) -> RemoteError {
    let mut out = RemoteError::new(code, "fields left out");
    out.txn = None;
    let mut payload = Vec::new();
    codec::put_u64(&mut payload, R_ID, 1);
    codec::put_nested(&mut payload, R_ERROR, |o| {
        out.encode(o);
        fields(o);
    });
    decode_response(&payload).unwrap().1.unwrap_err()
}

#[test]
fn absent_optional_fields_are_unknown_never_an_expired_lock_or_a_floor() {
    use regionkv_raft::Error as E;
    // A lock without its expiry: never expired.
    let locked = bare_error(ErrorCode::Locked, |o| {
        codec::put_field(o, super::txn::E_KEY, b"k");
        codec::put_u64(o, super::txn::E_TXN_ID, 7);
        codec::put_field(o, super::txn::E_PRIMARY_KEY, b"a");
    });
    assert!(matches!(locked.into_raft(), E::Locked { expires_at_ms: u64::MAX, txn_id: 7, .. }));
    // Without its floor: 0, nothing below it.
    let not_found = bare_error(ErrorCode::TxnNotFound, |o| {
        codec::put_u64(o, super::txn::E_TXN_ID, 7);
    });
    assert!(matches!(not_found.into_raft(), E::TxnNotFound { txn_id: 7, floor: 0 }));
    // Without the fields it cannot be told by: malformed, never made up.
    let no_key = bare_error(ErrorCode::Locked, |o| codec::put_u64(o, super::txn::E_TXN_ID, 7));
    assert!(matches!(no_key.into_raft(), E::Malformed(_)));
    let no_id = bare_error(ErrorCode::TxnAborted, |_| {});
    assert!(matches!(no_id.into_raft(), E::Malformed(_)));
    // A pending state without its expiry: never expired either.
    let mut payload = Vec::new();
    codec::put_u64(&mut payload, R_ID, 2);
    codec::put_nested(&mut payload, 51, |o| {
        codec::put_u64(o, 1, 2);
        codec::put_nested(o, 2, |o| codec::put_u64(o, 1, 1));
    });
    let (_, back) = decode_response(&payload).unwrap();
    assert_eq!(
        back.unwrap(),
        Response::Txn(TxnReply::Status(TxnState::Pending { expires_at_ms: u64::MAX }))
    );
}

#[test]
fn unknown_kinds_are_refused_or_frozen_never_guessed() {
    // A command kind from the future: the request is malformed (nothing is done).
    let mut payload = Vec::new();
    codec::put_u64(&mut payload, Q_ID, 3);
    codec::put_nested(&mut payload, 33, |o| {
        codec::put_u64(o, 1, 4);
        codec::put_nested(o, 2, |o| {
            codec::put_u64(o, 1, 1);
            codec::put_u64(o, 2, 1);
        });
        codec::put_u64(o, 3, 99);
    });
    assert!(matches!(decode_request(&payload), Err(RequestError::Malformed { id: Some(3), .. })));
    // A state from the future (or 0): frozen, neither committed nor aborted.
    for kind in [0, 99] {
        let mut payload = Vec::new();
        codec::put_u64(&mut payload, R_ID, 2);
        codec::put_nested(&mut payload, 51, |o| {
            codec::put_u64(o, 1, 2);
            codec::put_nested(o, 2, |o| codec::put_u64(o, 1, kind));
        });
        let (_, back) = decode_response(&payload).unwrap();
        assert!(matches!(back.unwrap(), Response::Txn(TxnReply::Status(TxnState::Frozen { .. }))));
    }
    // An error code from the future is unspecified (an older binary's view of ours).
    let mut payload = Vec::new();
    codec::put_u64(&mut payload, R_ID, 9);
    codec::put_nested(&mut payload, R_ERROR, |o| codec::put_u64(o, E_CODE, 99));
    assert_eq!(decode_response(&payload).unwrap().1.unwrap_err().code, ErrorCode::Unspecified);
}

#[test]
fn damaged_transaction_records_never_panic() {
    let mut payloads: Vec<Vec<u8>> =
        requests().iter().enumerate().map(|(i, r)| encode_request(i as u64, r)).collect();
    let answers: Vec<Vec<u8>> =
        answers().iter().enumerate().map(|(i, a)| encode_response(i as u64, a)).collect();
    for payload in payloads.iter_mut().chain(answers.clone().iter_mut()) {
        for at in 0..payload.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = payload.clone();
                damaged[at] ^= bit;
                let _ = decode_request(&damaged);
                let _ = decode_response(&damaged);
            }
            let _ = decode_request(&payload[..at]);
            let _ = decode_response(&payload[..at]);
        }
    }
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto/golden").join(name)
}

/// Payloads, each after its length (u32, little endian).
fn framed(payloads: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&payload);
    }
    out
}

fn unframed(bytes: &[u8]) -> Vec<&[u8]> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let (payload, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
        out.push(payload);
        rest = tail;
    }
    out
}

fn golden_requests() -> Vec<u8> {
    framed(requests().iter().enumerate().map(|(i, r)| encode_request(i as u64, r)))
}

fn golden_answers() -> Vec<u8> {
    framed(answers().iter().enumerate().map(|(i, a)| encode_response(i as u64, a)))
}

#[test]
fn the_golden_transaction_records_decode_and_are_what_this_binary_writes() {
    let reqs = std::fs::read(golden("txn-requests-v1.bin")).expect("txn-requests-v1.bin");
    let decoded: Vec<Request> =
        unframed(&reqs).into_iter().map(|p| decode_request(p).unwrap().1).collect();
    assert_eq!(decoded, requests());
    assert_eq!(reqs, golden_requests(), "this binary writes the TXN requests as it did");
    let answers_file = std::fs::read(golden("txn-answers-v1.bin")).expect("txn-answers-v1.bin");
    let decoded: Vec<Result<Response, RemoteError>> =
        unframed(&answers_file).into_iter().map(|p| decode_response(p).unwrap().1).collect();
    assert_eq!(decoded, answers());
    assert_eq!(answers_file, golden_answers(), "this binary writes the TXN answers as it did");
}

#[test]
#[ignore = "writes the golden files of the transaction records (only if they are new)"]
fn regenerate_txn_golden() {
    std::fs::write(golden("txn-requests-v1.bin"), golden_requests()).unwrap();
    std::fs::write(golden("txn-answers-v1.bin"), golden_answers()).unwrap();
}

/// The snapshot-isolation fields (optional, absent from the v1 golden records above):
/// each round-trips, and a refusal keeps its timestamps.
#[test]
fn snapshot_isolation_fields_round_trip() {
    use regionkv_raft::Error as E;
    let epoch = Epoch { version: 3, conf_ver: 2 };
    let cmds = [
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 7,
            primary_key: b("a"),
            ops: vec![Op::Put { key: b("a"), value: b("1") }],
            ttl_ms: 3_000,
            record: None,
            start_ts: Some(41),
            session: None,
        },
        TxnCmd::Commit { txn_id: 7, primary_key: b("a"), commit_ts: Some(45) },
        TxnCmd::Resolve { txn_id: 7, keys: vec![b("x")], commit: true, commit_ts: Some(45) },
    ];
    for cmd in cmds {
        let request = Request::Txn { region: RegionId(4), epoch, cmd };
        let (_, back) = decode_request(&encode_request(1, &request)).unwrap();
        assert_eq!(back, request);
    }
    let state = TxnState::Committed { commit_ts: Some(45) };
    let answer: Result<Response, RemoteError> = Ok(Response::Txn(TxnReply::Status(state)));
    let (_, back) = decode_response(&encode_response(2, &answer)).unwrap();
    assert_eq!(back, answer);
    let refusals = [
        E::Locked {
            key: b("k"),
            txn_id: 7,
            primary_key: b("a"),
            expires_at_ms: 1_700_000_003_000,
            lock_start_ts: Some(40),
        },
        E::WriteConflict { key: b("k"), start_ts: 40, conflict_ts: 44 },
    ];
    for e in refusals {
        let remote = RemoteError::from(&e);
        let (_, back) = decode_response(&encode_response(3, &Err(remote))).unwrap();
        assert_eq!(format!("{:?}", back.unwrap_err().into_raft()), format!("{e:?}"));
    }
}

/// Async commit's requests (a staging prewrite, `ResolveMany`, `CheckLocks`) and
/// answers (`Checked`, `Resolved`, the `Staging` state).
fn async_commit_records() -> (Vec<Request>, Vec<Result<Response, RemoteError>>) {
    let epoch = Epoch { version: 3, conf_ver: 2 };
    let cmds = [
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 7,
            primary_key: b("a"),
            ops: vec![Op::Put { key: b("a"), value: b("1") }],
            ttl_ms: 3_000,
            record: Some(RecordInit {
                participants: vec![b("a"), b("z")],
                coordinator: None,
                staging: true,
            }),
            start_ts: None,
            session: None,
        },
        TxnCmd::ResolveMany {
            items: vec![
                regionkv_raft::txn::ResolveItem {
                    txn_id: 7,
                    primary_key: Some(b("a")),
                    keys: vec![],
                    commit: true,
                    commit_ts: None,
                },
                regionkv_raft::txn::ResolveItem {
                    txn_id: 8,
                    primary_key: None,
                    keys: vec![b("y"), b("z")],
                    commit: false,
                    commit_ts: Some(9),
                },
            ],
        },
        TxnCmd::CheckLocks { txn_id: 7, keys: vec![b("z")] },
    ];
    let requests =
        cmds.into_iter().map(|cmd| Request::Txn { region: RegionId(4), epoch, cmd }).collect();
    let staging =
        TxnState::Staging { expires_at_ms: 1_700_000_003_000, participants: vec![b("a"), b("z")] };
    let answers = [
        TxnReply::Checked { all_locked: false, min_commit_ts: None },
        TxnReply::Resolved(vec![Some(TxnState::Committed { commit_ts: None }), None]),
        TxnReply::Status(staging),
    ]
    .into_iter()
    .map(|reply| Ok(Response::Txn(reply)))
    .collect();
    (requests, answers)
}

fn golden_async_commit() -> Vec<u8> {
    let (requests, answers) = async_commit_records();
    let requests = requests.iter().enumerate().map(|(i, r)| encode_request(i as u64, r));
    let answers = answers.iter().enumerate().map(|(i, a)| encode_response(i as u64, a));
    framed(requests.chain(answers))
}

#[test]
fn async_commit_records_round_trip_and_match_their_golden_file() {
    let (requests, answers) = async_commit_records();
    for request in &requests {
        let (_, back) = decode_request(&encode_request(1, request)).unwrap();
        assert_eq!(&back, request);
    }
    for answer in &answers {
        let (_, back) = decode_response(&encode_response(2, answer)).unwrap();
        assert_eq!(&back, answer);
    }
    let file = std::fs::read(golden("txn-async-v1.bin")).expect("txn-async-v1.bin");
    assert_eq!(
        file,
        golden_async_commit(),
        "this binary writes the async-commit records as it did"
    );
}

#[test]
#[ignore = "writes the golden file of async commit's records (only if it is new)"]
fn regenerate_async_commit_golden() {
    std::fs::write(golden("txn-async-v1.bin"), golden_async_commit()).unwrap();
}

/// The one-phase commit (kind 9) with and without its synced timestamp, its answer and
/// the `ReadTsUnsynced` refusal: what this binary writes, pinned in
/// `txn-one-phase-v1.bin`, and each round-trips.
fn one_phase_payloads() -> Vec<Vec<u8>> {
    use regionkv_raft::{Error as E, SyncedTs};
    let epoch = Epoch { version: 3, conf_ver: 2 };
    let ops = vec![Op::Put { key: b("a"), value: b("1") }, Op::Delete { key: b("b") }];
    let requests = [None, Some(SyncedTs { term: 6, ts: 90 })].map(|synced| Request::Txn {
        region: RegionId(4),
        epoch,
        cmd: TxnCmd::OnePhase {
            start_ts: 41,
            ops: ops.clone(),
            commit_ts: None,
            synced,
            session: None,
        },
    });
    let mut out: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| {
            let payload = encode_request(1, r);
            assert_eq!(&decode_request(&payload).unwrap().1, r);
            payload
        })
        .collect();
    let state = TxnState::Committed { commit_ts: Some(91) };
    let answer: Result<Response, RemoteError> = Ok(Response::Txn(TxnReply::Status(state)));
    let refusal = E::ReadTsUnsynced { region: RegionId(4), term: 6 };
    let refused: Result<Response, RemoteError> = Err(RemoteError::from(&refusal));
    for a in [answer, refused] {
        let payload = encode_response(2, &a);
        let back = decode_response(&payload).unwrap().1;
        match (back, &a) {
            (Err(back), Err(_)) => {
                assert_eq!(format!("{:?}", back.into_raft()), format!("{refusal:?}"));
            }
            (back, a) => assert_eq!(&back, a),
        }
        out.push(payload);
    }
    out
}

#[test]
fn the_one_phase_commit_and_its_refusal_round_trip_as_the_golden_file_says() {
    let golden_file = std::fs::read(golden("txn-one-phase-v1.bin")).expect("txn-one-phase-v1.bin");
    assert_eq!(golden_file, framed(one_phase_payloads()), "this binary writes them as it did");
}

#[test]
#[ignore = "writes the golden file of the one-phase commit (only if it is new)"]
fn regenerate_one_phase_golden() {
    std::fs::write(golden("txn-one-phase-v1.bin"), framed(one_phase_payloads())).unwrap();
}

#[test]
fn version_gc_records_round_trip_and_snapshot_too_old_reaches_the_facade() {
    let epoch = Epoch { version: 3, conf_ver: 2 };
    let chunk = |keys: Vec<Bytes>| Request::Txn {
        region: RegionId(4),
        epoch,
        cmd: TxnCmd::CollectVersions { safepoint: 9 << 18, keys },
    };
    let raise = regionkv_raft::directory::DirCmd::SetGcSafepoint { safepoint: 5 << 18 };
    for (i, req) in
        [chunk(vec![b("k1"), b("k2")]), chunk(Vec::new()), Request::Directory { cmd: raise }]
            .into_iter()
            .enumerate()
    {
        let (id, back) = decode_request(&encode_request(i as u64, &req)).unwrap();
        assert_eq!((id, &back), (i as u64, &req));
    }
    let held = Ok(Response::Directory(DirResult::GcSafepoint { safepoint: 5 << 18 }));
    assert_eq!(decode_response(&encode_response(3, &held)).unwrap(), (3, held));
    // The refusal crosses the wire with both fields, and is the facade's own error,
    // not retryable (the transaction starts again).
    let e = regionkv_raft::Error::SnapshotTooOld { read_ts: 4, floor: 5 };
    let (_, back) = decode_response(&encode_response(1, &Err(RemoteError::from(&e)))).unwrap();
    let raft = back.unwrap_err().into_raft();
    assert_eq!(format!("{raft:?}"), format!("{e:?}"));
    assert!(!raft.is_retryable());
    let facade = Error::from(raft);
    assert!(matches!(facade, Error::SnapshotTooOld { read_ts: 4, floor: 5 }));
    assert!(!facade.is_retryable());
}

/// A prewrite numbered in its client session (field 44 of the TXN request, cluster
/// version 4), on the primary's region and on another.
fn session_requests() -> Vec<Request> {
    let epoch = Epoch { version: 3, conf_ver: 2 };
    let session = |seq| Some(WriteSession { id: SessionId(0x5e55_1d00_0000_0007), seq });
    let cmds = [
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 7,
            primary_key: b("a"),
            ops: vec![Op::Put { key: b("a"), value: b("1") }],
            ttl_ms: 3_000,
            record: Some(RecordInit {
                participants: vec![b("a"), b("x")],
                coordinator: None,
                staging: true,
            }),
            start_ts: None,
            session: session(1),
        },
        TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 7,
            primary_key: b("a"),
            ops: vec![Op::Delete { key: b("x") }],
            ttl_ms: 3_000,
            record: None,
            start_ts: None,
            session: session(u64::MAX),
        },
    ];
    cmds.into_iter().map(|cmd| Request::Txn { region: RegionId(4), epoch, cmd }).collect()
}

fn golden_session() -> Vec<u8> {
    framed(session_requests().iter().enumerate().map(|(i, r)| encode_request(i as u64, r)))
}

#[test]
fn a_prewrite_session_round_trips_and_matches_its_golden_file() {
    for request in session_requests() {
        let (_, back) = decode_request(&encode_request(1, &request)).unwrap();
        assert_eq!(back, request);
        // Without its session the prewrite is what it was before sessions: the field
        // is absent, and a decoder that skips it reads the same command.
        let Request::Txn { region, epoch, cmd } = request else { unreachable!() };
        let TxnCmd::Prewrite { txn_id, primary_key, ops, ttl_ms, record, start_ts, .. } = cmd
        else {
            unreachable!()
        };
        let cmd = TxnCmd::Prewrite {
            min_commit: None,
            txn_id,
            primary_key,
            ops,
            ttl_ms,
            record,
            start_ts,
            session: None,
        };
        let older = Request::Txn { region, epoch, cmd };
        let (_, back) = decode_request(&encode_request(1, &older)).unwrap();
        assert_eq!(back, older);
    }
    let file = std::fs::read(golden("txn-session-v1.bin")).expect("txn-session-v1.bin");
    assert_eq!(file, golden_session(), "this binary writes numbered prewrites as it did");
}

#[test]
#[ignore = "writes the golden file of numbered prewrites (only if it is new)"]
fn regenerate_session_golden() {
    std::fs::write(golden("txn-session-v1.bin"), golden_session()).unwrap();
}

#[test]
fn a_numbered_one_phase_commit_round_trips() {
    let session = Some(WriteSession { id: SessionId(0x5e55_1d00_0000_0009), seq: 3 });
    let request = Request::Txn {
        region: RegionId(4),
        epoch: Epoch { version: 3, conf_ver: 2 },
        cmd: TxnCmd::OnePhase {
            start_ts: 41,
            ops: vec![Op::Put { key: b("a"), value: b("1") }],
            commit_ts: None,
            synced: Some(regionkv_raft::SyncedTs { term: 6, ts: 90 }),
            session,
        },
    };
    let (_, back) = decode_request(&encode_request(1, &request)).unwrap();
    assert_eq!(back, request);
}

#[test]
fn a_staging_prewrite_is_confirmed_by_tag_70_and_an_answer_without_it_is_a_plain_done() {
    let (_, back) = decode_response(&encode_response(3, &Ok(Response::TxnStaged))).unwrap();
    assert_eq!(back, Ok(Response::TxnStaged));
    // An older node's `Done` (no tag 70), and what `Unstaged` encodes to: a plain
    // `Done`, never read as a confirmation.
    for reply in [TxnReply::Done, TxnReply::Unstaged] {
        let (_, back) = decode_response(&encode_response(3, &Ok(Response::Txn(reply)))).unwrap();
        assert_eq!(back, Ok(Response::Txn(TxnReply::Done)));
    }
    // A client of an older binary skips the tag: the confirmation is a `Done` to it.
    let bytes = encode_response(3, &Ok(Response::TxnStaged));
    let plain = encode_response(3, &Ok(Response::Txn(TxnReply::Done)));
    assert!(bytes.len() > plain.len(), "the confirmation is one more field");
}

#[test]
fn an_async_snapshot_prewrite_and_its_answers_round_trip() {
    let asked = regionkv_raft::MinCommit {
        ts: None,
        synced: Some(regionkv_raft::SyncedTs { term: 6, ts: 90 }),
    };
    let request = Request::Txn {
        region: RegionId(4),
        epoch: Epoch { version: 3, conf_ver: 2 },
        cmd: TxnCmd::Prewrite {
            txn_id: 9,
            primary_key: b("a"),
            ops: vec![Op::Put { key: b("a"), value: b("1") }],
            ttl_ms: 3_000,
            record: None,
            start_ts: Some(41),
            session: None,
            min_commit: Some(asked),
        },
    };
    let (_, back) = decode_request(&encode_request(1, &request)).unwrap();
    assert_eq!(back, request);
    for reply in [
        TxnReply::Prewritten { min_commit_ts: 301 },
        TxnReply::Checked { all_locked: true, min_commit_ts: Some(301) },
        TxnReply::Checked { all_locked: true, min_commit_ts: None },
    ] {
        let answer = Ok(Response::Txn(reply));
        let (_, back) = decode_response(&encode_response(1, &answer)).unwrap();
        assert_eq!(back, answer);
    }
}

#[test]
fn a_raw_read_has_the_bytes_of_earlier_binaries_and_they_skip_a_read_timestamp() {
    // Earlier binaries: region, epoch, the get; a transaction's read timestamp is an
    // optional tag after them (absent: a raw read). An earlier node's parse of the read
    // record skips it (`records::parse` skips unknown tags) and serves the read raw.
    let epoch = Epoch { version: 2, conf_ver: 1 };
    let mut old = Vec::new();
    codec::put_u64(&mut old, Q_ID, 3);
    codec::put_nested(&mut old, 11, |o| {
        codec::put_u64(o, 1, 4);
        codec::put_nested(o, 2, |o| {
            codec::put_u64(o, 1, 2);
            codec::put_u64(o, 2, 1);
        });
        codec::put_nested(o, 3, |o| codec::put_field(o, 1, b"k"));
    });
    let raw = Request::Read {
        region: RegionId(4),
        epoch,
        query: Query::Get { key: "k".into(), read_ts: None },
    };
    assert_eq!(encode_request(3, &raw), old);
    assert_eq!(decode_request(&old).unwrap(), (3, raw));
    let at = Request::Read {
        region: RegionId(4),
        epoch,
        query: Query::Get { key: "k".into(), read_ts: Some(99) },
    };
    let new = encode_request(3, &at);
    assert_eq!(new.len(), old.len() + codec::FIELD_HEADER_LEN + 8, "one field more, after");
    assert_eq!(decode_request(&new).unwrap(), (3, at));
    let scan = Request::Read {
        region: RegionId(4),
        epoch,
        query: Query::Scan { start: "a".into(), end: None, limit: 5, read_ts: Some(1 << 40) },
    };
    assert_eq!(decode_request(&encode_request(4, &scan)).unwrap(), (4, scan));
}
