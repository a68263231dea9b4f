//! The production driver: three stores on real files over the in-process network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::bounded;
use raft::StateRole;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{
    Op, Query, QueryResult, ReadRequest, Store, StoreConfig, StoreOptions, WriteRequest,
};
use regionkv_wal::{RealFs, RecoveryMode};

const R1: RegionId = RegionId(1);

struct Cluster {
    net: LocalNetwork,
    dir: tempfile::TempDir,
    stores: BTreeMap<StoreId, Store>,
}

fn options(id: StoreId) -> StoreOptions {
    let mut options =
        StoreOptions::new(StoreConfig::new(id).tick_interval(Duration::from_millis(10)));
    options.wal = options.wal.segment_bytes(1 << 20);
    options
}

impl Cluster {
    fn start(&mut self, id: StoreId, recovery: RecoveryMode) {
        let mut options = options(id);
        options.wal = options.wal.recovery(recovery);
        let dir = self.dir.path().join(format!("store-{}", id.0));
        let transport: Arc<dyn regionkv_raft::transport::Transport> =
            Arc::new(self.net.transport(id));
        let store = Store::start(Arc::new(RealFs), &dir, &options, &transport).unwrap();
        self.net.register(id, store.inbox());
        self.stores.insert(id, store);
    }

    fn new(n: u64) -> Cluster {
        let mut c = Cluster {
            net: LocalNetwork::new(1),
            dir: tempfile::tempdir().unwrap(),
            stores: BTreeMap::new(),
        };
        let peers: Vec<Peer> = (1..=n).map(|i| Peer { id: PeerId(i), store: StoreId(i) }).collect();
        for i in 1..=n {
            c.start(StoreId(i), RecoveryMode::TolerateTornTail);
            let region = Region { peers: peers.clone(), ..Region::whole(R1) };
            c.stores[&StoreId(i)].bootstrap_region(region).unwrap();
        }
        c
    }

    fn leader(&self) -> Option<StoreId> {
        self.stores
            .iter()
            .find(|(_, s)| s.status().iter().any(|p| p.role == StateRole::Leader))
            .map(|(id, _)| *id)
    }

    fn wait_leader(&self, max: Duration) -> StoreId {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            if let Some(l) = self.leader() {
                return l;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no leader within {max:?}");
    }

    /// Writes through the leader, retrying retryable errors.
    fn put(&self, key: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let leader = self.wait_leader(Duration::from_secs(10));
            let (tx, rx) = bounded(1);
            let ops = vec![Op::Put {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from(value.to_owned()),
            }];
            self.stores[&leader].write(WriteRequest {
                region: R1,
                epoch: Epoch::INITIAL,
                ops,
                session: None,
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            });
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => return,
                Ok(Err(e)) if e.is_retryable() => std::thread::sleep(Duration::from_millis(10)),
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => {}
            }
        }
        panic!("write of {key} did not complete");
    }

    fn get(&self, key: &str) -> Option<Bytes> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let leader = self.wait_leader(Duration::from_secs(10));
            let (tx, rx) = bounded(1);
            self.stores[&leader].read(ReadRequest {
                region: R1,
                epoch: Epoch::INITIAL,
                query: Query::Get { key: Bytes::from(key.to_owned()), read_ts: None },
                reply: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            });
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(QueryResult::Value(v))) => return v,
                Ok(Err(e)) if e.is_retryable() => std::thread::sleep(Duration::from_millis(10)),
                other => panic!("read failed: {:?}", other.map(|r| r.map_err(|e| e.to_string()))),
            }
        }
        panic!("read of {key} did not complete");
    }

    fn applied(&self, id: StoreId) -> u64 {
        self.stores[&id].status().first().map_or(0, |s| s.applied)
    }
}

#[test]
fn three_threaded_stores_replicate_survive_a_kill_and_shut_down_cleanly() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut c = Cluster::new(3);
    for i in 0..50 {
        c.put(&format!("k{i}"), &format!("v{i}"));
    }
    // Kill a follower (abruptly), keep writing, restart it: it catches up.
    let leader = c.wait_leader(Duration::from_secs(10));
    let victim = *c.stores.keys().find(|&&s| s != leader).unwrap();
    c.net.unregister(victim);
    c.stores.remove(&victim).unwrap().kill();
    for i in 50..100 {
        c.put(&format!("k{i}"), &format!("v{i}"));
    }
    c.start(victim, RecoveryMode::TolerateTornTail);
    let target = c.applied(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.applied(victim) < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(c.applied(victim) >= target, "the restarted store caught up");
    for i in 0..100 {
        assert_eq!(c.get(&format!("k{i}")), Some(Bytes::from(format!("v{i}"))));
    }

    // A clean shutdown leaves every WAL sealed: reopen under AbsoluteConsistency.
    for (_, store) in std::mem::take(&mut c.stores) {
        store.shutdown().unwrap();
    }
    for id in 1..=3 {
        c.start(StoreId(id), RecoveryMode::AbsoluteConsistency);
    }
    for i in [0, 57, 99] {
        assert_eq!(c.get(&format!("k{i}")), Some(Bytes::from(format!("v{i}"))));
    }
}

/// A store of a new cluster bootstrapped after its peers: their vote requests reached
/// it first and created replicas that hold nothing (they voted). Its bootstrap turns
/// them into the bootstrapped replicas, keeping term and vote, and the group commits.
/// Before, the bootstrap was refused `RegionExists` and the replicas waited for a
/// snapshot that the leader, with no member able to acknowledge its first entry, never
/// made: every write timed out (the in-process `Cluster` under load).
#[test]
fn a_store_bootstrapped_after_its_peers_campaigned_joins_its_group() {
    let mut c = Cluster {
        net: LocalNetwork::new(1),
        dir: tempfile::tempdir().unwrap(),
        stores: BTreeMap::new(),
    };
    let peers: Vec<Peer> = (1..=3).map(|i| Peer { id: PeerId(i), store: StoreId(i) }).collect();
    for i in 1..=3 {
        c.start(StoreId(i), RecoveryMode::TolerateTornTail);
    }
    c.stores[&StoreId(1)]
        .bootstrap_region(Region { peers: peers.clone(), ..Region::whole(R1) })
        .unwrap();
    // Store 1 campaigns; the others answer from replicas its requests created.
    let deadline = Instant::now() + Duration::from_secs(30);
    let created = |c: &Cluster, id: u64| {
        c.stores[&StoreId(id)].status().iter().any(|p| p.region.id == R1 && !p.initialized)
    };
    while !(created(&c, 2) && created(&c, 3)) {
        assert!(Instant::now() < deadline, "store 1 never reached the others");
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 2..=3 {
        c.stores[&StoreId(i)]
            .bootstrap_region(Region { peers: peers.clone(), ..Region::whole(R1) })
            .expect("a replica created by a vote request is bootstrapped in place");
    }
    c.put("k", "v");
    assert_eq!(c.get("k").as_deref(), Some(&b"v"[..]));
    // A second bootstrap of an initialized replica is still refused, nothing changed.
    let again = c.stores[&StoreId(2)].bootstrap_region(Region { peers, ..Region::whole(R1) });
    assert!(matches!(again, Err(regionkv_raft::Error::RegionExists { .. })), "{again:?}");
    assert_eq!(c.get("k").as_deref(), Some(&b"v"[..]));
}
