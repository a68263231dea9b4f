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
//! Each HELLO says whether its side runs sealed or plaintext links ([`LinkMode`]); a
//! side refuses a peer that runs the other (REJECT `LinkMismatch`: a secure node never
//! talks plaintext to an `insecure` one, nor to a binary from before sealing, whose
//! HELLO says nothing, so plaintext). On sealed links the connector's PROOF also
//! carries the first message of a Noise key exchange and the ACCEPT the second
//! ([`super::seal`]): the connection's keys, bound to both HELLOs.
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
//!  HELLO   1 cluster id u64, 2 store id u64, 3 nonce (32 bytes),
//!          7 link mode u64 (1 sealed, 2 plaintext; absent from older binaries:
//!          plaintext);
//!          a protocol's own fields from 4 on: the client protocol's client sends
//!          4 its highest protocol version; the store transport's stores send
//!          5 incarnation u64, 6 peer floor u64 (both optional: absent from older
//!          stores, so unknown; the floor only from a store that joined a cluster)
//!  PROOF   1 mac (32 bytes): keyed BLAKE3 of the transcript, see `Proof`;
//!          the connector's on a sealed link: 2 Noise message 1
//!  ACCEPT  on a sealed link: 1 Noise message 2 (else no fields)
//!  REJECT  1 reason u64 (RejectReason code; 0 = unspecified)
//! ```

use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use regionkv_engine::codec::{self, DecodeError, TlvRecord, UnknownTags};
use regionkv_engine::{Incarnation, PeerId, StoreId};

use super::frame::{Deadline, FrameError, FrameKind, FrameReader, WireError};
use super::seal::{self, LinkKeys, LinkMode};

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
/// HELLO field of both protocols: the sender's [`LinkMode`].
const H_LINK: u16 = 7;
// PROOF fields.
const P_MAC: u16 = 1;
/// The connector's PROOF on a sealed link: the first Noise message.
const P_NOISE: u16 = 2;
// ACCEPT fields: on a sealed link, the second Noise message.
const A_NOISE: u16 = 1;
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
    /// The sender's links; `None` from a binary that predates sealing (plaintext).
    pub link: Option<LinkMode>,
}

