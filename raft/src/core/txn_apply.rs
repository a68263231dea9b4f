//! Applying transaction commands into the pass's write-batch round, like client
//! writes (ARCHITECTURE.md, "Transactions"; what each command does: `crate::txn`).
//!
//! Every decision comes from the command (its leader-stamped `now_ms`, never a clock
//! read here) and the region's replicated tables, so every replica decides alike. A
//! refusal is decided before anything is buffered: it changes nothing. An entry this
//! binary cannot read (a newer format, damage, an unknown status or op) is frozen:
//! neither committed nor aborted nor deleted, counted, and answered
//! [`TxnState::Frozen`].
//!
//! A lock leaves the table in the same round as the write it makes, so a reader that
//! checks a key's lock before it takes its read view sees the resolved value.
//!
//! Snapshot isolation (`start_ts` on a prewrite, `commit_ts` on a commit or resolve):
//! the keys are lock keys of the transactional keyspace ([`crate::txn::mvcc`]); a
//! prewrite is refused with `Error::WriteConflict` when the key's newest committed
//! version is at or after its start; committing a lock writes its value as the
//! version at the record's commit timestamp (a new key; nothing is overwritten).
//! Level-1 locks and records (no `start_ts`) apply exactly as before.

use bytes::Bytes;
use regionkv_engine::SessionWrite;
use regionkv_engine::txn::{Lock, LockOp, TxnId, TxnRecord, TxnStatus};

use super::apply::Applier;
use crate::command::{Op, WriteSession};
use crate::error::{Error, Result};
use crate::metrics::WriteMetrics;
use crate::replica::Replica;
use crate::txn::codec::TxnEntry;
use crate::txn::{MinCommit, RecordInit, TxnCmd, TxnReply, TxnState, locked, mvcc};

#[path = "txn_apply_staging.rs"]
mod staging;

