//! The recovery daemon's turn over one region, sans I/O: which expired locks to resolve
//! and how, which decided records to forget (and the resolves that must come first),
//! the region's new floor, and what the turn saw (ARCHITECTURE.md, "The recovery
//! daemon"). The host (the daemon in the `regionkv` crate, or a test) checks the gates
//! that are not about one entry ([`Gate::LocalFormat`], [`Gate::ClusterVersion`],
//! [`Gate::Shutdown`]) before it calls [`plan_turn`]; a turn with a closed gate decodes
//! nothing. [`Gate::RecordFormat`] is checked here, per entry: an entry whose format
//! byte is above [`TXN_FORMAT_MAX_READ`] is counted and never decoded.
//!
//! Forget delay. Records carry no decision time (and this adds nothing to their
//! format), so a record is forgotten only when both bounds have passed:
//! - by its fields: `max(last_heartbeat_ms, created_at_ms) + ttl_ms + forget_delay_ms`
//!   (a conservative bound while the daemon runs: a pending record is aborted within a
//!   turn of its expiry);
//! - by this daemon's memory: it saw the record decided at least `forget_delay_ms` ago
//!   ([`RecoveryMemory`], lost on restart or leader change, so a new leader waits the
//!   whole delay again). This covers a record decided long after its TTL (a daemon
//!   whose gates were closed for an hour aborts it, and must not forget it at once: a
//!   coordinator retrying its commit would get `TxnNotFound`).

use std::collections::BTreeMap;

use bytes::Bytes;
use regionkv_engine::txn::{
    Lock, LockOp, TXN_FORMAT_MAX_READ, TxnRecord, TxnStatus, TxnTable, Unreadable, format_of,
};

use super::{TxnCmd, TxnState};

/// Most expired locks one turn resolves in one region.
pub const MAX_LOCKS_PER_TURN: usize = 1024;
/// Most records one turn forgets in one region (one `Forget` command).
pub const MAX_FORGETS_PER_TURN: usize = 256;
/// How long a decided record is kept: longer than any `Db` retry (10 minutes).
pub const FORGET_DELAY_MS: u64 = 10 * 60 * 1000;

/// The daemon's gates, checked in this order (ARCHITECTURE.md, "The recovery daemon").
/// No configuration switch opens one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gate {
    /// G1: the store's engine opened compatible (migrations done at open) and is not
    /// poisoned.
    LocalFormat,
    /// G2: the cluster's active version includes transactions (unknown is closed).
    ClusterVersion,
    /// G3: an entry's own format byte is one this binary reads (per entry).
    RecordFormat,
    /// G4: the store is not shutting down.
    Shutdown,
}

impl Gate {
    /// Every gate, in the order they are checked.
    pub const ALL: [Gate; 4] =
        [Gate::LocalFormat, Gate::ClusterVersion, Gate::RecordFormat, Gate::Shutdown];

    /// Its metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Gate::LocalFormat => "local_format",
            Gate::ClusterVersion => "cluster_version",
            Gate::RecordFormat => "record_format",
            Gate::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Bounds of one turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryLimits {
    /// Most expired locks resolved per region and turn.
    pub max_locks: usize,
    /// Most records forgotten per region and turn.
    pub max_forgets: usize,
    /// How long a decided record is kept (see the module docs).
    pub forget_delay_ms: u64,
}

impl Default for RecoveryLimits {
    fn default() -> RecoveryLimits {
        RecoveryLimits {
            max_locks: MAX_LOCKS_PER_TURN,
            max_forgets: MAX_FORGETS_PER_TURN,
            forget_delay_ms: FORGET_DELAY_MS,
        }
    }
}

/// What the daemon remembers between turns on one region: when it first saw each
/// record decided (ms, by its clock). Soft state: lost on restart, which only delays
/// forgets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryMemory {
    decided_seen_ms: BTreeMap<(Bytes, u64), u64>,
}

impl RecoveryMemory {
    /// Records it remembers as decided.
    pub fn len(&self) -> usize {
        self.decided_seen_ms.len()
    }

    /// True if it remembers none.
    pub fn is_empty(&self) -> bool {
        self.decided_seen_ms.is_empty()
    }
}

/// An expired lock to resolve: ask its primary, then resolve it here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockAction {
    /// The locked key (in the planned region).
    pub key: Bytes,
    /// The lock, decoded (its format was readable).
    pub lock: Lock,
}

impl LockAction {
    /// The question to the lock's primary: its record's status, aborting it if it
    /// expired (or was never written: presumed abort).
    pub fn check_status(&self) -> TxnCmd {
        TxnCmd::CheckStatus {
            txn_id: self.lock.txn_id.0,
            primary_key: self.lock.primary_key.clone(),
            abort_if_expired: true,
        }
    }

