//! [`Client`]'s calls to the transaction recovery daemons: every node answers for the
//! regions its store leads (ARCHITECTURE.md, "The recovery daemon").

use std::time::Duration;

use regionkv_engine::RegionId;

use super::{CALL_TIMEOUT, Client};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::proto::{Request, Response};
use crate::txn_recovery::{TxnEntry, TxnRecoveryTurn};

impl Client {
    /// The transaction locks and records of every region, from the node that leads it
    /// (see [`Cluster::txn_list`](crate::Cluster::txn_list)). Fails, naming them, if a
    /// node did not answer: its regions would be missing.
    pub fn txn_list(
        &self,
        in_doubt_only: bool,
        older_than: Option<Duration>,
    ) -> Result<Vec<TxnEntry>> {
        let older_than_ms = older_than.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let req = Request::TxnList { in_doubt_only, older_than_ms };
        let mut out = Vec::new();
        self.ask_every_node(&req, |answer| match answer {
            Response::TxnEntries(entries) => {
                out.extend(entries);
                true
            }
            _ => false,
        })?;
        Ok(out)
    }

    /// One recovery turn now on every node (`region`: that region only, on the node
    /// that leads it), gates first; see [`Cluster::txn_recover`](crate::Cluster::txn_recover).
    pub fn txn_recover(&self, region: Option<RegionId>) -> Result<Vec<TxnRecoveryTurn>> {
        let req = Request::TxnRecover { region };
        let mut out = Vec::new();
        self.ask_every_node(&req, |answer| match answer {
            Response::TxnTurn(turn) => {
                out.push(*turn);
                true
            }
            _ => false,
        })?;
        Ok(out)
    }

    /// Sends `req` to every node; `take` keeps an answer (false: not the expected kind).
    fn ask_every_node(&self, req: &Request, mut take: impl FnMut(Response) -> bool) -> Result<()> {
        let mut missed = Vec::new();
        for store in self.remote.store_ids() {
            match self.remote.call(store, req, CALL_TIMEOUT) {
                Some(Ok(answer)) => {
                    let shown = format!("{answer:?}");
                    if !take(answer) {
                        missed.push(format!("store {store}: answered {shown}"));
                    }
                }
                Some(Err(e)) => missed.push(format!("store {store}: {}", e.into_facade())),
                None => missed.push(format!("store {store}: no answer")),
            }
        }
        if missed.is_empty() {
            Ok(())
        } else {
            Err(Error::Unavailable { waited: CALL_TIMEOUT, last: missed.join("; ") })
        }
    }
}
