//! Cross-region transactions in the simulator (ARCHITECTURE.md, "Transactions"): three
//! stores, two regions (a split at "m"), a transaction writing keys of both. A 2PC
//! following `TxnPlan` commits atomically; a crash of either region's leader (a clean
//! stop, or a power cut keeping the disk) between any two steps of the protocol, then
//! a resolver written here (check status with `abort_if_expired` on the primary once a
//! lock expired, then resolve on the lock's region), leaves every transaction all or
//! nothing, and an acknowledged commit visible. A late prewrite after a presumed abort
//! fails, a commit of an aborted transaction is `TxnAborted`, a raw write to a locked
//! key is `Locked`. A record or lock of a newer format is frozen: never decided,
//! counted on every replica, and the lock still refuses. Locks and records survive
//! checkpoints and a restart of every store. The gate: at cluster version 2 nothing is proposed; a store whose
//! binary knows only version 2 refuses a TXN entry as any kind it does not know.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_txn`; `SIM_TXN_SEEDS=<n>` runs seeds 1 to n (4 by default; each seed runs
//! the 24 crash cases, each case on its own seed, the first twice to check it replays).

mod common;

use common::two_regions::{
    Crash, KEYS, MS, TTL_MS, Victim, all_or_nothing, crash, get, parts, plan, setup,
};
use common::{leader_of, txn_call as call};

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::StoreId;
use regionkv_raft::sim::{Pending, SimCluster, SimConfig};
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Error, Op, Query, QueryResult, TxnCmd, TxnReply, TxnState};

use common::{R1, SECOND, region_for};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_TXN_SEEDS").map_or(4, |n| n.parse().expect("a number"));
    (1..=n).collect()
}

/// Proposes `cmd` at the leader of `key`'s region without waiting for it.
fn submit(c: &mut SimCluster, key: &[u8], cmd: TxnCmd) -> Pending<TxnReply> {
    let (leader, region) = leader_of(c, key);
    c.txn(leader, region, cmd)
}

/// A raw write of one key through the leader (retryable errors retried).
fn raw_put(c: &mut SimCluster, key: &[u8], value: &str) -> Result<(), Error> {
    let deadline = c.now() + 30 * SECOND;
    let op = Op::Put { key: Bytes::copy_from_slice(key), value: Bytes::from(value.to_owned()) };
    loop {
        assert!(c.now() < deadline, "no answer to a write of {key:?}");
        let (leader, region) = leader_of(c, key);
        let pending = c.write(leader, region, vec![op.clone()]);
        match c.wait(&pending, SECOND) {
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(result) => return result,
            None => {}
        }
    }
}

/// `r` with its error as text (errors are not comparable).
fn s<T>(r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// The proposing leaders' clock (the simulator's wall clock), in ms.
fn now_ms(c: &SimCluster) -> u64 {
    let store = c.store_ids().into_iter().find(|s| c.is_running(*s)).expect("a store runs");
    c.context(store).expect("running").now_ms()
}

/// The resolver of this test: reads every key; a lock met, once expired, is decided
/// through its record (check status with `abort_if_expired` on the primary's region)
/// and resolved on its own region with that outcome. Runs until no key is locked.
fn resolve_all(c: &mut SimCluster, seed: u64) {
    let deadline = c.now() + 60 * SECOND;
    loop {
        assert!(c.now() < deadline, "seed {seed}: locks left after a minute");
        let mut locked = false;
        for key in KEYS {
            let Err(e) = get(c, key.as_bytes()) else { continue };
            let Error::Locked { key, txn_id, primary_key, expires_at_ms, .. } = e else {
                panic!("seed {seed}: a get of {key} failed: {e}");
            };
            locked = true;
            if now_ms(c) <= expires_at_ms {
                continue;
            }
            let check = TxnCmd::CheckStatus {
                txn_id,
                primary_key: primary_key.clone(),
                abort_if_expired: true,
            };
            let commit = match call(c, &primary_key, &check, 10 * SECOND) {
                Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })) => true,
                Ok(TxnReply::Status(TxnState::Aborted)) => false,
                Ok(TxnReply::Status(TxnState::Pending { .. })) => continue,
                other => panic!("seed {seed}: check status of {txn_id} answered {other:?}"),
            };
            let resolve =
                TxnCmd::Resolve { txn_id, keys: vec![key.clone()], commit, commit_ts: None };
            let done = call(c, &key, &resolve, 10 * SECOND);
            assert_eq!(s(done), Ok(TxnReply::Done), "seed {seed}: resolve of {key:?}");
        }
        if !locked {
            return;
        }
        c.run_for(100 * MS);
    }
}

