//! Property test over region topology: random sequences of puts, deletes, scans,
//! splits at random keys, merges of random neighbours, leader transfers, store
//! restarts and crashes, and poison pills (admin and directory commands that must be
//! refused, forged snapshots that must be dropped), on the simulated three-store
//! cluster with its directory, checked against a model after every step:
//!
//! - P1: every acknowledged write is there (a write whose outcome is unknown may be);
//! - P8: a request routed with a stale epoch is refused, and a key outside the region
//!   routed to is refused;
//! - P9: a scan over every region returns each key exactly once (nothing lost or
//!   duplicated across splits and merges), and the regions partition the key space;
//! - P7 (the simulator checks it after every event): epochs never go back;
//! - A1 (the simulator too): no store ever stops; a poison pill is refused with a
//!   typed error and changes nothing (the model check after the step).
//!
//! Seeds: `SIM_SEED=<seed>` replays one; `TOPOLOGY_SEEDS=<n>` runs the first n (200 by
//! default); `SIM_SOAK_SEEDS=<n>` too (the soak: 5,000); `TOPOLOGY_TRACE=1` prints
//! each step and the regions before it.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, MAX_IDS_PER_ALLOCATION};
use regionkv_raft::merge_driver::{self, MergeOptions, RegionAdmin};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::transport::local::SplitMix;
use regionkv_raft::{AdminCmd, AdminResult, Error, Op};
use regionkv_wal::CrashMode;

use common::{SECOND, converge, region_for, scan_all, split};

/// What each key may hold: the last acknowledged outcome, and outcomes of later
/// writes that were not acknowledged (any of them may have applied).
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, (Option<String>, Vec<Option<String>>)>,
}

impl Model {
    fn record(&mut self, key: &str, value: Option<&str>, acked: bool) {
        let entry = self.keys.entry(key.to_owned()).or_default();
        let value = value.map(str::to_owned);
        if acked {
            *entry = (value, Vec::new());
        } else {
            entry.1.push(value);
        }
    }

    /// P1 and P9 against a scan of every region; the observed state becomes the new
    /// acknowledged state.
    fn check(&mut self, observed: &BTreeMap<String, String>, seed: u64, step: usize) {
        for (key, (acked, unknown)) in &mut self.keys {
            let got = observed.get(key).cloned();
            assert!(
                got == *acked || unknown.contains(&got),
                "seed {seed} step {step}: key {key} holds {got:?}, acknowledged {acked:?}, unknown {unknown:?}"
            );
            *acked = got;
            unknown.clear();
        }
        for key in observed.keys() {
            assert!(
                self.keys.contains_key(key),
                "seed {seed} step {step}: {key} was never written"
            );
        }
    }
}

/// Writes (or deletes) one key through its region's leader, retrying routing
/// errors; true if acknowledged.
fn write(c: &mut SimCluster, key: &str, value: Option<&str>, max: Duration) -> bool {
    let op = match value {
        Some(v) => Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(v.to_owned()) },
        None => Op::Delete { key: Bytes::from(key.to_owned()) },
    };
    let deadline = c.now() + max;
    while c.now() < deadline {
        let Some(region) = region_for(c, key.as_bytes()) else {
            c.run_for(Duration::from_millis(20));
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let pending = c.write(leader, region.id, vec![op.clone()]);
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(())) => return true,
            Some(Err(e)) if e.is_retryable() => c.run_for(Duration::from_millis(20)),
            Some(Err(e)) => panic!("unexpected write error: {e}"),
            None => {}
        }
    }
    false
}

/// P8: a write routed to `region` with a stale epoch, or with a key outside it, is
/// refused and changes nothing.
fn check_stale_routing(c: &mut SimCluster, old: &Region, seed: u64, step: usize) {
    let Some(leader) = c.wait_leader(old.id, SECOND) else { return };
    let Some(now) = c.region(leader, old.id) else { return };
    if now.epoch.version == old.epoch.version {
        return;
    }
    let key = Bytes::from(now.start.clone());
    let pending =
        c.write_at(leader, old.id, old.epoch, vec![Op::Put { key, value: "stale".into() }]);
    match c.wait(&pending, SECOND) {
        Some(Err(Error::EpochNotMatch { current, .. })) => {
            assert!(current.iter().any(|r| r.id == old.id && r.epoch == now.epoch));
        }
        Some(Err(e)) if e.is_retryable() => {} // the leader moved meanwhile
        other => panic!(
            "seed {seed} step {step}: a stale epoch was not refused: {:?}",
            other.map(|r| r.map_err(|e| e.to_string()))
        ),
    }
    if let Some(end) = &now.end {
        let pending = c.write_at(
            leader,
            old.id,
            now.epoch,
            vec![Op::Put { key: Bytes::from(end.clone()), value: "outside".into() }],
        );
        let refused = matches!(
            c.wait(&pending, SECOND),
            Some(Err(Error::KeyNotInRegion { .. }
                | Error::NotLeader { .. }
                | Error::EpochNotMatch { .. }))
        );
        assert!(refused, "seed {seed} step {step}: a key outside the region was taken");
    }
}

