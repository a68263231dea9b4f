//! Async commit of snapshot transactions across regions in the simulator
//! (`regionkv_raft::txn::staging`, "Snapshot transactions"; cluster version 5): three
//! stores, the transactional keyspace split at user key "m"'s lock key, a transaction
//! (start 100) writing "a1", "a2" (the primary's region) and "n1", "n2". Each prewrite
//! asks its leader for a minimum commit timestamp; a snapshot read of "n1" at 300
//! before it makes the right region stamp 301, the left one 151 (synced at 150): the
//! commit timestamp is 301. A crash of either region's leader (a stop, a power cut)
//! between every two steps, the coordinator abandoned there, then a checker (the
//! participant check on the expired staging record, committing at the largest minimum
//! commit timestamp it finds): all or nothing, and an acknowledged transaction's
//! versions are at exactly the timestamp the coordinator answered. A read below a
//! lock's minimum commit timestamp reads past it; at or above it, it meets the lock.
//! At cluster version 4 the prewrite is refused before anything is proposed.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_si_async`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::StoreId;
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::txn::{mvcc, staging};
use regionkv_raft::{
    DropReason, Error, Op, Query, QueryResult, SyncedTs, TxnCmd, TxnReply, TxnState,
};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, leader_of, txn_call};

const MS: Duration = Duration::from_millis(1);
const TTL_MS: u64 = 400;
const USERS: [&str; 4] = ["a1", "a2", "n1", "n2"];
const START_TS: u64 = 100;
/// The timestamp a refused prewrite syncs with.
const SYNCED_TS: u64 = 150;
/// A snapshot read of "n1" before the prewrites.
const READ_TS: u64 = 300;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

fn lk(user: &str) -> Bytes {
    mvcc::lock_key(user.as_bytes())
}

fn s<T>(r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn cluster(seed: u64, version: Option<u32>) -> SimCluster {
    let mut config = SimConfig::new(seed);
    if let Some(v) = version {
        for s in 1..=3 {
            config.cluster_version_max.insert(StoreId(s), v);
        }
    }
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    common::split_at_lock_key(&mut c, R1, "m");
    c
}

fn plan(txn_id: u64) -> TxnPlan {
    let ops = USERS
        .iter()
        .map(|u| Op::Put { key: lk(u), value: Bytes::from(format!("{u}-t{txn_id}")) })
        .collect();
    TxnPlan::new(txn_id, ops, TTL_MS, None).snapshot_async(START_TS)
}

/// The plan's ops by region, the primary's ("a1", "a2") first.
fn parts(plan: &TxnPlan) -> Vec<Vec<Op>> {
    vec![plan.ops[..2].to_vec(), plan.ops[2..].to_vec()]
}

/// A snapshot get of `user`'s lock key at `read_ts` (as `Transaction::get` probes):
/// `Ok` if no lock stopped it, the refusal otherwise.
fn probe(c: &mut SimCluster, user: &str, read_ts: u64) -> Result<(), Error> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a probe of {user}");
        let (leader, region) = leader_of(c, &lk(user));
        let pending = c.read(leader, region, Query::Get { key: lk(user), read_ts: Some(read_ts) });
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Value(_))) => return Ok(()),
            Some(Ok(other)) => panic!("a get answered {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
}

/// Prewrites `ops`, syncing the leader's read timestamp when it asks: the minimum
/// commit timestamp answered.
fn prewrite(c: &mut SimCluster, plan: &TxnPlan, ops: &[Op]) -> Result<u64, Error> {
    let key = Bytes::copy_from_slice(ops[0].key());
    let mut synced = None;
    for _ in 0..10 {
        let cmd = plan.prewrite_synced(ops.to_vec(), None, synced);
        match txn_call(c, &key, &cmd, 10 * SECOND) {
            Ok(TxnReply::Prewritten { min_commit_ts }) => return Ok(min_commit_ts),
            Ok(other) => panic!("a prewrite answered {other:?}"),
            Err(Error::ReadTsUnsynced { term, .. }) => {
                synced = Some(SyncedTs { term, ts: SYNCED_TS });
            }
            Err(e) => return Err(e),
        }
    }
    panic!("the prewrite never synced")
}

