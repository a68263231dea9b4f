//! [`Db::write`] of a batch that spans regions by async commit (cluster version 4;
//! the protocol and its soundness rule: [`regionkv_raft::txn::staging`];
//! ARCHITECTURE.md, "Async commit").
//!
//! 1. Every region's prewrite is sent at once (`two_phase.rs`'s prewrite phase); the
//!    primary's creates the record `Staging`.
//! 2. When all are applied the transaction is committed: the caller is answered `Ok`,
//!    and the decision and the resolves go to the `Db`'s resolver thread, which
//!    batches them across transactions: each turn sends one `ResolveMany` per region,
//!    holding the decisions of the transactions queued since the last turn (on their
//!    records' regions: each `Staging` record decided and that region's locks
//!    resolved) and the other regions' resolves of those the last turn decided.
//! 3. Giving up before every prewrite applied (a conflict, a refusal, no answer): the
//!    coordinator decides its own record `Aborted` (only from `Staging`: a checker may
//!    have committed it first, and then the caller is answered `Ok`), then drops its
//!    locks. No definite decision: [`Error::Indeterminate`].
//!
//! A cluster below version 4 refuses the staging prewrite with `FeatureNotActive`
//! before anything is written: the `Db` then uses the level-1 path (`Commit` before the
//! answer) and does not try async commit again for a while. A node of an older binary
//! over TCP applies it as a plain prewrite instead, and does not confirm the flag
//! (`TxnReply::Unstaged`): that transaction commits in two phases (`two_phase.rs`,
//! `commit_unstaged`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regionkv_engine::RegionId;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::txn::{ResolveItem, staging};
use regionkv_raft::{TxnCmd, TxnReply, TxnState};

use super::Db;
use super::txn::{ResolveJob, now_ms};
use crate::defaults::DB_ATTEMPT_TIMEOUT;
use crate::error::{Error, Result};

/// How long a `Db` that met a cluster below version 4 uses the level-1 path before it
/// tries async commit again.
const ASYNC_RETRY_MS: u64 = 10_000;

/// Most transactions one resolver turn batches.
pub(super) const RESOLVE_BATCH: usize = 256;

/// A transaction whose record a resolver turn decided: the next turn resolves its
/// other regions' locks by the decision.
pub(super) struct Carried {
    plan: Arc<TxnPlan>,
    commit: bool,
    /// The record's commit timestamp (a snapshot transaction).
    commit_ts: Option<u64>,
}

/// How a staging prewrite phase ended, short of success.
pub(super) enum Given {
    /// The cluster runs below version 4: nothing was written; use the level-1 path.
    NotActive,
    /// Give up with this outcome (our record decided, our locks dropped).
    Done(Result<()>),
}

impl Db {
    /// True if this `Db` should try async commit (it did not meet a cluster below
    /// version 4 lately).
    pub(super) fn async_commit_on(&self) -> bool {
        now_ms() >= self.txn.async_off_until.load(Ordering::Relaxed)
    }

    /// True if this `Db` should try async commit of snapshot transactions that span
    /// regions (it did not meet a cluster below version 5 lately).
    pub(super) fn si_async_on(&self) -> bool {
        now_ms() >= self.txn.si_async_off_until.load(Ordering::Relaxed)
    }

    /// Notes that the cluster refused async commit of snapshot transactions: two
    /// phases for a while.
    pub(super) fn si_async_refused(&self) {
        self.txn.si_async_off_until.store(now_ms() + ASYNC_RETRY_MS, Ordering::Relaxed);
    }

    /// Notes that the cluster refused async commit: the level-1 path for a while.
    pub(super) fn async_commit_refused(&self) {
        self.txn.async_off_until.store(now_ms() + ASYNC_RETRY_MS, Ordering::Relaxed);
    }

    /// The end of an async-commit transaction whose prewrites all applied: it is
    /// committed. Its decision and resolves go to the resolver thread (or, if its
    /// queue is full, are done here, which slows the callers to the resolver's pace).
    pub(super) fn committed_async(&self, plan: TxnPlan) {
        if self.seams.as_ref().is_some_and(|s| s.drop_resolves) {
            return;
        }
        let job = ResolveJob { plan: Arc::new(plan), keys: Vec::new(), commit: true, decide: true };
        match self.resolver() {
            Some(queue) => {
                if let Err(e) = queue.try_send(job) {
                    let job = match e {
                        std::sync::mpsc::TrySendError::Full(j)
                        | std::sync::mpsc::TrySendError::Disconnected(j) => j,
                    };
                    self.resolve_now(&[job]);
                }
            }
            None => self.resolve_now(&[job]),
        }
    }

