//! Duplication, the source side's replicated per-region state (`regionkv_raft::dup`):
//! what every replica holds after crashes and restarts, and the log-retention floor
//! (D1, checked by the simulator after every event: no replica compacts its log past
//! its region's floor).
//!
//! The Pegasus trap: a replica restarted in a stage with valid persisted progress must
//! come back in that stage with the same values (here, from its checkpoint and the log
//! after it), never recompute them from a sentinel, never panic.

mod common;

use std::time::Duration;

use common::{R1, SECOND, converge, put, split};
use regionkv_engine::dup::{DupEntry, DupStage, RegionDupState};
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::dup::{DupCmd, DupReply};
use regionkv_raft::merge_driver::{self, MergeOptions};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Error, PeerStatus};
use regionkv_wal::CrashMode;

const DUP: u64 = 0xD0;

/// A cluster that checkpoints (and so compacts and purges) often.
fn cluster(seed: u64) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.checkpoint_log_bytes = 4 << 10;
    config.segment_bytes = 16 << 10;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    c
}

/// Proposes `cmd` to `region`'s leader until it is applied or refused for good.
fn dup(c: &mut SimCluster, region: RegionId, cmd: &DupCmd) -> Result<DupReply, Error> {
    for _ in 0..50 {
        let Some(leader) = c.wait_leader(region, 5 * SECOND) else { continue };
        let pending = c.dup(leader, region, cmd.clone());
        match c.wait(&pending, 2 * SECOND) {
            Some(Err(e)) if e.is_retryable() && !matches!(e, Error::DuplicationSeeding { .. }) => {
                c.run_for(Duration::from_millis(50));
            }
            Some(result) => return result,
            None => {}
        }
    }
    panic!("{cmd:?} got no answer");
}

/// Writes `n` values of 512 bytes (enough to checkpoint every few writes).
fn write(c: &mut SimCluster, tag: &str, n: usize) {
    let value = "x".repeat(512);
    for i in 0..n {
        assert!(put(c, &format!("{tag}{:03}", i % 7), &value, 10 * SECOND), "{tag}{i}");
    }
}

fn statuses(c: &SimCluster, region: RegionId) -> Vec<(StoreId, PeerStatus)> {
    c.store_ids()
        .into_iter()
        .filter(|s| c.is_running(*s))
        .flat_map(|s| c.status(s).into_iter().map(move |p| (s, p)))
        .filter(|(_, p)| p.region.id == region && p.initialized)
        .collect()
}

/// Every replica of `region` holds exactly `want` as duplication `DUP`'s entry (or
/// none), and its log starts no later than right after the floor.
fn assert_everywhere(c: &SimCluster, region: RegionId, want: Option<&RegionDupState>, what: &str) {
    let all = statuses(c, region);
    assert_eq!(all.len(), 3, "{what}: three replicas");
    for (store, s) in all {
        let table = s.dups.unwrap_or_else(|| panic!("{what}: store {store} reports no state"));
        let got = match table.get(DUP) {
            Some(DupEntry::Known(e)) => Some(e.clone()),
            Some(DupEntry::Unreadable(_)) => panic!("{what}: unreadable"),
            None => None,
        };
        assert_eq!(got.as_ref(), want, "{what}: store {store}");
        if let (Some(floor), Some(first)) = (table.floor(), s.first_index) {
            assert!(
                first - 1 <= floor,
                "{what}: store {store} compacted to {} past {floor}",
                first - 1
            );
        }
    }
}

fn restart_all(c: &mut SimCluster, mode: CrashMode) {
    for store in c.store_ids() {
        c.crash(store, mode);
    }
    c.run_for(Duration::from_millis(100));
    for store in c.store_ids() {
        c.restart(store).unwrap_or_else(|e| panic!("store {store}: {e}"));
    }
    settle(c);
}

