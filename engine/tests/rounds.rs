//! Write batch rounds against a reference model of pins and prepared regions.
//!
//! Regression for the upstream bug (`TiKV`'s in-memory engine write batch): a round
//! that prepared region B and wrote nothing did not reset the batch, so B stayed
//! marked prepared; the next round prepared A and then B, found B "prepared but not
//! current", and panicked on an assertion; B's pin was never released either, which
//! blocks evicting it forever. Fix here: a round is a guard whose every end (commit,
//! clear, drop) resets it and releases each pin exactly once; coming back to an
//! earlier region in one round is a typed error.
//!
//! The same holds for a round's changes of transaction state (locks here): published
//! by commit only, dropped by every other end, never carried into the next round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use regionkv_engine::{ApplyRound, Engine, EngineOptions, Epoch, Error, Region, RegionId, StoreId};
use regionkv_wal::SimFs;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A region to host: id, start, end.
type Spec<'a> = (u64, &'a [u8], Option<&'a [u8]>);

fn engine_with(regions: &[Spec<'_>]) -> Result<Engine, Error> {
    let engine = Engine::open(Arc::new(SimFs::new()), "/e", EngineOptions::new(StoreId(1)))?;
    for &(id, start, end) in regions {
        engine.insert_region(Region::new(RegionId(id), start.to_vec(), end.map(<[u8]>::to_vec)))?;
    }
    Ok(engine)
}

fn epoch(engine: &Engine, id: u64) -> Epoch {
    engine.region(RegionId(id)).map(|r| r.epoch).unwrap_or_default()
}

/// The exact upstream sequence, for each way a round can end.
#[test]
fn round_that_prepared_b_and_wrote_nothing_then_round_preparing_a_then_b() -> TestResult {
    for end in ["commit", "drop", "clear"] {
        let engine = engine_with(&[(1, b"", Some(b"m")), (2, b"m", None)])?;
        let (a, b) = (RegionId(1), RegionId(2));

        let mut first = engine.begin_round();
        first.prepare_for_region(b, epoch(&engine, 2))?;
        assert!(first.is_empty(), "prepared, nothing written");
        assert_eq!(engine.pins(b), 1);
        match end {
            "commit" => assert_eq!(first.commit()?, None),
            "drop" => drop(first),
            _ => {
                first.clear();
                first.clear();
                assert_eq!(first.current_region(), None);
                assert!(first.prepared_regions().is_empty());
                drop(first);
            }
        }
        assert_eq!(engine.pins(b), 0, "{end}: the empty round released its pin");

        let mut second = engine.begin_round();
        assert_eq!(second.current_region(), None, "a new round starts at the initial state");
        second.prepare_for_region(a, epoch(&engine, 1))?;
        second.put(b"apple", b"1")?;
        second.prepare_for_region(b, epoch(&engine, 2))?;
        second.put(b"melon", b"2")?;
        assert_eq!(second.prepared_regions(), &[a, b]);
        assert!(second.commit()?.is_some());
        assert_eq!(engine.total_pins(), 0);
        let snap = engine.read_view();
        assert_eq!(snap.get(b"apple").as_deref(), Some(&b"1"[..]));
        assert_eq!(snap.get(b"melon").as_deref(), Some(&b"2"[..]));
        // With every pin released, B can be removed (upstream: eviction hung).
        engine.remove_region(b)?;
    }
    Ok(())
}

#[test]
fn coming_back_to_an_earlier_region_is_an_error_not_a_panic() -> TestResult {
    let engine = engine_with(&[(1, b"", Some(b"m")), (2, b"m", None)])?;
    let mut round = engine.begin_round();
    round.prepare_for_region(RegionId(1), epoch(&engine, 1))?;
    round.prepare_for_region(RegionId(2), epoch(&engine, 2))?;
    let err = round.prepare_for_region(RegionId(1), epoch(&engine, 1)).unwrap_err();
    assert!(matches!(err, Error::RegionAlreadyPrepared { region: RegionId(1) }), "{err:?}");
    assert_eq!(round.current_region(), Some(RegionId(2)), "the error changed nothing");
    assert!(matches!(round.put(b"a", b"x"), Err(Error::KeyNotInRegion { .. })));
    round.put(b"z", b"x")?;
    round.commit()?;
    assert_eq!(engine.total_pins(), 0);
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Begin(usize),
    Prepare {
        round: usize,
        region: usize,
        stale: bool,
    },
    /// A put, or (`lock`) a transaction lock set on a fresh key.
    Put {
        round: usize,
        inside: bool,
        lock: bool,
    },
    /// Ends the round: commit or drop.
    End {
        round: usize,
        commit: bool,
    },
    Clear {
        round: usize,
        twice: bool,
    },
    Split(usize),
    Merge {
        region: usize,
        right: bool,
    },
    Remove(usize),
    InsertAbsent,
}

fn op() -> impl Strategy<Value = Op> {
    let round = 0usize..3;
    prop_oneof![
        2 => round.clone().prop_map(Op::Begin),
        4 => (round.clone(), 0usize..8, proptest::bool::weighted(0.15))
            .prop_map(|(round, region, stale)| Op::Prepare { round, region, stale }),
        3 => (round.clone(), proptest::bool::weighted(0.85), proptest::bool::weighted(0.3))
            .prop_map(|(round, inside, lock)| Op::Put { round, inside, lock }),
        2 => (round.clone(), any::<bool>()).prop_map(|(round, commit)| Op::End { round, commit }),
        1 => (round, any::<bool>()).prop_map(|(round, twice)| Op::Clear { round, twice }),
        1 => (0usize..8).prop_map(Op::Split),
        1 => (0usize..8, any::<bool>()).prop_map(|(region, right)| Op::Merge { region, right }),
        1 => (0usize..8).prop_map(Op::Remove),
        1 => Just(Op::InsertAbsent),
    ]
}

/// What the model expects of one open round.
#[derive(Debug, Default)]
struct RoundModel {
    current: Option<RegionId>,
    /// The current region as it was when prepared: the round checks keys against it.
    current_region: Option<Region>,
    prepared: Vec<RegionId>,
    /// Regions this round pins, following splits and merges.
    pinned: BTreeSet<RegionId>,
    writes: usize,
    /// Keys this round locked (published if it commits).
    locks: Vec<Vec<u8>>,
}

struct Harness<'e> {
    engine: &'e Engine,
    rounds: Vec<Option<(ApplyRound<'e>, RoundModel)>>,
    /// Locks published by committed rounds (and not dropped with their region).
    locks: BTreeSet<Vec<u8>>,
    next_id: u64,
    next_key: u64,
}

impl Harness<'_> {
    fn regions(&self) -> Vec<Region> {
        self.engine.regions()
    }

    fn pick(&self, i: usize) -> Option<Region> {
        let regions = self.regions();
        (!regions.is_empty()).then(|| regions[i % regions.len()].clone())
    }

    #[allow(clippy::too_many_lines, reason = "one arm per operation reads best as one match")]
    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Begin(r) => {
                if self.rounds[r].is_none() {
                    let round = self.engine.begin_round();
                    prop_assert_eq!(round.current_region(), None);
                    prop_assert!(round.prepared_regions().is_empty() && round.is_empty());
                    self.rounds[r] = Some((round, RoundModel::default()));
                }
            }
            Op::Prepare { round, region, stale } => {
                let Some(region) = self.pick(region) else { return Ok(()) };
                let Some((round, model)) = self.rounds[round].as_mut() else { return Ok(()) };
                let epoch = if stale {
                    Epoch { version: region.epoch.version + 1, ..region.epoch }
                } else {
                    region.epoch
                };
                let result = round.prepare_for_region(region.id, epoch);
                let is_current = model.current == Some(region.id);
                if !is_current && model.prepared.contains(&region.id) {
                    prop_assert!(
                        matches!(result, Err(Error::RegionAlreadyPrepared { .. })),
                        "{:?}",
                        result
                    );
                } else if stale {
                    prop_assert!(
                        matches!(result, Err(Error::EpochNotMatch { .. })),
                        "{:?}",
                        result
                    );
                } else {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    if !is_current {
                        model.prepared.push(region.id);
                    }
                    model.current = Some(region.id);
                    model.current_region = Some(region.clone());
                    model.pinned.insert(region.id);
                }
            }
            Op::Put { round, inside, lock } => {
                let Some((round, model)) = self.rounds[round].as_mut() else { return Ok(()) };
                self.next_key += 1;
                let write = |round: &mut ApplyRound<'_>, k: &[u8]| {
                    if lock {
                        round.set_txn_lock(k, Some(Bytes::from_static(b"\x01lock")))
                    } else {
                        round.put(k, b"v")
                    }
                };
                let Some(region) = model.current_region.clone() else {
                    let result = write(round, b"k");
                    prop_assert!(matches!(result, Err(Error::NoRegionPrepared)), "{:?}", result);
                    return Ok(());
                };
                let key = Some(&region).and_then(|r| {
                    let mut k = r.start.clone();
                    k.extend_from_slice(format!("{:08}", self.next_key).as_bytes());
                    (inside && r.contains(&k)).then_some(k)
                });
                match key {
                    Some(k) => {
                        prop_assert!(write(round, &k).is_ok());
                        if lock {
                            model.locks.push(k);
                        } else {
                            model.writes += 1;
                        }
                    }
                    None if !inside => {
                        // A key before the region's start is outside it (unless the
                        // region starts at the empty key; then pick past its end).
                        let r = region;
                        let outside =
                            if r.start.is_empty() { r.end.clone() } else { Some(Vec::new()) };
                        if let Some(k) = outside {
                            let result = write(round, &k);
                            prop_assert!(
                                matches!(result, Err(Error::KeyNotInRegion { .. })),
                                "{:?}",
                                result
                            );
                        }
                    }
                    None => {}
                }
            }
            Op::End { round, commit } => {
                let Some((round, model)) = self.rounds[round].take() else { return Ok(()) };
                if commit {
                    let seq = round.commit();
                    prop_assert!(seq.is_ok(), "{:?}", seq);
                    prop_assert_eq!(
                        seq.unwrap().is_some(),
                        model.writes > 0,
                        "empty round got a seq"
                    );
                    self.locks.extend(model.locks);
                } else {
                    drop(round);
                }
            }
            Op::Clear { round, twice } => {
                let Some((round, model)) = self.rounds[round].as_mut() else { return Ok(()) };
                round.clear();
                if twice {
                    round.clear();
                }
                *model = RoundModel::default();
                prop_assert_eq!(round.current_region(), None);
                prop_assert!(round.prepared_regions().is_empty() && round.is_empty());
            }
            Op::Split(i) => {
                let Some(region) = self.pick(i) else { return Ok(()) };
                let mut at = region.start.clone();
                at.extend_from_slice(b"~split");
                if !region.contains(&at) {
                    return Ok(());
                }
                let new_id = RegionId(self.next_id);
                self.next_id += 1;
                let parts = self.engine.split(region.id, &[at], &[new_id]);
                prop_assert!(parts.is_ok(), "{:?}", parts);
                for (_, model) in self.rounds.iter_mut().flatten() {
                    if model.pinned.contains(&region.id) {
                        model.pinned.insert(new_id);
                    }
                }
            }
            Op::Merge { region, right } => {
                let regions = self.regions();
                if regions.len() < 2 {
                    return Ok(());
                }
                let i = region % regions.len();
                let j = if right { i + 1 } else { i.wrapping_sub(1) };
                let Some(source) = regions.get(j) else { return Ok(()) };
                let target = &regions[i];
                let adjacent = source.end.as_ref() == Some(&target.start)
                    || target.end.as_ref() == Some(&source.start);
                let result = self.engine.merge(source.id, target.id);
                prop_assert_eq!(result.is_ok(), adjacent, "{:?}", result);
                if adjacent {
                    for (_, model) in self.rounds.iter_mut().flatten() {
                        if model.pinned.remove(&source.id) {
                            model.pinned.insert(target.id);
                        }
                    }
                }
            }
            Op::Remove(i) => {
                let Some(region) = self.pick(i) else { return Ok(()) };
                let pinned = self
                    .rounds
                    .iter()
                    .flatten()
                    .filter(|(_, m)| m.pinned.contains(&region.id))
                    .count();
                let result = self.engine.remove_region(region.id);
                if pinned > 0 {
                    prop_assert!(
                        matches!(result, Err(Error::RegionBusy { pins, .. }) if pins as usize == pinned),
                        "{:?}",
                        result
                    );
                } else {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    self.locks.retain(|k| !region.contains(k));
                }
            }
            Op::InsertAbsent => {
                let gap = self.engine.region_map().slots().into_iter().find(|s| s.region.is_none());
                if let Some(gap) = gap {
                    let region = Region::new(RegionId(self.next_id), gap.start, gap.end);
                    self.next_id += 1;
                    prop_assert!(self.engine.insert_region(region).is_ok());
                }
            }
        }
        self.check()
    }

    /// Pins per region are exactly the model's, and each round's state is the model's.
    fn check(&self) -> Result<(), TestCaseError> {
        let mut expected: BTreeMap<RegionId, u32> = BTreeMap::new();
        for (round, model) in self.rounds.iter().flatten() {
            for id in &model.pinned {
                *expected.entry(*id).or_insert(0) += 1;
            }
            prop_assert_eq!(round.current_region(), model.current);
            prop_assert_eq!(round.prepared_regions(), model.prepared.as_slice());
            prop_assert_eq!(round.len(), model.writes);
            prop_assert_eq!(round.txn_unchanged(), model.locks.is_empty());
        }
        // Exactly the committed rounds' locks are published, wherever splits and
        // merges moved them.
        prop_assert_eq!(self.engine.txn_lock_total(), self.locks.len() as u64);
        for key in &self.locks {
            let region = self.engine.region_for_key(key).map(|r| r.id);
            prop_assert!(region.is_some_and(|id| self.engine.txn_lock(id, key).is_some()));
        }
        for region in self.regions() {
            prop_assert_eq!(
                self.engine.pins(region.id),
                expected.get(&region.id).copied().unwrap_or(0)
            );
        }
        prop_assert_eq!(
            self.engine.total_pins(),
            expected.values().map(|&n| u64::from(n)).sum::<u64>()
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn rounds_never_panic_and_pins_balance(ops in proptest::collection::vec(op(), 1..80)) {
        let engine = engine_with(&[(1, b"", Some(b"g")), (2, b"g", Some(b"p")), (3, b"p", None)]).unwrap();
        let mut h = Harness {
            engine: &engine,
            rounds: vec![None, None, None],
            locks: BTreeSet::new(),
            next_id: 10,
            next_key: 0,
        };
        for op in ops {
            h.apply(op)?;
        }
        // Every round ends; then no pin is left and every region can be removed.
        for slot in &mut h.rounds {
            drop(slot.take());
        }
        prop_assert_eq!(engine.total_pins(), 0);
        prop_assert_eq!(engine.txn_lock_total(), h.locks.len() as u64);
        for region in engine.regions() {
            prop_assert!(engine.remove_region(region.id).is_ok());
        }
        prop_assert!(!engine.has_txn_locks());
    }
}

/// A round that writes several regions charges each key to its own region (the
/// commit looks a key's region up among the round's prepared regions first), the same
/// as one round per region does; overwrites free their old version's charge.
#[test]
fn a_round_over_several_regions_charges_each_key_to_its_region() -> TestResult {
    let spec: [Spec<'_>; 3] = [(1, b"", Some(b"g")), (2, b"g", Some(b"p")), (3, b"p", None)];
    let keys: [(u64, &[u8]); 6] =
        [(3, b"z"), (1, b"a"), (2, b"h"), (3, b"q"), (1, b"c"), (2, b"o")];
    let (one, many) = (engine_with(&spec)?, engine_with(&spec)?);
    for value in [&b"first"[..], b"second, longer"] {
        let mut round = many.begin_round();
        for id in [2, 3, 1] {
            round.prepare_for_region(RegionId(id), epoch(&many, id))?;
            for (_, key) in keys.iter().filter(|(r, _)| *r == id) {
                round.put(key, value)?;
            }
        }
        round.commit()?;
        for id in [1, 2, 3] {
            let mut round = one.begin_round();
            round.prepare_for_region(RegionId(id), epoch(&one, id))?;
            for (_, key) in keys.iter().filter(|(r, _)| *r == id) {
                round.put(key, value)?;
            }
            round.commit()?;
        }
    }
    let charged = one.memory().regions;
    assert_eq!(many.memory().regions, charged);
    assert!(charged.iter().all(|&(_, bytes)| bytes > 0), "{charged:?}");
    Ok(())
}
