//! Bad input on a node's client port: a wrong secret, a frame of another version,
//! garbage, a malformed request, an oversized frame and a bad checksum each get a
//! clear error, and the node keeps serving with nothing lost. The nodes here run
//! plaintext links (`insecure`), so that raw frames reach the frame checks; sealed
//! links against tampering: `secure_tests.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use regionkv_engine::{Epoch, PeerId, RegionId, StoreId};
use regionkv_raft::directory::DirCmd;
use regionkv_raft::transport::frame::{Deadline, FrameKind};
use regionkv_raft::transport::handshake::{ClusterId, RejectReason};
use regionkv_raft::transport::seal::LinkMode;
use regionkv_raft::{AdminCmd, PeerChange, Query, QueryResult};

use crate::proto::{self, ErrorCode, Request, Response};
use crate::{Client, ClientOptions, Error, Node, NodeConfig};

const SECRET: &[u8] = b"a secret for the bad input test";
const CLUSTER: ClusterId = ClusterId(5);

fn connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let store = proto::handshake_client(
        &mut s,
        &proto::client_key(SECRET),
        CLUSTER,
        proto::CLIENT_ID,
        Duration::from_secs(5),
        LinkMode::Plain,
    )
    .unwrap();
    assert_eq!(store.peer, StoreId(1));
    s
}

/// The next response on `s`: its id and answer.
fn response(s: &mut TcpStream) -> (u64, Result<Response, proto::RemoteError>) {
    let reader = proto::reader(None, Duration::from_secs(10));
    let deadline = Deadline::after("a response", Duration::from_secs(10));
    let (kind, payload) = reader.frame(s, proto::RESPONSE_BYTES_MAX, Some(&deadline)).unwrap();
    assert_eq!(kind, FrameKind::Response);
    proto::decode_response(&payload).unwrap()
}

fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn status_works(s: &mut TcpStream, id: u64) {
    let frame =
        proto::encode_frame(FrameKind::Request, &proto::encode_request(id, &Request::Status))
            .unwrap();
    s.write_all(&frame).unwrap();
    let (got, answer) = response(s);
    assert_eq!(got, id);
    assert!(matches!(answer, Ok(Response::Status(_))), "{answer:?}");
}

fn open_node(dir: &std::path::Path) -> Node {
    let mut config =
        NodeConfig::new(StoreId(1), dir, "127.0.0.1:0".parse().unwrap(), CLUSTER, SECRET.to_vec());
    config.tick_interval = Duration::from_millis(10);
    config.insecure = true;
    Node::open(config.bootstrap()).unwrap()
}

/// Regression (issue 12, A7): a client that pipelines far more requests than
/// `IN_FLIGHT_MAX` and reads slowly lost answers. The node counted only answers
/// queued for its writer, so it read requests without bound; once its writer was
/// blocked on the slow client, the answers that found the writer's queue full were
/// dropped, and the client waited for them forever (a `Db` then retried writes
/// whose outcome it did not know). Now a request is in flight from its frame to
/// its answer on the socket, the reader stops at the bound, and the writer's queue
/// holds every answer that can be in flight.
#[test]
fn a_client_pipelining_past_the_bound_and_reading_slowly_gets_every_answer() {
    const REQUESTS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    // Large answers fill the socket's buffers long before the client reads.
    let big = Bytes::from(vec![7u8; 64 << 10]);
    node.db().put("big", big.clone()).unwrap();
    let mut s = connect(node.local_addr());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let locate = Request::Locate { key: b"big".to_vec() };
    s.write_all(
        &proto::encode_frame(FrameKind::Request, &proto::encode_request(0, &locate)).unwrap(),
    )
    .unwrap();
    let Ok(Response::Located(Some(record))) = response(&mut s).1 else { panic!("no region") };
    let get = Request::Read {
        region: record.region.id,
        epoch: record.region.epoch,
        query: Query::Get { key: Bytes::from_static(b"big"), read_ts: None },
    };
    let mut send = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for id in 1..=REQUESTS {
            let payload = proto::encode_request(id, &get);
            send.write_all(&proto::encode_frame(FrameKind::Request, &payload).unwrap()).unwrap();
        }
    });
    // Reading slowly: nothing for a while, then everything.
    std::thread::sleep(Duration::from_secs(1));
    let mut answered = std::collections::BTreeSet::new();
    let reader = proto::reader(None, Duration::from_secs(10));
    while answered.len() < REQUESTS as usize {
        let deadline = Deadline::after("a response", Duration::from_secs(30));
        let (_, payload) =
            reader.frame(&mut s, proto::RESPONSE_BYTES_MAX, Some(&deadline)).unwrap_or_else(|e| {
                panic!("{} of {REQUESTS} requests answered, then: {e}", answered.len())
            });
        let (id, answer) = proto::decode_response(&payload).unwrap();
        match answer {
            Ok(Response::Query(QueryResult::Value(Some(v)))) => assert_eq!(v, big),
            other => panic!("request {id} answered {other:?}"),
        }
        assert!(answered.insert(id), "request {id} answered twice");
    }
    sender.join().unwrap();
    assert_eq!(answered.first(), Some(&1));
    assert_eq!(answered.last(), Some(&REQUESTS));
    node.shutdown().unwrap();
}

