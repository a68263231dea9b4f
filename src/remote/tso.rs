//! Timestamps over the client protocol ([`RemoteStores`]' side of
//! [`Backend::timestamps`](crate::backend::Backend::timestamps)): a node from before
//! the oracle answers `UnsupportedRequest`, which is `FeatureNotActive` here.

use regionkv_engine::StoreId;
use regionkv_raft::directory::DIRECTORY;
use regionkv_raft::{Reply, version};

use super::{RemoteStores, answer};
use crate::proto::{ErrorCode, RemoteError, Request, Response};

impl RemoteStores {
    /// Asks `store` (the directory's leader) for `count` consecutive timestamps.
    pub(super) fn send_timestamps(&self, store: StoreId, count: u32, reply: Reply<u64>) {
        let done = move |r: std::result::Result<Response, RemoteError>| match r {
            Err(e) if e.code == ErrorCode::UnsupportedRequest => {
                reply(Err(regionkv_raft::Error::FeatureNotActive {
                    feature: version::TXN.name,
                    active: version::TXN.since - 1,
                    needed: version::TXN.since,
                }));
            }
            r => reply(answer(r, DIRECTORY, |resp| match resp {
                Response::Timestamps(first) => Some(first),
                _ => None,
            })),
        };
        self.send(store, &Request::Timestamps { count }, Box::new(done));
    }
}
