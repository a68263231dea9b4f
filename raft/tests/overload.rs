//! The store's write path under load (issue 12, item 2; `reliability.md` A3, A5, A9).
//!
//! - A3: every queued write of every region went into one WAL record; above the WAL's
//!   largest record the append failed with `RecordTooLarge` and the store stopped. A
//!   writer that fell behind (a slow fsync) merges everything queued: with 1 MiB
//!   segments, a few MiB of writes stopped the store. Now the work is cut into records
//!   that fit, and a single write too large for any record is refused.
//! - A5: the poller blocked on the writer's bounded queue and the writer on the
//!   poller's bounded mailbox: an fsync stall with a full mailbox wedged the store for
//!   good. Now persisted notifications ride an unbounded system lane and the poller
//!   never waits for the writer: it stops taking client requests instead.
//! - A9: Raft envelopes shared the mailbox with client requests and were dropped when
//!   clients had filled it: a busy leader lost its heartbeat responses. Now they have
//!   their own lane, and clients get the backpressure.
//!
//! The disk is a `SimFs` behind a wrapper whose WAL fsync can be held at a gate.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, bounded};
use parking_lot::{Condvar, Mutex};
use raft::StateRole;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, StoreId};
use regionkv_raft::transport::Transport;
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{
    DropReason, Error, Op, Query, QueryResult, ReadRequest, Store, StoreConfig, StoreOptions,
    WriteRequest,
};
use regionkv_wal::SimFs;
use regionkv_wal::fs::{File, FileSystem, OpenMode};

const R1: RegionId = RegionId(1);

/// How long a test waits for something that must happen; only a wedged store takes it.
const LIVENESS: Duration = Duration::from_secs(60);

/// Holds every WAL `sync_data` while closed.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
    /// Syncs waiting at the gate.
    waiting: AtomicUsize,
}

impl Gate {
    fn close(&self) {
        *self.closed.lock() = true;
    }