#[test]
fn a_two_region_transaction_commits_atomically_and_its_locks_refuse_raw_access() {
    for seed in seeds() {
        let mut c = setup(seed);
        let plan = plan(7);
        let parts = parts(&c, &plan);
        assert_eq!(parts.len(), 2, "seed {seed}: the keys span both regions");
        for (key, ops) in &parts {
            let reply = call(&mut c, key, &plan.prewrite(ops.clone()), 10 * SECOND);
            assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        }
        // Prewritten: reads and raw writes of the keys meet the locks.
        for key in KEYS {
            match get(&mut c, key.as_bytes()) {
                Err(Error::Locked { txn_id: 7, primary_key, .. }) => assert_eq!(primary_key, "a1"),
                other => panic!("seed {seed}: a get of locked {key} answered {other:?}"),
            }
        }
        match raw_put(&mut c, b"n2", "raw") {
            Err(Error::Locked { key, txn_id: 7, .. }) => assert_eq!(key, "n2"),
            other => panic!("seed {seed}: a raw write to a locked key answered {other:?}"),
        }
        let (leader, region) = leader_of(&mut c, b"n");
        let scan = Query::Scan { start: Bytes::new(), end: None, limit: 10, read_ts: None };
        let pending = c.read(leader, region, scan.clone());
        match c.wait(&pending, SECOND) {
            Some(Err(Error::Locked { key, .. })) => assert_eq!(key, "n1"),
            other => panic!("seed {seed}: a scan over locks answered {other:?}"),
        }
        // A prewrite of the same keys is idempotent; another transaction's is refused.
        let again = call(&mut c, &parts[1].0, &plan.prewrite(parts[1].1.clone()), 10 * SECOND);
        assert_eq!(s(again), Ok(TxnReply::Done), "seed {seed}");
        let other = TxnPlan::new(8, parts[1].1.clone(), TTL_MS, None);
        match call(&mut c, &parts[1].0, &other.prewrite(parts[1].1.clone()), 10 * SECOND) {
            Err(Error::Locked { txn_id: 7, .. }) => {}
            other => panic!("seed {seed}: a conflicting prewrite answered {other:?}"),
        }
        // The decision applies the primary region's locks at once.
        let reply = call(&mut c, b"a1", &plan.commit(), 10 * SECOND);
        assert_eq!(
            s(reply),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "seed {seed}"
        );
        assert_eq!(s(get(&mut c, b"a2")), Ok(Some(Bytes::from("a2-t7"))), "seed {seed}");
        assert!(matches!(get(&mut c, b"n1"), Err(Error::Locked { .. })), "seed {seed}");
        let again = call(&mut c, b"a1", &plan.commit(), 10 * SECOND);
        assert_eq!(
            s(again),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "seed {seed}: idempotent"
        );
        let keys = parts[1].1.iter().map(|op| Bytes::copy_from_slice(op.key())).collect();
        let reply = call(&mut c, &parts[1].0, &plan.resolve(keys, true), 10 * SECOND);
        assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        assert!(all_or_nothing(&mut c, 7), "seed {seed}: the commit is not visible");
        let pending = c.read(leader, region, scan);
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Rows(page))) => assert_eq!(page.rows.len(), 2, "seed {seed}"),
            other => panic!("seed {seed}: {other:?}"),
        }
        assert_eq!(s(raw_put(&mut c, b"n2", "raw")), Ok(()), "seed {seed}: resolved, writable");
        // Heartbeats and check status see a decided record as it is.
        let beat = call(&mut c, b"a1", &plan.heartbeat(), 10 * SECOND);
        assert_eq!(
            s(beat),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "seed {seed}"
        );
        // Forget deletes the decided record and raises the floor: below it, a prewrite
        // is too old.
        let forget = TxnCmd::Forget { records: vec![(Bytes::from("a1"), 7)], new_floor: 8 };
        assert_eq!(s(call(&mut c, b"a1", &forget, 10 * SECOND)), Ok(TxnReply::Done));
        let status = call(&mut c, b"a1", &plan.check_status(false), 10 * SECOND);
        assert_eq!(s(status), Ok(TxnReply::Status(TxnState::NotFound { floor: 8 })));
        match call(&mut c, b"a1", &plan.prewrite(parts[0].1.clone()), 10 * SECOND) {
            Err(Error::TxnTooOld { txn_id: 7, floor: 8 }) => {}
            other => panic!("seed {seed}: a prewrite below the floor answered {other:?}"),
        }
        assert_eq!(c.metrics(leader).unwrap().txn_frozen, 0, "seed {seed}");
    }
}

