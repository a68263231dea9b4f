//! The read-timestamp rule that makes a leader-chosen commit timestamp safe: the
//! one-phase commit of a snapshot-isolated transaction ([`TxnCmd::OnePhase`]) never
//! commits at or below the timestamp of a read served, or being served, on one of its
//! keys (ARCHITECTURE.md, "One-phase snapshot commits").
//!
//! Per region, in memory on the store that leads it:
//! - `max_read_ts`: every snapshot read (a `Query` with a read timestamp) raises it
//!   before it reads, on the poller's path and on the caller-thread local path;
//! - the keys of one-phase commits proposed and not yet answered (in-memory locks),
//!   each with the commit timestamp stamped in its entry;
//! - the term and epoch version in which a timestamp from the oracle was learned.
//!
//! One mutex orders the two sides: a read raises `max_read_ts` and then looks for an
//! in-memory lock in its range; a one-phase commit takes its locks and chooses
//! `commit_ts = max(start_ts, max_read_ts) + 1` under the same mutex. So either the
//! read came first (the commit lands above it), or the commit did, and a read at or
//! above its timestamp meets its lock and is refused with `Dropped { CommitPending }`
//! (retryable: the client reads again once the commit applied or was refused) rather
//! than read past it. A lock is released when its proposer is answered, which happens
//! only once the round holding the versions is visible (or the command was refused or
//! dropped).
//!
//! A leader does not know what its predecessors served, and a region whose range grew
//! by a merge does not know what the source served: until it learns a timestamp from
//! the oracle taken after it became leader at its current epoch, it refuses one-phase
//! commits with `Error::ReadTsUnsynced { term }`. The client takes a timestamp after
//! that answer and sends the command again with it ([`SyncedTs`]); any read served
//! before the refusal was at a timestamp handed out before it, so below it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use parking_lot::Mutex;
use regionkv_engine::RegionId;

use super::{SyncedTs, mvcc};
use crate::error::{DropReason, Error, Result};
use crate::request::Query;

/// The read-timestamp state of every region of a store.
#[derive(Debug, Default)]
pub(crate) struct Concurrency {
    regions: Mutex<HashMap<RegionId, RegionTs>>,
}

#[derive(Debug, Default)]
struct RegionTs {
    max_read_ts: u64,
    /// The (term, epoch version) in which a timestamp from the oracle was learned.
    synced: Option<(u64, u64)>,
    /// In-memory locks: lock key -> (commit timestamp, end of the key's versions).
    locks: BTreeMap<Bytes, (u64, Bytes)>,
}

/// The leader's position a one-phase commit is proposed at.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaderAt {
    pub region: RegionId,
    pub term: u64,
    pub epoch_version: u64,
}

impl Concurrency {
    /// Records a snapshot read of `query` at its read timestamp in `region` (a read
    /// without one is not recorded), before it reads. Refused (`Dropped {
    /// CommitPending }`, retryable) if it meets an in-memory lock at or below the read
    /// timestamp.
    pub fn observe_read(&self, region: RegionId, query: &Query) -> Result<()> {
        let (read_ts, start, end) = match query {
            Query::Get { key, read_ts: Some(ts) } => (*ts, key, Bound::Included(key)),
            Query::Scan { start, end, read_ts: Some(ts), .. } => {
                (*ts, start, end.as_ref().map_or(Bound::Unbounded, Bound::Excluded))
            }
            _ => return Ok(()),
        };
        let mut regions = self.regions.lock();
        let state = regions.entry(region).or_default();
        state.max_read_ts = state.max_read_ts.max(read_ts);
        if state.locks.is_empty() {
            return Ok(());
        }
        // A lock whose key sorts before `start`'s user key ends its versions before it.
        let from = mvcc::split_boundary(start);
        let pending = state.locks.range::<Bytes, _>((Bound::Included(&from), end)).any(
            |(_, (commit_ts, versions_end))| {
                *commit_ts <= read_ts && versions_end.as_ref() > start.as_ref()
            },
        );
        if pending {
            return Err(Error::Dropped { region, reason: DropReason::CommitPending });
        }
        Ok(())
    }

