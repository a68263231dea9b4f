//! One-phase commits of snapshot transactions (`Transaction::commit` when every key is
//! in one region, at cluster version 4) on an in-process `Cluster` of three stores
//! (ARCHITECTURE.md, "One-phase snapshot commits"): one Raft proposal per transaction,
//! a commit timestamp above every snapshot read its region served, and two phases as
//! before at cluster version 3. The anomaly checker runs them in
//! `tests/snapshot_txn.rs`.

use bytes::Bytes;
use regionkv::layers::raft::txn::mvcc;
use regionkv::{Cluster, Db};

/// Three stores; the keyspace split at the lock keys of user keys "g" and "p".
fn cluster(dir: &std::path::Path, version: Option<u32>) -> Cluster {
    let builder = Cluster::builder().dir(dir).stores(3);
    let builder = match version {
        Some(v) => (1..=3).fold(builder, |b, id| b.cluster_version_max(id, v)),
        None => builder,
    };
    let cluster = builder.build().unwrap();
    cluster.split_keys(&[mvcc::lock_key(b"g"), mvcc::lock_key(b"p")]).unwrap();
    cluster
}

/// Transaction commands proposed by every store, and one-phase commits among them.
fn proposed(cluster: &Cluster) -> (u64, u64) {
    cluster
        .metrics()
        .iter()
        .fold((0, 0), |(all, one), (_, m)| (all + m.txn_proposed, one + m.txn_one_phase_proposed))
}

/// Writes `keys` (read first) in one transaction; its commit timestamp.
fn write(db: &Db, keys: &[&str], two_phase: bool) -> u64 {
    let mut t = db.transaction().unwrap();
    for key in keys {
        let n = t.get(key).unwrap().map_or(0, |v| v.len());
        t.put(*key, "x".repeat(n + 1));
    }
    let ts = if two_phase { t.commit_two_phase() } else { t.commit_ts() };
    ts.unwrap().expect("something was written")
}

#[test]
fn a_single_region_transaction_commits_with_one_proposal_and_others_with_two_phases() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), None);
    let db = cluster.db();
    // The first one-phase commit of a region's leader may need a timestamp first.
    write(&db, &["a"], false);
    let before = proposed(&cluster);
    for _ in 0..10 {
        write(&db, &["a", "b", "c"], false);
    }
    let after = proposed(&cluster);
    assert_eq!((after.0 - before.0, after.1 - before.1), (10, 10), "one proposal each");
    // Two regions, or two phases forced: prewrites, a commit and resolves.
    let before = after;
    write(&db, &["a", "h"], false);
    write(&db, &["a", "b"], true);
    let after = proposed(&cluster);
    assert_eq!(after.1, before.1, "no one-phase commit");
    assert!(after.0 - before.0 >= 2 * 3, "{before:?} -> {after:?}");
    cluster.shutdown().unwrap();
}

#[test]
fn a_one_phase_commit_lands_above_a_snapshot_read_of_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), None);
    let db = cluster.db();
    write(&db, &["b"], false); // the region's leader has its timestamp
    let mut early = db.transaction().unwrap();
    let reader = db.transaction().unwrap();
    assert!(early.start_ts() < reader.start_ts());
    // Read at the later timestamp: nothing yet.
    assert_eq!(reader.get("a").unwrap(), None);
    // The earlier transaction commits the key in one phase: its timestamp would be
    // just above its start without the read recorded.
    early.put("a", "v");
    let commit_ts = early.commit_ts().unwrap().unwrap();
    assert!(commit_ts > reader.start_ts(), "{commit_ts} <= {}", reader.start_ts());
    // The snapshot read again: still nothing.
    assert_eq!(reader.get("a").unwrap(), None);
    assert_eq!(reader.scan(.., 10).unwrap(), vec![(Bytes::from("b"), Bytes::from("x"))]);
    assert_eq!(db.transaction().unwrap().get("a").unwrap(), Some(Bytes::from("v")));
    cluster.shutdown().unwrap();
}

#[test]
fn at_cluster_version_3_a_single_region_transaction_commits_in_two_phases() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), Some(3));
    let db = cluster.db();
    let before = proposed(&cluster);
    let ts = write(&db, &["a", "b"], false);
    let after = proposed(&cluster);
    assert_eq!(after.1, 0, "no one-phase commit proposed");
    assert!(after.0 - before.0 >= 3, "{before:?} -> {after:?}");
    assert_eq!(db.transaction().unwrap().get("a").unwrap(), Some(Bytes::from("x")));
    assert!(ts > 0);
    cluster.shutdown().unwrap();
}
