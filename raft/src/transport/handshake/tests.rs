//! Tests of the handshake.
use std::net::TcpListener;

use super::*;
use crate::transport::frame::FrameFormat;

const FORMAT: FrameFormat = FrameFormat {
    protocol: "the test protocol",
    magic: *b"HSHK",
    version: 1,
    kinds: &[
        FrameKind::Hello,
        FrameKind::Proof,
        FrameKind::Accept,
        FrameKind::Reject,
        FrameKind::Request,
    ],
};
const NAMES: Names = Names { me: "this side", peer: "the peer" };

fn side(key: &HandshakeKey, cluster: u64, me: u64) -> Handshake<'_> {
    Handshake {
        reader: FrameReader {
            format: &FORMAT,
            cancel: None,
            stall: Duration::from_secs(5),
            chunk_bytes: 1024,
        },
        key,
        client_key: None,
        link: LinkMode::Sealed,
        cluster: ClusterId(cluster),
        me: StoreId(me),
        timeout: Duration::from_secs(5),
        hello_extra: &[],
        names: NAMES,
        vet: None,
    }
}

/// Runs a handshake over loopback: the results of the connector and the acceptor.
fn run(
    connector: &Handshake<'_>,
    expect_acceptor: Expect,
    acceptor: &Handshake<'_>,
    expect_connector: Expect,
) -> (Result<StoreId, HandshakeError>, Result<StoreId, HandshakeError>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::scope(|s| {
        let accepted = s.spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            acceptor.accept(&mut stream, expect_connector).map(|a| a.peer)
        });
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let connected = connector.connect(&mut stream, expect_acceptor).map(|a| a.peer);
        drop(stream);
        (connected, accepted.join().unwrap())
    })
}

#[test]
fn handshake_messages_round_trip_and_proofs_bind_everything() {
    let hello = Hello {
        cluster: ClusterId(42),
        store: StoreId(3),
        nonce: [7; NONCE_BYTES],
        link: Some(LinkMode::Sealed),
    };
    assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
    let older = Hello { link: None, ..hello };
    assert_eq!(Hello::decode(&older.encode()), Ok(older), "absent: from an older binary");
    for r in [
        RejectReason::ClusterMismatch,
        RejectReason::BadProof,
        RejectReason::Busy,
        RejectReason::Replaced,
    ] {
        assert_eq!(RejectReason::decode(&r.encode()), Ok(r));
    }
    assert_eq!(RejectReason::decode(&[]), Ok(RejectReason::Unspecified));
    let mut future = Vec::new();
    codec::put_u64(&mut future, R_REASON, 999);
    assert_eq!(RejectReason::decode(&future), Ok(RejectReason::Unspecified));

    let key = HandshakeKey::derive(b"cluster secret, sixteen bytes at least");
    let t = Transcript {
        cluster: ClusterId(42),
        connector: StoreId(1),
        acceptor: StoreId(2),
        connector_nonce: [1; NONCE_BYTES],
        acceptor_nonce: [2; NONCE_BYTES],
    };
    let proof = Proof::make(&key, Role::Connector, &t);
    assert_eq!(Proof::decode(&proof.encode()), Ok(proof));
    assert!(proof.verify(&key, Role::Connector, &t));
    assert!(!proof.verify(&key, Role::Acceptor, &t), "a proof is bound to its direction");
    let other = HandshakeKey::derive(b"another secret of sixteen bytes+");
    assert!(!proof.verify(&other, Role::Connector, &t), "and to the secret");
    let labelled = HandshakeKey::derive_labelled(
        b"another protocol\0",
        b"cluster secret, sixteen bytes at least",
    );
    assert!(!proof.verify(&labelled, Role::Connector, &t), "and to the protocol's label");
    let variants = [
        Transcript { cluster: ClusterId(43), ..t },
        Transcript { connector: StoreId(9), ..t },
        Transcript { acceptor: StoreId(9), ..t },
        Transcript { connector_nonce: [9; NONCE_BYTES], ..t },
        Transcript { acceptor_nonce: [9; NONCE_BYTES], ..t },
    ];
    for v in variants {
        assert!(!proof.verify(&key, Role::Connector, &v), "and to the transcript: {v:?}");
    }
}

