//! Transactions through `Db`: a batch that spans regions is written by two-phase
//! commit ([`regionkv_raft::txn::plan`], `two_phase.rs`); reads and one-region writes
//! that meet a lock resolve it through the holder's record ([`Db::txn_call`] carries
//! every command); [`Db::txn_outcome`] asks a record later (ARCHITECTURE.md,
//! "Transactions").

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use regionkv_raft::Error as E;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{TxnCmd, TxnReply, TxnRequest, TxnState};

use super::Db;
use crate::defaults::{DB_FIRST_BACKOFF, DB_MAX_BACKOFF};
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

/// What a write, or a read, does when a key it needs holds another live transaction's
/// lock (a read or a write waits for an async-commit holder, whose record is
/// `Staging`, until the deadline whatever this says: it may be committed already).
///
/// Deadlocks (two batches each holding a key the other needs) are not detected: they
/// are broken by the wait timeout. With `NoWait` a conflict is answered at once, so
/// no cycle of waits forms; with `Wait(t)` each waiter gives up after `t` (aborting
/// its own transaction), which releases what it held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockWait {
    /// Answer [`Error::Conflict`] at once (the default; retryable).
    #[default]
    NoWait,
    /// Retry for up to this long (within the call's deadline), then answer
    /// [`Error::Conflict`].
    Wait(Duration),
}

/// How many transaction ids a `Db` takes from the directory at a time.
const TXN_ID_BATCH: u64 = 256;

/// The transaction ids a `Db` and its clones allocated and not used yet.
#[derive(Debug, Default)]
pub(super) struct TxnIds {
    /// `next .. end`.
    range: Mutex<(u64, u64)>,
    /// Held by the one clone that refills the range: the others wait for its batch
    /// instead of each asking the directory for one.
    refill: Mutex<()>,
}

impl TxnIds {
    /// Forgets the ids not used yet (a region refused one as too old: the others of
    /// the batch are older still).
    pub(super) fn discard(&self) {
        *self.range.lock() = (0, 0);
    }
}

/// Milliseconds since the Unix epoch, by this process's clock (lock expiry is judged
/// again by the region's leader, with its own clock).
pub(super) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A lock met by a read or a write: the fields of `Error::Locked`.
#[derive(Clone, Debug)]
pub(super) struct LockMet {
    pub key: Bytes,
    pub txn_id: u64,
    pub primary_key: Bytes,
    pub expires_at_ms: u64,
}

impl LockMet {
    /// The lock of a `Locked` refusal, if `e` is one.
    pub(super) fn of(e: &Error) -> Option<LockMet> {
        match e {
            Error::Store(E::Locked { key, txn_id, primary_key, expires_at_ms, .. }) => {
                Some(LockMet {
                    key: key.clone(),
                    txn_id: *txn_id,
                    primary_key: primary_key.clone(),
                    expires_at_ms: *expires_at_ms,
                })
            }
            _ => None,
        }
    }

    pub(super) fn conflict(&self) -> Error {
        Error::Conflict { key: self.key.clone(), txn_id: self.txn_id }
    }
}

/// What resolving a lock came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolved {
    /// The lock is gone (applied or dropped): try again.
    Gone,
    /// Its transaction is alive: wait, or give up.
    Alive,
    /// Its record is `Staging` within its TTL (async commit): the transaction may be
    /// committed already (every prewrite applied), its decision moments away. Reads
    /// and writes wait for it (until the TTL, when the participant check decides it)
    /// whatever the `LockWait`, so that a batch is visible, and its keys writable by
    /// the next transaction, right after its `Ok`.
    Deciding,
}

impl Db {
    /// Sends one transaction command to the region holding its first key (routed and
    /// retried like every request until the deadline). Every command is idempotent,
    /// so an attempt whose answer was lost is sent again safely. Its keys must lie in
    /// one region ([`Error::CrossRegionBatch`] otherwise). The refusals come back as
    /// [`Error::Store`] with the Raft layer's error (`Locked`, `TxnNotFound`,
    /// `TxnTooOld`), except `TxnAborted`, which is [`Error::TxnAborted`].
    ///
    /// For tools and tests that drive the protocol by hand (the recovery daemon,
    /// a coordinator stopped half way); [`Db::write`] runs it for a batch.
    #[allow(clippy::needless_pass_by_value, reason = "the command is the caller's to give")]
    pub fn txn_call(&self, cmd: TxnCmd) -> Result<TxnReply> {
        self.txn_call_for(&cmd, self.deadline)
    }

