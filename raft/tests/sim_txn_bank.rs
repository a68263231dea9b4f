//! Bank transfers between regions by two-phase commit, in the simulator, with a store
//! crashing (every crash mode) and the coordinator giving up between any two steps of
//! the protocol. Each transfer moves an amount between two accounts in different
//! regions and appends its transaction id to both accounts' histories, so that after
//! every seed the checker can tell, from the final state alone:
//!
//! - atomicity: every transaction is in both of its accounts' histories or in neither;
//! - durability: every transfer whose commit was acknowledged is in both;
//! - a transfer answered `TxnAborted` is in neither;
//! - the total never changes, and each balance is what its history says;
//! - every transaction in a history has a committed record (or a forgotten one), and
//!   no other transaction's record says committed.
//!
//! Every other transfer (even transaction ids) commits asynchronously (cluster version
//! 4, `regionkv_raft::txn::staging`): its record is created `Staging`, it is
//! acknowledged once both prewrites applied, then decided and resolved by
//! `ResolveMany`, and a coordinator may give up between any two of those steps too.
//!
//! Locks a coordinator left behind are resolved the way a reader resolves them: ask the
//! record on the primary's region (aborting it if the lock expired; a staging record
//! past its TTL is decided by the participant check), then resolve the lock on its own
//! region. `TXN_BANK_SEEDS` sets how many seeds run (default 200; the
//! first runs twice to check it replays).
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_txn_bank`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::StoreId;
use regionkv_raft::sim::SimCluster;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::txn::staging;
use regionkv_raft::{Error, Op, Query, QueryResult, TxnCmd, TxnReply, TxnState};

mod common;

use common::bank::{INITIAL, Rng, between_steps, decode, encode, send, wall_ms};
use common::{R1, SECOND, cluster, converge, put, region_for, split};

const ACCOUNTS: [&str; 6] = ["a1", "a2", "a3", "x1", "x2", "x3"];
const TTL_MS: u64 = 500;
const TRANSFERS: usize = 12;

/// Resolves the lock of `txn_id` on `key` through its record, as a reader would: true
/// once it is resolved, false if its transaction is still alive.
fn resolve_lock(
    c: &mut SimCluster,
    key: &Bytes,
    txn_id: u64,
    primary_key: &Bytes,
    expires_at_ms: u64,
) -> bool {
    let abort_if_expired = wall_ms(c) > expires_at_ms;
    let check = TxnCmd::CheckStatus { txn_id, primary_key: primary_key.clone(), abort_if_expired };
    let mut state = send(c, primary_key, &check, 30 * SECOND);
    if let Some(Ok(TxnReply::Status(TxnState::Staging { expires_at_ms, participants }))) = &state {
        if wall_ms(c) <= *expires_at_ms {
            c.run_for(Duration::from_millis(100));
            return false;
        }
        state = Some(Ok(TxnReply::Status(settle(c, txn_id, primary_key, participants))));
    }
    let commit = match state {
        Some(Ok(TxnReply::Status(TxnState::Committed { .. }))) => true,
        Some(Ok(TxnReply::Status(TxnState::Aborted))) => false,
        // Below the floor: finished and forgotten; this lock is a late copy.
        Some(Ok(TxnReply::Status(TxnState::NotFound { floor }))) if txn_id < floor => false,
        Some(Ok(TxnReply::Status(TxnState::Pending { .. } | TxnState::NotFound { .. }))) => {
            c.run_for(Duration::from_millis(100));
            return false;
        }
        other => panic!("check status of txn {txn_id}: {other:?}"),
    };
    let resolve = TxnCmd::Resolve { txn_id, keys: vec![key.clone()], commit, commit_ts: None };
    match send(c, key, &resolve, 30 * SECOND) {
        Some(Ok(TxnReply::Done)) => true,
        other => panic!("resolve of txn {txn_id} on {key:?}: {other:?}"),
    }
}

/// The participant check of an expired staging record: every key but the primary
/// asked whether it holds the transaction's lock (prevented if not); all do: commit,
/// else abort. The record's state after.
fn settle(
    c: &mut SimCluster,
    txn_id: u64,
    primary_key: &Bytes,
    participants: &[Bytes],
) -> TxnState {
    let mut locked = Vec::new();
    for key in staging::check_keys(participants, primary_key) {
        let check = TxnCmd::CheckLocks { txn_id, keys: vec![key.clone()] };
        match send(c, &key, &check, 30 * SECOND) {
            Some(Ok(TxnReply::Checked { all_locked, .. })) => locked.push(all_locked),
            other => panic!("participant check of txn {txn_id} on {key:?}: {other:?}"),
        }
    }
    let decide = staging::decide(
        txn_id,
        primary_key.clone(),
        Vec::new(),
        staging::decision_of_check(locked),
    );
    match send(c, primary_key, &decide, 30 * SECOND) {
        Some(Ok(reply)) => staging::decided_state(&reply).expect("a state"),
        other => panic!("decision of txn {txn_id}: {other:?}"),
    }
}

/// The committed value of an account, resolving any lock on it first.
fn get(c: &mut SimCluster, key: &str) -> (i64, Vec<u64>) {
    let key = Bytes::from(key.to_owned());
    let deadline = c.now() + 120 * SECOND;
    while c.now() < deadline {
        let Some(region) = region_for(c, &key) else {
            c.run_for(Duration::from_millis(20));
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let pending = c.read(leader, region.id, Query::Get { key: key.clone(), read_ts: None });
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(QueryResult::Value(Some(v)))) => return decode(&v),
            Some(Ok(other)) => panic!("account {key:?} read {other:?}"),
            Some(Err(Error::Locked { txn_id, primary_key, expires_at_ms, .. })) => {
                resolve_lock(c, &key, txn_id, &primary_key, expires_at_ms);
            }
            Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                c.run_for(Duration::from_millis(20));
            }
            Some(Err(e)) => panic!("read of {key:?}: {e}"),
            None => {}
        }
    }
    panic!("account {key:?} could not be read");
}

/// What the coordinator learned of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The commit was applied and answered.
    Acked,
    /// Definitely aborted.
    Aborted,
    /// The coordinator gave up, or no answer came: unknown to it.
    Unknown,
}

struct Transfer {
    from: &'static str,
    to: &'static str,
    amount: i64,
    outcome: Outcome,
}

fn transfer(
    c: &mut SimCluster,
    rng: &mut Rng,
    down: &mut Option<StoreId>,
    txn_id: u64,
    from: &'static str,
    to: &'static str,
    amount: i64,
) -> Outcome {
    let (from_balance, mut from_history) = get(c, from);
    let (to_balance, mut to_history) = get(c, to);
    from_history.push(txn_id);
    to_history.push(txn_id);
    let ops = vec![
        Op::Put { key: from.into(), value: encode(from_balance - amount, &from_history) },
        Op::Put { key: to.into(), value: encode(to_balance + amount, &to_history) },
    ];
    let staging = txn_id.is_multiple_of(2);
    let plan = TxnPlan::new(txn_id, ops, TTL_MS, None).with_staging(staging);
    // One region per account here (the accounts sit on both sides of the split).
    for op in plan.ops.clone() {
        if between_steps(c, rng, down) {
            return Outcome::Unknown;
        }
        match send(c, op.key(), &plan.prewrite(vec![op.clone()]), 10 * SECOND) {
            Some(Ok(TxnReply::Done)) => {}
            // A lock left by a crashed coordinator between our read and our prewrite
            // cannot be: reads resolved them and nothing else runs. A presumed abort
            // (or a participant check's prevention) of our own slow transaction can;
            // an async coordinator then decides its record and answers by it.
            Some(Err(Error::TxnAborted { .. })) if !staging => return Outcome::Aborted,
            Some(Err(Error::TxnAborted { .. })) => {
                return match send(c, &plan.primary_key(), &plan.decide(false), 10 * SECOND) {
                    Some(Ok(reply)) => match staging::decided_state(&reply) {
                        Some(TxnState::Committed { .. }) => Outcome::Acked,
                        Some(TxnState::Aborted | TxnState::NotFound { .. }) => Outcome::Aborted,
                        _ => Outcome::Unknown,
                    },
                    _ => Outcome::Unknown,
                };
            }
            None => return Outcome::Unknown,
            other => panic!("prewrite of txn {txn_id}: {other:?}"),
        }
    }
    if staging {
        return finish_staging(c, rng, down, &plan);
    }
    if between_steps(c, rng, down) {
        return Outcome::Unknown;
    }
    let outcome = match send(c, &plan.primary_key(), &plan.commit(), 10 * SECOND) {
        Some(Ok(TxnReply::Status(TxnState::Committed { .. }))) => Outcome::Acked,
        Some(Err(Error::TxnAborted { .. })) => return Outcome::Aborted,
        None => return Outcome::Unknown,
        other => panic!("commit of txn {txn_id}: {other:?}"),
    };
    for key in plan.keys().into_iter().skip(1) {
        if between_steps(c, rng, down) {
            return outcome;
        }
        let _ = send(c, &key, &plan.resolve(vec![key.clone()], true), 10 * SECOND);
    }
    outcome
}

/// An async-commit transfer whose prewrites all applied: acknowledged. Then its
/// decision and the other region's batched resolve, the coordinator giving up maybe
/// between them.
fn finish_staging(
    c: &mut SimCluster,
    rng: &mut Rng,
    down: &mut Option<StoreId>,
    plan: &TxnPlan,
) -> Outcome {
    if between_steps(c, rng, down) {
        return Outcome::Acked;
    }
    match send(c, &plan.primary_key(), &plan.decide(true), 10 * SECOND) {
        Some(Ok(reply)) => {
            let state = staging::decided_state(&reply);
            assert_eq!(state, Some(TxnState::Committed { commit_ts: None }), "txn {}", plan.txn_id);
        }
        None => return Outcome::Acked,
        other => panic!("decision of txn {}: {other:?}", plan.txn_id),
    }
    if between_steps(c, rng, down) {
        return Outcome::Acked;
    }
    let others = plan.keys().into_iter().skip(1).collect();
    let items = vec![plan.resolve_item(others, true)];
    let key = plan.keys()[1].clone();
    let _ = send(c, &key, &TxnCmd::ResolveMany { items }, 10 * SECOND);
    Outcome::Acked
}

/// Runs one seed and checks it; returns the simulation's trace hash (for the replay
/// check).
fn run_seed(seed: u64) -> u64 {
    let mut c = cluster(seed);
    let mut rng = Rng(seed);
    for account in ACCOUNTS {
        assert!(put(
            &mut c,
            account,
            std::str::from_utf8(&encode(INITIAL, &[])).unwrap(),
            10 * SECOND
        ));
    }
    split(&mut c, R1, &["m"]).expect("split");
    converge(&mut c);
    let mut transfers: BTreeMap<u64, Transfer> = BTreeMap::new();
    let mut down = None;
    for i in 0..TRANSFERS {
        let txn_id = 1000 + i as u64;
        let from = ACCOUNTS[rng.below(3) as usize];
        let to = ACCOUNTS[3 + rng.below(3) as usize];
        let (from, to) = if rng.below(2) == 0 { (from, to) } else { (to, from) };
        let amount = 1 + i64::try_from(rng.below(20)).expect("small");
        let outcome = transfer(&mut c, &mut rng, &mut down, txn_id, from, to, amount);
        transfers.insert(txn_id, Transfer { from, to, amount, outcome });
    }
    if let Some(store) = down.take() {
        c.restart(store).expect("restart");
    }
    // Every lock resolved (reads resolve them), every account read.
    let accounts: BTreeMap<&str, (i64, Vec<u64>)> =
        ACCOUNTS.iter().map(|a| (*a, get(&mut c, a))).collect();
    let total: i64 = accounts.values().map(|(b, _)| b).sum();
    assert_eq!(
        total,
        INITIAL * i64::try_from(ACCOUNTS.len()).expect("small"),
        "seed {seed}: the total changed"
    );
    for (id, t) in &transfers {
        let in_from = accounts[t.from].1.contains(id);
        let in_to = accounts[t.to].1.contains(id);
        assert_eq!(
            in_from, in_to,
            "seed {seed}: txn {id} applied to one account only ({:?})",
            t.outcome
        );
        match t.outcome {
            Outcome::Acked => assert!(in_from, "seed {seed}: acknowledged txn {id} was lost"),
            Outcome::Aborted => assert!(!in_from, "seed {seed}: aborted txn {id} was applied"),
            Outcome::Unknown => {}
        }
        // The record agrees with the data: applied means committed (or forgotten),
        // not applied means anything but committed.
        let primary = t.from.min(t.to);
        let check = TxnCmd::CheckStatus {
            txn_id: *id,
            primary_key: Bytes::from(primary.to_owned()),
            abort_if_expired: false,
        };
        let state = send(&mut c, primary.as_bytes(), &check, 30 * SECOND);
        let Some(Ok(TxnReply::Status(state))) = state else {
            panic!("seed {seed}: check status of txn {id}: {state:?}");
        };
        if in_from {
            assert!(
                matches!(state, TxnState::Committed { .. } | TxnState::NotFound { .. }),
                "seed {seed}: txn {id} applied but its record says {state:?}"
            );
        } else {
            assert!(
                !matches!(state, TxnState::Committed { .. } | TxnState::Frozen { .. }),
                "seed {seed}: txn {id} not applied but its record says {state:?}"
            );
        }
    }
    for (account, (balance, history)) in &accounts {
        let expected: i64 = INITIAL
            + history
                .iter()
                .map(|id| {
                    let t = &transfers[id];
                    if t.from == *account { -t.amount } else { t.amount }
                })
                .sum::<i64>();
        assert_eq!(
            *balance, expected,
            "seed {seed}: {account}'s balance does not match its history"
        );
    }
    c.trace_hash()
}

#[test]
fn transfers_between_regions_are_all_or_nothing_under_crashes() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        run_seed(seed.parse().expect("SIM_SEED is a number"));
        return;
    }
    let seeds: u64 = std::env::var("TXN_BANK_SEEDS")
        .map_or(200, |n| n.parse().expect("TXN_BANK_SEEDS is a number"));
    for seed in 0..seeds {
        let trace = run_seed(seed);
        if seed == 0 {
            assert_eq!(run_seed(seed), trace, "seed {seed} does not replay");
        }
    }
}

/// A leader reports its oldest lock's age (`PeerStatus::oldest_lock_age_ms`, read by
/// the health monitor's `TxnInDoubtOld`): 0 without locks, the lock's age while one is
/// held, 0 again once it is resolved; a follower reports nothing.
#[test]
fn a_leader_reports_its_oldest_lock_s_age() {
    let mut c = cluster(7);
    assert!(put(&mut c, "a1", "0;", 10 * SECOND));
    let ages = |c: &mut SimCluster| -> Vec<u64> {
        let region = region_for(c, b"a1").expect("routed").id;
        let leader = c.wait_leader(region, SECOND).expect("a leader");
        c.store_ids()
            .into_iter()
            .filter_map(|s| {
                let st =
                    c.status(s).into_iter().find(|p| p.region.id == region).expect("a replica");
                assert_eq!(st.oldest_lock_age_ms.is_some(), s == leader, "store {s}: {st:?}");
                st.oldest_lock_age_ms
            })
            .collect()
    };
    assert_eq!(ages(&mut c), vec![0]);
    let plan =
        TxnPlan::new(9, vec![Op::Put { key: "a1".into(), value: "1;9".into() }], 60_000, None);
    let prewrite = plan.prewrite(plan.ops.clone());
    assert!(matches!(send(&mut c, b"a1", &prewrite, 10 * SECOND), Some(Ok(TxnReply::Done))));
    c.run_for(5 * SECOND);
    let [age] = ages(&mut c)[..] else { panic!("one leader") };
    assert!((5_000..60_000).contains(&age), "the lock is {age} ms old");
    let commit = send(&mut c, b"a1", &plan.commit(), 10 * SECOND);
    assert!(matches!(commit, Some(Ok(TxnReply::Status(TxnState::Committed { .. })))), "{commit:?}");
    assert_eq!(ages(&mut c), vec![0]);
}
