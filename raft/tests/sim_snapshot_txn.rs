//! Snapshot-isolated transaction commands in the simulator (ARCHITECTURE.md,
//! "Snapshot isolation"): three stores, two regions split at a lock key of the
//! transactional keyspace, fixed timestamps. A commit at a timestamp writes each
//! lock's value as the version at it; a prewrite that started before a committed
//! version of its key is a write conflict; a commit timestamp not above the start is
//! refused; a split inside one user key's versions is refused. A crash of the primary's
//! leader right after the commit is proposed is resolved through the record: its
//! commit timestamp commits the other region's lock at the same version.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_snapshot_txn`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_raft::merge_driver::RegionAdmin;
use regionkv_raft::txn::mvcc;
use regionkv_raft::{
    AdminCmd, Error, Op, Query, QueryResult, RecordInit, TxnCmd, TxnReply, TxnState,
};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, leader_of, region_for};

const MS: Duration = Duration::from_millis(1);
const TTL_MS: u64 = 400;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

fn lk(user: &str) -> Bytes {
    mvcc::lock_key(user.as_bytes())
}

/// Three stores, the keyspace split at user key "m"'s lock key.
fn setup(seed: u64) -> regionkv_raft::sim::SimCluster {
    let mut c = common::cluster(seed);
    let split = lk("m");
    let epoch = common::region_epoch(&mut c, R1);
    let new_ids = vec![regionkv_engine::RegionId(c.new_id())];
    RegionAdmin::admin(
        &mut c,
        R1,
        epoch,
        AdminCmd::Split { split_keys: vec![split.to_vec()], new_ids },
    )
    .expect("a split at a lock key");
    common::converge(&mut c);
    c
}

fn call(
    c: &mut regionkv_raft::sim::SimCluster,
    key: &[u8],
    cmd: &TxnCmd,
) -> Result<TxnReply, Error> {
    common::txn_call(c, key, cmd, 10 * SECOND)
}

fn get(c: &mut regionkv_raft::sim::SimCluster, key: &[u8]) -> Result<Option<Bytes>, Error> {
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

fn put(user: &str, value: &str) -> Op {
    Op::Put { key: lk(user), value: Bytes::from(value.to_owned()) }
}

/// The prewrite of `ops` for transaction `txn_id` started at `start_ts`, primary "a".
fn prewrite(txn_id: u64, ops: Vec<Op>, record: bool, start_ts: u64) -> TxnCmd {
    TxnCmd::Prewrite {
        min_commit: None,
        txn_id,
        primary_key: lk("a"),
        ops,
        ttl_ms: TTL_MS,
        record: record.then(|| RecordInit {
            participants: vec![lk("a"), lk("n")],
            coordinator: None,
            staging: false,
        }),
        start_ts: Some(start_ts),
        session: None,
    }
}

fn commit(txn_id: u64, commit_ts: Option<u64>) -> TxnCmd {
    TxnCmd::Commit { txn_id, primary_key: lk("a"), commit_ts }
}

fn version(c: &mut regionkv_raft::sim::SimCluster, user: &str, ts: u64) -> Option<Bytes> {
    let stored = get(c, &mvcc::version_key(user.as_bytes(), ts)).expect("no lock on a version");
    stored.map(|v| mvcc::decode_version_value(&v).expect("a version value").expect("a put"))
}

fn s<T>(r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// Transaction 10 (start 100) writes "a" and "n", committed at 105.
fn commit_first(c: &mut regionkv_raft::sim::SimCluster, seed: u64) {
    let r = call(c, &lk("a"), &prewrite(10, vec![put("a", "a10")], true, 100));
    assert_eq!(s(r), Ok(TxnReply::Done), "seed {seed}");
    let r = call(c, &lk("n"), &prewrite(10, vec![put("n", "n10")], false, 100));
    assert_eq!(s(r), Ok(TxnReply::Done), "seed {seed}");
    let r = call(c, &lk("a"), &commit(10, Some(105)));
    assert_eq!(s(r), Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(105) })));
    let resolve =
        TxnCmd::Resolve { txn_id: 10, keys: vec![lk("n")], commit: true, commit_ts: Some(105) };
    assert_eq!(s(call(c, &lk("n"), &resolve)), Ok(TxnReply::Done), "seed {seed}");
}

