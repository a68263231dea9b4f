//! One-phase commits of snapshot transactions (`TxnCmd::OnePhase`) in the simulator
//! (ARCHITECTURE.md, "One-phase snapshot commits"): three stores, one region, fixed
//! timestamps standing in for the oracle. A snapshot read served before a one-phase
//! commit of its key keeps its snapshot (the commit lands above it), also when the
//! read was served by the previous leader; a read at or above a commit in flight
//! waits for it; a crash of a leader or a follower (every crash mode) before, while or
//! after the commit is proposed leaves its keys all or nothing; at cluster version 3
//! nothing is proposed.
//!
//! A failing seed replays with `SIM_SEED=<seed> cargo test --release -p regionkv-raft
//! --test sim_one_phase`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{SessionId, StoreId};
use regionkv_raft::sim::{SimCluster, SimConfig};
use regionkv_raft::txn::mvcc;
use regionkv_raft::{
    DropReason, Error, Op, Query, QueryResult, SyncedTs, TxnCmd, TxnReply, TxnState, WriteSession,
};
use regionkv_wal::CrashMode;

use common::{R1, SECOND, leader_of};

const MS: Duration = Duration::from_millis(1);

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SIM_SEED is a number")],
        Err(_) => vec![1, 2],
    }
}

fn lk(user: &str) -> Bytes {
    mvcc::lock_key(user.as_bytes())
}

fn put(user: &str, value: &str) -> Op {
    Op::Put { key: lk(user), value: Bytes::from(value.to_owned()) }
}

fn s<T>(r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn one_phase(start_ts: u64, ops: Vec<Op>, synced: Option<SyncedTs>) -> TxnCmd {
    TxnCmd::OnePhase { start_ts, ops, commit_ts: None, synced, session: None }
}

/// Commits `ops` in one phase at `start_ts` through the region's leader; a leader that
/// asks for a timestamp gets `oracle` (standing for one taken after its refusal).
fn commit(c: &mut SimCluster, start_ts: u64, ops: &[Op], oracle: u64) -> Result<u64, Error> {
    let mut synced = None;
    for _ in 0..5 {
        match common::txn_call(c, &lk("a"), &one_phase(start_ts, ops.to_vec(), synced), SECOND) {
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(ts) })) => return Ok(ts),
            Ok(other) => panic!("a one-phase commit answered {other:?}"),
            Err(Error::ReadTsUnsynced { term, .. }) => synced = Some(SyncedTs { term, ts: oracle }),
            Err(e) => return Err(e),
        }
    }
    panic!("the leader asked for a timestamp five times")
}

/// A snapshot read at `read_ts` of `user`'s newest visible version, from `store` (the
/// region's leader): `Err` is the store's answer as it is.
fn read_at(
    c: &mut SimCluster,
    store: StoreId,
    user: &str,
    read_ts: u64,
) -> Result<Option<Bytes>, Error> {
    let query = Query::Scan {
        start: mvcc::version_key(user.as_bytes(), read_ts),
        end: Some(mvcc::versions_end(user.as_bytes())),
        limit: 1,
        read_ts: Some(read_ts),
    };
    let pending = c.read(store, R1, query);
    match c.wait(&pending, 5 * SECOND) {
        Some(Ok(QueryResult::Rows(page))) => Ok(page
            .rows
            .first()
            .map(|(_, v)| mvcc::decode_version_value(v).unwrap().expect("a put"))),
        Some(Ok(other)) => panic!("a scan answered {other:?}"),
        Some(Err(e)) => Err(e),
        None => Err(Error::Timeout { region: R1 }),
    }
}

/// [`read_at`] through whichever store leads, retrying retryable answers.
fn read(c: &mut SimCluster, user: &str, read_ts: u64) -> Option<Bytes> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a read of {user} at {read_ts}");
        let (leader, _) = leader_of(c, &lk(user));
        match read_at(c, leader, user, read_ts) {
            Ok(v) => return v,
            Err(e) if e.is_retryable() || matches!(e, Error::Timeout { .. }) => {
                c.run_for(20 * MS);
            }
            Err(e) => panic!("a read of {user} at {read_ts}: {e}"),
        }
    }
}