/// A table entry as this binary finds it.
enum Found<T> {
    Absent,
    /// Not to be decided on: why (`"too_new"`, `"corrupt"`, `"unknown_status"`,
    /// `"unknown_op"`).
    Frozen(&'static str),
    Readable(T),
}

fn record_of(bytes: Option<Bytes>) -> Found<TxnRecord> {
    match bytes.map(|b| TxnRecord::decode(&b)) {
        None => Found::Absent,
        Some(Err(e)) => Found::Frozen(e.reason()),
        Some(Ok(r)) if r.status == TxnStatus::Unspecified => Found::Frozen("unknown_status"),
        Some(Ok(r)) => Found::Readable(r),
    }
}

fn lock_of(bytes: &[u8]) -> Found<Lock> {
    match Lock::decode(bytes) {
        Err(e) => Found::Frozen(e.reason()),
        Ok(l) if l.op == LockOp::Unspecified => Found::Frozen("unknown_op"),
        Ok(l) if l.op == LockOp::Put && l.value.is_none() => Found::Frozen("corrupt"),
        Ok(l) => Found::Readable(l),
    }
}

fn frozen(reason: &str) -> TxnReply {
    TxnReply::Status(TxnState::Frozen { reason: reason.to_string() })
}

/// Why a committed transaction command must not apply in `replica`'s region, from
/// the command and the region's replicated state only.
fn check_txn(replica: &Replica, entry: &TxnEntry, max_key: usize, max_value: usize) -> Result<()> {
    replica.check_version(entry.epoch)?;
    let region = &replica.region;
    let outside = || Error::KeyNotInRegion { region: region.id, current: Some(region.clone()) };
    if entry.cmd.keys().iter().any(|key| !region.contains(key)) {
        return Err(outside());
    }
    if let TxnCmd::Prewrite { primary_key, ops, record, start_ts, min_commit, .. } = &entry.cmd {
        if record.is_some() && !region.contains(primary_key) {
            return Err(outside());
        }
        check_min_commit(*start_ts, *min_commit)?;
        check_keyspace(primary_key, ops, *start_ts)?;
        check_sizes(ops, max_key, max_value)?;
    }
    if let TxnCmd::OnePhase { ops, start_ts, commit_ts, .. } = &entry.cmd {
        if let Some(op) = ops.iter().find(|op| mvcc::decode_lock_key(op.key()).is_none()) {
            return Err(Error::InvalidRequest(format!(
                "a one-phase commit names key {:?}, not a lock key of the transactional \
                 keyspace",
                op.key()
            )));
        }
        if commit_ts.is_none_or(|ts| ts <= *start_ts) {
            return Err(Error::InvalidRequest(format!(
                "a one-phase commit started at {start_ts} needs a commit timestamp above it, \
                 not {commit_ts:?}"
            )));
        }
        check_sizes(ops, max_key, max_value)?;
    }
    Ok(())
}

/// An async-commit snapshot prewrite carries a minimum commit timestamp stamped by its
/// leader, above its start timestamp.
fn check_min_commit(start_ts: Option<u64>, min_commit: Option<MinCommit>) -> Result<()> {
    let Some(MinCommit { ts, .. }) = min_commit else { return Ok(()) };
    match (start_ts, ts) {
        (Some(start), Some(ts)) if ts > start => Ok(()),
        _ => Err(Error::InvalidRequest(format!(
            "a prewrite's minimum commit timestamp {ts:?} must be stamped, above its start \
             timestamp {start_ts:?}"
        ))),
    }
}

/// Refuses a key or value over the engine's limits.
fn check_sizes(ops: &[Op], max_key: usize, max_value: usize) -> Result<()> {
    for op in ops {
        let value = match op {
            Op::Put { value, .. } => value.len(),
            Op::Delete { .. } => 0,
        };
        if op.key().len() > max_key || value > max_value {
            return Err(Error::InvalidRequest(format!(
                "a key of {} bytes or a value of {value} bytes is over the limits \
                 ({max_key} and {max_value} bytes)",
                op.key().len()
            )));
        }
    }
    Ok(())
}

/// A snapshot-isolated prewrite names lock keys of the transactional keyspace only;
/// a level-1 prewrite names none of its keys (it would write past the versions).
fn check_keyspace(primary_key: &[u8], ops: &[Op], start_ts: Option<u64>) -> Result<()> {
    let keys = || std::iter::once(primary_key).chain(ops.iter().map(Op::key));
    match start_ts {
        Some(_) => match keys().find(|k| mvcc::decode_lock_key(k).is_none()) {
            Some(key) => Err(Error::InvalidRequest(format!(
                "a snapshot-isolated prewrite names key {key:?}, not a lock key of the \
                 transactional keyspace"
            ))),
            None => Ok(()),
        },
        None => match ops.iter().map(Op::key).find(|k| mvcc::is_txn_key(k)) {
            Some(key) => Err(Error::InvalidRequest(format!(
                "a level-1 prewrite names key {key:?} of the transactional keyspace"
            ))),
            None => Ok(()),
        },
    }
}

impl Applier<'_> {
    /// The refusal for the first of `keys` (all in the round's current region) that
    /// holds a lock, readable or not, this round's changes included.
    pub(super) fn first_locked<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<Option<Error>> {
        for key in keys {
            if let Some(lock) = self.round.txn_lock(key)? {
                return Ok(Some(locked(key, &lock)));
            }
        }
        Ok(None)
    }

