//! Regions in the deterministic simulator: split and merge as Raft admin commands,
//! applied on every replica at the same index, under leader moves, lagging replicas,
//! racing commands and crashes. Besides the simulator's own checks after every event
//! (P5, P6, P7, and no region pin held between write-batch rounds), each test checks
//! that every key written and acknowledged is still there, exactly once (P1, P9), and
//! that every store agrees on the regions.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_regions`.

use std::collections::BTreeMap;
use std::time::Duration;

use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::merge_driver::{self, MergeOptions, RegionAdmin};
use regionkv_raft::sim::SimCluster;
use regionkv_raft::transport::local::{Action, Rule, Scope};
use regionkv_raft::{AdminCmd, AdminResult, Error, Op};
use regionkv_wal::CrashMode;

mod common;

use common::{
    R1, SECOND, all_matched, cluster, converge, letters, put, scan_all, split, write_keys,
};

#[test]
fn a_split_applies_on_every_replica_and_children_serve_their_keys() {
    let mut c = cluster(1);
    let mut model = BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(40), "v1");
    let parts = split(&mut c, R1, &["g", "p"]).unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].id, R1);
    assert_eq!(parts[1].start, b"g");
    assert_eq!(parts[2].end, None);
    assert!(parts.iter().all(|p| p.epoch.version == 3), "a split into 3 bumps the version by 2");
    let regions = converge(&mut c);
    assert_eq!(regions, parts, "every store applied the same split");
    for part in &parts {
        assert!(
            c.wait_leader(part.id, 10 * SECOND).is_some(),
            "region {} elects a leader",
            part.id
        );
    }
    // Each child takes writes of its own keys and refuses others (P8).
    write_keys(&mut c, &mut model, &letters(40), "v2");
    let leader = c.leader(parts[1].id).unwrap();
    let pending =
        c.write(leader, parts[1].id, vec![Op::Put { key: "a".into(), value: "x".into() }]);
    assert!(matches!(c.wait(&pending, SECOND), Some(Err(Error::KeyNotInRegion { .. }))));
    assert_eq!(scan_all(&mut c), model);

    // A crashed store comes back with the split and the data (each region replays
    // from its own image).
    c.crash(StoreId(2), CrashMode::Lost);
    c.restart(StoreId(2)).unwrap();
    let after = converge(&mut c);
    assert_eq!(after.iter().map(|r| r.id).collect::<Vec<_>>(), vec![R1, parts[1].id, parts[2].id]);
    c.faults().isolate(StoreId(1));
    let surviving = scan_all(&mut c);
    assert_eq!(surviving, model, "stores 2 and 3 alone hold every acknowledged write");
}

#[test]
fn a_split_while_the_leader_moves_applies_once_or_not_at_all() {
    for seed in 0..8u64 {
        let mut c = cluster(100 + seed);
        let mut model = BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(30), "v1");
        let leader = c.leader(R1).unwrap();
        let to = c.status(leader)[0].region.peers.iter().find(|p| p.store != leader).unwrap().id;
        let new_id = RegionId(c.new_id());
        let epoch = c.region(leader, R1).unwrap().epoch;
        let pending = c.admin(
            leader,
            R1,
            AdminCmd::Split { split_keys: vec![b"m".to_vec()], new_ids: vec![new_id] },
        );
        if seed % 2 == 0 {
            c.transfer_leader(leader, R1, to);
        } else {
            c.run_for(Duration::from_millis(seed));
            c.transfer_leader(leader, R1, to);
        }
        let outcome = c.wait(&pending, 5 * SECOND);
        let regions = converge(&mut c);
        let split_applied = regions.iter().any(|r| r.id == new_id);
        match outcome {
            Some(Ok(AdminResult::Split(_))) => assert!(split_applied),
            // The split may still have committed under the new leader.
            Some(Err(e)) => assert!(e.is_retryable() || matches!(e, Error::Timeout { .. }), "{e}"),
            None => {}
            Some(Ok(other)) => panic!("{other:?}"),
        }
        let _ = epoch;
        assert_eq!(regions.len(), if split_applied { 2 } else { 1 }, "seed {seed}");
        write_keys(&mut c, &mut model, &letters(30), "v2");
        assert_eq!(scan_all(&mut c), model, "seed {seed}");
    }
}

fn merge(c: &mut SimCluster, source: RegionId, target: RegionId) -> Result<Region, Error> {
    merge_driver::merge(c, source, target, MergeOptions::default())
}

