//! Regions split when they grow past a size or key-count bound, and small neighbours
//! merge: the policy ([`SplitPolicy`]) and the planner that applies it to one store's
//! engine.
//!
//! The planner only proposes; the cluster's scheduler carries the actions out through
//! the same split and merge commands the API uses, so an automatic split is checked,
//! replicated and recovered exactly like an asked-for one. A plan made from a slightly
//! stale view is harmless: a split or merge of a region that changed meanwhile is
//! refused by its epoch.
//!
//! Sizes come from the engine: the bytes it charges each region (cheap, always known,
//! old versions and tombstones included) bound how many live keys and bytes a region
//! can hold, and how many it can have gained since it was last scanned (every entry
//! costs at least [`ENTRY_OVERHEAD_BYTES`]). A region is scanned for its exact size and
//! a split key only when those bounds say a limit may have been crossed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use regionkv_engine::{ENTRY_OVERHEAD_BYTES, Engine, Region, RegionId, StoreId};

/// When regions split and merge on their own.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SplitPolicy {
    /// Split a region whose live keys and values take more than this many bytes
    /// (default 96 MiB; `u64::MAX` turns size splits off).
    pub max_region_bytes: u64,
    /// Split a region holding more than this many live keys (default 960,000;
    /// `u64::MAX` turns key-count splits off).
    pub max_region_keys: u64,
    /// Merge two neighbours when each takes fewer bytes than this (default 16 MiB;
    /// 0 turns merging off).
    pub merge_region_bytes: u64,
    /// ... and each holds fewer keys than this (default 160,000).
    pub merge_region_keys: u64,
    /// A region is not merged until it kept its range this long: a region split on
    /// purpose is not merged straight back (default 10 minutes, as PD's interval).
    pub merge_after: Duration,
    /// How often regions are checked (default 10 s, like the split check of `TiKV`; a check
    /// asks every store which regions it leads, which costs with many regions).
    pub check_interval: Duration,
}

impl Default for SplitPolicy {
    fn default() -> Self {
        SplitPolicy {
            max_region_bytes: 96 << 20,
            max_region_keys: 960_000,
            merge_region_bytes: 16 << 20,
            merge_region_keys: 160_000,
            merge_after: Duration::from_secs(600),
            check_interval: Duration::from_secs(10),
        }
    }
}

impl SplitPolicy {
    /// A policy that never splits or merges on its own (splits and merges can still be
    /// asked for).
    pub fn disabled() -> SplitPolicy {
        SplitPolicy {
            max_region_bytes: u64::MAX,
            max_region_keys: u64::MAX,
            merge_region_bytes: 0,
            merge_region_keys: 0,
            ..SplitPolicy::default()
        }
    }

    /// Sets [`SplitPolicy::max_region_bytes`] and [`SplitPolicy::max_region_keys`].
    #[must_use]
    pub fn split_above(mut self, bytes: u64, keys: u64) -> Self {
        self.max_region_bytes = bytes;
        self.max_region_keys = keys;
        self
    }

    /// Sets [`SplitPolicy::merge_region_bytes`] and [`SplitPolicy::merge_region_keys`].
    #[must_use]
    pub fn merge_below(mut self, bytes: u64, keys: u64) -> Self {
        self.merge_region_bytes = bytes;
        self.merge_region_keys = keys;
        self
    }

    /// Sets [`SplitPolicy::merge_after`].
    #[must_use]
    pub fn merge_after(mut self, after: Duration) -> Self {
        self.merge_after = after;
        self
    }

    /// Sets [`SplitPolicy::check_interval`].
    #[must_use]
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    fn merges(&self) -> bool {
        self.merge_region_bytes > 0 && self.merge_region_keys > 0
    }
}

/// What the planner proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Split `region` at `key` (which starts the new right part).
    Split { region: RegionId, key: Vec<u8> },
    /// Merge `right` into its left neighbour `left`.
    Merge { left: RegionId, right: RegionId },
}

/// Live keys and bytes of a region (bytes as the engine charges them).
#[derive(Clone, Copy, Debug, Default)]
struct Size {
    keys: u64,
    bytes: u64,
}

