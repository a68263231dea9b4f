//! The TCP transport over loopback: delivery, authentication, bad input, restarts and
//! queue bounds. Every wait is bounded in time; only 127.0.0.1 and ephemeral ports.
//! Each test uses its own store ids, so that its threads can be told apart.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Entry, Message, MessageType};
use regionkv_engine::{Epoch, RegionId, StoreId};
use regionkv_raft::transport::tcp::{Backoff, Direction, TcpConfig, TcpTransport};
use regionkv_raft::transport::wire::{
    self, ClusterId, FRAME_HEADER_BYTES, FrameKind, HandshakeKey, Hello, Proof, RejectReason, Role,
    Transcript,
};
use regionkv_raft::transport::{Body, Envelope, Inbox, KeyRange, SnapshotChunk, Transport};

#[path = "support/warn_log.rs"]
mod warn_log;
use warn_log::{capture_warnings, logged};

type TestResult = Result<(), Box<dyn Error>>;

const SECRET: &[u8] = b"the cluster secret of the test cluster";
const CLUSTER: ClusterId = ClusterId(7);
/// Raft messages each store sends each peer in the exchange test.
const MESSAGES: u64 = 150;
/// Snapshot chunks (of 1 MiB) each store sends each peer in the exchange test.
const CHUNKS: u32 = 3;
/// Envelopes sent to each unreachable peer in the queue test.
const SENT: u64 = 10_000;
/// Envelopes sent one at a time, each awaited, in the inline-write test.
const ONE_BY_ONE: u64 = 20;
/// 1 MiB chunks sent in one frame to a peer that stopped reading, in the same test.
const BURST: u32 = 24;

// ---- helpers ----

#[derive(Default)]
struct Collect(Mutex<Vec<Envelope>>);

impl Inbox for Collect {
    fn deliver(&self, envelopes: Vec<Envelope>) {
        self.0.lock().unwrap().extend(envelopes);
    }
}

impl Collect {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn from(&self, store: StoreId) -> Vec<Envelope> {
        self.0.lock().unwrap().iter().filter(|e| e.from == store).cloned().collect()
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes; returns the last value.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("a literal address")
}

fn config(store: u64) -> TcpConfig {
    let mut c = TcpConfig::new(StoreId(store), any_port(), CLUSTER, SECRET);
    c.handshake_timeout = Duration::from_secs(3);
    c.backoff = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    c.poll_interval = Duration::from_millis(20);
    c.shutdown_timeout = Duration::from_secs(5);
    c
}

fn start(config: TcpConfig) -> Result<(TcpTransport, Arc<Collect>), Box<dyn Error>> {
    let inbox = Arc::new(Collect::default());
    let transport = TcpTransport::start(config, inbox.clone())?;
    Ok((transport, inbox))
}

fn raft_msg(from: u64, to: u64, i: u64) -> Envelope {
    let types = [
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgHeartbeat,
        MessageType::MsgRequestVote,
    ];
    let mut m = Message::default();
    m.set_msg_type(types[(i % 4) as usize]);
    m.from = from;
    m.to = to;
    m.term = 3 + i / 10;
    m.index = i;
    m.log_term = 3;
    m.commit = i.saturating_sub(2);
    if m.get_msg_type() == MessageType::MsgAppend {
        for k in 0..(i % 5) {
            let mut e = Entry::default();
            e.index = i + k + 1;
            e.term = m.term;
            e.data = Bytes::from(vec![(i + k) as u8; 10 + (i * 37 % 300) as usize]);
            m.entries.push(e);
        }
    }
    Envelope {
        region: RegionId(1 + i % 3),
        from: StoreId(from),
        to: StoreId(to),
        epoch: i.is_multiple_of(2).then_some(Epoch { version: i, conf_ver: 2 }),
        range: i.is_multiple_of(3).then(|| KeyRange { start: vec![i as u8], end: None }),
        body: Body::Raft(m),
    }
}

fn chunk(from: u64, to: u64, seq: u32, chunks: u32, bytes: usize) -> Envelope {
    let data: Vec<u8> = (0..bytes).map(|b| (b as u64 * 31 + u64::from(seq) + from) as u8).collect();
    Envelope {
        region: RegionId(1),
        from: StoreId(from),
        to: StoreId(to),
        epoch: Some(Epoch { version: 1, conf_ver: 1 }),
        range: None,
        body: Body::SnapshotChunk(SnapshotChunk {
            index: 500,
            term: 4,
            offset: u64::from(seq) * bytes as u64,
            file_bytes: u64::from(chunks) * bytes as u64,
            data: Bytes::from(data),
        }),
    }
}

/// The names of this process's live threads that belong to `store`'s transport.
fn transport_threads(store: u64) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let id = store.to_string();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| {
            ["tcp-accept-", "tcp-send-", "tcp-recv-"].iter().any(|prefix| {
                name.strip_prefix(prefix).is_some_and(|rest| rest.split('-').next() == Some(&id))
            })
        })
        .collect()
}