    /// Gives up an async-commit transaction whose prewrites did not all apply (`why`):
    /// decides its record `Aborted` unless a checker committed it first, then drops
    /// its locks (or resolves them committed). The caller's answer.
    pub(super) fn abandon_async(&self, plan: &TxnPlan, why: Error) -> Result<Option<u64>> {
        let state = match self.txn_call_for(&plan.decide(false), DB_ATTEMPT_TIMEOUT) {
            Ok(reply) => staging::decided_state(&reply),
            // Below version 4 no staging record can exist: nothing to decide.
            Err(Error::FeatureNotActive { .. }) => Some(TxnState::Aborted),
            Err(_) => None,
        };
        match state {
            Some(TxnState::Committed { commit_ts }) => {
                // Every prewrite had applied after all, and a checker saw it.
                self.committed_async(TxnPlan { commit_ts, ..plan.clone() });
                Ok(commit_ts)
            }
            Some(TxnState::Aborted | TxnState::NotFound { .. }) => {
                self.resolve_keys(plan, plan.keys(), false);
                Err(why)
            }
            _ => Err(Error::Indeterminate { txn_id: plan.txn_id, primary_key: plan.primary_key() }),
        }
    }

    /// Decides the `Staging` record of `txn_id` (primary key `primary_key`, keys
    /// `participants`) by the participant check: every other key's region is asked
    /// whether the key holds the transaction's lock (a key that does not is prevented
    /// from ever holding it); all do: committed, else aborted. Answers the record's
    /// state after (a record decided meanwhile keeps its decision). Used by readers
    /// that meet an expired staging lock, [`Db::txn_outcome`] and the recovery daemon.
    pub(crate) fn settle_staging(
        &self,
        txn_id: u64,
        primary_key: &Bytes,
        participants: &[Bytes],
    ) -> Result<TxnState> {
        let mut todo = staging::check_keys(participants, primary_key);
        let mut all_locked = true;
        // A snapshot transaction's keys are lock keys: it commits at the largest
        // minimum commit timestamp of its locks (`staging`).
        let snapshot = regionkv_raft::txn::mvcc::decode_lock_key(primary_key).is_some();
        let mut mins = Vec::new();
        // Bounded: a group goes round again only if its region changed (4 times).
        for _ in 0..4 {
            if todo.is_empty() || !all_locked {
                break;
            }
            for keys in self.group_keys(std::mem::take(&mut todo)).into_values() {
                match self
                    .txn_call_for(&TxnCmd::CheckLocks { txn_id, keys: keys.clone() }, self.deadline)
                {
                    Ok(TxnReply::Checked { all_locked: locked, min_commit_ts }) => {
                        all_locked &= locked;
                        mins.push(min_commit_ts);
                    }
                    Ok(TxnReply::Status(state)) => return Ok(state),
                    Ok(_) => {
                        return Err(Error::Protocol(
                            "a participant check answered no check".into(),
                        ));
                    }
                    Err(Error::CrossRegionBatch { .. }) => todo.extend(keys),
                    Err(e) => return Err(e),
                }
                if !all_locked {
                    break;
                }
            }
        }
        if all_locked && !todo.is_empty() {
            return Err(Error::Unavailable {
                waited: Duration::ZERO,
                last: format!("the participants of transaction {txn_id} kept moving"),
            });
        }
        let commit_ts = match staging::checked_commit_ts(mins) {
            _ if !snapshot || !all_locked => None,
            Some(ts) => Some(ts),
            // A lock without a minimum commit timestamp: a fresh oracle timestamp
            // (taken after every lock was seen: above every read served before).
            None => Some(self.timestamp()?),
        };
        let decide =
            staging::decide_at(txn_id, primary_key.clone(), Vec::new(), all_locked, commit_ts);
        let state = staging::decided_state(&self.txn_call_for(&decide, self.deadline)?)
            .ok_or_else(|| Error::Protocol("a decision answered no state".into()))?;
        if let TxnState::Committed { .. } | TxnState::Aborted = state {
            let commit = matches!(state, TxnState::Committed { .. });
            // Resolves need only the transaction's id (and the record's timestamp).
            let mut plan = TxnPlan::new(txn_id, Vec::new(), 0, None);
            if let TxnState::Committed { commit_ts } = state {
                plan.commit_ts = commit_ts;
            }
            self.resolve_keys(&plan, participants.to_vec(), commit);
        }
        Ok(state)
    }

    /// `keys` grouped by the region routing says holds each.
    fn group_keys(&self, keys: Vec<Bytes>) -> BTreeMap<RegionId, Vec<Bytes>> {
        let mut groups: BTreeMap<RegionId, Vec<Bytes>> = BTreeMap::new();
        for key in keys {
            let region = self.router.locate(&key).map_or(RegionId(0), |r| r.region.id);
            groups.entry(region).or_default().push(key);
        }
        groups
    }

