//! The two-region transaction harness `sim_txn` and `sim_async_commit` share: three
//! stores split at "m" with four keys written "old", a plan writing all four, its parts
//! by region, and a crash of one region's leader.

use std::time::Duration;

use bytes::Bytes;
use regionkv_raft::sim::SimCluster;
use regionkv_raft::txn::plan::TxnPlan;
use regionkv_raft::{Error, Op, Query, QueryResult};
use regionkv_wal::CrashMode;

use super::{R1, SECOND, leader_of, region_for};

/// The transactions' lock and record TTL (short: the resolver waits it out).
pub const TTL_MS: u64 = 400;
/// Two keys left of the split (the primary is "a1"), two right of it.
pub const KEYS: [&str; 4] = ["a1", "a2", "n1", "n2"];
/// A millisecond.
pub const MS: Duration = Duration::from_millis(1);

/// Three stores, regions split at "m", every key of `KEYS` written "old".
pub fn setup(seed: u64) -> SimCluster {
    let mut c = super::cluster(seed);
    super::split(&mut c, R1, &["m"]).expect("split");
    super::converge(&mut c);
    for key in KEYS {
        assert!(super::put(&mut c, key, "old", 10 * SECOND), "seed {seed}: {key} not written");
    }
    c
}

pub fn plan(txn_id: u64) -> TxnPlan {
    let ops = KEYS
        .iter()
        .map(|k| Op::Put { key: Bytes::from(*k), value: Bytes::from(format!("{k}-t{txn_id}")) })
        .collect();
    TxnPlan::new(txn_id, ops, TTL_MS, None)
}

/// The plan's ops by region, the primary's region first: (a key to route by, ops).
pub fn parts(c: &SimCluster, plan: &TxnPlan) -> Vec<(Bytes, Vec<Op>)> {
    let mut parts: Vec<(u64, Bytes, Vec<Op>)> = Vec::new();
    for op in &plan.ops {
        let region = region_for(c, op.key()).expect("routed").id.0;
        match parts.iter_mut().find(|p| p.0 == region) {
            Some(part) => part.2.push(op.clone()),
            None => parts.push((region, Bytes::copy_from_slice(op.key()), vec![op.clone()])),
        }
    }
    parts.into_iter().map(|(_, key, ops)| (key, ops)).collect()
}

/// Whose leader crashes.
#[derive(Clone, Copy, Debug)]
pub enum Victim {
    /// The leader of the primary key's region.
    Primary,
    /// The leader of the other region.
    Participant,
}

/// How it crashes.
#[derive(Clone, Copy, Debug)]
pub enum Crash {
    /// A clean stop, then a restart.
    Stop,
    /// Power lost (what was not synced is lost; the disk is kept), then a restart.
    PowerCut,
}

pub fn crash(c: &mut SimCluster, victim: Victim, how: Crash) {
    let key: &[u8] = match victim {
        Victim::Primary => b"a1",
        Victim::Participant => b"n1",
    };
    let (store, _) = leader_of(c, key);
    match how {
        Crash::Stop => c.stop(store),
        Crash::PowerCut => c.crash(store, CrashMode::Lost),
    }
    c.run_for(300 * MS);
    c.restart(store).expect("restart");
}

/// A linearizable get through the leader (retryable errors retried): the value, or the
/// refusal (`Locked`).
pub fn get(c: &mut SimCluster, key: &[u8]) -> Result<Option<Bytes>, Error> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a get of {key:?}");
        let (leader, region) = leader_of(c, key);
        let pending =
            c.read(leader, region, Query::Get { key: Bytes::copy_from_slice(key), read_ts: None });
        match c.wait(&pending, SECOND) {
            Some(Ok(QueryResult::Value(v))) => return Ok(v),
            Some(Ok(other)) => panic!("a get answered {other:?}"),
            Some(Err(e)) if e.is_retryable() => c.run_for(20 * MS),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
}

/// Every key's value (none locked).
pub fn values(c: &mut SimCluster) -> Vec<String> {
    KEYS.iter()
        .map(|k| {
            let v = get(c, k.as_bytes()).expect("not locked").expect("present");
            String::from_utf8(v.to_vec()).unwrap()
        })
        .collect()
}

/// All of transaction `txn_id`'s values, or none.
pub fn all_or_nothing(c: &mut SimCluster, txn_id: u64) -> bool {
    let values = values(c);
    let committed: Vec<String> = KEYS.iter().map(|k| format!("{k}-t{txn_id}")).collect();
    if values == committed {
        return true;
    }
    assert_eq!(values, vec!["old"; KEYS.len()], "a part of transaction {txn_id}");
    false
}
