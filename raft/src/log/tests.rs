//! Unit tests of the Raft log: staging, persisting (and cutting into records),
//! recovery, compaction, purge and tombstones.

use std::sync::Arc;

use regionkv_wal::{CrashMode, SimFs, SparePreparation, WalOptions};

use super::*;

fn wal_options() -> WalOptions {
    WalOptions::default().segment_bytes(8192).spare_preparation(SparePreparation::OnDemand)
}

fn open(fs: &SimFs) -> RaftLog {
    let wal = Wal::open(Arc::new(fs.clone()), "/raft", wal_options()).unwrap();
    RaftLog::open(wal, RaftLogOptions { region_cache_bytes: 0, total_cache_bytes: 0 }).unwrap()
}

fn entries(first: u64, n: u64, term: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|i| {
            let mut e = Entry::default();
            e.index = i;
            e.term = term;
            e.data = Bytes::from(format!("r-{i}-t{term}-{}", "x".repeat((i % 50) as usize)));
            e
        })
        .collect()
}

fn initial() -> LogState {
    LogState { first_index: 1, ..LogState::default() }
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    let mut hs = HardState::default();
    hs.term = term;
    hs.vote = vote;
    hs.commit = commit;
    hs
}

const R1: RegionId = RegionId(1);
const R2: RegionId = RegionId(2);

#[test]
fn staged_entries_are_readable_before_they_are_durable_and_survive_reopen() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.stage(&mut w, R1, entries(1, 5, 1), Some(&hs(1, 7, 0))).unwrap();
    assert_eq!(log.entries(R1, 1, 6, None).unwrap(), entries(1, 5, 1), "readable while pending");
    assert_eq!(log.bounds(R1).unwrap(), (1, 5));
    log.persist(w).unwrap();
    // With no cache, reads come from the WAL now.
    assert_eq!(log.entries(R1, 2, 5, None).unwrap(), entries(2, 3, 1));
    assert_eq!(log.entries(R1, 1, 6, Some(1)).unwrap().len(), 1, "at least one entry");
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    assert_eq!(log.entries(R1, 1, 6, None).unwrap(), entries(1, 5, 1));
    assert_eq!(log.state(R1).unwrap().hard_state, hs(1, 7, 0));
    assert_eq!(log.term(R1, 0).unwrap(), 0);
    assert!(matches!(log.entries(R1, 1, 7, None), Err(Error::EntryUnavailable { .. })));
}

#[test]
fn an_overwritten_tail_is_replaced_in_memory_and_on_reopen() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.stage(&mut w, R1, entries(1, 6, 1), None).unwrap();
    log.persist(w).unwrap();
    let mut w = log.begin_write();
    log.stage(&mut w, R1, entries(4, 2, 2), Some(&hs(2, 3, 3))).unwrap();
    let expect: Vec<Entry> = entries(1, 3, 1).into_iter().chain(entries(4, 2, 2)).collect();
    assert_eq!(log.entries(R1, 1, 6, None).unwrap(), expect);
    log.persist(w).unwrap();
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    assert_eq!(log.bounds(R1).unwrap(), (1, 5));
    assert_eq!(log.entries(R1, 1, 6, None).unwrap(), expect);
}

#[test]
fn an_unpersisted_write_is_gone_after_a_crash_and_a_later_write_does_not_resurrect_it() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.stage(&mut w, R1, entries(1, 3, 1), None).unwrap();
    log.persist(w).unwrap();
    let mut w = log.begin_write();
    log.stage(&mut w, R1, entries(4, 3, 1), None).unwrap();
    drop(w); // never persisted
    drop(log);
    let log = open(&fs.crash(CrashMode::Persisted));
    assert_eq!(log.bounds(R1).unwrap(), (1, 3));
}

#[test]
fn compaction_and_snapshots_move_the_first_index_durably() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.stage(&mut w, R1, entries(1, 10, 1), None).unwrap();
    log.stage_compaction(&mut w, R1, 4).unwrap();
    log.persist(w).unwrap();
    assert_eq!(log.bounds(R1).unwrap(), (5, 10));
    assert!(matches!(log.entries(R1, 3, 6, None), Err(Error::Compacted { .. })));
    assert_eq!(log.term(R1, 4).unwrap(), 1, "the compacted entry's term is kept");
    let mut w = log.begin_write();
    let snap = LogState {
        first_index: 21,
        truncated_term: 3,
        hard_state: hs(3, 0, 20),
        ..LogState::default()
    };
    log.stage_snapshot(&mut w, R1, snap.clone()).unwrap();
    log.persist(w).unwrap();
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    assert_eq!(log.bounds(R1).unwrap(), (21, 20), "empty log after the snapshot");
    assert_eq!(log.state(R1).unwrap(), snap);
    assert_eq!(log.term(R1, 20).unwrap(), 3);
}

