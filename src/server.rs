//! The node's side of the client protocol ([`crate::proto`]): served on the store
//! transport's listener for connections that open with the client magic.
//!
//! Each connection runs on the transport's reader thread: the handshake, then a loop
//! that reads requests and hands them to the node's store (replies arrive later, on
//! the store's threads) or answers them at once; a writer thread, scoped to the
//! connection, sends the responses in the order they are ready.
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

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use parking_lot::{Condvar, Mutex};
use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::RegionRecord;
use regionkv_raft::transport::frame::{FrameError, FrameKind, FrameReader, WireError};
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
                .spawn_scoped(scope, || run_writer(write_half, &rx, &in_flight, &closed, cancel));
            if writer.is_err() {
                return;
            }
            let end = self.read_requests(&mut stream, &reader, peer, &tx, &in_flight, &closed);
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

    /// An answer was written (or can no longer be); `scan` if it answered a scan.
    fn end(&self, scan: bool) {
        let mut count = self.count.lock();
        count.requests = count.requests.saturating_sub(1);
        if scan {
            count.scans = count.scans.saturating_sub(1);
        }
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

/// Sends responses as they are ready. Leaves when a write fails, or once the
/// connection is closed and every answer in flight is written (or after
/// [`CLOSE_LINGER`], or at shutdown).
fn run_writer(
    mut stream: TcpStream,
    rx: &Receiver<Answer>,
    in_flight: &InFlight,
    closed: &AtomicBool,
    cancel: &CancellationToken,
) {
    use std::io::Write;
    let mut closed_at: Option<Instant> = None;
    // Bounded: by a failed write, and once closed by CLOSE_LINGER.
    loop {
        let (id, answer, scan) = match rx.recv_timeout(WRITER_POLL) {
            Ok(a) => a,
            Err(RecvTimeoutError::Timeout) => {
                if closed.load(Ordering::SeqCst) {
                    let since = *closed_at.get_or_insert_with(Instant::now);
                    if in_flight.count() == 0
                        || cancel.is_cancelled()
                        || since.elapsed() >= CLOSE_LINGER
                    {
                        return;
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut payload = proto::encode_response(id, &answer);
        if payload.len() > RESPONSE_BYTES_MAX as usize {
            let message = format!(
                "the response is {} bytes, over the bound of {RESPONSE_BYTES_MAX} bytes: scan \
                 with a lower limit",
                payload.len()
            );
            payload =
                proto::encode_response(id, &Err(RemoteError::new(ErrorCode::TooLarge, message)));
        }
        let written = match proto::encode_frame(FrameKind::Response, &payload) {
            Ok(frame) => stream.write_all(&frame).is_ok(),
            Err(_) => false,
        };
        in_flight.end(scan);
        if !written {
            closed.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
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
        stream: &mut TcpStream,
        reader: &FrameReader<'_>,
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
                    || reader.cancel.is_some_and(CancellationToken::is_cancelled)
                {
                    return FrameError::Cancelled;
                }
            }
            let (kind, payload) = match reader.frame(stream, REQUEST_BYTES_MAX, None) {
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
                            || reader.cancel.is_some_and(CancellationToken::is_cancelled)
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
mod tests {
    //! Bad input on a node's client port: a wrong secret, a frame of another version,
    //! garbage, a malformed request, an oversized frame and a bad checksum each get a
    //! clear error, and the node keeps serving with nothing lost.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use bytes::Bytes;
    use regionkv_engine::{Epoch, PeerId, RegionId, StoreId};
    use regionkv_raft::directory::DirCmd;
    use regionkv_raft::transport::frame::{Deadline, FrameKind};
    use regionkv_raft::transport::handshake::{ClusterId, RejectReason};
    use regionkv_raft::{AdminCmd, PeerChange, Query, QueryResult};

    use crate::proto::{self, ErrorCode, Request, Response};
    use crate::{Client, Error, Node, NodeConfig};

    const SECRET: &[u8] = b"a secret for the bad input test";
    const CLUSTER: ClusterId = ClusterId(5);

    fn connect(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let store = proto::handshake_client(
            &mut s,
            &proto::client_key(SECRET),
            CLUSTER,
            proto::CLIENT_ID,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(store, StoreId(1));
        s
    }

    /// The next response on `s`: its id and answer.
    fn response(s: &mut TcpStream) -> (u64, Result<Response, proto::RemoteError>) {
        let reader = proto::reader(None, Duration::from_secs(10));
        let deadline = Deadline::after("a response", Duration::from_secs(10));
        let (kind, payload) = reader.frame(s, proto::RESPONSE_BYTES_MAX, Some(&deadline)).unwrap();
        assert_eq!(kind, FrameKind::Response);
        proto::decode_response(&payload).unwrap()
    }

    fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0; 64];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }

    fn status_works(s: &mut TcpStream, id: u64) {
        let frame =
            proto::encode_frame(FrameKind::Request, &proto::encode_request(id, &Request::Status))
                .unwrap();
        s.write_all(&frame).unwrap();
        let (got, answer) = response(s);
        assert_eq!(got, id);
        assert!(matches!(answer, Ok(Response::Status(_))), "{answer:?}");
    }

    fn open_node(dir: &std::path::Path) -> Node {
        let mut config = NodeConfig::new(
            StoreId(1),
            dir,
            "127.0.0.1:0".parse().unwrap(),
            CLUSTER,
            SECRET.to_vec(),
        );
        config.tick_interval = Duration::from_millis(10);
        Node::open(config.bootstrap()).unwrap()
    }

    /// Regression (issue 12, A7): a client that pipelines far more requests than
    /// `IN_FLIGHT_MAX` and reads slowly lost answers. The node counted only answers
    /// queued for its writer, so it read requests without bound; once its writer was
    /// blocked on the slow client, the answers that found the writer's queue full were
    /// dropped, and the client waited for them forever (a `Db` then retried writes
    /// whose outcome it did not know). Now a request is in flight from its frame to
    /// its answer on the socket, the reader stops at the bound, and the writer's queue
    /// holds every answer that can be in flight.
    #[test]
    fn a_client_pipelining_past_the_bound_and_reading_slowly_gets_every_answer() {
        const REQUESTS: u64 = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        // Large answers fill the socket's buffers long before the client reads.
        let big = Bytes::from(vec![7u8; 64 << 10]);
        node.db().put("big", big.clone()).unwrap();
        let mut s = connect(node.local_addr());
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let locate = Request::Locate { key: b"big".to_vec() };
        s.write_all(
            &proto::encode_frame(FrameKind::Request, &proto::encode_request(0, &locate)).unwrap(),
        )
        .unwrap();
        let Ok(Response::Located(Some(record))) = response(&mut s).1 else { panic!("no region") };
        let get = Request::Read {
            region: record.region.id,
            epoch: record.region.epoch,
            query: Query::Get { key: Bytes::from_static(b"big") },
        };
        let mut send = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            for id in 1..=REQUESTS {
                let payload = proto::encode_request(id, &get);
                send.write_all(&proto::encode_frame(FrameKind::Request, &payload).unwrap())
                    .unwrap();
            }
        });
        // Reading slowly: nothing for a while, then everything.
        std::thread::sleep(Duration::from_secs(1));
        let mut answered = std::collections::BTreeSet::new();
        let reader = proto::reader(None, Duration::from_secs(10));
        while answered.len() < REQUESTS as usize {
            let deadline = Deadline::after("a response", Duration::from_secs(30));
            let (_, payload) =
                reader.frame(&mut s, proto::RESPONSE_BYTES_MAX, Some(&deadline)).unwrap_or_else(
                    |e| panic!("{} of {REQUESTS} requests answered, then: {e}", answered.len()),
                );
            let (id, answer) = proto::decode_response(&payload).unwrap();
            match answer {
                Ok(Response::Query(QueryResult::Value(Some(v)))) => assert_eq!(v, big),
                other => panic!("request {id} answered {other:?}"),
            }
            assert!(answered.insert(id), "request {id} answered twice");
        }
        sender.join().unwrap();
        assert_eq!(answered.first(), Some(&1));
        assert_eq!(answered.last(), Some(&REQUESTS));
        node.shutdown().unwrap();
    }

    /// A client that pipelines scans and reads none of the answers makes the node hold
    /// at most `SCANS_IN_FLIGHT_MAX` pages for it: the reader stops reading at the
    /// next scan. Before, it read on to `IN_FLIGHT_MAX` requests, each answered with up
    /// to a page of the scan caps (about 1 GiB at 4 MiB pages); then every answer still
    /// arrives, once.
    #[test]
    fn a_client_pipelining_scans_and_reading_none_holds_a_bounded_number_of_pages() {
        const SCANS: u64 = 64;
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        // Each answer is about 1 MiB: a few fill the socket's buffers.
        let mut batch = crate::WriteBatch::new();
        for i in 0..16 {
            batch.put(format!("s{i:02}"), vec![7u8; 64 << 10]);
        }
        node.db().write(batch).unwrap();
        let before = node.client_stats().requests;
        let mut s = connect(node.local_addr());
        let scan = Request::LocalScan { start: b"s".to_vec(), end: None, limit: usize::MAX };
        let mut send = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            for id in 1..=SCANS {
                let payload = proto::encode_request(id, &scan);
                send.write_all(&proto::encode_frame(FrameKind::Request, &payload).unwrap())
                    .unwrap();
            }
        });
        let read = || node.client_stats().requests - before;
        let cap = super::SCANS_IN_FLIGHT_MAX as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while read() <= cap && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The scan after the cap is read and waits; give the reader time to go on if
        // it would. The socket's buffers take a few answers of about 1 MiB (each
        // written one frees a place): at most `slack` here.
        std::thread::sleep(Duration::from_millis(500));
        let slack = 8;
        let n = read();
        assert!(n <= cap + 1 + slack, "{n} scans read while {cap} answers were unwritten");
        let reader = proto::reader(None, Duration::from_secs(10));
        let mut answered = std::collections::BTreeSet::new();
        while answered.len() < SCANS as usize {
            let deadline = Deadline::after("a response", Duration::from_secs(30));
            let (_, payload) =
                reader.frame(&mut s, proto::RESPONSE_BYTES_MAX, Some(&deadline)).unwrap();
            let (id, answer) = proto::decode_response(&payload).unwrap();
            assert!(matches!(answer, Ok(Response::Query(QueryResult::Rows(_)))), "{answer:?}");
            assert!(answered.insert(id), "scan {id} answered twice");
        }
        sender.join().unwrap();
        node.shutdown().unwrap();
    }

    /// Regression (issue 12, A8): a scan's limit came from the client as a `u64` with
    /// no cap: `limit = u64::MAX` read (and encoded) a whole region, or with a local
    /// scan the whole engine, on a store's threads. Now each answer stops at the
    /// store's caps (10,000 rows, 4 MiB) and says where to resume; `Db::scan` and
    /// `Client::local_scan` ask page by page and still get every pair once, in order.
    #[test]
    fn a_scan_without_a_limit_gets_a_capped_page_and_clients_page_on() {
        let rows_max = regionkv_raft::StoreConfig::DEFAULT_SCAN_ROWS_MAX;
        let n = rows_max + 2_345;
        let key = |i: usize| Bytes::from(format!("s{i:06}"));
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        let db = node.db();
        for first in (0..n).step_by(2_000) {
            let mut batch = crate::WriteBatch::new();
            for i in first..n.min(first + 2_000) {
                batch.put(key(i), "v");
            }
            db.write(batch).unwrap();
        }
        let mut s = connect(node.local_addr());
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut ask = |id: u64, req: &Request| {
            let payload = proto::encode_request(id, req);
            s.write_all(&proto::encode_frame(FrameKind::Request, &payload).unwrap()).unwrap();
            let (got, answer) = response(&mut s);
            assert_eq!(got, id);
            answer
        };
        let locate = Request::Locate { key: key(0).to_vec() };
        let Ok(Response::Located(Some(record))) = ask(1, &locate) else { panic!("no region") };
        // Raw requests with the largest limit the wire can carry (u64::MAX).
        let read = Request::Read {
            region: record.region.id,
            epoch: record.region.epoch,
            query: Query::Scan { start: Bytes::new(), end: None, limit: usize::MAX },
        };
        let local = Request::LocalScan { start: Vec::new(), end: None, limit: usize::MAX };
        for (id, req) in [(2, &read), (3, &local)] {
            match ask(id, req) {
                Ok(Response::Query(QueryResult::Rows(page))) => {
                    assert_eq!(page.rows.len(), rows_max, "{req:?}: one capped page");
                    assert_eq!(page.resume, Some(key(rows_max)), "{req:?}: resumes after it");
                }
                other => panic!("{req:?} answered {other:?}"),
            }
        }
        // The clients page on: every pair once, in order.
        let all: Vec<Bytes> = (0..n).map(key).collect();
        let keys = |rows: Vec<(Bytes, Bytes)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let client = Client::connect(&[node.local_addr()], CLUSTER, SECRET).unwrap();
        assert_eq!(keys(client.db().scan(.., usize::MAX).unwrap()), all);
        assert_eq!(keys(db.scan(.., usize::MAX).unwrap()), all);
        assert_eq!(keys(client.local_scan(StoreId(1), b"", None, usize::MAX).unwrap()), all);
        // A limit the cap does not reach is exact.
        assert_eq!(keys(client.db().scan(.., rows_max + 1).unwrap()), all[..=rows_max]);
        assert_eq!(keys(client.local_scan(StoreId(1), b"", None, 5).unwrap()), all[..5]);
        client.close();
        node.shutdown().unwrap();
    }

    /// Raw admin, directory and membership commands from a client: refused, typed, and
    /// nothing is done (before, a client's huge id allocation reached the directory and
    /// the store stopped); a node's own backend (a store id in the handshake) is served.
    fn raw_commands_are_refused_from_clients(s: &mut TcpStream, addr: SocketAddr) {
        let raw = [
            Request::Directory { cmd: DirCmd::AllocIds { count: u64::MAX } },
            Request::Admin {
                region: RegionId(1),
                epoch: Epoch::INITIAL,
                cmd: AdminCmd::Split {
                    split_keys: vec![b"k05".to_vec()],
                    new_ids: vec![RegionId(1)],
                },
            },
            Request::ChangePeers {
                region: RegionId(1),
                epoch: Epoch::INITIAL,
                change: PeerChange::Remove(PeerId(1)),
            },
        ];
        for (i, req) in raw.iter().enumerate() {
            let id = 20 + i as u64;
            let frame = proto::encode_frame(FrameKind::Request, &proto::encode_request(id, req));
            s.write_all(&frame.unwrap()).unwrap();
            let (got, answer) = response(s);
            assert_eq!((got, answer.map_err(|e| e.code)), (id, Err(ErrorCode::NotAllowed)));
        }
        status_works(s, 10);
        // A node's own backend (a store id in the handshake) is served.
        let mut n = TcpStream::connect(addr).unwrap();
        n.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let key = proto::client_key(SECRET);
        proto::handshake_client(&mut n, &key, CLUSTER, StoreId(2), Duration::from_secs(5)).unwrap();
        let alloc = Request::Directory { cmd: DirCmd::AllocIds { count: 1 } };
        let frame = proto::encode_frame(FrameKind::Request, &proto::encode_request(30, &alloc));
        n.write_all(&frame.unwrap()).unwrap();
        let (got, answer) = response(&mut n);
        assert!(got == 30 && matches!(answer, Ok(Response::Directory(_))), "{answer:?}");
    }

    #[test]
    fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(
            StoreId(1),
            dir.path(),
            "127.0.0.1:0".parse().unwrap(),
            CLUSTER,
            SECRET.to_vec(),
        );
        config.tick_interval = Duration::from_millis(10);
        let node = Node::open(config.bootstrap()).unwrap();
        let addr = node.local_addr();
        let db = node.db();
        for i in 0..20 {
            db.put(format!("k{i:02}"), "v").unwrap();
        }

        // A wrong secret: refused with the reason, both sides.
        match Client::connect(&[addr], CLUSTER, b"the wrong secret, long enough") {
            Err(Error::Refused { reason: RejectReason::BadProof, .. }) => {}
            other => panic!("not refused: {other:?}"),
        }
        // A client of a newer protocol version: refused, told why.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut hello = proto::encode_frame(FrameKind::Hello, &[]).unwrap();
        hello[4] = proto::VERSION + 1;
        s.write_all(&hello).unwrap();
        let reader = proto::reader(None, Duration::from_secs(10));
        let (kind, payload) = reader.frame(&mut s, 1024, None).unwrap();
        assert_eq!(kind, FrameKind::Reject);
        assert_eq!(RejectReason::decode(&payload).unwrap(), RejectReason::UnsupportedVersion);
        // Garbage that starts like the client protocol.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.write_all(b"rkvGARBAGE GARBAGE GARBAGE").unwrap();
        assert!(closed(&mut s), "garbage closes its connection");

        // A malformed request in an intact frame: an error for that request, and the
        // connection goes on.
        let mut s = connect(addr);
        s.write_all(
            &proto::encode_frame(FrameKind::Request, b"\x01\x00\xff\x00\x00\x00runs past its end")
                .unwrap(),
        )
        .unwrap();
        let (_, answer) = response(&mut s);
        let e = answer.unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed, "{e:?}");
        assert!(e.message.contains("malformed request"), "{}", e.message);
        status_works(&mut s, 7);
        // A request of a kind from the future: unsupported, and the connection goes on.
        let mut future = Vec::new();
        regionkv_engine::codec::put_u64(&mut future, 1, 8);
        regionkv_engine::codec::put_field(&mut future, 999, b"?");
        s.write_all(&proto::encode_frame(FrameKind::Request, &future).unwrap()).unwrap();
        let (id, answer) = response(&mut s);
        assert_eq!((id, answer.unwrap_err().code), (8, ErrorCode::UnsupportedRequest));
        status_works(&mut s, 9);

        raw_commands_are_refused_from_clients(&mut s, addr);

        // An oversized frame: refused before its payload is read, then closed.
        let mut header = proto::encode_frame(FrameKind::Request, &[]).unwrap();
        header[6..10].copy_from_slice(&(proto::REQUEST_BYTES_MAX + 1).to_le_bytes());
        s.write_all(&header).unwrap();
        let (id, answer) = response(&mut s);
        let e = answer.unwrap_err();
        assert_eq!((id, e.code), (0, ErrorCode::TooLarge), "{e:?}");
        assert!(e.message.contains("exceeds the bound"), "{}", e.message);
        assert!(closed(&mut s));

        // A bad checksum: an error, then closed.
        let mut s = connect(addr);
        let mut frame =
            proto::encode_frame(FrameKind::Request, &proto::encode_request(3, &Request::Status))
                .unwrap();
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        s.write_all(&frame).unwrap();
        let (_, answer) = response(&mut s);
        assert_eq!(answer.unwrap_err().code, ErrorCode::Malformed);
        assert!(closed(&mut s));

        let stats = node.client_stats();
        assert!(stats.handshake_failures >= 3, "{stats:?}");
        assert!(stats.bad_frames >= 2, "{stats:?}");
        assert!(stats.malformed_requests >= 1, "{stats:?}");

        // The node still serves, and nothing was lost.
        let client = Client::connect(&[addr], CLUSTER, SECRET).unwrap();
        let cdb = client.db();
        cdb.put("k99", "after").unwrap();
        let rows = cdb.scan(b"k".., 100).unwrap();
        assert_eq!(rows.len(), 21);
        client.close();
        node.shutdown().unwrap();
    }
}
