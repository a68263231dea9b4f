//! Tests of duplication's records of the client protocol (`dup.rs`): the records
//! the round-trip tests in `tests.rs` carry, and what a client may send.

use regionkv_raft::directory::{DirCmd, DirResult};

use super::{RemoteError, Request, Response, decode_request, encode_request};

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
