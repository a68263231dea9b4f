//! The TCP transport's wire format, version 1: frames, the handshake, and batches of
//! envelopes.
//!
//! Everything on a connection is a frame: a fixed header, then a payload.
//!
//! ```text
//!  0         4         5        6              10             14
//!  +---------+---------+--------+--------------+--------------+------------------+
//!  | magic   | version | kind   | payload len  | payload CRC  | payload          |
//!  | "RKVW"  | u8 = 1  | u8     | u32 LE       | u32 LE       | len bytes        |
//!  +---------+---------+--------+--------------+--------------+------------------+
//! ```
//!
//! The reader checks the magic, the version, the kind and the length (against a bound
//! the reader chooses) before it reads a single payload byte, and the CRC32 of the
//! payload before it decodes it. Every frame kind is a byte with exactly two bits set,
//! so a single flipped bit never turns one valid kind into another.
//!
//! A connection starts with the handshake ([`FrameKind::Hello`], [`FrameKind::Proof`],
//! then [`FrameKind::Accept`] or [`FrameKind::Reject`]; see `tcp`) and carries only
//! [`FrameKind::Batch`] frames after it. Payloads are TLV records of
//! [`regionkv_engine::codec`]; a reader skips tags it does not know (they come from a
//! newer writer), and every field added after version 1 is optional and decodes as
//! `None` when absent (design 5.5).
//!
//! ```text
//!  HELLO   1 cluster id u64, 2 store id u64, 3 nonce (32 bytes)
//!  PROOF   1 mac (32 bytes): keyed BLAKE3 of the transcript, see `proof`
//!  ACCEPT  (no fields)
//!  REJECT  1 reason u64 (RejectReason code; 0 = unspecified)
//!  BATCH   1 envelope (nested, repeated, in send order):
//!            1 region u64, 2 from store u64, 3 to store u64,
//!            4 epoch (nested, optional: absent = unknown): 1 version u64, 2 conf_ver u64,
//!            exactly one of
//!            5 raft message: protobuf `eraftpb.Message` bytes
//!            6 snapshot chunk (nested): 1 index u64, 2 term u64, 3 offset u64,
//!              4 file bytes u64, 5 data
//!            7 key range (nested, optional: absent = unknown): 1 start, and either
//!              2 end or 3 unbounded (empty)
//!            8 hibernate (nested): 1 term u64, 2 index u64
//!            9 alive (empty)
//! ```
//!
//! An envelope whose body is none of these (a kind added by a newer writer) is
//! skipped, not the batch around it.

use std::fmt;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;
use regionkv_engine::codec::{self, DecodeError, Record};
use regionkv_engine::{Epoch, RegionId, StoreId};

use super::{Body, Envelope, KeyRange, SnapshotChunk};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RKVW";
/// The wire version this binary speaks (and the only one it reads).
pub const WIRE_VERSION: u8 = 1;
/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 14;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a handshake proof (a keyed BLAKE3 hash).
pub const MAC_BYTES: usize = 32;
/// The largest handshake payload a reader accepts, far below any batch bound: an
/// unauthenticated peer cannot make us buffer more than this.
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 1024;

const OFFSET_VERSION: usize = 4;
const OFFSET_KIND: usize = 5;
const OFFSET_LEN: usize = 6;
const OFFSET_CRC: usize = 10;
const _: () = assert!(OFFSET_CRC + 4 == FRAME_HEADER_BYTES, "the header is 14 bytes");

const KIND_HELLO: u8 = 0b0000_0011;
const KIND_PROOF: u8 = 0b0000_0101;
const KIND_ACCEPT: u8 = 0b0000_0110;
const KIND_REJECT: u8 = 0b0000_1001;
const KIND_BATCH: u8 = 0b0000_1010;
// Every kind has exactly two bits set: one flipped bit gives one or three set bits,
// which is no kind, so the header check catches it.
const _: () = assert!(
    KIND_HELLO.count_ones() == 2
        && KIND_PROOF.count_ones() == 2
        && KIND_ACCEPT.count_ones() == 2
        && KIND_REJECT.count_ones() == 2
        && KIND_BATCH.count_ones() == 2,
    "frame kinds are two Hamming steps apart"
);

