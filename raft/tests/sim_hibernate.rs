//! Hibernation in the simulator: idle regions stop ticking and sending heartbeats, a
//! request or a message wakes exactly the region it concerns, and the followers of a
//! hibernating leader whose store dies or is cut off wake and elect a new one.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::{Query, QueryResult, ReadMode};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, cluster, converge, put, split};

/// Ten regions, all idle.
fn ten_regions(seed: u64) -> (SimCluster, Vec<RegionId>) {
    let mut c = cluster(seed);
    let keys: Vec<String> = (1..10).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let parts = split(&mut c, R1, &keys).unwrap();
    converge(&mut c);
    for part in &parts {
        c.wait_leader(part.id, 10 * SECOND).unwrap();
    }
    (c, parts.iter().map(|p| p.id).collect())
}

fn hibernating(c: &SimCluster, region: RegionId) -> usize {
    c.store_ids()
        .into_iter()
        .flat_map(|s| c.status(s))
        .filter(|p| p.region.id == region && p.hibernated)
        .count()
}

fn all_hibernate(c: &mut SimCluster, regions: &[RegionId]) -> bool {
    c.run_until(30 * SECOND, |c| regions.iter().all(|&r| hibernating(c, r) == 3))
}

#[test]
fn idle_regions_go_quiet_and_a_write_wakes_only_its_region() {
    let (mut c, regions) = ten_regions(11);
    assert!(all_hibernate(&mut c, &regions), "every replica of every idle region hibernates");
    // Quiet: only the stores' liveness messages, one per half election timeout per
    // store pair (here 10 ms ticks, 10-tick elections: 20 a second on each of 6
    // directed pairs), however many regions there are. Awake, the ten regions would
    // send 10 x 2 followers x 2 (heartbeat and response) x 50 a second = 2000.
    let before = c.messages_sent();
    c.run_for(10 * SECOND);
    let per_second = (c.messages_sent() - before) / 10;
    assert!(per_second <= 6 * 20, "{per_second} messages a second from ten idle regions");
    assert!(regions.iter().all(|&r| hibernating(&c, r) == 3), "nothing woke them");

    // A write wakes its region only, and it goes back to sleep.
    assert!(put(&mut c, "k55", "v", 5 * SECOND));
    let written = regions[5];
    assert!(hibernating(&c, written) < 3, "the written region woke");
    let others: Vec<RegionId> = regions.iter().copied().filter(|&r| r != written).collect();
    assert!(others.iter().all(|&r| hibernating(&c, r) == 3), "the others slept on");
    assert!(all_hibernate(&mut c, &regions));
}

#[test]
fn followers_of_a_sleeping_leader_on_a_dead_store_elect_a_new_one() {
    let (mut c, regions) = ten_regions(12);
    assert!(all_hibernate(&mut c, &regions));
    let victim = c.leader(regions[3]).unwrap();
    let led: Vec<RegionId> =
        regions.iter().copied().filter(|&r| c.leader(r) == Some(victim)).collect();
    c.crash(victim, CrashMode::Lost);
    // Nobody ticks in those regions, but the silence of the store wakes them.
    let elected =
        c.run_until(30 * SECOND, |c| led.iter().all(|&r| c.leader(r).is_some_and(|l| l != victim)));
    assert!(elected, "regions led by the dead store elected new leaders");
    assert!(put(&mut c, "k35", "after", 10 * SECOND));
    c.restart(victim).unwrap();
    assert!(all_hibernate(&mut c, &regions), "everything goes quiet again");
}

