//! [`Client`]'s calls about the health monitor and spare members: they ask the nodes
//! in turn (see ARCHITECTURE.md, "Health monitor").

use std::net::SocketAddr;

use regionkv_engine::StoreId;

use super::{CALL_TIMEOUT, Client};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::health::{AuditEntry, HealthReport};
use crate::proto::{HealthAnswer, Request, Response};

impl Client {
    /// Makes store `store`, listening at `addr`, a member of the cluster without adding
    /// it to any region (see [`Node::add_member`](crate::Node::add_member)): every node
    /// this client knows learns its address, so the health monitor collects its status
    /// and may place replicas on it. Start its node with `--join` first. Fails, naming
    /// them, if some nodes did not answer (running it again is harmless).
    pub fn add_member(&self, store: StoreId, addr: SocketAddr) -> Result<()> {
        let req = Request::Member { store, addr: addr.to_string() };
        let mut missed = Vec::new();
        let nodes = self.remote.store_ids();
        for &node in nodes.iter().filter(|&&s| s != store) {
            if let Err(e) = self.remote.ask(node, &req) {
                missed.push(format!("store {node}: {e}"));
            }
        }
        self.remote.set_addr(store, addr);
        if missed.is_empty() {
            Ok(())
        } else {
            Err(Error::Unavailable {
                waited: CALL_TIMEOUT,
                last: format!(
                    "not every node learned store {store}'s address ({}); run it again once \
                     they answer",
                    missed.join("; ")
                ),
            })
        }
    }

    /// The health monitor's last evaluation (see [`Node::health`](crate::Node::health)),
    /// from the node that runs it (the one whose store leads the directory). Entries of
    /// a newer node that this binary cannot name are left out and counted
    /// ([`HealthReport::skipped`]).
    pub fn health(&self) -> Result<HealthReport> {
        match self.ask_monitor(false)? {
            HealthAnswer::Report(report) => Ok(*report),
            other => Err(Error::Protocol(format!("a health report answered {other:?}"))),
        }
    }

    /// The repairs the health monitor carried out, and why (oldest first), from the
    /// node that runs it. Entries whose repair this binary cannot name are left out
    /// (and logged).
    pub fn health_audit(&self) -> Result<Vec<AuditEntry>> {
        match self.ask_monitor(true)? {
            HealthAnswer::Audit { entries, skipped } => {
                if skipped > 0 {
                    tracing::warn!(
                        skipped,
                        "audit entries of repairs this binary cannot name were left out"
                    );
                }
                Ok(entries)
            }
            other => Err(Error::Protocol(format!("a health audit answered {other:?}"))),
        }
    }

    /// Asks the nodes in turn until the one that runs the health monitor answers.
    fn ask_monitor(&self, audit: bool) -> Result<HealthAnswer> {
        let req = Request::Health { audit };
        let mut heard = Vec::new();
        for store in self.remote.store_ids() {
            match self.remote.call(store, &req, CALL_TIMEOUT) {
                Some(Ok(Response::Health(HealthAnswer::NotMonitor))) => {
                    heard.push(format!("store {store}: not the monitor"));
                }
                Some(Ok(Response::Health(answer))) => return Ok(answer),
                Some(Ok(other)) => heard.push(format!("store {store}: answered {other:?}")),
                Some(Err(e)) => heard.push(format!("store {store}: {}", e.into_facade())),
                None => heard.push(format!("store {store}: no answer")),
            }
        }
        Err(Error::Unavailable {
            waited: CALL_TIMEOUT,
            last: format!(
                "no node runs the health monitor now (it runs where the directory's leader \
                 is; retry once one is elected): {}",
                heard.join("; ")
            ),
        })
    }
}
