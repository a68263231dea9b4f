//! Async commit in the simulator (`regionkv_raft::txn::staging`; ARCHITECTURE.md,
//! "Async commit"): three stores, two regions (a split at "m"), a transaction writing
//! keys of both, its record created `Staging` by the primary's prewrite. Every
//! prewrite applied is the commit (acknowledged); then the record is decided and the
//! locks resolved by `ResolveMany`. A crash of either region's leader (a clean stop,
//! or a power cut keeping the disk) between every two steps, the coordinator
//! abandoned there, then a resolver written here (the participant check on an
//! expired staging record): all or nothing, and an acknowledged transaction
//! committed. A prewrite that arrives after the check prevented its key is refused
//! and the transaction ends aborted; the check racing the coordinator's own decision
//! ends committed either way; a store configured for cluster version 3 freezes a
//! staging record; at version 3 nothing of async commit is proposed.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_async_commit`; `SIM_TXN_SEEDS=<n>` runs seeds 1 to n (2 by default).

mod common;

use common::two_regions::{
    self, Crash, KEYS, MS, TTL_MS, Victim, all_or_nothing, crash, get, parts, setup,
};
use common::{leader_of, txn_call as call};

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::StoreId;
use regionkv_engine::txn::{TxnId, TxnRecord, TxnStatus};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::txn::staging;
use regionkv_raft::{Error, Op, TxnCmd, TxnReply, TxnState};

use common::{R1, SECOND};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_TXN_SEEDS").map_or(2, |n| n.parse().expect("a number"));
    (1..=n).collect()
}

fn plan(txn_id: u64) -> TxnPlan {
    two_regions::plan(txn_id).with_staging(true)
}

fn keys_of(ops: &[Op]) -> Vec<Bytes> {
    ops.iter().map(|op| Bytes::copy_from_slice(op.key())).collect()
}

fn s<T>(r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn now_ms(c: &SimCluster) -> u64 {
    let store = c.store_ids().into_iter().find(|s| c.is_running(*s)).expect("a store runs");
    c.context(store).expect("running").now_ms()
}

/// The participant check of a staging record, as a reader or the daemon runs it:
/// every key but the primary asked on its region; all locked: commit, else abort.
/// The record's state after.
fn settle(c: &mut SimCluster, txn_id: u64, primary: &Bytes, participants: &[Bytes]) -> TxnState {
    let mut all_locked = Vec::new();
    for key in staging::check_keys(participants, primary) {
        let check = TxnCmd::CheckLocks { txn_id, keys: vec![key.clone()] };
        match call(c, &key, &check, 10 * SECOND) {
            Ok(TxnReply::Checked { all_locked: locked, .. }) => all_locked.push(locked),
            other => panic!("a participant check of {key:?} answered {other:?}"),
        }
    }
    let commit = staging::decision_of_check(all_locked);
    let decide = staging::decide(txn_id, primary.clone(), Vec::new(), commit);
    let reply = call(c, primary, &decide, 10 * SECOND).expect("decided");
    staging::decided_state(&reply).expect("a state")
}

/// Reads every key; a lock met is decided through its record (a staging record past
/// its TTL by the participant check) and resolved. Runs until no key is locked.
fn resolve_all(c: &mut SimCluster, seed: u64) {
    let deadline = c.now() + 60 * SECOND;
    loop {
        assert!(c.now() < deadline, "seed {seed}: locks left after a minute");
        let mut locked = false;
        for key in KEYS {
            let Err(e) = get(c, key.as_bytes()) else { continue };
            let Error::Locked { key, txn_id, primary_key, .. } = e else {
                panic!("seed {seed}: a get of {key} failed: {e}");
            };
            locked = true;
            let check = TxnCmd::CheckStatus {
                txn_id,
                primary_key: primary_key.clone(),
                abort_if_expired: true,
            };
            let state = match call(c, &primary_key, &check, 10 * SECOND) {
                Ok(TxnReply::Status(TxnState::Staging { expires_at_ms, participants })) => {
                    if now_ms(c) <= expires_at_ms {
                        continue;
                    }
                    settle(c, txn_id, &primary_key, &participants)
                }
                Ok(TxnReply::Status(state)) => state,
                other => panic!("seed {seed}: check status of {txn_id} answered {other:?}"),
            };
            let commit = match state {
                TxnState::Committed { commit_ts: None } => true,
                TxnState::Aborted => false,
                other => panic!("seed {seed}: {txn_id} is {other:?}"),
            };
            let resolve =
                TxnCmd::Resolve { txn_id, keys: vec![key.clone()], commit, commit_ts: None };
            assert_eq!(s(call(c, &key, &resolve, 10 * SECOND)), Ok(TxnReply::Done));
        }
        if !locked {
            return;
        }
        c.run_for(100 * MS);
    }
}

/// Where the coordinator stops and a leader crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// After this many regions' prewrites (0: before any; 2: all, acknowledged).
    Prewrites(usize),
    /// The decision proposed, its outcome not awaited.
    DecideProposed,
    /// The decision applied (the primary's region resolved), not the other region.
    Decided,
    /// The other region's batched resolve proposed, not awaited.
    ResolveProposed,
}

