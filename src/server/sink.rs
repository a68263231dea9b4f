//! A duplication's sink command from another cluster's shipper (client request 82,
//! `proto/sink.rs`): proposed on this node's store's replica of the follower region
//! exactly as a cluster in process takes it (`Store::sink`), answered once applied.
//! A refusal is an answer (83 refused); a routing error is the protocol's error
//! answer, so the shipper re-routes. A node emulating a binary from before duplication
//! (below cluster version 7) answers `UnsupportedRequest`, as that binary would.

use regionkv_engine::RegionId;
use regionkv_raft::Store;
use regionkv_raft::sink::{SinkEntryCmd, SinkRequest};
use regionkv_raft::version;

use super::{ClientService, Responder};
use crate::proto::{ErrorCode, RemoteError, Response, SinkAnswer};

impl ClientService {
    /// Runs a sink command on `store`'s replica of `region` (its leader).
    pub(super) fn sink(&self, store: &Store, region: RegionId, cmd: SinkEntryCmd, r: Responder) {
        if self.older.is_some_and(|max| max < version::DUP_V2.since) {
            let message = "unsupported request: a node of this version does not know it";
            r.send(Err(RemoteError::new(ErrorCode::UnsupportedRequest, message)));
            return;
        }
        let reply = Box::new(move |result| {
            let answer = SinkAnswer::of(result)
                .map(Response::Sink)
                .map_err(|e: regionkv_raft::Error| RemoteError::from(&e));
            r.send(answer);
        });
        store.sink(SinkRequest { region, cmd, reply });
    }
}
