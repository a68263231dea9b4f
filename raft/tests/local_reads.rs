//! Issue 13: every linearizable get queued behind the region's poller, which served it
//! after a `ReadIndex` round, even where that round is a local check (a group of one
//! voter); one poller serialised every read of a one-store cluster. A get or a scan of
//! a region whose only voter is this store's leader is now answered on the caller's
//! thread (`LocalReads`, ARCHITECTURE.md "Reads"); once a second voter joins, gets go
//! through the poller again and never answer from a replica that stopped leading.

use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, bounded};
use raft::StateRole;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{
    ChangePeersRequest, Error, Op, PeerChange, Query, QueryResult, ReadRequest, Result, Store,
    StoreConfig, StoreOptions, WriteRequest,
};
use regionkv_wal::RealFs;

const R1: RegionId = RegionId(1);

struct Running {
    _dir: tempfile::TempDir,
    _net: LocalNetwork,
    stores: Vec<Store>,
}

/// Stores 1..=n; region 1, the whole key space, has store 1's peer as its only voter.
fn stores(n: u64) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let mut stores = Vec::new();
    for i in 1..=n {
        let id = StoreId(i);
        let config = StoreConfig::new(id).tick_interval(Duration::from_millis(10));
        let transport: Arc<dyn regionkv_raft::transport::Transport> = Arc::new(net.transport(id));
        let path = dir.path().join(format!("store-{i}"));
        let store =
            Store::start(Arc::new(RealFs), &path, &StoreOptions::new(config), &transport).unwrap();
        net.register(id, store.inbox());
        stores.push(store);
    }
    let region =
        Region { peers: vec![Peer { id: PeerId(1), store: StoreId(1) }], ..Region::whole(R1) };
    stores[0].bootstrap_region(region).unwrap();
    Running { _dir: dir, _net: net, stores }
}

fn write(store: &Store, key: &str, value: &str) -> Receiver<Result<()>> {
    let (tx, rx) = bounded(1);
    store.write(WriteRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        ops: vec![Op::Put {
            key: Bytes::from(key.to_owned()),
            value: Bytes::from(value.to_owned()),
        }],
        session: None,
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    rx
}

/// A get sent to `store`: its answer, and the thread that answered it.
fn get(store: &Store, key: &str) -> Receiver<(Result<QueryResult>, ThreadId)> {
    let (tx, rx) = bounded(1);
    store.read(ReadRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        query: Query::Get { key: Bytes::from(key.to_owned()), read_ts: None },
        reply: Box::new(move |r| {
            let _ = tx.send((r, std::thread::current().id()));
        }),
    });
    rx
}

/// Sends `f()` until it is not refused as retryable.
fn until_ok<T: std::fmt::Debug>(mut f: impl FnMut() -> Receiver<Result<T>>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f().recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => panic!("request failed: {other:?}"),
        }
    }
}

/// A get of `key` through `store` until one is not refused as retryable: its value and
/// whether the caller's own thread answered it.
fn get_ok(store: &Store, key: &str) -> (Option<Bytes>, bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (answer, thread) = get(store, key).recv_timeout(Duration::from_secs(10)).unwrap();
        match answer {
            Ok(QueryResult::Value(v)) => return (v, thread == std::thread::current().id()),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => panic!("get failed: {other:?}"),
        }
    }
}

