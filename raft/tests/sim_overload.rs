//! A3 in the simulator, whose WAL segments are 64 KiB (so its largest record is just
//! under 64 KiB): before, a follower catching up received more than that in one append
//! (appends carry up to 1 MiB) and its persist failed with `RecordTooLarge`, which
//! stops a store (the simulator panics on it); a client write larger than a record did
//! the same on the leader. Now a persist is cut into records that fit, and such a
//! write is refused.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{R1, SECOND, put, scan_all};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Error, Op};

fn seeds() -> u64 {
    std::env::var("SIM_OVERLOAD_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8)
}

#[test]
fn a_follower_catching_up_persists_more_than_one_record_holds() {
    for seed in 0..seeds() {
        let mut config = SimConfig::new(seed);
        // No compaction: the follower catches up from the log, not from a snapshot.
        config.checkpoint_log_bytes = 1 << 30;
        let mut c = SimCluster::new(config).unwrap();
        let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
        let follower = c.store_ids().into_iter().find(|s| *s != leader).unwrap();
        c.faults().isolate(follower);
        let value = "v".repeat(6000);
        // 40 writes of 6 KB: about 240 KB the follower misses.
        for i in 0..40 {
            assert!(put(&mut c, &format!("k{i:02}"), &value, 20 * SECOND), "seed {seed}: k{i}");
        }
        c.faults().clear();
        let target = c.status(leader)[0].applied;
        let caught_up = c.run_until(20 * SECOND, |c| {
            c.status(follower).first().is_some_and(|s| s.applied >= target)
        });
        assert!(caught_up, "seed {seed}: the follower caught up");
        let rows = scan_all(&mut c);
        assert_eq!(rows.len(), 40, "seed {seed}");
        assert!(rows.values().all(|v| *v == value), "seed {seed}");
    }
}

#[test]
fn a_write_larger_than_a_record_is_refused_and_the_store_goes_on() {
    let mut c = SimCluster::new(SimConfig::new(7)).unwrap();
    let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
    let huge = Op::Put { key: Bytes::from_static(b"huge"), value: Bytes::from(vec![1; 100_000]) };
    let pending = c.write(leader, R1, vec![huge]);
    let reply = c.wait(&pending, SECOND).expect("answered");
    assert!(matches!(reply, Err(Error::InvalidRequest(_))), "{reply:?}");
    assert!(put(&mut c, "after", "ok", 10 * SECOND));
    c.run_for(Duration::from_millis(100));
    assert_eq!(scan_all(&mut c).get("after").map(String::as_str), Some("ok"));
}