fn crash_at(seed: u64, step: Step, victim: Victim, how: Crash) -> u64 {
    let mut c = setup(seed);
    let txn_id = 20;
    let plan = plan(txn_id);
    let parts = parts(&c, &plan);
    assert_eq!(parts.len(), 2, "seed {seed}: the keys span both regions");
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
        // Every prewrite applied: the caller is answered.
        acknowledged = true;
        if step == Step::Prewrites(parts.len()) {
            break 'run;
        }
        if step == Step::DecideProposed {
            let (leader, region) = leader_of(&mut c, b"a1");
            let _outcome_unknown = c.txn(leader, region, plan.decide(true));
            break 'run;
        }
        let reply = call(&mut c, b"a1", &plan.decide(true), 10 * SECOND).expect("decided");
        let state = staging::decided_state(&reply);
        assert_eq!(state, Some(TxnState::Committed { commit_ts: None }), "{what}");
        assert_eq!(s(get(&mut c, b"a2")), Ok(Some(Bytes::from("a2-t20"))), "{what}");
        if step == Step::Decided {
            break 'run;
        }
        let item = plan.resolve_item(keys_of(&parts[1].1), true);
        let (leader, region) = leader_of(&mut c, &parts[1].0);
        let _outcome_unknown = c.txn(leader, region, TxnCmd::ResolveMany { items: vec![item] });
    }
    crash(&mut c, victim, how);
    c.run_for(Duration::from_millis(2 * TTL_MS));
    resolve_all(&mut c, seed);
    let committed = all_or_nothing(&mut c, txn_id);
    assert!(committed || !acknowledged, "{what}: an acknowledged transaction is lost");
    if matches!(step, Step::Prewrites(0 | 1)) {
        assert!(!committed, "{what}: committed without every prewrite");
    }
    let status = call(&mut c, b"a1", &plan.check_status(true), 10 * SECOND);
    let expected =
        if committed { TxnState::Committed { commit_ts: None } } else { TxnState::Aborted };
    assert_eq!(s(status), Ok(TxnReply::Status(expected)), "{what}");
    c.trace_hash()
}

#[test]
fn a_crash_between_any_two_steps_of_async_commit_leaves_all_or_nothing() {
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
            for victim in [Victim::Primary, Victim::Participant] {
                for how in [Crash::Stop, Crash::PowerCut] {
                    let case_seed = seed * 1000 + case;
                    let hash = crash_at(case_seed, step, victim, how);
                    if case == 0 {
                        assert_eq!(hash, crash_at(case_seed, step, victim, how), "replay");
                    }
                    case += 1;
                }
            }
        }
    }
}

