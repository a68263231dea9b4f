//! Cross-region transactions, the Raft layer's part: the `TXN` commands a region
//! applies (prewrite, commit, resolve, check status, heartbeat, forget), what they
//! answer, and the sans-I/O plans a coordinator (`Db`, the simulator's tests) and the
//! recovery daemon follow (ARCHITECTURE.md, "Transactions").
//!
//! Every command applies deterministically from itself and replicated state: the
//! leader that proposes one stamps its clock into the entry (`now_ms`), and apply
//! never reads a clock. The decision of a transaction is one Raft write on its
//! primary key's region (`Commit`, or an abort by `CheckStatus`), so commit, abort and
//! forget of one transaction are ordered by that region's log: whichever applies first
//! wins.
//!
//! A command is checked by the leader before it is proposed and again when applied
//! (`core/txn_apply.rs`); a refusal (a stale epoch, a key outside the region, a lock,
//! a floor) changes nothing and is alike on every replica. A lock or record this
//! binary cannot read (a newer format, damage, an unknown status or op) is frozen:
//! commit, resolve, check status, heartbeat and forget leave it as it is, answer
//! [`TxnState::Frozen`] and count it (`StoreMetrics::txn_frozen`); a frozen lock still
//! refuses every read and raw write of its key.

use bytes::Bytes;
use regionkv_engine::{Epoch, RegionId, StoreId};

use crate::command::{Op, WriteSession};
use crate::request::Reply;

pub(crate) mod codec;
pub(crate) mod concurrency;
pub mod gc;
pub mod mvcc;
pub mod plan;
pub(crate) mod read_ts;
pub mod recovery;
pub mod recovery_state;
pub mod staging;

pub use staging::ResolveItem;