impl Hello {
    /// The HELLO payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        codec::put_u64(&mut out, H_CLUSTER, self.cluster.0);
        codec::put_u64(&mut out, H_STORE, self.store.0);
        codec::put_field(&mut out, H_NONCE, &self.nonce);
        if let Some(link) = self.link {
            codec::put_u64(&mut out, H_LINK, link.code());
        }
        out
    }

    /// Decodes a HELLO payload; every version-1 field is required.
    pub fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let bad = WireError::malformed("hello");
        let tags = [H_CLUSTER, H_STORE, H_NONCE, H_LINK];
        let rec = TlvRecord::parse(payload, &tags, UnknownTags::Skip).map_err(&bad)?;
        let cluster = rec.required(H_CLUSTER, "cluster id missing").and_then(|f| f.as_u64());
        let store = rec.required(H_STORE, "store id missing").and_then(|f| f.as_u64());
        let nonce = rec.required(H_NONCE, "nonce missing").and_then(|f| {
            Nonce::try_from(f.value)
                .map_err(|_| DecodeError::new(f.offset, "nonce is not 32 bytes"))
        });
        let link = rec.optional(H_LINK).map_err(&bad)?;
        let link = link.map(|f| f.as_u64()).transpose().map_err(&bad)?;
        Ok(Hello {
            cluster: ClusterId(cluster.map_err(&bad)?),
            store: StoreId(store.map_err(&bad)?),
            nonce: nonce.map_err(&bad)?,
            link: link.and_then(LinkMode::from_code),
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

    /// The key's bytes, for keys derived from it (`seal`'s pre-shared key).
    pub(crate) fn material(&self) -> &[u8; 32] {
        &self.0
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
    /// One side runs sealed links and the other plaintext ones (`insecure`, or a
    /// binary from before sealing): run both sides alike.
    LinkMismatch,
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
            RejectReason::LinkMismatch => 8,
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
            8 => RejectReason::LinkMismatch,
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
            RejectReason::LinkMismatch => {
                "one side runs sealed (encrypted) links and the other plaintext ones \
                 (--insecure, or a binary from before sealing): run both alike"
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
    /// The protocol's key for the cluster secret: this side proves it, and so must a
    /// peer (but a client, below).
    pub key: &'a HandshakeKey,
    /// The key a peer that claims store id 0 (a client) must prove instead of `key`,
    /// and this side's proof to it is made with (the acceptor of the client protocol,
    /// when clients have a secret of their own); `None`: `key`.
    pub client_key: Option<&'a HandshakeKey>,
    /// What this side runs after the handshake; a peer that runs the other is refused.
    pub link: LinkMode,
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
            .field("client_key", &self.client_key)
            .field("link", &self.link)
            .field("cluster", &self.cluster)
            .field("me", &self.me)
            .field("timeout", &self.timeout)
            .field("hello_extra", &self.hello_extra)
            .field("names", &self.names)
            .field("vet", &self.vet.is_some())
            .finish()
    }
}

/// What a finished handshake gives: who the peer is, and on a sealed link the
/// connection's keys (the reading side opens with [`LinkKeys::opener`], the writers
/// seal with [`LinkKeys::sealer`]).
#[derive(Debug)]
pub struct Authenticated {
    /// The peer's store id (0 for a client).
    pub peer: StoreId,
    /// The connection's keys; `None` on a plaintext link.
    pub keys: Option<LinkKeys>,
}

impl Authenticated {
    /// The keys split: the opener, the sealer (both `None` on a plaintext link).
    pub fn split(self) -> (StoreId, Option<seal::Opener>, Option<seal::Sealer>) {
        match self.keys {
            Some(LinkKeys { sealer, opener }) => (self.peer, Some(opener), Some(sealer)),
            None => (self.peer, None, None),
        }
    }
}

/// The Noise message in field `tag` of a handshake payload.
fn noise_field<'p>(payload: &'p [u8], tag: u16, what: &'static str) -> Result<&'p [u8], WireError> {
    let bad = WireError::malformed(what);
    let rec = TlvRecord::parse(payload, &[tag], UnknownTags::Skip).map_err(&bad)?;
    Ok(rec.required(tag, "the link key exchange message is missing").map_err(&bad)?.value)
}

/// A protocol's check of an authenticated peer's HELLO; see [`Handshake::vet`].
pub type Vet = dyn Fn(StoreId, &[u8]) -> Result<(), (RejectReason, String)> + Send + Sync;

impl Handshake<'_> {
    /// The dialing side; returns the store that answered, as `expect` allows, and
    /// the connection's keys on a sealed link.
    pub fn connect(
        &self,
        stream: &mut TcpStream,
        expect: Expect,
    ) -> Result<Authenticated, HandshakeError> {
        let deadline = Deadline::after("the handshake", self.timeout);
        let nonce = fresh_nonce()?;
        let hello = self.hello(nonce);
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
        self.check_proof(stream, self.key, &proof, Role::Acceptor, &transcript)?;
        self.run_vet(stream, theirs.store, &their_hello)?;
        let mut ours = Proof::make(self.key, Role::Connector, &transcript).encode();
        let exchange = match self.link {
            LinkMode::Plain => None,
            LinkMode::Sealed => {
                let (exchange, first) = seal::initiate(self.key, &hello, &their_hello)
                    .map_err(|e| self.refuse(stream, RejectReason::Unspecified, e.to_string()))?;
                codec::put_field(&mut ours, P_NOISE, &first);
                Some(exchange)
            }
        };
        self.write(stream, FrameKind::Proof, &ours)?;
        let accept = self.expect_frame(stream, FrameKind::Accept, &deadline)?;
        let keys = match exchange {
            None => None,
            Some(exchange) => {
                let second = noise_field(&accept, A_NOISE, "accept")?;
                // The acceptor took the connection already: nothing to tell it.
                Some(exchange.finish(second).map_err(|e| HandshakeError::Rejected {
                    reason: RejectReason::BadProof,
                    detail: format!("the link key exchange failed: {e}"),
                })?)
            }
        };
        Ok(Authenticated { peer: theirs.store, keys })
    }

    /// This side's HELLO payload with `nonce`.
    fn hello(&self, nonce: Nonce) -> Vec<u8> {
        let mut hello =
            Hello { cluster: self.cluster, store: self.me, nonce, link: Some(self.link) }.encode();
        hello.extend_from_slice(self.hello_extra);
        hello
    }

    /// The key a peer claiming `store` proves (see [`Handshake::client_key`]).
    fn key_for(&self, store: StoreId) -> &HandshakeKey {
        match self.client_key {
            Some(key) if store == StoreId(0) => key,
            _ => self.key,
        }
    }

    /// The accepting side; returns the authenticated peer store, and the
    /// connection's keys on a sealed link.
    pub fn accept(
        &self,
        stream: &mut TcpStream,
        expect: Expect,
    ) -> Result<Authenticated, HandshakeError> {
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
        let key = self.key_for(theirs.store);
        let nonce = fresh_nonce()?;
        let transcript = Transcript {
            cluster: self.cluster,
            connector: theirs.store,
            acceptor: self.me,
            connector_nonce: theirs.nonce,
            acceptor_nonce: nonce,
        };
        let format = self.reader.format;
        let hello = self.hello(nonce);
        let proof = Proof::make(key, Role::Acceptor, &transcript);
        let mut reply = format.encode(FrameKind::Hello, &hello)?;
        reply.extend_from_slice(&format.encode(FrameKind::Proof, &proof.encode())?);
        stream.write_all(&reply)?;
        let their_proof = self.expect_frame(stream, FrameKind::Proof, &deadline)?;
        let proof = Proof::decode(&their_proof)?;
        self.check_proof(stream, key, &proof, Role::Connector, &transcript)?;
        self.run_vet(stream, theirs.store, &payload)?;
        let (keys, accept) = match self.link {
            LinkMode::Plain => (None, Vec::new()),
            LinkMode::Sealed => {
                let first = noise_field(&their_proof, P_NOISE, "proof")?;
                let (keys, second) = seal::respond(key, &payload, &hello, first).map_err(|e| {
                    self.refuse(
                        stream,
                        RejectReason::BadProof,
                        format!("the link key exchange failed: {e}"),
                    )
                })?;
                let mut accept = Vec::with_capacity(second.len() + codec::FIELD_HEADER_LEN);
                codec::put_field(&mut accept, A_NOISE, &second);
                (Some(keys), accept)
            }
        };
        self.write(stream, FrameKind::Accept, &accept)?;
        Ok(Authenticated { peer: theirs.store, keys })
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
        let theirs = hello.link.unwrap_or(LinkMode::Plain);
        if theirs != self.link {
            return Err(self.refuse(
                stream,
                RejectReason::LinkMismatch,
                format!("{peer} runs {theirs}, {me} runs {}", self.link),
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

    /// Checks the proof the peer sent as `role`, made with `key`.
    fn check_proof(
        &self,
        stream: &mut TcpStream,
        key: &HandshakeKey,
        proof: &Proof,
        role: Role,
        transcript: &Transcript,
    ) -> Result<(), HandshakeError> {
        if proof.verify(key, role, transcript) {
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
mod tests;
