//! State-machine property test of the engine against a `BTreeMap` model (P8, P9, P11).
//!
//! Random put / delete / multi-region batch / scan / snapshot read / split / merge /
//! region insert and removal / checkpoint / GC / reopen (clean or after a power loss)
//! run on the engine over a simulated disk and on a model; after every step the
//! engine's data, regions, memory accounts and pins must agree with the model:
//!
//! - `live` is the data the engine holds; snapshots keep the `live` of their time.
//! - `durable` is what a restart recovers: each key as of the last checkpoint of the
//!   region that held it (split children and merge targets inherit checkpoint parts,
//!   so split/merge do not change it; removing a region clears its range).
//!
//! Replay a failure with `PROPTEST_CASES=1` and the seed proptest prints.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use regionkv_engine::{
    Engine, EngineOptions, Epoch, Error, ReadView, Region, RegionChangeError, RegionId, StoreId,
};
use regionkv_wal::{CrashMode, SimFs};

type Data = BTreeMap<Vec<u8>, Vec<u8>>;
/// A key and its new value (`None`: delete).
type Write = (Vec<u8>, Option<Vec<u8>>);

const KEYS: u8 = 40;
const DIR: &str = "/store";

fn key(i: u8) -> Vec<u8> {
    format!("k{:02}", i % KEYS).into_bytes()
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    /// Writes (key, Some(value) = put, None = delete) in one round, region by region;
    /// `stale` also tries a stale epoch and a key outside the region first.
    Batch {
        writes: Vec<(u8, Option<Vec<u8>>)>,
        stale: bool,
    },
    Scan {
        start: u8,
        end: Option<u8>,
        limit: usize,
    },
    TakeSnapshot,
    ReadSnapshot(usize),
    DropSnapshot(usize),
    Split(u8),
    Merge {
        region: usize,
        right: bool,
    },
    Remove(usize),
    InsertAbsent(usize),
    Checkpoint(usize),
    CheckpointAll,
    Gc(usize),
    Reopen {
        crash: bool,
    },
    /// Sets (`Some`: the entry's bytes) or removes a transaction lock, in one round.
    Lock(u8, Option<Vec<u8>>),
}

/// Mostly small values; some large enough that the memtable splits into several
/// leaves (its leaves hold up to 8 KiB), so leaf splits and rebuilds are exercised.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..12),
        1 => proptest::collection::vec(any::<u8>(), 300..900),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..KEYS, value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0..KEYS).prop_map(Op::Delete),
        4 => (
            proptest::collection::vec((0..KEYS, proptest::option::weighted(0.8, value())), 0..10),
            any::<bool>(),
        )
            .prop_map(|(writes, stale)| Op::Batch { writes, stale }),
        2 => (0..KEYS, proptest::option::of(0..KEYS), 0usize..30)
            .prop_map(|(start, end, limit)| Op::Scan { start, end, limit }),
        1 => Just(Op::TakeSnapshot),
        2 => (0usize..4).prop_map(Op::ReadSnapshot),
        1 => (0usize..4).prop_map(Op::DropSnapshot),
        2 => (0..KEYS).prop_map(Op::Split),
        2 => (0usize..8, any::<bool>()).prop_map(|(region, right)| Op::Merge { region, right }),
        1 => (0usize..8).prop_map(Op::Remove),
        1 => (0usize..4).prop_map(Op::InsertAbsent),
        2 => (0usize..8).prop_map(Op::Checkpoint),
        1 => Just(Op::CheckpointAll),
        1 => (1usize..30).prop_map(Op::Gc),
        1 => any::<bool>().prop_map(|crash| Op::Reopen { crash }),
        2 => (0..KEYS, proptest::option::weighted(0.7, value())).prop_map(|(k, v)| Op::Lock(k, v)),
    ]
}

struct Harness {
    fs: Arc<SimFs>,
    engine: Engine,
    live: Data,
    durable: Data,
    /// Hosted regions in key order.
    regions: Vec<Region>,
    next_region_id: u64,
    snapshots: Vec<(ReadView, Data)>,
    applied_index: u64,
    /// Transaction locks as published, and as the checkpoints hold them (by key, like
    /// data).
    live_locks: Data,
    durable_locks: Data,
}

fn range_of<'a>(data: &'a Data, r: &Region) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
    let end = r.end.clone();
    data.range(r.start.clone()..).take_while(move |(k, _)| end.as_ref().is_none_or(|e| *k < e))
}

fn clear_range(data: &mut Data, r: &Region) {
    let keys: Vec<Vec<u8>> = range_of(data, r).map(|(k, _)| k.clone()).collect();
    for k in keys {
        data.remove(&k);
    }
}

