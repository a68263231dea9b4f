//! Tests of duplication's records of the client protocol (`dup.rs`): the records
//! the round-trip tests in `tests.rs` carry, and what a client may send.

use regionkv_raft::directory::{DirCmd, DirResult};

use super::{
    RemoteError, Request, RequestError, Response, SinkAnswer, decode_request, decode_response,
    encode_request, encode_response,
};

/// A duplication record with every optional field set.
pub(super) fn dup_record() -> regionkv_raft::directory::DupRecord {
    use regionkv_raft::directory::{DupRecord, DupRemote, DupStatus};
    DupRecord {
        dup_id: 1000,
        status: DupStatus::Paused,
        incarnation: 3,
        start: b"a".to_vec(),
        end: None,
        remote: DupRemote {
            name: "10.0.0.9:7000,10.0.0.10:7000".into(),
            cluster_id: Some(77),
            secret: Some(b"a follower secret".to_vec()),
        },
        seed: false,
        broken: None,
        created_at_ms: Some(5),
    }
}

/// Duplication's requests.
pub(super) fn dup_requests() -> Vec<Request> {
    use regionkv_raft::directory::{BrokenReason, DupAlteration, DupStatus};
    let alteration = DupAlteration {
        dup_id: 1000,
        from: DupStatus::Log,
        to: DupStatus::Broken,
        reason: Some(BrokenReason::LogGap),
    };
    vec![
        Request::Dups,
        Request::Directory { cmd: DirCmd::AddDup { record: Box::new(dup_record()) } },
        Request::Directory { cmd: DirCmd::AlterDup(alteration) },
        Request::Directory { cmd: DirCmd::DropDup { dup_id: 1000 } },
        Request::DupCommand { cmd: DirCmd::AddDup { record: Box::new(dup_record()) } },
        Request::DupCommand { cmd: DirCmd::AlterDup(alteration) },
    ]
}

#[test]
fn a_client_duplication_command_is_only_an_add_or_an_alteration() {
    let req = Request::DupCommand { cmd: DirCmd::DropDup { dup_id: 1000 } };
    let payload = encode_request(3, &req);
    assert!(decode_request(&payload).is_err(), "a drop is the driver's, not a client's");
    let req = Request::DupCommand { cmd: DirCmd::AllocIds { count: 1 } };
    assert!(decode_request(&encode_request(4, &req)).is_err());
}

/// Duplication's answers.
pub(super) fn dup_responses() -> Vec<Result<Response, RemoteError>> {
    vec![
        Ok(Response::Dups(None)),
        Ok(Response::Dups(Some(Vec::new()))),
        Ok(Response::Dups(Some(vec![dup_record(), dup_record()]))),
        Ok(Response::Directory(DirResult::Dup { record: Some(Box::new(dup_record())) })),
        Ok(Response::Directory(DirResult::Dup { record: None })),
    ]
}

