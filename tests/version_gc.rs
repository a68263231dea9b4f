//! Version GC on an in-process `Cluster` of three stores, the transactional keyspace
//! split into two regions (ARCHITECTURE.md, "Version GC"): after a GC turn the old
//! versions are gone (counted in the leaders' engines), a transaction that started
//! below the safepoint gets `SnapshotTooOld` (reads and commit alike), one at or
//! above it reads exactly what it read before, and a fresh one reads the latest
//! values.

use bytes::Bytes;
use regionkv::layers::raft::txn::mvcc;
use regionkv::{Cluster, Error, StateRole};

mod common;

fn text(v: Option<Bytes>) -> Option<String> {
    v.map(|v| String::from_utf8(v.to_vec()).unwrap())
}

/// Version keys of the transactional keyspace, counted on each region's leader.
fn versions(cluster: &Cluster) -> usize {
    let mut total = 0;
    for (store, peers) in cluster.status() {
        // Region 0, the directory, holds no user key.
        for peer in peers.into_iter().filter(|p| p.role == StateRole::Leader && p.region.id.0 != 0)
        {
            let region = peer.region;
            total += cluster
                .with_store(store, |s| {
                    let view = s.context().engine.read_view();
                    let mut n = 0;
                    view.for_each(&region.start, region.end.as_deref(), |key, _| {
                        n += usize::from(mvcc::decode_version_key(key).is_some());
                        true
                    });
                    n
                })
                .unwrap_or(0);
        }
    }
    total
}

#[test]
fn gc_drops_old_versions_refuses_older_snapshots_and_keeps_what_newer_ones_read() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder().dir(dir.path()).stores(3).build().unwrap();
    cluster.split_keys(&[mvcc::lock_key(b"m")]).unwrap();
    let db = cluster.db();
    // Five versions of "a" and of "x"; "d" put then deleted.
    for i in 1..=5 {
        let mut t = db.transaction().unwrap();
        t.put("a", format!("a{i}"));
        t.put("x", format!("x{i}"));
        if i == 1 {
            t.put("d", "d1");
        }
        if i == 2 {
            t.delete("d");
        }
        t.commit().unwrap();
    }
    let old = db.transaction().unwrap(); // reads a5, x5: started before the last write
    let mut last = db.transaction().unwrap();
    last.put("a", "a6");
    last.commit().unwrap();
    let at = db.transaction().unwrap(); // the safepoint: reads a6, x5
    let before_get = (text(at.get("a").unwrap()), text(at.get("x").unwrap()), at.get("d").unwrap());
    let before_scan = at.scan(.., 100).unwrap();
    assert_eq!(before_get, (Some("a6".into()), Some("x5".into()), None));
    assert_eq!(versions(&cluster), 6 + 5 + 2, "every version is kept before GC");

    let turns = cluster.version_gc(Some(at.start_ts())).unwrap();
    let collected: u64 = turns.iter().map(|(_, s)| s.collected).sum();
    // "a" keeps a6, "x" keeps x5, "d"'s newest below is a delete: nothing of it.
    assert_eq!(collected, 5 + 4 + 2, "{turns:?}");
    assert_eq!(versions(&cluster), 2, "old versions are gone");
    assert!(turns.iter().all(|(_, s)| s.safepoint == at.start_ts()));
    assert!(turns.iter().flat_map(|(_, s)| s.floors.values()).all(|f| *f == at.start_ts()));

    // At the safepoint: exactly as before GC.
    let after_get = (text(at.get("a").unwrap()), text(at.get("x").unwrap()), at.get("d").unwrap());
    assert_eq!(after_get, before_get);
    assert_eq!(at.scan(.., 100).unwrap(), before_scan);
    // Below it: refused, reads and commit alike (start a new transaction).
    for key in ["a", "x", "d"] {
        match old.get(key) {
            Err(Error::SnapshotTooOld { read_ts, floor }) => {
                assert_eq!((read_ts, floor), (old.start_ts(), at.start_ts()));
            }
            other => panic!("a read of {key} below the floor answered {other:?}"),
        }
    }
    assert!(matches!(old.scan(.., 10), Err(Error::SnapshotTooOld { .. })));
    let mut late = old;
    late.put("b", "late");
    assert!(matches!(late.commit(), Err(Error::SnapshotTooOld { .. })));
    // A fresh transaction reads the latest values.
    let fresh = db.transaction().unwrap();
    assert_eq!(text(fresh.get("a").unwrap()).as_deref(), Some("a6"));
    assert_eq!(text(fresh.get("x").unwrap()).as_deref(), Some("x5"));
    assert_eq!(fresh.get("b").unwrap(), None, "the refused commit wrote nothing");
    // The directory never lowers the safepoint; a second turn collects nothing.
    let again = cluster.version_gc(Some(1)).unwrap();
    assert!(again.iter().all(|(_, s)| s.safepoint == at.start_ts()), "{again:?}");
    assert_eq!(versions(&cluster), 2);
    cluster.shutdown().unwrap();
}

/// A `Node`'s version GC keeps versions for its configured life time
/// (`NodeConfig::gc_life_time`), where every node used the 10-minute default.
#[test]
fn a_node_collects_at_its_configured_life_time() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = common::free_addrs(3);
    let secret = b"the secret of the node version gc test";
    let cluster = regionkv::ClusterId(48);
    let nodes: Vec<regionkv::Node> = (1..=3)
        .map(|id| {
            let mut config = common::node_config(dir.path(), id, &addrs, cluster, secret);
            config.gc_life_time = std::time::Duration::from_millis(1);
            regionkv::Node::open(config).unwrap()
        })
        .collect();
    let db = nodes[0].db();
    for value in ["1", "2"] {
        let mut t = db.transaction().unwrap();
        t.put("k", value);
        t.commit().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let now = db.timestamp().unwrap();
    // The node that leads the region takes the turn (the others have nothing to do).
    let safepoint = nodes.iter().map(|n| n.version_gc(None).unwrap().safepoint).max().unwrap();
    // The oracle's clock is milliseconds above 18 bits: a life time of 1 ms puts the
    // safepoint within a few ms of `now`, the default ten minutes far below it.
    let ms = |ts: u64| ts >> 18;
    assert!(ms(safepoint) + 1_000 > ms(now), "safepoint {safepoint} (now {now})");
    let t = db.transaction().unwrap();
    assert_eq!(text(t.get("k").unwrap()).as_deref(), Some("2"));
    for node in &nodes {
        node.shutdown().unwrap();
    }
}
