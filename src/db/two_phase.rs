//! [`Db::write`] of a batch that spans regions: two-phase commit by
//! [`TxnPlan`] (ARCHITECTURE.md, "Transactions").
//!
//! 1. A transaction id from the `Db`'s batch of directory ids; the primary is the
//!    batch's smallest key.
//! 2. Prewrite every region's part in parallel (one thread per region); a part whose
//!    region changed meanwhile is grouped again by fresh routing and prewritten again
//!    (prewrite is idempotent per key). A lock of another transaction is resolved
//!    through its record, or (alive) waited for per [`LockWait`], else our own locks
//!    are dropped and the caller gets [`Error::Conflict`]. The record is heartbeated
//!    while the prewrites run past half the TTL.
//! 3. Commit on the primary's region: the decision; the caller is answered once it
//!    is applied. No definite answer before the deadline: one more status check,
//!    then [`Error::Indeterminate`].
//! 4. Resolve the other regions' locks in the background (a reader that meets one
//!    first resolves it itself; errors there are never the caller's).
//!
//! Giving up before the commit (a conflict, a refusal): our locks are dropped
//! (`Resolve { commit: false }`, safe because we never commit), and the record is
//! left `Pending` until its TTL, when any reader or the recovery daemon aborts it:
//! the TXN commands have no explicit rollback of a live record.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regionkv_engine::RegionId;
use regionkv_raft::Error as E;
use regionkv_raft::txn::plan::{MAX_TXN_KEYS, TxnPlan};
use regionkv_raft::{Op, TxnReply, TxnState};

use super::Db;
use super::txn::{LockMet, LockWait, Resolved};
use crate::defaults::{DB_ATTEMPT_TIMEOUT, DB_FIRST_BACKOFF, DB_MAX_BACKOFF};
use crate::error::{Error, Result};

/// How a prewrite phase ended, short of success.
enum Stop {
    /// A region refused the transaction's id as too old: start again with a new one.
    TooOld,
    /// Give up with this error (our locks are dropped first).
    Fail(Error),
}

impl Db {
    /// Writes `ops` (keys in more than one region) atomically by two-phase commit.
    pub(super) fn write_two_phase(&self, ops: &[Op], deadline: Duration) -> Result<()> {
        if ops.len() > MAX_TXN_KEYS {
            return Err(Error::InvalidRequest(format!(
                "a batch that spans regions holds at most {MAX_TXN_KEYS} keys, this one {}",
                ops.len()
            )));
        }
        let start = Instant::now();
        // Bounded: a new id only after a region refused the last as too old.
        loop {
            let txn_id = self.next_txn_id()?;
            let plan = TxnPlan::new(txn_id, ops.to_vec(), self.txn_ttl_ms, None);
            let _span =
                tracing::debug_span!("db.txn_write", txn_id, keys = plan.ops.len()).entered();
            match self.prewrite_all(&plan, start, deadline) {
                Ok(()) => return self.commit(&plan, start, deadline),
                Err(Stop::TooOld) => {
                    self.drop_locks(&plan);
                    self.txn.ids.discard();
                    if start.elapsed() >= deadline {
                        return Err(Error::Unavailable {
                            waited: start.elapsed(),
                            last: format!("transaction {txn_id} was too old for a region"),
                        });
                    }
                }
                Err(Stop::Fail(e)) => {
                    self.drop_locks(&plan);
                    return Err(e);
                }
            }
        }
    }

    /// Prewrites every part of `plan`, regrouping by fresh routing as regions change.
    fn prewrite_all(&self, plan: &TxnPlan, start: Instant, deadline: Duration) -> Result<(), Stop> {
        let mut todo: Vec<Op> = plan.ops.clone();
        let primary = plan.primary_key();
        let half_ttl = Duration::from_millis(plan.ttl_ms / 2);
        let mut last_beat = Instant::now();
        let mut primary_done = false;
        let mut backoff = DB_FIRST_BACKOFF;
        // Bounded by the deadline: every turn that leaves work sleeps or resolves.
        while !todo.is_empty() {
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(Stop::Fail(Error::Unavailable {
                    waited: start.elapsed(),
                    last: format!("the prewrites of transaction {} did not finish", plan.txn_id),
                }));
            }
            let groups = self.group_by_region(std::mem::take(&mut todo));
            let (tx, rx) = mpsc::channel();
            let mut failed: Option<Stop> = None;
            let mut locked: Vec<LockMet> = Vec::new();
            std::thread::scope(|scope| {
                let count = groups.len();
                for ops in groups.into_values() {
                    let tx = tx.clone();
                    scope.spawn(move || {
                        let cmd = plan.prewrite(ops.clone());
                        let r = self.txn_call_for(&cmd, left);
                        let _ = tx.send((ops, r));
                    });
                }
                let mut answered = 0;
                // Bounded: each part answers once (its call is bounded by `left`).
                while answered < count {
                    let Ok((ops, r)) = rx.recv_timeout(half_ttl.max(Duration::from_millis(1)))
                    else {
                        if primary_done && last_beat.elapsed() >= half_ttl {
                            let _ = self.txn_call_for(&plan.heartbeat(), DB_ATTEMPT_TIMEOUT);
                            last_beat = Instant::now();
                        }
                        continue;
                    };
                    answered += 1;
                    match r {
                        Ok(_) => {
                            primary_done |= ops.iter().any(|op| op.key() == primary.as_ref());
                        }
                        // The part's region changed: group its keys again.
                        Err(Error::CrossRegionBatch { .. }) => todo.extend(ops),
                        Err(e) => {
                            if let Some(lock) = LockMet::of(&e) {
                                locked.push(lock);
                                todo.extend(ops);
                            } else if matches!(e, Error::Store(E::TxnTooOld { .. })) {
                                failed.get_or_insert(Stop::TooOld);
                            } else {
                                failed.get_or_insert(Stop::Fail(e));
                            }
                        }
                    }
                }
            });
            if let Some(stop) = failed {
                return Err(stop);
            }
            if primary_done && last_beat.elapsed() >= half_ttl {
                let _ = self.txn_call_for(&plan.heartbeat(), DB_ATTEMPT_TIMEOUT);
                last_beat = Instant::now();
            }
            let mut alive = None;
            for lock in &locked {
                let left = deadline.saturating_sub(start.elapsed());
                match self.resolve_lock(lock, left) {
                    Ok(Resolved::Gone) => {}
                    Ok(Resolved::Alive) => alive = Some(lock.clone()),
                    Err(e) => return Err(Stop::Fail(e)),
                }
            }
            if let Some(lock) = alive {
                let patience = match self.lock_wait {
                    LockWait::NoWait => return Err(Stop::Fail(lock.conflict())),
                    LockWait::Wait(t) => t.min(deadline),
                };
                if start.elapsed() + backoff >= patience {
                    return Err(Stop::Fail(lock.conflict()));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(DB_MAX_BACKOFF);
            } else if !todo.is_empty() && locked.is_empty() {
                // Regrouping only: routing learned the new regions from the refusal.
                std::thread::sleep(DB_FIRST_BACKOFF);
            }
        }
        Ok(())
    }

