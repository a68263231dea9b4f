//! Version GC of the transactional keyspace in the simulator (ARCHITECTURE.md,
//! "Version GC"): three stores, two regions split at user key "m"'s lock key, a
//! history of committed versions (puts and deletes) at fixed timestamps, then the GC
//! chunks a leader plans (`txn::gc::plan`) proposed one by one, with the leader
//! crashed (every crash mode) before each of them, and planned and proposed again
//! after the restart, as a driver does. Afterwards, for every key, exactly the
//! versions a snapshot at or above the safepoint can read are left (checked against a
//! model of all versions); a snapshot read at the safepoint answers what it answered
//! before GC; one below it is refused (`SnapshotTooOld`), and so is a prewrite that
//! started below it. A split carries the floor. At cluster version 3 nothing is
//! proposed.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_version_gc`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{Region, StoreId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult};
use regionkv_raft::merge_driver::{self, MergeOptions, RegionAdmin};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::txn::{gc, mvcc};
use regionkv_raft::{AdminCmd, Error, Op, Query, QueryResult, RecordInit, TxnCmd, TxnReply};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, leader_of, region_for};

const MS: Duration = Duration::from_millis(1);
const SAFEPOINT: u64 = 1_000;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

fn lk(user: &str) -> Bytes {
    mvcc::lock_key(user.as_bytes())
}

/// Every committed version: user key -> (commit ts -> `Some` put, `None` delete).
type Model = BTreeMap<String, BTreeMap<u64, Option<String>>>;

/// Three stores, the keyspace split at user key "m"'s lock key.
fn setup(seed: u64) -> SimCluster {
    setup_with(SimConfig::new(seed))
}

fn setup_with(config: SimConfig) -> SimCluster {
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let split = lk("m");
    let epoch = common::region_epoch(&mut c, R1);
    let new_ids = vec![regionkv_engine::RegionId(c.new_id())];
    RegionAdmin::admin(
        &mut c,
        R1,
        epoch,
        AdminCmd::Split { split_keys: vec![split.to_vec()], new_ids },
    )
    .expect("a split at a lock key");
    common::converge(&mut c);
    c
}

fn call(c: &mut SimCluster, key: &[u8], cmd: &TxnCmd) -> Result<TxnReply, Error> {
    common::txn_call(c, key, cmd, 10 * SECOND)
}

/// Commits `user = value` (`None`: a delete) as a one-key transaction started at
/// `commit_ts - 1`.
fn commit_one(c: &mut SimCluster, txn_id: u64, user: &str, value: Option<&str>, commit_ts: u64) {
    let key = lk(user);
    let op = match value {
        Some(v) => Op::Put { key: key.clone(), value: Bytes::from(v.to_owned()) },
        None => Op::Delete { key: key.clone() },
    };
    let prewrite = TxnCmd::Prewrite {
        min_commit: None,
        txn_id,
        primary_key: key.clone(),
        ops: vec![op],
        ttl_ms: 60_000,
        record: Some(RecordInit {
            participants: vec![key.clone()],
            coordinator: None,
            staging: false,
        }),
        start_ts: Some(commit_ts - 1),
        session: None,
    };
    assert!(call(c, &key, &prewrite).is_ok(), "prewrite of {user}@{commit_ts}");
    let commit = TxnCmd::Commit { txn_id, primary_key: key.clone(), commit_ts: Some(commit_ts) };
    assert!(call(c, &key, &commit).is_ok(), "commit of {user}@{commit_ts}");
}

