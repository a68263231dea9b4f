//! Three `Node`s in one process over loopback TCP: writes through one node's `Db` read
//! back through every node's; split and merge through the client protocol; a client
//! with the wrong secret is refused and nothing changes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regionkv::layers::raft::version::CLUSTER_VERSION_MAX;
use regionkv::{Client, ClusterId, Error, Node, NodeConfig, RejectReason};

mod common;

use common::free_addrs;

const SECRET: &[u8] = b"the secret of the node test cluster";
const CLUSTER: ClusterId = ClusterId(42);

fn config(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    common::node_config(dir, id, addrs, CLUSTER, SECRET)
}

fn key(i: usize) -> String {
    format!("key-{i:04}")
}

/// Status schema 2 over the wire: each node's answer and its own `Node::status` are
/// reports of the same start, numbered one after the other.
fn check_status_reports(statuses: &[regionkv::StoreStatus], nodes: &[Node]) {
    for wire in statuses {
        let node = nodes.iter().find(|n| n.store_id() == wire.store).expect("a node's store");
        assert_eq!(wire.status_schema, Some(regionkv::STATUS_SCHEMA));
        assert_eq!(wire.binary_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(wire.store_state, Some(regionkv::StoreState::Serving));
        assert_eq!(wire.peer_set_complete, Some(true));
        assert!(wire.capacity.is_some_and(|c| c.disk_total_bytes.is_some()), "{wire:?}");
        assert!(wire.peers.iter().all(|p| p.timeline.is_some() && p.first_index.is_some()));
        let own = node.status();
        assert_eq!(own.boot_id, wire.boot_id, "one start of the store");
        assert!(own.report_seq > wire.report_seq, "{own:?} after {wire:?}");
    }
}

#[test]
fn three_nodes_replicate_split_and_merge_over_tcp() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3);
    let nodes: Vec<Node> =
        (1..=3).map(|id| Node::open(config(dir.path(), id, &addrs))).collect::<Result<_, _>>()?;

    // Writes through node 1, reads through every node.
    let db1 = nodes[0].db();
    for i in 0..60 {
        db1.put(key(i), format!("v{i}"))?;
    }
    for node in &nodes {
        let db = node.db();
        for i in [0, 17, 59] {
            assert_eq!(
                db.get(key(i))?.as_deref(),
                Some(format!("v{i}").as_bytes()),
                "node {} reads key {i}",
                node.store_id()
            );
        }
        let rows = db.scan(b"key-".., 1000)?;
        assert_eq!(rows.len(), 60, "node {} scans every key", node.store_id());
    }

    // Split and merge through the client protocol, from a client that knows one node.
    let client = Client::connect(&addrs[2..], CLUSTER, SECRET)?;
    assert_eq!(client.stores().len(), 3, "the client learned every store from one node");
    // Every node reports its metrics with its status; the 60 writes were timed by the
    // leader that acknowledged them, and each node's own view matches what it sent.
    let statuses = client.status();
    assert_eq!(statuses.len(), 3);
    let timed: u64 = statuses
        .iter()
        .map(|s| s.metrics.as_ref().expect("a node of this version reports metrics"))
        .map(|m| m.write_latency_us.count())
        .sum();
    assert!(timed >= 60, "{timed} writes timed");
    for node in &nodes {
        let m = node.metrics();
        assert!(m.regions >= 1 && m.wal.fsyncs > 0, "node {}: {m:?}", node.store_id());
    }
    check_status_reports(&statuses, &nodes);
    let parts = client.split(key(30))?;
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].start, key(30).as_bytes());
    let (left, right) = (parts[0].id, parts[1].id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.regions()?.len() != 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.regions()?.len(), 2, "two regions after the split");

    // Writes on both sides of the split, through the client's Db and node 2's.
    let cdb = client.db();
    for i in 60..90 {
        cdb.put(key(i), format!("v{i}"))?;
    }
    nodes[1].db().put(key(5), "changed")?;
    nodes[2].db().delete(key(6))?;
    let mut batch = regionkv::WriteBatch::new();
    batch.put(key(31), "batched").put(key(32), "batched");
    cdb.write(batch)?;
    // A batch across the split is written whole (two-phase commit).
    cdb.write(std::mem::take(regionkv::WriteBatch::new().put(key(1), "x").put(key(80), "x")))?;

    let merged = client.merge(left, right)?;
    assert_eq!((merged.id, merged.start.as_slice(), merged.end.as_ref()), (left, &b""[..], None));
    while client.regions()?.len() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.regions()?.len(), 1, "one region after the merge");

    // Every write is there, through every node and through the client.
    let expected = |i: usize| -> Option<String> {
        match i {
            5 => Some("changed".into()),
            6 => None,
            31 | 32 => Some("batched".into()),
            1 | 80 => Some("x".into()),
            _ => Some(format!("v{i}")),
        }
    };
    for db in nodes.iter().map(Node::db).chain([client.db()]) {
        let rows = db.scan(.., 1000)?;
        assert_eq!(rows.len(), 89);
        for i in 0..90 {
            assert_eq!(
                db.get(key(i))?.map(|v| String::from_utf8_lossy(&v).into_owned()),
                expected(i)
            );
        }
    }

    // The wrong secret is refused with a reason, and the nodes keep serving.
    match Client::connect(&addrs, CLUSTER, b"not the secret of this cluster") {
        Err(Error::Refused { reason, .. }) => {
            assert_eq!(reason, RejectReason::BadProof);
        }
        other => panic!("a client with the wrong secret was not refused: {other:?}"),
    }
    match Client::connect(&addrs, ClusterId(7), SECRET) {
        Err(Error::Refused { .. } | Error::Protocol(_)) => {}
        other => panic!("a client of another cluster was not refused: {other:?}"),
    }
    assert!(nodes.iter().map(|n| n.client_stats().handshake_failures).sum::<u64>() >= 2);
    cdb.put("after-refusals", "ok")?;
    assert_eq!(nodes[0].db().get("after-refusals")?.as_deref(), Some(&b"ok"[..]));

    client.close();
    for node in &nodes {
        node.shutdown()?;
    }
    assert!(matches!(db1.get(key(1)), Err(Error::Shutdown)));
    Ok(())
}