/// A transaction command to one region (routed by its keys, or by its primary key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnCmd {
    /// Locks `ops`' keys (all in this region) for `txn_id`; with `record`, this is the
    /// primary's region and the transaction's record is created `Pending`. Refused
    /// whole if any key holds another transaction's lock (`Error::Locked`), if the
    /// record is `Aborted` (`Error::TxnAborted`) or `txn_id` is below the region's
    /// floor (`Error::TxnTooOld`). Idempotent per (txn, key); with `record`, a
    /// transaction committed already locks nothing (a late copy); with `session`, a
    /// copy of a prewrite the region applied already locks nothing either, even once
    /// its locks were resolved (ARCHITECTURE.md, "Exactly once").
    Prewrite {
        /// The transaction.
        txn_id: u64,
        /// Its primary key.
        primary_key: Bytes,
        /// This region's part of the transaction.
        ops: Vec<Op>,
        /// How long the locks and the record live without a heartbeat.
        ttl_ms: u64,
        /// Present on the primary's region only.
        record: Option<RecordInit>,
        /// A snapshot-isolated transaction's start timestamp: its keys are lock keys of
        /// the transactional keyspace ([`mvcc`]); a key with a version committed at or
        /// after it refuses the whole prewrite (`Error::WriteConflict`). `None`: level 1.
        start_ts: Option<u64>,
        /// The client's session and this prewrite's number in it (cluster version 4):
        /// a region that applied the number (or a later one of the session) answers a
        /// copy `Done` and locks nothing. `None`: applied as it comes (idempotent per
        /// key only while its lock is there).
        session: Option<WriteSession>,
        /// Async commit of a snapshot-isolated transaction (cluster version 5,
        /// [`crate::version::TXN_V3`]; [`staging`]): the client asks for a minimum
        /// commit timestamp, the leader stamps it (above every snapshot read of the
        /// region, under the read-timestamp mutex, as for [`TxnCmd::OnePhase`]) and
        /// every lock (and a staging record) keeps it; answered
        /// [`TxnReply::Prewritten`]. Needs `start_ts`. `None`: two-phase or level 1.
        min_commit: Option<MinCommit>,
    },
    /// The decision: the record goes `Pending -> Committed` and this region's locks of
    /// the transaction are applied into data in the same round. `Committed` already:
    /// answered again. `Aborted`: `Error::TxnAborted`. No record: `Error::TxnNotFound`.
    Commit {
        /// The transaction.
        txn_id: u64,
        /// Its primary key.
        primary_key: Bytes,
        /// A snapshot-isolated transaction's commit timestamp, above its start
        /// timestamp (refused otherwise, and refused without it): each lock's value
        /// becomes the key's version at it. `None`: level 1.
        commit_ts: Option<u64>,
    },
    /// Applies (`commit`) or drops the locks of `txn_id` on `keys` in this region;
    /// a key without a lock of this transaction is skipped. Idempotent.
    Resolve {
        /// The transaction.
        txn_id: u64,
        /// The keys to resolve (in this region).
        keys: Vec<Bytes>,
        /// Apply the locks' writes (true) or drop them.
        commit: bool,
        /// The commit timestamp (from the record) that committing a snapshot-isolated
        /// lock writes its version at; committing such a lock without it is refused.
        commit_ts: Option<u64>,
    },
    /// Asks the record. With `abort_if_expired`, a `Pending` record past its TTL (by
    /// the proposing leader's clock) becomes `Aborted`, and a missing one (at or above
    /// the floor) is written `Aborted` (presumed abort: a late prewrite then fails).
    /// An abort drops this region's locks of the transaction in the same round.
    CheckStatus {
        /// The transaction.
        txn_id: u64,
        /// Its primary key.
        primary_key: Bytes,
        /// Abort it if it is expired (or was never prewritten here).
        abort_if_expired: bool,
    },
    /// Extends a `Pending` record's life: `last_heartbeat = max(last, now)`, `ttl`.
    Heartbeat {
        /// The transaction.
        txn_id: u64,
        /// Its primary key.
        primary_key: Bytes,
        /// The new TTL.
        ttl_ms: u64,
    },
    /// Deletes decided records (a pending one is kept) and raises the region's floor
    /// to `new_floor` (never lowers it).
    Forget {
        /// The records: (primary key, txn id).
        records: Vec<(Bytes, u64)>,
        /// The region's new floor.
        new_floor: u64,
    },
    /// Async commit's resolves of many transactions in one Raft write (cluster
    /// version 4): each item applied in order, like a `Resolve`, or, with
    /// `decide`, first decides its `Staging` record (in this region) and resolves
    /// by the record's decision ([`staging`]).
    ResolveMany {
        /// The transactions' parts in this region.
        items: Vec<ResolveItem>,
    },
    /// Async commit's participant check (cluster version 4): for each key, is it
    /// locked by `txn_id`? A key that is not gets a prevention marker, so that its
    /// prewrite is refused from now on ([`staging`]). Answers
    /// [`TxnReply::Checked`].
    CheckLocks {
        /// The transaction (its record is `Staging`).
        txn_id: u64,
        /// Participant keys in this region (never the primary key).
        keys: Vec<Bytes>,
    },
    /// One-phase commit of a snapshot-isolated transaction whose keys are all in this
    /// region (since cluster version 4, `version::TXN_V2`): no lock, no record, one
    /// Raft write. The leader chooses `commit_ts` above its region's max read
    /// timestamp (`txn::concurrency`) and stamps it in the entry; apply refuses the
    /// whole command, writing nothing, if a key has a version committed after
    /// `start_ts` (`Error::WriteConflict`; a version at `start_ts` itself is one its
    /// reads saw) or a lock (`Error::Locked`), and otherwise
    /// writes every version at `commit_ts` in one round. Answers
    /// `Status(Committed { commit_ts })`.
    OnePhase {
        /// The transaction's start timestamp.
        start_ts: u64,
        /// Its writes, on lock keys of the transactional keyspace ([`mvcc`]).
        ops: Vec<Op>,
        /// Stamped by the proposing leader (a client sends `None`; an entry without
        /// it is refused).
        commit_ts: Option<u64>,
        /// A timestamp the client took from the oracle after a leader of `term`
        /// refused with `Error::ReadTsUnsynced` (client to leader only; never in an
        /// entry): it proves no read served by an earlier leader is above it.
        synced: Option<SyncedTs>,
        /// Its number in the client's session (as a prewrite's): a copy of a commit the
        /// region applied already is answered `Committed { commit_ts: None }` and
        /// writes nothing, where it would otherwise meet its own versions and answer
        /// `WriteConflict`. `None`: applied as it comes.
        session: Option<crate::command::WriteSession>,
    },
    /// One chunk of a region's version GC at cluster safepoint `safepoint`
    /// (`crate::txn::gc`): raises the region's GC floor to it (never lowers it) and
    /// deletes `keys`, each a version key of the transactional keyspace committed at
    /// or below it (refused whole otherwise). The leader lists exactly what to delete,
    /// so the apply is decided by the entry alone; a chunk applied twice deletes
    /// nothing more. Needs cluster version 4 (`crate::version::TXN_V2`).
    CollectVersions {
        /// The cluster safepoint collected at.
        safepoint: u64,
        /// The version keys to delete (in this region).
        keys: Vec<Bytes>,
    },
}

