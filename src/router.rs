//! The client's region cache: which region holds a key, at which epoch, led by which
//! store. Filled from the directory (through [`Backend::locate`]) on a miss, and
//! corrected from what stores answer: `EpochNotMatch` and `KeyNotInRegion` carry the
//! current regions, `NotLeader` the leader's store. A stale entry costs one refused
//! request, never a wrong answer: stores check every request's epoch and range.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Arc;

use parking_lot::RwLock;
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::RegionRecord;

use crate::backend::{Backend, newer};

/// Cached regions by start key; they never overlap. `by_id` maps each cached region to
/// its start key, so that lookups by id cost O(1) with thousands of regions.
#[derive(Default)]
struct Cache {
    by_start: BTreeMap<Vec<u8>, RegionRecord>,
    by_id: HashMap<RegionId, Vec<u8>>,
}

impl Cache {
    fn get(&self, key: &[u8]) -> Option<&RegionRecord> {
        let (_, record) = self.by_start.range::<[u8], _>((Unbounded, Included(key))).next_back()?;
        record.region.contains(key).then_some(record)
    }

    /// Cached records overlapping `region`'s range.
    fn overlapping(&self, region: &Region) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some((start, r)) =
            self.by_start.range::<[u8], _>((Unbounded, Included(&region.start[..]))).next_back()
            && r.region.end.as_ref().is_none_or(|e| *e > region.start)
        {
            out.push(start.clone());
        }
        for (start, _) in self.by_start.range::<[u8], _>((Excluded(&region.start[..]), Unbounded)) {
            if region.end.as_ref().is_some_and(|e| start >= e) {
                break;
            }
            out.push(start.clone());
        }
        out
    }

    /// Takes `record` unless something cached over its range is newer; drops what it
    /// replaces. A record of the same region and epoch keeps a known leader.
    fn insert(&mut self, mut record: RegionRecord) {
        let mut replaced = self.overlapping(&record.region);
        if let Some(start) = self.by_id.get(&record.region.id) {
            replaced.push(start.clone());
        }
        for start in &replaced {
            let r = &self.by_start[start];
            let stale = if r.region.id == record.region.id {
                newer(&r.region, &record.region)
            } else {
                // Regions over the same keys: the later one has the higher version.
                r.region.epoch.version >= record.region.epoch.version
            };
            if stale {
                return;
            }
            if r.region.id == record.region.id
                && r.region.epoch == record.region.epoch
                && record.leader.is_none()
            {
                record.leader = r.leader;
            }
        }
        for start in replaced {
            if let Some(old) = self.by_start.remove(&start) {
                self.by_id.remove(&old.region.id);
            }
        }
        self.by_id.insert(record.region.id, record.region.start.clone());
        self.by_start.insert(record.region.start.clone(), record);
    }

    fn by_id_mut(&mut self, id: RegionId) -> Option<&mut RegionRecord> {
        let start = self.by_id.get(&id)?;
        self.by_start.get_mut(start)
    }

    fn remove(&mut self, id: RegionId) {
        if let Some(start) = self.by_id.remove(&id) {
            self.by_start.remove(&start);
        }
    }
}

/// A region cache over a backend. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub(crate) struct Router {
    backend: Arc<dyn Backend>,
    cache: Arc<RwLock<Cache>>,
}

impl Router {
    pub fn new(backend: Arc<dyn Backend>) -> Router {
        Router { backend, cache: Arc::default() }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The region holding `key`: cached, else looked up (and cached).
    pub fn locate(&self, key: &[u8]) -> Option<RegionRecord> {
        if let Some(record) = self.cache.read().get(key) {
            return Some(record.clone());
        }
        let record = self.backend.locate(key)?;
        self.cache.write().insert(record.clone());
        // What the cache holds now (a newer entry may have won).
        self.cache.read().get(key).cloned().or(Some(record))
    }

    /// The cached region `id`, if any.
    pub fn cached(&self, id: RegionId) -> Option<RegionRecord> {
        let cache = self.cache.read();
        cache.by_id.get(&id).and_then(|start| cache.by_start.get(start)).cloned()
    }

    /// Learns regions from a store's answer (`EpochNotMatch`, `KeyNotInRegion`).
    pub fn learn(&self, regions: &[Region]) {
        let mut cache = self.cache.write();
        for region in regions {
            cache.insert(RegionRecord { region: region.clone(), leader: None });
        }
    }

    /// Records that `store` leads `region` (or that the leader is unknown).
    pub fn set_leader(&self, region: RegionId, store: Option<StoreId>) {
        let mut cache = self.cache.write();
        if let Some(r) = cache.by_id_mut(region) {
            r.leader = store;
        }
    }

    /// Forgets `region` (a store said it does not have it).
    pub fn forget(&self, region: RegionId) {
        self.cache.write().remove(region);
    }
}

#[cfg(test)]
mod tests {
    use regionkv_engine::Epoch;

    use super::*;

    fn rec(
        id: u64,
        start: &str,
        end: Option<&str>,
        version: u64,
        leader: Option<u64>,
    ) -> RegionRecord {
        RegionRecord {
            region: Region {
                id: RegionId(id),
                start: start.as_bytes().to_vec(),
                end: end.map(|e| e.as_bytes().to_vec()),
                epoch: Epoch { version, conf_ver: 1 },
                peers: Vec::new(),
            },
            leader: leader.map(StoreId),
        }
    }

    #[test]
    fn newer_regions_replace_older_ones_and_never_the_reverse() {
        let mut cache = Cache::default();
        cache.insert(rec(1, "", None, 1, Some(1)));
        assert_eq!(cache.get(b"x").unwrap().leader, Some(StoreId(1)));
        // A split learned from the parent's answer: both halves, the whole range gone.
        cache.insert(rec(1, "", Some("m"), 2, None));
        cache.insert(rec(2, "m", None, 2, None));
        assert_eq!(cache.get(b"a").unwrap().region.id, RegionId(1));
        assert_eq!(cache.get(b"x").unwrap().region.id, RegionId(2));
        // The stale whole-range region comes back from a lagging source: refused.
        cache.insert(rec(1, "", None, 1, Some(3)));
        assert_eq!(cache.get(b"x").unwrap().region.id, RegionId(2));
        // A merge of 2 into 1: one region again.
        cache.insert(rec(1, "", None, 4, None));
        assert_eq!(cache.by_start.len(), 1);
        assert_eq!(cache.by_id.len(), 1);
        assert_eq!(cache.get(b"x").unwrap().region.epoch.version, 4);
        // The same epoch without a leader keeps the leader known.
        cache.insert(rec(1, "", None, 4, Some(2)));
        cache.insert(rec(1, "", None, 4, None));
        assert_eq!(cache.get(b"q").unwrap().leader, Some(StoreId(2)));
        cache.remove(RegionId(1));
        assert!(cache.get(b"q").is_none());
        assert!(cache.by_id.is_empty());
    }
}