/// Every version of `user` (commit timestamp, value).
fn versions(c: &mut SimCluster, user: &str) -> Vec<(u64, String)> {
    let (leader, region) = leader_of(c, &lk(user));
    let query = Query::Scan {
        start: mvcc::version_key(user.as_bytes(), u64::MAX),
        end: Some(mvcc::versions_end(user.as_bytes())),
        limit: 16,
        read_ts: None,
    };
    let pending = c.read(leader, region, query);
    let Some(Ok(QueryResult::Rows(page))) = c.wait(&pending, 10 * SECOND) else {
        panic!("no versions of {user}");
    };
    page.rows
        .iter()
        .map(|(k, v)| {
            let (_, ts) = mvcc::decode_version_key(k).expect("a version key");
            let v = mvcc::decode_version_value(v).expect("a value").expect("a put");
            (ts, String::from_utf8(v.to_vec()).unwrap())
        })
        .collect()
}

fn now_ms(c: &SimCluster) -> u64 {
    let store = c.store_ids().into_iter().find(|s| c.is_running(*s)).expect("a store runs");
    c.context(store).expect("running").now_ms()
}

/// The checker: the participant check, committing at the largest minimum commit
/// timestamp found (as `Db::settle_staging`). The record's state after.
fn settle(c: &mut SimCluster, txn_id: u64, participants: &[Bytes]) -> TxnState {
    let (mut all, mut mins) = (Vec::new(), Vec::new());
    for key in staging::check_keys(participants, &lk("a1")) {
        let check = TxnCmd::CheckLocks { txn_id, keys: vec![key.clone()] };
        match txn_call(c, &key, &check, 10 * SECOND) {
            Ok(TxnReply::Checked { all_locked, min_commit_ts }) => {
                all.push(all_locked);
                mins.push(min_commit_ts);
            }
            other => panic!("a check of {key:?} answered {other:?}"),
        }
    }
    let commit = staging::decision_of_check(all);
    let commit_ts = if commit {
        Some(staging::checked_commit_ts(mins).expect("every lock holds one"))
    } else {
        None
    };
    let decide = staging::decide_at(txn_id, lk("a1"), Vec::new(), commit, commit_ts);
    let reply = txn_call(c, &lk("a1"), &decide, 10 * SECOND).expect("decided");
    staging::decided_state(&reply).expect("a state")
}

