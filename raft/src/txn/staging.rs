//! Async commit (cluster version 4, [`crate::version::TXN_V2`]): a cross-region
//! transaction is committed once all of its prewrites are applied, with no commit
//! round before the caller is answered (ARCHITECTURE.md, "Async commit").
//!
//! 1. The coordinator sends every prewrite at once; the primary's creates the record
//!    with status `Staging` ([`RecordInit::staging`](super::RecordInit)), listing every
//!    participant key.
//! 2. When every prewrite is applied the transaction IS committed: the caller is
//!    answered `Ok`. Then, without waiting, the record is decided `Committed` and the
//!    locks resolved, by [`TxnCmd::ResolveMany`]: many transactions' items in one Raft
//!    write per region. The primary's region's item decides the record first
//!    ([`ResolveItem::primary_key`]); the other regions' items are sent only once the
//!    decision applied.
//! 3. Whoever finds a `Staging` record past its TTL (a reader that meets a lock, the
//!    recovery daemon, `Db::txn_outcome`) asks every participant's region with
//!    [`TxnCmd::CheckLocks`] ([`check_keys`]): each key is either locked by the
//!    transaction, or is given a prevention marker (an `Aborted` record keyed by that
//!    key and the transaction's id) that refuses any later prewrite of the key for
//!    the transaction (`Error::TxnAborted`). All locked: the record is decided
//!    `Committed`; one not: `Aborted` ([`decision_of_check`]). Deciding goes only from
//!    `Staging`, so whichever decision applies first wins.
//!
//! **The soundness rule.** A lock of a transaction is resolved (applied or dropped)
//! only after its record is decided. So while the record is `Staging`, a participant
//! key without the transaction's lock was never prewritten, or its prewrite is still
//! on the way (and the marker now refuses it).
//!
//! **Why a coordinator never answers `Ok` for a transaction that ends aborted.** It
//! answers `Ok` only once every prewrite is applied, each leaving its lock. An abort is
//! decided either by the coordinator itself when it gives up (it then answers by the
//! record's final state, never `Ok` for an abort), or by a checker that found a key
//! `k` unlocked. That abort applies only from `Staging`: it is the first decision, so
//! no lock of the transaction was resolved before it, nor before the check that
//! preceded it. So at the check `k`'s prewrite had not applied (in `k`'s region log),
//! and the marker the check wrote refuses it: the coordinator never sees every
//! prewrite applied. The primary key is never checked: the `Staging` record, written
//! by the primary's prewrite together with its locks, proves that one applied.
//!
//! A prevention marker is an `Aborted` record without participants, forgotten like any
//! decided record (the recovery daemon's forget delay).

use bytes::Bytes;

use super::{TxnCmd, TxnState};

/// One transaction's part of a [`TxnCmd::ResolveMany`] in one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveItem {
    /// The transaction.
    pub txn_id: u64,
    /// `Some`: the record's primary key (in this region): decide the record from
    /// `Staging` by `commit` first (an absent record aborted is written `Aborted`,
    /// presumed abort), then resolve `keys` by the record's decision, whichever it is;
    /// a record not decided (pending, frozen) resolves nothing. `None`: resolve `keys`
    /// by `commit`, like `Resolve`.
    pub primary_key: Option<Bytes>,
    /// The keys to resolve (in this region).
    pub keys: Vec<Bytes>,
    /// Commit (true) or abort.
    pub commit: bool,
    /// The commit timestamp a snapshot-isolated lock is committed at (`None`: level 1).
    pub commit_ts: Option<u64>,
}

/// The keys a checker asks about: every participant but the primary key (the
/// `Staging` record proves the primary's prewrite applied).
pub fn check_keys(participants: &[Bytes], primary_key: &[u8]) -> Vec<Bytes> {
    participants.iter().filter(|k| k.as_ref() != primary_key).cloned().collect()
}

/// The decision a check comes to: commit if every region answered all locked.
pub fn decision_of_check(all_locked: impl IntoIterator<Item = bool>) -> bool {
    all_locked.into_iter().all(|locked| locked)
}

/// The command that decides `txn_id`'s `Staging` record on its primary key's region
/// (resolving `keys`, that region's participant keys, by the decision).
pub fn decide(txn_id: u64, primary_key: Bytes, keys: Vec<Bytes>, commit: bool) -> TxnCmd {
    TxnCmd::ResolveMany {
        items: vec![ResolveItem {
            txn_id,
            primary_key: Some(primary_key),
            keys,
            commit,
            commit_ts: None,
        }],
    }
}

/// The state a one-item deciding `ResolveMany` answered (`None`: not one).
pub fn decided_state(reply: &super::TxnReply) -> Option<TxnState> {
    match reply {
        super::TxnReply::Resolved(states) => states.first().cloned().flatten(),
        _ => None,
    }
}
