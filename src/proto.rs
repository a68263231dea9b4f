//! The client protocol, version 1: how a process that hosts no store talks to a running
//! [`Node`](crate::Node). Framing, the handshake, requests, responses and errors.
//!
//! Clients connect to a node's one listening address: the store transport reads the
//! first byte of every accepted connection, and a connection that opens with this
//! protocol's magic is served here instead of as a store (`SharedListener` in
//! `regionkv_raft::transport::tcp`).
//!
//! ## Frames
//!
//! ```text
//!  0         4         5        6              10             14
//!  +---------+---------+--------+--------------+--------------+------------------+
//!  | magic   | version | kind   | payload len  | payload CRC  | payload          |
//!  | "rkvc"  | u8 = 1  | u8     | u32 LE       | u32 LE       | len bytes        |
//!  +---------+---------+--------+--------------+--------------+------------------+
//! ```
//!
//! The magic's first byte differs from the store protocol's (`"RKVW"`), which is how
//! the listener tells them apart. A reader checks magic, version, kind and length
//! (against its own bound: [`REQUEST_BYTES_MAX`] on a node, [`RESPONSE_BYTES_MAX`] on a
//! client, [`HANDSHAKE_FRAME_BYTES_MAX`] during the handshake) before it reads a payload
//! byte, and the CRC32 before it decodes one. Kinds have two bits set each.
//!
//! ## Handshake
//!
//! The store transport's handshake, with the client as connector and store id 0:
//!
//! ```text
//!  C -> N  HELLO  { cluster id, 0, nonce_c, 4 highest client protocol version }
//!  N -> C  HELLO  { cluster id, N's store id, nonce_n }  PROOF { acceptor mac }
//!  C -> N  PROOF  { connector mac }
//!  N -> C  ACCEPT            (or REJECT { reason } at any step, then close)
//! ```
//!
//! The MACs are the store transport's ([`Proof`]), under a key derived from the cluster
//! secret for this protocol only ([`client_key`]): a proof made for a client
//! connection is never valid for a store connection, nor the reverse.
//!
//! ## Requests and responses
//!
//! After ACCEPT the client sends REQUEST frames and the node answers each with one
//! RESPONSE frame carrying the request's id, in any order: requests are pipelined, at
//! most [`IN_FLIGHT_MAX`] per connection (the node stops reading beyond that). Payloads
//! are TLV records ([`regionkv_engine::codec`]):
//!
//! ```text
//!  REQUEST   1 id u64, and exactly one of
//!            10 write { 1 region, 2 epoch { 1 version, 2 conf_ver },
//!                       3 op* { 1 kind (1 put, 2 delete), 2 key, 3 value } }
//!            11 read  { 1 region, 2 epoch, 3 get { 1 key } | 4 scan { 1 start,
//!                       2 end | 3 unbounded, 4 limit } }
//!            12 admin { 1 region, 2 epoch, 3 cmd }      13 directory { 1 cmd }
//!            14 merge status { 1 region }                15 peer status { 1 region }
//!            16 locate { 1 key }       17 status       18 members
//!            19 split { 1 key }        20 merge { 1 left, 2 right }     21 regions
//!            22 local scan { 1 start, 2 end | 3 unbounded, 4 limit }
//!  RESPONSE  1 id u64, and exactly one of
//!            2 error { 1 code, 2 region, 3 leader store, 4 region*, 5 message, 6 target }
//!            30 done  31 value { 1 value | 2 none }  32 rows { 1 row* { 1 key, 2 value } }
//!            33 admin result  34 directory result  35 merge status
//!            36 peer status { 1 status | 2 none }  37 located { 1 record | 2 none }
//!            38 status { 1 store, 2 peer status*, 3 metrics (optional, since 0.1) }
//!            39 members { 1 member* { 1 store, 2 address } }  40 regions { 1 region info* }
//!            41 split { 1 region* }  42 merged { 1 region }  43 no reply
//!  metrics   1 regions  2 leaders  3 hibernating  4 applied lag total  5 applied lag max
//!            6 write latency us (histogram)  7 writes proposed  8 entries proposed
//!            9 apply { 1 rounds, 2 rounds without regions, 3 rounds with several,
//!                      4 most regions in a round }
//!            10 wal { 1 records, 2 groups, 3 fsyncs, 4 bytes written, 5 segment rolls,
//!                     6 queued bytes high water, 7 spare segments,
//!                     8 fsync latency us (histogram), 9 records per group (histogram) }
//!  histogram 1 sum  2 max  3 bucket* { 1 index, 2 samples }   (non-empty buckets only)
//! ```
//!
//! A status from a node that predates metrics has no tag 3: it decodes with
//! `metrics: None`, not with zeros.
//!
//! ## Versions
//!
//! The version byte of every frame says how to read it; this binary reads version 1
//! only and answers any other with REJECT `UnsupportedVersion` (during the handshake)
//! or an error response, then closes. Within version 1, records grow only by new
//! optional tags: readers skip tags they do not know, a field added later decodes as
//! `None` when absent (absent is not empty, design 5.5), and enum codes reserve 0 for
//! "unspecified": an unknown error code decodes as `Unspecified`, an
//! unknown request kind is answered with `UnsupportedRequest`, an unknown
//! role as a follower (never taken for leadership). A node that drops a request
//! unanswered (its store stopped) says so with `no reply`, which the client treats as
//! silence: the outcome is unknown.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regionkv_engine::codec::{self, DecodeError, Field, Record};
use regionkv_engine::{Epoch, MergeState, PeerId, Region, RegionId, StoreId};
use regionkv_raft::directory::{DirCmd, DirResult, RegionRecord};
use regionkv_raft::transport::tcp::is_read_timeout;
use regionkv_raft::transport::wire::{
    self, ClusterId, HandshakeKey, Hello, NONCE_BYTES, Nonce, Proof, RejectReason, Role, Transcript,
};
use regionkv_raft::{
    AdminCmd, AdminResult, MergeStatus, Op, PeerStatus, Query, QueryResult, StateRole, StoreMetrics,
};
use regionkv_wal::CancellationToken;
use regionkv_wal::{Histogram, HistogramSnapshot, WalStats};

use crate::cluster::RegionInfo;
use crate::error::Error;

/// The first four bytes of every client-protocol frame.
pub const MAGIC: [u8; 4] = *b"rkvc";
/// The client protocol version this binary speaks (and the only one it reads).
pub const VERSION: u8 = 1;
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 14;
/// The largest handshake payload either side reads.
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = wire::HANDSHAKE_FRAME_BYTES_MAX;
/// The largest request payload a node reads (a write batch must fit).
pub const REQUEST_BYTES_MAX: u32 = 16 << 20;
/// The largest response payload a client reads (a scan's rows must fit).
pub const RESPONSE_BYTES_MAX: u32 = 64 << 20;
/// Requests a connection may have outstanding at once.
pub const IN_FLIGHT_MAX: usize = 256;
/// The store id a client claims in its HELLO: no store has it.
pub const CLIENT_ID: StoreId = StoreId(0);

const _: () = assert!(MAGIC[0] != wire::MAGIC[0], "the listener tells protocols apart by byte 0");
const _: () = assert!(REQUEST_BYTES_MAX <= RESPONSE_BYTES_MAX);

const KIND_HELLO: u8 = 0b0000_0011;
const KIND_PROOF: u8 = 0b0000_0101;
const KIND_ACCEPT: u8 = 0b0000_0110;
const KIND_REJECT: u8 = 0b0000_1001;
const KIND_REQUEST: u8 = 0b0000_1010;
const KIND_RESPONSE: u8 = 0b0000_1100;
const _: () = assert!(
    KIND_HELLO.count_ones() == 2
        && KIND_PROOF.count_ones() == 2
        && KIND_ACCEPT.count_ones() == 2
        && KIND_REJECT.count_ones() == 2
        && KIND_REQUEST.count_ones() == 2
        && KIND_RESPONSE.count_ones() == 2,
    "frame kinds are two Hamming steps apart"
);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hello,
    Proof,
    Accept,
    Reject,
    Request,
    Response,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Hello => KIND_HELLO,
            Kind::Proof => KIND_PROOF,
            Kind::Accept => KIND_ACCEPT,
            Kind::Reject => KIND_REJECT,
            Kind::Request => KIND_REQUEST,
            Kind::Response => KIND_RESPONSE,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            KIND_HELLO => Kind::Hello,
            KIND_PROOF => Kind::Proof,
            KIND_ACCEPT => Kind::Accept,
            KIND_REJECT => Kind::Reject,
            KIND_REQUEST => Kind::Request,
            KIND_RESPONSE => Kind::Response,
            _ => return None,
        })
    }
}

/// Why a connection of the client protocol failed. Nothing that reads bytes panics:
/// every failure is one of these.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("the connection closed")]
    Closed,
    #[error("nothing received for {0:?}")]
    Timeout(Duration),
    #[error("shutting down")]
    Cancelled,
    #[error("network I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame magic {0:02x?}: not the regionkv client protocol")]
    BadMagic([u8; 4]),
    #[error("client protocol version {0} is not supported (this binary speaks {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("a frame of {len} bytes exceeds the bound of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("unexpected {found:?} frame; expected {expected}")]
    Unexpected { expected: &'static str, found: Kind },
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed { what: &'static str, offset: usize, reason: &'static str },
    #[error("the peer refused the handshake: {0}")]
    Refused(RejectReason),
    #[error("refused the peer: {reason} ({detail})")]
    Rejected { reason: RejectReason, detail: String },
    #[error("cannot encode {0}")]
    Encode(String),
}

impl FrameError {
    fn malformed(what: &'static str) -> impl Fn(DecodeError) -> FrameError {
        move |e| FrameError::Malformed { what, offset: e.offset, reason: e.reason }
    }

    /// True for errors that come from shutdown or the peer going away, not from bad
    /// bytes: logged quietly.
    pub fn is_quiet(&self) -> bool {
        matches!(self, FrameError::Closed | FrameError::Cancelled)
    }
}

/// A frame: header and payload.
pub(crate) fn encode_frame(kind: Kind, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| FrameError::Encode(format!("a payload of {} bytes", payload.len())))?;
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind.code());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A checked frame header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub kind: Kind,
    pub len: u32,
    crc: u32,
}

impl Header {
    /// Checks magic, version, kind and length before any payload byte is read.
    pub fn parse(bytes: &[u8; HEADER_BYTES], payload_bytes_max: u32) -> Result<Header, FrameError> {
        let [m0, m1, m2, m3, version, kind, l0, l1, l2, l3, c0, c1, c2, c3] = *bytes;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(FrameError::BadMagic([m0, m1, m2, m3]));
        }
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = Kind::from_code(kind).ok_or(FrameError::UnknownKind(kind))?;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len > payload_bytes_max {
            return Err(FrameError::TooLarge { len, max: payload_bytes_max });
        }
        Ok(Header { kind, len, crc: u32::from_le_bytes([c0, c1, c2, c3]) })
    }

    fn check(&self, payload: &[u8]) -> Result<(), FrameError> {
        let actual = crc32fast::hash(payload);
        if actual != self.crc {
            return Err(FrameError::Checksum { expected: self.crc, actual });
        }
        Ok(())
    }
}

/// Bytes read into memory at a time: a peer that announces a large frame and stalls
/// costs at most this much.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Reads frames from a socket whose read timeout is short (a poll interval), looking
/// at `cancel` between reads.
pub(crate) struct FrameReader<'a> {
    pub cancel: Option<&'a CancellationToken>,
    /// A frame that started must arrive whole within this.
    pub stall: Duration,
}