/// A prewrite's request for a minimum commit timestamp (async commit of a
/// snapshot-isolated transaction; see [`TxnCmd::Prewrite`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinCommit {
    /// Stamped by the proposing leader (a client sends `None`; an entry without it is
    /// refused).
    pub ts: Option<u64>,
    /// As [`TxnCmd::OnePhase`]'s `synced` (client to leader only; never in an entry).
    pub synced: Option<SyncedTs>,
}

/// A timestamp from the oracle taken after the region's leader of `term` asked for
/// one (`Error::ReadTsUnsynced`); see [`TxnCmd::OnePhase`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncedTs {
    /// The leader's term the refusal named.
    pub term: u64,
    /// The timestamp, taken after the refusal was received.
    pub ts: u64,
}

impl TxnCmd {
    /// The transaction the command is about (`None`: `Forget`, about many, and
    /// `CollectVersions`, about none).
    pub fn txn_id(&self) -> Option<u64> {
        match self {
            TxnCmd::Prewrite { txn_id, .. }
            | TxnCmd::Commit { txn_id, .. }
            | TxnCmd::Resolve { txn_id, .. }
            | TxnCmd::CheckStatus { txn_id, .. }
            | TxnCmd::Heartbeat { txn_id, .. }
            | TxnCmd::CheckLocks { txn_id, .. } => Some(*txn_id),
            TxnCmd::ResolveMany { items } if items.len() == 1 => items.first().map(|i| i.txn_id),
            TxnCmd::Forget { .. }
            | TxnCmd::ResolveMany { .. }
            | TxnCmd::OnePhase { .. }
            | TxnCmd::CollectVersions { .. } => None,
        }
    }

    /// Every key the command names (they must all be in the region it is sent to).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            TxnCmd::Prewrite { ops, .. } | TxnCmd::OnePhase { ops, .. } => {
                ops.iter().map(Op::key).collect()
            }
            TxnCmd::Commit { primary_key, .. }
            | TxnCmd::CheckStatus { primary_key, .. }
            | TxnCmd::Heartbeat { primary_key, .. } => vec![primary_key.as_ref()],
            TxnCmd::Resolve { keys, .. }
            | TxnCmd::CheckLocks { keys, .. }
            | TxnCmd::CollectVersions { keys, .. } => keys.iter().map(Bytes::as_ref).collect(),
            TxnCmd::ResolveMany { items } => items
                .iter()
                .flat_map(|i| i.primary_key.iter().chain(&i.keys))
                .map(Bytes::as_ref)
                .collect(),
            TxnCmd::Forget { records, .. } => records.iter().map(|(k, _)| k.as_ref()).collect(),
        }
    }
}

/// What a primary's prewrite puts in the new record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInit {
    /// Every key of the transaction, the primary included.
    pub participants: Vec<Bytes>,
    /// The store whose client coordinates it, for diagnostics.
    pub coordinator: Option<StoreId>,
    /// Async commit (cluster version 4): the record is created `Staging`, not
    /// `Pending` ([`staging`]).
    pub staging: bool,
}

impl TxnCmd {
    /// True for what cluster version 4 ([`crate::version::TXN_V2`]) brought: async
    /// commit's staging prewrite, a prewrite's session, `ResolveMany` and
    /// `CheckLocks`.
    pub fn needs_v2(&self) -> bool {
        match self {
            TxnCmd::Prewrite { record, session, .. } => {
                record.as_ref().is_some_and(|r| r.staging) || session.is_some()
            }
            TxnCmd::ResolveMany { .. }
            | TxnCmd::CheckLocks { .. }
            | TxnCmd::OnePhase { .. }
            | TxnCmd::CollectVersions { .. } => true,
            _ => false,
        }
    }

    /// True for what cluster version 5 ([`crate::version::TXN_V3`]) brought: a
    /// prewrite asking for a minimum commit timestamp.
    pub fn needs_v3(&self) -> bool {
        matches!(self, TxnCmd::Prewrite { min_commit: Some(_), .. })
    }
}