#[test]
fn a_late_prewrite_after_a_presumed_abort_fails_and_a_commit_of_an_aborted_txn_is_aborted() {
    for seed in seeds() {
        let mut c = setup(seed);
        let plan = plan(11);
        let parts = parts(&c, &plan);
        // Only the participant's part is prewritten; its lock expires.
        let reply = call(&mut c, &parts[1].0, &plan.prewrite(parts[1].1.clone()), 10 * SECOND);
        assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        let alive = call(&mut c, b"a1", &plan.check_status(false), 10 * SECOND);
        assert_eq!(s(alive), Ok(TxnReply::Status(TxnState::NotFound { floor: 0 })), "seed {seed}");
        c.run_for(Duration::from_millis(2 * TTL_MS));
        resolve_all(&mut c, seed);
        assert!(!all_or_nothing(&mut c, 11), "seed {seed}");
        // The presumed abort left a tombstone: the primary's prewrite is refused.
        match call(&mut c, b"a1", &plan.prewrite(parts[0].1.clone()), 10 * SECOND) {
            Err(Error::TxnAborted { txn_id: 11 }) => {}
            other => panic!("seed {seed}: a late prewrite answered {other:?}"),
        }
        match call(&mut c, b"a1", &plan.commit(), 10 * SECOND) {
            Err(Error::TxnAborted { txn_id: 11 }) => {}
            other => panic!("seed {seed}: a commit after the abort answered {other:?}"),
        }
        // A transaction prewritten whole but aborted once expired: its commit too.
        let plan = self::plan(12);
        for (key, ops) in &parts {
            let reply = call(&mut c, key, &plan.prewrite(ops.clone()), 10 * SECOND);
            assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        }
        let early = call(&mut c, b"a1", &plan.check_status(true), 10 * SECOND);
        assert!(
            matches!(early, Ok(TxnReply::Status(TxnState::Pending { .. }))),
            "seed {seed}: alive, not aborted: {early:?}"
        );
        c.run_for(Duration::from_millis(2 * TTL_MS));
        let aborted = call(&mut c, b"a1", &plan.check_status(true), 10 * SECOND);
        assert_eq!(s(aborted), Ok(TxnReply::Status(TxnState::Aborted)), "seed {seed}");
        match call(&mut c, b"a1", &plan.commit(), 10 * SECOND) {
            Err(Error::TxnAborted { txn_id: 12 }) => {}
            other => panic!("seed {seed}: a commit of an aborted txn answered {other:?}"),
        }
        resolve_all(&mut c, seed);
        assert!(!all_or_nothing(&mut c, 12), "seed {seed}");
    }
}

/// Where the coordinator stops and a leader crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// After this many regions' prewrites (0: before any; 2: all).
    Prewrites(usize),
    /// The commit proposed, its outcome not awaited.
    CommitProposed,
    /// The commit acknowledged, no resolve sent.
    Committed,
    /// The participant's first key resolved, not its second.
    MidResolve,
}