    /// Chooses the commit timestamp of the one-phase commit of `keys` (lock keys) that
    /// started at `start_ts`, and takes its in-memory locks (release them with
    /// [`Concurrency::release`]). Refused, nothing taken: `ReadTsUnsynced` (no
    /// timestamp from the oracle in this term and epoch, and `synced` is not one), or
    /// `Dropped { CommitPending }` (another one-phase commit of one of the keys is in
    /// flight).
    pub fn begin_one_phase(
        &self,
        at: LeaderAt,
        start_ts: u64,
        keys: &[Bytes],
        synced: Option<SyncedTs>,
    ) -> Result<u64> {
        let mut regions = self.regions.lock();
        let state = regions.entry(at.region).or_default();
        let here = (at.term, at.epoch_version);
        if state.synced != Some(here) {
            match synced {
                Some(SyncedTs { term, ts }) if term == at.term => {
                    state.max_read_ts = state.max_read_ts.max(ts);
                    state.synced = Some(here);
                }
                _ => return Err(Error::ReadTsUnsynced { region: at.region, term: at.term }),
            }
        }
        if keys.iter().any(|k| state.locks.contains_key(k)) {
            return Err(Error::Dropped { region: at.region, reason: DropReason::CommitPending });
        }
        let commit_ts = state.max_read_ts.max(start_ts).saturating_add(1);
        for key in keys {
            let end = mvcc::decode_lock_key(key)
                .map_or_else(|| key.clone(), |user| mvcc::versions_end(&user));
            state.locks.insert(key.clone(), (commit_ts, end));
        }
        Ok(commit_ts)
    }

    /// Drops the in-memory locks of a one-phase commit once it is answered.
    pub fn release(&self, region: RegionId, keys: &[Bytes]) {
        let mut regions = self.regions.lock();
        if let Some(state) = regions.get_mut(&region) {
            for key in keys {
                state.locks.remove(key);
            }
        }
    }

    /// The region's max read timestamp.
    #[cfg(test)]
    pub fn max_read_ts(&self, region: RegionId) -> u64 {
        self.regions.lock().get(&region).map_or(0, |s| s.max_read_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: RegionId = RegionId(1);

    fn at(term: u64) -> LeaderAt {
        LeaderAt { region: R, term, epoch_version: 1 }
    }

    fn get(user: &[u8], ts: u64) -> Query {
        Query::Get { key: mvcc::lock_key(user), read_ts: Some(ts) }
    }

    fn versions(user: &[u8], ts: u64) -> Query {
        Query::Scan {
            start: mvcc::version_key(user, ts),
            end: Some(mvcc::versions_end(user)),
            limit: 1,
            read_ts: Some(ts),
        }
    }

    #[test]
    fn a_commit_lands_above_every_read_and_a_read_above_a_pending_commit_waits() {
        let c = Concurrency::default();
        let keys = [mvcc::lock_key(b"k")];
        // Unsynced: refused until a timestamp of this term is given.
        let e = c.begin_one_phase(at(3), 10, &keys, None).unwrap_err();
        assert!(matches!(e, Error::ReadTsUnsynced { term: 3, .. }), "{e:?}");
        let stale = Some(SyncedTs { term: 2, ts: 5 });
        assert!(c.begin_one_phase(at(3), 10, &keys, stale).is_err());
        c.observe_read(R, &get(b"k", 50)).unwrap();
        let commit_ts =
            c.begin_one_phase(at(3), 10, &keys, Some(SyncedTs { term: 3, ts: 20 })).unwrap();
        assert_eq!(commit_ts, 51, "above the read at 50");
        // A read at or above it meets the lock; below it, or another key, does not.
        assert!(c.observe_read(R, &versions(b"k", 51)).is_err());
        assert!(c.observe_read(R, &get(b"k", 60)).is_err());
        c.observe_read(R, &versions(b"k", 50)).unwrap();
        c.observe_read(R, &versions(b"j", 60)).unwrap();
        let all =
            Query::Scan { start: Bytes::from_static(b""), end: None, limit: 10, read_ts: Some(70) };
        assert!(c.observe_read(R, &all).is_err());
        // A second commit of the key waits for the first.
        assert!(c.begin_one_phase(at(3), 60, &keys, None).is_err());
        c.release(R, &keys);
        c.observe_read(R, &get(b"k", 70)).unwrap();
        assert_eq!(c.begin_one_phase(at(3), 60, &keys, None).unwrap(), 71);
        // A new term (or epoch) forgets the sync.
        c.release(R, &keys);
        assert!(c.begin_one_phase(at(4), 60, &keys, None).is_err());
        // Raw reads are not recorded.
        c.observe_read(R, &Query::Get { key: mvcc::lock_key(b"k"), read_ts: None }).unwrap();
        assert_eq!(c.max_read_ts(R), 70);
    }
}
