//! Snapshot-isolated transactions: [`Db::transaction`] (ARCHITECTURE.md, "Snapshot
//! isolation").
//!
//! A transaction reads at its start timestamp (from the cluster's oracle) and buffers
//! its writes; `commit` prewrites them as locks on the user keys' lock keys (the
//! transactional keyspace, `regionkv_raft::txn::mvcc`) with the start timestamp, takes
//! a commit timestamp from the oracle, commits the record on the primary's region
//! (which writes the versions there) and resolves the other regions' locks at the
//! same commit timestamp. A key with a version committed at or after the start is a
//! write-write conflict: our locks are dropped and the caller gets
//! [`Error::Conflict`] (retryable: start a new transaction).

use std::collections::BTreeMap;

use bytes::Bytes;
use regionkv_engine::RegionId;
use regionkv_raft::Error as E;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::txn::{mvcc, staging};
use regionkv_raft::{Op, Query, QueryResult, RecordInit, SyncedTs, TxnCmd, TxnReply, TxnState};

use super::two_phase::{Prewritten, Stop};
use super::txn::{LockMet, Resolved};
use super::{Db, IntoBytes, IntoKeyRange};
use crate::defaults::{DB_FIRST_BACKOFF, DB_MAX_BACKOFF};
use crate::error::{Error, Result};

/// A snapshot-isolated transaction over user keys of any bytes (they live apart from
/// raw keys). Reads see the state committed before it started plus its own writes;
/// `commit` writes all of them or none. Dropped without `commit`: rolled back (its
/// writes are only buffered until then).
#[derive(Debug)]
pub struct Transaction {
    db: Db,
    start_ts: u64,
    /// Buffered writes by user key: `Some` a put, `None` a delete.
    writes: BTreeMap<Bytes, Option<Bytes>>,
}

impl Db {
    /// Starts a snapshot-isolated transaction: its start timestamp comes from the
    /// cluster's oracle ([`Db::timestamp`]).
    pub fn transaction(&self) -> Result<Transaction> {
        let start_ts = self.timestamp()?;
        Ok(Transaction { db: self.clone(), start_ts, writes: BTreeMap::new() })
    }
}

impl Transaction {
    /// The timestamp it reads at.
    pub fn start_ts(&self) -> u64 {
        self.start_ts
    }

    /// Buffers `key = value`.
    pub fn put(&mut self, key: impl IntoBytes, value: impl IntoBytes) {
        self.writes.insert(key.into_bytes(), Some(value.into_bytes()));
    }

    /// Buffers the removal of `key`.
    pub fn delete(&mut self, key: impl IntoBytes) {
        self.writes.insert(key.into_bytes(), None);
    }

