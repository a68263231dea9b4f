//! [`Db::write`] of a batch that spans regions: two-phase commit by
//! [`TxnPlan`] (ARCHITECTURE.md, "Transactions").
//!
//! 1. A transaction id from the `Db`'s batch of directory ids; the primary is the
//!    batch's smallest key.
//! 2. Prewrite every region's part in parallel: all sent from the caller's thread to
//!    the leaders routing knows, their answers awaited together; only a part that
//!    could not go so (no leader known, the region moved, no answer in time) takes
//!    the routed, retried path, one thread per such part. A part whose region changed
//!    meanwhile is grouped again by fresh routing and prewritten again (prewrite is
//!    idempotent per key). Each part is numbered in a client session, the same number
//!    for every copy, so a copy that comes after the transaction locks nothing
//!    (ARCHITECTURE.md, "Exactly once"). A lock of another transaction is resolved
//!    through its record, or (alive) waited for per [`LockWait`], else our own locks
//!    are dropped and the caller gets [`Error::Conflict`]. The record is heartbeated
//!    while the prewrites run past half the TTL.
//! 3. Commit on the primary's region: the decision; the caller is answered once it
//!    is applied. No definite answer before the deadline: one more status check,
//!    then [`Error::Indeterminate`].
//! 4. Resolve the other regions' locks in the background: sent from the caller's
//!    thread without waiting; a part that fails goes to the `Db`'s one resolver
//!    thread (bounded queue; when it is full the locks are left to readers and the
//!    recovery daemon). A reader that meets one first resolves it itself; errors
//!    there are never the caller's.
//!
//! At cluster version 4 a spanning batch commits asynchronously instead
//! (`async_commit.rs`): the same prewrite phase creates the record `Staging`, every
//! prewrite applied is the answer, and steps 3 and 4 run batched in the resolver
//! thread; the level-1 steps above are the path below version 4.
//!
//! Giving up before the commit (a conflict, a refusal): our locks are dropped
//! (`Resolve { commit: false }`, safe because we never commit), and the record is
//! left `Pending` until its TTL, when any reader or the recovery daemon aborts it:
//! the TXN commands have no explicit rollback of a live record.

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use regionkv_engine::RegionId;
use regionkv_raft::Error as E;
use regionkv_raft::txn::plan::{MAX_TXN_KEYS, TxnPlan};
use regionkv_raft::{Op, Reply, SyncedTs, TxnCmd, TxnReply, TxnRequest, TxnState, WriteSession};

use super::async_commit::Given;
use super::seams::SeamStep;
use super::txn::{LockMet, LockWait, ResolveJob, Resolved};
use super::{Db, Session, Sessions};
use crate::defaults::{DB_ATTEMPT_TIMEOUT, DB_FIRST_BACKOFF, DB_MAX_BACKOFF};
use crate::error::{Error, Result};

/// How a prewrite phase ended that applied every part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prewritten {
    /// Every answer was a plain `Done` or `Prewritten` (a staging plan's primary
    /// confirmed `Staging`); for a snapshot plan committed asynchronously, the commit
    /// timestamp if every prewrite answered a minimum commit timestamp.
    Staged(Option<u64>),
    /// The primary's answer did not confirm the staging flag (`TxnReply::Unstaged`: a
    /// node of an older binary): its record may be `Pending`.
    Unstaged,
}