    /// Applies one transaction command of `replica`'s region at `index` (with
    /// `knows_staging` false, as a binary of cluster version 3 would: a `Staging`
    /// record is an unknown status, frozen). The outer error is a failure of the apply
    /// itself; the inner result is the command's own outcome.
    pub(super) fn txn(
        &mut self,
        replica: &Replica,
        entry: &TxnEntry,
        (index, knows_staging): (u64, bool),
        metrics: &WriteMetrics,
    ) -> Result<Result<TxnReply>> {
        self.txn_applied = true;
        let (max_key, max_value) = (self.engine.max_key_bytes(), self.engine.max_value_bytes());
        if let Err(refused) = check_txn(replica, entry, max_key, max_value) {
            return Ok(Err(refused));
        }
        let region = &replica.region;
        self.round.prepare_for_region(region.id, region.epoch)?;
        let mut apply = TxnApply {
            applier: self,
            replica,
            now: entry.now_ms,
            index,
            knows_staging,
            frozen: 0,
            first_frozen: None,
        };
        let result = apply.run(&entry.cmd);
        for _ in 0..apply.frozen {
            metrics.on_txn_frozen();
        }
        if let (TxnCmd::CollectVersions { safepoint, keys }, Ok(Ok(_))) = (&entry.cmd, &result) {
            metrics.on_versions_collected(*safepoint, keys.len());
        }
        result
    }
}

/// One transaction command being applied.
struct TxnApply<'a, 'e> {
    applier: &'a mut Applier<'e>,
    replica: &'a Replica,
    /// The proposing leader's clock.
    now: u64,
    /// The command's Raft index.
    index: u64,
    /// False: a `Staging` record reads as an unknown status (a version-3 binary).
    knows_staging: bool,
    /// Frozen entries met.
    frozen: u64,
    /// Why the first of them is frozen.
    first_frozen: Option<&'static str>,
}

impl TxnApply<'_, '_> {
    fn run(&mut self, cmd: &TxnCmd) -> Result<Result<TxnReply>> {
        match cmd {
            TxnCmd::Prewrite {
                txn_id,
                primary_key,
                ops,
                ttl_ms,
                record,
                start_ts,
                session,
                min_commit,
            } => {
                let init = Init {
                    ttl_ms: *ttl_ms,
                    record: record.as_ref(),
                    start_ts: *start_ts,
                    session: *session,
                    min_commit_ts: min_commit.and_then(|m| m.ts),
                };
                self.prewrite(*txn_id, primary_key, ops, init)
            }
            TxnCmd::Commit { txn_id, primary_key, commit_ts } => {
                self.commit(*txn_id, primary_key, *commit_ts)
            }
            TxnCmd::Resolve { txn_id, keys, commit, commit_ts } => {
                let keys = || keys.iter().map(Bytes::as_ref);
                if *commit
                    && let Err(refused) = self.check_commit_ts(*txn_id, keys(), *commit_ts)?
                {
                    return Ok(Err(refused));
                }
                self.resolve(*txn_id, keys(), *commit, *commit_ts)?;
                Ok(Ok(match self.first_frozen {
                    None => TxnReply::Done,
                    Some(reason) => frozen(reason),
                }))
            }
            TxnCmd::CheckStatus { txn_id, primary_key, abort_if_expired } => {
                self.check_status(*txn_id, primary_key, *abort_if_expired)
            }
            TxnCmd::Heartbeat { txn_id, primary_key, ttl_ms } => {
                self.heartbeat(*txn_id, primary_key, *ttl_ms)
            }
            TxnCmd::ResolveMany { items } => self.resolve_many(items),
            TxnCmd::CheckLocks { txn_id, keys } => self.check_locks(*txn_id, keys),
            TxnCmd::OnePhase { start_ts, ops, commit_ts, session, .. } => {
                // Checked by `check_txn`.
                let commit_ts = commit_ts.unwrap_or_default();
                self.one_phase(*start_ts, ops, commit_ts, *session)
            }
            TxnCmd::Forget { records, new_floor } => {
                for (primary_key, txn_id) in records {
                    match self.record(primary_key, *txn_id)? {
                        Found::Readable(r)
                            if !matches!(r.status, TxnStatus::Pending | TxnStatus::Staging) =>
                        {
                            self.applier.round.set_txn_record(primary_key, *txn_id, None)?;
                        }
                        Found::Frozen(_) => self.frozen += 1,
                        Found::Absent | Found::Readable(_) => {}
                    }
                }
                self.applier.round.raise_txn_floor(*new_floor)?;
                Ok(Ok(TxnReply::Done))
            }
            TxnCmd::CollectVersions { safepoint, keys } => {
                if let Err(why) = crate::txn::gc::check(*safepoint, keys) {
                    return Ok(Err(Error::InvalidRequest(why)));
                }
                // The floor first: published before this round's deletions.
                self.applier.round.raise_txn_gc_floor(*safepoint)?;
                for key in keys {
                    self.applier.round.delete(key)?;
                }
                Ok(Ok(TxnReply::Done))
            }
        }
    }

