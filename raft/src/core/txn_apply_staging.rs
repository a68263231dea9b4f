//! Applying async commit's commands (`crate::txn::staging`): `ResolveMany` (a
//! `Staging` record decided, then locks resolved by the decision) and `CheckLocks`
//! (the participant check, with its prevention markers). A child of `txn_apply`.
//!
//! A snapshot transaction's `Staging` record (cluster version 5) commits only at a
//! timestamp at or above every lock's minimum commit timestamp: the deciding item
//! carries the largest its sender learned (the coordinator from its prewrites'
//! answers, a checker from `CheckLocks`), and the decision takes the larger of it and
//! the record's own (the primary's prewrite's, which no check asks about).

use bytes::Bytes;
use regionkv_engine::txn::{TxnId, TxnRecord, TxnStatus};

use super::{Found, TxnApply, frozen, lock_of};
use crate::error::Result;
use crate::txn::{ResolveItem, TxnReply, TxnState};

impl TxnApply<'_, '_> {
    /// An `Aborted` record of `txn_id` keyed by `key`: presumed abort on a primary
    /// key, or an async-commit prevention marker on any other key
    /// (`crate::txn::staging`).
    pub(super) fn tombstone(&self, key: &Bytes, txn_id: u64) -> TxnRecord {
        TxnRecord {
            txn_id: TxnId(txn_id),
            status: TxnStatus::Aborted,
            primary_key: key.clone(),
            participants: Vec::new(),
            created_at_ms: self.now,
            ttl_ms: 0,
            last_heartbeat_ms: self.now,
            coordinator: None,
            decided_at_index: Some(self.index),
            start_ts: None,
            commit_ts: None,
            min_commit_ts: None,
        }
    }

    /// `ResolveMany`: each item in order; a deciding item decides its `Staging`
    /// record first and resolves by the record's decision, whatever the item asked.
    pub(super) fn resolve_many(&mut self, items: &[ResolveItem]) -> Result<Result<TxnReply>> {
        let mut states = Vec::with_capacity(items.len());
        for item in items {
            let keys = || item.keys.iter().map(Bytes::as_ref);
            let Some(primary_key) = &item.primary_key else {
                if item.commit
                    && self.check_commit_ts(item.txn_id, keys(), item.commit_ts)?.is_err()
                {
                    // Left as it is: a snapshot-isolated lock needs its commit timestamp.
                    states.push(Some(TxnState::Frozen { reason: "commit_ts".into() }));
                    continue;
                }
                self.resolve(item.txn_id, keys(), item.commit, item.commit_ts)?;
                states.push(None);
                continue;
            };
            let state = self.decide(item.txn_id, primary_key, item.commit, item.commit_ts)?;
            let (commit, commit_ts) = match &state {
                TxnState::Committed { commit_ts } => (true, *commit_ts),
                TxnState::Aborted => (false, None),
                _ => {
                    states.push(Some(state));
                    continue;
                }
            };
            let participants = match self.record(primary_key, item.txn_id)? {
                Found::Readable(r) => r.participants,
                _ => Vec::new(),
            };
            let all = participants.iter().chain(&item.keys).map(Bytes::as_ref);
            self.resolve(item.txn_id, all, commit, commit_ts)?;
            states.push(Some(state));
        }
        Ok(Ok(TxnReply::Resolved(states)))
    }