#[test]
fn a_cut_off_leader_store_loses_its_regions_to_the_majority() {
    let (mut c, regions) = ten_regions(13);
    assert!(all_hibernate(&mut c, &regions));
    let cut = c.leader(regions[7]).unwrap();
    c.faults().isolate(cut);
    let moved = c.run_until(30 * SECOND, |c| {
        let others: Vec<StoreId> = c.store_ids().into_iter().filter(|&s| s != cut).collect();
        let leads = |r: RegionId| {
            others.iter().any(|&s| {
                c.status(s).iter().any(|p| p.region.id == r && p.role == raft::StateRole::Leader)
            })
        };
        regions.iter().all(|&r| leads(r))
    });
    assert!(moved, "the majority side leads every region");
    assert!(put(&mut c, "k75", "majority", 10 * SECOND));
    c.faults().clear();
    c.run_for(Duration::from_secs(5));
    assert!(all_hibernate(&mut c, &regions));
}

#[test]
fn under_lease_reads_leaders_never_hibernate_and_reads_see_the_last_write() {
    // A leader that does not tick never notices it lost its quorum, so its lease would
    // never end: lease reads and hibernation do not mix.
    let mut c =
        SimCluster::new(SimConfig { read_mode: ReadMode::Lease, ..SimConfig::new(14) }).unwrap();
    c.wait_leader(R1, 10 * SECOND).expect("a leader");
    for i in 0..20 {
        assert!(put(&mut c, &format!("k{i:02}"), &format!("v{i}"), 10 * SECOND));
    }
    c.run_for(5 * SECOND);
    assert_eq!(hibernating(&c, R1), 0, "no replica hibernates under lease reads");
    let leader = c.leader(R1).unwrap();
    let read = c.read(leader, R1, Query::Get { key: Bytes::from_static(b"k19"), read_ts: None });
    match c.wait(&read, SECOND) {
        Some(Ok(QueryResult::Value(v))) => assert_eq!(v.as_deref(), Some(&b"v19"[..])),
        other => panic!("lease read answered {other:?}"),
    }
}

#[test]
fn hibernated_regions_hold_no_window_of_appends_in_flight() {
    // raft-rs gives a leader `max_inflight_appends` slots per follower once it sends
    // appends (2 KiB each at the default 256): with 10,000 idle regions that was most
    // of a store's memory per region. A leader that sleeps has nothing in flight.
    let (mut c, regions) = ten_regions(15);
    assert!(put(&mut c, "k15", "v", 5 * SECOND));
    assert!(all_hibernate(&mut c, &regions));
    for store in c.store_ids() {
        assert_eq!(c.inflight_slots(store), Some(0), "store {store} holds in-flight slots");
    }
    // A write allocates them again, and they go with the next sleep.
    assert!(put(&mut c, "k25", "w", 5 * SECOND));
    let held: usize = c.store_ids().into_iter().filter_map(|s| c.inflight_slots(s)).sum();
    assert!(held > 0, "the woken leader's window is back");
    assert!(all_hibernate(&mut c, &regions));
    let held: usize = c.store_ids().into_iter().filter_map(|s| c.inflight_slots(s)).sum();
    assert_eq!(held, 0);
}

#[test]
fn a_lone_write_to_a_sleeping_region_costs_six_messages() {
    // Two appends, two responses, two hibernation notices (which carry the commit):
    // no commit-only round of four more, which with thousands of regions written at
    // random was paid by nearly every write.
    let (mut c, regions) = ten_regions(16);
    assert!(all_hibernate(&mut c, &regions));
    let mut counts = Vec::new();
    for (i, key) in ["k35", "k36", "k37"].into_iter().enumerate() {
        let region = regions[3];
        let before = c.messages_sent_for(region);
        assert!(put(&mut c, key, &format!("v{i}"), 5 * SECOND));
        assert!(all_hibernate(&mut c, &regions), "the region sleeps again");
        counts.push(c.messages_sent_for(region) - before);
    }
    assert!(counts.iter().all(|&n| n <= 6), "messages per lone write: {counts:?}");
    // Every replica applied the writes (the notices committed them).
    for store in c.store_ids() {
        let status = c.status(store);
        let p = status.iter().find(|p| p.region.id == regions[3]).unwrap();
        assert_eq!((p.commit, p.applied), (p.last_index, p.last_index), "store {store}: {p:?}");
    }
}
