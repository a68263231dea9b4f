//! A client of this binary against nodes of an older one (cluster version 3, mid
//! upgrade), over TCP. The older nodes are emulated by the `#[doc(hidden)]`
//! `NodeConfig::emulate_binary_max`: their stores run at most version 3, and their
//! client service reads a transaction request as a version-3 binary does (the fields
//! of version 4 skipped, its command kinds refused `Malformed`).
//!
//! Bugs fixed here:
//! - a spanning `Db::write` sent the staging prewrite of async commit; such a node
//!   skipped the flag and wrote a `Pending` record, the `Db` answered `Ok` once every
//!   prewrite applied, nobody decided the record (only a `Staging` one is decided),
//!   and the first reader after the TTL aborted it: an acknowledged write lost. Now a
//!   node confirms a staging prewrite in its answer (answer tag 70), and a `Db` whose
//!   primary prewrite was not confirmed commits that transaction in two phases;
//! - a one-phase snapshot commit (txn kind 9) was answered `Malformed` by such a node
//!   and the caller got that error; now the `Db` falls back to two phases.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regionkv::{Client, ClusterId, Node, NodeConfig, WriteBatch};

mod common;

use common::free_addrs;

const SECRET: &[u8] = b"the secret of the mixed versions test cluster";
const CLUSTER: ClusterId = ClusterId(47);

/// A node of a binary that supports cluster versions up to 3.
fn older(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    let mut config = common::node_config(dir, id, addrs, CLUSTER, SECRET);
    config.emulate_binary_max = Some(3);
    config
}

/// Three older nodes, two regions split at "m"; a client of this binary.
fn older_cluster(dir: &std::path::Path) -> (Vec<Node>, Client) {
    let addrs = free_addrs(3);
    let nodes: Vec<Node> = (1..=3).map(|id| Node::open(older(dir, id, &addrs)).unwrap()).collect();
    let client = Client::connect(&addrs[..1], CLUSTER, SECRET).unwrap();
    client.split("m").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.regions().unwrap().len() != 2 {
        assert!(Instant::now() < deadline, "two regions after the split");
        std::thread::sleep(Duration::from_millis(20));
    }
    (nodes, client)
}

fn text(v: Option<bytes::Bytes>) -> Option<String> {
    v.map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn a_batch_across_regions_acknowledged_by_older_nodes_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, client) = older_cluster(dir.path());
    // A short TTL: a record left undecided is aborted by the first reader after it.
    let db = client.db().with_txn_ttl(Duration::from_millis(300));
    for round in 0..3 {
        let mut batch = WriteBatch::new();
        batch.put("apple", round.to_string()).put("zebra", round.to_string());
        db.write(batch).unwrap();
        // Past the TTL: a record still `Pending` would be aborted by this read.
        std::thread::sleep(Duration::from_millis(400));
        for key in ["apple", "zebra"] {
            assert_eq!(text(db.get(key).unwrap()), Some(round.to_string()), "{key}, round {round}");
        }
    }
    client.close();
    for node in &nodes {
        node.shutdown().unwrap();
    }
}

#[test]
fn a_one_phase_snapshot_commit_falls_back_to_two_phases_on_older_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, client) = older_cluster(dir.path());
    let db = client.db();
    let mut t = db.transaction().unwrap();
    t.put("a", "1");
    t.put("b", "2");
    let commit_ts = t.commit_ts().unwrap();
    assert!(commit_ts.is_some(), "two phases answer their commit timestamp");
    let t = db.transaction().unwrap();
    assert_eq!(text(t.get("a").unwrap()).as_deref(), Some("1"));
    assert_eq!(text(t.get("b").unwrap()).as_deref(), Some("2"));
    client.close();
    for node in &nodes {
        node.shutdown().unwrap();
    }
}