#[test]
fn a_merge_moves_the_source_range_into_the_target_on_every_replica() {
    let mut c = cluster(2);
    let mut model = BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(40), "v1");
    let parts = split(&mut c, R1, &["m"]).unwrap();
    converge(&mut c);
    write_keys(&mut c, &mut model, &letters(40), "v2");
    let merged = merge(&mut c, parts[1].id, R1).unwrap();
    assert_eq!((merged.start.as_slice(), merged.end.as_ref()), (&b""[..], None));
    assert_eq!(merged.epoch.version, parts[1].epoch.version + 2, "prepare and commit bump");
    let regions = converge(&mut c);
    assert_eq!(regions, vec![merged.clone()], "the source is gone from every store");
    assert_eq!(scan_all(&mut c), model);
    write_keys(&mut c, &mut model, &letters(40), "v3");
    assert_eq!(scan_all(&mut c), model);
    // The merge survives a crash of every store.
    for s in 1..=3 {
        c.crash(StoreId(s), CrashMode::Lost);
    }
    for s in 1..=3 {
        c.restart(StoreId(s)).unwrap();
    }
    assert_eq!(converge(&mut c), vec![merged]);
    assert_eq!(scan_all(&mut c), model);
}

#[test]
fn a_source_follower_that_lags_catches_up_on_its_own_log() {
    let mut c = cluster(3);
    let mut model = BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let parts = split(&mut c, R1, &["m"]).unwrap();
    let source = parts[1].id;
    converge(&mut c);
    // Store 3 hears nothing of the source's group for a while: it lags.
    let lagging = StoreId(3);
    let cut = |c: &SimCluster| {
        c.faults().clear();
        c.faults().add(Rule {
            scope: Scope { to: Some(lagging), region: Some(source), ..Scope::any() },
            action: Action::Drop(1.0),
        });
        c.faults().add(Rule {
            scope: Scope { from: Some(lagging), region: Some(source), ..Scope::any() },
            action: Action::Drop(1.0),
        });
    };
    cut(&c);
    write_keys(&mut c, &mut model, &letters(26), "v2");
    c.faults().clear();
    // The prepare command reaches store 3, but nothing after it: the moment its log
    // holds the entry, the source's group goes silent towards it. Its acknowledgement
    // still reaches the leader, so the leader sees every replica matched.
    let peer_of = |c: &SimCluster| {
        c.status(lagging).into_iter().find(|p| p.region.id == source).expect("replica on store 3")
    };
    // Caught up again, to the leader's last entry.
    assert!(c.run_until(10 * SECOND, |c| {
        let p = peer_of(c);
        let leader_last = c.leader(source).and_then(|l| {
            c.status(l).into_iter().find(|s| s.region.id == source).map(|s| s.last_index)
        });
        leader_last == Some(p.last_index) && p.applied == p.last_index
    }));
    let before = peer_of(&c).last_index;
    let leader = c.wait_leader(source, SECOND).unwrap();
    let target = RegionAdmin::merge_status(&mut c, R1).unwrap().region;
    let pending = c.admin(leader, source, AdminCmd::PrepareMerge { target });
    assert!(c.run_until(10 * SECOND, |c| peer_of(c).last_index > before));
    c.faults().add(Rule {
        scope: Scope { to: Some(lagging), region: Some(source), ..Scope::any() },
        action: Action::Drop(1.0),
    });
    let prepared = c.wait(&pending, 10 * SECOND).expect("prepare applied").unwrap();
    let AdminResult::Prepared { source: src, prepare_index, prepare_term } = prepared else {
        panic!("{prepared:?}")
    };
    let lag = peer_of(&c);
    assert!(lag.last_index >= prepare_index && lag.commit < prepare_index, "{lag:?}");
    assert!(c.run_until(10 * SECOND, |c| all_matched(c, source)));
    let merge = regionkv_engine::MergeState { target: R1, prepare_index, prepare_term };
    let merged = merge_driver::finish_merge(&mut c, &src, merge, MergeOptions::default()).unwrap();
    // Store 3's target commits the merge once its source replica applied its own log.
    assert_eq!(converge(&mut c), vec![merged]);
    c.faults().clear();
    assert_eq!(scan_all(&mut c), model);
    c.faults().isolate(StoreId(1));
    assert_eq!(scan_all(&mut c), model, "stores 2 and 3 (the laggard) hold everything");
}