#[test]
fn a_commit_at_a_timestamp_writes_versions_and_an_older_start_conflicts() {
    for seed in seeds() {
        let mut c = setup(seed);
        commit_first(&mut c, seed);
        assert_eq!(version(&mut c, "a", 105).as_deref(), Some(&b"a10"[..]), "seed {seed}");
        assert_eq!(version(&mut c, "n", 105).as_deref(), Some(&b"n10"[..]), "seed {seed}");
        // The locks are gone: the lock keys read as nothing (no raw value, no lock).
        assert_eq!(s(get(&mut c, &lk("n"))), Ok(None), "seed {seed}");

        // Started at 104, before the version at 105: a write-write conflict, nothing
        // locked (the key can be prewritten by a later transaction right after).
        match call(&mut c, &lk("n"), &prewrite(11, vec![put("n", "n11")], false, 104)) {
            Err(Error::WriteConflict { key, start_ts: 104, conflict_ts: 105 }) => {
                assert_eq!(key, lk("n"), "seed {seed}");
            }
            other => panic!("seed {seed}: {:?}", s(other)),
        }
        assert_eq!(s(get(&mut c, &lk("n"))), Ok(None), "seed {seed}: the refusal locked");
        // Started at the version's own timestamp: the version is one its reads see
        // (visible is `commit_ts <= start_ts`; a one-phase commit's timestamp may equal
        // a later start), so no conflict. Dropped again afterwards.
        let r = call(&mut c, &lk("n"), &prewrite(12, vec![put("n", "n12")], false, 105));
        assert_eq!(s(r), Ok(TxnReply::Done), "seed {seed}");
        let drop =
            TxnCmd::Resolve { txn_id: 12, keys: vec![lk("n")], commit: false, commit_ts: None };
        assert_eq!(s(call(&mut c, &lk("n"), &drop)), Ok(TxnReply::Done), "seed {seed}");

        // Started after it: no conflict. A commit timestamp not above the start, or
        // none, is refused and changes nothing; above it, it commits.
        let ops = vec![put("a", "a13")];
        assert_eq!(s(call(&mut c, &lk("a"), &prewrite(13, ops, true, 106))), Ok(TxnReply::Done));
        for bad in [None, Some(106), Some(50)] {
            let r = call(&mut c, &lk("a"), &commit(13, bad));
            assert!(matches!(r, Err(Error::InvalidRequest(_))), "seed {seed}: {bad:?}");
        }
        let no_ts =
            TxnCmd::Resolve { txn_id: 13, keys: vec![lk("a")], commit: true, commit_ts: None };
        assert!(matches!(call(&mut c, &lk("a"), &no_ts), Err(Error::InvalidRequest(_))));
        let r = call(&mut c, &lk("a"), &commit(13, Some(110)));
        assert_eq!(s(r), Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(110) })));
        // Both versions are kept, newest first.
        assert_eq!(version(&mut c, "a", 110).as_deref(), Some(&b"a13"[..]), "seed {seed}");
        assert_eq!(version(&mut c, "a", 105).as_deref(), Some(&b"a10"[..]), "seed {seed}");
        // The record keeps the commit timestamp.
        let check =
            TxnCmd::CheckStatus { txn_id: 13, primary_key: lk("a"), abort_if_expired: true };
        let r = call(&mut c, &lk("a"), &check);
        assert_eq!(s(r), Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(110) })));
    }
}

