//! The node's side of the client protocol ([`crate::proto`]): served on the store
//! transport's listener for connections that open with the client magic.
//!
//! Each connection runs on the transport's reader thread: the handshake, then a loop
//! that reads requests (through a buffer: one `read` for every request that arrived
//! together) and hands them to the node's store (replies arrive later, on the store's
//! threads) or answers them at once. An answer that is the only one in flight on its
//! connection is written by the thread that has it, with a send that does not wait
//! (nothing could go out with it, and a hand-off would cost a thread wake-up); other
//! answers go to a writer thread, scoped to the connection, which sends them in the
//! order they are ready, every answer queued at once in one write. Whoever writes
//! holds the connection's write turn, so frames never interleave; an answer the socket
//! takes only in part (it is full) leaves its rest to the writer thread, which sends
//! it first: a store thread never waits on a client's socket.
//!
//! On a sealed link (the default; `regionkv_raft::transport::seal`) the reader opens
//! records before the frame reader sees a byte, and each writer seals its frames
//! holding the write turn (the inline writer before its send, the writer thread the
//! answers it adds after the leftover, which is sealed already), so records are
//! numbered in the order their bytes go on the wire.
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
use regionkv_engine::{Epoch, Region, RegionId, StoreId};
use regionkv_raft::directory::{DirResult, RegionRecord};
use regionkv_raft::transport::frame::{FrameError, FrameKind, FrameStream, WireError, send_nowait};
use regionkv_raft::transport::handshake::{ClusterId, HandshakeError, HandshakeKey};
use regionkv_raft::transport::seal::{LinkMode, LinkReader, Sealer};
use regionkv_raft::transport::tcp::SharedListener;
use regionkv_raft::{
    AdminRequest, ChangePeersRequest, QueryResult, ReadRequest, Reply, Store, TxnCmd, TxnRequest,
    WriteRequest,
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
/// Answers the writer's queue holds: every request in flight, the connection's last
/// error, and one notice of an answer written inline in part ([`ToWriter::Leftover`]).
const ANSWER_QUEUE: usize = IN_FLIGHT_MAX + 2;
const _: () = assert!(ANSWER_QUEUE > IN_FLIGHT_MAX + 1, "room for the last error and a notice");
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

/// What the writer thread of a connection is handed.
enum ToWriter {
    /// An answer to write.
    Answer(Answer),
    /// An answer written inline only in part: its rest waits in the write turn
    /// ([`Leftover`]).
    Leftover,
}

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
    /// The active cluster version and what every store reports.
    fn upgrade_status(&self) -> Result<crate::UpgradeStatus>;
    /// Raises the cluster version (see [`Node::finalize_upgrade`](crate::Node::finalize_upgrade)).
    fn finalize_upgrade(&self, target: Option<u32>) -> Result<u32>;
    /// The health monitor's report or (`audit`) audit, if this node runs it.
    fn health(&self, audit: bool) -> proto::HealthAnswer;
    /// `count` fresh transaction ids from the directory; returns the first.
    fn txn_ids(&self, count: u64) -> Result<u64>;
    /// The transaction locks and records of the regions this node's store leads.
    fn txn_list(&self, in_doubt_only: bool, older_than_ms: Option<u64>) -> Vec<crate::TxnEntry>;
    /// One recovery turn now on this node's store.
    fn txn_recover(&self, region: Option<RegionId>) -> crate::TxnRecoveryTurn;
    /// Proposes a client's duplication command to the directory (through its leader).
    fn dup_command(&self, cmd: regionkv_raft::directory::DirCmd) -> Result<DirResult>;
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
    /// Records of sealed links that failed their authentication (bytes altered,
    /// replayed, reordered or injected on the way), among `bad_frames`.
    pub unauthenticated_records: u64,
    /// Requests that did not decode (each answered with an error).
    pub malformed_requests: u64,
    /// Requests served.
    pub requests: u64,
    /// Writes made by the connections' writer threads: each one is an answer (or a
    /// batch of answers) handed over from the thread that had it, a thread wake-up.
    pub writer_writes: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    handshake_failures: AtomicU64,
    bad_frames: AtomicU64,
    unauthenticated_records: AtomicU64,
    malformed_requests: AtomicU64,
    requests: AtomicU64,
    writer_writes: AtomicU64,
}

/// Serves the client protocol for one node.
pub(crate) struct ClientService {
    /// From the cluster secret: proven by other nodes' backends.
    key: HandshakeKey,
    /// From the client secret, if clients have one: proven by clients.
    client_key: Option<HandshakeKey>,
    /// What this node runs after the handshake.
    link: LinkMode,
    cluster: ClusterId,
    store: StoreId,
    /// The node, once it is up; requests before that (or after it is gone) are
    /// answered with `Cancelled`.
    node: OnceLock<Weak<dyn ClientHandler>>,
    counters: Counters,
    admin_tasks: Arc<AtomicUsize>,
    /// Answers transaction requests as a binary supporting cluster versions up to
    /// this would (tests only: `NodeConfig::emulate_binary_max`).
    older: Option<u32>,
}

