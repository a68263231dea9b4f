//! The node's side of the client protocol ([`crate::proto`]): served on the store
//! transport's listener for connections that open with the client magic.
//!
//! Each connection runs on the transport's reader thread: the handshake, then a loop
//! that reads requests (through a buffer: one `read` for every request that arrived
//! together) and hands them to the node's store (replies arrive later, on the store's
//! threads) or answers them at once; a writer thread, scoped to the connection, sends
//! the responses in the order they are ready, every answer queued at once in one
//! write.
//!
//! Every request gets exactly one answer, and no answer is dropped. A request counts
//! as in flight from the moment its frame is read until its answer is written to the
//! socket; at [`IN_FLIGHT_MAX`] the reader stops reading (the client's writes then
//! wait in TCP) until an answer goes out. So no more than `IN_FLIGHT_MAX` answers (and
//! the connection's last error) are ever queued for the writer, whose queue holds
//! that many: a store thread handing over an answer never waits and never finds the
//! queue full, however slowly the client reads. When the client stops sending, the
//! writer stays until the answers still in flight are written (bounded by
//! [`CLOSE_LINGER`] and by shutdown).
//!
//! Bad input never panics and never reaches the store: a malformed request
//! gets an error response and the connection goes on (its frame was intact); a frame
//! that fails its checks (magic, version, kind, size bound, checksum) gets an error
//! response with request id 0 and the connection is closed, with a `warn` line naming
//! the remote address and the reason.
//!
//! The service talks to the node through [`ClientHandler`], which the node implements:
//! it knows nothing else of the node.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use parking_lot::{Condvar, Mutex};
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::RegionRecord;
use regionkv_raft::transport::frame::{FrameError, FrameKind, FrameStream, WireError};
use regionkv_raft::transport::handshake::{ClusterId, HandshakeError, HandshakeKey};
use regionkv_raft::transport::tcp::SharedListener;
use regionkv_raft::{
    AdminRequest, ChangePeersRequest, QueryResult, ReadRequest, Reply, Store, WriteRequest,
};
use regionkv_wal::CancellationToken;

use crate::error::Result;
use crate::proto::{
    self, ErrorCode, IN_FLIGHT_MAX, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, RemoteError, Request,
    RequestError, Response, StoreStatus,
};
use crate::region_info::RegionInfo;

/// How long a client has for its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request that started must arrive whole within this.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the writer looks whether its connection ended.
const WRITER_POLL: Duration = Duration::from_millis(50);
/// Split, merge and region-table requests running at once on a node.
const ADMIN_TASKS_MAX: usize = 4;
/// How long a connection whose client stopped sending (or sent a bad frame) waits for
/// the answers still in flight before it closes.
const CLOSE_LINGER: Duration = Duration::from_secs(10);
/// Answers the writer's queue holds: every request in flight, and the connection's
/// last error.
const ANSWER_QUEUE: usize = IN_FLIGHT_MAX + 1;
const _: () = assert!(ANSWER_QUEUE > IN_FLIGHT_MAX, "room for the last error too");
/// Bytes of answers the writer hands to one `write` at most: it takes every answer
/// queued, up to this, so answers ready together cost one system call.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Scans of one connection in flight at once: each answer holds up to a page of the
/// store's scan caps (4 MiB by default), so this bounds what a client that reads
/// slowly makes the node hold for it to about 64 MiB, where the request bound alone
/// would allow `IN_FLIGHT_MAX` pages.
const SCANS_IN_FLIGHT_MAX: usize = 16;

/// A request's id, its answer, and whether it counts as a scan in flight.
type Answer = (u64, Result<Response, RemoteError>, bool);

