//! A store that a failed WAL fsync stopped says why (status schema 2's store state):
//! `Store::failure` carries the failure's text and `Store::is_stopping` is true, while
//! a store that stopped cleanly reports no failure.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::StateRole;
use regionkv_engine::{Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{Store, StoreConfig, StoreOptions};
use regionkv_wal::SimFs;
use regionkv_wal::fs::SimOpKind;

mod common;

use common::send_put;

const R1: RegionId = RegionId(1);
/// How long the test waits for something that must happen; only a wedged store takes it.
const LIVENESS: Duration = Duration::from_secs(60);

/// Starts store 1 on `sim`, bootstrapping region 1 on a first start, and waits until
/// it leads it.
fn start(sim: &SimFs, first: bool) -> (LocalNetwork, Store) {
    let net = LocalNetwork::new(1);
    let options =
        StoreOptions::new(StoreConfig::new(StoreId(1)).tick_interval(Duration::from_millis(10)));
    let transport: Arc<dyn Transport> = Arc::new(net.transport(StoreId(1)));
    let fs = Arc::new(sim.clone());
    let store = Store::start(fs, Path::new("/store-1"), &options, &transport).unwrap();
    net.register(StoreId(1), store.inbox());
    let peer = Peer { id: PeerId(1), store: StoreId(1) };
    if first {
        store.bootstrap_region(Region { peers: vec![peer], ..Region::whole(R1) }).unwrap();
    }
    let deadline = Instant::now() + LIVENESS;
    while !store.peer_status(R1).is_some_and(|p| p.role == StateRole::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
    (net, store)
}

fn put(store: &Store, key: &str) -> regionkv_raft::Result<()> {
    send_put(store, key).recv_timeout(LIVENESS).expect("every write is answered")
}

#[test]
fn a_failed_wal_fsync_is_reported_as_the_failure_that_stopped_the_store() {
    let sim = SimFs::new();
    let (_net, store) = start(&sim, true);
    put(&store, "before").unwrap();
    assert_eq!((store.failure(), store.is_stopping()), (None, false));
    sim.set_fault_hook(Box::new(|op| {
        let wal = op.path.components().any(|c| c.as_os_str() == "wal");
        (op.kind == SimOpKind::SyncData && wal).then(|| io::Error::other("injected fsync failure"))
    }));
    assert!(put(&store, "lost").is_err(), "a write whose fsync failed is not acknowledged");
    let deadline = Instant::now() + LIVENESS;
    while !store.is_stopping() {
        assert!(Instant::now() < deadline, "the store did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    let failure = store.failure().expect("the store says why it stopped");
    assert!(failure.contains("injected fsync failure"), "{failure}");
    store.kill();
}

#[test]
fn a_store_stopped_cleanly_reports_no_failure() {
    let sim = SimFs::new();
    let (_net, store) = start(&sim, true);
    put(&store, "k").unwrap();
    let boot = store.boot_id();
    assert_eq!((store.next_report_seq(), store.next_report_seq()), (1, 2));
    store.shutdown().unwrap();
    assert!(store.is_stopping());
    assert_eq!(store.failure(), None);
    let (_net, again) = start(&sim, false);
    assert_ne!(again.boot_id(), boot, "another start, another boot id");
    assert_eq!(again.next_report_seq(), 1);
    again.shutdown().unwrap();
}
