//! The regions that may have a ready, as each ready pass takes them.

use regionkv_engine::RegionId;

/// Regions that may have a ready: filled by pushes, taken in ascending order (the
/// order every pass visits them in, for determinism) without duplicates.
///
/// A vector, sorted and deduplicated when taken, and handed back for reuse: a
/// `BTreeSet` allocated a node each time a pass found it empty (five times per put on
/// one store), and with thousands of regions written at random an insert is a push
/// here, not a search.
#[derive(Debug, Default)]
pub(super) struct Dirty {
    regions: Vec<RegionId>,
    /// The vector the last pass took, emptied, for the next one to fill.
    spare: Vec<RegionId>,
}

impl Dirty {
    /// Notes that `region` may have a ready.
    pub(super) fn insert(&mut self, region: RegionId) {
        if self.regions.last() != Some(&region) {
            self.regions.push(region);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Takes every region noted, ascending, each once; [`Dirty::give_back`] returns the
    /// vector for reuse.
    pub(super) fn take(&mut self) -> Vec<RegionId> {
        let mut taken = std::mem::replace(&mut self.regions, std::mem::take(&mut self.spare));
        taken.sort_unstable();
        taken.dedup();
        taken
    }

    /// Keeps `taken`'s allocation for a later pass.
    pub(super) fn give_back(&mut self, mut taken: Vec<RegionId>) {
        taken.clear();
        if taken.capacity() > self.spare.capacity() {
            self.spare = taken;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_ascending_once_each_and_reused() {
        let mut dirty = Dirty::default();
        assert!(dirty.is_empty());
        for id in [5, 3, 3, 9, 5, 1, 9] {
            dirty.insert(RegionId(id));
        }
        let taken = dirty.take();
        assert_eq!(taken, [1, 3, 5, 9].map(RegionId));
        assert!(dirty.is_empty());
        let at = taken.as_ptr();
        dirty.give_back(taken);
        dirty.insert(RegionId(2));
        let _ = dirty.take(); // the vector filled meanwhile comes back as the spare ...
        dirty.insert(RegionId(7));
        dirty.insert(RegionId(4));
        let again = dirty.take();
        assert_eq!(again, [4, 7].map(RegionId));
        assert_eq!(again.as_ptr(), at, "... and the first one is filled again");
    }
}
