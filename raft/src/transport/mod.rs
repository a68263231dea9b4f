//! Moving messages between stores.
//!
//! A store hands [`Envelope`]s to a [`Transport`], which delivers them, batched, to the
//! [`Inbox`] of the store they are addressed to. Delivery is best effort: a transport
//! may drop, delay, duplicate or reorder messages (Raft tolerates all of it) but never
//! corrupts one: a frame that fails its checks is dropped with a log line.
//!
//! Two transports share this interface:
//! - [`local::LocalTransport`]: in-process channels with fault hooks (drop, delay,
//!   duplicate, reorder, partition and isolate, per store pair, region or message
//!   type) for tests and the in-process cluster;
//! - [`tcp::TcpTransport`]: length-prefixed, checksummed, size-bounded frames over TCP
//!   (format in [`wire`]), after a handshake that proves knowledge of the cluster
//!   secret; one connection and one bounded queue per peer store, reconnecting with
//!   backoff.
//!
//! Under the TCP transport, and under the facade's client protocol too, lie one
//! framing layer ([`frame`]: header, kinds, CRC, a bounded reader) and one handshake
//! ([`handshake`]: mutual proof of the cluster secret), each parameterised by the
//! protocol that uses it, and one record layer ([`seal`]: every byte after the
//! handshake encrypted and authenticated with keys of the connection's own, unless
//! both sides run `insecure`).

pub mod frame;
pub mod handshake;
pub mod local;
pub mod raft_msg;
pub mod seal;
pub mod tcp;
pub mod wire;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::Message;
use regionkv_engine::{Epoch, RegionId, StoreId};

/// One message from a store to another about one region.
#[derive(Clone, PartialEq)]
pub struct Envelope {
    /// The region the message is about.
    pub region: RegionId,
    /// The sending store.
    pub from: StoreId,
    /// The receiving store.
    pub to: StoreId,
    /// The sender's epoch of the region, if it reported one (a field that is absent is
    /// unknown, never "zero").
    pub epoch: Option<Epoch>,
    /// The sender's key range of the region, if it knows it. A store that receives a
    /// message for a region it does not host creates a replica only if this range is
    /// known and overlaps none of its regions (an overlap means its own split or merge
    /// will create the region); an unknown range creates nothing.
    pub range: Option<KeyRange>,
    /// What the message carries.
    pub body: Body,
}

/// A region's key range `[start, end)`; `end == None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// First key after the range (exclusive); `None` is unbounded.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// True if the two ranges share a key.
    pub fn overlaps(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        let starts_before_other_ends = end.is_none_or(|e| self.start.as_slice() < e);
        let other_starts_before_end = self.end.as_deref().is_none_or(|e| start < e);
        starts_before_other_ends && other_starts_before_end
    }
}

/// The payload of an [`Envelope`].
#[derive(Clone, PartialEq)]
pub enum Body {
    /// A Raft message of the region's group (protobuf `eraftpb.Message` on the wire).
    Raft(Message),
    /// One chunk of a checkpoint that backs a Raft snapshot; chunks precede the
    /// snapshot message itself.
    SnapshotChunk(SnapshotChunk),
    /// The region's leader goes quiet (hibernates) at `term` with every replica's log
    /// at `index`: a follower whose log is there too stops ticking, until a message
    /// or a request wakes it (or the leader's store falls silent).
    Hibernate {
        /// The leader's term.
        term: u64,
        /// The last index of the leader's log, committed on every replica.
        index: u64,
    },
    /// The sending store is alive (the region field is unused). Followers of a
    /// hibernating leader wake when its store stops sending these.
    Alive,
    /// The receiver's replica `peer` of the region is not a member of it at the
    /// envelope's epoch: a store of the region answers so a Raft message from a peer
    /// that a membership change removed (a newer `conf_ver` than the message's), and the
    /// replica, if that epoch is newer than its own, destroys itself (ARCHITECTURE.md,
    /// "Membership").
    Gone {
        /// The removed peer: the receiver's replica, if it is still that peer.
        peer: u64,
    },
}

/// One bounded piece of a snapshot's checkpoint; chunks are sent in file order.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// Offset of `data` in the checkpoint file.
    pub offset: u64,
    /// Length of the whole checkpoint file.
    pub file_bytes: u64,
    /// The checkpoint's bytes at `offset`.
    pub data: Bytes,
}

impl SnapshotChunk {
    /// True for the chunk that reaches the end of the file.
    pub fn is_last(&self) -> bool {
        self.offset + self.data.len() as u64 >= self.file_bytes
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("region", &self.region.0)
            .field("from", &self.from.0)
            .field("to", &self.to.0)
            .field("epoch", &self.epoch)
            .field("range", &self.range)
            .field("body", &self.body)
            .finish()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Raft(m) => write!(
                f,
                "Raft({:?} {}->{} term {} index {} entries {})",
                m.get_msg_type(),
                m.from,
                m.to,
                m.term,
                m.index,
                m.entries.len()
            ),
            Body::SnapshotChunk(c) => c.fmt(f),
            Body::Hibernate { term, index } => write!(f, "Hibernate(term {term}, index {index})"),
            Body::Alive => f.write_str("Alive"),
            Body::Gone { peer } => write!(f, "Gone(peer {peer})"),
        }
    }
}

impl fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SnapshotChunk(index {} term {} at {} of {}: {} bytes)",
            self.index,
            self.term,
            self.offset,
            self.file_bytes,
            self.data.len()
        )
    }
}

/// Where a transport delivers what arrives for a store.
pub trait Inbox: Send + Sync {
    /// Takes delivered envelopes, in the order they arrived. Must not block for long.
    fn deliver(&self, envelopes: Vec<Envelope>);
}

/// An inbox bound later: lets a transport start before the store that receives from
/// it (a [`crate::Store`] makes its inbox when it starts, and needs its transport to
/// start). Envelopes that arrive before [`InboxSlot::bind`] are dropped; Raft resends.
#[derive(Default)]
pub struct InboxSlot {
    target: std::sync::OnceLock<Arc<dyn Inbox>>,
}

impl InboxSlot {
    /// An unbound slot.
    pub fn new() -> Arc<InboxSlot> {
        Arc::new(InboxSlot::default())
    }

    /// Binds the slot to `inbox` (once; later calls are ignored).
    pub fn bind(&self, inbox: Arc<dyn Inbox>) {
        let _ = self.target.set(inbox);
    }
}

impl fmt::Debug for InboxSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxSlot").field("bound", &self.target.get().is_some()).finish()
    }
}

impl Inbox for InboxSlot {
    fn deliver(&self, envelopes: Vec<Envelope>) {
        if let Some(inbox) = self.target.get() {
            inbox.deliver(envelopes);
        }
    }
}

/// Sends envelopes to other stores.
pub trait Transport: Send + Sync {
    /// Queues `envelopes` for their stores. Never blocks: when a peer's queue is full
    /// or the peer is unreachable, envelopes are dropped (and counted); Raft resends.
    fn send(&self, envelopes: Vec<Envelope>);
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn send(&self, envelopes: Vec<Envelope>) {
        (**self).send(envelopes);
    }
}