/// Sink commands of every kind, for follower region 7.
fn sink_cmds() -> Vec<regionkv_raft::sink::SinkEntryCmd> {
    use regionkv_raft::sink::{SinkCmd, SinkEntryCmd, SinkOp};
    let epoch = regionkv_engine::Epoch { version: 3, conf_ver: 2 };
    let of = |cmd| SinkEntryCmd { epoch, dup_id: 1000, incarnation: 2, source_region: 9, cmd };
    let op = |i, value: Option<&str>| SinkOp {
        source_index: i,
        key: format!("k{i}").into_bytes(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    vec![
        of(SinkCmd::Begin { seed_id: 77, start: b"a".to_vec(), end: None }),
        of(SinkCmd::Begin { seed_id: 78, start: Vec::new(), end: Some(b"m".to_vec()) }),
        of(SinkCmd::Chunk { seed_id: 77, puts: vec![(b"a1".to_vec(), b"v".to_vec())] }),
        of(SinkCmd::Chunk { seed_id: 77, puts: Vec::new() }),
        of(SinkCmd::End { seed_id: 77, seed_index: 40 }),
        of(SinkCmd::Apply {
            start: b"a".to_vec(),
            end: Some(b"z".to_vec()),
            upto: 45,
            ops: vec![op(41, Some("x")), op(42, None), op(43, Some(""))],
        }),
        of(SinkCmd::Apply { start: Vec::new(), end: None, upto: 50, ops: Vec::new() }),
        of(SinkCmd::Promote),
    ]
}

/// The sink's requests (tag 82).
pub(super) fn sink_requests() -> Vec<Request> {
    let region = regionkv_engine::RegionId(7);
    sink_cmds().into_iter().map(|cmd| Request::Sink { region, cmd }).collect()
}

/// The sink's answers (tag 83): applied with and without an entry, refused.
pub(super) fn sink_responses() -> Vec<Result<Response, RemoteError>> {
    use regionkv_engine::sink::{SinkEntry, SinkPiece};
    use regionkv_raft::sink::{SinkRefusal, SinkResult};
    let entry = SinkEntry {
        dup_id: 1000,
        source_region: 9,
        incarnation: 2,
        seed_id: None,
        pieces: vec![SinkPiece { start: b"a".to_vec(), end: Some(b"m".to_vec()), mark: 45 }],
    };
    let applied = |entry| SinkResult { index: 12, applied_ops: 3, skipped_ops: 1, entry };
    let refused =
        |reason| SinkAnswer::Refused { region: regionkv_engine::RegionId(7), dup_id: 1000, reason };
    vec![
        Ok(Response::Sink(SinkAnswer::Applied(applied(Some(entry))))),
        Ok(Response::Sink(SinkAnswer::Applied(applied(None)))),
        Ok(Response::Sink(refused(SinkRefusal::AlreadySeeded))),
        Ok(Response::Sink(refused(SinkRefusal::Frozen))),
        Ok(Response::Sink(refused(SinkRefusal::Unspecified))),
    ]
}

#[test]
fn sink_requests_and_answers_round_trip() {
    for (i, req) in sink_requests().into_iter().enumerate() {
        let payload = encode_request(i as u64, &req);
        let (id, decoded) = decode_request(&payload).unwrap();
        assert_eq!((id, decoded), (i as u64, req));
    }
    for (i, answer) in sink_responses().into_iter().enumerate() {
        let payload = encode_response(i as u64, &answer);
        assert_eq!(decode_response(&payload).unwrap(), (i as u64, answer));
    }
}

#[test]
fn a_truncated_sink_record_is_a_decode_error() {
    for req in sink_requests() {
        let payload = encode_request(5, &req);
        for cut in 1..payload.len() {
            // The id (and the body's header) may survive the cut: either way the
            // request is refused whole, never decoded as another one.
            assert!(
                matches!(
                    decode_request(&payload[..cut]),
                    Err(RequestError::Malformed { .. } | RequestError::Unsupported { .. })
                ),
                "{req:?} cut at {cut}"
            );
        }
    }
    for answer in sink_responses() {
        let payload = encode_response(5, &answer);
        for cut in 1..payload.len() {
            assert!(decode_response(&payload[..cut]).is_err(), "{answer:?} cut at {cut}");
        }
    }
}

/// The request record of `req` (a sink request) with `extra` appended inside it.
fn sink_request_with(extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    use regionkv_engine::codec;
    let Request::Sink { region, cmd } = sink_requests().remove(4) else { unreachable!() };
    let mut out = Vec::new();
    codec::put_u64(&mut out, 1, 9);
    codec::put_nested(&mut out, 82, |o| {
        codec::put_u64(o, 2, region.0);
        codec::put_field(o, 3, &regionkv_raft::sink::encode_entry_cmd(&cmd));
        extra(o);
    });
    out
}

#[test]
fn a_sink_record_skips_unknown_tags_and_refuses_other_formats() {
    use regionkv_engine::codec;
    // An unknown tag inside the record (a newer writer's optional field) is skipped.
    let newer = sink_request_with(|o| {
        codec::put_u64(o, 1, 1);
        codec::put_field(o, 99, b"later");
    });
    let (id, decoded) = decode_request(&newer).unwrap();
    assert_eq!((id, decoded), (9, sink_requests().remove(4)));
    // No format, or one this binary does not read: refused, nothing decoded.
    let unformatted = sink_request_with(|_| {});
    assert!(matches!(decode_request(&unformatted), Err(RequestError::Malformed { .. })));
    let format_2 = sink_request_with(|o| codec::put_u64(o, 1, 2));
    assert!(matches!(decode_request(&format_2), Err(RequestError::Malformed { .. })));
    // An answer whose refusal code this binary does not know is `Unspecified`.
    let mut answer = Vec::new();
    codec::put_u64(&mut answer, 1, 4);
    codec::put_nested(&mut answer, 83, |o| {
        codec::put_u64(o, 1, 1);
        codec::put_nested(o, 3, |o| {
            codec::put_u64(o, 1, 7);
            codec::put_u64(o, 2, 1000);
            codec::put_u64(o, 3, 4242);
        });
    });
    let (_, decoded) = decode_response(&answer).unwrap();
    let refused = SinkAnswer::Refused {
        region: regionkv_engine::RegionId(7),
        dup_id: 1000,
        reason: regionkv_raft::sink::SinkRefusal::Unspecified,
    };
    assert_eq!(decoded, Ok(Response::Sink(refused)));
}

#[test]
fn a_node_from_before_the_sink_sees_an_unknown_request_kind() {
    // A binary without tag 82 skips it (unknown tags are skipped) and finds no body:
    // it answers `UnsupportedRequest`. Here: a body tag past every known one.
    let mut payload = Vec::new();
    regionkv_engine::codec::put_u64(&mut payload, 1, 3);
    regionkv_engine::codec::put_nested(&mut payload, 999, |_| {});
    assert!(matches!(decode_request(&payload), Err(RequestError::Unsupported { id: 3 })));
}

#[test]
fn standby_and_fence_refusals_cross_the_wire_typed() {
    // Before their codes, both crossed as `StoreFailed` and came back `Internal`: a
    // remote client could only match on the message.
    use regionkv_engine::RegionId;
    use regionkv_raft::Error as E;
    let errors = [
        E::StandbyReadOnly { region: RegionId(7), dup_id: 3 },
        E::DupFenced { region: RegionId(8), dup_id: 4 },
    ];
    for e in errors {
        let wire = encode_response(1, &Err(RemoteError::from(&e)));
        let (_, back) = decode_response(&wire).unwrap();
        let back = back.unwrap_err().into_raft();
        assert_eq!(format!("{back:?}"), format!("{e:?}"));
        assert_eq!(back.is_retryable(), e.is_retryable());
    }
}