#[test]
fn both_halves_agree_and_refuse_with_a_reason() {
    let key = HandshakeKey::derive_labelled(b"test\0", b"a secret of sixteen bytes");
    let (c, a) = run(&side(&key, 1, 0), Expect::Any, &side(&key, 1, 7), Expect::Store(StoreId(0)));
    assert_eq!((c.unwrap(), a.unwrap()), (StoreId(7), StoreId(0)));

    // Another protocol's key for the same secret: the connector refuses the proof.
    let store_key = HandshakeKey::derive(b"a secret of sixteen bytes");
    let (c, a) = run(&side(&key, 1, 0), Expect::Any, &side(&store_key, 1, 7), Expect::Any);
    assert!(
        matches!(c, Err(HandshakeError::Rejected { reason: RejectReason::BadProof, .. })),
        "{c:?}"
    );
    assert!(matches!(a, Err(HandshakeError::RefusedByPeer(RejectReason::BadProof))), "{a:?}");

    // Another cluster: the acceptor refuses.
    let (c, a) = run(&side(&key, 2, 3), Expect::Any, &side(&key, 1, 7), Expect::NotMe);
    assert!(
        matches!(c, Err(HandshakeError::RefusedByPeer(RejectReason::ClusterMismatch))),
        "{c:?}"
    );
    assert!(matches!(a, Err(HandshakeError::Rejected { .. })), "{a:?}");

    // Our own id, and a store we did not dial.
    let (_, a) = run(&side(&key, 1, 7), Expect::Any, &side(&key, 1, 7), Expect::NotMe);
    assert!(
        matches!(&a, Err(HandshakeError::Rejected { reason: RejectReason::UnexpectedStore, detail }) if detail.contains("own id")),
        "{a:?}"
    );
    let (c, _) =
        run(&side(&key, 1, 3), Expect::Store(StoreId(8)), &side(&key, 1, 7), Expect::NotMe);
    assert!(
        matches!(&c, Err(HandshakeError::Rejected { reason: RejectReason::UnexpectedStore, detail }) if detail.contains("dialed store 8")),
        "{c:?}"
    );
}

/// The store transport's own HELLO field travels both ways, and each side vets the
/// other's only once it proved the secret: a refusal there reaches the peer.
#[test]
fn both_sides_vet_the_other_s_own_fields_after_the_proof() {
    let key = HandshakeKey::derive(b"a secret of sixteen bytes");
    let identity = |i, floor: Option<u64>| StoreIdentity {
        incarnation: Incarnation(i),
        peer_floor: floor.map(PeerId),
    };
    let three = identity_fields(&identity(3, Some(1003)));
    let four = identity_fields(&identity(4, None));
    let want = |store: u64, inc: u64| {
        move |peer: StoreId, hello: &[u8]| match identity_of(hello) {
            Ok(Some(id)) if peer == StoreId(store) && id.incarnation == Incarnation(inc) => Ok(()),
            other => Err((RejectReason::Replaced, format!("store {peer}: {other:?}"))),
        }
    };
    let (vet_c, vet_a) = (want(7, 4), want(3, 3));
    let connector = Handshake { hello_extra: &three, vet: Some(&vet_c), ..side(&key, 1, 3) };
    let acceptor = Handshake { hello_extra: &four, vet: Some(&vet_a), ..side(&key, 1, 7) };
    let (c, a) = run(&connector, Expect::Store(StoreId(7)), &acceptor, Expect::NotMe);
    assert_eq!((c.unwrap(), a.unwrap()), (StoreId(7), StoreId(3)));

    // The acceptor knew store 3 with another incarnation: it refuses, and says why.
    let vet_a = want(3, 99);
    let acceptor = Handshake { hello_extra: &four, vet: Some(&vet_a), ..side(&key, 1, 7) };
    let (c, a) = run(&connector, Expect::Store(StoreId(7)), &acceptor, Expect::NotMe);
    assert!(matches!(c, Err(HandshakeError::RefusedByPeer(RejectReason::Replaced))), "{c:?}");
    assert!(
        matches!(a, Err(HandshakeError::Rejected { reason: RejectReason::Replaced, .. })),
        "{a:?}"
    );
    // The connector knew store 7 with another incarnation: it refuses before its
    // proof, and the acceptor hears why.
    let vet_c = want(7, 99);
    let connector = Handshake { hello_extra: &three, vet: Some(&vet_c), ..side(&key, 1, 3) };
    let acceptor = Handshake { hello_extra: &four, ..side(&key, 1, 7) };
    let (c, a) = run(&connector, Expect::Store(StoreId(7)), &acceptor, Expect::NotMe);
    assert!(
        matches!(c, Err(HandshakeError::Rejected { reason: RejectReason::Replaced, .. })),
        "{c:?}"
    );
    assert!(matches!(a, Err(HandshakeError::RefusedByPeer(RejectReason::Replaced))), "{a:?}");
    // No vet is called for a peer that failed its proof.
    let other = HandshakeKey::derive(b"another secret of sixteen bytes");
    let never = |_: StoreId, _: &[u8]| -> Result<(), (RejectReason, String)> {
        panic!("vetted a peer that did not prove the secret")
    };
    let impostor = Handshake { hello_extra: &three, ..side(&other, 1, 3) };
    let acceptor = Handshake { vet: Some(&never), ..side(&key, 1, 7) };
    let (_, a) = run(&impostor, Expect::Store(StoreId(7)), &acceptor, Expect::NotMe);
    assert!(matches!(a, Err(HandshakeError::RefusedByPeer(RejectReason::BadProof))), "{a:?}");
    assert_eq!(identity_of(&[]).unwrap(), None, "absent is unknown");
    assert_eq!(identity_of(&three).unwrap(), Some(identity(3, Some(1003))));
    assert_eq!(identity_of(&four).unwrap(), Some(identity(4, None)));
}