/// Shuts `t` down, checking that it is prompt and leaves no thread behind.
fn stop(t: &TcpTransport) {
    let started = Instant::now();
    t.shutdown();
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown took {:?}", started.elapsed());
    let store = t.store().0;
    assert!(
        wait_until(Duration::from_secs(2), || transport_threads(store).is_empty()),
        "threads of store {store} outlived shutdown: {:?}",
        transport_threads(store)
    );
}

/// True once `stream`'s peer has closed it (read gives end of stream or an error).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a timeout");
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {} // a REJECT frame, say; keep reading to the end
        }
    }
    false
}

fn read_frame(stream: &mut TcpStream) -> Result<(FrameKind, Vec<u8>), Box<dyn Error>> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header)?;
    let header = wire::parse_header(&header, 1 << 20)?;
    let mut payload = vec![0; header.len as usize];
    stream.read_exact(&mut payload)?;
    header.check(&payload)?;
    Ok((header.kind, payload))
}

/// Dials `addr` as store `me` and completes the handshake by hand, as a real peer
/// would; the returned stream may then carry BATCH frames.
/// The peer must run plaintext links (`insecure`): the frames are checked as they are.
fn raw_handshake(addr: SocketAddr, me: u64, peer: u64) -> Result<TcpStream, Box<dyn Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let nonce = [42u8; 32];
    // No link mode: a binary from before sealing, which runs plaintext links.
    let hello = Hello { cluster: CLUSTER, store: StoreId(me), nonce, link: None };
    s.write_all(&wire::encode_frame(FrameKind::Hello, &hello.encode())?)?;
    let (kind, payload) = read_frame(&mut s)?;
    assert_eq!(kind, FrameKind::Hello);
    let theirs = Hello::decode(&payload)?;
    let (kind, payload) = read_frame(&mut s)?;
    assert_eq!(kind, FrameKind::Proof);
    let t = Transcript {
        cluster: CLUSTER,
        connector: StoreId(me),
        acceptor: StoreId(peer),
        connector_nonce: nonce,
        acceptor_nonce: theirs.nonce,
    };
    let key = HandshakeKey::derive(SECRET);
    assert!(Proof::decode(&payload)?.verify(&key, Role::Acceptor, &t));
    let proof = Proof::make(&key, Role::Connector, &t);
    s.write_all(&wire::encode_frame(FrameKind::Proof, &proof.encode())?)?;
    let (kind, _) = read_frame(&mut s)?;
    assert_eq!(kind, FrameKind::Accept);
    Ok(s)
}

// ---- tests ----