// HELLO fields.
const H_CLUSTER: u16 = 1;
const H_STORE: u16 = 2;
const H_NONCE: u16 = 3;
// PROOF fields.
const P_MAC: u16 = 1;
// REJECT fields.
const R_REASON: u16 = 1;
// BATCH fields.
const B_ENVELOPE: u16 = 1;
// Envelope fields.
const E_REGION: u16 = 1;
const E_FROM: u16 = 2;
const E_TO: u16 = 3;
const E_EPOCH: u16 = 4;
const E_RAFT: u16 = 5;
const E_CHUNK: u16 = 6;
/// Since the region work of wire version 1: optional, absent = unknown.
const E_RANGE: u16 = 7;
/// Bodies added with hibernation.
const E_HIBERNATE: u16 = 8;
const E_ALIVE: u16 = 9;
const E_TAGS: &[u16] =
    &[E_REGION, E_FROM, E_TO, E_EPOCH, E_RAFT, E_CHUNK, E_RANGE, E_HIBERNATE, E_ALIVE];
// Hibernate fields.
const HB_TERM: u16 = 1;
const HB_INDEX: u16 = 2;

const R_START: u16 = 1;
const R_END: u16 = 2;
const R_END_UNBOUNDED: u16 = 3;
// Epoch fields.
const EP_VERSION: u16 = 1;
const EP_CONF_VER: u16 = 2;
// Snapshot chunk fields.
const C_INDEX: u16 = 1;
const C_TERM: u16 = 2;
const C_OFFSET: u16 = 3;
const C_FILE_BYTES: u16 = 4;
const C_DATA: u16 = 5;
const C_TAGS: &[u16] = &[C_INDEX, C_TERM, C_OFFSET, C_FILE_BYTES, C_DATA];

/// The id of a cluster: stores of different clusters refuse each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Handshake: who I am, and my nonce.
    Hello,
    /// Handshake: my proof that I know the cluster secret.
    Proof,
    /// Handshake: your proof is good; batches may follow.
    Accept,
    /// Handshake: refused, with a reason; the connection closes.
    Reject,
    /// A batch of envelopes.
    Batch,
}

impl FrameKind {
    /// The kind's byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Hello => KIND_HELLO,
            FrameKind::Proof => KIND_PROOF,
            FrameKind::Accept => KIND_ACCEPT,
            FrameKind::Reject => KIND_REJECT,
            FrameKind::Batch => KIND_BATCH,
        }
    }

    /// The kind with this byte, if any.
    pub fn from_code(code: u8) -> Option<FrameKind> {
        match code {
            KIND_HELLO => Some(FrameKind::Hello),
            KIND_PROOF => Some(FrameKind::Proof),
            KIND_ACCEPT => Some(FrameKind::Accept),
            KIND_REJECT => Some(FrameKind::Reject),
            KIND_BATCH => Some(FrameKind::Batch),
            _ => None,
        }
    }
}

