//! The pin ledger: which open apply rounds pin which regions, so that a region cannot be
//! removed while a round may still write to it (see `round.rs` for the rounds).
//!
//! A round pins each region it prepares under its id. The ledger follows splits
//! (children are pinned by every round that pinned the parent) and merges (the target
//! is pinned by every round that pinned the source), and a round's end releases
//! everything listed under its id, so each pin is released exactly once.

use std::collections::HashMap;

use crate::IdHashMap;
use crate::region::RegionId;

/// Identifies an open round in the pin ledger.
pub(crate) type RoundId = u64;

/// Which open rounds pin which regions.
#[derive(Debug, Default)]
pub(crate) struct PinLedger {
    /// Regions pinned by each open round, each listed once.
    by_round: HashMap<RoundId, Vec<RegionId>>,
    /// Number of rounds that list each region; no zero entries.
    count: IdHashMap<RegionId, u32>,
}

impl PinLedger {
    /// Pins `region` for `round`; a no-op if the round holds it already.
    pub fn pin(&mut self, round: RoundId, region: RegionId) {
        let regions = self.by_round.entry(round).or_default();
        if !regions.contains(&region) {
            regions.push(region);
            *self.count.entry(region).or_insert(0) += 1;
        }
    }

    /// Releases every pin of `round`; returns how many. A second call releases none.
    pub fn release_round(&mut self, round: RoundId) -> usize {
        let Some(regions) = self.by_round.remove(&round) else { return 0 };
        for region in &regions {
            if let Some(n) = self.count.get_mut(region) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(region);
                }
            }
        }
        regions.len()
    }

    /// Rounds that pinned `parent` now also pin each of `children`.
    pub fn on_split(&mut self, parent: RegionId, children: &[RegionId]) {
        let rounds: Vec<RoundId> = self
            .by_round
            .iter()
            .filter(|(_, regions)| regions.contains(&parent))
            .map(|(&round, _)| round)
            .collect();
        for round in rounds {
            for &child in children {
                self.pin(round, child);
            }
        }
    }

    /// Rounds that pinned `source` pin `target` instead (once, if they pinned both).
    pub fn on_merge(&mut self, source: RegionId, target: RegionId) {
        let rounds: Vec<RoundId> = self
            .by_round
            .iter()
            .filter(|(_, regions)| regions.contains(&source))
            .map(|(&round, _)| round)
            .collect();
        for round in rounds {
            if let Some(regions) = self.by_round.get_mut(&round) {
                regions.retain(|&r| r != source);
            }
            self.pin(round, target);
        }
        self.count.remove(&source);
    }

    /// Open rounds that pin `region`.
    pub fn count(&self, region: RegionId) -> u32 {
        self.count.get(&region).copied().unwrap_or(0)
    }

    /// Pins held over all regions.
    pub fn total(&self) -> u64 {
        self.count.values().map(|&n| u64::from(n)).sum()
    }

    /// True if the counts agree with the per-round lists (O(n); for tests).
    pub fn is_consistent(&self) -> bool {
        let mut count: IdHashMap<RegionId, u32> = IdHashMap::default();
        for regions in self.by_round.values() {
            for region in regions {
                *count.entry(*region).or_insert(0) += 1;
            }
        }
        count == self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_follows_split_and_merge_and_releases_once() {
        let mut l = PinLedger::default();
        l.pin(1, RegionId(10));
        l.pin(1, RegionId(10));
        l.pin(2, RegionId(10));
        assert_eq!(l.count(RegionId(10)), 2);
        l.on_split(RegionId(10), &[RegionId(11), RegionId(12)]);
        assert_eq!(l.count(RegionId(11)), 2);
        l.on_merge(RegionId(11), RegionId(12));
        assert_eq!(l.count(RegionId(11)), 0);
        assert_eq!(l.count(RegionId(12)), 2);
        assert!(l.is_consistent());
        assert_eq!(l.release_round(1), 2);
        assert_eq!(l.release_round(1), 0);
        assert_eq!(l.release_round(2), 2);
        assert_eq!(l.total(), 0);
        assert!(l.is_consistent());
    }
}