fn pair_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

/// The planner's memory between checks.
#[derive(Debug, Default)]
pub(crate) struct Planner {
    /// Charged bytes and live size of each region when it was last scanned.
    scanned: HashMap<RegionId, (u64, Size)>,
    /// When each region was first seen with its current range (by epoch version).
    since: HashMap<RegionId, (u64, Instant)>,
}

impl Planner {
    /// Actions for the regions in `led` (those one store's replicas lead, in key
    /// order), sized from that store's `engine`, at time `now`; forgets regions not
    /// in `led`.
    #[cfg(test)]
    pub fn plan(
        &mut self,
        policy: &SplitPolicy,
        engine: &Engine,
        led: &[Region],
        now: Instant,
    ) -> Vec<Action> {
        self.plan_stores(policy, &[(engine, led)], now)
    }

    /// Actions for the regions the stores lead: `stores` pairs each store's engine
    /// with the regions its replicas lead. Each region is sized from its leader's
    /// engine; two neighbours may merge whichever stores lead them (where a split
    /// child's leader lands, or where leadership moves, decides nothing). Forgets
    /// regions no store leads.
    pub fn plan_stores(
        &mut self,
        policy: &SplitPolicy,
        stores: &[(&Engine, &[Region])],
        now: Instant,
    ) -> Vec<Action> {
        let charged: Vec<HashMap<RegionId, u64>> = stores
            .iter()
            .map(|(engine, _)| engine.memory().regions.into_iter().collect())
            .collect();
        // Every led region once (a region two stores both think they lead, during a
        // change of leader, is taken from the first), in key order, with its store.
        let mut led: Vec<(&Region, usize)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, (_, regions)) in stores.iter().enumerate() {
            led.extend(regions.iter().filter(|r| seen.insert(r.id)).map(|r| (r, i)));
        }
        led.sort_by(|a, b| a.0.start.cmp(&b.0.start));
        for (r, _) in &led {
            let since = self.since.entry(r.id).or_insert((r.epoch.version, now));
            if since.0 != r.epoch.version {
                *since = (r.epoch.version, now);
            }
        }
        let mut actions = Vec::new();
        let mut busy: Vec<RegionId> = Vec::new();
        for &(r, i) in &led {
            let Some(&bytes) = charged[i].get(&r.id) else { continue };
            if let Some(key) = self.split_key(policy, stores[i].0, r, bytes) {
                actions.push(Action::Split { region: r.id, key });
                busy.push(r.id);
            }
        }
        if policy.merges() {
            for pair in led.windows(2) {
                let (left, right) = (pair[0], pair[1]);
                if busy.contains(&left.0.id) || busy.contains(&right.0.id) {
                    continue;
                }
                let sized = |(r, i): (&Region, usize)| small(policy, stores[i].0, &charged[i], r);
                if self.mergeable(policy, left.0, right.0, now)
                    && let (Some(a), Some(b)) = (sized(left), sized(right))
                    // The merged region must stay well under the split bounds, or it
                    // would split again at once.
                    && a.bytes + b.bytes <= policy.max_region_bytes / 2
                    && a.keys + b.keys <= policy.max_region_keys / 2
                {
                    actions.push(Action::Merge { left: left.0.id, right: right.0.id });
                    busy.extend([left.0.id, right.0.id]);
                }
            }
        }
        let ids: std::collections::HashSet<RegionId> = led.iter().map(|(r, _)| r.id).collect();
        self.since.retain(|id, _| ids.contains(id));
        self.scanned.retain(|id, _| ids.contains(id));
        actions
    }

    /// The key to split `region` at, if it is over a bound. `charged` (the engine's
    /// bytes for it, old versions included) bounds its live bytes and keys from
    /// above, so most checks need no scan.
    fn split_key(
        &mut self,
        policy: &SplitPolicy,
        engine: &Engine,
        region: &Region,
        charged: u64,
    ) -> Option<Vec<u8>> {
        // The most the region can hold now: what the last scan found plus what the
        // charge grown since could have added, or, never scanned, what the charge allows.
        let most = match self.scanned.get(&region.id) {
            Some(&(at, size)) => {
                let grown = charged.saturating_sub(at);
                Size { keys: size.keys + grown / ENTRY_OVERHEAD_BYTES, bytes: size.bytes + grown }
            }
            None => Size { keys: charged / ENTRY_OVERHEAD_BYTES, bytes: charged },
        };
        if most.keys <= policy.max_region_keys && most.bytes <= policy.max_region_bytes {
            return None;
        }
        let size = live_size(engine, region, u64::MAX);
        self.scanned.insert(region.id, (charged, size));
        let by_keys = size.keys > policy.max_region_keys;
        if !by_keys && size.bytes <= policy.max_region_bytes {
            return None;
        }
        // The first key past half of what crossed the bound.
        let half = if by_keys { size.keys / 2 } else { size.bytes / 2 };
        let mut seen = 0u64;
        let mut at = None;
        engine.read_view().for_each(&region.start, region.end.as_deref(), |k, v| {
            seen += if by_keys { 1 } else { pair_bytes(k, v) };
            // Never inside one transactional user key's versions.
            let boundary = regionkv_raft::txn::mvcc::split_boundary(k);
            if seen > half && boundary.as_ref() > region.start.as_slice() {
                at = Some(boundary.to_vec());
                return false;
            }
            true
        });
        at
    }

    /// True if neighbours `left` and `right` may merge as far as their ranges,
    /// stores and age go (their sizes are `small`'s).
    fn mergeable(&self, policy: &SplitPolicy, left: &Region, right: &Region, now: Instant) -> bool {
        let settled = |r: &Region| {
            self.since
                .get(&r.id)
                .is_some_and(|(_, at)| now.duration_since(*at) >= policy.merge_after)
        };
        let stores = |r: &Region| {
            let mut s: Vec<StoreId> = r.peers.iter().map(|p| p.store).collect();
            s.sort_unstable();
            s
        };
        left.end.as_deref() == Some(right.start.as_slice())
            && settled(left)
            && settled(right)
            && stores(left) == stores(right)
    }
}