/// A client that pipelines scans and reads none of the answers makes the node hold
/// at most `SCANS_IN_FLIGHT_MAX` pages for it: the reader stops reading at the
/// next scan. Before, it read on to `IN_FLIGHT_MAX` requests, each answered with up
/// to a page of the scan caps (about 1 GiB at 4 MiB pages); then every answer still
/// arrives, once.
#[test]
fn a_client_pipelining_scans_and_reading_none_holds_a_bounded_number_of_pages() {
    const SCANS: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    // Each answer is about 1 MiB: a few fill the socket's buffers.
    let mut batch = crate::WriteBatch::new();
    for i in 0..16 {
        batch.put(format!("s{i:02}"), vec![7u8; 64 << 10]);
    }
    node.db().write(batch).unwrap();
    let before = node.client_stats().requests;
    let mut s = connect(node.local_addr());
    let scan = Request::LocalScan { start: b"s".to_vec(), end: None, limit: usize::MAX };
    let mut send = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for id in 1..=SCANS {
            let payload = proto::encode_request(id, &scan);
            send.write_all(&proto::encode_frame(FrameKind::Request, &payload).unwrap()).unwrap();
        }
    });
    let read = || node.client_stats().requests - before;
    let cap = super::SCANS_IN_FLIGHT_MAX as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read() <= cap && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The scan after the cap is read and waits; give the reader time to go on if
    // it would. The socket's buffers take a few answers of about 1 MiB (each
    // written one frees a place): at most `slack` here.
    std::thread::sleep(Duration::from_millis(500));
    let slack = 8;
    let n = read();
    assert!(n <= cap + 1 + slack, "{n} scans read while {cap} answers were unwritten");
    let reader = proto::reader(None, Duration::from_secs(10));
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < SCANS as usize {
        let deadline = Deadline::after("a response", Duration::from_secs(30));
        let (_, payload) =
            reader.frame(&mut s, proto::RESPONSE_BYTES_MAX, Some(&deadline)).unwrap();
        let (id, answer) = proto::decode_response(&payload).unwrap();
        assert!(matches!(answer, Ok(Response::Query(QueryResult::Rows(_)))), "{answer:?}");
        assert!(answered.insert(id), "scan {id} answered twice");
    }
    sender.join().unwrap();
    node.shutdown().unwrap();
}

