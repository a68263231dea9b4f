//! The TCP transport: authenticated connections between stores, carrying batches of
//! envelopes in checksummed, bounded frames ([`super::wire`]).
//!
//! Each store runs one [`TcpTransport`]: a listener, and one outbound connection per
//! peer store. Connections carry data one way only, from the store that dialed to the
//! store that accepted; a pair of stores uses two connections.
//!
//! ## Handshake
//!
//! Before a single Raft message is decoded, each side proves that it knows the cluster
//! secret, without sending it (C dials, A accepts; every message is one frame):
//!
//! ```text
//!  C -> A  HELLO  { cluster id, C's store id, nonce_c }
//!  A       checks the cluster id (else REJECT ClusterMismatch) and the store id
//!  A -> C  HELLO  { cluster id, A's store id, nonce_a }
//!          PROOF  { mac(key, "acceptor", version, cluster, C, A, nonce_c, nonce_a) }
//!  C       checks the cluster id, that A is the store it dialed, and A's proof
//!          (else REJECT with the reason)
//!  C -> A  PROOF  { mac(key, "connector", ...same transcript...) }
//!  A       checks C's proof (else REJECT BadProof)
//!  A -> C  ACCEPT
//!  C -> A  BATCH*
//! ```
//!
//! `key` is derived from the cluster secret; MACs are keyed BLAKE3 and compared in
//! constant time. Fresh nonces on both sides make every proof single-use, and the role
//! label keeps a side from reflecting the other's proof. The handshake has a deadline
//! and its frames a small size bound, so a silent or hostile peer cannot hold a thread
//! or memory. Any failure closes the connection with a `warn` line naming the remote
//! address and the reason, and is counted; the transport keeps serving other peers.
//!
//! Any store that proves the secret is accepted (stores may join before their address
//! is configured here); the envelopes it sends must name it as their sender, and this
//! store as their receiver, or they are dropped. The handshake authenticates; it does
//! not encrypt, and an attacker who can relay and alter traffic after it could still
//! tamper with a connection (each frame's CRC catches accidents, not attacks; TLS is
//! future work).
//!
//! ## Another protocol on the same listener
//!
//! [`TcpTransport::start_with`] takes a [`SharedListener`]: an accepted connection whose
//! first byte is the other protocol's ([`SharedListener::first_byte`], never the first
//! byte of [`wire::MAGIC`]) is handed to it on its reader thread instead of running the
//! store handshake (the byte is peeked, not consumed). The `regionkv` facade serves its
//! client protocol this way, so a node has one address for stores and clients alike.
//! The connection counts against [`TcpConfig::inbound_connections_max`], is closed by
//! [`TcpTransport::shutdown`], and its thread is waited for like any reader.
//!
//! ## Threads
//!
//! - `tcp-accept`: accepts connections (non-blocking, polled) and spawns a reader per
//!   connection, at most [`TcpConfig::inbound_connections_max`] at once;
//! - `tcp-recv`: one per accepted connection: handshake, then BATCH frames decoded and
//!   handed to the store's [`Inbox`]; a frame that fails its checks closes the
//!   connection;
//! - `tcp-send`: one per peer store: drains the peer's bounded queue, batches what is
//!   queued into one frame, writes it, and reconnects with bounded exponential backoff
//!   after errors.
//!
//! [`TcpTransport::shutdown`] (also run on drop) cancels every thread's token, shuts
//! down every socket (which unblocks blocked reads and writes), waits for the threads
//! to leave the transport's gate, bounded by [`TcpConfig::shutdown_timeout`], and joins
//! them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use regionkv_engine::StoreId;
use regionkv_wal::lifecycle::{CancellationToken, Gate};

use super::wire::{
    self, ClusterId, FRAME_HEADER_BYTES, FrameHeader, FrameKind, HANDSHAKE_FRAME_BYTES_MAX,
    HandshakeKey, Hello, NONCE_BYTES, Nonce, Proof, RejectReason, Role, Transcript, WireError,
};
use super::{Body, Envelope, Inbox, Transport};

/// The shortest cluster secret accepted.
pub const SECRET_BYTES_MIN: usize = 16;
/// The smallest frame bound accepted: room for a handshake frame.
pub const FRAME_BYTES_MIN: u32 = HANDSHAKE_FRAME_BYTES_MAX;
/// How many recent handshake failures [`TcpTransport::recent_rejections`] keeps.
pub const REJECTIONS_KEPT: usize = 32;
/// Payload bytes read into memory at a time: a frame's buffer grows as its bytes
/// arrive, so a peer announcing a large frame and then stalling costs at most this.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Reconnect delays: `initial`, doubling after each failed attempt, never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0 after the first failure).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.initial.saturating_mul(1 << attempt.min(20)).min(self.max)
    }
}