impl FrameReader<'_> {
    fn fill(
        &self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        idle_ok: bool,
        deadline: Option<Instant>,
    ) -> Result<(), FrameError> {
        let mut filled = 0;
        let mut last = Instant::now();
        // Bounded: every turn reads bytes or waits one read timeout, and waiting ends at
        // the deadline, the stall bound or cancellation.
        while filled < buf.len() {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(FrameError::Closed),
                Ok(n) => {
                    filled += n;
                    last = Instant::now();
                }
                Err(e) if is_read_timeout(&e) => {
                    if self.cancel.is_some_and(CancellationToken::is_cancelled) {
                        return Err(FrameError::Cancelled);
                    }
                    let now = Instant::now();
                    if let Some(deadline) = deadline
                        && now >= deadline
                    {
                        return Err(FrameError::Timeout(self.stall));
                    }
                    if (filled > 0 || !idle_ok) && now.duration_since(last) >= self.stall {
                        return Err(FrameError::Timeout(self.stall));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads one frame header (waiting for it as long as `deadline` allows, or forever
    /// between frames when `deadline` is `None`).
    pub fn header(
        &self,
        stream: &mut TcpStream,
        payload_bytes_max: u32,
        deadline: Option<Instant>,
    ) -> Result<Header, FrameError> {
        let mut header = [0; HEADER_BYTES];
        self.fill(stream, &mut header, deadline.is_none(), deadline)?;
        Header::parse(&header, payload_bytes_max)
    }

    /// Reads the payload announced by `header` and checks its CRC.
    pub fn payload(
        &self,
        stream: &mut TcpStream,
        header: &Header,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, FrameError> {
        let len = header.len as usize;
        let mut payload = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
        // Bounded: each turn adds up to one chunk, until `len` (at most the bound).
        while payload.len() < len {
            let at = payload.len();
            payload.resize(at + (len - at).min(READ_CHUNK_BYTES), 0);
            self.fill(stream, &mut payload[at..], false, deadline)?;
        }
        header.check(&payload)?;
        Ok(payload)
    }

    /// One whole frame.
    pub fn frame(
        &self,
        stream: &mut TcpStream,
        payload_bytes_max: u32,
        deadline: Option<Instant>,
    ) -> Result<(Kind, Vec<u8>), FrameError> {
        let header = self.header(stream, payload_bytes_max, deadline)?;
        Ok((header.kind, self.payload(stream, &header, deadline)?))
    }
}

// ---- handshake ----

/// The key of client-protocol proofs: derived from the cluster secret, and distinct
/// from the store transport's key for the same secret.
pub fn client_key(secret: &[u8]) -> HandshakeKey {
    let mut material = b"regionkv client protocol v1\0".to_vec();
    material.extend_from_slice(secret);
    HandshakeKey::derive(&material)
}

const H_PROTOCOL_VERSION: u16 = 4;

fn fresh_nonce() -> Result<Nonce, FrameError> {
    let mut nonce = [0; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| FrameError::Encode(format!("a nonce: {e}")))?;
    Ok(nonce)
}

fn reject(stream: &mut TcpStream, reason: RejectReason, detail: String) -> FrameError {
    if let Ok(frame) = encode_frame(Kind::Reject, &reason.encode()) {
        let _ = stream.write_all(&frame);
    }
    FrameError::Rejected { reason, detail }
}

/// A handshake frame of kind `expected`; a REJECT becomes [`FrameError::Refused`].
fn handshake_frame(
    reader: &FrameReader<'_>,
    stream: &mut TcpStream,
    expected: Kind,
    deadline: Instant,
) -> Result<Vec<u8>, FrameError> {
    let (kind, payload) = reader.frame(stream, HANDSHAKE_FRAME_BYTES_MAX, Some(deadline))?;
    match kind {
        k if k == expected => Ok(payload),
        Kind::Reject => Err(FrameError::Refused(
            RejectReason::decode(&payload).unwrap_or(RejectReason::Unspecified),
        )),
        found => Err(reject(
            stream,
            RejectReason::ProtocolViolation,
            format!("expected {expected:?} during the handshake, got {found:?}"),
        )),
    }
}

fn decode_hello(payload: &[u8]) -> Result<Hello, FrameError> {
    Hello::decode(payload).map_err(|e| FrameError::Rejected {
        reason: RejectReason::ProtocolViolation,
        detail: format!("bad hello: {e}"),
    })
}

/// The client's side of the handshake; returns the node's store id.
pub(crate) fn handshake_client(
    stream: &mut TcpStream,
    key: &HandshakeKey,
    cluster: ClusterId,
    timeout: Duration,
) -> Result<StoreId, FrameError> {
    let deadline = Instant::now() + timeout;
    let reader = FrameReader { cancel: None, stall: timeout };
    let nonce = fresh_nonce()?;
    let mut hello = Hello { cluster, store: CLIENT_ID, nonce }.encode();
    codec::put_u64(&mut hello, H_PROTOCOL_VERSION, u64::from(VERSION));
    stream.write_all(&encode_frame(Kind::Hello, &hello)?)?;
    let theirs = decode_hello(&handshake_frame(&reader, stream, Kind::Hello, deadline)?)?;
    if theirs.cluster != cluster {
        return Err(reject(
            stream,
            RejectReason::ClusterMismatch,
            format!("the node is in cluster {}, this client in cluster {cluster}", theirs.cluster),
        ));
    }
    let transcript = Transcript {
        cluster,
        connector: CLIENT_ID,
        acceptor: theirs.store,
        connector_nonce: nonce,
        acceptor_nonce: theirs.nonce,
    };
    let proof =
        Proof::decode(&handshake_frame(&reader, stream, Kind::Proof, deadline)?).map_err(|e| {
            FrameError::Rejected {
                reason: RejectReason::ProtocolViolation,
                detail: format!("bad proof frame: {e}"),
            }
        })?;
    if !proof.verify(key, Role::Acceptor, &transcript) {
        return Err(reject(
            stream,
            RejectReason::BadProof,
            "the node's proof does not match this client's cluster secret".into(),
        ));
    }
    let ours = Proof::make(key, Role::Connector, &transcript);
    stream.write_all(&encode_frame(Kind::Proof, &ours.encode())?)?;
    handshake_frame(&reader, stream, Kind::Accept, deadline)?;
    Ok(theirs.store)
}

/// The node's side of the handshake.
pub(crate) fn handshake_node(
    stream: &mut TcpStream,
    reader: &FrameReader<'_>,
    key: &HandshakeKey,
    cluster: ClusterId,
    me: StoreId,
    timeout: Duration,
) -> Result<(), FrameError> {
    let deadline = Instant::now() + timeout;
    let payload = match reader.frame(stream, HANDSHAKE_FRAME_BYTES_MAX, Some(deadline)) {
        Ok((Kind::Hello, payload)) => payload,
        Ok((kind, _)) => {
            return Err(reject(
                stream,
                RejectReason::ProtocolViolation,
                format!("expected Hello to open the handshake, got {kind:?}"),
            ));
        }
        Err(e @ FrameError::Version(_)) => {
            return Err(reject(stream, RejectReason::UnsupportedVersion, e.to_string()));
        }
        Err(e) => return Err(e),
    };
    let theirs = decode_hello(&payload)?;
    if theirs.cluster != cluster {
        return Err(reject(
            stream,
            RejectReason::ClusterMismatch,
            format!("the client is in cluster {}, this node in cluster {cluster}", theirs.cluster),
        ));
    }
    if theirs.store != CLIENT_ID {
        return Err(reject(
            stream,
            RejectReason::UnexpectedStore,
            format!("a client must claim store id 0, not {}", theirs.store.0),
        ));
    }
    let nonce = fresh_nonce()?;
    let transcript = Transcript {
        cluster,
        connector: CLIENT_ID,
        acceptor: me,
        connector_nonce: theirs.nonce,
        acceptor_nonce: nonce,
    };
    let mut reply = encode_frame(Kind::Hello, &Hello { cluster, store: me, nonce }.encode())?;
    let proof = Proof::make(key, Role::Acceptor, &transcript);
    reply.extend_from_slice(&encode_frame(Kind::Proof, &proof.encode())?);
    stream.write_all(&reply)?;
    let proof =
        Proof::decode(&handshake_frame(reader, stream, Kind::Proof, deadline)?).map_err(|e| {
            FrameError::Rejected {
                reason: RejectReason::ProtocolViolation,
                detail: format!("bad proof frame: {e}"),
            }
        })?;
    if !proof.verify(key, Role::Connector, &transcript) {
        return Err(reject(
            stream,
            RejectReason::BadProof,
            "the client's proof does not match this node's cluster secret".into(),
        ));
    }
    stream.write_all(&encode_frame(Kind::Accept, &[])?)?;
    Ok(())
}

// ---- requests ----

/// What a client asks a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Write { region: RegionId, epoch: Epoch, ops: Vec<Op> },
    Read { region: RegionId, epoch: Epoch, query: Query },
    Admin { region: RegionId, epoch: Epoch, cmd: AdminCmd },
    Directory { cmd: DirCmd },
    MergeStatus { region: RegionId },
    PeerStatus { region: RegionId },
    Locate { key: Vec<u8> },
    Status,
    Members,
    Split { key: Vec<u8> },
    Merge { left: RegionId, right: RegionId },
    Regions,
    LocalScan { start: Vec<u8>, end: Option<Vec<u8>>, limit: usize },
}

/// A node's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    Done,
    Query(QueryResult),
    Admin(AdminResult),
    Directory(DirResult),
    MergeStatus(MergeStatus),
    PeerStatus(Option<PeerStatus>),
    Located(Option<RegionRecord>),
    Status(Box<StoreStatus>),
    Members(Vec<(StoreId, String)>),
    Split(Vec<Region>),
    Merged(Region),
    Regions(Vec<RegionInfo>),
    /// The node's store dropped the request without an answer: its outcome is unknown.
    NoReply,
}

/// One store's status as a node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStatus {
    /// The store.
    pub store: StoreId,
    /// Its replicas: region, role, term, indexes.
    pub peers: Vec<PeerStatus>,
    /// Its metrics; `None` from a node that does not report them (added after the
    /// first release of protocol v1: absent is not empty).
    pub metrics: Option<StoreMetrics>,
}

// Request tags.
const Q_ID: u16 = 1;
const Q_WRITE: u16 = 10;
const Q_READ: u16 = 11;
const Q_ADMIN: u16 = 12;
const Q_DIRECTORY: u16 = 13;
const Q_MERGE_STATUS: u16 = 14;
const Q_PEER_STATUS: u16 = 15;
const Q_LOCATE: u16 = 16;
const Q_STATUS: u16 = 17;
const Q_MEMBERS: u16 = 18;
const Q_SPLIT: u16 = 19;
const Q_MERGE: u16 = 20;
const Q_REGIONS: u16 = 21;
const Q_LOCAL_SCAN: u16 = 22;
const Q_TAGS: &[u16] = &[
    Q_ID,
    Q_WRITE,
    Q_READ,
    Q_ADMIN,
    Q_DIRECTORY,
    Q_MERGE_STATUS,
    Q_PEER_STATUS,
    Q_LOCATE,
    Q_STATUS,
    Q_MEMBERS,
    Q_SPLIT,
    Q_MERGE,
    Q_REGIONS,
    Q_LOCAL_SCAN,
];

// Nested request fields.
const F_REGION: u16 = 1;
const F_EPOCH: u16 = 2;
const F_OPS: u16 = 3;
const F_CMD: u16 = 3;
const F_GET: u16 = 3;
const F_SCAN: u16 = 4;
const OP_KIND: u16 = 1;
const OP_KEY: u16 = 2;
const OP_VALUE: u16 = 3;
const OP_PUT: u64 = 1;
const OP_DELETE: u64 = 2;
const EP_VERSION: u16 = 1;
const EP_CONF_VER: u16 = 2;
const S_START: u16 = 1;
const S_END: u16 = 2;
const S_UNBOUNDED: u16 = 3;
const S_LIMIT: u16 = 4;
const K_KEY: u16 = 1;
const M_LEFT: u16 = 1;
const M_RIGHT: u16 = 2;

type D<T> = Result<T, DecodeError>;

fn parse<'a>(buf: &'a [u8], tags: &[u16]) -> D<Record<'a>> {
    // Always skip unknown tags: they come from a newer, compatible writer.
    Record::parse(buf, tags, true)
}