#[test]
fn purge_rewrites_idle_regions_and_never_loses_state() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.create_region(&mut w, R2, initial()).unwrap();
    log.stage(&mut w, R2, entries(1, 2, 1), Some(&hs(1, 2, 2))).unwrap();
    log.stage_compaction(&mut w, R2, 2).unwrap();
    log.persist(w).unwrap();
    // R1 is busy and compacts as it goes; R2 is idle.
    for round in 0..40u64 {
        let mut w = log.begin_write();
        log.stage(&mut w, R1, entries(round * 10 + 1, 10, 1), Some(&hs(1, 1, round * 10 + 10)))
            .unwrap();
        if round > 0 {
            log.stage_compaction(&mut w, R1, round * 10).unwrap();
        }
        log.persist(w).unwrap();
    }
    let plan = log.purge_plan();
    assert_eq!(plan.rewrite, vec![R2], "the idle region's old state holds back the purge");
    let before = log.wal().first_lsn();
    let mut w = log.begin_write();
    log.stage_state_rewrite(&mut w, R2).unwrap();
    log.persist(w).unwrap();
    let plan = log.purge_plan();
    assert!(plan.rewrite.is_empty());
    assert!(log.purge(&plan).unwrap() > 0, "segments were purged: {plan:?}");
    assert!(log.wal().first_lsn() > before);
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    let r2 = log.state(R2).unwrap();
    assert_eq!((r2.hard_state.clone(), r2.first_index, r2.truncated_term), (hs(1, 2, 2), 3, 1));
    assert_eq!(log.bounds(R1).unwrap(), (391, 400));
    assert_eq!(log.entries(R1, 391, 401, None).unwrap(), entries(391, 10, 1));
}

fn big_entries(first: u64, n: u64, term: u64, bytes: usize) -> Vec<Entry> {
    (first..first + n)
        .map(|i| {
            let mut e = Entry::default();
            e.index = i;
            e.term = term;
            e.data = Bytes::from(vec![(i % 251) as u8; bytes]);
            e
        })
        .collect()
}

/// Stages, in one write, far more than one WAL record holds (max payload about
/// 8 KiB here): R1 gets 60 entries of 500 bytes and commits them all, R2 a few
/// entries, R3 (new) only its state.
fn stage_oversized(log: &RaftLog) -> LogWrite {
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.create_region(&mut w, R2, initial()).unwrap();
    log.stage(&mut w, R1, big_entries(1, 60, 2, 500), Some(&hs(2, 1, 60))).unwrap();
    log.stage(&mut w, R2, big_entries(1, 5, 1, 900), Some(&hs(1, 1, 3))).unwrap();
    log.create_region(&mut w, RegionId(3), initial()).unwrap();
    w
}

/// A3: a write larger than the WAL's largest record was one record, refused with
/// `RecordTooLarge` (and the store stopped). It is cut into records that fit, and
/// every entry is found at the record that holds it.
#[test]
fn a_write_larger_than_a_record_is_cut_into_records_that_fit() {
    let fs = SimFs::new();
    let log = open(&fs);
    let max = log.wal().options().max_payload();
    let w = stage_oversized(&log);
    let before = log.wal().end_lsn();
    log.persist(w).expect("an oversized write is persisted in several records");
    let records = log.wal().iter_from(before).unwrap().count();
    assert!(records > 3, "{records} records");
    for record in log.wal().iter_from(before).unwrap() {
        assert!(record.unwrap().payload.len() <= max);
    }
    // No cache: every entry is read back from the record its span points into.
    assert_eq!(log.entries(R1, 1, 61, None).unwrap(), big_entries(1, 60, 2, 500));
    assert_eq!(log.entries(R2, 1, 6, None).unwrap(), big_entries(1, 5, 1, 900));
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    assert_eq!(log.entries(R1, 1, 61, None).unwrap(), big_entries(1, 60, 2, 500));
    assert_eq!(log.state(R1).unwrap().hard_state, hs(2, 1, 60));
    assert_eq!(log.entries(R2, 1, 6, None).unwrap(), big_entries(1, 5, 1, 900));
    assert_eq!(log.state(R2).unwrap().hard_state, hs(1, 1, 3));
    assert!(log.state(RegionId(3)).is_some());
}

/// A3: a crash between the records of a cut write looks like an earlier crash:
/// every region's log opens, holds a prefix of what was staged, and never records
/// a commit index past its last entry (raft-rs refuses to start on one).
#[test]
fn a_crash_between_the_records_of_a_cut_write_looks_like_an_earlier_crash() {
    let reference = SimFs::new();
    let log = open(&reference);
    let ops_before = reference.op_count();
    log.persist(stage_oversized(&log)).expect("an oversized write is persisted");
    let ops = reference.op_count() - ops_before;
    drop(log);
    for fail_at in 1..=ops {
        let fs = SimFs::new();
        let log = open(&fs);
        let w = stage_oversized(&log);
        let start = fs.op_count();
        fs.set_fault_hook(Box::new(move |op| {
            (op.index > start + fail_at - 1).then(|| std::io::Error::other("injected"))
        }));
        assert!(log.persist(w).is_err(), "op {fail_at} failed");
        drop(log);
        let fs = fs.crash(CrashMode::Lost);
        fs.clear_fault_hook();
        let log = open(&fs);
        for (region, staged) in [(R1, big_entries(1, 60, 2, 500)), (R2, big_entries(1, 5, 1, 900))]
        {
            let Some(state) = log.state(region) else { continue };
            let (first, last) = log.bounds(region).unwrap();
            assert_eq!(first, 1);
            assert!(
                state.hard_state.commit <= last,
                "op {fail_at}: region {region:?} commits {} past its last entry {last}",
                state.hard_state.commit
            );
            let got = log.entries(region, 1, last + 1, None).unwrap();
            assert_eq!(got[..], staged[..got.len()], "op {fail_at}: a prefix");
        }
    }
}

