//! The TCP transport's threads: the acceptor, a reader per accepted connection, and a
//! sender per peer store (dial, handshake, pump batches), with their socket plumbing.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use regionkv_engine::StoreId;
use regionkv_wal::lifecycle::CancellationToken;

use super::error::{Direction, Rejection, TcpError};
use super::link::{PeerLink, Queued, peer_has_closed};
use super::stats::bump;
use super::{READ_CHUNK_BYTES, REJECTIONS_KEPT, STORE_NAMES, Shared, estimated_bytes};
use crate::transport::Envelope;
use crate::transport::frame::{
    FRAME_HEADER_BYTES, FrameKind, FrameReader, FrameStream, WireError, begin_frame,
    is_read_timeout,
};
use crate::transport::handshake::{Expect, Handshake, RejectReason};
use crate::transport::seal::{LinkMode, LinkReader, Sealer};
use crate::transport::wire::{self, FRAMES};

/// What a sender thread owns.
pub(super) struct PeerSender {
    pub(super) peer: StoreId,
    pub(super) rx: Receiver<Queued>,
    pub(super) queued_bytes: Arc<AtomicUsize>,
    pub(super) link: Arc<PeerLink>,
    pub(super) cancel: CancellationToken,
}

impl PeerSender {
    /// The next queued envelope, with its bytes released from the queue's account
    /// (it stays in the link's backlog until written or dropped: [`PeerSender::settle`]).
    fn take(&self, env: Envelope) -> Envelope {
        self.queued_bytes.fetch_sub(estimated_bytes(&env), Ordering::Relaxed);
        env
    }

    /// The next queued envelope, if any (notices of a leftover are skipped: the turn is
    /// looked at before every write).
    fn try_next(&self) -> Option<Envelope> {
        // Bounded: by the queue's capacity.
        loop {
            match self.rx.try_recv().ok()? {
                Queued::Envelope(env) => return Some(self.take(env)),
                Queued::Leftover => {}
            }
        }
    }

    /// `n` envelopes taken from the queue were written or dropped.
    fn settle(&self, n: u64) {
        self.link.backlog.fetch_sub(n as usize, Ordering::SeqCst);
    }