/// The history: in both regions, keys with puts and deletes below, at and above the
/// safepoint; one whose newest below is a delete, one with nothing below.
fn history(c: &mut SimCluster) -> Model {
    let writes: &[(&str, Option<&str>, u64)] = &[
        ("a", Some("a1"), 100),
        ("a", Some("a2"), 200),
        ("a", Some("a3"), 300),
        ("a", Some("a4"), 1_500),
        ("b", Some("b1"), 110),
        ("b", None, 210), // newest below: a delete, collected with what is under it
        ("c", Some("c1"), 120),
        ("c", Some("c2"), SAFEPOINT), // exactly at the safepoint: kept
        ("d", Some("d1"), 1_200),     // nothing below
        ("n", Some("n1"), 130),
        ("n", Some("n2"), 230),
        ("n", None, 1_300),
        ("o", None, 140),
        ("o", Some("o2"), 240),
        ("p", Some("p1"), 150),
        ("p", None, 250),
        ("p", Some("p3"), 350),
    ];
    let mut model = Model::new();
    for (i, (user, value, ts)) in writes.iter().enumerate() {
        commit_one(c, 100 + i as u64, user, *value, *ts);
        model.entry((*user).to_owned()).or_default().insert(*ts, value.map(str::to_owned));
    }
    model
}

/// What a snapshot at `read_ts` reads of `user` in the model.
fn model_read(model: &Model, user: &str, read_ts: u64) -> Option<String> {
    model.get(user)?.range(..=read_ts).next_back().and_then(|(_, v)| v.clone())
}

/// The version keys the model says GC at `SAFEPOINT` keeps, by user key.
fn kept(model: &Model) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    for (user, versions) in model {
        let newest_below = versions.range(..=SAFEPOINT).next_back();
        let keep: Vec<u64> = versions
            .iter()
            .filter(|(ts, v)| {
                **ts > SAFEPOINT || newest_below.is_some_and(|(n, _)| *n == **ts && v.is_some())
            })
            .map(|(ts, _)| *ts)
            .collect();
        out.insert(user.clone(), keep);
    }
    out
}

/// A snapshot read of `user` at `read_ts`, as `Transaction::get` makes it.
fn snapshot_get(c: &mut SimCluster, user: &str, read_ts: u64) -> Result<Option<String>, Error> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a snapshot read of {user}");
        let (leader, region) = leader_of(c, &lk(user));
        let query = Query::Scan {
            start: mvcc::version_key(user.as_bytes(), read_ts),
            end: Some(mvcc::versions_end(user.as_bytes())),
            limit: 1,
            read_ts: Some(read_ts),
        };
        let pending = c.read(leader, region, query);
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Rows(page))) => {
                return Ok(page.rows.first().and_then(|(_, stored)| {
                    let value = mvcc::decode_version_value(stored).expect("a version value");
                    value.map(|v| String::from_utf8(v.to_vec()).expect("utf-8"))
                }));
            }
            Some(Ok(other)) => panic!("a scan answered {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
}

/// The commit timestamps of `user`'s versions left in the data (a raw scan).
fn versions_left(c: &mut SimCluster, user: &str) -> Vec<u64> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a raw scan of {user}");
        let (leader, region) = leader_of(c, &lk(user));
        let query = Query::Scan {
            start: lk(user),
            end: Some(mvcc::versions_end(user.as_bytes())),
            limit: 100,
            read_ts: None,
        };
        let pending = c.read(leader, region, query);
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Rows(page))) => {
                let mut ts: Vec<u64> = (page.rows.iter())
                    .filter_map(|(k, _)| mvcc::decode_version_key(k).map(|(_, ts)| ts))
                    .collect();
                ts.sort_unstable();
                return ts;
            }
            Some(Ok(other)) => panic!("a scan answered {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(Err(e)) => panic!("a raw scan of {user} failed: {e}"),
            None => {}
        }
    }
}

/// The chunks `region`'s leader plans now, from its own engine.
fn plan_at_leader(c: &mut SimCluster, user: &str, chunk_keys: usize) -> (Region, gc::GcPlan) {
    let (leader, id) = leader_of(c, &lk(user));
    let region = c.region(leader, id).expect("the leader's region");
    let view = c.engine(leader).expect("a running leader").read_view();
    let plan = gc::plan(&view, &region, SAFEPOINT, chunk_keys);
    (region, plan)
}

