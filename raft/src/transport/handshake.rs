//! The handshake that opens every connection of both TCP protocols (the store
//! transport and the facade's client protocol): each side proves that it knows the
//! cluster secret, without sending it.
//!
//! C dials, A accepts; every message is one frame ([`super::frame`]) of the
//! connection's protocol:
//!
//! ```text
//!  C -> A  HELLO  { cluster id, C's store id, nonce_c, [protocol's own fields] }
//!  A       checks the cluster id (else REJECT ClusterMismatch) and the store id
//!  A -> C  HELLO  { cluster id, A's store id, nonce_a, [protocol's own fields] }
//!          PROOF  { mac(key, "acceptor", version, cluster, C, A, nonce_c, nonce_a) }
//!  C       checks the cluster id, the store id it expects, and A's proof
//!          (else REJECT with the reason), then vets A's own fields
//!  C -> A  PROOF  { mac(key, "connector", ...same transcript...) }
//!  A       checks C's proof (else REJECT BadProof), then vets C's own fields
//!  A -> C  ACCEPT
//! ```
//!
//! A protocol's own fields are vetted only once the peer proved the secret
//! ([`Handshake::vet`]): the store transport refuses there a store whose incarnation
//! changed (REJECT `Replaced`), and records the incarnation of one it accepts.
//!
//! `key` is derived from the cluster secret and a label naming the protocol
//! ([`HandshakeKey::derive_labelled`]), so a proof made for one protocol never verifies
//! for the other. MACs are keyed BLAKE3 and compared in constant time. Fresh nonces on
//! both sides make every proof single-use, and the role label keeps a side from
//! reflecting the other's proof. The handshake has a deadline and its frames a small
//! size bound ([`HANDSHAKE_FRAME_BYTES_MAX`]), so a silent or hostile peer cannot hold
//! a thread or memory.
//!
//! Payloads are TLV records of [`regionkv_engine::codec`]; a reader skips tags it does
//! not know (they come from a newer writer):
//!
//! ```text
//!  HELLO   1 cluster id u64, 2 store id u64, 3 nonce (32 bytes);
//!          a protocol's own fields from 4 on: the client protocol's client sends
//!          4 its highest protocol version; the store transport's stores send
//!          5 incarnation u64, 6 peer floor u64 (both optional: absent from older
//!          stores, so unknown; the floor only from a store that joined a cluster)
//!  PROOF   1 mac (32 bytes): keyed BLAKE3 of the transcript, see `Proof`
//!  ACCEPT  (no fields)
//!  REJECT  1 reason u64 (RejectReason code; 0 = unspecified)
//! ```

use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use regionkv_engine::codec::{self, DecodeError, TlvRecord, UnknownTags};
use regionkv_engine::{Incarnation, PeerId, StoreId};

use super::frame::{Deadline, FrameError, FrameKind, FrameReader, WireError};

/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a handshake proof (a keyed BLAKE3 hash).
pub const MAC_BYTES: usize = 32;
/// The largest handshake payload a reader accepts, far below any other bound: an
/// unauthenticated peer cannot make us buffer more than this.
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 1024;
/// The handshake's version, covered by every proof.
pub const HANDSHAKE_VERSION: u8 = 1;

/// The context string of the key derivation (BLAKE3 `derive_key`).
const KEY_CONTEXT: &str = "regionkv tcp transport v1 handshake key";

// HELLO fields.
const H_CLUSTER: u16 = 1;
const H_STORE: u16 = 2;
const H_NONCE: u16 = 3;
/// HELLO fields of the store transport: the sending store's incarnation and peer floor.
const H_INCARNATION: u16 = 5;
const H_PEER_FLOOR: u16 = 6;
// PROOF fields.
const P_MAC: u16 = 1;
// REJECT fields.
const R_REASON: u16 = 1;

/// The id of a cluster: stores and clients of different clusters refuse each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A handshake nonce: fresh random bytes per connection and side.
pub type Nonce = [u8; NONCE_BYTES];

/// A fresh nonce from the operating system's randomness.
pub fn fresh_nonce() -> Result<Nonce, HandshakeError> {
    let mut nonce = [0; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| HandshakeError::Random(e.to_string()))?;
    Ok(nonce)
}