#[test]
fn the_cluster_version_is_read_and_finalized_over_the_client_protocol()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3);
    let nodes: Vec<Node> =
        (1..=3).map(|id| Node::open(config(dir.path(), id, &addrs))).collect::<Result<_, _>>()?;
    nodes[0].db().put("k", "v")?;
    let client = Client::connect(&addrs[1..2], CLUSTER, SECRET)?;
    // A new cluster runs at the newest version once its directory leader said so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let newest = CLUSTER_VERSION_MAX;
    while client.cluster_version().ok() != Some(newest) {
        assert!(Instant::now() < deadline, "the cluster never ran at version {newest}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = client.upgrade_status()?;
    assert_eq!(status.active, newest);
    let reports: Vec<_> = status.stores.iter().map(|s| (s.store.0, s.active, s.max)).collect();
    let each = (Some(newest), Some(newest));
    assert_eq!(reports, vec![(1, each.0, each.1), (2, each.0, each.1), (3, each.0, each.1)]);
    for s in client.status() {
        assert_eq!((s.cluster_version_active, s.max_cluster_version), each);
    }
    assert_eq!(client.finalize_upgrade(None)?, newest);
    // No store supports the next version: refused, naming the first store, nothing
    // proposed.
    let next = newest + 1;
    match client.finalize_upgrade(Some(next)) {
        Err(Error::UpgradeRefused { store, target, supported: Some(s) })
            if target == next && s == newest =>
        {
            assert_eq!(store.0, 1);
        }
        other => panic!("a finalize past every store's binary was not refused: {other:?}"),
    }
    assert_eq!(nodes[2].cluster_version()?, newest);
    assert_eq!(nodes[0].upgrade_status()?.active, newest);
    for node in &nodes {
        node.shutdown()?;
    }
    Ok(())
}
