//! Three stores in one process replicate over loopback TCP; an impostor with the wrong
//! cluster secret, and garbage on the wire, are refused without disturbing them.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::StateRole;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::tcp::{TcpConfig, TcpTransport};
use regionkv_raft::transport::wire::ClusterId;
use regionkv_raft::transport::{InboxSlot, Transport};
use regionkv_raft::{
    Op, Query, QueryResult, ReadRequest, Store, StoreConfig, StoreOptions, WriteRequest,
};
use regionkv_wal::RealFs;

const R1: RegionId = RegionId(1);
const SECRET: &[u8] = b"a cluster secret of some length";

struct Node {
    store: Store,
    tcp: Arc<TcpTransport>,
}

fn start(id: u64, dir: &std::path::Path, secret: &[u8], listen: SocketAddr) -> Node {
    let slot = InboxSlot::new();
    let config = TcpConfig::new(StoreId(id), listen, ClusterId(7), secret.to_vec());
    let tcp = Arc::new(TcpTransport::start(config, slot.clone()).unwrap());
    let transport: Arc<dyn Transport> = tcp.clone();
    let options =
        StoreOptions::new(StoreConfig::new(StoreId(id)).tick_interval(Duration::from_millis(10)));
    let store =
        Store::start(Arc::new(RealFs), &dir.join(format!("store-{id}")), &options, &transport)
            .unwrap();
    slot.bind(store.inbox());
    Node { store, tcp }
}

fn connect_all(nodes: &BTreeMap<u64, Node>) {
    for (a, na) in nodes {
        for (b, nb) in nodes {
            if a != b {
                na.tcp.set_peer_addr(StoreId(*b), nb.tcp.local_addr()).unwrap();
            }
        }
    }
}

fn leader(nodes: &BTreeMap<u64, Node>) -> Option<u64> {
    nodes
        .iter()
        .find(|(_, n)| n.store.status().iter().any(|s| s.role == StateRole::Leader))
        .map(|(id, _)| *id)
}

fn call<T: Send + 'static>(
    f: impl FnOnce(Box<dyn FnOnce(regionkv_raft::Result<T>) + Send>),
) -> Option<regionkv_raft::Result<T>> {
    let slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    f(Box::new(move |r| *s.lock() = Some(r)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(r) = slot.lock().take() {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn put(nodes: &BTreeMap<u64, Node>, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(l) = leader(nodes) {
            let ops = vec![Op::Put {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from(key.to_owned()),
            }];
            let store = &nodes[&l].store;
            if let Some(Ok(())) = call(|reply| {
                store.write(WriteRequest {
                    region: R1,
                    epoch: Epoch::INITIAL,
                    ops,
                    session: None,
                    reply,
                });
            }) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("put {key} did not complete");
}

fn get(nodes: &BTreeMap<u64, Node>, key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(l) = leader(nodes) {
            let query = Query::Get { key: Bytes::from(key.to_owned()), read_ts: None };
            let store = &nodes[&l].store;
            if let Some(Ok(QueryResult::Value(v))) = call(|reply| {
                store.read(ReadRequest { region: R1, epoch: Epoch::INITIAL, query, reply });
            }) {
                return v;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("get {key} did not complete");
}

#[test]
fn three_stores_replicate_over_tcp_and_refuse_impostors() {
    let dir = tempfile::tempdir().unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes: BTreeMap<u64, Node> =
        (1..=3).map(|id| (id, start(id, dir.path(), SECRET, any))).collect();
    connect_all(&nodes);
    let peers: Vec<Peer> = (1..=3).map(|i| Peer { id: PeerId(i), store: StoreId(i) }).collect();
    for node in nodes.values() {
        node.store.bootstrap_region(Region { peers: peers.clone(), ..Region::whole(R1) }).unwrap();
    }
    for i in 0..30 {
        put(&nodes, &format!("k{i}"));
    }

    // An impostor that claims to be store 2 but has the wrong secret: refused by
    // everyone, it receives nothing and changes nothing.
    let impostor_dir = tempfile::tempdir().unwrap();
    let impostor = start(2, impostor_dir.path(), b"not the cluster secret, sorry", any);
    for (&id, node) in nodes.iter().filter(|(id, _)| **id != 2) {
        impostor.tcp.set_peer_addr(StoreId(id), node.tcp.local_addr()).unwrap();
    }
    impostor.store.bootstrap_region(Region { peers: peers.clone(), ..Region::whole(R1) }).unwrap();
    // Garbage on the wire to a real store.
    let mut raw = TcpStream::connect(nodes[&1].tcp.local_addr()).unwrap();
    let _ = raw.write_all(b"GET / HTTP/1.1\r\nHost: regionkv\r\n\r\n\x00\x01\x02garbage");
    drop(raw);
    for i in 30..60 {
        put(&nodes, &format!("k{i}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && nodes
            .values()
            .map(|n| n.tcp.stats().handshake_rejections + n.tcp.stats().bad_frames)
            .sum::<u64>()
            == 0
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused: u64 =
        nodes.values().map(|n| n.tcp.stats().handshake_rejections + n.tcp.stats().bad_frames).sum();
    assert!(refused > 0, "the impostor and the garbage were refused");
    assert_eq!(impostor.tcp.stats().envelopes_received, 0, "nothing reached the impostor");
    assert!(
        impostor.store.status().iter().all(|s| s.applied < 30),
        "the impostor never got the data"
    );
    impostor.store.kill();
    impostor.tcp.shutdown();

    // Kill the leader; the others go on; it restarts on the same port and catches up.
    let l = leader(&nodes).unwrap();
    let old = nodes.remove(&l).unwrap();
    let addr = old.tcp.local_addr();
    old.store.kill();
    old.tcp.shutdown();
    for i in 60..80 {
        put(&nodes, &format!("k{i}"));
    }
    let restarted = start(l, dir.path(), SECRET, addr);
    nodes.insert(l, restarted);
    connect_all(&nodes);
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = |nodes: &BTreeMap<u64, Node>| {
        let applied: Vec<u64> =
            nodes.values().map(|n| n.store.status().first().map_or(0, |s| s.applied)).collect();
        applied.iter().all(|&a| a == applied[0])
    };
    while Instant::now() < deadline && !caught_up(&nodes) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(caught_up(&nodes), "the restarted store caught up over TCP");
    for i in [0, 45, 79] {
        assert_eq!(get(&nodes, &format!("k{i}")), Some(Bytes::from(format!("k{i}"))));
    }
    for node in nodes.values() {
        node.store.shutdown().unwrap();
        node.tcp.shutdown();
    }
}
