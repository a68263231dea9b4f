//! A12: `Store::shutdown` writes its clean-shutdown marks only once every thread of the
//! store stopped. Before, a thread still inside an fsync past the shutdown's deadline
//! was left running while the WAL was sealed and the engine marked clean: the next
//! open trusted a state a running thread could still change.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raft::StateRole;
use regionkv_engine::{Engine, EngineOptions, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{Store, StoreConfig, StoreOptions};
use regionkv_wal::fs::SimOpKind;
use regionkv_wal::{CrashMode, SimFs};

mod common;

use common::send_put;

const R1: RegionId = RegionId(1);

#[test]
fn a_shutdown_that_leaves_a_thread_running_writes_no_clean_mark() {
    let fs = SimFs::new();
    let stall = Arc::new(AtomicBool::new(false));
    let stalled = Arc::new(AtomicBool::new(false));
    {
        let (stall, stalled) = (stall.clone(), stalled.clone());
        // A disk whose fsync of the WAL hangs while `stall` is set.
        fs.set_fault_hook(Box::new(move |op| {
            if op.kind == SimOpKind::SyncData
                && op.path.starts_with("/store/wal")
                && stall.load(Ordering::SeqCst)
            {
                stalled.store(true, Ordering::SeqCst);
                while stall.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            None
        }));
    }
    let net = LocalNetwork::new(1);
    let transport: Arc<dyn regionkv_raft::transport::Transport> =
        Arc::new(net.transport(StoreId(1)));
    let mut options =
        StoreOptions::new(StoreConfig::new(StoreId(1)).tick_interval(Duration::from_millis(10)));
    options.shutdown_timeout = Duration::from_millis(100);
    let store = Store::start(Arc::new(fs.clone()), Path::new("/store"), &options, &transport)
        .expect("the store starts");
    net.register(StoreId(1), store.inbox());
    let peer = Peer { id: PeerId(1), store: StoreId(1) };
    store.bootstrap_region(Region { peers: vec![peer], ..Region::whole(R1) }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.status().iter().any(|p| p.role == StateRole::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
    send_put(&store, "before").recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    // The writer thread enters an fsync that does not return.
    stall.store(true, Ordering::SeqCst);
    let _pending = send_put(&store, "during");
    while !stalled.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Long after the shutdown's own deadline (2 x 100 ms), the disk comes back.
    let release = {
        let stall = stall.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            stall.store(false, Ordering::SeqCst);
        })
    };
    let result = store.shutdown();
    assert!(result.is_err(), "a shutdown that left a thread running reports it");
    release.join().unwrap();
    std::thread::sleep(Duration::from_millis(100)); // the writer finishes its fsync
    drop(store);
    let image = fs.crash(CrashMode::Persisted);
    let engine =
        Engine::open(Arc::new(image), "/store/engine", EngineOptions::new(StoreId(1))).unwrap();
    assert!(!engine.recovery().clean_shutdown, "no clean mark after such a shutdown");
}