/// Whether a poison pill's outcome is a refusal: typed, and changing nothing. A
/// routing error (the leader moved, the region changed meanwhile) or no answer yet is
/// not a verdict; anything that applied is a failure.
fn refused<T: std::fmt::Debug>(what: &str, outcome: &Result<T, Error>, seed: u64, step: usize) {
    match outcome {
        Err(Error::InvalidRequest(_)) => {}
        Err(e) if e.is_retryable() || matches!(e, Error::Timeout { .. }) => {}
        other => panic!("seed {seed} step {step}: {what} was not refused: {other:?}"),
    }
}

/// A key of the test's key space strictly inside `region`, if there is one.
fn key_inside(region: &Region) -> Option<String> {
    (0..40).map(|i| format!("k{i:02}")).find(|k| {
        region.start.as_slice() < k.as_bytes()
            && region.end.as_ref().is_none_or(|end| k.as_bytes() < end.as_slice())
    })
}

/// One poison pill, chosen at random: an admin or directory command every replica must
/// refuse alike, or a snapshot a leader would never send, which must be dropped.
fn poison(
    c: &mut SimCluster,
    rng: &mut SplitMix,
    given: &BTreeMap<RegionId, Vec<RegionId>>,
    seed: u64,
    step: usize,
) {
    let regions = converge(c);
    let region = regions[(rng.next_u64() % regions.len() as u64) as usize].clone();
    let kind = rng.next_u64() % 6;
    if std::env::var("TOPOLOGY_TRACE").is_ok() {
        eprintln!("poison pill {kind} at region {}", region.id);
    }
    match kind {
        0 => {
            // A split whose ids the directory did not allocate for it.
            let Some(key) = key_inside(&region) else { return };
            let older = regions.iter().map(|r| r.id).filter(|id| *id < region.id).max();
            let fresh = RegionId(c.new_id());
            let mut choices = vec![vec![DIRECTORY], vec![region.id], vec![RegionId(5)]];
            choices.extend(older.map(|id| vec![id]));
            choices.extend(given.get(&region.id).and_then(|ids| ids.last()).map(|id| vec![*id]));
            let ids = &choices[(rng.next_u64() % choices.len() as u64) as usize];
            let (keys, new_ids) = if rng.next_u64().is_multiple_of(4) {
                (vec![key.clone().into_bytes(), format!("{key}z").into_bytes()], vec![fresh, fresh])
            } else {
                (vec![key.into_bytes()], ids.clone())
            };
            let cmd = AdminCmd::Split { split_keys: keys, new_ids };
            let outcome = RegionAdmin::admin(c, region.id, region.epoch, cmd.clone());
            refused(&format!("{cmd:?}"), &outcome, seed, step);
        }
        1 => {
            // A commit merge naming a prepare its source never made (an index the source
            // applied already, a term at random), into either neighbour.
            let i = regions.iter().position(|r| r.id == region.id).expect("listed");
            let Some(target) = [i.checked_sub(1), Some(i + 1)]
                .into_iter()
                .flatten()
                .filter_map(|j| regions.get(j))
                .nth((rng.next_u64() % 2) as usize)
                .or_else(|| regions.get(i + 1).or_else(|| i.checked_sub(1).map(|j| &regions[j])))
                .cloned()
            else {
                return;
            };
            let Some(leader) = c.leader(region.id) else { return };
            let Some(applied) =
                c.status(leader).into_iter().find(|p| p.region.id == region.id).map(|p| p.applied)
            else {
                return;
            };
            let cmd = AdminCmd::CommitMerge {
                source: region.clone(),
                prepare_index: applied.saturating_sub(rng.next_u64() % 3).max(1),
                prepare_term: 1 + rng.next_u64() % 7,
            };
            let status = RegionAdmin::merge_status(c, region.id);
            let outcome = RegionAdmin::admin(c, target.id, target.epoch, cmd.clone());
            let prepared = status.is_ok_and(|s| s.merge.is_some());
            match outcome {
                // Only a source prepared into this very target, at that very index and
                // term, merges: a real merge a driver left half done.
                Ok(AdminResult::Merged(_)) if prepared => {}
                other => refused(&format!("{cmd:?}"), &other, seed, step),
            }
        }
        2 => {
            // An allocation out of bounds.
            let count = [0, MAX_IDS_PER_ALLOCATION + 1, u64::MAX][(rng.next_u64() % 3) as usize];
            let Some(leader) = c.wait_leader(DIRECTORY, SECOND) else { return };
            let pending = c.directory(leader, &DirCmd::AllocIds { count });
            let outcome =
                c.wait(&pending, SECOND).unwrap_or(Err(Error::Timeout { region: DIRECTORY }));
            refused(&format!("AllocIds {{ count: {count} }}"), &outcome, seed, step);
        }
        3 => {
            // A rollback of a merge never prepared at that index.
            let cmd = AdminCmd::RollbackMerge { prepare_index: 1 + rng.next_u64() % 1000 };
            let status = RegionAdmin::merge_status(c, region.id);
            if status.is_ok_and(|s| s.merge.is_some()) {
                return; // a real prepare, whose index may be this one
            }
            let outcome = RegionAdmin::admin(c, region.id, region.epoch, cmd.clone());
            refused(&format!("{cmd:?}"), &outcome, seed, step);
        }
        kind => forged_snapshot(c, &regions, &region, kind == 4, seed, step),
    }
}

