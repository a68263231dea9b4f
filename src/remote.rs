//! Stores in other processes, reached over the client protocol ([`crate::proto`]):
//! [`RemoteStores`], a [`Backend`] so that [`Db`] routes and retries over TCP exactly
//! as it does in process, and the public [`Client`].
//!
//! One connection per store, opened on first use and again after it breaks: requests
//! are pipelined on it (at most [`IN_FLIGHT_MAX`] unanswered, as the node reads no
//! more; a request beyond waits for a slot). A caller whose request is the only one
//! awaited on its connection reads the answers itself until its own is in (every
//! caller waits for its answer: no thread hand-off); otherwise the connection's reader
//! thread reads and hands each response to the request's reply. Whoever reads holds
//! the connection's read side, and the reader thread waits while a caller reads or no
//! answer is awaited; a connection nobody read for a poll interval is probed (one
//! system call that does not wait) before it is used, so that one the node closed
//! meanwhile is dialed again. A request is written by the thread that makes
//! it, with every request other threads queued meanwhile (one system call for them
//! all), or taken along by the thread already writing ([`proto::Outbox`]). A store that cannot be reached answers at once
//! as a stopped store would ([`regionkv_raft::Error::Cancelled`]: nothing was done; try
//! elsewhere), and is not dialed again for [`REDIAL_AFTER`]. A request whose
//! connection breaks before its response arrives, or that the node answers `no reply`
//! (its store dropped it), gets [`regionkv_raft::Error::CancelledInFlight`] at once:
//! its outcome is unknown (a `Db` write is then sent again with the same session,
//! which applies it at most once).

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use regionkv_engine::{RegionId, StoreId};
use regionkv_raft::directory::{DIRECTORY, DirCmd, DirResult, RegionRecord};
use regionkv_raft::transport::frame::{FrameError, FrameKind, FrameStream};
use regionkv_raft::transport::handshake::{Authenticated, ClusterId, HandshakeError, HandshakeKey};
use regionkv_raft::transport::seal::{LinkMode, LinkReader};
use regionkv_raft::{
    AdminRequest, ChangePeersRequest, MergeStatus, PeerStatus, ReadRequest, Reply, TxnRequest,
    WriteRequest,
};
use regionkv_wal::CancellationToken;

use crate::backend::{Backend, newer};
use crate::control::StoreVersion;
use crate::db::Oneshot;
use crate::error::{Error, Result};
use crate::proto::{
    self, ErrorCode, IN_FLIGHT_MAX, Outbox, RESPONSE_BYTES_MAX, RemoteError, Request, Response,
    StoreStatus,
};

mod client;
mod health;
mod sink;
mod tso;
mod txn;
mod txn_ops;

pub use client::{Client, ClientOptions};

/// How long an unreachable store is left alone before it is dialed again.
pub const REDIAL_AFTER: Duration = Duration::from_millis(200);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a frame write may block (a node that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of a connection: how often its reader looks at the cancel token.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a caller reads answers for its own before it leaves the reading to the
/// reader thread (it then waits for its reply as any other caller).
const OWN_READ_MAX: Duration = POLL_INTERVAL;
/// A response that started must arrive whole within this.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long synchronous requests (status, locate, ...) wait for their answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long requests that a node drives (split, merge) wait for their answer.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a store add or remove (a node drives it, region by region, and a store
/// added waits for its snapshots) may take.
const STORE_CHANGE_TIMEOUT: Duration = Duration::from_secs(600);

type Pending = Box<dyn FnOnce(Result<Response, RemoteError>) + Send>;

/// One connection to a node: requests go out through `outbox` (written by the
/// calling threads themselves, many requests per system call when they come
/// together); answers are read by a caller that is alone in waiting for one (it reads
/// its own, no thread to wake), or else by the connection's reader thread.
struct Conn {
    store: StoreId,
    stream: TcpStream,
    outbox: Outbox,
    /// Requests sent and not answered, and who reads their answers.
    pending: Mutex<Awaited>,
    /// Signalled when a pending request is answered (or the connection breaks).
    slot_freed: Condvar,
    /// Signalled when answers are awaited and no caller reads them (or the
    /// connection breaks): the reader thread's cue.
    unread: Condvar,
    /// The reading side: whoever reads answers holds it.
    frames: Mutex<FrameStream<'static, LinkReader<TcpStream>>>,
    next_id: AtomicU64,
    broken: AtomicBool,
    /// When the last answer was read (a connection idle for longer is probed before
    /// use: nobody reads an idle connection, so nobody saw it close).
    last_read: Mutex<Instant>,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// Answers the reader thread handed to their callers' threads (shared by the
    /// connections of one [`RemoteStores`]).
    handed_over: Arc<AtomicU64>,
}

/// A connection's requests sent and not answered.
#[derive(Default)]
struct Awaited {
    /// Their replies, by request id: at most [`IN_FLIGHT_MAX`].
    by_id: HashMap<u64, Pending>,
    /// A caller reads answers for its own ([`Conn::read_own`]): the reader thread
    /// waits.
    caller_reads: bool,
}

impl Conn {
    fn break_off(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.unread.notify_all();
    }

    /// Reads answers until request `id`'s is in, holding the read side, on the
    /// thread that sent it (which made itself the reader: `caller_reads`). Gives up
    /// the read side at a frame boundary after [`OWN_READ_MAX`] (the caller then waits
    /// for its reply as any other), and hands it to the reader thread if other answers
    /// are awaited.
    fn read_own(&self, id: u64) {
        if let Some(mut frames) = self.frames.try_lock() {
            let until = Instant::now() + OWN_READ_MAX;
            // Bounded: by OWN_READ_MAX between frames, and by the stall bound within one.
            while self.pending.lock().by_id.contains_key(&id) {
                match read_answer(self, &mut frames, until, false) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(()) => {
                        self.break_off();
                        break;
                    }
                }
            }
        }
        let mut pending = self.pending.lock();
        pending.caller_reads = false;
        if !pending.by_id.is_empty() {
            self.unread.notify_one();
        }
    }
}

