//! What a transaction's coordinator sends, in order: the sans-I/O plan that `Db` and
//! the simulator's tests both follow, so that they run one protocol.
//!
//! 1. `Prewrite` on every region holding keys of the batch (in parallel); the primary's
//!    region (the batch's smallest key) also creates the record.
//! 2. `Commit` on the primary's region: the decision. The client is answered once it
//!    is applied.
//! 3. `Resolve { commit: true }` on the other regions (asynchronously); the recovery
//!    daemon finishes whatever a crash leaves.
//!
//! With async commit ([`TxnPlan::staging`], cluster version 4; [`super::staging`]) the
//! primary's prewrite creates the record `Staging`, there is no step 2 before the
//! answer, and the record is decided and the locks resolved by batched
//! `ResolveMany` commands afterwards ([`TxnPlan::decide`], [`TxnPlan::resolve_item`]).

use bytes::Bytes;
use regionkv_engine::StoreId;

use super::{RecordInit, TxnCmd};
use crate::command::{Op, WriteSession};

/// Default lock and record TTL: how long a silent coordinator holds its keys.
pub const DEFAULT_TXN_TTL_MS: u64 = 3_000;
/// Most keys in one transaction.
pub const MAX_TXN_KEYS: usize = 4096;

/// One transaction's writes, deduplicated by key (the last op of a key wins), in key
/// order, and its primary key (the smallest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnPlan {
    /// The transaction's id.
    pub txn_id: u64,
    /// The ops, one per key, in key order.
    pub ops: Vec<Op>,
    /// The lock and record TTL.
    pub ttl_ms: u64,
    /// The coordinator's store, if it runs on one.
    pub coordinator: Option<StoreId>,
    /// Async commit: the record is created `Staging` (cluster version 4).
    pub staging: bool,
    /// A snapshot transaction's start timestamp (its keys are lock keys).
    pub start_ts: Option<u64>,
    /// A snapshot transaction committed asynchronously (cluster version 5): each
    /// prewrite asks for a minimum commit timestamp ([`super::staging`]).
    pub min_commit: bool,
    /// A snapshot transaction's commit timestamp, once known: its decision and
    /// resolves carry it.
    pub commit_ts: Option<u64>,
}

impl TxnPlan {
    /// A plan for `ops` (at least one).
    pub fn new(txn_id: u64, ops: Vec<Op>, ttl_ms: u64, coordinator: Option<StoreId>) -> TxnPlan {
        let mut by_key = std::collections::BTreeMap::new();
        for op in ops {
            by_key.insert(Bytes::copy_from_slice(op.key()), op);
        }
        TxnPlan {
            txn_id,
            ops: by_key.into_values().collect(),
            ttl_ms,
            coordinator,
            staging: false,
            start_ts: None,
            min_commit: false,
            commit_ts: None,
        }
    }

    /// The same plan for a snapshot transaction started at `start_ts`, committed
    /// asynchronously: staging, every prewrite asking for a minimum commit timestamp.
    #[must_use]
    pub fn snapshot_async(mut self, start_ts: u64) -> TxnPlan {
        self.staging = true;
        self.start_ts = Some(start_ts);
        self.min_commit = true;
        self
    }

    /// The same plan, committed asynchronously (`staging` true) or not.
    #[must_use]
    pub fn with_staging(mut self, staging: bool) -> TxnPlan {
        self.staging = staging;
        self
    }

    /// The primary key: the smallest key of the batch.
    pub fn primary_key(&self) -> Bytes {
        self.ops.first().map(|op| Bytes::copy_from_slice(op.key())).unwrap_or_default()
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<Bytes> {
        self.ops.iter().map(|op| Bytes::copy_from_slice(op.key())).collect()
    }

    /// The prewrite of one region's part (`ops`, a subset of the plan's); the part
    /// holding the primary key carries the record.
    pub fn prewrite(&self, ops: Vec<Op>) -> TxnCmd {
        let primary_key = self.primary_key();
        let record = ops.iter().any(|op| op.key() == primary_key.as_ref()).then(|| RecordInit {
            participants: self.keys(),
            coordinator: self.coordinator,
            staging: self.staging,
        });
        TxnCmd::Prewrite {
            txn_id: self.txn_id,
            primary_key,
            ops,
            ttl_ms: self.ttl_ms,
            record,
            start_ts: self.start_ts,
            session: None,
            min_commit: self.min_commit.then(super::MinCommit::default),
        }
    }

    /// [`TxnPlan::prewrite`] with the timestamp `synced` taken after the region's
    /// leader refused as unsynced (`Error::ReadTsUnsynced`).
    pub fn prewrite_synced(
        &self,
        ops: Vec<Op>,
        session: Option<WriteSession>,
        synced: Option<super::SyncedTs>,
    ) -> TxnCmd {
        let mut cmd = match session {
            Some(session) => self.prewrite_in(ops, session),
            None => self.prewrite(ops),
        };
        if let TxnCmd::Prewrite { min_commit: Some(asked), .. } = &mut cmd {
            asked.synced = synced;
        }
        cmd
    }

    /// [`TxnPlan::prewrite`] numbered `session` in its client's session (cluster
    /// version 4): a region that applied it answers a copy `Done` and locks nothing,
    /// even after its locks were resolved (ARCHITECTURE.md, "Exactly once").
    pub fn prewrite_in(&self, ops: Vec<Op>, session: WriteSession) -> TxnCmd {
        let mut cmd = self.prewrite(ops);
        if let TxnCmd::Prewrite { session: numbered, .. } = &mut cmd {
            *numbered = Some(session);
        }
        cmd
    }

    /// The decision.
    pub fn commit(&self) -> TxnCmd {
        TxnCmd::Commit { txn_id: self.txn_id, primary_key: self.primary_key(), commit_ts: None }
    }

    /// The resolve of one region's keys.
    pub fn resolve(&self, keys: Vec<Bytes>, commit: bool) -> TxnCmd {
        let commit_ts = self.commit_ts.filter(|_| commit);
        TxnCmd::Resolve { txn_id: self.txn_id, keys, commit, commit_ts }
    }

    /// Asks the record (after a lost reply: `abort_if_expired` false).
    pub fn check_status(&self, abort_if_expired: bool) -> TxnCmd {
        TxnCmd::CheckStatus {
            txn_id: self.txn_id,
            primary_key: self.primary_key(),
            abort_if_expired,
        }
    }

    /// Async commit: decides the `Staging` record by `commit` on the primary's region,
    /// resolving that region's keys by the decision.
    pub fn decide(&self, commit: bool) -> TxnCmd {
        let commit_ts = self.commit_ts.filter(|_| commit);
        super::staging::decide_at(self.txn_id, self.primary_key(), Vec::new(), commit, commit_ts)
    }

    /// Async commit: the batched resolve item of `keys` (one region's, never the
    /// primary's region before the decision applied).
    pub fn resolve_item(&self, keys: Vec<Bytes>, commit: bool) -> super::ResolveItem {
        let commit_ts = self.commit_ts.filter(|_| commit);
        super::ResolveItem { txn_id: self.txn_id, primary_key: None, keys, commit, commit_ts }
    }

    /// Async commit: the participant check of `keys` (one region's).
    pub fn check_locks(&self, keys: Vec<Bytes>) -> TxnCmd {
        TxnCmd::CheckLocks { txn_id: self.txn_id, keys }
    }

    /// Extends the record's life.
    pub fn heartbeat(&self) -> TxnCmd {
        TxnCmd::Heartbeat {
            txn_id: self.txn_id,
            primary_key: self.primary_key(),
            ttl_ms: self.ttl_ms,
        }
    }
}
