//! The region map of one store: which regions it hosts, as a partition of the key space.
//!
//! The key space is cut into *slots*, sorted by start key; a slot ends where the next
//! one starts and the last one is unbounded. A slot is either a hosted [`Region`] or an
//! absent range (a range this store holds no replica for). Every change is computed on
//! a copy and checked against the partition invariant before it replaces the map, so a
//! change that would break it is a typed error and leaves the map as it was.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

use crate::IdHashMap;
use crate::error::RegionChangeError;
use crate::region::{Epoch, Peer, Region, RegionId};

/// Whether a slot of the key space is hosted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// No replica of this range lives on this store.
    Absent,
    /// The range is this region's.
    Hosted(RegionId),
}

/// One slot of the partition, as returned by [`RegionMap::slots`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// First key of the slot.
    pub start: Vec<u8>,
    /// First key after it; `None` for the last slot.
    pub end: Option<Vec<u8>>,
    /// The region hosted there, or `None` for an absent range.
    pub region: Option<RegionId>,
}

/// The regions of a store, always a partition of the whole key space into hosted
/// regions and absent ranges: sorted, contiguous, no gaps, no overlaps, from the empty
/// key to unbounded.
#[derive(Clone, Debug)]
pub struct RegionMap {
    /// Slots by start key. The first key is always the empty key.
    slots: BTreeMap<Vec<u8>, Slot>,
    /// Hosted regions by id; exactly the ids of the `Hosted` slots.
    regions: IdHashMap<RegionId, Region>,
}

impl Default for RegionMap {
    fn default() -> Self {
        RegionMap::new()
    }
}

type ChangeResult<T> = Result<T, RegionChangeError>;

impl RegionMap {
    /// A map of a store that hosts nothing: one absent slot over the whole key space.
    pub fn new() -> RegionMap {
        RegionMap {
            slots: BTreeMap::from([(Vec::new(), Slot::Absent)]),
            regions: IdHashMap::default(),
        }
    }

    /// A map hosting `regions`, which must not overlap.
    pub fn with_regions(regions: impl IntoIterator<Item = Region>) -> ChangeResult<RegionMap> {
        let mut map = RegionMap::new();
        for region in regions {
            map.insert(region)?;
        }
        Ok(map)
    }

    /// Number of hosted regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True if no region is hosted.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The hosted region `id`.
    pub fn get(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(&id)
    }

    /// The hosted region that contains `key`, if any.
    pub fn region_for_key(&self, key: &[u8]) -> Option<&Region> {
        match self.slots.range::<[u8], _>((Unbounded, Included(key))).next_back()?.1 {
            Slot::Hosted(id) => self.regions.get(id),
            Slot::Absent => None,
        }
    }

    /// Hosted regions that overlap `[start, end)` (`end == None`: unbounded), in key
    /// order.
    pub fn overlapping<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = &'a Region> + 'a {
        // The slot holding `start`, then every slot that starts inside the range.
        let first = self.slots.range::<[u8], _>((Unbounded, Included(start))).next_back();
        let rest = self.slots.range::<[u8], _>((Excluded(start), Unbounded));
        first
            .into_iter()
            .chain(rest.take_while(move |(s, _)| end.is_none_or(|end| s.as_slice() < end)))
            .filter_map(|(_, slot)| match slot {
                Slot::Hosted(id) => self.regions.get(id),
                Slot::Absent => None,
            })
    }

