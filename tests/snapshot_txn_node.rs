//! Snapshot-isolated transactions (`Db::transaction`) over the client protocol: three
//! `Node`s on loopback TCP, the transactional keyspace split at the lock key of "m",
//! and two `Client`s connected to different nodes. Timestamps, transaction ids and
//! every TXN command cross the wire: read-your-writes, a commit across both regions
//! seen by the other client, a write-write conflict with nothing of the loser visible,
//! and a scan merging committed versions with the transaction's own writes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regionkv::layers::raft::txn::mvcc;
use regionkv::{Client, ClusterId, Error, Node, NodeConfig};

mod common;

use common::free_addrs;

const SECRET: &[u8] = b"the secret of the snapshot txn node test cluster";
const CLUSTER: ClusterId = ClusterId(47);

fn config(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    common::node_config(dir, id, addrs, CLUSTER, SECRET)
}

fn text(v: Option<Bytes>) -> Option<String> {
    v.map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn snapshot_transactions_run_over_tcp_between_two_clients() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3);
    let nodes: Vec<Node> =
        (1..=3).map(|id| Node::open(config(dir.path(), id, &addrs))).collect::<Result<_, _>>()?;
    let one = Client::connect(&addrs[1..2], CLUSTER, SECRET)?;
    let two = Client::connect(&addrs[2..3], CLUSTER, SECRET)?;
    one.split(mvcc::lock_key(b"m"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while one.regions()?.len() != 2 || two.regions()?.len() != 2 {
        assert!(Instant::now() < deadline, "two regions after the split");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (db1, db2) = (one.db(), two.db());

    // Read-your-writes, then a commit across both regions.
    let mut t = db1.transaction()?;
    assert_eq!(t.get("apple")?, None);
    t.put("apple", "1");
    t.put("zebra", "2");
    assert_eq!(text(t.get("apple")?).as_deref(), Some("1"), "read-your-writes");
    let before = db2.transaction()?;
    t.commit()?;

    // The other client sees the commit; its snapshot from before does not.
    let after = db2.transaction()?;
    assert!(after.start_ts() > before.start_ts());
    assert_eq!(text(after.get("apple")?).as_deref(), Some("1"));
    assert_eq!(text(after.get("zebra")?).as_deref(), Some("2"));
    assert_eq!(before.get("zebra")?, None, "a snapshot from before the commit");
    // So does every node's own Db.
    for node in &nodes {
        let t = node.db().transaction()?;
        assert_eq!(text(t.get("zebra")?).as_deref(), Some("2"), "node {}", node.store_id());
    }

    // A write-write conflict: the second to commit loses, nothing of it is visible.
    let mut first = db1.transaction()?;
    let mut second = db2.transaction()?;
    // The second reads the key first (a lost update otherwise): the first's commit
    // lands above that read, after the second's start.
    second.get("apple")?;
    first.put("apple", "first");
    second.put("apple", "second");
    second.put("yak", "second"); // the other region
    first.commit()?;
    let lost = second.commit();
    assert!(
        matches!(&lost, Err(Error::Conflict { key, .. }) if key.as_ref() == b"apple"),
        "{lost:?}"
    );

    // A scan: committed versions at the start, the transaction's own writes merged in,
    // deletes skipped, in key order, up to the limit.
    let mut t = db2.transaction()?;
    t.put("kiwi", "own");
    t.delete("zebra");
    let rows: Vec<(String, String)> = t
        .scan(.., 10)?
        .into_iter()
        .map(|(k, v)| (text(Some(k)).unwrap(), text(Some(v)).unwrap()))
        .collect();
    let expected = [("apple", "first"), ("kiwi", "own")];
    assert_eq!(rows, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
    assert_eq!(t.scan("b".., 1)?.len(), 1, "the limit");
    t.commit()?;
    let now = db1.transaction()?;
    assert_eq!(now.get("yak")?, None, "nothing of the loser");
    assert_eq!(now.get("zebra")?, None, "deleted");
    assert_eq!(text(now.get("kiwi")?).as_deref(), Some("own"));

    one.close();
    two.close();
    for node in &nodes {
        node.shutdown()?;
    }
    Ok(())
}