/// Regression (issue 12, A8): a scan's limit came from the client as a `u64` with
/// no cap: `limit = u64::MAX` read (and encoded) a whole region, or with a local
/// scan the whole engine, on a store's threads. Now each answer stops at the
/// store's caps (10,000 rows, 4 MiB) and says where to resume; `Db::scan` and
/// `Client::local_scan` ask page by page and still get every pair once, in order.
#[test]
fn a_scan_without_a_limit_gets_a_capped_page_and_clients_page_on() {
    let rows_max = regionkv_raft::StoreConfig::DEFAULT_SCAN_ROWS_MAX;
    let n = rows_max + 2_345;
    let key = |i: usize| Bytes::from(format!("s{i:06}"));
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    let db = node.db();
    for first in (0..n).step_by(2_000) {
        let mut batch = crate::WriteBatch::new();
        for i in first..n.min(first + 2_000) {
            batch.put(key(i), "v");
        }
        db.write(batch).unwrap();
    }
    let mut s = connect(node.local_addr());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut ask = |id: u64, req: &Request| {
        let payload = proto::encode_request(id, req);
        s.write_all(&proto::encode_frame(FrameKind::Request, &payload).unwrap()).unwrap();
        let (got, answer) = response(&mut s);
        assert_eq!(got, id);
        answer
    };
    let locate = Request::Locate { key: key(0).to_vec() };
    let Ok(Response::Located(Some(record))) = ask(1, &locate) else { panic!("no region") };
    // Raw requests with the largest limit the wire can carry (u64::MAX).
    let read = Request::Read {
        region: record.region.id,
        epoch: record.region.epoch,
        query: Query::Scan { start: Bytes::new(), end: None, limit: usize::MAX, read_ts: None },
    };
    let local = Request::LocalScan { start: Vec::new(), end: None, limit: usize::MAX };
    for (id, req) in [(2, &read), (3, &local)] {
        match ask(id, req) {
            Ok(Response::Query(QueryResult::Rows(page))) => {
                assert_eq!(page.rows.len(), rows_max, "{req:?}: one capped page");
                assert_eq!(page.resume, Some(key(rows_max)), "{req:?}: resumes after it");
            }
            other => panic!("{req:?} answered {other:?}"),
        }
    }
    // The clients page on: every pair once, in order.
    let all: Vec<Bytes> = (0..n).map(key).collect();
    let keys = |rows: Vec<(Bytes, Bytes)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let client =
        Client::connect_with(&[node.local_addr()], CLUSTER, SECRET, &ClientOptions::insecure(true))
            .unwrap();
    assert_eq!(keys(client.db().scan(.., usize::MAX).unwrap()), all);
    assert_eq!(keys(db.scan(.., usize::MAX).unwrap()), all);
    assert_eq!(keys(client.local_scan(StoreId(1), b"", None, usize::MAX).unwrap()), all);
    // A limit the cap does not reach is exact.
    assert_eq!(keys(client.db().scan(.., rows_max + 1).unwrap()), all[..=rows_max]);
    assert_eq!(keys(client.local_scan(StoreId(1), b"", None, 5).unwrap()), all[..5]);
    client.close();
    node.shutdown().unwrap();
}

/// Raw admin, directory and membership commands from a client: refused, typed, and
/// nothing is done (before, a client's huge id allocation reached the directory and
/// the store stopped); a node's own backend (a store id in the handshake) is served.
fn raw_commands_are_refused_from_clients(s: &mut TcpStream, addr: SocketAddr) {
    let raw = [
        Request::Directory { cmd: DirCmd::AllocIds { count: u64::MAX } },
        Request::Admin {
            region: RegionId(1),
            epoch: Epoch::INITIAL,
            cmd: AdminCmd::Split { split_keys: vec![b"k05".to_vec()], new_ids: vec![RegionId(1)] },
        },
        Request::ChangePeers {
            region: RegionId(1),
            epoch: Epoch::INITIAL,
            change: PeerChange::Remove(PeerId(1)),
        },
    ];
    for (i, req) in raw.iter().enumerate() {
        let id = 20 + i as u64;
        let frame = proto::encode_frame(FrameKind::Request, &proto::encode_request(id, req));
        s.write_all(&frame.unwrap()).unwrap();
        let (got, answer) = response(s);
        assert_eq!((got, answer.map_err(|e| e.code)), (id, Err(ErrorCode::NotAllowed)));
    }
    status_works(s, 10);
    // A node's own backend (a store id in the handshake) is served.
    let mut n = TcpStream::connect(addr).unwrap();
    n.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let key = proto::client_key(SECRET);
    let link = LinkMode::Plain;
    proto::handshake_client(&mut n, &key, CLUSTER, StoreId(2), Duration::from_secs(5), link)
        .unwrap();
    let alloc = Request::Directory { cmd: DirCmd::AllocIds { count: 1 } };
    let frame = proto::encode_frame(FrameKind::Request, &proto::encode_request(30, &alloc));
    n.write_all(&frame.unwrap()).unwrap();
    let (got, answer) = response(&mut n);
    assert!(got == 30 && matches!(answer, Ok(Response::Directory(_))), "{answer:?}");
}