fn nested<'a>(field: &Field<'a>, tags: &[u16]) -> D<Record<'a>> {
    parse(field.value, tags).map_err(|e| e.shifted(field.offset))
}

fn req_u64(rec: &Record<'_>, tag: u16, what: &'static str) -> D<u64> {
    rec.required(tag, what)?.as_u64()
}

fn opt_u64(rec: &Record<'_>, tag: u16) -> D<Option<u64>> {
    rec.optional(tag)?.map(|f| f.as_u64()).transpose()
}

fn put_epoch(out: &mut Vec<u8>, tag: u16, epoch: Epoch) {
    codec::put_nested(out, tag, |o| {
        codec::put_u64(o, EP_VERSION, epoch.version);
        codec::put_u64(o, EP_CONF_VER, epoch.conf_ver);
    });
}

fn epoch_of(rec: &Record<'_>, tag: u16) -> D<Epoch> {
    let f = rec.required(tag, "epoch missing")?;
    let e = nested(&f, &[EP_VERSION, EP_CONF_VER])?;
    Ok(Epoch {
        version: req_u64(&e, EP_VERSION, "epoch version missing")?,
        conf_ver: req_u64(&e, EP_CONF_VER, "epoch conf_ver missing")?,
    })
}

fn put_region(out: &mut Vec<u8>, tag: u16, region: &Region) {
    codec::put_nested(out, tag, |o| codec::put_region(o, region));
}

fn region_of(field: &Field<'_>) -> D<Region> {
    codec::decode_region(field.value, true).map_err(|e| e.shifted(field.offset))
}

fn put_range(out: &mut Vec<u8>, start: &[u8], end: Option<&[u8]>, limit: usize) {
    codec::put_field(out, S_START, start);
    codec::put_range_end(out, S_END, S_UNBOUNDED, end);
    codec::put_u64(out, S_LIMIT, limit as u64);
}

fn range_of(field: &Field<'_>) -> D<(Vec<u8>, Option<Vec<u8>>, usize)> {
    let s = nested(field, &[S_START, S_END, S_UNBOUNDED, S_LIMIT])?;
    let start = s.required(S_START, "scan start missing")?.value.to_vec();
    let end = codec::range_end(&s, S_END, S_UNBOUNDED)?;
    let limit = usize::try_from(req_u64(&s, S_LIMIT, "scan limit missing")?).unwrap_or(usize::MAX);
    Ok((start, end, limit))
}

/// A REQUEST payload.
pub(crate) fn encode_request(id: u64, req: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    codec::put_u64(&mut out, Q_ID, id);
    match req {
        Request::Write { region, epoch, ops } => codec::put_nested(&mut out, Q_WRITE, |o| {
            codec::put_u64(o, F_REGION, region.0);
            put_epoch(o, F_EPOCH, *epoch);
            for op in ops {
                codec::put_nested(o, F_OPS, |o| match op {
                    Op::Put { key, value } => {
                        codec::put_u64(o, OP_KIND, OP_PUT);
                        codec::put_field(o, OP_KEY, key);
                        codec::put_field(o, OP_VALUE, value);
                    }
                    Op::Delete { key } => {
                        codec::put_u64(o, OP_KIND, OP_DELETE);
                        codec::put_field(o, OP_KEY, key);
                    }
                });
            }
        }),
        Request::Read { region, epoch, query } => codec::put_nested(&mut out, Q_READ, |o| {
            codec::put_u64(o, F_REGION, region.0);
            put_epoch(o, F_EPOCH, *epoch);
            match query {
                Query::Get { key } => {
                    codec::put_nested(o, F_GET, |o| codec::put_field(o, K_KEY, key));
                }
                Query::Scan { start, end, limit } => codec::put_nested(o, F_SCAN, |o| {
                    put_range(o, start, end.as_deref(), *limit);
                }),
            }
        }),
        Request::Admin { region, epoch, cmd } => codec::put_nested(&mut out, Q_ADMIN, |o| {
            codec::put_u64(o, F_REGION, region.0);
            put_epoch(o, F_EPOCH, *epoch);
            codec::put_nested(o, F_CMD, |o| put_admin_cmd(o, cmd));
        }),
        Request::Directory { cmd } => codec::put_nested(&mut out, Q_DIRECTORY, |o| {
            codec::put_nested(o, 1, |o| put_dir_cmd(o, cmd));
        }),
        Request::MergeStatus { region } => codec::put_nested(&mut out, Q_MERGE_STATUS, |o| {
            codec::put_u64(o, F_REGION, region.0);
        }),
        Request::PeerStatus { region } => codec::put_nested(&mut out, Q_PEER_STATUS, |o| {
            codec::put_u64(o, F_REGION, region.0);
        }),
        Request::Locate { key } => {
            codec::put_nested(&mut out, Q_LOCATE, |o| codec::put_field(o, K_KEY, key));
        }
        Request::Status => codec::put_field(&mut out, Q_STATUS, &[]),
        Request::Members => codec::put_field(&mut out, Q_MEMBERS, &[]),
        Request::Split { key } => {
            codec::put_nested(&mut out, Q_SPLIT, |o| codec::put_field(o, K_KEY, key));
        }
        Request::Merge { left, right } => codec::put_nested(&mut out, Q_MERGE, |o| {
            codec::put_u64(o, M_LEFT, left.0);
            codec::put_u64(o, M_RIGHT, right.0);
        }),
        Request::Regions => codec::put_field(&mut out, Q_REGIONS, &[]),
        Request::LocalScan { start, end, limit } => {
            codec::put_nested(&mut out, Q_LOCAL_SCAN, |o| {
                put_range(o, start, end.as_deref(), *limit);
            });
        }
    }
    out
}

/// Why a request did not decode.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The payload is not a valid request (the id, if it could be read).
    Malformed { id: Option<u64>, error: DecodeError },
    /// A well-formed request of a kind this binary does not know (a newer client).
    Unsupported { id: u64 },
}

/// Decodes a REQUEST payload. Never panics.
pub(crate) fn decode_request(payload: &[u8]) -> Result<(u64, Request), RequestError> {
    let rec =
        parse(payload, Q_TAGS).map_err(|error| RequestError::Malformed { id: None, error })?;
    let id = req_u64(&rec, Q_ID, "request id missing")
        .map_err(|error| RequestError::Malformed { id: None, error })?;
    let bodies: Vec<Field<'_>> =
        Q_TAGS.iter().filter(|&&t| t != Q_ID).filter_map(|&t| rec.optional(t).ok()?).collect();
    let body = match bodies.as_slice() {
        [] => return Err(RequestError::Unsupported { id }),
        [one] => *one,
        [_, second, ..] => {
            return Err(RequestError::Malformed {
                id: Some(id),
                error: DecodeError::new(second.offset, "a request has more than one body"),
            });
        }
    };
    decode_body(&body)
        .map(|r| (id, r))
        .map_err(|error| RequestError::Malformed { id: Some(id), error })
}

fn decode_body(f: &Field<'_>) -> D<Request> {
    Ok(match f.tag {
        Q_WRITE => {
            let r = nested(f, &[F_REGION, F_EPOCH, F_OPS])?;
            let mut ops = Vec::new();
            for op in r.repeated(F_OPS) {
                let o = nested(&op, &[OP_KIND, OP_KEY, OP_VALUE])?;
                let key = Bytes::copy_from_slice(o.required(OP_KEY, "op key missing")?.value);
                ops.push(match req_u64(&o, OP_KIND, "op kind missing")? {
                    OP_PUT => Op::Put {
                        key,
                        value: Bytes::copy_from_slice(
                            o.required(OP_VALUE, "put value missing")?.value,
                        ),
                    },
                    OP_DELETE => Op::Delete { key },
                    // An op this binary does not know must fail the whole batch, never
                    // be skipped: the batch is atomic.
                    _ => return Err(DecodeError::new(op.offset, "unknown write op kind")),
                });
            }
            Request::Write {
                region: RegionId(req_u64(&r, F_REGION, "region missing")?),
                epoch: epoch_of(&r, F_EPOCH)?,
                ops,
            }
        }
        Q_READ => {
            let r = nested(f, &[F_REGION, F_EPOCH, F_GET, F_SCAN])?;
            let query = match (r.optional(F_GET)?, r.optional(F_SCAN)?) {
                (Some(g), None) => {
                    let g = nested(&g, &[K_KEY])?;
                    Query::Get {
                        key: Bytes::copy_from_slice(g.required(K_KEY, "key missing")?.value),
                    }
                }
                (None, Some(s)) => {
                    let (start, end, limit) = range_of(&s)?;
                    Query::Scan { start: start.into(), end: end.map(Bytes::from), limit }
                }
                _ => return Err(DecodeError::new(f.offset, "a read needs exactly one query")),
            };
            Request::Read {
                region: RegionId(req_u64(&r, F_REGION, "region missing")?),
                epoch: epoch_of(&r, F_EPOCH)?,
                query,
            }
        }
        Q_ADMIN => {
            let r = nested(f, &[F_REGION, F_EPOCH, F_CMD])?;
            Request::Admin {
                region: RegionId(req_u64(&r, F_REGION, "region missing")?),
                epoch: epoch_of(&r, F_EPOCH)?,
                cmd: admin_cmd_of(&r.required(F_CMD, "admin command missing")?)?,
            }
        }
        Q_DIRECTORY => {
            let r = nested(f, &[1])?;
            Request::Directory { cmd: dir_cmd_of(&r.required(1, "directory command missing")?)? }
        }
        Q_MERGE_STATUS | Q_PEER_STATUS => {
            let r = nested(f, &[F_REGION])?;
            let region = RegionId(req_u64(&r, F_REGION, "region missing")?);
            if f.tag == Q_MERGE_STATUS {
                Request::MergeStatus { region }
            } else {
                Request::PeerStatus { region }
            }
        }
        Q_LOCATE | Q_SPLIT => {
            let r = nested(f, &[K_KEY])?;
            let key = r.required(K_KEY, "key missing")?.value.to_vec();
            if f.tag == Q_LOCATE { Request::Locate { key } } else { Request::Split { key } }
        }
        Q_STATUS => Request::Status,
        Q_MEMBERS => Request::Members,
        Q_REGIONS => Request::Regions,
        Q_MERGE => {
            let r = nested(f, &[M_LEFT, M_RIGHT])?;
            Request::Merge {
                left: RegionId(req_u64(&r, M_LEFT, "left region missing")?),
                right: RegionId(req_u64(&r, M_RIGHT, "right region missing")?),
            }
        }
        Q_LOCAL_SCAN => {
            let (start, end, limit) = range_of(f)?;
            Request::LocalScan { start, end, limit }
        }
        _ => return Err(DecodeError::new(f.offset, "unknown request body")),
    })
}