fn crash(c: &mut SimCluster, user: &str, mode: Option<CrashMode>) {
    let (store, _) = leader_of(c, &lk(user));
    match mode {
        Some(mode) => c.crash(store, mode),
        None => c.stop(store),
    }
    c.run_for(300 * MS);
    c.restart(store).expect("restart");
}

/// Collects the region of `user` in chunks of `chunk_keys`, crashing its leader
/// (`mode`; `None`: a clean stop) before chunk `crash_before` (if any), then planning
/// and proposing again from the start, as a driver's next turn does. With `model`,
/// after every chunk a snapshot at the safepoint reads every key of the region as the
/// model says (a half-collected key never reads an older version).
fn collect_checked(
    c: &mut SimCluster,
    user: &str,
    chunk_keys: usize,
    crash_before: Option<(usize, Option<CrashMode>)>,
    model: Option<&Model>,
) {
    let (region, plan) = plan_at_leader(c, user, chunk_keys);
    assert!(!plan.chunks.is_empty());
    let route = if region.start.is_empty() { lk("a") } else { Bytes::from(region.start.clone()) };
    let users: Vec<String> = model
        .map(|m| m.keys().filter(|u| region.contains(&lk(u))).cloned().collect())
        .unwrap_or_default();
    let check_between = |c: &mut SimCluster, when: &str| {
        for u in &users {
            let read = snapshot_get(c, u, SAFEPOINT).map_err(|e| e.to_string());
            let expected = model_read(model.expect("a model"), u, SAFEPOINT);
            assert_eq!(read, Ok(expected), "{u} at the safepoint {when}");
        }
    };
    for (i, chunk) in plan.chunks.iter().enumerate() {
        if let Some((at, mode)) = crash_before
            && at == i
        {
            crash(c, user, mode);
            check_between(c, &format!("after a crash before chunk {i}"));
            break;
        }
        assert_eq!(call(c, &route, chunk).map_err(|e| e.to_string()), Ok(TxnReply::Done));
        check_between(c, &format!("after chunk {i}"));
    }
    // The next turn: planned again from what is there, every chunk proposed.
    let (_, again) = plan_at_leader(c, user, chunk_keys);
    for chunk in &again.chunks {
        assert_eq!(call(c, &route, chunk).map_err(|e| e.to_string()), Ok(TxnReply::Done));
    }
    // Nothing left to collect.
    let (_, done) = plan_at_leader(c, user, chunk_keys);
    assert_eq!(done.collected, 0, "a pass after a complete one collects nothing");
}

fn collect(c: &mut SimCluster, user: &str, crash_before: Option<(usize, Option<CrashMode>)>) {
    collect_checked(c, user, 2, crash_before, None);
}

/// Every check of the module docs, for every key of the model.
fn check(c: &mut SimCluster, model: &Model, before: &BTreeMap<String, Option<String>>, what: &str) {
    let kept = kept(model);
    for (user, versions) in model {
        assert_eq!(versions_left(c, user), kept[user], "{what}: versions of {user} left");
        // At and above the safepoint: exactly what the model reads.
        let mut at: Vec<u64> = versions.keys().copied().filter(|ts| *ts >= SAFEPOINT).collect();
        at.extend([SAFEPOINT, SAFEPOINT + 1, u64::MAX >> 1]);
        for ts in at {
            let read = snapshot_get(c, user, ts).map_err(|e| e.to_string());
            assert_eq!(read, Ok(model_read(model, user, ts)), "{what}: {user} at {ts}");
        }
        assert_eq!(
            snapshot_get(c, user, SAFEPOINT).ok(),
            Some(before[user].clone()),
            "{what}: {user} at the safepoint, as before GC"
        );
        // Below: refused.
        match snapshot_get(c, user, SAFEPOINT - 1) {
            Err(Error::SnapshotTooOld { read_ts, floor: SAFEPOINT }) => {
                assert_eq!(read_ts, SAFEPOINT - 1);
            }
            other => panic!("{what}: a read of {user} below the floor answered {other:?}"),
        }
    }
}