    /// The resolve to send to the lock's region once the primary answered `state`
    /// (`None`: nothing to do yet, or never by this daemon: alive, not found below the
    /// floor, frozen).
    pub fn resolve(&self, state: &TxnState) -> Option<TxnCmd> {
        let commit = decision(state)?;
        let commit_ts = match state {
            TxnState::Committed { commit_ts } => *commit_ts,
            _ => None,
        };
        Some(TxnCmd::Resolve {
            txn_id: self.lock.txn_id.0,
            keys: vec![self.key.clone()],
            commit,
            commit_ts,
        })
    }
}

/// The outcome a primary's answer decides: `Some(true)` commit, `Some(false)` abort,
/// `None` nothing (alive, frozen, or not found: a `NotFound` after a check with
/// `abort_if_expired` means the id is below the floor, finished long ago; a lock of it
/// cannot be decided here and is left for an operator).
pub fn decision(state: &TxnState) -> Option<bool> {
    match state {
        TxnState::Committed { .. } => Some(true),
        TxnState::Aborted => Some(false),
        TxnState::Pending { .. }
        | TxnState::Staging { .. }
        | TxnState::NotFound { .. }
        | TxnState::Frozen { .. } => None,
    }
}

/// A decided record old enough to forget, and the resolves that must succeed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgetAction {
    /// Its primary key.
    pub primary_key: Bytes,
    /// The transaction.
    pub txn_id: u64,
    /// Committed (true) or aborted.
    pub committed: bool,
    /// Every key of the transaction: each is resolved (one command per key, routed by
    /// it) before the record is forgotten. Resolve is idempotent; a key without a lock
    /// of this transaction is skipped.
    pub participants: Vec<Bytes>,
    /// The record's commit timestamp (a snapshot-isolated transaction committed):
    /// what committing its locks writes their versions at.
    pub commit_ts: Option<u64>,
}

impl ForgetAction {
    /// The resolves to send first, one per participant key.
    pub fn resolves(&self) -> Vec<TxnCmd> {
        self.participants
            .iter()
            .map(|key| TxnCmd::Resolve {
                txn_id: self.txn_id,
                keys: vec![key.clone()],
                commit: self.committed,
                commit_ts: self.commit_ts,
            })
            .collect()
    }
}

/// A pending record past its TTL: ask (and abort) it on its own region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// Its primary key.
    pub primary_key: Bytes,
    /// The transaction.
    pub txn_id: u64,
    /// When it expired (ms since the Unix epoch).
    pub expired_at_ms: u64,
    /// An async-commit record (`Staging`): its participants. It is decided by a
    /// participant check ([`super::staging`]), never by time alone.
    pub staging: Option<Vec<Bytes>>,
}

impl InDoubt {
    /// The check that aborts it (a pending record; a staging one answers `Staging`,
    /// and is decided by a participant check).
    pub fn check_status(&self) -> TxnCmd {
        TxnCmd::CheckStatus {
            txn_id: self.txn_id,
            primary_key: self.primary_key.clone(),
            abort_if_expired: true,
        }
    }
}

/// What a turn saw in one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnMetrics {
    /// Locks in the table.
    pub locks: usize,
    /// Records in the table.
    pub records: usize,
    /// Pending records past their TTL.
    pub in_doubt: usize,
    /// Age of the oldest readable lock (ms; 0: none).
    pub oldest_lock_age_ms: u64,
    /// Entries not decoded, by reason (`"too_new"`: never decoded past the format
    /// byte; `"corrupt"`).
    pub unreadable: BTreeMap<&'static str, u64>,
    /// Readable entries frozen (`"unknown_status"`, `"unknown_op"`): neither committed
    /// nor aborted.
    pub frozen: BTreeMap<&'static str, u64>,
    /// Expired locks left for a later turn (past the per-turn bound).
    pub locks_deferred: usize,
}

/// One region's turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnPlan {
    /// Expired locks, oldest first, at most `max_locks`.
    pub locks: Vec<LockAction>,
    /// Pending records past their TTL.
    pub in_doubt: Vec<InDoubt>,
    /// Decided records old enough to forget, at most `max_forgets`.
    pub forgets: Vec<ForgetAction>,
    /// The region's floor if every forget goes through ([`new_floor`] for fewer).
    pub new_floor: u64,
    /// What the turn saw.
    pub metrics: TurnMetrics,
}

impl TurnPlan {
    /// The `Forget` command for the records in `forgotten` (primary key, txn id), all
    /// in this region; `None` if there are none (a floor alone is not worth a Raft
    /// write, and a command with no key cannot be routed).
    pub fn forget(&self, table: &TxnTable, forgotten: &[(Bytes, u64)]) -> Option<TxnCmd> {
        if forgotten.is_empty() {
            return None;
        }
        let ids: Vec<u64> = forgotten.iter().map(|(_, id)| *id).collect();
        Some(TxnCmd::Forget { records: forgotten.to_vec(), new_floor: new_floor(table, &ids) })
    }
}

/// Reads one entry through gate G3: the format byte first; an entry too new is never
/// decoded.
fn read_entry<T>(
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, Unreadable>,
) -> Result<T, Unreadable> {
    match format_of(bytes) {
        Some(format) if format > TXN_FORMAT_MAX_READ => Err(Unreadable::TooNew { format }),
        _ => decode(bytes),
    }
}