/// The first handshake message of each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The sending store (0 for a client).
    pub store: StoreId,
    /// The sender's fresh nonce.
    pub nonce: Nonce,
}

impl Hello {
    /// The HELLO payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        codec::put_u64(&mut out, H_CLUSTER, self.cluster.0);
        codec::put_u64(&mut out, H_STORE, self.store.0);
        codec::put_field(&mut out, H_NONCE, &self.nonce);
        out
    }

    /// Decodes a HELLO payload; every version-1 field is required.
    pub fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let bad = WireError::malformed("hello");
        let rec = TlvRecord::parse(payload, &[H_CLUSTER, H_STORE, H_NONCE], UnknownTags::Skip)
            .map_err(&bad)?;
        let cluster = rec.required(H_CLUSTER, "cluster id missing").and_then(|f| f.as_u64());
        let store = rec.required(H_STORE, "store id missing").and_then(|f| f.as_u64());
        let nonce = rec.required(H_NONCE, "nonce missing").and_then(|f| {
            Nonce::try_from(f.value)
                .map_err(|_| DecodeError::new(f.offset, "nonce is not 32 bytes"))
        });
        Ok(Hello {
            cluster: ClusterId(cluster.map_err(&bad)?),
            store: StoreId(store.map_err(&bad)?),
            nonce: nonce.map_err(&bad)?,
        })
    }
}

/// What a store says of itself in its HELLO (the store transport's own fields; see
/// `crate::identity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreIdentity {
    /// This life of the store's disk.
    pub incarnation: Incarnation,
    /// Every peer of the store has a greater id (a store that joined a running
    /// cluster); `None` for a store that bootstrapped its cluster.
    pub peer_floor: Option<PeerId>,
}

/// The store transport's own HELLO fields for a store of this identity.
pub fn identity_fields(identity: &StoreIdentity) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * (codec::FIELD_HEADER_LEN + 8));
    codec::put_u64(&mut out, H_INCARNATION, identity.incarnation.0);
    if let Some(floor) = identity.peer_floor {
        codec::put_u64(&mut out, H_PEER_FLOOR, floor.0);
    }
    out
}

/// The identity a store's HELLO payload carries: `Ok(None)` if it carries no
/// incarnation (a store from before incarnations: unknown), an error if a field is
/// malformed.
pub fn identity_of(hello: &[u8]) -> Result<Option<StoreIdentity>, WireError> {
    let bad = WireError::malformed("hello");
    let tags = [H_INCARNATION, H_PEER_FLOOR];
    let rec = TlvRecord::parse(hello, &tags, UnknownTags::Skip).map_err(&bad)?;
    let Some(incarnation) = rec.optional(H_INCARNATION).map_err(&bad)? else { return Ok(None) };
    let floor = rec.optional(H_PEER_FLOOR).map_err(&bad)?;
    Ok(Some(StoreIdentity {
        incarnation: Incarnation(incarnation.as_u64().map_err(&bad)?),
        peer_floor: floor.map(|f| f.as_u64().map(PeerId)).transpose().map_err(&bad)?,
    }))
}

/// Which side of a connection a proof comes from; part of what the MAC covers, so a
/// proof made by one side is never accepted as the other side's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed.
    Connector,
    /// The side that accepted.
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Connector => b"regionkv handshake: connector proof",
            Role::Acceptor => b"regionkv handshake: acceptor proof",
        }
    }
}

/// Everything a handshake proof covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The cluster both sides claimed.
    pub cluster: ClusterId,
    /// The store that dialed.
    pub connector: StoreId,
    /// The store that accepted.
    pub acceptor: StoreId,
    /// The connector's nonce.
    pub connector_nonce: Nonce,
    /// The acceptor's nonce.
    pub acceptor_nonce: Nonce,
}

/// The key that proofs are made with, derived from the cluster secret (which never
/// leaves the process). Its `Debug` does not show it.
#[derive(Clone)]
pub struct HandshakeKey([u8; 32]);

impl fmt::Debug for HandshakeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandshakeKey(..)")
    }
}

impl HandshakeKey {
    /// The store transport's key for a cluster secret (the empty label).
    pub fn derive(secret: &[u8]) -> HandshakeKey {
        HandshakeKey::derive_labelled(b"", secret)
    }