    /// The value of `key` at the start timestamp, or this transaction's own write.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        if let Some(own) = self.writes.get(key) {
            return Ok(own.clone());
        }
        self.wait_out_lock(key)?;
        let from = mvcc::version_key(key, self.start_ts).to_vec();
        let end = mvcc::versions_end(key).to_vec();
        let newest = self.db.scan_raw(from, Some(&end), 1, Some(self.start_ts))?;
        match newest.first() {
            Some((_, stored)) => version_value(stored),
            None => Ok(None),
        }
    }

    /// Up to `limit` pairs of user keys in `range` at the start timestamp, this
    /// transaction's own writes included, in key order.
    pub fn scan(&self, range: impl IntoKeyRange, limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        let (start, end) = range.to_bounds();
        let store_end = end
            .as_deref()
            .map_or_else(|| vec![mvcc::TXN_KEYSPACE + 1], |e| mvcc::lock_key(e).to_vec());
        // A lock met on the way is resolved or waited for by the raw scan.
        let rows = self.db.scan_raw(
            mvcc::lock_key(&start).to_vec(),
            Some(&store_end),
            usize::MAX,
            Some(self.start_ts),
        )?;
        let mut seen: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
        for (key, stored) in rows {
            let Some((user, ts)) = mvcc::decode_version_key(&key) else { continue };
            if ts > self.start_ts || seen.contains_key(&user) {
                continue; // too new, or older than the newest visible one
            }
            seen.insert(user, version_value(&stored)?);
        }
        let in_range = |k: &Bytes| {
            k.as_ref() >= start.as_slice() && end.as_deref().is_none_or(|e| k.as_ref() < e)
        };
        for (k, v) in self.writes.iter().filter(|(k, _)| in_range(k)) {
            seen.insert(k.clone(), v.clone());
        }
        Ok(seen.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).take(limit).collect())
    }

    /// Drops the buffered writes (nothing was written).
    pub fn rollback(self) {}

    /// Writes every buffered write, all or nothing. A write-write conflict (a key
    /// committed by another transaction since this one started): [`Error::Conflict`],
    /// nothing written. In two phases, a live lock of another transaction is waited for
    /// per the `Db`'s [`LockWait`](super::LockWait) (resolved through its record
    /// meanwhile), then [`Error::Conflict`]; in one phase a lock is a `Conflict` at once.
    ///
    /// Keys all in one region, at cluster version 4: one phase, one Raft write (the
    /// region's leader chooses the commit timestamp above every snapshot read it
    /// served on the region). Otherwise, or below version 4: two phases, at a commit
    /// timestamp from the oracle. See [`Transaction::commit_ts`].
    pub fn commit(self) -> Result<()> {
        self.commit_ts().map(|_| ())
    }

    /// [`Transaction::commit`], answering the commit timestamp (`None`: nothing to
    /// write, nothing committed; or a one-phase commit whose first answer was lost,
    /// committed, its timestamp answered only to that lost copy).
    pub fn commit_ts(self) -> Result<Option<u64>> {
        self.commit_with(true)
    }

    /// [`Transaction::commit_ts`] in two phases whatever its keys (for comparisons:
    /// the benches, the tests).
    pub fn commit_two_phase(self) -> Result<Option<u64>> {
        self.commit_with(false)
    }

    fn commit_with(mut self, one_phase: bool) -> Result<Option<u64>> {
        let writes = std::mem::take(&mut self.writes);
        if writes.is_empty() {
            return Ok(None);
        }
        let ops: Vec<Op> = writes
            .into_iter()
            .map(|(user, value)| {
                let key = mvcc::lock_key(&user);
                match value {
                    Some(value) => Op::Put { key, value },
                    None => Op::Delete { key },
                }
            })
            .collect();
        if one_phase && let OnePhase::Committed(commit_ts) = self.commit_one_phase(&ops)? {
            return Ok(commit_ts);
        }
        if one_phase
            && self.db.si_async_on()
            && let Async::Committed(commit_ts) = self.commit_async(&ops)?
        {
            return Ok(commit_ts);
        }
        let txn_id = self.db.next_txn_id()?;
        let keys: Vec<Bytes> = ops.iter().map(|op| Bytes::copy_from_slice(op.key())).collect();
        let primary = keys[0].clone();
        if let Err(e) = self.prewrite_all(txn_id, &primary, &keys, ops) {
            self.resolve(txn_id, &keys, false, None);
            return Err(e);
        }
        let commit_ts = match self.db.timestamp() {
            Ok(ts) => ts,
            Err(e) => {
                self.resolve(txn_id, &keys, false, None);
                return Err(e);
            }
        };
        let cmd =
            TxnCmd::Commit { txn_id, primary_key: primary.clone(), commit_ts: Some(commit_ts) };
        match self.db.txn_call_for(&cmd, self.db.deadline)? {
            TxnReply::Status(TxnState::Committed { .. }) => {
                self.resolve(txn_id, &keys, true, Some(commit_ts));
                Ok(Some(commit_ts))
            }
            TxnReply::Status(TxnState::Aborted) => Err(Error::TxnAborted { txn_id }),
            _ => Err(Error::Indeterminate { txn_id, primary_key: primary }),
        }
    }

    /// Commits `ops` in one phase if they are all in one region, as the router knows
    /// it (`TxnCmd::OnePhase`): the commit timestamp, or `None` when two phases must
    /// do (the keys span regions, or the cluster runs below version 4).
    ///
    /// A leader that has no timestamp from the oracle since it became leader (or
    /// since its range changed) refuses with `ReadTsUnsynced`: the command is sent
    /// again with a timestamp taken after that answer. A lock met is resolved through
    /// its record (or, alive, is a conflict), as a prewrite does.
    /// Not one region (or version 3): commit in two phases. Numbered in one of
    /// the `Db`'s client sessions for every copy, so that a copy of a commit applied
    /// already is answered committed rather than meet its own versions as a conflict.
    fn commit_one_phase(&self, ops: &[Op]) -> Result<OnePhase> {
        let mut session = self.db.sessions.take()?;
        let numbered = super::Sessions::next_write(&mut session);
        let result = self.commit_one_phase_numbered(ops, numbered);
        self.db.sessions.give_back(session);
        result
    }

    fn commit_one_phase_numbered(
        &self,
        ops: &[Op],
        numbered: regionkv_raft::WriteSession,
    ) -> Result<OnePhase> {
        let region = |op: &Op| self.db.router.locate(op.key()).map(|r| r.region.id);
        let first = region(&ops[0]);
        if first.is_none() || ops.iter().any(|op| region(op) != first) {
            return Ok(OnePhase::NotOnePhase);
        }
        let mut synced = None;
        let started = std::time::Instant::now();
        let mut backoff = DB_FIRST_BACKOFF;
        // Bounded by the deadline: every turn that does not return sleeps, or asks
        // the oracle after a refusal that named a term.
        loop {
            if started.elapsed() >= self.db.deadline {
                return Err(Error::Unavailable {
                    waited: started.elapsed(),
                    last: "the one-phase commit did not finish".into(),
                });
            }
            let cmd = TxnCmd::OnePhase {
                start_ts: self.start_ts,
                ops: ops.to_vec(),
                commit_ts: None,
                synced,
                session: Some(numbered),
            };
            let err = match self.db.txn_call_for(&cmd, self.db.deadline) {
                Ok(TxnReply::Status(TxnState::Committed { commit_ts })) => {
                    return Ok(OnePhase::Committed(commit_ts));
                }
                Ok(other) => {
                    return Err(Error::Protocol(format!("a one-phase commit answered {other:?}")));
                }
                Err(e) => e,
            };
            match err {
                Error::FeatureNotActive { .. } | Error::CrossRegionBatch { .. } => {
                    return Ok(OnePhase::NotOnePhase);
                }
                Error::Store(E::ReadTsUnsynced { term, .. }) => {
                    if synced.is_some_and(|s: SyncedTs| s.term == term) {
                        // Given already in this term: a refusal again means another
                        // leader or range; wait a little before the next timestamp.
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(DB_MAX_BACKOFF);
                    }
                    // Taken after the refusal: above every read served before it.
                    synced = Some(SyncedTs { term, ts: self.db.timestamp()? });
                }
                Error::Store(E::WriteConflict { key, .. }) => {
                    let key = mvcc::decode_lock_key(&key).unwrap_or(key);
                    return Err(Error::Conflict { key, txn_id: 0 });
                }
                e => {
                    let Some(lock) = LockMet::of(&e) else { return Err(e) };
                    if self.db.resolve_lock(&lock, self.db.deadline)? != Resolved::Gone {
                        let key = mvcc::decode_lock_key(&lock.key).unwrap_or(lock.key);
                        return Err(Error::Conflict { key, txn_id: lock.txn_id });
                    }
                }
            }
        }
    }

    /// Commits `ops` (keys in several regions) asynchronously (cluster version 5;
    /// `regionkv_raft::txn::staging`): every prewrite at once, each asking its leader
    /// for a minimum commit timestamp, the primary's creating the record `Staging`;
    /// once all applied the transaction is committed at the largest, answered here,
    /// and decided and resolved by the resolver thread. A prewrite answered without
    /// a timestamp (a node of an older binary): the record is decided first, at the
    /// larger of a fresh oracle timestamp and what was learned, and the decision is
    /// the answer. `None`: the cluster runs below version 5, nothing of it is left:
    /// commit in two phases.
    fn commit_async(&self, ops: &[Op]) -> Result<Async> {
        let start = std::time::Instant::now();
        let deadline = self.db.deadline;
        let txn_id = self.db.next_txn_id()?;
        let mut plan = TxnPlan::new(txn_id, ops.to_vec(), self.db.txn_ttl_ms, None)
            .snapshot_async(self.start_ts);
        let _span = tracing::debug_span!("db.snapshot_async", txn_id).entered();
        // Bounded: a new id only after a region refused the last as too old.
        loop {
            let commit_ts = match self.db.prewrite_all(&plan, start, deadline) {
                Ok(Prewritten::Staged(Some(ts))) => ts,
                // A node answered without a timestamp: the record is decided before
                // the answer.
                Ok(Prewritten::Staged(None)) => {
                    return self.decide_first(plan).map(Async::Committed);
                }
                // The primary's node did not confirm the staging flag (an older
                // binary): its record is `Pending`, committed as in two phases.
                Ok(Prewritten::Unstaged) => {
                    return self.commit_unstaged(plan).map(Async::Committed);
                }
                Err(Stop::Fail(Error::FeatureNotActive { feature, .. }))
                    if feature == regionkv_raft::version::TXN_V3.name
                        || feature == regionkv_raft::version::TXN_V2.name =>
                {
                    self.db.si_async_refused();
                    let why = Error::TxnAborted { txn_id: plan.txn_id };
                    return match self.db.abandon_async(&plan, why) {
                        Err(Error::TxnAborted { .. }) => Ok(Async::NotActive),
                        Ok(commit_ts) => Ok(Async::Committed(commit_ts)),
                        Err(e) => Err(e),
                    };
                }
                Err(Stop::Fail(e)) => {
                    // A lock met names its lock key: the caller knows user keys.
                    let e = match e {
                        Error::Conflict { key, txn_id } => Error::Conflict {
                            key: mvcc::decode_lock_key(&key).unwrap_or(key),
                            txn_id,
                        },
                        e => e,
                    };
                    return self.db.abandon_async(&plan, e).map(Async::Committed);
                }
                Err(Stop::TooOld) => {
                    let why = Error::TxnAborted { txn_id: plan.txn_id };
                    if let Err(e @ Error::Indeterminate { .. }) = self.db.abandon_async(&plan, why)
                    {
                        return Err(e);
                    }
                    self.db.txn.ids.discard();
                    if start.elapsed() >= deadline {
                        return Err(Error::Unavailable {
                            waited: start.elapsed(),
                            last: format!("transaction {} was too old for a region", plan.txn_id),
                        });
                    }
                    plan = TxnPlan { txn_id: self.db.next_txn_id()?, ..plan };
                    continue;
                }
            };
            plan.commit_ts = Some(commit_ts);
            self.db.committed_async(plan);
            return Ok(Async::Committed(Some(commit_ts)));
        }
    }

    /// Every prewrite applied, one answered without a minimum commit timestamp: the
    /// record is decided before the caller is answered, at the larger of a fresh
    /// oracle timestamp (above every read served before now) and the record's own
    /// (added at apply); a checker that decided first wins, and its decision is the
    /// answer.
    fn decide_first(&self, mut plan: TxnPlan) -> Result<Option<u64>> {
        plan.commit_ts = Some(self.db.timestamp()?);
        let state =
            staging::decided_state(&self.db.txn_call_for(&plan.decide(true), self.db.deadline)?);
        match state {
            Some(TxnState::Committed { commit_ts }) => {
                plan.commit_ts = commit_ts;
                self.db.committed_async(plan);
                Ok(commit_ts)
            }
            Some(TxnState::Aborted) => Err(Error::TxnAborted { txn_id: plan.txn_id }),
            _ => Err(Error::Indeterminate { txn_id: plan.txn_id, primary_key: plan.primary_key() }),
        }
    }

    /// The end of an attempt whose primary prewrite was not confirmed staging: a node
    /// of an older binary applied it as a two-phase one (its record `Pending`, which
    /// nobody else would ever decide, and it knows no `Decide`). Every prewrite
    /// applied: committed at a fresh timestamp, as the two-phase path does. A record
    /// that is `Staging` after all (a copy reached a node that read the flag) refuses
    /// the commit, and is decided as a staging one.
    fn commit_unstaged(&self, plan: TxnPlan) -> Result<Option<u64>> {
        let commit_ts = self.db.timestamp()?;
        let (txn_id, primary_key) = (plan.txn_id, plan.primary_key());
        let cmd =
            TxnCmd::Commit { txn_id, primary_key: primary_key.clone(), commit_ts: Some(commit_ts) };
        match self.db.txn_call_for(&cmd, self.db.deadline) {
            Ok(TxnReply::Status(TxnState::Committed { .. })) => {
                self.resolve(txn_id, &plan.keys(), true, Some(commit_ts));
                Ok(Some(commit_ts))
            }
            Ok(TxnReply::Status(TxnState::Aborted)) => Err(Error::TxnAborted { txn_id }),
            Err(Error::Store(E::InvalidRequest(_))) => self.decide_first(plan),
            Ok(_) => Err(Error::Indeterminate { txn_id, primary_key }),
            Err(e) => Err(e),
        }
    }

    /// Prewrites `ops` region by region (regrouped as regions change).
    fn prewrite_all(
        &self,
        txn_id: u64,
        primary: &Bytes,
        keys: &[Bytes],
        ops: Vec<Op>,
    ) -> Result<()> {
        let mut todo = ops;
        let mut backoff = DB_FIRST_BACKOFF;
        let started = std::time::Instant::now();
        // Bounded by the deadline: every turn that leaves work resolves or sleeps.
        while !todo.is_empty() {
            if started.elapsed() >= self.db.deadline {
                return Err(Error::Unavailable {
                    waited: started.elapsed(),
                    last: format!("the prewrites of transaction {txn_id} did not finish"),
                });
            }
            let mut groups: BTreeMap<RegionId, Vec<Op>> = BTreeMap::new();
            for op in std::mem::take(&mut todo) {
                let region = self.db.router.locate(op.key()).map_or(RegionId(0), |r| r.region.id);
                groups.entry(region).or_default().push(op);
            }
            for ops in groups.into_values() {
                let record = ops.iter().any(|op| op.key() == primary.as_ref()).then(|| {
                    RecordInit { participants: keys.to_vec(), coordinator: None, staging: false }
                });
                let cmd = TxnCmd::Prewrite {
                    txn_id,
                    primary_key: primary.clone(),
                    ops: ops.clone(),
                    ttl_ms: self.db.txn_ttl_ms,
                    record,
                    start_ts: Some(self.start_ts),
                    session: None,
                    min_commit: None,
                };
                match self.db.txn_call_for(&cmd, self.db.deadline) {
                    Ok(_) => {}
                    Err(Error::CrossRegionBatch { .. }) => todo.extend(ops),
                    Err(Error::Store(E::WriteConflict { key, .. })) => {
                        let key = mvcc::decode_lock_key(&key).unwrap_or(key);
                        return Err(Error::Conflict { key, txn_id });
                    }
                    Err(e) => {
                        let Some(lock) = LockMet::of(&e) else { return Err(e) };
                        if self.db.resolve_lock(&lock, self.db.deadline)? != Resolved::Gone
                            && !self.db.may_wait_for_lock(started.elapsed() + backoff)
                        {
                            let key = mvcc::decode_lock_key(&lock.key).unwrap_or(lock.key);
                            return Err(Error::Conflict { key, txn_id: lock.txn_id });
                        }
                        todo.extend(ops);
                    }
                }
            }
            if !todo.is_empty() {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(DB_MAX_BACKOFF);
            }
        }
        Ok(())
    }

    /// Resolves (commits at `commit_ts`, or drops) the transaction's locks on `keys`,
    /// one key at a time, best effort: a lock left is resolved by a reader or the
    /// recovery daemon through the record.
    fn resolve(&self, txn_id: u64, keys: &[Bytes], commit: bool, commit_ts: Option<u64>) {
        for key in keys {
            let cmd = TxnCmd::Resolve { txn_id, keys: vec![key.clone()], commit, commit_ts };
            let _ = self.db.txn_call_for(&cmd, self.db.deadline);
        }
    }

    /// Waits out a lock on `user`'s lock key held by a transaction that started at or
    /// before this one (resolved through its record, or waited for); a lock of a
    /// transaction that started later cannot commit below our start: ignored.
    fn wait_out_lock(&self, user: &[u8]) -> Result<()> {
        let key = mvcc::lock_key(user);
        let started = std::time::Instant::now();
        let mut backoff = DB_FIRST_BACKOFF;
        // Bounded by the deadline: every turn that does not return sleeps or resolves.
        loop {
            let err = match self.db.call(&key, self.db.deadline, |backend, store, region, reply| {
                backend.read(
                    store,
                    regionkv_raft::ReadRequest {
                        region: region.id,
                        epoch: region.epoch,
                        query: Query::Get { key: key.clone(), read_ts: Some(self.start_ts) },
                        reply,
                    },
                );
                Ok(())
            }) {
                Ok(QueryResult::Value(_) | QueryResult::Rows(_)) => return Ok(()),
                Err(e) => e,
            };
            if let Error::Store(E::Locked { lock_start_ts: Some(ts), .. }) = &err
                && *ts > self.start_ts
            {
                return Ok(());
            }
            let Some(lock) = LockMet::of(&err) else { return Err(err) };
            if started.elapsed() >= self.db.deadline {
                return Err(lock.conflict());
            }
            let resolved = self.db.resolve_lock(&lock, self.db.deadline)?;
            if resolved != Resolved::Gone {
                // Per the `Db`'s lock wait, as a commit (a deciding holder: the deadline).
                let patience = self.db.lock_patience(&resolved, self.db.deadline);
                if patience.is_none_or(|p| started.elapsed() + backoff >= p) {
                    return Err(lock.conflict());
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(DB_MAX_BACKOFF);
            }
        }
    }
}

/// A stored version's value (`None`: a delete).
fn version_value(stored: &Bytes) -> Result<Option<Bytes>> {
    mvcc::decode_version_value(stored)
        .map_err(|why| Error::Protocol(format!("a version of the transactional keyspace: {why}")))
}

/// How an async commit of a snapshot transaction ended.
enum Async {
    /// The cluster runs below version 5: nothing of it is left; commit in two phases.
    NotActive,
    /// Committed at this timestamp (`None`: a checker decided it, and its answer
    /// carried none).
    Committed(Option<u64>),
}

/// How a one-phase commit ended.
enum OnePhase {
    /// Not one region, or the cluster is below version 4: commit in two phases.
    NotOnePhase,
    /// Committed; its timestamp, unless only a resent copy was answered (the first
    /// copy's answer, which carried it, was lost).
    Committed(Option<u64>),
}