/// Why bytes from the network were refused. Nothing that decodes bytes panics: every
/// failure is one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame does not start with [`MAGIC`]: not our protocol, or a torn stream.
    #[error("bad frame magic {found:02x?}: the peer does not speak the regionkv wire protocol")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The frame's wire version is not one this binary reads.
    #[error(
        "unsupported wire version {found} (this binary speaks {WIRE_VERSION}); upgrade the older store"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// The frame's kind byte names no kind.
    #[error("unknown frame kind {found:#04x}")]
    UnknownKind {
        /// The byte found.
        found: u8,
    },
    /// The frame's payload is longer than the reader's bound; it was not read.
    #[error("frame of {len} bytes exceeds the bound of {max} bytes")]
    FrameTooLarge {
        /// The announced payload length.
        len: u32,
        /// The reader's bound.
        max: u32,
    },
    /// The payload's CRC32 does not match the header's.
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Checksum {
        /// The CRC in the header.
        expected: u32,
        /// The CRC of the payload as received.
        actual: u32,
    },
    /// Fewer or more bytes than the header announces.
    #[error("frame length mismatch: header says {expected} payload bytes, {actual} present")]
    Length {
        /// Payload bytes the header announces.
        expected: usize,
        /// Payload bytes present.
        actual: usize,
    },
    /// A frame of another kind than the protocol step expects.
    #[error("unexpected {found:?} frame; expected {expected}")]
    UnexpectedKind {
        /// What the step expects.
        expected: &'static str,
        /// What arrived.
        found: FrameKind,
    },
    /// A payload's fields do not decode.
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// Byte offset in the payload.
        offset: usize,
        /// What check failed.
        reason: &'static str,
    },
    /// An embedded Raft message is not valid protobuf.
    #[error("malformed Raft message: {0}")]
    Protobuf(String),
    /// A message could not be encoded.
    #[error("cannot encode {0}")]
    Encode(String),
}

impl WireError {
    /// True if the bytes were damaged or are not our protocol at all; false if they are
    /// well-formed but from an incompatible or misbehaving peer, or could not be encoded.
    /// Exhaustive on purpose: a new variant must decide.
    pub fn is_corruption(&self) -> bool {
        match self {
            WireError::BadMagic { .. }
            | WireError::Checksum { .. }
            | WireError::Length { .. }
            | WireError::Malformed { .. }
            | WireError::Protobuf(_) => true,
            WireError::UnsupportedVersion { .. }
            | WireError::UnknownKind { .. }
            | WireError::FrameTooLarge { .. }
            | WireError::UnexpectedKind { .. }
            | WireError::Encode(_) => false,
        }
    }

    fn malformed(what: &'static str) -> impl Fn(DecodeError) -> WireError {
        move |e| WireError::Malformed { what, offset: e.offset, reason: e.reason }
    }
}

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// Payload bytes that follow the header.
    pub len: u32,
    /// CRC32 of the payload.
    pub crc: u32,
}

impl FrameHeader {
    /// Checks a header's magic, version, kind and length (at most `payload_bytes_max`)
    /// before any payload byte is read.
    pub fn parse(
        header: &[u8; FRAME_HEADER_BYTES],
        payload_bytes_max: u32,
    ) -> Result<FrameHeader, WireError> {
        let [m0, m1, m2, m3, version, kind, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(WireError::BadMagic { found: [m0, m1, m2, m3] });
        }
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
        let kind = FrameKind::from_code(kind).ok_or(WireError::UnknownKind { found: kind })?;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len > payload_bytes_max {
            return Err(WireError::FrameTooLarge { len, max: payload_bytes_max });
        }
        Ok(FrameHeader { kind, len, crc: u32::from_le_bytes([c0, c1, c2, c3]) })
    }

    /// Checks `payload` against the header's length and CRC.
    pub fn check(&self, payload: &[u8]) -> Result<(), WireError> {
        if payload.len() != self.len as usize {
            return Err(WireError::Length { expected: self.len as usize, actual: payload.len() });
        }
        let actual = crc32fast::hash(payload);
        if actual != self.crc {
            return Err(WireError::Checksum { expected: self.crc, actual });
        }
        Ok(())
    }
}

/// Starts a frame in `out` (which should be empty): room for the header, which
/// [`finish_frame`] fills once the payload has been appended.
pub fn begin_frame(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
}