/// Three stores exchange Raft messages of several types (with entries) and 3 MiB
/// snapshots in 1 MiB chunks: everything arrives intact, in order per sender.
#[test]
fn three_stores_exchange_envelopes_intact_and_in_order() -> TestResult {
    let ids = [11u64, 12, 13];
    let mut stores = Vec::new();
    for id in ids {
        stores.push(start(config(id))?);
    }
    for (t, _) in &stores {
        for (other, _) in &stores {
            if other.store() != t.store() {
                t.set_peer_addr(other.store(), other.local_addr())?;
            }
        }
    }
    let mut expected = Vec::new();
    for (t, _) in &stores {
        let from = t.store().0;
        for to in ids.into_iter().filter(|&to| to != from) {
            let mut sequence = Vec::new();
            for i in 0..MESSAGES {
                sequence.push(raft_msg(from, to, i));
                if i == MESSAGES / 2 {
                    sequence.extend((0..CHUNKS).map(|seq| chunk(from, to, seq, CHUNKS, 1 << 20)));
                }
            }
            // Several `send` calls of mixed sizes, as a store's ready loop would.
            for part in sequence.chunks(7) {
                t.send(part.to_vec());
            }
            expected.push((from, to, sequence));
        }
    }
    let per_store = 2 * (MESSAGES as usize + CHUNKS as usize);
    // Counters are bumped after the write returns, which may be after delivery.
    let all_arrived = wait_until(Duration::from_secs(30), || {
        stores.iter().all(|(t, inbox)| {
            inbox.len() >= per_store && t.stats().envelopes_sent >= per_store as u64
        })
    });
    assert!(
        all_arrived,
        "arrived: {:?}",
        stores.iter().map(|(t, i)| (t.store().0, i.len(), t.stats())).collect::<Vec<_>>()
    );
    for (from, to, sequence) in &expected {
        let (_, inbox) = stores.iter().find(|(t, _)| t.store().0 == *to).expect("a store");
        let got = inbox.from(StoreId(*from));
        assert_eq!(got.len(), sequence.len(), "{from} -> {to}");
        assert!(got == *sequence, "{from} -> {to}: envelopes differ or are out of order");
    }
    for (t, inbox) in &stores {
        let s = t.stats();
        assert_eq!(inbox.len(), per_store);
        assert_eq!(s.envelopes_sent, per_store as u64, "{s:?}");
        assert_eq!(s.envelopes_received, per_store as u64, "{s:?}");
        assert_eq!(s.envelopes_dropped + s.bad_frames + s.handshake_rejections, 0, "{s:?}");
        assert!(s.frames_sent >= 1 && s.frames_sent <= s.envelopes_sent, "{s:?}");
        assert_eq!(s.handshakes_completed, 4, "two outbound, two inbound: {s:?}");
    }
    let threads = transport_threads(11);
    assert!(
        threads.len() >= 5 || !std::path::Path::new("/proc/self/task").exists(),
        "acceptor, two senders, two readers: {threads:?}"
    );
    for (t, _) in &stores {
        stop(t);
    }
    Ok(())
}