#[test]
fn a_prewrite_after_the_check_prevented_its_key_is_refused_and_the_txn_aborts() {
    for seed in seeds() {
        let mut c = setup(seed);
        let plan = plan(11);
        let parts = parts(&c, &plan);
        let reply = call(&mut c, &parts[0].0, &plan.prewrite(parts[0].1.clone()), 10 * SECOND);
        assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        // Alive: the check status answers staging, and never aborts it by time.
        c.run_for(Duration::from_millis(2 * TTL_MS));
        let state = call(&mut c, b"a1", &plan.check_status(true), 10 * SECOND);
        let Ok(TxnReply::Status(TxnState::Staging { participants, .. })) = state else {
            panic!("seed {seed}: an expired staging record answered {state:?}");
        };
        assert_eq!(participants, plan.keys(), "seed {seed}");
        // The check finds n1 and n2 unlocked, prevents them, and the record aborts.
        let state = settle(&mut c, 11, &Bytes::from("a1"), &participants);
        assert_eq!(state, TxnState::Aborted, "seed {seed}");
        match call(&mut c, &parts[1].0, &plan.prewrite(parts[1].1.clone()), 10 * SECOND) {
            Err(Error::TxnAborted { txn_id: 11 }) => {}
            other => panic!("seed {seed}: a prevented prewrite answered {other:?}"),
        }
        // The coordinator's own decision comes too late.
        let reply = call(&mut c, b"a1", &plan.decide(true), 10 * SECOND).expect("answered");
        assert_eq!(staging::decided_state(&reply), Some(TxnState::Aborted), "seed {seed}");
        resolve_all(&mut c, seed);
        assert!(!all_or_nothing(&mut c, 11), "seed {seed}");
    }
}

#[test]
fn the_participant_check_racing_the_coordinators_decision_ends_committed() {
    for seed in seeds() {
        // (a) The check first: all locked, it commits; the coordinator's decision then
        // finds the record committed.
        let mut c = setup(seed);
        let plan = plan(12);
        let parts = parts(&c, &plan);
        for (key, ops) in &parts {
            let reply = call(&mut c, key, &plan.prewrite(ops.clone()), 10 * SECOND);
            assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        }
        let (leader, region) = leader_of(&mut c, b"a1");
        let check = TxnCmd::CheckLocks { txn_id: 12, keys: keys_of(&parts[1].1) };
        let checked = call(&mut c, &parts[1].0, &check, 10 * SECOND);
        assert_eq!(
            s(checked),
            Ok(TxnReply::Checked { all_locked: true, min_commit_ts: None }),
            "seed {seed}"
        );
        // Both decisions in flight at once: whichever applies first, committed.
        let coordinator = c.txn(leader, region, plan.decide(true));
        let by_checker = c.txn(leader, region, staging::decide(12, "a1".into(), vec![], true));
        for pending in [coordinator, by_checker] {
            let reply = c.wait(&pending, 10 * SECOND).expect("answered").expect("applied");
            let state = staging::decided_state(&reply);
            assert_eq!(state, Some(TxnState::Committed { commit_ts: None }), "seed {seed}");
        }
        resolve_all(&mut c, seed);
        assert!(all_or_nothing(&mut c, 12), "seed {seed}");

        // (b) The coordinator first: decided and the other region resolved; a late
        // checker that read `Staging` before finds n1 unlocked (resolved), prevents
        // it, and its abort finds the record committed.
        let plan = self::plan(13);
        let parts = self::parts(&c, &plan);
        for (key, ops) in &parts {
            let reply = call(&mut c, key, &plan.prewrite(ops.clone()), 10 * SECOND);
            assert_eq!(s(reply), Ok(TxnReply::Done), "seed {seed}");
        }
        let reply = call(&mut c, b"a1", &plan.decide(true), 10 * SECOND).expect("decided");
        let committed = Some(TxnState::Committed { commit_ts: None });
        assert_eq!(staging::decided_state(&reply), committed, "seed {seed}");
        let item = plan.resolve_item(keys_of(&parts[1].1), true);
        let resolved =
            call(&mut c, &parts[1].0, &TxnCmd::ResolveMany { items: vec![item] }, 10 * SECOND);
        assert_eq!(s(resolved), Ok(TxnReply::Resolved(vec![None])), "seed {seed}");
        let state = settle(&mut c, 13, &Bytes::from("a1"), &plan.keys());
        assert_eq!(Some(state), committed, "seed {seed}: a late check undid a commit");
        assert!(all_or_nothing(&mut c, 13), "seed {seed}");
        // ResolveMany was counted where it was proposed.
        let batches: u64 =
            c.store_ids().iter().filter_map(|s| c.metrics(*s)).map(|m| m.txn_resolve_batches).sum();
        assert!(batches >= 4, "seed {seed}: {batches} batches counted");
    }
}

