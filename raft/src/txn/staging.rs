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
//! **Snapshot transactions** (cluster version 5, [`crate::version::TXN_V3`]). A
//! snapshot transaction whose keys span regions commits the same way, and needs a
//! commit timestamp no snapshot read already served on one of its keys would miss.
//! Each prewrite asks for a *minimum commit timestamp* ([`super::MinCommit`]): the
//! region's leader stamps `max(start_ts, max_read_ts) + 1` under the read-timestamp
//! mutex (`txn::concurrency`, as for a one-phase commit), holds in-memory locks on the
//! keys until the prewrite is answered, and refuses with `ReadTsUnsynced` until it
//! holds an oracle timestamp of its term. Every lock keeps the stamped value (and the
//! staging record the primary's prewrite's). The transaction's commit timestamp is the
//! largest minimum commit timestamp of its locks ([`commit_ts_of`]): so it is above
//! every snapshot read of every key served before the key's prewrite was stamped. A
//! read stamped after meets the in-memory lock or the lock itself; at or above the
//! lock's value it resolves or waits; below it, it reads past it (the version below),
//! since the transaction can only commit above it (`reader::first_lock`).
//!
//! **Why a checker commits at the coordinator's timestamp.** The coordinator takes the
//! largest of its prewrites' answers; each answer is the largest value *its keys'
//! locks hold* after the apply (a copy of a prewrite answers what the first wrote,
//! never its own stamp: a lock, once written, never changes its value, and a second
//! prewrite of a key already locked writes nothing). So the coordinator's timestamp is
//! the largest value over every lock of the transaction. A checker that decides
//! `Committed` found every participant but the primary key locked (all of them, or it
//! would abort), and `CheckLocks` answers the largest value of the locks it found; the
//! primary key's lock holds the value the staging record holds (written by the same
//! apply), which the decision itself adds ([`ResolveItem::commit_ts`] is maxed with it
//! at apply). Every lock is still there when the check runs, unchanged (a lock goes
//! only after the record is decided), so both take the maximum of the same set. The
//! coordinator's own decision item carries its timestamp, maxed with the record's
//! value too (a no-op), so whoever decides first, the record's `commit_ts` is the one
//! the coordinator answered.
//!
//! **Answers without a value.** A prewrite answered `Done` (a node of an older binary;
//! a copy whose locks were resolved already) or a check answered without a value is
//! never taken as committed by that value: the coordinator decides the record (at the
//! larger of a fresh oracle timestamp and what it learned) before it answers, and
//! answers the record's decision; a checker commits at the larger of a fresh oracle
//! timestamp and the values found. A timestamp taken after every prewrite applied is
//! above every read served before, so either is a timestamp two-phase commit could
//! have chosen.
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

/// The commit timestamp of an async-commit snapshot transaction from its prewrites'
/// answers: the largest minimum commit timestamp; `None` if one answered without one
/// (then the coordinator must decide before it answers).
pub fn commit_ts_of<'r>(replies: impl IntoIterator<Item = &'r super::TxnReply>) -> Option<u64> {
    let mut max = None;
    for reply in replies {
        match reply {
            super::TxnReply::Prewritten { min_commit_ts } => max = max.max(Some(*min_commit_ts)),
            _ => return None,
        }
    }
    max
}

/// The commit timestamp a check of a snapshot transaction found: the largest of the
/// regions' answers (`CheckLocks`' `min_commit_ts`); `None` if one had none (then the
/// checker takes a fresh oracle timestamp as well).
pub fn checked_commit_ts(answers: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    let mut max = Some(0);
    for answer in answers {
        max = max.zip(answer).map(|(a, b)| a.max(b));
    }
    max
}

/// The decision a check comes to: commit if every region answered all locked.
pub fn decision_of_check(all_locked: impl IntoIterator<Item = bool>) -> bool {
    all_locked.into_iter().all(|locked| locked)
}

/// The command that decides `txn_id`'s `Staging` record on its primary key's region
/// (resolving `keys`, that region's participant keys, by the decision).
pub fn decide(txn_id: u64, primary_key: Bytes, keys: Vec<Bytes>, commit: bool) -> TxnCmd {
    decide_at(txn_id, primary_key, keys, commit, None)
}

/// [`decide`] of a snapshot transaction: committing, at `commit_ts` or the record's
/// own minimum commit timestamp, whichever is larger.
pub fn decide_at(
    txn_id: u64,
    primary_key: Bytes,
    keys: Vec<Bytes>,
    commit: bool,
    commit_ts: Option<u64>,
) -> TxnCmd {
    TxnCmd::ResolveMany {
        items: vec![ResolveItem {
            txn_id,
            primary_key: Some(primary_key),
            keys,
            commit,
            commit_ts,
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

#[cfg(test)]
mod tests {
    use super::super::TxnReply;
    use super::*;

    #[test]
    fn a_prewrite_answered_without_a_minimum_commit_timestamp_is_never_a_commit_timestamp() {
        let p = |ts| TxnReply::Prewritten { min_commit_ts: ts };
        assert_eq!(commit_ts_of(&[p(7), p(12), p(9)]), Some(12));
        // A node of an older binary answers `Done`: the coordinator decides first.
        assert_eq!(commit_ts_of(&[p(7), TxnReply::Done]), None);
        assert_eq!(checked_commit_ts([Some(4), Some(11)]), Some(11));
        assert_eq!(checked_commit_ts([Some(4), None]), None);
    }
}
