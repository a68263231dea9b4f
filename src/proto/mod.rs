//! The client protocol, version 1: how a process that hosts no store talks to a running
//! [`Node`](crate::Node). Its frames, handshake, requests, responses and errors.
//!
//! Clients connect to a node's one listening address: the store transport reads the
//! first byte of every accepted connection, and a connection that opens with this
//! protocol's magic is served here instead of as a store (`SharedListener` in
//! `regionkv_raft::transport::tcp`).
//!
//! ## Frames
//!
//! The store transport's frames (`regionkv_raft::transport::frame`: a 14-byte header
//! of magic, version, kind, payload length and payload CRC32, then the payload), with
//! this protocol's own magic `"rkvc"`, version 1 and kinds HELLO, PROOF, ACCEPT,
//! REJECT, REQUEST and RESPONSE ([`FRAMES`]).
//!
//! The magic's first byte differs from the store protocol's (`"RKVW"`), which is how
//! the listener tells them apart. A reader checks magic, version, kind and length
//! (against its own bound: [`REQUEST_BYTES_MAX`] on a node, [`RESPONSE_BYTES_MAX`] on a
//! client, [`HANDSHAKE_FRAME_BYTES_MAX`](regionkv_raft::transport::handshake::HANDSHAKE_FRAME_BYTES_MAX) during the handshake) before it reads a payload
//! byte, and the CRC32 before it decodes one.
//!
//! ## Handshake
//!
//! The store transport's handshake (`regionkv_raft::transport::handshake`), with the
//! client as connector and store id 0 (a node's own backend, which reaches the other
//! nodes' stores over this protocol, connects with its store id instead: raw admin,
//! directory and membership requests are answered only on such connections; a client
//! gets `not allowed` and asks for split, merge and membership by intent):
//!
//! ```text
//!  C -> N  HELLO  { cluster id, 0, nonce_c, 4 highest client protocol version }
//!  N -> C  HELLO  { cluster id, N's store id, nonce_n }  PROOF { acceptor mac }
//!  C -> N  PROOF  { connector mac }
//!  N -> C  ACCEPT            (or REJECT { reason } at any step, then close)
//! ```
//!
//! The MACs are the store transport's, under a key derived from the cluster secret for
//! this protocol only ([`client_key`]): a proof made for a client connection is never
//! valid for a store connection, nor the reverse.
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
//!                       3 op* { 1 kind (1 put, 2 delete), 2 key, 3 value },
//!                       4 session { 1 id, 2 seq } (optional: exactly once) }
//!            11 read  { 1 region, 2 epoch, 3 get { 1 key } | 4 scan { 1 start,
//!                       2 end | 3 unbounded, 4 limit } }
//!            12 admin { 1 region, 2 epoch, 3 cmd }      13 directory { 1 cmd }
//!            14 merge status { 1 region }                15 peer status { 1 region }
//!            16 locate { 1 key }       17 status       18 members
//!            19 split { 1 key }        20 merge { 1 left, 2 right }     21 regions
//!            22 local scan { 1 start, 2 end | 3 unbounded, 4 limit }
//!            23 change peers { 1 region, 2 epoch, 3 change { 1 kind (1 add voter,
//!                       2 add learner, 3 remove), 2 peer id, 3 store (adds only) } }
//!            24 store add { 1 store, 2 address }      25 store remove { 1 store }
//!            26 member { 1 store, 2 address }
//!            27 cluster version (the version this node's directory replica holds)
//!            28 upgrade status      29 finalize upgrade { 1 target (optional) }
//!            32 health { 1 audit (0/1) }   (since the health monitor; an older node
//!                       answers unsupported)
//!            33 txn { ... }   34 txn ids { 1 count }   (since transactions: `txn.rs`;
//!                       an older node answers unsupported)
//!            35 txn list   36 txn recover   (the recovery daemon's: `txn_ops.rs`)
//!            80 duplications   81 duplication command   (`dup.rs`)
//!            82 sink { a follower region's duplication sink command } (`sink.rs`;
//!                       an older node answers unsupported)
//!  RESPONSE  1 id u64, and exactly one of
//!            2 error { 1 code, 2 region, 3 leader store, 4 region*, 5 message, 6 target,
//!                      7 reason (optional: the code of a drop or merge-abort reason),
//!                      8 feature, 9 active version, 10 needed version, 11 store,
//!                      12 supported version (each optional: feature not active,
//!                      upgrade refused), 13 to 17: a transaction refusal's fields
//!                      (each optional; `txn.rs`) }
//!                      (code 18, cancelled in flight: the outcome is unknown)
//!            30 done  31 value { 1 value | 2 none }  32 rows { 1 row* { 1 key, 2 value } }
//!            33 admin result  34 directory result  35 merge status
//!            36 peer status { 1 status | 2 none }  37 located { 1 record | 2 none }
//!            38 status { 1 store, 2 peer status*, 3 metrics (optional, since 0.1),
//!                        4 to 12: status schema 2 (optional; `status.rs`),
//!                        11 cluster version active, 13 cluster version max (optional:
//!                        absent from a store before the version gate) }
//!            39 members { 1 member* { 1 store, 2 address } }  40 regions { 1 region info* }
//!            41 split { 1 region* }  42 merged { 1 region }  43 no reply
//!            44 peers changed { 1 region }  45 store changed { 1 region* }
//!            46 cluster version { 1 version | 2 none }
//!            47 upgrade status { 1 active, 2 store* { 1 store, 2 active, 3 max (each
//!                       optional: not reported) } }
//!            50 health (the record in `health.rs`)
//!            51 txn { 1 kind, 2 state } (`txn.rs`)
//!            52 txn entries   53 txn turn   (`txn_ops.rs`)
//!            80 duplications (`dup.rs`)   83 sink { applied | refused } (`sink.rs`)
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
//! `None` when absent (absent is not empty), and enum codes reserve 0 for
//! "unspecified": an unknown error code (or reason code) decodes as `Unspecified`, an
//! unknown request kind is answered with `UnsupportedRequest`, an unknown
//! role as a follower (never taken for leadership) and as `ReportedRole::Unspecified`
//! for a monitor (`status.rs`). A node that drops a request
//! unanswered (its store stopped) says so with `no reply`, which the client treats as
//! silence: the outcome is unknown.