/// Probes every key raw; a lock met is decided through its record (a staging record
/// past its TTL by the check) and resolved at the record's timestamp.
fn resolve_all(c: &mut SimCluster, what: &str) {
    let deadline = c.now() + 60 * SECOND;
    loop {
        assert!(c.now() < deadline, "{what}: locks left after a minute");
        let mut locked = false;
        for user in USERS {
            let (leader, region) = leader_of(c, &lk(user));
            let pending = c.read(leader, region, Query::Get { key: lk(user), read_ts: None });
            let e = match c.wait(&pending, SECOND) {
                Some(Err(e)) if !e.is_retryable() => e,
                Some(Ok(_)) => continue,
                _ => {
                    locked = true;
                    continue;
                }
            };
            let Error::Locked { txn_id, .. } = e else { panic!("{what}: a get failed: {e}") };
            locked = true;
            let check =
                TxnCmd::CheckStatus { txn_id, primary_key: lk("a1"), abort_if_expired: true };
            let state = match txn_call(c, &lk("a1"), &check, 10 * SECOND) {
                Ok(TxnReply::Status(TxnState::Staging { expires_at_ms, participants })) => {
                    if now_ms(c) <= expires_at_ms {
                        continue;
                    }
                    settle(c, txn_id, &participants)
                }
                Ok(TxnReply::Status(state)) => state,
                other => panic!("{what}: check status answered {other:?}"),
            };
            let (commit, commit_ts) = match state {
                TxnState::Committed { commit_ts } => (true, commit_ts),
                TxnState::Aborted => (false, None),
                other => panic!("{what}: {txn_id} is {other:?}"),
            };
            let resolve = TxnCmd::Resolve { txn_id, keys: vec![lk(user)], commit, commit_ts };
            assert_eq!(s(txn_call(c, &lk(user), &resolve, 10 * SECOND)), Ok(TxnReply::Done));
        }
        if !locked {
            return;
        }
        c.run_for(100 * MS);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Prewrites(usize),
    DecideProposed,
    Decided,
    ResolveProposed,
}

fn crash_at(seed: u64, step: Step, victim: &str, mode: Option<CrashMode>) -> u64 {
    let mut c = cluster(seed, None);
    let txn_id = 20;
    let mut plan = plan(txn_id);
    let what = format!("seed {seed}, crash of {victim}'s leader ({mode:?}) at {step:?}");
    probe(&mut c, "n1", READ_TS).expect("nothing locked yet");
    let mut mins = Vec::new();
    'run: {
        for (i, ops) in parts(&plan).iter().enumerate() {
            if step == Step::Prewrites(i) {
                break 'run;
            }
            mins.push(prewrite(&mut c, &plan, ops).unwrap_or_else(|e| panic!("{what}: {e}")));
        }
        // Acknowledged at the largest: above the read of "n1" at 300.
        assert_eq!(mins, vec![SYNCED_TS + 1, READ_TS + 1], "{what}");
        plan.commit_ts = mins.iter().copied().max();
        if step == Step::Prewrites(2) {
            break 'run;
        }
        if step == Step::DecideProposed {
            let (leader, region) = leader_of(&mut c, &lk("a1"));
            let _unknown = c.txn(leader, region, plan.decide(true));
            break 'run;
        }
        let reply = txn_call(&mut c, &lk("a1"), &plan.decide(true), 10 * SECOND).expect("decided");
        let state = staging::decided_state(&reply);
        assert_eq!(state, Some(TxnState::Committed { commit_ts: plan.commit_ts }), "{what}");
        if step == Step::Decided {
            break 'run;
        }
        let item = plan.resolve_item(vec![lk("n1"), lk("n2")], true);
        let (leader, region) = leader_of(&mut c, &lk("n1"));
        let _unknown = c.txn(leader, region, TxnCmd::ResolveMany { items: vec![item] });
    }
    let (store, _) = leader_of(&mut c, &lk(victim));
    match mode {
        None => c.stop(store),
        Some(mode) => c.crash(store, mode),
    }
    c.run_for(300 * MS);
    c.restart(store).expect("restart");
    c.run_for(Duration::from_millis(2 * TTL_MS));
    resolve_all(&mut c, &what);
    let found: Vec<Vec<(u64, String)>> = USERS.iter().map(|u| versions(&mut c, u)).collect();
    let acknowledged = plan.commit_ts.is_some();
    if found.iter().all(Vec::is_empty) {
        assert!(!acknowledged, "{what}: an acknowledged transaction is lost");
    } else {
        // All of it, at exactly the acknowledged timestamp (whoever decided).
        for (user, found) in USERS.iter().zip(&found) {
            assert_eq!(found, &vec![(READ_TS + 1, format!("{user}-t{txn_id}"))], "{what}");
        }
    }
    if matches!(step, Step::Prewrites(0 | 1)) {
        assert!(found.iter().all(Vec::is_empty), "{what}: committed without every prewrite");
    }
    c.trace_hash()
}