// ---- admin and directory commands ----

const A_KIND: u16 = 1;
const A_KEY: u16 = 2;
const A_ID: u16 = 3;
const A_REGION: u16 = 4;
const A_INDEX: u16 = 5;
const A_TERM: u16 = 6;
const A_TAGS: &[u16] = &[A_KIND, A_KEY, A_ID, A_REGION, A_INDEX, A_TERM];
const AK_SPLIT: u64 = 1;
const AK_PREPARE: u64 = 2;
const AK_COMMIT: u64 = 3;
const AK_ROLLBACK: u64 = 4;
const AR_SPLIT: u64 = 1;
const AR_PREPARED: u64 = 2;
const AR_MERGED: u64 = 3;
const AR_ROLLED_BACK: u64 = 4;

fn put_admin_cmd(o: &mut Vec<u8>, cmd: &AdminCmd) {
    match cmd {
        AdminCmd::Split { split_keys, new_ids } => {
            codec::put_u64(o, A_KIND, AK_SPLIT);
            for k in split_keys {
                codec::put_field(o, A_KEY, k);
            }
            for id in new_ids {
                codec::put_u64(o, A_ID, id.0);
            }
        }
        AdminCmd::PrepareMerge { target } => {
            codec::put_u64(o, A_KIND, AK_PREPARE);
            put_region(o, A_REGION, target);
        }
        AdminCmd::CommitMerge { source, prepare_index, prepare_term } => {
            codec::put_u64(o, A_KIND, AK_COMMIT);
            put_region(o, A_REGION, source);
            codec::put_u64(o, A_INDEX, *prepare_index);
            codec::put_u64(o, A_TERM, *prepare_term);
        }
        AdminCmd::RollbackMerge { prepare_index } => {
            codec::put_u64(o, A_KIND, AK_ROLLBACK);
            codec::put_u64(o, A_INDEX, *prepare_index);
        }
    }
}

fn admin_cmd_of(f: &Field<'_>) -> D<AdminCmd> {
    let r = nested(f, A_TAGS)?;
    let region = || region_of(&r.required(A_REGION, "region missing")?);
    let index = || req_u64(&r, A_INDEX, "prepare index missing");
    Ok(match req_u64(&r, A_KIND, "admin kind missing")? {
        AK_SPLIT => AdminCmd::Split {
            split_keys: r.repeated(A_KEY).map(|k| k.value.to_vec()).collect(),
            new_ids: r.repeated(A_ID).map(|i| i.as_u64().map(RegionId)).collect::<D<_>>()?,
        },
        AK_PREPARE => AdminCmd::PrepareMerge { target: region()? },
        AK_COMMIT => AdminCmd::CommitMerge {
            source: region()?,
            prepare_index: index()?,
            prepare_term: req_u64(&r, A_TERM, "prepare term missing")?,
        },
        AK_ROLLBACK => AdminCmd::RollbackMerge { prepare_index: index()? },
        _ => return Err(DecodeError::new(f.offset, "unknown admin command")),
    })
}

fn put_admin_result(o: &mut Vec<u8>, result: &AdminResult) {
    match result {
        AdminResult::Split(parts) => {
            codec::put_u64(o, A_KIND, AR_SPLIT);
            for p in parts {
                put_region(o, A_REGION, p);
            }
        }
        AdminResult::Prepared { source, prepare_index, prepare_term } => {
            codec::put_u64(o, A_KIND, AR_PREPARED);
            put_region(o, A_REGION, source);
            codec::put_u64(o, A_INDEX, *prepare_index);
            codec::put_u64(o, A_TERM, *prepare_term);
        }
        AdminResult::Merged(r) => {
            codec::put_u64(o, A_KIND, AR_MERGED);
            put_region(o, A_REGION, r);
        }
        AdminResult::RolledBack(r) => {
            codec::put_u64(o, A_KIND, AR_ROLLED_BACK);
            put_region(o, A_REGION, r);
        }
    }
}

fn admin_result_of(f: &Field<'_>) -> D<AdminResult> {
    let r = nested(f, A_TAGS)?;
    let region = || region_of(&r.required(A_REGION, "region missing")?);
    Ok(match req_u64(&r, A_KIND, "admin result kind missing")? {
        AR_SPLIT => {
            AdminResult::Split(r.repeated(A_REGION).map(|f| region_of(&f)).collect::<D<_>>()?)
        }
        AR_PREPARED => AdminResult::Prepared {
            source: region()?,
            prepare_index: req_u64(&r, A_INDEX, "prepare index missing")?,
            prepare_term: req_u64(&r, A_TERM, "prepare term missing")?,
        },
        AR_MERGED => AdminResult::Merged(region()?),
        AR_ROLLED_BACK => AdminResult::RolledBack(region()?),
        _ => return Err(DecodeError::new(f.offset, "unknown admin result")),
    })
}

const DC_KIND: u16 = 1;
const DC_COUNT: u16 = 2;
const DC_RECORD: u16 = 3;
const DC_FIRST: u16 = 4;
const DC_TAKEN: u16 = 5;
const DC_TAGS: &[u16] = &[DC_KIND, DC_COUNT, DC_RECORD, DC_FIRST, DC_TAKEN];
const DK_ALLOC: u64 = 1;
const DK_REPORT: u64 = 2;
const RR_REGION: u16 = 1;
const RR_LEADER: u16 = 2;

fn put_record(o: &mut Vec<u8>, tag: u16, record: &RegionRecord) {
    codec::put_nested(o, tag, |o| {
        put_region(o, RR_REGION, &record.region);
        if let Some(l) = record.leader {
            codec::put_u64(o, RR_LEADER, l.0);
        }
    });
}

fn record_of(f: &Field<'_>) -> D<RegionRecord> {
    let r = nested(f, &[RR_REGION, RR_LEADER])?;
    Ok(RegionRecord {
        region: region_of(&r.required(RR_REGION, "region missing")?)?,
        leader: opt_u64(&r, RR_LEADER)?.map(StoreId),
    })
}

fn put_dir_cmd(o: &mut Vec<u8>, cmd: &DirCmd) {
    match cmd {
        DirCmd::AllocIds { count } => {
            codec::put_u64(o, DC_KIND, DK_ALLOC);
            codec::put_u64(o, DC_COUNT, *count);
        }
        DirCmd::Report { records } => {
            codec::put_u64(o, DC_KIND, DK_REPORT);
            for r in records {
                put_record(o, DC_RECORD, r);
            }
        }
    }
}

fn dir_cmd_of(f: &Field<'_>) -> D<DirCmd> {
    let r = nested(f, DC_TAGS)?;
    Ok(match req_u64(&r, DC_KIND, "directory command kind missing")? {
        DK_ALLOC => DirCmd::AllocIds { count: req_u64(&r, DC_COUNT, "count missing")? },
        DK_REPORT => DirCmd::Report {
            records: r.repeated(DC_RECORD).map(|f| record_of(&f)).collect::<D<_>>()?,
        },
        _ => return Err(DecodeError::new(f.offset, "unknown directory command")),
    })
}

fn put_dir_result(o: &mut Vec<u8>, result: &DirResult) {
    match result {
        DirResult::Ids { first, count } => {
            codec::put_u64(o, DC_KIND, DK_ALLOC);
            codec::put_u64(o, DC_FIRST, *first);
            codec::put_u64(o, DC_COUNT, *count);
        }
        DirResult::Reported { taken } => {
            codec::put_u64(o, DC_KIND, DK_REPORT);
            codec::put_u64(o, DC_TAKEN, *taken as u64);
        }
    }
}

fn dir_result_of(f: &Field<'_>) -> D<DirResult> {
    let r = nested(f, DC_TAGS)?;
    Ok(match req_u64(&r, DC_KIND, "directory result kind missing")? {
        DK_ALLOC => DirResult::Ids {
            first: req_u64(&r, DC_FIRST, "first id missing")?,
            count: req_u64(&r, DC_COUNT, "count missing")?,
        },
        DK_REPORT => DirResult::Reported {
            taken: usize::try_from(req_u64(&r, DC_TAKEN, "taken missing")?).unwrap_or(usize::MAX),
        },
        _ => return Err(DecodeError::new(f.offset, "unknown directory result")),
    })
}

// ---- statuses ----

const PS_REGION: u16 = 1;
const PS_PEER: u16 = 2;
const PS_ROLE: u16 = 3;
const PS_TERM: u16 = 4;
const PS_LEADER: u16 = 5;
const PS_COMMIT: u16 = 6;
const PS_APPLIED: u16 = 7;
const PS_LAST: u16 = 8;
const PS_INITIALIZED: u16 = 9;
const PS_HIBERNATED: u16 = 10;
const PS_TAGS: &[u16] = &[
    PS_REGION,
    PS_PEER,
    PS_ROLE,
    PS_TERM,
    PS_LEADER,
    PS_COMMIT,
    PS_APPLIED,
    PS_LAST,
    PS_INITIALIZED,
    PS_HIBERNATED,
];

/// A role's code; 0 is reserved for "unspecified".
fn role_code(role: StateRole) -> u64 {
    match role {
        StateRole::Follower => 1,
        StateRole::Candidate => 2,
        StateRole::Leader => 3,
        StateRole::PreCandidate => 4,
    }
}

/// The role of a code; an unknown code (0, or from a newer node) is reported as a
/// follower: an unknown role is never taken for leadership.
fn role_of(code: u64) -> StateRole {
    match code {
        2 => StateRole::Candidate,
        3 => StateRole::Leader,
        4 => StateRole::PreCandidate,
        _ => StateRole::Follower,
    }
}

fn put_flag(o: &mut Vec<u8>, tag: u16, flag: bool) {
    codec::put_field(o, tag, &[u8::from(flag)]);
}

fn put_peer_status(o: &mut Vec<u8>, tag: u16, s: &PeerStatus) {
    codec::put_nested(o, tag, |o| {
        put_region(o, PS_REGION, &s.region);
        codec::put_u64(o, PS_PEER, s.peer.0);
        codec::put_u64(o, PS_ROLE, role_code(s.role));
        codec::put_u64(o, PS_TERM, s.term);
        if let Some(l) = s.leader {
            codec::put_u64(o, PS_LEADER, l.0);
        }
        codec::put_u64(o, PS_COMMIT, s.commit);
        codec::put_u64(o, PS_APPLIED, s.applied);
        codec::put_u64(o, PS_LAST, s.last_index);
        put_flag(o, PS_INITIALIZED, s.initialized);
        put_flag(o, PS_HIBERNATED, s.hibernated);
    });
}