/// A store with the wrong secret, and one with the wrong cluster id, are refused both
/// ways round: nothing is delivered, each side counts and logs why, and the good
/// stores keep talking to each other.
#[test]
fn a_wrong_secret_or_cluster_id_is_refused_by_both_sides() -> TestResult {
    capture_warnings();
    let (good, good_inbox) = start(config(21))?;
    let (friend, friend_inbox) = start(config(22))?;
    let (bad_secret, bad_secret_inbox) =
        start(TcpConfig { secret: b"not the cluster secret at all!!".to_vec(), ..config(23) })?;
    let (bad_cluster, bad_cluster_inbox) =
        start(TcpConfig { cluster: ClusterId(8), ..config(24) })?;
    good.set_peer_addr(friend.store(), friend.local_addr())?;
    friend.set_peer_addr(good.store(), good.local_addr())?;
    for bad in [&bad_secret, &bad_cluster] {
        // Both directions: the bad store dials the good one, and the other way round.
        good.set_peer_addr(bad.store(), bad.local_addr())?;
        bad.set_peer_addr(good.store(), good.local_addr())?;
    }
    // A stale address: store 25 is said to live where store 22 does.
    good.set_peer_addr(StoreId(25), friend.local_addr())?;
    good.send(vec![raft_msg(21, 25, 0)]);
    let to_bad: Vec<Envelope> =
        (0..5).flat_map(|i| [raft_msg(21, 23, i), raft_msg(21, 24, i)]).collect();
    good.send(to_bad.clone());
    bad_secret.send((0..5).map(|i| raft_msg(23, 21, i)).collect());
    bad_cluster.send((0..5).map(|i| raft_msg(24, 21, i)).collect());
    good.send((0..5).map(|i| raft_msg(21, 22, i)).collect());
    friend.send((0..5).map(|i| raft_msg(22, 21, i)).collect());

    let has = |t: &TcpTransport, remote: SocketAddr, dir: Direction, reason: RejectReason| {
        t.recent_rejections().iter().any(|r| {
            r.direction == dir
                && r.reason == Some(reason)
                && (dir == Direction::Inbound || r.remote == remote)
        })
    };
    let refused = wait_until(Duration::from_secs(10), || {
        // Dialing the bad stores: we refuse a bad proof; the other cluster refuses us.
        has(&good, bad_secret.local_addr(), Direction::Outbound, RejectReason::BadProof)
            && has(&good, bad_cluster.local_addr(), Direction::Outbound, RejectReason::ClusterMismatch)
            // Dialed by them: they refuse our proof and tell us; we refuse the cluster.
            && has(&good, bad_secret.local_addr(), Direction::Inbound, RejectReason::BadProof)
            && has(&good, bad_cluster.local_addr(), Direction::Inbound, RejectReason::ClusterMismatch)
            // And the bad stores saw it too.
            && has(&bad_secret, good.local_addr(), Direction::Outbound, RejectReason::BadProof)
            && has(&bad_secret, good.local_addr(), Direction::Inbound, RejectReason::BadProof)
            && has(&bad_cluster, good.local_addr(), Direction::Outbound, RejectReason::ClusterMismatch)
            && has(&bad_cluster, good.local_addr(), Direction::Inbound, RejectReason::ClusterMismatch)
            && has(&good, friend.local_addr(), Direction::Outbound, RejectReason::UnexpectedStore)
            && good_inbox.len() >= 5
            && friend_inbox.len() >= 5
    });
    assert!(refused, "rejections at the good store: {:#?}", good.recent_rejections());
    for t in [&good, &bad_secret, &bad_cluster] {
        assert!(t.stats().handshake_rejections >= 2, "{:?}", t.stats());
    }
    // The log says who and why.
    let bad_addr = bad_secret.local_addr().to_string();
    assert!(
        logged(&["WARN", &bad_addr, "handshake failed", "bad proof"]),
        "no warn line for {bad_addr}"
    );
    let other_addr = bad_cluster.local_addr().to_string();
    assert!(
        logged(&["WARN", &other_addr, "handshake failed", "cluster"]),
        "no warn line for {other_addr}"
    );

    // Nothing crossed; the good pair works, and keeps working.
    assert_eq!(bad_secret_inbox.len() + bad_cluster_inbox.len(), 0);
    assert!(good_inbox.0.lock().unwrap().iter().all(|e| e.from == friend.store()));
    assert_eq!(good.stats().envelopes_received, 5);
    friend.send((5..10).map(|i| raft_msg(22, 21, i)).collect());
    assert!(wait_until(Duration::from_secs(10), || good_inbox.len() == 10));
    assert!(wait_until(Duration::from_secs(10), || friend_inbox.len() == 5));
    assert!(friend_inbox.0.lock().unwrap().iter().all(|e| e.to == friend.store()));
    assert_eq!(good.stats().envelopes_received, 10);
    assert_eq!(bad_secret_inbox.len() + bad_cluster_inbox.len(), 0);
    for t in [&good, &friend, &bad_secret, &bad_cluster] {
        stop(t);
    }
    Ok(())
}

