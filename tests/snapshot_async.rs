//! Async commit of snapshot transactions that span regions (`Transaction::commit`
//! at cluster version 5; `regionkv_raft::txn::staging`, "Snapshot transactions") on
//! an in-process `Cluster` of three stores: the transaction is answered once every
//! prewrite applied, at a commit timestamp above every snapshot read of its keys,
//! visible to every later transaction on another `Db` at once; a snapshot that read
//! a key before the commit still reads what it read. At cluster version 4 the
//! transaction commits in two phases, as before.

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

/// Batched resolves (async commit's decisions and resolves) the stores proposed.
fn resolve_batches(cluster: &Cluster) -> u64 {
    cluster.metrics().iter().map(|(_, m)| m.txn_resolve_batches).sum()
}

fn transfer(db: &Db, from: &str, to: &str) -> u64 {
    let mut t = db.transaction().unwrap();
    let a: i64 =
        t.get(from).unwrap().map_or(100, |v| std::str::from_utf8(&v).unwrap().parse().unwrap());
    let b: i64 =
        t.get(to).unwrap().map_or(100, |v| std::str::from_utf8(&v).unwrap().parse().unwrap());
    t.put(from, (a - 1).to_string());
    t.put(to, (b + 1).to_string());
    t.commit_ts().unwrap().expect("written")
}

#[test]
fn a_transaction_across_regions_commits_asynchronously_above_every_read_of_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), None);
    let (db, other) = (cluster.db(), cluster.db());
    transfer(&db, "a", "z");
    let before = resolve_batches(&cluster);
    let writer = db.transaction().unwrap();
    // A later snapshot reads "z" first: the commit must land above it.
    let reader = other.transaction().unwrap();
    assert!(writer.start_ts() < reader.start_ts());
    assert_eq!(reader.get("z").unwrap().as_deref(), Some(&b"101"[..]));
    let mut writer = writer;
    writer.put("a", "98");
    writer.put("z", "102");
    let commit_ts = writer.commit_ts().unwrap().expect("written");
    assert!(commit_ts > reader.start_ts(), "{commit_ts} at or below a read served before");
    // The snapshot still reads what it read (past the lock, or the version below).
    assert_eq!(reader.get("z").unwrap().as_deref(), Some(&b"101"[..]));
    assert_eq!(reader.get("a").unwrap().as_deref(), Some(&b"99"[..]));
    // A transaction started after the answer sees all of it, on another `Db`.
    let after = other.transaction().unwrap();
    assert!(after.start_ts() >= commit_ts);
    assert_eq!(after.get("a").unwrap().as_deref(), Some(&b"98"[..]));
    assert_eq!(after.get("z").unwrap().as_deref(), Some(&b"102"[..]));
    // Decided and resolved by the batched resolves (async commit), not by a commit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while resolve_batches(&cluster) == before {
        assert!(std::time::Instant::now() < deadline, "no batched resolve");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    cluster.shutdown().unwrap();
}

#[test]
fn at_cluster_version_4_a_transaction_across_regions_commits_in_two_phases() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), Some(4));
    let db = cluster.db();
    // The first is refused before anything is proposed (its id given up by one
    // deciding resolve), then two phases; the `Db` does not try again for a while.
    transfer(&db, "a", "z");
    let before = resolve_batches(&cluster);
    for _ in 0..2 {
        transfer(&db, "a", "z");
    }
    assert_eq!(resolve_batches(&cluster), before, "no async commit at version 4");
    let t = db.transaction().unwrap();
    assert_eq!(t.get("a").unwrap().as_deref(), Some(&b"97"[..]));
    assert_eq!(t.get("z").unwrap().as_deref(), Some(&b"103"[..]));
    cluster.shutdown().unwrap();
}