#[test]
fn a_crash_between_any_two_steps_of_a_snapshot_async_commit_leaves_all_or_nothing() {
    let steps = [
        Step::Prewrites(0),
        Step::Prewrites(1),
        Step::Prewrites(2),
        Step::DecideProposed,
        Step::Decided,
        Step::ResolveProposed,
    ];
    for seed in seeds() {
        let mut case = 0;
        for step in steps {
            for victim in ["a1", "n1"] {
                for mode in [None, Some(CrashMode::Lost)] {
                    let case_seed = seed * 1000 + case;
                    let hash = crash_at(case_seed, step, victim, mode);
                    if case == 0 {
                        assert_eq!(hash, crash_at(case_seed, step, victim, mode), "replay");
                    }
                    case += 1;
                }
            }
        }
    }
}

#[test]
fn a_read_below_a_locks_minimum_commit_timestamp_reads_past_it() {
    for seed in seeds() {
        let mut c = cluster(seed, None);
        let plan = plan(21);
        probe(&mut c, "n1", READ_TS).expect("nothing locked yet");
        for ops in parts(&plan) {
            prewrite(&mut c, &plan, &ops).expect("prewritten");
        }
        // "n1"'s lock holds 301: a read at 300 reads past it, at 301 it meets it.
        assert_eq!(s(probe(&mut c, "n1", READ_TS)), Ok(()), "seed {seed}");
        assert!(matches!(probe(&mut c, "n1", READ_TS + 1), Err(Error::Locked { .. })));
        // "a1"'s holds 151: a read at 200 meets it.
        assert!(matches!(probe(&mut c, "a1", 200), Err(Error::Locked { .. })), "seed {seed}");
        assert_eq!(s(probe(&mut c, "a1", SYNCED_TS)), Ok(()), "seed {seed}");
        // A copy of a prewrite answers the value its locks hold, not a new stamp.
        probe(&mut c, "n2", 900).ok();
        assert_eq!(s(prewrite(&mut c, &plan, &parts(&plan)[1])), Ok(READ_TS + 1), "seed {seed}");
    }
}

#[test]
fn at_cluster_version_4_a_prewrite_asking_for_a_minimum_commit_timestamp_is_refused() {
    for seed in seeds() {
        let mut c = cluster(seed, Some(4));
        let plan = plan(22);
        let (leader, region) = leader_of(&mut c, &lk("n1"));
        let pending = c.txn(leader, region, plan.prewrite(parts(&plan)[1].clone()));
        match pending.take() {
            Some(Err(Error::FeatureNotActive { needed: 5, .. })) => {}
            other => panic!("seed {seed}: a minimum commit timestamp at version 4: {other:?}"),
        }
        assert!(versions(&mut c, "n1").is_empty(), "seed {seed}");
    }
}

/// A refusal `Dropped { CommitPending }`, which the `Db` sends again (retryable).
fn commit_pending(answer: Option<Result<(), Error>>) -> bool {
    matches!(answer, Some(Err(e @ Error::Dropped { reason: DropReason::CommitPending, .. })) if e.is_retryable())
}

/// A snapshot get of `user` at `read_ts` as `Transaction::get` makes it: the probe of
/// its lock key (retryable refusals retried, `Dropped { CommitPending }` among them),
/// then the newest version at or below `read_ts`.
fn snapshot_get(c: &mut SimCluster, user: &str, read_ts: u64) -> Result<Option<String>, Error> {
    probe(c, user, read_ts)?;
    let (leader, region) = leader_of(c, &lk(user));
    let query = Query::Scan {
        start: mvcc::version_key(user.as_bytes(), read_ts),
        end: Some(mvcc::versions_end(user.as_bytes())),
        limit: 1,
        read_ts: Some(read_ts),
    };
    let pending = c.read(leader, region, query);
    let Some(Ok(QueryResult::Rows(page))) = c.wait(&pending, 10 * SECOND) else {
        panic!("no versions of {user} at {read_ts}");
    };
    Ok(page.rows.first().map(|(_, v)| {
        let v = mvcc::decode_version_value(v).expect("a value").expect("a put");
        String::from_utf8(v.to_vec()).unwrap()
    }))
}