#[test]
fn a_merge_whose_target_splits_meanwhile_rolls_back() {
    let mut c = cluster(4);
    let mut model = BTreeMap::new();
    write_keys(&mut c, &mut model, &letters(26), "v1");
    let parts = split(&mut c, R1, &["m"]).unwrap();
    let source = parts[1].id;
    converge(&mut c);
    let target = RegionAdmin::merge_status(&mut c, R1).unwrap().region;
    let status = RegionAdmin::merge_status(&mut c, source).unwrap();
    let AdminResult::Prepared { source: src, prepare_index, prepare_term } =
        RegionAdmin::admin(&mut c, source, status.region.epoch, AdminCmd::PrepareMerge { target })
            .unwrap()
    else {
        panic!()
    };
    // The source refuses writes now; the target splits before the commit.
    assert!(!put(&mut c, "x99", "refused", SECOND), "a merging source takes no write");
    split(&mut c, R1, &["c"]).unwrap();
    let merge = regionkv_engine::MergeState { target: R1, prepare_index, prepare_term };
    let err = merge_driver::finish_merge(&mut c, &src, merge, MergeOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MergeAborted { .. }), "{err}");
    let regions = converge(&mut c);
    assert_eq!(regions.len(), 3);
    let rolled = regions.iter().find(|r| r.id == source).unwrap();
    assert_eq!(rolled.epoch.version, src.epoch.version + 1, "the rollback bumps the version");
    // The source takes writes again, and nothing was lost.
    write_keys(&mut c, &mut model, &letters(26), "v2");
    assert_eq!(scan_all(&mut c), model);
}

#[test]
fn a_merge_racing_a_split_of_its_source_lets_exactly_one_win() {
    for seed in 0..6u64 {
        let mut c = cluster(200 + seed);
        let mut model = BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(26), "v1");
        let parts = split(&mut c, R1, &["m"]).unwrap();
        let source = parts[1].id;
        converge(&mut c);
        let leader = c.wait_leader(source, 10 * SECOND).unwrap();
        let target = RegionAdmin::merge_status(&mut c, R1).unwrap().region;
        let new_id = RegionId(c.new_id());
        // Both proposed to the source's leader in the same instant, in either order.
        let cmds = [
            AdminCmd::PrepareMerge { target },
            AdminCmd::Split { split_keys: vec![b"t".to_vec()], new_ids: vec![new_id] },
        ];
        let (first, second) = if seed % 2 == 0 { (0, 1) } else { (1, 0) };
        let a = c.admin(leader, source, cmds[first].clone());
        let b = c.admin(leader, source, cmds[second].clone());
        let a = c.wait(&a, 5 * SECOND);
        let b = c.wait(&b, 5 * SECOND);
        let won = |r: &Option<Result<AdminResult, Error>>| matches!(r, Some(Ok(_)));
        assert!(won(&a) ^ won(&b), "seed {seed}: exactly one wins: {a:?} {b:?}");
        let regions = converge(&mut c);
        let status = RegionAdmin::merge_status(&mut c, source).unwrap();
        if let Some(m) = status.merge {
            // The prepare won: finish the merge.
            let merged =
                merge_driver::finish_merge(&mut c, &status.region, m, MergeOptions::default())
                    .unwrap();
            assert_eq!(converge(&mut c), vec![merged]);
        } else {
            assert!(regions.iter().any(|r| r.id == new_id), "the split won");
        }
        write_keys(&mut c, &mut model, &letters(26), "v2");
        assert_eq!(scan_all(&mut c), model, "seed {seed}");
    }
}

#[test]
fn a_crash_between_prepare_and_commit_then_the_merge_completes() {
    for mode in [CrashMode::Lost, CrashMode::Persisted, CrashMode::Torn { seed: 7 }] {
        let mut c = cluster(5);
        let mut model = BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(26), "v1");
        let parts = split(&mut c, R1, &["m"]).unwrap();
        let source = parts[1].id;
        converge(&mut c);
        let target = RegionAdmin::merge_status(&mut c, R1).unwrap().region;
        let status = RegionAdmin::merge_status(&mut c, source).unwrap();
        RegionAdmin::admin(&mut c, source, status.region.epoch, AdminCmd::PrepareMerge { target })
            .unwrap();
        // Every store loses power before anyone commits the merge.
        for s in 1..=3 {
            c.crash(StoreId(s), mode);
        }
        for s in 1..=3 {
            c.restart(StoreId(s)).unwrap();
        }
        // The prepare was acknowledged, so it is durable: the source still refuses
        // writes after the restart, until a driver finishes the merge.
        let status = RegionAdmin::merge_status(&mut c, source).unwrap();
        let merge = status.merge.expect("the prepare survived the crash");
        assert!(!put(&mut c, "x99", "refused", SECOND));
        let merged =
            merge_driver::finish_merge(&mut c, &status.region, merge, MergeOptions::default())
                .unwrap();
        assert_eq!(converge(&mut c), vec![merged]);
        assert_eq!(scan_all(&mut c), model, "{mode:?}");
        write_keys(&mut c, &mut model, &letters(26), "v2");
        assert_eq!(scan_all(&mut c), model, "{mode:?}");
    }
}

