//! Transaction commands batched per entry (cluster version 5, `version::TXN_V3`) in the
//! simulator: three stores, one region. The commands a leader takes in one turn share
//! one Raft entry (a TXNS entry, raft/src/command.rs), and each is applied, refused
//! and answered on its own, as if it had its own entry; a crash of every store after
//! the batch was answered replays the entry to the same outcome, and the sessions of
//! its prewrites and one-phase commits still hold; at cluster version 4 every command
//! keeps its own entry.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_txn_batch`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{SessionId, StoreId};
use regionkv_raft::sim::{Pending, SimCluster, SimConfig};
use regionkv_raft::txn::mvcc;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Error, Op, SyncedTs, TxnCmd, TxnReply, TxnState, WriteSession};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, leader_of};

const TTL_MS: u64 = 60_000;
const MS: Duration = Duration::from_millis(1);
/// Commands sent to the leader in one turn.
const TURN: u64 = 64;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

/// Three stores whose newest cluster version is `version`, one region.
fn cluster(seed: u64, version: u32) -> SimCluster {
    let mut config = SimConfig::new(seed);
    for s in 1..=3 {
        config.cluster_version_max.insert(StoreId(s), version);
    }
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    c
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()) }
}

/// Transaction `txn_id` writing `key` alone (its own primary, the record with it).
fn plan(txn_id: u64, key: &str) -> TxnPlan {
    TxnPlan::new(txn_id, vec![put(key, &format!("{key}-t{txn_id}"))], TTL_MS, None)
}

fn prewrite(plan: &TxnPlan, session: Option<u64>) -> TxnCmd {
    match session {
        Some(id) => plan.prewrite_in(plan.ops.clone(), WriteSession { id: SessionId(id), seq: 1 }),
        None => plan.prewrite(plan.ops.clone()),
    }
}

/// Every answer of `pending`, waited for (a missing one fails the test).
fn answers(
    c: &mut SimCluster,
    pending: &[Pending<TxnReply>],
    what: &str,
) -> Vec<Result<TxnReply, Error>> {
    pending
        .iter()
        .map(|p| c.wait(p, 10 * SECOND).unwrap_or_else(|| panic!("{what}: no answer")))
        .collect()
}

fn done(r: &Result<TxnReply, Error>) -> bool {
    matches!(r, Ok(TxnReply::Done))
}

/// `(txn_proposed, txn_entries_proposed)` of `store`.
fn proposed(c: &SimCluster, store: StoreId) -> (u64, u64) {
    let m = c.metrics(store).expect("running");
    (m.txn_proposed, m.txn_entries_proposed)
}

/// The transaction holding `key`'s lock on `store`, if one does.
fn lock_holder(c: &SimCluster, store: StoreId, key: &str) -> Option<u64> {
    let table = c.engine(store)?.txn_table(R1)?;
    let lock = table.locks.get(key.as_bytes())?;
    Some(regionkv_engine::txn::Lock::decode(lock).expect("a readable lock").txn_id.0)
}

/// [`lock_holder`] on every store, once every replica applied what committed.
fn lock_holders(c: &mut SimCluster, key: &str) -> Vec<Option<u64>> {
    c.run_for(SECOND);
    c.store_ids().into_iter().map(|store| lock_holder(c, store, key)).collect()
}

/// 64 prewrites of 64 transactions sent to the leader in one turn: how many entries
/// they took, after every one was answered `Done` and locked its key on every store.
fn one_turn_of_prewrites(seed: u64, version: u32) -> u64 {
    let mut c = cluster(seed, version);
    let (leader, region) = leader_of(&mut c, b"k");
    let cmds = (0..TURN).map(|i| (region, prewrite(&plan(100 + i, &format!("k{i:03}")), None)));
    let before = proposed(&c, leader);
    let pending = c.txns_together(leader, cmds.collect());
    let got = answers(&mut c, &pending, &format!("seed {seed}, version {version}"));
    assert!(got.iter().all(done), "seed {seed}: {got:?}");
    let after = proposed(&c, leader);
    assert_eq!(after.0 - before.0, TURN, "seed {seed}: commands proposed");
    for i in [0, TURN / 2, TURN - 1] {
        let holders = lock_holders(&mut c, &format!("k{i:03}"));
        assert!(holders.iter().all(|h| *h == Some(100 + i)), "seed {seed}: {holders:?}");
    }
    after.1 - before.1
}