/// A forged snapshot to a follower of `region`: a checkpoint of another region (H3),
/// or of `region` over one still hosted that is not an older part of it (A2). Dropped:
/// nothing of it is installed anywhere.
fn forged_snapshot(
    c: &mut SimCluster,
    regions: &[Region],
    region: &Region,
    other_region: bool,
    seed: u64,
    step: usize,
) {
    let Some(leader) = c.leader(region.id) else { return };
    let Some(to) = region.peers.iter().map(|p| p.store).find(|s| *s != leader && c.is_running(*s))
    else {
        return;
    };
    let Some(status) = c.status(to).into_iter().find(|p| p.region.id == region.id) else {
        return;
    };
    let header = if other_region {
        let epoch = regionkv_engine::Epoch { version: region.epoch.version + 5, ..region.epoch };
        Region { id: RegionId(4242), epoch, ..region.clone() }
    } else {
        Region { start: Vec::new(), end: None, ..region.clone() }
    };
    // A peer is trusted with what versions mean: a snapshot over older regions
    // replaces them (they merged into it while this store was behind). It must
    // overlap one at least as new for the store to see the forgery.
    if !other_region
        && regions.iter().all(|r| r.id == region.id || r.epoch.version < region.epoch.version)
    {
        return;
    }
    let index = status.commit + 100;
    let forged = common::crafted_snapshot(c, region.id, to, (index, status.term), &header, index);
    c.inject(forged);
    c.run_for(std::time::Duration::from_millis(100));
    common::no_forged_key(c, &header, &format!("seed {seed} step {step}"));
}