/// A get of `key` through `store`, asked again until one is answered on the caller's
/// thread: the poller lists a region for such gets once the round that applied its
/// leader's first write is committed, just after that write's client was answered, so
/// the first get after it may still take the poller. Its value, and whether one was.
fn local_get_ok(store: &Store, key: &str) -> (Option<Bytes>, bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (value, here) = get_ok(store, key);
        if here || Instant::now() >= deadline {
            return (value, here);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn applied(store: &Store) -> u64 {
    store.status().iter().find(|p| p.region.id == R1).map_or(0, |p| p.applied)
}

fn is_leader(store: &Store) -> bool {
    store.status().iter().any(|p| p.region.id == R1 && p.role == StateRole::Leader)
}

#[test]
fn a_get_of_a_region_with_one_voter_is_answered_on_the_callers_thread() {
    let s = stores(1);
    until_ok(|| write(&s.stores[0], "k", "v1"));
    let (value, here) = local_get_ok(&s.stores[0], "k");
    assert_eq!(value.as_deref(), Some(&b"v1"[..]));
    assert!(here, "the get was answered on the caller's thread, without the poller");
    // Every later write is seen by the next get.
    for i in 0..20 {
        let v = format!("v{i}");
        until_ok(|| write(&s.stores[0], "k", &v));
        assert_eq!(get_ok(&s.stores[0], "k"), (Some(Bytes::from(v)), true));
    }
    // A scan too: on the caller's thread, clamped and capped as on the poller.
    let (tx, rx) = bounded(1);
    s.stores[0].read(ReadRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        query: Query::Scan { start: Bytes::new(), end: None, limit: 10, read_ts: None },
        reply: Box::new(move |r| {
            let _ = tx.send((r, std::thread::current().id()));
        }),
    });
    let (answer, thread) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    match answer {
        Ok(QueryResult::Rows(page)) => {
            assert_eq!(page.rows, vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v19"))]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(thread, std::thread::current().id(), "the scan ran on the caller's thread");
    // A get of the wrong epoch still gets the poller's refusal, with the region.
    let (tx, rx) = bounded(1);
    s.stores[0].read(ReadRequest {
        region: R1,
        epoch: Epoch { version: 7, conf_ver: 1 },
        query: Query::Get { key: Bytes::from_static(b"k"), read_ts: None },
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    let refused = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(refused, Err(Error::EpochNotMatch { .. })), "{refused:?}");
    s.stores[0].shutdown().unwrap();
}

#[test]
fn once_a_second_voter_joins_gets_take_the_poller_and_a_former_leader_refuses() {
    let s = stores(2);
    let (one, two) = (&s.stores[0], &s.stores[1]);
    until_ok(|| write(one, "k", "v1"));
    assert_eq!(local_get_ok(one, "k"), (Some(Bytes::from_static(b"v1")), true));

    let added = until_ok(|| {
        let (tx, rx) = bounded(1);
        one.change_peers(ChangePeersRequest {
            region: R1,
            epoch: Epoch::INITIAL,
            change: PeerChange::AddVoter(Peer { id: PeerId(2), store: StoreId(2) }),
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx
    });
    assert_eq!(added.peers.len(), 2);
    // Two voters: the get needs a `ReadIndex` round, on the poller.
    let (value, here) = get_ok(one, "k");
    assert_eq!(value.as_deref(), Some(&b"v1"[..]));
    assert!(!here, "a get of a two-voter region went through the poller");

    // Store 2 takes over and writes; store 1 must not answer from its old state. (Store
    // 2 may hold only its snapshot when asked: see `sim_snapshot_leadership.rs`.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(two) < applied(one) {
        assert!(Instant::now() < deadline, "store 2 did not catch up");
        std::thread::sleep(Duration::from_millis(5));
    }
    while !is_leader(two) {
        assert!(Instant::now() < deadline, "store 2 did not take over");
        one.transfer_leader(R1, PeerId(2)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    until_ok(|| write(two, "k", "v2"));
    let (answer, _) = get(one, "k").recv_timeout(Duration::from_secs(10)).unwrap();
    match answer {
        Err(e) => assert!(e.is_retryable(), "{e}"),
        Ok(QueryResult::Value(v)) => {
            // Only if store 1 leads again (and so has every committed write).
            assert_eq!(v.as_deref(), Some(&b"v2"[..]), "a former leader answered a stale value");
        }
        Ok(other) => panic!("{other:?}"),
    }
    assert_eq!(get_ok(two, "k").0.as_deref(), Some(&b"v2"[..]));
    for store in &s.stores {
        store.shutdown().unwrap();
    }
}

/// A transaction command sent to `store`.
fn txn(store: &Store, cmd: &regionkv_raft::TxnCmd) -> Receiver<Result<regionkv_raft::TxnReply>> {
    let (tx, rx) = bounded(1);
    store.txn(regionkv_raft::TxnRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        cmd: cmd.clone(),
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    rx
}

/// A read sent to `store`: its answer, and whether the caller's thread answered it.
fn read_here(store: &Store, query: Query) -> (Result<QueryResult>, bool) {
    let (tx, rx) = bounded(1);
    store.read(ReadRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        query,
        reply: Box::new(move |r| {
            let _ = tx.send((r, std::thread::current().id()));
        }),
    });
    let (answer, thread) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (answer, thread == std::thread::current().id())
}

#[test]
fn a_locked_key_refuses_gets_scans_and_writes_on_the_callers_thread_until_committed() {
    use regionkv_raft::txn::plan::TxnPlan;
    use regionkv_raft::{TxnReply, TxnState};
    let s = stores(1);
    let store = &s.stores[0];
    until_ok(|| write(store, "a", "old"));
    assert_eq!(local_get_ok(store, "a"), (Some(Bytes::from_static(b"old")), true));
    // Before cluster version 3 the store proposes none.
    let plan = TxnPlan::new(
        5,
        vec![Op::Put { key: Bytes::from_static(b"b"), value: Bytes::from_static(b"new") }],
        60_000,
        None,
    );
    let refused = txn(store, &plan.prewrite(plan.ops.clone()));
    let refused = refused.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(refused, Err(Error::FeatureNotActive { needed: 3, .. })), "{refused:?}");
    store.context().learn_cluster_version(3).unwrap();
    assert_eq!(until_ok(|| txn(store, &plan.prewrite(plan.ops.clone()))), TxnReply::Done);
    // The get takes the caller's thread once the region is listed again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let locked = |r: &Result<QueryResult>| matches!(r, Err(Error::Locked { txn_id: 5, .. }));
    loop {
        let (answer, here) =
            read_here(store, Query::Get { key: Bytes::from_static(b"b"), read_ts: None });
        assert!(locked(&answer), "{answer:?}");
        if here {
            break;
        }
        assert!(Instant::now() < deadline, "never answered on the caller's thread");
        std::thread::sleep(Duration::from_millis(5));
    }
    let scan = Query::Scan { start: Bytes::new(), end: None, limit: 10, read_ts: None };
    let (answer, here) = read_here(store, scan.clone());
    assert!(locked(&answer) && here, "{answer:?}");
    // A scan whose page ends before the lock is answered.
    let first = Query::Scan { start: Bytes::new(), end: None, limit: 1, read_ts: None };
    match read_here(store, first) {
        (Ok(QueryResult::Rows(page)), true) => assert_eq!(page.rows.len(), 1),
        other => panic!("{other:?}"),
    }
    let refused = write(store, "b", "raw").recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(refused, Err(Error::Locked { txn_id: 5, .. })), "{refused:?}");
    let committed = until_ok(|| txn(store, &plan.commit()));
    assert_eq!(committed, TxnReply::Status(TxnState::Committed { commit_ts: None }));
    assert_eq!(get_ok(store, "b").0, Some(Bytes::from_static(b"new")));
    match read_here(store, scan) {
        (Ok(QueryResult::Rows(page)), _) => assert_eq!(page.rows.len(), 2),
        other => panic!("{other:?}"),
    }
    until_ok(|| write(store, "b", "raw"));
    store.shutdown().unwrap();
}