    /// The key for a cluster secret of the protocol that `label` names: for the same
    /// secret, keys of different labels differ, so a proof made on a connection of one
    /// protocol never verifies on a connection of another.
    pub fn derive_labelled(label: &[u8], secret: &[u8]) -> HandshakeKey {
        let mut material = Vec::with_capacity(label.len() + secret.len());
        material.extend_from_slice(label);
        material.extend_from_slice(secret);
        HandshakeKey(blake3::derive_key(KEY_CONTEXT, &material))
    }
}

/// A handshake proof: keyed BLAKE3 over the role's label (length-prefixed), the
/// handshake version and the transcript, each integer little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The MAC; compare with [`Proof::verify`], which takes constant time.
    pub mac: [u8; MAC_BYTES],
}

impl Proof {
    /// The proof `role` sends for `transcript`.
    pub fn make(key: &HandshakeKey, role: Role, transcript: &Transcript) -> Proof {
        let label = role.label();
        let mut h = blake3::Hasher::new_keyed(&key.0);
        // Labels are short constants, so their length fits a byte.
        h.update(&[label.len() as u8]);
        h.update(label);
        h.update(&[HANDSHAKE_VERSION]);
        h.update(&transcript.cluster.0.to_le_bytes());
        h.update(&transcript.connector.0.to_le_bytes());
        h.update(&transcript.acceptor.0.to_le_bytes());
        h.update(&transcript.connector_nonce);
        h.update(&transcript.acceptor_nonce);
        Proof { mac: *h.finalize().as_bytes() }
    }

    /// True if this is the proof `role` must send for `transcript` under `key`. The
    /// comparison takes the same time wherever the MACs differ.
    pub fn verify(&self, key: &HandshakeKey, role: Role, transcript: &Transcript) -> bool {
        let expected = blake3::Hash::from(Proof::make(key, role, transcript).mac);
        // `blake3::Hash`'s equality is constant-time.
        expected == blake3::Hash::from(self.mac)
    }

    /// The PROOF payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAC_BYTES + codec::FIELD_HEADER_LEN);
        codec::put_field(&mut out, P_MAC, &self.mac);
        out
    }

    /// Decodes a PROOF payload.
    pub fn decode(payload: &[u8]) -> Result<Proof, WireError> {
        let bad = WireError::malformed("proof");
        let rec = TlvRecord::parse(payload, &[P_MAC], UnknownTags::Skip).map_err(&bad)?;
        let mac = rec.required(P_MAC, "mac missing").and_then(|f| {
            <[u8; MAC_BYTES]>::try_from(f.value)
                .map_err(|_| DecodeError::new(f.offset, "mac is not 32 bytes"))
        });
        Ok(Proof { mac: mac.map_err(&bad)? })
    }
}

/// Why a handshake was refused. Code 0 is reserved: a code this binary does not know
/// (from a newer peer) decodes as [`RejectReason::Unspecified`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// No reason given, or one this binary does not know.
    Unspecified,
    /// The peers belong to different clusters.
    ClusterMismatch,
    /// A proof of the cluster secret was wrong: the secrets differ.
    BadProof,
    /// The protocol version is not one the refusing side speaks.
    UnsupportedVersion,
    /// The store id is not the expected one (a stale address, or our own id).
    UnexpectedStore,
    /// The bytes did not follow the handshake protocol.
    ProtocolViolation,
    /// The refusing side has too many connections.
    Busy,
    /// The peer knew this store id with another incarnation: the store lost its disk
    /// (it was wiped or replaced) and is still a member of regions there. Remove the
    /// store and add it back (`regionkv client store remove N`, `store add N ADDR`).
    Replaced,
}

impl RejectReason {
    /// The reason's code on the wire.
    pub fn code(self) -> u64 {
        match self {
            RejectReason::Unspecified => 0,
            RejectReason::ClusterMismatch => 1,
            RejectReason::BadProof => 2,
            RejectReason::UnsupportedVersion => 3,
            RejectReason::UnexpectedStore => 4,
            RejectReason::ProtocolViolation => 5,
            RejectReason::Busy => 6,
            RejectReason::Replaced => 7,
        }
    }

