//! Transaction commands over the client protocol ([`RemoteStores`]' side of
//! [`Backend::txn`](crate::backend::Backend::txn) and `txn_ids`): a node from before
//! transactions answers `UnsupportedRequest`, which is `FeatureNotActive` here (see
//! ARCHITECTURE.md, "Transactions").

use std::time::{Duration, Instant};

use regionkv_engine::StoreId;
use regionkv_raft::directory::DirResult;
use regionkv_raft::{TxnRequest, version};

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

impl RemoteStores {
    /// Sends one transaction command to `store`.
    pub(super) fn send_txn(&self, store: StoreId, req: TxnRequest) {
        let TxnRequest { region, epoch, cmd, reply } = req;
        let done = move |r: std::result::Result<Response, RemoteError>| match r {
            Err(e) if e.code == ErrorCode::UnsupportedRequest => reply(Err(not_active())),
            r => reply(answer(r, region, |resp| match resp {
                Response::Txn(t) => Some(t),
                _ => None,
            })),
        };
        self.send(store, &Request::Txn { region, epoch, cmd }, Box::new(done));
    }

    /// `count` fresh transaction ids: asks the nodes in turn (each asks the
    /// directory's leader) until one answers, retrying until `deadline`.
    pub(super) fn remote_txn_ids(&self, count: u64, deadline: Duration) -> Result<u64> {
        let start = Instant::now();
        let mut last = String::from("no node");
        // Bounded by `deadline`; every round that gets no answer sleeps.
        while start.elapsed() < deadline {
            if self.is_shut() {
                return Err(Error::Shutdown);
            }
            for store in self.store_ids() {
                let wait = deadline.saturating_sub(start.elapsed()).min(CALL_TIMEOUT * 4);
                match self.call(store, &Request::TxnIds { count }, wait) {
                    Some(Ok(Response::Directory(DirResult::Ids { first, .. }))) => {
                        return Ok(first);
                    }
                    Some(Ok(other)) => {
                        return Err(Error::Protocol(format!("txn ids answered {other:?}")));
                    }
                    Some(Err(e)) if e.code == ErrorCode::UnsupportedRequest => {
                        return Err(not_active().into());
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
}