    /// Decides `txn_id`'s record on `primary_key` from `Staging` by `commit`, and
    /// answers its state after. A record decided already keeps its decision; an absent
    /// one aborted is written `Aborted` (presumed abort, at or above the floor); a
    /// pending or frozen one is left as it is.
    ///
    /// A snapshot transaction's record (with `start_ts`) commits at the larger of
    /// `commit_ts` and its own minimum commit timestamp; without a `commit_ts` above
    /// its start it is left `Staging`, answered `Frozen { "commit_ts" }` (nobody
    /// decides on that answer).
    fn decide(
        &mut self,
        txn_id: u64,
        primary_key: &Bytes,
        commit: bool,
        commit_ts: Option<u64>,
    ) -> Result<TxnState> {
        let mut record = match self.record(primary_key, txn_id)? {
            Found::Absent => {
                let floor = self.applier.round.txn_floor()?;
                if commit || txn_id < floor {
                    return Ok(TxnState::NotFound { floor });
                }
                let tombstone = self.tombstone(primary_key, txn_id);
                self.set_record(&tombstone)?;
                return Ok(TxnState::Aborted);
            }
            Found::Frozen(reason) => {
                self.frozen += 1;
                return Ok(TxnState::Frozen { reason: reason.to_string() });
            }
            Found::Readable(r) => r,
        };
        Ok(match record.status {
            TxnStatus::Staging => {
                if commit && let Some(start) = record.start_ts {
                    match commit_ts.map(|ts| ts.max(record.min_commit_ts.unwrap_or(0))) {
                        Some(ts) if ts > start => record.commit_ts = Some(ts),
                        _ => return Ok(TxnState::Frozen { reason: "commit_ts".into() }),
                    }
                }
                record.status = if commit { TxnStatus::Committed } else { TxnStatus::Aborted };
                record.decided_at_index = Some(self.index);
                self.set_record(&record)?;
                if commit {
                    TxnState::Committed { commit_ts: record.commit_ts }
                } else {
                    TxnState::Aborted
                }
            }
            TxnStatus::Committed => TxnState::Committed { commit_ts: record.commit_ts },
            TxnStatus::Aborted => TxnState::Aborted,
            TxnStatus::Pending | TxnStatus::Unspecified => {
                TxnState::Pending { expires_at_ms: record.expires_at_ms() }
            }
        })
    }

    /// `CheckLocks`: true if every key (in this region) holds `txn_id`'s lock; each
    /// that does not is prevented (an `Aborted` record keyed by it and the transaction
    /// refuses its prewrite from now on). A frozen lock or marker among them: nothing
    /// is written, and the answer is frozen (nobody decides on it).
    pub(super) fn check_locks(&mut self, txn_id: u64, keys: &[Bytes]) -> Result<Result<TxnReply>> {
        let mut unlocked = Vec::new();
        // The largest minimum commit timestamp of the locks found (`None` once one
        // has none).
        let mut min_commit_ts = Some(0);
        for key in keys {
            match self.applier.round.txn_lock(key)?.map(|held| lock_of(&held)) {
                Some(Found::Readable(lock)) if lock.txn_id.0 == txn_id => {
                    min_commit_ts = min_commit_ts.zip(lock.min_commit_ts).map(|(a, b)| a.max(b));
                    continue;
                }
                Some(Found::Frozen(reason)) => {
                    self.frozen += 1;
                    return Ok(Ok(frozen(reason)));
                }
                _ => {}
            }
            match self.record(key, txn_id)? {
                Found::Frozen(reason) => {
                    self.frozen += 1;
                    return Ok(Ok(frozen(reason)));
                }
                // The transaction's own record (a checker asked about its primary key):
                // its prewrite applied with it.
                Found::Readable(r) if r.status != TxnStatus::Aborted => {
                    min_commit_ts = min_commit_ts.zip(r.min_commit_ts).map(|(a, b)| a.max(b));
                }
                Found::Readable(_) => unlocked.push(None),
                Found::Absent => unlocked.push(Some(key)),
            }
        }
        let floor = self.applier.round.txn_floor()?;
        let all_locked = unlocked.is_empty();
        for key in unlocked.into_iter().flatten() {
            // Below the floor a prewrite is refused anyway (`TxnTooOld`).
            if txn_id >= floor {
                let marker = self.tombstone(key, txn_id);
                self.set_record(&marker)?;
            }
        }
        let min_commit_ts = min_commit_ts.filter(|_| all_locked && !keys.is_empty());
        Ok(Ok(TxnReply::Checked { all_locked, min_commit_ts }))
    }
}