/// Runs transaction `txn_id` until `step`, crashes `victim`'s leader there, abandons
/// the coordinator, lets the resolver finish; checks all or nothing, and that an
/// acknowledged commit is visible. Returns the run's trace hash.
fn crash_at(seed: u64, step: Step, victim: Victim, how: Crash) -> u64 {
    let mut c = setup(seed);
    let txn_id = 20;
    let plan = plan(txn_id);
    let parts = parts(&c, &plan);
    let what = format!("seed {seed}, crash of the {victim:?} leader ({how:?}) at {step:?}");
    let mut acknowledged = false;
    'run: {
        for (i, (key, ops)) in parts.iter().enumerate() {
            if step == Step::Prewrites(i) {
                break 'run;
            }
            let reply = call(&mut c, key, &plan.prewrite(ops.clone()), 10 * SECOND);
            assert_eq!(s(reply), Ok(TxnReply::Done), "{what}");
        }
        if step == Step::Prewrites(parts.len()) {
            break 'run;
        }
        if step == Step::CommitProposed {
            let _outcome_unknown = submit(&mut c, b"a1", plan.commit());
            break 'run;
        }
        let reply = call(&mut c, b"a1", &plan.commit(), 10 * SECOND);
        assert_eq!(
            s(reply),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "{what}"
        );
        acknowledged = true;
        if step == Step::Committed {
            break 'run;
        }
        let first = Bytes::copy_from_slice(parts[1].1[0].key());
        let reply = call(&mut c, &parts[1].0, &plan.resolve(vec![first], true), 10 * SECOND);
        assert_eq!(s(reply), Ok(TxnReply::Done), "{what}");
    }
    crash(&mut c, victim, how);
    c.run_for(Duration::from_millis(2 * TTL_MS));
    resolve_all(&mut c, seed);
    let committed = all_or_nothing(&mut c, txn_id);
    assert!(committed || !acknowledged, "{what}: an acknowledged commit is lost");
    if matches!(step, Step::Prewrites(_)) {
        assert!(!committed, "{what}: committed without a commit");
    }
    // Every decision is final: the record answers the same again.
    let status = call(&mut c, b"a1", &plan.check_status(true), 10 * SECOND);
    let expected =
        if committed { TxnState::Committed { commit_ts: None } } else { TxnState::Aborted };
    assert_eq!(s(status), Ok(TxnReply::Status(expected)), "{what}");
    c.trace_hash()
}

#[test]
fn a_leader_crash_between_any_two_steps_leaves_the_transaction_all_or_nothing() {
    let steps = [
        Step::Prewrites(0),
        Step::Prewrites(1),
        Step::Prewrites(2),
        Step::CommitProposed,
        Step::Committed,
        Step::MidResolve,
    ];
    for seed in seeds() {
        let mut case = 0;
        for step in steps {
            for victim in [Victim::Primary, Victim::Participant] {
                for how in [Crash::Stop, Crash::PowerCut] {
                    // Each case its own seed: more schedules for the same run time.
                    let trace = crash_at(seed * 1000 + case, step, victim, how);
                    if case == 0 {
                        let again = crash_at(seed * 1000, step, victim, how);
                        assert_eq!(trace, again, "seed {seed}: the run does not replay");
                    }
                    case += 1;
                }
            }
        }
    }
}

#[test]
fn at_cluster_version_2_txn_commands_are_refused_and_nothing_is_proposed() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        for s in 1..=3 {
            config.cluster_version_max.insert(StoreId(s), 2);
        }
        let mut c = SimCluster::new(config).unwrap();
        let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
        assert!(common::put(&mut c, "k", "v", 10 * SECOND), "seed {seed}");
        c.run_for(SECOND);
        let last = |c: &SimCluster| {
            c.status(leader).into_iter().find(|p| p.region.id == R1).map(|p| p.last_index)
        };
        let before = last(&c);
        let pending = c.txn(leader, R1, plan(1).prewrite(plan(1).ops));
        match pending.take() {
            Some(Err(Error::FeatureNotActive { needed: 3, .. })) => {}
            other => panic!("seed {seed}: a TXN command at version 2 answered {other:?}"),
        }
        assert_eq!(last(&c), before, "seed {seed}: something was proposed");
        assert_eq!(s(get(&mut c, b"k")), Ok(Some(Bytes::from("v"))), "seed {seed}");
    }
}