/// Garbage, an oversized frame header, a bad CRC, a wrong version (before the
/// handshake), and an oversized or corrupt BATCH frame (after a valid handshake): each
/// connection is closed, nothing is delivered, nothing panics, and a well-behaved peer
/// is served afterwards.
#[test]
fn bad_bytes_close_the_connection_and_the_transport_keeps_serving() -> TestResult {
    capture_warnings();
    // Plaintext links, so that raw frames reach the frame checks (a sealed link
    // refuses them as records first: `tcp_sealed.rs`).
    let (server, inbox) = start(TcpConfig {
        frame_bytes_max: 1 << 20,
        batch_bytes_max: 1 << 20,
        insecure: true,
        ..config(31)
    })?;
    let addr = server.local_addr();
    let hello = Hello { cluster: CLUSTER, store: StoreId(39), nonce: [1; 32], link: None };
    let good_hello = wire::encode_frame(FrameKind::Hello, &hello.encode())?;

    // 1. Garbage: not our protocol.
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")?;
    assert!(closed_by_peer(&mut s), "garbage");
    // 2. A handshake frame announcing far more than the handshake bound: refused from
    //    the header; the payload is never sent, so waiting for it would hang.
    let mut oversized = good_hello.clone();
    oversized[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&oversized[..FRAME_HEADER_BYTES])?;
    assert!(closed_by_peer(&mut s), "oversized header");
    // 3. A bad CRC.
    let mut bad_crc = good_hello.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&bad_crc)?;
    assert!(closed_by_peer(&mut s), "bad crc");
    // 4. A newer wire version: refused with a REJECT saying why.
    let mut v2 = good_hello.clone();
    v2[4] = 2;
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&v2)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (kind, payload) = read_frame(&mut s)?;
    assert_eq!(
        (kind, RejectReason::decode(&payload)?),
        (FrameKind::Reject, RejectReason::UnsupportedVersion)
    );
    assert!(closed_by_peer(&mut s), "wrong version");
    // 5. After a valid handshake: a BATCH frame over the frame bound, and one with a
    //    flipped payload bit.
    let mut s = raw_handshake(addr, 39, 31)?;
    let mut header = wire::encode_frame(FrameKind::Batch, &[])?;
    header[6..10].copy_from_slice(&(2u32 << 20).to_le_bytes());
    s.write_all(&header)?;
    assert!(closed_by_peer(&mut s), "oversized batch");
    let mut s = raw_handshake(addr, 39, 31)?;
    let mut frame =
        wire::encode_frame(FrameKind::Batch, &wire::encode_batch(&[raft_msg(39, 31, 1)])?)?;
    let middle = frame.len() / 2;
    frame[middle] ^= 0x01;
    s.write_all(&frame)?;
    assert!(closed_by_peer(&mut s), "corrupt batch");
    // 6. A silent client: the handshake deadline closes it.
    let mut silent = TcpStream::connect(addr)?;
    assert!(closed_by_peer(&mut silent), "silent client");

    let s = server.stats();
    assert_eq!(inbox.len(), 0, "nothing was delivered");
    assert_eq!(s.bad_frames, 5, "garbage, oversized, crc, oversized batch, corrupt batch: {s:?}");
    assert_eq!(s.handshake_rejections, 5, "garbage, oversized, crc, version, silence: {s:?}");
    assert!(logged(&["WARN", "handshake failed", "bad frame magic"]));
    assert!(logged(&["WARN", "bad frame", "checksum mismatch"]));

    // A raw but honest peer is served: its batch arrives.
    let mut s = raw_handshake(addr, 39, 31)?;
    let good = [raft_msg(39, 31, 2), raft_msg(39, 31, 3)];
    // Envelopes for another store, or claiming another sender than the authenticated
    // one, are dropped.
    let stray = [raft_msg(39, 99, 4), raft_msg(32, 31, 5)];
    let batch = [good[0].clone(), stray[0].clone(), stray[1].clone(), good[1].clone()];
    s.write_all(&wire::encode_frame(FrameKind::Batch, &wire::encode_batch(&batch)?)?)?;
    assert!(wait_until(Duration::from_secs(10), || inbox.len() == 2));
    assert!(inbox.from(StoreId(39)) == good);
    assert_eq!(server.stats().envelopes_misaddressed, 2);
    // So is a real transport.
    let (peer, _) = start(TcpConfig { insecure: true, ..config(32) })?;
    peer.set_peer_addr(server.store(), addr)?;
    peer.send(vec![raft_msg(32, 31, 4)]);
    assert!(wait_until(Duration::from_secs(10), || inbox.len() == 3));
    stop(&peer);
    stop(&server);
    Ok(())
}