fn peer_status_of(f: &Field<'_>) -> D<PeerStatus> {
    let r = nested(f, PS_TAGS)?;
    let flag = |tag, what| r.required(tag, what).and_then(|f| f.as_bool());
    Ok(PeerStatus {
        region: region_of(&r.required(PS_REGION, "region missing")?)?,
        peer: PeerId(req_u64(&r, PS_PEER, "peer missing")?),
        role: role_of(opt_u64(&r, PS_ROLE)?.unwrap_or(0)),
        term: req_u64(&r, PS_TERM, "term missing")?,
        leader: opt_u64(&r, PS_LEADER)?.map(PeerId),
        commit: req_u64(&r, PS_COMMIT, "commit missing")?,
        applied: req_u64(&r, PS_APPLIED, "applied missing")?,
        last_index: req_u64(&r, PS_LAST, "last index missing")?,
        initialized: flag(PS_INITIALIZED, "initialized missing")?,
        hibernated: flag(PS_HIBERNATED, "hibernated missing")?,
    })
}

// ---- store status and metrics ----

const ST_STORE: u16 = 1;
const ST_PEER: u16 = 2;
const ST_METRICS: u16 = 3;

const M_REGIONS: u16 = 1;
const M_LEADERS: u16 = 2;
const M_HIBERNATING: u16 = 3;
const M_LAG_TOTAL: u16 = 4;
const M_LAG_MAX: u16 = 5;
const M_WRITE_LATENCY: u16 = 6;
const M_WRITES_PROPOSED: u16 = 7;
const M_ENTRIES_PROPOSED: u16 = 8;
const M_APPLY: u16 = 9;
const M_WAL: u16 = 10;
const M_TAGS: &[u16] = &[
    M_REGIONS,
    M_LEADERS,
    M_HIBERNATING,
    M_LAG_TOTAL,
    M_LAG_MAX,
    M_WRITE_LATENCY,
    M_WRITES_PROPOSED,
    M_ENTRIES_PROPOSED,
    M_APPLY,
    M_WAL,
];

const AP_ROUNDS: u16 = 1;
const AP_WITHOUT: u16 = 2;
const AP_SEVERAL: u16 = 3;
const AP_MOST: u16 = 4;

const W_RECORDS: u16 = 1;
const W_GROUPS: u16 = 2;
const W_FSYNCS: u16 = 3;
const W_BYTES: u16 = 4;
const W_ROLLS: u16 = 5;
const W_HIGH_WATER: u16 = 6;
const W_SPARES: u16 = 7;
const W_FSYNC_LATENCY: u16 = 8;
const W_GROUP_RECORDS: u16 = 9;
const W_TAGS: &[u16] = &[
    W_RECORDS,
    W_GROUPS,
    W_FSYNCS,
    W_BYTES,
    W_ROLLS,
    W_HIGH_WATER,
    W_SPARES,
    W_FSYNC_LATENCY,
    W_GROUP_RECORDS,
];

const H_SUM: u16 = 1;
const H_MAX: u16 = 2;
const H_BUCKET: u16 = 3;
const HB_INDEX: u16 = 1;
const HB_SAMPLES: u16 = 2;

fn put_histogram(o: &mut Vec<u8>, tag: u16, h: &HistogramSnapshot) {
    codec::put_nested(o, tag, |o| {
        codec::put_u64(o, H_SUM, h.sum());
        codec::put_u64(o, H_MAX, h.max());
        for (index, samples) in h.buckets() {
            codec::put_nested(o, H_BUCKET, |o| {
                codec::put_u64(o, HB_INDEX, index as u64);
                codec::put_u64(o, HB_SAMPLES, samples);
            });
        }
    });
}

fn histogram_of(rec: &Record<'_>, tag: u16, what: &'static str) -> D<HistogramSnapshot> {
    let r = nested(&rec.required(tag, what)?, &[H_SUM, H_MAX, H_BUCKET])?;
    let mut buckets = Vec::new();
    for field in r.repeated(H_BUCKET) {
        let b = nested(&field, &[HB_INDEX, HB_SAMPLES])?;
        let index = req_u64(&b, HB_INDEX, "bucket index missing")?;
        let index = usize::try_from(index)
            .ok()
            .filter(|&i| i < Histogram::BUCKETS)
            .ok_or_else(|| DecodeError::new(field.offset, "histogram bucket index out of range"))?;
        buckets.push((index, req_u64(&b, HB_SAMPLES, "bucket samples missing")?));
    }
    Ok(HistogramSnapshot::from_parts(
        buckets,
        req_u64(&r, H_SUM, "histogram sum missing")?,
        req_u64(&r, H_MAX, "histogram max missing")?,
    ))
}

fn put_metrics(o: &mut Vec<u8>, tag: u16, m: &StoreMetrics) {
    codec::put_nested(o, tag, |o| put_metrics_fields(o, m));
}

fn put_metrics_fields(o: &mut Vec<u8>, m: &StoreMetrics) {
    codec::put_u64(o, M_REGIONS, m.regions);
    codec::put_u64(o, M_LEADERS, m.leaders);
    codec::put_u64(o, M_HIBERNATING, m.hibernating);
    codec::put_u64(o, M_LAG_TOTAL, m.applied_lag_total);
    codec::put_u64(o, M_LAG_MAX, m.applied_lag_max);
    put_histogram(o, M_WRITE_LATENCY, &m.write_latency_us);
    codec::put_u64(o, M_WRITES_PROPOSED, m.writes_proposed);
    codec::put_u64(o, M_ENTRIES_PROPOSED, m.entries_proposed);
    codec::put_nested(o, M_APPLY, |o| {
        codec::put_u64(o, AP_ROUNDS, m.apply.rounds);
        codec::put_u64(o, AP_WITHOUT, m.apply.rounds_without_regions);
        codec::put_u64(o, AP_SEVERAL, m.apply.rounds_with_several_regions);
        codec::put_u64(o, AP_MOST, m.apply.most_regions_in_a_round as u64);
    });
    let w = &m.wal;
    codec::put_nested(o, M_WAL, |o| {
        codec::put_u64(o, W_RECORDS, w.records);
        codec::put_u64(o, W_GROUPS, w.groups);
        codec::put_u64(o, W_FSYNCS, w.fsyncs);
        codec::put_u64(o, W_BYTES, w.bytes_written);
        codec::put_u64(o, W_ROLLS, w.segment_rolls);
        codec::put_u64(o, W_HIGH_WATER, w.queued_bytes_high_water as u64);
        codec::put_u64(o, W_SPARES, w.spare_segments as u64);
        put_histogram(o, W_FSYNC_LATENCY, &w.fsync_latency_us);
        put_histogram(o, W_GROUP_RECORDS, &w.group_records);
    });
}

/// Decodes a metrics record. Its first fields are required: a metrics record always
/// had them; fields added to it later will be optional.
fn metrics_of(field: &Field<'_>) -> D<StoreMetrics> {
    let rec = nested(field, M_TAGS)?;
    let mut out = StoreMetrics::default();
    out.regions = req_u64(&rec, M_REGIONS, "regions missing")?;
    out.leaders = req_u64(&rec, M_LEADERS, "leaders missing")?;
    out.hibernating = req_u64(&rec, M_HIBERNATING, "hibernating missing")?;
    out.applied_lag_total = req_u64(&rec, M_LAG_TOTAL, "applied lag total missing")?;
    out.applied_lag_max = req_u64(&rec, M_LAG_MAX, "applied lag max missing")?;
    out.write_latency_us = histogram_of(&rec, M_WRITE_LATENCY, "write latency missing")?;
    out.writes_proposed = req_u64(&rec, M_WRITES_PROPOSED, "writes proposed missing")?;
    out.entries_proposed = req_u64(&rec, M_ENTRIES_PROPOSED, "entries proposed missing")?;
    let apply = nested(
        &rec.required(M_APPLY, "apply stats missing")?,
        &[AP_ROUNDS, AP_WITHOUT, AP_SEVERAL, AP_MOST],
    )?;
    out.apply.rounds = req_u64(&apply, AP_ROUNDS, "apply rounds missing")?;
    out.apply.rounds_without_regions = req_u64(&apply, AP_WITHOUT, "apply rounds missing")?;
    out.apply.rounds_with_several_regions = req_u64(&apply, AP_SEVERAL, "apply rounds missing")?;
    out.apply.most_regions_in_a_round =
        usize::try_from(req_u64(&apply, AP_MOST, "apply rounds missing")?).unwrap_or(usize::MAX);
    let wal_rec = nested(&rec.required(M_WAL, "wal stats missing")?, W_TAGS)?;
    let mut wal = WalStats::default();
    wal.records = req_u64(&wal_rec, W_RECORDS, "wal records missing")?;
    wal.groups = req_u64(&wal_rec, W_GROUPS, "wal groups missing")?;
    wal.fsyncs = req_u64(&wal_rec, W_FSYNCS, "wal fsyncs missing")?;
    wal.bytes_written = req_u64(&wal_rec, W_BYTES, "wal bytes missing")?;
    wal.segment_rolls = req_u64(&wal_rec, W_ROLLS, "wal rolls missing")?;
    wal.queued_bytes_high_water =
        usize::try_from(req_u64(&wal_rec, W_HIGH_WATER, "wal high water missing")?)
            .unwrap_or(usize::MAX);
    wal.spare_segments =
        usize::try_from(req_u64(&wal_rec, W_SPARES, "wal spares missing")?).unwrap_or(usize::MAX);
    wal.fsync_latency_us = histogram_of(&wal_rec, W_FSYNC_LATENCY, "fsync latency missing")?;
    wal.group_records = histogram_of(&wal_rec, W_GROUP_RECORDS, "group records missing")?;
    out.wal = wal;
    Ok(out)
}

const MS_REGION: u16 = 1;
const MS_TARGET: u16 = 2;
const MS_INDEX: u16 = 3;
const MS_TERM: u16 = 4;
const MS_ALL_MATCHED: u16 = 5;
const MS_MERGE: u16 = 6;

fn put_merge_status(o: &mut Vec<u8>, s: &MergeStatus) {
    put_region(o, MS_REGION, &s.region);
    if let Some(m) = &s.merge {
        codec::put_nested(o, MS_MERGE, |o| {
            codec::put_u64(o, MS_TARGET, m.target.0);
            codec::put_u64(o, MS_INDEX, m.prepare_index);
            codec::put_u64(o, MS_TERM, m.prepare_term);
        });
    }
    put_flag(o, MS_ALL_MATCHED, s.all_matched);
}

fn merge_status_of(f: &Field<'_>) -> D<MergeStatus> {
    let r = nested(f, &[MS_REGION, MS_ALL_MATCHED, MS_MERGE])?;
    let merge = match r.optional(MS_MERGE)? {
        Some(m) => {
            let m = nested(&m, &[MS_TARGET, MS_INDEX, MS_TERM])?;
            Some(MergeState {
                target: RegionId(req_u64(&m, MS_TARGET, "merge target missing")?),
                prepare_index: req_u64(&m, MS_INDEX, "prepare index missing")?,
                prepare_term: req_u64(&m, MS_TERM, "prepare term missing")?,
            })
        }
        None => None,
    };
    Ok(MergeStatus {
        region: region_of(&r.required(MS_REGION, "region missing")?)?,
        merge,
        all_matched: r.required(MS_ALL_MATCHED, "all_matched missing")?.as_bool()?,
    })
}

const RI_REGION: u16 = 1;
const RI_LEADER: u16 = 2;
const RI_REPLICA: u16 = 3;
const RP_STORE: u16 = 1;
const RP_STATUS: u16 = 2;

