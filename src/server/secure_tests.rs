//! Sealed client links and client credentials: a node with a client secret serves
//! clients that prove it, refuses a wrong one, never lets its holder act as a store
//! (neither a store id on the client protocol nor a store link), refuses clients of
//! the other link mode, and closes a connection whose bytes were altered, replayed or
//! injected after the handshake, with a warning and nothing of it served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use regionkv_engine::StoreId;
use regionkv_raft::transport::frame::{FrameKind, FrameReader, FrameStream};
use regionkv_raft::transport::handshake::{
    ClusterId, Expect, Handshake, HandshakeError, HandshakeKey, Names, RejectReason,
};
use regionkv_raft::transport::seal::{LinkMode, LinkReader, Sealer};
use regionkv_raft::transport::wire;

use crate::proto::{self, Request, Response};
use crate::{Client, ClientOptions, Error, Node, NodeConfig};

const SECRET: &[u8] = b"the cluster secret of the sealed-link test";
const CLIENT_SECRET: &[u8] = b"the client secret of the sealed-link test";
const CLUSTER: ClusterId = ClusterId(6);

fn open_node(dir: &std::path::Path, insecure: bool) -> Node {
    let mut config =
        NodeConfig::new(StoreId(1), dir, "127.0.0.1:0".parse().unwrap(), CLUSTER, SECRET.to_vec());
    config.tick_interval = Duration::from_millis(10);
    config.client_secret = Some(CLIENT_SECRET.to_vec());
    config.insecure = insecure;
    Node::open(config.bootstrap()).unwrap()
}

fn refusal<T: std::fmt::Debug>(r: crate::Result<T>) -> RejectReason {
    match r {
        Err(Error::Refused { reason, .. }) => reason,
        other => panic!("not refused: {other:?}"),
    }
}

/// A sealed client connection as store `me` proving `secret`: the socket, the
/// reading side and the sealer.
fn sealed_client(
    addr: SocketAddr,
    secret: &[u8],
    me: StoreId,
) -> Result<(TcpStream, LinkReader<TcpStream>, Sealer), HandshakeError> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let key = proto::client_key(secret);
    let timeout = Duration::from_secs(5);
    let done = proto::handshake_client(&mut s, &key, CLUSTER, me, timeout, LinkMode::Sealed)?;
    let (_, opener, sealer) = done.split();
    let reader = LinkReader::new(s.try_clone().unwrap(), opener);
    Ok((s, reader, sealer.expect("a sealed link")))
}

fn status_request(sealer: &mut Sealer, id: u64) -> Vec<u8> {
    let frame =
        proto::encode_frame(FrameKind::Request, &proto::encode_request(id, &Request::Status));
    let mut out = Vec::new();
    sealer.seal(&frame.unwrap(), &mut out).unwrap();
    out
}

/// True once the node closed `s` (after any answer it sent first).
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn clients_prove_the_client_secret_and_cannot_act_as_stores() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path(), false);
    let addr = node.local_addr();
    // The client secret serves a client, over sealed links.
    let client = Client::connect(&[addr], CLUSTER, CLIENT_SECRET).unwrap();
    client.db().put("k", "v").unwrap();
    assert_eq!(client.db().get("k").unwrap().as_deref(), Some(&b"v"[..]));
    client.close();
    // A wrong secret is refused.
    assert_eq!(
        refusal(Client::connect(&[addr], CLUSTER, b"a wrong client secret, long enough")),
        RejectReason::BadProof
    );
    // The client secret does not let a client claim a store id (raw commands are
    // served to stores only).
    // (The node proves the cluster secret to a store: the claimant cannot check it.)
    let claimed = sealed_client(addr, CLIENT_SECRET, StoreId(2)).map(|_| ());
    assert!(
        matches!(claimed, Err(HandshakeError::Rejected { reason: RejectReason::BadProof, .. })),
        "{claimed:?}"
    );
    // Nor open a store link: the store transport's key comes from the cluster secret.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let key = HandshakeKey::derive(CLIENT_SECRET);
    let side = Handshake {
        reader: FrameReader {
            format: &wire::FRAMES,
            cancel: None,
            stall: Duration::from_secs(5),
            chunk_bytes: 1024,
        },
        key: &key,
        client_key: None,
        link: LinkMode::Sealed,
        cluster: CLUSTER,
        me: StoreId(2),
        timeout: Duration::from_secs(5),
        hello_extra: &[],
        names: Names { me: "the impostor", peer: "the node" },
        vet: None,
    };
    let linked = side.connect(&mut s, Expect::Store(StoreId(1))).map(|a| a.peer);
    assert!(
        matches!(linked, Err(HandshakeError::Rejected { reason: RejectReason::BadProof, .. })),
        "{linked:?}"
    );
    // A store (the cluster secret) is still served as one.
    assert!(sealed_client(addr, SECRET, StoreId(2)).is_ok());
    assert!(node.client_stats().handshake_failures >= 2);
    node.shutdown().unwrap();
}

