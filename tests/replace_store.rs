//! S1, as a new user meets it: a node whose data dir was wiped, restarted under its old
//! store id. Before the fix it bootstrapped again (an empty log under its old peer
//! ids, able to vote, and to lose acknowledged writes); its replica also crashed in
//! `raft-rs` ("`to_commit` 1 is out of range"). Now it refuses to start without `--join`;
//! started with `--join`, its peers refuse its traffic as replaced ("store 3 was
//! replaced: remove it and add it back") until it is removed and added back through
//! the client; then it holds and serves every write.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use regionkv::{Client, ClusterId, Error, Node, NodeConfig, RejectReason, StoreId};

mod common;

use common::free_addrs;

const SECRET: &[u8] = b"the secret of the replace test cluster";
const CLUSTER: ClusterId = ClusterId(9);

fn config(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    let mut config = NodeConfig::new(
        StoreId(id),
        dir.join(format!("node-{id}")),
        addrs[id as usize - 1],
        CLUSTER,
        SECRET.to_vec(),
    );
    config.tick_interval = Duration::from_millis(20);
    for (i, addr) in addrs.iter().enumerate() {
        if i as u64 + 1 != id {
            config = config.peer(StoreId(i as u64 + 1), *addr);
        }
    }
    config
}

fn key(i: usize) -> String {
    format!("key-{i:04}")
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wiped_node_is_refused_until_removed_and_added_back() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3);
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node::open(config(dir.path(), id, &addrs).bootstrap()))
        .collect::<Result<_, _>>()?;
    for i in 0..40 {
        nodes[0].db().put(key(i), format!("v{i}"))?;
    }

    // Node 3 loses its disk.
    let third = nodes.pop().expect("three nodes");
    third.shutdown()?;
    drop(third);
    std::fs::remove_dir_all(dir.path().join("node-3"))?;
    for i in 40..60 {
        nodes[0].db().put(key(i), format!("v{i}"))?;
    }

    // Restarted as it was: it refuses to start, and says how to join.
    match Node::open(config(dir.path(), 3, &addrs)) {
        Err(e @ Error::NotInitialized { .. }) => {
            assert!(e.to_string().contains("--join"), "{e}");
        }
        other => panic!("a wiped node started without --join: {other:?}"),
    }
    // With --bootstrap it would be a new store too: its peers refuse it all the same
    // (not tried here: a node started with --join is the documented way).
    let joined = Node::open(config(dir.path(), 3, &addrs).join())?;
    // Its peers refuse its traffic as replaced, and it theirs, while regions list it.
    wait_for("the peers to refuse store 3 as replaced", Duration::from_secs(20), || {
        nodes.iter().any(|n| {
            n.transport_rejections().iter().any(|r| {
                r.reason == Some(RejectReason::Replaced)
                    && r.detail.contains("store 3 was replaced: remove it and add it back")
            })
        })
    });
    assert!(
        joined.status().peers.iter().all(|p| !p.initialized),
        "a refused store holds no region: {:?}",
        joined.status().peers
    );
    // The cluster keeps serving meanwhile.
    for i in 60..70 {
        nodes[1].db().put(key(i), format!("v{i}"))?;
    }

    // Replace it: remove store 3, then add it back.
    let client = Client::connect(&addrs[..2], CLUSTER, SECRET)?;
    let removed = client.remove_store(StoreId(3))?;
    assert!(removed.iter().any(|r| r.id.0 == 0), "the directory's group too: {removed:?}");
    for r in &removed {
        assert!(r.peers.iter().all(|p| p.store != StoreId(3)), "{r:?}");
    }
    let added = client.add_store(StoreId(3), addrs[2])?;
    assert_eq!(added.len(), removed.len(), "{added:?}");
    for (r, before) in added.iter().zip(&removed) {
        let peer = r.peers.iter().find(|p| p.store == StoreId(3)).expect("store 3 is back");
        assert!(peer.id.0 >= 1000, "a peer id from the directory, never reused: {peer:?}");
        assert!(r.epoch.conf_ver > before.epoch.conf_ver);
    }

    // It holds every write, and serves: reads and writes through it.
    wait_for("store 3 to hold every write", Duration::from_secs(30), || {
        client.local_scan(StoreId(3), b"key-", None, 1000).map_or(0, |rows| rows.len()) == 70
    });
    let db3 = joined.db();
    for i in [0, 39, 45, 69] {
        assert_eq!(db3.get(key(i))?.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    db3.put(key(70), "through the new store")?;
    assert_eq!(nodes[0].db().get(key(70))?.as_deref(), Some(&b"through the new store"[..]));
    client.close();
    joined.shutdown()?;
    for node in &nodes {
        node.shutdown()?;
    }
    Ok(())
}
