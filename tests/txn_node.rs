//! Transactions over the client protocol: three `Node`s on loopback TCP, a `Client`
//! that writes a batch across regions by two-phase commit (txn ids from a node, every
//! TXN command over the wire), reads it back through every node, meets another
//! transaction's lock as a `Conflict` (the refusal's fields crossed the wire), and
//! asks a record's outcome.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regionkv::layers::raft::txn::plan::TxnPlan;
use regionkv::{Client, ClusterId, Error, Node, NodeConfig, Op, TxnOutcome, WriteBatch};

mod common;

use common::free_addrs;

const SECRET: &[u8] = b"the secret of the txn node test cluster";
const CLUSTER: ClusterId = ClusterId(43);

fn config(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    common::node_config(dir, id, addrs, CLUSTER, SECRET)
}

#[test]
fn a_client_writes_a_batch_across_regions_over_tcp() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3);
    let nodes: Vec<Node> =
        (1..=3).map(|id| Node::open(config(dir.path(), id, &addrs))).collect::<Result<_, _>>()?;
    let client = Client::connect(&addrs[1..2], CLUSTER, SECRET)?;
    client.split("m")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.regions()?.len() != 2 {
        assert!(Instant::now() < deadline, "two regions after the split");
        std::thread::sleep(Duration::from_millis(20));
    }
    let db = client.db();
    let mut batch = WriteBatch::new();
    batch.put("apple", "1").put("zebra", "2");
    db.write(batch)?;
    for node in &nodes {
        let db = node.db();
        assert_eq!(db.get("apple")?.as_deref(), Some(&b"1"[..]), "node {}", node.store_id());
        assert_eq!(db.get("zebra")?.as_deref(), Some(&b"2"[..]), "node {}", node.store_id());
    }

    // Another coordinator (a node's own Db) holds "zebra": the client's batch meets
    // the lock as a conflict naming it, and writes nothing.
    let holder = TxnPlan::new(
        1 << 40,
        vec![Op::Put { key: Bytes::from_static(b"zebra"), value: Bytes::from_static(b"3") }],
        60_000,
        None,
    );
    nodes[0].db().txn_call(holder.prewrite(holder.ops.clone()))?;
    let mut batch = WriteBatch::new();
    batch.put("ant", "x").put("zebra", "x");
    match db.write(batch) {
        Err(Error::Conflict { key, txn_id }) => {
            assert_eq!((&key[..], txn_id), (&b"zebra"[..], holder.txn_id));
        }
        other => panic!("a batch over a live lock: {other:?}"),
    }
    assert_eq!(db.get("ant")?, None);
    assert_eq!(db.txn_outcome(holder.txn_id, "zebra")?, TxnOutcome::Pending);
    db.txn_call(holder.commit())?;
    assert_eq!(db.txn_outcome(holder.txn_id, "zebra")?, TxnOutcome::Committed);
    assert_eq!(db.get("zebra")?.as_deref(), Some(&b"3"[..]));
    client.close();
    for node in &nodes {
        node.shutdown()?;
    }
    Ok(())
}