/// Waits for a leader of every region and for every replica to apply its whole log
/// (after a restart the log is replayed only once a leader commits in its term).
fn settle(c: &mut SimCluster) {
    let regions = converge(c);
    for r in &regions {
        c.wait_leader(r.id, 10 * SECOND).expect("a leader");
    }
    let done = c.run_until(10 * SECOND, |c| {
        regions.iter().all(|r| {
            let all = statuses(c, r.id);
            all.len() == 3
                && all.iter().all(|(_, s)| s.applied == s.last_index && s.commit == s.last_index)
        })
    });
    assert!(done, "every replica applied its whole log");
}

/// The Pegasus trap: an entry in `Seeding` with valid persisted `min_ckpt_index` and
/// `seed_index`, checkpointed in that stage; every store loses power and restarts.
/// Every replica comes back with the same stage and values (no sentinel, no
/// recomputation, no panic), and the floor holds.
#[test]
fn a_seeding_entry_survives_a_power_cut_of_every_store() {
    for seed in 1..=3 {
        let mut c = cluster(seed);
        write(&mut c, "a", 10);
        let start = dup(&mut c, R1, &DupCmd::Start { dup_id: DUP, incarnation: 1 }).unwrap();
        let entry = start.state.clone().unwrap();
        assert_eq!((entry.stage, entry.min_ckpt_index), (DupStage::Prepare, start.index));
        assert!(entry.min_ckpt_index >= 1);
        write(&mut c, "b", 10);
        let seed_index = start.index + 3;
        let cmd = DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index };
        let seeded = dup(&mut c, R1, &cmd).unwrap().state.unwrap();
        assert_eq!((seeded.stage, seeded.seed_index), (DupStage::Seeding, Some(seed_index)));
        // Enough log for several checkpoints in the Seeding stage: the images carry it.
        write(&mut c, "c", 40);
        converge(&mut c);
        assert_everywhere(&c, R1, Some(&seeded), "before the power cut");
        restart_all(&mut c, CrashMode::Lost);
        assert_everywhere(&c, R1, Some(&seeded), "after the power cut");
        write(&mut c, "d", 20);
        converge(&mut c);
        assert_everywhere(&c, R1, Some(&seeded), "after more writes");
    }
}

/// A crash (a stop, or a power cut that loses unsynced data) after every command kind,
/// of the leader or of a follower: after the restart every replica holds what was
/// committed; the index of the `Start` is never recomputed.
#[test]
fn a_crash_after_every_command_kind_restores_what_was_committed() {
    for (seed, mode) in [(11, CrashMode::Lost), (12, CrashMode::Persisted)] {
        let mut c = cluster(seed);
        write(&mut c, "a", 5);
        let mut model: Option<RegionDupState>;
        let mut start_index = 0;
        for (step, kind) in ["start", "seeded", "progress", "progress", "stop"].iter().enumerate() {
            let cmd = match *kind {
                "start" => DupCmd::Start { dup_id: DUP, incarnation: 1 },
                "seeded" => DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index: start_index },
                "progress" => {
                    let applied = statuses(&c, R1)[0].1.applied;
                    DupCmd::Progress { dup_id: DUP, incarnation: 1, confirmed: applied - 2 }
                }
                _ => DupCmd::Stop { dup_id: DUP },
            };
            let reply = dup(&mut c, R1, &cmd).unwrap();
            if *kind == "start" {
                start_index = reply.index;
            }
            model = reply.state;
            // The leader on even steps, a follower on odd ones.
            let leader = c.leader(R1).unwrap();
            let victim = if step % 2 == 0 {
                leader
            } else {
                *c.store_ids().iter().find(|s| **s != leader).unwrap()
            };
            c.crash(victim, mode);
            write(&mut c, "b", 12);
            c.restart(victim).unwrap();
            settle(&mut c);
            assert_everywhere(&c, R1, model.as_ref(), &format!("seed {seed} after {kind}"));
            if let Some(m) = &model {
                assert_eq!(m.min_ckpt_index, start_index, "the Start's index is kept");
            }
        }
    }
}