fn scan_all(snapshot: &ReadView) -> Data {
    snapshot
        .scan(b"", None, usize::MAX)
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

impl Harness {
    fn new() -> Harness {
        let fs = Arc::new(SimFs::new());
        let engine = Engine::open(fs.clone(), DIR, EngineOptions::new(StoreId(1))).unwrap();
        let first = Region::whole(RegionId(1));
        engine.insert_region(first.clone()).unwrap();
        Harness {
            fs,
            engine,
            live: Data::new(),
            durable: Data::new(),
            regions: vec![first],
            next_region_id: 2,
            snapshots: Vec::new(),
            applied_index: 0,
            live_locks: Data::new(),
            durable_locks: Data::new(),
        }
    }

    fn region_of(&self, key: &[u8]) -> Option<&Region> {
        self.regions.iter().find(|r| r.contains(key))
    }

    #[allow(clippy::too_many_lines, reason = "one arm per operation reads best as one match")]
    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        self.applied_index += 1;
        match op {
            Op::Put(k, v) => self.write(vec![(k, Some(v))], false)?,
            Op::Delete(k) => self.write(vec![(k, None)], false)?,
            Op::Batch { writes, stale } => self.write(writes, stale)?,
            Op::Scan { start, end, limit } => {
                let (start, end) = (key(start), end.map(key));
                let got = self.engine.read_view().scan(&start, end.as_deref(), limit);
                let want: Vec<_> = self
                    .live
                    .range(start.clone()..)
                    .take_while(|(k, _)| end.as_ref().is_none_or(|e| *k < e))
                    .take(limit)
                    .collect();
                prop_assert_eq!(got.len(), want.len());
                for ((gk, gv), (wk, wv)) in got.iter().zip(want) {
                    prop_assert_eq!(&gk[..], &wk[..]);
                    prop_assert_eq!(&gv[..], &wv[..]);
                }
            }
            Op::TakeSnapshot => {
                if self.snapshots.len() == 4 {
                    self.snapshots.remove(0);
                }
                self.snapshots.push((self.engine.read_view(), self.live.clone()));
            }
            Op::ReadSnapshot(i) => {
                if let Some((snap, data)) = self.snapshots.get(i % self.snapshots.len().max(1)) {
                    prop_assert_eq!(&scan_all(snap), data, "snapshot lost or gained data");
                    for i in 0..KEYS {
                        prop_assert_eq!(
                            snap.get(&key(i)).map(|v| v.to_vec()),
                            data.get(&key(i)).cloned()
                        );
                    }
                }
            }
            Op::DropSnapshot(i) => {
                if !self.snapshots.is_empty() {
                    let i = i % self.snapshots.len();
                    self.snapshots.remove(i);
                }
            }
            Op::Split(k) => self.split(&key(k))?,
            Op::Merge { region, right } => self.merge(region, right)?,
            Op::Remove(i) => {
                if self.regions.is_empty() {
                    return Ok(());
                }
                let region = self.regions[i % self.regions.len()].clone();
                if self.snapshots.iter().any(|_| true) {
                    // Removal drops data that snapshots could see; keep the model simple.
                    self.snapshots.clear();
                }
                let removed = self.engine.remove_region(region.id).unwrap();
                prop_assert_eq!(&removed, &region);
                clear_range(&mut self.live, &region);
                clear_range(&mut self.durable, &region);
                clear_range(&mut self.live_locks, &region);
                clear_range(&mut self.durable_locks, &region);
                self.regions.retain(|r| r.id != region.id);
            }
            Op::InsertAbsent(i) => {
                let gaps: Vec<_> = self
                    .engine
                    .region_map()
                    .slots()
                    .into_iter()
                    .filter(|s| s.region.is_none())
                    .collect();
                if gaps.is_empty() {
                    return Ok(());
                }
                let gap = &gaps[i % gaps.len()];
                let region =
                    Region::new(RegionId(self.next_region_id), gap.start.clone(), gap.end.clone());
                self.next_region_id += 1;
                self.engine.insert_region(region.clone()).unwrap();
                self.regions.push(region);
                self.regions.sort_by(|a, b| a.start.cmp(&b.start));
            }
            Op::Checkpoint(i) => {
                if self.regions.is_empty() {
                    return Ok(());
                }
                let region = self.regions[i % self.regions.len()].clone();
                self.checkpoint(&region)?;
            }
            Op::CheckpointAll => {
                for region in self.regions.clone() {
                    self.checkpoint(&region)?;
                }
            }
            Op::Gc(n) => {
                self.engine.gc(n);
            }
            Op::Reopen { crash } => {
                self.snapshots.clear();
                let fs = if crash {
                    Arc::new(self.fs.crash(CrashMode::Lost))
                } else {
                    self.engine.close().unwrap();
                    self.fs.clone()
                };
                let engine = Engine::open(fs.clone(), DIR, EngineOptions::new(StoreId(1))).unwrap();
                prop_assert_eq!(engine.recovery().clean_shutdown, !crash);
                prop_assert!(engine.recovery().removed_files.is_empty(), "nothing was left over");
                self.fs = fs;
                self.engine = engine;
                self.live = self.durable.clone();
                self.live_locks = self.durable_locks.clone();
            }
            Op::Lock(k, entry) => {
                let k = key(k);
                let Some(region) = self.region_of(&k).cloned() else { return self.check() };
                let mut round = self.engine.begin_round();
                round.prepare_for_region(region.id, region.epoch).unwrap();
                round.set_txn_lock(&k, entry.clone().map(Into::into)).unwrap();
                round.commit().unwrap();
                match entry {
                    Some(entry) => self.live_locks.insert(k, entry),
                    None => self.live_locks.remove(&k),
                };
            }
        }
        self.check()
    }

    /// Every lock the engine holds, over all regions, in key order.
    fn engine_locks(engine: &Engine) -> Data {
        let mut all = Data::new();
        for region in engine.regions() {
            for (k, v) in engine.txn_locks(region.id, b"", None, usize::MAX) {
                all.insert(k.to_vec(), v.to_vec());
            }
        }
        all
    }

    /// One round over `writes`, grouped region by region in order of first appearance.
    fn write(
        &mut self,
        writes: Vec<(u8, Option<Vec<u8>>)>,
        stale: bool,
    ) -> Result<(), TestCaseError> {
        let mut groups: Vec<(Region, Vec<Write>)> = Vec::new();
        for (k, v) in writes {
            let k = key(k);
            let Some(region) = self.region_of(&k).cloned() else {
                continue; // absent range: nothing to route to
            };
            match groups.iter_mut().find(|(r, _)| r.id == region.id) {
                Some((_, ws)) => ws.push((k, v)),
                None => groups.push((region, vec![(k, v)])),
            }
        }
        let mut round = self.engine.begin_round();
        for (region, ws) in &groups {
            if stale {
                let old =
                    Epoch { version: region.epoch.version - 1, conf_ver: region.epoch.conf_ver };
                let err = round.prepare_for_region(region.id, old).unwrap_err();
                prop_assert!(
                    matches!(err, Error::EpochNotMatch { ref current, .. } if current[0] == *region),
                    "{:?}",
                    err
                );
            }
            round.prepare_for_region(region.id, region.epoch).unwrap();
            if stale && let Some(outside) = (0..KEYS).map(key).find(|k| !region.contains(k)) {
                prop_assert!(
                    matches!(round.put(&outside, b"x"), Err(Error::KeyNotInRegion { .. })),
                    "key outside"
                );
            }
            for (k, v) in ws {
                match v {
                    Some(v) => round.put(k, v).unwrap(),
                    None => round.delete(k).unwrap(),
                }
            }
        }
        if let Some((first, _)) = groups.first()
            && groups.len() > 1
        {
            prop_assert!(
                matches!(
                    round.prepare_for_region(first.id, first.epoch),
                    Err(Error::RegionAlreadyPrepared { .. })
                ),
                "re-prepare"
            );
        }
        round.commit().unwrap();
        for (_, ws) in groups {
            for (k, v) in ws {
                match v {
                    Some(v) => self.live.insert(k, v),
                    None => self.live.remove(&k),
                };
            }
        }
        Ok(())
    }

    fn split(&mut self, at: &[u8]) -> Result<(), TestCaseError> {
        let Some(region) = self.region_of(at).cloned() else { return Ok(()) };
        let new_id = RegionId(self.next_region_id);
        let result = self.engine.split(region.id, &[at.to_vec()], &[new_id]);
        if region.start == at {
            prop_assert!(
                matches!(
                    result,
                    Err(Error::RegionChange { reason: RegionChangeError::InvalidSplit { .. } })
                ),
                "{:?}",
                result
            );
            return Ok(());
        }
        self.next_region_id += 1;
        let epoch = Epoch { version: region.epoch.version + 1, conf_ver: region.epoch.conf_ver };
        let left = Region { end: Some(at.to_vec()), epoch, ..region.clone() };
        let right = Region { id: new_id, start: at.to_vec(), epoch, ..region.clone() };
        prop_assert_eq!(result.unwrap(), vec![left.clone(), right.clone()]);
        self.regions.retain(|r| r.id != region.id);
        self.regions.extend([left, right]);
        self.regions.sort_by(|a, b| a.start.cmp(&b.start));
        Ok(())
    }

    fn merge(&mut self, i: usize, right: bool) -> Result<(), TestCaseError> {
        if self.regions.len() < 2 {
            return Ok(());
        }
        let i = i % self.regions.len();
        let j = if right { i + 1 } else { i.wrapping_sub(1) };
        let Some(source) = self.regions.get(j).cloned() else { return Ok(()) };
        let target = self.regions[i].clone();
        let result = self.engine.merge(source.id, target.id);
        let adjacent = source.end.as_ref() == Some(&target.start)
            || target.end.as_ref() == Some(&source.start);
        if !adjacent {
            prop_assert!(
                matches!(
                    result,
                    Err(Error::RegionChange { reason: RegionChangeError::NotAdjacent { .. } })
                ),
                "{:?}",
                result
            );
            return Ok(());
        }
        let mut merged = target.clone();
        if right {
            merged.end.clone_from(&source.end);
        } else {
            merged.start.clone_from(&source.start);
        }
        merged.epoch.version = source.epoch.version.max(target.epoch.version) + 1;
        prop_assert_eq!(result.unwrap(), merged.clone());
        self.regions.retain(|r| r.id != source.id && r.id != target.id);
        self.regions.push(merged);
        self.regions.sort_by(|a, b| a.start.cmp(&b.start));
        Ok(())
    }

    fn checkpoint(&mut self, region: &Region) -> Result<(), TestCaseError> {
        let meta = self.engine.checkpoint(region.id, self.applied_index).unwrap();
        prop_assert_eq!(&meta.region, region);
        let expected: Data =
            range_of(&self.live, region).map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(meta.stats.entries, expected.len() as u64);
        clear_range(&mut self.durable, region);
        self.durable.extend(expected.clone());
        let locks: Data =
            range_of(&self.live_locks, region).map(|(k, v)| (k.clone(), v.clone())).collect();
        clear_range(&mut self.durable_locks, region);
        self.durable_locks.extend(locks.clone());

        // P11: the checkpoint alone, shipped in chunks to a fresh engine, is the region.
        let fresh_fs = Arc::new(SimFs::new());
        let fresh = Engine::open(fresh_fs, "/fresh", EngineOptions::new(StoreId(2))).unwrap();
        let mut receiver = fresh.receive_checkpoint().unwrap();
        for chunk in self.engine.checkpoint_chunks(region.id, 97).unwrap() {
            receiver.push(&chunk).unwrap();
        }
        let installed = fresh.install_checkpoint(receiver.finish().unwrap()).unwrap();
        prop_assert_eq!(&installed, region);
        prop_assert_eq!(scan_all(&fresh.read_view()), expected);
        prop_assert_eq!(Self::engine_locks(&fresh), locks);
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(&scan_all(&self.engine.read_view()), &self.live);
        // Locks move with their keys' ranges like data, and the store-wide count is
        // theirs.
        prop_assert_eq!(&Self::engine_locks(&self.engine), &self.live_locks);
        prop_assert_eq!(self.engine.txn_lock_total(), self.live_locks.len() as u64);
        // P8: the hosted regions are the model's, and the map is a partition.
        prop_assert_eq!(self.engine.regions(), self.regions.clone());
        let map = self.engine.region_map();
        prop_assert!(map.check_partition().is_ok());
        let slots = map.slots();
        prop_assert!(slots.first().is_some_and(|s| s.start.is_empty()));
        prop_assert!(slots.last().is_some_and(|s| s.end.is_none()));
        prop_assert!(slots.windows(2).all(|w| w[0].end.as_ref() == Some(&w[1].start)));
        // Memory accounts: per region sums to the total; no pin outlives its round.
        let memory = self.engine.memory();
        let per_region: u64 = memory.regions.iter().map(|(_, b)| b).sum();
        prop_assert_eq!(per_region, memory.total_bytes);
        prop_assert_eq!(self.engine.total_pins(), 0);
        if self.snapshots.is_empty() {
            // Nothing pins old versions: at most one version per key (tombstones of
            // pruned keys are gone too) once GC swept everything.
            // The first call finishes the sweep in progress; the second is a full one.
            prop_assert!(self.engine.gc(usize::MAX).wrapped);
            prop_assert!(self.engine.gc(usize::MAX).wrapped);
            prop_assert_eq!(self.engine.memory().entries, self.live.len());
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..100)) {
        let mut h = Harness::new();
        for op in ops {
            h.apply(op)?;
        }
    }
}