/// Dials `addr` and runs the client handshake on links of mode `link`; returns the
/// stream and the node's store id (and, sealed, the connection's keys).
fn dial(
    addr: SocketAddr,
    key: &HandshakeKey,
    cluster: ClusterId,
    me: StoreId,
    link: LinkMode,
) -> Result<(TcpStream, Authenticated), Error> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    match proto::handshake_client(&mut stream, key, cluster, me, HANDSHAKE_TIMEOUT, link) {
        Ok(authenticated) => Ok((stream, authenticated)),
        Err(HandshakeError::RefusedByPeer(reason) | HandshakeError::Rejected { reason, .. }) => {
            Err(Error::Refused { addr, reason })
        }
        Err(HandshakeError::Frame(FrameError::Io(e))) => Err(Error::Io(e)),
        Err(e) => Err(Error::Protocol(format!("handshake with {addr}: {e}"))),
    }
}

/// Stores reached over the client protocol.
pub(crate) struct RemoteStores {
    key: HandshakeKey,
    cluster: ClusterId,
    /// Who this is in the handshake: `CLIENT_ID` for a client, a node's store id for
    /// the node's own backend (raw admin requests are answered only then).
    me: StoreId,
    /// What this side runs after the handshake.
    link: LinkMode,
    addrs: RwLock<BTreeMap<StoreId, SocketAddr>>,
    conns: Mutex<HashMap<StoreId, Arc<Conn>>>,
    /// Stores that could not be reached, and when they may be dialed again.
    down_until: Mutex<HashMap<StoreId, Instant>>,
    shut: AtomicBool,
    cancel: CancellationToken,
    /// Answers handed from a reader thread to their callers' threads.
    handed_over: Arc<AtomicU64>,
}

impl RemoteStores {
    pub fn new(
        key: HandshakeKey,
        cluster: ClusterId,
        me: StoreId,
        addrs: BTreeMap<StoreId, SocketAddr>,
        link: LinkMode,
    ) -> RemoteStores {
        RemoteStores {
            key,
            cluster,
            me,
            link,
            addrs: RwLock::new(addrs),
            conns: Mutex::default(),
            down_until: Mutex::default(),
            shut: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            handed_over: Arc::default(),
        }
    }

    pub fn addrs(&self) -> BTreeMap<StoreId, SocketAddr> {
        self.addrs.read().clone()
    }