/// A peer that restarts on the same address is dialed again and gets later envelopes.
#[test]
fn a_restarted_peer_is_reconnected_to() -> TestResult {
    let (sender, _) = start(config(41))?;
    let (receiver, inbox) = start(config(42))?;
    let addr = receiver.local_addr();
    sender.set_peer_addr(receiver.store(), addr)?;
    sender.send(vec![raft_msg(41, 42, 0)]);
    assert!(wait_until(Duration::from_secs(10), || inbox.len() == 1));

    stop(&receiver);
    drop(receiver);
    let (receiver, inbox) = start(TcpConfig { listen_addr: addr, ..config(42) })?;
    // Raft resends; so do we, until the new incarnation hears us.
    let mut i = 1;
    let heard = wait_until(Duration::from_secs(15), || {
        sender.send(vec![raft_msg(41, 42, i)]);
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
        inbox.len() > 0
    });
    assert!(heard, "sender: {:?}", sender.stats());
    assert!(sender.stats().reconnects >= 1, "{:?}", sender.stats());
    // Once reconnected, every later envelope arrives, in order.
    let before = inbox.len();
    let later: Vec<Envelope> = (1000..1020).map(|i| raft_msg(41, 42, i)).collect();
    sender.send(later.clone());
    assert!(wait_until(Duration::from_secs(10), || inbox.len() == before + later.len()));
    assert!(inbox.from(StoreId(41))[before..] == later[..]);
    stop(&sender);
    stop(&receiver);
    Ok(())
}

/// Sending to a peer that never answers the handshake (or cannot be reached at all)
/// fills its queue to the bound and no further: `send` returns at once, and the rest
/// is dropped and counted.
#[test]
fn the_queue_of_an_unreachable_peer_stays_bounded() -> TestResult {
    // Accepts TCP connections (the kernel does) but never reads or answers.
    let mute = TcpListener::bind(any_port())?;
    let refused = TcpListener::bind(any_port())?.local_addr()?; // closed at once
    let (t, _) = start(TcpConfig {
        queue_capacity: 64,
        queue_bytes_max: 1 << 20,
        handshake_timeout: Duration::from_secs(30),
        ..config(51)
    })?;
    t.set_peer_addr(StoreId(52), mute.local_addr()?)?;
    t.set_peer_addr(StoreId(53), refused)?;

    let entry_msg = |to: u64, i: u64| {
        let mut env = raft_msg(51, to, 0);
        if let Body::Raft(m) = &mut env.body {
            m.set_msg_type(MessageType::MsgAppend);
            let mut e = Entry::default();
            e.index = i;
            e.data = Bytes::from(vec![7u8; 4096]);
            m.entries.clear();
            m.entries.push(e);
        }
        env
    };
    let started = Instant::now();
    for i in 0..SENT {
        t.send(vec![entry_msg(52, i), entry_msg(53, i)]);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "send must not block: {took:?}");
    let depth = t.queue_depth(StoreId(52)).expect("a peer");
    assert!(depth.envelopes <= 64 && depth.bytes <= 1 << 20, "{depth:?}");
    let s = t.stats();
    // Queued envelopes that a failed connection drained count as dropped too.
    assert!(s.envelopes_queued + s.envelopes_dropped >= 2 * SENT, "{s:?}");
    assert!(s.envelopes_dropped >= SENT - 64, "the mute peer took 64 at most: {s:?}");
    assert_eq!(s.envelopes_sent, 0);

    // The byte bound: 100 KiB chunks fill 1 MiB long before 64 envelopes.
    t.remove_peer(StoreId(52));
    t.set_peer_addr(StoreId(52), mute.local_addr()?)?;
    for seq in 0..200 {
        t.send(vec![chunk(51, 52, seq, 200, 100 << 10)]);
    }
    let depth = t.queue_depth(StoreId(52)).expect("a peer");
    assert!(depth.bytes <= 1 << 20 && depth.envelopes <= 11, "{depth:?}");
    // Shutdown is prompt although a sender is stuck in a handshake with the mute peer.
    stop(&t);
    Ok(())
}

/// An inbox whose deliveries wait while the test holds `gate`: its connection's
/// reader stops reading, and the sender's socket fills.
#[derive(Default)]
struct Gated {
    gate: Mutex<()>,
    inner: Collect,
}

impl Inbox for Gated {
    fn deliver(&self, envelopes: Vec<Envelope>) {
        let _open = self.gate.lock().unwrap();
        self.inner.deliver(envelopes);
    }
}