fn put_region_info(o: &mut Vec<u8>, tag: u16, info: &RegionInfo) {
    codec::put_nested(o, tag, |o| {
        put_region(o, RI_REGION, &info.region);
        if let Some(l) = info.leader {
            codec::put_u64(o, RI_LEADER, l.0);
        }
        for (store, status) in &info.replicas {
            codec::put_nested(o, RI_REPLICA, |o| {
                codec::put_u64(o, RP_STORE, store.0);
                put_peer_status(o, RP_STATUS, status);
            });
        }
    });
}

fn region_info_of(f: &Field<'_>) -> D<RegionInfo> {
    let r = nested(f, &[RI_REGION, RI_LEADER, RI_REPLICA])?;
    let mut replicas = Vec::new();
    for rep in r.repeated(RI_REPLICA) {
        let p = nested(&rep, &[RP_STORE, RP_STATUS])?;
        replicas.push((
            StoreId(req_u64(&p, RP_STORE, "replica store missing")?),
            peer_status_of(&p.required(RP_STATUS, "replica status missing")?)?,
        ));
    }
    Ok(RegionInfo {
        region: region_of(&r.required(RI_REGION, "region missing")?)?,
        leader: opt_u64(&r, RI_LEADER)?.map(StoreId),
        replicas,
    })
}

// ---- responses ----

const R_ID: u16 = 1;
const R_ERROR: u16 = 2;
const R_DONE: u16 = 30;
const R_VALUE: u16 = 31;
const R_ROWS: u16 = 32;
const R_ADMIN: u16 = 33;
const R_DIRECTORY: u16 = 34;
const R_MERGE_STATUS: u16 = 35;
const R_PEER_STATUS: u16 = 36;
const R_LOCATED: u16 = 37;
const R_STATUS: u16 = 38;
const R_MEMBERS: u16 = 39;
const R_REGIONS: u16 = 40;
const R_SPLIT: u16 = 41;
const R_MERGED: u16 = 42;
const R_NO_REPLY: u16 = 43;
const R_TAGS: &[u16] = &[
    R_ID,
    R_ERROR,
    R_DONE,
    R_VALUE,
    R_ROWS,
    R_ADMIN,
    R_DIRECTORY,
    R_MERGE_STATUS,
    R_PEER_STATUS,
    R_LOCATED,
    R_STATUS,
    R_MEMBERS,
    R_REGIONS,
    R_SPLIT,
    R_MERGED,
    R_NO_REPLY,
];
const SOME: u16 = 1;
const NONE: u16 = 2;
const ROW: u16 = 1;
const ROW_KEY: u16 = 1;
const ROW_VALUE: u16 = 2;

/// A RESPONSE payload.
pub(crate) fn encode_response(id: u64, result: &Result<Response, RemoteError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    codec::put_u64(&mut out, R_ID, id);
    let o = &mut out;
    match result {
        Err(e) => codec::put_nested(o, R_ERROR, |o| e.encode(o)),
        Ok(Response::Done) => codec::put_field(o, R_DONE, &[]),
        Ok(Response::NoReply) => codec::put_field(o, R_NO_REPLY, &[]),
        Ok(Response::Query(QueryResult::Value(v))) => codec::put_nested(o, R_VALUE, |o| match v {
            Some(v) => codec::put_field(o, SOME, v),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::Query(QueryResult::Rows(rows))) => codec::put_nested(o, R_ROWS, |o| {
            for (k, v) in rows {
                codec::put_nested(o, ROW, |o| {
                    codec::put_field(o, ROW_KEY, k);
                    codec::put_field(o, ROW_VALUE, v);
                });
            }
        }),
        Ok(Response::Admin(a)) => codec::put_nested(o, R_ADMIN, |o| put_admin_result(o, a)),
        Ok(Response::Directory(d)) => codec::put_nested(o, R_DIRECTORY, |o| put_dir_result(o, d)),
        Ok(Response::MergeStatus(m)) => {
            codec::put_nested(o, R_MERGE_STATUS, |o| put_merge_status(o, m));
        }
        Ok(Response::PeerStatus(p)) => codec::put_nested(o, R_PEER_STATUS, |o| match p {
            Some(p) => put_peer_status(o, SOME, p),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::Located(l)) => codec::put_nested(o, R_LOCATED, |o| match l {
            Some(r) => put_record(o, SOME, r),
            None => codec::put_field(o, NONE, &[]),
        }),
        Ok(Response::Status(s)) => codec::put_nested(o, R_STATUS, |o| {
            codec::put_u64(o, ST_STORE, s.store.0);
            for p in &s.peers {
                put_peer_status(o, ST_PEER, p);
            }
            if let Some(m) = &s.metrics {
                put_metrics(o, ST_METRICS, m);
            }
        }),
        Ok(Response::Members(m)) => codec::put_nested(o, R_MEMBERS, |o| {
            for (store, addr) in m {
                codec::put_nested(o, 1, |o| {
                    codec::put_u64(o, 1, store.0);
                    codec::put_field(o, 2, addr.as_bytes());
                });
            }
        }),
        Ok(Response::Regions(infos)) => codec::put_nested(o, R_REGIONS, |o| {
            for info in infos {
                put_region_info(o, 1, info);
            }
        }),
        Ok(Response::Split(parts)) => codec::put_nested(o, R_SPLIT, |o| {
            for p in parts {
                put_region(o, 1, p);
            }
        }),
        Ok(Response::Merged(r)) => codec::put_nested(o, R_MERGED, |o| put_region(o, 1, r)),
    }
    out
}

/// Decodes a RESPONSE payload: its request id, and the answer. Never panics.
pub(crate) fn decode_response(
    payload: &[u8],
) -> Result<(u64, Result<Response, RemoteError>), FrameError> {
    let bad = FrameError::malformed("response");
    let rec = parse(payload, R_TAGS).map_err(&bad)?;
    let id = req_u64(&rec, R_ID, "response id missing").map_err(&bad)?;
    let bodies: Vec<Field<'_>> =
        R_TAGS.iter().filter(|&&t| t != R_ID).filter_map(|&t| rec.optional(t).ok()?).collect();
    let [body] = bodies.as_slice() else {
        return Err(FrameError::Malformed {
            what: "response",
            offset: 0,
            reason: "a response needs exactly one known body",
        });
    };
    let answer = decode_response_body(body).map_err(&bad)?;
    Ok((id, answer))
}

/// An optional value: `SOME` with it, or `NONE` (absent is not empty: neither is an
/// error).
fn some_or_none<'a>(f: &Field<'a>) -> D<Option<Field<'a>>> {
    let r = nested(f, &[SOME, NONE])?;
    match (r.optional(SOME)?, r.optional(NONE)?) {
        (Some(s), None) => Ok(Some(s)),
        (None, Some(_)) => Ok(None),
        _ => Err(DecodeError::new(f.offset, "exactly one of some and none")),
    }
}

fn decode_response_body(f: &Field<'_>) -> D<Result<Response, RemoteError>> {
    Ok(Ok(match f.tag {
        R_ERROR => return Ok(Err(RemoteError::decode(f)?)),
        R_DONE => Response::Done,
        R_NO_REPLY => Response::NoReply,
        R_VALUE => Response::Query(QueryResult::Value(
            some_or_none(f)?.map(|v| Bytes::copy_from_slice(v.value)),
        )),
        R_ROWS => {
            let r = nested(f, &[ROW])?;
            let mut rows = Vec::new();
            for row in r.repeated(ROW) {
                let kv = nested(&row, &[ROW_KEY, ROW_VALUE])?;
                rows.push((
                    Bytes::copy_from_slice(kv.required(ROW_KEY, "row key missing")?.value),
                    Bytes::copy_from_slice(kv.required(ROW_VALUE, "row value missing")?.value),
                ));
            }
            Response::Query(QueryResult::Rows(rows))
        }
        R_ADMIN => Response::Admin(admin_result_of(f)?),
        R_DIRECTORY => Response::Directory(dir_result_of(f)?),
        R_MERGE_STATUS => Response::MergeStatus(merge_status_of(f)?),
        R_PEER_STATUS => {
            Response::PeerStatus(some_or_none(f)?.map(|s| peer_status_of(&s)).transpose()?)
        }
        R_LOCATED => Response::Located(some_or_none(f)?.map(|s| record_of(&s)).transpose()?),
        R_STATUS => {
            let r = nested(f, &[ST_STORE, ST_PEER, ST_METRICS])?;
            Response::Status(Box::new(StoreStatus {
                store: StoreId(req_u64(&r, ST_STORE, "store missing")?),
                peers: r.repeated(ST_PEER).map(|p| peer_status_of(&p)).collect::<D<_>>()?,
                metrics: r.optional(ST_METRICS)?.map(|m| metrics_of(&m)).transpose()?,
            }))
        }
        R_MEMBERS => {
            let r = nested(f, &[1])?;
            let mut members = Vec::new();
            for m in r.repeated(1) {
                let m = nested(&m, &[1, 2])?;
                let addr = m.required(2, "member address missing")?;
                let addr = std::str::from_utf8(addr.value)
                    .map_err(|_| DecodeError::new(addr.offset, "address is not UTF-8"))?;
                members.push((StoreId(req_u64(&m, 1, "member store missing")?), addr.to_owned()));
            }
            Response::Members(members)
        }
        R_REGIONS => {
            let r = nested(f, &[1])?;
            Response::Regions(r.repeated(1).map(|i| region_info_of(&i)).collect::<D<_>>()?)
        }
        R_SPLIT => {
            let r = nested(f, &[1])?;
            Response::Split(r.repeated(1).map(|p| region_of(&p)).collect::<D<_>>()?)
        }
        R_MERGED => {
            let r = nested(f, &[1])?;
            Response::Merged(region_of(&r.required(1, "region missing")?)?)
        }
        _ => return Err(DecodeError::new(f.offset, "unknown response body")),
    }))
}

// ---- errors on the wire ----

/// What kind of error a node answered with. Code 0 is reserved: a code this binary
/// does not know (from a newer node) decodes as `Unspecified`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    Unspecified,
    NotLeader,
    EpochNotMatch,
    KeyNotInRegion,
    RegionNotFound,
    RegionExists,
    Merging,
    MergeAborted,
    Dropped,
    Cancelled,
    Timeout,
    InvalidRequest,
    Malformed,
    StoreFailed,
    UnsupportedRequest,
    Unavailable,
    CrossRegionBatch,
    TooLarge,
}

const ERROR_CODES: &[ErrorCode] = &[
    ErrorCode::Unspecified,
    ErrorCode::NotLeader,
    ErrorCode::EpochNotMatch,
    ErrorCode::KeyNotInRegion,
    ErrorCode::RegionNotFound,
    ErrorCode::RegionExists,
    ErrorCode::Merging,
    ErrorCode::MergeAborted,
    ErrorCode::Dropped,
    ErrorCode::Cancelled,
    ErrorCode::Timeout,
    ErrorCode::InvalidRequest,
    ErrorCode::Malformed,
    ErrorCode::StoreFailed,
    ErrorCode::UnsupportedRequest,
    ErrorCode::Unavailable,
    ErrorCode::CrossRegionBatch,
    ErrorCode::TooLarge,
];

impl ErrorCode {
    /// The code on the wire: the position in `ERROR_CODES` (append only).
    fn code(self) -> u64 {
        ERROR_CODES.iter().position(|&c| c == self).unwrap_or(0) as u64
    }

    fn from_code(code: u64) -> ErrorCode {
        usize::try_from(code)
            .ok()
            .and_then(|i| ERROR_CODES.get(i))
            .copied()
            .unwrap_or(ErrorCode::Unspecified)
    }
}