    /// Drops everything queued (the peer is unreachable; Raft resends); returns how many.
    fn drain(&self) -> u64 {
        let mut n = 0;
        // Bounded: the queue holds at most `queue_capacity`, and `send` may add more
        // meanwhile, so stop after one queue's worth.
        for queued in self.rx.try_iter().take(self.rx.capacity().unwrap_or(0)) {
            if let Queued::Envelope(env) = queued {
                drop(self.take(env));
                n += 1;
            }
        }
        self.settle(n);
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
    /// Runs `f` on a new thread named `name`, inside the transport's gate (as
    /// `holder`); fails once shutdown closed the gate.
    pub(super) fn spawn(
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

    /// Where `store` is dialed, if it is a peer.
    pub(super) fn peer_addr(&self, store: StoreId) -> Option<SocketAddr> {
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

    /// A frame reader of the store protocol on this transport's bounds.
    fn reader<'a>(&self, cancel: &'a CancellationToken) -> FrameReader<'a> {
        FrameReader {
            format: &FRAMES,
            cancel: Some(cancel),
            stall: self.config.stall_timeout,
            chunk_bytes: READ_CHUNK_BYTES,
        }
    }

    /// This store's side of a handshake, reading with `cancel`.
    fn handshake<'a>(&'a self, cancel: &'a CancellationToken) -> Handshake<'a> {
        Handshake {
            reader: self.reader(cancel),
            key: &self.key,
            client_key: None,
            link: LinkMode::from_insecure(self.config.insecure),
            cluster: self.config.cluster,
            me: self.config.store,
            timeout: self.config.handshake_timeout,
            hello_extra: &self.hello_extra,
            names: STORE_NAMES,
            vet: self.vet.as_deref(),
        }
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

    // ---- the acceptor and readers ----

    pub(super) fn run_acceptor(self: &Arc<Self>, listener: &TcpListener) {
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
            let err = TcpError::from(self.handshake(&self.cancel).refuse(
                &mut stream,
                RejectReason::Busy,
                "too many connections".into(),
            ));
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
        let accepted = self.handshake(cancel).accept(&mut stream, Expect::NotMe);
        let (peer, opener) = match accepted.map_err(TcpError::from) {
            Ok(authenticated) => {
                let (peer, opener, _) = authenticated.split();
                (peer, opener)
            }
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                self.note_rejection(remote, Direction::Inbound, &e);
                tracing::warn!(store = me, %remote, reason = %e, "closing tcp connection from {remote}: handshake failed: {e}");
                return;
            }
        };
        bump(&self.counters.handshakes_completed, 1);
        tracing::debug!(store = me, %remote, peer = peer.0, "inbound tcp connection authenticated");
        // Buffered: the batches that arrived together are taken with one read.
        // Sealed: records are opened before any byte reaches the frame reader.
        let mut frames = FrameStream::new(self.reader(cancel), LinkReader::new(&stream, opener));
        // Bounded: ends at the first error, at the peer closing, or at cancellation.
        let end = loop {
            let (kind, payload) = match frames.frame(self.config.frame_bytes_max) {
                Ok(frame) => frame,
                Err(e) => break TcpError::from(e),
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
                if matches!(e, WireError::Unauthenticated(_)) {
                    bump(&self.counters.unauthenticated_records, 1);
                }
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
            // Before the delivery: the answers the store sends to these find the peer
            // heard (`Shared::send_inline`).
            if let Some(slot) = self.peers.read().get(&peer) {
                slot.link.heard.fetch_add(1, Ordering::SeqCst);
            }
            self.inbox.deliver(envelopes);
        }
    }

    // ---- senders ----

    pub(super) fn run_sender(self: &Arc<Self>, sender: &PeerSender) {
        let me = self.config.store.0;
        let peer = sender.peer;
        let mut attempt: u32 = 0;
        let mut connected_before = false;
        // Bounded: ends when the peer is removed or the token cancelled; every failed
        // turn waits a backoff delay.
        while !sender.cancel.is_cancelled() {
            let Some(addr) = self.peer_addr(peer) else { break };
            let result = self.connect(sender, addr).and_then(|(stream, registered, sealer)| {
                if connected_before {
                    bump(&self.counters.reconnects, 1);
                }
                connected_before = true;
                attempt = 0;
                self.pump(sender, &stream, addr, registered, sealer)
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
    ) -> Result<(TcpStream, Registered<'_>, Option<Sealer>), TcpError> {
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
        let connected = self.handshake(&sender.cancel).connect(&mut stream, Expect::Store(peer));
        match connected.map_err(TcpError::from) {
            Ok(authenticated) => {
                bump(&self.counters.handshakes_completed, 1);
                tracing::debug!(store = me, peer = peer.0, %addr, "outbound tcp connection authenticated");
                Ok((stream, registered, authenticated.split().2))
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
    /// address changes, or the peer is removed. While this runs, `send` writes to the
    /// connection too, through the peer's link, when it can without waiting.
    fn pump(
        &self,
        sender: &PeerSender,
        stream: &TcpStream,
        addr: SocketAddr,
        _registered: Registered<'_>,
        sealer: Option<Sealer>,
    ) -> Result<PumpEnd, TcpError> {
        let link = &sender.link;
        {
            let mut turn = link.turn.lock();
            turn.stream = Some(stream.try_clone()?);
            turn.sealer = sealer;
            // The handshake just showed the peer alive.
            turn.last_write = Some(Instant::now());
        }
        let mut carry: Option<Envelope> = None;
        let end = self.pump_frames(sender, stream, addr, &mut carry);
        // The connection is over: inline writes stop, and what was in hand is lost
        // (Raft resends).
        let mut turn = link.turn.lock();
        turn.stream = None;
        turn.sealer = None;
        turn.leftover.clear();
        let lost = std::mem::take(&mut turn.leftover_envelopes) + u64::from(carry.is_some());
        sender.settle(u64::from(carry.is_some()));
        drop(turn);
        bump(&self.counters.envelopes_dropped, lost);
        end
    }

    /// The loop of [`Shared::pump`]: each turn takes the queued envelopes into one
    /// frame and writes it holding the link's write turn, after the rest of a frame
    /// written inline in part. An envelope that did not fit the last frame is left in
    /// `carry`.
    fn pump_frames(
        &self,
        sender: &PeerSender,
        mut stream: &TcpStream,
        addr: SocketAddr,
        carry: &mut Option<Envelope>,
    ) -> Result<PumpEnd, TcpError> {
        let frame_max = self.config.frame_bytes_max as usize;
        let c = &self.counters;
        let mut buf = Vec::new();
        // Bounded: each turn waits at most a poll interval, and ends on cancellation.
        loop {
            if sender.cancel.is_cancelled() {
                return Err(TcpError::Cancelled);
            }
            if self.peer_addr(sender.peer) != Some(addr) {
                return Ok(PumpEnd::AddressChanged);
            }
            let first = match carry.take() {
                Some(env) => Some(env),
                None => match sender.rx.recv_timeout(self.config.poll_interval) {
                    Ok(Queued::Envelope(env)) => Some(sender.take(env)),
                    Ok(Queued::Leftover) => None,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(PumpEnd::Removed),
                },
            };
            let mut turn = sender.link.turn.lock();
            if !turn.leftover.is_empty() {
                if let Err(e) = stream.write_all(&turn.leftover) {
                    // Counted lost with the leftover by `pump`.
                    *carry = first;
                    return Err(e.into());
                }
                turn.leftover.clear();
                bump(&c.frames_sent, 1);
                bump(&c.envelopes_sent, std::mem::take(&mut turn.leftover_envelopes));
                turn.last_write = Some(Instant::now());
                turn.heard_at_write = Some(sender.link.heard.load(Ordering::SeqCst));
            }
            let Some(first) = first else { continue };
            buf.clear();
            begin_frame(&mut buf);
            // Envelopes in the frame, and those taken from the queue and done with
            // (in the frame, or dropped).
            let (mut count, mut settled): (u64, u64) = (0, 0);
            let mut next = Some(first);
            // Bounded: stops at the batch byte bound or when the queue is empty.
            while let Some(env) = next.take() {
                let at = buf.len();
                match wire::encode_envelope(&env, &mut buf) {
                    Err(e) => {
                        buf.truncate(at);
                        settled += 1;
                        bump(&c.envelopes_dropped, 1);
                        tracing::warn!(peer = sender.peer.0, error = %e, ?env, "envelope dropped: cannot encode it");
                    }
                    Ok(()) if buf.len() - FRAME_HEADER_BYTES > frame_max => {
                        buf.truncate(at);
                        if count == 0 {
                            settled += 1;
                            bump(&c.envelopes_dropped, 1);
                            tracing::warn!(
                                peer = sender.peer.0,
                                ?env,
                                frame_bytes_max = frame_max,
                                "envelope dropped: larger than a frame"
                            );
                        } else {
                            *carry = Some(env);
                            break;
                        }
                    }
                    Ok(()) => (count, settled) = (count + 1, settled + 1),
                }
                if buf.len() - FRAME_HEADER_BYTES >= self.config.batch_bytes_max {
                    break;
                }
                next = sender.try_next();
            }
            let written = if count == 0 {
                Ok(())
            } else {
                // A peer that closed the connection while it was idle (restarted, say)
                // is found before the write, which would go to a dead socket; while
                // frames flow, a closed peer fails a write soon enough.
                let idle = turn.last_write.is_none_or(|t| t.elapsed() >= self.config.poll_interval);
                let finished = FRAMES.finish(&mut buf, FrameKind::Batch).map_err(TcpError::from);
                finished.and_then(|()| turn.seal(&mut buf).map_err(TcpError::from)).and_then(|()| {
                    if idle && peer_has_closed(stream) {
                        Err(TcpError::Closed)
                    } else {
                        stream.write_all(&buf).map_err(TcpError::from)
                    }
                })
            };
            // Under the turn: `send` writes inline only once nothing is in hand.
            sender.settle(settled);
            if let Err(e) = written {
                bump(&c.envelopes_dropped, count);
                return Err(e);
            }
            if count > 0 {
                turn.last_write = Some(Instant::now());
                turn.heard_at_write = Some(sender.link.heard.load(Ordering::SeqCst));
                bump(&c.frames_sent, 1);
                bump(&c.envelopes_sent, count);
            }
        }
    }
}