/// Regression (issue 13, cause 3): every frame to a peer was written by the peer's
/// sender thread, a thread wake-up (and a futex) per Raft message on the write path.
/// Once the connection is up, nothing waits in the queue and the peer answered the
/// last frame, the thread that calls `send` writes the frame itself, without waiting;
/// a frame sent before the peer answered queues (and batches with what follows). A
/// frame the socket takes only in part (the peer stopped reading) leaves its rest to
/// the sender thread, what follows queues behind it, and every envelope still
/// arrives once, in order.
#[test]
fn a_connected_peer_gets_frames_from_the_thread_that_sends() -> TestResult {
    let (a, answers) = start(TcpConfig { batch_bytes_max: 32 << 20, ..config(61) })?;
    let gated = Arc::new(Gated::default());
    let b = TcpTransport::start(config(62), gated.clone())?;
    let inbox = &gated.inner;
    a.set_peer_addr(b.store(), b.local_addr())?;
    b.set_peer_addr(a.store(), a.local_addr())?;
    let answer = |i: u64| {
        b.send(vec![raft_msg(62, 61, i)]);
        wait_until(Duration::from_secs(10), || answers.len() == 1 + i as usize)
    };
    // The first envelopes wait in the queues while the sender threads connect.
    a.send(vec![raft_msg(61, 62, 0)]);
    assert!(wait_until(Duration::from_secs(10), || inbox.len() == 1), "{:?}", a.stats());
    assert!(answer(0), "{:?}", b.stats());
    // Counted once the sender thread let go of the envelope.
    assert!(wait_until(Duration::from_secs(10), || a.stats().envelopes_sent == 1));
    let before = a.stats();
    for i in 1..=ONE_BY_ONE {
        a.send(vec![raft_msg(61, 62, i)]);
        let arrived = wait_until(Duration::from_secs(10), || inbox.len() == 1 + i as usize);
        assert!(arrived && answer(i), "{:?} {:?}", a.stats(), b.stats());
    }
    let s = a.stats();
    assert_eq!(
        s.frames_sent_inline - before.frames_sent_inline,
        ONE_BY_ONE,
        "each frame written by the thread that sent it: {s:?}"
    );
    assert_eq!(s.envelopes_queued, before.envelopes_queued, "nothing queued: {s:?}");
    let mut sequence: Vec<Envelope> = (0..=ONE_BY_ONE).map(|i| raft_msg(61, 62, i)).collect();

    // Not answered yet: the second frame queues for the sender thread.
    sequence.extend([raft_msg(61, 62, 50), raft_msg(61, 62, 51)]);
    a.send(vec![raft_msg(61, 62, 50)]);
    a.send(vec![raft_msg(61, 62, 51)]);
    let s = a.stats();
    assert_eq!(s.frames_sent_inline - before.frames_sent_inline, ONE_BY_ONE + 1, "{s:?}");
    assert_eq!(s.envelopes_queued - before.envelopes_queued, 1, "{s:?}");
    assert!(wait_until(Duration::from_secs(10), || inbox.len() == sequence.len()));
    let sent = sequence.len() as u64;
    assert!(wait_until(Duration::from_secs(10), || a.stats().envelopes_sent == sent));
    assert!(answer(ONE_BY_ONE + 1), "{:?}", b.stats());

    // The peer stops reading; a frame of large chunks is written inline (the socket
    // takes part of it), the small messages after it queue; then the peer reads again.
    let closed_gate = gated.gate.lock().unwrap();
    let mut part: Vec<Envelope> = (0..BURST).map(|i| chunk(61, 62, i, BURST, 1 << 20)).collect();
    part.push(raft_msg(61, 62, 99));
    sequence.extend(part.iter().cloned());
    a.send(part);
    for i in 100..110 {
        sequence.push(raft_msg(61, 62, i));
        a.send(vec![raft_msg(61, 62, i)]);
    }
    let s = a.stats();
    drop(closed_gate);
    assert_eq!(s.frames_sent_inline - before.frames_sent_inline, ONE_BY_ONE + 2, "{s:?}");
    let total = sequence.len();
    assert!(wait_until(Duration::from_secs(30), || inbox.len() == total), "{:?}", a.stats());
    assert!(inbox.from(StoreId(61)) == sequence, "envelopes differ or are out of order");
    assert!(wait_until(Duration::from_secs(10), || a.stats().envelopes_sent == total as u64));
    let s = a.stats();
    assert_eq!(s.envelopes_dropped, 0, "{s:?}");
    stop(&a);
    stop(&b);
    Ok(())
}
