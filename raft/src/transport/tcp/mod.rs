//! The TCP transport: authenticated connections between stores, carrying batches of
//! envelopes in checksummed, bounded frames ([`super::wire`]). This file is its public
//! API; the threads live in `threads`, the rest in `config`, `error` and `stats`.
//!
//! Each store runs one [`TcpTransport`]: a listener, and one outbound connection per
//! peer store. Connections carry data one way only, from the store that dialed to the
//! store that accepted; a pair of stores uses two connections.
//!
//! ## Handshake
//!
//! Before a single Raft message is decoded, each side proves that it knows the cluster
//! secret, without sending it: the shared handshake of [`super::handshake`], with the
//! store transport's key ([`HandshakeKey::derive`]). The dialing store refuses an
//! acceptor that is not the store it dialed; the accepting store refuses a peer that
//! claims its own id. Any failure closes the connection with a `warn` line naming the
//! remote address and the reason, and is counted ([`TcpTransport::recent_rejections`]);
//! the transport keeps serving other peers.
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
//! - `tcp-recv`: one per accepted connection: handshake, then BATCH frames read through
//!   a buffer (one `read` for the frames that arrived together), decoded and handed to
//!   the store's [`Inbox`]; a frame that fails its checks closes the connection;
//! - `tcp-send`: one per peer store: dials and runs the handshake, drains the peer's
//!   bounded queue, batches what is queued into one frame, writes it (after a poll
//!   interval of silence it first probes whether the peer closed the connection), and
//!   reconnects with bounded exponential backoff after errors.
//!
//! While a peer's connection is up, nothing waits in its queue and the peer sent a
//! frame since the last one went to it, [`Transport::send`] writes the peer's
//! envelopes as one frame on the calling thread, with a send that does not wait, and
//! the sender thread is not woken (`link.rs`; a store that sends again before its
//! peer answered hands over, so that frames batch under load). Whoever writes holds
//! the connection's write turn (`send` only tries it); a frame the full socket takes
//! in part leaves its rest to the sender thread, which writes it first; and envelopes
//! queued or in the sender's hands keep later `send`s queued behind them, so frames
//! leave in the order `send` was called.
//!
//! [`TcpTransport::shutdown`] (also run on drop) cancels every thread's token, shuts
//! down every socket (which unblocks blocked reads and writes), waits for the threads
//! to leave the transport's gate, bounded by [`TcpConfig::shutdown_timeout`], and joins
//! them.

mod config;
mod error;
mod link;
mod stats;
mod threads;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use regionkv_engine::StoreId;
use regionkv_wal::lifecycle::{CancellationToken, Gate};

pub use self::config::{Backoff, FRAME_BYTES_MIN, SECRET_BYTES_MIN, TcpConfig};
pub use self::error::{Direction, Rejection, TcpError};
use self::link::{PeerLink, Queued};
use self::stats::{Counters, bump};
pub use self::stats::{QueueDepth, TcpStats};
use self::threads::PeerSender;
use super::handshake::{HandshakeKey, Names, RejectReason, Vet, identity_fields, identity_of};
use super::wire;
use super::{Body, Envelope, Inbox, Transport};
use crate::identity::{Admission, PeerBook, replaced_message};

/// How many recent handshake failures [`TcpTransport::recent_rejections`] keeps.
pub const REJECTIONS_KEPT: usize = 32;
/// Payload bytes read into memory at a time: a frame's buffer grows as its bytes
/// arrive, so a peer announcing a large frame and then stalling costs at most this.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// How the store transport's refusals name the two sides.
const STORE_NAMES: Names = Names { me: "this store", peer: "the peer" };

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

/// A peer's send queue and connection, shared by `send` and the peer's sender thread.
struct PeerSlot {
    addr: SocketAddr,
    queue: Sender<Queued>,
    link: Arc<PeerLink>,
    queued_bytes: Arc<AtomicUsize>,
    /// Cancels the peer's sender when the peer is removed.
    cancel: CancellationToken,
}