fn at_safepoint(c: &mut SimCluster, model: &Model) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for user in model.keys() {
        let read = snapshot_get(c, user, SAFEPOINT).expect("a read before GC");
        assert_eq!(read, model_read(model, user, SAFEPOINT), "{user} before GC");
        out.insert(user.clone(), read);
    }
    out
}

#[test]
fn gc_keeps_exactly_what_a_snapshot_at_or_above_the_floor_reads_through_crashes() {
    for seed in seeds() {
        let crash_modes = [
            None,
            Some(CrashMode::Lost),
            Some(CrashMode::Persisted),
            Some(CrashMode::Torn { seed }),
            Some(CrashMode::BitFlip { seed }),
        ];
        // How many chunks of one key region 1 ("a".."m") takes: a crash before each,
        // and after all.
        let chunks = {
            let mut c = setup(seed);
            history(&mut c);
            plan_at_leader(&mut c, "a", 1).1.chunks.len()
        };
        assert!(chunks >= 3, "seed {seed}: the history makes several chunks ({chunks})");
        for step in 0..=chunks {
            for mode in crash_modes {
                let what = format!("seed {seed}, crash ({mode:?}) before chunk {step}");
                let mut c = setup(seed);
                let model = history(&mut c);
                let before = at_safepoint(&mut c, &model);
                collect_checked(&mut c, "a", 1, Some((step, mode)), Some(&model));
                collect_checked(&mut c, "n", 1, None, Some(&model));
                check(&mut c, &model, &before, &what);
            }
        }
    }
}

#[test]
fn a_prewrite_or_commit_below_the_floor_is_refused_and_a_split_carries_the_floor() {
    for seed in seeds() {
        let mut c = setup(seed);
        let model = history(&mut c);
        // Transaction 900 prewrites "c" below the safepoint, before GC.
        let key = lk("c");
        let prewrite = |txn_id: u64, start_ts: u64| TxnCmd::Prewrite {
            min_commit: None,
            txn_id,
            primary_key: key.clone(),
            ops: vec![Op::Put { key: key.clone(), value: Bytes::from_static(b"late") }],
            ttl_ms: 60_000,
            record: Some(RecordInit {
                participants: vec![key.clone()],
                coordinator: None,
                staging: false,
            }),
            start_ts: Some(start_ts),
            session: None,
        };
        assert!(call(&mut c, &key, &prewrite(900, 1_600)).is_ok(), "seed {seed}");
        collect(&mut c, "a", None);
        // Its lock is not collected; a new prewrite below the floor is refused.
        match call(&mut c, &lk("a"), &prewrite(901, SAFEPOINT - 1)) {
            Err(Error::SnapshotTooOld { floor: SAFEPOINT, .. }) => {}
            other => panic!("seed {seed}: a prewrite below the floor answered {other:?}"),
        }
        let commit =
            TxnCmd::Commit { txn_id: 900, primary_key: key.clone(), commit_ts: Some(1_700) };
        assert!(call(&mut c, &key, &commit).is_ok(), "seed {seed}: a commit above the floor");
        let read = snapshot_get(&mut c, "c", 1_700).map_err(|e| e.to_string());
        assert_eq!(read, Ok(Some("late".to_owned())), "seed {seed}");
        // A split of the collected region: both parts keep the floor.
        let region = region_for(&c, &lk("a")).expect("a region");
        let new_ids = vec![regionkv_engine::RegionId(c.new_id())];
        RegionAdmin::admin(
            &mut c,
            region.id,
            region.epoch,
            AdminCmd::Split { split_keys: vec![lk("c").to_vec()], new_ids },
        )
        .expect("a split");
        common::converge(&mut c);
        for user in ["a", "c"] {
            match snapshot_get(&mut c, user, SAFEPOINT - 1) {
                Err(Error::SnapshotTooOld { floor: SAFEPOINT, .. }) => {}
                other => panic!("seed {seed}: {user} after the split answered {other:?}"),
            }
            assert_eq!(
                snapshot_get(&mut c, user, SAFEPOINT).map_err(|e| e.to_string()),
                Ok(model_read(&model, user, SAFEPOINT)),
                "seed {seed}: {user} at the floor after the split"
            );
        }
        // Region 2 was never collected: its reads below the safepoint still answer.
        assert_eq!(
            snapshot_get(&mut c, "n", 135).map_err(|e| e.to_string()),
            Ok(Some("n1".to_owned())),
            "seed {seed}"
        );
    }
}