/// What the client service needs from the node it serves (the node implements it).
/// Calls come from connection threads, any number at once.
pub(crate) trait ClientHandler: Send + Sync {
    /// True once the node shuts down: requests are answered `Cancelled` from then on.
    fn is_shut(&self) -> bool;
    /// The node's store: it serves reads, writes, admin and status requests.
    fn store(&self) -> &Store;
    /// Where `key` lives as this node's store knows it (`None`: it does not know).
    fn locate_local(&self, key: &[u8]) -> Option<RegionRecord>;
    /// The cluster's stores and where they listen.
    fn members(&self) -> Vec<(StoreId, String)>;
    /// Runs `f` on a thread of its own inside the node's task gate, so that shutdown
    /// waits for it; false (and `f` dropped) if the node is stopping.
    fn spawn_task(&self, name: &'static str, f: Box<dyn FnOnce() + Send>) -> bool;
    /// Splits the region holding `key` at `key`; returns the two regions, left first.
    fn split(&self, key: &[u8]) -> Result<Vec<Region>>;
    /// Merges region `right` into its left neighbour `left`; returns the merged region.
    fn merge(&self, left: RegionId, right: RegionId) -> Result<Region>;
    /// The user regions in key order, as the replicas of the stores that answer see them.
    fn regions(&self) -> Vec<RegionInfo>;
    /// Adds store `store`, listening at `addr`, to every region (see
    /// [`Node::add_store`](crate::Node::add_store)).
    fn add_store(&self, store: StoreId, addr: &str) -> Result<Vec<Region>>;
    /// Removes store `store` from every region.
    fn remove_store(&self, store: StoreId) -> Result<Vec<Region>>;
    /// Store `store` listens at `addr` from now on.
    fn learn_member(&self, store: StoreId, addr: &str) -> Result<()>;
}

/// Counters of the client service since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Client connections that completed the handshake.
    pub connections: u64,
    /// Client handshakes refused or failed (wrong secret or cluster, garbage, ...).
    pub handshake_failures: u64,
    /// Frames that failed their checks (each closed its connection).
    pub bad_frames: u64,
    /// Requests that did not decode (each answered with an error).
    pub malformed_requests: u64,
    /// Requests served.
    pub requests: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    handshake_failures: AtomicU64,
    bad_frames: AtomicU64,
    malformed_requests: AtomicU64,
    requests: AtomicU64,
}

/// Serves the client protocol for one node.
pub(crate) struct ClientService {
    key: HandshakeKey,
    cluster: ClusterId,
    store: StoreId,
    /// The node, once it is up; requests before that (or after it is gone) are
    /// answered with `Cancelled`.
    node: OnceLock<Weak<dyn ClientHandler>>,
    counters: Counters,
    admin_tasks: Arc<AtomicUsize>,
}

impl ClientService {
    pub fn new(key: HandshakeKey, cluster: ClusterId, store: StoreId) -> ClientService {
        ClientService {
            key,
            cluster,
            store,
            node: OnceLock::new(),
            counters: Counters::default(),
            admin_tasks: Arc::default(),
        }
    }

    pub fn bind(&self, node: Weak<dyn ClientHandler>) {
        let _ = self.node.set(node);
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            connections: get(&c.connections),
            handshake_failures: get(&c.handshake_failures),
            bad_frames: get(&c.bad_frames),
            malformed_requests: get(&c.malformed_requests),
            requests: get(&c.requests),
        }
    }
}

impl SharedListener for ClientService {
    fn first_byte(&self) -> u8 {
        proto::MAGIC[0]
    }