/// Fills the header of the frame begun at the start of `out`, whose payload is
/// everything after the header. Fails if the payload does not fit a u32 length.
pub fn finish_frame(out: &mut [u8], kind: FrameKind) -> Result<(), WireError> {
    let Some(payload) = out.get(FRAME_HEADER_BYTES..) else {
        return Err(WireError::Encode("a frame without its header".into()));
    };
    let len = u32::try_from(payload.len())
        .map_err(|_| WireError::Encode(format!("a payload of {} bytes", payload.len())))?;
    let crc = crc32fast::hash(payload);
    out[..4].copy_from_slice(&MAGIC);
    out[OFFSET_VERSION] = WIRE_VERSION;
    out[OFFSET_KIND] = kind.code();
    out[OFFSET_LEN..OFFSET_CRC].copy_from_slice(&len.to_le_bytes());
    out[OFFSET_CRC..FRAME_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A whole frame: header and `payload`.
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    begin_frame(&mut out);
    out.extend_from_slice(payload);
    finish_frame(&mut out, kind)?;
    Ok(out)
}

/// Splits and checks one whole frame held in `buf` (exactly one frame, nothing after
/// it). Never panics.
pub fn decode_frame(buf: &[u8], payload_bytes_max: u32) -> Result<(FrameKind, &[u8]), WireError> {
    let Some((header, payload)) = buf.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(WireError::Length { expected: FRAME_HEADER_BYTES, actual: buf.len() });
    };
    let header = FrameHeader::parse(header, payload_bytes_max)?;
    header.check(payload)?;
    Ok((header.kind, payload))
}

/// A handshake nonce: fresh random bytes per connection and side.
pub type Nonce = [u8; NONCE_BYTES];

/// The first handshake message of each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's cluster.
    pub cluster: ClusterId,
    /// The sending store.
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
        let rec = Record::parse(payload, &[H_CLUSTER, H_STORE, H_NONCE], true).map_err(&bad)?;
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
    /// The key for a cluster secret.
    pub fn derive(secret: &[u8]) -> HandshakeKey {
        HandshakeKey(blake3::derive_key("regionkv tcp transport v1 handshake key", secret))
    }
}

/// A handshake proof: keyed BLAKE3 over the role's label (length-prefixed), the wire
/// version and the transcript, each integer little-endian.
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
        h.update(&[WIRE_VERSION]);
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
        let rec = Record::parse(payload, &[P_MAC], true).map_err(&bad)?;
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
    /// The wire version is not one the refusing side speaks.
    UnsupportedVersion,
    /// The store id is not the expected one (a stale address, or our own id).
    UnexpectedStore,
    /// The bytes did not follow the handshake protocol.
    ProtocolViolation,
    /// The refusing side has too many connections.
    Busy,
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
        let rec = Record::parse(payload, &[R_REASON], true).map_err(&bad)?;
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
        })
    }
}

/// Appends one envelope, as a BATCH payload's ENVELOPE field, to `out`.
pub fn encode_envelope(env: &Envelope, out: &mut Vec<u8>) -> Result<(), WireError> {
    enum Encoded<'a> {
        Raft(Vec<u8>),
        Chunk(&'a SnapshotChunk),
        Hibernate(u64, u64),
        Alive,
    }
    let body = match &env.body {
        Body::Raft(m) => Encoded::Raft(
            m.write_to_bytes().map_err(|e| WireError::Encode(format!("a Raft message: {e}")))?,
        ),
        Body::SnapshotChunk(c) => Encoded::Chunk(c),
        Body::Hibernate { term, index } => Encoded::Hibernate(*term, *index),
        Body::Alive => Encoded::Alive,
    };
    codec::put_nested(out, B_ENVELOPE, |out| {
        codec::put_u64(out, E_REGION, env.region.0);
        codec::put_u64(out, E_FROM, env.from.0);
        codec::put_u64(out, E_TO, env.to.0);
        if let Some(epoch) = env.epoch {
            codec::put_nested(out, E_EPOCH, |out| {
                codec::put_u64(out, EP_VERSION, epoch.version);
                codec::put_u64(out, EP_CONF_VER, epoch.conf_ver);
            });
        }
        if let Some(range) = &env.range {
            codec::put_nested(out, E_RANGE, |out| {
                codec::put_field(out, R_START, &range.start);
                codec::put_range_end(out, R_END, R_END_UNBOUNDED, range.end.as_deref());
            });
        }
        match body {
            Encoded::Raft(bytes) => codec::put_field(out, E_RAFT, &bytes),
            Encoded::Chunk(c) => codec::put_nested(out, E_CHUNK, |out| {
                codec::put_u64(out, C_INDEX, c.index);
                codec::put_u64(out, C_TERM, c.term);
                codec::put_u64(out, C_OFFSET, c.offset);
                codec::put_u64(out, C_FILE_BYTES, c.file_bytes);
                codec::put_field(out, C_DATA, &c.data);
            }),
            Encoded::Hibernate(term, index) => codec::put_nested(out, E_HIBERNATE, |out| {
                codec::put_u64(out, HB_TERM, term);
                codec::put_u64(out, HB_INDEX, index);
            }),
            Encoded::Alive => codec::put_field(out, E_ALIVE, &[]),
        }
    });
    Ok(())
}