mod dup;
#[cfg(test)]
mod dup_tests;
mod error;
mod health;
mod outbox;
mod records;
mod request;
mod response;
mod sink;
mod status;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod tests;
mod tso;
mod txn;
mod txn_ops;
#[cfg(test)]
mod txn_tests;

use std::net::TcpStream;
use std::time::Duration;

use regionkv_engine::codec;
use regionkv_engine::{Epoch, Region, RegionId, StoreId};
use regionkv_raft::directory::{DirCmd, DirResult, RegionRecord};
use regionkv_raft::transport::frame::{
    FrameFormat, FrameKind, FrameReader, WireError, begin_frame,
};
use regionkv_raft::transport::handshake::{
    Authenticated, ClusterId, Expect, Handshake, HandshakeError, HandshakeKey, Names,
};
use regionkv_raft::transport::seal::LinkMode;
use regionkv_raft::transport::wire;
use regionkv_raft::{
    AdminCmd, AdminResult, MergeStatus, Op, PeerChange, PeerStatus, Query, QueryResult, TxnCmd,
    TxnReply, WriteSession,
};
use regionkv_wal::CancellationToken;

use crate::region_info::RegionInfo;

pub(crate) use self::error::{ErrorCode, RemoteError};
pub(crate) use self::health::HealthAnswer;
pub(crate) use self::outbox::Outbox;
pub(crate) use self::request::{RequestError, decode_request, encode_request};
pub(crate) use self::response::{decode_response, encode_response};
pub(crate) use self::sink::SinkAnswer;
pub use self::status::{Capacity, STATUS_SCHEMA, StoreState, StoreStatus};
#[allow(unused_imports, reason = "the health monitor's matrix uses them")]
pub(crate) use self::status::{StatusSchema, decode_store_status, encode_store_status};
pub(crate) use self::txn::TXN_IDS_MAX;

/// The first four bytes of every client-protocol frame.
pub const MAGIC: [u8; 4] = *b"rkvc";
/// The client protocol version this binary speaks (and the only one it reads).
pub const VERSION: u8 = 1;
/// Bytes of a frame header.
#[cfg(test)]
pub const HEADER_BYTES: usize = regionkv_raft::transport::frame::FRAME_HEADER_BYTES;
/// The largest request payload a node reads (a write batch must fit).
pub const REQUEST_BYTES_MAX: u32 = 16 << 20;
/// The largest response payload a client reads (a scan's rows must fit).
pub const RESPONSE_BYTES_MAX: u32 = 64 << 20;
/// Requests a connection may have outstanding at once.
pub const IN_FLIGHT_MAX: usize = 256;
/// The store id a client claims in its HELLO: no store has it.
pub const CLIENT_ID: StoreId = StoreId(0);