/// D1 with frequent checkpoints and WAL purges and a lagging follower that needs a
/// snapshot: no replica compacts past the floor (checked after every event); once the
/// duplication stops, compaction goes past where the floor was.
#[test]
fn compaction_stops_at_the_floor_and_moves_on_when_the_duplication_stops() {
    let mut c = cluster(21);
    write(&mut c, "a", 5);
    let start = dup(&mut c, R1, &DupCmd::Start { dup_id: DUP, incarnation: 1 }).unwrap();
    let lagging = *c.store_ids().iter().find(|s| Some(**s) != c.leader(R1)).unwrap();
    c.stop(lagging);
    write(&mut c, "b", 60);
    let leader = c.leader(R1).unwrap();
    let first = c.status(leader).into_iter().find(|p| p.region.id == R1).unwrap().first_index;
    assert!(first.unwrap() - 1 <= start.index, "Prepare holds the log after the Start");
    let seeded = DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index: start.index };
    dup(&mut c, R1, &seeded).unwrap();
    let applied = statuses(&c, R1)[0].1.applied;
    let progress = DupCmd::Progress { dup_id: DUP, incarnation: 1, confirmed: applied };
    let floor = dup(&mut c, R1, &progress).unwrap().state.unwrap().floor();
    write(&mut c, "c", 60);
    // The floor moved: the leader compacted past the Start, never past the floor.
    let s = c.status(leader).into_iter().find(|p| p.region.id == R1).unwrap();
    let compacted = s.first_index.unwrap() - 1;
    assert!(compacted > start.index && compacted <= floor, "{compacted} vs {floor}");
    // The lagging follower comes back behind the compaction point: a snapshot.
    c.restart(lagging).unwrap();
    converge(&mut c);
    write(&mut c, "d", 20);
    converge(&mut c);
    let table = statuses(&c, R1).into_iter().find(|(s, _)| *s == lagging).unwrap().1.dups;
    assert_eq!(table.and_then(|t| t.floor()), Some(floor), "the snapshot carried the state");
    dup(&mut c, R1, &DupCmd::Stop { dup_id: DUP }).unwrap();
    write(&mut c, "e", 60);
    converge(&mut c);
    for (store, s) in statuses(&c, R1) {
        assert!(s.first_index.unwrap() - 1 > floor, "store {store} compacts past the old floor");
        assert_eq!(s.dups.map(|t| t.is_empty()), Some(true));
    }
}

/// An empty region (no keys) whose one entry is in `Prepare`: a crash of every store,
/// a restart, and the entry is there on every replica.
#[test]
fn an_empty_region_in_prepare_survives_a_power_cut() {
    let mut c = cluster(31);
    let start = dup(&mut c, R1, &DupCmd::Start { dup_id: DUP, incarnation: 1 }).unwrap();
    converge(&mut c);
    let entry = start.state.unwrap();
    assert_everywhere(&c, R1, Some(&entry), "before");
    restart_all(&mut c, CrashMode::Lost);
    assert_everywhere(&c, R1, Some(&entry), "after");
    // A split barrier writes an image holding only the state (a file, not `empty_at`)
    // once streaming: restart again from it.
    let cmd = DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index: start.index };
    dup(&mut c, R1, &cmd).unwrap();
    let cmd = DupCmd::Progress { dup_id: DUP, incarnation: 1, confirmed: start.index };
    let streaming = dup(&mut c, R1, &cmd).unwrap().state.unwrap();
    split(&mut c, R1, &["m"]).unwrap();
    converge(&mut c);
    restart_all(&mut c, CrashMode::Lost);
    assert_everywhere(&c, R1, Some(&streaming), "after the split and a power cut");
}