#[test]
fn the_prewrites_of_one_turn_share_one_entry() {
    for seed in seeds() {
        // Before the batch: one entry per command.
        assert_eq!(one_turn_of_prewrites(seed, 5), 1, "seed {seed}: entries");
    }
}

#[test]
fn at_cluster_version_4_every_command_keeps_its_own_entry() {
    for seed in seeds() {
        assert_eq!(one_turn_of_prewrites(seed, 4), TURN, "seed {seed}: entries");
    }
}

#[test]
fn a_refused_command_does_not_refuse_its_neighbours_in_the_batch() {
    for seed in seeds() {
        let mut c = cluster(seed, 5);
        let (leader, region) = leader_of(&mut c, b"k");
        let before = proposed(&c, leader);
        // The second meets the first's lock (applied just before it, in the same
        // round); the third names a key of the transactional keyspace in a level-1
        // prewrite; both are refused at apply, alike on every replica.
        let keyspace = String::from_utf8_lossy(&mvcc::lock_key(b"x")).into_owned();
        let mut bad = plan(203, "x").prewrite(vec![]);
        if let TxnCmd::Prewrite { ops, primary_key, .. } = &mut bad {
            *primary_key = mvcc::lock_key(b"x");
            *ops = vec![Op::Put { key: mvcc::lock_key(b"x"), value: Bytes::from("v") }];
        }
        let cmds = vec![
            (region, prewrite(&plan(201, "k1"), Some(0x5e01))),
            (region, prewrite(&plan(202, "k1"), Some(0x5e02))),
            (region, bad),
            (region, prewrite(&plan(204, "k2"), Some(0x5e04))),
        ];
        let pending = c.txns_together(leader, cmds);
        let got = answers(&mut c, &pending, &format!("seed {seed}"));
        assert_eq!(proposed(&c, leader).1 - before.1, 1, "seed {seed}: one entry");
        assert!(done(&got[0]), "seed {seed}: {:?}", got[0]);
        assert!(
            matches!(&got[1], Err(Error::Locked { txn_id: 201, .. })),
            "seed {seed}: {:?}",
            got[1]
        );
        assert!(matches!(&got[2], Err(Error::InvalidRequest(_))), "seed {seed}: {:?}", got[2]);
        assert!(done(&got[3]), "seed {seed}: {:?}", got[3]);
        assert_eq!(lock_holders(&mut c, "k1"), vec![Some(201); 3], "seed {seed}");
        assert_eq!(lock_holders(&mut c, "k2"), vec![Some(204); 3], "seed {seed}");
        assert_eq!(lock_holders(&mut c, &keyspace), vec![None; 3], "seed {seed}");
        // The refused prewrite was not numbered in its session: sent again once the
        // key is free, it applies.
        let resolve = plan(201, "k1").resolve(vec![Bytes::from("k1")], false);
        assert!(done(&common::txn_call(&mut c, b"k1", &resolve, 10 * SECOND)), "seed {seed}");
        let again = prewrite(&plan(202, "k1"), Some(0x5e02));
        assert!(done(&common::txn_call(&mut c, b"k1", &again, 10 * SECOND)), "seed {seed}");
        assert_eq!(lock_holders(&mut c, "k1"), vec![Some(202); 3], "seed {seed}");
    }
}

fn lk(user: &str) -> Bytes {
    mvcc::lock_key(user.as_bytes())
}

fn one_phase(start_ts: u64, user: &str, session: Option<WriteSession>) -> TxnCmd {
    let ops = vec![Op::Put { key: lk(user), value: Bytes::from(format!("{user}1")) }];
    TxnCmd::OnePhase { start_ts, ops, commit_ts: None, synced: None, session }
}

/// Gives the leader a timestamp (it asks for one before its first one-phase commit of
/// its term), with a one-phase commit of `user`.
fn sync_timestamps(c: &mut SimCluster, user: &str) {
    let mut synced = None;
    for _ in 0..5 {
        let cmd = TxnCmd::OnePhase {
            start_ts: 40,
            ops: vec![Op::Put { key: lk(user), value: Bytes::from("w") }],
            commit_ts: None,
            synced,
            session: None,
        };
        match common::txn_call(c, &lk(user), &cmd, SECOND) {
            Ok(TxnReply::Status(TxnState::Committed { .. })) => return,
            Err(Error::ReadTsUnsynced { term, .. }) => synced = Some(SyncedTs { term, ts: 50 }),
            other => panic!("the first one-phase commit answered {other:?}"),
        }
    }
    panic!("the leader asked for a timestamp five times");
}