#[test]
fn sealed_and_plaintext_sides_refuse_each_other() {
    for node_insecure in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path(), node_insecure);
        let options = ClientOptions::insecure(!node_insecure);
        let refused = Client::connect_with(&[node.local_addr()], CLUSTER, CLIENT_SECRET, &options);
        assert_eq!(refusal(refused), RejectReason::LinkMismatch, "node insecure {node_insecure}");
        let options = ClientOptions::insecure(node_insecure);
        let client =
            Client::connect_with(&[node.local_addr()], CLUSTER, CLIENT_SECRET, &options).unwrap();
        client.db().put("k", "v").unwrap();
        client.close();
        node.shutdown().unwrap();
    }
}

/// What an on-path attacker does to the bytes after the handshake.
#[derive(Clone, Copy, Debug)]
enum Attack {
    Flip,
    Replay,
    Inject,
}

#[test]
fn altered_replayed_or_injected_bytes_close_the_client_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path(), false);
    let addr = node.local_addr();
    for (n, attack) in [Attack::Flip, Attack::Replay, Attack::Inject].into_iter().enumerate() {
        let (mut s, reader, mut sealer) =
            sealed_client(addr, CLIENT_SECRET, proto::CLIENT_ID).unwrap();
        let mut frames = FrameStream::new(proto::reader(None, Duration::from_secs(10)), reader);
        // An honest request first: answered.
        let first = status_request(&mut sealer, 1);
        s.write_all(&first).unwrap();
        let (kind, payload) = frames.frame(proto::RESPONSE_BYTES_MAX).unwrap();
        assert_eq!(kind, FrameKind::Response);
        let (id, answer) = proto::decode_response(&payload).unwrap();
        assert!(id == 1 && matches!(answer, Ok(Response::Status(_))), "{answer:?}");
        let requests = node.client_stats().requests;
        let bytes = match attack {
            Attack::Flip => {
                let mut r = status_request(&mut sealer, 2);
                let at = r.len() - 5;
                r[at] ^= 0x10;
                r
            }
            Attack::Replay => first,
            Attack::Inject => {
                // A plaintext request frame, long enough to cover the record length
                // its magic reads as.
                let put = Request::Status;
                let mut raw = Vec::new();
                for id in 0..2_000 {
                    let payload = proto::encode_request(100 + id, &put);
                    raw.extend(proto::encode_frame(FrameKind::Request, &payload).unwrap());
                }
                raw
            }
        };
        s.write_all(&bytes).unwrap();
        assert!(closed(&mut s), "{attack:?}: the node closes the connection");
        let stats = node.client_stats();
        assert_eq!(stats.unauthenticated_records, n as u64 + 1, "{attack:?}: {stats:?}");
        assert_eq!(stats.requests, requests, "{attack:?}: nothing of it was served");
    }
    // The node serves on.
    let client = Client::connect(&[addr], CLUSTER, CLIENT_SECRET).unwrap();
    client.db().put("after", "attacks").unwrap();
    client.close();
    node.shutdown().unwrap();
}