#[test]
fn a_store_that_knows_version_2_only_refuses_a_txn_entry_as_an_unknown_kind() {
    const OLD: StoreId = StoreId(3);
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        config.cluster_version_max.insert(OLD, 2);
        let mut c = SimCluster::new(config).unwrap();
        c.wait_leader(R1, 10 * SECOND).expect("a leader");
        // As a forged or premature command would: stores 1 and 2 learn version 3
        // without a finalize; store 3 (the cluster's view: 2) does not.
        for s in [StoreId(1), StoreId(2)] {
            c.learn_cluster_version(s, 3);
        }
        let leader = loop {
            let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
            if leader != OLD {
                break leader;
            }
            let to = regionkv_engine::PeerId(1);
            c.transfer_leader(OLD, R1, to);
            c.run_for(500 * MS);
        };
        let prewrite = plan(1).prewrite(vec![Op::Put { key: "k".into(), value: "v".into() }]);
        let pending = c.txn(leader, R1, prewrite);
        let reply = c.wait(&pending, 10 * SECOND);
        assert_eq!(reply.map(s), Some(Ok(TxnReply::Done)), "seed {seed}");
        let applied = |c: &mut SimCluster| {
            let at = |s| c.status(s).into_iter().find(|p| p.region.id == R1).unwrap().applied;
            at(OLD) >= at(leader)
        };
        assert!(c.run_until(10 * SECOND, applied), "seed {seed}: store 3 did not catch up");
        assert!(c.is_running(OLD), "seed {seed}: the store stopped");
        assert_eq!(c.metrics(OLD).unwrap().unknown_kinds_refused, 1, "seed {seed}");
        for s in [StoreId(1), StoreId(2)] {
            assert_eq!(c.metrics(s).unwrap().unknown_kinds_refused, 0, "seed {seed}");
        }
    }
}

