//! What a node's status address serves (`status_http.rs`): its store's figures as
//! Prometheus text, and whether it serves.

use std::net::SocketAddr;
use std::sync::Arc;

use super::NodeShared;
use crate::error::Result;
use crate::prometheus::{Scrape, StoreFigures, render};
use crate::server::ClientService;
use crate::status_http::{StatusServer, StatusSource};

/// The node as its status server sees it.
struct NodeStatus {
    shared: Arc<NodeShared>,
    service: Arc<ClientService>,
}

/// Starts the status server of the node `shared` at `addr`.
pub(super) fn start(
    addr: SocketAddr,
    shared: &Arc<NodeShared>,
    service: &Arc<ClientService>,
) -> Result<StatusServer> {
    let source = Arc::new(NodeStatus { shared: shared.clone(), service: service.clone() });
    StatusServer::start(addr, source, format!("node-status-{}", shared.id.0))
}

impl StatusSource for NodeStatus {
    fn metrics_text(&self) -> String {
        let shared = &self.shared;
        render(Scrape {
            stores: vec![StoreFigures {
                store: shared.id,
                metrics: Box::new(shared.store.metrics()),
                clients: Some(self.service.stats()),
                transport: Some(shared.transport.stats()),
            }],
            health: shared.health.report().map(|r| (shared.id, r)),
        })
    }

    /// Serving: the node was not told to stop, its store did not fail nor begin to
    /// stop, and it hosts a replica (of a user region or the directory): a store that
    /// waits to be added (`--join`), a spare or a removed store hosts none.
    fn health(&self) -> std::result::Result<(), String> {
        let shared = &self.shared;
        let store = &shared.store;
        if let Some(failure) = store.failure() {
            return Err(format!("store {} failed: {failure}", shared.id));
        }
        if shared.is_shut_now() || store.is_stopping() {
            return Err(format!("store {} is shutting down (or stopped)", shared.id));
        }
        if store.status().is_empty() {
            return Err(format!(
                "store {} hosts no replica: not yet added to the cluster, a spare, or removed",
                shared.id
            ));
        }
        Ok(())
    }
}