/// While a prewrite asking for a minimum commit timestamp is in flight (stamped, its
/// in-memory locks held, not yet applied), a snapshot read of one of its keys at or
/// above the stamp is refused `Dropped { CommitPending }` (retryable: the `Db` sends
/// it again), and so is a copy of the prewrite. Sent again once the prewrite applied,
/// the copy answers the first's stamp (not a new one above the reads since) and
/// writes nothing; the reads, once the transaction is decided and resolved, answer
/// the value at their timestamps: nothing below the commit timestamp, the transaction's
/// value at or above it. Each key has one version.
#[test]
fn a_read_or_a_copy_meeting_an_in_flight_prewrite_is_dropped_then_answered_right() {
    for seed in seeds() {
        let mut c = cluster(seed, None);
        let mut plan = plan(23);
        probe(&mut c, "n1", READ_TS).expect("nothing locked yet");
        let right = prewrite(&mut c, &plan, &parts(&plan)[1]).expect("prewritten");
        assert_eq!(right, READ_TS + 1, "seed {seed}");
        // The left part, sent until its leader takes it (synced): then in flight.
        let left = parts(&plan)[0].clone();
        let (leader, region) = leader_of(&mut c, &lk("a1"));
        let mut synced = None;
        let (first, cmd) = loop {
            let cmd = plan.prewrite_synced(left.clone(), None, synced);
            let pending = c.txn(leader, region, cmd.clone());
            match pending.take() {
                None => break (pending, cmd),
                Some(Err(Error::ReadTsUnsynced { term, .. })) if synced.is_none() => {
                    synced = Some(SyncedTs { term, ts: SYNCED_TS });
                }
                other => panic!("seed {seed}: the left prewrite answered at once: {other:?}"),
            }
        };
        // Stamped 151: a read at 200 or 400 meets the in-memory lock, so does a copy.
        for read_ts in [200, 400] {
            let read = c.read(leader, region, Query::Get { key: lk("a1"), read_ts: Some(read_ts) });
            assert!(
                commit_pending(read.take().map(|r| r.map(drop))),
                "seed {seed}: a read at {read_ts}"
            );
        }
        let copy = c.txn(leader, region, cmd);
        assert!(commit_pending(copy.take().map(|r| r.map(drop))), "seed {seed}: a copy in flight");
        let answer = c.wait(&first, 10 * SECOND).map(s);
        assert_eq!(answer, Some(Ok(TxnReply::Prewritten { min_commit_ts: SYNCED_TS + 1 })));
        // The copy sent again: the stored stamp, not one above the read at 400.
        assert_eq!(s(prewrite(&mut c, &plan, &left)), Ok(SYNCED_TS + 1), "seed {seed}");
        plan.commit_ts = Some(READ_TS + 1);
        let decide =
            staging::decide_at(23, lk("a1"), vec![lk("a1"), lk("a2")], true, plan.commit_ts);
        let reply = txn_call(&mut c, &lk("a1"), &decide, 10 * SECOND).expect("decided");
        assert_eq!(
            staging::decided_state(&reply),
            Some(TxnState::Committed { commit_ts: plan.commit_ts })
        );
        let resolve =
            TxnCmd::ResolveMany { items: vec![plan.resolve_item(vec![lk("n1"), lk("n2")], true)] };
        txn_call(&mut c, &lk("n1"), &resolve, 10 * SECOND).expect("resolved");
        // The dropped reads, sent again, answer by the commit timestamp (301).
        assert_eq!(s(snapshot_get(&mut c, "a1", 200)), Ok(None), "seed {seed}");
        assert_eq!(s(snapshot_get(&mut c, "a1", 400)), Ok(Some("a1-t23".into())), "seed {seed}");
        for user in USERS {
            assert_eq!(
                versions(&mut c, user),
                vec![(READ_TS + 1, format!("{user}-t23"))],
                "seed {seed}"
            );
        }
    }
}