    /// `ops` grouped by the region routing says holds each key (keys no store can
    /// place yet go with the first key's group: the region refuses, and they are
    /// grouped again).
    fn group_by_region(&self, ops: Vec<Op>) -> BTreeMap<RegionId, Vec<Op>> {
        let mut groups: BTreeMap<RegionId, Vec<Op>> = BTreeMap::new();
        for op in ops {
            let region = self.router.locate(op.key()).map_or(RegionId(0), |r| r.region.id);
            groups.entry(region).or_default().push(op);
        }
        groups
    }

    /// The decision, then the other regions' locks resolved in the background.
    fn commit(&self, plan: &TxnPlan, start: Instant, deadline: Duration) -> Result<()> {
        let left = deadline.saturating_sub(start.elapsed()).max(DB_ATTEMPT_TIMEOUT);
        let state = match self.txn_call_for(&plan.commit(), left) {
            Ok(TxnReply::Status(state)) => state,
            Ok(TxnReply::Done) => return Err(Error::Protocol("a commit answered done".into())),
            Err(Error::TxnAborted { txn_id }) => return Err(Error::TxnAborted { txn_id }),
            // No definite answer in time (retried, idempotent): ask the record once more.
            Err(Error::Unavailable { .. }) => self.last_look(plan),
            Err(e) => return Err(e),
        };
        match state {
            TxnState::Committed { .. } => {
                self.resolve_in_background(plan, true);
                Ok(())
            }
            TxnState::Aborted => Err(Error::TxnAborted { txn_id: plan.txn_id }),
            _ => Err(Error::Indeterminate { txn_id: plan.txn_id, primary_key: plan.primary_key() }),
        }
    }

    /// The record's state after a commit without a definite answer; an unknown one is
    /// `Pending` (which the caller reports as indeterminate).
    fn last_look(&self, plan: &TxnPlan) -> TxnState {
        match self.txn_call_for(&plan.check_status(false), DB_ATTEMPT_TIMEOUT) {
            Ok(TxnReply::Status(state)) => state,
            _ => TxnState::Pending { expires_at_ms: u64::MAX },
        }
    }

    /// Drops every lock `plan` may have taken (we never commit it), best effort.
    fn drop_locks(&self, plan: &TxnPlan) {
        self.resolve_keys(plan, plan.keys(), false);
    }

    /// Resolves `keys` of `plan`'s transaction (regrouping if their region split),
    /// best effort: a lock left is resolved by a reader or the recovery daemon.
    fn resolve_keys(&self, plan: &TxnPlan, keys: Vec<Bytes>, commit: bool) {
        let mut todo = keys;
        for _ in 0..4 {
            if todo.is_empty() {
                return;
            }
            let mut groups: BTreeMap<RegionId, Vec<Bytes>> = BTreeMap::new();
            for key in std::mem::take(&mut todo) {
                let region = self.router.locate(&key).map_or(RegionId(0), |r| r.region.id);
                groups.entry(region).or_default().push(key);
            }
            for keys in groups.into_values() {
                let cmd = plan.resolve(keys.clone(), commit);
                if let Err(Error::CrossRegionBatch { .. }) =
                    self.txn_call_for(&cmd, DB_ATTEMPT_TIMEOUT * 2)
                {
                    todo.extend(keys);
                }
            }
        }
    }

    /// Resolves the locks outside the primary's region (its own were applied with the
    /// commit) on a thread of their own.
    fn resolve_in_background(&self, plan: &TxnPlan, commit: bool) {
        let primary_region = self.router.locate(&plan.primary_key()).map(|r| r.region);
        let keys: Vec<Bytes> = plan
            .keys()
            .into_iter()
            .filter(|k| primary_region.as_ref().is_none_or(|r| !r.contains(k)))
            .collect();
        if keys.is_empty() {
            return;
        }
        let db = self.clone();
        let plan = plan.clone();
        let spawned = std::thread::Builder::new()
            .name("db-txn-resolve".into())
            .spawn(move || db.resolve_keys(&plan, keys, commit));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to resolve a transaction's locks; readers will");
        }
    }
}