    fn record(&self, primary_key: &[u8], txn_id: u64) -> Result<Found<TxnRecord>> {
        Ok(match record_of(self.applier.round.txn_record(primary_key, txn_id)?) {
            Found::Readable(r) if r.status == TxnStatus::Staging && !self.knows_staging => {
                Found::Frozen("unknown_status")
            }
            found => found,
        })
    }

    fn set_record(&mut self, record: &TxnRecord) -> Result<()> {
        let bytes = Bytes::from(record.encode());
        self.applier.round.set_txn_record(&record.primary_key, record.txn_id.0, Some(bytes))?;
        Ok(())
    }

    fn not_found(&self) -> Result<TxnReply> {
        Ok(TxnReply::Status(TxnState::NotFound { floor: self.applier.round.txn_floor()? }))
    }

    fn prewrite(
        &mut self,
        txn_id: u64,
        primary_key: &Bytes,
        ops: &[Op],
        init: Init<'_>,
    ) -> Result<Result<TxnReply>> {
        let Init { ttl_ms, record, start_ts, session, min_commit_ts } = init;
        let floor = self.applier.round.txn_floor()?;
        if txn_id < floor {
            return Ok(Err(Error::TxnTooOld { txn_id, floor }));
        }
        // Its conflict check could miss a collected delete.
        if let Some(read_ts) = start_ts {
            let floor = self.applier.round.txn_gc_floor()?;
            if read_ts < floor {
                return Ok(Err(Error::SnapshotTooOld { read_ts, floor }));
            }
        }
        let mut fresh = Vec::with_capacity(ops.len());
        for op in ops {
            // An async-commit checker found this key unlocked and prevented it (or the
            // record was aborted): the prewrite must never land (`crate::txn::staging`).
            if let Found::Readable(r) = self.record(op.key(), txn_id)?
                && r.status == TxnStatus::Aborted
            {
                return Ok(Err(Error::TxnAborted { txn_id }));
            }
            match self.applier.round.txn_lock(op.key())? {
                None => fresh.push(op),
                Some(held) => match Lock::decode(&held) {
                    Ok(lock) if lock.txn_id.0 == txn_id => {} // prewritten already
                    _ => return Ok(Err(locked(op.key(), &held))),
                },
            }
        }
        let mut new_record = None;
        if let Some(init) = record {
            match self.record(primary_key, txn_id)? {
                Found::Readable(r) => match r.status {
                    TxnStatus::Aborted => return Ok(Err(Error::TxnAborted { txn_id })),
                    // Decided already: a late copy of this prewrite locks nothing.
                    TxnStatus::Committed => return Ok(Ok(self.prewritten(txn_id, ops)?)),
                    TxnStatus::Pending | TxnStatus::Staging | TxnStatus::Unspecified => {}
                },
                Found::Frozen(reason) => {
                    self.frozen += 1;
                    return Ok(Ok(frozen(reason)));
                }
                Found::Absent => {
                    new_record = Some(TxnRecord {
                        txn_id: TxnId(txn_id),
                        status: if init.staging { TxnStatus::Staging } else { TxnStatus::Pending },
                        primary_key: primary_key.clone(),
                        participants: init.participants.clone(),
                        created_at_ms: self.now,
                        ttl_ms,
                        last_heartbeat_ms: self.now,
                        coordinator: init.coordinator,
                        decided_at_index: None,
                        start_ts,
                        commit_ts: None,
                        min_commit_ts,
                    });
                }
            }
        }
        if let Some(start_ts) = start_ts
            && let Some(conflict) =
                self.write_conflict(fresh.iter().map(|op| op.key()), start_ts)?
        {
            return Ok(Err(conflict));
        }
        // Every refusal is behind us (a refused prewrite is not recorded and may come
        // again). A number this region applied already, or one below it (given up by
        // its client), is a copy: it locks nothing, even once its locks were resolved
        // (ARCHITECTURE.md, "Exactly once").
        if let Some(session) = session
            && self.applier.round.session_write(session.id, session.seq, self.now)?
                == SessionWrite::AlreadyApplied
        {
            return Ok(Ok(self.prewritten(txn_id, ops)?));
        }
        if let Some(record) = new_record {
            self.set_record(&record)?;
        }
        for op in fresh {
            let (lock_op, value) = match op {
                Op::Put { value, .. } => (LockOp::Put, Some(value.clone())),
                Op::Delete { .. } => (LockOp::Delete, None),
            };
            let lock = Lock {
                txn_id: TxnId(txn_id),
                primary_key: primary_key.clone(),
                op: lock_op,
                value,
                created_at_ms: self.now,
                ttl_ms,
                start_ts,
                min_commit_ts,
            };
            self.applier.round.set_txn_lock(op.key(), Some(Bytes::from(lock.encode())))?;
        }
        match min_commit_ts {
            Some(_) => Ok(Ok(self.prewritten(txn_id, ops)?)),
            None => Ok(Ok(TxnReply::Done)),
        }
    }

