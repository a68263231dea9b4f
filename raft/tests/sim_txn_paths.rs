//! Paths of the transaction protocol the other simulator tests do not take: the
//! primary's region split between prewrite and commit (the record moves with the
//! primary key and the commit lands on the new region); heartbeats keep a slow
//! transaction's record alive past its TTL (and without them it is aborted); a commit
//! whose answer is lost (the leader crashes right after it was proposed) is decided
//! by asking the record, and a retried commit answers the same.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_txn_paths`; `SIM_TXN_PATHS_SEEDS=<n>` runs seeds 1 to n (3 by default).

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_raft::sim::SimCluster;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Error, Op, Query, QueryResult, TxnCmd, TxnReply, TxnState};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, region_for};

const MS: Duration = Duration::from_millis(1);

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_TXN_PATHS_SEEDS").map_or(3, |n| n.parse().expect("a number"));
    (1..=n).collect()
}

/// Three stores, regions split at "m".
fn setup(seed: u64) -> SimCluster {
    let mut c = common::cluster(seed);
    common::split(&mut c, R1, &["m"]).expect("split");
    common::converge(&mut c);
    c
}

fn plan(txn_id: u64, keys: &[&str], ttl_ms: u64) -> TxnPlan {
    let ops = keys
        .iter()
        .map(|k| Op::Put {
            key: Bytes::from(k.to_string()),
            value: Bytes::from(format!("{k}-{txn_id}")),
        })
        .collect();
    TxnPlan::new(txn_id, ops, ttl_ms, None)
}

/// Sends `cmd` to the leader of `key`'s region (as routing knows it now), retrying
/// retryable errors and lost answers (every command is idempotent) until `max`.
fn call(c: &mut SimCluster, key: &[u8], cmd: &TxnCmd, max: Duration) -> Result<TxnReply, Error> {
    let deadline = c.now() + max;
    let mut last = Error::Timeout { region: R1 };
    while c.now() < deadline {
        let Some(region) = region_for(c, key) else {
            c.run_for(20 * MS);
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let pending = c.txn(leader, region.id, cmd.clone());
        match c.wait(&pending, 500 * MS) {
            Some(Err(e)) if e.is_retryable() => {
                last = e;
                c.run_for(20 * MS);
            }
            Some(result) => return result,
            None => last = Error::Timeout { region: region.id },
        }
    }
    Err(last)
}

/// A linearizable get of `key` through its region's leader.
fn get(c: &mut SimCluster, key: &str) -> Result<Option<Bytes>, Error> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a get of {key}");
        let Some(region) = region_for(c, key.as_bytes()) else {
            c.run_for(20 * MS);
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let pending = c.read(
            leader,
            region.id,
            Query::Get { key: Bytes::from(key.to_owned()), read_ts: None },
        );
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Value(v))) => return Ok(v),
            Some(Ok(other)) => panic!("a get answered {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
}