#[allow(clippy::too_many_lines, reason = "the table of random steps reads best in one place")]
fn run(seed: u64) {
    let mut config = SimConfig::new(seed);
    config.directory = true;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(RegionId(1), 10 * SECOND).unwrap();
    c.wait_leader(DIRECTORY, 10 * SECOND).unwrap();
    // The ids each region's splits gave its children: below its id floor from then on.
    let mut given: BTreeMap<RegionId, Vec<RegionId>> = BTreeMap::new();
    let mut pills = 0;
    let mut rng = SplitMix(seed ^ 0x70b0);
    let mut model = Model::default();
    let stores = c.store_ids();
    let mut down: Option<StoreId> = None;
    let (mut splits, mut merged_count, mut aborted, mut refused_left) = (0, 0, 0, 0);
    for step in 0..60usize {
        let live = |c: &SimCluster| {
            c.store_ids().into_iter().filter(|s| c.is_running(*s)).collect::<Vec<_>>()
        };
        let op = rng.next_u64() % 21;
        if std::env::var("TOPOLOGY_TRACE").is_ok() {
            let regions: Vec<(u64, String)> = c
                .status(c.store_ids().into_iter().find(|s| c.is_running(*s)).unwrap())
                .iter()
                .map(|p| (p.region.id.0, String::from_utf8_lossy(&p.region.start).into_owned()))
                .collect();
            eprintln!("step {step}: op {op} down {down:?} regions {regions:?}");
        }
        match op {
            0..=6 => {
                let key = format!("k{:02}", rng.next_u64() % 40);
                let value = format!("s{seed}-{step}");
                let ok = write(&mut c, &key, Some(&value), 3 * SECOND);
                model.record(&key, Some(&value), ok);
            }
            7 => {
                let key = format!("k{:02}", rng.next_u64() % 40);
                let ok = write(&mut c, &key, None, 3 * SECOND);
                model.record(&key, None, ok);
            }
            8..=10 => {
                let key = format!("k{:02}", rng.next_u64() % 40);
                let Some(region) = region_for(&c, key.as_bytes()) else { continue };
                let inside = region.start.as_slice() < key.as_bytes();
                if inside && let Ok(parts) = split(&mut c, region.id, &[&key]) {
                    splits += 1;
                    given.entry(parts[0].id).or_default().extend(parts[1..].iter().map(|p| p.id));
                    check_stale_routing(&mut c, &region, seed, step);
                }
            }
            11..=13 => {
                let regions = converge(&mut c);
                if regions.len() < 2 {
                    continue;
                }
                let i = (rng.next_u64() % (regions.len() as u64 - 1)) as usize;
                // Either direction: the right into the left merges; the left into the
                // right is refused before it is proposed (a region keeps its start key).
                let (source, target) = if rng.next_u64().is_multiple_of(2) {
                    (&regions[i + 1], &regions[i])
                } else {
                    (&regions[i], &regions[i + 1])
                };
                let options = MergeOptions { match_timeout: 3 * SECOND, ..MergeOptions::default() };
                match merge_driver::merge(&mut c, source.id, target.id, options) {
                    Ok(merged) => {
                        merged_count += 1;
                        assert!(merged.start <= source.start && merged.id == target.id);
                        assert_eq!(
                            target.end.as_ref(),
                            Some(&source.start),
                            "seed {seed} step {step}: merged into a right neighbour"
                        );
                        check_stale_routing(&mut c, target, seed, step);
                    }
                    Err(Error::InvalidRequest(_)) if source.end.as_ref() == Some(&target.start) => {
                        refused_left += 1;
                    }
                    Err(Error::MergeAborted { .. }) => aborted += 1,
                    Err(e) if e.is_retryable() || matches!(e, Error::Timeout { .. }) => {}
                    Err(e) => panic!("seed {seed} step {step}: merge failed: {e}"),
                }
            }
            14 => {
                let Some(region) =
                    region_for(&c, format!("k{:02}", rng.next_u64() % 40).as_bytes())
                else {
                    continue;
                };
                if let Some(leader) = c.leader(region.id) {
                    let to = region.peers[(rng.next_u64() % region.peers.len() as u64) as usize];
                    c.transfer_leader(leader, region.id, to.id);
                    c.run_for(Duration::from_millis(100));
                }
            }
            20 => {
                poison(&mut c, &mut rng, &given, seed, step);
                pills += 1;
            }
            15 | 16 if down.is_none() => {
                let victim = stores[(rng.next_u64() % stores.len() as u64) as usize];
                if rng.next_u64().is_multiple_of(2) {
                    c.stop(victim);
                } else {
                    let mode = match rng.next_u64() % 3 {
                        0 => CrashMode::Lost,
                        1 => CrashMode::Persisted,
                        _ => CrashMode::Torn { seed: step as u64 },
                    };
                    c.crash(victim, mode);
                }
                down = Some(victim);
            }
            _ => {
                if let Some(store) = down.take() {
                    c.restart(store).unwrap();
                }
            }
        }
        // After every step: the live stores agree on a partition of the key space, and
        // a scan of every region matches the model.
        if live(&c).len() == stores.len() {
            converge(&mut c);
        }
        let observed = scan_all(&mut c);
        model.check(&observed, seed, step);
    }
    if let Some(store) = down.take() {
        c.restart(store).unwrap();
    }
    let regions = converge(&mut c);
    model.check(&scan_all(&mut c), seed, usize::MAX);
    eprintln!(
        "seed {seed}: {splits} splits, {merged_count} merges ({aborted} rolled back, {refused_left} into a right neighbour refused), {pills} poison pills, {} regions at the end, {:.1} s virtual",
        regions.len(),
        c.now().as_secs_f64()
    );
}

#[test]
fn random_topology_changes_keep_every_write_exactly_once() {
    let seeds: Vec<u64> = if let Ok(s) = std::env::var("SIM_SEED") {
        vec![s.parse().expect("SIM_SEED is a number")]
    } else {
        let n = ["TOPOLOGY_SEEDS", "SIM_SOAK_SEEDS"]
            .iter()
            .find_map(|var| std::env::var(var).ok().and_then(|n| n.parse().ok()))
            .unwrap_or(200);
        (1..=n).collect()
    };
    for seed in seeds {
        run(seed);
    }
}