#[test]
fn at_cluster_version_3_a_collect_is_refused_and_nothing_is_proposed() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        config.directory = true;
        for s in 1..=3 {
            config.cluster_version_max.insert(StoreId(s), 3);
        }
        let mut c = SimCluster::new(config).unwrap();
        let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
        c.run_for(SECOND);
        let last = |c: &SimCluster| {
            c.status(leader).into_iter().find(|p| p.region.id == R1).map(|p| p.last_index)
        };
        let before = last(&c);
        let cmd = TxnCmd::CollectVersions {
            safepoint: SAFEPOINT,
            keys: vec![mvcc::version_key(b"a", 5)],
        };
        let pending = c.txn(leader, R1, cmd);
        match pending.take() {
            Some(Err(Error::FeatureNotActive { needed: 4, .. })) => {}
            other => panic!("seed {seed}: a collect at version 3 answered {other:?}"),
        }
        assert_eq!(last(&c), before, "seed {seed}: something was proposed");
        let raise = DirCmd::SetGcSafepoint { safepoint: SAFEPOINT };
        match common::directory(&mut c, &raise) {
            Err(Error::FeatureNotActive { needed: 4, .. }) => {}
            other => panic!("seed {seed}: a safepoint at version 3 answered {other:?}"),
        }
    }
}

#[test]
fn the_directory_safepoint_only_goes_up_across_a_leader_crash() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        config.directory = true;
        let mut c = SimCluster::new(config).unwrap();
        c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
        let raise = |c: &mut SimCluster, safepoint| match common::directory(
            c,
            &DirCmd::SetGcSafepoint { safepoint },
        ) {
            Ok(DirResult::GcSafepoint { safepoint }) => safepoint,
            other => panic!("seed {seed}: a safepoint raise answered {other:?}"),
        };
        assert_eq!(raise(&mut c, 500), 500);
        assert_eq!(raise(&mut c, 300), 500, "seed {seed}: never lowered");
        let leader = c.wait_leader(DIRECTORY, 10 * SECOND).expect("a directory leader");
        c.crash(leader, CrashMode::Lost);
        c.run_for(300 * MS);
        c.restart(leader).expect("restart");
        assert_eq!(raise(&mut c, 0), 500, "seed {seed}: kept across the crash");
        assert_eq!(raise(&mut c, 900), 900);
    }
}