    /// The reason with this code; unknown codes are `Unspecified`.
    pub fn from_code(code: u64) -> RejectReason {
        match code {
            1 => RejectReason::ClusterMismatch,
            2 => RejectReason::BadProof,
            3 => RejectReason::UnsupportedVersion,
            4 => RejectReason::UnexpectedStore,
            5 => RejectReason::ProtocolViolation,
            6 => RejectReason::Busy,
            7 => RejectReason::Replaced,
            _ => RejectReason::Unspecified,
        }
    }

    /// The REJECT payload.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        codec::put_u64(&mut out, R_REASON, self.code());
        out
    }

    /// Decodes a REJECT payload; a missing reason is `Unspecified`.
    pub fn decode(payload: &[u8]) -> Result<RejectReason, WireError> {
        let bad = WireError::malformed("reject");
        let rec = TlvRecord::parse(payload, &[R_REASON], UnknownTags::Skip).map_err(&bad)?;
        match rec.optional(R_REASON).map_err(&bad)? {
            Some(f) => Ok(RejectReason::from_code(f.as_u64().map_err(&bad)?)),
            None => Ok(RejectReason::Unspecified),
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Unspecified => "unspecified",
            RejectReason::ClusterMismatch => "cluster id mismatch",
            RejectReason::BadProof => "bad proof of the cluster secret (the secrets differ)",
            RejectReason::UnsupportedVersion => "unsupported wire version",
            RejectReason::UnexpectedStore => "unexpected store id",
            RejectReason::ProtocolViolation => "handshake protocol violation",
            RejectReason::Busy => "too many connections",
            RejectReason::Replaced => {
                "the store was replaced (its data dir is not the one its peers knew): remove \
                 it and add it back"
            }
        })
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Reading or writing a frame failed: the connection closed, timed out or broke,
    /// the bytes failed a check, or the reader was cancelled.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// We refused the peer (and told it why, if we could).
    #[error("refused the peer: {reason} ({detail})")]
    Rejected {
        /// Why, as sent to the peer.
        reason: RejectReason,
        /// The particulars, for our log only.
        detail: String,
    },
    /// The peer refused us.
    #[error("the peer refused the handshake: {0}")]
    RefusedByPeer(RejectReason),
    /// The operating system gave no randomness for a nonce.
    #[error("no randomness for a handshake nonce: {0}")]
    Random(String),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> HandshakeError {
        HandshakeError::Frame(FrameError::Io(e))
    }
}

impl From<WireError> for HandshakeError {
    fn from(e: WireError) -> HandshakeError {
        HandshakeError::Frame(FrameError::Wire(e))
    }
}

/// How a side names itself and its peer in the details of a refusal (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names {
    /// This side, as in "this store".
    pub me: &'static str,
    /// The other side, as in "the peer".
    pub peer: &'static str,
}

/// Which store id a side accepts from its peer's HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this store (the store we dialed; store 0 for a client).
    Store(StoreId),
    /// Any store but this side's own.
    NotMe,
    /// Any store (a client accepts whichever node answers).
    Any,
}

/// One side of a handshake: who it is, and how it reads.
#[derive(Clone, Copy)]
pub struct Handshake<'a> {
    /// Reads the peer's frames (the protocol's format, cancellation, stall bound).
    pub reader: FrameReader<'a>,
    /// The protocol's key for the cluster secret.
    pub key: &'a HandshakeKey,
    /// This side's cluster.
    pub cluster: ClusterId,
    /// This side's store id (0 for a client).
    pub me: StoreId,
    /// The whole handshake must finish within this.
    pub timeout: Duration,
    /// TLV fields this side appends to its HELLO (the protocol's own; a peer skips
    /// tags it does not know).
    pub hello_extra: &'a [u8],
    /// How refusals name the two sides.
    pub names: Names,
    /// Vets the peer once it proved the secret: called with its store id and its
    /// whole HELLO payload (to read the protocol's own fields); an error refuses it
    /// with that reason (sent to the peer) and detail (for the log).
    pub vet: Option<&'a Vet>,
}

impl fmt::Debug for Handshake<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("reader", &self.reader)
            .field("key", &self.key)
            .field("cluster", &self.cluster)
            .field("me", &self.me)
            .field("timeout", &self.timeout)
            .field("hello_extra", &self.hello_extra)
            .field("names", &self.names)
            .field("vet", &self.vet.is_some())
            .finish()
    }
}