/// How a [`TcpTransport`] runs. [`TcpConfig::new`] fills in defaults for everything
/// but the identity and the secret.
#[derive(Clone)]
pub struct TcpConfig {
    /// This store.
    pub store: StoreId,
    /// Where to listen (port 0: any free port; see [`TcpTransport::local_addr`]).
    pub listen_addr: SocketAddr,
    /// The cluster; peers of another cluster are refused.
    pub cluster: ClusterId,
    /// The secret shared by the cluster's stores, at least [`SECRET_BYTES_MIN`] bytes.
    /// It never leaves the process.
    pub secret: Vec<u8>,
    /// The peer stores' listen addresses; see also [`TcpTransport::set_peer_addr`].
    pub peers: HashMap<StoreId, SocketAddr>,
    /// The largest frame payload sent or read (default 64 MiB); larger frames are
    /// refused from their header, before their payload is read.
    pub frame_bytes_max: u32,
    /// A batch frame is closed once its payload reaches this (default 4 MiB).
    pub batch_bytes_max: usize,
    /// Envelopes queued per peer (default 4096); beyond it `send` drops.
    pub queue_capacity: usize,
    /// Estimated bytes queued per peer (default 64 MiB); beyond it `send` drops.
    pub queue_bytes_max: usize,
    /// Giving up on a TCP connect (default 1 s).
    pub connect_timeout: Duration,
    /// The whole handshake must finish within this (default 5 s).
    pub handshake_timeout: Duration,
    /// A write that makes no progress for this long fails (default 10 s).
    pub write_timeout: Duration,
    /// A frame whose bytes stop arriving for this long closes the connection
    /// (default 30 s). Silence between frames is fine.
    pub stall_timeout: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Accepted connections served at once (default 64); more are refused.
    pub inbound_connections_max: usize,
    /// How often blocked threads look at the cancellation token (default 50 ms).
    pub poll_interval: Duration,
    /// How long shutdown waits for threads (default 10 s).
    pub shutdown_timeout: Duration,
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("store", &self.store)
            .field("listen_addr", &self.listen_addr)
            .field("cluster", &self.cluster)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("peers", &self.peers)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("batch_bytes_max", &self.batch_bytes_max)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes_max", &self.queue_bytes_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("backoff", &self.backoff)
            .field("inbound_connections_max", &self.inbound_connections_max)
            .field("poll_interval", &self.poll_interval)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

impl TcpConfig {
    /// A config with default limits and no peers.
    pub fn new(
        store: StoreId,
        listen_addr: SocketAddr,
        cluster: ClusterId,
        secret: impl Into<Vec<u8>>,
    ) -> TcpConfig {
        TcpConfig {
            store,
            listen_addr,
            cluster,
            secret: secret.into(),
            peers: HashMap::new(),
            frame_bytes_max: 64 << 20,
            batch_bytes_max: 4 << 20,
            queue_capacity: 4096,
            queue_bytes_max: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            inbound_connections_max: 64,
            poll_interval: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), TcpError> {
        let checks = [
            (self.secret.len() >= SECRET_BYTES_MIN, "the cluster secret is shorter than 16 bytes"),
            (self.frame_bytes_max >= FRAME_BYTES_MIN, "frame_bytes_max is below 1 KiB"),
            (
                self.batch_bytes_max > 0 && self.batch_bytes_max <= self.frame_bytes_max as usize,
                "batch_bytes_max must be in 1..=frame_bytes_max",
            ),
            (self.queue_capacity > 0, "queue_capacity is 0"),
            (self.queue_bytes_max > 0, "queue_bytes_max is 0"),
            (self.inbound_connections_max > 0, "inbound_connections_max is 0"),
            (
                !self.poll_interval.is_zero() && self.poll_interval <= Duration::from_secs(1),
                "poll_interval must be in (0, 1 s]",
            ),
            (
                !self.backoff.initial.is_zero() && self.backoff.max >= self.backoff.initial,
                "backoff needs 0 < initial <= max",
            ),
            (
                [
                    self.connect_timeout,
                    self.handshake_timeout,
                    self.write_timeout,
                    self.stall_timeout,
                ]
                .iter()
                .all(|t| !t.is_zero()),
                "timeouts must not be zero",
            ),
            (!self.peers.contains_key(&self.store), "the peer list names this store"),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(TcpError::Config(what)),
            None => Ok(()),
        }
    }
}

/// What went wrong in the TCP transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// The configuration is unusable; fix it and start again.
    #[error("invalid TCP transport config: {0}")]
    Config(&'static str),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is the address in use?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A socket operation failed (the peer went away, the network is down, ...).
    #[error("network I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer sent nothing for too long.
    #[error("the peer sent nothing for {after:?} during {what}")]
    Timeout {
        /// What we were waiting for.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// Bytes from the peer failed the wire format's checks.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// We refused the peer's handshake.
    #[error("refused the peer: {reason} ({detail})")]
    Rejected {
        /// Why, as sent to the peer.
        reason: RejectReason,
        /// The particulars, for our log only.
        detail: String,
    },
    /// The peer refused our handshake.
    #[error("the peer refused us: {0}; check that both stores use the same cluster id and secret")]
    RefusedByPeer(RejectReason),
    /// The operating system gave no randomness for a handshake nonce.
    #[error("no randomness for a handshake nonce: {0}")]
    Random(String),
    /// The transport is shutting down.
    #[error("the TCP transport is shutting down")]
    Cancelled,
}

impl TcpError {
    /// True for errors caused by shutdown. Exhaustive on purpose.
    pub fn is_cancelled(&self) -> bool {
        match self {
            TcpError::Cancelled => true,
            TcpError::Config(_)
            | TcpError::Bind { .. }
            | TcpError::Io(_)
            | TcpError::Closed
            | TcpError::Timeout { .. }
            | TcpError::Wire(_)
            | TcpError::Rejected { .. }
            | TcpError::RefusedByPeer(_)
            | TcpError::Random(_) => false,
        }
    }

    /// True if a handshake was refused, by either side. Exhaustive on purpose.
    pub fn is_refusal(&self) -> bool {
        match self {
            TcpError::Rejected { .. } | TcpError::RefusedByPeer(_) => true,
            TcpError::Config(_)
            | TcpError::Bind { .. }
            | TcpError::Io(_)
            | TcpError::Closed
            | TcpError::Timeout { .. }
            | TcpError::Wire(_)
            | TcpError::Random(_)
            | TcpError::Cancelled => false,
        }
    }

    /// The refusal reason, for refusals.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            TcpError::Rejected { reason, .. } | TcpError::RefusedByPeer(reason) => Some(*reason),
            TcpError::Config(_)
            | TcpError::Bind { .. }
            | TcpError::Io(_)
            | TcpError::Closed
            | TcpError::Timeout { .. }
            | TcpError::Wire(_)
            | TcpError::Random(_)
            | TcpError::Cancelled => None,
        }
    }
}

/// Which way a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We accepted it.
    Inbound,
    /// We dialed it.
    Outbound,
}