    /// The open connection to `store`, or a new one.
    fn conn(&self, store: StoreId) -> Result<Arc<Conn>, String> {
        if let Some(c) = self.conns.lock().get(&store)
            && !c.broken.load(Ordering::SeqCst)
        {
            if !c.closed_while_idle() {
                return Ok(c.clone());
            }
            c.break_off();
        }
        if self.shut.load(Ordering::SeqCst) {
            return Err("the client is closed".into());
        }
        if self.down_until.lock().get(&store).is_some_and(|t| Instant::now() < *t) {
            return Err(format!("store {store} was unreachable a moment ago"));
        }
        let addr =
            self.addrs.read().get(&store).copied().ok_or(format!("no address of store {store}"))?;
        let (stream, found, opener, sealer) =
            match dial(addr, &self.key, self.cluster, self.me, self.link) {
                Ok((stream, authenticated)) => {
                    let (found, opener, sealer) = authenticated.split();
                    (stream, found, opener, sealer)
                }
                Err(e) => {
                    self.down_until.lock().insert(store, Instant::now() + REDIAL_AFTER);
                    return Err(format!("store {store} at {addr}: {e}"));
                }
            };
        if found != store {
            let _ = stream.shutdown(Shutdown::Both);
            return Err(format!("{addr} is store {found}, not store {store}"));
        }
        let read_half = stream.try_clone().map_err(|e| e.to_string())?;
        let conn = Arc::new(Conn {
            store,
            stream,
            outbox: Outbox::new(sealer),
            pending: Mutex::default(),
            slot_freed: Condvar::new(),
            unread: Condvar::new(),
            // Buffered: the answers that arrived together are taken with one read.
            frames: Mutex::new(FrameStream::new(
                proto::reader(None, STALL_TIMEOUT),
                LinkReader::new(read_half, opener),
            )),
            next_id: AtomicU64::new(1),
            broken: AtomicBool::new(false),
            last_read: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
            handed_over: self.handed_over.clone(),
        });
        let reader = {
            let conn = conn.clone();
            let cancel = self.cancel.clone();
            std::thread::Builder::new()
                .name(format!("client-recv-{}", store.0))
                .spawn(move || run_reader(&conn, &cancel))
                .map_err(|e| e.to_string())?
        };
        *conn.reader.lock() = Some(reader);
        let mut conns = self.conns.lock();
        if let Some(old) = conns.insert(store, conn.clone()) {
            old.break_off();
        }
        Ok(conn)
    }

    /// Sends `req` to `store`; `done` gets the answer, or is dropped unanswered if the
    /// connection breaks first (outcome unknown).
    fn send(&self, store: StoreId, req: &Request, done: Pending) {
        let conn = match self.conn(store) {
            Ok(c) => c,
            Err(why) => {
                tracing::debug!(store = store.0, why, "store unreachable");
                // Nothing was sent: like a stopped store, the caller may try elsewhere.
                done(Err(RemoteError::new(ErrorCode::Cancelled, why)));
                return;
            }
        };
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let payload = proto::encode_request(id, req);
        if payload.len() > proto::REQUEST_BYTES_MAX as usize {
            done(Err(RemoteError::new(
                ErrorCode::TooLarge,
                format!(
                    "the request is {} bytes, over the node's bound of {} bytes: send smaller \
                     batches",
                    payload.len(),
                    proto::REQUEST_BYTES_MAX
                ),
            )));
            return;
        }
        let frame = match proto::encode_frame(FrameKind::Request, &payload) {
            Ok(f) => f,
            Err(e) => {
                done(Err(RemoteError::new(ErrorCode::InvalidRequest, e.to_string())));
                return;
            }
        };
        // This caller reads its own answer if it is the only one awaited and nobody
        // reads (a caller that waits for each answer): no thread hand-off.
        let reads_own = {
            // The node reads at most IN_FLIGHT_MAX requests of a connection ahead of
            // its answers: wait for a slot rather than block in the socket (bounded).
            let mut pending = conn.pending.lock();
            let deadline = Instant::now() + WRITE_TIMEOUT;
            while pending.by_id.len() >= IN_FLIGHT_MAX && !conn.broken.load(Ordering::SeqCst) {
                if conn.slot_freed.wait_until(&mut pending, deadline).timed_out() {
                    break;
                }
            }
            if pending.by_id.len() >= IN_FLIGHT_MAX {
                drop(pending);
                // Nothing was sent: the caller may try again.
                let why = format!("{IN_FLIGHT_MAX} requests to store {store} are unanswered");
                done(Err(RemoteError::new(ErrorCode::Cancelled, why)));
                return;
            }
            pending.by_id.insert(id, done);
            let alone = pending.by_id.len() == 1 && !pending.caller_reads;
            if alone {
                pending.caller_reads = true;
            } else if !pending.caller_reads {
                conn.unread.notify_one();
            }
            alone
        };
        if conn.broken.load(Ordering::SeqCst) {
            // The reader left (and emptied `pending`) before the insert: nothing was
            // sent on this connection.
            let mut pending = conn.pending.lock();
            if reads_own {
                pending.caller_reads = false;
            }
            if let Some(done) = pending.by_id.remove(&id) {
                drop(pending);
                done(Err(RemoteError::new(ErrorCode::Cancelled, "the connection broke")));
            }
            return;
        }
        // This thread writes its request itself, with any queued by others meanwhile,
        // unless another thread is writing: that one takes it along.
        if let Err(e) = conn.outbox.send(&frame, &conn.stream) {
            tracing::debug!(store = store.0, error = %e, "write to store failed");
            // Part of the request may have left: its outcome is unknown. The reader
            // answers every pending request so when the socket closes.
            conn.break_off();
        }
        if reads_own {
            conn.read_own(id);
        }
    }

