//! Duplication's source-side readers on a running store (`Store::dup_read_log`,
//! `Store::dup_seed_image`, `Store::wait_applied`; ARCHITECTURE.md "Duplication:
//! reading the source"): the log read after any image, replayed onto it, gives the
//! region's final raw state; writes apply refused or skipped give no op; batches stop
//! at entry boundaries; a compacted log is a typed gap; a transaction commit is a typed
//! refusal; a seed image outlives the file it came from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::bounded;
use regionkv_engine::{Epoch, Peer, PeerId, Region, RegionId, SessionId, StoreId};
use regionkv_raft::dup::{DupCmd, DupReply, DupRequest};
use regionkv_raft::transport::local::LocalNetwork;
use regionkv_raft::{
    AdminCmd, AdminRequest, AdminResult, DupLogBatch, DupSeedImage, Error, Op, RecordInit, Result,
    Store, StoreConfig, StoreOptions, TxnCmd, TxnReply, TxnRequest, WriteRequest, WriteSession,
};
use regionkv_wal::RealFs;

const R1: RegionId = RegionId(1);
const DUP: u64 = 0xD0;
const WAIT: Duration = Duration::from_secs(20);

type Model = BTreeMap<Bytes, Bytes>;

struct Running {
    dir: tempfile::TempDir,
    net: LocalNetwork,
    store: Store,
}

/// Store 1 on `dir`, checkpointing every `checkpoint_bytes` of applied log.
fn open(dir: &std::path::Path, net: &LocalNetwork, checkpoint_bytes: u64) -> Store {
    let id = StoreId(1);
    let config = StoreConfig::new(id)
        .tick_interval(Duration::from_millis(10))
        .checkpoint_log_bytes(checkpoint_bytes);
    let transport: Arc<dyn regionkv_raft::transport::Transport> = Arc::new(net.transport(id));
    let store = Store::start(
        Arc::new(RealFs),
        &dir.join("store-1"),
        &StoreOptions::new(config),
        &transport,
    )
    .unwrap();
    net.register(id, store.inbox());
    store
}