fn status(reply: Result<TxnReply, Error>) -> TxnState {
    match reply {
        Ok(TxnReply::Status(state)) => state,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[test]
fn a_split_of_the_primary_s_region_between_prewrite_and_commit_moves_the_record() {
    for seed in seeds() {
        let mut c = setup(100 + seed);
        let p = plan(7, &["c1", "n1"], 60_000);
        let primary = [p.ops[0].clone()];
        let secondary = [p.ops[1].clone()];
        let old = region_for(&c, b"c1").expect("routed").id;
        assert_eq!(
            call(&mut c, b"c1", &p.prewrite(primary.to_vec()), 10 * SECOND).ok(),
            Some(TxnReply::Done)
        );
        assert_eq!(
            call(&mut c, b"n1", &p.prewrite(secondary.to_vec()), 10 * SECOND).ok(),
            Some(TxnReply::Done)
        );
        // The primary's region splits: "c1", its lock and the record go right.
        common::split(&mut c, old, &["b"]).expect("split");
        common::converge(&mut c);
        let new = region_for(&c, b"c1").expect("routed").id;
        assert_ne!(new, old, "seed {seed}: the primary key moved to the new region");
        // The record is asked where the primary key is now: still pending.
        assert!(
            matches!(
                status(call(&mut c, b"c1", &p.check_status(false), 10 * SECOND)),
                TxnState::Pending { .. }
            ),
            "seed {seed}"
        );
        assert!(
            matches!(get(&mut c, "c1"), Err(Error::Locked { .. })),
            "seed {seed}: the lock moved too"
        );
        // The commit lands on the new region and applies its lock.
        assert_eq!(
            status(call(&mut c, b"c1", &p.commit(), 10 * SECOND)),
            TxnState::Committed { commit_ts: None },
            "seed {seed}"
        );
        assert_eq!(
            call(&mut c, b"n1", &p.resolve(vec![Bytes::from_static(b"n1")], true), 10 * SECOND)
                .ok(),
            Some(TxnReply::Done)
        );
        assert_eq!(get(&mut c, "c1").ok(), Some(Some(Bytes::from("c1-7"))), "seed {seed}");
        assert_eq!(get(&mut c, "n1").ok(), Some(Some(Bytes::from("n1-7"))), "seed {seed}");
        // A later check finds it committed (an abort attempt changes nothing).
        assert_eq!(
            status(call(&mut c, b"c1", &p.check_status(true), 10 * SECOND)),
            TxnState::Committed { commit_ts: None }
        );
    }
}

#[test]
fn heartbeats_keep_a_slow_transaction_alive_past_its_ttl_and_without_them_it_is_aborted() {
    for seed in seeds() {
        let mut c = setup(200 + seed);
        for (txn_id, heartbeats) in [(11, true), (12, false)] {
            let p = plan(txn_id, &["a1", "n1"], 400);
            let primary = vec![p.ops[0].clone()];
            assert_eq!(
                call(&mut c, b"a1", &p.prewrite(primary), 10 * SECOND).ok(),
                Some(TxnReply::Done)
            );
            // A slow second region: 3 s, over seven TTLs, before its prewrite.
            for _ in 0..15 {
                c.run_for(200 * MS);
                if heartbeats {
                    let beat = status(call(&mut c, b"a1", &p.heartbeat(), 10 * SECOND));
                    assert!(matches!(beat, TxnState::Pending { .. }), "seed {seed}: {beat:?}");
                }
            }
            // Another reader meets the lock and tries to abort the transaction.
            let checked = status(call(&mut c, b"a1", &p.check_status(true), 10 * SECOND));
            if heartbeats {
                assert!(matches!(checked, TxnState::Pending { .. }), "seed {seed}: {checked:?}");
                let secondary = vec![p.ops[1].clone()];
                assert_eq!(
                    call(&mut c, b"n1", &p.prewrite(secondary), 10 * SECOND).ok(),
                    Some(TxnReply::Done)
                );
                assert_eq!(
                    status(call(&mut c, b"a1", &p.commit(), 10 * SECOND)),
                    TxnState::Committed { commit_ts: None }
                );
                let resolve = p.resolve(vec![Bytes::from_static(b"n1")], true);
                assert_eq!(call(&mut c, b"n1", &resolve, 10 * SECOND).ok(), Some(TxnReply::Done));
                assert_eq!(get(&mut c, "n1").ok(), Some(Some(Bytes::from("n1-11"))));
            } else {
                assert_eq!(checked, TxnState::Aborted, "seed {seed}");
                let commit = call(&mut c, b"a1", &p.commit(), 10 * SECOND);
                assert!(matches!(commit, Err(Error::TxnAborted { .. })), "seed {seed}: {commit:?}");
                assert_eq!(get(&mut c, "a1").ok(), Some(Some(Bytes::from("a1-11"))), "seed {seed}");
            }
        }
    }
}

#[test]
fn a_commit_whose_answer_is_lost_is_decided_by_asking_the_record() {
    for seed in seeds() {
        let mut lost = 0;
        for (i, (crash_after_ms, mode)) in [0, 1, 2]
            .into_iter()
            .flat_map(|ms| [(ms, CrashMode::Persisted), (ms, CrashMode::Lost)])
            .enumerate()
        {
            let mut c = setup(300 + seed * 16 + i as u64);
            let p = plan(21, &["a1", "n1"], 60_000);
            for op in &p.ops {
                let prewrite = p.prewrite(vec![op.clone()]);
                assert_eq!(
                    call(&mut c, op.key(), &prewrite, 10 * SECOND).ok(),
                    Some(TxnReply::Done)
                );
            }
            // The commit is proposed, and the leader that took it crashes (keeping
            // its disk) before or after it applied: its answer never comes.
            let region = region_for(&c, b"a1").expect("routed").id;
            let leader = c.wait_leader(region, SECOND).expect("a leader");
            let pending = c.txn(leader, region, p.commit());
            c.run_for(Duration::from_millis(crash_after_ms));
            c.crash(leader, mode);
            c.run_for(SECOND);
            let answer = c.wait(&pending, 100 * MS);
            lost += usize::from(answer.is_none());
            assert!(
                !matches!(answer, Some(Ok(TxnReply::Status(TxnState::Aborted)))),
                "seed {seed}: {answer:?}"
            );
            c.restart(leader).expect("restart");
            // The coordinator asks the record (never aborting it): committed, or
            // still pending (the commit was lost), and then a retried commit decides.
            let asked = status(call(&mut c, b"a1", &p.check_status(false), 10 * SECOND));
            match asked {
                TxnState::Committed { .. } => {}
                TxnState::Pending { .. } => {
                    assert_eq!(
                        status(call(&mut c, b"a1", &p.commit(), 10 * SECOND)),
                        TxnState::Committed { commit_ts: None }
                    );
                }
                other => panic!("seed {seed}: the record says {other:?}"),
            }
            // A retried commit answers the same, and the writes are there.
            assert_eq!(
                status(call(&mut c, b"a1", &p.commit(), 10 * SECOND)),
                TxnState::Committed { commit_ts: None }
            );
            let resolve = p.resolve(vec![Bytes::from_static(b"n1")], true);
            assert_eq!(call(&mut c, b"n1", &resolve, 10 * SECOND).ok(), Some(TxnReply::Done));
            assert_eq!(get(&mut c, "a1").ok(), Some(Some(Bytes::from("a1-21"))), "seed {seed}");
            assert_eq!(get(&mut c, "n1").ok(), Some(Some(Bytes::from("n1-21"))), "seed {seed}");
        }
        assert!(lost > 0, "seed {seed}: no commit lost its answer: the path was not taken");
    }
}