/// A whole BATCH payload of `envelopes`.
pub fn encode_batch(envelopes: &[Envelope]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    for env in envelopes {
        encode_envelope(env, &mut out)?;
    }
    Ok(out)
}

/// Decodes a BATCH payload into its envelopes, in order. Snapshot chunk data shares
/// `payload`'s memory. Never panics, whatever `payload` holds.
pub fn decode_batch(payload: &Bytes) -> Result<Vec<Envelope>, WireError> {
    let bad = WireError::malformed("batch");
    let mut out = Vec::new();
    for field in codec::fields(payload).map_err(&bad)? {
        if field.tag != B_ENVELOPE {
            continue; // a newer writer's addition
        }
        if let Some(env) =
            decode_envelope_fields(payload, field.value).map_err(|e| shift(e, field.offset))?
        {
            out.push(env);
        }
    }
    Ok(out)
}

fn shift(e: WireError, base: usize) -> WireError {
    match e {
        WireError::Malformed { what, offset, reason } => {
            WireError::Malformed { what, offset: offset + base, reason }
        }
        other => other,
    }
}

/// Decodes one envelope's nested record `buf`, a slice of `whole`; `None` for an
/// envelope whose body is of a kind this binary does not know.
fn decode_envelope_fields(whole: &Bytes, buf: &[u8]) -> Result<Option<Envelope>, WireError> {
    let bad = WireError::malformed("envelope");
    let all = codec::fields(buf).map_err(&bad)?;
    let rec = Record::parse(buf, E_TAGS, true).map_err(&bad)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(&bad);
    let region = RegionId(u64_of(E_REGION, "region missing")?);
    let from = StoreId(u64_of(E_FROM, "from store missing")?);
    let to = StoreId(u64_of(E_TO, "to store missing")?);
    let epoch = match rec.optional(E_EPOCH).map_err(&bad)? {
        None => None,
        Some(f) => Some(decode_epoch(f.value).map_err(|e| shift(e, f.offset))?),
    };
    let range = match rec.optional(E_RANGE).map_err(&bad)? {
        None => None,
        Some(f) => {
            let r = Record::parse(f.value, &[R_START, R_END, R_END_UNBOUNDED], true)
                .map_err(|e| bad(e.shifted(f.offset)))?;
            let start =
                r.required(R_START, "range start missing").map_err(|e| bad(e.shifted(f.offset)))?;
            let end = codec::range_end(&r, R_END, R_END_UNBOUNDED)
                .map_err(|e| bad(e.shifted(f.offset)))?;
            Some(KeyRange { start: start.value.to_vec(), end })
        }
    };
    let bodies = [E_RAFT, E_CHUNK, E_HIBERNATE, E_ALIVE];
    let mut present = Vec::new();
    for tag in bodies {
        if let Some(f) = rec.optional(tag).map_err(&bad)? {
            present.push((tag, f));
        }
    }
    let body = match present.as_slice() {
        [(E_RAFT, f)] => Body::Raft(
            Message::parse_from_bytes(f.value).map_err(|e| WireError::Protobuf(e.to_string()))?,
        ),
        [(E_CHUNK, f)] => {
            Body::SnapshotChunk(decode_chunk(whole, f.value).map_err(|e| shift(e, f.offset))?)
        }
        [(E_HIBERNATE, f)] => {
            let h = Record::parse(f.value, &[HB_TERM, HB_INDEX], true)
                .map_err(|e| bad(e.shifted(f.offset)))?;
            let u64_of = |tag, what| {
                h.required(tag, what).and_then(|x| x.as_u64()).map_err(|e| bad(e.shifted(f.offset)))
            };
            Body::Hibernate {
                term: u64_of(HB_TERM, "hibernate term missing")?,
                index: u64_of(HB_INDEX, "hibernate index missing")?,
            }
        }
        [(E_ALIVE, _)] => Body::Alive,
        [] if all.iter().any(|f| !E_TAGS.contains(&f.tag)) => return Ok(None),
        [] => return Err(bad(DecodeError::new(0, "body missing"))),
        [(_, f), ..] => return Err(bad(DecodeError::new(f.offset, "more than one body"))),
    };
    Ok(Some(Envelope { region, from, to, epoch, range, body }))
}