#[test]
fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(
        StoreId(1),
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        CLUSTER,
        SECRET.to_vec(),
    );
    config.tick_interval = Duration::from_millis(10);
    config.insecure = true;
    let node = Node::open(config.bootstrap()).unwrap();
    let addr = node.local_addr();
    let db = node.db();
    for i in 0..20 {
        db.put(format!("k{i:02}"), "v").unwrap();
    }

    // A wrong secret: refused with the reason, both sides.
    let insecure = ClientOptions::insecure(true);
    match Client::connect_with(&[addr], CLUSTER, b"the wrong secret, long enough", &insecure) {
        Err(Error::Refused { reason: RejectReason::BadProof, .. }) => {}
        other => panic!("not refused: {other:?}"),
    }
    // A client of a newer protocol version: refused, told why.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut hello = proto::encode_frame(FrameKind::Hello, &[]).unwrap();
    hello[4] = proto::VERSION + 1;
    s.write_all(&hello).unwrap();
    let reader = proto::reader(None, Duration::from_secs(10));
    let (kind, payload) = reader.frame(&mut s, 1024, None).unwrap();
    assert_eq!(kind, FrameKind::Reject);
    assert_eq!(RejectReason::decode(&payload).unwrap(), RejectReason::UnsupportedVersion);
    // Garbage that starts like the client protocol.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s.write_all(b"rkvGARBAGE GARBAGE GARBAGE").unwrap();
    assert!(closed(&mut s), "garbage closes its connection");

    // A malformed request in an intact frame: an error for that request, and the
    // connection goes on.
    let mut s = connect(addr);
    s.write_all(
        &proto::encode_frame(FrameKind::Request, b"\x01\x00\xff\x00\x00\x00runs past its end")
            .unwrap(),
    )
    .unwrap();
    let (_, answer) = response(&mut s);
    let e = answer.unwrap_err();
    assert_eq!(e.code, ErrorCode::Malformed, "{e:?}");
    assert!(e.message.contains("malformed request"), "{}", e.message);
    status_works(&mut s, 7);
    // A request of a kind from the future: unsupported, and the connection goes on.
    let mut future = Vec::new();
    regionkv_engine::codec::put_u64(&mut future, 1, 8);
    regionkv_engine::codec::put_field(&mut future, 999, b"?");
    s.write_all(&proto::encode_frame(FrameKind::Request, &future).unwrap()).unwrap();
    let (id, answer) = response(&mut s);
    assert_eq!((id, answer.unwrap_err().code), (8, ErrorCode::UnsupportedRequest));
    status_works(&mut s, 9);

    raw_commands_are_refused_from_clients(&mut s, addr);

    // An oversized frame: refused before its payload is read, then closed.
    let mut header = proto::encode_frame(FrameKind::Request, &[]).unwrap();
    header[6..10].copy_from_slice(&(proto::REQUEST_BYTES_MAX + 1).to_le_bytes());
    s.write_all(&header).unwrap();
    let (id, answer) = response(&mut s);
    let e = answer.unwrap_err();
    assert_eq!((id, e.code), (0, ErrorCode::TooLarge), "{e:?}");
    assert!(e.message.contains("exceeds the bound"), "{}", e.message);
    assert!(closed(&mut s));

    // A bad checksum: an error, then closed.
    let mut s = connect(addr);
    let mut frame =
        proto::encode_frame(FrameKind::Request, &proto::encode_request(3, &Request::Status))
            .unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x40;
    s.write_all(&frame).unwrap();
    let (_, answer) = response(&mut s);
    assert_eq!(answer.unwrap_err().code, ErrorCode::Malformed);
    assert!(closed(&mut s));

    let stats = node.client_stats();
    assert!(stats.handshake_failures >= 3, "{stats:?}");
    assert!(stats.bad_frames >= 2, "{stats:?}");
    assert!(stats.malformed_requests >= 1, "{stats:?}");

    // The node still serves, and nothing was lost.
    let client =
        Client::connect_with(&[addr], CLUSTER, SECRET, &ClientOptions::insecure(true)).unwrap();
    let cdb = client.db();
    cdb.put("k99", "after").unwrap();
    let rows = cdb.scan(b"k".., 100).unwrap();
    assert_eq!(rows.len(), 21);
    client.close();
    node.shutdown().unwrap();
}