    /// [`Db::txn_call`] with its own deadline.
    pub(super) fn txn_call_for(&self, cmd: &TxnCmd, deadline: Duration) -> Result<TxnReply> {
        let Some(first) = cmd.keys().first().map(|k| k.to_vec()) else {
            return Err(Error::InvalidRequest("a transaction command names no key".into()));
        };
        let _span = tracing::trace_span!("db.txn", txn = ?cmd.txn_id()).entered();
        self.call(&first, deadline, |backend, store, region, reply| {
            if let Some(outside) = cmd.keys().into_iter().find(|k| !region.contains(k)) {
                let other = self.router.locate(outside).map(|r| r.region.id);
                let regions = std::iter::once(region.id).chain(other).collect();
                return Err(Error::CrossRegionBatch { regions });
            }
            backend.txn(
                store,
                TxnRequest { region: region.id, epoch: region.epoch, cmd: cmd.clone(), reply },
            );
            Ok(())
        })
    }

    /// The outcome of transaction `txn_id` whose primary key is `primary_key` (both in
    /// [`Error::Indeterminate`]), read from its record. Changes nothing.
    pub fn txn_outcome(&self, txn_id: u64, primary_key: impl AsRef<[u8]>) -> Result<TxnOutcome> {
        let primary_key = Bytes::copy_from_slice(primary_key.as_ref());
        let cmd = TxnCmd::CheckStatus {
            txn_id,
            primary_key: primary_key.clone(),
            abort_if_expired: false,
        };
        match self.txn_call_for(&cmd, self.deadline)? {
            // Async commit past its TTL: the participant check decides it.
            TxnReply::Status(TxnState::Staging { expires_at_ms, participants })
                if now_ms() > expires_at_ms =>
            {
                outcome_of(txn_id, self.settle_staging(txn_id, &primary_key, &participants)?)
            }
            TxnReply::Status(state) => outcome_of(txn_id, state),
            _ => Err(Error::Protocol("a status check answered no status".into())),
        }
    }

    /// A fresh transaction id (from a batch this `Db` and its clones took from the
    /// directory).
    pub(super) fn next_txn_id(&self) -> Result<u64> {
        let take = || {
            let mut range = self.txn.ids.range.lock();
            (range.0 < range.1).then(|| {
                range.0 += 1;
                range.0 - 1
            })
        };
        if let Some(id) = take() {
            return Ok(id);
        }
        let _refill = self.txn.ids.refill.lock();
        // Another clone may have refilled while this one waited.
        if let Some(id) = take() {
            return Ok(id);
        }
        let first = self.router.backend().txn_ids(TXN_ID_BATCH, self.deadline)?;
        let mut range = self.txn.ids.range.lock();
        // Another clone may have refilled meanwhile: the newer batch wins, ids unused
        // are simply never used.
        if first >= range.1 {
            *range = (first + 1, first + TXN_ID_BATCH);
            Ok(first)
        } else {
            range.0 += 1;
            Ok(range.0 - 1)
        }
    }

    /// Resolves `lock` through its transaction's record: a committed transaction's
    /// lock is applied, an aborted (or expired, or forgotten) one's dropped; an alive
    /// one is left. The lock or its record cannot be read here (frozen):
    /// [`Error::Conflict`].
    pub(super) fn resolve_lock(&self, lock: &LockMet, deadline: Duration) -> Result<Resolved> {
        if lock.txn_id == 0 || lock.primary_key.is_empty() {
            // A lock this binary's stores cannot read (it names no holder): nothing
            // here can resolve it.
            return Err(lock.conflict());
        }
        let expired = now_ms() > lock.expires_at_ms;
        let check = TxnCmd::CheckStatus {
            txn_id: lock.txn_id,
            primary_key: lock.primary_key.clone(),
            abort_if_expired: expired,
        };
        let TxnReply::Status(state) = self.txn_call_for(&check, deadline)? else {
            return Err(Error::Protocol("a status check answered no status".into()));
        };
        let state = match state {
            // Async commit, past its TTL: the participant check decides it.
            TxnState::Staging { expires_at_ms, participants } if now_ms() > expires_at_ms => {
                self.settle_staging(lock.txn_id, &lock.primary_key, &participants)?
            }
            state => state,
        };
        let (commit, commit_ts) = match state {
            TxnState::Committed { commit_ts } => (true, commit_ts),
            TxnState::Aborted => (false, None),
            // Below the floor: finished long ago, nothing of it to apply here.
            TxnState::NotFound { floor } if lock.txn_id < floor => (false, None),
            TxnState::Staging { .. } => return Ok(Resolved::Deciding),
            // No record yet (its primary's prewrite may not have applied), or pending.
            TxnState::NotFound { .. } | TxnState::Pending { .. } => return Ok(Resolved::Alive),
            TxnState::Frozen { .. } => return Err(lock.conflict()),
        };
        let keys = vec![lock.key.clone()];
        let resolve = TxnCmd::Resolve { txn_id: lock.txn_id, keys, commit, commit_ts };
        self.txn_call_for(&resolve, deadline)?;
        Ok(Resolved::Gone)
    }