    /// The answer to an async-commit snapshot prewrite: the largest minimum commit
    /// timestamp its keys' locks of `txn_id` hold, this round's included (a copy
    /// answers what the first wrote, never its own stamp). `Done` if a key holds no
    /// such lock (a copy after the locks were resolved): the coordinator then never
    /// takes the transaction as committed before a decision.
    fn prewritten(&self, txn_id: u64, ops: &[Op]) -> Result<TxnReply> {
        let mut max = None;
        for op in ops {
            let lock = self.applier.round.txn_lock(op.key())?.map(|held| lock_of(&held));
            match lock {
                Some(Found::Readable(Lock {
                    txn_id: TxnId(id), min_commit_ts: Some(ts), ..
                })) if id == txn_id => {
                    max = max.max(Some(ts));
                }
                _ => return Ok(TxnReply::Done),
            }
        }
        Ok(max.map_or(TxnReply::Done, |min_commit_ts| TxnReply::Prewritten { min_commit_ts }))
    }

    /// The decision. A record committed already applies this region's locks of the
    /// transaction again (none left, unless a replay after a crash stopped between
    /// two rounds of this command).
    ///
    /// A snapshot-isolated record (with `start_ts`) commits only with a `commit_ts`
    /// above its start, which the record keeps; a level-1 record takes none.
    fn commit(
        &mut self,
        txn_id: u64,
        primary_key: &[u8],
        commit_ts: Option<u64>,
    ) -> Result<Result<TxnReply>> {
        let mut record = match self.record(primary_key, txn_id)? {
            Found::Absent => {
                let floor = self.applier.round.txn_floor()?;
                return Ok(Err(Error::TxnNotFound { txn_id, floor }));
            }
            Found::Frozen(reason) => {
                self.frozen += 1;
                return Ok(Ok(frozen(reason)));
            }
            Found::Readable(r) => r,
        };
        match record.status {
            TxnStatus::Aborted => return Ok(Err(Error::TxnAborted { txn_id })),
            TxnStatus::Staging => {
                return Ok(Err(Error::InvalidRequest(format!(
                    "transaction {txn_id} commits asynchronously (its record is staging): \
                     it is decided by a batched resolve, not by a commit"
                ))));
            }
            TxnStatus::Pending => {
                if let Some(read_ts) = record.start_ts {
                    let floor = self.applier.round.txn_gc_floor()?;
                    if read_ts < floor {
                        return Ok(Err(Error::SnapshotTooOld { read_ts, floor }));
                    }
                }
                match (record.start_ts, commit_ts) {
                    (Some(start), Some(commit)) if commit > start => {}
                    (Some(start), _) => {
                        return Ok(Err(Error::InvalidRequest(format!(
                            "transaction {txn_id} started at {start} commits only with a \
                             commit timestamp above it, not {commit_ts:?}"
                        ))));
                    }
                    (None, Some(_)) => {
                        return Ok(Err(Error::InvalidRequest(format!(
                            "transaction {txn_id} is not snapshot-isolated: it takes no \
                             commit timestamp"
                        ))));
                    }
                    (None, None) => {}
                }
                record.status = TxnStatus::Committed;
                record.decided_at_index = Some(self.index);
                record.commit_ts = commit_ts;
                self.set_record(&record)?;
            }
            TxnStatus::Committed | TxnStatus::Unspecified => {}
        }
        let participants = record.participants.iter().map(Bytes::as_ref);
        self.resolve(txn_id, participants, true, record.commit_ts)?;
        Ok(Ok(TxnReply::Status(TxnState::Committed { commit_ts: record.commit_ts })))
    }