/// An error as it crosses the wire: a code and the fields the client needs to route
/// and retry as a local client would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteError {
    pub code: ErrorCode,
    pub region: Option<RegionId>,
    pub leader: Option<StoreId>,
    pub regions: Vec<Region>,
    pub target: Option<RegionId>,
    pub message: String,
}

const E_CODE: u16 = 1;
const E_REGION: u16 = 2;
const E_LEADER: u16 = 3;
const E_REGIONS: u16 = 4;
const E_MESSAGE: u16 = 5;
const E_TARGET: u16 = 6;

/// Reasons of the Raft layer's `Dropped` and `MergeAborted` errors, which are static
/// strings: a reason that crosses the wire maps back to its own string when this
/// binary knows it.
const KNOWN_REASONS: &[&str] = &[
    "raft-rs dropped the proposal",
    "applied before a restart",
    "its entry was overwritten by a new leader",
    "a membership change is pending; merge after it applied",
    "a source replica did not get the prepare command in time",
    "the target changed (split or membership change)",
];

fn static_reason(message: &str) -> &'static str {
    KNOWN_REASONS
        .iter()
        .find(|r| message.contains(**r))
        .copied()
        .unwrap_or("a reason given by a remote store (see its log)")
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            region: None,
            leader: None,
            regions: Vec::new(),
            target: None,
            message: message.into(),
        }
    }

    fn encode(&self, o: &mut Vec<u8>) {
        codec::put_u64(o, E_CODE, self.code.code());
        if let Some(r) = self.region {
            codec::put_u64(o, E_REGION, r.0);
        }
        if let Some(l) = self.leader {
            codec::put_u64(o, E_LEADER, l.0);
        }
        for r in &self.regions {
            put_region(o, E_REGIONS, r);
        }
        codec::put_field(o, E_MESSAGE, self.message.as_bytes());
        if let Some(t) = self.target {
            codec::put_u64(o, E_TARGET, t.0);
        }
    }

    fn decode(f: &Field<'_>) -> D<RemoteError> {
        let r = nested(f, &[E_CODE, E_REGION, E_LEADER, E_REGIONS, E_MESSAGE, E_TARGET])?;
        Ok(RemoteError {
            code: ErrorCode::from_code(opt_u64(&r, E_CODE)?.unwrap_or(0)),
            region: opt_u64(&r, E_REGION)?.map(RegionId),
            leader: opt_u64(&r, E_LEADER)?.map(StoreId),
            regions: r.repeated(E_REGIONS).map(|f| region_of(&f)).collect::<D<_>>()?,
            target: opt_u64(&r, E_TARGET)?.map(RegionId),
            message: r
                .optional(E_MESSAGE)?
                .map(|m| String::from_utf8_lossy(m.value).into_owned())
                .unwrap_or_default(),
        })
    }

    /// The error as the Raft layer would have returned it in this process. Fields a
    /// retry needs but the node did not send are `None`/empty (unknown), never made up.
    pub fn into_raft(self) -> regionkv_raft::Error {
        use regionkv_raft::Error as E;
        let region = self.region.unwrap_or(RegionId(0));
        match self.code {
            ErrorCode::NotLeader => E::NotLeader { region, leader: self.leader },
            ErrorCode::EpochNotMatch => E::EpochNotMatch { region, current: self.regions },
            ErrorCode::KeyNotInRegion => {
                E::KeyNotInRegion { region, current: self.regions.into_iter().next() }
            }
            ErrorCode::RegionNotFound => E::RegionNotFound { region },
            ErrorCode::RegionExists => E::RegionExists { region },
            ErrorCode::Merging => E::Merging { region, target: self.target.unwrap_or(RegionId(0)) },
            ErrorCode::MergeAborted => {
                E::MergeAborted { region, reason: static_reason(&self.message) }
            }
            ErrorCode::Dropped => E::Dropped { region, reason: static_reason(&self.message) },
            ErrorCode::Cancelled => E::Cancelled,
            ErrorCode::Timeout => E::Timeout { region },
            ErrorCode::InvalidRequest | ErrorCode::CrossRegionBatch | ErrorCode::TooLarge => {
                E::InvalidRequest(self.message)
            }
            ErrorCode::Malformed => E::Malformed(self.message),
            ErrorCode::Unspecified
            | ErrorCode::StoreFailed
            | ErrorCode::UnsupportedRequest
            | ErrorCode::Unavailable => {
                E::Internal(format!("a remote node failed: {}", self.message))
            }
        }
    }

    /// The error as the facade returns it (for requests a node drives: split, merge,
    /// regions).
    pub fn into_facade(self) -> Error {
        match self.code {
            ErrorCode::Unavailable => {
                Error::Unavailable { waited: Duration::ZERO, last: self.message }
            }
            ErrorCode::CrossRegionBatch | ErrorCode::InvalidRequest | ErrorCode::TooLarge => {
                Error::InvalidRequest(self.message)
            }
            ErrorCode::UnsupportedRequest => Error::Protocol(format!(
                "the node does not support this request ({}); upgrade the node",
                self.message
            )),
            ErrorCode::Cancelled => Error::Shutdown,
            _ => Error::Store(self.into_raft()),
        }
    }
}

impl From<&regionkv_raft::Error> for RemoteError {
    fn from(e: &regionkv_raft::Error) -> RemoteError {
        use regionkv_raft::Error as E;
        let mut out = RemoteError::new(ErrorCode::StoreFailed, e.to_string());
        match e {
            E::NotLeader { region, leader } => {
                out.code = ErrorCode::NotLeader;
                out.region = Some(*region);
                out.leader = *leader;
            }
            E::EpochNotMatch { region, current } => {
                out.code = ErrorCode::EpochNotMatch;
                out.region = Some(*region);
                out.regions.clone_from(current);
            }
            E::KeyNotInRegion { region, current } => {
                out.code = ErrorCode::KeyNotInRegion;
                out.region = Some(*region);
                out.regions = current.iter().cloned().collect();
            }
            E::RegionNotFound { region } => {
                out.code = ErrorCode::RegionNotFound;
                out.region = Some(*region);
            }
            E::RegionExists { region } => {
                out.code = ErrorCode::RegionExists;
                out.region = Some(*region);
            }
            E::Merging { region, target } => {
                out.code = ErrorCode::Merging;
                out.region = Some(*region);
                out.target = Some(*target);
            }
            E::MergeAborted { region, reason } => {
                out.code = ErrorCode::MergeAborted;
                out.region = Some(*region);
                (*reason).clone_into(&mut out.message);
            }
            E::Dropped { region, reason } => {
                out.code = ErrorCode::Dropped;
                out.region = Some(*region);
                (*reason).clone_into(&mut out.message);
            }
            E::Cancelled => out.code = ErrorCode::Cancelled,
            E::Timeout { region } => {
                out.code = ErrorCode::Timeout;
                out.region = Some(*region);
            }
            E::InvalidRequest(m) => {
                out.code = ErrorCode::InvalidRequest;
                out.message.clone_from(m);
            }
            E::Malformed(m) => {
                out.code = ErrorCode::Malformed;
                out.message.clone_from(m);
            }
            // A store's own failure (I/O, corruption, a bug): the message says which.
            _ => {}
        }
        out
    }
}

