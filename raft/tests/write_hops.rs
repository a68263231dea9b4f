//! Issue 13: after a put's entry was durable and committed, the ready that applied it
//! had nothing to persist, yet it went to the writer thread and back (two thread
//! wake-ups per put, off the client's path but on the poller's). A poller with no write
//! in flight now reports such a ready durable itself: one write task per put.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::bounded;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{Query, QueryResult, ReadRequest, Store, StoreConfig, StoreOptions};
use regionkv_wal::RealFs;

mod common;

use common::send_put;

const R1: RegionId = RegionId(1);
const PUTS: u64 = 50;

fn put(store: &Store, key: &str) -> regionkv_raft::Result<()> {
    send_put(store, key).recv_timeout(Duration::from_secs(10)).expect("an answer")
}

#[test]
fn a_put_on_one_store_hands_its_writer_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let id = StoreId(1);
    let config = StoreConfig::new(id).tick_interval(Duration::from_millis(10));
    let transport: Arc<dyn regionkv_raft::transport::Transport> = Arc::new(net.transport(id));
    let store =
        Store::start(Arc::new(RealFs), dir.path(), &StoreOptions::new(config), &transport).unwrap();
    net.register(id, store.inbox());
    let region = Region { peers: vec![Peer { id: PeerId(1), store: id }], ..Region::whole(R1) };
    store.bootstrap_region(region).unwrap();
    // A one-voter group elects itself at once; retry until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    while put(&store, "first").is_err() {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = store.metrics();
    for i in 0..PUTS {
        put(&store, &format!("k{i}")).unwrap();
    }
    let after = store.metrics();
    let tasks = after.writer_tasks - before.writer_tasks;
    let fsyncs = after.wal.fsyncs - before.wal.fsyncs;
    assert_eq!(fsyncs, PUTS, "one fsync per put");
    // One task per put (its entry); two per put before (the apply's ready too). Room
    // for a few more: a tick's ready may fall between puts while one is in flight.
    assert!(tasks <= PUTS + PUTS / 4, "{tasks} write tasks for {PUTS} puts");
    store.shutdown().unwrap();
}

/// A follower answers a leader's `ReadIndex` heartbeat from a ready with nothing to
/// persist; the answer waited for a trip through the follower's writer thread and back,
/// two wake-ups on every replicated linearizable read's path. Now it leaves at once.
#[test]
fn a_followers_answer_to_a_read_index_heartbeat_skips_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let peers: Vec<Peer> = (1..=3).map(|i| Peer { id: PeerId(i), store: StoreId(i) }).collect();
    let stores: Vec<Store> = (1..=3u64)
        .map(|i| {
            let id = StoreId(i);
            let mut config = StoreConfig::new(id).tick_interval(Duration::from_millis(10));
            config.hibernate_regions = false;
            let transport: Arc<dyn regionkv_raft::transport::Transport> =
                Arc::new(net.transport(id));
            let path = dir.path().join(format!("store-{i}"));
            let store =
                Store::start(Arc::new(RealFs), &path, &StoreOptions::new(config), &transport)
                    .unwrap();
            net.register(id, store.inbox());
            store.bootstrap_region(Region { peers: peers.clone(), ..Region::whole(R1) }).unwrap();
            store
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(i) = stores.iter().position(|s| put(s, "first").is_ok()) {
            break i;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    };
    let followers: Vec<&Store> =
        stores.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, s)| s).collect();
    // Every follower holds and applied that put first: a follower still catching up
    // (the last store started, whose first fsyncs are still in flight) has writes in
    // flight, and then rightly hands every ready to its writer, in order.
    let applied = |s: &Store| s.status().iter().find(|p| p.region.id == R1).map(|p| p.applied);
    let target = applied(&stores[leader]);
    while followers.iter().any(|s| applied(s) < target) {
        assert!(Instant::now() < deadline, "the followers did not catch up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before: u64 = followers.iter().map(|s| s.metrics().writer_tasks).sum();
    for _ in 0..GETS {
        get(&stores[leader], "first").unwrap();
    }
    let tasks = followers.iter().map(|s| s.metrics().writer_tasks).sum::<u64>() - before;
    // Each get is one ReadIndex round: before, each follower's answer to it was one
    // writer task (2 * GETS in all). Room for a few: a heartbeat may meet a write.
    assert!(tasks <= GETS / 4, "{tasks} follower writer tasks for {GETS} gets");
    for store in &stores {
        store.shutdown().unwrap();
    }
}

const GETS: u64 = 50;

fn get(store: &Store, key: &str) -> regionkv_raft::Result<QueryResult> {
    let (tx, rx) = bounded(1);
    store.read(ReadRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        query: Query::Get { key: Bytes::from(key.to_owned()), read_ts: None },
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("an answer")
}
