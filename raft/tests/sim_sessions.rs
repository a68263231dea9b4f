//! Exactly-once writes in the simulator (issue 12, S2). A client that did not learn the
//! outcome of a write sends it again; without sessions the store applied it a second
//! time, after later writes had replaced it, so a reader saw a value come back. Now a
//! write carries its client session and number, and a region that applied that number
//! answers the copy with success and changes nothing. The table of sessions is
//! replicated state: rebuilt the same after a restart (checkpoint, then log replay),
//! copied to both parts of a split, joined by a merge, and the same on every replica.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{R1, SECOND, cluster, converge, put, region_for, scan_all, split};
use regionkv_engine::{RegionId, SessionId, StoreId};
use regionkv_raft::merge_driver::{self, MergeOptions};
use regionkv_raft::sim::SimCluster;
use regionkv_raft::{Op, WriteSession};
use regionkv_wal::CrashMode;

const A: SessionId = SessionId(0x5E55_1011);
const B: SessionId = SessionId(0x0B0B_0B0B);

/// Sends `key = value` as write `seq` of session `id` until it is acknowledged,
/// routed like a client, resending the same write after any failure (the session
/// makes that safe).
fn put_in_session(c: &mut SimCluster, id: SessionId, seq: u64, key: &str, value: &str) {
    let op = Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from(value.to_owned()) };
    for _ in 0..200 {
        let Some(region) = region_for(c, key.as_bytes()) else {
            c.run_for(Duration::from_millis(20));
            continue;
        };
        let Some(leader) = c.wait_leader(region.id, SECOND) else { continue };
        let session = WriteSession { id, seq };
        let pending = c.write_in_session(leader, region.id, vec![op.clone()], session);
        match c.wait(&pending, Duration::from_millis(500)) {
            Some(Ok(())) => return,
            Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                c.run_for(Duration::from_millis(20));
            }
            Some(Err(e)) => panic!("unexpected write error: {e}"),
            None => {}
        }
    }
    panic!("write {seq} of session {id} was never acknowledged");
}

fn value(c: &mut SimCluster, key: &str) -> Option<String> {
    scan_all(c).get(key).cloned()
}

/// Every running replica holds the same session table for `region`; returns the last
/// sequence number it has for session `id`.
fn last_seq(c: &mut SimCluster, region: RegionId, id: SessionId) -> Option<u64> {
    converge(c);
    let tables: Vec<_> = c
        .store_ids()
        .into_iter()
        .filter_map(|s| c.engine(s).and_then(|e| e.sessions(region)))
        .collect();
    assert!(!tables.is_empty(), "no replica of region {region}");
    assert!(tables.windows(2).all(|w| w[0] == w[1]), "replicas disagree on the sessions");
    tables[0].get(id).map(|u| u.last_seq)
}

/// Every store loses what it did not sync and restarts: the tables come back from the
/// checkpoints and the log replayed after them.
fn crash_all(c: &mut SimCluster) {
    for s in c.store_ids() {
        c.crash(s, CrashMode::Lost);
    }
    for s in c.store_ids() {
        c.restart(s).unwrap();
    }
    c.wait_leader(R1, 10 * SECOND).expect("a leader after the restart");
}

/// The scenario; returns the run's trace hash.
fn scenario(seed: u64) -> u64 {
    let mut c = cluster(seed);
    // A's write 1, someone else's write, then A's write 1 again: applied once.
    put_in_session(&mut c, A, 1, "x", "first");
    assert!(put(&mut c, "x", "other", 10 * SECOND));
    put_in_session(&mut c, A, 1, "x", "first");
    assert_eq!(value(&mut c, "x").as_deref(), Some("other"), "the copy applied again");
    assert_eq!(last_seq(&mut c, R1, A), Some(1));

    // Enough writes for every replica to checkpoint region 1 (with A's write 1 in its
    // table), then B's write 1, which only the log holds.
    let filler = "f".repeat(1024);
    for i in 0..100 {
        assert!(put(&mut c, &format!("a{i:03}"), &filler, 10 * SECOND));
    }
    converge(&mut c);
    for s in c.store_ids() {
        let image = c.engine(s).unwrap().image_index(R1).unwrap();
        assert!(image.is_some(), "store {s} has not checkpointed region 1");
    }
    put_in_session(&mut c, B, 1, "y", "second");
    assert!(put(&mut c, "y", "other", 10 * SECOND));

    crash_all(&mut c);
    assert_eq!(last_seq(&mut c, R1, A), Some(1), "from the checkpoint");
    assert_eq!(last_seq(&mut c, R1, B), Some(1), "from the log");
    put_in_session(&mut c, A, 1, "x", "first");
    put_in_session(&mut c, B, 1, "y", "second");
    assert_eq!(value(&mut c, "x").as_deref(), Some("other"));
    assert_eq!(value(&mut c, "y").as_deref(), Some("other"));

    // A split: "y" is in the right part now, which knows B's write 1.
    let parts = split(&mut c, R1, &["m"]).unwrap();
    let right = parts[1].id;
    assert_eq!(last_seq(&mut c, right, B), Some(1));
    put_in_session(&mut c, B, 1, "y", "second");
    assert_eq!(value(&mut c, "y").as_deref(), Some("other"));
    // A's write 2 in the right part only, then a merge back (and a restart from the
    // merge's checkpoint): the merged region knows it.
    put_in_session(&mut c, A, 2, "z", "third");
    assert!(put(&mut c, "z", "other", 10 * SECOND));
    merge_driver::merge(&mut c, right, R1, MergeOptions::default()).unwrap();
    crash_all(&mut c);
    assert_eq!(last_seq(&mut c, R1, A), Some(2));
    put_in_session(&mut c, A, 2, "z", "third");
    put_in_session(&mut c, A, 1, "x", "first");
    assert_eq!(value(&mut c, "z").as_deref(), Some("other"));
    assert_eq!(value(&mut c, "x").as_deref(), Some("other"));
    // And the next write of the session applies.
    put_in_session(&mut c, A, 3, "z", "fourth");
    assert_eq!(value(&mut c, "z").as_deref(), Some("fourth"));
    for s in 1..=3 {
        assert!(c.is_running(StoreId(s)));
    }
    c.trace_hash()
}

#[test]
fn a_write_sent_again_applies_once_across_a_restart_a_split_and_a_merge() {
    let first = scenario(7);
    // Leaders stamp writes with the simulator's clock: the run still replays.
    assert_eq!(scenario(7), first, "the same seed gave another run");
}