#[test]
fn keys_outside_their_level_and_splits_inside_a_keys_versions_are_refused() {
    let mut c = setup(1);
    // A snapshot-isolated prewrite of a key that is not a lock key.
    let raw = Op::Put { key: Bytes::from_static(b"raw"), value: Bytes::from_static(b"v") };
    let r = call(&mut c, b"raw", &prewrite(20, vec![raw], false, 100));
    assert!(matches!(r, Err(Error::InvalidRequest(_))), "{:?}", s(r));
    // A level-1 prewrite of a key of the keyspace.
    let level1 = TxnCmd::Prewrite {
        min_commit: None,
        txn_id: 21,
        primary_key: lk("a"),
        ops: vec![put("a", "x")],
        ttl_ms: TTL_MS,
        record: None,
        start_ts: None,
        session: None,
    };
    assert!(matches!(call(&mut c, &lk("a"), &level1), Err(Error::InvalidRequest(_))));
    // A split at a version key (inside "b"'s versions) is refused; the region is kept.
    let region = region_for(&c, &lk("b")).expect("routed");
    let epoch = common::region_epoch(&mut c, region.id);
    let new_ids = vec![regionkv_engine::RegionId(c.new_id())];
    let at = mvcc::version_key(b"b", 7).to_vec();
    let r = RegionAdmin::admin(
        &mut c,
        region.id,
        epoch,
        AdminCmd::Split { split_keys: vec![at], new_ids },
    );
    assert!(matches!(r, Err(Error::InvalidRequest(_))), "{:?}", r.map_err(|e| e.to_string()));
    assert_eq!(common::region_epoch(&mut c, region.id), epoch);
}

#[test]
fn a_crash_after_the_commit_is_resolved_at_the_records_commit_timestamp() {
    for seed in seeds() {
        let mut c = setup(seed);
        let r = call(&mut c, &lk("a"), &prewrite(30, vec![put("a", "a30")], true, 200));
        assert_eq!(s(r), Ok(TxnReply::Done), "seed {seed}");
        let r = call(&mut c, &lk("n"), &prewrite(30, vec![put("n", "n30")], false, 200));
        assert_eq!(s(r), Ok(TxnReply::Done), "seed {seed}");
        // The commit is proposed, then the primary's leader loses power.
        let (leader, region) = leader_of(&mut c, &lk("a"));
        let _unknown = c.txn(leader, region, commit(30, Some(207)));
        c.run_for(5 * MS);
        c.crash(leader, CrashMode::Lost);
        c.run_for(300 * MS);
        c.restart(leader).expect("restart");
        c.run_for(Duration::from_millis(2 * TTL_MS));
        // The resolver: the record decides (an expired pending one is aborted).
        let check =
            TxnCmd::CheckStatus { txn_id: 30, primary_key: lk("a"), abort_if_expired: true };
        let state = match call(&mut c, &lk("a"), &check) {
            Ok(TxnReply::Status(state)) => state,
            other => panic!("seed {seed}: {:?}", s(other)),
        };
        let (commit, commit_ts) = match state {
            TxnState::Committed { commit_ts } => (true, commit_ts),
            TxnState::Aborted => (false, None),
            other => panic!("seed {seed}: {other:?}"),
        };
        let resolve = TxnCmd::Resolve { txn_id: 30, keys: vec![lk("n")], commit, commit_ts };
        assert_eq!(s(call(&mut c, &lk("n"), &resolve)), Ok(TxnReply::Done), "seed {seed}");
        // All or nothing, at the one commit timestamp.
        let a = version(&mut c, "a", 207);
        let n = version(&mut c, "n", 207);
        if commit {
            assert_eq!(commit_ts, Some(207), "seed {seed}");
            assert_eq!(a.as_deref(), Some(&b"a30"[..]), "seed {seed}");
            assert_eq!(n.as_deref(), Some(&b"n30"[..]), "seed {seed}");
        } else {
            assert_eq!((a, n), (None, None), "seed {seed}");
        }
        for user in ["a", "n"] {
            assert_eq!(s(get(&mut c, &lk(user))), Ok(None), "seed {seed}: a lock is left");
        }
    }
}
