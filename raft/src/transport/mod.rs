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

pub mod local;
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
    /// unknown, never "zero": design 5.5).
    pub epoch: Option<Epoch>,
    /// What the message carries.
    pub body: Body,
}

/// The payload of an [`Envelope`].
#[derive(Clone, PartialEq)]
pub enum Body {
    /// A Raft message of the region's group (protobuf `eraftpb.Message` on the wire).
    Raft(Message),
    /// One chunk of a checkpoint that backs a Raft snapshot; chunks precede the
    /// snapshot message itself.
    SnapshotChunk(SnapshotChunk),
}

/// One bounded piece of a snapshot's checkpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// Position of this chunk, from 0.
    pub seq: u32,
    /// True for the final chunk.
    pub last: bool,
    /// The checkpoint's bytes.
    pub data: Bytes,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Envelope");
        d.field("region", &self.region.0).field("from", &self.from.0).field("to", &self.to.0);
        d.field("epoch", &self.epoch);
        match &self.body {
            Body::Raft(m) => d
                .field("type", &m.get_msg_type())
                .field("term", &m.term)
                .field("index", &m.index)
                .field("entries", &m.entries.len()),
            Body::SnapshotChunk(c) => {
                d.field("snapshot_chunk", &(c.index, c.seq, c.last, c.data.len()))
            }
        };
        d.finish()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Raft(m) => {
                write!(f, "Raft({:?} term {} index {})", m.get_msg_type(), m.term, m.index)
            }
            Body::SnapshotChunk(c) => {
                write!(f, "SnapshotChunk({} #{} last {})", c.index, c.seq, c.last)
            }
        }
    }
}

impl fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SnapshotChunk(index {} term {} #{} last {} {} bytes)",
            self.index,
            self.term,
            self.seq,
            self.last,
            self.data.len()
        )
    }
}

/// Where a transport delivers what arrives for a store.
pub trait Inbox: Send + Sync {
    /// Takes delivered envelopes, in the order they arrived. Must not block for long.
    fn deliver(&self, envelopes: Vec<Envelope>);
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