fn decode_epoch(buf: &[u8]) -> Result<Epoch, WireError> {
    let bad = WireError::malformed("epoch");
    let rec = Record::parse(buf, &[EP_VERSION, EP_CONF_VER], true).map_err(&bad)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(&bad);
    Ok(Epoch {
        version: u64_of(EP_VERSION, "epoch version missing")?,
        conf_ver: u64_of(EP_CONF_VER, "epoch conf_ver missing")?,
    })
}

fn decode_chunk(whole: &Bytes, buf: &[u8]) -> Result<SnapshotChunk, WireError> {
    let bad = WireError::malformed("snapshot chunk");
    let rec = Record::parse(buf, C_TAGS, true).map_err(&bad)?;
    let u64_of = |tag, what| rec.required(tag, what).and_then(|f| f.as_u64()).map_err(&bad);
    let data = rec.required(C_DATA, "chunk data missing").map_err(&bad)?;
    Ok(SnapshotChunk {
        index: u64_of(C_INDEX, "chunk index missing")?,
        term: u64_of(C_TERM, "chunk term missing")?,
        offset: u64_of(C_OFFSET, "chunk offset missing")?,
        file_bytes: u64_of(C_FILE_BYTES, "chunk file bytes missing")?,
        // `data.value` is a slice of `whole`, so this shares its memory.
        data: whole.slice_ref(data.value),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use raft::eraftpb::{Entry, MessageType};

    use super::*;

    fn raft_env(i: u64, epoch: Option<Epoch>) -> Envelope {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.term = 7;
        m.index = i;
        m.log_term = 6;
        m.commit = i / 2;
        m.from = 1;
        m.to = 2;
        for k in 0..3u64 {
            let mut e = Entry::default();
            e.index = i + k + 1;
            e.term = 7;
            e.data = Bytes::from(vec![k as u8; (i % 50) as usize]);
            m.entries.push(e);
        }
        Envelope {
            region: RegionId(9),
            from: StoreId(1),
            to: StoreId(2),
            epoch,
            range: epoch.map(|_| KeyRange {
                start: b"m".to_vec(),
                end: i.is_multiple_of(2).then(|| b"t".to_vec()),
            }),
            body: Body::Raft(m),
        }
    }

    fn chunk_env(seq: u32, len: usize) -> Envelope {
        Envelope {
            region: RegionId(3),
            from: StoreId(2),
            to: StoreId(1),
            epoch: Some(Epoch { version: 4, conf_ver: 5 }),
            range: None,
            body: Body::SnapshotChunk(SnapshotChunk {
                index: 100,
                term: 3,
                offset: u64::from(seq) * 1000,
                file_bytes: 2000 + len as u64,
                data: Bytes::from((0..len).map(|b| b as u8).collect::<Vec<_>>()),
            }),
        }
    }

    #[test]
    fn a_batch_round_trips_through_a_frame() {
        let envs = vec![
            raft_env(1, None),
            raft_env(2, Some(Epoch { version: 1, conf_ver: 2 })),
            chunk_env(0, 1000),
            chunk_env(2, 0),
        ];
        let frame = encode_frame(FrameKind::Batch, &encode_batch(&envs).unwrap()).unwrap();
        let (kind, payload) = decode_frame(&frame, u32::MAX).unwrap();
        assert_eq!(kind, FrameKind::Batch);
        assert_eq!(decode_batch(&Bytes::copy_from_slice(payload)).unwrap(), envs);
    }

    #[test]
    fn an_envelope_without_the_optional_epoch_decodes_as_none() {
        // Written the way a writer that never knew the epoch field would: no tag 4.
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 5);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 2);
            codec::put_field(out, E_RAFT, &Message::default().write_to_bytes().unwrap());
        });
        let envs = decode_batch(&Bytes::from(payload)).unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].epoch, None, "absent is unknown, never a zero epoch");
        assert_eq!(envs[0].region, RegionId(5));
    }

    #[test]
    fn unknown_tags_from_a_newer_writer_are_skipped() {
        let env = raft_env(3, Some(Epoch { version: 8, conf_ver: 9 }));
        let mut payload = Vec::new();
        // A future top-level item, then the envelope with a future field inside it and
        // inside its epoch.
        codec::put_u64(&mut payload, 77, 1);
        let mut inner = Vec::new();
        encode_envelope(&env, &mut inner).unwrap();
        let fields = codec::fields(&inner).unwrap();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            for f in codec::fields(fields[0].value).unwrap() {
                if f.tag == E_EPOCH {
                    codec::put_nested(out, E_EPOCH, |out| {
                        out.extend_from_slice(f.value);
                        codec::put_field(out, 40, b"future epoch field");
                    });
                } else {
                    codec::put_field(out, f.tag, f.value);
                }
            }
            codec::put_field(out, 41, b"future envelope field");
        });
        assert_eq!(decode_batch(&Bytes::from(payload)).unwrap(), vec![env]);
    }

    #[test]
    fn a_bad_envelope_is_a_typed_error() {
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 5);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 2);
        });
        let err = decode_batch(&Bytes::from(payload)).unwrap_err();
        assert!(matches!(err, WireError::Malformed { reason: "body missing", .. }), "{err}");
        let mut payload = Vec::new();
        codec::put_nested(&mut payload, B_ENVELOPE, |out| {
            codec::put_u64(out, E_REGION, 5);
            codec::put_u64(out, E_FROM, 1);
            codec::put_u64(out, E_TO, 2);
            codec::put_field(out, E_RAFT, &[0xff; 7]);
        });
        let err = decode_batch(&Bytes::from(payload)).unwrap_err();
        assert!(matches!(err, WireError::Protobuf(_)), "{err}");
        assert!(err.is_corruption());
    }

    #[test]
    fn headers_are_checked_before_the_payload() {
        let frame = encode_frame(FrameKind::Batch, &[1; 100]).unwrap();
        let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES].try_into().unwrap();
        assert_eq!(FrameHeader::parse(&header, 100).unwrap().len, 100);
        assert_eq!(
            FrameHeader::parse(&header, 99),
            Err(WireError::FrameTooLarge { len: 100, max: 99 })
        );
        let mut v2 = header;
        v2[OFFSET_VERSION] = 2;
        assert_eq!(FrameHeader::parse(&v2, 100), Err(WireError::UnsupportedVersion { found: 2 }));
        let mut http = header;
        http[..4].copy_from_slice(b"GET ");
        assert!(matches!(FrameHeader::parse(&http, 100), Err(WireError::BadMagic { .. })));
    }

    #[test]
    fn handshake_messages_round_trip_and_proofs_bind_everything() {
        let hello = Hello { cluster: ClusterId(42), store: StoreId(3), nonce: [7; NONCE_BYTES] };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        for r in [RejectReason::ClusterMismatch, RejectReason::BadProof, RejectReason::Busy] {
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

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        let epoch = proptest::option::of((any::<u64>(), any::<u64>()))
            .prop_map(|e| e.map(|(version, conf_ver)| Epoch { version, conf_ver }));
        let raft =
            (any::<u64>(), any::<u64>(), 0usize..4, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(term, index, n, data)| {
                    let mut m = Message::default();
                    m.set_msg_type(MessageType::MsgAppend);
                    m.term = term;
                    m.index = index;
                    for k in 0..n {
                        let mut e = Entry::default();
                        e.index = index.wrapping_add(k as u64);
                        e.data = Bytes::from(data.clone());
                        m.entries.push(e);
                    }
                    Body::Raft(m)
                });
        let chunk = (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(index, term, offset, file_bytes, data)| {
                Body::SnapshotChunk(SnapshotChunk {
                    index,
                    term,
                    offset,
                    file_bytes,
                    data: Bytes::from(data),
                })
            });
        let range = proptest::option::of((
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        ))
        .prop_map(|r| r.map(|(start, end)| KeyRange { start, end }));
        (any::<u64>(), any::<u64>(), any::<u64>(), epoch, range, prop_oneof![raft, chunk]).prop_map(
            |(region, from, to, epoch, range, body)| Envelope {
                region: RegionId(region),
                from: StoreId(from),
                to: StoreId(to),
                epoch,
                range,
                body,
            },
        )
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_frame(&bytes, 1 << 20);
            let _ = decode_batch(&Bytes::from(bytes.clone()));
            let _ = Hello::decode(&bytes);
            let _ = Proof::decode(&bytes);
            let _ = RejectReason::decode(&bytes);
            if let Some(header) = bytes.first_chunk::<FRAME_HEADER_BYTES>() {
                let _ = FrameHeader::parse(header, 1 << 20);
            }
        }

        #[test]
        fn random_envelope_fields_never_panic(
            fields in proptest::collection::vec((0u16..8, proptest::collection::vec(any::<u8>(), 0..20)), 0..8)
        ) {
            // Structurally valid TLV with random tags and values reaches the field checks.
            let mut payload = Vec::new();
            codec::put_nested(&mut payload, B_ENVELOPE, |out| {
                for (tag, value) in &fields {
                    codec::put_field(out, *tag, value);
                }
            });
            let _ = decode_batch(&Bytes::from(payload));
        }

        #[test]
        fn batches_round_trip(envs in proptest::collection::vec(arb_envelope(), 0..6)) {
            let frame = encode_frame(FrameKind::Batch, &encode_batch(&envs).unwrap()).unwrap();
            let (kind, payload) = decode_frame(&frame, u32::MAX).unwrap();
            prop_assert_eq!(kind, FrameKind::Batch);
            prop_assert_eq!(decode_batch(&Bytes::copy_from_slice(payload)).unwrap(), envs);
        }

        #[test]
        fn every_single_bit_flip_is_detected(envs in proptest::collection::vec(arb_envelope(), 1..3)) {
            let frame = encode_frame(FrameKind::Batch, &encode_batch(&envs).unwrap()).unwrap();
            for bit in 0..frame.len() * 8 {
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(decode_frame(&bad, u32::MAX).is_err(), "flip of bit {} undetected", bit);
            }
        }
    }
}