#[test]
fn tombstones_remove_a_region() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.stage(&mut w, R1, entries(1, 2, 1), None).unwrap();
    log.persist(w).unwrap();
    let mut w = log.begin_write();
    log.stage_tombstone(&mut w, R1, None);
    log.persist(w).unwrap();
    assert!(log.state(R1).is_none());
    drop(log);
    assert!(open(&fs.crash(CrashMode::Lost)).region_ids().is_empty());
}

#[test]
fn a_tombstone_keeps_its_epoch_across_reopens_and_purges_until_the_region_returns() {
    let fs = SimFs::new();
    let log = open(&fs);
    let epoch = Epoch { version: 3, conf_ver: 4 };
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.create_region(&mut w, R2, initial()).unwrap();
    log.persist(w).unwrap();
    let mut w = log.begin_write();
    log.stage_tombstone(&mut w, R2, Some(epoch));
    log.persist(w).unwrap();
    assert_eq!(log.tombstone(R2), Some(epoch));
    // R1 writes on; the tombstone's record falls behind and is rewritten.
    for round in 0..40u64 {
        let mut w = log.begin_write();
        log.stage(&mut w, R1, entries(round * 10 + 1, 10, 1), Some(&hs(1, 1, round * 10))).unwrap();
        if round > 0 {
            log.stage_compaction(&mut w, R1, round * 10).unwrap();
        }
        log.persist(w).unwrap();
    }
    let plan = log.purge_plan();
    assert_eq!(plan.rewrite_tombstones, vec![R2], "{plan:?}");
    let mut w = log.begin_write();
    log.stage_tombstone_rewrites(&mut w, &plan, |_| true);
    log.persist(w).unwrap();
    let plan = log.purge_plan();
    assert!(plan.rewrite_tombstones.is_empty());
    assert!(log.purge(&plan).unwrap() > 0);
    drop(log);
    let fs = fs.crash(CrashMode::Lost);
    let log = open(&fs);
    assert_eq!(log.tombstone(R2), Some(epoch), "kept through the purge and the reopen");
    assert!(log.state(R2).is_none());
    // A newer replica of the region is created: the tombstone goes.
    let mut w = log.begin_write();
    log.create_region(&mut w, R2, initial()).unwrap();
    assert_eq!(log.tombstone(R2), None);
    log.persist(w).unwrap();
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    assert_eq!(log.tombstone(R2), None);
    assert!(log.state(R2).is_some());
}

/// A replica's turn whose hard state moved only its commit index stages no state
/// record, entries or not (with thousands of regions written at random, nearly every
/// follower write carries one); a new term or vote does. The commit index is kept in
/// memory and written with the region's next state record.
#[test]
fn a_turn_that_moved_only_the_commit_index_stages_no_state_record() {
    let fs = SimFs::new();
    let log = open(&fs);
    let mut w = log.begin_write();
    log.create_region(&mut w, R1, initial()).unwrap();
    log.stage(&mut w, R1, entries(1, 2, 1), Some(&hs(1, 7, 0))).unwrap();
    log.persist(w).unwrap();
    let handle = log.handle(R1).unwrap();

    let mut w = log.begin_write();
    log.stage_in(&mut w, &handle, entries(3, 2, 1), Some(&hs(1, 7, 2))).unwrap();
    assert_eq!(w.terms().count(), 0, "no state record for a commit-only change");
    assert_eq!(log.state(R1).unwrap().hard_state, hs(1, 7, 2), "kept in memory");
    log.persist(w).unwrap();

    let mut w = log.begin_write();
    log.stage_in(&mut w, &handle, Vec::new(), Some(&hs(1, 7, 4))).unwrap();
    assert!(w.is_empty(), "a commit-only change alone costs no record");

    log.stage_in(&mut w, &handle, entries(5, 1, 2), Some(&hs(2, 0, 4))).unwrap();
    assert_eq!(w.terms().collect::<Vec<_>>(), vec![(R1, 2)], "a new term is written");
    log.persist(w).unwrap();
    drop(log);
    let log = open(&fs.crash(CrashMode::Lost));
    assert_eq!(log.state(R1).unwrap().hard_state, hs(2, 0, 4));
    assert_eq!(log.bounds(R1).unwrap(), (1, 5));
}