impl From<&Error> for RemoteError {
    fn from(e: &Error) -> RemoteError {
        match e {
            Error::Store(e) => RemoteError::from(e),
            Error::Unavailable { .. } => RemoteError::new(ErrorCode::Unavailable, e.to_string()),
            Error::CrossRegionBatch { .. } => {
                RemoteError::new(ErrorCode::CrossRegionBatch, e.to_string())
            }
            Error::InvalidRequest(m) => RemoteError::new(ErrorCode::InvalidRequest, m.clone()),
            Error::Shutdown => RemoteError::new(ErrorCode::Cancelled, e.to_string()),
            _ => RemoteError::new(ErrorCode::StoreFailed, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use regionkv_engine::Peer;

    use super::*;

    fn region(id: u64, start: &str, end: Option<&str>) -> Region {
        Region {
            id: RegionId(id),
            start: start.as_bytes().to_vec(),
            end: end.map(|e| e.as_bytes().to_vec()),
            epoch: Epoch { version: 3, conf_ver: 2 },
            peers: vec![Peer { id: PeerId(1), store: StoreId(1) }],
        }
    }

    fn status() -> PeerStatus {
        PeerStatus {
            region: region(1, "", None),
            peer: PeerId(2),
            role: StateRole::Leader,
            term: 7,
            leader: Some(PeerId(2)),
            commit: 10,
            applied: 9,
            last_index: 11,
            initialized: true,
            hibernated: false,
        }
    }

    fn requests() -> Vec<Request> {
        let epoch = Epoch { version: 2, conf_ver: 1 };
        vec![
            Request::Write {
                region: RegionId(4),
                epoch,
                ops: vec![
                    Op::Put { key: Bytes::from_static(b"k"), value: Bytes::new() },
                    Op::Delete { key: Bytes::from_static(b"d") },
                ],
            },
            Request::Read { region: RegionId(4), epoch, query: Query::Get { key: "k".into() } },
            Request::Read {
                region: RegionId(4),
                epoch,
                query: Query::Scan { start: Bytes::new(), end: Some("z".into()), limit: 5 },
            },
            Request::Read {
                region: RegionId(4),
                epoch,
                query: Query::Scan { start: "a".into(), end: None, limit: 5 },
            },
            Request::Admin {
                region: RegionId(1),
                epoch,
                cmd: AdminCmd::Split {
                    split_keys: vec![b"m".to_vec(), b"t".to_vec()],
                    new_ids: vec![RegionId(8), RegionId(9)],
                },
            },
            Request::Admin {
                region: RegionId(1),
                epoch,
                cmd: AdminCmd::PrepareMerge { target: region(2, "", Some("m")) },
            },
            Request::Admin {
                region: RegionId(1),
                epoch,
                cmd: AdminCmd::CommitMerge {
                    source: region(3, "m", None),
                    prepare_index: 5,
                    prepare_term: 2,
                },
            },
            Request::Admin {
                region: RegionId(1),
                epoch,
                cmd: AdminCmd::RollbackMerge { prepare_index: 5 },
            },
            Request::Directory { cmd: DirCmd::AllocIds { count: 3 } },
            Request::Directory {
                cmd: DirCmd::Report {
                    records: vec![
                        RegionRecord { region: region(1, "", None), leader: Some(StoreId(2)) },
                        RegionRecord { region: region(5, "a", Some("b")), leader: None },
                    ],
                },
            },
            Request::MergeStatus { region: RegionId(3) },
            Request::PeerStatus { region: RegionId(3) },
            Request::Locate { key: Vec::new() },
            Request::Status,
            Request::Members,
            Request::Split { key: b"m".to_vec() },
            Request::Merge { left: RegionId(1), right: RegionId(2) },
            Request::Regions,
            Request::LocalScan { start: b"a".to_vec(), end: None, limit: 9 },
        ]
    }

    fn responses() -> Vec<Result<Response, RemoteError>> {
        let mut epoch_err = RemoteError::new(ErrorCode::EpochNotMatch, "changed");
        epoch_err.region = Some(RegionId(1));
        epoch_err.regions = vec![region(1, "", Some("m")), region(2, "m", None)];
        vec![
            Ok(Response::Done),
            Ok(Response::NoReply),
            Ok(Response::Query(QueryResult::Value(None))),
            Ok(Response::Query(QueryResult::Value(Some(Bytes::new())))),
            Ok(Response::Query(QueryResult::Rows(vec![("a".into(), "1".into())]))),
            Ok(Response::Admin(AdminResult::Split(vec![region(1, "", Some("m"))]))),
            Ok(Response::Admin(AdminResult::Prepared {
                source: region(2, "m", None),
                prepare_index: 4,
                prepare_term: 3,
            })),
            Ok(Response::Admin(AdminResult::Merged(region(1, "", None)))),
            Ok(Response::Admin(AdminResult::RolledBack(region(2, "m", None)))),
            Ok(Response::Directory(DirResult::Ids { first: 10, count: 2 })),
            Ok(Response::Directory(DirResult::Reported { taken: 3 })),
            Ok(Response::MergeStatus(MergeStatus {
                region: region(2, "m", None),
                merge: Some(MergeState { target: RegionId(1), prepare_index: 3, prepare_term: 1 }),
                all_matched: true,
            })),
            Ok(Response::PeerStatus(Some(status()))),
            Ok(Response::PeerStatus(None)),
            Ok(Response::Located(None)),
            Ok(Response::Located(Some(RegionRecord {
                region: region(1, "", None),
                leader: Some(StoreId(3)),
            }))),
            Ok(Response::Status(Box::new(StoreStatus {
                store: StoreId(2),
                peers: vec![status()],
                metrics: None,
            }))),
            Ok(Response::Status(Box::new(StoreStatus {
                store: StoreId(2),
                peers: vec![status()],
                metrics: Some(metrics()),
            }))),
            Ok(Response::Members(vec![(StoreId(1), "127.0.0.1:1".into())])),
            Ok(Response::Regions(vec![RegionInfo {
                region: region(1, "", None),
                leader: Some(StoreId(1)),
                replicas: vec![(StoreId(1), status())],
            }])),
            Ok(Response::Split(vec![region(1, "", Some("m")), region(2, "m", None)])),
            Ok(Response::Merged(region(1, "", None))),
            Err(epoch_err),
            Err(RemoteError::new(ErrorCode::Cancelled, "stopping")),
        ]
    }

    /// Metrics with every field set, histograms with several buckets.
    fn metrics() -> StoreMetrics {
        let histogram = |values: &[u64]| {
            let h = regionkv_wal::Histogram::new();
            for &v in values {
                h.record(v);
            }
            h.snapshot()
        };
        let mut wal = WalStats::default();
        wal.records = 900;
        wal.groups = 300;
        wal.fsyncs = 310;
        wal.bytes_written = 1 << 20;
        wal.segment_rolls = 2;
        wal.queued_bytes_high_water = 4096;
        wal.spare_segments = 1;
        wal.fsync_latency_us = histogram(&[0, 90, 150, 2000, u64::MAX]);
        wal.group_records = histogram(&[1, 1, 3, 7]);
        let mut apply = regionkv_raft::ApplyStats::default();
        apply.rounds = 40;
        apply.rounds_without_regions = 3;
        apply.rounds_with_several_regions = 5;
        apply.most_regions_in_a_round = 4;
        let mut m = StoreMetrics::default();
        m.regions = 6;
        m.leaders = 2;
        m.hibernating = 1;
        m.applied_lag_total = 11;
        m.applied_lag_max = 7;
        m.write_latency_us = histogram(&[400, 800, 1600]);
        m.writes_proposed = 1000;
        m.entries_proposed = 250;
        m.apply = apply;
        m.wal = wal;
        m
    }

    /// A status response as a node from before metrics encodes it: store and peers.
    fn status_without_metrics(id: u64) -> Vec<u8> {
        let mut out = Vec::new();
        codec::put_u64(&mut out, R_ID, id);
        codec::put_nested(&mut out, R_STATUS, |o| {
            codec::put_u64(o, 1, 2);
            put_peer_status(o, 2, &status());
        });
        out
    }

    #[test]
    fn status_without_metrics_decodes_as_none_not_zeros() {
        let (id, back) = decode_response(&status_without_metrics(5)).unwrap();
        assert_eq!(id, 5);
        let Ok(Response::Status(s)) = back else { panic!("not a status: {back:?}") };
        assert_eq!((s.store, s.peers, s.metrics), (StoreId(2), vec![status()], None));
    }

    #[test]
    fn status_metrics_round_trip_and_keep_their_quantiles() {
        let sent = StoreStatus { store: StoreId(2), peers: vec![], metrics: Some(metrics()) };
        let payload = encode_response(9, &Ok(Response::Status(Box::new(sent.clone()))));
        let (_, back) = decode_response(&payload).unwrap();
        let Ok(Response::Status(got)) = back else { panic!("not a status: {back:?}") };
        assert_eq!(*got, sent);
        let (m, want) = (got.metrics.unwrap(), metrics());
        assert_eq!(m.write_latency_us.p99(), want.write_latency_us.p99());
        assert_eq!(m.wal.fsync_latency_us.max(), u64::MAX);
        assert_eq!(m.wal.group_records.count(), 4);
        assert!((m.writes_per_entry() - 4.0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_newer_metrics_record_with_unknown_tags_still_decodes() {
        // A newer node adds tags to the status and to its metrics; this reader skips them.
        let mut out = Vec::new();
        codec::put_u64(&mut out, R_ID, 1);
        codec::put_nested(&mut out, R_STATUS, |o| {
            codec::put_u64(o, ST_STORE, 2);
            codec::put_u64(o, 99, 1234);
            codec::put_nested(o, ST_METRICS, |o| {
                put_metrics_fields(o, &metrics());
                codec::put_u64(o, 77, 5);
                codec::put_nested(o, M_WAL + 1, |o| codec::put_u64(o, 1, 1));
            });
        });
        let (_, back) = decode_response(&out).unwrap();
        let Ok(Response::Status(got)) = back else { panic!("not a status: {back:?}") };
        assert_eq!(got.metrics, Some(metrics()));
    }

    #[test]
    fn malformed_metrics_are_an_error_not_a_panic() {
        // A bucket index past the last bucket.
        let mut out = Vec::new();
        codec::put_u64(&mut out, R_ID, 1);
        codec::put_nested(&mut out, R_STATUS, |o| {
            codec::put_u64(o, ST_STORE, 2);
            codec::put_nested(o, ST_METRICS, |o| {
                codec::put_nested(o, M_WRITE_LATENCY, |o| {
                    codec::put_u64(o, H_SUM, 1);
                    codec::put_u64(o, H_MAX, 1);
                    codec::put_nested(o, H_BUCKET, |o| {
                        codec::put_u64(o, HB_INDEX, 65);
                        codec::put_u64(o, HB_SAMPLES, 1);
                    });
                });
            });
        });
        assert!(decode_response(&out).is_err());
        // A metrics record missing its fields is not taken as zeros.
        let mut out = Vec::new();
        codec::put_u64(&mut out, R_ID, 1);
        codec::put_nested(&mut out, R_STATUS, |o| {
            codec::put_u64(o, ST_STORE, 2);
            codec::put_nested(o, ST_METRICS, |_| {});
        });
        assert!(decode_response(&out).is_err());
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for (i, req) in requests().into_iter().enumerate() {
            let payload = encode_request(i as u64, &req);
            let (id, back) = decode_request(&payload).unwrap();
            assert_eq!((id, &back), (i as u64, &req));
        }
        for (i, resp) in responses().into_iter().enumerate() {
            let payload = encode_response(i as u64, &resp);
            let (id, back) = decode_response(&payload).unwrap();
            assert_eq!((id, back), (i as u64, resp));
        }
    }

    #[test]
    fn errors_keep_what_routing_needs() {
        let errors = [
            regionkv_raft::Error::NotLeader { region: RegionId(3), leader: Some(StoreId(2)) },
            regionkv_raft::Error::EpochNotMatch {
                region: RegionId(3),
                current: vec![region(3, "", Some("m")), region(4, "m", None)],
            },
            regionkv_raft::Error::KeyNotInRegion {
                region: RegionId(3),
                current: Some(region(3, "", Some("m"))),
            },
            regionkv_raft::Error::RegionNotFound { region: RegionId(3) },
            regionkv_raft::Error::Merging { region: RegionId(3), target: RegionId(1) },
            regionkv_raft::Error::Dropped {
                region: RegionId(3),
                reason: "applied before a restart",
            },
            regionkv_raft::Error::Cancelled,
        ];
        for e in errors {
            let wire = encode_response(1, &Err(RemoteError::from(&e)));
            let (_, back) = decode_response(&wire).unwrap();
            let back = back.unwrap_err().into_raft();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
            assert_eq!(back.is_retryable(), e.is_retryable());
            assert_eq!(back.is_cancelled(), e.is_cancelled());
        }
    }

    #[test]
    fn unknown_codes_and_kinds_are_unspecified_not_errors() {
        let mut payload = Vec::new();
        codec::put_u64(&mut payload, R_ID, 9);
        codec::put_nested(&mut payload, R_ERROR, |o| {
            codec::put_u64(o, E_CODE, 999);
            codec::put_field(o, 77, b"a field from the future");
        });
        let (id, answer) = decode_response(&payload).unwrap();
        assert_eq!(id, 9);
        assert_eq!(answer.unwrap_err().code, ErrorCode::Unspecified);
        // A request of a kind from the future: well-formed, unsupported.
        let mut payload = Vec::new();
        codec::put_u64(&mut payload, Q_ID, 4);
        codec::put_field(&mut payload, 999, b"?");
        assert!(matches!(decode_request(&payload), Err(RequestError::Unsupported { id: 4 })));
        // A role from the future is not leadership.
        assert_eq!(role_of(0), StateRole::Follower);
        assert_eq!(role_of(77), StateRole::Follower);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            if let Ok(h) = <[u8; HEADER_BYTES]>::try_from(&bytes[..HEADER_BYTES.min(len)]) {
                let _ = Header::parse(&h, REQUEST_BYTES_MAX);
            }
        }
        // Every single-byte truncation of valid payloads fails cleanly.
        for req in requests() {
            let payload = encode_request(1, &req);
            for cut in 0..payload.len() {
                let _ = decode_request(&payload[..cut]);
            }
        }
        for resp in responses() {
            let payload = encode_response(1, &resp);
            for cut in 0..payload.len() {
                let _ = decode_response(&payload[..cut]);
            }
        }
    }

    #[test]
    fn frame_headers_are_checked_before_the_payload() {
        let frame = encode_frame(Kind::Request, b"hello").unwrap();
        let header: [u8; HEADER_BYTES] = frame[..HEADER_BYTES].try_into().unwrap();
        let h = Header::parse(&header, 1024).unwrap();
        assert_eq!((h.kind, h.len), (Kind::Request, 5));
        h.check(&frame[HEADER_BYTES..]).unwrap();
        assert!(matches!(Header::parse(&header, 4), Err(FrameError::TooLarge { len: 5, max: 4 })));
        let mut v2 = header;
        v2[4] = 2;
        assert!(matches!(Header::parse(&v2, 1024), Err(FrameError::Version(2))));
        let mut store = header;
        store[..4].copy_from_slice(&wire::MAGIC);
        assert!(matches!(Header::parse(&store, 1024), Err(FrameError::BadMagic(_))));
        assert!(matches!(h.check(b"hellO"), Err(FrameError::Checksum { .. })));
    }
}