    /// Sends `req` and waits for the answer (`None`: no answer in time).
    fn call(
        &self,
        store: StoreId,
        req: &Request,
        timeout: Duration,
    ) -> Option<Result<Response, RemoteError>> {
        let slot = Oneshot::new();
        let reply = slot.clone();
        self.send(store, req, Box::new(move |r| reply.set(r)));
        slot.wait(timeout)
    }

    /// Where `store` is dialed from now on.
    pub fn set_addr(&self, store: StoreId, addr: SocketAddr) {
        let changed = self.addrs.write().insert(store, addr) != Some(addr);
        if changed && let Some(conn) = self.conns.lock().remove(&store) {
            conn.break_off();
        }
        self.down_until.lock().remove(&store);
    }

    /// Sends `req` to `store` and waits for `Done` (or the error).
    pub fn ask(&self, store: StoreId, req: &Request) -> Result<()> {
        match self.call(store, req, CALL_TIMEOUT) {
            Some(Ok(Response::Done)) => Ok(()),
            other => Err(unexpected(store, other)),
        }
    }

    /// `store`'s status (its replicas).
    pub fn status(&self, store: StoreId) -> Result<StoreStatus> {
        match self.call(store, &Request::Status, CALL_TIMEOUT) {
            Some(Ok(Response::Status(s))) => Ok(*s),
            other => Err(unexpected(store, other)),
        }
    }