/// The client protocol's frames.
pub const FRAMES: FrameFormat = FrameFormat {
    protocol: "the regionkv client protocol",
    magic: MAGIC,
    version: VERSION,
    kinds: &[
        FrameKind::Hello,
        FrameKind::Proof,
        FrameKind::Accept,
        FrameKind::Reject,
        FrameKind::Request,
        FrameKind::Response,
    ],
};

// The listener tells the two protocols apart by their first byte.
const _: () = assert!(MAGIC[0] != wire::MAGIC[0], "the listener tells protocols apart by byte 0");
// A header's kind byte must name one kind of the protocol.
const _: () = assert!(FRAMES.kinds_are_distinct(), "the client protocol's kinds differ");
const _: () = assert!(REQUEST_BYTES_MAX <= RESPONSE_BYTES_MAX);

/// Bytes read into memory at a time: a peer that announces a large frame and stalls
/// costs at most this much.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// The label of the client protocol's handshake key.
const KEY_LABEL: &[u8] = b"regionkv client protocol v1\0";
/// HELLO field of the client: the highest client protocol version it speaks.
const H_PROTOCOL_VERSION: u16 = 4;

/// The key of client-protocol proofs: derived from the cluster secret, and distinct
/// from the store transport's key for the same secret.
pub fn client_key(secret: &[u8]) -> HandshakeKey {
    HandshakeKey::derive_labelled(KEY_LABEL, secret)
}

/// A reader of client-protocol frames that gives up on a frame stalled for `stall`,
/// and stops once `cancel` (if any) is cancelled.
pub(crate) fn reader(cancel: Option<&CancellationToken>, stall: Duration) -> FrameReader<'_> {
    FrameReader { format: &FRAMES, cancel, stall, chunk_bytes: READ_CHUNK_BYTES }
}

/// A whole client-protocol frame.
pub(crate) fn encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    FRAMES.encode(kind, payload)
}

/// Appends a whole client-protocol frame to `out` (which may hold frames already, to
/// be written with one system call); on error `out` is as it was.
pub(crate) fn encode_frame_into(
    out: &mut Vec<u8>,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), WireError> {
    let at = out.len();
    begin_frame(out);
    out.extend_from_slice(payload);
    let finished = FRAMES.finish(&mut out[at..], kind);
    if finished.is_err() {
        out.truncate(at);
    }
    finished
}

/// The client's side of the handshake, as store `me` (`CLIENT_ID` for a client, a
/// node's own id for its backend), on links of mode `link`; returns the node's store
/// id and, sealed, the connection's keys.
pub(crate) fn handshake_client(
    stream: &mut TcpStream,
    key: &HandshakeKey,
    cluster: ClusterId,
    me: StoreId,
    timeout: Duration,
    link: LinkMode,
) -> Result<Authenticated, HandshakeError> {
    let mut hello_extra = Vec::new();
    codec::put_u64(&mut hello_extra, H_PROTOCOL_VERSION, u64::from(VERSION));
    let side = Handshake {
        reader: reader(None, timeout),
        key,
        client_key: None,
        link,
        cluster,
        me,
        timeout,
        hello_extra: &hello_extra,
        names: Names { me: "this client", peer: "the node" },
        vet: None,
    };
    side.connect(stream, Expect::Any)
}

/// The keys a node's side of the client protocol's handshake checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeKeys<'a> {
    /// From the cluster secret: what another node's backend proves (it claims its
    /// store id), and a client too when clients have no secret of their own.
    pub stores: &'a HandshakeKey,
    /// From the client secret, if the node has one: what a client (`CLIENT_ID`)
    /// proves; a client holding only it cannot claim a store id.
    pub clients: Option<&'a HandshakeKey>,
}

/// The node's side of the handshake; returns who connected: `CLIENT_ID` for a client,
/// another store's id for a node's backend; and, sealed, the connection's keys.
pub(crate) fn handshake_node(
    stream: &mut TcpStream,
    reader: FrameReader<'_>,
    keys: NodeKeys<'_>,
    cluster: ClusterId,
    me: StoreId,
    timeout: Duration,
    link: LinkMode,
) -> Result<Authenticated, HandshakeError> {
    let side = Handshake {
        reader,
        key: keys.stores,
        client_key: keys.clients,
        link,
        cluster,
        me,
        timeout,
        hello_extra: &[],
        names: Names { me: "this node", peer: "the client" },
        vet: None,
    };
    side.accept(stream, Expect::NotMe)
}