/// The live size of `r` from `engine` (which charged it `charged`), if it is under
/// both merge bounds.
fn small(
    policy: &SplitPolicy,
    engine: &Engine,
    charged: &HashMap<RegionId, u64>,
    r: &Region,
) -> Option<Size> {
    let &bytes = charged.get(&r.id)?;
    if bytes >= policy.merge_region_bytes {
        return None;
    }
    if bytes / ENTRY_OVERHEAD_BYTES < policy.merge_region_keys {
        // Few enough bytes that the key bound cannot be reached: no scan.
        return Some(Size { keys: bytes / ENTRY_OVERHEAD_BYTES, bytes });
    }
    let size = live_size(engine, r, policy.merge_region_keys);
    (size.keys < policy.merge_region_keys).then_some(size)
}

/// Live keys and bytes of `region`, counting stops once `max_keys` keys were seen.
fn live_size(engine: &Engine, region: &Region, max_keys: u64) -> Size {
    let mut size = Size::default();
    engine.read_view().for_each(&region.start, region.end.as_deref(), |k, v| {
        size.keys += 1;
        size.bytes += pair_bytes(k, v);
        size.keys < max_keys
    });
    size
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use regionkv_engine::{EngineOptions, Peer, PeerId};
    use regionkv_wal::SimFs;

    use super::*;

    fn engine_with(regions: &[Region], keys: u32) -> Engine {
        let engine = Engine::open(Arc::new(SimFs::new()), "/e", EngineOptions::new(StoreId(1)))
            .expect("open");
        for r in regions {
            engine.insert_region(r.clone()).expect("insert");
        }
        for r in engine.regions() {
            let mut round = engine.begin_round();
            round.prepare_for_region(r.id, r.epoch).expect("prepare");
            for i in 0..keys {
                let key = format!("k{i:05}");
                if r.contains(key.as_bytes()) {
                    round.put(key.as_bytes(), b"value").expect("put");
                }
            }
            round.commit().expect("commit");
        }
        engine
    }

    fn region(id: u64, start: &str, end: Option<&str>) -> Region {
        Region {
            id: RegionId(id),
            start: start.as_bytes().to_vec(),
            end: end.map(|e| e.as_bytes().to_vec()),
            peers: vec![Peer { id: PeerId(1), store: StoreId(1) }],
            ..Region::whole(RegionId(id))
        }
    }

    #[test]
    fn splits_a_region_over_the_key_bound_at_its_middle_key() {
        let whole = region(1, "", None);
        let engine = engine_with(std::slice::from_ref(&whole), 1000);
        let policy = SplitPolicy::disabled().split_above(u64::MAX, 600);
        let mut planner = Planner::default();
        let now = Instant::now();
        let actions = planner.plan(&policy, &engine, std::slice::from_ref(&whole), now);
        assert_eq!(actions, vec![Action::Split { region: RegionId(1), key: b"k00500".to_vec() }]);
        // Still over the bound (nobody carried the split out): proposed again.
        assert_eq!(planner.plan(&policy, &engine, std::slice::from_ref(&whole), now), actions);
        // The left half, once split off, is under the bound.
        let left = Region { end: Some(b"k00500".to_vec()), ..whole };
        assert!(planner.plan(&policy, &engine, &[left], now).is_empty());
    }

    #[test]
    fn splits_by_bytes_and_leaves_regions_under_both_bounds_alone() {
        let whole = region(1, "", None);
        let engine = engine_with(std::slice::from_ref(&whole), 1000);
        let per_pair = pair_bytes(b"k00000", b"value");
        let mut planner = Planner::default();
        let under = SplitPolicy::disabled().split_above(per_pair * 1000, 1000);
        assert!(
            planner.plan(&under, &engine, std::slice::from_ref(&whole), Instant::now()).is_empty()
        );
        let mut planner = Planner::default();
        let over = SplitPolicy::disabled().split_above(per_pair * 999, 1000);
        let actions = planner.plan(&over, &engine, &[whole], Instant::now());
        assert_eq!(actions, vec![Action::Split { region: RegionId(1), key: b"k00500".to_vec() }]);
    }

    #[test]
    fn merges_small_settled_neighbours_only() {
        let left = region(1, "", Some("k00500"));
        let right = region(2, "k00500", None);
        let engine = engine_with(&[left.clone(), right.clone()], 1000);
        let led = [left, right];
        let policy =
            SplitPolicy::default().merge_below(1 << 20, 1000).merge_after(Duration::from_secs(60));
        let mut planner = Planner::default();
        let t0 = Instant::now();
        // Just seen: not settled yet.
        assert!(planner.plan(&policy, &engine, &led, t0).is_empty());
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            planner.plan(&policy, &engine, &led, later),
            vec![Action::Merge { left: RegionId(1), right: RegionId(2) }]
        );
        // Too many keys in each (500 >= 400): no merge.
        let few = policy.clone().merge_below(1 << 20, 400);
        assert!(planner.plan(&few, &engine, &led, later).is_empty());
        // Merged, they would split again at once: no merge.
        let tight = policy.split_above(u64::MAX, 1500);
        assert!(planner.plan(&tight, &engine, &led, later).is_empty());
    }

    #[test]
    fn merges_neighbours_led_by_different_stores() {
        // A split child's leader may land on another store than its parent's (its
        // first campaign can reach the followers before they applied the split), and
        // leadership moves: small neighbours merge whichever stores lead them.
        let left = region(1, "", Some("k00500"));
        let right = region(2, "k00500", None);
        let one = engine_with(&[left.clone(), right.clone()], 100);
        let two = engine_with(&[left.clone(), right.clone()], 100);
        let policy =
            SplitPolicy::default().merge_below(1 << 20, 1000).merge_after(Duration::from_secs(60));
        let mut planner = Planner::default();
        let (led_one, led_two) = ([left], [right]);
        let stores = [(&one, &led_one[..]), (&two, &led_two[..])];
        let t0 = Instant::now();
        assert!(planner.plan_stores(&policy, &stores, t0).is_empty());
        assert_eq!(
            planner.plan_stores(&policy, &stores, t0 + Duration::from_secs(61)),
            vec![Action::Merge { left: RegionId(1), right: RegionId(2) }]
        );
    }
}