    fn check_status(
        &mut self,
        txn_id: u64,
        primary_key: &Bytes,
        abort_if_expired: bool,
    ) -> Result<Result<TxnReply>> {
        let mut record = match self.record(primary_key, txn_id)? {
            Found::Absent => {
                let floor = self.applier.round.txn_floor()?;
                if txn_id < floor || !abort_if_expired {
                    return Ok(self.not_found());
                }
                // Presumed abort: never prewritten here (or not yet). The tombstone
                // makes a late prewrite of the record fail.
                let tombstone = self.tombstone(primary_key, txn_id);
                self.set_record(&tombstone)?;
                return Ok(Ok(TxnReply::Status(TxnState::Aborted)));
            }
            Found::Frozen(reason) => {
                self.frozen += 1;
                return Ok(Ok(frozen(reason)));
            }
            Found::Readable(r) => r,
        };
        let state = match record.status {
            TxnStatus::Committed => TxnState::Committed { commit_ts: record.commit_ts },
            TxnStatus::Aborted => TxnState::Aborted,
            TxnStatus::Pending if abort_if_expired && self.now > record.expires_at_ms() => {
                record.status = TxnStatus::Aborted;
                record.decided_at_index = Some(self.index);
                self.set_record(&record)?;
                // This region's own locks go with the decision (the others by Resolve).
                let participants = record.participants.iter().map(Bytes::as_ref);
                self.resolve(txn_id, participants, false, None)?;
                TxnState::Aborted
            }
            // Never aborted by time alone: only a participant check decides it.
            TxnStatus::Staging => TxnState::Staging {
                expires_at_ms: record.expires_at_ms(),
                participants: record.participants.clone(),
            },
            TxnStatus::Pending | TxnStatus::Unspecified => {
                TxnState::Pending { expires_at_ms: record.expires_at_ms() }
            }
        };
        Ok(Ok(TxnReply::Status(state)))
    }

    fn heartbeat(
        &mut self,
        txn_id: u64,
        primary_key: &[u8],
        ttl_ms: u64,
    ) -> Result<Result<TxnReply>> {
        let mut record = match self.record(primary_key, txn_id)? {
            Found::Absent => return Ok(self.not_found()),
            Found::Frozen(reason) => {
                self.frozen += 1;
                return Ok(Ok(frozen(reason)));
            }
            Found::Readable(r) => r,
        };
        let state = match record.status {
            TxnStatus::Committed => TxnState::Committed { commit_ts: record.commit_ts },
            TxnStatus::Aborted => TxnState::Aborted,
            TxnStatus::Pending | TxnStatus::Staging | TxnStatus::Unspecified => {
                record.last_heartbeat_ms = record.last_heartbeat_ms.max(self.now);
                record.ttl_ms = ttl_ms;
                self.set_record(&record)?;
                match record.status {
                    TxnStatus::Staging => TxnState::Staging {
                        expires_at_ms: record.expires_at_ms(),
                        participants: record.participants.clone(),
                    },
                    _ => TxnState::Pending { expires_at_ms: record.expires_at_ms() },
                }
            }
        };
        Ok(Ok(TxnReply::Status(state)))
    }