/// What the transport's handle and its threads share.
struct Shared {
    config: TcpConfig,
    key: HandshakeKey,
    /// This store's own HELLO fields (its incarnation), and the check of a peer's.
    hello_extra: Vec<u8>,
    vet: Option<Box<Vet>>,
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
        let hello_extra =
            config.identity.as_ref().map(|b| identity_fields(&b.identity())).unwrap_or_default();
        let vet = config.identity.clone().map(|book| -> Box<Vet> {
            let me = config.store.0;
            Box::new(move |peer, hello| vet_incarnation(&book, me, peer, hello))
        });
        let peers = std::mem::take(&mut config.peers);
        // The secret is not kept: only the key derived from it.
        config.secret = Vec::new();
        let shared = Arc::new(Shared {
            config,
            key,
            hello_extra,
            vet,
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
        let link = Arc::new(PeerLink::default());
        let cancel = shared.cancel.child();
        let sender = PeerSender {
            peer: store,
            rx,
            queued_bytes: queued_bytes.clone(),
            link: link.clone(),
            cancel: cancel.clone(),
        };
        let name = format!("tcp-send-{}-{}", shared.config.store.0, store.0);
        shared.spawn(name, "tcp sender", move |s| s.run_sender(&sender))?;
        peers.insert(store, PeerSlot { addr, queue, link, queued_bytes, cancel });
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
        self.shared.counters.snapshot()
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
    /// Each peer's envelopes go out as one frame written by this thread when the
    /// connection is up, nothing waits in the peer's queue and the socket takes the
    /// frame without waiting; otherwise they queue for the peer's sender thread.
    fn send(&self, envelopes: Vec<Envelope>) {
        let shared = &self.shared;
        let c = &shared.counters;
        let peers = shared.peers.read();
        for (to, batch) in by_peer(envelopes) {
            let Some(slot) = peers.get(&to) else {
                tracing::debug!(to = to.0, "no address for the store; envelopes dropped");
                bump(&c.envelopes_dropped, batch.len() as u64);
                continue;
            };
            // Counted in the link's backlog from here until written or dropped.
            for env in shared.send_inline(slot, batch) {
                let bytes = estimated_bytes(&env);
                let before = slot.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
                let queued = before + bytes <= shared.config.queue_bytes_max
                    && slot.queue.try_send(Queued::Envelope(env)).is_ok();
                if queued {
                    bump(&c.envelopes_queued, 1);
                } else {
                    // Full (or the peer is going): dropped.
                    slot.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    slot.link.backlog.fetch_sub(1, Ordering::SeqCst);
                    bump(&c.envelopes_dropped, 1);
                }
            }
        }
    }
}

/// `envelopes` grouped by the store they go to, each group in the order given.
fn by_peer(envelopes: Vec<Envelope>) -> Vec<(StoreId, Vec<Envelope>)> {
    let mut groups: Vec<(StoreId, Vec<Envelope>)> = Vec::new();
    for env in envelopes {
        // A handful of peers: a linear search beats a map.
        match groups.iter_mut().find(|(to, _)| *to == env.to) {
            Some((_, group)) => group.push(env),
            None => groups.push((env.to, vec![env])),
        }
    }
    groups
}

/// The store transport's check of an authenticated peer: its incarnation, by the book.
fn vet_incarnation(
    book: &PeerBook,
    me: u64,
    peer: StoreId,
    hello: &[u8],
) -> Result<(), (RejectReason, String)> {
    let found = identity_of(hello)
        .map_err(|e| (RejectReason::ProtocolViolation, format!("store {peer}'s hello: {e}")))?;
    match book.admit(peer, found) {
        Admission::Accepted => Ok(()),
        Admission::Replaced { known, found } => {
            let message = replaced_message(peer, known, found);
            tracing::warn!(store = me, peer = peer.0, "{message}");
            Err((RejectReason::Replaced, message))
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
        Body::Hibernate { .. } | Body::Alive | Body::Gone { .. } => OVERHEAD_BYTES,
    }
}