    /// One resolver turn: per region one `ResolveMany` holding the decisions of the
    /// transactions `jobs` (on their records' regions: each `Staging` record decided
    /// and that region's locks resolved) and the other regions' resolves of the
    /// transactions `carried` (decided in the previous turn: a lock is resolved only
    /// after its record is decided). Answers what the next turn carries: `jobs` now
    /// decided. A batch refused (a region changed, too big) is done item by item,
    /// routed; whatever is left then is settled by readers and the recovery daemon
    /// after the TTL.
    pub(super) fn resolve_turn(&self, jobs: &[ResolveJob], carried: &[Carried]) -> Vec<Carried> {
        let start = Instant::now();
        // Per region: (the job it decides, or `None` for a carried resolve, the item).
        let mut by_region: BTreeMap<RegionId, Vec<(Option<usize>, ResolveItem)>> = BTreeMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let primary = job.plan.primary_key();
            let region = self.router.locate(&primary).map_or(RegionId(0), |r| r.region.id);
            let item = ResolveItem {
                txn_id: job.plan.txn_id,
                primary_key: Some(primary),
                keys: Vec::new(),
                commit: job.commit,
                commit_ts: job.plan.commit_ts.filter(|_| job.commit),
            };
            by_region.entry(region).or_default().push((Some(i), item));
        }
        for c in carried {
            let primary = self.router.locate(&c.plan.primary_key()).map(|r| r.region);
            let others: Vec<Bytes> = c
                .plan
                .keys()
                .into_iter()
                .filter(|k| !primary.as_ref().is_some_and(|r| r.contains(k)))
                .collect();
            for (region, keys) in self.group_keys(others) {
                by_region.entry(region).or_default().push((
                    None,
                    ResolveItem { commit_ts: c.commit_ts, ..c.plan.resolve_item(keys, c.commit) },
                ));
            }
        }
        let batches: Vec<(TxnCmd, Vec<Option<usize>>)> = by_region
            .into_values()
            .map(|part| {
                let slots = part.iter().map(|(slot, _)| *slot).collect();
                (TxnCmd::ResolveMany { items: part.into_iter().map(|(_, it)| it).collect() }, slots)
            })
            .collect();
        let mut decided: Vec<Option<TxnState>> = vec![None; jobs.len()];
        for ((cmd, slots), reply) in batches.iter().zip(self.send_batches(&batches)) {
            if let Ok(TxnReply::Resolved(states)) = &reply
                && states.len() == slots.len()
            {
                for (slot, state) in slots.iter().zip(states) {
                    if let Some(i) = slot {
                        decided[*i].clone_from(state);
                    }
                }
                continue;
            }
            let TxnCmd::ResolveMany { items } = cmd else { continue };
            for (slot, item) in slots.iter().zip(items) {
                if let Some(i) = slot {
                    let decide = jobs[*i].plan.decide(jobs[*i].commit);
                    decided[*i] = self
                        .txn_call_for(&decide, DB_ATTEMPT_TIMEOUT)
                        .ok()
                        .and_then(|r| staging::decided_state(&r));
                } else {
                    let mut plan = TxnPlan::new(item.txn_id, Vec::new(), 0, None);
                    plan.commit_ts = item.commit_ts;
                    self.resolve_keys(&plan, item.keys.clone(), item.commit);
                }
            }
        }
        tracing::trace!(jobs = jobs.len(), carried = carried.len(), took = ?start.elapsed(), "async-commit resolver turn");
        jobs.iter()
            .zip(decided)
            .filter_map(|(job, state)| {
                let (commit, commit_ts) = match state? {
                    TxnState::Committed { commit_ts } => (true, commit_ts),
                    TxnState::Aborted => (false, None),
                    _ => return None,
                };
                Some(Carried { plan: Arc::clone(&job.plan), commit, commit_ts })
            })
            .collect()
    }

    /// `jobs` decided and resolved whole, here (two turns).
    pub(super) fn resolve_now(&self, jobs: &[ResolveJob]) {
        let carried = self.resolve_turn(jobs, &[]);
        if !carried.is_empty() {
            self.resolve_turn(&[], &carried);
        }
    }

    /// Sends each batch (routed, retried), in parallel when there are several; the
    /// answers in order.
    fn send_batches<S: Sync>(&self, batches: &[(TxnCmd, S)]) -> Vec<Result<TxnReply>> {
        let deadline = DB_ATTEMPT_TIMEOUT * 2;
        if batches.len() == 1 {
            return batches.iter().map(|(cmd, _)| self.txn_call_for(cmd, deadline)).collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = batches
                .iter()
                .map(|(cmd, _)| scope.spawn(move || self.txn_call_for(cmd, deadline)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Protocol("a resolver call panicked".into())))
                })
                .collect()
        })
    }
}