    /// Runs `attempt` until it answers something other than `Locked`, resolving each
    /// lock it meets; an alive holder is waited for with a backoff per the `Db`'s
    /// lock wait (within `deadline`; a deciding holder is waited for until the
    /// deadline: [`Db::lock_patience`]), then [`Error::Conflict`].
    pub(super) fn through_locks<T>(
        &self,
        deadline: Duration,
        mut attempt: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut backoff = DB_FIRST_BACKOFF;
        // Bounded: every turn that does not return sleeps, until `deadline`.
        loop {
            let err = match attempt() {
                Err(e) => e,
                ok => return ok,
            };
            let Some(lock) = LockMet::of(&err) else { return Err(err) };
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(lock.conflict());
            }
            let resolved = match self.resolve_lock(&lock, left) {
                Ok(resolved) => resolved,
                // Out of time asking about the holder: the lock is what stopped the call.
                Err(Error::Unavailable { .. }) if start.elapsed() >= deadline => {
                    return Err(lock.conflict());
                }
                Err(e) => return Err(e),
            };
            if resolved == Resolved::Gone {
                continue;
            }
            let Some(patience) = self.lock_patience(&resolved, deadline) else {
                return Err(lock.conflict());
            };
            if start.elapsed() + backoff >= patience {
                return Err(lock.conflict());
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(DB_MAX_BACKOFF);
        }
    }
}

impl Db {
    /// How long in all a call that met a live lock (`resolved`) may wait for it, per
    /// the `Db`'s [`LockWait`] within `deadline`; `None`: not at all (a conflict at
    /// once). A deciding (`Staging`) holder is waited for until the deadline: it is
    /// committed or aborted within moments (a client's next write of a key its last
    /// batch wrote met that batch's lock, resolved in the background, and answered
    /// `Conflict` with the default `NoWait`).
    pub(super) fn lock_patience(
        &self,
        resolved: &Resolved,
        deadline: Duration,
    ) -> Option<Duration> {
        if *resolved == Resolved::Deciding {
            return Some(deadline);
        }
        match self.lock_wait {
            LockWait::NoWait => None,
            LockWait::Wait(t) => Some(t.min(deadline)),
        }
    }

    /// True if a write that met a live lock may wait once more, having waited
    /// `waited` by the end of that wait (per [`LockWait`], within the deadline).
    pub(super) fn may_wait_for_lock(&self, waited: Duration) -> bool {
        match self.lock_wait {
            LockWait::NoWait => false,
            LockWait::Wait(t) => waited < t.min(self.deadline),
        }
    }
}

/// A record's state as [`Db::txn_outcome`] answers it.
fn outcome_of(txn_id: u64, state: TxnState) -> Result<TxnOutcome> {
    Ok(match state {
        TxnState::Committed { .. } => TxnOutcome::Committed,
        TxnState::Aborted => TxnOutcome::Aborted,
        TxnState::Pending { .. } | TxnState::Staging { .. } => TxnOutcome::Pending,
        TxnState::NotFound { .. } => TxnOutcome::Unknown,
        TxnState::Frozen { reason } => {
            return Err(Error::Protocol(format!(
                "transaction {txn_id}'s record cannot be read by this binary ({reason})"
            )));
        }
    })
}