    /// Applies (`commit`) or drops the locks of `txn_id` on those of `keys` this region
    /// holds; a key without a lock of the transaction is skipped, a frozen lock is left
    /// and counted. Each key's write and lock removal land in one round (a round full
    /// already is cut first). A snapshot-isolated lock commits as the version of its
    /// user key at `commit_ts` (checked by [`Self::check_commit_ts`] first: without
    /// it, the lock is left as it is).
    fn resolve<'k>(
        &mut self,
        txn_id: u64,
        keys: impl Iterator<Item = &'k [u8]>,
        commit: bool,
        commit_ts: Option<u64>,
    ) -> Result<()> {
        let region = &self.replica.region;
        for key in keys {
            if !region.contains(key) {
                continue;
            }
            let Some(held) = self.applier.round.txn_lock(key)? else { continue };
            let lock = match lock_of(&held) {
                Found::Readable(lock) if lock.txn_id.0 == txn_id => lock,
                Found::Readable(_) | Found::Absent => continue,
                Found::Frozen(reason) => {
                    self.frozen += 1;
                    self.first_frozen.get_or_insert(reason);
                    continue;
                }
            };
            if commit {
                // A snapshot-isolated lock: its version's key, or the lock is left.
                let version = match lock.start_ts {
                    None => None,
                    Some(start) => match (mvcc::decode_lock_key(key), commit_ts) {
                        (Some(user), Some(ts)) if ts > start => Some(mvcc::version_key(&user, ts)),
                        _ => continue,
                    },
                };
                let bytes = key.len() + 9 + lock.value.as_ref().map_or(0, Bytes::len);
                let applier = &mut *self.applier;
                if applier.bytes + bytes > applier.cut_bytes && !applier.round.is_empty() {
                    applier.cut_full()?;
                    applier.round.prepare_for_region(region.id, region.epoch)?;
                }
                let value = match lock.op {
                    LockOp::Put => lock.value.as_deref(),
                    _ => None,
                };
                match (version, value) {
                    (Some(at), value) => {
                        applier.round.put(&at, &mvcc::encode_version_value(value))?;
                    }
                    (None, Some(value)) => applier.round.put(key, value)?,
                    (None, None) => applier.round.delete(key)?,
                }
                applier.bytes += bytes;
            }
            self.applier.round.set_txn_lock(key, None)?;
        }
        Ok(())
    }
}

/// What a prewrite creates: the TTL, the record (primary's region) and the start
/// timestamp of a snapshot-isolated transaction.
#[derive(Clone, Copy)]
struct Init<'a> {
    ttl_ms: u64,
    record: Option<&'a RecordInit>,
    start_ts: Option<u64>,
    session: Option<WriteSession>,
    /// Async commit of a snapshot transaction: the leader-stamped minimum commit
    /// timestamp every lock (and a staging record) keeps.
    min_commit_ts: Option<u64>,
}