/// How a prewrite phase ended, short of success.
pub(super) enum Stop {
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
        // Bounded: a new id only after a region refused the last as too old, or
        // after the cluster refused async commit (once: then it is off).
        loop {
            let txn_id = self.next_txn_id()?;
            let staging = self.async_commit_on();
            let plan =
                TxnPlan::new(txn_id, ops.to_vec(), self.txn_ttl_ms, None).with_staging(staging);
            let _span =
                tracing::debug_span!("db.txn_write", txn_id, staging, keys = plan.ops.len())
                    .entered();
            if staging {
                match self.write_staging(plan, start, deadline) {
                    Given::NotActive => {
                        self.async_commit_refused();
                        continue;
                    }
                    Given::Done(outcome) => return outcome,
                }
            }
            match self.prewrite_all(&plan, start, deadline) {
                Ok(_) => return self.commit(&plan, start, deadline),
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

    /// Async commit: prewrites every part (the record `Staging`); all applied is the
    /// commit (`async_commit.rs`). A region that refused the id as too old: a new id.
    fn write_staging(&self, plan: TxnPlan, start: Instant, deadline: Duration) -> Given {
        let mut plan = plan;
        // Bounded: a new id only after a region refused the last as too old.
        loop {
            match self.prewrite_all(&plan, start, deadline) {
                Ok(Prewritten::Staged(_)) => {
                    self.committed_async(plan);
                    return Given::Done(Ok(()));
                }
                // A node of an older binary applied the primary's prewrite as a plain
                // one, its record `Pending`: nobody would ever decide it, so this
                // transaction commits in two phases.
                Ok(Prewritten::Unstaged) => {
                    return Given::Done(self.commit_unstaged(plan, start, deadline));
                }
                Err(Stop::Fail(Error::FeatureNotActive { feature, .. }))
                    if feature == regionkv_raft::version::TXN_V2.name =>
                {
                    // Refused before anything was proposed in every region that
                    // answered so; a region that took its part is settled like any
                    // given-up transaction.
                    let why = Error::TxnAborted { txn_id: plan.txn_id };
                    return match self.abandon_async(&plan, why) {
                        Err(Error::TxnAborted { .. }) => Given::NotActive,
                        other => Given::Done(other.map(|_| ())),
                    };
                }
                Err(Stop::Fail(e)) => return Given::Done(self.abandon_async(&plan, e).map(|_| ())),
                Err(Stop::TooOld) => {
                    let why = Error::TxnAborted { txn_id: plan.txn_id };
                    if let Err(e @ Error::Indeterminate { .. }) = self.abandon_async(&plan, why) {
                        return Given::Done(Err(e));
                    }
                    self.txn.ids.discard();
                    if start.elapsed() >= deadline {
                        return Given::Done(Err(Error::Unavailable {
                            waited: start.elapsed(),
                            last: format!("transaction {} was too old for a region", plan.txn_id),
                        }));
                    }
                    let txn_id = match self.next_txn_id() {
                        Ok(id) => id,
                        Err(e) => return Given::Done(Err(e)),
                    };
                    plan = TxnPlan { txn_id, ..plan };
                }
            }
        }
    }

    /// The end of a staging transaction whose primary prewrite was not confirmed
    /// (every prewrite applied): the level-1 commit. A record that is `Staging` after
    /// all (a copy of the prewrite reached a node that read the flag) refuses the
    /// commit; with every prewrite applied it is committed, and decided so.
    fn commit_unstaged(&self, plan: TxnPlan, start: Instant, deadline: Duration) -> Result<()> {
        match self.commit(&plan, start, deadline) {
            Err(Error::Store(E::InvalidRequest(_))) => {
                self.committed_async(plan);
                Ok(())
            }
            other => other,
        }
    }

    /// Prewrites every part of `plan`, regrouping by fresh routing as regions change;
    /// whether every answer confirmed the staging flag of an async-commit plan, and
    /// for a snapshot plan committed asynchronously its commit timestamp: the largest
    /// minimum commit timestamp the prewrites answered (`None` if one answered
    /// without: see `regionkv_raft::txn::staging`). A region whose leader refused as
    /// unsynced gets its part again with a timestamp taken after that.
    pub(super) fn prewrite_all(
        &self,
        plan: &TxnPlan,
        start: Instant,
        deadline: Duration,
    ) -> Result<Prewritten, Stop> {
        let mut unstaged = false;
        let mut todo: Vec<Op> = plan.ops.clone();
        let mut beat = Beat::new(plan);
        let mut backoff = DB_FIRST_BACKOFF;
        let mut replies: Vec<TxnReply> = Vec::new();
        let mut synced: BTreeMap<RegionId, SyncedTs> = BTreeMap::new();
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
            let mut failed: Option<Stop> = None;
            let mut locked: Vec<LockMet> = Vec::new();
            for (ops, r) in self.prewrite_parts(plan, groups, &synced, left, &mut beat) {
                match r {
                    Ok(TxnReply::Unstaged) => unstaged = true,
                    Ok(reply) => replies.push(reply),
                    // The part's region changed: group its keys again.
                    Err(Error::CrossRegionBatch { .. }) => todo.extend(ops),
                    Err(Error::Store(E::ReadTsUnsynced { region, term })) => {
                        // Taken after the refusal: above every read served before it.
                        match self.timestamp() {
                            Ok(ts) => {
                                synced.insert(region, SyncedTs { term, ts });
                                todo.extend(ops);
                            }
                            Err(e) => {
                                failed.get_or_insert(Stop::Fail(e));
                            }
                        }
                    }
                    Err(Error::Store(E::WriteConflict { key, .. })) => {
                        let key = regionkv_raft::txn::mvcc::decode_lock_key(&key).unwrap_or(key);
                        let txn_id = plan.txn_id;
                        failed.get_or_insert(Stop::Fail(Error::Conflict { key, txn_id }));
                    }
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
            if let Some(stop) = failed {
                return Err(stop);
            }
            self.beat_if_due(plan, &mut beat);
            let mut alive = None;
            for lock in &locked {
                let left = deadline.saturating_sub(start.elapsed());
                match self.resolve_lock(lock, left) {
                    Ok(Resolved::Gone) => {}
                    Ok(Resolved::Alive | Resolved::Deciding) => alive = Some(lock.clone()),
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
        Ok(if unstaged {
            Prewritten::Unstaged
        } else {
            Prewritten::Staged(regionkv_raft::txn::staging::commit_ts_of(&replies))
        })
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
        let state = match self.seamed_call(SeamStep::Commit, &plan.commit(), left) {
            Ok(TxnReply::Status(state)) => state,
            Ok(_) => return Err(Error::Protocol("a commit answered no status".into())),
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
        let check = plan.check_status(false);
        match self.seamed_call(SeamStep::StatusAfterCommit, &check, DB_ATTEMPT_TIMEOUT) {
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
    pub(super) fn resolve_keys(&self, plan: &TxnPlan, keys: Vec<Bytes>, commit: bool) {
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
    /// commit) without waiting: each region's part is sent from this thread to the
    /// leader routing knows; a part that cannot be sent so, or whose answer is an
    /// error, goes to the resolver thread (routed and retried there). The caller never
    /// waits for them (a reader that meets such a lock first resolves it itself).
    fn resolve_in_background(&self, plan: &TxnPlan, commit: bool) {
        let primary_region = self.router.locate(&plan.primary_key()).map(|r| r.region);
        let mut groups: BTreeMap<RegionId, Vec<Bytes>> = BTreeMap::new();
        for key in plan.keys() {
            if primary_region.as_ref().is_some_and(|r| r.contains(&key)) {
                continue;
            }
            let region = self.router.locate(&key).map_or(RegionId(0), |r| r.region.id);
            groups.entry(region).or_default().push(key);
        }
        if groups.is_empty() {
            return;
        }
        let queue = self.resolver();
        let plan = Arc::new(plan.clone());
        for keys in groups.into_values() {
            let job =
                ResolveJob { plan: Arc::clone(&plan), keys: keys.clone(), commit, decide: false };
            let on_error = queue.clone();
            let reply: Reply<TxnReply> = Box::new(move |r| {
                if r.is_err() {
                    job.enqueue(on_error.as_ref());
                }
            });
            if !self.send_to_leader(plan.resolve(keys.clone(), commit), reply) {
                ResolveJob { plan: Arc::clone(&plan), keys, commit, decide: false }
                    .enqueue(queue.as_ref());
            }
        }
    }
}

/// The answers to prewrites sent together, for the one thread that waits for them:
/// woken once, when the last has answered.
#[derive(Default)]
struct Gather {
    state: Mutex<Gathered>,
    done: Condvar,
}

#[derive(Default)]
struct Gathered {
    /// Answers not taken yet: the part's index, the answer.
    answers: Vec<(usize, regionkv_raft::Result<TxnReply>)>,
    /// Answers so far.
    received: usize,
    /// Answers to wait for (every part's reply answers once, sent or not; 0 until all
    /// are made, when nobody waits yet).
    expected: usize,
}

/// The reply of one part sent by [`Db::prewrite_parts`]. Dropped unanswered (its
/// request was lost), it answers `Cancelled`: the part goes the routed way at once.
struct Part {
    gather: Arc<Gather>,
    index: usize,
    answered: bool,
}

impl Part {
    fn answer(mut self, r: regionkv_raft::Result<TxnReply>) {
        self.answered = true;
        self.put(r);
    }

    fn put(&self, r: regionkv_raft::Result<TxnReply>) {
        let mut state = self.gather.state.lock();
        state.answers.push((self.index, r));
        state.received += 1;
        if state.received >= state.expected {
            self.gather.done.notify_one();
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.answered {
            self.put(Err(E::Cancelled));
        }
    }
}

/// When the record of a transaction whose prewrites run is heartbeated: every half
/// TTL, once the primary's part (which writes the record) is prewritten.
struct Beat {
    half_ttl: Duration,
    last: Instant,
    primary_done: bool,
}

impl Beat {
    fn new(plan: &TxnPlan) -> Beat {
        Beat {
            half_ttl: Duration::from_millis(plan.ttl_ms / 2),
            last: Instant::now(),
            primary_done: false,
        }
    }

    /// How long to wait for an answer before looking at the heartbeat again.
    fn poll(&self) -> Duration {
        self.half_ttl.max(Duration::from_millis(1))
    }
}

/// The prewrite of `ops`, numbered in its client session if it has one, with the
/// timestamp synced for its region if it has one.
fn numbered(
    plan: &TxnPlan,
    ops: Vec<Op>,
    (number, synced): (Option<WriteSession>, Option<SyncedTs>),
) -> TxnCmd {
    plan.prewrite_synced(ops, number, synced)
}

/// A part's number in its client session and the timestamp synced for its region.
type Numbered = (Option<WriteSession>, Option<SyncedTs>);

/// True if `e`, the answer to one attempt, is the command's own outcome (what
/// [`Db::txn_call_for`] would return at once); false if the command must go the
/// routed, retried way (the region moved, changed or is not led there, or the store
/// could not take it).
fn definite(e: &E) -> bool {
    !matches!(
        e,
        E::NotLeader { .. }
            | E::EpochNotMatch { .. }
            | E::KeyNotInRegion { .. }
            | E::RegionNotFound { .. }
    ) && !e.is_retryable()
        && !e.is_cancelled()
}

impl Db {
    /// Prewrites the parts `groups` once each: first sent together from this thread
    /// to the leaders routing knows, their answers awaited here; a part that could not
    /// be sent that way, or whose answer says its region moved or was not led there,
    /// or came not within an attempt's time, goes on by [`Db::prewrite_routed`]
    /// (prewrite is idempotent per key, so a second copy is harmless). Each part is
    /// answered once, with what [`Db::txn_call_for`] would answer.
    ///
    /// Each part is numbered in a client session of the `Db`'s pool, one number for
    /// every copy of it, and its session goes back once every part is answered: a
    /// region that applied the part answers a later copy `Done` and locks nothing,
    /// even after its locks were resolved (ARCHITECTURE.md, "Exactly once").
    fn prewrite_parts(
        &self,
        plan: &TxnPlan,
        groups: BTreeMap<RegionId, Vec<Op>>,
        synced: &BTreeMap<RegionId, SyncedTs>,
        left: Duration,
        beat: &mut Beat,
    ) -> Vec<(Vec<Op>, Result<TxnReply>)> {
        let start = Instant::now();
        let primary = plan.primary_key();
        let mut answers = Vec::with_capacity(groups.len());
        let mut routed: Vec<(Vec<Op>, Numbered)> = Vec::new();
        let gather = Arc::new(Gather::default());
        let mut sent: Vec<Option<Vec<Op>>> = Vec::with_capacity(groups.len());
        // Without a session (no randomness for a new id) a part goes unnumbered, as
        // before sessions: idempotent per key while its locks are there.
        let mut sessions: Vec<Session> = Vec::with_capacity(groups.len());
        let mut numbers: Vec<Numbered> = Vec::with_capacity(groups.len());
        for (region, ops) in groups {
            let number = self.sessions.take().ok().map(|mut session| {
                let number = Sessions::next_write(&mut session);
                sessions.push(session);
                number
            });
            let number = (number, synced.get(&region).copied());
            numbers.push(number);
            let part = Part { gather: Arc::clone(&gather), index: sent.len(), answered: false };
            let reply: Reply<TxnReply> = Box::new(move |r| part.answer(r));
            if !self.seam_routes(plan, &ops)
                && self.send_to_leader(numbered(plan, ops.clone(), number), reply)
            {
                sent.push(Some(ops));
            } else {
                // Its reply was dropped: it answers `Cancelled`, which is ignored.
                sent.push(None);
                routed.push((ops, number));
            }
        }
        let until = start + DB_ATTEMPT_TIMEOUT.min(left);
        let mut waiting = sent.iter().flatten().count();
        let mut state = gather.state.lock();
        state.expected = sent.len();
        // Bounded: each part answers at most once, and no longer than `until`.
        while waiting > 0 {
            for (i, r) in std::mem::take(&mut state.answers) {
                let Some(ops) = sent.get_mut(i).and_then(Option::take) else { continue };
                waiting -= 1;
                match r {
                    Ok(reply) => {
                        beat.primary_done |= ops.iter().any(|op| op.key() == primary.as_ref());
                        answers.push((ops, Ok(reply)));
                    }
                    Err(e) if definite(&e) => answers.push((ops, Err(e.into()))),
                    Err(_) => routed.push((ops, numbers.get(i).copied().unwrap_or_default())),
                }
            }
            let now = Instant::now();
            if waiting == 0 || now >= until {
                break;
            }
            if state.received < state.expected {
                let wake = until.min(now + beat.poll());
                if gather.done.wait_until(&mut state, wake).timed_out() {
                    parking_lot::MutexGuard::unlocked(&mut state, || self.beat_if_due(plan, beat));
                }
            }
        }
        drop(state);
        // No answer in time: the outcome is unknown, sending again (the same number)
        // is safe.
        for (i, ops) in sent.into_iter().enumerate() {
            if let Some(ops) = ops {
                routed.push((ops, numbers.get(i).copied().unwrap_or_default()));
            }
        }
        if !routed.is_empty() {
            let left = left.saturating_sub(start.elapsed());
            answers.extend(self.prewrite_routed(plan, routed, left, beat));
        }
        // Every part answered: its number is the session's last, whatever happened.
        for session in sessions {
            self.sessions.give_back(session);
        }
        answers
    }

    /// Prewrites `parts` (each with its number) by the routed, retried path
    /// ([`Db::txn_call_for`]), one thread per part, heartbeating the record
    /// meanwhile. The slow path of [`Db::prewrite_parts`]: regions that moved or
    /// changed leader, stores that did not answer.
    fn prewrite_routed(
        &self,
        plan: &TxnPlan,
        parts: Vec<(Vec<Op>, Numbered)>,
        left: Duration,
        beat: &mut Beat,
    ) -> Vec<(Vec<Op>, Result<TxnReply>)> {
        let primary = plan.primary_key();
        let count = parts.len();
        let mut answers = Vec::with_capacity(count);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            for (ops, number) in parts {
                let tx = tx.clone();
                scope.spawn(move || {
                    self.seam_hold(plan, &ops);
                    let cmd = numbered(plan, ops.clone(), number);
                    let r = self.txn_call_for(&cmd, left);
                    let _ = tx.send((ops, r));
                });
            }
            // Bounded: each part answers once (its call is bounded by `left`).
            while answers.len() < count {
                let Ok((ops, r)) = rx.recv_timeout(beat.poll()) else {
                    self.beat_if_due(plan, beat);
                    continue;
                };
                if r.is_ok() {
                    beat.primary_done |= ops.iter().any(|op| op.key() == primary.as_ref());
                }
                answers.push((ops, r));
            }
        });
        answers
    }

    /// Heartbeats `plan`'s record if it is due.
    fn beat_if_due(&self, plan: &TxnPlan, beat: &mut Beat) {
        if beat.primary_done && beat.last.elapsed() >= beat.half_ttl {
            let _ = self.txn_call_for(&plan.heartbeat(), DB_ATTEMPT_TIMEOUT);
            beat.last = Instant::now();
        }
    }

    /// Sends `cmd` once, its answer to `reply`, to the leader routing knows for the
    /// region of its keys. False, and nothing sent (`reply` dropped unanswered), if
    /// routing knows no such leader or the keys are not all in one region there.
    pub(super) fn send_to_leader(&self, cmd: TxnCmd, reply: Reply<TxnReply>) -> bool {
        let backend = self.router.backend();
        let Some(record) = cmd.keys().first().and_then(|k| self.router.locate(k)) else {
            return false;
        };
        let Some(store) = record.leader else { return false };
        let region = record.region;
        if backend.is_shut() || cmd.keys().into_iter().any(|k| !region.contains(k)) {
            return false;
        }
        backend.txn(store, TxnRequest { region: region.id, epoch: region.epoch, cmd, reply });
        true
    }
}

#[cfg(test)]
#[path = "two_phase_tests.rs"]
mod tests;
