//! Exactly-once prewrites in the simulator (ARCHITECTURE.md, "Exactly once"): three
//! stores, two regions (a split at "m"), a transaction writing "a1" (the primary) and
//! "n1" (the other region). A copy of the secondary's prewrite that is proposed again
//! after the transaction committed and its lock was resolved (a request that sat in a
//! queue while the client went on) must not lock the key again: a reader would
//! resolve that lock through the record (committed) and write the old value over a
//! newer one. With a session, the region answers the copy `Done` and locks nothing;
//! a copy before the resolve is idempotent as before; a prewrite without a session,
//! and one at cluster version 3 (its session left out by the proposer), apply as
//! they always did.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_txn_once`; `SIM_TXN_SEEDS=<n>` runs seeds 1 to n (2 by default).

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{SessionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Error, Op, Query, QueryResult, TxnCmd, TxnReply, TxnState, WriteSession};

use common::{R1, SECOND, leader_of, region_for, txn_call as call};

const TTL_MS: u64 = 60_000;
const MS: Duration = Duration::from_millis(1);
const PRIMARY: &str = "a1";
const SECONDARY: &str = "n1";

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_TXN_SEEDS").map_or(2, |n| n.parse().expect("a number"));
    (1..=n).collect()
}

/// Three stores (`version` their newest cluster version), regions split at "m", both
/// keys written "old".
fn setup(seed: u64, version: u32) -> SimCluster {
    let mut config = SimConfig::new(seed);
    for s in 1..=3 {
        config.cluster_version_max.insert(StoreId(s), version);
    }
    let mut c = SimCluster::new(config).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    common::split(&mut c, R1, &["m"]).expect("split");
    common::converge(&mut c);
    for key in [PRIMARY, SECONDARY] {
        assert!(common::put(&mut c, key, "old", 10 * SECOND), "seed {seed}: {key} not written");
    }
    c
}

fn plan(txn_id: u64) -> TxnPlan {
    let ops = [PRIMARY, SECONDARY]
        .iter()
        .map(|k| Op::Put { key: Bytes::from(*k), value: Bytes::from(format!("{k}-t{txn_id}")) })
        .collect();
    TxnPlan::new(txn_id, ops, TTL_MS, None)
}

/// The prewrite of `key`'s part of `plan`, numbered `seq` in session `session` (or
/// without a session).
fn prewrite(plan: &TxnPlan, key: &str, session: Option<(u64, u64)>) -> TxnCmd {
    let ops = plan.ops.iter().filter(|op| op.key() == key.as_bytes()).cloned().collect();
    match session {
        Some((id, seq)) => plan.prewrite_in(ops, WriteSession { id: SessionId(id), seq }),
        None => plan.prewrite(ops),
    }
}

/// A linearizable get through the leader (retryable errors retried): the value, or
/// the refusal (`Locked`).
fn get(c: &mut SimCluster, key: &str) -> Result<Option<Bytes>, Error> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a get of {key}");
        let (leader, region) = leader_of(c, key.as_bytes());
        let pending =
            c.read(leader, region, Query::Get { key: Bytes::from(key.to_owned()), read_ts: None });
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Value(v))) => return Ok(v),
            Some(Ok(other)) => panic!("a get answered {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
}

/// A get as a reader does it: a lock met is resolved through its record (decided:
/// resolved by the decision) and the key read again.
fn read(c: &mut SimCluster, key: &str, seed: u64) -> Option<Bytes> {
    let e = match get(c, key) {
        Ok(v) => return v,
        Err(e) => e,
    };
    let Error::Locked { key: locked, txn_id, primary_key, .. } = e else {
        panic!("seed {seed}: a get of {key} failed: {e}");
    };
    let check =
        TxnCmd::CheckStatus { txn_id, primary_key: primary_key.clone(), abort_if_expired: false };
    let commit = match call(c, &primary_key, &check, 10 * SECOND) {
        Ok(TxnReply::Status(TxnState::Committed { .. })) => true,
        Ok(TxnReply::Status(TxnState::Aborted)) => false,
        other => panic!("seed {seed}: check status of {txn_id} answered {other:?}"),
    };
    let resolve = TxnCmd::Resolve { txn_id, keys: vec![locked.clone()], commit, commit_ts: None };
    let done = call(c, &locked, &resolve, 10 * SECOND).map_err(|e| e.to_string());
    assert_eq!(done, Ok(TxnReply::Done), "seed {seed}: resolve of {key}");
    get(c, key).expect("resolved")
}

/// True if a lock of `key` is in its region's table on any store (after the cluster
/// ran a while, so that every replica applied what was committed).
fn locked_anywhere(c: &mut SimCluster, key: &str) -> bool {
    c.run_for(SECOND);
    let region = region_for(c, key.as_bytes()).expect("routed").id;
    c.store_ids().into_iter().any(|store| {
        c.engine(store)
            .and_then(|e| e.txn_table(region))
            .is_some_and(|t| t.locks.contains_key(key.as_bytes()))
    })
}