/// Every version of `user`, newest first: (commit timestamp, value).
fn versions(c: &mut SimCluster, user: &str) -> Vec<(u64, Bytes)> {
    let deadline = c.now() + 30 * SECOND;
    loop {
        assert!(c.now() < deadline, "no answer to a scan of {user}");
        let (leader, _) = leader_of(c, &lk(user));
        let query = Query::Scan {
            start: mvcc::version_key(user.as_bytes(), u64::MAX),
            end: Some(mvcc::versions_end(user.as_bytes())),
            limit: 100,
            read_ts: None,
        };
        let pending = c.read(leader, R1, query);
        match c.wait(&pending, 5 * SECOND) {
            Some(Ok(QueryResult::Rows(page))) => {
                return page
                    .rows
                    .iter()
                    .map(|(k, v)| {
                        let (_, ts) = mvcc::decode_version_key(k).expect("a version key");
                        (ts, mvcc::decode_version_value(v).unwrap().expect("a put"))
                    })
                    .collect();
            }
            _ => c.run_for(20 * MS),
        }
    }
}

#[test]
fn a_snapshot_read_served_before_a_one_phase_commit_keeps_its_snapshot() {
    for seed in seeds() {
        let mut c = common::cluster(seed);
        // The leader learns a timestamp (50) with a first commit, of another key.
        commit(&mut c, 40, &[put("z", "z")], 50).unwrap();
        // A snapshot at 300 reads "a": nothing.
        assert_eq!(read(&mut c, "a", 300), None, "seed {seed}");
        // A transaction that started at 100 commits "a" in one phase: without the read
        // recorded its timestamp would be 101, visible to the snapshot at 300.
        let commit_ts = commit(&mut c, 100, &[put("a", "a1")], 50).unwrap();
        assert_eq!(commit_ts, 301, "seed {seed}: above the read at 300");
        assert_eq!(read(&mut c, "a", 300), None, "seed {seed}: the snapshot changed");
        assert_eq!(read(&mut c, "a", 301).as_deref(), Some(&b"a1"[..]), "seed {seed}");
    }
}

#[test]
fn a_copy_of_an_applied_one_phase_commit_is_answered_committed_and_writes_nothing() {
    for seed in seeds() {
        let mut c = common::cluster(seed);
        commit(&mut c, 40, &[put("z", "z")], 50).unwrap();
        let numbered = |seq| Some(WriteSession { id: SessionId(0x0e_0001), seq });
        let send = |c: &mut SimCluster, start_ts, value: &str, session| {
            let cmd = TxnCmd::OnePhase {
                start_ts,
                ops: vec![put("a", value)],
                commit_ts: None,
                synced: None,
                session,
            };
            common::txn_call(c, &lk("a"), &cmd, SECOND)
        };
        let first = send(&mut c, 100, "a1", numbered(1));
        let Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(ts) })) = first else {
            panic!("seed {seed}: {first:?}")
        };
        // The same commit sent again (its first answer lost): committed, nothing new
        // written. Before sessions it met its own version: `WriteConflict`.
        let again = send(&mut c, 100, "a1", numbered(1));
        assert_eq!(
            s(again),
            Ok(TxnReply::Status(TxnState::Committed { commit_ts: None })),
            "seed {seed}"
        );
        assert_eq!(versions(&mut c, "a").len(), 1, "seed {seed}: one version, at {ts}");
        // Without a session a copy is a conflict, as before; a refused number stays
        // unused, so the next number of the session is fresh.
        let unnumbered = send(&mut c, 100, "a1", None);
        assert!(matches!(unnumbered, Err(Error::WriteConflict { .. })), "seed {seed}");
        let refused = send(&mut c, 100, "a2", numbered(2));
        assert!(matches!(refused, Err(Error::WriteConflict { .. })), "seed {seed}");
        let fresh = send(&mut c, ts, "a3", numbered(2));
        assert!(
            matches!(fresh, Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(_) }))),
            "seed {seed}: a refused number stays unused: {fresh:?}"
        );
        assert_eq!(versions(&mut c, "a").len(), 2, "seed {seed}");
    }
}