/// Committed versions of `user` on `store`'s engine.
fn versions_on(c: &SimCluster, store: StoreId, user: &str) -> usize {
    let Some(engine) = c.engine(store) else { return 0 };
    let start = mvcc::version_key(user.as_bytes(), u64::MAX);
    let end = mvcc::versions_end(user.as_bytes());
    engine.read_view().scan(&start, Some(&end), 100).len()
}

#[test]
fn a_batched_entry_replayed_after_a_crash_of_every_store_keeps_its_outcome_and_sessions() {
    for seed in seeds() {
        for mode in [CrashMode::Lost, CrashMode::Persisted] {
            let what = format!("seed {seed}, {mode:?}");
            let mut c = cluster(seed, 5);
            sync_timestamps(&mut c, "warm");
            let (leader, region) = leader_of(&mut c, b"k");
            let numbered = |id| Some(WriteSession { id: SessionId(id), seq: 1 });
            let before = proposed(&c, leader);
            let cmds = vec![
                (region, prewrite(&plan(301, "k1"), Some(0x7e01))),
                (region, one_phase(100, "a", numbered(0x7e02))),
                (region, prewrite(&plan(302, "k2"), Some(0x7e03))),
                (region, one_phase(100, "b", numbered(0x7e04))),
            ];
            let pending = c.txns_together(leader, cmds.clone());
            let got = answers(&mut c, &pending, &what);
            assert_eq!(proposed(&c, leader).1 - before.1, 1, "{what}: one entry");
            assert!(done(&got[0]) && done(&got[2]), "{what}: {got:?}");
            for r in [&got[1], &got[3]] {
                assert!(
                    matches!(r, Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(_) }))),
                    "{what}: {r:?}"
                );
            }
            // Every store crashes; each replays the log from its latest checkpoint.
            for store in c.store_ids() {
                c.crash(store, mode);
            }
            c.run_for(300 * MS);
            for store in c.store_ids() {
                c.restart(store).expect("restart");
            }
            c.wait_leader(R1, 10 * SECOND).expect("a leader again");
            c.run_for(SECOND);
            sync_timestamps(&mut c, "warm-again");
            assert_eq!(lock_holders(&mut c, "k1"), vec![Some(301); 3], "{what}");
            assert_eq!(lock_holders(&mut c, "k2"), vec![Some(302); 3], "{what}");
            for store in c.store_ids() {
                assert_eq!(versions_on(&c, store, "a"), 1, "{what}: store {store:?}");
                assert_eq!(versions_on(&c, store, "b"), 1, "{what}: store {store:?}");
            }
            // The first transaction commits and its lock is resolved; then copies of
            // the whole batch, sent together again (their answers lost): the
            // prewrites' sessions answer `Done` and lock nothing, the one-phase
            // commits' answer committed and write nothing.
            let first = plan(301, "k1");
            let committed = common::txn_call(&mut c, b"k1", &first.commit(), 10 * SECOND);
            assert!(matches!(committed, Ok(TxnReply::Status(TxnState::Committed { .. }))));
            let resolve = first.resolve(vec![Bytes::from("k1")], true);
            assert!(done(&common::txn_call(&mut c, b"k1", &resolve, 10 * SECOND)), "{what}");
            assert_eq!(lock_holders(&mut c, "k1"), vec![None; 3], "{what}: resolved");
            let (leader, _) = leader_of(&mut c, b"k");
            let pending = c.txns_together(leader, cmds);
            let copies = answers(&mut c, &pending, &what);
            let no_new_version = |r: &Result<TxnReply, Error>| {
                matches!(r, Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })))
            };
            assert!(
                done(&copies[0])
                    && no_new_version(&copies[1])
                    && done(&copies[2])
                    && no_new_version(&copies[3]),
                "{what}: {copies:?}"
            );
            assert_eq!(lock_holders(&mut c, "k1"), vec![None; 3], "{what}: locked again");
            for store in c.store_ids() {
                assert_eq!(versions_on(&c, store, "a"), 1, "{what}: a second version");
            }
        }
    }
}
