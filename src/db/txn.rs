//! Transactions through `Db`: a batch that spans regions is written by two-phase
//! commit ([`regionkv_raft::txn::plan`]); reads that meet a lock resolve it through the
//! holder's record; [`Db::txn_outcome`] asks a record later.

use bytes::Bytes;
use regionkv_raft::{TxnCmd, TxnReply};

use super::Db;
use crate::error::{Error, Result};

/// What a transaction's record says, for [`Db::txn_outcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Committed: every key of it was written.
    Committed,
    /// Aborted: none of it was or will be written.
    Aborted,
    /// Not decided yet (its coordinator may still commit it, or its TTL runs out and
    /// the recovery daemon aborts it).
    Pending,
    /// No record: finished and forgotten long ago (its outcome was applied), or never
    /// prewritten.
    Unknown,
}

impl Db {
    /// Sends one transaction command to the region holding its first key (routed and
    /// retried like every request until the deadline). Every command is idempotent.
    #[allow(dead_code)] // used by the 2PC path and the recovery daemon (in progress)
    pub(crate) fn txn_call(&self, cmd: TxnCmd) -> Result<TxnReply> {
        let _ = cmd;
        Err(Error::InvalidRequest("transactions: not yet wired (txn-facade)".into()))
    }

    /// The outcome of transaction `txn_id` whose primary key is `primary_key` (both in
    /// [`Error::Indeterminate`](crate::Error)), read from its record.
    pub fn txn_outcome(&self, txn_id: u64, primary_key: impl AsRef<[u8]>) -> Result<TxnOutcome> {
        let _ = (txn_id, Bytes::copy_from_slice(primary_key.as_ref()));
        Err(Error::InvalidRequest("transactions: not yet wired (txn-facade)".into()))
    }
}