/// A handshake that failed after the TCP connection was up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The remote address.
    pub remote: SocketAddr,
    /// Which way the connection went.
    pub direction: Direction,
    /// The refusal reason when either side refused; `None` for garbage bytes, a
    /// timeout or a closed connection.
    pub reason: Option<RejectReason>,
    /// The error, as logged.
    pub detail: String,
}

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
    /// Batch frames read and decoded.
    pub frames_received: u64,
    /// Frames that failed a check (magic, version, kind, bound, CRC, decoding); each
    /// closed its connection.
    pub bad_frames: u64,
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

#[derive(Default)]
struct Counters {
    envelopes_queued: AtomicU64,
    envelopes_sent: AtomicU64,
    envelopes_dropped: AtomicU64,
    envelopes_received: AtomicU64,
    envelopes_misaddressed: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    bad_frames: AtomicU64,
    handshake_rejections: AtomicU64,
    handshakes_completed: AtomicU64,
    connect_failures: AtomicU64,
    reconnects: AtomicU64,
    connections_accepted: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Another protocol served on the transport's listener (see the module docs).
pub trait SharedListener: Send + Sync {
    /// The first byte of every connection of this protocol; it must differ from the
    /// first byte of [`wire::MAGIC`] (`start_with` refuses it otherwise).
    fn first_byte(&self) -> u8;

