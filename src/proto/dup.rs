//! Duplication's records of the client protocol (since cluster version 7): the
//! duplications a node's replica of the directory holds.
//!
//! ```text
//!  REQUEST  80 duplications { }
//!           81 duplication command { the directory's encoding of `AddDup` or
//!              `AlterDup` } (answered as a directory command is)
//!  RESPONSE 80 duplications { 1 record* (the directory's encoding, format byte
//!              first) | 2 none (the node's store hosts no replica of the directory) }
//! ```
//!
//! A node from before duplication answers `UnsupportedRequest`.

use regionkv_engine::codec::{self, DecodeError, Field};
use regionkv_raft::directory::{self, DirCmd, DupRecord, dups};

use super::records::nested;

type D<T> = Result<T, DecodeError>;

/// The request's kind.
pub(super) const Q_DUPS: u16 = 80;
/// The answer's kind.
pub(super) const R_DUPS: u16 = 80;
/// A client's duplication command (a client may not send raw directory commands).
pub(super) const Q_DUP_COMMAND: u16 = 81;
const DR_RECORD: u16 = 1;
const DR_NONE: u16 = 2;

pub(super) fn put_request(o: &mut Vec<u8>) {
    codec::put_nested(o, Q_DUPS, |_| {});
}

pub(super) fn put_command(o: &mut Vec<u8>, cmd: &DirCmd) {
    let mut inner = Vec::new();
    directory::encode_cmd(&mut inner, cmd);
    codec::put_field(o, Q_DUP_COMMAND, &inner);
}

/// A duplication command: only `AddDup` and `AlterDup` are a client's.
pub(super) fn command_of(f: &Field<'_>) -> D<DirCmd> {
    match directory::decode_cmd(f.value).map_err(|e| e.shifted(f.offset))? {
        cmd @ (DirCmd::AddDup { .. } | DirCmd::AlterDup(_)) => Ok(cmd),
        _ => Err(DecodeError::new(f.offset, "not a client's duplication command")),
    }
}

pub(super) fn put_answer(o: &mut Vec<u8>, records: Option<&[DupRecord]>) {
    codec::put_nested(o, R_DUPS, |o| match records {
        Some(records) => {
            for r in records {
                codec::put_field(o, DR_RECORD, &dups::encode(r));
            }
        }
        None => codec::put_field(o, DR_NONE, &[]),
    });
}

pub(super) fn answer_of(f: &Field<'_>) -> D<Option<Vec<DupRecord>>> {
    let r = nested(f, &[DR_RECORD, DR_NONE])?;
    if r.optional(DR_NONE)?.is_some() {
        return Ok(None);
    }
    let records = r
        .repeated(DR_RECORD)
        .map(|f| dups::decode(f.value).map_err(|e| e.shifted(f.offset)))
        .collect::<D<Vec<_>>>()?;
    Ok(Some(records))
}