impl ClientService {
    pub fn new(key: HandshakeKey, cluster: ClusterId, store: StoreId) -> ClientService {
        ClientService {
            key,
            client_key: None,
            link: LinkMode::Sealed,
            cluster,
            store,
            node: OnceLock::new(),
            counters: Counters::default(),
            admin_tasks: Arc::default(),
            older: None,
        }
    }

    /// Answers transaction requests as a binary supporting cluster versions up to
    /// `max` would (`older.rs`).
    #[must_use]
    pub fn emulating(mut self, max: Option<u32>) -> ClientService {
        self.older = max;
        self
    }

    /// Clients prove `client_key` (from the client secret) instead of the cluster
    /// secret's key, and a link mode other than sealed.
    #[must_use]
    pub fn securing(mut self, client_key: Option<HandshakeKey>, link: LinkMode) -> ClientService {
        self.client_key = client_key;
        self.link = link;
        self
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
            unauthenticated_records: get(&c.unauthenticated_records),
            malformed_requests: get(&c.malformed_requests),
            requests: get(&c.requests),
            writer_writes: get(&c.writer_writes),
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
        let keys = proto::NodeKeys { stores: &self.key, clients: self.client_key.as_ref() };
        let (peer, opener, sealer) = match proto::handshake_node(
            &mut stream,
            reader,
            keys,
            self.cluster,
            self.store,
            HANDSHAKE_TIMEOUT,
            self.link,
        ) {
            Ok(authenticated) => authenticated.split(),
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
        let (tx, rx) = bounded::<ToWriter>(ANSWER_QUEUE);
        let link = Arc::new(Link {
            stream: write_half,
            in_flight: InFlight::default(),
            turn: Mutex::new(Leftover { sealer, ..Leftover::default() }),
        });
        let in_flight = &link.in_flight;
        let closed = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name(format!("client-send-{me}-{}", remote.port()))
                .spawn_scoped(scope, || {
                    run_writer(&link, &rx, &closed, cancel, &self.counters.writer_writes);
                });
            if writer.is_err() {
                return;
            }
            // Buffered: the requests that arrived together are taken with one read.
            let mut frames = FrameStream::new(reader, LinkReader::new(&stream, opener));
            let end = self.read_requests(&mut frames, peer, &tx, &link, &closed);
            match end {
                e if e.is_quiet() => {}
                e => {
                    self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, FrameError::Wire(WireError::Unauthenticated(_))) {
                        self.counters.unauthenticated_records.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(store = me, %remote, reason = %e, "closing client connection from {remote}: {e}");
                    let code = match e {
                        FrameError::Wire(WireError::FrameTooLarge { .. }) => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    let message = format!("{e}; the node closes the connection");
                    in_flight.begin();
                    link.answer(&tx, (0, Err(RemoteError::new(code, message)), false));
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
    /// Requests whose answer is not ready yet (read, and not handed to
    /// [`Link::answer`]): while any is, another answer may come to share a write.
    unanswered: AtomicUsize,
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
        self.unanswered.fetch_add(1, Ordering::SeqCst);
    }

    /// An answer is ready; true if no other request waits for its own.
    fn ready_alone(&self) -> bool {
        let before = self.unanswered.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "an answer to a request that was not counted");
        before == 1
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
/// An answer written inline only in part takes the slot of the answer it carries.
fn push(tx: &Sender<ToWriter>, item: ToWriter) {
    match tx.try_send(item) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        Err(TrySendError::Full(item)) => {
            let id = match item {
                ToWriter::Answer((id, ..)) => id,
                ToWriter::Leftover => 0,
            };
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
    link: &Link,
    rx: &Receiver<ToWriter>,
    closed: &AtomicBool,
    cancel: &CancellationToken,
    writes: &AtomicU64,
) {
    let stream = &link.stream;
    if !write_answers(&mut &*stream, rx, link, closed, cancel, writes) {
        closed.store(true, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// The writing side of a connection, shared by its writer thread and the threads that
/// answer its requests.
struct Link {
    /// The connection (a handle of its own; the reader reads the other).
    stream: TcpStream,
    in_flight: InFlight,
    /// The write turn: whoever writes to the socket holds it, so frames never
    /// interleave. Inline writers only try it (they never wait for it).
    turn: Mutex<Leftover>,
}

/// The rest of an answer written inline only in part: it goes out before anything
/// else, by the writer thread.
#[derive(Default)]
struct Leftover {
    bytes: Vec<u8>,
    /// Answers (and scans among them) it ends; counted answered once written.
    answers: usize,
    scans: usize,
    /// A [`ToWriter::Leftover`] notice is queued and not yet taken: no other is
    /// queued (the writer takes every leftover when it next holds the turn).
    noticed: bool,
    /// Seals frames on a sealed link (only under the turn: records are numbered in
    /// the order they go on the wire); `bytes` is sealed already.
    sealer: Option<Sealer>,
    /// The sealing buffer, kept to reuse.
    scratch: Vec<u8>,
}

impl Leftover {
    /// Seals `buf[from..]` (whole frames) in place, on a sealed link.
    fn seal(&mut self, buf: &mut Vec<u8>, from: usize) -> std::io::Result<()> {
        let Leftover { sealer, scratch, .. } = self;
        match sealer {
            Some(sealer) => {
                let done = sealer.seal_tail(buf, from, scratch);
                if scratch.capacity() > 4 * WRITE_BATCH_BYTES {
                    *scratch = Vec::new();
                }
                done
            }
            None => Ok(()),
        }
    }
}

impl Link {
    /// Answers a request: on this thread if no other request of the connection
    /// waits for its answer (none could share its write) and the write turn is free
    /// with nothing left over, with a send that does not wait; otherwise through the
    /// writer thread. If the socket takes the frame only in part (or fails), the rest
    /// goes to the writer thread, which sends it first (or finds the error and
    /// closes).
    fn answer(&self, tx: &Sender<ToWriter>, answer: Answer) {
        if self.in_flight.ready_alone()
            && let Some(mut turn) = self.turn.try_lock()
            && turn.bytes.is_empty()
        {
            let (id, result, scan) = &answer;
            let mut frame = Vec::new();
            // Sealing fails only when the link's records ran out: the writer thread
            // finds out too, and closes.
            if encode_answer(&mut frame, *id, result) && turn.seal(&mut frame, 0).is_ok() {
                let sent = send_nowait(&self.stream, &frame);
                if sent == frame.len() {
                    drop(turn);
                    self.in_flight.end_many(1, usize::from(*scan));
                    return;
                }
                frame.drain(..sent);
                let notice = !turn.noticed;
                (turn.bytes, turn.answers, turn.scans) = (frame, 1, usize::from(*scan));
                turn.noticed = true;
                drop(turn);
                if notice {
                    push(tx, ToWriter::Leftover);
                }
                return;
            }
        }
        push(tx, ToWriter::Answer(answer));
    }
}

/// The loop of [`run_writer`] on `out`: takes the next answer and every one queued
/// behind it (up to [`WRITE_BATCH_BYTES`]) and writes their frames with one
/// `write_all`, after the rest of an answer written inline in part, holding the
/// link's write turn. False if a write failed.
fn write_answers<W: Write>(
    out: &mut W,
    rx: &Receiver<ToWriter>,
    link: &Link,
    closed: &AtomicBool,
    cancel: &CancellationToken,
    writes: &AtomicU64,
) -> bool {
    let in_flight = &link.in_flight;
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
        let mut turn = link.turn.lock();
        // The rest of an answer written inline in part goes first.
        buf.append(&mut turn.bytes);
        let sealed_upto = buf.len();
        let (mut answers, mut scans, mut encoded) = (turn.answers, turn.scans, true);
        (turn.answers, turn.scans) = (0, 0);
        let mut next = Some(first);
        // Bounded: by WRITE_BATCH_BYTES, and by the queue (ANSWER_QUEUE answers).
        while let Some(item) = next.take() {
            match item {
                ToWriter::Answer((id, answer, scan)) => {
                    answers += 1;
                    scans += usize::from(scan);
                    encoded &= encode_answer(&mut buf, id, &answer);
                    if buf.len() >= WRITE_BATCH_BYTES || !encoded {
                        break;
                    }
                }
                ToWriter::Leftover => turn.noticed = false,
            }
            next = rx.try_recv().ok();
        }
        if buf.is_empty() && encoded {
            // A leftover an earlier batch took.
            continue;
        }
        // What was encoded goes out even if a later answer could not be.
        let sealed = turn.seal(&mut buf, sealed_upto).is_ok();
        let written = sealed && out.write_all(&buf).is_ok() && encoded;
        drop(turn);
        writes.fetch_add(1, Ordering::Relaxed);
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
    tx: Option<Sender<ToWriter>>,
    /// The connection (gone once it closed: the answer then has nowhere to go).
    link: Weak<Link>,
    /// The request is a scan (counted in [`Counts::scans`] until written).
    scan: bool,
}

impl Responder {
    fn send(mut self, answer: Result<Response, RemoteError>) {
        if let Some(tx) = self.tx.take() {
            self.answer(&tx, (self.id, answer, self.scan));
        }
    }

    fn answer(&self, tx: &Sender<ToWriter>, answer: Answer) {
        // Gone: the connection closed, the answer has nowhere to go.
        if let Some(link) = self.link.upgrade() {
            link.answer(tx, answer);
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
            self.answer(&tx, (self.id, Ok(Response::NoReply), self.scan));
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
        frames: &mut FrameStream<'_, LinkReader<&TcpStream>>,
        peer: StoreId,
        tx: &Sender<ToWriter>,
        link: &Arc<Link>,
        closed: &AtomicBool,
    ) -> FrameError {
        let me = self.store.0;
        let in_flight = &link.in_flight;
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
                            link.answer(tx, (id, Err(answer), false));
                            return FrameError::Cancelled;
                        }
                    }
                    let link = Arc::downgrade(link);
                    let r = Responder { id, tx: Some(tx.clone()), link, scan };
                    self.dispatch(request, r, peer);
                }
                Err(RequestError::Malformed { id, error }) => {
                    self.counters.malformed_requests.fetch_add(1, Ordering::Relaxed);
                    let message = format!(
                        "malformed request at byte {}: {}; nothing was done",
                        error.offset, error.reason
                    );
                    tracing::warn!(store = me, id, "{message}");
                    let answer = Err(RemoteError::new(ErrorCode::Malformed, message));
                    link.answer(tx, (id.unwrap_or(0), answer, false));
                }
                Err(RequestError::Unsupported { id }) => {
                    let message = format!(
                        "this node (client protocol version {}) does not know the request's \
                         kind; upgrade the node",
                        proto::VERSION
                    );
                    let answer = Err(RemoteError::new(ErrorCode::UnsupportedRequest, message));
                    link.answer(tx, (id, answer, false));
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
                r.send(Ok(Response::PeerStatus(store.peer_status(region).map(Box::new))));
            }
            Request::Locate { key } => r.send(Ok(Response::Located(node.locate_local(&key)))),
            Request::Status => {
                r.send(Ok(Response::Status(Box::new(StoreStatus::of_store(self.store, store)))));
            }
            Request::ClusterVersion => {
                r.send(Ok(Response::ClusterVersion(crate::backend::directory_version(store))));
            }
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
            Request::Health { audit } => r.send(Ok(Response::Health(node.health(audit)))),
            Request::Txn { region, epoch, cmd } => self.txn(store, region, epoch, cmd, r),
            Request::Timestamps { count } => store.timestamps(count, r.reply(Response::Timestamps)),
            Request::Dups => r.send(Ok(Response::Dups(crate::backend::directory_dups(store)))),
            Request::Sink { region, cmd } => self.sink(store, region, cmd, r),
            Request::TxnIds { count } if count == 0 || count > proto::TXN_IDS_MAX => {
                let message = format!("txn ids: ask for 1 to {} ids at a time", proto::TXN_IDS_MAX);
                r.send(Err(RemoteError::new(ErrorCode::InvalidRequest, message)));
            }
            Request::TxnList { in_doubt_only, older_than_ms } => {
                r.send(Ok(Response::TxnEntries(node.txn_list(in_doubt_only, older_than_ms))));
            }
            Request::Split { .. }
            | Request::TxnIds { .. }
            | Request::TxnRecover { .. }
            | Request::DupCommand { .. }
            | Request::Merge { .. }
            | Request::Regions
            | Request::StoreAdd { .. }
            | Request::StoreRemove { .. }
            | Request::UpgradeStatus
            | Request::FinalizeUpgrade { .. } => self.spawn_admin(&node, request, r),
        }
    }

    /// A transaction command to the node's store (read as an older binary would, if
    /// this node emulates one); a staging prewrite's `Done` confirmed (`older.rs`).
    fn txn(&self, store: &Store, region: RegionId, epoch: Epoch, cmd: TxnCmd, r: Responder) {
        let cmd = match self.older {
            None => cmd,
            Some(max) => match older::as_older(cmd, max) {
                Ok(cmd) => cmd,
                Err(e) => return r.send(Err(e)),
            },
        };
        let reply = r.reply(older::txn_answer(&cmd));
        store.txn(TxnRequest { region, epoch, cmd, reply });
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
                    Request::UpgradeStatus => node.upgrade_status().map(Response::UpgradeStatus),
                    Request::FinalizeUpgrade { target } => {
                        node.finalize_upgrade(target).map(|v| Response::ClusterVersion(Some(v)))
                    }
                    Request::TxnIds { count } => node
                        .txn_ids(count)
                        .map(|first| Response::Directory(DirResult::Ids { first, count })),
                    Request::TxnRecover { region } => {
                        Ok(Response::TxnTurn(Box::new(node.txn_recover(region))))
                    }
                    Request::DupCommand { cmd } => node.dup_command(cmd).map(Response::Directory),
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

mod older;
#[cfg(test)]
mod secure_tests;
mod sink;
#[cfg(test)]
mod tests;