    /// Serves one connection until it ends or `cancel` is cancelled, on the
    /// transport's reader thread. Nothing of the stream has been consumed. Its read
    /// timeout is the transport's poll interval, so reads return regularly to look at
    /// `cancel`; the transport's shutdown also shuts the socket down.
    fn serve(&self, stream: TcpStream, remote: SocketAddr, cancel: &CancellationToken);
}

/// A peer's send queue, shared by `send` and the peer's sender thread.
struct PeerSlot {
    addr: SocketAddr,
    queue: Sender<Envelope>,
    queued_bytes: Arc<AtomicUsize>,
    /// Cancels the peer's sender when the peer is removed.
    cancel: CancellationToken,
}

struct Shared {
    config: TcpConfig,
    key: HandshakeKey,
    local_addr: SocketAddr,
    inbox: Arc<dyn Inbox>,
    /// Serves connections of another protocol, if any.
    other_protocol: Option<Arc<dyn SharedListener>>,
    /// Lock order: `peers` before `threads`.
    peers: RwLock<HashMap<StoreId, PeerSlot>>,
    cancel: CancellationToken,
    /// Every transport thread is inside while it runs.
    gate: Gate,
    /// Handles of the threads; spawning holds this lock so that shutdown, which
    /// closes the gate first, finds every thread that entered it.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Clones of the live sockets, shut down by `shutdown` to unblock their threads.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    inbound: AtomicUsize,
    counters: Counters,
    rejections: Mutex<VecDeque<Rejection>>,
}

/// A store's TCP transport. Dropping it shuts it down.
pub struct TcpTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("store", &self.shared.config.store)
            .field("local_addr", &self.shared.local_addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Binds the listener and starts the threads; envelopes for this store go to
    /// `inbox`.
    pub fn start(config: TcpConfig, inbox: Arc<dyn Inbox>) -> Result<TcpTransport, TcpError> {
        TcpTransport::start_with(config, inbox, None)
    }

    /// Like [`TcpTransport::start`], and connections that open with the first byte of
    /// `other`'s protocol are served by `other` (see the module docs).
    pub fn start_with(
        mut config: TcpConfig,
        inbox: Arc<dyn Inbox>,
        other: Option<Arc<dyn SharedListener>>,
    ) -> Result<TcpTransport, TcpError> {
        config.validate()?;
        if other.as_ref().is_some_and(|o| o.first_byte() == wire::MAGIC[0]) {
            return Err(TcpError::Config(
                "the shared listener's first byte is the store protocol's",
            ));
        }
        let listener = TcpListener::bind(config.listen_addr)
            .map_err(|source| TcpError::Bind { addr: config.listen_addr, source })?;
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let key = HandshakeKey::derive(&config.secret);
        let peers = std::mem::take(&mut config.peers);
        // The secret is not kept: only the key derived from it.
        config.secret = Vec::new();
        let shared = Arc::new(Shared {
            config,
            key,
            local_addr,
            inbox,
            other_protocol: other,
            peers: RwLock::default(),
            cancel: CancellationToken::new(),
            gate: Gate::new(),
            threads: Mutex::default(),
            sockets: Mutex::default(),
            next_socket: AtomicU64::new(0),
            inbound: AtomicUsize::new(0),
            counters: Counters::default(),
            rejections: Mutex::default(),
        });
        let transport = TcpTransport { shared };
        let name = format!("tcp-accept-{}", transport.shared.config.store.0);
        transport.shared.spawn(name, "tcp acceptor", move |s| s.run_acceptor(&listener))?;
        for (store, addr) in peers {
            transport.set_peer_addr(store, addr)?;
        }
        tracing::info!(store = transport.shared.config.store.0, addr = %local_addr, "tcp transport listening");
        Ok(transport)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This store.
    pub fn store(&self) -> StoreId {
        self.shared.config.store
    }

    /// Sets (or changes) where `store` listens. A changed address is used from the
    /// next envelope on: the open connection is closed and a new one dialed.
    pub fn set_peer_addr(&self, store: StoreId, addr: SocketAddr) -> Result<(), TcpError> {
        let shared = &self.shared;
        if store == shared.config.store {
            return Err(TcpError::Config("a store is not its own peer"));
        }
        let mut peers = shared.peers.write();
        if shared.cancel.is_cancelled() {
            return Err(TcpError::Cancelled);
        }
        if let Some(slot) = peers.get_mut(&store) {
            slot.addr = addr;
            return Ok(());
        }
        let (queue, rx) = crossbeam_channel::bounded(shared.config.queue_capacity);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let cancel = shared.cancel.child();
        let sender = PeerSender {
            peer: store,
            rx,
            queued_bytes: queued_bytes.clone(),
            cancel: cancel.clone(),
        };
        let name = format!("tcp-send-{}-{}", shared.config.store.0, store.0);
        shared.spawn(name, "tcp sender", move |s| s.run_sender(&sender))?;
        peers.insert(store, PeerSlot { addr, queue, queued_bytes, cancel });
        Ok(())
    }

    /// Forgets `store`: its queue is dropped and its connection closed.
    pub fn remove_peer(&self, store: StoreId) {
        if let Some(slot) = self.shared.peers.write().remove(&store) {
            slot.cancel.cancel();
            let dropped = slot.queue.len() as u64;
            bump(&self.shared.counters.envelopes_dropped, dropped);
        }
    }

    /// The address `store` is dialed at, if known.
    pub fn peer_addr(&self, store: StoreId) -> Option<SocketAddr> {
        self.shared.peer_addr(store)
    }

    /// What waits in `store`'s queue, if it is a peer.
    pub fn queue_depth(&self, store: StoreId) -> Option<QueueDepth> {
        self.shared.peers.read().get(&store).map(|slot| QueueDepth {
            envelopes: slot.queue.len(),
            bytes: slot.queued_bytes.load(Ordering::Relaxed),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> TcpStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            envelopes_queued: get(&c.envelopes_queued),
            envelopes_sent: get(&c.envelopes_sent),
            envelopes_dropped: get(&c.envelopes_dropped),
            envelopes_received: get(&c.envelopes_received),
            envelopes_misaddressed: get(&c.envelopes_misaddressed),
            frames_sent: get(&c.frames_sent),
            frames_received: get(&c.frames_received),
            bad_frames: get(&c.bad_frames),
            handshake_rejections: get(&c.handshake_rejections),
            handshakes_completed: get(&c.handshakes_completed),
            connect_failures: get(&c.connect_failures),
            reconnects: get(&c.reconnects),
            connections_accepted: get(&c.connections_accepted),
        }
    }

    /// The last [`REJECTIONS_KEPT`] failed handshakes, oldest first.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        self.shared.rejections.lock().iter().cloned().collect()
    }

    /// Stops every thread and closes every connection; queued envelopes are dropped.
    /// Bounded by [`TcpConfig::shutdown_timeout`]; idempotent.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        // 1. Every thread sees the token at its next poll.
        shared.cancel.cancel();
        // 2. Blocked reads and writes return at once.
        for socket in shared.sockets.lock().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // 3. Queues go; senders see them disconnected.
        shared.peers.write().clear();
        // 4. Wait for every thread to leave, then reap them.
        let closed = shared.gate.close(shared.config.shutdown_timeout);
        if let Err(e) = &closed {
            tracing::warn!(store = shared.config.store.0, error = %e, "tcp transport threads did not stop in time");
        }
        let handles = std::mem::take(&mut *shared.threads.lock());
        for handle in handles {
            // A thread still running after a timed-out close is left detached: it
            // holds only the shared state, and leaves at its next poll.
            if (closed.is_ok() || handle.is_finished()) && handle.join().is_err() {
                tracing::error!(store = shared.config.store.0, "a tcp transport thread panicked");
            }
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for TcpTransport {
    fn send(&self, envelopes: Vec<Envelope>) {
        let shared = &self.shared;
        let c = &shared.counters;
        let peers = shared.peers.read();
        for env in envelopes {
            let Some(slot) = peers.get(&env.to) else {
                tracing::debug!(to = env.to.0, "no address for the store; envelope dropped");
                bump(&c.envelopes_dropped, 1);
                continue;
            };
            let bytes = estimated_bytes(&env);
            let before = slot.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            if before + bytes > shared.config.queue_bytes_max {
                slot.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                bump(&c.envelopes_dropped, 1);
                continue;
            }
            match slot.queue.try_send(env) {
                Ok(()) => bump(&c.envelopes_queued, 1),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    slot.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    bump(&c.envelopes_dropped, 1);
                }
            }
        }
    }
}

/// What an envelope costs in a queue, roughly: its payload bytes plus a fixed overhead.
fn estimated_bytes(env: &Envelope) -> usize {
    const OVERHEAD_BYTES: usize = 128;
    const ENTRY_OVERHEAD_BYTES: usize = 32;
    match &env.body {
        Body::Raft(m) => {
            let entries: usize = m
                .entries
                .iter()
                .map(|e| e.data.len() + e.context.len() + ENTRY_OVERHEAD_BYTES)
                .sum();
            OVERHEAD_BYTES + entries + m.context.len() + m.get_snapshot().get_data().len()
        }
        Body::SnapshotChunk(c) => OVERHEAD_BYTES + c.data.len(),
        Body::Hibernate { .. } | Body::Alive => OVERHEAD_BYTES,
    }
}

/// What a sender thread owns.
struct PeerSender {
    peer: StoreId,
    rx: Receiver<Envelope>,
    queued_bytes: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

impl PeerSender {
    /// The next queued envelope, with its bytes released from the queue's account.
    fn take(&self, env: Envelope) -> Envelope {
        self.queued_bytes.fetch_sub(estimated_bytes(&env), Ordering::Relaxed);
        env
    }

    /// Drops everything queued (the peer is unreachable; Raft resends); returns how many.
    fn drain(&self) -> u64 {
        let mut n = 0;
        // Bounded: the queue holds at most `queue_capacity`, and `send` may add more
        // meanwhile, so stop after one queue's worth.
        for env in self.rx.try_iter().take(self.rx.capacity().unwrap_or(0)) {
            drop(self.take(env));
            n += 1;
        }
        n
    }
}

/// Why a sender left a connection without an error.
enum PumpEnd {
    /// The peer's address changed: dial the new one.
    AddressChanged,
    /// The peer was removed (or the transport is stopping).
    Removed,
}

/// How long a read may wait for its first byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Silence before the first byte is fine (between frames).
    Allowed,
    /// Every byte must come within the stall timeout.
    Stalls,
}

/// One of the `inbound_connections_max` slots, released on drop.
struct InboundSlot<'a>(&'a AtomicUsize);

impl Drop for InboundSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket registered for shutdown; unregistered on drop.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.sockets.lock().remove(&self.id);
    }
}