#[test]
fn a_crash_of_a_store_while_it_commits_a_merge_loses_nothing() {
    for delay_ms in [0u64, 1, 3, 7, 15] {
        let mut c = cluster(6 + delay_ms);
        let mut model = BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(26), "v1");
        let parts = split(&mut c, R1, &["m"]).unwrap();
        let source = parts[1].id;
        converge(&mut c);
        write_keys(&mut c, &mut model, &letters(26), "v2");
        let target = RegionAdmin::merge_status(&mut c, R1).unwrap().region;
        let status = RegionAdmin::merge_status(&mut c, source).unwrap();
        let prepared = RegionAdmin::admin(
            &mut c,
            source,
            status.region.epoch,
            AdminCmd::PrepareMerge { target },
        );
        let AdminResult::Prepared { source: src, prepare_index, prepare_term } = prepared.unwrap()
        else {
            panic!()
        };
        assert!(c.run_until(10 * SECOND, |c| all_matched(c, source)));
        let leader = c.leader(R1).unwrap();
        let commit = c.admin(
            leader,
            R1,
            AdminCmd::CommitMerge { source: src.clone(), prepare_index, prepare_term },
        );
        // A follower of the target crashes somewhere in the middle of applying it.
        let victim = StoreId(if leader.0 == 3 { 2 } else { 3 });
        c.run_for(Duration::from_millis(delay_ms));
        c.crash(victim, CrashMode::Lost);
        let _ = c.wait(&commit, 5 * SECOND);
        c.restart(victim).unwrap();
        let merge = regionkv_engine::MergeState { target: R1, prepare_index, prepare_term };
        let merged =
            merge_driver::finish_merge(&mut c, &src, merge, MergeOptions::default()).unwrap();
        assert_eq!(converge(&mut c), vec![merged], "delay {delay_ms}");
        assert_eq!(scan_all(&mut c), model, "delay {delay_ms}");
    }
}

/// The split child's replica on the parent's leader store campaigns at once, and wins
/// even when its vote requests reach the followers before they apply the split (the
/// leader learns the commit first, so it often applies first): a follower keeps such a
/// request until its split creates the child, and answers it then. Dropped, the child
/// stayed leaderless for an election timeout and its leader landed on any store, so
/// small neighbours were led by different stores (and the automatic merger, planning
/// per store, never paired them).
#[test]
fn a_split_childs_first_campaign_wins_though_it_reaches_the_followers_first() {
    for seed in 0..8u64 {
        let mut c = cluster(300 + seed);
        let mut model = BTreeMap::new();
        write_keys(&mut c, &mut model, &letters(10), "v1");
        let leader = c.leader(R1).unwrap();
        // Region 1's traffic to the followers (the split's entry, then its commit) is
        // held 50 ms; the child's first vote requests are not.
        let held = Duration::from_millis(50);
        for to in c.store_ids().into_iter().filter(|&s| s != leader) {
            let scope =
                Scope { from: Some(leader), to: Some(to), region: Some(R1), msg_type: None };
            c.faults().add(Rule { scope, action: Action::Delay { min: held, max: held } });
        }
        let parts = split(&mut c, R1, &["m"]).unwrap();
        let child = parts[1].id;
        c.faults().clear();
        // Well within the child's first election timeout (10 ticks of 10 ms): only
        // the first campaign can have won.
        let elected = c.wait_leader(child, Duration::from_millis(90));
        assert_eq!(elected, Some(leader), "seed {seed}: region {child}'s first campaign");
        assert_eq!(c.leader(R1), Some(leader), "seed {seed}");
        write_keys(&mut c, &mut model, &letters(10), "v2");
        assert_eq!(scan_all(&mut c), model, "seed {seed}");
    }
}