/// A `Db`'s transaction settings and state, shared by its clones.
#[derive(Debug, Default)]
pub(super) struct TxnShared {
    pub ids: TxnIds,
    /// The queue of the `Db`'s resolver thread, started with the first resolve that
    /// needs it (`None`: no thread could be started).
    pub(super) resolver: OnceLock<Option<SyncSender<ResolveJob>>>,
    /// Until when (ms since the Unix epoch) async commit is not tried: the cluster
    /// refused it (below version 4).
    pub(super) async_off_until: std::sync::atomic::AtomicU64,
    /// Likewise for async commit of snapshot transactions (below version 5).
    pub(super) si_async_off_until: std::sync::atomic::AtomicU64,
}

/// Background resolves a `Db`'s resolver thread holds at most; past it, the locks of
/// a resolve are left to readers and the recovery daemon.
const RESOLVE_QUEUE: usize = 1024;

/// How long the resolver thread waits for work before it looks whether its cluster
/// is shut down.
const RESOLVER_IDLE: Duration = Duration::from_secs(1);

/// One background resolve: `keys` of `plan`'s transaction, applied or dropped; or,
/// with `decide`, an async-commit transaction's decision and every resolve after it
/// (`keys` unused), batched with others (`async_commit.rs`).
#[derive(Debug)]
pub(super) struct ResolveJob {
    pub plan: Arc<TxnPlan>,
    pub keys: Vec<Bytes>,
    pub commit: bool,
    pub decide: bool,
}

impl ResolveJob {
    /// Hands the job to the resolver thread behind `queue`, or, if it has none or its
    /// queue is full, leaves its locks to the readers that meet them and to the
    /// recovery daemon (the transaction's record decides them, so nothing is lost).
    pub(super) fn enqueue(self, queue: Option<&SyncSender<ResolveJob>>) {
        let txn_id = self.plan.txn_id;
        let Some(queue) = queue else {
            tracing::debug!(txn_id, "no resolver thread: readers and the daemon resolve the locks");
            return;
        };
        if let Err(e) = queue.try_send(self) {
            let why = match e {
                TrySendError::Full(_) => "its queue is full",
                TrySendError::Disconnected(_) => "it stopped",
            };
            tracing::debug!(txn_id, why, "resolver busy: readers and the daemon resolve the locks");
        }
    }
}

impl Db {
    /// The queue of this `Db`'s resolver thread (shared by its clones), started on
    /// first use; `None` if no thread could be started.
    pub(super) fn resolver(&self) -> Option<SyncSender<ResolveJob>> {
        self.txn.resolver.get_or_init(|| self.start_resolver(RESOLVE_QUEUE)).clone()
    }

    /// Starts a resolver thread with a queue of `bound` jobs. It runs until every
    /// clone of this `Db` is dropped (its queue's senders with them) or the cluster
    /// shuts down; it holds no clone of the shared state, so it keeps none alive.
    fn start_resolver(&self, bound: usize) -> Option<SyncSender<ResolveJob>> {
        let (tx, rx) = mpsc::sync_channel::<ResolveJob>(bound);
        let db = Db {
            router: self.router.clone(),
            deadline: self.deadline,
            sessions: Arc::clone(&self.sessions),
            lock_wait: self.lock_wait,
            txn_ttl_ms: self.txn_ttl_ms,
            txn: Arc::default(),
            seams: None,
        };
        let spawned = std::thread::Builder::new().name("db-txn-resolver".into()).spawn(move || {
            // Bounded by the senders: it ends when they are all dropped, or at shutdown.
            // Async-commit transactions decided by the last turn: their other regions'
            // resolves go in the next.
            let mut carried = Vec::new();
            loop {
                let first = if carried.is_empty() {
                    match rx.recv_timeout(RESOLVER_IDLE) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout) if !db.router.backend().is_shut() => {
                            continue;
                        }
                        Err(_) => return,
                    }
                } else {
                    rx.try_recv().ok()
                };
                // One turn takes what is queued (bounded), so that async-commit
                // decisions and resolves go in one Raft write per region.
                let mut batch = Vec::new();
                for job in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    if job.decide {
                        batch.push(job);
                    } else {
                        db.resolve_keys(&job.plan, job.keys, job.commit);
                    }
                    if batch.len() >= super::async_commit::RESOLVE_BATCH {
                        break;
                    }
                }
                carried = db.resolve_turn(&batch, &carried);
            }
        });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::debug!(error = %e, "no resolver thread: readers and the daemon resolve locks");
                None
            }
        }
    }
}