impl Shared {
    fn spawn(
        self: &Arc<Self>,
        name: String,
        holder: &'static str,
        f: impl FnOnce(&Arc<Shared>) + Send + 'static,
    ) -> Result<(), TcpError> {
        let mut threads = self.threads.lock();
        let guard = self.gate.enter(holder).map_err(|_| TcpError::Cancelled)?;
        threads.retain(|h| !h.is_finished());
        let shared = self.clone();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let _guard = guard;
            f(&shared);
        })?;
        threads.push(handle);
        Ok(())
    }

    fn peer_addr(&self, store: StoreId) -> Option<SocketAddr> {
        self.peers.read().get(&store).map(|slot| slot.addr)
    }

    /// Registers `stream` so that shutdown can close it; fails if shutdown began.
    fn register(&self, stream: &TcpStream) -> Result<Registered<'_>, TcpError> {
        let clone = stream.try_clone()?;
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.sockets.lock().insert(id, clone);
        let registered = Registered { shared: self, id };
        // Shutdown cancels before it sweeps the sockets: a socket inserted after the
        // sweep sees the token here.
        if self.cancel.is_cancelled() {
            return Err(TcpError::Cancelled);
        }
        Ok(registered)
    }

    fn prepare(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.config.poll_interval))?;
        stream.set_write_timeout(Some(self.config.write_timeout))
    }

    fn note_rejection(&self, remote: SocketAddr, direction: Direction, err: &TcpError) {
        bump(&self.counters.handshake_rejections, 1);
        if matches!(err, TcpError::Wire(_)) {
            bump(&self.counters.bad_frames, 1);
        }
        let mut recent = self.rejections.lock();
        if recent.len() == REJECTIONS_KEPT {
            recent.pop_front();
        }
        recent.push_back(Rejection {
            remote,
            direction,
            reason: err.reject_reason(),
            detail: err.to_string(),
        });
    }

    // ---- reading and writing frames ----

    /// Fills `buf` from `stream`, looking at the token every poll interval.
    fn fill(
        &self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        idle: Idle,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<(), TcpError> {
        let mut filled = 0;
        let mut last_progress = Instant::now();
        // Bounded: every turn reads a byte or waits a poll interval, and waiting ends
        // at the deadline, the stall timeout or cancellation.
        while filled < buf.len() {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => return Err(TcpError::Closed),
                Ok(n) => {
                    filled += n;
                    last_progress = Instant::now();
                }
                Err(e) if is_read_timeout(&e) => {
                    if cancel.is_cancelled() {
                        return Err(TcpError::Cancelled);
                    }
                    let now = Instant::now();
                    if let Some(deadline) = deadline
                        && now >= deadline
                    {
                        return Err(TcpError::Timeout {
                            what: "the handshake",
                            after: self.config.handshake_timeout,
                        });
                    }
                    let stalled = now.duration_since(last_progress) >= self.config.stall_timeout;
                    if stalled && (filled > 0 || idle == Idle::Stalls) {
                        return Err(TcpError::Timeout {
                            what: "a frame",
                            after: self.config.stall_timeout,
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads one frame: the header is checked (including `payload_bytes_max`) before
    /// the payload is read, and the payload's CRC before it is returned.
    fn read_frame(
        &self,
        stream: &mut TcpStream,
        payload_bytes_max: u32,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Result<(FrameKind, Vec<u8>), TcpError> {
        let mut header = [0; FRAME_HEADER_BYTES];
        self.fill(stream, &mut header, Idle::Allowed, deadline, cancel)?;
        let header = FrameHeader::parse(&header, payload_bytes_max)?;
        let len = header.len as usize;
        let mut payload = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
        // Bounded: each turn adds up to one chunk, until `len` (at most the bound).
        while payload.len() < len {
            let at = payload.len();
            payload.resize(at + (len - at).min(READ_CHUNK_BYTES), 0);
            self.fill(stream, &mut payload[at..], Idle::Stalls, deadline, cancel)?;
        }
        header.check(&payload)?;
        Ok((header.kind, payload))
    }

    /// Refuses the peer: tells it why (best effort), and returns the error to log.
    fn refuse(stream: &mut TcpStream, reason: RejectReason, detail: String) -> TcpError {
        if let Ok(frame) = wire::encode_frame(FrameKind::Reject, &reason.encode()) {
            let _ = stream.write_all(&frame);
        }
        TcpError::Rejected { reason, detail }
    }

    fn write_frame(
        stream: &mut TcpStream,
        kind: FrameKind,
        payload: &[u8],
    ) -> Result<(), TcpError> {
        stream.write_all(&wire::encode_frame(kind, payload)?)?;
        Ok(())
    }

    fn fresh_nonce() -> Result<Nonce, TcpError> {
        let mut nonce = [0; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| TcpError::Random(e.to_string()))?;
        Ok(nonce)
    }

    /// The first byte a connection sends, left in the socket; waits at most the
    /// handshake timeout.
    fn peek_first_byte(
        &self,
        stream: &TcpStream,
        cancel: &CancellationToken,
    ) -> Result<u8, TcpError> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let mut byte = [0; 1];
        // Bounded: every turn peeks a byte or waits a poll interval, until the deadline.
        loop {
            match stream.peek(&mut byte) {
                Ok(0) => return Err(TcpError::Closed),
                Ok(_) => return Ok(byte[0]),
                Err(e) if is_read_timeout(&e) => {
                    if cancel.is_cancelled() {
                        return Err(TcpError::Cancelled);
                    }
                    if Instant::now() >= deadline {
                        return Err(TcpError::Timeout {
                            what: "the handshake",
                            after: self.config.handshake_timeout,
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The first frame of the peer's handshake reply: a HELLO, or a REJECT.
    fn read_handshake_frame(
        &self,
        stream: &mut TcpStream,
        expected: FrameKind,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, TcpError> {
        let (kind, payload) =
            self.read_frame(stream, HANDSHAKE_FRAME_BYTES_MAX, Some(deadline), cancel)?;
        if kind == expected {
            return Ok(payload);
        }
        if kind == FrameKind::Reject {
            return Err(TcpError::RefusedByPeer(RejectReason::decode(&payload)?));
        }
        Err(Self::refuse(
            stream,
            RejectReason::ProtocolViolation,
            format!("expected {expected:?} during the handshake, got {kind:?}"),
        ))
    }

    /// Checks a peer's HELLO against our cluster.
    fn check_hello(&self, stream: &mut TcpStream, hello: &Hello) -> Result<(), TcpError> {
        if hello.cluster != self.config.cluster {
            return Err(Self::refuse(
                stream,
                RejectReason::ClusterMismatch,
                format!(
                    "the peer is in cluster {}, this store in cluster {}",
                    hello.cluster, self.config.cluster
                ),
            ));
        }
        Ok(())
    }

    /// The dialing side of the handshake.
    fn handshake_connector(
        &self,
        stream: &mut TcpStream,
        peer: StoreId,
        cancel: &CancellationToken,
    ) -> Result<(), TcpError> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let me = self.config.store;
        let nonce = Self::fresh_nonce()?;
        let hello = Hello { cluster: self.config.cluster, store: me, nonce };
        Self::write_frame(stream, FrameKind::Hello, &hello.encode())?;

        let theirs = Hello::decode(&self.read_handshake_frame(
            stream,
            FrameKind::Hello,
            deadline,
            cancel,
        )?)?;
        self.check_hello(stream, &theirs)?;
        if theirs.store != peer {
            return Err(Self::refuse(
                stream,
                RejectReason::UnexpectedStore,
                format!("dialed store {} but store {} answered", peer.0, theirs.store.0),
            ));
        }
        let transcript = Transcript {
            cluster: self.config.cluster,
            connector: me,
            acceptor: peer,
            connector_nonce: nonce,
            acceptor_nonce: theirs.nonce,
        };
        let proof = Proof::decode(&self.read_handshake_frame(
            stream,
            FrameKind::Proof,
            deadline,
            cancel,
        )?)?;
        if !proof.verify(&self.key, Role::Acceptor, &transcript) {
            return Err(Self::refuse(
                stream,
                RejectReason::BadProof,
                "the peer's proof does not match this store's cluster secret".into(),
            ));
        }
        let ours = Proof::make(&self.key, Role::Connector, &transcript);
        Self::write_frame(stream, FrameKind::Proof, &ours.encode())?;
        self.read_handshake_frame(stream, FrameKind::Accept, deadline, cancel)?;
        Ok(())
    }

    /// The accepting side of the handshake; returns the authenticated peer store.
    fn handshake_acceptor(
        &self,
        stream: &mut TcpStream,
        cancel: &CancellationToken,
    ) -> Result<StoreId, TcpError> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let me = self.config.store;
        let payload =
            match self.read_frame(stream, HANDSHAKE_FRAME_BYTES_MAX, Some(deadline), cancel) {
                Ok((FrameKind::Hello, payload)) => payload,
                Ok((kind, _)) => {
                    return Err(Self::refuse(
                        stream,
                        RejectReason::ProtocolViolation,
                        format!("expected Hello to open the handshake, got {kind:?}"),
                    ));
                }
                Err(TcpError::Wire(e @ WireError::UnsupportedVersion { .. })) => {
                    return Err(Self::refuse(
                        stream,
                        RejectReason::UnsupportedVersion,
                        e.to_string(),
                    ));
                }
                Err(e) => return Err(e),
            };
        let theirs = Hello::decode(&payload)?;
        self.check_hello(stream, &theirs)?;
        if theirs.store == me {
            return Err(Self::refuse(
                stream,
                RejectReason::UnexpectedStore,
                format!("the peer claims this store's own id {}", me.0),
            ));
        }
        let nonce = Self::fresh_nonce()?;
        let transcript = Transcript {
            cluster: self.config.cluster,
            connector: theirs.store,
            acceptor: me,
            connector_nonce: theirs.nonce,
            acceptor_nonce: nonce,
        };
        let hello = Hello { cluster: self.config.cluster, store: me, nonce };
        let proof = Proof::make(&self.key, Role::Acceptor, &transcript);
        let mut reply = wire::encode_frame(FrameKind::Hello, &hello.encode())?;
        reply.extend_from_slice(&wire::encode_frame(FrameKind::Proof, &proof.encode())?);
        stream.write_all(&reply)?;

        let proof = Proof::decode(&self.read_handshake_frame(
            stream,
            FrameKind::Proof,
            deadline,
            cancel,
        )?)?;
        if !proof.verify(&self.key, Role::Connector, &transcript) {
            return Err(Self::refuse(
                stream,
                RejectReason::BadProof,
                "the peer's proof does not match this store's cluster secret".into(),
            ));
        }
        Self::write_frame(stream, FrameKind::Accept, &[])?;
        Ok(theirs.store)
    }

    // ---- the acceptor and readers ----

    fn run_acceptor(self: &Arc<Self>, listener: &TcpListener) {
        let store = self.config.store.0;
        // Bounded: ends when the token is cancelled; each idle turn waits a poll interval.
        while !self.cancel.is_cancelled() {
            match listener.accept() {
                Ok((stream, remote)) => self.on_accept(stream, remote),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.cancel.wait_timeout(self.config.poll_interval);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors, for instance: back off, keep serving.
                    tracing::warn!(store, error = %e, "tcp accept failed");
                    self.cancel.wait_timeout(self.config.poll_interval);
                }
            }
        }
        tracing::debug!(store, "tcp acceptor stopped");
    }

    fn on_accept(self: &Arc<Self>, mut stream: TcpStream, remote: SocketAddr) {
        bump(&self.counters.connections_accepted, 1);
        let live = self.inbound.fetch_add(1, Ordering::AcqRel);
        if live >= self.config.inbound_connections_max {
            self.inbound.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                store = self.config.store.0,
                %remote,
                limit = self.config.inbound_connections_max,
                "refusing tcp connection from {remote}: too many connections"
            );
            let _ = stream.set_write_timeout(Some(self.config.poll_interval));
            let err = Self::refuse(&mut stream, RejectReason::Busy, "too many connections".into());
            self.note_rejection(remote, Direction::Inbound, &err);
            return;
        }
        let name = format!("tcp-recv-{}-{}", self.config.store.0, remote.port());
        let spawned = self.spawn(name, "tcp reader", move |s| {
            // Released even if the inbox panics in `deliver`.
            let _slot = InboundSlot(&s.inbound);
            s.run_reader(stream, remote);
        });
        if let Err(e) = spawned {
            self.inbound.fetch_sub(1, Ordering::AcqRel);
            if !e.is_cancelled() {
                tracing::warn!(store = self.config.store.0, %remote, error = %e, "no reader thread for {remote}");
            }
        }
    }

    fn run_reader(&self, mut stream: TcpStream, remote: SocketAddr) {
        let me = self.config.store.0;
        let cancel = &self.cancel;
        let registered = match self
            .prepare(&stream)
            .map_err(TcpError::from)
            .and_then(|()| self.register(&stream))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(store = me, %remote, error = %e, "dropping accepted connection");
                return;
            }
        };
        if let Some(other) = &self.other_protocol {
            match self.peek_first_byte(&stream, cancel) {
                Ok(byte) if byte == other.first_byte() => {
                    other.serve(stream, remote, cancel);
                    drop(registered);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.is_cancelled() => return,
                Err(e) => {
                    self.note_rejection(remote, Direction::Inbound, &e);
                    tracing::info!(store = me, %remote, reason = %e, "closing tcp connection from {remote}: nothing received: {e}");
                    return;
                }
            }
        }
        let peer = match self.handshake_acceptor(&mut stream, cancel) {
            Ok(peer) => peer,
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                self.note_rejection(remote, Direction::Inbound, &e);
                tracing::warn!(store = me, %remote, reason = %e, "closing tcp connection from {remote}: handshake failed: {e}");
                return;
            }
        };
        bump(&self.counters.handshakes_completed, 1);
        tracing::debug!(store = me, %remote, peer = peer.0, "inbound tcp connection authenticated");
        // Bounded: ends at the first error, at the peer closing, or at cancellation.
        let end = loop {
            let (kind, payload) =
                match self.read_frame(&mut stream, self.config.frame_bytes_max, None, cancel) {
                    Ok(frame) => frame,
                    Err(e) => break e,
                };
            if kind != FrameKind::Batch {
                break TcpError::Wire(WireError::UnexpectedKind { expected: "Batch", found: kind });
            }
            let envelopes = match wire::decode_batch(&Bytes::from(payload)) {
                Ok(envelopes) => envelopes,
                Err(e) => break e.into(),
            };
            bump(&self.counters.frames_received, 1);
            self.on_batch(peer, envelopes);
        };
        drop(registered);
        match end {
            TcpError::Cancelled => {}
            TcpError::Closed => {
                tracing::debug!(store = me, %remote, peer = peer.0, "peer closed its tcp connection");
            }
            TcpError::Wire(e) => {
                bump(&self.counters.bad_frames, 1);
                tracing::warn!(store = me, %remote, peer = peer.0, reason = %e, "closing tcp connection from {remote}: bad frame: {e}");
            }
            e => {
                tracing::info!(store = me, %remote, peer = peer.0, error = %e, "tcp connection from {remote} failed: {e}");
            }
        }
    }

    fn on_batch(&self, peer: StoreId, mut envelopes: Vec<Envelope>) {
        let me = self.config.store;
        let before = envelopes.len();
        envelopes.retain(|env| {
            let ok = env.to == me && env.from == peer;
            if !ok {
                tracing::debug!(
                    store = me.0,
                    peer = peer.0,
                    ?env,
                    "dropping a misaddressed envelope"
                );
            }
            ok
        });
        let misaddressed = (before - envelopes.len()) as u64;
        bump(&self.counters.envelopes_misaddressed, misaddressed);
        if !envelopes.is_empty() {
            bump(&self.counters.envelopes_received, envelopes.len() as u64);
            self.inbox.deliver(envelopes);
        }
    }

    // ---- senders ----

    fn run_sender(self: &Arc<Self>, sender: &PeerSender) {
        let me = self.config.store.0;
        let peer = sender.peer;
        let mut attempt: u32 = 0;
        let mut connected_before = false;
        // Bounded: ends when the peer is removed or the token cancelled; every failed
        // turn waits a backoff delay.
        while !sender.cancel.is_cancelled() {
            let Some(addr) = self.peer_addr(peer) else { break };
            let result = self.connect(sender, addr).and_then(|(stream, registered)| {
                if connected_before {
                    bump(&self.counters.reconnects, 1);
                }
                connected_before = true;
                attempt = 0;
                self.pump(sender, stream, addr, registered)
            });
            let failure = match result {
                Ok(PumpEnd::AddressChanged) => continue,
                Ok(PumpEnd::Removed) => break,
                Err(e) if e.is_cancelled() => break,
                Err(e) => e,
            };
            let dropped = sender.drain();
            bump(&self.counters.envelopes_dropped, dropped);
            let delay = self.config.backoff.delay(attempt);
            if attempt == 0 {
                tracing::info!(store = me, peer = peer.0, %addr, error = %failure, dropped, "tcp connection to store {} at {addr} failed: {failure}; reconnecting with backoff", peer.0);
            } else {
                tracing::debug!(store = me, peer = peer.0, %addr, error = %failure, dropped, ?delay, "tcp connection to peer failed again");
            }
            attempt = attempt.saturating_add(1);
            if sender.cancel.wait_timeout(delay) {
                break;
            }
        }
        tracing::debug!(store = me, peer = peer.0, "tcp sender stopped");
    }

    /// Dials `addr` and runs the handshake.
    fn connect(
        &self,
        sender: &PeerSender,
        addr: SocketAddr,
    ) -> Result<(TcpStream, Registered<'_>), TcpError> {
        let me = self.config.store.0;
        let peer = sender.peer;
        let mut stream = match TcpStream::connect_timeout(&addr, self.config.connect_timeout) {
            Ok(stream) => stream,
            Err(e) => {
                bump(&self.counters.connect_failures, 1);
                return Err(e.into());
            }
        };
        self.prepare(&stream)?;
        let registered = self.register(&stream)?;
        match self.handshake_connector(&mut stream, peer, &sender.cancel) {
            Ok(()) => {
                bump(&self.counters.handshakes_completed, 1);
                tracing::debug!(store = me, peer = peer.0, %addr, "outbound tcp connection authenticated");
                Ok((stream, registered))
            }
            Err(e) if e.is_cancelled() => Err(e),
            Err(e) => {
                self.note_rejection(addr, Direction::Outbound, &e);
                tracing::warn!(store = me, peer = peer.0, remote = %addr, reason = %e, "closing tcp connection to {addr}: handshake failed: {e}");
                Err(e)
            }
        }
    }

    /// Sends batches over an authenticated connection until it fails, the peer's
    /// address changes, or the peer is removed.
    fn pump(
        &self,
        sender: &PeerSender,
        mut stream: TcpStream,
        addr: SocketAddr,
        _registered: Registered<'_>,
    ) -> Result<PumpEnd, TcpError> {
        let frame_max = self.config.frame_bytes_max as usize;
        let mut buf = Vec::new();
        let mut carry: Option<Envelope> = None;
        // Bounded: each turn waits at most a poll interval, and ends on cancellation.
        loop {
            if sender.cancel.is_cancelled() {
                return Err(TcpError::Cancelled);
            }
            if self.peer_addr(sender.peer) != Some(addr) {
                return Ok(PumpEnd::AddressChanged);
            }
            let first = match carry.take() {
                Some(env) => env,
                None => match sender.rx.recv_timeout(self.config.poll_interval) {
                    Ok(env) => sender.take(env),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(PumpEnd::Removed),
                },
            };
            buf.clear();
            wire::begin_frame(&mut buf);
            let mut count: u64 = 0;
            let mut next = Some(first);
            // Bounded: stops at the batch byte bound or when the queue is empty.
            while let Some(env) = next.take() {
                let at = buf.len();
                match wire::encode_envelope(&env, &mut buf) {
                    Err(e) => {
                        buf.truncate(at);
                        bump(&self.counters.envelopes_dropped, 1);
                        tracing::warn!(peer = sender.peer.0, error = %e, ?env, "envelope dropped: cannot encode it");
                    }
                    Ok(()) if buf.len() - FRAME_HEADER_BYTES > frame_max => {
                        buf.truncate(at);
                        if count == 0 {
                            bump(&self.counters.envelopes_dropped, 1);
                            tracing::warn!(
                                peer = sender.peer.0,
                                ?env,
                                frame_bytes_max = frame_max,
                                "envelope dropped: larger than a frame"
                            );
                        } else {
                            carry = Some(env);
                            break;
                        }
                    }
                    Ok(()) => count += 1,
                }
                if buf.len() - FRAME_HEADER_BYTES >= self.config.batch_bytes_max {
                    break;
                }
                next = sender.rx.try_recv().ok().map(|env| sender.take(env));
            }
            if count == 0 {
                continue;
            }
            wire::finish_frame(&mut buf, FrameKind::Batch)?;
            let written = if peer_has_closed(&stream) {
                Err(TcpError::Closed)
            } else {
                stream.write_all(&buf).map_err(TcpError::from)
            };
            if let Err(e) = written {
                bump(&self.counters.envelopes_dropped, count + u64::from(carry.is_some()));
                return Err(e);
            }
            bump(&self.counters.frames_sent, 1);
            bump(&self.counters.envelopes_sent, count);
        }
    }
}

/// True if the acceptor closed the connection. It sends nothing after ACCEPT, so a
/// readable socket means end of stream (or a broken protocol): a write would go to a
/// dead connection and its envelopes would be lost.
fn peer_has_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let peeked = stream.peek(&mut byte);
    let restored = stream.set_nonblocking(false);
    match peeked {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => restored.is_err(),
        Ok(_) | Err(_) => true,
    }
}

/// True for the errors a socket read with a timeout returns when nothing arrived in
/// time (or a signal interrupted it): the caller checks its deadline and reads again.
pub fn is_read_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(100) };
        let delays: Vec<u128> = (0..6).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn configs_are_validated_and_the_secret_is_not_printed() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let good =
            TcpConfig::new(StoreId(1), addr, ClusterId(1), b"0123456789abcdef-secret".to_vec());
        assert!(good.validate().is_ok());
        assert!(!format!("{good:?}").contains("0123456789abcdef"));
        let short = TcpConfig { secret: b"short".to_vec(), ..good.clone() };
        assert!(matches!(short.validate(), Err(TcpError::Config(_))));
        let batch =
            TcpConfig { batch_bytes_max: 1 << 30, frame_bytes_max: 1 << 20, ..good.clone() };
        assert!(matches!(batch.validate(), Err(TcpError::Config(_))));
        let mut own = good;
        own.peers.insert(StoreId(1), addr);
        assert!(matches!(own.validate(), Err(TcpError::Config(_))));
    }
}