    /// Stops every connection and waits for the readers.
    pub fn close(&self) {
        self.shut.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        let conns: Vec<Arc<Conn>> = self.conns.lock().drain().map(|(_, c)| c).collect();
        for conn in conns {
            conn.break_off();
            if let Some(reader) = conn.reader.lock().take() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for RemoteStores {
    fn drop(&mut self) {
        self.close();
    }
}

fn unexpected(store: StoreId, answer: Option<Result<Response, RemoteError>>) -> Error {
    match answer {
        None => Error::Unavailable {
            waited: CALL_TIMEOUT,
            last: format!("store {store} did not answer"),
        },
        Some(Err(e)) => e.into_facade(),
        Some(Ok(r)) => Error::Protocol(format!("store {store} answered {r:?}")),
    }
}

/// Reads answers while some are awaited and no caller reads them, until the
/// connection ends; then answers the requests still waiting: their outcome is
/// unknown ([`ErrorCode::CancelledInFlight`]).
fn run_reader(conn: &Conn, cancel: &CancellationToken) {
    // Bounded: ends when the connection breaks, the node closes it, or at
    // cancellation; every wait is at most a poll interval.
    while !cancel.is_cancelled() && !conn.broken.load(Ordering::SeqCst) {
        {
            let mut pending = conn.pending.lock();
            if pending.by_id.is_empty() || pending.caller_reads {
                conn.unread.wait_for(&mut pending, POLL_INTERVAL);
                continue;
            }
        }
        let mut frames = conn.frames.lock();
        if read_answer(conn, &mut frames, Instant::now() + POLL_INTERVAL, true).is_err() {
            break;
        }
    }
    conn.broken.store(true, Ordering::SeqCst);
    let _ = conn.stream.shutdown(Shutdown::Both);
    let waiting: Vec<Pending> = conn.pending.lock().by_id.drain().map(|(_, done)| done).collect();
    conn.slot_freed.notify_all();
    for done in waiting {
        done(Err(in_flight("the connection broke before the answer came")));
    }
}

/// Reads one answer, if one starts arriving by `until`, and hands it to its request's
/// reply (counted as handed over if `by_reader`, the reader thread); true if it did.
/// An error means the connection is over (said in the log).
fn read_answer(
    conn: &Conn,
    frames: &mut FrameStream<'static, LinkReader<TcpStream>>,
    until: Instant,
    by_reader: bool,
) -> Result<bool, ()> {
    let store = conn.store.0;
    let payload = match frames.frame_by(RESPONSE_BYTES_MAX, until) {
        Ok(None) => return Ok(false),
        Ok(Some((FrameKind::Response, payload))) => payload,
        Ok(Some((kind, _))) => {
            tracing::warn!(store, ?kind, "unexpected frame from a node; closing");
            return Err(());
        }
        Err(e) if e.is_quiet() => return Err(()),
        Err(e) => {
            tracing::warn!(store, error = %e, "bad response from a node; closing");
            return Err(());
        }
    };
    *conn.last_read.lock() = Instant::now();
    let (id, answer) = match proto::decode_response(&payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::warn!(store, error = %e, "undecodable response from a node; closing");
            return Err(());
        }
    };
    let waiting = conn.pending.lock().by_id.remove(&id);
    conn.slot_freed.notify_one();
    if waiting.is_some() && by_reader {
        conn.handed_over.fetch_add(1, Ordering::Relaxed);
    }
    match (waiting, answer) {
        // The node's store dropped the request: the outcome is unknown.
        (Some(done), Ok(Response::NoReply)) => {
            done(Err(in_flight("the node's store dropped the request unanswered")));
        }
        (Some(done), answer) => done(answer),
        (None, Ok(_)) => {}
        (None, Err(e)) => {
            tracing::warn!(store, error = ?e, "a node reported a connection error");
        }
    }
    Ok(true)
}

impl Conn {
    /// True if the node closed the connection while nobody read it: it sends nothing
    /// unasked, so a readable socket with no answer awaited means end of stream (or a
    /// broken protocol). Looked at (one system call that does not wait) only after a
    /// poll interval without answers.
    fn closed_while_idle(&self) -> bool {
        if self.last_read.lock().elapsed() < POLL_INTERVAL {
            return false;
        }
        {
            let pending = self.pending.lock();
            if !pending.by_id.is_empty() || pending.caller_reads {
                return false;
            }
        }
        let mut byte = [0u8; 1];
        let peeked = rustix::net::recv(
            &self.stream,
            &mut byte[..],
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        );
        match peeked {
            Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
            Ok(_) => true,
        }
    }
}

/// The error of a request that was sent and got no answer: its outcome is unknown. The
/// reply it goes to names the region ([`answer`]).
fn in_flight(why: &str) -> RemoteError {
    RemoteError::new(ErrorCode::CancelledInFlight, format!("{why}; the outcome is unknown"))
}

/// Maps an answer to a request for `region` to the Raft layer's result, as a store in
/// this process returns it. A request left in flight ([`in_flight`], made here) gets
/// the region it was sent for.
fn answer<T>(
    r: Result<Response, RemoteError>,
    region: RegionId,
    pick: impl FnOnce(Response) -> Option<T>,
) -> regionkv_raft::Result<T> {
    match r {
        Ok(resp) => pick(resp).ok_or_else(|| {
            regionkv_raft::Error::Malformed(
                "a node answered with a response of another kind".into(),
            )
        }),
        Err(mut e) => {
            if e.code == ErrorCode::CancelledInFlight && e.region.is_none() {
                e.region = Some(region);
            }
            Err(e.into_raft())
        }
    }
}

impl Backend for RemoteStores {
    fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Relaxed)
    }

    fn store_ids(&self) -> Vec<StoreId> {
        self.addrs.read().keys().copied().collect()
    }

    fn write(&self, store: StoreId, req: WriteRequest) {
        let WriteRequest { region, epoch, ops, session, reply } = req;
        let done = move |r| {
            reply(answer(r, region, |resp| match resp {
                Response::Done => Some(()),
                _ => None,
            }));
        };
        self.send(store, &Request::Write { region, epoch, ops, session }, Box::new(done));
    }

    fn read(&self, store: StoreId, req: ReadRequest) {
        let ReadRequest { region, epoch, query, reply } = req;
        let done = move |r| {
            reply(answer(r, region, |resp| match resp {
                Response::Query(q) => Some(q),
                _ => None,
            }));
        };
        self.send(store, &Request::Read { region, epoch, query }, Box::new(done));
    }