/// A socket that counts its writes and keeps the bytes.
#[derive(Default)]
struct CountingSocket {
    writes: usize,
    bytes: Vec<u8>,
}

impl Write for CountingSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Regression (issue 13, cause 3): the node's writer made one `write` system call per
/// response, however many responses were queued for it. It now writes every queued
/// answer with one call; each still arrives whole and in order.
#[test]
fn answers_queued_together_go_out_in_one_write() {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use super::{ANSWER_QUEUE, ToWriter, write_answers};

    let (link, _client) = loopback_link();
    let (tx, rx) = crossbeam_channel::bounded(ANSWER_QUEUE);
    for id in 1..=20 {
        link.in_flight.begin();
        tx.send(ToWriter::Answer((id, Ok(Response::Done), false))).unwrap();
    }
    drop(tx);
    let mut socket = CountingSocket::default();
    let cancel = regionkv_wal::CancellationToken::new();
    let (closed, writes) = (AtomicBool::new(true), AtomicU64::new(0));
    assert!(write_answers(&mut socket, &rx, &link, &closed, &cancel, &writes));
    assert_eq!(socket.writes, 1, "20 answers queued together, one write");
    assert_eq!(link.in_flight.count(), 0, "every answer written counts as answered");
    let reader = proto::reader(None, Duration::from_secs(1));
    let mut bytes = &socket.bytes[..];
    for id in 1..=20 {
        let (kind, payload) = reader.frame(&mut bytes, proto::RESPONSE_BYTES_MAX, None).unwrap();
        assert_eq!(kind, FrameKind::Response);
        assert_eq!(proto::decode_response(&payload).unwrap(), (id, Ok(Response::Done)));
    }
    assert!(bytes.is_empty());
}

/// A connection's writing side on a loopback connection, and the client's end.
fn loopback_link() -> (super::Link, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let (in_flight, turn) = (super::InFlight::default(), parking_lot::Mutex::default());
    let link = super::Link { stream, in_flight, turn };
    (link, client)
}

/// An answer the socket takes only in part (the client reads nothing, its buffers
/// fill) is not waited for on the thread that has it: its rest goes to the writer
/// thread, which sends it before the answers queued after it, each frame whole.
#[test]
fn an_inline_answer_the_socket_takes_in_part_is_finished_by_the_writer_first() {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use super::{ANSWER_QUEUE, ToWriter, write_answers};

    let (link, mut client) = loopback_link();
    let (tx, rx) = crossbeam_channel::bounded(ANSWER_QUEUE);
    // Larger than any loopback socket's buffers.
    let big = Bytes::from(vec![7u8; 32 << 20]);
    let value = |v: &Bytes| Ok(Response::Query(QueryResult::Value(Some(v.clone()))));
    link.in_flight.begin();
    // The only request in flight: written on this thread, in part, without waiting.
    link.answer(&tx, (1, value(&big), false));
    assert!(matches!(rx.try_recv(), Ok(ToWriter::Leftover)), "the rest is the writer's");
    assert!(!link.turn.lock().bytes.is_empty());
    assert_eq!(link.in_flight.count(), 1, "in flight until its last byte is written");
    link.in_flight.begin();
    link.in_flight.begin();
    // Two in flight: handed to the writer, behind the rest of the first.
    link.answer(&tx, (2, Ok(Response::Done), false));
    tx.send(ToWriter::Leftover).unwrap();
    link.answer(&tx, (3, Ok(Response::Done), false));
    drop(tx);
    let cancel = regionkv_wal::CancellationToken::new();
    let (closed, writes) = (AtomicBool::new(true), AtomicU64::new(0));
    let written = std::thread::scope(|scope| {
        let thread =
            scope.spawn(|| write_answers(&mut &link.stream, &rx, &link, &closed, &cancel, &writes));
        let reader = proto::reader(None, Duration::from_secs(10));
        let (_, payload) = reader.frame(&mut client, proto::RESPONSE_BYTES_MAX, None).unwrap();
        assert_eq!(proto::decode_response(&payload).unwrap(), (1, value(&big)));
        for id in [2, 3] {
            let (_, payload) = reader.frame(&mut client, proto::RESPONSE_BYTES_MAX, None).unwrap();
            assert_eq!(proto::decode_response(&payload).unwrap(), (id, Ok(Response::Done)));
        }
        thread.join().unwrap()
    });
    assert!(written);
    assert_eq!(link.in_flight.count(), 0);
}