#[test]
fn a_store_of_cluster_version_3_freezes_a_staging_record() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        for s in 1..=3 {
            config.cluster_version_max.insert(StoreId(s), 3);
        }
        let mut c = SimCluster::new(config).unwrap();
        c.wait_leader(R1, 10 * SECOND).expect("a leader");
        assert!(common::put(&mut c, "a1", "old", 10 * SECOND), "seed {seed}");
        // A staging record on every replica, as a version-4 binary leaves it after a
        // downgrade (written behind Raft's back), long expired.
        let record = TxnRecord {
            min_commit_ts: None,
            txn_id: TxnId(30),
            status: TxnStatus::Staging,
            primary_key: Bytes::from("a1"),
            participants: vec![Bytes::from("a1"), Bytes::from("z")],
            created_at_ms: 1,
            ttl_ms: 1,
            last_heartbeat_ms: 1,
            coordinator: None,
            decided_at_index: None,
            start_ts: None,
            commit_ts: None,
        };
        for store in c.store_ids() {
            let epoch = c.region(store, R1).expect("hosted").epoch;
            let engine = c.engine(store).expect("running");
            let mut round = engine.begin_round();
            round.prepare_for_region(R1, epoch).unwrap();
            round.set_txn_record(b"a1", 30, Some(Bytes::from(record.encode()))).unwrap();
            round.commit().unwrap();
        }
        let frozen = TxnReply::Status(TxnState::Frozen { reason: "unknown_status".into() });
        let check = TxnCmd::CheckStatus {
            txn_id: 30,
            primary_key: Bytes::from("a1"),
            abort_if_expired: true,
        };
        assert_eq!(s(call(&mut c, b"a1", &check, 10 * SECOND)), Ok(frozen.clone()), "seed {seed}");
        let commit = TxnCmd::Commit { txn_id: 30, primary_key: Bytes::from("a1"), commit_ts: None };
        assert_eq!(s(call(&mut c, b"a1", &commit, 10 * SECOND)), Ok(frozen), "seed {seed}");
        let forget = TxnCmd::Forget { records: vec![(Bytes::from("a1"), 30)], new_floor: 0 };
        assert_eq!(s(call(&mut c, b"a1", &forget, 10 * SECOND)), Ok(TxnReply::Done));
        c.run_for(SECOND);
        for store in c.store_ids() {
            let table = c.engine(store).expect("running").txn_table(R1).expect("a table");
            let kept = table.records.get(&(Bytes::from("a1"), 30));
            assert_eq!(kept.map(|b| b.to_vec()), Some(record.encode()), "seed {seed}: {store:?}");
            assert!(c.metrics(store).unwrap().txn_frozen >= 3, "seed {seed}: {store:?}");
        }
        // At version 3 nothing of async commit is proposed.
        let (leader, region) = leader_of(&mut c, b"a1");
        let staged =
            TxnPlan::new(31, vec![Op::Put { key: "a1".into(), value: "v".into() }], TTL_MS, None)
                .with_staging(true);
        for cmd in [
            staged.prewrite(staged.ops.clone()),
            staged.decide(true),
            TxnCmd::CheckLocks { txn_id: 31, keys: vec!["a1".into()] },
        ] {
            let pending = c.txn(leader, region, cmd);
            match pending.take() {
                Some(Err(Error::FeatureNotActive { needed: 4, .. })) => {}
                other => panic!("seed {seed}: an async-commit command at version 3: {other:?}"),
            }
        }
    }
}
