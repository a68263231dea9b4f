//! The turn planner on hand-built tables.

use bytes::Bytes;
use regionkv_engine::txn::{Lock, LockOp, TxnId, TxnRecord, TxnStatus, TxnTable};

use super::*;

const TTL: u64 = 1_000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn lock(txn: u64, primary: &str, created_at_ms: u64) -> Lock {
    Lock {
        min_commit_ts: None,
        txn_id: TxnId(txn),
        primary_key: b(primary),
        op: LockOp::Put,
        value: Some(b("v")),
        created_at_ms,
        ttl_ms: TTL,
        start_ts: None,
    }
}

fn record(txn: u64, primary: &str, status: TxnStatus, participants: &[&str]) -> TxnRecord {
    TxnRecord {
        min_commit_ts: None,
        txn_id: TxnId(txn),
        status,
        primary_key: b(primary),
        participants: participants.iter().map(|p| b(p)).collect(),
        created_at_ms: 100,
        ttl_ms: TTL,
        last_heartbeat_ms: 100,
        coordinator: None,
        decided_at_index: None,
        start_ts: None,
        commit_ts: None,
    }
}

fn put_lock(t: &mut TxnTable, key: &str, l: &Lock) {
    t.locks.insert(b(key), Bytes::from(l.encode()));
}

fn put_record(t: &mut TxnTable, r: &TxnRecord) {
    t.records.insert((r.primary_key.clone(), r.txn_id.0), Bytes::from(r.encode()));
}

/// An entry of a format this binary does not read: a format byte of 9, then bytes
/// that would not decode as format 1 either.
fn too_new() -> Bytes {
    Bytes::from_static(&[9, 0xff, 0xff, 0xff])
}

#[test]
fn expired_locks_oldest_first_and_bounded() {
    let mut t = TxnTable::default();
    put_lock(&mut t, "a", &lock(7, "a", 300));
    put_lock(&mut t, "b", &lock(5, "x", 100));
    put_lock(&mut t, "c", &lock(6, "x", 200));
    put_lock(&mut t, "d", &lock(8, "x", 5_000)); // alive at 2_000
    let limits = RecoveryLimits { max_locks: 2, ..RecoveryLimits::default() };
    let plan = plan_turn(&t, 2_000, &limits, &mut RecoveryMemory::default());
    let keys: Vec<_> = plan.locks.iter().map(|a| a.key.clone()).collect();
    assert_eq!(keys, vec![b("b"), b("c")]);
    assert_eq!(plan.metrics.locks_deferred, 1);
    assert_eq!(plan.metrics.oldest_lock_age_ms, 1_900);
    assert_eq!(
        plan.locks[0].check_status(),
        TxnCmd::CheckStatus { txn_id: 5, primary_key: b("x"), abort_if_expired: true }
    );
    assert_eq!(
        plan.locks[0].resolve(&TxnState::Committed { commit_ts: None }),
        Some(TxnCmd::Resolve { txn_id: 5, keys: vec![b("b")], commit: true, commit_ts: None })
    );
    assert_eq!(
        plan.locks[0].resolve(&TxnState::Aborted),
        Some(TxnCmd::Resolve { txn_id: 5, keys: vec![b("b")], commit: false, commit_ts: None })
    );
    for undecided in [
        TxnState::Pending { expires_at_ms: 9_000 },
        TxnState::NotFound { floor: 10 },
        TxnState::Frozen { reason: "too_new".into() },
    ] {
        assert_eq!(plan.locks[0].resolve(&undecided), None, "{undecided:?}");
    }
}

#[test]
fn a_lock_is_not_expired_at_its_expiry_instant() {
    let mut t = TxnTable::default();
    put_lock(&mut t, "a", &lock(1, "a", 100));
    let at = plan_turn(&t, 1_100, &RecoveryLimits::default(), &mut RecoveryMemory::default());
    assert!(at.locks.is_empty());
    let after = plan_turn(&t, 1_101, &RecoveryLimits::default(), &mut RecoveryMemory::default());
    assert_eq!(after.locks.len(), 1);
}

