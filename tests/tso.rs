//! The timestamp oracle through `Db::timestamp` (ARCHITECTURE.md, "Timestamp
//! oracle"): on an in-process `Cluster`, timestamps asked from many threads at once
//! are all distinct and each thread's go up; they stay above everything handed out
//! across a kill of the directory's leader and a reopen of the whole cluster; a
//! cluster below version 3 refuses. Over loopback TCP, a `Client` and the nodes' own
//! `Db`s get timestamps that go up, whichever node they ask through.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use regionkv::layers::raft::StateRole;
use regionkv::layers::raft::directory::DIRECTORY;
use regionkv::{Client, Cluster, ClusterId, Error, Node, NodeConfig};

mod common;

use common::free_addrs;

/// Asks `threads` threads for `each` timestamps one at a time; every one of them.
fn from_threads(db: &regionkv::Db, threads: usize, each: usize) -> Vec<u64> {
    let all = Arc::new(parking_lot::Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (db, all) = (db.clone(), all.clone());
            s.spawn(move || {
                let mut mine = Vec::with_capacity(each);
                for _ in 0..each {
                    mine.push(db.timestamp().unwrap());
                }
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "one thread's go up");
                all.lock().extend(mine);
            });
        }
    });
    Arc::try_unwrap(all).unwrap().into_inner()
}

#[test]
fn timestamps_are_distinct_and_only_go_up_across_a_leader_kill_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::builder().dir(dir.path()).stores(3).build().unwrap();
    let db = cluster.db();
    let all = from_threads(&db, 8, 50);
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "no timestamp handed out twice");
    let mut max = *distinct.last().unwrap();
    // A batch: the first of 100 consecutive ones, above all before.
    let first = db.timestamps(100).unwrap();
    assert!(first > max);
    max = first + 99;
    assert!(db.timestamp().unwrap() > max);
    max = db.timestamp().unwrap();

    // The directory's leader is killed: the next leader starts above.
    let leader = cluster
        .status()
        .into_iter()
        .flat_map(|(store, peers)| peers.into_iter().map(move |p| (store, p)))
        .filter(|(_, p)| p.region.id == DIRECTORY && p.role == StateRole::Leader)
        .max_by_key(|(_, p)| p.term)
        .map(|(store, _)| store)
        .expect("a directory leader");
    cluster.kill_store(leader).unwrap();
    let after = db.timestamp().unwrap();
    assert!(after > max, "{after} after the kill is not above {max}");
    cluster.restart_store(leader).unwrap();
    max = after;
    cluster.shutdown().unwrap();
    drop(cluster);

    let cluster = Cluster::builder().dir(dir.path()).stores(3).build().unwrap();
    let after = cluster.db().timestamp().unwrap();
    assert!(after > max, "{after} after the reopen is not above {max}");
    cluster.shutdown().unwrap();
}

#[test]
fn a_cluster_below_version_3_refuses_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let builder = Cluster::builder().dir(dir.path()).stores(3);
    let cluster = (1..=3).fold(builder, |b, id| b.cluster_version_max(id, 2)).build().unwrap();
    match cluster.db().with_deadline(Duration::from_secs(5)).timestamp() {
        Err(Error::FeatureNotActive { active: 2, needed: 3, .. }) => {}
        other => panic!("timestamps at version 2: {other:?}"),
    }
    cluster.shutdown().unwrap();
}

const SECRET: &[u8] = b"the secret of the tso node test cluster";
const CLUSTER: ClusterId = ClusterId(47);

fn config(dir: &std::path::Path, id: u64, addrs: &[SocketAddr]) -> NodeConfig {
    common::node_config(dir, id, addrs, CLUSTER, SECRET)
}

#[test]
fn timestamps_over_tcp_go_up_whichever_node_is_asked() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let addrs = free_addrs(3);
    let nodes: Vec<Node> =
        (1..=3).map(|id| Node::open(config(dir.path(), id, &addrs))).collect::<Result<_, _>>()?;
    let client = Client::connect(&addrs, CLUSTER, SECRET)?;
    let db = client.db();
    let mut last = 0;
    for round in 0..20 {
        let t = if round % 2 == 0 { db.timestamp()? } else { nodes[round % 3].db().timestamp()? };
        assert!(t > last, "round {round}: {t} is not above {last}");
        last = t;
    }
    let first = db.timestamps(10)?;
    assert!(first > last);
    let all = from_threads(&db, 4, 20);
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len());
    assert!(*distinct.first().unwrap() > first + 9);
    client.close();
    for node in nodes {
        node.shutdown()?;
    }
    Ok(())
}
