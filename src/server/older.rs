//! A node that answers transaction requests as a node of an older binary would (the
//! `#[doc(hidden)]` `NodeConfig::emulate_binary_max`), so that tests can run a client
//! of this binary against a cluster in the middle of an upgrade over TCP
//! (`tests/mixed_versions.rs`), and how a node of this binary confirms what it read.
//!
//! A binary that supports cluster versions up to 3 decodes a TXN request skipping the
//! tags it does not know (the staging flag, 16; a prewrite's session, 44) and refuses
//! the command kinds of version 4 (`ResolveMany`, `CheckLocks`, `OnePhase`,
//! `CollectVersions`) as `Malformed`, nothing done; it never sends a confirmation.

use regionkv_raft::{TxnCmd, TxnReply, version};

use crate::proto::{ErrorCode, RemoteError, Response};

/// `cmd` as a binary supporting cluster versions up to `max` decodes it, or the
/// refusal it answers.
pub(super) fn as_older(cmd: TxnCmd, max: u32) -> Result<TxnCmd, RemoteError> {
    if max >= version::TXN_V2.since {
        return Ok(cmd);
    }
    match cmd {
        TxnCmd::Prewrite { txn_id, primary_key, ops, ttl_ms, record, start_ts, .. } => {
            let record = record.map(|r| regionkv_raft::RecordInit { staging: false, ..r });
            Ok(TxnCmd::Prewrite {
                txn_id,
                primary_key,
                ops,
                ttl_ms,
                record,
                start_ts,
                session: None,
                min_commit: None,
            })
        }
        cmd if cmd.needs_v2() => Err(RemoteError::new(
            ErrorCode::Malformed,
            "malformed request: unknown transaction command kind; nothing was done",
        )),
        cmd => Ok(cmd),
    }
}

/// The answer to `cmd`'s `reply`: a staging prewrite's `Done` carries the confirmation
/// (the node read the flag, and its store proposed it or refused it whole).
pub(super) fn txn_answer(cmd: &TxnCmd) -> fn(TxnReply) -> Response {
    let staging = matches!(cmd, TxnCmd::Prewrite { record: Some(r), .. } if r.staging);
    if staging {
        |reply| match reply {
            TxnReply::Done => Response::TxnStaged,
            other => Response::Txn(other),
        }
    } else {
        Response::Txn
    }
}