#[test]
fn entries_of_a_newer_format_are_counted_never_decoded_and_hold_the_floor() {
    let mut t = TxnTable { floor: 3, ..TxnTable::default() };
    t.locks.insert(b("k"), too_new());
    t.records.insert((b("p"), 4), too_new());
    put_record(&mut t, &record(5, "q", TxnStatus::Aborted, &["q"]));
    let no_delay = RecoveryLimits { forget_delay_ms: 0, ..RecoveryLimits::default() };
    let plan = plan_turn(&t, u64::MAX / 2, &no_delay, &mut RecoveryMemory::default());
    assert_eq!(plan.metrics.unreadable.get("too_new"), Some(&2));
    assert!(plan.locks.is_empty());
    // Record 5 could be forgotten, but the unreadable lock hides its transaction.
    assert_eq!(plan.forgets.len(), 1);
    assert_eq!(plan.new_floor, 3);
}

#[test]
fn damaged_entries_are_counted_as_corrupt() {
    let mut t = TxnTable::default();
    t.locks.insert(b("k"), Bytes::from_static(&[1, 0xff]));
    t.locks.insert(b("e"), Bytes::new());
    t.records.insert((b("p"), 4), Bytes::from_static(&[1]));
    let plan = plan_turn(&t, 10, &RecoveryLimits::default(), &mut RecoveryMemory::default());
    assert_eq!(plan.metrics.unreadable.get("corrupt"), Some(&3));
}

#[test]
fn unknown_status_and_op_are_frozen() {
    let mut t = TxnTable::default();
    put_record(&mut t, &record(4, "p", TxnStatus::Unspecified, &["p"]));
    let mut l = lock(4, "p", 0);
    l.op = LockOp::Unspecified;
    put_lock(&mut t, "p", &l);
    let plan =
        plan_turn(&t, u64::MAX / 2, &RecoveryLimits::default(), &mut RecoveryMemory::default());
    assert!(plan.locks.is_empty() && plan.forgets.is_empty() && plan.in_doubt.is_empty());
    assert_eq!(plan.metrics.frozen.get("unknown_status"), Some(&1));
    assert_eq!(plan.metrics.frozen.get("unknown_op"), Some(&1));
}

#[test]
fn pending_records_past_their_ttl_are_in_doubt() {
    let mut t = TxnTable::default();
    put_record(&mut t, &record(4, "p", TxnStatus::Pending, &["p", "z"]));
    let mut alive = record(5, "q", TxnStatus::Pending, &["q"]);
    alive.last_heartbeat_ms = 10_000;
    put_record(&mut t, &alive);
    let plan = plan_turn(&t, 5_000, &RecoveryLimits::default(), &mut RecoveryMemory::default());
    assert_eq!(plan.metrics.in_doubt, 1);
    assert_eq!(
        plan.in_doubt[0].check_status(),
        TxnCmd::CheckStatus { txn_id: 4, primary_key: b("p"), abort_if_expired: true }
    );
    assert!(plan.forgets.is_empty());
}

#[test]
fn staging_records_past_their_ttl_are_in_doubt_with_their_participants_never_forgotten() {
    let mut t = TxnTable::default();
    put_record(&mut t, &record(4, "p", TxnStatus::Staging, &["p", "z"]));
    let mut alive = record(5, "q", TxnStatus::Staging, &["q", "y"]);
    alive.last_heartbeat_ms = 10_000;
    put_record(&mut t, &alive);
    let limits = RecoveryLimits { forget_delay_ms: 0, ..RecoveryLimits::default() };
    let plan = plan_turn(&t, 5_000, &limits, &mut RecoveryMemory::default());
    assert_eq!(plan.metrics.in_doubt, 1);
    assert_eq!(plan.in_doubt[0].txn_id, 4);
    assert_eq!(plan.in_doubt[0].staging, Some(vec![b("p"), b("z")]));
    // Not decided: never forgotten, whatever the delays; and it holds the floor.
    let plan = plan_turn(&t, u64::MAX / 2, &limits, &mut RecoveryMemory::default());
    assert!(plan.forgets.is_empty());
    assert!(plan.metrics.frozen.is_empty());
}

