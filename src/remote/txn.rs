//! Transaction commands over the client protocol ([`RemoteStores`]' side of
//! [`Backend::txn`](crate::backend::Backend::txn) and `txn_ids`): a node from before
//! transactions answers `UnsupportedRequest`, which is `FeatureNotActive` here (see
//! ARCHITECTURE.md, "Transactions").

use std::time::{Duration, Instant};

use regionkv_engine::StoreId;
use regionkv_raft::directory::{DirCmd, DirResult};
use regionkv_raft::{TxnCmd, TxnReply, TxnRequest, version};

use super::{CALL_TIMEOUT, RemoteStores, answer};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::proto::{ErrorCode, RemoteError, Request, Response};

/// The refusal of a node that does not know transactions: its binary runs at most the
/// cluster version before them, so the cluster does too.
fn not_active() -> regionkv_raft::Error {
    regionkv_raft::Error::FeatureNotActive {
        feature: version::TXN.name,
        active: version::TXN.since - 1,
        needed: version::TXN.since,
    }
}

/// The refusal of a node that does not know the command kinds of cluster version 4
/// (it answered one `Malformed`: nothing was done).
fn not_active_v2() -> regionkv_raft::Error {
    regionkv_raft::Error::FeatureNotActive {
        feature: version::TXN_V2.name,
        active: version::TXN_V2.since - 1,
        needed: version::TXN_V2.since,
    }
}

impl RemoteStores {
    /// Sends one transaction command to `store`.
    ///
    /// What a node of an older binary answers is read for what it is: a command kind
    /// it does not know is refused `Malformed`, nothing done (`FeatureNotActive`
    /// here); a staging prewrite whose `Done` does not confirm the flag (answer tag
    /// 70) may have applied as a plain one, its record `Pending`: `TxnReply::Unstaged`
    /// (absent is unknown, never "staged").
    pub(super) fn send_txn(&self, store: StoreId, req: TxnRequest) {
        let TxnRequest { region, epoch, cmd, reply } = req;
        let staging = matches!(&cmd, TxnCmd::Prewrite { record: Some(r), .. } if r.staging);
        let new_kind = cmd.needs_v2() && !matches!(cmd, TxnCmd::Prewrite { .. });
        let done = move |r: std::result::Result<Response, RemoteError>| match r {
            Err(e) if e.code == ErrorCode::UnsupportedRequest => reply(Err(not_active())),
            Err(e) if e.code == ErrorCode::Malformed && new_kind => reply(Err(not_active_v2())),
            r => reply(answer(r, region, |resp| match resp {
                Response::TxnStaged => Some(TxnReply::Done),
                Response::Txn(TxnReply::Done) if staging => Some(TxnReply::Unstaged),
                Response::Txn(t) => Some(t),
                _ => None,
            })),
        };
        self.send(store, &Request::Txn { region, epoch, cmd }, Box::new(done));
    }

    /// Asks the nodes in turn (each asks the directory's leader) until one answers,
    /// retrying until `deadline` while they answer retryably; a node that does not
    /// know the request answers `UnsupportedRequest`, which is `unsupported()`.
    fn call_any_node(
        &self,
        request: &Request,
        deadline: Duration,
        unsupported: impl Fn() -> Error,
    ) -> Result<Response> {
        let start = Instant::now();
        let mut last = String::from("no node");
        // Bounded by `deadline`; every round that gets no answer sleeps.
        while start.elapsed() < deadline {
            if self.is_shut() {
                return Err(Error::Shutdown);
            }
            for store in self.store_ids() {
                let wait = deadline.saturating_sub(start.elapsed()).min(CALL_TIMEOUT * 4);
                match self.call(store, request, wait) {
                    Some(Ok(answer)) => return Ok(answer),
                    Some(Err(e)) if e.code == ErrorCode::UnsupportedRequest => {
                        return Err(unsupported());
                    }
                    Some(Err(e)) => {
                        let e = e.into_facade();
                        if !e.is_retryable() && !matches!(e, Error::Shutdown) {
                            return Err(e);
                        }
                        last = e.to_string();
                    }
                    None => last = format!("store {store} did not answer"),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Unavailable { waited: start.elapsed(), last })
    }

    /// A client's duplication command, through whichever node answers (it proposes
    /// it to the directory).
    pub(super) fn remote_dup_command(&self, cmd: &DirCmd, deadline: Duration) -> Result<DirResult> {
        let request = Request::DupCommand { cmd: cmd.clone() };
        let unsupported = || Error::FeatureNotActive {
            feature: version::DUP_V2.name.to_owned(),
            active: version::DUP_V2.since - 1,
            needed: version::DUP_V2.since,
        };
        match self.call_any_node(&request, deadline, unsupported)? {
            Response::Directory(result) => Ok(result),
            other => Err(Error::Protocol(format!("a duplication command answered {other:?}"))),
        }
    }

    /// `count` fresh transaction ids, through whichever node answers.
    pub(super) fn remote_txn_ids(&self, count: u64, deadline: Duration) -> Result<u64> {
        let unsupported = || not_active().into();
        match self.call_any_node(&Request::TxnIds { count }, deadline, unsupported)? {
            Response::Directory(DirResult::Ids { first, .. }) => Ok(first),
            other => Err(Error::Protocol(format!("txn ids answered {other:?}"))),
        }
    }
}
