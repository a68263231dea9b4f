//! The TCP transport's counters: the live atomics ([`Counters`]) and the snapshots
//! [`TcpTransport::stats`](super::TcpTransport::stats) and
//! [`TcpTransport::queue_depth`](super::TcpTransport::queue_depth) return.

use std::sync::atomic::{AtomicU64, Ordering};

/// The transport's counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Envelopes accepted into a peer's queue by `send`.
    pub envelopes_queued: u64,
    /// Envelopes written to a connection.
    pub envelopes_sent: u64,
    /// Envelopes dropped: queue full, no address for the store, too large for a
    /// frame, or lost with a failed connection.
    pub envelopes_dropped: u64,
    /// Envelopes handed to the inbox.
    pub envelopes_received: u64,
    /// Envelopes received but not for this store (or not from the authenticated
    /// peer), dropped.
    pub envelopes_misaddressed: u64,
    /// Batch frames written.
    pub frames_sent: u64,
    /// Batch frames of those written by the thread that called `send`, without a
    /// hand-off to the peer's sender thread (whole, or in part with the rest left to it).
    pub frames_sent_inline: u64,
    /// Batch frames read and decoded.
    pub frames_received: u64,
    /// Frames that failed a check (magic, version, kind, bound, CRC, decoding); each
    /// closed its connection.
    pub bad_frames: u64,
    /// Records of sealed links that failed their authentication (bytes altered,
    /// replayed, reordered or injected on the way), among `bad_frames`; each closed
    /// its connection with a warning and nothing of it was decoded.
    pub unauthenticated_records: u64,
    /// Handshakes that failed after the TCP connection was up, either way round.
    pub handshake_rejections: u64,
    /// Handshakes that succeeded, either way round.
    pub handshakes_completed: u64,
    /// Outbound TCP connects that failed.
    pub connect_failures: u64,
    /// Outbound connections established again after an earlier one to the same peer.
    pub reconnects: u64,
    /// Inbound connections accepted.
    pub connections_accepted: u64,
}

/// How much waits in a peer's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Envelopes.
    pub envelopes: usize,
    /// Estimated bytes.
    pub bytes: usize,
}

/// The live counters, bumped by every thread of the transport.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) envelopes_queued: AtomicU64,
    pub(super) envelopes_sent: AtomicU64,
    pub(super) envelopes_dropped: AtomicU64,
    pub(super) envelopes_received: AtomicU64,
    pub(super) envelopes_misaddressed: AtomicU64,
    pub(super) frames_sent: AtomicU64,
    pub(super) frames_sent_inline: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) bad_frames: AtomicU64,
    pub(super) unauthenticated_records: AtomicU64,
    pub(super) handshake_rejections: AtomicU64,
    pub(super) handshakes_completed: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) connections_accepted: AtomicU64,
}

/// Adds `by` to `counter`.
pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    /// The counters now.
    pub(super) fn snapshot(&self) -> TcpStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            envelopes_queued: get(&self.envelopes_queued),
            envelopes_sent: get(&self.envelopes_sent),
            envelopes_dropped: get(&self.envelopes_dropped),
            envelopes_received: get(&self.envelopes_received),
            envelopes_misaddressed: get(&self.envelopes_misaddressed),
            frames_sent: get(&self.frames_sent),
            frames_sent_inline: get(&self.frames_sent_inline),
            frames_received: get(&self.frames_received),
            bad_frames: get(&self.bad_frames),
            unauthenticated_records: get(&self.unauthenticated_records),
            handshake_rejections: get(&self.handshake_rejections),
            handshakes_completed: get(&self.handshakes_completed),
            connect_failures: get(&self.connect_failures),
            reconnects: get(&self.reconnects),
            connections_accepted: get(&self.connections_accepted),
        }
    }
}