#[test]
fn decided_records_are_forgotten_after_both_delays() {
    let limits = RecoveryLimits { forget_delay_ms: 10_000, ..RecoveryLimits::default() };
    let mut t = TxnTable::default();
    put_record(&mut t, &record(4, "p", TxnStatus::Committed, &["p", "z"]));
    let mut memory = RecoveryMemory::default();
    // Long past its fields' bound, but first seen decided now: kept.
    let first = plan_turn(&t, 1_000_000, &limits, &mut memory);
    assert!(first.forgets.is_empty());
    assert_eq!(memory.len(), 1);
    let early = plan_turn(&t, 1_009_999, &limits, &mut memory);
    assert!(early.forgets.is_empty());
    let due = plan_turn(&t, 1_010_000, &limits, &mut memory);
    assert_eq!(due.forgets.len(), 1);
    let f = &due.forgets[0];
    assert_eq!(
        f.resolves(),
        vec![
            TxnCmd::Resolve { txn_id: 4, keys: vec![b("p")], commit: true, commit_ts: None },
            TxnCmd::Resolve { txn_id: 4, keys: vec![b("z")], commit: true, commit_ts: None },
        ]
    );
    assert_eq!(due.new_floor, 5);
    assert_eq!(
        due.forget(&t, &[(b("p"), 4)]),
        Some(TxnCmd::Forget { records: vec![(b("p"), 4)], new_floor: 5 })
    );
    assert_eq!(due.forget(&t, &[]), None);

    // A fresh memory (a restart, a new leader) waits the whole delay again.
    let restarted = plan_turn(&t, 1_010_000, &limits, &mut RecoveryMemory::default());
    assert!(restarted.forgets.is_empty());
    // The record's own fields still bound it: seen decided early, forgotten only after
    // its heartbeat + ttl + delay.
    let mut young = TxnTable::default();
    let mut r = record(6, "p", TxnStatus::Aborted, &["p"]);
    r.last_heartbeat_ms = 50_000;
    put_record(&mut young, &r);
    let mut memory = RecoveryMemory::default();
    assert!(plan_turn(&young, 0, &limits, &mut memory).forgets.is_empty());
    assert!(plan_turn(&young, 60_999, &limits, &mut memory).forgets.is_empty());
    assert_eq!(plan_turn(&young, 61_000, &limits, &mut memory).forgets.len(), 1);
}

#[test]
fn the_floor_stays_below_live_transactions_and_never_drops() {
    let mut t = TxnTable { floor: 2, ..TxnTable::default() };
    put_record(&mut t, &record(4, "p", TxnStatus::Committed, &["p"]));
    put_record(&mut t, &record(9, "q", TxnStatus::Committed, &["q"]));
    put_record(&mut t, &record(7, "r", TxnStatus::Pending, &["r"]));
    put_lock(&mut t, "s", &lock(6, "zz", 0));
    assert_eq!(new_floor(&t, &[]), 2);
    assert_eq!(new_floor(&t, &[4]), 5);
    assert_eq!(new_floor(&t, &[4, 9]), 6, "below the lock of 6");
    t.locks.clear();
    assert_eq!(new_floor(&t, &[4, 9]), 7, "below the pending record 7");
    t.floor = 100;
    assert_eq!(new_floor(&t, &[4, 9]), 100);
}

#[test]
fn an_empty_table_plans_nothing() {
    let plan = plan_turn(
        &TxnTable::default(),
        42,
        &RecoveryLimits::default(),
        &mut RecoveryMemory::default(),
    );
    assert_eq!(plan, TurnPlan::default());
}

#[test]
fn gates_are_ordered_and_labelled() {
    let labels: Vec<_> = Gate::ALL.iter().map(|g| g.label()).collect();
    assert_eq!(labels, ["local_format", "cluster_version", "record_format", "shutdown"]);
}
