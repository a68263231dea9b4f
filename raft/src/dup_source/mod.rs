//! Duplication, the source side's readers: what a shipper (on a thread of its own,
//! never a poller) reads from the store that leads a region, to send the region's data
//! to another cluster (ARCHITECTURE.md, "Duplication: reading the source").
//!
//! - [`crate::Store::dup_read_log`]: the raw-key effects of the region's applied
//!   entries after an index, decoded from the Raft log ([`DupLogBatch`]).
//! - [`crate::Store::dup_seed_image`]: a pinned image of the region's raw keys at an
//!   applied index ([`DupSeedImage`]), read in chunks.
//! - [`crate::Store::wait_applied`]: blocks until the region applied past an index.
//!
//! **Which writes applied.** Apply refuses a client write (stale epoch, a key outside
//! the region, over the limits, a key holding a lock) or skips it (its session applied
//! it already) from state that is not in the entry: the region's shape, lock table and
//! session table at that index. The reader does not reproduce those decisions; apply
//! records them: each region's [`SourceWatch`] keeps, for every entry applied in this
//! process's life of the replica, the positions of the writes that did not apply
//! (rare; none for most entries), from `known_from` (the applied index when the
//! replica first applied or published here) on. An entry at or below `known_from` was
//! applied before a restart: its outcome is unknown here, and reading it is
//! [`crate::Error::DupOutcomeUnknown`] (never a guess).

mod decode;
mod seed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use regionkv_engine::{IdHashMap, RegionId};

pub(crate) use self::decode::read_log;
pub use self::seed::{DupSeedImage, SeedChunks};

/// The raw-key effects of a run of a region's applied entries, `(after, last]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DupLogBatch {
    /// The index the batch follows (as asked).
    pub after: u64,
    /// The last entry the batch covers (`after` if it covers none): every entry in
    /// `(after, last]` is in `ops` or had no raw effect.
    pub last: u64,
    /// The effects, in log order (and within an entry, in apply order).
    pub ops: Vec<DupOp>,
    /// Bytes of keys and values in `ops`.
    pub bytes: usize,
    /// Entries covered: `last - after`.
    pub entries: u64,
}

/// One raw key's change, as the entry at `index` applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DupOp {
    /// The entry's Raft index.
    pub index: u64,
    /// The key.
    pub key: Bytes,
    /// The value written; `None`: the key was deleted.
    pub value: Option<Bytes>,
}

/// What the shipper's thread sees of one region's replica here: published by the
/// poller once what the replica applied is visible, and the writes apply did not
/// apply (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SourceWatch {
    state: Mutex<WatchState>,
    applied: Condvar,
}

#[derive(Debug, Default)]
struct WatchState {
    /// The replica's applied index, visible in the engine.
    applied: u64,
    /// The replica leads its group (as of its last turn).
    leader: bool,
    /// Outcomes are known for entries above this (`None`: the replica has not started
    /// here yet).
    known_from: Option<u64>,
    /// Entries with writes that did not apply: index -> their positions in the entry.
    skipped: BTreeMap<u64, Vec<u32>>,
    /// The replica was destroyed.
    gone: bool,
}

/// A copy of a watch's state for one read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WatchView {
    pub applied: u64,
    pub leader: bool,
    pub known_from: Option<u64>,
    pub gone: bool,
}

impl SourceWatch {
    /// The replica starts recording here, having applied `applied` before (the first
    /// apply or publish of this replica in this process); later calls change nothing.
    pub(crate) fn start(&self, applied: u64) {
        let mut s = self.state.lock();
        s.known_from.get_or_insert(applied);
        s.applied = s.applied.max(applied);
    }

    /// The writes at `positions` of entry `index` did not apply.
    pub(crate) fn skip(&self, index: u64, positions: Vec<u32>) {
        self.state.lock().skipped.insert(index, positions);
    }

    /// Publishes the replica's applied index (visible now) and role; wakes waiters if
    /// the index moved. `first_index` is the region's log start, asked only if some
    /// skipped writes are recorded (those below it are forgotten).
    pub(crate) fn publish(&self, applied: u64, leader: bool, first_index: impl FnOnce() -> u64) {
        let mut s = self.state.lock();
        s.leader = leader;
        if let Some(&oldest) = s.skipped.keys().next() {
            let first = first_index();
            if oldest < first {
                s.skipped = s.skipped.split_off(&first);
            }
        }
        if applied != s.applied {
            s.applied = applied;
            drop(s);
            self.applied.notify_all();
        }
    }

    fn gone(&self) {
        let mut s = self.state.lock();
        s.gone = true;
        s.leader = false;
        drop(s);
        self.applied.notify_all();
    }

    pub(crate) fn view(&self) -> WatchView {
        let s = self.state.lock();
        WatchView { applied: s.applied, leader: s.leader, known_from: s.known_from, gone: s.gone }
    }

    /// The skipped writes of entries in `[low, high]`.
    pub(crate) fn skipped_in(&self, low: u64, high: u64) -> BTreeMap<u64, Vec<u32>> {
        if low > high {
            return BTreeMap::new();
        }
        let s = self.state.lock();
        s.skipped.range(low..=high).map(|(i, p)| (*i, p.clone())).collect()
    }

    /// The applied index once it is above `above` (at once if it is), or `None` at
    /// `timeout` or if the replica goes.
    pub(crate) fn wait_above(&self, above: u64, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        loop {
            if s.applied > above {
                return Some(s.applied);
            }
            if s.gone || self.applied.wait_until(&mut s, deadline).timed_out() {
                return (s.applied > above).then_some(s.applied);
            }
        }
    }
}

/// Every region's [`SourceWatch`] on a store.
#[derive(Debug, Default)]
pub(crate) struct SourceWatches {
    map: RwLock<IdHashMap<RegionId, Arc<SourceWatch>>>,
}

impl SourceWatches {
    /// The region's watch, made if it has none.
    pub(crate) fn get_or_create(&self, region: RegionId) -> Arc<SourceWatch> {
        if let Some(w) = self.map.read().get(&region) {
            return w.clone();
        }
        self.map.write().entry(region).or_default().clone()
    }

    /// The region's watch, if it has one.
    pub(crate) fn get(&self, region: RegionId) -> Option<Arc<SourceWatch>> {
        self.map.read().get(&region).cloned()
    }

    /// The region's replica was destroyed: its watch goes (waiters wake); a replica
    /// made again starts a new one.
    pub(crate) fn remove(&self, region: RegionId) {
        if let Some(w) = self.map.write().remove(&region) {
            w.gone();
        }
    }
}