/// A protocol's check of an authenticated peer's HELLO; see [`Handshake::vet`].
pub type Vet = dyn Fn(StoreId, &[u8]) -> Result<(), (RejectReason, String)> + Send + Sync;

impl Handshake<'_> {
    /// The dialing side; returns the store that answered, as `expect` allows.
    pub fn connect(
        &self,
        stream: &mut TcpStream,
        expect: Expect,
    ) -> Result<StoreId, HandshakeError> {
        let deadline = Deadline::after("the handshake", self.timeout);
        let nonce = fresh_nonce()?;
        let mut hello = Hello { cluster: self.cluster, store: self.me, nonce }.encode();
        hello.extend_from_slice(self.hello_extra);
        self.write(stream, FrameKind::Hello, &hello)?;

        let their_hello = self.expect_frame(stream, FrameKind::Hello, &deadline)?;
        let theirs = Hello::decode(&their_hello)?;
        self.check_hello(stream, &theirs, expect, Role::Connector)?;
        let transcript = Transcript {
            cluster: self.cluster,
            connector: self.me,
            acceptor: theirs.store,
            connector_nonce: nonce,
            acceptor_nonce: theirs.nonce,
        };
        let proof = Proof::decode(&self.expect_frame(stream, FrameKind::Proof, &deadline)?)?;
        self.check_proof(stream, &proof, Role::Acceptor, &transcript)?;
        self.run_vet(stream, theirs.store, &their_hello)?;
        let ours = Proof::make(self.key, Role::Connector, &transcript);
        self.write(stream, FrameKind::Proof, &ours.encode())?;
        self.expect_frame(stream, FrameKind::Accept, &deadline)?;
        Ok(theirs.store)
    }

    /// The accepting side; returns the authenticated peer store.
    pub fn accept(
        &self,
        stream: &mut TcpStream,
        expect: Expect,
    ) -> Result<StoreId, HandshakeError> {
        let deadline = Deadline::after("the handshake", self.timeout);
        let payload = match self.reader.frame(stream, HANDSHAKE_FRAME_BYTES_MAX, Some(&deadline)) {
            Ok((FrameKind::Hello, payload)) => payload,
            Ok((kind, _)) => {
                return Err(self.refuse(
                    stream,
                    RejectReason::ProtocolViolation,
                    format!("expected Hello to open the handshake, got {kind:?}"),
                ));
            }
            Err(FrameError::Wire(e @ WireError::UnsupportedVersion { .. })) => {
                return Err(self.refuse(stream, RejectReason::UnsupportedVersion, e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let theirs = Hello::decode(&payload)?;
        self.check_hello(stream, &theirs, expect, Role::Acceptor)?;
        let nonce = fresh_nonce()?;
        let transcript = Transcript {
            cluster: self.cluster,
            connector: theirs.store,
            acceptor: self.me,
            connector_nonce: theirs.nonce,
            acceptor_nonce: nonce,
        };
        let format = self.reader.format;
        let mut hello = Hello { cluster: self.cluster, store: self.me, nonce }.encode();
        hello.extend_from_slice(self.hello_extra);
        let proof = Proof::make(self.key, Role::Acceptor, &transcript);
        let mut reply = format.encode(FrameKind::Hello, &hello)?;
        reply.extend_from_slice(&format.encode(FrameKind::Proof, &proof.encode())?);
        stream.write_all(&reply)?;

        let proof = Proof::decode(&self.expect_frame(stream, FrameKind::Proof, &deadline)?)?;
        self.check_proof(stream, &proof, Role::Connector, &transcript)?;
        self.run_vet(stream, theirs.store, &payload)?;
        self.write(stream, FrameKind::Accept, &[])?;
        Ok(theirs.store)
    }

    /// The protocol's check of the authenticated peer, if it has one.
    fn run_vet(
        &self,
        stream: &mut TcpStream,
        peer: StoreId,
        hello: &[u8],
    ) -> Result<(), HandshakeError> {
        match self.vet.map(|vet| vet(peer, hello)) {
            Some(Err((reason, detail))) => Err(self.refuse(stream, reason, detail)),
            None | Some(Ok(())) => Ok(()),
        }
    }

    fn write(
        &self,
        stream: &mut TcpStream,
        kind: FrameKind,
        payload: &[u8],
    ) -> Result<(), HandshakeError> {
        stream.write_all(&self.reader.format.encode(kind, payload)?)?;
        Ok(())
    }

    /// Refuses the peer: tells it why (best effort), and returns the error to log.
    pub fn refuse(
        &self,
        stream: &mut TcpStream,
        reason: RejectReason,
        detail: String,
    ) -> HandshakeError {
        if let Ok(frame) = self.reader.format.encode(FrameKind::Reject, &reason.encode()) {
            let _ = stream.write_all(&frame);
        }
        HandshakeError::Rejected { reason, detail }
    }

    /// The payload of the peer's next frame, which must be of kind `expected`; a
    /// REJECT becomes [`HandshakeError::RefusedByPeer`].
    fn expect_frame(
        &self,
        stream: &mut TcpStream,
        expected: FrameKind,
        deadline: &Deadline,
    ) -> Result<Vec<u8>, HandshakeError> {
        let (kind, payload) =
            self.reader.frame(stream, HANDSHAKE_FRAME_BYTES_MAX, Some(deadline))?;
        if kind == expected {
            return Ok(payload);
        }
        if kind == FrameKind::Reject {
            return Err(HandshakeError::RefusedByPeer(RejectReason::decode(&payload)?));
        }
        Err(self.refuse(
            stream,
            RejectReason::ProtocolViolation,
            format!("expected {expected:?} during the handshake, got {kind:?}"),
        ))
    }

    /// Checks the peer's HELLO: its cluster, and its store id as `expect` says.
    fn check_hello(
        &self,
        stream: &mut TcpStream,
        hello: &Hello,
        expect: Expect,
        role: Role,
    ) -> Result<(), HandshakeError> {
        let Names { me, peer } = self.names;
        if hello.cluster != self.cluster {
            return Err(self.refuse(
                stream,
                RejectReason::ClusterMismatch,
                format!("{peer} is in cluster {}, {me} in cluster {}", hello.cluster, self.cluster),
            ));
        }
        let found = hello.store;
        let unexpected = match expect {
            Expect::Store(expected) if found != expected => Some(match role {
                Role::Connector => {
                    format!("dialed store {} but store {} answered", expected.0, found.0)
                }
                Role::Acceptor => {
                    format!("{peer} must claim store id {}, not {}", expected.0, found.0)
                }
            }),
            Expect::NotMe if found == self.me => {
                Some(format!("{peer} claims {me}'s own id {}", found.0))
            }
            Expect::Store(_) | Expect::NotMe | Expect::Any => None,
        };
        match unexpected {
            Some(detail) => Err(self.refuse(stream, RejectReason::UnexpectedStore, detail)),
            None => Ok(()),
        }
    }

    /// Checks the proof the peer sent as `role`.
    fn check_proof(
        &self,
        stream: &mut TcpStream,
        proof: &Proof,
        role: Role,
        transcript: &Transcript,
    ) -> Result<(), HandshakeError> {
        if proof.verify(self.key, role, transcript) {
            return Ok(());
        }
        let Names { me, peer } = self.names;
        Err(self.refuse(
            stream,
            RejectReason::BadProof,
            format!("{peer}'s proof does not match {me}'s cluster secret"),
        ))
    }
}

#[cfg(test)]
mod tests {
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
                acceptor.accept(&mut stream, expect_connector)
            });
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let connected = connector.connect(&mut stream, expect_acceptor);
            drop(stream);
            (connected, accepted.join().unwrap())
        })
    }

    #[test]
    fn handshake_messages_round_trip_and_proofs_bind_everything() {
        let hello = Hello { cluster: ClusterId(42), store: StoreId(3), nonce: [7; NONCE_BYTES] };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
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
        let (c, a) =
            run(&side(&key, 1, 0), Expect::Any, &side(&key, 1, 7), Expect::Store(StoreId(0)));
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
                Ok(Some(id)) if peer == StoreId(store) && id.incarnation == Incarnation(inc) => {
                    Ok(())
                }
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
}