    fn serve(&self, mut stream: TcpStream, remote: SocketAddr, cancel: &CancellationToken) {
        let me = self.store.0;
        let reader = proto::reader(Some(cancel), STALL_TIMEOUT);
        let peer = match proto::handshake_node(
            &mut stream,
            reader,
            &self.key,
            self.cluster,
            self.store,
            HANDSHAKE_TIMEOUT,
        ) {
            Ok(peer) => peer,
            Err(e) => {
                if !matches!(e, HandshakeError::Frame(FrameError::Cancelled)) {
                    self.counters.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(store = me, %remote, reason = %e, "refused client connection from {remote}: {e}");
                }
                return;
            }
        };
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(store = me, %remote, "client connected");
        let Ok(write_half) = stream.try_clone() else { return };
        let (tx, rx) = bounded::<Answer>(ANSWER_QUEUE);
        let in_flight = InFlight::default();
        let closed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name(format!("client-send-{me}-{}", remote.port()))
                .spawn_scoped(scope, || run_writer(&write_half, &rx, &in_flight, &closed, cancel));
            if writer.is_err() {
                return;
            }
            // Buffered: the requests that arrived together are taken with one read.
            let mut frames = FrameStream::new(reader, &stream);
            let end = self.read_requests(&mut frames, peer, &tx, &in_flight, &closed);
            match end {
                e if e.is_quiet() => {}
                e => {
                    self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(store = me, %remote, reason = %e, "closing client connection from {remote}: {e}");
                    let code = match e {
                        FrameError::Wire(WireError::FrameTooLarge { .. }) => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    let message = format!("{e}; the node closes the connection");
                    in_flight.begin();
                    push(&tx, (0, Err(RemoteError::new(code, message)), false));
                }
            }
            // The writer sends every answer still in flight, then leaves (bounded by
            // CLOSE_LINGER and shutdown); the scope joins it.
            closed.store(true, Ordering::SeqCst);
        });
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// The requests of one connection that are in flight: read, and not answered on the
/// socket yet; and how many of them are scans. The reader waits on it at
/// [`IN_FLIGHT_MAX`] requests, and before a scan at [`SCANS_IN_FLIGHT_MAX`] scans.
#[derive(Default)]
struct InFlight {
    count: Mutex<Counts>,
    /// Signalled when an answer was written.
    written: Condvar,
}

#[derive(Default)]
struct Counts {
    requests: usize,
    scans: usize,
}

impl InFlight {
    /// A request was read (or the connection's last error is queued).
    fn begin(&self) {
        self.count.lock().requests += 1;
    }

    /// `answers` answers were written (or can no longer be), `scans` of them to scans.
    fn end_many(&self, answers: usize, scans: usize) {
        let mut count = self.count.lock();
        count.requests = count.requests.saturating_sub(answers);
        count.scans = count.scans.saturating_sub(scans);
        self.written.notify_all();
    }

    fn count(&self) -> usize {
        self.count.lock().requests
    }

    /// Waits up to `timeout` until fewer than [`IN_FLIGHT_MAX`] are in flight; true if
    /// so.
    fn wait_below_max(&self, timeout: Duration) -> bool {
        let mut count = self.count.lock();
        if count.requests >= IN_FLIGHT_MAX {
            let _ = self.written.wait_for(&mut count, timeout);
        }
        count.requests < IN_FLIGHT_MAX
    }

    /// Waits up to `timeout` for room for one more scan; true if it took it.
    fn begin_scan(&self, timeout: Duration) -> bool {
        let mut count = self.count.lock();
        if count.scans >= SCANS_IN_FLIGHT_MAX {
            let _ = self.written.wait_for(&mut count, timeout);
        }
        let room = count.scans < SCANS_IN_FLIGHT_MAX;
        if room {
            count.scans += 1;
        }
        room
    }
}

/// Queues an answer for the writer. The queue holds every answer that can be in flight
/// ([`ANSWER_QUEUE`]), so it is never full; once the connection is gone (nobody
/// receives any more), the answer has nowhere to go.
fn push(tx: &Sender<Answer>, answer: Answer) {
    match tx.try_send(answer) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        Err(TrySendError::Full((id, ..))) => {
            // The bound above makes this unreachable: a bug, never a silent drop.
            tracing::error!(id, "the answer queue of a client connection is full; answer lost");
            debug_assert!(false, "the answer queue is sized for every request in flight");
        }
    }
}