#[test]
fn entries_this_binary_cannot_read_are_frozen_never_decided() {
    for seed in seeds() {
        let mut c = setup(seed);
        let region = region_for(&c, b"a1").expect("routed").id;
        // A record and a lock of a newer format on every replica, as a newer binary
        // would leave them after a downgrade (written behind Raft's back).
        let record = Bytes::from_static(&[3, 0xde, 0xad]);
        let lock = Bytes::from_static(&[3, 0xbe, 0xef]);
        for store in c.store_ids() {
            let epoch = c.region(store, region).expect("hosted").epoch;
            let engine = c.engine(store).expect("running");
            let mut round = engine.begin_round();
            round.prepare_for_region(region, epoch).unwrap();
            round.set_txn_record(b"a1", 30, Some(record.clone())).unwrap();
            round.set_txn_lock(b"a2", Some(lock.clone())).unwrap();
            round.commit().unwrap();
        }
        let frozen = || TxnReply::Status(TxnState::Frozen { reason: "too_new".into() });
        let commit = TxnCmd::Commit { txn_id: 30, primary_key: Bytes::from("a1"), commit_ts: None };
        assert_eq!(s(call(&mut c, b"a1", &commit, 10 * SECOND)), Ok(frozen()), "seed {seed}");
        let check = TxnCmd::CheckStatus {
            txn_id: 30,
            primary_key: Bytes::from("a1"),
            abort_if_expired: true,
        };
        assert_eq!(s(call(&mut c, b"a1", &check, 10 * SECOND)), Ok(frozen()), "seed {seed}");
        let resolve = TxnCmd::Resolve {
            txn_id: 30,
            keys: vec![Bytes::from("a2")],
            commit: true,
            commit_ts: None,
        };
        assert_eq!(s(call(&mut c, b"a2", &resolve, 10 * SECOND)), Ok(frozen()), "seed {seed}");
        // The unreadable lock still refuses, names no holder and never expires.
        for refused in [raw_put(&mut c, b"a2", "raw").err(), get(&mut c, b"a2").err()] {
            match refused {
                Some(Error::Locked { txn_id: 0, expires_at_ms: u64::MAX, .. }) => {}
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        // Every replica met three frozen entries and kept both as they were.
        let counted = |c: &mut SimCluster| {
            c.store_ids().into_iter().all(|s| c.metrics(s).is_some_and(|m| m.txn_frozen == 3))
        };
        assert!(c.run_until(10 * SECOND, counted), "seed {seed}: not counted everywhere");
        for store in c.store_ids() {
            let table = c.engine(store).unwrap().txn_table(region).expect("hosted");
            assert_eq!(table.records.get(&(Bytes::from("a1"), 30)), Some(&record), "seed {seed}");
            assert_eq!(table.locks.get(&Bytes::from("a2")), Some(&lock), "seed {seed}");
        }
    }
}

#[test]
fn locks_and_records_survive_checkpoints_and_a_restart_of_every_store() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        config.checkpoint_log_bytes = 4 << 10;
        let mut c = SimCluster::new(config).unwrap();
        c.wait_leader(R1, 10 * SECOND).expect("a leader");
        common::split(&mut c, R1, &["m"]).expect("split");
        common::converge(&mut c);
        for key in KEYS {
            assert!(common::put(&mut c, key, "old", 10 * SECOND), "seed {seed}");
        }
        // Transaction 40 prewritten (pending); 41 committed, not resolved.
        let pending = plan(40);
        let parts = parts(&c, &pending);
        let reply = call(&mut c, &parts[0].0, &pending.prewrite(parts[0].1.clone()), 10 * SECOND);
        assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        let only_n1 = vec![Op::Put { key: "n1".into(), value: "n1-t41".into() }];
        let record = TxnCmd::Prewrite {
            min_commit: None,
            txn_id: 41,
            primary_key: "n1".into(),
            ops: only_n1,
            ttl_ms: 60_000,
            record: Some(regionkv_raft::RecordInit {
                participants: vec!["n1".into(), "n2".into()],
                coordinator: None,
                staging: false,
            }),
            start_ts: None,
            session: None,
        };
        assert_eq!(s(call(&mut c, b"n1", &record, 10 * SECOND)), Ok(TxnReply::Done));
        let commit = TxnCmd::Commit { txn_id: 41, primary_key: "n1".into(), commit_ts: None };
        let reply = call(&mut c, b"n1", &commit, 10 * SECOND);
        assert_eq!(
            s(reply),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "seed {seed}"
        );
        // Enough log in both regions for checkpoints, then every store restarts.
        for i in 0..60 {
            for prefix in ["b", "o"] {
                let key = format!("{prefix}{i:03}");
                assert!(common::put(&mut c, &key, &"x".repeat(200), 10 * SECOND));
            }
        }
        for store in c.store_ids() {
            c.stop(store);
        }
        for store in c.store_ids() {
            c.restart(store).expect("restart");
        }
        for key in ["a1", "a2"] {
            match get(&mut c, key.as_bytes()) {
                Err(Error::Locked { txn_id: 40, .. }) => {}
                other => panic!("seed {seed}: {key} after the restart: {other:?}"),
            }
        }
        let check =
            TxnCmd::CheckStatus { txn_id: 41, primary_key: "n1".into(), abort_if_expired: true };
        let status = call(&mut c, b"n1", &check, 10 * SECOND);
        assert_eq!(
            s(status),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "seed {seed}"
        );
        assert_eq!(s(get(&mut c, b"n1")), Ok(Some(Bytes::from("n1-t41"))), "seed {seed}");
        let alive = call(&mut c, b"a1", &pending.check_status(false), 10 * SECOND);
        assert!(
            matches!(alive, Ok(TxnReply::Status(TxnState::Pending { .. }))),
            "seed {seed}: {alive:?}"
        );
    }
}