/// Retries a put until the store leads region 1.
fn until_leader(store: &Store) {
    let deadline = Instant::now() + WAIT;
    while write(store, Epoch::INITIAL, vec![put("boot", "1")], None).is_err() {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One store leading region 1 (the whole key space), checkpointing every
/// `checkpoint_bytes` of applied log.
fn start(checkpoint_bytes: u64) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let net = LocalNetwork::new(1);
    let store = open(dir.path(), &net, checkpoint_bytes);
    store.learn_cluster_version(regionkv_raft::version::DUP.since).unwrap();
    let region =
        Region { peers: vec![Peer { id: PeerId(1), store: StoreId(1) }], ..Region::whole(R1) };
    store.bootstrap_region(region).unwrap();
    until_leader(&store);
    Running { dir, net, store }
}

fn put(k: &str, v: &str) -> Op {
    Op::Put { key: Bytes::from(k.to_owned()), value: Bytes::from(v.to_owned()) }
}

fn del(k: &str) -> Op {
    Op::Delete { key: Bytes::from(k.to_owned()) }
}

fn write(store: &Store, epoch: Epoch, ops: Vec<Op>, session: Option<WriteSession>) -> Result<()> {
    let (tx, rx) = bounded(1);
    let reply = Box::new(move |r| {
        let _ = tx.send(r);
    });
    store.write(WriteRequest { region: R1, epoch, ops, session, reply });
    rx.recv_timeout(WAIT).expect("an answer")
}

fn dup(store: &Store, epoch: Epoch, cmd: DupCmd) -> DupReply {
    let (tx, rx) = bounded(1);
    let reply = Box::new(move |r| {
        let _ = tx.send(r);
    });
    store.dup(DupRequest { region: R1, epoch, cmd, reply });
    rx.recv_timeout(WAIT).expect("an answer").expect("applied")
}

fn txn(store: &Store, cmd: TxnCmd) -> Result<TxnReply> {
    let (tx, rx) = bounded(1);
    let reply = Box::new(move |r| {
        let _ = tx.send(r);
    });
    store.txn(TxnRequest { region: R1, epoch: Epoch::INITIAL, cmd, reply });
    rx.recv_timeout(WAIT).expect("an answer")
}

/// The applied index now (every write answered so far is in it).
fn applied(store: &Store) -> u64 {
    store.peer_status(R1).expect("a replica").applied
}

fn image_model(image: &DupSeedImage) -> Model {
    let mut model = Model::new();
    for chunk in image.chunks(64) {
        for (k, v) in chunk.unwrap() {
            assert!(model.insert(k, v).is_none(), "a key twice");
        }
    }
    model
}

/// Reads the log from `after` up to `last` in batches of at most `max_bytes`, checking
/// each batch's shape, and applies it to `model`.
fn replay(store: &Store, mut after: u64, last: u64, max_bytes: usize, model: &mut Model) {
    while after < last {
        let batch: DupLogBatch = store.dup_read_log(R1, after, max_bytes).unwrap();
        assert_eq!(batch.after, after);
        assert!(batch.last > after && batch.last <= last, "{batch:?}");
        assert_eq!(batch.entries, batch.last - after);
        let bytes: usize =
            batch.ops.iter().map(|o| o.key.len() + o.value.as_ref().map_or(0, Bytes::len)).sum();
        assert_eq!(bytes, batch.bytes);
        // Whole entries: past the limit only with one entry.
        assert!(batch.bytes <= max_bytes || batch.entries == 1, "{batch:?}");
        let mut prev = after;
        for op in &batch.ops {
            assert!(op.index > after && op.index <= batch.last && op.index >= prev);
            prev = op.index;
            match &op.value {
                Some(v) => model.insert(op.key.clone(), v.clone()),
                None => model.remove(&op.key),
            };
        }
        after = batch.last;
    }
}

/// Puts, deletes, batches, a write refused for its stale epoch, a retried session
/// write skipped at apply, and a split: the log after each image, replayed onto it,
/// gives the image at the end (within the region's final range), read in batches of
/// several sizes. Refused and skipped writes give no op.
#[test]
fn the_log_after_any_image_replays_to_the_final_state() {
    let r = start(1 << 30);
    let s = &r.store;
    // An empty region's image: no chunk, its index.
    write(s, Epoch::INITIAL, vec![del("boot")], None).unwrap();
    let start = dup(s, Epoch::INITIAL, DupCmd::Start { dup_id: DUP, incarnation: 1 });
    let seed = s.dup_seed_image(R1, start.index).unwrap();
    assert!(seed.index >= start.index);
    assert_eq!(seed.chunks(1 << 20).count(), 0, "an empty region gives no chunk");
    let seeded = DupCmd::Seeded { dup_id: DUP, incarnation: 1, seed_index: seed.index };
    dup(s, Epoch::INITIAL, seeded);
    let progress = DupCmd::Progress { dup_id: DUP, incarnation: 1, confirmed: seed.index };
    dup(s, Epoch::INITIAL, progress);
    let mut images = vec![seed];
    let snap = |images: &mut Vec<DupSeedImage>| {
        let image = s.dup_seed_image(R1, applied(s)).unwrap();
        images.push(image);
    };
    let session = WriteSession { id: SessionId(7), seq: 1 };
    for i in 0..20 {
        write(s, Epoch::INITIAL, vec![put(&format!("a{i:02}"), &format!("v{i}"))], None).unwrap();
    }
    snap(&mut images);
    write(s, Epoch::INITIAL, vec![put("z1", "x"), del("a03"), put("a04", "y")], None).unwrap();
    write(s, Epoch::INITIAL, vec![put("c", "first")], Some(session)).unwrap();
    write(s, Epoch::INITIAL, vec![put("c", "second")], None).unwrap();
    snap(&mut images);
    // The session's retry: skipped at apply; replaying it would bring "first" back.
    write(s, Epoch::INITIAL, vec![put("c", "first")], Some(session)).unwrap();
    let retry_at = applied(s);
    let (tx, rx) = bounded(1);
    s.admin(AdminRequest {
        region: R1,
        epoch: Epoch::INITIAL,
        cmd: AdminCmd::Split { split_keys: vec![b"m".to_vec()], new_ids: vec![RegionId(1000)] },
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    });
    let parts = match rx.recv_timeout(WAIT).unwrap() {
        Ok(AdminResult::Split(parts)) => parts,
        other => panic!("split: {other:?}"),
    };
    let epoch = parts[0].epoch;
    snap(&mut images);
    // Refused at apply: routed with the epoch before the split.
    assert!(matches!(
        write(s, Epoch::INITIAL, vec![put("a00", "stale")], None),
        Err(Error::EpochNotMatch { .. })
    ));
    let stale_at = applied(s);
    for i in 0..10 {
        write(s, epoch, vec![put(&format!("b{i}"), "w"), del(&format!("a{:02}", i * 2))], None)
            .unwrap();
    }
    snap(&mut images);
    write(s, epoch, vec![put("a01", "last")], None).unwrap();
    let last = applied(s);
    let end = s.dup_seed_image(R1, last).unwrap();
    assert_eq!(end.index, last);
    let want = image_model(&end);
    assert_eq!(want.get(&Bytes::from("c")), Some(&Bytes::from("second")));
    let region = end.region.clone();
    for image in &images {
        for max_bytes in [1, 40, 1 << 20] {
            let mut model = image_model(image);
            replay(s, image.index, last, max_bytes, &mut model);
            model.retain(|k, _| region.contains(k));
            assert_eq!(model, want, "from {} in batches of {max_bytes}", image.index);
        }
    }
    // The refused and the skipped writes are entries of their own and give no op.
    for at in [retry_at, stale_at] {
        let batch = s.dup_read_log(R1, at - 1, 0).unwrap();
        assert_eq!((batch.last, batch.entries), (at, 1));
        assert_eq!(batch.ops, vec![], "entry {at}");
    }
    // An index at or past the applied one: nothing yet.
    let batch = s.dup_read_log(R1, last, 1 << 20).unwrap();
    assert_eq!((batch.last, batch.entries, batch.ops.len()), (last, 0, 0));
}

/// A log compacted past the index asked for is `DupLogGap`, with where it starts.
#[test]
fn a_compacted_log_is_a_gap() {
    let r = start(2 << 10);
    let s = &r.store;
    let value = "x".repeat(512);
    for i in 0..40 {
        write(s, Epoch::INITIAL, vec![put(&format!("k{i}"), &value)], None).unwrap();
    }
    match s.dup_read_log(R1, 1, 1 << 20) {
        Err(Error::DupLogGap { region, first_available }) => {
            assert_eq!(region, R1);
            assert!(first_available > 2, "{first_available}");
            // From there on the log reads.
            let batch = s.dup_read_log(R1, first_available - 1, 1 << 20).unwrap();
            assert!(batch.entries > 0);
        }
        other => panic!("{other:?}"),
    }
}

/// A transaction's prewrite gives no op; a raw write refused by its lock gives none;
/// a committing resolve (whose values are the locks') is `DupUnsupportedEntry`, and
/// the log after it reads on.
#[test]
fn a_transaction_commit_is_unsupported() {
    let r = start(1 << 30);
    let s = &r.store;
    let from = applied(s);
    let key = Bytes::from("L");
    txn(
        s,
        TxnCmd::Prewrite {
            txn_id: 9,
            primary_key: key.clone(),
            ops: vec![Op::Put { key: key.clone(), value: Bytes::from("locked") }],
            ttl_ms: 600_000,
            record: Some(RecordInit {
                participants: vec![key.clone()],
                coordinator: None,
                staging: false,
            }),
            start_ts: None,
            session: None,
            min_commit: None,
        },
    )
    .unwrap();
    assert!(matches!(
        write(s, Epoch::INITIAL, vec![put("L", "raw")], None),
        Err(Error::Locked { .. })
    ));
    let locked_at = applied(s);
    let batch = s.dup_read_log(R1, from, 1 << 20).unwrap();
    assert_eq!(batch.last, locked_at);
    assert_eq!(batch.ops, vec![], "a prewrite and a refused write write no raw key");
    let resolve =
        TxnCmd::Resolve { txn_id: 9, keys: vec![key.clone()], commit: true, commit_ts: None };
    txn(s, resolve).unwrap();
    let resolve_at = applied(s);
    write(s, Epoch::INITIAL, vec![put("after", "1")], None).unwrap();
    match s.dup_read_log(R1, locked_at, 1 << 20) {
        Err(Error::DupUnsupportedEntry { region, index, .. }) => {
            assert_eq!((region, index), (R1, resolve_at));
        }
        other => panic!("{other:?}"),
    }
    // Published with the poller's turn (a write is answered as its round commits, a
    // moment before): wait for it.
    let end = applied(s);
    assert_eq!(s.wait_applied(R1, end - 1, WAIT), Some(end));
    let batch = s.dup_read_log(R1, resolve_at, 1 << 20).unwrap();
    assert_eq!((batch.last, batch.ops.len()), (end, 1), "{batch:?}");
}

/// An image taken before a later checkpoint (which replaces its file) and a WAL purge
/// still reads whole; a `min_index` past the latest checkpoint makes a new one, one at
/// or below it does not.
#[test]
fn a_seed_image_outlives_later_checkpoints() {
    let r = start(1 << 30);
    let s = &r.store;
    let mut want = Model::new();
    for i in 0..200 {
        let (k, v) = (format!("k{i:03}"), format!("{i}").repeat(20));
        write(s, Epoch::INITIAL, vec![put(&k, &v)], None).unwrap();
        want.insert(Bytes::from(k), Bytes::from(v));
    }
    want.insert(Bytes::from("boot"), Bytes::from("1"));
    let first = s.dup_seed_image(R1, applied(s)).unwrap();
    assert_eq!(first.index, applied(s));
    // At or below the latest checkpoint: the same one.
    assert_eq!(s.dup_seed_image(R1, first.index - 5).unwrap().index, first.index);
    for i in 0..200 {
        write(s, Epoch::INITIAL, vec![del(&format!("k{i:03}"))], None).unwrap();
    }
    let later = s.dup_seed_image(R1, first.index + 1).unwrap();
    assert!(later.index > first.index);
    assert_eq!(image_model(&later).len(), 1);
    // The first file is gone from the directory (replaced), its image is not.
    std::thread::sleep(Duration::from_millis(200)); // a few purge ticks
    assert_eq!(image_model(&first), want);
}

/// `wait_applied` returns as soon as a put applies, long before its timeout.
#[test]
fn wait_applied_wakes_on_a_put() {
    let r = start(1 << 30);
    let s = Arc::new(r.store);
    let now = applied(&s);
    assert_eq!(s.wait_applied(R1, now - 1, Duration::ZERO), Some(now));
    assert_eq!(s.wait_applied(R1, now, Duration::from_millis(20)), None);
    let waiter = {
        let s = s.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            (s.wait_applied(R1, now, Duration::from_secs(60)), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    write(&s, Epoch::INITIAL, vec![put("w", "1")], None).unwrap();
    let (got, took) = waiter.join().unwrap();
    assert!(got.is_some_and(|i| i > now), "{got:?}");
    assert!(took < Duration::from_secs(60), "woken, not timed out");
}

/// The log reader's rate against the put rate of the same region, in one run: 10,000
/// puts of 100-byte values (one client, each answered before the next), then the
/// whole log decoded in 1 MiB batches. Prints the figures; run with
/// `cargo test --release -p regionkv-raft --test dup_source -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
#[allow(clippy::cast_precision_loss, reason = "printed figures")]
fn measure_log_read_rate() {
    const PUTS: u64 = 10_000;
    let r = start(1 << 30);
    let s = &r.store;
    let from = applied(s);
    let value = "v".repeat(100);
    let started = Instant::now();
    for i in 0..PUTS {
        write(s, Epoch::INITIAL, vec![put(&format!("key{i:06}"), &value)], None).unwrap();
    }
    let put_secs = started.elapsed().as_secs_f64();
    let last = applied(s);
    for round in 0..3 {
        let started = Instant::now();
        let (mut after, mut ops, mut bytes) = (from, 0usize, 0usize);
        while after < last {
            let batch = s.dup_read_log(R1, after, 1 << 20).unwrap();
            ops += batch.ops.len();
            bytes += batch.bytes;
            after = batch.last;
        }
        let secs = started.elapsed().as_secs_f64();
        let (entries, mb) = ((last - from) as f64, bytes as f64 / 1e6);
        println!(
            "round {round}: puts {:.0}/s; log read {:.0} entries/s, {:.1} MB/s decoded ({ops} ops); \
             read/put rate {:.0}x",
            PUTS as f64 / put_secs,
            entries / secs,
            mb / secs,
            (entries / secs) / (PUTS as f64 / put_secs),
        );
    }
}

/// After a restart, entries applied before it (kept by the duplication floor, below the
/// image the restart started from) are `DupOutcomeUnknown`: which of their writes
/// applied is not known here. Entries applied since read as before.
#[test]
fn entries_applied_before_a_restart_have_unknown_outcomes() {
    let r = start(1 << 30);
    let start_at = dup(&r.store, Epoch::INITIAL, DupCmd::Start { dup_id: DUP, incarnation: 1 });
    for i in 0..10 {
        write(&r.store, Epoch::INITIAL, vec![put(&format!("k{i}"), "v")], None).unwrap();
    }
    let image = r.store.dup_seed_image(R1, applied(&r.store)).unwrap();
    r.store.shutdown().unwrap();
    let store = open(r.dir.path(), &r.net, 1 << 30);
    until_leader(&store);
    match store.dup_read_log(R1, start_at.index, 1 << 20) {
        Err(Error::DupOutcomeUnknown { region, index, known_from }) => {
            assert_eq!((region, index, known_from), (R1, start_at.index + 1, image.index));
        }
        other => panic!("{other:?}"),
    }
    let end = applied(&store);
    assert_eq!(store.wait_applied(R1, end - 1, WAIT), Some(end));
    let batch = store.dup_read_log(R1, image.index, 1 << 20).unwrap();
    assert_eq!(batch.last, end);
    assert!(batch.ops.iter().any(|o| o.key == "boot"), "{batch:?}");
    store.shutdown().unwrap();
}