#[test]
fn a_merge_takes_the_larger_floor_and_it_survives_checkpoints_and_a_restart_of_every_store() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        config.checkpoint_log_bytes = 4 << 10;
        let mut c = setup_with(config);
        let model = history(&mut c);
        // Region 2 (the merge's source) at the safepoint; region 1 (its target) never.
        collect(&mut c, "n", None);
        assert_eq!(
            snapshot_get(&mut c, "a", 105).map_err(|e| e.to_string()),
            Ok(Some("a1".to_owned())),
            "seed {seed}: below the safepoint, region 1 still answers"
        );
        let source = region_for(&c, &lk("n")).expect("region 2");
        let merged =
            merge_driver::merge(&mut c, source.id, R1, MergeOptions::default()).expect("a merge");
        assert!(merged.end.is_none(), "seed {seed}: {merged:?}");
        common::converge(&mut c);
        match snapshot_get(&mut c, "a", 105) {
            Err(Error::SnapshotTooOld { floor: SAFEPOINT, .. }) => {}
            other => panic!("seed {seed}: after the merge, below the larger floor: {other:?}"),
        }
        // Enough log for checkpoints, then every store restarts.
        for i in 0..60 {
            assert!(common::put(&mut c, &format!("k{i:03}"), &"x".repeat(200), 10 * SECOND));
        }
        for store in c.store_ids() {
            c.stop(store);
        }
        for store in c.store_ids() {
            c.restart(store).expect("restart");
        }
        collect(&mut c, "a", None); // the merged region: what region 1 kept goes now
        for user in ["a", "n"] {
            match snapshot_get(&mut c, user, SAFEPOINT - 1) {
                Err(Error::SnapshotTooOld { floor: SAFEPOINT, .. }) => {}
                other => panic!("seed {seed}: {user} after the restart: {other:?}"),
            }
            assert_eq!(
                snapshot_get(&mut c, user, SAFEPOINT).map_err(|e| e.to_string()),
                Ok(model_read(&model, user, SAFEPOINT)),
                "seed {seed}: {user} at the floor after the restart"
            );
        }
        for store in c.store_ids() {
            let table = c.engine(store).and_then(|e| e.txn_table(R1)).expect("the merged region");
            assert_eq!(table.gc_floor, SAFEPOINT, "seed {seed}: store {store}");
        }
    }
}

/// Every store's version GC counters (`StoreMetrics::gc_versions_collected`,
/// `gc_safepoint_applied`): 0 before any GC; once both regions' chunks applied, every
/// store (each holds a replica of both) counts every version key the chunks named and
/// the safepoint; a pass with nothing left to collect adds nothing.
#[test]
fn every_store_counts_the_versions_its_gc_chunks_collected_and_the_safepoint() {
    let counters = |c: &SimCluster| -> Vec<(u64, u64)> {
        (c.store_ids().into_iter())
            .map(|s| {
                let m = c.metrics(s).expect("running");
                (m.gc_versions_collected, m.gc_safepoint_applied)
            })
            .collect()
    };
    for seed in seeds() {
        let mut c = setup(seed);
        history(&mut c);
        assert_eq!(counters(&c), vec![(0, 0); 3], "seed {seed}: before GC");
        let planned: u64 =
            ["a", "n"].iter().map(|u| plan_at_leader(&mut c, u, 2).1.collected).sum();
        assert!(planned > 0, "seed {seed}: something to collect");
        for user in ["a", "n"] {
            let (region, plan) = plan_at_leader(&mut c, user, 2);
            let route = if region.start.is_empty() { lk("a") } else { Bytes::from(region.start) };
            for chunk in &plan.chunks {
                assert_eq!(
                    call(&mut c, &route, chunk).map_err(|e| e.to_string()),
                    Ok(TxnReply::Done)
                );
            }
        }
        common::converge(&mut c);
        assert_eq!(counters(&c), vec![(planned, SAFEPOINT); 3], "seed {seed}: after GC");
        // A second pass finds nothing: one empty chunk per region, no version.
        for user in ["a", "n"] {
            let (region, plan) = plan_at_leader(&mut c, user, 2);
            assert_eq!(plan.collected, 0, "seed {seed}");
            let route = if region.start.is_empty() { lk("a") } else { Bytes::from(region.start) };
            for chunk in &plan.chunks {
                assert_eq!(
                    call(&mut c, &route, chunk).map_err(|e| e.to_string()),
                    Ok(TxnReply::Done)
                );
            }
        }
        common::converge(&mut c);
        assert_eq!(
            counters(&c),
            vec![(planned, SAFEPOINT); 3],
            "seed {seed}: a pass with nothing left"
        );
    }
}