#[test]
fn a_new_leader_commits_above_a_read_its_predecessor_served() {
    for seed in seeds() {
        let mut c = common::cluster(seed);
        commit(&mut c, 40, &[put("z", "z")], 50).unwrap();
        let (old, _) = leader_of(&mut c, &lk("a"));
        assert_eq!(s(read_at(&mut c, old, "a", 300)), Ok(None), "seed {seed}");
        // Leadership moves; the new leader never saw the read at 300.
        let to = c.region(old, R1).unwrap().peers.iter().find(|p| p.store != old).unwrap().id;
        c.transfer_leader(old, R1, to);
        let new = loop {
            c.run_for(100 * MS);
            let (leader, _) = leader_of(&mut c, &lk("a"));
            if leader != old {
                break leader;
            }
        };
        // It refuses until it has a timestamp taken after it became leader (400: the
        // oracle hands out timestamps in order, so above the read at 300).
        let commit_ts = commit(&mut c, 100, &[put("a", "a1")], 400).unwrap();
        assert!(commit_ts > 300, "seed {seed}: {commit_ts}, not above the read at 300");
        assert_eq!(read(&mut c, "a", 300), None, "seed {seed}: the snapshot changed");
        assert_eq!(commit_ts, 401, "seed {seed}");
        assert_eq!(leader_of(&mut c, &lk("a")).0, new, "seed {seed}: leadership moved again");
    }
}

#[test]
fn a_read_at_or_above_a_commit_in_flight_waits_for_it() {
    for seed in seeds() {
        let mut c = common::cluster(seed);
        commit(&mut c, 40, &[put("z", "z")], 50).unwrap();
        let (leader, _) = leader_of(&mut c, &lk("a"));
        // Proposed (timestamp 501), not yet committed by the group.
        let pending = c.txn(leader, R1, one_phase(500, vec![put("a", "a1")], None));
        assert!(pending.take().is_none(), "seed {seed}: answered before it committed");
        // A read at or above it is told to come back (at once: no time passes); a
        // read below it is answered.
        match read_at(&mut c, leader, "a", 600) {
            Err(Error::Dropped { reason: DropReason::CommitPending, .. }) => {}
            other => panic!("seed {seed}: a read at 600 answered {other:?}"),
        }
        assert_eq!(s(read_at(&mut c, leader, "a", 400)), Ok(None), "seed {seed}");
        let committed = c.wait(&pending, 5 * SECOND);
        assert_eq!(
            committed.map(|r| r.map_err(|e| e.to_string())),
            Some(Ok(TxnReply::Status(TxnState::Committed { commit_ts: Some(501) }))),
            "seed {seed}"
        );
        assert_eq!(read_at(&mut c, leader, "a", 600).unwrap().as_deref(), Some(&b"a1"[..]));
    }
}

/// When a store crashes.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Before the commit is sent.
    Before,
    /// Right after it is proposed, its outcome not awaited.
    Proposed,
    /// After it was acknowledged.
    Acknowledged,
}