    /// Hosted regions in key order.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.slots.values().filter_map(|slot| match slot {
            Slot::Hosted(id) => self.regions.get(id),
            Slot::Absent => None,
        })
    }

    /// Every slot of the partition in key order.
    pub fn slots(&self) -> Vec<SlotView> {
        let mut out: Vec<SlotView> = Vec::with_capacity(self.slots.len());
        for (start, slot) in &self.slots {
            if let Some(prev) = out.last_mut() {
                prev.end = Some(start.clone());
            }
            let region = match slot {
                Slot::Hosted(id) => Some(*id),
                Slot::Absent => None,
            };
            out.push(SlotView { start: start.clone(), end: None, region });
        }
        out
    }

    /// The hosted neighbours of region `id` (left, right), for error reports.
    pub fn neighbours(&self, id: RegionId) -> Vec<Region> {
        let Some(region) = self.regions.get(&id) else { return Vec::new() };
        let mut out = Vec::new();
        if let Some((_, Slot::Hosted(left))) =
            self.slots.range::<[u8], _>((Unbounded, Excluded(region.start.as_slice()))).next_back()
        {
            out.extend(self.regions.get(left).cloned());
        }
        if let Some(end) = &region.end
            && let Some(Slot::Hosted(right)) = self.slots.get(end)
        {
            out.extend(self.regions.get(right).cloned());
        }
        out
    }

    /// Hosts `region` in a range that is absent now.
    pub fn insert(&mut self, region: Region) -> ChangeResult<()> {
        self.change(|map| map.insert_unchecked(region))
    }

    /// Stops hosting region `id`; its range becomes absent. Returns the region.
    pub fn remove(&mut self, id: RegionId) -> ChangeResult<Option<Region>> {
        if !self.regions.contains_key(&id) {
            return Ok(None);
        }
        self.change(|map| {
            let region = map.regions.remove(&id).ok_or(RegionChangeError::Partition("lost id"))?;
            map.slots.insert(region.start.clone(), Slot::Absent);
            map.coalesce(&region.start);
            Ok(Some(region))
        })
    }

    /// Splits region `id` at `split_keys` (strictly increasing, strictly inside the
    /// region). The region keeps its id and the leftmost part; `new_ids[i]` takes the
    /// part starting at `split_keys[i]`. Every part gets `version + split_keys.len()`
    /// and the parent's `conf_ver` and peers. Returns the parts in key order.
    pub fn split(
        &mut self,
        id: RegionId,
        split_keys: &[Vec<u8>],
        new_ids: &[RegionId],
    ) -> ChangeResult<Vec<Region>> {
        let invalid = |reason| RegionChangeError::InvalidSplit { region: id, reason };
        let parent = self.regions.get(&id).ok_or(RegionChangeError::NotHosted { region: id })?;
        if split_keys.is_empty() {
            return Err(invalid("no split keys"));
        }
        if split_keys.len() != new_ids.len() {
            return Err(invalid("one new region id is needed per split key"));
        }
        if !split_keys.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid("split keys are not strictly increasing"));
        }
        let first = &split_keys[0];
        let last = &split_keys[split_keys.len() - 1];
        if *first <= parent.start || parent.end.as_ref().is_some_and(|end| last >= end) {
            return Err(invalid("split keys must be strictly inside the region"));
        }
        let mut seen = std::collections::HashSet::with_capacity(new_ids.len());
        for new_id in new_ids {
            if self.regions.contains_key(new_id) || *new_id == id || !seen.insert(*new_id) {
                return Err(RegionChangeError::IdInUse { region: *new_id });
            }
        }
        let bump = split_keys.len() as u64;
        let epoch = Epoch { version: parent.epoch.version + bump, conf_ver: parent.epoch.conf_ver };
        let mut parts = Vec::with_capacity(split_keys.len() + 1);
        let mut starts = std::iter::once(parent.start.clone()).chain(split_keys.iter().cloned());
        let ends = split_keys.iter().cloned().map(Some).chain(std::iter::once(parent.end.clone()));
        for (i, end) in ends.enumerate() {
            let start = starts.next().ok_or_else(|| invalid("internal: missing start"))?;
            let part_id = if i == 0 { id } else { new_ids[i - 1] };
            parts.push(Region { id: part_id, start, end, epoch, peers: parent.peers.clone() });
        }
        self.change(|map| {
            for part in &parts {
                map.slots.insert(part.start.clone(), Slot::Hosted(part.id));
                map.regions.insert(part.id, part.clone());
            }
            Ok(())
        })?;
        Ok(parts)
    }

    /// Merges region `source` into its neighbour `target`, which grows over the
    /// source's range and gets version `max(source, target) + 1`. Returns the new
    /// target.
    pub fn merge(&mut self, source: RegionId, target: RegionId) -> ChangeResult<Region> {
        let not_adjacent = RegionChangeError::NotAdjacent { source_region: source, target };
        let (Some(src), Some(tgt)) = (self.regions.get(&source), self.regions.get(&target)) else {
            return Err(not_adjacent);
        };
        if source == target {
            return Err(not_adjacent);
        }
        let mut merged = tgt.clone();
        if src.end.as_ref() == Some(&tgt.start) {
            merged.start.clone_from(&src.start);
        } else if tgt.end.as_ref() == Some(&src.start) {
            merged.end.clone_from(&src.end);
        } else {
            return Err(not_adjacent);
        }
        merged.epoch.version = src.epoch.version.max(tgt.epoch.version) + 1;
        let (src_start, tgt_start) = (src.start.clone(), tgt.start.clone());
        self.change(|map| {
            map.regions.remove(&source);
            map.slots.remove(&src_start.max(tgt_start));
            map.slots.insert(merged.start.clone(), Slot::Hosted(target));
            map.regions.insert(target, merged.clone());
            Ok(())
        })?;
        Ok(merged)
    }

    /// Bumps the `version` of region `id` (a merge prepared or rolled back: requests
    /// routed before must be refused). Returns the region.
    pub fn bump_version(&mut self, id: RegionId) -> ChangeResult<Region> {
        let mut region =
            self.regions.get(&id).cloned().ok_or(RegionChangeError::NotHosted { region: id })?;
        region.epoch.version += 1;
        self.change(|map| {
            map.regions.insert(id, region.clone());
            Ok(())
        })?;
        Ok(region)
    }

    /// Replaces the peers of region `id` and bumps its `conf_ver`. Returns the region.
    pub fn change_peers(&mut self, id: RegionId, peers: Vec<Peer>) -> ChangeResult<Region> {
        let mut region =
            self.regions.get(&id).cloned().ok_or(RegionChangeError::NotHosted { region: id })?;
        region.peers = peers;
        region.epoch.conf_ver += 1;
        self.change(|map| {
            map.regions.insert(id, region.clone());
            Ok(())
        })?;
        Ok(region)
    }

    /// Applies `f` to a copy, checks the partition, then installs the copy.
    fn change<T>(&mut self, f: impl FnOnce(&mut RegionMap) -> ChangeResult<T>) -> ChangeResult<T> {
        let mut next = self.clone();
        let out = f(&mut next)?;
        next.check_partition()?;
        *self = next;
        Ok(out)
    }

    fn insert_unchecked(&mut self, region: Region) -> ChangeResult<()> {
        if !region.is_valid_range() {
            return Err(RegionChangeError::EmptyRange { region: region.id });
        }
        if self.regions.contains_key(&region.id) {
            return Err(RegionChangeError::IdInUse { region: region.id });
        }
        // The slot holding `region.start`, and every slot that starts inside the region,
        // must be absent.
        let (slot_start, slot) = self
            .slots
            .range::<[u8], _>((Unbounded, Included(region.start.as_slice())))
            .next_back()
            .map(|(k, v)| (k.clone(), *v))
            .ok_or(RegionChangeError::Partition("no slot at the empty key"))?;
        let inside = self.slots.range::<[u8], _>((
            Excluded(region.start.as_slice()),
            region.end.as_deref().map_or(Unbounded, Excluded),
        ));
        for (_, s) in std::iter::once((&slot_start, &slot)).chain(inside) {
            if let Slot::Hosted(existing) = s {
                return Err(RegionChangeError::Overlap { region: region.id, existing: *existing });
            }
        }
        // Absent slots inside the region disappear; the region's end starts an absent
        // slot again unless a slot already starts there.
        let inner: Vec<Vec<u8>> = self
            .slots
            .range::<[u8], _>((
                Excluded(region.start.as_slice()),
                region.end.as_deref().map_or(Unbounded, Excluded),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        for k in inner {
            self.slots.remove(&k);
        }
        if let Some(end) = &region.end
            && !self.slots.contains_key(end)
        {
            self.slots.insert(end.clone(), Slot::Absent);
        }
        self.slots.insert(region.start.clone(), Slot::Hosted(region.id));
        self.regions.insert(region.id, region);
        Ok(())
    }

    /// Merges the absent slot at `start` with absent neighbours.
    fn coalesce(&mut self, start: &[u8]) {
        let next = self
            .slots
            .range::<[u8], _>((Excluded(start), Unbounded))
            .next()
            .map(|(k, v)| (k.clone(), *v));
        if let Some((next_start, Slot::Absent)) = next {
            self.slots.remove(&next_start);
        }
        let prev =
            self.slots.range::<[u8], _>((Unbounded, Excluded(start))).next_back().map(|(_, v)| *v);
        if prev == Some(Slot::Absent) {
            self.slots.remove(start);
        }
    }

    /// Checks the partition invariant: the first slot starts at the empty key, no two
    /// absent slots are neighbours, every hosted slot matches its region's range, and
    /// every hosted region has exactly one slot.
    pub fn check_partition(&self) -> ChangeResult<()> {
        use RegionChangeError::Partition;
        if self.slots.keys().next().is_none_or(|k| !k.is_empty()) {
            return Err(Partition("the first slot does not start at the empty key"));
        }
        let mut hosted = 0usize;
        let mut prev: Option<Slot> = None;
        let mut iter = self.slots.iter().peekable();
        while let Some((start, slot)) = iter.next() {
            let end = iter.peek().map(|(k, _)| k.as_slice());
            match slot {
                Slot::Absent if prev == Some(Slot::Absent) => {
                    return Err(Partition("two absent slots are neighbours"));
                }
                Slot::Absent => {}
                Slot::Hosted(id) => {
                    let region = self.regions.get(id).ok_or(Partition("slot of unknown region"))?;
                    if region.start != *start || region.end.as_deref() != end {
                        return Err(Partition("a region's range differs from its slot"));
                    }
                    if !region.is_valid_range() {
                        return Err(Partition("a region has an empty range"));
                    }
                    hosted += 1;
                }
            }
            prev = Some(*slot);
        }
        if hosted != self.regions.len() {
            return Err(Partition("a hosted region has no slot or several"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: u64, start: &[u8], end: Option<&[u8]>) -> Region {
        Region::new(RegionId(id), start.to_vec(), end.map(<[u8]>::to_vec))
    }

    #[test]
    fn overlapping_finds_exactly_the_hosted_regions_in_a_range() {
        let mut map = RegionMap::new();
        map.insert(r(1, b"b", Some(b"d"))).unwrap();
        map.insert(r(2, b"d", Some(b"f"))).unwrap();
        map.insert(r(3, b"h", None)).unwrap();
        let ids = |start: &[u8], end: Option<&[u8]>| -> Vec<u64> {
            map.overlapping(start, end).map(|r| r.id.0).collect()
        };
        assert_eq!(ids(b"", None), vec![1, 2, 3]);
        assert_eq!(ids(b"", Some(b"b")), Vec::<u64>::new());
        assert_eq!(ids(b"c", Some(b"d")), vec![1]);
        assert_eq!(ids(b"c", Some(b"d\0")), vec![1, 2]);
        assert_eq!(ids(b"f", Some(b"h")), Vec::<u64>::new());
        assert_eq!(ids(b"g", Some(b"i")), vec![3]);
        assert_eq!(ids(b"zz", None), vec![3]);
    }

    #[test]
    fn insert_split_merge_remove_keep_the_partition() {
        let mut map = RegionMap::new();
        map.insert(r(1, b"", None)).unwrap();
        let parts = map
            .split(RegionId(1), &[b"g".to_vec(), b"p".to_vec()], &[RegionId(2), RegionId(3)])
            .unwrap();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.epoch.version == 3));
        assert_eq!(map.region_for_key(b"h").unwrap().id, RegionId(2));
        assert_eq!(map.region_for_key(b"").unwrap().id, RegionId(1));
        assert_eq!(map.region_for_key(b"zzz").unwrap().id, RegionId(3));

        let merged = map.merge(RegionId(2), RegionId(3)).unwrap();
        assert_eq!(merged.start, b"g");
        assert_eq!(merged.end, None);
        assert_eq!(merged.epoch.version, 4);
        assert!(map.get(RegionId(2)).is_none());

        assert_eq!(map.remove(RegionId(1)).unwrap().unwrap().id, RegionId(1));
        assert!(map.region_for_key(b"a").is_none());
        assert_eq!(map.slots().len(), 2);
        map.insert(r(9, b"a", Some(b"c"))).unwrap();
        assert_eq!(map.slots().len(), 4);
        map.remove(RegionId(3)).unwrap();
        map.remove(RegionId(9)).unwrap();
        assert_eq!(map.slots(), RegionMap::new().slots());
    }

    #[test]
    fn violating_changes_are_typed_errors_and_change_nothing() {
        let mut map = RegionMap::with_regions([r(1, b"", Some(b"m")), r(2, b"m", None)]).unwrap();
        let before = map.slots();
        assert_eq!(
            map.insert(r(3, b"a", Some(b"b"))),
            Err(RegionChangeError::Overlap { region: RegionId(3), existing: RegionId(1) })
        );
        assert!(matches!(
            map.split(RegionId(1), &[b"m".to_vec()], &[RegionId(3)]),
            Err(RegionChangeError::InvalidSplit { .. })
        ));
        assert!(matches!(
            map.split(RegionId(1), &[b"c".to_vec(), b"b".to_vec()], &[RegionId(3), RegionId(4)]),
            Err(RegionChangeError::InvalidSplit { .. })
        ));
        assert_eq!(
            map.split(RegionId(1), &[b"c".to_vec()], &[RegionId(2)]),
            Err(RegionChangeError::IdInUse { region: RegionId(2) })
        );
        assert!(matches!(
            map.merge(RegionId(1), RegionId(1)),
            Err(RegionChangeError::NotAdjacent { .. })
        ));
        assert!(matches!(
            map.insert(r(5, b"x", Some(b"x"))),
            Err(RegionChangeError::EmptyRange { .. })
        ));
        assert_eq!(map.slots(), before);
        map.remove(RegionId(1)).unwrap();
        map.insert(r(7, b"b", Some(b"c"))).unwrap();
        assert!(matches!(
            map.merge(RegionId(7), RegionId(2)),
            Err(RegionChangeError::NotAdjacent { .. })
        ));
        assert_eq!(
            map.insert(r(8, b"a", Some(b"n"))),
            Err(RegionChangeError::Overlap { region: RegionId(8), existing: RegionId(7) })
        );
        map.check_partition().unwrap();
    }
}
