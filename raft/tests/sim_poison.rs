//! Poison pills: malformed admin and directory commands, writes and snapshots that every
//! replica refuses the same way, as a no-op with a typed error to whoever proposed
//! them. Before these fixes one such command stopped every store of its region (the
//! apply error stopped the store, and the committed entry was applied again after
//! every restart), or destroyed a live region's log. Each test proposes the pill, then
//! checks that the cluster keeps serving, that nothing was tombstoned, and that every
//! store restarts. The simulator's own check fails a run as soon as any store stops
//! (A1: its disks never fail, so nothing may stop a store).
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_poison`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::RegionId;
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Error, Op};

use common::{R1, SECOND, directory, put};

/// Three stores hosting the directory and region 1, each with a leader.
fn cluster_with_directory(seed: u64) -> SimCluster {
    let mut config = SimConfig::new(seed);
    config.directory = true;
    // Room in a WAL record for a write over the engine's key limit.
    config.segment_bytes = 1 << 20;
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
    c.wait_leader(R1, 10 * SECOND).expect("a leader of region 1");
    c
}

/// The cluster serves: the directory allocates, region 1 takes a write, on every store
/// the regions it had are still there; then the same after every store restarts.
fn keeps_serving(c: &mut SimCluster, tag: &str) {
    for round in 0..2 {
        match directory(c, &DirCmd::AllocIds { count: 2 }) {
            Ok(DirResult::Ids { first, count: 2 }) => assert!(first >= 1000),
            other => panic!("{tag}: the directory does not allocate: {other:?}"),
        }
        assert!(put(c, &format!("{tag}-{round}"), "v", 10 * SECOND), "{tag}: no write");
        for store in c.store_ids() {
            let ids: Vec<RegionId> = c.status(store).iter().map(|p| p.region.id).collect();
            assert!(ids.contains(&DIRECTORY) && ids.contains(&R1), "{tag}: {ids:?}");
        }
        if round == 0 {
            for store in c.store_ids() {
                c.crash(store, regionkv_wal::CrashMode::Lost);
            }
            for store in c.store_ids() {
                c.restart(store).unwrap_or_else(|e| panic!("{tag}: restart failed: {e}"));
            }
        }
    }
}

#[test]
fn an_id_allocation_past_the_id_space_is_refused_and_every_store_keeps_serving() {
    let mut c = cluster_with_directory(1);
    let refused = directory(&mut c, &DirCmd::AllocIds { count: u64::MAX });
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    // Far below the id space, but above what one command may take.
    let refused = directory(&mut c, &DirCmd::AllocIds { count: 1 << 20 });
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    keeps_serving(&mut c, "alloc");
}

#[test]
fn a_write_over_the_engine_limits_is_refused_and_the_store_keeps_serving() {
    let mut c = cluster_with_directory(2);
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let key = Bytes::from(vec![b'k'; 100 << 10]);
    let pending = c.write(leader, R1, vec![Op::Put { key, value: Bytes::from_static(b"v") }]);
    let refused = c.wait(&pending, 5 * SECOND).expect("answered");
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    keeps_serving(&mut c, "limits");
}

#[test]
fn a_membership_change_committed_after_a_merge_prepare_is_refused_and_the_store_keeps_serving() {
    let mut c = cluster_with_directory(3);
    assert!(put(&mut c, "a", "1", 10 * SECOND) && put(&mut c, "x", "1", 10 * SECOND));
    let parts = common::split(&mut c, R1, &["m"]).unwrap();
    let source = parts[1].id;
    common::converge(&mut c);
    let leader = c.wait_leader(source, 10 * SECOND).unwrap();
    let target = c.region(leader, R1).unwrap();
    let victim = parts[1].peers.iter().find(|p| p.store != leader).unwrap().id;
    // Proposed in the same instant: the prepare first, the removal after it.
    let prepare = c.admin(leader, source, regionkv_raft::AdminCmd::PrepareMerge { target });
    let change = c.change_peers(leader, source, regionkv_raft::PeerChange::Remove(victim));
    assert!(c.wait(&prepare, 5 * SECOND).expect("prepared").is_ok());
    let refused = c.wait(&change, 5 * SECOND).expect("answered");
    assert!(matches!(refused, Err(Error::Merging { .. })), "{refused:?}");
    let members = c.region(leader, source).unwrap().peers;
    assert_eq!(members, parts[1].peers, "the source keeps the members the prepare saw");
    keeps_serving(&mut c, "conf-change");
}

/// Proposes a split of `region` at `keys` with `new_ids` through its leader.
fn raw_split(
    c: &mut SimCluster,
    region: RegionId,
    keys: &[&str],
    new_ids: &[u64],
) -> Result<regionkv_raft::AdminResult, Error> {
    let epoch = common::region_epoch(c, region);
    let cmd = regionkv_raft::AdminCmd::Split {
        split_keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        new_ids: new_ids.iter().map(|&id| RegionId(id)).collect(),
    };
    regionkv_raft::merge_driver::RegionAdmin::admin(c, region, epoch, cmd)
}

/// Every store still hosts `regions`, each with its log.
fn all_hosted(c: &SimCluster, regions: &[RegionId], tag: &str) {
    for store in c.store_ids() {
        let ids: Vec<RegionId> = c.status(store).iter().map(|p| p.region.id).collect();
        for region in regions {
            assert!(ids.contains(region), "{tag}: store {store} lost region {region}: {ids:?}");
        }
    }
}

#[test]
fn split_ids_the_directory_did_not_allocate_for_the_split_are_refused_and_nothing_is_tombstoned() {
    let mut c = cluster_with_directory(4);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    // A live region of the same lineage, split off region 1.
    let a = common::split(&mut c, R1, &["p"]).unwrap()[1].id;
    common::converge(&mut c);
    let fresh = c.new_id();
    let bad: [(&str, Vec<u64>); 6] = [
        ("the directory's id", vec![DIRECTORY.0]),
        ("the parent's id", vec![R1.0]),
        ("a bootstrap id", vec![5]),
        ("a live region's id", vec![a.0]),
        ("an id of an earlier split of the lineage", vec![a.0 - 1]),
        ("duplicates", vec![fresh, fresh]),
    ];
    for (what, ids) in bad {
        let keys: &[&str] = if ids.len() == 2 { &["c", "f"] } else { &["c"] };
        let refused = raw_split(&mut c, R1, keys, &ids);
        assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{what}: {refused:?}");
        all_hosted(&c, &[DIRECTORY, R1, a], what);
        assert_eq!(common::scan_all(&mut c), model, "{what}");
    }
    // A split with ids allocated for it still applies.
    let parts = common::split(&mut c, R1, &["c"]).unwrap();
    assert_eq!(parts.len(), 2);
    common::write_keys(&mut c, &mut model, &common::letters(26), "v2");
    keeps_serving(&mut c, "split-ids");
    model.extend((0..2).map(|i| (format!("split-ids-{i}"), "v".to_owned())));
    all_hosted(&c, &[DIRECTORY, R1, a, parts[1].id], "after restarts");
    assert_eq!(common::scan_all(&mut c), model);
}

#[test]
fn a_merged_target_refuses_the_ids_its_source_lineage_gave() {
    let mut c = cluster_with_directory(5);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let a = common::split(&mut c, R1, &["h"]).unwrap()[1].id;
    common::converge(&mut c);
    let b = common::split(&mut c, a, &["p"]).unwrap()[1].id;
    common::converge(&mut c);
    // Region 1 takes over a's range and lineage; b is still a live region.
    let options = regionkv_raft::merge_driver::MergeOptions::default();
    regionkv_raft::merge_driver::merge(&mut c, a, R1, options).unwrap();
    common::converge(&mut c);
    for id in [a.0, b.0] {
        let refused = raw_split(&mut c, R1, &["c"], &[id]);
        assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{id}: {refused:?}");
    }
    all_hosted(&c, &[DIRECTORY, R1, b], "after the refusals");
    assert_eq!(common::scan_all(&mut c), model);
    keeps_serving(&mut c, "merged-floor");
}

#[test]
fn a_replica_filled_by_a_snapshot_refuses_the_same_split_ids() {
    let mut config = SimConfig::new(6);
    config.spares = 1;
    config.checkpoint_log_bytes = 512; // compact often: a new replica needs a snapshot
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).unwrap();
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let a = common::split(&mut c, R1, &["p"]).unwrap()[1].id;
    common::converge_region(&mut c, R1);
    common::write_keys(&mut c, &mut model, &common::letters(16), "v2");
    let spare = regionkv_engine::StoreId(4);
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let peer = regionkv_engine::Peer { id: c.new_peer_id(), store: spare };
    let added = c.change_peers(leader, R1, regionkv_raft::PeerChange::AddVoter(peer));
    c.wait(&added, 10 * SECOND).expect("answered").expect("the voter is added");
    assert!(
        c.run_until(30 * SECOND, |c| c.status(spare).iter().any(|s| s.initialized)),
        "the new replica installs a snapshot"
    );
    common::converge_region(&mut c, R1);
    // The new replica leads and is asked for a split with an id an earlier split of
    // the lineage gave: it knows the region's id floor from the snapshot, and refuses.
    let leader = c.wait_leader(R1, SECOND).unwrap();
    c.transfer_leader(leader, R1, peer.id);
    assert!(c.run_until(10 * SECOND, |c| c.leader(R1) == Some(spare)), "leadership moves");
    let cmd = regionkv_raft::AdminCmd::Split { split_keys: vec![b"c".to_vec()], new_ids: vec![a] };
    let pending = c.admin(spare, R1, cmd);
    let refused = c.wait(&pending, 5 * SECOND).expect("answered");
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    let parent = common::converge_region(&mut c, R1);
    assert_eq!(parent.end.as_deref(), Some(&b"p"[..]), "no replica split");
    assert_eq!(common::scan_all(&mut c), model);
}

#[test]
fn a_split_naming_a_live_region_of_another_lineage_destroys_nothing() {
    let mut c = cluster_with_directory(7);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let a = common::split(&mut c, R1, &["h"]).unwrap()[1].id;
    common::converge(&mut c);
    let b = common::split(&mut c, a, &["p"]).unwrap()[1].id;
    common::converge(&mut c);
    // b was allocated after region 1's last split: no replicated state of region 1
    // tells it apart from a fresh id. Every store hosts b, so every replica of region 1
    // stops applying rather than destroy b's log (as it did before).
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let cmd = regionkv_raft::AdminCmd::Split { split_keys: vec![b"c".to_vec()], new_ids: vec![b] };
    let pending = c.admin(leader, R1, cmd);
    let outcome = c.wait(&pending, 5 * SECOND).expect("answered");
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    let serve = |c: &mut SimCluster, tag: &str| {
        all_hosted(c, &[DIRECTORY, R1, a, b], tag);
        assert!(matches!(directory(c, &DirCmd::AllocIds { count: 1 }), Ok(DirResult::Ids { .. })));
        for key in ["k-in-a", "x-in-b"] {
            assert!(put(c, key, tag, 10 * SECOND), "{tag}: {key}");
        }
        let leader = c.wait_leader(b, SECOND).unwrap();
        let read =
            c.read(leader, b, regionkv_raft::Query::Get { key: "w22".into(), read_ts: None });
        let got = c.wait(&read, 5 * SECOND).expect("answered").unwrap();
        assert_eq!(got, regionkv_raft::QueryResult::Value(Some("w22-v1".into())), "{tag}");
        let store = c.store_ids()[0];
        let write = c.write(store, R1, vec![Op::Put { key: "a".into(), value: "x".into() }]);
        let refused = c.wait(&write, SECOND).expect("answered");
        assert!(matches!(refused, Err(Error::ReplicaHalted { .. } | Error::NotLeader { .. })));
    };
    serve(&mut c, "halted");
    // Each halted replica says so in its status: a broken timeline, and why.
    for store in c.store_ids() {
        let r1 = c.status(store).into_iter().find(|s| s.region.id == R1).expect("hosted");
        assert_eq!(r1.timeline, Some(regionkv_raft::TimelineState::Broken), "store {store}");
        assert!(r1.halted.is_some(), "store {store}: {r1:?}");
    }
    for store in c.store_ids() {
        c.crash(store, regionkv_wal::CrashMode::Lost);
    }
    for store in c.store_ids() {
        c.restart(store).unwrap();
    }
    serve(&mut c, "restarted");
}

#[test]
fn a_commit_merge_that_does_not_match_the_sources_prepare_is_refused() {
    let mut c = cluster_with_directory(8);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let parts = common::split(&mut c, R1, &["h", "p"]).unwrap();
    let (source, right) = (parts[1].id, parts[2].id);
    common::converge(&mut c);
    let leader = c.wait_leader(R1, SECOND).unwrap();
    let target = c.region(leader, R1).unwrap();
    let status = regionkv_raft::merge_driver::RegionAdmin::merge_status(&mut c, source).unwrap();
    let prepared = regionkv_raft::merge_driver::RegionAdmin::admin(
        &mut c,
        source,
        status.region.epoch,
        regionkv_raft::AdminCmd::PrepareMerge { target },
    )
    .unwrap();
    let regionkv_raft::AdminResult::Prepared { source: src, prepare_index, prepare_term } =
        prepared
    else {
        panic!("{prepared:?}")
    };
    assert!(c.run_until(10 * SECOND, |c| common::all_matched(c, source)));
    let commit = |c: &mut SimCluster, to: RegionId, index: u64, term: u64| {
        let epoch = common::region_epoch(c, to);
        let cmd = regionkv_raft::AdminCmd::CommitMerge {
            source: src.clone(),
            prepare_index: index,
            prepare_term: term,
        };
        regionkv_raft::merge_driver::RegionAdmin::admin(c, to, epoch, cmd)
    };
    let bad = [
        ("a later index", R1, prepare_index + 1, prepare_term),
        ("an earlier index", R1, prepare_index - 1, prepare_term),
        ("another term", R1, prepare_index, prepare_term + 1),
        ("an index past the source's log", R1, prepare_index + 1000, prepare_term),
        ("another target", right, prepare_index, prepare_term),
    ];
    for (what, to, index, term) in bad {
        let refused = commit(&mut c, to, index, term);
        assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{what}: {refused:?}");
        all_hosted(&c, &[DIRECTORY, R1, source, right], what);
        let status = regionkv_raft::merge_driver::RegionAdmin::merge_status(&mut c, source);
        assert!(status.unwrap().merge.is_some(), "{what}: the source is still prepared");
    }
    // The true commit still merges.
    let merged = commit(&mut c, R1, prepare_index, prepare_term).unwrap();
    assert!(matches!(merged, regionkv_raft::AdminResult::Merged(_)), "{merged:?}");
    common::converge(&mut c);
    assert_eq!(common::scan_all(&mut c), model);
    keeps_serving(&mut c, "commit-merge");
}

#[test]
fn a_commit_merge_naming_an_uncommitted_entry_never_commits_it() {
    use regionkv_engine::StoreId;
    use regionkv_raft::transport::local::{Action, Rule, Scope};
    let mut c = cluster_with_directory(9);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let source = common::split(&mut c, R1, &["m"]).unwrap()[1].id;
    common::converge(&mut c);
    // Store 1 leads the source, store 2 the target.
    let (one, two) = (StoreId(1), StoreId(2));
    for (region, store) in [(source, one), (R1, two)] {
        let leader = c.wait_leader(region, SECOND).unwrap();
        let peers = c.region(leader, region).unwrap().peers;
        let peer = peers.iter().find(|p| p.store == store).unwrap().id;
        c.transfer_leader(leader, region, peer);
        assert!(c.run_until(5 * SECOND, |c| c.leader(region) == Some(store)));
    }
    // The source's leader is cut off from its group and appends a write it can never
    // commit: an entry (i, t) durable in its log only.
    for scope in [
        Scope { from: Some(one), region: Some(source), ..Scope::any() },
        Scope { to: Some(one), region: Some(source), ..Scope::any() },
    ] {
        c.faults().add(Rule { scope, action: Action::Drop(1.0) });
    }
    let lost = c.write(one, source, vec![Op::Put { key: "x-lost".into(), value: "1".into() }]);
    c.run_for(Duration::from_millis(50));
    let held = c.status(one).into_iter().find(|p| p.region.id == source).unwrap();
    assert!(held.last_index > held.commit, "{held:?}");
    // A commit merge naming that entry: the target's replica on store 1 must not commit
    // it in the source's log (it is not a prepare), and every replica refuses the merge.
    let src = c.region(one, source).unwrap();
    let cmd = regionkv_raft::AdminCmd::CommitMerge {
        source: src,
        prepare_index: held.last_index,
        prepare_term: held.term,
    };
    let epoch = c.region(two, R1).unwrap().epoch;
    let refused = regionkv_raft::merge_driver::RegionAdmin::admin(&mut c, R1, epoch, cmd);
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    // The rest of the source's group elects a leader that never saw the entry.
    assert!(c.run_until(10 * SECOND, |c| c.leader(source).is_some_and(|l| l != one)));
    c.faults().clear();
    common::converge(&mut c);
    let lost = c.wait(&lost, 5 * SECOND);
    assert!(!matches!(lost, Some(Ok(()))), "the cut-off write was never committed: {lost:?}");
    all_hosted(&c, &[DIRECTORY, R1, source], "healed");
    assert_eq!(common::scan_all(&mut c), model, "the uncommitted write never applied");
    keeps_serving(&mut c, "uncommitted");
}

/// A refusal is replayed as a refusal: a commit merge refused because of what its
/// source recorded, replayed after a restart once the source merged away for real,
/// found no source to ask and halted the target. Found by the topology test's poison
/// pills (seed 74); the refused command's index is now recorded as reflected in the
/// region's metadata, so the replay skips it.
#[test]
fn a_refused_commit_merge_is_not_decided_again_after_its_source_is_gone() {
    let mut c = cluster_with_directory(10);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let parts = common::split(&mut c, R1, &["h", "p"]).unwrap();
    let (source, right) = (parts[1].id, parts[2].id);
    common::converge(&mut c);
    // A commit merge of the middle region into the right one, naming a prepare the
    // middle one never made: refused.
    let leader = c.wait_leader(source, SECOND).unwrap();
    let src = c.region(leader, source).unwrap();
    let applied = c.status(leader).into_iter().find(|p| p.region.id == source).unwrap().applied;
    let epoch = common::region_epoch(&mut c, right);
    let cmd = regionkv_raft::AdminCmd::CommitMerge {
        source: src,
        prepare_index: applied,
        prepare_term: 99,
    };
    let refused = regionkv_raft::merge_driver::RegionAdmin::admin(&mut c, right, epoch, cmd);
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    // The middle region then merges into the left one for real: gone.
    let options = regionkv_raft::merge_driver::MergeOptions::default();
    regionkv_raft::merge_driver::merge(&mut c, source, R1, options).unwrap();
    common::converge(&mut c);
    // Every store restarts and replays the right region's log, the refused command in it.
    keeps_serving(&mut c, "replayed");
    model.extend((0..2).map(|i| (format!("replayed-{i}"), "v".to_owned())));
    all_hosted(&c, &[DIRECTORY, R1, right], "replayed");
    common::converge(&mut c);
    assert!(put(&mut c, "x-right", "v", 10 * SECOND), "the right region serves");
    model.insert("x-right".into(), "v".into());
    assert_eq!(common::scan_all(&mut c), model);
}

/// A store that was down replays a refused commit merge before the split that creates
/// its source (the two regions' logs apply in any order): it waits for the source
/// replica and decides as every other store did. Found by the topology soak (seed
/// 213): the target replica halted, its source not created yet.
#[test]
fn a_commit_merge_whose_source_a_store_has_not_created_yet_waits_for_it() {
    let mut c = cluster_with_directory(11);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    // Region 1 ["", m) and x [m, ..), then p [f, m) split off region 1: x's id is below
    // p's, and x is the right neighbour of what p splits off next.
    let x = common::split(&mut c, R1, &["m"]).unwrap()[1].id;
    common::converge(&mut c);
    let p = common::split(&mut c, R1, &["f"]).unwrap()[1].id;
    common::converge(&mut c);
    let down = regionkv_engine::StoreId(3);
    c.stop(down);
    let child = common::split(&mut c, p, &["h"]).unwrap()[1].id;
    let leader = c.wait_leader(child, SECOND).unwrap();
    let src = c.region(leader, child).unwrap();
    let applied = c.status(leader).into_iter().find(|s| s.region.id == child).unwrap().applied;
    let epoch = common::region_epoch(&mut c, x);
    let cmd = regionkv_raft::AdminCmd::CommitMerge {
        source: src,
        prepare_index: applied,
        prepare_term: 99,
    };
    let refused = regionkv_raft::merge_driver::RegionAdmin::admin(&mut c, x, epoch, cmd);
    assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{refused:?}");
    c.restart(down).unwrap();
    let regions = common::converge(&mut c);
    assert_eq!(regions.len(), 4, "{regions:?}");
    c.faults().isolate(regionkv_engine::StoreId(1));
    assert!(put(&mut c, "x-in-x", "v", 10 * SECOND), "x serves on stores 2 and 3");
    model.insert("x-in-x".into(), "v".into());
    assert_eq!(common::scan_all(&mut c), model);
}

/// Two commit merges naming the same source, into its two neighbours, wait for it on
/// the same store at once: each is answered. Found by the topology soak (seed 3524):
/// a source kept one waiting target only, and the other stayed paused for good.
#[test]
fn two_targets_waiting_for_one_source_are_both_answered() {
    use regionkv_raft::transport::local::{Action, Rule, Scope};
    let mut c = cluster_with_directory(12);
    let mut model = std::collections::BTreeMap::new();
    common::write_keys(&mut c, &mut model, &common::letters(26), "v1");
    let parts = common::split(&mut c, R1, &["h", "p"]).unwrap();
    let (left, source, right) = (parts[0].id, parts[1].id, parts[2].id);
    common::converge(&mut c);
    // Store 3's source replica falls behind: its group's messages to it are dropped
    // while the source takes writes.
    let lagging = regionkv_engine::StoreId(3);
    if c.leader(source) == Some(lagging) {
        let peers = c.region(lagging, source).unwrap().peers;
        let other = peers.iter().find(|p| p.store != lagging).unwrap().id;
        c.transfer_leader(lagging, source, other);
        assert!(c.run_until(5 * SECOND, |c| c.leader(source).is_some_and(|l| l != lagging)));
    }
    for target in [left, right] {
        if c.leader(target) == Some(lagging) {
            let peers = c.region(lagging, target).unwrap().peers;
            let other = peers.iter().find(|p| p.store != lagging).unwrap().id;
            c.transfer_leader(lagging, target, other);
            assert!(c.run_until(5 * SECOND, |c| c.leader(target).is_some_and(|l| l != lagging)));
        }
    }
    c.faults().add(Rule {
        scope: Scope { to: Some(lagging), region: Some(source), ..Scope::any() },
        action: Action::Drop(1.0),
    });
    for k in ["j1", "j2", "j3"] {
        assert!(put(&mut c, k, "v", 10 * SECOND));
        model.insert(k.to_owned(), "v".to_owned());
    }
    let leader = c.wait_leader(source, SECOND).unwrap();
    let src = c.region(leader, source).unwrap();
    let applied = c.status(leader).into_iter().find(|s| s.region.id == source).unwrap().applied;
    // Commit merges of the source into both neighbours, naming a prepare it never made:
    // refused at once where the source applied that far; on store 3 both targets wait.
    for target in [left, right] {
        let cmd = regionkv_raft::AdminCmd::CommitMerge {
            source: src.clone(),
            prepare_index: applied,
            prepare_term: 99,
        };
        // Refused; or no answer, if store 3 came to lead the target meanwhile.
        let pending = c.admin(c.leader(target).unwrap(), target, cmd);
        let refused = c.wait(&pending, 5 * SECOND);
        assert!(matches!(refused, None | Some(Err(Error::InvalidRequest(_)))), "{refused:?}");
    }
    c.faults().clear();
    assert_eq!(common::converge(&mut c).len(), 3);
    c.faults().isolate(regionkv_engine::StoreId(1));
    assert_eq!(common::scan_all(&mut c), model);
}
