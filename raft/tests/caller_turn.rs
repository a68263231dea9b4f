//! The caller's turn (`store/solo.rs`): on a store whose poller hosts no replica with
//! a peer elsewhere, a write runs on its caller's thread, fsync and reply included.
//!
//! Regression (issue 13): a durable put on one store cost four thread wake-ups around
//! its one fsync (caller -> poller -> writer -> poller -> caller), half of fjall's rate
//! at one thread. A caller that waits for its reply (`Store::write_here`) now runs the
//! poller's core itself when the poller is idle, no write task is in flight and no
//! replica of the poller has a peer on another store. These tests count (write tasks,
//! fsyncs, the thread a reply runs on); they time nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, bounded};
use raft::StateRole;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{
    ChangePeersRequest, Op, PeerChange, Query, QueryResult, ReadRequest, Store, StoreConfig,
    StoreOptions, WriteRequest,
};
use regionkv_wal::RealFs;

const R1: RegionId = RegionId(1);

type Answer = (regionkv_raft::Result<()>, ThreadId);

/// Submits a put to `store` and returns where its outcome arrives, with the thread its
/// reply ran on.
fn put(store: &Store, epoch: Epoch, key: &str) -> Receiver<Answer> {
    let (tx, rx) = bounded(1);
    store.write_here(WriteRequest {
        region: R1,
        epoch,
        ops: vec![Op::Put { key: Bytes::from(key.to_owned()), value: Bytes::from_static(b"v") }],
        session: None,
        reply: Box::new(move |r| {
            let _ = tx.send((r, std::thread::current().id()));
        }),
    });
    rx
}

/// Puts `key` until it succeeds (a new leader may refuse at first).
fn put_ok(store: &Store, epoch: Epoch, key: &str) -> ThreadId {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (result, thread) =
            put(store, epoch, key).recv_timeout(Duration::from_secs(10)).unwrap();
        match result {
            Ok(()) => return thread,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("put {key}: {e}"),
        }
    }
}