/// The floor a region may have once the records `forgotten` (txn ids) are gone: below
/// every transaction that still has a record or a lock there, and at most one past the
/// newest forgotten one; never lower than the current floor. A lock that cannot be
/// read hides its transaction id: then the floor stays where it is.
pub fn new_floor(table: &TxnTable, forgotten: &[u64]) -> u64 {
    let Some(&newest) = forgotten.iter().max() else { return table.floor };
    let mut bound = newest.saturating_add(1);
    for (_, id) in table.records.keys() {
        if !forgotten.contains(id) {
            bound = bound.min(*id);
        }
    }
    for bytes in table.locks.values() {
        match read_entry(bytes, Lock::decode) {
            Ok(lock) => bound = bound.min(lock.txn_id.0),
            Err(_) => return table.floor,
        }
    }
    bound.max(table.floor)
}

/// Plans one turn over `table` (one region's, as published) at `now_ms` (the
/// daemon's clock; the leader that proposes the resulting commands stamps its own).
/// Decodes only entries whose format byte passes gate G3; never panics on any bytes.
pub fn plan_turn(
    table: &TxnTable,
    now_ms: u64,
    limits: &RecoveryLimits,
    memory: &mut RecoveryMemory,
) -> TurnPlan {
    let mut plan = TurnPlan::default();
    let m = &mut plan.metrics;
    m.locks = table.locks.len();
    m.records = table.records.len();

    let mut expired = Vec::new();
    for (key, bytes) in &table.locks {
        match read_entry(bytes, Lock::decode) {
            Err(why) => *m.unreadable.entry(why.reason()).or_default() += 1,
            Ok(lock) => {
                m.oldest_lock_age_ms =
                    m.oldest_lock_age_ms.max(now_ms.saturating_sub(lock.created_at_ms));
                if lock.op == LockOp::Unspecified {
                    *m.frozen.entry("unknown_op").or_default() += 1;
                } else if now_ms > lock.expires_at_ms() {
                    expired.push(LockAction { key: key.clone(), lock });
                }
            }
        }
    }
    expired.sort_by(|a, b| (a.lock.created_at_ms, &a.key).cmp(&(b.lock.created_at_ms, &b.key)));
    m.locks_deferred = expired.len().saturating_sub(limits.max_locks);
    expired.truncate(limits.max_locks);
    plan.locks = expired;

    let mut seen = BTreeMap::new();
    for ((primary_key, txn_id), bytes) in &table.records {
        let record = match read_entry(bytes, TxnRecord::decode) {
            Err(why) => {
                *m.unreadable.entry(why.reason()).or_default() += 1;
                continue;
            }
            Ok(record) => record,
        };
        let id = (primary_key.clone(), *txn_id);
        let committed = match record.status {
            TxnStatus::Unspecified => {
                *m.frozen.entry("unknown_status").or_default() += 1;
                continue;
            }
            TxnStatus::Pending | TxnStatus::Staging => {
                if now_ms > record.expires_at_ms() {
                    m.in_doubt += 1;
                    plan.in_doubt.push(InDoubt {
                        primary_key: primary_key.clone(),
                        txn_id: *txn_id,
                        expired_at_ms: record.expires_at_ms(),
                        staging: (record.status == TxnStatus::Staging)
                            .then(|| record.participants.clone()),
                    });
                }
                continue;
            }
            TxnStatus::Committed => true,
            TxnStatus::Aborted => false,
        };
        let first_seen = memory.decided_seen_ms.get(&id).copied().unwrap_or(now_ms);
        seen.insert(id, first_seen);
        let by_fields = record
            .last_heartbeat_ms
            .max(record.created_at_ms)
            .saturating_add(record.ttl_ms)
            .saturating_add(limits.forget_delay_ms);
        let by_memory = first_seen.saturating_add(limits.forget_delay_ms);
        if now_ms >= by_fields && now_ms >= by_memory && plan.forgets.len() < limits.max_forgets {
            plan.forgets.push(ForgetAction {
                primary_key: primary_key.clone(),
                txn_id: *txn_id,
                committed,
                participants: record.participants.clone(),
                commit_ts: record.commit_ts,
            });
        }
    }
    // Only records still decided here are remembered (a forgotten one is gone).
    memory.decided_seen_ms = seen;
    let forgotten: Vec<u64> = plan.forgets.iter().map(|f| f.txn_id).collect();
    plan.new_floor = new_floor(table, &forgotten);
    plan
}

/// Reads a lock entry through gate G3 (its format byte first: never decoded if too new).
pub fn read_lock(bytes: &[u8]) -> Result<Lock, Unreadable> {
    read_entry(bytes, Lock::decode)
}

/// Reads a record entry through gate G3.
pub fn read_record(bytes: &[u8]) -> Result<TxnRecord, Unreadable> {
    read_entry(bytes, TxnRecord::decode)
}

#[cfg(test)]
mod tests;