    fn open(&self) {
        *self.closed.lock() = false;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock();
        if *closed {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *closed {
                self.changed.wait(&mut closed);
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until a sync is held at the gate.
    fn wait_stalled(&self) {
        let deadline = Instant::now() + LIVENESS;
        while self.waiting.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no WAL fsync reached the gate");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A file system whose WAL fsyncs pass through a [`Gate`].
#[derive(Debug)]
struct GatedFs {
    inner: Arc<dyn FileSystem>,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn File>,
    gate: Arc<Gate>,
}

impl FileSystem for GatedFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let file = self.inner.open(path, mode)?;
        if path.components().any(|c| c.as_os_str() == "wal") {
            return Ok(Arc::new(GatedFile { inner: file, gate: self.gate.clone() }));
        }
        Ok(file)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl File for GatedFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_direct_at(offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.start_writeback(offset, len)
    }
    fn evict_written(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.evict_written(offset, len)
    }
    fn map(&self) -> io::Result<Bytes> {
        self.inner.map()
    }
}

fn options(id: StoreId, segment_bytes: u64) -> StoreOptions {
    let mut options =
        StoreOptions::new(StoreConfig::new(id).tick_interval(Duration::from_millis(10)));
    options.wal = options.wal.segment_bytes(segment_bytes);
    options
}

fn start(net: &LocalNetwork, fs: Arc<dyn FileSystem>, id: StoreId, segment_bytes: u64) -> Store {
    start_with(net, fs, &options(id, segment_bytes))
}

fn start_with(net: &LocalNetwork, fs: Arc<dyn FileSystem>, options: &StoreOptions) -> Store {
    let id = options.config.store_id;
    let transport: Arc<dyn Transport> = Arc::new(net.transport(id));
    let dir = format!("/store-{}", id.0);
    let store = Store::start(fs, Path::new(&dir), options, &transport).expect("the store starts");
    net.register(id, store.inbox());
    store
}

fn wait_leader(stores: &[&Store]) -> usize {
    let deadline = Instant::now() + LIVENESS;
    loop {
        for (i, s) in stores.iter().enumerate() {
            if s.peer_status(R1).is_some_and(|p| p.role == StateRole::Leader) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn put(store: &Store, key: &str, value: Bytes) -> Receiver<regionkv_raft::Result<()>> {
    let (tx, rx) = bounded(1);
    store.write(WriteRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        ops: vec![Op::Put { key: Bytes::from(key.to_owned()), value }],
        session: None,
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    rx
}

fn get(store: &Store, key: &str) -> Option<Bytes> {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let (tx, rx) = bounded(1);
        store.read(ReadRequest {
            region: R1,
            epoch: Epoch::INITIAL,
            query: Query::Get { key: Bytes::from(key.to_owned()), read_ts: None },
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        match rx.recv_timeout(LIVENESS) {
            Ok(Ok(QueryResult::Value(v))) => return v,
            Ok(Err(e)) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => panic!("read of {key}: {:?}", other.map(|r| r.map_err(|e| e.to_string()))),
        }
    }
}

/// The replies of a client's writes.
type Replies = Vec<Receiver<regionkv_raft::Result<()>>>;

fn value(i: usize, bytes: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; bytes])
}

fn one_store(segment_bytes: u64) -> (LocalNetwork, SimFs, Arc<Gate>, Store) {
    let net = LocalNetwork::new(1);
    let sim = SimFs::new();
    let gate = Arc::new(Gate::default());
    let fs = Arc::new(GatedFs { inner: Arc::new(sim.clone()), gate: gate.clone() });
    let store = start(&net, fs, StoreId(1), segment_bytes);
    let peer = Peer { id: PeerId(1), store: StoreId(1) };
    store.bootstrap_region(Region { peers: vec![peer], ..Region::whole(R1) }).unwrap();
    wait_leader(&[&store]);
    put(&store, "warm", Bytes::from_static(b"up")).recv_timeout(LIVENESS).unwrap().unwrap();
    (net, sim, gate, store)
}

/// A3: while an fsync stalls, 24 writes of 96 KiB queue up behind it (one entry each);
/// once it returns, the writer persists all of them at once: 2.3 MiB, with 1 MiB WAL
/// segments. Before, one record for all of it: `RecordTooLarge`, and the store
/// stopped. Every write is acknowledged, and read back after a restart.
#[test]
fn a_writer_that_fell_behind_persists_more_than_one_record_holds() {
    let (net, sim, gate, store) = one_store(1 << 20);
    let last_index = |store: &Store| store.peer_status(R1).expect("a replica").last_index;
    gate.close();
    let mut replies = vec![put(&store, "k0", value(0, 96 << 10))];
    gate.wait_stalled();
    for i in 1..24 {
        let before = last_index(&store);
        replies.push(put(&store, &format!("k{i}"), value(i, 96 << 10)));
        let deadline = Instant::now() + LIVENESS;
        while last_index(&store) == before {
            assert!(Instant::now() < deadline, "write {i} was never proposed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    gate.open();
    for (i, rx) in replies.into_iter().enumerate() {
        let reply = rx.recv_timeout(LIVENESS).expect("every write is answered");
        assert!(reply.is_ok(), "write {i}: {reply:?}");
    }
    // One write larger than any record is refused, and the store keeps serving.
    let huge = put(&store, "huge", value(0, 1 << 20)).recv_timeout(LIVENESS).unwrap();
    assert!(matches!(huge, Err(Error::InvalidRequest(_))), "{huge:?}");
    put(&store, "after", Bytes::from_static(b"huge")).recv_timeout(LIVENESS).unwrap().unwrap();
    store.shutdown().unwrap();
    drop(store);
    net.unregister(StoreId(1));
    let store = start(&net, Arc::new(sim), StoreId(1), 1 << 20);
    wait_leader(&[&store]);
    for i in 0..24 {
        assert_eq!(get(&store, &format!("k{i}")), Some(value(i, 96 << 10)), "k{i}");
    }
    assert_eq!(get(&store, "huge"), None);
    store.shutdown().unwrap();
}

/// Writes `n` small values from each of `threads` threads, pausing a little between
/// two (so that the poller flushes many times), blocking while the store pushes back;
/// returns a count of writes handed to the store and the replies.
fn flood(
    store: &Arc<Store>,
    threads: usize,
    n: usize,
) -> (Arc<AtomicU64>, Vec<std::thread::JoinHandle<Replies>>) {
    let submitted = Arc::new(AtomicU64::new(0));
    let handles = (0..threads)
        .map(|t| {
            let (store, submitted) = (store.clone(), submitted.clone());
            std::thread::spawn(move || {
                (0..n)
                    .map(|i| {
                        let rx = put(&store, &format!("t{t}-{i}"), Bytes::from_static(b"v"));
                        submitted.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(100));
                        rx
                    })
                    .collect()
            })
        })
        .collect();
    (submitted, handles)
}

/// Waits until `count` stops growing with at least `at_least`: every client waits for
/// room in the store's full queue.
fn wait_saturated(count: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + LIVENESS;
    let mut last = count.load(Ordering::SeqCst);
    loop {
        assert!(Instant::now() < deadline, "only {last} of {at_least}");
        std::thread::sleep(Duration::from_millis(50));
        let now = count.load(Ordering::SeqCst);
        if now == last && now >= at_least {
            return;
        }
        last = now;
    }
}

/// A5: an fsync stalls while clients flood the store: more than the writer's queue of
/// flushes, more than the poller's mailbox of requests. Before, the poller blocked on
/// the full writer queue, the mailbox filled, and the writer, once its fsync returned,
/// blocked forever on the mailbox to report it: no write ever completed. Now every
/// write completes once the disk is back.
#[test]
fn an_fsync_stall_under_a_flood_of_writes_does_not_wedge_the_store() {
    let (_net, _sim, gate, store) = one_store(64 << 20);
    let store = Arc::new(store);
    gate.close();
    let first = put(&store, "first", Bytes::from_static(b"v"));
    gate.wait_stalled();
    let (submitted, handles) = flood(&store, 8, 2000);
    // The store's queues are full: clients wait for room.
    wait_saturated(&submitted, 4096);
    gate.open();
    first.recv_timeout(LIVENESS).expect("the first write is answered").unwrap();
    for handle in handles {
        for rx in handle.join().unwrap() {
            let reply = rx.recv_timeout(LIVENESS).expect("the store is not wedged");
            assert!(reply.is_ok(), "{reply:?}");
        }
    }
    Arc::try_unwrap(store).unwrap().shutdown().unwrap();
}

/// A9: the leader of three stores (regions do not hibernate) has a stalled fsync and
/// a client lane full of blocked writers. Before, the peers' envelopes (heartbeat
/// responses, then the followers' votes once the leader went silent) found the shared
/// mailbox full and were dropped. Now they have their own lane: none is dropped, and
/// the leader keeps its followers (no new term) until the disk is back and every write
/// completes.
#[test]
fn raft_messages_reach_a_leader_whose_clients_fill_its_queue() {
    let net = LocalNetwork::new(1);
    let gates: Vec<Arc<Gate>> = (0..3).map(|_| Arc::new(Gate::default())).collect();
    let peers: Vec<Peer> = (1..=3).map(|i| Peer { id: PeerId(i), store: StoreId(i) }).collect();
    let stores: Vec<Arc<Store>> = (1..=3u64)
        .map(|i| {
            let fs = GatedFs { inner: Arc::new(SimFs::new()), gate: gates[i as usize - 1].clone() };
            let mut options = options(StoreId(i), 64 << 20);
            options.config.hibernate_regions = false;
            let store = start_with(&net, Arc::new(fs), &options);
            store.bootstrap_region(Region { peers: peers.clone(), ..Region::whole(R1) }).unwrap();
            Arc::new(store)
        })
        .collect();
    let leader = wait_leader(&stores.iter().map(AsRef::as_ref).collect::<Vec<_>>());
    let store = &stores[leader];
    put(store, "warm", Bytes::from_static(b"up")).recv_timeout(LIVENESS).unwrap().unwrap();
    let term = store.peer_status(R1).unwrap().term;
    gates[leader].close();
    let first = put(store, "first", Bytes::from_static(b"v"));
    gates[leader].wait_stalled();
    let (submitted, handles) = flood(store, 8, 2000);
    wait_saturated(&submitted, 4096);
    // Heartbeats go out and their responses come back many times over while the
    // clients wait.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(store.dropped_envelopes(), 0, "no Raft message dropped");
    for s in &stores {
        let status = s.peer_status(R1).unwrap();
        assert_eq!(status.term, term, "no election: the leader kept its followers");
    }
    gates[leader].open();
    first.recv_timeout(LIVENESS).expect("answered").unwrap();
    for handle in handles {
        for rx in handle.join().unwrap() {
            let reply = rx.recv_timeout(LIVENESS).expect("the store is not wedged");
            assert!(reply.is_ok(), "{reply:?}");
        }
    }
    for s in stores {
        Arc::try_unwrap(s).unwrap().shutdown().unwrap();
    }
}

/// raft-rs's `max_uncommitted_size` is set (`StoreConfig::max_uncommitted_bytes`):
/// while the leader's fsync stalls nothing commits, and past the limit a write is
/// dropped with a reason that says so (before: `LeadershipChanging`, which it was
/// not); once the disk is back the group commits and writes are taken again.
#[test]
fn a_leader_past_its_uncommitted_limit_drops_writes_with_that_reason() {
    let net = LocalNetwork::new(1);
    let sim = SimFs::new();
    let gate = Arc::new(Gate::default());
    let fs = Arc::new(GatedFs { inner: Arc::new(sim), gate: gate.clone() });
    let mut options = options(StoreId(1), 64 << 20);
    options.config.max_append_bytes = 16 << 10;
    options.config.max_uncommitted_bytes = 32 << 10;
    let store = start_with(&net, fs, &options);
    let peer = Peer { id: PeerId(1), store: StoreId(1) };
    store.bootstrap_region(Region { peers: vec![peer], ..Region::whole(R1) }).unwrap();
    wait_leader(&[&store]);
    put(&store, "warm", Bytes::from_static(b"up")).recv_timeout(LIVENESS).unwrap().unwrap();
    gate.close();
    let mut pending = Vec::new();
    let dropped = loop {
        assert!(pending.len() < 100, "no write was dropped past the limit");
        let rx = put(&store, &format!("k{}", pending.len()), value(0, 8 << 10));
        // One at a time: each write is its own entry.
        if let Ok(reply) = rx.recv_timeout(Duration::from_millis(50)) {
            break reply;
        }
        pending.push(rx);
    };
    assert!(
        matches!(dropped, Err(Error::Dropped { reason: DropReason::UncommittedLimit, .. })),
        "{dropped:?}"
    );
    assert!(dropped.unwrap_err().is_retryable());
    gate.open();
    for rx in pending {
        // Written, or (on a slow machine, answered after the 50 ms above) dropped too.
        let reply = rx.recv_timeout(LIVENESS).expect("answered");
        assert!(
            matches!(
                reply,
                Ok(()) | Err(Error::Dropped { reason: DropReason::UncommittedLimit, .. })
            ),
            "{reply:?}"
        );
    }
    put(&store, "after", Bytes::from_static(b"v")).recv_timeout(LIVENESS).unwrap().unwrap();
    store.shutdown().unwrap();
}