fn get(store: &Store, epoch: Epoch, key: &str) -> Option<Bytes> {
    let (tx, rx) = bounded(1);
    store.read(ReadRequest {
        region: R1,
        epoch,
        query: Query::Get { key: Bytes::from(key.to_owned()), read_ts: None },
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    match rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap() {
        QueryResult::Value(v) => v,
        QueryResult::Rows(_) => panic!("a get returned rows"),
    }
}

fn start(net: &LocalNetwork, dir: &Path, id: StoreId) -> Store {
    let options = StoreOptions::new(StoreConfig::new(id).tick_interval(Duration::from_millis(10)));
    let transport: Arc<dyn Transport> = Arc::new(net.transport(id));
    let store =
        Store::start(Arc::new(RealFs), &dir.join(format!("s{}", id.0)), &options, &transport)
            .unwrap();
    net.register(id, store.inbox());
    store
}

fn wait_leader(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.status().iter().any(|p| p.region.id == R1 && p.role == StateRole::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One store, the only peer of region 1, leading it.
fn lone_store(net: &LocalNetwork, dir: &Path) -> Store {
    let store = start(net, dir, StoreId(1));
    let peer = Peer { id: PeerId(1), store: StoreId(1) };
    store.bootstrap_region(Region { peers: vec![peer], ..Region::whole(R1) }).unwrap();
    wait_leader(&store);
    put_ok(&store, Epoch::INITIAL, "warm");
    store
}

#[test]
fn a_put_on_a_lone_store_runs_on_its_callers_thread_with_one_fsync_and_no_writer_task() {
    const N: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let store = lone_store(&net, dir.path());
    let me = std::thread::current().id();
    let before = store.metrics();
    // A put that finds a message queued for the poller (a tick its thread has not
    // taken yet: on a loaded machine) goes the poller's way, as it must to keep the
    // order of what is queued. Every other one is answered before `write` returned,
    // on this thread: no poller or writer woke.
    let (mut here, mut queued) = (0u64, 0u64);
    for i in 0..N {
        let rx = put(&store, Epoch::INITIAL, &format!("k{i}"));
        if let Ok((result, thread)) = rx.try_recv() {
            result.unwrap();
            assert_eq!(thread, me, "the reply ran on the caller's thread");
            here += 1;
        } else {
            rx.recv_timeout(Duration::from_secs(10)).unwrap().0.unwrap();
            queued += 1;
        }
    }
    assert!(here >= N / 2, "{here} of {N} puts ran on their caller's thread ({queued} queued)");
    let after = store.metrics();
    let writer_tasks = after.writer_tasks - before.writer_tasks;
    assert!(writer_tasks <= queued, "{writer_tasks} write tasks went to the writer");
    assert!(after.caller_tasks - before.caller_tasks >= here, "each put persisted by its caller");
    let fsyncs = after.wal.fsyncs - before.wal.fsyncs;
    assert!(fsyncs >= here && fsyncs <= N, "one fsync per put at most: {fsyncs}");
    if queued == 0 {
        assert_eq!(fsyncs, N, "one fsync per put");
    }
    for i in 0..N {
        assert_eq!(get(&store, Epoch::INITIAL, &format!("k{i}")).as_deref(), Some(&b"v"[..]));
    }
    store.shutdown().unwrap();
}

#[test]
fn a_store_whose_region_has_a_peer_elsewhere_never_runs_a_write_on_its_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let one = lone_store(&net, dir.path());
    let two = start(&net, dir.path(), StoreId(2));
    let me = std::thread::current().id();
    assert_eq!(put_ok(&one, Epoch::INITIAL, "alone"), me);

    // Store 2 joins as a voter: from now on, store 1's poller has a peer elsewhere.
    let change = |change: PeerChange, epoch: Epoch| {
        let (tx, rx) = bounded(1);
        one.change_peers(ChangePeersRequest {
            region: R1,
            epoch,
            change,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap()
    };
    let joined =
        change(PeerChange::AddVoter(Peer { id: PeerId(2), store: StoreId(2) }), Epoch::INITIAL);
    let tasks = one.metrics().caller_tasks;
    for i in 0..20 {
        assert_ne!(put_ok(&one, joined.epoch, &format!("with-peer{i}")), me);
    }
    assert_eq!(one.metrics().caller_tasks, tasks, "no caller's turn with a peer elsewhere");

    // Store 2 leaves: store 1 is alone again, and its callers take their turns again.
    let left = change(PeerChange::Remove(PeerId(2)), joined.epoch);
    let deadline = Instant::now() + Duration::from_secs(20);
    while put_ok(&one, left.epoch, "alone-again") != me {
        assert!(Instant::now() < deadline, "the caller's turn never came back");
    }
    one.shutdown().unwrap();
    two.shutdown().unwrap();
}

#[test]
fn puts_acknowledged_on_their_callers_threads_survive_a_kill() {
    const THREADS: u64 = 4;
    const PUTS: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let store = Arc::new(lone_store(&net, dir.path()));
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..PUTS {
                    put_ok(&store, Epoch::INITIAL, &format!("t{t}-{i}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert!(store.metrics().caller_tasks > 0, "some puts ran on their callers' threads");
    store.kill();
    drop(store);
    net.unregister(StoreId(1));

    let store = start(&net, dir.path(), StoreId(1));
    wait_leader(&store);
    for t in 0..THREADS {
        for i in 0..PUTS {
            let key = format!("t{t}-{i}");
            assert_eq!(get(&store, Epoch::INITIAL, &key).as_deref(), Some(&b"v"[..]), "{key}");
        }
    }
    store.shutdown().unwrap();
}

#[test]
fn a_shutdown_during_callers_turns_answers_every_put_and_hangs_none() {
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let store = Arc::new(lone_store(&net, dir.path()));
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = bounded(THREADS);
    for t in 0..THREADS {
        let (store, stop, done) = (store.clone(), stop.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut outcomes = (0u64, 0u64);
            for i in 0.. {
                let rx = put(&store, Epoch::INITIAL, &format!("t{t}-{i}"));
                // A hang guard, not a timing: every put is answered.
                let (result, _) = rx.recv_timeout(Duration::from_secs(60)).expect("answered");
                match result {
                    Ok(()) => outcomes.0 += 1,
                    Err(e) if e.is_cancelled() => {
                        outcomes.1 += 1;
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(e) => panic!("put failed: {e}"),
                }
            }
            done.send(outcomes).unwrap();
        });
    }
    // Let the callers get going, then shut down under them.
    while store.metrics().caller_tasks < 50 {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    store.shutdown().unwrap();
    let mut ok = 0;
    for _ in 0..THREADS {
        let (succeeded, cancelled) =
            done_rx.recv_timeout(Duration::from_secs(60)).expect("no hang");
        assert!(cancelled > 0, "each caller saw the shutdown");
        ok += succeeded;
    }
    assert!(ok > 0);
}