impl TxnApply<'_, '_> {
    /// The write-write conflict of a snapshot-isolated prewrite or one-phase commit
    /// at `start_ts`: the first of `lock_keys` whose user key has a version committed
    /// after it. A version at `start_ts` itself is one its reads saw (visible is
    /// `commit_ts <= start_ts`): a one-phase commit's timestamp, chosen by a leader,
    /// may equal a later start from the oracle. Before one-phase commits (cluster
    /// version 4) every timestamp came from the oracle, so no version ever sat at a
    /// start timestamp, and an entry applied by an older binary's `>=` rule decides
    /// alike.
    /// The engine is read, so the round is cut first if it buffers writes (a version
    /// applied earlier in this pass must be seen).
    fn write_conflict<'k>(
        &mut self,
        lock_keys: impl Iterator<Item = &'k [u8]>,
        start_ts: u64,
    ) -> Result<Option<Error>> {
        let region = &self.replica.region;
        let applier = &mut *self.applier;
        if !applier.round.is_empty() {
            applier.cut()?;
            applier.round.prepare_for_region(region.id, region.epoch)?;
        }
        let view = applier.engine.read_view();
        for key in lock_keys {
            let Some(user) = mvcc::decode_lock_key(key) else { continue };
            let start = mvcc::version_key(&user, u64::MAX);
            let newest = view.scan(&start, Some(&mvcc::versions_end(&user)), 1);
            let conflict_ts = newest.first().and_then(|(k, _)| mvcc::decode_version_key(k));
            if let Some((_, conflict_ts)) = conflict_ts
                && conflict_ts > start_ts
            {
                let key = Bytes::copy_from_slice(key);
                return Ok(Some(Error::WriteConflict { key, start_ts, conflict_ts }));
            }
        }
        Ok(None)
    }

    /// Refuses a committing resolve that would leave a snapshot-isolated lock of
    /// `txn_id` among `keys` unapplied: no `commit_ts`, or one not above its start.
    fn check_commit_ts<'k>(
        &self,
        txn_id: u64,
        keys: impl Iterator<Item = &'k [u8]>,
        commit_ts: Option<u64>,
    ) -> Result<Result<()>> {
        let region = &self.replica.region;
        for key in keys.filter(|k| region.contains(k)) {
            let Some(held) = self.applier.round.txn_lock(key)? else { continue };
            if let Found::Readable(lock) = lock_of(&held)
                && lock.txn_id.0 == txn_id
                && let Some(start) = lock.start_ts
                && commit_ts.is_none_or(|ts| ts <= start)
            {
                return Ok(Err(Error::InvalidRequest(format!(
                    "committing transaction {txn_id}'s lock on {key:?} (started at {start}) \
                     needs a commit timestamp above its start, not {commit_ts:?}"
                ))));
            }
        }
        Ok(Ok(()))
    }
}

impl TxnApply<'_, '_> {
    /// A one-phase commit: refused whole if a key holds a lock (any transaction's,
    /// readable or not) or has a version committed after `start_ts`; otherwise
    /// every op becomes its user key's version at `commit_ts`, all in one round.
    fn one_phase(
        &mut self,
        start_ts: u64,
        ops: &[Op],
        commit_ts: u64,
        session: Option<WriteSession>,
    ) -> Result<Result<TxnReply>> {
        // A copy of a commit applied already (its answer was lost): it would meet its
        // own versions; answered committed, its timestamp not known here. Peeked, not
        // recorded: a refusal below leaves the number unused.
        if let Some(s) = session
            && self.applier.round.session_applied(s.id, s.seq)?
        {
            return Ok(Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })));
        }
        // As a snapshot prewrite: below the GC floor its conflict check could miss a
        // collected delete.
        let floor = self.applier.round.txn_gc_floor()?;
        if start_ts < floor {
            return Ok(Err(Error::SnapshotTooOld { read_ts: start_ts, floor }));
        }
        if let Some(refused) = self.applier.first_locked(ops.iter().map(Op::key))? {
            return Ok(Err(refused));
        }
        if let Some(conflict) = self.write_conflict(ops.iter().map(Op::key), start_ts)? {
            return Ok(Err(conflict));
        }
        let applier = &mut *self.applier;
        for op in ops {
            let Some(user) = mvcc::decode_lock_key(op.key()) else { continue };
            let value = match op {
                Op::Put { value, .. } => Some(value.as_ref()),
                Op::Delete { .. } => None,
            };
            let at = mvcc::version_key(&user, commit_ts);
            applier.round.put(&at, &mvcc::encode_version_value(value))?;
            applier.bytes += at.len() + 1 + value.map_or(0, <[u8]>::len);
        }
        if let Some(s) = session {
            self.applier.round.session_write(s.id, s.seq, self.now)?;
        }
        Ok(Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(commit_ts) })))
    }
}