/// What a client asks a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// A write; `session` absent (a client from before sessions): applied each time.
    Write {
        region: RegionId,
        epoch: Epoch,
        ops: Vec<Op>,
        session: Option<WriteSession>,
    },
    Read {
        region: RegionId,
        epoch: Epoch,
        query: Query,
    },
    Admin {
        region: RegionId,
        epoch: Epoch,
        cmd: AdminCmd,
    },
    Directory {
        cmd: DirCmd,
    },
    MergeStatus {
        region: RegionId,
    },
    PeerStatus {
        region: RegionId,
    },
    Locate {
        key: Vec<u8>,
    },
    Status,
    Members,
    Split {
        key: Vec<u8>,
    },
    Merge {
        left: RegionId,
        right: RegionId,
    },
    Regions,
    LocalScan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    },
    /// One membership change of one region, to its leader (a node's own backend).
    ChangePeers {
        region: RegionId,
        epoch: Epoch,
        change: PeerChange,
    },
    /// Add store `store` (listening at `addr`) to every region; the node drives it.
    StoreAdd {
        store: StoreId,
        addr: String,
    },
    /// Remove store `store` from every region; the node drives it.
    StoreRemove {
        store: StoreId,
    },
    /// Store `store` listens at `addr`: the node dials it there from now on.
    Member {
        store: StoreId,
        addr: String,
    },
    /// The cluster version this node's directory replica holds.
    ClusterVersion,
    /// The active cluster version and what every store reports; the node asks them.
    UpgradeStatus,
    /// Raise the cluster version to `target` (`None`: the newest the node runs);
    /// the node drives it.
    FinalizeUpgrade {
        target: Option<u32>,
    },
    /// The health monitor's last report, or (`audit`) its audit; answered by the node
    /// that runs it, else "not the monitor" (health.rs).
    Health {
        audit: bool,
    },
    /// One transaction command to one region (`txn.rs`); since cluster version 3.
    Txn {
        region: RegionId,
        epoch: Epoch,
        cmd: TxnCmd,
    },
    /// `count` fresh transaction ids from the directory (at most `TXN_IDS_MAX`); the
    /// node asks the directory's leader. Answered with `Directory(Ids)`.
    TxnIds {
        count: u64,
    },
    /// `count` consecutive timestamps from the oracle (`tso.rs`): the node's store
    /// must lead the directory. Answered with `Timestamps`.
    Timestamps {
        count: u32,
    },
    /// The locks and records of the regions the node's store leads (`txn_ops.rs`).
    TxnList {
        in_doubt_only: bool,
        older_than_ms: Option<u64>,
    },
    /// One recovery turn now on the node's store (`region`: that one only).
    TxnRecover {
        region: Option<RegionId>,
    },
    /// The duplications the node's replica of the directory holds.
    Dups,
    /// A duplication's `AddDup` or `AlterDup`, which the node proposes to the
    /// directory for the client.
    DupCommand {
        cmd: DirCmd,
    },
    /// A duplication's sink command for follower region `region`, to its leader
    /// (`sink.rs`; a shipper of another cluster sends it).
    Sink {
        region: RegionId,
        cmd: regionkv_raft::sink::SinkEntryCmd,
    },
}

/// A node's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    Done,
    Query(QueryResult),
    Admin(AdminResult),
    Directory(DirResult),
    MergeStatus(MergeStatus),
    PeerStatus(Option<Box<PeerStatus>>),
    Located(Option<RegionRecord>),
    Status(Box<StoreStatus>),
    Members(Vec<(StoreId, String)>),
    Split(Vec<Region>),
    Merged(Region),
    Regions(Vec<RegionInfo>),
    /// The region after a membership change.
    PeersChanged(Region),
    /// The regions a store was added to or removed from, as they are after it.
    StoreChanged(Vec<Region>),
    /// The node's store dropped the request without an answer: its outcome is unknown.
    NoReply,
    /// A cluster version (`None`: the node's store hosts no replica of the directory).
    ClusterVersion(Option<u32>),
    /// The cluster version and what each store reports.
    UpgradeStatus(crate::UpgradeStatus),
    /// The health monitor's report or audit, or "not the monitor".
    Health(HealthAnswer),
    /// A transaction command's answer.
    Txn(TxnReply),
    /// The answer `Done` to a staging prewrite, confirmed (txn answer tag 70): the
    /// node read the flag and proposed it. A client of an older binary reads `Done`.
    TxnStaged,
    /// The answer to `TxnList`.
    TxnEntries(Vec<crate::TxnEntry>),
    /// The answer to `TxnRecover`.
    TxnTurn(Box<crate::TxnRecoveryTurn>),
    /// The first of the timestamps asked for.
    Timestamps(u64),
    /// The duplications (`None`: the node's store hosts no replica of the directory).
    Dups(Option<Vec<regionkv_raft::directory::DupRecord>>),
    /// A sink command's outcome: applied, or refused by the follower region.
    Sink(SinkAnswer),
}