/// What an applied transaction command answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnReply {
    /// Prewrite, resolve, forget: done.
    Done,
    /// Commit, check status, heartbeat: the transaction's state after the command.
    Status(TxnState),
    /// `CheckLocks`: true if every key was locked by the transaction; false if one
    /// was not (it is now prevented).
    Checked {
        /// Every key locked by the transaction.
        all_locked: bool,
        /// All locked, and every lock holds a minimum commit timestamp (async commit
        /// of a snapshot transaction): the largest. `None` otherwise (or from a node
        /// of an older binary): a checker then commits at a timestamp from the oracle.
        min_commit_ts: Option<u64>,
    },
    /// A prewrite that asked for a minimum commit timestamp: the largest its keys'
    /// locks hold (each lock keeps the value of the prewrite that wrote it, so a copy
    /// answers what the first applied). A reply `Done` to such a prewrite (a node of
    /// an older binary, or a copy whose locks were resolved already) is never taken
    /// as committed: the coordinator decides before it answers.
    Prewritten {
        /// The largest minimum commit timestamp of the prewrite's locks.
        min_commit_ts: u64,
    },
    /// `ResolveMany`: per item, in order, the record's state after a deciding item
    /// (`None` for a plain resolve).
    Resolved(Vec<Option<TxnState>>),
    /// A staging prewrite (async commit) applied by a store that did not confirm the
    /// staging flag: over the client protocol, a node of an older binary skips the
    /// flag and applies a plain prewrite, whose record is `Pending` (absent is
    /// unknown, never "staged"). Made only by the client side of the protocol from an
    /// answer without the confirmation; a store of this binary never answers it. The
    /// coordinator commits such a transaction in two phases.
    Unstaged,
}

/// A transaction's state, as its record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnState {
    /// Not decided; others may abort it after `expires_at_ms`.
    Pending {
        /// Last heartbeat plus TTL (ms since the Unix epoch).
        expires_at_ms: u64,
    },
    /// Committed.
    Committed {
        /// The record's commit timestamp (a snapshot-isolated transaction); `None`:
        /// level 1.
        commit_ts: Option<u64>,
    },
    /// Aborted.
    Aborted,
    /// Async commit, not decided yet: committed once every participant is known
    /// locked, aborted once one is known never to be ([`staging`]); nobody may look
    /// before `expires_at_ms`.
    Staging {
        /// Last heartbeat plus TTL (ms since the Unix epoch).
        expires_at_ms: u64,
        /// Every key of the transaction, the primary included.
        participants: Vec<Bytes>,
    },
    /// No record, and none was written (`abort_if_expired` was false, or the id is
    /// below `floor`: finished and forgotten, its outcome applied long ago).
    NotFound {
        /// The region's floor.
        floor: u64,
    },
    /// The record cannot be read by this binary (a newer format, damage, or an
    /// unknown status): neither committed nor aborted by anyone here.
    Frozen {
        /// Why (`"too_new"`, `"corrupt"`, `"unknown_status"`).
        reason: String,
    },
}

/// A transaction command to one region, as a store takes it.
pub struct TxnRequest {
    /// The region the client routed it to.
    pub region: RegionId,
    /// The region's epoch as the client knows it.
    pub epoch: Epoch,
    /// The command.
    pub cmd: TxnCmd,
    /// Called once it is applied (or refused).
    pub reply: Reply<TxnReply>,
}

/// The refusal for a read or write that meets the lock `lock` (encoded) on `key`. A
/// lock this binary cannot read (a newer format, damage) still refuses: it names no
/// holder (`txn_id` 0, an empty primary key) and never expires (`u64::MAX`), so a
/// caller waits for it rather than resolve it.
pub(crate) fn locked(key: &[u8], lock: &[u8]) -> crate::error::Error {
    let key = Bytes::copy_from_slice(key);
    match regionkv_engine::txn::Lock::decode(lock) {
        Ok(l) => crate::error::Error::Locked {
            key,
            txn_id: l.txn_id.0,
            expires_at_ms: l.expires_at_ms(),
            primary_key: l.primary_key,
            lock_start_ts: l.start_ts,
        },
        Err(_) => crate::error::Error::Locked {
            key,
            txn_id: 0,
            primary_key: Bytes::new(),
            expires_at_ms: u64::MAX,
            lock_start_ts: None,
        },
    }
}
