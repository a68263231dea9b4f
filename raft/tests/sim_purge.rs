//! Regression (found by `sim_linearizable`, seeds 1, 17, 18 and 30 of its first 40): a
//! store stopped or crashed at the wrong moment could not open again ("corrupt Raft log
//! record ...: region 1: entries at 658 leave a gap after 0", or "entries of region 1000
//! before any state of it"). A compaction staged in memory forgot at once where its
//! dropped entries were, so a WAL purge that ran before the compaction's state record
//! was durable removed segments that the durable state still needed; a tombstone staged
//! but not yet durable likewise stopped holding its region's records back. Now the log
//! holds every record a staged compaction, snapshot or tombstone makes obsolete until
//! that write is durable (`RaftLog::purge_plan`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{SECOND, cluster, converge, put};
use raft::eraftpb::{Entry, HardState};
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::log::{LogState, RaftLog, RaftLogOptions};
use regionkv_wal::{CrashMode, SimFs, SparePreparation, Wal, WalOptions};

/// Many writes (so that regions checkpoint and the WAL is purged) while each store in
/// turn stops, or crashes, now and then, and opens again.
#[test]
fn a_store_stopped_or_crashed_while_a_compaction_is_staged_opens_again() {
    for seed in 1..=3u64 {
        let mut c = cluster(seed);
        for i in 0..1500u64 {
            assert!(put(&mut c, &format!("k{}", i % 6), &format!("v{i}"), 10 * SECOND));
            if i % 250 == 249 {
                let store = StoreId(1 + (i / 250) % 3);
                if (i / 250).is_multiple_of(2) {
                    c.stop(store);
                } else {
                    c.crash(store, CrashMode::Lost);
                }
                c.run_for(Duration::from_millis(100));
                c.restart(store).unwrap_or_else(|e| panic!("seed {seed}: store {store}: {e}"));
            }
        }
        converge(&mut c);
    }
}

fn open_log(fs: &SimFs) -> regionkv_raft::Result<RaftLog> {
    let options =
        WalOptions::default().segment_bytes(8192).spare_preparation(SparePreparation::OnDemand);
    let wal = Wal::open(Arc::new(fs.clone()), "/wal", options)?;
    RaftLog::open(wal, RaftLogOptions::default())
}

/// The log alone: a compaction staged (a checkpoint was taken) but not yet durable
/// when a purge runs, then a crash. The durable state still starts at entry 1, so the
/// purge must have kept every entry.
#[test]
fn a_purge_keeps_what_a_compaction_not_yet_durable_would_drop() {
    const R1: RegionId = RegionId(1);
    let fs = SimFs::new();
    let log = open_log(&fs).unwrap();
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, LogState { first_index: 1, ..LogState::default() }).unwrap();
    log.persist(w).unwrap();
    for i in 1..=200u64 {
        let mut entry = Entry::default();
        entry.index = i;
        entry.term = 1;
        entry.data = Bytes::from(format!("entry {i} {}", "x".repeat(80)));
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = i;
        let mut w = log.begin_write();
        log.stage(&mut w, R1, vec![entry], Some(&hs)).unwrap();
        log.persist(w).unwrap();
    }
    let mut compaction = log.begin_write();
    log.stage_compaction(&mut compaction, R1, 150).unwrap();
    let plan = log.purge_plan();
    log.purge(&plan).unwrap();
    drop((compaction, log));
    let fs = fs.crash(CrashMode::Lost);
    let log = open_log(&fs).expect("the log opens after the crash");
    assert_eq!(log.bounds(R1).unwrap(), (1, 200), "every entry the durable state names");
    // Once the compaction is durable, the purge goes past the compacted entries, and
    // the log opens again from there.
    let mut compaction = log.begin_write();
    log.stage_compaction(&mut compaction, R1, 150).unwrap();
    log.persist(compaction).unwrap();
    let purged = log.purge(&log.purge_plan()).unwrap();
    assert!(purged > 0, "the compacted entries' segments go");
    drop(log);
    let log = open_log(&fs.crash(CrashMode::Lost)).expect("the log opens after the purge");
    assert_eq!(log.bounds(R1).unwrap(), (151, 200));
}
