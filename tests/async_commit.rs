//! Async commit through `Db` on an in-process `Cluster` (ARCHITECTURE.md, "Async
//! commit"): a batch across regions is answered once its prewrites applied, and is
//! visible right after, also to a reader on another `Db`; the decisions and resolves
//! of concurrent transactions are batched (fewer `ResolveMany` proposals than
//! transactions); a staging transaction whose coordinator stopped is decided by a
//! reader's participant check after its TTL; at cluster version 3 the level-1 path is
//! used and no batched resolve is proposed.

use std::time::Duration;

use bytes::Bytes;
use regionkv::layers::raft::txn::plan::TxnPlan;
use regionkv::{Cluster, Db, Op, TxnOutcome, TxnReply, WriteBatch};

fn cluster(dir: &std::path::Path) -> Cluster {
    let cluster = Cluster::builder().dir(dir).stores(3).build().unwrap();
    cluster.split_keys(&["m"]).unwrap();
    cluster
}

fn get(db: &Db, key: &str) -> Option<String> {
    db.get(key).unwrap().map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// `ResolveMany` proposals and their items, over every store.
fn batches(cluster: &Cluster) -> (u64, u64) {
    cluster
        .metrics()
        .iter()
        .fold((0, 0), |(b, i), (_, m)| (b + m.txn_resolve_batches, i + m.txn_resolve_items))
}

#[test]
fn a_cross_region_write_is_visible_right_after_ok_also_on_another_db() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let (writer, reader) = (cluster.db(), cluster.db());
    for round in 0..20 {
        let (a, z) = (format!("a{round}"), format!("z{round}"));
        let mut batch = WriteBatch::new();
        batch.put(a.as_str(), "1").put(z.as_str(), "2");
        writer.write(batch).unwrap();
        // Right after the answer: the locks may still be there (staging, or decided
        // and not resolved yet); a reader sees the values either way.
        assert_eq!(get(&reader, &z).as_deref(), Some("2"), "round {round}");
        assert_eq!(get(&reader, &a).as_deref(), Some("1"), "round {round}");
        assert_eq!(get(&writer, &z).as_deref(), Some("2"), "round {round}");
    }
    // The async path was taken: decisions went by batched resolves.
    let (batches, items) = batches(&cluster);
    assert!(batches > 0 && items >= 20, "{batches} batches, {items} items");
    cluster.shutdown().unwrap();
}

#[test]
fn concurrent_transactions_share_their_resolve_proposals() {
    const THREADS: usize = 16;
    const EACH: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let db = db.clone();
            scope.spawn(move || {
                for i in 0..EACH {
                    let mut batch = WriteBatch::new();
                    batch.put(format!("a-{t}-{i}"), "x").put(format!("z-{t}-{i}"), "y");
                    db.write(batch).unwrap();
                }
            });
        }
    });
    let n = (THREADS * EACH) as u64;
    // Every transaction's items: its decision (primary's region) and the other
    // region's resolve. Wait for the resolver to finish them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while batches(&cluster).1 < 2 * n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (batches, items) = batches(&cluster);
    assert!(items >= 2 * n, "{items} items for {n} transactions");
    assert!(batches < 2 * n, "{batches} proposals for {items} items: nothing was batched");
    for t in 0..THREADS {
        assert_eq!(get(&db, &format!("z-{t}-{}", EACH - 1)).as_deref(), Some("y"));
    }
    cluster.shutdown().unwrap();
}

#[test]
fn a_stopped_async_coordinator_is_settled_by_a_reader_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let db = cluster.db();
    let put = |k: &'static str| Op::Put { key: Bytes::from(k), value: Bytes::from("new") };
    // Every prewrite applied, the coordinator gone before anything else: committed.
    let done = TxnPlan::new(1 << 42, vec![put("b1"), put("y1")], 200, None).with_staging(true);
    for op in &done.ops {
        assert_eq!(db.txn_call(done.prewrite(vec![op.clone()])).unwrap(), TxnReply::Done);
    }
    // Only the primary's prewrite applied: aborted, and the other one now refused.
    let half =
        TxnPlan::new((1 << 42) + 1, vec![put("b2"), put("y2")], 200, None).with_staging(true);
    assert_eq!(db.txn_call(half.prewrite(vec![half.ops[0].clone()])).unwrap(), TxnReply::Done);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&db, "y1").as_deref(), Some("new"));
    assert_eq!(get(&db, "b2"), None);
    assert_eq!(db.txn_outcome(done.txn_id, "b1").unwrap(), TxnOutcome::Committed);
    assert_eq!(db.txn_outcome(half.txn_id, "b2").unwrap(), TxnOutcome::Aborted);
    match db.txn_call(half.prewrite(vec![half.ops[1].clone()])) {
        Err(regionkv::Error::TxnAborted { .. }) => {}
        other => panic!("a prevented prewrite answered {other:?}"),
    }
    assert_eq!(get(&db, "y2"), None);
    cluster.shutdown().unwrap();
}

#[test]
fn at_cluster_version_3_the_level_1_path_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Cluster::builder().dir(dir.path()).stores(3);
    let builder = (1..=3).fold(builder, |b, id| b.cluster_version_max(id, 3));
    let cluster = builder.build().unwrap();
    cluster.split("m").unwrap();
    let db = cluster.db();
    for round in 0..3 {
        let mut batch = WriteBatch::new();
        batch.put("a", round.to_string()).put("z", round.to_string());
        db.write(batch).unwrap();
        assert_eq!(get(&db, "z"), Some(round.to_string()));
    }
    assert_eq!(batches(&cluster), (0, 0), "a batched resolve at version 3");
    cluster.shutdown().unwrap();
}