    fn admin(&self, store: StoreId, req: AdminRequest) {
        let AdminRequest { region, epoch, cmd, reply } = req;
        let done = move |r| {
            reply(answer(r, region, |resp| match resp {
                Response::Admin(a) => Some(a),
                _ => None,
            }));
        };
        self.send(store, &Request::Admin { region, epoch, cmd }, Box::new(done));
    }

    fn change_peers(&self, store: StoreId, req: ChangePeersRequest) {
        let ChangePeersRequest { region, epoch, change, reply } = req;
        let done = move |r| {
            reply(answer(r, region, |resp| match resp {
                Response::PeersChanged(region) => Some(region),
                _ => None,
            }));
        };
        self.send(store, &Request::ChangePeers { region, epoch, change }, Box::new(done));
    }

    fn directory(&self, store: StoreId, cmd: DirCmd, reply: Reply<DirResult>) {
        let done = move |r| {
            reply(answer(r, DIRECTORY, |resp| match resp {
                Response::Directory(d) => Some(d),
                _ => None,
            }));
        };
        self.send(store, &Request::Directory { cmd }, Box::new(done));
    }

    fn txn(&self, store: StoreId, req: TxnRequest) {
        self.send_txn(store, req);
    }

    fn txn_ids(&self, count: u64, deadline: Duration) -> Result<u64> {
        self.remote_txn_ids(count, deadline)
    }

    fn timestamps(&self, store: StoreId, count: u32, reply: Reply<u64>) {
        self.send_timestamps(store, count, reply);
    }

    fn merge_status(&self, store: StoreId, region: RegionId) -> regionkv_raft::Result<MergeStatus> {
        match self.call(store, &Request::MergeStatus { region }, CALL_TIMEOUT) {
            Some(r) => answer(r, region, |resp| match resp {
                Response::MergeStatus(m) => Some(m),
                _ => None,
            }),
            None => Err(regionkv_raft::Error::Timeout { region }),
        }
    }

    fn peer_status(&self, store: StoreId, region: RegionId) -> Option<PeerStatus> {
        match self.call(store, &Request::PeerStatus { region }, CALL_TIMEOUT)? {
            Ok(Response::PeerStatus(s)) => s.map(|s| *s),
            _ => None,
        }
    }

    fn cluster_version(&self) -> Option<u32> {
        // Ask every store at once; the highest version a replica of the directory
        // holds wins (an older node answers unsupported: it holds none).
        let slots: Vec<_> = self
            .store_ids()
            .into_iter()
            .map(|store| {
                let slot = Oneshot::new();
                let reply = slot.clone();
                self.send(store, &Request::ClusterVersion, Box::new(move |r| reply.set(r)));
                slot
            })
            .collect();
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut best = None;
        for slot in slots {
            let wait = deadline.saturating_duration_since(Instant::now());
            if let Some(Ok(Response::ClusterVersion(Some(v)))) = slot.wait(wait) {
                best = best.max(Some(v));
            }
        }
        best
    }

    fn dup_command(&self, cmd: &DirCmd, deadline: Duration) -> Result<DirResult> {
        self.remote_dup_command(cmd, deadline)
    }

    fn sink(&self, store: StoreId, req: regionkv_raft::sink::SinkRequest) {
        self.send_sink(store, req);
    }

    fn dups_of(&self, store: StoreId) -> Option<Vec<regionkv_raft::directory::DupRecord>> {
        match self.call(store, &Request::Dups, CALL_TIMEOUT)? {
            Ok(Response::Dups(records)) => records,
            _ => None,
        }
    }

    fn store_version(&self, store: StoreId) -> Option<StoreVersion> {
        let status = self.status(store).ok()?;
        Some(StoreVersion::new(store, status.cluster_version_active, status.max_cluster_version))
    }

    fn locate(&self, key: &[u8]) -> Option<RegionRecord> {
        // Ask every store at once; the newest record any of them holds wins.
        let slots: Vec<_> = self
            .store_ids()
            .into_iter()
            .map(|store| {
                let slot = Oneshot::new();
                let reply = slot.clone();
                self.send(
                    store,
                    &Request::Locate { key: key.to_vec() },
                    Box::new(move |r| reply.set(r)),
                );
                slot
            })
            .collect();
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut best: Option<RegionRecord> = None;
        for slot in slots {
            let wait = deadline.saturating_duration_since(Instant::now());
            if let Some(Ok(Response::Located(Some(record)))) = slot.wait(wait)
                && best.as_ref().is_none_or(|b| newer(&record.region, &b.region))
            {
                best = Some(record);
            }
        }
        best
    }
}
