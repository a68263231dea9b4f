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
use regionkv_raft::{Op, Store, StoreConfig, StoreOptions, WriteRequest};
use regionkv_wal::RealFs;

const R1: RegionId = RegionId(1);
const PUTS: u64 = 50;

fn put(store: &Store, key: &str) -> regionkv_raft::Result<()> {
    let (tx, rx) = bounded(1);
    store.write(WriteRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        ops: vec![Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from_static(b"v") }],
        session: None,
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("an answer")
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
