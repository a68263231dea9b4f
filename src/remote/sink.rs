//! A duplication's sink commands to the stores of a follower cluster of `regionkv
//! node` processes (client request 82, `proto/sink.rs`): what a source cluster's
//! shipper sends through a [`Client`](crate::Client) of the follower.

use regionkv_engine::StoreId;
use regionkv_raft::sink::SinkRequest;
use regionkv_raft::version;

use super::{RemoteStores, answer};
use crate::proto::{ErrorCode, RemoteError, Request, Response};

impl RemoteStores {
    /// Sends `req` to `store` (the follower region's leader). A node from before the
    /// request (it answers unsupported) is a follower whose binary does not know
    /// duplication's sink: `FeatureNotActive` for `duplication-v2`, not retryable.
    pub(super) fn send_sink(&self, store: StoreId, req: SinkRequest) {
        let SinkRequest { region, cmd, reply } = req;
        let done = move |r: std::result::Result<Response, RemoteError>| match r {
            Err(e) if e.code == ErrorCode::UnsupportedRequest => {
                reply(Err(regionkv_raft::Error::FeatureNotActive {
                    feature: version::DUP_V2.name,
                    active: version::DUP_V2.since - 1,
                    needed: version::DUP_V2.since,
                }));
            }
            r => reply(
                answer(r, region, |resp| match resp {
                    Response::Sink(answer) => Some(answer),
                    _ => None,
                })
                .and_then(crate::proto::SinkAnswer::into_result),
            ),
        };
        self.send(store, &Request::Sink { region, cmd }, Box::new(done));
    }
}
