//! The simulated cluster elects, replicates, reads, and replays the same seed exactly.

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::RegionId;
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Op, Query, QueryResult};

const R1: RegionId = RegionId(1);

fn put(k: &str, v: &str) -> Op {
    Op::Put { key: Bytes::from(k.to_owned()), value: Bytes::from(v.to_owned()) }
}

fn get(key: &str) -> Query {
    Query::Get { key: Bytes::from(key.to_owned()), read_ts: None }
}

#[test]
fn three_stores_elect_replicate_and_read() {
    let mut c = SimCluster::new(SimConfig::new(1)).unwrap();
    let leader = c.wait_leader(R1, Duration::from_secs(10)).expect("a leader is elected");
    let w = c.write(leader, R1, vec![put("a", "1"), put("b", "2")]);
    assert!(matches!(c.wait(&w, Duration::from_secs(5)), Some(Ok(()))));
    let r = c.read(leader, R1, get("a"));
    assert_eq!(
        c.wait(&r, Duration::from_secs(5)).unwrap().unwrap(),
        QueryResult::Value(Some(Bytes::from("1")))
    );
    // Every replica applies it.
    c.run_for(Duration::from_millis(200));
    let applied: Vec<u64> = c.store_ids().iter().map(|&s| c.status(s)[0].applied).collect();
    assert!(applied.iter().all(|&a| a == applied[0] && a >= 2), "{applied:?}");
    // A follower refuses writes and names the leader.
    let follower = c.store_ids().into_iter().find(|&s| s != leader).unwrap();
    let w = c.write(follower, R1, vec![put("c", "3")]);
    let err = c.wait(&w, Duration::from_secs(1)).unwrap().unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut c = SimCluster::new(SimConfig::new(seed)).unwrap();
        let leader = c.wait_leader(R1, Duration::from_secs(10)).unwrap();
        for i in 0..20 {
            let w = c.write(leader, R1, vec![put(&format!("k{i}"), "v")]);
            c.wait(&w, Duration::from_secs(5));
        }
        c.run_for(Duration::from_millis(500));
        c.trace_hash()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "different seeds take different paths");
}