fn crash_at(seed: u64, step: Step, leader: bool, mode: Option<CrashMode>) -> u64 {
    let what = format!("seed {seed}, {step:?}, leader {leader}, {mode:?}");
    let mut c = common::cluster(seed);
    commit(&mut c, 40, &[put("z", "z")], 50).unwrap();
    let ops = [put("a", "a1"), put("b", "b1"), put("c", "c1")];
    let (at, _) = leader_of(&mut c, &lk("a"));
    let victim = if leader {
        at
    } else {
        c.region(at, R1).unwrap().peers.iter().find(|p| p.store != at).unwrap().store
    };
    let mut acknowledged = None;
    match step {
        Step::Before => {}
        Step::Proposed => {
            let _unknown = c.txn(at, R1, one_phase(100, ops.to_vec(), None));
        }
        Step::Acknowledged => acknowledged = Some(commit(&mut c, 100, &ops, 50).unwrap()),
    }
    match mode {
        Some(mode) => c.crash(victim, mode),
        None => c.stop(victim),
    }
    c.run_for(300 * MS);
    c.restart(victim).expect("restart");
    c.run_for(SECOND);
    // All or nothing: the three keys have one version each at one timestamp, or none.
    let found: Vec<_> = ["a", "b", "c"].iter().map(|k| versions(&mut c, k)).collect();
    let timestamps: Vec<Vec<u64>> =
        found.iter().map(|v| v.iter().map(|(ts, _)| *ts).collect()).collect();
    let all =
        timestamps.iter().all(|t| t.len() == 1) && timestamps.windows(2).all(|w| w[0] == w[1]);
    let none = timestamps.iter().all(Vec::is_empty);
    assert!(all || none, "{what}: {timestamps:?}");
    if let Some(ts) = acknowledged {
        assert_eq!(timestamps[0], vec![ts], "{what}: an acknowledged commit is lost");
    }
    if matches!(step, Step::Before) {
        assert!(none, "{what}: committed without a commit");
    }
    // Sent again (its first answer unknown): committed now, or a write conflict with
    // its own versions, never a second version.
    match commit(&mut c, 100, &ops, 1000) {
        Ok(_) => assert!(none, "{what}: committed twice"),
        Err(Error::WriteConflict { start_ts: 100, .. }) => assert!(all, "{what}"),
        Err(e) => panic!("{what}: {e}"),
    }
    assert!(["a", "b", "c"].iter().all(|k| versions(&mut c, k).len() == 1), "{what}");
    c.trace_hash()
}

#[test]
fn a_crash_at_any_step_in_any_mode_leaves_a_one_phase_commit_all_or_nothing() {
    let modes = [
        None,
        Some(CrashMode::Lost),
        Some(CrashMode::Persisted),
        Some(CrashMode::Torn { seed: 7 }),
        Some(CrashMode::BitFlip { seed: 7 }),
    ];
    for seed in seeds() {
        let mut case = 0;
        for step in [Step::Before, Step::Proposed, Step::Acknowledged] {
            for leader in [true, false] {
                for mode in modes {
                    let trace = crash_at(seed * 1000 + case, step, leader, mode);
                    if case == 0 {
                        assert_eq!(trace, crash_at(seed * 1000, step, leader, mode), "replay");
                    }
                    case += 1;
                }
            }
        }
    }
}

#[test]
fn at_cluster_version_3_a_one_phase_commit_is_refused_and_nothing_is_proposed() {
    for seed in seeds() {
        let mut config = SimConfig::new(seed);
        for s in 1..=3 {
            config.cluster_version_max.insert(StoreId(s), 3);
        }
        let mut c = SimCluster::new(config).unwrap();
        let leader = c.wait_leader(R1, 10 * SECOND).expect("a leader");
        c.run_for(SECOND);
        let last = |c: &SimCluster| {
            c.status(leader).into_iter().find(|p| p.region.id == R1).map(|p| p.last_index)
        };
        let before = last(&c);
        let synced = Some(SyncedTs { term: 1, ts: 50 });
        let pending = c.txn(leader, R1, one_phase(100, vec![put("a", "a1")], synced));
        match pending.take() {
            Some(Err(Error::FeatureNotActive { needed: 4, .. })) => {}
            other => panic!("seed {seed}: a one-phase commit at version 3 answered {other:?}"),
        }
        assert_eq!(last(&c), before, "seed {seed}: something was proposed");
    }
}