/// Issue 13 (remaining hop a): every answer went from the thread that had it (the
/// store's poller, for a put) to the connection's writer thread, one wake-up and two
/// more system calls per answer, even when it was the only answer in flight and
/// nothing could be written with it. A client that waits for each answer now has it
/// written by the thread that has it. (Not every one: the thread that wrote the
/// previous answer may still hold the write turn when the next is ready, and the next
/// then goes to the writer rather than wait; before, all 40 did.)
#[test]
fn a_lone_answer_is_written_by_the_thread_that_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    let addr = node.local_addr();
    let client =
        Client::connect_with(&[addr], CLUSTER, SECRET, &ClientOptions::insecure(true)).unwrap();
    let db = client.db();
    db.put("warm", "up").unwrap();
    let before = node.client_stats();
    for i in 0..20 {
        db.put(format!("k{i}"), "v").unwrap();
        assert_eq!(db.get(format!("k{i}")).unwrap().as_deref(), Some(&b"v"[..]));
    }
    let after = node.client_stats();
    assert_eq!(after.requests - before.requests, 40, "one request per put and per get");
    let handed = after.writer_writes - before.writer_writes;
    assert!(handed <= 20, "{handed} of 40 lone answers handed to the writer thread");
    client.close();
    node.shutdown().unwrap();
}

/// With one request in flight, its answer is written by the thread that has it, and
/// nothing is queued for the writer; with another still waiting for its answer, the
/// answer goes to the writer (it may share a write with the next).
#[test]
fn an_answer_is_written_inline_only_when_no_other_is_awaited() {
    use super::{ANSWER_QUEUE, ToWriter};

    let (link, mut client) = loopback_link();
    let (tx, rx) = crossbeam_channel::bounded(ANSWER_QUEUE);
    link.in_flight.begin();
    link.answer(&tx, (1, Ok(Response::Done), false));
    assert!(rx.try_recv().is_err(), "nothing for the writer");
    assert_eq!(link.in_flight.count(), 0, "written: answered");
    let reader = proto::reader(None, Duration::from_secs(10));
    let (_, payload) = reader.frame(&mut client, proto::RESPONSE_BYTES_MAX, None).unwrap();
    assert_eq!(proto::decode_response(&payload).unwrap(), (1, Ok(Response::Done)));
    link.in_flight.begin();
    link.in_flight.begin();
    link.answer(&tx, (2, Ok(Response::Done), false));
    assert!(matches!(rx.try_recv(), Ok(ToWriter::Answer((2, ..)))), "another is awaited");
    link.answer(&tx, (3, Ok(Response::Done), false));
    assert!(rx.try_recv().is_err(), "the last one awaited: written inline");
    assert_eq!(link.in_flight.count(), 1, "answer 2 is the writer's to write");
}

/// Regression (issue 13, cause 3): a client's answers were all read by the
/// connection's reader thread and handed to the waiting caller, a thread wake-up on
/// top of the caller's own per request. A caller alone in waiting on its connection
/// now reads its own answer; callers at once still get every answer (read by one of
/// them or by the reader thread).
#[test]
fn a_caller_alone_in_waiting_reads_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    let client =
        Client::connect_with(&[node.local_addr()], CLUSTER, SECRET, &ClientOptions::insecure(true))
            .unwrap();
    let db = client.db();
    db.put("warm", "up").unwrap();
    let before = client.answers_handed_over();
    for i in 0..20 {
        db.put(format!("k{i}"), "v").unwrap();
        assert_eq!(db.get(format!("k{i}")).unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(client.answers_handed_over() - before, 0, "40 answers, none handed over");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let key = format!("t{t}-{i}");
                    db.put(&key, "w").unwrap();
                    assert_eq!(db.get(&key).unwrap().as_deref(), Some(&b"w"[..]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    client.close();
    node.shutdown().unwrap();
}