/// Transaction `plan` prewritten (the primary's part numbered (`id`, 1), the
/// secondary's `secondary`), committed, and the secondary's lock resolved.
fn commit_and_resolve(
    c: &mut SimCluster,
    plan: &TxnPlan,
    secondary: Option<(u64, u64)>,
    seed: u64,
) {
    let done = Ok(TxnReply::Done);
    let primary = prewrite(plan, PRIMARY, secondary.map(|(id, _)| (id + 1, 1)));
    assert_eq!(call(c, PRIMARY.as_bytes(), &primary, 10 * SECOND).map_err(|e| e.to_string()), done);
    let second = prewrite(plan, SECONDARY, secondary);
    assert_eq!(
        call(c, SECONDARY.as_bytes(), &second, 10 * SECOND).map_err(|e| e.to_string()),
        done
    );
    let committed = call(c, PRIMARY.as_bytes(), &plan.commit(), 10 * SECOND);
    assert!(
        matches!(committed, Ok(TxnReply::Status(TxnState::Committed { .. }))),
        "seed {seed}: commit answered {committed:?}"
    );
    let resolve = plan.resolve(vec![Bytes::from(SECONDARY)], true);
    let resolved = call(c, SECONDARY.as_bytes(), &resolve, 10 * SECOND);
    assert_eq!(resolved.map_err(|e| e.to_string()), done, "seed {seed}");
    assert!(!locked_anywhere(c, SECONDARY), "seed {seed}: resolved");
}

/// A raw write of `key` after the transaction, then the same prewrite of the
/// secondary proposed again: is the key locked afterwards, and what does a reader
/// (resolving what it meets) read?
fn late_copy(
    c: &mut SimCluster,
    plan: &TxnPlan,
    secondary: Option<(u64, u64)>,
    seed: u64,
) -> (bool, Option<Bytes>) {
    assert!(common::put(c, SECONDARY, "newer", 10 * SECOND), "seed {seed}: the newer write");
    let copy = prewrite(plan, SECONDARY, secondary);
    let answer = call(c, SECONDARY.as_bytes(), &copy, 10 * SECOND);
    assert_eq!(answer.map_err(|e| e.to_string()), Ok(TxnReply::Done), "seed {seed}: the copy");
    let locked = locked_anywhere(c, SECONDARY);
    (locked, read(c, SECONDARY, seed))
}

#[test]
fn a_late_copy_of_an_applied_prewrite_locks_nothing_after_its_resolve() {
    for seed in seeds() {
        let mut c = setup(seed, 4);
        let plan = plan(7);
        let session = Some((0x5e55, 1));
        commit_and_resolve(&mut c, &plan, session, seed);
        let (locked, value) = late_copy(&mut c, &plan, session, seed);
        assert_eq!(
            (locked, value),
            (false, Some(Bytes::from("newer"))),
            "seed {seed}: the late copy locked the key again, or the reader rolled it back"
        );
        assert_eq!(get(&mut c, PRIMARY).unwrap(), Some(Bytes::from("a1-t7")), "seed {seed}");
    }
}

#[test]
fn a_copy_before_the_resolve_is_idempotent_and_one_without_a_session_applies_as_before() {
    for seed in seeds() {
        let mut c = setup(seed, 4);
        // A copy while the lock is there: `Done`, one lock, the transaction's value.
        let plan7 = plan(7);
        let session = Some((0x5e55, 1));
        for (key, number) in
            [(PRIMARY, Some((0x5e56, 1))), (SECONDARY, session), (SECONDARY, session)]
        {
            let r = call(&mut c, key.as_bytes(), &prewrite(&plan7, key, number), 10 * SECOND);
            assert_eq!(r.map_err(|e| e.to_string()), Ok(TxnReply::Done), "seed {seed}: {key}");
        }
        assert!(locked_anywhere(&mut c, SECONDARY), "seed {seed}: the lock stays");
        let committed = call(&mut c, PRIMARY.as_bytes(), &plan7.commit(), 10 * SECOND);
        assert!(matches!(committed, Ok(TxnReply::Status(TxnState::Committed { .. }))));
        assert_eq!(read(&mut c, SECONDARY, seed), Some(Bytes::from("n1-t7")), "seed {seed}");
        // Without a session: as before sessions (idempotent only while the lock is
        // there), so the late copy locks the key again and the reader's resolve
        // writes the transaction's value over the newer one.
        let plan8 = plan(8);
        commit_and_resolve(&mut c, &plan8, None, seed);
        let (locked, value) = late_copy(&mut c, &plan8, None, seed);
        assert_eq!((locked, value), (true, Some(Bytes::from("n1-t8"))), "seed {seed}");
    }
}

#[test]
fn at_cluster_version_3_a_prewrite_goes_without_its_session() {
    for seed in seeds() {
        let mut c = setup(seed, 3);
        // Not refused: the proposer leaves the session out (an older binary could not
        // read it), so the copy applies as it always did.
        let plan = plan(9);
        let session = Some((0x5e55, 1));
        commit_and_resolve(&mut c, &plan, session, seed);
        let (locked, value) = late_copy(&mut c, &plan, session, seed);
        assert_eq!((locked, value), (true, Some(Bytes::from("n1-t9"))), "seed {seed}");
    }
}
