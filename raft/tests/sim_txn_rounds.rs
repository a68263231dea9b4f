//! A multi-key `Resolve` cut across write-batch rounds (`SimConfig::round_bytes`), then
//! a power cut of the region's leader and its replay: the same data, locks and records
//! as the same run with rounds that are never cut.
//!
//! Untested before: the apply cuts a round between two keys of one resolve when the
//! next would not fit (each key's write and lock removal land in one round), and no
//! test made a round small enough for that, so a cut that lost, doubled or reordered
//! a key's change would have gone unseen. A failing seed replays with
//! `SIM_SEED=<seed> cargo test --release -p regionkv-raft --test sim_txn_rounds`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::txn::TxnTable;
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Op, TxnReply, TxnState};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, leader_of, region_for, txn_call as call};

/// The primary "a1" left of the split at "m"; the resolve's keys right of it.
const RESOLVED: [&str; 3] = ["n1", "n2", "n3"];
/// Bytes of each value: one key's resolve (key, value and 9 bytes) fits a round of
/// `ROUND_BYTES`, two do not.
const VALUE_BYTES: usize = 100;
const ROUND_BYTES: usize = 150;

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        return vec![seed.parse().expect("SIM_SEED is a number")];
    }
    vec![1, 2, 3]
}

/// What a run leaves: every key's value, and per store the transaction tables of
/// both regions.
#[derive(Debug, PartialEq)]
struct Outcome {
    values: BTreeMap<String, String>,
    tables: Vec<(StoreId, Option<TxnTable>, Option<TxnTable>)>,
}

/// `r` with its error as text (errors are not comparable).
fn s<T>(r: Result<T, regionkv_raft::Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn rounds_cut(c: &SimCluster, store: StoreId) -> u64 {
    c.apply_stats(store).map_or(0, |s| s.rounds_cut_full)
}

/// Commits a transaction on "a1" and `RESOLVED`, resolves `RESOLVED` in one command,
/// then cuts the power of their region's leader and restarts it. Returns the outcome
/// and the rounds cut full: by the replicas that applied the resolve, and by the
/// restarted store's replay.
fn run(seed: u64, round_bytes: Option<usize>) -> (Outcome, u64, u64) {
    let mut c = SimCluster::new(SimConfig { round_bytes, ..SimConfig::new(seed) }).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    common::split(&mut c, R1, &["m"]).expect("split");
    common::converge(&mut c);
    let value = |k: &str| Bytes::from(format!("{k}-{}", "v".repeat(VALUE_BYTES - 3)));
    let ops: Vec<Op> = std::iter::once("a1")
        .chain(RESOLVED)
        .map(|k| Op::Put { key: Bytes::from(k.to_owned()), value: value(k) })
        .collect();
    let plan = TxnPlan::new(50, ops.clone(), 60_000, None);
    let what = format!("seed {seed}, round bytes {round_bytes:?}");
    for part in [ops[..1].to_vec(), ops[1..].to_vec()] {
        let key = part[0].key().to_vec();
        assert_eq!(s(call(&mut c, &key, &plan.prewrite(part), 10 * SECOND)), Ok(TxnReply::Done));
    }
    assert_eq!(
        s(call(&mut c, b"a1", &plan.commit(), 10 * SECOND)),
        Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
        "{what}"
    );
    let stores = c.store_ids();
    let before: u64 = stores.iter().map(|s| rounds_cut(&c, *s)).sum();
    let keys: Vec<Bytes> = RESOLVED.iter().map(|k| Bytes::from(*k)).collect();
    let resolve = plan.resolve(keys, true);
    assert_eq!(s(call(&mut c, b"n1", &resolve, 10 * SECOND)), Ok(TxnReply::Done), "{what}");
    common::converge(&mut c);
    let cut: u64 = stores.iter().map(|s| rounds_cut(&c, *s)).sum::<u64>() - before;

    let (victim, _) = leader_of(&mut c, b"n1");
    c.crash(victim, CrashMode::Lost);
    c.run_for(Duration::from_millis(300));
    c.restart(victim).expect("restart");
    common::converge(&mut c);
    let replayed = rounds_cut(&c, victim);

    let values = common::scan_all(&mut c);
    let left = region_for(&c, b"a1").expect("routed").id;
    let right = region_for(&c, b"n1").expect("routed").id;
    let table = |c: &SimCluster, s: StoreId, r: RegionId| c.engine(s).and_then(|e| e.txn_table(r));
    let tables = stores.iter().map(|&s| (s, table(&c, s, left), table(&c, s, right))).collect();
    (Outcome { values, tables }, cut, replayed)
}

#[test]
fn a_resolve_cut_across_rounds_then_replayed_after_a_power_cut_is_the_same_as_uncut() {
    for seed in seeds() {
        let (cut_run, cut, replayed) = run(seed, Some(ROUND_BYTES));
        let (whole_run, whole_cut, _) = run(seed, None);
        // Each replica cut the resolve's round twice (three keys, one per round).
        assert!(cut >= 2 * 3, "seed {seed}: the resolve was cut {cut} times over 3 replicas");
        assert!(replayed >= 2, "seed {seed}: the replay was cut {replayed} times");
        assert_eq!(whole_cut, 0, "seed {seed}: rounds of the engine's bound are never cut here");
        assert_eq!(cut_run, whole_run, "seed {seed}: cut rounds changed the outcome");
        for k in RESOLVED {
            assert!(cut_run.values.get(k).is_some_and(|v| v.starts_with(k)), "seed {seed}: {k}");
        }
        for (store, left, right) in &cut_run.tables {
            let right = right.as_ref().expect("a replica");
            assert_eq!(right.lock_count(), 0, "seed {seed}: store {store} kept a lock");
            assert_eq!(left.as_ref().expect("a replica").lock_count(), 0);
        }
    }
}