/// Sends responses as they are ready, every answer queued at once in one write.
/// Leaves when a write fails (closing the connection), or once the connection is
/// closed and every answer in flight is written (or after [`CLOSE_LINGER`], or at
/// shutdown).
fn run_writer(
    stream: &TcpStream,
    rx: &Receiver<Answer>,
    in_flight: &InFlight,
    closed: &AtomicBool,
    cancel: &CancellationToken,
) {
    if !write_answers(&mut &*stream, rx, in_flight, closed, cancel) {
        closed.store(true, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// The loop of [`run_writer`] on `out`: takes the next answer and every one queued
/// behind it (up to [`WRITE_BATCH_BYTES`]) and writes their frames with one
/// `write_all`. False if a write failed.
fn write_answers<W: Write>(
    out: &mut W,
    rx: &Receiver<Answer>,
    in_flight: &InFlight,
    closed: &AtomicBool,
    cancel: &CancellationToken,
) -> bool {
    let mut closed_at: Option<Instant> = None;
    let mut buf = Vec::new();
    // Bounded: by a failed write, and once closed by CLOSE_LINGER.
    loop {
        let first = match rx.recv_timeout(WRITER_POLL) {
            Ok(a) => a,
            Err(RecvTimeoutError::Timeout) => {
                if closed.load(Ordering::SeqCst) {
                    let since = *closed_at.get_or_insert_with(Instant::now);
                    if in_flight.count() == 0
                        || cancel.is_cancelled()
                        || since.elapsed() >= CLOSE_LINGER
                    {
                        return true;
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return true,
        };
        buf.clear();
        let (mut answers, mut scans, mut encoded) = (0, 0, true);
        let mut next = Some(first);
        // Bounded: by WRITE_BATCH_BYTES, and by the queue (ANSWER_QUEUE answers).
        while let Some((id, answer, scan)) = next.take() {
            answers += 1;
            scans += usize::from(scan);
            encoded &= encode_answer(&mut buf, id, &answer);
            if buf.len() >= WRITE_BATCH_BYTES || !encoded {
                break;
            }
            next = rx.try_recv().ok();
        }
        // What was encoded goes out even if a later answer could not be.
        let written = out.write_all(&buf).is_ok() && encoded;
        in_flight.end_many(answers, scans);
        if !written {
            return false;
        }
        if buf.capacity() > 4 * WRITE_BATCH_BYTES {
            // A page of rows made it large: give the memory back.
            buf = Vec::new();
        }
    }
}

/// Appends the RESPONSE frame of request `id` to `buf` (an error saying so if the
/// response is over [`RESPONSE_BYTES_MAX`]); false if it could not be encoded.
fn encode_answer(buf: &mut Vec<u8>, id: u64, answer: &Result<Response, RemoteError>) -> bool {
    let mut payload = proto::encode_response(id, answer);
    if payload.len() > RESPONSE_BYTES_MAX as usize {
        let message = format!(
            "the response is {} bytes, over the bound of {RESPONSE_BYTES_MAX} bytes: scan with a \
             lower limit",
            payload.len()
        );
        payload = proto::encode_response(id, &Err(RemoteError::new(ErrorCode::TooLarge, message)));
    }
    proto::encode_frame_into(buf, FrameKind::Response, &payload).is_ok()
}

/// The one answer to a request (counted in flight since it was read). Dropped
/// unanswered (a store that dropped the request on shutdown), it answers `no reply`:
/// the outcome is unknown.
struct Responder {
    id: u64,
    tx: Option<Sender<Answer>>,
    /// The request is a scan (counted in [`Counts::scans`] until written).
    scan: bool,
}

impl Responder {
    fn send(mut self, answer: Result<Response, RemoteError>) {
        if let Some(tx) = self.tx.take() {
            push(&tx, (self.id, answer, self.scan));
        }
    }

    fn reply<T: 'static>(self, f: impl FnOnce(T) -> Response + Send + 'static) -> Reply<T> {
        Box::new(move |r: regionkv_raft::Result<T>| {
            self.send(r.map(f).map_err(|e| RemoteError::from(&e)));
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            push(&tx, (self.id, Ok(Response::NoReply), self.scan));
        }
    }
}

/// True for a request whose answer can be a page of rows.
fn is_scan(request: &Request) -> bool {
    matches!(
        request,
        Request::LocalScan { .. } | Request::Read { query: regionkv_raft::Query::Scan { .. }, .. }
    )
}

impl ClientService {
    /// Reads and dispatches requests until the connection ends; returns why it ended.
    fn read_requests(
        &self,
        frames: &mut FrameStream<'_, &TcpStream>,
        peer: StoreId,
        tx: &Sender<Answer>,
        in_flight: &InFlight,
        closed: &AtomicBool,
    ) -> FrameError {
        let me = self.store.0;
        // Bounded: ends at the first frame error, when the client closes, or at
        // cancellation (the frame reader looks at the token every poll interval).
        loop {
            // Backpressure: stop reading while IN_FLIGHT_MAX requests are unanswered;
            // the writer signals each answer it writes.
            while !in_flight.wait_below_max(WRITER_POLL) {
                if closed.load(Ordering::SeqCst)
                    || frames.cancel().is_some_and(CancellationToken::is_cancelled)
                {
                    return FrameError::Cancelled;
                }
            }
            let (kind, payload) = match frames.frame(REQUEST_BYTES_MAX) {
                Ok(frame) => frame,
                Err(e) => return e,
            };
            if kind != FrameKind::Request {
                return WireError::UnexpectedKind { expected: "a request", found: kind }.into();
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            // In flight from here until its answer is written: every branch below
            // answers it exactly once.
            in_flight.begin();
            match proto::decode_request(&payload) {
                Ok((id, request)) => {
                    let scan = is_scan(&request);
                    // A scan waits (and reading with it) while this connection has
                    // SCANS_IN_FLIGHT_MAX scans unanswered.
                    while scan && !in_flight.begin_scan(WRITER_POLL) {
                        if closed.load(Ordering::SeqCst)
                            || frames.cancel().is_some_and(CancellationToken::is_cancelled)
                        {
                            let answer = RemoteError::new(ErrorCode::Cancelled, "closing");
                            push(tx, (id, Err(answer), false));
                            return FrameError::Cancelled;
                        }
                    }
                    self.dispatch(request, Responder { id, tx: Some(tx.clone()), scan }, peer);
                }
                Err(RequestError::Malformed { id, error }) => {
                    self.counters.malformed_requests.fetch_add(1, Ordering::Relaxed);
                    let message = format!(
                        "malformed request at byte {}: {}; nothing was done",
                        error.offset, error.reason
                    );
                    tracing::warn!(store = me, id, "{message}");
                    let answer = Err(RemoteError::new(ErrorCode::Malformed, message));
                    push(tx, (id.unwrap_or(0), answer, false));
                }
                Err(RequestError::Unsupported { id }) => {
                    let message = format!(
                        "this node (client protocol version {}) does not know the request's \
                         kind; upgrade the node",
                        proto::VERSION
                    );
                    let answer = Err(RemoteError::new(ErrorCode::UnsupportedRequest, message));
                    push(tx, (id, answer, false));
                }
            }
        }
    }

    /// Serves one request of a connection from `peer` (`CLIENT_ID`: a client).
    fn dispatch(&self, request: Request, r: Responder, peer: StoreId) {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            r.send(Err(RemoteError::new(ErrorCode::Cancelled, "the node is starting or stopping")));
            return;
        };
        if node.is_shut() {
            r.send(Err(RemoteError::new(ErrorCode::Cancelled, "the node is shutting down")));
            return;
        }
        let store = node.store();
        let raw = matches!(
            request,
            Request::Admin { .. } | Request::Directory { .. } | Request::ChangePeers { .. }
        );
        if raw && peer == proto::CLIENT_ID {
            let message = "raw admin, directory and membership commands are for the nodes' \
                           own use; ask for split, merge, store add and store remove instead";
            r.send(Err(RemoteError::new(ErrorCode::NotAllowed, message)));
            return;
        }
        match request {
            Request::Write { region, epoch, ops, session } => {
                if ops.is_empty() || ops.iter().any(|op| op.key().is_empty()) {
                    let message = "a write needs at least one op, and no empty key";
                    r.send(Err(RemoteError::new(ErrorCode::InvalidRequest, message)));
                    return;
                }
                store.write(WriteRequest {
                    region,
                    epoch,
                    ops,
                    session,
                    reply: r.reply(|()| Response::Done),
                });
            }
            Request::Read { region, epoch, query } => {
                store.read(ReadRequest { region, epoch, query, reply: r.reply(Response::Query) });
            }
            Request::Admin { region, epoch, cmd } => {
                store.admin(AdminRequest { region, epoch, cmd, reply: r.reply(Response::Admin) });
            }
            Request::Directory { cmd } => store.directory(cmd, r.reply(Response::Directory)),
            Request::MergeStatus { region } => r.send(
                store.merge_status(region).map(Response::MergeStatus).map_err(|e| (&e).into()),
            ),
            Request::PeerStatus { region } => {
                r.send(Ok(Response::PeerStatus(store.peer_status(region))));
            }
            Request::Locate { key } => r.send(Ok(Response::Located(node.locate_local(&key)))),
            Request::Status => r.send(Ok(Response::Status(Box::new(StoreStatus {
                store: self.store,
                peers: store.status(),
                metrics: Some(store.metrics()),
            })))),
            Request::Members => r.send(Ok(Response::Members(node.members()))),
            Request::LocalScan { start, end, limit } => {
                // The store's caps bound it as they bound a scan through Raft: a capped
                // page says where the client resumes (`Client::local_scan` does).
                let ctx = store.context();
                let view = ctx.engine.read_view();
                let caps = ctx.config.scan_caps();
                let page = regionkv_raft::scan_page(&view, &start, end.as_deref(), limit, caps);
                r.send(Ok(Response::Query(QueryResult::Rows(page))));
            }
            Request::ChangePeers { region, epoch, change } => {
                store.change_peers(ChangePeersRequest {
                    region,
                    epoch,
                    change,
                    reply: r.reply(Response::PeersChanged),
                });
            }
            Request::Member { store, addr } => {
                r.send(
                    node.learn_member(store, &addr)
                        .map(|()| Response::Done)
                        .map_err(|e| (&e).into()),
                );
            }
            Request::Split { .. }
            | Request::Merge { .. }
            | Request::Regions
            | Request::StoreAdd { .. }
            | Request::StoreRemove { .. } => {
                self.spawn_admin(&node, request, r);
            }
        }
    }

    /// Runs a request the node drives (it may take seconds) on its own thread, inside
    /// the node's gate, at most [`ADMIN_TASKS_MAX`] at once.
    fn spawn_admin(&self, node: &Arc<dyn ClientHandler>, request: Request, r: Responder) {
        let busy = || {
            RemoteError::new(
                ErrorCode::Unavailable,
                format!("the node runs {ADMIN_TASKS_MAX} admin requests already; retry later"),
            )
        };
        if self.admin_tasks.fetch_add(1, Ordering::SeqCst) >= ADMIN_TASKS_MAX {
            self.admin_tasks.fetch_sub(1, Ordering::SeqCst);
            r.send(Err(busy()));
            return;
        }
        let tasks = self.admin_tasks.clone();
        let weak = Arc::downgrade(node);
        let task = Box::new(move || {
            let answer = match weak.upgrade() {
                None => Err(RemoteError::new(ErrorCode::Cancelled, "the node is stopping")),
                Some(node) => match request {
                    Request::Split { key } => node.split(&key).map(Response::Split),
                    Request::Merge { left, right } => node.merge(left, right).map(Response::Merged),
                    Request::StoreAdd { store, addr } => {
                        node.add_store(store, &addr).map(Response::StoreChanged)
                    }
                    Request::StoreRemove { store } => {
                        node.remove_store(store).map(Response::StoreChanged)
                    }
                    _ => Ok(Response::Regions(node.regions())),
                }
                .map_err(|e| RemoteError::from(&e)),
            };
            r.send(answer);
            tasks.fetch_sub(1, Ordering::SeqCst);
        });
        if !node.spawn_task("client admin request", task) {
            self.admin_tasks.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests;