/// A split is refused while an entry prepares or seeds (typed, retryable; nothing
/// changed); once streaming, a split gives the child the entry restarted in its own
/// log, depending on the parent's split index, and a merge back gives the target a
/// dependency on the source's prepare.
#[test]
fn splits_wait_for_seeding_and_streaming_entries_follow_splits_and_merges() {
    let mut c = cluster(41);
    write(&mut c, "a", 5);
    let start = dup(&mut c, R1, &DupCmd::Start { dup_id: DUP, incarnation: 1 }).unwrap();
    let refused = |c: &mut SimCluster| match split(c, R1, &["m"]) {
        Err(Error::DuplicationSeeding { region, dup_id }) => {
            assert_eq!((region, dup_id), (R1, DUP));
        }
        other => panic!("{other:?}"),
    };
    refused(&mut c);
    let cmd = DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index: start.index };
    dup(&mut c, R1, &cmd).unwrap();
    refused(&mut c);
    let applied = statuses(&c, R1)[0].1.applied;
    let cmd = DupCmd::Progress { dup_id: DUP, incarnation: 1, confirmed: applied };
    let parent = dup(&mut c, R1, &cmd).unwrap().state.unwrap();
    let parts = split(&mut c, R1, &["m"]).unwrap();
    converge(&mut c);
    let child = parts[1].id;
    let split_index = statuses(&c, R1)[0].1.applied;
    assert_everywhere(&c, R1, Some(&parent), "the parent keeps its entry");
    let child_entry = RegionDupState {
        dup_id: DUP,
        incarnation: 1,
        stage: DupStage::Streaming,
        min_ckpt_index: regionkv_raft::RAFT_INIT_INDEX,
        seed_index: None,
        confirmed: Some(regionkv_raft::RAFT_INIT_INDEX),
        depends_on: vec![(R1, split_index)],
        started_at_index: regionkv_raft::RAFT_INIT_INDEX,
        fence: None,
    };
    assert_everywhere(&c, child, Some(&child_entry), "the child streams from its first index");
    // Merge the child (the right part) back into the parent.
    let merged = merge_driver::merge(&mut c, child, R1, MergeOptions::default()).unwrap();
    assert!(merged.end.is_none());
    converge(&mut c);
    let s = statuses(&c, R1);
    let Some(DupEntry::Known(target)) = s[0].1.dups.as_ref().and_then(|t| t.get(DUP)).cloned()
    else {
        panic!("no entry");
    };
    assert_eq!(target.confirmed, parent.confirmed, "the target keeps its own stage");
    assert_eq!(target.depends_on.len(), 1);
    assert_eq!(target.depends_on[0].0, child, "and depends on the source's prepare");
    assert_everywhere(&c, R1, Some(&target), "alike on every replica");
}

/// Below cluster version 6 a proposer refuses every kind: nothing is proposed.
#[test]
fn every_kind_is_refused_below_version_6() {
    let mut config = SimConfig::new(51);
    for id in 1..=3 {
        config.cluster_version_max.insert(StoreId(id), 5);
    }
    let mut c = SimCluster::new(config).unwrap();
    let leader = c.wait_leader(R1, 10 * SECOND).unwrap();
    for cmd in [
        DupCmd::Start { dup_id: DUP, incarnation: 1 },
        DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index: 1 },
        DupCmd::Progress { dup_id: DUP, incarnation: 1, confirmed: 1 },
        DupCmd::Stop { dup_id: DUP },
    ] {
        let last = c.status(leader).into_iter().find(|p| p.region.id == R1).unwrap().last_index;
        let pending = c.dup(leader, R1, cmd.clone());
        match c.wait(&pending, SECOND) {
            Some(Err(Error::FeatureNotActive { needed: 6, active: 5, .. })) => {}
            other => panic!("{cmd:?}: {other:?}"),
        }
        let now = c.status(leader).into_iter().find(|p| p.region.id == R1).unwrap().last_index;
        assert_eq!(now, last, "nothing proposed");
    }
}
